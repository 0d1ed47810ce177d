//! # holdfast: resilient sessions over real sockets
//!
//! A thin tokio runtime around the sans-IO core in `holdfast-proto`:
//!
//! * [`Target`] binds endpoints (TCP, Unix sockets, or any [`Acceptor`]) and
//!   serves a `tower::Service` of [`Request`]s; each command reaches the
//!   service exactly once, in session order, however often the connection
//!   breaks;
//! * [`Initiator`] is a cloneable handle: `call`, `send`, `close`. It detects
//!   dead connections within the configured bound (PINGs, the target's
//!   inactivity deadline, and TCP keep-alive plus `TCP_USER_TIMEOUT` as a
//!   second line), reconnects (at once, then with jittered exponential
//!   backoff), honours the target's shutdown hold time, and fails calls with
//!   an error that says whether they may have executed.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use holdfast::{service_fn, Endpoint, EndpointConnector, Initiator, InitiatorOptions,
//!                Request, Target, TargetOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! // A target that upper-cases what it is sent.
//! let service = service_fn(|req: Request| async move {
//!     Ok::<_, std::convert::Infallible>(Bytes::from(req.payload.to_ascii_uppercase()))
//! });
//! let target = Target::serve(
//!     &[Endpoint::Tcp("127.0.0.1:0".parse().unwrap())],
//!     TargetOptions::default(),
//!     service,
//! )
//! .await?;
//!
//! // An initiator: cheap to clone, share it between tasks.
//! let connector = EndpointConnector::new(target.endpoints()[0].clone(), Duration::from_secs(2));
//! let init = Initiator::start(Arc::new(connector), InitiatorOptions::default());
//! let reply = init.call(Bytes::from_static(b"hello")).await.expect("exactly once");
//! assert_eq!(reply, Bytes::from_static(b"HELLO"));
//! init.close().await.expect("FIN exchanged");
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! [`InitiatorConfig`], [`TargetConfig`] and [`CallOptions`] (like the
//! runtime's option structs) are `#[non_exhaustive]`, so a later field is
//! not a breaking change: start from `default()` and set what you change.
//!
//! ```
//! use std::time::Duration;
//! use holdfast::{CallOptions, InitiatorConfig, TargetConfig};
//!
//! let mut initiator = InitiatorConfig::default();
//! initiator.credits = 64;
//! let mut target = TargetConfig::default();
//! target.retain = Duration::from_secs(60);
//! let call = CallOptions::default()
//!     .with_retry_safe(true)
//!     .with_deadline(Duration::from_secs(5));
//! # assert_eq!((initiator.credits, target.retain), (64, Duration::from_secs(60)));
//! # assert!(call.retry_safe);
//! ```
//!
//! A struct literal does not compile outside the crate, even with
//! `..Default::default()`:
//!
//! ```compile_fail
//! let initiator = holdfast::InitiatorConfig {
//!     credits: 64,
//!     ..holdfast::InitiatorConfig::default()
//! };
//! ```
//!
//! ```compile_fail
//! let target = holdfast::TargetConfig {
//!     retain: std::time::Duration::from_secs(60),
//!     ..holdfast::TargetConfig::default()
//! };
//! ```
//!
//! ```compile_fail
//! let call = holdfast::CallOptions {
//!     retry_safe: true,
//!     ..holdfast::CallOptions::default()
//! };
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod backoff;
#[cfg(feature = "chaos")]
pub mod chaos;
mod clock;
mod deadline;
mod durability;
pub mod durable;
mod endpoint;
mod error;
mod events;
mod fence;
pub mod initiator;
mod initiator_builder;
mod lanes;
mod links;
mod outbox;
pub mod paths;
mod peer;
mod pipelined;
pub mod service;
mod service_call;
mod start_gate;
mod status;
pub mod target;
mod target_options;
mod target_stop;
mod target_writer;
mod telemetry;
pub mod transport;
mod withdraw;

/// The sans-IO protocol core this runtime drives.
pub use holdfast_proto as proto;

/// The `tower::Service` trait crate a target's service implements (so a
/// service can be written without naming a version of `tower`).
pub use tower_service;
/// The trait a target's service implements (see [`SessionService`]).
pub use tower_service::Service;

pub use backoff::Backoff;
pub use durability::{NoDurability, ServiceDurability};
pub use durable::{DurableStore, RecoveryReport, StoreError, StoreOptions, StoreStats};
pub use endpoint::EndpointParseError;
pub use error::{CallError, LinkError};
pub use events::{SessionEvent, SessionEvents};
pub use fence::{FenceError, FenceOutcome, PathState};
pub use holdfast_proto::wire::{RejectReason, ResponseStatus};
pub use holdfast_proto::NotStarted;
pub use holdfast_proto::{
    CallOptions, ConnId, ConnectionError, FenceResult, HostId, InitiatorConfig, InitiatorStats,
    Seq, SessionId, SessionLoss, Spread, SubmitError, TargetConfig, TargetStats,
};
pub use initiator::{Initiator, InitiatorOptions};
pub use initiator_builder::InitiatorBuilder;
pub use links::RoundRobinConnector;
pub use paths::{PathGroup, PathGroupOptions, PathGroupStats, Policy};
pub use pipelined::SendHandle;
pub use service::{service_fn, Request, ServiceFn, SessionService};
pub use start_gate::StartGate;
pub use status::{SessionState, SessionStatus, TargetObserver};
pub use target::{Reconnect, Target, TargetOptions};
pub use transport::{Acceptor, Closer, Connector, Endpoint, EndpointConnector, Listener};
