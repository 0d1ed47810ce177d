//! The fault proxy on real loopback sockets: every fault kind, per
//! direction, the hold-then-release shape (bytes held on one link while a
//! new link works, delivered late), the seeded schedule, and the control
//! protocol, including hostile input. Every test is bounded in time.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast::chaos::{
    parse_command, ChaosError, ControlCommand, ControlOptions, ControlServer, Direction, Fault,
    FaultClass, FaultKind, FaultSpec, Proxy, ProxyOptions, ProxySelector, Schedule, Scope,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Fails the test if `f` takes longer than 5 s.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("finished within 5 s")
}

/// A target the test drives by hand, and a proxy in front of it.
async fn setup(options: ProxyOptions) -> (TcpListener, Proxy) {
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = target.local_addr().expect("addr");
    let proxy = Proxy::bind_with("127.0.0.1:0".parse().expect("addr"), addr, options)
        .await
        .expect("proxy");
    (target, proxy)
}

/// A new link: (the client's end, the target's end).
async fn link(target: &TcpListener, proxy: &Proxy) -> (TcpStream, TcpStream) {
    let client = within(TcpStream::connect(proxy.addr()))
        .await
        .expect("connect");
    let (server, _) = within(target.accept()).await.expect("accept");
    (client, server)
}

async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    within(s.read_exact(&mut buf)).await.expect("read");
    buf
}

/// Asserts nothing (no byte, no EOF, no error) arrives for `d`.
async fn silent(s: &mut TcpStream, d: Duration) {
    let mut b = [0u8; 1];
    if let Ok(r) = tokio::time::timeout(d, s.read(&mut b)).await {
        panic!("expected silence, got {r:?}");
    }
}

/// Waits for `cond` (polled every 10 ms, at most 5 s).
async fn eventually(mut cond: impl FnMut() -> bool) {
    within(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn spec(kind: FaultKind, direction: Direction, scope: Scope) -> FaultSpec {
    FaultSpec::new(kind, direction, scope)
}

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_both_ways_and_counts() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    c.write_all(b"hello").await.expect("write");
    assert_eq!(read_n(&mut s, 5).await, b"hello");
    s.write_all(b"world!").await.expect("write");
    assert_eq!(read_n(&mut c, 6).await, b"world!");
    eventually(|| {
        let st = proxy.stats();
        st.bytes_up == 5 && st.bytes_down == 6
    })
    .await;
    let st = proxy.stats();
    assert_eq!((st.links_accepted, st.links_open), (1, 1));
    // A FIN travels through and the link closes once both sides are done.
    drop(c);
    let mut rest = Vec::new();
    within(s.read_to_end(&mut rest)).await.expect("eof");
    drop(s);
    eventually(|| proxy.stats().links_open == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_both_sends_rst_to_both_sides() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    c.write_all(b"x").await.expect("write");
    read_n(&mut s, 1).await;
    assert_eq!(proxy.inject(Fault::Reset), 1);
    let mut b = [0u8; 8];
    for side in [&mut c, &mut s] {
        let r = within(side.read(&mut b)).await;
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    }
    eventually(|| proxy.open_links() == 0).await;
    assert_eq!(proxy.stats().faults.get("reset"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_up_resets_the_target_and_silences_the_client() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    assert_eq!(
        proxy.apply(spec(FaultKind::Reset, Direction::Up, Scope::All)),
        1
    );
    let mut b = [0u8; 8];
    let r = within(s.read(&mut b)).await;
    assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    // The client's side stays open: its bytes vanish, nothing comes back.
    c.write_all(b"anyone?").await.expect("write");
    silent(&mut c, QUIET).await;
    drop(c);
    eventually(|| proxy.open_links() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_up_only_still_lets_down_flow_until_healed() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    proxy.apply(spec(FaultKind::Blackhole, Direction::Up, Scope::Newest));
    c.write_all(b"up").await.expect("write");
    s.write_all(b"down").await.expect("write");
    assert_eq!(read_n(&mut c, 4).await, b"down");
    silent(&mut s, QUIET).await;
    proxy.apply(spec(FaultKind::Heal, Direction::Both, Scope::All));
    assert_eq!(read_n(&mut s, 2).await, b"up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_down_only_still_lets_up_flow() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    proxy.apply(spec(FaultKind::Blackhole, Direction::Down, Scope::All));
    c.write_all(b"up").await.expect("write");
    s.write_all(b"down").await.expect("write");
    assert_eq!(read_n(&mut s, 2).await, b"up");
    silent(&mut c, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_with_jitter_holds_each_chunk_back() {
    let (target, proxy) = setup(ProxyOptions {
        seed: 9,
        ..ProxyOptions::default()
    })
    .await;
    let (mut c, mut s) = link(&target, &proxy).await;
    let delay = FaultKind::Delay {
        base: Duration::from_millis(250),
        jitter: Duration::from_millis(100),
    };
    proxy.apply(spec(delay, Direction::Down, Scope::All));
    for round in 0..3u8 {
        let start = Instant::now();
        s.write_all(&[round]).await.expect("write");
        assert_eq!(read_n(&mut c, 1).await, [round]);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(240),
            "round {round}: {took:?}"
        );
        assert!(took < Duration::from_secs(3), "round {round}: {took:?}");
    }
    // The other direction is not delayed (no timing claim: just flowing).
    c.write_all(b"u").await.expect("write");
    assert_eq!(read_n(&mut s, 1).await, b"u");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limit_paces_the_bytes() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    let rate = 100 * 1024;
    proxy.apply(spec(
        FaultKind::Bandwidth {
            bytes_per_sec: rate,
        },
        Direction::Up,
        Scope::All,
    ));
    let total = 150 * 1024;
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        c.write_all(&vec![7u8; total]).await.expect("write");
        c
    });
    let got = read_n(&mut s, total).await;
    let took = start.elapsed();
    assert!(got.iter().all(|b| *b == 7));
    // 150 KiB at 100 KiB/s: about 1.45 s (the first 5 KiB go at once).
    assert!(took >= Duration::from_millis(1200), "too fast: {took:?}");
    assert!(took < Duration::from_secs(8), "too slow: {took:?}");
    let _c = writer.await.expect("writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_forwards_n_bytes_then_nothing() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    proxy.apply(spec(FaultKind::CutAfter(10), Direction::Up, Scope::All));
    c.write_all(&[1u8; 100]).await.expect("write");
    assert_eq!(read_n(&mut s, 10).await, [1u8; 10]);
    silent(&mut s, QUIET).await;
    // Down is untouched.
    s.write_all(b"ok").await.expect("write");
    assert_eq!(read_n(&mut c, 2).await, b"ok");
}

/// A cut stops the stream; it never punches a hole in it. Bytes past the
/// cut wait in the proxy, and a heal resumes exactly where the cut was (the
/// first version dropped the rest of the chunk it cut, and a heal then
/// delivered a stream with a gap: holdfast saw garbage frames).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_cut_resumes_the_stream_without_a_gap() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    proxy.apply(spec(FaultKind::CutAfter(10), Direction::Up, Scope::All));
    let sent: Vec<u8> = (0..100u8).collect();
    c.write_all(&sent).await.expect("write");
    assert_eq!(read_n(&mut s, 10).await, sent[..10]);
    silent(&mut s, QUIET).await;
    proxy.apply(spec(FaultKind::Heal, Direction::Both, Scope::All));
    assert_eq!(read_n(&mut s, 90).await, sent[10..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_up_sends_fin_and_keeps_down() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    c.write_all(b"before").await.expect("write");
    assert_eq!(read_n(&mut s, 6).await, b"before");
    proxy.apply(spec(FaultKind::HalfClose, Direction::Up, Scope::All));
    let mut rest = Vec::new();
    within(s.read_to_end(&mut rest)).await.expect("eof");
    assert!(rest.is_empty());
    s.write_all(b"still here").await.expect("write");
    assert_eq!(read_n(&mut c, 10).await, b"still here");
    // Later client bytes are dropped, not forwarded.
    c.write_all(b"after").await.expect("write");
    s.write_all(b"!").await.expect("write");
    assert_eq!(read_n(&mut c, 1).await, b"!");
}

/// The stale-command shape: link 1's bytes are held while the client
/// reconnects on link 2, which works normally; link 1's client then dies
/// (RST), and the release delivers the held bytes to the target late,
/// followed by a FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_then_release_delivers_late_after_a_new_link_works() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c1, mut s1) = link(&target, &proxy).await;
    c1.write_all(b"first").await.expect("write");
    assert_eq!(read_n(&mut s1, 5).await, b"first");

    assert_eq!(
        proxy.apply(spec(FaultKind::Hold, Direction::Up, Scope::Newest)),
        1
    );
    c1.write_all(b"stale command").await.expect("write");
    silent(&mut s1, QUIET).await;

    // The client gives up on link 1 and reconnects: link 2 is clean.
    let (mut c2, mut s2) = link(&target, &proxy).await;
    c2.write_all(b"fresh command").await.expect("write");
    assert_eq!(read_n(&mut s2, 13).await, b"fresh command");
    s2.write_all(b"reply").await.expect("write");
    assert_eq!(read_n(&mut c2, 5).await, b"reply");
    assert_eq!(proxy.open_links(), 2);

    // Link 1's client resets; its held bytes still wait in the proxy.
    socket2::SockRef::from(&c1)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c1);
    silent(&mut s1, QUIET).await;

    let released = proxy.apply(spec(FaultKind::Release, Direction::Both, Scope::All));
    assert_eq!(released, 2, "release reaches both open links");
    let mut late = Vec::new();
    within(s1.read_to_end(&mut late))
        .await
        .expect("late bytes, then FIN");
    assert_eq!(late, b"stale command");

    // Link 2 is unaffected.
    c2.write_all(b"more").await.expect("write");
    assert_eq!(read_n(&mut s2, 4).await, b"more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_is_bounded_then_backpressures_and_release_delivers_all() {
    let (target, proxy) = setup(ProxyOptions {
        hold_limit: 64 * 1024,
        ..ProxyOptions::default()
    })
    .await;
    let (c, mut s) = link(&target, &proxy).await;
    proxy.apply(spec(FaultKind::Hold, Direction::Up, Scope::All));
    // Far more than the hold limit plus every kernel buffer on the way.
    let total = 48 << 20;
    let writer = tokio::spawn(async move {
        let mut c = c;
        let chunk = vec![5u8; 1 << 20];
        for _ in 0..total >> 20 {
            c.write_all(&chunk).await.expect("write");
        }
        c
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!writer.is_finished(), "the held direction must push back");
    silent(&mut s, Duration::from_millis(50)).await;
    proxy.apply(spec(FaultKind::Release, Direction::Up, Scope::All));
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    within(async {
        while got < total {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "early EOF at {got}");
            assert!(buf[..n].iter().all(|b| *b == 5));
            got += n;
        }
    })
    .await;
    let _c = within(writer).await.expect("writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_scope_hits_only_the_latest_link_and_inject_hits_all() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c1, mut s1) = link(&target, &proxy).await;
    let (mut c2, mut s2) = link(&target, &proxy).await;
    // Make sure both links are registered and forwarding.
    c1.write_all(b"1").await.expect("write");
    c2.write_all(b"2").await.expect("write");
    read_n(&mut s1, 1).await;
    read_n(&mut s2, 1).await;
    assert_eq!(
        proxy.apply(spec(FaultKind::Blackhole, Direction::Both, Scope::Newest)),
        1
    );
    c1.write_all(b"a").await.expect("write");
    c2.write_all(b"b").await.expect("write");
    assert_eq!(read_n(&mut s1, 1).await, b"a");
    silent(&mut s2, QUIET).await;
    assert_eq!(proxy.inject(Fault::Delay(Duration::from_millis(1))), 2);
    assert_eq!(proxy.stats().faults.get("blackhole"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_proxy_resets_its_links() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    c.write_all(b"x").await.expect("write");
    read_n(&mut s, 1).await;
    drop(proxy);
    let mut b = [0u8; 1];
    let r = within(c.read(&mut b)).await;
    assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_counts_a_connect_failure() {
    let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = gone.local_addr().expect("addr");
    drop(gone);
    let proxy = Proxy::start(addr).await.expect("proxy");
    let mut c = within(TcpStream::connect(proxy.addr()))
        .await
        .expect("connect");
    let mut b = [0u8; 1];
    let r = within(c.read(&mut b)).await;
    assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
    eventually(|| proxy.stats().connect_failures == 1).await;
}

#[test]
fn random_schedules_are_deterministic_per_seed() {
    let d = Duration::from_secs(30);
    let a = Schedule::random(42, d, 25, &FaultClass::ALL);
    assert_eq!(a, Schedule::random(42, d, 25, &FaultClass::ALL));
    assert_ne!(a, Schedule::random(43, d, 25, &FaultClass::ALL));
    assert!(a.steps.windows(2).all(|w| w[0].0 <= w[1].0));
    let only = Schedule::random(42, d, 25, &[FaultClass::Reset, FaultClass::CutAfter]);
    assert_eq!(only.steps.len(), 25);
    assert!(only
        .steps
        .iter()
        .all(|(_, s)| matches!(s.kind, FaultKind::Reset | FaultKind::CutAfter(_))));
    // Every step reads back as a control command.
    for (_, s) in &a.steps {
        let text = s.to_string();
        assert_eq!(
            parse_command(&text).expect("parses"),
            ControlCommand::Fault {
                spec: *s,
                proxy: None
            },
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_runner_applies_every_step_in_time() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let (mut c, mut s) = link(&target, &proxy).await;
    c.write_all(b"x").await.expect("write");
    read_n(&mut s, 1).await;
    let schedule = Schedule::random(5, Duration::from_millis(400), 6, &[FaultClass::Delay]);
    let mut seen = Vec::new();
    let start = Instant::now();
    let report = within(schedule.run(&[&proxy], |at, spec, hit| seen.push((at, *spec, hit)))).await;
    assert!(start.elapsed() >= schedule.span());
    assert_eq!(report.steps, schedule.steps.len());
    assert_eq!(seen.len(), schedule.steps.len());
    assert_eq!(report.applied, schedule.steps.len(), "the link stays open");
    assert_eq!(report.hits.get("delay"), Some(&6));
    assert_eq!(proxy.stats().faults.get("delay"), Some(&6));
}

#[test]
fn control_commands_parse() {
    let fault = |kind, direction, scope, proxy| ControlCommand::Fault {
        spec: FaultSpec::new(kind, direction, scope),
        proxy,
    };
    let cases = [
        (
            "reset",
            fault(FaultKind::Reset, Direction::Both, Scope::All, None),
        ),
        (
            "fault blackhole up newest",
            fault(FaultKind::Blackhole, Direction::Up, Scope::Newest, None),
        ),
        (
            "  FAULT Delay 50ms 20ms down @1 ",
            fault(
                FaultKind::Delay {
                    base: Duration::from_millis(50),
                    jitter: Duration::from_millis(20),
                },
                Direction::Down,
                Scope::All,
                Some(ProxySelector::Index(1)),
            ),
        ),
        (
            "delay 1.5s newest",
            fault(
                FaultKind::Delay {
                    base: Duration::from_millis(1500),
                    jitter: Duration::ZERO,
                },
                Direction::Both,
                Scope::Newest,
                None,
            ),
        ),
        (
            "bandwidth 64K up",
            fault(
                FaultKind::Bandwidth {
                    bytes_per_sec: 65536,
                },
                Direction::Up,
                Scope::All,
                None,
            ),
        ),
        (
            "cut 100 @127.0.0.1:7401",
            fault(
                FaultKind::CutAfter(100),
                Direction::Both,
                Scope::All,
                Some(ProxySelector::Addr("127.0.0.1:7401".parse().expect("addr"))),
            ),
        ),
        (
            "halfclose down",
            fault(FaultKind::HalfClose, Direction::Down, Scope::All, None),
        ),
        (
            "hold up",
            fault(FaultKind::Hold, Direction::Up, Scope::All, None),
        ),
        (
            "release",
            fault(FaultKind::Release, Direction::Both, Scope::All, None),
        ),
        (
            "heal",
            fault(FaultKind::Heal, Direction::Both, Scope::All, None),
        ),
        ("stats", ControlCommand::Stats { proxy: None }),
        (
            "stats @0",
            ControlCommand::Stats {
                proxy: Some(ProxySelector::Index(0)),
            },
        ),
        ("help", ControlCommand::Help),
        ("quit", ControlCommand::Quit),
    ];
    for (line, want) in cases {
        assert_eq!(parse_command(line).expect(line), want, "{line}");
    }
    for bad in [
        "",
        "explode",
        "fault",
        "delay",
        "delay soon",
        "delay 5",
        "delay 2h",
        "bandwidth lots",
        "cut -1",
        "cut 99999999999999999999G",
        "reset up down",
        "reset all newest",
        "reset sideways",
        "reset @nowhere",
        "stats extra",
    ] {
        let e = parse_command(bad).expect_err(bad);
        assert!(matches!(e, ChaosError::Parse(_)), "{bad}: {e:?}");
    }
}

/// Sends `line`, returns the reply line.
async fn ask(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    line: &[u8],
) -> String {
    writer.write_all(line).await.expect("send");
    let mut reply = String::new();
    within(reader.read_line(&mut reply)).await.expect("reply");
    reply
}

async fn control_client(
    addr: SocketAddr,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let (r, w) = within(TcpStream::connect(addr))
        .await
        .expect("connect")
        .into_split();
    (BufReader::new(r), w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_session_drives_the_proxy() {
    let (target, proxy) = setup(ProxyOptions::default()).await;
    let proxy = Arc::new(proxy);
    let control = ControlServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        vec![proxy.clone()],
        ControlOptions::default(),
    )
    .await
    .expect("control");
    let (mut c, mut s) = link(&target, &proxy).await;
    c.write_all(b"x").await.expect("write");
    read_n(&mut s, 1).await;

    let (mut r, mut w) = control_client(control.addr()).await;
    let help = ask(&mut r, &mut w, b"help\n").await;
    assert!(help.starts_with("{\"ok\":true,\"help\":["), "{help}");
    let reply = ask(&mut r, &mut w, b"fault blackhole up newest\n").await;
    assert_eq!(
        reply,
        "{\"ok\":true,\"fault\":\"blackhole up newest\",\"hit\":1}\n"
    );
    c.write_all(b"lost").await.expect("write");
    silent(&mut s, QUIET).await;
    let reply = ask(&mut r, &mut w, b"heal\r\n").await;
    assert!(reply.contains("\"hit\":1"), "{reply}");
    assert_eq!(read_n(&mut s, 4).await, b"lost");
    // Blank lines get no reply; the next command does.
    let stats = ask(&mut r, &mut w, b"\n   \nstats\n").await;
    assert!(
        stats.starts_with("{\"ok\":true,\"stats\":[{\"proxy\":0,"),
        "{stats}"
    );
    assert!(stats.contains("\"blackhole\":1"), "{stats}");
    assert!(stats.contains("\"links_open\":1"), "{stats}");
    let reply = ask(&mut r, &mut w, b"stats @3\n").await;
    assert!(
        reply.starts_with("{\"ok\":false,\"error\":\"no proxy @3"),
        "{reply}"
    );
    let reply = ask(&mut r, &mut w, b"quit\n").await;
    assert_eq!(reply, "{\"ok\":true,\"bye\":true}\n");
    let mut rest = String::new();
    assert_eq!(within(r.read_line(&mut rest)).await.expect("eof"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_control_input_gets_error_lines_not_panics() {
    let (_target, proxy) = setup(ProxyOptions::default()).await;
    let control = ControlServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        vec![Arc::new(proxy)],
        ControlOptions {
            max_connections: 4,
            ..ControlOptions::default()
        },
    )
    .await
    .expect("control");
    let (mut r, mut w) = control_client(control.addr()).await;

    // A 1 MiB line: one error, and the connection stays usable.
    let mut long = vec![b'a'; 1 << 20];
    long.push(b'\n');
    let reply = ask(&mut r, &mut w, &long).await;
    assert!(reply.contains("longer than 1024 bytes"), "{reply}");
    let reply = ask(&mut r, &mut w, b"\xff\xfe\xfd\n").await;
    assert!(reply.contains("not UTF-8"), "{reply}");
    let reply = ask(&mut r, &mut w, b"reset \"\\\x01\x1b[31m\n").await;
    assert!(reply.starts_with("{\"ok\":false,\"error\":"), "{reply}");
    assert!(
        !reply.contains('\x1b'),
        "control characters are escaped: {reply}"
    );

    // Seeded garbage, one line each: one error line each.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..200 {
        let mut line = vec![b'x'];
        for _ in 0..(x % 300) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = (x >> 24) as u8;
            line.push(if b == b'\n' { b' ' } else { b });
        }
        line.push(b'\n');
        let reply = ask(&mut r, &mut w, &line).await;
        assert!(reply.starts_with("{\"ok\":false,\"error\":"), "{reply}");
        assert!(reply.ends_with("}\n"));
    }
    let stats = ask(&mut r, &mut w, b"stats\n").await;
    assert!(stats.starts_with("{\"ok\":true"), "{stats}");

    // Connections beyond the limit are turned away with an error line.
    let mut others = Vec::new();
    for _ in 0..3 {
        let (mut r2, mut w2) = control_client(control.addr()).await;
        assert!(ask(&mut r2, &mut w2, b"help\n")
            .await
            .contains("\"ok\":true"));
        others.push((r2, w2));
    }
    let (mut r5, _w5) = control_client(control.addr()).await;
    let mut reply = String::new();
    within(r5.read_line(&mut reply)).await.expect("reply");
    assert!(reply.contains("too many control connections"), "{reply}");

    // A line cut short by EOF still gets its reply.
    // (Once the others' sessions have ended and freed their places.)
    drop(others);
    let mut tries = 0;
    let reply = loop {
        let (mut r6, mut w6) = control_client(control.addr()).await;
        w6.write_all(b"help").await.expect("send");
        w6.shutdown().await.expect("shutdown");
        let mut reply = String::new();
        within(r6.read_line(&mut reply)).await.expect("reply");
        tries += 1;
        if !reply.contains("too many") || tries == 50 {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(reply.contains("\"help\""), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_refuses_non_loopback_addresses_unless_allowed() {
    let e = ControlServer::bind(
        "0.0.0.0:0".parse().expect("addr"),
        Vec::new(),
        ControlOptions::default(),
    )
    .await
    .expect_err("refused");
    assert!(matches!(e, ChaosError::NotLoopback(_)), "{e}");
    let ok = ControlServer::bind(
        "0.0.0.0:0".parse().expect("addr"),
        Vec::new(),
        ControlOptions {
            allow_remote: true,
            ..ControlOptions::default()
        },
    )
    .await;
    assert!(ok.is_ok());
}
