//! Routing one decoded frame of a connection: a peer's ERROR closes it,
//! a LOGIN goes to the login handling, and in an established session
//! commands and messages go to the session (counted in the stats), acks and
//! pings are answered, and a FIN ends the session with all its connections.

use crate::error::ProtocolError;
use crate::ids::{ConnId, SessionId};
use crate::wire::{ErrorCode, Frame, RejectReason};
use crate::Seq;

use super::{CloseReason, Delivery, Phase, Target};

impl Target {
    pub(super) fn handle_frame(&mut self, conn: ConnId, frame: Frame) -> Result<(), ProtocolError> {
        let phase = match self.conns.get(&conn) {
            Some(c) => c.phase,
            None => return Ok(()),
        };
        match (phase, frame) {
            (_, Frame::Error { code, text }) => {
                self.close_conn(conn, CloseReason::PeerError(format!("{code}: {text}")));
                Ok(())
            }
            (Phase::Login, Frame::Login(login)) => self.handle_login(conn, login),
            (Phase::Login, other) => Err(unexpected(&other, "before login")),
            (Phase::Attached(id), frame) => self.handle_session_frame(conn, id, frame),
        }
    }

    pub(super) fn handle_session_frame(
        &mut self,
        conn: ConnId,
        id: SessionId,
        frame: Frame,
    ) -> Result<(), ProtocolError> {
        #[cfg(feature = "test-switches")]
        let deliver_duplicates = self.config.switches.no_dedup;
        #[cfg(not(feature = "test-switches"))]
        let deliver_duplicates = false;
        let Some(s) = self.sessions.get_mut(&id) else {
            return Err(ProtocolError::new(
                ErrorCode::UnexpectedFrame,
                "the session no longer exists",
            ));
        };
        let (command, seq, ack, payload) = match frame {
            Frame::Command { seq, ack, payload } => (true, seq, ack, payload),
            Frame::Message { seq, ack, payload } => (false, seq, ack, payload),
            Frame::InitiatorAck { ack } => {
                s.ack_responses(ack, &mut self.changes)?;
                self.owe_ack(id);
                return Ok(());
            }
            Frame::Ping { token, ack } => {
                s.ack_responses(ack, &mut self.changes)?;
                // Answered at the next Ready, by one PONG for all (§9.1).
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.pong = Some(token);
                }
                self.mark_dirty(conn);
                return Ok(());
            }
            Frame::Fin { last_seq, ack } => return self.handle_fin(conn, id, last_seq, ack),
            fence @ Frame::Fence { .. } => return self.handle_fence(conn, id, fence),
            other => return Err(unexpected(&other, "in an established session")),
        };
        s.ack_responses(ack, &mut self.changes)?;
        let had_messages = s.has_delivered_messages();
        let (early_before, _) = s.reordering();
        let from = self.deliveries.len();
        match s.receive(
            seq,
            command,
            payload,
            conn,
            deliver_duplicates,
            &mut self.changes,
            &mut self.deliveries,
        ) {
            Ok(0) if s.reordering().0 > early_before => {
                self.stats.reordered += 1;
                let held = s.reordering().0 as u64;
                self.stats.reorder_peak = self.stats.reorder_peak.max(held);
            }
            Ok(0) => {
                self.stats.duplicates_dropped += 1;
                if s.has_unsent() {
                    // A duplicate may have moved its response here (§17.5).
                    self.mark_dirty(conn);
                }
            }
            Ok(_) => {
                if !had_messages && s.has_delivered_messages() {
                    self.delivering.push(id);
                }
                for d in &self.deliveries[from..] {
                    match d {
                        Delivery::Command { .. } => self.stats.commands += 1,
                        Delivery::Message { .. } => self.stats.messages += 1,
                    }
                }
            }
            Err(e) => {
                if e.code() == ErrorCode::CreditExceeded {
                    self.stats.credit_violations += 1;
                }
                return Err(e);
            }
        }
        self.owe_ack(id);
        Ok(())
    }

    pub(super) fn handle_fin(
        &mut self,
        conn: ConnId,
        id: SessionId,
        last_seq: Seq,
        ack: Seq,
    ) -> Result<(), ProtocolError> {
        let Some(s) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        s.ack_responses(ack, &mut self.changes)?;
        if !s.can_finish(last_seq) {
            return Err(ProtocolError::new(
                ErrorCode::FinWithOutstanding,
                format!(
                    "FIN at {last_seq} with {} received, {} running, {} responses unacknowledged",
                    s.received(),
                    s.running(),
                    s.cached()
                ),
            ));
        }
        let fin_ack = Frame::FinAck { ack: s.received() };
        let others: Vec<ConnId> = s.conns.iter().copied().filter(|&c| c != conn).collect();
        self.push_frame(conn, &fin_ack);
        for other in others {
            // The session ends: its other connections go with it (§17.6).
            self.close_conn(other, CloseReason::Finished);
        }
        self.end_session(id, RejectReason::SessionClosed);
        self.stats.sessions_closed += 1;
        self.close_conn(conn, CloseReason::Finished);
        Ok(())
    }
}

fn unexpected(frame: &Frame, when: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::UnexpectedFrame,
        format!("frame type {:#04x} is not allowed {when}", frame.kind()),
    )
}
