//! Incremental, bounded frame decoding.
//!
//! The decoder never buffers more than one frame: it takes from its input only
//! the bytes that complete the current frame, and it rejects a header that
//! announces more than the negotiated maximum before reading the body. Every
//! field is checked; nothing from the network can make it panic.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::ids::{SessionId, SessionSecret};

use super::codes::{ErrorCode, RejectReason, ResponseStatus};
use super::extension::{FenceResult, HostId};
use super::frame::{
    fixed_len, has_payload, kind, Digests, Direction, Frame, Login, LoginAccept, LoginKind,
    LoginReject, HEADER_LEN, LOGIN_MAGIC, MAX_LOGIN_EXTENSION, MAX_TEXT, STATUS_CODE_LEN,
    STATUS_FLAG,
};

/// The size of a digest on the wire.
const DIGEST_LEN: usize = 4;

/// Payloads shorter than this are copied out of the read buffer (see
/// [`Decoder::decode`]); longer ones are handed out as zero-copy slices.
pub(crate) const COPY_BELOW: usize = 4096;

/// Decodes frames travelling in one direction from a byte stream.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    direction: Direction,
    max_frame: u32,
    digests: Digests,
}

impl Decoder {
    /// A decoder for frames travelling in `direction`, accepting frames whose
    /// length field is at most `max_frame`, except LOGIN, ERROR and
    /// LOGIN_REJECT: their caps are fixed by the protocol (60 + 1024, 4 + 256
    /// and 16 + 256 bytes, PROTOCOL.md §3) and apply whatever `max_frame`
    /// is, above or below it. So a small `max_frame` still lets a peer's
    /// ERROR or LOGIN_REJECT through, and a large one does not admit a
    /// larger LOGIN. (LOGIN_ACCEPT has no cap of its own: it needs a
    /// `max_frame` of at least 64.)
    pub fn new(direction: Direction, max_frame: u32) -> Self {
        Decoder {
            buf: BytesMut::new(),
            direction,
            max_frame,
            digests: Digests::NONE,
        }
    }

    /// Changes the largest accepted length (after login negotiation); the
    /// fixed caps of LOGIN, ERROR and LOGIN_REJECT are unaffected.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// Sets the digests every following non-login frame must carry.
    pub fn set_digests(&mut self, digests: Digests) {
        self.digests = digests;
    }

    /// Bytes held for a partial frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Capacity reserved by the internal buffer (for memory-bound checks).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The type byte of the frame being received: the one buffered, else
    /// the first byte of `input` (`None` when there is neither). A call to
    /// [`Decoder::decode`] works on this frame only, so after an error it
    /// names the frame that failed.
    pub fn frame_kind(&self, input: &[u8]) -> Option<u8> {
        self.buf.first().or(input.first()).copied()
    }

    /// The whole size (header, fields, digests, payload) of the frame being
    /// received, once its header is complete in the buffer followed by
    /// `input` and valid; `None` before that or for an invalid header
    /// (which [`Decoder::decode`] then rejects).
    pub fn frame_len(&self, input: &[u8]) -> Option<usize> {
        if self.buf.len() >= HEADER_LEN {
            return self.frame_total().ok();
        }
        let missing = HEADER_LEN - self.buf.len();
        let rest = input.get(..missing)?;
        let mut header = [0u8; HEADER_LEN];
        header[..self.buf.len()].copy_from_slice(&self.buf);
        header[self.buf.len()..].copy_from_slice(rest);
        self.frame_total_of(&header).ok()
    }

    /// Consumes bytes from the front of `input` until one frame is complete
    /// (returned) or `input` is exhausted (`Ok(None)`).
    ///
    /// A payload of 4096 bytes or more is a zero-copy slice of the decoder's
    /// read buffer and keeps the block it was read into alive while it
    /// lives; a shorter one is copied into its own allocation, so holding
    /// many small payloads never pins many large blocks.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtocolError> {
        loop {
            let needed = self.needed()?;
            if needed == 0 {
                return self.take_frame().map(Some);
            }
            if input.is_empty() {
                return Ok(None);
            }
            if self.buf.is_empty() {
                self.reserve_frame(input);
            }
            let n = needed.min(input.len());
            self.buf.extend_from_slice(&input[..n]);
            *input = &input[n..];
        }
    }

    /// Before a new frame's first byte is buffered: when `input` holds its
    /// whole header and the header is valid, makes room for the whole frame
    /// at once, so a buffer that must be replaced (an earlier large payload
    /// still holds the old one) is allocated once at its final size instead
    /// of for the header and again for the rest. The room is bounded by the
    /// validated length, never by an unchecked one; an invalid header
    /// reserves nothing and is rejected as before once it is buffered.
    fn reserve_frame(&mut self, input: &[u8]) {
        if let Some(header) = input.get(..HEADER_LEN) {
            if let Ok(total) = self.frame_total_of(header) {
                self.buf.reserve(total);
            }
        }
    }

    /// How many more bytes the current frame needs (0: it is complete).
    /// Validates the header as soon as it is complete.
    fn needed(&self) -> Result<usize, ProtocolError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(HEADER_LEN - self.buf.len());
        }
        let total = self.frame_total()?;
        Ok(total.saturating_sub(self.buf.len()))
    }

    /// Validates the common header in `buf` and returns the frame's total size.
    fn frame_total(&self) -> Result<usize, ProtocolError> {
        self.frame_total_of(&self.buf[..HEADER_LEN])
    }

    /// Validates the common header `h` (`HEADER_LEN` bytes) and returns the
    /// frame's total size.
    fn frame_total_of(&self, h: &[u8]) -> Result<usize, ProtocolError> {
        let k = h[0];
        let fixed = match fixed_len(k, self.direction) {
            Some(f) => f,
            None if is_known(k) => {
                return Err(ProtocolError::new(
                    ErrorCode::UnexpectedFrame,
                    format!("frame type {k:#04x} travels the other way"),
                ))
            }
            None => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownFrameType,
                    format!("unknown frame type {k:#04x}"),
                ))
            }
        };
        let digests = self.expected_digests(k);
        // Bit 2 (STATUS) is allowed on a RESP only: a status response.
        let status = if k == kind::RESPONSE { STATUS_FLAG } else { 0 };
        if h[1] != digests.bits() && h[1] != digests.bits() | status {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!(
                    "flags {:#04x} do not match the negotiated digests {:#04x}",
                    h[1],
                    digests.bits()
                ),
            ));
        }
        if h[2] != 0 || h[3] != 0 {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                "reserved header bytes are not zero",
            ));
        }
        let length = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let limit = self.length_limit(k, fixed);
        if length > limit {
            return Err(ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!("frame length {length} exceeds the limit {limit}"),
            ));
        }
        let length = length as usize;
        if length < fixed || (!has_payload(k) && length != fixed) {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!("frame type {k:#04x} cannot have length {length}"),
            ));
        }
        let digest_bytes = DIGEST_LEN * (usize::from(digests.header) + usize::from(digests.data));
        Ok(HEADER_LEN + length + digest_bytes)
    }

    fn expected_digests(&self, k: u8) -> Digests {
        if matches!(k, kind::LOGIN | kind::LOGIN_ACCEPT | kind::LOGIN_REJECT) {
            Digests::NONE
        } else {
            self.digests
        }
    }

    /// The largest length field accepted for a frame of type `k`.
    fn length_limit(&self, k: u8, fixed: usize) -> u32 {
        let cap = match k {
            kind::LOGIN => fixed + MAX_LOGIN_EXTENSION,
            kind::ERROR | kind::LOGIN_REJECT => fixed + MAX_TEXT,
            _ => return self.max_frame,
        };
        u32::try_from(cap).unwrap_or(u32::MAX)
    }

    /// Splits the complete frame off the buffer and parses it.
    fn take_frame(&mut self) -> Result<Frame, ProtocolError> {
        let total = self.frame_total()?;
        let raw = self.buf.split_to(total).freeze();
        if self.buf.is_empty() && self.buf.capacity() > 2 * HEADER_LEN + 64 * 1024 {
            // Do not keep a large allocation alive after a big frame.
            self.buf = BytesMut::new();
        }
        let k = raw[0];
        let digests = self.expected_digests(k);
        let fixed = fixed_len(k, self.direction).unwrap_or(0);
        let length = total
            - HEADER_LEN
            - DIGEST_LEN * (usize::from(digests.header) + usize::from(digests.data));
        let mut pos = HEADER_LEN + fixed;
        if digests.header {
            let expected = crc32c::crc32c(&raw[..pos]);
            let got = read_u32(&raw, pos);
            if expected != got {
                return Err(ProtocolError::new(
                    ErrorCode::HeaderDigest,
                    format!("header digest {got:#010x}, computed {expected:#010x}"),
                ));
            }
            pos += DIGEST_LEN;
        }
        let payload_len = length - fixed;
        // A slice of `raw` keeps the whole block the read buffer allocated
        // alive for as long as the payload lives (a service may hold a
        // command's payload until it completes). Small payloads are copied
        // so they pin only themselves; large ones, where the copy would cost
        // and the block is mostly theirs anyway, stay zero-copy.
        let payload = if payload_len < COPY_BELOW {
            Bytes::copy_from_slice(&raw[pos..pos + payload_len])
        } else {
            raw.slice(pos..pos + payload_len)
        };
        pos += payload_len;
        if digests.data {
            let expected = crc32c::crc32c(&payload);
            let got = read_u32(&raw, pos);
            if expected != got {
                return Err(ProtocolError::new(
                    ErrorCode::DataDigest,
                    format!("data digest {got:#010x}, computed {expected:#010x}"),
                ));
            }
        }
        let fields = raw.slice(HEADER_LEN..HEADER_LEN + fixed);
        if k == kind::RESPONSE && raw[1] & STATUS_FLAG != 0 {
            return parse_status(fields, &payload);
        }
        parse(k, fields, payload)
    }
}

fn is_known(k: u8) -> bool {
    fixed_len(k, Direction::ToTarget).is_some() || fixed_len(k, Direction::ToInitiator).is_some()
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

fn text(payload: &Bytes) -> Result<String, ProtocolError> {
    std::str::from_utf8(payload)
        .map(str::to_owned)
        .map_err(|_| ProtocolError::new(ErrorCode::Malformed, "text is not UTF-8"))
}

fn reserved_zero(v: u64) -> Result<(), ProtocolError> {
    if v == 0 {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::Malformed,
            "reserved field is not zero",
        ))
    }
}

fn login_kind(b: u8) -> Result<LoginKind, ProtocolError> {
    match b {
        0 => Ok(LoginKind::New),
        1 => Ok(LoginKind::Recover),
        2 => Ok(LoginKind::Join),
        other => Err(ProtocolError::new(
            ErrorCode::Malformed,
            format!("login kind {other} is not new (0), recover (1) or join (2)"),
        )),
    }
}

fn digests(b: u8) -> Result<Digests, ProtocolError> {
    Digests::from_bits(b)
        .ok_or_else(|| ProtocolError::new(ErrorCode::Malformed, "reserved digest bits set"))
}

fn secret(f: &mut Bytes) -> SessionSecret {
    let mut s = [0u8; 16];
    f.copy_to_slice(&mut s);
    SessionSecret(s)
}

/// Parses a status response: RESP fixed fields, then a 2-byte status code
/// (0 is not a status) and UTF-8 text.
fn parse_status(mut f: Bytes, payload: &Bytes) -> Result<Frame, ProtocolError> {
    let (Some(code), Some(rest)) = (
        payload.get(..STATUS_CODE_LEN),
        payload.get(STATUS_CODE_LEN..),
    ) else {
        return Err(ProtocolError::new(
            ErrorCode::Malformed,
            "a status response has no status code",
        ));
    };
    let code = u16::from_be_bytes([code[0], code[1]]);
    if code == 0 {
        return Err(ProtocolError::new(
            ErrorCode::Malformed,
            "status 0 is not a status",
        ));
    }
    let text = std::str::from_utf8(rest)
        .map(str::to_owned)
        .map_err(|_| ProtocolError::new(ErrorCode::Malformed, "status text is not UTF-8"))?;
    Ok(Frame::StatusResponse {
        seq: f.get_u64(),
        command: f.get_u64(),
        ack: f.get_u64(),
        limit: f.get_u64(),
        status: ResponseStatus::from_wire(code),
        text,
    })
}

/// Parses fixed fields `f` (exactly the type's fixed length) and `payload`.
fn parse(k: u8, mut f: Bytes, payload: Bytes) -> Result<Frame, ProtocolError> {
    let frame = match k {
        kind::LOGIN => {
            let mut magic = [0u8; 4];
            f.copy_to_slice(&mut magic);
            if magic != LOGIN_MAGIC {
                return Err(ProtocolError::new(
                    ErrorCode::BadMagic,
                    "not a holdfast LOGIN (bad magic)",
                ));
            }
            let min_version = f.get_u16();
            let max_version = f.get_u16();
            let kind = login_kind(f.get_u8())?;
            let digests = digests(f.get_u8())?;
            reserved_zero(u64::from(f.get_u16()))?;
            let session = SessionId(f.get_u64());
            let secret = secret(&mut f);
            let response_ack = f.get_u64();
            let max_frame = f.get_u32();
            let keepalive_ms = f.get_u32();
            let requested_credits = f.get_u32();
            reserved_zero(u64::from(f.get_u32()))?;
            // The payload is the extension area: a list of records (§5.2.1).
            let host = super::extension::parse_extensions(&payload)?;
            Frame::Login(Login {
                min_version,
                max_version,
                kind,
                digests,
                session,
                secret,
                response_ack,
                max_frame,
                keepalive_ms,
                requested_credits,
                host,
            })
        }
        kind::COMMAND => Frame::Command {
            seq: f.get_u64(),
            ack: f.get_u64(),
            payload,
        },
        kind::MESSAGE => Frame::Message {
            seq: f.get_u64(),
            ack: f.get_u64(),
            payload,
        },
        kind::INITIATOR_ACK => Frame::InitiatorAck { ack: f.get_u64() },
        kind::PING => Frame::Ping {
            token: f.get_u64(),
            ack: f.get_u64(),
        },
        kind::FIN => Frame::Fin {
            last_seq: f.get_u64(),
            ack: f.get_u64(),
        },
        kind::ERROR => {
            let code = super::codes::ErrorCode::from_wire(f.get_u16());
            reserved_zero(u64::from(f.get_u16()))?;
            Frame::Error {
                code,
                text: text(&payload)?,
            }
        }
        kind::LOGIN_ACCEPT => {
            let version = f.get_u16();
            let digests = digests(f.get_u8())?;
            let kind = login_kind(f.get_u8())?;
            let session = SessionId(f.get_u64());
            let secret = secret(&mut f);
            let command_ack = f.get_u64();
            let credit_limit = f.get_u64();
            let max_frame = f.get_u32();
            let inactivity_ms = f.get_u32();
            let retain_ms = f.get_u32();
            let credits = f.get_u32();
            let quiesce_ms = f.get_u32();
            Frame::LoginAccept(LoginAccept {
                version,
                digests,
                kind,
                session,
                secret,
                command_ack,
                credit_limit,
                max_frame,
                inactivity_ms,
                retain_ms,
                credits,
                quiesce_ms,
            })
        }
        kind::LOGIN_REJECT => {
            let reason = RejectReason::from_wire(f.get_u16());
            let min_version = f.get_u16();
            let max_version = f.get_u16();
            reserved_zero(u64::from(f.get_u16()))?;
            let retry_after_ms = f.get_u32();
            reserved_zero(u64::from(f.get_u32()))?;
            Frame::LoginReject(LoginReject {
                reason,
                min_version,
                max_version,
                retry_after_ms,
                text: text(&payload)?,
            })
        }
        kind::RESPONSE => Frame::Response {
            seq: f.get_u64(),
            command: f.get_u64(),
            ack: f.get_u64(),
            limit: f.get_u64(),
            payload,
        },
        kind::TARGET_ACK => Frame::TargetAck {
            ack: f.get_u64(),
            limit: f.get_u64(),
        },
        kind::PONG => Frame::Pong {
            token: f.get_u64(),
            ack: f.get_u64(),
            limit: f.get_u64(),
        },
        kind::SHUTDOWN => Frame::Shutdown {
            max_up_ms: f.get_u32(),
            min_hold_ms: f.get_u32(),
            ack: f.get_u64(),
            limit: f.get_u64(),
        },
        kind::FIN_ACK => Frame::FinAck { ack: f.get_u64() },
        kind::FENCE => {
            let token = f.get_u64();
            let node = f.get_u32();
            reserved_zero(u64::from(f.get_u32()))?;
            let mut host = [0u8; 16];
            f.copy_to_slice(&mut host);
            Frame::Fence {
                token,
                node,
                host: HostId(host),
                epoch: f.get_u64(),
            }
        }
        kind::FENCE_DONE => {
            let token = f.get_u64();
            let result = FenceResult::from_wire(f.get_u16());
            reserved_zero(u64::from(f.get_u16()))?;
            Frame::FenceDone {
                token,
                result,
                waited_ms: f.get_u32(),
            }
        }
        other => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownFrameType,
                format!("unknown frame type {other:#04x}"),
            ))
        }
    };
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{Decoder, COPY_BELOW};
    use crate::wire::{encode_to_vec, Digests, Direction, Frame};

    fn command(seq: u64, len: usize) -> Vec<u8> {
        encode_to_vec(
            &Frame::Command {
                seq,
                ack: 0,
                payload: Bytes::from(vec![seq as u8; len]),
            },
            Digests::NONE,
        )
    }

    fn payload(frame: Option<Frame>) -> Bytes {
        match frame {
            Some(Frame::Command { payload, .. }) => payload,
            other => panic!("expected a CMD, got {other:?}"),
        }
    }

    #[test]
    fn small_payloads_get_their_own_allocation_large_ones_stay_zero_copy() {
        let mut d = Decoder::new(Direction::ToTarget, 1 << 20);
        let mut input = Vec::new();
        input.extend(command(1, 5));
        input.extend(command(2, COPY_BELOW - 1));
        input.extend(command(3, COPY_BELOW));
        let mut input = &input[..];
        // A small payload shares nothing with the decoder's buffer, so
        // keeping it does not keep the buffer's block alive.
        let tiny = payload(d.decode(&mut input).expect("decodes"));
        assert_eq!(&tiny[..], &[1; 5]);
        assert!(tiny.is_unique(), "a 5-byte payload pins the read buffer");
        let below = payload(d.decode(&mut input).expect("decodes"));
        assert_eq!(below.len(), COPY_BELOW - 1);
        assert!(below.is_unique());
        // A large one is a slice of the block the decoder read it into.
        let large = payload(d.decode(&mut input).expect("decodes"));
        assert_eq!(large.len(), COPY_BELOW);
        assert!(!large.is_unique(), "large payloads are not copied");
        assert!(input.is_empty());
    }
}
