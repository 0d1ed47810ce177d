//! Several connections per session (PROTOCOL.md §17): one command stream
//! with per-connection delivery.
//!
//! * The first connection logs in as usual (new session or recovery); more
//!   join the session with a LOGIN of kind 2 ([`Initiator::join`]), which
//!   fences nothing.
//! * Every command or message is assigned to one logged-in connection by the
//!   spread policy and written there once; the target reorders what arrives
//!   out of order across connections within the credit window.
//! * Responses may arrive out of order across connections: the initiator
//!   accepts each once, within its window, and acknowledges cumulatively.
//! * When one connection is lost while others survive, what it carried above
//!   the target's acknowledgement is assigned again at once and resent on
//!   the survivors (a late copy on the dying connection is a duplicate the
//!   target drops); the lost connection is re-joined by the driver.
//!
//! The state machine keeps one connection "in focus" in `Initiator::conn`
//! (with its bytes in `Initiator::out`) and the others here; every entry
//! point that names a connection brings it into focus first, so the
//! single-connection code handles each connection's frames unchanged.

use bytes::Bytes;

use crate::config::Spread;
use crate::error::{ConnectError, ConnectionError};
use crate::ids::ConnId;
use crate::time::{earliest, Timestamp};
use crate::wire::{Decoder, Digests, Direction, Frame, Outgoing};

use super::{Connection, Initiator, InitiatorEvent};

/// A connection out of focus, with the bytes queued for it.
#[derive(Debug)]
pub(super) struct Other {
    pub(super) conn: Connection,
    pub(super) out: Outgoing,
}

impl Initiator {
    /// True when the session may use several connections.
    pub(super) fn multi(&self) -> bool {
        self.config.connections > 1
    }

    /// Adds connection `conn` to the session: a LOGIN of kind 2 (join) is
    /// queued on it (PROTOCOL.md §17.2). Needs a configuration with more
    /// than one connection, a logged-in connection of the session, and
    /// fewer connections than configured. Write its bytes with
    /// [`Initiator::poll_transmit_on`].
    pub fn join(&mut self, conn: ConnId, now: Timestamp) -> Result<(), ConnectError> {
        if self.is_finished() {
            return Err(ConnectError::Ended);
        }
        if !self.multi() {
            return Err(ConnectError::CannotJoin(
                "the configuration allows one connection per session",
            ));
        }
        if self.session.is_none() || !self.is_connected() {
            return Err(ConnectError::CannotJoin(
                "no logged-in connection of the session to join",
            ));
        }
        if self.connections().len() >= self.config.connections as usize {
            return Err(ConnectError::CannotJoin(
                "the session already has as many connections as configured",
            ));
        }
        if self.connections().contains(&conn) {
            return Err(ConnectError::CannotJoin(
                "that connection is already in use",
            ));
        }
        let fresh = Connection {
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
            join: true,
        };
        if let Some(current) = self.conn.replace(fresh) {
            let out = std::mem::take(&mut self.out);
            self.others.push(Other { conn: current, out });
        }
        self.stats.connects += 1;
        self.queue_login();
        Ok(())
    }

    /// Every connection of the session, logged in or logging in.
    pub fn connections(&self) -> Vec<ConnId> {
        self.conn
            .iter()
            .map(|c| c.id)
            .chain(self.others.iter().map(|o| o.conn.id))
            .collect()
    }

    /// How many connections are logged in.
    pub fn logged_in_connections(&self) -> usize {
        self.conn.iter().filter(|c| c.logged_in).count()
            + self.others.iter().filter(|o| o.conn.logged_in).count()
    }

    /// Like [`Initiator::poll_transmit`], for connection `conn` (any of the
    /// session's). With several connections, call it for each of them after
    /// every input: an input on one may free credit for another.
    #[must_use]
    pub fn poll_transmit_on(&mut self, conn: ConnId, now: Timestamp) -> Option<Vec<Bytes>> {
        if !self.focus(conn) {
            return None;
        }
        self.poll_transmit(now)
    }

    /// Like [`Initiator::poll_transmit_into`], for connection `conn`.
    pub fn poll_transmit_into_on(
        &mut self,
        conn: ConnId,
        now: Timestamp,
        out: &mut Vec<Bytes>,
    ) -> bool {
        self.focus(conn) && self.poll_transmit_into(now, out)
    }

    /// Brings connection `conn` into focus. False if it is not one of ours.
    pub(super) fn focus(&mut self, conn: ConnId) -> bool {
        if self.conn.as_ref().is_some_and(|c| c.id == conn) {
            return true;
        }
        let Some(i) = self.others.iter().position(|o| o.conn.id == conn) else {
            return false;
        };
        let mut other = self.others.swap_remove(i);
        match self.conn.as_mut() {
            Some(current) => {
                std::mem::swap(current, &mut other.conn);
                std::mem::swap(&mut self.out, &mut other.out);
                self.others.push(other);
            }
            None => {
                self.conn = Some(other.conn);
                self.out = other.out;
            }
        }
        true
    }

    /// The connection in focus is lost while others remain: what it carried
    /// above the target's acknowledgement is assigned again, at once, to
    /// the survivors (PROTOCOL.md §17.5). Returns false (nothing done) when
    /// it is the session's only connection.
    pub(super) fn drop_one(&mut self, error: &ConnectionError, now: Timestamp) -> bool {
        if !self.multi() || self.others.is_empty() {
            return false;
        }
        let Some(lost) = self.conn.take() else {
            return false;
        };
        // Its last bytes (an ERROR at most) go with it.
        let next = self.others.swap_remove(0);
        self.conn = Some(next.conn);
        self.out = next.out;
        self.stats.disconnects += 1;
        let mut moved = 0u64;
        let acked = self.acked;
        for (&seq, e) in self.entries.iter_mut() {
            if e.via == Some(lost.id) {
                e.via = None;
                e.on_wire = false;
                if seq > acked {
                    moved += 1;
                }
            }
        }
        self.stats.moved += moved;
        if self.logged_in_connections() == 0 {
            self.disconnected_since.get_or_insert(now);
        }
        self.events.push_back(InitiatorEvent::ConnectionDropped {
            conn: lost.id,
            error: error.clone(),
            moved,
        });
        true
    }

    /// Forgets every connection but the one in focus (a new login that
    /// fences the others, or the end of the session).
    pub(super) fn forget_others(&mut self) {
        self.others.clear();
        for e in self.entries.values_mut() {
            e.via = None;
            e.on_wire = false;
        }
    }

    /// Assigns every unassigned entry within the credit limit to a
    /// logged-in connection, by the spread policy.
    fn assign(&mut self) {
        let mut load: Vec<(ConnId, usize)> = self
            .conn
            .iter()
            .chain(self.others.iter().map(|o| &o.conn))
            .filter(|c| c.logged_in && c.up_until.is_none())
            .map(|c| (c.id, 0))
            .collect();
        if load.is_empty() {
            return;
        }
        load.sort_unstable_by_key(|(id, _)| id.0);
        for e in self.entries.values() {
            if let Some(slot) = load.iter_mut().find(|(id, _)| Some(*id) == e.via) {
                slot.1 += 1;
            }
        }
        let ignore_credits = self.ignores_credits();
        let limit = self.limit;
        for (&seq, e) in self.entries.range_mut(self.acked + 1..) {
            if seq > limit && !ignore_credits {
                break;
            }
            if e.via.is_some() {
                continue;
            }
            let pick = match self.config.spread {
                Spread::LeastOutstanding => load
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, n))| *n)
                    .map_or(0, |(i, _)| i),
                Spread::RoundRobin => {
                    self.round_robin = self.round_robin.wrapping_add(1);
                    self.round_robin % load.len()
                }
            };
            let Some(slot) = load.get_mut(pick) else {
                break;
            };
            slot.1 += 1;
            e.via = Some(slot.0);
            e.on_wire = false;
        }
    }

    /// Writes the entries assigned to the connection in focus that are not
    /// on its wire yet, in sequence order. True if anything was written.
    pub(super) fn write_assigned(&mut self, now: Timestamp) -> bool {
        self.assign();
        let ignore_credits = self.ignores_credits();
        let estimate = self.srtt.unwrap_or_default() + self.config.shutdown_margin;
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let (id, digests) = (c.id, c.digests);
        let cutoff = c.up_until.map(|up| up.saturating_since(now));
        let mut wrote = false;
        for (&seq, e) in self.entries.range_mut(self.acked + 1..) {
            if seq > self.limit && !ignore_credits {
                break;
            }
            if e.via != Some(id) || e.on_wire {
                continue;
            }
            if cutoff.is_some_and(|left| estimate > left) {
                break; // cannot finish before the announced shutdown
            }
            let Some(payload) = e.payload.clone() else {
                continue; // unreachable: unacknowledged entries keep their payload
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
            e.on_wire = true;
            e.sent_at = Some(now);
            c.send_cursor = c.send_cursor.max(seq + 1);
            wrote = true;
        }
        wrote
    }

    /// True when a FIN was sent on any of the session's connections.
    pub(super) fn fin_sent_anywhere(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.fin_sent)
            || self.others.iter().any(|o| o.conn.fin_sent)
    }

    /// True while entries sent on connection `id` await their outcome.
    pub(super) fn awaits_on(&self, id: ConnId) -> bool {
        self.entries
            .values()
            .any(|e| e.via == Some(id) && e.on_wire)
    }

    /// The earliest timer of the connections out of focus.
    pub(super) fn others_timeout(&self) -> Option<Timestamp> {
        self.others
            .iter()
            .fold(None, |t, o| earliest(t, self.conn_timeout(&o.conn)))
    }

    /// Runs the timers of every connection, each in focus in turn.
    pub(super) fn timeout_all(&mut self, now: Timestamp) {
        for id in self.connections() {
            if self.focus(id) {
                self.timeout_focused(now);
            }
        }
    }
}
