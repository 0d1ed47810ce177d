//! Byte layout of the log's records: a bounded writer and reader, and the
//! encoding of each [`StateChange`] (PROTOCOL.md §12.4 gives the table).
//!
//! Everything is little-endian. A store file read back is hostile input:
//! every read checks the bytes left first, every length is checked against
//! the bytes that remain before anything is allocated, and an unknown tag is
//! an error, never a skip.

use bytes::Bytes;

use crate::ids::{SessionId, SessionSecret};
use crate::target::StateChange;
use crate::wire::{HostId, HostRecord, ResponseStatus};

/// Why bytes read back do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError {
    /// Offset in the decoded slice.
    pub(crate) at: usize,
    /// What is wrong.
    pub(crate) what: &'static str,
}

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// A length-prefixed byte string. Lengths above `u32::MAX` cannot occur:
    /// a frame's payload is bounded by `max_frame`, a `u32`.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(v);
    }
    pub(crate) fn host(&mut self, h: Option<&HostRecord>) {
        match h {
            None => self.u8(0),
            Some(h) => {
                self.u8(1);
                self.raw(&h.host.0);
                self.u64(h.epoch);
            }
        }
    }
}

/// Reads fields from a slice, each checked against the bytes left.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, at: 0 }
    }
    pub(crate) fn at(&self) -> usize {
        self.at
    }
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.at
    }
    pub(crate) fn err(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.at, what }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.err("record runs past the end of its group"));
        }
        let s = &self.data[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn id16(&mut self) -> Result<[u8; 16], DecodeError> {
        self.array()
    }
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err("flag is neither 0 nor 1")),
        }
    }
    /// A length-prefixed byte string; the length is checked against the
    /// bytes left before anything is copied.
    pub(crate) fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| self.err("length overflows"))?;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
    /// A count of items each at least `min_item` bytes long, checked against
    /// the bytes left (so a hostile count cannot make us allocate).
    pub(crate) fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u32()?).map_err(|_| self.err("count overflows"))?;
        if n.checked_mul(min_item.max(1))
            .is_none_or(|b| b > self.remaining())
        {
            return Err(self.err("count larger than the bytes that follow"));
        }
        Ok(n)
    }
    pub(crate) fn host(&mut self) -> Result<Option<HostRecord>, DecodeError> {
        if !self.bool()? {
            return Ok(None);
        }
        let host = HostId(self.id16()?);
        let epoch = self.u64()?;
        Ok(Some(HostRecord { host, epoch }))
    }
}

const SESSION_CREATED: u8 = 1;
const RECEIVED: u8 = 2;
const COMPLETED: u8 = 3;
const MESSAGES_DELIVERED: u8 = 4;
const RESPONSES_ACKED: u8 = 5;
const SESSION_ENDED: u8 = 6;
const HOST_FENCED: u8 = 7;
const MAX_FRAME_RAISED: u8 = 8;

/// Appends one change. `elide_payload`: a `Received` is written with an
/// empty payload (its entry is finished later in the same group, so the
/// payload is never read back: PROTOCOL.md §12.4).
pub(crate) fn put_change(w: &mut Writer, c: &StateChange, elide_payload: bool) {
    match c {
        StateChange::SessionCreated {
            session,
            secret,
            credits,
            host,
            max_frame,
        } => {
            w.u8(SESSION_CREATED);
            w.u64(session.0);
            w.raw(&secret.0);
            w.u32(*credits);
            w.host(host.as_ref());
            w.u32(*max_frame);
        }
        StateChange::MaxFrameRaised { session, max_frame } => {
            w.u8(MAX_FRAME_RAISED);
            w.u64(session.0);
            w.u32(*max_frame);
        }
        StateChange::Received {
            session,
            seq,
            command,
            payload,
        } => {
            w.u8(RECEIVED);
            w.u64(session.0);
            w.u64(*seq);
            w.u8(u8::from(*command));
            w.bytes(if elide_payload { &[] } else { payload });
        }
        StateChange::Completed {
            session,
            command,
            response,
            payload,
            status,
        } => {
            w.u8(COMPLETED);
            w.u64(session.0);
            w.u64(*command);
            w.u64(*response);
            w.bytes(payload);
            match status {
                None => w.u8(0),
                Some(s) => {
                    w.u8(1);
                    w.u16(s.to_wire());
                }
            }
        }
        StateChange::MessagesDelivered { session, through } => {
            w.u8(MESSAGES_DELIVERED);
            w.u64(session.0);
            w.u64(*through);
        }
        StateChange::ResponsesAcked { session, through } => {
            w.u8(RESPONSES_ACKED);
            w.u64(session.0);
            w.u64(*through);
        }
        StateChange::SessionEnded { session } => {
            w.u8(SESSION_ENDED);
            w.u64(session.0);
        }
        StateChange::HostFenced { host, epoch } => {
            w.u8(HOST_FENCED);
            w.raw(&host.0);
            w.u64(*epoch);
        }
    }
}

/// Reads one change.
pub(crate) fn get_change(r: &mut Reader<'_>) -> Result<StateChange, DecodeError> {
    let tag = r.u8()?;
    Ok(match tag {
        SESSION_CREATED => StateChange::SessionCreated {
            session: SessionId(r.u64()?),
            secret: SessionSecret(r.id16()?),
            credits: r.u32()?,
            host: r.host()?,
            max_frame: r.u32()?,
        },
        MAX_FRAME_RAISED => StateChange::MaxFrameRaised {
            session: SessionId(r.u64()?),
            max_frame: r.u32()?,
        },
        RECEIVED => StateChange::Received {
            session: SessionId(r.u64()?),
            seq: r.u64()?,
            command: r.bool()?,
            payload: r.bytes()?,
        },
        COMPLETED => StateChange::Completed {
            session: SessionId(r.u64()?),
            command: r.u64()?,
            response: r.u64()?,
            payload: r.bytes()?,
            status: if r.bool()? {
                Some(ResponseStatus::from_wire(r.u16()?))
            } else {
                None
            },
        },
        MESSAGES_DELIVERED => StateChange::MessagesDelivered {
            session: SessionId(r.u64()?),
            through: r.u64()?,
        },
        RESPONSES_ACKED => StateChange::ResponsesAcked {
            session: SessionId(r.u64()?),
            through: r.u64()?,
        },
        SESSION_ENDED => StateChange::SessionEnded {
            session: SessionId(r.u64()?),
        },
        HOST_FENCED => StateChange::HostFenced {
            host: HostId(r.id16()?),
            epoch: r.u64()?,
        },
        _ => return Err(r.err("unknown change tag")),
    })
}

/// The session a change concerns, if any (for corruption reports).
pub(crate) fn change_session(c: &StateChange) -> Option<SessionId> {
    match c {
        StateChange::SessionCreated { session, .. }
        | StateChange::Received { session, .. }
        | StateChange::Completed { session, .. }
        | StateChange::MessagesDelivered { session, .. }
        | StateChange::MaxFrameRaised { session, .. }
        | StateChange::ResponsesAcked { session, .. }
        | StateChange::SessionEnded { session } => Some(*session),
        StateChange::HostFenced { .. } => None,
    }
}
