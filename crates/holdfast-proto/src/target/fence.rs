//! Fencing a host's older sessions on request (PROTOCOL.md §11.5).
//!
//! A FENCE names a node (an incarnation), a host and an epoch. On the node
//! it names, every session of that host created with a lower epoch is
//! fenced: it is marked so that no command of it starts again (see
//! [`super::quiesce`]), its connections are closed with ERROR `Fenced`, and
//! it ends (tombstone `Fenced`) as soon as none of its commands runs. The
//! node remembers the highest epoch it fenced each host at (a bounded list,
//! emitted as [`StateChange::HostFenced`] before any byte that reflects it)
//! and rejects later LOGINs of that host with a lower epoch (reject 11
//! `Fenced`). FENCE_DONE `Fenced` goes back once no fenced session has a
//! running command: from then on no command of them can execute.
//!
//! A FENCE that names another node is handed to the driver
//! ([`Ready::fences`]), which forwards it over its peer link to that node
//! and answers with [`Target::answer_fence`] (`Unreachable` when it has no
//! live link to that node or no answer in time).
//!
//! The invariant: a FENCE_DONE `Fenced` for (host, epoch) is sent only when
//! every session of the host with a lower epoch on this node has ended or
//! has no running command and is marked fenced.

use std::collections::{HashMap, VecDeque};

use crate::error::ProtocolError;
use crate::ids::{ConnId, SessionId};
use crate::time::Timestamp;
use crate::wire::{
    ErrorCode, FenceResult, Frame, HostId, Login, LoginKind, RejectReason, NEVER_MS,
};

use super::ready::{CloseReason, StateChange};
use super::{duration_ms, Phase, Target};

/// A FENCE for another node, for the driver to forward over its peer link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceRequest {
    /// The connection it arrived on: answer on it with [`Target::answer_fence`].
    pub conn: ConnId,
    /// The FENCE's token (echo it in the answer).
    pub token: u64,
    /// The node to fence (its incarnation).
    pub node: u32,
    /// The host whose older sessions are to be fenced.
    pub host: HostId,
    /// Sessions of `host` with an epoch below this are fenced.
    pub epoch: u64,
}

/// A fence of this node waiting for running commands.
#[derive(Debug)]
struct Pending {
    conn: ConnId,
    token: u64,
    /// Fenced sessions that still exist.
    sessions: Vec<SessionId>,
    since: Timestamp,
}

/// The fencing state of a target: fenced hosts, fences in progress and
/// requests for the driver.
#[derive(Debug)]
pub(crate) struct Fencing {
    capacity: usize,
    /// The highest epoch each host was fenced at, oldest first in `order`.
    epochs: HashMap<HostId, u64>,
    order: VecDeque<HostId>,
    pending: Vec<Pending>,
    /// FENCEs for other nodes, handed out in the next Ready.
    pub(crate) requests: Vec<FenceRequest>,
}

impl Fencing {
    pub(crate) fn new(capacity: usize) -> Self {
        Fencing {
            capacity,
            epochs: HashMap::new(),
            order: VecDeque::new(),
            pending: Vec::new(),
            requests: Vec::new(),
        }
    }

    /// Records a fence of `host` at `epoch`; true if that raised the
    /// remembered epoch. The oldest host is forgotten when full.
    pub(crate) fn raise(&mut self, host: HostId, epoch: u64) -> bool {
        if self.capacity == 0 {
            return false;
        }
        if let Some(e) = self.epochs.get_mut(&host) {
            if *e >= epoch {
                return false;
            }
            *e = epoch;
            return true;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.epochs.remove(&old);
            }
        }
        self.epochs.insert(host, epoch);
        self.order.push_back(host);
        true
    }

    /// The epoch `host` was fenced at, if remembered.
    pub(crate) fn epoch(&self, host: &HostId) -> Option<u64> {
        self.epochs.get(host).copied()
    }
}

impl Target {
    /// The highest epoch this node fenced `host` at, if it remembers.
    pub fn fenced_epoch(&self, host: &HostId) -> Option<u64> {
        self.fencing.epoch(host)
    }

    /// True if `session` exists and is fenced (it ends once nothing of it runs).
    pub fn is_fenced(&self, session: SessionId) -> bool {
        self.sessions.get(&session).is_some_and(|s| s.path.fenced)
    }

    /// The driver's answer to a [`FenceRequest`] it forwarded: a FENCE_DONE
    /// with `result` goes out on `conn` if it is still logged in.
    pub fn answer_fence(
        &mut self,
        conn: ConnId,
        token: u64,
        result: FenceResult,
        waited_ms: u32,
        now: Timestamp,
    ) {
        self.now = now;
        let attached = self
            .conns
            .get(&conn)
            .is_some_and(|c| !c.closing && matches!(c.phase, Phase::Attached(_)));
        if attached {
            self.fence_done(conn, token, result, waited_ms);
        }
    }

    /// A FENCE arrived on `conn`, logged in to `own`.
    pub(super) fn handle_fence(
        &mut self,
        conn: ConnId,
        own: SessionId,
        frame: Frame,
    ) -> Result<(), ProtocolError> {
        let Frame::Fence {
            token,
            node,
            host,
            epoch,
        } = frame
        else {
            return Ok(());
        };
        if host.is_zero() || epoch == 0 {
            self.fence_done(conn, token, FenceResult::Refused, 0);
            return Ok(());
        }
        if node != self.incarnation {
            self.stats.fences_forwarded += 1;
            self.fencing.requests.push(FenceRequest {
                conn,
                token,
                node,
                host,
                epoch,
            });
            return Ok(());
        }
        let victims: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.path
                    .host
                    .is_some_and(|h| h.host == host && h.epoch < epoch)
            })
            .map(|(id, _)| *id)
            .collect();
        if victims.contains(&own) {
            // Its own connection would close before the answer: a host
            // fences its older sessions from a session at the new epoch.
            self.fence_done(conn, token, FenceResult::Refused, 0);
            return Ok(());
        }
        self.stats.fences_received += 1;
        if self.fencing.raise(host, epoch) {
            self.changes.push(StateChange::HostFenced { host, epoch });
        }
        for &id in &victims {
            self.fence_session(id, host, epoch);
        }
        #[cfg(feature = "test-switches")]
        let confirm_early = self.config.switches.fence_without_waiting;
        #[cfg(not(feature = "test-switches"))]
        let confirm_early = false;
        let sessions: Vec<SessionId> = victims
            .into_iter()
            .filter(|id| self.sessions.contains_key(id) && !confirm_early)
            .collect();
        if sessions.is_empty() {
            self.stats.fences_confirmed += 1;
            self.fence_done(conn, token, FenceResult::Fenced, 0);
        } else {
            let since = self.now;
            self.fencing.pending.push(Pending {
                conn,
                token,
                sessions,
                since,
            });
        }
        Ok(())
    }

    /// Marks one session fenced, closes its connections and ends it if
    /// nothing of it runs.
    fn fence_session(&mut self, id: SessionId, host: HostId, epoch: u64) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !s.path.fenced {
            s.path.fenced = true;
            self.stats.sessions_fenced += 1;
        }
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closing && c.phase == Phase::Attached(id))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in conns {
            let frame = Frame::Error {
                code: ErrorCode::Fenced,
                text: format!(
                    "host {host} was fenced at epoch {epoch}: this session ended; its commands \
                     that had not started never will"
                ),
            };
            self.push_frame(conn, &frame);
            self.close_conn(conn, CloseReason::Fenced);
        }
        self.after_completion(id);
    }

    /// After a command of `session` completed (or was refused): ends the
    /// session if a fence or a deferred expiry waits for its last command,
    /// confirms fences that waited for it, or else schedules its output.
    pub(super) fn after_completion(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        if s.path.fenced && s.running() == 0 {
            self.end_session(session, RejectReason::Fenced);
            self.confirm_fences(session);
            return;
        }
        if s.expiry_deferred && s.running() == 0 && !s.is_attached() {
            // Its retain time passed while this command ran.
            self.expire(session);
            return;
        }
        if let Some(conn) = s.newest_route() {
            self.mark_dirty(conn);
        }
    }

    /// `session` has no running command left (or ended): fences that
    /// waited only for it are confirmed.
    fn confirm_fences(&mut self, session: SessionId) {
        let now = self.now;
        let mut done = Vec::new();
        self.fencing.pending.retain_mut(|p| {
            p.sessions.retain(|&id| id != session);
            if p.sessions.is_empty() {
                done.push((p.conn, p.token, duration_ms(now.saturating_since(p.since))));
                false
            } else {
                true
            }
        });
        for (conn, token, waited) in done {
            self.stats.fences_confirmed += 1;
            self.fence_done(conn, token, FenceResult::Fenced, waited);
        }
    }

    fn fence_done(&mut self, conn: ConnId, token: u64, result: FenceResult, waited_ms: u32) {
        let frame = Frame::FenceDone {
            token,
            result,
            waited_ms,
        };
        self.push_frame(conn, &frame);
    }

    /// A reject for a LOGIN that the fencing rules refuse, with its
    /// `retry_after_ms` and text: a new session of a host fenced at a
    /// higher epoch; a recovery of a fenced session; a recovery whose HOST
    /// record does not name the session's host (answered like a wrong
    /// secret: the host is part of the session's credentials).
    pub(super) fn host_refusal(&self, login: &Login) -> Option<(RejectReason, u32, String)> {
        if login.kind == LoginKind::New {
            let h = login.host?;
            let fenced = self.fencing.epoch(&h.host)?;
            return (fenced > h.epoch).then(|| {
                (
                    RejectReason::Fenced,
                    NEVER_MS,
                    format!(
                        "host {} was fenced at epoch {fenced}; log in with epoch {fenced} or higher",
                        h.host
                    ),
                )
            });
        }
        let s = self.sessions.get(&login.session)?;
        if !s.secret.matches(&login.secret) {
            return None; // the usual checks answer BadSecret
        }
        let same_host = match (s.path.host, login.host) {
            (None, None) => true,
            (Some(a), Some(b)) => a.host == b.host,
            _ => false,
        };
        if !same_host {
            let text = "the login's HOST record does not match the session's".to_owned();
            return Some((RejectReason::BadSecret, 0, text));
        }
        s.path.fenced.then(|| {
            let text = "the session was fenced; its commands that had not started never will";
            (RejectReason::Fenced, 0, text.to_owned())
        })
    }
}
