//! The messages scenario: one-way messages per second from one task with
//! the pipelined send ([`Initiator::send_queued`]) against calls per second
//! from one task and from 8, in the same run, on one session to a target on
//! 127.0.0.1 whose service does nothing with the payload.
//!
//! * pipelined: one task queues messages back to back for the window,
//!   dropping each handle but the last; the rate is the messages queued
//!   over the time from the first to the last one's delivery (they are
//!   delivered in order, so the last one's delivery means all were);
//! * awaited `send` and `call`: each task issues the next only after the
//!   previous completed; a message or call counts if it completes inside
//!   the window.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use holdfast::{
    service_fn, Endpoint, EndpointConnector, Initiator, InitiatorOptions, Request, Target,
    TargetOptions,
};
use serde::Serialize;
use tokio::time::Instant;

use super::table::{num, size, Table};
use super::{Check, Machine, Mode};

/// Payload of each message and call.
const PAYLOAD: usize = 64;

/// The concurrent tasks of the many-task rows.
const MANY: usize = 8;

/// How one row issues its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Way {
    /// `send_queued`, handles dropped, the last awaited.
    PipelinedSend,
    /// `send`, each awaited before the next.
    AwaitedSend,
    /// `call`, each awaited before the next.
    Call,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::PipelinedSend => "one-way, send_queued (pipelined)",
            Way::AwaitedSend => "one-way, send (awaited)",
            Way::Call => "call",
        }
    }
}

/// One row.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MessagesRow {
    /// How the work is issued.
    pub(crate) way: Way,
    /// Tasks issuing it.
    pub(crate) tasks: usize,
    /// Messages or calls completed.
    pub(crate) ops: u64,
    /// Over how long, in seconds.
    pub(crate) seconds: f64,
    /// Per second.
    pub(crate) ops_per_s: f64,
    /// Over the one-task call rate.
    pub(crate) vs_calls_1_task: f64,
}

/// The whole scenario.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MessagesReport {
    /// How long the runs were.
    pub(crate) mode: Mode,
    /// Unmeasured warm-up per row, in seconds.
    pub(crate) warmup_seconds: f64,
    /// Measured window per row, in seconds.
    pub(crate) window_seconds: f64,
    /// Payload per message and call, in bytes.
    pub(crate) payload_bytes: usize,
    /// The session's credit window.
    pub(crate) credits: u32,
    /// One row per way and task count.
    pub(crate) rows: Vec<MessagesRow>,
    /// Pipelined messages per second (one task) over calls per second
    /// (one task).
    pub(crate) ratio: f64,
    /// The same over calls per second with 8 tasks.
    pub(crate) ratio_8_tasks: f64,
    /// The target, judged.
    pub(crate) targets: Vec<Check>,
}

/// Warm-up and window per row.
fn timing(mode: Mode) -> (Duration, Duration) {
    match mode {
        Mode::Smoke => (Duration::from_millis(20), Duration::from_millis(100)),
        Mode::Quick => (Duration::from_millis(200), Duration::from_secs(1)),
        Mode::Full => (Duration::from_millis(500), Duration::from_secs(3)),
    }
}

/// Runs every row on one session.
pub(crate) async fn run(mode: Mode, progress: bool) -> anyhow::Result<MessagesReport> {
    let (warmup, window) = timing(mode);
    let service = service_fn(|req: Request| {
        std::future::ready(Ok::<_, std::convert::Infallible>(if req.one_way {
            Bytes::new()
        } else {
            req.payload
        }))
    });
    let target = Target::serve(
        &[Endpoint::Tcp(([127, 0, 0, 1], 0).into())],
        TargetOptions::default(),
        service,
    )
    .await
    .context("could not start the holdfast target on 127.0.0.1")?;
    let endpoint = target
        .endpoints()
        .first()
        .cloned()
        .context("the target bound no endpoint")?;
    let options = InitiatorOptions::default();
    let credits = options.protocol.credits;
    let init = Initiator::start(
        Arc::new(EndpointConnector::new(endpoint, Duration::from_secs(2))),
        options,
    );
    init.call(Bytes::from_static(b"hello"))
        .await
        .map_err(|e| anyhow!("the first holdfast call failed: {e}"))?;
    let payload = Bytes::from(vec![0x5a; PAYLOAD]);

    let plan = [
        (Way::PipelinedSend, 1),
        (Way::Call, 1),
        (Way::Call, MANY),
        (Way::AwaitedSend, 1),
        (Way::AwaitedSend, MANY),
    ];
    let mut rows = Vec::with_capacity(plan.len());
    for (i, (way, tasks)) in plan.into_iter().enumerate() {
        if progress {
            eprintln!(
                "bench messages: {} with {tasks} task(s) ({}/{})",
                way.name(),
                i + 1,
                plan.len()
            );
        }
        let (ops, seconds) = match way {
            Way::PipelinedSend => {
                pipelined(&init, &payload, warmup).await?;
                pipelined(&init, &payload, window).await?
            }
            Way::AwaitedSend | Way::Call => {
                closed_loop(&init, &payload, way, tasks, warmup, window).await?
            }
        };
        let ops_per_s = if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        };
        rows.push(MessagesRow {
            way,
            tasks,
            ops,
            seconds,
            ops_per_s,
            vs_calls_1_task: 0.0,
        });
    }
    let _ = init.close().await;
    target.shutdown(Duration::ZERO, None).await;

    let rate = |way, tasks| {
        rows.iter()
            .find(|r| r.way == way && r.tasks == tasks)
            .map_or(0.0, |r| r.ops_per_s)
    };
    let calls_1 = rate(Way::Call, 1);
    let calls_8 = rate(Way::Call, MANY);
    let messages = rate(Way::PipelinedSend, 1);
    let ratio_of = |x: f64, base: f64| if base > 0.0 { x / base } else { 0.0 };
    for r in &mut rows {
        r.vs_calls_1_task = ratio_of(r.ops_per_s, calls_1);
    }
    let ratio = ratio_of(messages, calls_1);
    Ok(MessagesReport {
        mode,
        warmup_seconds: warmup.as_secs_f64(),
        window_seconds: window.as_secs_f64(),
        payload_bytes: PAYLOAD,
        credits,
        ratio,
        ratio_8_tasks: ratio_of(messages, calls_8),
        targets: vec![Check {
            target: "one-way messages/s (1 task, pipelined) >= 1.0x calls/s (1 task)".to_owned(),
            met: ratio >= 1.0,
        }],
        rows,
    })
}

/// Queues messages from this task for `window`, then waits for the last
/// delivery; returns the messages and the seconds from the first queued to
/// the last delivered.
async fn pipelined(
    init: &Initiator,
    payload: &Bytes,
    window: Duration,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let until = started + window;
    let mut sent = 0u64;
    let mut last = None;
    while Instant::now() < until {
        last = Some(
            init.send_queued(payload.clone())
                .await
                .map_err(|e| anyhow!("a pipelined send failed: {e}"))?,
        );
        sent += 1;
    }
    if let Some(last) = last {
        last.await
            .map_err(|e| anyhow!("a pipelined message was not delivered: {e}"))?;
    }
    Ok((sent, started.elapsed().as_secs_f64()))
}

/// `tasks` tasks each issue `way` back to back; returns what completed in
/// the window (after the warm-up) and the window's seconds.
async fn closed_loop(
    init: &Initiator,
    payload: &Bytes,
    way: Way,
    tasks: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<(u64, f64)> {
    let from = Instant::now() + warmup;
    let until = from + window;
    let workers: Vec<_> = (0..tasks.max(1))
        .map(|_| {
            let init = init.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < until {
                    match way {
                        Way::Call => init.call(payload.clone()).await.map(drop),
                        _ => init.send(payload.clone()).await,
                    }
                    .map_err(|e| anyhow!("a holdfast {} failed: {e}", way.name()))?;
                    let at = Instant::now();
                    if at >= from && at <= until {
                        done += 1;
                    }
                }
                Ok::<u64, anyhow::Error>(done)
            })
        })
        .collect();
    let mut ops = 0;
    for w in workers {
        ops += w.await.context("a bench task panicked")??;
    }
    Ok((ops, window.as_secs_f64()))
}

impl MessagesReport {
    fn table_of(&self) -> Table {
        let mut t = Table::new(&[
            "way",
            "tasks",
            "completed",
            "per second",
            "vs calls (1 task)",
        ]);
        for r in &self.rows {
            t.push(vec![
                r.way.name().to_owned(),
                r.tasks.to_string(),
                r.ops.to_string(),
                num(r.ops_per_s, 0),
                format!("{}x", num(r.vs_calls_1_task, 2)),
            ]);
        }
        t
    }

    /// The terminal table.
    pub(crate) fn table(&self) -> String {
        format!(
            "{}\npipelined messages (1 task) / calls (1 task): {}x; / calls ({MANY} tasks): {}x; \
             target: {}\n",
            self.table_of().text(),
            num(self.ratio, 2),
            num(self.ratio_8_tasks, 2),
            Check::cell(&self.targets, false),
        )
    }

    /// The Markdown report.
    pub(crate) fn markdown(&self, machine: &Machine) -> String {
        let mut md = String::from("# holdfast bench messages\n\n");
        md.push_str(&machine.markdown(self.mode));
        md.push_str(&format!(
            "- one session to a target on 127.0.0.1 whose service ignores the payload; {} \
             payloads; credit window {}; {:.1} s warm-up, {:.1} s measured per row\n\n",
            size(self.payload_bytes),
            self.credits,
            self.warmup_seconds,
            self.window_seconds,
        ));
        md.push_str(&self.table_of().markdown());
        md.push_str(&format!(
            "\n**Pipelined one-way messages from one task: {}x the calls per second from one \
             task, {}x those from {MANY} tasks.** Target (issue 18): {}.\n\n\
             - **send_queued (pipelined)**: one task queues messages back to back \
             (`Initiator::send_queued`, which returns once the message is queued and waits only \
             when the credit window and the request queue are full), dropping each handle but \
             the last; the rate is the messages queued over the time from the first to the \
             delivery of the last (delivery is in order).\n\
             - **send (awaited)** and **call**: each task issues the next only once the previous \
             completed (`Initiator::send` waits for the target's acknowledgement, `call` for \
             the response); a message or call counts if it completes in the window.\n\n\
             Produced by `holdfast bench messages`.\n",
            num(self.ratio, 2),
            num(self.ratio_8_tasks, 2),
            Check::cell(&self.targets, true),
        ));
        md
    }
}
