//! An NBD (Network Block Device) server for any [`BlockDevice`].
//!
//! The server speaks the fixed newstyle handshake (`NBD_OPT_EXPORT_NAME`,
//! `NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_LIST`, `NBD_OPT_ABORT`,
//! `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_LIST_META_CONTEXT` and
//! `NBD_OPT_SET_META_CONTEXT` for `base:allocation`; every other option
//! gets `NBD_REP_ERR_UNSUP`) and, in transmission, `READ`, `WRITE` (with
//! FUA), `FLUSH`, `TRIM`, `WRITE_ZEROES` (with `NO_HOLE` and `FAST_ZERO`),
//! `CACHE`, `BLOCK_STATUS` and `DISC`; READ and BLOCK_STATUS get structured
//! replies once negotiated. `NBD_INFO_BLOCK_SIZE` announces the device's
//! own minimum block size ([`BlockDevice::min_block_size`]: 4096 for an
//! O_DIRECT file), and a request that breaks it is refused before the
//! device sees it. [`NbdOptions::read_only`] exports a writable device
//! read-only.
//! Requests are pipelined: each runs as its own task and its reply goes out
//! as soon as it completes, in any order, through one writer per connection.
//! Per connection, at most [`NbdOptions::max_in_flight`] requests,
//! [`NbdOptions::max_in_flight_bytes`] of payload and
//! [`NbdOptions::max_zeroing_in_flight`] TRIMs and WRITE_ZEROES are in
//! flight; beyond that the server stops reading until one finishes (but
//! still notices the client closing the connection), and reads reach the
//! device in pieces, at most [`NbdOptions::max_read_bytes_issued`] of them
//! per connection at once. A
//! listener serves at most [`NbdOptions::max_connections`] clients at once
//! (more are accepted and closed at once, with a warning), and a client
//! has [`NbdOptions::handshake_timeout`] to finish the handshake.
//!
//! A request answered with an error never runs later: at the I/O timeout
//! the server cancels the device operation and answers once the device has
//! withdrawn or finished it (see [`crate::device`]).
//!
//! Hostile input never panics the server: a bad magic, an oversized option
//! or an oversized write payload drops the connection; a malformed or
//! out-of-range request gets an error reply.
//!
//! Requests are counted (`holdfast_nbd_requests_total` by `type` and
//! `outcome`, latency in `holdfast_nbd_request_seconds`) through the
//! `metrics` facade. Install the recorder before serving: a connection
//! registers each series' handle the first time it records into it and
//! keeps it, so a connection that recorded before the recorder existed
//! keeps recording into nothing. The block service's
//! `holdfast_backend_io_seconds` handles work the same way.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use holdfast_block::{nbd, MemoryDevice};
//!
//! let device = Arc::new(MemoryDevice::new(64 << 20));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
//! let server = nbd::Server::new(device, nbd::NbdOptions::default());
//! server.serve_listener(listener).await;
//! # Ok(()) }
//! ```

pub mod consts;
mod handshake;
mod meta;
mod metrics;
mod read_ahead;
mod read_budget;
mod reply;
mod transmission;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::device::BlockDevice;

use handshake::Negotiated;

/// Configuration of an NBD server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdOptions {
    /// Name of the one export. Clients may ask for it by this name or by the
    /// empty default name; any other name is refused.
    pub export_name: String,
    /// Export read-only even if the device takes writes: announced with
    /// `NBD_FLAG_READ_ONLY`, and every WRITE, TRIM and WRITE_ZEROES is
    /// refused with `EPERM` without reaching the device.
    pub read_only: bool,
    /// When the device work of a request (a FUA trim's trim and flush
    /// count as one) has not finished after this long, the server logs a
    /// warning and cancels it ([`crate::device::Cancel`]), then keeps
    /// waiting: work the device has not started is withdrawn and answered
    /// with `EIO` (it will never run); work already started is answered
    /// with its real outcome when it finishes (a file device's TRIM or
    /// WRITE_ZEROES stops at its next chunk; a remote volume's request
    /// already sent to the target waits for the target's answer). `None`
    /// never cancels.
    pub io_timeout: Option<Duration>,
    /// Most clients served at once by [`Server::serve_listener`] (at least
    /// 1); a client beyond it is accepted and closed at once. Default
    /// [`consts::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Time a client has from connecting until it enters transmission (or
    /// ends the handshake); then the connection is dropped. Default
    /// [`consts::DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// Most requests of one connection in flight at once (at least 1).
    /// Default [`consts::MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// Most payload bytes (read replies and write data) of one connection
    /// held in memory at once (at least [`consts::MAX_PAYLOAD`]). Default
    /// [`consts::MAX_IN_FLIGHT_BYTES`].
    pub max_in_flight_bytes: u32,
    /// Most TRIM and WRITE_ZEROES requests of one connection in flight at
    /// once (at least 1): each may cover up to 4 GiB. Default
    /// [`consts::DEFAULT_MAX_ZEROING_IN_FLIGHT`].
    pub max_zeroing_in_flight: usize,
    /// Most bytes of one connection's reads handed to the device at once:
    /// reads go to the device in pieces of at most 2 MiB (whole blocks),
    /// and a piece waits for its share. It bounds the work a client that
    /// goes away leaves running: its pieces not yet issued are withdrawn
    /// (over a remote volume, a piece issued is a command the target runs
    /// to the end). At least one piece. Default
    /// [`consts::DEFAULT_MAX_READ_BYTES_ISSUED`].
    pub max_read_bytes_issued: u32,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            export_name: String::new(),
            read_only: false,
            io_timeout: None,
            max_connections: consts::DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: consts::DEFAULT_HANDSHAKE_TIMEOUT,
            max_in_flight: consts::MAX_IN_FLIGHT,
            max_in_flight_bytes: consts::MAX_IN_FLIGHT_BYTES,
            max_zeroing_in_flight: consts::DEFAULT_MAX_ZEROING_IN_FLIGHT,
            max_read_bytes_issued: consts::DEFAULT_MAX_READ_BYTES_ISSUED,
        }
    }
}

/// Why an NBD connection ended abnormally.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NbdError {
    /// Reading from or writing to the client failed.
    #[error("connection I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The client sent a wrong magic number.
    #[error("bad {what} magic {found:#x}")]
    BadMagic {
        /// Which magic was expected.
        what: &'static str,
        /// What arrived instead.
        found: u64,
    },
    /// The client set handshake flags this server does not know.
    #[error("unknown client flags {0:#x}")]
    ClientFlags(u32),
    /// An option carried more data than the server accepts.
    #[error("option {option} carries {len} bytes, more than the limit of {max}")]
    OptionTooLarge {
        /// The option code.
        option: u32,
        /// Its announced data length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The client did not finish the handshake in time.
    #[error("the handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The client sent more options than one negotiation allows.
    #[error("more than {0} options in one negotiation")]
    TooManyOptions(usize),
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist; that
    /// option has no error reply, so the connection is dropped.
    #[error("unknown export {0:?} requested with NBD_OPT_EXPORT_NAME")]
    UnknownExport(String),
    /// A write announced a payload larger than the server accepts; the
    /// payload cannot be skipped safely, so the connection is dropped.
    #[error("write payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// The announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
}

/// Something that accepts NBD client connections: implemented for tokio's
/// TCP and Unix socket listeners.
pub trait NbdListener: Send + Sync + 'static {
    /// A connected client.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next client; returns its stream and a printable peer.
    fn accept_client(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

impl NbdListener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept_client(&self) -> io::Result<(Self::Stream, String)> {
        let (stream, peer) = self.accept().await?;
        // Replies are small and latency-bound: do not let Nagle hold them.
        stream.set_nodelay(true)?;
        Ok((stream, peer.to_string()))
    }
}

#[cfg(unix)]
impl NbdListener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn accept_client(&self) -> io::Result<(Self::Stream, String)> {
        let (stream, peer) = self.accept().await?;
        let peer = match peer.as_pathname() {
            Some(p) => p.display().to_string(),
            None => "unix".to_owned(),
        };
        Ok((stream, peer))
    }
}

/// An NBD server exporting one device. Cheap to clone.
///
/// The device may come later than the server ([`Server::deferred`]): an
/// application can then listen before its device exists (a remote volume
/// still logging in), and a client that connects early waits, within its
/// [`NbdOptions::handshake_timeout`], for the server's greeting.
#[derive(Debug)]
pub struct Server<D> {
    /// The device once known (`None` until [`DeviceSlot::set`]).
    device: watch::Receiver<Option<Arc<D>>>,
    options: Arc<NbdOptions>,
    /// Requests read and not yet answered, over every connection.
    in_flight: Arc<AtomicUsize>,
}

impl<D> Clone for Server<D> {
    fn clone(&self) -> Self {
        Server {
            device: self.device.clone(),
            options: Arc::clone(&self.options),
            in_flight: Arc::clone(&self.in_flight),
        }
    }
}

/// Where the device of a [`Server::deferred`] server is handed over.
/// Dropping it unset closes the connections waiting for the device.
#[derive(Debug)]
pub struct DeviceSlot<D>(watch::Sender<Option<Arc<D>>>);

impl<D> DeviceSlot<D> {
    /// Gives the server its device: clients waiting get their greeting.
    pub fn set(self, device: Arc<D>) {
        self.0.send_replace(Some(device));
    }
}

impl<D: BlockDevice> Server<D> {
    /// A server exporting `device` as configured by `options`.
    pub fn new(device: Arc<D>, options: NbdOptions) -> Self {
        let (slot, server) = Self::deferred(options);
        slot.set(device);
        server
    }

    /// A server whose device is not known yet: it accepts clients at once,
    /// and each waits (within [`NbdOptions::handshake_timeout`], counted
    /// from its connecting) for the device given to the returned slot
    /// before its handshake starts.
    pub fn deferred(options: NbdOptions) -> (DeviceSlot<D>, Self) {
        let (tx, rx) = watch::channel(None);
        let server = Server {
            device: rx,
            options: Arc::new(options),
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        (DeviceSlot(tx), server)
    }

    /// NBD requests read from clients and not yet answered, over every
    /// connection of this server (and its clones).
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The configuration.
    pub fn options(&self) -> &NbdOptions {
        &self.options
    }

    /// Serves one client connection: the handshake, then requests until the
    /// client disconnects. Returns `Ok` when the client ends the session
    /// (`NBD_OPT_ABORT`, `NBD_CMD_DISC`, or closing between messages), and
    /// waits for the replies of every request already read before it
    /// returns. Dropping the future closes the connection at once; requests
    /// still running are cancelled and end on their own (withdrawn or
    /// finished, never dropped half way).
    pub async fn serve<S>(&self, stream: S) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The buffer survives into transmission: a client may pipeline its
        // first requests right behind NBD_OPT_GO.
        let mut stream = BufReader::with_capacity(64 * 1024, stream);
        let limit = self.options.handshake_timeout;
        let mut device = self.device.clone();
        let handshake = async {
            // Before the device is known the client gets no greeting yet;
            // a slot dropped unset ends the connection.
            let known = match device.wait_for(Option::is_some).await {
                Ok(d) => d.clone(),
                Err(_) => None,
            };
            let Some(device) = known else {
                return Ok((Negotiated::Closed, None));
            };
            handshake::negotiate(&mut stream, &*device, &self.options)
                .await
                .map(|n| (n, Some(device)))
        };
        let negotiated = tokio::time::timeout(limit, handshake)
            .await
            .unwrap_or(Err(NbdError::HandshakeTimeout(limit)));
        match negotiated {
            Ok((Negotiated::Transmission(export), Some(device))) => {
                debug!(
                    size = export.size,
                    flags = export.flags,
                    "nbd: transmission"
                );
                let in_flight = Arc::clone(&self.in_flight);
                transmission::run(stream, device, export, &self.options, in_flight).await
            }
            Ok((Negotiated::Closed | Negotiated::Transmission(_), _)) => {
                let _ = stream.shutdown().await;
                Ok(())
            }
            Err(e) => {
                let _ = stream.shutdown().await;
                Err(e)
            }
        }
    }

    /// Accepts clients from `listener` forever, serving each on its own
    /// task, at most [`NbdOptions::max_connections`] at once. Accept errors
    /// (such as running out of descriptors) are logged and retried after a
    /// short pause. Dropping the future closes every connection it
    /// accepted.
    pub async fn serve_listener<L: NbdListener>(&self, listener: L) -> Infallible {
        let mut connections = JoinSet::new();
        let limit = self.options.max_connections.max(1);
        let slots = Arc::new(tokio::sync::Semaphore::new(limit));
        loop {
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
            let (stream, peer) = match listener.accept_client().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "nbd: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                warn!(%peer, limit, "nbd: connection limit reached; closing the new connection");
                drop(stream);
                continue;
            };
            debug!(%peer, "nbd: client connected");
            let server = self.clone();
            let span = tracing::info_span!("nbd", %peer);
            connections.spawn(
                async move {
                    let _slot = slot;
                    match server.serve(stream).await {
                        Ok(()) => debug!("nbd: client disconnected"),
                        Err(e) => info!(error = %e, "nbd: connection dropped"),
                    }
                }
                .instrument(span),
            );
        }
    }
}

/// Serves one client connection; see [`Server::serve`].
pub async fn serve<S, D>(stream: S, device: Arc<D>, options: NbdOptions) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: BlockDevice,
{
    Server::new(device, options).serve(stream).await
}

/// Accepts and serves clients forever; see [`Server::serve_listener`].
pub async fn serve_listener<L, D>(listener: L, device: Arc<D>, options: NbdOptions) -> Infallible
where
    L: NbdListener,
    D: BlockDevice,
{
    Server::new(device, options).serve_listener(listener).await
}

/// Fills `buf` completely, or returns `Ok(false)` if the stream ends before
/// its first byte (a clean end between messages).
async fn read_exact_or_eof<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(rest) = buf.get_mut(filled..) else {
            break;
        };
        let n = rd.read(rest).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}
