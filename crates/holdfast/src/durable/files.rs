//! Runs the log engine's [`StoreOp`]s on real files in the state
//! directory: `fdatasync` is [`File::sync_data`], a directory sync opens the
//! directory and calls `sync_all`. Handles stay open between commits so a
//! group costs one `pwrite` and one `fdatasync`. Files are opened for
//! writing, never in append mode (where Linux's `pwrite` ignores the
//! offset and appends).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use holdfast_proto::store::log::{StoreFile, StoreOp};

/// The store's files, with open handles.
#[derive(Debug)]
pub(crate) struct Files {
    dir: PathBuf,
    open: HashMap<StoreFile, File>,
}

impl Files {
    pub(crate) fn new(dir: &Path) -> Self {
        Files {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
        }
    }

    pub(crate) fn path(&self, file: StoreFile) -> PathBuf {
        self.dir.join(file.name())
    }

    /// The file's bytes, or `None` when it does not exist.
    pub(crate) fn read(&self, file: StoreFile) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(file)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn handle(&mut self, file: StoreFile) -> io::Result<&mut File> {
        let path = self.path(file);
        match self.open.entry(file) {
            std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => Ok(v.insert(
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)?,
            )),
        }
    }

    /// Runs one op; an error names the file.
    pub(crate) fn run(&mut self, op: &StoreOp) -> io::Result<()> {
        let dir = self.dir.clone();
        let what = |file: StoreFile, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("{}: {e}", dir.join(file.name()).display()),
            )
        };
        match op {
            StoreOp::WriteAt {
                file,
                offset,
                bytes,
            } => self
                .handle(*file)
                .and_then(|f| f.write_all_at(bytes, *offset))
                .map_err(|e| what(*file, e)),
            StoreOp::Sync(file) => self
                .handle(*file)
                .and_then(|f| f.sync_data())
                .map_err(|e| what(*file, e)),
            StoreOp::Write { file, bytes } => {
                self.open.remove(file);
                let mut f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(self.path(*file))
                    .and_then(|mut f| f.write_all(bytes).map(|()| f))
                    .map_err(|e| what(*file, e))?;
                f.flush().map_err(|e| what(*file, e))?;
                self.open.insert(*file, f);
                Ok(())
            }
            StoreOp::Rename { from, to } => {
                std::fs::rename(self.path(*from), self.path(*to)).map_err(|e| what(*from, e))?;
                self.open.remove(to);
                if let Some(f) = self.open.remove(from) {
                    self.open.insert(*to, f);
                }
                Ok(())
            }
            StoreOp::SyncDir => File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.dir.display()))),
            StoreOp::Remove(file) => {
                self.open.remove(file);
                match std::fs::remove_file(self.path(*file)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(what(*file, e)),
                    _ => Ok(()),
                }
            }
        }
    }
}
