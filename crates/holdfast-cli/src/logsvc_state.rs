//! The log service's state in the session store (PROTOCOL.md §12): its
//! counter, refusals and every sender's stream, in a compact binary form
//! that a durable target stores atomically with each group of session
//! changes ([`holdfast::ServiceDurability::state`]), so an increment and
//! the record of its completion are one step, and handed back on restart
//! ([`super::LogService::from_state`]).
//!
//! Layout (integers big-endian):
//! `version u8 (1) | counter u64 | refused u64 | streams u32 |` then per
//! stream, in sender order: `sender u32 | received u64 | next u64 |
//! repeated u64 | skipped u64 | violation_len u16 | violation bytes` where
//! `violation_len` 0xFFFF means no violation. A stored state is read back
//! as hostile input: every count and length is checked against the bytes
//! that are there, and anything left over is refused.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Report, Stream};

/// The version byte this code writes and reads.
const VERSION: u8 = 1;
/// `violation_len` of a stream with no violation.
const NO_VIOLATION: u16 = u16::MAX;
/// The longest violation text kept (longer ones are cut at a char boundary).
const MAX_VIOLATION: usize = 1024;
/// Bytes of a stream without its violation text.
const STREAM_FIXED: usize = 4 + 8 * 4 + 2;

/// Why a stored log-service state cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateError {
    /// The bytes end before the field named.
    Truncated(&'static str),
    /// A version this code does not know.
    Version(u8),
    /// The stream count cannot fit in the bytes given.
    StreamCount(u32),
    /// Streams not in strictly increasing sender order (a duplicate sender).
    Order(u32),
    /// A violation text that is not UTF-8.
    Text(u32),
    /// Bytes after the last stream.
    Trailing(usize),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Truncated(field) => write!(f, "the state ends inside {field}"),
            StateError::Version(v) => write!(f, "unknown state version {v} (this build reads 1)"),
            StateError::StreamCount(n) => {
                write!(f, "{n} streams announced, more than the bytes can hold")
            }
            StateError::Order(s) => write!(f, "stream of sender {s} out of order or repeated"),
            StateError::Text(s) => write!(f, "the violation of sender {s} is not UTF-8"),
            StateError::Trailing(n) => write!(f, "{n} bytes after the last stream"),
        }
    }
}

impl std::error::Error for StateError {}

/// Encodes `report`.
pub(crate) fn encode(report: &Report) -> Bytes {
    let mut b = BytesMut::with_capacity(21 + report.streams.len() * (STREAM_FIXED + 64));
    b.put_u8(VERSION);
    b.put_u64(report.counter);
    b.put_u64(report.refused);
    // Senders are u32s and a BTreeMap holds each once: the count fits.
    b.put_u32(u32::try_from(report.streams.len()).unwrap_or(u32::MAX));
    for (sender, s) in &report.streams {
        b.put_u32(*sender);
        for v in [s.received, s.next, s.repeated, s.skipped] {
            b.put_u64(v);
        }
        match &s.first_violation {
            None => b.put_u16(NO_VIOLATION),
            Some(text) => {
                let mut end = text.len().min(MAX_VIOLATION);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                // At most MAX_VIOLATION (< 0xFFFF) bytes.
                b.put_u16(end as u16);
                b.put_slice(&text.as_bytes()[..end]);
            }
        }
    }
    b.freeze()
}

/// A cursor over stored bytes that refuses to read past their end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(StateError::Truncated(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], StateError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, StateError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, StateError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, StateError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
}

/// Decodes a state written by [`encode`].
pub(crate) fn decode(bytes: &[u8]) -> Result<Report, StateError> {
    let mut r = Reader(bytes);
    let [version] = r.array::<1>("the version")?;
    if version != VERSION {
        return Err(StateError::Version(version));
    }
    let counter = r.u64("the counter")?;
    let refused = r.u64("the refused count")?;
    let count = r.u32("the stream count")?;
    if (count as usize).saturating_mul(STREAM_FIXED) > r.0.len() {
        return Err(StateError::StreamCount(count));
    }
    let mut streams = BTreeMap::new();
    let mut last: Option<u32> = None;
    for _ in 0..count {
        let sender = r.u32("a stream's sender")?;
        if last.is_some_and(|l| sender <= l) {
            return Err(StateError::Order(sender));
        }
        last = Some(sender);
        let received = r.u64("a stream's received count")?;
        let next = r.u64("a stream's next number")?;
        let repeated = r.u64("a stream's repeat count")?;
        let skipped = r.u64("a stream's skip count")?;
        let first_violation = match r.u16("a stream's violation length")? {
            NO_VIOLATION => None,
            len => {
                let text = r.take(usize::from(len), "a stream's violation")?;
                Some(String::from_utf8(text.to_vec()).map_err(|_| StateError::Text(sender))?)
            }
        };
        streams.insert(
            sender,
            Stream {
                received,
                next,
                repeated,
                skipped,
                first_violation,
            },
        );
    }
    if !r.0.is_empty() {
        return Err(StateError::Trailing(r.0.len()));
    }
    Ok(Report {
        counter,
        streams,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut streams = BTreeMap::new();
        streams.insert(
            3,
            Stream {
                received: 10,
                next: 11,
                ..Stream::default()
            },
        );
        streams.insert(
            u32::MAX,
            Stream {
                received: 5,
                next: 9,
                repeated: 1,
                skipped: 2,
                first_violation: Some("message 7 arrived when 5 was expected ✓".to_owned()),
            },
        );
        Report {
            counter: u64::MAX - 1,
            streams,
            refused: 4,
        }
    }

    #[test]
    fn a_state_reads_back_as_it_was_written() {
        for report in [Report::default(), sample()] {
            assert_eq!(decode(&encode(&report)), Ok(report));
        }
    }

    #[test]
    fn a_long_violation_is_cut_at_a_char_boundary() {
        let mut report = sample();
        let long = "é".repeat(MAX_VIOLATION);
        if let Some(s) = report.streams.get_mut(&3) {
            s.first_violation = Some(long.clone());
        }
        let back = decode(&encode(&report)).expect("decodes");
        let kept = back.streams[&3].first_violation.clone().expect("kept");
        assert!(kept.len() <= MAX_VIOLATION && long.starts_with(&kept));
    }

    /// Every cut, every extra byte and every bit flip is refused or decodes
    /// to some state; none panics or reads past the end.
    #[test]
    fn damaged_states_are_refused_never_a_panic() {
        let good = encode(&sample());
        for cut in 0..good.len() {
            assert!(
                matches!(
                    decode(&good[..cut]),
                    Err(StateError::Truncated(_) | StateError::StreamCount(_))
                ),
                "cut at {cut}: {:?}",
                decode(&good[..cut])
            );
        }
        let mut longer = good.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), Err(StateError::Trailing(1)));
        for i in 0..good.len() * 8 {
            let mut flipped = good.to_vec();
            flipped[i / 8] ^= 1 << (i % 8);
            let _ = decode(&flipped);
        }
        let mut huge = encode(&Report::default()).to_vec();
        huge[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge), Err(StateError::StreamCount(u32::MAX)));
        assert_eq!(decode(&[2]), Err(StateError::Version(2)));
    }

    #[test]
    fn streams_out_of_order_are_refused() {
        let good = encode(&sample()).to_vec();
        // Swap in the second sender's id for the first one's: 0xFFFFFFFF then
        // 0xFFFFFFFF is a repeat.
        let mut bad = good.clone();
        bad[21..25].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&bad), Err(StateError::Order(u32::MAX)));
    }
}
