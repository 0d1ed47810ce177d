//! Per-call deadlines ([`CallOptions::deadline`],
//! [`crate::InitiatorOptions::call_deadline`]): when one passes, the call is
//! withdrawn with the machinery of PROTOCOL.md §11.3 and fails with
//! [`CallError::DeadlineExceeded`], which says whether it may have executed.
//!
//! * Not yet handed to the driver (the request queue was full), waiting for
//!   credit, or never sent in this session: the call is dropped; it never
//!   executes and is never re-issued (settled, `may_have_executed` false).
//! * Sent, so the target may have it: the caller is told at once that it
//!   may have executed (not settled); the call stays in the session without
//!   a caller, is never re-issued in a new session, and runs at most once.

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::CallOptions;
use tokio::sync::oneshot;

use crate::error::CallError;
use crate::initiator::{Initiator, Reply};
use crate::withdraw::AbandonOnDrop;

/// The text of [`CallError::DeadlineExceeded`].
pub(crate) fn describe(may_have_executed: bool, settled: bool) -> &'static str {
    match (may_have_executed, settled) {
        (false, _) => {
            "deadline passed before it was sent: withdrawn, it did not execute and never will; \
             safe to retry"
        }
        (true, true) => {
            "deadline passed: it may have executed in a session the target has since ended, \
             and it will not execute again; check its effect before retrying"
        }
        (true, false) => {
            "deadline passed after it was sent: it may have executed, or may still (it is \
             never re-issued, and runs at most once); check its effect before retrying \
             unless the operation is idempotent"
        }
    }
}

impl Initiator {
    /// Submits a call or message and waits for its outcome until
    /// `deadline`; then withdraws it and reports whether it may have
    /// executed.
    pub(crate) async fn until_deadline<T>(
        &self,
        command: bool,
        payload: Bytes,
        options: CallOptions,
        deadline: Duration,
        reply: fn(oneshot::Sender<Result<T, CallError>>) -> Reply,
    ) -> Result<T, CallError> {
        let expired = tokio::time::sleep(deadline);
        let mut expired = std::pin::pin!(expired);
        let (tx, mut rx) = oneshot::channel();
        let ticket = tokio::select! {
            biased;
            submitted = self.submit(command, payload, options, reply(tx)) => submitted?,
            // Still waiting for room in the queue: dropping the send
            // withdraws it before the driver ever saw it.
            () = &mut expired => return Err(not_sent()),
        };
        let mut guard = AbandonOnDrop::new(self, ticket);
        let result = tokio::select! {
            biased;
            r = &mut rx => r.map_err(drop),
            () = &mut expired => {
                // The driver answers at once: withdrawn, or in doubt, in
                // the reply; nothing there yet means the submission still
                // waits in the request queue and will be dropped unsent.
                let acted = guard.fire_deadline();
                tokio::select! {
                    biased;
                    // An outcome may arrive without the driver reading
                    // the withdrawal (it refuses requests after the end).
                    r = &mut rx => r.map(|r| r.map_err(expired_error)).map_err(drop),
                    _ = acted => match rx.try_recv() {
                        Ok(r) => Ok(r.map_err(expired_error)),
                        Err(oneshot::error::TryRecvError::Empty) => Ok(Err(not_sent())),
                        Err(oneshot::error::TryRecvError::Closed) => Err(()),
                    },
                }
            }
        };
        guard.disarm();
        result.map_err(|()| CallError::Stopped)?
    }
}

/// A call withdrawn before it was sent.
fn not_sent() -> CallError {
    CallError::DeadlineExceeded {
        may_have_executed: false,
        settled: true,
    }
}

/// What a withdrawal the deadline caused reports: the driver's answer in
/// the deadline's terms (a real outcome that raced it is kept).
fn expired_error(e: CallError) -> CallError {
    match e {
        CallError::Withdrawn { may_have_executed } => CallError::DeadlineExceeded {
            may_have_executed,
            settled: true,
        },
        other => other,
    }
}
