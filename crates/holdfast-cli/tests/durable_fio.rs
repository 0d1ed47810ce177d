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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_support::CrashTarget;
use support::fio::{fio_verify, have_fio};
use support::{Proc, Scratch};

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
    fio_verify("holdfast-durable", &uri, 10);
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
