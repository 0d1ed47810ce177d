//! Reading a store back: the checkpoint, then the log's groups after it.
//! Every check that fails is a [`CorruptStore`]; only an incomplete final
//! group is forgiven (a [`TornTail`]).

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

/// Best effort: the sessions named in the log's intact groups, for the
/// report of a bad checkpoint.
fn sessions_in_log(log: &[u8], limits: LogLimits) -> Vec<SessionId> {
    let mut out = Vec::new();
    let mut at = LOG_HEADER;
    while let Some(g) = log.get(at..) {
        let Some((len, body)) = group_at(g, limits) else {
            break;
        };
        if let Ok((_, _, _, changes)) = decode_group(body) {
            out.extend(changes.iter().filter_map(codec::change_session));
        }
        at += GROUP_HEADER + len;
    }
    out.sort();
    out.dedup();
    out
}

/// The group at the start of `g` if it is whole and its checksum holds:
/// (body length, body).
fn group_at(g: &[u8], limits: LogLimits) -> Option<(usize, &[u8])> {
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
    (crc32c::crc32c(body) == crc).then_some((len, body))
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
                    seen.extend(log.map(|l| sessions_in_log(l, limits)).unwrap_or_default());
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
    while at < log.len() {
        let rest = &log[at..];
        let tail_is_zero = |from: usize| rest.get(from..).is_none_or(|t| t.iter().all(|b| *b == 0));
        let torn_here = TornTail {
            offset: at as u64,
            bytes: rest.len() as u64,
        };
        if rest.len() < GROUP_HEADER {
            torn = Some(torn_here);
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let len_crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let bad = |what| corrupt((file, at as u64, what), sorted_sessions(&store), all);
        if crc32c::crc32c(&rest[..4]) != len_crc {
            // A crash can leave zeros where an append had not landed; any
            // other bytes are a damaged length.
            if tail_is_zero(0) {
                torn = Some(torn_here);
                break;
            }
            return Err(bad("group length fails its checksum"));
        }
        if (len as usize) < MIN_GROUP_BODY || len > limits.max_group {
            return Err(bad("group length out of range"));
        }
        let end = GROUP_HEADER + len as usize;
        let Some(body) = rest.get(GROUP_HEADER..end) else {
            torn = Some(torn_here);
            break;
        };
        if crc32c::crc32c(body) != crc {
            if tail_is_zero(end) {
                torn = Some(torn_here);
                break;
            }
            return Err(bad("group checksum mismatch with groups after it"));
        }
        let (group, g_wall, state, changes) = decode_group(body).map_err(|e| {
            let (f, o, w) = decode_err(file, at + GROUP_HEADER, e);
            corrupt((f, o, w), sorted_sessions(&store), all)
        })?;
        if group != expected {
            return Err(bad("group number out of sequence"));
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
