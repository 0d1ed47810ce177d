//! The overhead scenario: what a holdfast session costs over a plain TCP
//! connection, for a request/response echo on 127.0.0.1.
//!
//! Both sides run in this process. holdfast: a [`Target`] whose service
//! echoes the payload and one [`Initiator`] session with QD tasks calling it
//! back to back. The baseline: [`super::baseline`]. Each cell (a payload
//! size and a queue depth) runs a warm-up, then a measured window; a request
//! counts if it completes inside the window, and its latency is from issue
//! to completion.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use holdfast::{
    service_fn, Endpoint, EndpointConnector, Initiator, InitiatorOptions, Request, Target,
    TargetOptions,
};
use serde::Serialize;
use tokio::time::Instant;

use super::baseline::{self, Measured};
use super::table::{histogram, merge_latencies, num, quantile_us, record, size, Table};
use super::{Check, Machine, Mode};

/// The payload sizes, in bytes.
pub(crate) const PAYLOADS: [usize; 4] = [64, 4 << 10, 64 << 10, 1 << 20];

/// The queue depths: requests outstanding at once.
pub(crate) const DEPTHS: [usize; 2] = [1, 32];

/// One side's result for one cell.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Side {
    /// Requests completed in the window.
    pub(crate) ops: u64,
    /// The window, in seconds.
    pub(crate) seconds: f64,
    /// Requests per second.
    pub(crate) ops_per_s: f64,
    /// Payload bytes echoed per second (one direction), in MiB.
    pub(crate) mib_per_s: f64,
    /// Median latency, in microseconds.
    pub(crate) p50_us: f64,
    /// 99th-percentile latency, in microseconds.
    pub(crate) p99_us: f64,
}

impl Side {
    /// Summarises a measurement of `payload`-byte requests.
    pub(crate) fn of(m: &Measured, payload: usize) -> Side {
        let seconds = m.window.as_secs_f64();
        let ops = m.latency.len();
        let ops_per_s = if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        };
        Side {
            ops,
            seconds,
            ops_per_s,
            mib_per_s: ops_per_s * payload as f64 / f64::from(1 << 20),
            p50_us: quantile_us(&m.latency, 0.5),
            p99_us: quantile_us(&m.latency, 0.99),
        }
    }
}

/// One cell: holdfast beside the baseline.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct OverheadRow {
    /// Payload size in bytes.
    pub(crate) payload_bytes: usize,
    /// Queue depth.
    pub(crate) depth: usize,
    /// Through holdfast.
    pub(crate) holdfast: Side,
    /// Over plain TCP.
    pub(crate) baseline: Side,
    /// holdfast's throughput over the baseline's.
    pub(crate) throughput_ratio: f64,
    /// holdfast's median latency minus the baseline's, in microseconds.
    pub(crate) p50_delta_us: f64,
    /// The targets that apply to this cell.
    pub(crate) targets: Vec<Check>,
}

/// The whole scenario.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct OverheadReport {
    /// How long the runs were.
    pub(crate) mode: Mode,
    /// Unmeasured warm-up per cell and side, in seconds.
    pub(crate) warmup_seconds: f64,
    /// Measured window per cell and side, in seconds.
    pub(crate) window_seconds: f64,
    /// One row per payload and depth.
    pub(crate) rows: Vec<OverheadRow>,
}

/// The targets for a cell, judged.
fn checks(payload: usize, depth: usize, ratio: f64, p50_delta_us: f64) -> Vec<Check> {
    let mut checks = Vec::new();
    if payload == 4 << 10 && depth == 32 {
        checks.push(Check {
            target: "throughput >= 0.95x".to_owned(),
            met: ratio >= 0.95,
        });
    }
    if payload == 1 << 20 {
        checks.push(Check {
            target: "throughput >= 0.98x".to_owned(),
            met: ratio >= 0.98,
        });
    }
    if depth == 1 {
        checks.push(Check {
            target: "p50 <= baseline + 10 us".to_owned(),
            met: p50_delta_us <= 10.0,
        });
    }
    checks
}

/// Runs every cell.
pub(crate) async fn run(mode: Mode, progress: bool) -> anyhow::Result<OverheadReport> {
    let (warmup, window) = mode.overhead_cell();
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
    let endpoint = target
        .endpoints()
        .first()
        .cloned()
        .context("the target bound no endpoint")?;
    let init = Initiator::start(
        Arc::new(EndpointConnector::new(endpoint, Duration::from_secs(2))),
        InitiatorOptions::default(),
    );
    init.call(Bytes::from_static(b"hello"))
        .await
        .map_err(|e| anyhow!("the first holdfast call failed: {e}"))?;
    let server = baseline::Server::start().await?;

    let cells = PAYLOADS.len() * DEPTHS.len();
    let mut rows = Vec::with_capacity(cells);
    for &payload in &PAYLOADS {
        for &depth in &DEPTHS {
            if progress {
                eprintln!(
                    "bench overhead: {} at QD {depth} ({}/{cells})",
                    size(payload),
                    rows.len() + 1
                );
            }
            let data = Bytes::from(vec![0x5a; payload]);
            let h = measure_holdfast(&init, data.clone(), depth, warmup, window).await?;
            let b = baseline::measure(server.addr(), data, depth, warmup, window).await?;
            let (holdfast, baseline) = (Side::of(&h, payload), Side::of(&b, payload));
            let throughput_ratio = if baseline.ops_per_s > 0.0 {
                holdfast.ops_per_s / baseline.ops_per_s
            } else {
                0.0
            };
            let p50_delta_us = holdfast.p50_us - baseline.p50_us;
            rows.push(OverheadRow {
                payload_bytes: payload,
                depth,
                targets: checks(payload, depth, throughput_ratio, p50_delta_us),
                holdfast,
                baseline,
                throughput_ratio,
                p50_delta_us,
            });
        }
    }
    let _ = init.close().await;
    target.shutdown(Duration::ZERO, None).await;
    Ok(OverheadReport {
        mode,
        warmup_seconds: warmup.as_secs_f64(),
        window_seconds: window.as_secs_f64(),
        rows,
    })
}

/// Runs the echo through holdfast: `depth` tasks share the session, each
/// calling back to back.
pub(crate) async fn measure_holdfast(
    init: &Initiator,
    payload: Bytes,
    depth: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Measured> {
    let from = Instant::now() + warmup;
    let until = from + window;
    let tasks: Vec<_> = (0..depth.max(1))
        .map(|_| {
            let init = init.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut latency = histogram()?;
                loop {
                    let at = Instant::now();
                    if at >= until {
                        break;
                    }
                    let reply = init
                        .call(payload.clone())
                        .await
                        .map_err(|e| anyhow!("a holdfast echo call failed: {e}"))?;
                    let done = Instant::now();
                    if reply.len() != payload.len() {
                        bail!(
                            "holdfast echoed {} bytes for a {}-byte request",
                            reply.len(),
                            payload.len()
                        );
                    }
                    if done >= from && done <= until {
                        record(&mut latency, done - at)?;
                    }
                }
                Ok::<Histogram<u64>, anyhow::Error>(latency)
            })
        })
        .collect();
    let latency = merge_latencies(tasks, "holdfast echo").await?;
    Ok(Measured { latency, window })
}

impl OverheadReport {
    /// The cells as a table (the terminal's and the report's).
    fn as_table(&self, markdown: bool) -> Table {
        let mut t = Table::new(&[
            "payload",
            "QD",
            "holdfast ops/s",
            "MiB/s",
            "p50 µs",
            "p99 µs",
            "baseline ops/s",
            "MiB/s",
            "p50 µs",
            "p99 µs",
            "ratio",
            "p50 Δ µs",
            "targets",
        ])
        .align_left(&[12]);
        for r in &self.rows {
            t.push(vec![
                size(r.payload_bytes),
                r.depth.to_string(),
                num(r.holdfast.ops_per_s, 0),
                num(r.holdfast.mib_per_s, 1),
                num(r.holdfast.p50_us, 1),
                num(r.holdfast.p99_us, 1),
                num(r.baseline.ops_per_s, 0),
                num(r.baseline.mib_per_s, 1),
                num(r.baseline.p50_us, 1),
                num(r.baseline.p99_us, 1),
                format!("{}x", num(r.throughput_ratio, 3)),
                format!("{:+.1}", r.p50_delta_us),
                Check::cell(&r.targets, markdown),
            ]);
        }
        t
    }

    /// The table for the terminal.
    pub(crate) fn table(&self) -> String {
        self.as_table(false).text()
    }

    /// The Markdown report.
    pub(crate) fn markdown(&self, machine: &Machine) -> String {
        let mut md = String::from("# holdfast bench: overhead\n\n");
        md.push_str(
            "A request/response echo through holdfast against the same pattern over one plain \
             tokio TCP connection with the simplest length-prefixed framing (the baseline), \
             both ends in one process on 127.0.0.1.\n\n",
        );
        md.push_str(&machine.markdown(self.mode));
        md.push_str(&format!(
            "- each cell and side: {:.1} s warm-up, then {:.1} s measured\n\n",
            self.warmup_seconds, self.window_seconds
        ));
        md.push_str(&self.as_table(true).markdown());
        md.push_str(
            "\n![throughput and median latency by payload size](overhead.svg)\n\n\
             ## How it is measured\n\n\
             - **holdfast**: a target whose service (`holdfast::service_fn`) returns the \
             request's payload, and one initiator session with default options (no digests \
             negotiated: the initiator asks for none). QD tasks share the session, each \
             issuing `call` back to back, so QD calls are outstanding.\n\
             - **baseline**: a 4-byte big-endian length, then the payload. The server echoes \
             frames in order and flushes when the next request is not already buffered. The \
             client uses one connection: a writer task sends while fewer than QD requests are \
             outstanding, a reader task takes the responses in order (each into its own \
             buffer). TCP_NODELAY on both ends, as holdfast sets it.\n\
             - A request counts if it completes inside the measured window; latency is from \
             issue to completion, recorded in an HDR histogram. MiB/s counts payload bytes \
             one way.\n\
             - **ratio** is holdfast's throughput over the baseline's; **p50 Δ** is holdfast's \
             median latency minus the baseline's.\n\n\
             ## Targets\n\n\
             From the benchmark issue; reported, not asserted: throughput at least 0.95x the \
             baseline at 4 KiB QD 32 and at least 0.98x at 1 MiB (both depths); at QD 1 a \
             median latency no more than 10 µs above the baseline's (every payload). Client, \
             server and both protocol stacks share the machine's cores, so a busy machine \
             moves these numbers.\n",
        );
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_apply_to_the_right_cells() {
        assert!(checks(64, 32, 0.5, 100.0).is_empty());
        let c = checks(4096, 32, 0.96, 0.0);
        assert_eq!(c.len(), 1);
        assert!(c[0].met);
        let c = checks(1 << 20, 1, 0.97, 12.0);
        assert_eq!(c.len(), 2);
        assert!(!c[0].met && !c[1].met);
        let c = checks(64, 1, 0.5, 9.0);
        assert_eq!(c.len(), 1);
        assert!(c[0].met);
    }
}
