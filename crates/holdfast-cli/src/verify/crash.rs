//! The demo's target as a child process with a state dir, so a restart can
//! be a real crash: `kill -9` of the process (no shutdown notice, nothing
//! flushed), then a new `holdfast target --state-dir` on the same port,
//! volume and state dir, which takes every session back statefully
//! (PROTOCOL.md §12). The workload must not notice beyond a pause: no
//! operation fails, nothing is lost, duplicated or corrupted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::bench::child::Server;

/// A `holdfast target --state-dir` child process, killed on drop.
pub(crate) struct CrashTarget {
    /// The `target` arguments, `--listen` last so it can be pinned.
    args: Vec<String>,
    /// The running process, `None` between a kill and a restart.
    server: Option<Server>,
    /// Where it listens (the same port across restarts).
    pub(crate) addr: SocketAddr,
    /// Kills done so far.
    pub(crate) kills: u64,
    /// What the latest start reported about the state it recovered.
    pub(crate) recovered: Option<serde_json::Value>,
}

impl CrashTarget {
    /// Starts a target serving `volume` with its session store in
    /// `state_dir`, retaining sessions for `retain`.
    pub(crate) async fn start(
        volume: &Path,
        state_dir: &Path,
        retain: Duration,
    ) -> anyhow::Result<CrashTarget> {
        let mut t = CrashTarget {
            args: vec![
                "target".into(),
                "--volume".into(),
                volume.display().to_string(),
                "--state-dir".into(),
                state_dir.display().to_string(),
                "--retain".into(),
                format!("{}ms", retain.as_millis()),
                "--control".into(),
                "none".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
            ],
            server: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            kills: 0,
            recovered: None,
        };
        t.spawn().await?;
        Ok(t)
    }

    /// Starts the process and reads the address it serves on.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (server, event) = Server::holdfast("holdfast target --state-dir", &args).await?;
        let endpoint = event["endpoints"][0]
            .as_str()
            .ok_or_else(|| anyhow!("the target announced no endpoint: {event}"))?;
        self.addr = endpoint
            .trim_start_matches("tcp://")
            .parse()
            .with_context(|| format!("the target's endpoint {endpoint}"))?;
        if let Some(last) = self.args.last_mut() {
            // Restarts listen where the initiator reconnects.
            *last = self.addr.to_string();
        }
        self.recovered = event.get("recovered").cloned();
        self.server = Some(server);
        Ok(())
    }

    /// `kill -9` of the target, then a new one from the same state dir.
    /// Returns when the old process was gone.
    pub(crate) async fn crash_and_restart(&mut self) -> anyhow::Result<Instant> {
        if let Some(old) = self.server.take() {
            old.stop().await;
            self.kills += 1;
        }
        let killed = Instant::now();
        self.spawn().await?;
        Ok(killed)
    }

    /// Stops the target (SIGKILL: its state stays on disk).
    pub(crate) async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

/// The state dir of a demo run: the one given, or `scratch/state`.
pub(crate) fn state_dir(given: Option<&Path>, scratch: &Path) -> PathBuf {
    given.map_or_else(|| scratch.join("state"), Path::to_path_buf)
}
