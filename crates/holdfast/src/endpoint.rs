//! Parsing an [`Endpoint`] from text, as command lines and configuration
//! files give it: `HOST:PORT` or `tcp://HOST:PORT` for TCP, `unix:PATH` or
//! `unix://PATH` for a Unix socket. [`Endpoint`]'s `Display` writes a form
//! this reads back.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

use crate::transport::Endpoint;

/// Why a text is not an [`Endpoint`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{text:?} is not an endpoint: {why}; write HOST:PORT, tcp://HOST:PORT or unix:PATH")]
pub struct EndpointParseError {
    text: String,
    why: String,
}

impl EndpointParseError {
    fn new(text: &str, why: impl Into<String>) -> Self {
        EndpointParseError {
            text: text.to_owned(),
            why: why.into(),
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointParseError;

    /// Parses `HOST:PORT`, `tcp://HOST:PORT`, `unix:PATH` or `unix://PATH`.
    /// A host that is not an IP address is resolved now (a blocking name
    /// lookup) and its first address taken.
    fn from_str(text: &str) -> Result<Endpoint, EndpointParseError> {
        let t = text.trim();
        if let Some(path) = t
            .strip_prefix("unix://")
            .or_else(|| t.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(EndpointParseError::new(text, "no socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let addr = t.strip_prefix("tcp://").unwrap_or(t);
        if let Ok(a) = addr.parse::<SocketAddr>() {
            return Ok(Endpoint::Tcp(a));
        }
        if !addr.contains(':') {
            return Err(EndpointParseError::new(text, "no port"));
        }
        addr.to_socket_addrs()
            .map_err(|e| EndpointParseError::new(text, e.to_string()))?
            .next()
            .map(Endpoint::Tcp)
            .ok_or_else(|| EndpointParseError::new(text, "the name resolves to no address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_display_round_trips() {
        let tcp = Endpoint::Tcp("127.0.0.1:7400".parse().expect("addr"));
        assert_eq!("127.0.0.1:7400".parse::<Endpoint>(), Ok(tcp.clone()));
        assert_eq!("tcp://127.0.0.1:7400".parse::<Endpoint>(), Ok(tcp.clone()));
        assert_eq!(tcp.to_string().parse::<Endpoint>(), Ok(tcp));
        let unix = Endpoint::Unix("/tmp/x.sock".into());
        assert_eq!("unix:/tmp/x.sock".parse::<Endpoint>(), Ok(unix.clone()));
        assert_eq!("unix:///tmp/x.sock".parse::<Endpoint>(), Ok(unix.clone()));
        assert_eq!(unix.to_string().parse::<Endpoint>(), Ok(unix));
        assert_eq!(
            "[::1]:9".parse::<Endpoint>(),
            Ok(Endpoint::Tcp("[::1]:9".parse().expect("addr")))
        );
        for bad in ["unix:", "nowhere", "", "tcp://", "1.2.3.4:notaport"] {
            let e = bad.parse::<Endpoint>().expect_err(bad);
            assert!(e.to_string().contains("HOST:PORT"), "{e}");
        }
    }
}
