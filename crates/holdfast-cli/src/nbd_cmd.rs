//! `holdfast nbd`: connect to a holdfast block target and export its volume
//! over NBD on a local address, so qemu-img, qemu-io, fio, nbdcopy and the
//! kernel's nbd client use it unchanged while the session rides out
//! connection loss underneath.
//!
//! With several `--target`s (nodes serving the same backend) the export
//! runs over a path group ([`holdfast::paths`]): one session per node, and a
//! lost node is fenced (or waited out) before its requests are re-issued on
//! another, so no stale write lands after its retry.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use holdfast::paths::{PathGroup, PathGroupOptions, PathState, Policy};
use holdfast::{Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions};
use holdfast_block::nbd::{NbdOptions, Server};
use holdfast_block::Volume;
use serde::Deserialize;

use crate::config::pick;
use crate::peer_probe::ProbingConnector;
use crate::units::{parse_duration, parse_endpoint};

/// Options of `holdfast nbd` (also the `[nbd]` table of a config file).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct NbdArgs {
    /// The holdfast target: HOST:PORT or unix:PATH. Repeat it for the
    /// nodes of one backend (`holdfast target` processes serving the same
    /// volume): the export then holds one session per node and fails over
    /// between them.
    #[arg(long, value_name = "ADDR")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub(crate) target: Vec<String>,
    /// With several targets: `active-passive` sends every request to one
    /// node and keeps the others as standbys; `active-active` sends each to
    /// the node with the fewest outstanding [default: active-passive].
    #[arg(long, value_name = "POLICY", value_parser = ["active-passive", "active-active"])]
    pub(crate) policy: Option<String>,
    /// With several targets: extra wait on top of a lost node's advertised
    /// quiesce time before its requests are re-issued elsewhere, when it
    /// could not be fenced (for nodes that need more than they advertise)
    /// [default: 0s].
    #[arg(long, value_name = "DURATION")]
    pub(crate) failover_delay: Option<String>,
    /// Where NBD clients connect: HOST:PORT or unix:PATH
    /// [default: 127.0.0.1:10809].
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// The export's name (clients may also ask for the default, empty name).
    #[arg(long)]
    pub(crate) export: Option<String>,
    /// How long an NBD request may wait (e.g. while the session recovers)
    /// before it is cancelled [default: 60s]: one not yet sent to the
    /// target fails with EIO and never runs; one already sent waits for the
    /// target's answer.
    #[arg(long, value_name = "DURATION")]
    pub(crate) io_timeout: Option<String>,
    /// Most NBD clients served at once; more are closed at once
    /// [default: 64].
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Time an NBD client has to finish the handshake [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub(crate) handshake_timeout: Option<String>,
    /// Most requests of one NBD connection in flight [default: 64].
    #[arg(long, value_name = "N")]
    pub(crate) max_in_flight: Option<usize>,
    /// Most read/write payload of one NBD connection in memory, at least
    /// 32MiB [default: 64MiB].
    #[arg(long, value_name = "SIZE")]
    pub(crate) max_in_flight_bytes: Option<String>,
    /// Most TRIM and WRITE_ZEROES requests of one NBD connection in flight
    /// [default: 4].
    #[arg(long, value_name = "N")]
    pub(crate) max_zeroing: Option<usize>,
    /// How fast a silent connection is declared dead [default: 2s].
    #[arg(long, value_name = "DURATION")]
    pub(crate) detection: Option<String>,
    /// Give the session up after this long without a connection
    /// [default: 120s]; the export then exits with status 3 (restart it).
    #[arg(long, value_name = "DURATION")]
    pub(crate) session_loss: Option<String>,
    /// Connections of the session to the target [default: 1]. With more,
    /// commands spread over them (PROTOCOL.md §17), a lost one moves its
    /// unanswered commands to the others at once and is re-joined in the
    /// background.
    #[arg(long, value_name = "N")]
    pub(crate) connections: Option<u32>,
    /// How commands spread over several connections: least-outstanding or
    /// round-robin [default: least-outstanding].
    #[arg(long, value_name = "POLICY")]
    pub(crate) spread: Option<String>,
    /// Another listen address of the same target process (repeatable): the
    /// session's connections go to --target and these in turn.
    #[arg(long = "same-target", value_name = "ADDR")]
    #[serde(default)]
    pub(crate) same_target: Vec<String>,
    /// Export read-only: NBD clients are told so, and every write, trim
    /// and write-zeroes is refused with EPERM (the target may still take
    /// writes from others).
    #[arg(long)]
    #[serde(default)]
    pub(crate) read_only: bool,
    /// Print the export's address and size as a JSON line.
    #[arg(long)]
    #[serde(default)]
    pub(crate) json: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9401): NBD requests by type with latency, recoveries by
    /// kind with duration, lost connections by cause, the session's calls
    /// and bytes. Off unless given; the names are listed in README.md.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) metrics: Option<String>,
    /// The control socket `holdfast status` reads (mode 0600): the export,
    /// its session(s), each path's state and the NBD requests in flight;
    /// `none` turns it off [default: nbd-PID.sock in /run/holdfast for
    /// root, else in $XDG_RUNTIME_DIR/holdfast, where `holdfast status`
    /// looks].
    #[arg(long, value_name = "PATH")]
    pub(crate) control: Option<String>,
}

/// Settings after merging flags, file and defaults.
#[derive(Debug)]
pub(crate) struct NbdSettings {
    targets: Vec<Endpoint>,
    /// Further addresses of the same target (`--same-target`).
    same_target: Vec<Endpoint>,
    connections: u32,
    spread: holdfast::proto::Spread,
    policy: Policy,
    failover_delay: Duration,
    listen: Endpoint,
    export: String,
    io_timeout: Duration,
    detection: Duration,
    session_loss: Duration,
    read_only: bool,
    json: bool,
    metrics: Option<std::net::SocketAddr>,
    /// The control socket (`None`: off).
    control: Option<std::path::PathBuf>,
    /// The NBD server's limits (export name and io timeout set in run).
    limits: NbdOptions,
}

impl NbdArgs {
    /// Merges these flags over the config file's values and checks them.
    pub(crate) fn merged(self, file: NbdArgs) -> anyhow::Result<NbdSettings> {
        let targets = if self.target.is_empty() {
            file.target
        } else {
            self.target
        };
        if targets.is_empty() {
            bail!("no target: give --target HOST:PORT (where `holdfast target` listens)");
        }
        let endpoint = |s: &str| parse_endpoint(s).map_err(anyhow::Error::msg);
        let duration = |v: Option<String>, default: Duration| -> anyhow::Result<Duration> {
            v.map_or(Ok(default), |s| {
                parse_duration(&s).map_err(anyhow::Error::msg)
            })
        };
        let same_target = if self.same_target.is_empty() {
            file.same_target
        } else {
            self.same_target
        };
        let connections = pick(self.connections, file.connections).unwrap_or(1);
        if connections == 0 {
            bail!("--connections 0 is too small: it must be at least 1 (the session needs a connection)");
        }
        let spread = match pick(self.spread, file.spread).as_deref() {
            None | Some("least-outstanding") => holdfast::proto::Spread::LeastOutstanding,
            Some("round-robin") => holdfast::proto::Spread::RoundRobin,
            Some(other) => {
                bail!("--spread {other}: give least-outstanding or round-robin")
            }
        };
        let policy = pick(self.policy, file.policy)
            .map(|p| p.parse::<Policy>().map_err(anyhow::Error::msg))
            .transpose()?
            .unwrap_or_default();
        let settings = NbdSettings {
            targets: targets
                .iter()
                .map(|t| endpoint(t))
                .collect::<anyhow::Result<_>>()?,
            same_target: same_target
                .iter()
                .map(|a| endpoint(a))
                .collect::<anyhow::Result<_>>()?,
            connections,
            spread,
            policy,
            failover_delay: duration(
                pick(self.failover_delay, file.failover_delay),
                Duration::ZERO,
            )?,
            listen: endpoint(
                &pick(self.listen, file.listen).unwrap_or_else(|| "127.0.0.1:10809".to_owned()),
            )?,
            export: pick(self.export, file.export).unwrap_or_default(),
            io_timeout: duration(
                pick(self.io_timeout, file.io_timeout),
                Duration::from_secs(60),
            )?,
            detection: duration(pick(self.detection, file.detection), Duration::from_secs(2))?,
            session_loss: duration(
                pick(self.session_loss, file.session_loss),
                Duration::from_secs(120),
            )?,
            read_only: self.read_only || file.read_only,
            json: self.json || file.json,
            metrics: pick(self.metrics, file.metrics)
                .map(|m| crate::units::parse_socket_addr(&m).map_err(anyhow::Error::msg))
                .transpose()
                .context("--metrics")?,
            control: match pick(self.control, file.control).as_deref() {
                Some("none") => None,
                Some(path) => Some(std::path::PathBuf::from(path)),
                None => Some(crate::control::default_path("nbd")),
            },
            limits: {
                let d = NbdOptions::default();
                let bytes = pick(self.max_in_flight_bytes, file.max_in_flight_bytes)
                    .map(|v| crate::units::parse_size(&v).map_err(anyhow::Error::msg))
                    .transpose()?
                    .map_or(Ok(d.max_in_flight_bytes), u32::try_from)
                    .context("--max-in-flight-bytes must be below 4GiB")?;
                NbdOptions {
                    max_connections: pick(self.max_connections, file.max_connections)
                        .unwrap_or(d.max_connections),
                    handshake_timeout: duration(
                        pick(self.handshake_timeout, file.handshake_timeout),
                        d.handshake_timeout,
                    )?,
                    max_in_flight: pick(self.max_in_flight, file.max_in_flight)
                        .unwrap_or(d.max_in_flight),
                    max_in_flight_bytes: bytes,
                    max_zeroing_in_flight: pick(self.max_zeroing, file.max_zeroing)
                        .unwrap_or(d.max_zeroing_in_flight),
                    ..d
                }
            },
        };
        check_nbd(&settings)?;
        Ok(settings)
    }
}

/// Refuses export settings that parse but cannot work.
fn check_nbd(s: &NbdSettings) -> anyhow::Result<()> {
    use crate::checks::{at_least, duration_within};
    if s.targets.len() > 1 && !s.same_target.is_empty() {
        bail!(
            "--same-target names another address of the one --target; with several \
             --target nodes, give each node once"
        );
    }
    duration_within(
        "detection",
        s.detection,
        Duration::from_millis(100),
        Duration::from_secs(120),
        "shorter declares healthy connections dead and reconnects in a storm; longer \
         exceeds the keep-alive a target accepts",
    )?;
    duration_within(
        "io-timeout",
        s.io_timeout,
        Duration::from_millis(100),
        Duration::from_secs(24 * 3600),
        "with 0 every request would fail before it is sent",
    )?;
    duration_within(
        "session-loss",
        s.session_loss,
        s.detection,
        Duration::from_secs(7 * 24 * 3600),
        "the session cannot be given up before a lost connection is even detected",
    )?;
    for (flag, value) in [
        ("max-connections", s.limits.max_connections),
        ("max-in-flight", s.limits.max_in_flight),
        ("max-zeroing", s.limits.max_zeroing_in_flight),
    ] {
        at_least(flag, value as u64, 1, "with 0 no request could be served")?;
    }
    Ok(())
}

/// A bound NBD listener.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Accepts a TOML string or a list of strings (`target = "a"` or
/// `target = ["a", "b"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Opens the volume: over one session for one target, over a path group
/// for several.
async fn open_volume(s: &NbdSettings) -> anyhow::Result<Volume> {
    let options = {
        let mut o = InitiatorOptions::default();
        o.protocol = {
            let mut ic = InitiatorConfig::default().with_detection_bound(s.detection);
            ic.session_loss_timeout = Some(s.session_loss);
            ic
        };
        o
    }
    .with_connections(s.connections, s.spread);
    let names = targets_text(&s.targets);
    // Each target's connector probes its peer until a login succeeds.
    let probed: Vec<(Endpoint, Arc<ProbingConnector>)> = s
        .targets
        .iter()
        .map(|t| {
            let inner = Arc::new(EndpointConnector::new(t.clone(), s.detection));
            (t.clone(), Arc::new(ProbingConnector::new(inner, t)))
        })
        .collect();
    let not_holdfast = async {
        let mut waits = tokio::task::JoinSet::new();
        for (t, c) in &probed {
            let (target, probe) = (t.clone(), c.probe());
            waits.spawn(async move { (target, probe.not_holdfast().await) });
        }
        let Some(Ok((target, why))) = waits.join_next().await else {
            return std::future::pending().await;
        };
        anyhow::anyhow!(
            "{} is not a holdfast target: its first bytes are not a holdfast frame ({why}). \
             Nothing was exported and nothing was written; give --target the address where \
             `holdfast target` listens",
            crate::peer_probe::address(&target)
        )
    };
    let open = async {
        if let [(target, connector)] = probed.as_slice() {
            // --same-target: further addresses of this target, used in turn.
            let mut connectors: Vec<Arc<dyn holdfast::Connector>> = vec![connector.clone()];
            for address in &s.same_target {
                connectors.push(Arc::new(EndpointConnector::new(
                    address.clone(),
                    s.detection,
                )));
            }
            let initiator = Initiator::start(
                Arc::new(holdfast::RoundRobinConnector::new(connectors)),
                options,
            );
            let volume = Volume::connect(initiator)
                .await
                .with_context(|| format!("could not open the volume of the target at {target}"))?;
            return Ok(volume.with_target_name(target));
        }
        let mut builder = PathGroup::builder().options({
            let mut o = PathGroupOptions::default();
            o.policy = s.policy;
            o.failover_delay = s.failover_delay;
            o.initiator = options;
            o
        });
        for (t, c) in &probed {
            builder = builder.connector(t.to_string(), c.clone());
        }
        let group = builder.start()?;
        let volume = Volume::connect_group(group)
            .await
            .with_context(|| format!("could not open the volume of the targets at {names}"))?;
        Ok(volume.with_target_name(format!("one of {names}")))
    };
    tokio::select! {
        opened = open => opened,
        e = not_holdfast => Err(e),
    }
}

/// The targets' addresses, for messages.
pub(crate) fn targets_text(targets: &[Endpoint]) -> String {
    let all: Vec<String> = targets.iter().map(ToString::to_string).collect();
    all.join(", ")
}

/// Logs every change of a path's state (and, with `--json`, prints it as
/// a `path` event line), so the export's status shows each node.
async fn report_paths(group: PathGroup, json: bool) {
    let mut seen: Vec<Option<PathState>> = Vec::new();
    loop {
        let stats = group.stats().await;
        seen.resize(stats.paths.len(), None);
        for (p, last) in stats.paths.iter().zip(seen.iter_mut()) {
            if *last == Some(p.state) {
                continue;
            }
            *last = Some(p.state);
            tracing::info!(path = %p.name, state = %p.state, "{p}");
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "path",
                        "path": p.name,
                        "state": p.state.name(),
                        "failovers": p.failovers,
                        "fences_requested": p.fences_requested,
                        "fences_confirmed": p.fences_confirmed,
                        "fence_latency_ms": p.fence_latency.map(|d| d.as_secs_f64() * 1e3),
                        "commands_moved": p.commands_moved,
                        "epoch": stats.epoch,
                    })
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Binds the NBD listener, connects, exports, and serves until Ctrl-C or
/// SIGTERM, or until the session is lost (see [`crate::nbd_life`]).
///
/// The listener comes first: a port that cannot be bound fails the export
/// before any session is opened on the target (none is left behind), and a
/// client that connects while the session is being established waits for
/// its greeting (within `--handshake-timeout`) instead of being refused.
pub(crate) async fn run(s: NbdSettings) -> anyhow::Result<ExitCode> {
    if let Some(addr) = s.metrics {
        crate::metrics_export::install(addr)?;
    }
    // Bind first, so the address printed is the one bound (port 0 works).
    let listener = match &s.listen {
        Endpoint::Tcp(addr) => Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("could not listen on {addr}: nothing was exported"))?,
        ),
        Endpoint::Unix(path) => Listener::Unix(crate::nbd_life::bind_unix(path)?),
        Endpoint::Named(n) => bail!("cannot listen on {n}"),
    };
    let uri = match &listener {
        Listener::Tcp(l) => format!("nbd://{}/{}", l.local_addr()?, s.export),
        Listener::Unix(_) => match &s.listen {
            Endpoint::Unix(p) => format!("nbd+unix:///{}?socket={}", s.export, p.display()),
            other => other.to_string(),
        },
    };
    let (slot, server) = Server::<Volume>::deferred(NbdOptions {
        export_name: s.export.clone(),
        read_only: s.read_only,
        io_timeout: Some(s.io_timeout),
        ..s.limits.clone()
    });
    let serve = async {
        match listener {
            Listener::Tcp(l) => server.serve_listener(l).await,
            Listener::Unix(l) => server.serve_listener(l).await,
        }
    };
    let mut serve = std::pin::pin!(serve);
    // Clients are accepted (and wait for their greeting) while the volume
    // opens.
    let opened = tokio::select! {
        opened = open_volume(&s) => opened,
        never = &mut serve => match never {},
    };
    let volume = match opened {
        Ok(v) => v,
        Err(e) => {
            if let Endpoint::Unix(path) = &s.listen {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    slot.set(Arc::new(volume.clone()));
    if s.metrics.is_some() {
        if let Some(initiator) = volume.initiator() {
            crate::metrics_export::export_initiator(initiator.clone());
        }
        if let Some(group) = volume.path_group() {
            crate::metrics_export::export_paths(group.clone());
        }
    }
    let names = targets_text(&s.targets);
    let size = volume.size();
    let control = match &s.control {
        Some(path) => {
            let (volume, uri, server) = (volume.clone(), uri.clone(), server.clone());
            let targets: Vec<String> = s.targets.iter().map(ToString::to_string).collect();
            let status: crate::control::StatusFn = Arc::new(move || {
                let (volume, uri, targets) = (volume.clone(), uri.clone(), targets.clone());
                let in_flight = server.requests_in_flight();
                Box::pin(async move {
                    crate::status_cmd::nbd_document(&volume, &uri, &targets, in_flight).await
                })
            });
            Some(crate::control::Control::start(path, status)?)
        }
        None => None,
    };
    // Handle Ctrl-C and SIGTERM from before the address is printed: a
    // caller that signals as soon as it sees it gets the clean stop.
    let signals = crate::signals::Signals::new()?;
    if s.json {
        println!(
            "{}",
            serde_json::json!({
                "event": "exporting",
                "uri": uri,
                "size": size,
                "target": s.targets.first().map(ToString::to_string),
                "targets": s.targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        );
    } else {
        eprintln!("exporting the volume of {names} ({size} bytes) as {uri}; Ctrl-C to stop");
    }
    crate::notify::ready(&format!("exporting the volume of {names} as {uri}"));
    // After the `exporting` line: a caller reads that one first.
    let reporter = volume
        .path_group()
        .cloned()
        .map(|g| tokio::spawn(report_paths(g, s.json)));
    let exit = crate::nbd_life::Exit {
        volume: &volume,
        target: &names,
        listen: &s.listen,
        json: s.json,
        signals,
    };
    let result = crate::nbd_life::serve_until_stopped(serve, exit).await;
    drop(control);
    if let Some(r) = reporter {
        r.abort();
    }
    result
}
