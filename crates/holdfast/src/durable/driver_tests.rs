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

use super::Driver;
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

#[test]
fn output_waits_for_its_group_and_a_commit_batches_what_arrived_during_it() {
    let dir = std::env::temp_dir().join(format!("holdfast-driver-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = DurableStore::open(&dir, StoreOptions::default()).expect("store");
    let (entered_tx, entered) = channel();
    let (go, go_rx) = channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(entered_tx),
        go: Mutex::new(go_rx),
    });
    let mut driver = Driver::new(Committer::new(store, gate));
    assert!(driver.early());
    let mut done = driver.take_done().expect("the done channel");

    // A is held and handed over: its commit starts and blocks in sync.
    assert!(driver.hold(ready(b'A', true)).is_none());
    assert!(
        driver.flush_if_due().is_empty(),
        "A's bytes wait for A's group"
    );
    entered.recv_timeout(BOUND).expect("A's commit started");

    // B and C arrive during A's commit, each in its own batch, then a
    // changeless output (a PONG): all wait, and B and C share one group.
    for (tag, change) in [(b'B', true), (b'C', true), (b'P', false)] {
        assert!(driver.hold(ready(tag, change)).is_none());
        assert!(
            driver.flush_if_due().is_empty(),
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
    assert_eq!(tags(&driver.flush_if_due()), b"Q");

    drop(driver);
    // The commit thread ended with the driver: the lock is free.
    let store = DurableStore::open(&dir, StoreOptions::default()).expect("reopened at once");
    assert_eq!(store.store().sessions().count(), 0);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
