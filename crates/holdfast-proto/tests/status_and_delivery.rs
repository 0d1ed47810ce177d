//! Review fixes (issue 14): a response too large for the initiator is
//! answered with a status response (not left running); a one-way message is
//! acknowledged only once the driver confirmed the service has it; a call
//! carried across a stateless recovery that the new target cannot accept
//! fails alone; acknowledgements are bounded per session, not per connection.
#![allow(unreachable_pub, dead_code)]

mod pair;

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::wire::{Decoder, Direction, Frame, ResponseStatus};
use holdfast_proto::{
    CallError, CallOptions, ConnectionError, InitiatorConfig, InitiatorEvent, SeededRandom, Target,
    TargetConfig,
};
use pair::Pair;

fn pair_with(initiator_max_frame: u32, target_max_frame: u32) -> Pair {
    let mut p = Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.ack_delay = Duration::ZERO;
            ic.max_frame = initiator_max_frame;
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc.max_frame = target_max_frame;
            tc
        },
    );
    p.connect();
    p.run();
    assert!(p.initiator.is_connected());
    p.take_events();
    p
}

fn call(p: &mut Pair, body: Bytes, options: CallOptions) -> holdfast_proto::CallId {
    let id = p.initiator.call(body, options, p.now).expect("call");
    p.flush();
    id
}

#[test]
fn an_oversized_response_fails_its_call_cleanly_and_returns_the_credit() {
    // The initiator accepts frames of 1024 bytes: responses of 992.
    let mut p = pair_with(1024, 1 << 20);
    let big = call(&mut p, Bytes::from_static(b"big"), CallOptions::default());
    p.run();
    let session = p.initiator.session().expect("session");
    let result = p
        .target
        .complete(session, 1, Bytes::from(vec![7u8; 2000]), p.now);
    assert!(
        result.is_ok(),
        "an oversized response must be answered, not refused: {result:?}"
    );
    p.run();
    let info = p.target.session_info(session).expect("session");
    assert_eq!(info.running, 0, "the command is no longer running");
    let events = p.take_events();
    let failed = events.iter().find_map(|e| match e {
        InitiatorEvent::CallFailed { call, error } if *call == big => Some(error.clone()),
        _ => None,
    });
    match failed {
        Some(CallError::Failed { status, text }) => {
            assert_eq!(status, ResponseStatus::ResponseTooLarge);
            assert!(text.contains("2000") && text.contains("992"), "{text}");
        }
        other => panic!("expected a Failed call error, got {other:?} in {events:?}"),
    }
    let failed = CallError::Failed {
        status: ResponseStatus::ResponseTooLarge,
        text: String::new(),
    };
    assert!(failed.may_have_executed(), "the command did execute");
    // The status response was acknowledged like any response: the credit
    // returned, the next call works and the session closes cleanly.
    let info = p.target.session_info(session).expect("session");
    assert_eq!((info.cached, info.held), (0, 0), "{info:?}");
    let next = call(&mut p, Bytes::from_static(b"next"), CallOptions::default());
    p.run();
    p.complete(2, b"ok");
    p.run();
    assert!(p.take_events().contains(&InitiatorEvent::Response {
        call: next,
        payload: Bytes::from_static(b"ok"),
    }));
    p.initiator.close(p.now);
    p.run();
    assert!(p.take_events().contains(&InitiatorEvent::Closed));
}

#[test]
fn a_status_response_is_resent_from_the_cache_after_a_cut() {
    let mut p = pair_with(1024, 1 << 20);
    let big = call(&mut p, Bytes::from_static(b"big"), CallOptions::default());
    p.run();
    let session = p.initiator.session().expect("session");
    p.target
        .complete(session, 1, Bytes::from(vec![7u8; 5000]), p.now)
        .expect("complete");
    p.flush();
    // The status response is lost with the connection; the recovery sends
    // it again from the cache.
    p.cut();
    p.connect();
    p.run();
    let failed = p.take_events().into_iter().any(|e| {
        matches!(e, InitiatorEvent::CallFailed { call, error: CallError::Failed { .. } } if call == big)
    });
    assert!(failed);
    assert_eq!(p.target.session_info(session).expect("session").cached, 0);
}

#[test]
fn the_status_text_is_cut_to_fit_the_smallest_frame_limit() {
    // 64 is the smallest max_frame: 32 bytes of payload, 30 of text.
    let mut p = pair_with(64, 1 << 20);
    let big = call(&mut p, Bytes::from_static(b"x"), CallOptions::default());
    p.run();
    let session = p.initiator.session().expect("session");
    p.target
        .complete(session, 1, Bytes::from(vec![0u8; 33]), p.now)
        .expect("complete");
    p.run();
    let text = p.take_events().into_iter().find_map(|e| match e {
        InitiatorEvent::CallFailed {
            call,
            error: CallError::Failed { text, .. },
        } if call == big => Some(text),
        _ => None,
    });
    let text = text.expect("the call failed with a status");
    assert!(!text.is_empty() && text.len() <= 30, "{text:?}");
    assert!(p.initiator.is_connected());
}

/// Decodes the target's bytes of one Ready.
fn target_frames(ready: &holdfast_proto::Ready) -> Vec<Frame> {
    let mut d = Decoder::new(Direction::ToInitiator, u32::MAX);
    let mut frames = Vec::new();
    for t in &ready.transmits {
        let bytes: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut input = &bytes[..];
        while let Ok(Some(f)) = d.decode(&mut input) {
            frames.push(f);
        }
    }
    frames
}

fn acks(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::TargetAck { ack, .. }
            | Frame::Response { ack, .. }
            | Frame::Pong { ack, .. }
            | Frame::Shutdown { ack, .. } => Some(*ack),
            _ => None,
        })
        .collect()
}

#[test]
fn a_message_is_acknowledged_only_after_the_driver_confirmed_its_delivery() {
    let mut p = pair_with(1 << 20, 1 << 20);
    let session = p.initiator.session().expect("session");
    p.initiator
        .send(Bytes::from_static(b"m"), CallOptions::default(), p.now)
        .expect("send");
    let bytes: Vec<u8> = p
        .initiator
        .poll_transmit(p.now)
        .expect("the MSG")
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    p.target.handle_input(p.conn, &bytes, p.now);
    // The Ready that hands the message to the driver must not carry an
    // acknowledgement of it: the service does not have it yet.
    assert!(p.target.has_ready());
    let ready = p.target.ready();
    assert_eq!(ready.deliveries.len(), 1, "{ready:?}");
    let frames = target_frames(&ready);
    assert!(
        acks(&frames).iter().all(|&a| a < 1),
        "the MSG was acknowledged in the Ready that delivers it: {frames:?}"
    );
    // A PING read meanwhile is answered at the next Ready (one PONG per
    // batch, §9.1), which comes only after the driver confirmed.
    let encode =
        |f: &Frame| holdfast_proto::wire::encode_to_vec(f, holdfast_proto::wire::Digests::NONE);
    p.target
        .handle_input(p.conn, &encode(&Frame::Ping { token: 99, ack: 0 }), p.now);
    p.target.advance(p.now);
    let mut seen = Vec::new();
    while p.target.has_ready() {
        let ready = p.target.ready();
        seen.extend(acks(&target_frames(&ready)));
        p.target.advance(p.now);
    }
    assert_eq!(
        seen.last(),
        Some(&1),
        "the MSG is acknowledged after advance"
    );
    // A second MSG and a PING read in one batch: the PONG goes out in the
    // Ready that hands the MSG to the driver, so it must not cover it.
    let mut batch = encode(&Frame::Message {
        seq: 2,
        ack: 0,
        payload: Bytes::from_static(b"m2"),
    });
    batch.extend(encode(&Frame::Ping { token: 100, ack: 0 }));
    p.target.handle_input(p.conn, &batch, p.now);
    let ready = p.target.ready();
    assert_eq!(ready.deliveries.len(), 1, "{ready:?}");
    let frames = target_frames(&ready);
    let pong = frames.iter().find_map(|f| match f {
        Frame::Pong { ack, .. } => Some(*ack),
        _ => None,
    });
    assert_eq!(
        pong,
        Some(1),
        "the PONG acknowledged a MSG the service does not have yet: {frames:?}"
    );
    assert!(acks(&frames).iter().all(|&a| a < 2), "{frames:?}");
    p.target.advance(p.now);
    while p.target.has_ready() {
        let ready = p.target.ready();
        p.target.advance(p.now);
        drop(ready);
    }
    assert_eq!(p.target.session_info(session).expect("session").held, 0);
}

#[test]
fn a_recovery_accept_never_acknowledges_an_undelivered_message() {
    let mut p = pair_with(1 << 20, 1 << 20);
    p.initiator
        .send(Bytes::from_static(b"m"), CallOptions::default(), p.now)
        .expect("send");
    let bytes: Vec<u8> = p
        .initiator
        .poll_transmit(p.now)
        .expect("the MSG")
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    p.target.handle_input(p.conn, &bytes, p.now);
    // The connection drops before the driver took the Ready; the
    // initiator recovers at once, before the driver took it either.
    p.initiator.connection_lost(p.conn, p.now);
    p.target.connection_closed(p.conn, p.now);
    p.take_events();
    p.connect();
    let login: Vec<u8> = p
        .initiator
        .poll_transmit(p.now)
        .expect("the LOGIN")
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    p.target.handle_input(p.conn, &login, p.now);
    let ready = p.target.ready();
    assert_eq!(ready.deliveries.len(), 1, "{ready:?}");
    let accept = target_frames(&ready).into_iter().find_map(|f| match f {
        Frame::LoginAccept(a) => Some(a.command_ack),
        _ => None,
    });
    assert_eq!(
        accept,
        Some(0),
        "the LOGIN_ACCEPT acknowledged a message the service does not have yet"
    );
    for t in &ready.transmits {
        for c in &t.chunks {
            p.to_initiator.extend_from_slice(c);
        }
    }
    p.target.advance(p.now);
    // Whatever was held back follows; the resent copy is a duplicate.
    p.flush();
    p.run();
    assert!(p
        .take_events()
        .iter()
        .any(|e| matches!(e, InitiatorEvent::MessageDelivered { .. })));
    assert_eq!(p.deliveries.len(), 0, "the pair never saw the first Ready");
    assert_eq!(p.target.stats().messages, 1);
}

#[test]
fn a_carried_call_too_large_for_the_new_target_fails_alone() {
    let mut p = pair_with(1 << 20, 1 << 20);
    let big = call(
        &mut p,
        Bytes::from(vec![1u8; 4000]),
        CallOptions::RETRY_SAFE,
    );
    let small = call(&mut p, Bytes::from_static(b"s"), CallOptions::RETRY_SAFE);
    p.run();
    assert_eq!(p.deliveries.len(), 2);
    // The target restarts with a smaller frame limit: the recovery is
    // rejected and both calls are carried to a new session.
    p.target = Target::new(
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc.max_frame = 1024;
            tc
        },
        Box::new(SeededRandom::new(7)),
        p.now,
    );
    p.cut();
    p.connect();
    p.run();
    let events = p.take_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, InitiatorEvent::ConnectionLost { error, .. } if *error != ConnectionError::TransportClosed)),
        "the oversized call must not be sent to the new target: {events:?}"
    );
    let failed = events.iter().find_map(|e| match e {
        InitiatorEvent::CallFailed { call, error } if *call == big => Some(error.clone()),
        _ => None,
    });
    match failed {
        Some(
            e @ CallError::TooLargeForTarget {
                len: 4000,
                max: 1008,
                ..
            },
        ) => {
            assert!(e.may_have_executed(), "it was sent in the lost session");
        }
        other => panic!("expected TooLargeForTarget, got {other:?} in {events:?}"),
    }
    // The small one was re-issued as seq 1 of the new session and runs.
    assert_eq!(p.deliveries.len(), 3);
    p.complete(1, b"S");
    p.run();
    assert!(p.take_events().contains(&InitiatorEvent::Response {
        call: small,
        payload: Bytes::from_static(b"S"),
    }));
}

#[test]
fn after_a_recovery_with_nothing_to_resend_the_sessions_ack_is_accepted() {
    // §6.2: the initiator bounds an ack by what it sent in this session,
    // not on this connection: after a recovery that resends nothing, the
    // target acknowledges `command_ack` on a connection that carried no
    // CMD or MSG yet.
    let mut p = Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.ack_delay = Duration::ZERO;
            ic.keepalive = Duration::from_millis(100);
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc
        },
    );
    p.connect();
    p.run();
    let a = call(&mut p, Bytes::from_static(b"a"), CallOptions::default());
    p.run();
    p.complete(1, b"A");
    p.run();
    assert!(p.take_events().contains(&InitiatorEvent::Response {
        call: a,
        payload: Bytes::from_static(b"A"),
    }));
    p.cut();
    p.take_events();
    p.connect();
    p.run();
    // A PING provokes a PONG carrying ack 1: the command of the old
    // connection.
    p.advance(Duration::from_millis(150));
    p.run();
    let pong_ack = p.sent_by_target.iter().rev().find_map(|(c, f)| match f {
        Frame::Pong { ack, .. } if *c == p.conn => Some(*ack),
        _ => None,
    });
    assert_eq!(pong_ack, Some(1));
    assert!(p.initiator.is_connected());
    assert!(!p
        .take_events()
        .iter()
        .any(|e| matches!(e, InitiatorEvent::ConnectionLost { .. })));
}

#[test]
fn the_status_flag_is_refused_where_it_does_not_belong() {
    use holdfast_proto::wire::{encode_to_vec, Digests, ErrorCode};
    let decode = |bytes: &[u8]| {
        let mut d = Decoder::new(Direction::ToInitiator, 1 << 20);
        let mut input = bytes;
        d.decode(&mut input)
    };
    // On a TACK: Malformed.
    let mut tack = encode_to_vec(&Frame::TargetAck { ack: 1, limit: 2 }, Digests::NONE);
    tack[1] |= 0x04;
    assert_eq!(
        decode(&tack).map_err(|e| e.code()),
        Err(ErrorCode::Malformed)
    );
    // A status response without a code, or with code 0: Malformed.
    let resp = |payload: &'static [u8]| {
        let mut b = encode_to_vec(
            &Frame::Response {
                seq: 1,
                command: 1,
                ack: 1,
                limit: 2,
                payload: Bytes::from_static(payload),
            },
            Digests::NONE,
        );
        b[1] |= 0x04;
        b
    };
    for bad in [&b""[..], b"\x01", b"\x00\x00text", b"\x00\x01\xff"] {
        let bytes = resp(bad);
        assert_eq!(
            decode(&bytes).map_err(|e| e.code()),
            Err(ErrorCode::Malformed),
            "{bad:?}"
        );
    }
    // An unknown status is kept verbatim.
    assert_eq!(
        decode(&resp(b"\x12\x34why")),
        Ok(Some(Frame::StatusResponse {
            seq: 1,
            command: 1,
            ack: 1,
            limit: 2,
            status: ResponseStatus::Other(0x1234),
            text: "why".to_owned(),
        }))
    );
}

#[test]
fn a_fin_before_the_messages_are_delivered_is_refused() {
    use holdfast_proto::wire::{encode_to_vec, Digests, ErrorCode};
    let mut p = pair_with(1 << 20, 1 << 20);
    let session = p.initiator.session().expect("session");
    // A hasty initiator sends FIN right behind its MSG, before the target
    // confirmed the message's delivery: the FIN_ACK would acknowledge it.
    let mut bytes = encode_to_vec(
        &Frame::Message {
            seq: 1,
            ack: 0,
            payload: Bytes::from_static(b"m"),
        },
        Digests::NONE,
    );
    bytes.extend(encode_to_vec(
        &Frame::Fin {
            last_seq: 1,
            ack: 0,
        },
        Digests::NONE,
    ));
    p.target.handle_input(p.conn, &bytes, p.now);
    let ready = p.target.ready();
    let frames = target_frames(&ready);
    assert!(
        frames.iter().any(|f| matches!(
            f,
            Frame::Error {
                code: ErrorCode::FinWithOutstanding,
                ..
            }
        )),
        "FIN accepted while a message was undelivered: {frames:?}"
    );
    p.target.advance(p.now);
    assert!(
        p.target.session_info(session).is_some(),
        "the session stays"
    );
}
