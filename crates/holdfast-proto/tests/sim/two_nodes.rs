//! Two target nodes over one shared backend, and a host that fails over
//! from node A to node B (PROTOCOL.md §11.4–§11.5), deterministic per seed.
//!
//! The host writes versions of a few blocks through A. At a random moment
//! its path to A breaks: bytes it already wrote are held and delivered late
//! (within `hold_max`, below the command budget), A's answers are lost. The
//! host gives up on A, raises its epoch, logs in to B and then, by seed:
//! asks B to fence A over B's peer link; the same with the peer link down
//! (B answers `Unreachable`, the host waits); or waits out A's quiesce time
//! from its last contact without asking. Then it re-issues every unanswered
//! write on B as a newer version.
//!
//! A's service queues commands (0 to 1.5 s) before they touch the backend,
//! asks `Target::begin` at that moment, and runs them 0 to 300 ms; a write
//! lands when it completes. The invariant (no stale execution): **no write
//! of the host's session on A lands after the host re-issued on B.**

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::{
    CallOptions, ConnId, Delivery, FenceRequest, FenceResult, HostId, Initiator, InitiatorConfig,
    InitiatorEvent, SeededRandom, SessionId, Target, TargetConfig, TestSwitches, Timestamp,
};

const HOST: HostId = HostId([0x77; 16]);
/// Connection ids: host to A, host to B, B's peer link to A.
const HA: ConnId = ConnId(1);
const HB: ConnId = ConnId(2);
const PEER: ConnId = ConnId(3);

/// How the host fails over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Ask B to fence A over the peer link.
    Fence,
    /// Ask B, whose peer link is down: `Unreachable`, then wait.
    FenceUnreachable,
    /// Wait out A's quiesce time from the last contact.
    Timeout,
}

/// What one seed did.
#[derive(Debug, Default, Clone, Copy)]
pub struct FailoverReport {
    /// Writes landed from A before the failover.
    pub landed_on_a: u64,
    /// Writes re-issued on B.
    pub reissued: u64,
    /// Commands A refused to start (fenced or past the contact deadline).
    pub refused: u64,
    /// Fences confirmed.
    pub fenced: u64,
    /// Failovers that waited out the quiesce time.
    pub waited: u64,
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// One node's target and its service's queue and running commands.
struct Node {
    target: Target,
    /// Delivered commands: (start at, session, seq, payload).
    queued: Vec<(Timestamp, SessionId, u64, Bytes)>,
    /// Started commands: (ends at, session, seq, payload).
    running: Vec<(Timestamp, SessionId, u64, Bytes)>,
}

/// Bytes on a one-way link, each chunk with its delivery time (in order).
#[derive(Default)]
struct Link(VecDeque<(Timestamp, Vec<u8>)>);

impl Link {
    fn push(&mut self, at: Timestamp, bytes: Vec<u8>) {
        let at = self.0.back().map_or(at, |(last, _)| (*last).max(at));
        self.0.push_back((at, bytes));
    }

    fn due(&mut self, now: Timestamp) -> Vec<u8> {
        let mut out = Vec::new();
        while self.0.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, b)) = self.0.pop_front() {
                out.extend(b);
            }
        }
        out
    }
}

/// The world of one seed.
pub struct TwoNodes {
    rng: Rng,
    now: Timestamp,
    mode: Mode,
    a: Node,
    b: Node,
    host_a: Initiator,
    host_b: Option<Initiator>,
    peer: Initiator,
    /// host→A, A→host, host→B, B→host, B→A (peer), A→B (peer).
    links: [Link; 6],
    /// The path to A is broken from then on.
    broken_at: Timestamp,
    /// The host gave up on A.
    gave_up: bool,
    /// Unanswered writes on A: (block, version).
    outstanding: Vec<(CallMark, u8, u64)>,
    next_version: u64,
    /// When the host re-issued on B.
    reissued_at: Option<Timestamp>,
    /// Wait until then before re-issuing (timeout path).
    wait_until: Option<Timestamp>,
    /// Forwarded fences: the peer link's token and B's request.
    forwarded: Vec<(u64, FenceRequest)>,
    report: FailoverReport,
}

type CallMark = holdfast_proto::CallId;

fn write(block: u8, version: u64) -> Bytes {
    let mut v = vec![block];
    v.extend_from_slice(&version.to_be_bytes());
    Bytes::from(v)
}

impl TwoNodes {
    /// A world for `seed`; `switches` apply to node A.
    pub fn new(seed: u64, switches: TestSwitches) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mode = match seed % 3 {
            0 => Mode::Fence,
            1 => Mode::FenceUnreachable,
            _ => Mode::Timeout,
        };
        let config = |switches| {
            let mut tc = TargetConfig::default();
            tc.switches = switches;
            tc.ack_delay = Duration::ZERO;
            tc
        };
        let node = |s: u64, switches| Node {
            target: Target::new(
                config(switches),
                Box::new(SeededRandom::new(s)),
                Timestamp::ZERO,
            ),
            queued: Vec::new(),
            running: Vec::new(),
        };
        let host = |epoch| {
            let mut ic = InitiatorConfig::default();
            ic.host = Some(HOST);
            ic.epoch = epoch;
            ic.keepalive = Duration::from_millis(100);
            ic.dead_after = Duration::from_secs(30);
            ic.ack_delay = Duration::ZERO;
            ic
        };
        let mut a = node(seed * 2 + 1, switches);
        let b = node(seed * 2 + 2, TestSwitches::default());
        let mut host_a = Initiator::new(host(1), Timestamp::ZERO);
        let mut peer = Initiator::new(InitiatorConfig::default(), Timestamp::ZERO);
        a.target.accept(HA, Timestamp::ZERO).expect("accept");
        host_a.connect(HA, Timestamp::ZERO).expect("connect");
        a.target.accept(PEER, Timestamp::ZERO).expect("accept");
        peer.connect(PEER, Timestamp::ZERO).expect("connect");
        let broken_at = Timestamp::from_millis(200 + rng.below(800));
        TwoNodes {
            rng,
            now: Timestamp::ZERO,
            mode,
            a,
            b,
            host_a,
            host_b: None,
            peer,
            links: Default::default(),
            broken_at,
            gave_up: false,
            outstanding: Vec::new(),
            next_version: 1,
            reissued_at: None,
            wait_until: None,
            forwarded: Vec::new(),
            report: FailoverReport::default(),
        }
    }

    /// Runs the seed; `Err` names the first violation.
    pub fn run(mut self) -> Result<FailoverReport, String> {
        for _ in 0..8000 {
            self.now = self.now + Duration::from_millis(1);
            self.step()?;
            if self
                .reissued_at
                .is_some_and(|t| self.now > t + Duration::from_secs(3))
            {
                return Ok(self.report);
            }
        }
        Err(format!(
            "mode {:?}: no failover completed in 8 s",
            self.mode
        ))
    }

    fn step(&mut self) -> Result<(), String> {
        let now = self.now;
        let broken = now >= self.broken_at;
        // The host's work on A, before it gives up.
        if !self.gave_up && !broken && self.host_a.is_connected() && self.outstanding.len() < 6 {
            let block = self.rng.below(4) as u8;
            let version = self.next_version;
            if let Ok(call) = self
                .host_a
                .call(write(block, version), CallOptions::default(), now)
            {
                self.next_version += 1;
                self.outstanding.push((call, block, version));
            }
        }
        if broken && !self.gave_up && now >= self.broken_at + Duration::from_millis(150) {
            self.fail_over();
        }
        // Initiators out.
        let hold = |rng: &mut Rng| Duration::from_millis(1 + rng.below(500));
        for (i, link) in [(0usize, 0usize), (1, 2), (2, 4)] {
            loop {
                let ini = match i {
                    0 => &mut self.host_a,
                    1 => match self.host_b.as_mut() {
                        Some(h) => h,
                        None => break,
                    },
                    _ => &mut self.peer,
                };
                let Some(chunks) = ini.poll_transmit(now) else {
                    break;
                };
                let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                let at = if i == 0 && broken {
                    now + hold(&mut self.rng)
                } else {
                    now + Duration::from_millis(1)
                };
                let peer_down = i == 2 && self.mode == Mode::FenceUnreachable;
                if !peer_down {
                    self.links[link].push(at, bytes);
                }
            }
        }
        // Deliveries to the targets.
        let to_a = self.links[0].due(now);
        if !to_a.is_empty() {
            self.a.target.handle_input(HA, &to_a, now);
        }
        let to_b = self.links[2].due(now);
        if !to_b.is_empty() {
            self.b.target.handle_input(HB, &to_b, now);
        }
        let peer_in = self.links[4].due(now);
        if !peer_in.is_empty() {
            self.a.target.handle_input(PEER, &peer_in, now);
        }
        self.a.target.handle_timeout(now);
        self.b.target.handle_timeout(now);
        self.run_service(true)?;
        self.run_service(false)?;
        self.drain(true);
        self.drain(false);
        // Deliveries to the initiators.
        let from_a = self.links[1].due(now);
        if !from_a.is_empty() && !self.gave_up {
            self.host_a.handle_input(HA, &from_a, now);
        }
        let from_b = self.links[3].due(now);
        if let (false, Some(h)) = (from_b.is_empty(), self.host_b.as_mut()) {
            h.handle_input(HB, &from_b, now);
        }
        let peer_out = self.links[5].due(now);
        if !peer_out.is_empty() {
            self.peer.handle_input(PEER, &peer_out, now);
        }
        for ini in [&mut self.host_a, &mut self.peer] {
            ini.handle_timeout(now);
        }
        if let Some(h) = self.host_b.as_mut() {
            h.handle_timeout(now);
        }
        self.events()?;
        if self.reissued_at.is_none() && self.wait_until.is_some_and(|t| now >= t) {
            self.reissue();
        }
        Ok(())
    }

    /// The host gives up on A: stops using it, raises its epoch, logs in
    /// to B (and, by mode, asks B for a fence once logged in).
    fn fail_over(&mut self) {
        self.gave_up = true;
        // Not one more byte to A: the last contact is final (what it
        // already wrote is still in the network, held).
        self.host_a.abort(self.now);
        let mut config = self.host_a.config().clone();
        config.epoch = 2;
        let mut b = Initiator::new(config, self.now);
        self.b.target.accept(HB, self.now).expect("accept");
        b.connect(HB, self.now).expect("connect");
        self.host_b = Some(b);
        if self.mode == Mode::Timeout {
            self.wait_for_quiesce();
        }
    }

    fn wait_for_quiesce(&mut self) {
        let last = self.host_a.last_contact().unwrap_or(Timestamp::ZERO);
        let quiesce = self.host_a.quiesce().unwrap_or(Duration::ZERO);
        self.wait_until = Some(last + quiesce);
        self.report.waited += 1;
    }

    /// Re-issues every unanswered write on B, as a newer version.
    fn reissue(&mut self) {
        self.reissued_at = Some(self.now);
        let Some(b) = self.host_b.as_mut() else {
            return;
        };
        for (_, block, _) in std::mem::take(&mut self.outstanding) {
            let version = self.next_version;
            self.next_version += 1;
            if b.call(write(block, version), CallOptions::default(), self.now)
                .is_ok()
            {
                self.report.reissued += 1;
            }
        }
    }

    fn events(&mut self) -> Result<(), String> {
        while let Some(e) = self.host_a.poll_event() {
            if let InitiatorEvent::Response { call, .. } = e {
                self.outstanding.retain(|(c, _, _)| *c != call);
            }
        }
        let node_a = self.a.target.incarnation();
        let mut fence_result = None;
        if let Some(b) = self.host_b.as_mut() {
            while let Some(e) = b.poll_event() {
                match e {
                    InitiatorEvent::Connected { .. } if self.mode != Mode::Timeout => {
                        b.fence(node_a, HOST, 2, self.now)
                            .map_err(|e| format!("fence: {e}"))?;
                    }
                    InitiatorEvent::FenceDone { result, .. } => fence_result = Some(result),
                    _ => {}
                }
            }
        }
        match fence_result {
            Some(FenceResult::Fenced) => {
                if self.mode == Mode::FenceUnreachable {
                    return Err("a fence over a dead peer link was confirmed".into());
                }
                self.report.fenced += 1;
                self.wait_until = Some(self.now);
            }
            Some(_) => self.wait_for_quiesce(),
            None => {}
        }
        while let Some(e) = self.peer.poll_event() {
            if let InitiatorEvent::FenceDone {
                token,
                result,
                waited,
            } = e
            {
                if let Some(i) = self.forwarded.iter().position(|(t, _)| *t == token) {
                    let (_, req) = self.forwarded.swap_remove(i);
                    let ms = u32::try_from(waited.as_millis()).unwrap_or(u32::MAX - 1);
                    self.b
                        .target
                        .answer_fence(req.conn, req.token, result, ms, self.now);
                }
            }
        }
        Ok(())
    }

    /// Starts queued commands that are due (asking `begin`) and completes
    /// running ones that are done, landing their writes.
    fn run_service(&mut self, on_a: bool) -> Result<(), String> {
        let now = self.now;
        let node = if on_a { &mut self.a } else { &mut self.b };
        let (due, rest): (Vec<_>, Vec<_>) = node.queued.drain(..).partition(|q| q.0 <= now);
        node.queued = rest;
        for (_, session, seq, payload) in due {
            if node.target.begin(session, seq, now).is_ok() {
                let ends = now + Duration::from_millis(self.rng.below(300));
                node.running.push((ends, session, seq, payload));
            } else {
                self.report.refused += 1;
            }
        }
        let (done, rest): (Vec<_>, Vec<_>) = node.running.drain(..).partition(|r| r.0 <= now);
        node.running = rest;
        for (_, session, seq, _payload) in done {
            if on_a && session.incarnation() == node.target.incarnation() {
                if let Some(t) = self.reissued_at {
                    if now > t {
                        return Err(format!(
                            "mode {:?}: a write of the old session landed on A at {now:?}, \
                             after the re-issue on B at {t:?} (a stale write)",
                            self.mode
                        ));
                    }
                }
                self.report.landed_on_a += 1;
            }
            let _ = node.target.complete(session, seq, Bytes::new(), now);
        }
        Ok(())
    }

    /// Takes the target's output: bytes onto links, deliveries into the
    /// service queue, fences for other nodes to the peer link.
    fn drain(&mut self, on_a: bool) {
        let now = self.now;
        let node = if on_a { &mut self.a } else { &mut self.b };
        while node.target.has_ready() {
            let ready = node.target.ready();
            for t in &ready.transmits {
                let bytes: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
                let (link, lost) = match (on_a, t.conn) {
                    (true, HA) => (1, now >= self.broken_at),
                    (true, _) => (5, self.mode == Mode::FenceUnreachable),
                    _ => (3, false),
                };
                if !lost {
                    self.links[link].push(now + Duration::from_millis(1), bytes);
                }
            }
            for d in &ready.deliveries {
                if let Delivery::Command {
                    session,
                    seq,
                    payload,
                } = d
                {
                    let wait = if self.rng.below(4) == 0 {
                        self.rng.below(1500)
                    } else {
                        self.rng.below(50)
                    };
                    let start = now + Duration::from_millis(wait);
                    node.queued.push((start, *session, *seq, payload.clone()));
                }
            }
            for f in &ready.fences {
                let live = self.peer.is_connected() && self.peer.node() == Some(f.node);
                let token = live
                    .then(|| self.peer.fence(f.node, f.host, f.epoch, now).ok())
                    .flatten();
                match token {
                    Some(token) => self.forwarded.push((token, f.clone())),
                    None => {
                        node.target
                            .answer_fence(f.conn, f.token, FenceResult::Unreachable, 0, now)
                    }
                }
            }
            node.target.advance(now);
        }
    }
}
