//! One task per WebSocket: a driver of the protocol crate's [`ServerConnection`]. It turns socket
//! frames, hub commands and timer wake-ups into `handle_*` calls and carries out what comes back;
//! the only decisions it makes are the server's own (who the user is, which session to attach).

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use readyws_protocol::close::code;
use readyws_protocol::frame::Resume;
use readyws_protocol::{
    ConnectionEvent, Data, Outcome, ServerConnection, ServerPhase, ServerSession, SessionEvent,
    SessionProgress, Time,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::UserId;
use crate::hub::{Attach, ConnCommand, Copies};
use crate::metrics as m;
use crate::redis_store::{Keep, Saved, custody_ended, encode_state};
use crate::socket::{FrameSocket, Incoming};
use crate::{Decision, Inbound, ServerHandle, Shared};

/// How long a resume waits for the connection that holds the session to let go of it.
const SURRENDER_TIMEOUT: Duration = Duration::from_secs(2);
/// The `retry_after_ms` of a `goaway` 4003 sent because the Redis store failed.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);

pub(crate) async fn run(shared: Arc<Shared>, socket: impl FrameSocket) {
    let conn_id = shared.next_connection();
    let (tx, rx) = mpsc::unbounded_channel();
    shared.register_connection(conn_id, tx.clone());
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
        startup_deadline: opened + shared.options.startup_max_wait,
        shared: shared.clone(),
        conn_id,
        connection,
        tx,
        user: None,
        copies: Copies::new(),
        settled: Vec::new(),
        custody_ended: Vec::new(),
        saved: SessionProgress::default(),
        fenced: false,
        cursor: 0,
        wake_pending: false,
        outgoing: Vec::new(),
        waiting_for_startup: None,
        session_ended: false,
        opened,
        span: span.clone(),
    };
    task.run(socket, rx).instrument(span).await;
    shared.unregister_connection(conn_id);
}

/// The most frames, or commands, taken in one turn before the connection's output is written: a
/// bound on how long a busy peer can hold up the other direction.
const BURST: usize = 256;

struct Task {
    shared: Arc<Shared>,
    conn_id: u64,
    connection: ServerConnection,
    tx: mpsc::UnboundedSender<ConnCommand>,
    user: Option<UserId>,
    /// The session's outbox entries that are copies of mailbox records.
    copies: Copies,
    /// Copies that ended since the store was last told, with how.
    settled: Vec<(u64, Outcome)>,
    /// Records whose custody ended that the Redis store has not taken yet: kept until a write
    /// succeeds, since a state that counts them settled while they stay in the mailbox would
    /// send them again after a resume.
    custody_ended: Vec<u64>,
    /// Where the session stood when the Redis store last took its state.
    saved: SessionProgress,
    /// The Redis store says another connection carries the session now: write nothing more of it.
    fenced: bool,
    /// The newest mailbox record this session has seen (Redis store).
    cursor: u64,
    /// The user's mailbox grew since this connection last read it (Redis store).
    wake_pending: bool,
    /// Frames taken from the connection, written once the store has what they depend on.
    outgoing: Vec<String>,
    /// A `hello` accepted by the authenticator while start-up is still running [SG-2].
    waiting_for_startup: Option<Option<Resume>>,
    session_ended: bool,
    startup_deadline: Instant,
    opened: Instant,
    span: tracing::Span,
}

impl Task {
    async fn run<S: FrameSocket>(
        &mut self,
        mut socket: S,
        mut rx: mpsc::UnboundedReceiver<ConnCommand>,
    ) {
        debug!("socket opened");
        let mut started = self.shared.started.subscribe();
        // One timer for the task's life, moved only when the connection's deadline moves: a new
        // timer per turn costs a registration and a removal every time a frame arrives.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed_for = None;
        loop {
            self.handle_events().await;
            if !self.flush(&mut socket).await {
                break;
            }
            let deadline = self.connection.poll_timeout();
            if deadline != armed_for {
                armed_for = deadline;
                if let Some(at) = deadline {
                    timer.as_mut().reset(self.instant(at));
                }
            }
            let waiting = self.waiting_for_startup.is_some();
            tokio::select! {
                frame = socket.recv() => {
                    // Frames that already arrived are taken in the same turn: the inbox then owes
                    // one cumulative `ack` for all of them, written once, instead of a write per
                    // message.
                    let mut more = self.handle_frame(frame);
                    let mut taken = 1;
                    while more && taken < BURST {
                        let Some(frame) = socket.recv().now_or_never() else { break };
                        more = self.handle_frame(frame);
                        taken += 1;
                    }
                }
                Some(command) = rx.recv() => {
                    self.handle_command(command, &mut rx).await;
                    // Likewise for a burst of publishes: one write for all of them.
                    for _ in 1..BURST {
                        let Ok(command) = rx.try_recv() else { break };
                        self.handle_command(command, &mut rx).await;
                    }
                    if self.wake_pending {
                        self.fetch().await;
                    }
                }
                () = &mut timer, if armed_for.is_some() => {
                    armed_for = None;
                    self.connection.handle_timeout(self.shared.now());
                }
                Ok(()) = started.changed(), if waiting => {
                    if *started.borrow() {
                        if let Some(resume) = self.waiting_for_startup.take() {
                            self.attach(resume).await;
                        }
                    }
                }
                () = tokio::time::sleep_until(self.startup_deadline), if waiting => {
                    self.waiting_for_startup = None;
                    let retry = self.shared.options.startup_retry_after;
                    self.goaway(code::STARTUP_FAILED, "server start-up did not finish in time", Some(retry));
                }
            }
        }
        self.finish(&mut rx).await;
    }

    /// Writes every pending frame, then the close if one is due. Returns `false` once the
    /// connection is over.
    async fn flush<S: FrameSocket>(&mut self, socket: &mut S) -> bool {
        let mut outgoing = std::mem::take(&mut self.outgoing);
        outgoing.extend(std::iter::from_fn(|| self.connection.poll_transmit()));
        // The frames tell the client ids and positions: the store learns them first, or they do
        // not leave (the `goaway` that the failure queued does).
        if !self.persist().await {
            outgoing.clear();
            outgoing.extend(std::iter::from_fn(|| self.connection.poll_transmit()));
        }
        // Every frame due is queued first and the socket flushed once: one write for a burst of
        // acks and messages instead of one per frame.
        let queued = !outgoing.is_empty();
        let mut written = true;
        for text in outgoing.drain(..) {
            if socket.feed(text).await.is_err() {
                written = false;
                break;
            }
        }
        outgoing.clear();
        self.outgoing = outgoing;
        if !written || (queued && socket.flush().await.is_err()) {
            self.connection.handle_closed(None, self.shared.now());
            return false;
        }
        if let Some((code, reason)) = self.connection.poll_close() {
            socket.close(code, reason).await;
            return false;
        }
        !self.connection.is_closed()
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
                return false;
            }
            // WebSocket-level pings carry no readyws meaning [TR-4].
            Some(Ok(Incoming::Control)) => {}
            Some(Err(error)) => {
                debug!(%error, "socket error");
                self.connection.handle_closed(None, now);
                return false;
            }
            None => {
                self.connection.handle_closed(None, now);
                return false;
            }
        }
        // Before readiness a frame (`hello`) needs its events carried out before the next one.
        self.connection.is_ready() && !self.connection.is_closed()
    }

    async fn handle_command(
        &mut self,
        command: ConnCommand,
        rx: &mut mpsc::UnboundedReceiver<ConnCommand>,
    ) {
        let now = self.shared.now();
        match command {
            ConnCommand::Deliver { held, data } => {
                if !self.queue_copy(held, data, now) {
                    self.settled.push((held, Outcome::Closed));
                }
            }
            ConnCommand::Wake => self.wake_pending = true,
            ConnCommand::Surrender { done } => {
                self.surrender(done, rx).await;
            }
            ConnCommand::Goaway {
                code,
                reason,
                retry_after,
            } => self.goaway(code, &reason, retry_after),
        }
    }

    /// Hands the session back to the hub for the connection that resumes it, and tells this one's
    /// client to stop [RS-7].
    async fn surrender(
        &mut self,
        done: oneshot::Sender<()>,
        rx: &mut mpsc::UnboundedReceiver<ConnCommand>,
    ) {
        self.detach(false, rx).await;
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
        match self.shared.authenticator.authenticate(token) {
            Err(error) => {
                warn!(%error, "hello refused");
                self.goaway(error.goaway_code(), &error.to_string(), None);
            }
            Ok(user) => {
                self.span.record("user", user.as_str());
                self.user = Some(user);
                if self.shared.is_started() {
                    self.attach(resume).await;
                } else {
                    debug!("waiting for server start-up");
                    self.waiting_for_startup = Some(resume);
                }
            }
        }
    }

    /// Registers the connection with a session, then makes it ready [HS-4].
    async fn attach(&mut self, resume: Option<Resume>) {
        let Some(user) = self.user.clone() else {
            return;
        };
        if let Some(hub) = self.shared.redis() {
            let now = self.shared.now();
            match hub
                .attach(&user, resume.as_ref(), self.conn_id, &self.tx, now)
                .await
            {
                Ok(Some(attached)) => {
                    self.cursor = attached.cursor;
                    self.saved = attached.session.progress();
                    self.ready(attached.session, attached.copies, attached.resumed);
                }
                Ok(None) => self.session_busy(),
                Err(error) => {
                    warn!(%error, "could not attach a session in the Redis store");
                    self.store_failed();
                }
            }
            return;
        }
        for _ in 0..3 {
            let attached = match self.shared.memory() {
                Some(mut hub) => hub.attach(
                    &user,
                    resume.as_ref(),
                    self.conn_id,
                    &self.tx,
                    self.shared.now(),
                ),
                None => return,
            };
            match attached {
                Attach::Ready {
                    session,
                    copies,
                    resumed,
                } => {
                    self.ready(session, copies, resumed);
                    return;
                }
                Attach::TakeOver { tx } => {
                    let (done, answered) = oneshot::channel();
                    if tx.send(ConnCommand::Surrender { done }).is_ok() {
                        let _ = tokio::time::timeout(SURRENDER_TIMEOUT, answered).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
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
        self.goaway(
            code::OVERLOADED,
            "session busy, retry",
            Some(Duration::from_millis(500)),
        );
    }

    /// The Redis store failed through its retries: the client comes back later, and resumes
    /// from what the store has.
    fn store_failed(&mut self) {
        self.goaway(
            code::OVERLOADED,
            "the session store is unavailable, retry",
            Some(STORE_RETRY_AFTER),
        );
    }

    /// Tells the store what the next frames depend on. `false`: it could not be told, and a
    /// `goaway` is queued instead.
    async fn persist(&mut self) -> bool {
        let Some(user) = self.user.clone() else {
            return true;
        };
        let Some(hub) = self.shared.redis() else {
            self.settle_in_memory(&user);
            return true;
        };
        if self.fenced {
            return false;
        }
        let Some(session) = self.connection.session() else {
            return true;
        };
        let progress = session.progress();
        self.custody_ended
            .extend(custody_ended(&user, &mut self.settled));
        if progress == self.saved && self.custody_ended.is_empty() {
            return true;
        }
        let state = (progress != self.saved).then(|| encode_state(session, &self.copies));
        match hub
            .save(
                &user,
                Some(self.conn_id),
                session.id(),
                state,
                &self.custody_ended,
                Keep::Live,
            )
            .await
        {
            Ok(Saved::Done) => {
                self.saved = progress;
                self.custody_ended.clear();
                true
            }
            Ok(Saved::Fenced) => {
                self.custody_ended.clear();
                // Another connection claimed the session (this instance was thought dead, or a
                // newer hello won it). If this client is the one still using this connection it
                // must come back and resume, so the `goaway` invites a retry rather than 4203,
                // which a client takes as final.
                self.fenced = true;
                warn!("another connection carries this session now");
                self.goaway(
                    code::OVERLOADED,
                    "this connection no longer carries the session, reconnect",
                    Some(Duration::from_millis(100)),
                );
                false
            }
            Err(error) => {
                warn!(%error, "could not save the session in the Redis store");
                self.store_failed();
                false
            }
        }
    }

    /// Reads what the user's mailbox gained since this session last looked (Redis store).
    async fn fetch(&mut self) {
        self.wake_pending = false;
        let (Some(hub), Some(user)) = (self.shared.redis(), self.user.clone()) else {
            return;
        };
        // Before readiness the attach reads the whole mailbox.
        if self.connection.session().is_none() || self.fenced {
            return;
        }
        match hub.fetch(&user, self.cursor).await {
            Ok(records) => {
                let now = self.shared.now();
                for (record, data) in records {
                    self.cursor = self.cursor.max(record);
                    // A copy the session cannot take stays in the mailbox for the next one.
                    self.queue_copy(record, data, now);
                }
            }
            Err(error) => {
                warn!(%error, "could not read the mailbox in the Redis store");
                self.store_failed();
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

    /// Tells the in-memory store how the copies that ended did.
    fn settle_in_memory(&mut self, user: &UserId) {
        if self.settled.is_empty() {
            return;
        }
        if let Some(mut hub) = self.shared.memory() {
            for (held, outcome) in self.settled.drain(..) {
                hub.copy_settled(user, held, &outcome);
            }
        }
    }

    fn goaway(&mut self, code: u16, reason: &str, retry_after: Option<Duration>) {
        m::goaway(code);
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
    async fn detach(&mut self, ended: bool, rx: &mut mpsc::UnboundedReceiver<ConnCommand>) {
        let Some(user) = self.user.clone() else {
            return;
        };
        if let Some(hub) = self.shared.redis() {
            let Some(session) = self.connection.take_session() else {
                return;
            };
            self.custody_ended
                .extend(custody_ended(&user, &mut self.settled));
            let settled = std::mem::take(&mut self.custody_ended);
            if self.fenced {
                // Custody still ends for what the client acknowledged here; if Redis cannot be
                // told, the connection that carries the session now settles them again.
                if !settled.is_empty() {
                    let _ = hub
                        .save(
                            &user,
                            Some(self.conn_id),
                            session.id(),
                            None,
                            &settled,
                            Keep::Live,
                        )
                        .await;
                }
                return;
            }
            let state = encode_state(&session, &self.copies);
            let keep = if ended { Keep::Ended } else { Keep::ForResume };
            hub.release(&user, self.conn_id, session.id(), state, settled, keep)
                .await;
            self.copies.clear();
            return;
        }
        self.detach_in_memory(&user, ended, rx);
    }

    /// Copies the hub has already sent to this task are queued on the session first, under the
    /// hub's lock: a publish takes the same lock to send a copy, so none can arrive between the
    /// last one queued here and the session leaving this task. A copy left in the channel would
    /// instead return to the session from the mailbox after newer messages, out of order [CU-3].
    fn detach_in_memory(
        &mut self,
        user: &UserId,
        ended: bool,
        rx: &mut mpsc::UnboundedReceiver<ConnCommand>,
    ) {
        self.settle_in_memory(user);
        let now = self.shared.now();
        let shared = Arc::clone(&self.shared);
        let Some(mut hub) = shared.memory() else {
            return;
        };
        while let Ok(command) = rx.try_recv() {
            if let ConnCommand::Deliver { held, data } = command {
                if !self.queue_copy(held, data, now) {
                    hub.copy_settled(user, held, &Outcome::Closed);
                }
            }
        }
        let Some(session) = self.connection.take_session() else {
            return;
        };
        let copies = std::mem::take(&mut self.copies);
        hub.detach(user, self.conn_id, session, copies, ended, now);
    }

    async fn finish(&mut self, rx: &mut mpsc::UnboundedReceiver<ConnCommand>) {
        // Process what the last frames produced (outcomes settle copies before the detach).
        while let Some(event) = self.connection.poll_session_event() {
            self.handle_session_event(event).await;
        }
        self.detach(self.session_ended, rx).await;
        // Copies sent to this task that it will never queue: the records stay in the mailbox.
        rx.close();
        while let Ok(command) = rx.try_recv() {
            if let ConnCommand::Deliver { held, .. } = command {
                self.settled.push((held, Outcome::Closed));
            }
        }
        if let Some(user) = self.user.clone() {
            self.settle_in_memory(&user);
            if let Some(hub) = self.shared.redis() {
                hub.forget(&user, self.conn_id);
            }
        }
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
