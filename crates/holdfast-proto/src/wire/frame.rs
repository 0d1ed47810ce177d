//! The frames of the holdfast wire protocol, as Rust values.
//!
//! The byte layout of each is in docs/PROTOCOL.md §3–§4; [`super::encode`] and
//! [`super::decode`] are the only places that know it.

use bytes::Bytes;

use crate::ids::{SessionId, SessionSecret};
use crate::Seq;

use super::codes::{ErrorCode, RejectReason, ResponseStatus};
use super::extension::{FenceResult, HostId, HostRecord};

/// Frame type bytes (docs/PROTOCOL.md §4).
pub mod kind {
    /// LOGIN, initiator to target.
    pub const LOGIN: u8 = 0x01;
    /// CMD, initiator to target.
    pub const COMMAND: u8 = 0x02;
    /// MSG, initiator to target.
    pub const MESSAGE: u8 = 0x03;
    /// ACK, initiator to target.
    pub const INITIATOR_ACK: u8 = 0x04;
    /// PING, initiator to target.
    pub const PING: u8 = 0x05;
    /// FIN, initiator to target.
    pub const FIN: u8 = 0x06;
    /// FENCE, initiator to target.
    pub const FENCE: u8 = 0x08;
    /// ERROR, either direction.
    pub const ERROR: u8 = 0x07;
    /// LOGIN_ACCEPT, target to initiator.
    pub const LOGIN_ACCEPT: u8 = 0x11;
    /// LOGIN_REJECT, target to initiator.
    pub const LOGIN_REJECT: u8 = 0x12;
    /// RESP, target to initiator.
    pub const RESPONSE: u8 = 0x13;
    /// TACK, target to initiator.
    pub const TARGET_ACK: u8 = 0x14;
    /// PONG, target to initiator.
    pub const PONG: u8 = 0x15;
    /// SHUTDOWN, target to initiator.
    pub const SHUTDOWN: u8 = 0x16;
    /// FIN_ACK, target to initiator.
    pub const FIN_ACK: u8 = 0x17;
    /// FENCE_DONE, target to initiator.
    pub const FENCE_DONE: u8 = 0x18;
}

/// Whether a LOGIN creates a session or recovers one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginKind {
    /// Create a new session.
    New,
    /// Recover the named session on this new connection (fences every
    /// other connection of the session).
    Recover,
    /// Add this connection to the named session, beside the connections it
    /// already has (none of them is fenced; PROTOCOL.md §17).
    Join,
}

/// Which CRC32C digests a connection carries (negotiated at login).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// A CRC32C over the common header and fixed fields of every frame.
    pub header: bool,
    /// A CRC32C over the payload of every frame.
    pub data: bool,
}

impl Digests {
    /// No digests.
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };

    /// The flag bits for these digests.
    pub(crate) fn bits(self) -> u8 {
        u8::from(self.header) | (u8::from(self.data) << 1)
    }

    /// Parses flag bits; `None` if reserved bits are set.
    pub(crate) fn from_bits(bits: u8) -> Option<Self> {
        (bits & !0b11 == 0).then_some(Digests {
            header: bits & 1 != 0,
            data: bits & 2 != 0,
        })
    }

    /// The digests both sides want.
    pub fn intersect(self, other: Digests) -> Digests {
        Digests {
            header: self.header && other.header,
            data: self.data && other.data,
        }
    }
}

/// The LOGIN frame: the first frame on every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// Lowest protocol version the initiator speaks.
    pub min_version: u16,
    /// Highest protocol version the initiator speaks.
    pub max_version: u16,
    /// New session or recovery.
    pub kind: LoginKind,
    /// Digests the initiator asks for.
    pub digests: Digests,
    /// The session to recover (zero for a new session).
    pub session: SessionId,
    /// The secret issued with the session (zeros for a new session).
    pub secret: SessionSecret,
    /// The initiator's cumulative acknowledgement of the target's stream.
    pub response_ack: Seq,
    /// The largest frame length the initiator accepts.
    pub max_frame: u32,
    /// The initiator promises to send something at least this often (ms).
    pub keepalive_ms: u32,
    /// The credit window the initiator would like.
    pub requested_credits: u32,
    /// The HOST record of the extension area, if any (PROTOCOL.md §5.2.1):
    /// present, the login is multipath-capable.
    pub host: Option<HostRecord>,
}

/// The LOGIN_ACCEPT frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginAccept {
    /// The protocol version chosen for this connection.
    pub version: u16,
    /// The digests both sides use from the next frame on.
    pub digests: Digests,
    /// Whether a new session was created or an existing one recovered.
    pub kind: LoginKind,
    /// The session.
    pub session: SessionId,
    /// The session's secret for a new session; zeros on recovery.
    pub secret: SessionSecret,
    /// The target's cumulative acknowledgement of the initiator's stream.
    pub command_ack: Seq,
    /// The highest sequence number the initiator may send.
    pub credit_limit: Seq,
    /// The largest frame length the target accepts.
    pub max_frame: u32,
    /// The target closes the connection after this long without input (ms).
    pub inactivity_ms: u32,
    /// How long the target keeps the session without a connection (ms).
    pub retain_ms: u32,
    /// The credit window granted.
    pub credits: u32,
    /// The node's command quiesce time for this connection (ms): 0 unless
    /// the LOGIN carried a HOST record (PROTOCOL.md §11.4).
    pub quiesce_ms: u32,
}

/// The LOGIN_REJECT frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginReject {
    /// Why.
    pub reason: RejectReason,
    /// Lowest version the target speaks.
    pub min_version: u16,
    /// Highest version the target speaks.
    pub max_version: u16,
    /// When to try again (ms); [`NEVER_MS`] for never, 0 for "now is fine".
    pub retry_after_ms: u32,
    /// Human-readable detail.
    pub text: String,
}

/// The value of a millisecond field that means "never".
pub const NEVER_MS: u32 = u32::MAX;

/// One frame of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// First frame of a connection (initiator to target).
    Login(Login),
    /// A command: a message that expects a response.
    Command {
        /// Its sequence number in the initiator's stream.
        seq: Seq,
        /// Cumulative acknowledgement of the target's stream.
        ack: Seq,
        /// The request.
        payload: Bytes,
    },
    /// A one-way message.
    Message {
        /// Its sequence number in the initiator's stream.
        seq: Seq,
        /// Cumulative acknowledgement of the target's stream.
        ack: Seq,
        /// The message.
        payload: Bytes,
    },
    /// A standalone acknowledgement from the initiator.
    InitiatorAck {
        /// Cumulative acknowledgement of the target's stream.
        ack: Seq,
    },
    /// A keep-alive probe.
    Ping {
        /// Echoed by the PONG.
        token: u64,
        /// Cumulative acknowledgement of the target's stream.
        ack: Seq,
    },
    /// The initiator's clean close.
    Fin {
        /// The last sequence number the initiator sent.
        last_seq: Seq,
        /// Cumulative acknowledgement of the target's stream.
        ack: Seq,
    },
    /// A connection-fatal error, either direction.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        text: String,
    },
    /// The target's answer to a login that succeeded.
    LoginAccept(LoginAccept),
    /// The target's answer to a login that failed.
    LoginReject(LoginReject),
    /// A command's response.
    Response {
        /// Its sequence number in the target's stream.
        seq: Seq,
        /// The command it answers.
        command: Seq,
        /// Cumulative acknowledgement of the initiator's stream.
        ack: Seq,
        /// The initiator's credit limit.
        limit: Seq,
        /// The response.
        payload: Bytes,
    },
    /// A status response: a RESP (type 0x13) with the STATUS flag, sent
    /// instead of a command's response when that cannot be delivered (the
    /// command did execute). It takes the response's place in the target's
    /// stream: cached, resent and acknowledged like any response.
    StatusResponse {
        /// Its sequence number in the target's stream.
        seq: Seq,
        /// The command it answers.
        command: Seq,
        /// Cumulative acknowledgement of the initiator's stream.
        ack: Seq,
        /// The initiator's credit limit.
        limit: Seq,
        /// What happened.
        status: ResponseStatus,
        /// Human-readable detail (UTF-8).
        text: String,
    },
    /// A standalone acknowledgement and credit update from the target.
    TargetAck {
        /// Cumulative acknowledgement of the initiator's stream.
        ack: Seq,
        /// The initiator's credit limit.
        limit: Seq,
    },
    /// The answer to a PING.
    Pong {
        /// The PING's token.
        token: u64,
        /// Cumulative acknowledgement of the initiator's stream.
        ack: Seq,
        /// The initiator's credit limit.
        limit: Seq,
    },
    /// The target's notice that it is going away.
    Shutdown {
        /// The connection stays up this long (ms).
        max_up_ms: u32,
        /// Do not reconnect for this long after that (ms); [`NEVER_MS`] for never.
        min_hold_ms: u32,
        /// Cumulative acknowledgement of the initiator's stream.
        ack: Seq,
        /// The initiator's credit limit.
        limit: Seq,
    },
    /// The target's answer to FIN: the session is gone.
    FinAck {
        /// The last sequence number the target received.
        ack: Seq,
    },
    /// A request to fence a host's older sessions on a node (initiator to
    /// target, outside both streams; PROTOCOL.md §11.5).
    Fence {
        /// Echoed by the FENCE_DONE.
        token: u64,
        /// The incarnation of the node to fence (the high 32 bits of the
        /// session ids it issues).
        node: u32,
        /// The host whose sessions are fenced.
        host: HostId,
        /// Sessions of `host` created with an epoch below this are fenced.
        epoch: u64,
    },
    /// The answer to a FENCE (target to initiator).
    FenceDone {
        /// The FENCE's token.
        token: u64,
        /// What happened.
        result: FenceResult,
        /// How long the fenced node waited for running commands (ms).
        waited_ms: u32,
    },
}

impl Frame {
    /// The frame's type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Login(_) => kind::LOGIN,
            Frame::Command { .. } => kind::COMMAND,
            Frame::Message { .. } => kind::MESSAGE,
            Frame::InitiatorAck { .. } => kind::INITIATOR_ACK,
            Frame::Ping { .. } => kind::PING,
            Frame::Fin { .. } => kind::FIN,
            Frame::Error { .. } => kind::ERROR,
            Frame::LoginAccept(_) => kind::LOGIN_ACCEPT,
            Frame::LoginReject(_) => kind::LOGIN_REJECT,
            Frame::Response { .. } | Frame::StatusResponse { .. } => kind::RESPONSE,
            Frame::TargetAck { .. } => kind::TARGET_ACK,
            Frame::Pong { .. } => kind::PONG,
            Frame::Shutdown { .. } => kind::SHUTDOWN,
            Frame::FinAck { .. } => kind::FIN_ACK,
            Frame::Fence { .. } => kind::FENCE,
            Frame::FenceDone { .. } => kind::FENCE_DONE,
        }
    }

    /// The payload carried after the fixed fields (empty for most frames).
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::Command { payload, .. }
            | Frame::Message { payload, .. }
            | Frame::Response { payload, .. } => payload.len(),
            Frame::Error { text, .. } => text.len(),
            Frame::StatusResponse { text, .. } => STATUS_CODE_LEN + text.len(),
            Frame::LoginReject(r) => r.text.len(),
            Frame::Login(l) => l.host.map_or(0, |_| {
                super::extension::RECORD_HEADER_LEN + usize::from(super::extension::HOST_RECORD_LEN)
            }),
            _ => 0,
        }
    }
}

/// Which way a frame travels; each decoder accepts one direction only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Frames sent by the initiator (decoded by the target).
    ToTarget,
    /// Frames sent by the target (decoded by the initiator).
    ToInitiator,
}

/// The size of each type's fixed fields, and whether it may travel in `dir`.
/// `None` for unknown types or the wrong direction.
pub(crate) fn fixed_len(kind: u8, dir: Direction) -> Option<usize> {
    use Direction::*;
    let (len, ok) = match kind {
        kind::LOGIN => (LOGIN_FIXED, dir == ToTarget),
        kind::COMMAND | kind::MESSAGE | kind::PING | kind::FIN => (16, dir == ToTarget),
        kind::INITIATOR_ACK => (8, dir == ToTarget),
        kind::ERROR => (4, true),
        kind::LOGIN_ACCEPT => (ACCEPT_FIXED, dir == ToInitiator),
        kind::LOGIN_REJECT => (16, dir == ToInitiator),
        kind::RESPONSE => (32, dir == ToInitiator),
        kind::TARGET_ACK => (16, dir == ToInitiator),
        kind::PONG | kind::SHUTDOWN => (24, dir == ToInitiator),
        kind::FIN_ACK => (8, dir == ToInitiator),
        kind::FENCE => (FENCE_FIXED, dir == ToTarget),
        kind::FENCE_DONE => (16, dir == ToInitiator),
        _ => return None,
    };
    ok.then_some(len)
}

/// Whether a type may carry a payload after its fixed fields.
pub(crate) fn has_payload(kind: u8) -> bool {
    matches!(
        kind,
        kind::LOGIN
            | kind::COMMAND
            | kind::MESSAGE
            | kind::RESPONSE
            | kind::ERROR
            | kind::LOGIN_REJECT
    )
}

/// The flag bit (bit 2 of the `flags` byte) that marks a RESP as a status
/// response; no other frame may set it.
pub const STATUS_FLAG: u8 = 0x04;
/// The status code that opens a status response's payload.
pub const STATUS_CODE_LEN: usize = 2;

/// Length of LOGIN's fixed fields.
pub(crate) const LOGIN_FIXED: usize = 60;
/// Length of FENCE's fixed fields.
pub(crate) const FENCE_FIXED: usize = 40;
/// Length of LOGIN_ACCEPT's fixed fields.
pub(crate) const ACCEPT_FIXED: usize = 64;
/// The magic that opens every LOGIN: "HFST".
pub const LOGIN_MAGIC: [u8; 4] = *b"HFST";
/// The longest text an ERROR or LOGIN_REJECT may carry.
pub const MAX_TEXT: usize = 256;
/// The longest extension area a LOGIN may carry (a list of records,
/// PROTOCOL.md §5.2.1).
pub const MAX_LOGIN_EXTENSION: usize = 1024;
/// The common header: type, flags, reserved, length.
pub const HEADER_LEN: usize = 8;
/// The protocol versions this implementation speaks.
pub const VERSION_MIN: u16 = 1;
/// The highest protocol version this implementation speaks.
pub const VERSION_MAX: u16 = 1;
/// The smallest `max_frame` a LOGIN may carry: LOGIN_ACCEPT's fixed fields
/// (64 bytes) are checked against it, so an initiator with a smaller limit
/// could not receive the answer to its own login. It also leaves room for
/// every other frame the target sends with an empty payload (RESP: 32).
pub const MIN_MAX_FRAME: u32 = ACCEPT_FIXED as u32;
