//! A [`FileDevice`]'s side of a durable target (PROTOCOL.md §12,
//! [`holdfast::ServiceDurability`]): a write's data is on stable storage
//! before the record of its completion is.
//!
//! The block service answers a write once its data is in the file (the page
//! cache, unless O_DIRECT or FUA), so the target sees the completion before
//! the data is stable. Before the store's fsync of a group that records a
//! completion, the target calls [`ServiceDurability::sync`]: one
//! `fdatasync` of the backing file covers every write completed so far,
//! whatever session it came from. A group whose completions are all reads
//! (nothing written since the last sync) skips the `fdatasync`: a flag set
//! after each write's I/O and cleared under the sync lock says whether one
//! is needed. A failed `fdatasync` fails the group, and the device stays
//! failed (as for a failed FLUSH): the target stops rather than record a
//! completion whose data may be lost.
//!
//! The device is replay-safe ([`ServiceDurability::replay_safe`]), so a
//! durable target runs its commands before their `Received` records are
//! durable and records each command's receipt and completion in one group.
//!
//! Read responses need nothing here: the target stores a retained response
//! (the bytes of the read) in the session store itself, so a replay after a
//! restart is the original answer, never a newer one.

use std::sync::atomic::Ordering;

use holdfast::ServiceDurability;

use super::FileDevice;

impl ServiceDurability for FileDevice {
    /// Block commands are replay-safe (PROTOCOL.md §12.5): a write run
    /// before its `Received` is durable and run again after a crash lost
    /// that record writes the same data to the same blocks, in the same
    /// session order; a write of another session that overlaps it and
    /// completed meanwhile was concurrent with it, so either order is a
    /// valid outcome; reads, flushes and trims rerun harmlessly.
    fn replay_safe(&self) -> bool {
        true
    }

    fn sync(&self) -> std::io::Result<()> {
        let inner = &self.inner;
        if inner.read_only {
            return Ok(());
        }
        let _one_at_a_time = inner.lock_sync();
        // Claimed before the fdatasync: a write finishing meanwhile sets it
        // again, and the next group's sync covers it.
        if !inner.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        inner.sync_held().map_err(|e| {
            inner.dirty.store(true, Ordering::Release);
            std::io::Error::other(format!(
                "{e}; the completions of this group were not recorded"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{BlockDevice, OpenOptions};

    struct TempPath(std::path::PathBuf);

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn device(name: &str) -> (TempPath, FileDevice) {
        let path = std::env::temp_dir().join(format!(
            "holdfast-block-durable-{}-{name}",
            std::process::id()
        ));
        let dev = FileDevice::open(
            &path,
            OpenOptions {
                size: Some(1 << 20),
                ..OpenOptions::default()
            },
        )
        .expect("open");
        (TempPath(path), dev)
    }

    /// One fdatasync per group that follows a write, trim or write-zeroes;
    /// none for a group after reads only.
    #[tokio::test(flavor = "current_thread")]
    async fn a_group_sync_fdatasyncs_only_after_changes() {
        let (_tmp, dev) = device("dirty");
        let syncs = |d: &FileDevice| d.stats().syncs;
        ServiceDurability::sync(&dev).expect("sync of a clean device");
        assert_eq!(syncs(&dev), 0, "nothing was written: no fdatasync");
        dev.write_at(0, Bytes::from_static(b"data"), false)
            .await
            .expect("write");
        ServiceDurability::sync(&dev).expect("sync");
        assert_eq!(syncs(&dev), 1, "a write needs one fdatasync");
        dev.read_at(0, 4).await.expect("read");
        ServiceDurability::sync(&dev).expect("sync");
        assert_eq!(syncs(&dev), 1, "reads alone need none");
        dev.write_zeroes(4096, 4096, false).await.expect("zeroes");
        ServiceDurability::sync(&dev).expect("sync");
        dev.trim(8192, 4096).await.expect("trim");
        ServiceDurability::sync(&dev).expect("sync");
        assert_eq!(syncs(&dev), 3, "write-zeroes and trim need one each");
    }

    /// A failed fdatasync fails the group (the target stops), and every
    /// later group too: the data may be lost, so no completion may be
    /// recorded as durable.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_fdatasync_fails_this_group_and_every_later_one() {
        let (tmp, dev) = device("fault");
        dev.write_at(0, Bytes::from_static(b"lost?"), false)
            .await
            .expect("write");
        dev.inner.fail_syncs.store(1, Ordering::SeqCst);
        let first = ServiceDurability::sync(&dev).expect_err("the injected fault");
        let text = first.to_string();
        assert!(
            text.contains(&tmp.0.display().to_string()) && text.contains("not recorded"),
            "{text}"
        );
        let again = ServiceDurability::sync(&dev).expect_err("the device stays failed");
        assert!(
            again.to_string().contains("earlier fdatasync failed"),
            "{again}"
        );
    }

    /// A read-only device has nothing to make durable.
    #[test]
    fn a_read_only_device_never_syncs() {
        let (tmp, dev) = device("ro");
        drop(dev);
        let ro = FileDevice::open(
            &tmp.0,
            OpenOptions {
                read_only: true,
                ..OpenOptions::default()
            },
        )
        .expect("open read-only");
        ServiceDurability::sync(&ro).expect("sync");
        assert_eq!(ro.stats().syncs, 0);
    }
}
