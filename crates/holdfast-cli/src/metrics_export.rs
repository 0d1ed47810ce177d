//! `--metrics ADDR`: a Prometheus endpoint (`GET /metrics` on ADDR; the
//! recorder and its listener are in [`crate::metrics_endpoint`]).
//!
//! Two sources feed it. Events are recorded where they happen, through the
//! `metrics` facade: recoveries and their duration and lost connections
//! (the runtime), NBD requests and their latency (the NBD server), backend
//! I/O latency (the block service). Counters and gauges the core already
//! keeps (sessions by state, credits, the response cache, commands, bytes)
//! are read from the running target or initiator every [`REFRESH`] and
//! published as they are, so the two never disagree.
//! The metric names are listed in README.md ("Metrics").

use std::net::SocketAddr;
use std::time::Duration;

use holdfast::paths::PathGroup;
use holdfast::{Initiator, TargetObserver};
use metrics::{counter, gauge};
use tokio::task::JoinHandle;

/// How often counters and gauges kept by the core are republished.
pub(crate) const REFRESH: Duration = Duration::from_millis(500);

/// Starts the endpoint on `addr` and installs the global recorder (see
/// [`crate::metrics_endpoint`]).
pub(crate) fn install(addr: SocketAddr) -> anyhow::Result<()> {
    crate::metrics_endpoint::install(addr)
}

/// Republishes a target's counters and gauges until it stops.
pub(crate) fn export_target(target: TargetObserver) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tick.tick().await;
            let (Some(stats), Some(sessions), Some(connections)) = (
                target.stats().await,
                target.sessions().await,
                target.connections().await,
            ) else {
                return;
            };
            let c = |name: &'static str, v: u64| counter!(name).absolute(v);
            c(
                "holdfast_target_connections_accepted_total",
                stats.connections,
            );
            counter!("holdfast_target_logins_total", "outcome" => "new")
                .absolute(stats.sessions_created);
            counter!("holdfast_target_logins_total", "outcome" => "recovered")
                .absolute(stats.recoveries_accepted);
            counter!("holdfast_target_logins_total", "outcome" => "recovery_rejected")
                .absolute(stats.recoveries_rejected);
            // A recovery the target accepts is stateful; one it rejects
            // leaves the initiator only a stateless recovery.
            counter!("holdfast_target_recoveries_total", "kind" => "stateful")
                .absolute(stats.recoveries_accepted);
            counter!("holdfast_target_recoveries_total", "kind" => "stateless")
                .absolute(stats.recoveries_rejected);
            counter!("holdfast_target_commands_total", "outcome" => "executed")
                .absolute(stats.commands);
            counter!("holdfast_target_commands_total", "outcome" => "response_too_large")
                .absolute(stats.oversized_responses);
            counter!("holdfast_target_commands_total", "outcome" => "service_failed")
                .absolute(stats.service_failures);
            counter!("holdfast_target_commands_total", "outcome" => "answered_from_cache")
                .absolute(stats.answered_from_cache);
            counter!("holdfast_target_commands_total", "outcome" => "duplicate_dropped")
                .absolute(stats.duplicates_dropped);
            c("holdfast_target_messages_total", stats.messages);
            c("holdfast_target_received_bytes_total", stats.bytes_in);
            c("holdfast_target_sent_bytes_total", stats.bytes_out);
            counter!("holdfast_target_connections_closed_total", "cause" => "timeout")
                .absolute(stats.timeouts);
            counter!("holdfast_target_connections_closed_total", "cause" => "protocol_error")
                .absolute(stats.protocol_errors);
            counter!("holdfast_target_connections_closed_total", "cause" => "credit_violation")
                .absolute(stats.credit_violations);
            counter!("holdfast_target_connections_closed_total", "cause" => "fenced")
                .absolute(stats.fenced);
            counter!("holdfast_target_sessions_ended_total", "cause" => "expired")
                .absolute(stats.sessions_expired);
            counter!("holdfast_target_sessions_ended_total", "cause" => "closed")
                .absolute(stats.sessions_closed);
            c(
                "holdfast_target_expiries_deferred_total",
                stats.expiries_deferred,
            );
            // With --state-dir (PROTOCOL.md §12): sessions taken back from
            // the store at start, and recoveries refused because the store
            // was behind what the initiator had received.
            c(
                "holdfast_target_sessions_restored_total",
                stats.sessions_restored,
            );
            c(
                "holdfast_target_recoveries_store_behind_total",
                stats.recoveries_store_behind,
            );

            gauge!("holdfast_target_connections").set(connections as f64);
            let mut by_state = [0usize; 3];
            let (mut held, mut cached, mut cached_bytes) = (0u64, 0u64, 0u64);
            for s in &sessions {
                let i = match s.state.as_str() {
                    "attached" => 0,
                    "detached" => 1,
                    _ => 2,
                };
                by_state[i] += 1;
                held += u64::from(s.info.held);
                cached += s.info.cached as u64;
                cached_bytes += s.info.cached_bytes as u64;
            }
            for (state, n) in ["attached", "detached", "expiring"].iter().zip(by_state) {
                gauge!("holdfast_target_sessions", "state" => *state).set(n as f64);
            }
            gauge!("holdfast_target_credits_in_use").set(held as f64);
            gauge!("holdfast_target_response_cache_entries").set(cached as f64);
            gauge!("holdfast_target_response_cache_bytes").set(cached_bytes as f64);
        }
    })
}

/// Republishes an initiator's counters until its session ends.
pub(crate) fn export_initiator(initiator: Initiator) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tick.tick().await;
            let Some(s) = initiator.stats().await else {
                return;
            };
            let c = |name: &'static str, v: u64| counter!(name).absolute(v);
            c("holdfast_initiator_connects_total", s.connects);
            c("holdfast_initiator_disconnects_total", s.disconnects);
            c("holdfast_initiator_sessions_total", s.sessions);
            counter!("holdfast_initiator_logins_total", "outcome" => "recovered")
                .absolute(s.recoveries);
            counter!("holdfast_initiator_logins_total", "outcome" => "session_replaced")
                .absolute(s.stateless_recoveries);
            c("holdfast_initiator_resent_total", s.resent);
            c("holdfast_initiator_reissued_total", s.reissued);
            counter!("holdfast_initiator_calls_total", "outcome" => "answered")
                .absolute(s.responses);
            counter!("holdfast_initiator_calls_total", "outcome" => "failed")
                .absolute(s.calls_failed);
            counter!("holdfast_initiator_calls_total", "outcome" => "withdrawn")
                .absolute(s.withdrawn);
            c(
                "holdfast_initiator_messages_delivered_total",
                s.messages_delivered,
            );
            c("holdfast_initiator_pings_total", s.pings);
            c("holdfast_initiator_received_bytes_total", s.bytes_in);
            c("holdfast_initiator_sent_bytes_total", s.bytes_out);
        }
    })
}

/// The states a path can be in, for the one-hot `holdfast_path_state` gauge.
const PATH_STATES: [&str; 7] = [
    "connecting",
    "active",
    "standby",
    "reconnecting",
    "fencing",
    "down",
    "closed",
];

/// Republishes a path group's per-path state and failover counters until
/// it closes.
pub(crate) fn export_paths(group: PathGroup) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tick.tick().await;
            let stats = group.stats().await;
            gauge!("holdfast_path_epoch").set(stats.epoch as f64);
            let mut all_closed = !stats.paths.is_empty();
            for p in &stats.paths {
                let path = p.name.clone();
                all_closed &= p.state.name() == "closed";
                for state in PATH_STATES {
                    let on = if p.state.name() == state { 1.0 } else { 0.0 };
                    gauge!("holdfast_path_state", "path" => path.clone(), "state" => state).set(on);
                }
                if let Some(since) = p.since_contact {
                    gauge!("holdfast_path_since_contact_seconds", "path" => path.clone())
                        .set(since.as_secs_f64());
                }
                gauge!("holdfast_path_outstanding", "path" => path.clone())
                    .set(p.outstanding as f64);
                let c = |name: &'static str, v: u64| {
                    counter!(name, "path" => path.clone()).absolute(v);
                };
                c("holdfast_path_failovers_total", p.failovers);
                c("holdfast_path_fences_requested_total", p.fences_requested);
                c("holdfast_path_fences_confirmed_total", p.fences_confirmed);
                c("holdfast_path_commands_moved_total", p.commands_moved);
                c("holdfast_path_commands_failed_total", p.commands_failed);
                if let Some(latency) = p.fence_latency {
                    gauge!("holdfast_path_last_fence_seconds", "path" => path.clone())
                        .set(latency.as_secs_f64());
                }
            }
            if all_closed {
                return;
            }
        }
    })
}
