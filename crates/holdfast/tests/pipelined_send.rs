//! Pipelined one-way sends over real sockets (`Initiator::send_queued`):
//! messages queued from one task reach the service in their order, exactly
//! once, across connection cuts, and a dropped `SendHandle` does not
//! withdraw its message.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holdfast::chaos::{Fault, Proxy};
use holdfast::proto::Seq;
use holdfast::{
    service_fn, Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions, Request,
    Target, TargetOptions,
};

/// Fails the test if `f` takes longer than `secs`.
async fn within<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("finished in time")
}

/// What the service received: (one-way?, sequence number, payload).
type Log = Arc<Mutex<Vec<(bool, Seq, Bytes)>>>;

async fn recording_target(log: Log) -> (Target, SocketAddr) {
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        TargetOptions::default(),
        service_fn(move |r: Request| {
            log.lock()
                .expect("log")
                .push((r.one_way, r.seq, r.payload.clone()));
            async move { Ok::<_, std::convert::Infallible>(r.payload) }
        }),
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    (target, addr)
}

fn initiator(addr: SocketAddr) -> Initiator {
    let bound = Duration::from_millis(300);
    Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(addr), bound)),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = InitiatorConfig::default().with_detection_bound(bound);
            o.backoff_max = Duration::from_millis(100);
            o
        },
    )
}

fn message(i: u32) -> Bytes {
    Bytes::copy_from_slice(&i.to_be_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_send_10000_from_one_task_in_order_exactly_once_under_cuts() {
    support::init_logs();
    const N: u32 = 10_000;
    let log = Log::default();
    let (_target, addr) = recording_target(log.clone()).await;
    let proxy = Proxy::start(addr).await.expect("proxy");
    let init = initiator(proxy.addr());
    let mut awaited = Vec::new();
    within(60, async {
        for i in 0..N {
            let handle = init.send_queued(message(i)).await.expect("queued");
            // Every third handle is awaited, the others dropped.
            if i % 3 == 0 {
                awaited.push((i, handle));
            }
            // Cut the connection three times along the way (both ways, RST).
            if i % 2_500 == 1_250 {
                proxy.inject(Fault::Reset);
            }
        }
        for (i, handle) in awaited {
            handle
                .await
                .unwrap_or_else(|e| panic!("message {i} not delivered: {e}"));
        }
        // Everything queued before it was delivered before a later call ran.
        init.call(Bytes::from_static(b"end")).await.expect("end");
    })
    .await;
    let log = log.lock().expect("log").clone();
    let (end, messages) = log.split_last().expect("the end call");
    assert_eq!(end.2, "end");
    assert!(!end.0, "the last entry is the call");
    let got: Vec<u32> = messages
        .iter()
        .map(|(one_way, _, p)| {
            assert!(one_way, "only messages before the call");
            u32::from_be_bytes(p.as_ref().try_into().expect("4 bytes"))
        })
        .collect();
    let want: Vec<u32> = (0..N).collect();
    assert_eq!(got.len(), want.len(), "each message exactly once");
    assert!(got == want, "in the order they were queued");
    // Their sequence numbers are consecutive, in the same order.
    for pair in log.windows(2) {
        assert_eq!(pair[1].1, pair[0].1 + 1, "consecutive sequence numbers");
    }
    let stats = init.stats().await.expect("stats");
    assert!(
        stats.disconnects >= 1,
        "the cuts must have broken the connection: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_send_dropped_handles_are_still_delivered() {
    support::init_logs();
    let log = Log::default();
    let (_target, addr) = recording_target(log.clone()).await;
    let init = initiator(addr);
    within(10, async {
        for i in 0..200 {
            // Dropped at once: the message is queued all the same.
            drop(init.send_queued(message(i)).await.expect("queued"));
        }
        init.call(Bytes::from_static(b"end")).await.expect("end");
    })
    .await;
    let log = log.lock().expect("log").clone();
    let got: Vec<Bytes> = log.iter().map(|(_, _, p)| p.clone()).collect();
    let mut want: Vec<Bytes> = (0..200).map(message).collect();
    want.push(Bytes::from_static(b"end"));
    assert!(got == want, "every dropped message delivered, in order");
}
