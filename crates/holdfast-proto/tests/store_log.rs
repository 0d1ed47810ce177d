//! The durable log engine (`store::log`) against a simulated disk with
//! crash semantics: round trips, a crash after every file operation, torn
//! and truncated logs, and bit flips anywhere.

use bytes::Bytes;
use holdfast_proto::store::log::{DurableLog, LogLimits, StoreFile, StoreOp};
use holdfast_proto::wire::ResponseStatus;
use holdfast_proto::{
    HostId, HostRecord, MemoryStore, SeededRandom, SessionId, SessionSecret, StateChange,
};
use proptest::prelude::*;

#[path = "sim/disk.rs"]
pub mod disk;
use disk::SimDisk;

/// Frequent checkpoints, and a pre-write smaller than some groups so the
/// log is extended often (and a crash falls inside an extension).
fn small_limits() -> LogLimits {
    LogLimits {
        min_log: 600,
        prewrite: 96,
        ..LogLimits::default()
    }
}

fn change() -> impl Strategy<Value = StateChange> {
    let session = (1u64..5).prop_map(|s| SessionId::new(7, s as u32));
    let payload = proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from);
    prop_oneof![
        (
            session.clone(),
            any::<[u8; 16]>(),
            1u32..64,
            any::<Option<(u8, u64)>>()
        )
            .prop_map(
                |(session, secret, credits, host)| StateChange::SessionCreated {
                    session,
                    secret: SessionSecret(secret),
                    credits,
                    host: host.map(|(h, epoch)| HostRecord {
                        host: HostId([h | 1; 16]),
                        epoch
                    }),
                    max_frame: 1 << 16,
                }
            ),
        (session.clone(), 1u64..50, any::<bool>(), payload.clone()).prop_map(
            |(session, seq, command, payload)| StateChange::Received {
                session,
                seq,
                command,
                payload
            }
        ),
        (
            session.clone(),
            1u64..50,
            1u64..50,
            payload,
            any::<Option<u16>>()
        )
            .prop_map(|(session, command, response, payload, status)| {
                StateChange::Completed {
                    session,
                    command,
                    response,
                    payload,
                    status: status.map(ResponseStatus::from_wire),
                }
            }),
        (session.clone(), 1u64..50)
            .prop_map(|(session, through)| StateChange::MessagesDelivered { session, through }),
        (session.clone(), 1u64..50)
            .prop_map(|(session, through)| StateChange::ResponsesAcked { session, through }),
        session.prop_map(|session| StateChange::SessionEnded { session }),
        (any::<u8>(), any::<u64>()).prop_map(|(h, epoch)| StateChange::HostFenced {
            host: HostId([h; 16]),
            epoch
        }),
    ]
}

/// Groups of changes, each with the service state stored with it.
fn groups() -> impl Strategy<Value = Vec<(Vec<StateChange>, Option<Bytes>)>> {
    proptest::collection::vec(
        (
            proptest::collection::vec(change(), 1..6),
            proptest::option::of(
                proptest::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from),
            ),
        ),
        1..24,
    )
}

/// The ops of creating a store and committing every group, with the index
/// of each group's `Sync(Log)`, the expected state after each group, and
/// the log's used bytes at the end.
struct Run {
    ops: Vec<StoreOp>,
    synced_at: Vec<usize>,
    states: Vec<(MemoryStore, Option<Bytes>)>,
    used: u64,
}

fn run_all(groups: &[(Vec<StateChange>, Option<Bytes>)], limits: LogLimits) -> Run {
    let (mut log, mut ops) = DurableLog::create(7, limits);
    let mut synced_at = Vec::new();
    // recover() records the log's incarnation in the store it rebuilds.
    let mut empty = MemoryStore::new();
    empty.set_incarnation(7);
    let mut states = vec![(empty, None)];
    for (i, (changes, state)) in groups.iter().enumerate() {
        let group_ops = log.commit(changes, state.as_ref(), 1000 + i as u64);
        // The group's write (after the log's extension, if any), then one
        // sync; a checkpoint may follow.
        let sync = group_ops
            .iter()
            .position(|op| *op == StoreOp::Sync(StoreFile::Log))
            .expect("a sync of the log");
        assert!(sync == 1 || sync == 2, "{group_ops:?}");
        assert!(group_ops[..sync].iter().all(|op| matches!(
            op,
            StoreOp::WriteAt {
                file: StoreFile::Log,
                ..
            }
        )));
        synced_at.push(ops.len() + sync);
        ops.extend(group_ops);
        let (mut store, mut svc) = states.last().cloned().unwrap_or_default();
        store.apply_all(changes);
        if state.is_some() {
            svc = state.clone();
        }
        states.push((store, svc));
    }
    Run {
        ops,
        synced_at,
        states,
        used: log.log_len(),
    }
}

fn recover(
    disk: &SimDisk,
    limits: LogLimits,
) -> Result<holdfast_proto::store::log::Recovered, holdfast_proto::store::log::CorruptStore> {
    let ckpt = disk.read(StoreFile::Checkpoint);
    let log = disk.read(StoreFile::Log);
    DurableLog::recover(ckpt, log, limits)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Everything committed is read back, through checkpoints.
    #[test]
    fn round_trip(groups in groups()) {
        let limits = small_limits();
        let run = run_all(&groups, limits);
        let mut disk = SimDisk::default();
        for op in &run.ops {
            disk.run(op);
        }
        let rec = recover(&disk, limits).expect("a clean store recovers");
        let (store, svc) = run.states.last().cloned().unwrap_or_default();
        prop_assert_eq!(&rec.store, &store);
        prop_assert_eq!(&rec.service_state, &svc);
        prop_assert_eq!(rec.torn_tail, None);
        prop_assert_eq!(rec.last_commit_wall_ms, 1000 + groups.len() as u64 - 1);
        // The recovered engine goes on: run its ops, commit once more.
        let mut engine = rec.log;
        for op in &rec.ops {
            disk.run(op);
        }
        let extra = vec![StateChange::SessionEnded { session: SessionId::new(7, 1) }];
        for op in engine.commit(&extra, None, 5000) {
            disk.run(&op);
        }
        let again = recover(&disk, limits).expect("recovers after more commits");
        let mut expected = store;
        expected.apply_all(&extra);
        prop_assert_eq!(&again.store, &expected);
    }

    /// A crash after any op recovers the state of the last group whose sync
    /// completed, or of the group in flight (its write may have landed).
    #[test]
    fn crash_after_every_op(groups in groups(), seed in 1u64..u64::MAX) {
        check_crashes(&groups, seed, false).map_err(TestCaseError::fail)?;
    }

    /// One flipped bit anywhere in either file: a `CorruptStore`, or a torn
    /// tail with an earlier complete state; never a wrong state. A flip in
    /// the pre-written zeros after the last group looks exactly like the
    /// first byte of a group in flight at a crash: a torn tail that drops
    /// nothing (the final state). Inside the used bytes, a torn tail may
    /// only drop the final group.
    #[test]
    fn bit_flips_never_give_a_wrong_state(groups in groups(), pick in any::<u64>(), bit in 0u8..8) {
        let limits = small_limits();
        let run = run_all(&groups, limits);
        let mut disk = SimDisk::default();
        for op in &run.ops {
            disk.run(op);
        }
        let ckpt = disk.read(StoreFile::Checkpoint).map(<[u8]>::to_vec);
        let log = disk.read(StoreFile::Log).map(<[u8]>::to_vec).unwrap_or_default();
        let ckpt_len = ckpt.as_ref().map_or(0, Vec::len);
        let at = (pick % (ckpt_len + log.len()) as u64) as usize;
        let (mut ckpt, mut log) = (ckpt, log);
        if at < ckpt_len {
            if let Some(c) = ckpt.as_mut() { c[at] ^= 1 << bit; }
        } else {
            log[at - ckpt_len] ^= 1 << bit;
        }
        match DurableLog::recover(ckpt.as_deref(), Some(&log), limits) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(rec) => {
                prop_assert!(rec.torn_tail.is_some(), "a flipped bit at {at} went unnoticed");
                let got = (rec.store, rec.service_state);
                let in_log = at.checked_sub(ckpt_len);
                if in_log.is_some_and(|o| o as u64 >= run.used) {
                    prop_assert!(got == run.states[groups.len()], "flip at {at} in the zeros: a state was dropped");
                } else {
                    // Only the final group may be taken for torn, and then
                    // the state is the one before it.
                    prop_assert!(got == run.states[groups.len() - 1], "flip at {at}: torn tail dropped more than the final group");
                }
            }
        }
    }
}

/// Runs every prefix of the ops, crashes after each (three ways), recovers,
/// and checks the recovered state is that of the last synced group or the
/// one in flight.
fn check_crashes(
    groups: &[(Vec<StateChange>, Option<Bytes>)],
    seed: u64,
    skip_sync: bool,
) -> Result<(), String> {
    let limits = small_limits();
    let run = run_all(groups, limits);
    let mut rng = SeededRandom::new(seed);
    let mut disk = SimDisk::new(skip_sync);
    for (k, op) in run.ops.iter().enumerate() {
        disk.run(op);
        let durable = run.synced_at.iter().filter(|s| **s <= k).count();
        for _ in 0..3 {
            let crashed = disk.crash(&mut rng);
            if crashed.read(StoreFile::Log).is_none()
                && crashed.read(StoreFile::Checkpoint).is_none()
            {
                // Crashed before the store existed: the runtime creates one.
                if durable > 0 {
                    return Err(format!(
                        "op {k}: the store vanished after {durable} synced groups"
                    ));
                }
                continue;
            }
            let rec = recover(&crashed, limits).map_err(|e| format!("op {k}: {e}"))?;
            let got = (rec.store.clone(), rec.service_state.clone());
            let ok = got == run.states[durable]
                || run.states.get(durable + 1).is_some_and(|s| *s == got);
            if !ok {
                return Err(format!(
                    "op {k} ({op:?}): recovered neither group {durable} nor {}",
                    durable + 1
                ));
            }
        }
    }
    Ok(())
}

/// The log cut at every length (its used bytes and some of the zeros
/// after them): a torn tail and an earlier state, or (cut inside the
/// header) a `CorruptStore`.
#[test]
fn truncation_at_every_byte() {
    let limits = LogLimits {
        min_log: 1 << 20,
        prewrite: 64,
        ..LogLimits::default()
    };
    let s = SessionId::new(7, 1);
    let groups: Vec<(Vec<StateChange>, Option<Bytes>)> = (1..6)
        .map(|i| {
            (
                vec![StateChange::Received {
                    session: s,
                    seq: i,
                    command: true,
                    payload: Bytes::from(vec![i as u8; 9]),
                }],
                Some(Bytes::from(vec![i as u8])),
            )
        })
        .collect();
    let run = run_all(&groups, limits);
    let mut disk = SimDisk::default();
    for op in &run.ops {
        disk.run(op);
    }
    let log = disk.read(StoreFile::Log).expect("log exists");
    for cut in 0..log.len() {
        match DurableLog::recover(None, Some(&log[..cut]), limits) {
            Err(e) => assert!(cut < 24, "cut {cut}: {e}"),
            Ok(rec) => {
                let got = (rec.store, rec.service_state);
                let i = run
                    .states
                    .iter()
                    .position(|s| *s == got)
                    .expect("an earlier state");
                assert!(i < run.states.len() - 1 || rec.torn_tail.is_none());
                // The torn bytes run to the last non-zero byte: a cut after
                // some zero bytes of a group does not count them.
                if let Some(t) = rec.torn_tail {
                    let end = (t.offset + t.bytes) as usize;
                    assert!(end <= cut && log[end..cut].iter().all(|b| *b == 0));
                    assert_ne!(log[end - 1], 0, "cut {cut}");
                }
                if cut as u64 >= run.used {
                    assert_eq!(i, run.states.len() - 1, "cut {cut} in the zeros");
                }
            }
        }
    }
}

/// The error names the file, the offset and the sessions affected.
#[test]
fn corrupt_middle_group_names_sessions() {
    let limits = LogLimits {
        min_log: 1 << 20,
        ..LogLimits::default()
    };
    let s1 = SessionId::new(7, 1);
    let created = StateChange::SessionCreated {
        session: s1,
        secret: SessionSecret([3; 16]),
        credits: 8,
        host: None,
        max_frame: 1 << 16,
    };
    let groups = vec![
        (vec![created], None),
        (
            vec![StateChange::Received {
                session: s1,
                seq: 1,
                command: true,
                payload: Bytes::from_static(b"x"),
            }],
            None,
        ),
        (
            vec![StateChange::Received {
                session: s1,
                seq: 2,
                command: true,
                payload: Bytes::from_static(b"y"),
            }],
            None,
        ),
    ];
    let run = run_all(&groups, limits);
    let mut disk = SimDisk::default();
    for op in &run.ops {
        disk.run(op);
    }
    let mut log = disk.read(StoreFile::Log).expect("log exists").to_vec();
    let second = 24 + 12 + u32::from_le_bytes([log[24], log[25], log[26], log[27]]) as usize;
    log[second + 20] ^= 0x10;
    let err = DurableLog::recover(None, Some(&log), limits).expect_err("corrupt");
    assert_eq!(err.file, StoreFile::Log);
    assert_eq!(err.offset, second as u64);
    assert_eq!(err.sessions, vec![s1]);
    let text = err.to_string();
    assert!(
        text.contains("session.log") && text.contains(&s1.to_string()),
        "{text}"
    );
}

/// A damaged first group (the one that created the session): the session
/// is named from the groups after it, whose lengths still check.
#[test]
fn corrupt_first_group_names_sessions_of_later_groups() {
    let limits = LogLimits {
        min_log: 1 << 20,
        ..LogLimits::default()
    };
    let s1 = SessionId::new(7, 1);
    let created = StateChange::SessionCreated {
        session: s1,
        secret: SessionSecret([3; 16]),
        credits: 8,
        host: None,
        max_frame: 4096,
    };
    let groups = vec![
        (vec![created], None),
        (
            vec![StateChange::Received {
                session: s1,
                seq: 1,
                command: true,
                payload: Bytes::from_static(b"x"),
            }],
            None,
        ),
    ];
    let run = run_all(&groups, limits);
    let mut disk = SimDisk::default();
    for op in &run.ops {
        disk.run(op);
    }
    let mut log = disk.read(StoreFile::Log).expect("log exists").to_vec();
    log[24 + 12 + 20] ^= 0x01;
    let err = DurableLog::recover(None, Some(&log), limits).expect_err("corrupt");
    assert_eq!(err.offset, 24);
    assert_eq!(err.sessions, vec![s1], "{err}");
}

/// The test-only switch: the same crash check with `Sync` and `SyncDir`
/// skipped loses acknowledged groups, and the check sees it.
#[test]
fn crash_check_fails_when_sync_is_skipped() {
    let s = SessionId::new(7, 1);
    let groups: Vec<(Vec<StateChange>, Option<Bytes>)> = (1..12)
        .map(|i| {
            (
                vec![StateChange::Received {
                    session: s,
                    seq: i,
                    command: false,
                    payload: Bytes::from(vec![1; 60]),
                }],
                None,
            )
        })
        .collect();
    check_crashes(&groups, 99, false).expect("with syncs no crash loses a group");
    let failures = (1..20u64)
        .filter(|seed| check_crashes(&groups, *seed, true).is_err())
        .count();
    assert_eq!(failures, 19, "every seed must see the loss without syncs");
}

/// A `Received` of session 7/1 with a payload of `len` bytes.
fn received(seq: u64, len: usize) -> StateChange {
    StateChange::Received {
        session: SessionId::new(7, 1),
        seq,
        command: true,
        payload: Bytes::from(vec![seq as u8 | 1; len]),
    }
}

/// Groups of one `Received` each, the `i`-th with a payload of `len(i)`.
fn received_groups(n: u64, len: usize) -> Vec<(Vec<StateChange>, Option<Bytes>)> {
    (1..=n)
        .map(|i| (vec![received(i, len)], Some(Bytes::from(vec![i as u8]))))
        .collect()
}

/// The disk after every op of `run`.
fn disk_of(run: &Run) -> SimDisk {
    let mut disk = SimDisk::default();
    for op in &run.ops {
        disk.run(op);
    }
    disk
}

/// The bytes after the last group are the pre-written zeros, and recovery
/// reads them as the clean end of the log: nothing torn, every group back.
#[test]
fn zero_space_after_the_last_group_is_a_clean_end() {
    let limits = LogLimits {
        min_log: 1 << 20,
        prewrite: 4096,
        ..LogLimits::default()
    };
    let groups = received_groups(5, 30);
    let run = run_all(&groups, limits);
    let disk = disk_of(&run);
    let log = disk.read(StoreFile::Log).expect("log");
    let used = run.used as usize;
    // Created with 4096 zeros after its header, which the groups fit in.
    assert_eq!(log.len(), 24 + 4096, "pre-written, {used} bytes used");
    assert!(used > 24 + 5 * 30);
    assert!(log[used..].iter().all(|b| *b == 0));
    let rec = recover(&disk, limits).expect("recovers");
    assert_eq!(
        rec.torn_tail, None,
        "zeros are the clean end, not a torn tail"
    );
    assert_eq!(rec.groups_replayed, 5);
    assert_eq!((rec.store, rec.service_state), run.states[5]);
}

/// How much of the group in flight reached the disk.
#[derive(Debug, Clone, Copy)]
enum Tear {
    /// Its first `n` bytes.
    Prefix(usize),
    /// Everything from byte `n` on (its header did not land).
    From(usize),
}

/// A group torn inside the pre-written space is a torn tail; the restart
/// drops it and starts a fresh log, so a shorter group committed after it
/// leaves none of the torn bytes behind, and a second restart recovers
/// every acknowledged group with nothing torn.
#[test]
fn torn_group_in_prewritten_space_then_restart_commit_restart() {
    let limits = LogLimits {
        min_log: 1 << 20,
        prewrite: 4096,
        ..LogLimits::default()
    };
    for tear in [
        Tear::Prefix(5),
        Tear::Prefix(40),
        Tear::From(3),
        Tear::From(12),
        Tear::From(50),
    ] {
        let (mut log, ops) = DurableLog::create(7, limits);
        let mut disk = SimDisk::default();
        ops.iter().for_each(|op| disk.run(op));
        let mut expected = MemoryStore::new();
        expected.set_incarnation(7);
        for i in 1..=3 {
            let changes = vec![received(i, 20)];
            expected.apply_all(&changes);
            log.commit(&changes, None, 1000 + i)
                .iter()
                .for_each(|op| disk.run(op));
        }
        let used = log.log_len();
        // The group in flight: large, and only part of it lands.
        for op in log.commit(&[received(4, 90)], None, 1004) {
            match op {
                StoreOp::WriteAt {
                    file,
                    offset,
                    bytes,
                } if offset == used => {
                    let (at, part) = match tear {
                        Tear::Prefix(n) => (0, bytes.slice(..n)),
                        Tear::From(n) => (n, bytes.slice(n..)),
                    };
                    disk.run(&StoreOp::WriteAt {
                        file,
                        offset: offset + at as u64,
                        bytes: part,
                    });
                }
                op => disk.run(&op),
            }
        }
        let rec = recover(&disk, limits).unwrap_or_else(|e| panic!("{tear:?}: {e}"));
        let torn = rec
            .torn_tail
            .unwrap_or_else(|| panic!("{tear:?}: no torn tail"));
        assert_eq!(torn.offset, used, "{tear:?}");
        assert_eq!(rec.store, expected, "{tear:?}");
        rec.ops.iter().for_each(|op| disk.run(op));
        let mut log = rec.log;
        let file = disk.read(StoreFile::Log).expect("log");
        assert!(
            file[log.log_len() as usize..].iter().all(|b| *b == 0),
            "{tear:?}: the torn bytes are still in the log"
        );
        // A shorter group, acknowledged, where the torn one was.
        let changes = vec![received(5, 1)];
        expected.apply_all(&changes);
        log.commit(&changes, None, 1005)
            .iter()
            .for_each(|op| disk.run(op));
        let again = recover(&disk, limits).unwrap_or_else(|e| panic!("{tear:?}: {e}"));
        assert_eq!(again.torn_tail, None, "{tear:?}");
        assert_eq!(again.store, expected, "{tear:?}");
    }
}

/// A non-zero byte after the last group: within the largest group's reach
/// it may be the first byte of a group in flight (torn, nothing lost);
/// farther, no group could have put it there (corrupt).
#[test]
fn nonzero_byte_beyond_any_group_is_corrupt() {
    let limits = LogLimits {
        min_log: 1 << 20,
        prewrite: 4096,
        max_group: 256,
        ..LogLimits::default()
    };
    let run = run_all(&received_groups(3, 20), limits);
    let disk = disk_of(&run);
    let clean = disk.read(StoreFile::Log).expect("log").to_vec();
    let used = run.used as usize;

    let mut near = clean.clone();
    near[used + 12 + 255] = 0x40;
    let rec = DurableLog::recover(None, Some(&near), limits).expect("torn");
    assert_eq!(
        rec.torn_tail.map(|t| (t.offset, t.bytes)),
        Some((run.used, 12 + 256))
    );
    assert_eq!((rec.store, rec.service_state), run.states[3]);

    let mut far = clean;
    far[used + 12 + 256] = 0x40;
    let err = DurableLog::recover(None, Some(&far), limits).expect_err("corrupt");
    assert_eq!((err.file, err.offset), (StoreFile::Log, run.used));
    assert!(err.what.contains("farther"), "{err}");
}

/// A damaged length in the middle of the log (its checksum fails) with a
/// whole later group after it: a lost group, corrupt, naming the session
/// of the groups after it; never a torn tail that drops acknowledged
/// groups.
#[test]
fn valid_group_after_a_damaged_header_is_corrupt() {
    let limits = LogLimits {
        min_log: 1 << 20,
        ..LogLimits::default()
    };
    let run = run_all(&received_groups(3, 20), limits);
    let disk = disk_of(&run);
    let mut log = disk.read(StoreFile::Log).expect("log").to_vec();
    let second = 24 + 12 + u32::from_le_bytes([log[24], log[25], log[26], log[27]]) as usize;
    for damage in [0, 5] {
        let mut bad = log.clone();
        bad[second + damage] ^= 0x08;
        let err = DurableLog::recover(None, Some(&bad), limits).expect_err("corrupt");
        assert_eq!(err.offset, second as u64, "{err}");
        assert!(err.what.contains("lost"), "{err}");
        assert_eq!(err.sessions, vec![SessionId::new(7, 1)], "{err}");
    }
    // The final group's header damaged the same way: torn, only it dropped.
    let third = second
        + 12
        + u32::from_le_bytes(log[second..second + 4].try_into().expect("4 bytes")) as usize;
    log[third] ^= 0x08;
    let rec = DurableLog::recover(None, Some(&log), limits).expect("torn");
    assert_eq!(rec.torn_tail.map(|t| t.offset), Some(third as u64));
    assert_eq!((rec.store, rec.service_state), run.states[2]);
}

/// A damaged last header followed by many crafted headers (length and
/// number right, body checksum wrong): up to the bound they are the torn
/// remains, one more is corrupt, so the search for a later whole group
/// cannot be made quadratic in the file's size.
#[test]
fn many_crafted_headers_after_a_damaged_one_are_corrupt() {
    let limits = LogLimits {
        min_log: 1 << 20,
        ..LogLimits::default()
    };
    let run = run_all(&received_groups(3, 20), limits);
    let disk = disk_of(&run);
    let clean = disk.read(StoreFile::Log).expect("log").to_vec();
    let len_at = |log: &[u8], at: usize| {
        u32::from_le_bytes(log[at..at + 4].try_into().expect("4 bytes")) as usize
    };
    let second = 24 + 12 + len_at(&clean, 24);
    let third = second + 12 + len_at(&clean, second);
    let end = run.used as usize;
    // A header that passes its length checksum, numbered as the third
    // group (the next expected), whose body checksum fails.
    let crafted = |log: &mut Vec<u8>, at: usize| {
        let len = 21u32;
        log[at..at + 4].copy_from_slice(&len.to_le_bytes());
        log[at + 4..at + 8].copy_from_slice(&crc32c::crc32c(&len.to_le_bytes()).to_le_bytes());
        log[at + 8..at + 12].copy_from_slice(&0u32.to_le_bytes());
        log[at + 12..at + 20].copy_from_slice(&3u64.to_le_bytes());
        log[at + 20] = 0x5a;
    };
    for (count, corrupt) in [(64, false), (65, true)] {
        let mut log = clean.clone();
        log[third] ^= 0x08;
        for i in 0..count {
            crafted(&mut log, end + i * 40);
        }
        let got = DurableLog::recover(None, Some(&log), limits);
        if corrupt {
            let err = got.expect_err("corrupt");
            assert_eq!(err.offset, third as u64, "{err}");
            assert!(err.what.contains("more than 64"), "{err}");
        } else {
            let rec = got.expect("torn");
            assert_eq!(rec.torn_tail.map(|t| t.offset), Some(third as u64));
            assert_eq!((rec.store, rec.service_state), run.states[2]);
        }
    }
}

/// A command received and completed in one group is logged without its
/// request bytes (PROTOCOL.md §12.4), one still pending keeps them, and
/// both read back to the state the changes give.
#[test]
fn request_bytes_finished_in_the_group_are_not_logged() {
    let limits = LogLimits {
        min_log: 1 << 20,
        prewrite: 0,
        ..LogLimits::default()
    };
    let session = SessionId::new(7, 1);
    let groups = vec![(
        vec![
            received(1, 4096),
            StateChange::Completed {
                session,
                command: 1,
                response: 1,
                payload: Bytes::from(vec![9; 4096]),
                status: None,
            },
            received(2, 4096),
        ],
        None,
    )];
    let run = run_all(&groups, limits);
    // Header (24), the group's header and body: one response's and one
    // pending request's 4 KiB, not the answered request's.
    assert!(
        run.used < 24 + 2 * 4096 + 200,
        "{} bytes used: the answered command's request was logged",
        run.used
    );
    assert!(run.used > 24 + 2 * 4096, "{} bytes used", run.used);
    let rec = recover(&disk_of(&run), limits).expect("recovers");
    assert_eq!((rec.store, rec.service_state), run.states[1]);
}
