//! Peer links between target nodes that share a backend (PROTOCOL.md
//! §11.5): one runtime [`Initiator`] session from this node to each peer
//! (`TargetOptions::peers`, `holdfast target --peer ADDR`). A peer's node
//! id is the incarnation in that session's id, learned at login.
//!
//! A FENCE that names another node reaches the engine in `Ready::fences`;
//! the engine hands it here. It is forwarded as a FENCE over the link whose
//! node it names, and the peer's FENCE_DONE answers the original. With no
//! live link to that node, or no answer within `peer_fence_timeout`, the
//! answer is `Unreachable`: the initiator then fences by waiting out the
//! old node's quiesce time.

use std::sync::Arc;
use std::time::Duration;

use holdfast_proto::{FenceRequest, FenceResult};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::initiator::{Initiator, InitiatorOptions};
use crate::target::EngineMsg;
use crate::transport::{Endpoint, EndpointConnector};

/// This node's links to its peers.
pub(crate) struct Peers {
    links: Vec<(Endpoint, Initiator)>,
    timeout: Duration,
}

impl Peers {
    /// Starts one session to each peer (they reconnect forever).
    pub(crate) fn start(peers: &[Endpoint], timeout: Duration) -> Peers {
        let links = peers
            .iter()
            .map(|e| {
                let mut options = InitiatorOptions::default();
                options.protocol.session_loss_timeout = None;
                let connector = EndpointConnector::new(e.clone(), options.connect_timeout);
                info!(peer = ?e, "peer link starting");
                (e.clone(), Initiator::start(Arc::new(connector), options))
            })
            .collect();
        Peers { links, timeout }
    }

    /// Forwards `request` to the node it names; the answer comes back on
    /// `answers` (always exactly one).
    pub(crate) fn forward(&self, request: FenceRequest, answers: mpsc::Sender<EngineMsg>) {
        let link = self
            .links
            .iter()
            .find(|(_, l)| l.node() == Some(request.node) && l.path_state().connected)
            .map(|(e, l)| (e.clone(), l.clone()));
        let timeout = self.timeout;
        tokio::spawn(async move {
            let (result, waited_ms) = match link {
                None => {
                    warn!(
                        node = format_args!("{:08x}", request.node),
                        "fence for a node without a live peer link: answering Unreachable"
                    );
                    (FenceResult::Unreachable, 0)
                }
                Some((peer, link)) => {
                    let asked = link.fence(request.node, request.host, request.epoch);
                    match tokio::time::timeout(timeout, asked).await {
                        Ok(Ok(o)) => {
                            debug!(?peer, result = %o.result, "peer answered the fence");
                            let ms = u32::try_from(o.waited.as_millis()).unwrap_or(u32::MAX - 1);
                            (o.result, ms)
                        }
                        Ok(Err(e)) => {
                            warn!(?peer, error = %e, "fence over the peer link failed");
                            (FenceResult::Unreachable, 0)
                        }
                        Err(_) => {
                            warn!(?peer, ?timeout, "the peer did not answer the fence in time");
                            (FenceResult::Unreachable, 0)
                        }
                    }
                }
            };
            let answer = EngineMsg::FenceAnswered {
                request,
                result,
                waited_ms,
            };
            let _ = answers.send(answer).await;
        });
    }
}
