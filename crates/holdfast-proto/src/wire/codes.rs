//! Numeric codes that travel on the wire: error codes carried by ERROR frames,
//! reject reasons carried by LOGIN_REJECT frames and the status codes of
//! status responses (RESP with the STATUS flag).

use std::fmt;

/// Why a connection is being closed for a protocol violation or a local
/// policy. Carried by the ERROR frame; see docs/PROTOCOL.md §8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame's fields are inconsistent (bad length for its type, reserved bits set, ...).
    Malformed,
    /// The frame type byte is not one this version defines.
    UnknownFrameType,
    /// The frame is longer than the receiver's negotiated maximum.
    FrameTooLarge,
    /// The CRC32C header digest did not match.
    HeaderDigest,
    /// The CRC32C data digest did not match.
    DataDigest,
    /// The frame is valid but not allowed in the receiver's current state or direction.
    UnexpectedFrame,
    /// A sequence number skipped ahead of the next expected one.
    SequenceGap,
    /// The sender sent past the credit limit it was granted.
    CreditExceeded,
    /// An acknowledgement acknowledged something never sent, or went backwards.
    AckOutOfRange,
    /// A response named a command that is not outstanding.
    UnknownCommand,
    /// The login did not complete in time.
    LoginTimeout,
    /// Nothing arrived within the negotiated inactivity time.
    Inactivity,
    /// Another connection recovered this session; this one is fenced off.
    Fenced,
    /// The first frame was not a holdfast LOGIN.
    BadMagic,
    /// A FIN arrived while messages or responses were still outstanding.
    FinWithOutstanding,
    /// The target closed the connection after its shutdown notice.
    Shutdown,
    /// A PONG answered no outstanding PING.
    UnexpectedPong,
    /// The receiver would exceed its memory budget (or another resource
    /// limit) by taking this connection's next frame; the text says which.
    Overloaded,
    /// A code this implementation does not know (kept verbatim).
    Other(u16),
}

impl ErrorCode {
    /// The code's wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::UnknownFrameType => 2,
            ErrorCode::FrameTooLarge => 3,
            ErrorCode::HeaderDigest => 4,
            ErrorCode::DataDigest => 5,
            ErrorCode::UnexpectedFrame => 6,
            ErrorCode::SequenceGap => 7,
            ErrorCode::CreditExceeded => 8,
            ErrorCode::AckOutOfRange => 9,
            ErrorCode::UnknownCommand => 10,
            ErrorCode::LoginTimeout => 11,
            ErrorCode::Inactivity => 12,
            ErrorCode::Fenced => 13,
            ErrorCode::BadMagic => 14,
            ErrorCode::FinWithOutstanding => 15,
            ErrorCode::Shutdown => 16,
            ErrorCode::UnexpectedPong => 17,
            ErrorCode::Overloaded => 18,
            ErrorCode::Other(v) => v,
        }
    }

    /// Decodes a wire value; unknown values are kept as [`ErrorCode::Other`].
    pub fn from_wire(v: u16) -> Self {
        match v {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnknownFrameType,
            3 => ErrorCode::FrameTooLarge,
            4 => ErrorCode::HeaderDigest,
            5 => ErrorCode::DataDigest,
            6 => ErrorCode::UnexpectedFrame,
            7 => ErrorCode::SequenceGap,
            8 => ErrorCode::CreditExceeded,
            9 => ErrorCode::AckOutOfRange,
            10 => ErrorCode::UnknownCommand,
            11 => ErrorCode::LoginTimeout,
            12 => ErrorCode::Inactivity,
            13 => ErrorCode::Fenced,
            14 => ErrorCode::BadMagic,
            15 => ErrorCode::FinWithOutstanding,
            16 => ErrorCode::Shutdown,
            17 => ErrorCode::UnexpectedPong,
            18 => ErrorCode::Overloaded,
            other => ErrorCode::Other(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({})", self.to_wire())
    }
}

/// Why a target refused a login. Carried by LOGIN_REJECT; see docs/PROTOCOL.md §5.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// No version in the initiator's range is supported; the reject carries the target's range.
    UnsupportedVersion,
    /// The target holds no state for this session and remembers nothing of
    /// it. Either this incarnation never issued it, or it ended (expired or
    /// closed) so long ago that its tombstone was dropped: tombstones are
    /// bounded, so an ended session can end up looking like an unknown one.
    /// Stateless either way.
    UnknownSession,
    /// The session was issued by an earlier incarnation of the target: it restarted and lost it.
    TargetRestarted,
    /// The session existed but its retain time passed without a connection.
    SessionExpired,
    /// The session exists but the secret presented does not match.
    BadSecret,
    /// The target is at its session limit; try again later.
    TooManySessions,
    /// The target is shutting down; `retry_after` says when to try again.
    ShuttingDown,
    /// The session was closed cleanly with FIN; nothing remains to recover.
    SessionClosed,
    /// The LOGIN's `max_frame` is below [`super::MIN_MAX_FRAME`], or a
    /// recovery LOGIN's is below the one the session's previous login
    /// carried (its cached responses were sized for that). The same LOGIN
    /// will never succeed: `retry_after` is [`super::NEVER_MS`]. The session,
    /// if any, is untouched.
    MaxFrameTooSmall,
    /// The LOGIN's `keepalive_ms` is 0, 0xFFFFFFFF, or longer than the
    /// longest inactivity deadline the target grants (its
    /// `max_inactivity`). The same LOGIN will never succeed: `retry_after`
    /// is [`super::NEVER_MS`]. The session, if any, is untouched.
    KeepaliveRejected,
    /// The LOGIN's HOST record names a host this node fenced at an epoch
    /// above the LOGIN's (PROTOCOL.md §11.5). For a recovery the session was
    /// ended by the fence (stateless); for a new session the same LOGIN will
    /// never succeed (`retry_after` is [`super::NEVER_MS`]): log in again
    /// with the host's current epoch.
    Fenced,
    /// A reason this implementation does not know (kept verbatim).
    Other(u16),
}

impl RejectReason {
    /// The reason's wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            RejectReason::UnsupportedVersion => 1,
            RejectReason::UnknownSession => 2,
            RejectReason::TargetRestarted => 3,
            RejectReason::SessionExpired => 4,
            RejectReason::BadSecret => 5,
            RejectReason::TooManySessions => 6,
            RejectReason::ShuttingDown => 7,
            RejectReason::SessionClosed => 8,
            RejectReason::MaxFrameTooSmall => 9,
            RejectReason::KeepaliveRejected => 10,
            RejectReason::Fenced => 11,
            RejectReason::Other(v) => v,
        }
    }

    /// Decodes a wire value; unknown values are kept as [`RejectReason::Other`].
    pub fn from_wire(v: u16) -> Self {
        match v {
            1 => RejectReason::UnsupportedVersion,
            2 => RejectReason::UnknownSession,
            3 => RejectReason::TargetRestarted,
            4 => RejectReason::SessionExpired,
            5 => RejectReason::BadSecret,
            6 => RejectReason::TooManySessions,
            7 => RejectReason::ShuttingDown,
            8 => RejectReason::SessionClosed,
            9 => RejectReason::MaxFrameTooSmall,
            10 => RejectReason::KeepaliveRejected,
            11 => RejectReason::Fenced,
            other => RejectReason::Other(other),
        }
    }

    /// True when the target holds no recoverable state for the session, so
    /// only stateless recovery (a new session) is possible.
    pub fn is_stateless(self) -> bool {
        matches!(
            self,
            RejectReason::UnknownSession
                | RejectReason::TargetRestarted
                | RejectReason::SessionExpired
                | RejectReason::BadSecret
                | RejectReason::SessionClosed
                | RejectReason::Fenced
        )
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            RejectReason::UnsupportedVersion => "no protocol version in common",
            RejectReason::UnknownSession => "the target has no state for this session",
            RejectReason::TargetRestarted => "the target restarted and lost the session",
            RejectReason::SessionExpired => "the session's retain time expired",
            RejectReason::BadSecret => "the session secret did not match",
            RejectReason::TooManySessions => "the target is at its session limit",
            RejectReason::ShuttingDown => "the target is shutting down",
            RejectReason::SessionClosed => "the session was closed",
            RejectReason::MaxFrameTooSmall => "the login's max_frame is too small",
            RejectReason::KeepaliveRejected => "the login's keepalive_ms is not accepted",
            RejectReason::Fenced => "this host was fenced on this node at a higher epoch",
            RejectReason::Other(_) => "unknown reason",
        };
        write!(f, "{text} (reject {})", self.to_wire())
    }
}

/// The status of a status response: a RESP with the STATUS flag, sent
/// instead of the service's response. For `ResponseTooLarge` and
/// `ServiceFailed` the command **did execute** and only its response is
/// replaced; `NotExecuted` says it never ran and never will. See
/// docs/PROTOCOL.md §6.7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResponseStatus {
    /// The command executed, but its response was larger than the largest
    /// response the initiator accepts (its `max_frame` − 32).
    ResponseTooLarge,
    /// The command was **not executed** and never will be: the node's
    /// quiesce promise or a fence forbade starting it (PROTOCOL.md §11.4).
    /// It may be issued again, on this node or another.
    NotExecuted,
    /// The command executed and the service reported an error instead of
    /// a response; the text is the error's description, cut to fit.
    ServiceFailed,
    /// A status this implementation does not know (kept verbatim).
    Other(u16),
}

impl ResponseStatus {
    /// The status's wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            ResponseStatus::ResponseTooLarge => 1,
            ResponseStatus::NotExecuted => 2,
            ResponseStatus::ServiceFailed => 3,
            ResponseStatus::Other(v) => v,
        }
    }

    /// Decodes a wire value; unknown values are kept as [`ResponseStatus::Other`].
    pub fn from_wire(v: u16) -> Self {
        match v {
            1 => ResponseStatus::ResponseTooLarge,
            2 => ResponseStatus::NotExecuted,
            3 => ResponseStatus::ServiceFailed,
            other => ResponseStatus::Other(other),
        }
    }
}

impl fmt::Display for ResponseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} (status {})", self.to_wire())
    }
}
