//! The early-execution mode of the durable simulation (PROTOCOL.md §12,
//! *Early execution*): the driver of a replay-safe service hands each
//! Ready's deliveries to the service and advances at once, and holds its
//! changes, bytes and closes in a held group. When no group is committing,
//! the held group starts its commit: the service state is taken then (after
//! every Ready was drained, so it covers exactly the completions in the
//! group and before it), and the commit completes after a simulated fsync
//! time (sometimes none), during which new Readies are executed and held
//! for the next group. Once it is durable, its bytes and closes leave, in
//! order. A held group without changes leaves at once when no group
//! commits.
//!
//! Crashes fall where the strict mode's do: while executing a Ready (in the
//! middle of its deliveries, or before its `advance`), or at its group's
//! commit (before it, between two of its file operations, after it before
//! its bytes were sent). Held output and the group in flight die with the
//! process; the service state rolls back to the last durable group. The
//! checker's invariants are unchanged.
//!
//! `SimParams::early_unsafe` (test-only) sends held bytes and closes at
//! once, before their group is durable: a crash then loses changes the
//! initiator already saw, which the simulation must catch.

use std::time::Duration;

use holdfast_proto::target::{Close, Transmit};
use holdfast_proto::{Ready, StateChange, Timestamp};

use super::durable::CrashAt;
use super::{Packet, World};

/// Early mode's driver state.
#[derive(Debug, Default)]
pub(super) struct EarlyState {
    /// Executed Readies waiting for a commit to start.
    held: Held,
    /// The group whose commit runs: its output, and when it is durable.
    committing: Option<Committing>,
}

/// Changes and output of executed Readies, in order.
#[derive(Debug, Default)]
struct Held {
    changes: Vec<StateChange>,
    transmits: Vec<Transmit>,
    closes: Vec<Close>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.transmits.is_empty() && self.closes.is_empty()
    }
}

/// A group whose commit started.
#[derive(Debug)]
struct Committing {
    /// When its fsync completes.
    due: Timestamp,
    group: Held,
    /// The service state taken when it started (a journal length).
    services: usize,
}

impl EarlyState {
    /// When the group committing becomes durable.
    pub(super) fn commit_due(&self) -> Option<Timestamp> {
        self.committing.as_ref().map(|c| c.due)
    }
}

impl World {
    /// Early mode: takes a Ready, holds its changes and output, executes
    /// its deliveries and advances.
    pub(super) fn process_ready_early(&mut self) -> Result<(), String> {
        let Ready {
            changes,
            transmits,
            closes,
            deliveries,
            fences: _,
        } = self.target.ready();
        let crash = match self.durable.crash {
            Some(CrashAt::MidDeliveries(_) | CrashAt::BeforeAdvance) => {
                self.take_crash(!changes.is_empty())
            }
            _ => None,
        };
        self.early.held.changes.extend(changes);
        if self.params.early_unsafe {
            self.send_output(transmits, closes);
        } else {
            self.early.held.transmits.extend(transmits);
            self.early.held.closes.extend(closes);
        }
        self.execute(deliveries, crash)
    }

    /// Early mode, after the Readies were drained: starts the held group's
    /// commit if none runs (or sends a held group without changes at
    /// once). True if something was started or sent.
    pub(super) fn start_commit_early(&mut self) -> Result<bool, String> {
        if self.early.committing.is_some() || self.early.held.is_empty() {
            return Ok(false);
        }
        let group = std::mem::take(&mut self.early.held);
        if group.changes.is_empty() {
            self.send_output(group.transmits, group.closes);
            return Ok(true);
        }
        let fsync = if self.chance(30) { 0 } else { self.below(1500) };
        self.early.committing = Some(Committing {
            due: self.now + Duration::from_micros(fsync),
            group,
            services: self.services.committed_len(),
        });
        self.finish_commit_if_due()?;
        Ok(true)
    }

    /// The group committing is durable once its time has come: persists
    /// it (a crash may fall before, inside or after), then sends its output.
    pub(super) fn finish_commit_if_due(&mut self) -> Result<(), String> {
        if self.early.commit_due().is_none_or(|t| t > self.now) {
            return Ok(());
        }
        let Some(Committing {
            group, services, ..
        }) = self.early.committing.take()
        else {
            return Ok(());
        };
        let crash = match self.durable.crash {
            Some(CrashAt::MidDeliveries(_) | CrashAt::BeforeAdvance) | None => None,
            Some(_) => self.take_crash(!group.changes.is_empty()),
        };
        if crash == Some(CrashAt::BeforePersist) {
            return self.crash_now();
        }
        if self.persist(&group.changes, crash, services)? {
            return Ok(()); // killed in the middle of the commit
        }
        if crash == Some(CrashAt::AfterPersist) {
            return self.crash_now();
        }
        self.send_output(group.transmits, group.closes);
        if crash == Some(CrashAt::AfterTransmit) {
            return self.crash_now();
        }
        Ok(())
    }

    /// Puts bytes on the wire and closes connections, in order.
    pub(super) fn send_output(&mut self, transmits: Vec<Transmit>, closes: Vec<Close>) {
        let now = self.now;
        for t in transmits {
            let data: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
            if let Some(c) = self.conn_mut(t.conn) {
                if !c.target_gone {
                    let latency = c.latency;
                    c.to_initiator.push(now, latency, Packet::Data(data));
                }
            }
        }
        for close in closes {
            if let Some(c) = self.conn_mut(close.conn) {
                if !c.target_gone {
                    c.target_gone = true;
                    let latency = c.latency;
                    c.to_initiator.push(now, latency, Packet::Close);
                }
            }
        }
    }
}
