//! The block protocol's encoding, carried as holdfast command payloads.
//!
//! Every request is one holdfast command; its response payload is the block
//! response. All integers are big-endian.
//!
//! Request (16-byte header, then the volume id if flagged, then the data
//! of a WRITE):
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0      | magic/version, [`MAGIC`] (`0xB1`: block protocol version 1)   |
//! | 1      | opcode ([`Opcode`])                                          |
//! | 2..4   | flags: bit 0 = FUA (WRITE, TRIM, WRITE_ZEROES only); bit 1 = VOLUME_ID (any opcode); bit 2 = PUNCH and bit 3 = FAST (WRITE_ZEROES only, and only to a target whose INFO has the EXTENSIONS bit); every other bit must be 0 |
//! | 4..12  | offset (0 for FLUSH and INFO)                                |
//! | 12..16 | length (0 for FLUSH and INFO; the data length for WRITE)     |
//! | 16..32 | with VOLUME_ID only: the 16-byte id of the volume the request is meant for |
//! | then   | WRITE: exactly `length` bytes of data; nothing otherwise      |
//!
//! Response (2-byte header, then a body):
//!
//! | bytes | field                                                         |
//! |-------|---------------------------------------------------------------|
//! | 0     | [`MAGIC`]                                                     |
//! | 1     | status: 0 ok, 1 out of range, 2 invalid, 3 read-only, 4 no space, 5 I/O error, 6 wrong volume, 7 not supported |
//! | 2..   | ok: READ → the data; INFO → [`Info`] (36 bytes); BLOCK_STATUS → extents; others → empty. Out of range → offset u64, length u64, size u64. Invalid, I/O error and not supported → message length u16 + UTF-8 message. Read-only, no space → empty. Wrong volume → the id the request named (16 bytes), the id the target serves (16 bytes, zero if it has none), its size u64. |
//!
//! Opcodes: 1 READ, 2 WRITE, 3 FLUSH, 4 TRIM, 5 WRITE_ZEROES, 6 INFO, and,
//! only to a target whose INFO has the EXTENSIONS bit, 7 BLOCK_STATUS and
//! 8 CACHE.
//!
//! # Extensions (still block protocol version 1)
//!
//! Added compatibly: a target announces them with the EXTENSIONS bit (bit
//! 2) of INFO's flags, and a client uses none of them unless it saw that
//! bit. A target without them refuses them as unknown (status 2), so a
//! client that ignored the bit fails cleanly, and an old client never
//! meets them.
//!
//! * BLOCK_STATUS (7): offset and length as for READ; the length may
//!   exceed the target's max request (nothing is transferred). The answer
//!   is 1 to [`MAX_EXTENTS`] extents of 8 bytes each, length u32 (not 0)
//!   then flags u32 (bit 0 hole: not allocated; bit 1 zero: reads as
//!   zeroes), consecutive from the offset; together at least 1 byte and
//!   at most the length asked for (a client asks again for the rest).
//! * CACHE (8): offset and length as for BLOCK_STATUS; the target
//!   prefetches the range (a hint: nothing changes). Empty answer.
//! * WRITE_ZEROES flag PUNCH (bit 2): the range may be deallocated
//!   rather than kept allocated. Without it the target keeps the range
//!   allocated, as before.
//! * WRITE_ZEROES flag FAST (bit 3): zero only if that is fast (no zeroes
//!   written one by one); otherwise nothing is done and the answer is
//!   status 7, not supported. Status 7 answers no other request.
//!
//! INFO's flags (u32): bit 0 read-only; bit 1 ALIGNED: offsets and lengths
//! of READ, WRITE, TRIM and WRITE_ZEROES must be multiples of the block
//! size (an O_DIRECT target), others are refused with status 2 and nothing
//! done; bit 2 EXTENSIONS. A client ignores bits it does not know.
//!
//! Volume identity ([`crate::identity`]): INFO reports the volume's id. A
//! request with the VOLUME_ID flag is executed only if the target serves
//! exactly that volume; otherwise (another id, or a target without an id)
//! it is answered with status 6 and nothing is done. A client that learned
//! an id from INFO sends it with every request, so no request (a write
//! re-issued after a stateless recovery included) can land on a different
//! volume than the one the client opened. Requests without the flag are
//! not checked.
//!
//! Decoding is bounded and checked: every length is validated against the
//! bytes present and the configured maximum request before anything is
//! allocated, and any malformed input yields a [`WireError`], never a panic.
//! Decoded WRITE data and READ data are [`Bytes`] slices of the payload (no
//! copy). Encoding copies once: a holdfast payload is one contiguous buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::device::BlockError;
use crate::identity::VolumeId;

/// The first byte of every request and response: the block protocol,
/// version 1.
pub const MAGIC: u8 = 0xB1;

/// Length of a request header.
pub const REQUEST_HEADER_LEN: usize = 16;

/// Length of a response header.
pub const RESPONSE_HEADER_LEN: usize = 2;

/// Length of an encoded [`Info`].
pub const INFO_LEN: usize = 36;

/// Length of an [`Info`] from a target without volume identity (no id
/// field); still decoded.
pub const INFO_LEN_NO_ID: usize = 20;

/// The FUA flag bit: the write is durable when its response is sent.
pub const FLAG_FUA: u16 = 1;

/// The VOLUME_ID flag bit: a 16-byte volume id follows the header, and the
/// target refuses the request unless it serves that volume.
pub const FLAG_VOLUME_ID: u16 = 2;

/// The PUNCH flag bit (WRITE_ZEROES): the range may be deallocated.
pub const FLAG_PUNCH: u16 = 4;

/// The FAST flag bit (WRITE_ZEROES): zero only if that is fast; status 7
/// otherwise.
pub const FLAG_FAST: u16 = 8;

/// INFO flag: writes are refused.
pub const INFO_READ_ONLY: u32 = 1;

/// INFO flag: offsets and lengths must be multiples of the block size.
pub const INFO_ALIGNED: u32 = 2;

/// INFO flag: the target understands BLOCK_STATUS, CACHE and the
/// WRITE_ZEROES flags PUNCH and FAST.
pub const INFO_EXTENSIONS: u32 = 4;

/// Length of one extent in a BLOCK_STATUS answer.
pub const EXTENT_LEN: usize = 8;

pub use crate::device::MAX_EXTENTS;

/// Length of a volume id on the wire.
pub const VOLUME_ID_LEN: usize = 16;

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
    /// A BLOCK_STATUS answer that makes no sense.
    #[error("invalid BLOCK_STATUS answer: {0}")]
    BadExtents(&'static str),
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
    /// Ask which parts of a range are holes (an extension).
    BlockStatus = 7,
    /// Prefetch a range (an extension).
    Cache = 8,
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
            7 => Opcode::BlockStatus,
            8 => Opcode::Cache,
            _ => return None,
        })
    }

    /// The flags this opcode may carry.
    fn allowed_flags(self) -> u16 {
        match self {
            Opcode::WriteZeroes => FLAG_FUA | FLAG_VOLUME_ID | FLAG_PUNCH | FLAG_FAST,
            Opcode::Write | Opcode::Trim => FLAG_FUA | FLAG_VOLUME_ID,
            Opcode::Read | Opcode::Flush | Opcode::Info | Opcode::BlockStatus | Opcode::Cache => {
                FLAG_VOLUME_ID
            }
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
        /// The range may be deallocated (flag PUNCH; an extension).
        punch: bool,
        /// Only if fast (flag FAST; an extension).
        fast: bool,
    },
    /// Ask for the device's [`Info`].
    Info,
    /// Ask for the extents of a range (an extension).
    BlockStatus {
        /// Start.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Prefetch a range (an extension).
    Cache {
        /// Start.
        offset: u64,
        /// Length.
        len: u32,
    },
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
            Request::BlockStatus { .. } => Opcode::BlockStatus,
            Request::Cache { .. } => Opcode::Cache,
        }
    }

    /// The byte range the request touches or asks about, as (offset,
    /// length); `None` for FLUSH and INFO.
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            Request::Read { offset, len }
            | Request::Trim { offset, len, .. }
            | Request::WriteZeroes { offset, len, .. }
            | Request::BlockStatus { offset, len }
            | Request::Cache { offset, len } => Some((*offset, u64::from(*len))),
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

    /// Encodes the request as a command payload, without a volume id.
    ///
    /// A WRITE longer than `u32::MAX` bytes cannot be expressed; its length
    /// field saturates and the target refuses it (callers split long writes,
    /// as [`crate::Volume`] does).
    pub fn encode(&self) -> Bytes {
        self.encode_for(None)
    }

    /// Encodes the request as a command payload meant for the volume
    /// `volume` (with the VOLUME_ID flag), or for any volume (`None`).
    pub fn encode_for(&self, volume: Option<VolumeId>) -> Bytes {
        let (offset, len, flags, data): (u64, u32, u16, &[u8]) = match self {
            Request::Read { offset, len }
            | Request::BlockStatus { offset, len }
            | Request::Cache { offset, len } => (*offset, *len, 0, &[]),
            Request::Write { offset, data, fua } => (
                *offset,
                u32::try_from(data.len()).unwrap_or(u32::MAX),
                fua_flag(*fua),
                data,
            ),
            Request::Flush | Request::Info => (0, 0, 0, &[]),
            Request::Trim { offset, len, fua } => (*offset, *len, fua_flag(*fua), &[]),
            Request::WriteZeroes {
                offset,
                len,
                fua,
                punch,
                fast,
            } => {
                let mut flags = fua_flag(*fua);
                if *punch {
                    flags |= FLAG_PUNCH;
                }
                if *fast {
                    flags |= FLAG_FAST;
                }
                (*offset, *len, flags, &[])
            }
        };
        let id_flag = if volume.is_some() { FLAG_VOLUME_ID } else { 0 };
        let mut out = BytesMut::with_capacity(REQUEST_HEADER_LEN + VOLUME_ID_LEN + data.len());
        out.put_u8(MAGIC);
        out.put_u8(self.opcode() as u8);
        out.put_u16(flags | id_flag);
        out.put_u64(offset);
        out.put_u32(len);
        if let Some(id) = volume {
            out.put_slice(&id.0);
        }
        out.put_slice(data);
        out.freeze()
    }

    /// Decodes a command payload, refusing any request longer than
    /// `max_request` bytes. A volume id, if present, is ignored: a target
    /// uses [`Request::decode_addressed`].
    pub fn decode(payload: &Bytes, max_request: u32) -> Result<Request, WireError> {
        Request::decode_addressed(payload, max_request).map(|(r, _)| r)
    }

    /// Decodes a command payload and the volume id it names, if any.
    pub fn decode_addressed(
        payload: &Bytes,
        max_request: u32,
    ) -> Result<(Request, Option<VolumeId>), WireError> {
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
        let id_len = if flags & FLAG_VOLUME_ID != 0 {
            VOLUME_ID_LEN
        } else {
            0
        };
        let body = payload.len() - REQUEST_HEADER_LEN;
        let expected_body =
            u64::from(if opcode == Opcode::Write { len } else { 0 }) + id_len as u64;
        if body as u64 != expected_body {
            return Err(WireError::LengthMismatch {
                expected: expected_body,
                got: body as u64,
            });
        }
        let volume = payload
            .get(REQUEST_HEADER_LEN..REQUEST_HEADER_LEN + id_len)
            .and_then(|b| <[u8; VOLUME_ID_LEN]>::try_from(b).ok())
            .map(VolumeId);
        let data_start = REQUEST_HEADER_LEN + id_len;
        if matches!(opcode, Opcode::Flush | Opcode::Info) {
            if offset != 0 || len != 0 {
                return Err(WireError::NonZeroRange {
                    opcode,
                    offset,
                    len,
                });
            }
        } else if len > max_request && !matches!(opcode, Opcode::BlockStatus | Opcode::Cache) {
            return Err(WireError::TooLarge {
                len,
                max: max_request,
            });
        }
        let request = match opcode {
            Opcode::Read => Request::Read { offset, len },
            Opcode::Write => Request::Write {
                offset,
                data: payload.slice(data_start..),
                fua,
            },
            Opcode::Flush => Request::Flush,
            Opcode::Trim => Request::Trim { offset, len, fua },
            Opcode::WriteZeroes => Request::WriteZeroes {
                offset,
                len,
                fua,
                punch: flags & FLAG_PUNCH != 0,
                fast: flags & FLAG_FAST != 0,
            },
            Opcode::Info => Request::Info,
            Opcode::BlockStatus => Request::BlockStatus { offset, len },
            Opcode::Cache => Request::Cache { offset, len },
        };
        Ok((request, volume))
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
    /// The volume's identity ([`crate::identity`]); `None` if the target
    /// has none.
    pub volume_id: Option<VolumeId>,
    /// Offsets and lengths must be multiples of `block_size` (flag
    /// [`INFO_ALIGNED`]).
    pub aligned: bool,
    /// The target understands the extensions (flag [`INFO_EXTENSIONS`]).
    pub extensions: bool,
}

impl Info {
    /// Encodes the INFO body: size u64, flags u32 ([`INFO_READ_ONLY`],
    /// [`INFO_ALIGNED`], [`INFO_EXTENSIONS`]),
    /// block size u32, max request u32, volume id (16 bytes; zero: none).
    pub fn encode(&self) -> [u8; INFO_LEN] {
        let mut out = [0u8; INFO_LEN];
        let mut w = &mut out[..];
        w.put_u64(self.size);
        let mut flags = 0;
        for (set, bit) in [
            (self.read_only, INFO_READ_ONLY),
            (self.aligned, INFO_ALIGNED),
            (self.extensions, INFO_EXTENSIONS),
        ] {
            if set {
                flags |= bit;
            }
        }
        w.put_u32(flags);
        w.put_u32(self.block_size);
        w.put_u32(self.max_request);
        w.put_slice(&self.volume_id.map_or([0; VOLUME_ID_LEN], |id| id.0));
        out
    }

    /// Decodes and checks an INFO body. Unknown flag bits are ignored (they
    /// can only describe the device, never change a request's meaning).
    pub fn decode(body: &[u8]) -> Result<Info, WireError> {
        if body.len() != INFO_LEN && body.len() != INFO_LEN_NO_ID {
            return Err(WireError::LengthMismatch {
                expected: INFO_LEN as u64,
                got: body.len() as u64,
            });
        }
        let mut r = body;
        let size = r.get_u64();
        let flags = r.get_u32();
        let mut info = Info {
            size,
            read_only: flags & INFO_READ_ONLY != 0,
            block_size: r.get_u32(),
            max_request: r.get_u32(),
            volume_id: None,
            aligned: flags & INFO_ALIGNED != 0,
            extensions: flags & INFO_EXTENSIONS != 0,
        };
        if let Ok(id) = <[u8; VOLUME_ID_LEN]>::try_from(r) {
            info.volume_id = Some(VolumeId(id)).filter(|id| !id.is_nil());
        }
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
    pub(super) const WRONG_VOLUME: u8 = 6;
    pub(super) const NOT_SUPPORTED: u8 = 7;
}

/// Encodes a BLOCK_STATUS answer body.
pub fn encode_extents(extents: &[crate::device::Extent]) -> Bytes {
    let mut out = BytesMut::with_capacity(extents.len() * EXTENT_LEN);
    for e in extents {
        out.put_u32(e.len);
        out.put_u32(e.flags);
    }
    out.freeze()
}

/// Decodes and checks a BLOCK_STATUS answer body for a request of `len`
/// bytes: 1 to [`MAX_EXTENTS`] extents, none empty, covering at least 1
/// and at most `len` bytes.
pub fn decode_extents(body: &[u8], len: u32) -> Result<Vec<crate::device::Extent>, WireError> {
    if body.is_empty()
        || !body.len().is_multiple_of(EXTENT_LEN)
        || body.len() / EXTENT_LEN > MAX_EXTENTS
    {
        return Err(WireError::BadExtents(
            "not 1 to MAX_EXTENTS extents of 8 bytes",
        ));
    }
    let mut r = body;
    let mut out = Vec::with_capacity(body.len() / EXTENT_LEN);
    let mut total = 0u64;
    while r.has_remaining() {
        let e = crate::device::Extent {
            len: r.get_u32(),
            flags: r.get_u32(),
        };
        if e.len == 0 {
            return Err(WireError::BadExtents("an extent of length 0"));
        }
        total += u64::from(e.len);
        out.push(e);
    }
    if total > u64::from(len) {
        return Err(WireError::BadExtents(
            "the extents cover more than was asked",
        ));
    }
    Ok(out)
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
        BlockError::NotSupported(m) => {
            out.put_u8(status::NOT_SUPPORTED);
            put_message(&mut out, m);
        }
        // A target does not cancel its own work; if a device says so
        // anyway, the client sees an I/O error that names it.
        e @ (BlockError::Withdrawn(_) | BlockError::InDoubt(_)) => {
            out.put_u8(status::IO);
            put_message(&mut out, &e.to_string());
        }
        BlockError::WrongVolume {
            expected,
            found,
            size,
        } => {
            out.put_u8(status::WRONG_VOLUME);
            out.put_slice(&expected.0);
            out.put_slice(&found.0);
            out.put_u64(*size);
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
        status::NOT_SUPPORTED => BlockError::NotSupported(message(body)?),
        status::WRONG_VOLUME => {
            exact(body, 2 * VOLUME_ID_LEN + 8)?;
            let mut id = || {
                let mut b = [0u8; VOLUME_ID_LEN];
                body.copy_to_slice(&mut b);
                VolumeId(b)
            };
            let (expected, found) = (id(), id());
            BlockError::WrongVolume {
                expected,
                found,
                size: body.get_u64(),
            }
        }
        other => return Err(WireError::UnknownStatus(other)),
    };
    Ok(Err(error))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
