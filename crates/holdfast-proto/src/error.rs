//! Error types, in layers: protocol violations (with a wire code), connection
//! loss, per-call failures that say whether the command may have executed, and
//! local misuse of the API.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use crate::ids::{CallId, SessionId};
use crate::wire::{ErrorCode, RejectReason, ResponseStatus};
use crate::Seq;

/// A violation of the protocol by the peer (or a local policy that closes a
/// connection). The connection is closed; the session's state is untouched.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("protocol error {code}: {reason}")]
pub struct ProtocolError {
    code: ErrorCode,
    reason: String,
}

impl ProtocolError {
    /// Builds an error with its wire code and a human-readable reason.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        ProtocolError {
            code,
            reason: reason.into(),
        }
    }

    /// The wire code sent to the peer in an ERROR frame.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The human-readable detail.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Why a connection ended. The session survives it unless a later event says
/// otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// We detected a protocol violation by the peer and closed the connection.
    #[error("closed the connection: {0}")]
    Protocol(ProtocolError),
    /// The peer sent an ERROR frame and closed the connection.
    #[error("the peer closed the connection with error {code}: {text}")]
    PeerError {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's text.
        text: String,
    },
    /// Nothing arrived for the detection bound while a reply was expected.
    #[error("no traffic for {0:?} while waiting for a reply: the connection is presumed dead")]
    Timeout(Duration),
    /// The login did not complete within the login timeout.
    #[error("the login did not complete within {0:?}")]
    LoginTimeout(Duration),
    /// The target refused the login for a reason that may pass.
    #[error("the target refused the login: {0}")]
    Rejected(RejectReason),
    /// The driver reported that the transport closed or failed.
    #[error("the transport connection closed")]
    TransportClosed,
}

/// Why a session ended for good (its state at the target is gone or unreachable).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SessionLoss {
    /// The target refused to recover the session; it holds no state for it.
    #[error("the target could not recover session {session}: {reason}")]
    Rejected {
        /// The lost session.
        session: SessionId,
        /// The target's reason.
        reason: RejectReason,
    },
    /// The target announced it will not come back.
    #[error("the target announced a shutdown with no return")]
    TargetGone,
    /// No connection could be re-established within the session-loss timeout.
    #[error("no connection for {0:?}: gave up on the session")]
    GaveUp(Duration),
    /// The target speaks no protocol version we speak.
    #[error("no protocol version in common with the target")]
    NoCommonVersion,
    /// The application aborted the session.
    #[error("the session was aborted locally")]
    Aborted,
}

impl SessionLoss {
    /// True if this loss proves the target's session is over, so no command
    /// of it can still execute: the target said it holds no state for the
    /// session (it ended, expired or belonged to an earlier incarnation; a
    /// target ends a session only once none of its commands is running,
    /// docs/PROTOCOL.md §11.1). Every other loss leaves the commands sent in
    /// doubt until the target's retain time passes.
    /// (`BadSecret` does not fence: the target holds a live session under
    /// that id.)
    pub fn fences(&self) -> bool {
        matches!(
            self,
            SessionLoss::Rejected {
                reason: RejectReason::UnknownSession
                    | RejectReason::TargetRestarted
                    | RejectReason::SessionExpired
                    | RejectReason::SessionClosed,
                ..
            }
        )
    }
}

/// How a call or one-way message failed. Every variant says whether the
/// command may have reached the service.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CallError {
    /// The command was never sent on any connection: it did not execute.
    /// Retrying it is safe.
    #[error("not executed: it was never sent before the session was lost ({0})")]
    NotExecuted(SessionLoss),
    /// The command was sent but its outcome is unknown: it may have executed.
    /// Retry only if the operation is idempotent.
    #[error(
        "may have executed: it was sent but no response arrived before the session was lost ({0})"
    )]
    MayHaveExecuted(SessionLoss),
    /// The caller withdrew the call ([`crate::Initiator::abandon`]) and it
    /// is settled: it will never execute after this error. Either the target
    /// never received it (`may_have_executed` is false), or it was sent in an
    /// earlier session that the target has since ended, so any execution of
    /// it is over (`may_have_executed` is true).
    #[error(
        "withdrawn: {}",
        if *may_have_executed {
            "it may have executed in a session the target has since ended, and it will not execute again"
        } else {
            "the target never received it and it will never execute"
        }
    )]
    Withdrawn {
        /// True if it may have executed (in an ended earlier session).
        may_have_executed: bool,
    },
    /// The command **executed**, but the target answered it with a status
    /// response instead of the service's response (PROTOCOL.md §6.7), for
    /// example `ResponseTooLarge`: the response exceeded what this
    /// initiator accepts. Do not retry blindly: it ran once.
    #[error("executed, but the target could not deliver its response: {status}: {text}")]
    Failed {
        /// The status the target sent.
        status: ResponseStatus,
        /// The target's detail.
        text: String,
    },
    /// The command **executed** and the service reported an error instead
    /// of a response (the status `ServiceFailed`, PROTOCOL.md §6.7); `text`
    /// is the service error's description, cut to at most 256 bytes.
    /// Settled: it ran once and will not run again. Whether retrying is
    /// right depends on the error and the operation.
    #[error("executed, and the service failed it: {text}")]
    ServiceFailed {
        /// The service error's description.
        text: String,
    },
    /// The target answered with the status `NotExecuted` (PROTOCOL.md
    /// §6.7, §11.4): the command was **not executed** and never will be,
    /// because the node's quiesce promise or a fence forbade starting it.
    /// Settled: issuing it again, here or on another node, is safe.
    #[error("not executed, and it never will be: the target refused to start it ({text}); issue it again")]
    NotStarted {
        /// The target's detail.
        text: String,
    },
    /// A call carried across a stateless recovery is larger than the new
    /// session's target accepts, so it cannot be re-issued; it failed alone
    /// (the other calls go on). `may_have_executed` says whether it was sent
    /// in a lost session.
    #[error(
        "not re-issued: its payload of {len} bytes exceeds the new target's limit of {max} bytes \
         ({})",
        if *may_have_executed { "it may have executed in the lost session" } else { "it did not execute" }
    )]
    TooLargeForTarget {
        /// The payload's length.
        len: usize,
        /// The largest payload the new target accepts.
        max: usize,
        /// True if it was sent in a lost session (so it may have executed).
        may_have_executed: bool,
    },
}

impl CallError {
    /// True if the command may have reached the service (for
    /// [`CallError::Failed`]: it did).
    pub fn may_have_executed(&self) -> bool {
        match self {
            CallError::NotExecuted(_) | CallError::NotStarted { .. } => false,
            CallError::MayHaveExecuted(_)
            | CallError::Failed { .. }
            | CallError::ServiceFailed { .. } => true,
            CallError::Withdrawn { may_have_executed }
            | CallError::TooLargeForTarget {
                may_have_executed, ..
            } => *may_have_executed,
        }
    }

    /// True if the command can no longer execute: it never will, or it did
    /// (once, or in a session the target has ended). False only for
    /// [`CallError::MayHaveExecuted`] after a loss that does not prove the
    /// target's session is over (the initiator gave up, the target announced
    /// it will not return, or a local abort): such a command is in doubt
    /// until the target's session ends.
    pub fn is_settled(&self) -> bool {
        match self {
            CallError::NotExecuted(_)
            | CallError::NotStarted { .. }
            | CallError::Withdrawn { .. }
            | CallError::Failed { .. }
            | CallError::ServiceFailed { .. }
            | CallError::TooLargeForTarget { .. } => true,
            CallError::MayHaveExecuted(loss) => loss.fences(),
        }
    }

    /// The session loss that caused the failure, if one did.
    pub fn loss(&self) -> Option<&SessionLoss> {
        match self {
            CallError::NotExecuted(l) | CallError::MayHaveExecuted(l) => Some(l),
            CallError::Withdrawn { .. }
            | CallError::NotStarted { .. }
            | CallError::Failed { .. }
            | CallError::ServiceFailed { .. }
            | CallError::TooLargeForTarget { .. } => None,
        }
    }
}

/// Why [`crate::Initiator::call`] or [`crate::Initiator::send`] refused a submission.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// No credit (or no session yet): wait for
    /// [`crate::InitiatorEvent::CreditAvailable`] and try again.
    #[error("no credit available: wait for a credit update")]
    NoCredit,
    /// The payload exceeds what the target accepts.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload accepted.
        max: usize,
    },
    /// [`crate::Initiator::close`] was called; no new work is accepted.
    #[error("the session is closing")]
    Closing,
    /// The session ended for good.
    #[error("the session has ended: {0}")]
    Ended(SessionLoss),
}

/// Why [`crate::Initiator::connect`] refused a new connection.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The target asked us to wait; try again at the given time.
    #[error("the target asked for no reconnect before {0:?}")]
    TooEarly(crate::Timestamp),
    /// The session is closed or lost; there is nothing to connect for.
    #[error("the session has ended")]
    Ended,
    /// A join needs a session with a logged-in connection to join, and a
    /// configuration that allows one more connection (PROTOCOL.md §17).
    #[error("cannot join: {0}")]
    CannotJoin(&'static str),
}

/// Why [`crate::Target::complete`] refused a completion.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CompleteError {
    /// The session no longer exists (expired or closed); drop the response.
    #[error("session {0} no longer exists")]
    UnknownSession(SessionId),
    /// The command is not running in that session (never delivered, or already completed).
    #[error("command {seq} is not running in session {session}")]
    NotRunning {
        /// The session.
        session: SessionId,
        /// The command.
        seq: Seq,
    },
}

/// Why [`crate::Target::accept`] refused a connection.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The target is at its connection limit.
    #[error("at the limit of {0} connections")]
    TooManyConnections(usize),
    /// The connection id is already in use.
    #[error("connection id {0:?} is already in use")]
    DuplicateId(crate::ConnId),
    /// The target is at its limit of connections still logging in
    /// (`TargetConfig::max_logins_in_progress`).
    #[error("at the limit of {0} connections still logging in")]
    TooManyLogins(usize),
}

/// A call failure together with its call id (see [`crate::InitiatorEvent`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedCall {
    /// The call.
    pub call: CallId,
    /// Why.
    pub error: CallError,
}

impl fmt::Display for FailedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call {:?}: {}", self.call, self.error)
    }
}
