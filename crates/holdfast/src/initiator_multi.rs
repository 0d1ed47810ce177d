//! The driver's side of several connections per session (PROTOCOL.md §17):
//! the first connection logs in, the others join; a lost one is re-joined
//! in the background while the survivors carry the session.

use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::{ConnId, Timestamp};
use tracing::debug;

use super::Driver;
use crate::transport::BoxStream;

impl Driver {
    /// True when the session may use several connections.
    pub(super) fn multi(&self) -> bool {
        self.options.protocol.connections > 1
    }

    /// How many connections the session should have.
    fn wanted(&self) -> usize {
        self.options.protocol.connections as usize
    }

    /// True when a connection should be opened now or at `next_multi_attempt`:
    /// the first (no connection at all), or one to join beside the
    /// logged-in ones.
    fn missing_one(&self) -> bool {
        self.connecting.is_none()
            && (self.links.is_empty()
                || (self.core.is_connected() && self.core.connections().len() < self.wanted()))
    }

    /// When the next connection attempt is due, if one is missing.
    pub(super) fn next_multi_attempt(&self) -> Option<tokio::time::Instant> {
        if !self.missing_one() {
            return None;
        }
        if self.links.is_empty() {
            self.reconnect_at
        } else {
            self.join_at
        }
    }

    /// Starts a connection attempt if one is missing and due.
    pub(super) fn start_multi_if_due(&mut self) {
        if !self.missing_one() {
            return;
        }
        if self.links.is_empty() {
            // Not the first connection of a session: a recovery (kind 1),
            // as with one connection, after the same backoff.
            self.start_connect_if_due();
            return;
        }
        let Some(at) = self.join_at else {
            return;
        };
        if tokio::time::Instant::now() < at {
            return;
        }
        self.join_at = None;
        let connector = self.connector.clone();
        let limit = self.options.connect_timeout;
        self.connecting = Some(Box::pin(async move {
            tokio::time::timeout(limit, connector.connect()).await
        }));
    }

    /// A transport connection is open: it logs in (the session's first) or
    /// joins the session.
    pub(super) fn multi_connected(&mut self, stream: BoxStream, now: Timestamp) {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let first = self.links.is_empty();
        let started = if first {
            self.core.connect(id, now).map_err(|e| e.to_string())
        } else {
            self.core.join(id, now).map_err(|e| e.to_string())
        };
        if let Err(e) = started {
            // The session ended, or it has no logged-in connection to join
            // any more (the attempt outlived it): try again later.
            debug!(error = %e, "connection not used");
            if first {
                self.reconnect_at = None;
            } else {
                self.join_at = Some(tokio::time::Instant::now() + Duration::from_millis(1));
            }
            return;
        }
        self.links.add(id, stream, self.options.read_buffer);
        if first {
            self.reconnect_at = None;
        }
        debug!(?id, first, links = self.links.len(), "connected");
    }

    /// Hands the core's bytes for each connection to its writer. True if
    /// there were any.
    pub(super) fn flush_links(&mut self, now: Timestamp) -> bool {
        if !self.multi() {
            return false;
        }
        let mut any = false;
        for id in self.core.connections() {
            while self.core.poll_transmit_into_on(id, now, &mut self.chunks) {
                any = true;
                let chunks: Vec<Bytes> = self.chunks.drain(..).collect();
                self.links.send(id, chunks);
            }
        }
        // Connections the core forgot (a stateless reject of a join, a
        // new login) are let go.
        if self.links.len() > self.core.connections().len() {
            let keep = self.core.connections();
            self.links.retain(&keep);
        }
        any
    }
}
