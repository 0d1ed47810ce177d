//! Session events: what happens to an [`Initiator`]'s session (logins,
//! recoveries, a replaced session and the calls it failed, shutdown
//! notices, lost connections, one of several connections dropped or
//! joined, the end), as a stream any task may follow
//! ([`Initiator::events`]), and [`Initiator::wait_connected`].

use std::time::Duration;

use holdfast_proto::{ConnId, ConnectionError, InitiatorEvent, SessionId, SessionLoss};
use tokio::sync::broadcast;

use crate::initiator::{Driver, Initiator};

/// Events buffered per receiver; a receiver that falls further behind
/// skips the oldest and is told how many with [`SessionEvent::Lagged`].
pub(crate) const EVENTS_BUFFER: usize = 256;

/// Something that happened to the session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The first login of a session succeeded: calls flow.
    Connected {
        /// The session.
        session: SessionId,
    },
    /// A login after a lost connection succeeded. `stateful`: the target
    /// still held the session and everything outstanding goes on, exactly
    /// once. Not `stateful`: this is the new session that replaced a lost
    /// one (after [`SessionEvent::Replaced`]).
    Recovered {
        /// The session (a new one if not `stateful`).
        session: SessionId,
        /// True if the existing session was recovered.
        stateful: bool,
    },
    /// The target no longer held the session (it restarted without its
    /// state, or its retain time passed): a new session is being opened.
    /// The calls that could not carry over failed, each with its own error
    /// (`NotExecuted` or `MayHaveExecuted`) to its caller; retry-safe calls
    /// and unsent ones are re-issued on the new session in their order.
    Replaced {
        /// Why the old session was lost.
        lost: SessionLoss,
        /// Calls re-issued on the new session.
        reissued: usize,
        /// Calls failed.
        failed_calls: usize,
    },
    /// The target announced a shutdown (a graceful restart): the
    /// connection should work for `up_for` more; the initiator reconnects
    /// after `back_after` (`None`: the target said it will not return).
    ShutdownNotice {
        /// How long the connection is expected to work still.
        up_for: Duration,
        /// How long until the target expects to be back.
        back_after: Option<Duration>,
    },
    /// The connection was lost (with several, the last of them); the
    /// initiator reconnects on its own and outstanding calls wait (nothing
    /// has failed because of it).
    ConnectionLost {
        /// Why.
        error: ConnectionError,
    },
    /// A session with several connections
    /// ([`crate::InitiatorConfig::connections`] above 1) lost one of them
    /// while others still carry it (PROTOCOL.md §17.5): nothing failed,
    /// the commands and messages it carried that the target had not
    /// acknowledged were moved to the survivors, and the initiator joins a
    /// new connection in its place after a backoff
    /// ([`SessionEvent::ConnectionJoined`]). When the last connection goes,
    /// [`SessionEvent::ConnectionLost`] is sent instead.
    ConnectionDropped {
        /// The connection that was lost (as named in its
        /// [`SessionEvent::ConnectionJoined`], if it joined).
        connection: ConnId,
        /// Why.
        error: ConnectionError,
        /// Commands and messages moved to the surviving connections.
        moved: u64,
        /// Connections still carrying the session.
        remaining: usize,
    },
    /// A connection joined a session with several connections (a join,
    /// LOGIN kind 2): the ones beyond the first after the session's login,
    /// and each one that replaces a [`SessionEvent::ConnectionDropped`].
    ConnectionJoined {
        /// The connection that joined.
        connection: ConnId,
        /// Connections now carrying the session.
        connections: usize,
    },
    /// The session is over: `Ok` after a clean close, the loss otherwise.
    /// Every later call fails. Always the last event.
    Ended {
        /// How it ended.
        result: Result<(), SessionLoss>,
    },
    /// This receiver fell behind and missed `missed` events.
    Lagged {
        /// How many were skipped.
        missed: u64,
    },
}

/// A stream of [`SessionEvent`]s from [`Initiator::events`].
#[derive(Debug)]
pub struct SessionEvents {
    rx: broadcast::Receiver<SessionEvent>,
}

impl SessionEvents {
    /// The next event; `None` once the session's driver is gone (after
    /// [`SessionEvent::Ended`], when every handle was dropped).
    pub async fn recv(&mut self) -> Option<SessionEvent> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(SessionEvent::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Initiator {
    /// Follows the session's events from now on (earlier ones are not
    /// replayed: use [`Initiator::wait_connected`] for the first login).
    /// Each receiver sees every event in order, unless it falls more than
    /// 256 behind ([`SessionEvent::Lagged`]). Events never hold up the
    /// session.
    pub fn events(&self) -> SessionEvents {
        SessionEvents {
            rx: self.events.subscribe(),
        }
    }

    /// Waits until the session's first login has succeeded (at once if it
    /// has). Fails with the loss if the session ended before any login (it
    /// was aborted or closed). While the target is unreachable this keeps
    /// waiting, as the initiator keeps trying (calls meanwhile fail
    /// [`crate::CallError::Unreachable`] after the session-loss timeout):
    /// wrap it in a timeout to wait less.
    pub async fn wait_connected(&self) -> Result<(), SessionLoss> {
        let mut logins = self.logins.clone();
        let mut outcome = self.outcome.clone();
        // The watch guards are dropped at once: this future stays `Send`.
        let connected = tokio::select! {
            biased;
            r = logins.wait_for(|n| *n > 0) => r.is_ok(),
            _ = outcome.wait_for(Option::is_some) => false,
        };
        if connected || *self.logins.borrow() > 0 {
            return Ok(());
        }
        Err(self.ended().await.err().unwrap_or(SessionLoss::Aborted))
    }
}

impl Driver {
    /// Publishes what `event` means to the application, if anything.
    pub(crate) fn session_event(&mut self, event: &InitiatorEvent) {
        let published = match event {
            InitiatorEvent::Connected {
                session, recovered, ..
            } => {
                let first = *self.logins.borrow() == 0;
                self.logins.send_modify(|n| *n = n.saturating_add(1));
                if first {
                    SessionEvent::Connected { session: *session }
                } else {
                    SessionEvent::Recovered {
                        session: *session,
                        stateful: *recovered,
                    }
                }
            }
            InitiatorEvent::SessionReplaced {
                lost,
                reissued,
                failed,
            } => SessionEvent::Replaced {
                lost: lost.clone(),
                reissued: *reissued,
                failed_calls: *failed,
            },
            InitiatorEvent::ShutdownNotice {
                up_until,
                reconnect_at,
            } => {
                let now = tokio::time::Instant::now();
                let from_now = |t| self.clock.instant(t).saturating_duration_since(now);
                SessionEvent::ShutdownNotice {
                    up_for: from_now(*up_until),
                    back_after: reconnect_at.map(from_now),
                }
            }
            InitiatorEvent::ConnectionLost { error, .. } => SessionEvent::ConnectionLost {
                error: error.clone(),
            },
            InitiatorEvent::ConnectionDropped { conn, error, moved } => {
                SessionEvent::ConnectionDropped {
                    connection: *conn,
                    error: error.clone(),
                    moved: *moved,
                    remaining: self.core.logged_in_connections(),
                }
            }
            InitiatorEvent::Joined { conn, .. } => SessionEvent::ConnectionJoined {
                connection: *conn,
                connections: self.core.logged_in_connections(),
            },
            InitiatorEvent::Closed => SessionEvent::Ended { result: Ok(()) },
            InitiatorEvent::SessionEnded(loss) => SessionEvent::Ended {
                result: Err(loss.clone()),
            },
            _ => return,
        };
        // No receiver is fine: nobody follows the events.
        let _ = self.events.send(published);
    }
}
