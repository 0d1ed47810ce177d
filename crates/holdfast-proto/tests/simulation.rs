#![allow(unreachable_pub, dead_code)]
//! Seeded simulations of the session core (see `sim/`). Every seed runs a
//! few thousand commands and one-way messages through cuts at arbitrary byte
//! offsets, blackholes, held (late) connections, target state loss, retain
//! expiry and shutdown notices, and checks the invariants after every step.
//!
//! * `HOLDFAST_SIM_SEEDS=N` runs N seeds (default 2,000);
//! * `HOLDFAST_SIM_SEED=S` with the `replay` test replays one seed exactly;
//! * `HOLDFAST_SIM_OPS=N` changes the operations per seed (default 2,000).

mod sim;

use holdfast_proto::TestSwitches;
use sim::{SimParams, SimReport, World};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn params() -> SimParams {
    SimParams {
        ops: env_u64("HOLDFAST_SIM_OPS", 2000),
        connections: env_u64("HOLDFAST_SIM_CONNECTIONS", 1) as u32,
        ..SimParams::default()
    }
}

/// Runs seeds `shard, shard + shards, ...` below the configured count.
fn run_shard(shard: u64, shards: u64) {
    let seeds = env_u64("HOLDFAST_SIM_SEEDS", 2000);
    let mut seed = shard;
    let mut total = SimReport::default();
    while seed < seeds {
        match World::new(seed, params()).run() {
            Ok(r) => total.add(&r),
            Err(e) => panic!("{e}"),
        }
        seed += shards;
    }
    eprintln!("shard {shard}/{shards} totals: {total:?}");
    // The faults must actually exercise recovery, or the run proves little.
    if seeds >= 100 {
        assert!(total.recoveries > 0 && total.stateless > 0 && total.fenced > 0);
        assert!(total.from_cache > 0 && total.may_have_executed > 0 && total.expired > 0);
    }
}

#[test]
fn seeds_shard_0() {
    run_shard(0, 4);
}

#[test]
fn seeds_shard_1() {
    run_shard(1, 4);
}

#[test]
fn seeds_shard_2() {
    run_shard(2, 4);
}

#[test]
fn seeds_shard_3() {
    run_shard(3, 4);
}

/// Replays the seed in `HOLDFAST_SIM_SEED` (no-op without it).
#[test]
fn replay() {
    if let Ok(seed) = std::env::var("HOLDFAST_SIM_SEED") {
        let seed: u64 = seed.parse().expect("HOLDFAST_SIM_SEED must be a number");
        let report = World::new(seed, params())
            .run()
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("seed {seed}: {report:?}");
    }
}

/// The same run twice gives the same history: the simulation is deterministic.
#[test]
fn a_seed_replays_exactly() {
    let a = World::new(7, params()).run().expect("seed 7");
    let b = World::new(7, params()).run().expect("seed 7");
    assert_eq!(
        (a.steps, a.ops, a.faults, a.end),
        (b.steps, b.ops, b.faults, b.end)
    );
}

/// Mutation test: with deduplication off (naive resend of every unanswered
/// command, duplicates executed), the checker must catch a double execution.
#[test]
fn checker_catches_disabled_dedup() {
    let mut caught = None;
    for seed in 0..200 {
        let params = SimParams {
            switches: TestSwitches {
                no_dedup: true,
                ..TestSwitches::default()
            },
            ops: 500,
            // Naive resend knows nothing of withdrawn calls.
            abandon: false,
            ..SimParams::default()
        };
        if let Err(e) = World::new(seed, params).run() {
            caught = Some(e);
            break;
        }
    }
    let e = caught.expect("no seed exposed the disabled deduplication");
    eprintln!("caught as expected: {e}");
    assert!(
        e.contains("exactly-once violated")
            || e.contains("executed")
            || e.contains("order violated"),
        "unexpected failure: {e}"
    );
}

/// Mutation test: an initiator that ignores its credit limit (seed 002's
/// flood) is caught by the checker through the target's credit enforcement.
#[test]
fn checker_catches_ignored_credits() {
    let mut caught = None;
    for seed in 0..200 {
        let params = SimParams {
            switches: TestSwitches {
                ignore_credits: true,
                ..TestSwitches::default()
            },
            ops: 500,
            ..SimParams::default()
        };
        if let Err(e) = World::new(seed, params).run() {
            caught = Some(e);
            break;
        }
    }
    let e = caught.expect("no seed exposed the ignored credit limit");
    eprintln!("caught as expected: {e}");
    assert!(e.contains("credit violations"), "unexpected failure: {e}");
}

/// Without faults, everything succeeds and nothing is re-sent.
#[test]
fn clean_network_all_calls_succeed() {
    let params = SimParams {
        faults: false,
        ..params()
    };
    for seed in 0..20 {
        let r = World::new(seed, params.clone())
            .run()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.faults, 0);
    }
}

fn slow_params() -> SimParams {
    SimParams {
        slow_service: true,
        ops: env_u64("HOLDFAST_SIM_OPS", 2000) / 2,
        ..SimParams::default()
    }
}

/// A slow backend (effects land when commands complete, some after the
/// retain time): sessions reach their retain time with commands running,
/// and no command of an ended session may land after a re-issue or after
/// its caller was told it failed (issue 14 item 3).
#[test]
fn slow_service_seeds() {
    let seeds = env_u64("HOLDFAST_SIM_SEEDS", 2000) / 4;
    let mut total = SimReport::default();
    for seed in 0..seeds {
        match World::new(seed, slow_params()).run() {
            Ok(r) => total.add(&r),
            Err(e) => panic!("slow service: {e}"),
        }
    }
    eprintln!("slow service totals: {total:?}");
    if seeds >= 100 {
        assert!(
            total.expiries_deferred > 0,
            "no session reached its retain time with commands running"
        );
        assert!(total.stateless > 0 && total.withdrawn > 0);
    }
}

/// Mutation test: a target that ends a session at its retain time while
/// commands still run lets the first execution land after the re-issue.
#[test]
fn checker_catches_expiry_while_commands_run() {
    let mut caught = None;
    for seed in 0..300 {
        let params = SimParams {
            switches: TestSwitches {
                expire_running: true,
                ..TestSwitches::default()
            },
            ops: 500,
            ..slow_params()
        };
        if let Err(e) = World::new(seed, params).run() {
            caught = Some(e);
            break;
        }
    }
    let e = caught.expect("no seed exposed expiry with commands running");
    eprintln!("caught as expected: {e}");
    assert!(e.contains("stale execution"), "unexpected failure: {e}");
}

/// Several connections per session (PROTOCOL.md §17): 2 to 4 connections,
/// faults that cut, blackhole or hold one of them at any byte, re-joins,
/// target restarts; exactly-once, order and the credit bound (reorder
/// buffer included) are checked after every step. Seeds `shard, shard +
/// shards, …` below `HOLDFAST_SIM_MULTI_SEEDS` (default 400).
fn run_multi_shard(shard: u64, shards: u64) {
    let seeds = env_u64("HOLDFAST_SIM_MULTI_SEEDS", 400);
    let mut seed = shard;
    let mut total = SimReport::default();
    while seed < seeds {
        let params = SimParams {
            connections: 2 + (seed % 3) as u32,
            ops: env_u64("HOLDFAST_SIM_OPS", 1000),
            ..SimParams::default()
        };
        match World::new(seed, params).run() {
            Ok(r) => total.add(&r),
            Err(e) => panic!(
                "{e}\n  with HOLDFAST_SIM_CONNECTIONS={} HOLDFAST_SIM_OPS={}",
                2 + seed % 3,
                env_u64("HOLDFAST_SIM_OPS", 1000)
            ),
        }
        seed += shards;
    }
    eprintln!("multi shard {shard}/{shards} totals: {total:?}");
    if seeds >= 40 {
        // The runs must exercise what is new, or they prove little.
        assert!(total.joins > 0 && total.moved > 0 && total.reordered > 0);
        assert!(total.duplicates > 0 && total.recoveries > 0 && total.fenced > 0);
    }
}

#[test]
fn multi_connection_seeds_shard_0() {
    run_multi_shard(0, 2);
}

#[test]
fn multi_connection_seeds_shard_1() {
    run_multi_shard(1, 2);
}

/// Mutation test: with several connections and deduplication off, the copy
/// of a moved command that the dying connection still delivers runs twice,
/// and the checker must catch it.
#[test]
fn checker_catches_disabled_dedup_across_connections() {
    let mut caught = None;
    for seed in 0..200 {
        let params = SimParams {
            switches: TestSwitches {
                no_dedup: true,
                ..TestSwitches::default()
            },
            ops: 500,
            abandon: false,
            connections: 3,
            ..SimParams::default()
        };
        if let Err(e) = World::new(seed, params).run() {
            caught = Some(e);
            break;
        }
    }
    let e = caught.expect("no seed exposed the disabled deduplication");
    eprintln!("caught as expected: {e}");
    assert!(
        e.contains("exactly-once violated")
            || e.contains("executed")
            || e.contains("order violated"),
        "unexpected failure: {e}"
    );
}

/// Two nodes over one backend, a host failing over from A to B by fence,
/// by fence with the peer link down, or by waiting out A's quiesce time
/// (`sim/two_nodes.rs`): no write of the old session lands on A after the
/// re-issue on B, over `HOLDFAST_SIM_SEEDS / 10` seeds (default 200).
#[test]
fn fence_two_nodes_no_stale_write_over_the_seeds() {
    let seeds = env_u64("HOLDFAST_SIM_SEEDS", 2000) / 10;
    let mut total = sim::two_nodes::FailoverReport::default();
    for seed in 0..seeds.max(3) {
        let r = sim::two_nodes::TwoNodes::new(seed, TestSwitches::default())
            .run()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        total.landed_on_a += r.landed_on_a;
        total.reissued += r.reissued;
        total.refused += r.refused;
        total.fenced += r.fenced;
        total.waited += r.waited;
    }
    eprintln!("two nodes, {seeds} seeds: {total:?}");
    // The runs must exercise what they claim to.
    assert!(total.fenced > 0 && total.waited > 0 && total.refused > 0 && total.reissued > 0);
}

/// The same seeds with node A breaking a rule: the check must catch it.
fn stale_writes_with(switches: TestSwitches) -> usize {
    (0..60)
        .filter(|&seed| sim::two_nodes::TwoNodes::new(seed, switches).run().is_err())
        .count()
}

#[test]
fn fence_two_nodes_sim_catches_a_node_that_confirms_early() {
    let caught = stale_writes_with(TestSwitches {
        fence_without_waiting: true,
        ..TestSwitches::default()
    });
    assert!(caught > 0, "no seed caught an early FENCE_DONE");
}

#[test]
fn fence_two_nodes_sim_catches_a_node_that_breaks_its_quiesce_promise() {
    let caught = stale_writes_with(TestSwitches {
        no_quiesce: true,
        ..TestSwitches::default()
    });
    assert!(caught > 0, "no seed caught a late start");
}
