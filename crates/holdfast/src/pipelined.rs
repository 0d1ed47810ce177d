//! Pipelined one-way sends: [`Initiator::send_queued`] queues a message in
//! order and returns at once with a [`SendHandle`], which the caller may
//! await for the delivery or drop.
//!
//! Messages queued one after another (from one task, or ordered by the
//! caller) take consecutive places in the session's order: the driver takes
//! requests from one FIFO queue and numbers them as it takes them, so
//! their sequence numbers, and the order the target's service receives them
//! in, are the order of the `send_queued` calls. Unlike a call, dropping
//! the handle does not withdraw the message: a queued message is sent and
//! delivered exactly once (unless the session is lost).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use holdfast_proto::CallOptions;
use tokio::sync::oneshot;

use crate::error::CallError;
use crate::initiator::{Initiator, Reply};

/// The delivery of a message queued with [`Initiator::send_queued`]: a
/// future that resolves once the target's service has accepted the message
/// (`Ok`, exactly once), or with the error that failed it (the error says
/// whether it may have executed, as for a call).
///
/// Dropping it does **not** withdraw the message: it is still sent and
/// delivered; only its outcome goes unheard.
#[derive(Debug)]
#[must_use = "a dropped SendHandle still delivers its message; await it to learn the outcome"]
pub struct SendHandle {
    rx: oneshot::Receiver<Result<(), CallError>>,
}

impl Future for SendHandle {
    type Output = Result<(), CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(CallError::Stopped)))
    }
}

impl Initiator {
    /// Queues a one-way message behind everything queued before it and
    /// returns without waiting for its delivery: await the [`SendHandle`]
    /// to learn it, or drop it (the message is delivered all the same).
    ///
    /// Order: messages (and calls) queued one after another reach the
    /// target's service in that order, exactly once, across connection
    /// losses and stateful recoveries.
    ///
    /// Back-pressure: the queue holds the credit window plus
    /// [`crate::InitiatorOptions::request_queue`] requests; when it is
    /// full, this waits (asynchronously) for room, so a fast sender is
    /// held to the target's pace. Cancelling this future while it waits
    /// for room leaves the message unqueued (it is never sent); once it has
    /// returned, the message is queued.
    ///
    /// Fails only if the initiator's driver has stopped.
    pub async fn send_queued(&self, payload: Bytes) -> Result<SendHandle, CallError> {
        self.send_queued_with(payload, CallOptions::default()).await
    }

    /// [`Initiator::send_queued`] with options. `retry_safe` works as for
    /// a call; a deadline is not applied (a queued message is never
    /// withdrawn: bound the wait on the handle instead, and know that the
    /// message may still be delivered).
    pub async fn send_queued_with(
        &self,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<SendHandle, CallError> {
        let (tx, rx) = oneshot::channel();
        let mut options = options;
        options.deadline = None;
        self.submit(false, payload, options, Reply::Send(tx))
            .await?;
        Ok(SendHandle { rx })
    }
}
