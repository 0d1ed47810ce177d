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
//! pieces of a split request are submitted on its first poll (except the
//! pieces of a read through [`BlockDevice::read_segments`], the
//! cancellable read, which go out [`READ_WINDOW`] at a time; reads change
//! nothing, and the NBD server does not order requests against each other
//! anyway), and the
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
//!   on what was there (TRIM leaves it undefined; the file target punches a
//!   hole, which reads as zeroes): running one twice leaves what running it
//!   once does. BLOCK_STATUS and CACHE change nothing.
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
//!
//! # Several nodes
//!
//! [`Volume::connect_group`] opens the volume over a
//! [`holdfast::paths::PathGroup`]: one session per target node serving the
//! same backend. A lost node's requests are re-issued on another node once
//! the old one is fenced (or its quiesce time has passed), in their original
//! order; since every request is retry-safe, none fails for the failover.
//! The order guarantee above holds under the active/passive policy; under
//! active/active, requests in flight at once on different nodes have no
//! order between them.
//!
//! # Cancellation
//!
//! The `*_cancellable` operations ([`BlockDevice`]) pass their [`Cancel`]
//! to [`Initiator::call_cancellable`]: a request (or a piece of a split
//! one) not yet sent when the signal fires is withdrawn and never runs
//! ([`BlockError::Withdrawn`]); one already sent is waited for until its
//! real outcome is known, and never re-issued.
//!
//! # Identity
//!
//! If the target's INFO carries a volume id ([`crate::identity`]), every
//! request names it, and the target refuses a request meant for another
//! volume. When that happens (another target now answers at the address,
//! serving another volume) the volume fails for good: every later request
//! fails at once with the same message, and the session is closed. No
//! request, re-issued or new, ever lands on the other volume.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use holdfast::paths::PathGroup;
use holdfast::{CallError, CallOptions, Initiator, InitiatorStats, SessionLoss};
use thiserror::Error;
use tracing::error;

use crate::device::{BlockDevice, BlockError, Cancel, Extent, Zeroing};
use crate::join::{combine, join_in_order, join_windowed};
use crate::wire::{self, Info, Request, WireError};

/// Most pieces of one cancellable read ([`BlockDevice::read_segments`])
/// outstanding at once: 4 pieces (8 MiB at the default 2 MiB request
/// size). A caller that gives up on a 32 MiB read then leaves at most this
/// much work running on the target; the pieces not yet issued are
/// withdrawn and never sent. The NBD server bounds each client's reads
/// together, across requests ([`crate::nbd::NbdOptions::max_read_bytes_issued`]),
/// and hands the volume pieces no longer than one request.
/// [`Volume::read_at`] issues every piece at once.
pub const READ_WINDOW: usize = 4;

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

/// What a volume's requests travel over: one session, or a path group.
#[derive(Clone, Debug)]
enum Link {
    /// One session to one target.
    One(Initiator),
    /// One session per node of a path group.
    Group(PathGroup),
}

impl Link {
    async fn call_cancellable(
        &self,
        payload: Bytes,
        options: CallOptions,
        cancel: impl Future<Output = ()>,
    ) -> Result<Bytes, CallError> {
        match self {
            Link::One(i) => i.call_cancellable(payload, options, cancel).await,
            Link::Group(g) => g.call_cancellable(payload, options, cancel).await,
        }
    }

    async fn close(&self) -> Result<(), SessionLoss> {
        match self {
            Link::One(i) => i.close().await,
            Link::Group(g) => g.close().await,
        }
    }
}

/// A remote block device over a holdfast session (or a path group of
/// sessions to several nodes). Cheap to clone: clones share the sessions.
#[derive(Clone, Debug)]
pub struct Volume {
    link: Link,
    info: Info,
    /// The piece size for splitting: the smaller maximum, rounded down to the
    /// block size.
    piece: u32,
    /// How messages name the target ("the target" unless set).
    target_name: Arc<str>,
    /// Set once the target refused a request as meant for another volume:
    /// the message every later request fails with.
    failed: Arc<OnceLock<String>>,
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
        Volume::open(Link::One(initiator), options).await
    }

    /// Queries the INFO of the path group's nodes (through the first one
    /// that answers) and returns a volume with default options.
    pub async fn connect_group(group: PathGroup) -> Result<Volume, VolumeError> {
        Volume::connect_group_with(group, VolumeOptions::default()).await
    }

    /// As [`Volume::connect_group`], with options.
    pub async fn connect_group_with(
        group: PathGroup,
        options: VolumeOptions,
    ) -> Result<Volume, VolumeError> {
        Volume::open(Link::Group(group), options).await
    }

    async fn open(link: Link, options: VolumeOptions) -> Result<Volume, VolumeError> {
        let reply = link
            .call_cancellable(
                Request::Info.encode(),
                CallOptions::RETRY_SAFE,
                std::future::pending(),
            )
            .await?;
        let body = wire::decode_response(&reply)?.map_err(VolumeError::Refused)?;
        let info = Info::decode(&body)?;
        let max = options.max_request.min(info.max_request);
        // Whole blocks per piece keep the pieces of an aligned request
        // aligned; a tiny client maximum still gets at least one block.
        let piece = (max - max % info.block_size).max(info.block_size);
        Ok(Volume {
            link,
            info,
            piece,
            target_name: Arc::from("the target"),
            failed: Arc::new(OnceLock::new()),
        })
    }

    /// Names the target in error messages (its address, say).
    pub fn with_target_name(mut self, name: impl std::fmt::Display) -> Volume {
        self.target_name = Arc::from(format!("the target at {name}"));
        self
    }

    /// The permanent failure, if the target was found serving another
    /// volume.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
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

    /// The session's initiator (`None` over a path group).
    pub fn initiator(&self) -> Option<&Initiator> {
        match &self.link {
            Link::One(i) => Some(i),
            Link::Group(_) => None,
        }
    }

    /// The path group (`None` over a single session).
    pub fn path_group(&self) -> Option<&PathGroup> {
        match &self.link {
            Link::One(_) => None,
            Link::Group(g) => Some(g),
        }
    }

    /// Closes the session (every path's, over a group) cleanly.
    pub async fn close(&self) -> Result<(), SessionLoss> {
        self.link.close().await
    }

    /// Waits until the session (over a group: every path) is over.
    pub async fn ended(&self) -> Result<(), SessionLoss> {
        match &self.link {
            Link::One(i) => i.ended().await,
            Link::Group(g) => g.ended().await,
        }
    }

    /// The session's counters (over a group: the sum of every path's
    /// current session).
    pub async fn session_stats(&self) -> Option<InitiatorStats> {
        match &self.link {
            Link::One(i) => i.stats().await,
            Link::Group(g) => Some(g.stats().await.sessions()),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        let pieces = self.read_pieces(offset, len, &Cancel::new(), None).await?;
        if pieces.len() <= 1 {
            return Ok(pieces.into_iter().next().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for p in pieces {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// Reads `len` bytes at `offset` as the pieces the target sent (no
    /// copy into one buffer). With a `window`, at most that many pieces are
    /// outstanding at once (see [`READ_WINDOW`]); without, all are issued
    /// on the first poll.
    async fn read_pieces(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
        window: Option<usize>,
    ) -> Result<Vec<Bytes>, BlockError> {
        BlockError::check_range(offset, u64::from(len), self.info.size)?;
        let pieces = self.split(offset, u64::from(len));
        let window = window.unwrap_or(pieces.len());
        let results = join_windowed(
            pieces.iter().map(|&(o, n)| async move {
                let body = self
                    .call(Request::Read { offset: o, len: n }, cancel)
                    .await?;
                if body.len() != n as usize {
                    return Err(BlockError::Io(format!(
                        "malformed READ response: {} bytes for {n} requested (it executed)",
                        body.len()
                    )));
                }
                Ok(body)
            }),
            window,
        )
        .await;
        combine(results)
    }

    /// Writes `data` at `offset`; with `fua`, the data is durable when this
    /// returns.
    pub async fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.write(offset, data, fua, &Cancel::new()).await
    }

    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.check_write(offset, data.len() as u64)?;
        let pieces = self.split(offset, data.len() as u64);
        let results = join_in_order(pieces.iter().map(|&(o, n)| {
            let start = (o - offset) as usize;
            let data = data.slice(start..start + n as usize);
            self.call_empty(
                Request::Write {
                    offset: o,
                    data,
                    fua,
                },
                cancel,
            )
        }))
        .await;
        combine(results).map(drop)
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> Result<(), BlockError> {
        self.call_empty(Request::Flush, &Cancel::new()).await
    }

    /// Declares the range unused.
    pub async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.zero(offset, len, None, &Cancel::new()).await
    }

    /// Writes zeroes over the range; with `fua`, durably.
    pub async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        let how = Zeroing {
            fua,
            ..Zeroing::default()
        };
        self.zero(offset, len, Some(how), &Cancel::new()).await
    }

    /// The extents of the range (one request, not split: the answer may
    /// cover less than asked). A target without the extensions is not
    /// asked: the range is reported as data.
    async fn extents(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> Result<Vec<Extent>, BlockError> {
        BlockError::check_range(offset, u64::from(len), self.info.size)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if !self.info.extensions {
            return Ok(vec![Extent { len, flags: 0 }]);
        }
        let body = self
            .call(Request::BlockStatus { offset, len }, cancel)
            .await?;
        wire::decode_extents(&body, len)
            .map_err(|e| BlockError::Io(format!("malformed BLOCK_STATUS response: {e}")))
    }

    /// Asks the target to prefetch the range; a target without the
    /// extensions is not asked.
    async fn prefetch(&self, offset: u64, len: u32, cancel: &Cancel) -> Result<(), BlockError> {
        BlockError::check_range(offset, u64::from(len), self.info.size)?;
        if !self.info.extensions || len == 0 {
            return Ok(());
        }
        self.call_empty(Request::Cache { offset, len }, cancel)
            .await
    }

    /// TRIM (`write_zeroes` `None`) or WRITE_ZEROES (`Some(how)`). A
    /// target without the extensions gets no PUNCH or FAST flag: a fast
    /// request is refused here, and a punch allowed is simply not used.
    async fn zero(
        &self,
        offset: u64,
        len: u32,
        write_zeroes: Option<Zeroing>,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.check_write(offset, u64::from(len))?;
        let extensions = self.info.extensions;
        if write_zeroes.is_some_and(|how| how.fast) && !extensions {
            return Err(BlockError::NotSupported(format!(
                "{} is too old to zero fast (no protocol extensions); nothing was done",
                self.target_name
            )));
        }
        let pieces = self.split(offset, u64::from(len));
        let results = join_in_order(pieces.iter().map(|&(o, n)| {
            let request = match write_zeroes {
                None => Request::Trim {
                    offset: o,
                    len: n,
                    fua: false,
                },
                Some(how) => Request::WriteZeroes {
                    offset: o,
                    len: n,
                    fua: how.fua,
                    punch: how.punch && extensions,
                    fast: how.fast && extensions,
                },
            };
            self.call_empty(request, cancel)
        }))
        .await;
        combine(results).map(drop)
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

    /// Issues one request (naming the volume, if it has an id) and returns
    /// the success body; `cancel` withdraws it if it was not yet sent.
    async fn call(&self, request: Request, cancel: &Cancel) -> Result<Bytes, BlockError> {
        if let Some(message) = self.failed.get() {
            return Err(BlockError::Io(message.clone()));
        }
        let opcode = request.opcode();
        // Cancelled before it was issued: nothing to withdraw.
        cancel.check(&format!("{opcode:?} request"))?;
        let reply = self
            .link
            .call_cancellable(
                request.encode_for(self.info.volume_id),
                CallOptions::RETRY_SAFE,
                cancel.cancelled(),
            )
            .await
            .map_err(|e| {
                if cancel.is_cancelled() && e.is_settled() && !e.may_have_executed() {
                    return BlockError::Withdrawn(format!("{opcode:?} request: {e}"));
                }
                if !e.is_settled() {
                    return BlockError::InDoubt(format!(
                        "{opcode:?} request: {e}; the target may still run it until its \
                         session there ends"
                    ));
                }
                let executed = if e.may_have_executed() {
                    "it may have executed"
                } else {
                    "it did not execute"
                };
                BlockError::Io(format!(
                    "{opcode:?} request failed in transport ({executed}): {e}"
                ))
            })?;
        match wire::decode_response(&reply) {
            Ok(Err(BlockError::WrongVolume {
                expected,
                found,
                size,
            })) => Err(BlockError::Io(
                self.fail_wrong_volume(expected, found, size),
            )),
            Ok(outcome) => outcome,
            Err(e) => Err(BlockError::Io(format!(
                "malformed response to {opcode:?} (it executed): {e}"
            ))),
        }
    }

    /// Fails the volume for good: the target serves another volume. Logs
    /// once, closes the session, and returns the message.
    fn fail_wrong_volume(
        &self,
        expected: crate::VolumeId,
        found: crate::VolumeId,
        size: u64,
    ) -> String {
        let found = if found.is_nil() {
            "a volume without identity".to_owned()
        } else {
            format!("volume {found}")
        };
        let message = format!(
            "{} now serves {found} (size {size}), not {expected}; the export is failed, \
             nothing was written",
            self.target_name
        );
        if self.failed.set(message.clone()).is_ok() {
            error!("{message}");
            // Every request still outstanding is refused the same way, so
            // the clean close completes.
            let link = self.link.clone();
            tokio::spawn(async move {
                let _ = link.close().await;
            });
        }
        self.failed.get().cloned().unwrap_or(message)
    }

    /// Issues a request whose success body is empty.
    async fn call_empty(&self, request: Request, cancel: &Cancel) -> Result<(), BlockError> {
        let opcode = request.opcode();
        let body = self.call(request, cancel).await?;
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

    async fn read_segments(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> Result<Vec<Bytes>, BlockError> {
        self.read_pieces(offset, len, cancel, Some(READ_WINDOW))
            .await
    }

    async fn write_at_cancellable(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.write(offset, data, fua, cancel).await
    }

    async fn flush_cancellable(&self, cancel: &Cancel) -> Result<(), BlockError> {
        self.call_empty(Request::Flush, cancel).await
    }

    async fn trim_cancellable(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.zero(offset, len, None, cancel).await
    }

    async fn write_zeroes_cancellable(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        let how = Zeroing {
            fua,
            ..Zeroing::default()
        };
        self.zero(offset, len, Some(how), cancel).await
    }

    fn min_block_size(&self) -> u32 {
        if self.info.aligned {
            self.info.block_size
        } else {
            1
        }
    }

    async fn zero_range(
        &self,
        offset: u64,
        len: u32,
        how: Zeroing,
        cancel: &Cancel,
    ) -> Result<(), BlockError> {
        self.zero(offset, len, Some(how), cancel).await
    }

    async fn block_status(
        &self,
        offset: u64,
        len: u32,
        cancel: &Cancel,
    ) -> Result<Vec<Extent>, BlockError> {
        self.extents(offset, len, cancel).await
    }

    async fn cache(&self, offset: u64, len: u32, cancel: &Cancel) -> Result<(), BlockError> {
        self.prefetch(offset, len, cancel).await
    }
}
