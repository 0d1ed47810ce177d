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
/// be held (it reports that it was entered and waits for a release). It is
/// replay-safe (its effect lives only in its state) when `early` says so:
/// the target then executes commands before their `Received` is durable.
/// `states` counts the calls of `state`, which the target makes once per
/// group commit.
struct CounterDurability {
    value: Arc<AtomicU64>,
    hold: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    early: bool,
    states: AtomicU64,
}

impl CounterDurability {
    fn new(value: Arc<AtomicU64>, early: bool) -> Self {
        CounterDurability {
            value,
            hold: Mutex::new(None),
            early,
            states: AtomicU64::new(0),
        }
    }
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

    fn replay_safe(&self) -> bool {
        self.early
    }

    fn state(&self) -> Option<Bytes> {
        self.states.fetch_add(1, Ordering::SeqCst);
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

/// The log on a real file is pre-written: its length is ahead of the bytes
/// used, commits leave the length unchanged until the pre-written zeros run
/// out, then one commit extends it by at least the pre-write; the store
/// reopens with every group and nothing torn, in a fresh pre-written log.
#[test]
fn durable_log_file_is_prewritten() {
    use holdfast::proto::store::log::LogLimits;
    use holdfast::proto::{HostId, StateChange};
    let dir = scratch("prewrite");
    let limits = LogLimits {
        prewrite: 4096,
        ..LogLimits::default()
    };
    let mut store = DurableStore::open(&dir, StoreOptions { limits }).expect("open");
    let path = dir.join("session.log");
    let file_len = || std::fs::metadata(&path).expect("log").len();
    let first = file_len();
    assert_eq!(store.stats().log_bytes_on_disk, first);
    assert_eq!(first, store.stats().log_bytes_used + 4096);
    let mut commits = 0u64;
    while store.stats().log_bytes_used <= first {
        let mut host = [1u8; 16];
        host[..8].copy_from_slice(&(commits + 1).to_le_bytes());
        let change = StateChange::HostFenced {
            host: HostId(host),
            epoch: commits,
        };
        store.commit(&[change], None).expect("commit");
        commits += 1;
        let stats = store.stats();
        assert_eq!(file_len(), stats.log_bytes_on_disk, "after {commits}");
        if stats.log_bytes_used <= first {
            assert_eq!(file_len(), first, "a commit in the zeros grew the file");
        }
    }
    let stats = store.stats();
    assert!(commits > 10, "{commits} commits fill 4096 bytes");
    assert!(file_len() >= first + 4096, "extended by the pre-write");
    assert!(file_len() >= stats.log_bytes_used + 4096, "{stats:?}");
    drop(store);
    let again = DurableStore::open(&dir, StoreOptions { limits }).expect("reopen");
    assert_eq!(again.report().groups_replayed, commits);
    assert_eq!(again.report().torn_tail, None);
    assert_eq!(again.store().fenced_hosts().count() as u64, commits);
    assert_eq!(file_len(), first, "a fresh pre-written log");
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
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
    answer_waits_for_the_commit(false).await;
}

/// The same with early execution: the command ran before its group was
/// durable, and still its answer waits for the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_early_answer_waits_for_the_commit() {
    answer_waits_for_the_commit(true).await;
}

async fn answer_waits_for_the_commit(early: bool) {
    support::init_logs();
    let dir = scratch(&format!("wait-{early}"));
    let value = Arc::new(AtomicU64::new(0));
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let durability = CounterDurability::new(value.clone(), early);
    *durability.hold.lock().expect("lock") = Some((entered_tx, release_rx));
    let durability = Arc::new(durability);
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

/// Serves the counter from `dir` on `addr` (retrying the bind while the
/// dropped target's listener is still closing), its value restored from
/// the store.
async fn serve_counter(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    options: TargetOptions,
) -> (Target, Arc<AtomicU64>, holdfast::RecoveryReport) {
    let (target, value, report, _) = serve_counter_in(dir, addr, options, false).await;
    (target, value, report)
}

/// [`serve_counter`], in early mode if `early`; also returns the
/// durability (to count its commits).
async fn serve_counter_in(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    options: TargetOptions,
    early: bool,
) -> (
    Target,
    Arc<AtomicU64>,
    holdfast::RecoveryReport,
    Arc<CounterDurability>,
) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let store = reopen(dir).await;
        let report = store.report().clone();
        let start = store
            .service_state()
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let value = Arc::new(AtomicU64::new(start));
        let durability = Arc::new(CounterDurability::new(value.clone(), early));
        match Target::serve_durable(
            &[Endpoint::Tcp(addr)],
            options.clone(),
            store,
            support::counter(value.clone()),
            durability.clone(),
        )
        .await
        {
            Ok(t) => return (t, value, report, durability),
            Err(StoreError::Io { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("serve: {e}"),
        }
    }
}

/// The in-process equivalent of kill -9 during load: the target task is
/// dropped (no shutdown) mid-load, three times, and served again from the
/// same directory. Every call succeeds exactly once: the counter equals
/// the number of calls and every answer is a distinct value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_crash_restart_every_call_exactly_once() {
    crash_restart_every_call_exactly_once(false).await;
}

/// The same with early execution: commands that ran before a crash lost
/// their `Received` ran again after it, and their first run shows nowhere
/// (the counter's state is rolled back with the lost group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_early_crash_restart_every_call_exactly_once() {
    crash_restart_every_call_exactly_once(true).await;
}

async fn crash_restart_every_call_exactly_once(early: bool) {
    support::init_logs();
    const TASKS: u64 = 8;
    const CALLS: u64 = 40;
    let dir = scratch(&format!("crash-{early}"));
    // A free port, kept across restarts.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let (mut target, mut value, report, _) =
        serve_counter_in(&dir, addr, TargetOptions::default(), early).await;
    assert!(report.created);
    let init = initiator(Endpoint::Tcp(addr));
    let load: Vec<_> = (0..TASKS)
        .map(|_| {
            let init = init.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..CALLS {
                    let r = init.call(Bytes::from_static(b"inc")).await;
                    got.push(r.map(|b| {
                        u64::from_be_bytes(<[u8; 8]>::try_from(b.as_ref()).unwrap_or_default())
                    }));
                }
                got
            })
        })
        .collect();
    let mut restored = Vec::new();
    for crash in 1..=3u64 {
        // Let the load run into this incarnation of the process.
        let goal = crash * TASKS * CALLS / 4;
        let deadline = tokio::time::Instant::now() + BOUND;
        while value.load(Ordering::SeqCst) < goal && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(target);
        let (t, v, report, _) = serve_counter_in(&dir, addr, TargetOptions::default(), early).await;
        assert!(!report.created);
        assert_eq!(report.sessions, 1, "{report:?}");
        restored.push(report);
        target = t;
        value = v;
    }
    let mut answers = Vec::new();
    for task in load {
        let got = tokio::time::timeout(BOUND * 3, task)
            .await
            .expect("the load finishes")
            .expect("task");
        for r in got {
            answers.push(r.expect("every call succeeds across the crashes"));
        }
    }
    answers.sort_unstable();
    let expected: Vec<u64> = (1..=TASKS * CALLS).collect();
    assert_eq!(answers, expected, "each call executed exactly once");
    assert_eq!(value.load(Ordering::SeqCst), TASKS * CALLS);
    let stats = target.stats().await.expect("stats");
    assert!(stats.sessions_restored >= 1, "{stats:?}");
    eprintln!("restores: {restored:?}");
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A command at queue depth 1 costs one group commit in early mode (its
/// `Received` and `Completed` in one group), two in strict mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_early_qd1_command_costs_one_commit() {
    support::init_logs();
    const CALLS: u64 = 40;
    let mut commits = Vec::new();
    for early in [true, false] {
        let dir = scratch(&format!("qd1-{early}"));
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let (target, _value, _, durability) =
            serve_counter_in(&dir, addr, TargetOptions::default(), early).await;
        let init = initiator(Endpoint::Tcp(addr));
        // The login and the first call, not counted.
        init.call(Bytes::from_static(b"inc")).await.expect("call");
        let before = durability.states.load(Ordering::SeqCst);
        for _ in 0..CALLS {
            init.call(Bytes::from_static(b"inc")).await.expect("call");
        }
        commits.push(durability.states.load(Ordering::SeqCst) - before);
        drop(target);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (early, strict) = (commits[0], commits[1]);
    eprintln!("{CALLS} calls at QD 1: {early} commits early, {strict} strict");
    assert!(
        strict >= 2 * CALLS,
        "strict mode commits each command's Received and Completed apart: {strict}"
    );
    // A little slack for groups of acknowledgements alone.
    assert!(
        early <= CALLS + 4,
        "early mode: {early} commits for {CALLS} commands, not one each"
    );
}

/// After the retain time (counted from the last durable commit) the
/// restored session is gone: the recovery is rejected statelessly, as
/// after any restart without a store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_session_past_retain_is_rejected() {
    support::init_logs();
    let dir = scratch("retain");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let mut options = TargetOptions::default();
    options.protocol.retain = Duration::from_millis(800);
    let (target, _value, _) = serve_counter(&dir, addr, options.clone()).await;
    let init = initiator(Endpoint::Tcp(addr));
    init.call(Bytes::from_static(b"inc")).await.expect("call");
    drop(target);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (target, _value, report) = serve_counter(&dir, addr, options).await;
    assert_eq!(report.sessions, 1, "stored, but past its retain time");
    assert!(report.downtime >= Duration::from_millis(800), "{report:?}");
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let stats = target.stats().await.expect("stats");
        if stats.recoveries_rejected >= 1 {
            assert_eq!(stats.recoveries_accepted, 0, "{stats:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery was rejected: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fails every sync: the effect of a completed command cannot be made
/// stable.
struct BrokenDisk;

impl ServiceDurability for BrokenDisk {
    fn sync(&self) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "the backend's fdatasync failed (EIO)",
        ))
    }
}

/// A failed commit stops the target: the completion whose effect could not
/// be made stable is never answered, and the target is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_failed_commit_stops_the_target() {
    support::init_logs();
    let dir = scratch("failed");
    let store = DurableStore::open(&dir, StoreOptions::default()).expect("open");
    let value = Arc::new(AtomicU64::new(0));
    let target = Target::serve_durable(
        &[tcp0()],
        TargetOptions::default(),
        store,
        support::counter(value.clone()),
        Arc::new(BrokenDisk),
    )
    .await
    .expect("serve");
    let init = initiator(target.endpoints()[0].clone());
    let call = tokio::spawn({
        let init = init.clone();
        async move { init.call(Bytes::from_static(b"inc")).await }
    });
    let deadline = tokio::time::Instant::now() + BOUND;
    while target.stats().await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the target kept running after a failed commit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(value.load(Ordering::SeqCst), 1, "the command ran once");
    assert!(
        !call.is_finished() || call.await.expect("task").is_err(),
        "no answer"
    );
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store file damaged in the middle is refused at open, naming the file
/// and the session; nothing is replayed and the files stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_corrupt_store_is_refused_naming_the_session() {
    support::init_logs();
    let dir = scratch("corrupt");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let (target, _value, _) = serve_counter(&dir, addr, TargetOptions::default()).await;
    let init = initiator(Endpoint::Tcp(addr));
    for _ in 0..3 {
        init.call(Bytes::from_static(b"inc")).await.expect("call");
    }
    let session = target.sessions().await.expect("sessions")[0].id;
    drop(target);
    // Served again: the open compacts the log into a checkpoint.
    let (target, _value, _) = serve_counter(&dir, addr, TargetOptions::default()).await;
    init.call(Bytes::from_static(b"inc"))
        .await
        .expect("call after restart");
    drop(target);
    // Not reopened (that would compact the log into a checkpoint): wait for
    // the dropped target's commit thread, if one ran, to finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log_path = dir.join("session.log");
    let log = std::fs::read(&log_path).expect("log");
    let mut ckpt = std::fs::read(dir.join("session.ckpt")).expect("checkpoint");
    ckpt[40] ^= 0x04;
    std::fs::write(dir.join("session.ckpt"), &ckpt).expect("write");
    let err = DurableStore::open(&dir, StoreOptions::default()).expect_err("corrupt");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
    assert!(
        text.contains("session.ckpt") && text.contains("move the directory aside"),
        "{text}"
    );
    // The log's groups after the checkpoint still name the session.
    assert!(text.contains(&session.to_string()), "{text}");
    assert_eq!(
        std::fs::read(&log_path).expect("log"),
        log,
        "files unchanged"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Early mode: a command that stays in the service holds back other
/// sessions' answers only for the short hold bound, not until it ends: a
/// second session's call is answered while the first one's still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_early_slow_command_does_not_hold_other_answers() {
    support::init_logs();
    let dir = scratch("slow");
    let store = DurableStore::open(&dir, StoreOptions::default()).expect("open");
    let service = holdfast::service_fn(|req: holdfast::Request| async move {
        if req.payload.as_ref() == b"slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok::<_, std::convert::Infallible>(req.payload)
    });
    let durability = Arc::new(CounterDurability::new(Arc::new(AtomicU64::new(0)), true));
    let target = Target::serve_durable(
        &[tcp0()],
        TargetOptions::default(),
        store,
        service,
        durability,
    )
    .await
    .expect("serve");
    let slow_init = initiator(target.endpoints()[0].clone());
    let fast_init = initiator(target.endpoints()[0].clone());
    // The fast session logs in first, so its login is not what waits.
    fast_init
        .call(Bytes::from_static(b"hello"))
        .await
        .expect("first call");
    let slow = tokio::spawn(async move { slow_init.call(Bytes::from_static(b"slow")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = tokio::time::timeout(
        Duration::from_millis(1500),
        fast_init.call(Bytes::from_static(b"fast")),
    )
    .await
    .expect("the fast call was held back by the slow command")
    .expect("call");
    assert_eq!(fast.as_ref(), b"fast");
    assert!(!slow.is_finished(), "the slow command already ended");
    let slow = tokio::time::timeout(BOUND, slow)
        .await
        .expect("the slow call ends")
        .expect("task")
        .expect("call");
    assert_eq!(slow.as_ref(), b"slow");
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
}
