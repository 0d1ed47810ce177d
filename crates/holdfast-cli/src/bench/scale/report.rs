//! The scale scenario's report: its rows (also its JSON), the tables for
//! the terminal and the Markdown report.

use serde::Serialize;

use crate::bench::table::{num, Table};
use crate::bench::{Check, Machine, Mode};

/// Resident memory with some number of idle sessions open.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct IdleRow {
    /// Sessions open.
    pub(crate) sessions: usize,
    /// The target's RSS before any session, in MiB.
    pub(crate) target_rss_start_mib: f64,
    /// The target's RSS with these sessions open, in MiB.
    pub(crate) target_rss_mib: f64,
    /// The target's growth per session, in KiB.
    pub(crate) target_kib_per_session: f64,
    /// This process's (the initiators') growth per session, in KiB.
    pub(crate) initiator_kib_per_session: f64,
    /// Sessions opened per second in this step.
    pub(crate) opened_per_s: f64,
    /// The bound on the target's KiB per session.
    pub(crate) target: Check,
}

/// Many sessions calling at once.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ActiveRow {
    /// Sessions calling, one call outstanding each.
    pub(crate) sessions: usize,
    /// The measured window, in seconds.
    pub(crate) window_seconds: f64,
    /// Calls completed in the window, all sessions.
    pub(crate) calls: u64,
    /// Calls per second, all sessions.
    pub(crate) ops_per_s: f64,
    /// The fewest calls one session completed.
    pub(crate) min_calls: u64,
    /// The mean calls per session.
    pub(crate) mean_calls: f64,
    /// The most calls one session completed.
    pub(crate) max_calls: u64,
    /// Jain's fairness index of the calls per session, in (0, 1].
    pub(crate) jain: f64,
    /// The bound on the index.
    pub(crate) target: Check,
}

/// One RSS sample of the fault-injected run.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct RssSample {
    /// Since the run started, in seconds.
    pub(crate) seconds: f64,
    /// Resident memory, in MiB.
    pub(crate) mib: f64,
}

/// Resident memory over a long fault-injected run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SoakRow {
    /// The command that ran.
    pub(crate) command: String,
    /// The run's length as asked, in seconds.
    pub(crate) duration_seconds: f64,
    /// Samples before this are warm-up, in seconds.
    pub(crate) warmup_seconds: f64,
    /// Operations acknowledged (increments and one-way messages).
    pub(crate) operations: u64,
    /// Faults the proxy injected.
    pub(crate) faults: u64,
    /// RSS at the first sample after the warm-up, in MiB.
    pub(crate) start_mib: f64,
    /// RSS at the last sample, in MiB.
    pub(crate) end_mib: f64,
    /// The largest sample, in MiB.
    pub(crate) max_mib: f64,
    /// Last sample minus the first of the second half, in MiB (flat is 0).
    pub(crate) second_half_growth_mib: f64,
    /// Every sample.
    pub(crate) samples: Vec<RssSample>,
}

/// The whole scenario.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ScaleReport {
    /// How long the runs were.
    pub(crate) mode: Mode,
    /// One row per idle session count.
    pub(crate) idle: Vec<IdleRow>,
    /// The active sessions.
    pub(crate) active: ActiveRow,
    /// The fault-injected run.
    pub(crate) soak: SoakRow,
    /// What the run changed from the plan (counts capped by the descriptor
    /// limit).
    pub(crate) notes: Vec<String>,
}

/// A table whose rows are (header, cell) pairs, the headers taken from the
/// first row; columns `left` hold text.
fn pairs(rows: Vec<Vec<(&str, String)>>, left: &[usize]) -> Table {
    let headers: Vec<&str> = rows
        .first()
        .map_or(Vec::new(), |r| r.iter().map(|c| c.0).collect());
    let mut t = Table::new(&headers).align_left(left);
    for r in rows {
        t.push(r.into_iter().map(|c| c.1).collect());
    }
    t
}

impl ScaleReport {
    /// The three tables (idle, active, soak).
    fn tables(&self, markdown: bool) -> [Table; 3] {
        let verdict = |c: &Check| {
            if markdown {
                format!("**{}**", c.verdict())
            } else {
                c.verdict().to_owned()
            }
        };
        let idle = self.idle.iter().map(|r| {
            vec![
                ("idle sessions", r.sessions.to_string()),
                ("target RSS before MiB", num(r.target_rss_start_mib, 1)),
                ("with sessions MiB", num(r.target_rss_mib, 1)),
                ("target KiB/session", num(r.target_kib_per_session, 1)),
                ("initiator KiB/session", num(r.initiator_kib_per_session, 1)),
                ("opened/s", num(r.opened_per_s, 0)),
                ("target", r.target.target.clone()),
                ("", verdict(&r.target)),
            ]
        });
        let a = &self.active;
        let active = vec![
            ("active sessions", a.sessions.to_string()),
            ("window s", num(a.window_seconds, 1)),
            ("calls", a.calls.to_string()),
            ("ops/s", num(a.ops_per_s, 0)),
            ("min/session", a.min_calls.to_string()),
            ("mean", num(a.mean_calls, 1)),
            ("max", a.max_calls.to_string()),
            ("Jain's index", num(a.jain, 3)),
            ("target", a.target.target.clone()),
            ("", verdict(&a.target)),
        ];
        let s = &self.soak;
        let soak = vec![
            ("fault-injected run", "torture --mode log".to_owned()),
            ("s", num(s.samples.last().map_or(0.0, |l| l.seconds), 0)),
            ("operations", s.operations.to_string()),
            ("faults", s.faults.to_string()),
            ("samples", s.samples.len().to_string()),
            ("start MiB", num(s.start_mib, 1)),
            ("end MiB", num(s.end_mib, 1)),
            ("max MiB", num(s.max_mib, 1)),
            (
                "2nd-half growth MiB",
                format!("{:+.2}", s.second_half_growth_mib),
            ),
        ];
        [
            pairs(idle.collect(), &[6, 7]),
            pairs(vec![active], &[8, 9]),
            pairs(vec![soak], &[]),
        ]
    }

    /// The tables for the terminal.
    pub(crate) fn table(&self) -> String {
        let mut out: Vec<String> = self.tables(false).iter().map(Table::text).collect();
        out.extend(self.notes.iter().map(|n| format!("  note: {n}\n")));
        out.join("\n")
    }

    /// The Markdown report.
    pub(crate) fn markdown(&self, machine: &Machine) -> String {
        let mut md = String::from("# holdfast bench: scale\n\n");
        md.push_str(
            "Resident memory per idle session on one target, throughput and fairness with many \
             active sessions, and resident memory over a long fault-injected run, on \
             127.0.0.1.\n\n",
        );
        md.push_str(&machine.markdown(self.mode));
        for n in &self.notes {
            md.push_str(&format!("- **note**: {n}\n"));
        }
        let [idle, active, soak] = self.tables(true);
        md.push_str(&format!(
            "\n## Idle sessions\n\n{}\n## Active sessions\n\n{}\n## Memory over a fault-injected run\n\n{}",
            idle.markdown(),
            active.markdown(),
            soak.markdown()
        ));
        md.push_str(&format!(
            "\nRun: `{}`; the first {:.0} s are warm-up (**start** is the first sample after it).\n",
            self.soak.command, self.soak.warmup_seconds
        ));
        md.push_str(
            "\n![target RSS over the fault-injected run, and KiB per idle session](scale.svg)\n\n\
             ## How it is measured\n\n\
             - **idle**: `holdfast target --service log` runs as a child process, so its \
             resident memory (`VmRSS` in `/proc/PID/status`) is its own. After it settles, \
             the benchmark opens sessions to it, one `Initiator` each with default options, \
             each making one call (an increment) so the session is established; at most 200 \
             open at once. The counts are incremental: the larger includes the smaller. After \
             each step the target settles (two samples 200 ms apart within 0.5%); **target \
             KiB/session** is its growth since its start over the sessions open. Idle \
             sessions are not silent: with the default 500 ms keep-alive each initiator sends \
             a PING when it has sent nothing for that long. **initiator KiB/session** is the \
             benchmark process's own growth per session (indicative: it reuses memory freed \
             by earlier work).\n\
             - **active**: the sessions beyond the active count are dropped; each of the rest \
             calls back to back (queue depth 1). After a warm-up, calls completed in the \
             window are counted per session. Jain's index J = (Σx)² / (n·Σx²) over those \
             counts: 1 when every session got the same service, 1/n when one got it all.\n\
             - **fault-injected run**: `holdfast torture --mode log` (initiator, fault proxy \
             and an in-process target in one child process; eight workers incrementing a \
             counter and sending numbered one-way messages; two faults a second) with its \
             RSS sampled at a fixed interval. It must pass its own exactly-once checks, or \
             the benchmark fails. **2nd-half growth** is the last sample minus the first \
             sample of the second half: flat is 0.\n\n\
             ## Targets\n\n\
             From the benchmark issue; reported, not asserted: at most 16 KiB of target \
             resident memory per idle session (at each count), and Jain's index at least 0.9 \
             with the active sessions. The issue asks for memory over the fault-injected run \
             to be flat and sets no number: read the growth and the plot.\n",
        );
        md
    }
}
