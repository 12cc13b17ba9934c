//! The task that drives a client's [`ClientSession`]: it turns socket frames, commands and timer
//! wake-ups into `handle_*` calls and carries out what `poll_*` returns. Every protocol decision
//! is the session's.
//!
//! The session sits in a [`Core`] shared with the [`Client`] handle: `send` hands a message to the
//! session under a short lock and nudges this task, instead of a command and a reply per message
//! (two task switches each, which capped throughput at a fifth of a bare socket's). The lock is
//! never held across an `.await`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use readyws_protocol::{
    Action, ClientEvent, ClientSession, ConnId, Data, DisconnectReason, Outcome, SUBPROTOCOL,
    SendError, SendErrorReason, Time,
};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::builder::{Checked, TokenFuture, TokenProvider};
use crate::deliveries::Deliveries;
use crate::stats::{ReadyTimes, Stats};
use crate::{Client, CloseReport, Command, ConnectionState, Delivery};

/// The most frames taken in one turn before the session's output is written: a bound on how long
/// a busy server can hold up the client's own sending.
const BURST: usize = 256;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// An attempt to open a socket: the socket, the subprotocol the server selected, and the fresh
/// token when a provider supplied one.
type Opened = Result<(Socket, Option<String>, Option<Option<String>>), OpenFailure>;

/// Why a socket did not open.
enum OpenFailure {
    /// The handshake completed without `readyws.v1` selected (tungstenite refuses such a response
    /// itself): not a readyws server, which is final [TR-2], not a reason to reconnect.
    NotReadyws,
    /// Anything else: the reconnect schedule tries again.
    Failed(String),
}

impl From<String> for OpenFailure {
    fn from(detail: String) -> Self {
        OpenFailure::Failed(detail)
    }
}
type Connecting = Pin<Box<dyn Future<Output = Opened> + Send>>;

pub(crate) fn start(builder: Checked) -> Client {
    let seed = builder.seed.unwrap_or_else(random_seed);
    let core = Arc::new(Core {
        shared: Mutex::new(Shared {
            session: ClientSession::new(builder.protocol.clone(), seed),
            deliveries: Deliveries::default(),
            ended: false,
        }),
        epoch: Instant::now(),
        wake: Notify::new(),
        room: Notify::new(),
    });
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (state_tx, state) = watch::channel(ConnectionState::Connecting { attempt: 1 });
    let (messages_tx, messages) = mpsc::channel(builder.message_buffer);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let client = Client::new(crate::Handle {
        core: core.clone(),
        commands,
        state,
        messages: Mutex::new(Some(messages)),
        stats: stats.clone(),
        overflow: builder.overflow,
        default_ttl: builder.protocol.default_ttl,
    });
    let span = info_span!("readyws_client", url = %builder.url);
    let driver = Driver {
        core,
        url: builder.url,
        headers: builder.headers,
        connector: builder.connector,
        token_provider: builder.token_provider,
        socket: None,
        connecting: None,
        refreshing: None,
        messages: messages_tx,
        undelivered: VecDeque::new(),
        state: state_tx,
        stats,
        ready_times: ReadyTimes::default(),
        closing: None,
        attempt_started: None,
        pending_reset: None,
        room_freed: false,
    };
    tokio::spawn(driver.run(command_rx).instrument(span));
    client
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // Without the OS generator every client would share one jitter sequence; a fixed fallback is
    // still better than refusing to run.
    if getrandom::getrandom(&mut bytes).is_err() {
        warn!("no OS random numbers: reconnect jitter uses the clock instead");
        return u64::from(std::process::id()) ^ Instant::now().elapsed().as_nanos() as u64;
    }
    u64::from_le_bytes(bytes)
}

/// What the [`Client`] handle and the driver task share.
#[derive(Debug)]
pub(crate) struct Core {
    shared: Mutex<Shared>,
    /// The session's clock starts here.
    epoch: Instant,
    /// Tells the driver that the session has something new to carry out.
    pub(crate) wake: Notify,
    /// Tells waiting senders that a message ended and freed room.
    pub(crate) room: Notify,
}

#[derive(Debug)]
struct Shared {
    session: ClientSession,
    /// Registered under the same lock as the message is accepted, so that its outcome cannot
    /// come first.
    deliveries: Deliveries,
    /// The driver task has ended: nothing carries messages any more.
    ended: bool,
}

impl Core {
    fn now(&self) -> Time {
        Time::from_millis(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// Hands a message to the session; the delivery is registered under the same lock, so its
    /// outcome cannot be reported before it is.
    pub(crate) fn accept(&self, data: Data, ttl: Option<Duration>) -> Result<Delivery, SendError> {
        let now = self.now();
        let mut shared = self.lock();
        if shared.ended {
            return Err(SendError::new(SendErrorReason::Closed, data));
        }
        let id = shared.session.send_with_ttl(data, ttl, now)?;
        let (sender, outcome) = oneshot::channel();
        shared.deliveries.insert(id, sender);
        Ok(Delivery { id, outcome })
    }
}

struct Closing {
    done: oneshot::Sender<CloseReport>,
    report: CloseReport,
}

/// Locks `mutex`, also after a panic in another holder: every value kept under these locks
/// stays consistent between statements, so what a panicking holder left is still usable, and a
/// client keeps carrying messages instead of failing every later call.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Driver {
    core: Arc<Core>,
    url: url::Url,
    headers: Vec<(HeaderName, HeaderValue)>,
    connector: Option<Connector>,
    token_provider: Option<TokenProvider>,
    socket: Option<(ConnId, Socket)>,
    connecting: Option<(ConnId, Connecting)>,
    refreshing: Option<TokenFuture>,
    messages: mpsc::Sender<Data>,
    /// Messages the session delivered while the application's stream was full, oldest first.
    /// While there are any the socket is not read, so this holds at most one burst ([`BURST`]).
    undelivered: VecDeque<Data>,
    state: watch::Sender<ConnectionState>,
    stats: Arc<Mutex<Stats>>,
    ready_times: ReadyTimes,
    closing: Option<Closing>,
    attempt_started: Option<Instant>,
    /// A session reset the next `Ready` state reports.
    pending_reset: Option<crate::SessionReset>,
    /// Messages ended in this round of [`Driver::drain`]: senders waiting for room are told.
    room_freed: bool,
}

impl Drop for Driver {
    /// However the task ends (closed, or its runtime shut down), senders are told: a new message
    /// is refused as closed, and every pending delivery resolves as [`Outcome::Closed`].
    fn drop(&mut self) {
        let mut shared = self.core.lock();
        shared.ended = true;
        shared.deliveries.clear();
        drop(shared);
        self.core.room.notify_waiters();
    }
}

impl Driver {
    fn now(&self) -> Time {
        self.core.now()
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let now = self.now();
        self.core.lock().session.connect(now);
        let mut commands_open = true;
        // One timer for the task's life, moved only when the session's deadline moves: a new
        // timer per turn costs a registration and a removal every time a frame arrives.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed_for = None;
        loop {
            self.drain().await;
            if matches!(*self.state.borrow(), ConnectionState::Closed { .. }) {
                // Messages the session delivered reach the application before the task ends
                // (or go with its stream, if it dropped that).
                while let Some(data) = self.undelivered.pop_front() {
                    if self.messages.send(data).await.is_err() {
                        self.discard_undelivered();
                    }
                }
                break;
            }
            let deadline = self.core.lock().session.poll_timeout();
            if deadline != armed_for {
                armed_for = deadline;
                if let Some(at) = deadline {
                    let wake = tokio::time::Instant::now() + at.saturating_since(self.now());
                    timer.as_mut().reset(wake);
                }
            }
            tokio::select! {
                () = self.core.wake.notified() => {}
                command = commands.recv(), if commands_open => match command {
                    Some(command) => self.command(command),
                    None => {
                        // Every handle is gone: nobody can await what is left.
                        commands_open = false;
                        let now = self.now();
                        self.core.lock().session.close(Duration::ZERO, now);
                    }
                },
                (conn, result) = connecting(&mut self.connecting) => {
                    self.connecting = None;
                    let now = self.now();
                    match result {
                        Ok((socket, subprotocol, fresh_token)) => {
                            debug!(conn = conn.0, "socket open");
                            self.socket = Some((conn, socket));
                            let mut shared = self.core.lock();
                            if let Some(token) = fresh_token {
                                shared.session.set_token(token, now);
                            }
                            shared.session.handle_connected(conn, subprotocol.as_deref(), now);
                        }
                        Err(OpenFailure::NotReadyws) => {
                            self.core.lock().session.handle_connected(conn, None, now);
                        }
                        Err(OpenFailure::Failed(problem)) => {
                            self.core.lock().session.handle_connect_failed(conn, problem, now);
                        }
                    }
                }
                // A full stream stops the reading: the server's window then holds the rest.
                permit = self.messages.clone().reserve_owned(), if !self.undelivered.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(data) = self.undelivered.pop_front() {
                                permit.send(data);
                            }
                            self.deliver_undelivered();
                        }
                        Err(_) => self.discard_undelivered(),
                    }
                }
                frame = next_frame(&mut self.socket), if self.undelivered.is_empty() => {
                    // Frames that already arrived are taken in the same turn, so that one drain
                    // (one write) answers them all: a burst of messages gets one cumulative `ack`.
                    self.frame(frame);
                    for _ in 1..BURST {
                        let Some((_, socket)) = self.socket.as_mut() else { break };
                        let Some(frame) = socket.next().now_or_never() else { break };
                        self.frame(frame);
                    }
                }
                token = refreshing(&mut self.refreshing) => {
                    self.refreshing = None;
                    let now = self.now();
                    self.core.lock().session.set_token(token, now);
                }
                () = &mut timer, if armed_for.is_some() => {
                    armed_for = None;
                    let now = self.now();
                    self.core.lock().session.handle_timeout(now);
                }
            }
        }
        debug!("client task ended");
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::SetToken(token) => self.core.lock().session.set_token(token, now),
            Command::Close { grace, done } => {
                self.closing = Some(Closing {
                    done,
                    report: CloseReport::default(),
                });
                self.core.lock().session.close(grace, now);
            }
        }
    }

    fn frame(&mut self, frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        let Some(conn) = self.socket.as_ref().map(|(conn, _)| *conn) else {
            return;
        };
        let now = self.now();
        match frame {
            Some(Ok(Message::Text(text))) => {
                self.count(|s| s.bytes_received += text.len() as u64);
                self.core
                    .lock()
                    .session
                    .handle_text(conn, text.as_str(), now);
            }
            Some(Ok(Message::Binary(_))) => self.core.lock().session.handle_binary(conn, now),
            Some(Ok(Message::Close(close))) => {
                let close = close
                    .as_ref()
                    .map(|f| (u16::from(f.code), f.reason.as_str()));
                self.core
                    .lock()
                    .session
                    .handle_disconnected(conn, close, now);
                self.socket = None;
            }
            Some(Ok(_)) => {}
            Some(Err(problem)) => {
                debug!(%problem, "socket error");
                self.socket_lost(conn);
            }
            None => self.socket_lost(conn),
        }
    }

    /// The socket broke: the session keeps every unacknowledged message for the next connection.
    fn socket_lost(&mut self, conn: ConnId) {
        self.socket = None;
        let now = self.now();
        self.core
            .lock()
            .session
            .handle_disconnected(conn, None, now);
    }

    /// Carries out everything the session wants, until it wants nothing more.
    async fn drain(&mut self) {
        let mut unflushed = false;
        let mut transmits = Vec::new();
        loop {
            let mut progressed = false;
            let core = Arc::clone(&self.core);
            {
                let mut shared = core.lock();
                while let Some(action) = shared.session.poll_action() {
                    progressed = true;
                    self.action(action, &shared.session);
                }
                while let Some(transmit) = shared.session.poll_unencoded() {
                    progressed = true;
                    transmits.push(transmit);
                }
                while let Some(event) = shared.session.poll_event() {
                    progressed = true;
                    self.event(event, &mut shared);
                }
            }
            // Once per round rather than per outcome: telling waiters takes the `Notify`'s lock,
            // which every sender waiting for room shares.
            if std::mem::take(&mut self.room_freed) {
                self.core.room.notify_waiters();
            }
            // Written with the lock released: senders keep adding while the socket is busy.
            for transmit in transmits.drain(..) {
                let transmit = transmit.encode();
                let Some((conn, socket)) = self.socket.as_mut() else {
                    continue;
                };
                if *conn != transmit.conn {
                    continue;
                }
                let length = transmit.text.len() as u64;
                // Queued, not flushed: the burst is flushed once below.
                unflushed = true;
                if let Err(problem) = socket.feed(Message::Text(transmit.text.into())).await {
                    debug!(%problem, "write failed");
                    let conn = *conn;
                    self.socket_lost(conn);
                } else {
                    self.count(|s| s.bytes_sent += length);
                }
            }
            if !progressed {
                break;
            }
        }
        // One write for every frame the session produced in this round.
        if unflushed {
            if let Some((conn, socket)) = self.socket.as_mut() {
                if let Err(problem) = socket.flush().await {
                    debug!(%problem, "flush failed");
                    let conn = *conn;
                    self.socket_lost(conn);
                }
            }
        }
        let shared = self.core.lock();
        let (queued, in_flight, bytes) = (
            shared.session.pending() - shared.session.in_flight(),
            shared.session.in_flight(),
            shared.session.pending_bytes(),
        );
        drop(shared);
        self.count(|s| {
            s.queued = queued;
            s.in_flight = in_flight;
            s.queued_bytes = bytes;
        });
    }

    fn action(&mut self, action: Action, session: &ClientSession) {
        match action {
            Action::Open { conn } => {
                info!(conn = conn.0, "connection attempt started");
                self.attempt_started = Some(Instant::now());
                self.count(|s| s.connection_attempts += 1);
                let _ = self.state.send(ConnectionState::Connecting {
                    attempt: match session.state() {
                        readyws_protocol::ClientState::Connecting { attempt } => attempt,
                        _ => 1,
                    },
                });
                self.connecting = Some((conn, self.open()));
            }
            Action::Close { conn, code, reason } => {
                if self.connecting.as_ref().is_some_and(|(c, _)| *c == conn) {
                    self.connecting = None;
                }
                if self.socket.as_ref().is_some_and(|(c, _)| *c == conn) {
                    if let Some((_, mut socket)) = self.socket.take() {
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        };
                        // Closed on the side: a peer that does not answer (a dead connection is
                        // the usual reason to close) must not hold up the next attempt.
                        tokio::spawn(async move {
                            let close = socket.close(Some(frame));
                            let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                        });
                    }
                }
            }
        }
    }

    /// Opens a socket: fetches a fresh token first when a provider is set.
    fn open(&self) -> Connecting {
        let url = self.url.clone();
        let headers = self.headers.clone();
        let connector = self.connector.clone();
        let provider = self.token_provider.clone();
        Box::pin(async move {
            let fresh_token = match provider {
                Some(provider) => Some(provider().await),
                None => None,
            };
            let mut request = url
                .as_str()
                .into_client_request()
                .map_err(|problem| format!("bad URL {url}: {problem}"))?;
            let target = request.headers_mut();
            target.insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
            for (name, value) in headers {
                target.insert(name, value);
            }
            let (socket, response) = connect(request, connector)
            .await
            .map_err(|problem| match problem {
                tokio_tungstenite::tungstenite::Error::Protocol(
                    tokio_tungstenite::tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(_),
                ) => OpenFailure::NotReadyws,
                other => OpenFailure::Failed(other.to_string()),
            })?;
            let subprotocol = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            Ok((socket, subprotocol, fresh_token))
        })
    }

    fn event(&mut self, event: ClientEvent, shared: &mut Shared) {
        match event {
            ClientEvent::Welcome { server, starting } => {
                info!(%server, starting, "welcome; hello sent");
            }
            ClientEvent::Ready {
                session_id,
                resumed,
                backlog,
            } => {
                let elapsed = self
                    .attempt_started
                    .map(|at| at.elapsed())
                    .unwrap_or_default();
                let held = shared.session.pending();
                info!(session = %session_id, resumed, backlog, time_to_ready_ms = elapsed.as_millis() as u64, held_messages = held, "ready");
                let mut stats = lock(&self.stats);
                stats.readies += 1;
                self.ready_times.record(elapsed, &mut stats);
                drop(stats);
                let _ = self.state.send(ConnectionState::Ready {
                    session_id,
                    resumed,
                    reset: self.pending_reset.take(),
                });
            }
            ClientEvent::SessionReset {
                previous_session_id,
                resent,
            } => {
                warn!(previous = %previous_session_id, resent, "the server lost the session; a new one starts");
                self.count(|s| s.session_resets += 1);
                // The session's `Ready` follows at once and carries it.
                self.pending_reset = Some(crate::SessionReset {
                    previous_session_id,
                    resent,
                });
            }
            ClientEvent::Message { data } => {
                self.count(|s| s.received += 1);
                self.undelivered.push_back(data);
                self.deliver_undelivered();
            }
            ClientEvent::Outcome { id, outcome } => {
                self.count(|s| match &outcome {
                    Outcome::Acked => s.acked += 1,
                    Outcome::Refused { .. } => s.refused += 1,
                    Outcome::Expired => s.expired += 1,
                    _ => s.unconfirmed += 1,
                });
                if let Some(closing) = self.closing.as_mut() {
                    match outcome {
                        Outcome::Acked => closing.report.acked_during_close += 1,
                        Outcome::Closed => closing.report.unsettled.push(id),
                        _ => {}
                    }
                }
                if let Some(delivery) = shared.deliveries.remove(id) {
                    let _ = delivery.send(outcome);
                }
                self.room_freed = true;
            }
            ClientEvent::Disconnected {
                reason,
                reconnect_at,
            } => {
                self.socket = None;
                if let DisconnectReason::Goaway { code, .. } = &reason {
                    info!(code, "goaway from the server");
                }
                match reconnect_at {
                    Some(at) => {
                        let delay = at.saturating_since(self.now());
                        warn!(reason = %reason, retry_in_ms = delay.as_millis() as u64, "disconnected");
                        self.count(|s| s.reconnects += 1);
                        let attempt = match shared.session.state() {
                            readyws_protocol::ClientState::Reconnecting { attempt, .. } => attempt,
                            _ => 1,
                        };
                        let _ = self.state.send(ConnectionState::Reconnecting {
                            attempt,
                            delay,
                            reason,
                        });
                    }
                    None => warn!(reason = %reason, "disconnected; waiting for fresh credentials"),
                }
            }
            ClientEvent::CredentialsRequired { code, .. } => {
                let _ = self
                    .state
                    .send(ConnectionState::AwaitingCredentials { code });
                if let Some(provider) = &self.token_provider {
                    self.refreshing = Some(provider());
                }
            }
            ClientEvent::Closed { reason } => {
                info!(%reason, "closed");
                let _ = self.state.send(ConnectionState::Closed { reason });
                if let Some(closing) = self.closing.take() {
                    let _ = closing.done.send(closing.report);
                }
                self.core.room.notify_waiters();
            }
            other => debug!(?other, "event"),
        }
    }

    /// Hands the application what fits in its stream, in order.
    fn deliver_undelivered(&mut self) {
        while let Some(data) = self.undelivered.pop_front() {
            match self.messages.try_send(data) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(data)) => {
                    self.undelivered.push_front(data);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(data)) => {
                    self.undelivered.push_front(data);
                    self.discard_undelivered();
                    return;
                }
            }
        }
    }

    /// The application dropped its stream of messages: what arrives is counted and let go.
    fn discard_undelivered(&mut self) {
        let count = self.undelivered.len() as u64;
        self.undelivered.clear();
        if count > 0 {
            debug!(
                count,
                "messages received after the application dropped its stream"
            );
            self.count(|s| s.discarded += count);
        }
    }

    fn lock_stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    fn count(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut self.lock_stats());
    }
}

/// tungstenite's defaults but for the read buffer: its default, 128 KiB, is zeroed before every
/// read and held by every client; frames larger than 8 KiB still arrive, over several reads.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Opens the socket: with the TLS connector `connect` checked for `wss://`, plain for `ws://`.
async fn connect(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    connector: Option<Connector>,
) -> Result<
    (
        Socket,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    #[cfg(any(
        feature = "rustls-ring",
        feature = "rustls-aws-lc-rs",
        feature = "native-tls"
    ))]
    {
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(socket_config()),
            true,
            connector,
        )
        .await
    }
    #[cfg(not(any(
        feature = "rustls-ring",
        feature = "rustls-aws-lc-rs",
        feature = "native-tls"
    )))]
    {
        // Without a TLS feature only `ws://` gets this far (`connect` refuses `wss://`).
        let _plain: Option<Connector> = connector;
        tokio_tungstenite::connect_async_with_config(request, Some(socket_config()), true).await
    }
}

async fn connecting(slot: &mut Option<(ConnId, Connecting)>) -> (ConnId, Opened) {
    match slot {
        Some((conn, future)) => (*conn, future.await),
        None => std::future::pending().await,
    }
}

async fn next_frame(
    socket: &mut Option<(ConnId, Socket)>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match socket {
        Some((_, socket)) => socket.next().await,
        None => std::future::pending().await,
    }
}

async fn refreshing(slot: &mut Option<TokenFuture>) -> Option<String> {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
