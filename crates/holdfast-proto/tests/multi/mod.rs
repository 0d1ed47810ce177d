//! A hand-driven initiator/target pair with several connections per session
//! (PROTOCOL.md §17): every connection has its own byte queues in both
//! directions, which the test delivers, holds or cuts one by one; time only
//! moves when the test says so.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::target::CloseReason;
use holdfast_proto::{
    CallId, CallOptions, ConnId, Delivery, Initiator, InitiatorConfig, InitiatorEvent,
    SeededRandom, SessionSecret, StateChange, Target, TargetConfig, Timestamp,
};

/// One transport connection between the two.
#[derive(Debug, Default)]
pub(crate) struct Link {
    /// Bytes the initiator wrote, not yet read by the target.
    pub(crate) to_target: Vec<u8>,
    /// Bytes the target wrote, not yet read by the initiator.
    pub(crate) to_initiator: Vec<u8>,
    /// The initiator still uses it.
    pub(crate) initiator_open: bool,
    /// The target still reads it.
    pub(crate) target_open: bool,
}

/// The pair, the links, and what the service saw.
pub(crate) struct Multi {
    pub(crate) now: Timestamp,
    pub(crate) initiator: Initiator,
    pub(crate) target: Target,
    pub(crate) links: BTreeMap<ConnId, Link>,
    next_conn: u64,
    /// Every delivery to the service, in order.
    pub(crate) deliveries: Vec<Delivery>,
    /// Commands delivered and not yet completed (session, seq, payload).
    pub(crate) running: Vec<Delivery>,
    /// Initiator events, in order.
    pub(crate) events: Vec<InitiatorEvent>,
    /// Calls submitted: id → payload.
    pub(crate) calls: BTreeMap<CallId, Bytes>,
    /// Complete commands as soon as they are delivered.
    pub(crate) auto_complete: bool,
    /// The session's secret, from the target's `SessionCreated`.
    pub(crate) secret: Option<SessionSecret>,
    /// Connections the target closed, and why.
    pub(crate) closed: Vec<(ConnId, CloseReason)>,
}

impl Multi {
    /// A pair whose initiator may use `connections` connections.
    pub(crate) fn new(connections: u32, credits: u32) -> Self {
        let mut initiator = InitiatorConfig::default();
        initiator.ack_delay = Duration::ZERO;
        initiator.connections = connections;
        initiator.credits = credits;
        let mut target = TargetConfig::default();
        target.ack_delay = Duration::ZERO;
        target.credits = credits;
        Multi::with(initiator, target)
    }

    /// A pair with the given configurations.
    pub(crate) fn with(initiator: InitiatorConfig, target: TargetConfig) -> Self {
        Multi {
            now: Timestamp::from_millis(1),
            initiator: Initiator::new(initiator, Timestamp::ZERO),
            target: Target::new(target, Box::new(SeededRandom::new(7)), Timestamp::ZERO),
            links: BTreeMap::new(),
            next_conn: 1,
            deliveries: Vec::new(),
            running: Vec::new(),
            events: Vec::new(),
            calls: BTreeMap::new(),
            auto_complete: true,
            secret: None,
            closed: Vec::new(),
        }
    }

    fn open_link(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.target.accept(id, self.now).expect("accept");
        self.links.insert(
            id,
            Link {
                initiator_open: true,
                target_open: true,
                ..Link::default()
            },
        );
        id
    }

    /// Opens the first connection (new session or recovery) and logs in.
    pub(crate) fn connect(&mut self) -> ConnId {
        let id = self.open_link();
        self.initiator.connect(id, self.now).expect("connect");
        self.run();
        id
    }

    /// Opens a further connection and joins the session on it.
    pub(crate) fn join(&mut self) -> ConnId {
        let id = self.open_link();
        self.initiator.join(id, self.now).expect("join");
        self.run();
        id
    }

    /// Submits a retry-safe command whose payload names it.
    pub(crate) fn call(&mut self, text: &str) -> CallId {
        let payload = Bytes::from(text.to_owned());
        let call = self
            .initiator
            .call(payload.clone(), CallOptions::RETRY_SAFE, self.now)
            .expect("call");
        self.calls.insert(call, payload);
        call
    }

    /// Moves bytes out of both state machines into the links, without
    /// delivering any.
    pub(crate) fn flush(&mut self) {
        for _ in 0..64 {
            let mut moved = false;
            let ids: Vec<ConnId> = self.initiator.connections();
            for id in ids {
                while let Some(chunks) = self.initiator.poll_transmit_on(id, self.now) {
                    let link = self.links.get_mut(&id).expect("link");
                    if link.initiator_open {
                        for c in chunks {
                            link.to_target.extend_from_slice(&c);
                        }
                    }
                    moved = true;
                }
            }
            while let Some(e) = self.initiator.poll_event() {
                if let InitiatorEvent::ConnectionDropped { conn, .. } = &e {
                    self.links.get_mut(conn).expect("link").initiator_open = false;
                }
                self.events.push(e);
                moved = true;
            }
            while self.target.has_ready() {
                let ready = self.target.ready();
                for c in &ready.changes {
                    if let StateChange::SessionCreated { secret, .. } = c {
                        self.secret = Some(*secret);
                    }
                }
                for t in ready.transmits {
                    let link = self.links.get_mut(&t.conn).expect("link");
                    if link.target_open {
                        for c in t.chunks {
                            link.to_initiator.extend_from_slice(&c);
                        }
                    }
                }
                for c in ready.closes {
                    // Its last bytes were written above; it reads nothing more.
                    self.links.get_mut(&c.conn).expect("link").target_open = false;
                    self.closed.push((c.conn, c.reason));
                }
                for d in ready.deliveries {
                    if matches!(d, Delivery::Command { .. }) {
                        self.running.push(d.clone());
                    }
                    self.deliveries.push(d);
                }
                self.target.advance(self.now);
                moved = true;
            }
            if self.auto_complete && !self.running.is_empty() {
                self.complete_all();
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence after 64 rounds");
    }

    /// Completes every running command with its payload echoed.
    pub(crate) fn complete_all(&mut self) {
        for d in std::mem::take(&mut self.running) {
            if let Delivery::Command {
                session,
                seq,
                payload,
            } = d
            {
                self.target
                    .complete(session, seq, payload, self.now)
                    .expect("complete");
            }
        }
    }

    /// Delivers what waits on `conn` towards the target.
    pub(crate) fn deliver_up(&mut self, conn: ConnId) {
        let link = self.links.get_mut(&conn).expect("link");
        let bytes = std::mem::take(&mut link.to_target);
        if link.target_open && !bytes.is_empty() {
            self.target.handle_input(conn, &bytes, self.now);
        }
    }

    /// Delivers what waits on `conn` towards the initiator.
    pub(crate) fn deliver_down(&mut self, conn: ConnId) {
        let link = self.links.get_mut(&conn).expect("link");
        let bytes = std::mem::take(&mut link.to_initiator);
        if link.initiator_open && !bytes.is_empty() {
            self.initiator.handle_input(conn, &bytes, self.now);
        }
    }

    /// Flushes and delivers everything on every link until nothing moves.
    pub(crate) fn run(&mut self) {
        for _ in 0..256 {
            self.flush();
            let busy: Vec<ConnId> = self
                .links
                .iter()
                .filter(|(_, l)| !l.to_target.is_empty() || !l.to_initiator.is_empty())
                .map(|(id, _)| *id)
                .collect();
            if busy.is_empty() {
                return;
            }
            for id in busy {
                self.deliver_up(id);
                self.deliver_down(id);
            }
        }
        panic!("no quiescence after 256 rounds");
    }

    /// Cuts a link: bytes in flight are lost and both ends learn it.
    pub(crate) fn cut(&mut self, conn: ConnId) {
        let link = self.links.get_mut(&conn).expect("link");
        link.to_target.clear();
        link.to_initiator.clear();
        link.initiator_open = false;
        link.target_open = false;
        self.target.connection_closed(conn, self.now);
        self.initiator.connection_lost(conn, self.now);
    }

    /// The initiator alone gives up on a link (its detection bound passed);
    /// the target still reads it, and bytes in flight still arrive.
    pub(crate) fn initiator_drops(&mut self, conn: ConnId) {
        self.initiator.connection_lost(conn, self.now);
        self.links.get_mut(&conn).expect("link").initiator_open = false;
    }

    /// Moves time forward and fires both sides' timers.
    pub(crate) fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
        self.initiator.handle_timeout(self.now);
        self.target.handle_timeout(self.now);
    }

    /// Sequence numbers delivered to the service, in order.
    pub(crate) fn delivered_seqs(&self) -> Vec<u64> {
        self.deliveries
            .iter()
            .map(|d| match d {
                Delivery::Command { seq, .. } | Delivery::Message { seq, .. } => *seq,
            })
            .collect()
    }

    /// Responses received, per call, in order of arrival.
    pub(crate) fn responses(&self) -> Vec<(CallId, Bytes)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                InitiatorEvent::Response { call, payload } => Some((*call, payload.clone())),
                _ => None,
            })
            .collect()
    }

    /// Checks exactly-once and order: the service saw 1, 2, 3, … once each,
    /// and every call got its own payload back exactly once.
    pub(crate) fn check(&self) {
        let seqs = self.delivered_seqs();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "delivered out of order or twice");
        let mut payloads: Vec<&Bytes> = self
            .deliveries
            .iter()
            .map(|d| match d {
                Delivery::Command { payload, .. } | Delivery::Message { payload, .. } => payload,
            })
            .collect();
        payloads.sort();
        payloads.dedup();
        assert_eq!(payloads.len(), seqs.len(), "a call ran twice");
        let mut answered = BTreeMap::new();
        for (call, payload) in self.responses() {
            assert_eq!(Some(&payload), self.calls.get(&call), "wrong response");
            assert!(
                answered.insert(call, ()).is_none(),
                "{call:?} answered twice"
            );
        }
        let failed = self
            .events
            .iter()
            .filter(|e| matches!(e, InitiatorEvent::CallFailed { .. }))
            .count();
        assert_eq!(answered.len() + failed, self.calls.len(), "a call was lost");
    }
}

impl Multi {
    /// Opens a connection that the test drives by hand (the initiator does
    /// not know it): what the target writes on it stays in `to_initiator`.
    pub(crate) fn raw(&mut self) -> ConnId {
        let id = self.open_link();
        self.links.get_mut(&id).expect("link").initiator_open = false;
        id
    }

    /// Sends a hand-made frame on a raw connection and lets the target act.
    pub(crate) fn send_raw(&mut self, conn: ConnId, frame: &holdfast_proto::wire::Frame) {
        self.send_raw_with(conn, frame, holdfast_proto::wire::Digests::NONE);
    }

    /// Like `send_raw`, with digests.
    pub(crate) fn send_raw_with(
        &mut self,
        conn: ConnId,
        frame: &holdfast_proto::wire::Frame,
        digests: holdfast_proto::wire::Digests,
    ) {
        let bytes = holdfast_proto::wire::encode_to_vec(frame, digests);
        self.target.handle_input(conn, &bytes, self.now);
        self.flush();
    }

    /// Takes and decodes what the target wrote on a raw connection.
    pub(crate) fn raw_frames(&mut self, conn: ConnId) -> Vec<holdfast_proto::wire::Frame> {
        use holdfast_proto::wire::{Decoder, Direction};
        let link = self.links.get_mut(&conn).expect("link");
        let bytes = std::mem::take(&mut link.to_initiator);
        let mut decoder = Decoder::new(Direction::ToInitiator, u32::MAX);
        let mut input = &bytes[..];
        let mut frames = Vec::new();
        while let Ok(Some(f)) = decoder.decode(&mut input) {
            frames.push(f);
        }
        frames
    }

    /// The command sequence numbers the initiator wrote on `conn` and that
    /// still wait in its link.
    pub(crate) fn pending_commands(&self, conn: ConnId) -> Vec<u64> {
        use holdfast_proto::wire::{Decoder, Direction, Frame};
        let link = self.links.get(&conn).expect("link");
        let mut decoder = Decoder::new(Direction::ToTarget, u32::MAX);
        let mut input = &link.to_target[..];
        let mut seqs = Vec::new();
        while let Ok(Some(f)) = decoder.decode(&mut input) {
            if let Frame::Command { seq, .. } = f {
                seqs.push(seq);
            }
        }
        seqs
    }
}
