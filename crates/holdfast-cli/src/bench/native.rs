//! The block scenario's native client: fio's jobs done with holdfast's own
//! Rust client ([`Volume`]) over one session, without NBD in between.
//! `depth` tasks share the session; random jobs pick aligned offsets from a
//! seeded generator, sequential ones take the next offset from a shared
//! cursor, as fio's do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use holdfast_block::Volume;
use tokio::time::Instant;

use super::fio::{FioResult, Job};
use super::table::{histogram, merge_latencies, quantile_us, record};

/// Runs `job` on `volume` and returns its figures in fio's terms; `cpu` is
/// left zero (the caller measures the process).
pub(crate) async fn run(volume: &Volume, job: Job<'_>) -> anyhow::Result<FioResult> {
    let block = u64::try_from(job.block).context("block size")?;
    let len = u32::try_from(job.block).context("block size")?;
    let blocks = volume.size() / block;
    anyhow::ensure!(
        blocks > 0,
        "the volume is smaller than one {block}-byte block"
    );
    let random = job.rw.starts_with("rand");
    let write = job.rw.contains("write");
    let data = Bytes::from(vec![0xa5; job.block]);
    let cursor = Arc::new(AtomicU64::new(0));
    let from = Instant::now() + job.ramp;
    let until = from + job.runtime;
    let tasks: Vec<_> = (0..job.depth.max(1))
        .map(|task| {
            let volume = volume.clone();
            let data = data.clone();
            let cursor = Arc::clone(&cursor);
            let mut rng = Rng::new(task as u64 + 1);
            tokio::spawn(async move {
                let mut latency = histogram()?;
                loop {
                    let at = Instant::now();
                    if at >= until {
                        break;
                    }
                    let index = if random {
                        rng.below(blocks)
                    } else {
                        cursor.fetch_add(1, Ordering::Relaxed) % blocks
                    };
                    let offset = index * block;
                    if write {
                        volume
                            .write_at(offset, data.clone(), false)
                            .await
                            .map_err(|e| anyhow!("a native write at {offset} failed: {e}"))?;
                    } else {
                        let got = volume
                            .read_at(offset, len)
                            .await
                            .map_err(|e| anyhow!("a native read at {offset} failed: {e}"))?;
                        anyhow::ensure!(
                            got.len() == job_len(len),
                            "a {len}-byte read at {offset} returned {} bytes",
                            got.len()
                        );
                    }
                    let done = Instant::now();
                    if done >= from && done <= until {
                        record(&mut latency, done - at)?;
                    }
                }
                Ok::<Histogram<u64>, anyhow::Error>(latency)
            })
        })
        .collect();
    let latency = merge_latencies(tasks, "native client").await?;
    let seconds = job.runtime.as_secs_f64();
    let iops = latency.len() as f64 / seconds;
    Ok(FioResult {
        iops,
        bytes_per_s: iops * job.block as f64,
        p50_us: quantile_us(&latency, 0.5),
        p99_us: quantile_us(&latency, 0.99),
        cpu: Duration::ZERO,
        runtime: job.runtime,
    })
}

/// A read's expected length as a `usize`.
fn job_len(len: u32) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// xorshift64*: offsets that are random enough, the same every run.
struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
