//! `holdfast torture`: a long, verified workload through chaos links.
//!
//! Two modes:
//! * `block` runs the verified block workload (the demo's, longer and with
//!   many more faults) against an in-process target or a running
//!   `holdfast target` (`--target`). Each block is owned by one worker that
//!   runs one operation at a time, so the history of each block is
//!   sequential and every read is checked against the last acknowledged
//!   write (per-block linearizability): a read of an older generation means
//!   a write was lost or a stale one landed after a newer one. A second
//!   session (`--second-session-workers`, another initiator and volume on
//!   the same target, exported by an NBD server with `--io-timeout` as
//!   `holdfast nbd` runs it) writes the first `32` blocks of every region
//!   too, while its own path is blackholed for longer than the io-timeout
//!   now and then (requests answered EIO). Every read is then checked
//!   against the shared per-block history (verify/history.rs): it must
//!   return a value some write could legitimately have left there, and a
//!   write answered with an error must never be seen after a later
//!   acknowledged write.
//! * `log` drives the log service (a counter, NOT idempotent, and numbered
//!   one-way message streams), in-process or in `holdfast target --service
//!   log`: the counter must grow by exactly the successful increments and
//!   every stream must hold each acknowledged message exactly once, in order.
//!
//! A violation prints the shortest history excerpt that shows it and the
//! exit status is non-zero.

mod log;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use holdfast::Endpoint;

use crate::units::{parse_duration, parse_endpoint, parse_size};
use crate::verify::{progress_bar, run_block, Scenario, SecondSession};

/// Which service to torture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// Verified block reads and writes.
    Block,
    /// An exactly-once counter and in-order one-way messages.
    Log,
}

/// Options of `holdfast torture`.
#[derive(Debug, Args)]
pub(crate) struct TortureArgs {
    /// What to torture.
    #[arg(long, value_enum, default_value = "block")]
    mode: Mode,
    /// A running target: `holdfast target` for block mode, `holdfast target
    /// --service log` for log mode. Without it an in-process target runs.
    #[arg(long, value_name = "ADDR")]
    target: Option<String>,
    /// How long to run.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed for the workload and the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many faults to inject [default: two per second]; 0 also turns
    /// the second session's io-timeout faults off.
    #[arg(long)]
    faults: Option<u32>,
    /// Do not restart the in-process target (block mode restarts it once).
    #[arg(long)]
    no_restart: bool,
    /// Concurrent workers.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Size of the in-process target's volume.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    size: u64,
    /// The detection bound for a silent connection.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    detection: Duration,
    /// Block mode: workers of a second session on the same target, writing
    /// the first session's blocks through an NBD server with an io-timeout
    /// (0: no second session).
    #[arg(long, default_value_t = 2)]
    second_session_workers: usize,
    /// Block mode: the second session's NBD io-timeout; its path is
    /// blackholed for 1.5 to 4 times this now and then.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    io_timeout: Duration,
    /// Block mode: keep the second session but do not blackhole its path
    /// (no io-timeouts), to tell its faults from the others.
    #[arg(long)]
    no_io_timeout_faults: bool,
    /// Block mode: nodes serving the volume. With 2, two in-process
    /// targets serve one volume file (each behind its own fault proxy) and
    /// the workload runs over a path group; every third fault takes a
    /// node's path down for 1-2.5 s, so the group fails over (making the
    /// old node safe first) both ways.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    nodes: u8,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the torture test.
pub(crate) async fn run(args: TortureArgs) -> anyhow::Result<ExitCode> {
    let faults = args
        .faults
        .unwrap_or_else(|| u32::try_from(args.duration.as_secs() * 2).unwrap_or(u32::MAX));
    let target: Option<SocketAddr> = match args.target.as_deref().map(parse_endpoint) {
        None => None,
        Some(Ok(Endpoint::Tcp(a))) => Some(a),
        Some(Ok(other)) => {
            bail!("--target must be a TCP address (the proxy speaks TCP), not {other}")
        }
        Some(Err(e)) => bail!(e),
    };
    if args.nodes > 1 && (args.mode != Mode::Block || target.is_some()) {
        bail!(
            "--nodes 2 runs block mode on its own in-process nodes: drop --target and --mode log"
        );
    }
    let passed = match args.mode {
        Mode::Block => {
            let summary = run_block(&Scenario {
                duration: args.duration,
                seed: args.seed,
                faults,
                restart: !args.no_restart,
                size: args.size,
                workers: args.workers,
                detection: args.detection,
                target,
                progress: !args.json,
                second: Some(SecondSession {
                    workers: args.second_session_workers,
                    io_timeout: args.io_timeout,
                    // Longer than the io-timeout: a short blackhole makes
                    // requests time out, then resume on the same link.
                    detection: args.io_timeout * 3,
                    faults: faults > 0 && !args.no_io_timeout_faults,
                })
                .filter(|_| args.nodes == 1),
                nodes: usize::from(args.nodes),
                crash: None,
            })
            .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("\nholdfast torture --mode block --seed {}\n", args.seed);
                for p in &summary.problems {
                    println!("  problem: {p}");
                }
                print!("{}", summary.table());
            }
            summary.passed()
        }
        Mode::Log => {
            let progress = progress_bar(args.json);
            let summary = log::run(
                &log::LogScenario {
                    duration: args.duration,
                    seed: args.seed,
                    faults,
                    workers: args.workers,
                    detection: args.detection,
                    target,
                },
                &progress,
            )
            .await?;
            progress.finish_and_clear();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("\nholdfast torture --mode log --seed {}\n", args.seed);
                for p in &summary.problems {
                    println!("  problem: {p}");
                }
                print!("{}", summary.table());
            }
            summary.passed()
        }
    };
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
