//! An in-memory store of the target's [`StateChange`]s.
//!
//! It is what the durable store holds, kept in memory: the simulation checks
//! against it that no byte the target sends reflects a change the driver has
//! not yet persisted, and the log engine (`store::log`) rebuilds it from the files.

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
    /// Highest sequence received (and persisted).
    pub received: Seq,
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
            } => {
                self.sessions.insert(
                    *session,
                    StoredSession {
                        secret: Some(*secret),
                        credits: *credits,
                        host: *host,
                        ..StoredSession::default()
                    },
                );
            }
            StateChange::Received { session, seq, .. } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.received = s.received.max(*seq);
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
                }
            }
            StateChange::ResponsesAcked { session, through } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.responses = s.responses.split_off(&(through + 1));
                    s.statuses = s.statuses.split_off(&(through + 1));
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

    /// The highest epoch `host` was fenced at, if a fence was persisted.
    pub fn fenced_epoch(&self, host: &HostId) -> Option<u64> {
        self.fenced_hosts.get(host).copied()
    }

    /// How many changes were applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Every stored session, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &StoredSession)> + '_ {
        self.sessions.iter().map(|(id, s)| (*id, s))
    }

    /// Every fenced host with the highest epoch it was fenced at.
    pub fn fenced_hosts(&self) -> impl Iterator<Item = (HostId, u64)> + '_ {
        self.fenced_hosts.iter().map(|(h, e)| (*h, *e))
    }

    /// Puts a session read back from a checkpoint (store::log).
    pub(crate) fn insert_session(&mut self, id: SessionId, session: StoredSession) {
        self.sessions.insert(id, session);
    }

    /// Puts a fence read back from a checkpoint (store::log).
    pub(crate) fn insert_fence(&mut self, host: HostId, epoch: u64) {
        self.fenced_hosts.insert(host, epoch);
    }

    /// Sets the applied count read back from a checkpoint (store::log).
    pub(crate) fn set_applied(&mut self, applied: u64) {
        self.applied = applied;
    }
}
