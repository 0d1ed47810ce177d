//! How a [`crate::Target`] stops: its listening sockets close at once (so a
//! successor can bind the same address right away), its tasks are aborted
//! and awaited; and [`Reconnect`], what a shutdown notice tells initiators
//! about coming back.

use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::transport::Closer;

/// What a shutdown notice tells the initiators about this target's return
/// (PROTOCOL.md §10): when they may reconnect, or that they never should.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconnect {
    /// Initiators wait this long after the connection closes, then
    /// reconnect (to a successor on the same address, say).
    After(Duration),
    /// The target will not come back: initiators fail their sessions
    /// ([`crate::SessionLoss::TargetGone`]) instead of waiting. Session
    /// state is lost when a target stops, so a target that no successor
    /// holding its sessions replaces should say this.
    Never,
}

impl Reconnect {
    /// The hold time as the protocol core takes it (`None`: never).
    pub(crate) fn hold(self) -> Option<Duration> {
        match self {
            Reconnect::After(d) => Some(d),
            Reconnect::Never => None,
        }
    }
}

/// The old spelling: `Some(d)` is [`Reconnect::After`], `None` is
/// [`Reconnect::Never`].
impl From<Option<Duration>> for Reconnect {
    fn from(hold: Option<Duration>) -> Reconnect {
        hold.map_or(Reconnect::Never, Reconnect::After)
    }
}

impl From<Duration> for Reconnect {
    fn from(hold: Duration) -> Reconnect {
        Reconnect::After(hold)
    }
}

/// A target's listeners and tasks, stopped once.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    closers: Vec<Closer>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Tasks {
    /// Tasks `handles` (accept loops, then the engine), and the closers of
    /// the sockets they accept on.
    pub(crate) fn new(closers: Vec<Closer>, handles: Vec<JoinHandle<()>>) -> Tasks {
        Tasks {
            closers,
            handles: Mutex::new(handles),
        }
    }

    /// Closes every listening socket now and aborts every task (they end
    /// at their next poll). Idempotent.
    pub(crate) fn abort(&self) {
        for c in &self.closers {
            c.close();
        }
        for h in self.handles().iter() {
            h.abort();
        }
    }

    /// Aborts everything and waits until every task has ended.
    pub(crate) async fn stop(&self) {
        self.abort();
        let handles = std::mem::take(&mut *self.handles());
        for h in handles {
            let _ = h.await;
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.handles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
