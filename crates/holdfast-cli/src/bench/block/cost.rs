//! `holdfast bench block --metrics-only`: what `--metrics` costs at 4 KiB
//! QD 32, measured so that a 1% difference can show on a busy two-core
//! machine whose runs spread by ±10% (issue 17's goal is ≥ 0.99x).
//!
//! Two pairs of servers run for the whole measurement, each a `holdfast
//! target` and a `holdfast nbd` on the same file: one pair with `--metrics`
//! on both processes, one without (an idle pair costs nothing). Each round
//! runs every job on both pairs back to back, the order alternating from
//! round to round (with, without; without, with; ...), so the two runs of a
//! pair see the same state of the machine and a slow drift cancels. Each
//! pair gives one ratio, with over without, for IOPS and for CPU per I/O;
//! reported are the median of the pair ratios, a distribution-free 95%
//! confidence interval of that median (from order statistics), and the
//! smallest and largest ratio. The rows of the table are each system's
//! median run, as elsewhere in the block scenario.

use std::path::Path;

use anyhow::anyhow;
use serde::Serialize;

use super::{label, BlockRow, Runner, METRICS_SYSTEM, METRICS_WORKLOADS, SYSTEMS};
use crate::bench::child::Server;
use crate::bench::fio::Device;
use crate::bench::table::{num, Table};

/// The target `--metrics` must meet: IOPS at least this much of without.
const GOAL: f64 = 0.99;

/// A `holdfast target` and a `holdfast nbd` exporting its volume.
pub(super) struct Pair {
    target: Server,
    nbd: Server,
    /// The NBD URI fio connects to.
    uri: String,
    /// Whether both serve `--metrics`.
    metrics: bool,
}

impl Pair {
    /// Starts a target on `volume` and an NBD export of it on the Unix
    /// socket `sock`, both with `--metrics` (each on a free port) if
    /// `metrics`.
    pub(super) async fn start(volume: &str, sock: &Path, metrics: bool) -> anyhow::Result<Pair> {
        let free = || -> anyhow::Result<String> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .to_string())
        };
        let with = |args: &[&str]| -> anyhow::Result<Vec<String>> {
            let mut v: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            if metrics {
                v.extend(["--metrics".to_owned(), free()?]);
            }
            Ok(v)
        };
        let target_args = with(&["target", "--volume", volume, "--listen", "127.0.0.1:0"])?;
        let target_args: Vec<&str> = target_args.iter().map(String::as_str).collect();
        let (target, ready) = Server::holdfast("holdfast target", &target_args).await?;
        let endpoint = ready["endpoints"][0]
            .as_str()
            .ok_or_else(|| anyhow!("holdfast target printed no endpoint: {ready}"))?
            .to_owned();
        let listen = format!("unix:{}", sock.display());
        let nbd_args = with(&["nbd", "--target", &endpoint, "--listen", &listen])?;
        let nbd_args: Vec<&str> = nbd_args.iter().map(String::as_str).collect();
        let (nbd, ready) = Server::holdfast("holdfast nbd", &nbd_args).await?;
        let uri = ready["uri"]
            .as_str()
            .ok_or_else(|| anyhow!("holdfast nbd printed no URI: {ready}"))?
            .to_owned();
        Ok(Pair {
            target,
            nbd,
            uri,
            metrics,
        })
    }

    /// The system name of its rows.
    fn system(&self) -> &'static str {
        if self.metrics {
            METRICS_SYSTEM
        } else {
            SYSTEMS[3]
        }
    }

    /// Runs `jobs` through fio against the export, charging both servers'
    /// CPU time to them.
    pub(super) async fn run(
        &self,
        runner: &mut Runner,
        jobs: &[(&str, usize, usize)],
    ) -> anyhow::Result<()> {
        runner
            .fio_some(
                self.system(),
                Device::Nbd(&self.uri),
                &[&self.target, &self.nbd],
                jobs,
            )
            .await
    }

    /// Stops the export, then the target.
    pub(super) async fn stop(self) {
        self.nbd.stop().await;
        self.target.stop().await;
    }
}

/// A set of ratios, summarised.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Spread {
    /// The median (the mean of the two middle ones of an even count).
    pub(crate) median: f64,
    /// A 95% confidence interval of the median: order statistics whose
    /// binomial coverage is at least 95%; `None` below 6 values, where no
    /// pair of them covers that much.
    pub(crate) ci95: Option<(f64, f64)>,
    /// The smallest value.
    pub(crate) min: f64,
    /// The largest value.
    pub(crate) max: f64,
}

impl Spread {
    /// Summarises `values`; `None` if there are none (or one is NaN).
    pub(crate) fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n.is_multiple_of(2) {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        } else {
            v[n / 2]
        };
        let ci95 = ci_rank(n).map(|k| (v[k - 1], v[n - k]));
        Some(Spread {
            median,
            ci95,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `0.995x (95% CI 0.990-1.001, 0.970-1.020)`, or without the
    /// interval when there is none.
    fn text(&self) -> String {
        let x = |v: f64| num(v, 3);
        match self.ci95 {
            Some((lo, hi)) => format!(
                "{}x (95% CI {}-{}, range {}-{})",
                x(self.median),
                x(lo),
                x(hi),
                x(self.min),
                x(self.max)
            ),
            None => format!(
                "{}x (range {}-{})",
                x(self.median),
                x(self.min),
                x(self.max)
            ),
        }
    }
}

/// The largest rank `k` (1-based) such that the `k`-th smallest and the
/// `k`-th largest of `n` values bound their median with at least 95%
/// confidence: P(Binomial(n, 1/2) < k) <= 2.5%. `None` if even the smallest
/// and largest do not (n < 6).
fn ci_rank(n: usize) -> Option<usize> {
    // P(X = i) for X ~ Binomial(n, 1/2), accumulated in f64: exact enough
    // for the 100 rounds `--rounds` allows.
    let mut p = 0.5f64.powi(i32::try_from(n).ok()?);
    let mut below = 0.0;
    let mut k = 0;
    for i in 0..n / 2 {
        below += p;
        if below > 0.025 {
            break;
        }
        k = i + 1;
        p = p * (n - i) as f64 / (i + 1) as f64;
    }
    (k >= 1).then_some(k)
}

/// What `--metrics` cost on one job: the pair ratios, summarised.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MetricsCost {
    /// The job in words: `4 KiB randread QD 32`.
    pub(crate) workload: String,
    /// Pairs measured (one per round).
    pub(crate) pairs: usize,
    /// IOPS with `--metrics` over IOPS without, per pair.
    pub(crate) iops_ratio: Spread,
    /// CPU µs per I/O with `--metrics` over without, per pair (above 1:
    /// metrics cost CPU).
    pub(crate) cpu_ratio: Spread,
}

impl MetricsCost {
    /// The target for the job, judged on the median pair ratio.
    fn check(&self) -> crate::bench::Check {
        crate::bench::Check {
            target: format!(
                "IOPS >= {GOAL}x without --metrics: median of {} pairs {}",
                self.pairs,
                self.iops_ratio.text()
            ),
            met: self.iops_ratio.median >= GOAL,
        }
    }
}

/// Runs `rounds` rounds of [`METRICS_WORKLOADS`] on a pair with and a pair
/// without `--metrics`; returns every run's row and each job's cost.
pub(super) async fn measure(
    runner: &mut Runner,
    volume: &str,
    socket: impl Fn(&str) -> std::path::PathBuf,
    rounds: u32,
) -> anyhow::Result<(Vec<BlockRow>, Vec<MetricsCost>)> {
    let without = Pair::start(volume, &socket("holdfast"), false).await?;
    let with = Pair::start(volume, &socket("holdfast-metrics"), true).await?;
    for round in 0..rounds.max(1) {
        for job in METRICS_WORKLOADS {
            // Alternating the order cancels a slow drift of the machine.
            let order = if round.is_multiple_of(2) {
                [&with, &without]
            } else {
                [&without, &with]
            };
            for pair in order {
                pair.run(runner, &[job]).await?;
            }
        }
    }
    with.stop().await;
    without.stop().await;
    let rows = std::mem::take(&mut runner.rows);
    let costs = costs(&rows);
    Ok((rows, costs))
}

/// Pairs each run with `--metrics` with the run without it of the same job
/// and round (runs are in order: each round has one of each per job).
pub(super) fn costs(rows: &[BlockRow]) -> Vec<MetricsCost> {
    METRICS_WORKLOADS
        .iter()
        .filter_map(|&(rw, block, depth)| {
            let workload = label(rw, block, depth);
            let runs = |system: &str| -> Vec<&BlockRow> {
                rows.iter()
                    .filter(|r| r.workload == workload && r.system == system)
                    .collect()
            };
            let (with, without) = (runs(METRICS_SYSTEM), runs(SYSTEMS[3]));
            let pairs: Vec<(&BlockRow, &BlockRow)> = with
                .into_iter()
                .zip(without)
                .filter(|(_, o)| o.iops > 0.0)
                .collect();
            let ratio = |f: fn(&BlockRow) -> f64| -> Vec<f64> {
                pairs
                    .iter()
                    .filter(|(_, o)| f(o) > 0.0)
                    .map(|(w, o)| f(w) / f(o))
                    .collect()
            };
            Some(MetricsCost {
                workload,
                pairs: pairs.len(),
                iops_ratio: Spread::of(&ratio(|r| r.iops))?,
                cpu_ratio: Spread::of(&ratio(|r| r.cpu_us_per_io))?,
            })
        })
        .collect()
}

/// Replaces the "+metrics" rows' check (judged on median runs) with the
/// one judged on the pair ratios.
pub(super) fn judge_pairs(rows: &mut [BlockRow], costs: &[MetricsCost]) {
    for r in rows.iter_mut().filter(|r| r.system == METRICS_SYSTEM) {
        if let Some(cost) = costs.iter().find(|c| c.workload == r.workload) {
            r.targets
                .retain(|c| !c.target.contains("without --metrics"));
            r.targets.push(cost.check());
        }
    }
}

/// The costs as a table (the terminal's and the report's).
pub(super) fn table(costs: &[MetricsCost]) -> Table {
    let mut t = Table::new(&[
        "job",
        "pairs",
        "IOPS with/without",
        "95% CI",
        "range",
        "CPU/IO with/without",
    ])
    .align_left(&[0]);
    let x = |v: f64| format!("{}x", num(v, 3));
    for c in costs {
        let i = &c.iops_ratio;
        t.push(vec![
            c.workload.clone(),
            c.pairs.to_string(),
            x(i.median),
            i.ci95
                .map_or("-".to_owned(), |(lo, hi)| format!("{}-{}", x(lo), x(hi))),
            format!("{}-{}", x(i.min), x(i.max)),
            x(c.cpu_ratio.median),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_ranks_follow_the_binomial_table() {
        // The usual table for a 95% interval of the median (at least 95%
        // coverage): n = 6 → (1, 6), 10 → (2, 9), 20 → (6, 15), 100 → (40, 61).
        assert_eq!(ci_rank(5), None);
        assert_eq!(ci_rank(6), Some(1));
        assert_eq!(ci_rank(10), Some(2));
        assert_eq!(ci_rank(20), Some(6));
        assert_eq!(ci_rank(100), Some(40));
    }

    #[test]
    fn a_spread_has_median_interval_and_range() {
        let s = Spread::of(&[1.0, 0.97, 1.02, 0.99, 0.995, 1.01]).expect("a spread");
        assert!((s.median - 0.9975).abs() < 1e-12, "{s:?}");
        assert_eq!(s.ci95, Some((0.97, 1.02)));
        assert_eq!((s.min, s.max), (0.97, 1.02));
        let s = Spread::of(&[0.98, 1.0, 0.99]).expect("a spread");
        assert_eq!((s.median, s.ci95), (0.99, None));
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[1.0, f64::NAN]).is_none());
    }

    fn run(system: &str, rw: &str, iops: f64, cpu: f64) -> BlockRow {
        let mut r = super::super::tests::row(system, rw, 4096, 32, iops);
        r.cpu_us_per_io = cpu;
        r
    }

    #[test]
    fn each_run_with_metrics_is_paired_with_the_run_without_of_its_round() {
        // Round 1 fast, round 2 slow, round 3 fast: the slow round's pair
        // still compares like with like (a median of runs would compare
        // different rounds' runs).
        let rows = vec![
            run(METRICS_SYSTEM, "randread", 99.0, 10.1),
            run(SYSTEMS[3], "randread", 100.0, 10.0),
            run(METRICS_SYSTEM, "randwrite", 50.0, 20.0),
            run(SYSTEMS[3], "randwrite", 50.0, 20.0),
            run(SYSTEMS[3], "randread", 60.0, 10.0),
            run(METRICS_SYSTEM, "randread", 59.7, 10.0),
            run(SYSTEMS[3], "randwrite", 50.0, 20.0),
            run(METRICS_SYSTEM, "randwrite", 51.0, 20.0),
            run(METRICS_SYSTEM, "randread", 100.0, 10.0),
            run(SYSTEMS[3], "randread", 100.0, 10.0),
            run(METRICS_SYSTEM, "randwrite", 49.0, 20.0),
            run(SYSTEMS[3], "randwrite", 50.0, 20.0),
        ];
        let costs = costs(&rows);
        assert_eq!(costs.len(), 2);
        let read = &costs[0];
        assert_eq!(
            (read.workload.as_str(), read.pairs),
            ("4 KiB randread QD 32", 3)
        );
        assert!((read.iops_ratio.median - 0.995).abs() < 1e-9, "{read:?}");
        assert!((read.iops_ratio.min - 0.99).abs() < 1e-9);
        assert!((read.cpu_ratio.max - 1.01).abs() < 1e-9);
        let write = &costs[1];
        assert!((write.iops_ratio.median - 1.0).abs() < 1e-9, "{write:?}");

        // The "+metrics" row's check is judged on the pairs' median.
        let mut table = super::super::medians(rows);
        super::super::judge(&mut table);
        judge_pairs(&mut table, &costs);
        let row = table
            .iter()
            .find(|r| r.system == METRICS_SYSTEM && r.rw == "randread")
            .expect("the randread +metrics row");
        assert_eq!(row.targets.len(), 1, "{:?}", row.targets);
        assert!(row.targets[0].met, "{:?}", row.targets);
        assert!(row.targets[0].target.contains("median of 3 pairs 0.995x"));
    }
}
