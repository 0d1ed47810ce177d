//! The target's timers: one min-heap of (deadline, key) with lazy
//! invalidation. An entry only says "look at this key by then"; when it pops,
//! the owner recomputes the real deadline and either fires or re-arms. So
//! moving a deadline later costs nothing, and the heap holds about one entry
//! per connection and session.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::ids::{ConnId, SessionId};
use crate::time::Timestamp;

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
