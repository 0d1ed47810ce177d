//! TRIM and WRITE_ZEROES on the file (see the space rules in
//! [`super`]'s module documentation): `fallocate` where the filesystem
//! can, zeroes written where it cannot.

use std::sync::atomic::Ordering;

use super::{io_error, Inner};
use crate::device::{BlockError, Cancel, Zeroing};
use crate::sparse::{self, Outcome};

impl Inner {
    /// Zeroes the range as `how` allows: `fallocate` (a punched hole, or
    /// a zeroed range), else writing zeroes, or refusing a fast-only
    /// request.
    pub(super) fn zero_range(
        &self,
        offset: u64,
        len: u64,
        how: Zeroing,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        if how.fua {
            self.check_durable("FUA write zeroes")?;
        }
        let mut result = if how.punch {
            sparse::punch_hole(&self.file, offset, len)
        } else {
            Outcome::Unsupported
        };
        if matches!(result, Outcome::Unsupported) {
            result = sparse::zero_range(&self.file, offset, len);
        }
        match result {
            Outcome::Done => {
                self.counters.punched.fetch_add(len, Ordering::Relaxed);
                if how.fua {
                    self.sync()?;
                    self.counters.fua_writes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Outcome::Unsupported if how.fast => Err(BlockError::NotSupported(format!(
                "{}: zeroing {offset}+{len} would mean writing zeroes (the filesystem \
                 cannot punch holes or zero ranges); nothing was done",
                self.path.display()
            ))),
            Outcome::Unsupported => self.zero(offset, len, how.fua, cancel),
            Outcome::Failed(e) => Err(io_error("write zeroes", offset, len, &self.path, &e)),
        }
    }

    /// Frees the range (it then reads as zeroes); never fails for want of
    /// space: then the range is left as it was.
    pub(super) fn trim(&self, offset: u64, len: u64, cancel: &Cancel) -> Result<(), BlockError> {
        let result = match sparse::punch_hole(&self.file, offset, len) {
            Outcome::Done => {
                self.counters.punched.fetch_add(len, Ordering::Relaxed);
                return Ok(());
            }
            Outcome::Unsupported => self.zero(offset, len, false, cancel),
            Outcome::Failed(e) => Err(io_error("trim", offset, len, &self.path, &e)),
        };
        match result {
            Err(BlockError::NoSpace) => {
                tracing::warn!(
                    path = %self.path.display(),
                    offset,
                    len,
                    "trim: no space to zero the range; it keeps its old contents \
                     (a trim only declares it unused)"
                );
                Ok(())
            }
            other => other,
        }
    }
}
