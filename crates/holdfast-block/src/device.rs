//! What every block device here offers: the local file behind a target,
//! the remote volume behind an initiator, and the in-memory device of the
//! tests all implement [`BlockDevice`]; the NBD server serves any of them.
//!
//! # Cancellation
//!
//! A caller that stops waiting for an operation (the NBD server at its
//! I/O timeout) must never answer with an error while the operation may
//! still take effect later. So it does not drop the operation's future:
//! it fires the operation's [`Cancel`] and keeps waiting. The device then
//! either withdraws the operation ([`BlockError::Withdrawn`]: it stopped
//! and nothing of it runs later) or finishes it and returns its real
//! outcome. The `*_cancellable` methods take the signal; their default
//! implementations ignore it (the operation simply runs to completion),
//! which is always correct, only slower to answer.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::Notify;

use crate::identity::VolumeId;

/// Why a block operation failed. Each maps to the errno an NBD client sees.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BlockError {
    /// The range lies (partly) outside the device.
    #[error("range {offset}+{len} is outside the device of {size} bytes")]
    OutOfRange {
        /// Start of the request.
        offset: u64,
        /// Its length.
        len: u64,
        /// The device's size.
        size: u64,
    },
    /// The request is malformed or too large.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The device refuses writes.
    #[error("the device is read-only")]
    ReadOnly,
    /// No space left on the backing store.
    #[error("no space left on the backing store")]
    NoSpace,
    /// An I/O error on the backing store or in transport; the message says
    /// which, and whether the operation may have taken effect.
    #[error("I/O error: {0}")]
    Io(String),
    /// The operation was cancelled ([`Cancel`]) and withdrawn: it has
    /// stopped, and nothing of it will run later. What it did before it
    /// stopped is undefined: a TRIM or WRITE_ZEROES may have zeroed a part
    /// of its range, and a request a device splits (a remote volume's long
    /// write) may have taken effect in part. A file device withdraws only
    /// work it has not started, or zeroing between chunks.
    #[error("withdrawn on cancellation: {0}")]
    Withdrawn(String),
    /// The outcome is unknown and the request may still take effect later:
    /// a remote volume lost its session without the target confirming that
    /// the session ended (docs/PROTOCOL.md §11.1). Reporting it as failed
    /// could be contradicted by a late execution, so an NBD server answers
    /// it by closing the client's connection instead of replying.
    #[error("in doubt (it may still take effect): {0}")]
    InDoubt(String),
    /// The device cannot do the operation the way it was asked to: a
    /// WRITE_ZEROES that must be fast ([`Zeroing::fast`]) on a device that
    /// could only write the zeroes. Nothing was done; the caller may ask
    /// again without the condition.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The target serves another volume than the one the request names:
    /// nothing was done. The client's volume is gone from that address.
    #[error(
        "the target now serves volume {found} ({size} bytes), not {expected}; \
         the request was refused and nothing was written"
    )]
    WrongVolume {
        /// The volume the request named.
        expected: VolumeId,
        /// The volume the target serves (nil if it has no identity).
        found: VolumeId,
        /// The size of the volume the target serves.
        size: u64,
    },
}

impl BlockError {
    /// The errno value for this error, as NBD replies carry it.
    pub fn errno(&self) -> u32 {
        match self {
            BlockError::OutOfRange { .. } | BlockError::Invalid(_) => 22, // EINVAL
            BlockError::ReadOnly => 1,                                    // EPERM
            BlockError::NoSpace => 28,                                    // ENOSPC
            BlockError::NotSupported(_) => 95,                            // ENOTSUP
            BlockError::Io(_)
            | BlockError::Withdrawn(_)
            | BlockError::InDoubt(_)
            | BlockError::WrongVolume { .. } => 5, // EIO
        }
    }

    /// Checks that `offset + len` fits in a device of `size` bytes.
    pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BlockError> {
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(BlockError::OutOfRange { offset, len, size }),
        }
    }
}

/// How a WRITE_ZEROES may zero its range (see
/// [`BlockDevice::zero_range`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Zeroing {
    /// Durable when the operation returns.
    pub fua: bool,
    /// The range may be deallocated (a hole punched) instead of kept
    /// allocated; it reads back as zeroes either way.
    pub punch: bool,
    /// Only if it is fast (no zeroes written byte by byte): otherwise the
    /// device does nothing and answers [`BlockError::NotSupported`].
    pub fast: bool,
}

/// [`Extent::flags`]: the extent is not allocated (a hole).
pub const EXTENT_HOLE: u32 = 1;
/// [`Extent::flags`]: the extent reads as zeroes.
pub const EXTENT_ZERO: u32 = 2;

/// One run of a block status answer (NBD's `base:allocation`): `len`
/// bytes with the same allocation state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (never 0).
    pub len: u32,
    /// [`EXTENT_HOLE`] and [`EXTENT_ZERO`] bits; 0 is allocated data.
    pub flags: u32,
}

/// Most extents one block status answer carries; a caller asks again from
/// where the answer ended.
pub const MAX_EXTENTS: usize = 1024;

/// A cancellation signal for device operations; see the module
/// documentation. Cheap to clone: clones share the signal, which fires
/// once and stays fired.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    inner: Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    fired: AtomicBool,
    notify: Notify,
}

impl Cancel {
    /// A signal that has not fired.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Fires the signal (again is harmless).
    pub fn cancel(&self) {
        self.inner.fired.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// True once the signal has fired.
    pub fn is_cancelled(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Resolves once the signal has fired (at once if it has).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a concurrent `cancel` is seen.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// `Err(Withdrawn)` if the signal has fired: the check a device makes
    /// before it starts work, with `what` naming the work.
    pub fn check(&self, what: &str) -> Result<(), BlockError> {
        if self.is_cancelled() {
            Err(BlockError::Withdrawn(format!("{what} was not started")))
        } else {
            Ok(())
        }
    }
}

/// A block device: byte-addressed, with durable-write controls.
///
/// Methods take `&self` and may run concurrently; a device that needs an
/// order between overlapping requests enforces it itself.
///
/// Dropping an operation's future before it completes may leave the work
/// running (a file device's I/O thread keeps going): a caller that must
/// know the work is over uses the `*_cancellable` methods and awaits them.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// True if writes are refused.
    fn read_only(&self) -> bool {
        false
    }

    /// Reads `len` bytes at `offset`.
    fn read_at(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, BlockError>> + Send;

    /// Writes `data` at `offset`; with `fua` the data is durable when this
    /// returns.
    fn write_at(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = Result<(), BlockError>> + Send;

    /// Makes every completed write durable.
    fn flush(&self) -> impl Future<Output = Result<(), BlockError>> + Send;

    /// Declares the range unused (reads may then return zeroes or old data).
    fn trim(&self, offset: u64, len: u32) -> impl Future<Output = Result<(), BlockError>> + Send;

    /// Writes zeroes over the range.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> impl Future<Output = Result<(), BlockError>> + Send;

    /// The smallest alignment of offsets and lengths the device accepts
    /// for reads, writes, trims and write-zeroes (a power of two); 1 means
    /// any. A device opened with O_DIRECT says 4096.
    fn min_block_size(&self) -> u32 {
        1
    }

    /// Writes zeroes over the range as `how` allows: punching a hole if
    /// [`Zeroing::punch`], and only if that is fast if [`Zeroing::fast`].
    /// The default cannot promise speed: a fast request is refused with
    /// [`BlockError::NotSupported`], any other writes the zeroes
    /// ([`BlockDevice::write_zeroes_cancellable`]).
    fn zero_range(
        &self,
        offset: u64,
        len: u32,
        how: Zeroing,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<(), BlockError>> + Send {
        async move {
            if how.fast {
                BlockError::check_range(offset, u64::from(len), self.size())?;
                return Err(BlockError::NotSupported(
                    "this device cannot zero a range fast".into(),
                ));
            }
            self.write_zeroes_cancellable(offset, len, how.fua, cancel)
                .await
        }
    }

    /// The allocation state of `len` bytes at `offset`, as consecutive
    /// extents from `offset` (at most [`MAX_EXTENTS`]; together they may
    /// cover less than `len`, never more, and at least one byte if `len`
    /// is not 0). The default knows nothing of holes: the whole range is
    /// data.
    fn block_status(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<Vec<Extent>, BlockError>> + Send {
        let _ = cancel;
        let checked = BlockError::check_range(offset, u64::from(len), self.size());
        async move {
            checked?;
            Ok(if len == 0 {
                Vec::new()
            } else {
                vec![Extent { len, flags: 0 }]
            })
        }
    }

    /// Prefetches the range into a faster tier, so that reading it soon is
    /// quick; nothing changes in the contents. The default has no slower
    /// tier to fetch from: it checks the range and does nothing.
    fn cache(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<(), BlockError>> + Send {
        let _ = cancel;
        let checked = BlockError::check_range(offset, u64::from(len), self.size());
        std::future::ready(checked)
    }

    /// Reads `len` bytes at `offset`, as one or more consecutive segments
    /// (a remote device returns the pieces it received, so a large read is
    /// never copied into one buffer), unless `cancel` withdraws it first.
    fn read_segments(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<Vec<Bytes>, BlockError>> + Send {
        let _ = cancel;
        async move { self.read_at(offset, len).await.map(|b| vec![b]) }
    }

    /// [`BlockDevice::write_at`], unless `cancel` withdraws it first.
    fn write_at_cancellable(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<(), BlockError>> + Send {
        let _ = cancel;
        self.write_at(offset, data, fua)
    }

    /// [`BlockDevice::flush`], unless `cancel` withdraws it first.
    fn flush_cancellable(
        &self,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<(), BlockError>> + Send {
        let _ = cancel;
        self.flush()
    }

    /// [`BlockDevice::trim`]; `cancel` may stop it before or part way
    /// through (see [`BlockError::Withdrawn`]).
    fn trim_cancellable(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<(), BlockError>> + Send {
        let _ = cancel;
        self.trim(offset, len)
    }

    /// [`BlockDevice::write_zeroes`]; `cancel` may stop it before or part
    /// way through (see [`BlockError::Withdrawn`]).
    fn write_zeroes_cancellable(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<(), BlockError>> + Send {
        let _ = cancel;
        self.write_zeroes(offset, len, fua)
    }
}
