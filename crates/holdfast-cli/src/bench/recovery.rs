//! The recovery scenario: how long after a fault the first call completes.
//!
//! Each trial makes a call (the session is healthy), injects the fault, and
//! times a call issued right after it until it completes:
//! * **reset**: the fault proxy closes the connection with RST both ways;
//! * **blackhole**: the proxy stops forwarding and keeps the sockets open, so
//!   only the detection bound (PINGs and the reply deadline) notices; at
//!   bounds of 100 ms, 500 ms and 2 s;
//! * **restart**: the target announces a shutdown with no time left up and
//!   no hold (`shutdown(0, Some(0))`), stops, and a new target with no
//!   session state serves on the same port; timed from the old target's
//!   stop to the completion of a retry-safe call issued at that moment
//!   (stateless recovery re-issues it on a new session).
//!
//! Beside them, the documented defaults of open-iscsi and Linux nvme-tcp,
//! for context: documented, not measured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use holdfast::chaos::{Fault, Proxy};
use holdfast::{
    service_fn, CallOptions, Endpoint, EndpointConnector, Initiator, InitiatorConfig,
    InitiatorOptions, InitiatorStats, Request, Target, TargetOptions,
};
use serde::Serialize;
use tokio::time::Instant;

use super::table::{bound, num, rank_ms, Table};
use super::{Check, Machine, Mode};

/// The detection bound of the reset and restart rows (the demo's default).
const DEFAULT_BOUND: Duration = Duration::from_millis(500);

/// The blackhole rows' detection bounds.
const BLACKHOLE_BOUNDS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];

/// How much longer than its detection bound a trial may take before the
/// benchmark gives up on it.
const TRIAL_SLACK: Duration = Duration::from_secs(10);

/// What a row injects.
#[derive(Clone, Copy, Debug)]
enum FaultCase {
    Reset,
    Blackhole(Duration),
    Restart,
}

impl FaultCase {
    /// The row's label.
    fn label(self) -> String {
        match self {
            FaultCase::Reset => "reset".to_owned(),
            FaultCase::Blackhole(b) => format!("blackhole, bound {}", bound(b)),
            FaultCase::Restart => "graceful restart".to_owned(),
        }
    }

    /// The detection bound the row runs with.
    fn bound(self) -> Duration {
        match self {
            FaultCase::Blackhole(b) => b,
            FaultCase::Reset | FaultCase::Restart => DEFAULT_BOUND,
        }
    }

    /// The target for the row, as (words, p99 limit).
    fn target(self) -> Option<(String, Duration)> {
        match self {
            FaultCase::Reset => Some(("p99 <= 50 ms".to_owned(), Duration::from_millis(50))),
            FaultCase::Blackhole(b) => Some((
                format!("p99 <= {} + 50 ms", bound(b)),
                b + Duration::from_millis(50),
            )),
            FaultCase::Restart => None,
        }
    }
}

/// One measured row.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RecoveryRow {
    /// What was injected.
    pub(crate) fault: String,
    /// The detection bound of initiator and target, in milliseconds.
    pub(crate) bound_ms: u64,
    /// How many trials.
    pub(crate) trials: usize,
    /// Median time to the first completed call, in milliseconds.
    pub(crate) p50_ms: f64,
    /// 99th percentile (nearest rank: the maximum below 100 trials).
    pub(crate) p99_ms: f64,
    /// The slowest trial.
    pub(crate) max_ms: f64,
    /// Sessions the initiator recovered on the target (stateful), as its
    /// counters say: one per trial after a reset or blackhole.
    pub(crate) stateful_recoveries: u64,
    /// Sessions the initiator replaced because the target had lost them
    /// (stateless): one per trial after a restart.
    pub(crate) stateless_recoveries: u64,
    /// The target for the row, if it sets one.
    pub(crate) target: Option<Check>,
    /// The p99 limit of the target, in milliseconds.
    pub(crate) target_ms: Option<f64>,
    /// Every trial, sorted, in milliseconds.
    pub(crate) samples_ms: Vec<f64>,
}

/// A documented default of another system, for context.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Documented {
    /// The system.
    pub(crate) system: &'static str,
    /// Its default settings that bound recovery.
    pub(crate) settings: &'static str,
    /// What they imply for the time from a silent failure to I/O again.
    pub(crate) implies: &'static str,
}

/// The documented rows. Not measured.
const DOCUMENTED: [Documented; 2] = [
    Documented {
        system: "open-iscsi",
        settings: "noop_out_interval 5 s, noop_out_timeout 5 s",
        implies: "a silent connection is declared dead 5-10 s after it fails; then relogin",
    },
    Documented {
        system: "Linux nvme-tcp",
        settings: "keep-alive timeout (KATO) 5 s, reconnect_delay 10 s",
        implies: "up to 5 s to detect, the first reconnect 10 s later: about 15 s",
    },
];

/// The whole scenario.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RecoveryReport {
    /// How long the runs were.
    pub(crate) mode: Mode,
    /// One row per fault.
    pub(crate) rows: Vec<RecoveryRow>,
    /// Other systems' documented defaults (not measured).
    pub(crate) documented: Vec<Documented>,
}

/// Runs every row.
pub(crate) async fn run(mode: Mode, progress: bool) -> anyhow::Result<RecoveryReport> {
    let mut cases = vec![FaultCase::Reset];
    cases.extend(BLACKHOLE_BOUNDS.iter().map(|b| FaultCase::Blackhole(*b)));
    cases.push(FaultCase::Restart);
    let mut rows = Vec::with_capacity(cases.len());
    for case in cases {
        let trials = mode.recovery_trials(case.bound() >= Duration::from_secs(1));
        if progress {
            eprintln!("bench recovery: {} ({trials} trials)", case.label());
        }
        let (mut samples, stats) = match case {
            FaultCase::Reset => proxy_trials(Fault::Reset, case.bound(), trials).await?,
            FaultCase::Blackhole(b) => proxy_trials(Fault::Blackhole, b, trials).await?,
            FaultCase::Restart => restart_trials(trials).await?,
        };
        samples.sort();
        let p99_ms = rank_ms(&samples, 0.99);
        let target = case.target();
        rows.push(RecoveryRow {
            fault: case.label(),
            bound_ms: u64::try_from(case.bound().as_millis()).unwrap_or(u64::MAX),
            trials,
            p50_ms: rank_ms(&samples, 0.5),
            p99_ms,
            max_ms: rank_ms(&samples, 1.0),
            stateful_recoveries: stats.recoveries,
            stateless_recoveries: stats.stateless_recoveries,
            target: target.as_ref().map(|(words, limit)| Check {
                target: words.clone(),
                met: p99_ms <= limit.as_secs_f64() * 1e3,
            }),
            target_ms: target.map(|(_, limit)| limit.as_secs_f64() * 1e3),
            samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
        });
    }
    Ok(RecoveryReport {
        mode,
        rows,
        documented: DOCUMENTED.to_vec(),
    })
}

/// A target that answers every call with a short payload.
async fn serve(addr: SocketAddr, bound: Duration) -> std::io::Result<Target> {
    let service = service_fn(|_req: Request| {
        std::future::ready(Ok::<_, std::convert::Infallible>(Bytes::from_static(b"ok")))
    });
    Target::serve(
        &[Endpoint::Tcp(addr)],
        {
            let mut o = TargetOptions::default();
            o.socket_detection_bound = bound;
            o
        },
        service,
    )
    .await
}

/// The TCP address a target bound.
fn bound_addr(target: &Target) -> anyhow::Result<SocketAddr> {
    match target.endpoints().first() {
        Some(Endpoint::Tcp(a)) => Ok(*a),
        other => bail!("the target bound {other:?}, not a TCP address"),
    }
}

/// An initiator through `addr` with detection bound `bound`.
fn initiator(addr: SocketAddr, bound: Duration) -> Initiator {
    Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(addr), bound)),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = InitiatorConfig::default().with_detection_bound(bound);
            o
        },
    )
}

/// Makes a call, or says why it did not complete in time.
async fn timed_call(init: &Initiator, options: CallOptions, limit: Duration) -> anyhow::Result<()> {
    match tokio::time::timeout(limit, init.call_with(Bytes::from_static(b"probe"), options)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("a call failed: {e}")),
        Err(_) => Err(anyhow!("no call completed within {limit:?}")),
    }
}

/// Trials of a fault the proxy injects: a call, the fault, a timed call.
/// Returns the times and the initiator's counters.
async fn proxy_trials(
    fault: Fault,
    bound: Duration,
    trials: usize,
) -> anyhow::Result<(Vec<Duration>, InitiatorStats)> {
    let target = serve(([127, 0, 0, 1], 0).into(), bound)
        .await
        .context("could not start the holdfast target on 127.0.0.1")?;
    let proxy = Proxy::start(bound_addr(&target)?)
        .await
        .context("could not start the fault proxy on 127.0.0.1")?;
    let init = initiator(proxy.addr(), bound);
    let limit = bound + TRIAL_SLACK;
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..trials {
        timed_call(&init, CallOptions::default(), limit)
            .await
            .with_context(|| format!("before {fault:?} trial {trial}"))?;
        if proxy.inject(fault) == 0 {
            bail!("the {fault:?} of trial {trial} hit no open connection");
        }
        let start = Instant::now();
        timed_call(&init, CallOptions::default(), limit)
            .await
            .with_context(|| format!("after {fault:?} trial {trial}"))?;
        samples.push(start.elapsed());
    }
    let stats = init.stats().await.unwrap_or_default();
    let _ = init.close().await;
    target.shutdown(Duration::ZERO, None).await;
    Ok((samples, stats))
}

/// Trials of a graceful restart: the old target stops, a call is issued, a
/// new target serves on the same port; timed from the stop to the call's
/// completion. Returns the times and the initiator's counters.
async fn restart_trials(trials: usize) -> anyhow::Result<(Vec<Duration>, InitiatorStats)> {
    let mut target = serve(([127, 0, 0, 1], 0).into(), DEFAULT_BOUND)
        .await
        .context("could not start the holdfast target on 127.0.0.1")?;
    let addr = bound_addr(&target)?;
    let init = initiator(addr, DEFAULT_BOUND);
    let limit = DEFAULT_BOUND + TRIAL_SLACK;
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..trials {
        timed_call(&init, CallOptions::RETRY_SAFE, limit)
            .await
            .with_context(|| format!("before restart trial {trial}"))?;
        target.shutdown(Duration::ZERO, Some(Duration::ZERO)).await;
        let stopped = Instant::now();
        let call = tokio::spawn({
            let init = init.clone();
            async move {
                timed_call(&init, CallOptions::RETRY_SAFE, limit).await?;
                Ok::<Instant, anyhow::Error>(Instant::now())
            }
        });
        target = serve_again(addr).await?;
        let done = call
            .await
            .context("the call task panicked")?
            .with_context(|| format!("after restart trial {trial}"))?;
        samples.push(done - stopped);
    }
    let stats = init.stats().await.unwrap_or_default();
    let _ = init.close().await;
    target.shutdown(Duration::ZERO, None).await;
    Ok((samples, stats))
}

/// Serves on `addr` again, retrying briefly while the old listener's port
/// is still being released.
async fn serve_again(addr: SocketAddr) -> anyhow::Result<Target> {
    let mut attempts = 0;
    loop {
        match serve(addr, DEFAULT_BOUND).await {
            Ok(t) => return Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("could not serve again on {addr}")),
        }
    }
}

/// How the row's sessions came back, from the initiator's counters.
fn recovered(r: &RecoveryRow) -> String {
    match (r.stateful_recoveries, r.stateless_recoveries) {
        (0, 0) => "-".to_owned(),
        (n, 0) => format!("{n} stateful"),
        (0, n) => format!("{n} stateless"),
        (a, b) => format!("{a} stateful, {b} stateless"),
    }
}

impl RecoveryReport {
    /// The measured rows as a table.
    fn as_table(&self, markdown: bool) -> Table {
        let mut t = Table::new(&[
            "fault",
            "bound",
            "trials",
            "p50 ms",
            "p99 ms",
            "max ms",
            "recovered",
            "target",
            "",
        ])
        .align_left(&[6, 7, 8]);
        for r in &self.rows {
            let (target, verdict) = match &r.target {
                Some(c) if markdown => (c.target.clone(), format!("**{}**", c.verdict())),
                Some(c) => (c.target.clone(), c.verdict().to_owned()),
                None => ("-".to_owned(), String::new()),
            };
            t.push(vec![
                r.fault.clone(),
                bound(Duration::from_millis(r.bound_ms)),
                r.trials.to_string(),
                num(r.p50_ms, 1),
                num(r.p99_ms, 1),
                num(r.max_ms, 1),
                recovered(r),
                target,
                verdict,
            ]);
        }
        t
    }

    /// The documented rows as a table.
    fn documented_table(&self) -> Table {
        let mut t = Table::new(&["system (documented, not measured)", "defaults", "implies"])
            .align_left(&[1, 2]);
        for d in &self.documented {
            t.push(vec![
                d.system.to_owned(),
                d.settings.to_owned(),
                d.implies.to_owned(),
            ]);
        }
        t
    }

    /// The tables for the terminal.
    pub(crate) fn table(&self) -> String {
        format!(
            "{}\n{}",
            self.as_table(false).text(),
            self.documented_table().text()
        )
    }

    /// The Markdown report.
    pub(crate) fn markdown(&self, machine: &Machine) -> String {
        let mut md = String::from("# holdfast bench: recovery\n\n");
        md.push_str(
            "The time from a fault to the first completed call after it, on 127.0.0.1, \
             through holdfast's in-process fault proxy (`holdfast::chaos::Proxy`).\n\n",
        );
        md.push_str(&machine.markdown(self.mode));
        md.push('\n');
        md.push_str(&self.as_table(true).markdown());
        md.push_str(
            "\n![p50, p99 and max time to the first completed call, by fault](recovery.svg)\n\n\
             For context, the documented defaults of two standard block transports. \
             **Documented, not measured**: these are their default settings and what the \
             settings imply, not runs on this machine.\n\n",
        );
        md.push_str(&self.documented_table().markdown());
        md.push_str(
            "\n## How it is measured\n\n\
             - Each trial makes a call on a healthy session, injects the fault, then issues a \
             call at once and times it until it completes. Initiator and target use the \
             row's detection bound (`InitiatorConfig::with_detection_bound`, \
             `TargetOptions::socket_detection_bound`); default options otherwise.\n\
             - **reset**: the proxy closes the connection with RST both ways; the initiator \
             reconnects at once and recovers the session (stateful).\n\
             - **blackhole**: the proxy stops forwarding and keeps both sockets open; only \
             the detection bound notices, then the initiator reconnects through the proxy \
             and recovers the session.\n\
             - **graceful restart**: `Target::shutdown(0, Some(0))` (no time left up, no \
             hold), then a new target with no session state on the same port. Timed from \
             the old target's stop to the completion of a retry-safe call \
             (`CallOptions::RETRY_SAFE`) issued at that moment: the initiator finds its \
             session gone and re-issues the call on a new one (stateless recovery).\n\
             - **recovered** counts the sessions the initiator recovered on the target \
             (stateful) and those it replaced because the target had lost them (stateless), \
             from `Initiator::stats`: one per trial shows every trial took the path it \
             names.\n\
             - p99 is the nearest-rank percentile: below 100 trials it is the maximum.\n\n\
             ## Targets\n\n\
             From the benchmark issue; reported, not asserted: p99 at most 50 ms after a \
             reset and at most the detection bound + 50 ms after a blackhole. The issue sets \
             none for the restart.\n",
        );
        md
    }
}
