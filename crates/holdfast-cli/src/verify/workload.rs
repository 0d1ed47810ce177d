//! The demo's verified workload: workers that write, read back, zero and
//! flush self-describing blocks through any [`BlockDevice`], each keeping an
//! exact model of its own region so every read is checked.
//!
//! Each worker owns a disjoint region and runs one operation at a time, so
//! its model is exact; the workers run concurrently, so the session carries
//! many operations at once. A write whose call failed might or might not
//! have landed: the model then accepts either outcome for those blocks
//! until a read settles it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use holdfast_block::BlockDevice;

use super::blocks::{decode, encode, Content, BLOCK};
use super::history::{History, Writer};

/// Counters shared by all workers and read by the progress line.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ops: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) zeroes: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    /// Blocks that read back older than the last acknowledged write.
    pub(crate) lost: AtomicU64,
    /// Blocks that read back torn, misplaced or never written.
    pub(crate) corrupt: AtomicU64,
    /// Operations that returned an error.
    pub(crate) failed: AtomicU64,
    /// When the last operation completed, in ns since `start`.
    pub(crate) last_completion_ns: AtomicU64,
    /// The first few problems, described.
    pub(crate) problems: Mutex<Vec<String>>,
}

impl Tally {
    /// Records a problem (the first 20 are kept).
    pub(crate) fn problem(&self, text: String) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < 20 {
            p.push(text);
        }
    }
}

/// What one block should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expect {
    /// The generation of the last acknowledged change (0 = never written).
    generation: u64,
    /// True if that change wrote zeroes.
    zero: bool,
    /// A change that failed and may or may not have landed.
    maybe: Option<(u64, bool)>,
    /// When the acknowledged change was issued and acknowledged (ns since
    /// the start), for the history excerpt of a violation.
    acked: (u64, u64),
}

const NEVER: Expect = Expect {
    generation: 0,
    zero: true,
    maybe: None,
    acked: (0, 0),
};

/// Formats nanoseconds since the start as seconds.
fn at(ns: u64) -> String {
    format!("{:.6}s", ns as f64 / 1e9)
}

/// One worker: its region and its model.
pub(crate) struct Worker<D> {
    device: Arc<D>,
    first_block: u64,
    blocks: u64,
    model: HashMap<u64, Expect>,
    next_generation: u64,
    rng: u64,
    tally: Arc<Tally>,
    start: Instant,
    /// The shared checker, when other writers overlap this region: then
    /// reads are checked against it instead of the worker's own model.
    history: Option<Arc<History>>,
    /// With a history: half the operations stay in the region's first `hot`
    /// blocks, where the other session writes too.
    hot: u64,
}

impl<D: BlockDevice> Worker<D> {
    /// A worker over blocks `first_block .. first_block + blocks`.
    pub(crate) fn new(
        device: Arc<D>,
        first_block: u64,
        blocks: u64,
        seed: u64,
        tally: Arc<Tally>,
        start: Instant,
    ) -> Self {
        Worker {
            device,
            first_block,
            blocks,
            model: HashMap::new(),
            next_generation: 1,
            rng: seed | 1,
            tally,
            start,
            history: None,
            hot: blocks,
        }
    }

    /// Checks this worker's reads against `history` (shared with writers
    /// that overlap its region) and keeps half its operations in the first
    /// `hot` blocks of its region.
    pub(crate) fn with_history(mut self, history: Arc<History>, hot: u64) -> Self {
        self.history = Some(history);
        self.hot = hot.clamp(1, self.blocks);
        self
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Runs operations until `stop` is set, then verifies its whole region.
    pub(crate) async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            self.step().await;
        }
        self.verify_all().await;
    }

    async fn step(&mut self) {
        let roll = self.random() % 100;
        let span = if self.hot < self.blocks && self.random().is_multiple_of(2) {
            self.hot
        } else {
            self.blocks
        };
        let max_run = 16.min(span);
        let count = 1 + self.random() % max_run;
        let first = self.first_block + self.random() % (span - count + 1);
        match roll {
            0..=54 => self.write(first, count).await,
            55..=89 => self.read(first, count).await,
            90..=94 => self.zero(first, count.min(4)).await,
            _ => self.flush().await,
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn completed(&self) {
        self.tally.ops.fetch_add(1, Ordering::Relaxed);
        let ns = self.now_ns();
        self.tally
            .last_completion_ns
            .fetch_max(ns, Ordering::Relaxed);
    }

    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.tally.failed.fetch_add(1, Ordering::Relaxed);
        self.tally.problem(format!("{what} failed: {error}"));
    }

    /// Records an acknowledged change of `count` blocks at `first`.
    fn acknowledged(&mut self, first: u64, count: u64, generation: u64, zero: bool, invoked: u64) {
        let acked = (invoked, self.now_ns());
        for b in first..first + count {
            self.model.insert(
                b,
                Expect {
                    generation,
                    zero,
                    maybe: None,
                    acked,
                },
            );
        }
    }

    /// The next write's generation: rising per worker, so per block (the
    /// second session draws its own from above [`super::history::SECOND_LANE`]).
    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation - 1
    }

    fn write_invoked(&self, first: u64, count: u64, generation: u64, zero: bool) {
        if let Some(h) = &self.history {
            h.write_invoked(first, count, generation, zero, Writer::First);
        }
    }

    fn write_ended(&self, first: u64, count: u64, generation: u64, ok: bool) {
        if let Some(h) = &self.history {
            h.write_ended(first, count, generation, ok);
        }
    }

    async fn write(&mut self, first: u64, count: u64) {
        let generation = self.generation();
        let mut data = BytesMut::with_capacity(count as usize * BLOCK);
        for b in first..first + count {
            data.extend_from_slice(&encode(b, generation));
        }
        let fua = self.random().is_multiple_of(10);
        let len = data.len() as u64;
        let invoked = self.now_ns();
        self.write_invoked(first, count, generation, false);
        let result = self
            .device
            .write_at(first * BLOCK as u64, data.freeze(), fua)
            .await;
        self.write_ended(first, count, generation, result.is_ok());
        match result {
            Ok(()) => {
                self.acknowledged(first, count, generation, false, invoked);
                self.tally.writes.fetch_add(1, Ordering::Relaxed);
                self.tally.bytes_written.fetch_add(len, Ordering::Relaxed);
                self.completed();
            }
            Err(e) => {
                self.uncertain(first, count, generation, false);
                self.failed("write", &e);
            }
        }
    }

    async fn zero(&mut self, first: u64, count: u64) {
        let generation = self.generation();
        let len = u32::try_from(count as usize * BLOCK).unwrap_or(u32::MAX);
        let invoked = self.now_ns();
        self.write_invoked(first, count, generation, true);
        let result = self
            .device
            .write_zeroes(first * BLOCK as u64, len, false)
            .await;
        self.write_ended(first, count, generation, result.is_ok());
        match result {
            Ok(()) => {
                self.acknowledged(first, count, generation, true, invoked);
                self.tally.zeroes.fetch_add(1, Ordering::Relaxed);
                self.completed();
            }
            Err(e) => {
                self.uncertain(first, count, generation, true);
                self.failed("write-zeroes", &e);
            }
        }
    }

    /// A change failed: it may or may not have landed.
    fn uncertain(&mut self, first: u64, count: u64, generation: u64, zero: bool) {
        for b in first..first + count {
            let e = self.model.entry(b).or_insert(NEVER);
            e.maybe = Some((generation, zero));
        }
    }

    async fn flush(&mut self) {
        match self.device.flush().await {
            Ok(()) => {
                self.tally.flushes.fetch_add(1, Ordering::Relaxed);
                self.completed();
            }
            Err(e) => self.failed("flush", &e),
        }
    }

    async fn read(&mut self, first: u64, count: u64) {
        let len = u32::try_from(count as usize * BLOCK).unwrap_or(u32::MAX);
        let invoked = self.read_invoked(first, count);
        match self.device.read_at(first * BLOCK as u64, len).await {
            Ok(data) => {
                self.check_read(first, count, &data, invoked);
                self.tally.reads.fetch_add(1, Ordering::Relaxed);
                self.tally
                    .bytes_read
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.completed();
            }
            Err(e) => {
                self.read_failed(first, count);
                self.failed("read", &e);
            }
        }
    }

    /// Stamps a read's invocation (in the history, when shared).
    fn read_invoked(&self, first: u64, count: u64) -> u64 {
        match &self.history {
            Some(h) => h.read_invoked(first, count),
            None => self.now_ns(),
        }
    }

    fn read_failed(&self, first: u64, count: u64) {
        if let Some(h) = &self.history {
            h.read_failed(first, count);
        }
    }

    /// Checks a read against the shared history, or the worker's model.
    fn check_read(&mut self, first: u64, count: u64, data: &Bytes, invoked: u64) {
        match &self.history {
            Some(h) => h.read_returned(first, count, data, invoked, Writer::First),
            None => self.check(first, data, invoked),
        }
    }

    /// Checks blocks read at `first` (a read issued at `invoked`) against
    /// the model. Per block, the model is exact: one worker owns the block
    /// and runs one operation at a time, so the read must return the last
    /// acknowledged change (or a failed one that may have landed after it).
    fn check(&mut self, first: u64, data: &Bytes, invoked: u64) {
        let returned = self.now_ns();
        if !data.len().is_multiple_of(BLOCK) {
            self.tally.corrupt.fetch_add(1, Ordering::Relaxed);
            self.tally.problem(format!(
                "a read at block {first} returned {} bytes",
                data.len()
            ));
            return;
        }
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            let block = first + i as u64;
            let expect = self.model.get(&block).copied().unwrap_or(NEVER);
            let got = decode(chunk);
            let matches = |generation: u64, zero: bool| match got {
                Content::Zero => zero,
                Content::Written {
                    block: b,
                    generation: g,
                } => !zero && b == block && g == generation,
                Content::Corrupt => false,
            };
            if matches(expect.generation, expect.zero) {
                if expect.maybe.is_some() {
                    // The failed change did not land; the model is exact again.
                    self.model.insert(
                        block,
                        Expect {
                            maybe: None,
                            ..expect
                        },
                    );
                }
                continue;
            }
            if let Some((generation, zero)) = expect.maybe {
                if matches(generation, zero) {
                    self.model.insert(
                        block,
                        Expect {
                            generation,
                            zero,
                            maybe: None,
                            acked: (invoked, returned),
                        },
                    );
                    continue;
                }
            }
            let kind = match got {
                Content::Written {
                    block: b,
                    generation: g,
                } if b == block && g < expect.generation => {
                    self.tally.lost.fetch_add(1, Ordering::Relaxed);
                    "lost write"
                }
                Content::Zero if !expect.zero => {
                    self.tally.lost.fetch_add(1, Ordering::Relaxed);
                    "lost write"
                }
                _ => {
                    self.tally.corrupt.fetch_add(1, Ordering::Relaxed);
                    "corrupt block"
                }
            };
            // The shortest history that shows it: the acknowledged change
            // the read should have returned, then the read.
            let wrote = if expect.zero { "write-zeroes" } else { "write" };
            let also = expect
                .maybe
                .map(|(g, _)| format!(" (a failed change, generation {g}, was also allowed)"))
                .unwrap_or_default();
            self.tally.problem(format!(
                "block {block}: {kind}. History: [{} .. {}] {wrote} generation {} acknowledged; \
                 [{} .. {}] read returned {got:?}{also}",
                at(expect.acked.0),
                at(expect.acked.1),
                expect.generation,
                at(invoked),
                at(returned),
            ));
        }
    }

    /// Reads the whole region back and checks every block.
    async fn verify_all(&mut self) {
        let mut block = self.first_block;
        let end = self.first_block + self.blocks;
        while block < end {
            let count = 64.min(end - block);
            let len = u32::try_from(count as usize * BLOCK).unwrap_or(u32::MAX);
            let invoked = self.read_invoked(block, count);
            match self.device.read_at(block * BLOCK as u64, len).await {
                Ok(data) => self.check_read(block, count, &data, invoked),
                Err(e) => {
                    self.read_failed(block, count);
                    self.failed("final verification read", &e);
                }
            }
            block += count;
        }
    }
}
