//! Overlap ordering: requests run concurrently, except that a request waits
//! for the earlier, unfinished requests it conflicts with.
//!
//! The holdfast target calls its service synchronously, in session order,
//! and the futures it returns then run concurrently. The service admits
//! each request into a [`Sequencer`] during that synchronous call, so
//! admission order is session order. The [`Ticket`] it gets back records
//! which earlier requests it must wait for; [`Ticket::ready`] resolves once
//! they are done. After the operation, [`Ticket::executed`] says so and
//! returns a [`Release`], to be dropped once the response has been delivered
//! (the service ties it to the response buffer, which the holdfast target
//! drops when the initiator has acknowledged the response, or the session
//! ended). Dropping a ticket unused does both at once.
//!
//! What a later request L waits for, of an earlier, conflicting request E:
//!
//! | L \ E  | read (overlapping) | write (overlapping) | flush, info |
//! |--------|--------------------|---------------------|-------------|
//! | read   | nothing            | E executed          | nothing     |
//! | write  | E released (same session), E executed (other session) | E released (same session), E executed (other session) | nothing |
//! | flush  | nothing            | E executed, whatever its range | nothing |
//! | info   | nothing            | nothing             | nothing     |
//!
//! One exception, across sessions: L never waits for an E of another
//! session that is itself still waiting, at L's admission, for the release
//! of an earlier request of its own session (that is, for its initiator's
//! acknowledgement). Such an E has not run, so no one has seen it complete
//! and nothing L does needs to follow it; waiting for it would let one
//! session's missing acknowledgements (an initiator that went away, until
//! its session expires) stall every other session's FLUSH and its reads
//! and writes of that range. By induction no wait across sessions ever
//! depends on an acknowledgement: every cross-session wait is for an
//! execution that depends on executions only.
//!
//! "Write" covers WRITE, TRIM and WRITE_ZEROES. Two reads may run in either
//! order: neither changes what the other sees. A flush waits for every
//! earlier write, so that what was written before it (in session order) is
//! on the device when the flush makes the device durable. Nothing waits for a
//! flush: a write that overtakes one is at worst made durable early, which no
//! caller can tell from a lucky cache (as in NBD and the kernel's block
//! layer, a flush covers the writes completed before it, nothing later).
//!
//! Why a write waits for the earlier request of its own session to be
//! *released*, not merely executed: after a stateless recovery the initiator
//! re-issues every request it has no response for, in order. If a later
//! write's response could reach the initiator while an earlier overlapping
//! request's response was still lost, that earlier request would be replayed
//! after the later write took effect: an old write would win, or a read would
//! see the future. Once a response is acknowledged it can never be replayed,
//! so a write that starts only after that keeps the replay correct. The cost
//! is one round trip between overlapping requests of one session, where the
//! later one is a write; nothing else waits longer than execution. Requests
//! of other sessions (including the old session of a stateless recovery whose
//! requests are still running) are ordered by execution only: a session's
//! responses cannot hold up another session's writes.
//!
//! Ranges are half-open, `[offset, offset + len)`: touching ranges do not
//! overlap, and an empty range overlaps nothing.
//!
//! Memory: one entry per admitted read or write whose response has not been
//! released, and one wait handle per conflicting predecessor: bounded by the
//! requests and cached responses in flight, which holdfast's credits bound.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// How a request uses the device, for ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads `[offset, offset + len)`.
    Read {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Changes `[offset, offset + len)` (write, trim, write-zeroes).
    Write {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Makes earlier writes durable: waits for every earlier write.
    Flush,
    /// Touches no data (an INFO query): never waits.
    Independent,
}

impl Access {
    fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Access::Read { offset, len } | Access::Write { offset, len } => {
                Some((offset, offset.saturating_add(len)))
            }
            Access::Flush | Access::Independent => None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    session: u64,
    write: bool,
    start: u64,
    end: u64,
    /// Closed (its sender dropped) when the operation has run.
    executed: watch::Receiver<()>,
    /// Closed when the response has been released.
    released: watch::Receiver<()>,
    /// The releases of its own session's earlier requests that it waits
    /// for (each closed when it fires).
    own_releases: Vec<watch::Receiver<()>>,
}

impl Entry {
    /// True while it waits for an acknowledgement of its own session.
    fn held_by_own_session(&self) -> bool {
        self.own_releases.iter().any(|w| w.has_changed().is_ok())
    }
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Admitted, unreleased reads and writes by admission number.
    entries: BTreeMap<u64, Entry>,
}

/// Orders conflicting requests by admission; see the module documentation.
/// Cheap to clone: clones share the same order.
#[derive(Clone, Debug, Default)]
pub struct Sequencer {
    state: Arc<Mutex<State>>,
}

impl Sequencer {
    /// An empty sequencer.
    pub fn new() -> Self {
        Sequencer::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements (no panics while
        // holding it); a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request of `session` (any key that tells sessions apart).
    /// Call this in the order the requests must keep (session order); then
    /// await [`Ticket::ready`], run the operation, call
    /// [`Ticket::executed`], and drop the [`Release`] once the response is
    /// delivered.
    pub fn admit(&self, session: u64, access: Access) -> Ticket {
        let mut state = self.lock();
        let mut waits = Vec::new();
        let mut own_releases = Vec::new();
        let range = access.range();
        for e in state.entries.values() {
            let signal = match (access, range) {
                (Access::Flush, _) if e.write => Some(&e.executed),
                (Access::Read { .. }, Some((start, end)))
                    if e.write && overlaps(start, end, e.start, e.end) =>
                {
                    Some(&e.executed)
                }
                (Access::Write { .. }, Some((start, end)))
                    if overlaps(start, end, e.start, e.end) =>
                {
                    Some(if e.session == session {
                        &e.released
                    } else {
                        &e.executed
                    })
                }
                _ => None,
            };
            if let Some(s) = signal {
                if e.session != session && e.held_by_own_session() {
                    continue; // see the module documentation
                }
                waits.push(s.clone());
                if e.session == session && matches!(access, Access::Write { .. }) {
                    own_releases.push(s.clone());
                }
            }
        }
        let mut ticket = Ticket {
            waits,
            executed: None,
            registration: None,
        };
        if let Some((start, end)) = range.filter(|(s, e)| s < e) {
            let id = state.next;
            state.next += 1;
            let (executed_tx, executed) = watch::channel(());
            let (released_tx, released) = watch::channel(());
            state.entries.insert(
                id,
                Entry {
                    session,
                    write: matches!(access, Access::Write { .. }),
                    start,
                    end,
                    executed,
                    released,
                    own_releases,
                },
            );
            ticket.executed = Some(executed_tx);
            ticket.registration = Some(Registration {
                id,
                _released: released_tx,
                sequencer: self.clone(),
            });
        }
        ticket
    }

    /// How many admitted reads and writes have not been released.
    pub fn in_flight(&self) -> usize {
        self.lock().entries.len()
    }
}

/// True if two half-open ranges share a byte (an empty range shares none).
fn overlaps(a_start: u64, a_end: u64, b_start: u64, b_end: u64) -> bool {
    a_start < a_end && b_start < b_end && a_start < b_end && b_start < a_end
}

/// A request's place in the order. Await [`Ticket::ready`] before running
/// the operation, then call [`Ticket::executed`]. Dropping a ticket
/// releases it entirely.
#[derive(Debug)]
#[must_use = "dropping a ticket releases its range at once"]
pub struct Ticket {
    /// Earlier conflicting requests' signals, each closed when it fires.
    waits: Vec<watch::Receiver<()>>,
    /// Dropped when the operation has run.
    executed: Option<watch::Sender<()>>,
    registration: Option<Registration>,
}

impl Ticket {
    /// Resolves when every earlier conflicting request is done (executed or
    /// released, per the module documentation).
    ///
    /// Cancel-safe: a signal is forgotten only once it has fired, so
    /// dropping the future and calling again waits for the rest.
    pub async fn ready(&mut self) {
        while let Some(w) = self.waits.last_mut() {
            // Nothing is ever sent: this resolves when the sender is
            // dropped, i.e. when the signal fires.
            let _ = w.changed().await;
            self.waits.pop();
        }
    }

    /// How many signals this request still waits for (some may have fired
    /// since admission).
    pub fn waits_for(&self) -> usize {
        self.waits
            .iter()
            .filter(|w| w.has_changed().is_ok())
            .count()
    }

    /// Records that the operation has run; the returned [`Release`] keeps
    /// the request's place for later writes of its session until dropped.
    pub fn executed(mut self) -> Release {
        self.executed = None;
        Release {
            _registration: self.registration.take(),
        }
    }
}

/// The last part of a request's place in the order: drop it once the
/// response has been delivered.
#[derive(Debug)]
pub struct Release {
    _registration: Option<Registration>,
}

#[derive(Debug)]
struct Registration {
    id: u64,
    /// Dropped on release, which wakes every request waiting for it.
    _released: watch::Sender<()>,
    sequencer: Sequencer,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sequencer.lock().entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn w(offset: u64, len: u64) -> Access {
        Access::Write { offset, len }
    }

    fn r(offset: u64, len: u64) -> Access {
        Access::Read { offset, len }
    }

    /// True if the ticket is ready now (polled once, no runtime needed: the
    /// wait only depends on senders already dropped). `ready()` is
    /// cancel-safe, so polling and dropping it leaves the ticket waiting for
    /// whatever has not fired; the answer must agree with `waits_for`.
    fn is_ready(t: &mut Ticket) -> bool {
        let ready = {
            let fut = pin!(t.ready());
            let mut cx = Context::from_waker(Waker::noop());
            matches!(fut.poll(&mut cx), Poll::Ready(()))
        };
        assert_eq!(
            ready,
            t.waits_for() == 0,
            "ready() disagrees with waits_for()"
        );
        ready
    }

    #[test]
    fn overlapping_writes_wait_in_admission_order() {
        let s = Sequencer::new();
        let mut a = s.admit(1, w(0, 10));
        let mut b = s.admit(1, w(5, 10));
        let mut c = s.admit(1, w(0, 100));
        assert!(is_ready(&mut a));
        assert_eq!(b.waits_for(), 1);
        assert_eq!(c.waits_for(), 2);
        assert!(!is_ready(&mut b));
        drop(a);
        assert!(is_ready(&mut b));
        assert!(!is_ready(&mut c), "c also waits for b");
        drop(b);
        assert!(is_ready(&mut c));
        drop(c);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_write_waits_for_its_sessions_earlier_response_to_be_released() {
        let s = Sequencer::new();
        let a = s.admit(1, w(0, 10));
        let mut b = s.admit(1, w(0, 10));
        let release = a.executed();
        assert!(!is_ready(&mut b), "executed is not enough within a session");
        assert_eq!(s.in_flight(), 2);
        drop(release);
        assert!(is_ready(&mut b));
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn a_write_waits_only_for_execution_across_sessions() {
        let s = Sequencer::new();
        let a = s.admit(1, w(0, 10));
        let mut b = s.admit(2, w(0, 10));
        assert!(!is_ready(&mut b));
        let _release = a.executed();
        assert!(
            is_ready(&mut b),
            "another session's response does not hold it"
        );
    }

    #[test]
    fn a_read_waits_only_for_execution() {
        let s = Sequencer::new();
        let a = s.admit(1, w(0, 10));
        let mut b = s.admit(1, r(0, 10));
        assert!(!is_ready(&mut b));
        let _release = a.executed();
        assert!(is_ready(&mut b));
        // But a write after a read waits for the read's release.
        let read = b.executed();
        let mut c = s.admit(1, w(5, 1));
        assert_eq!(c.waits_for(), 2, "the read's release, the write's release");
        drop(_release);
        assert!(!is_ready(&mut c));
        drop(read);
        assert!(is_ready(&mut c));
    }

    #[test]
    fn disjoint_and_touching_ranges_run_at_once() {
        let s = Sequencer::new();
        let mut a = s.admit(1, w(0, 10));
        let mut b = s.admit(1, w(10, 10));
        let mut c = s.admit(1, r(20, 5));
        let mut d = s.admit(1, w(100, 0));
        let mut e = s.admit(1, w(5, 0));
        for t in [&mut a, &mut b, &mut c, &mut d, &mut e] {
            assert!(is_ready(t));
        }
        assert_eq!(s.in_flight(), 3, "empty ranges are not registered");
    }

    #[test]
    fn reads_share_but_order_against_writes() {
        let s = Sequencer::new();
        let mut r1 = s.admit(1, r(0, 10));
        let mut r2 = s.admit(1, r(0, 10));
        assert!(is_ready(&mut r1) && is_ready(&mut r2));
        // A write after two reads waits for both.
        let mut w1 = s.admit(1, w(5, 1));
        assert_eq!(w1.waits_for(), 2);
        // A read after the write waits for it, not for the earlier reads.
        let mut r3 = s.admit(1, r(0, 6));
        assert_eq!(r3.waits_for(), 1);
        drop(r1);
        assert!(!is_ready(&mut w1));
        drop(r2);
        assert!(is_ready(&mut w1));
        assert!(!is_ready(&mut r3));
        drop(w1);
        assert!(is_ready(&mut r3));
    }

    #[test]
    fn a_flush_waits_for_every_earlier_write_and_nothing_waits_for_it() {
        let s = Sequencer::new();
        let w1 = s.admit(1, w(0, 10));
        let w2 = s.admit(2, w(1 << 40, 10));
        let _r1 = s.admit(1, r(500, 10));
        let mut f = s.admit(1, Access::Flush);
        assert_eq!(
            f.waits_for(),
            2,
            "writes anywhere, of any session; not reads"
        );
        let mut later = s.admit(1, w(0, 10));
        assert_eq!(
            later.waits_for(),
            1,
            "the earlier write only, not the flush"
        );
        let mut info = s.admit(1, Access::Independent);
        assert!(is_ready(&mut info));
        drop(w1);
        assert!(!is_ready(&mut f));
        assert!(is_ready(&mut later));
        // Execution is enough for a flush.
        let _w2 = w2.executed();
        assert!(is_ready(&mut f));
        assert_eq!(s.in_flight(), 3, "the read, the later write, w2 unreleased");
    }

    /// Session 1's initiator is gone with a response unacknowledged and a
    /// later overlapping write held behind it: session 2's FLUSH, reads and
    /// writes of that range must not wait for session 1's
    /// acknowledgements, only for writes that can execute.
    #[test]
    fn another_sessions_unacknowledged_responses_stall_nothing() {
        let s = Sequencer::new();
        let w1 = s.admit(1, w(0, 10));
        let _w1 = w1.executed(); // executed; its response never acknowledged
        let mut w2 = s.admit(1, w(0, 10));
        assert!(!is_ready(&mut w2), "held behind session 1's own response");
        let running = s.admit(1, w(100, 10)); // can run: not held
        let mut flush = s.admit(2, Access::Flush);
        assert!(!is_ready(&mut flush), "a runnable earlier write is awaited");
        let _running = running.executed();
        assert!(
            is_ready(&mut flush),
            "session 2's FLUSH stalls on session 1's ack"
        );
        let mut read = s.admit(2, r(0, 5));
        assert!(
            is_ready(&mut read),
            "session 2's READ stalls on session 1's ack"
        );
        let mut write = s.admit(2, w(5, 5));
        assert!(
            is_ready(&mut write),
            "session 2's WRITE stalls on session 1's ack"
        );
        // Session 1's own later requests still wait for it.
        let mut flush1 = s.admit(1, Access::Flush);
        assert!(!is_ready(&mut flush1));
    }

    /// Dropping a `ready()` future while it waits must not forget the
    /// signals it had not yet seen.
    #[test]
    fn ready_is_cancel_safe() {
        let s = Sequencer::new();
        let a = s.admit(1, w(0, 10));
        let b = s.admit(1, w(20, 10));
        let mut c = s.admit(2, w(0, 30));
        assert_eq!(c.waits_for(), 2);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..2 {
            let fut = pin!(c.ready());
            assert!(fut.poll(&mut cx).is_pending(), "a and b have not run");
        }
        let _a = a.executed();
        {
            let fut = pin!(c.ready());
            assert!(
                fut.poll(&mut cx).is_pending(),
                "b has not run: a dropped ready() must not have consumed its wait"
            );
        }
        let _b = b.executed();
        assert!(pin!(c.ready()).poll(&mut cx).is_ready());
    }

    #[test]
    fn chains_wait_only_for_direct_conflicts() {
        let s = Sequencer::new();
        let _a = s.admit(1, w(0, 10));
        let b = s.admit(1, w(5, 10));
        let mut c = s.admit(1, w(12, 8));
        assert_eq!(c.waits_for(), 1);
        drop(b);
        assert!(is_ready(&mut c), "c does not overlap a");
    }

    #[test]
    fn ranges_at_the_end_of_the_address_space_do_not_overflow() {
        let s = Sequencer::new();
        let _a = s.admit(1, w(u64::MAX - 1, 10));
        let b = s.admit(1, w(u64::MAX - 5, 5));
        assert_eq!(b.waits_for(), 1);
        let c = s.admit(1, w(u64::MAX - 10, 5));
        assert_eq!(c.waits_for(), 0);
    }

    #[test]
    fn an_abandoned_ticket_releases_its_range() {
        let s = Sequencer::new();
        let a = s.admit(1, w(0, 10));
        let mut b = s.admit(1, w(0, 10));
        // b is admitted but never run; dropping it must not hold up c.
        let mut c = s.admit(1, w(0, 10));
        drop(a);
        assert!(is_ready(&mut b));
        drop(b);
        assert!(is_ready(&mut c));
        drop(c);
        assert_eq!(s.in_flight(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_request_wakes_when_its_predecessor_is_released() {
        let s = Sequencer::new();
        let a = s.admit(1, w(0, 10));
        let mut b = s.admit(1, w(0, 10));
        let waiter = tokio::spawn(async move {
            b.ready().await;
            b
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let release = a.executed();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(release);
        let b = waiter.await.expect("waiter");
        assert_eq!(b.waits_for(), 0);
    }
}
