//! Per-call deadlines over real sockets (`CallOptions::deadline`,
//! `InitiatorOptions::call_deadline`): a call whose deadline passes fails
//! with an error that says whether it may have executed, and a call
//! reported as not executed never executes later.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holdfast::chaos::{Fault, Proxy};
use holdfast::{
    service_fn, CallError, CallOptions, Endpoint, EndpointConnector, Initiator, InitiatorConfig,
    InitiatorOptions, Request, Target, TargetOptions,
};
use tokio::sync::Semaphore;

/// Fails the test if `f` takes longer than 10 s.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("finished within 10 s")
}

/// What the service has executed, in order.
type Log = Arc<Mutex<Vec<Bytes>>>;

fn executed(log: &Log) -> Vec<Bytes> {
    log.lock().expect("log").clone()
}

/// Waits (at most 10 s) until the service has executed `n` commands.
async fn until_executed(log: &Log, n: usize) {
    within(async {
        while executed(log).len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A target on `addr` whose service logs each command when it finishes;
/// `slow` takes 300 ms, and `hold*` waits for a permit from `gate`.
async fn target_on(addr: SocketAddr, log: Log, gate: Arc<Semaphore>) -> Target {
    Target::serve(
        &[Endpoint::Tcp(addr)],
        TargetOptions::default(),
        service_fn(move |r: Request| {
            let (log, gate) = (log.clone(), gate.clone());
            async move {
                if r.payload.as_ref() == b"slow" {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                if r.payload.starts_with(b"hold") {
                    gate.acquire().await.expect("gate open").forget();
                }
                log.lock().expect("log").push(r.payload.clone());
                Ok::<_, std::convert::Infallible>(r.payload)
            }
        }),
    )
    .await
    .expect("serve")
}

/// Commands the target's service is running (the held ones).
async fn gate_waiters(target: &Target) -> usize {
    target
        .sessions()
        .await
        .unwrap_or_default()
        .iter()
        .map(|s| s.info.running)
        .sum()
}

fn tcp_addr(target: &Target) -> SocketAddr {
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    addr
}

fn initiator(addr: SocketAddr, protocol: InitiatorConfig) -> Initiator {
    let bound = Duration::from_millis(200);
    Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(addr), bound)),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = protocol.with_detection_bound(bound);
            o
        },
    )
}

fn deadline(ms: u64) -> CallOptions {
    CallOptions::default().with_deadline(Duration::from_millis(ms))
}

fn expect_deadline(r: Result<Bytes, CallError>, may_have_executed: bool, settled: bool) {
    match r {
        Err(
            e @ CallError::DeadlineExceeded {
                may_have_executed: m,
                settled: s,
            },
        ) => {
            assert_eq!(
                (m, s),
                (may_have_executed, settled),
                "may have executed, settled: {e}"
            );
            assert_eq!(e.may_have_executed(), may_have_executed);
            assert_eq!(e.is_settled(), settled);
        }
        other => panic!("expected the deadline to pass, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_on_a_slow_service_may_have_executed_and_does_execute() {
    support::init_logs();
    let log = Log::default();
    let target = target_on(
        "127.0.0.1:0".parse().expect("addr"),
        log.clone(),
        Arc::new(Semaphore::new(0)),
    )
    .await;
    let init = initiator(tcp_addr(&target), InitiatorConfig::default());
    init.wait_connected().await.expect("connected");
    let started = tokio::time::Instant::now();
    let r = within(init.call_with(Bytes::from_static(b"slow"), deadline(50))).await;
    let waited = started.elapsed();
    expect_deadline(r, true, false);
    assert!(
        waited < Duration::from_millis(250),
        "the caller is told at its deadline, not at the outcome ({waited:?})"
    );
    // It was sent, so it runs (once), though nobody waits for it.
    until_executed(&log, 1).await;
    let next = within(init.call(Bytes::from_static(b"next")))
        .await
        .expect("next");
    assert_eq!(next, "next");
    assert_eq!(executed(&log), vec!["slow", "next"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_behind_exhausted_credits_is_not_executed_and_never_executes() {
    support::init_logs();
    let log = Log::default();
    let gate = Arc::new(Semaphore::new(0));
    let target = target_on(
        "127.0.0.1:0".parse().expect("addr"),
        log.clone(),
        gate.clone(),
    )
    .await;
    // Two credits: the two held commands take them both.
    let init = initiator(tcp_addr(&target), {
        let mut ic = InitiatorConfig::default();
        ic.credits = 2;
        ic
    });
    let held: Vec<_> = ["hold1", "hold2"]
        .into_iter()
        .map(|p| {
            let init = init.clone();
            tokio::spawn(async move { init.call(Bytes::from_static(p.as_bytes())).await })
        })
        .collect();
    // Both reach the service, which holds them.
    within(async {
        while gate_waiters(&target).await < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Behind them a call without a deadline waits in the driver for credit
    // (with the window full the driver takes no more requests), and the
    // late ones wait in the request queue, or for room in it. Should a late
    // one reach the driver first, it waits for credit instead: either way
    // none of them may run.
    let hold3 = {
        let init = init.clone();
        tokio::spawn(async move { init.call(Bytes::from_static(b"hold3")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late: Vec<_> = (0..5)
        .map(|i| {
            let init = init.clone();
            tokio::spawn(async move {
                init.call_with(Bytes::from(format!("late{i}")), deadline(100))
                    .await
            })
        })
        .collect();
    for l in late {
        expect_deadline(within(l).await.expect("task"), false, true);
    }
    gate.add_permits(3);
    for h in held.into_iter().chain([hold3]) {
        within(h).await.expect("task").expect("held call");
    }
    let after = within(init.call(Bytes::from_static(b"after")))
        .await
        .expect("after");
    assert_eq!(after, "after");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut got = executed(&log);
    got.sort();
    assert_eq!(
        got,
        vec!["after", "hold1", "hold2", "hold3"],
        "no late call may run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_in_a_blackhole_may_have_executed_and_recovery_settles_it() {
    support::init_logs();
    let log = Log::default();
    let target = target_on(
        "127.0.0.1:0".parse().expect("addr"),
        log.clone(),
        Arc::new(Semaphore::new(0)),
    )
    .await;
    let proxy = Proxy::start(tcp_addr(&target)).await.expect("proxy");
    let init = initiator(proxy.addr(), InitiatorConfig::default());
    within(init.call(Bytes::from_static(b"A")))
        .await
        .expect("A");
    proxy.inject(Fault::Blackhole);
    // Sent into the blackhole: the initiator cannot know it did not land.
    let b = within(init.call_with(Bytes::from_static(b"B"), deadline(100))).await;
    expect_deadline(b, true, false);
    // The path returns on a new connection; B is never re-issued.
    let c = within(init.call(Bytes::from_static(b"C")))
        .await
        .expect("C");
    assert_eq!(c, "C");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(executed(&log), vec!["A", "C"], "B must never land");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_without_a_connection_is_not_executed_and_never_executes() {
    support::init_logs();
    // A free port, with nothing listening yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let log = Log::default();
    let init = Initiator::start(
        Arc::new(EndpointConnector::new(
            Endpoint::Tcp(addr),
            Duration::from_millis(200),
        )),
        {
            let mut o = InitiatorOptions::default();
            o.protocol =
                InitiatorConfig::default().with_detection_bound(Duration::from_millis(200));
            o.backoff_max = Duration::from_millis(100);
            // The session default applies to calls without a deadline.
            o.call_deadline = Some(Duration::from_millis(150));
            o
        },
    );
    let lost = within(init.call(Bytes::from_static(b"lost"))).await;
    expect_deadline(lost, false, true);
    let sent = within(init.send(Bytes::from_static(b"lost-message"))).await;
    assert!(
        matches!(
            sent,
            Err(CallError::DeadlineExceeded {
                may_have_executed: false,
                settled: true
            })
        ),
        "{sent:?}"
    );
    // The target comes up; the withdrawn call and message never run.
    let _target = target_on(addr, log.clone(), Arc::new(Semaphore::new(0))).await;
    init.wait_connected().await.expect("connected");
    let after = within(init.call_with(
        Bytes::from_static(b"after"),
        CallOptions::default().with_deadline(Duration::from_secs(5)),
    ))
    .await
    .expect("after");
    assert_eq!(after, "after");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(executed(&log), vec!["after"]);
}

/// Connects to whichever address it is set to.
struct Switch(Mutex<SocketAddr>);

impl holdfast::Connector for Switch {
    fn connect(&self) -> holdfast::transport::ConnectFuture<'_> {
        let addr = *self.0.lock().expect("addr");
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as holdfast::transport::BoxStream)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_while_the_connection_is_lost_is_not_executed_and_never_executes() {
    support::init_logs();
    let log = Log::default();
    let target = target_on(
        "127.0.0.1:0".parse().expect("addr"),
        log.clone(),
        Arc::new(Semaphore::new(0)),
    )
    .await;
    let proxy = Proxy::start(tcp_addr(&target)).await.expect("proxy");
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let switch = Arc::new(Switch(Mutex::new(proxy.addr())));
    let bound = Duration::from_millis(200);
    let init = Initiator::start(switch.clone(), {
        let mut o = InitiatorOptions::default();
        o.protocol = InitiatorConfig::default().with_detection_bound(bound);
        o.backoff_max = Duration::from_millis(100);
        o
    });
    let mut events = init.events();
    within(init.call(Bytes::from_static(b"A")))
        .await
        .expect("A");
    // The connection breaks and the target is out of reach for a while:
    // the session lives on, so calls are taken but cannot be sent.
    *switch.0.lock().expect("addr") = nowhere;
    proxy.inject(Fault::Reset);
    within(async {
        loop {
            match events.recv().await {
                Some(holdfast::SessionEvent::ConnectionLost { .. }) => break,
                Some(_) => {}
                None => panic!("the session's events ended"),
            }
        }
    })
    .await;
    let b = within(init.call_with(Bytes::from_static(b"B"), deadline(100))).await;
    expect_deadline(b, false, true);
    // The target is reachable again: the session recovers; B never runs.
    *switch.0.lock().expect("addr") = proxy.addr();
    let c = within(init.call(Bytes::from_static(b"C")))
        .await
        .expect("C");
    assert_eq!(c, "C");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(executed(&log), vec!["A", "C"], "B must never land");
}
