//! The systemd integration: the unit files under contrib/ pass
//! `systemd-analyze verify`, and `holdfast target` sends READY=1 to
//! `NOTIFY_SOCKET` once its listener accepts connections, then STOPPING=1 on
//! SIGTERM (`Type=notify`).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("holdfast-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let dir = TempDir::new("units");
    let contrib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contrib");
    for unit in ["holdfast-target.service", "holdfast-nbd.service"] {
        let text = std::fs::read_to_string(contrib.join(unit)).expect("unit file");
        assert!(text.contains("Type=notify"), "{unit} is not Type=notify");
        // verify checks that ExecStart's program exists: point it at this build.
        let local = text.replace("/usr/local/bin/holdfast", BIN);
        let path = dir.0.join(unit);
        std::fs::write(&path, local).expect("write unit");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze runs (scripts/test installs Debian's systemd package)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Lines about units other than ours (the host's own) are not ours to fix.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(unit)).collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "{unit}: systemd-analyze verify failed ({}):\n{stderr}",
            out.status
        );
    }
}

#[test]
fn the_target_notifies_ready_after_binding_and_stopping_on_sigterm() {
    let dir = TempDir::new("notify");
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut child = Command::new(BIN)
        .args([
            "target",
            "--service",
            "log",
            "--listen",
            "127.0.0.1:0",
            "--json",
        ])
        .args(["--shutdown-up", "0s"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn holdfast");
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains(&format!("MAINPID={}", child.id())),
        "{ready:?}"
    );
    // Ready means the listener is bound: the address is known and accepts.
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the endpoint line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let addr: std::net::SocketAddr = v["endpoints"][0]
        .as_str()
        .expect("an endpoint")
        .trim_start_matches("tcp://")
        .parse()
        .expect("an address");
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("the listener accepts once READY=1 was sent");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let n = socket.recv(&mut buf).expect("STOPPING=1 within 20 s");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    let _ = child.wait();
}
