//! The log service behind a durable target (`holdfast target --service log
//! --state-dir`), killed with SIGKILL and restarted 20 times during a
//! 16-task increment load with one-way messages (issue 16). Every call must
//! succeed exactly once: the answers are exactly the values 1..=N for N
//! successful increments, the counter is N, and every sender's stream
//! holds each acknowledged message once, in order (zero repeats, zero
//! skips). Without the state dir this fails at the first kill: the
//! restarted target has no state, and increments in flight fail as "may
//! have executed".

mod durable_support;
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use durable_support::{initiator, CrashTarget};
use support::Scratch;

/// Kill and restart cycles.
const CYCLES: usize = 20;
/// Concurrent load tasks (each is also a message sender).
const TASKS: u32 = 16;
/// The whole test's bound.
const LIMIT: Duration = Duration::from_secs(240);

/// The log service's `M` message `n` of `sender`.
fn message(sender: u32, n: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(13);
    b.put_u8(b'M');
    b.put_u32(sender);
    b.put_u64(n);
    b.freeze()
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Counter values the increments returned.
    values: Mutex<Vec<u64>>,
    /// Messages acknowledged per sender.
    sent: Mutex<Vec<u64>>,
    /// The first failures (call or send errors).
    failures: Mutex<Vec<String>>,
    /// Successful operations (a progress measure).
    ops: AtomicU64,
}

async fn load(task: u32, init: holdfast::Initiator, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match init.call(Bytes::from_static(b"I")).await {
            Ok(v) => match <[u8; 8]>::try_from(v.as_ref()) {
                Ok(b) => seen
                    .values
                    .lock()
                    .expect("lock")
                    .push(u64::from_be_bytes(b)),
                Err(_) => seen
                    .failures
                    .lock()
                    .expect("lock")
                    .push(format!("task {task}: increment answered {v:?}")),
            },
            Err(e) => {
                seen.failures
                    .lock()
                    .expect("lock")
                    .push(format!("task {task}: increment failed: {e}"));
                return;
            }
        }
        match init.send(message(task, n + 1)).await {
            Ok(()) => n += 1,
            Err(e) => {
                seen.failures
                    .lock()
                    .expect("lock")
                    .push(format!("task {task}: message {} failed: {e}", n + 1));
                return;
            }
        }
        seen.ops.fetch_add(2, Ordering::Relaxed);
    }
    seen.sent.lock().expect("lock")[task as usize] = n;
}

#[test]
fn durable_log_survives_20_kill9_restarts_exactly_once() {
    let scratch = Scratch::new("durable-log");
    let state = scratch.path("state");
    let state_arg = state.to_str().expect("utf-8 path").to_owned();
    let mut target = CrashTarget::start(&["--service", "log", "--state-dir", &state_arg]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let began = Instant::now();
    let init = rt.block_on(async { initiator(&target.addr) });
    let seen = Arc::new(Seen {
        sent: Mutex::new(vec![0; TASKS as usize]),
        ..Seen::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| rt.spawn(load(t, init.clone(), seen.clone(), stop.clone())))
        .collect();
    let mut restarts = Vec::new();
    for cycle in 0..CYCLES {
        // Let the load make progress on this incarnation, then crash it in
        // the middle of it.
        let before = seen.ops.load(Ordering::Relaxed);
        let wait = Instant::now();
        while seen.ops.load(Ordering::Relaxed) < before + 64 + 16 * cycle as u64
            && wait.elapsed() < Duration::from_secs(20)
            && seen.failures.lock().expect("lock").is_empty()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        {
            let failures = seen.failures.lock().expect("lock");
            assert!(
                failures.is_empty(),
                "cycle {cycle}: {} calls failed, the first: {:#?}",
                failures.len(),
                &failures[..failures.len().min(3)]
            );
        }
        assert!(
            seen.ops.load(Ordering::Relaxed) > before,
            "cycle {cycle}: no progress for 20 s; target stderr:\n{}",
            target.stderr()
        );
        target.kill9();
        restarts.push(target.restart());
        assert!(began.elapsed() < LIMIT, "the test ran past {LIMIT:?}");
    }
    // A last stretch of load on the final incarnation, then stop.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("the load stopped within 60 s")
                .expect("a load task panicked");
        }
    });
    let failures = seen.failures.lock().expect("lock").clone();
    assert!(failures.is_empty(), "calls failed: {failures:#?}");

    let report: serde_json::Value = rt.block_on(async {
        let q = tokio::time::timeout(Duration::from_secs(30), init.call(Bytes::from_static(b"Q")))
            .await
            .expect("the query answered within 30 s")
            .expect("the query succeeded");
        let _ = init.close().await;
        serde_json::from_slice(&q).expect("the report is JSON")
    });
    let mut values = seen.values.lock().expect("lock").clone();
    values.sort_unstable();
    let n = values.len() as u64;
    let expected: Vec<u64> = (1..=n).collect();
    assert!(
        values == expected,
        "the {n} successful increments did not return exactly 1..={n}: an increment ran \
         twice or was lost (first differences: {:?})",
        values
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        report["counter"].as_u64(),
        Some(n),
        "counter vs successful calls: {report}"
    );
    let sent = seen.sent.lock().expect("lock").clone();
    for (task, acked) in sent.iter().enumerate() {
        let s = &report["streams"][task.to_string()];
        assert_eq!(s["repeated"].as_u64(), Some(0), "stream {task}: {s}");
        assert_eq!(s["skipped"].as_u64(), Some(0), "stream {task}: {s}");
        assert_eq!(s["next"].as_u64(), Some(acked + 1), "stream {task}: {s}");
    }
    assert_eq!(report["refused"].as_u64(), Some(0), "{report}");
    restarts.sort_unstable();
    eprintln!(
        "{CYCLES} kill -9 + restart cycles: {n} increments, {} messages, restart to serving \
         p50 {:?} max {:?}, total {:?}",
        sent.iter().sum::<u64>(),
        restarts[restarts.len() / 2],
        restarts[restarts.len() - 1],
        began.elapsed()
    );
    target.kill9();
    drop(scratch);
}
