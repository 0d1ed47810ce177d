//! Issue 14 item 16, with the real binary: how `holdfast nbd` stops. Ctrl-C
//! and SIGTERM alike (bounded clean close, final stats line, Unix socket
//! file removed); a second signal exits at once; a stale socket file left
//! by a crash does not block a restart (a live one is not stolen); after
//! `--session-loss` the export exits non-zero and says what state the data
//! is in, instead of failing every request with EIO forever.

mod support;

use std::time::{Duration, Instant};

use support::{nbd_addr, start_nbd, start_target, NbdClient, Proc, Scratch, CMD_WRITE};

/// The first signal's grace (`nbd_life::CLOSE_GRACE`) plus a margin.
const GRACE_AND_MARGIN: Duration = Duration::from_secs(9);

/// Waits for the `"event":"stopped"` line on stdout.
fn stopped_line(nbd: &mut Proc) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(line) = nbd.line(deadline.saturating_duration_since(Instant::now())) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["event"] == "stopped" {
                return v;
            }
        }
    }
    panic!(
        "holdfast nbd printed no final stats line; stderr:\n{}",
        nbd.stderr_so_far()
    );
}

#[test]
fn sigint_and_sigterm_stop_cleanly_print_stats_and_remove_the_socket() {
    for signal in ["INT", "TERM"] {
        let dir = Scratch::new(&format!("nbd-stop-{signal}"));
        let (_target, addr) = start_target(&dir.path("volume.img"), "4M", &[]);
        let socket = dir.path("nbd.sock");
        let listen = format!("unix:{}", socket.display());
        let (mut nbd, _info) = start_nbd(&addr, &["--listen", &listen]);
        assert!(socket.exists(), "the socket file is there while serving");
        nbd.signal(signal);
        let status = nbd
            .wait_exit(GRACE_AND_MARGIN)
            .unwrap_or_else(|| panic!("SIG{signal}: holdfast nbd did not exit"));
        assert!(
            status.success(),
            "SIG{signal} with the target up must close cleanly and exit 0: {status}; stderr:\n{}",
            nbd.stderr_so_far()
        );
        let stats = stopped_line(&mut nbd);
        assert_eq!(stats["reason"], format!("SIG{signal}"), "{stats}");
        assert_eq!(stats["clean"], true, "{stats}");
        assert!(stats["connects"].as_u64() >= Some(1), "{stats}");
        assert!(
            !socket.exists(),
            "SIG{signal}: the socket file {} is left behind",
            socket.display()
        );
    }
}

/// A target, an export with a long io-timeout, a write acknowledged, then
/// the target killed and a write left pending in the export.
fn export_with_a_pending_request(dir: &Scratch) -> (Proc, NbdClient) {
    let (mut target, addr) = start_target(&dir.path("volume.img"), "4M", &[]);
    let (mut nbd, info) = start_nbd(
        &addr,
        &[
            "--listen",
            "127.0.0.1:0",
            "--detection",
            "500ms",
            "--io-timeout",
            "60s",
            "--session-loss",
            "120s",
        ],
    );
    let mut client = NbdClient::connect(&nbd_addr(&info));
    assert_eq!(client.write(0, &[b'A'; 4096]), 0, "write A");
    target.signal("KILL");
    let _ = target.wait_exit(Duration::from_secs(5));
    nbd.wait_stderr("connection lost", Duration::from_secs(10));
    client.send_request(CMD_WRITE, 0, 4096, &[b'B'; 4096]);
    (nbd, client)
}

#[test]
fn ctrl_c_with_the_target_down_and_a_request_pending_exits_within_the_grace() {
    let dir = Scratch::new("nbd-stop-pending");
    let (mut nbd, _client) = export_with_a_pending_request(&dir);
    let signalled = Instant::now();
    nbd.signal("INT");
    nbd.wait_stderr("closing the session", Duration::from_secs(5));
    let status = nbd.wait_exit(GRACE_AND_MARGIN).unwrap_or_else(|| {
        panic!(
            "holdfast nbd did not exit within {GRACE_AND_MARGIN:?} of Ctrl-C with the target \
             down (io-timeout 60s); stderr:\n{}",
            nbd.stderr_so_far()
        )
    });
    eprintln!("exited {status} after {:?}", signalled.elapsed());
    assert!(
        !status.success(),
        "a close that could not finish must not exit 0: {status}"
    );
    let stats = stopped_line(&mut nbd);
    assert_eq!(stats["clean"], false, "{stats}");
    assert!(
        nbd.stderr_so_far().contains("did not close within"),
        "the log says the close gave up"
    );
}

#[test]
fn a_second_ctrl_c_exits_at_once_with_a_non_zero_status() {
    let dir = Scratch::new("nbd-stop-twice");
    let (mut nbd, _client) = export_with_a_pending_request(&dir);
    nbd.signal("INT");
    nbd.wait_stderr("closing the session", Duration::from_secs(5));
    let again = Instant::now();
    nbd.signal("INT");
    let status = nbd.wait_exit(Duration::from_secs(2)).unwrap_or_else(|| {
        panic!(
            "holdfast nbd ignored a second Ctrl-C (still running 2 s later); stderr:\n{}",
            nbd.stderr_so_far()
        )
    });
    eprintln!(
        "exited {status} {:?} after the second Ctrl-C",
        again.elapsed()
    );
    assert!(
        !status.success(),
        "a second Ctrl-C exits non-zero: {status}"
    );
    assert_eq!(status.code(), Some(130), "{status}");
}

#[test]
fn a_stale_unix_socket_file_does_not_block_a_restart_and_a_live_one_is_kept() {
    let dir = Scratch::new("nbd-stale-socket");
    let (_target, addr) = start_target(&dir.path("volume.img"), "4M", &[]);
    let socket = dir.path("nbd.sock");
    let listen = format!("unix:{}", socket.display());
    let (mut first, _) = start_nbd(&addr, &["--listen", &listen]);

    // A second export on the same, live socket must fail and leave it.
    let mut second = Proc::spawn(&["nbd", "--target", &addr, "--listen", &listen, "--json"]);
    let status = second
        .wait_exit(Duration::from_secs(10))
        .expect("a second export on a live socket exits");
    assert!(!status.success(), "{status}");
    assert!(
        second
            .stderr_so_far()
            .contains("another process is listening"),
        "the error says why: {}",
        second.stderr_so_far()
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "the first export still listens on {}",
        socket.display()
    );

    // A crash leaves the file behind; a restart must still start.
    first.signal("KILL");
    let _ = first.wait_exit(Duration::from_secs(5));
    assert!(socket.exists(), "SIGKILL leaves the socket file");
    let (mut third, info) = start_nbd(&addr, &["--listen", &listen]);
    assert_eq!(info["event"], "exporting", "{info}");
    third.wait_stderr("stale socket file", Duration::from_secs(5));
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());

    // A file that is not a socket is never removed.
    let plain = dir.path("plain");
    std::fs::write(&plain, b"keep me").expect("write");
    let mut refused = Proc::spawn(&[
        "nbd",
        "--target",
        &addr,
        "--listen",
        &format!("unix:{}", plain.display()),
    ]);
    let status = refused
        .wait_exit(Duration::from_secs(10))
        .expect("an export on a plain file exits");
    assert!(!status.success(), "{status}");
    assert_eq!(std::fs::read(&plain).expect("still there"), b"keep me");
}

#[test]
fn after_session_loss_the_export_exits_non_zero_and_says_what_state_the_data_is_in() {
    let dir = Scratch::new("nbd-session-loss");
    let (mut target, addr) = start_target(&dir.path("volume.img"), "4M", &[]);
    let (mut nbd, info) = start_nbd(
        &addr,
        &[
            "--listen",
            "127.0.0.1:0",
            "--detection",
            "500ms",
            "--session-loss",
            "2s",
        ],
    );
    let mut client = NbdClient::connect(&nbd_addr(&info));
    assert_eq!(client.write(0, &[b'A'; 4096]), 0, "write A");
    target.signal("KILL");
    let _ = target.wait_exit(Duration::from_secs(5));
    let lost = Instant::now();
    let status = nbd.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "holdfast nbd still running 15 s after the target died (session-loss 2s): a \
             zombie export; stderr:\n{}",
            nbd.stderr_so_far()
        )
    });
    eprintln!("exited {status} {:?} after the target died", lost.elapsed());
    assert_eq!(
        status.code(),
        Some(3),
        "exit status 3 means the session is lost"
    );
    let log = nbd.stderr_so_far().to_owned();
    for needle in ["is lost", "may or may not have been applied", "restart"] {
        assert!(log.contains(needle), "the log says {needle:?}:\n{log}");
    }
    let stats = stopped_line(&mut nbd);
    assert_eq!(stats["reason"], "session lost", "{stats}");
}
