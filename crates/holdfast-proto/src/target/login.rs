//! Login handling at the target: version negotiation, new sessions, recovery
//! (with fencing of the connection it replaces), and rejects with a reason
//! that tells the initiator whether any state survives.

use std::time::Duration;

use crate::error::ProtocolError;
use crate::ids::{ConnId, SessionId, SessionSecret};
use crate::wire::{
    ErrorCode, Frame, Login, LoginAccept, LoginKind, LoginReject, RejectReason, MIN_MAX_FRAME,
    NEVER_MS, VERSION_MAX, VERSION_MIN,
};

use super::session::Session;
use super::{duration_ms, CloseReason, Phase, StateChange, Target, TimerKey};

impl Target {
    pub(super) fn handle_login(&mut self, conn: ConnId, login: Login) -> Result<(), ProtocolError> {
        let version = VERSION_MAX.min(login.max_version);
        if version < VERSION_MIN.max(login.min_version) {
            self.reject(
                conn,
                RejectReason::UnsupportedVersion,
                0,
                "speaks versions 1 to 1",
            );
            return Ok(());
        }
        if let Some(notice) = self.shutdown {
            let hold = notice.hold.map_or(u32::MAX, |h| {
                duration_ms((notice.up_until + h).saturating_since(self.now))
            });
            self.reject(conn, RejectReason::ShuttingDown, hold, "shutting down");
            return Ok(());
        }
        if login.max_frame < MIN_MAX_FRAME {
            self.reject(
                conn,
                RejectReason::MaxFrameTooSmall,
                NEVER_MS,
                &format!("max_frame {} is below {MIN_MAX_FRAME}", login.max_frame),
            );
            return Ok(());
        }
        let (id, secret) = match login.kind {
            LoginKind::New => match self.create_session(&login) {
                Some(created) => created,
                None => {
                    self.reject(
                        conn,
                        RejectReason::TooManySessions,
                        1000,
                        "at the session limit",
                    );
                    return Ok(());
                }
            },
            LoginKind::Recover => match self.recover_session(conn, &login)? {
                Ok(id) => (id, SessionSecret([0; 16])),
                Err(reason) => {
                    self.stats.recoveries_rejected += 1;
                    let retry_after = match reason {
                        RejectReason::MaxFrameTooSmall => NEVER_MS,
                        _ => 0,
                    };
                    self.reject(conn, reason, retry_after, "cannot recover");
                    return Ok(());
                }
            },
        };
        self.attach(conn, id, version, secret, &login);
        Ok(())
    }

    fn create_session(&mut self, login: &Login) -> Option<(SessionId, SessionSecret)> {
        if self.sessions.len() >= self.config.max_sessions {
            return None;
        }
        let id = SessionId::new(self.incarnation, self.next_counter);
        self.next_counter = self.next_counter.wrapping_add(1).max(1);
        let mut secret = [0u8; 16];
        self.random.fill_bytes(&mut secret);
        let secret = SessionSecret(secret);
        let credits = self.config.credits.min(login.requested_credits).max(1);
        self.sessions
            .insert(id, Session::new(id, secret, credits, login.max_frame));
        self.changes.push(StateChange::SessionCreated {
            session: id,
            secret,
            credits,
        });
        self.stats.sessions_created += 1;
        Some((id, secret))
    }

    /// Finds the session a recovery login names and checks its secret.
    /// `Ok(Err(reason))` is a reject; `Err` is a protocol violation.
    fn recover_session(
        &mut self,
        conn: ConnId,
        login: &Login,
    ) -> Result<Result<SessionId, RejectReason>, ProtocolError> {
        let id = login.session;
        let Some(s) = self.sessions.get_mut(&id) else {
            let reason = if id.incarnation() != self.incarnation {
                RejectReason::TargetRestarted
            } else {
                self.tombstones
                    .reason(id)
                    .unwrap_or(RejectReason::UnknownSession)
            };
            return Ok(Err(reason));
        };
        if !s.secret.matches(&login.secret) {
            return Ok(Err(RejectReason::BadSecret));
        }
        if login.max_frame < s.peer_max_frame {
            // Cached responses were sized for the larger limit: resending
            // them would break the new one. Refused before anything changes.
            return Ok(Err(RejectReason::MaxFrameTooSmall));
        }
        s.ack_responses(login.response_ack, &mut self.changes)?;
        s.peer_max_frame = login.max_frame;
        if let Some(old) = s.conn {
            if old != conn {
                self.fence(old);
            }
        }
        self.stats.recoveries_accepted += 1;
        Ok(Ok(id))
    }

    /// Tells the connection a recovery replaced it (ERROR `Fenced`, queued
    /// after whatever it still had to send) and closes it: the driver writes
    /// those last bytes before closing, and no byte it reads is used again.
    fn fence(&mut self, old: ConnId) {
        self.stats.fenced += 1;
        let frame = Frame::Error {
            code: ErrorCode::Fenced,
            text: "another connection recovered this session".to_owned(),
        };
        self.push_frame(old, &frame);
        self.close_conn(old, CloseReason::Fenced);
    }

    fn attach(
        &mut self,
        conn: ConnId,
        id: SessionId,
        version: u16,
        secret: SessionSecret,
        login: &Login,
    ) {
        let keepalive = Duration::from_millis(u64::from(login.keepalive_ms.max(1)));
        // Never shorter than one keep-alive interval (PROTOCOL.md §5.3), or
        // the initiator's keep-alive could not keep the connection up.
        let inactivity = (keepalive * self.config.inactivity_factor)
            .max(self.config.min_inactivity)
            .max(keepalive);
        let digests = login.digests.intersect(self.config.digests);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let resent = s.attach(conn);
        if login.kind == LoginKind::Recover {
            self.stats.answered_from_cache += resent as u64;
        }
        let accept = Frame::LoginAccept(LoginAccept {
            version,
            digests,
            kind: login.kind,
            session: id,
            secret,
            command_ack: s.received(),
            credit_limit: s.limit(),
            max_frame: self.config.max_frame,
            inactivity_ms: duration_ms(inactivity),
            retain_ms: duration_ms(self.config.retain),
            credits: s.credits,
        });
        let has_unsent = s.has_unsent();
        let now = self.now;
        let max_frame = self.config.max_frame;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.out.push(&accept, c.digests);
        c.phase = Phase::Attached(id);
        c.digests = digests;
        c.decoder.set_digests(digests);
        c.decoder.set_max_frame(max_frame);
        c.inactivity = inactivity;
        c.last_recv = now;
        self.timers.arm(now + inactivity, TimerKey::Conn(conn));
        self.mark_dirty(conn);
        if has_unsent {
            self.owe_ack(id);
        }
    }

    /// Answers a LOGIN with LOGIN_REJECT. The connection stays in the login
    /// phase, and its login deadline still counts from the accept: a reject
    /// does not restart it, so no peer can keep an unauthenticated
    /// connection open with failing LOGINs (PROTOCOL.md §5.1).
    fn reject(&mut self, conn: ConnId, reason: RejectReason, retry_after_ms: u32, text: &str) {
        let frame = Frame::LoginReject(LoginReject {
            reason,
            min_version: VERSION_MIN,
            max_version: VERSION_MAX,
            retry_after_ms,
            text: format!("{reason}: {text}"),
        });
        self.push_frame(conn, &frame);
    }
}
