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

use std::time::Duration;

use holdfast_proto::wire::RejectReason;
use holdfast_proto::{InitiatorEvent, SeededRandom, SessionLoss, Target};

use super::World;

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
}

/// What the durable mode keeps beside the world.
#[derive(Debug, Default)]
pub(super) struct DurableState {
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

impl World {
    /// Arms a crash of the target at a random point of the next Ready that
    /// has changes (durable mode).
    pub(super) fn arm_crash(&mut self) {
        let at = match self.below(5) {
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

    /// A Ready's changes are durable: the service state commits with them.
    pub(super) fn committed(&mut self, has_changes: bool) {
        if self.params.durable && has_changes {
            self.durable.committed_services = self.services.committed_len();
            self.durable.last_commit = self.now;
        }
    }

    /// The target process dies now and comes back from its store.
    pub(super) fn crash_now(&mut self) -> Result<(), String> {
        self.restart_at = Some(self.now);
        self.restart_target()
    }

    /// Rebuilds the target from the durable store (durable mode's restart).
    /// The downtime is usually short, sometimes longer than the retain time.
    pub(super) fn restore_target(&mut self) -> Result<(), String> {
        self.services.rollback_to(self.durable.committed_services)?;
        let retain = self.target_config.retain.as_micros() as u64;
        let down = if self.chance(10) {
            self.below(2 * retain)
        } else {
            self.below(retain / 4)
        };
        let detached_for =
            self.now.saturating_since(self.durable.last_commit) + Duration::from_micros(down);
        let target = Target::restore(
            self.target_config.clone(),
            Box::new(SeededRandom::new(self.rng.next_u64())),
            &self.store,
            detached_for,
            self.now,
        )
        .map_err(|e| format!("restore failed: {e}"))?;
        self.durable.restores += 1;
        self.durable.sessions_restored += target.stats().sessions_restored;
        self.durable.expired_while_down += target.stats().sessions_expired;
        self.target = target;
        Ok(())
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
