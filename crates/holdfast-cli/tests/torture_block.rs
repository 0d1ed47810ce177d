//! The block torture with its second session (issue 19, "Done when"):
//! another initiator and volume on the same target write the first
//! session's blocks through an NBD server with a short io-timeout, while
//! that session's path is blackholed for longer than the io-timeout now and
//! then. The shared history checker must find nothing: no read returns a
//! value no write could have left there, and no write answered with an
//! error is seen after a later acknowledged write. Bounded: 20 s of load.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// Runs `holdfast torture ARGS --json` and returns its report.
fn torture(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("torture")
        .args(args)
        .arg("--json")
        .output()
        .expect("run torture");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "torture {args:?} failed ({}):\n{text}",
        out.status,
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("torture JSON: {e}\n{text}"))
}

#[test]
fn torture_block_mode_with_a_second_session_and_io_timeouts_runs_clean() {
    let v = torture(&["--duration", "20s", "--seed", "12", "--io-timeout", "1s"]);
    for key in ["lost", "corrupt", "failed_operations", "duplicated"] {
        assert_eq!(v[key], 0, "{key}: {v}");
    }
    assert!(
        v["faults"]["io-timeout"].as_u64() >= Some(2),
        "the second session's path was blackholed past its io-timeout: {v}"
    );
    assert!(v["second_session_operations"].as_u64() > Some(500), "{v}");
    eprintln!(
        "second session: {} operations, {} answered with an error",
        v["second_session_operations"], v["second_session_errors"]
    );
}

#[test]
fn the_second_session_alone_overlapping_the_first_runs_clean() {
    // Overlapping writers, the usual faults, no io-timeouts: the checker
    // must accept every legitimate interleaving (it cannot pass by being
    // blind: the test above fails on code that lets a failed write land).
    let v = torture(&["--duration", "10s", "--seed", "7", "--no-io-timeout-faults"]);
    for key in ["lost", "corrupt", "failed_operations", "duplicated"] {
        assert_eq!(v[key], 0, "{key}: {v}");
    }
    assert!(v["faults"]["io-timeout"].is_null(), "{v}");
    assert!(v["second_session_operations"].as_u64() > Some(500), "{v}");
}

#[test]
fn fence_torture_over_two_nodes_with_path_faults_runs_clean() {
    // Issue 15: two in-process nodes serve one volume file, the workload
    // runs over a path group, and every third fault takes a node's path
    // down long enough for a failover (fenced through the peer link).
    // Bounded: 15 s of load.
    let v = torture(&[
        "--nodes",
        "2",
        "--duration",
        "15s",
        "--seed",
        "5",
        "--faults",
        "9",
    ]);
    for key in ["lost", "corrupt", "failed_operations"] {
        assert_eq!(v[key], 0, "{key}: {v}");
    }
    assert!(v["faults"]["path-down"].as_u64() >= Some(3), "{v}");
    assert!(v["failovers"].as_u64() >= Some(2), "{v}");
    assert!(v["operations"].as_u64() > Some(1000), "{v}");
    eprintln!(
        "two nodes: {} operations, {} failovers, {} fences confirmed, {} commands moved; {}",
        v["operations"], v["failovers"], v["fences_confirmed"], v["commands_moved"], v["paths"]
    );
}
