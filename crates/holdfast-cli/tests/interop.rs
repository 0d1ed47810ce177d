//! Real clients against the real binary: `holdfast target` serves a temporary
//! volume, `holdfast nbd` exports it, and qemu-img, nbdcopy, qemu-io and fio
//! read and write through it, once with a clean network and once while the
//! connection between `nbd` and `target` is reset every second. Also the
//! zero-setup demo, shortened.
//!
//! The clients come from Debian packages that `scripts/test` installs. When
//! one is missing, the test fails under CI (`CI` set) and is skipped with a
//! note otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast::chaos::{Fault, Proxy};

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

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
            "{tool} is missing; scripts/test installs it (apt-get install qemu-utils fio libnbd-bin)"
        );
        eprintln!("skipping: {tool} is not installed (scripts/test installs it)");
    }
    found
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("holdfast-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `holdfast ARGS --json` and returns it with its first JSON line.
fn start(args: &[&str]) -> (Running, serde_json::Value) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--json")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn holdfast");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("holdfast {args:?} printed nothing within 20 s"));
    let value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("holdfast {args:?} printed {line:?}: {e}"));
    (running, value)
}

/// Runs a client command with a time limit; panics with its output on failure.
fn run(program: &str, args: &[&str], limit: Duration) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {program}: {e}"));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(
                status.success(),
                "{program} {args:?} failed ({status}):\n{out}\n{err}"
            );
            return out;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `len` pseudo-random bytes to `path`.
fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&buf))
        .expect("write random file");
}

/// A target, optionally a fault proxy in front of it, and an NBD export.
struct Stack {
    _target: Running,
    _nbd: Running,
    uri: String,
    proxy: Option<Arc<Proxy>>,
    runtime: tokio::runtime::Runtime,
}

impl Stack {
    fn start(volume: &Path, size: &str, through_proxy: bool) -> Stack {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let volume = volume.to_str().expect("utf-8 path");
        let (target, info) = start(&[
            "target",
            "--volume",
            volume,
            "--size",
            size,
            "--listen",
            "127.0.0.1:0",
        ]);
        let addr = info["endpoints"][0]
            .as_str()
            .expect("endpoint")
            .trim_start_matches("tcp://")
            .to_owned();
        let proxy = through_proxy.then(|| {
            let upstream = addr.parse().expect("target address");
            Arc::new(
                runtime
                    .block_on(Proxy::start(upstream))
                    .expect("start the fault proxy"),
            )
        });
        let via = proxy
            .as_ref()
            .map_or(addr.clone(), |p| p.addr().to_string());
        let (nbd, info) = start(&[
            "nbd",
            "--target",
            &via,
            "--listen",
            "127.0.0.1:0",
            "--detection",
            "500ms",
        ]);
        let uri = info["uri"].as_str().expect("uri").to_owned();
        Stack {
            _target: target,
            _nbd: nbd,
            uri,
            proxy,
            runtime,
        }
    }

    /// Resets the nbd-target connection every second until dropped.
    fn reset_every_second(&self) -> ResetLoop {
        let proxy = self.proxy.clone().expect("a stack with a proxy");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = self.runtime.spawn(async move {
            let mut resets = 0u64;
            while !flag.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if proxy.inject(Fault::Reset) > 0 {
                    resets += 1;
                }
            }
            resets
        });
        ResetLoop { stop, task }
    }
}

struct ResetLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl ResetLoop {
    fn finish(self, runtime: &tokio::runtime::Runtime) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        runtime.block_on(self.task).expect("reset loop")
    }
}

#[test]
fn qemu_img_and_nbdcopy_round_trip_a_64_mib_image() {
    if !have("qemu-img") || !have("nbdcopy") {
        return;
    }
    let dir = Scratch::new("convert");
    let source = dir.path("source.img");
    random_file(&source, 64 << 20, 42);
    let stack = Stack::start(&dir.path("volume.img"), "64M", false);
    let src = source.to_str().expect("path");
    let limit = Duration::from_secs(120);

    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src, &stack.uri],
        limit,
    );
    let back = dir.path("back.img");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &stack.uri,
            back.to_str().expect("path"),
        ],
        limit,
    );
    assert!(
        std::fs::read(&source).expect("source") == std::fs::read(&back).expect("back"),
        "qemu-img: the image read back differs from the one written"
    );
    let info = run("qemu-img", &["info", "--output=json", &stack.uri], limit);
    assert!(info.contains("67108864"), "qemu-img info: {info}");

    // nbdcopy: a different image in, then out again.
    let second = dir.path("second.img");
    random_file(&second, 64 << 20, 4242);
    run(
        "nbdcopy",
        &[second.to_str().expect("path"), &stack.uri],
        limit,
    );
    let back2 = dir.path("back2.img");
    run(
        "nbdcopy",
        &[&stack.uri, back2.to_str().expect("path")],
        limit,
    );
    assert!(
        std::fs::read(&second).expect("second") == std::fs::read(&back2).expect("back2"),
        "nbdcopy: the image read back differs from the one written"
    );
}

#[test]
fn qemu_io_patterns_verify() {
    if !have("qemu-io") {
        return;
    }
    let dir = Scratch::new("qemu-io");
    let stack = Stack::start(&dir.path("volume.img"), "16M", false);
    let limit = Duration::from_secs(60);
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &stack.uri,
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0xcd 1M 64k",
            "-c",
            "write -P 0xef 4095k 1k",
            "-c",
            "write -z 2M 512k",
            "-c",
            "flush",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0xcd 1M 64k",
            "-c",
            "read -P 0xef 4095k 1k",
            "-c",
            "read -P 0 2M 512k",
        ],
        limit,
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // A pattern that is not there must be caught (the check can fail).
    let wrong = Command::new("qemu-io")
        .args(["-f", "raw", &stack.uri, "-c", "read -P 0x11 0 4k"])
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&wrong.stdout).to_string()
        + &String::from_utf8_lossy(&wrong.stderr);
    assert!(text.contains("Pattern verification failed"), "{text}");
}

/// fio with the nbd engine, 4 KiB random writes at queue depth 16, verified
/// with crc32c.
fn fio_verify(uri: &str, seconds: u32) {
    let out = run(
        "fio",
        &[
            "--name=holdfast",
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
        ],
        Duration::from_secs(u64::from(seconds) + 120),
    );
    // fio exits non-zero on a verify failure (run() asserts success); also
    // check the verify pass really read the data back.
    let json = &out[out.find('{').unwrap_or(0)..];
    let report: serde_json::Value = serde_json::from_str(json).expect("fio JSON report");
    let job = &report["jobs"][0];
    let written = job["write"]["io_bytes"].as_u64().unwrap_or(0);
    let verified = job["read"]["io_bytes"].as_u64().unwrap_or(0);
    eprintln!("fio: {written} bytes written, {verified} bytes read back and verified");
    assert!(written > 0, "fio wrote nothing: {out}");
    assert!(verified > 0, "fio verified nothing: {out}");
}

#[test]
fn fio_verifies_on_a_clean_network() {
    if !have("fio") {
        return;
    }
    let dir = Scratch::new("fio-clean");
    let stack = Stack::start(&dir.path("volume.img"), "64M", false);
    fio_verify(&stack.uri, 10);
}

#[test]
fn fio_verifies_while_the_connection_is_reset_every_second() {
    if !have("fio") {
        return;
    }
    let dir = Scratch::new("fio-resets");
    let stack = Stack::start(&dir.path("volume.img"), "64M", true);
    let resets = stack.reset_every_second();
    fio_verify(&stack.uri, 10);
    let n = resets.finish(&stack.runtime);
    eprintln!("fio passed verification through {n} connection resets");
    assert!(n >= 5, "only {n} resets hit a live connection");
}

#[test]
fn the_demo_reports_nothing_lost_duplicated_or_corrupt() {
    let out = Command::new(BIN)
        .args(["demo", "--duration", "8s", "--faults", "6", "--json"])
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("demo JSON");
    for key in ["lost", "duplicated", "corrupt", "failed_operations"] {
        assert_eq!(v[key], 0, "{key}: {text}");
    }
    let faults: u64 = v["faults"]
        .as_object()
        .expect("faults")
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert!((5..=6).contains(&faults), "{text}");
    assert!(v["stateless_recoveries"].as_u64() >= Some(1), "{text}");
    assert!(v["stateful_recoveries"].as_u64() >= Some(1), "{text}");
    assert!(v["operations"].as_u64() > Some(100), "{text}");
}

/// `holdfast demo --crash`: the target is its own process with a state dir
/// and is killed with -9 mid-workload; every session comes back statefully
/// (no stateless recovery, nothing failed or lost).
#[test]
fn the_crash_demo_recovers_statefully_after_kill_9() {
    let out = Command::new(BIN)
        .args([
            "demo",
            "--crash",
            "--duration",
            "8s",
            "--faults",
            "6",
            "--json",
        ])
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the crash demo failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("demo JSON");
    for key in [
        "lost",
        "corrupt",
        "failed_operations",
        "stateless_recoveries",
    ] {
        assert_eq!(v[key], 0, "{key}: {text}");
    }
    assert_eq!(v["faults"]["kill -9"], 1, "{text}");
    assert!(v["stateful_recoveries"].as_u64() >= Some(1), "{text}");
    assert!(v["operations"].as_u64() > Some(100), "{text}");
}

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
        "torture {args:?} failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("torture JSON: {e}\n{text}"))
}

#[test]
fn torture_log_mode_counts_exactly_and_keeps_message_order() {
    let v = torture(&["--mode", "log", "--duration", "15s", "--seed", "11"]);
    for key in [
        "failed_operations",
        "counter_violations",
        "messages_lost",
        "messages_duplicated",
        "messages_out_of_order",
    ] {
        assert_eq!(v[key], 0, "{key}: {v}");
    }
    assert_eq!(v["counter"], v["increments_ok"], "{v}");
    assert!(v["messages_ok"].as_u64() > Some(100), "{v}");
    let faults: u64 = v["faults"]
        .as_object()
        .expect("faults")
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    // Two per second by default; a fault that finds no live link (the
    // client mid-reconnect) is not counted.
    assert!(
        (25..=30).contains(&faults),
        "two faults per second by default: {v}"
    );
}

#[test]
fn torture_block_mode_against_a_running_target() {
    let dir = Scratch::new("torture-block");
    let volume = dir.path("volume.img");
    let (_target, info) = start(&[
        "target",
        "--volume",
        volume.to_str().expect("path"),
        "--size",
        "32M",
        "--listen",
        "127.0.0.1:0",
    ]);
    let addr = info["endpoints"][0]
        .as_str()
        .expect("endpoint")
        .trim_start_matches("tcp://")
        .to_owned();
    // The second session's io-timeout faults have their own test
    // (tests/torture_block.rs); here the external target is the point.
    let v = torture(&[
        "--target",
        &addr,
        "--duration",
        "15s",
        "--seed",
        "12",
        "--no-io-timeout-faults",
    ]);
    for key in ["lost", "corrupt", "failed_operations"] {
        assert_eq!(v[key], 0, "{key}: {v}");
    }
    // An external target has no ledger: duplicates are not claimed.
    assert!(v["duplicated"].is_null(), "{v}");
    assert!(v["stateful_recoveries"].as_u64() >= Some(10), "{v}");
    assert!(v["operations"].as_u64() > Some(1000), "{v}");
}

#[test]
fn torture_log_mode_against_a_running_log_target() {
    let (_target, info) = start(&["target", "--service", "log", "--listen", "127.0.0.1:0"]);
    let addr = info["endpoints"][0]
        .as_str()
        .expect("endpoint")
        .trim_start_matches("tcp://")
        .to_owned();
    // Two runs against the same target: the second must not be confused by
    // the first's counter and streams.
    for seed in ["21", "22"] {
        let v = torture(&[
            "--mode",
            "log",
            "--target",
            &addr,
            "--duration",
            "8s",
            "--seed",
            seed,
        ]);
        for key in [
            "failed_operations",
            "counter_violations",
            "messages_lost",
            "messages_duplicated",
            "messages_out_of_order",
        ] {
            assert_eq!(v[key], 0, "{key}: {v}");
        }
        assert_eq!(v["counter"], v["increments_ok"], "{v}");
        assert!(v["messages_ok"].as_u64() > Some(100), "{v}");
    }
}
