//! `holdfast`: serve a volume over sessions that survive broken connections,
//! export it to standard tools over NBD, and see it survive faults in a
//! one-command demo.

mod bench;
mod chaos_cmd;
mod checks;
mod config;
mod control;
mod demo;
mod errors;
mod logsvc;
mod malloc;
mod metrics_endpoint;
mod metrics_export;
mod metrics_histogram;
mod nbd_cmd;
mod nbd_life;
mod notify;
mod peer_probe;
mod signals;
mod state_dir;
mod status_cmd;
mod target_cmd;
mod torture;
mod units;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Block storage over sessions that survive broken connections: every
/// command executes exactly once and in order, however often the network
/// breaks.
#[derive(Debug, Parser)]
#[command(
    name = "holdfast",
    version,
    after_help = "Start with `holdfast demo`. Logs go to stderr; set RUST_LOG=debug for more."
)]
struct Cli {
    /// A TOML file with a [target] and/or [nbd] table whose keys are the
    /// long flag names (e.g. `volume = "/srv/disk.img"`); flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a file or block device as a holdfast block target.
    #[command(
        after_help = "Example:\n  holdfast target --volume /srv/disk.img --size 1G --listen 0.0.0.0:7400"
    )]
    Target(target_cmd::TargetArgs),
    /// Connect to a target and export its volume over NBD, for qemu-img,
    /// qemu-io, fio, nbdcopy and the kernel's nbd client.
    #[command(
        after_help = "Examples:\n  holdfast nbd --target 10.0.0.5:7400 --listen 127.0.0.1:10809\n  qemu-img info nbd://127.0.0.1:10809/\n\n\
Two nodes of one backend (two `holdfast target` processes serving the same volume, each with\n\
--peer naming the other):\n  holdfast nbd --target 10.0.0.5:7400 --target 10.0.0.6:7400 --policy active-passive\n\n\
When the path to a node is lost (gone for longer than --detection), its requests that the node\n\
never received move to another node at once; for the ones it may still run, the export asks a\n\
surviving node to fence it (the old node confirms that none of them will run: failover takes\n\
milliseconds) or, if the old node cannot be reached, waits the quiesce time it advertised, plus\n\
--failover-delay, from the last contact. Only then are they re-issued, in their original order,\n\
so a write retried on the new node is never overwritten by its stale copy. Each node's state\n\
(active, standby, reconnecting, fencing, down), fences and moved requests are logged, printed as\n\
`path` JSON lines with --json, and summed up on exit."
    )]
    Nbd(nbd_cmd::NbdArgs),
    /// Run a verified read/write workload through a fault-injecting proxy
    /// (resets, blackholes, a graceful target restart) and report what
    /// survived. Needs nothing: it creates a temporary volume.
    #[command(after_help = "Example:\n  holdfast demo --duration 20s --seed 7")]
    Demo(demo::DemoArgs),
    /// A TCP fault-injecting proxy: reset, blackhole, delay, bandwidth,
    /// cut, half-close and hold-then-release per link and direction, from a
    /// seeded random schedule or a control API on loopback.
    #[command(
        after_help = "Examples:\n  holdfast chaos --listen 127.0.0.1:7401 --upstream 127.0.0.1:7400 --control 127.0.0.1:7402\n  echo 'fault hold up newest' | nc -q1 127.0.0.1 7402\n  holdfast chaos --listen 127.0.0.1:7401 --upstream 127.0.0.1:7400 --schedule-seed 7 --faults 20 --duration 60s"
    )]
    Chaos(chaos_cmd::ChaosArgs),
    /// Run a long verified workload through chaos links and check its
    /// history: block reads against acknowledged writes, or an exactly-once
    /// counter and in-order one-way messages.
    #[command(
        after_help = "Examples:\n  holdfast torture --duration 600s --seed 3\n  holdfast torture --mode log --duration 60s\n  holdfast torture --target 127.0.0.1:7400 --no-restart"
    )]
    Torture(torture::TortureArgs),
    /// Measure holdfast on this machine beside baselines run in the same
    /// invocation: overhead against plain TCP, recovery time after faults,
    /// block I/O against qemu-nbd, nbdkit and the local file, and scale
    /// (memory per session, fairness). Prints tables and writes Markdown
    /// reports and SVG plots.
    #[command(
        after_help = "Examples:\n  holdfast bench all --quick        # every scenario, under 5 minutes\n  holdfast bench overhead --results bench-results\n  holdfast bench block --quick      # needs fio, qemu-nbd, nbdkit\n  holdfast bench scale --json"
    )]
    Bench(bench::BenchArgs),
    /// Show what a running target or export is doing: its sessions and
    /// their state (attached, detached, expiring), connections and
    /// counters, read over its local control socket (no network needed).
    #[command(
        after_help = "Examples:\n  holdfast status                          # every target and export running here\n  holdfast status --target /run/holdfast/disk1.sock --json\n  holdfast status --nbd /run/holdfast/nbd-4242.sock"
    )]
    Status(status_cmd::StatusArgs),
}

fn main() -> ExitCode {
    malloc::keep_large_blocks();
    let cli = Cli::parse();
    // The demo draws a progress line and a table: keep its logs to errors
    // unless asked. The services log their sessions' lives by default.
    init_logs(match cli.command {
        Command::Demo(_) | Command::Torture(_) | Command::Bench(_) | Command::Status(_) => "error",
        _ => "info",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let file = config::ConfigFile::load(cli.config.as_deref())?;
        match cli.command {
            Command::Target(args) => target_cmd::run(args.merged(file.target)?).await,
            Command::Nbd(args) => nbd_cmd::run(args.merged(file.nbd)?).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Chaos(args) => chaos_cmd::run(args).await,
            Command::Torture(args) => torture::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Status(args) => status_cmd::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", errors::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (else by `default`), coloured only
/// when stderr is a terminal. A `RUST_LOG` that does not parse is reported
/// (the default filter is used instead), never silently ignored.
fn init_logs(default: &str) {
    use std::io::IsTerminal;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            match tracing_subscriber::EnvFilter::try_new(&spec) {
                Ok(filter) => filter,
                Err(e) => {
                    eprintln!(
                        "warning: RUST_LOG={spec:?} is not a valid filter ({e}); logging at \
                         {default:?} instead. Examples: RUST_LOG=debug, \
                         RUST_LOG=holdfast=debug,warn"
                    );
                    tracing_subscriber::EnvFilter::new(default)
                }
            }
        }
        _ => tracing_subscriber::EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
