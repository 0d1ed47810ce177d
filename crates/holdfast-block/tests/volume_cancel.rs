//! The NBD server over a `Volume` (what `holdfast nbd` runs), over real
//! sockets on 127.0.0.1: a request that passes the I/O timeout while the
//! target is away, unsent, is answered EIO and never lands later; a client
//! that goes away leaves at most its read budget of work on the target.

#![allow(missing_docs)]

mod nbd_support;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use bytes::Bytes;
use holdfast::Target;
use holdfast_block::nbd::consts::*;
use holdfast_block::nbd::{NbdOptions, Server};
use holdfast_block::{BlockDevice, BlockService, FileDevice, MemoryDevice, OpenOptions, Volume};
use nbd_support::RawClient;
use support::TempFile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_unsent_never_lands() {
    support::init_logs();
    let file = TempFile::new("volume-cancel");
    let open = |size| {
        FileDevice::open(
            &file.0,
            OpenOptions {
                size,
                ..OpenOptions::default()
            },
        )
        .expect("open")
    };
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (target, addr) = support::serve(any, BlockService::new(open(Some(1 << 20)))).await;
    let volume = support::volume(addr).await;
    let options = NbdOptions {
        io_timeout: Some(Duration::from_millis(300)),
        ..NbdOptions::default()
    };
    let (nbd, _server) = nbd_support::start_tcp(Arc::new(volume.clone()), options).await;
    let (mut c, _, _) = RawClient::transmission(nbd).await;
    c.request(CMD_WRITE, 0, 1, 0, 4, b"AAAA").await;
    assert_eq!(c.reply().await, (0, 1));

    // The target goes away; once the initiator has seen its connection
    // go, nothing can be sent.
    drop(target);
    let deadline = Instant::now() + Duration::from_secs(10);
    while volume
        .initiator()
        .expect("one session")
        .stats()
        .await
        .expect("stats")
        .disconnects
        == 0
    {
        assert!(Instant::now() < deadline, "the initiator did not notice");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.request(CMD_WRITE, 0, 2, 0, 4, b"BBBB").await;
    // Past the I/O timeout (a timer, not a race): the write is cancelled.
    // The initiator learns that the target never got it when it next
    // reaches a target, and only then may the reply go out.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The target returns (a new process over the same file).
    let (_target, _) = support::serve(addr, BlockService::new(open(None))).await;
    assert_eq!(
        c.reply().await,
        (EIO, 2),
        "the write cancelled at the I/O timeout, unsent, must fail"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut handle = 3;
    let data = loop {
        c.request(CMD_READ, 0, handle, 0, 4, &[]).await;
        let (errno, h) = c.reply().await;
        assert_eq!(h, handle);
        handle += 1;
        if errno == 0 {
            break c.read_data(4).await;
        }
        assert!(Instant::now() < deadline, "the volume did not recover");
    };
    assert_eq!(&data, b"AAAA", "the write answered EIO landed later");
    let on_disk = std::fs::read(&file.0).expect("read");
    assert_eq!(&on_disk[..4], b"AAAA");
    let stats = volume
        .initiator()
        .expect("one session")
        .stats()
        .await
        .expect("stats");
    assert!(stats.withdrawn >= 1, "{stats:?}");
}

/// Issue 17: a client that gives up on a 32 MiB read (it went away) must
/// not leave the whole read running on the target, holding the session
/// for the clients behind it: the pieces not yet sent are withdrawn, so
/// the target reads at most `READ_WINDOW` pieces of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_large_read_stops_its_backend_work() {
    use holdfast_block::volume::READ_WINDOW;

    support::init_logs();
    let (probe, state) = support::Probe::new(MemoryDevice::new(64 << 20));
    // Each operation on the target takes 100 ms: the client is gone long
    // before the first pieces finish.
    state.delay_ms.store(100, Ordering::SeqCst);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (_target, addr) = support::serve(any, BlockService::new(probe)).await;
    let volume = support::volume(addr).await;
    let piece = volume.max_request();
    let (nbd, _server) =
        nbd_support::start_tcp(Arc::new(volume.clone()), NbdOptions::default()).await;
    let (mut c, _, _) = RawClient::transmission(nbd).await;
    c.request(CMD_READ, 0, 1, 0, MAX_PAYLOAD, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.running.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the read did not reach the target"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(c);
    // Let whatever was sent finish (and anything wrongly sent later, too).
    tokio::time::sleep(Duration::from_millis(300)).await;
    state.wait_idle().await;
    let reads = state.log().iter().filter(|r| !r.write).count();
    let pieces = (MAX_PAYLOAD / piece) as usize;
    assert!(pieces > READ_WINDOW, "{pieces} pieces");
    assert!(
        reads <= READ_WINDOW,
        "the target read {reads} of the {pieces} pieces of a read whose client went away"
    );
    let stats = volume
        .initiator()
        .expect("one session")
        .stats()
        .await
        .expect("stats");
    eprintln!("{reads} of {pieces} pieces read on the target; {stats:?}");
}

/// Waits until `done` is true; fails after 10 s.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A gated target (every operation waits until the test opens the gate)
/// and `holdfast nbd`'s server over it; the device holds `reads` 32 MiB
/// ranges, then 4 KiB of 0xB5 for client B.
async fn gated_export(
    reads: u64,
) -> (
    Target,
    Arc<support::ProbeState>,
    Server<Volume>,
    SocketAddr,
    u64,
) {
    let b_offset = reads * u64::from(MAX_PAYLOAD);
    let memory = MemoryDevice::new(usize::try_from(b_offset + 4096).expect("size"));
    memory
        .write_at(b_offset, Bytes::from(vec![0xB5; 4096]), false)
        .await
        .expect("write");
    let (probe, state) = support::Probe::new(memory);
    state.gated.store(true, Ordering::SeqCst);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (target, addr) = support::serve(any, BlockService::new(probe)).await;
    let volume = support::volume(addr).await;
    let server = Server::new(Arc::new(volume), NbdOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let nbd = listener.local_addr().expect("addr");
    let serving = server.clone();
    tokio::spawn(async move { serving.serve_listener(listener).await });
    (target, state, server, nbd, b_offset)
}

/// Issue 17: client A pipelines four 32 MiB reads and goes away (no
/// NBD_CMD_DISC); client B's 4 KiB read, sent right after, waits for at
/// most A's read budget of backend work, and nothing more of A's reads
/// runs afterwards. The target's device is gated, so what A left running
/// is counted exactly: every read that reached the device.
///
/// Before, each of A's reads kept its own window of 8 MiB issued, and the
/// server, held back by A's 64 MiB of reads in flight, did not notice A
/// leaving until they had finished: 16 MiB was ahead of B, and all 64 MiB
/// ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_clients_reads_hold_at_most_its_read_budget() {
    support::init_logs();
    const READS: u64 = 4;
    let (_target, state, server, nbd, b_offset) = gated_export(READS).await;
    let budget = u64::from(server.options().max_read_bytes_issued);
    assert!(budget < u64::from(MAX_PAYLOAD));
    let (mut a, _, _) = RawClient::transmission(nbd).await;
    for i in 0..READS {
        let offset = i * u64::from(MAX_PAYLOAD);
        a.request(CMD_READ, 0, i + 1, offset, MAX_PAYLOAD, &[])
            .await;
    }
    wait_for("A's reads reach the target", || {
        !state.arrivals().is_empty()
    })
    .await;
    drop(a);

    let (mut b, _, _) = RawClient::transmission(nbd).await;
    b.request(CMD_READ, 0, 100, b_offset, 4096, &[]).await;
    wait_for("B's read reaches the target", || {
        state.arrivals().iter().any(|&(_, o, _)| o == b_offset)
    })
    .await;
    let ahead: u64 = state
        .arrivals()
        .iter()
        .take_while(|&&(_, o, _)| o != b_offset)
        .map(|&(_, _, len)| len)
        .sum();
    assert!(
        ahead <= budget,
        "{ahead} bytes of the reads of a client that went away were ahead of B's read on \
         the target; the bound is the read budget, {budget}"
    );
    // The server noticed A leaving: A's reads not yet issued were
    // withdrawn and answered, so only A's first read (its pieces at the
    // gate) and B's are left.
    wait_for("A's queued reads are withdrawn", || {
        server.requests_in_flight() <= 2
    })
    .await;
    state.open_gate();
    assert_eq!(b.reply().await, (0, 100));
    assert_eq!(b.read_data(4096).await, vec![0xB5; 4096]);
    state.wait_idle().await;
    let a_bytes: u64 = state
        .log()
        .iter()
        .filter(|r| !r.write && r.offset != b_offset)
        .map(|r| r.len)
        .sum();
    assert!(
        a_bytes <= budget,
        "the target read {a_bytes} bytes for a client that had gone away; the bound is {budget}"
    );
    eprintln!("A left {a_bytes} bytes of reads running (budget {budget}); B waited for {ahead}");
}

/// The other side of the same bound: a client that ends with NBD_CMD_DISC
/// and shuts its side down while the server is held back by its reads
/// (it still reads the replies) gets every read finished, not cancelled:
/// what the server reads ahead while it waits is looked through for the
/// DISC before an end of stream counts as the client gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_before_a_disconnect_are_finished_when_the_client_shuts_down() {
    use tokio::io::AsyncWriteExt;
    support::init_logs();
    const READS: u64 = 3;
    let (_target, state, _server, nbd, _) = gated_export(READS).await;
    let (mut a, _, _) = RawClient::transmission(nbd).await;
    for i in 0..READS {
        let offset = i * u64::from(MAX_PAYLOAD);
        a.request(CMD_READ, 0, i + 1, offset, MAX_PAYLOAD, &[])
            .await;
    }
    a.request(CMD_DISC, 0, 9, 0, 0, &[]).await;
    wait_for("the reads reach the target", || {
        !state.arrivals().is_empty()
    })
    .await;
    a.stream.shutdown().await.expect("shutdown");
    // The server is held back (its first reads wait at the gate) and sees
    // the end of the stream now; a cancellation would withdraw the pieces
    // still waiting for the read budget.
    tokio::time::sleep(Duration::from_millis(200)).await;
    state.open_gate();
    let mut answered = Vec::new();
    for _ in 0..READS {
        let (errno, handle) = a.reply().await;
        assert_eq!(errno, 0, "read {handle}, sent before NBD_CMD_DISC, failed");
        let data = a.read_data(MAX_PAYLOAD as usize).await;
        assert!(data.iter().all(|&b| b == 0));
        answered.push(handle);
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=READS).collect::<Vec<_>>());
    a.expect_closed().await;
}
