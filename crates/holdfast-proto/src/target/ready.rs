//! What the target hands its driver after each batch of work, in the manner of
//! raft-rs `Ready`: state changes to persist, bytes to send, connections to
//! close and messages to deliver to the service.
//!
//! The contract: persist [`Ready::changes`] (in order) before sending
//! [`Ready::transmits`] or executing [`Ready::deliveries`], then call
//! [`crate::Target::advance`]. The bytes of a `Ready` may reflect its own changes,
//! never changes that are not in it or an earlier one.
//!
//! Early execution (PROTOCOL.md §12), for a replay-safe service only: the
//! driver may execute the deliveries and call `advance` before the changes
//! are durable, if it holds the `Ready`'s transmits, closes and fences, and
//! every later `Ready`'s, until those changes are durable, persists the
//! changes of successive `Ready`s as groups committed one at a time in
//! order, and takes the service state stored with a group after the
//! group's last `Ready` was executed and before the next is taken. A crash
//! that loses a `Received` then loses only a command no byte acknowledged:
//! the initiator sends it again, and replay-safety makes its first run
//! invisible.

use bytes::Bytes;

use crate::error::ProtocolError;
use crate::ids::{ConnId, SessionId, SessionSecret};
use crate::wire::{HostId, HostRecord, ResponseStatus};
use crate::Seq;

/// One batch of target output.
#[derive(Debug, Default)]
pub struct Ready {
    /// State changes that recovery depends on, in the order they happened.
    pub changes: Vec<StateChange>,
    /// Bytes to write, per connection, in order.
    pub transmits: Vec<Transmit>,
    /// Connections to close after writing their last bytes.
    pub closes: Vec<Close>,
    /// Commands and messages for the service, in each session's sequence order.
    pub deliveries: Vec<Delivery>,
    /// FENCEs naming another node: forward each over the peer link to that
    /// node and answer with [`crate::Target::answer_fence`] (PROTOCOL.md §11.5).
    pub fences: Vec<super::FenceRequest>,
}

impl Ready {
    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.transmits.is_empty()
            && self.closes.is_empty()
            && self.deliveries.is_empty()
            && self.fences.is_empty()
    }
}

/// Bytes for one connection, as chunks to write in order (vectored I/O).
#[derive(Debug)]
pub struct Transmit {
    /// The connection.
    pub conn: ConnId,
    /// The bytes, in order.
    pub chunks: Vec<Bytes>,
}

impl Transmit {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Bytes::is_empty)
    }
}

/// A connection the driver must close once its last transmit is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The connection.
    pub conn: ConnId,
    /// Why, for the logs.
    pub reason: CloseReason,
}

/// Why the target closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer violated the protocol (or a login or inactivity deadline passed).
    Protocol(ProtocolError),
    /// The peer sent an ERROR frame.
    PeerError(String),
    /// Another connection recovered the session, or a fence ended it.
    Fenced,
    /// The session closed with FIN.
    Finished,
    /// The shutdown notice's up time passed.
    Shutdown,
}

/// A command or one-way message for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A command: answer it with [`crate::Target::complete`].
    Command {
        /// The session.
        session: SessionId,
        /// The command's sequence number.
        seq: Seq,
        /// The request.
        payload: Bytes,
    },
    /// A one-way message: no answer.
    Message {
        /// The session.
        session: SessionId,
        /// The message's sequence number.
        seq: Seq,
        /// The message.
        payload: Bytes,
    },
}

/// A change to session state that recovery depends on. A durable store
/// persists these; [`crate::MemoryStore`] keeps them in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// A session was created.
    SessionCreated {
        /// Its id.
        session: SessionId,
        /// Its secret.
        secret: SessionSecret,
        /// Its credit window.
        credits: u32,
        /// The HOST record of its creating LOGIN, if any: the host and
        /// epoch a fence matches it by.
        host: Option<HostRecord>,
        /// The `max_frame` of the creating LOGIN: the session's responses
        /// are sized for it.
        max_frame: u32,
    },
    /// A recovery or join LOGIN raised the session's `max_frame` (the
    /// largest frame its initiator accepts): responses may be sized for
    /// the new limit, and a later recovery must not offer less.
    MaxFrameRaised {
        /// The session.
        session: SessionId,
        /// The new limit.
        max_frame: u32,
    },
    /// A command or message was received; it is now acknowledged.
    Received {
        /// The session.
        session: SessionId,
        /// Its sequence number (always the previous one plus one).
        seq: Seq,
        /// True for a command, false for a one-way message.
        command: bool,
        /// Its payload.
        payload: Bytes,
    },
    /// A command completed; its response is cached until acknowledged.
    Completed {
        /// The session.
        session: SessionId,
        /// The command.
        command: Seq,
        /// The response's sequence number in the target's stream.
        response: Seq,
        /// The response; for a status response, its UTF-8 text.
        payload: Bytes,
        /// `Some` for a status response (the service's response could not
        /// be delivered, §6.7): sent as RESP with the STATUS flag.
        status: Option<ResponseStatus>,
    },
    /// The service has taken every one-way message of the session up to and
    /// including `through` (emitted at the [`crate::Target::advance`] of the
    /// Ready that delivered them, or at [`crate::Target::release_messages`]
    /// for a held session, so it is in the next Ready, persisted before any
    /// byte whose acknowledgement covers them). A restored target delivers
    /// again only the messages above it (PROTOCOL.md §12). `through` is the
    /// session's acknowledgement at that moment: every one-way message up to
    /// it is taken (commands below it are covered by their own changes).
    MessagesDelivered {
        /// The session.
        session: SessionId,
        /// The highest message sequence the service has taken.
        through: Seq,
    },
    /// The initiator acknowledged responses up to and including `through`.
    ResponsesAcked {
        /// The session.
        session: SessionId,
        /// The cumulative acknowledgement.
        through: Seq,
    },
    /// The session ended (FIN, retain expiry or fence); its state may be
    /// dropped.
    SessionEnded {
        /// The session.
        session: SessionId,
    },
    /// A fence raised the epoch this node remembers for a host: LOGINs of
    /// that host with a lower epoch are rejected `Fenced` from now on
    /// (PROTOCOL.md §11.5). Persisted before the FENCE_DONE leaves.
    HostFenced {
        /// The host.
        host: HostId,
        /// Its sessions with a lower epoch are fenced.
        epoch: u64,
    },
}
