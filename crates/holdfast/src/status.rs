//! What a running [`crate::Target`] can say about its sessions right now:
//! the snapshots behind `holdfast status` and the Prometheus gauges.

use std::time::Duration;

use holdfast_proto::target::SessionInfo;
use holdfast_proto::{SessionId, TargetStats};
use tokio::sync::{mpsc, oneshot};

use crate::target::EngineMsg;
use crate::transport::Endpoint;

/// Where a session is in its life (PROTOCOL.md §14.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionState {
    /// A connection is attached.
    Attached,
    /// No connection; the session is retained for its retain time.
    Detached,
    /// The retain time passed while commands ran: the session is kept until
    /// the last one completes (or a recovery), then ends.
    Expiring,
}

impl SessionState {
    /// The state's name as `holdfast status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Attached => "attached",
            SessionState::Detached => "detached",
            SessionState::Expiring => "expiring",
        }
    }
}

/// One session of a running target.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStatus {
    /// The session's id.
    pub id: SessionId,
    /// Its state.
    pub state: SessionState,
    /// How long it has had no connection (`None` while attached).
    pub detached_for: Option<Duration>,
    /// The core's snapshot: credits, held, running, cached responses.
    pub info: SessionInfo,
}

impl SessionStatus {
    /// Builds the status from the core's snapshot; `detached_for` is the
    /// time since `info.detached_since`.
    pub(crate) fn new(id: SessionId, info: SessionInfo, detached_for: Option<Duration>) -> Self {
        let state = if info.attached {
            SessionState::Attached
        } else if info.expiry_deferred {
            SessionState::Expiring
        } else {
            SessionState::Detached
        };
        SessionStatus {
            id,
            state,
            detached_for: if info.attached { None } else { detached_for },
            info,
        }
    }
}

/// Reads a running target's state from any task ([`crate::Target::observer`]).
#[derive(Clone, Debug)]
pub struct TargetObserver {
    engine: mpsc::Sender<EngineMsg>,
    endpoints: Vec<Endpoint>,
}

impl TargetObserver {
    pub(crate) fn new(engine: mpsc::Sender<EngineMsg>, endpoints: Vec<Endpoint>) -> Self {
        TargetObserver { engine, endpoints }
    }

    /// The endpoints the target bound.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Every session held, in id order (`None` once the target stopped).
    pub async fn sessions(&self) -> Option<Vec<SessionStatus>> {
        let (tx, rx) = oneshot::channel();
        self.engine.send(EngineMsg::Sessions(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The core's counters (`None` once the target stopped).
    pub async fn stats(&self) -> Option<TargetStats> {
        let (tx, rx) = oneshot::channel();
        self.engine.send(EngineMsg::Stats(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Connections open, logging in or attached (`None` once stopped).
    pub async fn connections(&self) -> Option<usize> {
        let (tx, rx) = oneshot::channel();
        self.engine
            .send(EngineMsg::OpenConnections(tx))
            .await
            .ok()?;
        rx.await.ok()
    }
}
