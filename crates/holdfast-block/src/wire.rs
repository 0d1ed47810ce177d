//! The block protocol's encoding, carried as holdfast command payloads.
//!
//! Every request is one holdfast command; its response payload is the block
//! response. All integers are big-endian.
//!
//! Request (16-byte header, then the data of a WRITE):
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0      | magic/version, [`MAGIC`] (`0xB1`: block protocol version 1)   |
//! | 1      | opcode ([`Opcode`])                                          |
//! | 2..4   | flags: bit 0 = FUA (WRITE, TRIM, WRITE_ZEROES only); every other bit must be 0 |
//! | 4..12  | offset (0 for FLUSH and INFO)                                |
//! | 12..16 | length (0 for FLUSH and INFO; the data length for WRITE)     |
//! | 16..   | WRITE: exactly `length` bytes of data; nothing otherwise      |
//!
//! Response (2-byte header, then a body):
//!
//! | bytes | field                                                         |
//! |-------|---------------------------------------------------------------|
//! | 0     | [`MAGIC`]                                                     |
//! | 1     | status: 0 ok, 1 out of range, 2 invalid, 3 read-only, 4 no space, 5 I/O error |
//! | 2..   | ok: READ → the data; INFO → [`Info`] (20 bytes); others → empty. Out of range → offset u64, length u64, size u64. Invalid and I/O error → message length u16 + UTF-8 message. Read-only, no space → empty. |
//!
//! Decoding is bounded and checked: every length is validated against the
//! bytes present and the configured maximum request before anything is
//! allocated, and any malformed input yields a [`WireError`], never a panic.
//! Decoded WRITE data and READ data are [`Bytes`] slices of the payload (no
//! copy). Encoding copies once: a holdfast payload is one contiguous buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::device::BlockError;

/// The first byte of every request and response: the block protocol,
/// version 1.
pub const MAGIC: u8 = 0xB1;

/// Length of a request header.
pub const REQUEST_HEADER_LEN: usize = 16;

/// Length of a response header.
pub const RESPONSE_HEADER_LEN: usize = 2;

/// Length of an encoded [`Info`].
pub const INFO_LEN: usize = 20;

/// The FUA flag bit: the write is durable when its response is sent.
pub const FLAG_FUA: u16 = 1;

/// The default largest request (READ or WRITE data, TRIM or WRITE_ZEROES
/// range): 2 MiB. With its header it fits holdfast's default frame limit
/// (4 MiB of payload) with room to spare, so one session's full credit window
/// of such requests stays at a few hundred MiB.
pub const DEFAULT_MAX_REQUEST: u32 = 2 * 1024 * 1024;

/// Longest error message carried in a response (longer ones are truncated).
pub const MAX_MESSAGE: usize = 1024;

/// Room left in a holdfast frame for the frame's own fields.
const FRAME_OVERHEAD: u32 = 64;

// The default must fit holdfast's default frame limit, both ways.
const _: () = assert!(
    DEFAULT_MAX_REQUEST as u64 + REQUEST_HEADER_LEN as u64 + FRAME_OVERHEAD as u64
        <= holdfast::proto::config::DEFAULT_MAX_FRAME as u64
);

/// The largest request whose encoding (and whose READ response) fits a
/// holdfast frame limit of `max_frame` bytes.
pub fn max_request_for_frame(max_frame: u32) -> u32 {
    max_frame.saturating_sub(FRAME_OVERHEAD + REQUEST_HEADER_LEN as u32)
}

/// Why a payload could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the fixed part needs.
    #[error("truncated: {needed} bytes needed, {got} present")]
    Truncated {
        /// Bytes the fixed part needs.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The first byte is not [`MAGIC`].
    #[error("bad magic/version byte {0:#04x} (expected {MAGIC:#04x})")]
    BadMagic(u8),
    /// An opcode this version does not know.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// Flags that are unknown or not allowed for the opcode.
    #[error("flags {flags:#06x} are not allowed for {opcode:?}")]
    BadFlags {
        /// The opcode.
        opcode: Opcode,
        /// The flags sent.
        flags: u16,
    },
    /// A field that must be zero for this opcode is not.
    #[error("{opcode:?} must have offset and length 0 (got {offset}+{len})")]
    NonZeroRange {
        /// The opcode.
        opcode: Opcode,
        /// The offset sent.
        offset: u64,
        /// The length sent.
        len: u32,
    },
    /// The request exceeds the largest the target accepts.
    #[error("request of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Requested length.
        len: u32,
        /// The maximum.
        max: u32,
    },
    /// The payload is not as long as its header says.
    #[error("payload carries {got} bytes after the header, {expected} expected")]
    LengthMismatch {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// A status this version does not know.
    #[error("unknown response status {0}")]
    UnknownStatus(u8),
    /// INFO fields that make no sense.
    #[error("invalid INFO: {0}")]
    BadInfo(&'static str),
}

/// A block operation code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Read a range.
    Read = 1,
    /// Write data.
    Write = 2,
    /// Make completed writes durable.
    Flush = 3,
    /// Declare a range unused.
    Trim = 4,
    /// Write zeroes over a range.
    WriteZeroes = 5,
    /// Ask for the device's size and limits.
    Info = 6,
}

impl Opcode {
    /// The opcode for a wire value.
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            1 => Opcode::Read,
            2 => Opcode::Write,
            3 => Opcode::Flush,
            4 => Opcode::Trim,
            5 => Opcode::WriteZeroes,
            6 => Opcode::Info,
            _ => return None,
        })
    }

    /// The flags this opcode may carry.
    fn allowed_flags(self) -> u16 {
        match self {
            Opcode::Write | Opcode::Trim | Opcode::WriteZeroes => FLAG_FUA,
            Opcode::Read | Opcode::Flush | Opcode::Info => 0,
        }
    }
}

/// A decoded block request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at `offset`.
    Read {
        /// Start.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write `data` at `offset`; with `fua`, durable before the response.
    Write {
        /// Start.
        offset: u64,
        /// The data (a slice of the command payload when decoded).
        data: Bytes,
        /// Force unit access.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Declare `len` bytes at `offset` unused.
    Trim {
        /// Start.
        offset: u64,
        /// Length.
        len: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Write `len` zero bytes at `offset`.
    WriteZeroes {
        /// Start.
        offset: u64,
        /// Length.
        len: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Ask for the device's [`Info`].
    Info,
}

impl Request {
    /// The request's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Read { .. } => Opcode::Read,
            Request::Write { .. } => Opcode::Write,
            Request::Flush => Opcode::Flush,
            Request::Trim { .. } => Opcode::Trim,
            Request::WriteZeroes { .. } => Opcode::WriteZeroes,
            Request::Info => Opcode::Info,
        }
    }

    /// The byte range the request touches, as (offset, length); `None` for
    /// FLUSH and INFO.
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            Request::Read { offset, len }
            | Request::Trim { offset, len, .. }
            | Request::WriteZeroes { offset, len, .. } => Some((*offset, u64::from(*len))),
            Request::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            Request::Flush | Request::Info => None,
        }
    }

    /// True if the request changes the device's contents.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Write { .. } | Request::Trim { .. } | Request::WriteZeroes { .. }
        )
    }

    /// Encodes the request as a command payload.
    ///
    /// A WRITE longer than `u32::MAX` bytes cannot be expressed; its length
    /// field saturates and the target refuses it (callers split long writes,
    /// as [`crate::Volume`] does).
    pub fn encode(&self) -> Bytes {
        let (offset, len, flags, data): (u64, u32, u16, &[u8]) = match self {
            Request::Read { offset, len } => (*offset, *len, 0, &[]),
            Request::Write { offset, data, fua } => (
                *offset,
                u32::try_from(data.len()).unwrap_or(u32::MAX),
                fua_flag(*fua),
                data,
            ),
            Request::Flush | Request::Info => (0, 0, 0, &[]),
            Request::Trim { offset, len, fua } | Request::WriteZeroes { offset, len, fua } => {
                (*offset, *len, fua_flag(*fua), &[])
            }
        };
        let mut out = BytesMut::with_capacity(REQUEST_HEADER_LEN + data.len());
        out.put_u8(MAGIC);
        out.put_u8(self.opcode() as u8);
        out.put_u16(flags);
        out.put_u64(offset);
        out.put_u32(len);
        out.put_slice(data);
        out.freeze()
    }

    /// Decodes a command payload, refusing any request longer than
    /// `max_request` bytes.
    pub fn decode(payload: &Bytes, max_request: u32) -> Result<Request, WireError> {
        if payload.len() < REQUEST_HEADER_LEN {
            return Err(WireError::Truncated {
                needed: REQUEST_HEADER_LEN,
                got: payload.len(),
            });
        }
        let mut h = &payload[..REQUEST_HEADER_LEN];
        let magic = h.get_u8();
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let raw_op = h.get_u8();
        let opcode = Opcode::from_u8(raw_op).ok_or(WireError::UnknownOpcode(raw_op))?;
        let flags = h.get_u16();
        let offset = h.get_u64();
        let len = h.get_u32();
        if flags & !opcode.allowed_flags() != 0 {
            return Err(WireError::BadFlags { opcode, flags });
        }
        let fua = flags & FLAG_FUA != 0;
        let body = payload.len() - REQUEST_HEADER_LEN;
        let expected_body = if opcode == Opcode::Write { len } else { 0 };
        if body as u64 != u64::from(expected_body) {
            return Err(WireError::LengthMismatch {
                expected: u64::from(expected_body),
                got: body as u64,
            });
        }
        if matches!(opcode, Opcode::Flush | Opcode::Info) {
            if offset != 0 || len != 0 {
                return Err(WireError::NonZeroRange {
                    opcode,
                    offset,
                    len,
                });
            }
        } else if len > max_request {
            return Err(WireError::TooLarge {
                len,
                max: max_request,
            });
        }
        Ok(match opcode {
            Opcode::Read => Request::Read { offset, len },
            Opcode::Write => Request::Write {
                offset,
                data: payload.slice(REQUEST_HEADER_LEN..),
                fua,
            },
            Opcode::Flush => Request::Flush,
            Opcode::Trim => Request::Trim { offset, len, fua },
            Opcode::WriteZeroes => Request::WriteZeroes { offset, len, fua },
            Opcode::Info => Request::Info,
        })
    }
}

fn fua_flag(fua: bool) -> u16 {
    if fua {
        FLAG_FUA
    } else {
        0
    }
}

/// What the target tells a client about the device (the INFO response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// Size in bytes.
    pub size: u64,
    /// True if writes are refused.
    pub read_only: bool,
    /// Preferred block size: requests aligned to it are efficient, and a
    /// device opened with O_DIRECT requires it. A power of two.
    pub block_size: u32,
    /// The largest request the target accepts (READ and WRITE data, TRIM and
    /// WRITE_ZEROES ranges).
    pub max_request: u32,
}

impl Info {
    /// Encodes the INFO body: size u64, flags u32 (bit 0 read-only),
    /// block size u32, max request u32.
    pub fn encode(&self) -> [u8; INFO_LEN] {
        let mut out = [0u8; INFO_LEN];
        let mut w = &mut out[..];
        w.put_u64(self.size);
        w.put_u32(u32::from(self.read_only));
        w.put_u32(self.block_size);
        w.put_u32(self.max_request);
        out
    }

    /// Decodes and checks an INFO body. Unknown flag bits are ignored (they
    /// can only describe the device, never change a request's meaning).
    pub fn decode(body: &[u8]) -> Result<Info, WireError> {
        if body.len() != INFO_LEN {
            return Err(WireError::LengthMismatch {
                expected: INFO_LEN as u64,
                got: body.len() as u64,
            });
        }
        let mut r = body;
        let info = Info {
            size: r.get_u64(),
            read_only: r.get_u32() & 1 != 0,
            block_size: r.get_u32(),
            max_request: r.get_u32(),
        };
        if !info.block_size.is_power_of_two() {
            return Err(WireError::BadInfo("block size is not a power of two"));
        }
        if info.max_request < info.block_size {
            return Err(WireError::BadInfo(
                "max request is smaller than the block size",
            ));
        }
        Ok(info)
    }
}

/// Response status codes.
mod status {
    pub(super) const OK: u8 = 0;
    pub(super) const OUT_OF_RANGE: u8 = 1;
    pub(super) const INVALID: u8 = 2;
    pub(super) const READ_ONLY: u8 = 3;
    pub(super) const NO_SPACE: u8 = 4;
    pub(super) const IO: u8 = 5;
}

/// Encodes a successful response with `body` (READ data, an INFO body, or
/// nothing).
pub fn encode_ok(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(RESPONSE_HEADER_LEN + body.len());
    out.put_u8(MAGIC);
    out.put_u8(status::OK);
    out.put_slice(body);
    out.freeze()
}

/// Encodes an error response. Messages longer than [`MAX_MESSAGE`] bytes
/// are truncated (at a character boundary).
pub fn encode_err(error: &BlockError) -> Bytes {
    let mut out = BytesMut::with_capacity(RESPONSE_HEADER_LEN + 24);
    out.put_u8(MAGIC);
    let put_message = |out: &mut BytesMut, m: &str| {
        let mut end = m.len().min(MAX_MESSAGE);
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        // `end` <= MAX_MESSAGE, which fits a u16.
        out.put_u16(end as u16);
        out.put_slice(&m.as_bytes()[..end]);
    };
    match error {
        BlockError::OutOfRange { offset, len, size } => {
            out.put_u8(status::OUT_OF_RANGE);
            out.put_u64(*offset);
            out.put_u64(*len);
            out.put_u64(*size);
        }
        BlockError::Invalid(m) => {
            out.put_u8(status::INVALID);
            put_message(&mut out, m);
        }
        BlockError::ReadOnly => out.put_u8(status::READ_ONLY),
        BlockError::NoSpace => out.put_u8(status::NO_SPACE),
        BlockError::Io(m) => {
            out.put_u8(status::IO);
            put_message(&mut out, m);
        }
        // A target does not cancel its own work; if a device says so
        // anyway, the client sees an I/O error that names it.
        e @ BlockError::Withdrawn(_) => {
            out.put_u8(status::IO);
            put_message(&mut out, &e.to_string());
        }
    }
    out.freeze()
}

/// Decodes a response payload: `Ok(Ok(body))` for success (the body is a
/// slice of `payload`), `Ok(Err(e))` for an error the target reported, and
/// `Err` for a payload that is not a valid response.
pub fn decode_response(payload: &Bytes) -> Result<Result<Bytes, BlockError>, WireError> {
    if payload.len() < RESPONSE_HEADER_LEN {
        return Err(WireError::Truncated {
            needed: RESPONSE_HEADER_LEN,
            got: payload.len(),
        });
    }
    if payload[0] != MAGIC {
        return Err(WireError::BadMagic(payload[0]));
    }
    let code = payload[1];
    let mut body = &payload[RESPONSE_HEADER_LEN..];
    let exact = |body: &[u8], n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(WireError::LengthMismatch {
                expected: n as u64,
                got: body.len() as u64,
            })
        }
    };
    let message = |mut body: &[u8]| -> Result<String, WireError> {
        if body.len() < 2 {
            return Err(WireError::Truncated {
                needed: RESPONSE_HEADER_LEN + 2,
                got: RESPONSE_HEADER_LEN + body.len(),
            });
        }
        let n = usize::from(body.get_u16());
        exact(body, n)?;
        Ok(String::from_utf8_lossy(body).into_owned())
    };
    let error = match code {
        status::OK => return Ok(Ok(payload.slice(RESPONSE_HEADER_LEN..))),
        status::OUT_OF_RANGE => {
            exact(body, 24)?;
            BlockError::OutOfRange {
                offset: body.get_u64(),
                len: body.get_u64(),
                size: body.get_u64(),
            }
        }
        status::INVALID => BlockError::Invalid(message(body)?),
        status::READ_ONLY => {
            exact(body, 0)?;
            BlockError::ReadOnly
        }
        status::NO_SPACE => {
            exact(body, 0)?;
            BlockError::NoSpace
        }
        status::IO => BlockError::Io(message(body)?),
        other => return Err(WireError::UnknownStatus(other)),
    };
    Ok(Err(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_requests() -> Vec<Request> {
        vec![
            Request::Read {
                offset: 4096,
                len: 512,
            },
            Request::Write {
                offset: u64::MAX - 3,
                data: Bytes::from_static(b"abc"),
                fua: true,
            },
            Request::Write {
                offset: 0,
                data: Bytes::new(),
                fua: false,
            },
            Request::Flush,
            Request::Trim {
                offset: 7,
                len: 9,
                fua: false,
            },
            Request::WriteZeroes {
                offset: 1 << 40,
                len: DEFAULT_MAX_REQUEST,
                fua: true,
            },
            Request::Info,
        ]
    }

    #[test]
    fn requests_round_trip() {
        for r in all_requests() {
            let enc = r.encode();
            assert_eq!(Request::decode(&enc, DEFAULT_MAX_REQUEST), Ok(r));
        }
    }

    #[test]
    fn write_data_is_a_slice_of_the_payload() {
        let enc = Request::Write {
            offset: 0,
            data: Bytes::from_static(b"zero-copy"),
            fua: false,
        }
        .encode();
        let Ok(Request::Write { data, .. }) = Request::decode(&enc, DEFAULT_MAX_REQUEST) else {
            panic!("not a write");
        };
        assert_eq!(data.as_ptr(), enc[REQUEST_HEADER_LEN..].as_ptr());
    }

    #[test]
    fn every_truncation_is_an_error() {
        for r in all_requests() {
            let enc = r.encode();
            for n in 0..enc.len() {
                assert!(Request::decode(&enc.slice(..n), DEFAULT_MAX_REQUEST).is_err());
            }
        }
    }

    fn header(magic: u8, op: u8, flags: u16, offset: u64, len: u32) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(magic);
        b.put_u8(op);
        b.put_u16(flags);
        b.put_u64(offset);
        b.put_u32(len);
        b
    }

    #[test]
    fn malformed_requests_are_refused() {
        let max = 1024;
        let decode = |b: BytesMut| Request::decode(&b.freeze(), max);
        assert_eq!(
            decode(header(0xB2, 1, 0, 0, 1)),
            Err(WireError::BadMagic(0xB2))
        );
        assert_eq!(
            decode(header(MAGIC, 0, 0, 0, 1)),
            Err(WireError::UnknownOpcode(0))
        );
        assert_eq!(
            decode(header(MAGIC, 7, 0, 0, 1)),
            Err(WireError::UnknownOpcode(7))
        );
        assert!(matches!(
            decode(header(MAGIC, 1, FLAG_FUA, 0, 1)),
            Err(WireError::BadFlags { .. })
        ));
        assert!(matches!(
            decode(header(MAGIC, 2, 0x8000, 0, 0)),
            Err(WireError::BadFlags { .. })
        ));
        assert!(matches!(
            decode(header(MAGIC, 3, 0, 1, 0)),
            Err(WireError::NonZeroRange { .. })
        ));
        assert!(matches!(
            decode(header(MAGIC, 6, 0, 0, 1)),
            Err(WireError::NonZeroRange { .. })
        ));
        assert_eq!(
            decode(header(MAGIC, 1, 0, 0, max + 1)),
            Err(WireError::TooLarge { len: max + 1, max })
        );
        assert!(decode(header(MAGIC, 4, 0, 0, max)).is_ok());
        // A WRITE whose data is shorter or longer than its length field.
        let mut w = header(MAGIC, 2, 0, 0, 4);
        w.put_slice(b"abc");
        assert!(matches!(decode(w), Err(WireError::LengthMismatch { .. })));
        let mut w = header(MAGIC, 2, 0, 0, 2);
        w.put_slice(b"abc");
        assert!(matches!(decode(w), Err(WireError::LengthMismatch { .. })));
        // A WRITE announcing more than the maximum, however much follows.
        assert!(decode(header(MAGIC, 2, 0, 0, u32::MAX)).is_err());
        // Trailing bytes after a READ.
        let mut r = header(MAGIC, 1, 0, 0, 4);
        r.put_u8(0);
        assert!(matches!(decode(r), Err(WireError::LengthMismatch { .. })));
    }

    #[test]
    fn responses_round_trip() {
        let ok = encode_ok(b"data");
        assert_eq!(decode_response(&ok), Ok(Ok(Bytes::from_static(b"data"))));
        assert_eq!(decode_response(&encode_ok(b"")), Ok(Ok(Bytes::new())));
        for e in [
            BlockError::OutOfRange {
                offset: 1,
                len: 2,
                size: 3,
            },
            BlockError::Invalid("bad".into()),
            BlockError::ReadOnly,
            BlockError::NoSpace,
            BlockError::Io("disk on fire".into()),
            BlockError::Io(String::new()),
        ] {
            assert_eq!(decode_response(&encode_err(&e)), Ok(Err(e)));
        }
    }

    #[test]
    fn long_messages_are_truncated_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let Ok(Err(BlockError::Io(m))) = decode_response(&encode_err(&BlockError::Io(long))) else {
            panic!("not an I/O error");
        };
        assert!(m.len() <= MAX_MESSAGE && m.len() >= MAX_MESSAGE - 1);
        assert!(m.chars().all(|c| c == 'é'));
    }

    #[test]
    fn malformed_responses_are_refused() {
        assert!(decode_response(&Bytes::new()).is_err());
        assert!(decode_response(&Bytes::from_static(&[MAGIC])).is_err());
        assert_eq!(
            decode_response(&Bytes::from_static(&[0, 0])),
            Err(WireError::BadMagic(0))
        );
        assert_eq!(
            decode_response(&Bytes::from_static(&[MAGIC, 99])),
            Err(WireError::UnknownStatus(99))
        );
        // Out of range with a short body; a message longer than its bytes.
        assert!(decode_response(&Bytes::from_static(&[MAGIC, 1, 0, 0])).is_err());
        assert!(decode_response(&Bytes::from_static(&[MAGIC, 5, 0, 9, b'x'])).is_err());
        assert!(decode_response(&Bytes::from_static(&[MAGIC, 5, 0])).is_err());
        assert!(decode_response(&Bytes::from_static(&[MAGIC, 3, 0])).is_err());
        // Invalid UTF-8 in a message is kept, lossily.
        assert_eq!(
            decode_response(&Bytes::from_static(&[MAGIC, 5, 0, 1, 0xff])),
            Ok(Err(BlockError::Io("\u{fffd}".into())))
        );
    }

    #[test]
    fn info_round_trips_and_is_checked() {
        let info = Info {
            size: 1 << 30,
            read_only: true,
            block_size: 4096,
            max_request: DEFAULT_MAX_REQUEST,
        };
        assert_eq!(Info::decode(&info.encode()), Ok(info));
        assert!(Info::decode(&info.encode()[..19]).is_err());
        let bad_block = Info {
            block_size: 3000,
            ..info
        };
        assert!(Info::decode(&bad_block.encode()).is_err());
        let bad_max = Info {
            max_request: 512,
            ..info
        };
        assert!(Info::decode(&bad_max.encode()).is_err());
        let zero = Info {
            block_size: 0,
            ..info
        };
        assert!(Info::decode(&zero.encode()).is_err());
    }

    #[test]
    fn the_frame_limit_bounds_the_request_size() {
        let frame = holdfast::TargetConfig::default().max_frame;
        assert!(DEFAULT_MAX_REQUEST <= max_request_for_frame(frame));
        assert_eq!(max_request_for_frame(10), 0);
    }

    /// Random bytes (a fixed xorshift sequence) never make a decoder panic,
    /// and whatever decodes re-encodes to the same bytes.
    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && !b.is_empty() {
                b[0] = MAGIC;
                if b.len() > 1 {
                    b[1] = (next() % 8) as u8;
                }
            }
            let b = Bytes::from(b);
            if let Ok(r) = Request::decode(&b, 64) {
                assert_eq!(r.encode(), b);
            }
            let _ = decode_response(&b);
            let _ = Info::decode(&b);
        }
    }
}
