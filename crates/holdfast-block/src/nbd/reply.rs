//! Replies on their way to the client, and the writer that sends them in
//! completion order.
//!
//! Without structured replies every reply is simple (a READ's data follows
//! its header). With them (`NBD_OPT_STRUCTURED_REPLY`), a READ is answered
//! with one `NBD_REPLY_TYPE_OFFSET_DATA` chunk per segment the device
//! returned (no copy), a BLOCK_STATUS with one `NBD_REPLY_TYPE_BLOCK_STATUS`
//! chunk, and a failed READ or BLOCK_STATUS with an `NBD_REPLY_TYPE_ERROR`
//! chunk that carries the error's message; the last chunk has
//! `NBD_REPLY_FLAG_DONE`. Other commands keep simple replies, which the
//! protocol allows for requests that return no data.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc::UnboundedReceiver;

use super::consts::*;
use super::transmission::Permits;
use crate::device::Extent;

/// Longest error message sent in an error chunk (the protocol's limit for
/// strings).
const MAX_MESSAGE: usize = 4096;

/// What a reply says.
#[derive(Debug)]
pub(crate) enum Body {
    /// No data: success (0) or this error, as a simple reply.
    Status(u32),
    /// A successful READ: the data from `offset`, in consecutive segments.
    Data { offset: u64, data: Vec<Bytes> },
    /// A successful BLOCK_STATUS of the `base:allocation` context.
    Extents(Vec<Extent>),
    /// A failed READ or BLOCK_STATUS: an error chunk with the message when
    /// structured, a simple reply otherwise.
    Failed { error: u32, message: String },
}

/// A reply on its way to the writer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The request's handle.
    pub(crate) handle: u64,
    /// What to send.
    pub(crate) body: Body,
    /// The request's outcome is in doubt ([`crate::BlockError::InDoubt`]):
    /// no reply may be sent, so the connection is closed instead.
    pub(crate) in_doubt: bool,
    /// Held until the reply is in the writer's hands.
    pub(crate) _permits: Permits,
}

/// Sends replies as they arrive, batching whatever is queued into one
/// flush; ends when every sender is gone. `structured`: structured replies
/// were negotiated.
pub(crate) async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: UnboundedReceiver<Outgoing>,
    structured: bool,
) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(256 * 1024, wr);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(reply) = next.take() {
            if reply.in_doubt {
                out.flush().await?;
                return Err(io::Error::other(format!(
                    "request {:#x} is in doubt: the connection is closed without its reply",
                    reply.handle
                )));
            }
            write_one(&mut out, &reply, structured).await?;
            // Releases the permits: the reply is in the writer's hands.
            drop(reply);
            next = rx.try_recv().ok();
        }
        out.flush().await?;
    }
    out.shutdown().await
}

/// Writes one reply.
async fn write_one<W: AsyncWrite + Unpin>(
    out: &mut W,
    reply: &Outgoing,
    structured: bool,
) -> io::Result<()> {
    let handle = reply.handle;
    match &reply.body {
        Body::Status(error) | Body::Failed { error, .. } if !structured => {
            out.write_all(&simple(*error, handle)).await
        }
        Body::Data { data, .. } if !structured => {
            out.write_all(&simple(0, handle)).await?;
            for d in data {
                out.write_all(d).await?;
            }
            Ok(())
        }
        Body::Status(error) => out.write_all(&simple(*error, handle)).await,
        Body::Data { offset, data } => {
            let last = data.iter().rposition(|d| !d.is_empty());
            let Some(last) = last else {
                // An empty read: nothing but the end.
                let h = chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, 0);
                return out.write_all(&h).await;
            };
            let mut at = *offset;
            for (i, d) in data.iter().enumerate().take(last + 1) {
                if d.is_empty() {
                    continue;
                }
                let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
                // A segment is at most MAX_PAYLOAD bytes.
                let len = u32::try_from(d.len() + 8).unwrap_or(u32::MAX);
                let mut h = BytesMut::with_capacity(STRUCTURED_REPLY_LEN + 8);
                h.put_slice(&chunk(flags, REPLY_TYPE_OFFSET_DATA, handle, len));
                h.put_u64(at);
                out.write_all(&h).await?;
                out.write_all(d).await?;
                at += d.len() as u64;
            }
            Ok(())
        }
        Body::Extents(extents) => {
            let len = u32::try_from(4 + 8 * extents.len()).unwrap_or(u32::MAX);
            let mut b = BytesMut::with_capacity(STRUCTURED_REPLY_LEN + len as usize);
            b.put_slice(&chunk(
                REPLY_FLAG_DONE,
                REPLY_TYPE_BLOCK_STATUS,
                handle,
                len,
            ));
            b.put_u32(META_BASE_ALLOCATION_ID);
            for e in extents {
                b.put_u32(e.len);
                b.put_u32(e.flags);
            }
            out.write_all(&b).await
        }
        Body::Failed { error, message } => {
            let mut end = message.len().min(MAX_MESSAGE);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            // `end` <= MAX_MESSAGE fits both fields.
            let mut b = BytesMut::with_capacity(STRUCTURED_REPLY_LEN + 6 + end);
            b.put_slice(&chunk(
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                handle,
                6 + end as u32,
            ));
            b.put_u32(*error);
            b.put_u16(end as u16);
            b.put_slice(&message.as_bytes()[..end]);
            out.write_all(&b).await
        }
    }
}

/// A simple reply header.
fn simple(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut header = [0u8; SIMPLE_REPLY_LEN];
    let mut h = &mut header[..];
    h.put_u32(SIMPLE_REPLY_MAGIC);
    h.put_u32(error);
    h.put_u64(handle);
    header
}

/// A structured reply chunk header.
fn chunk(flags: u16, kind: u16, handle: u64, len: u32) -> [u8; STRUCTURED_REPLY_LEN] {
    let mut header = [0u8; STRUCTURED_REPLY_LEN];
    let mut h = &mut header[..];
    h.put_u32(STRUCTURED_REPLY_MAGIC);
    h.put_u16(flags);
    h.put_u16(kind);
    h.put_u64(handle);
    h.put_u32(len);
    header
}
