//! # readyws-protocol
//!
//! The readyws v1 protocol (`docs/PROTOCOL.md`) as data types and sans-IO state machines: no
//! sockets, no async runtime, no clock and no random number generator. A driver — the tokio
//! client, the browser client, the reference server, or your own — feeds in what happened and
//! carries out what comes back. Because time ([`Time`]) and randomness (a seed) are inputs, every
//! behaviour here is deterministic and tested over virtual time.
//!
//! ## Contract
//! - A message is transmitted only after `connection_ready` [HS-5], and leaves a session only
//!   when the peer acknowledges or refuses it, or when the caller is told why it never will be
//!   ([`Outcome`]) [OB-3].
//! - Messages from the peer are delivered once each and in order [DL-3, DL-4].
//! - Bad input never panics: it becomes a typed [`DecodeError`] or [`ProtocolError`], the
//!   connection is closed with a reason that cites the broken rule, and the session carries on
//!   over the next connection.
//!
//! ## Driving a client session
//! 1. Call [`ClientSession::connect`], then after every `handle_*` call and command:
//! 2. drain [`ClientSession::poll_action`] (open or close sockets),
//! 3. drain [`ClientSession::poll_transmit`] (write text frames),
//! 4. drain [`ClientSession::poll_event`] (hand events to the application),
//! 5. arm one timer at [`ClientSession::poll_timeout`] and call
//!    [`ClientSession::handle_timeout`] when it fires.
//!
//! ```
//! use readyws_protocol::{Action, ClientConfig, ClientEvent, ClientSession, Data, Outcome, Time};
//!
//! let mut session = ClientSession::new(ClientConfig::default(), 7);
//! let now = Time::from_millis(0);
//! // Sending before any connection exists is fine: the message waits for `connection_ready`.
//! let id = session.send(Data::from_json(r#"{"hi":1}"#).unwrap(), now).unwrap();
//! session.connect(now);
//! let Some(Action::Open { conn }) = session.poll_action() else { unreachable!() };
//! session.handle_connected(conn, Some("readyws.v1"), now);
//! session.handle_text(conn, r#"{"type":"welcome","protocol":1,"server":"s","phase":"accepting",
//!     "heartbeat_ms":25000,"max_frame_bytes":65536,"max_inflight":16,"resume_window_ms":60000}"#, now);
//! assert!(session.poll_transmit().unwrap().text.contains(r#""type":"hello""#));
//! assert!(session.poll_transmit().is_none(), "nothing else goes out before connection_ready");
//! session.handle_text(conn, r#"{"type":"connection_ready","session_id":"s1","resume_token":"t",
//!     "resumed":false,"last_received":0,"backlog":0}"#, now);
//! assert_eq!(session.poll_transmit().unwrap().text, r#"{"type":"msg","id":1,"data":{"hi":1}}"#);
//! session.handle_text(conn, r#"{"type":"ack","id":1}"#, now);
//! let events: Vec<_> = std::iter::from_fn(|| session.poll_event()).collect();
//! assert!(events.contains(&ClientEvent::Outcome { id, outcome: Outcome::Acked }));
//! ```
//!
//! The server side is split in two: a [`ServerConnection`] per socket and a [`ServerSession`] that
//! outlives connections for the resume window; the embedding server decides who a token names and
//! where sessions and held messages live.

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

// `no_std` with `alloc`: the browser build then links no standard library, and none of its
// panic and formatting machinery that the protocol does not use.
extern crate alloc;

mod backoff;
pub mod client;
pub mod close;
pub mod codec;
pub mod conformance;
mod data;
pub mod error;
pub mod frame;
mod inbox;
mod json;
mod outbox;
mod prelude;
pub mod rules;
pub mod server;
mod text;
mod time;

pub use backoff::BackoffConfig;
pub use client::{
    Action, ClientConfig, ClientEvent, ClientSession, ClientState, CloseReason, ConnId,
    DisconnectReason, ResetPolicy, Transmit, Unencoded,
};
pub use close::CloseClass;
pub use data::Data;
pub use error::{DecodeError, Expected, ProtocolError, RefuseError, SendError, SendErrorReason};
pub use frame::{Frame, FrameKind, ResumeToken, Role, SUBPROTOCOL, ServerPhase};
pub use json::InvalidJson;
pub use outbox::{MessageId, OutboxLimits, Outcome};
pub use server::{
    ConnectionCloseReason, ConnectionEvent, ServerConfig, ServerConnection, ServerSession,
    SessionEvent, SessionProgress, SessionState,
};
pub use time::Time;

/// The README's example, compiled and run as a doctest so that it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
