//! `holdfast nbd`: connect to a holdfast block target and export its volume
//! over NBD on a local address, so qemu-img, qemu-io, fio, nbdcopy and the
//! kernel's nbd client use it unchanged while the session rides out
//! connection loss underneath.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use holdfast::{Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions};
use holdfast_block::nbd::{NbdOptions, Server};
use holdfast_block::Volume;
use serde::Deserialize;

use crate::config::pick;
use crate::units::{parse_duration, parse_endpoint};

/// Options of `holdfast nbd` (also the `[nbd]` table of a config file).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct NbdArgs {
    /// The holdfast target: HOST:PORT or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    pub(crate) target: Option<String>,
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
    /// Print the export's address and size as a JSON line.
    #[arg(long)]
    #[serde(default)]
    pub(crate) json: bool,
}

/// Settings after merging flags, file and defaults.
#[derive(Debug)]
pub(crate) struct NbdSettings {
    target: Endpoint,
    /// Further addresses of the same target (`--same-target`).
    same_target: Vec<Endpoint>,
    connections: u32,
    spread: holdfast::proto::Spread,
    listen: Endpoint,
    export: String,
    io_timeout: Duration,
    detection: Duration,
    session_loss: Duration,
    json: bool,
    /// The NBD server's limits (export name and io timeout set in run).
    limits: NbdOptions,
}

impl NbdArgs {
    /// Merges these flags over the config file's values and checks them.
    pub(crate) fn merged(self, file: NbdArgs) -> anyhow::Result<NbdSettings> {
        let Some(target) = pick(self.target, file.target) else {
            bail!("no target: give --target HOST:PORT (where `holdfast target` listens)");
        };
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
            bail!("--connections must be at least 1");
        }
        let spread = match pick(self.spread, file.spread).as_deref() {
            None | Some("least-outstanding") => holdfast::proto::Spread::LeastOutstanding,
            Some("round-robin") => holdfast::proto::Spread::RoundRobin,
            Some(other) => {
                bail!("--spread {other}: give least-outstanding or round-robin")
            }
        };
        Ok(NbdSettings {
            target: endpoint(&target)?,
            same_target: same_target
                .iter()
                .map(|a| endpoint(a))
                .collect::<anyhow::Result<_>>()?,
            connections,
            spread,
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
            json: self.json || file.json,
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
        })
    }
}

/// A bound NBD listener.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Connects, exports, and serves until Ctrl-C or SIGTERM, or until the
/// session is lost (see [`crate::nbd_life`]).
pub(crate) async fn run(s: NbdSettings) -> anyhow::Result<ExitCode> {
    let mut connectors: Vec<Arc<dyn holdfast::Connector>> = vec![Arc::new(EndpointConnector::new(
        s.target.clone(),
        s.detection,
    ))];
    for address in &s.same_target {
        connectors.push(Arc::new(EndpointConnector::new(
            address.clone(),
            s.detection,
        )));
    }
    let initiator = Initiator::start(
        Arc::new(holdfast::RoundRobinConnector::new(connectors)),
        InitiatorOptions {
            protocol: InitiatorConfig {
                session_loss_timeout: Some(s.session_loss),
                ..InitiatorConfig::default().with_detection_bound(s.detection)
            },
            ..InitiatorOptions::default()
        }
        .with_connections(s.connections, s.spread),
    );
    let volume = Volume::connect(initiator.clone())
        .await
        .with_context(|| format!("could not open the volume of the target at {}", s.target))?;
    let size = volume.size();
    let server = Server::new(
        Arc::new(volume.with_target_name(&s.target)),
        NbdOptions {
            export_name: s.export.clone(),
            io_timeout: Some(s.io_timeout),
            ..s.limits.clone()
        },
    );
    // Bind first, so the address printed is the one bound (port 0 works).
    let listener = match &s.listen {
        Endpoint::Tcp(addr) => Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("could not listen on {addr}"))?,
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
    // Handle Ctrl-C and SIGTERM from before the address is printed: a
    // caller that signals as soon as it sees it gets the clean stop.
    let signals = crate::signals::Signals::new()?;
    if s.json {
        println!(
            "{}",
            serde_json::json!({ "event": "exporting", "uri": uri, "size": size, "target": s.target.to_string() })
        );
    } else {
        eprintln!(
            "exporting the volume of {} ({size} bytes) as {uri}; Ctrl-C to stop",
            s.target
        );
    }
    let serve = async {
        match listener {
            Listener::Tcp(l) => server.serve_listener(l).await,
            Listener::Unix(l) => server.serve_listener(l).await,
        }
    };
    let exit = crate::nbd_life::Exit {
        initiator: &initiator,
        target: &s.target,
        listen: &s.listen,
        json: s.json,
        signals,
    };
    crate::nbd_life::serve_until_stopped(serve, exit).await
}
