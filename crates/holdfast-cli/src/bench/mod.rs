//! `holdfast bench`: numbers for what holdfast claims, measured on this
//! machine.
//!
//! * `overhead`: a request/response echo through holdfast against the same
//!   pattern over a plain tokio TCP connection with length-prefixed framing,
//!   for four payload sizes at queue depth 1 and 32;
//! * `recovery`: the time from a fault (a reset, a blackhole at three
//!   detection bounds, a graceful target restart) to the first completed
//!   call after it, over many trials, beside the documented defaults of
//!   open-iscsi and Linux nvme-tcp;
//! * `block`: fio against `holdfast nbd`, qemu-nbd and nbdkit serving the
//!   same file, holdfast's native client, and fio on the file itself;
//! * `scale`: a target's resident memory per idle session at two counts,
//!   throughput and fairness with many active sessions, and resident memory
//!   over a long fault-injected run;
//! * `multiconn`: throughput of one session with 1, 2 and 4 connections
//!   where each link is bandwidth-limited by the chaos proxy, and the
//!   target's reorder-buffer occupancy;
//! * `durable`: commands per second and latency with the durable session
//!   store against in memory, beside the disk's raw fsync rate, and the
//!   time from a `kill -9` and restart to the first completed command with
//!   1, 100 and 10,000 retained sessions;
//! * `messages`: one-way messages per second from one task with the
//!   pipelined send, against calls per second from one task and from 8;
//! * `all`: every scenario, and an index.
//!
//! Each scenario prints a table (JSON with `--json`) and writes a Markdown
//! report and an SVG plot into the results directory. Targets from the
//! benchmark issue are reported as met or missed, never asserted: the exit
//! status only says whether the benchmark itself ran.

mod baseline;
mod block;
pub(crate) mod child;
mod durable;
mod durable_recovery;
mod failover;
mod fio;
mod messages;
mod multiconn;
mod native;
mod overhead;
mod plot;
mod recovery;
mod scale;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use table::write_file;

/// Options of `holdfast bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: ScenarioCmd,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
enum ScenarioCmd {
    /// Echo through holdfast versus plain TCP with length-prefixed framing:
    /// payloads 64 B to 1 MiB, queue depth 1 and 32; throughput, p50/p99
    /// latency and their ratio.
    Overhead(Options),
    /// Time from a fault to the first completed call: reset, blackhole at
    /// detection bounds 100 ms, 500 ms and 2 s, graceful target restart.
    Recovery(Options),
    /// fio (4 KiB random read/write at QD 1 and 32, 1 MiB sequential at
    /// QD 8) against `holdfast nbd`, qemu-nbd and nbdkit serving one file,
    /// holdfast's native client, and fio on the file (the ceiling).
    Block(BlockOptions),
    /// Resident memory per idle session on a target (1,000 and 10,000
    /// sessions), throughput and Jain's fairness index with 1,000 active
    /// sessions, and resident memory over a 10-minute fault-injected run.
    Scale(Options),
    /// Throughput of one session with 1, 2 and 4 connections where each
    /// link is limited to the same bandwidth by the chaos proxy, as ratios
    /// to one connection, with the target's reorder-buffer occupancy.
    Multiconn(Options),
    /// Failover across two nodes: from the loss of a path to the first
    /// call re-issued on the other node, with the old node fenced by
    /// confirmation and by waiting its quiesce time, beside a single-path
    /// session and the Linux defaults.
    Failover(Options),
    /// The durable session store (`--state-dir`): commands/s and p50/p99
    /// at QD 1 and 32 for 64 B and 4 KiB, durable against in memory,
    /// beside fio --fdatasync=1 in the same directory; and the time from a
    /// kill -9 and restart to the first completed command with 1, 100 and
    /// 10,000 retained sessions.
    Durable(DurableOptions),
    /// One-way messages per second from one task with the pipelined send
    /// (`send_queued`) against calls per second from one task and from 8,
    /// on one session, with their ratio.
    Messages(Options),
    /// Every scenario, and an index of the reports (DIR/README.md).
    All(Options),
}

/// Options every scenario takes.
#[derive(Clone, Debug, Args)]
struct Options {
    /// Short runs for a quick look (0.5 s per overhead cell, 5 trials per
    /// fault); without it a full run takes a few minutes.
    #[arg(long)]
    quick: bool,
    /// Where the Markdown reports and SVG plots go (created if missing).
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    results: PathBuf,
    /// Print JSON instead of the tables.
    #[arg(long)]
    json: bool,
    /// The least that exercises every code path (for tests).
    #[arg(long, hide = true)]
    smoke: bool,
}

/// Options of `holdfast bench block`.
#[derive(Clone, Debug, Args)]
struct BlockOptions {
    #[command(flatten)]
    common: Options,
    /// Only the cost of `--metrics`: the 4 KiB QD 32 jobs through
    /// `holdfast nbd` and its target without and with `--metrics`, nothing
    /// else (fio is required). The "+metrics" rows carry the ratio.
    #[arg(long)]
    metrics_only: bool,
    /// With --metrics-only: rounds of pairs. A pair of servers with
    /// `--metrics` and one without run side by side; each round runs each
    /// job on both (the order alternating), one ratio a round. Reported:
    /// the median ratio, its 95% confidence interval (from 6 rounds) and
    /// the range. An even count runs each order equally often.
    #[arg(long, value_name = "N", requires = "metrics_only", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
}

/// Options of `holdfast bench durable`.
#[derive(Clone, Debug, Args)]
struct DurableOptions {
    #[command(flatten)]
    common: Options,
    /// Where the session store and fio write (a scratch directory is made
    /// in it and removed afterwards); default: the results directory. On
    /// tmpfs (`/dev/shm`) an fsync costs almost nothing, so the durable
    /// rows then show the software's own cost against in memory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Serve the echo as not replay-safe, so each command is received and
    /// completed in two groups (two fsyncs at QD 1): the behaviour before
    /// early execution, for comparison.
    #[arg(long, hide = true)]
    strict: bool,
}

/// How long the runs are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Just enough to produce every row (tests).
    Smoke,
    /// Short runs: indicative numbers.
    Quick,
    /// The runs the issue asks for.
    Full,
}

impl Mode {
    /// The name shown in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Smoke => "smoke",
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    }

    /// Warm-up and measured time of one overhead cell.
    pub(crate) fn overhead_cell(self) -> (Duration, Duration) {
        match self {
            Mode::Smoke => (Duration::from_millis(20), Duration::from_millis(60)),
            Mode::Quick => (Duration::from_millis(100), Duration::from_millis(500)),
            Mode::Full => (Duration::from_millis(500), Duration::from_secs(3)),
        }
    }

    /// Trials per recovery row; the slow rows (a 2 s detection bound) get
    /// fewer outside the full mode.
    pub(crate) fn recovery_trials(self, slow: bool) -> usize {
        match (self, slow) {
            (Mode::Smoke, false) => 2,
            (Mode::Smoke, true) => 1,
            (Mode::Quick, false) => 5,
            (Mode::Quick, true) => 3,
            (Mode::Full, _) => 50,
        }
    }
}

/// One target from the issue and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Check {
    /// The target, in words (`throughput >= 0.95x baseline`).
    pub(crate) target: String,
    /// Whether the measurement met it.
    pub(crate) met: bool,
}

impl Check {
    /// `met` or `missed`.
    pub(crate) fn verdict(&self) -> &'static str {
        if self.met {
            "met"
        } else {
            "missed"
        }
    }

    /// A table cell for a row's targets: verdicts for the terminal, each
    /// target with its verdict in bold for Markdown, `-` for none.
    pub(crate) fn cell(checks: &[Check], markdown: bool) -> String {
        if checks.is_empty() {
            return "-".to_owned();
        }
        let each: Vec<String> = checks
            .iter()
            .map(|c| {
                if markdown {
                    format!("{}: **{}**", c.target, c.verdict())
                } else {
                    c.verdict().to_owned()
                }
            })
            .collect();
        each.join(if markdown { "; " } else { ", " })
    }
}

/// Where and on what the benchmark ran, for the reports.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Machine {
    /// Cores the process may use.
    pub(crate) cores: usize,
    /// The CPU model, where the OS says.
    pub(crate) cpu: Option<String>,
    /// The kernel release, where the OS says.
    pub(crate) kernel: Option<String>,
    /// The 1-minute load average when the run began: other work on the
    /// machine moves every number.
    pub(crate) load_average: Option<f64>,
    /// This build's version.
    pub(crate) holdfast: &'static str,
    /// `release`, or `debug` (whose numbers say little).
    pub(crate) build: &'static str,
}

impl Machine {
    /// Looks at this machine.
    fn probe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_owned());
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        Machine {
            load_average,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            holdfast: env!("CARGO_PKG_VERSION"),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }

    /// One Markdown line describing the machine.
    pub(crate) fn markdown(&self, mode: Mode) -> String {
        format!(
            "- mode: {}; holdfast {} ({} build{}); {} cores{}{}{}\n",
            mode.name(),
            self.holdfast,
            self.build,
            if self.build == "debug" {
                ": not representative, build with --release"
            } else {
                ""
            },
            self.cores,
            self.cpu
                .as_deref()
                .map(|c| format!(", {c}"))
                .unwrap_or_default(),
            self.kernel
                .as_deref()
                .map(|k| format!(", Linux {k}"))
                .unwrap_or_default(),
            self.load_average
                .map(|l| format!("; load average {l:.2} at the start"))
                .unwrap_or_default(),
        )
    }
}

/// What `--json` prints: the scenarios that ran.
#[derive(Debug, Serialize)]
struct JsonReport {
    mode: Mode,
    results: PathBuf,
    machine: Machine,
    #[serde(skip_serializing_if = "Option::is_none")]
    overhead: Option<overhead::OverheadReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery: Option<recovery::RecoveryReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    block: Option<block::BlockReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<scale::ScaleReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multiconn: Option<multiconn::MulticonnReport>,
    failover: Option<failover::FailoverReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    durable: Option<durable::DurableReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<messages::MessagesReport>,
}

/// Runs the chosen scenarios, prints their tables (or JSON) and writes
/// their reports.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    // One scenario, or every one (`None`).
    let mut block_selection = block::Selection::Everything;
    let (mut durable_dir, mut durable_strict) = (None, false);
    let (only, opts) = match args.scenario {
        ScenarioCmd::Overhead(o) => (Some("overhead"), o),
        ScenarioCmd::Recovery(o) => (Some("recovery"), o),
        ScenarioCmd::Block(o) => {
            if o.metrics_only {
                block_selection = block::Selection::MetricsCost { rounds: o.rounds };
            }
            (Some("block"), o.common)
        }
        ScenarioCmd::Scale(o) => (Some("scale"), o),
        ScenarioCmd::Multiconn(o) => (Some("multiconn"), o),
        ScenarioCmd::Failover(o) => (Some("failover"), o),
        ScenarioCmd::Durable(o) => {
            (durable_dir, durable_strict) = (o.dir, o.strict);
            (Some("durable"), o.common)
        }
        ScenarioCmd::Messages(o) => (Some("messages"), o),
        ScenarioCmd::All(o) => (None, o),
    };
    let runs = |scenario: &str| only.is_none_or(|o| o == scenario);
    let mode = if opts.smoke {
        Mode::Smoke
    } else if opts.quick {
        Mode::Quick
    } else {
        Mode::Full
    };
    let dir = &opts.results;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("could not create the results directory {}", dir.display()))?;
    let machine = Machine::probe();
    let progress = !opts.json;
    if machine.build == "debug" && mode != Mode::Smoke {
        eprintln!("note: a debug build; for representative numbers run a --release build");
    }
    let mut report = JsonReport {
        mode,
        results: dir.clone(),
        machine: machine.clone(),
        overhead: None,
        recovery: None,
        block: None,
        scale: None,
        multiconn: None,
        failover: None,
        durable: None,
        messages: None,
    };

    if runs("overhead") {
        let r = overhead::run(mode, progress).await?;
        write_file(dir, "overhead.md", &r.markdown(&machine))?;
        plot::overhead(&dir.join("overhead.svg"), &r.rows)?;
        if !opts.json {
            println!("\nholdfast bench overhead ({} mode)\n", mode.name());
            print!("{}", r.table());
        }
        report.overhead = Some(r);
    }
    if runs("recovery") {
        let r = recovery::run(mode, progress).await?;
        write_file(dir, "recovery.md", &r.markdown(&machine))?;
        plot::recovery(&dir.join("recovery.svg"), &r.rows)?;
        if !opts.json {
            println!("\nholdfast bench recovery ({} mode)\n", mode.name());
            print!("{}", r.table());
        }
        report.recovery = Some(r);
    }
    if runs("block") {
        let r = block::run(mode, progress, block_selection).await?;
        write_file(dir, "block.md", &r.markdown(&machine))?;
        plot::block(&dir.join("block.svg"), &r.rows)?;
        if !opts.json {
            println!("\nholdfast bench block ({} mode)\n", mode.name());
            print!("{}", r.table());
        }
        report.block = Some(r);
    }
    if runs("scale") {
        let r = scale::run(mode, progress).await?;
        write_file(dir, "scale.md", &r.markdown(&machine))?;
        plot::scale(&dir.join("scale.svg"), &r)?;
        if !opts.json {
            println!("\nholdfast bench scale ({} mode)\n", mode.name());
            print!("{}", r.table());
        }
        report.scale = Some(r);
    }
    if runs("multiconn") {
        let r = multiconn::run(mode, progress).await?;
        write_file(dir, "multiconn.md", &r.markdown(&machine))?;
        if !opts.json {
            println!("\nholdfast bench multiconn ({} mode)\n", mode.name());
            print!("{}", r.table());
        }
        report.multiconn = Some(r);
    }
    if runs("failover") {
        let r = failover::run(mode, progress).await?;
        write_file(dir, "failover.md", &r.markdown(&machine))?;
        if !opts.json {
            println!("\nholdfast bench failover ({} mode)\n", mode.name());
            print!("{}", r.table());
        }
        report.failover = Some(r);
    }
    if runs("durable") {
        let durable_dir = durable_dir.as_deref().unwrap_or(dir);
        let r = durable::run(mode, progress, durable_dir, durable_strict).await?;
        write_file(dir, "durable.md", &r.markdown(&machine))?;
        if !opts.json {
            println!("\nholdfast bench durable ({} mode)\n", mode.name());
            print!("{}", r.table());
        }
        report.durable = Some(r);
    }
    if runs("messages") {
        let r = messages::run(mode, progress).await?;
        write_file(dir, "messages.md", &r.markdown(&machine))?;
        if !opts.json {
            println!("\nholdfast bench messages ({} mode)\n", mode.name());
            print!("{}", r.table());
        }
        report.messages = Some(r);
    }
    if only.is_none() {
        write_file(dir, "README.md", &index(&report))?;
    }

    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("\nreports and plots in {}", display_dir(dir));
    }
    Ok(ExitCode::SUCCESS)
}

/// The results directory as shown to people.
fn display_dir(dir: &Path) -> String {
    let s = dir.display().to_string();
    if s.ends_with('/') {
        s
    } else {
        format!("{s}/")
    }
}

/// `DIR/README.md`: what ran, and a line per scenario with its targets.
fn index(report: &JsonReport) -> String {
    let mut md = String::from("# holdfast benchmarks\n\n");
    md.push_str(&report.machine.markdown(report.mode));
    md.push_str(
        "- produced by `holdfast bench all`; rerun it to refresh every file here\n\n\
         | scenario | what it measures | targets met | report | plot |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    let count = |checks: Vec<&Check>| {
        let met = checks.iter().filter(|c| c.met).count();
        format!("{met} of {}", checks.len())
    };
    if let Some(o) = &report.overhead {
        md.push_str(&format!(
            "| overhead | echo through holdfast vs plain TCP, 64 B to 1 MiB, QD 1 and 32 | {} | [overhead.md](overhead.md) | [overhead.svg](overhead.svg) |\n",
            count(o.rows.iter().flat_map(|r| &r.targets).collect()),
        ));
    }
    if let Some(r) = &report.recovery {
        md.push_str(&format!(
            "| recovery | fault to first completed call: reset, blackhole, restart | {} | [recovery.md](recovery.md) | [recovery.svg](recovery.svg) |\n",
            count(r.rows.iter().filter_map(|r| r.target.as_ref()).collect()),
        ));
    }
    if let Some(b) = &report.block {
        md.push_str(&format!(
            "| block | fio via holdfast nbd, qemu-nbd, nbdkit; native client; local file | {} | [block.md](block.md) | [block.svg](block.svg) |\n",
            count(b.rows.iter().flat_map(|r| &r.targets).collect()),
        ));
    }
    if let Some(s) = &report.scale {
        md.push_str(&format!(
            "| scale | RSS per idle session, fairness of many active sessions, RSS under faults | {} | [scale.md](scale.md) | [scale.svg](scale.svg) |\n",
            count(
                s.idle
                    .iter()
                    .map(|r| &r.target)
                    .chain([&s.active.target])
                    .collect()
            ),
        ));
    }
    if let Some(m) = &report.multiconn {
        md.push_str(&format!(
            "| multiconn | one session over 1, 2, 4 bandwidth-limited connections | {} | [multiconn.md](multiconn.md) | - |\n",
            count(m.rows.iter().flat_map(|r| &r.targets).collect()),
        ));
    }
    if report.failover.is_some() {
        md.push_str(
            "| failover | path loss to the first call re-issued on another node: fence confirmed, quiesce wait, single path | - | [failover.md](failover.md) | - |\n",
        );
    }
    if let Some(d) = &report.durable {
        md.push_str(&format!(
            "| durable | session store vs in memory at QD 1 and 32, fsync baseline, recovery after kill -9 | {} | [durable.md](durable.md) | - |\n",
            count(d.rows.iter().flat_map(|r| &r.targets).collect()),
        ));
    }
    if let Some(m) = &report.messages {
        md.push_str(&format!(
            "| messages | one-way messages/s from one task (pipelined send) vs calls/s from 1 and 8 tasks | {} | [messages.md](messages.md) | - |\n",
            count(m.targets.iter().collect()),
        ));
    }
    md.push_str(
        "\nTargets come from the benchmark issue; they are reported, not asserted. \
         Numbers from a shared or busy machine are indicative only.\n",
    );
    md
}
