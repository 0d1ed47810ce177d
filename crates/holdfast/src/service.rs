//! What a target serves: a `tower::Service` over [`Request`]s.
//!
//! We chose `tower_service::Service` over a bespoke async trait because it is
//! the tokio ecosystem's common currency: timeouts, concurrency limits, load
//! shedding and tracing layers from `tower` wrap it unchanged, and a plain
//! closure becomes one with `tower::service_fn`. The trait crate itself has no
//! dependencies.
//!
//! # Guide for service authors
//!
//! A target calls [`SessionService`] (any `tower_service::Service<Request,
//! Response = Bytes>` that is `Clone + Send`, its error `Display`): build
//! one with [`service_fn`] or implement the trait; tower layers
//! (`Timeout`, `ConcurrencyLimit`, `RateLimit`) wrap it unchanged. The rule
//! that matters most follows: **ordered effects happen in `call`; futures
//! complete concurrently.**
//!
//! # Order
//!
//! The target invokes [`tower_service::Service::call`] once per command or
//! message, in session order. The futures `call` returns then run
//! concurrently. A service whose effects must follow session order does
//! its ordered part inside `call` itself (as a counter or an append-only
//! log would), or sequences its futures itself (as the block service does
//! for overlapping ranges); work done only inside the future may run out of
//! order with later requests.
//! The initiator receives responses in the order the futures complete,
//! not in command order; a one-way message counts as delivered once `call`
//! has taken it.
//!
//! # Readiness
//!
//! Each session calls its own clone of the service, so `poll_ready` is
//! per session: a session whose clone is not ready (a `ConcurrencyLimit`,
//! `RateLimit` or full `Buffer`) holds its own commands, in order, and
//! nobody else's, and the target goes on serving every other session. A
//! layer whose clones share their state (one `ConcurrencyLimit` semaphore)
//! limits every session together; make a fresh layer per clone for a limit
//! per session. A `poll_ready` error fails the command as not executed
//! (`CallError::NotStarted`): the service never sees it.

use bytes::Bytes;
use holdfast_proto::{Seq, SessionId};

/// A command or one-way message delivered to the service, in session order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The session it arrived in.
    pub session: SessionId,
    /// Its sequence number in the session.
    pub seq: Seq,
    /// The payload.
    pub payload: Bytes,
    /// True for a one-way message: the response is discarded.
    pub one_way: bool,
    /// The largest response payload this session's initiator accepts (its
    /// `max_frame` − 32). A larger response is not delivered: the target
    /// answers the command with a status response `ResponseTooLarge`
    /// instead, and the call fails at the initiator with
    /// `CallError::Failed` (it executed). A service that can shape its
    /// answer (a shorter read, an error of its own) should stay within it.
    pub max_response: usize,
    /// The command's start check (PROTOCOL.md §11.4); see [`Request::begin`].
    /// `StartGate::default()` always says yes.
    pub start: crate::StartGate,
}

impl Request {
    /// Call right before the command touches the backend, if the service
    /// may hold it back after `call` returned (a queue, a lock): `Err`
    /// means the node's quiesce promise or a fence forbids starting it
    /// now. Then do not touch the backend; the target answers the command
    /// with the status `NotExecuted` whatever the service returns. The
    /// runtime already checked once right before `call`; this is cheap
    /// (two atomic loads and a clock read).
    pub fn begin(&self) -> Result<(), holdfast_proto::NotStarted> {
        self.start.begin()
    }
}

/// The bound a target's service must satisfy. A service error travels: the
/// command is answered with the status response `ServiceFailed` whose text
/// is the error's `Display` (cut to 256 bytes), and the call fails at the
/// initiator with `CallError::ServiceFailed` (it executed). A response
/// larger than [`Request::max_response`] is answered with a status response
/// instead (the call fails at the initiator; the command ran).
///
/// `Clone` is required because each session calls its own clone (see
/// "Readiness" above): `poll_ready` is per session. A service whose state
/// must be shared between sessions keeps it behind an `Arc`.
pub trait SessionService:
    tower_service::Service<Request, Response = Bytes, Future = Self::Fut, Error = Self::Err>
    + Clone
    + Send
    + 'static
{
    /// The service's future.
    type Fut: std::future::Future<Output = Result<Bytes, Self::Err>> + Send + 'static;
    /// The service's error.
    type Err: std::fmt::Display + Send + 'static;
}

impl<S> SessionService for S
where
    S: tower_service::Service<Request, Response = Bytes> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
{
    type Fut = S::Future;
    type Err = S::Error;
}

/// A service made from a closure (like `tower::service_fn`, without the
/// dependency). The closure's future may fail with any error type that
/// implements `Display`: the caller gets [`crate::CallError::ServiceFailed`]
/// with its text.
#[derive(Clone, Debug)]
pub struct ServiceFn<F>(pub F);

impl<F, Fut, E> tower_service::Service<Request> for ServiceFn<F>
where
    F: FnMut(Request) -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, E>>,
{
    type Response = Bytes;
    type Error = E;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Fut {
        (self.0)(req)
    }
}

/// Wraps a closure as a service: `service_fn(|req: Request| async move {
/// Ok::<_, MyError>(reply) })`, where `MyError` is any `Display` type.
pub fn service_fn<F>(f: F) -> ServiceFn<F> {
    ServiceFn(f)
}
