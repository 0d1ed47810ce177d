//! Several connections per session over real loopback sockets
//! (PROTOCOL.md §17): an initiator with three connections through the chaos
//! proxy, one of them reset mid-load; nothing is lost, duplicated or
//! reordered, and the lost connection is re-joined. Bounded in calls and time.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holdfast::chaos::{Direction, FaultKind, FaultSpec, Proxy, Scope};
use holdfast::proto::{CallOptions, Spread};
use holdfast::{
    service_fn, Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions, Request,
    Target, TargetOptions,
};

/// Calls issued in all.
const CALLS: u64 = 600;

/// A target whose service logs every payload it runs, in order, and
/// answers with the payload.
async fn logging_target() -> (Target, std::net::SocketAddr, Arc<Mutex<Vec<(u64, u64)>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let service = service_fn(move |req: Request| {
        let payload = req.payload.clone();
        let n = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
        seen.lock().expect("log").push((req.seq, n));
        std::future::ready(Ok::<_, std::convert::Infallible>(payload))
    });
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
    (target, addr, log)
}

/// Waits for `cond`, polled every 10 ms, at most 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn cutting_one_of_three_connections_mid_load_loses_duplicates_and_reorders_nothing() {
    support::init_logs();
    let (_target, addr, log) = logging_target().await;
    let proxy = Proxy::start(addr).await.expect("proxy");
    let bound = Duration::from_millis(400);
    let options = {
        let mut o = InitiatorOptions::default();
        o.protocol = InitiatorConfig::default().with_detection_bound(bound);
        o
    }
    .with_connections(3, Spread::LeastOutstanding);
    let init = Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(proxy.addr()), bound)),
        options,
    );
    // Log in and let all three connections join.
    init.call(Bytes::copy_from_slice(&0u64.to_be_bytes()))
        .await
        .expect("first call");
    eventually("three connections", || proxy.open_links() == 3).await;
    let mut calls = Vec::new();
    for n in 1..=CALLS {
        let init = init.clone();
        // Spawned in order on a current-thread runtime: submitted in order.
        calls.push(tokio::spawn(async move {
            let payload = Bytes::copy_from_slice(&n.to_be_bytes());
            let answer = init
                .call_with(payload.clone(), CallOptions::RETRY_SAFE)
                .await
                .unwrap_or_else(|e| panic!("call {n} failed: {e}"));
            assert_eq!(answer, payload, "call {n} got another call's answer");
        }));
        if n == CALLS / 3 {
            // Mid-load: reset one of the three links.
            tokio::task::yield_now().await;
            let hit = proxy.apply(FaultSpec::new(
                FaultKind::Reset,
                Direction::Both,
                Scope::Newest,
            ));
            assert_eq!(hit, 1);
        }
    }
    for call in calls {
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("calls finish within 20 s")
            .expect("call task");
    }
    let log = log.lock().expect("log").clone();
    let seqs: Vec<u64> = log.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=CALLS + 1).collect::<Vec<_>>(),
        "the service saw every sequence number once, in order"
    );
    let mut calls_seen: Vec<u64> = log.iter().map(|(_, n)| *n).collect();
    calls_seen.sort_unstable();
    assert_eq!(
        calls_seen,
        (0..=CALLS).collect::<Vec<_>>(),
        "the service saw every call once"
    );
    let stats = init.stats().await.expect("stats");
    assert!(stats.disconnects >= 1, "the reset was noticed: {stats:?}");
    // The lost connection is re-joined in the background.
    eventually("three connections again", || proxy.open_links() == 3).await;
    init.close().await.expect("clean close");
}
