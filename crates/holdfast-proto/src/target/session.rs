//! One session as the target keeps it: the initiator's stream as received, the
//! commands still running, and the response stream (which *is* the response
//! cache: a response stays until the initiator acknowledges it).
//!
//! Credits: a session holds at most `credits` unfinished messages. A command
//! is unfinished from its receipt until its response is acknowledged, so its
//! response space is reserved when it is accepted; a one-way message is
//! unfinished until it is delivered. The limit advertised to the initiator is
//! `received + (credits - held)`, which never decreases.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::error::ProtocolError;
use crate::ids::{ConnId, SessionId, SessionSecret};
use crate::time::Timestamp;
use crate::wire::frame::MAX_TEXT;
use crate::wire::{Digests, ErrorCode, Frame, Outgoing, ResponseStatus, STATUS_CODE_LEN};
use crate::Seq;

use super::ready::{Delivery, StateChange};
use super::reorder::{Early, Reorder};
use crate::store::StoredSession;

/// A response kept until the initiator acknowledges it.
#[derive(Debug)]
struct Cached {
    seq: Seq,
    command: Seq,
    /// The response; for a status response, its UTF-8 text.
    payload: Bytes,
    /// Set for a status response (sent as RESP with the STATUS flag).
    status: Option<ResponseStatus>,
    /// The connection its command arrived on: it goes back there while
    /// that connection is attached (PROTOCOL.md §17.4).
    origin: ConnId,
    /// The attached connection it was last written to; `None` when it
    /// still has to be (again, after that connection went away).
    sent_on: Option<ConnId>,
}

/// Per-session state at the target.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) secret: SessionSecret,
    /// The credit window.
    pub(crate) credits: u32,
    /// The attached connections, in the order they attached (PROTOCOL.md
    /// §17: one unless the initiator joined more).
    pub(crate) conns: Vec<ConnId>,
    /// A join was accepted: sequence numbers may arrive out of order across
    /// connections, and acknowledgements may arrive stale (§17.3).
    pub(crate) multi: bool,
    /// Commands and messages that arrived ahead of their turn (§17.3).
    reorder: Reorder,
    /// When the last connection went away (for the retain timer).
    pub(crate) detached_since: Option<Timestamp>,
    /// The retain time passed while commands still ran: the session ends
    /// when the last of them completes (unless a connection recovers it).
    pub(crate) expiry_deferred: bool,
    /// Largest frame the initiator accepts.
    pub(crate) peer_max_frame: u32,
    /// Highest contiguous sequence received from the initiator.
    received: Seq,
    /// Unfinished messages (see module docs).
    held: u32,
    /// Commands delivered to the service and not yet completed, with the
    /// connection each arrived on.
    running: BTreeMap<Seq, ConnId>,
    /// Responses not yet acknowledged, in response-sequence order.
    cache: VecDeque<Cached>,
    /// The next response sequence number.
    next_response: Seq,
    /// Highest response acknowledged by the initiator.
    responses_acked: Seq,
    /// The lowest response that may still have to be written: every cached
    /// response below it is on an attached connection's wire.
    send_cursor: Seq,
    /// What the initiator was last told (ack, limit) on this connection.
    advertised: (Seq, Seq),
    /// When a standalone ACK becomes due, if one is owed.
    pub(crate) ack_due: Option<Timestamp>,
    /// The earliest timer entry of this session known to be in the target's
    /// heap (see `Timers::arm_session`); `None` when unknown.
    pub(crate) armed: Option<Timestamp>,
    /// Messages delivered since the last Ready was taken.
    delivered_messages: u32,
    /// Messages delivered in the Ready now with the driver, released at advance.
    releasing: u32,
    /// The lowest message received since the last Ready was taken, and the
    /// lowest in the Ready now with the driver: the acknowledgement stops
    /// below them until the driver confirms the service has them (§6.2).
    queued_message: Option<Seq>,
    handed_message: Option<Seq>,
    /// The driver has not yet handed this session's delivered messages to
    /// the service (`Target::hold_messages`): `advance` leaves them out.
    pub(crate) untaken: bool,
    /// Received since the last frame that carried an ack.
    owed: u32,
    /// Host, last contact and fence (PROTOCOL.md §11.4–§11.5).
    pub(crate) path: super::quiesce::PathState,
    /// Retain time already spent while the target was down (a session
    /// restored from its store, §12): taken off its next retain time, and
    /// zero again once a connection attaches.
    pub(crate) retain_cut: std::time::Duration,
    /// Rebuilt by `Target::restore` and not yet recovered: a recovery that
    /// acknowledges responses the store never had is refused (§12).
    pub(crate) restored: bool,
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        secret: SessionSecret,
        credits: u32,
        peer_max_frame: u32,
    ) -> Self {
        Session {
            id,
            secret,
            credits,
            conns: Vec::new(),
            multi: false,
            reorder: Reorder::default(),
            detached_since: None,
            expiry_deferred: false,
            peer_max_frame,
            received: 0,
            held: 0,
            running: BTreeMap::new(),
            cache: VecDeque::new(),
            next_response: 1,
            responses_acked: 0,
            send_cursor: 1,
            advertised: (0, 0),
            ack_due: None,
            armed: None,
            delivered_messages: 0,
            releasing: 0,
            queued_message: None,
            handed_message: None,
            untaken: false,
            owed: 0,
            path: super::quiesce::PathState::default(),
            retain_cut: std::time::Duration::ZERO,
            restored: false,
        }
    }

    /// The highest sequence number the initiator may send.
    pub(crate) fn limit(&self) -> Seq {
        self.received + u64::from(self.credits.saturating_sub(self.held))
    }

    /// The largest response payload the initiator accepts: its frame
    /// limit less RESP's 32 bytes of fixed fields (digests are not counted
    /// in a frame's length).
    pub(crate) fn max_response(&self) -> usize {
        (self.peer_max_frame as usize).saturating_sub(32)
    }

    /// Highest contiguous sequence received.
    pub(crate) fn received(&self) -> Seq {
        self.received
    }

    /// The acknowledgement to advertise: the highest sequence *N* such that
    /// every CMD/MSG up to *N* is received and every MSG up to *N* is
    /// delivered (the driver confirmed, with `advance`, that the service
    /// has it). Never above `received`, never decreasing.
    pub(crate) fn ack(&self) -> Seq {
        match self.handed_message.or(self.queued_message) {
            Some(first) => first - 1,
            None => self.received,
        }
    }

    /// Unfinished messages held (bounded by `credits`).
    pub(crate) fn held(&self) -> u32 {
        self.held
    }

    /// Responses cached (bounded by `credits`).
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Bytes of payload held in the response cache.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.cache.iter().map(|c| c.payload.len()).sum()
    }

    /// Commands running in the service.
    pub(crate) fn running(&self) -> usize {
        self.running.len()
    }

    /// Attaches a (new) connection: every unacknowledged response will be
    /// sent again on it, and the initiator is re-told the ack and limit.
    /// Returns how many cached responses will be resent.
    pub(crate) fn attach(&mut self, conn: ConnId) -> usize {
        if !self.conns.contains(&conn) {
            self.conns.push(conn);
        }
        self.detached_since = None;
        self.expiry_deferred = false;
        self.retain_cut = std::time::Duration::ZERO;
        self.advertised = (self.ack(), self.limit());
        self.ack_due = None;
        self.owed = 0;
        self.cache.iter().filter(|c| c.sent_on.is_none()).count()
    }

    /// The first attached connection: standalone acknowledgements go there.
    pub(crate) fn first_conn(&self) -> Option<ConnId> {
        self.conns.first().copied()
    }

    /// True while a connection is attached.
    pub(crate) fn is_attached(&self) -> bool {
        !self.conns.is_empty()
    }

    /// Detaches `conn`, if attached. The responses written to it and not
    /// yet acknowledged are written again on another attached connection
    /// (or on the next one). When it was the last, the session is retained
    /// from `now`. Returns true when `conn` was attached.
    pub(crate) fn detach(&mut self, conn: ConnId, now: Timestamp) -> bool {
        let Some(i) = self.conns.iter().position(|&c| c == conn) else {
            return false;
        };
        self.conns.remove(i);
        for cached in self.cache.iter_mut().filter(|c| c.sent_on == Some(conn)) {
            cached.sent_on = None;
            self.send_cursor = self.send_cursor.min(cached.seq);
        }
        if self.conns.is_empty() {
            self.detached_since = Some(now);
            self.ack_due = None;
        }
        true
    }

    /// Empties the reorder buffer: a recovery fenced every connection its
    /// entries came on, and the initiator resends (possibly renumbered,
    /// §11.3) everything above the LOGIN_ACCEPT's `command_ack` (§17.3).
    pub(crate) fn drop_early(&mut self) {
        self.reorder.clear();
    }

    /// Sequence numbers held in the reorder buffer, and their payload bytes.
    pub(crate) fn reordering(&self) -> (usize, usize) {
        (self.reorder.len(), self.reorder.bytes())
    }

    /// Applies the initiator's cumulative acknowledgement of responses.
    pub(crate) fn ack_responses(
        &mut self,
        ack: Seq,
        changes: &mut Vec<StateChange>,
    ) -> Result<(), ProtocolError> {
        if self.multi && ack < self.responses_acked {
            // Acknowledgements travel on several connections and may
            // overtake each other: an older one is stale, not wrong (§17.3).
            return Ok(());
        }
        if ack < self.responses_acked || ack >= self.next_response {
            return Err(ProtocolError::new(
                ErrorCode::AckOutOfRange,
                format!(
                    "response ack {ack} outside [{}, {}]",
                    self.responses_acked,
                    self.next_response - 1
                ),
            ));
        }
        if ack == self.responses_acked {
            return Ok(());
        }
        while self.cache.front().is_some_and(|c| c.seq <= ack) {
            self.cache.pop_front();
            self.held = self.held.saturating_sub(1);
        }
        self.responses_acked = ack;
        self.send_cursor = self.send_cursor.max(ack + 1);
        changes.push(StateChange::ResponsesAcked {
            session: self.id,
            through: ack,
        });
        Ok(())
    }

    /// Receives a command or message that arrived on `conn`, pushing what
    /// it makes deliverable to `deliveries` (in sequence order) and returning
    /// how many. Duplicates (already received, or already waiting in the
    /// reorder buffer) are dropped and return 0, unless the test switch
    /// disables that. A sequence number ahead of the stream is a gap on a
    /// session with one connection; with several (§17.3) it waits in the
    /// reorder buffer if it is within the credit limit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn receive(
        &mut self,
        seq: Seq,
        command: bool,
        payload: Bytes,
        conn: ConnId,
        deliver_duplicates: bool,
        changes: &mut Vec<StateChange>,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<usize, ProtocolError> {
        if seq == 0 {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                "sequence number 0",
            ));
        }
        if seq <= self.received || self.reorder.holds(seq) {
            if self.multi && command && seq <= self.received {
                self.redirect(seq, conn);
            }
            if deliver_duplicates && seq <= self.received {
                deliveries.push(self.delivery(seq, command, payload));
                return Ok(1);
            }
            return Ok(0);
        }
        if seq != self.received + 1 && !self.multi {
            return Err(ProtocolError::new(
                ErrorCode::SequenceGap,
                format!("expected sequence {}, got {seq}", self.received + 1),
            ));
        }
        if seq > self.limit() {
            return Err(ProtocolError::new(
                ErrorCode::CreditExceeded,
                format!(
                    "sequence {seq} exceeds the credit limit {} ({} credits)",
                    self.limit(),
                    self.credits
                ),
            ));
        }
        if seq != self.received + 1 {
            let early = Early {
                command,
                payload,
                conn,
            };
            self.reorder.hold(seq, early);
            return Ok(0);
        }
        self.accept(seq, command, payload, conn, changes, deliveries);
        let mut count = 1;
        // Whatever waited for this one follows, in order. Each was within
        // the limit when it arrived, and receiving one leaves the limit
        // where it was, so none of them can exceed the credits now.
        while let Some(next) = self.received.checked_add(1) {
            let Some(early) = self.reorder.take(next) else {
                break;
            };
            self.accept(
                next,
                early.command,
                early.payload,
                early.conn,
                changes,
                deliveries,
            );
            count += 1;
        }
        Ok(count)
    }

    /// A copy of command `seq` arrived again on `conn`: the initiator sent
    /// it there because it lost the connection it first used (§17.5), so
    /// the command's response goes to `conn` from now on, and is written
    /// again there if it was already written elsewhere and is not yet
    /// acknowledged. (The initiator drops a response it gets twice.)
    fn redirect(&mut self, seq: Seq, conn: ConnId) {
        if let Some(origin) = self.running.get_mut(&seq) {
            *origin = conn;
            return;
        }
        if let Some(cached) = self.cache.iter_mut().find(|c| c.command == seq) {
            cached.origin = conn;
            if cached.sent_on != Some(conn) {
                cached.sent_on = None;
                self.send_cursor = self.send_cursor.min(cached.seq);
            }
        }
    }

    /// Receives the stream's next sequence number.
    fn accept(
        &mut self,
        seq: Seq,
        command: bool,
        payload: Bytes,
        conn: ConnId,
        changes: &mut Vec<StateChange>,
        deliveries: &mut Vec<Delivery>,
    ) {
        self.received = seq;
        self.held += 1;
        self.owed += 1;
        if command {
            self.running.insert(seq, conn);
        }
        changes.push(StateChange::Received {
            session: self.id,
            seq,
            command,
            payload: payload.clone(),
        });
        if !command {
            self.delivered_messages += 1;
            self.queued_message.get_or_insert(seq);
        }
        deliveries.push(self.delivery(seq, command, payload));
    }

    /// True when messages were delivered since the last Ready was taken.
    pub(crate) fn has_delivered_messages(&self) -> bool {
        self.delivered_messages > 0
    }

    fn delivery(&self, seq: Seq, command: bool, payload: Bytes) -> Delivery {
        if command {
            Delivery::Command {
                session: self.id,
                seq,
                payload,
            }
        } else {
            Delivery::Message {
                session: self.id,
                seq,
                payload,
            }
        }
    }

    /// Called when a Ready is taken: the messages delivered so far are now
    /// with the driver. Returns true if any are.
    pub(crate) fn hand_out_deliveries(&mut self) -> bool {
        self.releasing += std::mem::take(&mut self.delivered_messages);
        if let Some(first) = self.queued_message.take() {
            self.handed_message = Some(self.handed_message.map_or(first, |h| h.min(first)));
        }
        self.releasing > 0
    }

    /// Called at advance: the messages of the last Ready have been delivered,
    /// so their credits return and the acknowledgement may cover them.
    /// Records that the service has taken them ([`StateChange::MessagesDelivered`]
    /// up to the new acknowledgement: every message up to it is taken), in
    /// the next Ready, before any byte that carries that acknowledgement.
    /// (`record` false only under the test switch `no_delivered_record`.)
    pub(crate) fn release_delivered(&mut self, changes: &mut Vec<StateChange>, record: bool) {
        self.handed_message = None;
        let released = std::mem::take(&mut self.releasing);
        self.held = self.held.saturating_sub(released);
        if released > 0 && record {
            changes.push(StateChange::MessagesDelivered {
                session: self.id,
                through: self.ack(),
            });
        }
    }

    /// True when a command with this sequence is running.
    pub(crate) fn is_running(&self, seq: Seq) -> bool {
        self.running.contains_key(&seq)
    }

    /// Records a command's response in the cache: the service's, or (with
    /// `status`) a status response whose `payload` is its UTF-8 text.
    pub(crate) fn complete(
        &mut self,
        seq: Seq,
        payload: Bytes,
        status: Option<ResponseStatus>,
        changes: &mut Vec<StateChange>,
    ) {
        let origin = self.running.remove(&seq).unwrap_or(ConnId(u64::MAX));
        let response = self.next_response;
        self.next_response += 1;
        changes.push(StateChange::Completed {
            session: self.id,
            command: seq,
            response,
            payload: payload.clone(),
            status,
        });
        self.cache.push_back(Cached {
            seq: response,
            command: seq,
            payload,
            status,
            origin,
            sent_on: None,
        });
    }

    /// The connection a response that came from `origin` goes out on: its
    /// own while attached, else the first attached one.
    fn route(&self, origin: ConnId) -> Option<ConnId> {
        if self.conns.contains(&origin) {
            Some(origin)
        } else {
            self.first_conn()
        }
    }

    /// The connection the newest response goes out on, if any is attached.
    pub(crate) fn newest_route(&self) -> Option<ConnId> {
        self.cache.back().and_then(|c| self.route(c.origin))
    }

    /// True when FIN may be accepted: everything up to `last_seq` received,
    /// every message delivered, nothing running, every response acknowledged.
    pub(crate) fn can_finish(&self, last_seq: Seq) -> bool {
        last_seq == self.received
            && self.running.is_empty()
            && self.cache.is_empty()
            && self.ack() == self.received
    }

    /// True when the ack or limit the initiator knows is stale.
    pub(crate) fn ack_owed(&self) -> bool {
        self.advertised != (self.ack(), self.limit())
    }

    /// How many received messages make a standalone ACK urgent.
    pub(crate) fn ack_threshold(&self) -> u32 {
        (self.credits / 4).max(1)
    }

    /// True when the ack should go out without waiting for the ack delay.
    pub(crate) fn ack_urgent(&self) -> bool {
        self.owed >= self.ack_threshold()
            || self.limit() >= self.advertised.1 + u64::from(self.ack_threshold())
    }

    /// Writes the unsent responses that go out on `conn` (§17.4), then, on
    /// the first attached connection, a standalone ACK if one is owed and
    /// due. Returns true if anything was written.
    pub(crate) fn write_output(
        &mut self,
        conn: ConnId,
        out: &mut Outgoing,
        digests: Digests,
        now: Timestamp,
    ) -> bool {
        let mut wrote = false;
        let (ack, limit) = (self.ack(), self.limit());
        let first_conn = self.first_conn();
        // The cache is in response order: skip straight to the send cursor.
        let first = self.cache.front().map_or(self.send_cursor, |c| c.seq);
        let skip = usize::try_from(self.send_cursor.saturating_sub(first)).unwrap_or(usize::MAX);
        let mut lowest_unsent = None;
        let conns = &self.conns;
        for cached in self.cache.iter_mut().skip(skip) {
            if cached.sent_on.is_some() {
                continue;
            }
            let route = if conns.contains(&cached.origin) {
                Some(cached.origin)
            } else {
                first_conn
            };
            if route != Some(conn) {
                lowest_unsent.get_or_insert(cached.seq);
                continue;
            }
            let frame = match cached.status {
                None => Frame::Response {
                    seq: cached.seq,
                    command: cached.command,
                    ack,
                    limit,
                    payload: cached.payload.clone(),
                },
                Some(status) => Frame::StatusResponse {
                    seq: cached.seq,
                    command: cached.command,
                    ack,
                    limit,
                    status,
                    text: String::from_utf8_lossy(&cached.payload).into_owned(),
                },
            };
            out.push(&frame, digests);
            cached.sent_on = Some(conn);
            wrote = true;
        }
        self.send_cursor = lowest_unsent.unwrap_or(self.next_response);
        if !wrote
            && first_conn == Some(conn)
            && self.ack_owed()
            && (self.ack_urgent() || self.ack_due.is_some_and(|d| d <= now))
        {
            out.push(&Frame::TargetAck { ack, limit }, digests);
            wrote = true;
        }
        if wrote {
            self.mark_advertised();
        }
        wrote
    }

    /// Records that the current ack and limit reached the wire.
    pub(crate) fn mark_advertised(&mut self) {
        self.advertised = (self.ack(), self.limit());
        self.owed = 0;
        self.ack_due = None;
    }

    /// True when responses are waiting to be sent.
    pub(crate) fn has_unsent(&self) -> bool {
        self.send_cursor < self.next_response
    }

    /// Highest response acknowledged.
    pub(crate) fn responses_acked(&self) -> Seq {
        self.responses_acked
    }

    /// The next response sequence number (one above the highest issued).
    pub(crate) fn next_response(&self) -> Seq {
        self.next_response
    }

    /// Rebuilds a detached session from its stored state (PROTOCOL.md §12):
    /// its response cache (every entry to be sent again), its running
    /// commands (the stored commands not completed, `origin` unknown) and
    /// the one-way messages the service had not taken, which wait to be
    /// handed out again (the acknowledgement stays below the first of them
    /// until the driver confirms it has them). Returns the session and the
    /// commands and messages to deliver again, in sequence order. The
    /// caller attaches nothing: the session is detached.
    pub(crate) fn from_stored(
        id: SessionId,
        stored: &StoredSession,
    ) -> Result<(Session, Vec<Delivery>), String> {
        let secret = stored.secret.ok_or("no secret stored")?;
        if stored.credits == 0 {
            return Err("a credit window of 0".into());
        }
        let mut s = Session::new(id, secret, stored.credits, stored.max_frame);
        s.restored = true;
        s.received = stored.received;
        s.responses_acked = stored.responses_acked;
        if stored.last_response < stored.responses_acked {
            return Err(format!(
                "highest response {} below the acknowledged {}",
                stored.last_response, stored.responses_acked
            ));
        }
        s.next_response = stored
            .last_response
            .checked_add(1)
            .ok_or("response sequence overflow")?;
        s.send_cursor = stored.responses_acked + 1;
        // The unacknowledged responses are exactly acked+1 ..= last.
        let mut expect = stored.responses_acked;
        for (&seq, (command, payload)) in &stored.responses {
            expect += 1;
            if seq != expect {
                return Err(format!("response {seq} stored where {expect} was expected"));
            }
            if *command == 0 || *command > stored.received {
                return Err(format!(
                    "response {seq} answers command {command}, not received (received {})",
                    stored.received
                ));
            }
            if stored.pending.contains_key(command) {
                return Err(format!("command {command} is both answered and pending"));
            }
            s.cache.push_back(Cached {
                seq,
                command: *command,
                payload: payload.clone(),
                status: stored.statuses.get(&seq).copied(),
                origin: ConnId(u64::MAX),
                sent_on: None,
            });
        }
        if expect != stored.last_response {
            return Err(format!(
                "responses {}..={} are missing from the cache",
                expect + 1,
                stored.last_response
            ));
        }
        if let Some(seq) = stored
            .statuses
            .keys()
            .find(|r| !stored.responses.contains_key(r))
        {
            return Err(format!("status of response {seq} without the response"));
        }
        let mut deliveries = Vec::with_capacity(stored.pending.len());
        for (&seq, (command, payload)) in &stored.pending {
            if seq == 0 || seq > stored.received {
                return Err(format!(
                    "pending sequence {seq} outside 1..={}",
                    stored.received
                ));
            }
            if *command {
                s.running.insert(seq, ConnId(u64::MAX));
            } else {
                if seq <= stored.messages_delivered {
                    return Err(format!(
                        "message {seq} pending though the service took every one up to {}",
                        stored.messages_delivered
                    ));
                }
                s.delivered_messages += 1;
                s.queued_message.get_or_insert(seq);
            }
            deliveries.push(s.delivery(seq, *command, payload.clone()));
        }
        let held = s.cache.len() + stored.pending.len();
        s.held = u32::try_from(held)
            .ok()
            .filter(|&h| h <= s.credits)
            .ok_or_else(|| {
                format!(
                    "{held} unfinished commands and messages exceed the {} credits",
                    s.credits
                )
            })?;
        Ok((s, deliveries))
    }
}

/// The text of a `ResponseTooLarge` status response, cut to fit a payload
/// of `max` bytes (after the 2-byte code) and [`MAX_TEXT`].
pub(crate) fn oversized_text(len: usize, max: usize) -> String {
    let text = format!(
        "the command executed; its response of {len} bytes exceeds the initiator's limit of {max} bytes"
    );
    status_text(text, max)
}

/// Cuts a status response's text, on a character boundary, to fit a
/// payload of `max` bytes (after the 2-byte code) and [`MAX_TEXT`].
pub(crate) fn status_text(mut text: String, max: usize) -> String {
    let room = max.saturating_sub(STATUS_CODE_LEN).min(MAX_TEXT);
    if text.len() > room {
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
