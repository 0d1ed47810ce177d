//! The durable scenario (issue 16): what a durable session store costs and
//! how fast a crashed target is back.
//!
//! * Throughput: an echo target in this process, in memory
//!   (`Target::serve`) and with a session store (`Target::serve_durable`)
//!   in a directory under the results directory, one session with QD tasks
//!   calling back to back, 64 B and 4 KiB at QD 1 and 32; beside the disk's
//!   raw fsync rate in the same directory, measured in the same run (fio
//!   `--fdatasync=1`), and per row the physical bound `QD / fsync p50` (no
//!   durable target completes more than QD commands per fsync time) with
//!   the share of it reached: near 1, the disk is the limit; far below,
//!   the software. `--dir` puts the store elsewhere (on tmpfs, where an
//!   fsync is nearly free, the durable side shows the software's own cost).
//! * Recovery ([`super::durable_recovery`]): `holdfast target --service log
//!   --state-dir` as a child process holding 1, 100 and 10,000 retained
//!   sessions is killed with SIGKILL and started again; the time from the
//!   restart to the first completed command of a recovering session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use holdfast::{
    service_fn, DurableStore, Endpoint, EndpointConnector, Initiator, InitiatorOptions, Request,
    ServiceDurability, StoreOptions, Target, TargetOptions,
};
use serde::Serialize;

use super::durable_recovery::{self, RecoveryRow};
use super::fio::{self, FsyncRate};
use super::overhead::{measure_holdfast, Side};
use super::table::{num, size, Table};
use super::{Check, Machine, Mode};

/// The payload sizes, in bytes.
const PAYLOADS: [usize; 2] = [64, 4 << 10];
/// The queue depths.
const DEPTHS: [usize; 2] = [1, 32];
/// The throughput target: durable at QD 32 at least this share of
/// in memory.
const RATIO_TARGET: f64 = 0.5;
/// The latency target at QD 1: at most one fsync plus this.
const QD1_MARGIN_US: f64 = 50.0;

/// One cell: durable beside in memory.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ThroughputRow {
    /// Payload size in bytes.
    pub(crate) payload_bytes: usize,
    /// Queue depth.
    pub(crate) depth: usize,
    /// In memory.
    pub(crate) memory: Side,
    /// With the durable store.
    pub(crate) durable: Side,
    /// Durable throughput over in-memory throughput.
    pub(crate) ratio: f64,
    /// The physical bound, QD / fsync p50, in commands per second (`None`:
    /// no fsync baseline).
    pub(crate) fsync_bound_ops_per_s: Option<f64>,
    /// Durable throughput over that bound.
    pub(crate) of_bound: Option<f64>,
    /// The targets that apply to this cell.
    pub(crate) targets: Vec<Check>,
}

/// The whole scenario.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct DurableReport {
    /// How long the runs were.
    pub(crate) mode: Mode,
    /// The directory the store and fio wrote to (a scratch directory in
    /// it).
    pub(crate) directory: PathBuf,
    /// The disk's raw fsync rate there (`None`: fio is not installed).
    pub(crate) fsync: Option<FsyncRate>,
    /// Measured window per cell and side, in seconds.
    pub(crate) window_seconds: f64,
    /// One row per payload and depth.
    pub(crate) rows: Vec<ThroughputRow>,
    /// One row per count of retained sessions.
    pub(crate) recovery: Vec<RecoveryRow>,
}

/// A directory removed on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the scenario; the store's files (and fio's) go in a scratch
/// directory under `dir`. `strict`: the echo is not replay-safe (each
/// command costs two groups), for comparison.
pub(crate) async fn run(
    mode: Mode,
    progress: bool,
    dir: &Path,
    strict: bool,
) -> anyhow::Result<DurableReport> {
    let scratch = ScratchDir(dir.join(format!("durable-scratch-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("could not create {}", scratch.0.display()))?;
    let fsync = if fio::available() {
        if progress {
            eprintln!("bench durable: the disk's fsync rate (fio --fdatasync=1)");
        }
        let runtime = match mode {
            Mode::Smoke => Duration::from_millis(200),
            Mode::Quick => Duration::from_secs(1),
            Mode::Full => Duration::from_secs(5),
        };
        Some(fio::fsync_rate(&scratch.0, runtime).await?)
    } else {
        if progress {
            eprintln!("bench durable: fio is not installed; no fsync baseline");
        }
        None
    };
    let (warmup, window) = mode.overhead_cell();
    let mut rows = Vec::new();
    let memory = EchoTarget::start(None, strict).await?;
    let durable = EchoTarget::start(Some(&scratch.0.join("echo-state")), strict).await?;
    for &payload in &PAYLOADS {
        for &depth in &DEPTHS {
            if progress {
                eprintln!("bench durable: {} at QD {depth}", size(payload));
            }
            let data = Bytes::from(vec![0x5a; payload]);
            let m = measure_holdfast(&memory.init, data.clone(), depth, warmup, window).await?;
            let d = measure_holdfast(&durable.init, data, depth, warmup, window).await?;
            let (memory, durable) = (Side::of(&m, payload), Side::of(&d, payload));
            let ratio = if memory.ops_per_s > 0.0 {
                durable.ops_per_s / memory.ops_per_s
            } else {
                0.0
            };
            let bound = fsync.as_ref().and_then(|f| fsync_bound(depth, f));
            rows.push(ThroughputRow {
                payload_bytes: payload,
                depth,
                targets: checks(depth, ratio, durable.p50_us, fsync.as_ref()),
                of_bound: bound.map(|b| durable.ops_per_s / b),
                fsync_bound_ops_per_s: bound,
                memory,
                durable,
                ratio,
            });
        }
    }
    memory.stop().await;
    durable.stop().await;
    let recovery = durable_recovery::run(mode, progress, &scratch.0).await?;
    Ok(DurableReport {
        mode,
        directory: dir.to_path_buf(),
        fsync,
        window_seconds: window.as_secs_f64(),
        rows,
        recovery,
    })
}

/// The most commands per second a durable target can complete at queue
/// depth `depth` on a disk whose fsync takes `f.p50_us`: every command
/// waits for at least one fsync, and at most `depth` are in flight.
fn fsync_bound(depth: usize, f: &FsyncRate) -> Option<f64> {
    (f.p50_us > 0.0).then(|| depth as f64 * 1e6 / f.p50_us)
}

/// The targets for a cell, judged.
fn checks(depth: usize, ratio: f64, durable_p50_us: f64, fsync: Option<&FsyncRate>) -> Vec<Check> {
    let mut checks = Vec::new();
    if depth == 32 {
        checks.push(Check {
            target: format!("durable >= {RATIO_TARGET}x in memory"),
            met: ratio >= RATIO_TARGET,
        });
    }
    if let (1, Some(f)) = (depth, fsync) {
        checks.push(Check {
            target: format!("p50 <= fsync p50 + {QD1_MARGIN_US} us"),
            met: durable_p50_us <= f.p50_us + QD1_MARGIN_US,
        });
    }
    checks
}

/// The echo's side of a durable target: no state, nothing to sync, and
/// replay-safe (an echo has no effect), so each command is received and
/// completed in one group.
/// `strict`: say it is not (for comparison: every command then costs two
/// groups, as before early execution).
struct EchoDurability {
    strict: bool,
}

impl ServiceDurability for EchoDurability {
    fn replay_safe(&self) -> bool {
        !self.strict
    }
}

/// An echo target in this process and one session to it.
struct EchoTarget {
    target: Target,
    init: Initiator,
}

impl EchoTarget {
    /// In memory, or with its session store in `state_dir`.
    async fn start(state_dir: Option<&Path>, strict: bool) -> anyhow::Result<EchoTarget> {
        let echo = service_fn(|req: Request| {
            std::future::ready(Ok::<_, std::convert::Infallible>(req.payload))
        });
        let endpoints = [Endpoint::Tcp(([127, 0, 0, 1], 0).into())];
        let target = match state_dir {
            None => Target::serve(&endpoints, TargetOptions::default(), echo)
                .await
                .context("could not start the echo target on 127.0.0.1")?,
            Some(dir) => {
                let store =
                    DurableStore::open(dir, StoreOptions::default()).with_context(|| {
                        format!("could not open a session store in {}", dir.display())
                    })?;
                Target::serve_durable(
                    &endpoints,
                    TargetOptions::default(),
                    store,
                    echo,
                    Arc::new(EchoDurability { strict }),
                )
                .await
                .context("could not start the durable echo target on 127.0.0.1")?
            }
        };
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
            .map_err(|e| anyhow!("the first echo call failed: {e}"))?;
        Ok(EchoTarget { target, init })
    }

    async fn stop(self) {
        let _ = self.init.close().await;
        self.target.shutdown(Duration::ZERO, None).await;
    }
}

impl DurableReport {
    /// The throughput cells as a table.
    fn throughput_table(&self, markdown: bool) -> Table {
        let mut t = Table::new(&[
            "payload",
            "QD",
            "memory ops/s",
            "p50 µs",
            "p99 µs",
            "durable ops/s",
            "p50 µs",
            "p99 µs",
            "ratio",
            "fsync bound ops/s",
            "of bound",
            "targets",
        ])
        .align_left(&[11]);
        for r in &self.rows {
            t.push(vec![
                size(r.payload_bytes),
                r.depth.to_string(),
                num(r.memory.ops_per_s, 0),
                num(r.memory.p50_us, 1),
                num(r.memory.p99_us, 1),
                num(r.durable.ops_per_s, 0),
                num(r.durable.p50_us, 1),
                num(r.durable.p99_us, 1),
                format!("{}x", num(r.ratio, 3)),
                r.fsync_bound_ops_per_s
                    .map_or_else(|| "-".to_owned(), |b| num(b, 0)),
                r.of_bound
                    .map_or_else(|| "-".to_owned(), |f| format!("{}%", num(f * 100.0, 1))),
                Check::cell(&r.targets, markdown),
            ]);
        }
        t
    }

    /// The fsync baseline in one line.
    fn fsync_line(&self) -> String {
        match &self.fsync {
            Some(f) => format!(
                "fio --fdatasync=1 (4 KiB writes) in the same directory: {} fsyncs/s, p50 {} µs, p99 {} µs",
                num(f.fsyncs_per_s, 0),
                num(f.p50_us, 0),
                num(f.p99_us, 0)
            ),
            None => "fio is not installed: no fsync baseline".to_owned(),
        }
    }

    /// The tables for the terminal.
    pub(crate) fn table(&self) -> String {
        format!(
            "{}\n{}\n\n{}",
            self.throughput_table(false).text(),
            self.fsync_line(),
            durable_recovery::table(&self.recovery, false).text()
        )
    }

    /// The Markdown report.
    pub(crate) fn markdown(&self, machine: &Machine) -> String {
        let mut md = String::from("# holdfast bench: durable sessions\n\n");
        md.push_str(
            "What the durable session store (`holdfast target --state-dir`, PROTOCOL.md §12) \
             costs against keeping sessions in memory, beside the disk's raw fsync rate, and \
             how soon a target killed with SIGKILL serves its sessions again.\n\n",
        );
        md.push_str(&machine.markdown(self.mode));
        md.push_str(&format!(
            "- store and fio in `{}` (the same file system); each cell and side measured for {:.1} s after a warm-up\n- {}\n\n",
            self.directory.display(),
            self.window_seconds,
            self.fsync_line()
        ));
        md.push_str("## Throughput and latency\n\n");
        md.push_str(&self.throughput_table(true).markdown());
        md.push_str("\n## Recovery after kill -9\n\n");
        md.push_str(&durable_recovery::table(&self.recovery, true).markdown());
        md.push_str(
            "\n## How it is measured\n\n\
             - **throughput**: an echo service in this process, served in memory \
             (`Target::serve`) and with a session store (`Target::serve_durable`); one \
             initiator session per target, QD tasks calling back to back. With the store, no \
             response leaves before the group of changes that records it is fsynced; changes \
             arriving during an fsync share the next one (group commit), so at QD 32 one fsync \
             carries many commands. The echo is replay-safe, so it runs before its receipt is \
             durable and a command's receipt and completion share one group (PROTOCOL.md \
             §12.4): one fsync per command at QD 1, committed on the target engine's own \
             thread when commands come one at a time (no hand-off to the commit thread and \
             back).\n\
             - **fsync bound**: QD / the fio fsync p50, the most commands per second any \
             durable target can complete at that depth (each waits for at least one fsync); \
             *of bound* is the durable throughput's share of it. Near 100%, the disk is the \
             limit; far below, the software. Above 100%, the store's own fsync (an append \
             to its log) is cheaper than fio's, whose latency includes a 4 KiB write that may \
             extend its file: the bound is then not tight. On tmpfs (`--dir /dev/shm`) an fsync is nearly \
             free, the bound is far off, and the durable side shows the store's own cost. The response bytes are stored in the cache, so 4 KiB \
             commands write about 4 KiB each to the log.\n\
             - **fsync baseline**: fio writing 4 KiB blocks with an `fdatasync` after each, one \
             job, in the directory the store used, in the same run.\n\
             - **recovery**: `holdfast target --service log --state-dir` as a child process; \
             N−1 sessions opened with one increment each and left retained (their initiators \
             gone), plus one probe session. SIGKILL, then the same command again: *to serving* \
             is from the new process's start to its `serving` line (the store read and every \
             session rebuilt), *to first command* until the probe's next increment completed \
             (its initiator retries every few milliseconds, so this includes its reconnect and \
             recovery login).\n\n\
             ## Targets\n\n\
             From issue 16; reported, not asserted: at QD 32 durable throughput at least 0.5x \
             in memory; at QD 1 a durable median latency no more than one fsync (the fio p50) \
             plus 50 µs.\n",
        );
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_apply_to_the_right_cells() {
        let f = FsyncRate {
            fsyncs_per_s: 250.0,
            p50_us: 4000.0,
            p99_us: 9000.0,
        };
        let c = checks(32, 0.6, 9000.0, Some(&f));
        assert_eq!(c.len(), 1);
        assert!(c[0].met);
        assert!(!checks(32, 0.4, 0.0, Some(&f))[0].met);
        let c = checks(1, 0.01, 4049.0, Some(&f));
        assert_eq!(c.len(), 1);
        assert!(c[0].met);
        assert!(!checks(1, 1.0, 4051.0, Some(&f))[0].met);
        assert!(checks(1, 1.0, 1.0, None).is_empty());
    }

    #[test]
    fn fsync_bound_is_depth_over_fsync_time() {
        let f = FsyncRate {
            fsyncs_per_s: 250.0,
            p50_us: 4000.0,
            p99_us: 9000.0,
        };
        assert_eq!(fsync_bound(32, &f), Some(8000.0));
        assert_eq!(fsync_bound(1, &f), Some(250.0));
        let free = FsyncRate { p50_us: 0.0, ..f };
        assert_eq!(fsync_bound(32, &free), None);
    }
}
