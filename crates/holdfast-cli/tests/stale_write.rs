//! Issue 14 item 14, end to end with the real binary: a write whose NBD
//! client was told it failed (EIO after `holdfast nbd --io-timeout`) must
//! never land later, over newer data another client wrote, acknowledged and
//! flushed meanwhile.
//!
//! One `holdfast target`, two `holdfast nbd` exports of it: the first goes
//! through `holdfast chaos` (driven over its control line protocol), the
//! second goes direct. A raw NBD client on each export sees every request's
//! own outcome. Each test is bounded: short io-timeouts, and every wait has
//! a limit.

mod support;

use std::time::{Duration, Instant};

use support::{start_nbd, start_target, Chaos, NbdClient, Scratch, CMD_WRITE, NBD_EIO};

/// The block every test writes (4 KiB at 1 MiB).
const OFFSET: u64 = 1 << 20;
const LEN: usize = 4096;

fn block(byte: u8) -> Vec<u8> {
    vec![byte; LEN]
}

/// Names the value a block holds, for messages.
fn which(data: &[u8]) -> String {
    match data.first() {
        Some(b'A') if data.iter().all(|&b| b == b'A') => "A".to_owned(),
        Some(b'B') if data.iter().all(|&b| b == b'B') => "B".to_owned(),
        Some(b'C') if data.iter().all(|&b| b == b'C') => "C".to_owned(),
        Some(0) if data.iter().all(|&b| b == 0) => "zeroes".to_owned(),
        _ => format!("a mix starting {:?}", &data[..16.min(data.len())]),
    }
}

/// How the first export's path is broken while B is written, and how it
/// comes back.
#[derive(Clone, Copy, Debug)]
enum PathFault {
    /// `blackhole` on the link, then `heal`: B's bytes were sent and sit in
    /// the proxy; on heal they reach the target on the same connection.
    BlackholeThenHeal,
    /// `blackhole`, then the proxy process is killed (the link and B's bytes
    /// in it are gone, reconnects are refused), then a new proxy on the same
    /// port: the session recovers and re-sends what it still holds.
    ProxyDownThenBack,
    /// As `ProxyDownThenBack`, but the proxy comes back only after the
    /// target ended the session (a short `--retain`): the initiator recovers
    /// statelessly, on a new session, and re-issues what it still holds.
    SessionEndedThenBack,
}

/// The reproduction: A through export 1; break its path; B through export
/// 1 (its caller gets an answer, EIO expected); C through export 2, then
/// FLUSH; restore the path and wait until export 1 works again; read the
/// block. If B's caller got an error, the block must hold C.
fn a_failed_write_never_lands_over_newer_data(fault: PathFault) {
    let started = Instant::now();
    let dir = Scratch::new(&format!("stale-write-{fault:?}"));
    // A short retain bounds how long a fixed initiator must wait before it
    // knows the old session is fenced (so B's error may be held back that
    // long, not 60 s).
    let retain = match fault {
        PathFault::SessionEndedThenBack => "1s",
        _ => "5s",
    };
    let (mut target, target_addr) =
        start_target(&dir.path("volume.img"), "8M", &["--retain", retain]);
    let mut chaos = Chaos::start(&target_addr);
    // Export 1, through the proxy. Detection is long enough that the
    // initiator does not give up on the blackholed connection during the
    // few hundred milliseconds the test needs after B's io-timeout; the
    // session outlives the whole test.
    let detection = match fault {
        PathFault::BlackholeThenHeal => "6s",
        PathFault::ProxyDownThenBack | PathFault::SessionEndedThenBack => "500ms",
    };
    let (_nbd1, info1) = start_nbd(
        &chaos.listen.clone(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--io-timeout",
            "1s",
            "--detection",
            detection,
            "--session-loss",
            "60s",
        ],
    );
    let (_nbd2, info2) = start_nbd(
        &target_addr,
        &["--listen", "127.0.0.1:0", "--io-timeout", "10s"],
    );
    let mut e1 = NbdClient::connect(&support::nbd_addr(&info1));
    let mut e2 = NbdClient::connect(&support::nbd_addr(&info2));

    // A, acknowledged and flushed through export 1.
    assert_eq!(e1.write(OFFSET, &block(b'A')), 0, "write A");
    assert_eq!(e1.flush(), 0, "flush A");
    assert_eq!(which(&e2.read(OFFSET, LEN as u32).expect("read A")), "A");

    // Break export 1's path, then write B through it.
    let hit = chaos.command("blackhole both all")["hit"].as_u64();
    assert_eq!(hit, Some(1), "the blackhole must hit export 1's link");
    let b_sent = Instant::now();
    let b_handle = e1.send_request(CMD_WRITE, OFFSET, LEN as u32, &block(b'B'));
    if let PathFault::ProxyDownThenBack | PathFault::SessionEndedThenBack = fault {
        // Give B time to leave holdfast nbd (into the proxy's socket), then
        // take the path away entirely.
        std::thread::sleep(Duration::from_millis(100));
        chaos.proc.signal("KILL");
        let _ = chaos.proc.wait_exit(Duration::from_secs(5));
    }
    // B's caller may get its answer now: EIO after the 1 s io-timeout on
    // the original code. An export that may not fail B before it knows B
    // will never run (B was sent, so it is in doubt) holds the answer back
    // until the path returns or the old execution is fenced: then B stays
    // pending while C is written, and is collected after the path is back.
    e1.set_reply_limit(Duration::from_secs(3));
    let mut b_error = answer_of_b(&mut e1, b_handle, b_sent);

    // C through export 2, acknowledged and flushed: this is the newest
    // acknowledged data of the block.
    assert_eq!(e2.write(OFFSET, &block(b'C')), 0, "write C");
    assert_eq!(e2.flush(), 0, "flush C");

    // Restore export 1's path.
    match fault {
        PathFault::BlackholeThenHeal => {
            chaos.command("heal both all");
        }
        PathFault::ProxyDownThenBack => {
            let listen = chaos.listen.clone();
            chaos = Chaos::start_on(&listen, &target_addr);
        }
        PathFault::SessionEndedThenBack => {
            // Export 1's session ends on the target (export 2's stays
            // busy and alive), then the path comes back.
            target.wait_stderr("session ended", Duration::from_secs(30));
            let listen = chaos.listen.clone();
            chaos = Chaos::start_on(&listen, &target_addr);
        }
    }
    if b_error.is_none() {
        eprintln!("B is still pending after {:?}", b_sent.elapsed());
        e1.set_reply_limit(Duration::from_secs(30));
        b_error = answer_of_b(&mut e1, b_handle, b_sent);
    }
    let Some(b_error) = b_error else {
        panic!("B got no answer within 30 s of its path coming back (io-timeout 1 s)");
    };
    // Export 1 works again: a FLUSH through it is ordered after anything
    // its session still held (B included), so once it succeeds, B has
    // either run or never will.
    e1.set_reply_limit(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = e1.flush();
        if r == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "export 1 did not recover within 30 s (flush: {r})"
        );
    }
    let through_1 = which(&e1.read(OFFSET, LEN as u32).expect("read through 1"));
    let through_2 = which(&e2.read(OFFSET, LEN as u32).expect("read through 2"));
    let on_disk = {
        let file = std::fs::read(dir.path("volume.img")).expect("volume");
        which(&file[OFFSET as usize..OFFSET as usize + LEN])
    };
    eprintln!(
        "{fault:?}: B answered {b_error}; block through export 1: {through_1}, \
         through export 2: {through_2}, in the file: {on_disk}; {:?}",
        started.elapsed()
    );
    let allowed: &[&str] = if b_error == 0 { &["B", "C"] } else { &["C"] };
    for (name, seen) in [
        ("export 1", &through_1),
        ("export 2", &through_2),
        ("the file", &on_disk),
    ] {
        assert!(
            allowed.contains(&seen.as_str()),
            "stale write: B's caller got {} (errno {b_error}), C was written, acknowledged \
             and flushed after it, yet {name} holds {seen} (allowed: {allowed:?})",
            if b_error == 0 { "success" } else { "an error" },
        );
    }
    drop(chaos);
}

/// Waits (up to the client's reply limit) for B's answer: its errno.
fn answer_of_b(e1: &mut NbdClient, b_handle: u64, b_sent: Instant) -> Option<u32> {
    let (err, handle) = e1.try_reply()?;
    assert_eq!(handle, b_handle, "the only request outstanding is B");
    eprintln!("B answered {err} after {:?}", b_sent.elapsed());
    assert!(
        err == 0 || err == NBD_EIO,
        "B failed with {err}, expected EIO"
    );
    Some(err)
}

#[test]
fn a_write_that_failed_with_eio_does_not_land_after_a_heal() {
    a_failed_write_never_lands_over_newer_data(PathFault::BlackholeThenHeal);
}

#[test]
fn a_write_that_failed_with_eio_is_not_reissued_after_a_reconnect() {
    a_failed_write_never_lands_over_newer_data(PathFault::ProxyDownThenBack);
}

#[test]
fn a_write_that_failed_with_eio_is_not_reissued_on_a_new_session() {
    a_failed_write_never_lands_over_newer_data(PathFault::SessionEndedThenBack);
}
