//! The NBD server's metrics, recorded through the `metrics` facade (nothing
//! is recorded unless the application installs a recorder, as `holdfast nbd
//! --metrics` does): requests by type and outcome, and their latency from
//! the moment the request was read until its outcome was known.

use std::time::Duration;

use super::consts::{
    CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE,
    CMD_WRITE_ZEROES,
};
use crate::device::BlockError;

/// Requests answered or refused, by `type` and `outcome`.
pub(crate) const REQUESTS: &str = "holdfast_nbd_requests_total";
/// Latency of requests that reached the device, by `type`.
pub(crate) const REQUEST_SECONDS: &str = "holdfast_nbd_request_seconds";

/// A request that ran: `ok`, `error` (answered with an errno), or `in_doubt`
/// (the connection is closed instead of answering it).
pub(crate) fn answered(kind: &'static str, outcome: Result<(), &BlockError>, took: Duration) {
    let outcome = match outcome {
        Ok(()) => "ok",
        Err(BlockError::InDoubt(_)) => "in_doubt",
        Err(_) => "error",
    };
    metrics::counter!(REQUESTS, "type" => kind, "outcome" => outcome).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "type" => kind).record(took);
}

/// A request refused before it reached the device (bad flags, out of range,
/// read-only export, misaligned).
pub(crate) fn refused(command: u16) {
    metrics::counter!(REQUESTS, "type" => command_name(command), "outcome" => "refused")
        .increment(1);
}

/// The metric label of an NBD command code.
fn command_name(command: u16) -> &'static str {
    match command {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disconnect",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_CACHE => "cache",
        CMD_WRITE_ZEROES => "write_zeroes",
        CMD_BLOCK_STATUS => "block_status",
        _ => "unknown",
    }
}
