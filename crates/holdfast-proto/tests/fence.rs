//! The fence exchange and the quiesce promise at the core (PROTOCOL.md
//! §11.4–§11.5), one rule per test; `cargo test fence` selects them.
//!
//! The rules whose breakage would let a stale command run are checked by a
//! scenario function that returns what went wrong; each has a twin test
//! that turns the protection off with a test switch and shows the scenario
//! then reports the breakage, so the check itself is known to work.

mod fence_support;

use std::time::Duration;

use bytes::Bytes;
use fence_support::{initiator, target, Bench, HOST};
use holdfast_proto::wire::{encode_to_vec, Digests, ErrorCode, Frame, RejectReason};
use holdfast_proto::{
    CallError, ConnId, FenceResult, HostId, InitiatorEvent, NotStarted, StateChange, TestSwitches,
};

/// A host session (epoch 1) with command 1 running and command 2 delivered
/// but not started; a second session of the same host at epoch 2 fences the
/// node. Returns the first broken rule.
fn fence_scenario(switches: TestSwitches) -> Result<(), String> {
    let mut b = Bench::new({
        let mut tc = target();
        tc.switches = switches;
        tc
    });
    let old = b.client(initiator(Some(HOST), 1));
    let new = b.client(initiator(Some(HOST), 2));
    let s_old = b.session(old);
    b.call(old, b"slow");
    b.call(old, b"queued");
    if b.delivered(s_old) != [1, 2] {
        return Err(format!("delivered {:?}", b.delivered(s_old)));
    }
    // Command 1 starts touching the backend; command 2 waits behind it.
    b.target.begin(s_old, 1, b.now).map_err(|e| e.to_string())?;
    let node = b.target.incarnation();
    let token = b.clients[new]
        .ini
        .fence(node, HOST, 2, b.now)
        .map_err(|e| e.to_string())?;
    b.pump();
    if b.clients[old].conn.is_some() {
        return Err("the fenced session's connection stayed open".into());
    }
    let told_fenced = b.clients[old].received.iter().any(|f| {
        matches!(
            f,
            Frame::Error {
                code: ErrorCode::Fenced,
                ..
            }
        )
    });
    if !told_fenced {
        return Err("the fenced session was not sent ERROR Fenced".into());
    }
    if !b.changes.contains(&StateChange::HostFenced {
        host: HOST,
        epoch: 2,
    }) {
        return Err("no HostFenced change".into());
    }
    if !b.fence_dones(new).is_empty() {
        return Err("FENCE_DONE sent while command 1 still runs".into());
    }
    // The queued command may not start now.
    match b.target.begin(s_old, 2, b.now) {
        Err(NotStarted::Fenced) => {}
        other => return Err(format!("queued command of a fenced session: {other:?}")),
    }
    if !b.fence_dones(new).is_empty() {
        return Err("FENCE_DONE sent while command 1 still runs".into());
    }
    b.advance(Duration::from_millis(30));
    b.target
        .complete(s_old, 1, Bytes::from_static(b"done"), b.now)
        .map_err(|e| e.to_string())?;
    b.pump();
    match b.fence_dones(new)[..] {
        [(t, FenceResult::Fenced, waited)] if t == token && waited >= 30 => {}
        ref other => return Err(format!("FENCE_DONE after the last command: {other:?}")),
    }
    let done = b.clients[new].events.iter().any(|e| {
        matches!(e, InitiatorEvent::FenceDone { token: t, result: FenceResult::Fenced, waited }
            if *t == token && *waited >= Duration::from_millis(30))
    });
    if !done {
        return Err("no FenceDone event at the requester".into());
    }
    if b.target.session_info(s_old).is_some() {
        return Err("the fenced session outlived its last command".into());
    }
    if b.store.fenced_epoch(&HOST) != Some(2) {
        return Err("the store does not hold the fence".into());
    }
    Ok(())
}

#[test]
fn fence_of_own_node_waits_for_running_commands_and_refuses_queued_ones() {
    fence_scenario(TestSwitches::default()).expect("the fence rules hold");
}

#[test]
fn fence_scenario_catches_a_node_that_confirms_before_its_commands_finish() {
    let broken = fence_scenario(TestSwitches {
        fence_without_waiting: true,
        ..TestSwitches::default()
    });
    let e = broken.expect_err("an early FENCE_DONE must be caught");
    assert!(e.contains("still runs"), "{e}");
}

#[test]
fn fence_scenario_catches_a_node_that_starts_queued_commands_of_a_fenced_session() {
    let broken = fence_scenario(TestSwitches {
        no_quiesce: true,
        ..TestSwitches::default()
    });
    let e = broken.expect_err("a started queued command must be caught");
    assert!(e.contains("queued command"), "{e}");
}

#[test]
fn fence_rejects_older_logins_of_the_fenced_host() {
    let mut b = Bench::new(target());
    let old = b.client(initiator(Some(HOST), 1));
    let new = b.client(initiator(Some(HOST), 3));
    let node = b.target.incarnation();
    b.clients[new]
        .ini
        .fence(node, HOST, 3, b.now)
        .expect("fence");
    b.pump();
    assert_eq!(b.fence_dones(new)[0].1, FenceResult::Fenced, "nothing ran");
    // The old session ended: its recovery is rejected Fenced (stateless).
    b.connect(old);
    let reject = b.clients[old].received.iter().find_map(|f| match f {
        Frame::LoginReject(r) => Some(r.reason),
        _ => None,
    });
    assert_eq!(reject, Some(RejectReason::Fenced));
    // The stateless recovery's new-session LOGIN carries epoch 1 < 3.
    let rejects: Vec<_> = b.clients[old]
        .received
        .iter()
        .filter_map(|f| match f {
            Frame::LoginReject(r) => Some((r.reason, r.retry_after_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejects,
        [
            (RejectReason::Fenced, 0),
            (RejectReason::Fenced, holdfast_proto::wire::NEVER_MS)
        ]
    );
    // At the fenced epoch or above, the host is welcome again.
    let again = b.client(initiator(Some(HOST), 3));
    assert!(b.clients[again].ini.session().is_some());
    // Raising the epoch lifts the "never" hold of the rejected initiator.
    assert_eq!(
        b.clients[old].ini.reconnect_at(),
        holdfast_proto::Timestamp::NEVER
    );
    b.clients[old].ini.set_epoch(4, b.now);
    assert_eq!(b.clients[old].ini.reconnect_at(), b.now);
    b.connect(old);
    assert!(
        b.clients[old].ini.session().is_some(),
        "logged in at epoch 4"
    );
}

#[test]
fn fence_spares_other_hosts_sessions_without_host_and_equal_epochs() {
    let mut b = Bench::new(target());
    let other = b.client(initiator(Some(HostId([2; 16])), 1));
    let plain = b.client(initiator(None, 1));
    let same = b.client(initiator(Some(HOST), 2));
    let asker = b.client(initiator(None, 1));
    let node = b.target.incarnation();
    b.clients[asker]
        .ini
        .fence(node, HOST, 2, b.now)
        .expect("fence");
    b.pump();
    assert_eq!(b.fence_dones(asker)[0].1, FenceResult::Fenced);
    for i in [other, plain, same] {
        assert!(b.clients[i].conn.is_some(), "client {i} was fenced");
        let s = b.session(i);
        assert!(!b.target.is_fenced(s));
    }
}

#[test]
fn fence_requests_that_cannot_be_valid_are_refused() {
    let mut b = Bench::new(target());
    let host = b.client(initiator(Some(HOST), 1));
    let node = b.target.incarnation();
    let zero = b.clients[host].ini.fence(node, HostId([0; 16]), 5, b.now);
    let epoch0 = b.clients[host].ini.fence(node, HOST, 0, b.now);
    // A session cannot fence itself: its connection would close first.
    let own = b.clients[host].ini.fence(node, HOST, 2, b.now);
    b.pump();
    let results: Vec<_> = b.fence_dones(host).iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(
        results,
        [
            (zero.expect("sent"), FenceResult::Refused),
            (epoch0.expect("sent"), FenceResult::Refused),
            (own.expect("sent"), FenceResult::Refused)
        ]
    );
    assert!(!b.target.is_fenced(b.session(host)));
}

#[test]
fn fence_of_another_node_goes_to_the_driver_and_its_answer_comes_back() {
    let mut b = Bench::new(target());
    let asker = b.client(initiator(Some(HOST), 2));
    let other_node = b.target.incarnation() ^ 1;
    let token = b.clients[asker]
        .ini
        .fence(other_node, HOST, 2, b.now)
        .expect("fence");
    b.pump();
    assert!(
        b.fence_dones(asker).is_empty(),
        "answered before the driver"
    );
    let req = b.fences.pop().expect("handed to the driver");
    assert_eq!(
        (req.token, req.node, req.host, req.epoch),
        (token, other_node, HOST, 2)
    );
    b.target
        .answer_fence(req.conn, req.token, FenceResult::Fenced, 12, b.now);
    b.pump();
    assert_eq!(b.fence_dones(asker), [(token, FenceResult::Fenced, 12)]);
    assert_eq!(b.target.stats().fences_forwarded, 1);
}

#[test]
fn fence_unanswered_when_the_connection_is_lost_completes_unreachable() {
    let mut b = Bench::new(target());
    let asker = b.client(initiator(Some(HOST), 2));
    let token = b.clients[asker]
        .ini
        .fence(b.target.incarnation() ^ 1, HOST, 2, b.now)
        .expect("fence");
    b.pump();
    let conn = b.clients[asker].conn.expect("connected");
    b.clients[asker].ini.connection_lost(conn, b.now);
    b.pump();
    let done = b.clients[asker].events.iter().find_map(|e| match e {
        InitiatorEvent::FenceDone {
            token: t, result, ..
        } if *t == token => Some(*result),
        _ => None,
    });
    assert_eq!(done, Some(FenceResult::Unreachable));
    // Without a logged-in connection there is nothing to send it on.
    assert_eq!(
        b.clients[asker].ini.fence(1, HOST, 2, b.now),
        Err(holdfast_proto::FenceError::NotConnected)
    );
}

#[test]
fn fence_recovery_must_present_the_sessions_host() {
    let mut b = Bench::new(target());
    let a = b.client(initiator(Some(HOST), 1));
    let s = b.session(a);
    // The same session recovered by an initiator that names no host, or
    // another host, is refused like a wrong secret.
    for host in [None, Some(HostId([9; 16]))] {
        let conn = ConnId(900 + u64::from(host.is_some()));
        b.target.accept(conn, b.now).expect("accept");
        let login = recovery_login(&b, s, host);
        b.target.handle_input(conn, &login, b.now);
        let ready = b.target.ready();
        let frames: Vec<Frame> = ready
            .transmits
            .iter()
            .filter(|t| t.conn == conn)
            .flat_map(|t| {
                let bytes: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
                fence_support::decode(&bytes, holdfast_proto::wire::Direction::ToInitiator)
            })
            .collect();
        b.target.advance(b.now);
        assert!(
            matches!(&frames[..], [Frame::LoginReject(r)] if r.reason == RejectReason::BadSecret),
            "{host:?}: {frames:?}"
        );
    }
    assert!(
        b.clients[a].conn.is_some(),
        "the real connection is untouched"
    );
}

/// A recovery LOGIN for `session` with its real secret (taken from the
/// target's own accept in the client's received frames) and `host`.
fn recovery_login(b: &Bench, session: holdfast_proto::SessionId, host: Option<HostId>) -> Vec<u8> {
    let secret = b
        .clients
        .iter()
        .flat_map(|c| c.received.iter())
        .find_map(|f| match f {
            Frame::LoginAccept(a) if a.session == session => Some(a.secret),
            _ => None,
        })
        .expect("accept seen");
    let login = holdfast_proto::wire::Login {
        min_version: 1,
        max_version: 1,
        kind: holdfast_proto::wire::LoginKind::Recover,
        digests: Digests::NONE,
        session,
        secret,
        response_ack: 0,
        max_frame: 1 << 20,
        keepalive_ms: 500,
        requested_credits: 8,
        host: host.map(|host| holdfast_proto::HostRecord { host, epoch: 1 }),
    };
    encode_to_vec(&Frame::Login(login), Digests::NONE)
}

#[test]
fn quiesce_time_is_advertised_only_to_logins_with_a_host_record() {
    let mut b = Bench::new({
        let mut tc = target();
        tc.command_budget = Duration::from_millis(700);
        tc
    });
    let with = b.client(initiator(Some(HOST), 1));
    let without = b.client(initiator(None, 1));
    let accept = |i: usize| {
        b.clients[i].received.iter().find_map(|f| match f {
            Frame::LoginAccept(a) => Some((a.inactivity_ms, a.quiesce_ms)),
            _ => None,
        })
    };
    let (inactivity, quiesce) = accept(with).expect("accepted");
    assert_eq!(quiesce, inactivity + 700);
    assert_eq!(
        b.clients[with].ini.quiesce(),
        Some(Duration::from_millis(u64::from(quiesce)))
    );
    assert_eq!(accept(without).map(|a| a.1), Some(0));
    assert_eq!(b.clients[without].ini.quiesce(), None);
    assert_eq!(b.clients[with].ini.node(), Some(b.target.incarnation()));
}

/// A command delivered while the initiator was in contact is asked to
/// start after the contact deadline passed. Returns what happened.
fn quiesce_scenario(host: bool, switches: TestSwitches) -> Result<(), String> {
    let mut b = Bench::new({
        let mut tc = target();
        tc.switches = switches;
        tc
    });
    let i = b.client(initiator(host.then_some(HOST), 1));
    let s = b.session(i);
    let call = b.call(i, b"late");
    let inactivity = b.clients[i]
        .received
        .iter()
        .find_map(|f| match f {
            Frame::LoginAccept(a) => Some(a.inactivity_ms),
            _ => None,
        })
        .expect("accepted");
    let last_contact = b.clients[i].ini.last_sent().expect("sent");
    b.partition(i);
    b.advance(Duration::from_millis(u64::from(inactivity)));
    // Exactly at the deadline it may still start.
    b.target
        .may_start(s, 1, b.now)
        .map_err(|e| format!("at the deadline: {e}"))?;
    b.advance(Duration::from_millis(1));
    match b.target.begin(s, 1, b.now) {
        Err(NotStarted::PastDeadline { deadline, .. }) => {
            if deadline != last_contact + Duration::from_millis(u64::from(inactivity)) {
                return Err(format!("deadline {deadline:?}"));
            }
        }
        other => return Err(format!("started past the contact deadline: {other:?}")),
    }
    // The initiator learns on recovery: settled, not executed.
    b.connect(i);
    let failed = b.clients[i].events.iter().find_map(|e| match e {
        InitiatorEvent::CallFailed { call: c, error } if *c == call => Some(error.clone()),
        _ => None,
    });
    match failed {
        Some(e @ CallError::NotStarted { .. }) if !e.may_have_executed() && e.is_settled() => {}
        other => return Err(format!("the call ended with {other:?}")),
    }
    if b.target.stats().not_executed != 1 {
        return Err("not counted".into());
    }
    Ok(())
}

#[test]
fn quiesce_refuses_a_command_asked_to_start_after_the_contact_deadline() {
    quiesce_scenario(true, TestSwitches::default()).expect("the promise holds");
}

#[test]
fn quiesce_scenario_catches_a_node_that_ignores_its_promise() {
    let e = quiesce_scenario(
        true,
        TestSwitches {
            no_quiesce: true,
            ..TestSwitches::default()
        },
    )
    .expect_err("must be caught");
    assert!(e.contains("started past the contact deadline"), "{e}");
}

#[test]
fn quiesce_promise_does_not_apply_without_a_host_record() {
    let e = quiesce_scenario(false, TestSwitches::default()).expect_err("no promise");
    assert!(e.contains("started past the contact deadline"), "{e}");
}

#[test]
fn quiesce_overrun_is_counted_when_a_command_outlives_the_quiesce_time() {
    let mut b = Bench::new({
        let mut tc = target();
        tc.command_budget = Duration::from_millis(100);
        tc
    });
    let i = b.client(initiator(Some(HOST), 1));
    let s = b.session(i);
    b.call(i, b"a");
    b.call(i, b"b");
    b.target.begin(s, 1, b.now).expect("starts");
    b.target.begin(s, 2, b.now).expect("starts");
    let quiesce = b.clients[i].ini.quiesce().expect("promised");
    b.partition(i);
    b.advance(quiesce);
    b.target
        .complete(s, 1, Bytes::from_static(b"in time"), b.now)
        .expect("complete");
    assert_eq!(b.target.stats().quiesce_overruns, 0);
    b.advance(Duration::from_millis(1));
    b.target
        .complete(s, 2, Bytes::from_static(b"late"), b.now)
        .expect("complete");
    assert_eq!(b.target.stats().quiesce_overruns, 1);
}

#[test]
fn fence_hostile_frames_close_the_connection_and_harm_no_session() {
    let mut b = Bench::new(target());
    let i = b.client(initiator(Some(HOST), 1));
    let s = b.session(i);
    // FENCE before a login.
    let conn = ConnId(500);
    b.target.accept(conn, b.now).expect("accept");
    let fence = Frame::Fence {
        token: 1,
        node: b.target.incarnation(),
        host: HOST,
        epoch: 9,
    };
    b.target
        .handle_input(conn, &encode_to_vec(&fence, Digests::NONE), b.now);
    // A LOGIN whose extension record runs past the area.
    let conn2 = ConnId(501);
    b.target.accept(conn2, b.now).expect("accept");
    let mut login = recovery_login(&b, s, Some(HOST));
    let len = u32::from_be_bytes([login[4], login[5], login[6], login[7]]);
    login[4..8].copy_from_slice(&(len - 1).to_be_bytes());
    login.pop();
    b.target.handle_input(conn2, &login, b.now);
    let ready = b.target.ready();
    let mut codes = Vec::new();
    for t in &ready.transmits {
        let bytes: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        for f in fence_support::decode(&bytes, holdfast_proto::wire::Direction::ToInitiator) {
            if let Frame::Error { code, .. } = f {
                codes.push((t.conn, code));
            }
        }
    }
    codes.sort_by_key(|c| c.0);
    assert_eq!(
        codes,
        [
            (conn, ErrorCode::UnexpectedFrame),
            (conn2, ErrorCode::Malformed)
        ]
    );
    b.target.advance(b.now);
    assert!(!b.target.is_fenced(s));
    assert_eq!(b.target.fenced_epoch(&HOST), None);
    assert!(b.target.session_info(s).is_some_and(|x| x.attached));
    // A FENCE_DONE that answers no FENCE closes the initiator's connection.
    let bogus = Frame::FenceDone {
        token: 77,
        result: FenceResult::Fenced,
        waited_ms: 0,
    };
    let c = b.clients[i].conn.expect("connected");
    b.clients[i]
        .ini
        .handle_input(c, &encode_to_vec(&bogus, Digests::NONE), b.now);
    b.pump();
    let lost = b.clients[i].events.iter().any(|e| {
        matches!(e, InitiatorEvent::ConnectionLost { error: holdfast_proto::ConnectionError::Protocol(p), .. }
            if p.code() == ErrorCode::UnexpectedFrame)
    });
    assert!(lost);
}
