//! The verified block workload shared by `holdfast demo` and `holdfast
//! torture`: workers write, read back, zero and flush self-describing blocks
//! through a [`Volume`] reached via the fault proxy, while a fault schedule
//! runs (resets, blackholes, cuts and, when the target is in-process, a
//! graceful restart that loses its session state). At the end every block is
//! read back and checked, and a [`Summary`] says what happened.

pub(crate) mod blocks;
mod crash;
pub(crate) mod faults;
pub(crate) mod history;
pub(crate) mod ledger;
mod nodes;
pub(crate) mod report;
pub(crate) mod second;
pub(crate) mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use holdfast::chaos::Proxy;
use holdfast::{
    Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions, Target,
    TargetConfig, TargetOptions,
};
use holdfast_block::{BlockService, FileDevice, OpenOptions, Volume};
use indicatif::{ProgressBar, ProgressStyle};

use blocks::BLOCK;
use faults::DemoFault;
use ledger::{Duplicates, Ledger};
pub(crate) use report::Summary;
pub(crate) use second::SecondSession;
use workload::{Tally, Worker};

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    /// How long the workload runs (faults land in the first 80%).
    pub(crate) duration: Duration,
    /// Seed of the workload and the fault schedule.
    pub(crate) seed: u64,
    /// How many faults to inject.
    pub(crate) faults: u32,
    /// Restart the in-process target once (ignored with an external target).
    pub(crate) restart: bool,
    /// Volume size, for an in-process target.
    pub(crate) size: u64,
    /// Concurrent workers, each owning a region.
    pub(crate) workers: usize,
    /// Detection bound for silent connections.
    pub(crate) detection: Duration,
    /// An external target to use instead of an in-process one.
    pub(crate) target: Option<SocketAddr>,
    /// Draw a progress line.
    pub(crate) progress: bool,
    /// A second session writing the first one's blocks, with io-timeout
    /// faults; then every read is checked against the shared history.
    pub(crate) second: Option<SecondSession>,
    /// Nodes serving the volume: 1, or 2 for a path group over two
    /// in-process nodes with path faults ([`nodes`]).
    pub(crate) nodes: usize,
    /// Run the target as a child process with a session store and make its
    /// restart a `kill -9` ([`crash`]); the store goes in the directory
    /// given, or in the scratch directory.
    pub(crate) crash: Option<Option<std::path::PathBuf>>,
}

/// The hot blocks at the start of each worker's region, where the second
/// session writes too.
const HOT_BLOCKS: u64 = 32;

/// The running target: a fresh process image for every restart.
struct TargetSide {
    target: Option<Target>,
    addr: SocketAddr,
    volume: std::path::PathBuf,
    duplicates: Arc<Duplicates>,
    /// Peer links to the other nodes (two-node runs).
    peers: Vec<Endpoint>,
    /// Responses answered from the cache by earlier incarnations.
    cache_answers_before: u64,
    /// The target as a child process with a state dir, killed with -9 at
    /// the restart (instead of `target`).
    crash: Option<crash::CrashTarget>,
}

impl TargetSide {
    /// A target run by someone else: it cannot be restarted from here.
    fn external(addr: SocketAddr) -> TargetSide {
        TargetSide {
            target: None,
            addr,
            volume: std::path::PathBuf::new(),
            duplicates: Arc::default(),
            peers: Vec::new(),
            cache_answers_before: 0,
            crash: None,
        }
    }

    /// A child-process target with its session store in `state_dir`.
    async fn crashing(
        volume: &std::path::Path,
        state_dir: &std::path::Path,
    ) -> anyhow::Result<TargetSide> {
        let child = crash::CrashTarget::start(volume, state_dir, Duration::from_secs(30)).await?;
        Ok(TargetSide {
            target: None,
            addr: child.addr,
            volume: volume.to_owned(),
            duplicates: Arc::default(),
            peers: Vec::new(),
            cache_answers_before: 0,
            crash: Some(child),
        })
    }

    fn in_process(&self) -> bool {
        !self.volume.as_os_str().is_empty()
    }

    async fn start(
        addr: SocketAddr,
        volume: &std::path::Path,
        duplicates: Arc<Duplicates>,
    ) -> anyhow::Result<TargetSide> {
        TargetSide::start_with_peers(addr, volume, duplicates, Vec::new()).await
    }

    /// Starts a node with peer links to `peers` (they forward fences).
    async fn start_with_peers(
        addr: SocketAddr,
        volume: &std::path::Path,
        duplicates: Arc<Duplicates>,
        peers: Vec<Endpoint>,
    ) -> anyhow::Result<TargetSide> {
        let mut side = TargetSide {
            target: None,
            addr,
            volume: volume.to_owned(),
            duplicates,
            peers,
            cache_answers_before: 0,
            crash: None,
        };
        side.spawn().await?;
        Ok(side)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let device = FileDevice::open(&self.volume, OpenOptions::default())
            .with_context(|| format!("could not open the demo volume {}", self.volume.display()))?;
        // With peers (two nodes), a retry-safe write re-issued after a
        // failover may rightly run again on a node: the ledger stays quiet
        // about that, and the reads are the check (verify/nodes.rs).
        let ledger = Ledger::new(device, self.duplicates.clone()).witness(self.peers.is_empty());
        let service = BlockService::new(ledger);
        let options = {
            let mut o = TargetOptions::default();
            o.protocol = {
                let mut tc = TargetConfig::default();
                tc.retain = Duration::from_secs(30);
                tc
            };
            o.peers = self.peers.clone();
            o
        };
        let target = Target::serve(&[Endpoint::Tcp(self.addr)], options, service)
            .await
            .with_context(|| format!("could not listen on {}", self.addr))?;
        if let Some(Endpoint::Tcp(bound)) = target.endpoints().first() {
            self.addr = *bound;
        }
        self.target = Some(target);
        Ok(())
    }

    /// Announces a shutdown, stops, and starts a new target on the same
    /// port and volume: the session state is gone. Returns when the old
    /// target stopped.
    async fn restart(&mut self) -> anyhow::Result<Instant> {
        if let Some(child) = &mut self.crash {
            return child.crash_and_restart().await;
        }
        if let Some(old) = self.target.take() {
            if let Some(stats) = old.stats().await {
                self.cache_answers_before += stats.answered_from_cache;
            }
            old.shutdown(Duration::from_millis(500), Some(Duration::from_millis(500)))
                .await;
        }
        let stopped = Instant::now();
        self.spawn().await?;
        Ok(stopped)
    }

    async fn stats(&self) -> Option<holdfast::TargetStats> {
        self.target.as_ref()?.stats().await
    }
}

/// Starts a fault proxy in front of `upstream` and an initiator that
/// reaches the target through it (detection bound `detection`, backoff
/// jitter seeded with `seed`, 30 s session-loss timeout).
pub(crate) async fn connect_through_proxy(
    upstream: SocketAddr,
    detection: Duration,
    seed: u64,
) -> anyhow::Result<(Arc<Proxy>, Initiator)> {
    let proxy = Arc::new(
        Proxy::start(upstream)
            .await
            .context("could not start the fault proxy on 127.0.0.1")?,
    );
    let initiator = Initiator::start(
        Arc::new(EndpointConnector::new(
            Endpoint::Tcp(proxy.addr()),
            detection,
        )),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = {
                let mut ic = InitiatorConfig::default().with_detection_bound(detection);
                ic.session_loss_timeout = Some(Duration::from_secs(30));
                ic
            };
            o.jitter_seed = Some(seed);
            o
        },
    );
    Ok((proxy, initiator))
}

/// Runs the verified block workload of `scenario` and reports.
pub(crate) async fn run_block(scenario: &Scenario) -> anyhow::Result<Summary> {
    if scenario.workers == 0 {
        bail!("--workers must be at least 1");
    }
    // An in-process target gets a temporary volume, removed afterwards.
    let scratch = match scenario.target {
        Some(_) => None,
        None => Some(Scratch::create(scenario.size)?),
    };
    let result = run_in(scenario, scratch.as_ref()).await;
    drop(scratch);
    result
}

/// A temporary directory holding the in-process target's volume.
struct Scratch {
    dir: std::path::PathBuf,
    volume: std::path::PathBuf,
}

impl Scratch {
    fn create(size: u64) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "holdfast-verify-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let volume = dir.join("volume.img");
        let file = std::fs::File::create(&volume)
            .with_context(|| format!("could not create {}", volume.display()))?;
        file.set_len(size)
            .with_context(|| format!("could not size {}", volume.display()))?;
        Ok(Scratch { dir, volume })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn run_in(scenario: &Scenario, scratch: Option<&Scratch>) -> anyhow::Result<Summary> {
    let args = scenario;
    if args.nodes >= 2 {
        let Some(s) = scratch else {
            bail!("--nodes 2 runs its own two nodes: it cannot use --target");
        };
        return nodes::run(args, &s.volume).await;
    }
    let duplicates = Arc::new(Duplicates::default());
    let mut target = match (scratch, scenario.target) {
        (Some(s), _) if scenario.crash.is_some() => {
            let dir = crash::state_dir(scenario.crash.clone().flatten().as_deref(), &s.dir);
            TargetSide::crashing(&s.volume, &dir).await?
        }
        (Some(s), _) => {
            TargetSide::start(
                "127.0.0.1:0".parse().context("address")?,
                &s.volume,
                duplicates.clone(),
            )
            .await?
        }
        (None, Some(addr)) => TargetSide::external(addr),
        (None, None) => bail!("no target and no volume"),
    };
    let (proxy, initiator) = connect_through_proxy(target.addr, args.detection, args.seed).await?;
    let device = Arc::new(
        tokio::time::timeout(Duration::from_secs(10), Volume::connect(initiator.clone()))
            .await
            .with_context(|| format!("the target at {} did not answer within 10 s", target.addr))?
            .with_context(|| {
                format!("could not open the volume of the target at {}", target.addr)
            })?,
    );
    let blocks_total = device.size() / BLOCK as u64;
    let per_worker = blocks_total / args.workers as u64;
    if per_worker < 16 {
        bail!(
            "the volume ({} bytes) is too small for {} workers: each needs at least 64 KiB",
            device.size(),
            args.workers
        );
    }

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let second = args.second.filter(|s| s.workers > 0);
    let history = second
        .is_some()
        .then(|| Arc::new(history::History::new(blocks_total, start, tally.clone())));
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let mut worker = Worker::new(
            device.clone(),
            w as u64 * per_worker,
            per_worker,
            args.seed ^ ((w as u64 + 1) << 32),
            tally.clone(),
            start,
        );
        if let Some(h) = &history {
            worker = worker.with_history(h.clone(), HOT_BLOCKS);
        }
        workers.push(tokio::spawn(worker.run(stop.clone())));
    }
    let second = match (second, &history) {
        (Some(settings), Some(history)) => Some(
            start_second(
                settings,
                target.addr,
                history.clone(),
                &tally,
                args,
                per_worker,
                start,
            )
            .await?,
        ),
        _ => None,
    };

    let progress = progress_bar(!args.progress);
    let restart = args.restart && target.in_process();
    let schedule = faults::schedule(args.duration, args.faults, restart, args.seed);
    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    let mut recovery = Histogram::<u64>::new(3).context("histogram")?;
    for (at, fault) in schedule {
        wait_until(start + at, &tally, &progress, &injected).await;
        let since = match fault {
            DemoFault::Restart => target.restart().await?,
            _ => match faults::inject(&proxy, fault) {
                Some(since) => since,
                None => continue,
            },
        };
        let name = match (fault, &target.crash) {
            (DemoFault::Restart, Some(_)) => "kill -9",
            _ => fault.name(),
        };
        *injected.entry(name.to_owned()).or_default() += 1;
        if !fault.is_outage() {
            continue;
        }
        let limit = Duration::from_secs(10) + args.detection;
        if let Some(d) = faults::time_to_recover(&tally, start, since, limit, fault).await {
            let _ = recovery.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        }
        if fault == DemoFault::Restart {
            progress.println(if target.crash.is_some() {
                "  the target process was killed with -9 and started again from its state dir"
            } else {
                "  the target restarted: its session state is gone"
            });
        }
    }
    wait_until(start + args.duration, &tally, &progress, &injected).await;
    // The second session first: its path healed and everything it had in
    // flight answered before the first session's final verification.
    let second = match second {
        Some(s) => Some(s.stop().await?),
        None => None,
    };
    if let Some(s) = &second {
        let n = s.faults.load(Ordering::Relaxed);
        if n > 0 {
            injected.insert("io-timeout".to_owned(), n);
        }
    }
    stop.store(true, Ordering::Relaxed);
    progress.set_message("verifying every block");
    for w in workers {
        w.await.context("a workload task panicked")?;
    }
    progress.finish_and_clear();
    let elapsed = start.elapsed();

    let istats = initiator.stats().await.unwrap_or_default();
    let tstats = target.stats().await.unwrap_or_default();
    let _ = initiator.close().await;
    if let Some(t) = target.target.take() {
        t.shutdown(Duration::ZERO, None).await;
    }
    if let Some(child) = &mut target.crash {
        child.stop().await;
    }
    let ms = |q: f64| (!recovery.is_empty()).then(|| recovery.value_at_quantile(q) as f64 / 1000.0);
    let problems = tally
        .problems
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Ok(Summary {
        seed: args.seed,
        duration_s: elapsed.as_secs_f64(),
        volume_bytes: device.size(),
        workers: args.workers,
        operations: load(&tally.ops),
        reads: load(&tally.reads),
        writes: load(&tally.writes),
        write_zeroes: load(&tally.zeroes),
        flushes: load(&tally.flushes),
        bytes_read: load(&tally.bytes_read),
        bytes_written: load(&tally.bytes_written),
        faults: injected,
        reconnects: istats.disconnects,
        stateful_recoveries: istats.recoveries,
        stateless_recoveries: istats.stateless_recoveries,
        resent: istats.resent,
        reissued: istats.reissued,
        answered_from_cache: target.cache_answers_before + tstats.answered_from_cache,
        recovery_p50_ms: ms(0.5),
        recovery_p99_ms: ms(0.99),
        recovery_max_ms: ms(1.0),
        failed_operations: load(&tally.failed),
        lost: load(&tally.lost),
        // The ledger witnesses duplicates in this process only.
        duplicated: (target.in_process() && target.crash.is_none())
            .then(|| duplicates.0.load(Ordering::Relaxed)),
        corrupt: load(&tally.corrupt),
        second_session_operations: second.as_ref().map(|s| load(&s.ops)),
        second_session_errors: second.as_ref().map(|s| load(&s.errors)),
        failovers: None,
        fences_confirmed: None,
        commands_moved: None,
        paths: None,
        problems,
    })
}

/// Opens the second session (its own proxy and initiator, detection bound
/// and NBD server io-timeout from `settings`) and starts its workers and
/// io-timeout faults.
async fn start_second(
    settings: SecondSession,
    target: SocketAddr,
    history: Arc<history::History>,
    tally: &Arc<Tally>,
    args: &Scenario,
    per_worker: u64,
    start: Instant,
) -> anyhow::Result<second::Running> {
    let seed = args.seed ^ 0x2222;
    let (proxy, initiator) = connect_through_proxy(target, settings.detection, seed).await?;
    let volume = Arc::new(
        tokio::time::timeout(Duration::from_secs(10), Volume::connect(initiator.clone()))
            .await
            .context("the second session's volume did not open within 10 s")?
            .context("could not open the second session's volume")?,
    );
    let zones = second::HotZones {
        regions: args.workers as u64,
        per_region: per_worker,
        hot: HOT_BLOCKS.min(per_worker),
    };
    let every = (settings.io_timeout * 3).max(Duration::from_secs(2));
    second::start(
        settings,
        proxy,
        initiator,
        volume,
        zones,
        history,
        tally,
        seed,
        every,
        start + args.duration.mul_f64(0.8),
    )
    .await
}

pub(crate) fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Sleeps until `deadline`, refreshing the progress line.
async fn wait_until(
    deadline: Instant,
    tally: &Tally,
    progress: &ProgressBar,
    injected: &BTreeMap<String, u64>,
) {
    loop {
        let faults: u64 = injected.values().sum();
        progress.set_message(format!(
            "{} ops, {} MiB written, {} faults injected, lost {} corrupt {}",
            tally.ops.load(Ordering::Relaxed),
            tally.bytes_written.load(Ordering::Relaxed) >> 20,
            faults,
            tally.lost.load(Ordering::Relaxed),
            tally.corrupt.load(Ordering::Relaxed),
        ));
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(200))).await;
    }
}
