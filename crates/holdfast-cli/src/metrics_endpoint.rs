//! The `--metrics ADDR` endpoint: the process's recorder and the HTTP
//! listener that serves what it recorded (`GET /metrics`, any path but
//! `/health`, which answers `OK`).
//!
//! The recorder is `metrics-exporter-prometheus`'s for counters, gauges and
//! the histograms that are not latencies, and [`Histograms`] for every
//! `_seconds` histogram: those are recorded on every NBD request and every
//! backend I/O, where the exporter's own histograms queue each sample until
//! an upkeep drains them (see [`crate::metrics_histogram`]; issue 17 asks
//! `--metrics` to cost under 1% at 4 KiB QD 32). A scrape renders both into
//! one page, in the exporter's text format.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tracing::{debug, warn};

use crate::metrics_histogram::Histograms;

/// How often the exporter's own histograms (those not in seconds) are
/// drained into their summaries, as its upkeep task did.
const UPKEEP: Duration = Duration::from_secs(5);

/// How long to wait after a failed accept (out of descriptors) before the
/// next one, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The process's recorder: latency histograms of its own, the rest the
/// exporter's.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// Counters, gauges, and histograms not in seconds.
    prometheus: PrometheusRecorder,
    /// Every `_seconds` histogram.
    histograms: Arc<Histograms>,
}

/// What a scrape renders: both halves of a [`Recorder`].
#[derive(Clone, Debug)]
pub(crate) struct Page {
    /// The exporter's half.
    prometheus: PrometheusHandle,
    /// The latency histograms.
    histograms: Arc<Histograms>,
}

impl Page {
    /// The page in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut text = self.prometheus.render();
        self.histograms.render(&mut text);
        text
    }

    /// Drains the exporter's histogram samples into their summaries.
    fn upkeep(&self) {
        self.prometheus.run_upkeep();
    }
}

/// Whether a histogram is a latency, recorded in [`Histograms`].
fn is_latency(name: &str) -> bool {
    name.ends_with("_seconds")
}

impl Recorder {
    /// A recorder with nothing recorded yet.
    pub(crate) fn new() -> Recorder {
        Recorder {
            prometheus: PrometheusBuilder::new().build_recorder(),
            histograms: Arc::default(),
        }
    }

    /// What a scrape of this recorder renders.
    pub(crate) fn page(&self) -> Page {
        Page {
            prometheus: self.prometheus.handle(),
            histograms: Arc::clone(&self.histograms),
        }
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if is_latency(key.as_str()) {
            self.histograms.describe(key.as_str(), &description);
        } else {
            self.prometheus.describe_histogram(key, unit, description);
        }
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.prometheus.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if is_latency(key.name()) {
            Histogram::from_arc(self.histograms.register(key))
        } else {
            self.prometheus.register_histogram(key, metadata)
        }
    }
}

/// Binds `addr`, installs the global recorder and serves it there (on the
/// current tokio runtime).
pub(crate) fn install(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| {
            format!("could not serve metrics on {addr} (is the port free? give another --metrics)")
        })?;
    let recorder = Recorder::new();
    let page = recorder.page();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow!("a metrics recorder is already installed in this process"))?;
    let drained = page.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        loop {
            tick.tick().await;
            drained.upkeep();
        }
    });
    tokio::spawn(serve(listener, page));
    Ok(())
}

/// Accepts scrapes for as long as the process runs.
async fn serve(listener: tokio::net::TcpListener, page: Page) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "metrics endpoint: could not accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let page = page.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let page = page.clone();
                async move { Ok::<_, Infallible>(respond(&page, req.uri().path())) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "metrics endpoint: connection ended with an error");
            }
        });
    }
}

/// The answer to a request for `path`.
fn respond(page: &Page, path: &str) -> Response<Full<Bytes>> {
    let body = if path == "/health" {
        "OK".to_owned()
    } else {
        page.render()
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_ours_and_the_rest_the_exporters_on_one_page() {
        let recorder = Recorder::new();
        let page = recorder.page();
        metrics::with_local_recorder(&recorder, || {
            let h = metrics::histogram!("holdfast_backend_io_seconds", "op" => "read");
            h.record(std::time::Duration::from_micros(70));
            metrics::counter!("holdfast_nbd_requests_total", "type" => "read", "outcome" => "ok")
                .increment(3);
            metrics::histogram!("holdfast_store_changes_per_commit").record(4.0);
        });
        let text = page.render();
        assert!(
            text.contains("holdfast_backend_io_seconds_bucket{op=\"read\",le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("holdfast_backend_io_seconds_count{op=\"read\"} 1\n"));
        assert!(text.contains("holdfast_nbd_requests_total{type=\"read\",outcome=\"ok\"} 3\n"));
        // Not a latency: the exporter's summary, as before.
        assert!(
            text.contains("# TYPE holdfast_store_changes_per_commit summary\n"),
            "{text}"
        );
        assert!(text.contains("holdfast_store_changes_per_commit_count 1\n"));
        assert_eq!(
            respond(&page, "/health").headers()[CONTENT_TYPE],
            "text/plain"
        );
    }
}
