//! The failover scenario (issue 15): how long after a path to a node is
//! lost the first call re-issued on another node completes.
//!
//! Two in-process nodes (echo targets whose service takes 20 ms per call),
//! each behind a fault proxy, and a path group over them (detection bound
//! 100 ms). Each trial issues a retry-safe call on the active path, and
//! while the node runs it, resets the path's connection and refuses new
//! ones (the cable is pulled): the call is in doubt. The group declares the
//! path lost when it is not back within the detection bound, makes the old
//! node safe, and re-issues the call on the other node. The trial's time
//! runs from the reset to the call's completion. Then the path comes back
//! (a new session at the new epoch, a standby) and the next trial fails
//! over the other way.
//!
//! * **fence confirmed**: the nodes have peer links; the survivor forwards
//!   the group's FENCE and the old node confirms once the call finished;
//! * **quiesce wait**: no peer links; the fence is `Unreachable` and the
//!   group waits the old node's quiesce time (inactivity deadline 100 ms +
//!   command budget 100 ms) from its last contact;
//! * **single path**: one node, one session: the same reset, and the session
//!   reconnects to the same node and recovers (no failover; for context).
//!
//! Beside them, the Linux defaults a host would otherwise wait (documented,
//! not measured).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use holdfast::chaos::{Direction, FaultKind, FaultSpec, Proxy, Scope};
use holdfast::paths::{FenceKind, PathGroup, PathGroupOptions, PathState};
use holdfast::transport::ConnectFuture;
use holdfast::{
    service_fn, CallOptions, Connector, Endpoint, EndpointConnector, Initiator, InitiatorConfig,
    InitiatorOptions, Request, Target, TargetConfig, TargetOptions,
};
use serde::Serialize;
use tokio::time::Instant;

use super::table::{bound, num, rank_ms, Table};
use super::{Machine, Mode};

/// The detection bound of every session in the scenario.
const BOUND: Duration = Duration::from_millis(100);

/// How long the nodes' service takes per call: long enough that the call
/// is running on the old node when its path is cut.
const SERVICE_TIME: Duration = Duration::from_millis(20);

/// The nodes' command budget (the quiesce time is the inactivity deadline
/// plus this).
const COMMAND_BUDGET: Duration = Duration::from_millis(100);

/// How long one trial may take before the benchmark gives up on it.
const TRIAL_LIMIT: Duration = Duration::from_secs(10);

/// A row's setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Confirmed,
    Quiesce,
    SinglePath,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Confirmed => "path group, old node reachable (fence confirmed)",
            Case::Quiesce => "path group, old node unreachable (quiesce wait)",
            Case::SinglePath => "single path, reconnect to the same node",
        }
    }
}

/// The rows measured.
const CASES: [Case; 3] = [Case::Confirmed, Case::Quiesce, Case::SinglePath];

/// One measured row.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FailoverRow {
    /// What was measured.
    pub(crate) case: String,
    /// The detection bound, in milliseconds.
    pub(crate) bound_ms: u64,
    /// Trials.
    pub(crate) trials: usize,
    /// Median time from the path loss to the first completed re-issued
    /// call, in milliseconds.
    pub(crate) p50_ms: f64,
    /// 99th percentile (nearest rank: the maximum below 100 trials).
    pub(crate) p99_ms: f64,
    /// The slowest trial.
    pub(crate) max_ms: f64,
    /// Median time the group spent making the old node safe (fence round
    /// trip or quiesce wait), from its own figures.
    pub(crate) fence_p50_ms: Option<f64>,
    /// Fences the old nodes confirmed, of those asked.
    pub(crate) fences: Option<(u64, u64)>,
    /// Every trial, sorted, in milliseconds.
    pub(crate) samples_ms: Vec<f64>,
}

/// A documented default, for context.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Reference {
    /// The system.
    pub(crate) system: &'static str,
    /// Its defaults.
    pub(crate) settings: &'static str,
    /// What they imply.
    pub(crate) implies: &'static str,
}

const REFERENCES: [Reference; 2] = [
    Reference {
        system: "Linux nvme-tcp (native multipath)",
        settings: "keep-alive timeout 10 s (fabrics default); no command quiesce time",
        implies: "a silent path is noticed after up to 10 s; failover then re-issues at once, \
                  unfenced (the corruption of seed 001), or waits a fixed keep-alive time",
    },
    Reference {
        system: "open-iscsi + dm-multipath",
        settings: "noop_out_interval 5 s + noop_out_timeout 5 s",
        implies: "a silent path is failed after 5-10 s; outstanding I/O is retried on \
                  another path with no fence",
    },
];

/// The whole scenario.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FailoverReport {
    /// How long the runs were.
    pub(crate) mode: Mode,
    /// One row per case.
    pub(crate) rows: Vec<FailoverRow>,
    /// Documented defaults (not measured).
    pub(crate) references: Vec<Reference>,
}

/// Trials per row.
fn trials(mode: Mode) -> usize {
    match mode {
        Mode::Smoke => 2,
        Mode::Quick => 10,
        Mode::Full => 20,
    }
}

/// Runs every row.
pub(crate) async fn run(mode: Mode, progress: bool) -> anyhow::Result<FailoverReport> {
    let n = trials(mode);
    let mut rows = Vec::new();
    for case in CASES {
        if progress {
            eprintln!("bench failover: {} ({n} trials)", case.label());
        }
        let (mut samples, fence_times, fences) = match case {
            Case::SinglePath => (single_path_trials(n).await?, Vec::new(), None),
            Case::Confirmed => group_trials(true, n).await?,
            Case::Quiesce => group_trials(false, n).await?,
        };
        samples.sort();
        let mut fence_times = fence_times;
        fence_times.sort();
        rows.push(FailoverRow {
            case: case.label().to_owned(),
            bound_ms: u64::try_from(BOUND.as_millis()).unwrap_or(u64::MAX),
            trials: n,
            p50_ms: rank_ms(&samples, 0.5),
            p99_ms: rank_ms(&samples, 0.99),
            max_ms: rank_ms(&samples, 1.0),
            fence_p50_ms: (!fence_times.is_empty()).then(|| rank_ms(&fence_times, 0.5)),
            fences,
            samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
        });
    }
    Ok(FailoverReport {
        mode,
        rows,
        references: REFERENCES.to_vec(),
    })
}

/// An echo node on `addr` with peer links to `peers`.
async fn node(addr: SocketAddr, peers: Vec<Endpoint>) -> anyhow::Result<Target> {
    let service = service_fn(|_req: Request| async {
        tokio::time::sleep(SERVICE_TIME).await;
        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"ok"))
    });
    Target::serve(
        &[Endpoint::Tcp(addr)],
        {
            let mut o = TargetOptions::default();
            o.protocol = {
                let mut tc = TargetConfig::default();
                tc.command_budget = COMMAND_BUDGET;
                tc
            };
            o.socket_detection_bound = BOUND;
            o.peers = peers;
            o
        },
        service,
    )
    .await
    .with_context(|| format!("could not start a node on {addr}"))
}

/// A free port on 127.0.0.1 (the nodes name each other before they start).
fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind")?;
    Ok(l.local_addr()?)
}

/// A connector that refuses while its path is cut.
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
                    "path cut (bench)",
                ))
            })
        }
    }
}

fn session_options() -> InitiatorOptions {
    {
        let mut o = InitiatorOptions::default();
        o.protocol = InitiatorConfig::default().with_detection_bound(BOUND);
        o
    }
}

/// Waits until path `i` of `group` is a standby (its new session is up).
async fn wait_standby(group: &PathGroup, i: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + TRIAL_LIMIT;
    while Instant::now() < deadline {
        let s = group.stats().await;
        if s.paths[i].state == PathState::Standby {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("path {i} did not come back as a standby within {TRIAL_LIMIT:?}")
}

/// The path-group trials; returns the samples, the group's fence times and
/// (confirmed, requested) fences.
async fn group_trials(
    peers: bool,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Option<(u64, u64)>)> {
    let addrs = [free_addr()?, free_addr()?];
    let peer = |i: usize| {
        if peers {
            vec![Endpoint::Tcp(addrs[1 - i])]
        } else {
            Vec::new()
        }
    };
    let nodes = [
        node(addrs[0], peer(0)).await?,
        node(addrs[1], peer(1)).await?,
    ];
    let proxies = [Proxy::start(addrs[0]).await?, Proxy::start(addrs[1]).await?];
    let gates = [
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    ];
    let mut builder = PathGroup::builder().options({
        let mut o = PathGroupOptions::default();
        o.initiator = session_options();
        o
    });
    for i in 0..2 {
        builder = builder.connector(
            format!("node {i}"),
            Arc::new(Gate {
                inner: EndpointConnector::new(Endpoint::Tcp(proxies[i].addr()), BOUND),
                open: gates[i].clone(),
            }),
        );
    }
    let group = builder.start()?;
    let probe = || group.call_with(Bytes::from_static(b"probe"), CallOptions::RETRY_SAFE);
    tokio::time::timeout(TRIAL_LIMIT, probe())
        .await
        .map_err(|_| anyhow!("the first call did not complete"))??;
    let mut samples = Vec::with_capacity(n);
    let mut fence_times = Vec::with_capacity(n);
    let mut active = 0;
    for trial in 0..n {
        wait_standby(&group, 1 - active).await?;
        let call = tokio::spawn({
            let group = group.clone();
            async move {
                group
                    .call_with(Bytes::from_static(b"in doubt"), CallOptions::RETRY_SAFE)
                    .await
                    .map(|_| Instant::now())
            }
        });
        // The call reaches the node and runs there; then the cable is pulled.
        tokio::time::sleep(SERVICE_TIME / 4).await;
        gates[active].store(false, Ordering::SeqCst);
        let cut = Instant::now();
        if proxies[active].apply(FaultSpec::new(
            FaultKind::Reset,
            Direction::Both,
            Scope::All,
        )) == 0
        {
            bail!("trial {trial}: the reset hit no link");
        }
        let done = tokio::time::timeout(TRIAL_LIMIT, call)
            .await
            .map_err(|_| anyhow!("trial {trial}: the call was not re-issued in time"))?
            .context("call task")?
            .map_err(|e| anyhow!("trial {trial}: the re-issued call failed: {e}"))?;
        samples.push(done - cut);
        let stats = group.stats().await;
        let p = &stats.paths[active];
        let expected = if peers {
            FenceKind::Confirmed
        } else {
            FenceKind::Quiesced
        };
        if p.last_fence != Some(expected) {
            bail!(
                "trial {trial}: the failover was {:?}, not {expected:?}: {stats}",
                p.last_fence
            );
        }
        if let Some(t) = p.fence_latency {
            fence_times.push(t);
        }
        gates[active].store(true, Ordering::SeqCst);
        active = 1 - active;
    }
    let stats = group.stats().await;
    let fences = stats.paths.iter().fold((0, 0), |(c, r), p| {
        (c + p.fences_confirmed, r + p.fences_requested)
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), group.close()).await;
    for n in nodes {
        n.shutdown(Duration::ZERO, None).await;
    }
    Ok((samples, fence_times, Some(fences)))
}

/// The single-path trials: the same cut, and the session reconnects to the
/// same node (the gate opens again at once).
async fn single_path_trials(n: usize) -> anyhow::Result<Vec<Duration>> {
    let target = node(free_addr()?, Vec::new()).await?;
    let Some(Endpoint::Tcp(addr)) = target.endpoints().first().cloned() else {
        bail!("the node bound no TCP address");
    };
    let proxy = Proxy::start(addr).await?;
    let init = Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(proxy.addr()), BOUND)),
        session_options(),
    );
    let mut samples = Vec::with_capacity(n);
    for trial in 0..n {
        tokio::time::timeout(TRIAL_LIMIT, init.call(Bytes::from_static(b"probe")))
            .await
            .map_err(|_| anyhow!("trial {trial}: no session"))??;
        let call = tokio::spawn({
            let init = init.clone();
            async move {
                init.call_with(Bytes::from_static(b"in doubt"), CallOptions::RETRY_SAFE)
                    .await
                    .map(|_| Instant::now())
            }
        });
        tokio::time::sleep(SERVICE_TIME / 4).await;
        let cut = Instant::now();
        if proxy.apply(FaultSpec::new(
            FaultKind::Reset,
            Direction::Both,
            Scope::All,
        )) == 0
        {
            bail!("trial {trial}: the reset hit no link");
        }
        let done = tokio::time::timeout(TRIAL_LIMIT, call)
            .await
            .map_err(|_| anyhow!("trial {trial}: the call did not complete in time"))?
            .context("call task")?
            .map_err(|e| anyhow!("trial {trial}: the call failed: {e}"))?;
        samples.push(done - cut);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), init.close()).await;
    target.shutdown(Duration::ZERO, None).await;
    Ok(samples)
}

impl FailoverReport {
    fn as_table(&self) -> Table {
        let mut t = Table::new(&[
            "case",
            "bound",
            "trials",
            "p50 ms",
            "p99 ms",
            "max ms",
            "fence p50 ms",
            "fences",
        ])
        .align_left(&[0, 7]);
        for r in &self.rows {
            t.push(vec![
                r.case.clone(),
                bound(Duration::from_millis(r.bound_ms)),
                r.trials.to_string(),
                num(r.p50_ms, 1),
                num(r.p99_ms, 1),
                num(r.max_ms, 1),
                r.fence_p50_ms.map_or("-".to_owned(), |v| num(v, 1)),
                r.fences
                    .map_or("-".to_owned(), |(c, q)| format!("{c} of {q} confirmed")),
            ]);
        }
        t
    }

    fn reference_table(&self) -> Table {
        let mut t = Table::new(&["system (documented, not measured)", "defaults", "implies"])
            .align_left(&[0, 1, 2]);
        for r in &self.references {
            t.push(vec![
                r.system.to_owned(),
                r.settings.to_owned(),
                r.implies.to_owned(),
            ]);
        }
        t
    }

    /// The tables for the terminal.
    pub(crate) fn table(&self) -> String {
        format!(
            "{}\n{}",
            self.as_table().text(),
            self.reference_table().text()
        )
    }

    /// The Markdown report.
    pub(crate) fn markdown(&self, machine: &Machine) -> String {
        let mut md = String::from("# holdfast bench: failover\n\n");
        md.push_str(
            "Failover latency across two nodes: from the loss of the path to the node \
             running a call to the completion of that call, re-issued on the other node.\n\n",
        );
        md.push_str(&machine.markdown(self.mode));
        md.push('\n');
        md.push_str(&self.as_table().markdown());
        md.push_str(
            "\nFor context, what a Linux host waits by default. **Documented, not \
             measured.**\n\n",
        );
        md.push_str(&self.reference_table().markdown());
        md.push_str(
            "\n## How it is measured\n\n\
             - Two in-process nodes (echo targets; each call takes 20 ms in the service), \
             each behind an in-process fault proxy; a `PathGroup` (active/passive) over \
             them; detection bound 100 ms for every session.\n\
             - Each trial issues a retry-safe call, waits 5 ms (the call runs on the active \
             node), then resets the path's connection and refuses new ones. Timed from the \
             reset to the call's completion on the other node. The group first waits the \
             detection bound for the path to come back (it does not), then makes the old \
             node safe and re-issues.\n\
             - **fence confirmed**: each node has a peer link to the other \
             (`TargetOptions::peers`); the survivor forwards the FENCE and the old node \
             confirms once the call finished there.\n\
             - **quiesce wait**: no peer links; the group waits the old node's advertised \
             quiesce time (inactivity deadline + command budget 100 ms) from its last \
             contact.\n\
             - **single path**: one node; the same reset, the session reconnects to the \
             same node and recovers; no failover.\n\
             - **fence p50** is the group's own figure: from declaring the path lost to the \
             old node being safe.\n\
             - p99 is the nearest-rank percentile: below 100 trials it is the maximum.\n",
        );
        md
    }
}
