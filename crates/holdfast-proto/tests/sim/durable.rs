//! The durable restart mode of the simulation (issue 16, PROTOCOL.md §12):
//! the target's store survives a crash, and the target is rebuilt from it
//! with `Target::restore`.
//!
//! The driver persists a Ready's changes (the world's `MemoryStore` is the
//! durable store: it holds exactly the changes of the Readies whose
//! persistence completed), then transmits, then delivers, then advances; a
//! crash can fall between any two of these, or between Readies. The
//! service state is stored with each commit (the log service's model of
//! `ServiceDurability`): the service executes a command and completes it in
//! one step when it is delivered, so the state at a commit reflects exactly
//! the completions and taken messages recorded so far; a crash rolls it
//! back to the last commit. The checker then sees exactly once and order across
//! restarts; in addition a restored target must never reject a recovery
//! of a session its store holds, never as restarted, and never find its
//! store behind an initiator.
//!
//! With `SimParams::disk` the store is the durable log engine
//! (`store::log::DurableLog`) whose file operations run on a [`SimDisk`];
//! the service state (a journal length) is each group's service state. A
//! crash may then also fall between any two file operations of a commit
//! (log extension, group write, fsync, checkpoint write, fsync, rename, directory fsync), and
//! the target is rebuilt from `DurableLog::recover` of what survived the
//! crash, which must be exactly the last group whose fsync ran, or that
//! plus the group in flight.

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::store::log::{DurableLog, LogLimits, StoreFile, StoreOp};
use holdfast_proto::wire::RejectReason;
use holdfast_proto::{InitiatorEvent, MemoryStore, SeededRandom, SessionLoss, StateChange, Target};

use super::super::disk::SimDisk;
use super::{SimParams, World};

/// Small logs, so checkpoints (and crashes in them) are frequent, and a
/// small pre-write, so extensions of the log (and crashes in them) are too.
const LIMITS: LogLimits = LogLimits {
    min_log: 4096,
    max_group: 1 << 30,
    max_checkpoint: 1 << 34,
    prewrite: 512,
};

/// Where in the handling of a Ready the target dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CrashAt {
    /// The Ready was taken, nothing of it persisted.
    BeforePersist,
    /// Persisted, nothing sent.
    AfterPersist,
    /// Persisted and sent, nothing delivered.
    AfterTransmit,
    /// Delivered up to (not including) this index.
    MidDeliveries(usize),
    /// Everything done but `advance`.
    BeforeAdvance,
    /// Disk mode: after this many of the commit's file operations (taken
    /// modulo their count plus one).
    MidCommit(usize),
}

/// The durable log on its simulated disk, and what a crash may recover.
#[derive(Debug)]
pub(super) struct OnDisk {
    log: DurableLog,
    disk: SimDisk,
    /// The store and service state as of the last group whose log fsync
    /// ran: a crash must recover at least this...
    floor: (MemoryStore, usize),
    /// ...and at most this: the last group whose write ran.
    ceiling: (MemoryStore, usize),
    /// Commits whose operations all ran, and crashes inside one.
    pub(super) commits: u64,
    pub(super) torn_tails: u64,
}

/// What the durable mode keeps beside the world.
#[derive(Debug, Default)]
pub(super) struct DurableState {
    /// Disk mode's log and disk.
    pub(super) on_disk: Option<OnDisk>,
    /// The service state stored with the last commit (a journal length).
    pub(super) committed_services: usize,
    /// When the last commit completed (virtual time).
    pub(super) last_commit: holdfast_proto::Timestamp,
    /// A crash armed for the next Ready that has changes.
    pub(super) crash: Option<CrashAt>,
    /// Targets rebuilt from the store.
    pub(super) restores: u64,
    /// Sessions restored in them, and sessions that expired while down.
    pub(super) sessions_restored: u64,
    pub(super) expired_while_down: u64,
}

impl DurableState {
    /// The durable state of a new world whose (empty) store is `store`.
    pub(super) fn new(params: &SimParams, store: &MemoryStore) -> DurableState {
        let on_disk = params.disk.then(|| {
            let incarnation = store.incarnation().unwrap_or(0);
            let (log, ops) = DurableLog::create(incarnation, LIMITS);
            let mut disk = SimDisk::new(params.skip_sync);
            for op in &ops {
                disk.run(op);
            }
            OnDisk {
                log,
                disk,
                floor: (store.clone(), 0),
                ceiling: (store.clone(), 0),
                commits: 0,
                torn_tails: 0,
            }
        });
        DurableState {
            on_disk,
            ..DurableState::default()
        }
    }
}

impl World {
    /// Arms a crash of the target at a random point of the next Ready that
    /// has changes (durable mode).
    pub(super) fn arm_crash(&mut self) {
        let kinds = if self.params.disk { 7 } else { 5 };
        let at = match self.below(kinds) {
            5 | 6 => CrashAt::MidCommit(self.below(64) as usize),
            0 => CrashAt::BeforePersist,
            1 => CrashAt::AfterPersist,
            2 => CrashAt::AfterTransmit,
            3 => CrashAt::MidDeliveries(self.below(4) as usize),
            _ => CrashAt::BeforeAdvance,
        };
        self.durable.crash = Some(at);
    }

    /// The crash armed for a Ready, if it has changes and the run is not
    /// closing its session.
    pub(super) fn take_crash(&mut self, has_changes: bool) -> Option<CrashAt> {
        if !self.params.durable || !has_changes || self.closing {
            return None;
        }
        self.durable.crash.take()
    }

    /// Persists a Ready's changes (with the service state), as the driver
    /// does before anything else of it. Returns true if the target was
    /// killed in the middle (disk mode: between two file operations).
    /// `services` is the service state to store with them (a journal
    /// length), taken when the commit started.
    pub(super) fn persist(
        &mut self,
        changes: &[StateChange],
        crash: Option<CrashAt>,
        services: usize,
    ) -> Result<bool, String> {
        self.store.apply_all(changes);
        if !self.params.durable || changes.is_empty() {
            return Ok(false);
        }
        let wall_ms = self.now.as_nanos() / 1_000_000;
        if let Some(d) = self.durable.on_disk.as_mut() {
            let state = Bytes::copy_from_slice(&(services as u64).to_le_bytes());
            let ops = d.log.commit(changes, Some(&state), wall_ms);
            let stop = match crash {
                Some(CrashAt::MidCommit(k)) => Some(k % (ops.len() + 1)),
                _ => None,
            };
            for (i, op) in ops.iter().enumerate() {
                if stop == Some(i) {
                    return self.crash_now().map(|()| true);
                }
                d.disk.run(op);
                match op {
                    // The group's write (an extension of the log is zeros).
                    StoreOp::WriteAt {
                        file: StoreFile::Log,
                        bytes,
                        ..
                    } if bytes.iter().any(|b| *b != 0) => {
                        d.ceiling = (self.store.clone(), services)
                    }
                    StoreOp::Sync(StoreFile::Log) => d.floor = d.ceiling.clone(),
                    _ => {}
                }
            }
            d.commits += 1;
            if stop == Some(ops.len()) {
                return self.crash_now().map(|()| true);
            }
        }
        self.durable.committed_services = services;
        self.durable.last_commit = self.now;
        Ok(false)
    }

    /// The target process dies now and comes back from its store.
    pub(super) fn crash_now(&mut self) -> Result<(), String> {
        self.restart_at = Some(self.now);
        self.restart_target()
    }

    /// Rebuilds the target from the durable store (durable mode's restart).
    /// The downtime is usually short, sometimes longer than the retain time.
    pub(super) fn restore_target(&mut self) -> Result<(), String> {
        let retain = self.target_config.retain.as_micros() as u64;
        let down = if self.chance(10) {
            self.below(2 * retain)
        } else {
            self.below(retain / 4)
        };
        let down = Duration::from_micros(down);
        let since_commit = match self.durable.on_disk.is_some() {
            true => self.recover_disk()?,
            false => {
                self.services.rollback_to(self.durable.committed_services)?;
                self.now.saturating_since(self.durable.last_commit)
            }
        };
        let target = Target::restore(
            self.target_config.clone(),
            Box::new(SeededRandom::new(self.rng.next_u64())),
            &self.store,
            since_commit + down,
            self.now,
        )
        .map_err(|e| format!("restore failed: {e}"))?;
        self.durable.restores += 1;
        self.durable.sessions_restored += target.stats().sessions_restored;
        self.durable.expired_while_down += target.stats().sessions_expired;
        self.target = target;
        Ok(())
    }

    /// Disk mode: the disk crashes, the log engine recovers what survived
    /// (which must be the last synced group, or that and the one in
    /// flight), and the world's store and service state become that.
    /// Returns the time since the last durable commit.
    fn recover_disk(&mut self) -> Result<Duration, String> {
        let Some(d) = self.durable.on_disk.as_mut() else {
            return Ok(Duration::ZERO);
        };
        let mut disk = d.disk.crash(&mut self.rng);
        let recovered = DurableLog::recover(
            disk.read(StoreFile::Checkpoint),
            disk.read(StoreFile::Log),
            LIMITS,
        )
        .map_err(|e| format!("recovery from the crashed disk failed: {e}"))?;
        let services = match recovered.service_state.as_deref() {
            Some(b) => {
                let bytes: [u8; 8] = b.try_into().map_err(|_| "bad service state")?;
                u64::from_le_bytes(bytes) as usize
            }
            None => 0,
        };
        let got = (recovered.store.clone(), services);
        if got != d.floor && got != d.ceiling {
            return Err(format!(
                "the crashed disk recovered neither the last synced group nor the one in \
                 flight: recovered {:?}, synced {:?}, in flight {:?}",
                got, d.floor, d.ceiling
            ));
        }
        if recovered.torn_tail.is_some() {
            d.torn_tails += 1;
        }
        for op in &recovered.ops {
            disk.run(op);
        }
        d.disk = disk;
        d.log = recovered.log;
        d.floor = got.clone();
        d.ceiling = got;
        self.store = recovered.store;
        self.services.rollback_to(services)?;
        let now_ms = self.now.as_nanos() / 1_000_000;
        Ok(Duration::from_millis(
            now_ms.saturating_sub(recovered.last_commit_wall_ms),
        ))
    }

    /// Executes a command of a durable service and completes it at once:
    /// its effect and its completion are one step, as for a service whose
    /// state is stored with the completion (the log service, whose futures
    /// are ready at once). A service that answered later would have to
    /// keep the effect out of the stored state until then, and could then
    /// not keep the session's order across a crash.
    pub(super) fn durable_command(
        &mut self,
        session: holdfast_proto::SessionId,
        seq: u64,
        payload: bytes::Bytes,
    ) -> Result<(), String> {
        let response = self.services.execute(session, &payload)?;
        let tag = super::super::service::parse(&payload).map_or(0, |(_, t)| t);
        self.checker.executed(&self.services, session, tag)?;
        self.target
            .complete(session, seq, response, self.now)
            .map_err(|e| format!("completing {session}/{seq}: {e}"))
    }

    /// Durable-mode checks of an initiator event: a restored target keeps
    /// its sessions, so a recovery is only ever refused because the retain
    /// time passed.
    pub(super) fn check_durable_event(&mut self, event: &InitiatorEvent) -> Result<(), String> {
        if !self.params.durable {
            return Ok(());
        }
        if let InitiatorEvent::SessionReplaced {
            lost: SessionLoss::Rejected { session, reason },
            ..
        } = event
        {
            // Stateless only for a session whose end is durable: expired
            // (maybe while the target was down), closed, or ended before a
            // restart that forgot its tombstone (unknown).
            let allowed = matches!(
                reason,
                RejectReason::SessionExpired
                    | RejectReason::UnknownSession
                    | RejectReason::SessionClosed
            );
            if !allowed || self.store.session(*session).is_some() {
                return Err(format!(
                    "durable store: recovery of {session} rejected {reason:?} (held in the \
                     store: {})",
                    self.store.session(*session).is_some()
                ));
            }
        }
        let behind = self.target.take_store_behind();
        if let Some(b) = behind.first() {
            return Err(format!("durable store behind the initiator: {b:?}"));
        }
        Ok(())
    }
}
