//! One client's share of the device's read work: every NBD read is handed
//! to the device in pieces, and the pieces of all of one connection's
//! reads together hold at most [`super::NbdOptions::max_read_bytes_issued`]
//! bytes at once.
//!
//! The bound is what makes an abandoned client cheap. A client may have
//! several 32 MiB reads outstanding (up to
//! [`super::NbdOptions::max_in_flight_bytes`] of them); over a remote
//! volume each piece issued is a command that the target runs to the end
//! once it has it (the session protocol has no way to stop a command the
//! target already received). When the client goes away, its pieces not
//! yet issued are withdrawn ([`crate::device::Cancel`]) and never reach
//! the device, so what still runs for it is at most the budget, not every
//! byte it asked for, and the clients behind it wait for that much at
//! most.
//!
//! Pieces are issued in order and take the budget first come, first
//! served (a fair semaphore), so a connection's reads progress in the
//! order they arrived. A piece holds its share until the device has
//! returned its data.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::device::{BlockDevice, BlockError, Cancel};
use crate::join::{combine, join_in_order};

/// The largest piece a read is handed to the device in (before rounding to
/// the export's minimum block size): the default request size of a remote
/// volume, so a piece is one command to the target.
pub(crate) const READ_PIECE: u32 = 2 * 1024 * 1024;

/// One connection's read budget; see the module documentation.
#[derive(Debug)]
pub(crate) struct ReadBudget {
    /// One permit per byte of read work issued and not yet returned.
    bytes: Arc<Semaphore>,
    /// The size of each piece but the last of a read.
    piece: u32,
}

impl ReadBudget {
    /// A budget of `limit` bytes for an export whose requests are
    /// multiples of `min_block` (a power of two). Pieces are at most
    /// [`READ_PIECE`] and never above `limit`, in whole blocks, and at
    /// least one block; the budget is at least one piece.
    pub(crate) fn new(limit: u32, min_block: u32) -> ReadBudget {
        let block = min_block.max(1);
        let piece = READ_PIECE.min(limit);
        let piece = (piece - piece % block).max(block);
        let limit = limit.max(piece);
        ReadBudget {
            bytes: Arc::new(Semaphore::new(limit as usize)),
            piece,
        }
    }

    /// Reads `len` bytes at `offset` from `device`, piece by piece within
    /// the budget. A piece whose turn has not come when `cancel` fires is
    /// withdrawn, and so is the read (pieces already issued are waited
    /// for); see [`combine`] for the outcome of a read some of whose pieces
    /// failed.
    pub(crate) async fn read<D: BlockDevice>(
        &self,
        device: &D,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> Result<Vec<Bytes>, BlockError> {
        let pieces = split(offset, len, self.piece);
        let results = join_in_order(
            pieces
                .iter()
                .map(|&(o, n)| self.read_piece(device, o, n, cancel)),
        )
        .await;
        combine(results).map(|segments| segments.into_iter().flatten().collect())
    }

    async fn read_piece<D: BlockDevice>(
        &self,
        device: &D,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> Result<Vec<Bytes>, BlockError> {
        let what = || format!("read of {len} bytes at {offset}");
        // The semaphore is never closed, and no piece is larger than it.
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            permit = Arc::clone(&self.bytes).acquire_many_owned(len) => permit.ok(),
        };
        let Some(permit) = permit else {
            return Err(BlockError::Withdrawn(format!("{} was not started", what())));
        };
        cancel.check(&what())?;
        let data = device.read_segments(offset, len, cancel).await;
        drop(permit);
        data
    }
}

/// Splits a read into pieces of at most `piece` bytes; an empty read is one
/// empty piece (the device still answers it).
fn split(offset: u64, len: u32, piece: u32) -> Vec<(u64, u32)> {
    if len == 0 {
        return vec![(offset, 0)];
    }
    let piece = piece.max(1);
    let mut out = Vec::with_capacity(len.div_ceil(piece) as usize);
    let mut done = 0u32;
    while done < len {
        let n = (len - done).min(piece);
        out.push((offset + u64::from(done), n));
        done += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryDevice;

    #[test]
    fn pieces_are_whole_blocks_within_the_limit() {
        assert_eq!(ReadBudget::new(8 << 20, 1).piece, READ_PIECE);
        assert_eq!(ReadBudget::new(1 << 20, 1).piece, 1 << 20);
        assert_eq!(ReadBudget::new(100_000, 4096).piece, 24 * 4096);
        assert_eq!(ReadBudget::new(1000, 4096).piece, 4096);
        assert_eq!(
            split(10, 5 << 20, 2 << 20),
            vec![
                (10, 2 << 20),
                (10 + (2 << 20), 2 << 20),
                (10 + (4 << 20), 1 << 20)
            ]
        );
        assert_eq!(split(7, 0, 4096), vec![(7, 0)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_read_in_pieces_returns_the_whole_range_and_frees_its_budget() {
        let device = MemoryDevice::new(16 << 20);
        let data: Vec<u8> = (0..(5 << 20) + 512).map(|i| (i % 251) as u8).collect();
        device
            .write_at(4096, Bytes::from(data.clone()), false)
            .await
            .expect("write");
        let budget = ReadBudget::new(4 << 20, 512);
        let len = u32::try_from(data.len()).expect("len");
        let segments = budget
            .read(&device, 4096, len, &Cancel::new())
            .await
            .expect("read");
        assert_eq!(segments.len(), 3);
        assert_eq!(segments.concat(), data);
        assert_eq!(budget.bytes.available_permits(), 4 << 20);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_read_issues_nothing_more() {
        let device = MemoryDevice::new(16 << 20);
        let budget = ReadBudget::new(2 << 20, 1);
        // The whole budget is taken: no piece can be issued.
        let held = Arc::clone(&budget.bytes)
            .acquire_many_owned(2 << 20)
            .await
            .expect("permits");
        let cancel = Cancel::new();
        let read = budget.read(&device, 0, 8 << 20, &cancel);
        tokio::pin!(read);
        assert!(futures_poll_once(read.as_mut()).await.is_none());
        cancel.cancel();
        drop(held);
        let outcome = read.await;
        assert!(
            matches!(outcome, Err(BlockError::Withdrawn(_))),
            "{outcome:?}"
        );
    }

    /// Polls the pinned future once; `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
