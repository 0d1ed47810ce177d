//! Frames from the target: login answers, responses, acknowledgements and
//! credit updates, PONGs, shutdown notices and FIN_ACK. Every field is checked
//! against what we sent; a violation closes the connection, never the session.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{CallError, ConnectionError, ProtocolError};
use crate::ids::ConnId;
use crate::time::Timestamp;
use crate::wire::{
    ErrorCode, Frame, LoginAccept, LoginKind, ResponseStatus, NEVER_MS, VERSION_MAX, VERSION_MIN,
};
use crate::Seq;

use super::{Initiator, InitiatorEvent, Lifecycle, DATA_FIXED};

/// How the reason of a connection lost to an ERROR frame that could not be
/// read begins (no ERROR is sent back for it, PROTOCOL.md §8).
pub const UNREADABLE_ERROR: &str = "an ERROR frame that could not be read";

impl Initiator {
    /// Feeds bytes received on connection `conn` (ignored unless it is the
    /// current one).
    pub fn handle_input(&mut self, conn: ConnId, mut data: &[u8], now: Timestamp) {
        if !self.focus(conn) {
            return;
        }
        match self.conn.as_mut() {
            Some(c) if c.id == conn => c.last_recv = now,
            _ => return,
        }
        self.path.received(now);
        self.stats.bytes_in += data.len() as u64;
        loop {
            let (kind, decoded) = match self.conn.as_mut() {
                Some(c) if c.id == conn => {
                    (c.decoder.frame_kind(data), c.decoder.decode(&mut data))
                }
                _ => return,
            };
            let result = match decoded {
                Ok(Some(frame)) => self.handle_frame(frame, now),
                Ok(None) => break,
                // Never answer an ERROR, even one we cannot read (§8).
                Err(e) if kind == Some(crate::wire::frame::kind::ERROR) => {
                    let text = format!("{UNREADABLE_ERROR}: {}", e.reason());
                    let e = ProtocolError::new(e.code(), text);
                    self.out = crate::wire::Outgoing::new();
                    self.lose_connection(ConnectionError::Protocol(e), now);
                    return;
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                self.fail_connection(e, now);
                return;
            }
        }
        self.refresh_expecting(now);
        self.maybe_credit_available();
    }

    /// Tells the target why, then drops the connection.
    fn fail_connection(&mut self, error: ProtocolError, now: Timestamp) {
        let digests = self.conn.as_ref().map(|c| c.digests).unwrap_or_default();
        self.out.push(
            &Frame::Error {
                code: error.code(),
                text: error.reason().to_owned(),
            },
            digests,
        );
        self.lose_connection(ConnectionError::Protocol(error), now);
    }

    fn handle_frame(&mut self, frame: Frame, now: Timestamp) -> Result<(), ProtocolError> {
        let logged_in = self.conn.as_ref().is_some_and(|c| c.logged_in);
        match (logged_in, frame) {
            (_, Frame::Error { code, text }) => {
                self.out = crate::wire::Outgoing::new();
                self.lose_connection(ConnectionError::PeerError { code, text }, now);
                Ok(())
            }
            (false, Frame::LoginAccept(accept)) => self.on_accept(accept, now),
            (false, Frame::LoginReject(reject)) => {
                self.on_reject(reject, now);
                Ok(())
            }
            (
                true,
                Frame::Response {
                    seq,
                    command,
                    ack,
                    limit,
                    payload,
                },
            ) => {
                self.on_ack(ack, limit)?;
                self.on_response(seq, command, Ok(payload), now)
            }
            (
                true,
                Frame::StatusResponse {
                    seq,
                    command,
                    ack,
                    limit,
                    status,
                    text,
                },
            ) => {
                self.on_ack(ack, limit)?;
                let failed = match status {
                    ResponseStatus::NotExecuted => CallError::NotStarted { text },
                    ResponseStatus::ServiceFailed => CallError::ServiceFailed { text },
                    status => CallError::Failed { status, text },
                };
                self.on_response(seq, command, Err(failed), now)
            }
            (true, Frame::TargetAck { ack, limit }) => self.on_ack(ack, limit),
            (true, Frame::Pong { token, ack, limit }) => {
                self.on_ack(ack, limit)?;
                self.on_pong(token, now)
            }
            (
                true,
                Frame::Shutdown {
                    max_up_ms,
                    min_hold_ms,
                    ack,
                    limit,
                },
            ) => {
                self.on_ack(ack, limit)?;
                self.on_shutdown(max_up_ms, min_hold_ms, now);
                Ok(())
            }
            (true, Frame::FinAck { ack }) => self.on_fin_ack(ack),
            (
                true,
                Frame::FenceDone {
                    token,
                    result,
                    waited_ms,
                },
            ) => self.on_fence_done(token, result, waited_ms),
            (_, other) => Err(ProtocolError::new(
                ErrorCode::UnexpectedFrame,
                format!(
                    "frame type {:#04x} is not allowed {}",
                    other.kind(),
                    if logged_in {
                        "after login"
                    } else {
                        "during login"
                    }
                ),
            )),
        }
    }

    fn on_accept(&mut self, a: LoginAccept, now: Timestamp) -> Result<(), ProtocolError> {
        if !(VERSION_MIN..=VERSION_MAX).contains(&a.version) {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!("accepted version {} was not offered", a.version),
            ));
        }
        if a.digests.intersect(self.config.digests) != a.digests {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!(
                    "accepted digests {:?} were not asked for ({:?})",
                    a.digests, self.config.digests
                ),
            ));
        }
        if a.inactivity_ms < self.keepalive_ms() {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!(
                    "inactivity deadline {} ms is shorter than the promised keep-alive of {} ms",
                    a.inactivity_ms,
                    self.keepalive_ms()
                ),
            ));
        }
        let join = self.conn.as_ref().is_some_and(|c| c.join);
        let recovered = match (a.kind, self.session) {
            (LoginKind::Join, Some((id, _))) if join && id == a.session => {
                return self.on_join_accept(a, now);
            }
            _ if join => {
                return Err(ProtocolError::new(
                    ErrorCode::UnexpectedFrame,
                    "LOGIN_ACCEPT does not answer the join we sent",
                ))
            }
            (LoginKind::New, None) => {
                if a.command_ack != 0 {
                    return Err(ack_error(a.command_ack, 0, 0));
                }
                self.session = Some((a.session, a.secret));
                self.stats.sessions += 1;
                self.withdraw_floor = 0;
                false
            }
            (LoginKind::Recover, Some((id, _))) if id == a.session => {
                let highest_sent = self.highest_sent();
                if a.command_ack < self.acked || a.command_ack > highest_sent {
                    return Err(ack_error(a.command_ack, self.acked, highest_sent));
                }
                self.apply_ack(a.command_ack);
                // The target's acknowledgement stops below a MSG its service
                // does not have yet (§6.2), so when the next entry is a MSG
                // the target may hold everything we ever sent: none of it
                // may be dropped or renumbered (§11.3).
                let held_back = self
                    .entries
                    .get(&(a.command_ack + 1))
                    .is_some_and(|e| !e.command);
                self.withdraw_floor = if held_back {
                    highest_sent
                } else {
                    a.command_ack
                };
                self.stats.recoveries += 1;
                true
            }
            _ => {
                return Err(ProtocolError::new(
                    ErrorCode::UnexpectedFrame,
                    "LOGIN_ACCEPT does not answer the login we sent",
                ))
            }
        };
        self.limit = self.limit.max(a.credit_limit);
        self.window = a.credits;
        self.path.accepted(a.quiesce_ms);
        self.max_payload = Some((a.max_frame as usize).saturating_sub(DATA_FIXED));
        self.disconnected_since = None;
        self.reconnect_at = now;
        let naive = self.naive_resend();
        let acked = self.acked;
        let first_unanswered = self.entries.keys().next().copied();
        if self.multi() {
            // A new or recovered session: the target fenced every other
            // connection (§17.2), so everything above its ack goes out
            // again, assigned afresh. (Responses already received above
            // `response_ack` stay known: the target resends every cached
            // one above it, and those are duplicates, §17.4.)
            self.forget_others();
        }
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        c.logged_in = true;
        c.digests = a.digests;
        c.decoder.set_digests(a.digests);
        c.last_recv = now;
        c.send_cursor = acked + 1;
        if naive {
            // Test switch: resend every unanswered command, as a naive
            // reconnect would.
            if let Some(first) = first_unanswered {
                c.send_cursor = c.send_cursor.min(first);
            }
        }
        let cursor = c.send_cursor;
        // Past the floor the target has nothing, and every older connection
        // is fenced: withdrawn calls there can be dropped.
        if !naive {
            self.withdraw_unreceived(cursor.max(self.withdraw_floor + 1));
        }
        self.drain_carry();
        let resent = self
            .entries
            .range(cursor..)
            .filter(|(_, e)| e.transmitted)
            .count() as u64;
        self.events.push_back(InitiatorEvent::Connected {
            session: a.session,
            recovered,
            resent,
        });
        Ok(())
    }

    /// The answer to a join (§17.2): the connection now carries the
    /// session's traffic beside the others. Its `command_ack` is applied
    /// like any acknowledgement (it may be older than one already seen on
    /// another connection); nothing is resent for it and nothing withdrawn.
    fn on_join_accept(&mut self, a: LoginAccept, now: Timestamp) -> Result<(), ProtocolError> {
        self.on_ack(a.command_ack, a.credit_limit)?;
        self.window = a.credits;
        self.max_payload = Some((a.max_frame as usize).saturating_sub(DATA_FIXED));
        self.disconnected_since = None;
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        c.logged_in = true;
        c.digests = a.digests;
        c.decoder.set_digests(a.digests);
        c.last_recv = now;
        let conn = c.id;
        self.events.push_back(InitiatorEvent::Joined {
            session: a.session,
            conn,
        });
        Ok(())
    }

    /// Moves carried calls into the new session as credit allows.
    pub(super) fn drain_carry(&mut self) {
        while !self.carry.is_empty()
            && self.next_seq <= self.limit
            && self.entries.len() < self.config.credits as usize
        {
            let Some(c) = self.carry.pop_front() else {
                break;
            };
            // The new session's target may accept less than the lost one
            // did: such a call cannot be sent (it would be refused with
            // FrameTooLarge on every reconnect), so it fails alone.
            if let Some(max) = self.max_payload.filter(|&max| c.payload.len() > max) {
                self.stats.calls_failed += 1;
                self.events.push_back(InitiatorEvent::CallFailed {
                    call: c.call,
                    error: CallError::TooLargeForTarget {
                        len: c.payload.len(),
                        max,
                        may_have_executed: c.earlier.sent(),
                    },
                });
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.stats.reissued += 1;
            self.entries.insert(
                seq,
                super::Entry {
                    call: c.call,
                    command: c.command,
                    payload: Some(c.payload),
                    retry_safe: c.retry_safe,
                    transmitted: false,
                    earlier: c.earlier,
                    abandoned: false,
                    sent_at: None,
                    via: None,
                    on_wire: false,
                },
            );
        }
    }

    /// Applies the target's cumulative acknowledgement and credit limit.
    ///
    /// The ack may cover more than this connection carried: a MSG the
    /// target received on an earlier connection is acknowledged only once
    /// its service has it (§6.2), which can be after the LOGIN_ACCEPT of a
    /// recovery. So it is bounded by what was sent in this session.
    fn on_ack(&mut self, ack: Seq, limit: Seq) -> Result<(), ProtocolError> {
        let sent = self.conn.as_ref().map_or(self.acked, |c| c.send_cursor - 1);
        if ack < self.acked && self.multi() {
            // Acknowledgements travel on several connections and may
            // overtake each other: an older one is stale (§17.3); its limit
            // still counts if higher.
            if limit > self.limit {
                self.limit = limit;
                self.drain_carry();
            }
            return Ok(());
        }
        if ack < self.acked || (ack > sent && ack > self.highest_sent()) {
            return Err(ack_error(ack, self.acked, self.highest_sent().max(sent)));
        }
        self.apply_ack(ack);
        if !self.naive_resend() {
            // What the target acknowledged is never sent again.
            if let Some(c) = self.conn.as_mut() {
                c.send_cursor = c.send_cursor.max(ack + 1);
            }
        }
        if limit > self.limit {
            self.limit = limit;
            self.drain_carry();
        }
        Ok(())
    }

    /// The highest sequence sent in this session (on any connection), or
    /// the last ack accepted if higher. Entries at or below the ack may be
    /// gone; every one above it is still held.
    pub(super) fn highest_sent(&self) -> Seq {
        self.entries
            .range(self.acked + 1..)
            .rev()
            .find(|(_, e)| e.transmitted)
            .map_or(self.acked, |(s, _)| *s)
    }

    fn apply_ack(&mut self, ack: Seq) {
        if ack <= self.acked {
            return;
        }
        let keep_commands = self.naive_resend();
        // Walks the newly acknowledged entries in order, looking each next
        // one up afresh (messages are removed on the way), without
        // collecting their sequence numbers first.
        let mut from = self.acked + 1;
        while from <= ack {
            let Some((&seq, e)) = self.entries.range_mut(from..=ack).next() else {
                break;
            };
            let next = seq.checked_add(1);
            if e.command {
                if !e.retry_safe && !keep_commands {
                    e.payload = None;
                }
            } else {
                let call = e.call;
                self.entries.remove(&seq);
                self.stats.messages_delivered += 1;
                self.events
                    .push_back(InitiatorEvent::MessageDelivered { call });
            }
            let Some(next) = next else {
                break;
            };
            from = next;
        }
        self.acked = ack;
    }

    /// A RESP, or a status response (`Err`: the command executed but its
    /// response could not be delivered; the call fails with that error).
    fn on_response(
        &mut self,
        seq: Seq,
        command: Seq,
        outcome: Result<Bytes, CallError>,
        now: Timestamp,
    ) -> Result<(), ProtocolError> {
        if seq != self.response_ack + 1 && self.multi() {
            // Several connections (§17.4): responses may arrive out of
            // order, and a response the target wrote again on a survivor
            // may also arrive on the connection that was dying.
            if seq <= self.response_ack || self.responses_seen.contains(&seq) {
                self.stats.duplicate_responses += 1;
                return Ok(());
            }
            if seq - self.response_ack > u64::from(self.window.max(1)) {
                return Err(ProtocolError::new(
                    ErrorCode::SequenceGap,
                    format!(
                        "response {seq} is beyond the window of {} above {}",
                        self.window, self.response_ack
                    ),
                ));
            }
        } else if seq != self.response_ack + 1 {
            return Err(ProtocolError::new(
                ErrorCode::SequenceGap,
                format!("expected response {}, got {seq}", self.response_ack + 1),
            ));
        }
        let known = self
            .entries
            .get(&command)
            .is_some_and(|e| e.command && command <= self.acked);
        if !known {
            return Err(ProtocolError::new(
                ErrorCode::UnknownCommand,
                format!("response {seq} answers command {command}, which is not outstanding"),
            ));
        }
        let Some(entry) = self.entries.remove(&command) else {
            return Ok(());
        };
        if let Some(sent) = entry.sent_at {
            self.sample_rtt(now.saturating_since(sent));
        }
        self.responses_seen.insert(seq);
        while self.responses_seen.remove(&(self.response_ack + 1)) {
            self.response_ack += 1;
        }
        self.ack_owed += 1;
        self.ack_owed_since.get_or_insert(now);
        self.stats.responses += 1;
        self.events.push_back(match outcome {
            Ok(payload) => InitiatorEvent::Response {
                call: entry.call,
                payload,
            },
            Err(error) => {
                self.stats.calls_failed += 1;
                InitiatorEvent::CallFailed {
                    call: entry.call,
                    error,
                }
            }
        });
        self.drain_carry();
        Ok(())
    }

    fn on_pong(&mut self, token: u64, now: Timestamp) -> Result<(), ProtocolError> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        match c.ping {
            Some((t, sent)) if t == token => {
                c.ping = None;
                self.sample_rtt(now.saturating_since(sent));
                Ok(())
            }
            _ => Err(ProtocolError::new(
                ErrorCode::UnexpectedPong,
                format!("PONG {token} answers no outstanding PING"),
            )),
        }
    }

    fn on_shutdown(&mut self, max_up_ms: u32, min_hold_ms: u32, now: Timestamp) {
        let up_until = now + Duration::from_millis(u64::from(max_up_ms));
        let reconnect_at = (min_hold_ms != NEVER_MS)
            .then(|| up_until + Duration::from_millis(u64::from(min_hold_ms)));
        if let Some(c) = self.conn.as_mut() {
            c.up_until = Some(up_until);
        }
        self.reconnect_at = reconnect_at.unwrap_or(Timestamp::NEVER);
        self.events.push_back(InitiatorEvent::ShutdownNotice {
            up_until,
            reconnect_at,
        });
    }

    fn on_fin_ack(&mut self, ack: Seq) -> Result<(), ProtocolError> {
        let fin_sent = self.conn.as_ref().is_some_and(|c| c.fin_sent);
        if !fin_sent || ack != self.next_seq - 1 {
            return Err(ProtocolError::new(
                ErrorCode::UnexpectedFrame,
                format!("FIN_ACK {ack} without a matching FIN"),
            ));
        }
        self.finish_closed();
        Ok(())
    }

    fn sample_rtt(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    /// True while the session is closing (for recovery).
    pub(super) fn is_closing(&self) -> bool {
        self.lifecycle == Lifecycle::Closing
    }
}

fn ack_error(ack: Seq, low: Seq, high: Seq) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::AckOutOfRange,
        format!("acknowledgement {ack} outside [{low}, {high}]"),
    )
}
