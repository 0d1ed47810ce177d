//! fio with crc32c verification through `holdfast nbd` while the block
//! target (`holdfast target --state-dir`) is killed with SIGKILL and started
//! again every few seconds (issue 16): zero verify errors, zero EIO, and the
//! export's session survives every crash statefully (no stateless
//! recovery, no failed call). Without the state dir every restart is a new
//! incarnation: the export's writes are retry-safe, so fio would still
//! pass, but the session would be lost each time, which the export's
//! counters show.

mod durable_support;
mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_support::CrashTarget;
use support::{Proc, Scratch};

/// True if fio is installed; panics under CI if not.
fn have_fio() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v fio"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "fio is missing; scripts/test installs it"
        );
        eprintln!("skipping: fio is not installed (scripts/test installs it)");
    }
    found
}

/// fio: 4 KiB random writes at QD 16 for `seconds`, then a crc32c verify
/// pass over everything written; panics on any error.
fn fio_verify(uri: &str, seconds: u32) {
    let mut child = Command::new("fio")
        .args([
            "--name=holdfast-durable",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=32m",
            &format!("--runtime={seconds}"),
            "--time_based",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio");
    let limit = Duration::from_secs(u64::from(seconds) + 120);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("fio did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("fio output");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "fio failed ({status}):\n{text}\n{err}");
    let json = &text[text.find('{').unwrap_or(0)..];
    let report: serde_json::Value = serde_json::from_str(json).expect("fio JSON");
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "fio reported an error: {job}");
    let written = job["write"]["io_bytes"].as_u64().unwrap_or(0);
    let verified = job["read"]["io_bytes"].as_u64().unwrap_or(0);
    eprintln!("fio: {written} bytes written, {verified} bytes read back and verified");
    assert!(written > 0 && verified > 0, "fio did too little: {job}");
}

#[test]
fn durable_block_target_killed_9_during_fio_verify_loses_nothing() {
    if !have_fio() {
        return;
    }
    let dir = Scratch::new("durable-fio");
    let volume = dir.path("volume.img");
    let state = dir.path("state");
    let mut target = CrashTarget::start(&[
        "--volume",
        volume.to_str().expect("utf-8"),
        "--size",
        "64M",
        "--state-dir",
        state.to_str().expect("utf-8"),
    ]);
    let mut export = Proc::spawn(&[
        "nbd",
        "--target",
        &target.addr,
        "--listen",
        "127.0.0.1:0",
        "--detection",
        "500ms",
        "--io-timeout",
        "60s",
        "--json",
    ]);
    let info = export.json_line(Duration::from_secs(20));
    let uri = info["uri"].as_str().expect("uri").to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut kills = 0u64;
            let mut restarts = Vec::new();
            // Every 2.5 s while fio runs (its write phase and its verify
            // pass), at most 12 times.
            while kills < 12 {
                let wake = Instant::now() + Duration::from_millis(2500);
                while Instant::now() < wake && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                target.kill9();
                restarts.push(target.restart());
                kills += 1;
            }
            (target, kills, restarts)
        })
    };
    fio_verify(&uri, 10);
    stop.store(true, Ordering::Relaxed);
    let (_target, kills, restarts) = killer.join().expect("killer");
    assert!(kills >= 3, "only {kills} kills happened while fio ran");
    export.signal("INT");
    let stopped = loop {
        let line = export
            .line(Duration::from_secs(20))
            .expect("the export printed its stopped line within 20 s");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["event"] == "stopped" {
            break v;
        }
    };
    eprintln!("{kills} kill -9 + restarts (restart to serving: {restarts:?}); export: {stopped}");
    assert_eq!(stopped["calls_failed"], 0, "{stopped}");
    assert_eq!(
        stopped["stateless_recoveries"], 0,
        "the session did not survive a crash: {stopped}"
    );
    assert!(
        stopped["stateful_recoveries"].as_u64() >= Some(kills),
        "fewer stateful recoveries than kills: {stopped}"
    );
    assert_eq!(stopped["sessions"], 1, "{stopped}");
}
