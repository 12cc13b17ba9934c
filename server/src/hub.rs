//! The in-memory store: [`readyws_hub::Hub`], which holds every rule that spans connections
//! (custody, resume checks, takeover, the per-user bounds), driven under one lock. This module
//! only carries out what the hub asks — wake a connection task, count a bound that bit — and
//! hands it the fresh credentials it cannot make itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use readyws_hub::{FreshCredentials, HubEvent, HubLimits, Rules};
use readyws_protocol::frame::Resume;
use readyws_protocol::{Data, Outcome, ResumeToken, ServerConfig, ServerSession, Time};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::auth::UserId;
use crate::metrics as m;
use crate::options::Limits;
use crate::{PublishError, PublishReport};

pub(crate) use readyws_hub::{Copies, Taken};

/// How many commands may wait for one connection task. Commands are rare (a takeover, a
/// shutdown `goaway`); deliveries do not travel this way.
pub(crate) const CONTROL_CAPACITY: usize = 8;

/// What the server asks of a connection task, besides waking it.
#[derive(Debug)]
pub(crate) enum ConnCommand {
    /// Another connection resumed this session: hand it back to the store, send `goaway` 4203,
    /// then answer [RS-7].
    Surrender { done: oneshot::Sender<()> },
    /// Send `goaway` with these values (shutdown).
    Goaway {
        code: u16,
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// How the rest of the server reaches one connection task: a bounded command channel and a
/// wake-up that coalesces (any number of publishes before the task runs wake it once).
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle {
    control: mpsc::Sender<ConnCommand>,
    wake: Arc<Notify>,
}

impl ConnHandle {
    pub(crate) fn new() -> (ConnHandle, mpsc::Receiver<ConnCommand>, Arc<Notify>) {
        let (control, commands) = mpsc::channel(CONTROL_CAPACITY);
        let wake = Arc::new(Notify::new());
        let handle = ConnHandle {
            control,
            wake: wake.clone(),
        };
        (handle, commands, wake)
    }

    /// The user's mailbox changed: the task reads what is new.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Hands `command` to the task; `false` when the task is gone or its queue is full (counted).
    pub(crate) fn command(&self, command: ConnCommand) -> bool {
        match self.control.try_send(command) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                m::limit_refused("control_queue");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The outcome of [`Hub::attach`], with the holder of a live session as the handle to ask.
pub(crate) enum Attach {
    /// The connection may become ready with this session, whose outbox already holds copies of
    /// every mailbox record it lacked, oldest first.
    Ready {
        session: Box<ServerSession>,
        copies: Copies,
        resumed: bool,
    },
    /// The session is live on another connection; ask it to surrender, then attach again.
    TakeOver { handle: ConnHandle },
    /// A later `hello` claimed the session [RS-9].
    Superseded,
    /// The user has as many sessions as allowed, every one of them live.
    TooManySessions { limit: usize },
}

/// The hub, and the tasks of the connections whose sessions are live in it.
pub(crate) struct Hub {
    core: readyws_hub::Hub,
    handles: HashMap<u64, ConnHandle>,
}

impl Hub {
    pub(crate) fn new(protocol: ServerConfig, limits: Limits) -> Self {
        let limits = HubLimits {
            mailbox: limits.mailbox,
            max_held_bytes: limits.max_held_bytes,
            max_sessions_per_user: limits.max_sessions_per_user,
        };
        Hub {
            core: readyws_hub::Hub::new(Rules {
                protocol,
                limits,
                digest: sha256,
            }),
            handles: HashMap::new(),
        }
    }

    /// Carries out what the last call asked for.
    fn drain(&mut self) {
        while let Some(event) = self.core.poll_event() {
            match event {
                HubEvent::Wake(holder) => {
                    if let Some(handle) = self.handles.get(&holder.conn) {
                        handle.wake();
                    }
                }
                HubEvent::LimitRefused(limit) => m::limit_refused(limit),
                HubEvent::MailboxDropped { reason, count } => m::mailbox_dropped(reason, count),
                HubEvent::MailboxDepth { messages, bytes } => m::mailbox_depth(messages, bytes),
                HubEvent::Resume(result) => m::resume(result),
                HubEvent::CopiesWithdrawn(count) => m::copies_withdrawn(count),
            }
        }
    }

    pub(crate) fn mailbox_depth(&self, user: &UserId) -> usize {
        self.core.mailbox_depth(user)
    }

    pub(crate) fn publish(
        &mut self,
        user: &UserId,
        data: Data,
        now: Time,
    ) -> Result<PublishReport, PublishError> {
        let published = self.core.publish(user, data, now);
        self.drain();
        Ok(published?)
    }

    /// See [`readyws_hub::Hub::attach`]; `handle` reaches the connection's task while its
    /// session is live.
    pub(crate) fn attach(
        &mut self,
        user: &UserId,
        resume: Option<&Resume>,
        conn: u64,
        handle: &ConnHandle,
        now: Time,
        ticket: &mut Option<u64>,
    ) -> Attach {
        let (session_id, token) = fresh_session_credentials();
        let fresh = FreshCredentials {
            session_id,
            token,
            rotated: random_token(),
        };
        let attached = self.core.attach(user, resume, conn, fresh, now, ticket);
        self.drain();
        match attached {
            readyws_hub::Attach::Ready {
                session,
                copies,
                resumed,
            } => {
                self.handles.insert(conn, handle.clone());
                Attach::Ready {
                    session,
                    copies,
                    resumed,
                }
            }
            readyws_hub::Attach::TakeOver { holder } => match self.handles.get(&holder.conn) {
                Some(handle) => Attach::TakeOver {
                    handle: handle.clone(),
                },
                // The holder's task is between its end and its detach: try again shortly.
                None => Attach::Superseded,
            },
            readyws_hub::Attach::Superseded => Attach::Superseded,
            readyws_hub::Attach::TooManySessions { limit } => Attach::TooManySessions { limit },
        }
    }

    pub(crate) fn take_new(&mut self, user: &UserId, conn: u64) -> Taken {
        self.core.take_new(user, conn)
    }

    pub(crate) fn copy_settled(&mut self, user: &UserId, held: u64, outcome: &Outcome) {
        self.core.copy_settled(user, held, outcome);
        self.drain();
    }

    pub(crate) fn detach(
        &mut self,
        user: &UserId,
        conn: u64,
        session: ServerSession,
        copies: Copies,
        ended: bool,
        now: Time,
    ) {
        self.core.detach(user, conn, session, copies, ended, now);
        self.handles.remove(&conn);
        self.drain();
    }

    pub(crate) fn sweep(&mut self, now: Time) {
        self.core.sweep(now);
        self.drain();
    }
}

/// Withdraws the unsent copies of `dropped` records from `session` (counted).
pub(crate) fn withdraw_from(session: &mut ServerSession, copies: &mut Copies, dropped: &[u64]) {
    m::copies_withdrawn(readyws_hub::withdraw_from(session, copies, dropped));
}

/// SHA-256, the digest of resume secrets that stores keep instead of the secrets [SE-2].
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A 128-bit secret [SE-1].
pub(crate) fn random_token() -> ResumeToken {
    let mut bytes = [0u8; 16];
    // The operating system's generator failing is not something a server can work around.
    getrandom::getrandom(&mut bytes).expect("the OS random number generator is available");
    ResumeToken::from_random_bytes(&bytes).expect("16 bytes")
}

/// An unguessable session id and a 128-bit resume secret for a new session [SE-1].
pub(crate) fn fresh_session_credentials() -> (String, ResumeToken) {
    let id = random_token();
    (format!("s-{}", &id.expose()[..24]), random_token())
}
