//! Identifiers shared by both sides of a session.

use std::fmt;

/// Identifies a session at its target. The high 32 bits are the target's
/// incarnation (random at start-up), so a target that restarted can tell a
/// recovering initiator "I restarted" rather than "I never heard of you".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    /// Composes an id from a target incarnation and a per-incarnation counter.
    pub const fn new(incarnation: u32, counter: u32) -> Self {
        SessionId(((incarnation as u64) << 32) | counter as u64)
    }

    /// The incarnation of the target that issued this id.
    pub const fn incarnation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The per-incarnation counter (the low 32 bits).
    pub const fn counter(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{:016x}", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The 128-bit secret a target issues with a new session. Only a login that
/// presents it may recover the session.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionSecret(pub [u8; 16]);

impl SessionSecret {
    /// Compares in constant time, so a guesser learns nothing from timing.
    pub fn matches(&self, other: &SessionSecret) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

/// A transport connection as named by the driver. The driver picks the value
/// (any unique `u64`), the core only compares them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnId(pub u64);

/// Names one call (`Initiator::call`) or one-way message (`Initiator::send`)
/// for its whole life, across reconnects and re-issue on a new session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct CallId(pub u64);

/// A 64-bit message sequence number. Sequences start at 1; 0 means "none".
/// 64 bits never wrap in practice (585 years at a billion messages a second).
pub type Seq = u64;
