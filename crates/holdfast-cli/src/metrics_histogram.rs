//! The `_seconds` histograms of `--metrics`: bucket counters that a sample
//! adds to directly, read when `/metrics` is scraped.
//!
//! `metrics-exporter-prometheus` keeps every histogram sample until its
//! upkeep runs: each one is pushed, with a timestamp read from the clock,
//! onto a lock-free list (pinned to an epoch, a block allocated every few
//! dozen samples), and an upkeep task drains the lists into bucket counts
//! every 5 s (300,000 samples a histogram at 60,000 requests a second). Here
//! a series is a fixed array of counters, one per bucket, and a sum; a sample
//! is one comparison per bucket below it and two atomic adds, with no clock
//! read, no allocation and nothing left to drain. Each series has a few
//! shards, each on its own cache lines, and a thread adds to its own, so the
//! threads that answer requests do not pass a cache line back and forth. A
//! scrape adds the shards up.
//!
//! What a scrape shows is what the exporter showed for the same samples
//! (`holdfast_..._seconds_bucket` with `le` from 50 µs to 30 s and `+Inf`,
//! `_sum`, `_count`, with the exporter's own formatting functions); the sum
//! is kept in whole nanoseconds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{HistogramFn, Key};
use metrics_exporter_prometheus::formatting::{
    sanitize_label_key, sanitize_label_value, sanitize_metric_name, write_help_line,
    write_type_line,
};

/// Latency buckets, in seconds, for every `_seconds` histogram: 50 µs to
/// 30 s, enough for a loopback 4 KiB read and for a recovery after a
/// detection timeout.
pub(crate) const BUCKETS: [f64; 18] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters per shard: one per bucket, and one for samples above the last
/// bound (and NaN), which only `+Inf` and `_count` include.
const SLOTS: usize = BUCKETS.len() + 1;

/// Shards per series (threads beyond this many share them).
const SHARDS: usize = 8;

/// The next shard handed to a thread.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard of every series.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// One thread's share of a series, alone on its cache lines (128 bytes:
/// the adjacent-line prefetcher fetches lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Samples per slot, not cumulative: slot `i` counts samples in
    /// (`BUCKETS[i - 1]`, `BUCKETS[i]`].
    counts: [AtomicU64; SLOTS],
    /// The samples' sum in nanoseconds (negative samples count as 0).
    sum_nanos: AtomicU64,
}

/// One histogram series.
#[derive(Debug, Default)]
pub(crate) struct AtomicHistogram {
    shards: [Shard; SHARDS],
}

impl AtomicHistogram {
    /// Records a sample, in seconds.
    pub(crate) fn record_seconds(&self, seconds: f64) {
        // A thread whose locals are being torn down still records.
        let shard = &self.shards[SHARD.try_with(|s| *s).unwrap_or(0)];
        // The first bucket whose bound is not below the sample, as the
        // exporter counts (`sample <= bound`); NaN is above every bound.
        let slot = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        shard.counts[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = if seconds > 0.0 {
            // Saturates at u64::MAX for an absurd sample; the sum wraps
            // after 584 years of recorded time.
            (seconds * 1e9).round() as u64
        } else {
            0
        };
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The shards added up.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut counts = [0u64; SLOTS];
        let mut sum_nanos = 0u64;
        for shard in &self.shards {
            for (total, c) in counts.iter_mut().zip(&shard.counts) {
                *total += c.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        Snapshot { counts, sum_nanos }
    }
}

impl HistogramFn for AtomicHistogram {
    fn record(&self, value: f64) {
        self.record_seconds(value);
    }
}

/// A series' counts at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Samples per slot (see [`Shard::counts`]).
    counts: [u64; SLOTS],
    /// Their sum in nanoseconds.
    sum_nanos: u64,
}

impl Snapshot {
    /// Samples recorded (`_count`, the `+Inf` bucket).
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Every `_seconds` histogram series, in the order they were registered.
#[derive(Debug, Default)]
pub(crate) struct Histograms {
    /// Each series' key and counters.
    series: Mutex<Vec<(Key, Arc<AtomicHistogram>)>>,
    /// `# HELP` texts by metric name.
    help: Mutex<Vec<(String, String)>>,
}

impl Histograms {
    /// The counters of the series `key`, created on its first registration
    /// (each NBD connection registers its series again: they share them).
    pub(crate) fn register(&self, key: &Key) -> Arc<AtomicHistogram> {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, h)) = series.iter().find(|(k, _)| k == key) {
            return Arc::clone(h);
        }
        let h = Arc::new(AtomicHistogram::default());
        series.push((key.clone(), Arc::clone(&h)));
        h
    }

    /// Sets the `# HELP` text of a metric.
    pub(crate) fn describe(&self, name: &str, text: &str) {
        let mut help = self.help.lock().unwrap_or_else(PoisonError::into_inner);
        match help.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => text.clone_into(&mut entry.1),
            None => help.push((name.to_owned(), text.to_owned())),
        }
    }

    /// Appends every series in the Prometheus text format, a block per
    /// metric name as the exporter writes them.
    pub(crate) fn render(&self, out: &mut String) {
        let series: Vec<(Key, Arc<AtomicHistogram>)> = self
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let help = self
            .help
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut names: Vec<&str> = Vec::new();
        for (key, _) in &series {
            if !names.contains(&key.name()) {
                names.push(key.name());
            }
        }
        for raw in names {
            let name = sanitize_metric_name(raw);
            if let Some((_, text)) = help.iter().find(|(n, _)| n == raw) {
                write_help_line(out, &name, None, None, text);
            }
            write_type_line(out, &name, None, None, "histogram");
            for (key, h) in series.iter().filter(|(k, _)| k.name() == raw) {
                write_series(out, &name, key, &h.snapshot());
            }
            out.push('\n');
        }
    }
}

/// One series' `_bucket`, `_sum` and `_count` lines.
fn write_series(out: &mut String, name: &str, key: &Key, s: &Snapshot) {
    let labels: Vec<String> = key
        .labels()
        .map(|l| {
            format!(
                "{}=\"{}\"",
                sanitize_label_key(l.key()),
                sanitize_label_value(l.value())
            )
        })
        .collect();
    let braces = |extra: Option<String>| -> String {
        let all: Vec<&str> = labels
            .iter()
            .map(String::as_str)
            .chain(extra.as_deref())
            .collect();
        if all.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", all.join(","))
        }
    };
    let mut below = 0u64;
    for (bound, n) in BUCKETS.iter().zip(&s.counts) {
        below += n;
        let le = braces(Some(format!("le=\"{bound}\"")));
        out.push_str(&format!("{name}_bucket{le} {below}\n"));
    }
    let count = s.count();
    let inf = braces(Some("le=\"+Inf\"".to_owned()));
    out.push_str(&format!("{name}_bucket{inf} {count}\n"));
    let plain = braces(None);
    let sum = s.sum_nanos as f64 / 1e9;
    out.push_str(&format!("{name}_sum{plain} {sum}\n"));
    out.push_str(&format!("{name}_count{plain} {count}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    /// Samples in every bucket, on the bounds, above the last, and odd ones.
    const SAMPLES: [f64; 12] = [
        0.0, 49e-6, 50e-6, 180e-6, 180e-6, 1e-3, 0.3, 2.5, 29.9, 30.0, 31.0, 120.0,
    ];

    /// The lines of `text` that are not the sum.
    fn without_sums(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.contains("_sum")).collect()
    }

    /// The values of the `_sum` lines.
    fn sums(text: &str) -> Vec<f64> {
        text.lines()
            .filter(|l| l.contains("_sum"))
            .map(|l| {
                l.rsplit_once(' ')
                    .expect("a value")
                    .1
                    .parse()
                    .expect("a number")
            })
            .collect()
    }

    #[test]
    fn a_scrape_shows_what_the_exporter_showed_for_the_same_samples() {
        let exporter = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)
            .expect("the buckets")
            .build_recorder();
        let handle = exporter.handle();
        let ours = Histograms::default();
        let key = Key::from_parts(
            "holdfast_nbd_request_seconds",
            vec![metrics::Label::new("type", "read")],
        );
        let h = ours.register(&key);
        metrics::with_local_recorder(&exporter, || {
            let theirs = metrics::histogram!("holdfast_nbd_request_seconds", "type" => "read");
            for s in SAMPLES {
                theirs.record(s);
                h.record_seconds(s);
            }
        });
        let expected = handle.render();
        let mut got = String::new();
        ours.render(&mut got);
        assert_eq!(
            without_sums(&got),
            without_sums(&expected),
            "{got}\n{expected}"
        );
        let (a, b) = (sums(&got), sums(&expected));
        assert_eq!(a.len(), 1);
        assert!((a[0] - b[0]).abs() < 1e-6, "{a:?} {b:?}");
        assert!(
            got.contains("holdfast_nbd_request_seconds_bucket{type=\"read\",le=\"0.00005\"} 3\n")
        );
        assert!(got.contains("holdfast_nbd_request_seconds_count{type=\"read\"} 12\n"));
    }

    #[test]
    fn series_are_shared_by_key_and_every_thread_is_counted_exactly() {
        let all = Histograms::default();
        let key = Key::from_parts("x_seconds", vec![metrics::Label::new("op", "write")]);
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let h = all.register(&key);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        h.record_seconds(200e-6);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("the thread records");
        }
        all.register(&Key::from_name("y_seconds"))
            .record_seconds(f64::NAN);
        let s = all.register(&key).snapshot();
        assert_eq!(s.count(), 120_000);
        assert_eq!(s.counts[2], 120_000, "all in the 250 µs bucket");
        assert_eq!(s.sum_nanos, 120_000 * 200_000);
        let mut text = String::new();
        all.describe("y_seconds", "a help text");
        all.render(&mut text);
        assert_eq!(text.matches("# TYPE").count(), 2, "{text}");
        assert!(text.contains("# HELP y_seconds a help text\n"), "{text}");
        assert!(text.contains("y_seconds_bucket{le=\"30\"} 0\ny_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(
            text.contains("y_seconds_sum 0\ny_seconds_count 1\n"),
            "{text}"
        );
    }
}
