//! SIGINT (Ctrl-C) and SIGTERM, handled alike by the long-running
//! subcommands (`target`, `nbd`).

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT (Ctrl-C) and SIGTERM, handled alike from the moment this exists
/// (until then they end the process at once).
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    /// Starts handling both signals.
    pub(crate) fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("could not handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("could not handle SIGTERM")?,
        })
    }

    /// The next signal's name and conventional exit status (128 + number).
    pub(crate) async fn next(&mut self) -> (&'static str, u8) {
        tokio::select! {
            _ = self.int.recv() => ("SIGINT", 130),
            _ = self.term.recv() => ("SIGTERM", 143),
        }
    }
}
