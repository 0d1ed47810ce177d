//! Tests of the block protocol's encoding ([`super`]).

use super::*;

fn all_requests() -> Vec<Request> {
    vec![
        Request::Read {
            offset: 4096,
            len: 512,
        },
        Request::Write {
            offset: u64::MAX - 3,
            data: Bytes::from_static(b"abc"),
            fua: true,
        },
        Request::Write {
            offset: 0,
            data: Bytes::new(),
            fua: false,
        },
        Request::Flush,
        Request::Trim {
            offset: 7,
            len: 9,
            fua: false,
        },
        Request::WriteZeroes {
            offset: 1 << 40,
            len: DEFAULT_MAX_REQUEST,
            fua: true,
            punch: false,
            fast: false,
        },
        Request::WriteZeroes {
            offset: 0,
            len: 4096,
            fua: false,
            punch: true,
            fast: true,
        },
        Request::Info,
        // The extensions' ranges may exceed the maximum request.
        Request::BlockStatus {
            offset: 1 << 20,
            len: u32::MAX,
        },
        Request::Cache {
            offset: 512,
            len: DEFAULT_MAX_REQUEST + 1,
        },
    ]
}

#[test]
fn requests_round_trip() {
    for r in all_requests() {
        let enc = r.encode();
        assert_eq!(Request::decode(&enc, DEFAULT_MAX_REQUEST), Ok(r));
    }
}

#[test]
fn write_data_is_a_slice_of_the_payload() {
    let enc = Request::Write {
        offset: 0,
        data: Bytes::from_static(b"zero-copy"),
        fua: false,
    }
    .encode();
    let Ok(Request::Write { data, .. }) = Request::decode(&enc, DEFAULT_MAX_REQUEST) else {
        panic!("not a write");
    };
    assert_eq!(data.as_ptr(), enc[REQUEST_HEADER_LEN..].as_ptr());
}

#[test]
fn every_truncation_is_an_error() {
    for r in all_requests() {
        let enc = r.encode();
        for n in 0..enc.len() {
            assert!(Request::decode(&enc.slice(..n), DEFAULT_MAX_REQUEST).is_err());
        }
    }
}

fn header(magic: u8, op: u8, flags: u16, offset: u64, len: u32) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(magic);
    b.put_u8(op);
    b.put_u16(flags);
    b.put_u64(offset);
    b.put_u32(len);
    b
}

#[test]
fn malformed_requests_are_refused() {
    let max = 1024;
    let decode = |b: BytesMut| Request::decode(&b.freeze(), max);
    assert_eq!(
        decode(header(0xB2, 1, 0, 0, 1)),
        Err(WireError::BadMagic(0xB2))
    );
    assert_eq!(
        decode(header(MAGIC, 0, 0, 0, 1)),
        Err(WireError::UnknownOpcode(0))
    );
    assert_eq!(
        decode(header(MAGIC, 9, 0, 0, 1)),
        Err(WireError::UnknownOpcode(9))
    );
    // PUNCH and FAST belong to WRITE_ZEROES only.
    for op in [1, 2, 4, 7, 8] {
        for flag in [FLAG_PUNCH, FLAG_FAST] {
            assert!(matches!(
                decode(header(MAGIC, op, flag, 0, 0)),
                Err(WireError::BadFlags { .. })
            ));
        }
    }
    assert!(decode(header(MAGIC, 5, FLAG_PUNCH | FLAG_FAST, 0, 1)).is_ok());
    assert!(matches!(
        decode(header(MAGIC, 1, FLAG_FUA, 0, 1)),
        Err(WireError::BadFlags { .. })
    ));
    assert!(matches!(
        decode(header(MAGIC, 2, 0x8000, 0, 0)),
        Err(WireError::BadFlags { .. })
    ));
    assert!(matches!(
        decode(header(MAGIC, 3, 0, 1, 0)),
        Err(WireError::NonZeroRange { .. })
    ));
    assert!(matches!(
        decode(header(MAGIC, 6, 0, 0, 1)),
        Err(WireError::NonZeroRange { .. })
    ));
    assert_eq!(
        decode(header(MAGIC, 1, 0, 0, max + 1)),
        Err(WireError::TooLarge { len: max + 1, max })
    );
    assert!(decode(header(MAGIC, 4, 0, 0, max)).is_ok());
    // A WRITE whose data is shorter or longer than its length field.
    let mut w = header(MAGIC, 2, 0, 0, 4);
    w.put_slice(b"abc");
    assert!(matches!(decode(w), Err(WireError::LengthMismatch { .. })));
    let mut w = header(MAGIC, 2, 0, 0, 2);
    w.put_slice(b"abc");
    assert!(matches!(decode(w), Err(WireError::LengthMismatch { .. })));
    // A WRITE announcing more than the maximum, however much follows.
    assert!(decode(header(MAGIC, 2, 0, 0, u32::MAX)).is_err());
    // Trailing bytes after a READ.
    let mut r = header(MAGIC, 1, 0, 0, 4);
    r.put_u8(0);
    assert!(matches!(decode(r), Err(WireError::LengthMismatch { .. })));
}

#[test]
fn volume_ids_travel_with_requests() {
    let id = VolumeId([9; 16]);
    for r in all_requests() {
        let enc = r.encode_for(Some(id));
        assert_eq!(
            Request::decode_addressed(&enc, DEFAULT_MAX_REQUEST),
            Ok((r.clone(), Some(id)))
        );
        assert_eq!(Request::decode(&enc, DEFAULT_MAX_REQUEST), Ok(r.clone()));
        for n in 0..enc.len() {
            assert!(Request::decode_addressed(&enc.slice(..n), DEFAULT_MAX_REQUEST).is_err());
        }
    }
    let e = BlockError::WrongVolume {
        expected: id,
        found: VolumeId([0; 16]),
        size: 42,
    };
    assert_eq!(decode_response(&encode_err(&e)), Ok(Err(e)));
}

#[test]
fn responses_round_trip() {
    let ok = encode_ok(b"data");
    assert_eq!(decode_response(&ok), Ok(Ok(Bytes::from_static(b"data"))));
    assert_eq!(decode_response(&encode_ok(b"")), Ok(Ok(Bytes::new())));
    for e in [
        BlockError::OutOfRange {
            offset: 1,
            len: 2,
            size: 3,
        },
        BlockError::Invalid("bad".into()),
        BlockError::ReadOnly,
        BlockError::NoSpace,
        BlockError::Io("disk on fire".into()),
        BlockError::Io(String::new()),
    ] {
        assert_eq!(decode_response(&encode_err(&e)), Ok(Err(e)));
    }
}

#[test]
fn long_messages_are_truncated_at_a_character_boundary() {
    let long = "é".repeat(MAX_MESSAGE);
    let Ok(Err(BlockError::Io(m))) = decode_response(&encode_err(&BlockError::Io(long))) else {
        panic!("not an I/O error");
    };
    assert!(m.len() <= MAX_MESSAGE && m.len() >= MAX_MESSAGE - 1);
    assert!(m.chars().all(|c| c == 'é'));
}

#[test]
fn malformed_responses_are_refused() {
    assert!(decode_response(&Bytes::new()).is_err());
    assert!(decode_response(&Bytes::from_static(&[MAGIC])).is_err());
    assert_eq!(
        decode_response(&Bytes::from_static(&[0, 0])),
        Err(WireError::BadMagic(0))
    );
    assert_eq!(
        decode_response(&Bytes::from_static(&[MAGIC, 99])),
        Err(WireError::UnknownStatus(99))
    );
    // Out of range with a short body; a message longer than its bytes.
    assert!(decode_response(&Bytes::from_static(&[MAGIC, 1, 0, 0])).is_err());
    assert!(decode_response(&Bytes::from_static(&[MAGIC, 5, 0, 9, b'x'])).is_err());
    assert!(decode_response(&Bytes::from_static(&[MAGIC, 5, 0])).is_err());
    assert!(decode_response(&Bytes::from_static(&[MAGIC, 3, 0])).is_err());
    // Invalid UTF-8 in a message is kept, lossily.
    assert_eq!(
        decode_response(&Bytes::from_static(&[MAGIC, 5, 0, 1, 0xff])),
        Ok(Err(BlockError::Io("\u{fffd}".into())))
    );
}

#[test]
fn info_round_trips_and_is_checked() {
    let info = Info {
        size: 1 << 30,
        read_only: true,
        block_size: 4096,
        max_request: DEFAULT_MAX_REQUEST,
        volume_id: Some(VolumeId([7; 16])),
        aligned: true,
        extensions: true,
    };
    assert_eq!(Info::decode(&info.encode()), Ok(info));
    assert_eq!(&info.encode()[8..12], &[0, 0, 0, 7], "flag bits 0, 1 and 2");
    // An old target's INFO: no ALIGNED, no EXTENSIONS; unknown bits ignored.
    let mut old = info.encode();
    old[8..12].copy_from_slice(&[0x80, 0, 0, 0]);
    let old = Info::decode(&old).expect("decodes");
    assert!(!old.aligned && !old.extensions && !old.read_only);
    assert!(Info::decode(&info.encode()[..19]).is_err());
    assert!(Info::decode(&info.encode()[..35]).is_err());
    // A target without identity: zero id, or the 20-byte form.
    let anonymous = Info {
        volume_id: None,
        ..info
    };
    assert_eq!(Info::decode(&anonymous.encode()), Ok(anonymous));
    assert_eq!(
        Info::decode(&info.encode()[..INFO_LEN_NO_ID]),
        Ok(anonymous)
    );
    let bad_block = Info {
        block_size: 3000,
        ..info
    };
    assert!(Info::decode(&bad_block.encode()).is_err());
    let bad_max = Info {
        max_request: 512,
        ..info
    };
    assert!(Info::decode(&bad_max.encode()).is_err());
    let zero = Info {
        block_size: 0,
        ..info
    };
    assert!(Info::decode(&zero.encode()).is_err());
}

#[test]
fn the_frame_limit_bounds_the_request_size() {
    let frame = holdfast::TargetConfig::default().max_frame;
    assert!(DEFAULT_MAX_REQUEST <= max_request_for_frame(frame));
    assert_eq!(max_request_for_frame(10), 0);
}

/// Random bytes (a fixed xorshift sequence) never make a decoder panic,
/// and whatever decodes re-encodes to the same bytes.
#[test]
fn random_input_never_panics() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 2 == 0 && !b.is_empty() {
            b[0] = MAGIC;
            if b.len() > 1 {
                b[1] = (next() % 8) as u8;
            }
        }
        let b = Bytes::from(b);
        if let Ok((r, id)) = Request::decode_addressed(&b, 64) {
            assert_eq!(r.encode_for(id), b);
        }
        let _ = decode_response(&b);
        let _ = Info::decode(&b);
    }
}

#[test]
fn extents_round_trip_and_are_checked() {
    use crate::device::{Extent, EXTENT_HOLE, EXTENT_ZERO};
    let extents = vec![
        Extent {
            len: 4096,
            flags: 0,
        },
        Extent {
            len: 1 << 20,
            flags: EXTENT_HOLE | EXTENT_ZERO,
        },
    ];
    let body = encode_extents(&extents);
    assert_eq!(body.len(), 16);
    assert_eq!(decode_extents(&body, 4096 + (1 << 20)), Ok(extents.clone()));
    // More than was asked, an empty answer, an empty extent, a torn one.
    assert!(decode_extents(&body, 4096).is_err());
    assert!(decode_extents(&[], 4096).is_err());
    assert!(decode_extents(&encode_extents(&[Extent { len: 0, flags: 0 }]), 1).is_err());
    assert!(decode_extents(&body[..12], u32::MAX).is_err());
    let too_many = vec![Extent { len: 1, flags: 0 }; MAX_EXTENTS + 1];
    assert!(decode_extents(&encode_extents(&too_many), u32::MAX).is_err());
    // Not supported carries its message.
    let e = BlockError::NotSupported("slow".into());
    assert_eq!(decode_response(&encode_err(&e)), Ok(Err(e)));
}
