//! `holdfast demo`: the whole stack in one process, under fire.
//!
//! A temporary file becomes a volume behind a block target; an initiator
//! reaches it through the fault proxy; workers run a verified read/write
//! workload while the proxy resets, blackholes and cuts the connection and
//! the target is restarted once, gracefully, with its session state gone.
//! At the end every block is read back and checked, and a table says what
//! happened. The exit status is non-zero if anything was lost, duplicated
//! or corrupted.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::units::{parse_duration, parse_size};
use crate::verify::{run_block, Scenario};

/// Options of `holdfast demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How long the workload runs (faults are injected in the first 80%).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed for the workload and the fault schedule; the same seed gives
    /// the same schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many faults to inject (one of them a graceful target restart
    /// unless --no-restart).
    #[arg(long, default_value_t = 12)]
    faults: u32,
    /// Do not restart the target.
    #[arg(long)]
    no_restart: bool,
    /// Size of the temporary volume.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    size: u64,
    /// Concurrent workers (each owns a region of the volume).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// The detection bound for a silent connection.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    detection: Duration,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs the demo.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let summary = run_block(&Scenario {
        duration: args.duration,
        seed: args.seed,
        faults: args.faults,
        restart: !args.no_restart,
        size: args.size,
        workers: args.workers,
        detection: args.detection,
        target: None,
        progress: !args.json,
        second: None,
        nodes: 1,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("\nholdfast demo: a verified workload through a fault-injecting proxy\n");
        for p in &summary.problems {
            println!("  problem: {p}");
        }
        print!("{}", summary.table());
    }
    Ok(if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
