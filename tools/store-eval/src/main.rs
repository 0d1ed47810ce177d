//! Store evaluation for issue 16: commit rate and latency of a group of N
//! changes with an fsync per commit, for redb, fjall and a plain
//! append + fdatasync log; and the time to read back 10,000 sessions.
//!
//! `store-eval DIR [COMMITS]`: DIR must be on the disk to measure.

use std::collections::HashMap;

use redb::ReadableTable;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("s");

trait Store {
    fn commit(&mut self, group: &[(u64, Vec<u8>)]);
}

struct Log(File);
impl Store for Log {
    fn commit(&mut self, group: &[(u64, Vec<u8>)]) {
        let mut buf = Vec::with_capacity(16 + group.iter().map(|g| g.1.len() + 12).sum::<usize>());
        buf.extend_from_slice(&[0; 8]);
        for (k, v) in group {
            buf.extend_from_slice(&k.to_le_bytes());
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
        let len = (buf.len() - 8) as u32;
        let crc = crc32c::crc32c(&buf[8..]);
        buf[..4].copy_from_slice(&len.to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.0.write_all(&buf).unwrap();
        self.0.sync_data().unwrap();
    }
}

struct Redb(redb::Database);
impl Store for Redb {
    fn commit(&mut self, group: &[(u64, Vec<u8>)]) {
        let tx = self.0.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (k, v) in group {
                t.insert(k, v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

struct Fjall(fjall::Keyspace, fjall::PartitionHandle);
impl Store for Fjall {
    fn commit(&mut self, group: &[(u64, Vec<u8>)]) {
        let mut b = self.0.batch();
        for (k, v) in group {
            b.insert(&self.1, k.to_be_bytes(), v.as_slice());
        }
        b.commit().unwrap();
        self.0.persist(fjall::PersistMode::SyncData).unwrap();
    }
}

fn open(kind: &str, dir: &Path) -> Box<dyn Store> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    match kind {
        "log" => Box::new(Log(OpenOptions::new().create(true).append(true).open(dir.join("log")).unwrap())),
        "redb" => Box::new(Redb(redb::Database::create(dir.join("db")).unwrap())),
        _ => {
            let ks = fjall::Config::new(dir.join("fj")).open().unwrap();
            let p = ks.open_partition("s", fjall::PartitionCreateOptions::default()).unwrap();
            Box::new(Fjall(ks, p))
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn bench(kind: &str, dir: &Path, n: usize, size: usize, commits: usize) {
    let mut s = open(kind, dir);
    let mut lat = Vec::with_capacity(commits);
    let start = Instant::now();
    let mut key = 0u64;
    for _ in 0..commits {
        let group: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|_| {
                key += 1;
                (key % 4096, vec![key as u8; size])
            })
            .collect();
        let t = Instant::now();
        s.commit(&group);
        lat.push(t.elapsed());
    }
    let el = start.elapsed();
    println!(
        "| {kind} | {n} | {size} | {:.0} | {:.0} | {:.0} |",
        commits as f64 / el.as_secs_f64(),
        pct(&mut lat, 0.5).as_secs_f64() * 1e6,
        pct(&mut lat, 0.99).as_secs_f64() * 1e6
    );
}

/// 10,000 sessions of ~300 B (identity, counters, two cached responses of
/// 64 B), written in groups of 100, then read back into a map.
fn recovery(kind: &str, dir: &Path) {
    const SESSIONS: u64 = 10_000;
    {
        let mut s = open(kind, dir);
        for chunk in 0..SESSIONS / 100 {
            let group: Vec<_> = (0..100).map(|i| (chunk * 100 + i, vec![7u8; 300])).collect();
            s.commit(&group);
        }
    }
    let t = Instant::now();
    let mut map: HashMap<u64, Vec<u8>> = HashMap::new();
    match kind {
        "log" => {
            let mut bytes = Vec::new();
            File::open(dir.join("log")).unwrap().read_to_end(&mut bytes).unwrap();
            let mut at = 0;
            while at + 8 <= bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
                let body = &bytes[at + 8..at + 8 + len];
                assert_eq!(crc32c::crc32c(body), crc);
                let mut p = 0;
                while p < body.len() {
                    let k = u64::from_le_bytes(body[p..p + 8].try_into().unwrap());
                    let l = u32::from_le_bytes(body[p + 8..p + 12].try_into().unwrap()) as usize;
                    map.insert(k, body[p + 12..p + 12 + l].to_vec());
                    p += 12 + l;
                }
                at += 8 + len;
            }
        }
        "redb" => {
            let db = redb::Database::create(dir.join("db")).unwrap();
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(TABLE).unwrap();
            for e in t.iter().unwrap() {
                let (k, v) = e.unwrap();
                map.insert(k.value(), v.value().to_vec());
            }
        }
        _ => {
            let ks = fjall::Config::new(dir.join("fj")).open().unwrap();
            let p = ks.open_partition("s", fjall::PartitionCreateOptions::default()).unwrap();
            for e in p.iter() {
                let (k, v) = e.unwrap();
                map.insert(u64::from_be_bytes(k[..].try_into().unwrap()), v.to_vec());
            }
        }
    }
    assert_eq!(map.len(), SESSIONS as usize);
    println!("| {kind} | {:.1} |", t.elapsed().as_secs_f64() * 1e3);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = Path::new(&args[1]);
    let commits: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(500);
    println!("| store | changes/commit | payload B | commits/s | p50 µs | p99 µs |\n|---|---|---|---|---|---|");
    for kind in ["log", "redb", "fjall"] {
        for (n, size) in [(1, 64), (32, 64), (1, 4096), (32, 4096)] {
            bench(kind, &base.join(kind), n, size, commits);
        }
    }
    println!("\n| store | read back 10,000 sessions, ms |\n|---|---|");
    for kind in ["log", "redb", "fjall"] {
        recovery(kind, &base.join(kind));
    }
    let _ = std::fs::remove_dir_all(base);
}
