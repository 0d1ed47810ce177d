//! Transports behind one interface: anything that yields a bidirectional
//! byte stream. TCP and Unix sockets are built in; tests plug in simulated
//! networks or fault proxies by implementing [`Connector`].
//!
//! TCP sockets get keep-alive and `TCP_USER_TIMEOUT` set to the session's
//! detection bound, a second line of defence behind the protocol's own PINGs.

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A bidirectional byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The stream as [`Any`], to find its concrete type.
    fn as_any(&self) -> &dyn Any;
    /// The stream as a boxed [`Any`], to take its concrete type.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// A boxed stream, whatever its transport.
pub type BoxStream = Box<dyn Stream>;

/// A future returned by a [`Connector`].
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'a>>;

/// Opens connections to one target.
pub trait Connector: Send + Sync + 'static {
    /// Opens a new connection.
    fn connect(&self) -> ConnectFuture<'_>;
}

/// A future returned by an [`Acceptor`]: a stream and a description of the peer.
pub type AcceptFuture<'a> =
    Pin<Box<dyn Future<Output = io::Result<(BoxStream, String)>> + Send + 'a>>;

/// Accepts connections for a target. [`Listener`] is the built-in one (TCP
/// and Unix sockets); tests implement it over simulated networks.
pub trait Acceptor: Send + 'static {
    /// Waits for the next connection.
    fn accept(&mut self) -> AcceptFuture<'_>;
    /// What this acceptor is bound to, for logs and for clients to find it.
    fn endpoint(&self) -> Endpoint;
    /// A handle that closes the acceptor's socket at once, from any thread,
    /// so its address is free again as soon as [`crate::Target::stop`]
    /// returns or the target is dropped. `None` (the default): the socket
    /// closes when the task that accepts on it is dropped, a moment later.
    fn closer(&self) -> Option<Closer> {
        None
    }
}

/// Closes a listening socket from outside its accept loop (see
/// [`Acceptor::closer`]).
#[derive(Clone)]
pub struct Closer(std::sync::Arc<dyn Fn() + Send + Sync>);

impl Closer {
    /// A closer that runs `close` (which must be idempotent).
    pub fn new(close: impl Fn() + Send + Sync + 'static) -> Closer {
        Closer(std::sync::Arc::new(close))
    }

    /// Closes the socket now; later accepts fail.
    pub fn close(&self) {
        (self.0)()
    }
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer").finish_non_exhaustive()
    }
}

/// Where a target listens or an initiator connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A name understood only by a custom [`Connector`]/[`Acceptor`] pair
    /// (a simulated network, say).
    Named(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Named(n) => write!(f, "{n}"),
        }
    }
}

/// Connects to an [`Endpoint`] with socket options tuned to a detection bound.
#[derive(Clone, Debug)]
pub struct EndpointConnector {
    endpoint: Endpoint,
    detection_bound: Duration,
}

impl EndpointConnector {
    /// A connector for `endpoint`; TCP sockets give up on unacknowledged
    /// data after `detection_bound` (TCP_USER_TIMEOUT).
    pub fn new(endpoint: Endpoint, detection_bound: Duration) -> Self {
        EndpointConnector {
            endpoint,
            detection_bound,
        }
    }
}

impl Connector for EndpointConnector {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            match &self.endpoint {
                Endpoint::Tcp(addr) => {
                    let s = TcpStream::connect(addr).await?;
                    tune_tcp(&s, self.detection_bound)?;
                    Ok(Box::new(s) as BoxStream)
                }
                Endpoint::Unix(path) => Ok(Box::new(UnixStream::connect(path).await?) as BoxStream),
                Endpoint::Named(name) => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} names no TCP or Unix endpoint; use a custom Connector"),
                )),
            }
        })
    }
}

/// Sets TCP_NODELAY, keep-alive and TCP_USER_TIMEOUT on a TCP stream.
///
/// Kernel keep-alive timers count whole seconds (a zero is rejected with
/// `EINVAL`), so the keep-alive idle time and interval are rounded up to at
/// least one second; TCP_USER_TIMEOUT counts milliseconds and gets the bound
/// itself (at least 100 ms). The protocol's own PINGs remain the first line
/// of detection: these are the second.
pub fn tune_tcp(stream: &TcpStream, detection_bound: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(stream);
    let bound = detection_bound.max(Duration::from_millis(100));
    let whole_seconds = |d: Duration| Duration::from_secs(d.as_secs_f64().ceil().max(1.0) as u64);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(whole_seconds(bound))
        .with_interval(whole_seconds(bound / 4));
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let keepalive = keepalive.with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(bound))?;
    Ok(())
}

/// A bound TCP or Unix listener.
#[derive(Debug)]
pub struct Listener {
    /// The socket; `None` once closed by its [`Closer`]. Locked only while
    /// polled, never across an await.
    socket: Arc<Mutex<Option<ListenSocket>>>,
    /// What it was bound to (kept for logs once it is closed).
    bound: Endpoint,
    detection_bound: Duration,
}

#[derive(Debug)]
enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds an endpoint; accepted TCP sockets get keep-alive and
    /// TCP_USER_TIMEOUT tuned to `detection_bound`.
    ///
    /// A failure names the endpoint (`could not listen on 10.0.0.5:7400:
    /// Cannot assign requested address`), keeping the error's kind.
    pub async fn bind(endpoint: &Endpoint, detection_bound: Duration) -> io::Result<Listener> {
        let named = |e: io::Error| {
            let hint = match e.kind() {
                io::ErrorKind::AddrInUse => {
                    " (another process listens there: stop it or pick another address)"
                }
                io::ErrorKind::AddrNotAvailable => {
                    " (no interface of this machine has that address)"
                }
                io::ErrorKind::PermissionDenied => {
                    " (ports below 1024 need privileges; a Unix socket needs a writable directory)"
                }
                _ => "",
            };
            io::Error::new(
                e.kind(),
                format!("could not listen on {endpoint}: {e}{hint}"),
            )
        };
        let socket = match endpoint {
            Endpoint::Tcp(addr) => ListenSocket::Tcp(TcpListener::bind(addr).await.map_err(named)?),
            Endpoint::Unix(path) => ListenSocket::Unix(UnixListener::bind(path).map_err(named)?),
            Endpoint::Named(name) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} names no TCP or Unix endpoint; use a custom Acceptor"),
                ))
            }
        };
        let bound = local_endpoint(&socket)?;
        Ok(Listener {
            socket: Arc::new(Mutex::new(Some(socket))),
            bound,
            detection_bound,
        })
    }

    /// The endpoint actually bound (with the real port for port 0).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        Ok(self.bound.clone())
    }
}

/// The endpoint a socket is bound to.
fn local_endpoint(socket: &ListenSocket) -> io::Result<Endpoint> {
    Ok(match socket {
        ListenSocket::Tcp(l) => Endpoint::Tcp(l.local_addr()?),
        ListenSocket::Unix(l) => Endpoint::Unix(
            l.local_addr()?
                .as_pathname()
                .map(PathBuf::from)
                .unwrap_or_default(),
        ),
    })
}

/// Locks a listener's slot; a poisoned lock (a panic while polling) still
/// holds a usable socket.
fn lock(slot: &Mutex<Option<ListenSocket>>) -> std::sync::MutexGuard<'_, Option<ListenSocket>> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Acceptor for Listener {
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let accepted = std::future::poll_fn(|cx| match &*lock(&self.socket) {
                Some(ListenSocket::Tcp(l)) => l
                    .poll_accept(cx)
                    .map_ok(|(s, peer)| Accepted::Tcp(s, peer.to_string())),
                Some(ListenSocket::Unix(l)) => l.poll_accept(cx).map_ok(|(s, _)| Accepted::Unix(s)),
                None => std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("the listener on {} was closed", self.bound),
                ))),
            })
            .await?;
            match accepted {
                Accepted::Tcp(s, peer) => {
                    tune_tcp(&s, self.detection_bound)?;
                    Ok((Box::new(s) as BoxStream, peer))
                }
                Accepted::Unix(s) => Ok((Box::new(s) as BoxStream, "unix".to_owned())),
            }
        })
    }

    fn endpoint(&self) -> Endpoint {
        self.bound.clone()
    }

    fn closer(&self) -> Option<Closer> {
        let slot = self.socket.clone();
        Some(Closer::new(move || drop(lock(&slot).take())))
    }
}

/// A connection a [`Listener`] accepted.
enum Accepted {
    Tcp(TcpStream, String),
    Unix(UnixStream),
}

/// The reading half of a connection.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;

/// The writing half of a connection.
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Splits a stream so one task reads while another writes. TCP and Unix
/// sockets split into independent owned halves; other streams (simulated
/// networks, test doubles) go through [`tokio::io::split`], whose halves
/// share a lock: a reader and a writer on different threads contend for it
/// on every read and write, which profiling showed as futex wake-ups.
pub(crate) fn split(stream: BoxStream) -> (ReadHalf, WriteHalf) {
    if splits_natively(&stream) {
        return split_natively(stream);
    }
    let (r, w) = tokio::io::split(stream);
    (Box::new(r), Box::new(w))
}

/// True if `stream` is a TCP or Unix socket, which split without a lock.
fn splits_natively(stream: &BoxStream) -> bool {
    // Through the box: `Box<dyn Stream>` is itself a `Stream`, and
    // `stream.as_any()` would answer for the box.
    let any = (**stream).as_any();
    any.is::<TcpStream>() || any.is::<UnixStream>()
}

/// Splits a TCP or Unix socket into owned halves.
fn split_natively(stream: BoxStream) -> (ReadHalf, WriteHalf) {
    if (*stream).as_any().is::<TcpStream>() {
        if let Ok(tcp) = stream.into_any().downcast::<TcpStream>() {
            let (r, w) = tcp.into_split();
            return (Box::new(r), Box::new(w));
        }
        unreachable!("the stream was checked to be a TcpStream");
    }
    if (*stream).as_any().is::<UnixStream>() {
        if let Ok(unix) = stream.into_any().downcast::<UnixStream>() {
            let (r, w) = unix.into_split();
            return (Box::new(r), Box::new(w));
        }
    }
    unreachable!("the stream was checked to be a TCP or Unix socket");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn sockets_split_into_owned_halves_and_others_through_a_lock() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client: BoxStream = Box::new(TcpStream::connect(addr).await.expect("connect"));
        let (server, _) = listener.accept().await.expect("accept");
        assert!(
            splits_natively(&client),
            "a boxed TcpStream must split natively"
        );
        let (a, b) = UnixStream::pair().expect("pair");
        assert!(splits_natively(&(Box::new(a) as BoxStream)));
        let (x, _y) = tokio::io::duplex(64);
        let duplex: BoxStream = Box::new(x);
        assert!(!splits_natively(&duplex));
        drop(b);

        // The halves work.
        let (mut r, mut w) = split(client);
        let (mut sr, mut sw) = server.into_split();
        w.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        sr.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        sw.write_all(b"pong").await.expect("write back");
        r.read_exact(&mut got).await.expect("read back");
        assert_eq!(&got, b"pong");
        let (_r, _w) = split(duplex);
    }
}
