//! `holdfast bench all` end to end, shrunk to a smoke run: the real binary
//! writes every report and plot, and its JSON has every row. It checks that
//! the benchmark produces its output, not how fast anything is.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("holdfast-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads `dir/name` and checks it is not empty.
fn non_empty(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
    assert!(!text.trim().is_empty(), "{} is empty", path.display());
    text
}

#[test]
fn bench_all_writes_every_report_plot_and_row() {
    let scratch = Scratch::new("bench");
    // The results directory does not exist yet: the bench creates it.
    let dir = scratch.0.join("results");
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["bench", "all", "--quick", "--smoke", "--json", "--results"])
        .arg(&dir)
        .output()
        .expect("run holdfast bench");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "holdfast bench failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    eprintln!("holdfast bench all --quick --smoke took {took:?}");
    assert!(
        took < Duration::from_secs(120),
        "the smoke run took {took:?}"
    );

    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}):\n{stdout}"));
    assert_eq!(json["mode"], "smoke");

    // Overhead: every payload at every depth, both sides measured.
    let rows = json["overhead"]["rows"].as_array().expect("overhead rows");
    let mut cells = Vec::new();
    for r in rows {
        cells.push((
            r["payload_bytes"].as_u64().expect("payload_bytes"),
            r["depth"].as_u64().expect("depth"),
        ));
        for side in ["holdfast", "baseline"] {
            for field in ["ops", "ops_per_s", "mib_per_s", "p50_us", "p99_us"] {
                assert!(
                    r[side][field].is_number(),
                    "overhead row {r} lacks {side}.{field}"
                );
            }
            assert!(
                r[side]["ops"].as_u64().expect("ops") > 0,
                "no {side} request completed in {r}"
            );
        }
        assert!(r["throughput_ratio"].is_number() && r["p50_delta_us"].is_number());
    }
    let mut expected = Vec::new();
    for payload in [64, 4096, 65536, 1 << 20] {
        for depth in [1, 32] {
            expected.push((payload, depth));
        }
    }
    assert_eq!(cells, expected, "overhead rows");
    let targets: usize = rows
        .iter()
        .map(|r| r["targets"].as_array().expect("targets").len())
        .sum();
    assert_eq!(targets, 7, "the issue's overhead targets apply to 7 cells");

    // Recovery: every fault, each with its trials, and the documented rows.
    let rows = json["recovery"]["rows"].as_array().expect("recovery rows");
    let faults: Vec<&str> = rows
        .iter()
        .map(|r| r["fault"].as_str().expect("fault"))
        .collect();
    assert_eq!(
        faults,
        [
            "reset",
            "blackhole, bound 100 ms",
            "blackhole, bound 500 ms",
            "blackhole, bound 2 s",
            "graceful restart"
        ]
    );
    for r in rows {
        let trials = r["trials"].as_u64().expect("trials");
        assert!(trials > 0);
        assert_eq!(
            r["samples_ms"].as_array().expect("samples").len() as u64,
            trials
        );
        for field in ["p50_ms", "p99_ms", "max_ms"] {
            assert!(
                r[field].as_f64().expect(field) > 0.0,
                "recovery row {r} has no {field}"
            );
        }
    }
    let documented = json["recovery"]["documented"]
        .as_array()
        .expect("documented rows");
    assert_eq!(documented.len(), 2);

    // The files.
    let overhead = non_empty(&dir, "overhead.md");
    assert!(overhead.contains("| 1 MiB | 32 |"), "{overhead}");
    assert!(overhead.contains("overhead.svg"));
    let recovery = non_empty(&dir, "recovery.md");
    assert!(recovery.contains("| graceful restart |"), "{recovery}");
    assert!(recovery.contains("documented, not measured"));
    for plot in ["overhead.svg", "recovery.svg"] {
        let svg = non_empty(&dir, plot);
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{plot}");
    }
    let index = non_empty(&dir, "README.md");
    for link in ["overhead.md", "recovery.md", "overhead.svg", "recovery.svg"] {
        assert!(index.contains(link), "README.md does not link {link}");
    }
    check_block(&json, &dir, &index);
    check_scale(&json, &dir, &index);
    check_failover(&json, &dir, &index);
    check_durable(&json, &dir, &index);
    check_messages(&json, &dir);
    assert!(
        index.contains("messages.md"),
        "README.md does not link messages.md"
    );
}

/// The durable scenario: every payload at both depths with both sides
/// measured, the fsync baseline (when fio is installed), the recovery rows
/// of the smoke run, and the report linked from the index.
fn check_durable(json: &serde_json::Value, dir: &std::path::Path, index: &str) {
    let durable = &json["durable"];
    let rows = durable["rows"].as_array().expect("durable rows");
    let cells: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["payload_bytes"].as_u64().expect("payload_bytes"),
                r["depth"].as_u64().expect("depth"),
            )
        })
        .collect();
    assert_eq!(cells, [(64, 1), (64, 32), (4096, 1), (4096, 32)]);
    for r in rows {
        for side in ["memory", "durable"] {
            assert!(
                r[side]["ops"].as_u64().expect("ops") > 0,
                "no {side} command completed in {r}"
            );
            assert!(r[side]["p99_us"].as_f64().expect("p99") > 0.0, "{r}");
        }
        assert!(r["ratio"].as_f64().expect("ratio") > 0.0, "{r}");
    }
    if durable["fsync"].is_object() {
        assert!(
            durable["fsync"]["fsyncs_per_s"]
                .as_f64()
                .expect("fsync rate")
                > 0.0
        );
        for r in rows {
            let bound = r["fsync_bound_ops_per_s"].as_f64().expect("fsync bound");
            assert!(bound > 0.0, "{r}");
            assert!(r["of_bound"].as_f64().expect("of bound") > 0.0, "{r}");
        }
    }
    let recovery = durable["recovery"]
        .as_array()
        .expect("durable recovery rows");
    let sessions: Vec<u64> = recovery
        .iter()
        .map(|r| r["sessions"].as_u64().expect("sessions"))
        .collect();
    assert_eq!(sessions, [1, 10], "the smoke run's retained session counts");
    for r in recovery {
        assert!(
            r["to_first_command_p50_ms"].as_f64().expect("p50") > 0.0,
            "{r}"
        );
    }
    let md = non_empty(dir, "durable.md");
    assert!(
        md.contains("| 4 KiB | 32 |") && md.contains("kill -9"),
        "{md}"
    );
    assert!(
        index.contains("durable.md"),
        "README.md does not link durable.md"
    );
}

/// `holdfast bench messages` alone (no external tools): its rows and
/// report.
#[test]
fn bench_messages_reports_pipelined_sends_against_calls() {
    let scratch = Scratch::new("bench-messages");
    let dir = scratch.0.join("results");
    let out = Command::new(BIN)
        .args(["bench", "messages", "--smoke", "--json", "--results"])
        .arg(&dir)
        .output()
        .expect("run holdfast bench messages");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "holdfast bench messages failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}):\n{stdout}"));
    check_messages(&json, &dir);
}

/// The messages scenario: pipelined sends from one task, calls and awaited
/// sends from 1 and 8 tasks, each measured, the ratio and its target, and
/// the report.
fn check_messages(json: &serde_json::Value, dir: &std::path::Path) {
    let m = &json["messages"];
    let rows = m["rows"].as_array().expect("messages rows");
    let ways: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            assert!(
                r["ops"].as_u64().expect("ops") > 0,
                "nothing completed: {r}"
            );
            assert!(r["ops_per_s"].as_f64().expect("rate") > 0.0, "{r}");
            (
                r["way"].as_str().expect("way").to_owned(),
                r["tasks"].as_u64().expect("tasks"),
            )
        })
        .collect();
    let want = [
        ("pipelined_send", 1),
        ("call", 1),
        ("call", 8),
        ("awaited_send", 1),
        ("awaited_send", 8),
    ];
    let want: Vec<(String, u64)> = want.iter().map(|(w, t)| ((*w).to_owned(), *t)).collect();
    assert_eq!(ways, want);
    assert!(m["ratio"].as_f64().expect("ratio") > 0.0);
    assert!(m["ratio_8_tasks"].as_f64().expect("ratio") > 0.0);
    assert_eq!(m["targets"].as_array().map(Vec::len), Some(1));
    let md = non_empty(dir, "messages.md");
    assert!(md.contains("send_queued (pipelined)"), "{md}");
    assert!(md.contains("x the calls per second"), "{md}");
}

/// The failover scenario: the fence-confirmed, quiesce-wait and single-path
/// rows with their trials, every fence of the first row confirmed, the
/// reference rows, and the report linked from the index.
fn check_failover(json: &serde_json::Value, dir: &std::path::Path, index: &str) {
    let rows = json["failover"]["rows"].as_array().expect("failover rows");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in rows {
        let trials = r["trials"].as_u64().expect("trials");
        assert_eq!(
            r["samples_ms"].as_array().expect("samples").len() as u64,
            trials
        );
        assert!(r["p50_ms"].as_f64().expect("p50") > 0.0, "{r}");
    }
    let fences = &rows[0]["fences"];
    assert_eq!(fences[0], fences[1], "every fence confirmed: {}", rows[0]);
    assert_eq!(rows[1]["fences"][0], 0, "no peer links, no confirmation");
    assert_eq!(
        json["failover"]["references"].as_array().map(Vec::len),
        Some(2)
    );
    let md = non_empty(dir, "failover.md");
    assert!(
        md.contains("fence confirmed") && md.contains("Documented, not"),
        "{md}"
    );
    assert!(
        index.contains("failover.md"),
        "README.md does not link failover.md"
    );
}

/// The block scenario: every job on every system (CI installs fio,
/// qemu-nbd and nbdkit), each with positive figures and the targets
/// where they apply; its report and plot, linked from the index.
fn check_block(json: &serde_json::Value, dir: &std::path::Path, index: &str) {
    let block = &json["block"];
    let skipped = block["skipped"].as_array().expect("skipped");
    assert!(skipped.is_empty(), "systems skipped: {skipped:?}");
    let rows = block["rows"].as_array().expect("block rows");
    let jobs = [
        "4 KiB randread QD 1",
        "4 KiB randread QD 32",
        "4 KiB randwrite QD 1",
        "4 KiB randwrite QD 32",
        "1 MiB read QD 8",
        "1 MiB write QD 8",
    ];
    let systems = [
        "local file",
        "qemu-nbd",
        "nbdkit file",
        "holdfast nbd",
        "holdfast native",
    ];
    let mut want = Vec::new();
    for job in jobs {
        for system in systems {
            want.push(format!("{job} / {system}"));
            // The cost of --metrics is measured where per-request costs show.
            if system == "holdfast nbd" && job.starts_with("4 KiB") && job.ends_with("QD 32") {
                want.push(format!("{job} / holdfast nbd +metrics"));
            }
        }
    }
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} / {}",
                r["workload"].as_str().expect("workload"),
                r["system"].as_str().expect("system")
            )
        })
        .collect();
    assert_eq!(got, want, "block rows");
    for r in rows
        .iter()
        .filter(|r| r["system"] == "holdfast nbd +metrics")
    {
        let target = r["targets"][0]["target"].as_str().unwrap_or_default();
        assert!(target.starts_with("IOPS >= 0.99x without --metrics"), "{r}");
    }
    for r in rows {
        for field in ["iops", "mib_per_s", "p50_us", "p99_us", "cpu_us_per_io"] {
            let v = r[field].as_f64().unwrap_or(f64::NAN);
            assert!(v > 0.0, "block row {r} has no positive {field}");
        }
        assert!(r["vs_qemu_nbd"].as_f64().expect("vs_qemu_nbd") > 0.0);
        assert!(r["vs_local"].as_f64().expect("vs_local") > 0.0);
    }
    let targets: usize = rows
        .iter()
        .map(|r| r["targets"].as_array().expect("targets").len())
        .sum();
    // holdfast nbd: one per job (6); native: 4 KiB randread QD 32 and the
    // two 1 MiB jobs (3); with --metrics: against holdfast nbd without
    // them, on two jobs (2).
    assert_eq!(targets, 11, "the issue's block targets");

    let md = non_empty(dir, "block.md");
    assert!(
        md.contains("| 4 KiB randread QD 32 | holdfast native |"),
        "{md}"
    );
    assert!(md.contains("block.svg"));
    let svg = non_empty(dir, "block.svg");
    assert!(svg.contains("<svg") && svg.contains("</svg>"));
    for link in ["block.md", "block.svg"] {
        assert!(index.contains(link), "README.md does not link {link}");
    }
}

/// The scale scenario: both idle counts with positive per-session memory,
/// the active sessions with a Jain index in (0, 1], the fault-injected run's
/// RSS samples; its report and plot, linked from the index.
fn check_scale(json: &serde_json::Value, dir: &std::path::Path, index: &str) {
    let scale = &json["scale"];
    let idle = scale["idle"].as_array().expect("scale idle rows");
    let counts: Vec<u64> = idle
        .iter()
        .map(|r| r["sessions"].as_u64().expect("sessions"))
        .collect();
    assert_eq!(counts, [100, 300], "the smoke run's idle session counts");
    for r in idle {
        for field in [
            "target_rss_start_mib",
            "target_rss_mib",
            "target_kib_per_session",
            "opened_per_s",
        ] {
            let v = r[field].as_f64().unwrap_or(f64::NAN);
            assert!(v > 0.0, "scale idle row {r} has no positive {field}");
        }
        assert!(r["initiator_kib_per_session"].is_number(), "{r}");
        assert!(r["target"]["met"].is_boolean(), "{r}");
    }
    let active = &scale["active"];
    assert_eq!(active["sessions"].as_u64(), Some(50), "{active}");
    let jain = active["jain"].as_f64().expect("jain");
    assert!(jain > 0.0 && jain <= 1.0, "Jain's index {jain}");
    for field in ["calls", "min_calls", "max_calls"] {
        assert!(active[field].as_u64().expect(field) > 0, "{active}");
    }
    assert!(active["ops_per_s"].as_f64().expect("ops_per_s") > 0.0);
    let soak = &scale["soak"];
    assert!(
        soak["operations"].as_u64().expect("operations") > 0,
        "{soak}"
    );
    let samples = soak["samples"].as_array().expect("soak samples");
    assert!(samples.len() >= 3, "{soak}");
    for field in ["start_mib", "end_mib", "max_mib"] {
        assert!(soak[field].as_f64().expect(field) > 0.0, "{soak}");
    }
    assert!(soak["second_half_growth_mib"].is_number());

    let md = non_empty(dir, "scale.md");
    assert!(md.contains("| 300 |") && md.contains("Jain"), "{md}");
    assert!(md.contains("scale.svg"));
    let svg = non_empty(dir, "scale.svg");
    assert!(svg.contains("<svg") && svg.contains("</svg>"));
    for link in ["scale.md", "scale.svg"] {
        assert!(index.contains(link), "README.md does not link {link}");
    }
}

/// `bench block --metrics-only`: a pair of runs per job and round, each
/// job's cost from its pairs (a median, the range, no 95% interval from
/// fewer than 6), in the JSON, the "+metrics" rows' targets and the report.
#[test]
fn metrics_only_pairs_each_round_and_reports_the_ratios() {
    let scratch = Scratch::new("bench-metrics-only");
    let dir = scratch.0.join("results");
    let out = Command::new(BIN)
        .args([
            "bench",
            "block",
            "--metrics-only",
            "--rounds",
            "2",
            "--smoke",
            "--json",
            "--results",
        ])
        .arg(&dir)
        .output()
        .expect("run holdfast bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "holdfast bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let costs = json["block"]["metrics_cost"]
        .as_array()
        .expect("metrics_cost");
    let jobs: Vec<&str> = costs
        .iter()
        .map(|c| c["workload"].as_str().expect("workload"))
        .collect();
    assert_eq!(jobs, ["4 KiB randread QD 32", "4 KiB randwrite QD 32"]);
    for c in costs {
        assert_eq!(c["pairs"], 2, "{c}");
        for spread in ["iops_ratio", "cpu_ratio"] {
            let s = &c[spread];
            let (min, median, max) = (
                s["min"].as_f64().expect("min"),
                s["median"].as_f64().expect("median"),
                s["max"].as_f64().expect("max"),
            );
            assert!(0.0 < min && min <= median && median <= max, "{c}");
            assert!(s["ci95"].is_null(), "no 95% interval from 2 pairs: {c}");
        }
    }
    let rows = json["block"]["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "each system's median run per job: {rows:?}");
    for r in rows
        .iter()
        .filter(|r| r["system"] == "holdfast nbd +metrics")
    {
        let t = r["targets"][0]["target"].as_str().unwrap_or_default();
        assert!(t.contains("median of 2 pairs"), "{r}");
    }
    let md = non_empty(&dir, "block.md");
    assert!(md.contains("## The cost of --metrics"), "{md}");
}
