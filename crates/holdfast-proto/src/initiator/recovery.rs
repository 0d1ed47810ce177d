//! Losing connections and sessions: what the initiator keeps, what it fails,
//! and what it re-issues.
//!
//! * A lost connection keeps everything: the next login recovers the session
//!   and resends exactly the unacknowledged tail.
//! * A reject that says the target holds no state (restart, expiry, bad
//!   secret) is stateless recovery: calls that were never sent fail with
//!   "not executed", sent calls that are not retry-safe fail with "may have
//!   executed", and retry-safe ones are carried to a new session in order.
//!   Withdrawn calls are settled instead, never re-issued.
//! * A session that cannot come back (the target will not return, the
//!   session-loss timeout passed, no common version) fails every call.

use crate::error::{CallError, ConnectionError, SessionLoss};
use crate::time::Timestamp;
use crate::wire::{LoginReject, RejectReason, NEVER_MS};

use super::{Carried, Initiator, InitiatorEvent, Lifecycle};

impl Initiator {
    /// Drops the current connection and tells the driver when to reconnect.
    pub(super) fn lose_connection(&mut self, error: ConnectionError, now: Timestamp) {
        if self.drop_one(&error, now) {
            // Others of the session's connections carry on (§17.5).
            return;
        }
        let Some(conn) = self.conn.take() else {
            return;
        };
        self.stats.disconnects += 1;
        self.disconnected_since.get_or_insert(now);
        self.fences_lost();
        let target_gone = conn.up_until.is_some() && self.reconnect_at == Timestamp::NEVER;
        self.events.push_back(InitiatorEvent::ConnectionLost {
            error,
            reconnect_at: self.reconnect_at.max(now),
        });
        if target_gone {
            self.end_session(SessionLoss::TargetGone, now);
        }
    }

    pub(super) fn on_reject(&mut self, reject: LoginReject, now: Timestamp) {
        let reason = reject.reason;
        match (self.session, reason) {
            (Some((session, _)), r) if r.is_stateless() => {
                // The session is gone at the target, with every connection
                // it had: this one logs in to a new session alone.
                self.forget_others();
                if let Some(c) = self.conn.as_mut() {
                    c.join = false;
                }
                self.stateless_recovery(SessionLoss::Rejected { session, reason }, now);
            }
            (_, RejectReason::UnsupportedVersion) => {
                self.end_session(SessionLoss::NoCommonVersion, now);
            }
            (_, RejectReason::ShuttingDown) if reject.retry_after_ms == NEVER_MS => {
                self.end_session(SessionLoss::TargetGone, now);
            }
            _ => {
                if reason == RejectReason::Fenced {
                    self.path.rejected_fenced();
                }
                // 0xFFFFFFFF means never (e.g. MaxFrameTooSmall: the same
                // LOGIN cannot succeed); the session-loss timeout then ends
                // the session, if there is one.
                let retry_at = if reject.retry_after_ms == NEVER_MS {
                    Timestamp::NEVER
                } else {
                    now + std::time::Duration::from_millis(u64::from(reject.retry_after_ms))
                };
                self.reconnect_at = self.reconnect_at.max(retry_at);
                self.lose_connection(ConnectionError::Rejected(reason), now);
            }
        }
    }

    /// The target holds no state for our session: settle every call, then
    /// log in to a new session on the same connection.
    fn stateless_recovery(&mut self, lost: SessionLoss, now: Timestamp) {
        let mut reissue = std::collections::VecDeque::new();
        let mut failed = 0;
        for (_, e) in std::mem::take(&mut self.entries) {
            if e.abandoned {
                // Its caller stopped waiting: never re-issued. Settled if the
                // target said the session ended (it cannot execute later),
                // in doubt otherwise.
                self.withdrawn(e.call, e.earlier.after(e.transmitted, &lost));
                continue;
            }
            match e.payload {
                Some(payload) if e.retry_safe => reissue.push_back(Carried {
                    call: e.call,
                    command: e.command,
                    payload,
                    retry_safe: true,
                    earlier: e.earlier.after(e.transmitted, &lost),
                }),
                _ => {
                    failed += 1;
                    self.fail_call(e.call, e.ever_sent(), lost.clone());
                }
            }
        }
        // Calls still carried from an earlier loss were issued after these.
        reissue.append(&mut self.carry);
        self.carry = reissue;
        let reissued = self.carry.len();
        self.session = None;
        self.next_seq = 1;
        self.acked = 0;
        self.withdraw_floor = 0;
        self.limit = 0;
        self.response_ack = 0;
        self.responses_seen.clear();
        self.ack_owed = 0;
        self.ack_owed_since = None;
        self.stats.stateless_recoveries += 1;
        self.events.push_back(InitiatorEvent::SessionReplaced {
            lost,
            reissued,
            failed,
        });
        if self.is_closing() && self.carry.is_empty() {
            // Nothing left to deliver: the close is complete.
            self.finish_closed();
            return;
        }
        if let Some(c) = self.conn.as_mut() {
            c.send_cursor = 1;
            c.opened = now;
        }
        self.queue_login();
    }

    /// Fails every outstanding call and refuses all further work.
    pub(super) fn end_session(&mut self, loss: SessionLoss, now: Timestamp) {
        let _ = now;
        for (_, e) in std::mem::take(&mut self.entries) {
            self.fail_call(e.call, e.ever_sent(), loss.clone());
        }
        for c in std::mem::take(&mut self.carry) {
            self.fail_call(c.call, c.earlier.sent(), loss.clone());
        }
        self.conn = None;
        self.others.clear();
        self.lifecycle = Lifecycle::Ended(loss.clone());
        self.reconnect_at = Timestamp::NEVER;
        self.events.push_back(InitiatorEvent::SessionEnded(loss));
    }

    pub(super) fn fail_call(
        &mut self,
        call: crate::ids::CallId,
        transmitted: bool,
        loss: SessionLoss,
    ) {
        let error = if transmitted {
            CallError::MayHaveExecuted(loss)
        } else {
            CallError::NotExecuted(loss)
        };
        self.stats.calls_failed += 1;
        self.events
            .push_back(InitiatorEvent::CallFailed { call, error });
    }
}
