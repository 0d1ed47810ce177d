//! Shared helpers for the wire-level property tests (`codec_props.rs`,
//! `hostile_input.rs`): proptest strategies for every frame type and field,
//! the direction each frame travels, and the honest buffer bounds of the
//! decoder.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use bytes::Bytes;
use holdfast_proto::wire::frame::{MAX_LOGIN_EXTENSION, MAX_TEXT};
use holdfast_proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, ErrorCode, Frame, Login, LoginAccept, LoginKind,
    LoginReject, RejectReason, ResponseStatus, HEADER_LEN,
};
use holdfast_proto::{FenceResult, HostId, HostRecord, SessionId, SessionSecret};
use proptest::prelude::*;
use proptest::sample::Index;

/// Largest "ordinary" payload generated.
pub(crate) const MAX_PAYLOAD: usize = 2048;

/// Fixed fields of LOGIN (docs/PROTOCOL.md): the LOGIN length limit is this
/// plus [`MAX_LOGIN_EXTENSION`], whatever the decoder's `max_frame`.
pub(crate) const LOGIN_FIXED: usize = 60;
/// Fixed fields of LOGIN_REJECT (the largest text-carrying fixed part).
pub(crate) const REJECT_FIXED: usize = 16;
/// Both digests together.
pub(crate) const DIGEST_BYTES: usize = 8;

/// All four digest combinations.
pub(crate) const ALL_DIGESTS: [Digests; 4] = [
    Digests {
        header: false,
        data: false,
    },
    Digests {
        header: true,
        data: false,
    },
    Digests {
        header: false,
        data: true,
    },
    Digests {
        header: true,
        data: true,
    },
];

/// Both digests on.
pub(crate) const BOTH: Digests = Digests {
    header: true,
    data: true,
};

/// The largest number of bytes a decoder for `dir` with limit `max_frame`
/// may hold for one frame: the header, the largest length field it accepts
/// (login and text frames have their own fixed caps, independent of
/// `max_frame`) and two digests.
pub(crate) fn frame_bound(dir: Direction, max_frame: u32) -> usize {
    let own_caps = match dir {
        Direction::ToTarget => LOGIN_FIXED + MAX_LOGIN_EXTENSION,
        Direction::ToInitiator => REJECT_FIXED + MAX_TEXT,
    };
    HEADER_LEN + (max_frame as usize).max(own_caps) + DIGEST_BYTES
}

/// A strict upper bound on the decoder buffer's reserved capacity, for a
/// decoder whose largest frame is `frame` bytes ([`frame_bound`]).
///
/// The decoder takes from its input only the bytes the current frame still
/// needs, so its buffer never holds more than `frame` bytes. `BytesMut` only
/// reallocates when a request does not fit: a vector-backed buffer grows to
/// `max(2 * cap, needed)` with `cap < needed <= frame`; a reclaimed shared
/// buffer (the previous frame was split off the front) grows to
/// `max(2 * cap, offset + needed)`, which `bytes` only does when the old
/// allocation was already under `2 * frame`; and a fresh allocation replacing
/// a still-shared one is `max(needed, original capacity)`, the original
/// capacity being at most the earlier allocation. So the reservation stays
/// under `4 * frame` (random piecewise feeding reaches about `2.8 * frame`).
pub(crate) fn capacity_bound(frame: usize) -> usize {
    4 * frame
}

/// Which way a frame travels; ERROR goes both ways.
pub(crate) fn directions(frame: &Frame) -> &'static [Direction] {
    match frame {
        Frame::Error { .. } => &[Direction::ToTarget, Direction::ToInitiator],
        Frame::Login(_)
        | Frame::Command { .. }
        | Frame::Message { .. }
        | Frame::InitiatorAck { .. }
        | Frame::Ping { .. }
        | Frame::Fin { .. }
        | Frame::Fence { .. } => &[Direction::ToTarget],
        Frame::LoginAccept(_)
        | Frame::LoginReject(_)
        | Frame::Response { .. }
        | Frame::StatusResponse { .. }
        | Frame::TargetAck { .. }
        | Frame::Pong { .. }
        | Frame::Shutdown { .. }
        | Frame::FinAck { .. }
        | Frame::FenceDone { .. } => &[Direction::ToInitiator],
    }
}

/// True for the frames that never carry digests.
pub(crate) fn is_login_frame(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::Login(_) | Frame::LoginAccept(_) | Frame::LoginReject(_)
    )
}

/// A decoder for `dir` with `digests` and a generous limit.
pub(crate) fn decoder(dir: Direction, digests: Digests) -> Decoder {
    let mut d = Decoder::new(dir, 1 << 20);
    d.set_digests(digests);
    d
}

/// The four digest combinations.
pub(crate) fn arb_digests() -> impl Strategy<Value = Digests> {
    (any::<bool>(), any::<bool>()).prop_map(|(header, data)| Digests { header, data })
}

/// Either login kind.
pub(crate) fn arb_login_kind() -> impl Strategy<Value = LoginKind> {
    prop_oneof![Just(LoginKind::New), Just(LoginKind::Recover)]
}

/// Payloads: mostly up to [`MAX_PAYLOAD`] bytes, sometimes past the
/// encoder's 4 KiB zero-copy threshold.
pub(crate) fn arb_payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
        1 => proptest::collection::vec(any::<u8>(), 0..=16),
        1 => proptest::collection::vec(any::<u8>(), 4096..=5000),
    ]
    .prop_map(Bytes::from)
}

/// Valid UTF-8 of at most [`MAX_TEXT`] bytes (multi-byte characters included).
pub(crate) fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..=MAX_TEXT),
        proptest::collection::vec(proptest::char::range('a', 'z'), 0..=MAX_TEXT),
    ]
    .prop_map(|chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > MAX_TEXT {
                break;
            }
            s.push(c);
        }
        s
    })
}

/// Every error code, including unknown ones kept verbatim.
pub(crate) fn arb_error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        3 => (1u16..=18).prop_map(ErrorCode::from_wire),
        1 => prop_oneof![Just(0u16), 19u16..=u16::MAX].prop_map(ErrorCode::Other),
    ]
}

/// Every reject reason, including unknown ones kept verbatim.
pub(crate) fn arb_reject_reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        3 => (1u16..=10).prop_map(RejectReason::from_wire),
        1 => prop_oneof![Just(0u16), 11u16..=u16::MAX].prop_map(RejectReason::Other),
    ]
}

/// Interesting 64-bit values: edges and anything.
pub(crate) fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        0u64..1000,
        any::<u64>(),
    ]
}

/// Interesting 32-bit values: edges and anything.
pub(crate) fn arb_u32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()]
}

/// A LOGIN with arbitrary fields.
pub(crate) fn arb_login() -> impl Strategy<Value = Login> {
    (
        (any::<u16>(), any::<u16>(), arb_login_kind(), arb_digests()),
        (arb_u64(), any::<[u8; 16]>(), arb_u64()),
        (arb_u32(), arb_u32(), arb_u32()),
        arb_host_record(),
    )
        .prop_map(
            |(
                (min_version, max_version, kind, digests),
                (session, secret, response_ack),
                (max_frame, keepalive_ms, requested_credits),
                host,
            )| Login {
                min_version,
                max_version,
                kind,
                digests,
                session: SessionId(session),
                secret: SessionSecret(secret),
                response_ack,
                max_frame,
                keepalive_ms,
                requested_credits,
                host,
            },
        )
}

/// No HOST record, or one with an arbitrary (non-zero) host and epoch.
pub(crate) fn arb_host_record() -> impl Strategy<Value = Option<HostRecord>> {
    proptest::option::of(
        (arb_host(), arb_u64()).prop_map(|(host, epoch)| HostRecord { host, epoch }),
    )
}

/// A host id that is not all zero.
pub(crate) fn arb_host() -> impl Strategy<Value = HostId> {
    any::<[u8; 16]>().prop_map(|mut id| {
        if id == [0; 16] {
            id[15] = 1;
        }
        HostId(id)
    })
}

/// A LOGIN_ACCEPT with arbitrary fields.
pub(crate) fn arb_login_accept() -> impl Strategy<Value = LoginAccept> {
    (
        (any::<u16>(), arb_digests(), arb_login_kind()),
        (arb_u64(), any::<[u8; 16]>(), arb_u64(), arb_u64()),
        (arb_u32(), arb_u32(), arb_u32(), arb_u32()),
        arb_u32(),
    )
        .prop_map(
            |(
                (version, digests, kind),
                (session, secret, command_ack, credit_limit),
                (max_frame, inactivity_ms, retain_ms, credits),
                quiesce_ms,
            )| LoginAccept {
                version,
                digests,
                kind,
                session: SessionId(session),
                secret: SessionSecret(secret),
                command_ack,
                credit_limit,
                max_frame,
                inactivity_ms,
                retain_ms,
                credits,
                quiesce_ms,
            },
        )
}

/// A LOGIN_REJECT with arbitrary fields.
pub(crate) fn arb_login_reject() -> impl Strategy<Value = LoginReject> {
    (
        arb_reject_reason(),
        any::<u16>(),
        any::<u16>(),
        arb_u32(),
        arb_text(),
    )
        .prop_map(
            |(reason, min_version, max_version, retry_after_ms, text)| LoginReject {
                reason,
                min_version,
                max_version,
                retry_after_ms,
                text,
            },
        )
}

/// Any frame of any type, with arbitrary field values.
pub(crate) fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        arb_login().prop_map(Frame::Login).boxed(),
        (arb_u64(), arb_u64(), arb_payload())
            .prop_map(|(seq, ack, payload)| Frame::Command { seq, ack, payload })
            .boxed(),
        (arb_u64(), arb_u64(), arb_payload())
            .prop_map(|(seq, ack, payload)| Frame::Message { seq, ack, payload })
            .boxed(),
        arb_u64()
            .prop_map(|ack| Frame::InitiatorAck { ack })
            .boxed(),
        (arb_u64(), arb_u64())
            .prop_map(|(token, ack)| Frame::Ping { token, ack })
            .boxed(),
        (arb_u64(), arb_u64())
            .prop_map(|(last_seq, ack)| Frame::Fin { last_seq, ack })
            .boxed(),
        (arb_error_code(), arb_text())
            .prop_map(|(code, text)| Frame::Error { code, text })
            .boxed(),
        arb_login_accept().prop_map(Frame::LoginAccept).boxed(),
        arb_login_reject().prop_map(Frame::LoginReject).boxed(),
        (arb_u64(), arb_u64(), arb_u64(), arb_u64(), arb_payload())
            .prop_map(|(seq, command, ack, limit, payload)| Frame::Response {
                seq,
                command,
                ack,
                limit,
                payload,
            })
            .boxed(),
        (
            (arb_u64(), arb_u64(), arb_u64(), arb_u64()),
            1u16..=u16::MAX,
            arb_text()
        )
            .prop_map(
                |((seq, command, ack, limit), status, text)| Frame::StatusResponse {
                    seq,
                    command,
                    ack,
                    limit,
                    status: ResponseStatus::from_wire(status),
                    text,
                }
            )
            .boxed(),
        (arb_u64(), arb_u64())
            .prop_map(|(ack, limit)| Frame::TargetAck { ack, limit })
            .boxed(),
        (arb_u64(), arb_u64(), arb_u64())
            .prop_map(|(token, ack, limit)| Frame::Pong { token, ack, limit })
            .boxed(),
        (arb_u32(), arb_u32(), arb_u64(), arb_u64())
            .prop_map(|(max_up_ms, min_hold_ms, ack, limit)| Frame::Shutdown {
                max_up_ms,
                min_hold_ms,
                ack,
                limit,
            })
            .boxed(),
        arb_u64().prop_map(|ack| Frame::FinAck { ack }).boxed(),
        (arb_u64(), arb_u32(), arb_host(), arb_u64())
            .prop_map(|(token, node, host, epoch)| Frame::Fence {
                token,
                node,
                host,
                epoch,
            })
            .boxed(),
        (arb_u64(), any::<u16>(), arb_u32())
            .prop_map(|(token, result, waited_ms)| Frame::FenceDone {
                token,
                result: FenceResult::from_wire(result),
                waited_ms,
            })
            .boxed(),
    ]
}

/// Any of the three login frames (which never carry digests).
pub(crate) fn arb_login_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        arb_login().prop_map(Frame::Login),
        arb_login_accept().prop_map(Frame::LoginAccept),
        arb_login_reject().prop_map(Frame::LoginReject),
    ]
}

/// Any frame that travels in `dir`.
pub(crate) fn arb_frame_to(dir: Direction) -> impl Strategy<Value = Frame> {
    arb_frame().prop_filter("travels the other way", move |f| {
        directions(f).contains(&dir)
    })
}

/// Cuts `bytes` into chunks at the given cut points (indices taken modulo
/// the length, duplicates and empty chunks allowed).
pub(crate) fn split_at_points<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// Hostile input for a decoder, turned into bytes once the decoder's
/// direction and digests are known.
#[derive(Debug, Clone)]
pub(crate) enum HostileInput {
    /// Random bytes.
    Raw(Vec<u8>),
    /// Well-formed frames (those travelling the decoder's way, with its
    /// digests unless others are given), then bytes overwritten, cut short
    /// or inserted.
    Mutated {
        frames: Vec<Frame>,
        digests: Option<Digests>,
        edits: Vec<(Index, u8, u8)>,
    },
}

impl HostileInput {
    pub(crate) fn bytes(&self, dir: Direction, decoder_digests: Digests) -> Vec<u8> {
        match self {
            HostileInput::Raw(bytes) => bytes.clone(),
            HostileInput::Mutated {
                frames,
                digests,
                edits,
            } => {
                let digests = digests.unwrap_or(decoder_digests);
                let mut bytes: Vec<u8> = frames
                    .iter()
                    .filter(|f| directions(f).contains(&dir))
                    .flat_map(|f| encode_to_vec(f, digests))
                    .collect();
                for (at, byte, op) in edits {
                    if bytes.is_empty() {
                        break;
                    }
                    let i = at.index(bytes.len());
                    match op {
                        0 => bytes[i] = *byte,
                        1 => bytes.truncate(i),
                        _ => bytes.insert(i, *byte),
                    }
                }
                bytes
            }
        }
    }
}

pub(crate) fn hostile_input() -> impl Strategy<Value = HostileInput> {
    let mutated = (
        proptest::collection::vec(arb_frame(), 1..8),
        prop_oneof![3 => Just(None), 1 => arb_digests().prop_map(Some)],
        prop_oneof![
            1 => Just(Vec::new()),
            3 => proptest::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 1..4),
        ],
    )
        .prop_map(|(frames, digests, edits)| HostileInput::Mutated {
            frames,
            digests,
            edits,
        });
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..8192).prop_map(HostileInput::Raw),
        // Mostly small type bytes and zeros: more headers pass the first checks.
        1 => proptest::collection::vec(prop_oneof![0u8..=0x17, Just(0u8), any::<u8>()], 0..4096)
            .prop_map(HostileInput::Raw),
        5 => mutated,
    ]
}
