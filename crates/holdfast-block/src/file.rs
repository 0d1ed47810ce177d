//! A [`BlockDevice`] over a regular file or a block device.
//!
//! I/O is positional (`pread`/`pwrite` through
//! [`std::os::unix::fs::FileExt`]). A read or write the page cache can serve
//! at once is done inline (`RWF_NOWAIT`, see `nowait.rs`), and so is a small
//! buffered write (see `INLINE_WRITE_MAX`); the rest runs on tokio's
//! blocking pool, so requests proceed concurrently and a read that misses
//! the cache never stalls the runtime. Ordering between overlapping requests is the
//! caller's business (see [`crate::ordering`]).
//!
//! Durability:
//! * FLUSH is `fdatasync` on the file.
//! * A FUA write goes through a second descriptor opened with `O_DSYNC`, so
//!   it is durable when `pwrite` returns, without syncing anything else.
//! * With [`OpenOptions::direct`], both descriptors use `O_DIRECT` (the page
//!   cache is bypassed). O_DIRECT needs aligned memory, offsets and lengths:
//!   buffers are aligned here (in safe code, by offsetting into a larger
//!   allocation), and requests whose offset or length is not a multiple of
//!   [`DIRECT_ALIGN`] are refused with [`BlockError::Invalid`].
//!
//! * If `fdatasync` fails, the device stays failed: Linux reports a lost
//!   writeback once and then forgets it, so a later FLUSH could succeed
//!   although data written before it never reached the disk. From the
//!   first failure on, every FLUSH and every FUA write (and FUA
//!   WRITE_ZEROES) fails with [`BlockError::Io`] saying so, and is logged,
//!   until the device is opened again.
//!
//! Cancellation (see [`crate::device`]): an operation whose [`Cancel`]
//! fires before its I/O has started is withdrawn; one that has started
//! completes, except zeroes written by hand, which stop between chunks.
//!
//! Space (`sparse.rs`):
//! * TRIM punches a hole (`fallocate(PUNCH_HOLE | KEEP_SIZE)`): the space
//!   is freed and the range reads back as zeroes. TRIM never allocates,
//!   so it cannot fail for want of space: should the filesystem answer
//!   `ENOSPC` anyway, the TRIM succeeds and leaves the range as it was
//!   (a TRIM only declares the range unused).
//! * WRITE_ZEROES ([`BlockDevice::zero_range`]) punches a hole when the
//!   caller allows it ([`Zeroing::punch`]), otherwise zeroes with
//!   `fallocate(ZERO_RANGE | KEEP_SIZE)` (allocated, nothing written).
//! * Where the filesystem supports neither, zeroes are written, in chunks
//!   of at most [`ZERO_CHUNK`] bytes, checking for cancellation before
//!   each chunk; a fast-only request ([`Zeroing::fast`]) is refused
//!   instead with [`BlockError::NotSupported`].
//! * With FUA, a `fallocate` is followed by `fdatasync` (it is not covered
//!   by `O_DSYNC`).
//! * Block status reports holes from `lseek(SEEK_DATA / SEEK_HOLE)`; a
//!   file or device without them is all data. CACHE is
//!   `posix_fadvise(WILLNEED)`.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use thiserror::Error;
use tracing::error;

use crate::device::{BlockDevice, BlockError, Cancel, Extent, Zeroing};
use crate::nowait::NoWait;
use crate::sparse::{self, Outcome};

/// Buffered writes up to this size that `RWF_NOWAIT` could not complete
/// (ext4 refuses it for buffered writes) are done inline, on the async task,
/// instead of on the blocking pool. Such a write copies into the page cache
/// and takes microseconds; the pool's two thread hand-offs cost more than
/// that (measured with `holdfast bench block`, 4 KiB random writes). It can
/// sleep when the kernel throttles a process that dirties pages faster than
/// the disk takes them; then it holds this worker thread for that time,
/// while the runtime's other workers go on.
const INLINE_WRITE_MAX: usize = 16 * 1024;

/// Alignment of memory, offsets and lengths for O_DIRECT I/O. 4096 satisfies
/// every common logical block size (512 and 4096).
pub const DIRECT_ALIGN: usize = 4096;

/// The largest write issued when writing zeroes.
pub const ZERO_CHUNK: usize = 1 << 20;

/// A page-aligned chunk of zeroes (aligned for O_DIRECT).
#[repr(align(4096))]
struct AlignedZeroes([u8; ZERO_CHUNK]);

static ZEROES: AlignedZeroes = AlignedZeroes([0; ZERO_CHUNK]);

/// How to open a [`FileDevice`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// For a regular file: create it if missing and extend it (sparsely) to
    /// this size; a larger file is refused rather than shrunk. `None`: the
    /// file must exist and its size is used. Must be `None` for a block
    /// device (whose size is its own).
    pub size: Option<u64>,
    /// Open read-only: writes, trims and write-zeroes are refused.
    pub read_only: bool,
    /// Use O_DIRECT (bypass the page cache); requests must then be aligned
    /// to [`DIRECT_ALIGN`].
    pub direct: bool,
}

/// Why a file could not be opened as a device.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The operating system refused.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The path or the options are not usable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Counters of a [`FileDevice`], for tests and operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Reads completed.
    pub reads: u64,
    /// Writes completed (FUA or not; trims and write-zeroes excluded).
    pub writes: u64,
    /// Writes, trims and write-zeroes that went through the O_DSYNC
    /// descriptor.
    pub fua_writes: u64,
    /// `fdatasync` calls (flushes).
    pub syncs: u64,
    /// Bytes zeroed by trims and write-zeroes by writing zeroes.
    pub zeroed: u64,
    /// Bytes deallocated or zeroed with `fallocate` (nothing written).
    pub punched: u64,
    /// Bytes prefetched by CACHE (`posix_fadvise(WILLNEED)`).
    pub cached: u64,
}

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    fua_writes: AtomicU64,
    syncs: AtomicU64,
    zeroed: AtomicU64,
    punched: AtomicU64,
    cached: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    /// The same file opened with O_DSYNC, for FUA writes (`None` if read-only).
    dsync: Option<File>,
    size: u64,
    read_only: bool,
    direct: bool,
    counters: Counters,
    /// Inline attempts that only touch the page cache.
    nowait: NoWait,
    /// Set by the first failed `fdatasync`; from then on every FLUSH and
    /// FUA write fails with this message.
    failed: OnceLock<String>,
    /// Held across the durability check, `fdatasync` and recording its
    /// failure: Linux reports a lost writeback to only one of several
    /// concurrent syncs, so a concurrent FLUSH could otherwise succeed
    /// after another one saw the data lost.
    sync_lock: std::sync::Mutex<()>,
    /// Set after every write, trim or write-zeroes has done its I/O (or
    /// failed part way); cleared under `sync_lock` by a durable target's
    /// group sync, which skips the `fdatasync` when nothing changed.
    dirty: AtomicBool,
    /// Tests: fail the next `fdatasync` calls with EIO.
    #[cfg(test)]
    fail_syncs: std::sync::atomic::AtomicU32,
}

/// A block device backed by a regular file or a block device. Cheap to
/// clone: clones share the open descriptors.
#[derive(Clone, Debug)]
pub struct FileDevice {
    inner: Arc<Inner>,
}

impl FileDevice {
    /// Opens (and for a regular file with [`OpenOptions::size`], creates or
    /// extends) `path` as a device.
    pub fn open(path: impl AsRef<Path>, options: OpenOptions) -> Result<FileDevice, OpenError> {
        let path = path.as_ref().to_path_buf();
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| OpenError::Io {
                path,
                action,
                source,
            }
        };
        let invalid = |reason: String| OpenError::Invalid {
            path: path.clone(),
            reason,
        };
        if options.read_only && options.size.is_some() {
            return Err(invalid(
                "a size was given for a read-only device; it could not be applied".into(),
            ));
        }
        let existed = path.exists();
        let flags = if options.direct { libc::O_DIRECT } else { 0 };
        let open = |extra_flags: i32, create: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(!options.read_only)
                .create(create)
                .custom_flags(flags | extra_flags)
                .open(&path)
        };
        let file = open(0, options.size.is_some() && !options.read_only).map_err(io("open"))?;
        let meta = file.metadata().map_err(io("stat"))?;
        let file_type = meta.file_type();
        let size = if file_type.is_block_device() {
            if let Some(s) = options.size {
                return Err(invalid(format!(
                    "is a block device; its size is its own (a size of {s} bytes was given)"
                )));
            }
            (&file).seek(SeekFrom::End(0)).map_err(io("seek"))?
        } else if file_type.is_file() {
            match options.size {
                None => meta.len(),
                Some(s) if s < meta.len() => {
                    return Err(invalid(format!(
                        "the file is {} bytes, larger than the requested {s}; \
                         refusing to shrink it",
                        meta.len()
                    )))
                }
                Some(s) => {
                    if s > meta.len() {
                        file.set_len(s).map_err(io("extend"))?;
                    }
                    if s != meta.len() || !existed {
                        // Make the new size (and the new name) durable now,
                        // so a FLUSH never has to cover them.
                        file.sync_all().map_err(io("sync"))?;
                        sync_parent(&path).map_err(io("sync the directory"))?;
                    }
                    s
                }
            }
        } else {
            return Err(invalid(
                "is neither a regular file nor a block device".into(),
            ));
        };
        let dsync = if options.read_only {
            None
        } else {
            Some(open(libc::O_DSYNC, false).map_err(io("open with O_DSYNC"))?)
        };
        Ok(FileDevice {
            inner: Arc::new(Inner {
                path,
                file,
                dsync,
                size,
                read_only: options.read_only,
                direct: options.direct,
                counters: Counters::default(),
                nowait: NoWait::new(!options.direct),
                failed: OnceLock::new(),
                sync_lock: std::sync::Mutex::new(()),
                dirty: AtomicBool::new(false),
                #[cfg(test)]
                fail_syncs: std::sync::atomic::AtomicU32::new(0),
            }),
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// True if opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.inner.direct
    }

    /// The alignment requests must keep: [`DIRECT_ALIGN`] with O_DIRECT,
    /// otherwise 1.
    pub fn alignment(&self) -> u32 {
        if self.inner.direct {
            DIRECT_ALIGN as u32
        } else {
            1
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> FileStats {
        let c = &self.inner.counters;
        FileStats {
            reads: c.reads.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            fua_writes: c.fua_writes.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            zeroed: c.zeroed.load(Ordering::Relaxed),
            punched: c.punched.load(Ordering::Relaxed),
            cached: c.cached.load(Ordering::Relaxed),
        }
    }

    /// Checks range, alignment and (for writes) read-only.
    fn check(&self, offset: u64, len: u64, write: bool) -> Result<(), BlockError> {
        if write && self.inner.read_only {
            return Err(BlockError::ReadOnly);
        }
        BlockError::check_range(offset, len, self.inner.size)?;
        let align = DIRECT_ALIGN as u64;
        if self.inner.direct && (!offset.is_multiple_of(align) || !len.is_multiple_of(align)) {
            return Err(BlockError::Invalid(format!(
                "{offset}+{len}: the device is opened with O_DIRECT; offsets and lengths \
                 must be multiples of {DIRECT_ALIGN}"
            )));
        }
        Ok(())
    }

    /// The error of the first failed `fdatasync`, if one failed.
    pub fn failure(&self) -> Option<&str> {
        self.inner.failed.get().map(String::as_str)
    }

    /// Runs `f` on the blocking pool, unless `cancel` has fired by the time
    /// a pool thread takes it up (then it is withdrawn: `f` never runs).
    async fn blocking<T, F>(
        &self,
        what: &'static str,
        cancel: &Cancel,
        f: F,
    ) -> Result<T, BlockError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, BlockError> + Send + 'static,
    {
        cancel.check(what)?;
        let inner = self.inner.clone();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            cancel.check(what)?;
            f(&inner)
        })
        .await
        .map_err(|e| BlockError::Io(format!("the I/O worker failed: {e}")))?
    }
}

/// Fsyncs the directory holding `path`, so a new file's name is durable.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Maps an I/O error to a block error.
fn io_error(op: &str, offset: u64, len: u64, path: &Path, e: &std::io::Error) -> BlockError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => BlockError::NoSpace,
        _ => BlockError::Io(format!("{op} {offset}+{len} on {}: {e}", path.display())),
    }
}

/// A zeroed buffer of `len` bytes whose `[start, start + len)` is aligned
/// for O_DIRECT: returns the allocation and `start`.
fn aligned_buffer(len: usize) -> (Vec<u8>, usize) {
    let buf = vec![0u8; len + DIRECT_ALIGN];
    // Only the address's value is used, to find an aligned offset.
    let addr = buf.as_ptr() as usize;
    let start = (DIRECT_ALIGN - addr % DIRECT_ALIGN) % DIRECT_ALIGN;
    (buf, start)
}

impl Inner {
    fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        let err = |e: std::io::Error| io_error("read", offset, len as u64, &self.path, &e);
        let data = if self.direct {
            let (mut buf, start) = aligned_buffer(len);
            self.file
                .read_exact_at(&mut buf[start..start + len], offset)
                .map_err(err)?;
            Bytes::from(buf).slice(start..start + len)
        } else {
            return self.read_rest(offset, vec![0u8; len], 0);
        };
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }

    /// Finishes a buffered read of `buf.len()` bytes at `offset` whose first
    /// `done` bytes are already in `buf`.
    fn read_rest(&self, offset: u64, mut buf: Vec<u8>, done: usize) -> Result<Bytes, BlockError> {
        let len = buf.len();
        if let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            self.file
                .read_exact_at(rest, offset + done as u64)
                .map_err(|e| io_error("read", offset, len as u64, &self.path, &e))?;
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        Ok(Bytes::from(buf))
    }

    fn target(&self, fua: bool) -> &File {
        match (&self.dsync, fua) {
            (Some(f), true) => f,
            _ => &self.file,
        }
    }

    /// `Err` if an earlier `fdatasync` failed: durability can no longer be
    /// promised.
    fn check_durable(&self, op: &str) -> Result<(), BlockError> {
        match self.failed.get() {
            None => Ok(()),
            Some(first) => {
                error!(
                    path = %self.path.display(),
                    "{op} refused: an earlier fdatasync failed ({first}); \
                     the device stays failed until it is reopened"
                );
                Err(BlockError::Io(format!(
                    "{op} on {}: an earlier fdatasync failed ({first}); written data may \
                     have been lost, and the device stays failed until it is reopened",
                    self.path.display()
                )))
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        if fua {
            self.check_durable("FUA write")?;
        }
        let file = self.target(fua);
        let result = if self.direct && !(data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
            let (mut buf, start) = aligned_buffer(data.len());
            buf[start..start + data.len()].copy_from_slice(data);
            file.write_all_at(&buf[start..start + data.len()], offset)
        } else {
            file.write_all_at(data, offset)
        };
        result.map_err(|e| io_error("write", offset, data.len() as u64, &self.path, &e))?;
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        if fua {
            self.counters.fua_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Zeroes the range chunk by chunk; stops (withdrawn) when `cancel`
    /// fires between chunks.
    fn zero(&self, offset: u64, len: u64, fua: bool, cancel: &Cancel) -> Result<(), BlockError> {
        self.zero_with(offset, len, fua, cancel, || {})
    }

    /// [`Inner::zero`], calling `after_chunk` after each chunk (tests use it
    /// to cancel part way).
    fn zero_with(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        cancel: &Cancel,
        mut after_chunk: impl FnMut(),
    ) -> Result<(), BlockError> {
        if fua {
            self.check_durable("FUA write zeroes")?;
        }
        let file = self.target(fua);
        let mut done = 0u64;
        while done < len {
            if done > 0 && cancel.is_cancelled() {
                return Err(BlockError::Withdrawn(format!(
                    "zeroing {offset}+{len} stopped after {done} bytes"
                )));
            }
            let n = (len - done).min(ZERO_CHUNK as u64) as usize;
            file.write_all_at(&ZEROES.0[..n], offset + done)
                .map_err(|e| io_error("write zeroes", offset + done, n as u64, &self.path, &e))?;
            done += n as u64;
            self.counters.zeroed.fetch_add(n as u64, Ordering::Relaxed);
            after_chunk();
        }
        if fua {
            self.counters.fua_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), BlockError> {
        let _one_at_a_time = self.lock_sync();
        self.sync_held()
    }

    /// Takes `sync_lock` (a panic while holding it left nothing half done).
    fn lock_sync(&self) -> std::sync::MutexGuard<'_, ()> {
        self.sync_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `fdatasync`, with `sync_lock` held by the caller.
    fn sync_held(&self) -> Result<(), BlockError> {
        self.check_durable("flush")?;
        #[cfg(test)]
        let result = if self
            .fail_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        } else {
            self.file.sync_data()
        };
        #[cfg(not(test))]
        let result = self.file.sync_data();
        if let Err(e) = result {
            let message = e.to_string();
            error!(
                path = %self.path.display(),
                error = %message,
                "fdatasync failed: writeback may have been lost; the device is failed \
                 (every FLUSH and FUA write fails) until it is reopened"
            );
            let _ = self.failed.set(message);
            return Err(io_error("flush", 0, self.size, &self.path, &e));
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl FileDevice {
    async fn read(&self, offset: u64, len: u32, cancel: &Cancel) -> Result<Bytes, BlockError> {
        self.check(offset, u64::from(len), false)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        cancel.check("read")?;
        let len = len as usize;
        if self.inner.direct {
            return self
                .blocking("read", cancel, move |f| f.read(offset, len))
                .await;
        }
        // From the page cache at once if it can; the rest on the pool.
        let mut buf = vec![0u8; len];
        let done = self.inner.nowait.read(&self.inner.file, offset, &mut buf);
        if done == len {
            self.inner.counters.reads.fetch_add(1, Ordering::Relaxed);
            return Ok(Bytes::from(buf));
        }
        self.blocking("read", cancel, move |f| f.read_rest(offset, buf, done))
            .await
    }

    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.check(offset, data.len() as u64, true)?;
        if data.is_empty() {
            return if fua { self.sync(cancel).await } else { Ok(()) };
        }
        let result = self.write_data(offset, data, fua, cancel).await;
        self.inner.dirty.store(true, Ordering::Release);
        result
    }

    /// [`FileDevice::write`] of a checked, non-empty write.
    async fn write_data(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        cancel.check("write")?;
        // Into the page cache at once if it can (a FUA write waits for the
        // device by definition); the rest on the pool.
        let done = if fua || self.inner.direct {
            0
        } else {
            self.inner.nowait.write(&self.inner.file, offset, &data)
        };
        if done == data.len() {
            self.inner.counters.writes.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if !fua && !self.inner.direct && data.len() - done <= INLINE_WRITE_MAX {
            return self.inner.write(offset + done as u64, &data[done..], false);
        }
        // Part of the write may be in the page cache already: the rest is
        // no longer withdrawn once started, so it runs regardless.
        let rest = if done > 0 { &Cancel::new() } else { cancel };
        self.blocking("write", rest, move |f| {
            f.write(offset + done as u64, &data[done..], fua)
        })
        .await
    }

    async fn sync(&self, cancel: &Cancel) -> Result<(), BlockError> {
        if self.inner.read_only {
            return Ok(());
        }
        self.blocking("flush", cancel, Inner::sync).await
    }

    async fn zeroes(
        &self,
        offset: u64,
        len: u32,
        how: Zeroing,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.check(offset, u64::from(len), true)?;
        let c = cancel.clone();
        let result = self
            .blocking("write zeroes", cancel, move |f| {
                f.zero_range(offset, u64::from(len), how, &c)
            })
            .await;
        self.inner.dirty.store(true, Ordering::Release);
        result
    }

    async fn discard(&self, offset: u64, len: u32, cancel: &Cancel) -> Result<(), BlockError> {
        self.check(offset, u64::from(len), true)?;
        let c = cancel.clone();
        let result = self
            .blocking("trim", cancel, move |f| f.trim(offset, u64::from(len), &c))
            .await;
        self.inner.dirty.store(true, Ordering::Release);
        result
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.inner.size
    }

    fn read_only(&self) -> bool {
        self.inner.read_only
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.read(offset, len, &Cancel::new()).await
    }

    async fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.write(offset, data, fua, &Cancel::new()).await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.sync(&Cancel::new()).await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.discard(offset, len, &Cancel::new()).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        let how = Zeroing {
            fua,
            ..Zeroing::default()
        };
        self.zeroes(offset, len, how, &Cancel::new()).await
    }

    fn min_block_size(&self) -> u32 {
        self.alignment()
    }

    async fn zero_range(
        &self,
        offset: u64,
        len: u32,
        how: Zeroing,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.zeroes(offset, len, how, cancel).await
    }

    async fn block_status(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> Result<Vec<Extent>, BlockError> {
        let size = self.inner.size;
        BlockError::check_range(offset, u64::from(len), size)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        self.blocking("block status", cancel, move |f| {
            match sparse::extents(&f.file, offset, len, size) {
                Ok(Some(extents)) if !extents.is_empty() => Ok(extents),
                Ok(_) => Ok(vec![Extent { len, flags: 0 }]),
                Err(e) => Err(io_error(
                    "block status",
                    offset,
                    u64::from(len),
                    &f.path,
                    &e,
                )),
            }
        })
        .await
    }

    async fn cache(&self, offset: u64, len: u32, cancel: &Cancel) -> Result<(), BlockError> {
        BlockError::check_range(offset, u64::from(len), self.inner.size)?;
        self.blocking("cache", cancel, move |f| {
            match sparse::will_need(&f.file, offset, u64::from(len)) {
                Outcome::Done => {
                    f.counters
                        .cached
                        .fetch_add(u64::from(len), Ordering::Relaxed);
                    Ok(())
                }
                Outcome::Unsupported => Ok(()),
                Outcome::Failed(e) => Err(io_error("cache", offset, u64::from(len), &f.path, &e)),
            }
        })
        .await
    }

    async fn read_segments(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> Result<Vec<Bytes>, BlockError> {
        self.read(offset, len, cancel).await.map(|b| vec![b])
    }

    async fn write_at_cancellable(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.write(offset, data, fua, cancel).await
    }

    async fn flush_cancellable(&self, cancel: &Cancel) -> Result<(), BlockError> {
        self.sync(cancel).await
    }

    async fn trim_cancellable(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.discard(offset, len, cancel).await
    }

    async fn write_zeroes_cancellable(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        let how = Zeroing {
            fua,
            ..Zeroing::default()
        };
        self.zeroes(offset, len, how, cancel).await
    }
}

#[path = "file_durability.rs"]
mod durability;
#[path = "file_space.rs"]
mod space;

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
