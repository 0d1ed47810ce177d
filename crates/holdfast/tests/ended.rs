//! `Initiator::ended`: a caller that serves others on top of a session (the
//! NBD export) learns when the session is over, without polling and without
//! affecting it: `Ok` after a clean close, the loss after the session-loss
//! timeout.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::proto::SessionLoss;
use holdfast::{
    service_fn, Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions, Request,
    Target, TargetOptions,
};

async fn echo_target() -> Target {
    let service =
        service_fn(|req: Request| async move { Ok::<_, std::convert::Infallible>(req.payload) });
    Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        TargetOptions::default(),
        service,
    )
    .await
    .expect("serve")
}

fn initiator(endpoint: Endpoint, session_loss: Duration) -> Initiator {
    Initiator::start(
        Arc::new(EndpointConnector::new(endpoint, Duration::from_millis(500))),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = {
                let mut ic =
                    InitiatorConfig::default().with_detection_bound(Duration::from_millis(500));
                ic.session_loss_timeout = Some(session_loss);
                ic
            };
            o
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_reports_the_loss_after_the_session_loss_timeout() {
    support::init_logs();
    let target = echo_target().await;
    let init = initiator(target.endpoints()[0].clone(), Duration::from_millis(1500));
    let waiter = tokio::spawn({
        let init = init.clone();
        async move { init.ended().await }
    });
    // Waiting for the end does not disturb the session.
    for _ in 0..3 {
        init.call(Bytes::from_static(b"x")).await.expect("call");
    }
    assert!(!waiter.is_finished(), "the session is alive");
    let gone = Instant::now();
    drop(target);
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("ended() must return once the session is given up")
        .expect("task");
    eprintln!("ended after {:?}: {outcome:?}", gone.elapsed());
    assert!(
        matches!(outcome, Err(SessionLoss::GaveUp(_))),
        "{outcome:?}"
    );
    // Asked again, later: the same answer at once.
    let again = tokio::time::timeout(Duration::from_secs(1), init.ended())
        .await
        .expect("at once");
    assert!(matches!(again, Err(SessionLoss::GaveUp(_))), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_is_ok_after_a_clean_close() {
    support::init_logs();
    let target = echo_target().await;
    let init = initiator(target.endpoints()[0].clone(), Duration::from_secs(60));
    init.call(Bytes::from_static(b"x")).await.expect("call");
    init.close().await.expect("clean close");
    let outcome = tokio::time::timeout(Duration::from_secs(5), init.ended())
        .await
        .expect("ended() returns after a close");
    assert_eq!(outcome, Ok(()));
}
