//! The target side of the protocol: sessions that outlive connections, the
//! response cache, credits, fencing, retain expiry and shutdown notices.
//!
//! # Driving a target
//!
//! * inputs: [`Target::accept`] a new transport connection, [`Target::handle_input`]
//!   its bytes, [`Target::connection_closed`] when it ends, [`Target::complete`]
//!   when the service answers a command, [`Target::handle_timeout`] when
//!   [`Target::poll_timeout`] passes, [`Target::shutdown`] to go away politely;
//! * outputs: while [`Target::has_ready`], take [`Target::ready`], persist its
//!   changes, send its bytes, close its connections, give its deliveries to
//!   the service, then call [`Target::advance`]; optionally hand the
//!   drained Ready back with [`Target::recycle`] so its vectors are reused.

mod admission;
mod failed;
mod fence;
mod frames;
mod held;
mod login;
mod quiesce;
mod ready;
mod reorder;
mod restore;
mod session;
mod stats;
mod timers;
mod tombstones;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::config::TargetConfig;
use crate::error::{CompleteError, ProtocolError};
use crate::ids::{ConnId, SessionId};
use crate::random::RandomSource;
use crate::time::Timestamp;
use crate::wire::{
    Decoder, Digests, ErrorCode, Frame, Outgoing, RejectReason, ResponseStatus, NEVER_MS,
};
use crate::Seq;

use admission::Admission;
pub use admission::{SourceKey, CONTROL_ALLOWANCE};
pub use fence::FenceRequest;
pub use quiesce::NotStarted;
pub use ready::{Close, CloseReason, Delivery, Ready, StateChange, Transmit};
pub use restore::{RestoreError, StoreBehind};
use session::Session;
pub use stats::{SessionInfo, TargetStats};
use timers::{TimerKey, Timers};
use tombstones::Tombstones;

/// The largest non-login frame accepted before a login completes.
const PRE_LOGIN_MAX_FRAME: u32 = 64;

/// Vectors handed back with [`Target::recycle`] (and internal work lists)
/// are kept for reuse only up to this capacity, so one burst does not pin
/// its memory for the target's life.
const KEEP_CAPACITY: usize = 1024;

/// The most transmit chunk lists kept for reuse (one per connection in a
/// batch), and the largest capacity of one that is kept.
const KEEP_CHUNK_LISTS: usize = 32;
const KEEP_CHUNKS_CAPACITY: usize = 256;

/// Empty vectors kept from Readies handed back with [`Target::recycle`], to
/// be filled by the next batches instead of fresh ones.
#[derive(Debug, Default)]
struct Spare {
    changes: Vec<StateChange>,
    transmits: Vec<Transmit>,
    closes: Vec<Close>,
    deliveries: Vec<Delivery>,
    /// Chunk lists of transmits, each empty.
    chunks: Vec<Vec<Bytes>>,
}

/// Keeps `v` (cleared) in `slot` if it is worth keeping: `slot` has less
/// capacity and `v`'s is within [`KEEP_CAPACITY`].
fn keep<T>(slot: &mut Vec<T>, mut v: Vec<T>) {
    if v.capacity() > slot.capacity() && v.capacity() <= KEEP_CAPACITY {
        v.clear();
        *slot = v;
    }
}

/// Puts a work list that was taken out for iteration back, emptied, unless
/// it grew beyond [`KEEP_CAPACITY`] (or something was queued meanwhile).
fn put_back<T>(slot: &mut Vec<T>, mut v: Vec<T>) {
    if slot.is_empty() && v.capacity() <= KEEP_CAPACITY {
        v.clear();
        *slot = v;
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a LOGIN (or another after a reject).
    Login,
    /// Logged in to a session.
    Attached(SessionId),
}

/// A transport connection as the target sees it.
#[derive(Debug)]
struct Conn {
    decoder: Decoder,
    digests: Digests,
    phase: Phase,
    out: Outgoing,
    /// Queued in `Target::dirty`.
    dirty: bool,
    /// No more input is read; removed at the next `ready`.
    closing: bool,
    /// When it was accepted: the login deadline counts from here, and a
    /// LOGIN_REJECT does not move it.
    opened: Timestamp,
    last_recv: Timestamp,
    inactivity: Duration,
    /// Where it comes from (for the per-source session limit).
    source: Option<SourceKey>,
    /// The token of the latest PING not yet answered: one PONG answers
    /// every PING read since the last Ready (PROTOCOL.md §9.1).
    pong: Option<u64>,
    /// A LOGIN_REJECT is queued and not yet handed out in a Ready.
    reject_queued: bool,
    /// Decoder bytes counted against the memory budget.
    charged: usize,
}

/// The shutdown notice in force.
#[derive(Debug, Clone, Copy)]
struct ShutdownNotice {
    up_until: Timestamp,
    /// Hold time after `up_until`; `None` means the target will not return.
    hold: Option<Duration>,
}

/// The target state machine: every session and connection of one target.
pub struct Target {
    config: TargetConfig,
    incarnation: u32,
    next_counter: u32,
    random: Box<dyn RandomSource>,
    now: Timestamp,
    sessions: HashMap<SessionId, Session>,
    conns: HashMap<ConnId, Conn>,
    tombstones: Tombstones,
    timers: Timers,
    dirty: Vec<ConnId>,
    changes: Vec<StateChange>,
    deliveries: Vec<Delivery>,
    closes: Vec<Close>,
    /// Sessions that delivered one-way messages since the last Ready.
    delivering: Vec<SessionId>,
    /// Sessions with deliveries in the Ready now with the driver.
    releasing: Vec<SessionId>,
    /// A Ready is with the driver and `advance` has not been called.
    awaiting_advance: bool,
    /// Vectors handed back with `recycle`, for the next Readies.
    spare: Spare,
    shutdown: Option<ShutdownNotice>,
    stats: TargetStats,
    /// Counters behind the admission limits and the memory budget.
    admission: Admission,
    /// Fenced hosts, fences waiting for running commands, and FENCEs for
    /// other nodes (PROTOCOL.md §11.5).
    fencing: fence::Fencing,
    /// Recoveries refused because the restored store was behind, for the
    /// driver to log ([`Target::take_store_behind`]).
    store_behind: Vec<StoreBehind>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("incarnation", &format_args!("{:08x}", self.incarnation))
            .field("sessions", &self.sessions.len())
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Creates a target. Its incarnation (the high half of every session id
    /// it issues) and all session secrets are drawn from `random`.
    pub fn new(config: TargetConfig, mut random: Box<dyn RandomSource>, now: Timestamp) -> Self {
        let mut word = [0u8; 4];
        random.fill_bytes(&mut word);
        let incarnation = u32::from_be_bytes(word);
        Target {
            tombstones: Tombstones::new(config.tombstones),
            fencing: fence::Fencing::new(config.fenced_hosts),
            config,
            incarnation,
            next_counter: 1,
            random,
            now,
            sessions: HashMap::new(),
            conns: HashMap::new(),
            timers: Timers::default(),
            dirty: Vec::new(),
            changes: Vec::new(),
            deliveries: Vec::new(),
            closes: Vec::new(),
            delivering: Vec::new(),
            releasing: Vec::new(),
            awaiting_advance: false,
            spare: Spare::default(),
            shutdown: None,
            stats: TargetStats::default(),
            admission: Admission::default(),
            store_behind: Vec::new(),
        }
    }

    /// This target's incarnation.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// The configuration.
    pub fn config(&self) -> &TargetConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &TargetStats {
        &self.stats
    }

    /// Sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Connections open (in login or attached).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// A snapshot of a session.
    pub fn session_info(&self, id: SessionId) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|s| SessionInfo {
            credits: s.credits,
            received: s.received(),
            limit: s.limit(),
            held: s.held(),
            running: s.running(),
            cached: s.cached(),
            cached_bytes: s.cached_bytes(),
            responses_acked: s.responses_acked(),
            attached: s.is_attached(),
            detached_since: s.detached_since,
            expiry_deferred: s.expiry_deferred,
        })
    }

    /// How many connections are attached to a session (PROTOCOL.md §17).
    pub fn session_connections(&self, id: SessionId) -> usize {
        self.sessions.get(&id).map_or(0, |s| s.conns.len())
    }

    /// Sequence numbers a session holds in its reorder buffer, and their
    /// payload bytes (always fewer than its credits, §17.3).
    pub fn reorder_occupancy(&self, id: SessionId) -> (usize, usize) {
        self.sessions.get(&id).map_or((0, 0), |s| s.reordering())
    }

    /// The ids of all sessions held.
    pub fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// Bytes buffered for a connection's partial frame, and the capacity
    /// reserved for them (for memory-bound checks).
    pub fn buffered(&self, conn: ConnId) -> Option<(usize, usize)> {
        self.conns
            .get(&conn)
            .map(|c| (c.decoder.buffered(), c.decoder.capacity()))
    }

    /// Feeds bytes received on a connection. Input on an unknown, closed or
    /// fenced connection is ignored. A protocol violation closes the
    /// connection (see the next [`Ready`]); the session is not harmed.
    pub fn handle_input(&mut self, conn: ConnId, mut data: &[u8], now: Timestamp) {
        self.now = now;
        let phase = match self.conns.get_mut(&conn) {
            Some(c) if !c.closing => {
                c.last_recv = now;
                c.phase
            }
            _ => return,
        };
        if let Phase::Attached(id) = phase {
            self.touch(id, now);
        }
        self.stats.bytes_in += data.len() as u64;
        loop {
            if let Err(e) = self.check_budget(conn, data) {
                self.fail_conn(conn, e);
                return;
            }
            let (kind, decoded) = match self.conns.get_mut(&conn) {
                Some(c) if !c.closing => (c.decoder.frame_kind(data), c.decoder.decode(&mut data)),
                _ => return,
            };
            self.recharge(conn);
            match decoded {
                Ok(Some(frame)) => {
                    if let Err(e) = self.handle_frame(conn, frame) {
                        self.fail_conn(conn, e);
                        return;
                    }
                }
                Ok(None) => return,
                // Never answer an ERROR, even one we cannot read (§8).
                Err(e) if kind == Some(crate::wire::frame::kind::ERROR) => {
                    let text = format!("an ERROR frame that could not be read: {e}");
                    self.close_conn(conn, CloseReason::PeerError(text));
                    return;
                }
                Err(e) => {
                    self.fail_conn(conn, e);
                    return;
                }
            }
        }
    }

    /// The driver reports that a connection ended (EOF, reset, error).
    pub fn connection_closed(&mut self, conn: ConnId, now: Timestamp) {
        self.now = now;
        if let Some(c) = self.remove_conn(conn) {
            if let Phase::Attached(id) = c.phase {
                self.detach(id, conn);
            }
        }
    }

    /// The largest response payload the initiator of `session` accepts
    /// (its `max_frame` − 32), for services that can shape their answer.
    pub fn max_response(&self, session: SessionId) -> Option<usize> {
        self.sessions.get(&session).map(Session::max_response)
    }

    /// Records the service's response to a command delivered earlier. A
    /// response larger than [`Target::max_response`] is not sent: a status
    /// response `ResponseTooLarge` answers the command instead (it executed;
    /// the call fails with that status at the initiator).
    pub fn complete(
        &mut self,
        session: SessionId,
        seq: Seq,
        response: Bytes,
        now: Timestamp,
    ) -> Result<(), CompleteError> {
        self.now = now;
        self.check_overrun(session, now);
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(CompleteError::UnknownSession(session))?;
        if !s.is_running(seq) {
            return Err(CompleteError::NotRunning { session, seq });
        }
        let max = s.max_response();
        if response.len() > max {
            // The command ran; its response cannot be delivered. A status
            // response takes its place, so the call fails cleanly (§6.7).
            self.stats.oversized_responses += 1;
            let text = session::oversized_text(response.len(), max);
            let status = Some(ResponseStatus::ResponseTooLarge);
            s.complete(seq, Bytes::from(text), status, &mut self.changes);
        } else {
            s.complete(seq, response, None, &mut self.changes);
        }
        self.after_completion(session);
        Ok(())
    }

    /// Announces that the target goes away: every connection is told it stays
    /// up for `max_up` and that reconnecting should wait `min_hold` after that
    /// (`None`: the target will not return). New logins are refused meanwhile;
    /// when `max_up` passes, every connection is closed.
    pub fn shutdown(&mut self, max_up: Duration, min_hold: Option<Duration>, now: Timestamp) {
        self.now = now;
        let notice = ShutdownNotice {
            up_until: now + max_up,
            hold: min_hold,
        };
        self.shutdown = Some(notice);
        let max_up_ms = duration_ms(max_up);
        let min_hold_ms = min_hold.map_or(NEVER_MS, duration_ms);
        let attached: Vec<(ConnId, SessionId)> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closing)
            .filter_map(|(id, c)| match c.phase {
                Phase::Attached(s) => Some((*id, s)),
                Phase::Login => None,
            })
            .collect();
        for (conn, sid) in attached {
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            let frame = Frame::Shutdown {
                max_up_ms,
                min_hold_ms,
                ack: s.ack(),
                limit: s.limit(),
            };
            s.mark_advertised();
            self.push_frame(conn, &frame);
        }
        self.timers.arm(notice.up_until, TimerKey::Shutdown);
    }

    /// The next time [`Target::handle_timeout`] must be called, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    /// Fires every timer due at `now`: login and inactivity deadlines, ack
    /// delays, retain expiry, the end of a shutdown notice's up time.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.now = now;
        while let Some(key) = self.timers.pop_due(now) {
            match key {
                TimerKey::Conn(conn) => self.conn_timer(conn, now),
                TimerKey::Session(id) => self.session_timer(id, now),
                TimerKey::Shutdown => self.shutdown_timer(now),
            }
        }
    }

    /// True when [`Target::ready`] has something and no earlier Ready awaits
    /// [`Target::advance`].
    #[must_use]
    pub fn has_ready(&self) -> bool {
        !self.awaiting_advance
            && (!self.dirty.is_empty()
                || !self.changes.is_empty()
                || !self.deliveries.is_empty()
                || !self.closes.is_empty()
                || !self.fencing.requests.is_empty())
    }

    /// Takes the next batch of output. Persist its changes before sending its
    /// bytes or executing its deliveries, then call [`Target::advance`].
    /// Returns an empty Ready while an earlier one awaits `advance`.
    #[must_use]
    pub fn ready(&mut self) -> Ready {
        if self.awaiting_advance {
            return Ready::default();
        }
        let now = self.now;
        let mut transmits = std::mem::take(&mut self.spare.transmits);
        let dirty = std::mem::take(&mut self.dirty);
        for &conn in &dirty {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            c.dirty = false;
            c.reject_queued = false;
            let pong = c.pong.take();
            if let (Phase::Attached(id), false) = (c.phase, c.closing) {
                if let Some(s) = self.sessions.get_mut(&id) {
                    if let Some(token) = pong {
                        // Never past a MSG the service does not have yet (§6.2).
                        let (ack, limit) = (s.ack(), s.limit());
                        c.out.push(&Frame::Pong { token, ack, limit }, c.digests);
                        s.mark_advertised();
                    }
                    s.write_output(conn, &mut c.out, c.digests, now);
                }
            }
            if !c.out.is_empty() {
                let mut chunks = self.spare.chunks.pop().unwrap_or_default();
                c.out.take_chunks_into(&mut chunks);
                let t = Transmit { conn, chunks };
                self.stats.bytes_out += t.len() as u64;
                transmits.push(t);
            }
            if c.closing {
                self.remove_conn(conn);
            }
        }
        // Nothing above queues connections: the list goes back for reuse.
        put_back(&mut self.dirty, dirty);
        let delivering = std::mem::take(&mut self.delivering);
        for &id in &delivering {
            if let Some(s) = self.sessions.get_mut(&id) {
                if s.hand_out_deliveries() {
                    self.releasing.push(id);
                }
            }
        }
        put_back(&mut self.delivering, delivering);
        let spare = &mut self.spare;
        let ready = Ready {
            changes: std::mem::replace(&mut self.changes, std::mem::take(&mut spare.changes)),
            transmits,
            closes: std::mem::replace(&mut self.closes, std::mem::take(&mut spare.closes)),
            deliveries: std::mem::replace(
                &mut self.deliveries,
                std::mem::take(&mut spare.deliveries),
            ),
            fences: std::mem::take(&mut self.fencing.requests),
        };
        self.awaiting_advance = !ready.is_empty();
        ready
    }

    /// Confirms that the last Ready's changes are persisted, its bytes sent
    /// and its deliveries handed to the service. One-way messages delivered
    /// in it return their credits, and only now does the acknowledgement
    /// cover them (no byte before this call acknowledges them).
    pub fn advance(&mut self, now: Timestamp) {
        self.now = now;
        self.awaiting_advance = false;
        let record = self.records_deliveries();
        let releasing = std::mem::take(&mut self.releasing);
        for &id in &releasing {
            if let Some(s) = self.sessions.get_mut(&id) {
                if s.untaken {
                    continue; // until `release_messages` (see `held`)
                }
                s.release_delivered(&mut self.changes, record);
                self.owe_ack(id);
            }
        }
        put_back(&mut self.releasing, releasing);
    }

    /// Hands a [`Ready`] back once the driver is done with it, so the next
    /// batches reuse its vectors instead of allocating new ones. Optional:
    /// a driver that drops its Readies works the same, it only allocates
    /// more. Whatever the vectors still hold is dropped; drain them (for
    /// example `ready.deliveries.drain(..)`) to keep their capacity for
    /// reuse. Only vectors of bounded capacity are kept.
    pub fn recycle(&mut self, ready: Ready) {
        let Ready {
            changes,
            mut transmits,
            closes,
            deliveries,
            fences: _,
        } = ready;
        for t in transmits.drain(..) {
            let mut chunks = t.chunks;
            if self.spare.chunks.len() < KEEP_CHUNK_LISTS
                && chunks.capacity() > 0
                && chunks.capacity() <= KEEP_CHUNKS_CAPACITY
            {
                chunks.clear();
                self.spare.chunks.push(chunks);
            }
        }
        keep(&mut self.spare.transmits, transmits);
        keep(&mut self.spare.changes, changes);
        keep(&mut self.spare.closes, closes);
        keep(&mut self.spare.deliveries, deliveries);
    }

    // ----- internals -----

    /// Whether released messages are recorded with
    /// [`StateChange::MessagesDelivered`] (always, unless the test switch
    /// `no_delivered_record` is set).
    fn records_deliveries(&self) -> bool {
        #[cfg(feature = "test-switches")]
        return !self.config.switches.no_delivered_record;
        #[cfg(not(feature = "test-switches"))]
        true
    }

    /// Removes a session for good.
    fn end_session(&mut self, id: SessionId, reason: RejectReason) {
        if self.sessions.remove(&id).is_some() {
            self.session_gone(id);
            self.tombstones.bury(id, reason);
            self.changes.push(StateChange::SessionEnded { session: id });
        }
    }

    /// Queues an ERROR frame and closes the connection.
    fn fail_conn(&mut self, conn: ConnId, error: ProtocolError) {
        match error.code() {
            ErrorCode::LoginTimeout | ErrorCode::Inactivity => self.stats.timeouts += 1,
            _ => self.stats.protocol_errors += 1,
        }
        let frame = Frame::Error {
            code: error.code(),
            text: error.reason().to_owned(),
        };
        self.push_frame(conn, &frame);
        self.close_conn(conn, CloseReason::Protocol(error));
    }

    /// Stops reading a connection, detaches its session, and asks the driver
    /// to close it after its last bytes.
    fn close_conn(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        c.closing = true;
        let phase = c.phase;
        self.mark_dirty(conn);
        self.closes.push(Close { conn, reason });
        if let Phase::Attached(id) = phase {
            self.detach(id, conn);
        }
    }

    /// Detaches `conn` from session `id` if it is attached to it. Responses
    /// it carried and that are not acknowledged go out again on another
    /// attached connection at once (§17.5); with none left, the session is
    /// retained.
    fn detach(&mut self, id: SessionId, conn: ConnId) {
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !s.detach(conn, now) {
            return;
        }
        if s.is_attached() {
            if s.has_unsent() {
                let survivors = s.conns.clone();
                for survivor in survivors {
                    self.mark_dirty(survivor);
                }
            }
        } else {
            let retain = admission::retain_time(&self.config, s);
            self.timers.arm_session(now + retain, id, &mut s.armed);
        }
    }

    fn push_frame(&mut self, conn: ConnId, frame: &Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.out.push(frame, c.digests);
        }
        self.mark_dirty(conn);
    }

    fn mark_dirty(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(conn);
            }
        }
    }

    /// Notes that a session's ack or credit limit changed: schedules a
    /// standalone ACK after the ack delay (or at once when urgent).
    fn owe_ack(&mut self, id: SessionId) {
        let now = self.now;
        let delay = self.config.ack_delay;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(conn) = s.first_conn() else {
            return;
        };
        if !s.ack_owed() && !s.has_unsent() {
            return;
        }
        if s.ack_due.is_none() {
            let due = now + delay;
            s.ack_due = Some(due);
            self.timers.arm_session(due, id, &mut s.armed);
        }
        if s.ack_urgent() || s.has_unsent() || delay.is_zero() {
            self.mark_dirty(conn);
        }
    }
}

/// A duration in whole milliseconds, saturating below [`NEVER_MS`].
pub(crate) fn duration_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).map_or(NEVER_MS - 1, |ms| ms.min(NEVER_MS - 1))
}
