//! What the initiator tells its driver and application.

use bytes::Bytes;

use crate::error::{CallError, ConnectionError, SessionLoss};
use crate::ids::{CallId, SessionId};
use crate::time::Timestamp;

/// Per-call options.
///
/// Non-exhaustive (fields may be added): build them from
/// [`CallOptions::default`] with the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// let options = holdfast_proto::CallOptions::default()
///     .with_retry_safe(true)
///     .with_deadline(Duration::from_secs(5));
/// assert!(options.retry_safe);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// The caller declares the operation idempotent when re-run in order
    /// (a block write, a read). If the target loses the session, such calls
    /// are re-issued on a new session in their original order instead of
    /// failing with "may have executed".
    pub retry_safe: bool,
    /// How long the caller waits for the outcome, counted from the call
    /// (`None`: the runtime's session default, if any). The core does not
    /// read it (it has no clock of its own): the runtime enforces it by
    /// withdrawing the call when it passes ([`crate::Initiator::abandon`]),
    /// and the call fails with an error that says whether it may have
    /// executed.
    pub deadline: Option<std::time::Duration>,
}

impl CallOptions {
    /// Options for a retry-safe call.
    pub const RETRY_SAFE: CallOptions = CallOptions {
        retry_safe: true,
        deadline: None,
    };

    /// These options with `retry_safe` set as given (see
    /// [`CallOptions::retry_safe`]).
    pub const fn with_retry_safe(mut self, retry_safe: bool) -> CallOptions {
        self.retry_safe = retry_safe;
        self
    }

    /// These options with a deadline of `deadline` from the call.
    pub const fn with_deadline(mut self, deadline: std::time::Duration) -> CallOptions {
        self.deadline = Some(deadline);
        self
    }
}

/// Something the driver or application must learn about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitiatorEvent {
    /// A login succeeded. `resent` commands or messages are being sent again.
    Connected {
        /// The session.
        session: SessionId,
        /// True if an existing session was recovered (stateful recovery).
        recovered: bool,
        /// How many unacknowledged commands and messages are resent.
        resent: u64,
    },
    /// A command's response arrived (exactly once).
    Response {
        /// The call.
        call: CallId,
        /// The response.
        payload: Bytes,
    },
    /// The target acknowledged a one-way message: it is delivered exactly
    /// once (the target's service accepted it, PROTOCOL.md §6.2).
    MessageDelivered {
        /// The message.
        call: CallId,
    },
    /// A call or message failed; the error says whether it may have executed.
    CallFailed {
        /// The call.
        call: CallId,
        /// Why, and whether it may have executed.
        error: CallError,
    },
    /// The target could not recover the session (stateless recovery): calls
    /// that were not retry-safe failed, retry-safe ones are re-issued on a new
    /// session, whose login is already under way on the same connection.
    SessionReplaced {
        /// Why the old session was lost.
        lost: SessionLoss,
        /// Calls re-issued in their original order.
        reissued: usize,
        /// Calls failed.
        failed: usize,
    },
    /// The connection ended. Open a new one with `connect` at or after
    /// `reconnect_at` (`Timestamp::NEVER` if the session has ended, or if
    /// the target said never to try again).
    ConnectionLost {
        /// Why.
        error: ConnectionError,
        /// The earliest time to reconnect (the target's hold time, if any).
        reconnect_at: Timestamp,
    },
    /// One of the session's several connections ended while others remain
    /// (PROTOCOL.md §17.5): close it, and join a new one in its place with
    /// [`crate::Initiator::join`] when you like. What it carried that the
    /// target had not acknowledged is already assigned to the survivors.
    ConnectionDropped {
        /// The connection.
        conn: crate::ids::ConnId,
        /// Why.
        error: ConnectionError,
        /// Commands and messages moved to the surviving connections.
        moved: u64,
    },
    /// A join (LOGIN kind 2) succeeded: the connection carries the
    /// session's traffic beside the others.
    Joined {
        /// The session.
        session: SessionId,
        /// The connection that joined.
        conn: crate::ids::ConnId,
    },
    /// The target announced a shutdown.
    ShutdownNotice {
        /// The connection is expected to work until then.
        up_until: Timestamp,
        /// Reconnect no earlier than this; `None` if the target will not return.
        reconnect_at: Option<Timestamp>,
    },
    /// Submissions refused with `NoCredit` may be retried now.
    CreditAvailable,
    /// The FIN exchange completed: everything sent was delivered and answered.
    Closed,
    /// The session ended for good; every outstanding call has failed.
    SessionEnded(SessionLoss),
    /// The answer to [`crate::Initiator::fence`] (PROTOCOL.md §11.5); also
    /// `Unreachable` when the connection was lost before the answer came.
    FenceDone {
        /// The token `fence` returned.
        token: u64,
        /// `Fenced`: confirmed. Anything else: fence by waiting instead.
        result: crate::wire::FenceResult,
        /// How long the fenced node waited for running commands.
        waited: std::time::Duration,
    },
}

/// Counters the initiator keeps. All only ever increase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct InitiatorStats {
    /// Connections opened.
    pub connects: u64,
    /// Connections lost.
    pub disconnects: u64,
    /// Sessions created.
    pub sessions: u64,
    /// Stateful recoveries accepted.
    pub recoveries: u64,
    /// Stateless recoveries (target lost the session).
    pub stateless_recoveries: u64,
    /// Commands and messages sent again on a new connection.
    pub resent: u64,
    /// Calls re-issued on a new session.
    pub reissued: u64,
    /// Responses received.
    pub responses: u64,
    /// One-way messages acknowledged.
    pub messages_delivered: u64,
    /// Calls failed (withdrawn ones included).
    pub calls_failed: u64,
    /// Calls withdrawn by their caller and settled as never executing again.
    pub withdrawn: u64,
    /// PINGs sent.
    pub pings: u64,
    /// Standalone ACKs sent.
    pub acks: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Commands and messages moved from a lost connection to the surviving
    /// ones of the session (§17.5).
    pub moved: u64,
    /// Duplicate responses dropped (a response written again on a
    /// surviving connection that also arrived on the lost one, §17.5).
    pub duplicate_responses: u64,
}
