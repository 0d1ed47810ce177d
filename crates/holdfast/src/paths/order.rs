//! The re-issue gate: calls leave the path group for a node in the order
//! they were first issued.
//!
//! Every call of a [`super::PathGroup`] draws a number when it is issued.
//! When a path is lost, the numbers of the calls still outstanding on it
//! are *pending*: each must be issued again (on a survivor) before any
//! call with a higher number is issued anywhere. A call may submit when no
//! pending number below its own remains; a pending call stops being
//! pending once it has been handed to its new session (its first poll,
//! which fixes its place in that session's queue) or once it ends.
//!
//! This keeps the guarantee a single session gives (of two overlapping
//! writes issued one after the other, the second wins) across a failover:
//! a write re-issued on node B never overtakes a later one issued there
//! while the failover ran.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::Notify;

/// The set of pending call numbers and a wake-up for those waiting on it.
#[derive(Debug, Default)]
pub(crate) struct Order {
    pending: Mutex<BTreeSet<u64>>,
    changed: Notify,
}

impl Order {
    /// Marks `calls` pending (they must be re-issued before later calls).
    pub(crate) fn hold(&self, calls: impl IntoIterator<Item = u64>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.extend(calls);
    }

    /// `call` was handed to its new session, or ended: later calls may go.
    pub(crate) fn release(&self, call: u64) {
        let removed = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.remove(&call)
        };
        if removed {
            self.changed.notify_waiters();
        }
    }

    /// True if `call` may be submitted now: no pending number below it.
    fn may_go(&self, call: u64) -> bool {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.first().is_none_or(|&first| first >= call)
    }

    /// Waits until `call` may be submitted.
    pub(crate) async fn wait_turn(&self, call: u64) {
        loop {
            // Register before checking, so a release in between wakes us.
            let notified = self.changed.notified();
            if self.may_go(call) {
                return;
            }
            notified.await;
        }
    }

    /// How many calls are pending.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn later_calls_wait_for_pending_earlier_ones() {
        let order = std::sync::Arc::new(Order::default());
        order.hold([3, 5]);
        assert!(order.may_go(2));
        assert!(order.may_go(3));
        assert!(!order.may_go(4));
        assert!(!order.may_go(9));
        let o = order.clone();
        let waiter = tokio::spawn(async move { o.wait_turn(9).await });
        tokio::task::yield_now().await;
        order.release(3);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "5 is still pending");
        order.release(5);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("released")
            .expect("task");
        assert_eq!(order.pending(), 0);
    }
}
