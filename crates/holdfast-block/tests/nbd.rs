//! The NBD server against real clients (qemu-io, qemu-img, nbdinfo,
//! nbdcopy, fio) and against a raw-socket client sending hostile input.
//!
//! A missing client tool skips its test with a note, or fails it when the
//! `CI` environment variable is set. Every client run and every socket read
//! has a time limit, so no test can hang.

#![allow(clippy::unwrap_used, missing_docs)]

mod nbd_support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_block::nbd::consts::*;
use holdfast_block::nbd::{self, NbdOptions};
use holdfast_block::MemoryDevice;
use nbd_support::*;

const MIB: usize = 1024 * 1024;

fn named(name: &str) -> NbdOptions {
    NbdOptions {
        export_name: name.to_owned(),
        ..NbdOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_and_reads_over_tcp() {
    init_tracing();
    let Some(qemu_io) = tool("qemu-io", "qemu-utils") else {
        return;
    };
    let dev = Arc::new(MemoryDevice::new(4 * MIB));
    let (addr, _server) = start_tcp(dev.clone(), NbdOptions::default()).await;
    let out = run_ok(
        &qemu_io,
        &[
            "-f",
            "raw",
            &uri(addr, ""),
            "-c",
            "write -P 0xab 0 64k",
            "-c",
            "read -P 0xab 0 64k",
            "-c",
            "write -f -P 0xcd 4097 3000",
            "-c",
            "read -P 0xcd 4097 3000",
            "-c",
            "write -P 0x77 1M 64k",
            "-c",
            "write -z 1M 64k",
            "-c",
            "read -P 0 1M 64k",
            "-c",
            "write -P 0x55 2M 64k",
            "-c",
            "discard 2M 64k",
            "-c",
            "flush",
        ],
    )
    .await;
    assert!(
        !out.contains("failed"),
        "qemu-io reported a failure:\n{out}"
    );
    let snap = dev.snapshot();
    assert!(snap[..4097].iter().all(|&b| b == 0xab));
    assert!(snap[4097..7097].iter().all(|&b| b == 0xcd));
    assert!(snap[7097..64 * 1024].iter().all(|&b| b == 0xab));
    assert!(snap[MIB..MIB + 64 * 1024].iter().all(|&b| b == 0));
    // MemoryDevice zeroes trimmed ranges.
    assert!(snap[2 * MIB..2 * MIB + 64 * 1024].iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_over_unix_socket() {
    init_tracing();
    let Some(qemu_io) = tool("qemu-io", "qemu-utils") else {
        return;
    };
    let dir = TempDir::new("unix");
    let socket = dir.path("nbd.sock");
    let dev = Arc::new(MemoryDevice::new(MIB));
    let _server = start_unix(dev.clone(), NbdOptions::default(), &socket).await;
    let target = format!("nbd+unix:///?socket={}", socket.display());
    run_ok(
        &qemu_io,
        &[
            "-f",
            "raw",
            &target,
            "-c",
            "write -P 0xab 0 64k",
            "-c",
            "read -P 0xab 0 64k",
        ],
    )
    .await;
    assert!(dev.snapshot()[..64 * 1024].iter().all(|&b| b == 0xab));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_round_trip_and_info() {
    init_tracing();
    let Some(qemu_img) = tool("qemu-img", "qemu-utils") else {
        return;
    };
    let size = 8 * MIB;
    let dir = TempDir::new("qemu-img");
    let (input, output) = (dir.path("in.raw"), dir.path("out.raw"));
    let data = pseudo_random(size, 0x5eed);
    std::fs::write(&input, &data).unwrap();

    let dev = Arc::new(MemoryDevice::new(size));
    let (addr, _server) = start_tcp(dev.clone(), NbdOptions::default()).await;
    let export = uri(addr, "");
    let (input_s, output_s) = (input.to_str().unwrap(), output.to_str().unwrap());
    run_ok(
        &qemu_img,
        &["convert", "-n", "-f", "raw", "-O", "raw", input_s, &export],
    )
    .await;
    assert!(dev.snapshot() == data, "export differs from the image");
    run_ok(
        &qemu_img,
        &["convert", "-f", "raw", "-O", "raw", &export, output_s],
    )
    .await;
    let copied = std::fs::read(&output).unwrap();
    assert_eq!(crc32c::crc32c(&copied), crc32c::crc32c(&data));
    assert!(copied == data);

    let info = run_ok(&qemu_img, &["info", "-f", "raw", &export]).await;
    assert!(
        info.contains(&format!("({size} bytes)")),
        "unexpected qemu-img info:\n{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_reports_the_export_and_refuses_unknown_names() {
    init_tracing();
    let Some(nbdinfo) = tool("nbdinfo", "libnbd-bin") else {
        return;
    };
    let dev = Arc::new(MemoryDevice::new(4 * MIB));
    let (addr, _server) = start_tcp(dev, named("vol0")).await;

    for name in ["vol0", ""] {
        let info = run_ok(&nbdinfo, &[&uri(addr, name)]).await;
        for want in [
            "export-size: 4194304",
            "is_read_only: false",
            "can_flush: true",
            "can_fua: true",
            "can_trim: true",
            "can_zero: true",
            "can_multi_conn: true",
            "block_size_minimum: 1",
            "block_size_preferred: 4096",
            "block_size_maximum: 33554432",
        ] {
            assert!(info.contains(want), "missing {want:?} in:\n{info}");
        }
    }
    let list = run_ok(&nbdinfo, &["--list", &uri(addr, "")]).await;
    assert!(list.contains("vol0"), "export not listed:\n{list}");

    let unknown = run_tool(&nbdinfo, &[&uri(addr, "nope")]).await;
    assert!(!unknown.status.success(), "unknown export accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trip_over_multiple_connections() {
    init_tracing();
    let Some(nbdcopy) = tool("nbdcopy", "libnbd-bin") else {
        return;
    };
    let size = 16 * MIB;
    let dir = TempDir::new("nbdcopy");
    let (input, output) = (dir.path("in.raw"), dir.path("out.raw"));
    let data = pseudo_random(size, 0xc0ffee);
    std::fs::write(&input, &data).unwrap();
    std::fs::write(&output, []).unwrap();

    let dev = Arc::new(MemoryDevice::new(size));
    let (addr, _server) = start_tcp(dev.clone(), NbdOptions::default()).await;
    let export = uri(addr, "");
    let (input_s, output_s) = (input.to_str().unwrap(), output.to_str().unwrap());
    // CAN_MULTI_CONN lets nbdcopy spread its requests over 4 connections.
    run_ok(&nbdcopy, &["--connections=4", "--flush", input_s, &export]).await;
    assert!(dev.snapshot() == data, "export differs from the source");
    run_ok(&nbdcopy, &["--connections=4", &export, output_s]).await;
    let copied = std::fs::read(&output).unwrap();
    assert_eq!(crc32c::crc32c(&copied), crc32c::crc32c(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_random_writes_verify() {
    init_tracing();
    let Some(fio) = tool("fio", "fio") else {
        return;
    };
    let dev = Arc::new(MemoryDevice::new(16 * MIB));
    let (addr, _server) = start_tcp(dev, NbdOptions::default()).await;
    let uri_arg = format!("--uri={}", uri(addr, ""));
    let out = run_ok(
        &fio,
        &[
            "--name=nbd-verify",
            "--ioengine=nbd",
            &uri_arg,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=16m",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--runtime=10",
        ],
    )
    .await;
    assert!(out.contains("err= 0"), "fio reported errors:\n{out}");
    // The verify pass read back every block written.
    assert!(
        out.contains("issued rwts: total=4096,4096,"),
        "fio did not verify:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handshakes_drop_only_their_connection() {
    init_tracing();
    let dev = Arc::new(MemoryDevice::new(MIB));
    let (addr, _server) = start_tcp(dev, named("vol0")).await;

    // Unknown client flags.
    let mut c = RawClient::connect(addr).await;
    c.send(&0xffff_fff0u32.to_be_bytes()).await;
    c.expect_closed().await;

    // Bad option magic.
    let mut c = RawClient::handshake(addr).await;
    c.send(b"NOTMAGIC\0\0\0\x07\0\0\0\0").await;
    c.expect_closed().await;

    // Oversized option: refused with ERR_TOO_BIG, then dropped.
    let mut c = RawClient::handshake(addr).await;
    let mut header = Vec::from(IHAVEOPT.to_be_bytes());
    header.extend_from_slice(&OPT_GO.to_be_bytes());
    header.extend_from_slice(&(1u32 << 20).to_be_bytes());
    c.send(&header).await;
    assert_eq!(c.read_option_reply().await.kind, REP_ERR_TOO_BIG);
    c.expect_closed().await;

    // Unknown export through NBD_OPT_EXPORT_NAME: nothing to reply, dropped.
    let mut c = RawClient::handshake(addr).await;
    c.send_option(OPT_EXPORT_NAME, b"nope").await;
    c.expect_closed().await;

    // Client vanishing mid-option.
    let mut c = RawClient::handshake(addr).await;
    c.send(&IHAVEOPT.to_be_bytes()).await;
    drop(c);

    // Probes for unsupported options get ERR_UNSUP and the negotiation
    // goes on; malformed known options get ERR_INVALID.
    let mut c = RawClient::handshake(addr).await;
    for option in [OPT_EXTENDED_HEADERS, OPT_STARTTLS, 4, 0xdead_beef] {
        c.send_option(option, &[1, 2, 3]).await;
        let r = c.read_option_reply().await;
        assert_eq!((r.option, r.kind), (option, REP_ERR_UNSUP));
    }
    // Known options with bad data, or out of order (meta contexts before
    // structured replies), are invalid.
    for option in [
        OPT_STRUCTURED_REPLY,
        OPT_SET_META_CONTEXT,
        OPT_LIST_META_CONTEXT,
    ] {
        c.send_option(option, &[1, 2, 3]).await;
        let r = c.read_option_reply().await;
        assert_eq!((r.option, r.kind), (option, REP_ERR_INVALID));
    }
    c.send_option(OPT_LIST, b"x").await;
    assert_eq!(c.read_option_reply().await.kind, REP_ERR_INVALID);
    c.send_option(OPT_INFO, &[0, 0, 0, 9, b'a']).await;
    assert_eq!(c.read_option_reply().await.kind, REP_ERR_INVALID);
    c.send_option(OPT_LIST, &[]).await;
    let server = c.read_option_reply().await;
    assert_eq!(server.kind, REP_SERVER);
    assert_eq!(server.data, b"\0\0\0\x04vol0");
    assert_eq!(c.read_option_reply().await.kind, REP_ACK);
    assert_eq!(c.info_or_go(OPT_INFO, "nope").await, Err(REP_ERR_UNKNOWN));
    let (size, flags) = c.info_or_go(OPT_INFO, "vol0").await.unwrap();
    assert_eq!(size, MIB as u64);
    let expected = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_CAN_MULTI_CONN
        | FLAG_SEND_CACHE
        | FLAG_SEND_FAST_ZERO;
    assert_eq!(flags, expected);
    assert_eq!(c.go("vol0").await, Ok((MIB as u64, expected)));
    c.request(CMD_READ, 0, 1, 0, 16, &[]).await;
    assert_eq!(c.reply().await, (0, 1));
    assert_eq!(c.read_data(16).await, [0; 16]);

    // NBD_OPT_EXPORT_NAME, with and without the 124 zero bytes.
    for (client_flags, tail) in [(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES, 0), (0, 124)] {
        let mut c = RawClient::connect(addr).await;
        c.send(&client_flags.to_be_bytes()).await;
        c.send_option(OPT_EXPORT_NAME, b"").await;
        let reply = c.read_data(10 + tail).await;
        assert_eq!(reply[..8], (MIB as u64).to_be_bytes());
        assert_eq!(reply[8..10], expected.to_be_bytes());
        c.request(CMD_DISC, 0, 0, 0, 0, &[]).await;
        c.expect_closed().await;
    }

    // NBD_OPT_ABORT is acknowledged, then the server closes.
    let mut c = RawClient::handshake(addr).await;
    c.send_option(OPT_ABORT, &[]).await;
    assert_eq!(c.read_option_reply().await.kind, REP_ACK);
    c.expect_closed().await;

    // The server still serves.
    let (mut c, _, _) = RawClient::transmission(addr).await;
    c.request(CMD_FLUSH, 0, 5, 0, 0, &[]).await;
    assert_eq!(c.reply().await, (0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_errors_and_the_server_keeps_serving() {
    init_tracing();
    let dev = Arc::new(MemoryDevice::new(MIB));
    let (addr, _server) = start_tcp(dev.clone(), NbdOptions::default()).await;
    let size = MIB as u64;

    let (mut c, _, _) = RawClient::transmission(addr).await;
    let cases: &[(u16, u16, u64, u32, u32)] = &[
        (CMD_READ, 0, size - 4, 8, EINVAL),
        (CMD_READ, 0, u64::MAX, 1, EINVAL),
        (CMD_READ, 0, 0, MAX_PAYLOAD + 1, EINVAL),
        (CMD_READ, 1 << 7, 0, 8, EINVAL),
        (CMD_TRIM, 0, size, 1, EINVAL),
        (CMD_WRITE_ZEROES, 0, u64::MAX - 1, 4, ENOSPC),
        (CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, 0, 4, 0),
        (CMD_CACHE, 0, 0, 8, 0),
        (CMD_CACHE, 0, size, 8, EINVAL),
        (CMD_CACHE, CMD_FLAG_NO_HOLE, 0, 8, EINVAL),
        // No metadata context was negotiated.
        (CMD_BLOCK_STATUS, 0, 0, 8, EINVAL),
        (CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 4, 0),
        (CMD_TRIM, CMD_FLAG_FAST_ZERO, 0, 4, EINVAL),
        (99, 0, 0, 0, EINVAL),
        (CMD_READ, 0, size, 0, 0),
    ];
    for (i, &(kind, flags, offset, len, errno)) in cases.iter().enumerate() {
        c.request(kind, flags, i as u64, offset, len, &[]).await;
        assert_eq!(c.reply().await, (errno, i as u64), "case {i}");
    }
    // A write beyond the end still has its payload consumed.
    c.request(CMD_WRITE, 0, 50, size - 2, 4, b"abcd").await;
    assert_eq!(c.reply().await, (ENOSPC, 50));
    c.request(CMD_WRITE, CMD_FLAG_FUA, 51, 8, 4, b"abcd").await;
    assert_eq!(c.reply().await, (0, 51));
    c.request(CMD_READ, 0, 52, 8, 4, &[]).await;
    assert_eq!(c.reply().await, (0, 52));
    assert_eq!(c.read_data(4).await, b"abcd");

    // A write too large to accept: refused, then the connection drops.
    c.request(CMD_WRITE, 0, 53, 0, MAX_PAYLOAD + 1, &[]).await;
    assert_eq!(c.reply().await, (EINVAL, 53));
    c.expect_closed().await;

    // Bad request magic drops the connection.
    let (mut c, _, _) = RawClient::transmission(addr).await;
    c.send(&[0x55; REQUEST_LEN]).await;
    c.expect_closed().await;

    // Disconnect: replies to earlier requests still arrive, then EOF.
    let (mut c, _, _) = RawClient::transmission(addr).await;
    c.request(CMD_READ, 0, 60, 8, 4, &[]).await;
    c.request(CMD_DISC, 0, 61, 0, 0, &[]).await;
    assert_eq!(c.reply().await, (0, 60));
    assert_eq!(c.read_data(4).await, b"abcd");
    c.expect_closed().await;

    // A client vanishing with a half-sent write.
    let (mut c, _, _) = RawClient::transmission(addr).await;
    c.request(CMD_WRITE, 0, 70, 0, 4096, &[1; 100]).await;
    drop(c);

    // Still serving, and the device saw only the legitimate write.
    let (mut c, _, _) = RawClient::transmission(addr).await;
    c.request(CMD_READ, 0, 80, 0, 16, &[]).await;
    assert_eq!(c.reply().await, (0, 80));
    assert_eq!(c.read_data(16).await, b"\0\0\0\0\0\0\0\0abcd\0\0\0\0");
    assert_eq!(dev.snapshot()[8..12], *b"abcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_come_out_of_order_and_in_flight_requests_are_bounded() {
    init_tracing();
    let dev = Arc::new(GatedDevice::new(MIB));
    let (addr, _server) = start_tcp(dev.clone(), NbdOptions::default()).await;
    let (mut c, _, _) = RawClient::transmission(addr).await;

    // Handle 1 waits on the gate; handle 2, sent after it, answers first.
    c.request(CMD_READ, 0, 1, 0, 512, &[]).await;
    c.request(CMD_READ, 0, 2, 4096, 512, &[]).await;
    assert_eq!(c.reply().await, (0, 2));
    c.read_data(512).await;

    // Far more gated requests than the limit: the server stops reading.
    for handle in 100..200 {
        c.request(CMD_READ, 0, handle, 0, 512, &[]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev.in_flight.load(Ordering::SeqCst) < MAX_IN_FLIGHT {
        assert!(
            Instant::now() < deadline,
            "requests did not reach the device"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dev.peak.load(Ordering::SeqCst), MAX_IN_FLIGHT);

    dev.gate.add_permits(1000);
    let mut seen = HashSet::new();
    for _ in 0..101 {
        let (errno, handle) = c.reply().await;
        assert_eq!(errno, 0);
        c.read_data(512).await;
        assert!(seen.insert(handle), "handle {handle} answered twice");
    }
    assert!(seen.contains(&1) && (100..200).all(|h| seen.contains(&h)));
    assert_eq!(dev.peak.load(Ordering::SeqCst), MAX_IN_FLIGHT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_failures_and_timeouts_answer_errors() {
    init_tracing();
    let dev = Arc::new(OddDevice {
        inner: MemoryDevice::new(MIB),
        mode: Odd::Broken,
    });
    let options = NbdOptions {
        io_timeout: Some(Duration::from_millis(200)),
        ..NbdOptions::default()
    };
    let (addr, _server) = start_tcp(dev, options).await;
    let (mut c, _, _) = RawClient::transmission(addr).await;

    // A flush that never completes is cancelled at the timeout; the device
    // withdraws it, and that is answered EIO.
    let started = Instant::now();
    c.request(CMD_FLUSH, 0, 1, 0, 0, &[]).await;
    assert_eq!(c.reply().await, (EIO, 1));
    assert!(started.elapsed() < Duration::from_secs(5));
    // A device error is passed on as its errno.
    c.request(CMD_WRITE, 0, 2, 0, 4, b"data").await;
    assert_eq!(c.reply().await, (EIO, 2));
    c.request(CMD_TRIM, 0, 3, 0, 4, &[]).await;
    assert_eq!(c.reply().await, (EPERM, 3));
    // A short read from the device becomes EIO without a payload, so the
    // stream stays in step.
    c.request(CMD_READ, 0, 4, 0, 64, &[]).await;
    assert_eq!(c.reply().await, (EIO, 4));
    c.request(CMD_READ, 0, 5, 0, 0, &[]).await;
    assert_eq!(c.reply().await, (0, 5));
    c.request(CMD_FLUSH, 0, 6, 0, 0, &[]).await;
    assert_eq!(c.reply().await, (EIO, 6));
}

/// A request whose outcome is in doubt (it may still take effect) is never
/// answered with an error, which a late execution could contradict: the
/// server closes the connection instead. Requests answered before it keep
/// their replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_doubt_closes_the_connection_instead_of_failing() {
    init_tracing();
    let dev = Arc::new(OddDevice {
        inner: MemoryDevice::new(MIB),
        mode: Odd::InDoubt,
    });
    let (addr, _server) = start_tcp(dev, NbdOptions::default()).await;
    let (mut c, _, _) = RawClient::transmission(addr).await;
    c.request(CMD_READ, 0, 1, 0, 4, &[]).await;
    assert_eq!(c.reply().await, (0, 1));
    assert_eq!(c.read_data(4).await, [0; 4]);
    c.request(CMD_WRITE, 0, 2, 0, 4, b"data").await;
    let after = c.expect_closed().await;
    assert!(
        after.is_empty(),
        "no reply for the request in doubt: {after:02x?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_devices_are_announced_and_refuse_writes() {
    init_tracing();
    let dev = Arc::new(OddDevice {
        inner: MemoryDevice::new(MIB),
        mode: Odd::ReadOnly,
    });
    let (addr, _server) = start_tcp(dev, NbdOptions::default()).await;
    let (mut c, _, flags) = RawClient::transmission(addr).await;
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    assert_eq!(flags & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES), 0);
    c.request(CMD_WRITE, 0, 1, 0, 4, b"data").await;
    assert_eq!(c.reply().await, (EPERM, 1));
    c.request(CMD_WRITE_ZEROES, 0, 2, 0, 4, &[]).await;
    assert_eq!(c.reply().await, (EPERM, 2));
    c.request(CMD_READ, 0, 3, 0, 4, &[]).await;
    assert_eq!(c.reply().await, (0, 3));
    assert_eq!(c.read_data(4).await, [0; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_works_over_any_stream() {
    init_tracing();
    let dev = Arc::new(MemoryDevice::new(MIB));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(nbd::serve(server, dev, NbdOptions::default()));
    let mut c = RawClient::over(client).await;
    c.send(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes()).await;
    c.go("").await.unwrap();
    c.request(CMD_WRITE, 0, 1, 0, 3, b"abc").await;
    assert_eq!(c.reply().await, (0, 1));
    c.request(CMD_DISC, 0, 2, 0, 0, &[]).await;
    let result = tokio::time::timeout(IO_TIMEOUT, served).await.unwrap();
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
}
