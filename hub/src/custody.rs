//! What spans connections: users, their sessions (live or kept for resume), and the messages held
//! for them (`docs/PROTOCOL.md` §8–§9).
//!
//! Custody [CU-1]: every published message is a record in its user's mailbox until a session of
//! that user acknowledges it. Sessions get *copies* (entries in their outbox, mapped back to the
//! record); a copy that ends without an ack leaves the record where it was, so nothing is ever
//! "moved back" and nothing can fall between two places [CU-2]. A copy shares the record's
//! payload ([`Data`] is reference-counted), so a user with N sessions costs N references, not N
//! payloads.
//!
//! A live session is not sent its copies: it is woken ([`HubEvent::Wake`]), and takes every
//! record after its cursor from the mailbox ([`Hub::take_new`]). A connection that stops reading
//! therefore holds nothing the mailbox does not hold already, and publishing never waits for it.
//!
//! Every bound across connections is checked here, once: the mailbox's (per user), the held
//! bytes of the whole server, and sessions per user. (The length of a user id is the driver's:
//! it is refused before it reaches the hub.) Expiry is driven by two ordered queues, so a sweep
//! costs what is due, not a walk over every user.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use readyws_protocol::frame::Resume;
use readyws_protocol::{
    Data, MessageId, Outcome, ResumeToken, ServerConfig, ServerSession, SessionEvent, Time,
};
use tracing::{debug, info, warn};

use crate::{MailboxLimits, OverflowPolicy, PublishReport, Refusal, UserId};

/// The driver's name for one connection (a socket), unique for the driver's life.
pub type ConnId = u64;

/// A session's outbox entries that are copies of mailbox records: message id → record id.
pub type Copies = BTreeMap<MessageId, u64>;

/// The bounds the hub keeps [CU-5, SE-6].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubLimits {
    /// Each user's mailbox.
    pub mailbox: MailboxLimits,
    /// The bytes of `data` held for all users together; a publish past it is refused.
    pub max_held_bytes: usize,
    /// The sessions one user may have, live or kept for resume.
    pub max_sessions_per_user: usize,
}

/// A new session's id and resume secret, and a secret to rotate a resumed session to [RS-8]:
/// made by the driver, which owns the random generator [SE-1].
#[derive(Clone, Debug)]
pub struct FreshCredentials {
    /// The id of a session this attach would create.
    pub session_id: String,
    /// Its resume secret.
    pub token: ResumeToken,
    /// The secret a resumed session gets instead of the one it had.
    pub rotated: ResumeToken,
}

/// What the driver must do or count after a call. Every call's events are drained by
/// [`Hub::poll_event`] before the next call; a call queues at most one per session of the user
/// it touched, plus a few counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    /// The live session on this connection has records to take ([`Hub::take_new`]) or copies
    /// to withdraw.
    Wake(ConnId),
    /// A bound bit: `held_bytes`, `sessions_per_user`, `sessions_per_user_evicted`.
    LimitRefused(&'static str),
    /// Held messages left custody without an acknowledgement: `rejected`, `overflow`,
    /// `refused`, `expired`.
    MailboxDropped {
        /// Why.
        reason: &'static str,
        /// How many.
        count: usize,
    },
    /// What all users' mailboxes hold now.
    MailboxDepth {
        /// Messages.
        messages: usize,
        /// Bytes of `data`.
        bytes: usize,
    },
    /// A `hello` asked to resume: `resumed` or `reset`.
    Resume(&'static str),
    /// Unsent copies taken back from sessions because their record was dropped [CU-5].
    CopiesWithdrawn(usize),
}

#[derive(Debug)]
struct Held {
    data: Data,
    expires_at: Time,
    /// How many sessions hold a copy, or are woken to take one. A record expires only while
    /// none does [CU-5].
    holders: usize,
}

#[derive(Debug)]
enum Slot {
    Live {
        conn: ConnId,
        /// The newest record the session has a copy of, or was woken for and counted as a
        /// holder of.
        cursor: u64,
        /// Records the mailbox dropped that the session may hold copies of: withdrawn at its
        /// next wake.
        dropped: Vec<u64>,
        /// Records after `cursor` whose custody ended (another session acknowledged them)
        /// before this session took its copy: it was queued on the session when published, so
        /// the session still gets it at its next wake [CU-4].
        owed: Vec<(u64, Data)>,
    },
    Detached {
        session: Box<ServerSession>,
        copies: Copies,
        expires_at: Time,
    },
}

#[derive(Debug)]
struct SessionEntry {
    /// Kept here too, so that a resume can be checked while the session lives in its task.
    token: ResumeToken,
    /// The token the client presented at the last resume. The session is re-keyed at every
    /// resume, but the `connection_ready` carrying the new token may be lost with its
    /// connection; until the client presents the new one, the one it is known to hold still
    /// resumes. Every older token resumes nothing [RS-8].
    previous: Option<ResumeToken>,
    /// The ticket of the `hello` that last claimed the session: an earlier one never gets it
    /// back [RS-9].
    claimed_by: u64,
    slot: Slot,
}

#[derive(Debug, Default)]
struct UserState {
    held: BTreeMap<u64, Held>,
    bytes: usize,
    sessions: HashMap<String, SessionEntry>,
}

/// The outcome of [`Hub::attach`].
#[derive(Debug)]
pub enum Attach {
    /// The connection may become ready with this session, whose outbox already holds copies of
    /// every mailbox record it lacked, oldest first.
    Ready {
        /// The session, to carry on the connection.
        session: Box<ServerSession>,
        /// Which of its outbox entries copy which records.
        copies: Copies,
        /// Whether it is the session the `hello` asked to resume.
        resumed: bool,
    },
    /// The session is live on another connection; ask it to surrender, then attach again.
    TakeOver {
        /// The connection carrying it.
        holder: ConnId,
    },
    /// A later `hello` claimed the session this one asks to resume: its client has moved on
    /// [RS-9].
    Superseded,
    /// The user has as many sessions as allowed, every one of them live.
    TooManySessions {
        /// The bound.
        limit: usize,
    },
}

/// What a woken live session takes from the mailbox.
#[derive(Debug, Default)]
pub struct Taken {
    /// Records after the session's cursor, oldest first.
    pub records: Vec<(u64, Data)>,
    /// Records the mailbox dropped since: their copies are withdrawn if still unsent.
    pub dropped: Vec<u64>,
}

/// Users, their sessions and their held messages: one instance's whole custody state.
#[derive(Debug)]
pub struct Hub {
    protocol: ServerConfig,
    limits: HubLimits,
    users: HashMap<UserId, UserState>,
    /// Session id → its user, for resume lookups.
    owners: HashMap<String, UserId>,
    next_held: u64,
    /// The ticket the next `hello` gets, in the order their attaches began [RS-9].
    next_hello: u64,
    held_total: usize,
    held_bytes: usize,
    /// Detached sessions by the end of their resume window.
    lapses: BTreeSet<(Time, UserId, String)>,
    /// Records that no session holds, by when they expire.
    expiries: BTreeSet<(Time, UserId, u64)>,
    events: VecDeque<HubEvent>,
}

impl Hub {
    /// An empty hub whose sessions follow `protocol`.
    pub fn new(protocol: ServerConfig, limits: HubLimits) -> Self {
        Hub {
            protocol,
            limits,
            users: HashMap::new(),
            owners: HashMap::new(),
            next_held: 1,
            next_hello: 1,
            held_total: 0,
            held_bytes: 0,
            lapses: BTreeSet::new(),
            expiries: BTreeSet::new(),
            events: VecDeque::new(),
        }
    }

    /// The next thing the driver must do or count.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }

    fn depth_changed(&mut self) {
        self.events.push_back(HubEvent::MailboxDepth {
            messages: self.held_total,
            bytes: self.held_bytes,
        });
    }

    /// Messages held for `user` (acknowledged by no session yet).
    pub fn mailbox_depth(&self, user: &UserId) -> usize {
        self.users.get(user).map_or(0, |u| u.held.len())
    }

    /// The records held for `user` (in custody: acknowledged by no session yet), oldest first.
    pub fn held_ids(&self, user: &UserId) -> Vec<u64> {
        self.users
            .get(user)
            .map_or_else(Vec::new, |u| u.held.keys().copied().collect())
    }

    /// Accepts a message for `user`: recorded in the mailbox, queued on every detached session of
    /// the user, and every live one woken to take it [CU-4].
    pub fn publish(
        &mut self,
        user: &UserId,
        data: Data,
        now: Time,
    ) -> Result<PublishReport, Refusal> {
        let size = self.limits.mailbox.admit(&data)?;
        // The server-wide bound never drops another message to make room: it refuses.
        if self.held_bytes.saturating_add(size) > self.limits.max_held_bytes {
            self.events.push_back(HubEvent::LimitRefused("held_bytes"));
            warn!(user = ?user.as_str(), held_bytes = self.held_bytes, "server-wide held bytes full: publish refused");
            return Err(Refusal::ServerFull {
                held_bytes: self.held_bytes,
                limit: self.limits.max_held_bytes,
            });
        }
        let mailbox = self.limits.mailbox;
        let state = self.users.entry(user.clone()).or_default();
        let mut dropped = Vec::new();
        while state.held.len() >= mailbox.max_messages || state.bytes + size > mailbox.max_bytes {
            match mailbox.overflow {
                OverflowPolicy::RejectNew => {
                    self.events.push_back(HubEvent::MailboxDropped {
                        reason: "rejected",
                        count: 1,
                    });
                    warn!(user = ?user.as_str(), held = state.held.len(), "mailbox full: publish refused");
                    return Err(Refusal::MailboxFull {
                        messages: state.held.len(),
                        bytes: state.bytes,
                    });
                }
                OverflowPolicy::DropOldest => {
                    let Some((id, oldest)) = state.held.pop_first() else {
                        break;
                    };
                    state.bytes -= oldest.data.len();
                    if oldest.holders == 0 {
                        self.expiries.remove(&(oldest.expires_at, user.clone(), id));
                    }
                    self.held_bytes -= oldest.data.len();
                    dropped.push(id);
                }
            }
        }
        if !dropped.is_empty() {
            self.held_total -= dropped.len();
            self.events.push_back(HubEvent::MailboxDropped {
                reason: "overflow",
                count: dropped.len(),
            });
            warn!(user = ?user.as_str(), dropped = dropped.len(), "mailbox full: dropped the oldest held messages");
            withdraw_dropped(state, &dropped, &mut self.events);
        }
        let id = self.next_held;
        self.next_held += 1;
        let mut live = 0;
        let mut holders = 0;
        for entry in state.sessions.values_mut() {
            match &mut entry.slot {
                Slot::Live { conn, .. } => {
                    self.events.push_back(HubEvent::Wake(*conn));
                    live += 1;
                    holders += 1;
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
        let expires_at = now + mailbox.ttl;
        state.bytes += size;
        state.held.insert(
            id,
            Held {
                data,
                expires_at,
                holders,
            },
        );
        if holders == 0 {
            self.expiries.insert((expires_at, user.clone(), id));
        }
        self.held_total += 1;
        self.held_bytes += size;
        self.depth_changed();
        debug!(user = ?user.as_str(), held = id, live, "published");
        Ok(PublishReport {
            delivered: live,
            held: live == 0,
            dropped_oldest: dropped.len(),
        })
    }

    /// Attaches a connection of `user` to a session: the one `resume` names if it is this user's
    /// and its secret matches [RS-3, SE-3], otherwise a new one. The session is registered as
    /// live before this returns, so a publish from now on reaches it [HS-4]. `ticket` orders the
    /// `hello`s: the first attach of one gives it the next ticket, its retries keep it, and a
    /// session claimed for a later ticket is never attached for an earlier one [RS-9].
    pub fn attach(
        &mut self,
        user: &UserId,
        resume: Option<&Resume>,
        conn: ConnId,
        fresh: FreshCredentials,
        now: Time,
        ticket: &mut Option<u64>,
    ) -> Attach {
        let ticket = *ticket.get_or_insert_with(|| {
            self.next_hello += 1;
            self.next_hello - 1
        });
        let state = self.users.entry(user.clone()).or_default();
        let mut found = None;
        if let Some(resume) = resume {
            let owned_by_user = self.owners.get(&resume.session_id) == Some(user);
            let entry = state.sessions.get_mut(&resume.session_id);
            let presented = &resume.resume_token;
            let known = |e: &&mut SessionEntry| {
                e.token == *presented || e.previous.as_ref() == Some(presented)
            };
            if let Some(entry) = entry.filter(|e| owned_by_user && known(e)) {
                if entry.claimed_by > ticket {
                    return Attach::Superseded;
                }
                entry.claimed_by = ticket;
                if let Slot::Live { conn: holder, .. } = &entry.slot {
                    return Attach::TakeOver { holder: *holder };
                }
                found = state.sessions.remove(&resume.session_id);
            }
            let result = if found.is_some() { "resumed" } else { "reset" };
            self.events.push_back(HubEvent::Resume(result));
        }
        let mut previous = None;
        let (mut session, mut copies, resumed) = match found {
            Some(SessionEntry {
                slot:
                    Slot::Detached {
                        mut session,
                        copies,
                        expires_at,
                    },
                ..
            }) => {
                self.lapses
                    .remove(&(expires_at, user.clone(), session.id().to_owned()));
                // A new secret at every resume, so that a token that leaked stops resuming once
                // the client has moved on to the next one [RS-8].
                session.rotate_resume_token(fresh.rotated);
                previous = resume.map(|resume| resume.resume_token.clone());
                (session, copies, true)
            }
            _ => {
                if !self.make_room_for_session(user) {
                    self.events
                        .push_back(HubEvent::LimitRefused("sessions_per_user"));
                    self.forget_if_idle(user);
                    return Attach::TooManySessions {
                        limit: self.limits.max_sessions_per_user,
                    };
                }
                let session = Box::new(ServerSession::new(
                    fresh.session_id,
                    fresh.token,
                    &self.protocol,
                ));
                self.owners.insert(session.id().to_owned(), user.clone());
                (session, Copies::new(), false)
            }
        };
        let state = self.users.entry(user.clone()).or_default();
        // Every record this session lacks, oldest first, before any newer message [CU-3].
        let has: BTreeSet<u64> = copies.values().copied().collect();
        for (id, held) in state.held.iter_mut().filter(|(id, _)| !has.contains(id)) {
            if let Ok(message) = session.send(held.data.clone(), None, now) {
                copies.insert(message, *id);
                if held.holders == 0 {
                    self.expiries.remove(&(held.expires_at, user.clone(), *id));
                }
                held.holders += 1;
            }
        }
        let token = session.resume_token().clone();
        state.sessions.insert(
            session.id().to_owned(),
            SessionEntry {
                token,
                previous,
                claimed_by: ticket,
                slot: Slot::Live {
                    conn,
                    cursor: self.next_held - 1,
                    dropped: Vec::new(),
                    owed: Vec::new(),
                },
            },
        );
        Attach::Ready {
            session,
            copies,
            resumed,
        }
    }

    /// Below the per-user session bound, ending the user's detached session closest to the end
    /// of its resume window if needed; `false` when every session of the user is live.
    fn make_room_for_session(&mut self, user: &UserId) -> bool {
        let limit = self.limits.max_sessions_per_user;
        loop {
            let Some(state) = self.users.get(user) else {
                return true;
            };
            if state.sessions.len() < limit {
                return true;
            }
            let oldest = state
                .sessions
                .iter()
                .filter_map(|(id, entry)| match &entry.slot {
                    Slot::Detached { expires_at, .. } => Some((*expires_at, id.clone())),
                    Slot::Live { .. } => None,
                })
                .min();
            let Some((expires_at, id)) = oldest else {
                return false;
            };
            self.lapses.remove(&(expires_at, user.clone(), id.clone()));
            self.events
                .push_back(HubEvent::LimitRefused("sessions_per_user_evicted"));
            info!(user = ?user.as_str(), session = %id, "too many sessions: ended the oldest detached one");
            self.end_detached(user, &id);
        }
    }

    /// What a woken live session takes: the records after its cursor and the drops since.
    pub fn take_new(&mut self, user: &UserId, conn: u64) -> Taken {
        let Some(state) = self.users.get_mut(user) else {
            return Taken::default();
        };
        let Some((cursor, dropped, owed)) =
            state
                .sessions
                .values_mut()
                .find_map(|entry| match &mut entry.slot {
                    Slot::Live {
                        conn: c,
                        cursor,
                        dropped,
                        owed,
                        ..
                    } if *c == conn => Some((cursor, dropped, owed)),
                    _ => None,
                })
        else {
            return Taken::default();
        };
        let mut records: Vec<(u64, Data)> = state
            .held
            .range(*cursor + 1..)
            .map(|(id, held)| (*id, held.data.clone()))
            .collect();
        if !owed.is_empty() {
            records.append(owed);
            records.sort_unstable_by_key(|(id, _)| *id);
        }
        if let Some((last, _)) = records.last() {
            *cursor = *last;
        }
        Taken {
            records,
            dropped: std::mem::take(dropped),
        }
    }

    /// A session's copy of record `held` ended with `outcome`.
    pub fn copy_settled(&mut self, user: &UserId, held: u64, outcome: &Outcome) {
        let Some(state) = self.users.get_mut(user) else {
            return;
        };
        let ends_custody = match outcome {
            Outcome::Acked => true,
            Outcome::Refused { code, .. } => {
                warn!(user = ?user.as_str(), held, code = ?code, "the client refused a published message for good");
                self.events.push_back(HubEvent::MailboxDropped {
                    reason: "refused",
                    count: 1,
                });
                true
            }
            _ => false,
        };
        if ends_custody {
            if let Some(record) = state.held.remove(&held) {
                for entry in state.sessions.values_mut() {
                    if let Slot::Live { cursor, owed, .. } = &mut entry.slot {
                        if *cursor < held {
                            owed.push((held, record.data.clone()));
                        }
                    }
                }
                state.bytes -= record.data.len();
                if record.holders == 0 {
                    self.expiries
                        .remove(&(record.expires_at, user.clone(), held));
                }
                self.held_total -= 1;
                self.held_bytes -= record.data.len();
                self.depth_changed();
            }
        } else if let Some(record) = state.held.get_mut(&held) {
            record.holders = record.holders.saturating_sub(1);
            if record.holders == 0 {
                self.expiries
                    .insert((record.expires_at, user.clone(), held));
            }
        }
    }

    /// The connection carrying `session` ended. `ended` says the client closed the session on
    /// purpose [RS-6]; otherwise it is kept for the resume window [RS-1]. Records the session was
    /// woken for but had not taken yet are queued on it first, oldest first, so that it keeps its
    /// order [CU-3].
    pub fn detach(
        &mut self,
        user: &UserId,
        conn: u64,
        mut session: ServerSession,
        mut copies: Copies,
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
        let taken = self.take_new(user, conn);
        let withdrawn = withdraw_from(&mut session, &mut copies, &taken.dropped);
        if withdrawn > 0 {
            self.events.push_back(HubEvent::CopiesWithdrawn(withdrawn));
        }
        for (held, data) in taken.records {
            match session.send(data, None, now) {
                Ok(message) => {
                    copies.insert(message, held);
                }
                Err(_) => self.copy_settled(user, held, &Outcome::Closed),
            }
        }
        if ended {
            self.end_session(user, &id, &mut session, &copies);
            self.forget_if_idle(user);
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
            self.lapses.insert((expires_at, user.clone(), id));
        }
    }

    /// Ends sessions whose resume window passed and expires records no session holds [CU-5].
    /// Costs what is due, whatever the number of users.
    pub fn sweep(&mut self, now: Time) {
        while let Some((at, user, id)) = self.lapses.first().cloned() {
            if at > now {
                break;
            }
            self.lapses.pop_first();
            debug!(user = ?user.as_str(), session = %id, "resume window passed");
            self.end_detached(&user, &id);
            self.forget_if_idle(&user);
        }
        let mut expired = 0;
        while let Some((at, user, id)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            let Some(state) = self.users.get_mut(&user) else {
                continue;
            };
            let due = state
                .held
                .get(&id)
                .is_some_and(|held| held.holders == 0 && held.expires_at == at);
            if !due {
                continue;
            }
            if let Some(record) = state.held.remove(&id) {
                state.bytes -= record.data.len();
                self.held_bytes -= record.data.len();
                expired += 1;
                info!(user = ?user.as_str(), held = id, "a held message expired before any session took it");
            }
            self.forget_if_idle(&user);
        }
        if expired > 0 {
            self.held_total -= expired;
            self.events.push_back(HubEvent::MailboxDropped {
                reason: "expired",
                count: expired,
            });
            self.depth_changed();
        }
    }

    /// Ends a detached session (its lapse entry already removed by the caller).
    fn end_detached(&mut self, user: &UserId, id: &str) {
        let entry = self
            .users
            .get_mut(user)
            .and_then(|state| state.sessions.remove(id));
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
            self.end_session(user, id, &mut session, &copies);
        }
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

    /// Forgets a user who has neither sessions nor held messages.
    fn forget_if_idle(&mut self, user: &UserId) {
        if self
            .users
            .get(user)
            .is_some_and(|state| state.held.is_empty() && state.sessions.is_empty())
        {
            self.users.remove(user);
        }
    }
}

/// The mailbox of `state` dropped `dropped`: each detached session withdraws its unsent copies
/// now, each live one at its next wake.
fn withdraw_dropped(state: &mut UserState, dropped: &[u64], events: &mut VecDeque<HubEvent>) {
    let mut withdrawn = 0;
    for entry in state.sessions.values_mut() {
        match &mut entry.slot {
            Slot::Live {
                conn,
                cursor,
                dropped: pending,
                ..
            } => {
                let held_by_session = dropped.iter().filter(|id| **id <= *cursor);
                let before = pending.len();
                pending.extend(held_by_session);
                if pending.len() > before {
                    events.push_back(HubEvent::Wake(*conn));
                }
            }
            Slot::Detached {
                session, copies, ..
            } => withdrawn += withdraw_from(session, copies, dropped),
        }
    }
    if withdrawn > 0 {
        events.push_back(HubEvent::CopiesWithdrawn(withdrawn));
    }
}

/// Withdraws the unsent copies of `dropped` records from `session`; a copy already transmitted
/// stays until the client settles it. Returns how many were withdrawn.
pub fn withdraw_from(session: &mut ServerSession, copies: &mut Copies, dropped: &[u64]) -> usize {
    if dropped.is_empty() {
        return 0;
    }
    let targets: BTreeSet<u64> = dropped.iter().copied().collect();
    let messages: Vec<MessageId> = copies
        .iter()
        .filter(|(_, held)| targets.contains(held))
        .map(|(message, _)| *message)
        .collect();
    let mut withdrawn = 0;
    for message in messages {
        if session.withdraw(message) {
            copies.remove(&message);
            withdrawn += 1;
        }
    }
    withdrawn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        let limits = HubLimits {
            mailbox: MailboxLimits::default(),
            max_held_bytes: usize::MAX,
            max_sessions_per_user: 16,
        };
        Hub::new(ServerConfig::default(), limits)
    }

    /// Credentials numbered by `n`, as a driver's random generator would make them.
    fn fresh(n: u8) -> FreshCredentials {
        let token = |b: u8| ResumeToken::from_random_bytes(&[b; 16]).expect("16 bytes");
        FreshCredentials {
            session_id: format!("s-{n}"),
            token: token(n),
            rotated: token(n.wrapping_add(100)),
        }
    }

    /// [CU-4] A message published while two sessions are live is queued on both: when one
    /// acknowledges it before the other has taken its copy, the other still gets it, and no
    /// session attached afterwards does.
    #[test]
    fn a_live_sessions_copy_survives_another_sessions_ack() {
        let mut hub = hub();
        let alice = UserId::new("alice");
        for conn in [1, 2] {
            let attached = hub.attach(&alice, None, conn, fresh(conn as u8), Time::ZERO, &mut None);
            assert!(matches!(attached, Attach::Ready { resumed: false, .. }));
        }
        let data = Data::from_json("\"m\"").expect("JSON");
        hub.publish(&alice, data, Time::ZERO).expect("room");
        let woken: Vec<HubEvent> = std::iter::from_fn(|| hub.poll_event())
            .filter(|event| matches!(event, HubEvent::Wake(_)))
            .collect();
        assert_eq!(woken.len(), 2, "both live sessions are woken: {woken:?}");
        let taken = hub.take_new(&alice, 1);
        let [(held, _)] = taken.records.as_slice() else {
            panic!("the first session takes one record");
        };
        hub.copy_settled(&alice, *held, &Outcome::Acked);
        assert_eq!(hub.mailbox_depth(&alice), 0, "custody ended");
        let late = hub.take_new(&alice, 2);
        let ids: Vec<u64> = late.records.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [*held], "the second session still gets its copy");
        assert!(hub.take_new(&alice, 2).records.is_empty(), "once");
    }

    /// [RS-9] Two `hello`s resume one live session at once: the later one gets it, and the
    /// earlier one never does, even when it retries first once the session is free.
    #[test]
    fn a_later_hello_wins_the_session() {
        let mut hub = hub();
        let alice = UserId::new("alice");
        let Attach::Ready {
            session, copies, ..
        } = hub.attach(&alice, None, 1, fresh(1), Time::ZERO, &mut None)
        else {
            panic!("a new session");
        };
        let resume = Resume {
            session_id: session.id().to_owned(),
            resume_token: session.resume_token().clone(),
            last_received: 0,
        };
        let (mut earlier, mut later) = (None, None);
        let now = Time::from_millis(10);
        let asked = hub.attach(&alice, Some(&resume), 2, fresh(2), now, &mut earlier);
        assert!(matches!(asked, Attach::TakeOver { holder: 1 }));
        let asked = hub.attach(&alice, Some(&resume), 3, fresh(3), now, &mut later);
        assert!(matches!(asked, Attach::TakeOver { holder: 1 }));
        // The first connection surrenders: the session is kept for resume.
        hub.detach(&alice, 1, *session, copies, false, now);
        let retried = hub.attach(&alice, Some(&resume), 2, fresh(2), now, &mut earlier);
        assert!(matches!(retried, Attach::Superseded));
        let retried = hub.attach(&alice, Some(&resume), 3, fresh(3), now, &mut later);
        assert!(matches!(retried, Attach::Ready { resumed: true, .. }));
    }
}
