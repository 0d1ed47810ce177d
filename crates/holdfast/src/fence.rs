//! What a path group needs from one [`Initiator`] (PROTOCOL.md §11.4–§11.5):
//! ask its node for a fence, read the node's quiesce time and incarnation,
//! read when it last heard from (and wrote to) the node, watch its
//! connection state change, and raise the epoch its LOGINs carry.
//!
//! The quick reads (`quiesce`, `node`, `last_contact`, `state`) come from
//! state the driver publishes after every turn, so they never wait for the
//! driver; `fence` and `set_epoch` travel to it like a call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use holdfast_proto::{FenceResult, HostId, InitiatorEvent, SessionId};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::clock::Clock;
use crate::initiator::{Driver, Initiator};

/// One initiator's view of its path, published by its driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathState {
    /// A connection is logged in right now.
    pub connected: bool,
    /// The session, once one exists (it changes after a stateless recovery).
    pub session: Option<SessionId>,
    /// The node (target incarnation) the session belongs to.
    pub node: Option<u32>,
    /// The node's command quiesce time from the last LOGIN_ACCEPT (`None`:
    /// not logged in yet, or no HOST record was sent).
    pub quiesce: Option<Duration>,
    /// The epoch the next LOGIN carries.
    pub epoch: u64,
    /// The session is over (closed or lost for good).
    pub ended: bool,
}

/// How a fence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceOutcome {
    /// `Fenced`: confirmed. Anything else: fence by waiting instead.
    pub result: FenceResult,
    /// How long the fenced node waited for its running commands.
    pub waited: Duration,
}

/// Why [`Initiator::fence`] did not get an answer.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The core refused to send it (no logged-in connection, too many
    /// unanswered).
    #[error(transparent)]
    Refused(#[from] holdfast_proto::FenceError),
    /// The initiator stopped before the answer came.
    #[error("the initiator stopped before the fence was answered; fence by waiting instead")]
    Stopped,
}

/// Requests for the driver from this module's methods.
pub(crate) enum PathRequest {
    Fence {
        node: u32,
        host: HostId,
        epoch: u64,
        reply: oneshot::Sender<Result<FenceOutcome, FenceError>>,
    },
    SetEpoch(u64, oneshot::Sender<()>),
}

/// What the driver publishes for the handles.
#[derive(Debug)]
pub(crate) struct PathShared {
    clock: Clock,
    /// Nanoseconds since the clock's origin, plus one (0: never).
    last_recv: AtomicU64,
    last_send: AtomicU64,
    state: watch::Sender<PathState>,
    /// To the driver, outside the bounded request channel (which stops
    /// while a call waits for credit): a fence must not wait for credit.
    requests: mpsc::UnboundedSender<PathRequest>,
}

impl PathShared {
    pub(crate) fn new(
        clock: Clock,
        epoch: u64,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<PathRequest>) {
        let (state, _) = watch::channel(PathState {
            epoch,
            ..PathState::default()
        });
        let (requests, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(PathShared {
            clock,
            last_recv: AtomicU64::new(0),
            last_send: AtomicU64::new(0),
            state,
            requests,
        });
        (shared, rx)
    }

    fn load(&self, at: &AtomicU64) -> Option<Instant> {
        match at.load(Ordering::Relaxed) {
            0 => None,
            n => Some(
                self.clock
                    .instant(holdfast_proto::Timestamp::from_nanos(n - 1)),
            ),
        }
    }
}

/// The driver's side: fences waiting for their answer.
#[derive(Debug, Default)]
pub(crate) struct DriverPath {
    waiters: Vec<(u64, oneshot::Sender<Result<FenceOutcome, FenceError>>)>,
}

impl Initiator {
    /// Asks the node this initiator is logged in to for a fence: every
    /// session of `host` with an epoch below `epoch` on node `node` (this
    /// node, or another one over this node's peer link) stops starting
    /// commands and ends once its running ones finished. Waits for the
    /// answer (PROTOCOL.md §11.5). `Unreachable` (also when the connection
    /// is lost before the answer) means: fence by waiting out the old
    /// node's quiesce time instead.
    pub async fn fence(
        &self,
        node: u32,
        host: HostId,
        epoch: u64,
    ) -> Result<FenceOutcome, FenceError> {
        let (reply, rx) = oneshot::channel();
        let request = PathRequest::Fence {
            node,
            host,
            epoch,
            reply,
        };
        self.path
            .requests
            .send(request)
            .map_err(|_| FenceError::Stopped)?;
        rx.await.unwrap_or(Err(FenceError::Stopped))
    }

    /// Raises the epoch the next LOGINs carry (a lower one is ignored).
    /// The current session keeps its own; if a new-session LOGIN was
    /// rejected `Fenced`, the initiator tries again at once.
    pub async fn set_epoch(&self, epoch: u64) {
        let (tx, rx) = oneshot::channel();
        if self
            .path
            .requests
            .send(PathRequest::SetEpoch(epoch, tx))
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// The node's command quiesce time from the last LOGIN_ACCEPT.
    pub fn quiesce(&self) -> Option<Duration> {
        self.path.state.borrow().quiesce
    }

    /// The node (target incarnation) of the current session.
    pub fn node(&self) -> Option<u32> {
        self.path.state.borrow().node
    }

    /// When a byte last arrived from the node.
    pub fn last_received(&self) -> Option<Instant> {
        self.path.load(&self.path.last_recv)
    }

    /// The last contact with the node in either direction: the later of
    /// the last byte received and the last bytes handed to the socket. A
    /// path group that fences by waiting waits the quiesce time from here.
    pub fn last_contact(&self) -> Option<Instant> {
        let recv = self.path.load(&self.path.last_recv);
        let send = self.path.load(&self.path.last_send);
        recv.max(send)
    }

    /// The path's state now.
    pub fn path_state(&self) -> PathState {
        self.path.state.borrow().clone()
    }

    /// A receiver that wakes on every change of the path's state (a login,
    /// a lost connection, a new session, the end): a path group notices a
    /// lost path at once.
    pub fn watch_state(&self) -> watch::Receiver<PathState> {
        self.path.state.subscribe()
    }
}

impl Driver {
    /// Acts on a [`PathRequest`].
    pub(crate) fn path_request(&mut self, request: PathRequest) {
        let now = self.clock.now();
        match request {
            PathRequest::Fence {
                node,
                host,
                epoch,
                reply,
            } => match self.core.fence(node, host, epoch, now) {
                Ok(token) => {
                    debug!(token, node, %host, epoch, "fence requested");
                    self.path.waiters.push((token, reply));
                }
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            PathRequest::SetEpoch(epoch, done) => {
                let held = self.core.reconnect_at() == holdfast_proto::Timestamp::NEVER;
                self.core.set_epoch(epoch, now);
                if held && self.core.reconnect_at() != holdfast_proto::Timestamp::NEVER {
                    info!(epoch, "epoch raised: logging in again");
                    self.reconnect_at = Some(Instant::now());
                }
                let _ = done.send(());
            }
        }
    }

    /// A request the driver cannot serve any more (the session ended).
    pub(crate) fn path_refuse(&mut self, request: PathRequest) {
        match request {
            PathRequest::Fence { reply, .. } => {
                let e = holdfast_proto::FenceError::NotConnected;
                drop(reply.send(Err(e.into())));
            }
            PathRequest::SetEpoch(_, done) => drop(done.send(())),
        }
    }

    /// Delivers a FENCE_DONE (or a fence lost with its connection).
    pub(crate) fn path_event(&mut self, event: &InitiatorEvent) {
        if let InitiatorEvent::FenceDone {
            token,
            result,
            waited,
        } = event
        {
            info!(token, %result, ?waited, "fence answered");
            if let Some(i) = self.path.waiters.iter().position(|(t, _)| t == token) {
                let (_, reply) = self.path.waiters.swap_remove(i);
                let outcome = FenceOutcome {
                    result: *result,
                    waited: *waited,
                };
                let _ = reply.send(Ok(outcome));
            }
        }
    }

    /// Publishes the core's path state for the handles (after every turn).
    pub(crate) fn publish_path(&mut self) {
        let shared = &self.shared_path;
        let stamp = |t: Option<holdfast_proto::Timestamp>| t.map_or(0, |t| t.as_nanos() + 1);
        shared
            .last_recv
            .store(stamp(self.core.last_received()), Ordering::Relaxed);
        shared
            .last_send
            .store(stamp(self.core.last_sent()), Ordering::Relaxed);
        let now = PathState {
            connected: self.core.is_connected(),
            session: self.core.session(),
            node: self.core.node(),
            quiesce: self.core.quiesce(),
            epoch: self.core.epoch(),
            ended: self.core.is_finished(),
        };
        shared.state.send_if_modified(|s| {
            if *s == now {
                false
            } else {
                *s = now;
                true
            }
        });
    }
}
