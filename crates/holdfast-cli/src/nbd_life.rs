//! The life of `holdfast nbd` around its NBD server: binding a Unix socket
//! over a stale file a crash left behind, stopping on Ctrl-C or SIGTERM (a
//! clean close bounded in time; a second signal exits at once), and exiting
//! when the session with the target is lost, so that a supervisor restarts
//! the export instead of it answering every request with EIO forever.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::signals::Signals;
use anyhow::{bail, Context};
use holdfast::{Endpoint, SessionLoss};
use holdfast_block::Volume;
use tracing::warn;

/// How long the first Ctrl-C or SIGTERM waits for the session to close
/// cleanly (outstanding requests answered, FIN exchanged with the target).
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Exit status when the session with the target is lost (`--session-loss`
/// passed without a connection, or the target announced it will not
/// return).
pub(crate) const EXIT_SESSION_LOST: u8 = 3;

/// Binds a Unix listener at `path`. A socket file nothing listens on (a
/// connection to it is refused: a crashed export left it) is removed first;
/// a live socket, or a file that is not a socket, is left alone and is an
/// error.
pub(crate) fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match tokio::net::UnixListener::bind(path) {
        Ok(l) => return Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(e).with_context(|| format!("could not listen on {}", path.display())),
    }
    let shown = path.display();
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("could not listen on {shown}: it exists but cannot be read"))?;
    if !meta.file_type().is_socket() {
        bail!("could not listen on {shown}: a file that is not a socket is there; remove it");
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!("could not listen on {shown}: another process is listening on it"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            warn!(path = %shown, "removing a stale socket file (nothing listens on it)");
            std::fs::remove_file(path)
                .with_context(|| format!("could not remove the stale socket file {shown}"))?;
            tokio::net::UnixListener::bind(path)
                .with_context(|| format!("could not listen on {shown}"))
        }
        Err(e) => bail!(
            "could not listen on {shown}: a socket file is there and checking it failed ({e}); \
             remove it if no export uses it"
        ),
    }
}

/// Why the export stopped serving.
enum Stop {
    Signal(&'static str),
    /// The session is over on its own (lost, or, unexpectedly, closed).
    Ended(Result<(), SessionLoss>),
}

/// What the export shows on the way out.
pub(crate) struct Exit<'a> {
    /// The volume (its session or path group) under the export.
    pub(crate) volume: &'a Volume,
    /// The targets' addresses, for messages.
    pub(crate) target: &'a str,
    /// The NBD listen address (a Unix socket file is removed on the way out).
    pub(crate) listen: &'a Endpoint,
    /// Print the final line as JSON on stdout.
    pub(crate) json: bool,
    /// The signals that stop it.
    pub(crate) signals: Signals,
}

/// Runs `serve` (the NBD server) until Ctrl-C, SIGTERM or the loss of the
/// session; then stops accepting clients, closes the session within
/// [`CLOSE_GRACE`] (a second signal cuts that short), removes a Unix socket
/// file and prints a final stats line. The exit status is 0 only after a
/// clean close.
pub(crate) async fn serve_until_stopped<F>(serve: F, mut exit: Exit<'_>) -> anyhow::Result<ExitCode>
where
    F: Future<Output = Infallible>,
{
    let stop = tokio::select! {
        never = serve => match never {},
        (name, _) = exit.signals.next() => Stop::Signal(name),
        ended = exit.volume.ended() => Stop::Ended(ended),
    };
    // The server future is gone: the listener is closed and every NBD
    // connection with it (their requests still running are cancelled).
    if let Endpoint::Unix(path) = exit.listen {
        let _ = std::fs::remove_file(path);
    }
    let (reason, clean, code) = match stop {
        Stop::Ended(outcome) => {
            let why = match outcome {
                Err(loss) => loss.to_string(),
                Ok(()) => "the session was closed".to_owned(),
            };
            tracing::error!(
                "the session with the target at {} is lost ({why}). Writes acknowledged to NBD \
                 clients were applied by the target (those flushed or sent with FUA are durable \
                 there); writes that failed or were still in flight may or may not have been \
                 applied, and none of them will be sent again. Exiting with status {} so that \
                 a supervisor can restart the export on a new session.",
                exit.target,
                EXIT_SESSION_LOST
            );
            ("session lost", false, EXIT_SESSION_LOST)
        }
        Stop::Signal(name) => {
            eprintln!(
                "{name}: stopped accepting NBD clients; closing the session (waiting up to {}s \
                 for outstanding requests and the target; Ctrl-C or SIGTERM again to exit at \
                 once)",
                CLOSE_GRACE.as_secs()
            );
            let close = tokio::time::timeout(CLOSE_GRACE, exit.volume.close());
            tokio::select! {
                closed = close => match closed {
                    Ok(Ok(())) => {
                        eprintln!("the session closed cleanly");
                        (name, true, 0)
                    }
                    Ok(Err(loss)) => {
                        eprintln!("error: the session did not close cleanly: {loss}");
                        (name, false, 1)
                    }
                    Err(_) => {
                        eprintln!(
                            "error: the session did not close within {}s (the target is \
                             unreachable or slow): requests still outstanding may or may not \
                             have been applied; exiting anyway",
                            CLOSE_GRACE.as_secs()
                        );
                        (name, false, 1)
                    }
                },
                (again, again_code) = exit.signals.next() => {
                    eprintln!("{again} again: exiting at once without closing the session");
                    (name, false, again_code)
                }
            }
        }
    };
    print_final_stats(&exit, reason, clean, code).await;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code)
    })
}

/// The final stats line: JSON on stdout with `--json`, else one line on
/// stderr.
async fn print_final_stats(exit: &Exit<'_>, reason: &str, clean: bool, code: u8) {
    let stats = tokio::time::timeout(Duration::from_secs(2), exit.volume.session_stats())
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let paths = match exit.volume.path_group() {
        Some(g) => tokio::time::timeout(Duration::from_secs(2), g.stats())
            .await
            .ok(),
        None => None,
    };
    if let Some(p) = &paths {
        eprintln!("paths: {p}");
    }
    let paths_json: Vec<serde_json::Value> = paths
        .iter()
        .flat_map(|g| g.paths.iter())
        .map(|p| {
            serde_json::json!({
                "path": p.name,
                "state": p.state.name(),
                "failovers": p.failovers,
                "fences_requested": p.fences_requested,
                "fences_confirmed": p.fences_confirmed,
                "fence_latency_ms": p.fence_latency.map(|d| d.as_secs_f64() * 1e3),
                "commands_moved": p.commands_moved,
                "commands_failed": p.commands_failed,
            })
        })
        .collect();
    if exit.json {
        println!(
            "{}",
            serde_json::json!({
                "event": "stopped",
                "reason": reason,
                "clean": clean,
                "exit_status": code,
                "connects": stats.connects,
                "disconnects": stats.disconnects,
                "sessions": stats.sessions,
                "stateful_recoveries": stats.recoveries,
                "stateless_recoveries": stats.stateless_recoveries,
                "responses": stats.responses,
                "calls_failed": stats.calls_failed,
                "bytes_in": stats.bytes_in,
                "bytes_out": stats.bytes_out,
                "paths": paths_json,
            })
        );
    } else {
        eprintln!(
            "stopped ({reason}, {}): {} connections, {} sessions, {} stateful and {} stateless \
             recoveries, {} responses, {} failed calls, {} bytes in, {} bytes out",
            if clean { "clean" } else { "not clean" },
            stats.connects,
            stats.sessions,
            stats.recoveries,
            stats.stateless_recoveries,
            stats.responses,
            stats.calls_failed,
            stats.bytes_in,
            stats.bytes_out,
        );
    }
}
