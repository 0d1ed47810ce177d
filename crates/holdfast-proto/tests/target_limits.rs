//! The target's limits on what a peer may make it hold or send, driven by
//! raw frames (issue 14 items 1, 4, 6, 9 and 12): the keep-alive a peer may
//! promise, the inactivity deadline it is granted (advertised exactly as
//! enforced), coalesced PONGs and LOGIN_REJECTs, ERRORs never answered,
//! per-source and in-progress login limits, the short retain time of an
//! unused session, the memory budget, and the edge cases of LOGIN fields.

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::target::CloseReason;
use holdfast_proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, ErrorCode, Frame, Login, LoginAccept, LoginKind,
    LoginReject, NEVER_MS,
};
use holdfast_proto::{
    ConnId, SeededRandom, SessionId, SessionSecret, Target, TargetConfig, Timestamp,
};

/// A target fed raw bytes, with everything it sends decoded per connection.
struct Raw {
    target: Target,
    now: Timestamp,
    /// (connection, frame) in the order sent.
    sent: Vec<(ConnId, Frame)>,
    /// Connections the target closed, with why.
    closed: Vec<(ConnId, CloseReason)>,
    decoders: Vec<(ConnId, Decoder)>,
}

impl Raw {
    fn new(config: TargetConfig) -> Raw {
        Raw {
            target: Target::new(config, Box::new(SeededRandom::new(7)), Timestamp::ZERO),
            now: Timestamp::ZERO,
            sent: Vec::new(),
            closed: Vec::new(),
            decoders: Vec::new(),
        }
    }

    fn at(&mut self, ms: u64) {
        self.now = Timestamp::from_millis(ms);
        self.target.handle_timeout(self.now);
        self.flush();
    }

    fn input(&mut self, conn: ConnId, bytes: &[u8]) {
        self.target.handle_input(conn, bytes, self.now);
        self.flush();
    }

    fn send(&mut self, conn: ConnId, frame: &Frame, digests: Digests) {
        self.input(conn, &encode_to_vec(frame, digests));
    }

    /// Drains every Ready, completing each command with `"ok"`.
    fn flush(&mut self) {
        while self.target.has_ready() {
            let ready = self.target.ready();
            for t in &ready.transmits {
                let i = match self.decoders.iter().position(|(c, _)| *c == t.conn) {
                    Some(i) => i,
                    None => {
                        let d = Decoder::new(Direction::ToInitiator, u32::MAX);
                        self.decoders.push((t.conn, d));
                        self.decoders.len() - 1
                    }
                };
                for chunk in &t.chunks {
                    let mut input = &chunk[..];
                    loop {
                        let decoder = &mut self.decoders[i].1;
                        match decoder.decode(&mut input) {
                            Ok(Some(f)) => {
                                if let Frame::LoginAccept(a) = &f {
                                    decoder.set_digests(a.digests);
                                }
                                self.sent.push((t.conn, f));
                            }
                            Ok(None) => break,
                            Err(e) => panic!("the target sent garbage: {e}"),
                        }
                    }
                }
            }
            for c in &ready.closes {
                self.closed.push((c.conn, c.reason.clone()));
            }
            let commands: Vec<_> = ready
                .deliveries
                .iter()
                .filter_map(|d| match d {
                    holdfast_proto::Delivery::Command { session, seq, .. } => {
                        Some((*session, *seq))
                    }
                    _ => None,
                })
                .collect();
            self.target.advance(self.now);
            for (session, seq) in commands {
                self.target
                    .complete(session, seq, Bytes::from_static(b"ok"), self.now)
                    .expect("complete");
            }
        }
    }

    fn frames(&self, conn: ConnId) -> Vec<Frame> {
        self.sent
            .iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, f)| f.clone())
            .collect()
    }

    fn is_closed(&self, conn: ConnId) -> bool {
        self.closed.iter().any(|(c, _)| *c == conn)
    }

    /// Accepts `conn` and sends `login` on it; returns the target's answer.
    fn login(&mut self, conn: ConnId, login: Login) -> Frame {
        self.target.accept(conn, self.now).expect("accept");
        let before = self.frames(conn).len();
        self.send(conn, &Frame::Login(login), Digests::NONE);
        self.frames(conn)
            .get(before)
            .cloned()
            .expect("an answer to the LOGIN")
    }

    fn accept_of(&mut self, conn: ConnId, login: Login) -> LoginAccept {
        match self.login(conn, login) {
            Frame::LoginAccept(a) => a,
            other => panic!("expected LOGIN_ACCEPT, got {other:?}"),
        }
    }

    fn reject_of(&mut self, conn: ConnId, login: Login) -> LoginReject {
        match self.login(conn, login) {
            Frame::LoginReject(r) => r,
            other => panic!("expected LOGIN_REJECT, got {other:?}"),
        }
    }
}

fn new_login(keepalive_ms: u32) -> Login {
    Login {
        min_version: 1,
        max_version: 1,
        kind: LoginKind::New,
        digests: Digests::NONE,
        session: SessionId(0),
        secret: SessionSecret([0; 16]),
        response_ack: 0,
        max_frame: 1 << 16,
        keepalive_ms,
        requested_credits: 8,
        host: None,
    }
}

fn recover_login(session: SessionId, secret: SessionSecret) -> Login {
    Login {
        kind: LoginKind::Recover,
        session,
        secret,
        ..new_login(500)
    }
}

fn error_code(f: &Frame) -> Option<ErrorCode> {
    match f {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

// ----- items 1 and 9: keep-alive and the inactivity deadline -----

#[test]
fn keepalive_ms_outside_the_accepted_range_is_rejected_for_good() {
    // 0 and 0xFFFFFFFF are outside 1..=0xFFFFFFFE; 0xFFFFFFFE is inside
    // the field's range but above the target's 30 s cap: the deadline may
    // never be shorter than a keep-alive interval, so it cannot be granted.
    for (i, keepalive) in [0, u32::MAX, u32::MAX - 1, 30_001].into_iter().enumerate() {
        let mut raw = Raw::new(TargetConfig::default());
        let conn = ConnId(i as u64 + 1);
        let reject = raw.reject_of(conn, new_login(keepalive));
        assert_eq!(
            reject.reason.to_wire(),
            10,
            "keepalive {keepalive}: {reject:?}"
        );
        assert_eq!(reject.retry_after_ms, NEVER_MS, "keepalive {keepalive}");
        assert_eq!(
            raw.target.session_count(),
            0,
            "no session for a rejected login"
        );
        // The connection stays in the login phase (like every reject).
        assert!(!raw.is_closed(conn));
    }
}

#[test]
fn a_recovery_with_a_rejected_keepalive_leaves_the_session_untouched() {
    let mut raw = Raw::new(TargetConfig::default());
    let a = raw.accept_of(ConnId(1), new_login(500));
    let mut login = recover_login(a.session, a.secret);
    login.keepalive_ms = 0;
    let reject = raw.reject_of(ConnId(2), login);
    assert_eq!(reject.reason.to_wire(), 10, "{reject:?}");
    assert!(
        !raw.is_closed(ConnId(1)),
        "the attached connection is not fenced"
    );
    assert!(
        raw.target
            .session_info(a.session)
            .expect("session")
            .attached
    );
}

#[test]
fn the_longest_keepalive_accepted_is_the_cap_and_gets_exactly_the_cap() {
    let mut raw = Raw::new(TargetConfig::default());
    let a = raw.accept_of(ConnId(1), new_login(30_000));
    assert_eq!(a.inactivity_ms, 30_000, "4 x 30 s capped at 30 s");
    // And the deadline enforced is the one advertised, to the millisecond.
    raw.at(29_999);
    assert!(
        !raw.is_closed(ConnId(1)),
        "closed before the advertised deadline"
    );
    raw.at(30_000);
    assert!(
        raw.is_closed(ConnId(1)),
        "still open after the advertised deadline"
    );
    let last = raw.frames(ConnId(1)).last().cloned().expect("frames");
    assert_eq!(error_code(&last), Some(ErrorCode::Inactivity));
}

#[test]
fn a_long_keepalive_is_capped_by_max_inactivity() {
    let mut raw = Raw::new(TargetConfig::default());
    // 4 x 20 s = 80 s, capped at 30 s (still at least one keep-alive).
    let a = raw.accept_of(ConnId(1), new_login(20_000));
    assert_eq!(a.inactivity_ms, 30_000);
    raw.at(29_999);
    assert!(!raw.is_closed(ConnId(1)));
    raw.at(30_000);
    assert!(
        raw.is_closed(ConnId(1)),
        "the enforced deadline is the advertised one"
    );
}

#[test]
fn the_advertised_inactivity_is_the_deadline_enforced_to_the_millisecond() {
    // A floor with a fraction of a millisecond: advertised and enforced
    // must still be the same whole number of milliseconds.
    let mut raw = Raw::new({
        let mut tc = TargetConfig::default();
        tc.min_inactivity = Duration::from_micros(50_500);
        tc
    });
    let a = raw.accept_of(ConnId(1), new_login(1));
    let advertised = u64::from(a.inactivity_ms);
    raw.at(advertised - 1);
    assert!(!raw.is_closed(ConnId(1)), "closed before {advertised} ms");
    raw.at(advertised);
    assert!(
        raw.is_closed(ConnId(1)),
        "open after the advertised {advertised} ms"
    );
}

// ----- item 4: control replies are bounded -----

#[test]
fn a_ping_flood_is_answered_by_one_pong_with_the_latest_token() {
    let mut raw = Raw::new(TargetConfig::default());
    let conn = ConnId(1);
    raw.accept_of(conn, new_login(500));
    let mut flood = Vec::new();
    for token in 1..=10_000u64 {
        flood.extend(encode_to_vec(&Frame::Ping { token, ack: 0 }, Digests::NONE));
    }
    let before = raw.frames(conn).len();
    raw.input(conn, &flood);
    let pongs: Vec<u64> = raw.frames(conn)[before..]
        .iter()
        .filter_map(|f| match f {
            Frame::Pong { token, .. } => Some(*token),
            _ => None,
        })
        .collect();
    assert_eq!(pongs.len(), 1, "PONGs for one batch of 10,000 PINGs");
    assert_eq!(pongs, vec![10_000], "the PONG answers the latest PING");
    assert!(!raw.is_closed(conn));
}

#[test]
fn a_pong_comes_before_the_responses_of_the_same_batch_and_carries_the_ack() {
    let mut raw = Raw::new(TargetConfig::default());
    let conn = ConnId(1);
    raw.accept_of(conn, new_login(500));
    let mut bytes = encode_to_vec(
        &Frame::Command {
            seq: 1,
            ack: 0,
            payload: Bytes::from_static(b"x"),
        },
        Digests::NONE,
    );
    bytes.extend(encode_to_vec(
        &Frame::Ping { token: 5, ack: 0 },
        Digests::NONE,
    ));
    let before = raw.frames(conn).len();
    raw.input(conn, &bytes);
    let frames = raw.frames(conn)[before..].to_vec();
    assert!(
        matches!(
            frames.first(),
            Some(Frame::Pong {
                token: 5,
                ack: 1,
                ..
            })
        ),
        "{frames:?}"
    );
    assert!(frames
        .iter()
        .any(|f| matches!(f, Frame::Response { command: 1, .. })));
}

#[test]
fn logins_flooding_a_connection_get_one_reject_then_the_connection_closes() {
    let mut raw = Raw::new(TargetConfig::default());
    let conn = ConnId(1);
    raw.target.accept(conn, raw.now).expect("accept");
    let mut flood = Vec::new();
    let bad = Login {
        min_version: 9,
        max_version: 9,
        ..new_login(500)
    };
    for _ in 0..1000 {
        flood.extend(encode_to_vec(&Frame::Login(bad.clone()), Digests::NONE));
    }
    raw.input(conn, &flood);
    let frames = raw.frames(conn);
    let rejects = frames
        .iter()
        .filter(|f| matches!(f, Frame::LoginReject(_)))
        .count();
    assert_eq!(rejects, 1, "{} frames sent", frames.len());
    assert_eq!(
        frames.last().and_then(error_code),
        Some(ErrorCode::UnexpectedFrame)
    );
    assert!(raw.is_closed(conn));
}

#[test]
fn a_login_after_its_reject_was_sent_gets_its_own_answer() {
    // The honest pattern (§5.6): a reject, then another LOGIN once it arrived.
    let mut raw = Raw::new(TargetConfig::default());
    let conn = ConnId(1);
    let reject = raw.reject_of(conn, recover_login(SessionId(42), SessionSecret([1; 16])));
    assert!(reject.reason.is_stateless(), "{reject:?}");
    raw.send(conn, &Frame::Login(new_login(500)), Digests::NONE);
    assert!(matches!(
        raw.frames(conn).last(),
        Some(Frame::LoginAccept(_))
    ));
}

// ----- item 12: never reply to an ERROR -----

#[test]
fn an_error_without_digests_on_a_digest_connection_gets_no_reply() {
    let mut raw = Raw::new(TargetConfig::default());
    let conn = ConnId(1);
    let a = raw.accept_of(
        conn,
        Login {
            digests: Digests {
                header: true,
                data: true,
            },
            ..new_login(500)
        },
    );
    assert!(a.digests.header && a.digests.data);
    let before = raw.frames(conn).len();
    let error = Frame::Error {
        code: ErrorCode::Malformed,
        text: "your LOGIN_ACCEPT was bad".to_owned(),
    };
    raw.send(conn, &error, Digests::NONE);
    assert!(raw.is_closed(conn), "an ERROR closes the connection");
    let reply = raw.frames(conn)[before..].to_vec();
    assert!(reply.is_empty(), "the target answered an ERROR: {reply:?}");
    assert!(
        raw.target.session_info(a.session).is_some(),
        "the session survives"
    );
}

#[test]
fn an_error_with_a_bad_digest_gets_no_reply() {
    let mut raw = Raw::new(TargetConfig::default());
    let conn = ConnId(1);
    raw.accept_of(
        conn,
        Login {
            digests: Digests {
                header: true,
                data: false,
            },
            ..new_login(500)
        },
    );
    let before = raw.frames(conn).len();
    let mut bytes = encode_to_vec(
        &Frame::Error {
            code: ErrorCode::Inactivity,
            text: String::new(),
        },
        Digests {
            header: true,
            data: false,
        },
    );
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff; // breaks the header digest
    raw.input(conn, &bytes);
    assert!(raw.is_closed(conn));
    assert!(
        raw.frames(conn)[before..].is_empty(),
        "the target answered an ERROR"
    );
}

// ----- item 6: cheap exhaustion -----

#[test]
fn logins_in_progress_are_limited_at_accept() {
    let mut raw = Raw::new(TargetConfig::default());
    for c in 0..1024u64 {
        raw.target
            .accept(ConnId(c + 1), raw.now)
            .expect("within the limit");
    }
    assert!(
        raw.target.accept(ConnId(5000), raw.now).is_err(),
        "the 1025th connection still logging in was accepted"
    );
    // A connection that logs in frees its place.
    raw.send(ConnId(1), &Frame::Login(new_login(500)), Digests::NONE);
    raw.target
        .accept(ConnId(5001), raw.now)
        .expect("a place is free");
}

#[test]
fn an_unused_session_is_retained_only_briefly_a_used_one_for_retain() {
    let mut raw = Raw::new(TargetConfig::default());
    let unused = raw.accept_of(ConnId(1), new_login(500));
    let used = raw.accept_of(ConnId(2), new_login(500));
    raw.send(
        ConnId(2),
        &Frame::Command {
            seq: 1,
            ack: 0,
            payload: Bytes::from_static(b"x"),
        },
        Digests::NONE,
    );
    raw.target.connection_closed(ConnId(1), raw.now);
    raw.target.connection_closed(ConnId(2), raw.now);
    raw.at(1_999);
    assert_eq!(raw.target.session_count(), 2);
    raw.at(2_000);
    assert!(
        raw.target.session_info(unused.session).is_none(),
        "a session that never received anything is kept 60 s"
    );
    assert!(raw.target.session_info(used.session).is_some());
    // A late recovery of the unused one is told it expired.
    let reject = raw.reject_of(ConnId(3), recover_login(unused.session, unused.secret));
    assert_eq!(
        reject.reason,
        holdfast_proto::wire::RejectReason::SessionExpired
    );
    raw.at(60_000);
    assert!(raw.target.session_info(used.session).is_none());
}

// ----- item 12: LOGIN edge cases -----

#[test]
fn a_recovery_of_session_id_zero_is_an_unknown_session() {
    // 0 is never issued (§2): whatever the target's incarnation, it is
    // unknown, not "restarted".
    for seed in 0..8 {
        let mut raw = Raw::new(TargetConfig::default());
        raw.target = Target::new(
            TargetConfig::default(),
            Box::new(SeededRandom::new(seed)),
            Timestamp::ZERO,
        );
        let reject = raw.reject_of(
            ConnId(1),
            recover_login(SessionId(0), SessionSecret([0; 16])),
        );
        assert_eq!(
            reject.reason,
            holdfast_proto::wire::RejectReason::UnknownSession,
            "seed {seed}"
        );
    }
}

#[test]
fn requested_credits_zero_gets_a_window_of_one() {
    let mut raw = Raw::new(TargetConfig::default());
    let a = raw.accept_of(
        ConnId(1),
        Login {
            requested_credits: 0,
            ..new_login(500)
        },
    );
    assert_eq!(a.credits, 1);
    assert_eq!(a.credit_limit, 1);
}

#[test]
fn a_peer_closing_mid_frame_loses_only_the_partial_frame() {
    let mut raw = Raw::new(TargetConfig::default());
    let a = raw.accept_of(ConnId(1), new_login(500));
    let cmd = encode_to_vec(
        &Frame::Command {
            seq: 1,
            ack: 0,
            payload: Bytes::from_static(b"half of me"),
        },
        Digests::NONE,
    );
    raw.input(ConnId(1), &cmd[..cmd.len() / 2]);
    raw.target.connection_closed(ConnId(1), raw.now);
    raw.flush();
    let info = raw
        .target
        .session_info(a.session)
        .expect("the session is retained");
    assert_eq!(info.received, 0, "a partial frame is never delivered");
    assert!(!info.attached);
    assert_eq!(raw.target.buffered(ConnId(1)), None, "its buffer is freed");
    // The recovery tells the initiator to resend it.
    let b = raw.accept_of(ConnId(2), recover_login(a.session, a.secret));
    assert_eq!(b.command_ack, 0);
}

#[test]
fn sessions_per_source_are_limited_and_free_again_when_they_end() {
    use holdfast_proto::target::SourceKey;
    use holdfast_proto::wire::RejectReason;
    let mut raw = Raw::new({
        let mut tc = TargetConfig::default();
        tc.max_sessions_per_source = 2;
        tc
    });
    let here = SourceKey(1);
    let mut sessions = Vec::new();
    for c in 1..=3u64 {
        raw.target
            .accept_from(ConnId(c), Some(here), raw.now)
            .expect("accept");
        raw.send(ConnId(c), &Frame::Login(new_login(500)), Digests::NONE);
        match raw.frames(ConnId(c)).last() {
            Some(Frame::LoginAccept(a)) if c <= 2 => sessions.push(a.session),
            Some(Frame::LoginReject(r)) if c == 3 => {
                assert_eq!(r.reason, RejectReason::TooManySessions);
                assert_eq!(r.retry_after_ms, 1000);
            }
            other => panic!("login {c}: {other:?}"),
        }
    }
    // Another source is not affected, and neither is a driver that gives none.
    raw.target
        .accept_from(ConnId(10), Some(SourceKey(2)), raw.now)
        .expect("accept");
    raw.send(ConnId(10), &Frame::Login(new_login(500)), Digests::NONE);
    assert!(matches!(
        raw.frames(ConnId(10)).last(),
        Some(Frame::LoginAccept(_))
    ));
    raw.accept_of(ConnId(11), new_login(500));
    // A recovery is never limited: it creates nothing.
    let first = sessions[0];
    // Ending one of the source's sessions frees its place (the unused one
    // expires after retain_unused).
    raw.target.connection_closed(ConnId(1), raw.now);
    raw.at(2_000);
    assert!(raw.target.session_info(first).is_none());
    raw.target
        .accept_from(ConnId(4), Some(here), raw.now)
        .expect("accept");
    raw.send(ConnId(4), &Frame::Login(new_login(500)), Digests::NONE);
    assert!(matches!(
        raw.frames(ConnId(4)).last(),
        Some(Frame::LoginAccept(_))
    ));
}

#[test]
fn logins_in_progress_limit_is_configurable_and_frees_on_close() {
    let mut raw = Raw::new({
        let mut tc = TargetConfig::default();
        tc.max_logins_in_progress = 2;
        tc
    });
    raw.target.accept(ConnId(1), raw.now).expect("accept");
    raw.target.accept(ConnId(2), raw.now).expect("accept");
    let refused = raw.target.accept(ConnId(3), raw.now).expect_err("refused");
    assert!(refused.to_string().contains("logging in"), "{refused}");
    raw.target.connection_closed(ConnId(1), raw.now);
    raw.target
        .accept(ConnId(3), raw.now)
        .expect("a place was freed");
    // The login timeout frees places too.
    raw.at(5_000);
    assert_eq!(raw.target.connection_count(), 0);
    raw.target.accept(ConnId(4), raw.now).expect("accept");
    raw.target.accept(ConnId(5), raw.now).expect("accept");
}

#[test]
fn a_frame_that_would_exceed_the_memory_budget_closes_its_connection() {
    let mut raw = Raw::new({
        let mut tc = TargetConfig::default();
        tc.memory_budget = 256 * 1024;
        tc
    });
    raw.accept_of(ConnId(1), new_login(500));
    let other = raw.accept_of(ConnId(2), new_login(500));
    // Announce a 200 KiB command on connection 1: within the budget.
    let big = encode_to_vec(
        &Frame::Command {
            seq: 1,
            ack: 0,
            payload: Bytes::from(vec![7u8; 200 * 1024]),
        },
        Digests::NONE,
    );
    raw.input(ConnId(1), &big[..1024]);
    assert!(!raw.is_closed(ConnId(1)));
    // The same on connection 2 would need 400 KiB in all: refused.
    raw.input(ConnId(2), &big[..1024]);
    assert!(raw.is_closed(ConnId(2)), "the budget was not enforced");
    let last = raw.frames(ConnId(2)).last().cloned().expect("an ERROR");
    match last {
        Frame::Error { code, text } => {
            assert_eq!(code, ErrorCode::Overloaded);
            assert!(text.contains("memory budget"), "{text}");
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    // Its session survives; connection 1 completes its command.
    assert!(raw.target.session_info(other.session).is_some());
    raw.input(ConnId(1), &big[1024..]);
    assert!(!raw.is_closed(ConnId(1)));
    assert!(raw
        .frames(ConnId(1))
        .iter()
        .any(|f| matches!(f, Frame::Response { command: 1, .. })));
    // Once that buffer is freed, connection 2's session can send it again.
    raw.accept_of(ConnId(3), recover_login(other.session, other.secret));
}

#[test]
fn driver_queued_bytes_count_against_the_memory_budget() {
    let mut raw = Raw::new({
        let mut tc = TargetConfig::default();
        tc.memory_budget = 256 * 1024;
        tc
    });
    raw.accept_of(ConnId(1), new_login(500));
    raw.target.set_queued_bytes(200 * 1024);
    let big = encode_to_vec(
        &Frame::Command {
            seq: 1,
            ack: 0,
            payload: Bytes::from(vec![7u8; 100 * 1024]),
        },
        Digests::NONE,
    );
    raw.input(ConnId(1), &big[..64]);
    assert!(raw.is_closed(ConnId(1)));
}

#[test]
fn the_write_allowance_is_the_response_cache_plus_a_constant() {
    let mut raw = Raw::new(TargetConfig::default());
    raw.target.accept(ConnId(9), raw.now).expect("accept");
    let login_phase = raw.target.write_allowance(ConnId(9)).expect("known");
    let a = raw.accept_of(ConnId(1), new_login(500));
    let idle = raw.target.write_allowance(ConnId(1)).expect("known");
    assert_eq!(idle, login_phase, "nothing owed beyond control frames");
    raw.send(
        ConnId(1),
        &Frame::Command {
            seq: 1,
            ack: 0,
            payload: Bytes::from_static(b"x"),
        },
        Digests::NONE,
    );
    let owed = raw.target.write_allowance(ConnId(1)).expect("known");
    assert!(owed > idle, "a cached response is owed: {owed} vs {idle}");
    assert!(raw.target.session_info(a.session).expect("s").cached == 1);
    assert_eq!(raw.target.write_allowance(ConnId(77)), None);
}

#[test]
fn the_initiator_never_answers_an_error_either() {
    use holdfast_proto::{Initiator, InitiatorConfig};
    let both = Digests {
        header: true,
        data: true,
    };
    let now = Timestamp::ZERO;
    let mut init = Initiator::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.digests = both;
            ic
        },
        now,
    );
    init.connect(ConnId(1), now).expect("connect");
    while init.poll_transmit(now).is_some() {}
    let accept = Frame::LoginAccept(LoginAccept {
        version: 1,
        digests: both,
        kind: LoginKind::New,
        session: SessionId(0x1_0000_0001),
        secret: SessionSecret([9; 16]),
        command_ack: 0,
        credit_limit: 8,
        max_frame: 1 << 16,
        inactivity_ms: 2000,
        retain_ms: 60_000,
        credits: 8,
        quiesce_ms: 0,
    });
    init.handle_input(ConnId(1), &encode_to_vec(&accept, Digests::NONE), now);
    assert!(init.is_connected());
    while init.poll_transmit(now).is_some() {}
    // An ERROR without the negotiated digests: unreadable, but an ERROR.
    let error = Frame::Error {
        code: ErrorCode::Shutdown,
        text: "bye".to_owned(),
    };
    init.handle_input(ConnId(1), &encode_to_vec(&error, Digests::NONE), now);
    assert!(!init.is_connected(), "an ERROR ends the connection");
    let reply = init.poll_transmit(now);
    assert!(
        reply.is_none(),
        "the initiator answered an ERROR: {reply:?}"
    );
}
