//! The quiesce promise at the service (PROTOCOL.md §11.4): a command of a
//! multipath-capable session may not start touching the backend later than
//! its session's last contact plus the inactivity deadline, nor once the
//! session is fenced.
//!
//! The target runtime checks this right before it calls the service. A
//! service whose futures wait before they touch the backend (the block
//! service queues overlapping requests) checks again at that moment with
//! [`crate::Request::begin`]: the check reads two atomics the engine
//! refreshes after every batch of input, and the clock. A refused command
//! is answered with the status response `NotExecuted` whatever the service
//! returns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use holdfast_proto::{NotStarted, Timestamp};

use crate::clock::Clock;

/// What the engine publishes for one session's commands.
#[derive(Debug)]
pub(crate) struct SessionGate {
    /// The start deadline in nanoseconds since the clock's origin.
    deadline: AtomicU64,
    /// The last contact, likewise (for the refusal's text).
    contact: AtomicU64,
    fenced: AtomicBool,
}

impl SessionGate {
    pub(crate) fn new(contact: Timestamp, deadline: Timestamp, fenced: bool) -> Arc<Self> {
        Arc::new(SessionGate {
            deadline: AtomicU64::new(deadline.as_nanos()),
            contact: AtomicU64::new(contact.as_nanos()),
            fenced: AtomicBool::new(fenced),
        })
    }

    /// Publishes the core's current view.
    pub(crate) fn set(&self, contact: Timestamp, deadline: Timestamp, fenced: bool) {
        self.contact.store(contact.as_nanos(), Ordering::Release);
        self.deadline.store(deadline.as_nanos(), Ordering::Release);
        if fenced {
            self.fenced.store(true, Ordering::Release);
        }
    }
}

#[derive(Debug)]
struct Inner {
    clock: Clock,
    session: Arc<SessionGate>,
    /// Set when `begin` refused: the command is answered `NotExecuted`.
    refused: AtomicBool,
    why: std::sync::Mutex<Option<NotStarted>>,
}

/// The start check of one command (see [`crate::Request::begin`]). A
/// default gate (a session without a quiesce promise, or a request built
/// by hand) always says yes.
#[derive(Clone, Debug, Default)]
pub struct StartGate {
    inner: Option<Arc<Inner>>,
}

impl PartialEq for StartGate {
    fn eq(&self, other: &Self) -> bool {
        match (&self.inner, &other.inner) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for StartGate {}

impl StartGate {
    pub(crate) fn new(clock: Clock, session: Arc<SessionGate>) -> Self {
        StartGate {
            inner: Some(Arc::new(Inner {
                clock,
                session,
                refused: AtomicBool::new(false),
                why: std::sync::Mutex::new(None),
            })),
        }
    }

    /// May the command start touching the backend now? Once this says no,
    /// it keeps saying no, and the command is answered `NotExecuted`.
    pub fn begin(&self) -> Result<(), NotStarted> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        if let Some(why) = inner.refusal() {
            return Err(why);
        }
        let why = if inner.session.fenced.load(Ordering::Acquire) {
            NotStarted::Fenced
        } else {
            let deadline = Timestamp::from_nanos(inner.session.deadline.load(Ordering::Acquire));
            let now = inner.clock.now();
            if now <= deadline {
                return Ok(());
            }
            let contact = inner.session.contact.load(Ordering::Acquire);
            NotStarted::PastDeadline {
                last_contact: Timestamp::from_nanos(contact),
                deadline,
            }
        };
        if let Ok(mut slot) = inner.why.lock() {
            slot.get_or_insert(why);
        }
        inner.refused.store(true, Ordering::Release);
        Err(why)
    }

    /// Why `begin` refused, if it did.
    pub(crate) fn refused(&self) -> Option<NotStarted> {
        self.inner.as_ref().and_then(|i| i.refusal())
    }
}

impl Inner {
    fn refusal(&self) -> Option<NotStarted> {
        if !self.refused.load(Ordering::Acquire) {
            return None;
        }
        self.why.lock().ok().and_then(|w| *w)
    }
}
