//! One session as the target keeps it: the initiator's stream as received, the
//! commands still running, and the response stream (which *is* the response
//! cache: a response stays until the initiator acknowledges it).
//!
//! Credits: a session holds at most `credits` unfinished messages. A command
//! is unfinished from its receipt until its response is acknowledged, so its
//! response space is reserved when it is accepted; a one-way message is
//! unfinished until it is delivered. The limit advertised to the initiator is
//! `received + (credits - held)`, which never decreases.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;

use crate::error::ProtocolError;
use crate::ids::{ConnId, SessionId, SessionSecret};
use crate::time::Timestamp;
use crate::wire::frame::MAX_TEXT;
use crate::wire::{Digests, ErrorCode, Frame, Outgoing, ResponseStatus, STATUS_CODE_LEN};
use crate::Seq;

use super::ready::{Delivery, StateChange};

/// A response kept until the initiator acknowledges it.
#[derive(Debug)]
struct Cached {
    seq: Seq,
    command: Seq,
    /// The response; for a status response, its UTF-8 text.
    payload: Bytes,
    /// Set for a status response (sent as RESP with the STATUS flag).
    status: Option<ResponseStatus>,
}

/// Per-session state at the target.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) secret: SessionSecret,
    /// The credit window.
    pub(crate) credits: u32,
    /// The attached connection, if any.
    pub(crate) conn: Option<ConnId>,
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
    /// Commands delivered to the service and not yet completed.
    running: BTreeSet<Seq>,
    /// Responses not yet acknowledged, in response-sequence order.
    cache: VecDeque<Cached>,
    /// The next response sequence number.
    next_response: Seq,
    /// Highest response acknowledged by the initiator.
    responses_acked: Seq,
    /// The next response to send on the attached connection.
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
            conn: None,
            detached_since: None,
            expiry_deferred: false,
            peer_max_frame,
            received: 0,
            held: 0,
            running: BTreeSet::new(),
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
        self.conn = Some(conn);
        self.detached_since = None;
        self.expiry_deferred = false;
        self.send_cursor = self.responses_acked + 1;
        self.advertised = (self.ack(), self.limit());
        self.ack_due = None;
        self.owed = 0;
        self.cache.len()
    }

    /// Detaches the connection; the session is retained from `now`.
    pub(crate) fn detach(&mut self, now: Timestamp) {
        self.conn = None;
        self.detached_since = Some(now);
        self.ack_due = None;
    }

    /// Applies the initiator's cumulative acknowledgement of responses.
    pub(crate) fn ack_responses(
        &mut self,
        ack: Seq,
        changes: &mut Vec<StateChange>,
    ) -> Result<(), ProtocolError> {
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

    /// Receives a command or message. Duplicates (already received) are
    /// dropped and return `Ok(None)`, unless the test switch disables that.
    pub(crate) fn receive(
        &mut self,
        seq: Seq,
        command: bool,
        payload: Bytes,
        deliver_duplicates: bool,
        changes: &mut Vec<StateChange>,
    ) -> Result<Option<Delivery>, ProtocolError> {
        if seq == 0 {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                "sequence number 0",
            ));
        }
        if seq <= self.received {
            if deliver_duplicates {
                return Ok(Some(self.delivery(seq, command, payload)));
            }
            return Ok(None);
        }
        if seq != self.received + 1 {
            return Err(ProtocolError::new(
                ErrorCode::SequenceGap,
                format!("expected sequence {}, got {seq}", self.received + 1),
            ));
        }
        if self.held >= self.credits {
            return Err(ProtocolError::new(
                ErrorCode::CreditExceeded,
                format!(
                    "sequence {seq} exceeds the credit limit {} ({} credits)",
                    self.limit(),
                    self.credits
                ),
            ));
        }
        self.received = seq;
        self.held += 1;
        self.owed += 1;
        if command {
            self.running.insert(seq);
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
        Ok(Some(self.delivery(seq, command, payload)))
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
    pub(crate) fn release_delivered(&mut self) {
        self.handed_message = None;
        self.held = self
            .held
            .saturating_sub(std::mem::take(&mut self.releasing));
    }

    /// True when a command with this sequence is running.
    pub(crate) fn is_running(&self, seq: Seq) -> bool {
        self.running.contains(&seq)
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
        self.running.remove(&seq);
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
        });
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

    /// Writes unsent responses, then a standalone ACK if one is owed and due.
    /// Returns true if anything was written.
    pub(crate) fn write_output(
        &mut self,
        out: &mut Outgoing,
        digests: Digests,
        now: Timestamp,
    ) -> bool {
        let mut wrote = false;
        let (ack, limit) = (self.ack(), self.limit());
        // The cache is in response order: skip straight to the send cursor.
        let first = self.cache.front().map_or(self.send_cursor, |c| c.seq);
        let skip = usize::try_from(self.send_cursor.saturating_sub(first)).unwrap_or(usize::MAX);
        for cached in self.cache.iter().skip(skip) {
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
            wrote = true;
        }
        self.send_cursor = self.next_response;
        if !wrote
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
