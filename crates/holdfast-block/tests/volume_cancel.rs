//! The NBD server over a `Volume` (what `holdfast nbd` runs), over real
//! sockets on 127.0.0.1: a request that passes the I/O timeout while the
//! target is away, unsent, is answered EIO and never lands later.

#![allow(missing_docs)]

mod nbd_support;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_block::nbd::consts::*;
use holdfast_block::nbd::NbdOptions;
use holdfast_block::{BlockService, FileDevice, OpenOptions};
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
    use holdfast_block::MemoryDevice;
    use std::sync::atomic::Ordering;

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
