//! fio with crc32c verification through an NBD URI, for the tests that run
//! it while faults hit the target (durable_fio.rs, fence_fio.rs).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// True if fio is installed; panics under CI if not.
pub fn have_fio() -> bool {
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

/// fio job `name`: 4 KiB random writes at QD 16 for `seconds`, then a
/// crc32c verify pass over everything written; panics on any error.
pub fn fio_verify(name: &str, uri: &str, seconds: u32) {
    let mut child = Command::new("fio")
        .args([
            &format!("--name={name}"),
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
