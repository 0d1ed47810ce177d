//! Fences and the quiesce promise over real sockets on 127.0.0.1: two
//! `holdfast::Target`s share one backend (a service over shared state),
//! node B has a peer link to node A, and a host fails over from A to B.
//! `cargo test fence` selects them.
//!
//! Each scenario returns what went wrong; a twin test switches the
//! protection off on node A (a test switch) and shows the scenario then
//! reports it, so the checks are known to work.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holdfast::proto::TestSwitches;
use holdfast::{
    service_fn, Endpoint, EndpointConnector, FenceResult, HostId, Initiator, InitiatorOptions,
    Request, Target, TargetOptions,
};
use tokio::sync::Semaphore;

const HOST: HostId = HostId([0x5a; 16]);

/// The backend both nodes serve: "slow" and "queued" run one at a time (a
/// lock taken before they touch it); "slow" holds it until the test
/// releases `gate`.
#[derive(Clone)]
struct Backend {
    executed: Arc<Mutex<Vec<String>>>,
    /// "slow" and "queued" take turns in the order `call` was invoked (the
    /// session's order), whatever order their futures are first polled in.
    next_ticket: Arc<std::sync::atomic::AtomicUsize>,
    turn: Arc<tokio::sync::watch::Sender<usize>>,
    /// Set once "slow" has started and waits for the gate.
    slow_started: Arc<std::sync::atomic::AtomicBool>,
    gate: Arc<Semaphore>,
}

impl Backend {
    fn new() -> Self {
        Backend {
            executed: Arc::new(Mutex::new(Vec::new())),
            next_ticket: Arc::default(),
            turn: Arc::new(tokio::sync::watch::channel(0).0),
            slow_started: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn executed(&self) -> Vec<String> {
        self.executed.lock().expect("lock").clone()
    }

    async fn serve(&self, switches: TestSwitches, peers: Vec<Endpoint>) -> Target {
        let backend = self.clone();
        let service = service_fn(move |req: Request| {
            let b = backend.clone();
            let what = String::from_utf8_lossy(&req.payload).into_owned();
            // Taken here, in call order; waited for in the future.
            let ticket = matches!(what.as_str(), "slow" | "queued").then(|| {
                b.next_ticket
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            });
            async move {
                if let Some(t) = ticket {
                    let mut turn = b.turn.subscribe();
                    let _ = turn.wait_for(|&now| now == t).await;
                }
                // The moment it would touch the backend.
                let outcome = if req.begin().is_err() {
                    Bytes::from_static(b"not started")
                } else {
                    if what == "slow" {
                        b.slow_started
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                        let permit = b.gate.acquire().await.expect("gate");
                        permit.forget();
                    }
                    b.executed.lock().expect("lock").push(what);
                    Bytes::from_static(b"done")
                };
                if ticket.is_some() {
                    b.turn.send_modify(|now| *now += 1);
                }
                Ok::<_, std::convert::Infallible>(outcome)
            }
        });
        let mut options = {
            let mut o = TargetOptions::default();
            o.peers = peers;
            o.peer_fence_timeout = Duration::from_secs(10);
            o
        };
        options.protocol.switches = switches;
        Target::serve(
            &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
            options,
            service,
        )
        .await
        .expect("serve")
    }
}

fn host_initiator(target: &Target, epoch: u64, keepalive: Duration) -> Initiator {
    let mut options = InitiatorOptions::default();
    options.protocol.host = Some(HOST);
    options.protocol.epoch = epoch;
    options.protocol.keepalive = keepalive;
    let connector = EndpointConnector::new(target.endpoints()[0].clone(), Duration::from_secs(2));
    Initiator::start(Arc::new(connector), options)
}

/// Waits (bounded) until `check` holds.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) -> Result<(), String> {
    for _ in 0..500 {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("timed out waiting for {what}"))
}

/// The host has "slow" running and "queued" waiting on node A, fails over
/// to node B, and asks B to fence A. The fence must confirm only after
/// "slow" finished, and "queued" must never run.
async fn fence_scenario(switches: TestSwitches) -> Result<(), String> {
    support::init_logs();
    let backend = Backend::new();
    let a = backend.serve(switches, Vec::new()).await;
    let b = backend
        .serve(TestSwitches::default(), a.endpoints().to_vec())
        .await;
    let on_a = host_initiator(&a, 1, Duration::from_millis(500));
    let slow = tokio::spawn({
        let i = on_a.clone();
        async move { i.call(Bytes::from_static(b"slow")).await }
    });
    until("slow to start", async || {
        backend
            .slow_started
            .load(std::sync::atomic::Ordering::SeqCst)
            && on_a.node().is_some()
    })
    .await?;
    let queued = tokio::spawn({
        let i = on_a.clone();
        async move { i.call(Bytes::from_static(b"queued")).await }
    });
    until("queued to reach the service", async || {
        a.stats().await.is_some_and(|s| s.commands == 2)
    })
    .await?;
    let node_a = on_a.node().ok_or("no node")?;
    // The host fails over: a session on B at a raised epoch.
    let on_b = host_initiator(&b, 2, Duration::from_millis(500));
    on_b.call(Bytes::from_static(b"hello"))
        .await
        .map_err(|e| e.to_string())?;
    // B's peer link to A is logged in once A created its second session.
    until("the peer link", async || {
        a.stats().await.is_some_and(|s| s.sessions_created == 2)
    })
    .await?;
    let fence = tokio::spawn({
        let i = on_b.clone();
        async move { i.fence(node_a, HOST, 2).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    if fence.is_finished() {
        return Err(format!(
            "the fence was confirmed while a command still ran: {:?}",
            fence.await
        ));
    }
    backend.gate.add_permits(1);
    let outcome = tokio::time::timeout(Duration::from_secs(5), fence)
        .await
        .map_err(|_| "no answer to the fence".to_owned())?
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if outcome.result != FenceResult::Fenced || outcome.waited < Duration::from_millis(150) {
        return Err(format!("fence outcome {outcome:?}"));
    }
    // "queued" had its turn at the backend after "slow": refused.
    until("queued to have its turn", async || {
        backend.executed().len() == 3 || a.stats().await.is_some_and(|s| s.not_executed == 1)
    })
    .await?;
    let executed = backend.executed();
    if executed != ["hello", "slow"] {
        return Err(format!("the backend executed {executed:?}"));
    }
    let stats = a.stats().await.ok_or("no stats")?;
    if (
        stats.fences_received,
        stats.fences_confirmed,
        stats.sessions_fenced,
    ) != (1, 1, 1)
    {
        return Err(format!("node A's counters {stats:?}"));
    }
    slow.abort();
    queued.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_over_a_peer_link_confirms_after_the_running_command_and_refuses_the_queued_one() {
    fence_scenario(TestSwitches::default())
        .await
        .expect("fenced failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_test_catches_a_node_that_confirms_before_its_command_finished() {
    let e = fence_scenario(TestSwitches {
        fence_without_waiting: true,
        ..TestSwitches::default()
    })
    .await
    .expect_err("must be caught");
    assert!(e.contains("while a command still ran"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_test_catches_a_node_that_starts_the_queued_command() {
    let e = fence_scenario(TestSwitches {
        no_quiesce: true,
        ..TestSwitches::default()
    })
    .await
    .expect_err("must be caught");
    assert!(e.contains("executed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_for_a_node_without_a_peer_link_is_unreachable() {
    let backend = Backend::new();
    let b = backend.serve(TestSwitches::default(), Vec::new()).await;
    let on_b = host_initiator(&b, 2, Duration::from_millis(500));
    on_b.call(Bytes::from_static(b"hello")).await.expect("call");
    let node = on_b.node().expect("node") ^ 1;
    let outcome = on_b.fence(node, HOST, 2).await.expect("answered");
    assert_eq!(outcome.result, FenceResult::Unreachable);
}

/// The host loses contact with the node while "slow" runs and "queued"
/// waits; "queued" gets its turn after the contact deadline.
async fn quiesce_scenario(switches: TestSwitches) -> Result<(), String> {
    let backend = Backend::new();
    let a = backend.serve(switches, Vec::new()).await;
    // Keep-alive 25 ms: the inactivity deadline is 100 ms.
    let on_a = host_initiator(&a, 1, Duration::from_millis(25));
    // One after the other: two tasks spawned at once submit in either order.
    let call = |p: &'static [u8]| {
        let i = on_a.clone();
        tokio::spawn(async move { i.call(Bytes::from_static(p)).await })
    };
    let slow = call(b"slow");
    until("slow to start", async || {
        backend
            .slow_started
            .load(std::sync::atomic::Ordering::SeqCst)
    })
    .await?;
    let calls = [slow, call(b"queued")];
    until("both to reach the service", async || {
        a.stats().await.is_some_and(|s| s.commands == 2)
    })
    .await?;
    let quiesce = on_a.quiesce().ok_or("no quiesce time")?;
    if quiesce != Duration::from_millis(1100) {
        return Err(format!("quiesce {quiesce:?}"));
    }
    // Contact ends: every handle goes, the session's connection closes.
    for c in calls {
        c.abort();
    }
    drop(on_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.gate.add_permits(1);
    until("queued to have its turn", async || {
        backend.executed().len() == 2 || a.stats().await.is_some_and(|s| s.not_executed == 1)
    })
    .await?;
    let executed = backend.executed();
    if executed != ["slow"] {
        return Err(format!("the backend executed {executed:?}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_refuses_a_command_that_would_start_after_the_contact_deadline() {
    quiesce_scenario(TestSwitches::default())
        .await
        .expect("the promise holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_test_catches_a_node_that_ignores_its_promise() {
    quiesce_scenario(TestSwitches {
        no_quiesce: true,
        ..TestSwitches::default()
    })
    .await
    .expect_err("must be caught");
}
