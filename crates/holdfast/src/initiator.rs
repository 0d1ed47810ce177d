//! The initiator runtime: a cheap, cloneable [`Initiator`] handle and one
//! driver task that owns the sans-IO core, the current connection, timers and
//! reconnection.
//!
//! # Guide for callers
//!
//! * **Start** with [`Initiator::connect`] (an [`crate::Endpoint`], default
//!   options) or [`Initiator::builder`]; both return at once, inside a tokio
//!   runtime, and the first call waits for the login. Clone the handle
//!   into every task that issues calls: all clones share one session.
//! * **Exactly once, in order.** Each [`Initiator::call`] reaches the
//!   target's service exactly once however often the connection breaks,
//!   and commands reach it in the order they were issued (calls from one
//!   task awaited one after the other are in that task's order).
//!   **Responses arrive in completion order**, not issue order: the
//!   service's futures complete concurrently, so with several calls in
//!   flight a later call may finish first.
//! * **Outcomes.** A failed call says whether it may have executed:
//!   [`crate::CallError::may_have_executed`],
//!   [`crate::CallError::not_executed`] and [`crate::CallError::is_settled`].
//!   A command the service ran and failed comes back as
//!   [`crate::CallError::ServiceFailed`], never as an empty success.
//! * **`retry_safe` and its cost.** When the target loses the session (it
//!   restarted), calls not yet sent cannot be known to be new to the new
//!   session's service, so by default they fail
//!   [`crate::CallError::NotExecuted`] and the caller decides; calls sent
//!   and unanswered fail [`crate::CallError::MayHaveExecuted`]. Set
//!   [`crate::CallOptions::retry_safe`] on idempotent commands (reads,
//!   absolute writes) and the initiator re-issues them in the new session
//!   instead, in order: they may then run twice. Not setting it costs
//!   those failures after a restart, never a duplicate.
//! * **Cancellation.** Dropping a call's future withdraws it if it was not
//!   yet sent (it then never executes); once sent, it may still execute,
//!   and dropping loses its outcome. To cancel and still learn the fate,
//!   use [`Initiator::call_cancellable`].
//! * **Closing.** [`Initiator::close`] waits for everything outstanding and
//!   ends the session with the target (FIN); calls after it fail
//!   [`crate::CallError::Closed`]. Dropping the last handle aborts the
//!   session instead.
//!
//! Backpressure: requests travel over a bounded channel, and the driver only
//! takes the next one when the core has credit for it, so callers wait
//! instead of filling an unbounded queue.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use holdfast_proto::{
    CallId, CallOptions, ConnId, InitiatorConfig, InitiatorEvent, InitiatorStats, SessionLoss,
    SubmitError,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

#[path = "initiator_multi.rs"]
mod multi;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::error::{CallError, LinkError};
use crate::links::{LinkInput, Links};
use crate::outbox::Outbox;
use crate::target::sleep_until;
use crate::transport::{BoxStream, Connector};

/// A connection must carry a response (or a delivery), or last this long
/// after its login, for the reconnect backoff to start over (the next
/// reconnect after its loss is then immediate). One that dies sooner with
/// nothing done (a path that drops every connection right after login)
/// keeps the backoff growing instead of reconnecting in a storm.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// Initiator settings: the protocol's plus the runtime's.
///
/// `#[non_exhaustive]`, so fields can be added without breaking callers:
/// start from `InitiatorOptions::default()` (or [`Initiator::builder`]) and
/// set the fields or use the `with_*` methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InitiatorOptions {
    /// Protocol settings (credits, detection bound, session-loss timeout,
    /// and the connections per session with their spread policy,
    /// `protocol.connections` and `protocol.spread`: see
    /// [`InitiatorOptions::with_connections`]).
    pub protocol: InitiatorConfig,
    /// First backoff step after the immediate retry.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// How long a transport connect may take.
    pub connect_timeout: Duration,
    /// Read buffer size.
    pub read_buffer: usize,
    /// Seed for the backoff jitter; `None` draws one from the operating
    /// system. Set it for runs that must repeat exactly (simulations).
    pub jitter_seed: Option<u64>,
    /// The deadline of every call and awaited `send` whose
    /// [`CallOptions::deadline`] is `None` (`None` here too: no deadline;
    /// the only limit is the session-loss timeout). See
    /// [`Initiator::call_with`].
    pub call_deadline: Option<Duration>,
    /// Requests that may wait for credit beyond the credit window: the
    /// queue between the handles and the session holds
    /// `protocol.credits + request_queue` calls and messages; a call or
    /// [`Initiator::send_queued`] that finds it full waits (asynchronously)
    /// for room.
    pub request_queue: usize,
}

impl Default for InitiatorOptions {
    fn default() -> Self {
        InitiatorOptions {
            protocol: InitiatorConfig::default(),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            read_buffer: 64 * 1024,
            jitter_seed: None,
            call_deadline: None,
            request_queue: 0,
        }
    }
}

impl InitiatorOptions {
    /// Uses `connections` connections per session (PROTOCOL.md §17), with
    /// commands spread over them by `spread`. With more than one, the first
    /// logs in, the others join; a lost one moves its unanswered commands
    /// to the survivors at once and is re-joined in the background. Give
    /// the initiator a connector that reaches the target's addresses (for
    /// several, a [`crate::RoundRobinConnector`]).
    pub fn with_connections(mut self, connections: u32, spread: holdfast_proto::Spread) -> Self {
        self.protocol.connections = connections.max(1);
        self.protocol.spread = spread;
        self
    }
}

pub(crate) enum Reply {
    Call(oneshot::Sender<Result<Bytes, CallError>>),
    Send(oneshot::Sender<Result<(), CallError>>),
}

impl Reply {
    /// Delivers a failure to whoever waits.
    fn fail(self, e: CallError) {
        match self {
            Reply::Call(tx) => drop(tx.send(Err(e))),
            Reply::Send(tx) => drop(tx.send(Err(e))),
        }
    }
}

/// The abandon-channel ticket that aborts the session ([`Initiator::abort`]);
/// real tickets count up from 1 and never reach it.
const ABORT_TICKET: u64 = u64::MAX;

/// How many early abandon notices the driver remembers (see `Driver::abandon`).
const EARLY_ABANDONS_MAX: usize = 4096;

pub(crate) enum ApiRequest {
    Submit {
        /// The handle's number for this submission (see [`AbandonOnDrop`]).
        ticket: u64,
        command: bool,
        payload: Bytes,
        options: CallOptions,
        reply: Reply,
    },
    Close(oneshot::Sender<Result<(), SessionLoss>>),
    Stats(oneshot::Sender<InitiatorStats>),
}

/// A handle to one resilient session. Clone it freely; all clones share the
/// session. Dropping the last clone aborts the session.
#[derive(Clone)]
pub struct Initiator {
    pub(crate) requests: mpsc::Sender<ApiRequest>,
    /// Tickets of submissions whose caller stopped waiting.
    /// Tickets of submissions whose caller stopped waiting, and, if it was
    /// their deadline, where to say that the driver has acted (a call the
    /// target may have then fails at once instead of waiting).
    pub(crate) abandons: mpsc::UnboundedSender<(u64, Option<oneshot::Sender<()>>)>,
    /// The deadline of calls whose options set none
    /// ([`InitiatorOptions::call_deadline`]).
    pub(crate) default_deadline: Option<Duration>,
    /// Where the driver publishes [`crate::SessionEvent`]s.
    pub(crate) events: tokio::sync::broadcast::Sender<crate::SessionEvent>,
    /// Logins accepted so far (see [`Initiator::wait_connected`]).
    pub(crate) logins: tokio::sync::watch::Receiver<u64>,
    pub(crate) next_ticket: Arc<AtomicU64>,
    /// How the session ended, once it has (see [`Initiator::ended`]).
    pub(crate) outcome: tokio::sync::watch::Receiver<Option<Result<(), SessionLoss>>>,
    /// What the driver publishes about the path (see `crate::fence`).
    pub(crate) path: Arc<crate::fence::PathShared>,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator").finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a session to the target `connector` reaches. Returns at once;
    /// the first call waits for the login. [`Initiator::connect`] and
    /// [`Initiator::builder`] are the short ways for an [`crate::Endpoint`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the session runs on a task of its own.
    /// Call it from within `#[tokio::main]`, a task, or
    /// `Runtime::enter`.
    pub fn start(connector: Arc<dyn Connector>, options: InitiatorOptions) -> Initiator {
        if tokio::runtime::Handle::try_current().is_err() {
            panic!(
                "holdfast::Initiator::start was called outside a tokio runtime: the session \
                 runs on a tokio task, so call it from within #[tokio::main], a spawned task, \
                 or Runtime::enter"
            );
        }
        let capacity = (options.protocol.credits as usize)
            .max(1)
            .saturating_add(options.request_queue);
        let (tx, rx) = mpsc::channel(capacity);
        let (abandon_tx, abandon_rx) = mpsc::unbounded_channel();
        let clock = Clock::new();
        let seed = options
            .jitter_seed
            .unwrap_or_else(|| getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15));
        let (outcome_tx, outcome) = tokio::sync::watch::channel(None);
        let (path, path_rx) = crate::fence::PathShared::new(clock, options.protocol.epoch);
        let (events, _) = tokio::sync::broadcast::channel(crate::events::EVENTS_BUFFER);
        let (logins_tx, logins) = tokio::sync::watch::channel(0);
        let default_deadline = options.call_deadline;
        let driver = Driver {
            path: crate::fence::DriverPath::default(),
            shared_path: path.clone(),
            core: holdfast_proto::Initiator::new(options.protocol.clone(), clock.now()),
            backoff: Backoff::new(options.backoff_initial, options.backoff_max, seed),
            options,
            clock,
            connector,
            conn: None,
            outbox: None,
            chunks: Vec::new(),
            next_conn: 1,
            replies: HashMap::new(),
            early_abandons: HashSet::new(),
            waiting: None,
            close_waiters: Vec::new(),
            outcome: outcome_tx,
            reconnect_at: None,
            ended: None,
            closed_here: false,
            no_session_since: None,
            last_error: LinkError::NotTried,
            recovery: crate::telemetry::RecoveryTimer::default(),
            connected_at: None,
            connecting: None,
            links: Links::new(),
            join_at: None,
            events: events.clone(),
            logins: logins_tx,
        };
        let span = tracing::info_span!("initiator", session = tracing::field::Empty);
        tokio::spawn(driver.run(rx, abandon_rx, path_rx).instrument(span));
        Initiator {
            requests: tx,
            abandons: abandon_tx,
            default_deadline,
            events,
            logins,
            next_ticket: Arc::new(AtomicU64::new(1)),
            outcome,
            path,
        }
    }

    /// Issues a command and waits for its response (exactly once).
    ///
    /// Cancellation: dropping this future before it finishes withdraws the
    /// call, but once it has been polled the call may already be on its way:
    /// **a dropped call may still execute** (see [`Initiator::call_with`]).
    /// To bound the wait and learn the call's fate, set a deadline
    /// ([`CallOptions::deadline`], [`InitiatorOptions::call_deadline`]) or
    /// use [`Initiator::call_cancellable`].
    pub async fn call(&self, payload: Bytes) -> Result<Bytes, CallError> {
        self.call_with(payload, CallOptions::default()).await
    }

    /// Issues a command with options (retry-safe, a deadline).
    ///
    /// **Deadline**: when [`CallOptions::deadline`] (or else
    /// [`InitiatorOptions::call_deadline`]) passes before the outcome, the
    /// call is withdrawn and fails with [`CallError::DeadlineExceeded`]:
    /// not yet sent (still queued, or waiting for credit or a connection),
    /// it never executes and is never re-issued (settled); already sent, it
    /// **may have executed**, and it may still (the target runs what it
    /// received; the call is never re-issued in a new session).
    ///
    /// **Cancellation**: dropping the future before it finishes withdraws
    /// the call the same way ([`holdfast_proto::Initiator::abandon`]), but
    /// nobody is told the outcome: a call dropped after its first poll may
    /// have been sent, and then **it may still execute**. To learn its
    /// fate, use a deadline (the error says whether it may have executed)
    /// or [`Initiator::call_cancellable`] (waits for the settled outcome)
    /// instead of dropping the future.
    pub async fn call_with(
        &self,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, CallError> {
        if let Some(deadline) = options.deadline.or(self.default_deadline) {
            return self
                .until_deadline(true, payload, options, deadline, Reply::Call)
                .await;
        }
        let (tx, rx) = oneshot::channel();
        let ticket = self.submit(true, payload, options, Reply::Call(tx)).await?;
        self.await_reply(ticket, rx, std::future::pending()).await
    }

    /// Sends a one-way message and waits until it is delivered: the
    /// target's service has accepted it (PROTOCOL.md §6.2).
    pub async fn send(&self, payload: Bytes) -> Result<(), CallError> {
        self.send_with(payload, CallOptions::default()).await
    }

    /// Sends a one-way message with options, and waits until it is
    /// delivered. A deadline and cancellation work as for
    /// [`Initiator::call_with`]. Each message waits for its acknowledgement
    /// here: to send many in order without waiting, use
    /// [`Initiator::send_queued`].
    pub async fn send_with(&self, payload: Bytes, options: CallOptions) -> Result<(), CallError> {
        if let Some(deadline) = options.deadline.or(self.default_deadline) {
            return self
                .until_deadline(false, payload, options, deadline, Reply::Send)
                .await;
        }
        let (tx, rx) = oneshot::channel();
        let ticket = self
            .submit(false, payload, options, Reply::Send(tx))
            .await?;
        self.await_reply(ticket, rx, std::future::pending()).await
    }

    /// Hands a submission to the driver; returns its ticket.
    pub(crate) async fn submit(
        &self,
        command: bool,
        payload: Bytes,
        options: CallOptions,
        reply: Reply,
    ) -> Result<u64, CallError> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        self.requests
            .send(ApiRequest::Submit {
                ticket,
                command,
                payload,
                options,
                reply,
            })
            .await
            .map_err(|_| CallError::Stopped)?;
        Ok(ticket)
    }

    /// Closes the session cleanly: waits for everything outstanding, then
    /// exchanges FIN with the target.
    pub async fn close(&self) -> Result<(), SessionLoss> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(ApiRequest::Close(tx)).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Waits until the session is over, without affecting it: `Ok` after a
    /// clean close, the loss otherwise (e.g. [`SessionLoss::GaveUp`] after
    /// the session-loss timeout, or the target announcing it will not
    /// return). Every call made after that fails; a caller that serves
    /// others on top of this session (an NBD export) can stop instead of
    /// failing requests forever.
    pub async fn ended(&self) -> Result<(), SessionLoss> {
        let mut outcome = self.outcome.clone();
        let seen = match outcome.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            // The driver stopped without saying (it panicked).
            Err(_) => None,
        };
        seen.unwrap_or(Err(SessionLoss::Aborted))
    }

    /// Abandons the session at once: every outstanding call fails (those
    /// sent "may have executed", the others "not executed"), the connection
    /// is dropped, and nothing more is ever sent on this session. Returns
    /// once the driver has done so. A path group uses it to stop talking to
    /// a node it fails over from, so its last contact with it is final.
    pub async fn abort(&self) {
        // On the abandon channel: the driver reads it even while a request
        // waits for credit (and so takes no requests).
        if self.abandons.send((ABORT_TICKET, None)).is_ok() {
            let _ = self.ended().await;
        }
    }

    /// The core's counters.
    pub async fn stats(&self) -> Option<InitiatorStats> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(ApiRequest::Stats(tx)).await.ok()?;
        rx.await.ok()
    }
}

struct Connection {
    id: ConnId,
    reader: crate::transport::ReadHalf,
}

pub(crate) struct Driver {
    pub(crate) core: holdfast_proto::Initiator,
    options: InitiatorOptions,
    pub(crate) clock: Clock,
    connector: Arc<dyn Connector>,
    backoff: Backoff,
    conn: Option<Connection>,
    /// The current connection's write side (a separate field, so a read and
    /// a write can wait at once).
    outbox: Option<Outbox>,
    /// The core's bytes on their way to the outbox; drained after each
    /// use, so its capacity is reused instead of a list allocated per write.
    chunks: Vec<Bytes>,
    next_conn: u64,
    /// Where each outstanding call's outcome goes, and its ticket.
    replies: HashMap<CallId, (Reply, u64)>,
    /// Tickets abandoned before their submission reached the driver (the
    /// two travel on different channels); bounded, see `abandon`.
    early_abandons: HashSet<u64>,
    /// A request refused for credit, retried on `CreditAvailable`.
    waiting: Option<ApiRequest>,
    close_waiters: Vec<oneshot::Sender<Result<(), SessionLoss>>>,
    /// Tells [`Initiator::ended`] how the session ended.
    outcome: tokio::sync::watch::Sender<Option<Result<(), SessionLoss>>>,
    pub(crate) reconnect_at: Option<tokio::time::Instant>,
    ended: Option<SessionLoss>,
    /// True once this side closed the session cleanly (`close()`): later
    /// requests fail [`CallError::Closed`].
    closed_here: bool,
    /// Since when there has been no session (none yet, or replaced).
    no_session_since: Option<tokio::time::Instant>,
    /// The last connect or login failure, for error messages.
    last_error: LinkError,
    /// Times recoveries for the metrics.
    recovery: crate::telemetry::RecoveryTimer,
    /// When the current connection's login was accepted, and whether a
    /// response or delivery came on it since: the backoff starts over only
    /// after a connection that did some work or lasted [`STABLE_CONNECTION`].
    connected_at: Option<(tokio::time::Instant, bool)>,
    /// A connection attempt in progress.
    connecting: Option<Connecting>,
    /// With several connections per session (`protocol.connections` > 1):
    /// all of them (`conn` and `outbox` stay empty).
    links: Links,
    /// With several connections: when to join the next missing one.
    join_at: Option<tokio::time::Instant>,
    /// Fences waiting for their answer.
    pub(crate) path: crate::fence::DriverPath,
    /// What the handles read about the path.
    pub(crate) shared_path: Arc<crate::fence::PathShared>,
    /// Where [`crate::SessionEvent`]s go.
    pub(crate) events: tokio::sync::broadcast::Sender<crate::SessionEvent>,
    /// Counts accepted logins for [`Initiator::wait_connected`].
    pub(crate) logins: tokio::sync::watch::Sender<u64>,
}

impl Driver {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<ApiRequest>,
        mut abandons: mpsc::UnboundedReceiver<(u64, Option<oneshot::Sender<()>>)>,
        mut paths: mpsc::UnboundedReceiver<crate::fence::PathRequest>,
    ) {
        let mut buf = BytesMut::with_capacity(self.options.read_buffer);
        self.reconnect_at = Some(tokio::time::Instant::now());
        loop {
            if self.core.is_finished() && self.close_waiters.is_empty() && self.ended.is_some() {
                // Keep answering requests with the loss until every handle is gone.
                tokio::select! {
                    r = requests.recv() => match r {
                        Some(r) => self.refuse(r),
                        None => return,
                    },
                    Some(p) = paths.recv() => self.path_refuse(p),
                }
                continue;
            }
            if self.multi() {
                self.start_multi_if_due();
            } else if self.conn.is_none() && self.connecting.is_none() {
                self.start_connect_if_due();
            }
            let timer = self.core.poll_timeout().map(|t| self.clock.instant(t));
            let reconnect = if self.multi() {
                self.next_multi_attempt()
            } else {
                (self.conn.is_none() && self.connecting.is_none())
                    .then_some(self.reconnect_at)
                    .flatten()
            };
            let give_up = self.refuse_waiting_if_unreachable();
            let wake = [timer, reconnect, give_up].into_iter().flatten().min();
            let accept_requests = self.waiting.is_none();
            buf.reserve(self.options.read_buffer);
            // Biased, so that a seeded simulation replays exactly (an
            // unbiased select draws from tokio's own OS-seeded generator).
            // Timers first: a busy connection cannot postpone detection.
            tokio::select! {
                biased;
                () = sleep_until(wake) => {
                    let now = self.clock.now();
                    self.core.handle_timeout(now);
                }
                attempt = await_connect(&mut self.connecting) => {
                    self.connecting = None;
                    self.connect_finished(attempt);
                }
                n = read_some(&mut self.conn, &mut buf) => {
                    let now = self.clock.now();
                    if let Some(c) = &self.conn {
                        let id = c.id;
                        match n {
                            Ok(0) | Err(_) => self.core.connection_lost(id, now),
                            Ok(_) => {
                                let data = buf.split();
                                self.core.handle_input(id, &data, now);
                            }
                        }
                    }
                },
                input = self.links.next(), if !self.links.is_empty() => {
                    let now = self.clock.now();
                    match input {
                        LinkInput::Data(id, data) => self.core.handle_input(id, &data, now),
                        LinkInput::Closed(id) => self.core.connection_lost(id, now),
                    }
                },
                Some((ticket, deadline)) = abandons.recv() => self.abandon(ticket, deadline.is_some()),
                // Fences and epochs bypass the credit gate on `requests`.
                Some(p) = paths.recv() => self.path_request(p),
                r = requests.recv(), if accept_requests => match r {
                    Some(r) => self.request(r),
                    None => {
                        self.core.abort(self.clock.now());
                        self.flush();
                        self.release_connection();
                        return;
                    }
                },
                written = drain(&mut self.outbox), if self.outbox.as_ref().is_some_and(Outbox::has_pending) => {
                    if written.is_err() {
                        self.write_failed();
                    }
                },
            }
            // Take the calls already queued before producing output: one
            // write for a burst instead of one per call. Bounded, so a flood
            // of calls cannot postpone timers or reads for long.
            for _ in 0..256 {
                if self.waiting.is_some() {
                    break;
                }
                match requests.try_recv() {
                    Ok(r) => self.request(r),
                    Err(_) => break,
                }
            }
            self.flush();
            self.publish_path();
        }
    }

    /// A request waits for credit, and there has been no session for the
    /// whole session-loss timeout: refuse it (it was never sent). Returns when
    /// to check again otherwise.
    fn refuse_waiting_if_unreachable(&mut self) -> Option<tokio::time::Instant> {
        if self.core.session().is_some() {
            self.no_session_since = None;
            return None;
        }
        // Only read the clock without a session: this runs every loop turn.
        let now = tokio::time::Instant::now();
        let since = *self.no_session_since.get_or_insert(now);
        let limit = self.options.protocol.session_loss_timeout?;
        self.waiting.as_ref()?;
        if now < since + limit {
            return Some(since + limit);
        }
        if let Some(ApiRequest::Submit { reply, .. }) = self.waiting.take() {
            let e = CallError::Unreachable {
                waited: now - since,
                last_error: self.last_error.clone(),
            };
            reply.fail(e)
        }
        None
    }

    fn refuse(&mut self, r: ApiRequest) {
        let loss = self.ended.clone().unwrap_or(SessionLoss::Aborted);
        match r {
            ApiRequest::Submit { reply, .. } => {
                let e = if self.closed_here {
                    CallError::Closed
                } else {
                    CallError::Refused(SubmitError::Ended(loss))
                };
                reply.fail(e)
            }
            ApiRequest::Close(tx) => drop(tx.send(Err(loss))),
            ApiRequest::Stats(tx) => drop(tx.send(self.core.stats().clone())),
        }
    }

    fn request(&mut self, r: ApiRequest) {
        let now = self.clock.now();
        match r {
            ApiRequest::Submit {
                ticket,
                command,
                payload,
                options,
                reply,
            } => {
                if self.early_abandons.remove(&ticket) {
                    reply.fail(CallError::Withdrawn {
                        may_have_executed: false,
                    });
                    return;
                }
                let result = if command {
                    self.core.call(payload.clone(), options, now)
                } else {
                    self.core.send(payload.clone(), options, now)
                };
                match result {
                    Ok(id) => {
                        debug!(?id, command, "submitted");
                        self.replies.insert(id, (reply, ticket));
                    }
                    Err(SubmitError::NoCredit) => {
                        debug!(command, "waiting for credit");
                        self.waiting = Some(ApiRequest::Submit {
                            ticket,
                            command,
                            payload,
                            options,
                            reply,
                        });
                    }
                    Err(SubmitError::Closing) => reply.fail(CallError::Closed),
                    Err(e) => {
                        let e = CallError::Refused(e);
                        reply.fail(e)
                    }
                }
            }
            ApiRequest::Close(tx) => {
                self.core.close(now);
                if self.core.is_finished() {
                    let _ = tx.send(Ok(()));
                } else {
                    self.close_waiters.push(tx);
                }
            }
            ApiRequest::Stats(tx) => {
                let _ = tx.send(self.core.stats().clone());
            }
        }
    }

    /// Starts a connection attempt if one is due. The attempt runs inside
    /// the driver's select, so calls, `stats()`, `close()` and timers are
    /// served while it is pending.
    fn start_connect_if_due(&mut self) {
        let Some(at) = self.reconnect_at else {
            return;
        };
        let not_before = self.clock.instant(self.core.reconnect_at());
        let at = at.max(not_before);
        if tokio::time::Instant::now() < at {
            self.reconnect_at = Some(at);
            return;
        }
        self.reconnect_at = None;
        let connector = self.connector.clone();
        let limit = self.options.connect_timeout;
        self.connecting = Some(Box::pin(async move {
            tokio::time::timeout(limit, connector.connect()).await
        }));
    }

    /// Acts on a finished connection attempt.
    fn connect_finished(&mut self, attempt: ConnectAttempt) {
        let now = self.clock.now();
        match attempt {
            Ok(Ok(stream)) if self.multi() => self.multi_connected(stream, now),
            Ok(Ok(stream)) => {
                let id = ConnId(self.next_conn);
                self.next_conn += 1;
                if self.core.connect(id, now).is_err() {
                    self.reconnect_at = None;
                    return;
                }
                let (reader, writer) = crate::transport::split(stream);
                self.release_connection();
                self.outbox = Some(Outbox::new(writer));
                self.conn = Some(Connection { id, reader });
                self.reconnect_at = None;
                debug!(?id, "connected");
            }
            Ok(Err(e)) => {
                let delay = self.backoff.next_delay();
                debug!(error = %e, ?delay, "connect failed");
                self.last_error = LinkError::Connect(Arc::new(e));
                self.reconnect_at =
                    Some(tokio::time::Instant::now() + delay.max(Duration::from_millis(1)));
            }
            Err(_) => {
                let delay = self.backoff.next_delay();
                debug!(?delay, "connect timed out");
                self.last_error = LinkError::ConnectTimeout(self.options.connect_timeout);
                self.reconnect_at = Some(tokio::time::Instant::now() + delay);
            }
        }
        self.flush();
    }

    /// Writes what the core wants written and acts on its events, until
    /// neither is left: acting on an event (a waiting request submitted on
    /// `Connected`, say) can produce more to write.
    fn flush(&mut self) {
        loop {
            let now = self.clock.now();
            let mut progressed = self.flush_links(now);
            while self.core.poll_transmit_into(now, &mut self.chunks) {
                progressed = true;
                match &mut self.outbox {
                    Some(out) => out.push(self.chunks.drain(..)),
                    None => self.chunks.clear(),
                }
            }
            // One write for everything this turn produced.
            if let Some(out) = &mut self.outbox {
                if out.has_pending() && out.write_now().is_err() {
                    self.write_failed();
                    progressed = true;
                }
            }
            while let Some(event) = self.core.poll_event() {
                progressed = true;
                self.event(event);
            }
            if !progressed {
                return;
            }
        }
    }

    /// Lets the current connection go: what is queued for it is still
    /// written, then its write side is closed, in a task of its own.
    fn release_connection(&mut self) {
        let keep = self.core.connections();
        self.links.retain(&keep);
        self.conn = None;
        if let Some(out) = self.outbox.take() {
            out.finish();
        }
    }

    /// A write failed: the connection is broken.
    fn write_failed(&mut self) {
        if let Some(c) = &self.conn {
            let now = self.clock.now();
            self.core.connection_lost(c.id, now);
        }
        // Nothing more can be written to it.
        self.outbox = None;
    }

    /// Removes a finished call's reply channel.
    fn take_reply(&mut self, call: CallId) -> Option<Reply> {
        self.replies.remove(&call).map(|(reply, _)| reply)
    }

    /// Abandons the session: drops the connection first, unwritten bytes
    /// included, so not one more byte reaches the target; then every
    /// outstanding call fails.
    fn abort_now(&mut self) {
        self.conn = None;
        self.outbox = None;
        self.connecting = None;
        self.reconnect_at = None;
        let now = self.clock.now();
        self.core.abort(now);
        self.flush();
        if let Some(r) = self.waiting.take() {
            self.ended = Some(SessionLoss::Aborted);
            self.refuse(r);
        }
        if self.outcome.borrow().is_none() {
            self.outcome.send_replace(Some(Err(SessionLoss::Aborted)));
            let _ = self.events.send(crate::SessionEvent::Ended {
                result: Err(SessionLoss::Aborted),
            });
        }
    }

    /// The caller of submission `ticket` stopped waiting: withdraw it. If
    /// `deadline` (its deadline passed) and the target may have it, its
    /// caller learns so at once: "may have executed".
    fn abandon(&mut self, ticket: u64, deadline: bool) {
        if ticket == ABORT_TICKET {
            self.abort_now();
            return;
        }
        // Rare (a caller gave up), so a scan beats a second map kept on
        // every call.
        let call = self
            .replies
            .iter()
            .find_map(|(call, (_, t))| (*t == ticket).then_some(*call));
        if let Some(call) = call {
            debug!(?call, deadline, "withdrawing");
            self.core.abandon(call, self.clock.now());
            self.flush();
            if deadline {
                // Still outstanding: the target may have it. It stays in
                // the session (never re-issued) without a caller.
                if let Some(reply) = self.take_reply(call) {
                    reply.fail(CallError::DeadlineExceeded {
                        may_have_executed: true,
                        settled: false,
                    });
                }
            }
            return;
        }
        let waiting_ticket = match &self.waiting {
            Some(ApiRequest::Submit { ticket, .. }) => Some(*ticket),
            _ => None,
        };
        if waiting_ticket == Some(ticket) {
            if let Some(ApiRequest::Submit { reply, .. }) = self.waiting.take() {
                reply.fail(CallError::Withdrawn {
                    may_have_executed: false,
                });
            }
            return;
        }
        // Not yet received (or already finished: a caller that stopped
        // waiting just as the reply was sent). Remember it for a while; the
        // bound keeps finished ones from piling up, at the price of letting
        // a very late one run as if never abandoned.
        if self.early_abandons.len() >= EARLY_ABANDONS_MAX {
            self.early_abandons.clear();
        }
        self.early_abandons.insert(ticket);
    }

    /// A response or delivery arrived: the connection works, so its loss
    /// is a fault to recover from at once, not a path that fails every
    /// login.
    fn made_progress(&mut self) {
        if let Some((_, worked)) = &mut self.connected_at {
            *worked = true;
        }
    }

    fn event(&mut self, event: InitiatorEvent) {
        self.path_event(&event);
        self.session_event(&event);
        match event {
            InitiatorEvent::Response { call, payload } => {
                self.made_progress();
                if let Some(Reply::Call(tx)) = self.take_reply(call) {
                    let _ = tx.send(Ok(payload));
                }
            }
            InitiatorEvent::MessageDelivered { call } => {
                self.made_progress();
                if let Some(Reply::Send(tx)) = self.take_reply(call) {
                    let _ = tx.send(Ok(()));
                }
            }
            InitiatorEvent::CallFailed { call, error } => {
                if let Some(reply) = self.take_reply(call) {
                    reply.fail(CallError::from(error));
                }
            }
            InitiatorEvent::CreditAvailable => {
                if let Some(r) = self.waiting.take() {
                    self.request(r);
                }
            }
            InitiatorEvent::Connected {
                session,
                recovered,
                resent,
            } => {
                self.connected_at = Some((tokio::time::Instant::now(), false));
                self.recovery.connected();
                if !recovered {
                    // A new session (first, or after a stateless recovery).
                    tracing::Span::current().record("session", tracing::field::display(session));
                }
                info!(%session, recovered, resent, "session established");
                if self.multi() {
                    // Fill up the session's other connections.
                    self.join_at = Some(tokio::time::Instant::now());
                }
                if let Some(r) = self.waiting.take() {
                    self.request(r);
                }
            }
            InitiatorEvent::SessionReplaced {
                lost,
                reissued,
                failed,
            } => {
                warn!(%lost, reissued, failed, "stateless recovery: the target lost the session");
                self.recovery.replaced();
            }
            InitiatorEvent::ConnectionLost {
                error,
                reconnect_at,
            } => {
                warn!(%error, "connection lost");
                self.recovery.lost(&error);
                self.last_error = LinkError::Connection(error.clone());
                self.release_connection();
                if self
                    .connected_at
                    .take()
                    .is_some_and(|(at, worked)| worked || at.elapsed() >= STABLE_CONNECTION)
                {
                    self.backoff.reset();
                }
                let delay = self.backoff.next_delay();
                let at = self
                    .clock
                    .instant(reconnect_at)
                    .max(tokio::time::Instant::now() + delay);
                self.reconnect_at = Some(at);
            }
            InitiatorEvent::ConnectionDropped { conn, error, moved } => {
                warn!(?conn, %error, moved, "one of the session's connections was lost; its commands moved to the others");
                self.last_error = LinkError::Connection(error.clone());
                self.links.remove(conn);
                let delay = self.backoff.next_delay();
                self.join_at = Some(tokio::time::Instant::now() + delay);
            }
            InitiatorEvent::Joined { session, conn } => {
                self.backoff.reset();
                debug!(%session, ?conn, "connection joined the session");
                self.join_at = Some(tokio::time::Instant::now());
            }
            InitiatorEvent::ShutdownNotice {
                up_until,
                reconnect_at,
            } => {
                info!(?up_until, ?reconnect_at, "target announced a shutdown");
            }
            InitiatorEvent::Closed => {
                self.closed_here = true;
                self.release_connection();
                for w in self.close_waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                self.ended = Some(SessionLoss::Aborted);
                self.outcome.send_replace(Some(Ok(())));
            }
            InitiatorEvent::SessionEnded(loss) => {
                warn!(%loss, "session ended");
                self.outcome.send_replace(Some(Err(loss.clone())));
                self.release_connection();
                for w in self.close_waiters.drain(..) {
                    let _ = w.send(Err(loss.clone()));
                }
                if let Some(r) = self.waiting.take() {
                    self.ended = Some(loss.clone());
                    self.refuse(r);
                }
                self.ended = Some(loss);
            }
            _ => {}
        }
    }
}

/// The outcome of one connection attempt.
type ConnectAttempt = Result<std::io::Result<BoxStream>, tokio::time::error::Elapsed>;

/// A pending connection attempt.
type Connecting = std::pin::Pin<Box<dyn std::future::Future<Output = ConnectAttempt> + Send>>;

/// Waits for the pending connection attempt, or forever without one.
async fn await_connect(connecting: &mut Option<Connecting>) -> ConnectAttempt {
    match connecting {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Reads from the current connection, or waits forever without one.
/// Waits until the outbox is written out.
async fn drain(outbox: &mut Option<Outbox>) -> std::io::Result<()> {
    match outbox {
        Some(out) => out.drain().await,
        None => std::future::pending().await,
    }
}

async fn read_some(conn: &mut Option<Connection>, buf: &mut BytesMut) -> std::io::Result<usize> {
    match conn {
        Some(c) => c.reader.read_buf(buf).await,
        None => std::future::pending().await,
    }
}
