//! The transmission phase: a reader that decodes requests and runs each on
//! its own task, and a writer that sends the simple replies in completion
//! order.
//!
//! Every request holds a slot permit (and, for reads and writes, one byte
//! permit per payload byte) from the moment its header is read until its
//! reply has been handed to the socket. The reader takes the slot before
//! reading a header, so a client with [`MAX_IN_FLIGHT`] requests
//! outstanding is simply not read from: backpressure, not buffering.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::consts::*;
use super::handshake::Export;
use super::{read_exact_or_eof, NbdError};
use crate::device::{BlockDevice, BlockError};

/// Runs transmission on a negotiated connection until the client
/// disconnects or breaks the protocol, then flushes the outstanding
/// replies and closes the stream.
pub(crate) async fn run<S, D>(
    stream: BufReader<S>,
    device: Arc<D>,
    export: Export,
    io_timeout: Option<Duration>,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: BlockDevice,
{
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = Conn {
        device,
        export,
        io_timeout,
        tx,
        bytes: Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES as usize)),
        tasks: JoinSet::new(),
    };
    let reader = conn.read_requests(rd);
    let writer = write_replies(wr, rx);
    tokio::pin!(reader, writer);
    tokio::select! {
        read = &mut reader => {
            // Every request task has finished: the writer drains their
            // replies and ends once the last sender is gone.
            let written = writer.await;
            read?;
            Ok(written?)
        }
        written = &mut writer => {
            // The writer only ends first if the client stopped taking
            // replies; dropping the reader abandons the requests.
            written?;
            reader.await
        }
    }
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
    WriteZeroes { offset: u64, len: u32, fua: bool },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Flush => "flush",
            Op::Trim { .. } => "trim",
            Op::WriteZeroes { .. } => "write_zeroes",
        }
    }
}

/// The permits a request holds until its reply is written.
#[derive(Debug)]
struct Permits {
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// A simple reply on its way to the writer.
#[derive(Debug)]
struct Outgoing {
    handle: u64,
    error: u32,
    data: Option<Bytes>,
    _permits: Permits,
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
    tx: UnboundedSender<Outgoing>,
    bytes: Arc<Semaphore>,
    tasks: JoinSet<()>,
}

impl<D: BlockDevice> Conn<D> {
    /// Reads and dispatches requests until `NBD_CMD_DISC`, the end of the
    /// stream or a fatal protocol error; then waits for every request task.
    async fn read_requests<R: AsyncRead + Unpin>(mut self, mut rd: R) -> Result<(), NbdError> {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let result = loop {
            while self.tasks.try_join_next().is_some() {}
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                break Ok(()); // never closed
            };
            let mut header = [0u8; REQUEST_LEN];
            match read_exact_or_eof(&mut rd, &mut header).await {
                Ok(true) => {}
                Ok(false) => {
                    debug!("nbd: client closed the connection without NBD_CMD_DISC");
                    break Ok(());
                }
                Err(e) => break Err(e.into()),
            }
            let request = match Request::parse(&header) {
                Ok(r) => r,
                Err(magic) => {
                    break Err(NbdError::BadMagic {
                        what: "request",
                        found: u64::from(magic),
                    })
                }
            };
            match self.dispatch(&mut rd, request, slot).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Disconnect) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let Conn { tx, mut tasks, .. } = self;
        drop(tx);
        while tasks.join_next().await.is_some() {}
        result
    }

    /// Validates one request, reads its payload if any, and either answers
    /// it with an error at once or starts its device operation.
    async fn dispatch<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        req: Request,
        slot: OwnedSemaphorePermit,
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
                        _bytes: None,
                    };
                    self.refuse(&req, permits, EINVAL, "payload too large");
                    return Err(NbdError::PayloadTooLarge {
                        len: req.len,
                        max: MAX_PAYLOAD,
                    });
                }
                let permits = self.permits(slot, req.len).await;
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
                        let permits = self.permits(slot, req.len).await;
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
                    (CMD_FLAG_FUA | CMD_FLAG_NO_HOLE, true)
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
                            Op::WriteZeroes { offset, len, fua }
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

    /// Checks flags, read-only and range. `writes` selects the errors of
    /// the protocol for data writes: `EPERM` on a read-only export and
    /// `ENOSPC` beyond its end (`EINVAL` otherwise).
    fn check(&self, req: &Request, allowed: u16, writes: bool) -> Result<(), (u32, &'static str)> {
        check_flags(req, allowed)?;
        if writes && self.export.read_only() {
            return Err((EPERM, "export is read-only"));
        }
        if let Err(e) = BlockError::check_range(req.offset, u64::from(req.len), self.export.size) {
            let errno = if writes { ENOSPC } else { e.errno() };
            return Err((errno, "range beyond the end of the export"));
        }
        Ok(())
    }

    /// Takes `len` byte permits (waiting while too much payload is held).
    async fn permits(&self, slot: OwnedSemaphorePermit, len: u32) -> Permits {
        // `len` <= MAX_PAYLOAD <= the semaphore's size, and the semaphore
        // is never closed, so this always succeeds eventually.
        let bytes = Arc::clone(&self.bytes).acquire_many_owned(len).await.ok();
        Permits {
            _slot: slot,
            _bytes: bytes,
        }
    }

    /// Answers a request with an error without touching the device.
    fn refuse(&self, req: &Request, permits: Permits, errno: u32, why: &str) {
        debug!(
            handle = req.handle,
            command = req.kind,
            flags = req.flags,
            offset = req.offset,
            len = req.len,
            errno,
            "nbd: refused request: {why}"
        );
        let _ = self.tx.send(Outgoing {
            handle: req.handle,
            error: errno,
            data: None,
            _permits: permits,
        });
    }

    /// Runs `op` on its own task; its reply goes to the writer.
    fn start(&mut self, req: &Request, op: Op, permits: Permits) {
        let device = Arc::clone(&self.device);
        let tx = self.tx.clone();
        let io_timeout = self.io_timeout;
        let (handle, offset, len) = (req.handle, req.offset, req.len);
        self.tasks.spawn(async move {
            let name = op.name();
            let (error, data) = match execute(&*device, op, io_timeout).await {
                Ok(data) => (0, data),
                Err(e) => {
                    warn!(
                        handle,
                        offset,
                        len,
                        errno = e.errno(),
                        error = %e,
                        "nbd: {name} failed"
                    );
                    (e.errno(), None)
                }
            };
            let _ = tx.send(Outgoing {
                handle,
                error,
                data,
                _permits: permits,
            });
        });
    }
}

/// Permits for a request without payload.
fn bare(slot: OwnedSemaphorePermit) -> Permits {
    Permits {
        _slot: slot,
        _bytes: None,
    }
}

/// Refuses flags outside `allowed` with `EINVAL`, as the protocol asks.
fn check_flags(req: &Request, allowed: u16) -> Result<(), (u32, &'static str)> {
    if req.flags & !allowed != 0 {
        return Err((EINVAL, "command flag not supported for this command"));
    }
    Ok(())
}

/// Runs one operation on the device, bounded by `io_timeout`.
async fn execute<D: BlockDevice>(
    device: &D,
    op: Op,
    io_timeout: Option<Duration>,
) -> Result<Option<Bytes>, BlockError> {
    let run = async {
        match op {
            Op::Read { offset, len } => {
                let data = device.read_at(offset, len).await?;
                // A short or long buffer would desynchronise the stream.
                if u32::try_from(data.len()).ok() != Some(len) {
                    return Err(BlockError::Io(format!(
                        "device returned {} bytes for a read of {len}",
                        data.len()
                    )));
                }
                Ok(Some(data))
            }
            Op::Write { offset, data, fua } => {
                device.write_at(offset, data, fua).await.map(|()| None)
            }
            Op::Flush => device.flush().await.map(|()| None),
            Op::Trim { offset, len, fua } => {
                device.trim(offset, len).await?;
                if fua {
                    device.flush().await?;
                }
                Ok(None)
            }
            Op::WriteZeroes { offset, len, fua } => {
                device.write_zeroes(offset, len, fua).await.map(|()| None)
            }
        }
    };
    match io_timeout {
        None => run.await,
        Some(limit) => match tokio::time::timeout(limit, run).await {
            Ok(result) => result,
            Err(_) => Err(BlockError::Io(format!(
                "the device did not answer within the I/O timeout of {limit:?}"
            ))),
        },
    }
}

/// Sends replies as they arrive, batching whatever is queued into one
/// flush; ends when every sender is gone.
async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: UnboundedReceiver<Outgoing>,
) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(256 * 1024, wr);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(reply) = next.take() {
            let mut header = [0u8; SIMPLE_REPLY_LEN];
            let mut h = &mut header[..];
            h.put_u32(SIMPLE_REPLY_MAGIC);
            h.put_u32(reply.error);
            h.put_u64(reply.handle);
            out.write_all(&header).await?;
            if let Some(data) = &reply.data {
                out.write_all(data).await?;
            }
            // Releases the permits: the reply is in the writer's hands.
            drop(reply);
            next = rx.try_recv().ok();
        }
        out.flush().await?;
    }
    out.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

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
