//! [`TargetOptions`]: the settings of a [`crate::Target`], the protocol's
//! plus the runtime's.

use std::time::Duration;

use holdfast_proto::TargetConfig;

use crate::transport::Endpoint;

/// Target settings: the protocol's plus the runtime's.
///
/// `#[non_exhaustive]`, so fields can be added without breaking callers:
/// start from `TargetOptions::default()` and set the fields or use the
/// `with_*` methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TargetOptions {
    /// Protocol settings (credits, frame limit, retain time, limits).
    pub protocol: TargetConfig,
    /// TCP keep-alive and user timeout on accepted sockets.
    pub socket_detection_bound: Duration,
    /// Read buffer per connection.
    pub read_buffer: usize,
    /// Most bytes queued for one connection's socket before the peer is
    /// judged not to be reading and dropped. `None`: what the connection's
    /// session legitimately owes ([`holdfast_proto::Target::write_allowance`]:
    /// its response cache, sized by the initiator's frame limit, plus 64 KiB
    /// for control frames), which a peer that reads never exceeds.
    pub max_write_queue: Option<usize>,
    /// Peer nodes serving the same backend (PROTOCOL.md §11.5): a session
    /// to each carries the FENCEs this node forwards. Empty: a FENCE for
    /// another node is answered `Unreachable`.
    pub peers: Vec<Endpoint>,
    /// How long a FENCE forwarded to a peer may take before it is answered
    /// `Unreachable` (the initiator then fences by waiting).
    pub peer_fence_timeout: Duration,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            protocol: TargetConfig::default(),
            socket_detection_bound: Duration::from_secs(2),
            read_buffer: 64 * 1024,
            max_write_queue: None,
            peers: Vec::new(),
            peer_fence_timeout: Duration::from_secs(5),
        }
    }
}

impl TargetOptions {
    /// These options with protocol settings `protocol`.
    pub fn with_protocol(mut self, protocol: TargetConfig) -> Self {
        self.protocol = protocol;
        self
    }

    /// These options with peer nodes `peers` (see [`TargetOptions::peers`]).
    pub fn with_peers(mut self, peers: Vec<Endpoint>) -> Self {
        self.peers = peers;
        self
    }

    /// Sets the detection bound of accepted TCP sockets (keep-alive and
    /// `TCP_USER_TIMEOUT`, the second line behind the protocol's inactivity
    /// deadline, which follows each initiator's keep-alive). Use the same
    /// bound as the initiators' ([`crate::InitiatorOptions::with_detection_bound`]).
    pub fn with_detection_bound(mut self, bound: Duration) -> Self {
        self.socket_detection_bound = bound;
        self
    }
}
