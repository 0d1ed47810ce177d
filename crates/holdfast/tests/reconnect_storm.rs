//! A path that drops every connection right after its login must not make
//! the initiator reconnect in a storm: the backoff starts over only after a
//! connection that lasted a while, so reconnects slow down geometrically.
//! (With the backoff reset at every login, this path once drew thousands of
//! connections in a few seconds.)

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast::{Endpoint, EndpointConnector, Initiator, InitiatorOptions, Target, TargetOptions};
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections, forwards each to `upstream` for `life`, then closes
/// both sides; counts the connections.
async fn flapping_proxy(
    upstream: std::net::SocketAddr,
    life: Duration,
) -> (Endpoint, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ =
                    tokio::time::timeout(life, tokio::io::copy_bidirectional(&mut down, &mut up))
                        .await;
            });
        }
    });
    (Endpoint::Tcp(addr), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_drops_each_connection_after_login_is_not_hammered() {
    let value = Arc::new(AtomicU64::new(0));
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        TargetOptions::default(),
        support::counter(value),
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(upstream) = target.endpoints()[0].clone() else {
        panic!("a TCP endpoint");
    };
    // Long enough for the login to complete, far shorter than "stable".
    let (endpoint, connections) = flapping_proxy(upstream, Duration::from_millis(30)).await;
    let init = Initiator::start(
        Arc::new(EndpointConnector::new(endpoint, Duration::from_secs(2))),
        InitiatorOptions::default(),
    );
    // Calls keep the initiator reconnecting for the whole window.
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < end {
        let call = init.call(Bytes::from_static(b"x"));
        let _ = tokio::time::timeout_at(end, call).await;
    }
    let n = connections.load(Ordering::Relaxed);
    // Default backoff: 20 ms doubling to 2 s, at least half of each step:
    // about 8 connections in 3 s. Reset at every login, it was one per
    // ~35 ms (about 80).
    assert!(
        n >= 3,
        "the initiator stopped reconnecting: {n} connections"
    );
    assert!(n <= 16, "reconnect storm: {n} connections in 3 s");
}
