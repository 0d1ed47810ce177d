//! Group commit in the target's engine: a dedicated commit thread owns the
//! store and commits the groups the engine hands it, one at a time, in
//! order, while the engine keeps taking input.
//!
//! The engine hands a group over with [`Committer::submit`]. The thread
//! holds at most one group waiting behind the one it commits: a group
//! submitted while another waits is *merged* into it (its changes appended,
//! its service state replacing the older one), so everything that becomes
//! due during a commit shares the next fsync. The thread takes the waiting
//! group as soon as the previous commit finished, without a round trip
//! through the engine, and reports each finished group ([`Done`]) on a
//! channel, in order. The service's [`ServiceDurability::state`] is
//! captured at each submit (after the engine drained every `Ready`), so the
//! state stored with a group is the one at its last submit: the cut of
//! PROTOCOL.md §12 rule 3. [`ServiceDurability::sync`] runs first for a
//! group that records a completion, so a command's effect is stable before
//! its completion record.
//!
//! When nothing is in flight, the engine may instead commit a group on its
//! own thread ([`Committer::commit_inline`], inside
//! `tokio::task::block_in_place`): the same commit, in the same order, but
//! without the two thread hand-offs (waking the commit thread, then the
//! engine again), which on a small virtual machine cost about as much as
//! the fsync itself. The engine's driver chooses it only when commands come
//! one at a time (see `super::driver`): while the engine commits inline it
//! takes no input, which would cost more than the hand-offs under load.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast_proto::StateChange;
use tokio::sync::mpsc;

use super::{DurableStore, StoreError};
use crate::ServiceDurability;

/// Groups committed.
pub(crate) const COMMITS: &str = "holdfast_store_commits_total";
/// State changes per group.
pub(crate) const CHANGES_PER_COMMIT: &str = "holdfast_store_changes_per_commit";
/// Time of a group's commit: the service's sync, the log write and fdatasync.
pub(crate) const COMMIT_SECONDS: &str = "holdfast_store_commit_seconds";
/// Groups the engine committed on its own thread.
pub(crate) const INLINE_COMMITS: &str = "holdfast_store_inline_commits_total";

/// A finished group: its number, its changes (for the `Ready` that held
/// them, in strict mode, or to recycle) and the outcome.
#[derive(Debug)]
pub(crate) struct Done {
    /// The group's number, as [`Committer::submit`] returned it.
    pub(crate) id: u64,
    /// The group's changes.
    pub(crate) changes: Vec<StateChange>,
    /// The outcome: after an error the store's state on disk is unknown.
    pub(crate) result: Result<(), StoreError>,
}

/// A group handed to the commit thread and not taken yet.
struct Group {
    id: u64,
    changes: Vec<StateChange>,
    /// The service's state at the group's last submit.
    state: Option<Bytes>,
    /// The group records a completion: the service syncs first.
    completes: bool,
}

/// What the engine and the commit thread share.
#[derive(Default)]
struct Queue {
    /// The group waiting for the commit in flight.
    next: Option<Group>,
    /// The engine is gone: the thread ends.
    stop: bool,
    /// The thread has ended (or panicked).
    ended: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Signalled when the thread ends.
    ended: Condvar,
    /// The store: the commit thread holds it while it commits a group, the
    /// engine while it commits one inline (never both at once: the engine
    /// commits inline only when no group is in flight).
    store: Mutex<DurableStore>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> MutexGuard<'_, DurableStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The engine's side of the store: the commit thread and its queue.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    durability: Arc<dyn ServiceDurability>,
    dir: PathBuf,
    thread: Option<JoinHandle<()>>,
    /// Finished groups, until the engine takes the receiver.
    done: Option<mpsc::UnboundedReceiver<Done>>,
    /// The number of the newest group submitted.
    last_id: u64,
    /// The warning about a stateful service that was not ready was given.
    warned_held: bool,
    /// The engine runs on tokio's multi-thread runtime, where
    /// `block_in_place` may run a commit on its thread.
    can_inline: bool,
    /// How long dropping the committer waits for the commit thread.
    stop_bound: Duration,
}

impl Committer {
    /// Starts the commit thread, which owns `store` from now on.
    pub(crate) fn new(store: DurableStore, durability: Arc<dyn ServiceDurability>) -> Self {
        let dir = store.dir().to_path_buf();
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            ended: Condvar::new(),
            store: Mutex::new(store),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = {
            let shared = shared.clone();
            let durability = durability.clone();
            std::thread::Builder::new()
                .name("holdfast-commit".into())
                .spawn(move || {
                    let _ended = Ended(&shared);
                    commit_thread(&shared, &*durability, &tx);
                })
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // Without a thread no group is ever durable: the engine
                // sees the channel closed at its first commit and stops.
                tracing::error!(error = %e, "could not start the session store's commit thread");
                None
            }
        };
        Committer {
            shared,
            durability,
            dir,
            thread,
            done: Some(rx),
            last_id: 0,
            warned_held: false,
            can_inline: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread),
            stop_bound: STOP_BOUND,
        }
    }

    /// Sets how long dropping the committer waits for the commit thread.
    #[cfg(test)]
    pub(crate) fn set_stop_bound(&mut self, bound: Duration) {
        self.stop_bound = bound;
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

    /// The state directory (for error messages).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The receiver of finished groups, once (the engine's loop waits on
    /// it).
    pub(crate) fn take_done(&mut self) -> Option<mpsc::UnboundedReceiver<Done>> {
        self.done.take()
    }

    /// [`Committer::commit_inline`] is possible: the committer was made on
    /// tokio's multi-thread runtime.
    pub(crate) fn can_inline(&self) -> bool {
        self.can_inline
    }

    /// Commits `changes` (and the service's state, captured now) on the
    /// calling thread, inside `block_in_place`, and returns the finished
    /// group. Only when no group is in flight or waiting (the driver's
    /// `busy` is false) and [`Committer::can_inline`]: groups still finish
    /// one at a time, in the order of their numbers.
    pub(crate) fn commit_inline(&mut self, changes: Vec<StateChange>) -> Done {
        self.last_id += 1;
        let group = Group {
            id: self.last_id,
            state: self.durability.state(),
            completes: completes(&changes),
            changes,
        };
        let (shared, durability) = (&*self.shared, &*self.durability);
        let done =
            tokio::task::block_in_place(|| commit_group(&mut shared.store(), durability, group));
        metrics::counter!(INLINE_COMMITS).increment(1);
        done
    }

    /// Hands `changes` (and the service's state, captured now) to the
    /// commit thread: appended to the group that waits for the commit in
    /// flight if there is one (`true`: merged), else as a new group. Returns
    /// the group's number; groups finish in the order of their numbers.
    pub(crate) fn submit(&mut self, changes: Vec<StateChange>) -> (u64, bool) {
        let state = self.durability.state();
        let completes = completes(&changes);
        let mut queue = self.shared.lock();
        if let Some(next) = &mut queue.next {
            let mut changes = changes;
            next.changes.append(&mut changes);
            next.state = state;
            next.completes |= completes;
            return (next.id, true);
        }
        self.last_id += 1;
        queue.next = Some(Group {
            id: self.last_id,
            changes,
            state,
            completes,
        });
        drop(queue);
        self.shared.wake.notify_one();
        (self.last_id, false)
    }
}

impl Drop for Committer {
    /// Stops the commit thread (after the commit in flight, if any; a group
    /// still waiting is dropped, none of its output left) and waits for it,
    /// so the store's lock is free once the engine is gone. A commit that
    /// does not finish within [`STOP_BOUND`] (a service whose `sync` hangs
    /// on a dead disk) is left behind with an error, so the target still
    /// stops: the store stays locked until the process exits.
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let mut queue = self.shared.lock();
        queue.stop = true;
        self.shared.wake.notify_one();
        let (queue, _) = self
            .shared
            .ended
            .wait_timeout_while(queue, self.stop_bound, |q| !q.ended)
            .unwrap_or_else(|e| e.into_inner());
        if queue.ended {
            drop(queue);
            let _ = thread.join();
        } else {
            tracing::error!(
                dir = %self.dir.display(),
                "the session store's commit thread did not finish its commit within {:?} of \
                 the target stopping (the service's sync or the disk hangs); it is left \
                 behind, and the store stays locked until this process exits. Nothing of \
                 that commit was sent",
                self.stop_bound
            );
        }
    }
}

/// How long dropping a [`Committer`] waits for its commit thread.
const STOP_BOUND: Duration = Duration::from_secs(10);

/// Marks the commit thread ended when it returns or panics.
struct Ended<'a>(&'a Shared);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.0.lock().ended = true;
        self.0.ended.notify_all();
    }
}

/// The group records a completion: the service syncs before it.
fn completes(changes: &[StateChange]) -> bool {
    changes
        .iter()
        .any(|c| matches!(c, StateChange::Completed { .. }))
}

/// Commits one group: the service's sync first if it records a
/// completion, then the log write and fdatasync.
fn commit_group(
    store: &mut DurableStore,
    durability: &dyn ServiceDurability,
    group: Group,
) -> Done {
    let started = Instant::now();
    let result = if group.completes {
        durability.sync().map_err(|source| StoreError::Io {
            dir: store.dir().to_path_buf(),
            action: "syncing the service's data before its completion records",
            source,
        })
    } else {
        Ok(())
    }
    .and_then(|()| store.commit(&group.changes, group.state.as_ref()));
    metrics::counter!(COMMITS).increment(1);
    metrics::histogram!(CHANGES_PER_COMMIT).record(group.changes.len() as f64);
    metrics::histogram!(COMMIT_SECONDS).record(started.elapsed());
    Done {
        id: group.id,
        changes: group.changes,
        result,
    }
}

/// The commit thread: takes the waiting group, commits it, reports it;
/// ends when the engine is gone or after a failed commit (the store then
/// refuses every further commit anyway).
fn commit_thread(
    shared: &Shared,
    durability: &dyn ServiceDurability,
    done: &mpsc::UnboundedSender<Done>,
) {
    loop {
        let group = {
            let mut queue = shared.lock();
            loop {
                if queue.stop {
                    return;
                }
                if let Some(g) = queue.next.take() {
                    break g;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        // The store's lock is let go before the group is reported, so an
        // engine that commits inline next never waits for it.
        let finished = commit_group(&mut shared.store(), durability, group);
        let failed = finished.result.is_err();
        let sent = done.send(finished);
        if failed || sent.is_err() {
            return;
        }
    }
}
