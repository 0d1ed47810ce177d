//! Withdrawn calls over real sockets (docs/PROTOCOL.md §11.3): a call whose
//! caller stopped waiting while its path was blackholed is never executed
//! after the path returns, and `call_cancellable` only reports a failure
//! once the call can no longer execute.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holdfast::chaos::{Fault, Proxy};
use holdfast::proto::CallOptions;
use holdfast::{
    service_fn, CallError, Endpoint, EndpointConnector, Initiator, InitiatorConfig,
    InitiatorOptions, Request, Target, TargetOptions,
};

/// Fails the test if `f` takes longer than 10 s.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("finished within 10 s")
}

/// A target whose service records every command it executes, in order.
async fn recording_target() -> (Target, SocketAddr, Arc<Mutex<Vec<Bytes>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        TargetOptions::default(),
        service_fn(move |r: Request| {
            seen.lock().expect("log").push(r.payload.clone());
            async move { Ok::<_, std::convert::Infallible>(r.payload) }
        }),
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    (target, addr, log)
}

fn initiator(addr: SocketAddr) -> Initiator {
    let bound = Duration::from_millis(200);
    Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(addr), bound)),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = InitiatorConfig::default().with_detection_bound(bound);
            o
        },
    )
}

fn executed(log: &Mutex<Vec<Bytes>>) -> Vec<Bytes> {
    log.lock().expect("log").clone()
}

/// A recording target behind a fault proxy, and an initiator through the
/// proxy whose first call, A, has completed.
struct Fixture {
    _target: Target,
    proxy: Proxy,
    init: Initiator,
    log: Arc<Mutex<Vec<Bytes>>>,
}

impl Fixture {
    async fn after_a() -> Fixture {
        support::init_logs();
        let (target, addr, log) = recording_target().await;
        let proxy = Proxy::start(addr).await.expect("proxy");
        let init = initiator(proxy.addr());
        within(init.call(Bytes::from_static(b"A")))
            .await
            .expect("A");
        Fixture {
            _target: target,
            proxy,
            init,
            log,
        }
    }

    /// Once the path is back (a new link), another caller writes C; B,
    /// whose caller gave up, must never reach the service.
    async fn c_lands_and_b_never_does(&self) {
        within(self.init.call(Bytes::from_static(b"C")))
            .await
            .expect("C");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(executed(&self.log), vec!["A", "C"], "B must never land");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_in_a_blackhole_is_withdrawn_and_never_lands() {
    let f = Fixture::after_a().await;
    let (proxy, init) = (&f.proxy, &f.init);
    proxy.inject(Fault::Blackhole);
    let b = within(init.call_cancellable(
        Bytes::from_static(b"B"),
        CallOptions::RETRY_SAFE,
        tokio::time::sleep(Duration::from_millis(50)),
    ))
    .await;
    let err = b.expect_err("B cannot complete through the blackhole");
    assert!(err.is_settled(), "reported only once settled: {err}");
    assert!(!err.may_have_executed(), "{err}");
    f.c_lands_and_b_never_does().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_future_is_dropped_is_not_resent_after_recovery() {
    let f = Fixture::after_a().await;
    let (proxy, init) = (&f.proxy, &f.init);
    proxy.inject(Fault::Blackhole);
    let timed_out = tokio::time::timeout(
        Duration::from_millis(50),
        init.call_with(Bytes::from_static(b"B"), CallOptions::RETRY_SAFE),
    )
    .await;
    assert!(
        timed_out.is_err(),
        "B cannot complete through the blackhole"
    );
    f.c_lands_and_b_never_does().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_the_target_received_returns_its_real_outcome() {
    let f = Fixture::after_a().await;
    let (proxy, init) = (&f.proxy, &f.init);
    // Responses cannot get back, but commands reach the target.
    proxy.apply(holdfast::chaos::FaultSpec::new(
        holdfast::chaos::FaultKind::Blackhole,
        holdfast::chaos::Direction::Down,
        holdfast::chaos::Scope::All,
    ));
    let b = within(init.call_cancellable(
        Bytes::from_static(b"B"),
        CallOptions::default(),
        tokio::time::sleep(Duration::from_millis(50)),
    ))
    .await;
    assert_eq!(
        b,
        Ok(Bytes::from_static(b"B")),
        "the real outcome, after recovery"
    );
    assert_eq!(executed(&f.log), vec!["A", "B"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_before_the_driver_takes_it_is_withdrawn() {
    let (_target, addr, log) = recording_target().await;
    let init = initiator(addr);
    let r = init
        .call_cancellable(
            Bytes::from_static(b"X"),
            CallOptions::default(),
            std::future::ready(()),
        )
        .await;
    // Either withdrawn before it was sent, or (if the driver raced ahead)
    // settled with its real outcome: never an unsettled failure.
    match r {
        Err(e @ CallError::Withdrawn { .. }) => {
            assert!(e.is_settled());
            assert!(executed(&log).is_empty())
        }
        Err(e) if e.is_settled() && e.not_executed() => {
            assert!(executed(&log).is_empty())
        }
        Ok(v) => assert_eq!(v, "X"),
        Err(e) => panic!("unexpected: {e}"),
    }
}
