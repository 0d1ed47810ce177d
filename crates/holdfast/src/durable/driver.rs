//! Driving the target's output through the durable store (PROTOCOL.md §12):
//! which `Ready`s wait for which group commit, and when a group starts.
//!
//! The invariant, in both modes: **no byte, close or fence leaves before
//! every state change of its own `Ready` and of every earlier one is
//! durable**, and groups are committed one at a time, in order.
//!
//! * **Strict mode** (a service that is not replay-safe): a `Ready` with
//!   changes is committed before anything else is done with it: its bytes
//!   are sent and its deliveries executed once the group is durable, and no
//!   new `Ready` is taken meanwhile (input arriving during the fsync lands
//!   in the next one). A command costs two groups: its `Received`, then its
//!   `Completed`.
//! * **Early mode** ([`crate::ServiceDurability::replay_safe`]): every
//!   `Ready` is taken at once; its deliveries go to the service and the
//!   core advances, but its changes, bytes, closes and fences are *held*,
//!   in order, in the held group. A command answered at once is received
//!   and completed in one group: one fsync. The held group is committed
//!   when no commit runs and either no command delivered since the last
//!   commit started is still in the service, or the oldest held `Ready`
//!   has waited [`HOLD_BOUND`] (so a slow command cannot hold other
//!   sessions' answers long). The service's state is captured when the
//!   commit starts, after every `Ready` was drained, so it covers exactly
//!   the completions in the group and before it. While the group commits,
//!   new `Ready`s are taken and held for the next group. A held group
//!   without changes (a PONG) leaves at once when no commit runs.

use std::collections::HashSet;
use std::time::Duration;

use holdfast_proto::{Ready, Seq, SessionId, StateChange};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::commit::{Committed, Committer};

/// Early mode: the longest the oldest held `Ready` waits for commands still
/// in the service before its group is committed anyway (their completions
/// then go into a later group).
pub(crate) const HOLD_BOUND: Duration = Duration::from_millis(1);

/// The engine's durable side: the store, the group in flight and, in early
/// mode, the held group.
pub(crate) struct Driver {
    committer: Committer,
    /// Early mode (the service is replay-safe).
    early: bool,
    /// What the commit in flight releases once durable, in order. Strict
    /// mode: the one `Ready` (its deliveries not executed yet); early mode:
    /// the held `Ready`s (executed; their changes are in the commit).
    committing: Vec<Ready>,
    /// Early mode: the held group not yet committing.
    held: Held,
    /// Early mode: commands delivered since the last commit started and
    /// still in the service.
    running: HashSet<(SessionId, Seq)>,
}

/// Early mode: `Ready`s executed and waiting for their group's commit.
#[derive(Default)]
struct Held {
    /// Their changes, in order.
    changes: Vec<StateChange>,
    /// Their output (bytes, closes, fences), changes and deliveries taken.
    output: Vec<Ready>,
    /// When the oldest was held.
    since: Option<Instant>,
}

impl Driver {
    /// A driver over `committer`, in early mode if its service is
    /// replay-safe.
    pub(crate) fn new(committer: Committer) -> Self {
        let early = committer.replay_safe();
        if early {
            tracing::debug!("durable store: the service is replay-safe, commands execute early");
        }
        Driver {
            committer,
            early,
            committing: Vec::new(),
            held: Held::default(),
            running: HashSet::new(),
        }
    }

    /// Early mode: deliveries are executed before their changes are durable.
    pub(crate) fn early(&self) -> bool {
        self.early
    }

    /// See [`Committer::session_held`].
    pub(crate) fn session_held(&mut self, session: SessionId) {
        self.committer.session_held(session);
    }

    /// Strict mode: commits `ready`'s changes; the `Ready` waits for them.
    pub(crate) fn commit_ready(&mut self, mut ready: Ready) -> Option<JoinHandle<Committed>> {
        let changes = std::mem::take(&mut ready.changes);
        self.committing.push(ready);
        self.committer.start(changes)
    }

    /// Early mode: holds an executed `Ready` (its deliveries taken) until
    /// its group is durable; hands back one with nothing to hold (to
    /// recycle).
    pub(crate) fn hold(&mut self, mut ready: Ready) -> Option<Ready> {
        if ready.is_empty() {
            return Some(ready);
        }
        self.held.since.get_or_insert_with(Instant::now);
        self.held.changes.append(&mut ready.changes);
        self.held.output.push(ready);
        None
    }

    /// Early mode: a command was handed to the service and did not answer
    /// at once.
    pub(crate) fn started(&mut self, session: SessionId, seq: Seq) {
        if self.early {
            self.running.insert((session, seq));
        }
    }

    /// A command's outcome came back from the service.
    pub(crate) fn finished(&mut self, session: SessionId, seq: Seq) {
        self.running.remove(&(session, seq));
    }

    /// Early mode, with no commit in flight: starts the held group's commit
    /// if it is due (see the module comment), or returns the held output at
    /// once if it has no changes. Returns the output to send now.
    pub(crate) fn start_if_due(
        &mut self,
        commit: &mut Option<JoinHandle<Committed>>,
    ) -> Vec<Ready> {
        if !self.early || commit.is_some() || self.held.output.is_empty() {
            return Vec::new();
        }
        if self.held.changes.is_empty() {
            self.held.since = None;
            return std::mem::take(&mut self.held.output);
        }
        let waited_out = self.held.since.is_some_and(|t| t.elapsed() >= HOLD_BOUND);
        if !self.running.is_empty() && !waited_out {
            return Vec::new();
        }
        let held = std::mem::take(&mut self.held);
        self.running.clear();
        self.committing = held.output;
        *commit = self.committer.start(held.changes);
        Vec::new()
    }

    /// Early mode: when the held group is committed even though commands
    /// are still in the service; `None` when nothing waits on a deadline.
    pub(crate) fn deadline(&self, commit_running: bool) -> Option<Instant> {
        if !self.early || commit_running || self.held.changes.is_empty() || self.running.is_empty()
        {
            return None;
        }
        self.held.since.map(|t| t + HOLD_BOUND)
    }

    /// A group commit finished: the output it held back, in order (strict
    /// mode: the `Ready` with its changes restored, to execute), or why the
    /// target must stop: the store's state on disk is unknown after a
    /// failed fsync.
    pub(crate) fn committed(
        &mut self,
        done: Result<Committed, tokio::task::JoinError>,
    ) -> Result<Vec<Ready>, String> {
        let dir = self.committer.dir();
        let (store, mut changes, result) =
            done.map_err(|e| format!("the commit thread failed: {e} (state directory {dir:?})"))?;
        self.committer.finish(store);
        result.map_err(|e| e.to_string())?;
        let mut out = std::mem::take(&mut self.committing);
        if let Some(first) = out.first_mut() {
            // Strict mode: the changes go back to their `Ready` (its
            // sessions that ended are let go when it is finished); early
            // mode: the emptied vector is recycled with it.
            if self.early {
                changes.clear();
            }
            first.changes = changes;
        }
        Ok(out)
    }
}
