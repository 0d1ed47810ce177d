//! An exact per-block checker for writers that overlap: several sessions
//! (and several workers) write the same blocks concurrently, so no single
//! worker knows what a block should hold. Every write and read is recorded
//! with its interval on one clock; a read is checked when it returns.
//!
//! The rule, per block: a read (invoked at `r`) may return the value of a
//! write `w` unless some other write `w2` was invoked after `w` ended and
//! was already in effect before `r` (acknowledged, or returned by a read,
//! before `r` was invoked): then `w` was overwritten for good before the
//! read began. "Ended" is the acknowledgement for a write that succeeded
//! and the error for one that failed: a write whose caller got an error may
//! have landed, but only before the error was returned, never later. So
//! the rule catches a lost write (an older value after a newer one was
//! acknowledged) and a stale write (a failed write observed after an
//! acknowledged later write to the same block), and accepts every value a
//! write in flight or in doubt could legitimately have left.
//!
//! Timestamps are taken so that every error leans towards accepting: an
//! invocation is stamped before the request is issued, an end or a read's
//! return after the answer arrived (under the block's lock), so a reported
//! violation is a real one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::blocks::{decode, Content, BLOCK};
use super::workload::Tally;

/// The second session's generations start here; the first session's
/// workers count from 1 (one worker per block, so rising per block).
pub(crate) const SECOND_LANE: u64 = 1 << 40;

/// Who issued a write, for the history excerpt of a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Writer {
    /// The volume as it was before the run (all zeroes).
    Initial,
    /// A worker of the first session (direct [`holdfast_block::Volume`]).
    First,
    /// A worker of the second session (through the NBD server and its
    /// io-timeout).
    Second,
}

/// One write's record on one block.
#[derive(Clone, Copy, Debug)]
struct WriteRec {
    generation: u64,
    zero: bool,
    writer: Writer,
    invoked: u64,
    /// When the answer came (ns since the start); `None` while in flight.
    ended: Option<u64>,
    failed: bool,
    /// Since when the write is known to be in effect: its acknowledgement,
    /// or the return of the first read that saw it.
    effective: Option<u64>,
}

/// One block's history: writes not yet superseded for good.
#[derive(Debug, Default)]
struct BlockHistory {
    writes: Vec<WriteRec>,
    reads_in_flight: u32,
}

/// The shared checker.
pub(crate) struct History {
    blocks: Vec<Mutex<BlockHistory>>,
    start: Instant,
    next_generation: AtomicU64,
    tally: Arc<Tally>,
    /// Failed writes retired as superseded, with the write that superseded
    /// them, by (block, generation): the proof when one is read later.
    retired_failed: Mutex<HashMap<(u64, u64), (WriteRec, WriteRec)>>,
}

fn at(ns: u64) -> String {
    format!("{:.6}s", ns as f64 / 1e9)
}

impl History {
    /// A history of `blocks` blocks, all zero at the start.
    pub(crate) fn new(blocks: u64, start: Instant, tally: Arc<Tally>) -> History {
        let initial = WriteRec {
            generation: 0,
            zero: true,
            writer: Writer::Initial,
            invoked: 0,
            ended: Some(0),
            failed: false,
            effective: Some(0),
        };
        History {
            blocks: (0..blocks)
                .map(|_| {
                    Mutex::new(BlockHistory {
                        writes: vec![initial],
                        reads_in_flight: 0,
                    })
                })
                .collect(),
            start,
            // Far above any worker's own counter, so values never collide.
            next_generation: AtomicU64::new(SECOND_LANE),
            tally,
            retired_failed: Mutex::new(HashMap::new()),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn block(&self, b: u64) -> Option<std::sync::MutexGuard<'_, BlockHistory>> {
        let m = self.blocks.get(usize::try_from(b).ok()?)?;
        Some(m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A fresh, unique generation for a second-session write.
    pub(crate) fn generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a write of `count` blocks at `first` about to be issued.
    pub(crate) fn write_invoked(
        &self,
        first: u64,
        count: u64,
        generation: u64,
        zero: bool,
        writer: Writer,
    ) {
        let invoked = self.now();
        for b in first..first + count {
            if let Some(mut h) = self.block(b) {
                h.writes.push(WriteRec {
                    generation,
                    zero,
                    writer,
                    invoked,
                    ended: None,
                    failed: false,
                    effective: None,
                });
            }
        }
    }

    /// Records the answer to a write: acknowledged (`ok`) or failed.
    pub(crate) fn write_ended(&self, first: u64, count: u64, generation: u64, ok: bool) {
        for b in first..first + count {
            let Some(mut h) = self.block(b) else { continue };
            let now = self.now();
            if let Some(w) = h.writes.iter_mut().find(|w| w.generation == generation) {
                w.ended = Some(now);
                w.failed = !ok;
                if ok {
                    w.effective = Some(w.effective.map_or(now, |e| e.min(now)));
                }
            }
            self.prune(b, &mut h);
        }
    }

    /// Retires superseded writes of block `b`, keeping the failed ones'
    /// proof.
    fn prune(&self, b: u64, h: &mut BlockHistory) {
        let retired = prune(h);
        if !retired.is_empty() {
            let mut kept = self
                .retired_failed
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (w, w2) in retired {
                kept.insert((b, w.generation), (w, w2));
            }
        }
    }

    /// Records a read of `count` blocks at `first` about to be issued;
    /// returns its invocation time.
    pub(crate) fn read_invoked(&self, first: u64, count: u64) -> u64 {
        let invoked = self.now();
        for b in first..first + count {
            if let Some(mut h) = self.block(b) {
                h.reads_in_flight += 1;
            }
        }
        invoked
    }

    /// A read that failed: nothing to check.
    pub(crate) fn read_failed(&self, first: u64, count: u64) {
        for b in first..first + count {
            if let Some(mut h) = self.block(b) {
                h.reads_in_flight = h.reads_in_flight.saturating_sub(1);
            }
        }
    }

    /// Checks what a read of `count` blocks at `first`, invoked at
    /// `invoked`, returned.
    pub(crate) fn read_returned(
        &self,
        first: u64,
        count: u64,
        data: &[u8],
        invoked: u64,
        reader: Writer,
    ) {
        if data.len() != count as usize * BLOCK {
            self.read_failed(first, count);
            self.tally.corrupt.fetch_add(1, Ordering::Relaxed);
            self.tally.problem(format!(
                "a read of {count} blocks at block {first} returned {} bytes",
                data.len()
            ));
            return;
        }
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            let b = first + i as u64;
            let Some(mut h) = self.block(b) else { continue };
            let returned = self.now();
            h.reads_in_flight = h.reads_in_flight.saturating_sub(1);
            let got = decode(chunk);
            let verdict = check(&mut h, b, got, invoked, returned);
            if let Err((kind, mut text)) = verdict {
                if let Content::Written { generation, .. } = got {
                    let kept = self
                        .retired_failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    if let Some((w, w2)) = kept.get(&(b, generation)) {
                        text = format!(
                            "stale write: a write whose caller got an error was observed after a \
                             later acknowledged write. History: {}; then {} (in effect from {})",
                            describe(w),
                            describe(w2),
                            w2.effective.map_or("-".to_owned(), at)
                        );
                    }
                }
                match kind {
                    Violation::Lost => self.tally.lost.fetch_add(1, Ordering::Relaxed),
                    Violation::Corrupt => self.tally.corrupt.fetch_add(1, Ordering::Relaxed),
                };
                self.tally.problem(format!(
                    "block {b}: {text}; [{} .. {}] read by the {reader:?} session returned {got:?}",
                    at(invoked),
                    at(returned)
                ));
            }
            self.prune(b, &mut h);
        }
    }
}

/// What kind of violation a read showed.
enum Violation {
    /// An older value than one already in effect (a lost or stale write).
    Lost,
    /// A value no write put there.
    Corrupt,
}

/// Checks one block's read; on success records that the value returned is
/// in effect from `returned` on.
fn check(
    h: &mut BlockHistory,
    block: u64,
    got: Content,
    invoked: u64,
    returned: u64,
) -> Result<(), (Violation, String)> {
    let is_candidate = |w: &WriteRec| match got {
        Content::Zero => w.zero,
        Content::Written {
            block: b,
            generation,
        } => b == block && !w.zero && w.generation == generation,
        Content::Corrupt => false,
    };
    // The write that superseded `w` for good before the read began, if any.
    let superseded_by = |w: &WriteRec| -> Option<WriteRec> {
        let ended = w.ended?;
        h.writes
            .iter()
            .find(|w2| {
                w2.generation != w.generation
                    && ended < w2.invoked
                    && w2.effective.is_some_and(|e| e < invoked)
            })
            .copied()
    };
    let mut refused: Option<(WriteRec, WriteRec)> = None;
    let mut found = false;
    for i in 0..h.writes.len() {
        let w = h.writes[i];
        if !is_candidate(&w) {
            continue;
        }
        found = true;
        match superseded_by(&w) {
            None => {
                let e = &mut h.writes[i].effective;
                *e = Some(e.map_or(returned, |e| e.min(returned)));
                return Ok(());
            }
            Some(w2) => refused = Some((w, w2)),
        }
    }
    match (refused, got) {
        (Some((w, w2)), _) => {
            let kind = if w.failed {
                "stale write: a write whose caller got an error was observed after a later \
                 acknowledged write"
            } else {
                "lost write: an older value was read after a newer one was in effect"
            };
            Err((
                Violation::Lost,
                format!(
                    "{kind}. History: {}; then {} (in effect from {})",
                    describe(&w),
                    describe(&w2),
                    w2.effective.map_or("-".to_owned(), at)
                ),
            ))
        }
        (None, Content::Written { block: b, .. }) if b == block && !found => {
            // Its record was pruned: it had been superseded for good, and
            // every read since began after that.
            Err((
                Violation::Lost,
                "stale or lost write: the value of a write superseded for good before this \
                 read began (its record was already retired)"
                    .to_owned(),
            ))
        }
        (None, Content::Zero) => Err((
            Violation::Lost,
            "lost write: zeroes read after a write was in effect".to_owned(),
        )),
        _ => Err((
            Violation::Corrupt,
            "corrupt block: a value no write put at this block".to_owned(),
        )),
    }
}

/// One write, for a history excerpt.
fn describe(w: &WriteRec) -> String {
    let what = if w.zero { "write-zeroes" } else { "write" };
    let outcome = match (w.ended, w.failed) {
        (None, _) => "still in flight".to_owned(),
        (Some(e), false) => format!("acknowledged at {}", at(e)),
        (Some(e), true) => format!("FAILED (caller got an error) at {}", at(e)),
    };
    format!(
        "{what} generation {} by the {:?} session invoked at {}, {outcome}",
        w.generation,
        w.writer,
        at(w.invoked)
    )
}

/// Retires writes superseded for good, when no read of the block is in
/// flight (a read invoked later may not return them anyway). Returns the
/// failed writes retired, each with the write that superseded it.
fn prune(h: &mut BlockHistory) -> Vec<(WriteRec, WriteRec)> {
    let mut failed = Vec::new();
    if h.reads_in_flight > 0 || h.writes.len() < 8 {
        return failed;
    }
    let snapshot = h.writes.clone();
    h.writes.retain(|w| {
        let Some(ended) = w.ended else { return true };
        let by = snapshot.iter().find(|w2| {
            w2.generation != w.generation && ended < w2.invoked && w2.effective.is_some()
        });
        match by {
            Some(w2) => {
                if w.failed {
                    failed.push((*w, *w2));
                }
                false
            }
            None => true,
        }
    });
    failed
}

#[cfg(test)]
mod tests {
    use super::super::blocks::encode;
    use super::*;

    fn history() -> (History, Arc<Tally>) {
        let tally = Arc::new(Tally::default());
        (History::new(4, Instant::now(), tally.clone()), tally)
    }

    fn read(h: &History, block: u64, data: &[u8]) {
        let invoked = h.read_invoked(block, 1);
        h.read_returned(block, 1, data, invoked, Writer::First);
    }

    #[test]
    fn the_last_acknowledged_write_or_one_in_flight_may_be_read() {
        let (h, tally) = history();
        read(&h, 1, &[0u8; BLOCK]);
        let g1 = h.generation();
        h.write_invoked(1, 1, g1, false, Writer::First);
        h.write_ended(1, 1, g1, true);
        let g2 = h.generation();
        h.write_invoked(1, 1, g2, false, Writer::Second);
        // g2 in flight: either value is fine.
        read(&h, 1, &encode(1, g1));
        read(&h, 1, &encode(1, g2));
        h.write_ended(1, 1, g2, true);
        read(&h, 1, &encode(1, g2));
        assert_eq!(tally.lost.load(Ordering::Relaxed), 0);
        assert_eq!(tally.corrupt.load(Ordering::Relaxed), 0);
        // Once g2 was seen, g1 is gone for good.
        read(&h, 1, &encode(1, g1));
        assert_eq!(tally.lost.load(Ordering::Relaxed), 1);
        read(&h, 1, &encode(2, g2));
        assert_eq!(tally.corrupt.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failed_write_seen_after_a_later_acknowledged_write_is_stale() {
        let (h, tally) = history();
        let b = h.generation();
        h.write_invoked(2, 1, b, false, Writer::Second);
        h.write_ended(2, 1, b, false);
        // It may have landed before its error: fine to read it now.
        read(&h, 2, &encode(2, b));
        let c = h.generation();
        h.write_invoked(2, 1, c, false, Writer::First);
        h.write_ended(2, 1, c, true);
        read(&h, 2, &encode(2, c));
        assert_eq!(tally.lost.load(Ordering::Relaxed), 0);
        read(&h, 2, &encode(2, b));
        assert_eq!(tally.lost.load(Ordering::Relaxed), 1);
        let problems = tally.problems.lock().expect("lock").clone();
        assert!(problems[0].contains("stale write"), "{problems:?}");
    }

    #[test]
    fn retired_writes_are_still_caught() {
        let (h, tally) = history();
        let mut gens = Vec::new();
        for _ in 0..20 {
            let g = h.generation();
            h.write_invoked(3, 1, g, false, Writer::First);
            h.write_ended(3, 1, g, true);
            gens.push(g);
        }
        read(&h, 3, &encode(3, gens[19]));
        read(&h, 3, &encode(3, gens[0]));
        read(&h, 3, &[0u8; BLOCK]);
        assert_eq!(tally.lost.load(Ordering::Relaxed), 2);
    }
}
