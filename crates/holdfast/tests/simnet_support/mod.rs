//! Pieces for the turmoil simulations in `simnet.rs`: transport adapters
//! over `turmoil::net`, a recording (non-idempotent) service, the target host,
//! a step loop that crashes and restarts hosts on request, a client-side
//! trace, and seed handling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use holdfast::transport::{AcceptFuture, BoxStream, ConnectFuture};
use holdfast::{
    service_fn, Acceptor, CallError, CallOptions, Connector, Endpoint, Initiator, InitiatorConfig,
    InitiatorOptions, InitiatorStats, Request, SessionLoss, Target, TargetOptions, TargetStats,
};

/// The target's host name.
pub(crate) const TARGET: &str = "target";
/// The client's host name.
pub(crate) const CLIENT: &str = "client";
/// The port the target listens on.
pub(crate) const PORT: u16 = 7400;
/// The initiator's detection bound in every scenario.
pub(crate) const BOUND: Duration = Duration::from_millis(500);

/// Locks a mutex, tolerating poison (a panicking task must not hide the
/// original failure behind a second one).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `RUST_LOG`-filtered logs to the test's captured output.
pub(crate) fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Opens simulated TCP connections to `host:port`.
#[derive(Clone, Debug)]
pub(crate) struct TurmoilConnector {
    host: String,
    port: u16,
}

impl TurmoilConnector {
    pub(crate) fn new(host: &str, port: u16) -> Self {
        TurmoilConnector {
            host: host.to_owned(),
            port,
        }
    }
}

impl Connector for TurmoilConnector {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// Accepts simulated TCP connections from a bound `turmoil::net::TcpListener`.
pub(crate) struct TurmoilAcceptor {
    listener: turmoil::net::TcpListener,
    name: String,
}

impl TurmoilAcceptor {
    /// Binds `0.0.0.0:port` on the current simulated host.
    pub(crate) async fn bind(host: &str, port: u16) -> std::io::Result<Self> {
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
        Ok(TurmoilAcceptor {
            listener,
            name: format!("turmoil://{host}:{port}"),
        })
    }
}

impl Acceptor for TurmoilAcceptor {
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (stream, peer) = self.listener.accept().await?;
            Ok((Box::new(stream) as BoxStream, peer.to_string()))
        })
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Named(self.name.clone())
    }
}

/// What the service executed, in execution order. It outlives target
/// restarts: it stands for the application's durable state, while the
/// session state inside the target is lost.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ledger(Arc<Mutex<Vec<String>>>);

impl Ledger {
    pub(crate) fn entries(&self) -> Vec<String> {
        lock(&self.0).clone()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.0).len()
    }

    fn record(&self, payload: String) -> usize {
        let mut entries = lock(&self.0);
        entries.push(payload);
        entries.len()
    }
}

/// The target's current `Target`, reachable from the client (for stats)
/// while the target host runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct TargetSlot(Arc<Mutex<Weak<Target>>>);

impl TargetSlot {
    pub(crate) async fn stats(&self) -> Option<TargetStats> {
        let target = lock(&self.0).upgrade()?;
        target.stats().await
    }
}

/// Registers the target host: it binds [`PORT`] and serves a counter that
/// records each payload in `ledger` when it starts executing, then answers
/// (after `delay`) with the number of commands executed so far. Like the
/// counter in `tests/support`, it is NOT idempotent. A restarted host starts
/// a fresh `Target` (new incarnation, no sessions) over the same ledger.
pub(crate) fn target_host(
    sim: &mut turmoil::Sim<'_>,
    ledger: &Ledger,
    delay: Duration,
    slot: &TargetSlot,
) {
    let ledger = ledger.clone();
    let slot = slot.clone();
    sim.host(TARGET, move || {
        let ledger = ledger.clone();
        let slot = slot.clone();
        async move {
            let acceptor = TurmoilAcceptor::bind(TARGET, PORT).await?;
            let service = service_fn(move |req: Request| {
                let payload = String::from_utf8_lossy(&req.payload).into_owned();
                let n = ledger.record(payload);
                Box::pin(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, std::convert::Infallible>(Bytes::from(n.to_string()))
                })
                    as std::pin::Pin<
                        Box<
                            dyn std::future::Future<
                                    Output = Result<Bytes, std::convert::Infallible>,
                                > + Send,
                        >,
                    >
            });
            let target = Arc::new(Target::serve_on(
                vec![Box::new(acceptor)],
                TargetOptions::default(),
                service,
            ));
            *lock(&slot.0) = Arc::downgrade(&target);
            std::future::pending::<()>().await;
            drop(target);
            Ok(())
        }
    });
}

/// A turmoil simulation for `seed`: seeded network randomness (latency),
/// 1 ms ticks, and at most `duration` of simulated time.
pub(crate) fn sim<'a>(seed: u64, duration: Duration) -> turmoil::Sim<'a> {
    turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(1))
        .simulation_duration(duration)
        .build()
}

/// Starts an initiator on the client host, its backoff jitter seeded.
pub(crate) fn initiator(seed: u64) -> Initiator {
    let options = {
        let mut o = InitiatorOptions::default();
        o.protocol = InitiatorConfig::default().with_detection_bound(BOUND);
        o.jitter_seed = Some(seed);
        o
    };
    Initiator::start(Arc::new(TurmoilConnector::new(TARGET, PORT)), options)
}

/// Requests from the client to the step loop: host operations (crash,
/// restart) can only be done on the `Sim`, between steps.
#[derive(Clone, Debug, Default)]
pub(crate) struct Control {
    crash: Arc<AtomicBool>,
    bounce: Arc<AtomicBool>,
}

impl Control {
    /// Crash the target host (all its tasks and sockets dropped, nothing
    /// running until a bounce) before the next step.
    pub(crate) fn crash_target(&self) {
        self.crash.store(true, Ordering::SeqCst);
    }

    /// Restart the target host's software before the next step.
    pub(crate) fn bounce_target(&self) {
        self.bounce.store(true, Ordering::SeqCst);
    }
}

/// Steps the simulation until the client finishes, carrying out requested
/// host operations between steps.
pub(crate) fn run(sim: &mut turmoil::Sim<'_>, control: &Control) -> turmoil::Result {
    loop {
        if control.crash.swap(false, Ordering::SeqCst) {
            sim.crash(TARGET);
        }
        if control.bounce.swap(false, Ordering::SeqCst) {
            sim.bounce(TARGET);
        }
        if sim.step()? {
            return Ok(());
        }
    }
}

/// A client-side log of what happened when, in simulated time.
#[derive(Clone, Debug)]
pub(crate) struct Trace {
    start: tokio::time::Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Trace {
    /// Starts the clock (call on the client host).
    pub(crate) fn start() -> Self {
        Trace {
            start: tokio::time::Instant::now(),
            lines: Arc::default(),
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub(crate) fn record(&self, event: impl std::fmt::Display) {
        let line = format!("{:>12?} {event}", self.elapsed());
        lock(&self.lines).push(line);
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }
}

/// One call as the client saw it.
#[derive(Clone, Debug)]
pub(crate) struct CallRecord {
    pub(crate) payload: String,
    pub(crate) retry_safe: bool,
    pub(crate) result: Result<Bytes, CallError>,
}

impl CallRecord {
    pub(crate) fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Issues one call and records it in the trace.
pub(crate) async fn call(
    init: &Initiator,
    trace: &Trace,
    payload: String,
    retry_safe: bool,
) -> CallRecord {
    let result = init
        .call_with(
            Bytes::from(payload.clone()),
            CallOptions::default().with_retry_safe(retry_safe),
        )
        .await;
    match &result {
        Ok(v) => trace.record(format!("{payload} ok {}", String::from_utf8_lossy(v))),
        Err(e) => trace.record(format!(
            "{payload} failed (may have executed: {}): {}",
            e.may_have_executed(),
            redact_session_ids(&e.to_string())
        )),
    }
    CallRecord {
        payload,
        retry_safe,
        result,
    }
}

/// Replaces session ids (`S` and 16 hex digits) with `S<id>`: their high
/// half is the target's incarnation, drawn from the operating system's
/// random generator, so it differs between runs of the same seed (without
/// changing what happens).
pub(crate) fn redact_session_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('S') {
        let (head, tail) = rest.split_at(at);
        out.push_str(head);
        let id = tail
            .get(1..17)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        let boundary = !tail
            .as_bytes()
            .get(17)
            .is_some_and(u8::is_ascii_alphanumeric);
        if id.is_some() && boundary {
            out.push_str("S<id>");
            rest = &tail[17..];
        } else {
            out.push('S');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Everything a scenario observed, for assertions and for comparing runs.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) seed: u64,
    pub(crate) trace: Vec<String>,
    pub(crate) calls: Vec<CallRecord>,
    pub(crate) ledger: Vec<String>,
    /// The order in which calls were submitted, where a scenario tracks it.
    pub(crate) issued: Vec<String>,
    pub(crate) stats: InitiatorStats,
    pub(crate) target_stats: Option<TargetStats>,
    pub(crate) close: Result<(), SessionLoss>,
    /// Scenario-specific observations (stats snapshots and the like).
    pub(crate) notes: Vec<(&'static str, u64)>,
    pub(crate) elapsed: Duration,
}

impl Outcome {
    pub(crate) fn note(&self, name: &str) -> u64 {
        self.notes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("seed {}: no note {name}", self.seed))
    }

    pub(crate) fn successes(&self) -> usize {
        self.calls.iter().filter(|c| c.ok()).count()
    }

    pub(crate) fn failures(&self) -> Vec<&CallRecord> {
        self.calls.iter().filter(|c| !c.ok()).collect()
    }

    /// Everything that must repeat exactly for the same seed.
    pub(crate) fn fingerprint(&self) -> String {
        let mut s = String::new();
        for line in &self.trace {
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&format!("ledger {:?}\n", self.ledger));
        s.push_str(&format!("issued {:?}\n", self.issued));
        s.push_str(&format!("initiator {:?}\n", self.stats));
        s.push_str(&format!("target {:?}\n", self.target_stats));
        s.push_str(&format!("close {:?}\n", self.close));
        s.push_str(&format!("notes {:?}\n", self.notes));
        s.push_str(&format!("elapsed {:?}\n", self.elapsed));
        s
    }

    /// Prints the summary, and the whole trace if `HOLDFAST_TURMOIL_TRACE` is set.
    pub(crate) fn report(&self, scenario: &str) {
        eprintln!("{scenario} {}", self.summary());
        if std::env::var_os("HOLDFAST_TURMOIL_TRACE").is_some() {
            for line in &self.trace {
                eprintln!("  {line}");
            }
        }
    }

    /// A short summary for the test log.
    pub(crate) fn summary(&self) -> String {
        format!(
            "seed {}: {} calls ({} ok) in {:?} simulated; initiator {:?}; target {:?}",
            self.seed,
            self.calls.len(),
            self.successes(),
            self.elapsed,
            self.stats,
            self.target_stats
        )
    }
}

/// A small deterministic generator for fault schedules.
#[derive(Clone, Debug)]
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A duration in `[lo, hi)` milliseconds.
    pub(crate) fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo).max(1))
    }
}

pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seeds to run: `HOLDFAST_TURMOIL_SEED` alone if set (to replay a
/// failure), else `HOLDFAST_TURMOIL_SEEDS` seeds (default `default`)
/// starting from a fixed base.
pub(crate) fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("HOLDFAST_TURMOIL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return vec![seed];
    }
    let n = env_u64("HOLDFAST_TURMOIL_SEEDS", default);
    (0..n).map(|i| 0x5eed_0000 + i).collect()
}

/// Runs `f` for a seed; on failure, says how to replay it.
pub(crate) fn with_seed<R>(test: &str, seed: u64, f: impl FnOnce(u64) -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(seed))) {
        Ok(r) => r,
        Err(panic) => {
            eprintln!(
                "{test}: seed {seed} FAILED; replay with \
                 HOLDFAST_TURMOIL_SEED={seed} cargo test -p holdfast --test simnet {test}"
            );
            std::panic::resume_unwind(panic)
        }
    }
}
