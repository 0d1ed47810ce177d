//! Tests of [`super::FileDevice`].

use super::*;

struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> TempPath {
        let p = std::env::temp_dir().join(format!(
            "holdfast-block-{}-{name}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        TempPath(p)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn create(path: &Path, size: u64) -> FileDevice {
    FileDevice::open(
        path,
        OpenOptions {
            size: Some(size),
            ..OpenOptions::default()
        },
    )
    .expect("open")
}

#[tokio::test(flavor = "current_thread")]
async fn reads_what_was_written_and_zeroes() {
    let tmp = TempPath::new("rw");
    let dev = create(&tmp.0, 1 << 20);
    assert_eq!(dev.size(), 1 << 20);
    dev.write_at(100, Bytes::from_static(b"hello"), false)
        .await
        .expect("write");
    dev.write_at(200, Bytes::from_static(b"durable"), true)
        .await
        .expect("fua write");
    assert_eq!(dev.read_at(100, 5).await.expect("read").as_ref(), b"hello");
    assert_eq!(
        dev.read_at(200, 7).await.expect("read").as_ref(),
        b"durable"
    );
    dev.write_zeroes(101, 3, false).await.expect("zeroes");
    assert_eq!(
        dev.read_at(100, 5).await.expect("read").as_ref(),
        b"h\0\0\0o"
    );
    dev.trim(200, 7).await.expect("trim");
    assert_eq!(dev.read_at(200, 7).await.expect("read").as_ref(), &[0; 7]);
    dev.flush().await.expect("flush");
    let s = dev.stats();
    // Zeroed with fallocate (ext4, xfs, tmpfs): nothing written.
    assert_eq!((s.writes, s.fua_writes, s.syncs), (2, 1, 1));
    assert_eq!(s.zeroed + s.punched, 10);
    assert_eq!(dev.read_at(0, 0).await.expect("empty read").len(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn ranges_are_checked() {
    let tmp = TempPath::new("range");
    let dev = create(&tmp.0, 4096);
    assert!(matches!(
        dev.read_at(4000, 100).await,
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write_at(u64::MAX, Bytes::from_static(b"x"), false)
            .await,
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write_zeroes(4096, 1, false).await,
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(dev.read_at(4096, 0).await.is_ok());
}

#[tokio::test(flavor = "current_thread")]
async fn reopening_keeps_contents_and_refuses_to_shrink() {
    let tmp = TempPath::new("reopen");
    let dev = create(&tmp.0, 8192);
    dev.write_at(8000, Bytes::from_static(b"kept"), true)
        .await
        .expect("write");
    drop(dev);
    let dev = FileDevice::open(&tmp.0, OpenOptions::default()).expect("reopen");
    assert_eq!(dev.size(), 8192);
    assert_eq!(dev.read_at(8000, 4).await.expect("read").as_ref(), b"kept");
    let grown = create(&tmp.0, 16384);
    assert_eq!(grown.size(), 16384);
    assert_eq!(
        grown.read_at(8000, 4).await.expect("read").as_ref(),
        b"kept"
    );
    let err = FileDevice::open(
        &tmp.0,
        OpenOptions {
            size: Some(4096),
            ..OpenOptions::default()
        },
    )
    .expect_err("shrinking is refused");
    assert!(err.to_string().contains("refusing to shrink"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn read_only_devices_refuse_writes() {
    let tmp = TempPath::new("ro");
    drop(create(&tmp.0, 4096));
    let dev = FileDevice::open(
        &tmp.0,
        OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .expect("open read-only");
    assert!(dev.read_only());
    assert_eq!(
        dev.write_at(0, Bytes::from_static(b"x"), false).await,
        Err(BlockError::ReadOnly)
    );
    assert_eq!(dev.trim(0, 1).await, Err(BlockError::ReadOnly));
    assert!(dev.read_at(0, 10).await.is_ok());
    assert!(dev.flush().await.is_ok());
}

#[test]
fn bad_paths_and_options_are_refused() {
    let missing = TempPath::new("missing");
    assert!(matches!(
        FileDevice::open(&missing.0, OpenOptions::default()),
        Err(OpenError::Io { .. })
    ));
    assert!(matches!(
        FileDevice::open(std::env::temp_dir(), OpenOptions::default()),
        Err(OpenError::Io { .. } | OpenError::Invalid { .. })
    ));
    assert!(matches!(
        FileDevice::open(
            &missing.0,
            OpenOptions {
                size: Some(1),
                read_only: true,
                direct: false
            }
        ),
        Err(OpenError::Invalid { .. })
    ));
}

#[test]
fn aligned_buffers_are_aligned() {
    for len in [0, 1, 4096, 10_000] {
        let (buf, start) = aligned_buffer(len);
        assert_eq!((buf.as_ptr() as usize + start) % DIRECT_ALIGN, 0);
        assert!(buf.len() >= start + len);
    }
    assert_eq!(ZEROES.0.as_ptr() as usize % DIRECT_ALIGN, 0);
}

/// A failed fdatasync must not be forgotten: Linux reports lost writeback
/// once, so a later FLUSH would succeed although the data is gone.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_fdatasync_fails_every_later_flush_and_fua_write() {
    let tmp = TempPath::new("fsync-fault");
    let dev = create(&tmp.0, 1 << 20);
    dev.write_at(0, Bytes::from_static(b"lost?"), false)
        .await
        .expect("write");
    dev.inner.fail_syncs.store(1, Ordering::SeqCst);
    let first = dev.flush().await.expect_err("the injected fault");
    assert!(first.to_string().contains("flush"), "{first}");
    // The fault is gone from the kernel's point of view; the device must
    // still say the data may be lost.
    let again = dev.flush().await;
    assert!(
        matches!(&again, Err(BlockError::Io(m)) if m.contains("earlier fdatasync failed")),
        "a FLUSH after a failed fdatasync: {again:?}"
    );
    let fua = dev.write_at(4096, Bytes::from_static(b"x"), true).await;
    assert!(
        matches!(&fua, Err(BlockError::Io(m)) if m.contains("earlier fdatasync failed")),
        "a FUA write after a failed fdatasync: {fua:?}"
    );
    assert!(dev.write_zeroes(0, 10, true).await.is_err());
    assert!(dev.failure().is_some());
    // Plain writes and reads still work; reopening clears the state.
    dev.write_at(8192, Bytes::from_static(b"y"), false)
        .await
        .expect("plain write");
    drop(dev);
    let dev = FileDevice::open(&tmp.0, OpenOptions::default()).expect("reopen");
    dev.flush().await.expect("flush after reopening");
    dev.write_at(4096, Bytes::from_static(b"x"), true)
        .await
        .expect("FUA write after reopening");
}

/// Work cancelled before it starts is withdrawn and changes nothing; a
/// cancelled zeroing stops between chunks.
#[tokio::test(flavor = "current_thread")]
async fn cancelled_work_is_withdrawn() {
    let tmp = TempPath::new("cancel");
    let dev = create(&tmp.0, 4 * ZERO_CHUNK as u64);
    dev.write_at(0, Bytes::from(vec![7u8; 4 * ZERO_CHUNK]), false)
        .await
        .expect("fill");
    let cancel = Cancel::new();
    cancel.cancel();
    let w = dev
        .write_at_cancellable(0, Bytes::from_static(b"new"), true, &cancel)
        .await;
    assert!(matches!(w, Err(BlockError::Withdrawn(_))), "{w:?}");
    let t = dev
        .trim_cancellable(0, 4 * ZERO_CHUNK as u32, &cancel)
        .await;
    assert!(matches!(t, Err(BlockError::Withdrawn(_))), "{t:?}");
    assert!(matches!(
        dev.flush_cancellable(&cancel).await,
        Err(BlockError::Withdrawn(_))
    ));
    assert_eq!(dev.read_at(0, 3).await.expect("read").as_ref(), &[7, 7, 7]);
    assert_eq!(dev.stats().zeroed, 0);
    // Started, then cancelled: at most the first chunk is zeroed.
    let cancel = Cancel::new();
    let c = cancel.clone();
    let stop = dev
        .inner
        .zero_with(0, 4 * ZERO_CHUNK as u64, false, &c, || cancel.cancel());
    assert!(matches!(stop, Err(BlockError::Withdrawn(_))), "{stop:?}");
    assert_eq!(dev.stats().zeroed, ZERO_CHUNK as u64);
    let last = dev
        .read_at(4 * ZERO_CHUNK as u64 - 1, 1)
        .await
        .expect("read");
    assert_eq!(last.as_ref(), &[7]);
}
