//! The initiator side of the protocol: it issues commands and one-way
//! messages, keeps each until the target has it, resends exactly the
//! unacknowledged tail on a new connection, respects its credit limit on every
//! connection, detects dead connections, and fails calls honestly when the
//! target lost the session.
//!
//! # Driving an initiator (call order)
//!
//! 1. Open a transport connection and call [`Initiator::connect`].
//! 2. Feed received bytes to [`Initiator::handle_input`]; report the
//!    transport's end with [`Initiator::connection_lost`].
//! 3. After every input (and after `call`/`send`/`close`), write everything
//!    [`Initiator::poll_transmit`] returns, then drain [`Initiator::poll_event`].
//! 4. Arm a timer for [`Initiator::poll_timeout`]; when it passes call
//!    [`Initiator::handle_timeout`] and go to 3.
//!
//! On `ConnectionLost`, close the transport (after writing any last bytes)
//! and reconnect no earlier than the event's `reconnect_at`.

mod conns;
mod events;
mod fence;
mod receive;
mod recovery;
mod withdraw;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::config::InitiatorConfig;
use crate::error::{ConnectError, ConnectionError, SessionLoss, SubmitError};
use crate::ids::{CallId, ConnId, SessionId, SessionSecret};
use crate::time::{earliest, Timestamp};
use crate::wire::{
    Decoder, Digests, Direction, Frame, Login, LoginKind, Outgoing, NEVER_MS, VERSION_MAX,
    VERSION_MIN,
};
use crate::Seq;

pub use events::{CallOptions, InitiatorEvent, InitiatorStats};
pub use fence::{FenceError, MAX_PENDING_FENCES};
pub use receive::UNREADABLE_ERROR;

/// Fixed fields of a CMD or MSG frame: the payload limit is the target's
/// frame limit minus this.
const DATA_FIXED: usize = 16;

/// A command or message of the current session, from submission until the
/// target acknowledged it (message) or answered it (command).
#[derive(Debug)]
struct Entry {
    call: CallId,
    command: bool,
    /// Kept until acknowledged, and for retry-safe commands until answered.
    payload: Option<Bytes>,
    retry_safe: bool,
    /// Sent at least once in the current session.
    transmitted: bool,
    /// What earlier, lost sessions may have done with it.
    earlier: Earlier,
    /// The caller withdrew it ([`Initiator::abandon`]): it is never re-issued
    /// in a new session, and dropped unsent as soon as the target is known
    /// not to have it.
    abandoned: bool,
    /// When it was last sent (for the round-trip estimate).
    sent_at: Option<Timestamp>,
    /// With several connections (§17): the connection it is assigned to
    /// (and, with `on_wire`, was written to); `None` until assigned, and
    /// again once that connection is lost.
    via: Option<ConnId>,
    /// Written to `via`.
    on_wire: bool,
}

/// A call carried over from a lost session, waiting for a sequence number
/// in the new one.
#[derive(Debug)]
struct Carried {
    call: CallId,
    command: bool,
    payload: Bytes,
    retry_safe: bool,
    /// What the lost sessions may have done with it.
    earlier: Earlier,
}

/// What lost sessions may have done with a call carried out of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Earlier {
    /// Never sent in any of them.
    #[default]
    NotSent,
    /// Sent in a session the target has ended: it may have executed there,
    /// and never will again (§11.1).
    Ended,
    /// Sent in a session whose loss did not prove it ended (`BadSecret`):
    /// it may still execute there.
    InDoubt(SessionLoss),
}

impl Entry {
    /// Sent in this session or an earlier one: it may have executed.
    fn ever_sent(&self) -> bool {
        self.transmitted || self.earlier.sent()
    }
}

impl Earlier {
    /// True if a lost session may have executed it.
    fn sent(&self) -> bool {
        *self != Earlier::NotSent
    }

    /// The state after losing `lost`, for a call sent (`sent_now`) or not
    /// in that session.
    fn after(self, sent_now: bool, lost: &SessionLoss) -> Earlier {
        match self {
            Earlier::InDoubt(_) => self,
            _ if sent_now && !lost.fences() => Earlier::InDoubt(lost.clone()),
            _ if sent_now => Earlier::Ended,
            other => other,
        }
    }
}

/// The current transport connection.
#[derive(Debug)]
struct Connection {
    id: ConnId,
    decoder: Decoder,
    digests: Digests,
    opened: Timestamp,
    logged_in: bool,
    last_send: Timestamp,
    last_recv: Timestamp,
    /// Since when a reply has been expected (for the detection bound).
    expecting_since: Option<Timestamp>,
    /// The outstanding PING: token and send time.
    ping: Option<(u64, Timestamp)>,
    /// The next sequence to send on this connection.
    send_cursor: Seq,
    fin_sent: bool,
    /// The shutdown notice's up-until time, if one arrived on this connection.
    up_until: Option<Timestamp>,
    /// Logs in with a join (kind 2) beside the session's other connections.
    join: bool,
}

/// Where the session is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lifecycle {
    Active,
    Closing,
    Closed,
    Ended(SessionLoss),
}

/// The initiator state machine for one session.
#[derive(Debug)]
pub struct Initiator {
    config: InitiatorConfig,
    lifecycle: Lifecycle,
    session: Option<(SessionId, SessionSecret)>,
    conn: Option<Connection>,
    /// The session's other connections (§17), out of focus.
    others: Vec<conns::Other>,
    /// The round-robin spread's position.
    round_robin: usize,
    /// Responses received above `response_ack`: with several connections
    /// they may arrive out of order (§17.4). Bounded by the window.
    responses_seen: BTreeSet<Seq>,
    /// Outstanding work of the current session, by sequence number.
    entries: BTreeMap<Seq, Entry>,
    /// Calls from a lost session waiting to be re-issued, in order.
    carry: VecDeque<Carried>,
    next_seq: Seq,
    /// The target's cumulative acknowledgement of our stream.
    acked: Seq,
    /// The highest sequence the target may have received, as far as the
    /// last recovery login tells (its acknowledgement, or everything sent
    /// when a MSG it has not delivered holds the acknowledgement back):
    /// withdrawn calls at or below it are never dropped or renumbered.
    withdraw_floor: Seq,
    /// The highest sequence we may send.
    limit: Seq,
    /// The credit window the target granted in its last LOGIN_ACCEPT (our
    /// requested window until then): it sets the standalone-ACK threshold.
    window: u32,
    /// Largest payload the target accepts (known after the first login).
    max_payload: Option<usize>,
    /// Our cumulative acknowledgement of the target's stream.
    response_ack: Seq,
    /// Responses received since our last frame that carried an ack.
    ack_owed: u32,
    ack_owed_since: Option<Timestamp>,
    out: Outgoing,
    events: VecDeque<InitiatorEvent>,
    next_call: u64,
    next_token: u64,
    /// A submission was refused for credit; announce when it may succeed.
    credit_wanted: bool,
    /// Do not reconnect before this (the target's hold time).
    reconnect_at: Timestamp,
    /// When the last connection was lost (for the session-loss timeout).
    disconnected_since: Option<Timestamp>,
    /// Smoothed round-trip estimate.
    srtt: Option<Duration>,
    stats: InitiatorStats,
    /// Epoch, quiesce time, contact times, unanswered fences.
    path: fence::PathInfo,
}

impl Initiator {
    /// Creates an initiator with no session yet; the first `connect` logs in
    /// to a new one.
    pub fn new(config: InitiatorConfig, now: Timestamp) -> Self {
        Initiator {
            window: config.credits,
            path: fence::PathInfo::new(config.epoch),
            config,
            lifecycle: Lifecycle::Active,
            session: None,
            conn: None,
            others: Vec::new(),
            round_robin: 0,
            responses_seen: BTreeSet::new(),
            entries: BTreeMap::new(),
            carry: VecDeque::new(),
            next_seq: 1,
            acked: 0,
            withdraw_floor: 0,
            limit: 0,
            max_payload: None,
            response_ack: 0,
            ack_owed: 0,
            ack_owed_since: None,
            out: Outgoing::new(),
            events: VecDeque::new(),
            next_call: 1,
            next_token: 1,
            credit_wanted: false,
            reconnect_at: now,
            disconnected_since: Some(now),
            srtt: None,
            stats: InitiatorStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &InitiatorConfig {
        &self.config
    }

    /// The current session, once logged in.
    pub fn session(&self) -> Option<SessionId> {
        self.session.map(|(id, _)| id)
    }

    /// Counters.
    pub fn stats(&self) -> &InitiatorStats {
        &self.stats
    }

    /// True while a connection is logged in.
    pub fn is_connected(&self) -> bool {
        self.logged_in_connections() > 0
    }

    /// The current connection's id, if any.
    pub fn connection(&self) -> Option<ConnId> {
        self.conn.as_ref().map(|c| c.id)
    }

    /// Calls and messages not yet finished (sent or waiting to be).
    pub fn outstanding(&self) -> usize {
        self.entries.len() + self.carry.len()
    }

    /// True once the session closed with FIN or ended for good.
    pub fn is_finished(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Closed | Lifecycle::Ended(_))
    }

    /// The smoothed round-trip estimate, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Bytes buffered for a partial frame, and the capacity reserved for them.
    pub fn buffered(&self) -> (usize, usize) {
        self.conn
            .as_ref()
            .map_or((0, 0), |c| (c.decoder.buffered(), c.decoder.capacity()))
    }

    /// Earliest time the target allows a reconnect.
    pub fn reconnect_at(&self) -> Timestamp {
        self.reconnect_at
    }

    /// Issues a command; its response arrives as [`InitiatorEvent::Response`].
    pub fn call(
        &mut self,
        payload: Bytes,
        options: CallOptions,
        now: Timestamp,
    ) -> Result<CallId, SubmitError> {
        self.submit(true, payload, options, now)
    }

    /// Sends a one-way message; its delivery is confirmed by
    /// [`InitiatorEvent::MessageDelivered`].
    pub fn send(
        &mut self,
        payload: Bytes,
        options: CallOptions,
        now: Timestamp,
    ) -> Result<CallId, SubmitError> {
        self.submit(false, payload, options, now)
    }

    /// True when a submission would not be refused for credit.
    pub fn can_submit(&self) -> bool {
        self.lifecycle == Lifecycle::Active && self.has_credit()
    }

    fn has_credit(&self) -> bool {
        if self.ignores_credits() {
            return self.session.is_some();
        }
        self.session.is_some()
            && self.carry.is_empty()
            && self.next_seq <= self.limit
            && self.entries.len() < self.config.credits as usize
    }

    fn submit(
        &mut self,
        command: bool,
        payload: Bytes,
        options: CallOptions,
        _now: Timestamp,
    ) -> Result<CallId, SubmitError> {
        match &self.lifecycle {
            Lifecycle::Active => {}
            Lifecycle::Closing | Lifecycle::Closed => return Err(SubmitError::Closing),
            Lifecycle::Ended(loss) => return Err(SubmitError::Ended(loss.clone())),
        }
        if let Some(max) = self.max_payload {
            if payload.len() > max {
                return Err(SubmitError::PayloadTooLarge {
                    len: payload.len(),
                    max,
                });
            }
        }
        if !self.has_credit() {
            self.credit_wanted = true;
            return Err(SubmitError::NoCredit);
        }
        let call = CallId(self.next_call);
        self.next_call += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            seq,
            Entry {
                call,
                command,
                payload: Some(payload),
                retry_safe: options.retry_safe,
                transmitted: false,
                earlier: Earlier::NotSent,
                abandoned: false,
                sent_at: None,
                via: None,
                on_wire: false,
            },
        );
        Ok(call)
    }

    /// Starts a clean close: no new work is accepted; once everything
    /// outstanding is finished a FIN is exchanged and [`InitiatorEvent::Closed`] follows.
    pub fn close(&mut self, _now: Timestamp) {
        if self.lifecycle != Lifecycle::Active {
            return;
        }
        if self.session.is_none() && self.entries.is_empty() && self.carry.is_empty() {
            self.finish_closed();
            return;
        }
        self.lifecycle = Lifecycle::Closing;
    }

    /// Abandons the session: every outstanding call fails.
    pub fn abort(&mut self, now: Timestamp) {
        if !self.is_finished() {
            self.end_session(SessionLoss::Aborted, now);
        }
    }

    /// The driver opened a new transport connection; a LOGIN is queued on it
    /// (recovery if a session exists, else a new session). Any previous
    /// connection is abandoned.
    pub fn connect(&mut self, conn: ConnId, now: Timestamp) -> Result<(), ConnectError> {
        if self.is_finished() {
            return Err(ConnectError::Ended);
        }
        if now < self.reconnect_at {
            return Err(ConnectError::TooEarly(self.reconnect_at));
        }
        self.out = Outgoing::new();
        self.forget_others();
        self.conn = Some(Connection {
            id: conn,
            decoder: Decoder::new(Direction::ToInitiator, self.config.max_frame),
            digests: Digests::NONE,
            opened: now,
            logged_in: false,
            last_send: now,
            last_recv: now,
            expecting_since: Some(now),
            ping: None,
            send_cursor: self.acked + 1,
            fin_sent: false,
            up_until: None,
            join: false,
        });
        self.stats.connects += 1;
        self.queue_login();
        Ok(())
    }

    fn queue_login(&mut self) {
        let join = self.conn.as_ref().is_some_and(|c| c.join);
        let (kind, session, secret) = match self.session {
            Some((id, secret)) if join => (LoginKind::Join, id, secret),
            Some((id, secret)) => (LoginKind::Recover, id, secret),
            None => (LoginKind::New, SessionId(0), SessionSecret([0; 16])),
        };
        let login = Frame::Login(Login {
            min_version: VERSION_MIN,
            max_version: VERSION_MAX,
            kind,
            digests: self.config.digests,
            session,
            secret,
            response_ack: self.response_ack,
            max_frame: self.config.max_frame,
            keepalive_ms: self.keepalive_ms(),
            requested_credits: self.config.credits,
            host: self.host_record(),
        });
        self.out.push(&login, Digests::NONE);
    }

    /// The keep-alive interval promised in LOGIN: whole milliseconds, at
    /// least 1 and, like every finite duration, below [`NEVER_MS`].
    fn keepalive_ms(&self) -> u32 {
        u32::try_from(self.config.keepalive.as_millis())
            .unwrap_or(u32::MAX)
            .clamp(1, NEVER_MS - 1)
    }

    /// The driver reports that connection `conn` ended. Ignored if it is not
    /// one of the session's connections.
    pub fn connection_lost(&mut self, conn: ConnId, now: Timestamp) {
        if self.focus(conn) {
            self.lose_connection(ConnectionError::TransportClosed, now);
        }
    }

    /// Bytes to write to the current connection, if any. Call until `None`
    /// after every input.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Timestamp) -> Option<Vec<Bytes>> {
        self.prepare_transmit(now).then(|| self.out.take_chunks())
    }

    /// Like [`Initiator::poll_transmit`], but appends the bytes to `out`
    /// and returns whether there were any. A driver that drains `out` and
    /// hands the same vector in again allocates no chunk list per write.
    pub fn poll_transmit_into(&mut self, now: Timestamp, out: &mut Vec<Bytes>) -> bool {
        let any = self.prepare_transmit(now);
        if any {
            self.out.take_chunks_into(out);
        }
        any
    }

    /// Queues the frames due and accounts for sending them; true when
    /// there are bytes to take.
    fn prepare_transmit(&mut self, now: Timestamp) -> bool {
        if self.conn.as_ref().is_some_and(|c| c.logged_in) {
            self.write_session_frames(now);
        }
        if self.out.is_empty() {
            return false;
        }
        self.stats.bytes_out += self.out.len() as u64;
        if let Some(c) = self.conn.as_mut() {
            c.last_send = now;
        }
        self.path.sent(now);
        self.refresh_expecting(now);
        true
    }

    /// Writes data frames, FIN, a standalone ACK and a keep-alive PING as due.
    fn write_session_frames(&mut self, now: Timestamp) {
        let ignore_credits = self.ignores_credits();
        let estimate = self.srtt.unwrap_or_default() + self.config.shutdown_margin;
        let multi = self.multi();
        let wrote_assigned = multi && self.write_assigned(now);
        let fin_elsewhere = multi && self.fin_sent_anywhere();
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        let digests = c.digests;
        let mut carried_ack = wrote_assigned;
        let cutoff = c.up_until.map(|up| up.saturating_since(now));
        let from = if multi { Seq::MAX } else { c.send_cursor };
        for (&seq, e) in self.entries.range_mut(from..) {
            if seq > self.limit && !ignore_credits {
                break;
            }
            if cutoff.is_some_and(|left| estimate > left) {
                break; // cannot finish before the announced shutdown
            }
            let Some(payload) = e.payload.clone() else {
                break; // unreachable: unacknowledged entries keep their payload
            };
            let frame = if e.command {
                Frame::Command {
                    seq,
                    ack: self.response_ack,
                    payload,
                }
            } else {
                Frame::Message {
                    seq,
                    ack: self.response_ack,
                    payload,
                }
            };
            self.out.push(&frame, digests);
            if e.transmitted {
                self.stats.resent += 1;
            }
            e.transmitted = true;
            e.sent_at = Some(now);
            c.send_cursor = seq + 1;
            carried_ack = true;
        }
        let idle = self.entries.is_empty() && self.carry.is_empty();
        if self.lifecycle == Lifecycle::Closing && idle && !c.fin_sent && !fin_elsewhere {
            self.out.push(
                &Frame::Fin {
                    last_seq: self.next_seq - 1,
                    ack: self.response_ack,
                },
                digests,
            );
            c.fin_sent = true;
            carried_ack = true;
        }
        let ack_due = self
            .ack_owed_since
            .is_some_and(|since| since + self.config.ack_delay <= now);
        // A quarter of the granted window, as at the target: the responses
        // we have not acknowledged hold the target's credits.
        let ack_urgent = self.ack_owed >= (self.window / 4).max(1);
        let ping_due = c.ping.is_none() && {
            let idle_send = c.last_send + self.config.keepalive <= now;
            let overdue = c
                .expecting_since
                .is_some_and(|s| s.max(c.last_recv) + self.config.keepalive <= now);
            idle_send || overdue
        };
        if ping_due {
            let token = self.next_token;
            self.next_token += 1;
            self.out.push(
                &Frame::Ping {
                    token,
                    ack: self.response_ack,
                },
                digests,
            );
            c.ping = Some((token, now));
            self.stats.pings += 1;
            carried_ack = true;
        }
        if !carried_ack && self.ack_owed > 0 && (ack_due || ack_urgent) {
            self.out.push(
                &Frame::InitiatorAck {
                    ack: self.response_ack,
                },
                digests,
            );
            self.stats.acks += 1;
            carried_ack = true;
        }
        if carried_ack {
            self.ack_owed = 0;
            self.ack_owed_since = None;
        }
    }

    /// True while a reply is awaited on the current connection.
    fn expecting(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| {
            !c.logged_in
                || c.ping.is_some()
                || c.fin_sent
                || if self.multi() {
                    self.awaits_on(c.id)
                } else {
                    self.entries.range(..c.send_cursor).next().is_some()
                }
        })
    }

    fn refresh_expecting(&mut self, now: Timestamp) {
        let expecting = self.expecting();
        if let Some(c) = self.conn.as_mut() {
            match (expecting, c.expecting_since) {
                (true, None) => c.expecting_since = Some(now),
                (false, Some(_)) => c.expecting_since = None,
                _ => {}
            }
        }
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<InitiatorEvent> {
        self.events.pop_front()
    }

    /// The next time [`Initiator::handle_timeout`] must be called, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let Some(c) = self.conn.as_ref() else {
            return match (&self.lifecycle, self.disconnected_since) {
                (Lifecycle::Active | Lifecycle::Closing, Some(since)) => self
                    .config
                    .session_loss_timeout
                    .filter(|_| self.session.is_some() || !self.carry.is_empty())
                    .map(|t| since + t),
                _ => None,
            };
        };
        // A standalone ACK can only go out on a logged-in connection.
        let ack = self
            .ack_owed_since
            .filter(|_| self.ack_owed > 0 && self.is_connected())
            .map(|s| s + self.config.ack_delay);
        earliest(earliest(self.conn_timeout(c), self.others_timeout()), ack)
    }

    /// The next deadline of one connection: its login timeout, detection
    /// bound or keep-alive.
    fn conn_timeout(&self, c: &Connection) -> Option<Timestamp> {
        if !c.logged_in {
            return Some(c.opened + self.config.login_timeout);
        }
        let dead = c
            .expecting_since
            .map(|s| s.max(c.last_recv) + self.config.dead_after);
        let ping = if c.ping.is_some() {
            None
        } else {
            let idle = c.last_send + self.config.keepalive;
            let overdue = c
                .expecting_since
                .map(|s| s.max(c.last_recv) + self.config.keepalive);
            earliest(Some(idle), overdue)
        };
        earliest(dead, ping)
    }

    /// Handles timers due at `now`: login timeout, the detection bound, the
    /// session-loss timeout. (PINGs and ACKs come out of `poll_transmit`.)
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if !self.others.is_empty() {
            self.timeout_all(now);
            return;
        }
        self.timeout_focused(now);
    }

    /// The timers of the connection in focus (or, with none, the session's).
    fn timeout_focused(&mut self, now: Timestamp) {
        let Some(c) = self.conn.as_ref() else {
            if let (Some(since), Some(limit)) =
                (self.disconnected_since, self.config.session_loss_timeout)
            {
                let active = matches!(self.lifecycle, Lifecycle::Active | Lifecycle::Closing);
                if active
                    && since + limit <= now
                    && (self.session.is_some() || !self.carry.is_empty())
                {
                    self.end_session(SessionLoss::GaveUp(limit), now);
                }
            }
            return;
        };
        if !c.logged_in {
            if c.opened + self.config.login_timeout <= now {
                let t = self.config.login_timeout;
                self.lose_connection(ConnectionError::LoginTimeout(t), now);
            }
            return;
        }
        if let Some(since) = c.expecting_since {
            if since.max(c.last_recv) + self.config.dead_after <= now {
                let t = self.config.dead_after;
                self.lose_connection(ConnectionError::Timeout(t), now);
            }
        }
    }

    fn ignores_credits(&self) -> bool {
        #[cfg(feature = "test-switches")]
        {
            self.config.switches.ignore_credits
        }
        #[cfg(not(feature = "test-switches"))]
        {
            false
        }
    }

    fn naive_resend(&self) -> bool {
        #[cfg(feature = "test-switches")]
        {
            self.config.switches.no_dedup
        }
        #[cfg(not(feature = "test-switches"))]
        {
            false
        }
    }

    /// Announces credit if a submission was refused and would now succeed.
    fn maybe_credit_available(&mut self) {
        if self.credit_wanted && self.can_submit() {
            self.credit_wanted = false;
            self.events.push_back(InitiatorEvent::CreditAvailable);
        }
    }

    fn finish_closed(&mut self) {
        self.lifecycle = Lifecycle::Closed;
        self.conn = None;
        self.others.clear();
        self.events.push_back(InitiatorEvent::Closed);
    }
}
