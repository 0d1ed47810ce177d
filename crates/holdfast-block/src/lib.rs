//! # holdfast-block: block storage over holdfast sessions
//!
//! * [`BlockDevice`]: the interface every device here offers.
//! * [`FileDevice`]: a regular file or block device (pread/pwrite; FLUSH is
//!   fdatasync, FUA goes through an `O_DSYNC` descriptor; optional O_DIRECT;
//!   TRIM and WRITE_ZEROES with `fallocate`, holes from `SEEK_DATA`).
//! * [`BlockService`]: the target side, a `tower::Service` for
//!   [`holdfast::Target`]. Requests run concurrently; overlapping ones keep
//!   session order ([`ordering`]).
//! * [`Volume`]: the initiator side, a remote volume over a
//!   [`holdfast::Initiator`]; every request is retry-safe, so a target
//!   restart re-issues in-flight writes in order instead of failing them.
//! * [`nbd`]: an NBD server for any [`BlockDevice`], so qemu-img, qemu-io,
//!   fio, nbdcopy and the kernel's nbd client can use a [`Volume`].
//! * [`wire`]: the block protocol carried in holdfast commands.
//! * [`MemoryDevice`]: an in-memory device for tests and reference models.
//! * [`identity`]: the UUID that names a volume, so a request never lands on
//!   another one.

#![forbid(unsafe_code)]

mod backend_log;
pub mod device;
pub mod file;
pub mod identity;
mod join;
pub mod memory;
pub mod nbd;
mod nowait;
pub mod ordering;
pub mod service;
mod sparse;
pub mod volume;
pub mod wire;

pub use device::{BlockDevice, BlockError};
pub use file::{FileDevice, OpenOptions};
pub use identity::VolumeId;
pub use memory::MemoryDevice;
pub use nbd::{NbdError, NbdOptions};
pub use service::{BlockService, ServiceOptions};
pub use volume::{Volume, VolumeError, VolumeOptions};
pub use wire::Info;
