//! A bounded memory of ended sessions, so a late recovery gets a precise
//! reason ("expired", "closed") instead of "unknown".

use std::collections::{HashMap, VecDeque};

use crate::ids::SessionId;
use crate::wire::RejectReason;

/// The last `capacity` ended sessions and why they ended.
#[derive(Debug)]
pub(crate) struct Tombstones {
    capacity: usize,
    order: VecDeque<SessionId>,
    reasons: HashMap<SessionId, RejectReason>,
}

impl Tombstones {
    pub(crate) fn new(capacity: usize) -> Self {
        Tombstones {
            capacity,
            order: VecDeque::new(),
            reasons: HashMap::new(),
        }
    }

    /// Remembers that `id` ended for `reason`, forgetting the oldest if full.
    pub(crate) fn bury(&mut self, id: SessionId, reason: RejectReason) {
        if self.capacity == 0 {
            return;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.reasons.remove(&old);
            }
        }
        if self.reasons.insert(id, reason).is_none() {
            self.order.push_back(id);
        }
    }

    /// Why `id` ended, if remembered.
    pub(crate) fn reason(&self, id: SessionId) -> Option<RejectReason> {
        self.reasons.get(&id).copied()
    }
}
