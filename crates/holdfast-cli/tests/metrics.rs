//! `--metrics` on a real `holdfast target`, scraped over HTTP during and
//! after a fault-injected `holdfast torture --mode log` run against it: the
//! commands and one-way messages the endpoint counts equal those the
//! torture history acknowledged, and the recoveries it counts match the
//! initiator's.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET /metrics`, parsed into `name{labels}` → value.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, name: &str) -> u64 {
    m.get(name)
        .copied()
        .unwrap_or_else(|| panic!("{name} missing from /metrics: {m:?}")) as u64
}

#[test]
fn metrics_count_what_the_torture_history_acknowledged() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut child = Command::new(BIN)
        .args([
            "target",
            "--service",
            "log",
            "--listen",
            "127.0.0.1:0",
            "--json",
        ])
        .args(["--control", "none", "--metrics", &metrics.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn holdfast target");
    let stdout = child.stdout.take().expect("stdout");
    let _target = Running(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("endpoint line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let target = v["endpoints"][0]
        .as_str()
        .expect("endpoint")
        .trim_start_matches("tcp://")
        .to_owned();

    let torture = Command::new(BIN)
        .args(["torture", "--mode", "log", "--target", &target])
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
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn holdfast torture");
    // During the run: the session is attached and commands are counted.
    std::thread::sleep(Duration::from_secs(3));
    let during = scrape(metrics);
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
    let after = scrape(metrics);
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
