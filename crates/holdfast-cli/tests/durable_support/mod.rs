//! Helpers for the durable-session tests: a `holdfast target --state-dir`
//! child process on a fixed loopback address that can be killed with
//! SIGKILL (no shutdown, no flush: a crash) and started again on the same
//! address and state dir, and a tokio initiator that reaches it.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast::{Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions};

use crate::support::{free_addr, Proc};

/// How long a target may take to come up (a recovery included).
pub const STARTUP: Duration = Duration::from_secs(30);

/// A `holdfast target` with a state dir, restartable after a kill -9.
pub struct CrashTarget {
    /// `target ...` arguments, `--listen` and `--json` included.
    args: Vec<String>,
    /// The running process, `None` between a kill and a restart.
    pub proc: Option<Proc>,
    /// `host:port` it listens on, the same across restarts.
    pub addr: String,
    /// The `serving` line of the latest start.
    pub serving: serde_json::Value,
}

impl CrashTarget {
    /// Starts `holdfast target EXTRA --listen ADDR --json --control none`
    /// on a free loopback port.
    pub fn start(extra: &[&str]) -> CrashTarget {
        let addr = free_addr();
        let mut args: Vec<String> = vec!["target".into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(
            ["--listen", &addr, "--json", "--control", "none"]
                .iter()
                .map(|s| (*s).to_owned()),
        );
        let mut t = CrashTarget {
            args,
            proc: None,
            addr,
            serving: serde_json::Value::Null,
        };
        t.spawn();
        t
    }

    /// Starts the process and waits for its `serving` line (a few tries:
    /// the port may still be held for a moment after a kill).
    fn spawn(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut last = String::new();
        for _ in 0..5 {
            let mut p = Proc::spawn(&args);
            if let Some(line) = p.line(STARTUP) {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("holdfast target printed {line:?}: {e}"));
                assert_eq!(v["event"], "serving", "{v}");
                self.serving = v;
                self.proc = Some(p);
                return;
            }
            let _ = p.wait_exit(Duration::from_secs(5));
            last = p.stderr_so_far().to_owned();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("holdfast target did not start; its stderr:\n{last}");
    }

    /// SIGKILL (the process gets no chance to flush or say goodbye), then
    /// waits until it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("KILL");
            assert!(
                p.wait_exit(Duration::from_secs(10)).is_some(),
                "the target outlived SIGKILL"
            );
        }
    }

    /// Starts the target again from its state dir; returns how long that
    /// took until it served.
    pub fn restart(&mut self) -> Duration {
        let began = Instant::now();
        self.spawn();
        began.elapsed()
    }

    /// The stderr of the running process so far.
    pub fn stderr(&mut self) -> String {
        self.proc
            .as_mut()
            .map(|p| p.stderr_so_far().to_owned())
            .unwrap_or_default()
    }
}

/// An initiator to `addr` with a 1 s detection bound that keeps trying for
/// 60 s without a connection.
pub fn initiator(addr: &str) -> Initiator {
    let addr = addr.parse().expect("a socket address");
    let bound = Duration::from_secs(1);
    let mut options = InitiatorOptions::default();
    options.protocol = {
        let mut ic = InitiatorConfig::default().with_detection_bound(bound);
        ic.session_loss_timeout = Some(Duration::from_secs(60));
        ic
    };
    Initiator::start(
        Arc::new(EndpointConnector::new(Endpoint::Tcp(addr), bound)),
        options,
    )
}
