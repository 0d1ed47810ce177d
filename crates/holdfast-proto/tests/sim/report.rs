//! What a simulation run observed: counts of steps, faults, recoveries and
//! outcomes, summed over seeds by the test runners.

use holdfast_proto::Timestamp;

/// What a run observed.
#[derive(Debug, Default, Clone)]
pub struct SimReport {
    /// Steps taken.
    pub steps: u64,
    /// Operations issued.
    pub ops: u64,
    /// Faults injected.
    pub faults: u64,
    /// Target restarts.
    pub restarts: u64,
    /// Virtual time at the end.
    pub end: Timestamp,
    /// Stateful recoveries the target accepted.
    pub recoveries: u64,
    /// Stateless recoveries (the target had lost the session).
    pub stateless: u64,
    /// Connections fenced by a newer one.
    pub fenced: u64,
    /// Responses answered from the cache on a new connection.
    pub from_cache: u64,
    /// Resent frames the target dropped as duplicates.
    pub duplicates: u64,
    /// Sessions that expired.
    pub expired: u64,
    /// Calls failed as "may have executed".
    pub may_have_executed: u64,
    /// Calls failed as "not executed".
    pub not_executed: u64,
    /// Calls withdrawn by their caller.
    pub withdrawn: u64,
    /// Sessions whose expiry waited for running commands.
    pub expiries_deferred: u64,
    /// Joins the target accepted (several connections per session).
    pub joins: u64,
    /// Commands and messages moved from a lost connection to survivors.
    pub moved: u64,
    /// Commands and messages that waited in the target's reorder buffer.
    pub reordered: u64,
    /// Targets rebuilt from their store (durable mode).
    pub restores: u64,
    /// Sessions rebuilt in them.
    pub sessions_restored: u64,
    /// Sessions whose retain time passed while the target was down.
    pub expired_while_down: u64,
    /// Disk mode: commits whose file operations all ran.
    pub disk_commits: u64,
    /// Disk mode: recoveries that dropped a torn final group.
    pub torn_tails: u64,
}

impl SimReport {
    /// Adds another run's counts (for totals over seeds).
    pub fn add(&mut self, o: &SimReport) {
        self.steps += o.steps;
        self.ops += o.ops;
        self.faults += o.faults;
        self.restarts += o.restarts;
        self.recoveries += o.recoveries;
        self.stateless += o.stateless;
        self.fenced += o.fenced;
        self.from_cache += o.from_cache;
        self.duplicates += o.duplicates;
        self.expired += o.expired;
        self.may_have_executed += o.may_have_executed;
        self.not_executed += o.not_executed;
        self.withdrawn += o.withdrawn;
        self.expiries_deferred += o.expiries_deferred;
        self.joins += o.joins;
        self.moved += o.moved;
        self.reordered += o.reordered;
        self.restores += o.restores;
        self.sessions_restored += o.sessions_restored;
        self.expired_while_down += o.expired_while_down;
        self.disk_commits += o.disk_commits;
        self.torn_tails += o.torn_tails;
    }

    pub(super) fn add_target(&mut self, t: &holdfast_proto::TargetStats) {
        self.recoveries += t.recoveries_accepted;
        self.fenced += t.fenced;
        self.from_cache += t.answered_from_cache;
        self.duplicates += t.duplicates_dropped;
        self.expired += t.sessions_expired;
        self.expiries_deferred += t.expiries_deferred;
        self.joins += t.joins_accepted;
        self.reordered += t.reordered;
    }
}
