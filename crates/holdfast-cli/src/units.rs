//! Parsing of the human units the command line accepts: sizes (`64M`,
//! `1G`), durations (`500ms`, `2s`, `1m`) and endpoints (`127.0.0.1:7400`,
//! `unix:/run/holdfast.sock`).

use std::time::Duration;

use holdfast::Endpoint;

/// Parses a size: a number with an optional binary suffix K, M, G or T
/// (powers of 1024), optionally followed by `B` or `iB`.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size; try 64M, 1G or 4096"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: a number with a unit `ms`, `s`, `m` or `h` (a bare
/// number means seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a duration; try 500ms, 2s or 1m");
    let (number, scale_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600e3)
    } else {
        (t, 1e3)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(value * scale_ms / 1e3))
}

/// Parses an endpoint: `HOST:PORT` or `tcp://HOST:PORT` for TCP, and
/// `unix:PATH` or `unix://PATH` for a Unix socket.
pub(crate) fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    // The library's parser (holdfast::Endpoint: FromStr), so the CLI and
    // programs built on the crate read endpoints alike.
    text.parse::<Endpoint>().map_err(|e| e.to_string())
}

/// Parses a TCP address `HOST:PORT` (no Unix socket), for listeners that
/// speak HTTP such as `--metrics`.
pub(crate) fn parse_socket_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    match parse_endpoint(text)? {
        Endpoint::Tcp(addr) => Ok(addr),
        _ => Err(format!("{text:?} is not a TCP address HOST:PORT")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("127.0.0.1:7400"),
            Ok(Endpoint::Tcp("127.0.0.1:7400".parse().expect("addr")))
        );
        assert_eq!(
            parse_endpoint("tcp://127.0.0.1:1"),
            Ok(Endpoint::Tcp("127.0.0.1:1".parse().expect("addr")))
        );
        assert_eq!(
            parse_endpoint("unix:/tmp/x.sock"),
            Ok(Endpoint::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            parse_endpoint("unix:///tmp/x.sock"),
            Ok(Endpoint::Unix("/tmp/x.sock".into()))
        );
        assert!(parse_endpoint("unix:").is_err());
        assert!(parse_endpoint("nowhere").is_err());
    }
}
