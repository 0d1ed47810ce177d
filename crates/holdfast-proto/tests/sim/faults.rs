//! The seeded fault schedule of the simulation: what one fault does (a
//! target crash or shutdown notice, a cut, blackholed or held connection),
//! the target's restart, and the slow backend whose long commands come with
//! a partition of about the retain time.

use std::time::Duration;

use holdfast_proto::{MemoryStore, SeededRandom, Target, Timestamp};

use super::{Completion, Packet, World};

impl World {
    pub(super) fn inject_fault(&mut self) {
        self.report.faults += 1;
        let roll = self.below(100);
        // A durable target crashes more often: recovery from its store is
        // what that mode is about.
        let crash = if self.params.durable { 6 } else { 2 };
        if roll < crash && self.restart_at.is_none() {
            if self.params.durable && self.chance(70) {
                // Killed in the middle of handling a Ready.
                self.arm_crash();
                return;
            }
            // Target crash: session state lost (or, durable, all but what
            // its store holds), connections reset.
            self.restart_at = Some(self.now);
            return;
        }
        if roll < crash + 2 && self.restart_at.is_none() {
            // Graceful shutdown notice, then a restart after the up time.
            let max_up = Duration::from_millis(self.below(50));
            let hold = Duration::from_millis(self.below(100));
            self.target.shutdown(max_up, Some(hold), self.now);
            self.restart_at = Some(self.now + max_up + Duration::from_millis(1));
            return;
        }
        let Some(id) = self.fault_target() else {
            return;
        };
        let mode = self.below(4);
        let notify_initiator = self.chance(60);
        let notify_target = self.chance(60);
        let to_target_cut = self.chance(50);
        let now = self.now;
        let offset_seed = self.rng.next_u64();
        let notice = Duration::from_micros(self.below(5000));
        let held = Duration::from_millis(50 + self.below(400));
        let Some(c) = self.conn_mut(id) else {
            return;
        };
        match mode {
            // Cut one direction at a byte offset, the other at its end.
            0 | 1 => {
                let (cut, other) = if to_target_cut {
                    (&mut c.to_target, &mut c.to_initiator)
                } else {
                    (&mut c.to_initiator, &mut c.to_target)
                };
                let queued = cut.queued_bytes();
                cut.cut_at((offset_seed % (queued as u64 + 1)) as usize);
                let keep = other.queued_bytes();
                other.cut_at(keep);
            }
            // Blackhole both ways, nothing lost that was already sent.
            2 => {
                let a = c.to_target.queued_bytes();
                c.to_target.cut_at(a);
                let b = c.to_initiator.queued_bytes();
                c.to_initiator.cut_at(b);
            }
            // Hold the initiator's bytes: they arrive late, after recovery.
            _ => {
                c.to_target.hold(held);
                let b = c.to_initiator.queued_bytes();
                c.to_initiator.cut_at(b);
            }
        }
        let latency = c.latency;
        if notify_initiator {
            // An RST reaching the initiator after `notice`.
            c.to_initiator.blackholed = false;
            c.to_initiator.push(now, notice.max(latency), Packet::Close);
            c.to_initiator.blackholed = true;
        }
        if notify_target && mode != 3 {
            c.to_target.blackholed = false;
            c.to_target.push(now, notice.max(latency), Packet::Close);
            c.to_target.blackholed = true;
        }
    }

    pub(super) fn restart_target(&mut self) -> Result<(), String> {
        self.restart_at = None;
        self.report.restarts += 1;
        let target_stats = self.target.stats().clone();
        self.report.add_target(&target_stats);
        self.generation += 1;
        self.backend_busy_until.clear();
        // Early mode: output held for groups that never became durable
        // dies with the process.
        self.early = super::early::EarlyState::default();
        if self.params.durable {
            self.restore_target()?;
        } else {
            self.target = Target::new(
                self.target_config.clone(),
                Box::new(SeededRandom::new(self.rng.next_u64())),
                self.now,
            );
            self.store = MemoryStore::new();
        }
        let now = self.now;
        for c in self.conns.iter_mut() {
            c.target_gone = true;
            c.to_target = Default::default();
            c.to_initiator.blackholed = false;
            c.to_initiator.push(now, c.latency, Packet::Close);
            c.to_initiator.blackholed = true;
        }
        Ok(())
    }

    /// Queues a command on the slow backend: it takes effect when it
    /// completes, after the session's earlier commands; one in ten takes
    /// longer than the retain time (one at a time).
    pub(super) fn slow_command(
        &mut self,
        session: holdfast_proto::SessionId,
        seq: u64,
        payload: bytes::Bytes,
    ) {
        let now = self.now;
        let retain = self.target_config.retain.as_micros() as u64;
        // At most one slow command at a time, so the backlog stays bounded.
        let work = if now >= self.slow_until && self.chance(10) {
            let extra = self.below(retain / 2);
            let work = retain + extra;
            self.slow_until = now + Duration::from_micros(work);
            if self.params.faults && self.chance(50) {
                // The initiator loses the target for about the retain time,
                // and comes back while this command may still run.
                let back = retain + 5_000 + self.below(extra / 2 + 1);
                self.partition(now + Duration::from_micros(back));
            }
            work
        } else {
            self.below(3000)
        };
        let start = self
            .backend_busy_until
            .get(&session)
            .copied()
            .unwrap_or(now)
            .max(now);
        let at = start + Duration::from_micros(work);
        self.backend_busy_until.insert(session, at);
        self.completions.push(Completion {
            at,
            generation: self.generation,
            session,
            seq,
            response: bytes::Bytes::new(),
            effect: Some(payload),
        });
    }

    /// Cuts the current connection (both sides learn) and keeps the
    /// initiator from reconnecting until `until`.
    pub(super) fn partition(&mut self, until: Timestamp) {
        self.partition_until = Some(until);
        let now = self.now;
        for id in self.live() {
            let Some(c) = self.conn_mut(id) else {
                continue;
            };
            let a = c.to_target.queued_bytes();
            c.to_target.cut_at(a);
            let b = c.to_initiator.queued_bytes();
            c.to_initiator.cut_at(b);
            let latency = c.latency;
            c.to_initiator.blackholed = false;
            c.to_initiator.push(now, latency, Packet::Close);
            c.to_initiator.blackholed = true;
            c.to_target.blackholed = false;
            c.to_target.push(now, latency, Packet::Close);
            c.to_target.blackholed = true;
        }
    }
}
