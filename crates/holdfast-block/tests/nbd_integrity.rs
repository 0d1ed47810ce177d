//! The NBD server's integrity rules under timeouts and its limits: a
//! request answered with an error never runs later, and the connection,
//! handshake and in-flight limits hold.

#![allow(clippy::unwrap_used, missing_docs)]

mod nbd_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_block::file::{FileDevice, OpenOptions};
use holdfast_block::nbd::consts::*;
use holdfast_block::nbd::NbdOptions;
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
