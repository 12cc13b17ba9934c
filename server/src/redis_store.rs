//! The Redis store: users' records shared by several server instances, so that a user can be
//! served by any of them (`docs/ARCHITECTURE.md`, "Several instances"). It implements
//! [`Store`]'s primitives and nothing else: every rule is in the records' methods, which the
//! server runs between a load and a commit.
//!
//! | key (under the prefix) | type | what |
//! |---|---|---|
//! | `u:{<user>}` | hash | `v`: the record's version, `r`: the record without its held messages (JSON), `m:<id>`: each held message (`<expiry ms> <JSON>`) |
//! | `dl:{<n>}` | sorted set | the index of deadlines, shard `n` of [`DEADLINE_SHARDS`]: user → when its record is next due |
//! | `leases` | sorted set | instance → when its lease runs out (Unix milliseconds) |
//! | `carried:{<instance>}` | set | users whose sessions the instance carries (or did) |
//!
//! `<user>` is the user id in hex, so that no user id can reach into another key, and the braces
//! make it the key's hash tag: every key of one user is in one slot, and each atomic operation
//! touches one key. No counter spans users and no operation walks them: the deadline index is
//! sharded, and a sweep takes what is due. A Redis Cluster can therefore hold them as well as a
//! single primary.
//!
//! Channels: `n:{<instance>}` carries [`Notice`]s (JSON) to an instance.
//!
//! The one script checks a commit's version and writes the record, or removes it when empty: it
//! makes the check and the write one step, and decides nothing. A commit writes the record's
//! head and only the held messages added, and deletes those gone, so its size follows what
//! changed, not how much the user has waiting; a message in flight that copies a held one is
//! kept without its data, which is the held message's. A version is a random number
//! chosen by the committer, so a record removed and made again never matches a version loaded
//! before; and a commit whose reply was lost finds its own version when retried, so it is never
//! applied twice. For the guarantee that nothing acknowledged is lost when Redis itself
//! restarts, run it with `appendonly yes` and `appendfsync always` (`docs/ARCHITECTURE.md`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use readyws_hub::{StoredHead, UserId, UserRecord};
use readyws_protocol::{Data, Time};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, RedisError, RetryMethod, Value};
use tracing::{debug, info, warn};

use crate::metrics as m;
use crate::store::{Commit, Due, Notice, SentCommit, Store, StoreError, Versioned};

/// How often one Redis operation is tried before it fails with [`StoreError::Unavailable`]; the
/// waits between tries double from [`FIRST_RETRY_DELAY`]: 0.05 + 0.1 + 0.2 + 0.4 s in all.
const ATTEMPTS: u32 = 5;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Shards of the deadline index: enough that no one sorted set holds a large share of the
/// users, few enough that a sweep asks each of them once.
pub const DEADLINE_SHARDS: u32 = 16;

/// The Redis that several readyws server instances share: a single primary (optionally with
/// replicas and Sentinel), or a Redis Cluster. Set it as [`crate::ServerOptions::redis`] on each
/// of them. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    /// Where notices are subscribed to: the primary, or each cluster node in turn (a notice
    /// published on any node of a cluster reaches subscribers on every node).
    subscribe_to: Arc<[Client]>,
    next_subscription: Arc<AtomicUsize>,
    prefix: Arc<str>,
}

/// A connection that re-establishes itself: to one primary, or to every node of a cluster
/// (each command goes to the node that holds its key's slot).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.connection.is_cluster())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The scheme of a cluster URL: `redis-cluster://[:password@]host:port[,host:port…]` names
/// some of the cluster's nodes (the rest are found from them).
pub const CLUSTER_SCHEME: &str = "redis-cluster://";

impl RedisStore {
    /// Connects to the Redis at `url`: `redis://[:password@]host:port[/db]` for a single
    /// primary, or `redis-cluster://[:password@]host:port[,host:port…]` for a Redis Cluster
    /// ([`CLUSTER_SCHEME`]). The connection is re-established by itself after Redis restarts.
    /// Keys and channels start with `readyws:`; see [`with_prefix`](Self::with_prefix).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let shown = redacted(url);
        let connect_error = |detail: String| StoreError::Connect {
            url: shown.clone(),
            detail,
        };
        let (connection, subscribe_to) = match url.strip_prefix(CLUSTER_SCHEME) {
            Some(nodes) => {
                let nodes = cluster_nodes(nodes).map_err(connect_error)?;
                let clients = nodes
                    .iter()
                    .map(|node| Client::open(node.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| connect_error(error.to_string()))?;
                let cluster = redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2))
                    .retries(2)
                    .build()
                    .map_err(|error| connect_error(error.to_string()))?;
                let connection = cluster
                    .get_async_connection()
                    .await
                    .map_err(|error| connect_error(error.to_string()))?;
                (Connection::Cluster(connection), clients)
            }
            None => {
                let client = Client::open(url).map_err(|error| connect_error(error.to_string()))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(200));
                let manager = ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map_err(|error| connect_error(error.to_string()))?;
                (Connection::Single(manager), vec![client])
            }
        };
        info!(url = %shown, cluster = connection.is_cluster(), "connected to Redis");
        Ok(RedisStore {
            connection,
            subscribe_to: subscribe_to.into(),
            next_subscription: Arc::new(AtomicUsize::new(0)),
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

    /// Runs `attempt` on a connection until it succeeds, fails in a way a retry cannot mend, or
    /// has failed [`ATTEMPTS`] times; the waits double from [`FIRST_RETRY_DELAY`].
    async fn with_retries<F, Fut>(
        &self,
        operation: &'static str,
        mut attempt: F,
    ) -> Result<Value, StoreError>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<Value>>,
    {
        let mut delay = FIRST_RETRY_DELAY;
        let mut tries = 1;
        loop {
            match attempt(self.connection.clone()).await {
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

    /// The commit of `record` over `expected` (with the deadline index in the same round trip
    /// when `deadline` is given), built now and answered by the future: the version it writes,
    /// and what it did. The command owns its arguments, so the future can outlive the record.
    fn commit_command(
        &self,
        user: &UserId,
        expected: u64,
        record: &UserRecord,
        deadline: Option<Time>,
        incremental: bool,
    ) -> (u64, BoxFuture<'static, Result<Commit, StoreError>>) {
        let head = if record.is_empty() {
            Vec::new()
        } else {
            // Plain data of numbers, strings and JSON text: nothing here fails to serialize.
            serde_json::to_vec(&record.head()).expect("a record serializes")
        };
        // Only the held messages that changed since the mark travel; without one, the whole
        // record replaces what the hash holds.
        let (whole, removed, added): (bool, Vec<u64>, Vec<HeldMessage<'_>>) =
            match record.held_changes().filter(|_| incremental) {
                Some(changes) => (false, changes.removed, changes.added),
                None => (true, Vec::new(), record.held_messages().collect()),
            };
        let version = random_version();
        let mut pipe = redis::pipe();
        if let Some(at) = deadline {
            pipe.cmd("ZADD")
                .arg(self.deadline_key(shard(user)))
                .arg("LT")
                .arg(millis(at))
                .arg(hex(user))
                .ignore();
        }
        pipe.cmd("EVALSHA")
            .arg(&COMMIT.sha)
            .arg(1)
            .arg(self.user_key(user))
            .arg(expected.to_string())
            .arg(&head)
            .arg(version.to_string())
            .arg(if whole { "1" } else { "0" })
            .arg(removed.len());
        for id in &removed {
            pipe.arg(HeldField(*id));
        }
        for (id, expires_at, data) in &added {
            pipe.arg(HeldField(*id)).arg(HeldValue {
                expires_at_ms: millis(*expires_at),
                json: data.as_json(),
            });
        }
        let store = self.clone();
        let answer = Box::pin(async move {
            let pipe = &pipe;
            let reply = store
                .with_retries("commit", |mut connection| async move {
                    match pipe.query_async::<Value>(&mut connection).await {
                        // A Redis just started or flushed: the script is loaded and the same
                        // command sent again, which does not carry the script's text.
                        Err(error) if no_script(&error) => {
                            redis::cmd("SCRIPT")
                                .arg("LOAD")
                                .arg(COMMIT.text)
                                .query_async::<Value>(&mut connection)
                                .await?;
                            pipe.query_async::<Value>(&mut connection).await
                        }
                        other => other,
                    }
                })
                .await?;
            commit_outcome(reply, version)
        });
        (if record.is_empty() { 0 } else { version }, answer)
    }

    fn user_key(&self, user: &UserId) -> String {
        format!("{}:u:{{{}}}", self.prefix, hex(user))
    }

    fn deadline_key(&self, shard: u32) -> String {
        format!("{}:dl:{{{shard}}}", self.prefix)
    }

    fn carried_key(&self, instance: &str) -> String {
        format!("{}:carried:{{{instance}}}", self.prefix)
    }

    fn notice_channel(&self, instance: &str) -> String {
        format!("{}:n:{{{instance}}}", self.prefix)
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

/// The node URLs of a cluster URL's `[:password@]host:port[,host:port…]`, each as
/// `redis://[:password@]host:port`.
fn cluster_nodes(nodes: &str) -> Result<Vec<String>, String> {
    let (auth, hosts) = match nodes.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), nodes),
    };
    let hosts: Vec<&str> = hosts
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .collect();
    if hosts.iter().any(|host| host.is_empty()) {
        return Err(format!(
            "a cluster URL names its nodes as {CLUSTER_SCHEME}host:port[,host:port…]"
        ));
    }
    Ok(hosts
        .into_iter()
        .map(|host| format!("redis://{auth}{host}"))
        .collect())
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

/// The user's part of a key: hex, so that no id can reach into another key or hash tag.
fn hex(user: &UserId) -> String {
    let mut out = String::with_capacity(user.as_str().len() * 2);
    for byte in user.as_str().bytes() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn unhex(operation: &'static str, text: &[u8]) -> Result<UserId, StoreError> {
    let bad = || bad_reply(operation, "a user that is not hex");
    if text.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = text
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or(())
        })
        .collect();
    let bytes = bytes.map_err(|()| bad())?;
    String::from_utf8(bytes).map(UserId::new).map_err(|_| bad())
}

/// Which shard of the deadline index holds `user` (FNV-1a of the id).
fn shard(user: &UserId) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in user.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % DEADLINE_SHARDS
}
fn random_version() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).expect("the OS random number generator is available");
    // Never 0, which means "no record".
    u64::from_le_bytes(bytes) | 1
}

fn bad_reply(operation: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::BadReply {
        operation,
        detail: detail.into(),
    }
}

fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

fn integer(operation: &'static str, value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::Double(n) => Ok(*n as i64),
        other => bytes_of(other)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<f64>().ok())
            .map(|n| n as i64)
            .ok_or_else(|| bad_reply(operation, format!("expected a number, got {other:?}"))),
    }
}

fn array(operation: &'static str, value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(bad_reply(
            operation,
            format!("expected an array, got {other:?}"),
        )),
    }
}

/// A held message as a commit writes it: id, expiry, data.
type HeldMessage<'a> = (u64, Time, &'a Data);

/// A record and its version from the fields of its hash (`HGETALL`): `v`, the head `r`, and
/// each held message's data as `m:<id>`. No fields: no record.
fn from_hash(operation: &'static str, reply: Value) -> Result<Versioned, StoreError> {
    let fields = match reply {
        Value::Map(pairs) => pairs,
        other => {
            let mut items = array(operation, other)?.into_iter();
            let mut pairs = Vec::new();
            while let (Some(field), Some(value)) = (items.next(), items.next()) {
                pairs.push((field, value));
            }
            pairs
        }
    };
    if fields.is_empty() {
        return Ok(Versioned::default());
    }
    let mut version = None;
    let mut head = None;
    let mut held = Vec::new();
    for (field, value) in &fields {
        let field =
            bytes_of(field).ok_or_else(|| bad_reply(operation, "a field that is not text"))?;
        let value =
            bytes_of(value).ok_or_else(|| bad_reply(operation, "a value that is not text"))?;
        match field {
            b"v" => {
                version = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
            }
            b"r" => head = Some(value),
            _ => {
                let id = field
                    .strip_prefix(HELD_FIELD_PREFIX.as_bytes())
                    .and_then(|id| std::str::from_utf8(id).ok())
                    .and_then(|id| id.parse::<u64>().ok())
                    .ok_or_else(|| bad_reply(operation, "a field this server did not write"))?;
                held.push((id, value));
            }
        }
    }
    let version = version.ok_or_else(|| bad_reply(operation, "a record without a version"))?;
    let head = head.ok_or_else(|| bad_reply(operation, "a version without a record"))?;
    let head: StoredHead = serde_json::from_slice(head)
        .map_err(|error| bad_reply(operation, format!("an unreadable record: {error}")))?;
    let mut messages = Vec::with_capacity(held.len());
    for (id, value) in held {
        let unreadable = || bad_reply(operation, format!("held message {id} is unreadable"));
        let (expires_at, json) = std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.split_once(' '))
            .ok_or_else(unreadable)?;
        let expires_at = expires_at.parse::<u64>().map_err(|_| unreadable())?;
        let data = Data::from_json(json).map_err(|_| unreadable())?;
        messages.push((id, Time::from_millis(expires_at), data));
    }
    let record = UserRecord::from_parts(head, messages);
    Ok(Versioned { record, version })
}

fn millis(at: Time) -> u64 {
    at.as_millis()
}

/// Writes the record if the version is still the one loaded; a retry of a commit that was
/// applied finds its own version. ARGV: expected version, head ('' removes the record), new
/// version, '1' to clear the hash first (a whole record), the count of held messages removed,
/// their fields (`m:<id>`), then (field, data) pairs of the messages added. Returns 1 (written),
/// 0 (removed), or on a conflict -1 with the whole hash as it is, which spares the committer a
/// load. Fields go to `HDEL` and `HSET` a thousand at a time rather than one call each: a call
/// from Lua costs about as much as the write it makes, and a commit can carry thousands (Lua
/// also caps how many values one `unpack` may spread).
const COMMIT_LUA: &str = r"
local key = KEYS[1]
local current = redis.call('HGET', key, 'v') or '0'
if current == ARGV[3] then return 1 end
if current ~= ARGV[1] then return {-1, redis.call('HGETALL', key)} end
if ARGV[2] == '' then
  redis.call('DEL', key)
  return 0
end
if ARGV[4] == '1' then redis.call('DEL', key) end
local last_removed = 5 + tonumber(ARGV[5])
for i = 6, last_removed, 1000 do
  redis.call('HDEL', key, unpack(ARGV, i, math.min(i + 999, last_removed)))
end
redis.call('HSET', key, 'v', ARGV[3], 'r', ARGV[2])
for i = last_removed + 1, #ARGV, 1000 do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
";

/// What the hash field of a held message starts with, before its id.
const HELD_FIELD_PREFIX: &str = "m:";

/// The hash field of held message `id`: `m:<id>`. Written straight into the command, as
/// [`HeldValue`] is: formatting a string per field first was a sixth of a commit's CPU.
struct HeldField(u64);

impl redis::ToRedisArgs for HeldField {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        // Writing into the command's own buffer cannot fail.
        let _ = write!(out.writer_for_next_arg(), "{HELD_FIELD_PREFIX}{}", self.0);
    }
}

impl redis::ToSingleRedisArg for HeldField {}

/// The value of a held message's field: its expiry in milliseconds, a space, its data.
struct HeldValue<'a> {
    expires_at_ms: u64,
    json: &'a str,
}

impl redis::ToRedisArgs for HeldValue<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        let _ = write!(arg, "{} ", self.expires_at_ms);
        let _ = arg.write_all(self.json.as_bytes());
    }
}

impl redis::ToSingleRedisArg for HeldValue<'_> {}

/// What the reply to a commit's round trip says it did; `version` is the one it wrote.
fn commit_outcome(reply: Value, version: u64) -> Result<Commit, StoreError> {
    let reply = array("commit", reply)?;
    let outcome = reply
        .last()
        .ok_or_else(|| bad_reply("commit", "no answer to the script"))?;
    if let Value::Array(conflict) = outcome {
        let current = match conflict.as_slice() {
            [_, hash] => from_hash("commit", hash.clone())?,
            _ => return Err(bad_reply("commit", "a conflict without the record")),
        };
        return Ok(Commit::Conflict {
            current: Some(current),
        });
    }
    match integer("commit", outcome)? {
        1 => Ok(Commit::Done(version)),
        0 => Ok(Commit::Done(0)),
        other => Err(bad_reply("commit", format!("the script answered {other}"))),
    }
}

/// A script named by its SHA-1: sent as `EVALSHA`, and loaded (`SCRIPT LOAD`) only into a Redis
/// that does not have it yet (just started, or flushed), so a commit does not carry its text.
struct Lua {
    text: &'static str,
    sha: String,
}

impl Lua {
    fn new(text: &'static str) -> Lua {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
        let sha = digest
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Lua { text, sha }
    }
}

static COMMIT: LazyLock<Lua> = LazyLock::new(|| Lua::new(COMMIT_LUA));

/// Whether Redis answered that it does not have a script.
fn no_script(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
    )
}

/// The due members of one shard, each claimed until ARGV[2].
const TAKE_DUE_LUA: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
";

/// Settles a claimed entry: the new deadline (or none) if the claim still stands, else the
/// earlier of the two.
const SETTLE_DUE_LUA: &str = r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  if ARGV[3] == '' then
    redis.call('ZREM', KEYS[1], ARGV[1])
  else
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  end
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[1])
end
return 1
";

impl Store for RedisStore {
    fn load<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, Result<Versioned, StoreError>> {
        Box::pin(async move {
            let mut command = redis::cmd("HGETALL");
            command.arg(self.user_key(user));
            let reply = self.query("load", &command).await?;
            from_hash("load", reply)
        })
    }

    fn commit<'a>(
        &'a self,
        user: &'a UserId,
        expected: u64,
        record: &'a UserRecord,
        deadline: Option<Time>,
        incremental: bool,
    ) -> BoxFuture<'a, Result<Commit, StoreError>> {
        // The index first, so that a crash after the write never leaves a record that no sweep
        // will find: at worst the index says it is due too early. In a cluster the index shard
        // and the user's record are in different slots, so the index is written on its own
        // before the commit; on one primary both go in one round trip.
        let separate_index = deadline.filter(|_| self.connection.is_cluster());
        let (_, answer) = self.commit_command(
            user,
            expected,
            record,
            deadline.filter(|_| separate_index.is_none()),
            incremental,
        );
        Box::pin(async move {
            if let Some(at) = separate_index {
                let mut command = redis::cmd("ZADD");
                command
                    .arg(self.deadline_key(shard(user)))
                    .arg("LT")
                    .arg(millis(at))
                    .arg(hex(user));
                self.query("commit", &command).await?;
            }
            answer.await
        })
    }

    fn send_commit(
        &self,
        user: &UserId,
        expected: u64,
        record: &UserRecord,
        deadline: Option<Time>,
    ) -> Option<SentCommit> {
        // In a cluster the index goes first in a round trip of its own (`commit`).
        if deadline.is_some() && self.connection.is_cluster() {
            return None;
        }
        let (version, answer) = self.commit_command(user, expected, record, deadline, true);
        Some(SentCommit { version, answer })
    }

    fn take_due(
        &self,
        now: Time,
        claim_until: Time,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Due>, StoreError>> {
        Box::pin(async move {
            let mut due = Vec::new();
            for n in 0..DEADLINE_SHARDS {
                if due.len() >= limit {
                    break;
                }
                let mut command = redis::cmd("EVAL");
                command
                    .arg(TAKE_DUE_LUA)
                    .arg(1)
                    .arg(self.deadline_key(n))
                    .arg(millis(now))
                    .arg(millis(claim_until))
                    .arg(limit - due.len());
                for member in array("take_due", self.query("take_due", &command).await?)? {
                    let member = bytes_of(&member)
                        .ok_or_else(|| bad_reply("take_due", "a member that is not text"))?;
                    due.push(Due {
                        user: unhex("take_due", member)?,
                        claimed_until: claim_until,
                    });
                }
            }
            Ok(due)
        })
    }

    fn settle_due<'a>(
        &'a self,
        due: &'a Due,
        deadline: Option<Time>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut command = redis::cmd("EVAL");
            command
                .arg(SETTLE_DUE_LUA)
                .arg(1)
                .arg(self.deadline_key(shard(&due.user)))
                .arg(hex(&due.user))
                .arg(millis(due.claimed_until))
                .arg(
                    deadline
                        .map(|at| millis(at).to_string())
                        .unwrap_or_default(),
                );
            self.query("settle_due", &command).await?;
            Ok(())
        })
    }

    fn renew_lease<'a>(
        &'a self,
        instance: &'a str,
        until: Time,
        users: &'a [UserId],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut lease = redis::cmd("ZADD");
            lease
                .arg(self.key(&["leases"]))
                .arg(millis(until))
                .arg(instance);
            if users.is_empty() {
                self.query("lease", &lease).await?;
                return Ok(());
            }
            let mut carried = redis::cmd("SADD");
            carried.arg(self.carried_key(instance));
            for user in users {
                carried.arg(hex(user));
            }
            // Two keys, two slots in a cluster: sent together rather than one after the other.
            let (renewed, announced) =
                tokio::join!(self.query("lease", &lease), self.query("lease", &carried));
            renewed?;
            announced?;
            Ok(())
        })
    }

    fn leases(&self) -> BoxFuture<'_, Result<BTreeMap<String, Time>, StoreError>> {
        Box::pin(async move {
            let mut command = redis::cmd("ZRANGE");
            command
                .arg(self.key(&["leases"]))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES");
            let reply = array("leases", self.query("leases", &command).await?)?;
            let mut leases = BTreeMap::new();
            let mut items = reply.into_iter();
            while let (Some(instance), Some(score)) = (items.next(), items.next()) {
                let instance = bytes_of(&instance)
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                    .ok_or_else(|| bad_reply("leases", "an instance that is not text"))?;
                let until = u64::try_from(integer("leases", &score)?).unwrap_or(0);
                leases.insert(instance, Time::from_millis(until));
            }
            Ok(leases)
        })
    }

    fn carried<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<UserId>, StoreError>> {
        Box::pin(async move {
            let mut command = redis::cmd("SMEMBERS");
            command.arg(self.carried_key(instance));
            array("carried", self.query("carried", &command).await?)?
                .iter()
                .map(|member| {
                    bytes_of(member)
                        .ok_or_else(|| bad_reply("carried", "a member that is not text"))
                        .and_then(|member| unhex("carried", member))
                })
                .collect()
        })
    }

    fn forget_instance<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut command = redis::cmd("ZREM");
            command.arg(self.key(&["leases"])).arg(instance);
            self.query("forget_instance", &command).await?;
            let mut command = redis::cmd("DEL");
            command.arg(self.carried_key(instance));
            self.query("forget_instance", &command).await?;
            Ok(())
        })
    }

    fn notify<'a>(
        &'a self,
        instance: &'a str,
        notice: &'a Notice,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut command = redis::cmd("PUBLISH");
            // An enum of a string and a number: it serializes.
            let payload = serde_json::to_vec(notice).expect("a notice serializes");
            command.arg(self.notice_channel(instance)).arg(payload);
            self.query("notify", &command).await?;
            Ok(())
        })
    }

    fn notify_all<'a>(
        &'a self,
        notices: &'a [(String, Notice)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            for (instance, notice) in notices {
                let payload = serde_json::to_vec(notice).expect("a notice serializes");
                pipe.cmd("PUBLISH")
                    .arg(self.notice_channel(instance))
                    .arg(payload)
                    .ignore();
            }
            self.with_retries("notify", |mut connection| {
                let pipe = &pipe;
                async move { pipe.query_async::<Value>(&mut connection).await }
            })
            .await?;
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Notice>, StoreError>> {
        Box::pin(async move {
            let unavailable = |error: RedisError| unavailable("subscribe", 1, &error);
            // Each attempt asks the next node, so that one node down does not stop notices.
            let next = self.next_subscription.fetch_add(1, Ordering::Relaxed);
            let client = &self.subscribe_to[next % self.subscribe_to.len()];
            let mut pubsub = client.get_async_pubsub().await.map_err(unavailable)?;
            pubsub
                .subscribe(self.notice_channel(instance))
                .await
                .map_err(unavailable)?;
            let notices = pubsub.into_on_message().filter_map(|message| async move {
                let notice = serde_json::from_slice(message.get_payload_bytes());
                if notice.is_err() {
                    warn!("ignored a notice this server did not write");
                }
                notice.ok()
            });
            Ok(Box::pin(notices) as BoxStream<'static, Notice>)
        })
    }

    fn outlives_instance(&self) -> bool {
        true
    }
}
