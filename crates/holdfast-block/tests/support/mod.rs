//! Shared pieces for holdfast-block's integration tests: temporary files, a
//! device wrapper that delays, freezes and records operations, a service
//! that skips the overlap order (to show the tests would catch it), and
//! target/initiator helpers over 127.0.0.1.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::{
    Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions, SessionService,
    Target, TargetOptions,
};
use holdfast_block::service::{encode_outcome, execute, BlockFuture};
use holdfast_block::wire::{self, Info, Request};
use holdfast_block::{BlockDevice, BlockError, Volume};

/// Sends `RUST_LOG`-filtered logs to the test's captured output.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A path in cargo's temporary directory for integration tests, removed on
/// drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// A fresh path for `name`.
    pub fn new(name: &str) -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempFile(
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("block-{name}-{}-{n}.img", std::process::id())),
        )
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A deterministic pseudo-random sequence (xorshift64).
pub struct Rng(u64);

impl Rng {
    /// A sequence from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One operation as the probed device saw it.
#[derive(Clone, Debug)]
pub struct OpRecord {
    /// True for writes, trims and write-zeroes.
    pub write: bool,
    /// Start.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// When the inner device started it.
    pub start: Instant,
    /// When the inner device finished it.
    pub end: Instant,
}

/// What a [`Probe`] does and has seen; shared with the test.
#[derive(Default)]
pub struct ProbeState {
    /// Every operation takes this much longer (milliseconds).
    pub delay_ms: AtomicU64,
    /// Writes whose data starts with this byte (if non-zero) wait
    /// `slow_ms` more.
    pub slow_tag: AtomicU64,
    /// See `slow_tag`.
    pub slow_ms: AtomicU64,
    /// When set, new operations never start (a crashed process).
    pub frozen: AtomicBool,
    /// Operations stuck because of `frozen`.
    pub stuck: AtomicUsize,
    /// Operations under way now (delays included).
    pub running: AtomicUsize,
    /// The most at once.
    pub peak: AtomicUsize,
    /// Every finished operation.
    pub log: Mutex<Vec<OpRecord>>,
    /// While set, every operation waits at a gate before it starts
    /// ([`ProbeState::open_gate`]), having noted its arrival.
    pub gated: AtomicBool,
    gate: tokio::sync::Notify,
    /// Every operation that reached the gate, in arrival order: (write,
    /// offset, len).
    pub arrivals: Mutex<Vec<(bool, u64, u64)>>,
}

impl ProbeState {
    /// Waits until no operation is inside the inner device.
    pub async fn wait_idle(&self) {
        while self.running.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The operations recorded so far.
    pub fn log(&self) -> Vec<OpRecord> {
        self.log.lock().expect("log").clone()
    }

    /// The operations that reached the gate so far, in order.
    pub fn arrivals(&self) -> Vec<(bool, u64, u64)> {
        self.arrivals.lock().expect("arrivals").clone()
    }

    /// Lets every operation waiting at the gate, and every later one, go.
    pub fn open_gate(&self) {
        self.gated.store(false, Ordering::SeqCst);
        self.gate.notify_waiters();
    }

    async fn pass_gate(&self, write: bool, offset: u64, len: u64) {
        if !self.gated.load(Ordering::SeqCst) {
            return;
        }
        self.arrivals
            .lock()
            .expect("arrivals")
            .push((write, offset, len));
        loop {
            let opened = self.gate.notified();
            tokio::pin!(opened);
            // Registered before the check, so an opening is not missed.
            opened.as_mut().enable();
            if !self.gated.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

/// A device wrapper that delays, freezes and records operations.
pub struct Probe<D> {
    inner: D,
    state: Arc<ProbeState>,
}

impl<D: BlockDevice> Probe<D> {
    /// Wraps `inner`; the state is the test's handle.
    pub fn new(inner: D) -> (Probe<D>, Arc<ProbeState>) {
        let state = Arc::new(ProbeState::default());
        (
            Probe {
                inner,
                state: state.clone(),
            },
            state,
        )
    }

    async fn run<T, F>(&self, write: bool, offset: u64, len: u64, tag: Option<u8>, op: F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let s = &self.state;
        if s.frozen.load(Ordering::SeqCst) {
            s.stuck.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        s.pass_gate(write, offset, len).await;
        let now = s.running.fetch_add(1, Ordering::SeqCst) + 1;
        s.peak.fetch_max(now, Ordering::SeqCst);
        let start = Instant::now();
        // The delay counts as part of the operation (a slow disk).
        let mut delay = s.delay_ms.load(Ordering::SeqCst);
        let slow = s.slow_tag.load(Ordering::SeqCst);
        if slow != 0 && tag.map(u64::from) == Some(slow) {
            delay += s.slow_ms.load(Ordering::SeqCst);
        }
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let out = op.await;
        let end = Instant::now();
        s.log.lock().expect("log").push(OpRecord {
            write,
            offset,
            len,
            start,
            end,
        });
        s.running.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

impl<D: BlockDevice> BlockDevice for Probe<D> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.run(
            false,
            offset,
            u64::from(len),
            None,
            self.inner.read_at(offset, len),
        )
        .await
    }

    async fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        let (len, tag) = (data.len() as u64, data.first().copied());
        self.run(
            true,
            offset,
            len,
            tag,
            self.inner.write_at(offset, data, fua),
        )
        .await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.run(false, 0, 0, None, self.inner.flush()).await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.run(
            true,
            offset,
            u64::from(len),
            None,
            self.inner.trim(offset, len),
        )
        .await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        let op = self.inner.write_zeroes(offset, len, fua);
        self.run(true, offset, u64::from(len), None, op).await
    }
}

/// A block service WITHOUT the overlap order: every request runs as soon as
/// it arrives. It exists to show that the ordering tests fail without
/// ordering.
pub struct Unordered<D> {
    device: Arc<D>,
    info: Info,
}

impl<D> Clone for Unordered<D> {
    fn clone(&self) -> Self {
        Unordered {
            device: self.device.clone(),
            info: self.info,
        }
    }
}

impl<D: BlockDevice> Unordered<D> {
    /// Serves `device` unordered.
    pub fn new(device: D) -> Self {
        let info = Info {
            size: device.size(),
            read_only: device.read_only(),
            block_size: 4096,
            max_request: wire::DEFAULT_MAX_REQUEST,
            volume_id: None,
            aligned: false,
            extensions: false,
        };
        Unordered {
            device: Arc::new(device),
            info,
        }
    }
}

impl<D: BlockDevice> tower_service::Service<holdfast::Request> for Unordered<D> {
    type Response = Bytes;
    type Error = Infallible;
    type Future = BlockFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: holdfast::Request) -> BlockFuture {
        let device = self.device.clone();
        let info = self.info;
        Box::pin(async move {
            let outcome = match Request::decode(&req.payload, info.max_request) {
                Ok(r) => execute(&*device, r, info).await,
                Err(e) => Err(BlockError::Invalid(e.to_string())),
            };
            Ok(encode_outcome(&outcome))
        })
    }
}

/// Serves `service` on `addr` (port 0 for any), retrying while the port is
/// still held by a target just dropped.
pub async fn serve<S: SessionService>(addr: SocketAddr, service: S) -> (Target, SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Target::serve(
            &[Endpoint::Tcp(addr)],
            TargetOptions::default(),
            service.clone(),
        )
        .await
        {
            Ok(target) => {
                let Endpoint::Tcp(bound) = target.endpoints()[0].clone() else {
                    unreachable!("bound a TCP endpoint")
                };
                return (target, bound);
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// An initiator to `addr` with a 500 ms detection bound.
pub fn initiator(addr: SocketAddr) -> Initiator {
    let bound = Duration::from_millis(500);
    Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(addr), bound)),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = InitiatorConfig::default().with_detection_bound(bound);
            o
        },
    )
}

/// A volume over a new initiator to `addr`.
pub async fn volume(addr: SocketAddr) -> Volume {
    Volume::connect(initiator(addr)).await.expect("connect")
}

/// `len` bytes of a pattern that names its writer and sequence number,
/// starting with `tag`.
pub fn pattern(tag: u8, seed: u64, len: usize) -> Bytes {
    let mut rng = Rng::new(seed);
    let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    if let Some(first) = v.first_mut() {
        *first = tag;
    }
    Bytes::from(v)
}
