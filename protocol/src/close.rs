//! `goaway` and close codes, and what a client does after each (`docs/PROTOCOL.md` §8).

use crate::frame::MAX_CLOSE_REASON_BYTES;
use crate::prelude::*;

/// `text` cut, at a character boundary, to the 123 bytes a WebSocket close frame can carry [GA-5].
pub fn fit_close_reason(text: &str) -> String {
    let mut cut = text.len().min(MAX_CLOSE_REASON_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    crate::json::cut(text, 0..cut).to_owned()
}

/// What a client does after a connection ends with a given code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseClass {
    /// Reconnect after the backoff delay, and after `retry_after_ms` if one was given
    /// (codes 4000–4099, every 1xxx close code, and codes this version does not assign).
    Reconnect,
    /// Reconnect only once the application has supplied fresh credentials (4100–4199).
    RefreshCredentials,
    /// Do not reconnect: the session is over (4200–4299).
    Terminal,
}

impl CloseClass {
    /// The class of a `goaway` code or a WebSocket close code.
    ///
    /// Only the readyws ranges 4100–4299 stop the automatic reconnect. Every other code, including
    /// the 1xxx codes that proxies, browsers and servers emit for reasons that say nothing about
    /// this client's right to connect, means "reconnect with backoff": a readyws server that
    /// wants a client gone says so with a 41xx or 42xx code.
    pub const fn of(code: u16) -> CloseClass {
        match code {
            4100..=4199 => CloseClass::RefreshCredentials,
            4200..=4299 => CloseClass::Terminal,
            _ => CloseClass::Reconnect,
        }
    }
}

/// The `goaway` codes this specification assigns. Servers may use other codes inside the three
/// ranges; clients act on the range.
pub mod code {
    /// The server is shutting down or redeploying (reconnect; another instance will answer).
    pub const GOING_AWAY: u16 = 4000;
    /// No `hello` arrived within the server's hello timeout.
    pub const HELLO_TIMEOUT: u16 = 4001;
    /// The server gave up waiting for its own start-up to finish; `retry_after_ms` says when to
    /// come back.
    pub const STARTUP_FAILED: u16 = 4002;
    /// The server is overloaded; `retry_after_ms` says when to come back.
    pub const OVERLOADED: u16 = 4003;
    /// Nothing arrived from the peer for `2 × heartbeat_ms`, or the handshake did not finish in
    /// time. A client closes a connection it judged dead with this code too.
    pub const HEARTBEAT_TIMEOUT: u16 = 4004;
    /// The peer broke a rule of this protocol; the reason names it. A client closes with this code
    /// too when the server broke a rule.
    pub const PROTOCOL_ERROR: u16 = 4010;
    /// The credentials are missing or not valid.
    pub const UNAUTHORIZED: u16 = 4100;
    /// The credentials have expired.
    pub const TOKEN_EXPIRED: u16 = 4101;
    /// The user may not connect at all.
    pub const FORBIDDEN: u16 = 4200;
    /// Another connection resumed this session; this one is superseded.
    pub const SESSION_TAKEN_OVER: u16 = 4203;

    /// The WebSocket close code a client uses to end its session on purpose: the server discards
    /// the session at once instead of keeping it resumable.
    pub const NORMAL_CLOSURE: u16 = 1000;
}
