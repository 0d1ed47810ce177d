//! A hand-driven initiator/target pair for scenario tests: every byte in
//! flight sits in a buffer the test can deliver, cut or drop, and time only
//! moves when the test says so (in the manner of quinn-proto's `Pair`).

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::wire::{Decoder, Direction, Frame};
use holdfast_proto::{
    ConnId, ConnectError, Delivery, Initiator, InitiatorConfig, InitiatorEvent, MemoryStore,
    SeededRandom, StateChange, Target, TargetConfig, Timestamp,
};

/// Two state machines and the bytes between them.
pub struct Pair {
    pub now: Timestamp,
    pub initiator: Initiator,
    pub target: Target,
    pub conn: ConnId,
    next_conn: u64,
    /// Bytes sent by the initiator, not yet delivered.
    pub to_target: Vec<u8>,
    /// Bytes sent by the target on `conn`, not yet delivered.
    pub to_initiator: Vec<u8>,
    /// Every frame the initiator sent, per connection, in order.
    pub sent_by_initiator: Vec<(ConnId, Frame)>,
    /// Every frame the target sent, in order.
    pub sent_by_target: Vec<(ConnId, Frame)>,
    /// Deliveries to the service, in order.
    pub deliveries: Vec<Delivery>,
    /// Initiator events, in order.
    pub events: Vec<InitiatorEvent>,
    /// Target state changes, in order.
    pub changes: Vec<StateChange>,
    /// The persisted state.
    pub store: MemoryStore,
    /// Connections the target asked to close.
    pub target_closed: Vec<ConnId>,
}

impl Pair {
    /// A pair with default configs except for the given tweaks.
    pub fn new(initiator: InitiatorConfig, target: TargetConfig) -> Self {
        Pair {
            now: Timestamp::from_millis(1),
            initiator: Initiator::new(initiator, Timestamp::ZERO),
            target: Target::new(target, Box::new(SeededRandom::new(42)), Timestamp::ZERO),
            conn: ConnId(0),
            next_conn: 1,
            to_target: Vec::new(),
            to_initiator: Vec::new(),
            sent_by_initiator: Vec::new(),
            sent_by_target: Vec::new(),
            deliveries: Vec::new(),
            events: Vec::new(),
            changes: Vec::new(),
            store: MemoryStore::new(),
            target_closed: Vec::new(),
        }
    }

    /// Defaults with immediate acks, so scenarios need not wait for timers.
    pub fn default_pair() -> Self {
        Pair::new(
            {
                let mut ic = InitiatorConfig::default();
                ic.ack_delay = Duration::ZERO;
                ic
            },
            {
                let mut tc = TargetConfig::default();
                tc.ack_delay = Duration::ZERO;
                tc
            },
        )
    }

    /// Opens a new connection (abandoning any bytes in flight on the old one).
    pub fn connect(&mut self) {
        self.conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.to_target.clear();
        self.to_initiator.clear();
        self.target.accept(self.conn, self.now).expect("accept");
        self.initiator
            .connect(self.conn, self.now)
            .expect("connect");
    }

    /// Opens a new connection if the initiator allows it now (an eager
    /// driver's reconnect attempt). On refusal nothing changes: the target
    /// never sees the connection and the bytes in flight stay where they are.
    pub fn try_connect(&mut self) -> Result<(), ConnectError> {
        let conn = ConnId(self.next_conn);
        self.initiator.connect(conn, self.now)?;
        self.next_conn += 1;
        self.conn = conn;
        self.to_target.clear();
        self.to_initiator.clear();
        self.target.accept(conn, self.now).expect("accept");
        Ok(())
    }

    /// Moves time forward and fires timers.
    pub fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
        self.initiator.handle_timeout(self.now);
        self.target.handle_timeout(self.now);
        self.flush();
    }

    /// Collects everything both sides want to send (without delivering it).
    pub fn flush(&mut self) {
        loop {
            let mut progress = false;
            while let Some(chunks) = self.initiator.poll_transmit(self.now) {
                progress = true;
                let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                let conn = self.initiator.connection().unwrap_or(self.conn);
                for f in decode_all(&bytes, Direction::ToTarget) {
                    self.sent_by_initiator.push((conn, f));
                }
                if conn == self.conn {
                    self.to_target.extend_from_slice(&bytes);
                }
            }
            while let Some(e) = self.initiator.poll_event() {
                progress = true;
                self.events.push(e);
            }
            while self.target.has_ready() {
                progress = true;
                let ready = self.target.ready();
                self.store.apply_all(&ready.changes);
                self.changes.extend(ready.changes);
                for t in ready.transmits {
                    let bytes: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
                    for f in decode_all(&bytes, Direction::ToInitiator) {
                        self.sent_by_target.push((t.conn, f));
                    }
                    if t.conn == self.conn {
                        self.to_initiator.extend_from_slice(&bytes);
                    }
                }
                for c in ready.closes {
                    self.target_closed.push(c.conn);
                }
                self.deliveries.extend(ready.deliveries);
                self.target.advance(self.now);
            }
            if !progress {
                return;
            }
        }
    }

    /// Delivers up to `n` bytes to the target (all with `usize::MAX`).
    pub fn deliver_to_target(&mut self, n: usize) {
        let n = n.min(self.to_target.len());
        let bytes: Vec<u8> = self.to_target.drain(..n).collect();
        self.target.handle_input(self.conn, &bytes, self.now);
        self.flush();
    }

    /// Delivers up to `n` bytes to the initiator.
    pub fn deliver_to_initiator(&mut self, n: usize) {
        let n = n.min(self.to_initiator.len());
        let bytes: Vec<u8> = self.to_initiator.drain(..n).collect();
        self.initiator.handle_input(self.conn, &bytes, self.now);
        self.flush();
    }

    /// Delivers everything both ways until nothing moves.
    pub fn run(&mut self) {
        self.flush();
        while !self.to_target.is_empty() || !self.to_initiator.is_empty() {
            self.deliver_to_target(usize::MAX);
            self.deliver_to_initiator(usize::MAX);
        }
    }

    /// Cuts the connection: bytes in flight are lost and both sides learn.
    pub fn cut(&mut self) {
        self.to_target.clear();
        self.to_initiator.clear();
        self.initiator.connection_lost(self.conn, self.now);
        self.target.connection_closed(self.conn, self.now);
        self.flush();
    }

    /// Completes a delivered command with `response`.
    pub fn complete(&mut self, seq: u64, response: &'static [u8]) {
        let session = self.initiator.session().expect("session");
        self.target
            .complete(session, seq, Bytes::from_static(response), self.now)
            .expect("complete");
        self.flush();
    }

    /// Takes the events seen so far.
    pub fn take_events(&mut self) -> Vec<InitiatorEvent> {
        std::mem::take(&mut self.events)
    }

    /// The sequence numbers of the commands and messages delivered so far.
    pub fn delivered_seqs(&self) -> Vec<u64> {
        self.deliveries
            .iter()
            .map(|d| match d {
                Delivery::Command { seq, .. } | Delivery::Message { seq, .. } => *seq,
            })
            .collect()
    }

    /// Data frames (CMD/MSG sequence numbers) the initiator sent on `conn`.
    pub fn data_sent_on(&self, conn: ConnId) -> Vec<u64> {
        self.sent_by_initiator
            .iter()
            .filter(|(c, _)| *c == conn)
            .filter_map(|(_, f)| match f {
                Frame::Command { seq, .. } | Frame::Message { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }
}

/// Decodes every whole frame in `bytes` (no digests; tests that use digests
/// do not use this).
pub fn decode_all(bytes: &[u8], direction: Direction) -> Vec<Frame> {
    let mut d = Decoder::new(direction, u32::MAX);
    let mut input = bytes;
    let mut frames = Vec::new();
    while let Ok(Some(f)) = d.decode(&mut input) {
        frames.push(f);
        // After a LOGIN_ACCEPT digests could change; scenarios use none.
    }
    frames
}
