//! Frame encoding into an [`Outgoing`] buffer.
//!
//! Small frames are packed into one contiguous chunk; large payloads are kept
//! as their own [`Bytes`] chunk (no copy), so a driver can hand the chunks to a
//! vectored write.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{kind, Digests, Frame, LoginKind, HEADER_LEN, LOGIN_MAGIC, STATUS_FLAG};

/// Payloads at least this long travel as their own chunk instead of being copied.
const ZERO_COPY_THRESHOLD: usize = 4096;

/// Room the scratch buffer is given when a frame's header does not fit in
/// what it has left: headers of many frames share one block instead of each
/// starting a buffer of its own that then grows by doubling (a scratch
/// whose previous chunks are still being written cannot be reused in place).
const SCRATCH_BLOCK: usize = 512;

/// The most header bytes one frame writes to the scratch: the common header,
/// the largest fixed fields (LOGIN's 60) and both digests.
const MAX_FRAME_OVERHEAD: usize = HEADER_LEN + 64 + 8;

/// The chunk list's capacity is kept for the next frames up to this many
/// entries (a credit window of large responses is two chunks per frame);
/// beyond it the list is let go, so an idle connection does not hold the
/// memory of its largest burst.
const KEEP_CHUNKS: usize = 128;

/// Bytes ready for one connection, as a list of chunks in order.
#[derive(Debug, Default)]
pub struct Outgoing {
    chunks: Vec<Bytes>,
    scratch: BytesMut,
    /// Bytes in `chunks` (the scratch is counted separately).
    chunk_bytes: usize,
}

impl Outgoing {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total bytes queued.
    pub fn len(&self) -> usize {
        self.chunk_bytes + self.scratch.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one encoded frame. `digests` are the digests negotiated for the
    /// connection; login frames never carry digests.
    pub fn push(&mut self, frame: &Frame, digests: Digests) {
        encode(frame, digests, self);
    }

    /// Takes the queued chunks, leaving the buffer empty.
    pub fn take_chunks(&mut self) -> Vec<Bytes> {
        self.flush_scratch();
        self.chunk_bytes = 0;
        std::mem::take(&mut self.chunks)
    }

    /// Moves the queued chunks to the end of `out`, leaving the buffer empty.
    ///
    /// Unlike [`Outgoing::take_chunks`], this keeps the buffer's own chunk
    /// list (up to a bounded capacity) for the next frames, and fills a
    /// vector the caller drained and hands in again, so a driver that
    /// reuses `out` allocates no list per batch.
    pub fn take_chunks_into(&mut self, out: &mut Vec<Bytes>) {
        self.flush_scratch();
        self.chunk_bytes = 0;
        out.append(&mut self.chunks);
        if self.chunks.capacity() > KEEP_CHUNKS {
            self.chunks = Vec::new();
        }
    }

    /// Takes the queued bytes as one contiguous vector (copies; for tests and
    /// simple drivers).
    pub fn take_vec(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for chunk in self.take_chunks() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    fn flush_scratch(&mut self) {
        if !self.scratch.is_empty() {
            self.chunk_bytes += self.scratch.len();
            self.chunks.push(self.scratch.split().freeze());
        }
    }

    fn push_payload(&mut self, payload: &Bytes) {
        if payload.len() >= ZERO_COPY_THRESHOLD {
            self.flush_scratch();
            self.chunk_bytes += payload.len();
            self.chunks.push(payload.clone());
        } else {
            self.scratch.extend_from_slice(payload);
        }
    }
}

/// Encodes a frame to a contiguous byte vector (for tests and documentation).
pub fn encode_to_vec(frame: &Frame, digests: Digests) -> Vec<u8> {
    let mut out = Outgoing::new();
    out.push(frame, digests);
    out.take_vec()
}

fn is_login_frame(k: u8) -> bool {
    matches!(k, kind::LOGIN | kind::LOGIN_ACCEPT | kind::LOGIN_REJECT)
}

fn encode(frame: &Frame, digests: Digests, out: &mut Outgoing) {
    let k = frame.kind();
    let digests = if is_login_frame(k) {
        Digests::NONE
    } else {
        digests
    };
    if out.scratch.capacity() - out.scratch.len() < MAX_FRAME_OVERHEAD {
        out.scratch.reserve(SCRATCH_BLOCK);
    }
    let start = out.scratch.len();
    out.scratch.put_u8(k);
    let status = if matches!(frame, Frame::StatusResponse { .. }) {
        STATUS_FLAG
    } else {
        0
    };
    out.scratch.put_u8(digests.bits() | status);
    out.scratch.put_u16(0);
    out.scratch.put_u32(0); // length, patched below
    let payload: Bytes = write_fixed(frame, &mut out.scratch);
    let fixed = out.scratch.len() - start - HEADER_LEN;
    // Lengths are bounded by the caller's frame limit (u32); saturate defensively.
    let length = u32::try_from(fixed + payload.len()).unwrap_or(u32::MAX);
    out.scratch[start + 4..start + 8].copy_from_slice(&length.to_be_bytes());
    if digests.header {
        let crc = crc32c::crc32c(&out.scratch[start..]);
        out.scratch.put_u32(crc);
    }
    if !payload.is_empty() {
        out.push_payload(&payload);
    }
    if digests.data {
        out.scratch.put_u32(crc32c::crc32c(&payload));
    }
}

/// Writes the fixed fields and returns the payload (possibly empty).
fn write_fixed(frame: &Frame, b: &mut BytesMut) -> Bytes {
    match frame {
        Frame::Login(l) => {
            b.put_slice(&LOGIN_MAGIC);
            b.put_u16(l.min_version);
            b.put_u16(l.max_version);
            b.put_u8(login_kind_byte(l.kind));
            b.put_u8(l.digests.bits());
            b.put_u16(0);
            b.put_u64(l.session.0);
            b.put_slice(&l.secret.0);
            b.put_u64(l.response_ack);
            b.put_u32(l.max_frame);
            b.put_u32(l.keepalive_ms);
            b.put_u32(l.requested_credits);
            b.put_u32(0);
            if l.host.is_none() {
                return Bytes::new();
            }
            let mut area = BytesMut::with_capacity(frame.payload_len());
            super::extension::write_extensions(l.host.as_ref(), &mut area);
            area.freeze()
        }
        Frame::Command { seq, ack, payload } | Frame::Message { seq, ack, payload } => {
            b.put_u64(*seq);
            b.put_u64(*ack);
            payload.clone()
        }
        Frame::InitiatorAck { ack } => {
            b.put_u64(*ack);
            Bytes::new()
        }
        Frame::Ping { token, ack } => {
            b.put_u64(*token);
            b.put_u64(*ack);
            Bytes::new()
        }
        Frame::Fin { last_seq, ack } => {
            b.put_u64(*last_seq);
            b.put_u64(*ack);
            Bytes::new()
        }
        Frame::Error { code, text } => {
            b.put_u16(code.to_wire());
            b.put_u16(0);
            Bytes::copy_from_slice(truncate_text(text).as_bytes())
        }
        Frame::LoginAccept(a) => {
            b.put_u16(a.version);
            b.put_u8(a.digests.bits());
            b.put_u8(login_kind_byte(a.kind));
            b.put_u64(a.session.0);
            b.put_slice(&a.secret.0);
            b.put_u64(a.command_ack);
            b.put_u64(a.credit_limit);
            b.put_u32(a.max_frame);
            b.put_u32(a.inactivity_ms);
            b.put_u32(a.retain_ms);
            b.put_u32(a.credits);
            b.put_u32(a.quiesce_ms);
            Bytes::new()
        }
        Frame::LoginReject(r) => {
            b.put_u16(r.reason.to_wire());
            b.put_u16(r.min_version);
            b.put_u16(r.max_version);
            b.put_u16(0);
            b.put_u32(r.retry_after_ms);
            b.put_u32(0);
            Bytes::copy_from_slice(truncate_text(&r.text).as_bytes())
        }
        Frame::Response {
            seq,
            command,
            ack,
            limit,
            payload,
        } => {
            b.put_u64(*seq);
            b.put_u64(*command);
            b.put_u64(*ack);
            b.put_u64(*limit);
            payload.clone()
        }
        Frame::StatusResponse {
            seq,
            command,
            ack,
            limit,
            status,
            text,
        } => {
            b.put_u64(*seq);
            b.put_u64(*command);
            b.put_u64(*ack);
            b.put_u64(*limit);
            let mut payload = BytesMut::with_capacity(2 + text.len());
            payload.put_u16(status.to_wire());
            payload.put_slice(text.as_bytes());
            payload.freeze()
        }
        Frame::TargetAck { ack, limit } => {
            b.put_u64(*ack);
            b.put_u64(*limit);
            Bytes::new()
        }
        Frame::Pong { token, ack, limit } => {
            b.put_u64(*token);
            b.put_u64(*ack);
            b.put_u64(*limit);
            Bytes::new()
        }
        Frame::Shutdown {
            max_up_ms,
            min_hold_ms,
            ack,
            limit,
        } => {
            b.put_u32(*max_up_ms);
            b.put_u32(*min_hold_ms);
            b.put_u64(*ack);
            b.put_u64(*limit);
            Bytes::new()
        }
        Frame::FinAck { ack } => {
            b.put_u64(*ack);
            Bytes::new()
        }
        Frame::Fence {
            token,
            node,
            host,
            epoch,
        } => {
            b.put_u64(*token);
            b.put_u32(*node);
            b.put_u32(0);
            b.put_slice(&host.0);
            b.put_u64(*epoch);
            Bytes::new()
        }
        Frame::FenceDone {
            token,
            result,
            waited_ms,
        } => {
            b.put_u64(*token);
            b.put_u16(result.to_wire());
            b.put_u16(0);
            b.put_u32(*waited_ms);
            Bytes::new()
        }
    }
}

pub(crate) fn login_kind_byte(k: LoginKind) -> u8 {
    match k {
        LoginKind::New => 0,
        LoginKind::Recover => 1,
        LoginKind::Join => 2,
    }
}

/// Cuts text to [`super::frame::MAX_TEXT`] bytes on a character boundary.
pub(crate) fn truncate_text(text: &str) -> &str {
    let max = super::frame::MAX_TEXT;
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
