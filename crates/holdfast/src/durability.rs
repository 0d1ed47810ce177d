//! A service's side of a durable target (PROTOCOL.md §12): what it must make
//! stable before the target records its completions, and the state it keeps
//! in the session store itself.
//!
//! A target with a durable store commits the session changes of each batch
//! with one fsync (group commit). Before that fsync it calls
//! [`ServiceDurability::sync`], so a command's effect is on stable storage
//! before the record that says it completed; and it stores
//! [`ServiceDurability::state`] in the same atomic group, so a service whose
//! whole state fits there (the log service's counter and message streams)
//! makes its effect and the completion one step.

use bytes::Bytes;

/// What a service does for a durable target. Both methods have defaults
/// that do nothing, for a service with no state of its own.
pub trait ServiceDurability: Send + Sync + 'static {
    /// Makes every effect of the commands whose completions the target has
    /// seen so far durable (the block service: `fdatasync` of the backend).
    /// Called on the store's commit thread, before the store's own fsync,
    /// for every group that records a completion. An error fails the
    /// commit: the target stops rather than record a completion whose
    /// effect may be lost.
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// The service's own state, stored atomically with the group's session
    /// changes and handed back when the target is rebuilt from the store.
    /// It must reflect exactly the commands whose completions the target
    /// has seen and the one-way messages the service has taken, which holds
    /// for a service that does its work in `call` and whose futures are
    /// ready at once (the log service). `None`: no state in the store.
    fn state(&self) -> Option<Bytes> {
        None
    }
}

/// For a service that keeps nothing in the store and needs no sync.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDurability;

impl ServiceDurability for NoDurability {}
