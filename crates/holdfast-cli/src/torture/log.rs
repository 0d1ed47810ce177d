//! The exactly-once torture mode: workers increment a counter (commands,
//! NOT idempotent) and send numbered one-way messages through the fault
//! proxy to the log service (`crate::logsvc`), in-process or in a running
//! `holdfast target --service log`. Afterwards the counter must have grown
//! by exactly the successful increments and every sender's stream must hold
//! each acknowledged message exactly once, in order; the service checks the
//! streams as they arrive and reports through a query over the session.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use holdfast::{Endpoint, Initiator, Target, TargetOptions};
use serde::Serialize;

use crate::logsvc::{counter_value, message, LogService, Report, INCREMENT, QUERY};
use crate::verify::connect_through_proxy;
use crate::verify::faults::{inject, schedule, time_to_recover};
use crate::verify::workload::Tally;

/// What the log mode found.
#[derive(Debug, Serialize)]
pub(crate) struct LogSummary {
    pub(crate) seed: u64,
    pub(crate) duration_s: f64,
    pub(crate) workers: usize,
    pub(crate) increments_ok: u64,
    pub(crate) messages_ok: u64,
    pub(crate) counter: u64,
    pub(crate) faults: BTreeMap<String, u64>,
    pub(crate) reconnects: u64,
    pub(crate) recoveries: u64,
    pub(crate) resent: u64,
    pub(crate) answered_from_cache: u64,
    pub(crate) failed_operations: u64,
    pub(crate) counter_violations: u64,
    pub(crate) messages_lost: u64,
    pub(crate) messages_duplicated: u64,
    pub(crate) messages_out_of_order: u64,
    /// Requests the log service refused as undefined (must stay 0).
    pub(crate) refused_requests: u64,
    pub(crate) problems: Vec<String>,
}

impl LogSummary {
    /// True when every invariant held.
    pub(crate) fn passed(&self) -> bool {
        self.failed_operations == 0
            && self.counter_violations == 0
            && self.messages_lost == 0
            && self.messages_duplicated == 0
            && self.messages_out_of_order == 0
            && self.refused_requests == 0
    }

    /// The table a person reads.
    pub(crate) fn table(&self) -> String {
        let faults: u64 = self.faults.values().sum();
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let rows = [
            (
                "duration",
                format!("{:.1} s, seed {}", self.duration_s, self.seed),
            ),
            (
                "operations",
                format!(
                    "{} increments and {} one-way messages acknowledged, {} workers",
                    self.increments_ok, self.messages_ok, self.workers
                ),
            ),
            (
                "counter",
                format!("{} (must equal the increments)", self.counter),
            ),
            (
                "faults injected",
                format!("{faults} ({})", kinds.join(", ")),
            ),
            (
                "recoveries",
                format!(
                    "{} reconnects, {} stateful recoveries, {} resent, {} answered from cache",
                    self.reconnects, self.recoveries, self.resent, self.answered_from_cache
                ),
            ),
            ("failed operations", self.failed_operations.to_string()),
            ("counter violations", self.counter_violations.to_string()),
            ("messages lost", self.messages_lost.to_string()),
            ("messages duplicated", self.messages_duplicated.to_string()),
            (
                "messages out of order",
                self.messages_out_of_order.to_string(),
            ),
            ("refused requests", self.refused_requests.to_string()),
        ];
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("  {k:<22} {v}\n"));
        }
        out.push_str(if self.passed() {
            "\nPASS: every increment executed exactly once; every message arrived once, in order.\n"
        } else {
            "\nFAIL: an invariant broke; see the problems above.\n"
        });
        out
    }
}

/// The log mode's settings.
pub(crate) struct LogScenario {
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
    pub(crate) faults: u32,
    pub(crate) workers: usize,
    pub(crate) detection: Duration,
    /// A running `holdfast target --service log`; `None` starts one here.
    pub(crate) target: Option<SocketAddr>,
}

/// Runs the log mode.
pub(crate) async fn run(
    s: &LogScenario,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<LogSummary> {
    let (local, addr) = match s.target {
        Some(addr) => (None, addr),
        None => {
            let target = Target::serve(
                &[Endpoint::Tcp("127.0.0.1:0".parse().context("address")?)],
                TargetOptions::default(),
                LogService::default().service(),
            )
            .await
            .context("could not start the in-process target")?;
            let Some(Endpoint::Tcp(addr)) = target.endpoints().first().cloned() else {
                anyhow::bail!("the target bound no TCP endpoint");
            };
            (Some(target), addr)
        }
    };
    // Sender ids unique to this run, so runs against one target don't mix.
    let base =
        u32::try_from((s.seed.wrapping_mul(0x9e37_79b9) ^ now_nanos()) & 0x7fff_0000).unwrap_or(0);
    let (proxy, initiator) = connect_through_proxy(addr, s.detection, s.seed).await?;

    let before = query(&initiator)
        .await
        .with_context(|| format!("the target at {addr} did not answer a log-service query"))?;

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let increments = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..s.workers {
        let (init, stop, tally, increments) = (
            initiator.clone(),
            stop.clone(),
            tally.clone(),
            increments.clone(),
        );
        let mut rng = s.seed ^ ((w as u64 + 1) << 32) | 1;
        workers.push(tokio::spawn(async move {
            let worker = base + w as u32;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let ok = if rng % 10 < 6 {
                    let r = init.call(Bytes::from_static(INCREMENT)).await;
                    if r.is_ok() {
                        increments.fetch_add(1, Ordering::Relaxed);
                    }
                    // A refusal (or any answer that is not a counter) is
                    // a failure of the check, not a success.
                    r.map_err(|e| e.to_string())
                        .and_then(|b| counter_value(&b).map(drop))
                } else {
                    let r = init.send(message(worker, sent + 1)).await;
                    if r.is_ok() {
                        sent += 1;
                    }
                    r.map_err(|e| e.to_string())
                };
                match ok {
                    Ok(()) => {
                        tally.ops.fetch_add(1, Ordering::Relaxed);
                        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        tally.last_completion_ns.fetch_max(ns, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        tally.problem(format!("worker {worker}: an operation failed: {e}"));
                        // A failed send may or may not have arrived: stop
                        // this worker's stream so the check stays exact.
                        return (worker, sent, false);
                    }
                }
            }
            (worker, sent, true)
        }));
    }

    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    for (at, fault) in schedule(s.duration, s.faults, false, s.seed) {
        wait(start + at, &tally, progress, &injected).await;
        let Some(since) = inject(&proxy, fault) else {
            continue;
        };
        *injected.entry(fault.name().to_owned()).or_default() += 1;
        if fault.is_outage() {
            let limit = Duration::from_secs(10) + s.detection;
            time_to_recover(&tally, start, since, limit, fault).await;
        }
    }
    wait(start + s.duration, &tally, progress, &injected).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = HashMap::new();
    for w in workers {
        let (worker, n, clean) = w.await.context("a worker panicked")?;
        sent.insert(worker, (n, clean));
    }
    let stats = initiator.stats().await.unwrap_or_default();
    // The query is a command, answered after everything sent before it.
    let after = query(&initiator)
        .await
        .context("the final log-service query failed")?;
    initiator
        .close()
        .await
        .context("the session did not close cleanly")?;
    let cache = match &local {
        Some(t) => t.stats().await.unwrap_or_default().answered_from_cache,
        None => 0,
    };
    let elapsed = start.elapsed();

    let mut problems = tally
        .problems
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let failed = tally.failed.load(Ordering::Relaxed);
    let increments_ok = increments.load(Ordering::Relaxed);
    let counter = after.counter.saturating_sub(before.counter);
    // A failed increment may have executed: allow that many extra.
    let counter_violations = u64::from(counter < increments_ok || counter > increments_ok + failed);
    if counter_violations > 0 {
        problems.push(format!(
            "the counter grew by {counter} but {increments_ok} increments succeeded ({failed} failed)"
        ));
    }
    let (mut lost, mut duplicated, mut out_of_order) = (0u64, 0u64, 0u64);
    for (&worker, &(n, clean)) in &sent {
        let stream = after.streams.get(&worker).cloned().unwrap_or_default();
        duplicated += stream.repeated;
        out_of_order += stream.skipped;
        if let Some(v) = &stream.first_violation {
            problems.push(format!("sender {worker}: {v}"));
        }
        // A sender that stopped on a failure may have had one more arrive.
        let arrived_in_order = stream.next.saturating_sub(1);
        let extra_allowed = u64::from(!clean);
        if arrived_in_order < n {
            lost += n - arrived_in_order;
            problems.push(format!(
                "sender {worker}: {n} messages acknowledged but only 1..={arrived_in_order} arrived in order"
            ));
        } else if arrived_in_order > n + extra_allowed {
            duplicated += arrived_in_order - n - extra_allowed;
            problems.push(format!(
                "sender {worker}: {arrived_in_order} messages arrived but only {n} were sent"
            ));
        }
    }
    let refused_requests = after.refused.saturating_sub(before.refused);
    if refused_requests > 0 {
        problems.push(format!(
            "the log service refused {refused_requests} requests it does not define"
        ));
    }
    let messages_ok = sent.values().map(|(n, _)| n).sum();
    problems.truncate(40);
    Ok(LogSummary {
        seed: s.seed,
        duration_s: elapsed.as_secs_f64(),
        workers: s.workers,
        increments_ok,
        messages_ok,
        counter,
        faults: injected,
        reconnects: stats.disconnects,
        recoveries: stats.recoveries,
        resent: stats.resent,
        answered_from_cache: cache,
        failed_operations: failed,
        counter_violations,
        messages_lost: lost,
        messages_duplicated: duplicated,
        messages_out_of_order: out_of_order,
        refused_requests,
        problems,
    })
}

/// Asks the log service for its report.
async fn query(initiator: &Initiator) -> anyhow::Result<Report> {
    let reply = initiator
        .call(Bytes::from_static(QUERY))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    serde_json::from_slice(&reply).context("the target's reply is not a log-service report")
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
}

async fn wait(
    deadline: Instant,
    tally: &Tally,
    progress: &indicatif::ProgressBar,
    injected: &BTreeMap<String, u64>,
) {
    loop {
        let faults: u64 = injected.values().sum();
        progress.set_message(format!(
            "{} ops, {} faults injected, {} failed",
            tally.ops.load(Ordering::Relaxed),
            faults,
            tally.failed.load(Ordering::Relaxed),
        ));
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(200))).await;
    }
}
