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

/// Accepts connections and forwards each to `upstream`, but passes on only
/// the target's first `budget` bytes (its LOGIN_ACCEPT) and then closes
/// both sides: every login succeeds and nothing else ever does. Counts the
/// connections.
async fn flapping_proxy(
    upstream: std::net::SocketAddr,
    budget: usize,
) -> (Endpoint, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut down_rd, mut down_wr) = down.into_split();
                let (mut up_rd, mut up_wr) = up.into_split();
                let forward = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut down_rd, &mut up_wr).await;
                });
                let mut left = budget;
                let mut buf = vec![0u8; 4096];
                while left > 0 {
                    let Ok(n) = up_rd.read(&mut buf[..left.min(4096)]).await else {
                        break;
                    };
                    if n == 0 || down_wr.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    left -= n;
                }
                forward.abort();
                // Dropping both halves closes the connections.
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
    // LOGIN_ACCEPT is 72 bytes: the login completes, then the path drops.
    let (endpoint, connections) = flapping_proxy(upstream, 72).await;
    let init = Initiator::start(
        Arc::new(EndpointConnector::new(endpoint, Duration::from_secs(2))),
        InitiatorOptions::default(),
    );
    // A call that never gets its answer keeps the initiator reconnecting.
    let call = init.call(Bytes::from_static(b"x"));
    let _ = tokio::time::timeout(Duration::from_secs(3), call).await;
    let n = connections.load(Ordering::Relaxed);
    // Default backoff: 20 ms doubling to 2 s, at least half of each step:
    // about 8 connections in 3 s. Reset at every login, it is one per
    // round trip (hundreds).
    assert!(
        n >= 3,
        "the initiator stopped reconnecting: {n} connections"
    );
    assert!(n <= 16, "reconnect storm: {n} connections in 3 s");
}
