//! One user's state across connections — held messages and sessions — as one value that a
//! store keeps whole, and every rule that changes it (`docs/PROTOCOL.md` §8–§9).
//!
//! Custody [CU-1]: every published message is a record in its user's mailbox until a session of
//! that user acknowledges it. Sessions get *copies* (entries in their outbox, mapped back to the
//! record); a copy that ends without an ack leaves the record where it was, so nothing is ever
//! "moved back" and nothing can fall between two places [CU-2]. A copy shares the record's
//! payload ([`Data`] is reference-counted).
//!
//! Every session of the user holds a copy of every held record [CU-4]: a live one is woken and
//! takes the records after its cursor ([`UserRecord::take_new`]); one kept for resume is given,
//! when resumed, every held record it lacks. A record whose custody ends (another session
//! acknowledged it) before a session took its copy is *owed* to that session, so the copy
//! queued on it stays [CU-4]. Hence a record expires only while its user has no session [CU-5].
//!
//! A [`UserRecord`] is plain data (it serializes with `serde`): a store keeps one per user, in
//! memory for one instance or shared by several, and every driver changes it only through these
//! methods. Everything a rule needs from outside — the time, fresh credentials, whether an
//! instance is alive — is an argument.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use readyws_protocol::frame::Resume;
use readyws_protocol::{
    Data, MessageId, Outcome, ResumeToken, ServerConfig, ServerSession, SessionState, Time,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::custody::{Attach, Copies, FreshCredentials, HubEvent, HubLimits, Taken};
use crate::{OverflowPolicy, PublishReport, Refusal, UserId};

/// Which connection carries a live session: a server instance, and the connection's number in
/// it. An in-memory server has one instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Holder {
    /// The instance's name, unique among the instances sharing a store.
    pub instance: String,
    /// The connection, unique for the instance's life.
    pub conn: u64,
}

impl Holder {
    /// The connection `conn` of `instance`.
    pub fn new(instance: impl Into<String>, conn: u64) -> Self {
        Holder {
            instance: instance.into(),
            conn,
        }
    }
}

/// A digest of a resume secret: a record never holds the secret itself, so a copy of the store
/// resumes nothing [SE-2]. Stored as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl Serialize for TokenDigest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 64];
        for (at, byte) in self.0.iter().enumerate() {
            text[2 * at] = DIGITS[usize::from(byte >> 4)];
            text[2 * at + 1] = DIGITS[usize::from(byte & 0xf)];
        }
        // Hex digits are ASCII.
        serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for TokenDigest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let bytes = text.as_bytes();
        let mut out = [0u8; 32];
        if bytes.len() != 64 {
            return Err(serde::de::Error::invalid_length(
                bytes.len(),
                &"64 hex digits",
            ));
        }
        for (at, pair) in bytes.chunks(2).enumerate() {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(high), Some(low)) => out[at] = high << 4 | low,
                _ => {
                    return Err(serde::de::Error::invalid_value(
                        serde::de::Unexpected::Str(&text),
                        &"64 hex digits",
                    ));
                }
            }
        }
        Ok(TokenDigest(out))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// The hash that turns resume secrets into [`TokenDigest`]s. A cryptographic hash (SHA-256) is
/// the application's choice, as a crypto provider is: the core reads no such global.
pub type Digest = fn(&[u8]) -> [u8; 32];

/// Everything the rules need that does not change while a server runs.
#[derive(Clone, Debug)]
pub struct Rules {
    /// How sessions behave (their outbox bounds, the resume window).
    pub protocol: ServerConfig,
    /// The bounds across connections.
    pub limits: HubLimits,
    /// The hash of resume secrets.
    pub digest: Digest,
}

impl Rules {
    fn digest(&self, token: &ResumeToken) -> TokenDigest {
        TokenDigest((self.digest)(token.expose().as_bytes()))
    }
}

/// The instances' leases as a driver last read them from its store, and the one rule that
/// judges from them whether an instance runs [RS-1, RS-7].
#[derive(Clone, Debug, Default)]
pub struct Leases(Option<BTreeMap<String, Time>>);

impl Leases {
    /// Leases as read: instance → when its lease runs out.
    pub fn read(leases: BTreeMap<String, Time>) -> Self {
        Leases(Some(leases))
    }

    /// Whether `instance` runs at `now`: unless its lease, as read, ran out. One whose lease
    /// was not read yet (it started since, or nothing was read) runs: taking its sessions
    /// without asking would let two connections carry one session at once. A store forgets a
    /// gone instance only after its sessions were kept for resume, so a forgotten one is never
    /// mistaken for a running one that holds sessions.
    pub fn alive(&self, instance: &str, now: Time) -> bool {
        self.0
            .as_ref()
            .is_none_or(|leases| leases.get(instance).is_none_or(|until| *until > now))
    }

    /// The instances whose lease, as read, ran out by `now`.
    pub fn gone(&self, now: Time) -> Vec<String> {
        self.0
            .iter()
            .flatten()
            .filter(|(_, until)| **until <= now)
            .map(|(instance, _)| instance.clone())
            .collect()
    }
}

/// A session's state kept away from its connection: what the protocol session needs to carry
/// on ([`SessionState`]), and the record each of its messages in flight copies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    state: SessionState,
    /// The record of each of `state.in_flight`, in order (0: not a copy of a record).
    records: Vec<u64>,
}

impl Kept {
    /// What `session` would need to carry on elsewhere, with `copies` naming its records. The
    /// copies it queued and never transmitted are not kept: a resumed session is given every
    /// held record it lacks again, in order.
    pub fn of(session: &ServerSession, copies: &Copies) -> Kept {
        let (state, ids) = session.state();
        let records = ids
            .iter()
            .map(|id| copies.get(id).copied().unwrap_or(0))
            .collect();
        Kept { state, records }
    }

    fn holds(&self, record: u64) -> bool {
        self.records.contains(&record)
    }

    /// Replaces the data of each message in flight that copies a held message with a
    /// placeholder, for a store that keeps the held message's data apart ([`UserRecord::head`]).
    fn strip(&mut self, held: &BTreeMap<u64, Held>) {
        for (data, record) in self.state.in_flight.iter_mut().zip(&self.records) {
            if held.get(record).is_some_and(|held| held.data == *data) {
                *data = STRIPPED.clone();
            }
        }
    }

    /// Puts back the data [`strip`](Self::strip) took out.
    fn restore(&mut self, held: &BTreeMap<u64, Held>) {
        for (data, record) in self.state.in_flight.iter_mut().zip(&self.records) {
            if let Some(held) = held.get(record) {
                *data = held.data.clone();
            }
        }
    }
}

/// What stands for the data of a message in flight whose data is its held message's.
static STRIPPED: std::sync::LazyLock<Data> =
    std::sync::LazyLock::new(|| Data::from_json("0").expect("0 is JSON"));

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Held {
    data: Data,
    expires_at: Time,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Slot {
    Live {
        holder: Holder,
        /// The newest record the session was woken for.
        cursor: u64,
        /// Records the mailbox dropped that the session may hold copies of: withdrawn at its
        /// next wake [CU-5].
        dropped: Vec<u64>,
        /// Records after `cursor` whose custody ended before this session took its copy
        /// [CU-4].
        owed: Vec<(u64, Data)>,
        /// The session as the driver last saved it, for the instance that resumes it should
        /// this one die [RS-1]. A driver whose sessions die with it never saves.
        saved: Kept,
    },
    Detached {
        kept: Kept,
        /// Records whose custody ended while the session was kept, which it was holding a copy
        /// of: it still gets them when resumed [CU-4].
        owed: Vec<(u64, Data)>,
        /// The end of its resume window.
        expires_at: Time,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionEntry {
    token: TokenDigest,
    /// The digest of the token the client presented at the last resume: until the client
    /// presents the new one, the one it is known to hold still resumes. Every older token
    /// resumes nothing [RS-8].
    previous: Option<TokenDigest>,
    /// The ticket of the `hello` that last claimed the session: an earlier one never gets it
    /// back [RS-9].
    claimed_by: u64,
    slot: Slot,
}

impl SessionEntry {
    /// The session's state as kept: saved by its connection, or kept for resume.
    fn kept_mut(&mut self) -> &mut Kept {
        match &mut self.slot {
            Slot::Live { saved, .. } => saved,
            Slot::Detached { kept, .. } => kept,
        }
    }
}

/// What [`UserRecord::save`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// The session is still this connection's: its state is kept.
    Done,
    /// Another connection carries the session now (this instance was thought dead, or a later
    /// `hello` claimed it): the connection must stop carrying it.
    Fenced,
}

/// One user's held messages and sessions. Empty for a user the store has never seen.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserRecord {
    /// The id of the newest record: ids grow per user, so no counter spans users.
    last_record: u64,
    /// The last `hello` ticket handed out for this user [RS-9].
    last_ticket: u64,
    held: BTreeMap<u64, Held>,
    bytes: usize,
    sessions: BTreeMap<String, SessionEntry>,
    /// The held messages removed since [`UserRecord::mark_held`], for a store that writes each
    /// held message apart: it then writes what a change did, not every message the user has
    /// waiting. Not stored.
    #[serde(skip)]
    held_log: Option<HeldLog>,
}

/// What [`UserRecord::held_log`] remembers: the newest id at the mark (every message added
/// since has a greater one) and the ids removed since, of those held at the mark.
#[derive(Clone, Debug, Default)]
struct HeldLog {
    newest_at_mark: u64,
    removed: Vec<u64>,
}

/// The held messages one change removed and added ([`UserRecord::held_changes`]).
#[derive(Debug)]
pub struct HeldChanges<'r> {
    /// Ids of the messages held at the mark and gone now.
    pub removed: Vec<u64>,
    /// The messages added since the mark and still held, oldest first: id, expiry, data.
    pub added: Vec<(u64, Time, &'r Data)>,
}

/// A record without its held messages ([`UserRecord::head`]): what a store that keeps each
/// held message apart ([`UserRecord::held_messages`]) writes as one value, so that a commit
/// rewrites only the messages that changed. Serializes to the form [`StoredHead`] reads.
#[derive(Debug, Serialize)]
pub struct RecordHead {
    last_record: u64,
    last_ticket: u64,
    /// The sessions, their messages in flight that copy a held message without their data:
    /// it is the held message's, and comes back from it.
    sessions: BTreeMap<String, SessionEntry>,
}

/// A [`RecordHead`] read back, to be joined with the held messages
/// ([`UserRecord::from_parts`]).
#[derive(Debug, Deserialize)]
pub struct StoredHead {
    last_record: u64,
    last_ticket: u64,
    sessions: BTreeMap<String, SessionEntry>,
}

impl UserRecord {
    /// A new record whose ids follow `last_record`: a store that forgets empty records starts
    /// the next one of the user after the ids it has handed out, so no id means two messages.
    pub fn continuing_after(last_record: u64) -> Self {
        UserRecord {
            last_record,
            ..UserRecord::default()
        }
    }

    /// The record without its held messages, which [`held_messages`](Self::held_messages)
    /// gives.
    pub fn head(&self) -> RecordHead {
        let mut sessions = self.sessions.clone();
        for entry in sessions.values_mut() {
            entry.kept_mut().strip(&self.held);
        }
        RecordHead {
            last_record: self.last_record,
            last_ticket: self.last_ticket,
            sessions,
        }
    }

    /// Starts remembering which held messages go, so that [`UserRecord::held_changes`] can say
    /// what a change did in the time of what it changed (a store calls it before each change).
    pub fn mark_held(&mut self) {
        self.held_log = Some(HeldLog {
            newest_at_mark: self.last_record,
            removed: Vec::new(),
        });
    }

    /// The held messages removed and added since [`UserRecord::mark_held`]; `None` without a
    /// mark (the store then writes the whole record).
    pub fn held_changes(&self) -> Option<HeldChanges<'_>> {
        let log = self.held_log.as_ref()?;
        Some(HeldChanges {
            removed: log.removed.clone(),
            added: self
                .held
                .range(log.newest_at_mark + 1..)
                .map(|(id, held)| (*id, held.expires_at, &held.data))
                .collect(),
        })
    }

    /// Notes that held message `id` is gone, when a mark asks for it.
    fn log_removed(&mut self, id: u64) {
        if let Some(log) = &mut self.held_log {
            // One added and removed since the mark was never written: nothing to remove.
            if id <= log.newest_at_mark {
                log.removed.push(id);
            }
        }
    }

    /// Each held message: its id, when it expires, and its data; oldest first.
    pub fn held_messages(&self) -> impl Iterator<Item = (u64, Time, &Data)> + '_ {
        self.held
            .iter()
            .map(|(id, held)| (*id, held.expires_at, &held.data))
    }

    /// Whether message `id` is held.
    pub fn holds(&self, id: u64) -> bool {
        self.held.contains_key(&id)
    }

    /// A record from its head and its held messages (id, expiry, data).
    pub fn from_parts(head: StoredHead, held: impl IntoIterator<Item = (u64, Time, Data)>) -> Self {
        let mut bytes = 0;
        let held: BTreeMap<u64, Held> = held
            .into_iter()
            .map(|(id, expires_at, data)| {
                bytes += data.len();
                (id, Held { data, expires_at })
            })
            .collect();
        let mut sessions = head.sessions;
        for entry in sessions.values_mut() {
            entry.kept_mut().restore(&held);
        }
        UserRecord {
            last_record: head.last_record,
            last_ticket: head.last_ticket,
            held,
            bytes,
            sessions,
            held_log: None,
        }
    }

    /// The id of the newest record.
    pub fn last_record(&self) -> u64 {
        self.last_record
    }

    /// Whether the record holds nothing: a store may forget it.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.sessions.is_empty()
    }

    /// Messages held (in custody: acknowledged by no session yet).
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Bytes of `data` held.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// The held records, oldest first.
    pub fn held_ids(&self) -> Vec<u64> {
        self.held.keys().copied().collect()
    }

    /// When [`sweep`](Self::sweep) next has something to do: a resume window ends, or (while
    /// the user has no session) a held message expires. A store indexes records by it.
    pub fn deadline(&self) -> Option<Time> {
        let lapse = self
            .sessions
            .values()
            .filter_map(|entry| match &entry.slot {
                Slot::Detached { expires_at, .. } => Some(*expires_at),
                Slot::Live { .. } => None,
            })
            .min();
        let expiry = if self.sessions.is_empty() {
            self.held.values().map(|held| held.expires_at).min()
        } else {
            None
        };
        lapse.into_iter().chain(expiry).min()
    }

    /// Accepts a message: recorded in the mailbox, owed to every session of the user, and every
    /// live one woken to take it [CU-4]. The mailbox's bounds are checked here [CU-5]; a bound
    /// across users is the caller's.
    pub fn publish(
        &mut self,
        rules: &Rules,
        user: &UserId,
        data: Data,
        now: Time,
        events: &mut VecDeque<HubEvent>,
    ) -> Result<PublishReport, Refusal> {
        let mailbox = rules.limits.mailbox;
        let size = mailbox.admit(&data)?;
        let mut dropped = Vec::new();
        while self.held.len() >= mailbox.max_messages || self.bytes + size > mailbox.max_bytes {
            match mailbox.overflow {
                OverflowPolicy::RejectNew => {
                    events.push_back(HubEvent::MailboxDropped {
                        reason: "rejected",
                        count: 1,
                    });
                    warn!(user = ?user.as_str(), held = self.held.len(), "mailbox full: publish refused");
                    return Err(Refusal::MailboxFull {
                        messages: self.held.len(),
                        bytes: self.bytes,
                    });
                }
                OverflowPolicy::DropOldest => {
                    let Some((id, oldest)) = self.held.pop_first() else {
                        break;
                    };
                    self.log_removed(id);
                    self.bytes -= oldest.data.len();
                    dropped.push(id);
                }
            }
        }
        if !dropped.is_empty() {
            events.push_back(HubEvent::MailboxDropped {
                reason: "overflow",
                count: dropped.len(),
            });
            warn!(user = ?user.as_str(), dropped = dropped.len(), "mailbox full: dropped the oldest held messages");
            self.withdraw_dropped(&dropped, events);
        }
        self.last_record += 1;
        let id = self.last_record;
        let mut live = 0;
        for entry in self.sessions.values() {
            if let Slot::Live { holder, .. } = &entry.slot {
                events.push_back(HubEvent::Wake(holder.clone()));
                live += 1;
            }
        }
        self.bytes += size;
        self.held.insert(
            id,
            Held {
                data,
                expires_at: now + mailbox.ttl,
            },
        );
        debug!(user = ?user.as_str(), held = id, live, "published");
        Ok(PublishReport {
            delivered: live,
            held: live == 0,
            dropped_oldest: dropped.len(),
        })
    }

    /// The mailbox dropped `dropped`: a live session withdraws its unsent copies at its next
    /// wake; one kept for resume is not given them when resumed (a copy it transmitted stays).
    fn withdraw_dropped(&mut self, dropped: &[u64], events: &mut VecDeque<HubEvent>) {
        for entry in self.sessions.values_mut() {
            if let Slot::Live {
                holder,
                cursor,
                dropped: pending,
                ..
            } = &mut entry.slot
            {
                let before = pending.len();
                pending.extend(dropped.iter().filter(|id| **id <= *cursor));
                if pending.len() > before {
                    events.push_back(HubEvent::Wake(holder.clone()));
                }
            }
        }
    }

    /// Attaches connection `holder` of `user` to a session: the one `resume` names if it is
    /// this user's and its secret matches [RS-3, SE-3], otherwise a new one. The session is
    /// registered as live before this returns, so a publish from now on reaches it [HS-4].
    /// `ticket` orders the `hello`s: the first attach of one takes the user's next ticket, its
    /// retries keep it, and a session claimed for a later ticket is never attached for an
    /// earlier one [RS-9]. A session live on an instance that `alive` says is gone is taken as
    /// its instance last saved it [RS-7].
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        &mut self,
        rules: &Rules,
        user: &UserId,
        resume: Option<&Resume>,
        holder: Holder,
        fresh: FreshCredentials,
        now: Time,
        ticket: &mut Option<u64>,
        alive: &dyn Fn(&str) -> bool,
        events: &mut VecDeque<HubEvent>,
    ) -> Attach {
        let ticket = *ticket.get_or_insert_with(|| {
            self.last_ticket += 1;
            self.last_ticket
        });
        let mut found = None;
        if let Some(resume) = resume {
            let presented = rules.digest(&resume.resume_token);
            let entry = self
                .sessions
                .get_mut(&resume.session_id)
                .filter(|e| e.token == presented || e.previous == Some(presented));
            if let Some(entry) = entry {
                if entry.claimed_by > ticket {
                    return Attach::Superseded;
                }
                entry.claimed_by = ticket;
                if let Slot::Live {
                    holder: carrier, ..
                } = &entry.slot
                {
                    if alive(&carrier.instance) {
                        return Attach::TakeOver {
                            holder: carrier.clone(),
                        };
                    }
                    info!(user = ?user.as_str(), instance = ?carrier.instance, "resuming a session whose instance is gone");
                    release_slot(entry, now + rules.protocol.resume_window);
                }
                found = self
                    .sessions
                    .remove(&resume.session_id)
                    .map(|entry| (entry, presented));
            }
            let result = if found.is_some() { "resumed" } else { "reset" };
            events.push_back(HubEvent::Resume(result));
        }
        let mut previous = None;
        let (mut session, mut copies, owed, resumed) = match found {
            Some((
                SessionEntry {
                    slot: Slot::Detached { kept, owed, .. },
                    ..
                },
                presented,
            )) => {
                // A new secret at every resume, so that a token that leaked stops resuming once
                // the client has moved on to the next one [RS-8].
                let id = resume.map(|r| r.session_id.clone()).unwrap_or_default();
                let (session, ids) =
                    ServerSession::restore(id, fresh.rotated, &rules.protocol, kept.state);
                previous = Some(presented);
                let copies: Copies = ids
                    .into_iter()
                    .zip(kept.records)
                    .filter(|(_, record)| *record != 0)
                    .collect();
                (session, copies, owed, true)
            }
            _ => {
                if !self.make_room_for_session(rules, user, events) {
                    events.push_back(HubEvent::LimitRefused("sessions_per_user"));
                    return Attach::TooManySessions {
                        limit: rules.limits.max_sessions_per_user,
                    };
                }
                let session = ServerSession::new(fresh.session_id, fresh.token, &rules.protocol);
                (session, Copies::new(), Vec::new(), false)
            }
        };
        // Every record this session lacks, oldest first, before any newer message [CU-3]; the
        // ones it is owed among them [CU-4].
        let has: BTreeSet<u64> = copies.values().copied().collect();
        let mut lacking: Vec<(u64, Data)> = self
            .held
            .iter()
            .filter(|(id, _)| !has.contains(id))
            .map(|(id, held)| (*id, held.data.clone()))
            .chain(owed.into_iter().filter(|(id, _)| !has.contains(id)))
            .collect();
        lacking.sort_unstable_by_key(|(id, _)| *id);
        for (id, data) in lacking {
            if let Ok(message) = session.send(data, None, now) {
                copies.insert(message, id);
            }
        }
        let token = rules.digest(session.resume_token());
        self.sessions.insert(
            session.id().to_owned(),
            SessionEntry {
                token,
                previous,
                claimed_by: ticket,
                slot: Slot::Live {
                    holder,
                    cursor: self.last_record,
                    dropped: Vec::new(),
                    owed: Vec::new(),
                    saved: Kept::of(&session, &copies),
                },
            },
        );
        Attach::Ready {
            session: Box::new(session),
            copies,
            resumed,
        }
    }

    /// Below the per-user session bound, ending the user's detached session closest to the end
    /// of its resume window if needed; `false` when every session of the user is live [SE-6].
    fn make_room_for_session(
        &mut self,
        rules: &Rules,
        user: &UserId,
        events: &mut VecDeque<HubEvent>,
    ) -> bool {
        while self.sessions.len() >= rules.limits.max_sessions_per_user {
            let oldest = self
                .sessions
                .iter()
                .filter_map(|(id, entry)| match &entry.slot {
                    Slot::Detached { expires_at, .. } => Some((*expires_at, id.clone())),
                    Slot::Live { .. } => None,
                })
                .min();
            let Some((_, id)) = oldest else {
                return false;
            };
            events.push_back(HubEvent::LimitRefused("sessions_per_user_evicted"));
            info!(user = ?user.as_str(), session = %id, "too many sessions: ended the oldest detached one");
            self.sessions.remove(&id);
        }
        true
    }

    /// What the live session on `holder` takes: the records after its cursor, those it is
    /// owed, and the drops since.
    pub fn take_new(&mut self, holder: &Holder) -> Taken {
        let Some((cursor, dropped, owed)) =
            self.sessions
                .values_mut()
                .find_map(|entry| match &mut entry.slot {
                    Slot::Live {
                        holder: h,
                        cursor,
                        dropped,
                        owed,
                        ..
                    } if h == holder => Some((cursor, dropped, owed)),
                    _ => None,
                })
        else {
            return Taken::default();
        };
        let mut records: Vec<(u64, Data)> = self
            .held
            .range(*cursor + 1..)
            .map(|(id, held)| (*id, held.data.clone()))
            .collect();
        if !owed.is_empty() {
            records.append(owed);
            records.sort_unstable_by_key(|(id, _)| *id);
        }
        if let Some((last, _)) = records.last() {
            *cursor = (*cursor).max(*last);
        }
        Taken {
            records,
            dropped: std::mem::take(dropped),
        }
    }

    /// A session's copy of record `held` ended with `outcome`. An acknowledgement, or a refusal
    /// for good, ends custody [CU-1]; any other outcome leaves the record held [CU-2].
    pub fn copy_settled(
        &mut self,
        rules: &Rules,
        user: &UserId,
        held: u64,
        outcome: &Outcome,
        events: &mut VecDeque<HubEvent>,
    ) {
        match outcome {
            Outcome::Acked => {}
            Outcome::Refused { code, .. } => {
                if !self.held.contains_key(&held) {
                    return;
                }
                warn!(user = ?user.as_str(), held, code = ?code, "the client refused a published message for good");
                events.push_back(HubEvent::MailboxDropped {
                    reason: "refused",
                    count: 1,
                });
            }
            _ => return,
        }
        let Some(record) = self.held.remove(&held) else {
            return;
        };
        self.log_removed(held);
        self.bytes -= record.data.len();
        // The copies queued on the other sessions stay [CU-4], within each session's bounds.
        let bound = rules.protocol.outbox.max_messages;
        for entry in self.sessions.values_mut() {
            match &mut entry.slot {
                Slot::Live { cursor, owed, .. } if *cursor < held && owed.len() < bound => {
                    owed.push((held, record.data.clone()));
                }
                Slot::Detached { kept, owed, .. }
                    if !kept.holds(held) && owed.len() + kept.records.len() < bound =>
                {
                    owed.push((held, record.data.clone()));
                }
                _ => {}
            }
        }
    }

    /// Keeps what the live session on `holder` stands at, so that another instance can resume
    /// it should this one die [RS-1, RS-4]; `Fenced` when the session is no longer this
    /// connection's.
    pub fn save(&mut self, holder: &Holder, session_id: &str, kept: Kept) -> Saved {
        match self
            .sessions
            .get_mut(session_id)
            .map(|entry| &mut entry.slot)
        {
            Some(Slot::Live {
                holder: h, saved, ..
            }) if h == holder => {
                *saved = kept;
                Saved::Done
            }
            _ => Saved::Fenced,
        }
    }

    /// Whether the session `session_id` is live on `holder`.
    pub fn carries(&self, holder: &Holder, session_id: &str) -> bool {
        matches!(
            self.sessions.get(session_id).map(|entry| &entry.slot),
            Some(Slot::Live { holder: h, .. }) if h == holder
        )
    }

    /// The connection `holder` carrying `session` ended. `ended` says the client closed the
    /// session on purpose [RS-6]; otherwise it is kept for the resume window [RS-1]. Records it
    /// was woken for and had not taken yet it lacks, so it is given them when resumed [CU-3].
    /// Nothing happens if the session is no longer this connection's.
    #[allow(clippy::too_many_arguments)]
    pub fn detach(
        &mut self,
        rules: &Rules,
        user: &UserId,
        holder: &Holder,
        session: &mut ServerSession,
        copies: &mut Copies,
        ended: bool,
        now: Time,
        events: &mut VecDeque<HubEvent>,
    ) {
        let id = session.id().to_owned();
        if !self.carries(holder, &id) {
            return;
        }
        let taken = self.take_new(holder);
        let withdrawn = withdraw_from(session, copies, &taken.dropped);
        if withdrawn > 0 {
            events.push_back(HubEvent::CopiesWithdrawn(withdrawn));
        }
        if ended {
            debug!(user = ?user.as_str(), session = %id, "session ended by its client");
            self.sessions.remove(&id);
            return;
        }
        let kept = Kept::of(session, copies);
        // Copies queued and not transmitted stay owed where custody ended elsewhere; the ones
        // the mailbox still holds it is given again when resumed [CU-4].
        let unsent = session
            .untransmitted()
            .filter_map(|(message, data)| copies.get(&message).map(|held| (*held, data.clone())));
        let mut owed: Vec<(u64, Data)> = unsent
            .chain(taken.records)
            .filter(|(held, _)| !self.held.contains_key(held) && !kept.holds(*held))
            .collect();
        owed.sort_unstable_by_key(|(held, _)| *held);
        owed.dedup_by_key(|(held, _)| *held);
        if let Some(entry) = self.sessions.get_mut(&id) {
            entry.slot = Slot::Detached {
                kept,
                owed,
                expires_at: now + rules.protocol.resume_window,
            };
        }
    }

    /// Ends sessions whose resume window passed, keeps for resume the sessions of instances
    /// that `alive` says are gone [RS-1], and expires held messages whose time-to-live passed
    /// while the user has no session [CU-5]. Returns how many messages expired.
    pub fn sweep(
        &mut self,
        rules: &Rules,
        user: &UserId,
        now: Time,
        alive: &dyn Fn(&str) -> bool,
        events: &mut VecDeque<HubEvent>,
    ) -> usize {
        let window = rules.protocol.resume_window;
        for entry in self.sessions.values_mut() {
            if let Slot::Live { holder, .. } = &entry.slot {
                if !alive(&holder.instance) {
                    info!(user = ?user.as_str(), instance = ?holder.instance, "a session's instance is gone: kept for resume");
                    release_slot(entry, now + window);
                }
            }
        }
        self.sessions.retain(|id, entry| match &entry.slot {
            Slot::Detached { expires_at, .. } if *expires_at <= now => {
                debug!(user = ?user.as_str(), session = %id, "resume window passed");
                false
            }
            _ => true,
        });
        if !self.sessions.is_empty() {
            return 0;
        }
        let before = self.held.len();
        let mut bytes = 0;
        let mut gone = Vec::new();
        self.held.retain(|id, held| {
            let keep = held.expires_at > now;
            if !keep {
                bytes += held.data.len();
                gone.push(*id);
            }
            keep
        });
        self.bytes -= bytes;
        for id in gone {
            self.log_removed(id);
        }
        let expired = before - self.held.len();
        if expired > 0 {
            info!(user = ?user.as_str(), expired, "held messages expired before any session took them");
            events.push_back(HubEvent::MailboxDropped {
                reason: "expired",
                count: expired,
            });
        }
        expired
    }
}

/// A live session whose connection is gone without detaching (its instance died): kept for
/// resume as last saved. It lacks whatever it took after that; it is given those again.
fn release_slot(entry: &mut SessionEntry, expires_at: Time) {
    if let Slot::Live { saved, owed, .. } = &mut entry.slot {
        entry.slot = Slot::Detached {
            kept: saved.clone(),
            owed: std::mem::take(owed),
            expires_at,
        };
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
    use std::time::Duration;

    use super::*;
    use crate::{HubLimits, MailboxLimits};

    /// A stored digest reads back as the same digest, and text that is not one is refused.
    #[test]
    fn a_token_digest_is_stored_as_hex_and_read_back() {
        let digest = TokenDigest(std::array::from_fn(|at| (at * 37) as u8));
        let text = serde_json::to_string(&digest).expect("serializes");
        assert_eq!(text.len(), 66, "64 hex digits in quotes: {text}");
        let back: TokenDigest = serde_json::from_str(&text).expect("reads back");
        assert!(back == digest);
        for bad in ["\"00\"", &text.replace('0', "g"), "[1,2]"] {
            assert!(
                serde_json::from_str::<TokenDigest>(bad).is_err(),
                "{bad} refused"
            );
        }
    }

    /// Not a cryptographic hash: the tests need only that distinct short tokens differ.
    fn digest(bytes: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in bytes.iter().enumerate() {
            out[i % 32] ^= byte.wrapping_add((i / 32) as u8);
        }
        out
    }

    fn rules() -> Rules {
        Rules {
            protocol: ServerConfig::default(),
            limits: HubLimits {
                mailbox: MailboxLimits::default(),
                max_held_bytes: usize::MAX,
                max_sessions_per_user: 16,
            },
            digest,
        }
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

    fn holder(instance: &str, conn: u64) -> Holder {
        Holder::new(instance, conn)
    }

    fn attach(
        record: &mut UserRecord,
        resume: Option<&Resume>,
        at: Holder,
        n: u8,
        now: Time,
        ticket: &mut Option<u64>,
        alive: &dyn Fn(&str) -> bool,
    ) -> Attach {
        let user = UserId::new("alice");
        let mut events = VecDeque::new();
        record.attach(
            &rules(),
            &user,
            resume,
            at,
            fresh(n),
            now,
            ticket,
            alive,
            &mut events,
        )
    }

    fn publish(record: &mut UserRecord, text: &str, now: Time) -> VecDeque<HubEvent> {
        let mut events = VecDeque::new();
        let data = Data::from_json(format!("\"{text}\"")).expect("JSON");
        record
            .publish(&rules(), &UserId::new("alice"), data, now, &mut events)
            .expect("room");
        events
    }

    fn added_ids(changes: &HeldChanges<'_>) -> Vec<u64> {
        changes.added.iter().map(|(id, _, _)| *id).collect()
    }

    /// What a store that writes held messages apart is told a change did: the messages added
    /// since the mark and the ones gone, whichever way they went (settled, dropped to make room,
    /// expired), and nothing about those untouched or added and gone within the change.
    #[test]
    fn held_changes_name_what_a_change_added_and_removed() {
        let user = UserId::new("alice");
        let mut record = UserRecord::default();
        assert!(record.held_changes().is_none(), "no mark, no changes");
        for text in ["a", "b", "c", "d"] {
            publish(&mut record, text, Time::from_millis(0));
        }
        record.mark_held();
        let changes = record.held_changes().expect("marked");
        assert!(changes.removed.is_empty() && changes.added.is_empty());

        let mut events = VecDeque::new();
        record.copy_settled(&rules(), &user, 2, &Outcome::Acked, &mut events);
        publish(&mut record, "e", Time::from_millis(0));
        publish(&mut record, "f", Time::from_millis(0));
        // Added and settled within the change: never written, so nothing to remove.
        record.copy_settled(&rules(), &user, 6, &Outcome::Acked, &mut events);
        let changes = record.held_changes().expect("marked");
        assert_eq!(changes.removed, vec![2]);
        assert_eq!(added_ids(&changes), vec![5]);

        // Dropped to make room for a new one.
        let mut tight = rules();
        tight.limits.mailbox.max_messages = record.held_len();
        tight.limits.mailbox.overflow = OverflowPolicy::DropOldest;
        record.mark_held();
        let data = Data::from_json("\"g\"").expect("JSON");
        record
            .publish(&tight, &user, data, Time::from_millis(0), &mut events)
            .expect("room made");
        let changes = record.held_changes().expect("marked");
        assert_eq!(changes.removed, vec![1]);
        assert_eq!(added_ids(&changes), vec![7]);

        // Expired while the user has no session.
        record.mark_held();
        let later = Time::from_millis(0) + rules().limits.mailbox.ttl + Duration::from_millis(1);
        record.sweep(&rules(), &user, later, &|_| true, &mut events);
        let changes = record.held_changes().expect("marked");
        assert_eq!(changes.removed, vec![3, 4, 5, 7]);
        assert!(changes.added.is_empty());
        assert_eq!(record.held_len(), 0);
    }

    fn resume_of(session: &ServerSession) -> Resume {
        Resume {
            session_id: session.id().to_owned(),
            resume_token: session.resume_token().clone(),
            last_received: 0,
        }
    }

    const ALL_ALIVE: &dyn Fn(&str) -> bool = &|_| true;

    /// [CU-4] A message published while two sessions are live is queued on both: when one
    /// acknowledges it before the other has taken its copy, the other still gets it, once.
    #[test]
    fn a_live_sessions_copy_survives_another_sessions_ack() {
        let mut record = UserRecord::default();
        for conn in [1, 2] {
            let attached = attach(
                &mut record,
                None,
                holder("i", conn),
                conn as u8,
                Time::ZERO,
                &mut None,
                ALL_ALIVE,
            );
            assert!(matches!(attached, Attach::Ready { resumed: false, .. }));
        }
        let woken: Vec<HubEvent> = publish(&mut record, "m", Time::ZERO)
            .into_iter()
            .filter(|event| matches!(event, HubEvent::Wake(_)))
            .collect();
        assert_eq!(woken.len(), 2, "both live sessions are woken: {woken:?}");
        let taken = record.take_new(&holder("i", 1));
        let [(held, _)] = taken.records.as_slice() else {
            panic!("the first session takes one record");
        };
        let mut events = VecDeque::new();
        let user = UserId::new("alice");
        record.copy_settled(&rules(), &user, *held, &Outcome::Acked, &mut events);
        assert_eq!(record.held_len(), 0, "custody ended");
        let late = record.take_new(&holder("i", 2));
        let ids: Vec<u64> = late.records.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [*held], "the second session still gets its copy");
        assert!(record.take_new(&holder("i", 2)).records.is_empty(), "once");
    }

    /// [RS-9] Two `hello`s resume one live session at once: the later one gets it, and the
    /// earlier one never does, even when it retries first once the session is free.
    #[test]
    fn a_later_hello_wins_the_session() {
        let mut record = UserRecord::default();
        let first = holder("i", 1);
        let Attach::Ready {
            mut session,
            mut copies,
            ..
        } = attach(
            &mut record,
            None,
            first.clone(),
            1,
            Time::ZERO,
            &mut None,
            ALL_ALIVE,
        )
        else {
            panic!("a new session");
        };
        let resume = resume_of(&session);
        let (mut earlier, mut later) = (None, None);
        let now = Time::from_millis(10);
        let asked = attach(
            &mut record,
            Some(&resume),
            holder("i", 2),
            2,
            now,
            &mut earlier,
            ALL_ALIVE,
        );
        assert!(matches!(asked, Attach::TakeOver { holder } if holder == first));
        let asked = attach(
            &mut record,
            Some(&resume),
            holder("i", 3),
            3,
            now,
            &mut later,
            ALL_ALIVE,
        );
        assert!(matches!(asked, Attach::TakeOver { holder } if holder == first));
        // The first connection surrenders: the session is kept for resume.
        let mut events = VecDeque::new();
        let user = UserId::new("alice");
        record.detach(
            &rules(),
            &user,
            &first,
            &mut session,
            &mut copies,
            false,
            now,
            &mut events,
        );
        let retried = attach(
            &mut record,
            Some(&resume),
            holder("i", 2),
            2,
            now,
            &mut earlier,
            ALL_ALIVE,
        );
        assert!(matches!(retried, Attach::Superseded));
        let retried = attach(
            &mut record,
            Some(&resume),
            holder("i", 3),
            3,
            now,
            &mut later,
            ALL_ALIVE,
        );
        assert!(matches!(retried, Attach::Ready { resumed: true, .. }));
    }

    /// [RS-7] [RS-1] A session live on an instance that is gone is taken as that instance last
    /// saved it: the resume succeeds at once, and the session is given every held record.
    #[test]
    fn a_session_on_an_instance_that_is_gone_resumes_as_last_saved() {
        let mut record = UserRecord::default();
        let Attach::Ready { session, .. } = attach(
            &mut record,
            None,
            holder("dead", 1),
            1,
            Time::ZERO,
            &mut None,
            ALL_ALIVE,
        ) else {
            panic!("a new session");
        };
        publish(&mut record, "m", Time::ZERO);
        let only_live: &dyn Fn(&str) -> bool = &|instance| instance == "live";
        let resumed = attach(
            &mut record,
            Some(&resume_of(&session)),
            holder("live", 7),
            2,
            Time::from_millis(5),
            &mut None,
            only_live,
        );
        let Attach::Ready {
            copies, resumed, ..
        } = resumed
        else {
            panic!("resumed on the live instance, got {resumed:?}");
        };
        assert!(resumed);
        assert_eq!(
            copies.values().copied().collect::<Vec<_>>(),
            record.held_ids()
        );
    }

    /// [CU-5] A held message whose time-to-live passed stays while its user has a session,
    /// even one only kept for resume, and expires once the user has none.
    #[test]
    fn a_message_expires_only_while_its_user_has_no_session() {
        let rules = rules();
        let user = UserId::new("alice");
        let mut record = UserRecord::default();
        let at = holder("i", 1);
        let Attach::Ready {
            mut session,
            mut copies,
            ..
        } = attach(
            &mut record,
            None,
            at.clone(),
            1,
            Time::ZERO,
            &mut None,
            ALL_ALIVE,
        )
        else {
            panic!("a new session");
        };
        publish(&mut record, "m", Time::ZERO);
        let mut events = VecDeque::new();
        let past_ttl = Time::ZERO + rules.limits.mailbox.ttl + Duration::from_secs(1);
        record.detach(
            &rules,
            &user,
            &at,
            &mut session,
            &mut copies,
            false,
            past_ttl,
            &mut events,
        );
        record.sweep(&rules, &user, past_ttl, ALL_ALIVE, &mut events);
        assert_eq!(
            record.held_len(),
            1,
            "kept for resume: the session holds a copy"
        );
        let lapsed = past_ttl + rules.protocol.resume_window;
        assert_eq!(record.deadline(), Some(lapsed));
        assert_eq!(
            record.sweep(&rules, &user, lapsed, ALL_ALIVE, &mut events),
            1
        );
        assert!(
            record.is_empty(),
            "the window passed: the message expired with it"
        );
    }

    /// Distinct users' records never mix: a publish wakes the live sessions of its user's
    /// record, each once.
    #[test]
    fn a_publish_wakes_each_live_session_of_the_record_once() {
        let mut record = UserRecord::default();
        for conn in [1, 2, 3] {
            attach(
                &mut record,
                None,
                holder("i", conn),
                conn as u8,
                Time::ZERO,
                &mut None,
                ALL_ALIVE,
            );
        }
        let woken: BTreeSet<u64> = publish(&mut record, "m", Time::ZERO)
            .into_iter()
            .filter_map(|event| match event {
                HubEvent::Wake(holder) => Some(holder.conn),
                _ => None,
            })
            .collect();
        assert_eq!(woken, BTreeSet::from([1, 2, 3]));
    }
}
