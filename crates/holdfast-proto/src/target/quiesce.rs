//! The command quiesce promise (PROTOCOL.md §11.4).
//!
//! A session whose creating LOGIN carried a HOST record is
//! *multipath-capable*. For such a session the node promises, with
//! `last_contact` the last time a byte of any of the session's connections
//! arrived and `inactivity` the deadline granted in its latest
//! LOGIN_ACCEPT:
//!
//! * no command of it **starts** later than `last_contact + inactivity`, and
//!   none starts once the session is fenced;
//! * its commands that did start have finished by `last_contact + quiesce`,
//!   where `quiesce = inactivity + command_budget` is the `quiesce_ms`
//!   advertised in LOGIN_ACCEPT. This half the node cannot force (a backend
//!   call may hang); a command that completes later is counted in
//!   `TargetStats::quiesce_overruns` so the operator can raise
//!   `command_budget`.
//!
//! "Starts" means "touches the backend": the driver asks [`Target::begin`]
//! right before it hands a command to its service, and a service that
//! queues commands asks again right before the backend operation. A refused
//! command is answered with the status response `NotExecuted` (it never
//! ran, and the initiator may issue it again anywhere). Sessions without a
//! HOST record have no promise: `begin` refuses them nothing.

use std::time::Duration;

use crate::config::TargetConfig;
use crate::ids::SessionId;
use crate::time::Timestamp;
use crate::wire::{HostRecord, ResponseStatus};
use crate::Seq;

use super::{duration_ms, Target};

/// What a session knows about its host, its last contact and its fence.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PathState {
    /// From the creating LOGIN's HOST record; `None`: no quiesce promise.
    pub(crate) host: Option<HostRecord>,
    /// The last time a byte of any of its connections arrived (or its
    /// latest login was accepted).
    pub(crate) last_contact: Timestamp,
    /// The inactivity deadline granted in its latest LOGIN_ACCEPT.
    pub(crate) inactivity: Duration,
    /// A fence ended it: no command of it starts again.
    pub(crate) fenced: bool,
}

impl PathState {
    /// The last moment a command of the session may start, if the session
    /// has a quiesce promise.
    pub(crate) fn start_deadline(&self) -> Option<Timestamp> {
        self.host.map(|_| self.last_contact + self.inactivity)
    }

    /// The moment by which its started commands should have finished.
    pub(crate) fn finish_deadline(&self, budget: Duration) -> Option<Timestamp> {
        self.host
            .map(|_| self.last_contact + self.inactivity + budget)
    }
}

/// The `quiesce_ms` advertised for a login granted `inactivity_ms`:
/// `inactivity_ms + command_budget`, saturating below 0xFFFFFFFF; 0 for a
/// login without a HOST record.
pub(crate) fn quiesce_ms(config: &TargetConfig, inactivity_ms: u32, host: bool) -> u32 {
    if !host {
        return 0;
    }
    let budget = Duration::from_millis(u64::from(inactivity_ms)) + config.command_budget;
    duration_ms(budget)
}

/// Why [`Target::begin`] refused to start a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotStarted {
    /// A fence ended the command's session.
    #[error("the session was fenced: its commands never start again")]
    Fenced,
    /// The session's quiesce promise forbids it: the last contact was too
    /// long ago.
    #[error(
        "no contact with the initiator since {last_contact:?}; the node promised to start \
         nothing of this session after {deadline:?}"
    )]
    PastDeadline {
        /// The session's last contact.
        last_contact: Timestamp,
        /// The last moment a command could start.
        deadline: Timestamp,
    },
    /// The command is not running in that session (never delivered, or
    /// already completed): there is nothing to start.
    #[error("the command is not running")]
    NotRunning,
}

impl Target {
    /// Asks whether command `seq` of `session` may start touching the
    /// backend now (PROTOCOL.md §11.4). `Ok` for every session without a
    /// quiesce promise. On `Err` (fenced, or past the start deadline) the
    /// command is answered here with the status response `NotExecuted`:
    /// the driver must not execute it and must not complete it again.
    pub fn begin(
        &mut self,
        session: SessionId,
        seq: Seq,
        now: Timestamp,
    ) -> Result<(), NotStarted> {
        self.now = now;
        let refusal = self.start_refusal(session, seq, now)?;
        match refusal {
            None => Ok(()),
            Some(why) => {
                self.refuse(session, seq, &why, now);
                Err(why)
            }
        }
    }

    /// Whether command `seq` of `session` may start now, without changing
    /// anything: `Ok(None)` yes, `Ok(Some(why))` no, `Err` not running.
    pub fn may_start(
        &self,
        session: SessionId,
        seq: Seq,
        now: Timestamp,
    ) -> Result<(), NotStarted> {
        match self.start_refusal(session, seq, now)? {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }

    fn start_refusal(
        &self,
        session: SessionId,
        seq: Seq,
        now: Timestamp,
    ) -> Result<Option<NotStarted>, NotStarted> {
        let Some(s) = self.sessions.get(&session).filter(|s| s.is_running(seq)) else {
            return Err(NotStarted::NotRunning);
        };
        #[cfg(feature = "test-switches")]
        if self.config.switches.no_quiesce {
            return Ok(None);
        }
        if s.path.fenced {
            return Ok(Some(NotStarted::Fenced));
        }
        match s.path.start_deadline() {
            Some(deadline) if now > deadline => Ok(Some(NotStarted::PastDeadline {
                last_contact: s.path.last_contact,
                deadline,
            })),
            _ => Ok(None),
        }
    }

    /// Answers command `seq` of `session` with the status response
    /// `NotExecuted`: a driver whose check ran elsewhere (a service's own
    /// call to its start gate) and said no. Ignored if the command is not
    /// running.
    pub fn refuse(&mut self, session: SessionId, seq: Seq, why: &NotStarted, now: Timestamp) {
        self.now = now;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if !s.is_running(seq) {
            return;
        }
        self.stats.not_executed += 1;
        let text = format!("not executed, and it never will be: {why}; issue it again");
        s.complete(
            seq,
            bytes::Bytes::from(text),
            Some(ResponseStatus::NotExecuted),
            &mut self.changes,
        );
        self.after_completion(session);
    }

    /// The last moment a command of `session` may start (`None`: the
    /// session has no quiesce promise, or does not exist), and whether it
    /// is fenced. A driver that checks starts outside the core (a service
    /// task) mirrors these after every input.
    pub fn start_gate(&self, session: SessionId) -> Option<(Option<Timestamp>, bool)> {
        let s = self.sessions.get(&session)?;
        #[cfg(feature = "test-switches")]
        if self.config.switches.no_quiesce {
            return Some((None, false));
        }
        Some((s.path.start_deadline(), s.path.fenced))
    }

    /// The last time a byte of `session` arrived (or its latest login was
    /// accepted).
    pub fn last_contact(&self, session: SessionId) -> Option<Timestamp> {
        self.sessions.get(&session).map(|s| s.path.last_contact)
    }

    /// Records that a byte of `session` arrived at `now`.
    pub(super) fn touch(&mut self, session: SessionId, now: Timestamp) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.path.last_contact = s.path.last_contact.max(now);
        }
    }

    /// Counts a command of `session` that completes past the session's
    /// finish deadline (called just before it is recorded).
    pub(super) fn check_overrun(&mut self, session: SessionId, now: Timestamp) -> bool {
        let Some(s) = self.sessions.get(&session) else {
            return false;
        };
        let late = s
            .path
            .finish_deadline(self.config.command_budget)
            .is_some_and(|d| now > d);
        if late {
            self.stats.quiesce_overruns += 1;
        }
        late
    }
}
