//! Helpers for the tests that drive the real `holdfast` binary: child
//! processes killed on drop, their JSON lines, a scratch directory, a small
//! blocking NBD client (so a test sees each request's own error) and the
//! control line protocol of `holdfast chaos`.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod fio;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use holdfast_block::nbd::consts::{
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, IHAVEOPT, NBDMAGIC, OPTION_REPLY_MAGIC, OPT_GO,
    REP_ACK, REP_FLAG_ERROR, REP_INFO, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("holdfast-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `holdfast` child process (killed on drop), its stdout lines and its
/// stderr text.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    stderr: Receiver<String>,
    stderr_text: String,
}

impl Proc {
    /// Starts `holdfast ARGS` with stdout and stderr captured.
    pub fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn holdfast");
        let stdout = child.stdout.take().expect("stdout");
        let err_pipe = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = std::sync::mpsc::channel();
        let stderr_rx = stderr;
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                // Echo for the test's own output, then keep for asserts.
                eprintln!("  | {line}");
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            stderr: stderr_rx,
            stderr_text: String::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line as JSON, within `limit`.
    pub fn json_line(&mut self, limit: Duration) -> serde_json::Value {
        let line = self
            .lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("holdfast printed no line within {limit:?}: {e}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("holdfast printed {line:?}: {e}"))
    }

    /// The next stdout line, if one comes within `limit`.
    pub fn line(&mut self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Waits until a stderr line contains `needle`; returns it.
    pub fn wait_stderr(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_text.push_str(&line);
                    self.stderr_text.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stderr line containing {needle:?} within {limit:?}; stderr so far:\n{}",
                    self.stderr_text
                ),
            }
        }
    }

    /// All stderr read so far plus what is still buffered.
    pub fn stderr_so_far(&mut self) -> &str {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_text.push_str(&line);
            self.stderr_text.push('\n');
        }
        &self.stderr_text
    }

    /// Sends `signal` (e.g. "INT", "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit within `limit`; `None` if it did not.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `holdfast target` on a fresh volume file; returns it and its
/// `host:port`.
pub fn start_target(volume: &Path, size: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "target",
        "--volume",
        volume.to_str().expect("utf-8 path"),
        "--size",
        size,
        "--listen",
        "127.0.0.1:0",
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(&args);
    let info = p.json_line(Duration::from_secs(20));
    let addr = info["endpoints"][0]
        .as_str()
        .expect("endpoint")
        .trim_start_matches("tcp://")
        .to_owned();
    (p, addr)
}

/// Starts `holdfast nbd --target TARGET ARGS --json`; returns it and the
/// `host:port` it listens on (for a TCP listen address).
pub fn start_nbd(target: &str, extra: &[&str]) -> (Proc, serde_json::Value) {
    let mut args = vec!["nbd", "--target", target, "--json"];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(&args);
    let info = p.json_line(Duration::from_secs(20));
    (p, info)
}

/// The `host:port` of an `nbd://host:port/name` URI.
pub fn nbd_addr(info: &serde_json::Value) -> String {
    let uri = info["uri"].as_str().expect("uri");
    let rest = uri.trim_start_matches("nbd://");
    rest[..rest.find('/').unwrap_or(rest.len())].to_owned()
}

/// `holdfast chaos` with one proxy and its control connection.
pub struct Chaos {
    pub proc: Proc,
    pub listen: String,
    control: BufReader<TcpStream>,
}

impl Chaos {
    /// Starts one proxy to `upstream` with a control API on loopback.
    pub fn start(upstream: &str) -> Chaos {
        Chaos::start_on("127.0.0.1:0", upstream)
    }

    /// Starts one proxy listening on `listen`, forwarding to `upstream`.
    pub fn start_on(listen: &str, upstream: &str) -> Chaos {
        let mut proc = Proc::spawn(&[
            "chaos",
            "--listen",
            listen,
            "--upstream",
            upstream,
            "--control",
            "127.0.0.1:0",
            "--json",
        ]);
        let mut listen = None;
        let mut control = None;
        while listen.is_none() || control.is_none() {
            let v = proc.json_line(Duration::from_secs(20));
            match v["event"].as_str() {
                Some("listening") => listen = v["listen"].as_str().map(str::to_owned),
                Some("control") => control = v["addr"].as_str().map(str::to_owned),
                _ => {}
            }
        }
        let stream = TcpStream::connect(control.expect("control")).expect("connect control");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Chaos {
            proc,
            listen: listen.expect("listen"),
            control: BufReader::new(stream),
        }
    }

    /// Sends one control line and returns its JSON reply (asserting ok).
    pub fn command(&mut self, line: &str) -> serde_json::Value {
        let s = self.control.get_mut();
        s.write_all(format!("{line}\n").as_bytes())
            .expect("control write");
        let mut reply = String::new();
        self.control.read_line(&mut reply).expect("control reply");
        let v: serde_json::Value =
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("control {reply:?}: {e}"));
        assert_eq!(v["ok"], true, "chaos {line:?}: {reply}");
        v
    }
}

/// The outcome of one NBD request: the error code (0 = success).
pub type NbdErrno = u32;

/// NBD's EIO.
pub const NBD_EIO: u32 = 5;

/// NBD command codes.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_FLUSH: u16 = 3;

/// A blocking NBD client: fixed newstyle, `NBD_OPT_GO`, simple replies.
/// Requests may be pipelined: send several, then read replies by handle.
pub struct NbdClient {
    stream: TcpStream,
    pub size: u64,
    next: u64,
}

impl NbdClient {
    /// Connects to `addr` and enters transmission on the default export.
    pub fn connect(addr: &str) -> NbdClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut c = NbdClient {
            stream,
            size: 0,
            next: 1,
        };
        let mut greet = [0u8; 18];
        c.read_exact(&mut greet);
        assert_eq!(u64_at(&greet, 0), NBDMAGIC);
        assert_eq!(u64_at(&greet, 8), IHAVEOPT);
        c.send(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&6u32.to_be_bytes());
        opt.extend_from_slice(&0u32.to_be_bytes()); // name length: default export
        opt.extend_from_slice(&0u16.to_be_bytes()); // no info requests
        c.send(&opt);
        loop {
            let mut h = [0u8; 20];
            c.read_exact(&mut h);
            assert_eq!(u64_at(&h, 0), OPTION_REPLY_MAGIC);
            let kind = u32_at(&h, 12);
            let len = u32_at(&h, 16) as usize;
            assert!(len < 1 << 16, "option reply of {len} bytes");
            let mut data = vec![0u8; len];
            c.read_exact(&mut data);
            match kind {
                REP_ACK => break,
                REP_INFO if data.len() >= 10 && u16::from_be_bytes([data[0], data[1]]) == 0 => {
                    c.size = u64_at(&data, 2);
                }
                REP_INFO => {}
                e if e & REP_FLAG_ERROR != 0 => panic!("NBD_OPT_GO refused: {e:#x}"),
                other => panic!("unexpected option reply {other:#x}"),
            }
        }
        c
    }

    /// Sets how long a reply may take before `reply` panics.
    pub fn set_reply_limit(&self, limit: Duration) {
        self.stream.set_read_timeout(Some(limit)).expect("timeout");
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("nbd send");
    }

    fn read_exact(&mut self, buf: &mut [u8]) {
        self.stream.read_exact(buf).expect("nbd read");
    }

    /// Sends one request; returns its handle.
    pub fn send_request(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
        let handle = self.next;
        self.next += 1;
        let mut out = Vec::with_capacity(28 + payload.len());
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&handle.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        self.send(&out);
        handle
    }

    /// Reads one simple reply header: (errno, handle). `None` on a read
    /// timeout (the reply limit passed).
    pub fn try_reply(&mut self) -> Option<(NbdErrno, u64)> {
        let mut h = [0u8; 16];
        match self.stream.read_exact(&mut h) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("nbd reply: {e}"),
        }
        assert_eq!(u32_at(&h, 0), SIMPLE_REPLY_MAGIC);
        Some((u32_at(&h, 4), u64_at(&h, 8)))
    }

    /// Writes `data` at `offset` and waits for the reply.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> NbdErrno {
        let h = self.send_request(CMD_WRITE, offset, data.len() as u32, data);
        let (err, handle) = self.try_reply().expect("write reply in time");
        assert_eq!(handle, h);
        err
    }

    /// Flushes and waits for the reply.
    pub fn flush(&mut self) -> NbdErrno {
        let h = self.send_request(CMD_FLUSH, 0, 0, &[]);
        let (err, handle) = self.try_reply().expect("flush reply in time");
        assert_eq!(handle, h);
        err
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, NbdErrno> {
        let h = self.send_request(CMD_READ, offset, len, &[]);
        let (err, handle) = self.try_reply().expect("read reply in time");
        assert_eq!(handle, h);
        if err != 0 {
            return Err(err);
        }
        let mut data = vec![0u8; len as usize];
        self.read_exact(&mut data);
        Ok(data)
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

/// A loopback `host:port` nothing listens on right now (for `--metrics`).
pub fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .expect("a free port")
}

/// `GET /metrics` from a `--metrics` endpoint, parsed into `name{labels}` →
/// value (comments dropped).
pub fn scrape(addr: &str) -> std::collections::HashMap<String, f64> {
    let addr: std::net::SocketAddr = addr.parse().expect("a socket address");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// One value of a scrape; panics naming the metric when it is missing.
pub fn metric(m: &std::collections::HashMap<String, f64>, name: &str) -> u64 {
    m.get(name)
        .copied()
        .unwrap_or_else(|| panic!("{name} missing from /metrics: {m:?}")) as u64
}
