//! The durable session store on real sockets and real files
//! (`holdfast::durable`, PROTOCOL.md §12): the state directory's lock, no
//! answer before its group is durable (the service's sync first), and the
//! service state stored with the completions. `cargo test durable` runs
//! them.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holdfast::{
    DurableStore, Endpoint, EndpointConnector, Initiator, InitiatorOptions, ServiceDurability,
    StoreError, StoreOptions, Target, TargetOptions,
};

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

/// The counter's durability: its value is its state; its first `sync` can
/// be held (it reports that it was entered and waits for a release).
struct CounterDurability {
    value: Arc<AtomicU64>,
    hold: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl ServiceDurability for CounterDurability {
    fn sync(&self) -> std::io::Result<()> {
        let hold = self
            .hold
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .take();
        if let Some((entered, release)) = hold {
            let _ = entered.send(());
            release
                .recv_timeout(BOUND)
                .map_err(|_| std::io::Error::other("never released"))?;
        }
        Ok(())
    }

    fn state(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(
            &self.value.load(Ordering::SeqCst).to_be_bytes(),
        ))
    }
}

fn tcp0() -> Endpoint {
    Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))
}

fn initiator(endpoint: Endpoint) -> Initiator {
    Initiator::start(
        Arc::new(EndpointConnector::new(endpoint, Duration::from_millis(500))),
        InitiatorOptions::default(),
    )
}

/// Opens the store, waiting (bounded) while a dropped target's commit
/// thread still holds the lock.
async fn reopen(dir: &std::path::Path) -> DurableStore {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match DurableStore::open(dir, StoreOptions::default()) {
            Err(StoreError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other.expect("the store reopens"),
        }
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("holdfast-durable-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn durable_store_lock_refuses_a_second_store() {
    let dir = scratch("lock");
    let first = DurableStore::open(&dir, StoreOptions::default()).expect("first open");
    assert!(first.report().created);
    let second = DurableStore::open(&dir, StoreOptions::default());
    let err = second.expect_err("a second store on the same directory is refused");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );
    drop(first);
    let again = DurableStore::open(&dir, StoreOptions::default()).expect("free once closed");
    assert!(
        !again.report().created,
        "the store created first is found again"
    );
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The answer to a command leaves only once its group is durable: while
/// the service's sync (the first step of the commit) is held, the call does
/// not complete; released, it does, and the store holds the counter's
/// state with the completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_answer_waits_for_the_commit() {
    support::init_logs();
    let dir = scratch("wait");
    let value = Arc::new(AtomicU64::new(0));
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let durability = Arc::new(CounterDurability {
        value: value.clone(),
        hold: Mutex::new(Some((entered_tx, release_rx))),
    });
    let store = DurableStore::open(&dir, StoreOptions::default()).expect("open");
    let target = Target::serve_durable(
        &[tcp0()],
        TargetOptions::default(),
        store,
        support::counter(value.clone()),
        durability,
    )
    .await
    .expect("serve");
    let init = initiator(target.endpoints()[0].clone());
    let call = tokio::spawn({
        let init = init.clone();
        async move { init.call(Bytes::from_static(b"inc")).await }
    });
    let entered = tokio::task::spawn_blocking(move || entered_rx.recv_timeout(BOUND))
        .await
        .expect("task");
    entered.expect("the commit of the completion syncs the service first");
    assert_eq!(value.load(Ordering::SeqCst), 1, "the command executed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !call.is_finished(),
        "the answer left before its completion was durable"
    );
    release_tx.send(()).expect("release");
    let answer = tokio::time::timeout(BOUND, call)
        .await
        .expect("answered once durable")
        .expect("task")
        .expect("call");
    assert_eq!(answer.as_ref(), 1u64.to_be_bytes());
    drop(target);
    let store = reopen(&dir).await;
    assert_eq!(store.report().sessions, 1, "{:?}", store.report());
    assert_eq!(
        store.service_state().map(|b| b.to_vec()),
        Some(1u64.to_be_bytes().to_vec()),
        "the counter's state is stored with its completion"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
