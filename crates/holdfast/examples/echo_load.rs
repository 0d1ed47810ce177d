//! A request/response echo through one holdfast session on 127.0.0.1, for
//! profiling: no baseline, no report, just the load and one line of
//! figures, so `perf record` sees holdfast alone.
//!
//! ```text
//! cargo build --release -p holdfast --example echo_load
//! perf record -g target/release/examples/echo_load -- [PAYLOAD] [DEPTH] [SECONDS] [READ_BUFFER]
//! ```
//!
//! PAYLOAD (bytes) defaults to 4096, DEPTH to 32, SECONDS to 5, READ_BUFFER
//! (bytes, both ends) to 65536.
//!
//! The `holdfast` binary tunes glibc's malloc to keep large freed blocks
//! (`crates/holdfast-cli/src/malloc.rs`); this example does not. To profile
//! large payloads as the binary runs them, set the same values through the
//! environment: `MALLOC_MMAP_THRESHOLD_=16777216
//! MALLOC_TRIM_THRESHOLD_=33554432`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::{
    service_fn, Endpoint, EndpointConnector, Initiator, InitiatorOptions, Request, Target,
    TargetOptions,
};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("argument {n} must be a number: {a}"))
        })
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let payload = arg(1, 4096) as usize;
    let depth = arg(2, 32) as usize;
    let seconds = arg(3, 5);
    let read_buffer = arg(4, 64 * 1024) as usize;
    let echo = service_fn(|req: Request| {
        std::future::ready(Ok::<_, std::convert::Infallible>(req.payload))
    });
    let target = Target::serve(
        &[Endpoint::Tcp(([127, 0, 0, 1], 0).into())],
        {
            let mut o = TargetOptions::default();
            o.read_buffer = read_buffer;
            o
        },
        echo,
    )
    .await
    .expect("start the target");
    let endpoint = target.endpoints()[0].clone();
    let init = Initiator::start(
        Arc::new(EndpointConnector::new(endpoint, Duration::from_secs(2))),
        {
            let mut o = InitiatorOptions::default();
            o.read_buffer = read_buffer;
            o
        },
    );
    let data = Bytes::from(vec![0x5a; payload]);
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..depth)
        .map(|_| {
            let (init, data, done) = (init.clone(), data.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                while Instant::now() < until {
                    let reply = init.call(data.clone()).await.expect("echo call");
                    assert_eq!(reply.len(), data.len());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("echo task");
    }
    let ops = done.load(Ordering::Relaxed);
    println!(
        "{payload} B at QD {depth}: {ops} calls in {seconds} s, {:.0} calls/s",
        ops as f64 / seconds as f64
    );
    let _ = init.close().await;
    target.shutdown(Duration::ZERO, None).await;
}
