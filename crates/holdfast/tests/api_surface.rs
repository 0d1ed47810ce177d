//! The public surface as a Rust user meets it (issue 18 item 6): one error
//! type to match, with its helpers; the re-exports a user must name; a
//! clean `close()` that says so; `service_fn` with any `Display` error;
//! `Initiator::connect`/`builder` with one detection bound; `Endpoint`
//! parsing; `Target::stop`/`shutdown(&self)` and a drop that frees the port
//! at once. This file does not compile against the API before the change,
//! and its behavioural tests fail there (see each test). Real sockets on
//! 127.0.0.1.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast::{
    service_fn, CallError, Endpoint, EndpointParseError, Initiator, InitiatorBuilder,
    InitiatorOptions, LinkError, Reconnect, RejectReason, Request, ResponseStatus, Service,
    SessionLoss, SubmitError, Target, TargetOptions,
};

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

/// What a caller does with an outcome, written against the top-level type
/// only (no `holdfast::proto`): compiles only if every outcome is a
/// variant of `holdfast::CallError`.
fn describe(e: &CallError) -> &'static str {
    match e {
        CallError::NotExecuted(_) | CallError::NotStarted { .. } | CallError::Closed => "retry",
        CallError::MayHaveExecuted(SessionLoss::GaveUp(_)) => "in doubt",
        CallError::MayHaveExecuted(SessionLoss::Rejected {
            reason: RejectReason::TargetRestarted,
            ..
        }) => "ran at most once, target restarted",
        CallError::MayHaveExecuted(_) => "in doubt",
        CallError::Failed {
            status: ResponseStatus::ResponseTooLarge,
            ..
        } => "ran, answer too large",
        CallError::ServiceFailed { .. } | CallError::Failed { .. } => "ran and failed",
        CallError::Withdrawn { .. } => "withdrawn",
        CallError::Refused(SubmitError::PayloadTooLarge { .. }) => "too large",
        CallError::Unreachable {
            last_error: LinkError::Connect(_),
            ..
        } => "unreachable",
        _ => "other",
    }
}

#[test]
fn error_helpers_answer_for_every_top_level_variant() {
    let cases = [
        (
            CallError::NotExecuted(SessionLoss::GaveUp(BOUND)),
            false,
            true,
        ),
        (
            CallError::MayHaveExecuted(SessionLoss::GaveUp(BOUND)),
            true,
            false,
        ),
        (
            CallError::MayHaveExecuted(SessionLoss::TargetGone),
            true,
            false,
        ),
        (CallError::ServiceFailed { text: "x".into() }, true, true),
        (CallError::NotStarted { text: "x".into() }, false, true),
        (
            CallError::Withdrawn {
                may_have_executed: false,
            },
            false,
            true,
        ),
        (CallError::Closed, false, true),
        (CallError::Refused(SubmitError::Closing), false, true),
        (CallError::Stopped, true, false),
    ];
    for (e, may, settled) in cases {
        assert_eq!(e.may_have_executed(), may, "{e}");
        assert_eq!(e.not_executed(), !may, "{e}");
        assert_eq!(e.is_settled(), settled, "{e}");
        assert_ne!(describe(&e), "", "{e}");
    }
    // The core's error converts into the flat one, variant for variant.
    let core = holdfast::proto::CallError::ServiceFailed { text: "t".into() };
    assert_eq!(
        CallError::from(core),
        CallError::ServiceFailed { text: "t".into() }
    );
    // Sources are kept as errors, not flattened into strings.
    let e = CallError::Unreachable {
        waited: BOUND,
        last_error: LinkError::Connect(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))),
    };
    let source = std::error::Error::source(&e).expect("a source");
    assert!(source.to_string().contains("connect"), "{source}");
    let refused = CallError::Refused(SubmitError::Closing);
    assert!(std::error::Error::source(&refused).is_some());
}

#[test]
fn endpoints_parse_from_text() {
    let e: Endpoint = "127.0.0.1:7400".parse().expect("tcp");
    assert_eq!(e, Endpoint::Tcp("127.0.0.1:7400".parse().expect("addr")));
    let u: Endpoint = "unix:/run/x.sock".parse().expect("unix");
    assert_eq!(u, Endpoint::Unix("/run/x.sock".into()));
    let bad: Result<Endpoint, EndpointParseError> = "nowhere".parse();
    assert!(bad.is_err());
}

#[test]
fn initiator_start_outside_a_runtime_panics_saying_so() {
    let endpoint: Endpoint = "127.0.0.1:9".parse().expect("tcp");
    let panic = std::panic::catch_unwind(|| Initiator::connect(endpoint)).expect_err("a panic");
    let text = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    assert!(text.contains("outside a tokio runtime"), "{text}");
}

#[test]
fn one_detection_bound_feeds_the_protocol() {
    let bound = Duration::from_millis(800);
    let options = InitiatorOptions::default().with_detection_bound(bound);
    assert_eq!(options.detection_bound(), bound);
    assert_eq!(options.protocol.dead_after, bound);
    assert_eq!(options.protocol.keepalive, bound / 4);
    let built: InitiatorOptions = InitiatorBuilder::default()
        .detection_bound(bound)
        .credits(7)
        .build();
    assert_eq!(built.protocol.dead_after, bound);
    assert_eq!(built.protocol.credits, 7);
    let target = TargetOptions::default().with_detection_bound(bound);
    assert_eq!(target.socket_detection_bound, bound);
}

/// A service whose errors are `String`s (not `Infallible`), made with
/// `service_fn`.
fn echo_or_fail() -> impl Service<
    Request,
    Response = Bytes,
    Error = String,
    Future = impl std::future::Future<Output = Result<Bytes, String>> + Send,
> + Clone
       + Send {
    service_fn(|req: Request| async move {
        if req.payload.starts_with(b"fail") {
            Err(format!("refused {} bytes", req.payload.len()))
        } else {
            Ok(req.payload)
        }
    })
}

async fn serve() -> (Target, Endpoint) {
    let target = Target::serve(
        &["127.0.0.1:0".parse().expect("endpoint")],
        TargetOptions::default(),
        echo_or_fail(),
    )
    .await
    .expect("serve");
    let endpoint = target.endpoints()[0].clone();
    (target, endpoint)
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("in time")
}

#[tokio::test]
async fn connect_service_fn_errors_and_a_clean_close() {
    support::init_logs();
    let (_target, endpoint) = serve().await;
    let init = Initiator::builder()
        .detection_bound(Duration::from_secs(1))
        .connect(endpoint.clone());
    let r = bounded(init.call(Bytes::from_static(b"hi"))).await;
    assert_eq!(r, Ok(Bytes::from_static(b"hi")));
    match bounded(init.call(Bytes::from_static(b"fail!"))).await {
        Err(e @ CallError::ServiceFailed { .. }) => {
            assert!(e.to_string().contains("refused 5 bytes"), "{e}");
        }
        other => panic!("expected ServiceFailed, got {other:?}"),
    }
    bounded(init.close()).await.expect("FIN exchanged");
    // After a clean close, a new call says this side closed the session
    // (before: "the session was aborted locally").
    let after = bounded(init.call(Bytes::from_static(b"late"))).await;
    match after {
        Err(e @ CallError::Closed) => {
            assert!(e.not_executed() && e.is_settled());
            let text = e.to_string();
            assert!(
                text.contains("closed the session") && !text.contains("aborted"),
                "{text}"
            );
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    let again = bounded(init.send(Bytes::from_static(b"late"))).await;
    assert_eq!(again, Err(CallError::Closed));

    let short = Initiator::connect(endpoint);
    let r = bounded(short.call(Bytes::from_static(b"x"))).await;
    assert_eq!(r, Ok(Bytes::from_static(b"x")));
}

/// Dropping a target frees its port at once: a successor binds the same
/// address right away, with connections open. (Before: the accept task
/// kept the socket until the runtime next ran it, and the bind failed
/// with "address in use".)
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_target_frees_its_port_at_once() {
    let (target, endpoint) = serve().await;
    let init = Initiator::connect(endpoint.clone());
    let r = bounded(init.call(Bytes::from_static(b"a"))).await;
    assert_eq!(r, Ok(Bytes::from_static(b"a")));
    drop(target);
    let successor = Target::serve(
        std::slice::from_ref(&endpoint),
        TargetOptions::default(),
        echo_or_fail(),
    )
    .await
    .expect("the port is free right after the drop");
    drop(successor);
}

/// `stop().await` frees the port and ends the engine; `shutdown` takes
/// `&self` (a target shared with a signal handler) and a [`Reconnect`].
#[tokio::test(flavor = "current_thread")]
async fn stop_and_shutdown_free_the_port() {
    let (target, endpoint) = serve().await;
    bounded(target.stop()).await;
    assert!(target.stats().await.is_none(), "the engine has stopped");
    let addr = match &endpoint {
        Endpoint::Tcp(a) => *a,
        other => panic!("tcp expected, got {other}"),
    };
    std::net::TcpListener::bind(addr).expect("the port is free after stop");

    let (target, endpoint) = serve().await;
    let shared = Arc::new(target);
    let other = shared.clone();
    bounded(other.shutdown(Duration::ZERO, Reconnect::Never)).await;
    assert!(shared.stats().await.is_none(), "the engine has stopped");
    let successor = Target::serve(&[endpoint], TargetOptions::default(), echo_or_fail()).await;
    assert!(successor.is_ok(), "the port is free after shutdown");
    assert_eq!(
        Reconnect::from(Some(Duration::from_secs(1))),
        Reconnect::After(Duration::from_secs(1))
    );
    assert_eq!(Reconnect::from(None), Reconnect::Never);
}

/// The options a user builds are `#[non_exhaustive]`: built from
/// `default()` field by field, or with `CallOptions`' `with_*` methods,
/// through the `holdfast` re-exports. That a struct literal of each does
/// not compile from outside the crate is checked by the `compile_fail`
/// examples in the crate documentation (`cargo test --doc -p holdfast`:
/// they fail, i.e. compile, without `#[non_exhaustive]`). Before the
/// change `CallOptions::with_retry_safe` did not exist and this did not
/// compile.
#[test]
fn options_are_built_from_default() {
    let mut initiator = holdfast::InitiatorConfig::default();
    initiator.credits = 7;
    assert_eq!(initiator.credits, 7);
    let mut target = holdfast::TargetConfig::default();
    target.retain = Duration::from_secs(3);
    assert_eq!(target.retain, Duration::from_secs(3));
    let call = holdfast::CallOptions::default()
        .with_retry_safe(true)
        .with_deadline(BOUND);
    assert!(call.retry_safe);
    assert_eq!(call.deadline, Some(BOUND));
    assert!(!call.with_retry_safe(false).retry_safe);
    assert_eq!(holdfast::CallOptions::RETRY_SAFE, {
        let mut o = holdfast::CallOptions::default();
        o.retry_safe = true;
        o
    });
}
