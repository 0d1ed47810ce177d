//! Issue 19 item 2, at the block layer: after the initiator is away for
//! longer than the retain time, a READ it re-issues must not see a WRITE it
//! issued after that READ. The old session's WRITE waits (same-session
//! order) for the READ's cached response to be acknowledged; if expiry
//! dropped that response while the WRITE still waited, the WRITE ran and
//! the re-issued READ, queued behind it, saw the future. A session whose
//! commands still run is kept (docs/PROTOCOL.md §11.1), so the initiator
//! recovers it statefully and the READ is answered from the cache.

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast::chaos::{Direction, Fault, FaultKind, FaultSpec, Proxy, Scope};
use holdfast::transport::ConnectFuture;
use holdfast::{
    Connector, Endpoint, EndpointConnector, Initiator, InitiatorConfig, InitiatorOptions, Target,
    TargetConfig, TargetOptions,
};
use holdfast_block::{BlockService, MemoryDevice, Volume};

const RETAIN: Duration = Duration::from_millis(300);
const BLOCK: usize = 4096;

/// Connects through `inner` unless the gate is down (the target is
/// unreachable: every attempt fails at once).
struct Gate {
    inner: EndpointConnector,
    down: Arc<AtomicBool>,
}

impl Connector for Gate {
    fn connect(&self) -> ConnectFuture<'_> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "gate down",
                ))
            });
        }
        self.inner.connect()
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("finished within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_read_never_sees_a_write_issued_after_it() {
    support::init_logs();
    let target = Target::serve(
        &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
        {
            let mut o = TargetOptions::default();
            o.protocol = {
                let mut tc = TargetConfig::default();
                tc.retain = RETAIN;
                tc
            };
            o
        },
        BlockService::new(MemoryDevice::new(16 * BLOCK)),
    )
    .await
    .expect("serve");
    let Endpoint::Tcp(addr) = target.endpoints()[0].clone() else {
        unreachable!("bound a TCP endpoint")
    };
    let proxy = Proxy::start(addr).await.expect("proxy");
    let down = Arc::new(AtomicBool::new(false));
    let bound = Duration::from_millis(150);
    let proxied: SocketAddr = proxy.addr();
    let initiator = Initiator::start(
        Arc::new(Gate {
            inner: EndpointConnector::new(Endpoint::Tcp(proxied), bound),
            down: down.clone(),
        }),
        {
            let mut o = InitiatorOptions::default();
            o.protocol = {
                let mut ic = InitiatorConfig::default().with_detection_bound(bound);
                ic.session_loss_timeout = None;
                ic
            };
            o
        },
    );
    let volume = Arc::new(within(Volume::connect(initiator)).await.expect("volume"));
    let old = Bytes::from(vec![0xaa; BLOCK]);
    within(volume.write_at(0, old.clone(), false))
        .await
        .expect("first write");

    // Responses stop coming back: R1's response stays unacknowledged in the
    // target's cache, and W2 (same block, issued after R1) waits for it.
    proxy.apply(FaultSpec::new(
        FaultKind::Blackhole,
        Direction::Down,
        Scope::All,
    ));
    let v = volume.clone();
    let read = tokio::spawn(async move { v.read_at(0, BLOCK as u32).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let v = volume.clone();
    let write =
        tokio::spawn(async move { v.write_at(0, Bytes::from(vec![0xbb; BLOCK]), false).await });
    tokio::time::sleep(Duration::from_millis(30)).await;

    // The initiator loses the target for three retain times.
    down.store(true, Ordering::SeqCst);
    proxy.inject(Fault::Reset);
    tokio::time::sleep(RETAIN * 3).await;
    down.store(false, Ordering::SeqCst);

    let read = within(read).await.expect("join").expect("read");
    within(write).await.expect("join").expect("write");
    assert!(
        read == old,
        "the READ was issued before the WRITE, yet it returned {:#04x}.. (the WRITE's data is 0xbb)",
        read[0]
    );
    let now = within(volume.read_at(0, BLOCK as u32)).await.expect("read");
    assert!(now.iter().all(|&b| b == 0xbb), "the WRITE took effect");
}
