//! The local control endpoint of a running `holdfast target` or `holdfast
//! nbd`, and the `holdfast status` command that reads it.
//!
//! A Unix socket (mode 0600, in a directory of mode 0700), so status needs
//! no network exposure and only the same user (or root) can read it. The
//! exchange is one line each way: the client sends `status`, the server
//! answers one JSON document and closes. Anything else gets
//! `{"error": "..."}`.

use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tracing::{debug, info};

/// Produces the status document on request.
pub(crate) type StatusFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = serde_json::Value> + Send>> + Send + Sync>;

/// The longest request line read, and the time a client has to send it.
const MAX_REQUEST: u64 = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory of default control sockets: `/run/holdfast` for root,
/// else `$XDG_RUNTIME_DIR/holdfast`, else `/tmp/holdfast-UID`.
pub(crate) fn default_dir() -> PathBuf {
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if uid == 0 {
        PathBuf::from("/run/holdfast")
    } else if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(runtime).join("holdfast")
    } else {
        PathBuf::from(format!("/tmp/holdfast-{uid}"))
    }
}

/// The default control socket of this process: `KIND-PID.sock` in
/// [`default_dir`], so any number of targets and exports can run at once
/// and `holdfast status` finds them all.
pub(crate) fn default_path(kind: &str) -> PathBuf {
    default_dir().join(format!("{kind}-{}.sock", std::process::id()))
}

/// The control sockets in [`default_dir`], in name order.
pub(crate) fn default_sockets() -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(default_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    found.sort();
    found
}

/// A serving control endpoint; removes its socket file when dropped.
pub(crate) struct Control {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Control {
    /// Binds `path` (creating its directory with mode 0700; a stale socket
    /// file is replaced) and answers status requests with `status`.
    pub(crate) fn start(path: &Path, status: StatusFn) -> anyhow::Result<Control> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!(
                        "could not create the control socket's directory {}",
                        dir.display()
                    )
                })?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("could not restrict {}", dir.display()))?;
            }
        }
        let listener = crate::nbd_life::bind_unix(path)
            .context("the control socket (give another with --control PATH)")?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("could not restrict {}", path.display()))?;
        info!(path = %path.display(), "control socket ready (holdfast status)");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let status = status.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, status).await {
                        debug!(error = %e, "control request failed");
                    }
                });
            }
        });
        Ok(Control {
            path: path.to_owned(),
            task,
        })
    }
}

/// Reads one request line and writes one JSON answer.
async fn answer(stream: tokio::net::UnixStream, status: StatusFn) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let reply = match line.trim() {
        "status" => status().await,
        other => serde_json::json!({
            "error": format!("unknown request {:?}; send `status`", other.chars().take(40).collect::<String>())
        }),
    };
    let mut text = reply.to_string();
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// Asks the control socket at `path` for its status document.
pub(crate) async fn query(path: &Path) -> anyhow::Result<serde_json::Value> {
    let shown = path.display();
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .with_context(|| {
            format!(
            "could not reach the control socket {shown}: is the process running, and is this its \
             --control path?"
        )
        })?;
    stream.write_all(b"status\n").await?;
    let mut text = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text),
    )
    .await
    .with_context(|| format!("{shown} did not answer within 5 s"))??;
    serde_json::from_str(&text).with_context(|| format!("{shown} answered with something not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_is_served_once_per_request_and_the_socket_is_private() {
        let dir = std::env::temp_dir().join(format!("holdfast-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("t.sock");
        let status: StatusFn = Arc::new(|| Box::pin(async { serde_json::json!({ "ok": 1 }) }));
        let control = Control::start(&path, status).expect("start");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("dir"))
            .expect("dir")
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(query(&path).await.expect("status")["ok"], 1);
        assert_eq!(query(&path).await.expect("again")["ok"], 1);
        drop(control);
        assert!(!path.exists(), "the socket file is removed on the way out");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
