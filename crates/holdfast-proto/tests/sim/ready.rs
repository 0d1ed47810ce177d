//! Handling one of the target's Readies in the simulation: persist its
//! changes (checking the store then mirrors the target), transmit, close,
//! deliver to the services, then advance; in durable mode a crash can fall
//! between any two of these.

use std::time::Duration;

use holdfast_proto::Delivery;

use super::{durable, Completion, World};

impl World {
    pub(super) fn process_ready(&mut self) -> Result<(), String> {
        if self.params.early {
            return self.process_ready_early();
        }
        let ready = self.target.ready();
        let has_changes = !ready.changes.is_empty();
        let crash = self.take_crash(has_changes);
        if crash == Some(durable::CrashAt::BeforePersist) {
            return self.crash_now();
        }
        let services = self.services.committed_len();
        if self.persist(&ready.changes, crash, services)? {
            return Ok(()); // killed in the middle of the commit
        }
        // Every byte below may only reflect persisted state: the store must
        // now mirror the target exactly for every session it changed.
        for change in &ready.changes {
            let id = match change {
                holdfast_proto::StateChange::SessionCreated { session, .. }
                | holdfast_proto::StateChange::Received { session, .. }
                | holdfast_proto::StateChange::Completed { session, .. }
                | holdfast_proto::StateChange::ResponsesAcked { session, .. }
                | holdfast_proto::StateChange::MessagesDelivered { session, .. }
                | holdfast_proto::StateChange::MaxFrameRaised { session, .. }
                | holdfast_proto::StateChange::SessionEnded { session } => *session,
                // Not per session: checked against the store's fenced hosts.
                holdfast_proto::StateChange::HostFenced { .. } => continue,
            };
            let live = self.target.session_info(id);
            let stored = self.store.session(id);
            match (live, stored) {
                (Some(l), Some(s)) => {
                    if l.received != s.received
                        || l.cached != s.responses.len()
                        || l.responses_acked != s.responses_acked
                    {
                        return Err(format!("target state of {id} ran ahead of the Ready's changes: live {l:?}, stored {s:?}"));
                    }
                }
                (None, None) => {}
                (l, s) => {
                    return Err(format!(
                        "session {id} live {l:?} but stored {}",
                        s.is_some()
                    ))
                }
            }
        }
        if crash == Some(durable::CrashAt::AfterPersist) {
            return self.crash_now();
        }
        self.send_output(ready.transmits, ready.closes);
        if crash == Some(durable::CrashAt::AfterTransmit) {
            return self.crash_now();
        }
        self.execute(ready.deliveries, crash)
    }

    /// Hands a Ready's deliveries to the services and advances the target,
    /// unless the armed `crash` falls in the middle (then the target is
    /// rebuilt and the rest never happens).
    pub(super) fn execute(
        &mut self,
        deliveries: Vec<Delivery>,
        crash: Option<durable::CrashAt>,
    ) -> Result<(), String> {
        let now = self.now;
        for (i, d) in deliveries.into_iter().enumerate() {
            if crash == Some(durable::CrashAt::MidDeliveries(i)) {
                return self.crash_now();
            }
            match d {
                Delivery::Command {
                    session,
                    seq,
                    payload,
                } => {
                    if self.params.slow_service {
                        self.slow_command(session, seq, payload);
                        continue;
                    }
                    if self.params.durable {
                        self.durable_command(session, seq, payload)?;
                        continue;
                    }
                    let response = self.services.execute(session, &payload)?;
                    let tag = super::super::service::parse(&payload)
                        .map(|(_, t)| t)
                        .unwrap_or(0);
                    self.checker.executed(&self.services, session, tag)?;
                    let delay = if self.chance(30) { 0 } else { self.below(3000) };
                    self.completions.push(Completion {
                        at: now + Duration::from_micros(delay),
                        generation: self.generation,
                        session,
                        seq,
                        response,
                        effect: None,
                    });
                }
                Delivery::Message {
                    session, payload, ..
                } => {
                    self.services.execute(session, &payload)?;
                    let tag = super::super::service::parse(&payload)
                        .map(|(_, t)| t)
                        .unwrap_or(0);
                    self.checker.executed(&self.services, session, tag)?;
                }
            }
        }
        if matches!(
            crash,
            Some(durable::CrashAt::BeforeAdvance | durable::CrashAt::MidDeliveries(_))
        ) {
            return self.crash_now();
        }
        self.target.advance(now);
        Ok(())
    }
}
