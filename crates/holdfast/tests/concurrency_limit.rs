//! One busy service does not stall every session: readiness is per session
//! and off the target engine's path (`crate::lanes`). Real sockets on
//! 127.0.0.1, with tower's `ConcurrencyLimit` and `RateLimit` layers.
//!
//! * a limit per session (a fresh layer per session's clone): a session
//!   whose limit is exhausted holds only its own commands; another
//!   session's call completes while the first stays saturated;
//! * one `ConcurrencyLimit` shared by every session: the target keeps
//!   answering, and sessions queue for the limit fairly (a later session's
//!   call goes ahead of the earlier session's backlog);
//! * a `poll_ready` error fails the command as not executed instead of
//!   calling the service anyway.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use holdfast::{
    CallError, Endpoint, EndpointConnector, Initiator, InitiatorOptions, Request, SessionService,
    Target, TargetOptions,
};
use tokio::sync::Semaphore;
use tower::limit::{ConcurrencyLimit, RateLimit};

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

/// "hold" waits for a permit of `gate` (the test releases them); anything
/// else answers at once. Every call is logged, in the order the service
/// was called.
#[derive(Clone)]
struct Gated {
    gate: Arc<Semaphore>,
    log: Arc<Mutex<Vec<String>>>,
    /// The sequence numbers of the calls, in the same order.
    seqs: Arc<Mutex<Vec<u64>>>,
    /// Set: `poll_ready` fails.
    broken: Arc<AtomicBool>,
}

impl Gated {
    fn new() -> Self {
        Gated {
            gate: Arc::new(Semaphore::new(0)),
            log: Arc::default(),
            seqs: Arc::default(),
            broken: Arc::default(),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl tower::Service<Request> for Gated {
    type Response = Bytes;
    type Error = String;
    type Future = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        if self.broken.load(Ordering::SeqCst) {
            return Poll::Ready(Err("the backend is gone".to_owned()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let payload = String::from_utf8_lossy(&req.payload).into_owned();
        self.log.lock().expect("log").push(payload.clone());
        self.seqs.lock().expect("seqs").push(req.seq);
        let gate = self.gate.clone();
        Box::pin(async move {
            if payload.starts_with("hold") {
                gate.acquire().await.map_err(|e| e.to_string())?.forget();
            }
            Ok(Bytes::from(payload))
        })
    }
}

/// A fresh layer around `inner` for every clone, so every session (the
/// target clones the service per session) has a limit of its own.
struct PerSession<S> {
    make: Arc<dyn Fn() -> S + Send + Sync>,
    service: S,
}

impl<S> PerSession<S> {
    fn new(make: impl Fn() -> S + Send + Sync + 'static) -> Self {
        let service = make();
        PerSession {
            make: Arc::new(make),
            service,
        }
    }
}

impl<S> Clone for PerSession<S> {
    fn clone(&self) -> Self {
        PerSession {
            make: self.make.clone(),
            service: (self.make)(),
        }
    }
}

impl<S: tower::Service<Request>> tower::Service<Request> for PerSession<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> S::Future {
        self.service.call(req)
    }
}

async fn serve<S: SessionService>(service: S) -> (Target, SocketAddr) {
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        TargetOptions::default(),
        service,
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    (target, addr)
}

fn initiator(addr: SocketAddr) -> Initiator {
    Initiator::start(
        Arc::new(EndpointConnector::new(
            Endpoint::Tcp(addr),
            Duration::from_secs(2),
        )),
        InitiatorOptions::default(),
    )
}

/// Starts `n` calls of `payload` on `init` in the background.
fn spawn_calls(
    init: &Initiator,
    payload: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<Bytes, CallError>>> {
    (0..n)
        .map(|i| {
            let init = init.clone();
            let payload = Bytes::from(format!("{payload}-{i}"));
            tokio::spawn(async move { init.call(payload).await })
        })
        .collect()
}

/// Waits (bounded) until the target has delivered `n` commands; panics
/// if it stops answering.
async fn delivered(target: &Target, n: u64) {
    tokio::time::timeout(BOUND, async {
        loop {
            let stats = target.stats().await.expect("stats");
            if stats.commands >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the target delivered the commands and kept answering");
}

async fn call(init: &Initiator, payload: &str) -> Result<Bytes, CallError> {
    tokio::time::timeout(BOUND, init.call(Bytes::from(payload.to_owned())))
        .await
        .expect("the call finished in time: another session's saturated service stalled it")
}

/// Session A saturates its own limit (2 commands held in the service, 4
/// waiting for readiness); session B's call completes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_per_session_holds_only_that_session() {
    support::init_logs();
    let gated = Gated::new();
    let inner = gated.clone();
    let (target, addr) = serve(PerSession::new(move || {
        ConcurrencyLimit::new(inner.clone(), 2)
    }))
    .await;
    let a = initiator(addr);
    let held = spawn_calls(&a, "hold", 6);
    delivered(&target, 6).await;
    assert_eq!(gated.log().len(), 2, "A's limit of 2 is saturated");

    let b = initiator(addr);
    let answer = call(&b, "b").await.expect("B's call");
    assert_eq!(&answer[..], b"b");
    assert_eq!(gated.log().len(), 3, "A's other commands still wait");

    gated.gate.add_permits(6);
    for h in held {
        h.await.expect("join").expect("A's call");
    }
    // The six calls were submitted by six tasks in any order; session
    // order is their sequence numbers, which the service must see rising.
    let log = gated.log();
    let seqs = gated.seqs.lock().expect("seqs").clone();
    let a_seqs: Vec<u64> = log
        .iter()
        .zip(&seqs)
        .filter(|(p, _)| p.starts_with("hold"))
        .map(|(_, &seq)| seq)
        .collect();
    assert_eq!(a_seqs.len(), 6, "{log:?}");
    assert!(
        a_seqs.windows(2).all(|w| w[0] < w[1]),
        "A's calls in session order: {log:?} with sequence numbers {seqs:?}"
    );
    a.close().await.expect("A closes");
    b.close().await.expect("B closes");
}

/// The same with `RateLimit` (not `Clone` itself, so one per session):
/// A's second command waits an hour for its rate; B's call completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_rate_limit_per_session_holds_only_that_session() {
    support::init_logs();
    let gated = Gated::new();
    let inner = gated.clone();
    let (target, addr) = serve(PerSession::new(move || {
        RateLimit::new(
            inner.clone(),
            tower::limit::rate::Rate::new(1, Duration::from_secs(3600)),
        )
    }))
    .await;
    let a = initiator(addr);
    let first = call(&a, "a-first").await.expect("A's first call");
    assert_eq!(&first[..], b"a-first");
    let waiting = spawn_calls(&a, "a-later", 2);
    delivered(&target, 3).await;

    let b = initiator(addr);
    let answer = call(&b, "b").await.expect("B's call");
    assert_eq!(&answer[..], b"b");
    assert_eq!(
        gated.log(),
        ["a-first", "b"],
        "A's later calls wait for its rate"
    );
    for h in waiting {
        h.abort();
    }
}

/// One limit shared by every session: A holds it and has a backlog; the
/// target keeps answering, and B's call goes ahead of A's backlog (it
/// queues for the limit behind A's next command only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_shared_queues_sessions_fairly() {
    support::init_logs();
    let gated = Gated::new();
    let (target, addr) = serve(ConcurrencyLimit::new(gated.clone(), 1)).await;
    let a = initiator(addr);
    let held = spawn_calls(&a, "hold", 6);
    delivered(&target, 6).await;
    let b = initiator(addr);
    let b_call = tokio::spawn({
        let b = b.clone();
        async move { b.call(Bytes::from_static(b"b")).await }
    });
    delivered(&target, 7).await;

    // Release A's commands one at a time until B's has run.
    let mut released = 0;
    while !gated.log().iter().any(|p| p == "b") {
        assert!(released < 6, "B's call never ran: {:?}", gated.log());
        let before = gated.log().len();
        gated.gate.add_permits(1);
        released += 1;
        tokio::time::timeout(BOUND, async {
            while gated.log().len() == before {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the next command ran");
    }
    let log = gated.log();
    let position = log.iter().position(|p| p == "b").expect("b ran");
    assert!(
        position <= 2,
        "B's call ran ahead of A's backlog (at most behind A's first two): {log:?}"
    );
    let answer = tokio::time::timeout(BOUND, b_call)
        .await
        .expect("B's call completes")
        .expect("join")
        .expect("B's call");
    assert_eq!(&answer[..], b"b");
    gated.gate.add_permits(6);
    for h in held {
        h.await.expect("join").expect("A's call");
    }
    a.close().await.expect("A closes");
    b.close().await.expect("B closes");
}

/// A `poll_ready` error: the command fails as not executed, and the service
/// is never called with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_not_ready_error_fails_the_command_unexecuted() {
    support::init_logs();
    let gated = Gated::new();
    let (_target, addr) = serve(gated.clone()).await;
    let init = initiator(addr);
    call(&init, "before").await.expect("a working service");
    gated.broken.store(true, Ordering::SeqCst);
    match call(&init, "during").await {
        Err(e @ CallError::NotStarted { .. }) => {
            assert!(!e.may_have_executed(), "{e}");
            assert!(e.to_string().contains("the backend is gone"), "{e}");
        }
        other => panic!("expected NotStarted, got {other:?}"),
    }
    assert_eq!(gated.log(), ["before"], "the service never saw it");
    gated.broken.store(false, Ordering::SeqCst);
    call(&init, "after").await.expect("the session goes on");
    init.close().await.expect("closes");
}
