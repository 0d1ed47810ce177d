//! Shared pieces for the runtime's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use holdfast::{service_fn, Request, ServiceFn};

/// Sends `RUST_LOG`-filtered logs to the test's captured output.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An exactly-once counter: each command increments it and returns the new
/// value (8 bytes, big-endian). NOT idempotent.
pub fn counter(
    value: Arc<AtomicU64>,
) -> ServiceFn<
    impl FnMut(Request) -> std::future::Ready<Result<Bytes, std::convert::Infallible>> + Clone,
> {
    service_fn(move |_req: Request| {
        let v = value.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(Ok(Bytes::copy_from_slice(&v.to_be_bytes())))
    })
}
