//! The readyws v1 wire frames (`docs/PROTOCOL.md` §3).
//!
//! Every frame is one JSON object with a string field `type`. The structs here hold the other
//! fields; [`Frame`] adds the `type` when it is encoded, and [`crate::codec`] reads it first when
//! a frame is decoded, so that each error can say which frame was wrong.

use crate::prelude::*;
use core::fmt;

use crate::data::Data;
use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol a readyws v1 client asks for and a readyws v1 server selects.
pub const SUBPROTOCOL: &str = "readyws.v1";

/// The value of `welcome.protocol` for this version of the protocol.
pub const PROTOCOL_VERSION: u64 = 1;

/// The largest integer a JSON number may carry in this protocol (2^53 − 1), so that JavaScript
/// peers read every id exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The smallest `max_frame_bytes` a server may announce; handshake frames must always fit.
pub const MIN_MAX_FRAME_BYTES: u64 = 4096;

/// The bytes of a `msg` frame besides its id's digits and its `data`:
/// `{"type":"msg","id":,"data":}` as the codec writes it.
pub const MSG_FRAME_OVERHEAD: usize = r#"{"type":"msg","id":,"data":}"#.len();

/// The largest `data`, in bytes, that a `msg` frame can carry on a connection whose frames are
/// limited to `max_frame_bytes`, with the shortest id (one digit). A larger payload fits no frame
/// of that connection, whatever its id [FR-6].
pub const fn max_msg_data_bytes(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_sub(MSG_FRAME_OVERHEAD + 1)
}

/// The size limit a client applies to frames that arrive before `welcome` tells it the real one.
pub const PRE_WELCOME_MAX_FRAME_BYTES: usize = 16 * 1024;

/// The longest `session_id` in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// The longest `resume_token` in bytes.
pub const MAX_RESUME_TOKEN_BYTES: usize = 512;

/// The longest `goaway.reason` a sender may write, in bytes: it must fit a WebSocket close frame.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The name of a frame type, as written in the `type` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// `welcome`, server → client.
    Welcome,
    /// `hello`, client → server.
    Hello,
    /// `connection_ready`, server → client.
    ConnectionReady,
    /// `msg`, both directions.
    Msg,
    /// `ack`, both directions.
    Ack,
    /// `nack`, both directions.
    Nack,
    /// `ping`, both directions.
    Ping,
    /// `pong`, both directions.
    Pong,
    /// `goaway`, server → client.
    Goaway,
}

impl FrameKind {
    /// Every frame kind the protocol defines.
    pub const ALL: [FrameKind; 9] = [
        FrameKind::Welcome,
        FrameKind::Hello,
        FrameKind::ConnectionReady,
        FrameKind::Msg,
        FrameKind::Ack,
        FrameKind::Nack,
        FrameKind::Ping,
        FrameKind::Pong,
        FrameKind::Goaway,
    ];

    /// The `type` string of this kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            FrameKind::Welcome => "welcome",
            FrameKind::Hello => "hello",
            FrameKind::ConnectionReady => "connection_ready",
            FrameKind::Msg => "msg",
            FrameKind::Ack => "ack",
            FrameKind::Nack => "nack",
            FrameKind::Ping => "ping",
            FrameKind::Pong => "pong",
            FrameKind::Goaway => "goaway",
        }
    }

    /// The kind whose `type` string is `name`, if the protocol defines one.
    pub fn from_type(name: &str) -> Option<FrameKind> {
        FrameKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Whether a peer playing `role` may send frames of this kind.
    pub const fn sent_by(self, role: Role) -> bool {
        match self {
            FrameKind::Welcome | FrameKind::ConnectionReady | FrameKind::Goaway => {
                matches!(role, Role::Server)
            }
            FrameKind::Hello => matches!(role, Role::Client),
            FrameKind::Msg
            | FrameKind::Ack
            | FrameKind::Nack
            | FrameKind::Ping
            | FrameKind::Pong => true,
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two ends of a readyws connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The end that opened the WebSocket.
    Client,
    /// The end that accepted it.
    Server,
}

impl Role {
    /// `client` or `server`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a server can make new connections ready now (`welcome.phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerPhase {
    /// The server is still starting: `connection_ready` (or `goaway`) follows once it knows.
    Starting,
    /// The server registers connections and answers `hello` straight away.
    Accepting,
}

impl ServerPhase {
    /// The phase as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ServerPhase::Starting => "starting",
            ServerPhase::Accepting => "accepting",
        }
    }

    /// The phase written as `text` on the wire, if it is one.
    pub fn from_wire(text: &str) -> Option<Self> {
        match text {
            "starting" => Some(ServerPhase::Starting),
            "accepting" => Some(ServerPhase::Accepting),
            _ => None,
        }
    }
}

/// `welcome`: the server's first frame, sent as soon as the socket opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version; 1 for readyws v1.
    pub protocol: u64,
    /// A free-form name of the server software, for logs.
    pub server: String,
    /// Whether the server is still starting.
    pub phase: ServerPhase,
    /// How often the server pings; either side treats `2 × heartbeat_ms` of silence as a dead
    /// connection.
    pub heartbeat_ms: u64,
    /// The largest frame, in UTF-8 bytes, either side may send on this connection.
    pub max_frame_bytes: u64,
    /// The most `msg` frames either side may have unacknowledged at once.
    pub max_inflight: u64,
    /// How long the server keeps a session resumable after its connection drops.
    pub resume_window_ms: u64,
}

/// `hello`: the client's first frame, the only place credentials travel.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's credentials, if the server wants any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The session the client asks to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    /// What the client is, for the server's logs and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
}

impl fmt::Debug for Hello {
    // The token is a credential: it never reaches a log through `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("resume", &self.resume)
            .field("client", &self.client)
            .finish()
    }
}

/// `hello.resume`: the session a client asks to continue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The session to resume, as its last `connection_ready` named it.
    pub session_id: String,
    /// The secret from that `connection_ready`.
    pub resume_token: ResumeToken,
    /// The highest server `msg` id the client has received in that session.
    pub last_received: u64,
}

/// `hello.client`: what the client is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The SDK's name, such as `readyws-rust`.
    pub sdk: String,
    /// The SDK's version.
    pub version: String,
    /// Which connection attempt this is since the client was last ready, from 1.
    pub attempt: u64,
}

/// `connection_ready`: the server has registered the connection; messages may flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionReady {
    /// The session this connection now carries.
    pub session_id: String,
    /// The secret that resumes this session.
    pub resume_token: ResumeToken,
    /// Whether this continues the session the client asked to resume.
    pub resumed: bool,
    /// The highest client `msg` id the server has received in this session (0 for none).
    pub last_received: u64,
    /// How many server `msg` frames were already waiting and follow at once.
    pub backlog: u64,
}

/// `msg`: one application message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    /// The message's id: 1 for a session's first message in each direction, then +1.
    pub id: u64,
    /// The application's JSON value, kept as the exact text the sender wrote.
    pub data: Data,
}

/// `ack`: every message with an id up to `id` has been received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The highest id received.
    pub id: u64,
}

/// `nack`: the receiver refuses message `id` for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// The refused message.
    pub id: u64,
    /// Why, as a registered code such as `too_large` (see [`NackCode`]).
    pub code: String,
    /// Why, in words.
    pub reason: String,
}

/// The refusal codes this specification registers for `nack.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NackCode {
    /// The frame exceeded `max_frame_bytes`.
    TooLarge,
    /// The frame carried a readable id but was otherwise malformed.
    Invalid,
    /// The receiving application does not allow this message.
    Forbidden,
}

impl NackCode {
    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            NackCode::TooLarge => "too_large",
            NackCode::Invalid => "invalid",
            NackCode::Forbidden => "forbidden",
        }
    }
}

/// `ping`: asks the peer for a `pong`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// An optional value the `pong` echoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `pong`: the answer to a `ping`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The `ping`'s nonce, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `goaway`: the server is about to close this connection, and says what the client should do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goaway {
    /// A code from 4000–4299 whose range says whether and how to reconnect
    /// (see [`crate::close::CloseClass`]).
    pub code: u16,
    /// Why, in words (at most 123 bytes, so that it fits a close frame).
    pub reason: String,
    /// The least time the client must wait before reconnecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// One readyws frame of any type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Hello`].
    Hello(Hello),
    /// See [`ConnectionReady`].
    ConnectionReady(ConnectionReady),
    /// See [`Msg`].
    Msg(Msg),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Nack`].
    Nack(Nack),
    /// See [`Ping`].
    Ping(Ping),
    /// See [`Pong`].
    Pong(Pong),
    /// See [`Goaway`].
    Goaway(Goaway),
}

impl Frame {
    /// This frame's type.
    pub const fn kind(&self) -> FrameKind {
        match self {
            Frame::Welcome(_) => FrameKind::Welcome,
            Frame::Hello(_) => FrameKind::Hello,
            Frame::ConnectionReady(_) => FrameKind::ConnectionReady,
            Frame::Msg(_) => FrameKind::Msg,
            Frame::Ack(_) => FrameKind::Ack,
            Frame::Nack(_) => FrameKind::Nack,
            Frame::Ping(_) => FrameKind::Ping,
            Frame::Pong(_) => FrameKind::Pong,
            Frame::Goaway(_) => FrameKind::Goaway,
        }
    }
}

/// The secret that resumes a session: at least 128 random bits chosen by the server.
///
/// It is compared in constant time and never shown by `Debug`, so that it cannot leak into a log
/// by accident.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// The fewest random bytes a server may put into a token.
    pub const MIN_RANDOM_BYTES: usize = 16;

    /// Makes a token from random bytes the caller drew from a cryptographic generator, written as
    /// lowercase hex. Returns `None` when fewer than [`Self::MIN_RANDOM_BYTES`] are given.
    pub fn from_random_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::MIN_RANDOM_BYTES {
            return None;
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(bytes.len() * 2);
        for byte in bytes {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Some(ResumeToken(text))
    }

    /// Wraps a token received from a peer, exactly as it was written.
    pub fn from_wire(text: impl Into<String>) -> Self {
        ResumeToken(text.into())
    }

    /// The token's text, to put on the wire. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialEq for ResumeToken {
    /// Compares in time that depends only on the lengths, not on where the tokens differ.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        let mut difference = a.len() ^ b.len();
        for (x, y) in a.iter().zip(b.iter()) {
            difference |= usize::from(x ^ y);
        }
        difference == 0
    }
}

impl Eq for ResumeToken {}

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeToken(<redacted>)")
    }
}
