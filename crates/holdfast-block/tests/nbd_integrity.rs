//! The NBD server's integrity rules under timeouts and its limits: a
//! request answered with an error never runs later, and the connection,
//! handshake and in-flight limits hold.

#![allow(clippy::unwrap_used, missing_docs)]

mod nbd_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast_block::device::Cancel;
use holdfast_block::file::{FileDevice, OpenOptions};
use holdfast_block::nbd::consts::*;
use holdfast_block::nbd::NbdOptions;
use holdfast_block::{BlockDevice, BlockError, MemoryDevice};
use nbd_support::*;

const MIB: u64 = 1024 * 1024;

/// The scenario: a whole-export TRIM on a 256 MiB file times out
/// (5 ms); a later WRITE of 0x5a to the last 4 KiB succeeds and is
/// flushed. The TRIM must not keep zeroing after its reply: the block
/// must still read 0x5a afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_trim_never_runs_after_its_reply() {
    init_tracing();
    let dir = TempDir::new("trim-timeout");
    let size = 256 * MIB;
    let dev = FileDevice::open(
        dir.path("disk"),
        OpenOptions {
            size: Some(size),
            ..OpenOptions::default()
        },
    )
    .expect("open");
    let options = NbdOptions {
        io_timeout: Some(Duration::from_millis(5)),
        ..NbdOptions::default()
    };
    let dev = Arc::new(dev);
    let (addr, _server) = start_tcp(dev.clone(), options).await;
    let (mut c, _, _) = RawClient::transmission(addr).await;

    c.request(CMD_TRIM, 0, 1, 0, size as u32, &[]).await;
    let (errno, handle) = c.reply().await;
    assert_eq!(handle, 1);
    let zeroed_at_reply = dev.stats().zeroed;
    eprintln!("trim answered {errno}, {zeroed_at_reply} bytes zeroed by then");

    let last = size - 4096;
    c.request(CMD_WRITE, 0, 2, last, 4096, &[0x5a; 4096]).await;
    assert_eq!(c.reply().await, (0, 2));
    // The flush may time out as well (it syncs what the trim dirtied);
    // either way the write is in the file.
    c.request(CMD_FLUSH, 0, 3, 0, 0, &[]).await;
    assert_eq!(c.reply().await.1, 3);

    // Watch for zeroing after the reply: any is the bug. Bounded: the
    // whole trim takes well under this on the slowest machine seen.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && dev.stats().zeroed == zeroed_at_reply {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.request(CMD_READ, 0, 4, last, 4096, &[]).await;
    assert_eq!(c.reply().await, (0, 4));
    let data = c.read_data(4096).await;
    assert!(
        data.iter().all(|&b| b == 0x5a),
        "the block written after the timed-out trim reads back {:#04x}: \
         the trim ran after its EIO reply",
        data[0]
    );
    assert_eq!(
        dev.stats().zeroed,
        zeroed_at_reply,
        "the trim zeroed bytes after it was answered"
    );
}

/// Beyond `max_connections`, a new client is closed at once; once a
/// client leaves, a new one is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed() {
    init_tracing();
    let options = NbdOptions {
        max_connections: 2,
        ..NbdOptions::default()
    };
    let dev = Arc::new(holdfast_block::MemoryDevice::new(MIB as usize));
    let (addr, _server) = start_tcp(dev, options).await;
    let first = RawClient::connect(addr).await;
    let _second = RawClient::connect(addr).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut sink = Vec::new();
    let read = tokio::time::timeout(
        IO_TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut third, &mut sink),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "a third client was served beyond the limit of 2 ({read:?}, {} bytes)",
        sink.len()
    );
    drop(first);
    // The slot comes back when the server has seen the first client go.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut greet = [0u8; 18];
        let got = tokio::time::timeout(
            IO_TIMEOUT,
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut greet),
        )
        .await;
        if matches!(got, Ok(Ok(_))) {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that connects and says nothing is dropped after the handshake
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    init_tracing();
    let options = NbdOptions {
        handshake_timeout: Duration::from_millis(200),
        ..NbdOptions::default()
    };
    let dev = Arc::new(holdfast_block::MemoryDevice::new(MIB as usize));
    let (addr, _server) = start_tcp(dev, options).await;
    let started = Instant::now();
    let mut c = RawClient::connect(addr).await;
    c.expect_closed().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// At most `max_zeroing_in_flight` TRIMs of one connection reach the
/// device at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trims_in_flight_are_bounded() {
    init_tracing();
    let options = NbdOptions {
        max_zeroing_in_flight: 2,
        ..NbdOptions::default()
    };
    let dev = Arc::new(GatedDevice::new(MIB as usize));
    let (addr, _server) = start_tcp(dev.clone(), options).await;
    let (mut c, _, _) = RawClient::transmission(addr).await;
    for handle in 0..10 {
        c.request(CMD_TRIM, 0, handle, 0, 4096, &[]).await;
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    while dev.in_flight.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "trims did not reach the device");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give any trim beyond the bound the time to arrive (the bug lets all
    // ten through within microseconds).
    tokio::time::sleep(Duration::from_millis(200)).await;
    dev.gate.add_permits(100);
    for _ in 0..10 {
        assert_eq!(c.reply().await.0, 0);
    }
    assert_eq!(
        dev.peak.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "TRIMs in flight beyond the bound"
    );
}

/// A device whose TRIM runs until it is cancelled (a long zeroing on a
/// filesystem that cannot punch holes), recording that it was.
struct EndlessTrim {
    inner: MemoryDevice,
    started: AtomicBool,
    cancelled: AtomicBool,
}

impl BlockDevice for EndlessTrim {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.inner.read_at(offset, len).await
    }

    async fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.inner.write_at(offset, data, fua).await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.inner.trim(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.inner.write_zeroes(offset, len, fua).await
    }

    async fn trim_cancellable(
        &self,
        _offset: u64,
        _len: u32,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.started.store(true, Ordering::SeqCst);
        if tokio::time::timeout(IO_TIMEOUT, cancel.cancelled())
            .await
            .is_ok()
        {
            self.cancelled.store(true, Ordering::SeqCst);
        }
        Err(BlockError::Withdrawn("trim stopped".into()))
    }
}

/// A client that goes away (no NBD_CMD_DISC) with a long TRIM running: the
/// TRIM is cancelled instead of zeroing on behind later clients' writes
/// (the file device stops its zeroing at the next chunk: `file_tests.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_clients_trim_stops() {
    init_tracing();
    let dev = Arc::new(EndlessTrim {
        inner: MemoryDevice::new(MIB as usize),
        started: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
    });
    let (addr, _server) = start_tcp(dev.clone(), NbdOptions::default()).await;
    let (mut c, _, _) = RawClient::transmission(addr).await;
    c.request(CMD_TRIM, 0, 1, 0, MIB as u32, &[]).await;
    let deadline = Instant::now() + IO_TIMEOUT;
    while !dev.started.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the trim did not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(c);
    while !dev.cancelled.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the trim of a client that went away was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
