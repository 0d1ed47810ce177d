//! Failing a lost path over: noticing the loss (the path's connection gone
//! for longer than its detection bound), stopping all contact with the old
//! node, fencing it through a survivor or waiting out its quiesce time, and
//! giving the path a new session at the new epoch. The steps and why they
//! are safe are in the [parent module's documentation](super).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use holdfast_proto::SessionLoss;
use tokio::time::Instant;
use tracing::{info, warn};

use super::node;
use super::{FenceKind, Group, Outcome, PathSession, PathState};

impl Group {
    /// A surviving path's session to send a fence through.
    fn survivor(&self, lost: usize) -> Option<Arc<PathSession>> {
        (0..self.paths.len())
            .filter(|&i| i != lost)
            .map(|i| self.paths[i].session())
            .find(|s| s.is_up() && !s.is_lost())
    }

    /// Fails path `index` over: see the module documentation. Returns
    /// false if nothing was outstanding (the session is kept).
    pub(super) async fn failover(&self, index: usize, session: Arc<PathSession>) -> bool {
        let path = &self.paths[index];
        let open: Vec<u64> = {
            let mut c = session.calls();
            if c.open.is_empty() {
                drop(c);
                path.counters().state = Some(PathState::Down);
                if self.active.load(Ordering::SeqCst) == index {
                    self.move_active(index);
                }
                return false;
            }
            c.lost = true;
            c.open.iter().copied().collect()
        };
        let started = Instant::now();
        session.outcome.send_replace(Outcome::Fencing);
        self.order.hold(open.iter().copied());
        {
            let mut c = path.counters();
            c.state = Some(PathState::Fencing);
            c.failovers += 1;
        }
        self.move_active(index);
        let quiesce = node::quiesce(&session.initiator);
        let incarnation = node::node(&session.initiator);
        let contact = node::last_contact(&session.initiator);
        // Not one more byte to the old node: its last contact is final.
        session.initiator.abort().await;
        let last = contact.unwrap_or_else(Instant::now);
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        warn!(
            path = %path.name, calls = open.len(), epoch,
            "path lost: fencing the node before its calls are re-issued elsewhere"
        );
        let (kind, outcome) = self
            .make_safe(index, incarnation, quiesce, last, epoch)
            .await;
        let latency = started.elapsed();
        {
            let mut c = path.counters();
            c.last_fence = Some(kind);
            c.fence_latency = Some(latency);
            c.state = Some(PathState::Down);
        }
        info!(path = %path.name, ?kind, ?latency, "failover: calls in doubt settled");
        session.outcome.send_replace(outcome);
        // A new session to the node at the new epoch, in the background.
        let fresh = PathSession::new(node::start(
            path.connector.clone(),
            &self.options.initiator,
            self.host,
            epoch,
        ));
        *path.session.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.changed.notify_waiters();
        true
    }

    /// Fences the old node through a survivor, or waits it out.
    async fn make_safe(
        &self,
        index: usize,
        incarnation: Option<u32>,
        quiesce: Option<Duration>,
        last: Instant,
        epoch: u64,
    ) -> (FenceKind, Outcome) {
        #[cfg(feature = "test-switches")]
        if self.options.unfenced_failover {
            return (FenceKind::Skipped, Outcome::Safe);
        }
        let limit = quiesce.unwrap_or(Duration::from_secs(5));
        if let (Some(via), Some(node_id)) = (self.survivor(index), incarnation) {
            self.paths[index].counters().fences_requested += 1;
            let answer = node::fence(&via.initiator, node_id, self.host, epoch, limit).await;
            if answer == node::FenceAnswer::Fenced {
                self.paths[index].counters().fences_confirmed += 1;
                return (FenceKind::Confirmed, Outcome::Safe);
            }
        }
        match quiesce {
            Some(q) => {
                tokio::time::sleep_until(last + q + self.options.failover_delay).await;
                (FenceKind::Quiesced, Outcome::Safe)
            }
            None => (FenceKind::Impossible, Outcome::Unsafe),
        }
    }

    /// Marks path `index` given up; ends the group if every path has.
    pub(super) fn give_up(&self, index: usize, loss: SessionLoss) {
        self.paths[index].counters().gave_up = true;
        self.paths[index].counters().state = Some(PathState::Down);
        if self.paths.iter().all(|p| p.counters().gave_up) {
            warn!(%loss, "every path of the group gave up");
            self.ended.send_replace(Some(Err(loss)));
        } else if self.active.load(Ordering::SeqCst) == index {
            self.move_active(index);
        }
        self.changed.notify_waiters();
    }
}

/// Watches one session of path `index`: notices it logging in, and
/// declares it lost when its connection is gone for longer than the
/// detection bound.
pub(super) async fn watch_path(group: Weak<Group>, index: usize, mut session: Arc<PathSession>) {
    let Some(g) = group.upgrade() else { return };
    let bound = g.options.initiator.protocol.dead_after;
    let give_up_after = g.options.initiator.protocol.session_loss_timeout;
    drop(g);
    let mut link = session.link.clone();
    let mut down_since = Instant::now();
    loop {
        let up = *link.borrow_and_update();
        let Some(g) = group.upgrade() else { return };
        if g.closing.load(Ordering::SeqCst) {
            return;
        }
        if up {
            {
                let mut c = g.paths[index].counters();
                c.state = None;
                c.gave_up = false;
            }
            g.changed.notify_waiters();
            drop(g);
            if link.wait_for(|v| !*v).await.is_err() {
                return;
            }
            down_since = Instant::now();
            continue;
        }
        drop(g);
        let back = tokio::time::timeout(bound, link.wait_for(|v| *v))
            .await
            .map(|r| r.map(drop));
        match back {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return,
            Err(_) => {}
        }
        let Some(g) = group.upgrade() else { return };
        if g.closing.load(Ordering::SeqCst) {
            return;
        }
        if g.failover(index, session.clone()).await {
            session = g.paths[index].session();
            link = session.link.clone();
            down_since = Instant::now();
            continue;
        }
        if give_up_after.is_some_and(|t| down_since.elapsed() >= t) {
            g.give_up(index, SessionLoss::GaveUp(down_since.elapsed()));
        }
        drop(g);
        // Down with nothing in doubt: wait for it to come back.
        if link.wait_for(|v| *v).await.is_err() {
            return;
        }
    }
}
