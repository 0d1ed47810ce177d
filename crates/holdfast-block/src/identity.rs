//! Volume identity: every volume has a UUID, stored with it, that the
//! target reports in INFO and checks on every request that names one (see
//! [`crate::wire`]). A client that learned the id at connect sends it with
//! every request, so a request can never land on another volume, however
//! the address behind the session changes (a replaced target, a re-issued
//! write after a stateless recovery).
//!
//! Where the id lives:
//! * a regular file: in a sidecar file next to it, `<file>.holdfast-id`
//!   ([`sidecar_path`]), one UUID in text, created with a random (version
//!   4) id the first time the volume is served ([`load_or_create`]);
//! * a block device: given by configuration (`holdfast target
//!   --volume-id UUID`), since nothing can be stored next to it.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

/// A volume's identity: 16 bytes, written as a UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VolumeId(pub [u8; 16]);

/// Why a volume id could not be read, parsed or stored.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IdError {
    /// Not a UUID (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hexadecimal).
    #[error("{0:?} is not a UUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
    Syntax(String),
    /// The all-zero UUID is reserved for "no identity".
    #[error("the nil UUID cannot identify a volume")]
    Nil,
    /// The sidecar file could not be read or written.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The sidecar file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system's random generator failed.
    #[error("no randomness for a new volume id: {0}")]
    Random(String),
}

impl VolumeId {
    /// A new random (version 4) id.
    pub fn random() -> Result<VolumeId, IdError> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| IdError::Random(e.to_string()))?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Ok(VolumeId(b))
    }

    /// True for the nil id, which names no volume.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VolumeId({self})")
    }
}

impl FromStr for VolumeId {
    type Err = IdError;

    /// Parses the hyphenated UUID form (either case); the nil UUID is
    /// refused.
    fn from_str(s: &str) -> Result<VolumeId, IdError> {
        let text = s.trim();
        let syntax = || IdError::Syntax(s.to_owned());
        let groups: Vec<&str> = text.split('-').collect();
        if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(syntax());
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(syntax)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| syntax())?;
        }
        let id = VolumeId(out);
        if id.is_nil() {
            return Err(IdError::Nil);
        }
        Ok(id)
    }
}

/// The sidecar file that holds the id of the regular file at `volume`.
pub fn sidecar_path(volume: &Path) -> PathBuf {
    let mut name = volume.as_os_str().to_owned();
    name.push(".holdfast-id");
    PathBuf::from(name)
}

/// Reads the id of the regular file at `volume` from its sidecar file, or,
/// if there is none, creates the sidecar with a new random id (made
/// durable, with its directory entry, before this returns).
pub fn load_or_create(volume: &Path) -> Result<VolumeId, IdError> {
    let path = sidecar_path(volume);
    let io = |action: &'static str| {
        let path = path.clone();
        move |source| IdError::Io {
            path,
            action,
            source,
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => return text.parse(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read")(e)),
    }
    let id = VolumeId::random()?;
    store(volume, id)?;
    Ok(id)
}

/// Writes `id` as the id of the regular file at `volume` (its sidecar
/// file), durably: the sidecar and its directory entry are synced before
/// this returns, and a crash never leaves a half-written id behind.
pub fn store(volume: &Path, id: VolumeId) -> Result<(), IdError> {
    let path = sidecar_path(volume);
    let io = |action: &'static str| {
        let path = path.clone();
        move |source| IdError::Io {
            path,
            action,
            source,
        }
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(io("create"))?;
    writeln!(f, "{id}").map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    std::fs::rename(&tmp, &path).map_err(io("rename"))?;
    crate::file::sync_parent(&path).map_err(io("sync the directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse() {
        let id = VolumeId::random().expect("random");
        assert!(!id.is_nil());
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<VolumeId>().expect("parse"), id);
        assert_eq!(text.to_uppercase().parse::<VolumeId>().expect("upper"), id);
        for bad in [
            "",
            "x",
            "00000000-0000-0000-0000-000000000000",
            "0123456789abcdef0123456789abcdef",
            "01234567-89ab-cdef-0123-456789abcdeg",
            "01234567-89ab-cdef-0123-456789abcdef0",
            "é1234567-89ab-cdef-0123-456789abcdef",
        ] {
            assert!(bad.parse::<VolumeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sidecar_is_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("holdfast-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let volume = dir.join("disk.img");
        let _ = std::fs::remove_file(sidecar_path(&volume));
        let first = load_or_create(&volume).expect("create");
        assert_eq!(load_or_create(&volume).expect("load"), first);
        std::fs::write(sidecar_path(&volume), "garbage\n").expect("write");
        assert!(load_or_create(&volume).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
