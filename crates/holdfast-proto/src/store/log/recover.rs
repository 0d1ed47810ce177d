//! Reading a store back: the checkpoint, then the log's groups after it.
//! Every check that fails is a [`CorruptStore`]; only the remains of the
//! group in flight at a crash are forgiven (a [`TornTail`]).
//!
//! After the last valid group the log holds pre-written zeros. Where the
//! next group would start: only zeros to the end of the file is the clean
//! end. A group header whose length passes its checksum is the group in
//! flight if its body is cut short by the end of the file, or fails its
//! checksum with only zeros after the group: torn; with non-zero bytes
//! after it, corrupt. Anything else non-zero there (a damaged or partly
//! written header) is torn if it ends within the largest group's reach and
//! no whole group with a later number starts inside it; otherwise corrupt.
//! Looking for that later group checks the body checksum of at most
//! [`MAX_CANDIDATES`] offsets, so a crafted file cannot make the search
//! quadratic in its size: more such offsets are corrupt.

use bytes::Bytes;

use crate::ids::SessionId;
use crate::store::MemoryStore;

use super::codec::{self, Reader};
use super::{
    decode_err, image, CorruptStore, DurableLog, LogLimits, Recovered, StoreFile, TornTail,
    CKPT_HEADER, CKPT_MAGIC, GROUP_HEADER, LOG_HEADER, LOG_MAGIC, MIN_CHANGE, MIN_GROUP_BODY,
};

/// What the checkpoint holds.
struct Checkpoint {
    incarnation: u32,
    last_group: u64,
    wall_ms: u64,
    service_state: Option<Bytes>,
    store: MemoryStore,
}

type Bad = (StoreFile, u64, &'static str);

fn read_state(r: &mut Reader<'_>) -> Result<Option<Bytes>, codec::DecodeError> {
    if r.bool()? {
        Ok(Some(r.bytes()?))
    } else {
        Ok(None)
    }
}

fn read_checkpoint(
    bytes: &[u8],
    limits: LogLimits,
    seen: &mut Vec<SessionId>,
) -> Result<Checkpoint, Bad> {
    let file = StoreFile::Checkpoint;
    if bytes.len() < CKPT_HEADER || &bytes[..8] != CKPT_MAGIC {
        return Err((
            file,
            0,
            "not a holdfast checkpoint (bad magic or too short)",
        ));
    }
    let mut r = Reader::new(&bytes[8..CKPT_HEADER]);
    let len = r.u64().map_err(|e| decode_err(file, 8, e))?;
    let crc = r.u32().map_err(|e| decode_err(file, 8, e))?;
    let body = &bytes[CKPT_HEADER..];
    if len > limits.max_checkpoint || len != body.len() as u64 {
        return Err((file, 8, "checkpoint length does not match the file"));
    }
    if crc32c::crc32c(body) != crc {
        return Err((file, CKPT_HEADER as u64, "checkpoint checksum mismatch"));
    }
    let mut r = Reader::new(body);
    let at = |e| decode_err(file, CKPT_HEADER, e);
    let incarnation = r.u32().map_err(at)?;
    let last_group = r.u64().map_err(at)?;
    let wall_ms = r.u64().map_err(at)?;
    let service_state = read_state(&mut r).map_err(at)?;
    let store = image::get_store(&mut r, seen).map_err(at)?;
    if r.remaining() != 0 {
        return Err((file, (CKPT_HEADER + r.at()) as u64, "bytes after the image"));
    }
    Ok(Checkpoint {
        incarnation,
        last_group,
        wall_ms,
        service_state,
        store,
    })
}

fn sorted_sessions(store: &MemoryStore) -> Vec<SessionId> {
    let mut v: Vec<SessionId> = store.sessions().map(|(id, _)| id).collect();
    v.sort();
    v
}

/// Best effort: the sessions named in the log's groups from offset `from`
/// on. A group whose length passes its checksum is stepped over even when
/// its body fails (so the sessions of the groups after a damaged one are
/// named too); the walk stops at the first length that fails.
fn sessions_in_log(log: &[u8], from: usize, limits: LogLimits) -> Vec<SessionId> {
    let mut out = Vec::new();
    let mut at = from;
    while let Some(g) = log.get(at..) {
        let Some((len, body)) = group_at(g, limits) else {
            break;
        };
        if let Some(Ok((_, _, _, changes))) = body.map(decode_group) {
            out.extend(changes.iter().filter_map(codec::change_session));
        }
        at += GROUP_HEADER + len;
    }
    out.sort();
    out.dedup();
    out
}

/// The group at the start of `g` if its length passes its checksum and the
/// group is whole: (body length, the body if its checksum holds).
fn group_at(g: &[u8], limits: LogLimits) -> Option<(usize, Option<&[u8]>)> {
    let header = g.get(..GROUP_HEADER)?;
    let len = usize::try_from(u32::from_le_bytes(header[..4].try_into().ok()?)).ok()?;
    let len_crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let crc = u32::from_le_bytes(header[8..12].try_into().ok()?);
    if crc32c::crc32c(&header[..4]) != len_crc
        || len < MIN_GROUP_BODY
        || len as u64 > u64::from(limits.max_group)
    {
        return None;
    }
    let body = g.get(GROUP_HEADER..GROUP_HEADER.checked_add(len)?)?;
    Some((len, (crc32c::crc32c(body) == crc).then_some(body)))
}

/// The sessions in `store` and those named in the log from `from` on.
fn affected(store: &MemoryStore, log: &[u8], from: usize, limits: LogLimits) -> Vec<SessionId> {
    let mut v = sorted_sessions(store);
    v.extend(sessions_in_log(log, from, limits));
    v.sort();
    v.dedup();
    v
}

/// The most offsets in the bytes after the last valid group whose header
/// passes its length checksum with a group number in range, and whose body
/// is therefore checksummed, before the bytes are called corrupt. Each
/// costs a checksum of up to the largest group, so without a bound a file
/// made of such headers would cost time quadratic in its size to read; the
/// remains of one torn group hold none by chance (a 32-bit checksum and a
/// 64-bit number must both match).
pub(super) const MAX_CANDIDATES: usize = 64;

/// What follows the last valid group when no group header does.
enum End {
    /// Only zeros: the clean end of the log.
    Clean,
    /// The remains of the group in flight at a crash: this many bytes, up
    /// to the last non-zero one.
    Torn(u64),
    /// A whole group with a later number starts this many bytes on: the
    /// bytes before it were a group, now damaged.
    LostGroup(usize),
    /// Non-zero bytes farther than the largest group reaches.
    Beyond,
    /// More than [`MAX_CANDIDATES`] group headers with a number in range
    /// and a body that fails its checksum.
    Crafted,
}

/// Bytes from the start of `b` to its last non-zero byte, inclusive.
fn nonzero_span(b: &[u8]) -> usize {
    b.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1)
}

/// Classifies `rest`, the bytes after the last valid group, when they do
/// not start with a group header whose length passes its checksum (see
/// PROTOCOL.md §12.4, *Reading back*). `expected` is the next group's
/// number.
fn end_of_log(rest: &[u8], expected: u64, limits: LogLimits) -> End {
    let span = nonzero_span(rest);
    if span == 0 {
        return End::Clean;
    }
    if span as u64 > GROUP_HEADER as u64 + u64::from(limits.max_group) {
        return End::Beyond;
    }
    // The group in flight wrote into [0, span) at most; a whole group with
    // a later number in there was written before it, so is not in flight.
    let most = expected.saturating_add((span / (GROUP_HEADER + MIN_GROUP_BODY)) as u64);
    let mut candidates = 0usize;
    for p in 1..span {
        let g = &rest[p..];
        let Some(number) = g.get(GROUP_HEADER..GROUP_HEADER + 8) else {
            break;
        };
        let number = u64::from_le_bytes(number.try_into().unwrap_or_default());
        if !(expected..=most).contains(&number) {
            continue;
        }
        match group_at(g, limits) {
            Some((_, Some(body))) if decode_group(body).is_ok() => return End::LostGroup(p),
            Some(_) => {
                candidates += 1;
                if candidates > MAX_CANDIDATES {
                    return End::Crafted;
                }
            }
            None => {}
        }
    }
    End::Torn(span as u64)
}

type Group = (u64, u64, Option<Bytes>, Vec<crate::target::StateChange>);

fn decode_group(body: &[u8]) -> Result<Group, codec::DecodeError> {
    let mut r = Reader::new(body);
    let group = r.u64()?;
    let wall = r.u64()?;
    let state = read_state(&mut r)?;
    let n = r.count(MIN_CHANGE)?;
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        changes.push(codec::get_change(&mut r)?);
    }
    if r.remaining() != 0 {
        return Err(r.err("bytes after the group's last change"));
    }
    Ok((group, wall, state, changes))
}

pub(super) fn run(
    checkpoint: Option<&[u8]>,
    log: Option<&[u8]>,
    limits: LogLimits,
) -> Result<Recovered, CorruptStore> {
    let corrupt = |(file, offset, what): Bad, sessions: Vec<SessionId>, all: bool| CorruptStore {
        file,
        offset,
        what,
        sessions,
        all_sessions: all,
    };
    let ckpt = match checkpoint {
        None => None,
        Some(bytes) => {
            let mut seen = Vec::new();
            match read_checkpoint(bytes, limits, &mut seen) {
                Ok(c) => Some(c),
                Err(bad) => {
                    seen.extend(
                        log.map(|l| sessions_in_log(l, LOG_HEADER, limits))
                            .unwrap_or_default(),
                    );
                    seen.sort();
                    seen.dedup();
                    return Err(corrupt(bad, seen, true));
                }
            }
        }
    };
    let Some(log) = log else {
        let what = if ckpt.is_some() {
            "the log is missing beside the checkpoint"
        } else {
            "neither the log nor the checkpoint exists"
        };
        let sessions = ckpt
            .as_ref()
            .map(|c| sorted_sessions(&c.store))
            .unwrap_or_default();
        return Err(corrupt((StoreFile::Log, 0, what), sessions, ckpt.is_none()));
    };

    let (mut store, mut service_state, mut wall, ckpt_group, ckpt_inc) = match ckpt {
        Some(c) => (
            c.store,
            c.service_state,
            c.wall_ms,
            c.last_group,
            Some(c.incarnation),
        ),
        None => (MemoryStore::new(), None, 0, 0, None),
    };
    let file = StoreFile::Log;
    // A bad log after a good checkpoint: the sessions known at the bad
    // point are all there is to name.
    let all = false;
    if log.len() < LOG_HEADER
        || &log[..8] != LOG_MAGIC
        || crc32c::crc32c(&log[..LOG_HEADER - 4]).to_le_bytes() != log[LOG_HEADER - 4..LOG_HEADER]
    {
        let what = "log header is not a holdfast log's (bad magic, too short or checksum)";
        return Err(corrupt((file, 0, what), sorted_sessions(&store), all));
    }
    let mut r = Reader::new(&log[8..LOG_HEADER - 4]);
    let (incarnation, base) = match (r.u32(), r.u64()) {
        (Ok(i), Ok(b)) => (i, b),
        _ => {
            return Err(corrupt(
                (file, 8, "log header"),
                sorted_sessions(&store),
                all,
            ))
        }
    };
    if ckpt_inc.is_some_and(|i| i != incarnation) {
        let what = "log and checkpoint belong to different target incarnations";
        return Err(corrupt((file, 8, what), sorted_sessions(&store), true));
    }
    if base > ckpt_group {
        let what = if checkpoint.is_none() {
            "the log follows a checkpoint that is missing"
        } else {
            "the log starts after groups the checkpoint does not hold"
        };
        return Err(corrupt((file, 12, what), sorted_sessions(&store), true));
    }

    let mut at = LOG_HEADER;
    let mut expected = base + 1;
    let mut replayed = 0u64;
    let mut torn = None;
    loop {
        let rest = log.get(at..).unwrap_or_default();
        let bad = |what, name_from: usize| {
            corrupt(
                (file, at as u64, what),
                affected(&store, log, name_from, limits),
                all,
            )
        };
        let header = rest
            .get(..GROUP_HEADER)
            .filter(|h| crc32c::crc32c(&h[..4]).to_le_bytes() == h[4..8]);
        let Some(header) = header else {
            // No group header here: the clean end of the log, or the
            // remains of the group in flight at a crash.
            match end_of_log(rest, expected, limits) {
                End::Clean => {}
                End::Torn(bytes) => {
                    torn = Some(TornTail {
                        offset: at as u64,
                        bytes,
                    })
                }
                End::LostGroup(p) => {
                    let what = "a whole group follows bytes that are not one: a group in the \
                                middle of the log is lost";
                    return Err(bad(what, at + p));
                }
                End::Beyond => {
                    let what = "non-zero bytes after the end of the log, farther than the \
                                largest group reaches";
                    return Err(bad(what, at));
                }
                End::Crafted => {
                    let what = "more than 64 damaged group headers after the end of the log \
                                (no torn group holds any)";
                    return Err(bad(what, at));
                }
            }
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if (len as usize) < MIN_GROUP_BODY || len > limits.max_group {
            return Err(bad("group length out of range", at));
        }
        let end = GROUP_HEADER + len as usize;
        let torn_here = TornTail {
            offset: at as u64,
            bytes: nonzero_span(rest) as u64,
        };
        let Some(body) = rest.get(GROUP_HEADER..end) else {
            // Runs past the end of the file: the group in flight, whose
            // file extension did not wholly reach the disk.
            torn = Some(torn_here);
            break;
        };
        if crc32c::crc32c(body) != crc {
            // The group in flight is the last thing written: after it the
            // file holds only pre-written zeros.
            if nonzero_span(&rest[end..]) == 0 {
                torn = Some(torn_here);
                break;
            }
            return Err(bad(
                "group checksum mismatch with non-zero bytes after it",
                at,
            ));
        }
        let (group, g_wall, state, changes) = decode_group(body).map_err(|e| {
            let (f, o, w) = decode_err(file, at + GROUP_HEADER, e);
            corrupt((f, o, w), affected(&store, log, at, limits), all)
        })?;
        if group != expected {
            return Err(bad("group number out of sequence", at));
        }
        expected += 1;
        if group > ckpt_group {
            store.apply_all(&changes);
            if state.is_some() {
                service_state = state;
            }
            wall = wall.max(g_wall);
            replayed += 1;
        }
        at += end;
    }
    let last_group = ckpt_group.max(expected - 1);
    store.set_incarnation(incarnation);

    let mut engine = DurableLog {
        incarnation,
        limits,
        store: store.clone(),
        service_state: service_state.clone(),
        last_group,
        log_len: at as u64,
        file_len: log.len() as u64,
        next_check: limits.min_log,
        last_wall_ms: wall,
    };
    let ops = engine.checkpoint();
    Ok(Recovered {
        log: engine,
        store,
        incarnation,
        service_state,
        last_commit_wall_ms: wall,
        groups_replayed: replayed,
        torn_tail: torn,
        ops,
    })
}
