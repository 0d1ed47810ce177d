//! A service that returns `Err` reaches the caller as an error that says the
//! command executed and carries the error's text (the status response
//! `ServiceFailed`, PROTOCOL.md §6.7), never as an empty success; and so
//! does a timeout from tower's `Timeout` layer. Real sockets on 127.0.0.1.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use holdfast::{
    CallError, Endpoint, EndpointConnector, Initiator, InitiatorOptions, Request, SessionService,
    Target, TargetOptions,
};

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

/// A little key-value-like service: "fail:<text>" fails at once with
/// <text>, "later-fail:<text>" fails after a yield (its future is pending
/// first), "slow" answers after 5 s, anything else is echoed.
#[derive(Clone)]
struct Kv;

impl tower::Service<Request> for Kv {
    type Response = Bytes;
    type Error = String;
    type Future = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let payload = String::from_utf8_lossy(&req.payload).into_owned();
        Box::pin(async move {
            if let Some(text) = payload.strip_prefix("fail:") {
                return Err(text.to_owned());
            }
            if let Some(text) = payload.strip_prefix("later-fail:") {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                return Err(text.to_owned());
            }
            if payload == "slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok(Bytes::from(payload))
        })
    }
}

async fn serve<S: SessionService>(service: S) -> (Target, SocketAddr) {
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        TargetOptions::default(),
        service,
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    (target, addr)
}

fn initiator(addr: SocketAddr) -> Initiator {
    Initiator::start(
        Arc::new(EndpointConnector::new(
            Endpoint::Tcp(addr),
            Duration::from_secs(2),
        )),
        InitiatorOptions::default(),
    )
}

async fn call(init: &Initiator, payload: &str) -> Result<Bytes, CallError> {
    tokio::time::timeout(BOUND, init.call(Bytes::from(payload.to_owned())))
        .await
        .expect("the call finished in time")
}

/// The text a `ServiceFailed` error carries, after checking what it says
/// about execution.
fn service_failed(result: Result<Bytes, CallError>) -> String {
    match result {
        Err(e @ CallError::ServiceFailed { .. }) => {
            assert!(e.may_have_executed(), "it executed: {e}");
            assert!(e.is_settled(), "it will not run again: {e}");
            let CallError::ServiceFailed { text } = e else {
                unreachable!()
            };
            text
        }
        other => panic!("expected a ServiceFailed error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_error_reaches_the_caller() {
    support::init_logs();
    let (target, addr) = serve(Kv).await;
    let init = initiator(addr);

    // An error at once, and one from a future that was pending first.
    let text = service_failed(call(&init, "fail:no such key: k1").await);
    assert_eq!(text, "no such key: k1");
    let text = service_failed(call(&init, "later-fail:disk full").await);
    assert_eq!(text, "disk full");

    // A long error text is cut to 256 bytes at a character boundary.
    let long = "é".repeat(200); // 400 bytes
    let text = service_failed(call(&init, &format!("fail:{long}")).await);
    assert_eq!(text, "é".repeat(128), "cut to 256 bytes on a boundary");

    // The session goes on: a good call answers, and it closes cleanly
    // (every failed command was answered and acknowledged).
    let ok = call(&init, "ok").await.expect("an echo");
    assert_eq!(&ok[..], b"ok");
    tokio::time::timeout(BOUND, init.close())
        .await
        .expect("close in time")
        .expect("FIN exchanged");
    let stats = target.stats().await.expect("stats");
    assert_eq!(stats.service_failures, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_error_from_tower_timeout_reaches_the_caller() {
    support::init_logs();
    let service = tower::timeout::Timeout::new(Kv, Duration::from_millis(50));
    let (_target, addr) = serve(service).await;
    let init = initiator(addr);
    let text = service_failed(call(&init, "slow").await);
    assert_eq!(text, "request timed out");
    let ok = call(&init, "fast").await.expect("an echo");
    assert_eq!(&ok[..], b"fast");
    init.close().await.expect("FIN exchanged");
}
