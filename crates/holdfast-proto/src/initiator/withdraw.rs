//! Withdrawing calls: what happens when a caller stops waiting (a timeout, a
//! cancelled request) so that a call reported as failed can never execute
//! later (docs/PROTOCOL.md §11.3).
//!
//! * A call the target does not have (never sent in this session; not yet
//!   sent on the current logged-in connection; or sent only on connections
//!   the target has since fenced and past the acknowledgement it gave at
//!   login) is dropped at once, and the
//!   sequence numbers after it close up: the target never saw any of them,
//!   so the stream it receives stays contiguous.
//! * A call the target may have stays in the session until its fate is
//!   known: its response (or acknowledgement) arrives as usual, or a
//!   recovery login shows the target never received it (then it is dropped),
//!   or the target reports the session gone (then it fails, settled, and is
//!   never re-issued).

use crate::error::CallError;
use crate::ids::CallId;
use crate::time::Timestamp;
use crate::Seq;

use super::{Earlier, Entry, Initiator, InitiatorEvent};

impl Initiator {
    /// Withdraws a call or message the caller no longer waits for.
    ///
    /// If the target cannot have it, it is dropped now and
    /// [`InitiatorEvent::CallFailed`] with [`CallError::Withdrawn`] follows
    /// at once: it will never execute. Otherwise it stays outstanding and
    /// settles like any other call, except that it is never re-issued in a
    /// new session (a stateless recovery fails it with `Withdrawn`). Returns
    /// false if the call is not outstanding (it already finished).
    pub fn abandon(&mut self, call: CallId, _now: Timestamp) -> bool {
        if let Some(i) = self.carry.iter().position(|c| c.call == call) {
            // Carried from a session the target ended: never re-issued now.
            if let Some(c) = self.carry.remove(i) {
                self.withdrawn(c.call, c.earlier);
            }
            self.maybe_credit_available();
            return true;
        }
        let naive = self.naive_resend();
        let floor = self.withdraw_floor;
        let Some((&seq, entry)) = self.entries.iter_mut().find(|(_, e)| e.call == call) else {
            return false;
        };
        entry.abandoned = true;
        if naive {
            // Test switch: a naive initiator resends everything anyway.
            return true;
        }
        let never_sent = !entry.transmitted;
        if self.multi() {
            // Several connections (§17.7): a sequence number sent on any of
            // them may still arrive on one the target has not fenced, so
            // only calls above everything sent in the session are dropped.
            let from = self.highest_sent().max(floor) + 1;
            if seq >= from {
                self.withdraw_unreceived(from);
            }
            return true;
        }
        let live_cursor = self
            .conn
            .as_ref()
            .filter(|c| c.logged_in)
            .map(|c| c.send_cursor.max(floor + 1));
        match live_cursor {
            // Not sent on the live connection, which started at the
            // target's acknowledgement, and past anything the target may
            // hold beyond it: the target does not have it.
            Some(from) if seq >= from => self.withdraw_unreceived(from),
            // Never sent in this session (so nothing after it was either):
            // no connection, old or new, can deliver it.
            _ if never_sent => self.withdraw_unreceived(seq),
            _ => {}
        }
        true
    }

    /// Drops every withdrawn entry at or after `from` (none of which the
    /// target has), renumbers the rest of that tail to stay contiguous, and
    /// reports each dropped call.
    pub(super) fn withdraw_unreceived(&mut self, from: Seq) {
        if !self.entries.range(from..).any(|(_, e)| e.abandoned) {
            return;
        }
        let tail = self.entries.split_off(&from);
        let mut next = from;
        let mut dropped: Vec<Entry> = Vec::new();
        for (_, mut e) in tail {
            if e.abandoned {
                dropped.push(e);
                continue;
            }
            // Not sent under its new number; it can only have executed in
            // an earlier, ended session.
            e.transmitted = false;
            e.sent_at = None;
            self.entries.insert(next, e);
            next += 1;
        }
        self.next_seq = next;
        for e in dropped {
            self.withdrawn(e.call, e.earlier);
        }
        // Sequence numbers freed: carried calls may take them.
        self.drain_carry();
        self.maybe_credit_available();
    }

    /// Reports a withdrawn call: settled (`Withdrawn`) unless a lost
    /// session may still run it, then in doubt (`MayHaveExecuted`).
    pub(super) fn withdrawn(&mut self, call: CallId, earlier: Earlier) {
        let may_have_executed = match earlier {
            Earlier::InDoubt(loss) => return self.fail_call(call, true, loss),
            Earlier::Ended => true,
            Earlier::NotSent => false,
        };
        self.stats.calls_failed += 1;
        self.stats.withdrawn += 1;
        self.events.push_back(InitiatorEvent::CallFailed {
            call,
            error: CallError::Withdrawn { may_have_executed },
        });
    }
}
