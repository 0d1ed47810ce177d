//! The target side: [`BlockService`] serves a [`BlockDevice`] as a holdfast
//! service.
//!
//! For each command it decodes the block request ([`crate::wire`]), admits
//! it into the overlap order ([`crate::ordering`]) during the target's
//! synchronous, in-session-order `call`, and returns a future that waits for
//! earlier conflicting requests, runs the operation on the device and
//! encodes the response. Requests that do not conflict run concurrently.
//! The response buffer carries the request's [`crate::ordering::Release`]:
//! the holdfast target keeps a response until the initiator acknowledges it
//! (or the session ends), and only then may a later overlapping write of the
//! same session start (see [`crate::ordering`] for why re-issue needs it).
//! One sequencer serves all sessions of the service.
//!
//! Nothing a client sends can make it fail: a malformed or oversized request
//! gets an `Invalid` error response, a request outside the device an
//! `OutOfRange` one, a write to a read-only device `ReadOnly`, a request
//! naming another volume than [`ServiceOptions::volume_id`] a
//! `WrongVolume` one (see [`crate::identity`]), and device errors their
//! own. Such requests are answered at once, without being
//! ordered (they touch nothing).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use holdfast::{Endpoint, Target, TargetOptions};
//! use holdfast_block::{BlockService, FileDevice, OpenOptions};
//!
//! let device = FileDevice::open("/srv/disk.img", OpenOptions {
//!     size: Some(1 << 30),
//!     ..OpenOptions::default()
//! })?;
//! let target = Target::serve(
//!     &[Endpoint::Tcp("0.0.0.0:7400".parse()?)],
//!     TargetOptions::default(),
//!     BlockService::new(device),
//! )
//! .await?;
//! # drop(target);
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tracing::debug;

use crate::backend_log::{BackendLatency, FailureLog};
use crate::device::{BlockDevice, BlockError, Cancel, Zeroing};
use crate::identity::VolumeId;
use crate::ordering::{Access, Release, Sequencer};
use crate::wire::{self, Info, Request};

/// Settings of a [`BlockService`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceOptions {
    /// The largest request accepted (READ and WRITE data, TRIM and
    /// WRITE_ZEROES ranges). It must leave room in both sides' holdfast
    /// frame limit: see [`wire::max_request_for_frame`].
    pub max_request: u32,
    /// The block size announced to clients (a power of two): requests
    /// aligned to it are efficient, and a device opened with O_DIRECT
    /// requires it (4096 covers that).
    pub block_size: u32,
    /// The served volume's identity, reported by INFO and checked against
    /// every request that names one. `None`: the volume has no identity,
    /// and every request naming one is refused.
    pub volume_id: Option<VolumeId>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            max_request: wire::DEFAULT_MAX_REQUEST,
            block_size: 4096,
            volume_id: None,
        }
    }
}

/// The future a [`BlockService`] returns.
pub type BlockFuture = Pin<Box<dyn Future<Output = Result<Bytes, Infallible>> + Send + 'static>>;

/// Serves a [`BlockDevice`] over holdfast: a
/// `tower_service::Service<holdfast::Request>` answering every command with
/// an encoded block response. Cheap to clone; clones share the device and
/// the overlap order.
pub struct BlockService<D> {
    device: Arc<D>,
    order: Sequencer,
    info: Info,
    failures: Arc<FailureLog>,
    latency: Arc<BackendLatency>,
}

impl<D> Clone for BlockService<D> {
    fn clone(&self) -> Self {
        BlockService {
            device: self.device.clone(),
            order: self.order.clone(),
            info: self.info,
            failures: self.failures.clone(),
            latency: self.latency.clone(),
        }
    }
}

impl<D> std::fmt::Debug for BlockService<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockService")
            .field("info", &self.info)
            .field("in_flight", &self.order.in_flight())
            .finish_non_exhaustive()
    }
}

impl<D: BlockDevice> BlockService<D> {
    /// Serves `device` with default options.
    pub fn new(device: D) -> Self {
        BlockService::with_options(device, ServiceOptions::default())
    }

    /// Serves `device` with `options`.
    pub fn with_options(device: D, options: ServiceOptions) -> Self {
        BlockService::shared(Arc::new(device), options)
    }

    /// Serves a device the caller keeps a handle to.
    ///
    /// A block size that is not a power of two is rounded up to one, and a
    /// maximum request below the block size is raised to it. A device that
    /// needs aligned requests ([`BlockDevice::min_block_size`] above 1)
    /// raises the block size to its own and is announced as ALIGNED, with
    /// the maximum rounded down to whole blocks.
    pub fn shared(device: Arc<D>, options: ServiceOptions) -> Self {
        let min = device.min_block_size().max(1);
        let block_size = options
            .block_size
            .max(min)
            .max(1)
            .checked_next_power_of_two();
        let block_size = block_size.unwrap_or(1 << 31);
        let max_request = options.max_request.max(block_size);
        let info = Info {
            size: device.size(),
            read_only: device.read_only(),
            block_size,
            max_request: max_request - max_request % block_size,
            volume_id: options.volume_id.filter(|id| !id.is_nil()),
            aligned: min > 1,
            extensions: true,
        };
        BlockService {
            device,
            order: Sequencer::new(),
            info,
            failures: Arc::default(),
            latency: Arc::default(),
        }
    }

    /// The device served.
    pub fn device(&self) -> &Arc<D> {
        &self.device
    }

    /// What INFO answers.
    pub fn info(&self) -> Info {
        self.info
    }

    /// Reads and writes admitted whose responses are not yet released.
    pub fn in_flight(&self) -> usize {
        self.order.in_flight()
    }

    /// Decodes and checks a payload, and admits it into the order. Errors
    /// are answered without ordering.
    fn admit(
        &self,
        session: u64,
        payload: &Bytes,
    ) -> Result<(Request, crate::ordering::Ticket), BlockError> {
        let (request, volume) = Request::decode_addressed(payload, self.info.max_request)
            .map_err(|e| BlockError::Invalid(e.to_string()))?;
        if let Some(expected) = volume {
            if self.info.volume_id != Some(expected) {
                return Err(BlockError::WrongVolume {
                    expected,
                    found: self.info.volume_id.unwrap_or(VolumeId([0; 16])),
                    size: self.info.size,
                });
            }
        }
        if request.is_write() && self.info.read_only {
            return Err(BlockError::ReadOnly);
        }
        let access = match request.range() {
            Some((offset, len)) => {
                BlockError::check_range(offset, len, self.info.size)?;
                if request.is_write() {
                    Access::Write { offset, len }
                } else {
                    Access::Read { offset, len }
                }
            }
            None if matches!(request, Request::Flush) => Access::Flush,
            None => Access::Independent,
        };
        Ok((request, self.order.admit(session, access)))
    }
}

/// Runs one request on `device`, without any ordering, and returns the
/// response body (READ data, INFO, or empty). `info` answers INFO.
/// [`BlockService`] calls this once the request's turn has come.
pub async fn execute<D: BlockDevice>(
    device: &D,
    request: Request,
    info: Info,
) -> Result<Bytes, BlockError> {
    match request {
        Request::Read { offset, len } => device.read_at(offset, len).await,
        Request::Write { offset, data, fua } => {
            device.write_at(offset, data, fua).await?;
            Ok(Bytes::new())
        }
        Request::Flush => {
            device.flush().await?;
            Ok(Bytes::new())
        }
        Request::Trim { offset, len, fua } => {
            device.trim(offset, len).await?;
            if fua {
                device.flush().await?;
            }
            Ok(Bytes::new())
        }
        Request::WriteZeroes {
            offset,
            len,
            fua,
            punch,
            fast,
        } => {
            let how = Zeroing { fua, punch, fast };
            device.zero_range(offset, len, how, &Cancel::new()).await?;
            Ok(Bytes::new())
        }
        Request::Info => Ok(Bytes::copy_from_slice(&info.encode())),
        Request::BlockStatus { offset, len } => {
            let extents = device.block_status(offset, len, &Cancel::new()).await?;
            Ok(wire::encode_extents(&extents))
        }
        Request::Cache { offset, len } => {
            device.cache(offset, len, &Cancel::new()).await?;
            Ok(Bytes::new())
        }
    }
}

/// A response that keeps its request's place in the order until every copy
/// of it is dropped.
struct Held {
    response: Bytes,
    _release: Release,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.response
    }
}

/// Encodes the outcome of [`execute`] as a response payload.
pub fn encode_outcome(outcome: &Result<Bytes, BlockError>) -> Bytes {
    match outcome {
        Ok(body) => wire::encode_ok(body),
        Err(e) => wire::encode_err(e),
    }
}

impl<D: BlockDevice> tower_service::Service<holdfast::Request> for BlockService<D> {
    type Response = Bytes;
    type Error = Infallible;
    type Future = BlockFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: holdfast::Request) -> BlockFuture {
        let (session, seq) = (req.session, req.seq);
        match self.admit(session.0, &req.payload) {
            Err(e) => {
                debug!(%session, seq, error = %e, "request refused");
                Box::pin(std::future::ready(Ok(wire::encode_err(&e))))
            }
            Ok((request, mut ticket)) => {
                let device = self.device.clone();
                let info = self.info;
                let failures = self.failures.clone();
                let latency = self.latency.clone();
                let start = req.start;
                Box::pin(async move {
                    ticket.ready().await;
                    // The quiesce promise (PROTOCOL.md §11.4): the moment it
                    // would touch the device is the moment it starts. A
                    // refused request never touches it; the target answers
                    // it NotExecuted whatever this returns.
                    if let Err(why) = start.begin() {
                        debug!(%session, seq, reason = %why, "request not started");
                        drop(ticket.executed());
                        return Ok(wire::encode_err(&BlockError::Invalid(why.to_string())));
                    }
                    let started = std::time::Instant::now();
                    let op = request.opcode();
                    let outcome = execute(&*device, request, info).await;
                    latency.record(op, started.elapsed());
                    let release = ticket.executed();
                    if let Err(e) = &outcome {
                        failures.failed(session, seq, e);
                    }
                    Ok(Bytes::from_owner(Held {
                        response: encode_outcome(&outcome),
                        _release: release,
                    }))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Waker;

    use holdfast::proto::SessionId;
    use tower_service::Service;

    use super::*;
    use crate::MemoryDevice;

    fn req(session: u64, seq: u64, r: &Request) -> holdfast::Request {
        holdfast::Request {
            session: SessionId(session),
            seq,
            payload: r.encode(),
            one_way: false,
            max_response: usize::MAX,
            start: holdfast::StartGate::default(),
        }
    }

    fn write(offset: u64, data: &'static [u8]) -> Request {
        Request::Write {
            offset,
            data: Bytes::from_static(data),
            fua: false,
        }
    }

    /// Polls a future once.
    fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Runs a future that must not wait (MemoryDevice never does).
    fn now<F: Future>(f: F) -> F::Output {
        match poll_once(pin!(f)) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the future waited"),
        }
    }

    fn outcome(response: Result<Bytes, Infallible>) -> Result<Bytes, BlockError> {
        let Ok(bytes) = response;
        wire::decode_response(&bytes).expect("well-formed")
    }

    #[test]
    fn a_later_overlapping_write_waits_until_the_earlier_response_is_released() {
        let mut svc = BlockService::new(MemoryDevice::new(4096));
        let first = svc.call(req(1, 1, &write(0, b"first")));
        let mut second = svc.call(req(1, 2, &write(2, b"second")));
        let other = svc.call(req(1, 3, &write(100, b"elsewhere")));
        // The second may not start while the first has not run...
        assert!(poll_once(second.as_mut()).is_pending());
        assert!(now(other).is_ok(), "disjoint requests do not wait");
        let response = now(first).expect("first");
        // ...nor while the first's response is held (not yet acknowledged).
        assert!(poll_once(second.as_mut()).is_pending());
        let copy = response.clone();
        drop(response);
        assert!(
            poll_once(second.as_mut()).is_pending(),
            "a copy still holds it"
        );
        drop(copy);
        let Poll::Ready(Ok(held)) = poll_once(second.as_mut()) else {
            panic!("the second did not run once the first was released");
        };
        assert_eq!(svc.in_flight(), 1, "the second's response is still held");
        drop(held);
        assert_eq!(svc.in_flight(), 0);
        let data = now(svc.device().read_at(0, 8)).expect("read");
        assert_eq!(data.as_ref(), b"fisecond");
    }

    #[test]
    fn another_sessions_write_waits_only_for_execution() {
        let mut svc = BlockService::new(MemoryDevice::new(4096));
        let first = svc.call(req(1, 1, &write(0, b"first")));
        let second = svc.call(req(2, 1, &write(0, b"second")));
        let _held = now(first).expect("first");
        assert!(outcome(now(second)).is_ok());
    }

    #[test]
    fn bad_requests_are_answered_with_errors() {
        let mut svc = BlockService::new(MemoryDevice::new(4096));
        let garbage = holdfast::Request {
            session: SessionId(1),
            seq: 1,
            payload: Bytes::from_static(b"\xb1\x09garbage"),
            one_way: false,
            max_response: usize::MAX,
            start: holdfast::StartGate::default(),
        };
        assert!(matches!(
            outcome(now(svc.call(garbage))),
            Err(BlockError::Invalid(_))
        ));
        let beyond = Request::Read {
            offset: 4000,
            len: 200,
        };
        assert_eq!(
            outcome(now(svc.call(req(1, 2, &beyond)))),
            Err(BlockError::OutOfRange {
                offset: 4000,
                len: 200,
                size: 4096
            })
        );
        let info = outcome(now(svc.call(req(1, 3, &Request::Info)))).expect("info");
        assert_eq!(Info::decode(&info), Ok(svc.info()));
        assert_eq!(svc.in_flight(), 0);
    }

    #[test]
    fn requests_naming_another_volume_are_refused() {
        let mine = VolumeId([1; 16]);
        let other = VolumeId([2; 16]);
        let mut svc = BlockService::with_options(
            MemoryDevice::new(4096),
            ServiceOptions {
                volume_id: Some(mine),
                ..ServiceOptions::default()
            },
        );
        let payload = |id| write(0, b"x").encode_for(id);
        let call = |svc: &mut BlockService<MemoryDevice>, id| {
            outcome(now(svc.call(holdfast::Request {
                session: SessionId(1),
                seq: 1,
                payload: payload(id),
                one_way: false,
                max_response: usize::MAX,
                start: holdfast::StartGate::default(),
            })))
        };
        assert_eq!(
            call(&mut svc, Some(other)),
            Err(BlockError::WrongVolume {
                expected: other,
                found: mine,
                size: 4096
            })
        );
        assert_eq!(now(svc.device().read_at(0, 1)).expect("read")[0], 0);
        assert!(call(&mut svc, Some(mine)).is_ok());
        assert!(
            call(&mut svc, None).is_ok(),
            "requests without an id are not checked"
        );
        let mut anonymous = BlockService::new(MemoryDevice::new(4096));
        assert!(matches!(
            call(&mut anonymous, Some(mine)),
            Err(BlockError::WrongVolume { found, .. }) if found.is_nil()
        ));
        let info = outcome(now(svc.call(req(1, 9, &Request::Info)))).expect("info");
        assert_eq!(Info::decode(&info).expect("info").volume_id, Some(mine));
    }

    #[test]
    fn options_are_made_consistent() {
        let svc = BlockService::with_options(
            MemoryDevice::new(4096),
            ServiceOptions {
                max_request: 100,
                block_size: 3000,
                ..ServiceOptions::default()
            },
        );
        assert_eq!(svc.info().block_size, 4096);
        assert_eq!(svc.info().max_request, 4096);
        assert!(Info::decode(&svc.info().encode()).is_ok());
    }

    /// Counts `holdfast_backend_io_seconds` registrations and samples.
    #[derive(Debug, Default)]
    struct Samples {
        registered: std::sync::atomic::AtomicU64,
        samples: Arc<SampleCount>,
    }

    #[derive(Debug, Default)]
    struct SampleCount(std::sync::atomic::AtomicU64);

    impl metrics::HistogramFn for SampleCount {
        fn record(&self, _: f64) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl metrics::Recorder for Samples {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            assert_eq!(key.name(), crate::backend_log::BACKEND_IO_SECONDS);
            self.registered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::Histogram::from_arc(Arc::clone(&self.samples))
        }
    }

    #[test]
    fn backend_latency_is_recorded_per_request_through_a_handle_registered_once() {
        let recorder = Samples::default();
        let mut svc = BlockService::new(MemoryDevice::new(1 << 20));
        // The clones a target makes share the handle.
        let mut clone = svc.clone();
        metrics::with_local_recorder(&recorder, || {
            for seq in 0..100u64 {
                let svc = if seq % 2 == 0 { &mut svc } else { &mut clone };
                assert!(outcome(now(svc.call(req(1, seq, &write(seq * 8, b"12345678"))))).is_ok());
            }
        });
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(load(&recorder.samples.0), 100, "a sample per request");
        assert_eq!(
            load(&recorder.registered),
            1,
            "the write series was registered again for a later request"
        );
    }
}
