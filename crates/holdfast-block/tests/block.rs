//! The block protocol end to end over real sockets on 127.0.0.1: a target
//! serving `BlockService<FileDevice>` (sometimes wrapped in a probe) and a
//! `Volume` client. Round trips of every operation, the FUA and flush paths,
//! refused requests, the overlap order (with a control that shows the check
//! fails without it), concurrency of independent requests, O_DIRECT, and a
//! target restart with writes in flight.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use holdfast::CallOptions;
use holdfast_block::wire::{self, Request};
use holdfast_block::{
    BlockDevice, BlockError, BlockService, FileDevice, OpenOptions, ServiceOptions, Volume,
};
use support::{pattern, Probe, Rng, TempFile, Unordered};

const ANY: &str = "127.0.0.1:0";

fn any() -> SocketAddr {
    ANY.parse().expect("addr")
}

fn create(file: &TempFile, size: u64) -> FileDevice {
    FileDevice::open(
        &file.0,
        OpenOptions {
            size: Some(size),
            ..OpenOptions::default()
        },
    )
    .expect("open")
}

/// Applies a write to the model.
fn apply(model: &mut [u8], offset: u64, data: &[u8]) {
    let o = offset as usize;
    model[o..o + data.len()].copy_from_slice(data);
}

/// Something generic over `BlockDevice`, to use a `Volume` as one.
async fn copy_within<D: BlockDevice>(dev: &D, from: u64, to: u64, len: u32) {
    let data = dev.read_at(from, len).await.expect("read");
    dev.write_at(to, data, false).await.expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_round_trips() {
    support::init_logs();
    let file = TempFile::new("roundtrip");
    let size = 4 << 20;
    let device = create(&file, size);
    let service = BlockService::with_options(
        device.clone(),
        ServiceOptions {
            max_request: 64 * 1024,
            block_size: 4096,
            ..ServiceOptions::default()
        },
    );
    let (_target, addr) = support::serve(any(), service).await;
    let vol = support::volume(addr).await;
    let info = vol.info();
    assert_eq!(
        (info.size, info.read_only, info.block_size, info.max_request),
        (size, false, 4096, 64 * 1024)
    );
    assert_eq!(vol.size(), size);
    assert_eq!(vol.max_request(), 64 * 1024);

    let mut model = vec![0u8; size as usize];
    // Small, unaligned, and split into many pieces (300 KiB at an odd offset).
    let writes = [
        (0u64, pattern(1, 1, 512)),
        (4095, pattern(2, 2, 3)),
        (12_345, pattern(3, 3, 300 * 1024)),
        (size - 100, pattern(4, 4, 100)),
    ];
    for (i, (offset, data)) in writes.iter().enumerate() {
        vol.write_at(*offset, data.clone(), i % 2 == 1)
            .await
            .expect("write");
        apply(&mut model, *offset, data);
    }
    let back = vol.read_at(12_345, 300 * 1024).await.expect("read");
    assert_eq!(back, writes[2].1);
    // The NBD server reads the pieces as they came (no second copy).
    let pieces = vol
        .read_segments(12_345, 300 * 1024, &holdfast_block::device::Cancel::new())
        .await
        .expect("read segments");
    assert_eq!(pieces.len(), 5, "300 KiB in 64 KiB pieces");
    assert_eq!(pieces.concat(), writes[2].1);
    assert_eq!(
        vol.read_at(size - 100, 100).await.expect("read tail"),
        writes[3].1
    );
    assert!(vol.read_at(size, 0).await.expect("empty read").is_empty());
    vol.write_at(size, Bytes::new(), false)
        .await
        .expect("empty write");

    vol.write_zeroes(12_345 + 1000, 200_000, false)
        .await
        .expect("write zeroes");
    model[13_345..213_345].fill(0);
    vol.write_zeroes(0, 10, true)
        .await
        .expect("write zeroes FUA");
    model[..10].fill(0);
    vol.trim(4000, 100).await.expect("trim");
    model[4000..4100].fill(0);
    vol.flush().await.expect("flush");

    // The Volume is a BlockDevice too.
    copy_within(&vol, 12_345, 2 << 20, 70_000).await;
    let moved = model[12_345..12_345 + 70_000].to_vec();
    apply(&mut model, 2 << 20, &moved);
    assert_eq!(BlockDevice::size(&vol), size);

    let whole = vol.read_at(0, size as u32).await.expect("read all");
    assert!(whole == model[..], "the volume differs from the model");
    vol.flush().await.expect("flush");
    let on_disk = std::fs::read(&file.0).expect("read the file");
    assert!(on_disk == model, "the file differs from the model");
    vol.initiator()
        .expect("one session")
        .close()
        .await
        .expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fua_writes_and_flushes_take_the_durable_paths() {
    support::init_logs();
    let file = TempFile::new("fua");
    let device = create(&file, 1 << 20);
    let (_target, addr) = support::serve(any(), BlockService::new(device.clone())).await;
    let vol = support::volume(addr).await;
    let before = device.stats();
    vol.write_at(0, pattern(1, 1, 4096), false)
        .await
        .expect("write");
    vol.write_at(4096, pattern(2, 2, 4096), true)
        .await
        .expect("FUA write");
    vol.write_zeroes(8192, 4096, true)
        .await
        .expect("FUA write zeroes");
    let after_fua = device.stats();
    assert_eq!(after_fua.writes - before.writes, 2);
    assert_eq!(
        after_fua.fua_writes - before.fua_writes,
        2,
        "the FUA write and write-zeroes take the durable paths"
    );
    // The write went through O_DSYNC; the zeroes were made with fallocate
    // (not covered by O_DSYNC), so they took one fdatasync, or went
    // through O_DSYNC where the filesystem cannot fallocate.
    let zeroed_by_fallocate = after_fua.punched > before.punched;
    assert_eq!(
        after_fua.syncs - before.syncs,
        u64::from(zeroed_by_fallocate),
        "no fdatasync but the one the fallocated FUA zeroes need"
    );
    vol.flush().await.expect("flush");
    assert_eq!(
        device.stats().syncs,
        after_fua.syncs + 1,
        "flush is fdatasync"
    );

    // TRIM with FUA (not offered by Volume) is a trim and a flush.
    let reply = vol
        .initiator()
        .expect("one session")
        .call_with(
            Request::Trim {
                offset: 0,
                len: 4096,
                fua: true,
            }
            .encode(),
            CallOptions::RETRY_SAFE,
        )
        .await
        .expect("call");
    assert_eq!(wire::decode_response(&reply), Ok(Ok(Bytes::new())));
    assert_eq!(device.stats().syncs, after_fua.syncs + 2);
}

/// Sends a raw payload and decodes the response.
async fn raw(vol: &Volume, payload: Bytes) -> Result<Bytes, BlockError> {
    let reply = vol
        .initiator()
        .expect("one session")
        .call(payload)
        .await
        .expect("call");
    wire::decode_response(&reply).expect("a well-formed response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_malformed_requests_get_errors() {
    support::init_logs();
    let file = TempFile::new("errors");
    let size = 1 << 20;
    let (_target, addr) = support::serve(any(), BlockService::new(create(&file, size))).await;
    let vol = support::volume(addr).await;
    let invalid = |r: Result<Bytes, BlockError>| matches!(r, Err(BlockError::Invalid(_)));

    // Malformed payloads, sent raw.
    assert!(invalid(raw(&vol, Bytes::new()).await));
    assert!(invalid(
        raw(&vol, Bytes::from_static(b"not a block request")).await
    ));
    let mut bad_magic = Request::Flush.encode().to_vec();
    bad_magic[0] = 0x42;
    assert!(invalid(raw(&vol, Bytes::from(bad_magic)).await));
    let mut fua_read = Request::Read { offset: 0, len: 1 }.encode().to_vec();
    fua_read[3] = 1;
    assert!(invalid(raw(&vol, Bytes::from(fua_read)).await));
    let mut short_write = Request::Write {
        offset: 0,
        data: Bytes::from_static(b"abcd"),
        fua: false,
    }
    .encode()
    .to_vec();
    short_write.pop();
    assert!(invalid(raw(&vol, Bytes::from(short_write)).await));
    let too_large = Request::Read {
        offset: 0,
        len: wire::DEFAULT_MAX_REQUEST + 1,
    };
    let err = raw(&vol, too_large.encode()).await.expect_err("too large");
    assert!(err.to_string().contains("exceeds the maximum"), "{err}");

    // Out of range at the target (sent raw, past the Volume's own check).
    let err = raw(
        &vol,
        Request::Read {
            offset: size - 10,
            len: 20,
        }
        .encode(),
    )
    .await
    .expect_err("out of range");
    assert_eq!(
        err,
        BlockError::OutOfRange {
            offset: size - 10,
            len: 20,
            size
        }
    );
    let beyond = Request::WriteZeroes {
        offset: u64::MAX,
        len: 1,
        fua: false,
        punch: false,
        fast: false,
    };
    assert!(matches!(
        raw(&vol, beyond.encode()).await,
        Err(BlockError::OutOfRange { .. })
    ));
    // And at the Volume, without a round trip.
    assert!(matches!(
        vol.write_at(size - 1, Bytes::from_static(b"xy"), false)
            .await,
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.read_at(size + 1, 0).await,
        Err(BlockError::OutOfRange { .. })
    ));

    // The session is unharmed.
    vol.write_at(0, Bytes::from_static(b"fine"), false)
        .await
        .expect("write");
    assert_eq!(vol.read_at(0, 4).await.expect("read").as_ref(), b"fine");
    let stats = vol
        .initiator()
        .expect("one session")
        .stats()
        .await
        .expect("stats");
    assert_eq!(stats.calls_failed, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_target_refuses_writes() {
    support::init_logs();
    let file = TempFile::new("readonly");
    create(&file, 1 << 20)
        .write_at(0, Bytes::from_static(b"old"), true)
        .await
        .expect("seed");
    let device = FileDevice::open(
        &file.0,
        OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .expect("open read-only");
    let (_target, addr) = support::serve(any(), BlockService::new(device)).await;
    let vol = support::volume(addr).await;
    assert!(vol.read_only());
    assert_eq!(vol.read_at(0, 3).await.expect("read").as_ref(), b"old");
    assert_eq!(
        vol.write_at(0, Bytes::from_static(b"new"), false).await,
        Err(BlockError::ReadOnly)
    );
    let write = Request::Write {
        offset: 0,
        data: Bytes::from_static(b"new"),
        fua: false,
    };
    assert_eq!(raw(&vol, write.encode()).await, Err(BlockError::ReadOnly));
    let trim = Request::Trim {
        offset: 0,
        len: 3,
        fua: false,
    };
    assert_eq!(raw(&vol, trim.encode()).await, Err(BlockError::ReadOnly));
    vol.flush().await.expect("a flush of nothing succeeds");
    assert_eq!(vol.read_at(0, 3).await.expect("read").as_ref(), b"old");
}

/// Issues `first` then `second` in that order on one session and waits for
/// both. `tokio::join!` polls its futures in order, and a Volume submits on
/// the first poll, so the issue order is certain; two `tokio::spawn`s would
/// leave it to the scheduler.
async fn write_pair(vol: &Volume, first: (u64, Bytes), second: (u64, Bytes)) {
    let (a, b) = tokio::join!(
        vol.write_at(first.0, first.1, false),
        vol.write_at(second.0, second.1, false)
    );
    a.expect("first write");
    b.expect("second write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_of_two_overlapping_writes_always_wins() {
    support::init_logs();
    let file = TempFile::new("overlap");
    let region = 256 * 1024u64;
    let tasks = 8u64;
    let size = region * tasks;
    let (_target, addr) = support::serve(any(), BlockService::new(create(&file, size))).await;
    let vol = support::volume(addr).await;
    // Eight tasks, each on its own region, each issuing 40 pairs of writes
    // that overlap (the second covers all, part, or the inside of the
    // first), so pairs from different tasks are in flight together.
    let mut handles = Vec::new();
    for t in 0..tasks {
        let vol = vol.clone();
        handles.push(tokio::spawn(async move {
            let base = t * region;
            let mut rng = Rng::new(t + 1);
            let mut model = vec![0u8; region as usize];
            for i in 0..40u64 {
                let len1 = 1 + rng.below(64 * 1024);
                let off1 = rng.below(region - len1);
                let (off2, len2) = match i % 3 {
                    0 => (off1, len1),
                    1 => {
                        let start = off1 + rng.below(len1);
                        (start, (1 + rng.below(64 * 1024)).min(region - start))
                    }
                    _ => {
                        let start = off1 + rng.below(len1);
                        (start, 1 + rng.below(off1 + len1 - start))
                    }
                };
                let a = pattern(b'A', t * 1000 + i, len1 as usize);
                let b = pattern(b'B', t * 1000 + i + 500, len2 as usize);
                apply(&mut model, off1, &a);
                apply(&mut model, off2, &b);
                write_pair(&vol, (base + off1, a), (base + off2, b.clone())).await;
                let back = vol.read_at(base + off2, len2 as u32).await.expect("read");
                assert!(back == b, "task {t} pair {i}: the first write won");
            }
            let whole = vol.read_at(base, region as u32).await.expect("read");
            assert!(
                whole == model[..],
                "task {t}: region differs from the model"
            );
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
}

/// Runs `pairs` overlapping pairs whose FIRST write the device delays by
/// 40 ms, on a target serving `service`; returns how many pairs the first
/// write won.
async fn slow_first_write_wins<S: holdfast::SessionService>(
    service: S,
    state: &support::ProbeState,
    pairs: u64,
) -> u64 {
    state.slow_tag.store(u64::from(b'A'), Ordering::SeqCst);
    state.slow_ms.store(40, Ordering::SeqCst);
    let (_target, addr) = support::serve(any(), service).await;
    let vol = support::volume(addr).await;
    let mut first_won = 0;
    for i in 0..pairs {
        let offset = i * 8192;
        let a = pattern(b'A', i, 8192);
        let b = pattern(b'B', i, 8192);
        write_pair(&vol, (offset, a.clone()), (offset + 100, b.clone())).await;
        let back = vol.read_at(offset, 8192).await.expect("read");
        if back[100..] != b[..8092] {
            assert_eq!(back[100..], a[100..], "neither write's data");
            first_won += 1;
        }
        assert_eq!(back[..100], a[..100]);
    }
    first_won
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_write_still_loses_to_the_second() {
    support::init_logs();
    let file = TempFile::new("slow-first");
    let (probe, state) = Probe::new(create(&file, 1 << 20));
    let first_won = slow_first_write_wins(BlockService::new(probe), &state, 10).await;
    assert_eq!(first_won, 0, "the slow first write landed last");
    // Each second write started only after its first had finished.
    let writes: Vec<_> = state.log().into_iter().filter(|r| r.write).collect();
    assert_eq!(writes.len(), 20);
    for pair in writes.chunks(2) {
        assert!(pair[1].start >= pair[0].end, "{pair:?}");
    }
}

/// The control for the test above: the same scenario against a service
/// without the overlap order loses every pair, so that test can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_overlap_order_the_slow_first_write_wins() {
    support::init_logs();
    let file = TempFile::new("unordered");
    let (probe, state) = Probe::new(create(&file, 1 << 20));
    let first_won = slow_first_write_wins(Unordered::new(probe), &state, 10).await;
    assert!(
        first_won >= 8,
        "without ordering the delayed first write should land last; it did {first_won}/10 times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_requests_overlap_in_time_and_overlapping_ones_do_not() {
    support::init_logs();
    let file = TempFile::new("concurrency");
    let (probe, state) = Probe::new(create(&file, 1 << 20));
    state.delay_ms.store(30, Ordering::SeqCst);
    let (_target, addr) = support::serve(any(), BlockService::new(probe)).await;
    let vol = support::volume(addr).await;
    // Eight disjoint writes, then eight writes to one block, all at once.
    let mut handles = Vec::new();
    for i in 0..8u64 {
        let vol = vol.clone();
        handles.push(tokio::spawn(async move {
            vol.write_at(i * 4096, pattern(1, i, 4096), false).await
        }));
    }
    for h in handles {
        h.await.expect("task").expect("write");
    }
    let disjoint_peak = state.peak.swap(0, Ordering::SeqCst);
    let mut handles = Vec::new();
    for i in 0..8u64 {
        let vol = vol.clone();
        handles.push(tokio::spawn(async move {
            vol.write_at(64 * 1024, pattern(2, i, 4096), false).await
        }));
    }
    for h in handles {
        h.await.expect("task").expect("write");
    }
    let same_peak = state.peak.load(Ordering::SeqCst);
    eprintln!("peak concurrency: disjoint {disjoint_peak}, same block {same_peak}");
    assert!(disjoint_peak >= 2, "disjoint writes ran one at a time");
    assert_eq!(same_peak, 1, "overlapping writes ran at once");
    let log = state.log();
    for (i, a) in log.iter().enumerate() {
        for b in &log[i + 1..] {
            let overlap = a.offset < b.offset + b.len && b.offset < a.offset + a.len;
            let concurrent = a.start < b.end && b.start < a.end;
            assert!(!(overlap && concurrent), "{a:?} and {b:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_device_serves_aligned_requests_and_refuses_misaligned_ones() {
    support::init_logs();
    let file = TempFile::new("direct");
    let device = match FileDevice::open(
        &file.0,
        OpenOptions {
            size: Some(1 << 20),
            read_only: false,
            direct: true,
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: this filesystem refuses O_DIRECT: {e}");
            return;
        }
    };
    assert!(device.is_direct());
    assert_eq!(device.alignment(), 4096);
    let (_target, addr) = support::serve(any(), BlockService::new(device)).await;
    let vol = support::volume(addr).await;
    let data = pattern(7, 7, 3 * 4096);
    vol.write_at(4096, data.clone(), false)
        .await
        .expect("aligned write");
    vol.write_at(8 * 4096, data.clone(), true)
        .await
        .expect("aligned FUA write");
    assert_eq!(vol.read_at(4096, 3 * 4096).await.expect("read"), data);
    vol.write_zeroes(4096, 4096, false).await.expect("zeroes");
    vol.flush().await.expect("flush");
    let back = vol.read_at(0, 4 * 4096).await.expect("read");
    assert!(back[..2 * 4096].iter().all(|b| *b == 0));
    assert_eq!(back[2 * 4096..], data[4096..]);
    for r in [
        vol.write_at(100, data.clone(), false).await,
        vol.read_at(4096, 100).await.map(drop),
        vol.trim(0, 512).await,
    ] {
        let err = r.expect_err("misaligned");
        assert!(
            matches!(&err, BlockError::Invalid(m) if m.contains("O_DIRECT")),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_flight_survive_a_target_restart() {
    support::init_logs();
    let file = TempFile::new("restart");
    let region = 256 * 1024u64;
    let block = 4096u64;
    let tasks = 4u64;
    let (probe, old_state) = Probe::new(create(&file, region * tasks));
    old_state.delay_ms.store(2, Ordering::SeqCst);
    let (old, addr) = support::serve(any(), BlockService::new(probe)).await;
    let vol = support::volume(addr).await;

    let mut writers = Vec::new();
    for t in 0..tasks {
        let vol = vol.clone();
        writers.push(tokio::spawn(async move {
            let base = t * region;
            let mut rng = Rng::new(100 + t);
            let mut model = vec![0u8; region as usize];
            for i in 0..120u64 {
                let b = rng.below(region / block - 1);
                let data = pattern(t as u8, t * 10_000 + i, block as usize);
                apply(&mut model, b * block, &data);
                if i % 10 == 0 {
                    // An overlapping pair: the second (shifted by half a
                    // block) must win after any re-issue too.
                    let second = pattern(t as u8, t * 10_000 + i + 5000, block as usize);
                    apply(&mut model, b * block + block / 2, &second);
                    write_pair(
                        &vol,
                        (base + b * block, data),
                        (base + b * block + block / 2, second),
                    )
                    .await;
                } else {
                    vol.write_at(base + b * block, data, false)
                        .await
                        .expect("write");
                }
            }
            model
        }));
    }

    // Let the writers run, then "crash" the target with requests in it:
    // the device stops doing anything new (requests reaching it hang, as in
    // a dead process), the target goes away, and what the device was doing
    // completes before the new target starts.
    tokio::time::sleep(Duration::from_millis(150)).await;
    old_state.frozen.store(true, Ordering::SeqCst);
    while old_state.stuck.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(old);
    old_state.wait_idle().await;
    let stuck = old_state.stuck.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let device = FileDevice::open(&file.0, OpenOptions::default()).expect("reopen");
    let (_new, _) = support::serve(addr, BlockService::new(device)).await;

    let mut models = Vec::new();
    for w in writers {
        models.push(w.await.expect("every write succeeds across the restart"));
    }
    let stats = vol
        .initiator()
        .expect("one session")
        .stats()
        .await
        .expect("stats");
    eprintln!("{stuck} requests were cut off by the crash; initiator {stats:?}");
    assert!(stats.stateless_recoveries >= 1, "{stats:?}");
    assert!(stats.reissued >= stuck as u64, "{stats:?}");
    assert_eq!(stats.calls_failed, 0, "{stats:?}");
    let on_disk = std::fs::read(&file.0).expect("read the file");
    for (t, model) in models.iter().enumerate() {
        let r = t * region as usize..(t + 1) * region as usize;
        assert!(on_disk[r] == model[..], "task {t}: region differs");
    }
}
