//! Calling the target's service for one delivery, and turning what its
//! future resolves to into the command's outcome: the service's response,
//! its error (answered with the status response `ServiceFailed`, PROTOCOL.md
//! §6.7, so the caller learns the command executed and failed), or the
//! service's own start check refusing it (`NotExecuted`).

use bytes::Bytes;
use holdfast_proto::{NotStarted, Seq, SessionId};
use tokio::sync::mpsc;
use tracing::warn;

use crate::service::{Request, SessionService};
use crate::target::EngineMsg;

/// How a command ended in the service.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The service answered.
    Response(Bytes),
    /// The service ran it and reported this error (its description).
    Failed(String),
    /// It was not started: the start check said no (`NotExecuted`).
    Refused(NotStarted),
    /// It was not handed to the service: its readiness check failed with
    /// this error (`NotExecuted`).
    NotReady(String),
}

impl Outcome {
    fn of<E: std::fmt::Display>(
        result: Result<Bytes, E>,
        start: &crate::StartGate,
        session: SessionId,
        seq: Seq,
    ) -> Outcome {
        if let Some(why) = start.refused() {
            return Outcome::Refused(why);
        }
        match result {
            Ok(r) => Outcome::Response(r),
            Err(e) => {
                let text = e.to_string();
                warn!(%session, seq, error = %text, "the service failed the command: answered ServiceFailed");
                Outcome::Failed(text)
            }
        }
    }
}

/// A command the service answered at once.
pub(crate) type Finished = (SessionId, Seq, Outcome);

/// Calls `service` (which must be ready) with `request`. A future that is
/// ready at once is answered here (returned for completion, `None` for a
/// one-way message); one that is not runs concurrently on its own task and
/// its outcome comes back through the engine's channel.
pub(crate) fn call<S: SessionService>(
    service: &mut S,
    request: Request,
    tx: &mpsc::Sender<EngineMsg>,
) -> Option<Finished> {
    let (session, seq, one_way) = (request.session, request.seq, request.one_way);
    let start = request.start.clone();
    let mut fut = Box::pin(service.call(request));
    // One poll with a no-op waker: most services answer at once. A
    // future that is pending is spawned and polled again with a real
    // waker, as the future contract requires.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if let std::task::Poll::Ready(result) = std::future::Future::poll(fut.as_mut(), &mut cx) {
        let outcome = Outcome::of(result, &start, session, seq);
        return (!one_way).then_some((session, seq, outcome));
    }
    let tx = tx.clone();
    tokio::spawn(async move {
        // If the future panics, the command still completes (answered
        // `ServiceFailed`): a command that never completes would keep its
        // session from ever ending (§11.1).
        let mut guard = CompleteOnDrop {
            tx: (!one_way).then(|| tx.clone()),
            session,
            seq,
        };
        let result = fut.await;
        guard.tx = None;
        if !one_way {
            let outcome = Outcome::of(result, &start, session, seq);
            let _ = tx.send(EngineMsg::Done(session, seq, outcome)).await;
        }
    });
    None
}

/// Completes a command whose service future ended without an answer (it
/// panicked, or the runtime dropped it), so its session can end.
struct CompleteOnDrop {
    tx: Option<mpsc::Sender<EngineMsg>>,
    session: SessionId,
    seq: Seq,
}

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let (session, seq) = (self.session, self.seq);
        tracing::error!(%session, seq, "the service's future ended without an answer (it panicked?); answering ServiceFailed");
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let text = "the service ended without an answer (it panicked or was dropped); \
                            the command may have had some of its effects";
                let outcome = Outcome::Failed(text.to_owned());
                let _ = tx.send(EngineMsg::Done(session, seq, outcome)).await;
            });
        }
    }
}
