//! The transmission phase: a reader that decodes requests and runs each on
//! its own task, and a writer ([`super::reply`]) that sends the replies in
//! completion order.
//!
//! Requests are checked before the device sees them: flags the command
//! does not take, a range beyond the export, a write to a read-only
//! export, and (when the export announced a minimum block size above 1,
//! as for an O_DIRECT device) an offset or length that is not a multiple
//! of it are refused at once (`EINVAL`, `ENOSPC` or `EPERM`), so no request
//! is ever done in part for breaking a constraint.
//!
//! Every request holds a slot permit (and, for reads and writes, one byte
//! permit per payload byte; for TRIM and WRITE_ZEROES, a zeroing permit)
//! from the moment its header is read until its reply has been handed to
//! the socket. The reader takes the slot before reading a header, so a
//! client with as many requests outstanding as the limit allows is simply
//! not read from: backpressure, not buffering.
//!
//! While the reader is held back it still watches the connection
//! ([`super::read_ahead`]): a client that closes it without
//! `NBD_CMD_DISC` is noticed at once, not when its requests finish.
//! Reads reach the device in pieces within the connection's read budget
//! ([`super::read_budget`]), so the work a vanished client leaves running
//! is bounded by [`NbdOptions::max_read_bytes_issued`].
//!
//! A device operation's future is never dropped while it may still take
//! effect: a request answered with an error must be known never to run
//! later, and the server does not order requests against each other. At
//! the I/O timeout, or when the client goes away with requests running
//! (the connection closed or broke without `NBD_CMD_DISC`; after
//! `NBD_CMD_DISC` the outstanding requests are finished normally), the
//! server fires the operation's [`Cancel`] and keeps waiting; the reply
//! goes out when the device has either withdrawn the operation (`EIO`) or
//! finished it (its real outcome). Request tasks are detached from the
//! connection, so even dropping the connection's future leaves them to end
//! this way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, warn};

use super::consts::*;
use super::handshake::Export;
use super::metrics::RequestMetrics;
use super::read_ahead::ReadAhead;
use super::read_budget::ReadBudget;
use super::reply::{write_replies, Body, Outgoing};
use super::{read_exact_or_eof, NbdError, NbdOptions};
use crate::device::{BlockDevice, BlockError, Cancel, Extent, Zeroing};

/// Fires a signal when dropped.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Runs transmission on a negotiated connection until the client
/// disconnects or breaks the protocol, then flushes the outstanding
/// replies and closes the stream. Returns only once every request it
/// started has ended.
pub(crate) async fn run<S, D>(
    stream: BufReader<S>,
    device: Arc<D>,
    export: Export,
    options: &NbdOptions,
    in_flight: Arc<AtomicUsize>,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: BlockDevice,
{
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    // Each request task holds a clone of `alive`; `all_ended` sees the
    // channel close when the last one is gone.
    let (alive, mut all_ended) = mpsc::channel::<()>(1);
    let cancel_all = Cancel::new();
    // If this future is dropped, the detached request tasks still end
    // cleanly: withdrawn if they can be, finished otherwise.
    let _guard = CancelOnDrop(cancel_all.clone());
    let max_bytes = options.max_in_flight_bytes.max(MAX_PAYLOAD);
    let conn = Conn {
        device,
        export,
        io_timeout: options.io_timeout,
        max_in_flight: options.max_in_flight.max(1),
        tx,
        alive,
        cancel_all: cancel_all.clone(),
        bytes: Arc::new(Semaphore::new(max_bytes as usize)),
        zeroing: Arc::new(Semaphore::new(options.max_zeroing_in_flight.max(1))),
        reads: Arc::new(ReadBudget::new(
            options.max_read_bytes_issued,
            export.min_block,
        )),
        in_flight,
        metrics: Arc::default(),
    };
    let mut reader = Box::pin(conn.read_requests(rd));
    let writer = write_replies(wr, rx, export.structured);
    tokio::pin!(writer);
    let result = tokio::select! {
        read = &mut reader => {
            // The writer drains the replies and ends once every request
            // task (each holds a sender) has ended.
            let written = writer.await;
            read.and(written.map_err(NbdError::from))
        }
        written = &mut writer => {
            // The writer only ends first if the client stopped taking
            // replies: stop reading.
            drop(reader);
            written.map_err(NbdError::from)
        }
    };
    // Whatever still runs (the writer failed) is withdrawn if it can be,
    // and waited for either way.
    cancel_all.cancel();
    while all_ended.recv().await.is_some() {}
    result
}

/// One decoded request header.
#[derive(Clone, Copy, Debug)]
struct Request {
    flags: u16,
    kind: u16,
    handle: u64,
    offset: u64,
    len: u32,
}

impl Request {
    /// Decodes a header; `Err` carries the bad magic.
    fn parse(header: &[u8; REQUEST_LEN]) -> Result<Request, u32> {
        let mut h = &header[..];
        let magic = h.get_u32();
        if magic != REQUEST_MAGIC {
            return Err(magic);
        }
        Ok(Request {
            flags: h.get_u16(),
            kind: h.get_u16(),
            handle: h.get_u64(),
            offset: h.get_u64(),
            len: h.get_u32(),
        })
    }

    fn fua(&self) -> bool {
        self.flags & CMD_FLAG_FUA != 0
    }
}

/// A device operation, ready to run.
#[derive(Debug)]
enum Op {
    Read { offset: u64, len: u32 },
    Write { offset: u64, data: Bytes, fua: bool },
    Flush,
    Trim { offset: u64, len: u32, fua: bool },
    WriteZeroes { offset: u64, len: u32, how: Zeroing },
    BlockStatus { offset: u64, len: u32, one: bool },
    Cache { offset: u64, len: u32 },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Flush => "flush",
            Op::Trim { .. } => "trim",
            Op::WriteZeroes { .. } => "write_zeroes",
            Op::BlockStatus { .. } => "block_status",
            Op::Cache { .. } => "cache",
        }
    }
}

/// What a successful operation returns.
#[derive(Debug)]
enum Done {
    Nothing,
    Data(Vec<Bytes>),
    Extents(Vec<Extent>),
}

/// The permits a request holds until its reply is written.
#[derive(Debug)]
pub(crate) struct Permits {
    _slot: Slot,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Whether to keep reading requests.
enum Flow {
    Continue,
    Disconnect,
}

/// The reader's state.
struct Conn<D> {
    device: Arc<D>,
    export: Export,
    io_timeout: Option<Duration>,
    max_in_flight: usize,
    tx: UnboundedSender<Outgoing>,
    /// Cloned into every request task; see [`run`].
    alive: mpsc::Sender<()>,
    /// Fired when the client goes away (or breaks the protocol) with
    /// requests still running.
    cancel_all: Cancel,
    bytes: Arc<Semaphore>,
    /// TRIM and WRITE_ZEROES in flight.
    zeroing: Arc<Semaphore>,
    /// Read work handed to the device.
    reads: Arc<ReadBudget>,
    /// The server's count of requests in flight (all connections).
    in_flight: Arc<AtomicUsize>,
    /// This connection's metric handles, shared with its request tasks.
    metrics: Arc<RequestMetrics>,
}

/// A request's place among the connection's [`NbdOptions::max_in_flight`],
/// counted in the server's requests in flight until its reply is written.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    counted: Arc<AtomicUsize>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, counted: &Arc<AtomicUsize>) -> Slot {
        counted.fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            counted: Arc::clone(counted),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counted.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<D: BlockDevice> Conn<D> {
    /// Reads and dispatches requests until `NBD_CMD_DISC`, the end of the
    /// stream or a fatal protocol error. The request tasks go on; [`run`]
    /// waits for them.
    async fn read_requests<R: AsyncRead + Unpin>(mut self, rd: R) -> Result<(), NbdError> {
        let mut rd = ReadAhead::new(rd);
        let slots = Arc::new(Semaphore::new(self.max_in_flight));
        loop {
            let slot = Arc::clone(&slots).acquire_owned();
            let Ok(slot) = rd.watch(slot, 0, &self.cancel_all).await else {
                break Ok(()); // never closed
            };
            let mut header = [0u8; REQUEST_LEN];
            match read_exact_or_eof(&mut rd, &mut header).await {
                Ok(true) => {}
                Ok(false) => {
                    debug!("nbd: client closed the connection without NBD_CMD_DISC");
                    // Nobody waits for the replies: what has not started
                    // is withdrawn (and a long zeroing stops).
                    self.cancel_all.cancel();
                    break Ok(());
                }
                Err(e) => {
                    self.cancel_all.cancel();
                    break Err(e.into());
                }
            }
            let slot = Slot::new(slot, &self.in_flight);
            let request = match Request::parse(&header) {
                Ok(r) => r,
                Err(magic) => {
                    self.cancel_all.cancel();
                    break Err(NbdError::BadMagic {
                        what: "request",
                        found: u64::from(magic),
                    });
                }
            };
            match self.dispatch(&mut rd, request, slot).await {
                Ok(Flow::Continue) => {}
                // NBD_CMD_DISC: the outstanding requests are finished.
                Ok(Flow::Disconnect) => break Ok(()),
                Err(e) => {
                    self.cancel_all.cancel();
                    break Err(e);
                }
            }
        }
    }

    /// Validates one request, reads its payload if any, and either answers
    /// it with an error at once or starts its device operation.
    async fn dispatch<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut ReadAhead<R>,
        req: Request,
        slot: Slot,
    ) -> Result<Flow, NbdError> {
        let fua = req.fua();
        match req.kind {
            CMD_DISC => {
                debug!("nbd: NBD_CMD_DISC");
                Ok(Flow::Disconnect)
            }
            CMD_WRITE => {
                if req.len > MAX_PAYLOAD {
                    let permits = Permits {
                        _slot: slot,
                        _budget: None,
                    };
                    self.refuse(&req, permits, EINVAL, "payload too large");
                    return Err(NbdError::PayloadTooLarge {
                        len: req.len,
                        max: MAX_PAYLOAD,
                    });
                }
                let permits = self.permits(slot, req.len);
                let permits = rd.watch(permits, req.len, &self.cancel_all).await;
                let mut data = BytesMut::zeroed(req.len as usize);
                rd.read_exact(&mut data).await?;
                match self.check(&req, CMD_FLAG_FUA, true) {
                    Err((errno, why)) => self.refuse(&req, permits, errno, why),
                    Ok(()) => {
                        let data = data.freeze();
                        let op = Op::Write {
                            offset: req.offset,
                            data,
                            fua,
                        };
                        self.start(&req, op, permits);
                    }
                }
                Ok(Flow::Continue)
            }
            CMD_READ => {
                let checked = if req.len > MAX_PAYLOAD {
                    Err((EINVAL, "read length too large"))
                } else {
                    self.check(&req, CMD_FLAG_FUA, false)
                };
                match checked {
                    Err((errno, why)) => self.refuse(&req, bare(slot), errno, why),
                    Ok(()) => {
                        let permits = self.permits(slot, req.len);
                        let permits = rd.watch(permits, 0, &self.cancel_all).await;
                        let op = Op::Read {
                            offset: req.offset,
                            len: req.len,
                        };
                        self.start(&req, op, permits);
                    }
                }
                Ok(Flow::Continue)
            }
            CMD_FLUSH => {
                match check_flags(&req, CMD_FLAG_FUA) {
                    Err((errno, why)) => self.refuse(&req, bare(slot), errno, why),
                    Ok(()) => self.start(&req, Op::Flush, bare(slot)),
                }
                Ok(Flow::Continue)
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                let (allowed, writes) = if req.kind == CMD_TRIM {
                    (CMD_FLAG_FUA, false)
                } else {
                    (CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, true)
                };
                let checked = self.check(&req, allowed, writes).and_then(|()| {
                    if self.export.read_only() {
                        Err((EPERM, "export is read-only"))
                    } else {
                        Ok(())
                    }
                });
                match checked {
                    Err((errno, why)) => self.refuse(&req, bare(slot), errno, why),
                    Ok(()) => {
                        let (offset, len) = (req.offset, req.len);
                        let op = if req.kind == CMD_TRIM {
                            Op::Trim { offset, len, fua }
                        } else {
                            let how = Zeroing {
                                fua,
                                punch: req.flags & CMD_FLAG_NO_HOLE == 0,
                                fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
                            };
                            Op::WriteZeroes { offset, len, how }
                        };
                        // The zeroing semaphore is never closed.
                        let zeroing = Arc::clone(&self.zeroing).acquire_owned();
                        let zeroing = rd.watch(zeroing, 0, &self.cancel_all).await.ok();
                        let permits = Permits {
                            _slot: slot,
                            _budget: zeroing,
                        };
                        self.start(&req, op, permits);
                    }
                }
                Ok(Flow::Continue)
            }
            CMD_CACHE => {
                match self.check(&req, CMD_FLAG_FUA, false) {
                    Err((errno, why)) => self.refuse(&req, bare(slot), errno, why),
                    Ok(()) => {
                        let (offset, len) = (req.offset, req.len);
                        self.start(&req, Op::Cache { offset, len }, bare(slot));
                    }
                }
                Ok(Flow::Continue)
            }
            CMD_BLOCK_STATUS => {
                let checked = if !self.export.allocation {
                    Err((EINVAL, "no metadata context was selected"))
                } else if req.len == 0 {
                    Err((EINVAL, "block status of an empty range"))
                } else {
                    check_flags(&req, CMD_FLAG_FUA | CMD_FLAG_REQ_ONE).and_then(|()| {
                        BlockError::check_range(req.offset, u64::from(req.len), self.export.size)
                            .map_err(|_| (EINVAL, "range beyond the end of the export"))
                    })
                };
                match checked {
                    Err((errno, why)) => self.refuse(&req, bare(slot), errno, why),
                    Ok(()) => {
                        let op = Op::BlockStatus {
                            offset: req.offset,
                            len: req.len,
                            one: req.flags & CMD_FLAG_REQ_ONE != 0,
                        };
                        self.start(&req, op, bare(slot));
                    }
                }
                Ok(Flow::Continue)
            }
            _ => {
                self.refuse(&req, bare(slot), EINVAL, "unknown command");
                Ok(Flow::Continue)
            }
        }
    }

    /// Checks flags, read-only, range and alignment. `writes` selects the
    /// errors of the protocol for data writes: `EPERM` on a read-only
    /// export and `ENOSPC` beyond its end (`EINVAL` otherwise).
    fn check(&self, req: &Request, allowed: u16, writes: bool) -> Result<(), (u32, &'static str)> {
        check_flags(req, allowed)?;
        if writes && self.export.read_only() {
            return Err((EPERM, "export is read-only"));
        }
        if let Err(e) = BlockError::check_range(req.offset, u64::from(req.len), self.export.size) {
            let errno = if writes { ENOSPC } else { e.errno() };
            return Err((errno, "range beyond the end of the export"));
        }
        let min = u64::from(self.export.min_block.max(1));
        if !req.offset.is_multiple_of(min) || u64::from(req.len) % min != 0 {
            return Err((
                EINVAL,
                "offset or length is not a multiple of the minimum block size",
            ));
        }
        Ok(())
    }

    /// Takes `len` byte permits (waiting while too much payload is held).
    async fn permits(&self, slot: Slot, len: u32) -> Permits {
        // `len` <= MAX_PAYLOAD <= the semaphore's size, and the semaphore
        // is never closed, so this always succeeds eventually.
        let bytes = Arc::clone(&self.bytes).acquire_many_owned(len).await.ok();
        Permits {
            _slot: slot,
            _budget: bytes,
        }
    }

    /// Answers a request with an error without touching the device.
    fn refuse(&self, req: &Request, permits: Permits, errno: u32, why: &str) {
        self.metrics.refused(req.kind);
        debug!(
            handle = req.handle,
            command = req.kind,
            flags = req.flags,
            offset = req.offset,
            len = req.len,
            errno,
            "nbd: refused request: {why}"
        );
        let body = if matches!(req.kind, CMD_READ | CMD_BLOCK_STATUS) {
            Body::Failed {
                error: errno,
                message: format!("refused: {why}; nothing was done"),
            }
        } else {
            Body::Status(errno)
        };
        let _ = self.tx.send(Outgoing {
            handle: req.handle,
            body,
            in_doubt: false,
            _permits: permits,
        });
    }

    /// Runs `op` on its own, detached task; its reply goes to the writer.
    fn start(&mut self, req: &Request, op: Op, permits: Permits) {
        let device = Arc::clone(&self.device);
        let tx = self.tx.clone();
        let alive = self.alive.clone();
        let cancel_all = self.cancel_all.clone();
        let reads = Arc::clone(&self.reads);
        let io_timeout = self.io_timeout;
        let (handle, offset, len) = (req.handle, req.offset, req.len);
        let with_message = matches!(req.kind, CMD_READ | CMD_BLOCK_STATUS);
        let (command, metrics) = (req.kind, Arc::clone(&self.metrics));
        tokio::spawn(async move {
            let _alive = alive;
            let name = op.name();
            let mut in_doubt = false;
            let started = std::time::Instant::now();
            let outcome = execute(&*device, &reads, op, io_timeout, &cancel_all).await;
            metrics.answered(command, outcome.as_ref().map(drop), started.elapsed());
            let body = match outcome {
                Ok(Done::Nothing) => Body::Status(0),
                Ok(Done::Data(data)) => Body::Data { offset, data },
                Ok(Done::Extents(extents)) => Body::Extents(extents),
                Err(e @ BlockError::InDoubt(_)) => {
                    error!(
                        handle,
                        offset,
                        len,
                        error = %e,
                        "nbd: {name} is in doubt: closing the connection instead of answering \
                         it (an error could be contradicted if it still runs)"
                    );
                    in_doubt = true;
                    Body::Status(e.errno())
                }
                Err(e) => {
                    // A FAST_ZERO that cannot be fast is an answer, not a
                    // failure worth a warning.
                    if matches!(e, BlockError::NotSupported(_)) {
                        debug!(handle, offset, len, error = %e, "nbd: {name} not supported");
                    } else {
                        warn!(
                            handle,
                            offset,
                            len,
                            errno = e.errno(),
                            error = %e,
                            "nbd: {name} failed"
                        );
                    }
                    if with_message {
                        Body::Failed {
                            error: e.errno(),
                            message: e.to_string(),
                        }
                    } else {
                        Body::Status(e.errno())
                    }
                }
            };
            let _ = tx.send(Outgoing {
                handle,
                body,
                in_doubt,
                _permits: permits,
            });
        });
    }
}

/// Permits for a request without payload.
fn bare(slot: Slot) -> Permits {
    Permits {
        _slot: slot,
        _budget: None,
    }
}

/// Refuses flags outside `allowed` with `EINVAL`, as the protocol asks.
fn check_flags(req: &Request, allowed: u16) -> Result<(), (u32, &'static str)> {
    if req.flags & !allowed != 0 {
        return Err((EINVAL, "command flag not supported for this command"));
    }
    Ok(())
}

/// Runs one operation on the device. When `io_timeout` passes, or
/// `cancel_all` fires, the operation is cancelled and still awaited: the
/// outcome is the device's (withdrawn, or finished).
async fn execute<D: BlockDevice>(
    device: &D,
    reads: &ReadBudget,
    op: Op,
    io_timeout: Option<Duration>,
    cancel_all: &Cancel,
) -> Result<Done, BlockError> {
    let cancel = Cancel::new();
    let name = op.name();
    // A request read after its client went away (read ahead) starts
    // cancelled: nothing of it that can be withdrawn reaches the device.
    if cancel_all.is_cancelled() {
        cancel.cancel();
    }
    let run = run_op(device, reads, op, &cancel);
    tokio::pin!(run);
    let expired = async {
        match io_timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        outcome = &mut run => return outcome,
        () = expired => format!("the I/O timeout of {:?} passed", io_timeout.unwrap_or_default()),
        () = cancel_all.cancelled() => "the connection ended".to_owned(),
    };
    warn!("nbd: {name}: {why}; cancelling it and waiting until the device has withdrawn or finished it");
    cancel.cancel();
    match run.await {
        Err(BlockError::Withdrawn(what)) => Err(BlockError::Withdrawn(format!(
            "{what} ({why}; it will not run later)"
        ))),
        outcome => outcome,
    }
}

/// Runs one operation on the device with `cancel` as its signal.
async fn run_op<D: BlockDevice>(
    device: &D,
    reads: &ReadBudget,
    op: Op,
    cancel: &Cancel,
) -> Result<Done, BlockError> {
    match op {
        Op::Read { offset, len } => {
            let data = reads.read(device, offset, len, cancel).await?;
            // A short or long buffer would desynchronise the stream.
            let total: usize = data.iter().map(Bytes::len).sum();
            if u32::try_from(total).ok() != Some(len) {
                return Err(BlockError::Io(format!(
                    "device returned {total} bytes for a read of {len}"
                )));
            }
            Ok(Done::Data(data))
        }
        Op::Write { offset, data, fua } => device
            .write_at_cancellable(offset, data, fua, cancel)
            .await
            .map(|()| Done::Nothing),
        Op::Flush => device
            .flush_cancellable(cancel)
            .await
            .map(|()| Done::Nothing),
        Op::Trim { offset, len, fua } => {
            device.trim_cancellable(offset, len, cancel).await?;
            if fua {
                device.flush_cancellable(cancel).await?;
            }
            Ok(Done::Nothing)
        }
        Op::WriteZeroes { offset, len, how } => device
            .zero_range(offset, len, how, cancel)
            .await
            .map(|()| Done::Nothing),
        Op::BlockStatus { offset, len, one } => {
            let mut extents = device.block_status(offset, len, cancel).await?;
            // The protocol asks for at least one extent, none empty, and
            // no more than the range: hold the device to it.
            extents.retain(|e| e.len > 0);
            let total: u64 = extents.iter().map(|e| u64::from(e.len)).sum();
            if extents.is_empty() || total > u64::from(len) {
                return Err(BlockError::Io(format!(
                    "device returned {} extents covering {total} bytes for a block status \
                     of {len}",
                    extents.len()
                )));
            }
            extents.truncate(if one { 1 } else { crate::device::MAX_EXTENTS });
            Ok(Done::Extents(extents))
        }
        Op::Cache { offset, len } => device
            .cache(offset, len, cancel)
            .await
            .map(|()| Done::Nothing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn request_header_decodes_and_rejects_bad_magic() {
        let mut header = [0u8; REQUEST_LEN];
        let mut h = &mut header[..];
        h.put_u32(REQUEST_MAGIC);
        h.put_u16(CMD_FLAG_FUA);
        h.put_u16(CMD_WRITE);
        h.put_u64(7);
        h.put_u64(4096);
        h.put_u32(512);
        let req = Request::parse(&header);
        assert!(req.is_ok_and(|r| r.fua()
            && r.kind == CMD_WRITE
            && r.handle == 7
            && r.offset == 4096
            && r.len == 512));
        header[0] ^= 1;
        assert!(Request::parse(&header).is_err());
    }
}
