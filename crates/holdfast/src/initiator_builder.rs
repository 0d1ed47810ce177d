//! Starting an initiator the short way: [`Initiator::connect`] for an
//! endpoint with defaults, [`Initiator::builder`] for anything else.
//!
//! The detection bound is set in one place,
//! [`InitiatorBuilder::detection_bound`] (or
//! [`InitiatorOptions::with_detection_bound`]): it sets the protocol's dead
//! connection bound, keep-alive and login timeout, and the TCP socket's
//! `TCP_USER_TIMEOUT` and keep-alive of the connector the builder makes.

use std::sync::Arc;
use std::time::Duration;

use holdfast_proto::Spread;

use crate::initiator::{Initiator, InitiatorOptions};
use crate::transport::{Connector, Endpoint, EndpointConnector};

impl Initiator {
    /// Starts a session to the target at `endpoint` with default options
    /// (a detection bound of 2 s). Returns at once; the first call waits
    /// for the login. The same as `Initiator::builder().connect(endpoint)`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (see [`Initiator::start`]).
    pub fn connect(endpoint: Endpoint) -> Initiator {
        Initiator::builder().connect(endpoint)
    }

    /// A builder for an initiator's options.
    pub fn builder() -> InitiatorBuilder {
        InitiatorBuilder::default()
    }
}

impl InitiatorOptions {
    /// Sets the detection bound: a connection with a reply outstanding that
    /// hears nothing for this long is declared dead and replaced. Sets the
    /// protocol's `dead_after`, keep-alive (a quarter of it) and login
    /// timeout; [`Initiator::builder`]'s connector tunes its TCP sockets to
    /// it too ([`InitiatorOptions::detection_bound`]).
    pub fn with_detection_bound(mut self, bound: Duration) -> Self {
        self.protocol = self.protocol.with_detection_bound(bound);
        self
    }

    /// These options with protocol settings `protocol`.
    pub fn with_protocol(mut self, protocol: holdfast_proto::InitiatorConfig) -> Self {
        self.protocol = protocol;
        self
    }

    /// The detection bound these options use (the protocol's `dead_after`).
    pub fn detection_bound(&self) -> Duration {
        self.protocol.dead_after
    }
}

/// Builds an [`Initiator`]: set what differs from the defaults, then
/// [`InitiatorBuilder::connect`] to an endpoint or
/// [`InitiatorBuilder::start`] with a connector of your own.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let init = holdfast::Initiator::builder()
///     .detection_bound(Duration::from_millis(500))
///     .credits(64)
///     .connect("127.0.0.1:7400".parse().expect("an endpoint"));
/// # drop(init);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until connect or start"]
pub struct InitiatorBuilder {
    options: InitiatorOptions,
}

impl InitiatorBuilder {
    /// Starts from these options instead of the defaults.
    pub fn options(mut self, options: InitiatorOptions) -> Self {
        self.options = options;
        self
    }

    /// The detection bound (see [`InitiatorOptions::with_detection_bound`]).
    pub fn detection_bound(mut self, bound: Duration) -> Self {
        self.options = self.options.with_detection_bound(bound);
        self
    }

    /// The credit window asked for: the most commands and messages
    /// outstanding at once.
    pub fn credits(mut self, credits: u32) -> Self {
        self.options.protocol.credits = credits.max(1);
        self
    }

    /// Gives up on the session after this long without one (`None`: keep
    /// trying forever); calls waiting meanwhile fail
    /// [`crate::CallError::Unreachable`].
    pub fn session_loss_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.protocol.session_loss_timeout = timeout;
        self
    }

    /// Several connections per session (see
    /// [`InitiatorOptions::with_connections`]).
    pub fn connections(mut self, connections: u32, spread: Spread) -> Self {
        self.options = self.options.with_connections(connections, spread);
        self
    }

    /// The deadline of every call whose [`crate::CallOptions::deadline`] is
    /// `None` (see [`InitiatorOptions::call_deadline`]).
    pub fn call_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.options.call_deadline = deadline;
        self
    }

    /// Requests that may wait for credit beyond the credit window (see
    /// [`InitiatorOptions::request_queue`]).
    pub fn request_queue(mut self, requests: usize) -> Self {
        self.options.request_queue = requests;
        self
    }

    /// How long a transport connect may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// The options built so far.
    pub fn build(self) -> InitiatorOptions {
        self.options
    }

    /// Starts a session to `endpoint`, over TCP or Unix sockets tuned to
    /// the detection bound.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (see [`Initiator::start`]).
    pub fn connect(self, endpoint: Endpoint) -> Initiator {
        let connector = EndpointConnector::new(endpoint, self.options.detection_bound());
        self.start(Arc::new(connector))
    }

    /// Starts a session over a connector of your own.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (see [`Initiator::start`]).
    pub fn start(self, connector: Arc<dyn Connector>) -> Initiator {
        Initiator::start(connector, self.options)
    }
}
