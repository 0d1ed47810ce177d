//! `holdfast target`: serve a file or block device as a holdfast block
//! target until interrupted, then hand initiators off gracefully.
//!
//! On SIGINT or SIGTERM the target announces its shutdown (PROTOCOL.md
//! §10.1): connections stay up for `--shutdown-up`, new logins meanwhile are
//! refused with `ShuttingDown`, then every connection is closed and the
//! process exits. Without `--state-dir` its sessions end with it, so the
//! notice says "will not return" (`min_hold` 0xFFFFFFFF): initiators end
//! their sessions at once instead of waiting to reconnect to state that is
//! gone. With `--state-dir` the sessions are in the store and a target
//! started again on the same directory takes them back, so the notice asks
//! initiators to hold off a second and reconnect.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use holdfast::{Endpoint, Target, TargetConfig, TargetOptions};
use holdfast_block::{BlockService, FileDevice, OpenOptions};
use serde::Deserialize;

use crate::config::pick;
use crate::logsvc::LogService;
use crate::units::{parse_duration, parse_endpoint, parse_size};

/// With `--state-dir`: how long initiators hold off after a shutdown before
/// they reconnect to the target that takes their sessions back.
const DURABLE_HOLD: Duration = Duration::from_secs(1);

/// Options of `holdfast target` (also the `[target]` table of a config file).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct TargetArgs {
    /// What to serve: `block` (a volume) or `log` (the exactly-once test
    /// service that `holdfast torture --mode log` drives) [default: block].
    #[arg(long)]
    pub(crate) service: Option<String>,
    /// The file or block device to serve.
    #[arg(long, value_name = "PATH")]
    pub(crate) volume: Option<PathBuf>,
    /// Create the file, or grow it, to this size (e.g. 1G). Without it the
    /// volume must exist.
    #[arg(long)]
    #[serde(default, deserialize_with = "crate::checks::size_text")]
    pub(crate) size: Option<String>,
    /// Where to listen: HOST:PORT or unix:PATH; repeat for several.
    #[arg(long, value_name = "ADDR")]
    #[serde(default, deserialize_with = "crate::checks::one_or_many")]
    pub(crate) listen: Vec<String>,
    /// The volume's identity (a UUID), which clients check on every
    /// request. Required for a block device; a regular file keeps its own
    /// in `<file>.holdfast-id`, created with it (giving this flag for a file
    /// must match that id, or writes it when there is none yet).
    #[arg(long, value_name = "UUID")]
    pub(crate) volume_id: Option<String>,
    /// Refuse writes.
    #[arg(long)]
    #[serde(default)]
    pub(crate) read_only: bool,
    /// Open the volume with O_DIRECT (bypass the page cache).
    #[arg(long)]
    #[serde(default)]
    pub(crate) direct: bool,
    /// Commands one session may have outstanding (its credit window), at
    /// least 1 [default: 128].
    #[arg(long)]
    pub(crate) credits: Option<u32>,
    /// How long a session's state is kept after its connection is lost
    /// [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub(crate) retain: Option<String>,
    /// The most sessions served at once [default: 16384].
    #[arg(long)]
    pub(crate) max_sessions: Option<usize>,
    /// The most sessions held at once that were created from one IP
    /// address [default: 1024].
    #[arg(long)]
    pub(crate) max_sessions_per_source: Option<usize>,
    /// The longest inactivity deadline granted to a connection (it is 4 x
    /// the initiator's keep-alive, capped by this; a login promising a
    /// longer keep-alive is refused) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub(crate) max_inactivity: Option<String>,
    /// Bytes held for all connections' frames being received and queued to
    /// send; a connection that would exceed it is closed [default: 1G].
    #[arg(long, value_name = "SIZE")]
    #[serde(default, deserialize_with = "crate::checks::size_text")]
    pub(crate) memory_budget: Option<String>,
    /// On Ctrl-C or SIGTERM: how long connections stay up after the
    /// shutdown notice (new logins are refused meanwhile); then the process
    /// exits and its sessions end [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub(crate) shutdown_up: Option<String>,
    /// Another node serving the same volume (its listen address): a
    /// session to it carries fences. When a host fails over from that node
    /// to this one, it asks this node to fence the old one; this node
    /// forwards the FENCE over the peer link, the old node stops the
    /// host's queued commands, waits for its running ones and confirms, and
    /// the host re-issues at once instead of waiting out the old node's
    /// quiesce time. Repeat for several peers. Without it (or while a peer
    /// is unreachable) a fence is answered "unreachable" and the host
    /// waits instead: slower, equally safe.
    #[arg(long, value_name = "ADDR")]
    #[serde(default)]
    pub(crate) peer: Vec<String>,
    /// How long a command of a multipath host may run once it has started
    /// [default: 1s]. A node promises at login that after losing contact
    /// with a host it starts none of its commands after the inactivity
    /// deadline and has finished the started ones by the deadline plus this
    /// budget (its "quiesce time"); a host that cannot reach the node waits
    /// that long before it re-issues elsewhere. Raise it if the log reports
    /// quiesce overruns (a slow disk), lower it for faster failover.
    #[arg(long, value_name = "DURATION")]
    pub(crate) command_budget: Option<String>,
    /// Keep session state in DIR (created if missing; one target per DIR,
    /// it is locked) so sessions survive a crash, `kill -9` or power loss
    /// of this process: restarted with the same DIR within --retain, the
    /// target takes every session back statefully. Completed commands are
    /// answered from the stored cache, none runs twice, none is lost, and
    /// commands received but not finished run once, in order. The log
    /// service keeps its counter and streams there too. Cost: no answer
    /// leaves before its changes are on disk, one fsync per group of
    /// changes (changes arriving during an fsync share the next one), and
    /// for --service block one fdatasync of the volume per group that
    /// completes a write. Without it sessions end with the process.
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Print the bound endpoints and final counters as JSON lines.
    #[arg(long)]
    #[serde(default)]
    pub(crate) json: bool,
    /// The control socket `holdfast status` reads (mode 0600); `none`
    /// turns it off [default: target-PID.sock in /run/holdfast for root,
    /// else in $XDG_RUNTIME_DIR/holdfast, where `holdfast status` looks].
    #[arg(long, value_name = "PATH")]
    pub(crate) control: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9400): sessions by state, logins, recoveries, commands,
    /// bytes, credits, the response cache, backend I/O latency. Off unless
    /// given; the names are listed in README.md.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) metrics: Option<String>,
}

/// Settings after merging flags, file and defaults.
#[derive(Debug)]
pub(crate) struct TargetSettings {
    /// `None` for the log service.
    volume: Option<PathBuf>,
    size: Option<u64>,
    volume_id: Option<holdfast_block::VolumeId>,
    listen: Vec<Endpoint>,
    read_only: bool,
    direct: bool,
    protocol: TargetConfig,
    peers: Vec<Endpoint>,
    shutdown_up: Duration,
    json: bool,
    control: Option<PathBuf>,
    metrics: Option<std::net::SocketAddr>,
    /// Where session state is kept (`--state-dir`); `None`: in memory.
    state_dir: Option<PathBuf>,
}

impl TargetArgs {
    /// Merges these flags over the config file's values and checks them.
    pub(crate) fn merged(self, file: TargetArgs) -> anyhow::Result<TargetSettings> {
        let service = pick(self.service, file.service).unwrap_or_else(|| "block".to_owned());
        let volume = match (service.as_str(), pick(self.volume, file.volume)) {
            ("block", Some(v)) => Some(v),
            ("block", None) => bail!("no volume: give --volume PATH (a file or block device)"),
            ("log", None) => None,
            ("log", Some(_)) => bail!("--service log serves no volume: drop --volume"),
            (other, _) => bail!("--service {other}: expected block or log"),
        };
        let listen = if self.listen.is_empty() {
            file.listen
        } else {
            self.listen
        };
        if listen.is_empty() {
            bail!("nowhere to listen: give --listen HOST:PORT (or unix:PATH)");
        }
        let listen = listen
            .iter()
            .map(|l| parse_endpoint(l).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let size = pick(self.size, file.size)
            .map(|s| parse_size(&s).map_err(anyhow::Error::msg))
            .transpose()?;
        let duration = |v: Option<String>, default: Duration| -> anyhow::Result<Duration> {
            v.map_or(Ok(default), |s| {
                parse_duration(&s).map_err(anyhow::Error::msg)
            })
        };
        let mut protocol = TargetConfig::default();
        if let Some(c) = pick(self.credits, file.credits) {
            protocol.credits = c;
        }
        protocol.retain = duration(pick(self.retain, file.retain), protocol.retain)?;
        if let Some(m) = pick(self.max_sessions, file.max_sessions) {
            protocol.max_sessions = m;
        }
        if let Some(m) = pick(self.max_sessions_per_source, file.max_sessions_per_source) {
            protocol.max_sessions_per_source = m;
        }
        protocol.max_inactivity = duration(
            pick(self.max_inactivity, file.max_inactivity),
            protocol.max_inactivity,
        )?;
        if let Some(b) = pick(self.memory_budget, file.memory_budget) {
            let bytes = parse_size(&b).map_err(anyhow::Error::msg)?;
            protocol.memory_budget = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        protocol.command_budget = duration(
            pick(self.command_budget, file.command_budget),
            protocol.command_budget,
        )?;
        check_target(&protocol, size)?;
        let peers = if self.peer.is_empty() {
            file.peer
        } else {
            self.peer
        };
        let peers = peers
            .iter()
            .map(|p| parse_endpoint(p).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("--peer")?;
        let volume_id = pick(self.volume_id, file.volume_id)
            .map(|v| v.parse::<holdfast_block::VolumeId>())
            .transpose()
            .context("--volume-id")?;
        let state_dir = pick(self.state_dir, file.state_dir);
        if let Some(dir) = &state_dir {
            crate::checks::state_dir(dir, volume.as_deref())?;
        }
        Ok(TargetSettings {
            state_dir,
            volume,
            size,
            volume_id,
            listen,
            read_only: self.read_only || file.read_only,
            direct: self.direct || file.direct,
            protocol,
            peers,
            shutdown_up: duration(
                pick(self.shutdown_up, file.shutdown_up),
                Duration::from_secs(1),
            )?,
            json: self.json || file.json,
            metrics: pick(self.metrics, file.metrics)
                .map(|m| crate::units::parse_socket_addr(&m).map_err(anyhow::Error::msg))
                .transpose()
                .context("--metrics")?,
            control: match pick(self.control, file.control).as_deref() {
                Some("none") => None,
                Some(path) => Some(PathBuf::from(path)),
                None => Some(crate::control::default_path("target")),
            },
        })
    }
}

/// Refuses target settings that parse but cannot work.
fn check_target(protocol: &TargetConfig, size: Option<u64>) -> anyhow::Result<()> {
    use crate::checks::{at_least, duration_within};
    at_least(
        "credits",
        u64::from(protocol.credits),
        1,
        "a session needs room for at least one command",
    )?;
    at_least(
        "max-sessions",
        protocol.max_sessions as u64,
        1,
        "with 0 every login would be refused",
    )?;
    at_least(
        "max-sessions-per-source",
        protocol.max_sessions_per_source as u64,
        1,
        "with 0 every login would be refused",
    )?;
    at_least(
        "memory-budget",
        protocol.memory_budget as u64,
        1 << 20,
        "connections need room for their frames; 1M is the least that serves one",
    )?;
    duration_within(
        "max-inactivity",
        protocol.max_inactivity,
        Duration::from_millis(50),
        Duration::from_secs(3600),
        "the shortest inactivity deadline the protocol grants is 50ms",
    )?;
    duration_within(
        "retain",
        protocol.retain,
        Duration::from_millis(1),
        Duration::from_secs(7 * 24 * 3600),
        "with 0 a session would end at its first broken connection",
    )?;
    if size == Some(0) {
        bail!("--size 0 makes an empty volume: give the volume's size, e.g. --size 1G");
    }
    Ok(())
}

/// Serves until Ctrl-C or SIGTERM.
pub(crate) async fn run(s: TargetSettings) -> anyhow::Result<ExitCode> {
    // Registered before serving, so an early signal is not lost.
    let mut signals = crate::signals::Signals::new()?;
    let options = {
        let mut o = TargetOptions::default();
        o.protocol = s.protocol.clone();
        o.peers = s.peers.clone();
        o
    };
    let store = s
        .state_dir
        .as_deref()
        .map(crate::state_dir::open)
        .transpose()?;
    let recovered = store.as_ref().map(|st| {
        // On stderr with the other logs (and in the `serving` line).
        tracing::info!(
            "{}",
            crate::state_dir::recovered_text(st.dir(), st.report())
        );
        crate::state_dir::recovered_json(st.report())
    });
    // Installed before the target serves: the request path registers its
    // metric handles once, on first use, and keeps them; a request served
    // before the recorder existed would keep a handle that records nothing.
    if let Some(addr) = s.metrics {
        crate::metrics_export::install(addr)?;
    }
    let (target, what, size) = match &s.volume {
        Some(volume) => {
            let device = FileDevice::open(
                volume,
                OpenOptions {
                    size: s.size,
                    read_only: s.read_only,
                    direct: s.direct,
                },
            )
            .with_context(|| format!("could not open the volume {}", volume.display()))?;
            let size = holdfast_block::BlockDevice::size(&device);
            let volume_id = volume_identity(volume, s.volume_id)?;
            tracing::info!(%volume_id, volume = %volume.display(), "volume identity");
            let service = BlockService::with_options(
                device.clone(),
                holdfast_block::ServiceOptions {
                    volume_id: Some(volume_id),
                    ..holdfast_block::ServiceOptions::default()
                },
            );
            let target = match store {
                // One fdatasync of the volume per group that completes a
                // write, before the group's own fsync.
                Some(store) => {
                    Target::serve_durable(&s.listen, options, store, service, Arc::new(device))
                        .await?
                }
                None => Target::serve(&s.listen, options, service).await?,
            };
            (target, volume.display().to_string(), Some(size))
        }
        None => {
            let target = match store {
                Some(store) => {
                    let log = match store.service_state() {
                        Some(stored) => LogService::from_state(stored).map_err(|e| {
                            anyhow::anyhow!(
                                "the log service's state in the session store in {0} cannot                                  be read ({e}); nothing was changed. To start with no sessions:                                  mv {0} {0}.damaged, then start the target again",
                                store.dir().display()
                            )
                        })?,
                        None => LogService::default(),
                    };
                    let service = log.service();
                    Target::serve_durable(&s.listen, options, store, service, Arc::new(log)).await?
                }
                None => Target::serve(&s.listen, options, LogService::default().service()).await?,
            };
            (target, "the log service".to_owned(), None)
        }
    };
    if s.metrics.is_some() {
        crate::metrics_export::export_target(target.observer());
    }
    let control = match &s.control {
        Some(path) => {
            let observer = target.observer();
            let service = what.clone();
            let status: crate::control::StatusFn = std::sync::Arc::new(move || {
                let observer = observer.clone();
                let service = service.clone();
                Box::pin(
                    async move { crate::status_cmd::target_document(&observer, &service).await },
                )
            });
            Some(crate::control::Control::start(path, status)?)
        }
        None => None,
    };
    let endpoints: Vec<String> = target.endpoints().iter().map(ToString::to_string).collect();
    if s.json {
        println!(
            "{}",
            serde_json::json!({
                "event": "serving",
                "service": what,
                "size": size,
                "endpoints": endpoints,
                "recovered": recovered,
            })
        );
    } else {
        eprintln!(
            "serving {what}{} on {}; Ctrl-C to stop",
            size.map(|b| format!(" ({b} bytes)")).unwrap_or_default(),
            endpoints.join(", ")
        );
    }
    crate::notify::ready(&format!("serving {what} on {}", endpoints.join(", ")));
    signals.next().await;
    crate::notify::stopping("shutdown notice sent; connections close after the up time");
    let durable = s.state_dir.is_some();
    if durable {
        eprintln!(
            "shutting down: connections stay up {:?} (new logins refused), then the process \
             exits; its sessions stay in the state dir and a target started again on it \
             within --retain takes them back",
            s.shutdown_up
        );
    } else {
        eprintln!(
            "shutting down: connections stay up {:?} (new logins refused), then the process \
             exits; its sessions end with it (announced as \"will not return\")",
            s.shutdown_up
        );
    }
    drop(control);
    let stats = target.stats().await;
    // Without a store, sessions do not survive this process: say it will
    // not return. With one, ask initiators to come back after a moment.
    let hold = durable.then_some(DURABLE_HOLD);
    target.shutdown(s.shutdown_up, hold).await;
    if let Some(stats) = stats {
        let counters = serde_json::to_value(&stats)?;
        if s.json {
            println!(
                "{}",
                serde_json::json!({ "event": "stopped", "stats": counters })
            );
        } else {
            eprintln!("stopped: {}", counters_line(&counters));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `name value, name value, …` for the non-zero counters of a JSON object
/// (`no activity` when all are zero).
fn counters_line(counters: &serde_json::Value) -> String {
    let parts: Vec<String> = counters
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64() != Some(0))
        .map(|(k, v)| format!("{} {v}", k.replace('_', " ")))
        .collect();
    if parts.is_empty() {
        "no activity".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The identity of the volume at `path`: for a regular file, its sidecar
/// (created if missing, with `given` or a random id; `given` must match an
/// existing one); for a block device, `given`, which is then required.
fn volume_identity(
    path: &std::path::Path,
    given: Option<holdfast_block::VolumeId>,
) -> anyhow::Result<holdfast_block::VolumeId> {
    use holdfast_block::identity;
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return given.with_context(|| {
            format!(
                "{} is not a regular file: give its identity with --volume-id UUID \
                 (clients check it on every request)",
                path.display()
            )
        });
    }
    let sidecar = identity::sidecar_path(path);
    if let (Some(id), false) = (given, sidecar.exists()) {
        identity::store(path, id)
            .with_context(|| format!("could not write {}", sidecar.display()))?;
    }
    let stored = identity::load_or_create(path)
        .with_context(|| format!("could not read or create {}", sidecar.display()))?;
    if let Some(id) = given.filter(|id| *id != stored) {
        bail!(
            "--volume-id {id} differs from the id {stored} stored in {}",
            sidecar.display()
        );
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_target(extra: &str) -> anyhow::Result<TargetSettings> {
        let file: TargetArgs = toml::from_str(&format!(
            "service = \"log\"\nlisten = \"127.0.0.1:0\"\n{extra}"
        ))?;
        TargetArgs::default().merged(file)
    }

    #[test]
    fn nonsense_values_are_refused_with_the_flag_named() {
        for (extra, flag) in [
            ("credits = 0", "--credits 0"),
            ("max-sessions = 0", "--max-sessions 0"),
            ("max-sessions-per-source = 0", "--max-sessions-per-source 0"),
            ("max-inactivity = \"0s\"", "--max-inactivity 0ms"),
            ("retain = \"0s\"", "--retain 0ms"),
            ("memory-budget = 1024", "--memory-budget 1024"),
        ] {
            let err = log_target(extra).expect_err(extra).to_string();
            assert!(err.starts_with(flag), "{extra}: {err}");
        }
        let err = TargetArgs {
            volume: Some("/tmp/x.img".into()),
            size: Some("0".to_owned()),
            listen: vec!["127.0.0.1:0".to_owned()],
            ..TargetArgs::default()
        }
        .merged(TargetArgs::default())
        .expect_err("size 0")
        .to_string();
        assert!(err.starts_with("--size 0"), "{err}");
        assert!(log_target("credits = 1").is_ok());
    }

    /// `state-dir` in the file or `--state-dir` on the command line (which
    /// wins) reaches the settings; a path that is a file is refused with
    /// the flag named.
    #[test]
    fn a_state_dir_comes_from_the_file_or_the_flag_and_must_be_a_directory() {
        let from_file = log_target("state-dir = \"/var/lib/holdfast/a\"").expect("valid");
        assert_eq!(
            from_file.state_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/holdfast/a"))
        );
        let file: TargetArgs =
            toml::from_str("service = \"log\"\nlisten = \"127.0.0.1:0\"\nstate-dir = \"/x\"\n")
                .expect("valid config");
        let flag = TargetArgs {
            state_dir: Some("/var/lib/holdfast/b".into()),
            ..TargetArgs::default()
        }
        .merged(file)
        .expect("valid");
        assert_eq!(
            flag.state_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/holdfast/b"))
        );
        assert!(log_target("").expect("valid").state_dir.is_none());
        let not_a_dir = std::env::current_exe().expect("this test binary, a file");
        let err = log_target(&format!(
            "state-dir = {:?}",
            not_a_dir.display().to_string()
        ))
        .expect_err("a file is no state dir")
        .to_string();
        assert!(
            err.starts_with("--state-dir") && err.contains("not a directory"),
            "{err}"
        );
        let err = TargetArgs {
            volume: Some("/tmp/v.img".into()),
            state_dir: Some("/tmp/v.img".into()),
            listen: vec!["127.0.0.1:0".to_owned()],
            ..TargetArgs::default()
        }
        .merged(TargetArgs::default())
        .expect_err("the volume is no state dir")
        .to_string();
        assert!(err.contains("is the volume"), "{err}");
    }

    #[test]
    fn the_config_file_takes_a_listen_string_and_a_size_in_bytes() {
        let file: TargetArgs =
            toml::from_str("volume = \"/srv/v.img\"\nsize = 1048576\nlisten = \"0.0.0.0:7400\"\n")
                .expect("valid config");
        assert_eq!(file.listen, ["0.0.0.0:7400"]);
        assert_eq!(file.size.as_deref(), Some("1048576"));
        let many: TargetArgs =
            toml::from_str("listen = [\"a:1\", \"b:2\"]\nsize = \"1G\"\n").expect("valid config");
        assert_eq!(many.listen, ["a:1", "b:2"]);
        assert_eq!(many.size.as_deref(), Some("1G"));
    }

    #[test]
    fn the_defaults_in_help_are_the_real_ones() {
        use clap::CommandFactory;
        let help = crate::Cli::command()
            .find_subcommand_mut("target")
            .expect("target subcommand")
            .render_long_help()
            .to_string();
        let d = TargetConfig::default();
        for (flag, shown) in [
            ("--credits", format!("[default: {}]", d.credits)),
            ("--retain", format!("[default: {}s]", d.retain.as_secs())),
            ("--max-sessions", format!("[default: {}]", d.max_sessions)),
            (
                "--max-sessions-per-source",
                format!("[default: {}]", d.max_sessions_per_source),
            ),
            (
                "--max-inactivity",
                format!("[default: {}s]", d.max_inactivity.as_secs()),
            ),
            ("--shutdown-up", "[default: 1s]".to_owned()),
            ("--command-budget", "[default: 1s]".to_owned()),
        ] {
            // The flag's own paragraph: from its name to the next flag.
            let start = help
                .find(&format!("      {flag} "))
                .unwrap_or_else(|| panic!("--help lacks {flag}:\n{help}"));
            let rest = &help[start + flag.len() + 6..];
            let own = &rest[..rest.find("\n      -").unwrap_or(rest.len())];
            assert!(own.contains(&shown), "{flag} does not show {shown}:\n{own}");
        }
    }

    #[test]
    fn max_inactivity_and_memory_budget_reach_the_target_config() {
        let file: TargetArgs = toml::from_str(
            "service = \"log\"\nlisten = [\"127.0.0.1:0\"]\nmemory-budget = \"64M\"\n",
        )
        .expect("valid config");
        let flags = TargetArgs {
            max_inactivity: Some("10s".to_owned()),
            ..TargetArgs::default()
        };
        let s = flags.merged(file).expect("valid settings");
        assert_eq!(s.protocol.max_inactivity, Duration::from_secs(10));
        assert_eq!(s.protocol.memory_budget, 64 << 20);
        let d = TargetArgs {
            service: Some("log".to_owned()),
            listen: vec!["127.0.0.1:0".to_owned()],
            ..TargetArgs::default()
        }
        .merged(TargetArgs::default())
        .expect("valid settings");
        assert_eq!(
            d.protocol.max_inactivity,
            TargetConfig::default().max_inactivity
        );
    }
}
