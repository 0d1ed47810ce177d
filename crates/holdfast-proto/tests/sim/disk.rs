//! A simulated disk with crash semantics, for the durable log engine's file
//! operations (`store::log::StoreOp`). Files are inodes with synced and
//! current content; the directory maps names to inodes, with a durable copy
//! that `SyncDir` updates. At a crash each name independently takes its
//! durable or its current entry (an unsynced rename may or may not have
//! reached the disk), and each file keeps its synced bytes plus a random
//! prefix of what was written after them (an unsynced append is lost, torn
//! at any byte, or whole). Shared by the crash simulation
//! (tests/durable_restart.rs) and the engine's own tests (tests/store_log.rs).

use std::collections::HashMap;

use holdfast_proto::store::log::{StoreFile, StoreOp};
use holdfast_proto::SeededRandom;

const NAMES: [StoreFile; 4] = [
    StoreFile::Log,
    StoreFile::LogTmp,
    StoreFile::Checkpoint,
    StoreFile::CheckpointTmp,
];

/// A directory on a disk that can crash.
#[derive(Default, Clone, Debug)]
pub struct SimDisk {
    /// (synced, current) content per inode.
    inodes: Vec<(Vec<u8>, Vec<u8>)>,
    dir: HashMap<StoreFile, usize>,
    durable_dir: HashMap<StoreFile, usize>,
    /// Test-only switch: `Sync` and `SyncDir` do nothing (the fault the
    /// crash simulation must catch).
    pub skip_sync: bool,
}

impl SimDisk {
    /// An empty disk; `skip_sync` makes its syncs do nothing.
    pub fn new(skip_sync: bool) -> SimDisk {
        SimDisk {
            skip_sync,
            ..SimDisk::default()
        }
    }

    /// Executes one operation.
    pub fn run(&mut self, op: &StoreOp) {
        match op {
            StoreOp::Append { file, bytes } => {
                let ino = match self.dir.get(file) {
                    Some(i) => *i,
                    None => self.new_inode(*file),
                };
                self.inodes[ino].1.extend_from_slice(bytes);
            }
            StoreOp::Sync(file) => {
                if !self.skip_sync {
                    if let Some(&i) = self.dir.get(file) {
                        self.inodes[i].0 = self.inodes[i].1.clone();
                    }
                }
            }
            StoreOp::Write { file, bytes } => {
                let ino = self.new_inode(*file);
                self.inodes[ino].1 = bytes.to_vec();
            }
            StoreOp::Rename { from, to } => {
                if let Some(i) = self.dir.remove(from) {
                    self.dir.insert(*to, i);
                }
            }
            StoreOp::SyncDir => {
                if !self.skip_sync {
                    self.durable_dir = self.dir.clone();
                }
            }
            StoreOp::Remove(file) => {
                self.dir.remove(file);
            }
        }
    }

    fn new_inode(&mut self, file: StoreFile) -> usize {
        self.inodes.push((Vec::new(), Vec::new()));
        let i = self.inodes.len() - 1;
        self.dir.insert(file, i);
        i
    }

    /// What survives a crash now (see the module docs).
    pub fn crash(&self, rng: &mut SeededRandom) -> SimDisk {
        let mut out = SimDisk::new(self.skip_sync);
        for name in NAMES {
            let entry = if rng.next_u64().is_multiple_of(2) {
                self.durable_dir.get(&name)
            } else {
                self.dir.get(&name)
            };
            if let Some(&i) = entry {
                let (synced, data) = &self.inodes[i];
                let mut content = synced.clone();
                if data.len() > synced.len() && data.starts_with(synced) {
                    let extra = data.len() - synced.len();
                    let keep = (rng.next_u64() % (extra as u64 + 1)) as usize;
                    content.extend_from_slice(&data[synced.len()..synced.len() + keep]);
                }
                let ino = out.new_inode(name);
                out.inodes[ino] = (content.clone(), content);
            }
        }
        out.durable_dir = out.dir.clone();
        out
    }

    /// A file's current content, if it exists.
    pub fn read(&self, file: StoreFile) -> Option<&[u8]> {
        self.dir.get(&file).map(|&i| self.inodes[i].1.as_slice())
    }
}
