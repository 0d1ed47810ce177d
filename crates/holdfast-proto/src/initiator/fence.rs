//! What a path group needs from one initiator (PROTOCOL.md §11.4–§11.5):
//! the host and epoch its LOGINs carry, the node's quiesce time from the
//! last LOGIN_ACCEPT, the node it is logged in to, when it last heard from
//! (and wrote to) that node, and the FENCE / FENCE_DONE exchange.
//!
//! A FENCE travels outside both streams: it is sent once on the logged-in
//! connection and never resent. If that connection is lost before the
//! FENCE_DONE arrives, the fence's outcome is unknown and it completes with
//! [`FenceResult::Unreachable`] (fence by waiting instead, or ask again).

use std::time::Duration;

use thiserror::Error;

use crate::error::ProtocolError;
use crate::time::Timestamp;
use crate::wire::{ErrorCode, FenceResult, Frame, HostId, HostRecord};

use super::{Initiator, InitiatorEvent};

/// The most FENCEs one initiator may have unanswered at once.
pub const MAX_PENDING_FENCES: usize = 64;

/// Why [`Initiator::fence`] refused to send a FENCE.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FenceError {
    /// No connection is logged in: a FENCE travels only on one.
    #[error("no logged-in connection to send the FENCE on; wait for the login and ask again")]
    NotConnected,
    /// [`MAX_PENDING_FENCES`] are already unanswered.
    #[error("{MAX_PENDING_FENCES} fences are already waiting for their answer")]
    TooMany,
}

/// Host, epoch, quiesce time, contact times and unanswered fences.
#[derive(Debug, Default)]
pub(super) struct PathInfo {
    epoch: u64,
    quiesce: Option<Duration>,
    last_recv: Option<Timestamp>,
    last_send: Option<Timestamp>,
    pending: Vec<u64>,
    next_token: u64,
    /// A new-session LOGIN was rejected `Fenced`: raising the epoch lifts
    /// the "never" hold it set.
    fenced_out: bool,
}

impl PathInfo {
    pub(super) fn new(epoch: u64) -> Self {
        PathInfo {
            epoch,
            next_token: 1,
            ..PathInfo::default()
        }
    }

    pub(super) fn received(&mut self, now: Timestamp) {
        self.last_recv = Some(now);
    }

    pub(super) fn sent(&mut self, now: Timestamp) {
        self.last_send = Some(now);
    }

    pub(super) fn accepted(&mut self, quiesce_ms: u32) {
        self.quiesce = (quiesce_ms != 0).then(|| Duration::from_millis(u64::from(quiesce_ms)));
    }

    pub(super) fn rejected_fenced(&mut self) {
        self.fenced_out = true;
    }
}

impl Initiator {
    /// The HOST record the next LOGIN carries, if the configuration names
    /// a host.
    pub(super) fn host_record(&self) -> Option<HostRecord> {
        self.config.host.map(|host| HostRecord {
            host,
            epoch: self.path.epoch,
        })
    }

    /// The fencing epoch the next LOGIN carries.
    pub fn epoch(&self) -> u64 {
        self.path.epoch
    }

    /// Raises the epoch the next LOGIN carries (a lower one is ignored).
    /// The current session keeps the epoch it was created with; a path
    /// group raises the epoch before it fences the old node and then logs
    /// in to new sessions at the new epoch. If a new-session LOGIN was
    /// rejected `Fenced`, a higher epoch lifts its "never retry" hold.
    pub fn set_epoch(&mut self, epoch: u64, now: Timestamp) {
        if epoch <= self.path.epoch {
            return;
        }
        self.path.epoch = epoch;
        if std::mem::take(&mut self.path.fenced_out) {
            self.reconnect_at = now;
        }
    }

    /// The node's command quiesce time from the last LOGIN_ACCEPT (`None`
    /// before a login, or when the login carried no HOST record): after
    /// this long without contact the node starts none of this session's
    /// commands and its started ones have finished (PROTOCOL.md §11.4).
    pub fn quiesce(&self) -> Option<Duration> {
        self.path.quiesce
    }

    /// The node this initiator is logged in to (the incarnation in its
    /// session id), once a session exists.
    pub fn node(&self) -> Option<u32> {
        self.session().map(|s| s.incarnation())
    }

    /// When a byte last arrived from the node, on any connection.
    pub fn last_received(&self) -> Option<Timestamp> {
        self.path.last_recv
    }

    /// When bytes were last handed out to send to the node.
    pub fn last_sent(&self) -> Option<Timestamp> {
        self.path.last_send
    }

    /// The last contact with the node in either direction: the later of
    /// [`Initiator::last_received`] and [`Initiator::last_sent`]. A path
    /// group that fences by waiting waits the quiesce time from here.
    pub fn last_contact(&self) -> Option<Timestamp> {
        self.path.last_recv.max(self.path.last_send)
    }

    /// Asks the node this initiator is logged in to for a fence: every
    /// session of `host` with an epoch below `epoch` on node `node` (this
    /// node or, over its peer link, another) is fenced. Returns the token
    /// the [`InitiatorEvent::FenceDone`] will carry.
    pub fn fence(
        &mut self,
        node: u32,
        host: HostId,
        epoch: u64,
        _now: Timestamp,
    ) -> Result<u64, FenceError> {
        let Some(c) = self.conn.as_ref().filter(|c| c.logged_in) else {
            return Err(FenceError::NotConnected);
        };
        if self.path.pending.len() >= MAX_PENDING_FENCES {
            return Err(FenceError::TooMany);
        }
        let token = self.path.next_token;
        self.path.next_token += 1;
        let frame = Frame::Fence {
            token,
            node,
            host,
            epoch,
        };
        self.out.push(&frame, c.digests);
        self.path.pending.push(token);
        Ok(token)
    }

    /// A FENCE_DONE arrived.
    pub(super) fn on_fence_done(
        &mut self,
        token: u64,
        result: FenceResult,
        waited_ms: u32,
    ) -> Result<(), ProtocolError> {
        let Some(i) = self.path.pending.iter().position(|&t| t == token) else {
            return Err(ProtocolError::new(
                ErrorCode::UnexpectedFrame,
                format!("FENCE_DONE {token} answers no FENCE"),
            ));
        };
        self.path.pending.swap_remove(i);
        // Results this implementation does not know mean "unreachable".
        let result = match result {
            FenceResult::Other(_) => FenceResult::Unreachable,
            known => known,
        };
        self.events.push_back(InitiatorEvent::FenceDone {
            token,
            result,
            waited: Duration::from_millis(u64::from(waited_ms)),
        });
        Ok(())
    }

    /// The connection was lost: unanswered fences complete `Unreachable`.
    pub(super) fn fences_lost(&mut self) {
        for token in std::mem::take(&mut self.path.pending) {
            self.events.push_back(InitiatorEvent::FenceDone {
                token,
                result: FenceResult::Unreachable,
                waited: Duration::ZERO,
            });
        }
    }
}
