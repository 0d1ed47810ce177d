//! The target's session store: [`MemoryStore`], the state the target's
//! [`StateChange`](crate::target::StateChange)s describe, kept in memory, and
//! [`log`], the sans-IO engine that makes it durable as an append-only log
//! with checkpoints (PROTOCOL.md §12). The runtime executes the engine's
//! [`log::StoreOp`]s on real files.

pub mod log;
mod memory;

pub use memory::{MemoryStore, StoredSession};
