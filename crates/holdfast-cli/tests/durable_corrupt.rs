//! A damaged session store is never replayed silently (issue 16): a bit
//! flipped inside the log makes `holdfast target --state-dir` refuse to
//! start, naming the session whose state cannot be trusted and saying
//! what to do; a log cut short inside its last group is a torn tail (a
//! crash mid-write looks the same), dropped with its byte count reported;
//! and a log cut back by whole groups that an initiator had already seen
//! answered is caught when that initiator recovers: its call fails with a
//! clear error instead of being answered from a store that forgot it.

mod durable_support;
mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use durable_support::{initiator, CrashTarget, STARTUP};
use support::{Proc, Scratch};

/// The log file in a state dir (PROTOCOL.md §12.4).
const LOG: &str = "session.log";

/// The bytes the log's header and groups use: the log is pre-written with
/// zeros after them (PROTOCOL.md §12.4, *Log file layout*), so the file's
/// length says nothing about where its groups end.
fn used_bytes(log: &[u8]) -> usize {
    let mut at = 24;
    while let Some(len) = log.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if len == 0 {
            break;
        }
        at += 12 + len;
    }
    at.min(log.len())
}

/// Copies every file of `from` into a new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read state dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// The id of the first session the target's log lines name.
fn session_id(stderr: &str) -> String {
    let at = stderr
        .find("session=S")
        .unwrap_or_else(|| panic!("no session in the target's log:\n{stderr}"));
    stderr[at + "session=".len()..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

/// A state dir holding one session with `n` completed increments, its
/// target killed -9 and the initiator still waiting to recover; returns the
/// target (stopped), the live initiator's runtime and handle, and the id.
fn store_with_one_session(
    scratch: &Scratch,
    n: u64,
) -> (
    CrashTarget,
    tokio::runtime::Runtime,
    holdfast::Initiator,
    String,
) {
    let state = scratch.path("state");
    let mut target = CrashTarget::start(&[
        "--service",
        "log",
        "--state-dir",
        state.to_str().expect("utf-8"),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let init = rt.block_on(async { initiator(&target.addr) });
    rt.block_on(async {
        for i in 1..=n {
            let v = init
                .call(Bytes::from_static(b"I"))
                .await
                .expect("increment");
            assert_eq!(v.as_ref(), i.to_be_bytes());
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let id = session_id(&target.stderr());
    target.kill9();
    (target, rt, init, id)
}

/// Starts a target on `state` that must refuse to start; returns stderr.
fn refused(state: &Path) -> String {
    let mut p = Proc::spawn(&[
        "target",
        "--service",
        "log",
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--control",
        "none",
        "--json",
    ]);
    let status = p.wait_exit(STARTUP).unwrap_or_else(|| {
        panic!(
            "the target started on a corrupt store:\n{}",
            p.stderr_so_far()
        )
    });
    assert!(!status.success(), "exit status {status}");
    std::thread::sleep(Duration::from_millis(100));
    p.stderr_so_far().to_owned()
}

#[test]
fn durable_store_bit_flip_is_refused_naming_the_session() {
    let scratch = Scratch::new("durable-flip");
    let (_target, _rt, _init, id) = store_with_one_session(&scratch, 40);
    let flipped = scratch.path("flipped");
    copy_dir(&scratch.path("state"), &flipped);
    let log = flipped.join(LOG);
    let mut bytes = std::fs::read(&log).expect("the log");
    let used = used_bytes(&bytes);
    assert!(used > 64, "the log uses {used} bytes");
    let at = used / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&log, &bytes).expect("write the flipped log");
    let stderr = refused(&flipped);
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(
        stderr.contains(&id),
        "the error does not name {id}:\n{stderr}"
    );
    assert!(
        stderr.contains("move"),
        "the error does not say what to do:\n{stderr}"
    );
    // Nothing was changed on disk by the refusal.
    assert_eq!(std::fs::read(&log).expect("the log"), bytes);
}

#[test]
fn durable_store_torn_tail_is_dropped_and_reported() {
    let scratch = Scratch::new("durable-torn");
    let (_target, _rt, _init, _id) = store_with_one_session(&scratch, 10);
    let torn = scratch.path("torn");
    copy_dir(&scratch.path("state"), &torn);
    let log = torn.join(LOG);
    let len = used_bytes(&std::fs::read(&log).expect("the log")) as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .and_then(|f| f.set_len(len - 3))
        .expect("cut the log");
    let mut t = CrashTarget::start(&[
        "--service",
        "log",
        "--state-dir",
        torn.to_str().expect("utf-8"),
    ]);
    let stderr = t.stderr();
    // Not just "torn": the scratch directory's own path says that.
    let serving = t.serving.to_string();
    let counted =
        serving.contains("\"torn_tail_bytes\":") && !serving.contains("\"torn_tail_bytes\":null");
    assert!(
        counted || stderr.contains("a torn final group of"),
        "a torn tail was not reported: {}\n{stderr}",
        t.serving
    );
    t.kill9();
}

#[test]
fn durable_store_cut_back_by_whole_groups_fails_the_recovering_call() {
    let scratch = Scratch::new("durable-cut");
    let (mut target, rt, init, id) = store_with_one_session(&scratch, 40);
    // Keep the first half of the log: a cut inside a group is dropped as a
    // torn tail, so the store now misses groups the initiator saw answered.
    let log = scratch.path("state").join(LOG);
    let len = used_bytes(&std::fs::read(&log).expect("the log")) as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .and_then(|f| f.set_len(len / 2))
        .expect("cut the log");
    let _ = target.restart();
    let outcome = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), init.call(Bytes::from_static(b"I"))).await
    });
    let result = outcome.expect("the recovering call settled within 30 s");
    let stderr = target.stderr();
    match result {
        Ok(v) => panic!(
            "a store that forgot answered commands was replayed silently: the increment \
             returned {v:?}; target log:\n{stderr}"
        ),
        Err(e) => eprintln!("the recovering initiator was told: {e}"),
    }
    assert!(
        stderr.contains(&id),
        "the target's log does not name {id}:\n{stderr}"
    );
    target.kill9();
}
