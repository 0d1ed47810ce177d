//! The exactly-once test service behind `holdfast target --service log` and
//! `holdfast torture --mode log`: a counter (commands, NOT idempotent) and
//! per-sender message streams (one-way messages) that the service itself
//! checks as they arrive, in constant memory per sender.
//!
//! Requests (payloads of holdfast commands and messages):
//! * `I`: increment the counter; the response is its new value (u64 BE).
//! * `M` + sender (u32 BE) + n (u64 BE), one-way: the sender's n-th message.
//!   Each sender's messages must arrive as 1, 2, 3, ... exactly once each.
//! * `Q`: the response is a JSON [`Report`] of the counter and every stream.
//!
//! Anything else is refused without effect, so a test cannot pass by
//! accident: a command (including `M` sent as a command, or `I`/`Q` with
//! extra bytes) is answered with [`REFUSED`] + a reason (always longer than
//! a counter's 8 bytes); a one-way message other than `M` (a one-way `I`
//! included) has no response to carry that, so it is counted in
//! [`Report::refused`] instead. Either way nothing else changes.
//!
//! The work happens in `call`, which the target invokes in session order;
//! the returned future only carries the answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use holdfast::{service_fn, Request, ServiceDurability, SessionService};
use serde::{Deserialize, Serialize};

/// One sender's stream, as the service saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stream {
    /// Messages received.
    pub(crate) received: u64,
    /// The next number expected (1 + the highest in-order number).
    pub(crate) next: u64,
    /// Messages that arrived with a number already seen or below `next`
    /// (a duplicate or a reordering).
    pub(crate) repeated: u64,
    /// Messages that arrived ahead of `next` (something before them was
    /// skipped: lost or reordered).
    pub(crate) skipped: u64,
    /// The first violation, described.
    pub(crate) first_violation: Option<String>,
}

/// The service's state, as `Q` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// The counter.
    pub(crate) counter: u64,
    /// Every sender's stream.
    pub(crate) streams: BTreeMap<u32, Stream>,
    /// Requests refused because the service does not define them.
    #[serde(default)]
    pub(crate) refused: u64,
}

/// Builds the `M` message `n` of `sender`.
pub(crate) fn message(sender: u32, n: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(13);
    b.put_u8(b'M');
    b.put_u32(sender);
    b.put_u64(n);
    b.freeze()
}

/// The request that increments the counter.
pub(crate) const INCREMENT: &[u8] = b"I";
/// The request that asks for the [`Report`].
pub(crate) const QUERY: &[u8] = b"Q";
/// The prefix of the answer to a command the service does not define.
pub(crate) const REFUSED: &[u8] = b"ERR ";

/// What the answer to an [`INCREMENT`] says: the counter's new value, or
/// the service's refusal (or anything else it is not) as an error.
pub(crate) fn counter_value(response: &[u8]) -> Result<u64, String> {
    match <[u8; 8]>::try_from(response) {
        Ok(v) => Ok(u64::from_be_bytes(v)),
        Err(_) if response.starts_with(REFUSED) => Err(format!(
            "the log service refused the request: {}",
            String::from_utf8_lossy(&response[REFUSED.len()..])
        )),
        Err(_) => Err(format!(
            "the log service answered an increment with {} bytes, not a counter",
            response.len()
        )),
    }
}

/// A cloneable handle on the log service's state, and the service itself.
#[derive(Clone, Default)]
pub(crate) struct LogService {
    state: Arc<Mutex<Report>>,
}

impl LogService {
    /// A service that continues from a state a durable target stored
    /// ([`ServiceDurability::state`]): the counter and every stream as they
    /// were at the last durable commit.
    pub(crate) fn from_state(stored: &[u8]) -> Result<LogService, state::StateError> {
        Ok(LogService {
            state: Arc::new(Mutex::new(state::decode(stored)?)),
        })
    }

    /// The tower service to hand to a [`holdfast::Target`].
    pub(crate) fn service(&self) -> impl SessionService {
        let state = self.state.clone();
        service_fn(move |req: Request| {
            std::future::ready(Ok::<_, std::convert::Infallible>(handle(
                &state,
                &req.payload,
                req.one_way,
            )))
        })
    }
}

/// The log service's whole state goes into the session store with each
/// group: its work happens in `call` and its answers are ready at once, so
/// the state always reflects exactly the commands and messages the target
/// has seen complete, and an increment and its completion record are one
/// atomic step. Nothing else to sync. It is replay-safe: a command or
/// message executed before its `Received` is durable changes only that
/// state, which a crash rolls back with the group that would have recorded
/// it, so its rerun after the restart is its only visible run.
impl ServiceDurability for LogService {
    fn replay_safe(&self) -> bool {
        true
    }

    fn state(&self) -> Option<Bytes> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Some(state::encode(&s))
    }
}

#[path = "logsvc_state.rs"]
mod state;

/// Applies one request (a command, or with `one_way` a message) to the state.
fn handle(state: &Mutex<Report>, p: &[u8], one_way: bool) -> Bytes {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    match (p.first(), one_way) {
        (Some(b'M'), true) if p.len() == 13 => {
            let sender = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
            let mut n = [0u8; 8];
            n.copy_from_slice(&p[5..13]);
            let n = u64::from_be_bytes(n);
            let stream = s.streams.entry(sender).or_insert(Stream {
                next: 1,
                ..Stream::default()
            });
            stream.received += 1;
            if n == stream.next {
                stream.next += 1;
            } else {
                if n < stream.next {
                    stream.repeated += 1;
                } else {
                    stream.skipped += 1;
                    stream.next = n + 1;
                }
                if stream.first_violation.is_none() {
                    stream.first_violation = Some(format!(
                        "message {n} arrived when {} was expected (after {} messages)",
                        stream.next,
                        stream.received - 1
                    ));
                }
            }
            Bytes::new()
        }
        (Some(b'Q'), false) if p.len() == 1 => {
            Bytes::from(serde_json::to_vec(&*s).unwrap_or_default())
        }
        (Some(b'I'), false) if p.len() == 1 => {
            s.counter += 1;
            Bytes::copy_from_slice(&s.counter.to_be_bytes())
        }
        _ => {
            s.refused += 1;
            let kind = if one_way {
                "one-way message"
            } else {
                "command"
            };
            let shown: String = String::from_utf8_lossy(p).chars().take(16).collect();
            let mut b = BytesMut::from(REFUSED);
            b.put_slice(
                format!(
                    "unknown {kind} {shown:?} ({} bytes): the log service defines \
                     command I, command Q and one-way M",
                    p.len()
                )
                .as_bytes(),
            );
            b.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_catch_repeats_and_skips() {
        let state = Mutex::new(Report::default());
        for n in [1, 2, 3] {
            handle(&state, &message(7, n), true);
        }
        assert_eq!(
            handle(&state, INCREMENT, false).as_ref(),
            1u64.to_be_bytes()
        );
        handle(&state, &message(7, 3), true); // repeated
        handle(&state, &message(7, 5), true); // skipped 4
        let report: Report =
            serde_json::from_slice(&handle(&state, QUERY, false)).expect("report JSON");
        let s = &report.streams[&7];
        assert_eq!((s.received, s.next, s.repeated, s.skipped), (5, 6, 1, 1));
        assert!(s.first_violation.is_some());
        assert_eq!(report.counter, 1);
    }

    /// A service rebuilt from its stored state counts on from where it was
    /// and expects each stream's next message: nothing repeats or skips.
    #[test]
    fn a_service_restored_from_its_state_continues_where_it_was() {
        let before = LogService::default();
        for n in 1..=3 {
            handle(&before.state, &message(9, n), true);
            handle(&before.state, INCREMENT, false);
        }
        let stored = before.state().expect("the log service stores its state");
        let after = LogService::from_state(&stored).expect("a stored state reads back");
        assert_eq!(
            counter_value(&handle(&after.state, INCREMENT, false)),
            Ok(4)
        );
        handle(&after.state, &message(9, 4), true);
        let report: Report =
            serde_json::from_slice(&handle(&after.state, QUERY, false)).expect("report JSON");
        let s = &report.streams[&9];
        assert_eq!((s.received, s.next, s.repeated, s.skipped), (4, 5, 0, 0));
        assert!(LogService::from_state(&stored[..stored.len() - 1]).is_err());
    }

    #[test]
    fn undefined_requests_are_refused_without_effect() {
        let state = Mutex::new(Report::default());
        let undefined: [(&[u8], bool); 7] = [
            (b"", false),
            (b"Z", false),
            (b"II", false),
            (b"I", true),
            (b"Q", true),
            (b"QQ", false),
            (&message(7, 1), false),
        ];
        for (payload, one_way) in undefined {
            let answer = handle(&state, payload, one_way);
            assert!(
                answer.starts_with(REFUSED) && answer.len() > 8,
                "{payload:?} (one-way {one_way}) was not refused: {answer:?}"
            );
            let refused = counter_value(&answer).expect_err("a refusal is no counter");
            assert!(refused.contains("refused"), "{refused}");
        }
        let report: Report =
            serde_json::from_slice(&handle(&state, QUERY, false)).expect("report JSON");
        assert_eq!(
            report.counter, 0,
            "an undefined request incremented the counter"
        );
        assert!(
            report.streams.is_empty(),
            "an undefined request started a stream"
        );
        assert_eq!(report.refused, 7);
        assert_eq!(counter_value(&handle(&state, INCREMENT, false)), Ok(1));
    }
}
