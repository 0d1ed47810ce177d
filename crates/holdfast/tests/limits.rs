//! Defensive limits over real sockets: a client that connects and says
//! nothing, one that announces a 4 GiB frame, one too many connections and
//! one too many sessions each cost a bounded amount and are dropped, while
//! the target keeps serving everyone else. Also: the Unix socket transport.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::{
    Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions, Target,
    TargetConfig, TargetOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn target(protocol: TargetConfig) -> (Target, Endpoint, Arc<AtomicU64>) {
    let value = Arc::new(AtomicU64::new(0));
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        {
            let mut o = TargetOptions::default();
            o.protocol = protocol;
            o
        },
        support::counter(value.clone()),
    )
    .await
    .expect("serve");
    let endpoint = target.endpoints()[0].clone();
    (target, endpoint, value)
}

fn initiator(endpoint: Endpoint, protocol: InitiatorConfig) -> Initiator {
    Initiator::start(
        Arc::new(EndpointConnector::new(endpoint, Duration::from_secs(2))),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = protocol;
            o
        },
    )
}

fn tcp_addr(endpoint: &Endpoint) -> std::net::SocketAddr {
    match endpoint {
        Endpoint::Tcp(a) => *a,
        other => panic!("expected a TCP endpoint, got {other}"),
    }
}

/// Reads until the target closes the connection; returns what it sent and
/// how long that took. Fails the test if the target keeps it open for 5 s.
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the target kept a hostile connection open for 5 s"),
        }
    }
}

/// Asserts `sent` starts with an ERROR frame (type 7) carrying `code`.
fn assert_error_frame(sent: &[u8], code: u16) {
    assert!(sent.len() >= 12, "expected an ERROR frame, got {sent:02x?}");
    assert_eq!(sent[0], 7, "expected an ERROR frame, got {sent:02x?}");
    assert_eq!(u16::from_be_bytes([sent[8], sent[9]]), code, "{sent:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_login_timeout() {
    support::init_logs();
    let login_timeout = Duration::from_millis(300);
    let (target, endpoint, _) = target({
        let mut tc = TargetConfig::default();
        tc.login_timeout = login_timeout;
        tc
    })
    .await;
    let mut silent = TcpStream::connect(tcp_addr(&endpoint))
        .await
        .expect("connect");
    let (sent, took) = read_until_closed(&mut silent).await;
    assert!(
        took >= login_timeout - Duration::from_millis(20),
        "dropped after {took:?}"
    );
    assert!(
        took < login_timeout + Duration::from_secs(1),
        "dropped after {took:?}"
    );
    // The reason travels as an ERROR frame (type 7, code 11: login timeout)
    // before the close.
    assert_error_frame(&sent, 11);
    let stats = target.stats().await.expect("stats");
    assert_eq!(stats.timeouts, 1, "{stats:?}");
    assert_eq!(
        stats.protocol_errors, 0,
        "silence is not malformed: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_gibibyte_frame_header_is_refused_at_once() {
    support::init_logs();
    let (target, endpoint, value) = target(TargetConfig::default()).await;
    let mut hostile = TcpStream::connect(tcp_addr(&endpoint))
        .await
        .expect("connect");
    // A LOGIN header announcing 0xFFFF_FFFF bytes of body.
    hostile
        .write_all(&[0x01, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let (sent, took) = read_until_closed(&mut hostile).await;
    assert!(took < Duration::from_secs(1), "dropped after {took:?}");
    assert_error_frame(&sent, 3); // code 3: frame too large
    let stats = target.stats().await.expect("stats");
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
    assert!(stats.bytes_in <= 8, "{stats:?}");

    // Everyone else is still served.
    let init = initiator(endpoint, InitiatorConfig::default());
    init.call(Bytes::from_static(b"x")).await.expect("call");
    assert_eq!(value.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_without_a_login() {
    support::init_logs();
    let (_target, endpoint, _) = target({
        let mut tc = TargetConfig::default();
        tc.max_connections = 2;
        tc
    })
    .await;
    let _a = TcpStream::connect(tcp_addr(&endpoint))
        .await
        .expect("connect");
    let _b = TcpStream::connect(tcp_addr(&endpoint))
        .await
        .expect("connect");
    let mut c = TcpStream::connect(tcp_addr(&endpoint))
        .await
        .expect("connect");
    let (sent, took) = read_until_closed(&mut c).await;
    assert!(sent.is_empty(), "the refused connection got {sent:02x?}");
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_limit_fail_without_executing() {
    support::init_logs();
    let (_target, endpoint, value) = target({
        let mut tc = TargetConfig::default();
        tc.max_sessions = 2;
        tc
    })
    .await;
    let first = initiator(endpoint.clone(), InitiatorConfig::default());
    let second = initiator(endpoint.clone(), InitiatorConfig::default());
    first
        .call(Bytes::from_static(b"1"))
        .await
        .expect("first session");
    second
        .call(Bytes::from_static(b"2"))
        .await
        .expect("second session");
    let third = initiator(endpoint, {
        let mut ic = InitiatorConfig::default();
        ic.session_loss_timeout = Some(Duration::from_millis(500));
        ic
    });
    let start = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        third.call(Bytes::from_static(b"3")),
    )
    .await
    .expect("the third session must give up within its session-loss timeout")
    .expect_err("the target is at its session limit");
    eprintln!("third session: {err} after {:?}", start.elapsed());
    assert!(!err.may_have_executed(), "{err}");
    assert_eq!(value.load(Ordering::SeqCst), 2);
    // The first two sessions are unaffected.
    first
        .call(Bytes::from_static(b"1"))
        .await
        .expect("first session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_carry_sessions_exactly_once() {
    support::init_logs();
    let dir = std::env::temp_dir().join(format!("holdfast-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("target.sock");
    let _ = std::fs::remove_file(&path);
    let value = Arc::new(AtomicU64::new(0));
    // One target on two endpoints: a Unix socket and TCP.
    let target = Target::serve(
        &[
            Endpoint::Unix(path.clone()),
            Endpoint::Tcp("127.0.0.1:0".parse().expect("addr")),
        ],
        TargetOptions::default(),
        support::counter(value.clone()),
    )
    .await
    .expect("serve on a Unix socket and TCP");
    assert_eq!(target.endpoints()[0], Endpoint::Unix(path.clone()));
    let over_tcp = initiator(target.endpoints()[1].clone(), InitiatorConfig::default());
    over_tcp
        .call(Bytes::from_static(b"+1"))
        .await
        .expect("a call over TCP");
    let init = initiator(Endpoint::Unix(path.clone()), InitiatorConfig::default());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let init = init.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 1;
            for _ in 0..250 {
                let r = init.call(Bytes::from_static(b"+1")).await.expect("call");
                let v = u64::from_be_bytes(r.as_ref().try_into().expect("8 bytes"));
                assert!(v > last, "responses of one caller increase");
                last = v;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(value.load(Ordering::SeqCst), 1001);
    init.close().await.expect("clean close");
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_dropped_at_the_write_queue_bound() {
    // A PING flood no longer fills the queue (one PONG answers a whole
    // batch of PINGs, tests/target_bounds.rs), so the peer asks for 64
    // responses of 64 KiB (4 MiB) and never reads them.
    use holdfast::proto::wire::{encode_to_vec, Digests, Frame, Login, LoginKind};
    use holdfast::proto::{SessionId, SessionSecret};
    support::init_logs();
    let limit = 64 * 1024;
    let body = Bytes::from(vec![0x33u8; 64 * 1024]);
    let service = holdfast::service_fn(move |_req: holdfast::Request| {
        std::future::ready(Ok::<_, std::convert::Infallible>(body.clone()))
    });
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        {
            let mut o = TargetOptions::default();
            o.max_write_queue = Some(limit);
            o
        },
        service,
    )
    .await
    .expect("serve");
    let addr = tcp_addr(&target.endpoints()[0]);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(addr).await.expect("connect");
    let login = Frame::Login(Login {
        min_version: 1,
        max_version: 1,
        kind: LoginKind::New,
        digests: Digests::NONE,
        session: SessionId(0),
        secret: SessionSecret([0; 16]),
        response_ack: 0,
        max_frame: 1 << 20,
        keepalive_ms: 10_000,
        requested_credits: 64,
        host: None,
    });
    let mut bytes = encode_to_vec(&login, Digests::NONE);
    for seq in 1..=64 {
        let cmd = Frame::Command {
            seq,
            ack: 0,
            payload: Bytes::from_static(b"x"),
        };
        bytes.extend(encode_to_vec(&cmd, Digests::NONE));
    }
    stream.write_all(&bytes).await.expect("commands");
    // Dropped: we read what the kernel still held, then the end, well
    // before all 4 MiB.
    let (got, _) = read_until_closed(&mut stream).await;
    assert!(
        got.len() < 4 << 20,
        "a peer that did not read got all {} bytes",
        got.len()
    );
    let stats = target.stats().await.expect("stats");
    assert_eq!(stats.sessions_created, 1, "{stats:?}");
}
