//! One task per WebSocket: a driver of the protocol crate's [`ServerConnection`]. It turns socket
//! frames, hub commands and timer wake-ups into `handle_*` calls and carries out what comes back;
//! the only decisions it makes are the server's own (who the user is, which session to attach).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use readyws_hub::{Gate, Goaway, Kept, StartupGate, StoreTrouble, goaway_for};
use readyws_protocol::close::code;
use readyws_protocol::frame::Resume;
use readyws_protocol::{
    ConnectionEvent, Data, Outcome, ServerConnection, ServerPhase, ServerSession, SessionEvent,
    SessionProgress, Time,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::{AuthError, UserId};
use crate::hub::{Attach, Carrier, ConnCommand, ConnHandle, Copies, Detach, LEASE, withdraw_from};
use crate::metrics as m;
use crate::socket::{FrameReader, FrameSocket, FrameWriter, Incoming};
use crate::{Decision, Inbound, ServerHandle, Shared};

/// How long a resume waits for the connection that holds the session to let go of it: long
/// enough for a live holder to answer, and for the lease of a dead one to run out.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(LEASE.as_secs() + 2);
/// How long a resume waits between asking a holder on another instance and looking again.
const REMOTE_TAKEOVER_POLL: Duration = Duration::from_millis(50);
/// How long the answer to a client's close frame may take to write.
const CLOSE_REPLY_DEADLINE: Duration = Duration::from_secs(1);
/// The `retry_after_ms` of a `goaway` 4003 sent because the authenticator could not decide.
const AUTH_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The `retry_after_ms` of a `goaway` 4003 sent because every session the user may have is live.
const SESSIONS_FULL_RETRY_AFTER: Duration = Duration::from_secs(5);
pub(crate) async fn run(shared: Arc<Shared>, socket: impl FrameSocket) {
    let conn_id = shared.next_connection();
    let (handle, commands, wake) = ConnHandle::new();
    shared.register_connection(conn_id, handle.clone());
    let phase = if shared.is_started() {
        ServerPhase::Accepting
    } else {
        ServerPhase::Starting
    };
    let opened = Instant::now();
    let connection = ServerConnection::new(shared.protocol.clone(), phase, shared.now());
    let span = info_span!(
        "readyws_connection",
        conn = conn_id,
        user = tracing::field::Empty,
        session = tracing::field::Empty
    );
    let mut task = Task {
        gate: StartupGate::new(
            shared.now(),
            shared.options.startup_max_wait,
            shared.options.startup_retry_after,
        ),
        shared: shared.clone(),
        conn_id,
        connection,
        handle,
        user: None,
        copies: Copies::new(),
        settled: Vec::new(),
        saved: SessionProgress::default(),
        settle_by: None,
        fenced: false,
        woken: false,
        outgoing: Vec::new(),
        waiting_for_startup: None,
        session_ended: false,
        socket_ended: false,
        peer_closed: false,
        opened,
        span: span.clone(),
    };
    task.run(socket, commands, wake).instrument(span).await;
    shared.unregister_connection(conn_id);
}

/// How long the client's acknowledgements may wait for a commit of their own, when the store
/// outlives the instance (each commit is a round trip): a turn that has to commit anyway takes
/// them along. Waiting costs only this: a message acknowledged just before the instance dies is
/// sent again to the resumed session, whose client drops it as a duplicate [DL-4].
const SETTLE_LINGER: Duration = Duration::from_millis(20);
/// The most acknowledged copies that wait for a commit.
const SETTLE_BATCH: usize = 64;

/// The most frames, or commands, taken in one turn before the connection's output is written: a
/// bound on how long a busy peer can hold up the other direction.
const BURST: usize = 256;

struct Task {
    shared: Arc<Shared>,
    conn_id: u64,
    connection: ServerConnection,
    handle: ConnHandle,
    user: Option<UserId>,
    /// The session's outbox entries that are copies of mailbox records.
    copies: Copies,
    /// Copies that ended since the store was last told, with how: kept until a commit takes
    /// them, since a state that counts them settled while they stay in the mailbox would send
    /// them again after a resume.
    settled: Vec<(u64, Outcome)>,
    /// Where the session stood when the store last took its state.
    saved: SessionProgress,
    /// When acknowledgements that nothing else needs the store for are committed at the
    /// latest ([`SETTLE_LINGER`]).
    settle_by: Option<Instant>,
    /// The store says another connection carries the session now: write nothing more of it.
    fenced: bool,
    /// The session was woken: its mailbox gained records, or dropped some.
    woken: bool,
    /// Frames taken from the connection, written once the store has what they depend on.
    outgoing: Vec<String>,
    /// The resume of a `hello` the gate holds while start-up runs [SG-2]; whether one waits is
    /// the gate's to say.
    waiting_for_startup: Option<Option<Resume>>,
    session_ended: bool,
    /// The peer closed the socket, or it broke: nothing more can be read or written.
    socket_ended: bool,
    /// The peer sent a close frame, which is answered with one.
    peer_closed: bool,
    /// The wait for start-up [SG-2, SG-3].
    gate: StartupGate,
    opened: Instant,
    span: tracing::Span,
}

impl Task {
    async fn run<S: FrameSocket>(
        &mut self,
        socket: S,
        mut commands: mpsc::Receiver<ConnCommand>,
        wake: Arc<Notify>,
    ) {
        debug!("socket opened");
        let (mut reader, writer) = socket.split();
        let mut writer = Some(writer);
        // The write under way, if any: it owns the writing half until it completes, and takes
        // part in the `select!` below, so that a peer that stops reading blocks only its own
        // writes, and only until the write deadline.
        let mut writing: Option<Write<S::Writer>> = None;
        let write_deadline = self.shared.options.write_deadline();
        let mut write_due = Instant::now();
        let mut started = self.shared.started.subscribe();
        // One timer for the task's life, moved only when the connection's deadline moves: a new
        // timer per turn costs a registration and a removal every time a frame arrives.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed_for = None;
        loop {
            self.handle_events().await;
            if writing.is_none() {
                let Some(idle) = writer.take() else { break };
                match self.next_write().await {
                    Some(batch) => {
                        write_due = Instant::now() + write_deadline;
                        writing = Some(Box::pin(batch.write(idle)));
                    }
                    None => {
                        writer = Some(idle);
                        if self.connection.is_closed() {
                            break;
                        }
                    }
                }
            }
            let deadline = self.connection.poll_timeout();
            if deadline != armed_for {
                armed_for = deadline;
                if let Some(at) = deadline {
                    timer.as_mut().reset(self.instant(at));
                }
            }
            let waiting = self.gate.is_waiting();
            let busy = writing.is_some();
            tokio::select! {
                (idle, outcome) = in_progress(writing.as_mut()) => {
                    writing = None;
                    writer = Some(idle);
                    match outcome {
                        WriteOutcome::Written => {}
                        WriteOutcome::Closed => break,
                        WriteOutcome::Failed(error) => {
                            debug!(error = ?error, "socket write failed");
                            self.connection.handle_closed(None, self.shared.now());
                            break;
                        }
                    }
                }
                () = tokio::time::sleep_until(write_due), if busy => {
                    m::deadline("write");
                    warn!(blocked_ms = write_deadline.as_millis() as u64, "a write stayed blocked past its deadline: the client stopped reading; dropping the connection");
                    self.connection.handle_closed(None, self.shared.now());
                    break;
                }
                frame = reader.recv() => {
                    // Frames that already arrived are taken in the same turn: the inbox then owes
                    // one cumulative `ack` for all of them, written once, instead of a write per
                    // message.
                    let mut more = self.handle_frame(frame);
                    let mut taken = 1;
                    while more && taken < BURST {
                        let Some(frame) = reader.recv().now_or_never() else { break };
                        more = self.handle_frame(frame);
                        taken += 1;
                    }
                    if self.socket_ended {
                        break;
                    }
                }
                Some(command) = commands.recv() => {
                    self.handle_command(command).await;
                    for _ in 1..BURST {
                        let Ok(command) = commands.try_recv() else { break };
                        self.handle_command(command).await;
                    }
                }
                () = wake.notified() => {
                    self.woken = true;
                    self.turn().await;
                }
                () = sleep_until_some(self.settle_by) => {
                    self.turn().await;
                }
                () = &mut timer, if armed_for.is_some() => {
                    armed_for = None;
                    self.connection.handle_timeout(self.shared.now());
                }
                Ok(()) = started.changed(), if waiting => {
                    if *started.borrow() && self.gate.handle_started() == Gate::Proceed {
                        if let Some(resume) = self.waiting_for_startup.take() {
                            self.attach(resume).await;
                        }
                    }
                }
                () = sleep_until_some(self.gate.poll_timeout().map(|at| self.instant(at))), if waiting => {
                    if let Gate::GiveUp(goaway) = self.gate.handle_timeout(self.shared.now()) {
                        self.waiting_for_startup = None;
                        self.send_goaway(goaway);
                    }
                }
            }
        }
        if self.peer_closed {
            // The close frame tungstenite queued in answer to the client's goes out with the next
            // flush (RFC 6455 §5.5.1), after a write under way, all within a short deadline.
            let reply = async {
                if let Some(write) = writing.as_mut() {
                    writer = Some(write.await.0);
                }
                if let Some(idle) = writer.as_mut() {
                    let _ = idle.flush().await;
                }
            };
            let _ = tokio::time::timeout(CLOSE_REPLY_DEADLINE, reply).await;
        }
        self.finish().await;
    }

    /// Takes every frame due, and the close if one is due, once the store knows what they
    /// depend on. `None`: nothing to write.
    async fn next_write(&mut self) -> Option<Batch> {
        let mut frames = std::mem::take(&mut self.outgoing);
        frames.extend(std::iter::from_fn(|| self.connection.poll_transmit()));
        // The frames tell the client ids and positions: the store learns them first, or they do
        // not leave (the `goaway` that the failure queued does).
        if !self.turn().await {
            frames.clear();
            frames.extend(std::iter::from_fn(|| self.connection.poll_transmit()));
        }
        let close = self.connection.poll_close();
        if let Some((code, _)) = &close {
            // Every close the protocol queues follows a `goaway` with the same code, whether the
            // server asked for it or the protocol raised it (hello timeout, silence, a
            // violation): counted here, once, for both.
            m::goaway(*code);
            m::close_sent(*code);
        }
        if frames.is_empty() && close.is_none() {
            return None;
        }
        Some(Batch { frames, close })
    }

    /// Feeds one socket event to the connection; `false` once no more frames can follow.
    fn handle_frame<T: std::ops::Deref<Target = str>>(
        &mut self,
        frame: Option<Result<Incoming<T>, String>>,
    ) -> bool {
        let now = self.shared.now();
        match frame {
            Some(Ok(Incoming::Text(text))) => self.connection.handle_text(&text, now),
            Some(Ok(Incoming::Binary)) => self.connection.handle_binary(now),
            Some(Ok(Incoming::Close(close))) => {
                let close = close
                    .as_ref()
                    .map(|(code, reason)| (*code, reason.as_str()));
                self.connection.handle_closed(close, now);
                self.socket_ended = true;
                self.peer_closed = true;
                return false;
            }
            // WebSocket-level pings carry no readyws meaning [TR-4].
            Some(Ok(Incoming::Control)) => {}
            Some(Err(error)) => {
                debug!(error = ?error, "socket error");
                self.connection.handle_closed(None, now);
                self.socket_ended = true;
                return false;
            }
            None => {
                self.connection.handle_closed(None, now);
                self.socket_ended = true;
                return false;
            }
        }
        // Before readiness a frame (`hello`) needs its events carried out before the next one.
        self.connection.is_ready() && !self.connection.is_closed()
    }

    async fn handle_command(&mut self, command: ConnCommand) {
        match command {
            ConnCommand::Surrender { done } => self.surrender(done).await,
            ConnCommand::Goaway {
                code,
                reason,
                retry_after,
            } => self.goaway(code, &reason, retry_after),
        }
    }

    /// Hands the session back to the store for the connection that resumes it, and tells this
    /// one's client to stop [RS-7].
    async fn surrender(&mut self, done: oneshot::Sender<()>) {
        self.detach(false).await;
        self.goaway(
            code::SESSION_TAKEN_OVER,
            "another connection resumed this session",
            None,
        );
        let _ = done.send(());
    }

    async fn handle_events(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.connection.poll_event() {
                progressed = true;
                match event {
                    ConnectionEvent::Hello(hello) => {
                        self.handle_hello(hello.token.as_deref(), hello.resume)
                            .await
                    }
                    ConnectionEvent::Closed {
                        reason,
                        session_ended,
                    } => {
                        self.session_ended = session_ended;
                        info!(?reason, session_ended, "connection closed");
                    }
                    other => debug!(?other, "connection event"),
                }
            }
            while let Some(event) = self.connection.poll_session_event() {
                progressed = true;
                self.handle_session_event(event).await;
            }
            if !progressed {
                return;
            }
        }
    }

    async fn handle_hello(&mut self, token: Option<&str>, resume: Option<Resume>) {
        let deadline = self.shared.options.deadlines.authenticate;
        let verdict = tokio::time::timeout(
            deadline,
            self.shared.authenticator.authenticate(token).verdict(),
        )
        .await
        .unwrap_or_else(|_| {
            m::deadline("authenticate");
            Err(AuthError::Unavailable(format!(
                "no verdict within {} ms",
                deadline.as_millis()
            )))
        });
        match verdict {
            Err(error) => {
                warn!(error = ?error.to_string(), "hello refused");
                let retry_after =
                    (error.goaway_code() == code::OVERLOADED).then_some(AUTH_RETRY_AFTER);
                self.goaway(error.goaway_code(), &error.to_string(), retry_after);
            }
            Ok(user) => {
                // Escaped: the id comes from the peer's token.
                self.span
                    .record("user", tracing::field::debug(user.as_str()));
                let limit = self.shared.options.limits.max_user_id_bytes;
                if user.as_str().len() > limit {
                    m::limit_refused("user_id_bytes");
                    warn!(
                        length = user.as_str().len(),
                        limit, "hello refused: the user id is too long"
                    );
                    self.goaway(
                        code::FORBIDDEN,
                        &format!("the user id is longer than {limit} bytes"),
                        None,
                    );
                    return;
                }
                self.user = Some(user);
                match self
                    .gate
                    .handle_hello(self.shared.is_started(), self.shared.now())
                {
                    Gate::Proceed => self.attach(resume).await,
                    Gate::Wait => {
                        debug!("waiting for server start-up");
                        self.waiting_for_startup = Some(resume);
                    }
                    Gate::GiveUp(goaway) => self.send_goaway(goaway),
                    Gate::Idle => {}
                }
            }
        }
    }

    /// Registers the connection with a session, then makes it ready [HS-4]. A session live on
    /// another connection is asked to surrender, and the attach tried again until
    /// [`TAKEOVER_DEADLINE`] [RS-7].
    async fn attach(&mut self, resume: Option<Resume>) {
        let Some(user) = self.user.clone() else {
            return;
        };
        let mut ticket = None;
        let deadline = Instant::now() + TAKEOVER_DEADLINE;
        loop {
            let attached = self
                .shared
                .custody
                .attach(
                    &user,
                    resume.as_ref(),
                    self.conn_id,
                    &self.handle,
                    self.shared.now(),
                    &mut ticket,
                )
                .await;
            let carrier = match attached {
                Ok(Attach::Ready {
                    session,
                    copies,
                    resumed,
                }) => {
                    self.saved = session.progress();
                    self.ready(session, copies, resumed);
                    return;
                }
                Ok(Attach::TakeOver(carrier)) => carrier,
                Ok(Attach::Superseded) => {
                    debug!("a later hello of this client already took the session");
                    self.session_busy();
                    return;
                }
                Ok(Attach::TooManySessions { limit }) => {
                    warn!(
                        limit,
                        "hello refused: every session this user may have is live"
                    );
                    self.goaway(
                        code::OVERLOADED,
                        &format!("this user has {limit} live sessions, the most allowed"),
                        Some(SESSIONS_FULL_RETRY_AFTER),
                    );
                    return;
                }
                Err(error) => {
                    warn!(%error, "could not attach a session in the store");
                    self.store_failed();
                    return;
                }
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match carrier {
                Carrier::Local(handle) => {
                    let (done, answered) = oneshot::channel();
                    if handle.command(ConnCommand::Surrender { done }) {
                        let _ = tokio::time::timeout(deadline - now, answered).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Carrier::Ending => tokio::time::sleep(Duration::from_millis(10)).await,
                Carrier::Remote => tokio::time::sleep(REMOTE_TAKEOVER_POLL).await,
            }
        }
        self.session_busy();
    }

    fn ready(&mut self, session: Box<ServerSession>, copies: Copies, resumed: bool) {
        self.span.record("session", session.id());
        self.copies = copies;
        self.connection.accept(*session, resumed, self.shared.now());
        m::session_ready(self.opened.elapsed());
        info!(resumed, backlog = self.copies.len(), "connection ready");
    }

    fn session_busy(&mut self) {
        warn!("could not take over the session; closing so that the client retries");
        self.send_goaway(goaway_for(StoreTrouble::Busy));
    }

    /// The store failed through its retries: the client comes back later, and resumes from
    /// what the store has.
    fn store_failed(&mut self) {
        self.send_goaway(goaway_for(StoreTrouble::Unavailable));
    }

    fn send_goaway(&mut self, goaway: Goaway) {
        self.goaway(goaway.code, goaway.reason, goaway.retry_after);
    }

    /// One turn with the store: the copies that ended, the session's state where the store
    /// outlives this instance (the next frames depend on it [RS-4]), and what the mailbox gained,
    /// in one commit. `false`: the store could not be told, and a `goaway` is queued instead.
    async fn turn(&mut self) -> bool {
        // Acknowledgements that waited their time are committed now, whatever else happens:
        // the timer that brought this turn does not fire again for them.
        let settle_due = self.settle_by.is_some_and(|by| Instant::now() >= by);
        if settle_due {
            self.settle_by = None;
        }
        let Some(user) = self.user.clone() else {
            return true;
        };
        if self.fenced {
            return false;
        }
        let Some(session) = self.connection.session() else {
            return true;
        };
        let progress = session.progress();
        let outlives = self.shared.custody.outlives_instance();
        let save = outlives && progress != self.saved;
        if !self.woken && self.settled.is_empty() && !save {
            return true;
        }
        // Nothing the next frames depend on changed: only copies and messages acknowledged.
        let only_settling = !self.woken
            && (
                progress.last_received,
                progress.last_refused,
                progress.highest_sent,
            ) == (
                self.saved.last_received,
                self.saved.last_refused,
                self.saved.highest_sent,
            );
        if outlives && only_settling && !settle_due && self.settled.len() < SETTLE_BATCH {
            if self.settle_by.is_none() {
                self.settle_by = Some(Instant::now() + SETTLE_LINGER);
            }
            return true;
        }
        let kept = save.then(|| Kept::of(session, &self.copies));
        let session_id = session.id().to_owned();
        self.woken = false;
        let turned = self
            .shared
            .custody
            .turn(&user, self.conn_id, &session_id, kept, &self.settled)
            .await;
        match turned {
            Ok(Some(taken)) => {
                self.settled.clear();
                self.saved = progress;
                self.settle_by = None;
                if let Some(session) = self.connection.session_mut() {
                    withdraw_from(session, &mut self.copies, &taken.dropped);
                }
                let now = self.shared.now();
                for (held, data) in taken.records {
                    // A copy the session cannot take stays in the mailbox for the next one.
                    if !self.queue_copy(held, data, now) {
                        self.settled.push((held, Outcome::Closed));
                    }
                }
                true
            }
            Ok(None) => {
                // Another connection claimed the session (this instance was thought dead, or a
                // newer hello won it). If this client is the one still using this connection it
                // must come back and resume, so the `goaway` invites a retry rather than 4203,
                // which a client takes as final.
                self.fenced = true;
                warn!("another connection carries this session now");
                self.send_goaway(goaway_for(StoreTrouble::Fenced));
                false
            }
            Err(error) => {
                self.woken = true;
                warn!(%error, "could not reach the store");
                self.store_failed();
                false
            }
        }
    }

    async fn handle_session_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Message { id, data } => {
                m::message_in();
                let (Some(user), Some(session)) = (self.user.as_ref(), self.connection.session())
                else {
                    return;
                };
                let handle = ServerHandle {
                    shared: self.shared.clone(),
                };
                let inbound = Inbound {
                    user,
                    session_id: session.id(),
                    data: &data,
                };
                // The ack goes out only after the handler decided: an ack means "processed".
                let decision = self
                    .shared
                    .handler
                    .on_message(&handle, inbound)
                    .decision()
                    .await;
                if let Decision::Refuse { code, reason } = decision {
                    m::nack("sent");
                    if let Err(error) = self.connection.refuse(id, &code, &reason) {
                        warn!(%error, "could not refuse message");
                    }
                }
            }
            SessionEvent::Outcome { id, outcome } => {
                match &outcome {
                    Outcome::Acked => m::acked(),
                    Outcome::Refused { .. } => m::nack("received"),
                    _ => {}
                }
                if let Some(held) = self.copies.remove(&id) {
                    self.settled.push((held, outcome));
                }
            }
            other => debug!(?other, "session event"),
        }
    }

    fn goaway(&mut self, code: u16, reason: &str, retry_after: Option<Duration>) {
        self.connection
            .goaway(code, reason, retry_after, self.shared.now());
    }

    /// Queues a copy of mailbox record `held` on this connection's session; `false` when there
    /// is no session to take it (the record then stays in the mailbox for the next one).
    fn queue_copy(&mut self, held: u64, data: Data, now: Time) -> bool {
        let queued = self
            .connection
            .session_mut()
            .map(|session| session.send(data, None, now));
        match queued {
            Some(Ok(message)) => {
                self.copies.insert(message, held);
                m::message_out();
                true
            }
            _ => false,
        }
    }

    /// Gives the session back to the store: kept for resume, or ended when the client closed it.
    async fn detach(&mut self, ended: bool) {
        let Some(user) = self.user.clone() else {
            return;
        };
        let Some(session) = self.connection.take_session() else {
            return;
        };
        let copies = std::mem::take(&mut self.copies);
        let settled = std::mem::take(&mut self.settled);
        // A fenced session is another connection's: the detach finds it is not this one's and
        // only settles what the client acknowledged here.
        let detach = Detach {
            user,
            conn: self.conn_id,
            session,
            copies,
            settled,
            ended,
        };
        self.shared.custody.detach(detach, self.shared.now()).await;
    }

    async fn finish(&mut self) {
        // Process what the last frames produced (outcomes settle copies before the detach).
        while let Some(event) = self.connection.poll_session_event() {
            self.handle_session_event(event).await;
        }
        self.detach(self.session_ended).await;
        debug!(
            lifetime_ms = self.opened.elapsed().as_millis() as u64,
            "connection task ended"
        );
    }

    fn instant(&self, at: Time) -> Instant {
        let now = self.shared.now();
        Instant::now() + at.saturating_since(now)
    }
}

/// The frames of one write, and the close that ends the connection after them.
struct Batch {
    frames: Vec<String>,
    close: Option<(u16, String)>,
}

/// How a write ended.
enum WriteOutcome {
    Written,
    /// The close frame went out: the connection is over.
    Closed,
    Failed(String),
}

type Write<W> = Pin<Box<dyn Future<Output = (W, WriteOutcome)> + Send>>;

impl Batch {
    /// Writes the frames with one flush, then the close if there is one, and hands the writing
    /// half back.
    async fn write<W: FrameWriter>(self, mut writer: W) -> (W, WriteOutcome) {
        let queued = !self.frames.is_empty();
        for text in self.frames {
            if let Err(error) = writer.feed(text).await {
                return (writer, WriteOutcome::Failed(error));
            }
        }
        if queued {
            if let Err(error) = writer.flush().await {
                return (writer, WriteOutcome::Failed(error));
            }
        }
        match self.close {
            Some((code, reason)) => {
                writer.close(code, reason).await;
                (writer, WriteOutcome::Closed)
            }
            None => (writer, WriteOutcome::Written),
        }
    }
}

/// The write under way, or never when there is none.
async fn in_progress<W>(write: Option<&mut Write<W>>) -> (W, WriteOutcome) {
    match write {
        Some(write) => write.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never wakes without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
