//! Group commit in the target's engine: a `Ready` with changes is committed
//! on a blocking thread while the engine keeps taking input (but no new
//! `Ready`: whatever arrives meanwhile lands in the next one, which is the
//! batching). The service's [`ServiceDurability::state`] is captured when
//! the `Ready` is taken and [`ServiceDurability::sync`] runs first for a
//! group that records a completion, so a command's effect is stable before
//! its completion record.

use std::sync::Arc;
use std::time::Instant;

use holdfast_proto::StateChange;
use tokio::task::JoinHandle;

use super::{DurableStore, StoreError};
use crate::ServiceDurability;

/// Groups committed.
pub(crate) const COMMITS: &str = "holdfast_store_commits_total";
/// State changes per group.
pub(crate) const CHANGES_PER_COMMIT: &str = "holdfast_store_changes_per_commit";
/// Time of a group's commit: the service's sync, the append and fdatasync.
pub(crate) const COMMIT_SECONDS: &str = "holdfast_store_commit_seconds";

/// What a finished commit hands back: the store (for the next commit), the
/// changes (for the `Ready` to recycle) and the outcome.
pub(crate) type Committed = (Box<DurableStore>, Vec<StateChange>, Result<(), StoreError>);

/// The engine's side of the store: the store while no commit runs.
pub(crate) struct Committer {
    store: Option<Box<DurableStore>>,
    durability: Arc<dyn ServiceDurability>,
    /// The warning about a stateful service that was not ready was given.
    warned_held: bool,
}

impl Committer {
    pub(crate) fn new(store: DurableStore, durability: Arc<dyn ServiceDurability>) -> Self {
        Committer {
            store: Some(Box::new(store)),
            durability,
            warned_held: false,
        }
    }

    /// A session's messages wait in its lane (the service was not ready).
    /// A service that keeps its state in the store must take every message
    /// at once (PROTOCOL.md §12.2): a state captured while a lane holds
    /// messages can include the effect of one the store does not yet count
    /// as delivered, which a crash would then deliver again. Warned once.
    pub(crate) fn session_held(&mut self, session: holdfast_proto::SessionId) {
        if !self.warned_held && self.durability.state().is_some() {
            self.warned_held = true;
            tracing::warn!(
                %session,
                "the service was not ready for a session's messages, yet it keeps its state in \
                 the durable store: after a crash a message it had already taken may be \
                 delivered again. A service with state in the store must be always ready \
                 (PROTOCOL.md §12.2)"
            );
        }
    }

    /// The service is replay-safe: its commands may execute before their
    /// `Received` is durable (see [`super::driver`]).
    pub(crate) fn replay_safe(&self) -> bool {
        self.durability.replay_safe()
    }

    /// The state directory (for error messages), while no commit runs.
    pub(crate) fn dir(&self) -> Option<std::path::PathBuf> {
        self.store.as_ref().map(|s| s.dir().to_path_buf())
    }

    /// Starts committing `changes`; `None` if a commit is already running
    /// (the engine never does that).
    pub(crate) fn start(&mut self, changes: Vec<StateChange>) -> Option<JoinHandle<Committed>> {
        let mut store = self.store.take()?;
        let state = self.durability.state();
        let durability = self.durability.clone();
        let completes = changes
            .iter()
            .any(|c| matches!(c, StateChange::Completed { .. }));
        Some(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = if completes {
                durability.sync().map_err(|source| StoreError::Io {
                    dir: store.dir().to_path_buf(),
                    action: "syncing the service's data before its completion records",
                    source,
                })
            } else {
                Ok(())
            }
            .and_then(|()| store.commit(&changes, state.as_ref()));
            metrics::counter!(COMMITS).increment(1);
            metrics::histogram!(CHANGES_PER_COMMIT).record(changes.len() as f64);
            metrics::histogram!(COMMIT_SECONDS).record(started.elapsed());
            (store, changes, result)
        }))
    }

    /// Takes the store back after a commit.
    pub(crate) fn finish(&mut self, store: Box<DurableStore>) {
        self.store = Some(store);
    }
}

/// Waits for the group commit in flight; forever without one. Takes the
/// handle once it finished.
pub(crate) async fn wait_commit(
    commit: &mut Option<JoinHandle<Committed>>,
) -> Result<Committed, tokio::task::JoinError> {
    let result = match commit.as_mut() {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    };
    *commit = None;
    result
}
