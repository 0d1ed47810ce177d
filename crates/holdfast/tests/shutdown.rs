//! Graceful hand-off over real sockets: a target announces its shutdown
//! (up for 1 s, come back no sooner than 2 s after that), stops, and a new
//! target process (fresh state) takes the same port. The initiator must not
//! reconnect early, must not start commands the notice says cannot finish,
//! and must report the stateless outcome per call, honestly.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, ErrorCode, Frame, Login, LoginKind, RejectReason,
    NEVER_MS, VERSION_MAX, VERSION_MIN,
};
use holdfast::proto::{SessionId, SessionLoss, SessionSecret};
use holdfast::transport::ConnectFuture;
use holdfast::{
    service_fn, CallError, CallOptions, Connector, Endpoint, EndpointConnector, Initiator,
    InitiatorConfig, InitiatorOptions, Request, Target, TargetOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connector that records when each connection attempt starts.
struct Recording {
    inner: EndpointConnector,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl Connector for Recording {
    fn connect(&self) -> ConnectFuture<'_> {
        self.attempts.lock().expect("attempts").push(Instant::now());
        self.inner.connect()
    }
}

/// A counter service whose `slow` commands take `slow` to run.
async fn start_target(
    endpoint: &Endpoint,
    value: Arc<AtomicU64>,
    slow: Duration,
) -> std::io::Result<Target> {
    let service = service_fn(move |req: Request| {
        let value = value.clone();
        async move {
            if req.payload.as_ref() == b"slow" {
                tokio::time::sleep(slow).await;
            }
            let v = value.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(&v.to_be_bytes()))
        }
    });
    Target::serve(
        std::slice::from_ref(endpoint),
        TargetOptions::default(),
        service,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_notice_is_honoured_and_the_restart_is_reported_statelessly() {
    support::init_logs();
    let max_up = Duration::from_secs(1);
    let min_hold = Duration::from_secs(2);

    let old_value = Arc::new(AtomicU64::new(0));
    let old = start_target(
        &Endpoint::Tcp("127.0.0.1:0".parse().expect("addr")),
        old_value.clone(),
        Duration::from_secs(5),
    )
    .await
    .expect("serve");
    let endpoint = old.endpoints()[0].clone();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let connector = Recording {
        inner: EndpointConnector::new(endpoint.clone(), Duration::from_millis(500)),
        attempts: attempts.clone(),
    };
    let init = Initiator::start(Arc::new(connector), {
        let mut o = InitiatorOptions::default();
        // This application's commands may take up to 1.5 s: after a
        // notice that leaves less, none may start.
        o.protocol = {
            let mut ic =
                InitiatorConfig::default().with_detection_bound(Duration::from_millis(500));
            ic.shutdown_margin = Duration::from_millis(1500);
            ic
        };
        o
    });
    init.call(Bytes::from_static(b"warm"))
        .await
        .expect("warm-up call");

    // Two slow commands the old target will never answer: one plain, one
    // declared retry-safe.
    let plain = tokio::spawn({
        let init = init.clone();
        async move { init.call(Bytes::from_static(b"slow")).await }
    });
    let safe = tokio::spawn({
        let init = init.clone();
        async move {
            init.call_with(Bytes::from_static(b"slow"), CallOptions::RETRY_SAFE)
                .await
        }
    });
    // Let both reach the target (its service is now running them).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let notice = Instant::now();
    let shutdown = tokio::spawn(async move { old.shutdown(max_up, Some(min_hold)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A command issued after the notice cannot finish in time (the notice
    // leaves under a second, the application's margin is 1.5 s): it is held
    // back and never reaches the old target.
    let late = tokio::spawn({
        let init = init.clone();
        async move { init.call(Bytes::from_static(b"late")).await }
    });
    shutdown.await.expect("shutdown");
    let stopped = notice.elapsed();
    assert!(
        stopped >= max_up,
        "the target stopped {stopped:?} after its notice, before max_up"
    );
    let attempts_before_restart = attempts.lock().expect("attempts").len();

    // The "restarted" target: same port, no state.
    let new_value = Arc::new(AtomicU64::new(0));
    let new = start_target(&endpoint, new_value.clone(), Duration::ZERO)
        .await
        .expect("restart on the same port");

    let plain = plain.await.expect("task");
    let safe = safe.await.expect("task");
    let late = late.await.expect("task");
    let after = init
        .call(Bytes::from_static(b"after"))
        .await
        .expect("a call on the new session");

    let attempts = attempts.lock().expect("attempts").clone();
    let reconnects: Vec<Duration> = attempts
        .iter()
        .filter(|t| **t > notice)
        .map(|t| t.duration_since(notice))
        .collect();
    eprintln!(
        "target stopped {stopped:?} after the notice; reconnect attempts at {reconnects:?}; \
         plain={plain:?} safe={safe:?} late={late:?}"
    );
    assert_eq!(
        attempts_before_restart, 1,
        "the initiator reconnected while the target was still announcing its hold"
    );
    assert!(
        reconnects[0] >= max_up + min_hold,
        "first reconnect {:?} after the notice, before up time + hold",
        reconnects[0]
    );

    // The honest per-call outcome of a restart.
    match plain {
        Err(CallError::MayHaveExecuted(SessionLoss::Rejected { .. })) => {}
        other => panic!("the in-flight plain command must fail as may-have-executed: {other:?}"),
    }
    match late {
        Err(e @ CallError::NotExecuted(_)) => {
            assert!(!e.may_have_executed());
        }
        other => panic!("the held-back command must fail as not executed: {other:?}"),
    }
    let safe = safe.expect("the retry-safe command is re-issued on the new session");
    assert_eq!(
        safe.as_ref(),
        1u64.to_be_bytes(),
        "it ran first on the new target"
    );
    assert_eq!(after.as_ref(), 2u64.to_be_bytes());
    assert_eq!(new_value.load(Ordering::SeqCst), 2);
    assert_eq!(
        old_value.load(Ordering::SeqCst),
        1,
        "the old target only finished the warm-up call (its slow calls were cut off)"
    );
    let stats = init.stats().await.expect("stats");
    assert_eq!(stats.stateless_recoveries, 1, "{stats:?}");
    assert_eq!(stats.reissued, 1, "{stats:?}");
    assert_eq!(stats.calls_failed, 2, "{stats:?}");
    let tstats = new.stats().await.expect("stats");
    assert_eq!(tstats.recoveries_rejected, 1, "{tstats:?}");
}

/// An initiator to `endpoint` that gives up after `session_loss`.
fn initiator_with_loss_timeout(endpoint: Endpoint, session_loss: Duration) -> Initiator {
    Initiator::start(
        Arc::new(EndpointConnector::new(endpoint, Duration::from_millis(500))),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = {
                let mut ic =
                    InitiatorConfig::default().with_detection_bound(Duration::from_millis(500));
                ic.session_loss_timeout = Some(session_loss);
                ic
            };
            o
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_announces_no_return_ends_the_session_at_once() {
    support::init_logs();
    let value = Arc::new(AtomicU64::new(0));
    let target = start_target(
        &Endpoint::Tcp("127.0.0.1:0".parse().expect("addr")),
        value,
        Duration::from_secs(5),
    )
    .await
    .expect("serve");
    let init = initiator_with_loss_timeout(target.endpoints()[0].clone(), Duration::from_secs(60));
    init.call(Bytes::from_static(b"warm"))
        .await
        .expect("warm-up");
    let slow = tokio::spawn({
        let init = init.clone();
        async move { init.call(Bytes::from_static(b"slow")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    target.shutdown(Duration::from_millis(200), None).await;
    let err = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("the outstanding call must fail promptly, not wait 60 s")
        .expect("task")
        .expect_err("the target is gone");
    eprintln!("after {:?}: {err}", start.elapsed());
    assert!(err.may_have_executed(), "it was sent: {err}");
    assert!(
        matches!(err, CallError::MayHaveExecuted(SessionLoss::TargetGone)),
        "{err:?}"
    );
    let later = init.call(Bytes::from_static(b"later")).await;
    assert!(
        matches!(&later, Err(e) if !e.may_have_executed()),
        "a call after the end is refused, not executed: {later:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_target_fails_calls_after_the_session_loss_timeout() {
    support::init_logs();
    let session_loss = Duration::from_millis(1500);
    let value = Arc::new(AtomicU64::new(0));
    let target = start_target(
        &Endpoint::Tcp("127.0.0.1:0".parse().expect("addr")),
        value,
        Duration::from_secs(30),
    )
    .await
    .expect("serve");
    let init = initiator_with_loss_timeout(target.endpoints()[0].clone(), session_loss);
    init.call(Bytes::from_static(b"warm"))
        .await
        .expect("warm-up");
    let slow = tokio::spawn({
        let init = init.clone();
        async move { init.call(Bytes::from_static(b"slow")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No notice: the process is gone and the port refuses connections.
    let start = Instant::now();
    drop(target);
    let err = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the outstanding call must fail within the session-loss timeout")
        .expect("task")
        .expect_err("the target is gone");
    let took = start.elapsed();
    eprintln!("after {took:?}: {err}");
    assert!(
        matches!(err, CallError::MayHaveExecuted(SessionLoss::GaveUp(_))),
        "{err:?}"
    );
    assert!(
        took >= session_loss - Duration::from_millis(100),
        "gave up after {took:?}"
    );
    assert!(
        took < session_loss + Duration::from_secs(2),
        "gave up after {took:?}"
    );
}

/// A LOGIN for a new session, as raw bytes.
fn raw_new_login() -> Vec<u8> {
    encode_to_vec(
        &Frame::Login(Login {
            min_version: VERSION_MIN,
            max_version: VERSION_MAX,
            kind: LoginKind::New,
            digests: Digests::NONE,
            session: SessionId(0),
            secret: SessionSecret([0; 16]),
            response_ack: 0,
            max_frame: 1 << 20,
            keepalive_ms: 1000,
            requested_credits: 8,
            host: None,
        }),
        Digests::NONE,
    )
}

/// A hand-driven connection to a target: raw frames, no initiator.
struct Raw {
    stream: tokio::net::TcpStream,
    decoder: Decoder,
    pending: Vec<u8>,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Raw> {
        Ok(Raw {
            stream: tokio::net::TcpStream::connect(addr).await?,
            decoder: Decoder::new(Direction::ToInitiator, 1 << 20),
            pending: Vec::new(),
        })
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next frame from the target (`None` at EOF), within 5 s.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            let mut input = &self.pending[..];
            let decoded = self.decoder.decode(&mut input).expect("a valid frame");
            let used = self.pending.len() - input.len();
            self.pending.drain(..used);
            if decoded.is_some() {
                return decoded;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf))
                .await
                .expect("the target answers within 5 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_up_time_new_logins_are_rejected_with_shutting_down() {
    support::init_logs();
    let target = start_target(
        &Endpoint::Tcp("127.0.0.1:0".parse().expect("addr")),
        Arc::new(AtomicU64::new(0)),
        Duration::ZERO,
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    let mut attached = Raw::connect(addr).await.expect("connect");
    attached.send(&raw_new_login()).await;
    assert!(matches!(attached.next().await, Some(Frame::LoginAccept(_))));

    let up = Duration::from_secs(1);
    let started = Instant::now();
    let shutdown = tokio::spawn(async move { target.shutdown(up, None).await });
    // The notice reaches the attached connection: "will not return".
    match attached.next().await {
        Some(Frame::Shutdown { min_hold_ms, .. }) => assert_eq!(min_hold_ms, NEVER_MS),
        other => panic!("expected the shutdown notice, got {other:?}"),
    }
    // During the up time a newcomer is answered, not refused (§10.1).
    let mut newcomer = Raw::connect(addr)
        .await
        .expect("the listener must stay open during the up time");
    newcomer.send(&raw_new_login()).await;
    match newcomer.next().await {
        Some(Frame::LoginReject(r)) => {
            assert_eq!(r.reason, RejectReason::ShuttingDown);
            assert_eq!(r.retry_after_ms, NEVER_MS, "the target will not return");
        }
        other => panic!("expected LOGIN_REJECT ShuttingDown, got {other:?}"),
    }
    assert!(started.elapsed() < up, "the checks ran within the up time");
    // At the end of the up time everything closes and the target stops.
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("the target stops after its up time")
        .expect("task");
    assert!(started.elapsed() >= up, "stopped before the up time ended");
    match attached.next().await {
        Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::Shutdown),
        other => panic!("expected ERROR Shutdown, got {other:?}"),
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed once the target stopped"
    );
}
