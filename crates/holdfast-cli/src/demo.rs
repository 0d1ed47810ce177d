//! `holdfast demo`: the whole stack in one process, under fire.
//!
//! A temporary file becomes a volume behind a block target; an initiator
//! reaches it through the fault proxy; workers run a verified read/write
//! workload while the proxy resets, blackholes and cuts the connection and
//! the target is restarted once, gracefully, with its session state gone.
//! At the end every block is read back and checked, and a table says what
//! happened. The exit status is non-zero if anything was lost, duplicated
//! or corrupted.
//!
//! With `--crash` (or `--state-dir DIR`) the target runs as a child process
//! with a durable session store, and the restart is a `kill -9` of it: the
//! new process takes the sessions back from the store, so the workload
//! sees a pause and a stateful recovery, never a failed operation.

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
    /// Run the target as its own process with a durable session store
    /// (`holdfast target --state-dir`) and make the restart a `kill -9` of
    /// it: sessions survive the crash (stateful recovery, no failed
    /// operation). The store goes in a temporary directory.
    #[arg(long, conflicts_with = "no_restart")]
    crash: bool,
    /// Like --crash, with the session store in DIR (kept afterwards).
    #[arg(long, value_name = "DIR", conflicts_with = "no_restart")]
    state_dir: Option<std::path::PathBuf>,
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
        crash: (args.crash || args.state_dir.is_some()).then_some(args.state_dir),
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("\nholdfast demo: a verified workload through a fault-injecting proxy\n");
        if summary.faults.contains_key("kill -9") {
            println!(
                "  the target process was killed with -9 mid-workload and restarted from its \
                 state dir: {} stateful recoveries, {} stateless\n",
                summary.stateful_recoveries, summary.stateless_recoveries
            );
        }
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
