//! An in-memory store of the target's [`StateChange`]s.
//!
//! It is what the durable store holds, kept in memory: the simulation checks
//! against it that no byte the target sends reflects a change the driver has
//! not yet persisted, the log engine (`store::log`) rebuilds it from the
//! files, and [`crate::Target::restore`] rebuilds a target from it
//! (PROTOCOL.md §12).
//!
//! What it holds per session is bounded by the session's credits: at most
//! `credits` entries in `pending` and `responses` together (a command is
//! unfinished from its receipt until its response is acknowledged, a
//! message until the service has taken it), and every entry is reclaimed by
//! the change that finishes it (`Completed`, `ResponsesAcked`,
//! `MessagesDelivered`, `SessionEnded`).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::ids::{SessionId, SessionSecret};
use crate::target::StateChange;
use crate::wire::{HostId, HostRecord, ResponseStatus};
use crate::Seq;

/// What the store holds for one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSession {
    /// The session's secret.
    pub secret: Option<SessionSecret>,
    /// Its credit window.
    pub credits: u32,
    /// The `max_frame` of its latest accepted login (the creating one, or a
    /// recovery or join that raised it): its responses are sized for it.
    pub max_frame: u32,
    /// Highest sequence received (and persisted).
    pub received: Seq,
    /// Received and not finished, by sequence: commands not yet completed
    /// and one-way messages the service has not yet taken, as
    /// (is a command, payload). A restored target delivers them again.
    pub pending: BTreeMap<Seq, (bool, Bytes)>,
    /// Responses persisted and not yet acknowledged, by response sequence:
    /// (command, payload).
    pub responses: BTreeMap<Seq, (Seq, Bytes)>,
    /// Of those, the status responses (§6.7), whose payload is their text.
    pub statuses: BTreeMap<Seq, ResponseStatus>,
    /// Highest response sequence persisted.
    pub last_response: Seq,
    /// Highest response acknowledged.
    pub responses_acked: Seq,
    /// The HOST record of its creating LOGIN, if any.
    pub host: Option<HostRecord>,
    /// Highest one-way message the service has taken.
    pub messages_delivered: Seq,
}

/// Session state as persisted, applied change by change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    sessions: HashMap<SessionId, StoredSession>,
    /// The highest epoch each host was fenced at.
    fenced_hosts: HashMap<HostId, u64>,
    /// The incarnation of the target whose changes these are.
    incarnation: Option<u32>,
    /// The highest session counter (low half of a session id) ever created
    /// by that incarnation, kept after its session ended so that a
    /// restored target never issues an id twice.
    max_counter: u32,
    applied: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies changes in order.
    pub fn apply_all<'a>(&mut self, changes: impl IntoIterator<Item = &'a StateChange>) {
        for c in changes {
            self.apply(c);
        }
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &StateChange) {
        self.applied += 1;
        match change {
            StateChange::SessionCreated {
                session,
                secret,
                credits,
                host,
                max_frame,
            } => {
                self.max_counter = self.max_counter.max(session.counter());
                self.sessions.insert(
                    *session,
                    StoredSession {
                        secret: Some(*secret),
                        credits: *credits,
                        max_frame: *max_frame,
                        host: *host,
                        ..StoredSession::default()
                    },
                );
            }
            StateChange::MaxFrameRaised { session, max_frame } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.max_frame = s.max_frame.max(*max_frame);
                }
            }
            StateChange::Received {
                session,
                seq,
                command,
                payload,
            } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.received = s.received.max(*seq);
                    s.pending.insert(*seq, (*command, payload.clone()));
                }
            }
            StateChange::Completed {
                session,
                command,
                response,
                payload,
                status,
            } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.pending.remove(command);
                    if let Some(status) = status {
                        s.statuses.insert(*response, *status);
                    }
                    s.responses.insert(*response, (*command, payload.clone()));
                    s.last_response = s.last_response.max(*response);
                }
            }
            StateChange::MessagesDelivered { session, through } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.messages_delivered = s.messages_delivered.max(*through);
                    let through = s.messages_delivered;
                    s.pending
                        .retain(|&seq, (command, _)| *command || seq > through);
                }
            }
            StateChange::ResponsesAcked { session, through } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    let above = through.saturating_add(1);
                    s.responses = s.responses.split_off(&above);
                    s.statuses = s.statuses.split_off(&above);
                    s.responses_acked = s.responses_acked.max(*through);
                }
            }
            StateChange::SessionEnded { session } => {
                self.sessions.remove(session);
            }
            StateChange::HostFenced { host, epoch } => {
                let e = self.fenced_hosts.entry(*host).or_default();
                *e = (*e).max(*epoch);
            }
        }
    }

    /// The persisted state of a session.
    pub fn session(&self, id: SessionId) -> Option<&StoredSession> {
        self.sessions.get(&id)
    }

    /// Every session held, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &StoredSession)> + '_ {
        self.sessions.iter().map(|(id, s)| (*id, s))
    }

    /// How many sessions are held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Puts a session's state in as a whole (a store rebuilding itself from
    /// a checkpoint image), replacing any held under that id.
    pub fn insert_session(&mut self, id: SessionId, session: StoredSession) {
        self.sessions.insert(id, session);
    }

    /// The highest epoch `host` was fenced at, if a fence was persisted.
    pub fn fenced_epoch(&self, host: &HostId) -> Option<u64> {
        self.fenced_hosts.get(host).copied()
    }

    /// Every fenced host and the highest epoch it was fenced at.
    pub fn fenced_hosts(&self) -> impl Iterator<Item = (HostId, u64)> + '_ {
        self.fenced_hosts.iter().map(|(h, e)| (*h, *e))
    }

    /// Records a fence of `host` at `epoch` as a whole (a checkpoint
    /// image); the higher epoch wins.
    pub fn insert_fence(&mut self, host: HostId, epoch: u64) {
        let e = self.fenced_hosts.entry(host).or_default();
        *e = (*e).max(epoch);
    }

    /// The incarnation of the target whose state this is, once set.
    pub fn incarnation(&self) -> Option<u32> {
        self.incarnation
    }

    /// Records the incarnation of the target whose state this is: the
    /// driver sets it when it creates the store for a new target (the
    /// durable log records it in every file's header).
    pub fn set_incarnation(&mut self, incarnation: u32) {
        self.incarnation = Some(incarnation);
    }

    /// The highest session counter ever created (0: none), kept after the
    /// session ended.
    pub fn max_counter(&self) -> u32 {
        self.max_counter
    }

    /// Raises the highest session counter ever created to at least
    /// `counter` (a store rebuilding itself from a checkpoint image).
    pub fn raise_max_counter(&mut self, counter: u32) {
        self.max_counter = self.max_counter.max(counter);
    }

    /// How many changes were applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Sets the applied count read back from a checkpoint (store::log).
    pub(crate) fn set_applied(&mut self, applied: u64) {
        self.applied = applied;
    }
}
