//! `holdfast target`: serve a file or block device as a holdfast block
//! target until interrupted, then hand initiators off gracefully.
//!
//! On SIGINT or SIGTERM the target announces its shutdown (PROTOCOL.md
//! §10.1): connections stay up for `--shutdown-up`, new logins meanwhile are
//! refused with `ShuttingDown`, then every connection is closed and the
//! process exits. Its sessions end with it (they do not survive a process
//! restart), so the notice says "will not return" (`min_hold` 0xFFFFFFFF):
//! initiators end their sessions at once instead of waiting to reconnect to
//! state that is gone.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use holdfast::{Endpoint, Target, TargetConfig, TargetOptions};
use holdfast_block::{BlockService, FileDevice, OpenOptions};
use serde::Deserialize;

use crate::config::pick;
use crate::logsvc::LogService;
use crate::units::{parse_duration, parse_endpoint, parse_size};

/// Options of `holdfast target` (also the `[target]` table of a config file).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct TargetArgs {
    /// What to serve: `block` (a volume) or `log` (the exactly-once test
    /// service that `holdfast torture --mode log` drives) [default: block].
    #[arg(long)]
    pub(crate) service: Option<String>,
    /// The file or block device to serve.
    #[arg(long, value_name = "PATH")]
    pub(crate) volume: Option<PathBuf>,
    /// Create the file, or grow it, to this size (e.g. 1G). Without it the
    /// volume must exist.
    #[arg(long)]
    pub(crate) size: Option<String>,
    /// Where to listen: HOST:PORT or unix:PATH; repeat for several.
    #[arg(long, value_name = "ADDR")]
    #[serde(default)]
    pub(crate) listen: Vec<String>,
    /// Refuse writes.
    #[arg(long)]
    #[serde(default)]
    pub(crate) read_only: bool,
    /// Open the volume with O_DIRECT (bypass the page cache).
    #[arg(long)]
    #[serde(default)]
    pub(crate) direct: bool,
    /// Commands one session may have outstanding (its credit window).
    #[arg(long)]
    pub(crate) credits: Option<u32>,
    /// How long a session's state is kept after its connection is lost.
    #[arg(long, value_name = "DURATION")]
    pub(crate) retain: Option<String>,
    /// The most sessions served at once.
    #[arg(long)]
    pub(crate) max_sessions: Option<usize>,
    /// On Ctrl-C or SIGTERM: how long connections stay up after the
    /// shutdown notice (new logins are refused meanwhile); then the process
    /// exits and its sessions end.
    #[arg(long, value_name = "DURATION")]
    pub(crate) shutdown_up: Option<String>,
    /// Print the bound endpoints and final counters as JSON lines.
    #[arg(long)]
    #[serde(default)]
    pub(crate) json: bool,
}

/// Settings after merging flags, file and defaults.
#[derive(Debug)]
pub(crate) struct TargetSettings {
    /// `None` for the log service.
    volume: Option<PathBuf>,
    size: Option<u64>,
    listen: Vec<Endpoint>,
    read_only: bool,
    direct: bool,
    protocol: TargetConfig,
    shutdown_up: Duration,
    json: bool,
}

impl TargetArgs {
    /// Merges these flags over the config file's values and checks them.
    pub(crate) fn merged(self, file: TargetArgs) -> anyhow::Result<TargetSettings> {
        let service = pick(self.service, file.service).unwrap_or_else(|| "block".to_owned());
        let volume = match (service.as_str(), pick(self.volume, file.volume)) {
            ("block", Some(v)) => Some(v),
            ("block", None) => bail!("no volume: give --volume PATH (a file or block device)"),
            ("log", None) => None,
            ("log", Some(_)) => bail!("--service log serves no volume: drop --volume"),
            (other, _) => bail!("--service {other}: expected block or log"),
        };
        let listen = if self.listen.is_empty() {
            file.listen
        } else {
            self.listen
        };
        if listen.is_empty() {
            bail!("nowhere to listen: give --listen HOST:PORT (or unix:PATH)");
        }
        let listen = listen
            .iter()
            .map(|l| parse_endpoint(l).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let size = pick(self.size, file.size)
            .map(|s| parse_size(&s).map_err(anyhow::Error::msg))
            .transpose()?;
        let duration = |v: Option<String>, default: Duration| -> anyhow::Result<Duration> {
            v.map_or(Ok(default), |s| {
                parse_duration(&s).map_err(anyhow::Error::msg)
            })
        };
        let mut protocol = TargetConfig::default();
        if let Some(c) = pick(self.credits, file.credits) {
            protocol.credits = c;
        }
        protocol.retain = duration(pick(self.retain, file.retain), protocol.retain)?;
        if let Some(m) = pick(self.max_sessions, file.max_sessions) {
            protocol.max_sessions = m;
        }
        Ok(TargetSettings {
            volume,
            size,
            listen,
            read_only: self.read_only || file.read_only,
            direct: self.direct || file.direct,
            protocol,
            shutdown_up: duration(
                pick(self.shutdown_up, file.shutdown_up),
                Duration::from_secs(1),
            )?,
            json: self.json || file.json,
        })
    }
}

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM, registered when this is made:
/// a signal that arrives before [`Interrupts::wait`] is not lost (nor does it
/// kill the process with the default action).
struct Interrupts {
    #[cfg(unix)]
    signals: (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
}

impl Interrupts {
    fn new() -> anyhow::Result<Interrupts> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let int = signal(SignalKind::interrupt()).context("could not catch SIGINT")?;
            let term = signal(SignalKind::terminate()).context("could not catch SIGTERM")?;
            Ok(Interrupts {
                signals: (int, term),
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Interrupts {})
        }
    }

    /// Waits for the first of them.
    async fn wait(mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        {
            let (int, term) = &mut self.signals;
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            Ok(())
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c()
                .await
                .context("could not wait for Ctrl-C")
        }
    }
}

/// Serves until Ctrl-C or SIGTERM.
pub(crate) async fn run(s: TargetSettings) -> anyhow::Result<ExitCode> {
    let interrupts = Interrupts::new()?;
    let options = TargetOptions {
        protocol: s.protocol.clone(),
        ..TargetOptions::default()
    };
    let (target, what, size) = match &s.volume {
        Some(volume) => {
            let device = FileDevice::open(
                volume,
                OpenOptions {
                    size: s.size,
                    read_only: s.read_only,
                    direct: s.direct,
                },
            )
            .with_context(|| format!("could not open the volume {}", volume.display()))?;
            let size = holdfast_block::BlockDevice::size(&device);
            let target = Target::serve(&s.listen, options, BlockService::new(device))
                .await
                .context("could not listen")?;
            (target, volume.display().to_string(), Some(size))
        }
        None => {
            let target = Target::serve(&s.listen, options, LogService::default().service())
                .await
                .context("could not listen")?;
            (target, "the log service".to_owned(), None)
        }
    };
    let endpoints: Vec<String> = target.endpoints().iter().map(ToString::to_string).collect();
    if s.json {
        println!(
            "{}",
            serde_json::json!({ "event": "serving", "service": what, "size": size, "endpoints": endpoints })
        );
    } else {
        eprintln!(
            "serving {what}{} on {}; Ctrl-C to stop",
            size.map(|b| format!(" ({b} bytes)")).unwrap_or_default(),
            endpoints.join(", ")
        );
    }
    interrupts.wait().await?;
    eprintln!(
        "shutting down: connections stay up {:?} (new logins refused), then the process \
         exits; its sessions end with it (announced as \"will not return\")",
        s.shutdown_up
    );
    let stats = target.stats().await;
    // Sessions do not survive this process: say it will not return.
    target.shutdown(s.shutdown_up, None).await;
    if let Some(stats) = stats {
        if s.json {
            println!(
                "{}",
                serde_json::json!({ "event": "stopped", "stats": format!("{stats:?}") })
            );
        } else {
            eprintln!("stopped: {stats:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
