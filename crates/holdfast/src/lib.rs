//! # holdfast: resilient sessions over real sockets
//!
//! A thin tokio runtime around the sans-IO core in `holdfast-proto`:
//!
//! * [`Target`] binds endpoints and serves a `tower::Service` of
//!   [`Request`]s; each command reaches the service exactly once, in session
//!   order, however often the connection breaks;
//! * [`Initiator`] is a cloneable handle: `call`, `send`, `close`; it detects
//!   dead connections within the configured bound, reconnects (at once, then
//!   with jittered exponential backoff), honours the target's shutdown hold
//!   time, and fails calls with an error that says whether they may have
//!   executed.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod backoff;
mod clock;
mod initiator;
mod service;
mod target;
pub mod transport;

/// The sans-IO protocol core this runtime drives.
pub use holdfast_proto as proto;

pub use backoff::Backoff;
pub use holdfast_proto::{
    CallOptions, InitiatorConfig, InitiatorStats, SessionLoss, TargetConfig, TargetStats,
};
pub use initiator::{CallError, Initiator, InitiatorOptions};
pub use service::{service_fn, Request, ServiceFn, SessionService};
pub use target::{Target, TargetOptions};
pub use transport::{Acceptor, Connector, Endpoint, EndpointConnector, Listener};
