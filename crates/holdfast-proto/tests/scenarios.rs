//! Scenario tests, one per behaviour the session core promises, each driven
//! byte by byte through a hand-held [`pair::Pair`].
#![allow(unreachable_pub, dead_code)]

mod pair;

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::target::CloseReason;
use holdfast_proto::wire::{Direction, ErrorCode, Frame, RejectReason};
use holdfast_proto::{
    CallError, CallOptions, ConnectError, ConnectionError, Delivery, InitiatorConfig,
    InitiatorEvent, SessionLoss, StateChange, SubmitError, TargetConfig,
};
use pair::Pair;

fn call(p: &mut Pair, body: &'static [u8]) -> holdfast_proto::CallId {
    let id = p
        .initiator
        .call(Bytes::from_static(body), CallOptions::default(), p.now)
        .expect("call");
    p.flush();
    id
}

fn responses(events: &[InitiatorEvent]) -> Vec<(holdfast_proto::CallId, Bytes)> {
    events
        .iter()
        .filter_map(|e| match e {
            InitiatorEvent::Response { call, payload } => Some((*call, payload.clone())),
            _ => None,
        })
        .collect()
}

fn logged_in() -> Pair {
    let mut p = Pair::default_pair();
    p.connect();
    p.run();
    assert!(p.initiator.is_connected());
    p.take_events();
    p
}

#[test]
fn commands_and_messages_arrive_once_in_order() {
    let mut p = logged_in();
    let a = call(&mut p, b"a");
    let m = p
        .initiator
        .send(Bytes::from_static(b"m"), CallOptions::default(), p.now)
        .expect("send");
    let b = call(&mut p, b"b");
    p.run();
    assert_eq!(p.delivered_seqs(), vec![1, 2, 3]);
    p.complete(3, b"B");
    p.complete(1, b"A");
    p.run();
    let events = p.take_events();
    assert!(events.contains(&InitiatorEvent::MessageDelivered { call: m }));
    // Responses come in completion order, each once.
    assert_eq!(
        responses(&events),
        vec![(b, Bytes::from_static(b"B")), (a, Bytes::from_static(b"A"))]
    );
}

#[test]
fn acks_ride_on_traffic_and_go_alone_only_when_idle() {
    let mut p = Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.ack_delay = Duration::from_millis(5);
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::from_millis(5);
            tc
        },
    );
    p.connect();
    p.run();
    // A busy exchange: each response is followed by a new command.
    for i in 1..=20u64 {
        call(&mut p, b"x");
        p.run();
        p.complete(i, b"y");
        p.run();
    }
    let standalone = |p: &Pair| {
        p.sent_by_initiator
            .iter()
            .filter(|(_, f)| matches!(f, Frame::InitiatorAck { .. }))
            .count()
    };
    let target_standalone = p
        .sent_by_target
        .iter()
        .filter(|(_, f)| matches!(f, Frame::TargetAck { .. }))
        .count();
    assert_eq!(standalone(&p), 0, "acks rode on commands while busy");
    assert_eq!(target_standalone, 0, "acks rode on responses while busy");
    // Idle: the last response is acknowledged alone, after the ack delay.
    p.advance(Duration::from_millis(4));
    assert_eq!(standalone(&p), 0);
    p.advance(Duration::from_millis(2));
    assert_eq!(standalone(&p), 1);
    p.run();
    let last_ack = p.sent_by_initiator.iter().rev().find_map(|(_, f)| match f {
        Frame::InitiatorAck { ack } => Some(*ack),
        _ => None,
    });
    assert_eq!(last_ack, Some(20));
}

#[test]
fn a_new_connection_resends_exactly_the_unacknowledged_tail() {
    let mut p = logged_in();
    for _ in 0..5 {
        call(&mut p, b"payload");
    }
    // Deliver only the first three CMD frames (25 bytes each), then cut.
    let one = p.to_target.len() / 5;
    p.deliver_to_target(3 * one + one / 2);
    let first = p.conn;
    p.cut();
    p.connect();
    p.run();
    assert_eq!(p.data_sent_on(first), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        p.data_sent_on(p.conn),
        vec![4, 5],
        "only the tail is resent"
    );
    assert_eq!(p.delivered_seqs(), vec![1, 2, 3, 4, 5]);
}

#[test]
fn no_retransmission_on_a_live_connection() {
    let mut p = logged_in();
    call(&mut p, b"slow");
    p.run();
    // The service takes a long time; pings keep the connection alive but the
    // command is never sent again while the connection lives.
    for _ in 0..30 {
        p.advance(Duration::from_millis(100));
        p.run();
    }
    assert_eq!(p.data_sent_on(p.conn), vec![1]);
    assert!(p.initiator.is_connected());
    assert!(p.initiator.stats().pings > 0);
}

#[test]
fn recovery_answers_from_cache_does_not_rerun_and_runs_the_unreceived() {
    let mut p = logged_in();
    call(&mut p, b"one");
    call(&mut p, b"two");
    call(&mut p, b"three");
    // The target receives commands 1 and 2; command 3 is lost in flight.
    let frame = p.to_target.len() / 3;
    p.deliver_to_target(2 * frame);
    assert_eq!(p.delivered_seqs(), vec![1, 2]);
    // Command 1 completes, but its response is lost; command 2 is still running.
    p.complete(1, b"ONE");
    p.to_initiator.clear();
    let old = p.conn;
    p.cut();
    p.connect();
    p.run();
    // Command 1 answered from the cache, 2 not re-run, 3 run for the first time.
    assert_eq!(p.delivered_seqs(), vec![1, 2, 3]);
    assert_eq!(p.target.stats().answered_from_cache, 1);
    // Commands the target already had (1, 2) were not sent again: no payload resent.
    assert_eq!(p.data_sent_on(old), vec![1, 2, 3]);
    assert_eq!(p.data_sent_on(p.conn), vec![3]);
    p.complete(2, b"TWO");
    p.complete(3, b"THREE");
    p.run();
    let got: Vec<Bytes> = responses(&p.take_events())
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(got, vec!["ONE", "TWO", "THREE"]);
}

#[test]
fn credits_hold_on_the_first_frames_of_a_new_connection() {
    let mut p = Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.ack_delay = Duration::ZERO;
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.credits = 4;
            tc.ack_delay = Duration::ZERO;
            tc
        },
    );
    p.connect();
    p.run();
    for _ in 0..4 {
        call(&mut p, b"c");
    }
    assert_eq!(
        p.initiator
            .call(Bytes::from_static(b"c"), CallOptions::default(), p.now),
        Err(SubmitError::NoCredit),
        "a fifth command exceeds the window"
    );
    // Nothing reaches the target; reconnect: the first frames respect the grant.
    p.cut();
    p.connect();
    p.run();
    assert_eq!(p.data_sent_on(p.conn), vec![1, 2, 3, 4]);
    assert_eq!(p.target.stats().credit_violations, 0);
    // Completing and acknowledging frees credit for more.
    for seq in 1..=4 {
        p.complete(seq, b"ok");
    }
    p.run();
    assert!(p.initiator.can_submit());
}

#[test]
fn a_peer_that_exceeds_its_credits_gets_a_protocol_error() {
    let mut p = Pair::new(InitiatorConfig::default(), {
        let mut tc = TargetConfig::default();
        tc.credits = 2;
        tc
    });
    p.connect();
    p.run();
    let session = p.initiator.session().expect("session");
    // Forge a third command past the limit.
    let forged: Vec<u8> = (1..=3u64)
        .flat_map(|seq| {
            holdfast_proto::wire::encode_to_vec(
                &Frame::Command {
                    seq,
                    ack: 0,
                    payload: Bytes::from_static(b"x"),
                },
                Default::default(),
            )
        })
        .collect();
    p.target.handle_input(p.conn, &forged, p.now);
    p.flush();
    let error = p.sent_by_target.iter().find_map(|(_, f)| match f {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    });
    assert_eq!(error, Some(ErrorCode::CreditExceeded));
    assert!(p.target_closed.contains(&p.conn));
    let info = p.target.session_info(session).expect("session survives");
    assert_eq!(
        (info.received, info.held),
        (2, 2),
        "no memory beyond the window"
    );
}

#[test]
fn restart_rejects_recovery_fails_honestly_and_reissues_retry_safe_in_order() {
    let mut p = logged_in();
    let sent_unsafe = call(&mut p, b"incr");
    let write1 = p
        .initiator
        .call(Bytes::from_static(b"w1"), CallOptions::RETRY_SAFE, p.now)
        .expect("w1");
    let write2 = p
        .initiator
        .call(Bytes::from_static(b"w2"), CallOptions::RETRY_SAFE, p.now)
        .expect("w2");
    p.run();
    assert_eq!(p.delivered_seqs(), vec![1, 2, 3]);
    // The target restarts: all session state is gone.
    p.cut();
    let never_sent = call(&mut p, b"later");
    p.target = holdfast_proto::Target::new(
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc
        },
        Box::new(holdfast_proto::SeededRandom::new(7)),
        p.now,
    );
    p.deliveries.clear();
    p.connect();
    p.run();
    let events = p.take_events();
    let failure = |call| {
        events.iter().find_map(|e| match e {
            InitiatorEvent::CallFailed { call: c, error } if *c == call => Some(error.clone()),
            _ => None,
        })
    };
    let sent_error = failure(sent_unsafe).expect("the sent increment fails");
    assert!(sent_error.may_have_executed());
    assert!(matches!(
        sent_error.loss(),
        Some(SessionLoss::Rejected {
            reason: RejectReason::TargetRestarted,
            ..
        })
    ));
    let unsent_error = failure(never_sent).expect("the unsent call fails");
    assert!(matches!(unsent_error, CallError::NotExecuted(_)));
    assert!(failure(write1).is_none() && failure(write2).is_none());
    // The writes were re-issued on the new session, in their original order.
    let payloads: Vec<Bytes> = p
        .deliveries
        .iter()
        .map(|d| match d {
            Delivery::Command { payload, .. } | Delivery::Message { payload, .. } => {
                payload.clone()
            }
        })
        .collect();
    assert_eq!(payloads, vec!["w1", "w2"]);
    assert!(events.iter().any(|e| matches!(
        e,
        InitiatorEvent::SessionReplaced {
            reissued: 2,
            failed: 2,
            ..
        }
    )));
}

#[test]
fn retained_state_expires_and_recovery_then_says_expired() {
    let mut p = Pair::new(InitiatorConfig::default(), {
        let mut tc = TargetConfig::default();
        tc.retain = Duration::from_millis(300);
        tc
    });
    p.connect();
    p.run();
    let session = p.initiator.session().expect("session");
    call(&mut p, b"x");
    p.run();
    // Nothing may run when the retain time passes (see tests/expiry.rs).
    p.complete(1, b"X");
    p.cut();
    p.advance(Duration::from_millis(299));
    assert!(
        p.target.session_info(session).is_some(),
        "kept within the retain time"
    );
    p.advance(Duration::from_millis(2));
    assert!(p.target.session_info(session).is_none(), "dropped after it");
    p.connect();
    p.run();
    assert!(p.events.iter().any(|e| matches!(
        e,
        InitiatorEvent::SessionReplaced {
            lost: SessionLoss::Rejected {
                reason: RejectReason::SessionExpired,
                ..
            },
            ..
        }
    )));
}

#[test]
fn a_recovering_connection_fences_the_old_one() {
    let mut p = logged_in();
    let session = p.initiator.session().expect("session");
    let old = p.conn;
    call(&mut p, b"a");
    // The command is still in flight on the old connection when the
    // initiator (which thinks the link died) recovers on a new one.
    let stale = std::mem::take(&mut p.to_target);
    p.initiator.connection_lost(old, p.now);
    p.flush();
    p.connect();
    p.run();
    assert!(p.target_closed.contains(&old), "old connection closed");
    assert_eq!(p.target.stats().fenced, 1);
    assert_eq!(p.delivered_seqs(), vec![1]);
    // The stale bytes arrive late on the old connection: ignored.
    p.target.handle_input(old, &stale, p.now);
    p.flush();
    assert_eq!(p.delivered_seqs(), vec![1]);
    assert!(p.target.session_info(session).expect("session").attached);
}

#[test]
fn a_fenced_connection_is_told_with_error_fenced_before_it_closes() {
    let mut p = logged_in();
    let old = p.conn;
    p.initiator.connection_lost(old, p.now);
    p.flush();
    p.connect();
    p.flush();
    let login = std::mem::take(&mut p.to_target);
    p.target.handle_input(p.conn, &login, p.now);
    // The fence, its ERROR and the close come out in one Ready: the driver
    // writes the old connection's last bytes, then closes it.
    let ready = p.target.ready();
    let close = ready.closes.iter().find(|c| c.conn == old);
    assert_eq!(close.map(|c| &c.reason), Some(&CloseReason::Fenced));
    let bytes: Vec<u8> = ready
        .transmits
        .iter()
        .filter(|t| t.conn == old)
        .flat_map(|t| t.chunks.iter().flat_map(|c| c.iter().copied()))
        .collect();
    let frames = pair::decode_all(&bytes, Direction::ToInitiator);
    assert!(
        matches!(
            frames.last(),
            Some(Frame::Error {
                code: ErrorCode::Fenced,
                ..
            })
        ),
        "the old connection's last frame is ERROR Fenced: {frames:?}"
    );
    p.target.advance(p.now);
    assert_eq!(
        p.target.stats().protocol_errors,
        0,
        "fencing is no violation"
    );
}

#[test]
fn bytes_never_reflect_changes_not_yet_handed_to_the_driver() {
    let mut p = logged_in();
    call(&mut p, b"a");
    p.target
        .handle_input(p.conn, &std::mem::take(&mut p.to_target), p.now);
    let session = p.initiator.session().expect("session");
    let ready = p.target.ready();
    // The receipt is in the same Ready as the bytes that acknowledge it.
    assert!(ready
        .changes
        .iter()
        .any(|c| matches!(c, StateChange::Received { seq: 1, .. })));
    assert_eq!(ready.deliveries.len(), 1);
    // Until advance, nothing more is handed out.
    p.target
        .complete(session, 1, Bytes::from_static(b"r"), p.now)
        .expect("complete");
    assert!(!p.target.has_ready());
    assert!(p.target.ready().is_empty());
    p.target.advance(p.now);
    let ready = p.target.ready();
    let completed = ready.changes.iter().any(|c| {
        matches!(
            c,
            StateChange::Completed {
                command: 1,
                response: 1,
                ..
            }
        )
    });
    assert!(completed, "the response's change comes with its bytes");
    assert!(!ready.transmits.is_empty());
    p.target.advance(p.now);
}

#[test]
fn shutdown_notice_holds_off_new_commands_and_reconnects() {
    let mut p = logged_in();
    // Measure a round trip so the estimate is known.
    call(&mut p, b"a");
    p.run();
    p.complete(1, b"A");
    p.run();
    p.target.shutdown(
        Duration::from_millis(0),
        Some(Duration::from_secs(2)),
        p.now,
    );
    p.run();
    assert!(p
        .events
        .iter()
        .any(|e| matches!(e, InitiatorEvent::ShutdownNotice { .. })));
    // A command issued now cannot finish within 0 ms: it is not sent.
    call(&mut p, b"b");
    p.run();
    assert_eq!(p.data_sent_on(p.conn), vec![1]);
    p.advance(Duration::from_millis(1));
    p.run();
    assert!(
        !p.initiator.is_connected(),
        "the target closed after its up time"
    );
    // No reconnect before the hold time.
    let early = p.initiator.connect(holdfast_proto::ConnId(99), p.now);
    assert!(matches!(early, Err(ConnectError::TooEarly(_))));
    p.now = p.now + Duration::from_secs(2);
    assert!(p
        .initiator
        .connect(holdfast_proto::ConnId(100), p.now)
        .is_ok());
}

#[test]
fn fin_closes_cleanly_after_everything_is_delivered() {
    let mut p = logged_in();
    let session = p.initiator.session().expect("session");
    call(&mut p, b"a");
    let m = p
        .initiator
        .send(Bytes::from_static(b"m"), CallOptions::default(), p.now)
        .expect("send");
    p.initiator.close(p.now);
    p.run();
    // No FIN while the command is outstanding.
    assert!(!p
        .sent_by_initiator
        .iter()
        .any(|(_, f)| matches!(f, Frame::Fin { .. })));
    p.complete(1, b"A");
    p.run();
    let events = p.take_events();
    assert!(events.contains(&InitiatorEvent::MessageDelivered { call: m }));
    assert!(events.contains(&InitiatorEvent::Closed));
    assert!(
        p.target.session_info(session).is_none(),
        "FIN ends the session"
    );
    assert_eq!(
        p.initiator
            .call(Bytes::new(), CallOptions::default(), p.now),
        Err(SubmitError::Closing)
    );
}

#[test]
fn a_silent_connection_is_declared_dead_within_the_detection_bound() {
    let mut p = Pair::new(
        InitiatorConfig::default().with_detection_bound(Duration::from_millis(100)),
        TargetConfig::default(),
    );
    p.connect();
    p.run();
    call(&mut p, b"a");
    p.run();
    // Blackhole: nothing is delivered any more, nobody is told.
    let start = p.now;
    let mut lost_at = None;
    for _ in 0..200 {
        p.to_target.clear();
        p.to_initiator.clear();
        p.advance(Duration::from_millis(1));
        if p.events.iter().any(|e| {
            matches!(
                e,
                InitiatorEvent::ConnectionLost {
                    error: ConnectionError::Timeout(_),
                    ..
                }
            )
        }) {
            lost_at = Some(p.now);
            break;
        }
    }
    let lost_at = lost_at.expect("declared dead");
    assert!(
        lost_at - start <= Duration::from_millis(101),
        "took {:?}",
        lost_at - start
    );
}

#[test]
fn the_target_drops_a_connection_that_goes_quiet() {
    let mut p = logged_in();
    let session = p.initiator.session().expect("session");
    // keepalive 500 ms × factor 4 = 2 s of inactivity allowed.
    p.advance(Duration::from_millis(1999));
    assert!(p.target.session_info(session).expect("s").attached);
    p.to_target.clear();
    p.advance(Duration::from_millis(2));
    assert!(!p.target.session_info(session).expect("s").attached);
}

#[test]
fn a_login_reject_does_not_restart_the_targets_login_window() {
    // PROTOCOL.md §5.1: the window is counted from the accept, so a peer
    // cannot hold an unauthenticated connection open with failing LOGINs.
    let mut p = Pair::default_pair();
    let conn = holdfast_proto::ConnId(77);
    let opened = p.now;
    p.target.accept(conn, p.now).expect("accept");
    p.advance(Duration::from_secs(4));
    let login = Frame::Login(holdfast_proto::wire::Login {
        min_version: 1,
        max_version: 1,
        kind: holdfast_proto::wire::LoginKind::Recover,
        digests: Default::default(),
        session: holdfast_proto::SessionId::new(p.target.incarnation(), 9),
        secret: holdfast_proto::SessionSecret([1; 16]),
        response_ack: 0,
        max_frame: 1 << 16,
        keepalive_ms: 500,
        requested_credits: 8,
        host: None,
    });
    let bytes = holdfast_proto::wire::encode_to_vec(&login, Default::default());
    p.target.handle_input(conn, &bytes, p.now);
    p.flush();
    let rejected = p.sent_by_target.iter().any(|(c, f)| {
        *c == conn && matches!(f, Frame::LoginReject(r) if r.reason == RejectReason::UnknownSession)
    });
    assert!(rejected);
    assert!(
        !p.target_closed.contains(&conn),
        "a reject keeps the connection"
    );
    // Still in the login phase one tick before the original deadline...
    p.advance(opened + Duration::from_secs(5) - p.now - Duration::from_millis(1));
    assert!(!p.target_closed.contains(&conn));
    // ...and closed at it, not 5 s after the reject.
    p.advance(Duration::from_millis(1));
    assert!(p.target_closed.contains(&conn));
    let timed_out = p.sent_by_target.iter().any(|(c, f)| {
        *c == conn
            && matches!(
                f,
                Frame::Error {
                    code: ErrorCode::LoginTimeout,
                    ..
                }
            )
    });
    assert!(timed_out);
}

#[test]
fn the_initiator_acks_by_the_granted_window_not_the_requested_one() {
    // The initiator asks for 128 credits but the target grants 4: a quarter
    // of the granted window (1 response) makes a standalone ACK urgent, so
    // the response's credit goes back without waiting for the ack delay.
    let mut p = Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.ack_delay = Duration::from_secs(1);
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.credits = 4;
            tc.ack_delay = Duration::ZERO;
            tc
        },
    );
    p.connect();
    p.run();
    call(&mut p, b"a");
    p.run();
    p.complete(1, b"A");
    p.run();
    assert_eq!(responses(&p.take_events()).len(), 1);
    let acks: Vec<u64> = p
        .sent_by_initiator
        .iter()
        .filter_map(|(_, f)| match f {
            Frame::InitiatorAck { ack } => Some(*ack),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![1], "acknowledged at once, without the 1 s delay");
    let session = p.initiator.session().expect("session");
    let info = p.target.session_info(session).expect("session");
    assert_eq!((info.held, info.limit), (0, 5), "the credit came back");
}

/// Answers the initiator's LOGIN with a forged LOGIN_ACCEPT and returns the
/// protocol error it closed the connection with, if any.
fn forged_accept_error(
    config: InitiatorConfig,
    tweak: impl FnOnce(&mut holdfast_proto::wire::LoginAccept),
) -> (Pair, Option<holdfast_proto::ProtocolError>) {
    let mut p = Pair::new(config, TargetConfig::default());
    p.connect();
    p.flush();
    let mut accept = holdfast_proto::wire::LoginAccept {
        version: 1,
        digests: Default::default(),
        kind: holdfast_proto::wire::LoginKind::New,
        session: holdfast_proto::SessionId::new(7, 1),
        secret: holdfast_proto::SessionSecret([5; 16]),
        command_ack: 0,
        credit_limit: 8,
        max_frame: 1 << 16,
        inactivity_ms: 2000,
        retain_ms: 60_000,
        credits: 8,
        quiesce_ms: 0,
    };
    tweak(&mut accept);
    let bytes =
        holdfast_proto::wire::encode_to_vec(&Frame::LoginAccept(accept), Default::default());
    p.to_initiator.extend_from_slice(&bytes);
    p.deliver_to_initiator(usize::MAX);
    let error = p.events.iter().find_map(|e| match e {
        InitiatorEvent::ConnectionLost {
            error: ConnectionError::Protocol(e),
            ..
        } => Some(e.clone()),
        _ => None,
    });
    (p, error)
}

#[test]
fn the_initiator_refuses_a_login_accept_with_digests_it_did_not_ask_for() {
    let asked = holdfast_proto::wire::Digests {
        header: false,
        data: true,
    };
    let mut config = InitiatorConfig::default();
    config.digests = asked;
    // Granting exactly what was asked, or less, is fine.
    for granted in [asked, Default::default()] {
        let (p, error) = forged_accept_error(config.clone(), |a| a.digests = granted);
        assert_eq!(error, None);
        assert!(p.initiator.is_connected());
    }
    let (p, error) = forged_accept_error(config, |a| {
        a.digests = holdfast_proto::wire::Digests {
            header: true,
            data: true,
        }
    });
    assert_eq!(error.map(|e| e.code()), Some(ErrorCode::Malformed));
    assert!(!p.initiator.is_connected());
    assert_eq!(
        p.initiator.session(),
        None,
        "nothing of the accept was kept"
    );
    assert!(p.sent_by_initiator.iter().any(|(_, f)| matches!(
        f,
        Frame::Error {
            code: ErrorCode::Malformed,
            ..
        }
    )));
}

#[test]
fn the_initiator_refuses_an_inactivity_deadline_below_its_keepalive() {
    let mut config = InitiatorConfig::default();
    config.keepalive = Duration::from_millis(500);
    let (p, error) = forged_accept_error(config.clone(), |a| a.inactivity_ms = 500);
    assert_eq!(error, None, "one keep-alive interval is the least allowed");
    assert!(p.initiator.is_connected());
    let (p, error) = forged_accept_error(config, |a| a.inactivity_ms = 499);
    assert_eq!(error.map(|e| e.code()), Some(ErrorCode::Malformed));
    assert!(!p.initiator.is_connected());
    assert_eq!(p.initiator.session(), None);
}

#[test]
fn the_target_never_grants_less_inactivity_than_one_keepalive() {
    // A factor of 0 and a tiny floor would give 10 ms; the initiator promised
    // only one frame per 500 ms, so the target grants 500 ms.
    let mut p = Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.keepalive = Duration::from_millis(500);
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.inactivity_factor = 0;
            tc.min_inactivity = Duration::from_millis(10);
            tc
        },
    );
    p.connect();
    p.run();
    let granted = p.sent_by_target.iter().find_map(|(_, f)| match f {
        Frame::LoginAccept(a) => Some(a.inactivity_ms),
        _ => None,
    });
    assert_eq!(granted, Some(500));
    assert!(p.initiator.is_connected());
}

/// Sends a raw LOGIN to the pair's target on a fresh connection `conn` and
/// returns the target's answer.
fn raw_login(
    p: &mut Pair,
    conn: holdfast_proto::ConnId,
    kind: holdfast_proto::wire::LoginKind,
    session: holdfast_proto::SessionId,
    secret: holdfast_proto::SessionSecret,
    max_frame: u32,
) -> Option<Frame> {
    p.target.accept(conn, p.now).expect("accept");
    let login = Frame::Login(holdfast_proto::wire::Login {
        min_version: 1,
        max_version: 1,
        kind,
        digests: Default::default(),
        session,
        secret,
        response_ack: 0,
        max_frame,
        keepalive_ms: 500,
        requested_credits: 8,
        host: None,
    });
    let bytes = holdfast_proto::wire::encode_to_vec(&login, Default::default());
    let before = p.sent_by_target.len();
    p.target.handle_input(conn, &bytes, p.now);
    p.flush();
    p.sent_by_target[before..]
        .iter()
        .find(|(c, _)| *c == conn)
        .map(|(_, f)| f.clone())
}

#[test]
fn the_target_rejects_a_max_frame_too_small_for_a_login_accept() {
    use holdfast_proto::wire::{LoginKind, MIN_MAX_FRAME, NEVER_MS};
    let mut p = Pair::default_pair();
    let none = (
        holdfast_proto::SessionId(0),
        holdfast_proto::SessionSecret([0; 16]),
    );
    let conn = holdfast_proto::ConnId(50);
    match raw_login(
        &mut p,
        conn,
        LoginKind::New,
        none.0,
        none.1,
        MIN_MAX_FRAME - 1,
    ) {
        Some(Frame::LoginReject(r)) => {
            assert_eq!(r.reason, RejectReason::MaxFrameTooSmall);
            assert_eq!(r.retry_after_ms, NEVER_MS, "the same LOGIN never succeeds");
        }
        other => panic!("expected LOGIN_REJECT, got {other:?}"),
    }
    assert_eq!(p.target.session_count(), 0, "no session for it");
    assert!(!p.target_closed.contains(&conn), "it may log in again");
    let answer = raw_login(
        &mut p,
        holdfast_proto::ConnId(51),
        LoginKind::New,
        none.0,
        none.1,
        MIN_MAX_FRAME,
    );
    assert!(matches!(answer, Some(Frame::LoginAccept(_))), "{answer:?}");
}

#[test]
fn the_target_rejects_a_recovery_that_shrinks_max_frame() {
    use holdfast_proto::wire::LoginKind;
    let mut p = logged_in();
    let old = p.conn;
    let (session, secret) = p
        .changes
        .iter()
        .find_map(|c| match c {
            StateChange::SessionCreated {
                session, secret, ..
            } => Some((*session, *secret)),
            _ => None,
        })
        .expect("created");
    let negotiated = p.initiator.config().max_frame;
    let before = p.target.session_info(session).expect("session");
    let answer = raw_login(
        &mut p,
        holdfast_proto::ConnId(60),
        LoginKind::Recover,
        session,
        secret,
        negotiated - 1,
    );
    match answer {
        Some(Frame::LoginReject(r)) => assert_eq!(r.reason, RejectReason::MaxFrameTooSmall),
        other => panic!("expected LOGIN_REJECT, got {other:?}"),
    }
    assert!(
        !p.target_closed.contains(&old),
        "the live connection is not fenced"
    );
    assert_eq!(
        p.target.session_info(session),
        Some(before),
        "nothing changed"
    );
    // The same limit, or a larger one, recovers.
    let answer = raw_login(
        &mut p,
        holdfast_proto::ConnId(61),
        LoginKind::Recover,
        session,
        secret,
        negotiated,
    );
    assert!(matches!(answer, Some(Frame::LoginAccept(_))), "{answer:?}");
    assert!(p.target_closed.contains(&old));
}

#[test]
fn an_initiator_whose_max_frame_is_too_small_learns_it_at_login() {
    let mut p = Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.max_frame = 63;
            ic
        },
        TargetConfig::default(),
    );
    p.connect();
    p.run();
    let lost = p.events.iter().find_map(|e| match e {
        InitiatorEvent::ConnectionLost {
            error,
            reconnect_at,
        } => Some((error.clone(), *reconnect_at)),
        _ => None,
    });
    assert_eq!(
        lost,
        Some((
            ConnectionError::Rejected(RejectReason::MaxFrameTooSmall),
            holdfast_proto::Timestamp::NEVER
        )),
        "a retry_after of NEVER_MS means never"
    );
    assert_eq!(p.target.session_count(), 0);
}
