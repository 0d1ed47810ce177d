//! The wire format: frame types, their byte layout, and a bounded decoder.
//!
//! Every frame is an 8-byte common header (type, flags, reserved, length),
//! the type's fixed fields, an optional CRC32C header digest, an optional
//! payload and an optional CRC32C data digest. Integers are big-endian.
//! docs/PROTOCOL.md is the normative description.

pub mod codes;
pub mod decode;
pub mod encode;
pub mod extension;
pub mod frame;

pub use codes::{ErrorCode, RejectReason, ResponseStatus};
pub use decode::Decoder;
pub use encode::{encode_to_vec, Outgoing};
pub use extension::{FenceResult, HostId, HostRecord};
pub use frame::{
    Digests, Direction, Frame, Login, LoginAccept, LoginKind, LoginReject, HEADER_LEN,
    MIN_MAX_FRAME, NEVER_MS, STATUS_CODE_LEN, STATUS_FLAG, VERSION_MAX, VERSION_MIN,
};
