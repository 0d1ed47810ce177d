//! Memory bound under hostile input, measured with a counting global
//! allocator (so this file holds exactly one test: nothing else may allocate
//! while it measures).
//!
//! A [`Target`] and an [`Initiator`] configured with `max_frame` = 64 KiB
//! are fed many MiB of hostile bytes: random garbage on fresh and on
//! established connections, headers announcing 4 GiB frames, frames dripped
//! a byte at a time, and long streams of maximal valid frames (commands,
//! messages, responses) cut at arbitrary points. The driver behaves like a
//! real one: it hands over at most `max_frame` bytes per `handle_input`, then
//! runs the Ready loop (target) or drains transmits and events (initiator).
//! The peak of live heap bytes above the level before each phase must stay
//! under a bound derived from `max_frame` alone, never proportional to the
//! input, and nothing may be left behind when a phase ends.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::wire::{
    encode_to_vec, Decoder, Digests, Direction, Frame, Login, LoginAccept, LoginKind, VERSION_MAX,
    VERSION_MIN,
};
use holdfast_proto::{
    CallOptions, ConnId, Delivery, Initiator, InitiatorConfig, InitiatorEvent, SeededRandom,
    SessionId, SessionSecret, Target, TargetConfig, Timestamp,
};

/// Bytes currently allocated.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The most bytes allocated at once since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their peak.
struct Counting;

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrank(size: usize) {
    LIVE.fetch_sub(size, Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; the counting only touches atomics and
// never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator)
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Count the new block before the old one goes: a moving reallocation
        // briefly holds both, and the bound must be honest about that.
        grew(new_size);
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            shrank(new_size);
        } else {
            shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MAX_FRAME: u32 = 64 * 1024;
const MAX: usize = MAX_FRAME as usize;
/// The allowed peak growth: a few maximal frames (the decoder's buffer, the
/// frame just decoded and handed on in a Ready or an event, the response
/// cache's one entry) plus fixed slack for bookkeeping (maps, queues,
/// timers, error texts).
const BOUND: usize = 4 * MAX + 64 * 1024;
const HEADER_DIGEST: usize = 4;
const BOTH: Digests = Digests {
    header: true,
    data: true,
};

/// The largest frame on the wire (header, length field, both digests).
const FRAME: usize = 8 + MAX + 8;
/// What may stay allocated after a phase: one decoder buffer kept for reuse
/// (its reservation stays under `4 * FRAME`) and a little bookkeeping.
const LEFT_BOUND: usize = 4 * FRAME + 16 * 1024;

/// A phase's peak growth above its starting level, and what it left behind.
struct Measured {
    name: &'static str,
    fed: usize,
    peak: usize,
    bound: usize,
    left: isize,
}

fn measure(name: &'static str, bound: usize, f: impl FnOnce() -> usize) -> Measured {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let fed = f();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let left = LIVE.load(Ordering::Relaxed) as isize - base as isize;
    Measured {
        name,
        fed,
        peak,
        bound,
        left,
    }
}

/// Deterministic junk without allocating.
struct Junk(SeededRandom);

impl Junk {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.0.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    /// A piece length in `1..=max`, often small, sometimes maximal.
    fn piece(&mut self, max: usize) -> usize {
        let r = self.0.next_u64();
        match r % 4 {
            0 => 1 + (r >> 8) as usize % 16,
            1 => max,
            _ => 1 + (r >> 8) as usize % max,
        }
    }
}

/// A maximal frame encoded once, whose fixed fields are rewritten in place
/// (with the header digest recomputed) so the stream allocates nothing.
struct Template {
    bytes: Vec<u8>,
    fixed: usize,
}

impl Template {
    fn new(frame: &Frame, digests: Digests, fixed: usize) -> Self {
        assert!(digests.header);
        Template {
            bytes: encode_to_vec(frame, digests),
            fixed,
        }
    }

    fn set(&mut self, fields: &[u64]) {
        for (i, v) in fields.iter().enumerate() {
            self.bytes[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_be_bytes());
        }
        let end = 8 + self.fixed;
        let crc = crc32c::crc32c(&self.bytes[..end]);
        self.bytes[end..end + HEADER_DIGEST].copy_from_slice(&crc.to_be_bytes());
    }
}

fn tick(now: &mut Timestamp, by: Duration) {
    *now = *now + by;
}

/// Runs the target's Ready loop, dropping everything (as a driver does after
/// sending it), and returns the commands delivered.
fn drain(target: &mut Target, now: Timestamp, commands: &mut Vec<(SessionId, u64)>) {
    if target.poll_timeout().is_some_and(|t| t <= now) {
        target.handle_timeout(now);
    }
    while target.has_ready() {
        let ready = target.ready();
        for d in &ready.deliveries {
            if let Delivery::Command { session, seq, .. } = d {
                commands.push((*session, *seq));
            }
        }
        drop(ready);
        target.advance(now);
    }
}

fn check_buffered(target: &Target, conn: ConnId) {
    if let Some((buffered, capacity)) = target.buffered(conn) {
        assert!(buffered <= FRAME, "buffered {buffered}");
        assert!(capacity < 4 * FRAME, "capacity {capacity}");
    }
}

fn login(kind: LoginKind, session: SessionId, secret: SessionSecret, response_ack: u64) -> Vec<u8> {
    encode_to_vec(
        &Frame::Login(Login {
            min_version: VERSION_MIN,
            max_version: VERSION_MAX,
            kind,
            digests: BOTH,
            session,
            secret,
            response_ack,
            max_frame: MAX_FRAME,
            keepalive_ms: 60_000,
            requested_credits: 128,
            host: None,
        }),
        Digests::NONE,
    )
}

/// Logs in on `conn` and returns the LOGIN_ACCEPT.
fn log_in(target: &mut Target, conn: ConnId, login_bytes: &[u8], now: Timestamp) -> LoginAccept {
    target.accept(conn, now).expect("accept");
    target.handle_input(conn, login_bytes, now);
    let mut dec = Decoder::new(Direction::ToInitiator, u32::MAX);
    let mut accept = None;
    while target.has_ready() {
        let ready = target.ready();
        // Only this connection's bytes: a recovery also sends ERROR Fenced,
        // with that connection's digests, on the connection it replaces.
        for t in ready.transmits.iter().filter(|t| t.conn == conn) {
            for c in &t.chunks {
                let mut input = &c[..];
                while let Ok(Some(f)) = dec.decode(&mut input) {
                    if let Frame::LoginAccept(a) = f {
                        dec.set_digests(a.digests);
                        accept.get_or_insert(a);
                    }
                }
            }
        }
        target.advance(now);
    }
    accept.expect("LOGIN_ACCEPT")
}

#[test]
fn peak_heap_growth_is_bounded_by_max_frame() {
    let mut results = Vec::new();
    let mut now = Timestamp::ZERO;
    let mut config = TargetConfig::default();
    config.max_frame = MAX_FRAME;
    config.// The logins promise a 60 s keep-alive (above the default cap).
        max_inactivity = Duration::from_secs(240);
    let mut target = Target::new(config, Box::new(SeededRandom::new(1)), now);
    let mut junk = Junk(SeededRandom::new(2));
    let mut buf = vec![0u8; 4 * MAX];
    let mut commands: Vec<(SessionId, u64)> = Vec::with_capacity(1024);

    // The session the hostile traffic targets.
    let accept = log_in(
        &mut target,
        ConnId(1),
        &login(LoginKind::New, SessionId(0), SessionSecret([0; 16]), 0),
        now,
    );
    let (session, secret) = (accept.session, accept.secret);
    let recover = login(LoginKind::Recover, session, secret, 0);
    let mut next_conn = 2u64;
    let mut huge = [0x02, 0x03, 0, 0, 0xFF, 0xFF, 0xFF, 0xF0]; // CMD announcing ~4 GiB
    let msg_payload = Bytes::from(vec![0x5A; MAX - 16]);
    let mut msg = Template::new(
        &Frame::Message {
            seq: 1,
            ack: 0,
            payload: msg_payload.clone(),
        },
        BOTH,
        16,
    );
    let mut cmd = Template::new(
        &Frame::Command {
            seq: 1,
            ack: 0,
            payload: msg_payload,
        },
        BOTH,
        16,
    );
    let response_payload = Bytes::from(vec![0xA5; MAX - 32]);
    let mut ack_frame = Template::new(&Frame::InitiatorAck { ack: 0 }, BOTH, 8);
    drain(&mut target, now, &mut commands);

    // 1. Garbage and 4 GiB headers on fresh connections, before login.
    results.push(measure("target: garbage before login", BOUND, || {
        let mut fed = 0;
        for i in 0..200 {
            let conn = ConnId(next_conn);
            next_conn += 1;
            tick(&mut now, Duration::from_millis(50));
            target.accept(conn, now).expect("accept");
            if i % 2 == 0 {
                huge[1] = 0; // no digests before login
                target.handle_input(conn, &huge, now);
                fed += huge.len();
            } else {
                // A LOGIN header announcing the longest extension, then junk.
                let mut header = [0x01, 0, 0, 0, 0, 0, 0x04, 0x3C];
                header[4..8].copy_from_slice(&(60u32 + 1024).to_be_bytes());
                target.handle_input(conn, &header, now);
                junk.fill(&mut buf);
                for piece in buf.chunks(junk.piece(MAX)) {
                    target.handle_input(conn, piece, now);
                    check_buffered(&target, conn);
                    fed += piece.len();
                }
            }
            check_buffered(&target, conn);
            drain(&mut target, now, &mut commands);
            target.connection_closed(conn, now);
        }
        fed
    }));

    // 2. A stream of maximal valid frames on an established connection,
    //    cut at arbitrary points: messages, and commands whose (maximal)
    //    responses are acknowledged as they arrive.
    let conn = ConnId(next_conn);
    next_conn += 1;
    tick(&mut now, Duration::from_millis(1));
    let acc = log_in(&mut target, conn, &recover, now);
    let mut seq = acc.command_ack;
    let mut responses = 0u64;
    results.push(measure("target: maximal frames", BOUND, || {
        let mut fed = 0;
        for round in 0..1200u64 {
            seq += 1;
            let command = round % 3 == 0;
            let t = if command { &mut cmd } else { &mut msg };
            t.set(&[seq, responses]);
            let mut rest = &t.bytes[..];
            while !rest.is_empty() {
                let n = junk.piece(MAX).min(rest.len());
                tick(&mut now, Duration::from_micros(10));
                target.handle_input(conn, &rest[..n], now);
                check_buffered(&target, conn);
                fed += n;
                rest = &rest[n..];
                drain(&mut target, now, &mut commands);
            }
            for (s, c) in commands.drain(..) {
                target
                    .complete(s, c, response_payload.clone(), now)
                    .expect("complete");
                responses += 1;
            }
            drain(&mut target, now, &mut commands);
            if command {
                ack_frame.set(&[responses]);
                target.handle_input(conn, &ack_frame.bytes, now);
                fed += ack_frame.bytes.len();
                drain(&mut target, now, &mut commands);
            }
        }
        let info = target.session_info(session).expect("session");
        assert_eq!(info.received, seq, "every frame was accepted");
        assert_eq!(info.cached, 0);
        fed
    }));

    // 3. Established connections fed junk, 4 GiB headers and byte-by-byte
    //    drips of an almost complete maximal frame, each then replaced by
    //    a recovering one.
    results.push(measure("target: garbage after login", BOUND, || {
        let mut fed = 0;
        let mut conn = conn;
        for i in 0..120 {
            match i % 3 {
                0 => {
                    huge[1] = 0x03;
                    target.handle_input(conn, &huge, now);
                    fed += huge.len();
                }
                1 => {
                    junk.fill(&mut buf);
                    for piece in buf.chunks(junk.piece(MAX)) {
                        target.handle_input(conn, piece, now);
                        check_buffered(&target, conn);
                        fed += piece.len();
                    }
                }
                _ => {
                    msg.set(&[seq + 1, responses]);
                    let almost = &msg.bytes[..msg.bytes.len() - 1];
                    for b in almost.chunks(if i % 2 == 0 { 1 } else { 97 }) {
                        target.handle_input(conn, b, now);
                        fed += b.len();
                    }
                    check_buffered(&target, conn);
                    // The last byte, corrupted: a data digest error.
                    let last = [!msg.bytes[msg.bytes.len() - 1]];
                    target.handle_input(conn, &last, now);
                    fed += 1;
                }
            }
            drain(&mut target, now, &mut commands);
            target.connection_closed(conn, now);
            conn = ConnId(next_conn);
            next_conn += 1;
            tick(&mut now, Duration::from_millis(1));
            let recover = login(LoginKind::Recover, session, secret, responses);
            log_in(&mut target, conn, &recover, now);
            drain(&mut target, now, &mut commands);
        }
        fed
    }));

    // 4. A service that keeps command payloads while the commands run, tiny
    //    commands interleaved with maximal messages. The decoder copies
    //    payloads under 4 KiB out of its read buffer, so a held tiny payload
    //    costs its own bytes, not the block it arrived in (when it was a
    //    zero-copy slice, each pinned up to a block: about 1.5 * max_frame,
    //    12 MiB in all here). The phase is bounded like the others.
    let conn = ConnId(next_conn);
    tick(&mut now, Duration::from_millis(1));
    let acc = log_in(
        &mut target,
        conn,
        &login(LoginKind::Recover, session, secret, responses),
        now,
    );
    let credits = acc.credits as usize;
    let mut tiny = Template::new(
        &Frame::Command {
            seq: 1,
            ack: 0,
            payload: Bytes::from_static(b"x"),
        },
        BOTH,
        16,
    );
    // The commands the service is running, with their payloads.
    let mut running: Vec<(u64, Bytes)> = Vec::with_capacity(credits);
    let small_response = Bytes::from_static(b"done");
    results.push(measure(
        "target: service holds tiny commands",
        BOUND,
        || {
            let mut fed = 0;
            for round in 0..8 * credits {
                seq += 1;
                let t = if round % 2 == 0 { &mut msg } else { &mut tiny };
                t.set(&[seq, responses]);
                for piece in t.bytes.chunks(1500) {
                    tick(&mut now, Duration::from_micros(10));
                    target.handle_input(conn, piece, now);
                    fed += piece.len();
                }
                while target.has_ready() {
                    let ready = target.ready();
                    for d in ready.deliveries {
                        if let Delivery::Command { seq, payload, .. } = d {
                            running.push((seq, payload));
                        }
                    }
                    target.advance(now);
                }
                if running.len() + 1 >= credits {
                    // The service finishes the oldest half of its commands.
                    for (c, _) in running.drain(..credits / 2) {
                        target
                            .complete(session, c, small_response.clone(), now)
                            .expect("complete");
                        responses += 1;
                    }
                    drain(&mut target, now, &mut commands);
                    ack_frame.set(&[responses]);
                    target.handle_input(conn, &ack_frame.bytes, now);
                    drain(&mut target, now, &mut commands);
                }
            }
            let info = target.session_info(session).expect("session");
            assert_eq!(info.received, seq, "every frame was accepted");
            running.clear();
            fed
        },
    ));

    // 5. The initiator: maximal responses, then junk and 4 GiB headers, each
    //    followed by a reconnect.
    let mut config = InitiatorConfig::default();
    config.max_frame = MAX_FRAME;
    config.digests = BOTH;
    let mut ini = Initiator::new(config, now);
    let mut ini_conn = ConnId(1);
    ini.connect(ini_conn, now).expect("connect");
    while ini.poll_transmit(now).is_some() {}
    let ini_session = SessionId(0x0102_0304_0000_0001);
    let ini_secret = SessionSecret([7; 16]);
    let mut accept = LoginAccept {
        version: 1,
        digests: BOTH,
        kind: LoginKind::New,
        session: ini_session,
        secret: ini_secret,
        command_ack: 0,
        credit_limit: 128,
        max_frame: MAX_FRAME,
        inactivity_ms: 60_000,
        retain_ms: 60_000,
        credits: 128,
        quiesce_ms: 0,
    };
    ini.handle_input(
        ini_conn,
        &encode_to_vec(&Frame::LoginAccept(accept.clone()), BOTH),
        now,
    );
    while ini.poll_event().is_some() {}
    assert!(ini.is_connected());
    let mut resp = Template::new(
        &Frame::Response {
            seq: 1,
            command: 1,
            ack: 1,
            limit: 1,
            payload: Bytes::from(vec![0xC3; MAX - 32]),
        },
        BOTH,
        32,
    );
    let mut answered = 0u64;
    results.push(measure("initiator: maximal responses", BOUND, || {
        let mut fed = 0;
        for _ in 0..1000 {
            ini.call(Bytes::from_static(b"q"), CallOptions::default(), now)
                .expect("call");
            while ini.poll_transmit(now).is_some() {}
            answered += 1;
            resp.set(&[answered, answered, answered, answered + 128]);
            let mut rest = &resp.bytes[..];
            while !rest.is_empty() {
                let n = junk.piece(MAX).min(rest.len());
                tick(&mut now, Duration::from_micros(10));
                ini.handle_input(ini_conn, &rest[..n], now);
                let (buffered, capacity) = ini.buffered();
                assert!(buffered <= FRAME && capacity < 4 * FRAME);
                fed += n;
                rest = &rest[n..];
                while ini.poll_transmit(now).is_some() {}
                while ini.poll_event().is_some() {}
            }
        }
        assert!(ini.is_connected());
        assert_eq!(ini.outstanding(), 0);
        fed
    }));

    results.push(measure("initiator: garbage", BOUND, || {
        let mut fed = 0;
        for i in 0..200 {
            if i % 2 == 0 {
                huge[0] = 0x13; // RESPONSE announcing ~4 GiB
                huge[1] = 0x03;
                ini.handle_input(ini_conn, &huge, now);
                fed += huge.len();
            } else {
                junk.fill(&mut buf);
                for piece in buf.chunks(junk.piece(MAX)) {
                    ini.handle_input(ini_conn, piece, now);
                    let (buffered, capacity) = ini.buffered();
                    assert!(buffered <= FRAME && capacity < 4 * FRAME);
                    fed += piece.len();
                }
            }
            while ini.poll_transmit(now).is_some() {}
            let mut reconnect_at = now;
            while let Some(e) = ini.poll_event() {
                if let InitiatorEvent::ConnectionLost {
                    reconnect_at: at, ..
                } = e
                {
                    reconnect_at = at;
                }
            }
            ini.connection_lost(ini_conn, now);
            while ini.poll_event().is_some() {}
            now = now.max(reconnect_at);
            ini_conn = ConnId(ini_conn.0 + 1);
            ini.connect(ini_conn, now).expect("reconnect");
            while ini.poll_transmit(now).is_some() {}
            accept.kind = LoginKind::Recover;
            accept.secret = SessionSecret([0; 16]);
            accept.command_ack = answered;
            let bytes = encode_to_vec(&Frame::LoginAccept(accept.clone()), BOTH);
            ini.handle_input(ini_conn, &bytes, now);
            while ini.poll_event().is_some() {}
            assert!(ini.is_connected());
        }
        fed
    }));

    let mut failed = Vec::new();
    for m in &results {
        eprintln!(
            "{:40} fed {:>6} KiB, peak growth {:>5} KiB (bound {:>5} KiB), left {} B",
            m.name,
            m.fed / 1024,
            m.peak / 1024,
            m.bound / 1024,
            m.left
        );
        if m.peak > m.bound {
            failed.push(format!("{}: peak growth {} > {}", m.name, m.peak, m.bound));
        }
        // Nothing proportional to the input stays behind.
        if m.left > LEFT_BOUND as isize {
            failed.push(format!("{}: {} bytes left behind", m.name, m.left));
        }
    }
    let fed: usize = results.iter().map(|m| m.fed).sum();
    assert!(fed > 64 << 20, "only {fed} bytes fed");
    assert!(failed.is_empty(), "{failed:#?}");
}
