//! The target-side witness of exactly-once: a [`BlockDevice`] wrapper that
//! records every block write it executes, by (block, generation), and
//! counts a write executed twice in one target incarnation as a duplicate.
//!
//! After a target restart the session is new and retry-safe writes are
//! re-issued by design; those land on a fresh ledger and are not counted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use holdfast_block::{BlockDevice, BlockError};

use super::blocks::{decode, Content, BLOCK};

/// Duplicates seen across all incarnations.
#[derive(Debug, Default)]
pub(crate) struct Duplicates(pub(crate) AtomicU64);

/// A device that records the writes it executes.
pub(crate) struct Ledger<D> {
    inner: D,
    seen: Mutex<HashSet<(u64, u64)>>,
    duplicates: Arc<Duplicates>,
}

impl<D> Ledger<D> {
    /// Wraps `inner` for one target incarnation.
    pub(crate) fn new(inner: D, duplicates: Arc<Duplicates>) -> Self {
        Ledger {
            inner,
            seen: Mutex::new(HashSet::new()),
            duplicates,
        }
    }

    fn record(&self, offset: u64, data: &Bytes) {
        if offset % BLOCK as u64 != 0 {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in data.chunks(BLOCK) {
            if let Content::Written { block, generation } = decode(chunk) {
                if !seen.insert((block, generation)) {
                    self.duplicates.0.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(block, generation, "a write executed twice in one session");
                }
            }
        }
    }
}

impl<D: BlockDevice> BlockDevice for Ledger<D> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.inner.read_at(offset, len).await
    }

    async fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.record(offset, &data);
        self.inner.write_at(offset, data, fua).await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.inner.flush().await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.inner.trim(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.inner.write_zeroes(offset, len, fua).await
    }
}
