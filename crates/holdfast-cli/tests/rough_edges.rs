//! What a new user sees when something is off, run against the real binary:
//! an error says its cause once and names the address or path; a setting that
//! cannot work is refused before anything starts; logs written to a file or
//! pipe carry no colour codes; a `RUST_LOG` that does not parse is reported.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// Runs a command that must exit by itself within 20 s.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn holdfast");
    for _ in 0..200 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("holdfast {args:?} did not exit within 20 s");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_volume_is_reported_with_its_path_and_its_cause_once() {
    let out = run(&[
        "target",
        "--volume",
        "/nonexistent-dir/disk.img",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent-dir/disk.img"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn a_listen_failure_names_the_address() {
    // TEST-NET-1 is assigned to no interface here.
    let out = run(&["target", "--service", "log", "--listen", "192.0.2.1:7400"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("could not listen on tcp://192.0.2.1:7400"),
        "{err}"
    );
}

#[test]
fn settings_that_cannot_work_are_refused_at_startup() {
    for (args, says) in [
        (
            &[
                "target",
                "--service",
                "log",
                "--listen",
                "127.0.0.1:0",
                "--credits",
                "0",
            ][..],
            "--credits 0",
        ),
        (
            &[
                "target",
                "--service",
                "log",
                "--listen",
                "127.0.0.1:0",
                "--max-sessions",
                "0",
            ],
            "--max-sessions 0",
        ),
        (
            &["nbd", "--target", "127.0.0.1:9", "--detection", "0s"],
            "--detection 0ms",
        ),
        (
            &["nbd", "--target", "127.0.0.1:9", "--io-timeout", "0s"],
            "--io-timeout 0ms",
        ),
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Starts the log target with `RUST_LOG` set, reads its first stdout line,
/// stops it and returns what it wrote on stderr.
fn stderr_of_a_running_target(rust_log: &str) -> String {
    stderr_of_a_running_target_into(rust_log, None)
}

/// As [`stderr_of_a_running_target`]; with `file`, stderr goes to that
/// file (as `2>log` or a service manager's log file would have it).
fn stderr_of_a_running_target_into(rust_log: &str, file: Option<&std::path::Path>) -> String {
    let stderr = match file {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("create the log file")),
        None => Stdio::piped(),
    };
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
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn holdfast");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read the endpoint line");
    assert!(first.contains("serving"), "{first}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let mut err = String::new();
    if let Some(mut piped) = child.stderr.take() {
        piped.read_to_string(&mut err).expect("read stderr");
    }
    let _ = child.wait();
    if let Some(path) = file {
        err = std::fs::read_to_string(path).expect("read the log file");
        let _ = std::fs::remove_file(path);
    }
    err
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let err = stderr_of_a_running_target("info");
    assert!(err.contains("INFO"), "logs expected at info: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in piped logs: {err:?}"
    );
}

#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let path = std::env::temp_dir().join(format!("holdfast-colour-{}.log", std::process::id()));
    let err = stderr_of_a_running_target_into("info", Some(&path));
    assert!(err.contains("INFO"), "logs expected at info: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in a log file: {err:?}"
    );
}

#[test]
fn a_rust_log_that_does_not_parse_is_reported() {
    let err = stderr_of_a_running_target("holdfast=[[[");
    assert!(
        err.contains("RUST_LOG=\"holdfast=[[[\" is not a valid filter"),
        "{err}"
    );
}
