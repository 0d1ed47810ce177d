//! `holdfast status` against a running `holdfast target`, through the real
//! binary: the control socket is private (0600), `--json` prints the status
//! document, and the plain form is a readable summary.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
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

#[test]
fn status_reads_a_running_target_over_its_control_socket() {
    let dir = std::env::temp_dir().join(format!("holdfast-status-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket = dir.join("t1.sock");
    let mut child = Command::new(BIN)
        .args([
            "target",
            "--service",
            "log",
            "--listen",
            "127.0.0.1:0",
            "--json",
        ])
        .arg("--control")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn holdfast target");
    let stdout = child.stdout.take().expect("stdout");
    let _running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the endpoint line");
    assert!(line.contains("serving"), "{line}");
    // The socket is bound before the endpoint line is printed.
    let mode = std::fs::metadata(&socket)
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the control socket must be private");

    let out = Command::new(BIN)
        .args(["status", "--json", "--target"])
        .arg(&socket)
        .output()
        .expect("run holdfast status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    assert_eq!(doc["kind"], "target");
    assert_eq!(doc["service"], "the log service");
    assert!(
        doc["sessions"].as_array().is_some_and(Vec::is_empty),
        "{doc}"
    );
    assert!(doc["stats"]["connections"].is_u64(), "{doc}");

    let out = Command::new(BIN)
        .args(["status", "--target"])
        .arg(&socket)
        .output()
        .expect("run holdfast status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("holdfast target (pid"), "{text}");
    assert!(
        text.contains("0 attached, 0 detached, 0 expiring"),
        "{text}"
    );

    let missing = Command::new(BIN)
        .args(["status", "--target"])
        .arg(dir.join("nothing.sock"))
        .output()
        .expect("run holdfast status");
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("is the process running"), "{err}");
    std::thread::sleep(Duration::from_millis(10));
    let _ = std::fs::remove_dir_all(&dir);
}

mod support;

/// `holdfast status --nbd` against a running `holdfast nbd`: its export,
/// its session (connected, with counters) and the NBD requests in flight
/// (one held while the target is stopped with SIGSTOP).
#[test]
fn status_reads_a_running_export_over_its_control_socket() {
    let scratch = support::Scratch::new("status-nbd");
    let (target, target_addr) = support::start_target(&scratch.path("vol"), "1M", &[]);
    let socket = scratch.path("nbd.sock");
    let (_nbd, info) = support::start_nbd(
        &target_addr,
        &[
            "--listen",
            "127.0.0.1:0",
            "--control",
            socket.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(info["event"], "exporting", "{info}");
    let mut client = support::NbdClient::connect(&support::nbd_addr(&info));
    assert_eq!(client.write(0, &[1u8; 4096]), 0);
    let status = |plain: bool| {
        let mut cmd = Command::new(BIN);
        cmd.arg("status");
        if !plain {
            cmd.arg("--json");
        }
        let out = cmd.arg("--nbd").arg(&socket).output().expect("run status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let doc: serde_json::Value = serde_json::from_str(&status(false)).expect("JSON");
    assert_eq!(doc["kind"], "nbd", "{doc}");
    assert_eq!(doc["uri"], info["uri"], "{doc}");
    assert_eq!(doc["targets"][0], format!("tcp://{target_addr}"), "{doc}");
    assert_eq!(doc["size"], 1 << 20, "{doc}");
    assert_eq!(doc["requests_in_flight"], 0, "{doc}");
    assert_eq!(doc["sessions"][0]["connected"], true, "{doc}");
    assert!(doc["sessions"][0]["session"].is_string(), "{doc}");
    assert!(
        doc["sessions"][0]["stats"]["responses"].as_u64() >= Some(1),
        "{doc}"
    );
    let text = status(true);
    assert!(text.starts_with("holdfast nbd (pid"), "{text}");
    assert!(
        text.contains(&format!("session with tcp://{target_addr}: connected")),
        "{text}"
    );

    // A request the stopped target cannot answer stays in flight.
    target.signal("STOP");
    // Let the stop take hold before the request leaves.
    std::thread::sleep(Duration::from_millis(300));
    client.send_request(support::CMD_WRITE, 0, 4096, &[2u8; 4096]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let doc = loop {
        let doc: serde_json::Value = serde_json::from_str(&status(false)).expect("JSON");
        if doc["requests_in_flight"] == 1 || std::time::Instant::now() > deadline {
            break doc;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    target.signal("CONT");
    assert_eq!(doc["requests_in_flight"], 1, "{doc}");
    assert!(status(true).contains("NBD requests in flight"));
}
