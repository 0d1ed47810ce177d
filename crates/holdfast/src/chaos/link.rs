//! One link: an accepted connection, its upstream connection and the two
//! directions between them, driven by one task that owns both sockets (so a
//! reset can close either with RST at once).
//!
//! Each direction reads from its source side into a queue of timed chunks
//! and writes the queue into its receiving side. A gate decides whether it
//! reads and writes (open, blackhole, hold, cut), a delay stamps each chunk
//! with the time it may leave, and a bandwidth limit paces the writes. The
//! end of a source (FIN, error, half-close) travels through the queue as a
//! marker, so it reaches the receiver after the bytes before it, also after
//! a hold is released.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Counters, Direction, FaultKind, ProxyOptions, SplitMix};

/// The largest read, and the largest write without a bandwidth limit.
const CHUNK: usize = 64 * 1024;

/// The longest delay a fault may set (longer ones are clamped).
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// A fault sent to one link.
#[derive(Clone, Copy, Debug)]
pub(super) struct Command {
    pub(super) kind: FaultKind,
    pub(super) direction: Direction,
}

/// What a link task needs to start.
pub(super) struct LinkSetup {
    pub(super) id: u64,
    pub(super) peer: SocketAddr,
    pub(super) upstream: SocketAddr,
    pub(super) options: ProxyOptions,
    pub(super) counters: Arc<Counters>,
}

/// Whether a direction reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    Open,
    Blackhole,
    Hold,
    /// Write this many more bytes, then nothing; later bytes wait queued.
    Cut(u64),
}

/// What waits in a direction's queue.
#[derive(Debug)]
enum Item {
    Data {
        at: Instant,
        bytes: Vec<u8>,
        sent: usize,
    },
    /// The source ended: FIN to the receiver, or RST when the source failed
    /// with nothing queued (an RST would destroy queued bytes in the
    /// kernel's send buffer, so then a FIN follows them instead).
    End { at: Instant, reset: bool },
}

impl Item {
    fn at(&self) -> Instant {
        match self {
            Item::Data { at, .. } | Item::End { at, .. } => *at,
        }
    }
}

/// One direction: reads side `i`, writes side `1 - i` (0 = up, 1 = down).
#[derive(Debug)]
struct Dir {
    gate: Gate,
    delay: (Duration, Duration),
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    next_send: Instant,
    last_at: Instant,
    queue: VecDeque<Item>,
    queued: usize,
    /// Still reading the source.
    reading: bool,
    /// Reading only to notice the source's close: bytes are dropped.
    discard: bool,
    /// Nothing more will be written to the receiver.
    done: bool,
}

impl Dir {
    fn new(now: Instant) -> Dir {
        Dir {
            gate: Gate::Open,
            delay: (Duration::ZERO, Duration::ZERO),
            rate: 0,
            next_send: now,
            last_at: now,
            queue: VecDeque::new(),
            queued: 0,
            reading: true,
            discard: false,
            done: false,
        }
    }

    fn writes(&self) -> bool {
        matches!(self.gate, Gate::Open) || matches!(self.gate, Gate::Cut(n) if n > 0)
    }

    fn finish(&mut self) {
        self.done = true;
        self.queue.clear();
        self.queued = 0;
    }

    fn push_end(&mut self, now: Instant, reset: bool) {
        let at = now.max(self.last_at);
        self.queue.push_back(Item::End { at, reset });
    }
}

enum Event {
    Command(Option<Command>),
    Read(usize),
    Write(usize),
    Tick,
}

struct Link {
    /// 0 = the accepted (client) connection, 1 = the upstream connection.
    sides: [Option<TcpStream>; 2],
    dirs: [Dir; 2],
    rng: SplitMix,
    options: ProxyOptions,
    counters: Arc<Counters>,
    buf: Vec<u8>,
}

/// Decrements the open-link gauge when the link ends, however it ends.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.links_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connects upstream and forwards until both sides are closed, applying the
/// faults that arrive on `commands`; resets both sides when the proxy is
/// dropped (the channel closes).
pub(super) async fn run(
    setup: LinkSetup,
    client: TcpStream,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let LinkSetup {
        id,
        peer,
        upstream,
        options,
        counters,
    } = setup;
    let connect = tokio::time::timeout(options.connect_timeout, TcpStream::connect(upstream));
    let target = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "holdfast::chaos", link = id, "cannot reach {upstream}: {e}");
            return;
        }
        Err(_) => {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "holdfast::chaos", link = id, "timed out connecting to {upstream}");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = target.set_nodelay(true);
    counters.links_open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(counters.clone());
    tracing::debug!(target: "holdfast::chaos", link = id, %peer, "link open");
    let now = Instant::now();
    let mut link = Link {
        sides: [Some(client), Some(target)],
        dirs: [Dir::new(now), Dir::new(now)],
        rng: SplitMix::new(options.seed ^ id.wrapping_mul(0xA076_1D64_78BD_642F)),
        options,
        counters,
        buf: vec![0; CHUNK],
    };
    link.drive(&mut commands).await;
    tracing::debug!(target: "holdfast::chaos", link = id, %peer, "link closed");
}

async fn readable(s: Option<&TcpStream>) {
    match s {
        Some(s) => {
            let _ = s.readable().await;
        }
        None => std::future::pending().await,
    }
}

async fn writable(s: Option<&TcpStream>) {
    match s {
        Some(s) => {
            let _ = s.writable().await;
        }
        None => std::future::pending().await,
    }
}

impl Link {
    async fn drive(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) {
        loop {
            let now = Instant::now();
            self.deliver_ends(now);
            self.reap();
            if self.sides.iter().all(Option::is_none) {
                return;
            }
            let can_read = [self.can_read(0), self.can_read(1)];
            let mut can_write = [false; 2];
            let mut wake: Option<Instant> = None;
            for (i, can) in can_write.iter_mut().enumerate() {
                if let Some(due) = self.write_due(i) {
                    if due <= now {
                        *can = true;
                    } else {
                        wake = Some(wake.map_or(due, |w| w.min(due)));
                    }
                }
            }
            let [client, target] = &self.sides;
            let event = tokio::select! {
                biased;
                c = commands.recv() => Event::Command(c),
                _ = readable(client.as_ref()), if can_read[0] => Event::Read(0),
                _ = readable(target.as_ref()), if can_read[1] => Event::Read(1),
                _ = writable(target.as_ref()), if can_write[0] => Event::Write(0),
                _ = writable(client.as_ref()), if can_write[1] => Event::Write(1),
                _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => Event::Tick,
            };
            match event {
                Event::Command(Some(c)) => self.command(c),
                Event::Command(None) => {
                    // The proxy is gone.
                    self.reset_side(0);
                    self.reset_side(1);
                    return;
                }
                Event::Read(i) => self.read(i),
                Event::Write(i) => self.write(i),
                Event::Tick => {}
            }
        }
    }

    fn can_read(&self, i: usize) -> bool {
        let d = &self.dirs[i];
        if !d.reading || self.sides[i].is_none() {
            return false;
        }
        if d.discard {
            return true;
        }
        let limit = match d.gate {
            Gate::Open => self.options.buffer_limit,
            Gate::Cut(n) if n > 0 => self.options.buffer_limit,
            Gate::Hold => self.options.hold_limit,
            Gate::Cut(_) | Gate::Blackhole => return false,
        };
        d.queued < limit
    }

    /// When direction `i` may write its next item, if it may at all.
    fn write_due(&self, i: usize) -> Option<Instant> {
        let d = &self.dirs[i];
        if d.done || self.sides[1 - i].is_none() || !d.writes() {
            return None;
        }
        match d.queue.front()? {
            Item::Data { at, .. } if d.rate > 0 => Some((*at).max(d.next_send)),
            item => Some(item.at()),
        }
    }

    fn read(&mut self, i: usize) {
        let Some(source) = &self.sides[i] else {
            return;
        };
        match source.try_read(&mut self.buf) {
            Ok(0) => {
                let d = &mut self.dirs[i];
                d.reading = false;
                if !d.discard {
                    d.push_end(Instant::now(), false);
                }
            }
            Ok(n) => self.received(i, n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.side_failed(i),
        }
    }

    fn received(&mut self, i: usize, n: usize) {
        let d = &mut self.dirs[i];
        if d.discard {
            return;
        }
        // A cut limits what is written, not what is read: bytes past the
        // cut stay queued, so a later heal resumes the stream without a gap
        // (TCP never delivers a stream with a hole, and neither do we).
        if n == 0 {
            return;
        }
        let now = Instant::now();
        let (base, jitter) = d.delay;
        let at = if base.is_zero() && jitter.is_zero() {
            now
        } else {
            let max = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
            let extra = Duration::from_nanos(self.rng.up_to(max));
            now.checked_add(base + extra).unwrap_or(now + MAX_DELAY)
        };
        let at = at.max(d.last_at);
        d.last_at = at;
        d.queue.push_back(Item::Data {
            at,
            bytes: self.buf[..n].to_vec(),
            sent: 0,
        });
        d.queued += n;
    }

    fn write(&mut self, i: usize) {
        let t = 1 - i;
        let now = Instant::now();
        let failed = {
            let Some(sink) = &self.sides[t] else {
                return;
            };
            let d = &mut self.dirs[i];
            let rate = d.rate;
            let Some(Item::Data { bytes, sent, .. }) = d.queue.front_mut() else {
                return;
            };
            let mut len = bytes.len() - *sent;
            if rate > 0 {
                len = len.min(quantum(rate));
            }
            if let Gate::Cut(rest) = d.gate {
                len = len.min(usize::try_from(rest).unwrap_or(usize::MAX));
            }
            match sink.try_write(&bytes[*sent..*sent + len]) {
                Ok(n) => {
                    if let Gate::Cut(rest) = &mut d.gate {
                        *rest = rest.saturating_sub(n as u64);
                    }
                    *sent += n;
                    let finished = *sent == bytes.len();
                    d.queued -= n;
                    if finished {
                        d.queue.pop_front();
                    }
                    if rate > 0 {
                        d.next_send =
                            d.next_send.max(now) + Duration::from_secs_f64(n as f64 / rate as f64);
                    }
                    let counter = if i == 0 {
                        &self.counters.bytes_up
                    } else {
                        &self.counters.bytes_down
                    };
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    false
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            }
        };
        if failed {
            self.side_failed(t);
        }
    }

    /// Delivers the end markers that are due at the front of open queues.
    fn deliver_ends(&mut self, now: Instant) {
        for i in 0..2 {
            let t = 1 - i;
            let d = &mut self.dirs[i];
            if d.done || !d.writes() {
                continue;
            }
            let Some(&Item::End { at, reset }) = d.queue.front() else {
                continue;
            };
            if at > now {
                continue;
            }
            d.queue.pop_front();
            d.done = true;
            if reset {
                self.reset_side(t);
            } else if let Some(sink) = &self.sides[t] {
                let _ = socket2::SockRef::from(sink).shutdown(std::net::Shutdown::Write);
            }
        }
    }

    /// Closes the sides no direction needs any more.
    fn reap(&mut self) {
        for s in 0..2 {
            if self.sides[s].is_some() && !self.dirs[s].reading && self.dirs[1 - s].done {
                self.sides[s] = None;
            }
        }
    }

    /// Side `s` failed (an error reading or writing it).
    fn side_failed(&mut self, s: usize) {
        self.sides[s] = None;
        // Nothing more reaches `s`; keep reading the other side only to
        // notice it close.
        let into = &mut self.dirs[1 - s];
        into.finish();
        into.discard = true;
        // The failure travels to the other side behind the queued bytes.
        let from = &mut self.dirs[s];
        if from.reading && !from.discard {
            let reset = from.queue.is_empty();
            from.push_end(Instant::now(), reset);
        }
        from.reading = false;
    }

    /// Closes side `s` with RST; its directions end, and the other side is
    /// kept open, silent, read only to notice it close.
    fn reset_side(&mut self, s: usize) {
        if let Some(sock) = self.sides[s].take() {
            let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
            drop(sock);
        }
        let into = &mut self.dirs[1 - s];
        into.finish();
        into.discard = true;
        let from = &mut self.dirs[s];
        from.reading = false;
        from.finish();
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        for i in 0..2 {
            if !c.direction.covers(i) {
                continue;
            }
            let d = &mut self.dirs[i];
            match c.kind {
                FaultKind::Reset => self.reset_side(1 - i),
                FaultKind::Blackhole => d.gate = Gate::Blackhole,
                FaultKind::Hold => d.gate = Gate::Hold,
                FaultKind::CutAfter(n) => d.gate = Gate::Cut(n),
                FaultKind::Release => {
                    if d.gate == Gate::Hold {
                        d.gate = Gate::Open;
                    }
                }
                FaultKind::Heal => {
                    d.gate = Gate::Open;
                    d.delay = (Duration::ZERO, Duration::ZERO);
                    d.rate = 0;
                }
                FaultKind::Delay { base, jitter } => {
                    d.delay = (base.min(MAX_DELAY), jitter.min(MAX_DELAY));
                }
                FaultKind::Bandwidth { bytes_per_sec } => {
                    d.rate = bytes_per_sec;
                    d.next_send = now;
                }
                FaultKind::HalfClose => {
                    if d.reading && !d.discard && !d.done {
                        d.push_end(now, false);
                    }
                    d.discard = true;
                }
            }
        }
    }
}

/// The most a rate-limited direction writes at once: about 50 ms' worth.
fn quantum(rate: u64) -> usize {
    usize::try_from((rate / 20).clamp(1, CHUNK as u64)).unwrap_or(CHUNK)
}
