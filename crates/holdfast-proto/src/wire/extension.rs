//! The LOGIN extension area and the values of the fence exchange.
//!
//! A LOGIN may carry, after its 60 bytes of fixed fields, an extension area
//! of at most [`super::frame::MAX_LOGIN_EXTENSION`] bytes: a list of records
//! `type u16 | length u16 | value[length]` (PROTOCOL.md §5.2.1). A receiver
//! skips record types it does not know, so new records need no new version.
//! A record that runs past the end of the area is `Malformed`. Version 1
//! defines one record:
//!
//! * type 1, `HOST` (length 24): the initiator machine's 16-byte host id
//!   (never all zero) and its fencing epoch (u64). A login that carries it
//!   is *multipath-capable*: the target promises a command quiesce time for
//!   it and fences it on request (PROTOCOL.md §11.4–§11.5).
//!
//! The FENCE / FENCE_DONE frames carry a [`HostId`] and answer with a
//! [`FenceResult`].

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::error::ProtocolError;

use super::codes::ErrorCode;

/// The record type of the HOST record.
pub const RECORD_HOST: u16 = 1;
/// The length of the HOST record's value: host id (16) and epoch (8).
pub const HOST_RECORD_LEN: u16 = 24;
/// The size of a record's header (type and length).
pub const RECORD_HEADER_LEN: usize = 4;

/// Names an initiator machine (like an NVMe host NQN), the same on every
/// path and node it logs in to. Never all zero on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub [u8; 16]);

impl HostId {
    /// True for the all-zero id, which names no host.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "H")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The HOST record of a LOGIN: who logs in, at which fencing epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostRecord {
    /// The initiator machine.
    pub host: HostId,
    /// Its fencing epoch: sessions it creates carry it, and a fence at a
    /// higher epoch ends them.
    pub epoch: u64,
}

/// Parses a LOGIN's extension area. Unknown record types are skipped; a
/// record that runs past the end, a HOST record of the wrong length or
/// with an all-zero host, or a second HOST record, is `Malformed`.
pub(crate) fn parse_extensions(area: &[u8]) -> Result<Option<HostRecord>, ProtocolError> {
    let mut rest = area;
    let mut host = None;
    while !rest.is_empty() {
        let Some((header, body)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() else {
            return Err(malformed(format!(
                "a LOGIN extension record header of {} bytes runs past the area's end",
                rest.len()
            )));
        };
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let Some((value, after)) = body.split_at_checked(len) else {
            return Err(malformed(format!(
                "LOGIN extension record type {kind} of length {len} runs past the area's end \
                 ({} bytes left)",
                body.len()
            )));
        };
        if kind == RECORD_HOST {
            if host.is_some() {
                return Err(malformed("a LOGIN carries two HOST records"));
            }
            host = Some(parse_host(value)?);
        }
        rest = after;
    }
    Ok(host)
}

fn parse_host(value: &[u8]) -> Result<HostRecord, ProtocolError> {
    let Some((id, epoch)) = value
        .split_first_chunk::<16>()
        .and_then(|(id, rest)| Some((id, rest.first_chunk::<8>()?)))
        .filter(|_| value.len() == usize::from(HOST_RECORD_LEN))
    else {
        return Err(malformed(format!(
            "a HOST record has length {}, not {HOST_RECORD_LEN}",
            value.len()
        )));
    };
    let host = HostId(*id);
    if host.is_zero() {
        return Err(malformed("a HOST record names the all-zero host"));
    }
    Ok(HostRecord {
        host,
        epoch: u64::from_be_bytes(*epoch),
    })
}

/// Writes the extension area for a LOGIN carrying `host`.
pub(crate) fn write_extensions(host: Option<&HostRecord>, out: &mut BytesMut) {
    if let Some(h) = host {
        out.put_u16(RECORD_HOST);
        out.put_u16(HOST_RECORD_LEN);
        out.put_slice(&h.host.0);
        out.put_u64(h.epoch);
    }
}

fn malformed(text: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::Malformed, text)
}

/// The outcome of a fence, carried by FENCE_DONE (PROTOCOL.md §11.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FenceResult {
    /// Confirmed: every command of every session of the host with a lower
    /// epoch on the fenced node has finished or will never start.
    Fenced,
    /// The node could not confirm (no live peer link to the node named, or
    /// no answer in time): fence by waiting out the quiesce time instead.
    Unreachable,
    /// The request is not valid (an all-zero host, epoch 0).
    Refused,
    /// A result this implementation does not know (kept verbatim); treat
    /// it as [`FenceResult::Unreachable`].
    Other(u16),
}

impl FenceResult {
    /// The result's wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            FenceResult::Fenced => 0,
            FenceResult::Unreachable => 1,
            FenceResult::Refused => 2,
            FenceResult::Other(v) => v,
        }
    }

    /// Decodes a wire value; unknown values are kept as [`FenceResult::Other`].
    pub fn from_wire(v: u16) -> Self {
        match v {
            0 => FenceResult::Fenced,
            1 => FenceResult::Unreachable,
            2 => FenceResult::Refused,
            other => FenceResult::Other(other),
        }
    }

    /// True only for a confirmed fence.
    pub fn is_fenced(self) -> bool {
        self == FenceResult::Fenced
    }
}

impl fmt::Display for FenceResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            FenceResult::Fenced => "fenced: the old node confirmed",
            FenceResult::Unreachable => "unreachable: wait out the quiesce time instead",
            FenceResult::Refused => "refused: the fence request is not valid",
            FenceResult::Other(_) => "unknown result (treated as unreachable)",
        };
        write!(f, "{text} (result {})", self.to_wire())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = kind.to_be_bytes().to_vec();
        v.extend_from_slice(&(value.len() as u16).to_be_bytes());
        v.extend_from_slice(value);
        v
    }

    fn host_value(id: u8, epoch: u64) -> Vec<u8> {
        let mut v = vec![id; 16];
        v.extend_from_slice(&epoch.to_be_bytes());
        v
    }

    #[test]
    fn unknown_records_are_skipped_around_a_host_record() {
        let mut area = record(7, b"whatever");
        area.extend(record(RECORD_HOST, &host_value(9, 3)));
        area.extend(record(0xffff, &[]));
        let host = parse_extensions(&area).expect("parses").expect("a host");
        assert_eq!(host.host, HostId([9; 16]));
        assert_eq!(host.epoch, 3);
        assert_eq!(parse_extensions(&record(5, &[1, 2])).expect("parses"), None);
        assert_eq!(parse_extensions(&[]).expect("parses"), None);
    }

    #[test]
    fn bad_records_are_malformed() {
        let mut past_end = record(7, b"abc");
        past_end.truncate(past_end.len() - 1);
        let mut two = record(RECORD_HOST, &host_value(1, 1));
        two.extend(record(RECORD_HOST, &host_value(2, 1)));
        let cases: Vec<Vec<u8>> = vec![
            vec![0, 1, 0],
            past_end,
            record(RECORD_HOST, &host_value(1, 1)[..23]),
            record(RECORD_HOST, &[host_value(1, 1), vec![0]].concat()),
            record(RECORD_HOST, &host_value(0, 1)),
            two,
        ];
        for area in cases {
            let e = parse_extensions(&area).expect_err("malformed");
            assert_eq!(e.code(), ErrorCode::Malformed, "{area:?}: {e}");
        }
    }
}
