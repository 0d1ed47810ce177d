//! fio with crc32c verification through `holdfast nbd` over a two-node path
//! group (issue 15): two `holdfast target` processes serve one volume file,
//! each with a peer link to the other, and the export holds a session with
//! each. fio must finish with zero verify errors
//!
//! * when node A is killed with SIGKILL in the middle of the write phase
//!   (the group cannot fence a dead node: it waits A's quiesce time, then
//!   re-issues A's writes on B);
//! * when the paths are cut alternately (the in-process proxy in front of
//!   each node is dropped for a while, resetting its links and refusing new
//!   ones, then comes back): every cut fails the active node over to the
//!   other, which fences it through its peer link.
//!
//! Without fencing, or with re-issued writes out of order, a stale write
//! would land over a newer one and fio's verify pass would report it. Each
//! test is bounded: 12 s of fio, every wait capped.

mod support;

/// Whether the nodes of the path-cut test have peer links (fence by
/// confirmation); without, every failover waits the old node's quiesce
/// time.
const PEERS: bool = true;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast::chaos::Proxy;
use support::fio::{fio_verify, have_fio};
use support::{Proc, Scratch};

/// A free TCP port on 127.0.0.1 (the nodes must know each other's address
/// before either starts).
fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Starts node `listen` on `volume`, with a peer link to `peer` if given.
fn start_node(volume: &std::path::Path, listen: SocketAddr, peer: Option<SocketAddr>) -> Proc {
    let listen = listen.to_string();
    let peer = peer.map(|p| p.to_string());
    let mut args = vec![
        "target",
        "--volume",
        volume.to_str().expect("utf-8"),
        "--size",
        "64M",
        "--listen",
        &listen,
        "--json",
    ];
    if let Some(p) = &peer {
        args.extend(["--peer", p.as_str()]);
    }
    let mut p = Proc::spawn(&args);
    let _ = p.json_line(Duration::from_secs(20));
    p
}

/// Starts `holdfast nbd` over the two targets; returns it and its URI.
fn start_export(a: SocketAddr, b: SocketAddr) -> (Proc, String) {
    let (a, b) = (a.to_string(), b.to_string());
    let mut p = Proc::spawn(&[
        "nbd",
        "--target",
        &a,
        "--target",
        &b,
        "--listen",
        "127.0.0.1:0",
        "--detection",
        "500ms",
        "--io-timeout",
        "60s",
        "--json",
    ]);
    let info = p.json_line(Duration::from_secs(20));
    let uri = info["uri"].as_str().expect("uri").to_owned();
    (p, uri)
}

/// Waits for the export's `path` event saying `path` reached `state`.
fn wait_path_event(export: &mut Proc, state: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = export.line(left) else {
            panic!("no path event {state:?} within {limit:?}");
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["event"] == "path" && v["state"] == state {
            return v;
        }
    }
}

#[test]
fn fence_kill_9_of_a_node_during_fio_verify_loses_nothing() {
    if !have_fio() {
        return;
    }
    let dir = Scratch::new("fence-fio-kill");
    let volume = dir.path("volume.img");
    let (a_addr, b_addr) = (free_addr(), free_addr());
    // No peer links: B cannot reach a dead A anyway; the group waits A's
    // quiesce time from its last contact.
    let a = start_node(&volume, a_addr, None);
    let _b = start_node(&volume, b_addr, None);
    let (mut export, uri) = start_export(a_addr, b_addr);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        a.signal("KILL");
        eprintln!("killed node A (kill -9)");
        a
    });
    fio_verify("holdfast-failover", &uri, 12);
    let _a = killer.join().expect("killer");
    let v = wait_path_event(&mut export, "down", Duration::from_secs(5));
    eprintln!("node A after the kill: {v}");
    assert!(v["failovers"].as_u64() >= Some(1), "{v}");
}

#[test]
fn fence_paths_cut_alternately_during_fio_verify_lose_nothing() {
    if !have_fio() {
        return;
    }
    let dir = Scratch::new("fence-fio-cuts");
    let volume = dir.path("volume.img");
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let _a = start_node(&volume, a_addr, PEERS.then_some(b_addr));
    let _b = start_node(&volume, b_addr, PEERS.then_some(a_addr));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let proxy = |listen: SocketAddr, upstream: SocketAddr| {
        runtime.block_on(async move {
            for _ in 0..200 {
                match Proxy::bind(listen, upstream).await {
                    Ok(p) => return p,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            panic!("could not bind the proxy on {listen}");
        })
    };
    let (pa_addr, pb_addr) = (free_addr(), free_addr());
    let mut proxies = [Some(proxy(pa_addr, a_addr)), Some(proxy(pb_addr, b_addr))];
    let (mut export, uri) = start_export(pa_addr, pb_addr);
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicU64::new(0));
    let fio = {
        let uri = uri.clone();
        std::thread::spawn(move || fio_verify("holdfast-failover", &uri, 12))
    };
    // Cut A, heal it, cut B, heal it, ... for the write phase.
    std::thread::sleep(Duration::from_secs(2));
    let listen = [pa_addr, pb_addr];
    let upstream = [a_addr, b_addr];
    let started = Instant::now();
    let mut which = 0;
    while started.elapsed() < Duration::from_secs(9) && !stop.load(Ordering::SeqCst) {
        drop(proxies[which].take());
        cuts.fetch_add(1, Ordering::SeqCst);
        eprintln!("cut the path to node {}", ["A", "B"][which]);
        std::thread::sleep(Duration::from_millis(1500));
        proxies[which] = Some(proxy(listen[which], upstream[which]));
        std::thread::sleep(Duration::from_millis(1000));
        which = 1 - which;
    }
    fio.join().expect("fio verified with zero errors");
    let n = cuts.load(Ordering::SeqCst);
    // The export's path events: each cut failed the active node over, and
    // the survivor's peer link got the old node's confirmation.
    let mut per_path = std::collections::BTreeMap::new();
    while let Some(line) = export.line(Duration::from_millis(500)) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["event"] == "path" {
            let path = v["path"].as_str().unwrap_or_default().to_owned();
            let figures = (
                v["failovers"].as_u64().unwrap_or(0),
                v["fences_confirmed"].as_u64().unwrap_or(0),
            );
            per_path.insert(path, figures);
        }
    }
    let failovers: u64 = per_path.values().map(|f| f.0).sum();
    let confirmed: u64 = per_path.values().map(|f| f.1).sum();
    eprintln!(
        "fio passed verification through {n} path cuts: {failovers} failovers, \
         {confirmed} fences confirmed"
    );
    assert!(n >= 3, "only {n} cuts");
    assert!(failovers >= 2, "only {failovers} failovers: {per_path:?}");
    if PEERS {
        assert!(confirmed >= 1, "no fence confirmed: {per_path:?}");
    }
}
