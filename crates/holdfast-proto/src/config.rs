//! Configuration for both sides, with defaults a demanding user would pick.

use std::time::Duration;

use crate::wire::{Digests, HostId};

/// The largest frame accepted by default: a 4 MiB payload plus room for fields.
pub const DEFAULT_MAX_FRAME: u32 = 4 * 1024 * 1024 + 64;

/// Initiator settings.
///
/// Non-exhaustive (fields may be added): start from
/// [`InitiatorConfig::default`] and set the fields to change.
///
/// ```
/// let mut config = holdfast_proto::InitiatorConfig::default();
/// config.credits = 64;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InitiatorConfig {
    /// Largest frame (length field) we accept from the target.
    pub max_frame: u32,
    /// The credit window we ask for; also our own cap on outstanding work.
    pub credits: u32,
    /// Send a PING when nothing was sent for this long (and when replies are
    /// overdue by this long). Promised to the target at login.
    pub keepalive: Duration,
    /// The detection bound: a connection with a reply outstanding that hears
    /// nothing for this long is declared dead.
    pub dead_after: Duration,
    /// How long a login may take before the connection is abandoned.
    pub login_timeout: Duration,
    /// How long a received response may wait for a piggybacked acknowledgement
    /// before a standalone ACK is sent.
    pub ack_delay: Duration,
    /// Give up on the session after this long without a connection
    /// (`None`: keep trying forever).
    pub session_loss_timeout: Option<Duration>,
    /// Margin added to the measured round-trip time when deciding whether a
    /// command can still complete before an announced shutdown.
    pub shutdown_margin: Duration,
    /// CRC32C digests to ask for.
    pub digests: Digests,
    /// The most connections the session may use at once (PROTOCOL.md §17):
    /// 1 keeps one connection per session; above 1, further connections
    /// join the session with [`crate::Initiator::join`] and commands are
    /// spread over them.
    pub connections: u32,
    /// How commands are spread over several connections.
    pub spread: Spread,
    /// The host id sent in every LOGIN's HOST record (PROTOCOL.md §5.2.1);
    /// `None`: no HOST record, the session is not multipath-capable.
    pub host: Option<HostId>,
    /// The fencing epoch sent with `host` (starts at 1, only grows; see
    /// [`crate::Initiator::set_epoch`]).
    pub epoch: u64,
    /// Test-only switches that disable protections. The field exists in
    /// every build, so the struct's shape does not depend on a feature; the
    /// switches act only with the `test-switches` feature.
    #[doc(hidden)]
    pub switches: crate::TestSwitches,
}

/// How an initiator with several connections picks the connection for each
/// command or message (PROTOCOL.md §17.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spread {
    /// The logged-in connection with the fewest commands and messages sent
    /// on it and not yet finished.
    #[default]
    LeastOutstanding,
    /// The logged-in connections in turn.
    RoundRobin,
}

impl Default for InitiatorConfig {
    fn default() -> Self {
        InitiatorConfig {
            max_frame: DEFAULT_MAX_FRAME,
            credits: 128,
            keepalive: Duration::from_millis(500),
            dead_after: Duration::from_secs(2),
            login_timeout: Duration::from_secs(2),
            ack_delay: Duration::from_millis(1),
            session_loss_timeout: Some(Duration::from_secs(60)),
            shutdown_margin: Duration::from_millis(10),
            digests: Digests::NONE,
            connections: 1,
            spread: Spread::LeastOutstanding,
            host: None,
            epoch: 1,
            switches: crate::TestSwitches::default(),
        }
    }
}

impl InitiatorConfig {
    /// Settings for a detection bound of `bound`: keep-alive at a quarter of it.
    pub fn with_detection_bound(mut self, bound: Duration) -> Self {
        self.dead_after = bound;
        self.keepalive = bound / 4;
        self.login_timeout = bound;
        self
    }
}

/// Target settings.
///
/// Non-exhaustive (fields may be added): start from
/// [`TargetConfig::default`] and set the fields to change.
///
/// ```
/// let mut config = holdfast_proto::TargetConfig::default();
/// config.retain = std::time::Duration::from_secs(60);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TargetConfig {
    /// The most credits (unfinished messages) one session may hold.
    pub credits: u32,
    /// Largest frame (length field) we accept from an initiator.
    pub max_frame: u32,
    /// How long a session is kept without a connection.
    pub retain: Duration,
    /// The most sessions held at once.
    pub max_sessions: usize,
    /// The most connections (in login or attached) at once.
    pub max_connections: usize,
    /// How long a new connection may take to log in, counted from its
    /// accept; a LOGIN_REJECT does not restart it.
    pub login_timeout: Duration,
    /// The inactivity deadline is this many keep-alive intervals (never
    /// less than one, whatever this and `min_inactivity` say).
    pub inactivity_factor: u32,
    /// Lower bound of the inactivity deadline.
    pub min_inactivity: Duration,
    /// Upper bound of the inactivity deadline, whatever keep-alive the
    /// initiator promises: a LOGIN whose `keepalive_ms` exceeds it is
    /// rejected (`KeepaliveRejected`), since the deadline may never be
    /// shorter than one keep-alive interval (PROTOCOL.md §5.3, §9.2).
    pub max_inactivity: Duration,
    /// Delay before a standalone ACK or credit update when idle.
    pub ack_delay: Duration,
    /// Digests the target is willing to use.
    pub digests: Digests,
    /// How many ended sessions are remembered to give a precise reject reason.
    pub tombstones: usize,
    /// How long a session that has received no CMD or MSG yet is kept
    /// without a connection (at most `retain`): such a session holds
    /// nothing to recover, so it should not hold a session slot long.
    pub retain_unused: Duration,
    /// The most sessions held at once that were created from one source
    /// address (see [`crate::Target::accept_from`]).
    pub max_sessions_per_source: usize,
    /// The most connections in the login phase (accepted, no LOGIN_ACCEPT
    /// yet) at once; further connections are refused at accept.
    pub max_logins_in_progress: usize,
    /// Bytes the target may hold for all connections together: frames
    /// being received (decoder buffers) plus bytes queued for sending
    /// that the driver reports (see [`crate::Target::set_queued_bytes`]).
    /// A connection whose next frame would exceed it is closed with ERROR
    /// `Overloaded`.
    pub memory_budget: usize,
    /// The most connections attached to one session at once: a join
    /// beyond it is rejected with `TooManySessions` (PROTOCOL.md §17.2).
    pub max_session_connections: usize,
    /// The command budget: how long a command of a multipath-capable
    /// session may run once started. The quiesce time advertised at login
    /// is the inactivity deadline plus this (PROTOCOL.md §11.4); a command
    /// that runs longer is counted in `TargetStats::quiesce_overruns`.
    pub command_budget: Duration,
    /// How many fenced hosts are remembered (with the epoch they were
    /// fenced at), to reject their older logins.
    pub fenced_hosts: usize,
    /// Test-only switches that disable protections. The field exists in
    /// every build, so the struct's shape does not depend on a feature; the
    /// switches act only with the `test-switches` feature.
    #[doc(hidden)]
    pub switches: crate::TestSwitches,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            credits: 128,
            max_frame: DEFAULT_MAX_FRAME,
            retain: Duration::from_secs(60),
            max_sessions: 16_384,
            max_connections: 16_384,
            login_timeout: Duration::from_secs(5),
            inactivity_factor: 4,
            min_inactivity: Duration::from_millis(50),
            max_inactivity: Duration::from_secs(30),
            ack_delay: Duration::from_millis(1),
            digests: Digests {
                header: true,
                data: true,
            },
            tombstones: 4096,
            retain_unused: Duration::from_secs(2),
            max_sessions_per_source: 1024,
            max_logins_in_progress: 1024,
            memory_budget: 1 << 30,
            max_session_connections: 16,
            command_budget: Duration::from_secs(1),
            fenced_hosts: 4096,
            switches: crate::TestSwitches::default(),
        }
    }
}
