//! # holdfast-proto: the sans-IO session core
//!
//! A holdfast session is two reliable, ordered message streams, one per
//! direction, that outlive any one transport connection. The initiator's
//! stream carries commands (which expect a response) and one-way messages;
//! the target's stream carries responses, and its unacknowledged tail is the
//! response cache. Both streams use 64-bit sequence numbers and cumulative
//! acknowledgements; on a new connection each side resends exactly its
//! unacknowledged tail. Credits bound what the initiator may have unfinished,
//! and they hold across reconnects.
//!
//! This crate is deterministic and does no I/O: no sockets, no async
//! runtime, no clock reads, no threads, no randomness it was not given.
//! Bytes, the current [`Timestamp`] and random values go in; bytes to send,
//! the next timer deadline and events come out. A driver (the `holdfast`
//! crate, or a test simulation) moves bytes between sockets and the state
//! machines:
//!
//! * [`Initiator`]: `connect` / `handle_input` / `connection_lost` /
//!   `handle_timeout` in; `poll_transmit`, `poll_timeout`, `poll_event` out;
//!   `call`, `send` and `close` for the application.
//! * [`Target`]: `accept` / `handle_input` / `connection_closed` /
//!   `handle_timeout` / `complete` in; [`target::Ready`] out, confirmed with
//!   `advance`, in the manner of raft-rs, so that a durable store can persist
//!   state changes before any byte that reflects them is sent.
//!
//! docs/PROTOCOL.md in the repository is the wire specification.
//!
//! Panics are bugs: nothing a peer sends can make this crate panic, allocate
//! beyond the configured frame limit, or damage a session's state.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod error;
pub mod ids;
pub mod initiator;
pub mod random;
pub mod store;
pub mod target;
pub mod time;
pub mod wire;

pub use config::{InitiatorConfig, Spread, TargetConfig};
pub use error::{
    AcceptError, CallError, CompleteError, ConnectError, ConnectionError, ProtocolError,
    SessionLoss, SubmitError,
};
pub use ids::{CallId, ConnId, Seq, SessionId, SessionSecret};
pub use initiator::{CallOptions, FenceError, Initiator, InitiatorEvent, InitiatorStats};
pub use random::{RandomSource, SeededRandom};
pub use store::{MemoryStore, StoredSession};
pub use target::{
    Delivery, FenceRequest, NotStarted, Ready, RestoreError, StateChange, StoreBehind, Target,
    TargetStats,
};
pub use time::Timestamp;
pub use wire::{FenceResult, HostId, HostRecord};

/// Switches that disable a protection, so tests can show that the checks
/// catch the corruption that follows. They act only with the
/// `test-switches` feature; without it they are ignored (the type exists in
/// every build so that the configs' shape does not depend on a feature).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestSwitches {
    /// Naive reconnect: the initiator resends every command that has no
    /// response yet (ignoring the target's acknowledgement) and the target
    /// delivers duplicates to the service instead of dropping them.
    pub no_dedup: bool,
    /// The initiator ignores its credit limit: submissions are never refused
    /// for credit and everything pending is sent at once after a reconnect
    /// (the xprtrdma flood of seed 002).
    pub ignore_credits: bool,
    /// The target does not fence: a recovery login leaves the connection it
    /// replaces attached, and bytes that arrive late on that connection are
    /// still read as the session's (the stale path of seed 001). Sequence
    /// deduplication still drops what they repeat unless `no_dedup` is set.
    pub no_fencing: bool,
    /// The target ends a session when its retain time passes even while
    /// commands of it still run (the stale execution of issue 14 item 3: a
    /// re-issue can then run beside the first execution).
    pub expire_running: bool,
    /// The target starts every command whatever its session's quiesce
    /// promise or fence says (`Target::begin` never refuses).
    pub no_quiesce: bool,
    /// The target confirms a fence of its own node at once, without
    /// waiting for the fenced sessions' running commands.
    pub fence_without_waiting: bool,
    /// The target never emits `StateChange::MessagesDelivered`: a target
    /// restored from its store delivers again one-way messages the service
    /// had already taken (issue 16).
    pub no_delivered_record: bool,
    /// `Target::restore` drops the commands and messages that were received
    /// and not finished instead of delivering them again (issue 16).
    pub restore_drops_pending: bool,
}
