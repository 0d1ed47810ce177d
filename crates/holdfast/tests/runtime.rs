//! The runtime over real sockets on 127.0.0.1, through an in-process fault
//! proxy: exactly-once under mixed faults, blackhole detection time, and a
//! graceful shutdown with restart.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::chaos::{Fault, Proxy};
use holdfast::{
    Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions, Target,
    TargetConfig, TargetOptions,
};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn counter_target(retain: Duration) -> (Target, SocketAddr, Arc<AtomicU64>) {
    let value = Arc::new(AtomicU64::new(0));
    let options = {
        let mut o = TargetOptions::default();
        o.protocol = {
            let mut tc = TargetConfig::default();
            tc.retain = retain;
            tc
        };
        o
    };
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        options,
        support::counter(value.clone()),
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    (target, addr, value)
}

fn initiator(addr: SocketAddr, bound: Duration) -> Initiator {
    let options = {
        let mut o = InitiatorOptions::default();
        o.protocol = InitiatorConfig::default().with_detection_bound(bound);
        o
    };
    Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(addr), bound)),
        options,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_is_exact_under_mixed_faults() {
    support::init_logs();
    let total = env_u64("HOLDFAST_RUNTIME_CALLS", 100_000);
    let min_faults = env_u64("HOLDFAST_RUNTIME_FAULTS", 100);
    let (target, addr, value) = counter_target(Duration::from_secs(60)).await;
    let proxy = Arc::new(Proxy::start(addr).await.expect("proxy"));
    let init = initiator(proxy.addr(), Duration::from_millis(200));
    let done = Arc::new(AtomicU64::new(0));
    let tasks = 16;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let init = init.clone();
        let done = done.clone();
        handles.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..total / tasks {
                match init.call(Bytes::from_static(b"incr")).await {
                    Ok(_) => ok += 1,
                    Err(e) => panic!("call failed: {e}"),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            ok
        }));
    }
    let chaos = {
        let proxy = proxy.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let kinds = [
                Fault::Reset,
                Fault::CutAfter(37),
                Fault::Delay(Duration::from_millis(5)),
                Fault::Reset,
                Fault::Blackhole,
                Fault::CutAfter(0),
            ];
            // Faults that hit at least one open link, per kind.
            let mut hits = [0u64; 6];
            let mut n = 0;
            while done.load(Ordering::Relaxed) < total / tasks * tasks {
                tokio::time::sleep(Duration::from_millis(15)).await;
                if proxy.inject(kinds[n % kinds.len()]) > 0 {
                    hits[n % kinds.len()] += 1;
                }
                n += 1;
            }
            hits
        })
    };
    let mut succeeded = 0;
    for h in handles {
        succeeded += h.await.expect("task");
    }
    let hits = chaos.await.expect("chaos");
    let faults: u64 = hits.iter().sum();
    let stats = target.stats().await.expect("stats");
    let istats = init.stats().await.expect("stats");
    eprintln!("faults {faults} {hits:?}; target {stats:?}; initiator {istats:?}");
    assert_eq!(
        value.load(Ordering::SeqCst),
        succeeded,
        "counter equals successful calls"
    );
    assert_eq!(succeeded, total / tasks * tasks, "every call succeeded");
    assert!(faults >= min_faults, "only {faults} faults were injected");
    assert!(
        hits.iter().all(|h| *h > 0),
        "every fault kind must hit a live link: {hits:?} (reset, cut-37, delay, reset, blackhole, cut-0)"
    );
    assert!(istats.recoveries > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_is_detected_within_the_bound() {
    support::init_logs();
    let bound = Duration::from_millis(500);
    let (_target, addr, _value) = counter_target(Duration::from_secs(60)).await;
    let proxy = Proxy::start(addr).await.expect("proxy");
    let init = initiator(proxy.addr(), bound);
    init.call(Bytes::from_static(b"warm"))
        .await
        .expect("first call");
    proxy.inject(Fault::Blackhole);
    let fault = Instant::now();
    init.call(Bytes::from_static(b"after"))
        .await
        .expect("call after the blackhole");
    let recovered = fault.elapsed();
    eprintln!("blackhole: first completed call {recovered:?} after the fault");
    assert!(
        recovered < bound + Duration::from_secs(1),
        "took {recovered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_beyond_the_credit_window_wait_instead_of_queueing() {
    support::init_logs();
    let credits = 4;
    let running = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let service = {
        let (running, peak) = (running.clone(), peak.clone());
        holdfast::service_fn(move |_req: holdfast::Request| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(Bytes::new())
            }
        })
    };
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        {
            let mut o = TargetOptions::default();
            o.protocol = {
                let mut tc = TargetConfig::default();
                tc.credits = credits;
                tc
            };
            o
        },
        service,
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    let init = initiator(addr, Duration::from_secs(2));
    let mut callers = Vec::new();
    for _ in 0..64 {
        let init = init.clone();
        callers.push(tokio::spawn(async move {
            for _ in 0..4 {
                init.call(Bytes::from_static(b"work")).await.expect("call");
            }
        }));
    }
    for c in callers {
        c.await.expect("caller");
    }
    let peak = peak.load(Ordering::SeqCst);
    eprintln!("peak concurrency at the service: {peak} (credits {credits})");
    assert!(
        peak <= u64::from(credits),
        "the service ran {peak} commands at once"
    );
    assert!(peak >= 2, "the window was not used at all: {peak}");
    assert_eq!(target.stats().await.expect("stats").commands, 256);
}

/// A connector whose attempts never complete (a host that drops SYNs).
struct Unanswered;

impl holdfast::Connector for Unanswered {
    fn connect(&self) -> holdfast::transport::ConnectFuture<'_> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_connect_does_not_block_the_handle() {
    support::init_logs();
    let init = Initiator::start(Arc::new(Unanswered), {
        let mut o = InitiatorOptions::default();
        o.connect_timeout = Duration::from_secs(30);
        o.protocol = {
            let mut ic = InitiatorConfig::default();
            ic.session_loss_timeout = Some(Duration::from_millis(300));
            ic
        };
        o
    });
    let stats = tokio::time::timeout(Duration::from_secs(2), init.stats())
        .await
        .expect("stats() must answer while a connect is pending");
    assert!(stats.is_some());
    let err = tokio::time::timeout(Duration::from_secs(2), init.call(Bytes::from_static(b"x")))
        .await
        .expect("the session-loss timeout must fire while a connect is pending")
        .expect_err("no session can be established");
    assert!(!err.may_have_executed(), "{err}");
    assert!(
        matches!(err, holdfast::CallError::Unreachable { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_command_on_a_live_connection_is_kept_alive_by_pings() {
    support::init_logs();
    let bound = Duration::from_millis(300);
    let service = holdfast::service_fn(|_req: holdfast::Request| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"done"))
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
    let init = initiator(addr, bound);
    let reply = init
        .call(Bytes::from_static(b"slow"))
        .await
        .expect("slow call");
    assert_eq!(reply.as_ref(), b"done");
    let stats = init.stats().await.expect("stats");
    assert_eq!(
        stats.disconnects, 0,
        "a live connection was declared dead: {stats:?}"
    );
    assert!(
        stats.pings >= 3,
        "a 1.5 s wait with a 300 ms bound needs pings: {stats:?}"
    );
}
