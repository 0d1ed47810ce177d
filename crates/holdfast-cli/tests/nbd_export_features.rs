//! Issue 17 item 4 with the real binaries: `holdfast nbd --read-only`
//! refuses writes with EPERM; over a `holdfast target --direct`, the
//! export announces a 4096-byte minimum block size (qemu-io's unaligned
//! writes work), `qemu-io -c discard` frees the file's space and
//! `nbdinfo --map` shows the holes.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{nbd_addr, start_nbd, start_target, NbdClient, Scratch};

const MIB: u64 = 1 << 20;

/// True if `tool` is installed; panics under CI if not.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing; scripts/test installs it (apt-get install qemu-utils libnbd-bin)"
        );
        eprintln!("skipping: {tool} is not installed (scripts/test installs it)");
    }
    found
}

/// Runs a client within 60 s; returns (success, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {program}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Bytes the file occupies on disk (what `du` shows).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

#[test]
fn a_read_only_export_refuses_writes_with_eperm() {
    let dir = Scratch::new("nbd-read-only");
    let (_target, addr) = start_target(&dir.path("volume.img"), "4M", &[]);
    let (_nbd, info) = start_nbd(&addr, &["--listen", "127.0.0.1:0", "--read-only"]);
    let mut client = NbdClient::connect(&nbd_addr(&info));
    assert_eq!(client.write(0, b"nope"), 1, "EPERM");
    assert_eq!(client.read(0, 4), Ok(vec![0; 4]));
    // Without the switch, the same target takes the write.
    let (_nbd, info) = start_nbd(&addr, &["--listen", "127.0.0.1:0"]);
    let mut client = NbdClient::connect(&nbd_addr(&info));
    assert_eq!(client.write(0, b"yes!"), 0);
}

#[test]
fn over_a_direct_target_unaligned_writes_work_discard_frees_space_and_holes_show() {
    if !have("qemu-io") || !have("nbdinfo") {
        return;
    }
    let dir = Scratch::new("nbd-direct");
    let volume = dir.path("volume.img");
    let (_target, addr) = start_target(&volume, "16M", &["--direct"]);
    let (_nbd, info) = start_nbd(&addr, &["--listen", "127.0.0.1:0"]);
    let uri = info["uri"].as_str().expect("uri").to_owned();
    let qemu_io = |commands: &[&str]| {
        let mut args = vec!["-f", "raw", uri.as_str()];
        for c in commands {
            args.extend(["-c", c]);
        }
        let (ok, out) = run("qemu-io", &args);
        assert!(
            ok && !out.contains("failed") && !out.contains("Pattern verification"),
            "qemu-io {commands:?}:\n{out}"
        );
    };
    qemu_io(&[
        "write -P 0xab 0 8M",
        "write -P 0x11 100 1000",
        "read -P 0x11 100 1000",
        "flush",
    ]);
    let before = allocated(&volume);
    assert!(before >= 8 * MIB, "{before}");
    qemu_io(&["discard 0 4M", "read -P 0 0 4M", "flush"]);
    let after = allocated(&volume);
    assert!(
        after <= before - 4 * MIB,
        "discard did not free space: {before} -> {after} bytes"
    );
    eprintln!("du of the volume: {before} -> {after} bytes after discarding 4 MiB");
    let (ok, map) = run("nbdinfo", &["--map", &uri]);
    assert!(ok, "{map}");
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["0", "4194304", "3", "hole,zero"],
            vec!["4194304", "4194304", "0", "data"],
            vec!["8388608", "8388608", "3", "hole,zero"],
        ],
        "nbdinfo --map:\n{map}"
    );
}
