//! Helpers for the NBD server tests: starting servers, running external
//! clients with a time limit, a raw protocol client for hostile input, and
//! devices that stall, gate or fail on purpose.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use holdfast_block::device::Cancel;
use holdfast_block::nbd::{consts::*, NbdOptions, Server};
use holdfast_block::{BlockDevice, BlockError, MemoryDevice};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Upper bound for any one external client run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for any one raw-socket read.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The path of `name` on PATH. When missing: under CI the test fails with
/// an install hint; elsewhere it prints a note and the caller skips.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("`{name}` is required under CI: install it (apt-get install {package})");
        }
        eprintln!("note: `{name}` not found; skipping (apt-get install {package})");
    }
    found
}

/// Serves `device` on a fresh loopback TCP port.
pub async fn start_tcp<D: BlockDevice>(
    device: Arc<D>,
    options: NbdOptions,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server = Server::new(device, options);
    let task = tokio::spawn(async move {
        server.serve_listener(listener).await;
    });
    (addr, task)
}

/// Serves `device` on a Unix socket at `path`.
pub async fn start_unix<D: BlockDevice>(
    device: Arc<D>,
    options: NbdOptions,
    path: &Path,
) -> JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind unix socket");
    let server = Server::new(device, options);
    tokio::spawn(async move {
        server.serve_listener(listener).await;
    })
}

pub fn uri(addr: SocketAddr, name: &str) -> String {
    format!("nbd://{addr}/{name}")
}

/// Runs `program args` with [`TOOL_TIMEOUT`]; returns its output whatever
/// the exit status.
pub async fn run_tool(program: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    match tokio::time::timeout(TOOL_TIMEOUT, cmd.output()).await {
        Ok(out) => out.expect("spawn tool"),
        Err(_) => panic!(
            "{} {args:?} did not finish in {TOOL_TIMEOUT:?}",
            program.display()
        ),
    }
}

/// Runs a tool and fails the test unless it succeeds; returns stdout.
pub async fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = run_tool(program, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {args:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        program.display(),
        out.status
    );
    stdout
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("holdfast-nbd-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Any byte stream the raw client can drive.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A hand-driven NBD client for protocol-level tests.
pub struct RawClient {
    pub stream: Box<dyn Duplex>,
}

/// One option reply.
#[derive(Debug)]
pub struct OptReply {
    pub option: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

impl RawClient {
    /// Connects and checks the greeting; client flags not yet sent.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawClient::over(stream).await
    }

    /// Checks the greeting on an already connected stream.
    pub async fn over<S: Duplex + 'static>(stream: S) -> RawClient {
        let mut c = RawClient {
            stream: Box::new(stream),
        };
        let mut greet = [0u8; 18];
        c.read_exact(&mut greet).await;
        let mut g = &greet[..];
        assert_eq!(g.get_u64(), NBDMAGIC);
        assert_eq!(g.get_u64(), IHAVEOPT);
        assert_eq!(g.get_u16(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        c
    }

    /// Connects and sends the usual client flags.
    pub async fn handshake(addr: SocketAddr) -> RawClient {
        let mut c = RawClient::connect(addr).await;
        c.send(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .await;
        c
    }

    /// Handshakes and enters transmission with `NBD_OPT_GO` on the default
    /// export; returns the size and transmission flags.
    pub async fn transmission(addr: SocketAddr) -> (RawClient, u64, u16) {
        let mut c = RawClient::handshake(addr).await;
        let (size, flags) = c.go("").await.expect("GO accepted");
        (c, size, flags)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    pub async fn read_exact(&mut self, buf: &mut [u8]) {
        tokio::time::timeout(IO_TIMEOUT, self.stream.read_exact(buf))
            .await
            .expect("read timed out")
            .expect("read");
    }

    pub async fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut out = BytesMut::new();
        out.put_u64(IHAVEOPT);
        out.put_u32(option);
        out.put_u32(data.len() as u32);
        out.put_slice(data);
        self.send(&out).await;
    }

    pub async fn read_option_reply(&mut self) -> OptReply {
        let mut h = [0u8; 20];
        self.read_exact(&mut h).await;
        let mut b = &h[..];
        assert_eq!(b.get_u64(), OPTION_REPLY_MAGIC);
        let option = b.get_u32();
        let kind = b.get_u32();
        let len = b.get_u32();
        assert!(len < 1 << 20, "option reply of {len} bytes");
        let mut data = vec![0u8; len as usize];
        self.read_exact(&mut data).await;
        OptReply { option, kind, data }
    }

    /// Sends `NBD_OPT_GO` for `name` requesting NAME and BLOCK_SIZE; returns
    /// the export's size and flags, or the error reply type.
    pub async fn go(&mut self, name: &str) -> Result<(u64, u16), u32> {
        self.info_or_go(OPT_GO, name).await
    }

    pub async fn info_or_go(&mut self, option: u32, name: &str) -> Result<(u64, u16), u32> {
        let (size, flags, block_size) = self.info_or_go_sized(option, name).await?;
        assert_eq!(block_size, (1, 4096, MAX_PAYLOAD));
        Ok((size, flags))
    }

    /// [`RawClient::info_or_go`], returning the block size constraints
    /// (minimum, preferred, maximum) as well.
    pub async fn info_or_go_sized(
        &mut self,
        option: u32,
        name: &str,
    ) -> Result<(u64, u16, (u32, u32, u32)), u32> {
        let mut data = BytesMut::new();
        data.put_u32(name.len() as u32);
        data.put_slice(name.as_bytes());
        data.put_u16(2);
        data.put_u16(INFO_NAME);
        data.put_u16(INFO_BLOCK_SIZE);
        self.send_option(option, &data).await;
        let mut export = None;
        let mut block_size = None;
        loop {
            let r = self.read_option_reply().await;
            assert_eq!(r.option, option);
            match r.kind {
                REP_ACK => break,
                REP_INFO => {
                    let mut d = &r.data[..];
                    match d.get_u16() {
                        INFO_EXPORT => export = Some((d.get_u64(), d.get_u16())),
                        INFO_BLOCK_SIZE => {
                            block_size = Some((d.get_u32(), d.get_u32(), d.get_u32()))
                        }
                        // The canonical name: the configured one, even
                        // when the default name was asked for.
                        INFO_NAME => assert!(d == name.as_bytes() || name.is_empty()),
                        other => panic!("unexpected info {other}"),
                    }
                }
                err if err & REP_FLAG_ERROR != 0 => return Err(err),
                other => panic!("unexpected reply type {other:#x}"),
            }
        }
        let (size, flags) = export.expect("NBD_INFO_EXPORT sent");
        Ok((size, flags, block_size.expect("NBD_INFO_BLOCK_SIZE sent")))
    }

    /// Reads one structured reply chunk: (flags, type, handle, payload).
    pub async fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let mut h = [0u8; STRUCTURED_REPLY_LEN];
        self.read_exact(&mut h).await;
        let mut b = &h[..];
        assert_eq!(
            b.get_u32(),
            STRUCTURED_REPLY_MAGIC,
            "not a structured reply"
        );
        let (flags, kind, handle, len) = (b.get_u16(), b.get_u16(), b.get_u64(), b.get_u32());
        assert!(len <= MAX_PAYLOAD + 8, "chunk of {len} bytes");
        let payload = self.read_data(len as usize).await;
        (flags, kind, handle, payload)
    }

    pub async fn request(
        &mut self,
        kind: u16,
        flags: u16,
        handle: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut out = BytesMut::with_capacity(REQUEST_LEN + payload.len());
        out.put_u32(REQUEST_MAGIC);
        out.put_u16(flags);
        out.put_u16(kind);
        out.put_u64(handle);
        out.put_u64(offset);
        out.put_u32(len);
        out.put_slice(payload);
        self.send(&out).await;
    }

    /// Reads a simple reply header: (error, handle).
    pub async fn reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        self.read_exact(&mut h).await;
        let mut b = &h[..];
        assert_eq!(b.get_u32(), SIMPLE_REPLY_MAGIC);
        (b.get_u32(), b.get_u64())
    }

    pub async fn read_data(&mut self, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.read_exact(&mut data).await;
        data
    }

    /// Asserts the server closes the connection (after any pending bytes).
    /// Waits for the server to close the connection; returns what it sent
    /// before closing.
    pub async fn expect_closed(&mut self) -> Vec<u8> {
        let mut sink = Vec::new();
        let read = tokio::time::timeout(IO_TIMEOUT, self.stream.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "server kept the connection open");
        sink
    }
}

/// A device whose reads and trims at offset 0 wait for a gate to open,
/// counting how many are in flight at once.
pub struct GatedDevice {
    pub inner: MemoryDevice,
    pub gate: Semaphore,
    pub in_flight: AtomicUsize,
    pub peak: AtomicUsize,
}

impl GatedDevice {
    pub fn new(size: usize) -> GatedDevice {
        GatedDevice {
            inner: MemoryDevice::new(size),
            gate: Semaphore::new(0),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }
}

impl BlockDevice for GatedDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        if offset == 0 {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            let permit = self.gate.acquire().await;
            drop(permit);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.read_at(offset, len).await
    }

    async fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.inner.write_at(offset, data, fua).await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.inner.flush().await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        if offset == 0 {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            let permit = self.gate.acquire().await;
            drop(permit);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.trim(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.inner.write_zeroes(offset, len, fua).await
    }
}

/// How [`OddDevice`] misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Odd {
    /// Refuses writes and says so.
    ReadOnly,
    /// Every flush stalls until it is cancelled, and is then withdrawn;
    /// writes fail with an I/O error; reads return one byte too few.
    Broken,
    /// Reads work; writes end in doubt (a remote volume whose session was
    /// lost without the target confirming it ended).
    InDoubt,
}

/// A device that is read-only or broken.
pub struct OddDevice {
    pub inner: MemoryDevice,
    pub mode: Odd,
}

impl BlockDevice for OddDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_only(&self) -> bool {
        self.mode == Odd::ReadOnly
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        let data = self.inner.read_at(offset, len).await?;
        match self.mode {
            Odd::ReadOnly | Odd::InDoubt => Ok(data),
            Odd::Broken => Ok(data.slice(..data.len().saturating_sub(1))),
        }
    }

    async fn write_at(&self, _offset: u64, _data: Bytes, _fua: bool) -> Result<(), BlockError> {
        match self.mode {
            Odd::ReadOnly => Err(BlockError::ReadOnly),
            Odd::Broken => Err(BlockError::Io("disk on fire".into())),
            Odd::InDoubt => Err(BlockError::InDoubt("session lost".into())),
        }
    }

    async fn flush(&self) -> Result<(), BlockError> {
        if self.mode == Odd::Broken {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn trim(&self, _offset: u64, _len: u32) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly)
    }

    async fn write_zeroes(&self, _offset: u64, _len: u32, _fua: bool) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly)
    }

    async fn flush_cancellable(&self, cancel: &Cancel) -> Result<(), BlockError> {
        if self.mode == Odd::Broken {
            cancel.cancelled().await;
            return Err(BlockError::Withdrawn("flush".into()));
        }
        Ok(())
    }
}
