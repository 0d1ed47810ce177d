//! Wire constants of the NBD protocol (magics, flags, option, reply,
//! command and info codes), as `doc/proto.md` of the reference
//! implementation defines them, plus this server's own limits.
//!
//! Every multi-byte value travels in network byte order.

/// `NBDMAGIC`: the first eight bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: follows [`NBDMAGIC`] in newstyle negotiation and starts
/// every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply the server sends.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Starts every transmission-phase request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Starts every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Starts every structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after
/// `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flag: the client speaks fixed newstyle negotiation.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the server must omit the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag: always set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export refuses writes.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: the medium is rotational (never set here).
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
/// Transmission flag: `NBD_CMD_TRIM` is supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` is supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: flush and FUA are visible across all connections to
/// the export, so clients may spread requests over several connections.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: `NBD_CMD_CACHE` is supported.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// Transmission flag: `NBD_CMD_FLAG_FAST_ZERO` is supported.
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Option: choose an export and enter transmission (no reply header).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: end the negotiation.
pub const OPT_ABORT: u32 = 2;
/// Option: list the exports.
pub const OPT_LIST: u32 = 3;
/// Option: upgrade to TLS (unsupported here).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: use structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option: use 64-bit extended headers (unsupported here).
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply: the option succeeded; final reply.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of an `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// Option reply: one piece of information for `NBD_OPT_INFO`/`NBD_OPT_GO`.
pub const REP_INFO: u32 = 3;
/// Option reply: one metadata context (`NBD_OPT_*_META_CONTEXT`).
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks an error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Option error: the option is not supported.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Option error: server policy forbids the option.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Option error: the option is malformed.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Option error: the export does not exist.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// Option error: the request or its reply is too large.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// Info type: export size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Info type: canonical export name.
pub const INFO_NAME: u16 = 1;
/// Info type: human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Info type: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write; the payload follows the request.
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect after the outstanding requests.
pub const CMD_DISC: u16 = 2;
/// Command: make every completed write durable.
pub const CMD_FLUSH: u16 = 3;
/// Command: discard a range.
pub const CMD_TRIM: u16 = 4;
/// Command: prefetch a range.
pub const CMD_CACHE: u16 = 5;
/// Command: write zeroes over a range.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: query block status (with a metadata context selected).
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access; reply only once the data is durable.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: `NBD_CMD_WRITE_ZEROES` must leave the range allocated.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Command flag: `NBD_CMD_BLOCK_STATUS` wants one extent only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: `NBD_CMD_WRITE_ZEROES` only if fast, else `ENOTSUP`.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flag: the last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply chunk: nothing (success, last chunk).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured reply chunk: read data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured reply chunk: block status descriptors of one context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Structured reply chunk: an error with a message.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
/// Length of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;

/// The one metadata context served: allocation (holes) and zeroes.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
/// Its context id on a connection that selected it.
pub const META_BASE_ALLOCATION_ID: u32 = 1;
/// `base:allocation` state bit: a hole (not allocated).
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` state bit: reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// Error value: operation not permitted (write to a read-only export).
pub const EPERM: u32 = 1;
/// Error value: I/O error.
pub const EIO: u32 = 5;
/// Error value: invalid argument.
pub const EINVAL: u32 = 22;
/// Error value: no space (write beyond the end of the export).
pub const ENOSPC: u32 = 28;
/// Error value: not supported (a FAST_ZERO that cannot be fast).
pub const ENOTSUP: u32 = 95;

/// Length of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;

/// Largest option payload this server reads; longer options are answered
/// with `NBD_REP_ERR_TOO_BIG` and the connection is dropped. Room for a
/// name of the protocol's 4096-byte maximum plus the `NBD_OPT_GO` framing.
pub const MAX_OPTION_LEN: u32 = 8 * 1024;
/// Most options accepted in one negotiation before the connection is
/// dropped as a denial of service.
pub const MAX_OPTIONS: usize = 1024;
/// Minimum block size advertised for a device that takes any alignment
/// (a device's own minimum, such as 4096 for O_DIRECT, replaces it).
pub const MIN_BLOCK_SIZE: u32 = 1;
/// Preferred block size advertised (or the minimum, if larger).
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Largest minimum block size the protocol allows.
pub const MAX_MIN_BLOCK_SIZE: u32 = 64 * 1024;
/// Largest read or write payload accepted (and advertised).
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Default most requests of one connection in flight at once; the server
/// reads no further request until one of them has been answered.
pub const MAX_IN_FLIGHT: usize = 64;
/// Default most payload bytes (read replies and write data) of one
/// connection held in memory at once; at least [`MAX_PAYLOAD`].
pub const MAX_IN_FLIGHT_BYTES: u32 = 2 * MAX_PAYLOAD;
/// Default most TRIM and WRITE_ZEROES requests of one connection in flight
/// at once.
pub const DEFAULT_MAX_ZEROING_IN_FLIGHT: usize = 4;
/// Default most bytes of one connection's reads handed to the device at
/// once: four pieces of 2 MiB, as much as one large read needs to keep a
/// remote volume busy.
pub const DEFAULT_MAX_READ_BYTES_ISSUED: u32 = 8 * 1024 * 1024;
/// Default most clients a listener serves at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default time a client has to finish the handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
