//! The target-side witness of exactly-once: a [`BlockDevice`] wrapper that
//! records, per block, the newest generation it has executed. Each block has
//! one writer issuing one write at a time with rising generations, so in
//! one target incarnation every write must carry a newer generation than
//! the last: one that does not is a duplicate (or a stale write landing
//! late), and is counted. Memory is one entry per block written.
//!
//! With a second session (the block torture), its writes carry generations
//! from [`SECOND_LANE`] up and overlap the first session's blocks; several
//! of its workers write the same blocks, so for them only the same write
//! executed twice counts (the shared history checker catches the rest).
//!
//! After a target restart the session is new and retry-safe writes are
//! re-issued by design; those land on a fresh ledger and are not counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use holdfast_block::{BlockDevice, BlockError};

use super::blocks::{decode, Content, BLOCK};
use super::history::SECOND_LANE;

/// Duplicates seen across all incarnations.
#[derive(Debug, Default)]
pub(crate) struct Duplicates(pub(crate) AtomicU64);

/// A device that records the writes it executes.
pub(crate) struct Ledger<D> {
    inner: D,
    newest: Mutex<HashMap<u64, u64>>,
    /// Per block, the second session's generations executed.
    second: Mutex<HashMap<u64, HashSet<u64>>>,
    duplicates: Arc<Duplicates>,
    /// Whether a write that is not newer than the block's last counts (and
    /// is logged) as a violation.
    witness: bool,
}

impl<D> Ledger<D> {
    /// Wraps `inner` for one target incarnation.
    pub(crate) fn new(inner: D, duplicates: Arc<Duplicates>) -> Self {
        Ledger {
            inner,
            newest: Mutex::new(HashMap::new()),
            second: Mutex::new(HashMap::new()),
            duplicates,
            witness: true,
        }
    }

    /// Sets whether this ledger is a witness of exactly-once. Across nodes
    /// it is not: a retry-safe write in doubt is re-issued on another node
    /// and may have run on the old one too, and a failback can bring it
    /// back. Then only a write older than the block's newest (a stale one
    /// landing) is counted.
    pub(crate) fn witness(mut self, on: bool) -> Self {
        self.witness = on;
        self
    }

    fn record(&self, offset: u64, data: &Bytes) {
        if !offset.is_multiple_of(BLOCK as u64) {
            return;
        }
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in data.chunks(BLOCK) {
            if let Content::Written { block, generation } = decode(chunk) {
                if generation >= SECOND_LANE {
                    let mut second = self.second.lock().unwrap_or_else(|e| e.into_inner());
                    if !second.entry(block).or_default().insert(generation) {
                        self.duplicates.0.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            block,
                            generation,
                            "a second-session write executed twice in one session"
                        );
                    }
                    continue;
                }
                let last = newest.entry(block).or_insert(0);
                let counts = if self.witness {
                    generation <= *last
                } else {
                    generation < *last
                };
                if counts {
                    self.duplicates.0.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        block,
                        generation,
                        newest = *last,
                        "a write executed twice, or a stale one landed, in one session"
                    );
                } else {
                    *last = generation;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::blocks::encode;
    use holdfast_block::MemoryDevice;

    #[tokio::test]
    async fn repeated_or_stale_generations_are_counted() {
        let duplicates = Arc::new(Duplicates::default());
        let ledger = Ledger::new(MemoryDevice::new(64 * BLOCK), duplicates.clone());
        let at = |b: u64| b * BLOCK as u64;
        let count = || duplicates.0.load(Ordering::Relaxed);
        ledger
            .write_at(at(5), encode(5, 2), false)
            .await
            .expect("write");
        assert_eq!(count(), 0);
        ledger
            .write_at(at(5), encode(5, 2), false)
            .await
            .expect("write");
        assert_eq!(count(), 1, "the same write executed twice");
        ledger
            .write_at(at(5), encode(5, 1), false)
            .await
            .expect("write");
        assert_eq!(count(), 2, "an older write landing after a newer one");
        ledger
            .write_at(at(5), encode(5, 3), false)
            .await
            .expect("write");
        ledger
            .write_at(at(6), encode(6, 1), false)
            .await
            .expect("write");
        assert_eq!(count(), 2);
    }
}
