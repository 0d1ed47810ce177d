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
