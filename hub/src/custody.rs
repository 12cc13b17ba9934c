//! One instance's custody state in memory: a [`UserRecord`] per user (whose methods hold every
//! rule, `record.rs`), the one bound across users (held bytes), and the index of deadlines that
//! keeps a sweep to what is due. A live session is not sent its copies: it is woken
//! ([`HubEvent::Wake`]), and takes every record after its cursor ([`Hub::take_new`]), so a
//! connection that stops reading holds nothing the mailbox does not hold already, and publishing
//! never waits for it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use readyws_protocol::frame::Resume;
use readyws_protocol::{Data, MessageId, Outcome, ResumeToken, ServerSession, Time};
use tracing::warn;

use crate::record::{Holder, Rules, UserRecord};
use crate::{MailboxLimits, PublishReport, Refusal, UserId};

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

impl HubLimits {
    /// Whether a message of `size` bytes fits beside the `held_bytes` held for all users: past
    /// the bound a publish is refused, and no other message is dropped for it [CU-5].
    pub fn admit_server_wide(&self, held_bytes: usize, size: usize) -> Result<(), Refusal> {
        if held_bytes.saturating_add(size) > self.max_held_bytes {
            return Err(Refusal::ServerFull {
                held_bytes,
                limit: self.max_held_bytes,
            });
        }
        Ok(())
    }
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
    Wake(Holder),
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
        holder: Holder,
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

/// Users, their sessions and their held messages: one instance's whole custody state, a
/// [`UserRecord`] per user with the indexes a sweep needs. Each call changes one user's record
/// through the record's rules; this type adds the one bound across users (held bytes) and the
/// deadline index.
#[derive(Debug)]
pub struct Hub {
    rules: Rules,
    instance: String,
    users: HashMap<UserId, UserRecord>,
    /// Users by their record's deadline, so that a sweep costs what is due.
    deadlines: BTreeSet<(Time, UserId)>,
    held_total: usize,
    held_bytes: usize,
    /// The newest record id of any user: a user's record forgotten and made again continues
    /// after it.
    last_record: u64,
    events: VecDeque<HubEvent>,
}

impl Hub {
    /// An empty hub following `rules`.
    pub fn new(rules: Rules) -> Self {
        Hub {
            rules,
            instance: String::new(),
            users: HashMap::new(),
            deadlines: BTreeSet::new(),
            held_total: 0,
            held_bytes: 0,
            last_record: 0,
            events: VecDeque::new(),
        }
    }

    /// The rules the hub follows.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The next thing the driver must do or count.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }

    fn holder(&self, conn: ConnId) -> Holder {
        Holder::new(self.instance.clone(), conn)
    }

    /// Messages held for `user` (acknowledged by no session yet).
    pub fn mailbox_depth(&self, user: &UserId) -> usize {
        self.users.get(user).map_or(0, UserRecord::held_len)
    }

    /// The records held for `user` (in custody: acknowledged by no session yet), oldest first.
    pub fn held_ids(&self, user: &UserId) -> Vec<u64> {
        self.users
            .get(user)
            .map_or_else(Vec::new, UserRecord::held_ids)
    }

    /// Runs `change` on the record of `user`, then brings the totals and the deadline index up
    /// to date, and forgets a record left empty.
    fn with_user<R>(
        &mut self,
        user: &UserId,
        change: impl FnOnce(&mut UserRecord, &Rules, &mut VecDeque<HubEvent>) -> R,
    ) -> R {
        let last_record = self.last_record;
        let record = self
            .users
            .entry(user.clone())
            .or_insert_with(|| UserRecord::continuing_after(last_record));
        let (len, bytes, deadline) = (record.held_len(), record.held_bytes(), record.deadline());
        let result = change(record, &self.rules, &mut self.events);
        let (new_len, new_bytes, new_deadline) =
            (record.held_len(), record.held_bytes(), record.deadline());
        self.last_record = self.last_record.max(record.last_record());
        if record.is_empty() {
            self.users.remove(user);
        }
        if deadline != new_deadline {
            if let Some(at) = deadline {
                self.deadlines.remove(&(at, user.clone()));
            }
            if let Some(at) = new_deadline {
                self.deadlines.insert((at, user.clone()));
            }
        }
        if (len, bytes) != (new_len, new_bytes) {
            self.held_total = self.held_total + new_len - len;
            self.held_bytes = self.held_bytes + new_bytes - bytes;
            self.events.push_back(HubEvent::MailboxDepth {
                messages: self.held_total,
                bytes: self.held_bytes,
            });
        }
        result
    }

    /// Accepts a message for `user`: recorded in the mailbox, owed to every session of the user,
    /// and every live one woken to take it [CU-4]. Past the held bytes of the whole server the
    /// publish is refused; no other message is dropped for it [CU-5].
    pub fn publish(
        &mut self,
        user: &UserId,
        data: Data,
        now: Time,
    ) -> Result<PublishReport, Refusal> {
        if let Err(refusal) = self
            .rules
            .limits
            .admit_server_wide(self.held_bytes, data.len())
        {
            self.events.push_back(HubEvent::LimitRefused("held_bytes"));
            warn!(user = ?user.as_str(), held_bytes = self.held_bytes, "server-wide held bytes full: publish refused");
            return Err(refusal);
        }
        self.with_user(user, |record, rules, events| {
            record.publish(rules, user, data, now, events)
        })
    }

    /// Attaches connection `conn` of `user` to a session ([`UserRecord::attach`]).
    pub fn attach(
        &mut self,
        user: &UserId,
        resume: Option<&Resume>,
        conn: ConnId,
        fresh: FreshCredentials,
        now: Time,
        ticket: &mut Option<u64>,
    ) -> Attach {
        let holder = self.holder(conn);
        self.with_user(user, |record, rules, events| {
            // One instance: every holder is alive.
            record.attach(
                rules,
                user,
                resume,
                holder,
                fresh,
                now,
                ticket,
                &|_| true,
                events,
            )
        })
    }

    /// What the woken live session on `conn` takes: the records after its cursor and the drops
    /// since.
    pub fn take_new(&mut self, user: &UserId, conn: ConnId) -> Taken {
        let holder = self.holder(conn);
        match self.users.get_mut(user) {
            Some(record) => record.take_new(&holder),
            None => Taken::default(),
        }
    }

    /// A session's copy of record `held` ended with `outcome`.
    pub fn copy_settled(&mut self, user: &UserId, held: u64, outcome: &Outcome) {
        if !self.users.contains_key(user) {
            return;
        }
        self.with_user(user, |record, rules, events| {
            record.copy_settled(rules, user, held, outcome, events);
        });
    }

    /// The connection `conn` carrying `session` ended ([`UserRecord::detach`]).
    pub fn detach(
        &mut self,
        user: &UserId,
        conn: ConnId,
        mut session: ServerSession,
        mut copies: Copies,
        ended: bool,
        now: Time,
    ) {
        if !self.users.contains_key(user) {
            return;
        }
        let holder = self.holder(conn);
        self.with_user(user, |record, rules, events| {
            record.detach(
                rules,
                user,
                &holder,
                &mut session,
                &mut copies,
                ended,
                now,
                events,
            );
        });
    }

    /// Ends sessions whose resume window passed and expires held messages of users with no
    /// session [CU-5]. Costs what is due, whatever the number of users.
    pub fn sweep(&mut self, now: Time) {
        while let Some((at, user)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.with_user(&user, |record, rules, events| {
                record.sweep(rules, &user, now, &|_| true, events)
            });
            debug_assert!(
                self.deadlines
                    .first()
                    .is_none_or(|first| *first != (at, user)),
                "a sweep moves the deadline it was due for"
            );
        }
    }
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
        Hub::new(Rules {
            protocol: readyws_protocol::ServerConfig::default(),
            limits,
            digest: test_digest,
        })
    }

    /// Not a cryptographic hash: the tests need only that distinct short tokens differ.
    pub(crate) fn test_digest(bytes: &[u8]) -> [u8; 32] {
        let mut digest = [0u8; 32];
        for (i, byte) in bytes.iter().enumerate() {
            digest[i % 32] ^= byte.wrapping_add((i / 32) as u8);
        }
        digest
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
        assert!(matches!(asked, Attach::TakeOver { holder } if holder.conn == 1));
        let asked = hub.attach(&alice, Some(&resume), 3, fresh(3), now, &mut later);
        assert!(matches!(asked, Attach::TakeOver { holder } if holder.conn == 1));
        // The first connection surrenders: the session is kept for resume.
        hub.detach(&alice, 1, *session, copies, false, now);
        let retried = hub.attach(&alice, Some(&resume), 2, fresh(2), now, &mut earlier);
        assert!(matches!(retried, Attach::Superseded));
        let retried = hub.attach(&alice, Some(&resume), 3, fresh(3), now, &mut later);
        assert!(matches!(retried, Attach::Ready { resumed: true, .. }));
    }
}
