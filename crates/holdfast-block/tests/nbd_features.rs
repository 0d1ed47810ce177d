//! The NBD features storage users expect, each against the real client
//! that uses it, through the whole stack `holdfast nbd` runs: a file
//! target ([`FileDevice`] behind a [`BlockService`] on a holdfast target),
//! a [`holdfast_block::Volume`] over a holdfast session, and the NBD
//! server.
//!
//! * holes: `qemu-img map` and `nbdinfo --map` (structured replies,
//!   `base:allocation`, the block wire's BLOCK_STATUS);
//! * space: `qemu-io -c discard` frees it, trimming a hole allocates
//!   nothing, write-zeroes reads back zeroes and may unmap, `qemu-img
//!   convert -n` of a sparse image stays sparse;
//! * constraints: an O_DIRECT target announces a 4096-byte minimum block
//!   size and refuses misaligned requests whole;
//! * a read-only export, FAST_ZERO, and structured replies on the wire.
//!
//! A missing client tool skips its test with a note, or fails it under CI.
//! Every client run and socket read has a time limit.

#![allow(clippy::unwrap_used, missing_docs)]

mod nbd_support;
mod support;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use holdfast::Target;
use holdfast_block::nbd::consts::*;
use holdfast_block::nbd::NbdOptions;
use holdfast_block::{BlockDevice, BlockService, FileDevice, MemoryDevice, OpenOptions};
use nbd_support::*;
use tokio::task::JoinHandle;

const MIB: u64 = 1024 * 1024;

/// A file target, a volume over a holdfast session to it, and an NBD
/// server exporting the volume.
struct Stack {
    device: FileDevice,
    nbd: SocketAddr,
    _target: Target,
    _server: JoinHandle<()>,
}

impl Stack {
    async fn start(path: &Path, size: u64, direct: bool, options: NbdOptions) -> Stack {
        let device = FileDevice::open(
            path,
            OpenOptions {
                size: Some(size),
                direct,
                ..OpenOptions::default()
            },
        )
        .expect("open the volume file");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (target, addr) = support::serve(any, BlockService::new(device.clone())).await;
        let volume = support::volume(addr).await;
        let (nbd, server) = start_tcp(Arc::new(volume), options).await;
        Stack {
            device,
            nbd,
            _target: target,
            _server: server,
        }
    }

    fn uri(&self) -> String {
        uri(self.nbd, "")
    }
}

/// Bytes the file occupies on disk (what `du` shows).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Runs qemu-io's commands on `uri`; fails on any reported failure.
async fn qemu_io(qemu_io: &Path, uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw", uri];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    let out = run_ok(qemu_io, &args).await;
    assert!(
        !out.contains("failed") && !out.contains("Pattern verification"),
        "qemu-io reported a failure:\n{out}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_map_and_nbdinfo_map_show_the_holes_of_a_sparse_volume() {
    init_tracing();
    let (Some(qemu_img), Some(nbdinfo)) = (
        tool("qemu-img", "qemu-utils"),
        tool("nbdinfo", "libnbd-bin"),
    ) else {
        return;
    };
    let dir = TempDir::new("map");
    let path = dir.path("sparse.img");
    let stack = Stack::start(&path, 16 * MIB, false, NbdOptions::default()).await;
    // Data at [4 MiB, 5 MiB); the rest was never written.
    stack
        .device
        .write_at(4 * MIB, Bytes::from(vec![0x5a; MIB as usize]), false)
        .await
        .unwrap();
    stack.device.flush().await.unwrap();

    let map = run_ok(&qemu_img, &["map", "--output=json", &stack.uri()]).await;
    let lines: Vec<&str> = map.lines().filter(|l| l.contains("\"start\"")).collect();
    let entry = |start: u64, length: u64, data: bool| {
        lines.iter().any(|l| {
            l.contains(&format!("\"start\": {start},"))
                && l.contains(&format!("\"length\": {length},"))
                && l.contains(&format!("\"data\": {data}"))
        })
    };
    assert!(
        entry(0, 4 * MIB, false) && entry(4 * MIB, MIB, true) && entry(5 * MIB, 11 * MIB, false),
        "qemu-img map does not show the holes:\n{map}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("\"data\": false"))
            .all(|l| l.contains("\"zero\": true")),
        "holes must read as zeroes:\n{map}"
    );

    let map = run_ok(&nbdinfo, &["--map", &stack.uri()]).await;
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let want = [
        ["0", "4194304", "3", "hole,zero"],
        ["4194304", "1048576", "0", "data"],
        ["5242880", "11534336", "3", "hole,zero"],
    ];
    assert_eq!(rows, want.map(|r| r.to_vec()), "nbdinfo --map:\n{map}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_frees_space_and_trimming_a_hole_allocates_nothing() {
    init_tracing();
    let Some(qemu_io_bin) = tool("qemu-io", "qemu-utils") else {
        return;
    };
    let dir = TempDir::new("discard");
    let path = dir.path("vol.img");
    let stack = Stack::start(&path, 16 * MIB, false, NbdOptions::default()).await;
    qemu_io(&qemu_io_bin, &stack.uri(), &["write -P 0xab 0 8M", "flush"]).await;
    let full = allocated(&path);
    assert!(full >= 8 * MIB, "8 MiB written, {full} bytes allocated");

    // Discard the data, and a range that is a hole already.
    qemu_io(
        &qemu_io_bin,
        &stack.uri(),
        &["discard 0 8M", "discard 8M 8M", "read -P 0 0 16M"],
    )
    .await;
    let after = allocated(&path);
    assert!(
        after < MIB,
        "discard should free the space (du {full} -> {after} bytes)"
    );
    assert!(stack.device.stats().punched >= 16 * MIB);
    assert_eq!(stack.device.stats().zeroed, 0, "no zeroes were written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_zeroes_reads_back_zeroes_and_unmaps_only_when_allowed() {
    init_tracing();
    let Some(qemu_io_bin) = tool("qemu-io", "qemu-utils") else {
        return;
    };
    let dir = TempDir::new("zeroes");
    let path = dir.path("vol.img");
    let stack = Stack::start(&path, 16 * MIB, false, NbdOptions::default()).await;
    qemu_io(&qemu_io_bin, &stack.uri(), &["write -P 0xcd 0 8M", "flush"]).await;
    // `write -z` keeps the range allocated (NBD_CMD_FLAG_NO_HOLE); with
    // `-u` it may be unmapped.
    qemu_io(
        &qemu_io_bin,
        &stack.uri(),
        &[
            "write -z 0 4M",
            "write -z -u 4M 4M",
            "flush",
            "read -P 0 0 8M",
        ],
    )
    .await;
    let after = allocated(&path);
    assert!(
        (4 * MIB..5 * MIB).contains(&after),
        "the kept half stays allocated and the unmapped half is freed: {after} bytes"
    );
    let s = stack.device.stats();
    assert_eq!(s.zeroed, 0, "no zeroes were written byte by byte");
    assert!(s.punched >= 8 * MIB);
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[..8 * MIB as usize].iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_n_of_a_sparse_image_stays_sparse() {
    init_tracing();
    let Some(qemu_img) = tool("qemu-img", "qemu-utils") else {
        return;
    };
    let dir = TempDir::new("convert");
    let (source, path) = (dir.path("src.img"), dir.path("vol.img"));
    let size = 32 * MIB;
    // A sparse source: 1 MiB of data at 8 MiB.
    let data = pseudo_random(MIB as usize, 7);
    {
        let f = std::fs::File::create(&source).unwrap();
        f.set_len(size).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &data, 8 * MIB).unwrap();
    }
    let stack = Stack::start(&path, size, false, NbdOptions::default()).await;
    // The volume starts fully written, so its holes must be made.
    stack
        .device
        .write_at(0, Bytes::from(vec![0xee; size as usize]), false)
        .await
        .unwrap();
    stack.device.flush().await.unwrap();
    assert!(allocated(&path) >= size);

    let src = source.to_str().unwrap();
    run_ok(
        &qemu_img,
        &["convert", "-n", "-f", "raw", "-O", "raw", src, &stack.uri()],
    )
    .await;
    let after = allocated(&path);
    assert!(
        after <= 2 * MIB,
        "the copy of a sparse image should stay sparse: {after} bytes allocated"
    );
    let copied = std::fs::read(&path).unwrap();
    let expected = std::fs::read(&source).unwrap();
    assert!(copied == expected, "the volume differs from the image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_volume_announces_its_block_size_and_refuses_misaligned_requests() {
    init_tracing();
    let dir = TempDir::new("direct");
    let path = dir.path("vol.img");
    let stack = Stack::start(&path, 4 * MIB, true, NbdOptions::default()).await;
    let mut c = RawClient::handshake(stack.nbd).await;
    let (_, _, sizes) = c.info_or_go_sized(OPT_GO, "").await.unwrap();
    assert_eq!(sizes, (4096, 4096, MAX_PAYLOAD), "min, preferred, max");

    c.request(CMD_WRITE, 0, 1, 0, 8192, &[0x11; 8192]).await;
    assert_eq!(c.reply().await, (0, 1));
    // Misaligned offset or length: refused whole, nothing written.
    c.request(CMD_WRITE, 0, 2, 512, 4096, &[0x22; 4096]).await;
    assert_eq!(c.reply().await, (EINVAL, 2));
    c.request(CMD_WRITE, 0, 3, 0, 4097, &[0x22; 4097]).await;
    assert_eq!(c.reply().await, (EINVAL, 3));
    c.request(CMD_READ, 0, 4, 100, 4096, &[]).await;
    assert_eq!(c.reply().await, (EINVAL, 4));
    c.request(CMD_WRITE_ZEROES, 0, 5, 4096, 100, &[]).await;
    assert_eq!(c.reply().await, (EINVAL, 5));
    c.request(CMD_READ, 0, 6, 0, 8192, &[]).await;
    assert_eq!(c.reply().await, (0, 6));
    assert!(c.read_data(8192).await.iter().all(|&b| b == 0x11));

    // A client that honours the constraint (qemu reads, modifies and
    // writes whole blocks) can write anywhere.
    if let Some(qemu_io_bin) = tool("qemu-io", "qemu-utils") {
        qemu_io(
            &qemu_io_bin,
            &stack.uri(),
            &["write -P 0x33 100 1000", "read -P 0x33 100 1000"],
        )
        .await;
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk[..100].iter().all(|&b| b == 0x11));
        assert!(on_disk[100..1100].iter().all(|&b| b == 0x33));
        assert!(on_disk[1100..8192].iter().all(|&b| b == 0x11));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_export_refuses_writes_with_eperm() {
    init_tracing();
    let dev = Arc::new(MemoryDevice::new(MIB as usize));
    let options = NbdOptions {
        read_only: true,
        ..NbdOptions::default()
    };
    let (addr, _server) = start_tcp(dev.clone(), options).await;
    let (mut c, _, flags) = RawClient::transmission(addr).await;
    assert_ne!(flags & FLAG_READ_ONLY, 0, "NBD_FLAG_READ_ONLY announced");
    let writes = FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    assert_eq!(flags & writes, 0, "no write commands announced");
    c.request(CMD_WRITE, 0, 1, 0, 4, b"data").await;
    assert_eq!(c.reply().await, (EPERM, 1));
    c.request(CMD_TRIM, 0, 2, 0, 4096, &[]).await;
    assert_eq!(c.reply().await, (EPERM, 2));
    c.request(CMD_WRITE_ZEROES, 0, 3, 0, 4096, &[]).await;
    assert_eq!(c.reply().await, (EPERM, 3));
    c.request(CMD_FLUSH, 0, 4, 0, 0, &[]).await;
    assert_eq!(c.reply().await, (0, 4));
    c.request(CMD_READ, 0, 5, 0, 4, &[]).await;
    assert_eq!(c.reply().await, (0, 5));
    assert_eq!(c.read_data(4).await, [0; 4]);
    dev.write_at(0, Bytes::from_static(b"mine"), false)
        .await
        .unwrap();
    assert_eq!(
        &dev.snapshot()[..4],
        b"mine",
        "the device itself is writable"
    );

    if let Some(qemu_io_bin) = tool("qemu-io", "qemu-utils") {
        let out = run_tool(
            &qemu_io_bin,
            &["-f", "raw", &uri(addr, ""), "-c", "write -P 1 0 4k"],
        )
        .await;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() || text.contains("failed"),
            "qemu-io wrote to a read-only export:\n{text}"
        );
        assert_eq!(&dev.snapshot()[..4], b"mine");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_zero_fails_fast_where_zeroing_would_be_slow() {
    init_tracing();
    // GatedDevice keeps the default zero_range: it cannot promise speed.
    let dev = Arc::new(GatedDevice::new(MIB as usize));
    let (addr, _server) = start_tcp(dev.clone(), NbdOptions::default()).await;
    let (mut c, _, flags) = RawClient::transmission(addr).await;
    assert_ne!(flags & FLAG_SEND_FAST_ZERO, 0);
    c.request(CMD_WRITE, 0, 1, 4096, 4, b"keep").await;
    assert_eq!(c.reply().await, (0, 1));
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 2, 4096, 4096, &[])
        .await;
    assert_eq!(c.reply().await, (ENOTSUP, 2));
    assert_eq!(&dev.inner.snapshot()[4096..4100], b"keep", "nothing done");
    c.request(CMD_WRITE_ZEROES, 0, 3, 4096, 4096, &[]).await;
    assert_eq!(c.reply().await, (0, 3));
    assert_eq!(&dev.inner.snapshot()[4096..4100], &[0; 4]);

    // A file target zeroes fast (fallocate): accepted.
    let dir = TempDir::new("fast-zero");
    let path = dir.path("vol.img");
    let stack = Stack::start(&path, 4 * MIB, false, NbdOptions::default()).await;
    let (mut c, _, _) = RawClient::transmission(stack.nbd).await;
    c.request(CMD_WRITE, 0, 1, 0, 4, b"gone").await;
    assert_eq!(c.reply().await, (0, 1));
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 2, 0, 4096, &[])
        .await;
    assert_eq!(c.reply().await, (0, 2));
    assert_eq!(stack.device.read_at(0, 4).await.unwrap().as_ref(), &[0; 4]);
    assert_eq!(stack.device.stats().zeroed, 0);
}

/// Negotiates structured replies and `base:allocation` by hand, enters
/// transmission, and returns the client.
async fn structured_client(addr: SocketAddr) -> RawClient {
    let mut c = RawClient::handshake(addr).await;
    c.send_option(OPT_STRUCTURED_REPLY, &[]).await;
    assert_eq!(c.read_option_reply().await.kind, REP_ACK);
    let query = |name: &str, queries: &[&str]| {
        let mut b = BytesMut::new();
        b.put_u32(name.len() as u32);
        b.put_slice(name.as_bytes());
        b.put_u32(queries.len() as u32);
        for q in queries {
            b.put_u32(q.len() as u32);
            b.put_slice(q.as_bytes());
        }
        b
    };
    // LIST with no query shows every context, with id 0.
    c.send_option(OPT_LIST_META_CONTEXT, &query("", &[])).await;
    let r = c.read_option_reply().await;
    assert_eq!(r.kind, REP_META_CONTEXT);
    assert_eq!(r.data, b"\0\0\0\0base:allocation");
    assert_eq!(c.read_option_reply().await.kind, REP_ACK);
    // An unknown export, then a selection that skips unknown contexts.
    c.send_option(OPT_SET_META_CONTEXT, &query("nope", &["base:allocation"]))
        .await;
    assert_eq!(c.read_option_reply().await.kind, REP_ERR_UNKNOWN);
    let wanted = ["qemu:dirty-bitmap:x", META_BASE_ALLOCATION];
    c.send_option(OPT_SET_META_CONTEXT, &query("", &wanted))
        .await;
    let r = c.read_option_reply().await;
    assert_eq!(r.kind, REP_META_CONTEXT);
    let mut d = &r.data[..];
    assert_eq!(d.get_u32(), META_BASE_ALLOCATION_ID);
    assert_eq!(d, META_BASE_ALLOCATION.as_bytes());
    assert_eq!(c.read_option_reply().await.kind, REP_ACK);
    c.go("").await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_replies_carry_data_extents_and_error_messages() {
    init_tracing();
    let dir = TempDir::new("structured");
    let path = dir.path("vol.img");
    let stack = Stack::start(&path, 4 * MIB, false, NbdOptions::default()).await;
    let mut c = structured_client(stack.nbd).await;

    c.request(CMD_WRITE, 0, 1, MIB, 4096, &[9; 4096]).await;
    assert_eq!(c.reply().await, (0, 1), "writes keep simple replies");
    // A read: data chunks from its offset, the last one DONE.
    c.request(CMD_READ, 0, 2, MIB - 4096, 8192, &[]).await;
    let mut data = Vec::new();
    loop {
        let (flags, kind, handle, payload) = c.chunk().await;
        assert_eq!((kind, handle), (REPLY_TYPE_OFFSET_DATA, 2));
        let mut p = &payload[..];
        assert_eq!(p.get_u64(), MIB - 4096 + data.len() as u64);
        data.extend_from_slice(p);
        if flags & REPLY_FLAG_DONE != 0 {
            break;
        }
    }
    assert_eq!(data.len(), 8192);
    assert!(data[..4096].iter().all(|&b| b == 0) && data[4096..].iter().all(|&b| b == 9));

    // Block status: a hole, the data, a hole; with REQ_ONE only the first.
    c.request(CMD_BLOCK_STATUS, 0, 3, 0, 4 * MIB as u32, &[])
        .await;
    let (flags, kind, handle, payload) = c.chunk().await;
    assert_eq!(
        (flags, kind, handle),
        (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 3)
    );
    let mut p = &payload[..];
    assert_eq!(p.get_u32(), META_BASE_ALLOCATION_ID);
    let mut extents = Vec::new();
    while p.has_remaining() {
        extents.push((p.get_u32(), p.get_u32()));
    }
    let hole = STATE_HOLE | STATE_ZERO;
    assert_eq!(
        extents,
        vec![(MIB as u32, hole), (4096, 0), (3 * MIB as u32 - 4096, hole)]
    );
    c.request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 4, MIB, 8192, &[])
        .await;
    let (_, _, _, payload) = c.chunk().await;
    assert_eq!(payload.len(), 4 + 8, "one extent");
    assert_eq!(
        &payload[4..],
        &[0, 0, 0x10, 0, 0, 0, 0, 0],
        "4096 bytes of data"
    );

    // Errors of reads and block status come as error chunks with a message.
    for (handle, kind) in [(5, CMD_READ), (6, CMD_BLOCK_STATUS)] {
        c.request(kind, 0, handle, 4 * MIB - 512, 4096, &[]).await;
        let (flags, kind, h, payload) = c.chunk().await;
        assert_eq!(
            (flags, kind, h),
            (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, handle)
        );
        let mut p = &payload[..];
        assert_eq!(p.get_u32(), EINVAL);
        let len = p.get_u16() as usize;
        assert_eq!(p.len(), len);
        assert!(String::from_utf8_lossy(p).contains("beyond the end"));
    }
    // The connection still serves; CACHE reaches the target's file.
    c.request(CMD_FLUSH, 0, 7, 0, 0, &[]).await;
    assert_eq!(c.reply().await, (0, 7));
    c.request(CMD_CACHE, 0, 8, MIB, 2 * MIB as u32, &[]).await;
    assert_eq!(c.reply().await, (0, 8));
    assert_eq!(
        stack.device.stats().cached,
        2 * MIB,
        "posix_fadvise(WILLNEED)"
    );
}

/// A small tmpfs mounted for one test (needs root; `None` elsewhere),
/// unmounted on drop.
struct SmallFs {
    dir: TempDir,
}

impl SmallFs {
    fn mount(tag: &str, size: &str) -> Option<SmallFs> {
        let dir = TempDir::new(tag);
        let mnt = dir.path("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("note: cannot mount a tmpfs here (not root?); skipping");
            return None;
        }
        Some(SmallFs { dir })
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path("mnt").join(name)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path("mnt"))
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_trim_succeeds_and_frees_space() {
    init_tracing();
    let Some(qemu_io_bin) = tool("qemu-io", "qemu-utils") else {
        return;
    };
    let Some(fs) = SmallFs::mount("full", "4m") else {
        return;
    };
    let path = fs.path("vol.img");
    // A 16 MiB sparse volume on a 4 MiB filesystem.
    let stack = Stack::start(&path, 16 * MIB, false, NbdOptions::default()).await;
    let out = run_tool(
        &qemu_io_bin,
        &["-f", "raw", &stack.uri(), "-c", "write -P 0xab 0 8M"],
    )
    .await;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("No space left"),
        "the disk should have filled up:\n{text}"
    );
    // Trimming everything (data and holes alike) must not need space.
    qemu_io(&qemu_io_bin, &stack.uri(), &["discard 0 16M"]).await;
    assert!(allocated(&path) < MIB, "{}", allocated(&path));
    qemu_io(
        &qemu_io_bin,
        &stack.uri(),
        &["write -P 0xcd 0 1M", "read -P 0xcd 0 1M"],
    )
    .await;
}

/// A target from before the extensions: INFO without the EXTENSIONS bit,
/// and BLOCK_STATUS, CACHE and the WRITE_ZEROES flags PUNCH and FAST
/// refused as an old target refuses them (status 2), counted.
#[derive(Clone)]
struct OldTarget {
    inner: support::Unordered<MemoryDevice>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl tower_service::Service<holdfast::Request> for OldTarget {
    type Response = Bytes;
    type Error = std::convert::Infallible;
    type Future = holdfast_block::service::BlockFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: holdfast::Request) -> Self::Future {
        let p = &req.payload;
        let flags = p.get(2..4).map_or(0, |f| u16::from_be_bytes([f[0], f[1]]));
        let extension = p.get(1).is_some_and(|&op| op >= 7)
            || flags & (holdfast_block::wire::FLAG_PUNCH | holdfast_block::wire::FLAG_FAST) != 0;
        if extension {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let e = holdfast_block::BlockError::Invalid("unknown opcode".into());
            return Box::pin(std::future::ready(Ok(holdfast_block::wire::encode_err(&e))));
        }
        self.inner.call(req)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_target_is_never_sent_an_extension() {
    init_tracing();
    let device = MemoryDevice::new(MIB as usize);
    let old = OldTarget {
        inner: support::Unordered::new(device),
        refused: Arc::default(),
    };
    let refused = old.refused.clone();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (_target, addr) = support::serve(any, old).await;
    let volume = support::volume(addr).await;
    assert!(!volume.info().extensions);
    let (nbd, _server) = start_tcp(Arc::new(volume), NbdOptions::default()).await;
    let mut c = structured_client(nbd).await;
    c.request(CMD_WRITE, 0, 1, 0, 4, b"keep").await;
    assert_eq!(c.reply().await, (0, 1));
    // FAST_ZERO: refused here, as the old target could only write zeroes.
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 2, 0, 4096, &[])
        .await;
    assert_eq!(c.reply().await, (ENOTSUP, 2));
    // A zeroing that may unmap is sent without PUNCH.
    c.request(CMD_WRITE_ZEROES, 0, 3, 8192, 4096, &[]).await;
    assert_eq!(c.reply().await, (0, 3));
    // Block status: all data, from what the volume knows; CACHE: nothing
    // to ask.
    c.request(CMD_BLOCK_STATUS, 0, 4, 0, MIB as u32, &[]).await;
    let (_, kind, _, payload) = c.chunk().await;
    assert_eq!(kind, REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(&payload[4..], &[0, 0x10, 0, 0, 0, 0, 0, 0], "1 MiB of data");
    c.request(CMD_CACHE, 0, 5, 0, 4096, &[]).await;
    assert_eq!(c.reply().await, (0, 5));
    c.request(CMD_READ, 0, 6, 0, 4, &[]).await;
    let (_, _, _, payload) = c.chunk().await;
    assert_eq!(&payload[8..], b"keep");
    assert_eq!(
        refused.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an extension was sent to a target without them"
    );
}
