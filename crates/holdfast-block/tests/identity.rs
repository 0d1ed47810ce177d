//! Volume identity over real sockets on 127.0.0.1: a target replaced by
//! one serving another file must not receive a single write meant for the
//! first, re-issued writes included.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use holdfast_block::identity::{self, VolumeId};
use holdfast_block::{BlockError, BlockService, FileDevice, OpenOptions, ServiceOptions};
use support::{Probe, TempFile};

const SIZE: u64 = 1 << 20;

fn create(file: &TempFile) -> FileDevice {
    FileDevice::open(
        &file.0,
        OpenOptions {
            size: Some(SIZE),
            ..OpenOptions::default()
        },
    )
    .expect("open")
}

fn with_id(id: VolumeId) -> ServiceOptions {
    ServiceOptions {
        volume_id: Some(id),
        ..ServiceOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_target_serving_another_volume_gets_no_write() {
    support::init_logs();
    let file_a = TempFile::new("identity-a");
    let file_b = TempFile::new("identity-b");
    let device_a = create(&file_a);
    let id_a = identity::load_or_create(&file_a.0).expect("id a");
    let _ = std::fs::remove_file(identity::sidecar_path(&file_b.0));
    let device_b = create(&file_b);
    let id_b = identity::load_or_create(&file_b.0).expect("id b");
    assert_ne!(id_a, id_b);

    let (probe, state_a) = Probe::new(device_a);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (old, addr) = support::serve(any, BlockService::shared(probe.into(), with_id(id_a))).await;
    let vol = support::volume(addr).await.with_target_name(addr);
    assert_eq!(vol.info().volume_id, Some(id_a));
    vol.write_at(0, Bytes::from_static(b"meant for A"), false)
        .await
        .expect("write to A");

    // A write in flight when A goes away: the device stops (a crashed
    // process), so it will be re-issued to whatever answers next.
    state_a.frozen.store(true, Ordering::SeqCst);
    let in_flight = {
        let vol = vol.clone();
        tokio::spawn(async move {
            vol.write_at(4096, Bytes::from(vec![0xaa; 4096]), false)
                .await
        })
    };
    while state_a.stuck.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(old);
    state_a.wait_idle().await;
    let (_new, _) = support::serve(addr, BlockService::with_options(device_b, with_id(id_b))).await;

    let reissued = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("the re-issued write ends")
        .expect("task");
    let err = reissued.expect_err("the re-issued write must not succeed on B");
    let message = err.to_string();
    assert!(
        matches!(err, BlockError::Io(_))
            && message.contains(&format!("now serves volume {id_b}"))
            && message.contains(&format!("not {id_a}"))
            && message.contains(&addr.to_string())
            && message.contains("nothing was written"),
        "{message}"
    );
    // Every later request fails at once, the same way.
    let later = tokio::time::timeout(
        Duration::from_secs(5),
        vol.write_at(0, Bytes::from_static(b"still for A"), false),
    )
    .await
    .expect("fails at once");
    assert_eq!(later, Err(err));
    assert!(vol.failure().is_some());
    let on_b = std::fs::read(&file_b.0).expect("read B");
    assert!(
        on_b.iter().all(|&b| b == 0),
        "a write meant for A landed on B"
    );
    let _ = std::fs::remove_file(identity::sidecar_path(&file_a.0));
    let _ = std::fs::remove_file(identity::sidecar_path(&file_b.0));
}
