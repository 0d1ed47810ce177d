//! What a target connection may have queued, over real sockets: a full
//! response cache sized by the initiator's frame limit goes through (and is
//! sent again after a recovery) however small the target's own frame limit
//! is; a PING flood from a peer that never reads queues almost nothing;
//! sessions are limited per source address; and the memory budget closes
//! the connection that would exceed it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast::proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, Frame, Login, LoginKind, RejectReason,
};
use holdfast::proto::{SessionId, SessionSecret};
use holdfast::{service_fn, Endpoint, Request, Target, TargetConfig, TargetOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A service that answers every command with `size` bytes.
fn sized(
    size: usize,
) -> holdfast::ServiceFn<
    impl FnMut(Request) -> std::future::Ready<Result<Bytes, std::convert::Infallible>> + Clone,
> {
    let body = Bytes::from(vec![0xA5u8; size]);
    service_fn(move |_req: Request| std::future::ready(Ok(body.clone())))
}

async fn serve<S: holdfast::SessionService>(protocol: TargetConfig, service: S) -> Target {
    Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        {
            let mut o = TargetOptions::default();
            o.protocol = protocol;
            o
        },
        service,
    )
    .await
    .expect("serve")
}

fn addr(target: &Target) -> std::net::SocketAddr {
    match &target.endpoints()[0] {
        Endpoint::Tcp(a) => *a,
        other => panic!("expected a TCP endpoint, got {other}"),
    }
}

fn login(keepalive_ms: u32) -> Login {
    Login {
        min_version: 1,
        max_version: 1,
        kind: LoginKind::New,
        digests: Digests::NONE,
        session: SessionId(0),
        secret: SessionSecret([0; 16]),
        response_ack: 0,
        max_frame: 1 << 16,
        keepalive_ms,
        requested_credits: 8,
        host: None,
    }
}

/// Reads frames from `stream` until `stop` says so; returns them and the
/// bytes read. Fails the test after 10 s.
async fn read_frames(
    stream: &mut TcpStream,
    mut stop: impl FnMut(&Frame) -> bool,
) -> (Vec<Frame>, usize) {
    let mut decoder = Decoder::new(Direction::ToInitiator, u32::MAX);
    let mut frames = Vec::new();
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the target went silent")
            .expect("read");
        if n == 0 {
            return (frames, total);
        }
        total += n;
        let mut input = &buf[..n];
        while let Some(f) = decoder.decode(&mut input).expect("a valid frame") {
            if let Frame::LoginAccept(a) = &f {
                decoder.set_digests(a.digests);
            }
            let done = stop(&f);
            frames.push(f);
            if done {
                return (frames, total);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cache_sized_by_the_initiators_frame_limit_is_resent_whole() {
    // The target takes frames of 64 KiB; the initiator takes 4 MiB and is
    // owed 16 responses of 2 MiB. A write-queue bound computed from the
    // target's own limit (16 x 64 KiB + 1 MiB) is below what the session
    // legitimately owes, so the recovery that resends the cache was
    // dropped, and so was every later one: the session never progressed.
    support::init_logs();
    // Every command waits for all 16 (and the test), so the test knows
    // when the service has answered them all.
    let barrier = Arc::new(tokio::sync::Barrier::new(17));
    let body = Bytes::from(vec![0x5Au8; 2 << 20]);
    let service = {
        let barrier = barrier.clone();
        service_fn(move |_req: Request| {
            let (barrier, body) = (barrier.clone(), body.clone());
            async move {
                barrier.wait().await;
                Ok::<_, std::convert::Infallible>(body)
            }
        })
    };
    let target = serve(
        {
            let mut tc = TargetConfig::default();
            tc.max_frame = 64 * 1024;
            tc.credits = 16;
            tc
        },
        service,
    )
    .await;
    let big_login = Login {
        max_frame: 4 << 20,
        requested_credits: 16,
        ..login(500)
    };
    // Connection A: log in, send 16 commands, leave once all are answered.
    let mut a = TcpStream::connect(addr(&target)).await.expect("connect");
    a.write_all(&encode_to_vec(
        &Frame::Login(big_login.clone()),
        Digests::NONE,
    ))
    .await
    .expect("login");
    let (frames, _) = read_frames(&mut a, |f| matches!(f, Frame::LoginAccept(_))).await;
    let Some(Frame::LoginAccept(accept)) = frames.last() else {
        panic!("no LOGIN_ACCEPT: {frames:?}");
    };
    let mut commands = Vec::new();
    for seq in 1..=16 {
        commands.extend(encode_to_vec(
            &Frame::Command {
                seq,
                ack: 0,
                payload: Bytes::from_static(b"big"),
            },
            Digests::NONE,
        ));
    }
    a.write_all(&commands).await.expect("commands");
    tokio::time::timeout(Duration::from_secs(10), barrier.wait())
        .await
        .expect("the service got 16 commands");
    drop(a);
    // Connection B, reading slowly (small receive buffer): recover without
    // acknowledging anything; the whole cache (32 MiB) is owed again.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    let mut b = socket.connect(addr(&target)).await.expect("connect");
    let recover = Login {
        kind: LoginKind::Recover,
        session: accept.session,
        secret: accept.secret,
        ..big_login
    };
    b.write_all(&encode_to_vec(&Frame::Login(recover), Digests::NONE))
        .await
        .expect("recover");
    let mut answered = std::collections::BTreeSet::new();
    let (frames, bytes) = read_frames(&mut b, |f| {
        if let Frame::Response { command, .. } = f {
            answered.insert(*command);
        }
        answered.len() == 16
    })
    .await;
    assert_eq!(
        answered.len(),
        16,
        "the recovered connection was dropped after {bytes} bytes ({} frames)",
        frames.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_peer_that_never_reads_queues_almost_nothing() {
    // 8 MiB of PINGs (about 350,000) sent without reading: one PONG per
    // batch of input, not one per PING, so what comes back is tiny.
    support::init_logs();
    let target = serve(
        TargetConfig::default(),
        support::counter(Default::default()),
    )
    .await;
    let mut stream = TcpStream::connect(addr(&target)).await.expect("connect");
    stream
        .write_all(&encode_to_vec(&Frame::Login(login(500)), Digests::NONE))
        .await
        .expect("login");
    let mut batch = Vec::new();
    for token in 0..4096u64 {
        batch.extend(encode_to_vec(&Frame::Ping { token, ack: 0 }, Digests::NONE));
    }
    let mut sent = 0;
    while sent < 8 << 20 {
        tokio::time::timeout(Duration::from_secs(10), stream.write_all(&batch))
            .await
            .expect("the target stopped reading PINGs")
            .expect("write");
        sent += batch.len();
    }
    let last = Frame::Ping {
        token: u64::MAX,
        ack: 0,
    };
    stream
        .write_all(&encode_to_vec(&last, Digests::NONE))
        .await
        .expect("last PING");
    let (frames, bytes) = read_frames(
        &mut stream,
        |f| matches!(f, Frame::Pong { token, .. } if *token == u64::MAX),
    )
    .await;
    let pongs = frames
        .iter()
        .filter(|f| matches!(f, Frame::Pong { .. }))
        .count();
    eprintln!("{sent} bytes of PINGs answered by {pongs} PONGs ({bytes} bytes)");
    assert!(
        matches!(
            frames.last(),
            Some(Frame::Pong {
                token: u64::MAX,
                ..
            })
        ),
        "the connection was dropped: {:?}",
        frames.last()
    );
    assert!(
        bytes < 256 * 1024,
        "{sent} bytes of PINGs made the target queue {bytes} bytes ({pongs} PONGs)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_limited_per_source_address() {
    support::init_logs();
    let target = serve(
        {
            let mut tc = TargetConfig::default();
            tc.max_sessions_per_source = 2;
            tc
        },
        support::counter(Default::default()),
    )
    .await;
    let mut answers = Vec::new();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr(&target)).await.expect("connect");
        stream
            .write_all(&encode_to_vec(&Frame::Login(login(500)), Digests::NONE))
            .await
            .expect("login");
        let (frames, _) = read_frames(&mut stream, |_| true).await;
        answers.push(frames.into_iter().next().expect("an answer"));
        open.push(stream);
    }
    assert!(matches!(answers[0], Frame::LoginAccept(_)), "{answers:?}");
    assert!(matches!(answers[1], Frame::LoginAccept(_)), "{answers:?}");
    match &answers[2] {
        Frame::LoginReject(r) => assert_eq!(r.reason, RejectReason::TooManySessions),
        other => panic!("the third session from 127.0.0.1 got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_responses_beyond_the_memory_budget_close_their_connection() {
    // A peer that asks for 16 responses of 1 MiB and never reads them: its
    // session legitimately owes them, but they do not fit the target's
    // 8 MiB memory budget (whatever the kernel's socket buffers take), so
    // the connection goes (the session stays).
    support::init_logs();
    let target = serve(
        {
            let mut tc = TargetConfig::default();
            tc.memory_budget = 8 << 20;
            tc
        },
        sized(1 << 20),
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(addr(&target)).await.expect("connect");
    let mut bytes = encode_to_vec(
        &Frame::Login(Login {
            max_frame: 2 << 20,
            requested_credits: 16,
            keepalive_ms: 10_000,
            ..login(500)
        }),
        Digests::NONE,
    );
    for seq in 1..=16 {
        bytes.extend(encode_to_vec(
            &Frame::Command {
                seq,
                ack: 0,
                payload: Bytes::from_static(b"x"),
            },
            Digests::NONE,
        ));
    }
    stream.write_all(&bytes).await.expect("commands");
    // The target drops the connection: we read to its end (what the
    // kernel still held), within 10 s.
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0usize;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "16 MiB queued for a peer with an 8 MiB memory budget ({read} bytes read)"
    );
    assert!(read < 16 << 20, "every response got through: {read} bytes");
    let stats = target.stats().await.expect("stats");
    assert_eq!(stats.sessions_created, 1);
}
