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
