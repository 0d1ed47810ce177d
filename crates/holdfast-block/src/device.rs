//! What every block device here offers: the local file behind a target,
//! the remote volume behind an initiator, and the in-memory device of the
//! tests all implement [`BlockDevice`]; the NBD server serves any of them.

use std::future::Future;

use bytes::Bytes;
use thiserror::Error;

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
}

impl BlockError {
    /// The errno value for this error, as NBD replies carry it.
    pub fn errno(&self) -> u32 {
        match self {
            BlockError::OutOfRange { .. } | BlockError::Invalid(_) => 22, // EINVAL
            BlockError::ReadOnly => 1,                                    // EPERM
            BlockError::NoSpace => 28,                                    // ENOSPC
            BlockError::Io(_) => 5,                                       // EIO
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

/// A block device: byte-addressed, with durable-write controls.
///
/// Methods take `&self` and may run concurrently; a device that needs an
/// order between overlapping requests enforces it itself.
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
}
