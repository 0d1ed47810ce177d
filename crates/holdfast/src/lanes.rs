//! Per-session readiness: each session calls its own clone of the service,
//! and a session whose service is not ready waits on a task of its own, off
//! the engine's path.
//!
//! The engine never awaits `poll_ready`. It asks a session's clone once
//! (with a no-op waker): ready, and the command is called at once, as
//! before. Not ready, and the clone moves to a task that takes the
//! session's deliveries from then on, in order: it awaits readiness, checks
//! the command's start gate again (it may have waited past the quiesce
//! deadline), and calls. So one saturated session (tower's
//! `ConcurrencyLimit`, `RateLimit`, a `Buffer` that is full) holds its own
//! commands, which its credits already bound, and nobody else's; the engine
//! goes on answering PINGs, acknowledging and serving other sessions. A
//! limit shared by every clone (one `ConcurrencyLimit` semaphore) still
//! limits all sessions together, and they queue for it fairly.
//!
//! A message waiting in a session's task is not yet with the service, so
//! it must not be acknowledged (PROTOCOL.md §6.2): the engine holds the
//! session's messages back from `advance` (`Target::hold_messages`) and
//! releases them when the task reports that it has handed over everything
//! it was given (`Target::release_messages`).
//!
//! A `poll_ready` error fails the command cleanly: it is answered with the
//! status `NotExecuted` (the service never saw it) instead of being called
//! anyway. A one-way message that meets one is dropped (it was already
//! acknowledged) and logged.

use std::collections::HashMap;
use std::task::{Context, Poll, Waker};

use holdfast_proto::SessionId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::service::{Request, SessionService};
use crate::service_call::{self, Finished, Outcome};
use crate::target::EngineMsg;

/// Every session's lane to the service.
pub(crate) struct Lanes<S> {
    /// The service every session's clone is made from.
    service: S,
    lanes: HashMap<SessionId, Lane<S>>,
    /// Sessions whose messages went to a lane task since the last call to
    /// `take_held`.
    held: Vec<SessionId>,
}

enum Lane<S> {
    /// The engine calls the session's clone directly.
    Inline(S),
    /// The clone was not ready once: a task owns it and takes the
    /// session's deliveries, in order, until the session ends.
    Queued {
        queue: mpsc::UnboundedSender<Request>,
        /// Requests sent to the task so far.
        sent: u64,
    },
}

impl<S: SessionService> Lanes<S> {
    pub(crate) fn new(service: S) -> Self {
        Lanes {
            service,
            lanes: HashMap::new(),
            held: Vec::new(),
        }
    }

    /// Hands `request` to its session's clone of the service, in session
    /// order. Returns the outcome of a command answered at once.
    pub(crate) fn dispatch(
        &mut self,
        request: Request,
        tx: &mpsc::Sender<EngineMsg>,
    ) -> Option<Finished> {
        let session = request.session;
        let lane = self
            .lanes
            .entry(session)
            .or_insert_with(|| Lane::Inline(self.service.clone()));
        let service = match lane {
            Lane::Queued { queue, sent } => {
                let one_way = request.one_way;
                if let Err(mpsc::error::SendError(request)) = queue.send(request) {
                    // The lane's task ended (its service panicked): the
                    // command cannot be handed over.
                    return unready(request, "the session's service task ended");
                }
                *sent += 1;
                if one_way {
                    self.held.push(session);
                }
                return None;
            }
            Lane::Inline(service) => service,
        };
        let mut cx = Context::from_waker(Waker::noop());
        match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => service_call::call(service, request, tx),
            Poll::Ready(Err(e)) => unready(request, &e.to_string()),
            Poll::Pending => {
                debug!(%session, "the service is not ready: the session's commands wait on its own task");
                let (queue, rx) = mpsc::unbounded_channel();
                let queued = Lane::Queued { queue, sent: 1 };
                let Lane::Inline(service) = std::mem::replace(lane, queued) else {
                    unreachable!("matched Inline above")
                };
                if request.one_way {
                    self.held.push(session);
                }
                tokio::spawn(run_lane(service, request, rx, tx.clone()));
                None
            }
        }
    }

    /// Sessions whose messages wait in a lane task (to hold back from
    /// `advance`), since the last call.
    pub(crate) fn take_held(&mut self) -> std::vec::Drain<'_, SessionId> {
        self.held.drain(..)
    }

    /// True when `session`'s lane task has handed over all `taken`
    /// requests it was sent: its messages are with the service.
    pub(crate) fn drained(&self, session: SessionId, taken: u64) -> bool {
        match self.lanes.get(&session) {
            Some(Lane::Queued { sent, .. }) => *sent == taken,
            _ => true,
        }
    }

    /// Forgets an ended session's lane (its task, if any, ends once it has
    /// handed over what it holds).
    pub(crate) fn end(&mut self, session: SessionId) {
        self.lanes.remove(&session);
    }
}

/// A command whose service failed its readiness check: answered
/// `NotExecuted`. A message is dropped.
fn unready(request: Request, error: &str) -> Option<Finished> {
    let (session, seq) = (request.session, request.seq);
    if request.one_way {
        warn!(%session, seq, error, "the service was not ready: one-way message dropped");
        return None;
    }
    warn!(%session, seq, error, "the service was not ready: command answered NotExecuted");
    Some((session, seq, Outcome::NotReady(error.to_owned())))
}

/// A session's lane task: readiness, the start check, then `call`, one
/// request at a time in session order.
async fn run_lane<S: SessionService>(
    mut service: S,
    first: Request,
    mut rx: mpsc::UnboundedReceiver<Request>,
    tx: mpsc::Sender<EngineMsg>,
) {
    let session = first.session;
    let mut next = Some(first);
    let mut taken = 0u64;
    while let Some(request) = match next.take() {
        Some(r) => Some(r),
        None => rx.recv().await,
    } {
        let finished = match std::future::poll_fn(|cx| service.poll_ready(cx)).await {
            Err(e) => unready(request, &e.to_string()),
            Ok(()) => match request.start.begin() {
                Err(why) if !request.one_way => {
                    Some((request.session, request.seq, Outcome::Refused(why)))
                }
                _ => service_call::call(&mut service, request, &tx),
            },
        };
        taken += 1;
        if let Some((session, seq, outcome)) = finished {
            if tx
                .send(EngineMsg::Done(session, seq, outcome))
                .await
                .is_err()
            {
                return;
            }
        }
        if rx.is_empty()
            && tx
                .send(EngineMsg::LaneDrained(session, taken))
                .await
                .is_err()
        {
            return;
        }
    }
}
