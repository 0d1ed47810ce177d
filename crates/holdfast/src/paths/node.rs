//! What the path group needs from one node's session, in one place: whether
//! its connection is logged in, the node's quiesce time and incarnation, the
//! last contact with it, and a fence request sent through it (the runtime
//! [`Initiator`]'s path API, PROTOCOL.md §11.4–§11.5).

use std::time::Duration;

use holdfast_proto::FenceResult;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::Initiator;

pub use holdfast_proto::HostId;

/// A surviving node's answer to a fence request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FenceAnswer {
    /// The old node confirmed: none of the host's older commands runs.
    Fenced,
    /// The old node could not be reached (or refused): wait instead.
    NotConfirmed,
}

/// Watches whether `initiator`'s connection is logged in (`true`).
pub(crate) fn watch_link(initiator: &Initiator) -> watch::Receiver<bool> {
    let mut state = initiator.watch_state();
    let (tx, rx) = watch::channel(state.borrow_and_update().connected);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        // The driver is gone: the link is down for good.
                        tx.send_replace(false);
                        return;
                    }
                    let up = state.borrow_and_update().connected;
                    tx.send_if_modified(|v| std::mem::replace(v, up) != up);
                }
                () = tx.closed() => return,
            }
        }
    });
    rx
}

/// The node's command quiesce time for this session, if it promised one.
pub(crate) fn quiesce(initiator: &Initiator) -> Option<Duration> {
    initiator.quiesce()
}

/// The node's incarnation (from its session id), once logged in.
pub(crate) fn node(initiator: &Initiator) -> Option<u32> {
    initiator.node()
}

/// The last byte received from or sent to the node.
pub(crate) fn last_contact(initiator: &Initiator) -> Option<Instant> {
    initiator.last_contact()
}

/// Asks the node behind `via` to fence incarnation `node` for `host` below
/// `epoch`; bounded by `limit`.
pub(crate) async fn fence(
    via: &Initiator,
    node: u32,
    host: HostId,
    epoch: u64,
    limit: Duration,
) -> FenceAnswer {
    match tokio::time::timeout(limit, via.fence(node, host, epoch)).await {
        Ok(Ok(outcome)) if outcome.result == FenceResult::Fenced => FenceAnswer::Fenced,
        Ok(Ok(outcome)) => {
            debug!(result = %outcome.result, "fence not confirmed");
            FenceAnswer::NotConfirmed
        }
        Ok(Err(e)) => {
            debug!(error = %e, "fence not sent");
            FenceAnswer::NotConfirmed
        }
        Err(_) => FenceAnswer::NotConfirmed,
    }
}

/// Starts a session to a node for `host` at `epoch`.
pub(crate) fn start(
    connector: std::sync::Arc<dyn crate::Connector>,
    options: &crate::InitiatorOptions,
    host: HostId,
    epoch: u64,
) -> Initiator {
    let mut options = options.clone();
    options.protocol.host = Some(host);
    options.protocol.epoch = epoch;
    Initiator::start(connector, options)
}
