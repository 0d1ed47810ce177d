//! Deterministic tests of the early-mode driver over a real store, with a
//! service whose `sync` (run on the commit thread before each group that
//! records a completion) blocks until the test lets it go: so the test
//! decides when each commit finishes.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::target::Transmit;
use holdfast_proto::{ConnId, Ready, SessionId, StateChange};

use super::{Driver, INLINE_AFTER};
use crate::durable::commit::Committer;
use crate::durable::{DurableStore, StoreOptions};
use crate::ServiceDurability;

/// How long the test waits for the commit thread before it fails.
const BOUND: Duration = Duration::from_secs(10);

/// A replay-safe service whose sync reports that a commit started and
/// waits for the test's go.
struct Gate {
    entered: Mutex<Sender<()>>,
    go: Mutex<Receiver<()>>,
}

impl ServiceDurability for Gate {
    fn sync(&self) -> std::io::Result<()> {
        let _ = self.entered.lock().map(|tx| tx.send(()));
        let go = self.go.lock().expect("go");
        go.recv_timeout(BOUND)
            .map_err(|_| std::io::Error::other("the test never let the commit go"))
    }

    fn replay_safe(&self) -> bool {
        true
    }
}

/// An executed `Ready` with one change (a completion, so its group syncs)
/// and bytes marked `tag` for connection 1.
fn ready(tag: u8, with_change: bool) -> Ready {
    let mut r = Ready::default();
    if with_change {
        r.changes.push(StateChange::Completed {
            session: SessionId(7),
            command: u64::from(tag),
            response: u64::from(tag),
            payload: Bytes::from(vec![tag; 16]),
            status: None,
        });
    }
    r.transmits.push(Transmit {
        conn: ConnId(1),
        chunks: vec![Bytes::from(vec![tag])],
    });
    r
}

/// The tags of the bytes a released batch of output holds, in order.
fn tags(out: &[Ready]) -> Vec<u8> {
    out.iter()
        .flat_map(|r| r.transmits.iter().flat_map(|t| t.chunks.iter()))
        .map(|c| c[0])
        .collect()
}

/// A fresh store in a scratch directory named after `name` and this
/// process (the directory is returned to remove at the end).
fn fresh_store(name: &str) -> (std::path::PathBuf, DurableStore) {
    let dir = std::env::temp_dir().join(format!("holdfast-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = DurableStore::open(&dir, StoreOptions::default()).expect("store");
    (dir, store)
}

/// A [`Gate`], the receiver told when a commit enters its sync, and the
/// sender that lets one go.
fn gate() -> (Arc<Gate>, Receiver<()>, Sender<()>) {
    let (entered_tx, entered) = channel();
    let (go, go_rx) = channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(entered_tx),
        go: Mutex::new(go_rx),
    });
    (gate, entered, go)
}

#[test]
fn output_waits_for_its_group_and_a_commit_batches_what_arrived_during_it() {
    let (dir, store) = fresh_store("driver");
    let (gate, entered, go) = gate();
    let mut driver = Driver::new(Committer::new(store, gate));
    assert!(driver.early());
    let mut done = driver.take_done().expect("the done channel");

    // A is held and handed over: its commit starts and blocks in sync.
    assert!(driver.hold(ready(b'A', true)).is_none());
    assert!(
        driver
            .flush_if_due()
            .expect("no inline commit here")
            .is_empty(),
        "A's bytes wait for A's group"
    );
    entered.recv_timeout(BOUND).expect("A's commit started");

    // B and C arrive during A's commit, each in its own batch, then a
    // changeless output (a PONG): all wait, and B and C share one group.
    for (tag, change) in [(b'B', true), (b'C', true), (b'P', false)] {
        assert!(driver.hold(ready(tag, change)).is_none());
        assert!(
            driver
                .flush_if_due()
                .expect("no inline commit here")
                .is_empty(),
            "{} left before the groups before it were durable",
            tag as char
        );
    }
    assert_eq!(
        driver.committing.len(),
        2,
        "A's group, then one for B and C"
    );
    assert!(done.try_recv().is_err(), "nothing is durable yet");

    // A is durable: only A's bytes leave.
    go.send(()).expect("go");
    let a = driver.committed(done.blocking_recv()).expect("A commits");
    assert_eq!(tags(&a), b"A");
    // The commit thread took B and C's group at once, as one.
    entered
        .recv_timeout(BOUND)
        .expect("B and C's commit started");
    assert!(done.try_recv().is_err(), "B and C are not durable yet");
    go.send(()).expect("go");
    let bc = driver.committed(done.blocking_recv()).expect("B, C commit");
    assert_eq!(tags(&bc), b"BCP", "B, C, then the PONG, in order");
    assert!(!driver.busy());
    assert!(
        entered.recv_timeout(Duration::from_millis(50)).is_err(),
        "two commits in all"
    );

    // Nothing outstanding: a changeless output leaves at once.
    assert!(driver.hold(ready(b'Q', false)).is_none());
    assert_eq!(
        tags(&driver.flush_if_due().expect("no inline commit here")),
        b"Q"
    );

    drop(driver);
    // The commit thread ended with the driver: the lock is free.
    let store = DurableStore::open(&dir, StoreOptions::default()).expect("reopened at once");
    assert_eq!(store.store().sessions().count(), 0);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replay-safe service with nothing to sync, whose sync fails once
/// `fail` is set.
#[derive(Default)]
struct Plain {
    fail: std::sync::atomic::AtomicBool,
}

impl ServiceDurability for Plain {
    fn sync(&self) -> std::io::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("the backend is gone"));
        }
        Ok(())
    }

    fn replay_safe(&self) -> bool {
        true
    }
}

/// An executed `Ready` that received and completed `commands` commands
/// (sequence numbers from `first`), with one byte marked `tag`.
fn commands(first: u64, commands: u64, tag: u8) -> Ready {
    let mut r = ready(tag, false);
    for seq in first..first + commands {
        r.changes.push(StateChange::Received {
            session: SessionId(7),
            seq,
            command: true,
            payload: Bytes::from_static(b"req"),
        });
        r.changes.push(StateChange::Completed {
            session: SessionId(7),
            command: seq,
            response: seq,
            payload: Bytes::from_static(b"resp"),
            status: None,
        });
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_one_at_a_time_commit_inline_and_a_burst_goes_to_the_commit_thread() {
    let (dir, store) = fresh_store("inline");
    let service = Arc::new(Plain::default());
    let task_dir = dir.clone();
    // On a runtime worker, as the engine runs.
    tokio::spawn(async move {
        let mut driver = Driver::new(Committer::new(store, service.clone()));
        assert!(driver.committer.can_inline());
        let mut done = driver.take_done().expect("the done channel");
        let mut seq = 1;
        // Single commands: the first INLINE_AFTER go through the commit
        // thread (their output waits for the thread's report).
        for i in 0..INLINE_AFTER {
            assert!(driver.hold(commands(seq, 1, b'a')).is_none());
            seq += 1;
            let out = driver.flush_if_due().expect("commit");
            assert!(out.is_empty(), "group {i} waits for the commit thread");
            let out = driver.committed(done.recv().await).expect("committed");
            assert_eq!(tags(&out), b"a");
        }
        // Then one at a time: committed inline, the output back at once and
        // nothing reported by the thread.
        for _ in 0..3 {
            assert!(driver.hold(commands(seq, 1, b'i')).is_none());
            seq += 1;
            let out = driver.flush_if_due().expect("inline commit");
            assert_eq!(tags(&out), b"i", "committed inline, released at once");
            assert!(!driver.busy());
            assert!(done.try_recv().is_err(), "the thread committed nothing");
        }
        // A burst of commands in one group: to the commit thread, and the
        // next single command too (the streak starts over).
        assert!(driver.hold(commands(seq, 8, b'b')).is_none());
        seq += 8;
        assert!(driver.flush_if_due().expect("commit").is_empty());
        let out = driver.committed(done.recv().await).expect("committed");
        assert_eq!(tags(&out), b"b");
        assert!(driver.hold(commands(seq, 1, b'c')).is_none());
        seq += 1;
        assert!(driver.flush_if_due().expect("commit").is_empty());
        assert_eq!(
            tags(&driver.committed(done.recv().await).expect("ok")),
            b"c"
        );
        // Back to one at a time, then the service's sync fails inline: the
        // reason to stop comes back and nothing of the group is released.
        for _ in 1..INLINE_AFTER {
            assert!(driver.hold(commands(seq, 1, b'd')).is_none());
            seq += 1;
            assert!(driver.flush_if_due().expect("commit").is_empty());
            driver.committed(done.recv().await).expect("committed");
        }
        service
            .fail
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(driver.hold(commands(seq, 1, b'x')).is_none());
        let error = driver.flush_if_due().expect_err("the inline commit failed");
        assert!(error.contains("the backend is gone"), "{error}");
        assert!(done.try_recv().is_err(), "inline: the thread saw nothing");
        drop(driver);
        // Every group before the failed one is in the log, inline or not:
        // INLINE_AFTER, 3 inline, the burst, c, then INLINE_AFTER - 1.
        let store = DurableStore::open(&task_dir, StoreOptions::default()).expect("reopen");
        let groups = u64::from(INLINE_AFTER) + 3 + 1 + 1 + u64::from(INLINE_AFTER - 1);
        assert_eq!(store.report().groups_replayed, groups);
    })
    .await
    .expect("the driver task");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A service that is not replay-safe (strict mode), with nothing to sync.
struct Strict;

impl ServiceDurability for Strict {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_commits_inline_one_at_a_time_and_hands_the_ready_back_with_its_changes() {
    let (dir, store) = fresh_store("strict");
    tokio::spawn(async move {
        let mut driver = Driver::new(Committer::new(store, Arc::new(Strict)));
        assert!(!driver.early());
        let mut done = driver.take_done().expect("the done channel");
        for seq in 1..=u64::from(INLINE_AFTER) {
            let back = driver.commit_ready(commands(seq, 1, b's')).expect("commit");
            assert!(back.is_none(), "command {seq} waits for the commit thread");
            assert!(driver.busy());
            let out = driver.committed(done.recv().await).expect("committed");
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].changes.len(), 2, "its changes come back with it");
        }
        let seq = u64::from(INLINE_AFTER) + 1;
        let ready = driver
            .commit_ready(commands(seq, 1, b'i'))
            .expect("inline commit")
            .expect("committed inline: the Ready comes back at once");
        assert_eq!(tags(std::slice::from_ref(&ready)), b"i");
        assert_eq!(ready.changes.len(), 2, "with its changes, to finish");
        assert!(!driver.busy());
        assert!(done.try_recv().is_err(), "the thread committed nothing");
    })
    .await
    .expect("the driver task");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_commit_that_hangs_does_not_hang_the_drop_and_keeps_the_store_locked() {
    let (dir, store) = fresh_store("hang");
    let (gate, entered, go) = gate();
    let mut committer = Committer::new(store, gate);
    committer.set_stop_bound(Duration::from_millis(100));
    let mut driver = Driver::new(committer);
    assert!(driver.hold(ready(b'A', true)).is_none());
    assert!(driver.flush_if_due().expect("handed over").is_empty());
    entered
        .recv_timeout(BOUND)
        .expect("A's commit started and hangs");

    let started = std::time::Instant::now();
    drop(driver);
    assert!(
        started.elapsed() < BOUND / 2,
        "the drop waited for the hung commit ({:?})",
        started.elapsed()
    );
    // The thread left behind still holds the store.
    assert!(matches!(
        DurableStore::open(&dir, StoreOptions::default()),
        Err(crate::durable::StoreError::Locked { .. })
    ));
    // Once its commit finishes, it ends and lets the store go.
    go.send(()).expect("go");
    let reopened = (0..200).find_map(|_| {
        std::thread::sleep(Duration::from_millis(25));
        DurableStore::open(&dir, StoreOptions::default()).ok()
    });
    assert!(reopened.is_some(), "the store stayed locked");
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}
