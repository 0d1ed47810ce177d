//! What the path group needs from one node's session, in one place: whether
//! its connection is logged in, the node's quiesce time and incarnation, the
//! last contact with it, and a fence request sent through it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

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
    // PLACEHOLDER until h1's connection-state watch lands.
    let (tx, rx) = watch::channel(false);
    let init = initiator.clone();
    tokio::spawn(async move {
        loop {
            let Some(s) = init.stats().await else { return };
            let up = s.sessions + s.recoveries > 0 && s.disconnects < s.connects;
            tx.send_if_modified(|v| std::mem::replace(v, up) != up);
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    rx
}

/// The node's command quiesce time for this session, if it promised one.
pub(crate) fn quiesce(_initiator: &Initiator) -> Option<Duration> {
    None
}

/// The node's incarnation (from its session id), once logged in.
pub(crate) fn node(_initiator: &Initiator) -> Option<u32> {
    None
}

/// The last byte received from or sent to the node.
pub(crate) fn last_contact(_initiator: &Initiator) -> Option<Instant> {
    None
}

/// Asks the node behind `via` to fence incarnation `node` for `host` below
/// `epoch`; bounded by `limit`.
pub(crate) async fn fence(
    _via: &Initiator,
    _node: u32,
    _host: HostId,
    _epoch: u64,
    _limit: Duration,
) -> FenceAnswer {
    FenceAnswer::NotConfirmed
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
