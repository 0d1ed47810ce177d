//! Criterion micro-benchmark of what `--metrics` adds to each block request
//! (issue 17: the cost of metrics at 4 KiB QD 32 must be >= 0.99x).
//!
//! Per request, `holdfast nbd` counts it in `holdfast_nbd_requests_total`
//! (labels `type`, `outcome`) and records its latency in
//! `holdfast_nbd_request_seconds` (`type`); the target records its backend
//! latency in `holdfast_backend_io_seconds` (`op`). Both ways of doing that
//! are measured, into the Prometheus recorder configured as `--metrics`
//! configures it (the `_seconds` buckets), with its upkeep (which drains the
//! histogram samples) run every 4,096 requests as its timer would:
//!
//! * `facade_per_request`: `metrics::counter!`/`histogram!` with labels at
//!   every request (the code before this benchmark): the key is built,
//!   hashed and looked up in the recorder's registry, and the handle's `Arc`
//!   cloned and dropped, three times.
//! * `handles`: the handles registered once and kept (what the NBD
//!   connection's `RequestMetrics` and the block service's `BackendLatency`
//!   do): one atomic add and two histogram samples, each sample queued
//!   with a clock reading until the upkeep drains it.
//! * `handles_atomic_histograms`: the same handles into the recorder that
//!   `--metrics` installs now (`src/metrics_endpoint.rs`): the counter in
//!   the exporter's registry, each `_seconds` sample two atomic adds into
//!   fixed buckets (`src/metrics_histogram.rs`), nothing to drain.
//!
//! One iteration is one request's recording on both sides. Run with
//! `cargo bench -p holdfast-cli --bench metrics_record`, or check it runs
//! with `-- --test`.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

// The binary's own recorder, compiled into this benchmark as it is.
#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../src/metrics_endpoint.rs"]
mod metrics_endpoint;
#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../src/metrics_histogram.rs"]
mod metrics_histogram;

/// The buckets `--metrics` gives every `_seconds` histogram.
const BUCKETS: [f64; 18] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A request's latency (a loopback 4 KiB read).
const TOOK: Duration = Duration::from_micros(180);

/// Requests between two upkeeps.
const UPKEEP_EVERY: u64 = 4096;

fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)
        .expect("buckets")
        .build_recorder()
}

/// The handles one connection and one service keep.
struct Handles {
    requests: Counter,
    latency: Histogram,
    backend: Histogram,
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics_record");

    let rec = recorder();
    let handle = rec.handle();
    let mut n = 0u64;
    metrics::with_local_recorder(&rec, || {
        g.bench_function("facade_per_request", |b| {
            b.iter(|| {
                let kind = black_box("read");
                metrics::counter!("holdfast_nbd_requests_total", "type" => kind, "outcome" => "ok")
                    .increment(1);
                metrics::histogram!("holdfast_nbd_request_seconds", "type" => kind).record(TOOK);
                metrics::histogram!("holdfast_backend_io_seconds", "op" => kind).record(TOOK);
                n += 1;
                if n.is_multiple_of(UPKEEP_EVERY) {
                    handle.run_upkeep();
                }
            });
        });
    });
    // Every request recorded, in the series the exporter serves.
    let text = handle.render();
    assert!(
        text.contains("holdfast_nbd_requests_total{type=\"read\",outcome=\"ok\"}"),
        "{text}"
    );
    assert!(text.contains("holdfast_backend_io_seconds_count{op=\"read\"}"));

    let rec = recorder();
    let handle = rec.handle();
    let h = metrics::with_local_recorder(&rec, || Handles {
        requests: metrics::counter!("holdfast_nbd_requests_total", "type" => "read", "outcome" => "ok"),
        latency: metrics::histogram!("holdfast_nbd_request_seconds", "type" => "read"),
        backend: metrics::histogram!("holdfast_backend_io_seconds", "op" => "read"),
    });
    let mut n = 0u64;
    g.bench_function("handles", |b| {
        b.iter(|| {
            black_box(&h).requests.increment(1);
            h.latency.record(TOOK);
            h.backend.record(TOOK);
            n += 1;
            if n.is_multiple_of(UPKEEP_EVERY) {
                handle.run_upkeep();
            }
        });
    });
    let text = handle.render();
    let line = format!("holdfast_nbd_requests_total{{type=\"read\",outcome=\"ok\"}} {n}");
    assert!(text.contains(&line), "{line} not in {text}");

    let rec = metrics_endpoint::Recorder::new();
    let page = rec.page();
    let h = metrics::with_local_recorder(&rec, || Handles {
        requests: metrics::counter!("holdfast_nbd_requests_total", "type" => "read", "outcome" => "ok"),
        latency: metrics::histogram!("holdfast_nbd_request_seconds", "type" => "read"),
        backend: metrics::histogram!("holdfast_backend_io_seconds", "op" => "read"),
    });
    let mut n = 0u64;
    g.bench_function("handles_atomic_histograms", |b| {
        b.iter(|| {
            black_box(&h).requests.increment(1);
            h.latency.record(TOOK);
            h.backend.record(TOOK);
            n += 1;
        });
    });
    let text = page.render();
    let line = format!("holdfast_backend_io_seconds_count{{op=\"read\"}} {n}");
    assert!(text.contains(&line), "{line} not in {text}");
    g.finish();
}

/// The harness (`harness = false`): short runs by default, which criterion's
/// command-line flags override. Written out instead of `criterion_group!`,
/// whose generated `pub fn` has no doc comment (`missing_docs`).
fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
