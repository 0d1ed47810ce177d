//! The durable session store as a sans-IO engine: a log of group records
//! with checkpoints (PROTOCOL.md §12.4).
//!
//! [`DurableLog::commit`] turns the [`StateChange`]s of one `Ready` into one
//! group record (length, crc32c, group number, wall time, the service's
//! state, the changes) and the file operations ([`StoreOp`]) that make it
//! durable: `WriteAt` then `Sync`. The driver executes them and only then
//! sends the `Ready`'s bytes.
//!
//! The log file is pre-written with zeros ahead of its write position
//! ([`LogLimits::prewrite`]), so a commit overwrites bytes already in the
//! file and its `fdatasync` has only data to flush, not a new file size.
//! When a group does not fit in the zeros left, the same commit first
//! extends the file with zeros (written bytes, so the blocks are allocated
//! and initialised), then writes the group, then syncs once. Only zeros
//! from where the next group would start to the end of the file are the
//! clean end of the log.
//!
//! When the log's used bytes outgrow
//! `max(LogLimits::min_log, 2 × live size)` the same call adds a checkpoint:
//! the whole [`MemoryStore`] written to a temporary file, synced, renamed
//! over the checkpoint, the directory synced, then a fresh log the same way.
//! The checkpoint names the last group it contains and replay skips groups
//! at or below it, so a crash between any two operations recovers the state
//! of the last synced group. A fresh log (at creation and after every
//! checkpoint) is written already pre-written.
//!
//! [`DurableLog::recover`] rebuilds the [`MemoryStore`] from the files'
//! bytes. Those bytes are hostile input: every length and count is bounded,
//! every group and the checkpoint carry a crc32c, and anything that does not
//! check is a typed [`CorruptStore`] naming the file, the offset and the
//! sessions whose state cannot be trusted. The one exception is the remains
//! of the group in flight at a crash, after the last valid group: reported
//! as a [`TornTail`] and dropped (see `recover` for the exact rule).
//!
//! No file IO happens here: the runtime (`holdfast::durable`) runs the ops.

mod codec;
mod finished;
mod image;

use std::fmt;

use bytes::Bytes;

use crate::ids::SessionId;
use crate::store::MemoryStore;
use crate::target::StateChange;

use codec::{DecodeError, Writer};
use finished::finished_in_group;

/// First bytes of a log file.
const LOG_MAGIC: &[u8; 8] = b"HFSLOG\x00\x01";
/// First bytes of a checkpoint file.
const CKPT_MAGIC: &[u8; 8] = b"HFSCKP\x00\x01";
/// Log header: magic, incarnation u32, base group u64, crc32c u32.
const LOG_HEADER: usize = 8 + 4 + 8 + 4;
/// Group header: body length u32, crc32c of the length u32, crc32c of the
/// body u32. The length's own checksum tells a flipped length (corrupt)
/// from a group cut short by a crash (torn).
const GROUP_HEADER: usize = 12;
/// Smallest group body: group u64, wall u64, state flag u8, count u32.
const MIN_GROUP_BODY: usize = 8 + 8 + 1 + 4;
/// Checkpoint header: magic, body length u64, crc32c u32.
const CKPT_HEADER: usize = 8 + 8 + 4;
/// Smallest encoded change (a tag and a session id).
const MIN_CHANGE: usize = 9;

/// Size limits of the store; a file read back that exceeds them is corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// The log is never checkpointed below this size, in bytes.
    pub min_log: u64,
    /// Largest group record, in bytes (a `Ready` whose changes exceed it
    /// cannot be committed; the target's per-session limits keep a `Ready`
    /// far below the default).
    pub max_group: u32,
    /// Largest checkpoint, in bytes.
    pub max_checkpoint: u64,
    /// Zeros written ahead of the log's write position, in bytes: a fresh
    /// log has this many after its header, and a group that does not fit
    /// in what is left extends the file by the group and this many. Zero
    /// makes the log grow with every group (each `fdatasync` then also
    /// commits a new file size).
    pub prewrite: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            min_log: 8 << 20,
            max_group: 1 << 30,
            max_checkpoint: 16 << 30,
            prewrite: 1 << 20,
        }
    }
}

/// The files of a store directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreFile {
    /// The log of group records since the checkpoint.
    Log,
    /// A new log being written, renamed over [`StoreFile::Log`].
    LogTmp,
    /// The checkpoint: the whole store as of a group.
    Checkpoint,
    /// A new checkpoint being written, renamed over [`StoreFile::Checkpoint`].
    CheckpointTmp,
}

impl StoreFile {
    /// The file's name in the store directory.
    pub fn name(self) -> &'static str {
        match self {
            StoreFile::Log => "session.log",
            StoreFile::LogTmp => "session.log.tmp",
            StoreFile::Checkpoint => "session.ckpt",
            StoreFile::CheckpointTmp => "session.ckpt.tmp",
        }
    }
}

impl fmt::Display for StoreFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One file operation, executed in order by the driver. An operation that
/// fails leaves the store in an unknown state: the driver must stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Write bytes at an offset of an existing file (`pwrite`), over what
    /// is there or past its end (the file grows).
    WriteAt {
        /// The file.
        file: StoreFile,
        /// Where the bytes go, from the file's start.
        offset: u64,
        /// The bytes.
        bytes: Bytes,
    },
    /// Make the file's data durable (`fdatasync`).
    Sync(StoreFile),
    /// Create or truncate the file and write these bytes.
    Write {
        /// The file.
        file: StoreFile,
        /// Its whole content.
        bytes: Bytes,
    },
    /// Rename `from` over `to` (atomic replace).
    Rename {
        /// The file renamed.
        from: StoreFile,
        /// Its new name.
        to: StoreFile,
    },
    /// Make the directory's entries (renames) durable.
    SyncDir,
    /// Remove the file if it exists.
    Remove(StoreFile),
}

/// The log ended in the remains of a group that does not check: the group
/// in flight at a crash, never synced, so never acknowledged. Its bytes are
/// dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Where the torn group starts in the log (the end of the last valid
    /// group).
    pub offset: u64,
    /// From `offset` to the last non-zero byte of the file, inclusive: the
    /// torn group's bytes that reached the disk (the pre-written zeros
    /// after them are not counted).
    pub bytes: u64,
}

/// A store file that fails its checks: never replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "session store file {file} is corrupt at byte {offset}: {what}; {}",
    affected(sessions, *all_sessions)
)]
pub struct CorruptStore {
    /// The file.
    pub file: StoreFile,
    /// The offset of the bad record.
    pub offset: u64,
    /// What is wrong.
    pub what: &'static str,
    /// The sessions whose state cannot be trusted: those in the store at
    /// the bad point (any of them may have records after it) and those
    /// named in the groups after it that can still be read.
    pub sessions: Vec<SessionId>,
    /// True when the checkpoint is bad or missing: every session it held is
    /// affected too, not only those listed.
    pub all_sessions: bool,
}

fn affected(sessions: &[SessionId], all: bool) -> String {
    const SHOWN: usize = 16;
    let mut s = if sessions.is_empty() {
        String::from("no session is known to be affected")
    } else {
        let names: Vec<String> = sessions.iter().take(SHOWN).map(|s| s.to_string()).collect();
        let more = sessions.len().saturating_sub(SHOWN);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!(
            "the state of session(s) {}{tail} cannot be trusted",
            names.join(", ")
        )
    };
    if all {
        s.push_str(" (nor that of any session the checkpoint held)");
    }
    s
}

/// What [`DurableLog::recover`] rebuilt.
#[derive(Debug)]
pub struct Recovered {
    /// The engine, ready for the next commit once [`Recovered::ops`] ran.
    pub log: DurableLog,
    /// The store as of the last complete group.
    pub store: MemoryStore,
    /// The target incarnation the store belongs to.
    pub incarnation: u32,
    /// The service's state of the last group that carried one.
    pub service_state: Option<Bytes>,
    /// Wall-clock milliseconds of the last durable group (or checkpoint).
    pub last_commit_wall_ms: u64,
    /// Groups replayed from the log (after the checkpoint).
    pub groups_replayed: u64,
    /// A dropped incomplete final group, if any.
    pub torn_tail: Option<TornTail>,
    /// Operations to run before the first commit: a fresh checkpoint and
    /// log, which drop a torn tail and every group already in the
    /// checkpoint.
    pub ops: Vec<StoreOp>,
}

/// The durable log engine: keeps the store's state in memory (for
/// checkpoints) and produces the file operations of each commit.
#[derive(Debug)]
pub struct DurableLog {
    incarnation: u32,
    limits: LogLimits,
    store: MemoryStore,
    service_state: Option<Bytes>,
    /// Number of the last group committed.
    last_group: u64,
    /// Bytes used in the current log file: its header and groups, where
    /// the next group is written.
    log_len: u64,
    /// Length of the current log file: `log_len` and the zeros after it.
    file_len: u64,
    /// Used log bytes at which the live size is measured again.
    next_check: u64,
    last_wall_ms: u64,
}

impl DurableLog {
    /// A new, empty store for `incarnation`; the ops create its log.
    pub fn create(incarnation: u32, limits: LogLimits) -> (DurableLog, Vec<StoreOp>) {
        let mut log = DurableLog {
            incarnation,
            limits,
            store: MemoryStore::new(),
            service_state: None,
            last_group: 0,
            log_len: 0,
            file_len: 0,
            next_check: limits.min_log,
            last_wall_ms: 0,
        };
        let ops = log.new_log_ops();
        (log, ops)
    }

    /// The incarnation the store belongs to.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// The state as of the last commit.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The service's state as of the last commit that carried one.
    pub fn service_state(&self) -> Option<&Bytes> {
        self.service_state.as_ref()
    }

    /// Bytes used in the current log file (header and groups): the write
    /// position of the next group, and the size the checkpoint rule uses.
    pub fn log_len(&self) -> u64 {
        self.log_len
    }

    /// Bytes the current log file holds on disk: the used bytes and the
    /// pre-written zeros after them (at most the largest group plus
    /// [`LogLimits::prewrite`] more than [`DurableLog::log_len`]).
    pub fn log_file_len(&self) -> u64 {
        self.file_len
    }

    /// Number of the last group committed.
    pub fn last_group(&self) -> u64 {
        self.last_group
    }

    /// Records one group: `changes` (a `Ready`'s, in order) and the
    /// service's state after them (`None`: unchanged). The returned ops
    /// make it durable; the group is durable once its `Sync` ran (a
    /// checkpoint that follows only compacts).
    pub fn commit(
        &mut self,
        changes: &[StateChange],
        service_state: Option<&Bytes>,
        wall_ms: u64,
    ) -> Vec<StoreOp> {
        self.last_group += 1;
        let mut w = Writer::default();
        w.raw(&[0; GROUP_HEADER]);
        w.u64(self.last_group);
        w.u64(wall_ms);
        match service_state {
            None => w.u8(0),
            Some(s) => {
                w.u8(1);
                w.bytes(s);
            }
        }
        w.u32(u32::try_from(changes.len()).unwrap_or(u32::MAX));
        for (c, finished) in changes.iter().zip(finished_in_group(changes)) {
            codec::put_change(&mut w, c, finished);
        }
        let mut buf = w.buf;
        let body_len = u32::try_from(buf.len() - GROUP_HEADER).unwrap_or(u32::MAX);
        let crc = crc32c::crc32c(&buf[GROUP_HEADER..]);
        buf[..4].copy_from_slice(&body_len.to_le_bytes());
        let len_crc = crc32c::crc32c(&buf[..4]);
        buf[4..8].copy_from_slice(&len_crc.to_le_bytes());
        buf[8..12].copy_from_slice(&crc.to_le_bytes());
        let offset = self.log_len;
        self.log_len = self.log_len.saturating_add(buf.len() as u64);

        self.store.apply_all(changes);
        if let Some(s) = service_state {
            self.service_state = Some(s.clone());
        }
        self.last_wall_ms = self.last_wall_ms.max(wall_ms);

        let mut ops = Vec::with_capacity(3);
        if self.log_len > self.file_len {
            // Extend first, so the group's write never grows the file
            // (without pre-writing, the group's write grows it).
            let end = self.log_len.saturating_add(self.limits.prewrite);
            if self.limits.prewrite > 0 {
                ops.push(StoreOp::WriteAt {
                    file: StoreFile::Log,
                    offset: self.file_len,
                    bytes: zeros(end - self.file_len),
                });
            }
            self.file_len = end;
        }
        ops.push(StoreOp::WriteAt {
            file: StoreFile::Log,
            offset,
            bytes: Bytes::from(buf),
        });
        ops.push(StoreOp::Sync(StoreFile::Log));
        if self.log_len >= self.next_check {
            let image = self.checkpoint_bytes();
            let live = image.len() as u64;
            if self.log_len > self.limits.min_log.max(live.saturating_mul(2)) {
                ops.extend(self.checkpoint_ops(image));
            } else {
                self.next_check = self
                    .log_len
                    .saturating_add(live.max(self.limits.min_log / 2).max(1));
            }
        }
        ops
    }

    /// A checkpoint of the current state and a fresh log, whatever the
    /// log's size (used after recovery, and by tests).
    pub fn checkpoint(&mut self) -> Vec<StoreOp> {
        let image = self.checkpoint_bytes();
        self.checkpoint_ops(image)
    }

    fn checkpoint_ops(&mut self, image: Bytes) -> Vec<StoreOp> {
        let live = image.len() as u64;
        let mut ops = vec![
            StoreOp::Write {
                file: StoreFile::CheckpointTmp,
                bytes: image,
            },
            StoreOp::Sync(StoreFile::CheckpointTmp),
            StoreOp::Rename {
                from: StoreFile::CheckpointTmp,
                to: StoreFile::Checkpoint,
            },
            StoreOp::SyncDir,
        ];
        ops.extend(self.new_log_ops());
        self.next_check = self.limits.min_log.max(live.saturating_mul(2));
        ops
    }

    /// A fresh log whose groups follow `last_group`, pre-written.
    fn new_log_ops(&mut self) -> Vec<StoreOp> {
        let mut w = Writer::default();
        w.raw(LOG_MAGIC);
        w.u32(self.incarnation);
        w.u64(self.last_group);
        let crc = crc32c::crc32c(&w.buf);
        w.u32(crc);
        let zeros = usize::try_from(self.limits.prewrite).unwrap_or(usize::MAX);
        w.buf.resize(LOG_HEADER.saturating_add(zeros), 0);
        self.log_len = LOG_HEADER as u64;
        self.file_len = w.buf.len() as u64;
        vec![
            StoreOp::Write {
                file: StoreFile::LogTmp,
                bytes: Bytes::from(w.buf),
            },
            StoreOp::Sync(StoreFile::LogTmp),
            StoreOp::Rename {
                from: StoreFile::LogTmp,
                to: StoreFile::Log,
            },
            StoreOp::SyncDir,
        ]
    }

    fn checkpoint_bytes(&self) -> Bytes {
        let mut w = Writer::default();
        w.raw(CKPT_MAGIC);
        w.raw(&[0; 12]);
        w.u32(self.incarnation);
        w.u64(self.last_group);
        w.u64(self.last_wall_ms);
        match &self.service_state {
            None => w.u8(0),
            Some(s) => {
                w.u8(1);
                w.bytes(s);
            }
        }
        image::put_store(&mut w, &self.store);
        let mut buf = w.buf;
        let body_len = (buf.len() - CKPT_HEADER) as u64;
        let crc = crc32c::crc32c(&buf[CKPT_HEADER..]);
        buf[8..16].copy_from_slice(&body_len.to_le_bytes());
        buf[16..20].copy_from_slice(&crc.to_le_bytes());
        Bytes::from(buf)
    }

    /// Rebuilds the store from the checkpoint's and the log's bytes (`None`:
    /// the file does not exist). A store with neither file is not a store:
    /// the caller creates one with [`DurableLog::create`].
    pub fn recover(
        checkpoint: Option<&[u8]>,
        log: Option<&[u8]>,
        limits: LogLimits,
    ) -> Result<Recovered, CorruptStore> {
        recover::run(checkpoint, log, limits)
    }
}

mod recover;

/// `n` zero bytes (the allocation is zeroed by the allocator, not filled).
fn zeros(n: u64) -> Bytes {
    Bytes::from(vec![0u8; usize::try_from(n).unwrap_or(usize::MAX)])
}

fn decode_err(file: StoreFile, base: usize, e: DecodeError) -> (StoreFile, u64, &'static str) {
    (file, (base + e.at) as u64, e.what)
}
