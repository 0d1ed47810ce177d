//! A TCP fault proxy for tests, the demo and `holdfast chaos`.
//!
//! A [`Proxy`] listens on one address and forwards every connection it
//! accepts to one upstream address. Each accepted connection and its
//! upstream connection form a *link*; a link carries two *directions*:
//! [`Direction::Up`] (client → target) and [`Direction::Down`]
//! (target → client). Faults ([`FaultKind`]) apply to the links open at the
//! time, all of them or only the newest ([`Scope`]), in one direction or
//! both; links accepted later start clean.
//!
//! * Gates (the last one set wins): [`FaultKind::Blackhole`] (stop
//!   forwarding, keep the sockets open), [`FaultKind::Hold`] (keep reading
//!   but buffer everything, up to [`ProxyOptions::hold_limit`]),
//!   [`FaultKind::CutAfter`] (forward N more bytes, then blackhole),
//!   [`FaultKind::Release`] (deliver what a hold buffered, then forward) and
//!   [`FaultKind::Heal`] (back to normal, also clearing the shaping below).
//! * Shaping, combined with any gate: [`FaultKind::Delay`] (a base delay
//!   plus seeded jitter per chunk, order kept) and [`FaultKind::Bandwidth`].
//! * Endings: [`FaultKind::Reset`] (RST) and [`FaultKind::HalfClose`]
//!   (FIN after the bytes already read).
//!
//! Hold-then-release keeps the held link's sockets open while new links
//! work normally, so a client can reconnect while its old connection's
//! bytes wait in the proxy, and those bytes reach the target late: the
//! stale-command shape the protocol must survive.
//!
//! [`Schedule`] draws a seeded random fault schedule and runs it;
//! [`ControlServer`] drives proxies over a line protocol on loopback
//! (see `docs/CHAOS.md`).
//!
//! ```
//! use holdfast::chaos::{Direction, FaultKind, FaultSpec, Proxy, Scope};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let proxy = Proxy::start(target.local_addr()?).await?;
//! // Clients connect to proxy.addr(); later, hold what they send:
//! let hit = proxy.apply(FaultSpec::new(FaultKind::Hold, Direction::Up, Scope::Newest));
//! assert_eq!(hit, 0, "no link is open yet");
//! # Ok(())
//! # }
//! ```

mod control;
mod link;
mod schedule;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use control::{
    execute, parse_command, respond, ControlCommand, ControlOptions, ControlServer, ProxySelector,
};
pub use schedule::{FaultClass, Schedule, ScheduleReport};

/// Errors of the chaos tools.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The control address is not a loopback address and remote control was
    /// not allowed.
    #[error("refusing to serve the control API on {0}: not a loopback address")]
    NotLoopback(SocketAddr),
    /// A control command or fault could not be parsed.
    #[error("{0}")]
    Parse(String),
}

/// A fault applied to both directions of every open link (the original,
/// simple interface; [`FaultSpec`] has the full set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close both sides with RST.
    Reset,
    /// Stop forwarding both ways; keep the sockets open.
    Blackhole,
    /// Delay every chunk by this long.
    Delay(Duration),
    /// Forward this many more bytes (each direction), then blackhole.
    CutAfter(u64),
}

/// What a fault does to a direction of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Close with RST: in both directions, both sockets; in one direction,
    /// the socket that direction writes into (the target's for `up`), while
    /// the other side is kept open, silent, its bytes discarded, until its
    /// peer closes.
    Reset,
    /// Stop forwarding (stop reading and writing); keep the sockets open.
    Blackhole,
    /// Delay each chunk by `base` plus a seeded random share of `jitter`
    /// (order is kept). Zero for both removes the delay.
    Delay {
        /// The fixed part.
        base: Duration,
        /// The random part's upper bound.
        jitter: Duration,
    },
    /// Forward at most this many bytes per second (0 removes the limit).
    Bandwidth {
        /// The rate.
        bytes_per_sec: u64,
    },
    /// Forward this many more bytes, then blackhole; bytes past the cut
    /// wait in the proxy, so a later heal resumes without a gap.
    CutAfter(u64),
    /// Send FIN to the receiver once the bytes already read are delivered;
    /// later bytes are read and discarded. The other direction goes on.
    HalfClose,
    /// Keep reading but deliver nothing: buffer up to the hold limit, then
    /// stop reading (backpressure). The sockets stay open.
    Hold,
    /// Deliver what a hold buffered, then forward normally.
    Release,
    /// Forward normally: clears blackholes, holds (delivering their bytes),
    /// cuts, delays and bandwidth limits. Resets and half-closes are final.
    Heal,
}

impl FaultKind {
    /// Every kind's name, in [`FaultKind::index`] order.
    pub const NAMES: [&'static str; 9] = [
        "reset",
        "blackhole",
        "delay",
        "bandwidth",
        "cut",
        "halfclose",
        "hold",
        "release",
        "heal",
    ];

    /// The kind's name in the control protocol (`reset`, `cut`, ...).
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// A small index per kind (into [`FaultKind::NAMES`]).
    pub fn index(&self) -> usize {
        match self {
            FaultKind::Reset => 0,
            FaultKind::Blackhole => 1,
            FaultKind::Delay { .. } => 2,
            FaultKind::Bandwidth { .. } => 3,
            FaultKind::CutAfter(_) => 4,
            FaultKind::HalfClose => 5,
            FaultKind::Hold => 6,
            FaultKind::Release => 7,
            FaultKind::Heal => 8,
        }
    }
}

/// A direction of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → target: bytes read from the accepted connection.
    Up,
    /// Target → client: bytes read from the upstream connection.
    Down,
    /// Both directions.
    Both,
}

impl Direction {
    /// `up`, `down` or `both`.
    pub fn name(&self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Both => "both",
        }
    }

    /// Whether this includes the up (index 0) or down (index 1) direction.
    pub(crate) fn covers(&self, dir: usize) -> bool {
        matches!(
            (self, dir),
            (Direction::Both, _) | (Direction::Up, 0) | (Direction::Down, 1)
        )
    }
}

/// Which of the open links a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every open link.
    All,
    /// The most recently accepted link still open.
    Newest,
}

impl Scope {
    /// `all` or `newest`.
    pub fn name(&self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Newest => "newest",
        }
    }
}

/// A fault, its direction and the links it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    /// What happens.
    pub kind: FaultKind,
    /// In which direction(s).
    pub direction: Direction,
    /// To which links.
    pub scope: Scope,
}

impl FaultSpec {
    /// A fault spec.
    pub fn new(kind: FaultKind, direction: Direction, scope: Scope) -> FaultSpec {
        FaultSpec {
            kind,
            direction,
            scope,
        }
    }
}

impl From<Fault> for FaultSpec {
    fn from(fault: Fault) -> FaultSpec {
        let kind = match fault {
            Fault::Reset => FaultKind::Reset,
            Fault::Blackhole => FaultKind::Blackhole,
            Fault::Delay(base) => FaultKind::Delay {
                base,
                jitter: Duration::ZERO,
            },
            Fault::CutAfter(n) => FaultKind::CutAfter(n),
        };
        FaultSpec::new(kind, Direction::Both, Scope::All)
    }
}

/// Formats a duration the way the control protocol reads it (`250ms`).
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Delay { base, jitter } => {
                write!(f, "delay {} {}", fmt_duration(*base), fmt_duration(*jitter))
            }
            FaultKind::Bandwidth { bytes_per_sec } => write!(f, "bandwidth {bytes_per_sec}"),
            FaultKind::CutAfter(n) => write!(f, "cut {n}"),
            other => f.write_str(other.name()),
        }
    }
}

/// The control protocol's words for it: `delay 50ms 10ms up newest`.
impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.kind,
            self.direction.name(),
            self.scope.name()
        )
    }
}

/// Tuning of a [`Proxy`].
#[derive(Clone, Copy, Debug)]
pub struct ProxyOptions {
    /// How many bytes a held direction buffers before it stops reading.
    pub hold_limit: usize,
    /// How many bytes a forwarding direction buffers (e.g. under a delay or
    /// a bandwidth limit) before it stops reading.
    pub buffer_limit: usize,
    /// Seeds the delay jitter (each link draws from its own stream).
    pub seed: u64,
    /// How long to wait for the upstream connection of a new link.
    pub connect_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            hold_limit: 64 << 20,
            buffer_limit: 1 << 20,
            seed: 0,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters shared by a proxy and its links.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) links_accepted: AtomicU64,
    pub(crate) links_open: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) bytes_up: AtomicU64,
    pub(crate) bytes_down: AtomicU64,
    pub(crate) faults: [AtomicU64; FaultKind::NAMES.len()],
}

/// A snapshot of a proxy's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Where clients connect.
    pub listen: Option<SocketAddr>,
    /// Where links go.
    pub upstream: Option<SocketAddr>,
    /// Connections accepted.
    pub links_accepted: u64,
    /// Links connected upstream and not yet closed.
    pub links_open: u64,
    /// Accepted connections whose upstream connection failed.
    pub connect_failures: u64,
    /// Bytes delivered to the target.
    pub bytes_up: u64,
    /// Bytes delivered to clients.
    pub bytes_down: u64,
    /// Faults that hit at least one link, by kind name.
    pub faults: BTreeMap<&'static str, u64>,
}

impl ProxyStats {
    /// One JSON object (no trailing newline).
    pub fn to_json(&self) -> String {
        let addr = |a: Option<SocketAddr>| a.map_or("null".to_owned(), |a| format!("\"{a}\""));
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!(
            "{{\"listen\":{},\"upstream\":{},\"links_accepted\":{},\"links_open\":{},\"connect_failures\":{},\"bytes_up\":{},\"bytes_down\":{},\"faults\":{{{}}}}}",
            addr(self.listen),
            addr(self.upstream),
            self.links_accepted,
            self.links_open,
            self.connect_failures,
            self.bytes_up,
            self.bytes_down,
            faults.join(",")
        )
    }
}

/// A link as the proxy sees it: how to reach its task.
struct LinkHandle {
    commands: mpsc::UnboundedSender<link::Command>,
    task: JoinHandle<()>,
}

impl LinkHandle {
    fn alive(&self) -> bool {
        !self.task.is_finished() && !self.commands.is_closed()
    }
}

/// The proxy: one listen address, one upstream, any number of links.
/// Dropping it resets every link.
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    links: Arc<Mutex<Vec<LinkHandle>>>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 (an ephemeral port) to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::bind(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Starts a proxy listening on `listen`, forwarding to `upstream`.
    pub async fn bind(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::bind_with(listen, upstream, ProxyOptions::default()).await
    }

    /// Starts a proxy with explicit options.
    pub async fn bind_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        options: ProxyOptions,
    ) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let links: Arc<Mutex<Vec<LinkHandle>>> = Arc::default();
        let counters: Arc<Counters> = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            options,
            links.clone(),
            counters.clone(),
        ));
        Ok(Proxy {
            addr,
            upstream,
            links,
            counters,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where links go.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Applies a fault to both directions of every open link; returns how
    /// many links it hit (a fault with no open link is not counted).
    pub fn inject(&self, fault: Fault) -> usize {
        self.apply(fault.into())
    }

    /// Applies a fault to the links and directions it names; returns how
    /// many links it hit. Links still connecting upstream count, and take
    /// the fault once connected.
    pub fn apply(&self, spec: FaultSpec) -> usize {
        let mut links = lock(&self.links);
        links.retain(LinkHandle::alive);
        let command = link::Command {
            kind: spec.kind,
            direction: spec.direction,
        };
        let chosen: &[LinkHandle] = match spec.scope {
            Scope::All => &links,
            Scope::Newest => {
                let n = links.len();
                &links[n.saturating_sub(1)..]
            }
        };
        let hit = chosen
            .iter()
            .filter(|l| l.commands.send(command).is_ok())
            .count();
        if hit > 0 {
            self.counters.faults[spec.kind.index()].fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// How many links are open (including those still connecting).
    pub fn open_links(&self) -> usize {
        let mut links = lock(&self.links);
        links.retain(LinkHandle::alive);
        links.len()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            listen: Some(self.addr),
            upstream: Some(self.upstream),
            links_accepted: get(&c.links_accepted),
            links_open: get(&c.links_open),
            connect_failures: get(&c.connect_failures),
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
            faults: FaultKind::NAMES
                .iter()
                .zip(c.faults.iter())
                .filter_map(|(name, n)| Some((*name, get(n))).filter(|(_, n)| *n > 0))
                .collect(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Closing the command channels tells every link to reset and end.
        lock(&self.links).clear();
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    options: ProxyOptions,
    links: Arc<Mutex<Vec<LinkHandle>>>,
    counters: Arc<Counters>,
) {
    let mut next_id = 0u64;
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(target: "holdfast::chaos", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        counters.links_accepted.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(link::run(
            link::LinkSetup {
                id: next_id,
                peer,
                upstream,
                options,
                counters: counters.clone(),
            },
            client,
            rx,
        ));
        let mut links = lock(&links);
        links.retain(LinkHandle::alive);
        links.push(LinkHandle { commands: tx, task });
    }
}

/// Locks the link list; a panicked holder cannot leave it inconsistent.
fn lock(links: &Mutex<Vec<LinkHandle>>) -> std::sync::MutexGuard<'_, Vec<LinkHandle>> {
    links.lock().unwrap_or_else(|e| e.into_inner())
}

/// SplitMix64: a tiny, seedable generator for jitter and schedules.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub(crate) fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
