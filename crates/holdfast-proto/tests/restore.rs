//! `Target::restore` (issue 16, PROTOCOL.md §12): a target rebuilt from the
//! store of a crashed one keeps its sessions. Each test drives the target
//! with raw frames, persists every Ready's changes into a `MemoryStore`
//! (the driver's contract), "crashes" at a chosen point and restores.

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, Frame, HostId, HostRecord, Login, LoginKind,
    RejectReason, ResponseStatus,
};
use holdfast_proto::{
    ConnId, Delivery, MemoryStore, RestoreError, SeededRandom, SessionId, SessionSecret,
    StateChange, StoredSession, Target, TargetConfig, TestSwitches, Timestamp,
};

/// A target, the store its driver persists to, and virtual time.
struct Rig {
    target: Target,
    store: MemoryStore,
    config: TargetConfig,
    now: Timestamp,
    next_conn: u64,
}

/// What one Ready held, decoded.
#[derive(Default)]
struct Out {
    frames: Vec<(ConnId, Frame)>,
    deliveries: Vec<Delivery>,
    changes: Vec<StateChange>,
}

fn config(switches: TestSwitches) -> TargetConfig {
    let mut c = TargetConfig::default();
    c.credits = 8;
    c.retain = Duration::from_secs(10);
    c.ack_delay = Duration::ZERO;
    c.switches = switches;
    c
}

impl Rig {
    fn new(switches: TestSwitches) -> Rig {
        let config = config(switches);
        let target = Target::new(
            config.clone(),
            Box::new(SeededRandom::new(1)),
            Timestamp::ZERO,
        );
        let mut store = MemoryStore::new();
        store.set_incarnation(target.incarnation());
        Rig {
            target,
            store,
            config,
            now: Timestamp::ZERO,
            next_conn: 1,
        }
    }

    /// Takes one Ready, persists its changes, and (if `advance`) confirms
    /// it: sent and delivered.
    fn ready(&mut self, advance: bool) -> Out {
        let ready = self.target.ready();
        self.store.apply_all(&ready.changes);
        let mut out = Out {
            changes: ready.changes.clone(),
            deliveries: ready.deliveries.clone(),
            ..Out::default()
        };
        for t in &ready.transmits {
            let mut d = Decoder::new(Direction::ToInitiator, u32::MAX);
            let bytes: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
            let mut input = &bytes[..];
            while let Ok(Some(f)) = d.decode(&mut input) {
                out.frames.push((t.conn, f));
            }
        }
        if advance {
            self.target.advance(self.now);
        }
        out
    }

    /// Every Ready until quiet, all confirmed.
    fn settle(&mut self) -> Out {
        let mut all = Out::default();
        while self.target.has_ready() {
            let o = self.ready(true);
            all.frames.extend(o.frames);
            all.deliveries.extend(o.deliveries);
            all.changes.extend(o.changes);
        }
        all
    }

    fn send(&mut self, conn: ConnId, frame: &Frame) {
        self.target
            .handle_input(conn, &encode_to_vec(frame, Digests::NONE), self.now);
    }

    /// Opens a connection and logs in; returns the connection and the answer.
    fn login(&mut self, login: Login) -> (ConnId, Frame) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.target.accept(conn, self.now).expect("accept");
        self.send(conn, &Frame::Login(login));
        let out = self.settle();
        let answer = out
            .frames
            .into_iter()
            .find(|(c, _)| *c == conn)
            .map(|(_, f)| f)
            .expect("an answer to the LOGIN");
        (conn, answer)
    }

    /// A new session; returns (connection, id, secret).
    fn new_session(&mut self, host: Option<HostRecord>) -> (ConnId, SessionId, SessionSecret) {
        let (conn, answer) = self.login(login(LoginKind::New, None, 0, 1 << 16, host));
        let Frame::LoginAccept(a) = answer else {
            panic!("not accepted: {answer:?}");
        };
        (conn, a.session, a.secret)
    }

    /// The target process dies: only the store survives. It comes back
    /// `down` after the last commit.
    fn crash_and_restore(&mut self, down: Duration) -> Result<Out, RestoreError> {
        self.target = Target::restore(
            self.config.clone(),
            Box::new(SeededRandom::new(2)),
            &self.store,
            down,
            self.now,
        )?;
        Ok(self.ready(true))
    }
}

fn login(
    kind: LoginKind,
    session: Option<(SessionId, SessionSecret)>,
    response_ack: u64,
    max_frame: u32,
    host: Option<HostRecord>,
) -> Login {
    let (session, secret) = session.unwrap_or((SessionId(0), SessionSecret([0; 16])));
    Login {
        min_version: 1,
        max_version: 1,
        kind,
        digests: Digests::NONE,
        session,
        secret,
        response_ack,
        max_frame,
        keepalive_ms: 500,
        requested_credits: 8,
        host,
    }
}

fn cmd(seq: u64, body: &'static [u8]) -> Frame {
    Frame::Command {
        seq,
        ack: 0,
        payload: Bytes::from_static(body),
    }
}

fn msg(seq: u64, body: &'static [u8]) -> Frame {
    Frame::Message {
        seq,
        ack: 0,
        payload: Bytes::from_static(body),
    }
}

fn seqs(deliveries: &[Delivery]) -> Vec<(bool, u64)> {
    deliveries
        .iter()
        .map(|d| match d {
            Delivery::Command { seq, .. } => (true, *seq),
            Delivery::Message { seq, .. } => (false, *seq),
        })
        .collect()
}

/// The scenario of the first two tests: three commands, the first
/// answered, the others running when the target dies.
fn commands_then_crash(switches: TestSwitches) -> (Rig, SessionId, SessionSecret, Out) {
    let mut rig = Rig::new(switches);
    let (conn, id, secret) = rig.new_session(None);
    for (seq, body) in [(1, b"a"), (2, b"b"), (3, b"c")] {
        rig.send(conn, &cmd(seq, body));
    }
    let out = rig.settle();
    assert_eq!(seqs(&out.deliveries), [(true, 1), (true, 2), (true, 3)]);
    rig.target
        .complete(id, 1, Bytes::from_static(b"A"), rig.now)
        .expect("complete");
    rig.settle();
    let restored = rig.crash_and_restore(Duration::ZERO).expect("restore");
    (rig, id, secret, restored)
}

#[test]
fn a_restored_target_runs_unfinished_commands_once_and_answers_from_its_cache() {
    let (mut rig, id, secret, first) = commands_then_crash(TestSwitches::default());
    // Received and not completed: delivered again, in order, exactly once.
    assert_eq!(seqs(&first.deliveries), [(true, 2), (true, 3)]);
    assert!(!rig.target.has_ready());
    let info = rig.target.session_info(id).expect("restored");
    assert_eq!((info.received, info.running, info.cached), (3, 2, 1));
    assert!(!info.attached);
    // The initiator recovers statefully and gets the cached response again.
    let (conn, answer) = rig.login(login(
        LoginKind::Recover,
        Some((id, secret)),
        0,
        1 << 16,
        None,
    ));
    let Frame::LoginAccept(a) = answer else {
        panic!("recovery refused: {answer:?}");
    };
    assert_eq!(a.command_ack, 3);
    // (the cached response went out right behind the LOGIN_ACCEPT)
    rig.target
        .complete(id, 2, Bytes::from_static(b"B"), rig.now)
        .expect("2 runs");
    rig.target
        .complete(id, 3, Bytes::from_static(b"C"), rig.now)
        .expect("3 runs");
    let out = rig.settle();
    let responses: Vec<u64> = out
        .frames
        .iter()
        .filter(|(c, _)| *c == conn)
        .filter_map(|(_, f)| match f {
            Frame::Response { command, .. } => Some(*command),
            _ => None,
        })
        .collect();
    assert_eq!(responses, [2, 3]);
    assert_eq!(rig.target.stats().sessions_restored, 1);
}

/// The test switch makes restore drop the pending commands: the test above
/// must then fail (they are never delivered again).
#[test]
fn dropping_pending_commands_on_restore_is_caught() {
    let (_, _, _, first) = commands_then_crash(TestSwitches {
        restore_drops_pending: true,
        ..TestSwitches::default()
    });
    assert!(first.deliveries.is_empty(), "the switch has no effect");
}

/// Messages 1 and 2 reach the service (recorded at advance, persisted
/// with the next Ready); message 3 is handed out but the target dies
/// before it confirms: only 3 is delivered again.
fn messages_then_crash(switches: TestSwitches) -> Vec<(bool, u64)> {
    let mut rig = Rig::new(switches);
    let (conn, _, _) = rig.new_session(None);
    rig.send(conn, &msg(1, b"m1"));
    rig.send(conn, &msg(2, b"m2"));
    rig.settle();
    rig.send(conn, &msg(3, b"m3"));
    let out = rig.ready(false); // handed to the service, no advance: crash
    assert_eq!(seqs(&out.deliveries), [(false, 3)]);
    let first = rig.crash_and_restore(Duration::ZERO).expect("restore");
    seqs(&first.deliveries)
}

#[test]
fn messages_the_service_took_are_not_delivered_again() {
    assert_eq!(messages_then_crash(TestSwitches::default()), [(false, 3)]);
}

#[test]
fn without_the_delivered_record_taken_messages_come_again() {
    let again = messages_then_crash(TestSwitches {
        no_delivered_record: true,
        ..TestSwitches::default()
    });
    assert_eq!(again, [(false, 1), (false, 2), (false, 3)]);
}

#[test]
fn the_retain_time_counts_from_the_last_commit_across_the_restart() {
    let mut rig = Rig::new(TestSwitches::default());
    let (conn, id, secret) = rig.new_session(None);
    rig.send(conn, &cmd(1, b"a"));
    rig.settle();
    rig.target
        .complete(id, 1, Bytes::new(), rig.now)
        .expect("complete");
    rig.settle();
    let retain = rig.config.retain;
    // Down for 7 of its 10 seconds: 3 left.
    rig.crash_and_restore(Duration::from_secs(7))
        .expect("restore");
    let expiry = rig.target.poll_timeout().expect("retain timer");
    assert_eq!(expiry, rig.now + (retain - Duration::from_secs(7)));
    rig.now = expiry;
    rig.target.handle_timeout(rig.now);
    let out = rig.settle();
    assert!(out
        .changes
        .contains(&StateChange::SessionEnded { session: id }));
    let (_, answer) = rig.login(login(
        LoginKind::Recover,
        Some((id, secret)),
        0,
        1 << 16,
        None,
    ));
    assert!(
        matches!(&answer, Frame::LoginReject(r) if r.reason == RejectReason::SessionExpired),
        "{answer:?}"
    );
}

#[test]
fn a_session_whose_retain_time_passed_while_down_ends_at_once() {
    let mut rig = Rig::new(TestSwitches::default());
    let (conn, id, secret) = rig.new_session(None);
    rig.send(conn, &cmd(1, b"a"));
    rig.settle();
    let first = rig.crash_and_restore(rig.config.retain).expect("restore");
    assert!(
        first.deliveries.is_empty(),
        "an expired session runs nothing"
    );
    assert_eq!(first.changes, [StateChange::SessionEnded { session: id }]);
    let (_, answer) = rig.login(login(
        LoginKind::Recover,
        Some((id, secret)),
        0,
        1 << 16,
        None,
    ));
    assert!(
        matches!(&answer, Frame::LoginReject(r) if r.reason == RejectReason::SessionExpired),
        "{answer:?}"
    );
}

#[test]
fn a_store_behind_the_initiator_is_refused_and_reported_never_replayed() {
    let mut rig = Rig::new(TestSwitches::default());
    let (conn, id, secret) = rig.new_session(None);
    rig.send(conn, &cmd(1, b"a"));
    rig.settle();
    rig.target
        .complete(id, 1, Bytes::new(), rig.now)
        .expect("complete");
    rig.settle();
    // The store lost the completion (say, a disk that lied about a flush).
    let mut lost = MemoryStore::new();
    lost.set_incarnation(rig.target.incarnation());
    let mut session = rig.store.session(id).expect("stored").clone();
    session.responses.clear();
    session.statuses.clear();
    session.last_response = 0;
    session.pending.insert(1, (true, Bytes::from_static(b"a")));
    lost.insert_session(id, session);
    lost.raise_max_counter(id.counter());
    rig.store = lost;
    let first = rig.crash_and_restore(Duration::ZERO).expect("restore");
    assert_eq!(seqs(&first.deliveries), [(true, 1)]);
    // The initiator has response 1: the store is behind it.
    let (_, answer) = rig.login(login(
        LoginKind::Recover,
        Some((id, secret)),
        1,
        1 << 16,
        None,
    ));
    let Frame::LoginReject(r) = answer else {
        panic!("accepted a recovery the store cannot serve: {answer:?}");
    };
    assert_eq!(r.reason, RejectReason::TargetRestarted);
    assert!(r.text.contains(&id.to_string()), "{}", r.text);
    let behind = rig.target.take_store_behind();
    assert_eq!(behind.len(), 1);
    assert_eq!(
        (behind[0].session, behind[0].response_ack, behind[0].stored),
        (id, 1, 0)
    );
    assert!(rig.target.session_info(id).is_none(), "the session ended");
}

#[test]
fn a_multipath_sessions_unfinished_commands_are_answered_not_executed() {
    let mut rig = Rig::new(TestSwitches::default());
    let host = HostRecord {
        host: HostId([7; 16]),
        epoch: 3,
    };
    let (conn, id, secret) = rig.new_session(Some(host));
    rig.send(conn, &cmd(1, b"a"));
    rig.settle();
    let first = rig.crash_and_restore(Duration::ZERO).expect("restore");
    assert!(
        first.deliveries.is_empty(),
        "its quiesce promise is unknown"
    );
    assert!(first.changes.iter().any(|c| matches!(
        c,
        StateChange::Completed {
            command: 1,
            status: Some(ResponseStatus::NotExecuted),
            ..
        }
    )));
    let (conn, answer) = rig.login(login(
        LoginKind::Recover,
        Some((id, secret)),
        0,
        1 << 16,
        Some(host),
    ));
    assert!(matches!(answer, Frame::LoginAccept(_)), "{answer:?}");
    let _ = conn;
}

#[test]
fn session_ids_are_never_reused_and_fences_survive_a_restart() {
    let mut rig = Rig::new(TestSwitches::default());
    let (conn, first, _) = rig.new_session(None);
    let (_, second, _) = rig.new_session(Some(HostRecord {
        host: HostId([9; 16]),
        epoch: 1,
    }));
    // Session 1 fences host 9's epochs below 5 on this node: session 2 ends.
    rig.send(
        conn,
        &Frame::Fence {
            token: 1,
            node: rig.target.incarnation(),
            host: HostId([9; 16]),
            epoch: 5,
        },
    );
    let out = rig.settle();
    assert!(out.changes.contains(&StateChange::HostFenced {
        host: HostId([9; 16]),
        epoch: 5
    }));
    assert!(
        rig.store.session(second).is_none(),
        "the fenced session ended"
    );
    rig.crash_and_restore(Duration::ZERO).expect("restore");
    assert_eq!(rig.target.incarnation(), first.incarnation());
    assert_eq!(rig.target.fenced_epoch(&HostId([9; 16])), Some(5));
    // A new session gets the next counter, not the ended session's.
    let (_, third, _) = rig.new_session(None);
    assert_eq!(third.counter(), second.counter() + 1);
    let (_, answer) = rig.login(login(
        LoginKind::New,
        None,
        0,
        1 << 16,
        Some(HostRecord {
            host: HostId([9; 16]),
            epoch: 4,
        }),
    ));
    assert!(
        matches!(&answer, Frame::LoginReject(r) if r.reason == RejectReason::Fenced),
        "{answer:?}"
    );
}

#[test]
fn a_raised_max_frame_is_stored_and_binds_the_next_recovery() {
    let mut rig = Rig::new(TestSwitches::default());
    let (_, id, secret) = rig.new_session(None);
    let (_, answer) = rig.login(login(
        LoginKind::Recover,
        Some((id, secret)),
        0,
        1 << 18,
        None,
    ));
    assert!(matches!(answer, Frame::LoginAccept(_)));
    assert_eq!(rig.store.session(id).expect("stored").max_frame, 1 << 18);
    rig.crash_and_restore(Duration::ZERO).expect("restore");
    let (_, answer) = rig.login(login(
        LoginKind::Recover,
        Some((id, secret)),
        0,
        1 << 17,
        None,
    ));
    assert!(
        matches!(&answer, Frame::LoginReject(r) if r.reason == RejectReason::MaxFrameTooSmall),
        "{answer:?}"
    );
}

#[test]
fn an_inconsistent_store_is_refused_naming_the_session() {
    let rig = Rig::new(TestSwitches::default());
    let id = SessionId::new(rig.target.incarnation(), 4);
    let mut store = MemoryStore::new();
    store.set_incarnation(rig.target.incarnation());
    let mut s = StoredSession {
        secret: Some(SessionSecret([1; 16])),
        credits: 2,
        max_frame: 1 << 16,
        received: 3,
        ..StoredSession::default()
    };
    for seq in 1..=3 {
        s.pending.insert(seq, (true, Bytes::new()));
    }
    store.insert_session(id, s);
    let restore = |store: &MemoryStore| {
        Target::restore(
            rig.config.clone(),
            Box::new(SeededRandom::new(3)),
            store,
            Duration::ZERO,
            Timestamp::ZERO,
        )
    };
    match restore(&store) {
        Err(RestoreError::Inconsistent { session, what }) => {
            assert_eq!(session, id);
            assert!(what.contains("credits"), "{what}");
        }
        other => panic!("restored an inconsistent store: {other:?}"),
    }
    assert!(matches!(
        restore(&MemoryStore::new()),
        Err(RestoreError::NoIncarnation)
    ));
}
