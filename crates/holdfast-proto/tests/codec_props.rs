//! Property tests of the wire codec (`holdfast_proto::wire`).
//!
//! * Round trip: every frame type, with arbitrary field values and all four
//!   digest combinations, decodes to exactly the frame that was encoded and
//!   consumes exactly its bytes, whether the bytes arrive at once, in
//!   arbitrary pieces, or several frames back to back.
//! * [`Outgoing`] yields the same bytes as [`encode_to_vec`], frame after frame.
//! * Texts longer than `MAX_TEXT` are cut on a character boundary.
//! * Corruption: with both digests on, any single flipped bit of a non-login
//!   frame is an error (or, if it grew the length field, the decoder waits
//!   for more bytes and then fails); never a panic, never another frame.
//!   Login frames carry no digests, so a flip may yield another frame, but
//!   only one whose canonical encoding is exactly the corrupted bytes.
//! * Hostile bytes (random or mutated frames): the decoder never panics, its
//!   buffer never holds more than one maximal frame, its reservation stays
//!   bounded, and every frame it returns re-encodes to the bytes it consumed.
//! * A header announcing more than the limit is refused with
//!   `FrameTooLarge` as soon as its 8 bytes arrive, before any body byte is
//!   read.

mod wire_support;

use holdfast_proto::wire::frame::{kind, MAX_LOGIN_EXTENSION, MAX_TEXT};
use holdfast_proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, ErrorCode, Frame, Login, Outgoing, HEADER_LEN,
};
use proptest::prelude::*;
use proptest::sample::Index;
use wire_support::{
    arb_digests, arb_error_code, arb_frame, arb_login_frame, capacity_bound, decoder, directions,
    frame_bound, hostile_input, is_login_frame, split_at_points, BOTH, LOGIN_FIXED, REJECT_FIXED,
};

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(512)
}

/// Decodes every complete frame in `input`, failing the test on an error.
fn decode_all(dec: &mut Decoder, mut input: &[u8]) -> Result<Vec<Frame>, TestCaseError> {
    let mut frames = Vec::new();
    loop {
        match dec.decode(&mut input) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => {
                prop_assert!(input.is_empty(), "Ok(None) with input left");
                return Ok(frames);
            }
            Err(e) => return Err(TestCaseError::fail(format!("decode error: {e}"))),
        }
    }
}

/// The digests a frame carries on a connection that negotiated `digests`.
fn carried(frame: &Frame, digests: Digests) -> Digests {
    if is_login_frame(frame) {
        Digests::NONE
    } else {
        digests
    }
}

fn flag_bits(d: Digests) -> u8 {
    u8::from(d.header) | (u8::from(d.data) << 1)
}

fn direction(to_target: bool) -> Direction {
    if to_target {
        Direction::ToTarget
    } else {
        Direction::ToInitiator
    }
}

proptest! {
    #![proptest_config(config())]

    /// encode → decode is the identity, consumes exactly the frame's bytes,
    /// and the header says what the frame is.
    #[test]
    fn round_trip(frame in arb_frame(), digests in arb_digests()) {
        let bytes = encode_to_vec(&frame, digests);
        let on_wire = carried(&frame, digests);
        let digest_len = 4 * (usize::from(on_wire.header) + usize::from(on_wire.data));
        prop_assert_eq!(bytes[0], frame.kind());
        // Bit 2 (STATUS) marks a status response, and nothing else.
        let status = if matches!(frame, Frame::StatusResponse { .. }) { 0x04 } else { 0 };
        prop_assert_eq!(bytes[1], flag_bits(on_wire) | status);
        prop_assert_eq!(&bytes[2..4], &[0u8, 0][..]);
        let length = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        prop_assert_eq!(bytes.len(), HEADER_LEN + length + digest_len);
        for &dir in directions(&frame) {
            let mut dec = decoder(dir, digests);
            let mut input = &bytes[..];
            let got = dec.decode(&mut input);
            prop_assert_eq!(got, Ok(Some(frame.clone())), "direction {:?}", dir);
            prop_assert!(input.is_empty(), "{} bytes left over", input.len());
            prop_assert_eq!(dec.buffered(), 0);
            // Nothing more to decode.
            prop_assert_eq!(dec.decode(&mut input), Ok(None));
        }
    }

    /// The same, with the bytes arriving in arbitrary pieces: the frame comes
    /// out exactly when its last byte arrives, and not a byte is lost.
    #[test]
    fn round_trip_in_pieces(
        frame in arb_frame(),
        digests in arb_digests(),
        cuts in proptest::collection::vec(any::<Index>(), 0..24),
    ) {
        let bytes = encode_to_vec(&frame, digests);
        for &dir in directions(&frame) {
            let mut dec = decoder(dir, digests);
            let mut fed = 0;
            let mut got = None;
            for piece in split_at_points(&bytes, &cuts) {
                let mut input = piece;
                let r = dec.decode(&mut input);
                prop_assert!(input.is_empty(), "a piece was not fully taken");
                fed += piece.len();
                match r {
                    Ok(Some(f)) => {
                        prop_assert!(got.is_none(), "two frames from one");
                        prop_assert_eq!(fed, bytes.len(), "frame returned before its last byte");
                        got = Some(f);
                    }
                    Ok(None) => {
                        if got.is_none() {
                            prop_assert_eq!(dec.buffered(), fed);
                        }
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("decode error: {e}"))),
                }
            }
            prop_assert_eq!(got.as_ref(), Some(&frame));
            prop_assert_eq!(dec.buffered(), 0);
        }
    }

    /// Several frames back to back, in arbitrary pieces, come out in order.
    #[test]
    fn round_trip_concatenated(
        to_target in any::<bool>(),
        digests in arb_digests(),
        frames in proptest::collection::vec(arb_frame(), 1..10),
        cuts in proptest::collection::vec(any::<Index>(), 0..24),
    ) {
        let dir = direction(to_target);
        let frames: Vec<Frame> =
            frames.into_iter().filter(|f| directions(f).contains(&dir)).collect();
        let bytes: Vec<u8> = frames.iter().flat_map(|f| encode_to_vec(f, digests)).collect();
        let mut dec = decoder(dir, digests);
        let mut got = Vec::new();
        for piece in split_at_points(&bytes, &cuts) {
            got.extend(decode_all(&mut dec, piece)?);
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(dec.buffered(), 0);
    }

    /// `Outgoing` with many frames yields exactly the concatenated encodings,
    /// and its `len` is honest.
    #[test]
    fn outgoing_matches_encode_to_vec(
        digests in arb_digests(),
        frames in proptest::collection::vec(arb_frame(), 0..12),
        as_vec in any::<bool>(),
    ) {
        let expected: Vec<u8> = frames.iter().flat_map(|f| encode_to_vec(f, digests)).collect();
        let mut out = Outgoing::new();
        for f in &frames {
            out.push(f, digests);
        }
        prop_assert_eq!(out.len(), expected.len());
        prop_assert_eq!(out.is_empty(), expected.is_empty());
        let got: Vec<u8> = if as_vec {
            out.take_vec()
        } else {
            let chunks = out.take_chunks();
            prop_assert!(chunks.iter().all(|c| !c.is_empty()), "empty chunk");
            chunks.iter().flat_map(|c| c.iter().copied()).collect()
        };
        prop_assert_eq!(got, expected);
        prop_assert!(out.is_empty());
        prop_assert_eq!(out.len(), 0);
        prop_assert!(out.take_chunks().is_empty());
    }

    /// Texts over `MAX_TEXT` bytes are cut to the longest prefix that ends on
    /// a character boundary and fits.
    #[test]
    fn long_texts_are_cut_on_a_char_boundary(
        code in arb_error_code(),
        chars in proptest::collection::vec(any::<char>(), 0..400),
        reject in any::<bool>(),
        digests in arb_digests(),
    ) {
        let text: String = chars.into_iter().collect();
        let mut end = text.len().min(MAX_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let want = &text[..end];
        prop_assert!(MAX_TEXT - want.len() < 4 || want.len() == text.len());
        let (frame, dir) = if reject {
            (
                Frame::LoginReject(holdfast_proto::wire::LoginReject {
                    reason: holdfast_proto::wire::RejectReason::Other(999),
                    min_version: 1,
                    max_version: 1,
                    retry_after_ms: 0,
                    text: text.clone(),
                }),
                Direction::ToInitiator,
            )
        } else {
            (Frame::Error { code, text: text.clone() }, Direction::ToTarget)
        };
        let bytes = encode_to_vec(&frame, digests);
        let mut dec = decoder(dir, digests);
        let got = decode_all(&mut dec, &bytes)?;
        prop_assert_eq!(got.len(), 1);
        let got_text = match &got[0] {
            Frame::Error { text, .. } => text.clone(),
            Frame::LoginReject(r) => r.text.clone(),
            other => return Err(TestCaseError::fail(format!("decoded {other:?}"))),
        };
        prop_assert_eq!(got_text, want);
    }

    /// With both digests on, a single flipped bit anywhere in a non-login
    /// frame never yields a frame: the decoder fails, or (length grew) waits
    /// for more bytes and fails once they arrive.
    #[test]
    fn flipped_bit_is_detected_with_digests(
        frame in arb_frame().prop_filter("login frames carry no digests", |f| !is_login_frame(f)),
        bit in any::<Index>(),
        pad in 0u8..=255,
    ) {
        let mut bytes = encode_to_vec(&frame, BOTH);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        for &dir in directions(&frame) {
            // A limit that keeps the wait for a grown length short.
            let mut dec = Decoder::new(dir, 1 << 17);
            dec.set_digests(BOTH);
            let mut input = &bytes[..];
            match dec.decode(&mut input) {
                Err(_) => {}
                Ok(Some(f)) => {
                    return Err(TestCaseError::fail(format!(
                        "bit {bit} flipped, decoded {f:?} (sent {frame:?})"
                    )))
                }
                Ok(None) => {
                    // Only a flip in the length field can make the frame longer.
                    prop_assert!((32..64).contains(&bit), "waiting after a flip of bit {}", bit);
                    prop_assert!(input.is_empty());
                    prop_assert_eq!(dec.buffered(), bytes.len());
                    // Give it what it asks for: it must then fail.
                    let filler = vec![pad; 4096];
                    let mut outcome = None;
                    for _ in 0..64 {
                        let mut more = &filler[..];
                        match dec.decode(&mut more) {
                            Ok(None) => continue,
                            r => {
                                outcome = Some(r);
                                break;
                            }
                        }
                    }
                    match outcome {
                        Some(Err(_)) => {}
                        other => {
                            return Err(TestCaseError::fail(format!(
                                "bit {bit} flipped, then padding gave {other:?}"
                            )))
                        }
                    }
                }
            }
        }
    }

    /// Login frames have no digests: a flip may decode, but only to a
    /// different frame whose canonical encoding is exactly the corrupted
    /// bytes it consumed.
    #[test]
    fn flipped_bit_in_login_frame_decodes_canonically_or_fails(
        frame in arb_login_frame(),
        bit in any::<Index>(),
        digests in arb_digests(),
    ) {
        let mut bytes = encode_to_vec(&frame, digests);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        for &dir in directions(&frame) {
            let mut dec = decoder(dir, digests);
            let mut input = &bytes[..];
            match dec.decode(&mut input) {
                Err(_) => {}
                Ok(None) => {
                    prop_assert!((32..64).contains(&bit), "waiting after a flip of bit {}", bit);
                    prop_assert!(dec.buffered() <= frame_bound(dir, 1 << 20));
                }
                Ok(Some(f)) => {
                    // A shorter length leaves bytes over; what was taken must
                    // be the canonical encoding of what came out.
                    let consumed = bytes.len() - input.len();
                    prop_assert_ne!(&f, &frame);
                    match (&f, &frame) {
                        // A flip in the extension area can turn the HOST
                        // record into one of an unknown type, which is
                        // skipped (not canonical), or change its value; the
                        // fixed fields are what they were.
                        (Frame::Login(got), Frame::Login(sent)) if bit / 8 >= HEADER_LEN + LOGIN_FIXED => {
                            let strip = |l: &Login| Login { host: None, ..l.clone() };
                            prop_assert_eq!(strip(got), strip(sent));
                        }
                        _ => prop_assert_eq!(encode_to_vec(&f, digests), bytes[..consumed].to_vec()),
                    }
                }
            }
        }
    }

    /// Hostile bytes never panic the decoder, never make it hold more than
    /// one maximal frame or reserve beyond that bound, and every frame it
    /// returns is the canonical decoding of the bytes it consumed.
    #[test]
    fn hostile_bytes_are_bounded(
        to_target in any::<bool>(),
        digests in arb_digests(),
        max_frame in prop_oneof![6 => Just(4096u32), 3 => 16u32..=300, 1 => Just(0u32)],
        input in hostile_input(),
        cuts in proptest::collection::vec(any::<Index>(), 0..32),
    ) {
        let dir = direction(to_target);
        let bytes = input.bytes(dir, digests);
        let bound = frame_bound(dir, max_frame);
        let cap_bound = capacity_bound(bound);
        let mut dec = Decoder::new(dir, max_frame);
        dec.set_digests(digests);
        let mut consumed = 0;
        let mut frame_start = 0;
        'feed: for piece in split_at_points(&bytes, &cuts) {
            let mut input = piece;
            loop {
                let before = input.len();
                let r = dec.decode(&mut input);
                consumed += before - input.len();
                prop_assert!(dec.buffered() <= bound, "buffered {} > {}", dec.buffered(), bound);
                prop_assert!(
                    dec.capacity() < cap_bound,
                    "capacity {} >= {}", dec.capacity(), cap_bound
                );
                match r {
                    Ok(Some(f)) => {
                        prop_assert!(directions(&f).contains(&dir));
                        let raw = &bytes[frame_start..consumed];
                        frame_start = consumed;
                        prop_assert_eq!(dec.buffered(), 0);
                        let length = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
                        let is_ext_login = f.kind() == kind::LOGIN && length as usize > LOGIN_FIXED;
                        if !is_ext_login {
                            prop_assert_eq!(
                                encode_to_vec(&f, digests),
                                raw.to_vec(),
                                "{:?} is not canonical", f
                            );
                        }
                    }
                    Ok(None) => {
                        prop_assert!(input.is_empty());
                        prop_assert_eq!(dec.buffered(), consumed - frame_start);
                        break;
                    }
                    Err(_) => break 'feed,
                }
            }
        }
    }

    /// A header announcing more than the limit is refused as soon as its
    /// 8 bytes are in, whatever follows, for every frame type.
    #[test]
    fn oversized_header_is_refused_before_the_body(
        to_target in any::<bool>(),
        digests in arb_digests(),
        max_frame in prop_oneof![Just(0u32), 1u32..=1 << 20, Just(u32::MAX - 1)],
        excess in prop_oneof![Just(1u64), 1u64..=u64::from(u32::MAX)],
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = direction(to_target);
        for &(k, travels_to_target) in ALL_KINDS {
            if travels_to_target != Some(to_target) && travels_to_target.is_some() {
                continue;
            }
            let limit: u64 = match k {
                kind::LOGIN => (LOGIN_FIXED + MAX_LOGIN_EXTENSION) as u64,
                kind::ERROR => (4 + MAX_TEXT) as u64,
                kind::LOGIN_REJECT => (REJECT_FIXED + MAX_TEXT) as u64,
                _ => u64::from(max_frame),
            };
            let Ok(length) = u32::try_from(limit + excess) else {
                continue;
            };
            let login = matches!(k, kind::LOGIN | kind::LOGIN_ACCEPT | kind::LOGIN_REJECT);
            let flags = if login { 0 } else { flag_bits(digests) };
            let mut bytes = vec![k, flags, 0, 0];
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes.extend_from_slice(&tail);
            let mut dec = Decoder::new(dir, max_frame);
            dec.set_digests(digests);
            let mut input = &bytes[..];
            let r = dec.decode(&mut input);
            match r {
                Err(e) => prop_assert_eq!(e.code(), ErrorCode::FrameTooLarge, "kind {:#04x}: {}", k, e),
                Ok(f) => return Err(TestCaseError::fail(format!("kind {k:#04x} length {length}: {f:?}"))),
            }
            prop_assert_eq!(input.len(), tail.len(), "body bytes were read");
            prop_assert!(dec.buffered() <= HEADER_LEN);
        }
    }
}

/// Every frame type and the way it travels (`None`: both ways).
const ALL_KINDS: &[(u8, Option<bool>)] = &[
    (kind::LOGIN, Some(true)),
    (kind::COMMAND, Some(true)),
    (kind::MESSAGE, Some(true)),
    (kind::INITIATOR_ACK, Some(true)),
    (kind::PING, Some(true)),
    (kind::FIN, Some(true)),
    (kind::ERROR, None),
    (kind::LOGIN_ACCEPT, Some(false)),
    (kind::LOGIN_REJECT, Some(false)),
    (kind::RESPONSE, Some(false)),
    (kind::TARGET_ACK, Some(false)),
    (kind::PONG, Some(false)),
    (kind::SHUTDOWN, Some(false)),
    (kind::FIN_ACK, Some(false)),
    (kind::FENCE, Some(true)),
    (kind::FENCE_DONE, Some(false)),
];
