//! The write side of a connection, driven by the task that produces the
//! frames: bytes are written at once when the socket takes them, and
//! whatever it does not take waits here until it is writable again.
//!
//! Writing from the producing task, rather than handing every batch to a
//! separate writer task, saves a channel send and a task wake-up (often a
//! cross-thread one) per batch. Small chunks are copied together so a burst
//! of frames goes out in one system call; large ones are written as they are.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::transport::WriteHalf;

/// Chunks below this size are copied together; larger ones are not copied.
const COPY_BELOW: usize = 16 * 1024;

/// Slices per vectored write.
const MAX_SLICES: usize = 64;

/// Frames waiting to be written, and the socket half they go to.
pub(crate) struct Outbox {
    writer: WriteHalf,
    /// Chunks not yet written, in order.
    pending: VecDeque<Bytes>,
    /// Small chunks being copied together; sealed into `pending` at the end
    /// of each [`Outbox::push`].
    scratch: BytesMut,
    /// Bytes in `pending`.
    pending_len: usize,
}

impl Outbox {
    /// An empty outbox for `writer`.
    pub(crate) fn new(writer: WriteHalf) -> Outbox {
        Outbox {
            writer,
            pending: VecDeque::new(),
            scratch: BytesMut::new(),
            pending_len: 0,
        }
    }

    /// True if bytes wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes waiting to be written.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending_len
    }

    /// Queues chunks behind everything queued before.
    pub(crate) fn push(&mut self, chunks: impl IntoIterator<Item = Bytes>) {
        for chunk in chunks {
            self.pending_len += chunk.len();
            if chunk.len() < COPY_BELOW {
                self.scratch.extend_from_slice(&chunk);
            } else {
                self.seal();
                self.pending.push_back(chunk);
            }
        }
        self.seal();
    }

    /// Moves the copied small chunks into the queue.
    fn seal(&mut self) {
        if !self.scratch.is_empty() {
            self.pending.push_back(self.scratch.split().freeze());
        }
    }

    /// Writes what the socket takes now, without waiting. An error means the
    /// connection is broken.
    pub(crate) fn write_now(&mut self) -> io::Result<()> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_drain(&mut cx) {
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    /// Writes until nothing is pending (or the socket fails).
    pub(crate) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(&self.pending) {
                *slot = IoSlice::new(chunk);
                count += 1;
            }
            let written = match Pin::new(&mut self.writer).poll_write_vectored(cx, &slices[..count])
            {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.consume(written);
        }
        Poll::Ready(Ok(()))
    }

    /// Closes the write side (FIN) once nothing is pending.
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }

    /// Drops `n` written bytes from the front of the queue.
    fn consume(&mut self, mut n: usize) {
        self.pending_len = self.pending_len.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.pending.pop_front();
        }
    }

    /// Waits until everything pending is written.
    pub(crate) async fn drain(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_drain(cx)).await
    }

    /// Writes what is pending, then closes the write side (FIN), in a task
    /// of its own: the connection is being let go.
    pub(crate) fn finish(mut self) {
        tokio::spawn(async move {
            let _ = poll_fn(|cx| self.poll_shutdown(cx)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_in_order_what_the_socket_takes_and_waits_for_the_rest() {
        // A 64-byte pipe: most of the data must wait for the reader.
        let (a, mut b) = tokio::io::duplex(64);
        let mut out = Outbox::new(Box::new(a));
        let big = Bytes::from((0..40_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        out.push([Bytes::from_static(b"one"), Bytes::from_static(b"two")]);
        out.push([big.clone(), Bytes::from_static(b"three")]);
        out.write_now().expect("write now");
        assert!(out.has_pending(), "64 bytes of room cannot take it all");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.expect("read");
            got
        });
        out.finish();
        let got = reader.await.expect("reader");
        let mut want = b"onetwo".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"three");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes reordered or lost");
    }

    #[tokio::test]
    async fn a_broken_socket_is_an_error() {
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let mut out = Outbox::new(Box::new(a));
        out.push([Bytes::from_static(b"lost")]);
        assert!(out.write_now().is_err());
    }
}
