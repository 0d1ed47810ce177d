//! Several connections per session (PROTOCOL.md §17): joins, one command
//! stream delivered over several connections, reordering at the target,
//! out-of-order responses at the initiator, moving a lost connection's work
//! to the survivors, credits across connections, withdrawing, and hostile
//! joins.

mod multi;

use std::time::Duration;

use holdfast_proto::target::CloseReason;
use holdfast_proto::wire::{ErrorCode, Frame, Login, LoginKind, RejectReason};
use holdfast_proto::{
    CallError, ConnId, InitiatorConfig, InitiatorEvent, SessionId, SessionSecret, Spread,
    SubmitError, TargetConfig,
};
use multi::Multi;

/// A LOGIN naming `session` with `secret`, of the given kind.
fn login(kind: LoginKind, session: SessionId, secret: SessionSecret) -> Frame {
    Frame::Login(Login {
        min_version: 1,
        max_version: 1,
        kind,
        digests: holdfast_proto::wire::Digests::NONE,
        session,
        secret,
        response_ack: 0,
        max_frame: holdfast_proto::config::DEFAULT_MAX_FRAME,
        keepalive_ms: 500,
        requested_credits: 128,
        host: None,
    })
}

/// A session with `n` connections, all logged in.
fn session_with(n: u32, credits: u32) -> (Multi, Vec<ConnId>) {
    let mut m = Multi::new(n, credits);
    let mut conns = vec![m.connect()];
    for _ in 1..n {
        conns.push(m.join());
    }
    assert_eq!(m.initiator.logged_in_connections(), n as usize);
    (m, conns)
}

#[test]
fn joins_add_connections_without_fencing_and_commands_spread_over_them() {
    let (mut m, conns) = session_with(3, 32);
    let session = m.initiator.session().expect("session");
    assert_eq!(m.target.session_connections(session), 3);
    assert_eq!(m.target.stats().joins_accepted, 2);
    assert_eq!(m.target.stats().fenced, 0);
    let joined = m
        .events
        .iter()
        .filter(|e| matches!(e, InitiatorEvent::Joined { .. }))
        .count();
    assert_eq!(joined, 2);
    for i in 0..9 {
        m.call(&format!("c{i}"));
    }
    m.flush();
    for conn in &conns {
        assert_eq!(
            m.pending_commands(*conn).len(),
            3,
            "least-outstanding spreads nine commands three to a connection"
        );
    }
    m.run();
    m.check();
    assert_eq!(m.deliveries.len(), 9);
}

#[test]
fn round_robin_takes_the_connections_in_turn() {
    let mut initiator = InitiatorConfig::default();
    initiator.ack_delay = Duration::ZERO;
    initiator.connections = 2;
    initiator.spread = Spread::RoundRobin;
    let mut target = TargetConfig::default();
    target.ack_delay = Duration::ZERO;
    let mut m = Multi::with(initiator, target);
    let a = m.connect();
    let b = m.join();
    for i in 0..6 {
        m.call(&format!("r{i}"));
    }
    m.flush();
    let (on_a, on_b) = (m.pending_commands(a), m.pending_commands(b));
    assert_eq!(on_a.len(), 3);
    assert_eq!(on_b.len(), 3);
    // In turn: neighbours never share a connection.
    for seq in &on_a {
        assert!(!on_a.contains(&(seq + 1)), "{on_a:?} {on_b:?}");
    }
    m.run();
    m.check();
}

#[test]
fn commands_that_overtake_each_other_across_connections_are_delivered_in_order() {
    let (mut m, conns) = session_with(2, 32);
    let (a, b) = (conns[0], conns[1]);
    for i in 0..6 {
        m.call(&format!("o{i}"));
    }
    m.flush();
    assert!(!m.pending_commands(a).is_empty() && !m.pending_commands(b).is_empty());
    let session = m.initiator.session().expect("session");
    // Connection b is faster: everything on it arrives first.
    let held_back = m.pending_commands(b).len();
    m.deliver_up(b);
    m.flush();
    assert!(
        m.deliveries.is_empty(),
        "nothing is delivered before sequence 1"
    );
    assert_eq!(m.target.reorder_occupancy(session).0, held_back);
    m.deliver_up(a);
    m.flush();
    assert_eq!(m.delivered_seqs(), (1..=6).collect::<Vec<_>>());
    assert_eq!(m.target.reorder_occupancy(session), (0, 0));
    m.run();
    m.check();
}

#[test]
fn a_late_copy_on_a_dying_connection_is_a_duplicate_and_never_runs_twice() {
    let (mut m, conns) = session_with(2, 32);
    let (a, b) = (conns[0], conns[1]);
    m.call("first");
    m.call("second");
    m.flush();
    assert_eq!(m.pending_commands(a), vec![1]);
    assert_eq!(m.pending_commands(b), vec![2]);
    // The initiator gives up on a (its detection bound passed), but a's
    // bytes are still in flight and the target still reads a.
    m.initiator_drops(a);
    m.flush();
    let moved = m.events.iter().find_map(|e| match e {
        InitiatorEvent::ConnectionDropped { conn, moved, .. } if *conn == a => Some(*moved),
        _ => None,
    });
    assert_eq!(moved, Some(1), "command 1 moves to b at once");
    assert_eq!(m.pending_commands(b), vec![2, 1]);
    // The late copy on a arrives before the resent one on b.
    m.deliver_up(a);
    m.flush();
    m.deliver_up(b);
    m.flush();
    assert_eq!(m.delivered_seqs(), vec![1, 2]);
    assert!(m.target.stats().duplicates_dropped >= 1);
    m.run();
    m.check();
}

#[test]
fn responses_on_a_lost_connection_go_out_again_on_a_survivor() {
    let (mut m, conns) = session_with(2, 32);
    let (a, b) = (conns[0], conns[1]);
    m.call("x");
    m.call("y");
    m.flush();
    m.deliver_up(a);
    m.deliver_up(b);
    m.flush();
    // RESP for command 1 waits on a, the one for command 2 on b.
    assert!(!m.links[&a].to_initiator.is_empty());
    m.cut(a);
    m.run();
    m.check();
    assert_eq!(m.responses().len(), 2);
    assert_eq!(m.initiator.logged_in_connections(), 1);
}

#[test]
fn a_response_that_arrives_on_both_connections_is_taken_once() {
    let (mut m, conns) = session_with(2, 32);
    let (a, b) = (conns[0], conns[1]);
    m.call("only");
    m.flush();
    m.deliver_up(a);
    m.flush();
    // The target wrote the response on a, then loses a (say, inactivity)
    // and writes it again on b; the initiator still reads both.
    assert!(!m.links[&a].to_initiator.is_empty());
    m.target.connection_closed(a, m.now);
    m.flush();
    m.deliver_down(a);
    m.deliver_down(b);
    m.run();
    m.check();
    assert_eq!(m.responses().len(), 1);
    assert_eq!(m.initiator.stats().duplicate_responses, 1);
}

#[test]
fn losing_one_of_three_connections_moves_its_commands_and_a_rejoin_restores_it() {
    let (mut m, conns) = session_with(3, 64);
    for i in 0..30 {
        m.call(&format!("w{i}"));
    }
    m.flush();
    // Half the traffic arrives, then connection 2 dies with its bytes.
    m.deliver_up(conns[0]);
    m.flush();
    m.cut(conns[1]);
    m.run();
    m.check();
    assert_eq!(m.deliveries.len(), 30);
    assert!(m.initiator.stats().moved >= 1);
    assert_eq!(m.initiator.logged_in_connections(), 2);
    // Re-established in the background, the session has three again.
    let c = m.join();
    let session = m.initiator.session().expect("session");
    assert_eq!(m.target.session_connections(session), 3);
    for i in 0..12 {
        m.call(&format!("v{i}"));
    }
    m.flush();
    assert!(!m.pending_commands(c).is_empty());
    m.run();
    m.check();
    assert_eq!(m.deliveries.len(), 42);
}

#[test]
fn credits_bound_the_whole_session_across_connections() {
    let (mut m, conns) = session_with(3, 4);
    m.auto_complete = false;
    for i in 0..4 {
        m.call(&format!("k{i}"));
    }
    let refused = m.initiator.call(
        bytes::Bytes::from_static(b"five"),
        Default::default(),
        m.now,
    );
    assert_eq!(refused, Err(SubmitError::NoCredit));
    m.run();
    let session = m.initiator.session().expect("session");
    let info = m.target.session_info(session).expect("info");
    assert_eq!((info.held, info.running), (4, 4));
    // A hand-made connection joins and tries to go past the limit.
    let raw = m.raw();
    let secret = m.secret.expect("secret");
    m.send_raw(raw, &login(LoginKind::Join, session, secret));
    assert!(matches!(m.raw_frames(raw)[..], [Frame::LoginAccept(_)]));
    m.send_raw(
        raw,
        &Frame::Command {
            seq: info.limit + 1,
            ack: 0,
            payload: bytes::Bytes::from_static(b"over"),
        },
    );
    let frames = m.raw_frames(raw);
    assert!(
        matches!(
            &frames[..],
            [Frame::Error {
                code: ErrorCode::CreditExceeded,
                ..
            }]
        ),
        "{frames:?}"
    );
    // The session and its other connections are unharmed.
    m.complete_all();
    m.run();
    m.check();
    assert_eq!(m.target.session_connections(session), conns.len());
}

#[test]
fn the_reorder_buffer_holds_only_the_credit_window_and_drops_duplicates() {
    let (mut m, _conns) = session_with(2, 8);
    let session = m.initiator.session().expect("session");
    let secret = m.secret.expect("secret");
    let raw = m.raw();
    m.send_raw(raw, &login(LoginKind::Join, session, secret));
    m.raw_frames(raw);
    let cmd = |seq| Frame::Command {
        seq,
        ack: 0,
        payload: bytes::Bytes::from_static(b"early"),
    };
    for seq in 2..=8 {
        m.send_raw(raw, &cmd(seq));
        m.send_raw(raw, &cmd(seq)); // a duplicate of a held one
    }
    assert_eq!(m.target.reorder_occupancy(session).0, 7);
    assert!(m.deliveries.is_empty());
    assert_eq!(m.target.stats().duplicates_dropped, 7);
    m.send_raw(raw, &cmd(9));
    let frames = m.raw_frames(raw);
    assert!(
        matches!(
            &frames[..],
            [Frame::Error {
                code: ErrorCode::CreditExceeded,
                ..
            }]
        ),
        "{frames:?}"
    );
}

#[test]
fn withdrawing_never_renumbers_what_a_dropped_connection_may_still_deliver() {
    let (mut m, conns) = session_with(2, 32);
    let (a, _b) = (conns[0], conns[1]);
    let first = m.call("first");
    m.flush();
    assert_eq!(m.pending_commands(a), vec![1]);
    // a is given up by the initiator, but its copy of command 1 is still
    // in flight; the caller withdraws command 1 before it is resent.
    m.initiator_drops(a);
    assert!(m.initiator.abandon(first, m.now));
    m.call("second");
    m.flush();
    let withdrawn = m.events.iter().any(|e| {
        matches!(e, InitiatorEvent::CallFailed { call, error: CallError::Withdrawn { .. } } if *call == first)
    });
    assert!(
        !withdrawn,
        "command 1 may still arrive on a: it cannot be reported withdrawn"
    );
    // The late copy arrives: command 1 runs, under its own number.
    m.deliver_up(a);
    m.run();
    m.check();
    assert_eq!(m.responses().len(), 2, "both calls get their own answer");
}

#[test]
fn joins_are_checked_like_recoveries() {
    let (mut m, _conns) = session_with(2, 8);
    let session = m.initiator.session().expect("session");
    let secret = m.secret.expect("secret");
    let before = m.target.session_info(session);
    let reject = |frames: Vec<Frame>| match &frames[..] {
        [Frame::LoginReject(r)] => r.reason,
        other => panic!("expected a reject, got {other:?}"),
    };
    let raw = m.raw();
    m.send_raw(
        raw,
        &login(LoginKind::Join, session, SessionSecret([9; 16])),
    );
    assert_eq!(reject(m.raw_frames(raw)), RejectReason::BadSecret);
    let raw = m.raw();
    let unknown = SessionId(session.0 + 1000);
    m.send_raw(raw, &login(LoginKind::Join, unknown, secret));
    assert_eq!(reject(m.raw_frames(raw)), RejectReason::UnknownSession);
    assert_eq!(m.target.session_info(session), before);
    assert_eq!(m.target.session_connections(session), 2);
    assert_eq!(m.target.stats().fenced, 0);
}

#[test]
fn a_session_holds_at_most_max_session_connections() {
    let mut initiator = InitiatorConfig::default();
    initiator.ack_delay = Duration::ZERO;
    initiator.connections = 2;
    let mut target = TargetConfig::default();
    target.ack_delay = Duration::ZERO;
    target.max_session_connections = 2;
    let mut m = Multi::with(initiator, target);
    m.connect();
    m.join();
    let session = m.initiator.session().expect("session");
    let secret = m.secret.expect("secret");
    let raw = m.raw();
    m.send_raw(raw, &login(LoginKind::Join, session, secret));
    match &m.raw_frames(raw)[..] {
        [Frame::LoginReject(r)] => assert_eq!(r.reason, RejectReason::TooManySessions),
        other => panic!("expected a reject, got {other:?}"),
    }
    assert_eq!(m.target.session_connections(session), 2);
}

#[test]
fn a_recovery_fences_every_connection_of_the_session() {
    let (mut m, conns) = session_with(3, 8);
    let session = m.initiator.session().expect("session");
    let secret = m.secret.expect("secret");
    let raw = m.raw();
    m.send_raw(raw, &login(LoginKind::Recover, session, secret));
    assert!(matches!(m.raw_frames(raw)[..], [Frame::LoginAccept(_)]));
    for conn in conns {
        assert!(
            m.closed.contains(&(conn, CloseReason::Fenced)),
            "{conn:?} not fenced: {:?}",
            m.closed
        );
    }
    assert_eq!(m.target.session_connections(session), 1);
}

#[test]
fn a_clean_close_ends_the_session_and_all_its_connections() {
    let (mut m, conns) = session_with(3, 8);
    for i in 0..5 {
        m.call(&format!("f{i}"));
    }
    m.run();
    m.initiator.close(m.now);
    m.run();
    assert!(m.events.iter().any(|e| matches!(e, InitiatorEvent::Closed)));
    assert_eq!(m.target.session_count(), 0);
    for conn in conns {
        assert!(!m.links[&conn].target_open, "{conn:?} still open");
    }
    m.check();
}

#[test]
fn a_recovery_drops_what_waits_in_the_reorder_buffer() {
    let (mut m, conns) = session_with(2, 32);
    let (a, b) = (conns[0], conns[1]);
    let first = m.call("c1");
    m.call("c2");
    m.call("c3");
    m.flush();
    assert_eq!(m.pending_commands(a), vec![1, 3]);
    assert_eq!(m.pending_commands(b), vec![2]);
    // Only b's command 2 arrives; it waits for 1 in the reorder buffer.
    m.deliver_up(b);
    m.flush();
    let session = m.initiator.session().expect("session");
    assert_eq!(m.target.reorder_occupancy(session).0, 1);
    // Both connections die; the caller withdraws call 1; the initiator
    // recovers on a new connection, where the target acknowledges nothing,
    // so call 1 is dropped and calls 2 and 3 are renumbered 1 and 2.
    m.cut(a);
    m.cut(b);
    assert!(m.initiator.abandon(first, m.now));
    m.connect();
    m.run();
    assert_eq!(m.target.reorder_occupancy(session), (0, 0));
    // The held copy of old 2 must not run as the new 2.
    m.check();
    assert_eq!(m.deliveries.len(), 2);
}

#[test]
fn responses_taken_out_of_order_stay_known_across_a_recovery() {
    let (mut m, conns) = session_with(2, 32);
    let (a, b) = (conns[0], conns[1]);
    m.call("one");
    m.call("two");
    m.flush();
    m.deliver_up(a);
    m.deliver_up(b);
    m.flush();
    // Response 2 arrives (on b) ahead of response 1 (on a).
    m.deliver_down(b);
    m.flush();
    assert_eq!(m.responses().len(), 1);
    // Both connections die; the recovery resends every response above
    // the initiator's cumulative ack (0): response 2 again, a duplicate.
    m.cut(a);
    m.cut(b);
    m.connect();
    m.run();
    m.check();
    assert_eq!(m.responses().len(), 2);
    assert_eq!(m.initiator.stats().duplicate_responses, 1);
    let protocol_errors = m
        .events
        .iter()
        .filter(|e| matches!(e, InitiatorEvent::ConnectionLost { error, .. } if error.to_string().contains("UnknownCommand")))
        .count();
    assert_eq!(protocol_errors, 0);
}
