//! Typed errors: what was wrong with a frame, which rule a peer broke, why a send was refused.

use crate::data::Data;
use crate::prelude::*;
use thiserror::Error;

use crate::frame::{FrameKind, Role};

/// Why a text frame could not be decoded. [`DecodeError::class`] gives the language-neutral name
/// that `docs/conformance/frames.json` uses.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is longer than the connection's `max_frame_bytes`.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The frame is not one well-formed JSON value.
    #[error("frame is not valid JSON: {detail}")]
    InvalidJson {
        /// The parser's account of where and why.
        detail: String,
    },
    /// The frame is JSON but not an object.
    #[error("frame is not a JSON object")]
    NotAnObject,
    /// The object has no usable `type` field.
    #[error("frame has no usable `type`: {detail}")]
    MissingType {
        /// Absent, not a string, or repeated.
        detail: String,
    },
    /// The `type` is not one this version defines.
    #[error("unknown frame type `{kind}`")]
    UnknownType {
        /// The `type` as received.
        kind: String,
    },
    /// The `type` is defined, but not for frames from this sender.
    #[error("a {sender} may not send `{kind}` frames")]
    WrongDirection {
        /// The frame's type.
        kind: FrameKind,
        /// Who sent it.
        sender: Role,
    },
    /// The `type` is known but a field is missing, of the wrong JSON type, or out of range.
    #[error("invalid `{kind}` frame: {detail}")]
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

impl core::fmt::Display for Expected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Expected::Welcome => "`welcome` or `goaway`",
            Expected::Hello => "`hello`",
            Expected::ConnectionReady => "`connection_ready`, `ping`, `pong` or `goaway`",
            Expected::SessionFrame => "`msg`, `ack`, `nack`, `ping`, `pong` or `goaway`",
            Expected::ServerDecision => "`ping` or `pong` until the server answers the `hello`",
        })
    }
}

/// A rule of `docs/PROTOCOL.md` the peer broke. The connection is closed with
/// [`crate::close::code::PROTOCOL_ERROR`] and the rule id is in the reason.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame could not be decoded [FR-8].
    #[error("[FR-8] {0}")]
    Decode(#[from] DecodeError),
    /// A frame arrived in a state that does not allow it [HS-10].
    #[error("[HS-10] expected {expected}, got `{got}`")]
    UnexpectedFrame {
        /// What the state allows.
        expected: Expected,
        /// What arrived.
        got: FrameKind,
    },
    /// A `msg` skipped ids [DL-3].
    #[error("[DL-3] expected `msg` id {expected}, got {got}")]
    MessageGap {
        /// The next id in order.
        expected: u64,
        /// The id received.
        got: u64,
    },
    /// The peer had more unacknowledged messages in flight than `max_inflight` allows [FC-2].
    #[error(
        "[FC-2] `msg` id {id} exceeds the window: at most {max_inflight} beyond the last ack {acked}"
    )]
    InflightExceeded {
        /// The id received.
        id: u64,
        /// The last cumulative ack this side sent.
        acked: u64,
        /// The window.
        max_inflight: u64,
    },
    /// An `ack` or `nack` named a message that was never sent [DL-5].
    #[error("[DL-5] `{kind}` for id {id}, but the highest id sent is {highest_sent}")]
    AckOutOfRange {
        /// `ack` or `nack`.
        kind: FrameKind,
        /// The id acknowledged.
        id: u64,
        /// The highest id this side has sent in the session.
        highest_sent: u64,
    },
    /// A resume position is impossible: beyond what was sent, or behind what was acknowledged [RS-4].
    #[error("[RS-4] peer claims to have received up to id {claimed}, but {detail}")]
    ResumePosition {
        /// The peer's `last_received`.
        claimed: u64,
        /// What contradicts it.
        detail: String,
    },
    /// `connection_ready` said `resumed: true` for a session other than the one asked for [RS-3].
    #[error(
        "[RS-3] `connection_ready` resumed session `{got}`, but the client asked for `{asked}`"
    )]
    ResumedWrongSession {
        /// The session in the `hello`.
        asked: String,
        /// The session in `connection_ready`.
        got: String,
    },
    /// `connection_ready` said `resumed: true` although the client asked for no resume [RS-3].
    #[error("[RS-3] `connection_ready` says `resumed: true`, but the client asked for no resume")]
    ResumedUnasked,
}

/// Why [`crate::ClientSession::send`] or [`crate::ServerSession::send`] refused a message.
/// The message comes back in [`SendError::into_data`]: nothing is lost.
#[derive(Debug, Error)]
#[error("{reason}")]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendErrorReason {
    /// The queue holds its maximum number of messages.
    #[error("the outbox is full: it holds its limit of {limit} messages")]
    QueueFullCount {
        /// The limit.
        limit: usize,
    },
    /// The queue holds its maximum number of bytes.
    #[error(
        "the outbox is full: {queued} bytes queued, a {size}-byte message would pass the limit of {limit}"
    )]
    QueueFullBytes {
        /// Bytes already queued.
        queued: usize,
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The message alone is larger than any frame may be.
    #[error("a {size}-byte message exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// `close` was called: the session takes no new messages.
    #[error("the session is closing or closed")]
    Closed,
}

/// Why [`crate::ServerConnection::refuse`] could not refuse a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RefuseError {
    /// The connection carries no session.
    #[error("the connection carries no session")]
    NoSession,
    /// The message was not received, or its `ack` or a later refusal already went out.
    #[error("message {id} can no longer be refused: it was not received or is already settled")]
    TooLate {
        /// The message.
        id: u64,
    },
}
