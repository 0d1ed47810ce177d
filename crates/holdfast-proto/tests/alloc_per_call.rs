//! Heap allocations per call in the hot path, counted with a counting global
//! allocator (so this file holds exactly one test: nothing else may allocate
//! while it counts).
//!
//! An [`Initiator`] and a [`Target`] are wired together in memory the way
//! the `round_trip` and `pipelined` benchmarks (benches/proto.rs) wire them:
//! the initiator's chunks go into the target, the target's Ready loop runs
//! (its bytes go back to the initiator, every delivered command is completed
//! with its own payload), and the initiator's events are drained. The clock
//! moves one microsecond per call issued and timers fire when due. After a
//! warm-up (so buffers that are kept for reuse have grown), the allocations
//! (`alloc`, `alloc_zeroed` and `realloc` calls) of many calls are counted,
//! per step of the driver, and divided by the number of calls.
//!
//! The test asserts an upper bound per call a little above the measured
//! figure, so a change that adds allocations to the hot path fails here.
//! Run with `--nocapture` to see the breakdown.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::{
    CallOptions, ConnId, Delivery, Initiator, InitiatorConfig, InitiatorEvent, SeededRandom,
    Target, TargetConfig, Timestamp,
};

/// Allocation calls (`alloc`, `alloc_zeroed`, `realloc`) so far.
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting allocation calls.
struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; the counting only touches an atomic and
// never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator)
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The connection id of the in-memory link.
const CONN: ConnId = ConnId(1);
/// How far the clock moves per call issued (as in the benchmarks).
const TICK: Duration = Duration::from_micros(1);
/// Calls in flight at once in the pipelined runs (as in the benchmarks).
const PIPELINE: usize = 32;

/// The driver steps whose allocations are counted separately.
#[derive(Clone, Copy)]
enum Step {
    Call,
    InitiatorTransmit,
    TargetInput,
    TargetReady,
    TargetAdvance,
    TargetComplete,
    TargetRecycle,
    InitiatorInput,
    InitiatorEvents,
    Timers,
}

const STEPS: [(Step, &str); 10] = [
    (Step::Call, "initiator call"),
    (Step::InitiatorTransmit, "initiator poll_transmit"),
    (Step::TargetInput, "target handle_input"),
    (Step::TargetReady, "target ready"),
    (Step::TargetAdvance, "target advance"),
    (Step::TargetComplete, "target complete"),
    (Step::TargetRecycle, "target recycle"),
    (Step::InitiatorInput, "initiator handle_input"),
    (Step::InitiatorEvents, "initiator poll_event"),
    (Step::Timers, "timers"),
];

/// An initiator and a target joined in memory, counting allocations per step.
struct Link {
    initiator: Initiator,
    target: Target,
    now: Timestamp,
    counts: [usize; STEPS.len()],
    /// Drive with the buffer-reusing calls (`poll_transmit_into`,
    /// `Target::recycle`), as the runtime does, instead of the plain ones.
    reuse: bool,
    /// The chunk list handed to `poll_transmit_into`, drained after each use.
    chunks: Vec<Bytes>,
}

impl Link {
    fn new(reuse: bool) -> Self {
        let now = Timestamp::from_millis(1);
        let mut link = Link {
            initiator: Initiator::new(InitiatorConfig::default(), Timestamp::ZERO),
            target: Target::new(
                TargetConfig::default(),
                Box::new(SeededRandom::new(42)),
                Timestamp::ZERO,
            ),
            now,
            counts: [0; STEPS.len()],
            reuse,
            chunks: Vec::new(),
        };
        link.target.accept(CONN, now).expect("accept");
        link.initiator.connect(CONN, now).expect("connect");
        assert_eq!(link.pump(), 0, "no responses during login");
        assert!(link.initiator.is_connected(), "logged in");
        link
    }

    /// Runs `f`, charging its allocations to `step`.
    fn count<R>(&mut self, step: Step, f: impl FnOnce(&mut Self) -> R) -> R {
        let before = ALLOCS.load(Ordering::Relaxed);
        let r = f(self);
        self.counts[step as usize] += ALLOCS.load(Ordering::Relaxed) - before;
        r
    }

    /// Moves bytes both ways, completing every command with its own payload,
    /// until nothing moves. Returns the responses received.
    fn pump(&mut self) -> usize {
        let now = self.now;
        let mut responses = 0;
        loop {
            let mut moved = false;
            loop {
                let mut chunks = std::mem::take(&mut self.chunks);
                let any = self.count(Step::InitiatorTransmit, |l| {
                    if l.reuse {
                        l.initiator.poll_transmit_into(now, &mut chunks)
                    } else {
                        l.initiator.poll_transmit(now).map(|c| chunks = c).is_some()
                    }
                });
                moved |= any;
                for chunk in chunks.drain(..) {
                    self.count(Step::TargetInput, |l| {
                        l.target.handle_input(CONN, &chunk, now)
                    });
                }
                if self.reuse {
                    self.chunks = chunks;
                }
                if !any {
                    break;
                }
            }
            while self.target.has_ready() {
                moved = true;
                let mut ready = self.count(Step::TargetReady, |l| l.target.ready());
                assert!(ready.closes.is_empty(), "closed: {:?}", ready.closes);
                for t in &ready.transmits {
                    for chunk in &t.chunks {
                        self.count(Step::InitiatorInput, |l| {
                            l.initiator.handle_input(t.conn, chunk, now)
                        });
                    }
                }
                self.count(Step::TargetAdvance, |l| l.target.advance(now));
                for delivery in ready.deliveries.drain(..) {
                    let Delivery::Command {
                        session,
                        seq,
                        payload,
                    } = delivery
                    else {
                        panic!("unexpected delivery {delivery:?}");
                    };
                    self.count(Step::TargetComplete, |l| {
                        l.target.complete(session, seq, payload, now)
                    })
                    .expect("complete");
                }
                if self.reuse {
                    self.count(Step::TargetRecycle, |l| l.target.recycle(ready));
                }
            }
            while let Some(event) = self.count(Step::InitiatorEvents, |l| l.initiator.poll_event())
            {
                moved = true;
                match event {
                    InitiatorEvent::Response { .. } => responses += 1,
                    InitiatorEvent::Connected { .. } => {}
                    other => panic!("unexpected event {other:?}"),
                }
            }
            if !moved {
                return responses;
            }
        }
    }

    /// Issues `calls` calls at once and runs them to completion.
    fn calls(&mut self, payload: &Bytes, calls: usize) {
        self.now = self.now + TICK * u32::try_from(calls).expect("a small batch");
        let now = self.now;
        self.count(Step::Timers, |l| {
            if l.initiator.poll_timeout().is_some_and(|t| t <= now) {
                l.initiator.handle_timeout(now);
            }
            if l.target.poll_timeout().is_some_and(|t| t <= now) {
                l.target.handle_timeout(now);
            }
        });
        for _ in 0..calls {
            self.count(Step::Call, |l| {
                l.initiator
                    .call(payload.clone(), CallOptions::default(), now)
                    .expect("credit")
            });
        }
        assert_eq!(self.pump(), calls, "responses received");
        assert_eq!(self.initiator.outstanding(), 0);
    }
}

/// Allocations per call (total, and per step) of `batches` batches of
/// `batch` calls carrying `size` bytes, after a warm-up.
fn measure(size: usize, batch: usize, batches: usize, reuse: bool) -> (f64, String) {
    let payload = Bytes::from(vec![0xC3; size]);
    let _ = payload.clone(); // a `Bytes` from a `Vec` allocates on its first clone
    let mut link = Link::new(reuse);
    // Warm up past the ack delay, so timers come due as in a long run.
    for _ in 0..batches {
        link.calls(&payload, batch);
    }
    link.counts = [0; STEPS.len()];
    for _ in 0..batches {
        link.calls(&payload, batch);
    }
    let calls = (batch * batches) as f64;
    let total: usize = link.counts.iter().sum();
    let mut detail = String::new();
    for (step, name) in STEPS {
        let n = link.counts[step as usize];
        if n > 0 {
            detail.push_str(&format!("{name} {:.2}, ", n as f64 / calls));
        }
    }
    (total as f64 / calls, detail)
}

#[test]
fn allocations_per_call_are_bounded() {
    // (what, payload size, calls per batch, reusing driver, allowed
    // allocations per call). The bounds sit a little above the figures
    // measured; the comments give them, and the figures before the
    // allocation work (plain driver: 11, 12, 4.12 and 15.19).
    let cases = [
        // Plain driver (`poll_transmit`, Readies dropped): measured 9.00.
        ("round trip, 64 B", 64, 1, false, 9.5),
        // Measured 8.00.
        ("round trip, 4 KiB", 4096, 1, false, 8.5),
        // Measured 3.91.
        ("pipelined x32, 64 B", 64, PIPELINE, false, 4.25),
        // Measured 5.29.
        ("pipelined x32, 4 KiB", 4096, PIPELINE, false, 5.75),
        // Reusing driver (`poll_transmit_into`, `Target::recycle`), as the
        // runtime drives: measured 3.00 (the small payload copied out of
        // the read buffer at each end, and the target's first clone of it).
        ("round trip, 64 B", 64, 1, true, 3.25),
        // Measured 2.00 (the target's read buffer, still pinned by the
        // cached response's zero-copy payload, is replaced, then shared).
        ("round trip, 4 KiB", 4096, 1, true, 2.25),
        // Measured 3.25.
        ("pipelined x32, 64 B", 64, PIPELINE, true, 3.5),
        // Measured 4.51.
        ("pipelined x32, 4 KiB", 4096, PIPELINE, true, 4.9),
    ];
    let mut failed = Vec::new();
    for (what, size, batch, reuse, bound) in cases {
        let (per_call, detail) = measure(size, batch, 4000 / batch, reuse);
        let driver = if reuse { "reusing" } else { "plain" };
        eprintln!(
            "{what:20} {driver:7} {per_call:6.2} allocations per call (bound {bound}): {detail}"
        );
        if per_call > bound {
            failed.push(format!("{what}, {driver}: {per_call:.2} > {bound}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
