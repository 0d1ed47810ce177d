//! Withdrawing calls (docs/PROTOCOL.md §11.3): a call whose caller stopped
//! waiting never executes after its caller was told it failed. Each test
//! drives both state machines byte by byte through [`pair::Pair`].
#![allow(unreachable_pub, dead_code)]

mod pair;

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::{CallError, CallId, CallOptions, Delivery, InitiatorEvent, TargetConfig};
use pair::Pair;

fn logged_in() -> Pair {
    let mut p = Pair::default_pair();
    p.connect();
    p.run();
    assert!(p.initiator.is_connected());
    p.take_events();
    p
}

fn submit(p: &mut Pair, body: &'static [u8], options: CallOptions) -> CallId {
    p.initiator
        .call(Bytes::from_static(body), options, p.now)
        .expect("call")
}

fn failure(events: &[InitiatorEvent], call: CallId) -> Option<CallError> {
    events.iter().find_map(|e| match e {
        InitiatorEvent::CallFailed { call: c, error } if *c == call => Some(error.clone()),
        _ => None,
    })
}

fn response(events: &[InitiatorEvent], call: CallId) -> Option<Bytes> {
    events.iter().find_map(|e| match e {
        InitiatorEvent::Response { call: c, payload } if *c == call => Some(payload.clone()),
        _ => None,
    })
}

fn delivered_payloads(p: &Pair) -> Vec<Bytes> {
    p.deliveries
        .iter()
        .map(|d| match d {
            Delivery::Command { payload, .. } | Delivery::Message { payload, .. } => {
                payload.clone()
            }
        })
        .collect()
}

#[test]
fn a_call_withdrawn_before_it_is_sent_fails_at_once_and_never_executes() {
    let mut p = logged_in();
    let a = submit(&mut p, b"a", CallOptions::default());
    let b = submit(&mut p, b"b", CallOptions::default());
    assert!(p.initiator.abandon(a, p.now));
    p.flush();
    let events = p.take_events();
    assert_eq!(
        failure(&events, a),
        Some(CallError::Withdrawn {
            may_have_executed: false
        })
    );
    p.run();
    // b took a's sequence number: the target's stream has no gap.
    assert_eq!(delivered_payloads(&p), vec!["b"]);
    assert_eq!(p.delivered_seqs(), vec![1]);
    p.complete(1, b"B");
    p.run();
    assert_eq!(
        response(&p.take_events(), b),
        Some(Bytes::from_static(b"B"))
    );
}

#[test]
fn a_call_withdrawn_after_it_was_sent_on_a_lost_connection_is_dropped_at_recovery() {
    // The stale write of issue 14: B is sent into a blackhole, its caller
    // gives up; when the path returns, B must not be resent.
    let mut p = logged_in();
    let b = submit(&mut p, b"B", CallOptions::RETRY_SAFE);
    p.flush();
    assert!(!p.to_target.is_empty(), "B is on the wire");
    assert!(p.initiator.abandon(b, p.now));
    p.flush();
    assert_eq!(
        failure(&p.events, b),
        None,
        "the target may have B: no verdict before recovery"
    );
    p.cut(); // the bytes in flight are lost
    let c = submit(&mut p, b"C", CallOptions::RETRY_SAFE);
    p.advance(Duration::from_millis(10));
    p.connect();
    p.run();
    let events = p.take_events();
    assert_eq!(
        failure(&events, b),
        Some(CallError::Withdrawn {
            may_have_executed: false
        })
    );
    assert_eq!(
        delivered_payloads(&p),
        vec!["C"],
        "B never reached the service"
    );
    assert_eq!(p.delivered_seqs(), vec![1]);
    assert!(failure(&events, c).is_none());
}

#[test]
fn a_withdrawn_call_the_target_has_settles_with_its_real_outcome() {
    let mut p = logged_in();
    let a = submit(&mut p, b"a", CallOptions::default());
    p.run();
    assert_eq!(p.delivered_seqs(), vec![1]);
    assert!(p.initiator.abandon(a, p.now));
    p.flush();
    p.cut();
    p.connect();
    p.run();
    assert!(
        failure(&p.events, a).is_none(),
        "it is running at the target"
    );
    p.complete(1, b"A");
    p.run();
    let events = p.take_events();
    assert_eq!(response(&events, a), Some(Bytes::from_static(b"A")));
    assert!(failure(&events, a).is_none());
}

#[test]
fn a_withdrawn_call_is_never_reissued_after_a_stateless_recovery() {
    let mut p = logged_in();
    let w1 = submit(&mut p, b"w1", CallOptions::RETRY_SAFE);
    let w2 = submit(&mut p, b"w2", CallOptions::RETRY_SAFE);
    p.flush();
    // Both on the wire, neither delivered; the caller of w1 gives up.
    assert!(p.initiator.abandon(w1, p.now));
    p.flush();
    p.cut();
    // The target restarts: the session is gone, so w1's first sending can
    // no longer execute anywhere.
    p.target = holdfast_proto::Target::new(
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc
        },
        Box::new(holdfast_proto::SeededRandom::new(7)),
        p.now,
    );
    p.connect();
    p.run();
    let events = p.take_events();
    let e = failure(&events, w1).expect("w1 settles");
    assert_eq!(
        e,
        CallError::Withdrawn {
            may_have_executed: true
        }
    );
    assert!(e.is_settled());
    assert!(failure(&events, w2).is_none());
    assert_eq!(delivered_payloads(&p), vec!["w2"], "only w2 is re-issued");
}

#[test]
fn a_call_withdrawn_while_carried_to_a_new_session_is_dropped() {
    let mut p = Pair::new(
        {
            let mut ic = holdfast_proto::InitiatorConfig::default();
            ic.ack_delay = Duration::ZERO;
            ic.credits = 1;
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc.credits = 1;
            tc
        },
    );
    p.connect();
    p.run();
    let w1 = submit(&mut p, b"w1", CallOptions::RETRY_SAFE);
    p.run();
    p.cut();
    p.target = holdfast_proto::Target::new(
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc.credits = 1;
            tc
        },
        Box::new(holdfast_proto::SeededRandom::new(7)),
        p.now,
    );
    p.deliveries.clear();
    // Reject the recovery but hold the new session's LOGIN_ACCEPT back: w1
    // waits in the carry queue.
    p.connect();
    p.flush();
    p.deliver_to_target(usize::MAX);
    p.deliver_to_initiator(usize::MAX);
    assert!(p
        .events
        .iter()
        .any(|e| matches!(e, InitiatorEvent::SessionReplaced { reissued: 1, .. })));
    assert!(p.initiator.abandon(w1, p.now));
    p.run();
    assert_eq!(
        failure(&p.take_events(), w1),
        Some(CallError::Withdrawn {
            may_have_executed: true
        })
    );
    assert!(p.deliveries.is_empty(), "w1 was not re-issued");
}

#[test]
fn abandoning_a_finished_call_does_nothing() {
    let mut p = logged_in();
    let a = submit(&mut p, b"a", CallOptions::default());
    p.run();
    p.complete(1, b"A");
    p.run();
    assert!(!p.initiator.abandon(a, p.now));
    p.flush();
    assert!(failure(&p.take_events(), a).is_none());
}

#[test]
fn a_call_never_sent_is_withdrawn_at_once_even_without_a_connection() {
    let mut p = logged_in();
    let a = submit(&mut p, b"a", CallOptions::default());
    p.run();
    p.cut();
    // Submitted while there is no connection: never sent.
    let b = submit(&mut p, b"b", CallOptions::RETRY_SAFE);
    let c = submit(&mut p, b"c", CallOptions::RETRY_SAFE);
    assert!(p.initiator.abandon(b, p.now));
    p.flush();
    assert_eq!(
        failure(&p.take_events(), b),
        Some(CallError::Withdrawn {
            may_have_executed: false
        }),
        "settled at once: no connection can deliver it"
    );
    p.advance(Duration::from_millis(10));
    p.connect();
    p.run();
    p.complete(1, b"A");
    p.complete(2, b"C");
    p.run();
    let events = p.take_events();
    assert_eq!(response(&events, a), Some(Bytes::from_static(b"A")));
    assert_eq!(response(&events, c), Some(Bytes::from_static(b"C")));
    assert_eq!(delivered_payloads(&p), vec!["a", "c"]);
}

fn bytes_of(chunks: Vec<Bytes>) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.iter().copied()).collect()
}

/// The target's acknowledgement stops below a MSG its service does not
/// have yet (§6.2), so at a recovery it may hold commands past its
/// `command_ack`. A call withdrawn then must not be dropped (it may run)
/// and the calls after it must keep their sequence numbers, or responses
/// would reach the wrong callers. (Found in review: c got b's response.)
#[test]
fn calls_the_target_may_hold_behind_an_undelivered_message_are_never_renumbered() {
    let mut p = logged_in();
    p.initiator
        .send(Bytes::from_static(b"m"), CallOptions::default(), p.now)
        .expect("send");
    let b = submit(&mut p, b"b", CallOptions::default());
    let c = submit(&mut p, b"c", CallOptions::default());
    p.flush();
    let old = p.conn;
    let in_flight = std::mem::take(&mut p.to_target);
    // The initiator gives connection A up; b's caller stops waiting; d is
    // submitted meanwhile.
    p.initiator.connection_lost(old, p.now);
    let d = submit(&mut p, b"d", CallOptions::default());
    assert!(p.initiator.abandon(b, p.now));
    // A's bytes and the recovery LOGIN reach the target in one batch: m, b
    // and c are received, m is not yet delivered, so command_ack is 0.
    p.target.handle_input(old, &in_flight, p.now);
    let newc = holdfast_proto::ConnId(100);
    p.conn = newc;
    p.target.accept(newc, p.now).expect("accept");
    p.initiator.connect(newc, p.now).expect("connect");
    let login = bytes_of(p.initiator.poll_transmit(p.now).expect("login"));
    p.target.handle_input(newc, &login, p.now);
    p.flush();
    p.run();
    assert!(
        failure(&p.events, b).is_none(),
        "b may be running at the target: no verdict yet"
    );
    p.complete(2, b"B");
    p.complete(3, b"C");
    p.run();
    p.complete(4, b"D");
    p.run();
    let events = p.take_events();
    assert_eq!(response(&events, b), Some(Bytes::from_static(b"B")));
    assert_eq!(response(&events, c), Some(Bytes::from_static(b"C")));
    assert_eq!(response(&events, d), Some(Bytes::from_static(b"D")));
    assert_eq!(delivered_payloads(&p), vec!["m", "b", "c", "d"]);
}
