//! # holdfast-block: block storage over holdfast sessions
//!
//! * [`BlockDevice`]: the interface every device here offers.
//! * [`MemoryDevice`]: an in-memory device for tests and reference models.

#![forbid(unsafe_code)]

pub mod device;
pub mod memory;

pub use device::{BlockDevice, BlockError};
pub use memory::MemoryDevice;
