//! Reconnect pacing: the first retry at once, then exponential backoff with
//! "equal jitter" (half the step fixed, half random), capped. The fixed half
//! is what keeps a peer that fails every attempt from being hammered: full
//! jitter can draw near-zero delays again and again.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// Backoff starting at `initial` and capped at `max`.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
            seed: seed | 1,
        }
    }

    /// The delay before the next attempt: zero for the first, then a random
    /// value between half of and all of `initial * 2^(n-1)`, capped at `max`.
    pub fn next_delay(&mut self) -> Duration {
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        if attempt == 0 {
            return Duration::ZERO;
        }
        let ceiling = self
            .initial
            .saturating_mul(1u32 << (attempt - 1).min(20))
            .min(self.max);
        // xorshift64 for jitter; no need for cryptographic randomness here.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        Duration::from_nanos(half + self.seed % (nanos - half).max(1))
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_retry_is_immediate_then_grows_within_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(200), 3);
        assert_eq!(b.next_delay(), Duration::ZERO);
        for n in 1..12u32 {
            let ceiling = (Duration::from_millis(10) * 2u32.pow((n - 1).min(20)))
                .min(Duration::from_millis(200));
            let d = b.next_delay();
            assert!(
                d <= ceiling && d >= ceiling / 2,
                "{d:?} outside half of {ceiling:?}"
            );
        }
        b.reset();
        assert_eq!(b.next_delay(), Duration::ZERO);
    }
}
