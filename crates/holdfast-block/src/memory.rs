//! An in-memory block device, for tests and the demo's reference model.

use std::sync::Mutex;

use bytes::Bytes;

use crate::device::{BlockDevice, BlockError, Cancel, Zeroing};

/// A block device held in memory.
#[derive(Debug)]
pub struct MemoryDevice {
    data: Mutex<Vec<u8>>,
}

impl MemoryDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: usize) -> Self {
        MemoryDevice {
            data: Mutex::new(vec![0; size]),
        }
    }

    /// A copy of the whole contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock cannot leave the bytes half-updated
        // in a way that matters to a test device: keep going.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, BlockError> {
        BlockError::check_range(offset, len, self.size())?;
        let start = usize::try_from(offset).map_err(|_| BlockError::Invalid("offset".into()))?;
        let len = usize::try_from(len).map_err(|_| BlockError::Invalid("length".into()))?;
        Ok(start..start + len)
    }
}

impl BlockDevice for MemoryDevice {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        let r = self.range(offset, u64::from(len))?;
        Ok(Bytes::copy_from_slice(&self.lock()[r]))
    }

    async fn write_at(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), BlockError> {
        let r = self.range(offset, data.len() as u64)?;
        self.lock()[r].copy_from_slice(&data);
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.write_zeroes(offset, len, false).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, _fua: bool) -> Result<(), BlockError> {
        let r = self.range(offset, u64::from(len))?;
        self.lock()[r].fill(0);
        Ok(())
    }

    /// Filling memory is always fast.
    async fn zero_range(
        &self,
        offset: u64,
        len: u32,
        _how: Zeroing,
        _cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.write_zeroes(offset, len, false).await
    }
}

/// Nothing to make durable: the contents are lost with the process anyway.
impl holdfast::ServiceDurability for MemoryDevice {}
