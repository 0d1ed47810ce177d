//! Servers the benchmarks start as child processes (a `holdfast target`, a
//! `holdfast nbd`, qemu-nbd, nbdkit), and what `/proc` says about a process:
//! its resident memory and the CPU time it has used. A server in its own
//! process is measured alone, and it is killed when its handle drops, so an
//! error or Ctrl-C in the middle of a run leaves nothing behind.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a server may take to come up.
const STARTUP: Duration = Duration::from_secs(20);

/// A server running as a child process; killed on drop.
#[derive(Debug)]
pub(crate) struct Server {
    /// What it is, for errors.
    name: String,
    child: Child,
}

impl Server {
    /// Starts this binary with `args` plus `--json` and waits for the first
    /// JSON line on its stdout (`holdfast target` and `holdfast nbd` print
    /// one once they listen), which is returned.
    pub(crate) async fn holdfast(
        name: &str,
        args: &[&str],
    ) -> anyhow::Result<(Server, serde_json::Value)> {
        let exe = std::env::current_exe().context("could not find the holdfast binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(args).arg("--json");
        // Its log lines (a line per session, at 10,000 sessions) would
        // bury the bench's progress: errors only, unless the user says.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "error");
        }
        let mut server = Server::spawn(name, cmd)?;
        let stdout = server
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(STARTUP, lines.next_line())
            .await
            .map_err(|_| anyhow!("{name} did not start within {STARTUP:?}"))?
            .with_context(|| format!("could not read the output of {name}"))?;
        let Some(line) = line else {
            let status = server.child.wait().await?;
            bail!("{name} exited ({status}) before it was ready; run it by hand to see why");
        };
        let value = serde_json::from_str(&line)
            .with_context(|| format!("{name} printed {line:?}, not its JSON line"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((server, value))
    }

    /// Starts `program ARGS` and waits until it has created the Unix socket
    /// `socket`. (Not a trial connection: nbdkit logs an error for a client
    /// that leaves before its handshake.)
    pub(crate) async fn listening_on(
        name: &str,
        program: &str,
        args: &[&str],
        socket: &Path,
    ) -> anyhow::Result<Server> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let mut server = Server::spawn(name, cmd)?;
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if socket.exists() {
                // Servers listen right after they bind.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{name} exited ({status}) before it listened on {}",
                    socket.display()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{name} did not listen on {} within {STARTUP:?}",
                    socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Spawns `cmd` with stdin closed, stdout piped and stderr inherited
    /// (so its complaints reach the user), killed on drop.
    fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Server> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}; is it installed?"))?;
        Ok(Server {
            name: name.to_owned(),
            child,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .ok_or_else(|| anyhow!("{} has already exited", self.name))
    }

    /// CPU time (user + system) the server has used so far.
    pub(crate) fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_time(&self.pid()?.to_string())
    }

    /// Stops the server and waits for it to go.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ: 100 on every Linux
/// architecture this runs on).
const USER_HZ: u64 = 100;

/// CPU time (user + system, all threads) of process `pid` (`"self"` for
/// this one), from `/proc/PID/stat`, to 10 ms.
pub(crate) fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path} is not in the expected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("{path} has no CPU time field {}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 1000 / USER_HZ))
}

/// Resident memory of process `pid` (`"self"` for this one), in KiB, from
/// `VmRSS` in `/proc/PID/status`.
pub(crate) fn rss_kib(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("{path} has no VmRSS line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        assert!(rss_kib("self").expect("rss") > 0);
        let before = cpu_time("self").expect("cpu");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_time("self").expect("cpu") > before);
    }
}
