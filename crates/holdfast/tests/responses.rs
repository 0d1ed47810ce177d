//! The runtime over real sockets on 127.0.0.1: a response too large for the
//! initiator fails its call cleanly (the session goes on and closes), and a
//! one-way message is reported delivered only after the service took it.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use holdfast::proto::wire::ResponseStatus;
use holdfast::{
    service_fn, CallError, Endpoint, EndpointConnector, Initiator, InitiatorConfig,
    InitiatorOptions, Request, SessionService, Target, TargetConfig, TargetOptions,
};

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

async fn serve<S: SessionService>(service: S) -> (Target, SocketAddr) {
    // Acknowledgements go out at once (no ack delay), so a TACK is in the
    // same batch as the delivery it acknowledges.
    let options = {
        let mut o = TargetOptions::default();
        o.protocol = {
            let mut tc = TargetConfig::default();
            tc.ack_delay = Duration::ZERO;
            tc
        };
        o
    };
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        options,
        service,
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    (target, addr)
}

fn initiator(addr: SocketAddr, max_frame: u32) -> Initiator {
    let options = {
        let mut o = InitiatorOptions::default();
        o.protocol = {
            let mut ic = InitiatorConfig::default();
            ic.max_frame = max_frame;
            ic
        };
        o
    };
    Initiator::start(
        Arc::new(EndpointConnector::new(
            Endpoint::Tcp(addr),
            Duration::from_secs(2),
        )),
        options,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_too_large_for_the_initiator_fails_its_call_and_the_session_goes_on() {
    support::init_logs();
    // "big" answers one byte more than the initiator accepts; anything
    // else is echoed. The service sees the limit in every request.
    let limit_seen = Arc::new(AtomicUsize::new(0));
    let seen = limit_seen.clone();
    let (target, addr) = serve(service_fn(move |req: Request| {
        seen.store(req.max_response, Ordering::SeqCst);
        let response = if &req.payload[..] == b"big" {
            Bytes::from(vec![b'x'; req.max_response + 1])
        } else {
            req.payload
        };
        std::future::ready(Ok::<_, std::convert::Infallible>(response))
    }))
    .await;
    let init = initiator(addr, 4096);
    let big = tokio::time::timeout(BOUND, init.call(Bytes::from_static(b"big")))
        .await
        .expect("the call with an oversized response must return, not hang");
    match big {
        Err(e @ CallError::Failed { .. }) => {
            assert!(e.may_have_executed(), "the command did execute");
            let CallError::Failed { status, text } = e else {
                unreachable!()
            };
            assert_eq!(status, ResponseStatus::ResponseTooLarge);
            assert!(text.contains("4065") && text.contains("4064"), "{text}");
        }
        other => panic!("expected a Failed call, got {other:?}"),
    }
    assert_eq!(limit_seen.load(Ordering::SeqCst), 4096 - 32);
    // The credit came back: the next call works and the session closes.
    let next = tokio::time::timeout(BOUND, init.call(Bytes::from_static(b"next")))
        .await
        .expect("the next call returns");
    assert_eq!(
        next.expect("the next call succeeds"),
        Bytes::from_static(b"next")
    );
    tokio::time::timeout(BOUND, init.close())
        .await
        .expect("close returns")
        .expect("FIN is accepted: nothing is left running");
    let stats = target.stats().await.expect("stats");
    assert_eq!(stats.oversized_responses, 1);
    assert_eq!(stats.sessions_closed, 1);
}

/// A service that takes nothing until the test opens its gate (its
/// `poll_ready` is pending), and records what it took.
#[derive(Clone, Default)]
struct Gated {
    gate: Arc<Mutex<(bool, Option<Waker>)>>,
    took: Arc<AtomicBool>,
}

impl Gated {
    fn open(&self) {
        let mut g = self.gate.lock().expect("gate");
        g.0 = true;
        if let Some(w) = g.1.take() {
            w.wake();
        }
    }
}

impl tower_service::Service<Request> for Gated {
    type Response = Bytes;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Bytes, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let mut g = self.gate.lock().expect("gate");
        if g.0 {
            Poll::Ready(Ok(()))
        } else {
            g.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn call(&mut self, _req: Request) -> Self::Future {
        self.took.store(true, Ordering::SeqCst);
        std::future::ready(Ok(Bytes::new()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_reported_delivered_only_after_the_service_took_it() {
    support::init_logs();
    let service = Gated::default();
    let (_target, addr) = serve(service.clone()).await;
    let init = initiator(addr, 1 << 20);
    let sender = init.clone();
    let mut send = tokio::spawn(async move { sender.send(Bytes::from_static(b"m")).await });
    // While the service does not take the message, the initiator must not
    // learn that it is delivered. (A bounded wait for an event that must
    // not happen; the old code reported it at once.)
    if let Ok(result) = tokio::time::timeout(Duration::from_millis(500), &mut send).await {
        panic!(
            "the message was reported delivered ({result:?}) while the service {} it",
            if service.took.load(Ordering::SeqCst) {
                "had"
            } else {
                "did not have"
            }
        );
    }
    assert!(!service.took.load(Ordering::SeqCst));
    service.open();
    tokio::time::timeout(BOUND, send)
        .await
        .expect("delivered once the service takes it")
        .expect("task")
        .expect("send");
    assert!(service.took.load(Ordering::SeqCst));
}

/// A service future that panics after it was spawned still completes its
/// command (answered `ServiceFailed`, like a service error): otherwise the command
/// would run forever in the core's eyes, its caller would hang and its
/// session could never end (a session never ends while a command runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_service_future_panics_still_completes() {
    support::init_logs();
    let (_target, addr) = serve(service_fn(|r: Request| async move {
        // Pending once, so the runtime spawns the future.
        tokio::task::yield_now().await;
        assert!(r.payload != "panic", "the service panics on purpose");
        Ok::<_, std::convert::Infallible>(r.payload)
    }))
    .await;
    let init = initiator(addr, InitiatorConfig::default().max_frame);
    let r = tokio::time::timeout(BOUND, init.call(Bytes::from_static(b"panic")))
        .await
        .expect("the call must return, not hang");
    match r {
        Err(e @ CallError::ServiceFailed { .. }) => {
            assert!(e.may_have_executed(), "the service ran it: {e}");
        }
        other => panic!("expected ServiceFailed, got {other:?}"),
    }
    let r = tokio::time::timeout(BOUND, init.call(Bytes::from_static(b"next")))
        .await
        .expect("the next call returns");
    assert_eq!(r, Ok(Bytes::from_static(b"next")));
    tokio::time::timeout(BOUND, init.close())
        .await
        .expect("close returns")
        .expect("the session closes cleanly");
}
