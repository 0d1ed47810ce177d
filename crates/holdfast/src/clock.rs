//! The bridge between tokio's clock and the core's [`Timestamp`]s.

use holdfast_proto::Timestamp;
use tokio::time::Instant;

/// Converts between `tokio::time::Instant` and the core's timestamps, which
/// count nanoseconds from the clock's creation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }

    /// The current time as a timestamp.
    pub(crate) fn now(&self) -> Timestamp {
        self.timestamp(Instant::now())
    }

    pub(crate) fn timestamp(&self, at: Instant) -> Timestamp {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        Timestamp::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The instant of a timestamp (far future for `NEVER`).
    pub(crate) fn instant(&self, at: Timestamp) -> Instant {
        if at == Timestamp::NEVER {
            return self.origin + std::time::Duration::from_secs(86_400 * 365);
        }
        self.origin + std::time::Duration::from_nanos(at.as_nanos())
    }
}
