//! Measures detection-to-recovery time: how long after a fault the first
//! call completes, for a reset connection (RST) and a blackholed one (no FIN,
//! no RST, bytes just stop), through the in-process fault proxy on
//! 127.0.0.1. Prints one JSON object per fault kind with the median,
//! minimum and maximum of N runs.
//!
//! ```text
//! cargo run --release -p holdfast --example detection -- [RUNS] [BOUND_MS]
//! ```
//!
//! RUNS defaults to 20 and BOUND_MS (the detection bound) to 2000.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::chaos::{Fault, Proxy};
use holdfast::{
    service_fn, Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions, Request,
    Target, TargetOptions,
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
    let runs = arg(1, 20) as usize;
    let bound = Duration::from_millis(arg(2, 2000));
    let counter = Arc::new(AtomicU64::new(0));
    let service = service_fn(move |_req: Request| {
        let v = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        std::future::ready(Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(
            &v.to_be_bytes(),
        )))
    });
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("address"))],
        {
            let mut o = TargetOptions::default();
            o.socket_detection_bound = bound;
            o
        },
        service,
    )
    .await
    .expect("serve on 127.0.0.1");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    for (name, fault) in [("rst", Fault::Reset), ("blackhole", Fault::Blackhole)] {
        let proxy = Proxy::start(addr).await.expect("proxy on 127.0.0.1");
        let init = Initiator::start(
            Arc::new(EndpointConnector::new(Endpoint::Tcp(proxy.addr()), bound)),
            {
                let mut o = InitiatorOptions::default();
                o.protocol = InitiatorConfig::default().with_detection_bound(bound);
                o
            },
        );
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            init.call(Bytes::from_static(b"warm"))
                .await
                .expect("call before the fault");
            proxy.inject(fault);
            let start = Instant::now();
            init.call(Bytes::from_static(b"after"))
                .await
                .expect("call after the fault");
            samples.push(start.elapsed());
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{{\"fault\":\"{name}\",\"runs\":{runs},\"bound_ms\":{},\"median_ms\":{:.1},\"min_ms\":{:.1},\"max_ms\":{:.1}}}",
            bound.as_millis(),
            ms(samples[runs / 2]),
            ms(samples[0]),
            ms(samples[runs - 1]),
        );
        init.close().await.expect("clean close");
    }
}
