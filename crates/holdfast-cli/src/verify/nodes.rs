//! The block workload over two nodes (`holdfast torture --nodes 2`): two
//! in-process targets serve one volume file, each behind its own fault
//! proxy, and the workers' volume is a path group over them
//! (active/passive); each node has a peer link to the other (not through
//! the proxies). Besides the usual proxy faults (drawn for either node),
//! every third fault takes a node's path down for 1 to 2.5 s: new
//! connections are refused and the open ones are reset or, every other
//! time, held in the proxy and delivered late to the old node when the path
//! returns. The group fails over to the other node, which fences the old
//! one through its peer link (or, unconfirmed, the group waits the old
//! one's quiesce time) before it re-issues what was in doubt; the held
//! commands then either ran on the old node before the re-issue or never. Every read is checked
//! against the worker's model, so a stale write landing on the old node
//! after its re-issue on the new one shows as a lost block.
//!
//! The target-side ledger is not used as a witness here: across nodes a
//! retry-safe write may run on both (by design), which a per-node ledger
//! cannot tell from a duplicate; the reads are the check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use holdfast::chaos::{Direction, FaultKind, FaultSpec, Proxy, Scope};
use holdfast::paths::{PathGroup, PathGroupOptions};
use holdfast::transport::ConnectFuture;
use holdfast::{Connector, Endpoint, EndpointConnector, InitiatorConfig, InitiatorOptions};
use holdfast_block::Volume;

use super::blocks::BLOCK;
use super::faults;
use super::ledger::Duplicates;
use super::workload::{Tally, Worker};
use super::{progress_bar, wait_until, Scenario, Summary, TargetSide};

/// A connector that refuses while its path is down.
struct Gate {
    inner: EndpointConnector,
    open: Arc<AtomicBool>,
}

impl Connector for Gate {
    fn connect(&self) -> ConnectFuture<'_> {
        if self.open.load(Ordering::SeqCst) {
            self.inner.connect()
        } else {
            Box::pin(async {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "the path to this node is down (torture fault)",
                ))
            })
        }
    }
}

/// One node: its target, the proxy in front of it and its path's gate.
struct Node {
    side: TargetSide,
    proxy: Arc<Proxy>,
    open: Arc<AtomicBool>,
}

/// A free port on 127.0.0.1: the nodes name each other before they start.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?)
}

/// Takes a node's path down for `down`: new connections are refused, and
/// the open ones are either reset or (`hold`) kept open with everything the
/// group sends held in the proxy, to be delivered to the old node when the
/// path comes back: the late, stale commands of seed 001, which land after
/// the failover unless the group waited for the old node to be safe.
/// Returns when the fault was injected.
fn path_down(node: &Node, down: Duration, hold: bool) -> Instant {
    node.open.store(false, Ordering::SeqCst);
    let kind = if hold {
        FaultKind::Hold
    } else {
        FaultKind::Reset
    };
    let direction = if hold { Direction::Up } else { Direction::Both };
    node.proxy
        .apply(FaultSpec::new(kind, direction, Scope::All));
    let open = node.open.clone();
    let proxy = node.proxy.clone();
    tokio::spawn(async move {
        tokio::time::sleep(down).await;
        if hold {
            proxy.apply(FaultSpec::new(
                FaultKind::Release,
                Direction::Up,
                Scope::All,
            ));
        }
        open.store(true, Ordering::SeqCst);
    });
    Instant::now()
}

/// Runs the workload of `scenario` over two nodes serving `volume`.
pub(super) async fn run(scenario: &Scenario, volume: &std::path::Path) -> anyhow::Result<Summary> {
    let args = scenario;
    let addrs = [free_addr()?, free_addr()?];
    let mut nodes = Vec::with_capacity(2);
    for i in 0..2 {
        // Node A has a peer link to B and B to A: a failover's FENCE goes
        // through the survivor to the old node, unless the fault took the
        // old node's path (not its peer link) away: then it confirms.
        let side = TargetSide::start_with_peers(
            addrs[i],
            volume,
            Arc::new(Duplicates::default()),
            vec![Endpoint::Tcp(addrs[1 - i])],
        )
        .await?;
        let proxy = Arc::new(
            Proxy::start(side.addr)
                .await
                .context("could not start the fault proxy on 127.0.0.1")?,
        );
        nodes.push(Node {
            side,
            proxy,
            open: Arc::new(AtomicBool::new(true)),
        });
    }
    let mut builder = PathGroup::builder().options({
        let mut o = PathGroupOptions::default();
        // The group notices a silent path (half the detection bound)
        // well before the nodes drop it (four keep-alives of the whole
        // bound): held commands may still reach the old node after the
        // failover, which only the group's own wait makes safe.
        o.initiator = {
            let mut o = InitiatorOptions::default();
            o.protocol = {
                let mut ic = InitiatorConfig::default();
                ic.keepalive = args.detection;
                ic.dead_after = args.detection / 2;
                ic.login_timeout = args.detection;
                ic.session_loss_timeout = Some(Duration::from_secs(30));
                ic
            };
            o.jitter_seed = Some(args.seed);
            o
        };
        o
    });
    for (i, n) in nodes.iter().enumerate() {
        builder = builder.connector(
            format!("node {} via {}", ["A", "B"][i], n.proxy.addr()),
            Arc::new(Gate {
                inner: EndpointConnector::new(Endpoint::Tcp(n.proxy.addr()), args.detection),
                open: n.open.clone(),
            }),
        );
    }
    let group = builder.start()?;
    let device = Arc::new(
        tokio::time::timeout(
            Duration::from_secs(10),
            Volume::connect_group(group.clone()),
        )
        .await
        .context("the nodes did not answer within 10 s")?
        .context("could not open the volume over the two nodes")?,
    );
    let blocks_total = device.size() / BLOCK as u64;
    let per_worker = blocks_total / args.workers as u64;
    anyhow::ensure!(
        per_worker >= 16,
        "the volume ({} bytes) is too small for {} workers",
        device.size(),
        args.workers
    );
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..args.workers)
        .map(|w| {
            let worker = Worker::new(
                device.clone(),
                w as u64 * per_worker,
                per_worker,
                args.seed ^ ((w as u64 + 1) << 32),
                tally.clone(),
                start,
            );
            tokio::spawn(worker.run(stop.clone()))
        })
        .collect();

    let progress = progress_bar(!args.progress);
    let schedule = faults::schedule(args.duration, args.faults, false, args.seed);
    let mut rng = args.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    let mut recovery = Histogram::<u64>::new(3).context("histogram")?;
    let mut down_turn = 0;
    for (k, (at, fault)) in schedule.into_iter().enumerate() {
        wait_until(start + at, &tally, &progress, &injected).await;
        let (name, since) = if k % 3 == 2 {
            // Alternate the nodes, so the group fails over both ways.
            let node = &nodes[down_turn % 2];
            down_turn += 1;
            let down = Duration::from_millis(1000 + next() % 1500);
            let hold = down_turn % 2 == 0;
            ("path-down", path_down(node, down, hold))
        } else {
            let node = &nodes[(next() % 2) as usize];
            match faults::inject(&node.proxy, fault) {
                Some(since) => (fault.name(), since),
                None => continue,
            }
        };
        *injected.entry(name.to_owned()).or_default() += 1;
        if name != "path-down" && !fault.is_outage() {
            continue;
        }
        let limit = Duration::from_secs(15) + args.detection * 2;
        if let Some(d) = faults::time_to_recover(&tally, start, since, limit, fault).await {
            let _ = recovery.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        }
    }
    wait_until(start + args.duration, &tally, &progress, &injected).await;
    for n in &nodes {
        n.open.store(true, Ordering::SeqCst);
    }
    stop.store(true, Ordering::Relaxed);
    progress.set_message("verifying every block");
    for w in workers {
        w.await.context("a workload task panicked")?;
    }
    progress.finish_and_clear();
    let elapsed = start.elapsed();
    let paths = group.stats().await;
    let sessions = paths.sessions();
    let _ = tokio::time::timeout(Duration::from_secs(5), group.close()).await;
    let mut answered_from_cache = 0;
    for n in &mut nodes {
        if let Some(s) = n.side.stats().await {
            answered_from_cache += s.answered_from_cache;
        }
        if let Some(t) = n.side.target.take() {
            t.shutdown(Duration::ZERO, None).await;
        }
    }
    let ms = |q: f64| (!recovery.is_empty()).then(|| recovery.value_at_quantile(q) as f64 / 1000.0);
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let problems = tally
        .problems
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Summary {
        seed: args.seed,
        duration_s: elapsed.as_secs_f64(),
        volume_bytes: device.size(),
        workers: args.workers,
        operations: load(&tally.ops),
        reads: load(&tally.reads),
        writes: load(&tally.writes),
        write_zeroes: load(&tally.zeroes),
        flushes: load(&tally.flushes),
        bytes_read: load(&tally.bytes_read),
        bytes_written: load(&tally.bytes_written),
        faults: injected,
        reconnects: sessions.disconnects,
        stateful_recoveries: sessions.recoveries,
        stateless_recoveries: sessions.stateless_recoveries,
        resent: sessions.resent,
        reissued: sessions.reissued,
        answered_from_cache,
        recovery_p50_ms: ms(0.5),
        recovery_p99_ms: ms(0.99),
        recovery_max_ms: ms(1.0),
        failed_operations: load(&tally.failed),
        lost: load(&tally.lost),
        duplicated: None,
        corrupt: load(&tally.corrupt),
        second_session_operations: None,
        second_session_errors: None,
        failovers: Some(paths.paths.iter().map(|p| p.failovers).sum()),
        fences_confirmed: Some(paths.paths.iter().map(|p| p.fences_confirmed).sum()),
        commands_moved: Some(paths.paths.iter().map(|p| p.commands_moved).sum()),
        paths: Some(paths.to_string()),
        problems,
    })
}
