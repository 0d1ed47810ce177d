//! Issue 17 rough edges, with the real binary: `holdfast nbd` binds its NBD
//! port before it opens the target session, so a port it cannot bind fails
//! the export before the target ever sees a connection (no orphan
//! session), and a client that connects while the session is being
//! established waits for its greeting instead of being refused.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{free_addr, NbdClient, Proc, Scratch};

#[test]
fn a_port_that_cannot_be_bound_fails_before_the_target_is_contacted() {
    // The "target": a listener that records whether anyone connects.
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    target.set_nonblocking(true).expect("nonblocking");
    let target_addr = target.local_addr().expect("addr").to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();

    let mut nbd = Proc::spawn(&["nbd", "--target", &target_addr, "--listen", &taken_addr]);
    let status = nbd.wait_exit(Duration::from_secs(10));
    let stderr = nbd.stderr_so_far().to_owned();
    let status = status.unwrap_or_else(|| {
        panic!("holdfast nbd kept running although its port is taken; stderr:\n{stderr}")
    });
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("could not listen on {taken_addr}")),
        "{stderr}"
    );
    match target.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("the target was contacted (from {peer}) before the bind failed"),
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn a_client_connecting_while_the_session_is_established_waits_for_it() {
    let scratch = Scratch::new("nbd-early-client");
    let target_addr = free_addr();
    let listen = free_addr();
    // No target yet: the export keeps trying to reach it.
    let mut nbd = Proc::spawn(&[
        "nbd",
        "--target",
        &target_addr,
        "--listen",
        &listen,
        "--json",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(&listen) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => panic!(
                "the NBD port {listen} is not open while the session is being established \
                 ({e}); stderr:\n{}",
                nbd.stderr_so_far()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    assert!(
        nbd.line(Duration::from_millis(300)).is_none(),
        "nothing is exported before the volume is open"
    );
    // The early client waits in the handshake (it gets no greeting yet).
    let early = {
        let listen = listen.clone();
        std::thread::spawn(move || {
            let mut c = NbdClient::connect(&listen);
            let wrote = c.write(0, &[7u8; 4096]);
            (c.size, wrote, c.read(0, 4096))
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let volume = scratch.path("vol");
    let _target = Proc::spawn(&[
        "target",
        "--volume",
        volume.to_str().expect("utf-8"),
        "--size",
        "1M",
        "--listen",
        &target_addr,
    ]);
    let exporting = nbd.json_line(Duration::from_secs(10));
    assert_eq!(exporting["event"], "exporting", "{exporting}");
    let (size, wrote, read) = early.join().expect("the early client");
    assert_eq!(size, 1 << 20);
    assert_eq!(wrote, 0, "the write succeeds");
    assert_eq!(read.expect("read"), vec![7u8; 4096]);
}

#[test]
fn a_target_that_is_an_nbd_server_is_named_as_such_at_startup() {
    // A fake NBD server: the fixed newstyle greeting to every client.
    let nbd_server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = nbd_server.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in nbd_server.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut greeting = b"NBDMAGIC".to_vec();
            greeting.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
            greeting.extend_from_slice(&3u16.to_be_bytes());
            let _ = std::io::Write::write_all(&mut stream, &greeting);
            std::thread::spawn(move || {
                let _ = std::io::Read::read_to_end(&mut stream, &mut Vec::new());
            });
        }
    });
    let mut nbd = Proc::spawn(&["nbd", "--target", &addr, "--listen", "127.0.0.1:0"]);
    let status = nbd.wait_exit(Duration::from_secs(10));
    let stderr = nbd.stderr_so_far().to_owned();
    let status = status.unwrap_or_else(|| {
        panic!("holdfast nbd kept retrying an NBD server as its target; stderr:\n{stderr}")
    });
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{addr} is not a holdfast target: its first bytes are not a holdfast frame \
             (\"NBDMAGIC\": an NBD server?)"
        )),
        "{stderr}"
    );
}

#[test]
fn an_absent_target_is_retried_and_the_log_says_nobody_answers() {
    let target = free_addr();
    let mut nbd = Proc::spawn(&["nbd", "--target", &target, "--listen", "127.0.0.1:0"]);
    nbd.wait_stderr(
        &format!("no holdfast target answers at {target} (connection refused); retrying"),
        Duration::from_secs(10),
    );
    assert!(
        nbd.wait_exit(Duration::from_millis(500)).is_none(),
        "an absent target is retried, not given up at once"
    );
}
