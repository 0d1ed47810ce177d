//! The checkpoint image: a whole [`MemoryStore`] as bytes, and back.
//!
//! It encodes every field of [`StoredSession`] (a field added there must be
//! added here, both sides). Sessions are written in id order so an image of
//! the same state is the same bytes. Decoding is bounded like the log's
//! records (see [`super::codec`]).

use std::collections::BTreeMap;

use crate::ids::{SessionId, SessionSecret};
use crate::store::{MemoryStore, StoredSession};
use crate::wire::{HostId, ResponseStatus};

use super::codec::{DecodeError, Reader, Writer};

/// Smallest encoded session (for bounding the count read back).
const MIN_SESSION: usize = 8 + 1 + 4 + 4 + 8 + 4 + 4 + 4 + 8 + 8 + 1 + 8;

/// Appends the image of `store`.
pub(crate) fn put_store(w: &mut Writer, store: &MemoryStore) {
    w.u64(store.applied());
    w.u32(store.max_counter());
    let mut fences: Vec<_> = store.fenced_hosts().collect();
    fences.sort();
    w.u32(u32::try_from(fences.len()).unwrap_or(u32::MAX));
    for (host, epoch) in fences {
        w.raw(&host.0);
        w.u64(epoch);
    }
    let mut sessions: Vec<_> = store.sessions().collect();
    sessions.sort_by_key(|(id, _)| *id);
    w.u32(u32::try_from(sessions.len()).unwrap_or(u32::MAX));
    for (id, s) in sessions {
        w.u64(id.0);
        match &s.secret {
            None => w.u8(0),
            Some(secret) => {
                w.u8(1);
                w.raw(&secret.0);
            }
        }
        w.u32(s.credits);
        w.u32(s.max_frame);
        w.u64(s.received);
        w.u32(u32::try_from(s.pending.len()).unwrap_or(u32::MAX));
        for (seq, (command, payload)) in &s.pending {
            w.u64(*seq);
            w.u8(u8::from(*command));
            w.bytes(payload);
        }
        w.u32(u32::try_from(s.responses.len()).unwrap_or(u32::MAX));
        for (resp, (cmd, payload)) in &s.responses {
            w.u64(*resp);
            w.u64(*cmd);
            w.bytes(payload);
        }
        w.u32(u32::try_from(s.statuses.len()).unwrap_or(u32::MAX));
        for (resp, status) in &s.statuses {
            w.u64(*resp);
            w.u16(status.to_wire());
        }
        w.u64(s.last_response);
        w.u64(s.responses_acked);
        w.host(s.host.as_ref());
        w.u64(s.messages_delivered);
    }
}

/// Reads an image back. `sessions_seen` collects the ids read so far, for
/// the corruption report.
pub(crate) fn get_store(
    r: &mut Reader<'_>,
    sessions_seen: &mut Vec<SessionId>,
) -> Result<MemoryStore, DecodeError> {
    let mut store = MemoryStore::new();
    store.set_applied(r.u64()?);
    store.raise_max_counter(r.u32()?);
    let fences = r.count(24)?;
    for _ in 0..fences {
        let host = HostId(r.id16()?);
        let epoch = r.u64()?;
        store.insert_fence(host, epoch);
    }
    let sessions = r.count(MIN_SESSION)?;
    for _ in 0..sessions {
        let id = SessionId(r.u64()?);
        sessions_seen.push(id);
        let secret = if r.bool()? {
            Some(SessionSecret(r.id16()?))
        } else {
            None
        };
        let credits = r.u32()?;
        let max_frame = r.u32()?;
        let received = r.u64()?;
        let mut pending = BTreeMap::new();
        for _ in 0..r.count(13)? {
            let seq = r.u64()?;
            let command = r.bool()?;
            pending.insert(seq, (command, r.bytes()?));
        }
        let mut responses = BTreeMap::new();
        for _ in 0..r.count(20)? {
            let resp = r.u64()?;
            let cmd = r.u64()?;
            responses.insert(resp, (cmd, r.bytes()?));
        }
        let mut statuses = BTreeMap::new();
        for _ in 0..r.count(10)? {
            let resp = r.u64()?;
            statuses.insert(resp, ResponseStatus::from_wire(r.u16()?));
        }
        let session = StoredSession {
            secret,
            credits,
            max_frame,
            received,
            pending,
            responses,
            statuses,
            last_response: r.u64()?,
            responses_acked: r.u64()?,
            host: r.host()?,
            messages_delivered: r.u64()?,
        };
        store.insert_session(id, session);
    }
    Ok(store)
}
