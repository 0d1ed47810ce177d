//! The reorder buffer of a session with several connections (PROTOCOL.md
//! §17.3): commands and messages that arrive ahead of their turn on one
//! connection while an earlier sequence number is still on its way on
//! another. They wait here until the stream is contiguous again and are then
//! received in order.
//!
//! The buffer is bounded by the credit window: only sequence numbers up to
//! the session's credit limit are taken, and every one of them is above the
//! highest received, so it holds fewer than `credits` entries whatever the
//! peer sends.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::ids::ConnId;
use crate::Seq;

/// A command or message held until its turn.
#[derive(Debug)]
pub(crate) struct Early {
    /// True for a command.
    pub(crate) command: bool,
    /// Its payload.
    pub(crate) payload: Bytes,
    /// The connection it arrived on (its response goes back there).
    pub(crate) conn: ConnId,
}

/// Sequence numbers received ahead of the stream, by sequence number.
#[derive(Debug, Default)]
pub(crate) struct Reorder {
    early: BTreeMap<Seq, Early>,
}

impl Reorder {
    /// True when `seq` is already held (a duplicate).
    pub(crate) fn holds(&self, seq: Seq) -> bool {
        self.early.contains_key(&seq)
    }

    /// Holds `seq` until its turn. The caller checked that it lies above the
    /// highest received and within the credit limit.
    pub(crate) fn hold(&mut self, seq: Seq, early: Early) {
        self.early.insert(seq, early);
    }

    /// Takes `seq` if it is held (it is the stream's next one now).
    pub(crate) fn take(&mut self, seq: Seq) -> Option<Early> {
        self.early.remove(&seq)
    }

    /// Drops everything held (a recovery fenced the connections it came on).
    pub(crate) fn clear(&mut self) {
        self.early.clear();
    }

    /// How many sequence numbers are held.
    pub(crate) fn len(&self) -> usize {
        self.early.len()
    }

    /// Bytes of payload held.
    pub(crate) fn bytes(&self) -> usize {
        self.early.values().map(|e| e.payload.len()).sum()
    }
}
