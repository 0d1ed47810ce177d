//! Noticing that a client went away while the reader is held back.
//!
//! The transmission reader stops reading while a connection has as many
//! requests or payload bytes in flight as it may (backpressure). A client
//! that pipelined several large reads and then closed its connection
//! would, without this module, go unnoticed until its requests finished
//! and freed their permits: all the work it abandoned would run first.
//!
//! [`ReadAhead`] wraps the connection's read half. While the reader waits
//! for a permit ([`ReadAhead::watch`]) it keeps reading from the socket
//! into a buffer bounded by [`READ_AHEAD_LIMIT`]; the requests in it are
//! decoded later, in order, as if read then. When the stream ends (or
//! fails) during the wait, the client is gone unless the bytes read ahead
//! hold an `NBD_CMD_DISC` (after which outstanding requests are finished,
//! not cancelled): the caller's signal fires at once. A full buffer stops
//! the reading ahead, so memory stays bounded whatever the client sends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::consts::{CMD_DISC, CMD_WRITE, REQUEST_LEN, REQUEST_MAGIC};
use crate::device::Cancel;

/// Most bytes read ahead while the reader is held back: room for over two
/// thousand request headers.
pub(crate) const READ_AHEAD_LIMIT: usize = 64 * 1024;

/// A read half with a bounded read-ahead buffer; see the module
/// documentation.
#[derive(Debug)]
pub(crate) struct ReadAhead<R> {
    inner: R,
    /// Bytes read ahead and not yet consumed.
    buf: BytesMut,
    /// How the stream ended while reading ahead (`Ok` for its end).
    ended: Option<io::Result<()>>,
}

impl<R: AsyncRead + Unpin> ReadAhead<R> {
    /// Wraps a read half.
    pub(crate) fn new(inner: R) -> ReadAhead<R> {
        ReadAhead {
            inner,
            buf: BytesMut::new(),
            ended: None,
        }
    }

    /// Awaits `wait` while reading ahead. `payload_due` is how many bytes
    /// of the current request's payload are still to come (a write waiting
    /// for its payload permits): they precede the next request header. If
    /// the stream ends during the wait with no `NBD_CMD_DISC` read ahead,
    /// `gone` fires.
    pub(crate) async fn watch<F: std::future::Future>(
        &mut self,
        wait: F,
        payload_due: u32,
        gone: &Cancel,
    ) -> F::Output {
        tokio::pin!(wait);
        let mut chunk = [0u8; 4096];
        loop {
            let room = READ_AHEAD_LIMIT.saturating_sub(self.buf.len());
            if self.ended.is_some() || room == 0 {
                return wait.await;
            }
            let take = room.min(chunk.len());
            tokio::select! {
                out = &mut wait => return out,
                // `read` is cancel-safe: dropped unfinished, it took nothing.
                read = self.inner.read(&mut chunk[..take]) => match read {
                    Ok(0) => self.end(Ok(()), payload_due, gone),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) => self.end(Err(e), payload_due, gone),
                },
            }
        }
    }

    fn end(&mut self, how: io::Result<()>, payload_due: u32, gone: &Cancel) {
        self.ended = Some(how);
        if !holds_disconnect(&self.buf, payload_due) {
            gone.cancel();
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadAhead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() {
            let n = this.buf.len().min(out.remaining());
            out.put_slice(&this.buf[..n]);
            this.buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        match this.ended.take() {
            // The end is reported once, as the stream did; reading on
            // after it reads the inner stream again.
            Some(how) => Poll::Ready(how),
            None => Pin::new(&mut this.inner).poll_read(cx, out),
        }
    }
}

/// True if `buf`, after skipping `payload_due` bytes, holds a complete
/// `NBD_CMD_DISC` header among whole requests. Decoding stops at a bad
/// magic or an incomplete request: what follows cannot be trusted.
fn holds_disconnect(buf: &[u8], payload_due: u32) -> bool {
    let mut pos = payload_due as usize;
    loop {
        let Some(mut header) = pos
            .checked_add(REQUEST_LEN)
            .and_then(|end| buf.get(pos..end))
        else {
            return false;
        };
        if header.get_u32() != REQUEST_MAGIC {
            return false;
        }
        let _flags = header.get_u16();
        let kind = header.get_u16();
        let _handle = header.get_u64();
        let _offset = header.get_u64();
        let len = header.get_u32();
        if kind == CMD_DISC {
            return true;
        }
        let payload = if kind == CMD_WRITE { len as usize } else { 0 };
        let Some(next) = (pos + REQUEST_LEN).checked_add(payload) else {
            return false;
        };
        pos = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::consts::CMD_READ;
    use bytes::BufMut;

    fn header(kind: u16, len: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(REQUEST_LEN);
        h.put_u32(REQUEST_MAGIC);
        h.put_u16(0);
        h.put_u16(kind);
        h.put_u64(9);
        h.put_u64(0);
        h.put_u32(len);
        h
    }

    #[test]
    fn a_disconnect_is_found_only_among_whole_requests() {
        let read = header(CMD_READ, 1 << 25);
        let disc = header(CMD_DISC, 0);
        assert!(holds_disconnect(&[read.clone(), disc.clone()].concat(), 0));
        assert!(!holds_disconnect(&[read.clone(), read.clone()].concat(), 0));
        assert!(!holds_disconnect(&[], 0));
        // A write's payload is skipped, not decoded as headers.
        let write = [header(CMD_WRITE, 28), disc.clone(), disc.clone()].concat();
        assert!(holds_disconnect(&write, 0));
        let short = [header(CMD_WRITE, 60), disc.clone()].concat();
        assert!(!holds_disconnect(&short, 0));
        // The payload still due of the request being dispatched comes first.
        assert!(holds_disconnect(&[vec![0; 5], disc.clone()].concat(), 5));
        assert!(!holds_disconnect(&[vec![0; 5], disc.clone()].concat(), 0));
        // Hostile lengths neither panic nor overflow.
        let huge = [header(CMD_WRITE, u32::MAX), disc.clone()].concat();
        assert!(!holds_disconnect(&huge, u32::MAX));
        assert!(!holds_disconnect(&huge, 0));
        let mut bad = disc;
        bad[0] ^= 1;
        assert!(!holds_disconnect(&bad, 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_end_while_waiting_fires_and_the_bytes_read_ahead_come_first() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut rd = ReadAhead::new(server);
        let gone = Cancel::new();
        let bytes = header(CMD_READ, 4096);
        tokio::io::AsyncWriteExt::write_all(&mut client, &bytes)
            .await
            .expect("write");
        drop(client);
        // Waits for something that never comes: only the end stops it.
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            rd.watch(gone.cancelled(), 0, &gone),
        )
        .await;
        assert!(waited.is_ok(), "the end of the stream was not noticed");
        let mut back = vec![0u8; REQUEST_LEN];
        rd.read_exact(&mut back).await.expect("read ahead");
        assert_eq!(back, bytes);
        assert_eq!(rd.read(&mut back).await.expect("end"), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_end_after_a_disconnect_does_not_fire() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut rd = ReadAhead::new(server);
        let gone = Cancel::new();
        tokio::io::AsyncWriteExt::write_all(&mut client, &header(CMD_DISC, 0))
            .await
            .expect("write");
        drop(client);
        // The bytes are there already: they are read long before the wait
        // ends (one task on this runtime).
        let mut wait = Box::pin(tokio::time::sleep(std::time::Duration::from_millis(50)));
        rd.watch(&mut wait, 0, &gone).await;
        assert!(!gone.is_cancelled());
        assert!(rd.ended.is_some(), "the end was not read ahead");
    }
}
