//! The control API: a line protocol over TCP on loopback that applies
//! faults to running proxies and reports their counters.
//!
//! Each request is one line of whitespace-separated words; each gets
//! exactly one line of JSON back, `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`. Lines longer than
//! [`ControlOptions::max_line`] bytes, non-UTF-8 and unknown words get an
//! error line; the connection stays usable. The grammar is in
//! `docs/CHAOS.md`:
//!
//! ```text
//! [fault] KIND [ARGS] [up|down|both] [all|newest] [@PROXY]
//! stats [@PROXY]
//! help
//! quit
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use super::{ChaosError, Direction, FaultKind, FaultSpec, Proxy, Scope};

/// The longest delay a command may ask for.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Which proxy a command addresses (`@0`, `@127.0.0.1:7401`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxySelector {
    /// By position, from 0, in the order the proxies were given.
    Index(usize),
    /// By listen address.
    Addr(SocketAddr),
}

/// A parsed control request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlCommand {
    /// Apply a fault to one proxy, or to all when `proxy` is `None`.
    Fault {
        /// The fault.
        spec: FaultSpec,
        /// Which proxy.
        proxy: Option<ProxySelector>,
    },
    /// Report counters of one proxy, or of all.
    Stats {
        /// Which proxy.
        proxy: Option<ProxySelector>,
    },
    /// List the commands.
    Help,
    /// Close this control connection.
    Quit,
}

/// The commands, as `help` lists them.
const HELP: [&str; 12] = [
    "[fault] KIND [ARGS] [up|down|both] [all|newest] [@PROXY]  (default: both all, every proxy)",
    "  reset                       RST (one direction: the receiving side; the other side goes silent)",
    "  blackhole                   stop forwarding, keep the sockets open",
    "  delay BASE [JITTER]         e.g. delay 50ms 20ms; delay 0 removes it",
    "  bandwidth BYTES_PER_SEC     e.g. bandwidth 64K; 0 removes the limit",
    "  cut N                       forward N more bytes, then blackhole",
    "  halfclose                   FIN to the receiver after the bytes already read",
    "  hold | release              buffer everything / deliver it late, then forward",
    "  heal                        forward normally again",
    "stats [@PROXY]                counters, one JSON line",
    "help                          this list",
    "quit                          close this connection",
];

fn parse_error(msg: String) -> ChaosError {
    ChaosError::Parse(msg)
}

/// Quotes at most 40 characters of untrusted input for an error message.
fn shown(word: &str) -> String {
    let short: String = word.chars().take(40).collect();
    if short.len() < word.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

/// Parses a duration with a unit: `250ms`, `1.5s`, `200us`, `1m`, or `0`.
pub(crate) fn parse_duration(word: &str) -> Result<Duration, ChaosError> {
    let bad = || parse_error(format!("{} is not a duration; try 50ms or 1s", shown(word)));
    if word == "0" {
        return Ok(Duration::ZERO);
    }
    let (number, scale) = if let Some(n) = word.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = word.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = word.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = word.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(bad());
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let secs = value * scale;
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    if secs > MAX_DELAY.as_secs_f64() {
        return Err(parse_error(format!(
            "{} is longer than an hour",
            shown(word)
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte amount: digits with an optional binary suffix K, M or G
/// (and an optional `B`, `iB` or `/s`).
pub(crate) fn parse_amount(word: &str) -> Result<u64, ChaosError> {
    let bad = || {
        parse_error(format!(
            "{} is not a byte count; try 4096 or 64K",
            shown(word)
        ))
    };
    let w = word.strip_suffix("/s").unwrap_or(word);
    let w = w
        .strip_suffix("ib")
        .or_else(|| w.strip_suffix('b'))
        .unwrap_or(w);
    let (digits, shift) = match w.chars().last() {
        Some('k') => (&w[..w.len() - 1], 10),
        Some('m') => (&w[..w.len() - 1], 20),
        Some('g') => (&w[..w.len() - 1], 30),
        _ => (w, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Parses one request line (see the module docs).
pub fn parse_command(line: &str) -> Result<ControlCommand, ChaosError> {
    let lowered = line.to_ascii_lowercase();
    let mut words = lowered.split_ascii_whitespace().peekable();
    let Some(first) = words.next() else {
        return Err(parse_error("empty command; try help".into()));
    };
    let kind_word = match first {
        "help" | "?" => return Ok(ControlCommand::Help),
        "quit" | "exit" => return Ok(ControlCommand::Quit),
        "stats" => {
            let mut proxy = None;
            for w in words {
                match w.strip_prefix('@') {
                    Some(sel) if proxy.is_none() => proxy = Some(parse_selector(sel)?),
                    _ => {
                        return Err(parse_error(format!(
                            "stats takes only @PROXY, not {}",
                            shown(w)
                        )))
                    }
                }
            }
            return Ok(ControlCommand::Stats { proxy });
        }
        "fault" => words
            .next()
            .ok_or_else(|| parse_error("fault needs a kind; try help".into()))?,
        other => other,
    };
    let kind = match kind_word {
        "reset" | "rst" => FaultKind::Reset,
        "blackhole" => FaultKind::Blackhole,
        "halfclose" | "half-close" => FaultKind::HalfClose,
        "hold" => FaultKind::Hold,
        "release" => FaultKind::Release,
        "heal" | "forward" => FaultKind::Heal,
        "delay" => {
            let base = words
                .next()
                .ok_or_else(|| parse_error("delay needs a duration, e.g. delay 50ms".into()))?;
            let base = parse_duration(base)?;
            let jitter = match words.peek().map(|w| parse_duration(w)) {
                Some(Ok(j)) => {
                    words.next();
                    j
                }
                _ => Duration::ZERO,
            };
            FaultKind::Delay { base, jitter }
        }
        "bandwidth" => {
            let rate = words.next().ok_or_else(|| {
                parse_error("bandwidth needs bytes per second, e.g. bandwidth 64K".into())
            })?;
            FaultKind::Bandwidth {
                bytes_per_sec: parse_amount(rate)?,
            }
        }
        "cut" | "cutafter" => {
            let n = words
                .next()
                .ok_or_else(|| parse_error("cut needs a byte count, e.g. cut 100".into()))?;
            FaultKind::CutAfter(parse_amount(n)?)
        }
        other => {
            return Err(parse_error(format!(
                "unknown command or fault {}; try help",
                shown(other)
            )))
        }
    };
    let mut direction = None;
    let mut scope = None;
    let mut proxy = None;
    for w in words {
        let twice = |what: &str| parse_error(format!("{what} given twice"));
        match w {
            "up" | "down" | "both" if direction.is_some() => return Err(twice("direction")),
            "up" => direction = Some(Direction::Up),
            "down" => direction = Some(Direction::Down),
            "both" => direction = Some(Direction::Both),
            "all" | "newest" if scope.is_some() => return Err(twice("all/newest")),
            "all" => scope = Some(Scope::All),
            "newest" => scope = Some(Scope::Newest),
            _ => match w.strip_prefix('@') {
                Some(_) if proxy.is_some() => return Err(twice("@PROXY")),
                Some(sel) => proxy = Some(parse_selector(sel)?),
                None => {
                    return Err(parse_error(format!(
                        "unexpected {} after {}; expected up|down|both, all|newest or @PROXY",
                        shown(w),
                        kind.name()
                    )))
                }
            },
        }
    }
    Ok(ControlCommand::Fault {
        spec: FaultSpec::new(
            kind,
            direction.unwrap_or(Direction::Both),
            scope.unwrap_or(Scope::All),
        ),
        proxy,
    })
}

fn parse_selector(sel: &str) -> Result<ProxySelector, ChaosError> {
    if let Ok(i) = sel.parse::<usize>() {
        return Ok(ProxySelector::Index(i));
    }
    sel.parse::<SocketAddr>()
        .map(ProxySelector::Addr)
        .map_err(|_| {
            parse_error(format!(
                "{} names no proxy; use @INDEX (from 0) or @LISTEN_ADDR",
                shown(sel)
            ))
        })
}

/// Escapes `s` as a JSON string, quotes included.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn error_reply(msg: &str) -> String {
    format!("{{\"ok\":false,\"error\":{}}}", json_string(msg))
}

/// Picks the proxies a command addresses, with their indexes.
fn select(
    proxies: &[Arc<Proxy>],
    sel: Option<ProxySelector>,
) -> Result<Vec<(usize, &Arc<Proxy>)>, String> {
    let all = proxies.iter().enumerate();
    let chosen: Vec<_> = match sel {
        None => all.collect(),
        Some(ProxySelector::Index(i)) => all.filter(|(n, _)| *n == i).collect(),
        Some(ProxySelector::Addr(a)) => all.filter(|(_, p)| p.addr() == a).collect(),
    };
    match (sel, chosen.is_empty()) {
        (Some(ProxySelector::Index(i)), true) => Err(format!(
            "no proxy @{i}; there are {} (from @0)",
            proxies.len()
        )),
        (Some(ProxySelector::Addr(a)), true) => Err(format!("no proxy listens on {a}")),
        _ => Ok(chosen),
    }
}

/// Runs a parsed command against `proxies`; returns the JSON reply line
/// (without its newline).
pub fn execute(proxies: &[Arc<Proxy>], command: &ControlCommand) -> String {
    match command {
        ControlCommand::Fault { spec, proxy } => match select(proxies, *proxy) {
            Ok(chosen) => {
                let hit: usize = chosen.iter().map(|(_, p)| p.apply(*spec)).sum();
                format!(
                    "{{\"ok\":true,\"fault\":{},\"hit\":{hit}}}",
                    json_string(&spec.to_string())
                )
            }
            Err(e) => error_reply(&e),
        },
        ControlCommand::Stats { proxy } => match select(proxies, *proxy) {
            Ok(chosen) => {
                let each: Vec<String> = chosen
                    .iter()
                    .map(|(i, p)| {
                        let json = p.stats().to_json();
                        format!("{{\"proxy\":{i},{}", json.get(1..).unwrap_or("}"))
                    })
                    .collect();
                format!("{{\"ok\":true,\"stats\":[{}]}}", each.join(","))
            }
            Err(e) => error_reply(&e),
        },
        ControlCommand::Help => {
            let lines: Vec<String> = HELP.iter().map(|l| json_string(l)).collect();
            format!("{{\"ok\":true,\"help\":[{}]}}", lines.join(","))
        }
        ControlCommand::Quit => "{\"ok\":true,\"bye\":true}".to_owned(),
    }
}

/// Parses and runs one request line; returns the reply and whether to
/// close the connection.
pub fn respond(proxies: &[Arc<Proxy>], line: &str) -> (String, bool) {
    match parse_command(line) {
        Ok(cmd) => (execute(proxies, &cmd), cmd == ControlCommand::Quit),
        Err(e) => (error_reply(&e.to_string()), false),
    }
}

/// Limits of the control server.
#[derive(Clone, Copy, Debug)]
pub struct ControlOptions {
    /// Serve on a non-loopback address too (anyone who can reach it can
    /// break your links).
    pub allow_remote: bool,
    /// The longest request line, in bytes.
    pub max_line: usize,
    /// How many control connections may be open at once.
    pub max_connections: usize,
}

impl Default for ControlOptions {
    fn default() -> Self {
        ControlOptions {
            allow_remote: false,
            max_line: 1024,
            max_connections: 16,
        }
    }
}

/// A running control server; dropping it stops it and closes its
/// connections.
#[derive(Debug)]
pub struct ControlServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Serves the control API for `proxies` on `addr` (refused unless it is
    /// a loopback address or [`ControlOptions::allow_remote`] is set).
    pub async fn bind(
        addr: SocketAddr,
        proxies: Vec<Arc<Proxy>>,
        options: ControlOptions,
    ) -> Result<ControlServer, ChaosError> {
        if !addr.ip().is_loopback() && !options.allow_remote {
            return Err(ChaosError::NotLoopback(addr));
        }
        let io = |what: String| move |source| ChaosError::Io { what, source };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(io(format!("could not listen on {addr}")))?;
        let bound = listener
            .local_addr()
            .map_err(io("could not read the bound address".into()))?;
        let task = tokio::spawn(serve(listener, Arc::new(proxies), options));
        Ok(ControlServer { addr: bound, task })
    }

    /// Where the control API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, proxies: Arc<Vec<Arc<Proxy>>>, options: ControlOptions) {
    let permits = Arc::new(Semaphore::new(options.max_connections));
    // Dropping the set (when this task is aborted) aborts the sessions.
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(target: "holdfast::chaos", "control accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let reply = error_reply("too many control connections");
            let _ = stream.write_all(format!("{reply}\n").as_bytes()).await;
            continue;
        };
        let proxies = proxies.clone();
        sessions.spawn(async move {
            let _permit = permit;
            if let Err(e) = session(stream, &proxies, options.max_line).await {
                tracing::debug!(target: "holdfast::chaos", "control connection: {e}");
            }
        });
    }
}

/// What reading a bounded line found.
enum LineRead {
    Line,
    TooLong,
    Eof,
}

/// Reads up to a newline into `line`, never keeping more than `max` bytes:
/// a longer line is consumed to its end and reported as too long.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    line: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    line.clear();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => LineRead::TooLong,
                (false, true) => LineRead::Eof,
                (false, false) => LineRead::Line,
            });
        }
        let (take, end) = match buf.iter().position(|b| *b == b'\n') {
            Some(p) => (p, p + 1),
            None => (buf.len(), buf.len()),
        };
        if !too_long {
            if line.len() + take > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(&buf[..take]);
            }
        }
        let newline = end > take;
        reader.consume(end);
        if newline {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

async fn session(
    mut stream: TcpStream,
    proxies: &[Arc<Proxy>],
    max_line: usize,
) -> std::io::Result<()> {
    // One write per reply, sent at once (no Nagle wait for the last ACK).
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.split();
    let mut reader = BufReader::with_capacity(4096, read);
    let mut line = Vec::with_capacity(256);
    loop {
        let (reply, close) = match read_line(&mut reader, max_line, &mut line).await? {
            LineRead::Eof => return Ok(()),
            LineRead::TooLong => (
                error_reply(&format!("line longer than {max_line} bytes")),
                false,
            ),
            LineRead::Line => match std::str::from_utf8(&line) {
                Err(_) => (error_reply("not UTF-8"), false),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => respond(proxies, text.trim()),
            },
        };
        let mut reply = reply;
        reply.push('\n');
        write.write_all(reply.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}
