//! Rebuilding a target from its store after a restart (PROTOCOL.md §12).
//!
//! [`Target::restore`] takes the state a store holds (a [`MemoryStore`],
//! as the durable log rebuilds it from its files) and returns a target of
//! the same incarnation in which every stored session is detached, as if
//! its connections had all dropped at the moment of the last durable
//! commit: its response cache is sent again on the next recovery, its
//! commands that were received but not completed run again (once, in
//! order: the crash killed the first attempt before its completion became
//! durable, and the service state restored with the store does not hold
//! its effect), and the one-way messages the service had not taken are
//! delivered again. The retain time counts on from that last commit:
//! a session whose retain time passed while the target was down ends at
//! once, as expired.

use std::time::Duration;

use crate::config::TargetConfig;
use crate::ids::SessionId;
use crate::random::RandomSource;
use crate::store::MemoryStore;
use crate::time::Timestamp;
use crate::wire::{RejectReason, ResponseStatus};
use crate::Seq;

use super::session::Session;
use super::{admission, Delivery, Target};

/// Why a store could not be turned back into a target. The store is left
/// as it is; the state it holds cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The store does not say which incarnation wrote it.
    #[error(
        "the store does not record the incarnation of the target that wrote it, so none of its \
         sessions can be recovered; move the state directory aside to start empty"
    )]
    NoIncarnation,
    /// A session of another incarnation is stored.
    #[error(
        "session {session} belongs to incarnation {incarnation:08x}, not to the store's \
         {store:08x}; the store mixes two targets' state: move the state directory aside to \
         start empty"
    )]
    ForeignSession {
        /// The session.
        session: SessionId,
        /// Its incarnation.
        incarnation: u32,
        /// The store's.
        store: u32,
    },
    /// A session's stored state contradicts itself.
    #[error(
        "the stored state of session {session} is inconsistent ({what}); it cannot be \
         recovered safely: move the state directory aside to start empty (every session of it \
         is then rejected statelessly)"
    )]
    Inconsistent {
        /// The session.
        session: SessionId,
        /// What is wrong.
        what: String,
    },
}

/// A recovery that acknowledged responses the restored store never had:
/// the store lost state it had confirmed durable (a disk that lied about a
/// flush, or a file cut at a group boundary). The session was ended and the
/// recovery rejected statelessly; the driver should log it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreBehind {
    /// The session.
    pub session: SessionId,
    /// The response acknowledgement the recovering initiator presented.
    pub response_ack: Seq,
    /// The highest response the store held for it.
    pub stored: Seq,
}

impl Target {
    /// Rebuilds a target from `store` after a restart (PROTOCOL.md §12).
    /// `detached_for` is the wall time since the store's last durable
    /// commit (the driver measures it: the target was down that long), `now`
    /// the driver's clock. The target has the store's incarnation; every
    /// stored session is restored detached with the retain time it had left
    /// (`retain` − `detached_for`; one already past it ends at once, as
    /// expired). Commands received and not completed, and one-way messages
    /// the service had not taken, are in the first [`super::Ready`]'s
    /// deliveries, in each session's order (sessions in id order); the
    /// commands count as running. A command of a multipath-capable session
    /// (§11.4) is not run again but answered `NotExecuted`: whether its
    /// quiesce promise still holds cannot be known after a restart. Fenced
    /// hosts are restored, and a stored session they fence ends.
    pub fn restore(
        config: TargetConfig,
        random: Box<dyn RandomSource>,
        store: &MemoryStore,
        detached_for: Duration,
        now: Timestamp,
    ) -> Result<Target, RestoreError> {
        let incarnation = store.incarnation().ok_or(RestoreError::NoIncarnation)?;
        let mut target = Target::new(config, random, now);
        target.incarnation = incarnation;
        target.next_counter = store.max_counter().wrapping_add(1).max(1);
        let mut hosts: Vec<_> = store.fenced_hosts().collect();
        hosts.sort_by_key(|&(host, epoch)| (epoch, host));
        for (host, epoch) in hosts {
            target.fencing.raise(host, epoch);
        }
        let mut ids: Vec<SessionId> = store.sessions().map(|(id, _)| id).collect();
        ids.sort_unstable();
        for id in ids {
            let Some(stored) = store.session(id) else {
                continue;
            };
            if id.incarnation() != incarnation {
                return Err(RestoreError::ForeignSession {
                    session: id,
                    incarnation: id.incarnation(),
                    store: incarnation,
                });
            }
            let (mut s, deliveries) = Session::from_stored(id, stored)
                .map_err(|what| RestoreError::Inconsistent { session: id, what })?;
            s.path.host = stored.host;
            s.path.last_contact = now;
            s.path.fenced = stored
                .host
                .is_some_and(|h| target.fencing.epoch(&h.host).is_some_and(|e| e > h.epoch));
            s.detached_since = Some(now);
            s.retain_cut = detached_for;
            target.restore_session(s, deliveries, now);
        }
        Ok(target)
    }

    /// A recovery of a restored session presents `response_ack`: true if
    /// the store is behind it (it lost responses the initiator received).
    /// The session then ends, and the recovery is rejected statelessly.
    /// Only a login that presents the session's secret is considered.
    pub(super) fn store_behind(&mut self, login: &crate::wire::Login) -> bool {
        let (id, response_ack) = (login.session, login.response_ack);
        let Some(s) = self.sessions.get(&id) else {
            return false;
        };
        if !s.restored || !s.secret.matches(&login.secret) || response_ack < s.next_response() {
            return false;
        }
        let stored = s.next_response() - 1;
        self.store_behind.push(StoreBehind {
            session: id,
            response_ack,
            stored,
        });
        self.stats.recoveries_store_behind += 1;
        self.end_session(id, RejectReason::TargetRestarted);
        true
    }

    /// Recoveries refused since the last call because the restored store
    /// was behind what the initiator had received (see [`StoreBehind`]):
    /// the driver logs each, naming the session.
    pub fn take_store_behind(&mut self) -> Vec<StoreBehind> {
        std::mem::take(&mut self.store_behind)
    }

    fn restore_session(&mut self, mut s: Session, deliveries: Vec<Delivery>, now: Timestamp) {
        let id = s.id;
        self.stats.sessions_restored += 1;
        #[cfg(feature = "test-switches")]
        let deliveries = if self.config.switches.restore_drops_pending {
            Vec::new()
        } else {
            deliveries
        };
        let retain = admission::retain_time(&self.config, &s);
        let expired = retain.is_zero();
        if !expired {
            self.timers.arm_session(now + retain, id, &mut s.armed);
        }
        let multipath = s.path.host.is_some();
        let has_messages = s.has_delivered_messages();
        self.sessions.insert(id, s);
        if expired {
            // Its commands are not running (the crash ended them): it ends
            // now, as it would have while the target was down.
            self.expire(id);
            return;
        }
        if has_messages {
            self.delivering.push(id);
        }
        for d in deliveries {
            match d {
                Delivery::Command { seq, .. } if multipath => {
                    self.restart_refusal(id, seq);
                }
                Delivery::Command { .. } => {
                    self.stats.commands += 1;
                    self.deliveries.push(d);
                }
                Delivery::Message { .. } => {
                    self.stats.messages += 1;
                    self.deliveries.push(d);
                }
            }
        }
        // A fenced session ends once none of its commands runs.
        self.after_completion(id);
    }

    /// Answers a restored command of a multipath-capable session with
    /// `NotExecuted` (see [`Target::restore`]).
    fn restart_refusal(&mut self, id: SessionId, seq: Seq) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        self.stats.not_executed += 1;
        let text = "not executed, and it never will be: the target restarted before it \
                    completed and cannot know whether the session's quiesce promise still \
                    holds; issue it again";
        let status = Some(ResponseStatus::NotExecuted);
        s.complete(seq, bytes::Bytes::from(text), status, &mut self.changes);
    }
}
