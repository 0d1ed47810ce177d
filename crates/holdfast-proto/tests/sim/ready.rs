//! Handling one of the target's Readies in the simulation: persist its
//! changes (checking the store then mirrors the target), transmit, close,
//! deliver to the services, then advance; in durable mode a crash can fall
//! between any two of these.

use std::time::Duration;

use holdfast_proto::Delivery;

use super::{durable, Completion, Packet, World};

impl World {
    pub(super) fn process_ready(&mut self) -> Result<(), String> {
        let ready = self.target.ready();
        let has_changes = !ready.changes.is_empty();
        let crash = self.take_crash(has_changes);
        if crash == Some(durable::CrashAt::BeforePersist) {
            return self.crash_now();
        }
        if self.persist(&ready.changes, crash)? {
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
        let now = self.now;
        for t in ready.transmits {
            let data: Vec<u8> = t.chunks.iter().flat_map(|c| c.iter().copied()).collect();
            if let Some(c) = self.conn_mut(t.conn) {
                if !c.target_gone {
                    let latency = c.latency;
                    c.to_initiator.push(now, latency, Packet::Data(data));
                }
            }
        }
        for close in ready.closes {
            if let Some(c) = self.conn_mut(close.conn) {
                if !c.target_gone {
                    c.target_gone = true;
                    let latency = c.latency;
                    c.to_initiator.push(now, latency, Packet::Close);
                }
            }
        }
        if crash == Some(durable::CrashAt::AfterTransmit) {
            return self.crash_now();
        }
        for (i, d) in ready.deliveries.into_iter().enumerate() {
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
