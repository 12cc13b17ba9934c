//! The server side: one [`ServerConnection`] per socket, carrying one [`ServerSession`] that
//! outlives it for the resume window.
//!
//! What spans connections (which user a token names, where a resumable session is kept, how
//! messages for users without a session are held) belongs to the embedding server; this module
//! owns everything a single connection and a single session must get right.

use crate::prelude::*;
use alloc::collections::VecDeque;
use core::time::Duration;

use crate::data::Data;

use crate::close::{code, fit_close_reason};
use crate::codec::{decode_from, encode_by};
use crate::error::{DecodeError, Expected, ProtocolError, RefuseError, SendError};
use crate::frame::{
    ConnectionReady, Frame, FrameKind, Goaway, Hello, Nack, PROTOCOL_VERSION, Ping, Pong, Resume,
    ResumeToken, ServerPhase, Welcome,
};
use crate::inbox::{Inbox, Verdict};
use crate::outbox::{MessageId, Outbox, OutboxLimits, Outcome};
use crate::time::Time;
use serde::{Deserialize, Serialize};

/// Settings of the server side, announced to clients in `welcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// `welcome.server`. Default: `readyws-protocol/<version>`.
    pub server_name: String,
    /// `welcome.heartbeat_ms`: how often the server pings. Default: 25 s.
    pub heartbeat: Duration,
    /// `welcome.max_frame_bytes`. Default: 1 MiB.
    pub max_frame_bytes: usize,
    /// `welcome.max_inflight`. Default: 256.
    pub max_inflight: u64,
    /// `welcome.resume_window_ms`. Default: 2 minutes.
    pub resume_window: Duration,
    /// How long a socket may stay silent before its `hello`. Default: 10 s.
    pub hello_timeout: Duration,
    /// Bounds of each session's outbox. Default: [`OutboxLimits::default`].
    pub outbox: OutboxLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            server_name: concat!("readyws-protocol/", env!("CARGO_PKG_VERSION")).to_owned(),
            heartbeat: Duration::from_secs(25),
            max_frame_bytes: 1 << 20,
            max_inflight: 256,
            resume_window: Duration::from_secs(120),
            hello_timeout: Duration::from_secs(10),
            outbox: OutboxLimits::default(),
        }
    }
}

impl ServerConfig {
    /// Sets `welcome.server`.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// Sets the heartbeat interval.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Sets the frame size limit (at least [`crate::frame::MIN_MAX_FRAME_BYTES`]).
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// Sets the flow-control window (at least 1).
    pub fn max_inflight(mut self, messages: u64) -> Self {
        self.max_inflight = messages.max(1);
        self
    }

    /// Sets the resume window.
    pub fn resume_window(mut self, window: Duration) -> Self {
        self.resume_window = window;
        self
    }

    /// Sets the hello timeout.
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// Sets each session's outbox bounds.
    pub fn outbox(mut self, limits: OutboxLimits) -> Self {
        self.outbox = limits;
        self
    }

    fn welcome(&self, phase: ServerPhase) -> Welcome {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Welcome {
            protocol: PROTOCOL_VERSION,
            server: self.server_name.clone(),
            phase,
            heartbeat_ms: millis(self.heartbeat).max(1),
            max_frame_bytes: u64::try_from(self.max_frame_bytes).unwrap_or(u64::MAX),
            max_inflight: self.max_inflight,
            resume_window_ms: millis(self.resume_window),
        }
    }
}

/// Something a session's application should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A message from the client, delivered once and in order. It is acknowledged when the
    /// connection next transmits, unless the application refuses it first with
    /// [`ServerConnection::refuse`].
    Message {
        /// Its id in the session.
        id: u64,
        /// Its JSON value.
        data: Data,
    },
    /// A message accepted by [`ServerSession::send`] ended.
    Outcome {
        /// The id `send` returned.
        id: MessageId,
        /// How it ended.
        outcome: Outcome,
    },
}

/// One readyws session as the server keeps it: ids, unacknowledged messages and the resume
/// secret. It is attached to one [`ServerConnection`] at a time and kept by the embedding server
/// between connections, for `resume_window_ms` [RS-1].
#[derive(Debug)]
pub struct ServerSession {
    session_id: String,
    resume_token: ResumeToken,
    outbox: Outbox,
    inbox: Inbox,
    received: VecDeque<(u64, Data)>,
}

impl ServerSession {
    /// A new session. `session_id` must be 1–128 bytes and unique on the server;
    /// `resume_token` must hold at least 128 random bits ([`ResumeToken::from_random_bytes`])
    /// [SE-1].
    pub fn new(
        session_id: impl Into<String>,
        resume_token: ResumeToken,
        config: &ServerConfig,
    ) -> Self {
        ServerSession {
            session_id: session_id.into(),
            resume_token,
            outbox: Outbox::new(config.outbox),
            inbox: Inbox::new(config.max_inflight),
            received: VecDeque::new(),
        }
    }

    /// A session carried on from another process, with a new resume secret: the server that
    /// kept `state` lost the connection (or crashed), and the client resumes here [RS-1, RS-8].
    /// Returns the session and the local ids of `state.in_flight`, in order.
    pub fn restore(
        session_id: impl Into<String>,
        resume_token: ResumeToken,
        config: &ServerConfig,
        state: SessionState,
    ) -> (Self, Vec<MessageId>) {
        let (outbox, ids) = Outbox::restore(config.outbox, state.settled_through, state.in_flight);
        let session = ServerSession {
            session_id: session_id.into(),
            resume_token,
            outbox,
            inbox: Inbox::restore(state.last_received, state.recent_nacks, config.max_inflight),
            received: VecDeque::new(),
        };
        (session, ids)
    }

    /// What another process needs to carry this session on, and the local ids of its
    /// `in_flight` messages, in order.
    pub fn state(&self) -> (SessionState, Vec<MessageId>) {
        let (ids, in_flight) = self
            .outbox
            .in_flight_entries()
            .map(|(id, data)| (id, data.clone()))
            .unzip();
        let state = SessionState {
            last_received: self.inbox.last_received(),
            recent_nacks: self.inbox.recent_nacks().cloned().collect(),
            settled_through: self.outbox.settled_through(),
            in_flight,
        };
        (state, ids)
    }

    /// The messages queued and never transmitted, in order: what [`state`](Self::state) leaves
    /// out, for a server that must still deliver some of them after a resume elsewhere.
    pub fn untransmitted(&self) -> impl Iterator<Item = (MessageId, &Data)> {
        self.outbox.untransmitted_entries()
    }

    /// Where the session stands: when this changes, so does [`state`](Self::state).
    pub fn progress(&self) -> SessionProgress {
        SessionProgress {
            last_received: self.inbox.last_received(),
            last_refused: self.inbox.recent_nacks().last().map_or(0, |n| n.id),
            highest_sent: self.outbox.highest_sent(),
            settled_through: self.outbox.settled_through(),
        }
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.session_id
    }

    /// The session's resume secret, for a server that must check resumes while the session is
    /// attached elsewhere. Never log it [SE-2].
    pub fn resume_token(&self) -> &ResumeToken {
        &self.resume_token
    }

    /// Replaces the resume secret; the next `connection_ready` carries the new one and the old
    /// one no longer resumes the session [RS-8]. A server that rotates on every resume limits a
    /// leaked token to one use. `token` must hold at least 128 random bits [SE-1].
    pub fn rotate_resume_token(&mut self, token: ResumeToken) {
        self.resume_token = token;
    }

    /// Whether `resume` names this session with its secret (compared in constant time) [SE-4].
    pub fn matches(&self, resume: &Resume) -> bool {
        let token_matches = self.resume_token == resume.resume_token;
        token_matches && self.session_id == resume.session_id
    }

    /// Queues a message for the client. It is transmitted while a connection carrying this
    /// session is ready, and ends in exactly one [`SessionEvent::Outcome`].
    pub fn send(
        &mut self,
        data: Data,
        ttl: Option<Duration>,
        now: Time,
    ) -> Result<MessageId, SendError> {
        self.outbox.push(data, ttl.map(|ttl| now + ttl))
    }

    /// Takes back a message that was queued and never transmitted, with no outcome: for a
    /// server whose mailbox dropped the record this message copies [CU-5]. A message already
    /// transmitted on some connection stays until the client settles it. Returns whether it was
    /// taken back.
    pub fn withdraw(&mut self, id: MessageId) -> bool {
        self.outbox.withdraw(id)
    }

    /// Messages accepted and not yet settled.
    pub fn pending(&self) -> usize {
        self.outbox.len()
    }

    /// The highest client message id received.
    pub fn last_received(&self) -> u64 {
        self.inbox.last_received()
    }

    /// Ends the session (the client closed it, or its resume window passed): every message still
    /// held ends as [`Outcome::Closed`].
    pub fn end(&mut self) {
        self.outbox.settle_all(&Outcome::Closed);
    }

    /// Expires messages whose time-to-live ran out before their first transmission.
    pub fn expire(&mut self, now: Time) {
        self.outbox.expire(now);
    }

    /// When [`expire`](Self::expire) has something to do next.
    pub fn next_expiry(&self) -> Option<Time> {
        self.outbox.next_expiry()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        if let Some((id, outcome)) = self.outbox.poll_outcome() {
            return Some(SessionEvent::Outcome { id, outcome });
        }
        self.received
            .pop_front()
            .map(|(id, data)| SessionEvent::Message { id, data })
    }
}

/// What a server keeps of a session so that another process can carry it on after this one is
/// gone [RS-1]: the positions of both directions, the refusals the client may still need to see
/// again [DL-8], and every message transmitted and not yet settled, with its wire id implied by
/// its place. It leaves out the resume secret, which the embedding server keeps (hashed), and the
/// messages never transmitted, which the server queues again from where it holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The highest client message id received.
    pub last_received: u64,
    /// Refusals sent that the client may not have seen, oldest first.
    pub recent_nacks: Vec<Nack>,
    /// Every server message id up to this one is settled.
    pub settled_through: u64,
    /// The server messages transmitted and not settled: ids `settled_through + 1` onwards.
    pub in_flight: Vec<Data>,
}

/// Where a session stands, cheap to take and compare: a server that persists
/// [`SessionState`] writes it again only when this changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionProgress {
    /// The highest client message id received.
    pub last_received: u64,
    /// The id of the latest refusal sent (0 for none).
    pub last_refused: u64,
    /// The highest server message id transmitted.
    pub highest_sent: u64,
    /// Every server message id up to this one is settled.
    pub settled_through: u64,
}

/// What a connection's application should hear about, besides its session's events.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The client's `hello`: authenticate it, register the connection so that messages routed to
    /// its user reach it, then call [`ServerConnection::accept`] — or refuse it with
    /// [`ServerConnection::goaway`] [HS-4].
    Hello(Hello),
    /// The connection is over. Take its session with [`ServerConnection::take_session`]: keep it
    /// for the resume window unless `session_ended` [RS-1, RS-6].
    Closed {
        /// Why.
        reason: ConnectionCloseReason,
        /// Whether the client ended the session on purpose (close code 1000).
        session_ended: bool,
    },
}

/// Why a server connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionCloseReason {
    /// The socket closed, with the close code if a close frame arrived.
    SocketClosed {
        /// The code.
        code: Option<u16>,
    },
    /// The server sent `goaway` with this code.
    Goaway {
        /// The code.
        code: u16,
    },
    /// No `hello` within the hello timeout [HS-7].
    HelloTimeout,
    /// Nothing from the client for `2 × heartbeat_ms` [HB-4].
    HeartbeatTimeout,
    /// The client broke a protocol rule.
    ProtocolViolation(ProtocolError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnPhase {
    AwaitingHello { deadline: Time },
    AwaitingDecision,
    Ready,
    Closed,
}

/// The server side of one socket: sends `welcome` at once, waits for `hello`, sends
/// `connection_ready` only when the application accepts, then carries its session's messages
/// (method groups as in [`crate::ClientSession`]).
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    phase: ConnPhase,
    session: Option<ServerSession>,
    /// The `hello.resume` of this connection, to check against the session it is given.
    resume: Option<Resume>,
    control: VecDeque<Frame>,
    events: VecDeque<ConnectionEvent>,
    close: Option<(u16, String)>,
    now: Time,
    last_received_at: Time,
    next_ping_at: Time,
    pings_sent: u64,
}

impl ServerConnection {
    /// A connection whose socket just opened. Its first output is `welcome` with `phase` [HS-1]:
    /// [`ServerPhase::Starting`] while the server cannot yet make connections ready [SG-1].
    pub fn new(config: ServerConfig, phase: ServerPhase, now: Time) -> Self {
        let welcome = config.welcome(phase);
        let deadline = now + config.hello_timeout;
        ServerConnection {
            next_ping_at: now + config.heartbeat,
            config,
            phase: ConnPhase::AwaitingHello { deadline },
            session: None,
            resume: None,
            control: VecDeque::from([Frame::Welcome(welcome)]),
            events: VecDeque::new(),
            close: None,
            now,
            last_received_at: now,
            pings_sent: 0,
        }
    }

    // ----- getters -----

    /// Whether `connection_ready` has been sent and the connection is open.
    pub fn is_ready(&self) -> bool {
        self.phase == ConnPhase::Ready
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.phase == ConnPhase::Closed
    }

    /// The session this connection carries.
    pub fn session(&self) -> Option<&ServerSession> {
        self.session.as_ref()
    }

    /// The session this connection carries, to send on it.
    pub fn session_mut(&mut self) -> Option<&mut ServerSession> {
        self.session.as_mut()
    }

    // ----- commands -----

    /// Makes the connection ready with `session` [HS-4]: call this only after the connection is
    /// registered so that messages routed to its user reach it. On a connection that already
    /// closed, the session is only kept, for [`take_session`](Self::take_session). `resumed` says that `session` is
    /// the one the `hello` asked to resume (the caller checked it with
    /// [`ServerSession::matches`] and that it belongs to the same user [SE-3]).
    pub fn accept(&mut self, mut session: ServerSession, resumed: bool, now: Time) {
        self.now = now;
        if self.phase != ConnPhase::AwaitingDecision {
            self.session = Some(session);
            return;
        }
        let last_received = if resumed {
            let client_position = self.resume.as_ref().map_or(0, |r| r.last_received);
            if let Err(error) = session.outbox.resume_after(client_position) {
                self.session = Some(session);
                self.violation(error);
                return;
            }
            session.inbox.last_received()
        } else {
            0
        };
        let backlog = session.outbox.untransmitted();
        self.control
            .push_back(Frame::ConnectionReady(ConnectionReady {
                session_id: session.session_id.clone(),
                resume_token: session.resume_token.clone(),
                resumed,
                last_received,
                backlog: u64::try_from(backlog).unwrap_or(u64::MAX),
            }));
        session.inbox.set_max_inflight(self.config.max_inflight);
        session.inbox.on_ready();
        self.session = Some(session);
        self.phase = ConnPhase::Ready;
    }

    /// Sends `goaway` and closes the connection with the same code [GA-1]. Use 4002 with a
    /// `retry_after` when start-up gave up [SG-3], 41xx to ask for fresh credentials, 4203 when
    /// another connection took the session over [RS-7].
    pub fn goaway(&mut self, code: u16, reason: &str, retry_after: Option<Duration>, now: Time) {
        self.now = now;
        self.close_with_goaway(
            code,
            reason,
            retry_after,
            ConnectionCloseReason::Goaway { code },
        );
    }

    /// Refuses a client message the application was handed in [`SessionEvent::Message`]: a
    /// `nack` with `code` and `reason` goes out instead of the `ack` [DL-6]. Call it before the
    /// connection next transmits, and in id order; a message already acknowledged can no longer
    /// be refused.
    pub fn refuse(&mut self, id: u64, code: &str, reason: &str) -> Result<(), RefuseError> {
        let session = self.session.as_mut().ok_or(RefuseError::NoSession)?;
        session.inbox.refuse_delivered(id, code, reason)
    }

    /// Detaches the session, to keep it for resume once the connection is closed, or to hand it
    /// to another connection. A connection that is still open without its session carries no
    /// messages: close it with [`goaway`](Self::goaway) (4203 after a takeover [RS-7]).
    pub fn take_session(&mut self) -> Option<ServerSession> {
        self.session.take()
    }

    // ----- transport facts -----

    /// A text frame arrived.
    pub fn handle_text(&mut self, text: &str, now: Time) {
        self.now = now;
        if self.phase == ConnPhase::Closed {
            return;
        }
        self.last_received_at = now;
        match decode_from::<false>(text, self.config.max_frame_bytes) {
            Ok(frame) => self.handle_frame(frame),
            Err(DecodeError::UnknownType { .. })
                if !matches!(self.phase, ConnPhase::AwaitingHello { .. }) => {}
            Err(DecodeError::InvalidFrame {
                msg_id: Some(id),
                too_large,
                detail,
                ..
            }) if self.phase == ConnPhase::Ready => {
                let refused = match self.session.as_mut() {
                    Some(session) => session.inbox.refuse_frame(id, too_large, detail),
                    None => Ok(false),
                };
                if let Err(error) = refused {
                    self.violation(error);
                }
            }
            Err(error) => self.violation(ProtocolError::Decode(error)),
        }
    }

    /// A binary frame arrived: readyws uses text frames only [TR-3].
    pub fn handle_binary(&mut self, now: Time) {
        self.now = now;
        if self.phase != ConnPhase::Closed {
            let error = DecodeError::InvalidJson {
                detail: "binary frames are not part of readyws".to_owned(),
            };
            self.violation(ProtocolError::Decode(error));
        }
    }

    /// The socket closed, with the close frame's code and reason if one arrived.
    pub fn handle_closed(&mut self, close: Option<(u16, &str)>, now: Time) {
        self.now = now;
        if self.phase == ConnPhase::Closed {
            return;
        }
        let code = close.map(|(code, _)| code);
        let session_ended = code == Some(code::NORMAL_CLOSURE);
        self.phase = ConnPhase::Closed;
        self.control.clear();
        self.events.push_back(ConnectionEvent::Closed {
            reason: ConnectionCloseReason::SocketClosed { code },
            session_ended,
        });
    }

    /// The driver's timer fired.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        if let Some(session) = self.session.as_mut() {
            session.expire(now);
        }
        match self.phase {
            ConnPhase::AwaitingHello { deadline } if deadline <= now => {
                let reason = "[HS-7] no hello within the hello timeout";
                let why = ConnectionCloseReason::HelloTimeout;
                self.close_with_goaway(code::HELLO_TIMEOUT, reason, None, why);
            }
            ConnPhase::AwaitingDecision | ConnPhase::Ready => {
                if self.liveness_deadline() <= now {
                    let reason = "[HB-4] nothing received for twice the heartbeat interval";
                    let why = ConnectionCloseReason::HeartbeatTimeout;
                    self.close_with_goaway(code::HEARTBEAT_TIMEOUT, reason, None, why);
                } else if self.next_ping_at <= now {
                    // The server pings, so that a browser whose timers are throttled only has to
                    // answer, which it does from its message handler [HB-1].
                    self.pings_sent += 1;
                    self.control.push_back(Frame::Ping(Ping {
                        nonce: Some(self.pings_sent.to_string()),
                    }));
                    self.next_ping_at = now + self.config.heartbeat;
                }
            }
            _ => {}
        }
    }

    // ----- outputs -----

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<String> {
        if let Some(frame) = self.control.pop_front() {
            return Some(encode_by::<true>(&frame));
        }
        if self.phase != ConnPhase::Ready {
            return None;
        }
        let session = self.session.as_mut()?;
        if let Some(frame) = session.inbox.poll_frame() {
            return Some(encode_by::<true>(&frame));
        }
        session.outbox.next_transmit(
            self.now,
            self.config.max_inflight,
            self.config.max_frame_bytes,
        )
    }

    /// The close the driver must perform once every pending frame is written: code and reason.
    pub fn poll_close(&mut self) -> Option<(u16, String)> {
        if self.control.is_empty() {
            self.close.take()
        } else {
            None
        }
    }

    /// The next connection event (its session's events come from
    /// [`poll_session_event`](Self::poll_session_event)).
    pub fn poll_event(&mut self) -> Option<ConnectionEvent> {
        self.events.pop_front()
    }

    /// The next event of the carried session (see [`ServerSession::poll_event`]).
    pub fn poll_session_event(&mut self) -> Option<SessionEvent> {
        self.session.as_mut()?.poll_event()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let expiry = self.session.as_ref().and_then(ServerSession::next_expiry);
        let phase = match self.phase {
            ConnPhase::AwaitingHello { deadline } => Some(deadline),
            ConnPhase::AwaitingDecision | ConnPhase::Ready => {
                Some(self.next_ping_at.min(self.liveness_deadline()))
            }
            ConnPhase::Closed => None,
        };
        [phase, expiry].into_iter().flatten().min()
    }

    // ----- internals -----

    fn liveness_deadline(&self) -> Time {
        self.last_received_at + self.config.heartbeat.saturating_mul(2)
    }

    fn handle_frame(&mut self, frame: Frame) {
        let kind = frame.kind();
        match (self.phase, frame) {
            (ConnPhase::AwaitingHello { .. }, Frame::Hello(hello)) => {
                self.phase = ConnPhase::AwaitingDecision;
                self.next_ping_at = self.now + self.config.heartbeat;
                self.resume = hello.resume.clone();
                self.events.push_back(ConnectionEvent::Hello(hello));
            }
            (ConnPhase::AwaitingHello { .. }, _) => self.unexpected(Expected::Hello, kind),
            (ConnPhase::AwaitingDecision | ConnPhase::Ready, Frame::Ping(ping)) => {
                self.control
                    .push_back(Frame::Pong(Pong { nonce: ping.nonce }));
            }
            (ConnPhase::AwaitingDecision | ConnPhase::Ready, Frame::Pong(_)) => {}
            // A `msg` before `connection_ready` is refused by closing, not by `nack`: the client
            // broke the handshake and will resend it properly on the next connection [HS-6].
            (ConnPhase::AwaitingDecision, _) => self.unexpected(Expected::ServerDecision, kind),
            (ConnPhase::Ready, Frame::Msg(msg)) => {
                let Some(session) = self.session.as_mut() else {
                    return;
                };
                match session.inbox.receive(msg.id) {
                    Ok(Verdict::Deliver) => session.received.push_back((msg.id, msg.data)),
                    Ok(Verdict::Duplicate) => {}
                    Err(error) => self.violation(error),
                }
            }
            (ConnPhase::Ready, Frame::Ack(ack)) => {
                let result = match self.session.as_mut() {
                    Some(session) => session.outbox.handle_ack(ack.id),
                    None => Ok(()),
                };
                if let Err(error) = result {
                    self.violation(error);
                }
            }
            (ConnPhase::Ready, Frame::Nack(nack)) => {
                let result = match self.session.as_mut() {
                    Some(session) => session.outbox.handle_nack(nack.id, nack.code, nack.reason),
                    None => Ok(()),
                };
                if let Err(error) = result {
                    self.violation(error);
                }
            }
            (ConnPhase::Ready, _) => self.unexpected(Expected::SessionFrame, kind),
            (ConnPhase::Closed, _) => {}
        }
    }

    fn unexpected(&mut self, expected: Expected, got: FrameKind) {
        self.violation(ProtocolError::UnexpectedFrame { expected, got });
    }

    fn violation(&mut self, error: ProtocolError) {
        let reason = error.to_string();
        let why = ConnectionCloseReason::ProtocolViolation(error);
        self.close_with_goaway(code::PROTOCOL_ERROR, &reason, None, why);
    }

    /// Queues `goaway`, then the close with the same code once it is written [GA-1].
    fn close_with_goaway(
        &mut self,
        code: u16,
        reason: &str,
        retry_after: Option<Duration>,
        why: ConnectionCloseReason,
    ) {
        if self.phase == ConnPhase::Closed {
            return;
        }
        let reason = fit_close_reason(reason);
        self.control.push_back(Frame::Goaway(Goaway {
            code,
            reason: reason.clone(),
            retry_after_ms: retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }));
        self.close = Some((code, reason));
        self.phase = ConnPhase::Closed;
        self.events.push_back(ConnectionEvent::Closed {
            reason: why,
            session_ended: false,
        });
    }
}
