//! The services behind the simulated target, and the operations the
//! workload issues. The service state outlives target restarts (it is the
//! "disk"); only session state is lost. In the durable mode the service
//! state is stored with each commit of the session store instead (the log
//! service's model): a crash rolls it back to the last commit
//! ([`Services::rollback_to`]).
//!
//! * a counter: NOT idempotent; each increment returns the new value;
//! * a register: idempotent writes (retry-safe), returns what it stored;
//! * a message log: one-way messages, recorded in arrival order.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use holdfast_proto::SessionId;

/// Operation kinds, the first byte of every payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Counter increment (command, not retry-safe).
    Increment,
    /// Register write (command, retry-safe).
    Write,
    /// One-way message (not retry-safe).
    Message,
}

impl OpKind {
    fn byte(self) -> u8 {
        match self {
            OpKind::Increment => 1,
            OpKind::Write => 2,
            OpKind::Message => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(OpKind::Increment),
            2 => Some(OpKind::Write),
            3 => Some(OpKind::Message),
            _ => None,
        }
    }

    /// True for retry-safe operations.
    pub fn retry_safe(self) -> bool {
        self == OpKind::Write
    }
}

/// Builds a payload: kind, tag, then `pad` filler bytes.
pub fn payload(kind: OpKind, tag: u64, pad: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + pad);
    b.put_u8(kind.byte());
    b.put_u64(tag);
    b.put_bytes((tag & 0xff) as u8, pad);
    b.freeze()
}

/// Parses a payload back into (kind, tag), checking the filler.
pub fn parse(payload: &[u8]) -> Option<(OpKind, u64)> {
    if payload.len() < 9 {
        return None;
    }
    let kind = OpKind::from_byte(payload[0])?;
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&payload[1..9]);
    let tag = u64::from_be_bytes(tag);
    payload[9..]
        .iter()
        .all(|&b| b == (tag & 0xff) as u8)
        .then_some((kind, tag))
}

/// One execution the service performed.
#[derive(Clone, Debug)]
pub struct Execution {
    /// The session that delivered it.
    pub session: SessionId,
    /// The result it returned (counter value; tag for writes; 0 for messages).
    pub result: u64,
}

/// The service state, shared by every target incarnation.
#[derive(Debug, Default)]
pub struct Services {
    /// The counter.
    pub counter: u64,
    /// Executions per tag, in order.
    pub executions: HashMap<u64, Vec<Execution>>,
    /// Per session, the tags executed in order.
    pub order: HashMap<SessionId, Vec<u64>>,
    /// Executions of a tag after a later-issued tag in the same session.
    pub total_executions: u64,
    /// Sessions in the order they first executed something: once a newer
    /// session has executed, an older one must never execute again.
    pub sessions_in_order: Vec<SessionId>,
    /// Every execution, in order: the state is a function of it, so a
    /// committed state is a prefix length (see `rollback_to`).
    journal: Vec<(SessionId, Bytes)>,
}

impl Services {
    /// Executes an operation delivered in `session`; returns the response.
    pub fn execute(&mut self, session: SessionId, payload: &[u8]) -> Result<Bytes, String> {
        let (kind, tag) =
            parse(payload).ok_or_else(|| format!("corrupt payload {payload:02x?}"))?;
        self.journal
            .push((session, Bytes::copy_from_slice(payload)));
        let result = match kind {
            OpKind::Increment => {
                self.counter += 1;
                self.counter
            }
            OpKind::Write => tag,
            OpKind::Message => 0,
        };
        self.total_executions += 1;
        self.executions
            .entry(tag)
            .or_default()
            .push(Execution { session, result });
        self.order.entry(session).or_default().push(tag);
        if !self.sessions_in_order.contains(&session) {
            self.sessions_in_order.push(session);
        }
        let mut b = BytesMut::with_capacity(16);
        b.put_u64(tag);
        b.put_u64(result);
        Ok(b.freeze())
    }
}

impl Services {
    /// How many executions the state holds: what a commit stores.
    pub fn committed_len(&self) -> usize {
        self.journal.len()
    }

    /// Rolls the state back to the first `len` executions (a crash: only
    /// the state stored with the last commit survives).
    pub fn rollback_to(&mut self, len: usize) -> Result<(), String> {
        let mut journal = std::mem::take(&mut self.journal);
        journal.truncate(len);
        *self = Services::default();
        for (session, payload) in journal {
            self.execute(session, &payload)?;
        }
        Ok(())
    }
}

/// Parses a response into (tag, result).
pub fn parse_response(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() != 16 {
        return None;
    }
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&payload[..8]);
    b.copy_from_slice(&payload[8..]);
    Some((u64::from_be_bytes(a), u64::from_be_bytes(b)))
}
