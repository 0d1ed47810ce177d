//! A key-value service and its client on holdfast, under faults: the trial
//! of issue 18, as a program to read and run.
//!
//! ```text
//! cargo run -p holdfast --example kv -- [COMMANDS] [SEED]
//! ```
//!
//! * The **service** keeps a map (`PUT id key value`, `GET id key`,
//!   `DEL id key`) and an audit log of one-way `AUDIT id` messages. Its
//!   backend outlives the target process it runs in, as a database would:
//!   it records every command it applied, in order, so the run can be
//!   checked. It applies each command inside `call` (the ordered part; see
//!   the service guide in the crate docs) and answers at once.
//! * The **target** listens on 127.0.0.1; a **chaos proxy** sits between it
//!   and the client.
//! * The **client** is one [`Initiator`] shared by 16 tasks, each issuing
//!   its share of COMMANDS (default 10,000): 45 % PUT, 35 % GET (retry-safe),
//!   20 % DEL, and a one-way audit message after every tenth command
//!   (pipelined: [`Initiator::send_queued`] queues it at once, in order;
//!   the task awaits its delivery at the end).
//! * **Faults**, at fixed points of progress: connection resets, a
//!   blackhole longer than the detection bound, added delay, a **graceful
//!   restart** of the target (shutdown notice, then a new target on the
//!   same port) and a **crash** (the target stops at once and a new one
//!   comes up). A restarted target holds none of the old sessions: the
//!   client recovers into a new session; calls in flight fail "may have
//!   executed", calls not yet sent fail "not executed" (or, retry-safe,
//!   are re-issued).
//!
//! At the end it checks, against the backend's log, that nothing was lost
//! (every call reported done was applied exactly once, with the answer the
//! client got), duplicated (no command applied twice), misreported (no
//! call reported "not executed" was applied) or reordered (each task's
//! commands were applied in the order it issued them); it prints the
//! verdict and exits non-zero if any check failed. `tests/kv_example.rs`
//! runs it with 2,000 commands.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holdfast::chaos::{Direction, Fault, FaultKind, FaultSpec, Proxy, Scope};
use holdfast::{
    service_fn, CallError, CallOptions, Endpoint, Initiator, Reconnect, Request, Target,
    TargetOptions,
};

/// The client tasks sharing one initiator.
const TASKS: u64 = 16;
/// An audit message goes out after every this many commands of a task.
const AUDIT_EVERY: u64 = 10;
/// The detection bound, both ends.
const DETECTION: Duration = Duration::from_millis(500);
/// A client task's pause between commands.
const THINK: Duration = Duration::from_millis(1);
/// The whole run gives up after this long (it stops by itself).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// What one run does.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Commands over all tasks.
    pub commands: u64,
    /// Seeds the operation mix.
    pub seed: u64,
}

/// The backend: what the service applied, in order. Shared by every
/// incarnation of the target, like a database behind it.
#[derive(Default)]
pub struct Backend {
    map: BTreeMap<String, String>,
    /// Command ids in the order applied.
    pub applied: Vec<u64>,
    /// What the service answered each applied command (each time: a
    /// retry-safe command may run more than once).
    pub answers: HashMap<u64, Vec<String>>,
    /// Audit message ids in the order received.
    pub audits: Vec<u64>,
}

impl Backend {
    /// Applies one request; returns the answer, or an error for a request
    /// the service does not understand (the caller gets `ServiceFailed`).
    fn apply(&mut self, text: &str) -> Result<String, String> {
        let mut words = text.split(' ');
        let (op, id) = (words.next(), words.next().and_then(|w| w.parse().ok()));
        let (Some(op), Some(id)) = (op, id) else {
            return Err(format!("not a command: {text:?}"));
        };
        let key = words.next().unwrap_or_default().to_owned();
        let answer = match op {
            "PUT" => {
                let value = words.next().unwrap_or_default().to_owned();
                self.map.insert(key, value);
                "OK".to_owned()
            }
            "GET" => self.map.get(&key).cloned().unwrap_or_else(|| "NONE".into()),
            "DEL" => match self.map.remove(&key) {
                Some(_) => "DELETED".to_owned(),
                None => "NONE".to_owned(),
            },
            "AUDIT" => {
                self.audits.push(id);
                return Ok(String::new());
            }
            other => return Err(format!("unknown operation {other:?}")),
        };
        self.applied.push(id);
        self.answers.entry(id).or_default().push(answer.clone());
        Ok(answer)
    }
}

/// Serves the key-value service over `backend` on `endpoint`.
async fn serve(endpoint: &Endpoint, backend: Arc<Mutex<Backend>>) -> std::io::Result<Target> {
    // Ordered effects happen in the closure, which the target calls once
    // per command in session order; the future it returns is ready.
    let service = service_fn(move |req: Request| {
        let text = String::from_utf8_lossy(&req.payload).into_owned();
        let answer = backend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply(&text);
        std::future::ready(answer.map(Bytes::from))
    });
    let options = TargetOptions::default().with_detection_bound(DETECTION);
    Target::serve(std::slice::from_ref(endpoint), options, service).await
}

/// How one call ended, as its task saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Answered (with this text).
    Done(String),
    /// Failed, certainly not executed.
    NotExecuted,
    /// Failed, may have executed.
    InDoubt,
}

/// One issued command or audit message and its outcome.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The task that issued it.
    pub task: u64,
    /// Its id.
    pub id: u64,
    /// True for an audit message.
    pub audit: bool,
    /// True if it was issued retry-safe (it may rightly run more than
    /// once: a re-issue after a restart).
    pub retry_safe: bool,
    /// How it ended.
    pub seen: Seen,
}

impl Issued {
    fn of(
        task: u64,
        id: u64,
        audit: bool,
        retry_safe: bool,
        r: &Result<String, CallError>,
    ) -> Issued {
        let seen = match r {
            Ok(text) => Seen::Done(text.clone()),
            Err(e) if e.not_executed() => Seen::NotExecuted,
            Err(_) => Seen::InDoubt,
        };
        Issued {
            task,
            id,
            audit,
            retry_safe,
            seen,
        }
    }
}

/// The result of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Commands issued.
    pub commands: u64,
    /// Answered.
    pub done: u64,
    /// Failed "not executed".
    pub not_executed: u64,
    /// Failed "may have executed".
    pub in_doubt: u64,
    /// Of those in doubt, how many the backend applied.
    pub in_doubt_applied: u64,
    /// Audit messages sent / reported delivered.
    pub audits_sent: u64,
    /// Audit messages reported delivered.
    pub audits_delivered: u64,
    /// Faults injected through the proxy.
    pub faults: u64,
    /// Graceful restarts and crashes of the target.
    pub restarts: u64,
    /// Crashes of the target.
    pub crashes: u64,
    /// Problems found: a reported success not applied once with its
    /// answer, a command or message applied twice, one reported not
    /// executed that was applied, a task's commands applied out of order.
    pub problems: Vec<String>,
}

impl Verdict {
    /// True if nothing was lost, duplicated, misreported or reordered.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks what the tasks saw against what the backend applied.
pub fn verify(issued: &[Issued], backend: &Backend) -> Verdict {
    let mut v = Verdict::default();
    // Where each command was applied (more than once only if retry-safe).
    let mut positions: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, id) in backend.applied.iter().enumerate() {
        positions.entry(*id).or_default().push(i);
    }
    let mut audit_count: HashMap<u64, u32> = HashMap::new();
    for id in &backend.audits {
        *audit_count.entry(*id).or_default() += 1;
    }
    for (id, n) in &audit_count {
        if *n > 1 {
            v.problems
                .push(format!("audit {id} was delivered {n} times"));
        }
    }
    // Per task: where its last applied command ran last.
    let mut last_position: HashMap<u64, usize> = HashMap::new();
    for c in issued {
        if c.audit {
            v.audits_sent += 1;
            let delivered = audit_count.contains_key(&c.id);
            match &c.seen {
                Seen::Done(_) if !delivered => v
                    .problems
                    .push(format!("audit {} reported delivered, never arrived", c.id)),
                Seen::Done(_) => v.audits_delivered += 1,
                Seen::NotExecuted if delivered => v
                    .problems
                    .push(format!("audit {} reported not sent, but arrived", c.id)),
                _ => {}
            }
            continue;
        }
        v.commands += 1;
        let at = positions.get(&c.id).map(Vec::as_slice).unwrap_or_default();
        if at.len() > 1 && !c.retry_safe {
            v.problems
                .push(format!("command {} was applied {} times", c.id, at.len()));
        }
        match (&c.seen, at.is_empty()) {
            (Seen::Done(text), false) => {
                v.done += 1;
                let answers = backend.answers.get(&c.id);
                if !answers.is_some_and(|a| a.contains(text)) {
                    v.problems.push(format!(
                        "command {} answered {text:?}, the service said {answers:?}",
                        c.id
                    ));
                }
            }
            (Seen::Done(_), true) => v
                .problems
                .push(format!("command {} reported done, never applied", c.id)),
            (Seen::NotExecuted, false) => v.problems.push(format!(
                "command {} reported not executed, but it was applied",
                c.id
            )),
            (Seen::NotExecuted, true) => v.not_executed += 1,
            (Seen::InDoubt, applied) => {
                v.in_doubt += 1;
                v.in_doubt_applied += u64::from(!applied);
            }
        }
        // A task issues one command at a time: each of its commands ran
        // (every time) after the previous one's last run.
        if let (Some(first), Some(last)) = (at.first(), at.last()) {
            if let Some(before) = last_position.insert(c.task, *last) {
                if before > *first {
                    v.problems.push(format!(
                        "task {}: command {} applied before an earlier one",
                        c.task, c.id
                    ));
                }
            }
        }
    }
    v
}

/// A small seeded generator for the operation mix.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One client task: its share of the commands, one at a time.
async fn client(
    init: Initiator,
    task: u64,
    count: u64,
    seed: u64,
    progress: Arc<AtomicU64>,
) -> Vec<Issued> {
    let mut mix = Mix(seed ^ (task << 32));
    let mut issued = Vec::new();
    let mut audits = Vec::new();
    for n in 0..count {
        let id = task * 1_000_000 + n * 2;
        let key = format!("k{}", mix.next() % 64);
        let roll = mix.next() % 100;
        let (text, options) = if roll < 45 {
            (format!("PUT {id} {key} v{id}"), CallOptions::default())
        } else if roll < 80 {
            // A read may run twice harmlessly: let a restart re-issue it.
            let safe = CallOptions::RETRY_SAFE;
            (format!("GET {id} {key}"), safe)
        } else {
            (format!("DEL {id} {key}"), CallOptions::default())
        };
        let r = init
            .call_with(Bytes::from(text), options)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        issued.push(Issued::of(task, id, false, options.retry_safe, &r));
        if n % AUDIT_EVERY == AUDIT_EVERY - 1 {
            // One-way and pipelined: queued at once, in order; its delivery
            // is awaited only at the end (dropping the handle would not
            // withdraw it).
            let audit = id + 1;
            match init
                .send_queued(Bytes::from(format!("AUDIT {audit}")))
                .await
            {
                Ok(handle) => audits.push((audit, handle)),
                Err(e) => issued.push(Issued::of(task, audit, true, false, &Err(e))),
            }
        }
        progress.fetch_add(1, Ordering::Relaxed);
        // Think time: a client does something between commands (and the
        // faults below land while commands are in flight, not after).
        tokio::time::sleep(THINK).await;
    }
    for (audit, handle) in audits {
        let r = handle.await.map(|()| String::new());
        issued.push(Issued::of(task, audit, true, false, &r));
    }
    issued
}

/// Waits until `progress` reaches `at` (or the clients finished).
async fn reach(progress: &AtomicU64, at: u64, finished: &AtomicU64) {
    while progress.load(Ordering::Relaxed) < at && finished.load(Ordering::Relaxed) < TASKS {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs the faults at fixed points of progress; returns (faults, restarts,
/// crashes) and the last target.
async fn faults(
    mut target: Target,
    endpoint: Endpoint,
    backend: Arc<Mutex<Backend>>,
    proxy: &Proxy,
    total: u64,
    progress: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
) -> std::io::Result<(u64, u64, u64, Target)> {
    let (mut injected, mut restarts, mut crashes) = (0, 0, 0);
    let at = |pct: u64| total * pct / 100;
    let heal = FaultSpec::new(FaultKind::Heal, Direction::Both, Scope::All);

    reach(&progress, at(10), &finished).await;
    injected += proxy.inject(Fault::Reset) as u64;

    reach(&progress, at(20), &finished).await;
    // A blackhole for good: after the detection bound the connection is
    // declared dead and replaced (the new link through the proxy is
    // clean); the old one stays silent until the target drops it.
    injected += proxy.inject(Fault::Blackhole) as u64;

    reach(&progress, at(35), &finished).await;
    // Graceful restart: a shutdown notice, then a new target on the port.
    target
        .shutdown(
            Duration::from_millis(50),
            Reconnect::After(Duration::from_millis(50)),
        )
        .await;
    target = serve(&endpoint, backend.clone()).await?;
    restarts += 1;

    reach(&progress, at(50), &finished).await;
    injected += proxy.inject(Fault::Delay(Duration::from_millis(5))) as u64;
    reach(&progress, at(58), &finished).await;
    proxy.apply(heal);

    reach(&progress, at(65), &finished).await;
    // Crash: answers stop reaching the client (the commands still land
    // and run), then the target stops at once, without a notice. Calls in
    // flight are in doubt: the check accepts either fate for them.
    let mute = FaultSpec::new(FaultKind::Blackhole, Direction::Down, Scope::All);
    injected += proxy.apply(mute) as u64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    target.stop().await;
    drop(target);
    injected += proxy.inject(Fault::Reset) as u64;
    tokio::time::sleep(Duration::from_millis(100)).await;
    target = serve(&endpoint, backend.clone()).await?;
    restarts += 1;
    crashes += 1;

    reach(&progress, at(80), &finished).await;
    injected += proxy.inject(Fault::Reset) as u64;
    Ok((injected, restarts, crashes, target))
}

/// Runs the trial and checks it.
pub async fn run(config: Config) -> std::io::Result<Verdict> {
    let backend = Arc::new(Mutex::new(Backend::default()));
    let target = serve(
        &"127.0.0.1:0".parse().expect("an endpoint"),
        backend.clone(),
    )
    .await?;
    let endpoint = target.endpoints()[0].clone();
    let Endpoint::Tcp(target_addr) = endpoint else {
        unreachable!("a TCP endpoint was bound");
    };
    let proxy = Proxy::start(target_addr).await?;
    let init = Initiator::builder()
        .detection_bound(DETECTION)
        .session_loss_timeout(Some(Duration::from_secs(30)))
        .connect(Endpoint::Tcp(proxy.addr()));
    // The first login, before the clients start.
    match tokio::time::timeout(Duration::from_secs(10), init.wait_connected()).await {
        Ok(Ok(())) => {}
        Ok(Err(loss)) => return Err(std::io::Error::other(format!("no session: {loss}"))),
        Err(_) => return Err(std::io::Error::other("no session within 10 s")),
    }

    let progress = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let per_task = config.commands.div_ceil(TASKS);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (init, progress, finished) = (init.clone(), progress.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            let issued = client(init, task, per_task, config.seed, progress).await;
            finished.fetch_add(1, Ordering::Relaxed);
            issued
        }));
    }
    let total = per_task * TASKS;
    let work = async {
        let faults = faults(
            target,
            endpoint,
            backend.clone(),
            &proxy,
            total,
            progress,
            finished,
        );
        let (faults, issued) = tokio::join!(faults, futures_join(tasks));
        (faults, issued)
    };
    let Ok((faults, issued)) = tokio::time::timeout(RUN_LIMIT, work).await else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the run did not finish within {RUN_LIMIT:?}"),
        ));
    };
    let (injected, restarts, crashes, target) = faults?;
    let _ = init.close().await;
    target.stop().await;
    let backend = backend
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut verdict = verify(&issued, &backend);
    verdict.faults = injected;
    verdict.restarts = restarts;
    verdict.crashes = crashes;
    Ok(verdict)
}

/// Awaits every task, in order, and concatenates what they saw.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Vec<Issued>>>) -> Vec<Issued> {
    let mut all = Vec::new();
    for t in tasks {
        match t.await {
            Ok(issued) => all.extend(issued),
            Err(e) => panic!("a client task failed: {e}"),
        }
    }
    all
}

/// `cargo run --example kv -- [COMMANDS] [SEED]`.
#[allow(dead_code)]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    // RUST_LOG=holdfast=info shows the recoveries as they happen.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let arg = |n: usize, default: u64| {
        std::env::args()
            .nth(n)
            .map(|a| {
                a.parse()
                    .unwrap_or_else(|_| panic!("argument {n} must be a number: {a}"))
            })
            .unwrap_or(default)
    };
    let config = Config {
        commands: arg(1, 10_000),
        seed: arg(2, 1),
    };
    let v = match run(config).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("kv: the run failed: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "{} commands: {} done, {} not executed, {} in doubt ({} of them applied); \
         {} of {} audit messages delivered; {} faults, {} restarts ({} crash)",
        v.commands,
        v.done,
        v.not_executed,
        v.in_doubt,
        v.in_doubt_applied,
        v.audits_delivered,
        v.audits_sent,
        v.faults,
        v.restarts,
        v.crashes
    );
    for p in &v.problems {
        println!("PROBLEM: {p}");
    }
    if v.passed() {
        println!("verdict: nothing lost, duplicated, misreported or reordered");
        std::process::ExitCode::SUCCESS
    } else {
        println!("verdict: FAILED ({} problems)", v.problems.len());
        std::process::ExitCode::FAILURE
    }
}
