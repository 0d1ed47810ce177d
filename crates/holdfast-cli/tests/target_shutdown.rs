//! `holdfast target` on SIGTERM and SIGINT, over a real socket on
//! 127.0.0.1: the shutdown notice says "will not return" (its sessions end
//! with the process), new logins during the up time get LOGIN_REJECT
//! `ShuttingDown`, and the process exits after the up time (PROTOCOL.md
//! §10.1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast::proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, ErrorCode, Frame, Login, LoginKind, RejectReason,
    NEVER_MS, VERSION_MAX, VERSION_MIN,
};
use holdfast::proto::{SessionId, SessionSecret};

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the log target with an up time of `up`; returns it, its address
/// and its later stdout lines (the final counters).
fn start(up: &str) -> (Running, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["target", "--service", "log", "--listen", "127.0.0.1:0"])
        .args(["--shutdown-up", up, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn holdfast");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The first line says where it listens; the rest (the final
        // counters) is read too, so the process can print it and exit.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the target printed its endpoints within 20 s");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let addr = v["endpoints"][0]
        .as_str()
        .expect("an endpoint")
        .trim_start_matches("tcp://")
        .parse()
        .unwrap_or_else(|e| panic!("endpoint in {line}: {e}"));
    (running, addr, rx)
}

/// A hand-driven connection: raw frames, reads bounded by 5 s.
struct Raw {
    stream: TcpStream,
    decoder: Decoder,
    pending: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> std::io::Result<Raw> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Raw {
            stream,
            decoder: Decoder::new(Direction::ToInitiator, 1 << 20),
            pending: Vec::new(),
        })
    }

    fn login(&mut self) {
        let login = Frame::Login(Login {
            min_version: VERSION_MIN,
            max_version: VERSION_MAX,
            kind: LoginKind::New,
            digests: Digests::NONE,
            session: SessionId(0),
            secret: SessionSecret([0; 16]),
            response_ack: 0,
            max_frame: 1 << 20,
            keepalive_ms: 1000,
            requested_credits: 8,
            host: None,
        });
        self.stream
            .write_all(&encode_to_vec(&login, Digests::NONE))
            .expect("write LOGIN");
    }

    /// The next frame (`None` at EOF).
    fn next(&mut self) -> Option<Frame> {
        loop {
            let mut input = &self.pending[..];
            let decoded = self.decoder.decode(&mut input).expect("a valid frame");
            let used = self.pending.len() - input.len();
            self.pending.drain(..used);
            if decoded.is_some() {
                return decoded;
            }
            let mut buf = [0u8; 4096];
            let n = self
                .stream
                .read(&mut buf)
                .expect("the target answers within 5 s");
            if n == 0 {
                return None;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Sends `sig` to a target with an attached session and checks the whole
/// shutdown: notice, rejected newcomer, exit after the up time.
fn shuts_down_gracefully_on(sig: &str) {
    let up = Duration::from_secs(2);
    let (mut target, addr, stdout) = start("2s");
    let mut attached = Raw::connect(addr).expect("connect");
    attached.login();
    assert!(matches!(attached.next(), Some(Frame::LoginAccept(_))));

    let started = Instant::now();
    signal(&target.0, sig);
    match attached.next() {
        Some(Frame::Shutdown { min_hold_ms, .. }) => assert_eq!(
            min_hold_ms, NEVER_MS,
            "the process's sessions end with it: it must say it will not return"
        ),
        other => panic!("expected the shutdown notice after SIG{sig}, got {other:?}"),
    }
    let mut newcomer = Raw::connect(addr).expect("the listener stays open during the up time");
    newcomer.login();
    match newcomer.next() {
        Some(Frame::LoginReject(r)) => {
            assert_eq!(r.reason, RejectReason::ShuttingDown);
            assert_eq!(r.retry_after_ms, NEVER_MS);
        }
        other => panic!("expected LOGIN_REJECT ShuttingDown, got {other:?}"),
    }
    assert!(started.elapsed() < up, "the checks ran within the up time");
    match attached.next() {
        Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::Shutdown),
        other => panic!("expected ERROR Shutdown at the end of the up time, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = target.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the target did not exit after its up time"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() >= up, "exited before the up time ended");
    let last = stdout
        .recv_timeout(Duration::from_secs(5))
        .expect("a final line on stdout");
    let v: serde_json::Value = serde_json::from_str(&last).expect("the final line is JSON");
    assert_eq!(v["event"], "stopped", "{last}");
    // JSON all the way down: counters are numbers, not a debug string.
    assert!(
        v["stats"]["connections"].as_u64().is_some_and(|n| n >= 1),
        "{last}"
    );
    assert_eq!(v["stats"]["sessions_created"].as_u64(), Some(1), "{last}");
}

#[test]
fn sigterm_announces_no_return_refuses_new_logins_and_exits_after_the_up_time() {
    shuts_down_gracefully_on("TERM");
}

#[test]
fn sigint_does_the_same() {
    shuts_down_gracefully_on("INT");
}
