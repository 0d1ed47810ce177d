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
//!   and completed in one group: one fsync. After each batch the held
//!   group is *due* when either no command delivered since the last
//!   hand-over is still in the service, or the oldest held `Ready` has
//!   waited [`HOLD_BOUND`] (so a slow command cannot hold other sessions'
//!   answers long). A due group is handed to the committer
//!   ([`Committer::submit`]): it commits at once if no group is in flight,
//!   and otherwise joins the one group waiting behind the commit in
//!   flight, which the commit thread starts as soon as that commit is
//!   durable. So at most two groups are outstanding, their output is
//!   released in order as each becomes durable, and everything that
//!   becomes due during a commit shares the next fsync. The service's state
//!   is captured at each hand-over, after every `Ready` was drained, so the
//!   state stored with a group covers exactly the completions in it and
//!   before it. A held group without changes (a PONG) leaves at once when
//!   no group is outstanding, and otherwise right after the newest one's
//!   output.
//!
//! **Inline commits**, in both modes: when commands come one at a time
//! (more than [`INLINE_AFTER`] groups in a row each received at most one
//! command or message) and no group is outstanding, a group is committed on
//! the engine's own thread instead ([`Committer::commit_inline`]) and its
//! output released (strict mode: its `Ready` finished) at once: at queue
//! depth 1 this spares two thread hand-offs per commit. Under load it is
//! not used: the engine takes no input while it commits inline, whereas
//! with the commit thread it prepares the next group during the fsync.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use holdfast_proto::{Ready, Seq, SessionId, StateChange};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::commit::{Committer, Done};

/// Early mode: the longest the oldest held `Ready` waits for commands still
/// in the service before its group is handed over anyway (their completions
/// then go into a later group).
pub(crate) const HOLD_BOUND: Duration = Duration::from_millis(1);

/// After more than this many groups in a row that each received at most
/// one command or message, a group with nothing outstanding is committed
/// inline (see the module comment).
pub(crate) const INLINE_AFTER: u32 = 4;

/// The engine's durable side: the committer, the output of the groups
/// handed over and, in early mode, the held group.
pub(crate) struct Driver {
    committer: Committer,
    /// Early mode (the service is replay-safe).
    early: bool,
    /// What each group handed over and not yet durable releases once it
    /// is, oldest first, by group number. Strict mode: at most one group,
    /// its one `Ready` (deliveries not executed yet); early mode: the held
    /// `Ready`s (executed; their changes are in the group), and output
    /// without changes produced after them.
    committing: VecDeque<(u64, Vec<Ready>)>,
    /// Early mode: the held group not yet handed over.
    held: Held,
    /// Early mode: commands delivered since the last group was handed over
    /// and still in the service.
    running: HashSet<(SessionId, Seq)>,
    /// Due groups in a row that each received at most one command or
    /// message (see [`INLINE_AFTER`]).
    single_streak: u32,
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
            committing: VecDeque::new(),
            held: Held::default(),
            running: HashSet::new(),
            single_streak: 0,
        }
    }

    /// Early mode: deliveries are executed before their changes are durable.
    pub(crate) fn early(&self) -> bool {
        self.early
    }

    /// A group is handed over and not yet durable.
    pub(crate) fn busy(&self) -> bool {
        !self.committing.is_empty()
    }

    /// The receiver of finished groups, once (see [`Committer::take_done`]).
    pub(crate) fn take_done(&mut self) -> Option<mpsc::UnboundedReceiver<Done>> {
        self.committer.take_done()
    }

    /// See [`Committer::session_held`].
    pub(crate) fn session_held(&mut self, session: SessionId) {
        self.committer.session_held(session);
    }

    /// Strict mode: commits `ready`'s changes; the `Ready` waits for them.
    /// Only when no group is in flight ([`Driver::busy`]). Committed inline
    /// (see the module comment), the `Ready` comes back at once, its changes
    /// durable, to finish now; a failed inline commit is the reason the
    /// target must stop.
    pub(crate) fn commit_ready(&mut self, mut ready: Ready) -> Result<Option<Ready>, String> {
        let changes = std::mem::take(&mut ready.changes);
        if self.inline_now(&changes) {
            let done = self.committer.commit_inline(changes);
            self.committing.push_back((done.id, vec![ready]));
            return Ok(self.committed(Some(done))?.pop());
        }
        let (id, merged) = self.committer.submit(changes);
        debug_assert!(
            !merged,
            "strict mode hands a group over only when none is in flight"
        );
        self.committing.push_back((id, vec![ready]));
        Ok(None)
    }

    /// Counts a group about to be committed in the streak of groups that
    /// received at most one command or message, and says whether to commit
    /// it inline: after more than [`INLINE_AFTER`] such groups in a row,
    /// when no group is outstanding and the runtime allows it.
    fn inline_now(&mut self, changes: &[StateChange]) -> bool {
        let received = changes
            .iter()
            .filter(|c| matches!(c, StateChange::Received { .. }))
            .count();
        self.single_streak = if received <= 1 {
            self.single_streak.saturating_add(1)
        } else {
            0
        };
        self.committing.is_empty()
            && self.single_streak > INLINE_AFTER
            && self.committer.can_inline()
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

    /// Early mode, after every `Ready` was drained: hands the held group to
    /// the committer if it is due (see the module comment; it joins the
    /// group waiting for the commit in flight, if any), or, if it has no
    /// changes, returns its output to send now when no group is in flight
    /// and otherwise queues it behind the newest group. A group committed
    /// inline returns its output at once; its commit's failure is returned
    /// as the reason the target must stop (as from [`Driver::committed`]).
    pub(crate) fn flush_if_due(&mut self) -> Result<Vec<Ready>, String> {
        if !self.early || self.held.output.is_empty() {
            return Ok(Vec::new());
        }
        if self.held.changes.is_empty() {
            self.held.since = None;
            let output = std::mem::take(&mut self.held.output);
            return Ok(match self.committing.back_mut() {
                None => output,
                Some((_, waiting)) => {
                    waiting.extend(output);
                    Vec::new()
                }
            });
        }
        let waited_out = self.held.since.is_some_and(|t| t.elapsed() >= HOLD_BOUND);
        if !self.running.is_empty() && !waited_out {
            return Ok(Vec::new());
        }
        let held = std::mem::take(&mut self.held);
        self.running.clear();
        if self.inline_now(&held.changes) {
            let done = self.committer.commit_inline(held.changes);
            self.committing.push_back((done.id, held.output));
            return self.committed(Some(done));
        }
        let (id, merged) = self.committer.submit(held.changes);
        match self.committing.back_mut() {
            Some((last, waiting)) if merged && *last == id => waiting.extend(held.output),
            _ => self.committing.push_back((id, held.output)),
        }
        Ok(Vec::new())
    }

    /// Early mode: when the held group is handed over even though commands
    /// are still in the service; `None` when nothing waits on a deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if !self.early || self.held.changes.is_empty() || self.running.is_empty() {
            return None;
        }
        self.held.since.map(|t| t + HOLD_BOUND)
    }

    /// A group commit finished (`None`: the commit thread is gone): the
    /// output it held back, in order (strict mode: the `Ready` with its
    /// changes restored, to execute), or why the target must stop: the
    /// store's state on disk is unknown after a failed fsync.
    pub(crate) fn committed(&mut self, done: Option<Done>) -> Result<Vec<Ready>, String> {
        let dir = self.committer.dir().to_path_buf();
        let Some(done) = done else {
            return Err(format!(
                "the session store's commit thread ended (state directory {})",
                dir.display()
            ));
        };
        done.result.map_err(|e| e.to_string())?;
        let mut changes = done.changes;
        let out = match self.committing.pop_front() {
            Some((id, out)) if id == done.id => out,
            other => {
                return Err(format!(
                    "group {} was committed while group {:?} was expected (state directory {})",
                    done.id,
                    other.map(|(id, _)| id),
                    dir.display()
                ))
            }
        };
        let mut out = out;
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

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
