//! The Redis store: users, sessions and mailboxes shared by several server instances, so that a
//! user can be served by any of them (`docs/ARCHITECTURE.md`, "Several instances").
//!
//! Redis holds everything that must outlive an instance; an instance holds only its sockets.
//!
//! | key (under the prefix) | type | what |
//! |---|---|---|
//! | `u:{user}:mbox` | stream | the user's held messages, entry id `0-{record}`, fields `d` (data), `s` (bytes), `e` (expiry, ms) |
//! | `u:{user}:meta` | hash | `bytes`: the bytes held |
//! | `u:{user}:sessions` | hash | session id → the instance carrying it live, or `""` while kept for resume |
//! | `s:{session}` | hash | `user`, `token` and `prev` (SHA-256 of the resume secrets), `inst` and `conn` (the instance and connection carrying it, empty while kept for resume), `ticket` (of the `hello` that last claimed it), `state` (the [`SessionState`] and the records of its messages in flight) |
//! | `seq` | counter | the last record id; ids grow across all users |
//! | `hellos` | counter | the last `hello` ticket: a later `hello` wins a session over an earlier one |
//! | `pub:{id}` | string, 60 s | the answer to a publish, so that its retry after a lost reply stores nothing twice |
//! | `mailboxes` | set | users with a mailbox, for expiry |
//! | `i:{instance}` | string with a time-to-live | the instance's lease: present while it runs |
//! | `i:{instance}:sessions`, `instances` | sets | what a dead instance carried, for others to release |
//!
//! Channels: `wake:{instance}` (a user's mailbox grew; the payload is the user) and
//! `ctl:{instance}` (give up a session another instance resumes; the payload is its id).
//!
//! The mailbox bounds are checked by the publish script before `XADD` rather than with `MAXLEN`,
//! and expiry is a sweep over entries' `e` fields rather than a key's time-to-live, because both
//! of those would drop messages without telling anyone [CU-5].
//!
//! Every change that spans keys is one Lua script, so instances never see half of one. A
//! connection writes its session's state before any frame that depends on it leaves, so Redis
//! never knows less than the client was told [RS-4]. Pub/sub is only a doorbell: the mailbox
//! stream is what a connection reads, so a lost notification delays a message until the next one
//! or the subscriber's reconnection, and never loses it.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use readyws_protocol::frame::Resume;
use readyws_protocol::{
    Data, Outcome, ResumeToken, ServerConfig, ServerSession, SessionState, Time,
};
use redis::aio::ConnectionManager;
use redis::{Client, Cmd, RedisError, RetryMethod, Script, Value};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::auth::UserId;
use crate::hub::{ConnCommand, ConnHandle, Copies, fresh_session_credentials, random_token};
use crate::metrics as m;
use crate::options::{MailboxLimits, OverflowPolicy};
use crate::{PublishError, PublishReport, Shared, lock};

/// How often one Redis operation is tried before it fails with [`StoreError::Unavailable`]; the
/// waits between tries double from [`FIRST_RETRY_DELAY`]: 0.05 + 0.1 + 0.2 + 0.4 s in all.
const ATTEMPTS: u32 = 5;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// An instance's lease: renewed every [`HEARTBEAT`], so an instance that stopped renewing it for
/// this long is dead and its sessions can be resumed elsewhere.
const LEASE: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a resume waits for a live instance carrying the session to give it up (a dead one's
/// lease runs out within [`LEASE`]).
const SURRENDER_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the Redis store could not do what was asked. Nothing was lost: what Redis did not confirm
/// is still where it was (with the publisher, or in the client's outbox).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL is not a Redis URL, or no connection could be made at start.
    #[error("cannot use the Redis server at {url}: {detail}")]
    Connect {
        /// The URL given, without its password.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// Redis kept failing (down, restarting, unreachable) through every retry.
    #[error("Redis failed {attempts} times in a row during {operation}: {detail}")]
    Unavailable {
        /// What the server was doing.
        operation: &'static str,
        /// How often it tried.
        attempts: u32,
        /// The last error.
        detail: String,
    },
    /// Redis answered with something this server did not write: another program, or another
    /// version of readyws, uses the same key prefix.
    #[error("Redis returned an unexpected reply during {operation}: {detail}")]
    BadReply {
        /// What the server was doing.
        operation: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
}

/// A Redis server that several readyws server instances share: set it as
/// [`crate::ServerOptions::redis`] on each of them. Cheap to clone.
///
/// Redis must be a single primary (optionally with replicas and Sentinel), not a Cluster: the
/// scripts touch keys of several users. For the guarantee that nothing acknowledged is lost when
/// Redis itself restarts, run it with `appendonly yes` and `appendfsync always`
/// (`docs/ARCHITECTURE.md`).
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    manager: ConnectionManager,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` (`redis://[:password@]host:port[/db]`). The
    /// connection is re-established by itself after Redis restarts. Keys and channels start with
    /// `readyws:`; see [`with_prefix`](Self::with_prefix).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let shown = redacted(url);
        let connect_error = |detail: String| StoreError::Connect {
            url: shown.clone(),
            detail,
        };
        let client = Client::open(url).map_err(|error| connect_error(error.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|error| connect_error(error.to_string()))?;
        info!(url = %shown, "connected to Redis");
        Ok(RedisStore {
            client,
            manager,
            prefix: Arc::from("readyws"),
        })
    }

    /// Puts every key and channel under `prefix:` instead of `readyws:`, so that several
    /// deployments can share one Redis. Every instance of one deployment uses the same prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// Runs `command`, retrying what can be retried.
    async fn query(&self, operation: &'static str, command: &Cmd) -> Result<Value, StoreError> {
        self.with_retries(operation, |mut connection| async move {
            command.query_async::<Value>(&mut connection).await
        })
        .await
    }

    /// Runs `script` with `args` (the prefix comes first), retrying what can be retried.
    async fn script(
        &self,
        operation: &'static str,
        script: &Script,
        args: &[Vec<u8>],
    ) -> Result<Value, StoreError> {
        self.with_retries(operation, |mut connection| {
            let mut invocation = script.prepare_invoke();
            invocation.arg(self.prefix.as_bytes());
            for arg in args {
                invocation.arg(arg.as_slice());
            }
            async move { invocation.invoke_async::<Value>(&mut connection).await }
        })
        .await
    }

    /// Runs `attempt` on a connection until it succeeds, fails in a way a retry cannot mend, or
    /// has failed [`ATTEMPTS`] times; the waits double from [`FIRST_RETRY_DELAY`].
    async fn with_retries<F, Fut>(
        &self,
        operation: &'static str,
        mut attempt: F,
    ) -> Result<Value, StoreError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<Value>>,
    {
        let mut delay = FIRST_RETRY_DELAY;
        let mut tries = 1;
        loop {
            match attempt(self.manager.clone()).await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    if !self.should_retry(operation, &error, tries).await {
                        return Err(unavailable(operation, tries, &error));
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
            tries += 1;
        }
    }

    async fn should_retry(
        &self,
        operation: &'static str,
        error: &RedisError,
        attempt: u32,
    ) -> bool {
        let retriable = !matches!(error.retry_method(), RetryMethod::NoRetry);
        if retriable && attempt < ATTEMPTS {
            m::store_retry(operation);
            debug!(operation, attempt, %error, "Redis failed; retrying");
            return true;
        }
        m::store_failure(operation);
        warn!(operation, attempt, %error, "Redis failed; giving up");
        false
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = String::from(&*self.prefix);
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }
}

fn unavailable(operation: &'static str, attempts: u32, error: &RedisError) -> StoreError {
    StoreError::Unavailable {
        operation,
        attempts,
        detail: error.to_string(),
    }
}

/// `url` without the password, for logs and errors.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// What a session's `state` field holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredSession {
    session: Option<SessionState>,
    /// The mailbox record of each of `session.in_flight`, in order (0: none).
    records: Vec<u64>,
}

/// The session's state as the `state` field holds it.
pub(crate) fn encode_state(session: &ServerSession, copies: &Copies) -> Vec<u8> {
    let (state, ids) = session.state();
    let records = ids
        .iter()
        .map(|id| copies.get(id).copied().unwrap_or(0))
        .collect();
    let stored = StoredSession {
        session: Some(state),
        records,
    };
    // Plain structs of numbers, strings and raw JSON: nothing here can fail to serialize.
    serde_json::to_vec(&stored).expect("a session state serializes")
}

/// The records among `settled` whose custody ended: acknowledged, or refused for good [CU-1].
/// Other outcomes leave a record in the mailbox for the user's next session [CU-2].
pub(crate) fn custody_ended(user: &UserId, settled: &mut Vec<(u64, Outcome)>) -> Vec<u64> {
    settled
        .drain(..)
        .filter_map(|(record, outcome)| match outcome {
            Outcome::Acked => Some(record),
            Outcome::Refused { code, .. } => {
                warn!(user = ?user.as_str(), held = record, code = ?code, "the client refused a published message for good");
                m::mailbox_dropped("refused", 1);
                Some(record)
            }
            _ => None,
        })
        .collect()
}

/// What the server of a connection needs from [`RedisHub::attach`].
pub(crate) struct Attached {
    pub(crate) session: Box<ServerSession>,
    pub(crate) copies: Copies,
    pub(crate) resumed: bool,
    /// The newest mailbox record the session has seen; later ones come with a wake-up.
    pub(crate) cursor: u64,
}

/// How [`RedisHub::save`] leaves the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Still carried by this connection.
    Live,
    /// The connection ended: kept for the resume window [RS-1].
    ForResume,
    /// The client ended it [RS-6].
    Ended,
}

impl Keep {
    fn as_arg(self) -> &'static str {
        match self {
            Keep::Live => "live",
            Keep::ForResume => "release",
            Keep::Ended => "end",
        }
    }
}

/// What [`RedisHub::save`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Saved {
    /// Written.
    Done,
    /// The session is no longer this connection's: another connection claimed it (a later
    /// `hello`, or another instance after this one was thought dead). Nothing about the session
    /// was written (the records whose custody ended were).
    Fenced,
}

#[derive(Default)]
struct Local {
    /// Live sessions carried here: session id → their connection.
    sessions: HashMap<String, (u64, ConnHandle)>,
    /// Live connections per user, to wake when the user's mailbox grows.
    users: HashMap<UserId, HashMap<u64, ConnHandle>>,
}

/// A session whose release could not be written; retried until it is.
struct PendingRelease {
    user: UserId,
    conn: u64,
    session_id: String,
    state: Vec<u8>,
    /// Records whose custody ended: the state counts them settled, so they go with it.
    settled: Vec<u64>,
    keep: Keep,
}

/// One instance's view of the Redis store.
pub(crate) struct RedisHub {
    store: RedisStore,
    instance: String,
    protocol: ServerConfig,
    mailbox: MailboxLimits,
    local: Mutex<Local>,
    pending: Mutex<Vec<PendingRelease>>,
    scripts: Scripts,
}

struct Scripts {
    publish: Script,
    attach: Script,
    save: Script,
    expire: Script,
    reap: Script,
}

impl RedisHub {
    pub(crate) fn new(store: RedisStore, protocol: ServerConfig, mailbox: MailboxLimits) -> Self {
        let instance = format!("i-{}", &random_token().expose()[..16]);
        RedisHub {
            store,
            instance,
            protocol,
            mailbox,
            local: Mutex::new(Local::default()),
            pending: Mutex::new(Vec::new()),
            scripts: Scripts {
                publish: Script::new(PUBLISH_LUA),
                attach: Script::new(ATTACH_LUA),
                save: Script::new(SAVE_LUA),
                expire: Script::new(EXPIRE_LUA),
                reap: Script::new(REAP_LUA),
            },
        }
    }

    /// This instance's id, as other instances see it.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        lock(&self.local)
    }

    /// Appends `data` to the user's mailbox and wakes every instance carrying a live session of
    /// the user [CU-4]; bounds as in the in-memory store [CU-5].
    pub(crate) async fn publish(
        &self,
        user: &UserId,
        data: Data,
    ) -> Result<PublishReport, PublishError> {
        let size = self.mailbox.admit(&data)?;
        let policy = match self.mailbox.overflow {
            OverflowPolicy::RejectNew => "reject",
            OverflowPolicy::DropOldest => "drop",
        };
        let args = [
            user.as_str().as_bytes().to_vec(),
            data.as_json().as_bytes().to_vec(),
            size.to_string().into_bytes(),
            self.mailbox.max_messages.to_string().into_bytes(),
            self.mailbox.max_bytes.to_string().into_bytes(),
            policy.as_bytes().to_vec(),
            millis(self.mailbox.ttl).into_bytes(),
            // Names this publish, so that a retry after a lost reply does not store it twice.
            random_token().expose().as_bytes().to_vec(),
        ];
        let reply = self
            .store
            .script("publish", &self.scripts.publish, &args)
            .await
            .map_err(PublishError::Unavailable)?;
        let [record, live, third] =
            integers::<3>("publish", &reply).map_err(PublishError::Unavailable)?;
        if record < 0 {
            m::mailbox_dropped("rejected", 1);
            warn!(user = ?user.as_str(), held = live, "mailbox full: publish refused");
            return Err(PublishError::MailboxFull {
                messages: usize::try_from(live).unwrap_or(0),
                bytes: usize::try_from(third).unwrap_or(0),
            });
        }
        let dropped = usize::try_from(third).unwrap_or(0);
        if dropped > 0 {
            m::mailbox_dropped("overflow", dropped);
            warn!(user = ?user.as_str(), dropped, "mailbox full: dropped the oldest held messages");
        }
        let live = usize::try_from(live).unwrap_or(0);
        debug!(user = ?user.as_str(), held = record, live, "published");
        Ok(PublishReport {
            delivered: live,
            held: live == 0,
            dropped_oldest: dropped,
        })
    }

    /// Messages held for `user` and not acknowledged by any session.
    pub(crate) async fn mailbox_depth(&self, user: &UserId) -> Result<usize, StoreError> {
        let mut command = redis::cmd("XLEN");
        command.arg(self.store.key(&["u", user.as_str(), "mbox"]));
        let reply = self.store.query("mailbox depth", &command).await?;
        let [depth] = integers::<1>("mailbox depth", &Value::Array(vec![reply]))?;
        Ok(usize::try_from(depth).unwrap_or(0))
    }

    /// Attaches a connection of `user` to a session: the one `resume` names if it is this user's
    /// and its secret matches [RS-3, SE-3], wherever it was kept, otherwise a new one. A session
    /// still carried by a live connection (here or on another instance) is asked to move [RS-7],
    /// and taken once it has, or once the instance carrying it is found dead (its lease ran
    /// out). Every `hello` gets a ticket from Redis: a session claimed for a later `hello` is
    /// never taken back for an earlier one, whose client has moved on (`None`: give up, as when
    /// the holder never lets go). The connection is registered for wake-ups before the mailbox
    /// is read, so a publish from then on reaches it [HS-4].
    pub(crate) async fn attach(
        &self,
        user: &UserId,
        resume: Option<&Resume>,
        conn: u64,
        tx: &ConnHandle,
        now: Time,
    ) -> Result<Option<Attached>, StoreError> {
        self.local()
            .users
            .entry(user.clone())
            .or_default()
            .insert(conn, tx.clone());
        let deadline = tokio::time::Instant::now() + LEASE + SURRENDER_TIMEOUT;
        let mut ticket = Vec::new();
        let mut asked: Option<tokio::time::Instant> = None;
        loop {
            let (fresh_id, token) = fresh_session_credentials();
            let presented = resume.map_or_else(Vec::new, |r| token_hash(&r.resume_token));
            let args = [
                user.as_str().as_bytes().to_vec(),
                self.instance.as_bytes().to_vec(),
                resume.map_or_else(Vec::new, |r| r.session_id.as_bytes().to_vec()),
                presented,
                token_hash(&token),
                fresh_id.into_bytes(),
                conn.to_string().into_bytes(),
                ticket.clone(),
            ];
            let reply = self
                .store
                .script("attach", &self.scripts.attach, &args)
                .await?;
            let parts = array("attach", &reply)?;
            let status = text("attach", parts.first())?;
            ticket = text("attach", parts.get(1))?.into_bytes();
            match status.as_str() {
                "stale" => {
                    debug!("a later hello of this client already took the session");
                    return Ok(None);
                }
                "busy" => {
                    let holder = text("attach", parts.get(2))?;
                    let session_id = resume.map_or("", |r| r.session_id.as_str());
                    if asked.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
                        self.ask_to_surrender(&holder, session_id).await?;
                        asked = Some(tokio::time::Instant::now());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                _ => {}
            }
            let session_id = text("attach", parts.get(2))?;
            let stored = match parts.get(3) {
                Some(Value::BulkString(bytes)) if !bytes.is_empty() => serde_json::from_slice::<
                    StoredSession,
                >(bytes)
                .map_err(|error| StoreError::BadReply {
                    operation: "attach",
                    detail: format!("a session's state is not readable: {error}"),
                })?,
                _ => StoredSession::default(),
            };
            let resumed = status == "resumed";
            if resume.is_some() {
                m::resume(if resumed { "resumed" } else { "reset" });
            }
            let (mut session, mut copies) = if resumed {
                let state = stored.session.unwrap_or(SessionState {
                    last_received: 0,
                    recent_nacks: Vec::new(),
                    settled_through: 0,
                    in_flight: Vec::new(),
                });
                let (session, ids) =
                    ServerSession::restore(session_id.clone(), token, &self.protocol, state);
                let copies: Copies = ids
                    .into_iter()
                    .zip(stored.records)
                    .filter(|(_, record)| *record != 0)
                    .collect();
                (session, copies)
            } else {
                (
                    ServerSession::new(session_id.clone(), token, &self.protocol),
                    Copies::new(),
                )
            };
            let records = records("attach", parts.get(4..).unwrap_or_default())?;
            let cursor = queue_lacking(&mut session, &mut copies, records, now);
            self.local().sessions.insert(session_id, (conn, tx.clone()));
            return Ok(Some(Attached {
                session: Box::new(session),
                copies,
                resumed,
                cursor,
            }));
        }
    }

    /// Asks the instance carrying `session_id` to give it up.
    async fn ask_to_surrender(&self, holder: &str, session_id: &str) -> Result<(), StoreError> {
        if holder == self.instance {
            return self.surrender(session_id).await;
        }
        let mut command = redis::cmd("PUBLISH");
        command
            .arg(self.store.key(&["ctl", holder]))
            .arg(session_id);
        self.store.query("takeover", &command).await?;
        Ok(())
    }

    /// Another instance asks for `session_id`: hand it over if a connection here carries it;
    /// otherwise release whatever Redis still records as this instance's.
    pub(crate) async fn surrender(&self, session_id: &str) -> Result<(), StoreError> {
        let connection = self.local().sessions.get(session_id).cloned();
        if let Some((_, tx)) = connection {
            let (done, _answered) = oneshot::channel();
            if tx.command(ConnCommand::Surrender { done }) {
                return Ok(());
            }
        }
        self.release_orphan(session_id).await
    }

    async fn release_orphan(&self, session_id: &str) -> Result<(), StoreError> {
        let mut command = redis::cmd("HGET");
        command.arg(self.store.key(&["s", session_id])).arg("user");
        if let Value::BulkString(user) = self.store.query("takeover", &command).await? {
            let user = UserId::new(String::from_utf8_lossy(&user).into_owned());
            self.save(&user, None, session_id, None, &[], Keep::ForResume)
                .await?;
        }
        Ok(())
    }

    /// Records ids of `user`'s mailbox after `cursor`, oldest first.
    pub(crate) async fn fetch(
        &self,
        user: &UserId,
        cursor: u64,
    ) -> Result<Vec<(u64, Data)>, StoreError> {
        let mut command = redis::cmd("XRANGE");
        command
            .arg(self.store.key(&["u", user.as_str(), "mbox"]))
            .arg(format!("(0-{cursor}"))
            .arg("+");
        let reply = self.store.query("fetch", &command).await?;
        records("fetch", array("fetch", &reply)?)
    }

    /// Writes what Redis must know before the connection's next frames leave: the session's
    /// state (when it changed) and the records its client acknowledged or refused, whose custody
    /// ends [CU-1]. With `keep` other than [`Keep::Live`] the session also leaves this instance.
    /// Only the connection `conn` that claimed the session writes it (`None`: any connection of
    /// this instance, for a session none of them carries any more).
    pub(crate) async fn save(
        &self,
        user: &UserId,
        conn: Option<u64>,
        session_id: &str,
        state: Option<Vec<u8>>,
        settled: &[u64],
        keep: Keep,
    ) -> Result<Saved, StoreError> {
        let mut args = vec![
            user.as_str().as_bytes().to_vec(),
            self.instance.as_bytes().to_vec(),
            conn.map_or_else(Vec::new, |conn| conn.to_string().into_bytes()),
            session_id.as_bytes().to_vec(),
            keep.as_arg().as_bytes().to_vec(),
            state.unwrap_or_default(),
            millis(self.protocol.resume_window).into_bytes(),
        ];
        args.extend(
            settled
                .iter()
                .map(|record| format!("0-{record}").into_bytes()),
        );
        let reply = self.store.script("save", &self.scripts.save, &args).await?;
        let [written] = integers::<1>("save", &reply)?;
        if keep != Keep::Live {
            self.forget_session(session_id, conn);
        }
        Ok(if written == 1 {
            Saved::Done
        } else {
            Saved::Fenced
        })
    }

    /// The session leaves this instance; when Redis cannot be told now, it is told later by the
    /// heartbeat, so a session is never left marked live on an instance that dropped it.
    pub(crate) async fn release(
        &self,
        user: &UserId,
        conn: u64,
        session_id: &str,
        state: Vec<u8>,
        settled: Vec<u64>,
        keep: Keep,
    ) {
        let saved = self
            .save(
                user,
                Some(conn),
                session_id,
                Some(state.clone()),
                &settled,
                keep,
            )
            .await;
        if let Err(error) = saved {
            warn!(%error, session = session_id, "could not release a session in Redis; retrying in the background");
            self.forget_session(session_id, Some(conn));
            lock(&self.pending).push(PendingRelease {
                user: user.clone(),
                conn,
                session_id: session_id.to_owned(),
                state,
                settled,
                keep,
            });
        }
    }

    /// The session is no longer carried by `conn` here (`None`: by any connection).
    fn forget_session(&self, session_id: &str, conn: Option<u64>) {
        let mut local = self.local();
        if local
            .sessions
            .get(session_id)
            .is_some_and(|(holder, _)| conn.is_none_or(|conn| *holder == conn))
        {
            local.sessions.remove(session_id);
        }
    }

    /// A connection ended: it gets no more wake-ups.
    pub(crate) fn forget(&self, user: &UserId, conn: u64) {
        let mut local = self.local();
        if let Some(connections) = local.users.get_mut(user) {
            connections.remove(&conn);
            if connections.is_empty() {
                local.users.remove(user);
            }
        }
        local.sessions.retain(|_, (c, _)| *c != conn);
    }

    /// Tells every local connection of `user` that the mailbox grew; `None`: of every user (after
    /// the subscription was re-established, when notifications may have been missed).
    fn wake(&self, user: Option<&UserId>) {
        let local = self.local();
        let targets: Vec<_> = match user {
            Some(user) => local
                .users
                .get(user)
                .into_iter()
                .flat_map(|c| c.values())
                .collect(),
            None => local.users.values().flat_map(|c| c.values()).collect(),
        };
        for connection in targets {
            connection.wake();
        }
    }

    /// Renews the lease, retries pending releases, releases the sessions of dead instances and
    /// expires held messages.
    async fn heartbeat(&self) -> Result<(), StoreError> {
        let mut lease = redis::cmd("SET");
        lease
            .arg(self.store.key(&["i", &self.instance]))
            .arg(1)
            .arg("PX")
            .arg(u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX));
        self.store.query("lease", &lease).await?;
        let mut member = redis::cmd("SADD");
        member
            .arg(self.store.key(&["instances"]))
            .arg(&self.instance);
        self.store.query("lease", &member).await?;
        let pending = std::mem::take(&mut *lock(&self.pending));
        let mut failed = Vec::new();
        for release in pending {
            // Once Redis fails, the rest wait for the next beat.
            if failed.is_empty() {
                let saved = self
                    .save(
                        &release.user,
                        Some(release.conn),
                        &release.session_id,
                        Some(release.state.clone()),
                        &release.settled,
                        release.keep,
                    )
                    .await;
                if saved.is_ok() {
                    continue;
                }
            }
            failed.push(release);
        }
        lock(&self.pending).extend(failed);
        let reaped = self
            .store
            .script(
                "reap",
                &self.scripts.reap,
                &[millis(self.protocol.resume_window).into_bytes()],
            )
            .await?;
        if let Value::Int(count) = reaped {
            if count > 0 {
                info!(
                    instances = count,
                    "released the sessions of instances that stopped renewing their lease"
                );
            }
        }
        let expired = self
            .store
            .script("expire", &self.scripts.expire, &[])
            .await?;
        let expired = integers_vec("expire", &expired)?;
        let total: i64 = expired.iter().sum();
        if total > 0 {
            let total = usize::try_from(total).unwrap_or(0);
            m::mailbox_dropped("expired", total);
            info!(
                messages = total,
                "held messages expired before any session took them"
            );
        }
        Ok(())
    }
}

/// Runs the instance's duties in Redis until the server is dropped: the heartbeat, and the
/// subscription that carries wake-ups and takeover requests.
pub(crate) async fn run_background(shared: Weak<Shared>) {
    tokio::join!(heartbeat_loop(shared.clone()), subscription_loop(shared));
}

async fn heartbeat_loop(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(hub) = shared.redis() else {
            return;
        };
        if let Err(error) = hub.heartbeat().await {
            warn!(%error, "the instance's heartbeat in Redis failed");
        }
    }
}

async fn subscription_loop(shared: Weak<Shared>) {
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        let Some((client, wake, control)) = shared.upgrade().and_then(|shared| {
            let hub = shared.redis()?;
            Some((
                hub.store.client.clone(),
                hub.store.key(&["wake", &hub.instance]),
                hub.store.key(&["ctl", &hub.instance]),
            ))
        }) else {
            return;
        };
        match subscribe(&client, &wake, &control).await {
            Ok(pubsub) => {
                delay = FIRST_RETRY_DELAY;
                // Whatever was published while this instance was not subscribed is in the
                // mailboxes: every connection looks.
                if let Some(shared) = shared.upgrade() {
                    if let Some(hub) = shared.redis() {
                        hub.wake(None);
                    }
                }
                if !listen(pubsub, &shared, &wake).await {
                    return;
                }
                m::store_failure("subscribe");
                warn!("the Redis subscription ended; subscribing again");
            }
            Err(error) => {
                m::store_failure("subscribe");
                warn!(%error, "could not subscribe in Redis; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

async fn subscribe(
    client: &Client,
    wake: &str,
    control: &str,
) -> Result<redis::aio::PubSub, RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(wake).await?;
    pubsub.subscribe(control).await?;
    Ok(pubsub)
}

/// Carries out notifications until the subscription breaks (`true`) or the server is gone.
async fn listen(pubsub: redis::aio::PubSub, shared: &Weak<Shared>, wake: &str) -> bool {
    let mut messages = pubsub.into_on_message();
    loop {
        // Wakes up now and then to notice a server that was dropped.
        let next = tokio::time::timeout(HEARTBEAT, messages.next()).await;
        let Some(shared) = shared.upgrade() else {
            return false;
        };
        let message = match next {
            Err(_) => continue,
            Ok(None) => return true,
            Ok(Some(message)) => message,
        };
        let Some(hub) = shared.redis() else {
            return false;
        };
        let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
        if message.get_channel_name() == wake {
            hub.wake(Some(&UserId::new(payload)));
        } else {
            // Off this loop: handing a session over waits for Redis.
            tokio::spawn(async move {
                if let Some(hub) = shared.redis() {
                    if let Err(error) = hub.surrender(&payload).await {
                        warn!(%error, "could not hand a session over to another instance");
                    }
                }
            });
        }
    }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// What Redis keeps of a resume secret: its SHA-256, in hex. A copy of Redis then resumes no
/// session [SE-2].
fn token_hash(token: &ResumeToken) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.expose().as_bytes());
    let mut hex = Vec::with_capacity(64);
    for byte in digest.as_ref() {
        hex.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    hex
}

fn bad_reply(operation: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::BadReply {
        operation,
        detail: detail.into(),
    }
}

fn array<'a>(operation: &'static str, value: &'a Value) -> Result<&'a [Value], StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(&[]),
        other => Err(bad_reply(
            operation,
            format!("expected a list, got {other:?}"),
        )),
    }
}

fn text(operation: &'static str, value: Option<&Value>) -> Result<String, StoreError> {
    match value {
        Some(Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Some(Value::SimpleString(text)) => Ok(text.clone()),
        other => Err(bad_reply(
            operation,
            format!("expected a string, got {other:?}"),
        )),
    }
}

fn integers_vec(operation: &'static str, value: &Value) -> Result<Vec<i64>, StoreError> {
    array(operation, value)?
        .iter()
        .map(|item| match item {
            Value::Int(number) => Ok(*number),
            other => Err(bad_reply(
                operation,
                format!("expected a number, got {other:?}"),
            )),
        })
        .collect()
}

fn integers<const N: usize>(
    operation: &'static str,
    value: &Value,
) -> Result<[i64; N], StoreError> {
    let numbers = match value {
        Value::Int(number) => vec![*number],
        other => integers_vec(operation, other)?,
    };
    <[i64; N]>::try_from(numbers)
        .map_err(|numbers| bad_reply(operation, format!("expected {N} numbers, got {numbers:?}")))
}

/// Mailbox entries (`[id, [field, value, …]]`) as (record, data).
fn records(operation: &'static str, entries: &[Value]) -> Result<Vec<(u64, Data)>, StoreError> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let parts = array(operation, entry)?;
        let id = text(operation, parts.first())?;
        let record = id
            .strip_prefix("0-")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                bad_reply(
                    operation,
                    format!("a mailbox entry id {id:?} is not 0-<record>"),
                )
            })?;
        let fields = array(operation, parts.get(1).unwrap_or(&Value::Nil))?;
        let data = fields
            .chunks(2)
            .find(|pair| matches!(&pair[0], Value::BulkString(name) if name == b"d"))
            .and_then(|pair| pair.get(1))
            .ok_or_else(|| bad_reply(operation, format!("mailbox entry {id} has no data")))?;
        let json = text(operation, Some(data))?;
        let data = Data::from_json(json)
            .map_err(|error| bad_reply(operation, format!("mailbox entry {id}: {error}")))?;
        out.push((record, data));
    }
    Ok(out)
}

/// Queues every record the session lacks, oldest first [CU-3], and returns the newest record
/// seen: later ones arrive with a wake-up.
fn queue_lacking(
    session: &mut ServerSession,
    copies: &mut Copies,
    records: Vec<(u64, Data)>,
    now: Time,
) -> u64 {
    let has: BTreeSet<u64> = copies.values().copied().collect();
    let mut cursor = has.last().copied().unwrap_or(0);
    for (record, data) in records {
        cursor = cursor.max(record);
        if has.contains(&record) {
            continue;
        }
        if let Ok(message) = session.send(data, None, now) {
            copies.insert(message, record);
        }
    }
    cursor
}

// ARGV: prefix, user, data, size, max messages, max bytes, policy, time-to-live (ms), publish id.
// Returns {record, live sessions, dropped}, or {-1, held messages, held bytes} when full. The same
// publish id run again (a retry whose first reply was lost) returns the first answer.
const PUBLISH_LUA: &str = r"
local p, user = ARGV[1], ARGV[2]
local done = p .. ':pub:' .. ARGV[9]
local first = redis.call('GET', done)
if first then
  local record, live, dropped = string.match(first, '(%d+) (%d+) (%d+)')
  return {tonumber(record), tonumber(live), tonumber(dropped)}
end
local mbox = p .. ':u:' .. user .. ':mbox'
local meta = p .. ':u:' .. user .. ':meta'
local size = tonumber(ARGV[4])
local len = redis.call('XLEN', mbox)
local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0')
local dropped = 0
while len >= tonumber(ARGV[5]) or bytes + size > tonumber(ARGV[6]) do
  if ARGV[7] ~= 'drop' then return {-1, len, bytes} end
  local oldest = redis.call('XRANGE', mbox, '-', '+', 'COUNT', 1)[1]
  if not oldest then break end
  local fields = oldest[2]
  for i = 1, #fields, 2 do
    if fields[i] == 's' then bytes = bytes - tonumber(fields[i + 1]) end
  end
  redis.call('XDEL', mbox, oldest[1])
  len = len - 1
  dropped = dropped + 1
end
local record = redis.call('INCR', p .. ':seq')
local now = redis.call('TIME')
local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[8])
redis.call('XADD', mbox, '0-' .. record, 'd', ARGV[3], 's', size, 'e', expires)
redis.call('HSET', meta, 'bytes', bytes + size)
redis.call('SADD', p .. ':mailboxes', user)
local live, rung = 0, {}
local sessions = redis.call('HGETALL', p .. ':u:' .. user .. ':sessions')
for i = 2, #sessions, 2 do
  local instance = sessions[i]
  if instance ~= '' then
    live = live + 1
    if not rung[instance] then
      rung[instance] = true
      redis.call('PUBLISH', p .. ':wake:' .. instance, user)
    end
  end
end
redis.call('SET', done, record .. ' ' .. live .. ' ' .. dropped, 'EX', 60)
return {record, live, dropped}
";

// ARGV: prefix, user, instance, session to resume (or ''), hash of the presented secret, hash of
// the new secret, id for a new session, connection, the hello's ticket (or '' for a new one).
// Returns {'stale', ticket} when a later hello claimed the session, {'busy', ticket, holder}
// while a live instance carries it, or {'resumed' | 'new', ticket, session id, state, mailbox
// entries…}.
const ATTACH_LUA: &str = r"
local p, user, instance = ARGV[1], ARGV[2], ARGV[3]
local ticket = ARGV[9]
if ticket == '' then ticket = tostring(redis.call('INCR', p .. ':hellos')) end
local sessions = p .. ':u:' .. user .. ':sessions'
local status, sid, state = 'new', ARGV[7], ''
if ARGV[4] ~= '' then
  local key = p .. ':s:' .. ARGV[4]
  local s = redis.call('HMGET', key, 'user', 'token', 'prev', 'inst', 'state', 'ticket')
  if s[1] == user and ARGV[5] ~= '' and (s[2] == ARGV[5] or s[3] == ARGV[5]) then
    if s[6] and tonumber(s[6]) > tonumber(ticket) then return {'stale', ticket} end
    local holder = s[4] or ''
    if holder ~= '' and redis.call('EXISTS', p .. ':i:' .. holder) == 1 then
      return {'busy', ticket, holder}
    end
    status, sid, state = 'resumed', ARGV[4], s[5] or ''
    if holder ~= '' then redis.call('SREM', p .. ':i:' .. holder .. ':sessions', sid) end
    redis.call('HSET', key, 'token', ARGV[6], 'prev', ARGV[5], 'inst', instance, 'conn', ARGV[8], 'ticket', ticket)
    redis.call('PERSIST', key)
  end
end
if status == 'new' then
  redis.call('HSET', p .. ':s:' .. sid, 'user', user, 'token', ARGV[6], 'prev', '', 'inst', instance, 'conn', ARGV[8], 'ticket', ticket, 'state', '')
end
for _, other in ipairs(redis.call('HKEYS', sessions)) do
  if redis.call('EXISTS', p .. ':s:' .. other) == 0 then redis.call('HDEL', sessions, other) end
end
redis.call('HSET', sessions, sid, instance)
redis.call('SADD', p .. ':i:' .. instance .. ':sessions', sid)
local out = {status, ticket, sid, state}
for _, entry in ipairs(redis.call('XRANGE', p .. ':u:' .. user .. ':mbox', '-', '+')) do
  out[#out + 1] = entry
end
return out
";

// ARGV: prefix, user, instance, connection (or '' for any of the instance's), session,
// 'live' | 'release' | 'end', state (or '' to keep it), resume window (ms), mailbox entry ids
// whose custody ended…
// Returns 1, or 0 when the session is not this connection's (only the custody was written).
const SAVE_LUA: &str = r"
local p, user, instance, conn, sid, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local mbox = p .. ':u:' .. user .. ':mbox'
local freed = 0
for i = 9, #ARGV do
  local entry = redis.call('XRANGE', mbox, ARGV[i], ARGV[i])[1]
  if entry then
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 's' then freed = freed + tonumber(fields[j + 1]) end
    end
    redis.call('XDEL', mbox, ARGV[i])
  end
end
if freed > 0 then redis.call('HINCRBY', p .. ':u:' .. user .. ':meta', 'bytes', -freed) end
local key = p .. ':s:' .. sid
local owner = redis.call('HMGET', key, 'inst', 'conn')
if owner[1] ~= instance or (conn ~= '' and owner[2] ~= conn) then return 0 end
if ARGV[7] ~= '' then redis.call('HSET', key, 'state', ARGV[7]) end
local sessions = p .. ':u:' .. user .. ':sessions'
if mode == 'release' then
  redis.call('HSET', key, 'inst', '', 'conn', '')
  redis.call('PEXPIRE', key, ARGV[8])
  redis.call('HSET', sessions, sid, '')
  redis.call('SREM', p .. ':i:' .. instance .. ':sessions', sid)
elseif mode == 'end' then
  redis.call('DEL', key)
  redis.call('HDEL', sessions, sid)
  redis.call('SREM', p .. ':i:' .. instance .. ':sessions', sid)
end
return 1
";

// ARGV: prefix. Expires held messages of users who have no session, live or kept for resume
// [CU-5]. Returns the number expired per user that had any.
const EXPIRE_LUA: &str = r"
local p = ARGV[1]
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = {}
for _, user in ipairs(redis.call('SMEMBERS', p .. ':mailboxes')) do
  local sessions = p .. ':u:' .. user .. ':sessions'
  local held = false
  for _, sid in ipairs(redis.call('HKEYS', sessions)) do
    if redis.call('EXISTS', p .. ':s:' .. sid) == 1 then held = true else redis.call('HDEL', sessions, sid) end
  end
  if not held then
    local mbox = p .. ':u:' .. user .. ':mbox'
    local count, freed = 0, 0
    for _, entry in ipairs(redis.call('XRANGE', mbox, '-', '+', 'COUNT', 1000)) do
      local fields, size, expires = entry[2], 0, 0
      for j = 1, #fields, 2 do
        if fields[j] == 's' then size = tonumber(fields[j + 1]) end
        if fields[j] == 'e' then expires = tonumber(fields[j + 1]) end
      end
      if expires > now then break end
      redis.call('XDEL', mbox, entry[1])
      count = count + 1
      freed = freed + size
    end
    if count > 0 then
      redis.call('HINCRBY', p .. ':u:' .. user .. ':meta', 'bytes', -freed)
      expired[#expired + 1] = count
    end
    if redis.call('XLEN', mbox) == 0 then
      redis.call('SREM', p .. ':mailboxes', user)
      redis.call('DEL', mbox, p .. ':u:' .. user .. ':meta')
    end
  end
end
return expired
";

// ARGV: prefix, resume window (ms). Keeps the sessions of instances whose lease ran out for the
// resume window, as if their connections had closed [RS-1]. Returns how many instances.
const REAP_LUA: &str = r"
local p = ARGV[1]
local reaped = 0
for _, instance in ipairs(redis.call('SMEMBERS', p .. ':instances')) do
  if redis.call('EXISTS', p .. ':i:' .. instance) == 0 then
    local set = p .. ':i:' .. instance .. ':sessions'
    for _, sid in ipairs(redis.call('SMEMBERS', set)) do
      local key = p .. ':s:' .. sid
      if redis.call('HGET', key, 'inst') == instance then
        redis.call('HSET', key, 'inst', '', 'conn', '')
        redis.call('PEXPIRE', key, ARGV[2])
        local user = redis.call('HGET', key, 'user')
        if user then redis.call('HSET', p .. ':u:' .. user .. ':sessions', sid, '') end
      end
    end
    redis.call('DEL', set)
    redis.call('SREM', p .. ':instances', instance)
    reaped = reaped + 1
  end
end
return reaped
";
