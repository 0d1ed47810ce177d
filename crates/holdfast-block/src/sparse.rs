//! Space management on the file behind a [`crate::FileDevice`]: punching
//! holes and zeroing ranges with `fallocate`, finding holes with
//! `lseek(SEEK_DATA/SEEK_HOLE)`, and prefetching with `posix_fadvise`, all
//! through rustix's safe wrappers.
//!
//! Each call is one system call on the calling thread (the device runs
//! them on the blocking pool). What a filesystem or block device does not
//! support is reported as [`Unsupported`], so the caller can fall back
//! (write zeroes, report everything as data) or refuse (a FAST_ZERO).

use std::fs::File;
use std::num::NonZeroU64;

use rustix::fs::{Advice, FallocateFlags, SeekFrom};
use rustix::io::Errno;

use crate::device::{Extent, EXTENT_HOLE, EXTENT_ZERO, MAX_EXTENTS};

/// The outcome of a space operation: done, not supported here, or failed.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Done.
    Done,
    /// The filesystem or device does not support it (`EOPNOTSUPP`,
    /// `ENOSYS`, `EINVAL` for an unknown mode); nothing was done.
    Unsupported,
    /// It failed.
    Failed(std::io::Error),
}

/// Why an errno means "not supported here" rather than a failure.
fn unsupported(e: Errno) -> bool {
    e == Errno::OPNOTSUPP || e == Errno::NOSYS || e == Errno::INVAL || e == Errno::NOTTY
}

fn outcome(result: Result<(), Errno>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(e) if unsupported(e) => Outcome::Unsupported,
        Err(e) => Outcome::Failed(e.into()),
    }
}

/// Deallocates `len` bytes at `offset` (they read back as zeroes), keeping
/// the file's size.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> Outcome {
    if len == 0 {
        return Outcome::Done;
    }
    outcome(rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ))
}

/// Zeroes `len` bytes at `offset` without writing them (the range stays
/// allocated, as unwritten extents), keeping the file's size.
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> Outcome {
    if len == 0 {
        return Outcome::Done;
    }
    outcome(rustix::fs::fallocate(
        file,
        FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ))
}

/// Asks the kernel to read `len` bytes at `offset` into the page cache in
/// the background.
pub(crate) fn will_need(file: &File, offset: u64, len: u64) -> Outcome {
    let Some(len) = NonZeroU64::new(len) else {
        return Outcome::Done;
    };
    outcome(rustix::fs::fadvise(
        file,
        offset,
        Some(len),
        Advice::WillNeed,
    ))
}

/// The data and holes of `[offset, offset + len)` in a file of `size`
/// bytes, as at most [`MAX_EXTENTS`] consecutive extents from `offset`
/// (holes read as zeroes: [`EXTENT_HOLE`] | [`EXTENT_ZERO`]). `None` if the
/// file does not support `SEEK_DATA` (a block device): the caller reports
/// data.
///
/// The answer is a snapshot: a write racing with it may turn a hole into
/// data after it was reported (and a hole reported as data is always
/// allowed).
pub(crate) fn extents(
    file: &File,
    offset: u64,
    len: u32,
    size: u64,
) -> Result<Option<Vec<Extent>>, std::io::Error> {
    let end = offset.saturating_add(u64::from(len)).min(size);
    let mut out = Vec::new();
    let mut at = offset;
    while at < end && out.len() < MAX_EXTENTS {
        // Where the next data starts (ENXIO: none before the end of file).
        let data = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(d) => d.min(end),
            Err(e) if e == Errno::NXIO => end,
            Err(e) if unsupported(e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data > at {
            push(&mut out, at, data, EXTENT_HOLE | EXTENT_ZERO);
            at = data;
            continue;
        }
        // Data at `at`: where does the next hole start? (Every file has a
        // hole at its end, so ENXIO only comes from a racing truncate.)
        let hole = match rustix::fs::seek(file, SeekFrom::Hole(at)) {
            Ok(h) => h.min(end),
            Err(e) if e == Errno::NXIO => end,
            Err(e) if unsupported(e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let hole = hole.max(at + 1).min(end);
        push(&mut out, at, hole, 0);
        at = hole;
    }
    Ok(Some(out))
}

/// Appends `[from, to)` with `flags`, merging with the previous extent of
/// the same kind. `to - from` fits a u32 (the whole range does).
fn push(out: &mut Vec<Extent>, from: u64, to: u64, flags: u32) {
    let len = u32::try_from(to - from).unwrap_or(u32::MAX);
    match out.last_mut() {
        Some(last) if last.flags == flags => last.len = last.len.saturating_add(len),
        _ => out.push(Extent { len, flags }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn holes_are_found_punched_and_zeroed() {
        let dir = std::env::temp_dir().join(format!("holdfast-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        const MIB: u64 = 1 << 20;
        file.set_len(8 * MIB).expect("size");
        file.write_all_at(&[7u8; 1 << 20], 2 * MIB).expect("write");
        let Some(map) = extents(&file, 0, 8 * MIB as u32, 8 * MIB).expect("seek") else {
            eprintln!("note: no SEEK_DATA here; skipping");
            return;
        };
        let hole = EXTENT_HOLE | EXTENT_ZERO;
        assert_eq!(
            map,
            vec![
                Extent {
                    len: 2 << 20,
                    flags: hole
                },
                Extent {
                    len: 1 << 20,
                    flags: 0
                },
                Extent {
                    len: 5 << 20,
                    flags: hole
                },
            ]
        );
        // A window inside the data, and one that starts in a hole.
        assert_eq!(
            extents(&file, 2 * MIB + 4096, 4096, 8 * MIB).expect("seek"),
            Some(vec![Extent {
                len: 4096,
                flags: 0
            }])
        );
        assert!(matches!(punch_hole(&file, 2 * MIB, MIB), Outcome::Done));
        let mut back = vec![1u8; 4096];
        file.read_exact_at(&mut back, 2 * MIB).expect("read");
        assert!(back.iter().all(|b| *b == 0));
        assert_eq!(
            extents(&file, 0, 8 * MIB as u32, 8 * MIB).expect("seek"),
            Some(vec![Extent {
                len: 8 << 20,
                flags: hole
            }])
        );
        file.write_all_at(&[7u8; 4096], 0).expect("write");
        if let Outcome::Done = zero_range(&file, 0, 4096) {
            file.read_exact_at(&mut back, 0).expect("read");
            assert!(back.iter().all(|b| *b == 0));
        }
        assert!(matches!(will_need(&file, 0, MIB), Outcome::Done));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
