//! Server settings, each with a documented default.

use std::fmt;
use std::time::Duration;

use readyws_protocol::{OutboxLimits, ServerConfig};

pub use readyws_hub::{MailboxLimits, OverflowPolicy};

/// Server-wide bounds: what the whole server, or one user, can make it hold. Each bound that bites
/// is counted in `readyws_limit_refusals_total{limit}` and refused clearly (HTTP 503 with the JSON
/// error body before an upgrade, a `goaway` with `retry_after_ms` after it, or a publish error).
///
/// With the Redis store, `max_connections` and `max_user_id_bytes` apply as they do in memory;
/// `max_sessions_per_user` and `max_held_bytes` are checked by the in-memory store only (Redis
/// bounds each user's mailbox, and its own `maxmemory` the whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLimits {
    /// The most TCP connections open at once, HTTP and WebSocket together. At the bound, the
    /// oldest connection that has not finished its request head (or sits idle between HTTP
    /// requests) is closed to make room; when there is none, the new one gets `503`. Keep it
    /// below the process's open-file limit. Default: 10,000.
    pub max_connections: usize,
    /// The most sessions one user has at once, live or kept for resume. A new session past it
    /// ends the user's oldest detached session first; when every one is live, the connection gets
    /// `goaway` 4003 with `retry_after_ms`. Default: 16.
    pub max_sessions_per_user: usize,
    /// The most bytes of `data` held for all users together. A publish past it is refused
    /// ([`crate::PublishError::ServerFull`], HTTP 503); no other message is dropped to make room.
    /// Default: 256 MiB.
    pub max_held_bytes: usize,
    /// The longest user id, in bytes, that a token may name or a publish may address. A longer
    /// one is refused: `goaway` 4200 for a connection, HTTP 400 for a publish. Default: 256.
    pub max_user_id_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 10_000,
            max_sessions_per_user: 16,
            max_held_bytes: 256 << 20,
            max_user_id_bytes: 256,
        }
    }
}

impl ServerLimits {
    /// Sets [`ServerLimits::max_connections`].
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Sets [`ServerLimits::max_sessions_per_user`].
    pub fn max_sessions_per_user(mut self, sessions: usize) -> Self {
        self.max_sessions_per_user = sessions;
        self
    }

    /// Sets [`ServerLimits::max_held_bytes`].
    pub fn max_held_bytes(mut self, bytes: usize) -> Self {
        self.max_held_bytes = bytes;
        self
    }

    /// Sets [`ServerLimits::max_user_id_bytes`].
    pub fn max_user_id_bytes(mut self, bytes: usize) -> Self {
        self.max_user_id_bytes = bytes;
        self
    }
}

/// Deadlines on every wait a peer controls before and around the protocol's own (the `hello`
/// timeout and the heartbeat are [`ServerConfig`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deadlines {
    /// From the connection's acceptance to its complete request head, and for each further
    /// request head on a kept-alive HTTP connection (including the idle wait before it); it
    /// covers the WebSocket upgrade too. Past it the connection is closed
    /// (`readyws_deadlines_total{stage="request_head"}`). Default: 10 s.
    pub request_head: Duration,
    /// How long one write to a WebSocket may stay blocked (a client that stopped reading)
    /// before the connection is dropped (`readyws_deadlines_total{stage="write"}`). `None`:
    /// twice the heartbeat interval. Default: `None`.
    pub write: Option<Duration>,
    /// How long the [`crate::Authenticator`] may take over one `hello` before the connection
    /// gets `goaway` 4003 with `retry_after_ms` (`readyws_deadlines_total{stage="authenticate"}`).
    /// Default: 10 s.
    pub authenticate: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            request_head: Duration::from_secs(10),
            write: None,
            authenticate: Duration::from_secs(10),
        }
    }
}

impl Deadlines {
    /// Sets [`Deadlines::request_head`].
    pub fn request_head(mut self, deadline: Duration) -> Self {
        self.request_head = deadline;
        self
    }

    /// Sets [`Deadlines::authenticate`].
    pub fn authenticate(mut self, deadline: Duration) -> Self {
        self.authenticate = deadline;
        self
    }

    /// Sets [`Deadlines::write`].
    pub fn write(mut self, deadline: Option<Duration>) -> Self {
        self.write = deadline;
        self
    }
}

/// The bounds the hub checks, in one place.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) mailbox: MailboxLimits,
    pub(crate) max_held_bytes: usize,
    pub(crate) max_sessions_per_user: usize,
    pub(crate) max_user_id_bytes: usize,
}

impl Limits {
    /// Refuses a user id longer than the bound.
    pub(crate) fn admit_user(&self, user: &crate::UserId) -> Result<(), crate::PublishError> {
        let length = user.as_str().len();
        if length > self.max_user_id_bytes {
            crate::metrics::limit_refused("user_id_bytes");
            return Err(crate::PublishError::UserIdTooLong {
                length,
                limit: self.max_user_id_bytes,
            });
        }
        Ok(())
    }
}

/// Everything the server can be told. Start from [`ServerOptions::default`].
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Protocol settings announced in `welcome` (heartbeat, frame limit, window, resume window,
    /// hello timeout). Default: [`ServerConfig::default`], whose outbox bounds are replaced by
    /// ones derived from the mailbox so that a session never refuses a held message.
    pub protocol: ServerConfig,
    /// Per-user mailbox bounds. Default: [`MailboxLimits::default`].
    pub mailbox: MailboxLimits,
    /// Whether new sockets wait for [`crate::ServerHandle::mark_started`] (`phase: "starting"`).
    /// Default: `false` (the server accepts at once).
    pub wait_for_startup: bool,
    /// How long a socket waits for start-up before `goaway` 4002. Default: 30 s.
    pub startup_max_wait: Duration,
    /// The `retry_after_ms` sent with that `goaway`. Default: 5 s.
    pub startup_retry_after: Duration,
    /// At shutdown, each session's `retry_after_ms` is drawn uniformly from `[0, spread)`.
    /// Default: 10 s.
    pub shutdown_spread: Duration,
    /// How long shutdown waits for connections to close after the `goaway`s. Default: 5 s.
    pub shutdown_grace: Duration,
    /// The bearer key of the HTTP publish API; without one the API answers 403. Default: none.
    pub api_key: Option<String>,
    /// Where users, sessions and mailboxes live. Default: none, a [`crate::MemoryStore`] in
    /// this process (one instance serves every user). With a store that outlives the instance
    /// (`RedisStore`, feature `redis`), every instance that shares it serves any user, and a session
    /// outlives the instance that carried it.
    pub store: Option<std::sync::Arc<dyn crate::Store>>,
    /// Server-wide bounds. Default: [`ServerLimits::default`].
    pub limits: ServerLimits,
    /// Deadlines on waits a peer controls. Default: [`Deadlines::default`].
    pub deadlines: Deadlines,
    /// What `/metrics` renders: the handle of the Prometheus recorder the application installed
    /// ([`crate::prometheus_recorder`]). Default: none, and `/metrics` answers 404; the server's
    /// metrics still go to whatever recorder the process has.
    pub prometheus: Option<crate::PrometheusHandle>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            protocol: ServerConfig::default(),
            mailbox: MailboxLimits::default(),
            wait_for_startup: false,
            startup_max_wait: Duration::from_secs(30),
            startup_retry_after: Duration::from_secs(5),
            shutdown_spread: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            api_key: None,
            store: None,
            limits: ServerLimits::default(),
            deadlines: Deadlines::default(),
            prometheus: None,
        }
    }
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("protocol", &self.protocol)
            .field("mailbox", &self.mailbox)
            .field("wait_for_startup", &self.wait_for_startup)
            .field("startup_max_wait", &self.startup_max_wait)
            .field("startup_retry_after", &self.startup_retry_after)
            .field("shutdown_spread", &self.shutdown_spread)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("store", &self.store.as_ref().map(|_| "<custom>"))
            .field("limits", &self.limits)
            .field("deadlines", &self.deadlines)
            .field("prometheus", &self.prometheus.is_some())
            .finish()
    }
}

impl ServerOptions {
    /// Sets the protocol settings.
    pub fn protocol(mut self, protocol: ServerConfig) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the mailbox bounds.
    pub fn mailbox(mut self, mailbox: MailboxLimits) -> Self {
        self.mailbox = mailbox;
        self
    }

    /// Makes new sockets wait for [`crate::ServerHandle::mark_started`].
    pub fn wait_for_startup(mut self, wait: bool) -> Self {
        self.wait_for_startup = wait;
        self
    }

    /// Sets how long sockets wait for start-up, and the `retry_after_ms` they get after.
    pub fn startup_max_wait(mut self, wait: Duration, retry_after: Duration) -> Self {
        self.startup_max_wait = wait;
        self.startup_retry_after = retry_after;
        self
    }

    /// Sets the shutdown spread and grace period.
    pub fn shutdown(mut self, spread: Duration, grace: Duration) -> Self {
        self.shutdown_spread = spread;
        self.shutdown_grace = grace;
        self
    }

    /// Sets the publish API key.
    pub fn api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// Keeps users, sessions and mailboxes in `store`, shared with other instances (feature
    /// `redis`).
    #[cfg(feature = "redis")]
    pub fn redis(self, store: crate::RedisStore) -> Self {
        self.store(store)
    }

    /// Serves `/metrics` from `handle`, the handle of the Prometheus recorder the application
    /// installed ([`crate::prometheus_recorder`]).
    pub fn prometheus(mut self, handle: crate::PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// Keeps users, sessions and mailboxes in `store` (`docs/ARCHITECTURE.md`, "Writing a
    /// store").
    pub fn store(mut self, store: impl crate::Store) -> Self {
        self.store = Some(std::sync::Arc::new(store));
        self
    }

    /// Sets the server-wide bounds.
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the deadlines on waits a peer controls.
    pub fn deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// The bounds the hub checks.
    pub(crate) fn hub_limits(&self) -> Limits {
        Limits {
            mailbox: self.mailbox,
            max_held_bytes: self.limits.max_held_bytes,
            max_sessions_per_user: self.limits.max_sessions_per_user.max(1),
            max_user_id_bytes: self.limits.max_user_id_bytes,
        }
    }

    /// How long a blocked write may last.
    pub(crate) fn write_deadline(&self) -> Duration {
        self.deadlines
            .write
            .unwrap_or(self.protocol.heartbeat.saturating_mul(2))
    }

    /// The protocol settings with session outboxes as large as a full mailbox plus the messages
    /// in flight: every queued copy is of a record the mailbox holds (a record the mailbox drops
    /// is withdrawn from the outboxes while unsent), so beyond the mailbox a session holds at
    /// most the window of transmitted copies whose record was dropped, each no larger than a
    /// mailbox admits.
    pub(crate) fn effective_protocol(&self) -> ServerConfig {
        let window = usize::try_from(self.protocol.max_inflight).unwrap_or(usize::MAX);
        let largest = self.protocol.max_frame_bytes.min(self.mailbox.max_bytes);
        self.protocol.clone().outbox(OutboxLimits {
            max_messages: self.mailbox.max_messages.saturating_add(window),
            max_bytes: self
                .mailbox
                .max_bytes
                .saturating_add(window.saturating_mul(largest)),
            max_message_bytes: self.protocol.max_frame_bytes,
        })
    }
}
