//! The runtime under a simulated network (turmoil): partitions, held
//! (delayed, not dropped) traffic and target restarts, every run bounded in
//! simulated time. The network (latencies, fault schedule), the
//! initiator's backoff jitter and the runtime's event loops (biased selects)
//! all follow the seed, so a printed seed replays exactly
//! (`same_seed_same_run` checks it).
//!
//! The target serves a counter that is NOT idempotent and records each
//! payload as it starts executing (the "ledger", which outlives restarts like
//! an application's durable state would). The client is an [`Initiator`]
//! with a 500 ms detection bound whose backoff jitter is seeded.
//!
//! Seeds: `HOLDFAST_TURMOIL_SEEDS=n` runs `n` seeds per scenario (default
//! small); `HOLDFAST_TURMOIL_SEED=s` replays one. A failing seed is printed.
//! `HOLDFAST_TURMOIL_CALLS` scales the number of calls.
//!
//! Turmoil's TCP has no retransmission: a partition drops segments, so the
//! connection it cuts never works again even after `repair`; only a new
//! connection (and the session's recovery) gets traffic going. `hold` delays
//! segments until `release` and drops nothing.

mod simnet_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast::Initiator;
use simnet_support::{
    call, env_u64, init_logs, initiator, lock, run, seeds, sim, target_host, with_seed, CallRecord,
    Control, Ledger, Outcome, TargetSlot, Trace, XorShift, BOUND, CLIENT, TARGET,
};
use tokio::task::JoinHandle;

/// Polls `cond` every millisecond of simulated time until it holds.
async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The initiator's disconnect count.
async fn disconnects(init: &Initiator) -> u64 {
    init.stats().await.expect("initiator stats").disconnects
}

/// Spawns one call on the client host.
fn spawn_call(
    init: &Initiator,
    trace: &Trace,
    payload: String,
    retry_safe: bool,
) -> JoinHandle<CallRecord> {
    let (init, trace) = (init.clone(), trace.clone());
    tokio::spawn(async move { call(&init, &trace, payload, retry_safe).await })
}

async fn join_all(handles: Vec<JoinHandle<CallRecord>>) -> Vec<CallRecord> {
    let mut calls = Vec::with_capacity(handles.len());
    for h in handles {
        calls.push(h.await.expect("call task"));
    }
    calls
}

/// Runs the client to the end and collects what it saw.
fn finish(
    seed: u64,
    mut sim: turmoil::Sim<'_>,
    control: &Control,
    out: &Arc<Mutex<Option<Outcome>>>,
) -> Outcome {
    if let Err(e) = run(&mut sim, control) {
        panic!("seed {seed}: the simulation failed: {e}");
    }
    let outcome = lock(out).take();
    outcome.unwrap_or_else(|| panic!("seed {seed}: the client left no outcome"))
}

/// Common end of a client: stats from both sides, a clean close.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    seed: u64,
    init: Initiator,
    trace: Trace,
    calls: Vec<CallRecord>,
    issued: Vec<String>,
    ledger: &Ledger,
    slot: &TargetSlot,
    notes: Vec<(&'static str, u64)>,
    out: &Arc<Mutex<Option<Outcome>>>,
) {
    let stats = init.stats().await.expect("initiator stats");
    let target_stats = slot.stats().await;
    let close = init.close().await;
    trace.record(format!("close {close:?}"));
    *lock(out) = Some(Outcome {
        seed,
        elapsed: trace.elapsed(),
        trace: trace.lines(),
        calls,
        ledger: ledger.entries(),
        issued,
        stats,
        target_stats,
        close,
        notes,
    });
}

/// Four callers issue paced calls while the link between client and target
/// is partitioned four times at seeded moments (three times for longer
/// than the detection bound, once for less), then repaired.
fn partition_scenario(seed: u64) -> Outcome {
    let tasks = 4u64;
    let per_task = env_u64("HOLDFAST_TURMOIL_CALLS", 100) / tasks;
    let ledger = Ledger::default();
    let slot = TargetSlot::default();
    let control = Control::default();
    let out = Arc::new(Mutex::new(None));
    let mut sim = sim(seed, Duration::from_secs(120));
    target_host(&mut sim, &ledger, Duration::ZERO, &slot);
    let (client_ledger, client_slot, client_out) = (ledger.clone(), slot.clone(), out.clone());
    sim.client(CLIENT, async move {
        let trace = Trace::start();
        let init = initiator(seed);
        let chaos_done = Arc::new(AtomicBool::new(false));
        let mut callers = Vec::new();
        for t in 0..tasks {
            let (init, trace, chaos_done) = (init.clone(), trace.clone(), chaos_done.clone());
            callers.push(tokio::spawn(async move {
                let mut calls = Vec::new();
                let mut i = 0;
                while i < per_task || !chaos_done.load(Ordering::SeqCst) {
                    calls.push(call(&init, &trace, format!("t{t}-{i}"), false).await);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                calls
            }));
        }
        let mut rng = XorShift::new(seed);
        let lengths = [
            rng.millis(600, 1600),
            rng.millis(50, 400),
            rng.millis(600, 1600),
            rng.millis(1600, 3000),
        ];
        for (k, len) in lengths.into_iter().enumerate() {
            tokio::time::sleep(rng.millis(100, 700)).await;
            turmoil::partition(CLIENT, TARGET);
            trace.record(format!("partition {k} for {len:?}"));
            tokio::time::sleep(len).await;
            turmoil::repair(CLIENT, TARGET);
            trace.record(format!("repair {k}"));
        }
        chaos_done.store(true, Ordering::SeqCst);
        let mut calls = Vec::new();
        for c in callers {
            calls.extend(c.await.expect("caller task"));
        }
        let notes = vec![("partitions", lengths.len() as u64)];
        let issued = Vec::new();
        conclude(
            seed,
            init,
            trace,
            calls,
            issued,
            &client_ledger,
            &client_slot,
            notes,
            &client_out,
        )
        .await;
        Ok(())
    });
    finish(seed, sim, &control, &out)
}

fn check_exactly_once(o: &Outcome) {
    let seed = o.seed;
    let failures = o.failures();
    assert!(
        failures.is_empty(),
        "seed {seed}: {} calls failed, first: {:?}",
        failures.len(),
        failures[0]
    );
    assert_eq!(
        o.ledger.len(),
        o.successes(),
        "seed {seed}: the counter equals the successful calls"
    );
    let mut seen = BTreeMap::new();
    for p in &o.ledger {
        *seen.entry(p.as_str()).or_insert(0u32) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "seed {seed}: executed twice: {dups:?}");
    for c in &o.calls {
        assert!(
            seen.contains_key(c.payload.as_str()),
            "seed {seed}: {} succeeded but never executed",
            c.payload
        );
    }
}

#[test]
fn partitions_longer_than_the_bound_recover_the_session_exactly_once() {
    init_logs();
    for seed in seeds(4) {
        with_seed(
            "partitions_longer_than_the_bound_recover_the_session_exactly_once",
            seed,
            |seed| {
                let o = partition_scenario(seed);
                o.report("partition");
                check_exactly_once(&o);
                let s = &o.stats;
                assert!(
                    s.recoveries > 0,
                    "seed {seed}: the session was recovered: {s:?}"
                );
                assert_eq!(
                    s.stateless_recoveries, 0,
                    "seed {seed}: no stateless recovery"
                );
                assert_eq!(s.sessions, 1, "seed {seed}: one session throughout");
                assert!(s.disconnects > 0, "seed {seed}: partitions cut connections");
                let t = o.target_stats.as_ref().expect("target stats");
                assert_eq!(t.sessions_created, 1, "seed {seed}: {t:?}");
                assert!(t.recoveries_accepted > 0, "seed {seed}: {t:?}");
                assert_eq!(t.commands, o.successes() as u64, "seed {seed}: {t:?}");
                assert_eq!(o.close, Ok(()), "seed {seed}: clean close");
            },
        );
    }
}

/// One caller pipelines calls (a window of 8) while the link is held for
/// less than the detection bound, then for more than the bound (but less
/// than the connect timeout), then for more than the connect timeout.
fn hold_scenario(seed: u64) -> Outcome {
    let total = env_u64("HOLDFAST_TURMOIL_CALLS", 100);
    let ledger = Ledger::default();
    let slot = TargetSlot::default();
    let control = Control::default();
    let out = Arc::new(Mutex::new(None));
    let mut sim = sim(seed, Duration::from_secs(120));
    target_host(&mut sim, &ledger, Duration::ZERO, &slot);
    let (client_ledger, client_slot, client_out) = (ledger.clone(), slot.clone(), out.clone());
    sim.client(CLIENT, async move {
        let trace = Trace::start();
        let init = initiator(seed);
        let issued = Arc::new(Mutex::new(Vec::new()));
        let schedule_done = Arc::new(AtomicBool::new(false));
        let caller = {
            let (init, trace, issued, done) = (
                init.clone(),
                trace.clone(),
                issued.clone(),
                schedule_done.clone(),
            );
            tokio::spawn(async move {
                let window = Arc::new(tokio::sync::Semaphore::new(8));
                let mut handles = Vec::new();
                let mut i = 0u64;
                while i < total || !done.load(Ordering::SeqCst) {
                    let permit = window.clone().acquire_owned().await.expect("window");
                    let (init, trace, issued) = (init.clone(), trace.clone(), issued.clone());
                    handles.push(tokio::spawn(async move {
                        let payload = format!("c{i}");
                        // Recorded right before the submission, which
                        // enters the initiator's queue without waiting.
                        lock(&issued).push(payload.clone());
                        let record = call(&init, &trace, payload, false).await;
                        drop(permit);
                        record
                    }));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                join_all(handles).await
            })
        };
        let mut rng = XorShift::new(seed);
        let mut notes = Vec::new();
        tokio::time::sleep(Duration::from_millis(400)).await;
        notes.push(("short_hold_disconnects_before", disconnects(&init).await));
        let short = rng.millis(100, 250);
        turmoil::hold(CLIENT, TARGET);
        trace.record(format!("hold for {short:?} (less than the bound)"));
        tokio::time::sleep(short).await;
        turmoil::release(CLIENT, TARGET);
        trace.record("release");
        tokio::time::sleep(Duration::from_millis(800)).await;
        notes.push(("short_hold_disconnects_after", disconnects(&init).await));
        for (what, lo, hi) in [
            ("more than the bound", 1000, 1800),
            ("more than the connect timeout", 2500, 4000),
        ] {
            tokio::time::sleep(rng.millis(100, 500)).await;
            let len = rng.millis(lo, hi);
            turmoil::hold(CLIENT, TARGET);
            trace.record(format!("hold for {len:?} ({what})"));
            tokio::time::sleep(len).await;
            turmoil::release(CLIENT, TARGET);
            trace.record("release");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        schedule_done.store(true, Ordering::SeqCst);
        let calls = caller.await.expect("caller task");
        let issued = lock(&issued).clone();
        conclude(
            seed,
            init,
            trace,
            calls,
            issued,
            &client_ledger,
            &client_slot,
            notes,
            &client_out,
        )
        .await;
        Ok(())
    });
    finish(seed, sim, &control, &out)
}

#[test]
fn held_traffic_is_delivered_exactly_once_and_in_order() {
    init_logs();
    for seed in seeds(4) {
        with_seed(
            "held_traffic_is_delivered_exactly_once_and_in_order",
            seed,
            |seed| {
                let o = hold_scenario(seed);
                o.report("hold");
                check_exactly_once(&o);
                assert_eq!(o.issued.len(), o.calls.len(), "seed {seed}");
                assert_eq!(
                    o.ledger, o.issued,
                    "seed {seed}: executed exactly once, in issue order"
                );
                // Each response is the counter after its own execution.
                for c in &o.calls {
                    let pos = o
                        .ledger
                        .iter()
                        .position(|p| *p == c.payload)
                        .expect("executed");
                    let got = c.result.as_ref().expect("succeeded");
                    assert_eq!(
                        got.as_ref(),
                        (pos + 1).to_string().as_bytes(),
                        "seed {seed}: {}'s response belongs to it",
                        c.payload
                    );
                }
                assert_eq!(
                    o.note("short_hold_disconnects_before"),
                    o.note("short_hold_disconnects_after"),
                    "seed {seed}: a hold shorter than the bound ({BOUND:?}) broke no connection"
                );
                let s = &o.stats;
                assert!(s.disconnects > 0, "seed {seed}: long holds were detected");
                assert!(s.recoveries > 0, "seed {seed}: and recovered: {s:?}");
                assert_eq!(s.stateless_recoveries, 0, "seed {seed}: {s:?}");
                assert_eq!(s.sessions, 1, "seed {seed}: {s:?}");
                assert_eq!(o.close, Ok(()), "seed {seed}: clean close");
            },
        );
    }
}

/// How long the restart scenario's service takes per command.
const SLOW: Duration = Duration::from_millis(300);

/// The target executes slowly; it is crashed while 12 commands execute
/// (6 retry-safe), 6 more are issued while it is down (2 retry-safe), and it
/// comes back with no sessions. Then, on the new session, it is bounced
/// (restarted at once) while 8 more execute (4 retry-safe).
fn restart_scenario(seed: u64) -> Outcome {
    let ledger = Ledger::default();
    let slot = TargetSlot::default();
    let control = Control::default();
    let out = Arc::new(Mutex::new(None));
    let mut sim = sim(seed, Duration::from_secs(120));
    target_host(&mut sim, &ledger, SLOW, &slot);
    let (client_ledger, client_slot, client_out, client_control) =
        (ledger.clone(), slot.clone(), out.clone(), control.clone());
    sim.client(CLIENT, async move {
        let ledger = client_ledger;
        let control = client_control;
        let trace = Trace::start();
        let init = initiator(seed);
        let mut calls = Vec::new();
        let mut notes = Vec::new();
        for i in 0..3 {
            calls.push(call(&init, &trace, format!("w{i}"), false).await);
        }

        // Round 1: crash with commands executing, issue more while it is down.
        let mut batch = Vec::new();
        for i in 0..6 {
            batch.push(spawn_call(&init, &trace, format!("A{i}"), false));
            batch.push(spawn_call(&init, &trace, format!("R{i}"), true));
        }
        let executing = ledger.len() + 12;
        until(|| ledger.len() >= executing).await;
        notes.push(("crash_at_ledger", ledger.len() as u64));
        let before = disconnects(&init).await;
        trace.record("crash the target");
        control.crash_target();
        while disconnects(&init).await == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        trace.record("initiator lost the connection");
        for i in 0..4 {
            batch.push(spawn_call(&init, &trace, format!("B{i}"), false));
        }
        for i in 0..2 {
            batch.push(spawn_call(&init, &trace, format!("S{i}"), true));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        trace.record("restart the target");
        control.bounce_target();
        calls.extend(join_all(batch).await);
        for i in 0..3 {
            calls.push(call(&init, &trace, format!("n{i}"), false).await);
        }

        // Round 2: an immediate restart with commands executing.
        let mut batch = Vec::new();
        for i in 0..4 {
            batch.push(spawn_call(&init, &trace, format!("C{i}"), false));
            batch.push(spawn_call(&init, &trace, format!("Q{i}"), true));
        }
        let executing = ledger.len() + 8;
        until(|| ledger.len() >= executing).await;
        notes.push(("bounce_at_ledger", ledger.len() as u64));
        trace.record("bounce the target");
        control.bounce_target();
        calls.extend(join_all(batch).await);
        for i in 0..3 {
            calls.push(call(&init, &trace, format!("m{i}"), false).await);
        }
        conclude(
            seed,
            init,
            trace,
            calls,
            Vec::new(),
            &ledger,
            &client_slot,
            notes,
            &client_out,
        )
        .await;
        Ok(())
    });
    finish(seed, sim, &control, &out)
}

#[test]
fn target_restart_fails_unsafe_calls_honestly_and_reissues_safe_ones() {
    init_logs();
    for seed in seeds(4) {
        with_seed(
            "target_restart_fails_unsafe_calls_honestly_and_reissues_safe_ones",
            seed,
            |seed| {
                let o = restart_scenario(seed);
                o.report("restart");
                let count = |p: &str| o.ledger.iter().filter(|e| *e == p).count();
                for c in &o.calls {
                    let p = c.payload.as_str();
                    let class = &p[..1];
                    assert_eq!(c.retry_safe, matches!(class, "R" | "Q" | "S"), "{p}");
                    match (&c.result, class) {
                        // Sent, executing when the target died, not retry-safe.
                        (Err(e), "A" | "C") => {
                            assert!(e.may_have_executed(), "seed {seed}: {p} executed, yet: {e}");
                            assert_eq!(count(p), 1, "seed {seed}: {p}");
                        }
                        // Issued while the target was down: never sent.
                        (Err(e), "B") => {
                            assert!(
                                !e.may_have_executed(),
                                "seed {seed}: {p} was never sent, yet: {e}"
                            );
                            assert_eq!(count(p), 0, "seed {seed}: {p} did not execute");
                        }
                        // Retry-safe, executing when the target died: re-run.
                        (Ok(_), "R" | "Q") => {
                            assert_eq!(count(p), 2, "seed {seed}: {p} ran before and after")
                        }
                        // Retry-safe, never sent before the restart: run once.
                        (Ok(_), "S") => assert_eq!(count(p), 1, "seed {seed}: {p}"),
                        // Before, between and after the restarts.
                        (Ok(_), "w" | "n" | "m") => assert_eq!(count(p), 1, "seed {seed}: {p}"),
                        (r, _) => panic!("seed {seed}: unexpected outcome for {p}: {r:?}"),
                    }
                    // Whatever the class: an error that says "not executed" is true.
                    if let Err(e) = &c.result {
                        if !e.may_have_executed() {
                            assert_eq!(count(p), 0, "seed {seed}: {p} said not executed: {e}");
                        }
                    }
                }
                assert_eq!(o.calls.len(), 3 + 12 + 6 + 3 + 8 + 3);
                // Re-issued calls run in their original order on the new session.
                let after_crash: Vec<&str> = o.ledger[o.note("crash_at_ledger") as usize..]
                    .iter()
                    .map(String::as_str)
                    .filter(|p| p.starts_with('R') || p.starts_with('S'))
                    .collect();
                assert_eq!(
                    after_crash,
                    ["R0", "R1", "R2", "R3", "R4", "R5", "S0", "S1"],
                    "seed {seed}"
                );
                let after_bounce: Vec<&str> = o.ledger[o.note("bounce_at_ledger") as usize..]
                    .iter()
                    .map(String::as_str)
                    .filter(|p| p.starts_with('Q'))
                    .collect();
                assert_eq!(after_bounce, ["Q0", "Q1", "Q2", "Q3"], "seed {seed}");
                let s = &o.stats;
                assert_eq!(s.stateless_recoveries, 2, "seed {seed}: {s:?}");
                assert_eq!(s.sessions, 3, "seed {seed}: {s:?}");
                assert_eq!(s.reissued, 6 + 2 + 4, "seed {seed}: {s:?}");
                assert_eq!(s.calls_failed, 6 + 4 + 4, "seed {seed}: {s:?}");
                let t = o.target_stats.as_ref().expect("target stats");
                assert!(t.recoveries_rejected > 0, "seed {seed}: {t:?}");
                assert_eq!(o.close, Ok(()), "seed {seed}: clean close");
            },
        );
    }
}

/// Runs `scenario` twice for `seed` and requires identical observations.
fn assert_repeats(name: &str, seed: u64, scenario: fn(u64) -> Outcome) {
    with_seed("same_seed_same_run", seed, |seed| {
        let a = scenario(seed).fingerprint();
        let b = scenario(seed).fingerprint();
        if a != b {
            let (la, lb): (Vec<_>, Vec<_>) = (a.lines().collect(), b.lines().collect());
            let at = la
                .iter()
                .zip(&lb)
                .position(|(x, y)| x != y)
                .unwrap_or(la.len().min(lb.len()));
            panic!(
                "{name}, seed {seed}: two runs differ at line {at}:\n  first:  {:?}\n  second: {:?}",
                la.get(at),
                lb.get(at)
            );
        }
    });
}

/// The same seed must give the same run: the client's trace (simulated
/// time, event), the ledger and both sides' stats, for every scenario.
/// This holds because every `tokio::select!` in the runtime is `biased;`:
/// an unbiased one draws from tokio's own OS-seeded generator.
#[test]
fn same_seed_same_run() {
    init_logs();
    let seed = seeds(1)[0];
    assert_repeats("partition", seed, partition_scenario);
    assert_repeats("hold", seed, hold_scenario);
    assert_repeats("restart", seed, restart_scenario);
}
