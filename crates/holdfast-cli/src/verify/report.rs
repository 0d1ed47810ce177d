//! The demo's final report: a table for people, JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Everything the demo measured.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) seed: u64,
    pub(crate) duration_s: f64,
    pub(crate) volume_bytes: u64,
    pub(crate) workers: usize,
    pub(crate) operations: u64,
    pub(crate) reads: u64,
    pub(crate) writes: u64,
    pub(crate) write_zeroes: u64,
    pub(crate) flushes: u64,
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,
    pub(crate) faults: BTreeMap<String, u64>,
    pub(crate) reconnects: u64,
    pub(crate) stateful_recoveries: u64,
    pub(crate) stateless_recoveries: u64,
    pub(crate) resent: u64,
    pub(crate) reissued: u64,
    pub(crate) answered_from_cache: u64,
    pub(crate) recovery_p50_ms: Option<f64>,
    pub(crate) recovery_p99_ms: Option<f64>,
    pub(crate) recovery_max_ms: Option<f64>,
    pub(crate) failed_operations: u64,
    pub(crate) lost: u64,
    /// Writes executed twice in one session, as the target-side ledger saw
    /// them; `None` when the target is external and has no ledger.
    pub(crate) duplicated: Option<u64>,
    pub(crate) corrupt: u64,
    /// Operations the second session completed (`None`: no second session).
    pub(crate) second_session_operations: Option<u64>,
    /// Second-session requests answered with an error (EIO at the
    /// io-timeout while its path was down): expected, not a failure.
    pub(crate) second_session_errors: Option<u64>,
    /// Failovers between nodes (`None`: one node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failovers: Option<u64>,
    /// Of the fences the failovers asked for, those the old node confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fences_confirmed: Option<u64>,
    /// Calls moved from a lost node to another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) commands_moved: Option<u64>,
    /// Each path's state and figures at the end (two nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) paths: Option<String>,
    pub(crate) problems: Vec<String>,
}

impl Summary {
    /// True when every invariant held.
    pub(crate) fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated.unwrap_or(0) == 0
            && self.corrupt == 0
            && self.failed_operations == 0
    }

    /// The table a person reads.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        row(
            "duration",
            format!("{:.1} s, seed {}", self.duration_s, self.seed),
        );
        row(
            "volume",
            format!("{} MiB, {} workers", self.volume_bytes >> 20, self.workers),
        );
        row(
            "operations",
            format!(
                "{} ({} reads, {} writes, {} write-zeroes, {} flushes)",
                self.operations, self.reads, self.writes, self.write_zeroes, self.flushes
            ),
        );
        row(
            "bytes",
            format!(
                "{} read, {} written",
                human(self.bytes_read),
                human(self.bytes_written)
            ),
        );
        let faults: u64 = self.faults.values().sum();
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        row(
            "faults injected",
            format!("{faults} ({})", kinds.join(", ")),
        );
        row(
            "recoveries",
            format!(
                "{} reconnects: {} stateful, {} stateless (after the restart)",
                self.reconnects, self.stateful_recoveries, self.stateless_recoveries
            ),
        );
        row(
            "resent / from cache",
            format!(
                "{} commands resent, {} answered from the response cache, {} re-issued after the restart",
                self.resent, self.answered_from_cache, self.reissued
            ),
        );
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
        row(
            "recovery time",
            format!(
                "p50 {}, p99 {}, max {}",
                ms(self.recovery_p50_ms),
                ms(self.recovery_p99_ms),
                ms(self.recovery_max_ms)
            ),
        );
        if let (Some(ops), Some(errors)) =
            (self.second_session_operations, self.second_session_errors)
        {
            row(
                "second session",
                format!(
                    "{ops} operations on overlapping blocks through NBD, {errors} answered EIO \
                     at the io-timeout (expected; each checked never to land later)"
                ),
            );
        }
        if let (Some(f), Some(c), Some(m)) =
            (self.failovers, self.fences_confirmed, self.commands_moved)
        {
            row(
                "failovers",
                format!("{f} between the nodes, {c} fences confirmed, {m} commands moved"),
            );
        }
        if let Some(p) = &self.paths {
            row("paths", p.clone());
        }
        row("failed operations", self.failed_operations.to_string());
        row("lost", self.lost.to_string());
        row(
            "duplicated",
            self.duplicated.map_or(
                "not observable (external target, or two nodes)".to_owned(),
                |d| d.to_string(),
            ),
        );
        row("corrupt", self.corrupt.to_string());
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        let verdict = if self.passed() {
            "PASS: every operation executed exactly once; nothing lost, duplicated or corrupt."
        } else {
            "FAIL: an invariant broke; see the problems above."
        };
        let _ = writeln!(out, "\n{verdict}");
        out
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
