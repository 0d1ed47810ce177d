//! Withdrawing calls whose caller stopped waiting, so that a call reported
//! as failed never executes later (docs/PROTOCOL.md §11.3).
//!
//! [`Initiator::call_cancellable`] is the API for callers that answer
//! someone else within a deadline (the NBD export's `--io-timeout`): when
//! the deadline passes the call is withdrawn, and the caller learns
//! whether it was dropped unsent (it will never execute) or must wait for
//! its real outcome. Dropping any call future withdraws it too, through
//! [`AbandonOnDrop`].

use std::future::Future;

use bytes::Bytes;
use holdfast_proto::CallOptions;
use tokio::sync::oneshot;

use crate::error::CallError;
use crate::initiator::{Initiator, Reply};

/// Tells the driver that the caller of a submission stopped waiting, unless
/// disarmed first (the outcome arrived).
pub(crate) struct AbandonOnDrop<'a> {
    initiator: &'a Initiator,
    ticket: Option<u64>,
}

impl<'a> AbandonOnDrop<'a> {
    pub(crate) fn new(initiator: &'a Initiator, ticket: u64) -> Self {
        AbandonOnDrop {
            initiator,
            ticket: Some(ticket),
        }
    }

    /// The outcome arrived: nothing to withdraw.
    pub(crate) fn disarm(&mut self) {
        self.ticket = None;
    }

    /// Withdraws now (and not again on drop).
    fn fire(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            // Fails only if the driver is gone, and then nothing runs.
            let _ = self.initiator.abandons.send((ticket, None));
        }
    }

    /// Withdraws now because the call's deadline passed: a call the target
    /// may have is failed at once ("may have executed") instead of waiting
    /// for its outcome. The returned receiver completes once the driver has
    /// acted: by then the outcome was sent to the call's reply channel, or
    /// the submission is still in the request queue and will be dropped
    /// unsent when the driver reaches it.
    pub(crate) fn fire_deadline(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Some(ticket) = self.ticket.take() {
            let _ = self.initiator.abandons.send((ticket, Some(tx)));
        }
        rx
    }
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        self.fire();
    }
}

impl Initiator {
    /// Issues a command that the caller may cancel, and returns only once
    /// its fate is settled.
    ///
    /// When `cancel` completes before the response, the call is withdrawn:
    /// * if the target cannot have it yet (it was never sent, or only on
    ///   connections the target has fenced), it is dropped and this returns
    ///   [`CallError::Withdrawn`]: it will never execute;
    /// * otherwise this keeps waiting for the real outcome: the response if
    ///   the command completes, or a failure once the target's session is
    ///   known to be gone. It is never re-issued in a new session.
    ///
    /// So an error from this call, with [`CallError::is_settled`] true,
    /// means the command will not execute later: safe to report as failed.
    /// A failure that is not settled (the initiator gave up on the target)
    /// leaves the command in doubt until the target's retain time passes.
    pub async fn call_cancellable(
        &self,
        payload: Bytes,
        options: CallOptions,
        cancel: impl Future<Output = ()>,
    ) -> Result<Bytes, CallError> {
        let (tx, rx) = oneshot::channel();
        let mut cancel = std::pin::pin!(cancel);
        let ticket = tokio::select! {
            biased;
            submitted = self.submit(true, payload, options, Reply::Call(tx)) => submitted?,
            // Still queued for the driver: dropping the send withdraws it.
            () = &mut cancel => return Err(CallError::Withdrawn {
                may_have_executed: false,
            }),
        };
        self.await_reply(ticket, rx, cancel).await
    }

    /// Waits for the outcome of submission `ticket`. If `cancel` completes
    /// first, the call is withdrawn and this keeps waiting for its settled
    /// outcome; if this future is dropped, the call is withdrawn.
    pub(crate) async fn await_reply<T>(
        &self,
        ticket: u64,
        mut rx: oneshot::Receiver<Result<T, CallError>>,
        cancel: impl Future<Output = ()>,
    ) -> Result<T, CallError> {
        let mut guard = AbandonOnDrop::new(self, ticket);
        let result = tokio::select! {
            biased;
            r = &mut rx => r,
            () = cancel => {
                guard.fire();
                rx.await
            }
        };
        guard.disarm();
        result.map_err(|_| CallError::Stopped)?
    }
}
