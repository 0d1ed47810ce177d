//! The client side: a [`Volume`] is a remote block device reached through a
//! holdfast [`Initiator`].
//!
//! Requests longer than the target's maximum are split into pieces that are
//! issued together (they do not overlap, so the target runs them
//! concurrently). Ranges and read-only are checked locally against the INFO
//! the target sent at connect, so a request that cannot succeed is not sent.
//!
//! # Order
//!
//! Requests are issued in the order their futures are first polled: all
//! pieces of a split request are submitted on its first poll, and the
//! initiator's queue is first come, first served. The target keeps that
//! order between overlapping requests, so of two overlapping writes issued
//! one after the other (say, both futures joined, or the second spawned after
//! the first was polled) the second always wins, even if neither was awaited
//! before the other was issued.
//!
//! # Retry safety
//!
//! Every request is issued with [`CallOptions::RETRY_SAFE`]. If the target
//! loses the session (it restarted, or the session expired), the initiator
//! re-issues each unfinished request on a new session, in the original order,
//! before any new one. That is safe for a block device:
//!
//! * READ and INFO change nothing; FLUSH only makes durable what is written.
//! * WRITE, WRITE_ZEROES and TRIM set a range to contents that do not depend
//!   on what was there (TRIM leaves it undefined, and the file target zeroes
//!   it): running one twice leaves what running it once does.
//! * Order is what makes the re-issue correct when requests overlap. The
//!   target starts a write only once the initiator has acknowledged the
//!   response of every earlier overlapping request of the session
//!   ([`crate::ordering`]). So when the session is lost, no unfinished
//!   request has a later overlapping write already in effect: replaying the
//!   unfinished requests in their original order leaves exactly what running
//!   the whole sequence once would have, and the last write issued wins.
//!
//! The assumption is that nothing else writes the same ranges meanwhile: a
//! re-issued write may overwrite what another client wrote after it first
//! ran. A target that lost its session while still running the session's
//! requests (an expired session rather than a restarted process) orders the
//! re-issued requests behind them, because one [`crate::BlockService`] orders
//! all of its sessions together.
//!
//! Transport failures surface as [`BlockError::Io`] whose message says
//! whether the request may have executed.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use holdfast::{CallOptions, Initiator};
use thiserror::Error;

use crate::device::{BlockDevice, BlockError};
use crate::wire::{self, Info, Request, WireError};

/// Client settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeOptions {
    /// The largest request this client sends (the target's own maximum also
    /// applies). It must fit the initiator's frame limit for READ responses:
    /// see [`wire::max_request_for_frame`].
    pub max_request: u32,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            max_request: wire::DEFAULT_MAX_REQUEST,
        }
    }
}

/// Why [`Volume::connect`] failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The INFO query did not complete.
    #[error("the INFO query failed: {0}")]
    Call(#[from] holdfast::CallError),
    /// The target answered the INFO query with an error.
    #[error("the target refused the INFO query: {0}")]
    Refused(BlockError),
    /// The target's answer is not a valid INFO response (not a block target,
    /// or a version this client does not speak).
    #[error("the target's INFO response is malformed: {0}")]
    Malformed(#[from] WireError),
}

/// A remote block device over a holdfast session. Cheap to clone: clones
/// share the session.
#[derive(Clone, Debug)]
pub struct Volume {
    initiator: Initiator,
    info: Info,
    /// The piece size for splitting: the smaller maximum, rounded down to the
    /// block size.
    piece: u32,
}

impl Volume {
    /// Queries the target's INFO and returns a volume with default options.
    pub async fn connect(initiator: Initiator) -> Result<Volume, VolumeError> {
        Volume::connect_with(initiator, VolumeOptions::default()).await
    }

    /// Queries the target's INFO and returns a volume.
    pub async fn connect_with(
        initiator: Initiator,
        options: VolumeOptions,
    ) -> Result<Volume, VolumeError> {
        let reply = initiator
            .call_with(Request::Info.encode(), CallOptions::RETRY_SAFE)
            .await?;
        let body = wire::decode_response(&reply)?.map_err(VolumeError::Refused)?;
        let info = Info::decode(&body)?;
        let max = options.max_request.min(info.max_request);
        // Whole blocks per piece keep the pieces of an aligned request
        // aligned; a tiny client maximum still gets at least one block.
        let piece = (max - max % info.block_size).max(info.block_size);
        Ok(Volume {
            initiator,
            info,
            piece,
        })
    }

    /// What the target reported at connect.
    pub fn info(&self) -> Info {
        self.info
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// True if the target refuses writes.
    pub fn read_only(&self) -> bool {
        self.info.read_only
    }

    /// The largest request sent; longer ones are split.
    pub fn max_request(&self) -> u32 {
        self.piece
    }

    /// The session's initiator.
    pub fn initiator(&self) -> &Initiator {
        &self.initiator
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        BlockError::check_range(offset, u64::from(len), self.info.size)?;
        let pieces = self.split(offset, u64::from(len));
        let results = join_in_order(pieces.iter().map(|&(o, n)| async move {
            let body = self.call(Request::Read { offset: o, len: n }).await?;
            if body.len() != n as usize {
                return Err(BlockError::Io(format!(
                    "malformed READ response: {} bytes for {n} requested (it executed)",
                    body.len()
                )));
            }
            Ok(body)
        }))
        .await;
        if results.len() == 1 {
            return results.into_iter().next().unwrap_or(Ok(Bytes::new()));
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for r in results {
            out.extend_from_slice(&r?);
        }
        Ok(out.freeze())
    }

    /// Writes `data` at `offset`; with `fua`, the data is durable when this
    /// returns.
    pub async fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.check_write(offset, data.len() as u64)?;
        let pieces = self.split(offset, data.len() as u64);
        let results = join_in_order(pieces.iter().map(|&(o, n)| {
            let start = (o - offset) as usize;
            let data = data.slice(start..start + n as usize);
            self.call_empty(Request::Write {
                offset: o,
                data,
                fua,
            })
        }))
        .await;
        results.into_iter().collect()
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> Result<(), BlockError> {
        self.call_empty(Request::Flush).await
    }

    /// Declares the range unused.
    pub async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.check_write(offset, u64::from(len))?;
        let pieces = self.split(offset, u64::from(len));
        let results = join_in_order(pieces.iter().map(|&(o, n)| {
            self.call_empty(Request::Trim {
                offset: o,
                len: n,
                fua: false,
            })
        }))
        .await;
        results.into_iter().collect()
    }

    /// Writes zeroes over the range; with `fua`, durably.
    pub async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.check_write(offset, u64::from(len))?;
        let pieces = self.split(offset, u64::from(len));
        let results = join_in_order(pieces.iter().map(|&(o, n)| {
            self.call_empty(Request::WriteZeroes {
                offset: o,
                len: n,
                fua,
            })
        }))
        .await;
        results.into_iter().collect()
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.info.read_only {
            return Err(BlockError::ReadOnly);
        }
        BlockError::check_range(offset, len, self.info.size)
    }

    /// Splits a range into pieces of at most `self.piece` bytes; an empty
    /// range has no pieces.
    fn split(&self, offset: u64, len: u64) -> Vec<(u64, u32)> {
        let piece = u64::from(self.piece);
        let mut out = Vec::with_capacity(len.div_ceil(piece) as usize);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(piece);
            // n <= piece, which is a u32.
            out.push((offset + done, n as u32));
            done += n;
        }
        out
    }

    /// Issues one request and returns the success body.
    async fn call(&self, request: Request) -> Result<Bytes, BlockError> {
        let reply = self
            .initiator
            .call_with(request.encode(), CallOptions::RETRY_SAFE)
            .await
            .map_err(|e| {
                let executed = if e.may_have_executed() {
                    "it may have executed"
                } else {
                    "it did not execute"
                };
                BlockError::Io(format!(
                    "{:?} request failed in transport ({executed}): {e}",
                    request.opcode()
                ))
            })?;
        match wire::decode_response(&reply) {
            Ok(outcome) => outcome,
            Err(e) => Err(BlockError::Io(format!(
                "malformed response to {:?} (it executed): {e}",
                request.opcode()
            ))),
        }
    }

    /// Issues a request whose success body is empty.
    async fn call_empty(&self, request: Request) -> Result<(), BlockError> {
        let opcode = request.opcode();
        let body = self.call(request).await?;
        if body.is_empty() {
            Ok(())
        } else {
            Err(BlockError::Io(format!(
                "malformed response to {opcode:?}: {} unexpected bytes (it executed)",
                body.len()
            )))
        }
    }
}

/// Runs the futures to completion together, polling them in order on every
/// wake-up (so the first poll of each happens in order), and returns their
/// outputs in order. An empty set resolves at once.
async fn join_in_order<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

impl BlockDevice for Volume {
    fn size(&self) -> u64 {
        self.info.size
    }

    fn read_only(&self) -> bool {
        self.info.read_only
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        Volume::read_at(self, offset, len).await
    }

    async fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        Volume::write_at(self, offset, data, fua).await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        Volume::flush(self).await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        Volume::trim(self, offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        Volume::write_zeroes(self, offset, len, fua).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn join_in_order_first_polls_in_order_and_keeps_output_order() {
        let log = std::sync::Mutex::new(Vec::new());
        let outs = join_in_order((0..5).map(|i| {
            let log = &log;
            async move {
                log.lock().expect("log").push(i);
                // Later futures finish first.
                for _ in 0..(5 - i) {
                    tokio::task::yield_now().await;
                }
                i * 10
            }
        }))
        .await;
        assert_eq!(outs, vec![0, 10, 20, 30, 40]);
        assert_eq!(*log.lock().expect("log"), vec![0, 1, 2, 3, 4]);
        let none: Vec<u8> = join_in_order(Vec::<std::future::Ready<u8>>::new()).await;
        assert!(none.is_empty());
    }
}
