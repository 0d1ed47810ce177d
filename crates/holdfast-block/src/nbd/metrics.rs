//! The NBD server's metrics, recorded through the `metrics` facade (nothing
//! is recorded unless the application installs a recorder, as `holdfast nbd
//! --metrics` does): requests by type and outcome, and their latency from
//! the moment the request was read until its outcome was known.
//!
//! Each connection keeps a [`RequestMetrics`]: the handle of every series
//! is registered with the recorder the first time the connection records
//! into it, and reused after that. A `metrics::counter!` per request would
//! build the key, hash it, look it up in the recorder's registry and clone
//! an `Arc` every time (issue 17 measured that at 4 KiB QD 32); a handle is
//! one atomic add. Nothing is batched: every request is in the recorder
//! the moment it is answered, so a scrape is always exact.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};

use super::consts::{
    CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE,
    CMD_WRITE_ZEROES,
};
use crate::device::BlockError;

/// Requests answered or refused, by `type` and `outcome`.
pub(crate) const REQUESTS: &str = "holdfast_nbd_requests_total";
/// Latency of requests that reached the device, by `type`.
pub(crate) const REQUEST_SECONDS: &str = "holdfast_nbd_request_seconds";

/// The `type` labels, indexed by [`type_index`].
const TYPES: [&str; 9] = [
    "read",
    "write",
    "disconnect",
    "flush",
    "trim",
    "cache",
    "write_zeroes",
    "block_status",
    "unknown",
];

/// The `outcome` labels, indexed by [`Outcome`].
const OUTCOMES: [&str; 4] = ["ok", "error", "in_doubt", "refused"];

/// What became of a request (the `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered with success.
    Ok = 0,
    /// Answered with an errno.
    Error = 1,
    /// The connection is closed instead of answering it.
    InDoubt = 2,
    /// Refused before it reached the device.
    Refused = 3,
}

/// One connection's metric handles, registered on first use.
#[derive(Debug, Default)]
pub(crate) struct RequestMetrics {
    /// `holdfast_nbd_requests_total`, by type, then outcome.
    requests: [[OnceLock<Counter>; OUTCOMES.len()]; TYPES.len()],
    /// `holdfast_nbd_request_seconds`, by type.
    latency: [OnceLock<Histogram>; TYPES.len()],
}

impl RequestMetrics {
    /// A request that ran: `ok`, `error` (answered with an errno), or
    /// `in_doubt` (the connection is closed instead of answering it).
    pub(crate) fn answered(&self, command: u16, outcome: Result<(), &BlockError>, took: Duration) {
        let outcome = match outcome {
            Ok(()) => Outcome::Ok,
            Err(BlockError::InDoubt(_)) => Outcome::InDoubt,
            Err(_) => Outcome::Error,
        };
        let ty = type_index(command);
        self.counter(ty, outcome).increment(1);
        self.latency[ty]
            .get_or_init(|| metrics::histogram!(REQUEST_SECONDS, "type" => TYPES[ty]))
            .record(took);
    }

    /// A request refused before it reached the device (bad flags, out of
    /// range, read-only export, misaligned).
    pub(crate) fn refused(&self, command: u16) {
        self.counter(type_index(command), Outcome::Refused)
            .increment(1);
    }

    /// The handle of one `holdfast_nbd_requests_total` series.
    fn counter(&self, ty: usize, outcome: Outcome) -> &Counter {
        let o = outcome as usize;
        self.requests[ty][o].get_or_init(
            || metrics::counter!(REQUESTS, "type" => TYPES[ty], "outcome" => OUTCOMES[o]),
        )
    }
}

/// The index in [`TYPES`] of an NBD command code.
fn type_index(command: u16) -> usize {
    match command {
        CMD_READ => 0,
        CMD_WRITE => 1,
        CMD_DISC => 2,
        CMD_FLUSH => 3,
        CMD_TRIM => 4,
        CMD_CACHE => 5,
        CMD_WRITE_ZEROES => 6,
        CMD_BLOCK_STATUS => 7,
        _ => 8,
    }
}
