//! The durable session store as a sans-IO engine: an append-only log of
//! group records with checkpoints (PROTOCOL.md §12.4).
//!
//! [`DurableLog::commit`] turns the [`StateChange`]s of one `Ready` into one
//! group record (length, crc32c, group number, wall time, the service's
//! state, the changes) and the file operations ([`StoreOp`]) that make it
//! durable: `Append` then `Sync`. The driver executes them and only then
//! sends the `Ready`'s bytes. When the log outgrows
//! `max(LogLimits::min_log, 2 × live size)` the same call adds a checkpoint:
//! the whole [`MemoryStore`] written to a temporary file, synced, renamed
//! over the checkpoint, the directory synced, then a fresh log the same way.
//! The checkpoint names the last group it contains and replay skips groups
//! at or below it, so a crash between any two operations recovers the state
//! of the last synced group.
//!
//! [`DurableLog::recover`] rebuilds the [`MemoryStore`] from the files'
//! bytes. Those bytes are hostile input: every length and count is bounded,
//! every group and the checkpoint carry a crc32c, and anything that does not
//! check is a typed [`CorruptStore`] naming the file, the offset and the
//! sessions whose state cannot be trusted. The one exception is the log's
//! final group when it is incomplete or fails its checksum with nothing but
//! zeros after it: that is a crash in the middle of an append that was never
//! acknowledged, reported as a [`TornTail`] and dropped.
//!
//! No file IO happens here: the runtime (`holdfast::durable`) runs the ops.

mod codec;
mod image;

use std::fmt;

use bytes::Bytes;

use crate::ids::SessionId;
use crate::store::MemoryStore;
use crate::target::StateChange;

use codec::{DecodeError, Writer};

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
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            min_log: 8 << 20,
            max_group: 1 << 30,
            max_checkpoint: 16 << 30,
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
    /// Append bytes at the end of the file.
    Append {
        /// The file.
        file: StoreFile,
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

/// The final group of the log was incomplete: a crash during an append that
/// was never synced, so never acknowledged. Its bytes are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Where the torn group starts in the log.
    pub offset: u64,
    /// How many bytes were dropped.
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
    /// the bad point (any of them may have records after it).
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
    /// Bytes in the current log file.
    log_len: u64,
    /// Log size at which the live size is measured again.
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

    /// Bytes in the current log file.
    pub fn log_len(&self) -> u64 {
        self.log_len
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
        for c in changes {
            codec::put_change(&mut w, c);
        }
        let mut buf = w.buf;
        let body_len = u32::try_from(buf.len() - GROUP_HEADER).unwrap_or(u32::MAX);
        let crc = crc32c::crc32c(&buf[GROUP_HEADER..]);
        buf[..4].copy_from_slice(&body_len.to_le_bytes());
        let len_crc = crc32c::crc32c(&buf[..4]);
        buf[4..8].copy_from_slice(&len_crc.to_le_bytes());
        buf[8..12].copy_from_slice(&crc.to_le_bytes());
        self.log_len = self.log_len.saturating_add(buf.len() as u64);

        self.store.apply_all(changes);
        if let Some(s) = service_state {
            self.service_state = Some(s.clone());
        }
        self.last_wall_ms = self.last_wall_ms.max(wall_ms);

        let mut ops = vec![
            StoreOp::Append {
                file: StoreFile::Log,
                bytes: Bytes::from(buf),
            },
            StoreOp::Sync(StoreFile::Log),
        ];
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

    /// A fresh log whose groups follow `last_group`.
    fn new_log_ops(&mut self) -> Vec<StoreOp> {
        let mut w = Writer::default();
        w.raw(LOG_MAGIC);
        w.u32(self.incarnation);
        w.u64(self.last_group);
        let crc = crc32c::crc32c(&w.buf);
        w.u32(crc);
        self.log_len = LOG_HEADER as u64;
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

fn decode_err(file: StoreFile, base: usize, e: DecodeError) -> (StoreFile, u64, &'static str) {
    (file, (base + e.at) as u64, e.what)
}
