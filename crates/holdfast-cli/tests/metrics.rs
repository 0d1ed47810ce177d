//! `--metrics` on a real `holdfast target`, scraped over HTTP during and
//! after a fault-injected `holdfast torture --mode log` run against it: the
//! commands and one-way messages the endpoint counts equal those the
//! torture history acknowledged, and the recoveries it counts match the
//! initiator's.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{free_addr, metric as get, nbd_addr, scrape, start_nbd, start_target, NbdClient};
use support::{Proc, Scratch, BIN};

#[test]
fn metrics_count_what_the_torture_history_acknowledged() {
    let metrics = free_addr();
    let mut target = Proc::spawn(&[
        "target",
        "--service",
        "log",
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--control",
        "none",
        "--metrics",
        &metrics,
    ]);
    let v = target.json_line(Duration::from_secs(20));
    let addr = v["endpoints"][0]
        .as_str()
        .expect("endpoint")
        .trim_start_matches("tcp://")
        .to_owned();

    let torture = Command::new(BIN)
        .args(["torture", "--mode", "log", "--target", &addr])
        .args([
            "--duration",
            "6s",
            "--faults",
            "6",
            "--seed",
            "5",
            "--workers",
            "4",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn holdfast torture");
    // During the run: the session is attached and commands are counted.
    std::thread::sleep(Duration::from_secs(3));
    let during = scrape(&metrics);
    assert!(
        get(
            &during,
            "holdfast_target_commands_total{outcome=\"executed\"}"
        ) > 0,
        "{during:?}"
    );
    assert!(during.contains_key("holdfast_target_sessions{state=\"attached\"}"));
    let out = torture.wait_with_output().expect("torture finishes");
    assert!(
        out.status.success(),
        "torture failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("torture JSON");
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    };
    assert_eq!(n("failed_operations"), 0, "{report}");

    // The exporter republishes every 0.5 s.
    std::thread::sleep(Duration::from_millis(1200));
    let after = scrape(&metrics);
    // Every increment plus the run's two queries executed exactly once.
    assert_eq!(
        get(
            &after,
            "holdfast_target_commands_total{outcome=\"executed\"}"
        ),
        n("increments_ok") + 2,
        "{report}"
    );
    assert_eq!(
        get(&after, "holdfast_target_messages_total"),
        n("messages_ok"),
        "{report}"
    );
    // Every recovery the initiator saw accepted was counted; the target may
    // count one more per connection lost right after its LOGIN_ACCEPT, and
    // never more than the initiator's reconnects.
    let recovered = get(
        &after,
        "holdfast_target_recoveries_total{kind=\"stateful\"}",
    );
    assert!(
        n("recoveries") > 0,
        "the faults caused no recovery: {report}"
    );
    assert!(
        recovered >= n("recoveries") && recovered <= n("reconnects"),
        "target counted {recovered} stateful recoveries; torture saw {} of {} reconnects",
        n("recoveries"),
        n("reconnects")
    );
    assert_eq!(
        get(&after, "holdfast_target_logins_total{outcome=\"new\"}"),
        1
    );
    assert_eq!(
        get(
            &after,
            "holdfast_target_sessions_ended_total{cause=\"closed\"}"
        ),
        1
    );
}

#[test]
fn nbd_requests_and_backend_io_are_counted_with_their_latency() {
    let dir = Scratch::new("metrics-nbd");
    let (target_metrics, nbd_metrics) = (free_addr(), free_addr());
    let volume = dir.path("v.img");
    let (_target, addr) = start_target(&volume, "16M", &["--metrics", &target_metrics]);
    let (_nbd, info) = start_nbd(
        &addr,
        &["--listen", "127.0.0.1:0", "--metrics", &nbd_metrics],
    );
    let mut client = NbdClient::connect(&nbd_addr(&info));
    for i in 0..5u64 {
        assert_eq!(client.write(i * 4096, &[0xab; 4096]), 0);
    }
    for i in 0..3u64 {
        client.read(i * 4096, 4096).expect("read");
    }
    assert_eq!(client.flush(), 0);
    // Beyond the end of the volume: refused before it reaches the device.
    assert_ne!(client.write(16 << 20, &[0; 4096]), 0);
    std::thread::sleep(Duration::from_millis(300));

    let nbd = scrape(&nbd_metrics);
    let requests = |ty: &str, outcome: &str| {
        get(
            &nbd,
            &format!("holdfast_nbd_requests_total{{type=\"{ty}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(requests("write", "ok"), 5);
    assert_eq!(requests("read", "ok"), 3);
    assert_eq!(requests("flush", "ok"), 1);
    assert_eq!(requests("write", "refused"), 1);
    assert_eq!(
        get(&nbd, "holdfast_nbd_request_seconds_count{type=\"write\"}"),
        5
    );
    assert_eq!(
        get(&nbd, "holdfast_nbd_request_seconds_count{type=\"read\"}"),
        3
    );

    let target = scrape(&target_metrics);
    assert_eq!(
        get(&target, "holdfast_backend_io_seconds_count{op=\"write\"}"),
        5
    );
    assert_eq!(
        get(&target, "holdfast_backend_io_seconds_count{op=\"read\"}"),
        3
    );
    assert_eq!(
        get(&target, "holdfast_backend_io_seconds_count{op=\"flush\"}"),
        1
    );
    // The export's session: INFO, 5 writes, 3 reads and a flush answered.
    std::thread::sleep(Duration::from_millis(700));
    let nbd = scrape(&nbd_metrics);
    assert_eq!(
        get(&nbd, "holdfast_initiator_calls_total{outcome=\"answered\"}"),
        10
    );
}
