//! Recovery after `kill -9` for the durable scenario: a `holdfast target
//! --service log --state-dir` child process holding N retained sessions
//! (N−1 whose initiators are gone, one probe) is killed with SIGKILL and
//! started again with the same command; measured from the new process's
//! start to its `serving` line and to the probe's first completed command.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use holdfast::{Endpoint, EndpointConnector, Initiator, InitiatorOptions};
use serde::Serialize;
use tokio::time::Instant;

use super::child::Server;
use super::table::{num, rank_ms, Table};
use super::Mode;
use crate::logsvc::{counter_value, INCREMENT};
use crate::units::parse_endpoint;

/// How long the probe's first command after a restart may take.
const CALL_LIMIT: Duration = Duration::from_secs(120);

/// One count of retained sessions.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RecoveryRow {
    /// Sessions in the store at the kill (the probe's included).
    pub(crate) sessions: usize,
    /// Kill and restart cycles measured.
    pub(crate) trials: usize,
    /// Median time from the restart to the `serving` line, in ms.
    pub(crate) to_serving_p50_ms: f64,
    /// Median time from the restart to the probe's first completed
    /// command, in ms.
    pub(crate) to_first_command_p50_ms: f64,
    /// The slowest time to the first completed command, in ms.
    pub(crate) to_first_command_max_ms: f64,
    /// What the restarted target reported recovering (its `recovered`
    /// object), from the last trial.
    pub(crate) recovered: Option<serde_json::Value>,
}

/// The session counts and trials of a mode.
fn plan(mode: Mode) -> (&'static [usize], usize) {
    match mode {
        Mode::Smoke => (&[1, 10], 1),
        Mode::Quick => (&[1, 100, 1000], 2),
        Mode::Full => (&[1, 100, 10_000], 5),
    }
}

/// Runs every row; state dirs go under `dir`.
pub(crate) async fn run(
    mode: Mode,
    progress: bool,
    dir: &Path,
) -> anyhow::Result<Vec<RecoveryRow>> {
    let (counts, trials) = plan(mode);
    let mut rows = Vec::new();
    for &n in counts {
        if progress {
            eprintln!("bench durable: recovery after kill -9 with {n} retained sessions");
        }
        let state = dir.join(format!("recovery-{n}"));
        rows.push(row(n, trials, &state).await?);
        let _ = std::fs::remove_dir_all(&state);
    }
    Ok(rows)
}

/// `holdfast target --service log --state-dir STATE --listen LISTEN`.
async fn start(
    state: &Path,
    listen: &str,
    n: usize,
) -> anyhow::Result<(Server, Endpoint, serde_json::Value)> {
    let max = (n + 16).to_string();
    let state = state.display().to_string();
    let args = [
        "target",
        "--service",
        "log",
        "--state-dir",
        &state,
        "--listen",
        listen,
        "--retain",
        "600s",
        "--control",
        "none",
        "--max-sessions",
        &max,
        "--max-sessions-per-source",
        &max,
    ];
    let (server, event) = Server::holdfast("holdfast target --state-dir", &args).await?;
    let endpoint = event["endpoints"][0]
        .as_str()
        .with_context(|| format!("the target announced no endpoint: {event}"))?;
    let endpoint = parse_endpoint(endpoint).map_err(|e| anyhow!("the target's endpoint: {e}"))?;
    Ok((server, endpoint, event))
}

/// One increment, within [`CALL_LIMIT`].
async fn increment(init: &Initiator) -> anyhow::Result<u64> {
    match tokio::time::timeout(CALL_LIMIT, init.call(Bytes::from_static(INCREMENT))).await {
        Ok(Ok(v)) => counter_value(&v).map_err(anyhow::Error::msg),
        Ok(Err(e)) => Err(anyhow!("the probe's increment failed: {e}")),
        Err(_) => Err(anyhow!(
            "the probe's increment did not complete within {CALL_LIMIT:?}"
        )),
    }
}

/// Sessions opened at once while filling the store.
const OPEN_CONCURRENCY: usize = 100;

/// Opens `n` sessions to `endpoint`, each with one completed increment,
/// and abandons each at once (its connection dropped without a goodbye):
/// the target retains them, and at most [`OPEN_CONCURRENCY`] connections
/// are open at a time.
async fn retain_sessions(endpoint: &Endpoint, n: usize) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    let mut opened = 0;
    while opened < n {
        while started < n && set.len() < OPEN_CONCURRENCY {
            let connector = EndpointConnector::new(endpoint.clone(), Duration::from_secs(2));
            set.spawn(async move {
                let init = Initiator::start(Arc::new(connector), InitiatorOptions::default());
                let done = increment(&init).await;
                init.abort().await;
                done
            });
            started += 1;
        }
        if let Some(done) = set.join_next().await {
            done.context("a session task panicked")?
                .with_context(|| format!("opening session {} of {n}", opened + 1))?;
            opened += 1;
        }
    }
    Ok(())
}

/// `trials` kill -9 + restart cycles with `n` retained sessions.
async fn row(n: usize, trials: usize, state: &Path) -> anyhow::Result<RecoveryRow> {
    let (mut server, endpoint, _) = start(state, "127.0.0.1:0", n).await?;
    let Endpoint::Tcp(addr) = endpoint else {
        bail!("the target listens on {endpoint}, not TCP");
    };
    retain_sessions(&endpoint, n.saturating_sub(1)).await?;
    // Retry every few ms while the target is down, so the reconnect adds
    // little to what is measured.
    let mut options = InitiatorOptions::default();
    options.backoff_initial = Duration::from_millis(1);
    options.backoff_max = Duration::from_millis(5);
    let probe = Initiator::start(
        Arc::new(EndpointConnector::new(
            endpoint.clone(),
            Duration::from_secs(2),
        )),
        options,
    );
    let mut last = increment(&probe).await?;
    let mut serving = Vec::new();
    let mut first = Vec::new();
    let mut recovered = None;
    for _ in 0..trials {
        server.stop().await;
        let began = Instant::now();
        let (s, _, event) = start(state, &addr.to_string(), n).await?;
        serving.push(began.elapsed());
        server = s;
        let value = increment(&probe).await?;
        first.push(began.elapsed());
        if value != last + 1 {
            bail!(
                "after the restart the probe's increment returned {value}, not {}: the \
                 counter was not recovered with the session",
                last + 1
            );
        }
        last = value;
        recovered = event.get("recovered").cloned();
    }
    let _ = probe.close().await;
    server.stop().await;
    serving.sort_unstable();
    first.sort_unstable();
    Ok(RecoveryRow {
        sessions: n,
        trials,
        to_serving_p50_ms: rank_ms(&serving, 0.5),
        to_first_command_p50_ms: rank_ms(&first, 0.5),
        to_first_command_max_ms: rank_ms(&first, 1.0),
        recovered,
    })
}

/// The rows as a table.
pub(crate) fn table(rows: &[RecoveryRow], _markdown: bool) -> Table {
    let mut t = Table::new(&[
        "retained sessions",
        "trials",
        "to serving p50 ms",
        "to first command p50 ms",
        "max ms",
    ]);
    for r in rows {
        t.push(vec![
            r.sessions.to_string(),
            r.trials.to_string(),
            num(r.to_serving_p50_ms, 1),
            num(r.to_first_command_p50_ms, 1),
            num(r.to_first_command_max_ms, 1),
        ]);
    }
    t
}
