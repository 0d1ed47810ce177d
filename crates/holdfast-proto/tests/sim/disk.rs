//! A simulated disk with crash semantics, for the durable log engine's file
//! operations (`store::log::StoreOp`). Files are inodes with synced content,
//! the writes made since (in order) and the current content; the directory
//! maps names to inodes, with a durable copy that `SyncDir` updates. At a
//! crash each name independently takes its durable or its current entry (an
//! unsynced rename may or may not have reached the disk), and each file
//! keeps its synced bytes with each unsynced write applied over them, in
//! order, independently lost, whole, torn to a prefix, or torn to a random
//! subset of its 8-byte blocks (the disk may reorder and split unsynced
//! writes). Bytes between the old end of a file and a write that landed past
//! it read as zeros (a hole). Shared by the crash simulation
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

/// One file's content.
#[derive(Default, Clone, Debug)]
struct Inode {
    /// What a crash keeps for sure.
    synced: Vec<u8>,
    /// Writes (offset, bytes) since the last sync, in order.
    unsynced: Vec<(usize, Vec<u8>)>,
    /// What reads see now.
    current: Vec<u8>,
}

/// Writes `bytes` at `offset` of `data`, filling any gap with zeros.
fn write_at(data: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    let end = offset + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset..end].copy_from_slice(bytes);
}

/// Block size of the random-subset tear.
const BLOCK: usize = 8;

/// A directory on a disk that can crash.
#[derive(Default, Clone, Debug)]
pub struct SimDisk {
    inodes: Vec<Inode>,
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
            StoreOp::WriteAt {
                file,
                offset,
                bytes,
            } => {
                let ino = match self.dir.get(file) {
                    Some(i) => *i,
                    None => self.new_inode(*file),
                };
                let offset = usize::try_from(*offset).expect("offset fits");
                let inode = &mut self.inodes[ino];
                write_at(&mut inode.current, offset, bytes);
                inode.unsynced.push((offset, bytes.to_vec()));
            }
            StoreOp::Sync(file) => {
                if !self.skip_sync {
                    if let Some(&i) = self.dir.get(file) {
                        let inode = &mut self.inodes[i];
                        inode.synced = inode.current.clone();
                        inode.unsynced.clear();
                    }
                }
            }
            StoreOp::Write { file, bytes } => {
                let ino = self.new_inode(*file);
                let inode = &mut self.inodes[ino];
                inode.current = bytes.to_vec();
                inode.unsynced.push((0, bytes.to_vec()));
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
        self.inodes.push(Inode::default());
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
                let inode = &self.inodes[i];
                let mut content = inode.synced.clone();
                for (offset, bytes) in &inode.unsynced {
                    match rng.next_u64() % 4 {
                        0 => {}
                        1 => write_at(&mut content, *offset, bytes),
                        2 => {
                            let keep = (rng.next_u64() % (bytes.len() as u64 + 1)) as usize;
                            write_at(&mut content, *offset, &bytes[..keep]);
                        }
                        _ => {
                            // Blocks aligned to the file's offsets.
                            let mut at = 0;
                            while at < bytes.len() {
                                let end = ((offset + at) / BLOCK + 1) * BLOCK - offset;
                                let end = end.min(bytes.len());
                                if rng.next_u64().is_multiple_of(2) {
                                    write_at(&mut content, offset + at, &bytes[at..end]);
                                }
                                at = end;
                            }
                        }
                    }
                }
                let ino = out.new_inode(name);
                out.inodes[ino] = Inode {
                    synced: content.clone(),
                    unsynced: Vec::new(),
                    current: content,
                };
            }
        }
        out.durable_dir = out.dir.clone();
        out
    }

    /// A file's current content, if it exists.
    pub fn read(&self, file: StoreFile) -> Option<&[u8]> {
        self.dir
            .get(&file)
            .map(|&i| self.inodes[i].current.as_slice())
    }
}
