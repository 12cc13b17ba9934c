//! The driver of the rules across connections: it runs the records' methods
//! ([`readyws_hub::UserRecord`]) inside [`Store::update`], and carries out what they ask —
//! wake a connection task here or on another instance, ask a connection to hand its session
//! over, count a bound that bit. It decides nothing, and never asks which store it drives.
//! It owns what a sans-IO core cannot: the random generator for fresh credentials, the clock,
//! the lease of this instance, and the tasks of the connections it carries.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use readyws_hub::{
    FreshCredentials, Holder, HubEvent, HubLimits, Kept, Leases, Rules, Saved, UserRecord,
};
use readyws_protocol::frame::Resume;
use readyws_protocol::{Data, Outcome, ResumeToken, ServerConfig, ServerSession, Time};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::auth::UserId;
use crate::metrics as m;
use crate::options::Limits;
use crate::store::{
    Commit, Due, Notice, SentCommit, Store, StoreError, Versioned, Written, moved_deadline,
};
use crate::{PublishError, PublishReport, Shared, lock};

pub(crate) use readyws_hub::{Copies, Taken};

/// An instance's lease: renewed every [`HEARTBEAT`], so an instance that stopped renewing it for
/// this long is gone, and its sessions can be resumed elsewhere.
pub(crate) const LEASE: Duration = Duration::from_secs(3);
/// How often an instance whose store outlives it renews its lease and sweeps.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often an instance whose store dies with it sweeps.
const LOCAL_SWEEP: Duration = Duration::from_millis(100);
/// How long a due record stays claimed by the instance sweeping it: if that instance dies
/// meanwhile, the record comes due again then.
const SWEEP_CLAIM: Duration = Duration::from_secs(5);
/// The most due records one sweep takes at a time.
const SWEEP_BATCH: usize = 256;
/// The most detaches kept for a retry while the store fails; past it a session stays marked
/// live on this instance until the instance's lease runs out or its client resumes it.
pub(crate) const MAX_PENDING_DETACHES: usize = 10_000;

/// The most bytes of held messages a record may have to travel in a wake-up notice.
const MAX_RECORD_IN_NOTICE: usize = 16 * 1024;

/// Whether `record` is small enough to travel in a wake-up notice ([`MAX_RECORD_IN_NOTICE`]).
fn travels_in_notice(record: &UserRecord) -> bool {
    record.held_bytes() <= MAX_RECORD_IN_NOTICE
}

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

/// Who carries the session an attach asked for.
#[derive(Debug)]
pub(crate) enum Carrier {
    /// A connection of this instance.
    Local(ConnHandle),
    /// A connection of another instance, asked by a notice.
    Remote,
    /// A connection that is ending: it gives the session back by itself.
    Ending,
}

/// The outcome of [`Custody::attach`].
pub(crate) enum Attach {
    /// The connection may become ready with this session, whose outbox already holds copies of
    /// every mailbox record it lacked, oldest first.
    Ready {
        session: Box<ServerSession>,
        copies: Copies,
        resumed: bool,
    },
    /// The session is live on another connection, asked to hand it over: attach again.
    TakeOver(Carrier),
    /// A later `hello` claimed the session [RS-9].
    Superseded,
    /// The user has as many sessions as allowed, every one of them live.
    TooManySessions { limit: usize },
}

/// A session given back by its connection: kept for resume, or ended ([`Custody::detach`]).
pub(crate) struct Detach {
    pub(crate) user: UserId,
    pub(crate) conn: u64,
    pub(crate) session: ServerSession,
    pub(crate) copies: Copies,
    /// Copies that ended since the store was last told.
    pub(crate) settled: Vec<(u64, Outcome)>,
    /// The client ended the session [RS-6].
    pub(crate) ended: bool,
}

#[derive(Default)]
struct Local {
    /// The live sessions' connection tasks, by connection.
    handles: HashMap<u64, (UserId, ConnHandle)>,
    /// The same connections by user, for a notice that names a user.
    by_user: HashMap<UserId, BTreeSet<u64>>,
    /// Users with a live session here whose record the store was told this instance carries;
    /// a user leaves it with its last connection here, so it is bounded by the connections.
    announced: BTreeSet<UserId>,
    /// Other instances' leases as last read.
    leases: Leases,
    /// The record of each user with a live session here as this instance last committed it,
    /// from a store whose records are copies: the next change starts from it instead of a
    /// load, and a commit refused because another writer moved on starts again from the
    /// current one. Bounded like `announced`: a user leaves it with its last connection here.
    cache: HashMap<UserId, Versioned>,
    /// Per user with a change running here, the turn the next change of that user waits for:
    /// changes of one user on one instance take turns, so the second starts from the record
    /// the first wrote instead of loading it or meeting it as a conflict. An entry leaves with
    /// the last change that holds or awaits it, so it is bounded by the changes running.
    turns: HashMap<UserId, Arc<tokio::sync::Mutex<()>>>,
    pending: Vec<Detach>,
}

/// A change's turn on its user ([`Local::turns`]); given back when dropped, also when the
/// change is abandoned halfway.
struct UserTurn<'a> {
    local: &'a Mutex<Local>,
    user: &'a UserId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for UserTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut local = lock(self.local);
        // Whoever awaits the turn holds a clone, taken under the same lock as this check.
        if local
            .turns
            .get(self.user)
            .is_some_and(|turn| Arc::strong_count(turn) == 1)
        {
            local.turns.remove(self.user);
        }
    }
}

/// How many notices to other instances may wait to be sent; past it a change sends its own
/// and waits for it (counted as `notice_queue`).
pub(crate) const NOTICE_QUEUE: usize = 4096;
/// The most notices sent in one round trip.
const NOTICE_BATCH: usize = 256;

/// The most publishes to one user that go in one commit.
pub(crate) const MAX_PUBLISH_BATCH: usize = 1024;
/// The most publishes to one user that wait for a commit; past it a publish waits for room
/// (counted as `publish_queue`), so that a burst of publishes is committed in batches rather
/// than one commit each.
pub(crate) const MAX_WAITING_PUBLISHES: usize = 4 * MAX_PUBLISH_BATCH;

/// The publishes to one user waiting for a commit, and how those waiting for room hear of it.
#[derive(Default)]
struct Batches {
    waiting: VecDeque<Waiting>,
    room: Arc<Notify>,
}

/// A publish waiting for the commit of its user's batch.
struct Waiting {
    data: Data,
    reply: oneshot::Sender<Result<PublishReport, PublishError>>,
    /// When it was published: a batch is committed at the time of its oldest publish.
    now: Time,
}

/// How [`Custody::send_change`] left a change.
enum Sent {
    /// Committed; the record written, when small enough to travel in a notice.
    Written(Option<Written>),
    /// Not committed: it runs again, waiting for its commit, from this record if known.
    Wait(Option<Versioned>),
}

/// The rules across connections, over a [`Store`].
pub(crate) struct Custody {
    store: Arc<dyn Store>,
    rules: Rules,
    instance: String,
    local: Mutex<Local>,
    /// Notices on their way to other instances: a change does not wait for the round trip
    /// that tells another instance, only for its commit.
    notices: mpsc::Sender<(String, Notice)>,
    /// Their sender's end, until the background task takes it.
    outbox: Mutex<Option<mpsc::Receiver<(String, Notice)>>>,
    /// Per user with a publish committing, the publishes waiting for the next commit.
    batches: Mutex<HashMap<UserId, Batches>>,
}

impl Custody {
    pub(crate) fn new(store: Arc<dyn Store>, protocol: ServerConfig, limits: Limits) -> Self {
        let limits = HubLimits {
            mailbox: limits.mailbox,
            max_held_bytes: limits.max_held_bytes,
            max_sessions_per_user: limits.max_sessions_per_user,
        };
        let (notices, outbox) = mpsc::channel(NOTICE_QUEUE);
        Custody {
            store,
            notices,
            outbox: Mutex::new(Some(outbox)),
            batches: Mutex::new(HashMap::new()),
            rules: Rules {
                protocol,
                limits,
                digest: sha256,
            },
            // Unique among the instances sharing a store.
            instance: format!("i-{}", &random_token().expose()[..16]),
            local: Mutex::new(Local::default()),
        }
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) fn outlives_instance(&self) -> bool {
        self.store.outlives_instance()
    }

    fn holder(&self, conn: u64) -> Holder {
        Holder::new(self.instance.clone(), conn)
    }

    /// Whether `instance` runs: this one does; another as its lease says ([`Leases::alive`]).
    fn alive_check(&self, now: Time) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let me = self.instance.clone();
        let leases = lock(&self.local).leases.clone();
        move |instance: &str| instance == me || leases.alive(instance, now)
    }

    /// Runs `change` on the record of `user` in the store, then carries out its events.
    async fn change<R: Send>(
        &self,
        user: &UserId,
        mut change: impl FnMut(&mut UserRecord, &Rules, &mut VecDeque<HubEvent>) -> R + Send,
    ) -> Result<R, StoreError> {
        let mut events = VecDeque::new();
        let mut result = None;
        let rules = &self.rules;
        let mut run = |record: &mut UserRecord| {
            events.clear();
            result = Some(change(record, rules, &mut events));
            true
        };
        let written = match self.send_change(user, &mut run).await? {
            Sent::Written(written) => written,
            Sent::Wait(start) => self.change_and_wait(user, start, &mut run).await?,
        };
        self.carry_out(user, events, written).await;
        if let Some((messages, bytes)) = self.store.held_totals() {
            m::mailbox_depth(messages, bytes);
        }
        // `update` ran `change` at least once, or failed.
        Ok(result.expect("the change ran"))
    }

    /// Runs `run` on the cached record of `user` and sends its commit, where the store sends
    /// commits without waiting for them ([`Store::send_commit`]): the turn of the user passes
    /// to the next change as soon as the commit is on its way, and that change starts from the
    /// record this one writes and is sent behind it. So a user's publishes and its
    /// connection's turns do not wait for each other's round trips, and Redis makes one commit
    /// durable with the next. What a change asks for is carried out only once its own commit
    /// is done; if a commit is refused, those sent behind it are too, and each runs again from
    /// the record as it is.
    async fn send_change(
        &self,
        user: &UserId,
        run: &mut (dyn FnMut(&mut UserRecord) -> bool + Send),
    ) -> Result<Sent, StoreError> {
        if !self.store.outlives_instance() {
            return Ok(Sent::Wait(None));
        }
        let turn = self.user_turn(user).await;
        let Some(Versioned {
            mut record,
            version,
        }) = lock(&self.local).cache.remove(user)
        else {
            return Ok(Sent::Wait(None));
        };
        let before = record.deadline();
        record.mark_held();
        // A custody change always writes (its `run` answers `true`).
        run(&mut record);
        let deadline = moved_deadline(before, record.deadline());
        let Some(SentCommit {
            version: next,
            mut answer,
        }) = self.store.send_commit(user, version, &record, deadline)
        else {
            // This store commits a round trip at a time here; the change runs again on the
            // record as loaded.
            return Ok(Sent::Wait(None));
        };
        // Polled once, the commit is on the store's connection, ahead of any sent later.
        let first = std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await;
        let for_notice = travels_in_notice(&record).then(|| Written {
            previous: version,
            now: Versioned {
                record: record.clone(),
                version: next,
            },
        });
        self.keep_cached(
            user,
            Versioned {
                record,
                version: next,
            },
        );
        drop(turn);
        let outcome = match first {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => answer.await,
        };
        if !matches!(outcome, Ok(Commit::Done(_))) {
            // The cached record, or what a later change started from, may never be written:
            // the next change loads.
            lock(&self.local).cache.remove(user);
        }
        match outcome? {
            Commit::Done(_) => Ok(Sent::Written(for_notice)),
            Commit::Conflict { current } => {
                m::store_conflict();
                Ok(Sent::Wait(current))
            }
        }
    }

    /// Runs `run` on the record of `user` and waits for its commit, under the user's turn
    /// where the store's records are copies; `start` is the record as last seen, if known.
    /// Returns the record written when it is small enough to travel in a notice.
    async fn change_and_wait(
        &self,
        user: &UserId,
        start: Option<Versioned>,
        run: &mut (dyn FnMut(&mut UserRecord) -> bool + Send),
    ) -> Result<Option<Written>, StoreError> {
        // A store whose records are copies is slow to read, so changes of one user here take
        // turns; one that keeps its records in this process changes them in place.
        let _turn = if self.store.outlives_instance() {
            Some(self.user_turn(user).await)
        } else {
            None
        };
        // Taken out while the change runs, so that a notice arriving meanwhile does not
        // replace it (`on_notice`).
        let cached = lock(&self.local).cache.remove(user);
        let written = self.store.update(user, start.or(cached), run).await?;
        // The woken instance starts its next change from the record written here, when it is
        // small enough to travel in a notice; a large one only stays in the cache.
        let (for_notice, for_cache) = match written {
            Some(written) if travels_in_notice(&written.now.record) => {
                (Some(written.clone()), Some(written))
            }
            other => (None, other),
        };
        if let Some(written) = for_cache {
            self.keep_cached(user, written.now);
        }
        Ok(for_notice)
    }

    /// Keeps `record` as the one the next change of `user` starts from, for a user with a live
    /// session here ([`Local::cache`]).
    fn keep_cached(&self, user: &UserId, record: Versioned) {
        let mut local = lock(&self.local);
        if local.by_user.contains_key(user) {
            local.cache.insert(user.clone(), record);
        }
    }

    /// Waits for the turn of `user` on this instance ([`Local::turns`]).
    async fn user_turn<'a>(&'a self, user: &'a UserId) -> UserTurn<'a> {
        let turn = lock(&self.local)
            .turns
            .entry(user.clone())
            .or_default()
            .clone();
        let mut held = UserTurn {
            local: &self.local,
            user,
            guard: None,
        };
        held.guard = Some(turn.lock_owned().await);
        held
    }

    /// Carries out a change's events; `written` is the record it wrote, when small enough to go
    /// with the notices.
    async fn carry_out(&self, user: &UserId, events: VecDeque<HubEvent>, written: Option<Written>) {
        let mut remote = BTreeSet::new();
        for event in events {
            match event {
                HubEvent::Wake(holder) if holder.instance == self.instance => {
                    if let Some((_, handle)) = lock(&self.local).handles.get(&holder.conn) {
                        handle.wake();
                    }
                }
                HubEvent::Wake(holder) => {
                    remote.insert(holder.instance);
                }
                HubEvent::LimitRefused(limit) => m::limit_refused(limit),
                HubEvent::MailboxDropped { reason, count } => m::mailbox_dropped(reason, count),
                HubEvent::MailboxDepth { messages, bytes } => m::mailbox_depth(messages, bytes),
                HubEvent::Resume(result) => m::resume(result),
                HubEvent::CopiesWithdrawn(count) => m::copies_withdrawn(count),
            }
        }
        let written = written.map(Box::new);
        for instance in remote {
            let notice = Notice::Wake {
                user: user.clone(),
                written: written.clone(),
            };
            let (instance, notice) = match self.notices.try_send((instance, notice)) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(unsent)) => {
                    m::limit_refused("notice_queue");
                    unsent
                }
                Err(mpsc::error::TrySendError::Closed(unsent)) => unsent,
            };
            if let Err(error) = self.store.notify(&instance, &notice).await {
                // The record holds the message: that instance's connection gets it at its next
                // wake-up, or when it subscribes again.
                warn!(%error, "could not wake a connection on another instance");
            }
        }
    }

    pub(crate) async fn mailbox_depth(&self, user: &UserId) -> Result<usize, StoreError> {
        Ok(self.store.load(user).await?.record.held_len())
    }

    /// Accepts a message for `user` [CU-1, CU-4], within the held bytes of the whole store
    /// where it counts them [CU-5]. Publishes to one user that arrive while one of them is
    /// committing wait and go together in the next commit, in the order they arrived, up to
    /// [`MAX_PUBLISH_BATCH`] a commit; past [`MAX_WAITING_PUBLISHES`] waiting, a publish waits for
    /// room. Had each committed alone, a burst of thousands ran one commit each: on Redis about
    /// 3,000 messages/s at 68 µs of CPU per message; in memory each commit woke the connection
    /// for one message, and the publishers and the connection took turns on one worker thread
    /// (0.22 × 10^6 messages/s to one user, 0.33 × 10^6 batched).
    pub(crate) async fn publish(
        self: &Arc<Self>,
        user: &UserId,
        data: Data,
        now: Time,
    ) -> Result<PublishReport, PublishError> {
        if let Some((_, held_bytes)) = self.store.held_totals() {
            if let Err(refusal) = self.rules.limits.admit_server_wide(held_bytes, data.len()) {
                m::limit_refused("held_bytes");
                warn!(user = ?user.as_str(), held_bytes, "server-wide held bytes full: publish refused");
                return Err(refusal.into());
            }
        }
        let (reply, outcome) = oneshot::channel();
        let waiting = Waiting { data, reply, now };
        loop {
            let room = {
                let mut batches = lock(&self.batches);
                match batches.get_mut(user) {
                    Some(batch) if batch.waiting.len() < MAX_WAITING_PUBLISHES => {
                        batch.waiting.push_back(waiting);
                        break;
                    }
                    // Created under the lock the batch runner takes room under, so its
                    // `notify_waiters` cannot come between.
                    Some(batch) => Arc::clone(&batch.room).notified_owned(),
                    None => {
                        batches.insert(user.clone(), Batches::default());
                        // A commit under way runs to its end even if its publisher stops
                        // waiting: it may carry other publishes of the same user, whose
                        // publishers wait for its outcome. So the commits run in a task of
                        // their own, one task for a whole run of batches rather than one per
                        // publish.
                        tokio::spawn(Arc::clone(self).run_batches(user.clone(), waiting));
                        break;
                    }
                }
            };
            // The queue is full: this publish waits for the runner to take a batch, then tries
            // again, holding its place in no queue meanwhile.
            m::limit_refused("publish_queue");
            room.await;
        }
        // The task was dropped mid-commit (the runtime is stopping): whether the message was
        // written is unknown, which the publisher is told.
        outcome.await.unwrap_or_else(|_| {
            Err(PublishError::Unavailable(StoreError::Unavailable {
                operation: "publish",
                attempts: 1,
                detail: "the commit of this publish was cancelled (the runtime is stopping)"
                    .to_owned(),
            }))
        })
    }

    /// Commits `first` and every publish waiting for `user`, tells each publisher its outcome,
    /// and goes on with the publishes that arrived meanwhile until none wait.
    async fn run_batches(self: Arc<Self>, user: UserId, first: Waiting) {
        let mut next = Some(first);
        loop {
            let waiting: Vec<Waiting> = {
                let mut batches = lock(&self.batches);
                let mut waiting: Vec<Waiting> = next.take().into_iter().collect();
                if let Some(batch) = batches.get_mut(&user) {
                    let taken = batch.waiting.len().min(MAX_PUBLISH_BATCH - waiting.len());
                    waiting.extend(batch.waiting.drain(..taken));
                    batch.room.notify_waiters();
                }
                waiting
            };
            let Some(now) = waiting.first().map(|first| first.now) else {
                // Nothing arrived during the last commit: the batches of this user end, under
                // the same lock a new publish would queue under.
                let mut batches = lock(&self.batches);
                if batches
                    .get(&user)
                    .is_none_or(|batch| batch.waiting.is_empty())
                {
                    batches.remove(&user);
                    return;
                }
                continue;
            };
            let (batch, replies): (Vec<Data>, Vec<_>) = waiting
                .into_iter()
                .map(|Waiting { data, reply, .. }| (data, reply))
                .unzip();
            let results = self.publish_all(&user, batch, now).await;
            for (reply, result) in replies.into_iter().zip(results) {
                // A publisher that stopped waiting is not told; its message went with the rest.
                let _ = reply.send(result);
            }
        }
    }

    /// Accepts `batch` for `user` in one change, each message on its own terms.
    async fn publish_all(
        &self,
        user: &UserId,
        batch: Vec<Data>,
        now: Time,
    ) -> Vec<Result<PublishReport, PublishError>> {
        let published = self
            .change(user, |record, rules, events| {
                batch
                    .iter()
                    .map(|data| record.publish(rules, user, data.clone(), now, events))
                    .collect::<Vec<_>>()
            })
            .await;
        match published {
            Ok(results) => results
                .into_iter()
                .map(|result| result.map_err(PublishError::from))
                .collect(),
            Err(error) => batch
                .iter()
                .map(|_| Err(PublishError::Unavailable(error.clone())))
                .collect(),
        }
    }

    /// Attaches connection `conn` of `user` ([`UserRecord::attach`]); `handle` reaches its task
    /// while its session is live here.
    pub(crate) async fn attach(
        &self,
        user: &UserId,
        resume: Option<&Resume>,
        conn: u64,
        handle: &ConnHandle,
        now: Time,
        ticket: &mut Option<u64>,
    ) -> Result<Attach, StoreError> {
        // Registered before the record says so, so that no wake-up for it is missed.
        self.register(user, conn, handle);
        if self.store.outlives_instance() {
            // Without a record of the user here, the attach starts from none instead of a load:
            // a user who has no record (no session, nothing held) is then attached in one round
            // trip, and one who has gets it back with the refused commit, in the round trip a
            // load would have taken.
            lock(&self.local).cache.entry(user.clone()).or_default();
        }
        let (session_id, token) = fresh_session_credentials();
        let fresh = FreshCredentials {
            session_id,
            token,
            rotated: random_token(),
        };
        let holder = self.holder(conn);
        let alive = self.alive_check(now);
        let mut claimed = *ticket;
        // The store learns that this instance carries the user while the attach commits: both
        // writes are waited for before the session is ready, and their round trips overlap
        // instead of following each other.
        let (announced, attached) = tokio::join!(
            self.announce(user, now),
            self.change(user, |record, rules, events| {
                // A retry after a conflict starts from the ticket the call came with.
                let mut attempt_ticket = *ticket;
                let attached = record.attach(
                    rules,
                    user,
                    resume,
                    holder.clone(),
                    fresh.clone(),
                    now,
                    &mut attempt_ticket,
                    &alive,
                    events,
                );
                claimed = attempt_ticket;
                attached
            })
        );
        *ticket = claimed;
        let attached = match announced.and(attached) {
            Ok(attached) => attached,
            Err(error) => {
                self.unregister(conn);
                return Err(error);
            }
        };
        Ok(match attached {
            readyws_hub::Attach::Ready {
                session,
                copies,
                resumed,
            } => Attach::Ready {
                session,
                copies,
                resumed,
            },
            other => {
                self.unregister(conn);
                match other {
                    readyws_hub::Attach::TakeOver { holder } => {
                        Attach::TakeOver(self.ask_to_surrender(holder).await)
                    }
                    readyws_hub::Attach::TooManySessions { limit } => {
                        Attach::TooManySessions { limit }
                    }
                    _ => Attach::Superseded,
                }
            }
        })
    }

    async fn ask_to_surrender(&self, holder: Holder) -> Carrier {
        if holder.instance == self.instance {
            return match lock(&self.local).handles.get(&holder.conn) {
                Some((_, handle)) => Carrier::Local(handle.clone()),
                None => Carrier::Ending,
            };
        }
        let notice = Notice::Surrender { conn: holder.conn };
        if let Err(error) = self.store.notify(&holder.instance, &notice).await {
            warn!(%error, "could not ask another instance to hand a session over");
        }
        Carrier::Remote
    }

    /// Tells the store once that this instance carries sessions of `user`, so that they are
    /// found should it die.
    async fn announce(&self, user: &UserId, now: Time) -> Result<(), StoreError> {
        if !self.store.outlives_instance() || lock(&self.local).announced.contains(user) {
            return Ok(());
        }
        self.store
            .renew_lease(&self.instance, now + LEASE, std::slice::from_ref(user))
            .await?;
        lock(&self.local).announced.insert(user.clone());
        Ok(())
    }

    fn register(&self, user: &UserId, conn: u64, handle: &ConnHandle) {
        let mut local = lock(&self.local);
        local.handles.insert(conn, (user.clone(), handle.clone()));
        local.by_user.entry(user.clone()).or_default().insert(conn);
    }

    fn unregister(&self, conn: u64) {
        let mut local = lock(&self.local);
        if let Some((user, _)) = local.handles.remove(&conn) {
            if let Some(conns) = local.by_user.get_mut(&user) {
                conns.remove(&conn);
                if conns.is_empty() {
                    local.by_user.remove(&user);
                    local.announced.remove(&user);
                    local.cache.remove(&user);
                }
            }
        }
    }

    /// One turn of a live session: the copies that ended since the last one, the session's
    /// state when the store outlives this instance (`kept`), and what its mailbox gained, in one
    /// commit. `None`: the session is no longer this connection's.
    pub(crate) async fn turn(
        &self,
        user: &UserId,
        conn: u64,
        session_id: &str,
        kept: Option<Kept>,
        settled: &[(u64, Outcome)],
    ) -> Result<Option<Taken>, StoreError> {
        let holder = self.holder(conn);
        self.change(user, |record, rules, events| {
            for (held, outcome) in settled {
                record.copy_settled(rules, user, *held, outcome, events);
            }
            if let Some(kept) = &kept {
                if record.save(&holder, session_id, kept.clone()) == Saved::Fenced {
                    return None;
                }
            } else if !record.carries(&holder, session_id) {
                return None;
            }
            Some(record.take_new(&holder))
        })
        .await
    }

    /// A connection's session given back ([`UserRecord::detach`]), after the copies that ended
    /// on it. Kept for a retry at the next heartbeat if the store fails.
    pub(crate) async fn detach(&self, pending: Detach, now: Time) {
        self.unregister(pending.conn);
        if let Err((error, pending)) = self.try_detach(pending, now).await {
            warn!(%error, "could not give a session back to the store; retrying at the next heartbeat");
            let mut local = lock(&self.local);
            if local.pending.len() < MAX_PENDING_DETACHES {
                local.pending.push(pending);
            } else {
                m::limit_refused("pending_detaches");
            }
        }
    }

    async fn try_detach(&self, pending: Detach, now: Time) -> Result<(), (StoreError, Detach)> {
        let Detach {
            user,
            conn,
            mut session,
            mut copies,
            settled,
            ended,
        } = pending;
        let holder = self.holder(conn);
        let result = self
            .change(&user, |record, rules, events| {
                for (held, outcome) in &settled {
                    record.copy_settled(rules, &user, *held, outcome, events);
                }
                record.detach(
                    rules,
                    &user,
                    &holder,
                    &mut session,
                    &mut copies,
                    ended,
                    now,
                    events,
                );
            })
            .await;
        result.map_err(|error| {
            (
                error,
                Detach {
                    user,
                    conn,
                    session,
                    copies,
                    settled,
                    ended,
                },
            )
        })
    }

    /// Ends lapsed resume windows and expires held messages of users with no session, taking
    /// only what the store's index says is due [CU-5]; releases the sessions of instances whose
    /// lease ran out [RS-1].
    pub(crate) async fn sweep(&self, now: Time) -> Result<(), StoreError> {
        let alive = self.alive_check(now);
        loop {
            let due = self
                .store
                .take_due(now, now + SWEEP_CLAIM, SWEEP_BATCH)
                .await?;
            let batch = due.len();
            for due in due {
                self.sweep_user(&due, now, &alive).await?;
            }
            if batch < SWEEP_BATCH {
                break;
            }
        }
        Ok(())
    }

    async fn sweep_user(
        &self,
        due: &Due,
        now: Time,
        alive: &(impl Fn(&str) -> bool + Sync),
    ) -> Result<(), StoreError> {
        let deadline = self
            .change(&due.user, |record, rules, events| {
                record.sweep(rules, &due.user, now, alive, events);
                record.deadline()
            })
            .await?;
        self.store.settle_due(due, deadline).await
    }

    /// Renews this instance's lease, reads the others', gives back the sessions of instances
    /// whose lease ran out, and retries the detaches the store did not take.
    pub(crate) async fn heartbeat(&self, now: Time) -> Result<(), StoreError> {
        self.store
            .renew_lease(&self.instance, now + LEASE, &[])
            .await?;
        let leases = Leases::read(self.store.leases().await?);
        lock(&self.local).leases = leases.clone();
        let alive = self.alive_check(now);
        for instance in leases.gone(now) {
            let users = self.store.carried(&instance).await?;
            info!(instance = ?instance, users = users.len(), "an instance stopped renewing its lease: keeping its sessions for resume");
            for user in users {
                self.change(&user, |record, rules, events| {
                    record.sweep(rules, &user, now, &alive, events);
                })
                .await?;
            }
            self.store.forget_instance(&instance).await?;
        }
        let pending = std::mem::take(&mut lock(&self.local).pending);
        let mut failed = Vec::new();
        for detach in pending {
            // Once the store fails, the rest wait for the next beat.
            if failed.is_empty() {
                match self.try_detach(detach, now).await {
                    Ok(()) => continue,
                    Err((_, detach)) => failed.push(detach),
                }
            } else {
                failed.push(detach);
            }
        }
        lock(&self.local).pending.extend(failed);
        Ok(())
    }

    /// Carries out one notice from another instance.
    fn on_notice(&self, notice: Notice) {
        let mut local = lock(&self.local);
        let local = &mut *local;
        match notice {
            Notice::Wake { user, written } => {
                if let (Some(written), Some(cached)) = (written, local.cache.get_mut(&user)) {
                    // Only a direct successor of this instance's copy replaces it.
                    if cached.version == written.previous {
                        *cached = written.now;
                    }
                }
                for conn in local.by_user.get(&user).into_iter().flatten() {
                    if let Some((_, handle)) = local.handles.get(conn) {
                        handle.wake();
                    }
                }
            }
            Notice::Surrender { conn } => {
                if let Some((_, handle)) = local.handles.get(&conn) {
                    let (done, _) = oneshot::channel();
                    handle.command(ConnCommand::Surrender { done });
                }
            }
        }
    }

    /// Wakes every live session here: notices may have been missed.
    fn wake_all(&self) {
        for (_, handle) in lock(&self.local).handles.values() {
            handle.wake();
        }
    }
}

/// Runs the instance's duties until the server is dropped: sweeps, and where the store outlives
/// the instance, the lease and the notices of other instances.
pub(crate) async fn run_background(shared: Weak<Shared>) {
    let Some((outlives, store, outbox)) = shared.upgrade().map(|shared| {
        let custody = &shared.custody;
        let outbox = lock(&custody.outbox).take();
        (custody.outlives_instance(), custody.store.clone(), outbox)
    }) else {
        return;
    };
    let sender = async move {
        if let Some(outbox) = outbox {
            send_notices(store, outbox).await;
        }
    };
    if outlives {
        tokio::join!(heartbeat_loop(shared.clone()), notice_loop(shared), sender);
    } else {
        tokio::join!(sweep_loop(shared), sender);
    }
}

/// Sends the notices changes queued, as many per round trip as are waiting, until the server
/// is dropped (which closes the queue). Wake-ups of one user on one instance that wait together
/// are sent once, with the newest record.
async fn send_notices(store: Arc<dyn Store>, mut outbox: mpsc::Receiver<(String, Notice)>) {
    let mut waiting = Vec::with_capacity(NOTICE_BATCH);
    while outbox.recv_many(&mut waiting, NOTICE_BATCH).await > 0 {
        let mut batch: Vec<(String, Notice)> = Vec::with_capacity(waiting.len());
        for (instance, notice) in waiting.drain(..) {
            let same = batch.iter_mut().find(|(to, sent)| {
                *to == instance
                    && matches!((sent, &notice), (Notice::Wake { user: a, .. }, Notice::Wake { user: b, .. }) if a == b)
            });
            match same {
                Some(earlier) => earlier.1 = notice,
                None => batch.push((instance, notice)),
            }
        }
        if let Err(error) = store.notify_all(&batch).await {
            // The records hold what the notices announce: those instances' connections get it
            // at their next wake-up, or when they subscribe again.
            warn!(%error, count = batch.len(), "could not send notices to other instances");
        }
    }
}

async fn sweep_loop(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(LOCAL_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = shared.custody.sweep(shared.now()).await {
            warn!(%error, "the sweep failed");
        }
    }
}

async fn heartbeat_loop(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = shared.now();
        if let Err(error) = shared.custody.heartbeat(now).await {
            warn!(%error, "the instance's heartbeat in the store failed");
        }
        if let Err(error) = shared.custody.sweep(now).await {
            warn!(%error, "the sweep failed");
        }
    }
}

async fn notice_loop(shared: Weak<Shared>) {
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let subscribed = strong
            .custody
            .store
            .subscribe(strong.custody.instance())
            .await;
        drop(strong);
        match subscribed {
            Ok(mut notices) => {
                delay = Duration::from_millis(50);
                // Whatever was published while this instance was not subscribed is in the
                // records: every connection looks.
                if let Some(shared) = shared.upgrade() {
                    shared.custody.wake_all();
                }
                loop {
                    // Wakes up now and then to notice a server that was dropped.
                    let next = tokio::time::timeout(HEARTBEAT, notices.next()).await;
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    match next {
                        Err(_) => continue,
                        Ok(None) => break,
                        Ok(Some(notice)) => {
                            debug!(?notice, "notice from another instance");
                            shared.custody.on_notice(notice);
                        }
                    }
                }
                m::store_failure("subscribe");
                warn!("the store's notices ended; subscribing again");
            }
            Err(error) => {
                m::store_failure("subscribe");
                warn!(%error, "could not subscribe to the store's notices; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
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
