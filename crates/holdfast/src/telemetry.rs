//! Metrics the runtime records through the `metrics` facade: recoveries by
//! kind with their duration, and lost connections by cause. Nothing is
//! recorded unless the application installs a recorder (the `holdfast`
//! binary's `--metrics` does, with a Prometheus exporter); without one each
//! call is a few loads and a branch.
//!
//! Counters that the core already keeps (`InitiatorStats`, `TargetStats`)
//! are not duplicated here: an exporter reads them from `stats()`.

use holdfast_proto::ConnectionError;
use tokio::time::Instant;

/// Recovery time, from a lost connection to the next login accepted.
pub(crate) const RECOVERY_SECONDS: &str = "holdfast_initiator_recovery_seconds";
/// Recoveries completed, by kind.
pub(crate) const RECOVERIES: &str = "holdfast_initiator_recoveries_total";
/// Connections lost, by cause.
pub(crate) const CONNECTIONS_LOST: &str = "holdfast_initiator_connections_lost_total";

/// One initiator's recovery clock.
#[derive(Debug, Default)]
pub(crate) struct RecoveryTimer {
    /// When the connection was lost, while no login has been accepted since.
    lost_at: Option<Instant>,
    /// The session was replaced (stateless recovery) since then.
    replaced: bool,
}

impl RecoveryTimer {
    /// A connection was lost.
    pub(crate) fn lost(&mut self, error: &ConnectionError) {
        metrics::counter!(CONNECTIONS_LOST, "cause" => cause(error)).increment(1);
        self.lost_at.get_or_insert_with(Instant::now);
    }

    /// The target lost the session: the recovery in progress is stateless.
    pub(crate) fn replaced(&mut self) {
        self.replaced = true;
    }

    /// A login was accepted; ends the recovery in progress, if any.
    pub(crate) fn connected(&mut self) {
        if let Some(at) = self.lost_at.take() {
            let kind = if std::mem::take(&mut self.replaced) {
                "stateless"
            } else {
                "stateful"
            };
            metrics::counter!(RECOVERIES, "kind" => kind).increment(1);
            metrics::histogram!(RECOVERY_SECONDS, "kind" => kind).record(at.elapsed());
        }
    }
}

/// A short label for why a connection was lost.
fn cause(error: &ConnectionError) -> &'static str {
    match error {
        ConnectionError::Timeout(_) => "detection_timeout",
        ConnectionError::LoginTimeout(_) => "login_timeout",
        ConnectionError::TransportClosed => "transport_closed",
        ConnectionError::PeerError { .. } => "peer_error",
        ConnectionError::Protocol(_) => "protocol_error",
        ConnectionError::Rejected(_) => "login_rejected",
        _ => "other",
    }
}
