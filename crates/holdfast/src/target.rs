//! The target runtime: listeners, one engine task that owns the sans-IO
//! [`holdfast_proto::Target`], a reader task and a writer per connection, and
//! the application's service.
//!
//! # Guide for running a target
//!
//! * **Serve** with [`Target::serve`] (TCP or Unix endpoints) or
//!   [`Target::serve_on`] (any [`crate::Acceptor`]); the service is cloned
//!   once per session (see [`crate::service`]).
//! * **Stop** with [`Target::stop`] (at once, like a crash: initiators
//!   recover into a new session) or [`Target::shutdown`] (a notice first,
//!   with [`Reconnect`] saying when initiators may come back). Both take
//!   `&self`; when they return, the listening sockets are closed and a
//!   successor can bind the same address. Dropping a [`Target`] also
//!   closes its sockets at once and stops its tasks.
//! * **Sessions live in the target process.** A new target (after a
//!   restart or a crash) holds none of the old sessions: initiators see
//!   "the target restarted", calls in flight fail "may have executed" and
//!   calls not yet sent fail "not executed" unless retry-safe (see
//!   [`crate::initiator`]).
//!
//! # Inside
//!
//! Readers send bytes to the engine over a bounded channel (so a flooding
//! peer meets TCP backpressure, not our memory); the engine feeds the core,
//! drains its `Ready`, hands deliveries to the service in session order,
//! queues bytes to writers, and feeds completions back in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use holdfast_proto::target::{CloseReason, SourceKey};
use holdfast_proto::{ConnId, Delivery, RandomSource, Seq, SessionId, StateChange, TargetStats};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn, Instrument};

use crate::clock::Clock;
use crate::durable::commit::Done;
use crate::durable::driver::Driver;
use crate::service::{Request, SessionService};
use crate::service_call::{Finished, Outcome};
use crate::status::{SessionStatus, TargetObserver};
pub use crate::target_options::TargetOptions;
pub use crate::target_stop::Reconnect;
use crate::target_writer::{killed, ConnWriter};
use crate::transport::{Acceptor, Endpoint, Listener};

/// Messages to the engine.
pub(crate) enum EngineMsg {
    Accepted(ConnId, Option<SourceKey>, ConnWriter),
    Input(ConnId, Bytes),
    Closed(ConnId),
    /// A command's outcome in the service (see `crate::service_call`).
    Done(SessionId, Seq, Outcome),
    /// A session's lane task handed over the first `n` requests it was
    /// sent (see `crate::lanes`).
    LaneDrained(SessionId, u64),
    /// A peer's answer to a forwarded FENCE (see `crate::peer`).
    FenceAnswered {
        request: holdfast_proto::FenceRequest,
        result: holdfast_proto::FenceResult,
        waited_ms: u32,
    },
    Shutdown {
        max_up: Duration,
        min_hold: Option<Duration>,
        done: oneshot::Sender<()>,
    },
    Stats(oneshot::Sender<TargetStats>),
    OpenConnections(oneshot::Sender<usize>),
    Sessions(oneshot::Sender<Vec<SessionStatus>>),
}

/// A running target.
///
/// It serves until [`Target::stop`] or [`Target::shutdown`], or until it is
/// dropped: dropping it closes its listening sockets at once (the address
/// can be bound again right away) and stops its tasks, which drops every
/// connection; the sessions it held are lost, as in a crash.
pub struct Target {
    engine: mpsc::Sender<EngineMsg>,
    endpoints: Vec<Endpoint>,
    tasks: crate::target_stop::Tasks,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// The operating system's random generator, for session secrets.
struct OsRandom;

impl RandomSource for OsRandom {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if let Err(e) = getrandom::fill(dest) {
            // Without entropy we must not issue guessable secrets.
            panic!("the operating system's random generator failed: {e}");
        }
    }
}

impl Target {
    /// Binds every endpoint and starts serving `service`.
    pub async fn serve<S: SessionService>(
        endpoints: &[Endpoint],
        options: TargetOptions,
        service: S,
    ) -> std::io::Result<Target> {
        let mut acceptors: Vec<Box<dyn Acceptor>> = Vec::new();
        for e in endpoints {
            let listener = Listener::bind(e, options.socket_detection_bound).await?;
            acceptors.push(Box::new(listener));
        }
        Ok(Target::serve_on(acceptors, options, service))
    }

    /// Serves `service` on connections from the given acceptors (custom
    /// transports, simulated networks). Must run inside a tokio runtime.
    pub fn serve_on<S: SessionService>(
        acceptors: Vec<Box<dyn Acceptor>>,
        options: TargetOptions,
        service: S,
    ) -> Target {
        let clock = Clock::new();
        let core =
            holdfast_proto::Target::new(options.protocol.clone(), Box::new(OsRandom), clock.now());
        Target::start(acceptors, options, service, core, clock, None)
    }

    /// Starts the acceptors and the engine around `core`.
    pub(crate) fn start<S: SessionService>(
        acceptors: Vec<Box<dyn Acceptor>>,
        options: TargetOptions,
        service: S,
        core: holdfast_proto::Target,
        clock: Clock,
        durable: Option<crate::durable::commit::Committer>,
    ) -> Target {
        let (tx, rx) = mpsc::channel(1024);
        let next_conn = Arc::new(AtomicU64::new(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let bound: Vec<Endpoint> = acceptors.iter().map(|a| a.endpoint()).collect();
        let closers = acceptors.iter().filter_map(|a| a.closer()).collect();
        let mut tasks: Vec<JoinHandle<()>> = acceptors
            .into_iter()
            .map(|a| {
                tokio::spawn(accept_loop(
                    a,
                    tx.clone(),
                    next_conn.clone(),
                    options.read_buffer,
                    queued.clone(),
                ))
            })
            .collect();
        let engine = Engine {
            core,
            clock,
            lanes: crate::lanes::Lanes::new(service),
            conns: HashMap::new(),
            max_write_queue: options.max_write_queue,
            memory_budget: options.protocol.memory_budget,
            queued,
            tx: tx.clone(),
            shutdown_waiters: Vec::new(),
            stopping_at: None,
            peers: crate::peer::Peers::start(&options.peers, options.peer_fence_timeout),
            gates: HashMap::new(),
            durable: durable.map(Driver::new),
        };
        let span = tracing::info_span!("target", endpoints = ?bound);
        tasks.push(tokio::spawn(engine.run(rx).instrument(span)));
        info!(endpoints = ?bound, "target serving");
        Target {
            engine: tx,
            endpoints: bound,
            tasks: crate::target_stop::Tasks::new(closers, tasks),
        }
    }

    /// How many connections are open right now (logging in or attached).
    pub async fn connections(&self) -> Option<usize> {
        let (tx, rx) = oneshot::channel();
        self.engine
            .send(EngineMsg::OpenConnections(tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// The endpoints actually bound.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Every session held right now, in id order, with its state.
    /// `None` once the target has stopped.
    pub async fn sessions(&self) -> Option<Vec<SessionStatus>> {
        self.observer().sessions().await
    }

    /// A cloneable handle that reads this target's state (sessions,
    /// counters, connections) from other tasks: a status endpoint or a
    /// metrics exporter. It does not keep the target running; once it has
    /// stopped, every query returns `None`.
    pub fn observer(&self) -> TargetObserver {
        TargetObserver::new(self.engine.clone(), self.endpoints.clone())
    }

    /// The core's counters.
    pub async fn stats(&self) -> Option<TargetStats> {
        let (tx, rx) = oneshot::channel();
        self.engine.send(EngineMsg::Stats(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Announces a shutdown on every connection, waits out `max_up`, closes
    /// every connection and stops; `reconnect` tells the initiators when
    /// they may come back ([`Reconnect::After`]) or that they should not
    /// ([`Reconnect::Never`]; an `Option<Duration>` still converts: `None`
    /// is never).
    ///
    /// During `max_up` the listeners stay open: a new connection is accepted
    /// and its LOGIN answered with LOGIN_REJECT `ShuttingDown` (PROTOCOL.md
    /// §10.1). When this returns, the listening sockets are closed (a
    /// successor can bind the same addresses) and every task has ended.
    /// Session state is lost when the target stops, so a target that will
    /// not be replaced by one that holds its sessions (none can be, yet)
    /// should pass [`Reconnect::Never`]. Takes `&self`, so a target shared
    /// with a signal handler can be shut down; calls after the first stop
    /// at once.
    pub async fn shutdown(&self, max_up: Duration, reconnect: impl Into<Reconnect>) {
        let (done, wait) = oneshot::channel();
        if self
            .engine
            .send(EngineMsg::Shutdown {
                max_up,
                min_hold: reconnect.into().hold(),
                done,
            })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
        self.tasks.stop().await;
    }

    /// Stops at once, without a shutdown notice (to the initiators it looks
    /// like a crash: they recover into a new session with whoever answers
    /// next): closes the listening sockets now, so the addresses are free
    /// when this returns, then stops the engine and waits for it. Every
    /// connection is dropped and the sessions held are lost.
    pub async fn stop(&self) {
        self.tasks.stop().await;
    }
}

impl Drop for Target {
    /// Closes the listening sockets at once and stops every task (see
    /// [`Target::stop`], which also waits for them).
    fn drop(&mut self) {
        self.tasks.abort();
    }
}

async fn accept_loop(
    mut acceptor: Box<dyn Acceptor>,
    engine: mpsc::Sender<EngineMsg>,
    next_conn: Arc<AtomicU64>,
    read_buffer: usize,
    queued: Arc<AtomicUsize>,
) {
    loop {
        let (stream, peer) = match acceptor.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Running out of descriptors is transient: back off briefly.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = ConnId(next_conn.fetch_add(1, Ordering::Relaxed));
        debug!(?conn, %peer, "accepted");
        // The per-source session limit keys on the IP address (none for a
        // Unix socket or a custom transport).
        let source = peer
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| SourceKey::from(a.ip()));
        let (reader, writer) = crate::transport::split(stream);
        let (kill, stop) = watch::channel(false);
        let writer = ConnWriter::spawn(writer, kill, queued.clone());
        if engine
            .send(EngineMsg::Accepted(conn, source, writer))
            .await
            .is_err()
        {
            return;
        }
        let engine = engine.clone();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = killed(stop) => {}
                () = read_loop(conn, reader, &engine, read_buffer) => {}
            }
            let _ = engine.send(EngineMsg::Closed(conn)).await;
        });
    }
}

async fn read_loop(
    conn: ConnId,
    mut reader: crate::transport::ReadHalf,
    engine: &mpsc::Sender<EngineMsg>,
    buffer: usize,
) {
    // A small read is copied out of the connection's buffer, which is then
    // reused. Handing the engine a slice of it instead would pin it until
    // the engine is done with the slice, so (the engine running behind)
    // every read allocated a fresh `buffer`-sized block: a 64 KiB
    // allocation per read, however small. The copy costs less, and an idle
    // connection keeps only the pages its reads touched. A large read is
    // handed over as it is: copying it would cost more than a new block.
    const COPY_BELOW: usize = 16 * 1024;
    let mut buf = BytesMut::with_capacity(buffer);
    loop {
        if buf.capacity() < buffer {
            buf.reserve(buffer);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let input = if n < COPY_BELOW {
                    let input = Bytes::copy_from_slice(&buf);
                    buf.clear();
                    input
                } else {
                    buf.split().freeze()
                };
                if engine.send(EngineMsg::Input(conn, input)).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub(crate) struct Engine<S> {
    pub(crate) core: holdfast_proto::Target,
    clock: Clock,
    /// Each session's clone of the service.
    lanes: crate::lanes::Lanes<S>,
    conns: HashMap<ConnId, ConnWriter>,
    /// A fixed per-connection write-queue bound, if configured.
    max_write_queue: Option<usize>,
    /// `TargetConfig::memory_budget`, for the bytes queued to send.
    memory_budget: usize,
    /// Bytes waiting in every connection's write queue.
    queued: Arc<AtomicUsize>,
    tx: mpsc::Sender<EngineMsg>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    /// When a shutdown notice's up time ends: connections accepted later
    /// are closed at once.
    stopping_at: Option<holdfast_proto::Timestamp>,
    /// Links to peer nodes, for forwarded fences.
    peers: crate::peer::Peers,
    /// Start gates of sessions with a quiesce promise and commands in the
    /// service (see `crate::start_gate`), refreshed after every batch.
    gates: HashMap<SessionId, Arc<crate::start_gate::SessionGate>>,
    /// The durable store and the output waiting for it, if the target has
    /// one (see `crate::durable::driver`).
    pub(crate) durable: Option<Driver>,
}

impl<S: SessionService> Engine<S> {
    async fn run(mut self, mut rx: mpsc::Receiver<EngineMsg>) {
        // Finished group commits (durable store only).
        let mut done_rx = self.durable.as_mut().and_then(Driver::take_done);
        loop {
            let deadline = self.core.poll_timeout().map(|t| self.clock.instant(t));
            let held_until = self.durable.as_ref().and_then(Driver::deadline);
            // Biased (timers first), so that seeded simulations replay
            // exactly and a flood of input cannot postpone deadlines.
            tokio::select! {
                biased;
                () = sleep_until(deadline) => {
                    let now = self.clock.now();
                    self.core.handle_timeout(now);
                }
                done = next_done(&mut done_rx) => {
                    if !self.committed(done).await {
                        return;
                    }
                }
                // Early mode: the held group waited long enough for the
                // commands still in the service (see `drain_ready`).
                () = sleep_until(held_until) => {}
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m),
                    None => return,
                },
            }
            // Batch whatever else is already queued before producing output.
            for _ in 0..256 {
                match rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            if !self.drain_ready().await {
                return;
            }
            // Stopped: the up time is over (new logins were refused until
            // then) and every connection is closed.
            let up_time_over = self.stopping_at.is_some_and(|at| at <= self.clock.now());
            if !self.shutdown_waiters.is_empty() && up_time_over && self.conns.is_empty() {
                for w in self.shutdown_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        }
    }

    fn handle(&mut self, msg: EngineMsg) {
        let now = self.clock.now();
        match msg {
            EngineMsg::Accepted(conn, source, writer) => {
                if self.stopping_at.is_some_and(|at| at <= now) {
                    // The up time is over: the target is stopping.
                    debug!(?conn, "connection refused: the target is stopping");
                    writer.close();
                } else if let Err(e) = self.core.accept_from(conn, source, now) {
                    warn!(?conn, error = %e, "connection refused");
                    writer.close();
                } else {
                    self.conns.insert(conn, writer);
                }
            }
            EngineMsg::Input(conn, bytes) => {
                self.core
                    .set_queued_bytes(self.queued.load(Ordering::Relaxed));
                self.core.handle_input(conn, &bytes, now);
                for b in self.core.take_store_behind() {
                    tracing::error!(
                        session = %b.session, response_ack = b.response_ack, stored = b.stored,
                        "a recovering initiator acknowledged responses the durable store never \
                         held: the store lost acknowledged state (a disk that ignored fsync, or \
                         a restored older copy); the session was ended and its login rejected"
                    );
                }
            }
            EngineMsg::Closed(conn) => {
                if self.conns.remove(&conn).is_some() {
                    debug!(?conn, "connection closed by peer");
                }
                self.core.connection_closed(conn, now);
            }
            EngineMsg::Done(session, seq, outcome) => {
                self.complete(session, seq, outcome);
            }
            EngineMsg::LaneDrained(session, taken) => {
                if self.lanes.drained(session, taken) {
                    self.core.release_messages(session, now);
                }
            }
            EngineMsg::FenceAnswered {
                request,
                result,
                waited_ms,
            } => {
                info!(token = request.token, %result, waited_ms, "forwarded fence answered");
                let (conn, token) = (request.conn, request.token);
                self.core.answer_fence(conn, token, result, waited_ms, now);
            }
            EngineMsg::Shutdown {
                max_up,
                min_hold,
                done,
            } => {
                info!(?max_up, ?min_hold, "shutdown notice sent");
                self.core.shutdown(max_up, min_hold, now);
                self.stopping_at = Some(now + max_up);
                self.shutdown_waiters.push(done);
            }
            EngineMsg::Stats(reply) => {
                let _ = reply.send(self.core.stats().clone());
            }
            EngineMsg::OpenConnections(reply) => {
                let _ = reply.send(self.conns.len());
            }
            EngineMsg::Sessions(reply) => {
                let now = self.clock.now();
                let mut ids = self.core.session_ids();
                ids.sort_unstable();
                let sessions = ids
                    .into_iter()
                    .filter_map(|id| {
                        let info = self.core.session_info(id)?;
                        let detached_for = info.detached_since.map(|t| now.saturating_since(t));
                        Some(SessionStatus::new(id, info, detached_for))
                    })
                    .collect();
                let _ = reply.send(sessions);
            }
        }
    }

    /// Sends, closes, delivers and advances one `Ready` whose changes are
    /// durable (or in memory only, without a store).
    pub(crate) async fn finish_ready(&mut self, mut ready: holdfast_proto::Ready) {
        self.note_changes(&ready.changes);
        self.send_output(&mut ready);
        let mut deliveries = std::mem::take(&mut ready.deliveries);
        self.execute(&mut deliveries).await;
        ready.deliveries = deliveries;
        // The emptied vectors go back for the next batches.
        self.core.recycle(ready);
    }

    /// Lets go of the lanes of ended sessions. The changes are persisted
    /// (durable store) or kept in memory only; they are logged so an
    /// operator can follow each session's life (a durable store logged
    /// them at its commit, in strict mode).
    pub(crate) fn note_changes(&mut self, changes: &[StateChange]) {
        let log = self.durable.as_ref().is_none_or(Driver::early);
        for change in changes {
            if log {
                log_change(change);
            }
            if let StateChange::SessionEnded { session } = change {
                self.lanes.end(*session);
            }
        }
    }

    /// Forwards a `Ready`'s fences, writes its bytes and closes its
    /// connections (their changes are durable, or in memory only).
    pub(crate) fn send_output(&mut self, ready: &mut holdfast_proto::Ready) {
        for f in ready.fences.drain(..) {
            info!(token = f.token, node = format_args!("{:08x}", f.node), host = %f.host,
                      epoch = f.epoch, "forwarding a fence to a peer");
            self.peers.forward(f, self.tx.clone());
        }
        for t in ready.transmits.drain(..) {
            let Some(w) = self.conns.get(&t.conn) else {
                continue;
            };
            let queued = w.send(t.chunks);
            if let Some(why) = self.over_limit(t.conn, queued) {
                warn!(
                    conn = ?t.conn,
                    queued,
                    "{why}; dropping the connection (its session stays recoverable)"
                );
                if let Some(w) = self.conns.remove(&t.conn) {
                    w.kill();
                }
                self.core.connection_closed(t.conn, self.clock.now());
            }
        }
        for c in ready.closes.drain(..) {
            match &c.reason {
                CloseReason::Protocol(e) => {
                    warn!(conn = ?c.conn, error = %e, "closing connection")
                }
                other => debug!(conn = ?c.conn, reason = ?other, "closing connection"),
            }
            if let Some(w) = self.conns.remove(&c.conn) {
                w.close();
            }
        }
    }

    /// Hands a `Ready`'s deliveries to the service, advances the core and
    /// completes the commands answered at once.
    pub(crate) async fn execute(&mut self, deliveries: &mut Vec<Delivery>) {
        let mut finished = Vec::new();
        for d in deliveries.drain(..) {
            if let Some(done) = self.deliver(d).await {
                finished.push(done);
            }
        }
        // Messages waiting in a session's lane are not with the
        // service yet: not acknowledged until its task hands them over.
        for session in self.lanes.take_held() {
            self.core.hold_messages(session);
            if let Some(d) = &mut self.durable {
                d.session_held(session);
            }
        }
        self.core.advance(self.clock.now());
        // Services that answered at once are completed here, without a
        // task and a channel hop each.
        for (session, seq, outcome) in finished {
            self.complete(session, seq, outcome);
        }
    }

    /// Why a connection with `queued` bytes waiting for its socket must be
    /// dropped, if it must: more than its session legitimately owes (the
    /// peer is not reading), or the target's memory budget is exceeded.
    fn over_limit(&self, conn: ConnId, queued: usize) -> Option<String> {
        if queued == 0 {
            return None;
        }
        // A connection the core let go is closing: its last bytes get the
        // close grace period, whatever they are.
        let limit = self
            .max_write_queue
            .or_else(|| self.core.write_allowance(conn))
            .unwrap_or(usize::MAX);
        if queued > limit {
            return Some(format!(
                "the peer is not reading: {queued} bytes queued, more than the {limit} \
                 its session can owe"
            ));
        }
        let total = self
            .queued
            .load(Ordering::Relaxed)
            .saturating_add(self.core.decoding_bytes());
        (total > self.memory_budget).then(|| {
            format!(
                "the target's memory budget of {} bytes is exhausted ({total} bytes held)",
                self.memory_budget
            )
        })
    }

    /// Calls the service in session order. A future that is ready at once
    /// is answered inline (returned for completion); one that is not runs
    /// concurrently on its own task and its completion comes back through
    /// the engine's channel.
    async fn deliver(&mut self, d: Delivery) -> Option<Finished> {
        let (Delivery::Command { session, .. } | Delivery::Message { session, .. }) = &d;
        let max_response = self.core.max_response(*session).unwrap_or(0);
        if let Delivery::Command { session, seq, .. } = &d {
            // The quiesce promise, checked where the command would start
            // (§11.4): refused here, the service never sees it.
            if let Err(why) = self.core.begin(*session, *seq, self.clock.now()) {
                warn!(%session, seq, reason = %why, "command not started: answered NotExecuted");
                return None;
            }
        }
        let start = match &d {
            Delivery::Command { session, .. } => self.start_gate(*session),
            Delivery::Message { .. } => crate::StartGate::default(),
        };
        let request = match d {
            Delivery::Command {
                session,
                seq,
                payload,
            } => Request {
                session,
                seq,
                payload,
                one_way: false,
                max_response,
                start: start.clone(),
            },
            Delivery::Message {
                session,
                seq,
                payload,
            } => Request {
                session,
                seq,
                payload,
                one_way: true,
                max_response,
                start: start.clone(),
            },
        };
        // Readiness per session, never awaited here (see `crate::lanes`).
        let (session, seq, one_way) = (request.session, request.seq, request.one_way);
        let done = self.lanes.dispatch(request, &self.tx);
        if let (None, false, Some(d)) = (&done, one_way, &mut self.durable) {
            d.started(session, seq);
        }
        done
    }
}

impl<S: SessionService> Engine<S> {
    /// Records a command's outcome: its response, its service error
    /// (`ServiceFailed`), or its refusal (`NotExecuted`).
    fn complete(&mut self, session: SessionId, seq: Seq, outcome: Outcome) {
        let now = self.clock.now();
        if let Some(d) = &mut self.durable {
            d.finished(session, seq);
        }
        let overruns = self.core.stats().quiesce_overruns;
        let result = match outcome {
            Outcome::Refused(why) => {
                warn!(%session, seq, reason = %why, "the service did not start the command: answered NotExecuted");
                self.core.refuse(session, seq, &why, now);
                return;
            }
            Outcome::Response(response) => self.core.complete(session, seq, response, now),
            Outcome::Failed(text) => self.core.fail(session, seq, &text, now),
            Outcome::NotReady(text) => {
                self.core.refuse_unready(session, seq, &text, now);
                return;
            }
        };
        if let Err(e) = result {
            debug!(%session, seq, error = %e, "completion dropped");
        }
        if self.core.stats().quiesce_overruns > overruns {
            warn!(
                %session, seq,
                "a command finished after its session's quiesce time had passed since the last \
                 contact: the promise made at login was broken; raise --command-budget"
            );
        }
    }

    /// The start gate for a command of `session`: shared by its commands
    /// while any is in the service; a default gate for sessions without a
    /// quiesce promise.
    fn start_gate(&mut self, session: SessionId) -> crate::StartGate {
        let Some((Some(deadline), fenced)) = self.core.start_gate(session) else {
            return crate::StartGate::default();
        };
        let contact = self.core.last_contact(session).unwrap_or_default();
        let gate = self
            .gates
            .entry(session)
            .or_insert_with(|| crate::start_gate::SessionGate::new(contact, deadline, fenced))
            .clone();
        crate::StartGate::new(self.clock, gate)
    }

    /// Publishes every live gate's deadline and fence; drops gates no
    /// command holds any more.
    pub(crate) fn refresh_gates(&mut self) {
        let core = &self.core;
        self.gates.retain(|session, gate| {
            if Arc::strong_count(gate) == 1 {
                return false;
            }
            match core.start_gate(*session) {
                Some((Some(deadline), fenced)) => {
                    let contact = core.last_contact(*session).unwrap_or_default();
                    gate.set(contact, deadline, fenced);
                    true
                }
                // The session ended: only a fence or expiry ends one with
                // commands in the service; none of them may start.
                _ => {
                    gate.set(Default::default(), Default::default(), true);
                    false
                }
            }
        });
    }
}

/// Logs a session state change: lifecycle events at info, per-message
/// changes at trace.
pub(crate) fn log_change(change: &StateChange) {
    match change {
        StateChange::SessionCreated {
            session, credits, ..
        } => info!(%session, credits, "session created"),
        StateChange::SessionEnded { session } => info!(%session, "session ended"),
        other => trace!(change = ?other, "state change"),
    }
}

/// The next finished group commit (`None`: the commit thread is gone), or
/// never without a durable store.
async fn next_done(rx: &mut Option<mpsc::UnboundedReceiver<Done>>) -> Option<Done> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
