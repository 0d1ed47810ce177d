//! How the target reports what its backend did. A request that failed:
//! backend failures (a full disk, an I/O error) are the operator's to fix, so
//! they are logged at warn, at most once a second with a count of the ones in
//! between (a full disk fails every write); refusals caused by the client (out
//! of range, read-only, malformed) stay at debug. And every request's
//! latency, as the `holdfast_backend_io_seconds` histogram (recorded through
//! the `metrics` facade: nothing unless a recorder is installed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use holdfast::proto::{Seq, SessionId};
use metrics::Histogram;
use tracing::{debug, warn};

use crate::device::BlockError;
use crate::wire::Opcode;

/// Backend I/O latency, by operation: from the moment a request may touch
/// the device (after the ordering of overlapping requests) until it is done.
pub(crate) const BACKEND_IO_SECONDS: &str = "holdfast_backend_io_seconds";

/// The `op` labels, indexed by [`op_index`].
const OPS: [&str; 8] = [
    "read",
    "write",
    "flush",
    "trim",
    "write_zeroes",
    "info",
    "block_status",
    "cache",
];

/// A service's `holdfast_backend_io_seconds` handles, one per operation,
/// registered with the recorder on first use and shared by the service's
/// clones: a `metrics::histogram!` per request would build, hash and look
/// up its key every time (issue 17); a handle records the sample directly.
#[derive(Debug, Default)]
pub(crate) struct BackendLatency {
    /// By [`op_index`].
    by_op: [OnceLock<Histogram>; OPS.len()],
}

impl BackendLatency {
    /// Records one request's backend latency.
    pub(crate) fn record(&self, op: Opcode, took: Duration) {
        let i = op_index(op);
        self.by_op[i]
            .get_or_init(|| metrics::histogram!(BACKEND_IO_SECONDS, "op" => OPS[i]))
            .record(took);
    }
}

/// The index in [`OPS`] of an operation (its metric label).
fn op_index(op: Opcode) -> usize {
    match op {
        Opcode::Read => 0,
        Opcode::Write => 1,
        Opcode::Flush => 2,
        Opcode::Trim => 3,
        Opcode::WriteZeroes => 4,
        Opcode::Info => 5,
        Opcode::BlockStatus => 6,
        Opcode::Cache => 7,
    }
}

/// Shortest time between two warnings.
const EVERY: Duration = Duration::from_secs(1);

/// Rate-limits backend-failure warnings; shared by a service's clones.
#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    /// When the last warning was logged.
    last: Mutex<Option<Instant>>,
    /// Backend failures not logged since then.
    suppressed: AtomicU64,
}

impl FailureLog {
    /// Logs a failed request; returns whether a warning was written.
    pub(crate) fn failed(&self, session: SessionId, seq: Seq, error: &BlockError) -> bool {
        if !matches!(error, BlockError::NoSpace | BlockError::Io(_)) {
            debug!(%session, seq, %error, "request failed");
            return false;
        }
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *last = Some(now);
        let more = self.suppressed.swap(0, Ordering::Relaxed);
        warn!(
            %session,
            seq,
            %error,
            suppressed = more,
            "the backing store failed a request; the client got the error (free space or \
             check the device, then retry)"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_failures_warn_at_most_once_a_second_and_client_errors_never() {
        let log = FailureLog::default();
        let s = SessionId(1);
        assert!(!log.failed(s, 1, &BlockError::ReadOnly));
        assert!(log.failed(s, 2, &BlockError::NoSpace));
        assert!(!log.failed(s, 3, &BlockError::NoSpace));
        assert!(!log.failed(s, 4, &BlockError::Io("EIO".into())));
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 2);
    }
}
