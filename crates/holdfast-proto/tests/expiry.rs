//! Retain expiry with commands still running (docs/PROTOCOL.md §11.1): a
//! session never ends while one of its commands runs, so a target that
//! reports a session gone has nothing of it left to execute, and an
//! initiator can re-issue without a stale first execution landing later.
#![allow(unreachable_pub, dead_code)]

mod pair;

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::wire::RejectReason;
use holdfast_proto::{
    CallOptions, CompleteError, InitiatorConfig, InitiatorEvent, SessionLoss, TargetConfig,
};
use pair::Pair;

const RETAIN: Duration = Duration::from_millis(300);

/// A session with one command delivered to the service and still running,
/// and no connection.
fn detached_with_a_running_command() -> Pair {
    let mut p = Pair::new(
        {
            let mut ic = InitiatorConfig::default();
            ic.ack_delay = Duration::ZERO;
            ic
        },
        {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc.retain = RETAIN;
            tc
        },
    );
    p.connect();
    p.run();
    p.initiator
        .call(Bytes::from_static(b"w1"), CallOptions::RETRY_SAFE, p.now)
        .expect("call");
    p.run();
    assert_eq!(p.delivered_seqs(), vec![1]);
    p.cut();
    p
}

#[test]
fn a_session_outlives_its_retain_time_while_a_command_runs() {
    let mut p = detached_with_a_running_command();
    let session = p.initiator.session().expect("session");
    p.advance(RETAIN * 3);
    let info = p
        .target
        .session_info(session)
        .expect("kept while its command runs");
    assert_eq!(info.running, 1);
    assert_eq!(p.target.stats().expiries_deferred, 1);
    assert_eq!(p.target.stats().sessions_expired, 0);
    // The initiator comes back: stateful recovery, nothing re-issued.
    p.connect();
    p.run();
    assert!(p.events.iter().any(|e| matches!(
        e,
        InitiatorEvent::Connected {
            recovered: true,
            ..
        }
    )));
    p.complete(1, b"W1");
    p.run();
    assert_eq!(p.delivered_seqs(), vec![1], "w1 ran once, never re-issued");
    assert!(p
        .events
        .iter()
        .any(|e| matches!(e, InitiatorEvent::Response { .. })));
}

#[test]
fn a_session_ends_when_its_last_command_finishes_after_the_retain_time() {
    let mut p = detached_with_a_running_command();
    let session = p.initiator.session().expect("session");
    p.advance(RETAIN * 3);
    assert!(p.target.session_info(session).is_some());
    p.target
        .complete(session, 1, Bytes::from_static(b"W1"), p.now)
        .expect("the running command completes");
    p.flush();
    assert!(
        p.target.session_info(session).is_none(),
        "ended as soon as nothing runs"
    );
    assert_eq!(p.target.stats().sessions_expired, 1);
    assert_eq!(
        p.target
            .complete(session, 1, Bytes::from_static(b"again"), p.now),
        Err(CompleteError::UnknownSession(session))
    );
    // Only now does a recovery learn that the session expired, and the
    // re-issue cannot run beside the first execution: that one is over.
    p.connect();
    p.run();
    assert!(p.events.iter().any(|e| matches!(
        e,
        InitiatorEvent::SessionReplaced {
            lost: SessionLoss::Rejected {
                reason: RejectReason::SessionExpired,
                ..
            },
            reissued: 1,
            ..
        }
    )));
}

#[test]
fn a_session_with_nothing_running_still_expires_on_time() {
    let mut p = detached_with_a_running_command();
    let session = p.initiator.session().expect("session");
    p.target
        .complete(session, 1, Bytes::from_static(b"W1"), p.now)
        .expect("complete");
    p.flush();
    p.advance(RETAIN - Duration::from_millis(1));
    assert!(p.target.session_info(session).is_some());
    p.advance(Duration::from_millis(2));
    assert!(p.target.session_info(session).is_none());
    assert_eq!(p.target.stats().expiries_deferred, 0);
}
