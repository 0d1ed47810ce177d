//! What the target lets a peer make it hold (PROTOCOL.md §5.3, §16.1):
//! connections still logging in, sessions per source address, the short
//! retain time of a session that never received anything, one global memory
//! budget for frames being received and bytes queued to send, and how many
//! bytes a connection may legitimately have waiting to be written.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::TargetConfig;
use crate::error::{AcceptError, ProtocolError};
use crate::ids::{ConnId, SessionId};
use crate::time::Timestamp;
use crate::wire::{Decoder, Digests, Direction, ErrorCode, Outgoing};

use super::session::Session;
use super::{Conn, Phase, Target, TimerKey, PRE_LOGIN_MAX_FRAME};

/// Bytes a connection may have queued beyond the responses it is owed:
/// LOGIN_ACCEPT, LOGIN_REJECT, TACK, PONG, SHUTDOWN, FIN_ACK and ERROR
/// frames, none larger than 300 bytes and at most a few per batch.
pub const CONTROL_ALLOWANCE: usize = 64 * 1024;

/// A RESP's bytes beyond its payload: header, fixed fields and digests.
const RESP_OVERHEAD: usize = 8 + 32 + 8;

/// Where a connection comes from, as an opaque key the driver chooses (the
/// reference runtime uses the peer's IP address). Sessions are limited per
/// key (`TargetConfig::max_sessions_per_source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey(pub u128);

impl From<std::net::IpAddr> for SourceKey {
    fn from(ip: std::net::IpAddr) -> Self {
        let v6 = match ip {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        SourceKey(u128::from(v6))
    }
}

/// The counters behind the limits.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Sessions held per source key.
    per_source: HashMap<SourceKey, usize>,
    /// The source key each session was created from, if any.
    session_source: HashMap<SessionId, SourceKey>,
    /// Connections in the login phase.
    logins: usize,
    /// Bytes reserved by all connections' decoders.
    decoding: usize,
    /// Bytes the driver reports queued for sending.
    queued: usize,
}

/// How long a detached session is retained: `retain`, or `retain_unused`
/// (if shorter) while it has received no CMD or MSG; less what it already
/// spent while the target was down, for a session restored from its store.
pub(crate) fn retain_time(config: &TargetConfig, s: &Session) -> Duration {
    let base = if s.received() == 0 {
        config.retain_unused.min(config.retain)
    } else {
        config.retain
    };
    base.saturating_sub(s.retain_cut)
}

impl Target {
    /// Registers a new transport connection. It must log in within the login timeout.
    pub fn accept(&mut self, conn: ConnId, now: Timestamp) -> Result<(), AcceptError> {
        self.accept_from(conn, None, now)
    }

    /// Registers a new transport connection from `source` (`None`: not
    /// known, no per-source limit applies). It must log in within the login
    /// timeout. Refused at the connection limit and at the limit of
    /// connections still logging in.
    pub fn accept_from(
        &mut self,
        conn: ConnId,
        source: Option<SourceKey>,
        now: Timestamp,
    ) -> Result<(), AcceptError> {
        self.now = now;
        if self.conns.contains_key(&conn) {
            return Err(AcceptError::DuplicateId(conn));
        }
        if self.conns.len() >= self.config.max_connections {
            return Err(AcceptError::TooManyConnections(self.config.max_connections));
        }
        if self.admission.logins >= self.config.max_logins_in_progress {
            return Err(AcceptError::TooManyLogins(
                self.config.max_logins_in_progress,
            ));
        }
        self.conns.insert(
            conn,
            Conn {
                decoder: Decoder::new(Direction::ToTarget, PRE_LOGIN_MAX_FRAME),
                digests: Digests::NONE,
                phase: Phase::Login,
                out: Outgoing::new(),
                dirty: false,
                closing: false,
                opened: now,
                last_recv: now,
                inactivity: self.config.login_timeout,
                source,
                pong: None,
                reject_queued: false,
                charged: 0,
            },
        );
        self.admission.logins += 1;
        self.timers
            .arm(now + self.config.login_timeout, TimerKey::Conn(conn));
        self.stats.connections += 1;
        Ok(())
    }

    /// Tells the target how many bytes the driver holds queued for sending
    /// on all connections together; they count against
    /// `TargetConfig::memory_budget` with the decoders' buffers.
    pub fn set_queued_bytes(&mut self, bytes: usize) {
        self.admission.queued = bytes;
    }

    /// Bytes reserved by the connections' decoders (frames being received).
    pub fn decoding_bytes(&self) -> usize {
        self.admission.decoding
    }

    /// How many bytes `conn` may legitimately have waiting to be written:
    /// its session's response cache (every cached RESP may be sent again
    /// after a recovery, each sized by the initiator's own `max_frame`) plus
    /// [`CONTROL_ALLOWANCE`]. A peer that reads what it is sent never has
    /// more waiting; a driver drops a connection that does. `None` for an
    /// unknown connection.
    pub fn write_allowance(&self, conn: ConnId) -> Option<usize> {
        let c = self.conns.get(&conn)?;
        let owed = match c.phase {
            Phase::Attached(id) => self.sessions.get(&id).map_or(0, |s| {
                s.cached_bytes()
                    .saturating_add(s.cached().saturating_mul(RESP_OVERHEAD))
            }),
            Phase::Login => 0,
        };
        Some(owed.saturating_add(CONTROL_ALLOWANCE))
    }

    /// Before a connection's decoder takes `input`: refuses the frame it
    /// would start or continue if the buffer it needs would take the
    /// target over its memory budget.
    pub(super) fn check_budget(&mut self, conn: ConnId, input: &[u8]) -> Result<(), ProtocolError> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let need = c.decoder.frame_len(input).unwrap_or(0);
        if need <= c.charged {
            return Ok(());
        }
        let a = &self.admission;
        let total = (a.decoding - c.charged)
            .saturating_add(need)
            .saturating_add(a.queued);
        if total <= self.config.memory_budget {
            return Ok(());
        }
        Err(ProtocolError::new(
            ErrorCode::Overloaded,
            format!(
                "the target's memory budget of {} bytes is exhausted: a frame of {need} bytes \
                 does not fit ({} bytes held for other frames, {} queued to send)",
                self.config.memory_budget,
                a.decoding - c.charged,
                a.queued
            ),
        ))
    }

    /// Re-counts the bytes a connection's decoder holds.
    pub(super) fn recharge(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            let now = c.decoder.capacity();
            self.admission.decoding = self.admission.decoding - c.charged + now;
            c.charged = now;
        }
    }

    /// Removes a connection and its share of the counters.
    pub(super) fn remove_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        self.admission.decoding -= c.charged;
        if c.phase == Phase::Login {
            self.admission.logins -= 1;
        }
        Some(c)
    }

    /// Records that a connection left the login phase.
    pub(super) fn login_done(&mut self) {
        self.admission.logins = self.admission.logins.saturating_sub(1);
    }

    /// True when `source` may create another session.
    pub(super) fn source_has_room(&self, source: Option<SourceKey>) -> bool {
        source.is_none_or(|k| {
            self.admission.per_source.get(&k).copied().unwrap_or(0)
                < self.config.max_sessions_per_source
        })
    }

    /// Counts a new session against its source.
    pub(super) fn session_from(&mut self, id: SessionId, source: Option<SourceKey>) {
        if let Some(k) = source {
            *self.admission.per_source.entry(k).or_insert(0) += 1;
            self.admission.session_source.insert(id, k);
        }
    }

    /// Releases an ended session's place in its source's count.
    pub(super) fn session_gone(&mut self, id: SessionId) {
        if let Some(k) = self.admission.session_source.remove(&id) {
            if let Some(n) = self.admission.per_source.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.admission.per_source.remove(&k);
                }
            }
        }
    }
}
