//! Several connections per session in the simulation (PROTOCOL.md §17): the
//! connections the initiator uses, joining more after its first login,
//! giving up one of them, and re-joining after a backoff.

use std::time::Duration;

use holdfast_proto::ConnId;

use super::{Packet, SimConn, World};

impl World {
    /// Every connection the initiator uses (logged in or logging in).
    pub(super) fn live(&self) -> Vec<ConnId> {
        self.current
            .iter()
            .chain(self.joined.iter())
            .copied()
            .collect()
    }

    /// True when the session should have another connection.
    pub(super) fn wants_join(&self) -> bool {
        self.params.connections > 1
            && self.live().len() < self.params.connections as usize
            && self.initiator.is_connected()
    }

    /// Joins one more connection when one is missing and the backoff passed.
    pub(super) fn maybe_join(&mut self) {
        if !self.wants_join() || self.rejoin_at > self.now {
            return;
        }
        if let Some(until) = self.partition_until {
            if self.now < until {
                self.rejoin_at = until;
                return;
            }
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let latency = Duration::from_micros(20 + self.below(3000));
        let mut conn = SimConn::new(id, latency);
        if self.target.accept(id, self.now).is_err() {
            conn.target_gone = true;
        }
        self.conns.push(conn);
        match self.initiator.join(id, self.now) {
            Ok(()) => self.joined.push(id),
            Err(e) => panic!("join refused while logged in: {e}"),
        }
    }

    /// The connection a fault hits: one the initiator uses, else the newest.
    pub(super) fn fault_target(&mut self) -> Option<ConnId> {
        let live = self.live();
        if live.is_empty() {
            return self.conns.last().map(|c| c.id);
        }
        let i = self.below(live.len() as u64) as usize;
        live.get(i).copied()
    }

    /// The initiator no longer uses `id`: it closes its end.
    pub(super) fn give_up(&mut self, id: ConnId) {
        if self.current == Some(id) {
            self.current = None;
        }
        self.joined.retain(|&j| j != id);
        let now = self.now;
        if let Some(c) = self.conn_mut(id) {
            if !c.initiator_gone {
                c.initiator_gone = true;
                let latency = c.latency;
                c.to_target.push(now, latency, Packet::Close);
            }
        }
    }

    /// Forgets connections the initiator itself forgot (a new login fenced
    /// them, or a join learned that the session is gone).
    pub(super) fn reconcile(&mut self) {
        let used = self.initiator.connections();
        for id in self.live() {
            if !used.contains(&id) {
                self.give_up(id);
            }
        }
    }
}
