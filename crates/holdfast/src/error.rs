//! The one error type a caller matches: [`CallError`], how a call or a
//! one-way message failed, flattened so that every outcome is a top-level
//! variant (no reaching into `holdfast::proto`), with the three questions a
//! caller asks answered by helpers: [`CallError::may_have_executed`],
//! [`CallError::not_executed`] and [`CallError::is_settled`].
//!
//! ```
//! use holdfast::CallError;
//!
//! fn retry_is_safe(e: &CallError) -> bool {
//!     // Never ran, and never will: issuing it again cannot run it twice.
//!     e.not_executed() && e.is_settled()
//! }
//! # let _ = retry_is_safe;
//! ```

use std::sync::Arc;
use std::time::Duration;

use holdfast_proto::wire::ResponseStatus;
use holdfast_proto::{ConnectionError, SessionLoss, SubmitError};
use thiserror::Error;

/// Why a call or message failed. Every variant says whether the operation
/// may have reached the service: ask [`CallError::may_have_executed`],
/// [`CallError::not_executed`] and [`CallError::is_settled`] rather than
/// matching, unless the detail matters.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CallError {
    /// The session was lost before the command was sent on any connection:
    /// it did **not execute**, and never will. Issuing it again is safe.
    #[error("not executed: it was never sent before the session was lost ({0}); issue it again")]
    NotExecuted(SessionLoss),
    /// The command was sent, but the session was lost before its response
    /// arrived: it **may have executed** (once at most). Retry only if the
    /// operation is idempotent, or read the state back first.
    #[error(
        "may have executed: it was sent but no response arrived before the session was lost \
         ({0}); retry only if the operation is idempotent, or read the state back first"
    )]
    MayHaveExecuted(SessionLoss),
    /// The call was withdrawn (cancelled, see
    /// [`crate::Initiator::call_cancellable`]) and is settled: it will never
    /// execute after this error. Either the target never received it
    /// (`may_have_executed` is false), or it was sent in an earlier session
    /// that the target has since ended (`may_have_executed` is true).
    #[error(
        "withdrawn: {}",
        if *may_have_executed {
            "it may have executed in a session the target has since ended, and it will not execute again"
        } else {
            "it was never sent and it will never execute"
        }
    )]
    Withdrawn {
        /// True if it may have executed (in an ended earlier session).
        may_have_executed: bool,
    },
    /// The command **executed**, but the target answered it with a status
    /// response instead of the service's response (PROTOCOL.md §6.7), for
    /// example `ResponseTooLarge`. Do not retry blindly: it ran once.
    #[error("executed, but the target could not deliver its response: {status}: {text}")]
    Failed {
        /// The status the target sent.
        status: ResponseStatus,
        /// The target's detail.
        text: String,
    },
    /// The command **executed** and the service returned an error (the
    /// status `ServiceFailed`, PROTOCOL.md §6.7); `text` is the service
    /// error's `Display`, cut to at most 256 bytes. Settled: it ran once.
    #[error("executed, and the service failed it: {text}")]
    ServiceFailed {
        /// The service error's description.
        text: String,
    },
    /// The target refused to start the command (status `NotExecuted`,
    /// PROTOCOL.md §6.7, §11.4: a quiesce promise, a fence, or the service
    /// not ready): it did **not execute** and never will; issue it again.
    #[error("not executed, and it never will be: the target refused to start it ({text}); issue it again")]
    NotStarted {
        /// The target's detail.
        text: String,
    },
    /// A call carried across a stateless recovery is larger than the new
    /// target accepts, so it could not be re-issued; it failed alone.
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
    /// The initiator refused the request before sending it (too large, or
    /// the session had ended): it did **not execute**.
    #[error("refused before sending (not executed): {0}")]
    Refused(#[source] SubmitError),
    /// This side closed the session ([`crate::Initiator::close`]): the
    /// request was never sent and did **not execute**. Start a new
    /// initiator to issue more.
    #[error(
        "not executed: this side closed the session with close(); start a new Initiator to issue more"
    )]
    Closed,
    /// No session could be established with the target for the whole
    /// session-loss timeout; the request was never sent (**not executed**).
    /// The initiator keeps trying: a later call may succeed.
    #[error(
        "not executed: no session with the target for {waited:?} (last error: {last_error}); \
         check that the target is running and reachable, then retry"
    )]
    Unreachable {
        /// How long the initiator had been without a session.
        waited: Duration,
        /// The last connection or login failure.
        #[source]
        last_error: LinkError,
    },
    /// The call's deadline ([`crate::CallOptions::deadline`], or
    /// [`crate::InitiatorOptions::call_deadline`]) passed before its outcome
    /// arrived, and the call was withdrawn. If it was not yet sent
    /// (`may_have_executed` false) it never executes and is never
    /// re-issued: settled, safe to retry. If the target may have it, it
    /// may have executed or may still (it is never re-issued in a new
    /// session, but a recovered session runs what the target received):
    /// in doubt, not settled.
    #[error("{}", crate::deadline::describe(*may_have_executed, *settled))]
    DeadlineExceeded {
        /// True if the target may have received it (it may have run).
        may_have_executed: bool,
        /// True if it can no longer execute after this error.
        settled: bool,
    },
    /// The initiator's driver task stopped (the runtime shut down, or it
    /// panicked) before the call finished: it may have executed.
    #[error("the initiator stopped before the call finished; it may have executed")]
    Stopped,
    /// A failure of the protocol core that this version of the runtime does
    /// not name (the core's error type is `#[non_exhaustive]`); the helpers
    /// answer for it.
    #[error(transparent)]
    Other(holdfast_proto::CallError),
}

impl CallError {
    /// True if the operation may have reached the service (for
    /// [`CallError::Failed`] and [`CallError::ServiceFailed`]: it did).
    pub fn may_have_executed(&self) -> bool {
        match self {
            CallError::NotExecuted(_)
            | CallError::NotStarted { .. }
            | CallError::Refused(_)
            | CallError::Closed
            | CallError::Unreachable { .. } => false,
            CallError::MayHaveExecuted(_)
            | CallError::Failed { .. }
            | CallError::ServiceFailed { .. }
            | CallError::Stopped => true,
            CallError::Withdrawn { may_have_executed }
            | CallError::TooLargeForTarget {
                may_have_executed, ..
            }
            | CallError::DeadlineExceeded {
                may_have_executed, ..
            } => *may_have_executed,
            CallError::Other(e) => e.may_have_executed(),
        }
    }

    /// True if the operation certainly did not reach the service: the
    /// opposite of [`CallError::may_have_executed`].
    pub fn not_executed(&self) -> bool {
        !self.may_have_executed()
    }

    /// True if the operation can no longer execute (it never will, or it
    /// did, once or in a session the target has ended), so reporting it as
    /// failed cannot be contradicted later by a late execution. False for
    /// [`CallError::MayHaveExecuted`] after a loss that does not prove the
    /// target's session over, and for [`CallError::Stopped`]: such an
    /// operation is in doubt until the target's session ends.
    pub fn is_settled(&self) -> bool {
        match self {
            CallError::NotExecuted(_)
            | CallError::NotStarted { .. }
            | CallError::Withdrawn { .. }
            | CallError::Failed { .. }
            | CallError::ServiceFailed { .. }
            | CallError::TooLargeForTarget { .. }
            | CallError::Refused(_)
            | CallError::Closed
            | CallError::Unreachable { .. } => true,
            CallError::MayHaveExecuted(loss) => loss.fences(),
            CallError::Stopped => false,
            CallError::DeadlineExceeded { settled, .. } => *settled,
            CallError::Other(e) => e.is_settled(),
        }
    }

    /// The session loss that caused the failure, if one did.
    pub fn loss(&self) -> Option<&SessionLoss> {
        match self {
            CallError::NotExecuted(l) | CallError::MayHaveExecuted(l) => Some(l),
            CallError::Refused(SubmitError::Ended(l)) => Some(l),
            CallError::Other(e) => e.loss(),
            _ => None,
        }
    }
}

impl From<holdfast_proto::CallError> for CallError {
    fn from(e: holdfast_proto::CallError) -> Self {
        use holdfast_proto::CallError as P;
        match e {
            P::NotExecuted(l) => CallError::NotExecuted(l),
            P::MayHaveExecuted(l) => CallError::MayHaveExecuted(l),
            P::Withdrawn { may_have_executed } => CallError::Withdrawn { may_have_executed },
            P::Failed { status, text } => CallError::Failed { status, text },
            P::ServiceFailed { text } => CallError::ServiceFailed { text },
            P::NotStarted { text } => CallError::NotStarted { text },
            P::TooLargeForTarget {
                len,
                max,
                may_have_executed,
            } => CallError::TooLargeForTarget {
                len,
                max,
                may_have_executed,
            },
            other => CallError::Other(other),
        }
    }
}

/// The last reason a connection to the target failed or could not be made,
/// carried by [`CallError::Unreachable`] as its source.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No connection attempt has finished yet.
    #[error("no connection attempt has finished yet")]
    NotTried,
    /// The transport connect failed.
    #[error("connect: {0}")]
    Connect(#[source] Arc<std::io::Error>),
    /// The transport connect took longer than the connect timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// A connection was lost or its login failed.
    #[error(transparent)]
    Connection(ConnectionError),
}

impl PartialEq for LinkError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (LinkError::NotTried, LinkError::NotTried) => true,
            (LinkError::Connect(a), LinkError::Connect(b)) => {
                a.kind() == b.kind() && a.to_string() == b.to_string()
            }
            (LinkError::ConnectTimeout(a), LinkError::ConnectTimeout(b)) => a == b,
            (LinkError::Connection(a), LinkError::Connection(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for LinkError {}
