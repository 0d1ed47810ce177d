//! The multiconn scenario: throughput of one session with 1, 2 and 4
//! connections (PROTOCOL.md §17) where one connection is the limit.
//!
//! Both sides run in this process: a [`Target`] whose service echoes the
//! payload, behind the chaos proxy, and one [`Initiator`] session per row
//! with `connections` connections through the proxy. Once every connection
//! of the session is open, the proxy limits **each link** to the same
//! bandwidth in each direction (its `bandwidth` fault is per link), so one
//! connection can carry only that much; QD tasks then call the echo back to
//! back for the measured window. The report gives each row's throughput and
//! its ratio to one connection's, and the target's reorder buffer (how many
//! commands waited for an earlier one on another connection, and the most
//! one session held at once) beside the credit window: the cost of keeping
//! one command stream over several connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use holdfast::chaos::{Direction, FaultKind, FaultSpec, Proxy, Scope};
use holdfast::proto::Spread;
use holdfast::{
    service_fn, Endpoint, EndpointConnector, Initiator, InitiatorOptions, Request, Target,
    TargetOptions,
};
use serde::Serialize;
use tokio::time::Instant;

use super::table::{num, size, Table};
use super::{Check, Machine, Mode};

/// Connections per session, one row each.
const CONNECTIONS: [u32; 3] = [1, 2, 4];

/// Payload of each call (echoed back).
const PAYLOAD: usize = 16 << 10;

/// Calls outstanding at once.
const DEPTH: usize = 64;

/// The limit of each link, each direction, in bytes per second.
const LINK_BYTES_PER_S: u64 = 2 << 20;

/// One row: a number of connections.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MulticonnRow {
    /// Connections of the session.
    pub(crate) connections: u32,
    /// How commands spread over them.
    pub(crate) spread: &'static str,
    /// True when one link is limited to an eighth of the others' rate.
    pub(crate) one_slow_link: bool,
    /// Calls completed in the window.
    pub(crate) ops: u64,
    /// Payload bytes echoed per second (one direction), in MiB.
    pub(crate) mib_per_s: f64,
    /// Throughput over the one-connection row's.
    pub(crate) ratio: f64,
    /// Commands that waited in the target's reorder buffer.
    pub(crate) reordered: u64,
    /// The most commands the session's reorder buffer held at once.
    pub(crate) reorder_peak: u64,
    /// The targets that apply to this row.
    pub(crate) targets: Vec<Check>,
}

/// The whole scenario.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MulticonnReport {
    /// How long the runs were.
    pub(crate) mode: Mode,
    /// Measured window per row, in seconds.
    pub(crate) window_seconds: f64,
    /// The limit of each link, each direction, in bytes per second.
    pub(crate) link_bytes_per_s: u64,
    /// Payload per call, in bytes.
    pub(crate) payload_bytes: usize,
    /// Calls outstanding at once.
    pub(crate) depth: usize,
    /// The session's credit window (the reorder buffer's bound).
    pub(crate) credits: u32,
    /// One row per connection count.
    pub(crate) rows: Vec<MulticonnRow>,
}

/// The measured window per row.
fn window(mode: Mode) -> Duration {
    match mode {
        Mode::Smoke => Duration::from_millis(300),
        Mode::Quick => Duration::from_secs(3),
        Mode::Full => Duration::from_secs(10),
    }
}

/// Runs every row.
pub(crate) async fn run(mode: Mode, progress: bool) -> anyhow::Result<MulticonnReport> {
    let window = window(mode);
    let credits = InitiatorOptions::default().protocol.credits;
    let mut rows: Vec<MulticonnRow> = Vec::new();
    for (i, &connections) in CONNECTIONS.iter().enumerate() {
        if progress {
            eprintln!(
                "bench multiconn: {connections} connection(s) at {}/s per link ({}/{})",
                size(LINK_BYTES_PER_S as usize),
                i + 1,
                CONNECTIONS.len()
            );
        }
        let mut row = measure(connections, Spread::LeastOutstanding, false, window).await?;
        let base = rows.first().map_or(row.mib_per_s, |r| r.mib_per_s);
        row.ratio = if base > 0.0 {
            row.mib_per_s / base
        } else {
            0.0
        };
        if connections > 1 {
            // Near-linear scaling: at least 80% of n times one connection.
            let want = 0.8 * f64::from(connections);
            row.targets.push(Check {
                target: format!("throughput >= {want:.1}x one connection"),
                met: row.ratio >= want,
            });
        }
        rows.push(row);
    }
    // One stream over unequal links: the spread policy decides how much
    // waits behind the slow one (in the reorder buffer, holding credits).
    for spread in [Spread::LeastOutstanding, Spread::RoundRobin] {
        if progress {
            eprintln!("bench multiconn: 4 connections, one at 1/8 of the rate, {spread:?}");
        }
        let mut row = measure(4, spread, true, window).await?;
        let base = rows.first().map_or(row.mib_per_s, |r| r.mib_per_s);
        row.ratio = if base > 0.0 {
            row.mib_per_s / base
        } else {
            0.0
        };
        rows.push(row);
    }
    Ok(MulticonnReport {
        mode,
        window_seconds: window.as_secs_f64(),
        link_bytes_per_s: LINK_BYTES_PER_S,
        payload_bytes: PAYLOAD,
        depth: DEPTH,
        credits,
        rows,
    })
}

/// One row: a fresh target, proxy and session with `connections`.
async fn measure(
    connections: u32,
    spread: Spread,
    one_slow_link: bool,
    window: Duration,
) -> anyhow::Result<MulticonnRow> {
    let echo = service_fn(|req: Request| {
        std::future::ready(Ok::<_, std::convert::Infallible>(req.payload))
    });
    let target = Target::serve(
        &[Endpoint::Tcp(([127, 0, 0, 1], 0).into())],
        TargetOptions::default(),
        echo,
    )
    .await
    .context("could not start the holdfast target on 127.0.0.1")?;
    let Some(Endpoint::Tcp(addr)) = target.endpoints().first().cloned() else {
        return Err(anyhow!("the target bound no TCP endpoint"));
    };
    let proxy = Proxy::start(addr)
        .await
        .context("could not start the chaos proxy on 127.0.0.1")?;
    let init = Initiator::start(
        Arc::new(EndpointConnector::new(
            Endpoint::Tcp(proxy.addr()),
            Duration::from_secs(2),
        )),
        InitiatorOptions::default().with_connections(connections, spread),
    );
    init.call(Bytes::from_static(b"hello"))
        .await
        .map_err(|e| anyhow!("the first call failed: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.open_links() < connections as usize {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "only {} of {connections} connections joined within 10 s",
                proxy.open_links()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let limited = proxy.apply(FaultSpec::new(
        FaultKind::Bandwidth {
            bytes_per_sec: LINK_BYTES_PER_S,
        },
        Direction::Both,
        Scope::All,
    ));
    if limited != connections as usize {
        return Err(anyhow!(
            "the bandwidth limit reached {limited} of {connections} links"
        ));
    }
    if one_slow_link {
        proxy.apply(FaultSpec::new(
            FaultKind::Bandwidth {
                bytes_per_sec: LINK_BYTES_PER_S / 8,
            },
            Direction::Both,
            Scope::Newest,
        ));
    }
    let before = target.stats().await.unwrap_or_default();
    let ops = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + window;
    let data = Bytes::from(vec![0x5a; PAYLOAD]);
    let mut tasks = Vec::with_capacity(DEPTH);
    for _ in 0..DEPTH {
        let (init, ops, data) = (init.clone(), ops.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                match init.call(data.clone()).await {
                    Ok(_) if Instant::now() <= end => {
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(anyhow!("a call failed: {e}")),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a load task panicked")??;
    }
    let seconds = window.as_secs_f64();
    let after = target.stats().await.unwrap_or_default();
    let ops = ops.load(Ordering::Relaxed);
    let _ = init.close().await;
    target.shutdown(Duration::ZERO, None).await;
    Ok(MulticonnRow {
        connections,
        spread: match spread {
            Spread::LeastOutstanding => "least-outstanding",
            Spread::RoundRobin => "round-robin",
        },
        one_slow_link,
        ops,
        mib_per_s: ops as f64 * PAYLOAD as f64 / seconds / f64::from(1 << 20),
        ratio: 1.0,
        reordered: after.reordered.saturating_sub(before.reordered),
        reorder_peak: after.reorder_peak,
        targets: Vec::new(),
    })
}

impl MulticonnReport {
    fn table_of(&self, markdown: bool) -> Table {
        let mut t = Table::new(&[
            "connections",
            "links",
            "spread",
            "calls",
            "MiB/s",
            "vs 1 connection",
            "reordered",
            "reorder peak",
            "targets",
        ]);
        for r in &self.rows {
            t.push(vec![
                r.connections.to_string(),
                if r.one_slow_link {
                    "one at 1/8".to_owned()
                } else {
                    "equal".to_owned()
                },
                r.spread.to_owned(),
                r.ops.to_string(),
                num(r.mib_per_s, 2),
                format!("{}x", num(r.ratio, 2)),
                r.reordered.to_string(),
                format!("{} of {}", r.reorder_peak, self.credits),
                Check::cell(&r.targets, markdown),
            ]);
        }
        t
    }

    /// The terminal table.
    pub(crate) fn table(&self) -> String {
        self.table_of(false).text()
    }

    /// The Markdown report.
    pub(crate) fn markdown(&self, machine: &Machine) -> String {
        let mut md = String::from("# holdfast bench multiconn\n\n");
        md.push_str(&machine.markdown(self.mode));
        md.push_str(&format!(
            "- one session, 1, 2 and 4 connections through the chaos proxy, each link limited to \
             {}/s each way (the proxy's per-link `bandwidth` fault); {} echo calls at queue depth \
             {} for {} s per row; credit window {}\n\n",
            size(self.link_bytes_per_s as usize),
            size(self.payload_bytes),
            self.depth,
            self.window_seconds,
            self.credits,
        ));
        md.push_str(&self.table_of(true).markdown());
        md.push_str(
            "\n`reordered`: commands that arrived ahead of an earlier one travelling on another \
             connection and waited in the target's reorder buffer (PROTOCOL.md §17.3); \
             `reorder peak`: the most it held at once, against the credit window that bounds it. \
             The last two rows limit one of four links to an eighth of the rate: the session \
             delivers in order, so every command sent on the slow link holds back those after it \
             (they wait in the reorder buffer, holding credits), whatever the spread; \
             round-robin sends the slow link a fixed share, as per-connection sub-streams with \
             fixed credit shares would. \
             Produced by `holdfast bench multiconn`.\n",
        );
        md
    }
}
