//! What a target reports about itself: its counters ([`TargetStats`]) and a
//! snapshot of one session ([`SessionInfo`]).

use crate::time::Timestamp;
use crate::Seq;

#[cfg(doc)]
use super::{StoreBehind, Target};

/// Counters a target keeps for observability. All only ever increase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TargetStats {
    /// Connections accepted.
    pub connections: u64,
    /// Sessions created by a new login.
    pub sessions_created: u64,
    /// Recovery logins accepted.
    pub recoveries_accepted: u64,
    /// Recovery logins rejected (the session could not be recovered).
    pub recoveries_rejected: u64,
    /// Responses sent again from the cache on a recovered connection.
    pub answered_from_cache: u64,
    /// Resent commands or messages dropped because they had already arrived.
    pub duplicates_dropped: u64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: u64,
    /// Connections closed because a deadline passed: no login within the
    /// login timeout, or silence past the inactivity deadline. Not counted
    /// in `protocol_errors`: nothing malformed arrived.
    pub timeouts: u64,
    /// Of those, violations of the credit limit.
    pub credit_violations: u64,
    /// Connections fenced off by a newer connection of their session.
    pub fenced: u64,
    /// Sessions dropped after their retain time.
    pub sessions_expired: u64,
    /// Sessions whose retain time passed while commands still ran, so their
    /// end waited for the last one to finish.
    pub expiries_deferred: u64,
    /// Sessions closed with FIN.
    pub sessions_closed: u64,
    /// Commands delivered to the service.
    pub commands: u64,
    /// One-way messages delivered to the service.
    pub messages: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes handed out to send.
    pub bytes_out: u64,
    /// Join logins accepted (a connection added to a session, §17).
    pub joins_accepted: u64,
    /// Commands or messages that arrived ahead of their turn on a session
    /// with several connections and waited in its reorder buffer (§17.3).
    pub reordered: u64,
    /// The most sequence numbers one session's reorder buffer held at once
    /// (always below its credits, §17.3).
    pub reorder_peak: u64,
    /// Responses too large for their initiator, answered with a status
    /// response `ResponseTooLarge` instead.
    pub oversized_responses: u64,
    /// Commands answered `NotExecuted`: a fence or the quiesce promise
    /// forbade starting them (PROTOCOL.md §11.4).
    pub not_executed: u64,
    /// Commands whose service reported an error, answered with a status
    /// response `ServiceFailed` (they executed).
    pub service_failures: u64,
    /// Commands that completed after their session's quiesce time had
    /// passed since its last contact: the promise advertised at login was
    /// broken by a slow backend call (raise `command_budget`).
    pub quiesce_overruns: u64,
    /// FENCEs naming this node that were carried out.
    pub fences_received: u64,
    /// FENCEs naming this node that were confirmed (FENCE_DONE `Fenced`).
    pub fences_confirmed: u64,
    /// FENCEs naming another node, handed to the driver to forward.
    pub fences_forwarded: u64,
    /// Sessions fenced.
    pub sessions_fenced: u64,
    /// Sessions rebuilt from the store by [`Target::restore`] (PROTOCOL.md §12).
    pub sessions_restored: u64,
    /// Recoveries of restored sessions refused because the initiator had
    /// received responses the store did not hold (see [`StoreBehind`]).
    pub recoveries_store_behind: u64,
}

/// A snapshot of one session's state, for tests and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The credit window.
    pub credits: u32,
    /// Highest contiguous sequence received.
    pub received: Seq,
    /// The current credit limit.
    pub limit: Seq,
    /// Unfinished messages held (never above `credits`).
    pub held: u32,
    /// Commands running in the service.
    pub running: usize,
    /// Responses cached awaiting acknowledgement.
    pub cached: usize,
    /// Bytes of payload in the response cache.
    pub cached_bytes: usize,
    /// Highest response acknowledged.
    pub responses_acked: Seq,
    /// Whether a connection is attached.
    pub attached: bool,
    /// Since when the session has had no connection (`None` while one is
    /// attached): its retain time counts from here.
    pub detached_since: Option<Timestamp>,
    /// The retain time passed while commands still ran: the session ends
    /// when the last completes, unless recovered first (PROTOCOL.md §11.1).
    pub expiry_deferred: bool,
}
