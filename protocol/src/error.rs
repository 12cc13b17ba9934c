//! Typed errors: what was wrong with a frame, which rule a peer broke, why a send was refused.

use crate::data::Data;
use crate::prelude::*;

use crate::frame::{FrameKind, Role};
use crate::text::{Text, display_by_message};

/// Why a text frame could not be decoded. [`DecodeError::class`] gives the language-neutral name
/// that `conformance/frames.json` uses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is longer than the connection's `max_frame_bytes`.
    TooLarge {
        /// The frame's length in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The frame is not one well-formed JSON value.
    InvalidJson {
        /// The parser's account of where and why.
        detail: String,
    },
    /// The frame is JSON but not an object.
    NotAnObject,
    /// The object has no usable `type` field.
    MissingType {
        /// Absent, not a string, or repeated.
        detail: String,
    },
    /// The `type` is not one this version defines.
    UnknownType {
        /// The `type` as received.
        kind: String,
    },
    /// The `type` is defined, but not for frames from this sender.
    WrongDirection {
        /// The frame's type.
        kind: FrameKind,
        /// Who sent it.
        sender: Role,
    },
    /// The `type` is known but a field is missing, of the wrong JSON type, or out of range.
    InvalidFrame {
        /// The frame's type.
        kind: FrameKind,
        /// What was wrong.
        detail: String,
        /// For a `msg` frame whose `id` could still be read: that id, so that the receiver can
        /// refuse this one message with a `nack`.
        msg_id: Option<u64>,
        /// Whether the frame was refused for its size.
        too_large: bool,
    },
}

impl DecodeError {
    /// The error's class, as named in the conformance vectors.
    pub const fn class(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::InvalidJson { .. } => "invalid_json",
            DecodeError::NotAnObject => "not_an_object",
            DecodeError::MissingType { .. } => "missing_type",
            DecodeError::UnknownType { .. } => "unknown_type",
            DecodeError::WrongDirection { .. } => "wrong_direction",
            DecodeError::InvalidFrame {
                too_large: true, ..
            } => "too_large",
            DecodeError::InvalidFrame { .. } => "invalid_frame",
        }
    }
}

/// What a peer must see next, for an error that says "expected X, got Y".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expected {
    /// The server's first frame: `welcome` (or `goaway`).
    Welcome,
    /// The client's first frame: `hello`.
    Hello,
    /// `connection_ready`, `ping`, `pong` or `goaway` while the handshake is under way.
    ConnectionReady,
    /// Any frame allowed after readiness.
    SessionFrame,
    /// Nothing but `ping`/`pong` until the server accepts or refuses the `hello`.
    ServerDecision,
}

impl Expected {
    /// The frames expected, as the error text names them.
    pub const fn as_str(self) -> &'static str {
        match self {
            Expected::Welcome => "`welcome` or `goaway`",
            Expected::Hello => "`hello`",
            Expected::ConnectionReady => "`connection_ready`, `ping`, `pong` or `goaway`",
            Expected::SessionFrame => "`msg`, `ack`, `nack`, `ping`, `pong` or `goaway`",
            Expected::ServerDecision => "`ping` or `pong` until the server answers the `hello`",
        }
    }
}

impl core::fmt::Display for Expected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule of `docs/PROTOCOL.md` the peer broke. The connection is closed with
/// [`crate::close::code::PROTOCOL_ERROR`] and the rule id is in the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame could not be decoded [FR-8].
    Decode(DecodeError),
    /// A frame arrived in a state that does not allow it [HS-10].
    UnexpectedFrame {
        /// What the state allows.
        expected: Expected,
        /// What arrived.
        got: FrameKind,
    },
    /// A `msg` skipped ids [DL-3].
    MessageGap {
        /// The next id in order.
        expected: u64,
        /// The id received.
        got: u64,
    },
    /// The peer had more unacknowledged messages in flight than `max_inflight` allows [FC-2].
    InflightExceeded {
        /// The id received.
        id: u64,
        /// The last cumulative ack this side sent.
        acked: u64,
        /// The window.
        max_inflight: u64,
    },
    /// An `ack` or `nack` named a message that was never sent [DL-5].
    AckOutOfRange {
        /// `ack` or `nack`.
        kind: FrameKind,
        /// The id acknowledged.
        id: u64,
        /// The highest id this side has sent in the session.
        highest_sent: u64,
    },
    /// A resume position is impossible: beyond what was sent, or behind what was acknowledged [RS-4].
    ResumePosition {
        /// The peer's `last_received`.
        claimed: u64,
        /// What contradicts it.
        detail: String,
    },
    /// `connection_ready` said `resumed: true` for a session other than the one asked for [RS-3].
    ResumedWrongSession {
        /// The session in the `hello`.
        asked: String,
        /// The session in `connection_ready`.
        got: String,
    },
    /// `connection_ready` said `resumed: true` although the client asked for no resume [RS-3].
    ResumedUnasked,
}

/// Why [`crate::ClientSession::send`] or [`crate::ServerSession::send`] refused a message.
/// The message comes back in [`SendError::into_data`]: nothing is lost.
#[derive(Debug)]
pub struct SendError {
    /// Why.
    pub reason: SendErrorReason,
    data: Data,
}

impl SendError {
    /// A refusal of `data` for `reason` (for drivers that refuse before reaching the session).
    pub fn new(reason: SendErrorReason, data: Data) -> Self {
        SendError { reason, data }
    }

    /// The message that was refused, to keep or to send again later.
    pub fn into_data(self) -> Data {
        self.data
    }
}

/// The reasons a send can be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendErrorReason {
    /// The queue holds its maximum number of messages.
    QueueFullCount {
        /// The limit.
        limit: usize,
    },
    /// The queue holds its maximum number of bytes.
    QueueFullBytes {
        /// Bytes already queued.
        queued: usize,
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The message alone is larger than any frame may be.
    TooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// `close` was called: the session takes no new messages.
    Closed,
}

/// Why [`crate::ServerConnection::refuse`] could not refuse a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseError {
    /// The connection carries no session.
    NoSession,
    /// The message was not received, or its `ack` or a later refusal already went out.
    TooLate {
        /// The message.
        id: u64,
    },
}

impl DecodeError {
    /// The error's text, as its `Display` writes it.
    pub fn message(&self) -> String {
        match self {
            DecodeError::TooLarge { len, max } => Text::from("frame of ")
                .size(*len)
                .s(" bytes exceeds the limit of ")
                .size(*max)
                .s(" bytes")
                .done(),
            DecodeError::InvalidJson { detail } => {
                Text::from("frame is not valid JSON: ").s(detail).done()
            }
            DecodeError::NotAnObject => "frame is not a JSON object".to_owned(),
            DecodeError::MissingType { detail } => {
                Text::from("frame has no usable `type`: ").s(detail).done()
            }
            DecodeError::UnknownType { kind } => {
                Text::from("unknown frame type `").s(kind).s("`").done()
            }
            DecodeError::WrongDirection { kind, sender } => Text::from("a ")
                .s(sender.as_str())
                .s(" may not send `")
                .s(kind.as_str())
                .s("` frames")
                .done(),
            DecodeError::InvalidFrame { kind, detail, .. } => Text::from("invalid `")
                .s(kind.as_str())
                .s("` frame: ")
                .s(detail)
                .done(),
        }
    }
}

impl ProtocolError {
    /// The error's text, as its `Display` writes it: the broken rule's id first.
    pub fn message(&self) -> String {
        match self {
            ProtocolError::Decode(error) => Text::from("[FR-8] ").s(&error.message()).done(),
            ProtocolError::UnexpectedFrame { expected, got } => Text::from("[HS-10] expected ")
                .s(expected.as_str())
                .s(", got `")
                .s(got.as_str())
                .s("`")
                .done(),
            ProtocolError::MessageGap { expected, got } => Text::from("[DL-3] expected `msg` id ")
                .n(*expected)
                .s(", got ")
                .n(*got)
                .done(),
            ProtocolError::InflightExceeded {
                id,
                acked,
                max_inflight,
            } => Text::from("[FC-2] `msg` id ")
                .n(*id)
                .s(" exceeds the window: at most ")
                .n(*max_inflight)
                .s(" beyond the last ack ")
                .n(*acked)
                .done(),
            ProtocolError::AckOutOfRange {
                kind,
                id,
                highest_sent,
            } => Text::from("[DL-5] `")
                .s(kind.as_str())
                .s("` for id ")
                .n(*id)
                .s(", but the highest id sent is ")
                .n(*highest_sent)
                .done(),
            ProtocolError::ResumePosition { claimed, detail } => {
                Text::from("[RS-4] peer claims to have received up to id ")
                    .n(*claimed)
                    .s(", but ")
                    .s(detail)
                    .done()
            }
            ProtocolError::ResumedWrongSession { asked, got } => {
                Text::from("[RS-3] `connection_ready` resumed session `")
                    .s(got)
                    .s("`, but the client asked for `")
                    .s(asked)
                    .s("`")
                    .done()
            }
            ProtocolError::ResumedUnasked => {
                "[RS-3] `connection_ready` says `resumed: true`, but the client asked for no resume"
                    .to_owned()
            }
        }
    }
}

impl From<DecodeError> for ProtocolError {
    fn from(error: DecodeError) -> Self {
        ProtocolError::Decode(error)
    }
}

impl SendError {
    /// The refusal's text, as its `Display` writes it.
    pub fn message(&self) -> String {
        self.reason.message()
    }
}

impl SendErrorReason {
    /// The reason's text, as its `Display` writes it.
    pub fn message(&self) -> String {
        match self {
            SendErrorReason::QueueFullCount { limit } => {
                Text::from("the outbox is full: it holds its limit of ")
                    .size(*limit)
                    .s(" messages")
                    .done()
            }
            SendErrorReason::QueueFullBytes {
                queued,
                size,
                limit,
            } => Text::from("the outbox is full: ")
                .size(*queued)
                .s(" bytes queued, a ")
                .size(*size)
                .s("-byte message would pass the limit of ")
                .size(*limit)
                .done(),
            SendErrorReason::TooLarge { size, limit } => Text::from("a ")
                .size(*size)
                .s("-byte message exceeds the limit of ")
                .size(*limit)
                .s(" bytes")
                .done(),
            SendErrorReason::Closed => "the session is closing or closed".to_owned(),
        }
    }
}

impl RefuseError {
    /// The error's text, as its `Display` writes it.
    pub fn message(&self) -> String {
        match self {
            RefuseError::NoSession => "the connection carries no session".to_owned(),
            RefuseError::TooLate { id } => Text::from("message ")
                .n(*id)
                .s(" can no longer be refused: it was not received or is already settled")
                .done(),
        }
    }
}

display_by_message!(
    DecodeError,
    ProtocolError,
    SendError,
    SendErrorReason,
    RefuseError
);

impl core::error::Error for DecodeError {}
impl core::error::Error for SendError {}
impl core::error::Error for SendErrorReason {}
impl core::error::Error for RefuseError {}

impl core::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ProtocolError::Decode(error) => Some(error),
            _ => None,
        }
    }
}
