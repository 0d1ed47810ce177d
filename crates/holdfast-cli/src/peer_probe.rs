//! Names a `--target` that is not a holdfast target as such, instead of
//! retrying it for the whole session-loss time.
//!
//! [`ProbingConnector`] wraps the connector of one target. Until a login on
//! it has succeeded, it looks at the first bytes each connection receives:
//! a holdfast target's first frame in the login phase is LOGIN_ACCEPT
//! (0x11), LOGIN_REJECT (0x12) or ERROR (0x07), with zero flags and
//! reserved bytes (PROTOCOL.md §3). Anything else (an NBD server's
//! `NBDMAGIC`, an HTTP or SSH banner) is recorded, and `holdfast nbd` fails
//! at startup saying so. Once one LOGIN_ACCEPT has arrived nothing more is
//! checked. A refused connection is retried as before, with a log line
//! that says nobody answers there.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use holdfast::transport::{BoxStream, ConnectFuture};
use holdfast::{Connector, Endpoint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// The frame types a holdfast target may send first (ERROR, LOGIN_ACCEPT,
/// LOGIN_REJECT).
const FIRST_FRAME_TYPES: [u8; 3] = [0x07, 0x11, 0x12];
/// LOGIN_ACCEPT: after it, the peer is known to be a holdfast target.
const LOGIN_ACCEPT: u8 = 0x11;
/// Bytes looked at: type, flags, two reserved bytes (and four more shown).
const SHOWN: usize = 8;
/// Least time between two "connection refused" log lines.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the probe learned about one target.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    /// A LOGIN_ACCEPT arrived once: stop checking.
    holdfast: AtomicBool,
    /// Why the peer is not a holdfast target, once known.
    verdict: Mutex<Option<String>>,
    notify: Notify,
    last_refused_log: Mutex<Option<Instant>>,
}

impl Probe {
    /// Waits until the peer is found not to be a holdfast target; returns
    /// why.
    pub(crate) async fn not_holdfast(&self) -> String {
        loop {
            let notified = self.notify.notified();
            if let Some(v) = self.verdict.lock().ok().and_then(|v| v.clone()) {
                return v;
            }
            notified.await;
        }
    }

    fn judge(&self, first: &[u8]) {
        if looks_like_frame(first) {
            if first[0] == LOGIN_ACCEPT {
                self.holdfast.store(true, Ordering::Relaxed);
            }
            return;
        }
        if let Ok(mut v) = self.verdict.lock() {
            v.get_or_insert_with(|| describe(first));
        }
        self.notify.notify_waiters();
    }
}

/// The first bytes, for the error message, with a guess at what sent them.
fn describe(first: &[u8]) -> String {
    let printable = first.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
    let shown = if printable {
        format!("{:?}", String::from_utf8_lossy(first))
    } else {
        first
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let guess = if first.starts_with(b"NBDMAGIC") {
        ": an NBD server?"
    } else if first.starts_with(b"HTTP/") {
        ": an HTTP server?"
    } else if first.starts_with(b"SSH-") {
        ": an SSH server?"
    } else {
        ""
    };
    format!("{shown}{guess}")
}

/// A connector that probes its peer's first bytes (see the module).
pub(crate) struct ProbingConnector {
    inner: Arc<dyn Connector>,
    shown: String,
    probe: Arc<Probe>,
}

impl ProbingConnector {
    /// Wraps `inner`, which reaches `endpoint`.
    pub(crate) fn new(inner: Arc<dyn Connector>, endpoint: &Endpoint) -> ProbingConnector {
        ProbingConnector {
            inner,
            shown: address(endpoint),
            probe: Arc::default(),
        }
    }

    /// What it learns.
    pub(crate) fn probe(&self) -> Arc<Probe> {
        Arc::clone(&self.probe)
    }
}

/// An endpoint as a person types it (`127.0.0.1:7400`, `/run/x.sock`).
pub(crate) fn address(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Tcp(a) => a.to_string(),
        Endpoint::Unix(p) => p.display().to_string(),
        other => other.to_string(),
    }
}

impl Connector for ProbingConnector {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            match self.inner.connect().await {
                Ok(stream) if self.probe.holdfast.load(Ordering::Relaxed) => Ok(stream),
                Ok(stream) => Ok(Box::new(FirstBytes {
                    inner: stream,
                    seen: Vec::with_capacity(SHOWN),
                    judged: false,
                    probe: Arc::clone(&self.probe),
                }) as BoxStream),
                Err(e) => {
                    if e.kind() == io::ErrorKind::ConnectionRefused {
                        self.log_refused();
                    }
                    Err(e)
                }
            }
        })
    }
}

impl ProbingConnector {
    fn log_refused(&self) {
        let Ok(mut last) = self.probe.last_refused_log.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < REFUSED_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            "no holdfast target answers at {} (connection refused); retrying",
            self.shown
        );
    }
}

/// A stream that shows its first received bytes to the probe.
struct FirstBytes {
    inner: BoxStream,
    seen: Vec<u8>,
    judged: bool,
    probe: Arc<Probe>,
}

impl FirstBytes {
    fn judge(&mut self) {
        if !self.judged && !self.seen.is_empty() {
            self.judged = true;
            self.probe.judge(&self.seen);
        }
    }
}

impl Drop for FirstBytes {
    fn drop(&mut self) {
        self.judge();
    }
}

/// True if `first` starts like a holdfast target's first frame.
fn looks_like_frame(first: &[u8]) -> bool {
    first.len() >= 4 && FIRST_FRAME_TYPES.contains(&first[0]) && first[1..4] == [0, 0, 0]
}

impl AsyncRead for FirstBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.judged {
            if let Poll::Ready(Ok(())) = &polled {
                let new = buf.filled().get(before..).unwrap_or_default();
                let want = SHOWN - this.seen.len();
                this.seen.extend(new.iter().take(want));
                // A plausible header is judged at once; anything else once
                // 8 bytes are in (to show them), at the end of the stream,
                // or when the stream is dropped (the core closed it).
                let plausible = this.seen.len() >= 4 && looks_like_frame(&this.seen);
                if plausible || this.seen.len() >= SHOWN || new.is_empty() {
                    this.judge();
                }
            }
        }
        polled
    }
}

impl AsyncWrite for FirstBytes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
