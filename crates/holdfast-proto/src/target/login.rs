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
        // One answer at a time (§5.1): a LOGIN that arrives before the
        // reject of the previous one was handed out closes the connection,
        // so a flood of LOGINs costs one LOGIN_REJECT, not one each.
        let source = match self.conns.get(&conn) {
            Some(c) if c.reject_queued => {
                return Err(ProtocolError::new(
                    ErrorCode::UnexpectedFrame,
                    "LOGIN before the answer to the previous LOGIN was sent",
                ))
            }
            Some(c) => c.source,
            None => return Ok(()),
        };
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
        let max_keepalive = duration_ms(self.config.max_inactivity);
        if login.keepalive_ms == 0 || login.keepalive_ms > max_keepalive {
            self.reject(
                conn,
                RejectReason::KeepaliveRejected,
                NEVER_MS,
                &format!(
                    "keepalive_ms {} is outside 1 to {max_keepalive}",
                    login.keepalive_ms
                ),
            );
            return Ok(());
        }
        if let Some((reason, retry_after, text)) = self.host_refusal(&login) {
            if login.kind != LoginKind::New {
                self.stats.recoveries_rejected += 1;
            }
            self.reject(conn, reason, retry_after, &text);
            return Ok(());
        }
        let (id, secret) = match login.kind {
            LoginKind::New if !self.source_has_room(source) => {
                self.reject(
                    conn,
                    RejectReason::TooManySessions,
                    1000,
                    "at the session limit of this source address",
                );
                return Ok(());
            }
            LoginKind::New => match self.create_session(&login, source) {
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
            LoginKind::Recover | LoginKind::Join if self.store_behind(&login) => {
                self.stats.recoveries_rejected += 1;
                let text = format!(
                    "the target restarted from a store that lost state of session {} it had                      confirmed (the initiator acknowledged response {}); the session ended,                      and its calls may or may not have executed",
                    login.session, login.response_ack
                );
                self.reject(conn, RejectReason::TargetRestarted, 0, &text);
                return Ok(());
            }
            LoginKind::Recover | LoginKind::Join => match self.recover_session(conn, &login)? {
                Ok(id) => (id, SessionSecret([0; 16])),
                Err(reason) => {
                    self.stats.recoveries_rejected += 1;
                    let (retry_after, text) = match reason {
                        RejectReason::MaxFrameTooSmall => (NEVER_MS, "cannot recover"),
                        RejectReason::TooManySessions => {
                            (1000, "at the connection limit of this session")
                        }
                        _ => (0, "cannot recover"),
                    };
                    self.reject(conn, reason, retry_after, text);
                    return Ok(());
                }
            },
        };
        self.attach(conn, id, version, secret, &login);
        Ok(())
    }

    fn create_session(
        &mut self,
        login: &Login,
        source: Option<super::SourceKey>,
    ) -> Option<(SessionId, SessionSecret)> {
        if self.sessions.len() >= self.config.max_sessions {
            return None;
        }
        let id = self.next_session_id()?;
        let mut secret = [0u8; 16];
        self.random.fill_bytes(&mut secret);
        let secret = SessionSecret(secret);
        let credits = self.config.credits.min(login.requested_credits).max(1);
        self.sessions
            .insert(id, Session::new(id, secret, credits, login.max_frame));
        self.session_from(id, source);
        self.changes.push(StateChange::SessionCreated {
            session: id,
            secret,
            credits,
            host: login.host,
            max_frame: login.max_frame,
        });
        self.stats.sessions_created += 1;
        Some((id, secret))
    }

    /// The next free session id. The counter wraps after 2^32 − 1 sessions
    /// (0 is never used); an id still held by a live session, or remembered
    /// in a tombstone, is skipped, so an id never names two sessions and a
    /// late recovery of an ended one still gets its precise reason. `None`
    /// only if every counter value is taken, which the session and
    /// tombstone limits make impossible in practice.
    fn next_session_id(&mut self) -> Option<SessionId> {
        for _ in 0..u32::MAX {
            let id = SessionId::new(self.incarnation, self.next_counter);
            self.next_counter = self.next_counter.wrapping_add(1).max(1);
            if !self.sessions.contains_key(&id) && self.tombstones.reason(id).is_none() {
                return Some(id);
            }
        }
        None
    }

    /// Finds the session a recovery or join login names and checks its
    /// secret; a recovery then fences every connection of the session, a
    /// join none (PROTOCOL.md §17.2). `Ok(Err(reason))` is a reject; `Err`
    /// is a protocol violation.
    fn recover_session(
        &mut self,
        conn: ConnId,
        login: &Login,
    ) -> Result<Result<SessionId, RejectReason>, ProtocolError> {
        let id = login.session;
        let Some(s) = self.sessions.get_mut(&id) else {
            // Id 0 is never issued (§2): unknown, whatever the incarnation.
            let reason = if id == SessionId(0) {
                RejectReason::UnknownSession
            } else if id.incarnation() != self.incarnation {
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
        let join = login.kind == LoginKind::Join;
        if join && s.conns.len() >= self.config.max_session_connections {
            return Ok(Err(RejectReason::TooManySessions));
        }
        s.ack_responses(login.response_ack, &mut self.changes)?;
        if login.max_frame > s.peer_max_frame {
            self.changes.push(StateChange::MaxFrameRaised {
                session: id,
                max_frame: login.max_frame,
            });
        }
        s.peer_max_frame = login.max_frame;
        // In step with the initiator now: a later ack beyond the cache is
        // its own violation, not a store that fell behind.
        s.restored = false;
        #[cfg(feature = "test-switches")]
        let fencing = !self.config.switches.no_fencing;
        #[cfg(not(feature = "test-switches"))]
        let fencing = true;
        if join {
            // Sequence numbers may now arrive out of order (§17.3).
            s.multi = true;
            self.stats.joins_accepted += 1;
            return Ok(Ok(id));
        }
        // What waits in the reorder buffer came on connections this
        // recovery fences: the initiator resends it above `command_ack`,
        // and may renumber it (§11.3, §17.3), so it must not run later.
        s.drop_early();
        let old: Vec<ConnId> = s.conns.iter().copied().filter(|&c| c != conn).collect();
        for old in old {
            if fencing {
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
        let inactivity_ms = inactivity_ms(&self.config, login.keepalive_ms);
        // Enforced exactly as advertised, to the millisecond.
        let inactivity = Duration::from_millis(u64::from(inactivity_ms));
        let digests = login.digests.intersect(self.config.digests);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let resent = s.attach(conn);
        if login.kind == LoginKind::New {
            s.path.host = login.host;
        }
        s.path.inactivity = inactivity;
        s.path.last_contact = s.path.last_contact.max(self.now);
        let quiesce_ms =
            super::quiesce::quiesce_ms(&self.config, inactivity_ms, s.path.host.is_some());
        if login.kind != LoginKind::New {
            self.stats.answered_from_cache += resent as u64;
        }
        let accept = Frame::LoginAccept(LoginAccept {
            version,
            digests,
            kind: login.kind,
            session: id,
            secret,
            command_ack: s.ack(),
            credit_limit: s.limit(),
            max_frame: self.config.max_frame,
            inactivity_ms,
            retain_ms: duration_ms(self.config.retain),
            credits: s.credits,
            quiesce_ms,
        });
        let has_unsent = s.has_unsent();
        let now = self.now;
        let max_frame = self.config.max_frame;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.out.push(&accept, c.digests);
        let was_login = c.phase == Phase::Login;
        c.phase = Phase::Attached(id);
        c.digests = digests;
        c.decoder.set_digests(digests);
        c.decoder.set_max_frame(max_frame);
        c.inactivity = inactivity;
        c.last_recv = now;
        self.timers.arm(now + inactivity, TimerKey::Conn(conn));
        if was_login {
            self.login_done();
        }
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
        if let Some(c) = self.conns.get_mut(&conn) {
            c.reject_queued = true;
        }
    }
}

/// The inactivity deadline granted for a `keepalive_ms` the target accepted
/// (1 to `max_inactivity`), in whole milliseconds (PROTOCOL.md §5.3):
/// `min(max(keepalive × factor, min_inactivity, keepalive), max_inactivity)`,
/// with `min_inactivity` rounded up and `max_inactivity` down to whole
/// milliseconds. Never below `keepalive_ms`, since that is at most
/// `max_inactivity`.
fn inactivity_ms(config: &crate::config::TargetConfig, keepalive_ms: u32) -> u32 {
    let ceil_ms = |d: Duration| u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let keepalive = u64::from(keepalive_ms);
    let wanted = (keepalive * u64::from(config.inactivity_factor))
        .max(ceil_ms(config.min_inactivity))
        .max(keepalive);
    let cap = u64::from(duration_ms(config.max_inactivity));
    u32::try_from(wanted.min(cap)).unwrap_or(NEVER_MS - 1)
}

#[cfg(test)]
mod tests {
    use crate::config::TargetConfig;
    use crate::ids::{ConnId, SessionId, SessionSecret};
    use crate::random::SeededRandom;
    use crate::target::Target;
    use crate::time::Timestamp;
    use crate::wire::{
        encode_to_vec, Decoder, Digests, Direction, Frame, Login, LoginKind, RejectReason,
    };

    /// Logs in to a new session on a new connection and returns its id.
    fn new_session(target: &mut Target, conn: u64) -> SessionId {
        let now = Timestamp::ZERO;
        let conn = ConnId(conn);
        target.accept(conn, now).expect("accept");
        let login = Frame::Login(Login {
            min_version: 1,
            max_version: 1,
            kind: LoginKind::New,
            digests: Digests::NONE,
            session: SessionId(0),
            secret: SessionSecret([0; 16]),
            response_ack: 0,
            max_frame: 1 << 16,
            keepalive_ms: 500,
            requested_credits: 4,
            host: None,
        });
        target.handle_input(conn, &encode_to_vec(&login, Digests::NONE), now);
        let mut decoder = Decoder::new(Direction::ToInitiator, u32::MAX);
        let ready = target.ready();
        target.advance(now);
        for t in ready.transmits.iter().filter(|t| t.conn == conn) {
            for chunk in &t.chunks {
                let mut input = &chunk[..];
                if let Ok(Some(Frame::LoginAccept(a))) = decoder.decode(&mut input) {
                    return a.session;
                }
            }
        }
        panic!("no LOGIN_ACCEPT");
    }

    fn counter(id: SessionId) -> u32 {
        id.0 as u32
    }

    #[test]
    fn session_ids_skip_live_and_remembered_ones_when_the_counter_wraps() {
        let mut target = Target::new(
            TargetConfig::default(),
            Box::new(SeededRandom::new(3)),
            Timestamp::ZERO,
        );
        let first = new_session(&mut target, 1);
        let ended = new_session(&mut target, 2);
        let third = new_session(&mut target, 3);
        assert_eq!([first, ended, third].map(counter), [1, 2, 3]);
        let first_secret = target.sessions[&first].secret;
        target.end_session(ended, RejectReason::SessionExpired);
        // Four billion sessions later, the counter is about to wrap.
        target.next_counter = u32::MAX;
        let last = new_session(&mut target, 4);
        assert_eq!(counter(last), u32::MAX);
        // 0 is never used, 1 and 3 are live, 2 is remembered as expired.
        let wrapped = new_session(&mut target, 5);
        assert_eq!(counter(wrapped), 4);
        assert_eq!(target.session_count(), 4, "no session was replaced");
        assert!(target.sessions[&first].secret.matches(&first_secret));
        assert_eq!(
            target.tombstones.reason(ended),
            Some(RejectReason::SessionExpired)
        );
    }
}
