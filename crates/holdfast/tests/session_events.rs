//! Session events over real sockets (`Initiator::events`,
//! `Initiator::wait_connected`): the first login, a cut connection and its
//! stateful recovery (through the chaos proxy), one of a two-connection
//! session's connections dropped and joined again while the session lives
//! on, a shutdown notice and a target restart that replaces the session
//! and fails its calls, the end.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast::chaos::{Direction, Fault, FaultKind, FaultSpec, Proxy, Scope};
use holdfast::proto::SessionLoss;
use holdfast::{
    service_fn, Endpoint, EndpointConnector, Initiator, InitiatorOptions, Request, SessionEvent,
    SessionEvents, Target, TargetOptions,
};

/// Fails the test if `f` takes longer than 10 s.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("finished within 10 s")
}

/// An echo target on `addr`; a command `slow` takes 5 s.
async fn echo_target(addr: SocketAddr) -> Target {
    Target::serve(
        &[Endpoint::Tcp(addr)],
        TargetOptions::default(),
        service_fn(|r: Request| async move {
            if r.payload.as_ref() == b"slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok::<_, std::convert::Infallible>(r.payload)
        }),
    )
    .await
    .expect("serve")
}

fn tcp_addr(target: &Target) -> SocketAddr {
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    addr
}

fn initiator(addr: SocketAddr, options: InitiatorOptions) -> Initiator {
    let bound = Duration::from_millis(300);
    Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(addr), bound)),
        {
            let mut o = options.with_detection_bound(bound);
            o.backoff_max = Duration::from_millis(100);
            o
        },
    )
}

/// Receives events until one matches `last`; returns them all.
async fn until(
    events: &mut SessionEvents,
    last: impl Fn(&SessionEvent) -> bool,
) -> Vec<SessionEvent> {
    within(async {
        let mut seen = Vec::new();
        loop {
            let e = events.recv().await.expect("the session's events go on");
            let done = last(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    })
    .await
}

#[tokio::test]
async fn session_events_cut_is_lost_then_recovered_statefully_then_ended() {
    support::init_logs();
    let target = echo_target("127.0.0.1:0".parse().expect("addr")).await;
    let proxy = Proxy::start(tcp_addr(&target)).await.expect("proxy");
    let init = initiator(proxy.addr(), InitiatorOptions::default());
    // A current-thread runtime: the driver has not run yet, so this sees
    // every event from the first.
    let mut events = init.events();
    within(init.wait_connected()).await.expect("first login");
    let first = until(&mut events, |_| true).await;
    let session = match first.as_slice() {
        [SessionEvent::Connected { session }] => *session,
        other => panic!("expected Connected first, got {other:?}"),
    };
    within(init.call(Bytes::from_static(b"A")))
        .await
        .expect("A");

    proxy.inject(Fault::Reset);
    let seen = until(&mut events, |e| matches!(e, SessionEvent::Recovered { .. })).await;
    assert!(
        matches!(seen.first(), Some(SessionEvent::ConnectionLost { .. })),
        "the loss first: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&SessionEvent::Recovered {
            session,
            stateful: true
        }),
        "the same session, recovered: {seen:?}"
    );
    within(init.call(Bytes::from_static(b"B")))
        .await
        .expect("B");

    within(init.close()).await.expect("closed");
    let seen = until(&mut events, |e| matches!(e, SessionEvent::Ended { .. })).await;
    assert_eq!(
        seen.last(),
        Some(&SessionEvent::Ended { result: Ok(()) }),
        "{seen:?}"
    );
}

/// A session over two connections: the second one's join is reported,
/// then its loss (which one, why, that one remains) while the session lives
/// on (no `ConnectionLost`, no recovery), then the join that replaces it.
/// Before the change none of this was published and the test timed out
/// waiting for `ConnectionJoined`.
#[tokio::test]
async fn session_events_one_of_two_connections_dropped_then_joined_again() {
    support::init_logs();
    let target = echo_target("127.0.0.1:0".parse().expect("addr")).await;
    let proxy = Proxy::start(tcp_addr(&target)).await.expect("proxy");
    let mut options = InitiatorOptions::default();
    options.protocol.connections = 2;
    let init = initiator(proxy.addr(), options);
    // Current-thread runtime: subscribed before the driver first runs.
    let mut events = init.events();
    let seen = until(&mut events, |e| {
        matches!(e, SessionEvent::ConnectionJoined { .. })
    })
    .await;
    let (session, joined) = match seen.as_slice() {
        [SessionEvent::Connected { session }, SessionEvent::ConnectionJoined {
            connection,
            connections: 2,
        }] => (*session, *connection),
        other => panic!("expected Connected, then the second connection's join: {other:?}"),
    };
    within(init.call(Bytes::from_static(b"A")))
        .await
        .expect("A");

    // The joined connection is the proxy's newest link: reset it alone.
    let hit = proxy.apply(FaultSpec::new(
        FaultKind::Reset,
        Direction::Both,
        Scope::Newest,
    ));
    assert_eq!(hit, 1, "one link reset");
    let seen = until(&mut events, |e| {
        matches!(e, SessionEvent::ConnectionJoined { .. })
    })
    .await;
    match seen.as_slice() {
        [SessionEvent::ConnectionDropped {
            connection,
            remaining: 1,
            ..
        }, SessionEvent::ConnectionJoined {
            connection: again,
            connections: 2,
        }] => {
            assert_eq!(*connection, joined, "the reset connection is named");
            assert_ne!(*again, joined, "a new connection took its place");
        }
        other => {
            panic!("expected the drop of one connection, then a join, and nothing else: {other:?}")
        }
    }
    // Still the same session, on both connections.
    within(init.call(Bytes::from_static(b"B")))
        .await
        .expect("B");
    let ids: Vec<_> = within(target.sessions())
        .await
        .unwrap_or_default()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![session], "the target holds the one session");

    within(init.close()).await.expect("closed");
    let seen = until(&mut events, |e| matches!(e, SessionEvent::Ended { .. })).await;
    assert_eq!(
        seen.last(),
        Some(&SessionEvent::Ended { result: Ok(()) }),
        "{seen:?}"
    );
}

#[tokio::test]
async fn session_events_shutdown_notice_then_restart_replaces_the_session_with_failed_calls() {
    support::init_logs();
    let old = echo_target("127.0.0.1:0".parse().expect("addr")).await;
    let addr = tcp_addr(&old);
    let init = initiator(addr, InitiatorOptions::default());
    // Current-thread runtime: subscribed before the driver first runs.
    let mut events = init.events();
    within(init.wait_connected()).await.expect("first login");
    let session = match until(&mut events, |_| true).await.as_slice() {
        [SessionEvent::Connected { session }] => *session,
        other => panic!("expected Connected first, got {other:?}"),
    };
    // A command the old target will not finish (not retry-safe): the
    // restart fails it, "may have executed".
    let slow = tokio::spawn({
        let init = init.clone();
        async move { init.call(Bytes::from_static(b"slow")).await }
    });
    within(async {
        while old
            .sessions()
            .await
            .unwrap_or_default()
            .iter()
            .map(|s| s.info.running)
            .sum::<usize>()
            == 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let up = Duration::from_millis(300);
    let hold = Duration::from_millis(200);
    let shutdown = tokio::spawn(async move { old.shutdown(up, Some(hold)).await });
    let seen = until(&mut events, |e| {
        matches!(e, SessionEvent::ShutdownNotice { .. })
    })
    .await;
    match seen.last() {
        Some(SessionEvent::ShutdownNotice {
            up_for,
            back_after: Some(back),
        }) => {
            assert!(*up_for <= up, "up for {up_for:?}");
            assert!(*back >= *up_for, "back after {back:?}, up for {up_for:?}");
        }
        other => panic!("expected the notice, got {other:?}"),
    }
    within(shutdown).await.expect("shutdown");
    // The restarted target: same port, no state.
    let _new = echo_target(addr).await;

    let seen = until(&mut events, |e| matches!(e, SessionEvent::Recovered { .. })).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, SessionEvent::ConnectionLost { .. })),
        "the loss is reported: {seen:?}"
    );
    let replaced: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Replaced {
                lost,
                reissued,
                failed_calls,
            } => Some((lost.clone(), *reissued, *failed_calls)),
            _ => None,
        })
        .collect();
    match replaced.as_slice() {
        [(lost, 0, 1)] => assert!(
            matches!(lost, SessionLoss::Rejected { session: s, .. } if *s == session),
            "the old session was lost: {lost:?}"
        ),
        other => panic!("expected one replacement failing one call: {other:?} in {seen:?}"),
    }
    match seen.last() {
        Some(SessionEvent::Recovered {
            session: new,
            stateful: false,
        }) => assert_ne!(*new, session, "a new session"),
        other => panic!("expected the new session's login, got {other:?}"),
    }
    let slow = within(slow).await.expect("task");
    let e = slow.expect_err("the restart lost the slow command");
    assert!(e.may_have_executed(), "{e}");
    within(init.call(Bytes::from_static(b"after")))
        .await
        .expect("the new session works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_events_wait_connected_waits_for_the_first_login() {
    support::init_logs();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let init = initiator(addr, InitiatorOptions::default());
    let waiting = tokio::spawn({
        let init = init.clone();
        async move { init.wait_connected().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "no target yet: still waiting");
    let _target = echo_target(addr).await;
    within(waiting)
        .await
        .expect("task")
        .expect("connected once the target is up");
    // At once from now on.
    within(init.wait_connected()).await.expect("connected");
}
