//! The client side of a readyws session as a sans-IO state machine.

use crate::prelude::*;
use alloc::collections::VecDeque;
use core::time::Duration;

use crate::data::Data;
use crate::text::{Text, display_by_message};

use crate::backoff::{Backoff, BackoffConfig};
use crate::close::{CloseClass, code, fit_close_reason};
use crate::codec::{decode_from, encode_by};
use crate::error::{DecodeError, Expected, ProtocolError, SendError, SendErrorReason};
use crate::frame::{
    ClientInfo, ConnectionReady, Frame, FrameKind, Goaway, Hello, PRE_WELCOME_MAX_FRAME_BYTES,
    PROTOCOL_VERSION, Ping, Pong, Resume, ResumeToken, SUBPROTOCOL, ServerPhase, Welcome,
};
use crate::inbox::{Inbox, Verdict};
use crate::outbox::{MessageId, Outbox, OutboxLimits, Outcome};
use crate::time::Time;

/// Identifies one transport attempt, so that late events from a socket the session has already
/// given up on are ignored (a browser can fire an old socket's `close` after a new one opened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// What the client does with messages it transmitted in a session the server then lost
/// (`connection_ready` with `resumed: false`) [RS-5].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetPolicy {
    /// Send them again in the new session, in order: nothing is lost, and a message the old
    /// session had already delivered may be delivered twice (at-least-once). The default.
    Resend,
    /// Settle them as [`Outcome::SessionReset`] and let the application decide: never delivered
    /// twice by the protocol, at the price of messages the application must resend itself.
    Report,
}

/// Settings of a [`ClientSession`]. Start from [`ClientConfig::default`] and change what differs;
/// each setter documents its default.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The credentials sent in `hello.token`. Default: none.
    pub token: Option<String>,
    /// The SDK name and version sent in `hello.client`. Default: `readyws-protocol` and this
    /// crate's version.
    pub sdk: (String, String),
    /// Bounds of the outbox. Default: [`OutboxLimits::default`].
    pub outbox: OutboxLimits,
    /// The time-to-live given to messages sent without one. Default: none (they wait as long as
    /// the session lives).
    pub default_ttl: Option<Duration>,
    /// The reconnect schedule. Default: [`BackoffConfig::default`].
    pub backoff: BackoffConfig,
    /// How long opening the socket may take. Default: 10 s.
    pub connect_timeout: Duration,
    /// How long from the socket opening to `connection_ready` while the server is accepting.
    /// Default: 10 s.
    pub handshake_timeout: Duration,
    /// How long after a `welcome` with `phase: "starting"` the client waits for
    /// `connection_ready`. Default: 60 s.
    pub startup_timeout: Duration,
    /// What happens to messages in flight when the server lost the session. Default:
    /// [`ResetPolicy::Resend`].
    pub reset_policy: ResetPolicy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            token: None,
            sdk: (
                "readyws-protocol".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            outbox: OutboxLimits::default(),
            default_ttl: None,
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(60),
            reset_policy: ResetPolicy::Resend,
        }
    }
}

impl ClientConfig {
    /// Sets the credentials sent in `hello`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the SDK name and version sent in `hello.client`.
    pub fn sdk(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.sdk = (name.into(), version.into());
        self
    }

    /// Sets the outbox bounds.
    pub fn outbox(mut self, limits: OutboxLimits) -> Self {
        self.outbox = limits;
        self
    }

    /// Sets the default time-to-live of messages.
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Sets the reconnect schedule.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the socket-open timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets what happens to messages in flight when the server lost the session.
    pub fn reset_policy(mut self, policy: ResetPolicy) -> Self {
        self.reset_policy = policy;
        self
    }

    /// Sets how long to wait for a starting server.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
}

/// Something the driver must do to the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a WebSocket to the server, asking for the subprotocol [`SUBPROTOCOL`], and report the
    /// result with [`ClientSession::handle_connected`] or
    /// [`ClientSession::handle_connect_failed`] under this id.
    Open {
        /// The id of the new attempt.
        conn: ConnId,
    },
    /// Close this socket with this WebSocket close code and reason, and forget it: the session
    /// has already moved on and ignores whatever it still reports.
    Close {
        /// The socket.
        conn: ConnId,
        /// The close code.
        code: u16,
        /// The close reason (at most 123 bytes).
        reason: String,
    },
}

/// A text frame to write to a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The socket to write to.
    pub conn: ConnId,
    /// The frame's text.
    pub text: String,
}

/// A frame to write to a socket whose text is not written yet ([`ClientSession::poll_unencoded`]).
#[derive(Clone, Debug)]
pub struct Unencoded {
    /// The socket to write to.
    pub conn: ConnId,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    Text(String),
    Msg(u64, Data),
}

impl Unencoded {
    /// The frame's text.
    pub fn encode(self) -> Transmit {
        let text = match self.body {
            Body::Text(text) => text,
            Body::Msg(id, data) => crate::codec::encode_msg(id, &data),
        };
        Transmit {
            conn: self.conn,
            text,
        }
    }
}

/// Why a connection ended, when the session will try again.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The socket could not be opened.
    ConnectFailed {
        /// The driver's account of the failure.
        detail: String,
    },
    /// The socket did not open within the connect timeout.
    ConnectTimeout,
    /// `connection_ready` did not arrive in time [HS-8, SG-4].
    HandshakeTimeout,
    /// Nothing arrived for `2 × heartbeat_ms` [HB-4].
    HeartbeatTimeout,
    /// The socket closed without a `goaway`.
    ConnectionLost {
        /// The close code, if a close frame arrived.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// The server sent `goaway`.
    Goaway {
        /// The `goaway` code.
        code: u16,
        /// The `goaway` reason.
        reason: String,
        /// The `goaway` `retry_after_ms`.
        retry_after_ms: Option<u64>,
    },
    /// The server broke a protocol rule.
    ProtocolViolation(ProtocolError),
}

impl DisconnectReason {
    /// The reason's text, as its `Display` writes it.
    pub fn message(&self) -> String {
        match self {
            DisconnectReason::ConnectFailed { detail } => {
                Text::from("connect failed: ").s(detail).done()
            }
            DisconnectReason::ConnectTimeout => "connect timed out".to_owned(),
            DisconnectReason::HandshakeTimeout => {
                "no `connection_ready` within the handshake timeout".to_owned()
            }
            DisconnectReason::HeartbeatTimeout => {
                "nothing received for twice the heartbeat interval".to_owned()
            }
            DisconnectReason::ConnectionLost { code, reason } => match code {
                Some(code) => Text::from("connection closed with code ")
                    .n(*code)
                    .s(": ")
                    .s(reason)
                    .done(),
                None => "connection lost without a close frame".to_owned(),
            },
            DisconnectReason::Goaway { code, reason, .. } => Text::from("server sent goaway ")
                .n(*code)
                .s(": ")
                .s(reason)
                .done(),
            DisconnectReason::ProtocolViolation(error) => Text::from("protocol violation: ")
                .s(&error.message())
                .done(),
        }
    }
}

/// Why a session ended for good.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The application called [`ClientSession::close`].
    Requested,
    /// The server did not select the `readyws.v1` subprotocol: it is not a readyws server [TR-2].
    SubprotocolRejected {
        /// What the server selected instead.
        selected: Option<String>,
    },
    /// The server speaks another protocol version [HS-9].
    UnsupportedVersion {
        /// `welcome.protocol`.
        version: u64,
    },
    /// The server refused this client for good (a 42xx code) [GA-2].
    Refused {
        /// The code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// The configured number of reconnect attempts was used up.
    GaveUp {
        /// Failed attempts in a row.
        attempts: u32,
        /// The last failure.
        last: DisconnectReason,
    },
}

impl CloseReason {
    /// The reason's text, as its `Display` writes it.
    pub fn message(&self) -> String {
        match self {
            CloseReason::Requested => "closed by the application".to_owned(),
            CloseReason::SubprotocolRejected { selected } => {
                Text::from("not a readyws server: it selected subprotocol `")
                    .s(selected.as_deref().unwrap_or("(none)"))
                    .s("` instead of `")
                    .s(SUBPROTOCOL)
                    .s("`")
                    .done()
            }
            CloseReason::UnsupportedVersion { version } => {
                Text::from("the server speaks protocol version ")
                    .n(*version)
                    .s(", this client ")
                    .n(PROTOCOL_VERSION)
                    .done()
            }
            CloseReason::Refused { code, reason } => Text::from("refused by the server with code ")
                .n(*code)
                .s(": ")
                .s(reason)
                .done(),
            CloseReason::GaveUp { attempts, last } => Text::from("gave up after ")
                .n(*attempts)
                .s(" failed attempts; last: ")
                .s(&last.message())
                .done(),
        }
    }
}

display_by_message!(DisconnectReason, CloseReason);

/// Something the application should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server's `welcome` arrived and `hello` is on its way (for logs and metrics).
    Welcome {
        /// `welcome.server`.
        server: String,
        /// Whether the server is still starting (`phase: "starting"`) [SG-1].
        starting: bool,
    },
    /// The connection is ready: held messages flow now.
    Ready {
        /// The session now carried.
        session_id: String,
        /// Whether it continues the previous session.
        resumed: bool,
        /// How many server messages were already waiting.
        backlog: u64,
    },
    /// The server could not resume the previous session and started a new one: server messages
    /// not yet received from the old session will not come on this session, and client messages
    /// transmitted in it but not acknowledged are sent again ([`ResetPolicy::Resend`]) or end as
    /// [`Outcome::SessionReset`] ([`ResetPolicy::Report`]) [RS-5].
    SessionReset {
        /// The session that was lost.
        previous_session_id: String,
        /// How many transmitted messages are sent again, and so may be delivered twice.
        resent: usize,
    },
    /// A message from the server, delivered once and in order.
    Message {
        /// Its JSON value.
        data: Data,
    },
    /// A message accepted by [`ClientSession::send`] ended.
    Outcome {
        /// The id `send` returned.
        id: MessageId,
        /// How it ended.
        outcome: Outcome,
    },
    /// The connection ended; the session will try again at `reconnect_at` (or, when that is
    /// `None`, once fresh credentials are supplied).
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// When the next attempt starts.
        reconnect_at: Option<Time>,
    },
    /// The server wants fresh credentials; call [`ClientSession::set_token`] [GA-2].
    CredentialsRequired {
        /// The 41xx code.
        code: u16,
        /// The server's reason.
        reason: String,
    },
    /// The session ended for good; no further events follow.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// The session's state, for display and decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientState {
    /// `connect` has not been called.
    Idle,
    /// A socket is being opened or the handshake is under way.
    Connecting {
        /// Which attempt since the last readiness, from 1.
        attempt: u32,
    },
    /// Ready: messages flow.
    Ready {
        /// The session carried.
        session_id: String,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// When it starts.
        at: Time,
        /// Which attempt it will be.
        attempt: u32,
    },
    /// Waiting for [`ClientSession::set_token`].
    AwaitingCredentials,
    /// Ended for good.
    Closed,
}

/// The part of [`Phase`] that decides how a frame is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    AwaitingWelcome,
    AwaitingReady,
    Ready,
    NoConnection,
}

/// The session the client can ask to resume.
#[derive(Clone, Debug)]
struct SessionKeys {
    session_id: String,
    resume_token: ResumeToken,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Connecting {
        conn: ConnId,
        deadline: Time,
    },
    AwaitingWelcome {
        conn: ConnId,
        deadline: Time,
    },
    AwaitingReady {
        conn: ConnId,
        deadline: Time,
        welcome: Welcome,
        asked_resume: Option<String>,
    },
    Ready {
        conn: ConnId,
        welcome: Welcome,
    },
    Backoff {
        until: Time,
    },
    /// After a 41xx code: waiting for [`ClientSession::set_token`]. `not_before` is when the
    /// server's `retry_after_ms` ends, which still bounds the next attempt [GA-3].
    AwaitingCredentials {
        not_before: Option<Time>,
    },
    Closed,
}

/// The client side of one readyws session, across all its connections: a sans-IO state machine
/// (`docs/ARCHITECTURE.md` explains the driver loop).
///
/// Methods come in four groups, as in quinn-proto:
/// - getters: [`state`](Self::state), [`pending`](Self::pending), …;
/// - transport facts, from the driver: `handle_*`, each with the [`ConnId`] it concerns and the
///   current [`Time`];
/// - commands, from the application: [`connect`](Self::connect), [`send`](Self::send),
///   [`close`](Self::close), [`set_token`](Self::set_token);
/// - outputs, drained by the driver after every call above until each returns `None`:
///   [`poll_action`](Self::poll_action), [`poll_transmit`](Self::poll_transmit),
///   [`poll_event`](Self::poll_event), then [`poll_timeout`](Self::poll_timeout) for when to call
///   [`handle_timeout`](Self::handle_timeout).
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    phase: Phase,
    backoff: Backoff,
    next_conn: u64,
    now: Time,
    /// The session to resume on the next connection.
    keys: Option<SessionKeys>,
    outbox: Outbox,
    inbox: Inbox,
    /// Handshake and heartbeat frames for the current connection.
    control: VecDeque<Frame>,
    actions: VecDeque<Action>,
    events: VecDeque<ClientEvent>,
    /// When the last frame arrived on the current connection [HB-3].
    last_received_at: Time,
    /// Set by a graceful `close`: the session ends when the outbox empties or at this time.
    closing_deadline: Option<Time>,
    /// Connection attempts since the session was last ready, the current one included [RC-4].
    attempts_since_ready: u32,
}

impl ClientSession {
    /// A session that will connect when [`connect`](Self::connect) is called. `seed` feeds the
    /// reconnect jitter: give each client a different one (from the OS or the browser's
    /// generator), or a fleet reconnects in lock-step.
    pub fn new(config: ClientConfig, seed: u64) -> Self {
        ClientSession {
            backoff: Backoff::new(config.backoff, seed),
            outbox: Outbox::new(config.outbox),
            inbox: Inbox::new(1),
            config,
            phase: Phase::Idle,
            next_conn: 1,
            now: Time::ZERO,
            keys: None,
            control: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            last_received_at: Time::ZERO,
            closing_deadline: None,
            attempts_since_ready: 0,
        }
    }

    // ----- getters -----

    /// The session's state.
    pub fn state(&self) -> ClientState {
        let attempt = self.attempts_since_ready;
        match &self.phase {
            Phase::Idle => ClientState::Idle,
            Phase::Connecting { .. }
            | Phase::AwaitingWelcome { .. }
            | Phase::AwaitingReady { .. } => ClientState::Connecting { attempt },
            Phase::Ready { .. } => ClientState::Ready {
                session_id: self
                    .keys
                    .as_ref()
                    .map(|k| k.session_id.clone())
                    .unwrap_or_default(),
            },
            Phase::Backoff { until } => ClientState::Reconnecting {
                at: *until,
                attempt: attempt.saturating_add(1),
            },
            Phase::AwaitingCredentials { .. } => ClientState::AwaitingCredentials,
            Phase::Closed => ClientState::Closed,
        }
    }

    /// Whether messages flow now.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready { .. })
    }

    /// The current session's id, once a `connection_ready` named one.
    pub fn session_id(&self) -> Option<&str> {
        self.keys.as_ref().map(|k| k.session_id.as_str())
    }

    /// Messages accepted and not yet settled (queued and in flight).
    pub fn pending(&self) -> usize {
        self.outbox.len()
    }

    /// Messages transmitted and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.outbox.in_flight()
    }

    /// Bytes of `data` held in the outbox.
    pub fn pending_bytes(&self) -> usize {
        self.outbox.bytes()
    }

    /// The highest server message id received in the current session.
    pub fn last_received(&self) -> u64 {
        self.inbox.last_received()
    }

    // ----- commands -----

    /// Starts connecting. Has no effect unless the session is idle.
    pub fn connect(&mut self, now: Time) {
        self.now = now;
        if matches!(self.phase, Phase::Idle) {
            self.open_connection();
        }
    }

    /// Accepts a message at any time, before the first connection too, with the configured
    /// default time-to-live. It is transmitted once a connection is ready [OB-1] and ends in
    /// exactly one [`ClientEvent::Outcome`] [OB-3]. A refusal gives the message back.
    pub fn send(&mut self, data: Data, now: Time) -> Result<MessageId, SendError> {
        self.send_with_ttl(data, self.config.default_ttl, now)
    }

    /// As [`send`](Self::send), with this message's own time-to-live: if it has not been
    /// transmitted within `ttl`, it ends as [`Outcome::Expired`].
    pub fn send_with_ttl(
        &mut self,
        data: Data,
        ttl: Option<Duration>,
        now: Time,
    ) -> Result<MessageId, SendError> {
        self.now = now;
        if matches!(self.phase, Phase::Closed) || self.closing_deadline.is_some() {
            return Err(SendError::new(SendErrorReason::Closed, data));
        }
        self.outbox.push(data, ttl.map(|ttl| now + ttl))
    }

    /// Ends the session. Messages still unsettled get `grace` to be acknowledged (the session
    /// keeps reconnecting meanwhile); those left then end as [`Outcome::Closed`]. The server is
    /// told to discard the session (close code 1000) [RS-6].
    pub fn close(&mut self, grace: Duration, now: Time) {
        self.now = now;
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let idle = matches!(self.phase, Phase::Idle);
        if grace.is_zero() || idle || self.outbox.len() == 0 {
            self.finish_requested();
        } else {
            self.closing_deadline = Some(now + grace);
        }
    }

    /// Replaces the credentials sent in the next `hello`. After a
    /// [`ClientEvent::CredentialsRequired`], this also schedules the next attempt.
    pub fn set_token(&mut self, token: Option<String>, now: Time) {
        self.now = now;
        self.config.token = token;
        if let Phase::AwaitingCredentials { not_before } = self.phase {
            let retry_after = not_before.map(|at| at.saturating_since(now));
            self.schedule_reconnect(
                DisconnectReason::ConnectFailed {
                    detail: "waiting for fresh credentials".to_owned(),
                },
                retry_after,
                false,
            );
        }
    }

    // ----- transport facts -----

    /// The socket of attempt `conn` opened; `subprotocol` is what the server selected.
    pub fn handle_connected(&mut self, conn: ConnId, subprotocol: Option<&str>, now: Time) {
        self.now = now;
        let Phase::Connecting { conn: current, .. } = self.phase else {
            return;
        };
        if current != conn {
            return;
        }
        if subprotocol != Some(SUBPROTOCOL) {
            self.actions.push_back(Action::Close {
                conn,
                code: code::PROTOCOL_ERROR,
                reason: Text::from("subprotocol `")
                    .s(SUBPROTOCOL)
                    .s("` was not selected")
                    .done(),
            });
            self.finish(CloseReason::SubprotocolRejected {
                selected: subprotocol.map(str::to_owned),
            });
            return;
        }
        self.last_received_at = now;
        self.phase = Phase::AwaitingWelcome {
            conn,
            deadline: now + self.config.handshake_timeout,
        };
    }

    /// The socket of attempt `conn` could not be opened.
    pub fn handle_connect_failed(&mut self, conn: ConnId, detail: impl Into<String>, now: Time) {
        self.now = now;
        if self.connection() == Some(conn) {
            let reason = DisconnectReason::ConnectFailed {
                detail: detail.into(),
            };
            self.lose_connection(None, reason, CloseClass::Reconnect, None);
        }
    }

    /// The socket of `conn` closed, with the close frame's code and reason if one arrived.
    pub fn handle_disconnected(&mut self, conn: ConnId, close: Option<(u16, &str)>, now: Time) {
        self.now = now;
        if self.connection() != Some(conn) {
            return;
        }
        let class = close.map_or(CloseClass::Reconnect, |(code, _)| CloseClass::of(code));
        let reason = DisconnectReason::ConnectionLost {
            code: close.map(|(code, _)| code),
            reason: close
                .map(|(_, reason)| reason.to_owned())
                .unwrap_or_default(),
        };
        self.lose_connection(None, reason, class, None);
    }

    /// A binary frame arrived on `conn`: readyws uses text frames only [TR-3].
    pub fn handle_binary(&mut self, conn: ConnId, now: Time) {
        self.now = now;
        if self.connection() == Some(conn) {
            let error = DecodeError::InvalidJson {
                detail: "binary frames are not part of readyws".to_owned(),
            };
            self.violation(ProtocolError::Decode(error));
        }
    }

    /// A text frame arrived on `conn`.
    pub fn handle_text(&mut self, conn: ConnId, text: &str, now: Time) {
        self.now = now;
        if self.connection() != Some(conn) || matches!(self.phase, Phase::Connecting { .. }) {
            return;
        }
        self.last_received_at = now;
        let limit = match &self.phase {
            Phase::AwaitingReady { welcome, .. } | Phase::Ready { welcome, .. } => {
                usize::try_from(welcome.max_frame_bytes).unwrap_or(usize::MAX)
            }
            _ => PRE_WELCOME_MAX_FRAME_BYTES,
        };
        let awaiting_welcome = matches!(self.phase, Phase::AwaitingWelcome { .. });
        match decode_from::<true>(text, limit) {
            Ok(frame) => self.handle_frame(frame),
            // Forward compatibility: types added by later versions are skipped [FR-3].
            Err(DecodeError::UnknownType { .. }) if !awaiting_welcome => {}
            Err(DecodeError::InvalidFrame {
                msg_id: Some(id),
                too_large,
                detail,
                ..
            }) if self.is_ready() => {
                if let Err(error) = self.inbox.refuse_frame(id, too_large, detail) {
                    self.violation(error);
                }
            }
            Err(error) => self.violation(ProtocolError::Decode(error)),
        }
    }

    /// The driver's timer fired (early, late or spuriously: every deadline is checked against
    /// `now`).
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        self.outbox.expire(now);
        if self
            .closing_deadline
            .is_some_and(|deadline| deadline <= now)
        {
            self.finish_requested();
            return;
        }
        match &self.phase {
            Phase::Connecting { deadline, .. } if *deadline <= now => {
                let reason = DisconnectReason::ConnectTimeout;
                self.lose_connection(
                    Some(code::HEARTBEAT_TIMEOUT),
                    reason,
                    CloseClass::Reconnect,
                    None,
                );
            }
            Phase::AwaitingWelcome { deadline, .. } | Phase::AwaitingReady { deadline, .. }
                if *deadline <= now =>
            {
                let reason = DisconnectReason::HandshakeTimeout;
                self.lose_connection(
                    Some(code::HEARTBEAT_TIMEOUT),
                    reason,
                    CloseClass::Reconnect,
                    None,
                );
            }
            Phase::Backoff { until } if *until <= now => self.open_connection(),
            _ => {}
        }
        if self
            .liveness_deadline()
            .is_some_and(|deadline| deadline <= now)
        {
            let reason = DisconnectReason::HeartbeatTimeout;
            self.lose_connection(
                Some(code::HEARTBEAT_TIMEOUT),
                reason,
                CloseClass::Reconnect,
                None,
            );
        }
        self.finish_close_if_drained();
    }

    /// The platform says the connection may have changed under the session: the network came
    /// back (the browser's `online` event) or a hidden page became visible again, after its
    /// timers were throttled for up to a minute. Checks every deadline against `now` first; then,
    /// while waiting to reconnect, starts the next attempt at once instead of sleeping out the
    /// backoff [RC-6], and while ready sends a `ping` so that the answer refreshes liveness
    /// [HB-5]. The attempt still counts as a failure for the backoff [RC-1].
    pub fn handle_wake(&mut self, now: Time) {
        // Only a wait that began before this wake-up is cut short: a connection that the deadline
        // check below finds dead takes its backoff like any other failure.
        let was_waiting = matches!(self.phase, Phase::Backoff { .. });
        self.handle_timeout(now);
        match self.phase {
            Phase::Backoff { .. } if was_waiting => self.open_connection(),
            Phase::Ready { .. } => self.control.push_back(Frame::Ping(Ping { nonce: None })),
            _ => {}
        }
    }

    // ----- outputs -----

    /// The next thing to do to the transport.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next frame to write. Before `connection_ready` only handshake and heartbeat frames
    /// come out [HS-5]; after it, acknowledgements, then messages in order within the window.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let conn = self.connection()?;
        let text = match &self.phase {
            Phase::AwaitingReady { .. } => self
                .control
                .pop_front()
                .map(|frame| encode_by::<false>(&frame)),
            Phase::Ready { welcome, .. } => {
                let max_inflight = welcome.max_inflight;
                let max_frame = usize::try_from(welcome.max_frame_bytes).unwrap_or(usize::MAX);
                self.control
                    .pop_front()
                    .or_else(|| self.inbox.poll_frame())
                    .map(|frame| encode_by::<false>(&frame))
                    .or_else(|| self.outbox.next_transmit(self.now, max_inflight, max_frame))
            }
            _ => None,
        }?;
        Some(Transmit { conn, text })
    }

    /// As [`poll_transmit`](Self::poll_transmit), with a `msg` frame's text left to write:
    /// [`Unencoded::encode`] writes it, so that a driver that shares the session with other
    /// threads under a lock copies each payload into its frame after releasing it.
    pub fn poll_unencoded(&mut self) -> Option<Unencoded> {
        let conn = self.connection()?;
        if let Phase::Ready { welcome, .. } = &self.phase {
            if self.control.is_empty() && !self.inbox.has_frame() {
                let max_inflight = welcome.max_inflight;
                let max_frame = usize::try_from(welcome.max_frame_bytes).unwrap_or(usize::MAX);
                return self
                    .outbox
                    .next_message(self.now, max_inflight, max_frame)
                    .map(|(id, data)| Unencoded {
                        conn,
                        body: Body::Msg(id, data),
                    });
            }
        }
        self.poll_transmit()
            .map(|Transmit { conn, text }| Unencoded {
                conn,
                body: Body::Text(text),
            })
    }

    /// The next event for the application. Outcomes come before the `Closed` event that ends a
    /// session.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.absorb_outcomes();
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        let phase_deadline = match &self.phase {
            Phase::Connecting { deadline, .. }
            | Phase::AwaitingWelcome { deadline, .. }
            | Phase::AwaitingReady { deadline, .. } => Some(*deadline),
            Phase::Backoff { until } => Some(*until),
            Phase::Closed => return None,
            Phase::Idle | Phase::Ready { .. } | Phase::AwaitingCredentials { .. } => None,
        };
        [
            phase_deadline,
            self.liveness_deadline(),
            self.outbox.next_expiry(),
            self.closing_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- internals -----

    /// Queues an event after every outcome settled before it, so that the application hears of
    /// things in the order they happened.
    fn emit(&mut self, event: ClientEvent) {
        self.absorb_outcomes();
        self.events.push_back(event);
    }

    fn absorb_outcomes(&mut self) {
        while let Some((id, outcome)) = self.outbox.poll_outcome() {
            self.events.push_back(ClientEvent::Outcome { id, outcome });
        }
    }

    fn stage(&self) -> Stage {
        match self.phase {
            Phase::AwaitingWelcome { .. } => Stage::AwaitingWelcome,
            Phase::AwaitingReady { .. } => Stage::AwaitingReady,
            Phase::Ready { .. } => Stage::Ready,
            _ => Stage::NoConnection,
        }
    }

    /// The socket the session is opening or using, if any: a driver closes every other socket.
    pub fn connection(&self) -> Option<ConnId> {
        match &self.phase {
            Phase::Connecting { conn, .. }
            | Phase::AwaitingWelcome { conn, .. }
            | Phase::AwaitingReady { conn, .. }
            | Phase::Ready { conn, .. } => Some(*conn),
            _ => None,
        }
    }

    /// Silence is measured from the last frame received, against the clock, so a throttled timer
    /// that fires late still judges correctly [HB-3, HB-4].
    fn liveness_deadline(&self) -> Option<Time> {
        let welcome = match &self.phase {
            Phase::AwaitingReady { welcome, .. } | Phase::Ready { welcome, .. } => welcome,
            _ => return None,
        };
        Some(self.last_received_at + Duration::from_millis(welcome.heartbeat_ms.saturating_mul(2)))
    }

    fn open_connection(&mut self) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.attempts_since_ready = self.attempts_since_ready.saturating_add(1);
        self.control.clear();
        self.phase = Phase::Connecting {
            conn,
            deadline: self.now + self.config.connect_timeout,
        };
        self.actions.push_back(Action::Open { conn });
    }

    fn handle_frame(&mut self, frame: Frame) {
        let kind = frame.kind();
        match (self.stage(), frame) {
            (_, Frame::Goaway(goaway)) => self.handle_goaway(goaway),
            (Stage::AwaitingWelcome, Frame::Welcome(welcome)) => self.handle_welcome(welcome),
            (Stage::AwaitingWelcome, _) => self.unexpected(Expected::Welcome, kind),
            (Stage::AwaitingReady | Stage::Ready, Frame::Ping(ping)) => {
                // Answer every ping [HB-2].
                self.control
                    .push_back(Frame::Pong(Pong { nonce: ping.nonce }));
            }
            (Stage::AwaitingReady | Stage::Ready, Frame::Pong(_)) => {}
            (Stage::AwaitingReady, Frame::ConnectionReady(ready)) => self.handle_ready(ready),
            (Stage::AwaitingReady, _) => self.unexpected(Expected::ConnectionReady, kind),
            (Stage::Ready, Frame::Msg(msg)) => match self.inbox.receive(msg.id) {
                Ok(Verdict::Deliver) => self.emit(ClientEvent::Message { data: msg.data }),
                Ok(Verdict::Duplicate) => {}
                Err(error) => self.violation(error),
            },
            (Stage::Ready, Frame::Ack(ack)) => {
                if let Err(error) = self.outbox.handle_ack(ack.id) {
                    self.violation(error);
                }
                self.finish_close_if_drained();
            }
            (Stage::Ready, Frame::Nack(nack)) => {
                if let Err(error) = self.outbox.handle_nack(nack.id, nack.code, nack.reason) {
                    self.violation(error);
                }
                self.finish_close_if_drained();
            }
            (Stage::Ready, _) => self.unexpected(Expected::SessionFrame, kind),
            // Frames are handled only while a connection is current.
            (Stage::NoConnection, _) => {}
        }
    }

    fn handle_welcome(&mut self, welcome: Welcome) {
        let Phase::AwaitingWelcome { conn, deadline } = self.phase else {
            return;
        };
        if welcome.protocol != PROTOCOL_VERSION {
            self.actions.push_back(Action::Close {
                conn,
                code: code::PROTOCOL_ERROR,
                reason: Text::from("protocol version ")
                    .n(welcome.protocol)
                    .s(" is not supported")
                    .done(),
            });
            self.finish(CloseReason::UnsupportedVersion {
                version: welcome.protocol,
            });
            return;
        }
        // Messages already received in this session count against the new connection's window.
        self.inbox.set_max_inflight(welcome.max_inflight);
        let asked_resume = self.keys.as_ref().map(|k| k.session_id.clone());
        let hello = Hello {
            token: self.config.token.clone(),
            resume: self.keys.as_ref().map(|keys| Resume {
                session_id: keys.session_id.clone(),
                resume_token: keys.resume_token.clone(),
                last_received: self.inbox.last_received(),
            }),
            client: Some(ClientInfo {
                sdk: self.config.sdk.0.clone(),
                version: self.config.sdk.1.clone(),
                attempt: u64::from(self.attempts_since_ready),
            }),
        };
        self.control.push_back(Frame::Hello(hello));
        self.emit(ClientEvent::Welcome {
            server: welcome.server.clone(),
            starting: welcome.phase == ServerPhase::Starting,
        });
        let deadline = match welcome.phase {
            ServerPhase::Starting => self.now + self.config.startup_timeout,
            ServerPhase::Accepting => deadline,
        };
        self.phase = Phase::AwaitingReady {
            conn,
            deadline,
            welcome,
            asked_resume,
        };
    }

    fn handle_ready(&mut self, ready: ConnectionReady) {
        let (conn, welcome, asked_resume) = match &self.phase {
            Phase::AwaitingReady {
                conn,
                welcome,
                asked_resume,
                ..
            } => (*conn, welcome.clone(), asked_resume.clone()),
            _ => return,
        };
        if ready.resumed {
            let check = match asked_resume {
                None => Err(ProtocolError::ResumedUnasked),
                Some(asked) if asked != ready.session_id => {
                    Err(ProtocolError::ResumedWrongSession {
                        asked,
                        got: ready.session_id.clone(),
                    })
                }
                Some(_) => self.outbox.resume_after(ready.last_received),
            };
            if let Err(error) = check {
                self.violation(error);
                return;
            }
        } else {
            let resend = self.config.reset_policy == ResetPolicy::Resend;
            if let Some(previous) = self.keys.take() {
                // Earlier outcomes first; then the event, queued directly so that it comes before
                // the outcomes the reset itself settles.
                self.absorb_outcomes();
                let resent = self.outbox.reset_session(resend);
                self.events.push_back(ClientEvent::SessionReset {
                    previous_session_id: previous.session_id,
                    resent,
                });
            } else {
                self.outbox.reset_session(resend);
            }
            self.inbox = Inbox::new(welcome.max_inflight);
        }
        self.keys = Some(SessionKeys {
            session_id: ready.session_id.clone(),
            resume_token: ready.resume_token,
        });
        self.inbox.on_ready();
        self.backoff.reset();
        self.attempts_since_ready = 0;
        self.phase = Phase::Ready { conn, welcome };
        self.emit(ClientEvent::Ready {
            session_id: ready.session_id,
            resumed: ready.resumed,
            backlog: ready.backlog,
        });
        self.finish_close_if_drained();
    }

    fn handle_goaway(&mut self, goaway: Goaway) {
        let class = CloseClass::of(goaway.code);
        let retry_after = goaway.retry_after_ms.map(Duration::from_millis);
        let echo = goaway.code;
        let reason = DisconnectReason::Goaway {
            code: goaway.code,
            reason: goaway.reason,
            retry_after_ms: goaway.retry_after_ms,
        };
        // Echo the server's code: a client's 1000 would tell the server to discard the session.
        self.lose_connection(Some(echo), reason, class, retry_after);
    }

    fn unexpected(&mut self, expected: Expected, got: FrameKind) {
        self.violation(ProtocolError::UnexpectedFrame { expected, got });
    }

    fn violation(&mut self, error: ProtocolError) {
        let reason = DisconnectReason::ProtocolViolation(error);
        self.lose_connection(
            Some(code::PROTOCOL_ERROR),
            reason,
            CloseClass::Reconnect,
            None,
        );
    }

    /// The current connection is over. `close_code` is set when the socket may still be open
    /// and must be closed by the driver.
    fn lose_connection(
        &mut self,
        close_code: Option<u16>,
        reason: DisconnectReason,
        class: CloseClass,
        retry_after: Option<Duration>,
    ) {
        let Some(conn) = self.connection() else {
            return;
        };
        if let Some(code) = close_code {
            self.actions.push_back(Action::Close {
                conn,
                code,
                reason: fit_close_reason(&reason.message()),
            });
        }
        self.control.clear();
        self.outbox.rewind();
        match class {
            CloseClass::Reconnect => self.schedule_reconnect(reason, retry_after, true),
            CloseClass::RefreshCredentials => {
                let (code, text) = match &reason {
                    DisconnectReason::Goaway { code, reason, .. } => (*code, reason.clone()),
                    DisconnectReason::ConnectionLost {
                        code: Some(code),
                        reason,
                    } => (*code, reason.clone()),
                    _ => (code::UNAUTHORIZED, String::new()),
                };
                self.phase = Phase::AwaitingCredentials {
                    not_before: retry_after.map(|wait| self.now + wait),
                };
                self.emit(ClientEvent::Disconnected {
                    reason,
                    reconnect_at: None,
                });
                self.emit(ClientEvent::CredentialsRequired { code, reason: text });
            }
            CloseClass::Terminal => {
                let (code, text) = match reason {
                    DisconnectReason::Goaway { code, reason, .. } => (code, reason),
                    DisconnectReason::ConnectionLost {
                        code: Some(code),
                        reason,
                    } => (code, reason),
                    other => (code::FORBIDDEN, other.message()),
                };
                self.finish(CloseReason::Refused { code, reason: text });
            }
        }
    }

    fn schedule_reconnect(
        &mut self,
        reason: DisconnectReason,
        retry_after: Option<Duration>,
        announce: bool,
    ) {
        match self.backoff.next_delay(retry_after) {
            Some(delay) => {
                let until = self.now + delay;
                self.phase = Phase::Backoff { until };
                if announce {
                    self.emit(ClientEvent::Disconnected {
                        reason,
                        reconnect_at: Some(until),
                    });
                }
            }
            None => {
                let attempts = self.backoff.failures().saturating_sub(1);
                self.finish(CloseReason::GaveUp {
                    attempts,
                    last: reason,
                });
            }
        }
    }

    fn finish_close_if_drained(&mut self) {
        if self.closing_deadline.is_some() && self.outbox.len() == 0 {
            self.finish_requested();
        }
    }

    fn finish_requested(&mut self) {
        if let Some(conn) = self.connection() {
            self.actions.push_back(Action::Close {
                conn,
                code: code::NORMAL_CLOSURE,
                reason: "client closed the session".to_owned(),
            });
        }
        self.finish(CloseReason::Requested);
    }

    fn finish(&mut self, reason: CloseReason) {
        self.outbox.settle_all(&Outcome::Closed);
        self.control.clear();
        self.closing_deadline = None;
        self.phase = Phase::Closed;
        self.emit(ClientEvent::Closed { reason });
    }
}
