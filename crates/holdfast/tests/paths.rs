//! Path groups over real sockets on 127.0.0.1: where calls go under each
//! policy, and calls that a lost node never received moving to another
//! node at once. (The fenced failover of calls in doubt, with real target
//! processes, is in crates/holdfast-cli/tests/fence_seed001.rs.)

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast::paths::{PathGroup, PathGroupOptions, PathState, Policy};
use holdfast::transport::ConnectFuture;
use holdfast::{
    service_fn, CallOptions, Connector, Endpoint, EndpointConnector, InitiatorConfig,
    InitiatorOptions, Request, Target, TargetOptions,
};

/// A target that counts the calls it serves and answers with its name.
async fn node(name: &'static str) -> (Target, Endpoint, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let service = service_fn(move |_req: Request| {
        c.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, std::convert::Infallible>(Bytes::from_static(
            name.as_bytes(),
        )))
    });
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        TargetOptions::default(),
        service,
    )
    .await
    .expect("serve");
    let ep = target.endpoints()[0].clone();
    (target, ep, count)
}

/// A connector to a node that is not there: every connect is refused.
struct Refused;

impl Connector for Refused {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async {
            Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "no node here (test)",
            ))
        })
    }
}

fn options(policy: Policy) -> PathGroupOptions {
    let bound = Duration::from_millis(200);
    {
        let mut o = PathGroupOptions::default();
        o.policy = policy;
        o.initiator = {
            let mut o = InitiatorOptions::default();
            o.protocol = InitiatorConfig::default().with_detection_bound(bound);
            o
        };
        o
    }
}

async fn wait_state(group: &PathGroup, path: usize, state: PathState) {
    for _ in 0..500 {
        if group.stats().await.paths[path].state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("path {path} never became {state}: {}", group.stats().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_passive_sends_every_call_to_the_first_node() {
    let (_a, a, count_a) = node("A").await;
    let (_b, b, count_b) = node("B").await;
    let group = PathGroup::builder()
        .options(options(Policy::ActivePassive))
        .endpoint(a)
        .endpoint(b)
        .start()
        .expect("group");
    for _ in 0..20 {
        let r = group.call(Bytes::from_static(b"x")).await.expect("call");
        assert_eq!(&r[..], b"A");
    }
    wait_state(&group, 1, PathState::Standby).await;
    let stats = group.stats().await;
    assert_eq!(stats.paths[0].state, PathState::Active, "{stats}");
    assert_eq!(count_a.load(Ordering::SeqCst), 20);
    assert_eq!(count_b.load(Ordering::SeqCst), 0);
    group.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_active_spreads_calls_over_both_nodes() {
    let (_a, a, count_a) = node("A").await;
    let (_b, b, count_b) = node("B").await;
    let group = PathGroup::builder()
        .options(options(Policy::ActiveActive))
        .endpoint(a)
        .endpoint(b)
        .start()
        .expect("group");
    wait_state(&group, 0, PathState::Active).await;
    wait_state(&group, 1, PathState::Active).await;
    // Many at once: the least-outstanding choice must use both.
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let g = group.clone();
            tokio::spawn(async move { g.call(Bytes::from_static(b"x")).await })
        })
        .collect();
    for c in calls {
        c.await.expect("task").expect("call");
    }
    let (na, nb) = (
        count_a.load(Ordering::SeqCst),
        count_b.load(Ordering::SeqCst),
    );
    assert_eq!(na + nb, 64);
    assert!(na > 0 && nb > 0, "A served {na}, B served {nb}");
    group.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_lost_node_never_received_move_to_the_other_node() {
    // The first (active) node cannot be reached at all: the calls queued
    // for it were never sent, so they move to B as soon as the path is
    // declared lost, without a fence, and each runs exactly once.
    let (_b, b, count_b) = node("B").await;
    let group = PathGroup::builder()
        .options(options(Policy::ActivePassive))
        .connector("nowhere", Arc::new(Refused))
        .connector(
            b.to_string(),
            Arc::new(EndpointConnector::new(b, Duration::from_millis(200))),
        )
        .start()
        .expect("group");
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let g = group.clone();
            tokio::spawn(async move {
                g.call_with(Bytes::from_static(b"x"), CallOptions::default())
                    .await
            })
        })
        .collect();
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .expect("moved within 10 s")
            .expect("task")
            .expect("a call never sent is re-issued, retry-safe or not");
        assert_eq!(&r[..], b"B");
    }
    assert_eq!(count_b.load(Ordering::SeqCst), 8, "each exactly once");
    let stats = group.stats().await;
    assert_eq!(stats.paths[0].commands_moved, 8, "{stats}");
    assert_eq!(stats.paths[0].fences_confirmed, 0, "{stats}");
    // New calls go to B directly now.
    let r = group.call(Bytes::from_static(b"y")).await.expect("call");
    assert_eq!(&r[..], b"B");
    group.close().await.expect("close");
}

/// A connector that refuses while its path is cut.
struct Gate {
    inner: EndpointConnector,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Connector for Gate {
    fn connect(&self) -> ConnectFuture<'_> {
        if self.open.load(Ordering::SeqCst) {
            self.inner.connect()
        } else {
            Box::pin(async {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "path cut (test)",
                ))
            })
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn fence_by_quiesce_reissues_calls_in_doubt_in_their_first_order() {
    // Calls 0..20 are sent to A into a blackhole (A may run them: they are
    // in doubt). B has no peer link, so the fence is not confirmed and the
    // group waits A's quiesce time; then it re-issues the calls on B, which
    // must receive them in the order they were first issued.
    use holdfast::chaos::{Direction, FaultKind, FaultSpec, Proxy, Scope};
    let (_a, a, _count_a) = node("A").await;
    let Endpoint::Tcp(a_addr) = a else {
        unreachable!("TCP")
    };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let service = service_fn(move |req: Request| {
        s.lock().expect("log").push(req.payload.clone());
        std::future::ready(Ok::<_, std::convert::Infallible>(Bytes::from_static(b"B")))
    });
    let b = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        TargetOptions::default(),
        service,
    )
    .await
    .expect("serve B");
    let proxy = Proxy::start(a_addr).await.expect("proxy");
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let bound = Duration::from_millis(200);
    let group = PathGroup::builder()
        .options(options(Policy::ActivePassive))
        .connector(
            "A",
            Arc::new(Gate {
                inner: EndpointConnector::new(Endpoint::Tcp(proxy.addr()), bound),
                open: open.clone(),
            }),
        )
        .endpoint(b.endpoints()[0].clone())
        .start()
        .expect("group");
    let r = group.call(Bytes::from_static(b"warm")).await.expect("warm");
    assert_eq!(&r[..], b"A");
    wait_state(&group, 1, PathState::Standby).await;
    seen.lock().expect("log").clear();
    open.store(false, Ordering::SeqCst);
    assert_eq!(
        proxy.apply(FaultSpec::new(
            FaultKind::Blackhole,
            Direction::Both,
            Scope::All
        )),
        1
    );
    // Spawned in order on one thread: first polled (issued) in order.
    let calls: Vec<_> = (0..20u8)
        .map(|i| {
            let g = group.clone();
            tokio::spawn(async move {
                g.call_with(Bytes::from(vec![i]), CallOptions::RETRY_SAFE)
                    .await
            })
        })
        .collect();
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(15), c)
            .await
            .expect("re-issued within 15 s")
            .expect("task")
            .expect("retry-safe calls in doubt are re-issued once A is quiesced");
        assert_eq!(&r[..], b"B");
    }
    let order: Vec<u8> = seen.lock().expect("log").iter().map(|p| p[0]).collect();
    assert_eq!(
        order,
        (0..20).collect::<Vec<u8>>(),
        "B got them out of order"
    );
    let stats = group.stats().await;
    assert_eq!(
        stats.paths[0].last_fence,
        Some(holdfast::paths::FenceKind::Quiesced),
        "{stats}"
    );
    assert_eq!(stats.paths[0].commands_moved, 20, "{stats}");
    group.close().await.expect("close");
}
