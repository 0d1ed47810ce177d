//! A simulated network: per connection, two FIFO byte pipes with latency.
//! A pipe can be cut at any byte offset (the bytes after it are lost),
//! blackholed (later writes vanish), or held (its bytes arrive much later,
//! after the initiator has moved on: the stale-delivery shape of seed 001).

use std::collections::VecDeque;

use holdfast_proto::{ConnId, Timestamp};

/// What travels in a pipe.
#[derive(Debug, Clone)]
pub enum Packet {
    /// Bytes.
    Data(Vec<u8>),
    /// The sender closed the connection (FIN or RST, as the receiver sees it).
    Close,
}

/// One direction of a connection.
#[derive(Debug, Default)]
pub struct Pipe {
    queue: VecDeque<(Timestamp, Packet)>,
    last_at: Timestamp,
    /// Writes vanish (the path is broken but nobody knows yet).
    pub blackholed: bool,
}

impl Pipe {
    /// Queues a packet arriving `latency` from `now`, after everything queued.
    pub fn push(&mut self, now: Timestamp, latency: std::time::Duration, packet: Packet) {
        if self.blackholed {
            return;
        }
        let at = (now + latency).max(self.last_at);
        self.last_at = at;
        self.queue.push_back((at, packet));
    }

    /// The next packet due at or before `now`.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<Packet> {
        match self.queue.front() {
            Some((at, _)) if *at <= now => self.queue.pop_front().map(|(_, p)| p),
            _ => None,
        }
    }

    /// When the next packet is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.queue
            .iter()
            .map(|(_, p)| match p {
                Packet::Data(d) => d.len(),
                Packet::Close => 0,
            })
            .sum()
    }

    /// Keeps the first `offset` queued bytes and loses the rest (and any close).
    pub fn cut_at(&mut self, offset: usize) {
        let mut kept = 0usize;
        let mut out = VecDeque::new();
        for (at, p) in self.queue.drain(..) {
            if let Packet::Data(mut d) = p {
                if kept >= offset {
                    break;
                }
                let room = offset - kept;
                if d.len() > room {
                    d.truncate(room);
                }
                kept += d.len();
                out.push_back((at, Packet::Data(d)));
            }
        }
        self.queue = out;
        self.blackholed = true;
    }

    /// Delays everything queued by `extra` (and blackholes later writes).
    pub fn hold(&mut self, extra: std::time::Duration) {
        for (at, _) in self.queue.iter_mut() {
            *at = *at + extra;
        }
        self.last_at = self.last_at + extra;
        self.blackholed = true;
    }
}

/// A simulated connection.
#[derive(Debug)]
pub struct SimConn {
    /// Its id (shared by both ends).
    pub id: ConnId,
    /// Initiator to target.
    pub to_target: Pipe,
    /// Target to initiator.
    pub to_initiator: Pipe,
    /// One-way latency.
    pub latency: std::time::Duration,
    /// The initiator end has been closed or forgotten.
    pub initiator_gone: bool,
    /// The target end has been closed or forgotten.
    pub target_gone: bool,
}

impl SimConn {
    /// A fresh connection.
    pub fn new(id: ConnId, latency: std::time::Duration) -> Self {
        SimConn {
            id,
            to_target: Pipe::default(),
            to_initiator: Pipe::default(),
            latency,
            initiator_gone: false,
            target_gone: false,
        }
    }

    /// True when nothing can happen on it any more.
    pub fn is_dead(&self) -> bool {
        self.initiator_gone
            && self.target_gone
            && self.to_target.next_due().is_none()
            && self.to_initiator.next_due().is_none()
    }
}
