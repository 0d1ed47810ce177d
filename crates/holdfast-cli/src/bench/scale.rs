//! The scale scenario: what idle sessions cost a target in memory, how
//! fairly it serves many busy ones, and whether memory stays flat through a
//! long fault-injected run.
//!
//! * **idle**: a `holdfast target --service log` runs as a child process, so
//!   its resident memory (`VmRSS` in `/proc/PID/status`) is its own. Once it
//!   has settled, this process opens sessions to it (one [`Initiator`] each,
//!   each making one call so the session exists on the target, at most
//!   [`OPEN_CONCURRENCY`] opening at once): the smaller count first, then
//!   more up to the larger, so the larger count includes the smaller. After
//!   each step the target settles again; its growth over its start, divided
//!   by the sessions open, is the cost of an idle session. This process's
//!   own growth per session (the initiator side) is reported beside it.
//! * **active**: the sessions beyond the active count are dropped; each of
//!   the rest calls back to back at queue depth 1 for a window. Throughput,
//!   calls per session, and Jain's fairness index J = (Σx)² / (n·Σx²)
//!   (1 when every session completed as many calls, 1/n when one did all).
//! * **soak**: `holdfast torture --mode log` (initiator, fault proxy and
//!   target in one child process) runs with faults injected, its RSS sampled
//!   at a fixed interval; it must pass its own exactly-once checks.
//!
//! Both ends of a session hold a socket each, and the two processes split
//! them, so each needs one descriptor per session; a count above the
//! descriptor limit is capped, and the report says so.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use holdfast::{Endpoint, EndpointConnector, Initiator, InitiatorOptions};
use tokio::process::Command;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::child::{rss_kib, Server};
use super::{Check, Mode};
use crate::logsvc::INCREMENT;
use crate::units::parse_endpoint;

mod report;

pub(crate) use report::{ActiveRow, IdleRow, RssSample, ScaleReport, SoakRow};

/// The bound on the target's resident memory per idle session, KiB.
pub(crate) const IDLE_KIB_TARGET: f64 = 16.0;

/// The bound on Jain's fairness index with many active sessions.
const JAIN_TARGET: f64 = 0.9;

/// Sessions opening at once, so connects and logins do not time out.
const OPEN_CONCURRENCY: usize = 200;

/// Descriptors kept free for everything but the sessions' sockets.
const FD_MARGIN: u64 = 256;

/// How long one call may take before the benchmark gives up.
const CALL_LIMIT: Duration = Duration::from_secs(20);

/// The initiators' detection bound (TCP_USER_TIMEOUT of their sockets).
const DETECTION: Duration = Duration::from_secs(2);

/// How much longer than asked the soak run may take (its final checks).
const SOAK_SLACK: Duration = Duration::from_secs(120);

/// The sizes of one run.
struct Plan {
    /// Idle session counts, smaller first.
    idle: [usize; 2],
    /// Sessions calling at once in the active phase.
    active: usize,
    /// The active phase's measured window.
    window: Duration,
    /// The fault-injected run's length.
    soak: Duration,
}

impl Plan {
    /// The sizes for `mode`.
    fn of(mode: Mode) -> Plan {
        let (idle, active, window, soak) = match mode {
            Mode::Smoke => ([100, 300], 50, Duration::from_millis(300), 3),
            Mode::Quick => ([1_000, 10_000], 1_000, Duration::from_secs(3), 30),
            Mode::Full => ([1_000, 10_000], 1_000, Duration::from_secs(10), 600),
        };
        let soak = Duration::from_secs(soak);
        Plan {
            idle,
            active,
            window,
            soak,
        }
    }

    /// The active phase's unmeasured warm-up: a sixth of the window.
    fn warmup(&self) -> Duration {
        self.window / 6
    }

    /// The fault-injected run's samples before this are warm-up: a sixth of
    /// the run, at most 10 s.
    fn soak_warmup(&self) -> Duration {
        (self.soak / 6).min(Duration::from_secs(10))
    }

    /// The sampling interval: a second, a quarter of one for short runs.
    fn sample_every(&self) -> Duration {
        if self.soak < Duration::from_secs(10) {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        }
    }
}

/// Runs the three parts.
pub(crate) async fn run(mode: Mode, progress: bool) -> anyhow::Result<ScaleReport> {
    let plan = Plan::of(mode);
    let mut notes = Vec::new();
    let mut counts = plan.idle;
    if let Some(limit) = open_files_limit() {
        let cap = usize::try_from(limit.saturating_sub(FD_MARGIN).max(1)).unwrap_or(usize::MAX);
        for c in &mut counts {
            if *c > cap {
                notes.push(format!(
                    "{c} sessions need {c} descriptors per process; the limit is {limit}, \
                     so {cap} were opened (raise `ulimit -n` for the full count)"
                ));
                *c = cap;
            }
        }
    }
    let say = |s: String| {
        if progress {
            eprintln!("bench scale: {s}");
        }
    };

    say("starting a target (holdfast target --service log) as a child process".to_owned());
    let (target, pid, endpoint) = spawn_target(counts[1]).await?;
    let start_rss = settled_rss(pid).await?;
    let own_rss = rss_kib("self")?;
    let mut sessions: Vec<Initiator> = Vec::with_capacity(counts[1]);
    let mut idle = Vec::new();
    for &n in &counts {
        let add = n.saturating_sub(sessions.len());
        say(format!("opening {add} more sessions ({n} in all)"));
        let opened = Instant::now();
        open_sessions(&endpoint, add, &mut sessions).await?;
        let opened_per_s = add as f64 / opened.elapsed().as_secs_f64().max(1e-9);
        let target_rss = settled_rss(pid).await?;
        let own = rss_kib("self")?;
        let per_session = |grew: u64| grew as f64 / n.max(1) as f64;
        let target_kib = per_session(target_rss.saturating_sub(start_rss));
        idle.push(IdleRow {
            sessions: n,
            target_rss_start_mib: mib(start_rss),
            target_rss_mib: mib(target_rss),
            target_kib_per_session: target_kib,
            initiator_kib_per_session: per_session(own.saturating_sub(own_rss)),
            opened_per_s,
            target: Check {
                target: format!("<= {IDLE_KIB_TARGET} KiB per idle session"),
                met: target_kib <= IDLE_KIB_TARGET,
            },
        });
    }

    let active_n = plan.active.min(sessions.len());
    sessions.truncate(active_n);
    // Let the target see the dropped sessions' connections close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    say(format!(
        "{active_n} sessions calling at QD 1 for {:.1} s",
        plan.window.as_secs_f64()
    ));
    let active = active(&sessions, plan.warmup(), plan.window).await?;
    drop(sessions);
    drop(target);

    say(format!(
        "a fault-injected torture run for {} s, its RSS sampled",
        plan.soak.as_secs()
    ));
    let soak = soak(&plan, progress).await?;
    Ok(ScaleReport {
        mode,
        idle,
        active,
        soak,
        notes,
    })
}

/// KiB to MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The resident memory of `pid` once it stops moving: two samples 200 ms
/// apart within 0.5% of each other (or the last of 25).
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let pid = pid.to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut last = rss_kib(&pid)?;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss_kib(&pid)?;
        if now.abs_diff(last) <= last / 200 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// This program with `args`, its logs kept to errors (stderr is the
/// user's), killed when dropped.
fn holdfast(args: &[&str]) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("could not find this program's own path")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Starts `holdfast target --service log` for `max_sessions`; returns it,
/// its process id and the endpoint it announced.
async fn spawn_target(max_sessions: usize) -> anyhow::Result<(Server, u32, Endpoint)> {
    let max = max_sessions.to_string();
    let args = [
        "target",
        "--service",
        "log",
        "--listen",
        "127.0.0.1:0",
        "--max-sessions",
        &max,
        // Every session comes from 127.0.0.1.
        "--max-sessions-per-source",
        &max,
    ];
    let (server, event) = Server::holdfast("holdfast target --service log", &args).await?;
    let endpoint = event["endpoints"][0]
        .as_str()
        .with_context(|| format!("the target announced no endpoint: {event}"))?;
    let endpoint = parse_endpoint(endpoint).map_err(|e| anyhow!("the target's endpoint: {e}"))?;
    let pid = server.pid()?;
    Ok((server, pid, endpoint))
}

/// Opens `n` more sessions to `endpoint`, each with one completed call, at
/// most [`OPEN_CONCURRENCY`] at once, and adds them to `sessions`.
async fn open_sessions(
    endpoint: &Endpoint,
    n: usize,
    sessions: &mut Vec<Initiator>,
) -> anyhow::Result<()> {
    let mut set = JoinSet::new();
    let mut started = 0;
    while started < n || !set.is_empty() {
        while started < n && set.len() < OPEN_CONCURRENCY {
            let connector = EndpointConnector::new(endpoint.clone(), DETECTION);
            set.spawn(async move {
                let init = Initiator::start(Arc::new(connector), InitiatorOptions::default());
                call(&init).await.map(|()| init)
            });
            started += 1;
        }
        if let Some(opened) = set.join_next().await {
            let init = opened
                .context("a session task panicked")?
                .with_context(|| format!("opening session {} of {n}", sessions.len() + 1))?;
            sessions.push(init);
        }
    }
    Ok(())
}

/// One increment on the log service, within [`CALL_LIMIT`].
async fn call(init: &Initiator) -> anyhow::Result<()> {
    match tokio::time::timeout(CALL_LIMIT, init.call(Bytes::from_static(INCREMENT))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("a call failed: {e}")),
        Err(_) => Err(anyhow!("a call did not complete within {CALL_LIMIT:?}")),
    }
}

/// Jain's fairness index of `x`: 1 when all are equal, 1/n when one value
/// holds everything; 0 when there is nothing.
fn jain(x: &[u64]) -> f64 {
    let sum: f64 = x.iter().map(|&v| v as f64).sum();
    let squares: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    if squares > 0.0 {
        sum * sum / (x.len() as f64 * squares)
    } else {
        0.0
    }
}

/// Every session calls back to back; counts the calls each completes in
/// the window after the warm-up.
async fn active(
    sessions: &[Initiator],
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<ActiveRow> {
    let from = Instant::now() + warmup;
    let until = from + window;
    let tasks: Vec<_> = sessions
        .iter()
        .map(|init| {
            let init = init.clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < until {
                    call(&init).await?;
                    let done = Instant::now();
                    if done >= from && done <= until {
                        calls += 1;
                    }
                }
                Ok::<u64, anyhow::Error>(calls)
            })
        })
        .collect();
    let mut counts = Vec::with_capacity(tasks.len());
    for t in tasks {
        counts.push(t.await.context("an active session's task panicked")??);
    }
    let calls: u64 = counts.iter().sum();
    let j = jain(&counts);
    Ok(ActiveRow {
        sessions: counts.len(),
        window_seconds: window.as_secs_f64(),
        calls,
        ops_per_s: calls as f64 / window.as_secs_f64(),
        min_calls: counts.iter().copied().min().unwrap_or(0),
        mean_calls: calls as f64 / counts.len().max(1) as f64,
        max_calls: counts.iter().copied().max().unwrap_or(0),
        jain: j,
        target: Check {
            target: format!("Jain's index >= {JAIN_TARGET}"),
            met: j >= JAIN_TARGET,
        },
    })
}

/// Runs `holdfast torture --mode log` as a child and samples its RSS until
/// it exits; a failed verification is an error.
async fn soak(plan: &Plan, progress: bool) -> anyhow::Result<SoakRow> {
    let secs = plan.soak.as_secs_f64();
    let duration = format!("{secs}s");
    let args = ["torture", "--mode", "log", "--seed", "1", "--json"];
    let command = format!("holdfast {} --duration {duration}", args.join(" "));
    let child = holdfast(&args)?
        .args(["--duration", &duration])
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{command}`"))?;
    let pid = child
        .id()
        .context("the torture run exited at once")?
        .to_string();
    let output = child.wait_with_output();
    tokio::pin!(output);
    let start = Instant::now();
    let (mut samples, mut next, mut told) = (Vec::new(), start, 0u64);
    let output = loop {
        tokio::select! {
            out = &mut output => {
                break out.with_context(|| format!("could not wait for `{command}`"))?;
            }
            () = tokio::time::sleep_until(next) => {}
        }
        if start.elapsed() > plan.soak + SOAK_SLACK {
            bail!(
                "`{command}` ran past {:?}; stopped it",
                plan.soak + SOAK_SLACK
            );
        }
        // The process may exit between the two looks: then no sample.
        if let Ok(kib) = rss_kib(&pid) {
            let seconds = start.elapsed().as_secs_f64();
            samples.push(RssSample {
                seconds,
                mib: mib(kib),
            });
            if progress && seconds >= (told + 1) as f64 * 30.0 {
                told += 1;
                eprintln!(
                    "bench scale: soak at {seconds:.0} of {secs:.0} s, RSS {:.1} MiB",
                    mib(kib)
                );
            }
        }
        next += plan.sample_every();
    };
    let out = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "`{command}` failed ({}): a verification failure or a crash; its output:\n{out}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let summary: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`{command}` printed no JSON summary:\n{out}"))?;
    let count = |k: &str| summary[k].as_u64().unwrap_or(0);
    let faults = summary["faults"].as_object().map_or(0, |f| {
        f.values().filter_map(serde_json::Value::as_u64).sum()
    });
    let last = *samples
        .last()
        .context("the torture run exited before any RSS sample")?;
    let warm = samples
        .iter()
        .find(|s| s.seconds >= plan.soak_warmup().as_secs_f64());
    let half = samples.iter().find(|s| s.seconds >= last.seconds / 2.0);
    Ok(SoakRow {
        command,
        duration_seconds: secs,
        warmup_seconds: plan.soak_warmup().as_secs_f64(),
        operations: count("increments_ok") + count("messages_ok"),
        faults,
        start_mib: warm.unwrap_or(&last).mib,
        end_mib: last.mib,
        max_mib: samples.iter().map(|s| s.mib).fold(0.0, f64::max),
        second_half_growth_mib: last.mib - half.unwrap_or(&last).mib,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_bounds() {
        assert_eq!(jain(&[5, 5, 5, 5]), 1.0);
        assert!((jain(&[8, 0, 0, 0]) - 0.25).abs() < 1e-12);
        assert_eq!(jain(&[]), 0.0);
        assert_eq!(jain(&[0, 0]), 0.0);
        let j = jain(&[10, 9, 11, 10]);
        assert!(j > 0.99 && j < 1.0);
    }

    #[test]
    fn the_open_files_limit_reads_from_proc() {
        assert!(open_files_limit().expect("open files limit") > 0);
    }
}
