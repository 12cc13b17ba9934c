//! What spans connections: users, their sessions (live or kept for resume), and the messages held
//! for them (`docs/PROTOCOL.md` §8–§9).
//!
//! Custody [CU-1]: every published message is a record in its user's mailbox until a session of
//! that user acknowledges it. Sessions get *copies* (entries in their outbox, mapped back to the
//! record); a copy that ends without an ack leaves the record where it was, so nothing is ever
//! "moved back" and nothing can fall between two places [CU-2].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use readyws_protocol::frame::Resume;
use readyws_protocol::{
    Data, MessageId, Outcome, ResumeToken, ServerConfig, ServerSession, SessionEvent, Time,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::auth::UserId;
use crate::metrics as m;
use crate::options::{MailboxLimits, OverflowPolicy};
use crate::{PublishError, PublishReport};

/// A session's outbox entries that are copies of mailbox records: message id → record id.
pub(crate) type Copies = BTreeMap<MessageId, u64>;

/// What the hub asks of a connection task.
#[derive(Debug)]
pub(crate) enum ConnCommand {
    /// Queue a copy of mailbox record `held` on the live session.
    Deliver { held: u64, data: Data },
    /// Another connection resumed this session: hand it back to the hub, send `goaway` 4203,
    /// then answer [RS-7].
    Surrender { done: oneshot::Sender<()> },
    /// The user's mailbox in the shared store grew: read what is new (Redis store only).
    Wake,
    /// Send `goaway` with these values (shutdown).
    Goaway {
        code: u16,
        reason: String,
        retry_after: Option<Duration>,
    },
}

struct Held {
    data: Data,
    expires_at: Time,
    /// How many sessions hold a copy. A record expires only while none does.
    holders: usize,
}

enum Slot {
    Live {
        conn: u64,
        tx: mpsc::UnboundedSender<ConnCommand>,
    },
    Detached {
        session: Box<ServerSession>,
        copies: Copies,
        expires_at: Time,
    },
}

struct SessionEntry {
    /// Kept here too, so that a resume can be checked while the session lives in its task.
    token: ResumeToken,
    /// The token the client presented at the last resume. The session is re-keyed at every
    /// resume, but the `connection_ready` carrying the new token may be lost with its
    /// connection; until the client presents the new one, the one it is known to hold still
    /// resumes. Every older token resumes nothing [RS-8].
    previous: Option<ResumeToken>,
    slot: Slot,
}

#[derive(Default)]
struct UserState {
    held: BTreeMap<u64, Held>,
    bytes: usize,
    sessions: HashMap<String, SessionEntry>,
}

/// The outcome of [`Hub::attach`].
pub(crate) enum Attach {
    /// The connection may become ready with this session, whose outbox already holds copies of
    /// every mailbox record it lacked, oldest first.
    Ready {
        session: Box<ServerSession>,
        copies: Copies,
        resumed: bool,
    },
    /// The session is live on another connection; ask it to surrender, then attach again.
    TakeOver {
        tx: mpsc::UnboundedSender<ConnCommand>,
    },
}

pub(crate) struct Hub {
    protocol: ServerConfig,
    mailbox: MailboxLimits,
    users: HashMap<UserId, UserState>,
    /// Session id → its user, for resume lookups.
    owners: HashMap<String, UserId>,
    next_held: u64,
    held_total: usize,
}

impl Hub {
    pub(crate) fn new(protocol: ServerConfig, mailbox: MailboxLimits) -> Self {
        Hub {
            protocol,
            mailbox,
            users: HashMap::new(),
            owners: HashMap::new(),
            next_held: 1,
            held_total: 0,
        }
    }

    /// Messages held for `user` (acknowledged by no session yet).
    pub(crate) fn mailbox_depth(&self, user: &UserId) -> usize {
        self.users.get(user).map_or(0, |u| u.held.len())
    }

    /// Accepts a message for `user`: recorded in the mailbox, copied to every session of the
    /// user, live ones through their task [CU-4].
    pub(crate) fn publish(
        &mut self,
        user: &UserId,
        data: Data,
        now: Time,
    ) -> Result<PublishReport, PublishError> {
        let size = self.mailbox.admit(&data)?;
        let limits = self.mailbox;
        let state = self.users.entry(user.clone()).or_default();
        let mut dropped = 0;
        while state.held.len() >= limits.max_messages || state.bytes + size > limits.max_bytes {
            match limits.overflow {
                OverflowPolicy::RejectNew => {
                    m::mailbox_dropped("rejected", 1);
                    warn!(%user, held = state.held.len(), "mailbox full: publish refused");
                    return Err(PublishError::MailboxFull {
                        messages: state.held.len(),
                        bytes: state.bytes,
                    });
                }
                OverflowPolicy::DropOldest => {
                    let Some((_, oldest)) = state.held.pop_first() else {
                        break;
                    };
                    state.bytes -= oldest.data.len();
                    dropped += 1;
                }
            }
        }
        if dropped > 0 {
            self.held_total -= dropped;
            m::mailbox_dropped("overflow", dropped);
            warn!(%user, dropped, "mailbox full: dropped the oldest held messages");
        }
        let id = self.next_held;
        self.next_held += 1;
        let mut live = 0;
        let mut holders = 0;
        for entry in state.sessions.values_mut() {
            match &mut entry.slot {
                Slot::Live { tx, .. } => {
                    let sent = tx.send(ConnCommand::Deliver {
                        held: id,
                        data: data.clone(),
                    });
                    // A closed channel means the task is ending; it detaches its session next,
                    // and the record reaches that session (or the next one) from the mailbox.
                    if sent.is_ok() {
                        live += 1;
                        holders += 1;
                    }
                }
                Slot::Detached {
                    session, copies, ..
                } => {
                    if let Ok(message) = session.send(data.clone(), None, now) {
                        copies.insert(message, id);
                        holders += 1;
                    }
                }
            }
        }
        state.bytes += size;
        state.held.insert(
            id,
            Held {
                data,
                expires_at: now + limits.ttl,
                holders,
            },
        );
        self.held_total += 1;
        m::mailbox_depth(self.held_total);
        debug!(%user, held = id, live, "published");
        Ok(PublishReport {
            delivered: live,
            held: live == 0,
            dropped_oldest: dropped,
        })
    }

    /// Attaches a connection of `user` to a session: the one `resume` names if it is this user's
    /// and its secret matches [RS-3, SE-3], otherwise a new one. The session is registered as
    /// live before this returns, so a publish from now on reaches it [HS-4].
    pub(crate) fn attach(
        &mut self,
        user: &UserId,
        resume: Option<&Resume>,
        conn: u64,
        tx: &mpsc::UnboundedSender<ConnCommand>,
        now: Time,
    ) -> Attach {
        let state = self.users.entry(user.clone()).or_default();
        let mut found = None;
        if let Some(resume) = resume {
            let owned_by_user = self.owners.get(&resume.session_id) == Some(user);
            let entry = state.sessions.get(&resume.session_id);
            let presented = &resume.resume_token;
            let known =
                |e: &&SessionEntry| e.token == *presented || e.previous.as_ref() == Some(presented);
            if let Some(entry) = entry.filter(|e| owned_by_user && known(e)) {
                if let Slot::Live { tx, .. } = &entry.slot {
                    return Attach::TakeOver { tx: tx.clone() };
                }
                found = state.sessions.remove(&resume.session_id);
            }
            m::resume(if found.is_some() { "resumed" } else { "reset" });
        }
        let mut previous = None;
        let (mut session, mut copies, resumed) = match found {
            Some(SessionEntry {
                slot:
                    Slot::Detached {
                        mut session,
                        copies,
                        ..
                    },
                ..
            }) => {
                // A new secret at every resume, so that a token that leaked stops resuming once
                // the client has moved on to the next one [RS-8].
                session.rotate_resume_token(random_token());
                previous = resume.map(|resume| resume.resume_token.clone());
                (session, copies, true)
            }
            _ => {
                let session = Box::new(new_session(&self.protocol));
                self.owners.insert(session.id().to_owned(), user.clone());
                (session, Copies::new(), false)
            }
        };
        // Every record this session lacks, oldest first, before any newer message [CU-3].
        let has: BTreeSet<u64> = copies.values().copied().collect();
        for (id, held) in state.held.iter_mut().filter(|(id, _)| !has.contains(id)) {
            if let Ok(message) = session.send(held.data.clone(), None, now) {
                copies.insert(message, *id);
                held.holders += 1;
            }
        }
        let token = session.resume_token().clone();
        state.sessions.insert(
            session.id().to_owned(),
            SessionEntry {
                token,
                previous,
                slot: Slot::Live {
                    conn,
                    tx: tx.clone(),
                },
            },
        );
        Attach::Ready {
            session,
            copies,
            resumed,
        }
    }

    /// A live session's copy of record `held` ended with `outcome`.
    pub(crate) fn copy_settled(&mut self, user: &UserId, held: u64, outcome: &Outcome) {
        let Some(state) = self.users.get_mut(user) else {
            return;
        };
        let ends_custody = match outcome {
            Outcome::Acked => true,
            Outcome::Refused { code, .. } => {
                warn!(%user, held, code = %code, "the client refused a published message for good");
                m::mailbox_dropped("refused", 1);
                true
            }
            _ => false,
        };
        if ends_custody {
            if let Some(record) = state.held.remove(&held) {
                state.bytes -= record.data.len();
                self.held_total -= 1;
                m::mailbox_depth(self.held_total);
            }
        } else if let Some(record) = state.held.get_mut(&held) {
            record.holders = record.holders.saturating_sub(1);
        }
    }

    /// The connection carrying `session` ended. `ended` says the client closed the session on
    /// purpose [RS-6]; otherwise it is kept for the resume window [RS-1].
    pub(crate) fn detach(
        &mut self,
        user: &UserId,
        conn: u64,
        mut session: ServerSession,
        copies: Copies,
        ended: bool,
        now: Time,
    ) {
        let id = session.id().to_owned();
        let is_current = self
            .users
            .get(user)
            .and_then(|state| state.sessions.get(&id))
            .is_some_and(|entry| matches!(entry.slot, Slot::Live { conn: c, .. } if c == conn));
        if !is_current {
            return;
        }
        if ended {
            self.end_session(user, &id, &mut session, &copies);
            return;
        }
        let expires_at = now + self.protocol.resume_window;
        if let Some(entry) = self
            .users
            .get_mut(user)
            .and_then(|state| state.sessions.get_mut(&id))
        {
            entry.slot = Slot::Detached {
                session: Box::new(session),
                copies,
                expires_at,
            };
        }
    }

    /// Ends sessions whose resume window passed and expires records no session holds [CU-5].
    pub(crate) fn sweep(&mut self, now: Time) {
        let mut lapsed = Vec::new();
        for (user, state) in &self.users {
            for (id, entry) in &state.sessions {
                if matches!(entry.slot, Slot::Detached { expires_at, .. } if expires_at <= now) {
                    lapsed.push((user.clone(), id.clone()));
                }
            }
        }
        for (user, id) in lapsed {
            let entry = self
                .users
                .get_mut(&user)
                .and_then(|state| state.sessions.remove(&id));
            if let Some(SessionEntry {
                slot:
                    Slot::Detached {
                        mut session,
                        copies,
                        ..
                    },
                ..
            }) = entry
            {
                debug!(%user, session = %id, "resume window passed");
                self.end_session(&user, &id, &mut session, &copies);
            }
        }
        let mut expired = 0;
        for (user, state) in &mut self.users {
            let due: Vec<u64> = state
                .held
                .iter()
                .filter(|(_, held)| held.holders == 0 && held.expires_at <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                if let Some(record) = state.held.remove(&id) {
                    state.bytes -= record.data.len();
                    expired += 1;
                    info!(%user, held = id, "a held message expired before any session took it");
                }
            }
        }
        if expired > 0 {
            self.held_total -= expired;
            m::mailbox_dropped("expired", expired);
            m::mailbox_depth(self.held_total);
        }
        self.users
            .retain(|_, state| !state.held.is_empty() || !state.sessions.is_empty());
    }

    fn end_session(
        &mut self,
        user: &UserId,
        id: &str,
        session: &mut ServerSession,
        copies: &Copies,
    ) {
        session.end();
        while let Some(event) = session.poll_event() {
            if let SessionEvent::Outcome {
                id: message,
                outcome,
            } = event
            {
                if let Some(held) = copies.get(&message) {
                    self.copy_settled(user, *held, &outcome);
                }
            }
        }
        if let Some(state) = self.users.get_mut(user) {
            state.sessions.remove(id);
        }
        self.owners.remove(id);
    }
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

fn new_session(protocol: &ServerConfig) -> ServerSession {
    let (id, token) = fresh_session_credentials();
    ServerSession::new(id, token, protocol)
}
