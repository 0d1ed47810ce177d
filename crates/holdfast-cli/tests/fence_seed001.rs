//! Seed 001 across two nodes (issue 15): the exact corruption of the
//! linux-nvme report, and the fence that prevents it.
//!
//! Two `holdfast target` processes serve one volume file (two nodes of one
//! backend). A path group in this process reaches node A through a chaos
//! proxy and node B directly. IO1 (pattern X) is sent to A and held in the
//! proxy; the path to A is cut for new connections, so the group fails over
//! to B, where IO1 is re-issued and IO2 (pattern Y, same block) completes.
//! Then the proxy releases IO1's held bytes to A. The block must hold Y:
//!
//! * fence by confirmation (`fence_by_confirmation_...`): B has a peer link
//!   to A (`--peer`), forwards the group's FENCE, and A confirms; A's
//!   connection is closed, so the released bytes reach nothing;
//! * fence by timeout (`fence_by_timeout_...`): no peer link; the group
//!   waits A's quiesce time from its last contact, by which A has dropped
//!   the silent connection;
//! * fencing switched off (`unfenced_failover_...`, the test-only switch):
//!   IO1 is re-issued at once and the released bytes still run on A after
//!   IO2: the block holds X. This proves the test can fail.
//!
//! Each run is bounded: a few seconds of protocol time, every wait capped.

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::chaos::{Direction, FaultKind, FaultSpec, Proxy, Scope};
use holdfast::paths::{FenceKind, PathGroup, PathGroupOptions, PathState};
use holdfast::transport::ConnectFuture;
use holdfast::{Connector, Endpoint, EndpointConnector, InitiatorConfig, InitiatorOptions};
use holdfast_block::Volume;
use support::{start_target, Scratch};

/// The block both writes aim at (4 KiB at 1 MiB).
const OFFSET: u64 = 1 << 20;
const LEN: usize = 4096;

/// A connector that can be switched off: the cable to node A pulled for
/// new connections while the established one sits in the proxy.
struct Gate {
    inner: EndpointConnector,
    open: Arc<AtomicBool>,
}

impl Connector for Gate {
    fn connect(&self) -> ConnectFuture<'_> {
        if self.open.load(Ordering::SeqCst) {
            self.inner.connect()
        } else {
            Box::pin(async {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the path to node A is cut (test)",
                ))
            })
        }
    }
}

/// How the failover is made safe in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fencing {
    /// B has a peer link to A and forwards the fence.
    Confirmation,
    /// No peer link: wait A's quiesce time.
    Timeout,
    /// Test-only switch: re-issue at once.
    Off,
}

fn which(data: &[u8]) -> &'static str {
    if data.iter().all(|&b| b == b'X') {
        "X"
    } else if data.iter().all(|&b| b == b'Y') {
        "Y"
    } else if data.iter().all(|&b| b == b'Z') {
        "Z"
    } else {
        "a mix"
    }
}

fn tcp(addr: &str) -> SocketAddr {
    addr.parse().expect("address")
}

/// Runs seed 001 across two nodes; returns what the block holds in the
/// file at the end.
fn seed_001_across_two_nodes(fencing: Fencing) -> &'static str {
    let started = Instant::now();
    let dir = Scratch::new(&format!("seed001-{fencing:?}"));
    let volume = dir.path("volume.img");
    // A's quiesce time: inactivity (4 keep-alives of 500 ms = 2 s) plus the
    // default 1 s command budget.
    let (_a, a_addr) = start_target(&volume, "8M", &[]);
    let mut b_args = vec![];
    if fencing == Fencing::Confirmation {
        b_args.extend(["--peer", a_addr.as_str()]);
    }
    let (_b, b_addr) = start_target(&volume, "8M", &b_args);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let on_disk = rt.block_on(async {
        let proxy = Proxy::start(tcp(&a_addr)).await.expect("proxy");
        let open = Arc::new(AtomicBool::new(true));
        let to_a = Gate {
            inner: EndpointConnector::new(Endpoint::Tcp(proxy.addr()), Duration::from_secs(1)),
            open: open.clone(),
        };
        let to_b = EndpointConnector::new(Endpoint::Tcp(tcp(&b_addr)), Duration::from_secs(1));
        // The group declares a silent connection dead after 300 ms and the
        // path lost 300 ms later; it promises a 500 ms keep-alive, so the
        // nodes drop a silent connection only after 2 s: an unfenced
        // failover re-issues IO1 well before A would drop the held one.
        let mut protocol = InitiatorConfig::default();
        protocol.keepalive = Duration::from_millis(500);
        protocol.dead_after = Duration::from_millis(300);
        protocol.login_timeout = Duration::from_secs(1);
        protocol.session_loss_timeout = Some(Duration::from_secs(30));
        #[allow(unused_mut)]
        let mut options = {
            let mut o = PathGroupOptions::default();
            o.initiator = {
                let mut o = InitiatorOptions::default();
                o.protocol = protocol;
                o
            };
            o
        };
        options.unfenced_failover = fencing == Fencing::Off;
        let group = PathGroup::builder()
            .connector("node A", Arc::new(to_a))
            .connector("node B", Arc::new(to_b))
            .options(options)
            .start()
            .expect("group");
        let vol = tokio::time::timeout(
            Duration::from_secs(10),
            Volume::connect_group(group.clone()),
        )
        .await
        .expect("INFO in time")
        .expect("volume");
        // Z through A, and both paths up before the fault.
        vol.write_at(OFFSET, Bytes::from(vec![b'Z'; LEN]), true)
            .await
            .expect("write Z");
        wait_for(&group, Duration::from_secs(10), |s| {
            s.paths[0].state == PathState::Active && s.paths[1].state == PathState::Standby
        })
        .await;

        // Hold everything sent to A, cut A for new connections, send IO1.
        let hit = proxy.apply(FaultSpec::new(FaultKind::Hold, Direction::Up, Scope::All));
        assert_eq!(hit, 1, "the hold must catch the path group's link to A");
        open.store(false, Ordering::SeqCst);
        let io1 = {
            let vol = vol.clone();
            tokio::spawn(async move {
                vol.write_at(OFFSET, Bytes::from(vec![b'X'; LEN]), false)
                    .await
            })
        };
        let io1 = tokio::time::timeout(Duration::from_secs(15), io1)
            .await
            .expect("IO1 completes after the failover, within 15 s")
            .expect("task");
        io1.expect("IO1 is retry-safe: re-issued on B");
        let stats = group.stats().await;
        eprintln!("after IO1: {stats}");
        assert_eq!(stats.paths[0].failovers, 1, "A failed over once: {stats}");
        let expected = match fencing {
            Fencing::Confirmation => FenceKind::Confirmed,
            Fencing::Timeout => FenceKind::Quiesced,
            Fencing::Off => FenceKind::Skipped,
        };
        assert_eq!(stats.paths[0].last_fence, Some(expected), "{stats}");
        assert!(stats.paths[0].commands_moved >= 1, "{stats}");

        // IO2 on B, then A gets IO1's held bytes.
        vol.write_at(OFFSET, Bytes::from(vec![b'Y'; LEN]), true)
            .await
            .expect("write Y");
        proxy.apply(FaultSpec::new(
            FaultKind::Release,
            Direction::Up,
            Scope::All,
        ));
        // Give A time to run whatever it received, then read the file.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let through_b = vol.read_at(OFFSET, LEN as u32).await.expect("read");
        let _ = tokio::time::timeout(Duration::from_secs(5), group.close()).await;
        let file = std::fs::read(&volume).expect("volume");
        let on_disk = which(&file[OFFSET as usize..OFFSET as usize + LEN]);
        eprintln!(
            "{fencing:?}: the block holds {on_disk} in the file, {} read through the group; {:?}",
            which(&through_b),
            started.elapsed()
        );
        on_disk
    });
    on_disk
}

/// Polls the group's stats until `ok` holds, within `limit`.
async fn wait_for(
    group: &PathGroup,
    limit: Duration,
    ok: impl Fn(&holdfast::PathGroupStats) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = group.stats().await;
        if ok(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "path group not ready within {limit:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn fence_by_confirmation_keeps_a_held_stale_write_from_landing() {
    assert_eq!(seed_001_across_two_nodes(Fencing::Confirmation), "Y");
}

#[test]
fn fence_by_timeout_keeps_a_held_stale_write_from_landing() {
    assert_eq!(seed_001_across_two_nodes(Fencing::Timeout), "Y");
}

#[test]
fn fence_switched_off_lets_the_held_stale_write_land() {
    // The test-only switch: the corruption of seed 001 is back.
    assert_eq!(seed_001_across_two_nodes(Fencing::Off), "X");
}
