//! The durable session store (PROTOCOL.md §12): the sans-IO log engine
//! ([`holdfast_proto::store::log`]) run on real files in a state directory.
//!
//! [`DurableStore::open`] takes the directory's lock (two targets never
//! share one), reads the checkpoint and the log, and rebuilds the store, or
//! creates an empty one. A target serves from it with
//! [`crate::Target::serve_durable`]: state changes are committed in groups,
//! one `fdatasync` each (group commit), before any byte that reflects them
//! leaves, on a dedicated commit thread while the engine goes on taking
//! input (see `commit`). A group is one `Ready`'s changes, or for a
//! replay-safe service those of every `Ready` executed and due since the
//! previous group, whose commands ran before it was durable and whose
//! output waits for it (see `driver`).

pub(crate) mod commit;
pub(crate) mod driver;
mod engine;
mod files;
pub(crate) mod restore;
mod serve;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use holdfast_proto::store::log::{CorruptStore, DurableLog, LogLimits, StoreOp, TornTail};
use holdfast_proto::{MemoryStore, StateChange};
use tracing::info;

use files::Files;

/// The lock file's name in the state directory.
const LOCK: &str = "lock";

/// Settings of a durable store.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    /// Size limits (checkpoint threshold, largest group and checkpoint).
    pub limits: LogLimits,
}

/// Why a store cannot be opened or written. Each says what happened, what
/// state the data is in, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error(
        "session store in {dir}: {action} failed: {source}; the sessions stored there are \
         unchanged on disk up to the last completed commit; fix the cause (permissions, \
         space, the disk) and start the target again"
    )]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the directory's lock.
    #[error(
        "the state directory {dir} is in use by another target (it holds {dir}/lock); stop \
         that target first, or give this one a state directory of its own"
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
    },
    /// A store file fails its checks: nothing was replayed.
    #[error(
        "{source}. Nothing was replayed and the files in {dir} are unchanged. To start with \
         an empty store, move the directory aside (the sessions named cannot then recover \
         statefully: their initiators are told the target restarted)"
    )]
    Corrupt {
        /// The state directory.
        dir: PathBuf,
        /// What is corrupt and which sessions it affects.
        #[source]
        source: CorruptStore,
    },
    /// The stored sessions do not make a consistent target.
    #[error(
        "the session store in {dir} cannot be restored: {what}. The files are unchanged; to \
         start with an empty store, move the directory aside (its sessions then cannot \
         recover statefully)"
    )]
    Restore {
        /// The state directory.
        dir: PathBuf,
        /// What is inconsistent.
        what: String,
    },
}

/// What [`DurableStore::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// True when the directory held no store and an empty one was created.
    pub created: bool,
    /// The target incarnation of the store.
    pub incarnation: u32,
    /// Sessions restored.
    pub sessions: usize,
    /// Responses cached and not yet acknowledged, all sessions.
    pub responses: usize,
    /// Commands received and not completed before the stop: executed once
    /// after the restart, in order.
    pub pending_commands: usize,
    /// One-way messages received and not taken by the service before the
    /// stop: delivered once after the restart.
    pub pending_messages: usize,
    /// Log groups replayed after the checkpoint.
    pub groups_replayed: u64,
    /// Wall time from the last durable commit to the open (the target's
    /// downtime as far as the store can tell).
    pub downtime: Duration,
    /// An incomplete final group (never acknowledged) that was dropped.
    pub torn_tail: Option<TornTail>,
}

/// Counters of the commits made, for benchmarks and the status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Groups committed.
    pub commits: u64,
    /// State changes committed.
    pub changes: u64,
    /// Bytes written by commits: group records, the zeros that pre-write
    /// the log, and checkpoints with their fresh logs.
    pub bytes: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Bytes used in the current log (header and groups). The checkpoint
    /// rule uses this figure, which keeps the store's size bounded.
    pub log_bytes_used: u64,
    /// Bytes the current log takes on disk: the used bytes and the
    /// pre-written zeros after them (`LogLimits::prewrite`, plus at most
    /// one group, more than the used bytes).
    pub log_bytes_on_disk: u64,
}

/// A session store in a directory: the log engine, its files and the lock.
#[derive(Debug)]
pub struct DurableStore {
    dir: PathBuf,
    /// Held (locked) for the store's life.
    _lock: File,
    files: Files,
    log: DurableLog,
    report: RecoveryReport,
    recovered_state: Option<Bytes>,
    stats: StoreStats,
    /// A commit failed: the files' state is unknown, nothing more is written.
    failed: bool,
}

/// Received entries not finished, commands or messages.
fn pending(store: &MemoryStore, commands: bool) -> usize {
    store
        .sessions()
        .map(|(_, s)| s.pending.values().filter(|(c, _)| *c == commands).count())
        .sum()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl DurableStore {
    /// Opens (or creates) the store in `dir`: creates the directory, takes
    /// its lock, reads and checks the files and rebuilds the sessions.
    /// Blocking file IO: call it from a blocking context or before the
    /// runtime is busy.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<DurableStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let io_err = |action, source| StoreError::Io {
            dir: dir.clone(),
            action,
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io_err("creating the directory", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(|e| io_err("opening the lock file", e))?;
        // `File::try_lock` (an advisory lock the kernel drops when the
        // process dies, even by kill -9) is stable since Rust 1.89, above
        // the workspace's declared 1.85: raising rust-version turns on
        // lints across the workspace, left to the lead (see the h2 report).
        #[allow(clippy::incompatible_msrv)]
        let locked = lock.try_lock();
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { dir }),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking", e)),
        }
        let mut files = Files::new(&dir);
        let ckpt = files
            .read(holdfast_proto::store::log::StoreFile::Checkpoint)
            .map_err(|e| io_err("reading the checkpoint", e))?;
        let log_bytes = files
            .read(holdfast_proto::store::log::StoreFile::Log)
            .map_err(|e| io_err("reading the log", e))?;
        let now = wall_ms();
        let (log, ops, report, recovered_state) = if ckpt.is_none() && log_bytes.is_none() {
            let mut word = [0u8; 4];
            getrandom::fill(&mut word)
                .map_err(|e| io_err("drawing an incarnation", io::Error::other(e.to_string())))?;
            let incarnation = u32::from_be_bytes(word);
            let (log, ops) = DurableLog::create(incarnation, options.limits);
            let report = RecoveryReport {
                created: true,
                incarnation,
                sessions: 0,
                responses: 0,
                pending_commands: 0,
                pending_messages: 0,
                groups_replayed: 0,
                downtime: Duration::ZERO,
                torn_tail: None,
            };
            (log, ops, report, None)
        } else {
            let rec = DurableLog::recover(ckpt.as_deref(), log_bytes.as_deref(), options.limits)
                .map_err(|source| StoreError::Corrupt {
                    dir: dir.clone(),
                    source,
                })?;
            let report = RecoveryReport {
                created: false,
                incarnation: rec.incarnation,
                sessions: rec.store.sessions().count(),
                responses: rec.store.sessions().map(|(_, s)| s.responses.len()).sum(),
                pending_commands: pending(&rec.store, true),
                pending_messages: pending(&rec.store, false),
                groups_replayed: rec.groups_replayed,
                downtime: Duration::from_millis(now.saturating_sub(rec.last_commit_wall_ms)),
                torn_tail: rec.torn_tail,
            };
            if let Some(t) = rec.torn_tail {
                info!(
                    dir = %dir.display(), offset = t.offset, bytes = t.bytes,
                    "the store's log ended in an incomplete group (a crash during a commit \
                     that was never acknowledged): its {} bytes were dropped", t.bytes
                );
            }
            (rec.log, rec.ops, report, rec.service_state)
        };
        for op in &ops {
            files.run(op).map_err(|e| io_err("writing the store", e))?;
        }
        info!(
            dir = %dir.display(), created = report.created, sessions = report.sessions,
            responses = report.responses, pending_commands = report.pending_commands,
            pending_messages = report.pending_messages, downtime_ms = report.downtime.as_millis() as u64,
            "session store opened"
        );
        Ok(DurableStore {
            dir,
            _lock: lock,
            files,
            log,
            report,
            recovered_state,
            stats: StoreStats::default(),
            failed: false,
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the open found.
    pub fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The service's state as of the last durable commit before the open
    /// (`None`: none stored), to rebuild the service from.
    pub fn service_state(&self) -> Option<&Bytes> {
        self.recovered_state.as_ref()
    }

    /// The sessions as stored, to rebuild the target from.
    pub fn store(&self) -> &MemoryStore {
        self.log.store()
    }

    /// The target incarnation the store belongs to.
    pub fn incarnation(&self) -> u32 {
        self.log.incarnation()
    }

    /// Counters of the commits made since the open, and the log's size.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            log_bytes_used: self.log.log_len(),
            log_bytes_on_disk: self.log.log_file_len(),
            ..self.stats
        }
    }

    /// Makes `changes` (and the service's state, if any) durable: one group,
    /// one `fdatasync` (and a checkpoint now and then). Blocking. After an
    /// error the store refuses every further commit: a failed fsync leaves
    /// the file's state unknown.
    pub fn commit(
        &mut self,
        changes: &[StateChange],
        service_state: Option<&Bytes>,
    ) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Io {
                dir: self.dir.clone(),
                action: "committing",
                source: io::Error::other("an earlier commit failed; the store is closed"),
            });
        }
        let ops = self.log.commit(changes, service_state, wall_ms());
        self.stats.commits += 1;
        self.stats.changes += changes.len() as u64;
        let mut checkpoint = false;
        for op in &ops {
            match op {
                StoreOp::WriteAt { bytes, .. } | StoreOp::Write { bytes, .. } => {
                    self.stats.bytes += bytes.len() as u64;
                }
                StoreOp::Rename { .. } => checkpoint = true,
                _ => {}
            }
            if let Err(source) = self.files.run(op) {
                self.failed = true;
                return Err(StoreError::Io {
                    dir: self.dir.clone(),
                    action: "committing",
                    source,
                });
            }
        }
        if checkpoint {
            self.stats.checkpoints += 1;
        }
        Ok(())
    }
}
