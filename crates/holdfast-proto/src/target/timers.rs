//! The target's timers: one min-heap of (deadline, key) with lazy
//! invalidation. An entry only says "look at this key by then"; when it pops,
//! the owner recomputes the real deadline and either fires or re-arms. So
//! moving a deadline later costs nothing, and the heap holds about one entry
//! per connection and session.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::ProtocolError;
use crate::ids::{ConnId, SessionId};
use crate::time::Timestamp;
use crate::wire::{ErrorCode, Frame, RejectReason};

use super::{admission, CloseReason, Phase};

/// What a timer entry refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKey {
    /// A connection's login or inactivity deadline.
    Conn(ConnId),
    /// A session's ack delay or retain deadline.
    Session(SessionId),
    /// The end of the shutdown notice's up time.
    Shutdown,
}

/// A min-heap of deadlines.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Timestamp, TimerKey)>>,
}

impl Timers {
    /// Asks to look at `key` no later than `at`.
    pub(crate) fn arm(&mut self, at: Timestamp, key: TimerKey) {
        if at != Timestamp::NEVER {
            self.heap.push(Reverse((at, key)));
        }
    }

    /// Asks to look at session `id` no later than `at`, where `armed` is the
    /// session's record of the earliest entry it has in the heap. When that
    /// entry is due no later than `at`, nothing is pushed: it pops in time,
    /// and the session's timer handler recomputes and re-arms whatever
    /// deadline is then pending. So a deadline moved later on every command
    /// (the ack delay) costs one entry per delay, not one per command.
    /// Whoever pops an entry of the session must reset `armed` to `None`.
    pub(crate) fn arm_session(
        &mut self,
        at: Timestamp,
        id: SessionId,
        armed: &mut Option<Timestamp>,
    ) {
        if at == Timestamp::NEVER || armed.is_some_and(|t| t <= at) {
            return;
        }
        self.heap.push(Reverse((at, TimerKey::Session(id))));
        *armed = Some(at);
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops one entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Timestamp) -> Option<TimerKey> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, k))| k),
            _ => None,
        }
    }
}

/// The target's timer handlers: what happens when a connection's login or
/// inactivity deadline, a session's ack delay or retain time, or the
/// shutdown notice's up time passes.
impl super::Target {
    pub(super) fn conn_timer(&mut self, conn: ConnId, now: Timestamp) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        let (deadline, code, what) = match c.phase {
            Phase::Login => (
                c.opened + self.config.login_timeout,
                ErrorCode::LoginTimeout,
                "no login",
            ),
            Phase::Attached(_) => (
                c.last_recv + c.inactivity,
                ErrorCode::Inactivity,
                "no traffic",
            ),
        };
        if deadline <= now {
            let limit = match c.phase {
                Phase::Login => self.config.login_timeout,
                Phase::Attached(_) => c.inactivity,
            };
            self.fail_conn(
                conn,
                ProtocolError::new(code, format!("{what} within {limit:?}")),
            );
        } else {
            self.timers.arm(deadline, TimerKey::Conn(conn));
        }
    }

    pub(super) fn session_timer(&mut self, id: SessionId, now: Timestamp) {
        #[cfg(feature = "test-switches")]
        let expire_running = self.config.switches.expire_running;
        #[cfg(not(feature = "test-switches"))]
        let expire_running = false;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let retain = admission::retain_time(&self.config, s);
        // The entry that brought us here is gone from the heap.
        s.armed = None;
        if let Some(since) = s.detached_since {
            let expiry = since + retain;
            if expiry <= now {
                if s.running() == 0 || expire_running {
                    self.expire(id);
                    return;
                }
                // Commands still run: the session must outlive them, or a
                // re-issue could run beside them (§11.1). `complete` ends it
                // when the last one finishes.
                if !s.expiry_deferred {
                    s.expiry_deferred = true;
                    self.stats.expiries_deferred += 1;
                }
            } else {
                self.timers.arm_session(expiry, id, &mut s.armed);
            }
        }
        if let Some(due) = s.ack_due {
            if due <= now {
                if let Some(conn) = s.first_conn() {
                    self.mark_dirty(conn);
                }
            } else {
                self.timers.arm_session(due, id, &mut s.armed);
            }
        }
    }

    /// Ends a session whose retain time passed (with nothing running, or
    /// when its last command completed after it).
    pub(super) fn expire(&mut self, id: SessionId) {
        self.end_session(id, RejectReason::SessionExpired);
        self.stats.sessions_expired += 1;
    }

    pub(super) fn shutdown_timer(&mut self, now: Timestamp) {
        match self.shutdown {
            Some(n) if n.up_until <= now => {}
            _ => return,
        }
        let open: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in open {
            let error = ProtocolError::new(ErrorCode::Shutdown, "the target is shutting down");
            let frame = Frame::Error {
                code: error.code(),
                text: error.reason().to_owned(),
            };
            self.push_frame(conn, &frame);
            self.close_conn(conn, CloseReason::Shutdown);
        }
    }
}
