//! A hand-driven target with several initiators (each with one connection),
//! for the fence and quiesce tests: bytes move only when the test pumps
//! them, and time only when it says so.

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::wire::{Direction, Frame};
use holdfast_proto::{
    CallOptions, ConnId, Delivery, FenceRequest, HostId, Initiator, InitiatorConfig,
    InitiatorEvent, MemoryStore, SeededRandom, SessionId, StateChange, Target, TargetConfig,
    Timestamp,
};

/// One initiator and its connection.
pub(crate) struct Client {
    pub(crate) ini: Initiator,
    pub(crate) conn: Option<ConnId>,
    /// Frames the target sent to it, in order.
    pub(crate) received: Vec<Frame>,
    pub(crate) events: Vec<InitiatorEvent>,
    /// While true, nothing moves either way (a partition).
    pub(crate) cut_off: bool,
}

/// A target and its clients.
pub(crate) struct Bench {
    pub(crate) now: Timestamp,
    pub(crate) target: Target,
    pub(crate) clients: Vec<Client>,
    pub(crate) deliveries: Vec<Delivery>,
    pub(crate) changes: Vec<StateChange>,
    pub(crate) fences: Vec<FenceRequest>,
    pub(crate) store: MemoryStore,
    next_conn: u64,
}

/// A host id for the tests.
pub(crate) const HOST: HostId = HostId([0x4f; 16]);

/// Initiator settings with immediate acks, optionally with a HOST record.
pub(crate) fn initiator(host: Option<HostId>, epoch: u64) -> InitiatorConfig {
    {
        let mut ic = InitiatorConfig::default();
        ic.ack_delay = Duration::ZERO;
        ic.host = host;
        ic.epoch = epoch;
        ic
    }
}

/// Target settings with immediate acks.
pub(crate) fn target() -> TargetConfig {
    {
        let mut tc = TargetConfig::default();
        tc.ack_delay = Duration::ZERO;
        tc
    }
}

impl Bench {
    pub(crate) fn new(config: TargetConfig) -> Self {
        Bench {
            now: Timestamp::from_millis(1),
            target: Target::new(config, Box::new(SeededRandom::new(7)), Timestamp::ZERO),
            clients: Vec::new(),
            deliveries: Vec::new(),
            changes: Vec::new(),
            fences: Vec::new(),
            store: MemoryStore::new(),
            next_conn: 1,
        }
    }

    /// Adds a client, connects and logs it in; returns its index.
    pub(crate) fn client(&mut self, config: InitiatorConfig) -> usize {
        self.clients.push(Client {
            ini: Initiator::new(config, self.now),
            conn: None,
            received: Vec::new(),
            events: Vec::new(),
            cut_off: false,
        });
        let i = self.clients.len() - 1;
        self.connect(i);
        i
    }

    /// Opens a new connection for client `i`.
    pub(crate) fn connect(&mut self, i: usize) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.target.accept(conn, self.now).expect("accept");
        self.clients[i]
            .ini
            .connect(conn, self.now)
            .expect("connect");
        self.clients[i].conn = Some(conn);
        self.clients[i].cut_off = false;
        self.pump();
    }

    /// The session of client `i`.
    pub(crate) fn session(&self, i: usize) -> SessionId {
        self.clients[i].ini.session().expect("logged in")
    }

    /// Issues a command from client `i`; returns its call id's number.
    pub(crate) fn call(&mut self, i: usize, payload: &'static [u8]) -> holdfast_proto::CallId {
        let id = self.clients[i]
            .ini
            .call(
                Bytes::from_static(payload),
                CallOptions::default(),
                self.now,
            )
            .expect("call");
        self.pump();
        id
    }

    /// Moves bytes both ways until nothing moves.
    pub(crate) fn pump(&mut self) {
        loop {
            let mut progress = false;
            for i in 0..self.clients.len() {
                let now = self.now;
                let c = &mut self.clients[i];
                while let Some(chunks) = c.ini.poll_transmit(now) {
                    progress = true;
                    let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                    if let (Some(conn), false) = (c.conn, c.cut_off) {
                        self.target.handle_input(conn, &bytes, now);
                    }
                }
                while let Some(e) = c.ini.poll_event() {
                    progress = true;
                    c.events.push(e);
                }
            }
            while self.target.has_ready() {
                progress = true;
                let ready = self.target.ready();
                self.store.apply_all(&ready.changes);
                self.changes.extend(ready.changes);
                for t in ready.transmits {
                    let bytes: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
                    let Some(c) = self
                        .clients
                        .iter_mut()
                        .find(|c| c.conn == Some(t.conn) && !c.cut_off)
                    else {
                        continue;
                    };
                    c.received.extend(decode(&bytes, Direction::ToInitiator));
                    c.ini.handle_input(t.conn, &bytes, self.now);
                }
                for close in ready.closes {
                    if let Some(c) = self.clients.iter_mut().find(|c| c.conn == Some(close.conn)) {
                        c.ini.connection_lost(close.conn, self.now);
                        c.conn = None;
                    }
                }
                self.deliveries.extend(ready.deliveries);
                self.fences.extend(ready.fences);
                self.target.advance(self.now);
            }
            if !progress {
                return;
            }
        }
    }

    /// Partitions client `i`: its bytes stop moving, neither side notices.
    pub(crate) fn partition(&mut self, i: usize) {
        self.clients[i].cut_off = true;
    }

    /// Moves time forward and fires timers.
    pub(crate) fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
        for c in &mut self.clients {
            c.ini.handle_timeout(self.now);
        }
        self.target.handle_timeout(self.now);
        self.pump();
    }

    /// The sequence numbers delivered for `session`.
    pub(crate) fn delivered(&self, session: SessionId) -> Vec<u64> {
        self.deliveries
            .iter()
            .filter_map(|d| match d {
                Delivery::Command {
                    session: s, seq, ..
                } if *s == session => Some(*seq),
                _ => None,
            })
            .collect()
    }

    /// The FENCE_DONE frames client `i` received: (token, result, waited_ms).
    pub(crate) fn fence_dones(&self, i: usize) -> Vec<(u64, holdfast_proto::FenceResult, u32)> {
        self.clients[i]
            .received
            .iter()
            .filter_map(|f| match f {
                Frame::FenceDone {
                    token,
                    result,
                    waited_ms,
                } => Some((*token, *result, *waited_ms)),
                _ => None,
            })
            .collect()
    }
}

/// Decodes every whole frame in `bytes` (no digests).
pub(crate) fn decode(bytes: &[u8], direction: Direction) -> Vec<Frame> {
    let mut d = holdfast_proto::wire::Decoder::new(direction, u32::MAX);
    let mut input = bytes;
    let mut frames = Vec::new();
    while let Ok(Some(f)) = d.decode(&mut input) {
        frames.push(f);
    }
    frames
}
