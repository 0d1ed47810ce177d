//! The block torture's second session: another initiator and volume on the
//! same target, reached through its own fault proxy and exported by an
//! in-process NBD server with an io-timeout, exactly as `holdfast nbd` runs
//! it. Its workers speak NBD to that server (over in-memory pipes, one
//! request at a time) and write the hot blocks of every first-session
//! worker's region, so both sessions write the same blocks concurrently.
//!
//! Its fault is the io-timeout: its path is blackholed for longer than the
//! io-timeout, so requests are answered EIO while the path is down, then
//! the path heals (the old connection resumes) or the initiator gives up on
//! it first and recovers on a new one. Everything either session writes or
//! reads goes through the shared [`History`] checker: a write answered EIO
//! that lands later over a newer acknowledged write is caught there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use holdfast::chaos::{Direction, FaultKind, FaultSpec, Proxy, Scope};
use holdfast::Initiator;
use holdfast_block::nbd::consts::{
    CMD_FLUSH, CMD_READ, CMD_WRITE, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, IHAVEOPT, NBDMAGIC,
    OPT_GO, REP_ACK, REP_FLAG_ERROR, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};
use holdfast_block::nbd::{NbdOptions, Server};
use holdfast_block::Volume;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::blocks::{encode, BLOCK};
use super::history::{History, Writer};
use super::workload::Tally;

/// The second session's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SecondSession {
    /// Its workers (0: no second session).
    pub(crate) workers: usize,
    /// The NBD server's io-timeout.
    pub(crate) io_timeout: Duration,
    /// Its initiator's detection bound: longer than the io-timeout, so a
    /// blackhole shorter than it makes requests time out and then resume
    /// on the same connection.
    pub(crate) detection: Duration,
    /// Inject the io-timeout faults (off: the second session only adds
    /// overlapping writers).
    pub(crate) faults: bool,
}

/// What the second session counted.
#[derive(Debug, Default)]
pub(crate) struct SecondTally {
    /// Requests answered with an error (EIO after the io-timeout).
    pub(crate) errors: AtomicU64,
    /// Operations completed.
    pub(crate) ops: AtomicU64,
    /// io-timeout faults that hit a live link.
    pub(crate) faults: AtomicU64,
}

/// The hot blocks of the volume: the first `hot` blocks of each of
/// `regions` regions of `per_region` blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HotZones {
    pub(crate) regions: u64,
    pub(crate) per_region: u64,
    pub(crate) hot: u64,
}

/// A running second session.
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    faults: tokio::task::JoinHandle<()>,
    proxy: Arc<Proxy>,
    initiator: Initiator,
    /// What it counted.
    pub(crate) tally: Arc<SecondTally>,
}

/// Starts the second session on `volume` (reached through `proxy`): its
/// NBD server, its workers and its io-timeout faults, one every
/// `fault_every` until `faults_until` (from `start`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    settings: SecondSession,
    proxy: Arc<Proxy>,
    initiator: Initiator,
    volume: Arc<Volume>,
    zones: HotZones,
    history: Arc<History>,
    tally: &Arc<Tally>,
    seed: u64,
    fault_every: Duration,
    faults_until: Instant,
) -> anyhow::Result<Running> {
    let server = Server::new(
        volume,
        NbdOptions {
            io_timeout: Some(settings.io_timeout),
            ..NbdOptions::default()
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(SecondTally::default());
    let mut tasks = Vec::new();
    for w in 0..settings.workers {
        let (client, server_end) = tokio::io::duplex(256 << 10);
        let srv = server.clone();
        tokio::spawn(async move {
            let _ = srv.serve(server_end).await;
        });
        let conn = NbdConn::open(client)
            .await
            .context("the second session's NBD handshake failed")?;
        let worker = NbdWorker {
            conn,
            zones,
            history: history.clone(),
            tally: tally.clone(),
            counts: counts.clone(),
            rng: (seed ^ 0x5eed_0000_0000_0000 ^ ((w as u64 + 1) << 24)) | 1,
        };
        tasks.push(tokio::spawn(worker.run(stop.clone())));
    }
    let faults = tokio::spawn(io_timeout_faults(
        proxy.clone(),
        settings,
        counts.clone(),
        seed,
        fault_every,
        faults_until,
        stop.clone(),
    ));
    Ok(Running {
        stop,
        tasks,
        faults,
        proxy,
        initiator,
        tally: counts,
    })
}

impl Running {
    /// Stops the workers and the faults, heals the path, waits for every
    /// operation in flight to finish and closes the session.
    pub(crate) async fn stop(self) -> anyhow::Result<Arc<SecondTally>> {
        self.stop.store(true, Ordering::Relaxed);
        self.faults.abort();
        let _ = self.faults.await;
        self.proxy
            .apply(FaultSpec::new(FaultKind::Heal, Direction::Both, Scope::All));
        for t in self.tasks {
            t.await.context("a second-session worker panicked")?;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.initiator.close()).await;
        Ok(self.tally)
    }
}

/// Blackholes the second session's path for 1.5 to 4 io-timeouts, then
/// heals it, every `every` until `until`.
async fn io_timeout_faults(
    proxy: Arc<Proxy>,
    settings: SecondSession,
    counts: Arc<SecondTally>,
    seed: u64,
    every: Duration,
    until: Instant,
    stop: Arc<AtomicBool>,
) {
    if !settings.faults {
        return;
    }
    let mut rng = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let both = |kind| FaultSpec::new(kind, Direction::Both, Scope::All);
    loop {
        tokio::time::sleep(every).await;
        if stop.load(Ordering::Relaxed) || Instant::now() >= until {
            return;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let held = settings
            .io_timeout
            .mul_f64(1.5 + (rng % 1000) as f64 / 400.0);
        if proxy.apply(both(FaultKind::Blackhole)) > 0 {
            counts.faults.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                ?held,
                "io-timeout fault: the second session's path is blackholed"
            );
        }
        tokio::time::sleep(held).await;
        proxy.apply(both(FaultKind::Heal));
    }
}

/// One second-session worker: one NBD request at a time.
struct NbdWorker {
    conn: NbdConn,
    zones: HotZones,
    history: Arc<History>,
    tally: Arc<Tally>,
    counts: Arc<SecondTally>,
    rng: u64,
}

impl NbdWorker {
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let region = self.random() % self.zones.regions;
            let count = 1 + self.random() % 8.min(self.zones.hot);
            let first =
                region * self.zones.per_region + self.random() % (self.zones.hot - count + 1);
            let roll = self.random() % 10;
            let result = match roll {
                0..=5 => self.write(first, count).await,
                6..=8 => self.read(first, count).await,
                _ => self
                    .conn
                    .request(CMD_FLUSH, 0, 0, &[])
                    .await
                    .map(|(e, _)| e),
            };
            match result {
                Ok(0) => {
                    self.counts.ops.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    self.counts.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.tally
                        .problem(format!("the second session's NBD connection broke: {e}"));
                    self.tally.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    async fn write(&mut self, first: u64, count: u64) -> std::io::Result<u32> {
        let generation = self.history.generation();
        let mut data = BytesMut::with_capacity(count as usize * BLOCK);
        for b in first..first + count {
            data.extend_from_slice(&encode(b, generation));
        }
        self.history
            .write_invoked(first, count, generation, false, Writer::Second);
        let result = self
            .conn
            .request(CMD_WRITE, first * BLOCK as u64, data.len() as u32, &data)
            .await;
        // A broken connection leaves the write in doubt: record nothing as
        // ended, so any later value of it stays acceptable.
        if let Ok((errno, _)) = &result {
            self.history
                .write_ended(first, count, generation, *errno == 0);
        }
        result.map(|(e, _)| e)
    }

    async fn read(&mut self, first: u64, count: u64) -> std::io::Result<u32> {
        let invoked = self.history.read_invoked(first, count);
        let len = count as usize * BLOCK;
        match self
            .conn
            .request(CMD_READ, first * BLOCK as u64, len as u32, &[])
            .await
        {
            Ok((0, data)) => {
                self.history
                    .read_returned(first, count, &data, invoked, Writer::Second);
                Ok(0)
            }
            Ok((errno, _)) => {
                self.history.read_failed(first, count);
                Ok(errno)
            }
            Err(e) => {
                self.history.read_failed(first, count);
                Err(e)
            }
        }
    }
}

/// A minimal NBD client over an in-memory pipe: fixed newstyle,
/// `NBD_OPT_GO` on the default export, simple replies, one request at a
/// time.
struct NbdConn {
    stream: DuplexStream,
    handle: u64,
}

impl NbdConn {
    async fn open(mut stream: DuplexStream) -> anyhow::Result<NbdConn> {
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).await?;
        if u64::from_be_bytes(greeting[..8].try_into()?) != NBDMAGIC
            || u64::from_be_bytes(greeting[8..16].try_into()?) != IHAVEOPT
        {
            bail!("not an NBD newstyle greeting");
        }
        stream
            .write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .await?;
        let mut go = Vec::with_capacity(22);
        go.extend_from_slice(&IHAVEOPT.to_be_bytes());
        go.extend_from_slice(&OPT_GO.to_be_bytes());
        go.extend_from_slice(&6u32.to_be_bytes());
        go.extend_from_slice(&0u32.to_be_bytes());
        go.extend_from_slice(&0u16.to_be_bytes());
        stream.write_all(&go).await?;
        loop {
            let mut h = [0u8; 20];
            stream.read_exact(&mut h).await?;
            let kind = u32::from_be_bytes(h[12..16].try_into()?);
            let len = u32::from_be_bytes(h[16..20].try_into()?) as usize;
            if len > 1 << 16 {
                bail!("an option reply of {len} bytes");
            }
            let mut data = vec![0u8; len];
            stream.read_exact(&mut data).await?;
            if kind == REP_ACK {
                break;
            }
            if kind & REP_FLAG_ERROR != 0 {
                bail!("NBD_OPT_GO refused ({kind:#x})");
            }
        }
        Ok(NbdConn { stream, handle: 0 })
    }

    /// Sends one request and waits for its reply: (errno, read data).
    async fn request(
        &mut self,
        kind: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> std::io::Result<(u32, Vec<u8>)> {
        self.handle += 1;
        let mut out = Vec::with_capacity(28 + payload.len());
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&self.handle.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        self.stream.write_all(&out).await?;
        let mut h = [0u8; 16];
        self.stream.read_exact(&mut h).await?;
        let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let errno = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let handle = u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        if magic != SIMPLE_REPLY_MAGIC || handle != self.handle {
            return Err(std::io::Error::other(format!(
                "unexpected reply (magic {magic:#x}, handle {handle})"
            )));
        }
        let mut data = Vec::new();
        if kind == CMD_READ && errno == 0 {
            data = vec![0u8; len as usize];
            self.stream.read_exact(&mut data).await?;
        }
        Ok((errno, data))
    }
}
