//! Hostile peers against the state machines.
//!
//! * Arbitrary bytes (random, or well-framed junk with the negotiated
//!   digests, cut at arbitrary points) into a [`Target`], on a fresh
//!   connection and on one whose session is established and carries traffic:
//!   the target never panics, its decoder never holds more than one maximal
//!   frame, everything it sends decodes, a connection it closes for a
//!   violation gets an ERROR frame with the violation's code and a `Close`,
//!   the session's invariants hold (`held == running + cached <= credits`,
//!   `limit == received + credits - held`, nothing goes backwards), and a
//!   second connection recovers the session with its secret.
//! * Arbitrary bytes into an [`Initiator`], during and after login: no panic,
//!   a bounded decoder, and either the connection stays up or the initiator
//!   reports `ConnectionLost` (after telling the target why in an ERROR
//!   frame when the fault was the target's).
//! * Valid frames that break the rules (sequence gaps, sequence 0, acks out
//!   of range, credit overrun, FIN with work outstanding, frames of the
//!   wrong kind, bad digests, oversized headers): the target closes the
//!   connection with the right `ErrorCode`, the session is unchanged, and it
//!   recovers on a new connection and keeps working. The same for the
//!   initiator facing a target that breaks the rules.
//! * Recoveries that must fail (wrong secret, unknown session, a target
//!   restart, an ack of responses never sent) change nothing and never fence
//!   the live connection.

mod wire_support;

use std::collections::HashMap;

use bytes::Bytes;
use holdfast_proto::target::{Close, CloseReason, SessionInfo};
use holdfast_proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, ErrorCode, Frame, Login, LoginAccept, LoginKind,
    RejectReason, VERSION_MAX, VERSION_MIN,
};
use holdfast_proto::{
    CallOptions, ConnId, ConnectionError, Delivery, Initiator, InitiatorConfig, InitiatorEvent,
    SeededRandom, SessionId, SessionSecret, Target, TargetConfig, Timestamp,
};
use proptest::prelude::*;
use proptest::sample::Index;
use wire_support::{arb_digests, capacity_bound, frame_bound, hostile_input, split_at_points};

/// The keep-alive promised at login: long enough that no inactivity
/// deadline passes during a test.
const KEEPALIVE_MS: u32 = 10_000;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(512)
}

fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

/// A LOGIN as an honest initiator would send it.
fn login(
    kind: LoginKind,
    session: SessionId,
    secret: SessionSecret,
    digests: Digests,
    response_ack: u64,
    credits: u32,
) -> Frame {
    Frame::Login(Login {
        min_version: VERSION_MIN,
        max_version: VERSION_MAX,
        kind,
        digests,
        session,
        secret,
        response_ack,
        max_frame: 1 << 20,
        keepalive_ms: KEEPALIVE_MS,
        requested_credits: credits,
        host: None,
    })
}

/// The initiator's end of one connection: decodes what the target sent.
struct Peer {
    dec: Decoder,
    frames: Vec<Frame>,
}

impl Peer {
    fn new() -> Self {
        Peer {
            dec: Decoder::new(Direction::ToInitiator, u32::MAX),
            frames: Vec::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), TestCaseError> {
        loop {
            match self.dec.decode(&mut bytes) {
                Ok(Some(f)) => {
                    if let Frame::LoginAccept(a) = &f {
                        self.dec.set_digests(a.digests);
                    }
                    self.frames.push(f);
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(fail(format!("the target sent undecodable bytes: {e}"))),
            }
        }
    }
}

/// A target, a clock, and everything the target sent and asked for.
struct Harness {
    target: Target,
    now: Timestamp,
    max_frame: u32,
    peers: HashMap<ConnId, Peer>,
    closes: Vec<Close>,
    /// Commands delivered to the service and not yet completed.
    running: Vec<(SessionId, u64)>,
}

impl Harness {
    fn new(seed: u64, max_frame: u32, credits: u32) -> Self {
        let mut config = TargetConfig::default();
        config.max_frame = max_frame;
        config.credits = credits;
        Harness {
            target: Target::new(config, Box::new(SeededRandom::new(seed)), Timestamp::ZERO),
            now: Timestamp::ZERO,
            max_frame,
            peers: HashMap::new(),
            closes: Vec::new(),
            running: Vec::new(),
        }
    }

    fn tick(&mut self) {
        self.now = Timestamp::from_nanos(self.now.as_nanos() + 100_000);
    }

    fn accept(&mut self, conn: ConnId) -> Result<(), TestCaseError> {
        self.tick();
        self.target
            .accept(conn, self.now)
            .map_err(|e| fail(format!("accept: {e}")))
    }

    /// Feeds bytes, then runs the Ready loop to quiescence.
    fn input(&mut self, conn: ConnId, bytes: &[u8]) -> Result<(), TestCaseError> {
        self.tick();
        self.target.handle_input(conn, bytes, self.now);
        self.check_buffered(conn)?;
        self.drain()
    }

    fn send(&mut self, conn: ConnId, frame: &Frame, digests: Digests) -> Result<(), TestCaseError> {
        self.input(conn, &encode_to_vec(frame, digests))
    }

    /// The decoder of a connection holds at most one maximal frame, and its
    /// reservation stays bounded.
    fn check_buffered(&self, conn: ConnId) -> Result<(), TestCaseError> {
        if let Some((buffered, capacity)) = self.target.buffered(conn) {
            let bound = frame_bound(Direction::ToTarget, self.max_frame);
            prop_assert!(buffered <= bound, "buffered {} > {}", buffered, bound);
            prop_assert!(
                capacity < capacity_bound(bound),
                "capacity {} >= {}",
                capacity,
                capacity_bound(bound)
            );
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), TestCaseError> {
        if self.target.poll_timeout().is_some_and(|t| t <= self.now) {
            self.target.handle_timeout(self.now);
        }
        for _ in 0..1000 {
            if !self.target.has_ready() {
                return Ok(());
            }
            let ready = self.target.ready();
            for t in &ready.transmits {
                let bytes: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
                self.peers
                    .entry(t.conn)
                    .or_insert_with(Peer::new)
                    .feed(&bytes)?;
            }
            for d in &ready.deliveries {
                if let Delivery::Command { session, seq, .. } = d {
                    self.running.push((*session, *seq));
                }
            }
            self.closes.extend(ready.closes);
            self.target.advance(self.now);
        }
        Err(fail("the Ready loop does not settle"))
    }

    fn frames(&self, conn: ConnId) -> &[Frame] {
        self.peers.get(&conn).map_or(&[], |p| &p.frames)
    }

    fn close_of(&self, conn: ConnId) -> Option<&Close> {
        self.closes.iter().find(|c| c.conn == conn)
    }

    fn info(&self, session: SessionId) -> Result<SessionInfo, TestCaseError> {
        self.target
            .session_info(session)
            .ok_or_else(|| fail(format!("session {session} is gone")))
    }

    /// Highest response sequence the target sent on any connection.
    fn responses_seen(&self) -> u64 {
        self.peers
            .values()
            .flat_map(|p| &p.frames)
            .filter_map(|f| match f {
                Frame::Response { seq, .. } => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Logs a new session in on `conn`; returns its id and secret.
    fn establish(
        &mut self,
        conn: ConnId,
        digests: Digests,
        credits: u32,
    ) -> Result<(SessionId, SessionSecret), TestCaseError> {
        self.accept(conn)?;
        let frame = login(
            LoginKind::New,
            SessionId(0),
            SessionSecret([0; 16]),
            digests,
            0,
            credits,
        );
        self.send(conn, &frame, Digests::NONE)?;
        match self.frames(conn).first() {
            Some(Frame::LoginAccept(a)) => {
                prop_assert_eq!(a.kind, LoginKind::New);
                prop_assert_eq!(a.digests, digests, "the target offers both digests");
                prop_assert_eq!(a.command_ack, 0);
                Ok((a.session, a.secret))
            }
            other => Err(fail(format!("expected LOGIN_ACCEPT, got {other:?}"))),
        }
    }

    /// Recovers `session` on a new connection and checks the answer against
    /// the session's state; returns it.
    fn recover(
        &mut self,
        conn: ConnId,
        session: SessionId,
        secret: SessionSecret,
        digests: Digests,
    ) -> Result<SessionInfo, TestCaseError> {
        let before = self.info(session)?;
        self.accept(conn)?;
        let frame = login(
            LoginKind::Recover,
            session,
            secret,
            digests,
            before.responses_acked,
            before.credits,
        );
        self.send(conn, &frame, Digests::NONE)?;
        let frames = self.frames(conn);
        let expected = LoginAccept {
            version: 1,
            digests,
            kind: LoginKind::Recover,
            session,
            secret: SessionSecret([0; 16]),
            command_ack: before.received,
            credit_limit: before.limit,
            max_frame: self.max_frame,
            // Four keep-alives, capped by the default max_inactivity of 30 s.
            inactivity_ms: (4 * KEEPALIVE_MS).min(30_000),
            retain_ms: 60_000,
            credits: before.credits,
            quiesce_ms: 0,
        };
        match frames.first() {
            Some(Frame::LoginAccept(a)) => prop_assert_eq!(a, &expected),
            other => {
                return Err(fail(format!(
                    "recovery: expected LOGIN_ACCEPT, got {other:?}"
                )))
            }
        }
        // Every unacknowledged response is sent again, in order.
        let resent: Vec<u64> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Response { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        let want: Vec<u64> =
            (before.responses_acked + 1..=before.responses_acked + before.cached as u64).collect();
        prop_assert_eq!(resent, want);
        let after = self.info(session)?;
        prop_assert!(after.attached);
        check_invariants(&after)?;
        Ok(after)
    }
}

/// What must hold of a session at rest (after the Ready loop settled).
fn check_invariants(s: &SessionInfo) -> Result<(), TestCaseError> {
    prop_assert!(
        s.held <= s.credits,
        "held {} > credits {}",
        s.held,
        s.credits
    );
    prop_assert_eq!(
        s.running + s.cached,
        s.held as usize,
        "held must count running commands and unacknowledged responses: {:?}",
        s
    );
    prop_assert_eq!(s.limit, s.received + u64::from(s.credits - s.held));
    Ok(())
}

/// Nothing of a session goes backwards.
fn check_progress(before: &SessionInfo, after: &SessionInfo) -> Result<(), TestCaseError> {
    check_invariants(after)?;
    prop_assert_eq!(after.credits, before.credits);
    prop_assert!(after.received >= before.received);
    prop_assert!(after.limit >= before.limit);
    prop_assert!(after.responses_acked >= before.responses_acked);
    Ok(())
}

/// Compares everything but the attachment.
fn same_state(a: &SessionInfo, b: &SessionInfo) -> bool {
    SessionInfo {
        attached: false,
        detached_since: None,
        ..a.clone()
    } == SessionInfo {
        attached: false,
        detached_since: None,
        ..b.clone()
    }
}

/// One step of honest traffic on an established connection.
#[derive(Debug, Clone)]
enum Op {
    Send { command: bool, len: usize },
    Complete { len: usize },
    Ack,
    Ping,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0usize..64).prop_map(|(command, len)| Op::Send { command, len }),
        2 => (0usize..64).prop_map(|len| Op::Complete { len }),
        1 => Just(Op::Ack),
        1 => Just(Op::Ping),
    ]
}

/// Runs honest traffic, checking the session after every step.
fn run_ops(
    h: &mut Harness,
    conn: ConnId,
    session: SessionId,
    digests: Digests,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    for (i, op) in ops.iter().enumerate() {
        let before = h.info(session)?;
        let ack = h.responses_seen();
        match op {
            Op::Send { command, len } => {
                if before.received >= before.limit {
                    continue;
                }
                let seq = before.received + 1;
                // Honest traffic fits the target's frame limit.
                let len = (*len).min(h.max_frame as usize - 16);
                let payload = Bytes::from(vec![i as u8; len]);
                let frame = if *command {
                    Frame::Command { seq, ack, payload }
                } else {
                    Frame::Message { seq, ack, payload }
                };
                h.send(conn, &frame, digests)?;
                let after = h.info(session)?;
                prop_assert_eq!(after.received, seq);
            }
            Op::Complete { len } => {
                let Some(pos) = h.running.iter().position(|(s, _)| *s == session) else {
                    continue;
                };
                let (_, seq) = h.running.remove(pos);
                h.tick();
                h.target
                    .complete(session, seq, Bytes::from(vec![7; *len]), h.now)
                    .map_err(|e| fail(format!("complete: {e}")))?;
                h.drain()?;
            }
            Op::Ack => h.send(conn, &Frame::InitiatorAck { ack }, digests)?,
            Op::Ping => {
                let token = 1000 + i as u64;
                h.send(conn, &Frame::Ping { token, ack }, digests)?;
                let pong = h
                    .frames(conn)
                    .iter()
                    .any(|f| matches!(f, Frame::Pong { token: t, .. } if *t == token));
                prop_assert!(pong, "no PONG for PING {}", token);
            }
        }
        prop_assert!(
            h.close_of(conn).is_none(),
            "honest traffic closed the connection"
        );
        check_progress(&before, &h.info(session)?)?;
    }
    Ok(())
}

/// A frame near a valid one: sequence number and ack off by a little from
/// what the target expects, or a completion by the service.
#[derive(Debug, Clone)]
struct NearFrame {
    kind: u8,
    seq_off: i8,
    ack_off: i8,
    len: u8,
}

fn arb_near_frame() -> impl Strategy<Value = NearFrame> {
    (0u8..6, -2i8..=2, -2i8..=1, any::<u8>()).prop_map(|(kind, seq_off, ack_off, len)| NearFrame {
        kind,
        seq_off,
        ack_off,
        len,
    })
}

impl NearFrame {
    fn apply(
        &self,
        h: &mut Harness,
        conn: ConnId,
        session: SessionId,
        digests: Digests,
    ) -> Result<(), TestCaseError> {
        let info = h.info(session)?;
        let off = |base: u64, by: i8| base.saturating_add_signed(i64::from(by));
        let seq = off(info.received + 1, self.seq_off);
        let ack = off(h.responses_seen(), self.ack_off);
        let len = usize::from(self.len).min(h.max_frame as usize - 16);
        let payload = Bytes::from(vec![self.len; len]);
        let frame = match self.kind {
            0 => Frame::Command { seq, ack, payload },
            1 => Frame::Message { seq, ack, payload },
            2 => Frame::InitiatorAck { ack },
            3 => Frame::Ping { token: 77, ack },
            4 => Frame::Fin {
                last_seq: off(info.received, self.seq_off),
                ack,
            },
            _ => {
                if let Some(pos) = h.running.iter().position(|(s, _)| *s == session) {
                    let (_, seq) = h.running.remove(pos);
                    h.tick();
                    h.target
                        .complete(session, seq, payload, h.now)
                        .map_err(|e| fail(format!("complete: {e}")))?;
                    h.drain()?;
                }
                return Ok(());
            }
        };
        h.send(conn, &frame, digests)
    }
}

/// Checks how a connection ended after hostile input: either still open,
/// or closed with a `Close`, and for a violation after an ERROR frame with
/// the violation's code.
fn check_conn_outcome(h: &Harness, conn: ConnId) -> Result<Option<Close>, TestCaseError> {
    let Some(close) = h.close_of(conn).cloned() else {
        prop_assert!(
            h.target.buffered(conn).is_some(),
            "connection gone without a Close"
        );
        return Ok(None);
    };
    prop_assert!(
        h.target.buffered(conn).is_none(),
        "closed connection still held"
    );
    prop_assert_eq!(
        h.closes.iter().filter(|c| c.conn == conn).count(),
        1,
        "closed twice"
    );
    if let CloseReason::Protocol(e) = &close.reason {
        match h.frames(conn).last() {
            Some(Frame::Error { code, .. }) => prop_assert_eq!(*code, e.code()),
            other => {
                return Err(fail(format!(
                    "closed for {e} but the last frame sent was {other:?}"
                )))
            }
        }
    }
    Ok(Some(close))
}

fn feed_chunks(
    h: &mut Harness,
    conn: ConnId,
    bytes: &[u8],
    cuts: &[Index],
) -> Result<(), TestCaseError> {
    for piece in split_at_points(bytes, cuts) {
        h.input(conn, piece)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Garbage on a fresh connection: no panic, bounded buffer, clean output,
    /// and the connection is either open or closed with a `Close`.
    #[test]
    fn target_survives_garbage_before_login(
        seed in any::<u64>(),
        max_frame in prop_oneof![Just(4096u32), 16u32..=2048],
        input in hostile_input(),
        cuts in proptest::collection::vec(any::<Index>(), 0..32),
    ) {
        let mut h = Harness::new(seed, max_frame, 16);
        let conn = ConnId(1);
        h.accept(conn)?;
        let bytes = input.bytes(Direction::ToTarget, Digests::NONE);
        feed_chunks(&mut h, conn, &bytes, &cuts)?;
        check_conn_outcome(&h, conn)?;
        for id in h.target.session_ids() {
            check_invariants(&h.info(id)?)?;
        }
    }

    /// Garbage on an established connection with traffic: no panic, bounded
    /// buffer, clean output, the session undamaged and recoverable.
    #[test]
    fn target_session_survives_garbage(
        seed in any::<u64>(),
        max_frame in prop_oneof![Just(4096u32), 64u32..=2048],
        credits in 1u32..=16,
        digests in arb_digests(),
        ops in proptest::collection::vec(arb_op(), 0..24),
        near in proptest::collection::vec(arb_near_frame(), 0..16),
        input in hostile_input(),
        raw_digests in any::<bool>(),
        cuts in proptest::collection::vec(any::<Index>(), 0..32),
    ) {
        let mut h = Harness::new(seed, max_frame, credits);
        let conn = ConnId(1);
        let (session, secret) = h.establish(conn, digests, 64)?;
        run_ops(&mut h, conn, session, digests, &ops)?;
        let before = h.info(session)?;
        // Frames close to valid ones (sequence numbers and acks off by a
        // little) probe the session logic frame by frame.
        for nf in &near {
            if h.close_of(conn).is_some() {
                break;
            }
            let Some(info) = h.target.session_info(session) else {
                break;
            };
            nf.apply(&mut h, conn, session, digests)?;
            if let Some(after) = h.target.session_info(session) {
                check_progress(&info, &after)?;
            }
        }
        // Junk framed with the negotiated digests reaches the session logic.
        let bytes = input.bytes(Direction::ToTarget, if raw_digests { Digests::NONE } else { digests });
        feed_chunks(&mut h, conn, &bytes, &cuts)?;
        let close = check_conn_outcome(&h, conn)?;
        let finished = matches!(close.as_ref().map(|c| &c.reason), Some(CloseReason::Finished));
        if finished {
            // The junk held a valid FIN: the session ended cleanly.
            prop_assert!(h.target.session_info(session).is_none());
            h.accept(ConnId(2))?;
            let frame = login(LoginKind::Recover, session, secret, digests, 0, credits);
            h.send(ConnId(2), &frame, Digests::NONE)?;
            match h.frames(ConnId(2)).first() {
                Some(Frame::LoginReject(r)) => prop_assert_eq!(r.reason, RejectReason::SessionClosed),
                other => return Err(fail(format!("expected LOGIN_REJECT, got {other:?}"))),
            }
            return Ok(());
        }
        let after = h.info(session)?;
        check_progress(&before, &after)?;
        prop_assert_eq!(after.attached, close.is_none());
        h.recover(ConnId(2), session, secret, digests)?;
        if close.is_none() {
            prop_assert_eq!(h.close_of(conn).map(|c| &c.reason), Some(&CloseReason::Fenced));
        }
        // The recovered session keeps working.
        run_ops(&mut h, ConnId(2), session, digests, &ops)?;
    }

    /// Rule-breaking frames: the target closes the connection with the
    /// right code, the session is untouched and recovers.
    #[test]
    fn target_rejects_rule_breaking_frames(
        seed in any::<u64>(),
        credits in 1u32..=12,
        digests in arb_digests(),
        ops in proptest::collection::vec(arb_op(), 0..16),
        violation in arb_violation(),
    ) {
        let max_frame = 4096;
        let mut h = Harness::new(seed, max_frame, credits);
        let conn = ConnId(1);
        let (session, secret) = h.establish(conn, digests, 64)?;
        run_ops(&mut h, conn, session, digests, &ops)?;
        let before = h.info(session)?;
        let ack = h.responses_seen();
        let expected = match violation.build(&mut h, conn, session, digests, ack)? {
            Some(bytes_and_code) => bytes_and_code,
            None => return Ok(()), // not applicable in this state
        };
        let (bytes, code) = expected;
        let at_violation = h.info(session)?;
        h.input(conn, &bytes)?;
        let close = check_conn_outcome(&h, conn)?;
        match close.map(|c| c.reason) {
            Some(CloseReason::Protocol(e)) => prop_assert_eq!(e.code(), code, "{}", e),
            other => return Err(fail(format!("{violation:?}: expected a close for {code}, got {other:?}"))),
        }
        let after = h.info(session)?;
        prop_assert!(!after.attached);
        prop_assert!(
            same_state(&at_violation, &after),
            "the violating frame changed the session: {:?} -> {:?}", at_violation, after
        );
        check_progress(&before, &after)?;
        prop_assert_eq!(h.target.stats().protocol_errors, 1);
        h.recover(ConnId(2), session, secret, digests)?;
        run_ops(&mut h, ConnId(2), session, digests, &ops)?;
    }

    /// Recovery attempts that must fail change nothing and fence nothing: a
    /// wrong secret or an unknown session is refused with the right reason,
    /// a response ack out of range closes the new connection; the live
    /// connection stays attached until a proper recovery replaces it.
    #[test]
    fn target_refuses_bad_recoveries(
        seed in any::<u64>(),
        digests in arb_digests(),
        ops in proptest::collection::vec(arb_op(), 0..16),
        bit in 0usize..128,
        other_counter in 2u32..1000,
        other_incarnation in any::<u32>(),
        ack_excess in 1u64..1000,
    ) {
        let mut h = Harness::new(seed, 4096, 8);
        let conn = ConnId(1);
        let (session, secret) = h.establish(conn, digests, 64)?;
        run_ops(&mut h, conn, session, digests, &ops)?;
        let before = h.info(session)?;
        let mut wrong = secret;
        wrong.0[bit / 8] ^= 1 << (bit % 8);
        let same_incarnation = SessionId::new(h.target.incarnation(), other_counter);
        let other_incarnation = if other_incarnation == h.target.incarnation() {
            other_incarnation.wrapping_add(1)
        } else {
            other_incarnation
        };
        let attempts = [
            (session, wrong, before.responses_acked, Some(RejectReason::BadSecret)),
            (same_incarnation, secret, 0, Some(RejectReason::UnknownSession)),
            (
                SessionId::new(other_incarnation, 1),
                secret,
                0,
                Some(RejectReason::TargetRestarted),
            ),
            // Acknowledges responses never sent.
            (session, secret, h.responses_seen() + ack_excess, None),
        ];
        for (i, (id, key, response_ack, reason)) in attempts.into_iter().enumerate() {
            let c = ConnId(10 + i as u64);
            h.accept(c)?;
            let frame = login(LoginKind::Recover, id, key, digests, response_ack, 8);
            h.send(c, &frame, Digests::NONE)?;
            match reason {
                Some(reason) => {
                    match h.frames(c) {
                        [Frame::LoginReject(r)] => prop_assert_eq!(r.reason, reason),
                        other => return Err(fail(format!("expected LOGIN_REJECT, got {other:?}"))),
                    }
                    // A refused login may try again on the same connection.
                    prop_assert!(h.close_of(c).is_none());
                }
                None => match check_conn_outcome(&h, c)?.map(|c| c.reason) {
                    Some(CloseReason::Protocol(e)) => {
                        prop_assert_eq!(e.code(), ErrorCode::AckOutOfRange)
                    }
                    other => return Err(fail(format!("expected a close, got {other:?}"))),
                },
            }
            prop_assert!(h.close_of(conn).is_none(), "a failed recovery fenced the live connection");
            let now = h.info(session)?;
            prop_assert!(now.attached);
            prop_assert_eq!(&now, &before);
        }
        prop_assert_eq!(h.target.session_count(), 1);
        h.recover(ConnId(2), session, secret, digests)?;
        prop_assert_eq!(h.close_of(conn).map(|c| &c.reason), Some(&CloseReason::Fenced));
        run_ops(&mut h, ConnId(2), session, digests, &ops)?;
    }

    /// Violations before login.
    #[test]
    fn target_rejects_non_login_first_frames(
        seed in any::<u64>(),
        first in prop_oneof![
            Just(Frame::Ping { token: 1, ack: 0 }),
            Just(Frame::InitiatorAck { ack: 0 }),
            Just(Frame::Command { seq: 1, ack: 0, payload: Bytes::from_static(b"hi") }),
            Just(Frame::Fin { last_seq: 0, ack: 0 }),
        ],
        bad_magic in any::<[u8; 4]>(),
        use_magic in any::<bool>(),
    ) {
        let mut h = Harness::new(seed, 4096, 8);
        let conn = ConnId(1);
        h.accept(conn)?;
        let (bytes, code) = if use_magic && &bad_magic != b"HFST" {
            let mut b = encode_to_vec(
                &login(LoginKind::New, SessionId(0), SessionSecret([0; 16]), Digests::NONE, 0, 8),
                Digests::NONE,
            );
            b[8..12].copy_from_slice(&bad_magic);
            (b, ErrorCode::BadMagic)
        } else {
            (encode_to_vec(&first, Digests::NONE), ErrorCode::UnexpectedFrame)
        };
        h.input(conn, &bytes)?;
        match check_conn_outcome(&h, conn)?.map(|c| c.reason) {
            Some(CloseReason::Protocol(e)) => prop_assert_eq!(e.code(), code),
            other => return Err(fail(format!("expected a close for {code}, got {other:?}"))),
        }
        prop_assert_eq!(h.target.session_count(), 0);
    }

    /// Garbage into an initiator, during or after login: no panic, bounded
    /// buffer, and either still connected or `ConnectionLost` reported.
    #[test]
    fn initiator_survives_garbage(
        max_frame in prop_oneof![Just(4096u32), 64u32..=2048],
        requested in arb_digests(),
        offered in arb_digests(),
        logged_in in any::<bool>(),
        credit_limit in 0u64..=8,
        calls in 0usize..6,
        input in hostile_input(),
        raw_digests in any::<bool>(),
        cuts in proptest::collection::vec(any::<Index>(), 0..32),
    ) {
        let mut config = InitiatorConfig::default();
        config.max_frame = max_frame;
        config.digests = requested;
        config.credits = 8;
        let mut now = Timestamp::ZERO;
        let mut ini = Initiator::new(config, now);
        let conn = ConnId(1);
        ini.connect(conn, now).map_err(|e| fail(format!("connect: {e}")))?;
        let mut sent = Decoder::new(Direction::ToTarget, u32::MAX);
        let mut frames = Vec::new();
        let mut events = Vec::new();
        let negotiated = requested.intersect(offered);
        let session = SessionId(0x1234_5678_0000_0001);
        let secret = SessionSecret([9; 16]);
        pump_initiator(&mut ini, &mut sent, &mut frames, &mut events, now)?;
        prop_assert!(matches!(frames.first(), Some(Frame::Login(_))));
        if logged_in {
            let accept = Frame::LoginAccept(LoginAccept {
                version: 1,
                digests: negotiated,
                kind: LoginKind::New,
                session,
                secret,
                command_ack: 0,
                credit_limit,
                max_frame: 1 << 16,
                inactivity_ms: 4 * KEEPALIVE_MS,
                retain_ms: 60_000,
                credits: 8,
                quiesce_ms: 0,
            });
            ini.handle_input(conn, &encode_to_vec(&accept, Digests::NONE), now);
            sent.set_digests(negotiated);
            prop_assert!(ini.is_connected());
            for i in 0..calls {
                let _ = ini.call(Bytes::from(vec![i as u8; 8]), CallOptions::default(), now);
            }
            pump_initiator(&mut ini, &mut sent, &mut frames, &mut events, now)?;
            let connected = matches!(events.first(), Some(InitiatorEvent::Connected { .. }));
            prop_assert!(connected, "no Connected event: {:?}", events);
        }
        let junk_digests = if raw_digests || !logged_in { Digests::NONE } else { negotiated };
        let bytes = input.bytes(Direction::ToInitiator, junk_digests);
        let bound = frame_bound(Direction::ToInitiator, max_frame);
        for piece in split_at_points(&bytes, &cuts) {
            now = Timestamp::from_nanos(now.as_nanos() + 100_000);
            ini.handle_input(conn, piece, now);
            let (buffered, capacity) = ini.buffered();
            prop_assert!(buffered <= bound, "buffered {} > {}", buffered, bound);
            prop_assert!(capacity < capacity_bound(bound), "capacity {}", capacity);
            // Only check the transcript while we know its digests.
            if logged_in {
                pump_initiator(&mut ini, &mut sent, &mut frames, &mut events, now)?;
            } else {
                while ini.poll_transmit(now).is_some() {}
                events.extend(std::iter::from_fn(|| ini.poll_event()));
            }
        }
        if ini.connection() == Some(conn) {
            return Ok(());
        }
        let lost = events.iter().find_map(|e| match e {
            InitiatorEvent::ConnectionLost { error, .. } => Some(error.clone()),
            _ => None,
        });
        let ended = events.iter().any(|e| matches!(e, InitiatorEvent::SessionEnded(_)));
        if logged_in {
            let Some(error) = lost else {
                return Err(fail(format!("connection gone without ConnectionLost: {events:?}")));
            };
            // An unreadable ERROR is never answered (PROTOCOL.md §8).
            let unanswered = |e: &holdfast_proto::ProtocolError| {
                e.reason().starts_with(holdfast_proto::initiator::UNREADABLE_ERROR)
            };
            if let ConnectionError::Protocol(e) = error.clone() {
                match frames.last() {
                    _ if unanswered(&e) => {}
                    Some(Frame::Error { code, .. }) => prop_assert_eq!(*code, e.code()),
                    other => return Err(fail(format!("lost for {e}, last frame sent {other:?}"))),
                }
            }
            if !ended {
                // The session survives: the next connection recovers it.
                let at = ini.reconnect_at().max(now);
                if at != Timestamp::NEVER {
                    ini.connect(ConnId(2), at).map_err(|e| fail(format!("reconnect: {e}")))?;
                    let mut again = Decoder::new(Direction::ToTarget, u32::MAX);
                    let mut login_frames = Vec::new();
                    pump_initiator(&mut ini, &mut again, &mut login_frames, &mut events, at)?;
                    match login_frames.first() {
                        Some(Frame::Login(l)) => {
                            prop_assert_eq!(l.kind, LoginKind::Recover);
                            prop_assert_eq!(l.session, session);
                            prop_assert_eq!(l.secret, secret);
                        }
                        other => return Err(fail(format!("expected LOGIN, got {other:?}"))),
                    }
                }
            }
        } else {
            prop_assert!(lost.is_some() || ended, "connection gone silently: {:?}", events);
        }
    }

    /// A target that breaks the rules: the initiator drops the connection
    /// with the right code, tells the target, and keeps the session.
    #[test]
    fn initiator_rejects_rule_breaking_frames(
        digests in arb_digests(),
        calls in 1usize..5,
        case in 0u8..6,
        by in 1u64..1000,
    ) {
        let mut config = InitiatorConfig::default();
        config.digests = digests;
        config.credits = 8;
        let now = Timestamp::ZERO;
        let mut ini = Initiator::new(config, now);
        let conn = ConnId(1);
        ini.connect(conn, now).map_err(|e| fail(format!("connect: {e}")))?;
        let mut sent = Decoder::new(Direction::ToTarget, u32::MAX);
        let (mut frames, mut events) = (Vec::new(), Vec::new());
        pump_initiator(&mut ini, &mut sent, &mut frames, &mut events, now)?;
        let session = SessionId(0x0000_0001_0000_0001);
        let accept = Frame::LoginAccept(LoginAccept {
            version: 1,
            digests,
            kind: LoginKind::New,
            session,
            secret: SessionSecret([3; 16]),
            command_ack: 0,
            credit_limit: 8,
            max_frame: 1 << 16,
            inactivity_ms: 40_000,
            retain_ms: 60_000,
            credits: 8,
            quiesce_ms: 0,
        });
        ini.handle_input(conn, &encode_to_vec(&accept, Digests::NONE), now);
        sent.set_digests(digests);
        for i in 0..calls {
            ini.call(Bytes::from(vec![i as u8; 4]), CallOptions::default(), now)
                .map_err(|e| fail(format!("call: {e}")))?;
        }
        pump_initiator(&mut ini, &mut sent, &mut frames, &mut events, now)?;
        let n = calls as u64;
        let (frame, code) = match case {
            // An ack for commands never sent.
            0 => (Frame::TargetAck { ack: n + by, limit: 8 }, ErrorCode::AckOutOfRange),
            // A response out of order.
            1 => (
                Frame::Response { seq: 1 + by, command: 1, ack: n, limit: 8, payload: Bytes::new() },
                ErrorCode::SequenceGap,
            ),
            // A response to a command not acknowledged (so never received).
            2 => (
                Frame::Response { seq: 1, command: n + by, ack: n, limit: 8, payload: Bytes::new() },
                ErrorCode::UnknownCommand,
            ),
            // A PONG for no PING.
            3 => (Frame::Pong { token: 1_000_000 + by, ack: 0, limit: 8 }, ErrorCode::UnexpectedPong),
            // A second LOGIN_ACCEPT.
            4 => (accept.clone(), ErrorCode::UnexpectedFrame),
            // A FIN_ACK for no FIN.
            _ => (Frame::FinAck { ack: n }, ErrorCode::UnexpectedFrame),
        };
        ini.handle_input(conn, &encode_to_vec(&frame, digests), now);
        pump_initiator(&mut ini, &mut sent, &mut frames, &mut events, now)?;
        prop_assert_eq!(ini.connection(), None);
        let lost = events.iter().find_map(|e| match e {
            InitiatorEvent::ConnectionLost { error: ConnectionError::Protocol(e), .. } => Some(e.code()),
            _ => None,
        });
        prop_assert_eq!(lost, Some(code));
        match frames.last() {
            Some(Frame::Error { code: c, .. }) => prop_assert_eq!(*c, code),
            other => return Err(fail(format!("expected ERROR, got {other:?}"))),
        }
        prop_assert_eq!(ini.session(), Some(session));
        prop_assert_eq!(ini.outstanding(), calls);
        prop_assert!(!ini.is_finished());
    }
}

/// Writes out everything the initiator wants to send (decoding it) and
/// collects its events.
fn pump_initiator(
    ini: &mut Initiator,
    dec: &mut Decoder,
    frames: &mut Vec<Frame>,
    events: &mut Vec<InitiatorEvent>,
    now: Timestamp,
) -> Result<(), TestCaseError> {
    while let Some(chunks) = ini.poll_transmit(now) {
        for chunk in chunks {
            let mut input = &chunk[..];
            loop {
                match dec.decode(&mut input) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        return Err(fail(format!("the initiator sent undecodable bytes: {e}")))
                    }
                }
            }
        }
    }
    events.extend(std::iter::from_fn(|| ini.poll_event()));
    Ok(())
}

/// A valid frame that breaks a rule of the established session.
#[derive(Debug, Clone)]
enum Violation {
    /// A sequence number past the next expected one.
    SeqGap { command: bool, extra: u64 },
    /// Sequence number 0.
    SeqZero { command: bool },
    /// An acknowledgement of a response never sent.
    AckTooHigh { kind: u8, by: u64 },
    /// An acknowledgement below one already given.
    AckBackwards { by: u64 },
    /// One more command than the credit limit allows.
    CreditOverrun { batch: bool },
    /// FIN that does not match what was received, or with work outstanding.
    FinOutstanding { off: u64 },
    /// A second LOGIN.
    LoginAgain,
    /// A frame only the target sends.
    WrongDirection,
    /// A type byte no version defines.
    UnknownType { kind: u8 },
    /// A header announcing more than the limit.
    Oversized { excess: u32 },
    /// A flipped bit under the header or data digest.
    BadDigest { in_payload: bool, bit: Index },
}

fn arb_violation() -> impl Strategy<Value = Violation> {
    prop_oneof![
        (
            any::<bool>(),
            prop_oneof![Just(0u64), 1u64..1000, Just(u64::MAX / 2)]
        )
            .prop_map(|(command, extra)| Violation::SeqGap { command, extra }),
        any::<bool>().prop_map(|command| Violation::SeqZero { command }),
        (0u8..4, prop_oneof![Just(0u64), 1u64..1000])
            .prop_map(|(kind, by)| Violation::AckTooHigh { kind, by }),
        (0u64..4).prop_map(|by| Violation::AckBackwards { by }),
        any::<bool>().prop_map(|batch| Violation::CreditOverrun { batch }),
        (0u64..3).prop_map(|off| Violation::FinOutstanding { off }),
        Just(Violation::LoginAgain),
        Just(Violation::WrongDirection),
        prop_oneof![0x09u8..=0x10, 0x19u8..=0xff, Just(0u8)]
            .prop_map(|kind| Violation::UnknownType { kind }),
        (1u32..=u32::MAX - 4096).prop_map(|excess| Violation::Oversized { excess }),
        (any::<bool>(), any::<Index>())
            .prop_map(|(in_payload, bit)| Violation::BadDigest { in_payload, bit }),
    ]
}

impl Violation {
    /// Brings the session to the state the violation needs (with valid
    /// frames), then returns the violating bytes and the expected code;
    /// `None` when the violation is impossible in this state.
    fn build(
        &self,
        h: &mut Harness,
        conn: ConnId,
        session: SessionId,
        digests: Digests,
        ack: u64,
    ) -> Result<Option<(Vec<u8>, ErrorCode)>, TestCaseError> {
        let info = h.info(session)?;
        let next = info.received + 1;
        // An ack the target already applied: the violating frame must change nothing.
        let acked = info.responses_acked;
        let payload = Bytes::from_static(b"payload");
        let data = |command: bool, seq: u64, ack: u64| {
            if command {
                Frame::Command {
                    seq,
                    ack,
                    payload: payload.clone(),
                }
            } else {
                Frame::Message {
                    seq,
                    ack,
                    payload: payload.clone(),
                }
            }
        };
        let enc = |f: &Frame| encode_to_vec(f, digests);
        Ok(Some(match *self {
            Violation::SeqGap { command, extra } => (
                enc(&data(command, next + 1 + extra, acked)),
                ErrorCode::SequenceGap,
            ),
            Violation::SeqZero { command } => (enc(&data(command, 0, acked)), ErrorCode::Malformed),
            Violation::AckTooHigh { kind, by } => {
                // Responses sent so far are 1..=ack; ack + 1 + by was never sent.
                let bad = ack + 1 + by;
                let frame = match kind {
                    0 => Frame::InitiatorAck { ack: bad },
                    1 => Frame::Ping { token: 5, ack: bad },
                    2 => Frame::Fin {
                        last_seq: info.received,
                        ack: bad,
                    },
                    _ => data(true, next, bad),
                };
                (enc(&frame), ErrorCode::AckOutOfRange)
            }
            Violation::AckBackwards { by } => {
                if info.responses_acked == 0 {
                    // Get one response acknowledged first.
                    if info.received == info.limit {
                        return Ok(None);
                    }
                    h.send(conn, &data(true, next, acked), digests)?;
                    h.running.retain(|r| *r != (session, next));
                    h.tick();
                    h.target
                        .complete(session, next, Bytes::from_static(b"answer"), h.now)
                        .map_err(|e| fail(format!("complete: {e}")))?;
                    h.drain()?;
                    let ack = h.responses_seen();
                    h.send(conn, &Frame::InitiatorAck { ack }, digests)?;
                    prop_assert!(h.close_of(conn).is_none());
                }
                let responses_acked = h.info(session)?.responses_acked;
                prop_assert!(responses_acked > 0);
                let bad = responses_acked.saturating_sub(1 + by);
                (
                    enc(&Frame::InitiatorAck { ack: bad }),
                    ErrorCode::AckOutOfRange,
                )
            }
            Violation::CreditOverrun { batch } => {
                // Use up the credit with commands the service never completes.
                let room = info.limit - info.received;
                let mut bytes = Vec::new();
                for seq in next..next + room {
                    let f = data(true, seq, acked);
                    if batch {
                        bytes.extend(enc(&f));
                    } else {
                        h.send(conn, &f, digests)?;
                    }
                }
                if batch {
                    h.input(conn, &bytes)?;
                }
                let full = h.info(session)?;
                prop_assert_eq!(full.held, full.credits);
                prop_assert_eq!(full.limit, full.received);
                prop_assert!(h.close_of(conn).is_none());
                (
                    enc(&data(true, full.received + 1, acked)),
                    ErrorCode::CreditExceeded,
                )
            }
            Violation::FinOutstanding { off } => {
                let idle = info.running == 0 && info.cached == 0;
                let last_seq = match off {
                    0 if !idle => info.received,
                    1 if info.received > 0 => info.received - 1,
                    _ => info.received + off.max(1),
                };
                (
                    enc(&Frame::Fin {
                        last_seq,
                        ack: acked,
                    }),
                    ErrorCode::FinWithOutstanding,
                )
            }
            Violation::LoginAgain => (
                enc(&login(
                    LoginKind::New,
                    SessionId(0),
                    SessionSecret([0; 16]),
                    digests,
                    0,
                    8,
                )),
                ErrorCode::UnexpectedFrame,
            ),
            Violation::WrongDirection => (
                enc(&Frame::TargetAck { ack: 0, limit: 0 }),
                ErrorCode::UnexpectedFrame,
            ),
            Violation::UnknownType { kind } => {
                let mut b = enc(&Frame::InitiatorAck { ack: acked });
                b[0] = kind;
                (b, ErrorCode::UnknownFrameType)
            }
            Violation::Oversized { excess } => {
                let mut b = enc(&data(true, next, acked));
                b.truncate(8);
                let length = h.max_frame + excess;
                b[4..8].copy_from_slice(&length.to_be_bytes());
                (b, ErrorCode::FrameTooLarge)
            }
            Violation::BadDigest { in_payload, bit } => {
                let mut b = enc(&data(true, next, acked));
                let fixed_end = 8 + 16;
                let (range, code) = if in_payload && digests.data {
                    (
                        fixed_end + usize::from(digests.header) * 4
                            ..fixed_end + usize::from(digests.header) * 4 + payload.len(),
                        ErrorCode::DataDigest,
                    )
                } else if digests.header {
                    // The fixed fields (seq, ack) are covered by the header digest.
                    (8..fixed_end, ErrorCode::HeaderDigest)
                } else {
                    return Ok(None);
                };
                let bit = bit.index(range.len() * 8);
                b[range.start + bit / 8] ^= 1 << (bit % 8);
                (b, code)
            }
        }))
    }
}
