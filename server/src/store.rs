//! Where users' records live: the [`Store`] trait of storage primitives, and [`MemoryStore`],
//! the embedded default. `RedisStore` (feature `redis`) is the other implementation.
//!
//! A store stores; it decides nothing. Every rule is in the record's methods
//! ([`readyws_hub::UserRecord`]), which the server runs between a [`Store::load`] and a
//! [`Store::commit`]; a store only guarantees that a commit based on an outdated version is
//! refused ([`Commit::Conflict`]), so that two instances changing one user never lose each
//! other's change. Around that: an index of records by deadline (for resume windows and
//! expiry), the instances' leases (so that the sessions of an instance that died can be resumed
//! elsewhere), and notifications between instances (a doorbell only: what a notification says
//! is always also in a record).
//!
//! `docs/ARCHITECTURE.md`, "Writing a store", says what another store must implement and how to
//! run the contract suite (`server/tests/store_contract.rs`) against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use readyws_hub::{UserId, UserRecord};
use readyws_protocol::Time;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::broadcast;

use crate::lock;

/// Why a store could not do what was asked. Nothing was lost: what the store did not confirm
/// is still where it was (with the publisher, or in the client's outbox).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL is not a store's URL, or no connection could be made at start.
    #[error("cannot use the store at {url}: {detail}")]
    Connect {
        /// The URL given, without its password.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The store kept failing (down, restarting, unreachable) through every retry.
    #[error("the store failed {attempts} times in a row during {operation}: {detail}")]
    Unavailable {
        /// What the server was doing.
        operation: &'static str,
        /// How often it tried.
        attempts: u32,
        /// The last error.
        detail: String,
    },
    /// The store answered with something this server did not write: another program, or
    /// another version of readyws, uses the same keys.
    #[error("the store returned an unexpected reply during {operation}: {detail}")]
    BadReply {
        /// What the server was doing.
        operation: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
    /// Other instances changed this user's record every time this one tried.
    #[error("the record of a user changed under every one of {attempts} attempts")]
    Contended {
        /// How often it tried.
        attempts: u32,
    },
}

/// A record as one commit wrote it, and the version that commit replaced: a copy of the record
/// at `previous` is outdated by exactly this one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Written {
    /// The version the commit replaced.
    pub previous: u64,
    /// The record written, with its version.
    pub now: Versioned,
}

/// Versions name records: two writes with the same versions wrote the same record.
impl PartialEq for Written {
    fn eq(&self, other: &Self) -> bool {
        (self.previous, self.now.version) == (other.previous, other.now.version)
    }
}

impl Eq for Written {}

/// A record as loaded, with the version a commit must name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Versioned {
    /// The record; empty for a user the store does not hold.
    pub record: UserRecord,
    /// 0 for a user the store does not hold; it changes at every commit.
    pub version: u64,
}

/// What a commit did.
#[derive(Clone, Debug)]
pub enum Commit {
    /// Written; the record is at this version now (0: the empty record was removed).
    Done(u64),
    /// The record is no longer at the version named: nothing was written. `current` is the
    /// record as it is now when the store could tell it in the same reply (saving the caller a
    /// load), `None` when it could not.
    Conflict {
        /// The record now, with its version.
        current: Option<Versioned>,
    },
}

impl Commit {
    /// Whether the commit was refused.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Commit::Conflict { .. })
    }
}

/// What one instance tells another. A doorbell: the record says the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// The user's record gained something for its live sessions on the instance.
    Wake {
        /// Whose.
        user: UserId,
        /// The record as the waking commit wrote it, when it is small: the woken instance's
        /// next change of the user starts from it instead of a load or a refused commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        written: Option<Box<Written>>,
    },
    /// Another instance resumes the session live on this connection: hand it back [RS-7].
    Surrender {
        /// The connection carrying it.
        conn: u64,
    },
}

/// A commit on its way ([`Store::send_commit`]).
pub struct SentCommit {
    /// The version the record is at once the commit is done; 0 when it removes the record.
    pub version: u64,
    /// What the commit did, as [`Store::commit`] tells it.
    pub answer: BoxFuture<'static, Result<Commit, StoreError>>,
}

impl std::fmt::Debug for SentCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentCommit")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A deadline handed out by [`Store::take_due`]: the user's index entry now says `claimed_until`,
/// so that if this instance dies before it settles the entry, the user comes due again then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// Whose record is due.
    pub user: UserId,
    /// What the index says until [`Store::settle_due`].
    pub claimed_until: Time,
}

/// How many times [`Store::update`] loads again after a conflict before it gives up; between
/// attempts it waits a random time below 1, 2, 4 … up to 64 ms, so that writers contending for
/// one user spread out instead of colliding again.
pub const UPDATE_ATTEMPTS: u32 = 32;
const MAX_CONFLICT_BACKOFF_MS: u64 = 64;

/// The storage a server's instances share. Times are milliseconds on a clock all instances
/// agree on (the server uses the Unix epoch). Every method is one round trip or fewer; none
/// walks all users.
pub trait Store: Send + Sync + 'static {
    /// The record of `user`, with its version.
    fn load<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, Result<Versioned, StoreError>>;

    /// Writes `record` for `user` if the stored version is still `expected` (0: no record
    /// yet); an empty record is removed. The index of deadlines gets `deadline` unless it holds
    /// an earlier one: it may say a record is due before it is, never after. With
    /// `incremental`, `record` was marked ([`UserRecord::mark_held`]) when it was the record at
    /// `expected`: a store that keeps each held message apart then writes only the messages
    /// added and removes only those gone ([`UserRecord::held_changes`]), instead of the whole
    /// record.
    fn commit<'a>(
        &'a self,
        user: &'a UserId,
        expected: u64,
        record: &'a UserRecord,
        deadline: Option<Time>,
        incremental: bool,
    ) -> BoxFuture<'a, Result<Commit, StoreError>>;

    /// Sends a [`commit`](Self::commit) (always incremental) without waiting for its answer,
    /// where the store can: a store whose commits are round trips over one ordered connection
    /// returns the version the commit writes, so that the next change of the same user can start
    /// from this record and be sent behind it, naming that version. If this commit is refused,
    /// so is everything sent behind it: nothing is written on a version that was not. The
    /// commit is on its way once its answer has been polled once. `None` (the default): the
    /// caller commits and waits.
    fn send_commit(
        &self,
        user: &UserId,
        expected: u64,
        record: &UserRecord,
        deadline: Option<Time>,
    ) -> Option<SentCommit> {
        let _ = (user, expected, record, deadline);
        None
    }

    /// Up to `limit` users whose indexed deadline is at or before `now`; their entries now say
    /// `claim_until`.
    fn take_due(
        &self,
        now: Time,
        claim_until: Time,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Due>, StoreError>>;

    /// After the record of a due user was swept: its entry becomes `deadline` (or goes) if it
    /// still says what [`take_due`](Self::take_due) claimed; if a commit moved it meanwhile, it
    /// keeps the earlier of the two.
    fn settle_due<'a>(
        &'a self,
        due: &'a Due,
        deadline: Option<Time>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records that `instance` runs until `until`, and that it carries sessions of `users`.
    fn renew_lease<'a>(
        &'a self,
        instance: &'a str,
        until: Time,
        users: &'a [UserId],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Every instance with a lease, and when it runs out.
    fn leases(&self) -> BoxFuture<'_, Result<BTreeMap<String, Time>, StoreError>>;

    /// The users whose sessions `instance` said it carries.
    fn carried<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<UserId>, StoreError>>;

    /// Forgets `instance`'s lease and what it carried.
    fn forget_instance<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Tells `instance` `notice`. Best effort: a notice may be lost, never invented.
    fn notify<'a>(
        &'a self,
        instance: &'a str,
        notice: &'a Notice,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Tells each instance its notice, in one round trip where the store can.
    fn notify_all<'a>(
        &'a self,
        notices: &'a [(String, Notice)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            for (instance, notice) in notices {
                self.notify(instance, notice).await?;
            }
            Ok(())
        })
    }

    /// The notices for `instance`, until the stream ends (then subscribe again: notices sent
    /// meanwhile may be lost).
    fn subscribe<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Notice>, StoreError>>;

    /// Whether records outlive this process (another instance may resume a session after this
    /// one dies): the server then saves each live session's state as it goes [RS-1].
    fn outlives_instance(&self) -> bool;

    /// Messages and bytes of `data` held for all users, when the store counts them.
    fn held_totals(&self) -> Option<(usize, usize)> {
        None
    }

    /// Runs `change` on the record of `user` and commits the result, starting again from the
    /// current record after a conflict, so `change` must start afresh each time it runs.
    /// `change` returns whether it changed anything: nothing is written when it did not.
    ///
    /// `cached` is the record as this caller last committed it, if it kept it: the update then
    /// starts from it without a load, and if another writer has moved the record on meanwhile,
    /// the commit is refused and the update goes on from the current record. Returns what was
    /// written, to pass as `cached` next time, from a store whose records are copies; `None`
    /// from one that changes them in place, or when nothing was written.
    fn update<'a>(
        &'a self,
        user: &'a UserId,
        cached: Option<Versioned>,
        change: &'a mut (dyn FnMut(&mut UserRecord) -> bool + Send),
    ) -> BoxFuture<'a, Result<Option<Written>, StoreError>> {
        Box::pin(async move {
            let mut backoff_ms = 1;
            let mut conflicts = 0u32;
            let mut next = cached.map(|cached| (cached, true));
            for _ in 0..UPDATE_ATTEMPTS {
                let (
                    Versioned {
                        mut record,
                        version,
                    },
                    from_cache,
                ) = match next.take() {
                    Some(start) => start,
                    None => (self.load(user).await?, false),
                };
                let before = record.deadline();
                record.mark_held();
                if !change(&mut record) {
                    if from_cache {
                        // Nothing to write, so nothing checks the version: what `change` saw
                        // may be outdated. It runs again on the record as it is.
                        continue;
                    }
                    return Ok(None);
                }
                let deadline = moved_deadline(before, record.deadline());
                match self.commit(user, version, &record, deadline, true).await? {
                    Commit::Done(now) => {
                        return Ok(Some(Written {
                            previous: version,
                            now: Versioned {
                                record,
                                version: now,
                            },
                        }));
                    }
                    Commit::Conflict { current } => {
                        crate::metrics::store_conflict();
                        conflicts += 1;
                        // Starting again at once from the record the store just gave suits a
                        // writer that met one other; writers that keep colliding spread out.
                        if !from_cache && (current.is_none() || conflicts > 1) {
                            // Another writer got in between this caller's load and commit:
                            // a short random wait spreads contending writers out.
                            let wait = crate::random_below(backoff_ms * 1000);
                            tokio::time::sleep(std::time::Duration::from_micros(wait)).await;
                            backoff_ms = (backoff_ms * 2).min(MAX_CONFLICT_BACKOFF_MS);
                        }
                        next = current.map(|current| (current, false));
                    }
                }
            }
            Err(StoreError::Contended {
                attempts: UPDATE_ATTEMPTS,
            })
        })
    }
}

/// The deadline a commit must write to the index, for a change that moved the record's deadline
/// from `before` to `after`. The index already says `before` or earlier for the version the
/// change started from (every commit keeps it so), which the commit checks is still current:
/// only a deadline that moved earlier needs writing.
pub(crate) fn moved_deadline(before: Option<Time>, after: Option<Time>) -> Option<Time> {
    match (before, after) {
        (Some(before), Some(after)) if after >= before => None,
        (_, after) => after,
    }
}

#[derive(Debug, Default)]
struct Memory {
    records: HashMap<UserId, (u64, UserRecord)>,
    next_version: u64,
    deadlines: BTreeSet<(Time, UserId)>,
    deadline_of: HashMap<UserId, Time>,
    leases: BTreeMap<String, Time>,
    carried: HashMap<String, BTreeSet<UserId>>,
    held_messages: usize,
    held_bytes: usize,
    /// The newest record id of any user, so that a record forgotten and made again continues
    /// its ids (an id never means two messages).
    last_record: u64,
}

/// What a record holds: messages and bytes of `data`.
fn totals(record: &UserRecord) -> (usize, usize) {
    (record.held_len(), record.held_bytes())
}

impl Memory {
    fn next_version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// Puts `record` at `version` in place of one that held `old`, keeping the totals and the
    /// newest id; an empty record is removed. Returns the version it has now (0: removed).
    fn put(&mut self, user: &UserId, old: (usize, usize), record: UserRecord, version: u64) -> u64 {
        let (messages, bytes) = totals(&record);
        self.held_messages = self.held_messages + messages - old.0;
        self.held_bytes = self.held_bytes + bytes - old.1;
        self.last_record = self.last_record.max(record.last_record());
        if record.is_empty() {
            self.records.remove(user);
            return 0;
        }
        self.records.insert(user.clone(), (version, record));
        version
    }

    fn index(&mut self, user: &UserId, deadline: Option<Time>, only_earlier: bool) {
        let current = self.deadline_of.get(user).copied();
        let next = match (current, deadline) {
            (Some(current), Some(new)) if only_earlier => Some(current.min(new)),
            (Some(current), None) if only_earlier => Some(current),
            (_, new) => new,
        };
        if next == current {
            return;
        }
        if let Some(at) = current {
            self.deadlines.remove(&(at, user.clone()));
            self.deadline_of.remove(user);
        }
        if let Some(at) = next {
            self.deadlines.insert((at, user.clone()));
            self.deadline_of.insert(user.clone(), at);
        }
    }
}

/// The store of a server that runs as one instance: records in this process, changed in place
/// under one lock (no copy, no encoding). Nothing outlives the process.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
    notices: broadcast::Sender<(String, Notice)>,
}

/// How many notices may wait for a slow subscriber before it misses some (and is told so by
/// the end of its stream).
const MEMORY_NOTICE_CAPACITY: usize = 4096;

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            inner: Mutex::new(Memory::default()),
            notices: broadcast::channel(MEMORY_NOTICE_CAPACITY).0,
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, Result<Versioned, StoreError>> {
        let memory = lock(&self.inner);
        let loaded = match memory.records.get(user) {
            Some((version, record)) => Versioned {
                record: record.clone(),
                version: *version,
            },
            None => Versioned {
                record: UserRecord::continuing_after(memory.last_record),
                version: 0,
            },
        };
        Box::pin(async move { Ok(loaded) })
    }

    fn commit<'a>(
        &'a self,
        user: &'a UserId,
        expected: u64,
        record: &'a UserRecord,
        deadline: Option<Time>,
        _incremental: bool,
    ) -> BoxFuture<'a, Result<Commit, StoreError>> {
        let mut memory = lock(&self.inner);
        memory.index(user, deadline, true);
        let (current, old) = memory
            .records
            .get(user)
            .map_or((0, (0, 0)), |(version, record)| (*version, totals(record)));
        let result = if current == expected {
            let version = memory.next_version();
            Commit::Done(memory.put(user, old, record.clone(), version))
        } else {
            Commit::Conflict { current: None }
        };
        Box::pin(async move { Ok(result) })
    }

    fn take_due(
        &self,
        now: Time,
        claim_until: Time,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Due>, StoreError>> {
        let mut memory = lock(&self.inner);
        let due: Vec<UserId> = memory
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, user)| user.clone())
            .collect();
        for user in &due {
            memory.index(user, Some(claim_until), false);
        }
        let due = due
            .into_iter()
            .map(|user| Due {
                user,
                claimed_until: claim_until,
            })
            .collect();
        Box::pin(async move { Ok(due) })
    }

    fn settle_due<'a>(
        &'a self,
        due: &'a Due,
        deadline: Option<Time>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut memory = lock(&self.inner);
        let current = memory.deadline_of.get(&due.user).copied();
        if current == Some(due.claimed_until) {
            memory.index(&due.user, deadline, false);
        } else {
            memory.index(&due.user, deadline, true);
        }
        Box::pin(async { Ok(()) })
    }

    fn renew_lease<'a>(
        &'a self,
        instance: &'a str,
        until: Time,
        users: &'a [UserId],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut memory = lock(&self.inner);
        memory.leases.insert(instance.to_owned(), until);
        memory
            .carried
            .entry(instance.to_owned())
            .or_default()
            .extend(users.iter().cloned());
        Box::pin(async { Ok(()) })
    }

    fn leases(&self) -> BoxFuture<'_, Result<BTreeMap<String, Time>, StoreError>> {
        let leases = lock(&self.inner).leases.clone();
        Box::pin(async move { Ok(leases) })
    }

    fn carried<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<UserId>, StoreError>> {
        let users = lock(&self.inner)
            .carried
            .get(instance)
            .map(|users| users.iter().cloned().collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(users) })
    }

    fn forget_instance<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut memory = lock(&self.inner);
        memory.leases.remove(instance);
        memory.carried.remove(instance);
        Box::pin(async { Ok(()) })
    }

    fn notify<'a>(
        &'a self,
        instance: &'a str,
        notice: &'a Notice,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        // No subscriber: nobody to tell, which a doorbell allows.
        let _ = self.notices.send((instance.to_owned(), notice.clone()));
        Box::pin(async { Ok(()) })
    }

    fn subscribe<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Notice>, StoreError>> {
        let receiver = self.notices.subscribe();
        let instance = instance.to_owned();
        // A subscriber that fell behind sees its stream end, and subscribes again.
        let stream = futures_util::stream::unfold(receiver, move |mut receiver| {
            let instance = instance.clone();
            async move {
                loop {
                    match receiver.recv().await {
                        Ok((to, notice)) if to == instance => return Some((notice, receiver)),
                        Ok(_) => {}
                        Err(_) => return None,
                    }
                }
            }
        });
        Box::pin(async move { Ok(Box::pin(stream) as BoxStream<'static, Notice>) })
    }

    fn outlives_instance(&self) -> bool {
        false
    }

    fn held_totals(&self) -> Option<(usize, usize)> {
        let memory = lock(&self.inner);
        Some((memory.held_messages, memory.held_bytes))
    }

    /// In place under the lock: no copy of the record, and no conflict to retry.
    fn update<'a>(
        &'a self,
        user: &'a UserId,
        _cached: Option<Versioned>,
        change: &'a mut (dyn FnMut(&mut UserRecord) -> bool + Send),
    ) -> BoxFuture<'a, Result<Option<Written>, StoreError>> {
        let mut memory = lock(&self.inner);
        let memory = &mut *memory;
        let last_record = memory.last_record;
        let (version, mut record) = memory
            .records
            .remove(user)
            .unwrap_or_else(|| (0, UserRecord::continuing_after(last_record)));
        let old = totals(&record);
        let changed = change(&mut record);
        let deadline = record.deadline();
        let version = if changed {
            memory.next_version()
        } else {
            version
        };
        memory.put(user, old, record, version);
        if changed {
            // Atomic here, so the index can be exact.
            memory.index(user, deadline, false);
        }
        Box::pin(async { Ok(None) })
    }
}
