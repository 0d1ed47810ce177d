//! Regression tests, one per war story in `../shared/seeds/` (the five
//! source documents the protocol was designed from). Each test replays its
//! seed's failure at the protocol level through the hand-driven
//! [`pair::Pair`]: every byte in flight sits in a buffer the test delivers,
//! holds or drops, and time only moves when the test says so, so every run
//! is bounded and deterministic.
//!
//! The service behind the target is a tiny block store ([`BlockStore`]):
//! commands such as `write block=7 value=new` are applied to a map in
//! delivery order and answered at once (or later, for a slow block).
//!
//! Seeds 001 and 002 also run with the protection that stops them disabled
//! through a test-only switch ([`TestSwitches`]) and assert that the
//! corruption or the violation then appears: the same verdict function that
//! passes the protected run must fail the unprotected one.
#![allow(unreachable_pub, dead_code)]

mod pair;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::wire::{ErrorCode, RejectReason};
use holdfast_proto::{
    CallError, CallId, CallOptions, ConnId, ConnectError, ConnectionError, Delivery,
    InitiatorConfig, InitiatorEvent, SeededRandom, SessionId, SessionLoss, SubmitError, Target,
    TargetConfig, TargetStats, TestSwitches, Timestamp,
};
use pair::Pair;

// ----- the service: a tiny block store -----

/// The service of these tests. `write block=B value=V` stores `V` in block
/// `B` and answers `ok`; commands execute in delivery order. Writes to a
/// block in `slow` are applied at delivery but keep running (no response)
/// until [`BlockStore::finish_slow`].
#[derive(Default)]
struct BlockStore {
    blocks: HashMap<u64, String>,
    /// Every command executed, in order (duplicates included).
    executed: Vec<String>,
    /// Blocks whose writes take a long time.
    slow: HashSet<u64>,
    /// Slow commands still running: (session, seq).
    running: Vec<(SessionId, u64)>,
    /// Completions the target refused (it never asked for them).
    refused: Vec<String>,
    /// How many of `Pair::deliveries` were served.
    served: usize,
}

impl BlockStore {
    /// Executes every delivery not served yet, in delivery order, and
    /// answers each command at once unless its block is slow.
    fn serve(&mut self, p: &mut Pair) {
        while let Some(d) = p.deliveries.get(self.served).cloned() {
            self.served += 1;
            let Delivery::Command {
                session,
                seq,
                payload,
            } = d
            else {
                continue;
            };
            let text = std::str::from_utf8(&payload).expect("commands are text");
            let block = self.execute(text);
            if self.slow.contains(&block) {
                self.running.push((session, seq));
            } else {
                self.answer(p, session, seq);
            }
        }
    }

    /// Answers the slow commands still running.
    fn finish_slow(&mut self, p: &mut Pair) {
        for (session, seq) in std::mem::take(&mut self.running) {
            self.answer(p, session, seq);
        }
    }

    fn answer(&mut self, p: &mut Pair, session: SessionId, seq: u64) {
        if let Err(e) = p
            .target
            .complete(session, seq, Bytes::from_static(b"ok"), p.now)
        {
            self.refused.push(e.to_string());
        }
        p.flush();
    }

    /// Applies one `write block=B value=V` and returns `B`.
    fn execute(&mut self, text: &str) -> u64 {
        self.executed.push(text.to_owned());
        let rest = text.strip_prefix("write block=").expect("a write");
        let (block, value) = rest.split_once(" value=").expect("block and value");
        let block: u64 = block.parse().expect("a block number");
        self.blocks.insert(block, value.to_owned());
        block
    }

    fn block(&self, block: u64) -> Option<&str> {
        self.blocks.get(&block).map(String::as_str)
    }

    /// How many times exactly this command executed.
    fn executions(&self, command: &str) -> usize {
        self.executed.iter().filter(|c| *c == command).count()
    }
}

// ----- helpers -----

fn write_command(block: u64, value: &str) -> Bytes {
    Bytes::from(format!("write block={block} value={value}"))
}

/// Issues a write (retry-safe: a block write re-run in order is harmless).
fn write(p: &mut Pair, block: u64, value: &str) -> CallId {
    issue(p, block, value, CallOptions::RETRY_SAFE)
}

fn issue(p: &mut Pair, block: u64, value: &str, options: CallOptions) -> CallId {
    let id = p
        .initiator
        .call(write_command(block, value), options, p.now)
        .expect("call");
    p.flush();
    id
}

/// A pair with immediate acks, the given switches on both sides and the
/// target's credit window.
fn pair_with(switches: TestSwitches, credits: u32) -> Pair {
    Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.ack_delay = Duration::ZERO;
            ic.switches = switches;
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc.credits = credits;
            tc.switches = switches;
            tc
        },
    )
}

fn logged_in(switches: TestSwitches, credits: u32) -> Pair {
    let mut p = pair_with(switches, credits);
    p.connect();
    p.run();
    assert!(p.initiator.is_connected());
    p
}

/// The responses received for `call`.
fn responses_to(p: &Pair, call: CallId) -> usize {
    p.events
        .iter()
        .filter(|e| matches!(e, InitiatorEvent::Response { call: c, .. } if *c == call))
        .count()
}

fn failure_of(p: &Pair, call: CallId) -> Option<CallError> {
    p.events.iter().find_map(|e| match e {
        InitiatorEvent::CallFailed { call: c, error } if *c == call => Some(error.clone()),
        _ => None,
    })
}

fn connection_losses(events: &[InitiatorEvent]) -> Vec<ConnectionError> {
    events
        .iter()
        .filter_map(|e| match e {
            InitiatorEvent::ConnectionLost { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

/// A fresh target, as after a restart: every session is gone.
fn restarted_target(p: &Pair, seed: u64) -> Target {
    Target::new(
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc
        },
        Box::new(SeededRandom::new(seed)),
        p.now,
    )
}

// ----- seed 001: a stale command lands after failover -----

/// How the newer write follows the re-issued one on connection 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// As in the seed: IO2 is issued once IO1's retry has succeeded, so it
    /// carries the acknowledgement of IO1's response.
    Sequential,
    /// IO2 is queued right behind IO1's retry, before IO1's status arrives
    /// (as a multi-queue host does).
    Pipelined,
}

/// What one run of seed 001's scenario left behind.
struct StaleRun {
    store: BlockStore,
    stats: TargetStats,
    connected: bool,
}

/// Seed 001, stateful: IO1 (`write block=7 value=old`) is held in flight on
/// connection 1; the host detects a path error and recovers the session on
/// connection 2 at once (the target has not noticed anything), IO1 is
/// re-issued there and succeeds, IO2 (`value=new`) to the same block
/// succeeds, and only then does connection 1 release IO1's bytes.
fn stale_write_after_path_failure(switches: TestSwitches, order: Order) -> StaleRun {
    let mut p = logged_in(switches, 128);
    let mut store = BlockStore::default();
    let path1 = p.conn;
    let io1 = write(&mut p, 7, "old");
    let held = std::mem::take(&mut p.to_target);
    assert!(!held.is_empty(), "IO1 is on path 1's wire");
    p.initiator.connection_lost(path1, p.now);
    p.flush();
    p.connect();
    p.flush();
    p.deliver_to_target(usize::MAX); // the recovery LOGIN
    p.deliver_to_initiator(usize::MAX); // LOGIN_ACCEPT: IO1 goes out again
    assert_eq!(p.data_sent_on(p.conn), vec![1], "IO1 re-issued on path 2");
    let io2 = match order {
        Order::Sequential => {
            p.deliver_to_target(usize::MAX);
            store.serve(&mut p);
            p.deliver_to_initiator(usize::MAX);
            assert_eq!(responses_to(&p, io1), 1, "IO1's retry succeeded");
            let io2 = write(&mut p, 7, "new");
            p.deliver_to_target(usize::MAX);
            store.serve(&mut p);
            io2
        }
        Order::Pipelined => {
            let io2 = write(&mut p, 7, "new");
            p.deliver_to_target(usize::MAX);
            store.serve(&mut p);
            io2
        }
    };
    p.deliver_to_initiator(usize::MAX);
    assert_eq!(
        (responses_to(&p, io1), responses_to(&p, io2)),
        (1, 1),
        "both writes succeeded"
    );
    assert_eq!(store.block(7), Some("new"));
    // Path 1 finally releases IO1, while the initiator's acknowledgement of
    // the two responses is still on path 2's wire.
    p.target.handle_input(path1, &held, p.now);
    p.flush();
    store.serve(&mut p);
    p.run();
    store.serve(&mut p);
    p.run();
    StaleRun {
        store,
        stats: p.target.stats().clone(),
        connected: p.initiator.is_connected(),
    }
}

/// The seed's invariant: after IO2 succeeded the block holds IO2's data,
/// and IO1 executed exactly once.
fn stale_write_verdict(run: &StaleRun) -> Result<(), String> {
    let block = run.store.block(7);
    let old = run.store.executions("write block=7 value=old");
    if block != Some("new") || old != 1 {
        return Err(format!(
            "data corruption: block 7 holds {block:?} after the newer write \"new\" \
             succeeded; the write of \"old\" executed {old} times"
        ));
    }
    Ok(())
}

/// Seed 001, stateless: as above, but the target restarts between IO1's
/// send and the failover. IO1 is retry-safe, so the initiator re-issues it
/// on a new session; IO2 follows; then connection 1's held bytes reach the
/// new incarnation, which never saw connection 1 log in.
fn stale_write_after_target_restart() -> (BlockStore, Pair) {
    let mut p = logged_in(TestSwitches::default(), 128);
    let mut store = BlockStore::default();
    let path1 = p.conn;
    let old_session = p.initiator.session().expect("session");
    let io1 = write(&mut p, 7, "old");
    let held = std::mem::take(&mut p.to_target);
    p.initiator.connection_lost(path1, p.now);
    p.flush();
    p.target = restarted_target(&p, 7);
    p.connect();
    p.run();
    store.serve(&mut p);
    p.run();
    assert_eq!(responses_to(&p, io1), 1, "IO1 re-issued on a new session");
    assert_ne!(p.initiator.session(), Some(old_session));
    let io2 = write(&mut p, 7, "new");
    p.run();
    store.serve(&mut p);
    p.run();
    assert_eq!(responses_to(&p, io2), 1);
    let delivered = p.deliveries.len();
    // The held bytes arrive on connection 1, unknown to the new incarnation...
    p.target.handle_input(path1, &held, p.now);
    p.flush();
    // ...or on a connection it accepted but that never logged in.
    let stray = ConnId(1000);
    p.target.accept(stray, p.now).expect("accept");
    p.target.handle_input(stray, &held, p.now);
    p.flush();
    store.serve(&mut p);
    p.run();
    assert_eq!(p.deliveries.len(), delivered, "nothing stale was delivered");
    assert!(
        p.target_closed.contains(&stray),
        "a command before login closes the connection"
    );
    (store, p)
}

/// Seed 001 (`../shared/seeds/001_f128ff8c4b56b71d.txt`): a write held in
/// flight on connection 1 must not overwrite a newer write after the host
/// failed over to connection 2 and re-issued it.
///
/// Two protections stop the stale write, each on its own (see
/// `seed_001_stale_command_after_path_failure_corrupts_without_fencing_and_dedup`):
/// fencing (the recovery login closes connection 1 at the target, which
/// never reads it again) and sequence deduplication (IO1's sequence number
/// was already received through its retry, so a late copy is dropped).
/// Both message orders are checked, as is the stateless variant where the
/// target restarted in between.
#[test]
fn seed_001_stale_command_after_path_failure() {
    for order in [Order::Sequential, Order::Pipelined] {
        let run = stale_write_after_path_failure(TestSwitches::default(), order);
        stale_write_verdict(&run).unwrap_or_else(|e| panic!("{order:?}: {e}"));
        assert!(run.connected, "{order:?}: the session is still up");
        assert_eq!(run.stats.fenced, 1, "{order:?}: path 1 was fenced");
        assert_eq!(run.stats.protocol_errors, 0, "{order:?}");
        assert!(run.store.refused.is_empty(), "{order:?}");
    }
    let (store, p) = stale_write_after_target_restart();
    assert_eq!(
        store.block(7),
        Some("new"),
        "stateless: {:?}",
        store.executed
    );
    assert_eq!(store.executions("write block=7 value=old"), 1);
    assert!(p.initiator.is_connected());
    assert!(p.events.iter().any(|e| matches!(
        e,
        InitiatorEvent::SessionReplaced {
            lost: SessionLoss::Rejected {
                reason: RejectReason::TargetRestarted,
                ..
            },
            reissued: 1,
            failed: 0,
        }
    )));
}

/// Seed 001 (`../shared/seeds/001_f128ff8c4b56b71d.txt`) with its
/// protections disabled: the stale IO1 lands after IO2 and the block ends
/// with the old data, exactly the corruption the seed reports.
///
/// Fencing and deduplication overlap, so each alone is shown to suffice and
/// only both off (`no_fencing` + `no_dedup`) lets IO1 through. The run uses
/// the pipelined order: in the seed's strictly sequential order IO2 carries
/// the acknowledgement of IO1's response, so the stale frame's own
/// piggybacked acknowledgement (0) is below what the session already has
/// and the target's ack-range check refuses it too (a protocol error on
/// connection 1). That third guard is incidental, not a protection: it
/// vanishes as soon as IO2 is pipelined behind IO1's retry.
#[test]
fn seed_001_stale_command_after_path_failure_corrupts_without_fencing_and_dedup() {
    let no_fencing = TestSwitches {
        no_fencing: true,
        ..TestSwitches::default()
    };
    let no_dedup = TestSwitches {
        no_dedup: true,
        ..TestSwitches::default()
    };
    let neither = TestSwitches {
        no_fencing: true,
        no_dedup: true,
        ..TestSwitches::default()
    };
    // Fencing alone: connection 1 was closed, its bytes are never read.
    let run = stale_write_after_path_failure(no_dedup, Order::Pipelined);
    stale_write_verdict(&run).expect("fencing alone stops the stale write");
    assert_eq!(run.stats.fenced, 1);
    // Deduplication alone: IO1's sequence number was already received.
    let run = stale_write_after_path_failure(no_fencing, Order::Pipelined);
    stale_write_verdict(&run).expect("deduplication alone stops the stale write");
    assert_eq!((run.stats.fenced, run.stats.duplicates_dropped), (0, 1));
    // Neither: the corruption of the seed.
    let run = stale_write_after_path_failure(neither, Order::Pipelined);
    let e = stale_write_verdict(&run).expect_err("the stale write must land");
    eprintln!("caught as expected: {e}");
    assert!(e.starts_with("data corruption"), "{e}");
    assert_eq!(run.store.block(7), Some("old"));
    assert_eq!(run.store.executions("write block=7 value=old"), 2);
    // The sequential order, for the record: the ack-range check catches it.
    let run = stale_write_after_path_failure(neither, Order::Sequential);
    stale_write_verdict(&run).expect("refused by the ack-range check");
    assert_eq!(run.stats.protocol_errors, 1);
}

// ----- seed 002: the credit flood after a reconnect -----

/// The target's credit window in seed 002's scenario.
const WINDOW: u32 = 4;
/// Calls pending at the reconnect: ten times the window.
const FLOOD: u64 = 10 * WINDOW as u64;

/// What one run of seed 002's scenario observed.
struct FloodRun {
    /// Calls pending (in the application's queue or the initiator) at the reconnect.
    pending_at_reconnect: usize,
    /// Commands sent on the new connection before any response came back.
    first_flight: usize,
    /// Credit violations the target counted.
    violations: u64,
    /// Connections lost after the reconnect.
    drops: Vec<ConnectionError>,
    /// Calls answered (each once).
    answered: usize,
    store: BlockStore,
}

/// Submits queued writes until the initiator refuses for credit, as an
/// application does: the rest waits for `CreditAvailable`.
fn submit_queued(p: &mut Pair, queue: &mut VecDeque<u64>, calls: &mut Vec<CallId>) {
    while let Some(&block) = queue.front() {
        match p
            .initiator
            .call(write_command(block, "v"), CallOptions::default(), p.now)
        {
            Ok(call) => {
                calls.push(call);
                queue.pop_front();
            }
            Err(SubmitError::NoCredit) => break,
            Err(e) => panic!("submit: {e}"),
        }
    }
    p.flush();
}

/// Seed 002: a session with a window of [`WINDOW`] credits; the application
/// has [`FLOOD`] writes to make, submits what the initiator accepts, and the
/// connection dies with all of it on the wire. The driver reconnects (again
/// after each drop, at most three times, as the xprtrdma client did) and
/// serves until everything is answered.
fn credit_flood_on_reconnect(switches: TestSwitches) -> FloodRun {
    let mut p = logged_in(switches, WINDOW);
    let mut store = BlockStore::default();
    let mut queue: VecDeque<u64> = (0..FLOOD).collect();
    let mut calls = Vec::new();
    submit_queued(&mut p, &mut queue, &mut calls);
    p.cut();
    let pending_at_reconnect = queue.len() + p.initiator.outstanding();
    let violations_before = p.target.stats().credit_violations;
    let events_before = p.events.len();
    p.connect();
    p.flush();
    p.deliver_to_target(usize::MAX); // the recovery LOGIN
    p.deliver_to_initiator(usize::MAX); // LOGIN_ACCEPT: the first flight goes out
    let first_flight = p.data_sent_on(p.conn).len();
    let mut reconnects = 0;
    for _ in 0..1000 {
        if queue.is_empty() && p.initiator.outstanding() == 0 {
            break;
        }
        if p.initiator.connection().is_none() {
            if reconnects == 3 {
                break;
            }
            reconnects += 1;
            p.connect();
            p.flush();
        }
        p.deliver_to_target(usize::MAX);
        store.serve(&mut p);
        p.deliver_to_initiator(usize::MAX);
        submit_queued(&mut p, &mut queue, &mut calls);
    }
    let answered = calls.iter().filter(|c| responses_to(&p, **c) == 1).count();
    FloodRun {
        pending_at_reconnect,
        first_flight,
        violations: p.target.stats().credit_violations - violations_before,
        drops: connection_losses(&p.events[events_before..]),
        answered,
        store,
    }
}

/// The seed's invariant: the new connection respects the grant, the target
/// sees no violation, the session does not drop again, and every call is
/// answered.
fn credit_flood_verdict(run: &FloodRun) -> Result<(), String> {
    if run.violations > 0 || !run.drops.is_empty() || run.first_flight > WINDOW as usize {
        return Err(format!(
            "credit violations: {} (a first flight of {} commands on the new connection \
             for a window of {WINDOW}); the session dropped again {} times: {:?}",
            run.violations,
            run.first_flight,
            run.drops.len(),
            run.drops
        ));
    }
    if run.answered != FLOOD as usize {
        return Err(format!("{} of {FLOOD} calls answered", run.answered));
    }
    Ok(())
}

/// Seed 002 (`../shared/seeds/002_f8343fa8a1564bd6.txt`): with ten times
/// the credit window of calls pending at the moment of a reconnect, the
/// new connection carries no more than the window before fresh credit
/// comes back, the target counts zero credit violations, the session does
/// not drop again, and every call executes once, in order.
///
/// The initiator refuses submissions beyond its credit (`NoCredit`), so of
/// the 40 pending calls 4 are in the initiator and 36 in the application's
/// queue, released by `CreditAvailable`.
#[test]
fn seed_002_credit_flood_on_reconnect() {
    let run = credit_flood_on_reconnect(TestSwitches::default());
    assert_eq!(run.pending_at_reconnect, FLOOD as usize);
    credit_flood_verdict(&run).unwrap_or_else(|e| panic!("{e}"));
    assert!(run.first_flight > 0, "the reconnect resent the lost calls");
    let expected: Vec<String> = (0..FLOOD)
        .map(|b| format!("write block={b} value=v"))
        .collect();
    assert_eq!(run.store.executed, expected, "each once, in order");
}

/// Seed 002 (`../shared/seeds/002_f8343fa8a1564bd6.txt`) with the credit
/// limit ignored (`ignore_credits`): the initiator dumps every pending call
/// onto the new connection, the target counts credit violations and drops
/// the connection, and it happens again after each reconnect.
#[test]
fn seed_002_credit_flood_on_reconnect_violates_credits_without_the_limit() {
    let run = credit_flood_on_reconnect(TestSwitches {
        ignore_credits: true,
        ..TestSwitches::default()
    });
    assert_eq!(run.pending_at_reconnect, FLOOD as usize);
    let e = credit_flood_verdict(&run).expect_err("the flood must be caught");
    eprintln!("caught as expected: {e}");
    assert!(e.starts_with("credit violations"), "{e}");
    assert_eq!(run.first_flight, FLOOD as usize, "everything at once");
    assert!(run.violations > 1, "violated on every reconnect");
    assert!(
        run.drops.len() > 1,
        "dropped again and again: {:?}",
        run.drops
    );
    assert!(run.drops.iter().all(|d| matches!(
        d,
        ConnectionError::PeerError {
            code: ErrorCode::CreditExceeded,
            ..
        }
    )));
}

// ----- seed 004: one-way messages across resets -----

/// Sends queued one-way messages until the initiator refuses for credit.
fn send_queued(p: &mut Pair, queue: &mut VecDeque<u64>, calls: &mut Vec<CallId>) {
    while let Some(&n) = queue.front() {
        let payload = Bytes::from(format!("m{n}"));
        match p.initiator.send(payload, CallOptions::default(), p.now) {
            Ok(call) => {
                calls.push(call);
                queue.pop_front();
            }
            Err(SubmitError::NoCredit) => break,
            Err(e) => panic!("send: {e}"),
        }
    }
    p.flush();
}

/// A random number in `0..=max`.
fn below(rng: &mut SeededRandom, max: usize) -> usize {
    (rng.next_u64() % (max as u64 + 1)) as usize
}

/// Delivers everything until nothing moves, reconnecting if the current
/// connection was lost meanwhile (a late login on an older connection can
/// fence it).
fn run_connected(p: &mut Pair) {
    for _ in 0..10 {
        p.run();
        if p.initiator.connection().is_some() || p.initiator.is_finished() {
            return;
        }
        p.connect();
    }
    panic!("no connection stayed up");
}

/// The highest data sequence the initiator sent on `conn`.
fn highest_sent(p: &Pair, conn: ConnId) -> u64 {
    p.data_sent_on(conn).into_iter().max().unwrap_or(0)
}

/// Seed 004 (`../shared/seeds/004_87bbfc2141caad15.txt`): a stream of
/// one-way messages across 100 connection resets arrives exactly once and
/// in order, and a FIN close delivers everything sent before it.
///
/// Each round sends a burst, lets a random prefix of each direction's bytes
/// through (cutting frames at arbitrary byte offsets), then resets: mostly a
/// reset both sides see, sometimes one only the initiator sees, in which
/// case the old connection's remaining bytes reach the target late, before
/// or after the new login fences it, or never. The new connection resends
/// exactly the unacknowledged tail; no retransmission timers are involved.
#[test]
fn seed_004_lost_one_way_messages() {
    let mut rng = SeededRandom::new(0x004);
    let mut p = logged_in(TestSwitches::default(), 128);
    let session = p.initiator.session().expect("session");
    let mut queue = VecDeque::new();
    let mut calls = Vec::new();
    let mut next = 0u64;
    let (mut lost_in_flight, mut mid_frame, mut late_bytes) = (0, 0, 0);
    for _ in 0..100 {
        for _ in 0..below(&mut rng, 12) {
            queue.push_back(next);
            next += 1;
        }
        send_queued(&mut p, &mut queue, &mut calls);
        for _ in 0..below(&mut rng, 2) + 1 {
            let n = below(&mut rng, p.to_target.len());
            p.deliver_to_target(n);
            let n = below(&mut rng, p.to_initiator.len());
            p.deliver_to_initiator(n);
            send_queued(&mut p, &mut queue, &mut calls);
        }
        let old = p.conn;
        let received = p.target.session_info(session).map_or(0, |s| s.received);
        if highest_sent(&p, old) > received {
            lost_in_flight += 1;
        }
        if p.target.buffered(old).is_some_and(|(b, _)| b > 0) {
            mid_frame += 1;
        }
        if below(&mut rng, 3) == 0 {
            // Only the initiator notices; the old bytes may still arrive.
            let held = std::mem::take(&mut p.to_target);
            p.initiator.connection_lost(old, p.now);
            p.flush();
            p.connect();
            p.flush();
            let when = below(&mut rng, 2);
            if when == 1 {
                // Part of the new connection's bytes (its LOGIN) first.
                let n = below(&mut rng, p.to_target.len());
                p.deliver_to_target(n);
            }
            if when < 2 && !held.is_empty() {
                p.target.handle_input(old, &held, p.now);
                p.flush();
                late_bytes += 1;
            }
        } else {
            p.cut();
            p.connect();
            p.flush();
        }
        if below(&mut rng, 3) > 0 {
            // The login completes; the resent tail is on the wire.
            p.deliver_to_target(usize::MAX);
            p.deliver_to_initiator(usize::MAX);
        }
    }
    // Everything the application still holds goes out, then a last burst
    // right before the close, still unacknowledged when `close` is called.
    for _ in 0..1000 {
        if queue.is_empty() {
            break;
        }
        run_connected(&mut p);
        send_queued(&mut p, &mut queue, &mut calls);
    }
    run_connected(&mut p);
    for _ in 0..10 {
        queue.push_back(next);
        next += 1;
    }
    send_queued(&mut p, &mut queue, &mut calls);
    assert!(queue.is_empty(), "the last burst fits the window");
    p.initiator.close(p.now);
    p.flush();
    // One more reset while closing.
    let n = below(&mut rng, p.to_target.len());
    p.deliver_to_target(n);
    p.cut();
    p.connect();
    run_connected(&mut p);

    assert!(
        p.events.contains(&InitiatorEvent::Closed),
        "the FIN exchange completed"
    );
    let delivered: Vec<Bytes> = p
        .deliveries
        .iter()
        .map(|d| match d {
            Delivery::Message { payload, .. } => payload.clone(),
            Delivery::Command { .. } => panic!("only messages were sent"),
        })
        .collect();
    let expected: Vec<Bytes> = (0..next).map(|n| Bytes::from(format!("m{n}"))).collect();
    assert_eq!(delivered, expected, "exactly once, in order");
    let confirmed: Vec<CallId> = p
        .events
        .iter()
        .filter_map(|e| match e {
            InitiatorEvent::MessageDelivered { call } => Some(*call),
            _ => None,
        })
        .collect();
    assert_eq!(confirmed, calls, "each confirmed once, in order");
    assert!(!p
        .events
        .iter()
        .any(|e| matches!(e, InitiatorEvent::CallFailed { .. })));
    assert!(p.target.session_info(session).is_none(), "FIN ended it");
    assert_eq!(p.target.stats().sessions_closed, 1);
    // The resets really did lose messages in flight, mid-frame too.
    assert!(p.initiator.stats().disconnects >= 101);
    eprintln!(
        "{next} messages; resets with messages lost in flight: {lost_in_flight}, \
         mid-frame: {mid_frame}, with late old-connection bytes: {late_bytes}; \
         resent: {}",
        p.initiator.stats().resent
    );
    assert!(
        lost_in_flight >= 30,
        "only {lost_in_flight} resets lost messages"
    );
    assert!(mid_frame >= 10, "only {mid_frame} resets cut a frame");
    assert!(
        late_bytes >= 10,
        "only {late_bytes} resets delivered late bytes"
    );
}

// ----- seed 003: the iSCSI connection recovery scheme -----

/// Seed 003 (`../shared/seeds/003_38fd1e4a17df40e0.txt`), stateful and
/// stateless recovery: a completed command is answered from the cache, one
/// in progress is not re-run, one the target never received runs; after
/// the retain time expires the recovery login is rejected, sent calls that
/// are not retry-safe fail with "may have executed" (whether or not they
/// did), unsent ones with "not executed", and retry-safe ones are re-issued
/// on a new session in their original order.
#[test]
fn seed_003_stateful_recovery() {
    // Stateful: within the retain time.
    let mut p = logged_in(TestSwitches::default(), 128);
    let mut store = BlockStore::default();
    store.slow.insert(2);
    let done = issue(&mut p, 1, "a", CallOptions::default());
    let running = issue(&mut p, 2, "b", CallOptions::default());
    let unreceived = issue(&mut p, 3, "c", CallOptions::default());
    let frame = p.to_target.len() / 3;
    p.deliver_to_target(2 * frame);
    store.serve(&mut p);
    assert_eq!(store.executed.len(), 2);
    p.to_initiator.clear(); // the response to `done` is lost
    let old = p.conn;
    p.cut();
    p.connect();
    p.run();
    store.serve(&mut p);
    p.run();
    assert_eq!(responses_to(&p, done), 1, "answered from the cache");
    assert_eq!(p.target.stats().answered_from_cache, 1);
    assert_eq!(responses_to(&p, unreceived), 1, "the unreceived one ran");
    assert_eq!(responses_to(&p, running), 0, "still running");
    assert_eq!(p.data_sent_on(old), vec![1, 2, 3]);
    assert_eq!(
        p.data_sent_on(p.conn),
        vec![3],
        "only the unreceived is resent"
    );
    store.finish_slow(&mut p);
    p.run();
    assert_eq!(responses_to(&p, running), 1);
    assert_eq!(
        store.executed,
        [(1, "a"), (2, "b"), (3, "c")]
            .map(|(b, v)| format!("write block={b} value={v}"))
            .to_vec(),
        "each executed once: nothing re-run"
    );

    // Stateless: the retain time passes before the initiator is back.
    let retain = Duration::from_millis(300);
    let mut p = Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.ack_delay = Duration::ZERO;
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc.retain = retain;
            tc
        },
    );
    p.connect();
    p.run();
    let session = p.initiator.session().expect("session");
    let mut store = BlockStore::default();
    store.slow.insert(20);
    let executed = issue(&mut p, 10, "x", CallOptions::default());
    let in_progress = issue(&mut p, 20, "y", CallOptions::default());
    let safe_executed = issue(&mut p, 30, "z", CallOptions::RETRY_SAFE);
    let safe_lost = issue(&mut p, 40, "w", CallOptions::RETRY_SAFE);
    let lost = issue(&mut p, 50, "v", CallOptions::default());
    let frame = p.to_target.len() / 5;
    p.deliver_to_target(3 * frame);
    store.serve(&mut p);
    p.to_initiator.clear(); // the responses are lost
    p.cut();
    let never_sent = issue(&mut p, 60, "u", CallOptions::default());
    p.advance(retain - Duration::from_millis(1));
    assert!(p.target.session_info(session).is_some(), "retained");
    p.advance(Duration::from_millis(2));
    // y still runs: the session outlives its retain time until y is over,
    // so nothing re-issued below can run beside it (§11.1).
    assert!(
        p.target.session_info(session).is_some(),
        "kept while y runs"
    );
    store.finish_slow(&mut p);
    assert!(
        p.target.session_info(session).is_none(),
        "expired as soon as y finished"
    );
    p.connect();
    p.run();
    store.serve(&mut p);
    p.run();
    assert!(p.events.iter().any(|e| matches!(
        e,
        InitiatorEvent::SessionReplaced {
            lost: SessionLoss::Rejected {
                reason: RejectReason::SessionExpired,
                ..
            },
            reissued: 2,
            failed: 4,
        }
    )));
    for (call, what) in [
        (executed, "executed"),
        (in_progress, "in progress"),
        (lost, "lost in flight"),
    ] {
        let error = failure_of(&p, call).unwrap_or_else(|| panic!("{what} must fail"));
        assert!(
            matches!(
                &error,
                CallError::MayHaveExecuted(SessionLoss::Rejected {
                    reason: RejectReason::SessionExpired,
                    ..
                })
            ),
            "{what}: {error}"
        );
    }
    assert!(matches!(
        failure_of(&p, never_sent),
        Some(CallError::NotExecuted(_))
    ));
    for call in [safe_executed, safe_lost] {
        assert!(failure_of(&p, call).is_none());
        assert_eq!(responses_to(&p, call), 1, "re-issued and answered");
    }
    // Re-issued in their original order on the new session.
    let new_session = p.initiator.session().expect("new session");
    assert_ne!(new_session, session);
    let reissued: Vec<Bytes> = p
        .deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Command {
                session, payload, ..
            } if *session == new_session => Some(payload.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reissued,
        vec![write_command(30, "z"), write_command(40, "w")]
    );
    assert_eq!(store.block(40), Some("w"));
}

/// Seed 003 (`../shared/seeds/003_38fd1e4a17df40e0.txt`), the shutdown
/// notice (MaxUpTime, MinHoldTime): once the notice arrives no command is
/// put on the wire that cannot finish within the announced up time (every
/// one sent is answered before the target closes), and an eager driver
/// that retries every tick cannot reconnect before the hold time.
///
/// The network has a one-way latency of one 10 ms tick, so the initiator
/// measures a 20 ms round trip. After the hold time the target is back as
/// a new incarnation: commands held back were never sent, so retry-safe
/// ones are re-issued and the others fail with "not executed".
#[test]
fn seed_003_shutdown_notice() {
    let tick = Duration::from_millis(10);
    let max_up = Duration::from_millis(200);
    let hold = Duration::from_secs(1);
    let mut p = logged_in(TestSwitches::default(), 128);
    let mut store = BlockStore::default();
    let path = p.conn;
    let mut issued: Vec<(CallId, Timestamp)> = Vec::new();
    let mut shutdown_at = None;
    let mut back_at = None;
    let mut refused = Vec::new();
    let mut connects: Vec<Timestamp> = Vec::new();
    for i in 0..200u64 {
        // One tick: what was sent a tick ago arrives (each way).
        let (to_target, to_initiator) = (p.to_target.len(), p.to_initiator.len());
        p.deliver_to_target(to_target);
        store.serve(&mut p);
        p.deliver_to_initiator(to_initiator);
        if i == 10 {
            p.target.shutdown(max_up, Some(hold), p.now);
            p.flush();
            shutdown_at = Some(p.now);
        }
        if p.initiator.is_connected() && connects.is_empty() {
            let options = if i % 2 == 0 {
                CallOptions::RETRY_SAFE
            } else {
                CallOptions::default()
            };
            issued.push((issue(&mut p, i, "data", options), p.now));
        }
        if let Some(at) = shutdown_at {
            if back_at.is_none() && p.now >= at + max_up + hold {
                // The target is back after its hold time, as a new incarnation.
                p.target = restarted_target(&p, 9);
                back_at = Some(p.now);
            }
        }
        if p.initiator.connection().is_none() {
            match p.try_connect() {
                Ok(()) => connects.push(p.now),
                Err(e) => refused.push((p.now, e)),
            }
            p.flush();
        }
        p.advance(tick);
    }
    p.run();
    store.serve(&mut p);
    p.run();

    let shutdown_at = shutdown_at.expect("shutdown");
    let notice = p.events.iter().find_map(|e| match e {
        InitiatorEvent::ShutdownNotice {
            up_until,
            reconnect_at,
        } => Some((*up_until, *reconnect_at)),
        _ => None,
    });
    let (up_until, reconnect_at) = notice.expect("the notice arrived");
    let reconnect_at = reconnect_at.expect("the target returns");
    assert_eq!(reconnect_at, up_until + hold);
    // Every command sent on the old connection was answered on it, before
    // the target closed it for the shutdown.
    let lost_at = p
        .events
        .iter()
        .position(|e| matches!(e, InitiatorEvent::ConnectionLost { .. }))
        .expect("the target closed the connection");
    assert!(matches!(
        &p.events[lost_at],
        InitiatorEvent::ConnectionLost {
            error: ConnectionError::PeerError {
                code: ErrorCode::Shutdown,
                ..
            },
            ..
        }
    ));
    // No reconnect before the hold time, however eager the driver: one
    // reconnect, to the target that is back.
    assert_eq!(
        connects.len(),
        1,
        "reconnects at {connects:?}; the hold ends at {reconnect_at:?}"
    );
    assert!(
        connects[0] >= reconnect_at && connects[0] >= shutdown_at + max_up + hold,
        "reconnected at {:?}, before the hold time ends at {reconnect_at:?}",
        connects[0]
    );
    assert!(back_at.is_some_and(|b| b <= connects[0]));
    assert!(!refused.is_empty());
    for (at, e) in &refused {
        assert!(*at < reconnect_at);
        assert_eq!(*e, ConnectError::TooEarly(reconnect_at));
    }
    // The old session numbered the calls 1, 2, ... in issue order.
    let sent_on_path: HashSet<u64> = p.data_sent_on(path).into_iter().collect();
    let was_sent = |k: usize| sent_on_path.contains(&(k as u64 + 1));
    for (k, (call, at)) in issued.iter().enumerate() {
        let answered_before_close = p.events[..lost_at]
            .iter()
            .any(|e| matches!(e, InitiatorEvent::Response { call: c, .. } if c == call));
        if was_sent(k) {
            assert!(
                answered_before_close,
                "call {k} was sent at {at:?} but not answered within the up time"
            );
        } else {
            // Held back: never sent on any connection of the old session,
            // so it cannot have executed there.
            match failure_of(&p, *call) {
                Some(e) => assert!(matches!(e, CallError::NotExecuted(_)), "{e}"),
                None => assert_eq!(responses_to(&p, *call), 1, "re-issued call {k}"),
            }
        }
    }
    // Commands were still sent after the notice arrived while there was
    // time, and held back once there was not (and none sent after that).
    let after_notice: Vec<usize> = (0..issued.len())
        .filter(|k| issued[*k].1 >= shutdown_at + tick)
        .collect();
    let first_held = after_notice
        .iter()
        .position(|k| !was_sent(*k))
        .expect("commands that could not finish were held back");
    assert!(first_held > 0, "commands that could finish were still sent");
    assert!(
        after_notice[first_held..].iter().all(|k| !was_sent(*k)),
        "nothing was sent after the first held-back command"
    );
    assert!(p.initiator.is_connected());
    assert_eq!(
        p.target.stats().protocol_errors,
        0,
        "the new incarnation saw a clean login"
    );
}
