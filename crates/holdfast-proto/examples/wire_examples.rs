//! Annotated hex dumps of holdfast frames, for docs/PROTOCOL.md §15.
//!
//! Every frame is built as a [`Frame`] value and encoded by the crate's own
//! encoder ([`encode_to_vec`]); each dump is decoded again by the crate's
//! [`Decoder`] to prove it round-trips. The field names in the annotation come
//! from a layout table below that mirrors docs/PROTOCOL.md §4; its widths are
//! checked against every encoded frame.
//!
//! A final cross-check drives a real [`Initiator`] and [`Target`] through the
//! same exchange (new session, a command and its response, a command lost
//! with its connection, recovery and the resend) and asserts that the state
//! machines emit exactly the bytes printed here, and so does a second run
//! of the fenced failover of §15.6 (a LOGIN with a HOST record, FENCE and
//! FENCE_DONE).
//!
//! Run with `cargo run -p holdfast-proto --example wire_examples`.

use bytes::Bytes;
use holdfast_proto::config::DEFAULT_MAX_FRAME;
use holdfast_proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, ErrorCode, FenceResult, Frame, HostId, HostRecord,
    Login, LoginAccept, LoginKind, LoginReject, RejectReason, ResponseStatus, HEADER_LEN, NEVER_MS,
    VERSION_MAX, VERSION_MIN,
};
use holdfast_proto::{
    CallOptions, ConnId, Initiator, InitiatorConfig, RandomSource, SessionId, SessionSecret,
    Target, TargetConfig, Timestamp,
};

/// The incarnation the scripted random source gives the example target.
const INCARNATION: u32 = 0xA1B2_C3D4;
/// The secret the scripted random source gives the example session.
const SECRET: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];
/// The host id of the fenced-failover example.
const HOST: HostId = HostId([
    0x48, 0x4f, 0x53, 0x54, 0x2d, 0x41, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
]);
/// Both digests.
const BOTH: Digests = Digests {
    header: true,
    data: true,
};

fn main() {
    let session = SessionId::new(INCARNATION, 1);
    let secret = SessionSecret(SECRET);
    let frames = Frames::new(session, secret);

    section("15.1 New session: LOGIN and LOGIN_ACCEPT");
    dump("LOGIN, new session", &frames.login_new, Digests::NONE);
    dump(
        "LOGIN_ACCEPT, new session",
        &frames.accept_new,
        Digests::NONE,
    );

    section("15.2 A command and its response");
    dump("CMD 1", &frames.cmd1, Digests::NONE);
    dump("RESP 1 answering CMD 1", &frames.resp1, Digests::NONE);

    section("15.3 Recovery: CMD 2 was lost with connection 1");
    dump(
        "CMD 2 (lost with connection 1)",
        &frames.cmd2,
        Digests::NONE,
    );
    dump(
        "LOGIN, recovery (connection 2)",
        &frames.login_recover,
        Digests::NONE,
    );
    dump(
        "LOGIN_ACCEPT, recovery",
        &frames.accept_recover,
        Digests::NONE,
    );
    dump("CMD 2, resent", &frames.cmd2, Digests::NONE);

    section("15.4 Frames with both digests");
    dump("CMD 1 with header and data digests", &frames.cmd1, BOTH);
    dump(
        "PING with both digests (empty payload: data digest 0)",
        &frames.ping,
        BOTH,
    );

    section("15.5 One frame of every type (no digests)");
    for frame in every_type(session, secret) {
        let bytes = encode_to_vec(&frame, Digests::NONE);
        check_round_trip(&frame, &bytes, Digests::NONE);
        let name = match frame {
            Frame::StatusResponse { .. } => "RESP (STATUS)",
            _ => type_name(frame.kind()),
        };
        println!("{name:<13} {}", hex(&bytes));
    }

    section("15.6 Fenced failover: a LOGIN with a HOST record, FENCE and FENCE_DONE");
    let fenced = Fenced::new();
    dump(
        "LOGIN, new session, HOST record (host, epoch 1)",
        &fenced.login_host,
        Digests::NONE,
    );
    dump(
        "LOGIN_ACCEPT with quiesce_ms = inactivity_ms + command budget",
        &fenced.accept_host,
        Digests::NONE,
    );
    dump(
        "FENCE from the host's session at epoch 2",
        &fenced.fence,
        Digests::NONE,
    );
    dump(
        "FENCE_DONE after the running command finished",
        &fenced.fence_done,
        Digests::NONE,
    );

    section("15.7 Join: a second connection of the session (17.2)");
    dump(
        "LOGIN, join (connection 2)",
        &frames.login_join,
        Digests::NONE,
    );
    dump("LOGIN_ACCEPT, join", &frames.accept_join, Digests::NONE);

    cross_check(&frames);
    cross_check_fence(&fenced);
    join_check(&frames);
    println!();
    println!(
        "cross-check passed: Initiator and Target emit exactly the bytes of 15.1-15.4, 15.6 and 15.7"
    );
}

/// The frames of the worked example.
struct Frames {
    login_new: Frame,
    accept_new: Frame,
    cmd1: Frame,
    resp1: Frame,
    cmd2: Frame,
    login_recover: Frame,
    accept_recover: Frame,
    ping: Frame,
    login_join: Frame,
    accept_join: Frame,
}

impl Frames {
    /// The frames the default configurations produce for the example exchange.
    fn new(session: SessionId, secret: SessionSecret) -> Self {
        let login = |kind, session, secret, response_ack| {
            Frame::Login(Login {
                min_version: VERSION_MIN,
                max_version: VERSION_MAX,
                kind,
                digests: Digests::NONE,
                session,
                secret,
                response_ack,
                max_frame: DEFAULT_MAX_FRAME,
                keepalive_ms: 500,
                requested_credits: 128,
                host: None,
            })
        };
        let accept = |kind, secret, command_ack, credit_limit| {
            Frame::LoginAccept(LoginAccept {
                version: 1,
                digests: Digests::NONE,
                kind,
                session,
                secret,
                command_ack,
                credit_limit,
                max_frame: DEFAULT_MAX_FRAME,
                inactivity_ms: 2000,
                retain_ms: 60_000,
                credits: 128,
                quiesce_ms: 0,
            })
        };
        let no_secret = SessionSecret([0; 16]);
        Frames {
            login_new: login(LoginKind::New, SessionId(0), no_secret, 0),
            accept_new: accept(LoginKind::New, secret, 0, 128),
            cmd1: Frame::Command {
                seq: 1,
                ack: 0,
                payload: Bytes::from_static(b"hello"),
            },
            resp1: Frame::Response {
                seq: 1,
                command: 1,
                ack: 1,
                limit: 128,
                payload: Bytes::from_static(b"world"),
            },
            cmd2: Frame::Command {
                seq: 2,
                ack: 1,
                payload: Bytes::from_static(b"again"),
            },
            login_recover: login(LoginKind::Recover, session, secret, 1),
            accept_recover: accept(LoginKind::Recover, no_secret, 1, 129),
            ping: Frame::Ping { token: 1, ack: 0 },
            login_join: login(LoginKind::Join, session, secret, 0),
            accept_join: accept(LoginKind::Join, no_secret, 0, 128),
        }
    }
}

/// One frame of each of the 14 types.
fn every_type(session: SessionId, secret: SessionSecret) -> Vec<Frame> {
    let f = Frames::new(session, secret);
    vec![
        f.login_new,
        f.cmd1,
        Frame::Message {
            seq: 3,
            ack: 1,
            payload: Bytes::from_static(b"note"),
        },
        Frame::InitiatorAck { ack: 1 },
        f.ping,
        Frame::Fin {
            last_seq: 3,
            ack: 2,
        },
        Frame::Error {
            code: ErrorCode::CreditExceeded,
            text: "over".to_owned(),
        },
        f.accept_new,
        Frame::LoginReject(LoginReject {
            reason: RejectReason::SessionExpired,
            min_version: VERSION_MIN,
            max_version: VERSION_MAX,
            retry_after_ms: 0,
            text: "gone".to_owned(),
        }),
        f.resp1,
        Frame::StatusResponse {
            seq: 2,
            command: 2,
            ack: 3,
            limit: 131,
            status: ResponseStatus::ResponseTooLarge,
            text: "big".to_owned(),
        },
        Frame::TargetAck { ack: 3, limit: 131 },
        Frame::Pong {
            token: 1,
            ack: 3,
            limit: 131,
        },
        Frame::Shutdown {
            max_up_ms: 5000,
            min_hold_ms: NEVER_MS,
            ack: 3,
            limit: 131,
        },
        Frame::FinAck { ack: 3 },
        Frame::Fence {
            token: 1,
            node: INCARNATION,
            host: HOST,
            epoch: 2,
        },
        Frame::FenceDone {
            token: 1,
            result: FenceResult::Fenced,
            waited_ms: 25,
        },
    ]
}

/// The frames of the fenced-failover example (§15.6): the host's first
/// session logs in at epoch 1 and has CMD 1 running when its second
/// session (epoch 2, on the same node here) asks for a fence of the node;
/// the FENCE_DONE leaves when CMD 1 completes, 25 ms later.
struct Fenced {
    login_host: Frame,
    accept_host: Frame,
    fence: Frame,
    fence_done: Frame,
}

impl Fenced {
    fn new() -> Self {
        let Frame::Login(login) = Frames::new(SessionId(0), SessionSecret([0; 16])).login_new
        else {
            unreachable!("login_new is a LOGIN")
        };
        let Frame::LoginAccept(accept) =
            Frames::new(SessionId::new(INCARNATION, 1), SessionSecret(SECRET)).accept_new
        else {
            unreachable!("accept_new is a LOGIN_ACCEPT")
        };
        Fenced {
            login_host: Frame::Login(Login {
                host: Some(HostRecord {
                    host: HOST,
                    epoch: 1,
                }),
                ..login
            }),
            accept_host: Frame::LoginAccept(LoginAccept {
                quiesce_ms: 3000,
                ..accept
            }),
            fence: Frame::Fence {
                token: 1,
                node: INCARNATION,
                host: HOST,
                epoch: 2,
            },
            fence_done: Frame::FenceDone {
                token: 1,
                result: FenceResult::Fenced,
                waited_ms: 25,
            },
        }
    }
}

// ----- annotation -----

/// How a field's value is shown.
#[derive(Clone, Copy)]
enum Show {
    /// Unsigned big-endian integer, in decimal.
    Dec,
    /// Unsigned big-endian integer, in hex.
    Hex,
    /// ASCII text.
    Ascii,
    /// Raw bytes only.
    Raw,
    /// Must be zero.
    Reserved,
}

/// The fixed fields of each frame type: name, width in bytes, presentation.
fn layout(kind: u8) -> &'static [(&'static str, usize, Show)] {
    use Show::*;
    match kind {
        0x01 => &[
            ("magic", 4, Ascii),
            ("min_version", 2, Dec),
            ("max_version", 2, Dec),
            ("kind (0 new, 1 recover, 2 join)", 1, Dec),
            ("digests (bit0 hdr, bit1 data)", 1, Hex),
            ("reserved", 2, Reserved),
            ("session", 8, Hex),
            ("secret", 16, Raw),
            ("response_ack", 8, Dec),
            ("max_frame", 4, Dec),
            ("keepalive_ms", 4, Dec),
            ("requested_credits", 4, Dec),
            ("reserved", 4, Reserved),
        ],
        0x02 | 0x03 => &[("seq", 8, Dec), ("ack", 8, Dec)],
        0x04 | 0x17 => &[("ack", 8, Dec)],
        0x05 => &[("token", 8, Dec), ("ack", 8, Dec)],
        0x06 => &[("last_seq", 8, Dec), ("ack", 8, Dec)],
        0x07 => &[("code", 2, Dec), ("reserved", 2, Reserved)],
        0x11 => &[
            ("version", 2, Dec),
            ("digests (bit0 hdr, bit1 data)", 1, Hex),
            ("kind (0 new, 1 recover, 2 join)", 1, Dec),
            ("session", 8, Hex),
            ("secret", 16, Raw),
            ("command_ack", 8, Dec),
            ("credit_limit", 8, Dec),
            ("max_frame", 4, Dec),
            ("inactivity_ms", 4, Dec),
            ("retain_ms", 4, Dec),
            ("credits", 4, Dec),
            ("quiesce_ms", 4, Dec),
        ],
        0x12 => &[
            ("reason", 2, Dec),
            ("min_version", 2, Dec),
            ("max_version", 2, Dec),
            ("reserved", 2, Reserved),
            ("retry_after_ms", 4, Dec),
            ("reserved", 4, Reserved),
        ],
        0x13 => &[
            ("seq", 8, Dec),
            ("command", 8, Dec),
            ("ack", 8, Dec),
            ("limit", 8, Dec),
        ],
        0x14 => &[("ack", 8, Dec), ("limit", 8, Dec)],
        0x15 => &[("token", 8, Dec), ("ack", 8, Dec), ("limit", 8, Dec)],
        0x16 => &[
            ("max_up_ms", 4, Dec),
            ("min_hold_ms", 4, Dec),
            ("ack", 8, Dec),
            ("limit", 8, Dec),
        ],
        0x08 => &[
            ("token", 8, Dec),
            ("node", 4, Hex),
            ("reserved", 4, Reserved),
            ("host", 16, Raw),
            ("epoch", 8, Dec),
        ],
        0x18 => &[
            ("token", 8, Dec),
            ("result (0 Fenced, 1 Unreachable, 2 Refused)", 2, Dec),
            ("reserved", 2, Reserved),
            ("waited_ms", 4, Dec),
        ],
        _ => &[],
    }
}

fn type_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "LOGIN",
        0x02 => "CMD",
        0x03 => "MSG",
        0x04 => "ACK",
        0x05 => "PING",
        0x06 => "FIN",
        0x07 => "ERROR",
        0x11 => "LOGIN_ACCEPT",
        0x12 => "LOGIN_REJECT",
        0x13 => "RESP",
        0x14 => "TACK",
        0x15 => "PONG",
        0x16 => "SHUTDOWN",
        0x17 => "FIN_ACK",
        0x08 => "FENCE",
        0x18 => "FENCE_DONE",
        _ => "?",
    }
}

fn section(title: &str) {
    println!();
    println!("==== {title}");
}

/// Encodes `frame` with `digests`, checks it, and prints it field by field.
fn dump(title: &str, frame: &Frame, digests: Digests) {
    let bytes = encode_to_vec(frame, digests);
    check_round_trip(frame, &bytes, digests);
    println!();
    println!("{title}: {} ({} bytes)", direction(frame), bytes.len());
    let flags = bytes[1];
    let length = be(&bytes[4..8]) as usize;
    let mut rows = vec![
        Row::new(0, &bytes[0..1], format!("type = {}", type_name(bytes[0]))),
        Row::new(
            1,
            &bytes[1..2],
            format!("flags = {flags:#04x}{}", flag_names(flags)),
        ),
        Row::new(2, &bytes[2..4], "reserved".to_owned()),
        Row::new(4, &bytes[4..8], format!("length = {length}")),
    ];
    let mut pos = HEADER_LEN;
    let mut fixed = 0;
    for &(name, width, show) in layout(bytes[0]) {
        let field = &bytes[pos..pos + width];
        rows.push(Row::new(pos, field, describe(name, field, show)));
        pos += width;
        fixed += width;
    }
    if flags & 1 != 0 {
        let crc = be(&bytes[pos..pos + 4]);
        let over = crc32c::crc32c(&bytes[..pos]);
        assert_eq!(crc, u64::from(over), "header digest");
        rows.push(Row::new(
            pos,
            &bytes[pos..pos + 4],
            format!("header digest = CRC32C(bytes 0..{pos})"),
        ));
        pos += 4;
    }
    let payload_len = length - fixed;
    let payload = &bytes[pos..pos + payload_len];
    for (i, chunk) in payload.chunks(16).enumerate() {
        let note = if i == 0 {
            format!("payload ({payload_len} bytes) {:?}", ascii(payload))
        } else {
            String::new()
        };
        rows.push(Row::new(pos + 16 * i, chunk, note));
    }
    pos += payload_len;
    if flags & 2 != 0 {
        let crc = be(&bytes[pos..pos + 4]);
        assert_eq!(crc, u64::from(crc32c::crc32c(payload)), "data digest");
        rows.push(Row::new(
            pos,
            &bytes[pos..pos + 4],
            format!("data digest = CRC32C(payload, {payload_len} bytes)"),
        ));
        pos += 4;
    }
    assert_eq!(pos, bytes.len(), "layout table disagrees with the encoder");
    for row in rows {
        println!(
            "  {:>3}  {:<47}  {}",
            row.offset,
            hex_spaced(row.bytes),
            row.note
        );
    }
    println!("  hex: {}", hex(&bytes));
}

/// One annotated line of a dump.
struct Row<'a> {
    offset: usize,
    bytes: &'a [u8],
    note: String,
}

impl<'a> Row<'a> {
    fn new(offset: usize, bytes: &'a [u8], note: String) -> Self {
        Row {
            offset,
            bytes,
            note,
        }
    }
}

fn describe(name: &str, field: &[u8], show: Show) -> String {
    match show {
        Show::Dec => format!("{name} = {}", be(field)),
        Show::Hex => format!("{name} = {:#0w$x}", be(field), w = 2 + 2 * field.len()),
        Show::Ascii => format!("{name} = {:?}", ascii(field)),
        Show::Raw => name.to_owned(),
        Show::Reserved => {
            assert!(field.iter().all(|&b| b == 0), "reserved field not zero");
            name.to_owned()
        }
    }
}

fn flag_names(flags: u8) -> &'static str {
    match flags {
        0 => "",
        1 => " (header digest)",
        2 => " (data digest)",
        _ => " (header + data digests)",
    }
}

fn direction(frame: &Frame) -> &'static str {
    match frame {
        Frame::Error { .. } => "either direction",
        f if f.kind() < 0x10 => "initiator -> target",
        _ => "target -> initiator",
    }
}

/// Decodes `bytes` with the crate's decoder and checks it gives `frame` back.
fn check_round_trip(frame: &Frame, bytes: &[u8], digests: Digests) {
    let dir = if frame.kind() < 0x10 {
        Direction::ToTarget
    } else {
        Direction::ToInitiator
    };
    let mut decoder = Decoder::new(dir, DEFAULT_MAX_FRAME);
    decoder.set_digests(digests);
    let mut input = bytes;
    let decoded = decoder
        .decode(&mut input)
        .expect("the decoder accepts the encoder's output")
        .expect("one whole frame");
    assert!(input.is_empty(), "exactly one frame");
    assert_eq!(&decoded, frame, "round trip");
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

fn ascii(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_spaced(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ----- cross-check against the state machines -----

/// A random source that returns a fixed script: the incarnation, then the
/// first session's secret, then zeros.
struct Script(Vec<u8>);

impl RandomSource for Script {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest.iter_mut() {
            *b = if self.0.is_empty() {
                0
            } else {
                self.0.remove(0)
            };
        }
    }
}

fn new_target() -> Target {
    let mut script = INCARNATION.to_be_bytes().to_vec();
    script.extend_from_slice(&SECRET);
    Target::new(
        TargetConfig::default(),
        Box::new(Script(script)),
        Timestamp::ZERO,
    )
}

/// Everything the initiator has to send now.
fn initiator_out(init: &mut Initiator, now: Timestamp) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunks) = init.poll_transmit(now) {
        for chunk in chunks {
            out.extend_from_slice(&chunk);
        }
    }
    out
}

/// Everything the target has to send now (its changes count as persisted).
fn target_out(target: &mut Target, now: Timestamp) -> Vec<u8> {
    let mut out = Vec::new();
    while target.has_ready() {
        let ready = target.ready();
        for t in &ready.transmits {
            for chunk in &t.chunks {
                out.extend_from_slice(chunk);
            }
        }
        target.advance(now);
    }
    out
}

/// Runs the worked example through a real Initiator and Target and asserts
/// they put exactly the printed frames on the wire.
fn cross_check(f: &Frames) {
    let enc = |frame: &Frame, d| encode_to_vec(frame, d);
    let ms = Timestamp::from_millis;
    let (c1, c2) = (ConnId(1), ConnId(2));
    let mut target = new_target();
    let mut init = Initiator::new(InitiatorConfig::default(), ms(0));
    let session = SessionId::new(INCARNATION, 1);

    // 15.1: a new session.
    init.connect(c1, ms(0)).expect("connect");
    let login = initiator_out(&mut init, ms(0));
    assert_eq!(login, enc(&f.login_new, Digests::NONE), "LOGIN (new)");
    target.accept(c1, ms(0)).expect("accept");
    target.handle_input(c1, &login, ms(0));
    let accept = target_out(&mut target, ms(0));
    assert_eq!(
        accept,
        enc(&f.accept_new, Digests::NONE),
        "LOGIN_ACCEPT (new)"
    );
    init.handle_input(c1, &accept, ms(0));

    // 15.2: CMD 1 and its RESP.
    init.call(Bytes::from_static(b"hello"), CallOptions::default(), ms(1))
        .expect("credit");
    let cmd1 = initiator_out(&mut init, ms(1));
    assert_eq!(cmd1, enc(&f.cmd1, Digests::NONE), "CMD 1");
    target.handle_input(c1, &cmd1, ms(1));
    assert!(
        target_out(&mut target, ms(1)).is_empty(),
        "no ack before the delay"
    );
    target
        .complete(session, 1, Bytes::from_static(b"world"), ms(1))
        .expect("command 1 is running");
    let resp1 = target_out(&mut target, ms(1));
    assert_eq!(resp1, enc(&f.resp1, Digests::NONE), "RESP 1");
    init.handle_input(c1, &resp1, ms(1));

    // 15.3: CMD 2 is lost with connection 1; recovery resends it.
    init.call(Bytes::from_static(b"again"), CallOptions::default(), ms(2))
        .expect("credit");
    let cmd2 = initiator_out(&mut init, ms(2));
    assert_eq!(cmd2, enc(&f.cmd2, Digests::NONE), "CMD 2");
    init.connection_lost(c1, ms(3));
    target.connection_closed(c1, ms(3));
    init.connect(c2, ms(4)).expect("reconnect");
    let login = initiator_out(&mut init, ms(4));
    assert_eq!(
        login,
        enc(&f.login_recover, Digests::NONE),
        "LOGIN (recover)"
    );
    target.accept(c2, ms(4)).expect("accept");
    target.handle_input(c2, &login, ms(4));
    let accept = target_out(&mut target, ms(4));
    assert_eq!(
        accept,
        enc(&f.accept_recover, Digests::NONE),
        "LOGIN_ACCEPT (recover)"
    );
    init.handle_input(c2, &accept, ms(4));
    let resent = initiator_out(&mut init, ms(4));
    assert_eq!(resent, enc(&f.cmd2, Digests::NONE), "CMD 2 resent");

    // 15.4: a connection that negotiated both digests.
    let mut target = new_target();
    let mut config = InitiatorConfig::default();
    config.digests = BOTH;
    let mut init = Initiator::new(config, ms(0));
    init.connect(c1, ms(0)).expect("connect");
    target.accept(c1, ms(0)).expect("accept");
    let login = initiator_out(&mut init, ms(0));
    target.handle_input(c1, &login, ms(0));
    let accept = target_out(&mut target, ms(0));
    init.handle_input(c1, &accept, ms(0));
    let ping = initiator_out(&mut init, ms(500));
    assert_eq!(ping, enc(&f.ping, BOTH), "PING with digests");
    init.call(
        Bytes::from_static(b"hello"),
        CallOptions::default(),
        ms(501),
    )
    .expect("credit");
    let cmd1 = initiator_out(&mut init, ms(501));
    assert_eq!(cmd1, enc(&f.cmd1, BOTH), "CMD 1 with digests");
}

/// 15.7: a session whose initiator may use two connections joins a second
/// one right after its first login; asserts the printed bytes.
fn join_check(f: &Frames) {
    let enc = |frame: &Frame, d| encode_to_vec(frame, d);
    let ms = Timestamp::from_millis;
    let (c1, c2) = (ConnId(1), ConnId(2));
    let mut target = new_target();
    let mut config = InitiatorConfig::default();
    config.connections = 2;
    let mut init = Initiator::new(config, ms(0));
    init.connect(c1, ms(0)).expect("connect");
    target.accept(c1, ms(0)).expect("accept");
    let login = initiator_out(&mut init, ms(0));
    target.handle_input(c1, &login, ms(0));
    let accept = target_out(&mut target, ms(0));
    init.handle_input(c1, &accept, ms(0));
    init.join(c2, ms(1)).expect("join");
    let mut join = Vec::new();
    while let Some(chunks) = init.poll_transmit_on(c2, ms(1)) {
        for chunk in chunks {
            join.extend_from_slice(&chunk);
        }
    }
    assert_eq!(join, enc(&f.login_join, Digests::NONE), "LOGIN (join)");
    target.accept(c2, ms(1)).expect("accept");
    target.handle_input(c2, &join, ms(1));
    let accept = target_out(&mut target, ms(1));
    assert_eq!(
        accept,
        enc(&f.accept_join, Digests::NONE),
        "LOGIN_ACCEPT (join)"
    );
    init.handle_input(c2, &accept, ms(1));
    assert_eq!(
        init.logged_in_connections(),
        2,
        "both connections logged in"
    );
}

/// Everything the target has to send now on `conn` (its changes count as
/// persisted); bytes for other connections are dropped.
fn target_out_on(target: &mut Target, conn: ConnId, now: Timestamp) -> Vec<u8> {
    let mut out = Vec::new();
    while target.has_ready() {
        let ready = target.ready();
        for t in ready.transmits.iter().filter(|t| t.conn == conn) {
            for chunk in &t.chunks {
                out.extend_from_slice(chunk);
            }
        }
        target.advance(now);
    }
    out
}

/// Runs the fenced failover of §15.6 through real Initiators and a Target
/// and asserts they put exactly the printed frames on the wire.
fn cross_check_fence(f: &Fenced) {
    let enc = |frame: &Frame| encode_to_vec(frame, Digests::NONE);
    let ms = Timestamp::from_millis;
    let (c1, c2) = (ConnId(1), ConnId(2));
    let mut target = new_target();
    let host = |epoch| {
        let mut ic = InitiatorConfig::default();
        ic.host = Some(HOST);
        ic.epoch = epoch;
        ic
    };
    let mut old = Initiator::new(host(1), ms(0));
    old.connect(c1, ms(0)).expect("connect");
    let login = initiator_out(&mut old, ms(0));
    assert_eq!(login, enc(&f.login_host), "LOGIN with a HOST record");
    target.accept(c1, ms(0)).expect("accept");
    target.handle_input(c1, &login, ms(0));
    let accept = target_out_on(&mut target, c1, ms(0));
    assert_eq!(accept, enc(&f.accept_host), "LOGIN_ACCEPT with quiesce_ms");
    old.handle_input(c1, &accept, ms(0));
    assert_eq!(old.quiesce(), Some(std::time::Duration::from_secs(3)));
    old.call(Bytes::from_static(b"hello"), CallOptions::default(), ms(1))
        .expect("credit");
    let cmd = initiator_out(&mut old, ms(1));
    target.handle_input(c1, &cmd, ms(1));
    target_out_on(&mut target, c1, ms(1));

    let mut new = Initiator::new(host(2), ms(2));
    new.connect(c2, ms(2)).expect("connect");
    target.accept(c2, ms(2)).expect("accept");
    let login = initiator_out(&mut new, ms(2));
    target.handle_input(c2, &login, ms(2));
    let accept = target_out_on(&mut target, c2, ms(2));
    new.handle_input(c2, &accept, ms(2));
    let token = new.fence(INCARNATION, HOST, 2, ms(10)).expect("logged in");
    assert_eq!(token, 1);
    let fence = initiator_out(&mut new, ms(10));
    assert_eq!(fence, enc(&f.fence), "FENCE");
    target.handle_input(c2, &fence, ms(10));
    assert!(
        target_out_on(&mut target, c2, ms(10)).is_empty(),
        "no FENCE_DONE while CMD 1 runs"
    );
    target
        .complete(SessionId::new(INCARNATION, 1), 1, Bytes::new(), ms(35))
        .expect("CMD 1 is running");
    let done = target_out_on(&mut target, c2, ms(35));
    assert_eq!(done, enc(&f.fence_done), "FENCE_DONE");
}
