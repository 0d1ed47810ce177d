//! What a path group reports about each of its paths
//! ([`super::PathGroup::stats`], the logs, the NBD export's status).

use std::fmt;
use std::time::Duration;

use holdfast_proto::InitiatorStats;

/// Where a path is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathState {
    /// Logging in (first connection, or a new session after a failover).
    Connecting,
    /// Logged in; carries calls (the active path, or any path under
    /// active/active).
    Active,
    /// Logged in; waits to take over (active/passive).
    Standby,
    /// The connection is lost; the session reconnects within its detection
    /// bound or the path is failed over.
    Reconnecting,
    /// Lost: its calls in doubt wait for the old node to be fenced (or for
    /// its quiesce time to pass) before they are re-issued elsewhere.
    Fencing,
    /// Lost with nothing in doubt, or failed over; a new session tries to
    /// reach the node in the background.
    Down,
    /// Closed.
    Closed,
}

impl PathState {
    /// A short lower-case name (`active`, `standby`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            PathState::Connecting => "connecting",
            PathState::Active => "active",
            PathState::Standby => "standby",
            PathState::Reconnecting => "reconnecting",
            PathState::Fencing => "fencing",
            PathState::Down => "down",
            PathState::Closed => "closed",
        }
    }
}

impl fmt::Display for PathState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the in-doubt calls of a lost path were made safe to re-issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FenceKind {
    /// A surviving node fenced the old one and the old one confirmed.
    Confirmed,
    /// The old node could not be reached: the group waited its quiesce time
    /// (plus `failover_delay`) from the last contact with it.
    Quiesced,
    /// Nothing was in doubt (every call was withdrawn unsent).
    NotNeeded,
    /// The old node promised no quiesce time and no fence was confirmed:
    /// the calls in doubt failed "may have executed".
    Impossible,
    /// Test-only: fencing was switched off and the calls were re-issued at
    /// once (this is the bug fencing prevents).
    Skipped,
}

/// One path's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathStats {
    /// The path's name (the target's address).
    pub name: String,
    /// Its state now.
    pub state: PathState,
    /// Time since the last byte received from (or sent to) the node, if
    /// there was contact.
    pub since_contact: Option<Duration>,
    /// Calls outstanding on it now.
    pub outstanding: usize,
    /// Failovers away from this path.
    pub failovers: u64,
    /// Fences of this path's node that the group asked a survivor for.
    pub fences_requested: u64,
    /// Of those, fences the node confirmed.
    pub fences_confirmed: u64,
    /// How the last failover away from this path was made safe.
    pub last_fence: Option<FenceKind>,
    /// How long the last failover waited (fence round trip, or the quiesce
    /// wait), from the decision that the path was lost.
    pub fence_latency: Option<Duration>,
    /// Calls moved off this path to another (re-issued elsewhere).
    pub commands_moved: u64,
    /// Calls that failed "may have executed" in a failover (not retry-safe).
    pub commands_failed: u64,
    /// The current session's own counters (`None` if it did not answer).
    pub session: Option<InitiatorStats>,
}

impl fmt::Display for PathStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.state)?;
        match self.since_contact {
            Some(d) => write!(f, ", last contact {} ms ago", d.as_millis())?,
            None => write!(f, ", no contact yet")?,
        }
        write!(
            f,
            ", {} outstanding, {} failovers, fences {}/{} confirmed",
            self.outstanding, self.failovers, self.fences_confirmed, self.fences_requested
        )?;
        if let (Some(kind), Some(latency)) = (self.last_fence, self.fence_latency) {
            write!(f, " (last: {kind:?} in {} ms)", latency.as_millis())?;
        }
        write!(
            f,
            ", {} commands moved, {} failed in doubt",
            self.commands_moved, self.commands_failed
        )
    }
}

/// A path group's figures: one entry per path, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathGroupStats {
    /// The paths.
    pub paths: Vec<PathStats>,
    /// The group's fencing epoch now.
    pub epoch: u64,
}

impl PathGroupStats {
    /// The sum of every path's session counters.
    pub fn sessions(&self) -> InitiatorStats {
        let mut t = InitiatorStats::default();
        for s in self.paths.iter().filter_map(|p| p.session.as_ref()) {
            t.connects += s.connects;
            t.disconnects += s.disconnects;
            t.sessions += s.sessions;
            t.recoveries += s.recoveries;
            t.stateless_recoveries += s.stateless_recoveries;
            t.resent += s.resent;
            t.reissued += s.reissued;
            t.responses += s.responses;
            t.messages_delivered += s.messages_delivered;
            t.calls_failed += s.calls_failed;
            t.withdrawn += s.withdrawn;
            t.pings += s.pings;
            t.acks += s.acks;
            t.bytes_in += s.bytes_in;
            t.bytes_out += s.bytes_out;
        }
        t
    }
}

impl fmt::Display for PathGroupStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.paths.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
