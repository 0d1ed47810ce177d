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
//!
//! A service that is *replay-safe* ([`ServiceDurability::replay_safe`]) lets
//! the target execute a command before the record that it was received is
//! durable, which saves one fsync per command (PROTOCOL.md §12.5).

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

    /// True when the service is *replay-safe*: the target may hand it a
    /// command (and call `advance`) before the group that records the
    /// command's `Received` is durable, holding every byte, close and fence
    /// of that batch and of every later one until the group is durable
    /// (PROTOCOL.md §12, "early execution"). A command answered at once is
    /// then received and completed in one group: one fsync per command
    /// instead of two.
    ///
    /// Say true only if a command executed whose `Received` record a crash
    /// then loses is harmless. Nothing it did was acknowledged (its bytes
    /// were held), so its initiator sends it again and the restored target
    /// executes it again; that must not show. It holds when the command's
    /// effect
    ///
    /// * lives only in [`ServiceDurability::state`], which is stored with
    ///   the group and so rolled back with it (the log service);
    /// * or is the same when the session's commands run again in order (the
    ///   block service: a write of the same data to the same blocks; a
    ///   write of another session that completed meanwhile and overlaps it
    ///   was concurrent with it, and either order is a valid outcome);
    /// * or does not exist (an echo).
    ///
    /// A service with effects outside the store that are not idempotent
    /// (an append to an external log, a payment) must say false (the
    /// default): each command is then executed only once its `Received` is
    /// durable, and completed in a second group.
    fn replay_safe(&self) -> bool {
        false
    }
}

/// For a service that keeps nothing in the store and needs no sync.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDurability;

impl ServiceDurability for NoDurability {}
