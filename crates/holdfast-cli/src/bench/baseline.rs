//! The baseline of the overhead benchmark: the same request/response echo
//! over one plain tokio TCP connection, with the simplest framing that works
//! (a 4-byte big-endian length, then the payload) and nothing else: no
//! session, no acknowledgements, no recovery.
//!
//! The server echoes frames in order, flushing whenever the next request is
//! not yet fully in its buffer. The client pipelines up to QD requests on
//! its one connection: a writer task sends while a permit is free and a
//! reader task takes responses in order (the server answers in order), so
//! QD 32 means 32 requests outstanding on one connection, like holdfast's
//! one session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::table::{histogram, record};

/// Buffer size of both ends' readers and writers.
const BUFFER: usize = 64 * 1024;

/// The largest frame the server accepts.
const MAX_FRAME: usize = 16 << 20;

/// The baseline echo server on 127.0.0.1; stops accepting when dropped.
pub(crate) struct Server {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Server {
    /// Starts the server on an ephemeral loopback port.
    pub(crate) async fn start() -> anyhow::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("could not bind the baseline server on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Err(e) = echo(stream).await {
                        tracing::debug!(error = %e, "baseline connection ended");
                    }
                });
            }
        });
        Ok(Server { addr, accept })
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Echoes length-prefixed frames until the peer closes.
async fn echo(stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(BUFFER, r);
    let mut w = BufWriter::with_capacity(BUFFER, w);
    let mut buf = Vec::new();
    loop {
        let len = match r.read_u32().await {
            Ok(n) => n as usize,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        };
        if len > MAX_FRAME {
            bail!("a {len}-byte frame is over the {MAX_FRAME}-byte limit");
        }
        buf.resize(len, 0);
        r.read_exact(&mut buf).await?;
        w.write_u32(len as u32).await?;
        w.write_all(&buf).await?;
        if !next_frame_buffered(r.buffer()) {
            w.flush().await?;
        }
    }
    w.flush().await?;
    Ok(())
}

/// True if `buffered` holds a whole frame (so answering it can wait for the
/// same flush).
fn next_frame_buffered(buffered: &[u8]) -> bool {
    match buffered.get(..4) {
        Some(header) => {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            buffered.len() >= 4 + len as usize
        }
        None => false,
    }
}

/// One cell's measurement: the latency of every request that completed
/// inside the measured window (nanoseconds), and the window.
pub(crate) struct Measured {
    /// Latencies of the requests that completed in the window.
    pub(crate) latency: Histogram<u64>,
    /// The window's length.
    pub(crate) window: Duration,
}

/// Runs the echo against `addr` with `depth` requests outstanding: `warmup`
/// unmeasured, then `window` measured.
pub(crate) async fn measure(
    addr: SocketAddr,
    payload: Bytes,
    depth: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Measured> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("could not connect to the baseline server at {addr}"))?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let from = Instant::now() + warmup;
    let until = from + window;
    let permits = Arc::new(Semaphore::new(depth.max(1)));
    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    let len = payload.len();
    let writer = tokio::spawn(send_requests(w, payload, permits.clone(), sent_tx, until));
    let reader = tokio::spawn(read_responses(r, len, permits, sent_rx, from, until));
    writer.await.context("the baseline writer panicked")??;
    let latency = reader.await.context("the baseline reader panicked")??;
    Ok(Measured { latency, window })
}

/// Sends requests while a permit is free, until `until`; tells the reader
/// when each was sent.
async fn send_requests(
    w: OwnedWriteHalf,
    payload: Bytes,
    permits: Arc<Semaphore>,
    sent: mpsc::UnboundedSender<Instant>,
    until: Instant,
) -> anyhow::Result<()> {
    let mut w = BufWriter::with_capacity(BUFFER, w);
    let len = u32::try_from(payload.len()).context("payload too large for the baseline")?;
    loop {
        permits.acquire().await?.forget();
        let now = Instant::now();
        if now >= until || sent.send(now).is_err() {
            break;
        }
        w.write_u32(len).await?;
        w.write_all(&payload).await?;
        if permits.available_permits() == 0 {
            w.flush().await?;
        }
    }
    w.flush().await?;
    // Dropping the channel lets the reader finish once every response is in.
    drop(sent);
    // Dropping the write half closes it: the server sees the end.
    drop(w);
    Ok(())
}

/// Reads the responses in order, recording the latency of those that
/// complete inside the window; each frees a permit. Each response gets its
/// own buffer, as a client handing responses to callers would.
async fn read_responses(
    r: OwnedReadHalf,
    len: usize,
    permits: Arc<Semaphore>,
    mut sent: mpsc::UnboundedReceiver<Instant>,
    from: Instant,
    until: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut r = BufReader::with_capacity(BUFFER, r);
    let mut latency = histogram()?;
    while let Some(at) = sent.recv().await {
        let got = r.read_u32().await? as usize;
        if got != len {
            bail!("the baseline echoed {got} bytes for a {len}-byte request");
        }
        let mut frame = BytesMut::with_capacity(len);
        while frame.len() < len {
            let want = (len - frame.len()) as u64;
            if (&mut r).take(want).read_buf(&mut frame).await? == 0 {
                bail!("the baseline server closed the connection mid-frame");
            }
        }
        let done = Instant::now();
        if done >= from && done <= until {
            record(&mut latency, done - at)?;
        }
        permits.add_permits(1);
    }
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_buffered_only_when_whole() {
        assert!(!next_frame_buffered(&[]));
        assert!(!next_frame_buffered(&[0, 0, 0]));
        assert!(next_frame_buffered(&[0, 0, 0, 0]));
        assert!(!next_frame_buffered(&[0, 0, 0, 2, 9]));
        assert!(next_frame_buffered(&[0, 0, 0, 2, 9, 9, 1]));
    }

    #[tokio::test]
    async fn the_baseline_echoes_at_both_depths() {
        let server = Server::start().await.expect("server");
        for depth in [1, 32] {
            let m = measure(
                server.addr(),
                Bytes::from(vec![7u8; 4096]),
                depth,
                Duration::from_millis(10),
                Duration::from_millis(50),
            )
            .await
            .expect("measure");
            assert!(
                !m.latency.is_empty(),
                "no request completed at depth {depth}"
            );
        }
    }
}
