//! Issue 17 rough edge: a backing store that runs out of space (or fails)
//! is visible on the target at warn level, not only at debug; a request
//! the client got wrong is not. Through a real target and `Volume` on
//! 127.0.0.1, with the target's log captured.

#![allow(missing_docs)]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use holdfast_block::{BlockDevice, BlockError, BlockService, MemoryDevice};

/// A device whose disk is full: every write fails with `NoSpace`.
struct FullDevice(MemoryDevice);

impl BlockDevice for FullDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.0.read_at(offset, len).await
    }

    async fn write_at(&self, _offset: u64, _data: Bytes, _fua: bool) -> Result<(), BlockError> {
        Err(BlockError::NoSpace)
    }

    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.0.trim(offset, len).await
    }

    async fn write_zeroes(&self, _offset: u64, _len: u32, _fua: bool) -> Result<(), BlockError> {
        Err(BlockError::NoSpace)
    }
}

/// Everything logged at info and above, in this process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backing_store_is_a_warning_on_the_target_and_a_bad_request_is_not() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let device = FullDevice(MemoryDevice::new(1 << 20));
    let (_target, addr) = support::serve(any, BlockService::new(device)).await;
    let volume = support::volume(addr).await;

    // A range beyond the device: the client's mistake, refused by the
    // target (sent raw, past the volume's own check), and no warning.
    let refused = volume
        .initiator()
        .expect("one session")
        .call(
            holdfast_block::wire::Request::Read {
                offset: 1 << 20,
                len: 4096,
            }
            .encode(),
        )
        .await
        .expect("answered");
    assert!(matches!(
        holdfast_block::wire::decode_response(&refused),
        Ok(Err(BlockError::OutOfRange { .. }))
    ));
    assert!(
        !log.text().contains("the backing store failed"),
        "a client error was logged as a backend failure:\n{}",
        log.text()
    );

    let err = volume
        .write_at(0, Bytes::from_static(&[1; 4096]), false)
        .await
        .expect_err("the disk is full");
    assert_eq!(err, BlockError::NoSpace);
    let text = log.text();
    let warning = text
        .lines()
        .find(|l| l.contains("the backing store failed a request"))
        .unwrap_or_else(|| panic!("no warning for ENOSPC on the target:\n{text}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("no space left"), "{warning}");
}
