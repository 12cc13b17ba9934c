//! # readyws-server
//!
//! The reference readyws v1 server (`docs/PROTOCOL.md`), on axum and tokio: the server side of
//! the incident this protocol exists for. A backend publishes to a user whose connection is not
//! registered yet, or not any more, and the message waits in that user's mailbox until a session
//! of the user acknowledges it.
//!
//! - Every socket is driven by the protocol crate's [`readyws_protocol::ServerConnection`]; this
//!   crate adds what spans connections: users, their sessions (live, or kept for the resume
//!   window), and their mailboxes.
//! - **Start-up gate**: with [`ServerOptions::wait_for_startup`], sockets get `welcome` with
//!   `phase: "starting"` until [`ServerHandle::mark_started`]; after
//!   [`ServerOptions::startup_max_wait`] they get `goaway` 4002 with `retry_after_ms` [SG-1–SG-4].
//! - **Delivery**: [`ServerHandle::publish`] copies a message to every session of the user and
//!   keeps it in the user's mailbox until one of them acknowledges it [CU-1–CU-5]. A session that
//!   becomes ready receives every held message it lacks, oldest first, before anything newer.
//! - **Inbound**: an [`InboundHandler`] sees each client message once; the `ack` goes out after it
//!   returns [`Decision::Accept`], a `nack` with its code and reason after [`Decision::Refuse`].
//! - **Several instances** (feature `redis`): with `ServerOptions::redis`, users, sessions and
//!   mailboxes live in a shared Redis (`RedisStore`): a publish on any instance reaches the user's
//!   session on any other, and a client whose instance died resumes its session on another with
//!   nothing lost.
//! - **Metrics** go through the `metrics` facade to the application's recorder; the server
//!   installs none. [`prometheus_recorder`] builds one, and [`ServerOptions::prometheus`] serves
//!   it at `/metrics`.
//!
//! ```no_run
//! use readyws_server::{AcceptAll, InsecureDevAuth, Server, ServerOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::new(ServerOptions::default(), InsecureDevAuth, AcceptAll);
//! let handle = server.handle();
//! // Mount it in an existing axum app …
//! let app = axum::Router::new().nest("/realtime", server.router());
//! # drop(app);
//! // … and publish from anywhere.
//! let data = readyws_protocol::Data::from_json(r#"{"text":"hi"}"#).unwrap();
//! handle.publish(&"alice".into(), data).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod accept;
mod auth;
mod connection;
mod http;
mod hub;
mod metrics;
pub use metrics::prometheus_recorder;
/// The handle that renders a Prometheus recorder ([`prometheus_recorder`]).
pub use metrics_exporter_prometheus::PrometheusHandle;
mod options;
mod prepared;
#[cfg(feature = "redis")]
mod redis_store;
mod socket;
mod store;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use readyws_protocol::{Data, Time};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

pub use auth::{
    AuthError, AuthReply, Authenticator, InsecureDevAuth, JwksFetch, Jwt, JwtKeyError, UserId,
};
pub use options::{Deadlines, MailboxLimits, OverflowPolicy, ServerLimits, ServerOptions};
pub use readyws_hub::UserRecord;
/// The protocol settings [`ServerOptions::protocol`] takes (window, frame size, heartbeat,
/// resume window), so that an application needs no direct dependency on the protocol crate.
pub use readyws_protocol::ServerConfig;
#[cfg(feature = "redis")]
pub use redis_store::{CLUSTER_SCHEME, DEADLINE_SHARDS, RedisStore};
pub use store::{
    Commit, Due, MemoryStore, Notice, SentCommit, Store, StoreError, UPDATE_ATTEMPTS, Versioned,
    Written,
};

use hub::{ConnCommand, ConnHandle, Custody};

/// A client message, as the [`InboundHandler`] sees it.
#[derive(Debug)]
pub struct Inbound<'a> {
    /// Who sent it.
    pub user: &'a UserId,
    /// On which session.
    pub session_id: &'a str,
    /// The message.
    pub data: &'a Data,
}

/// What the handler decided about a client message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Processed: the client gets an `ack`.
    Accept,
    /// Refused for good: the client gets a `nack` with this code and reason, and stops retrying.
    Refuse {
        /// A `nack` code, such as `forbidden`.
        code: String,
        /// Why, in words.
        reason: String,
    },
}

/// What [`InboundHandler::on_message`] returns: a decision made at once, or one that needs to
/// wait (for a database, or for [`ServerHandle::publish`]).
pub enum Reply<'a> {
    /// Decided.
    Now(Decision),
    /// Decided once this completes.
    Later(Pin<Box<dyn Future<Output = Decision> + Send + 'a>>),
}

impl<'a> Reply<'a> {
    /// A decision that is made by `future`.
    pub fn later(future: impl Future<Output = Decision> + Send + 'a) -> Self {
        Reply::Later(Box::pin(future))
    }

    async fn decision(self) -> Decision {
        match self {
            Reply::Now(decision) => decision,
            Reply::Later(future) => future.await,
        }
    }
}

impl From<Decision> for Reply<'_> {
    fn from(decision: Decision) -> Self {
        Reply::Now(decision)
    }
}

impl std::fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Now(decision) => f.debug_tuple("Now").field(decision).finish(),
            Reply::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// Receives every client message once, in order per session. It runs on the connection's task:
/// a message is acknowledged only after its decision is made, and the next message waits for it,
/// so keep it quick or hand work off. A closure `Fn(&ServerHandle, Inbound) -> Decision` is a
/// handler.
pub trait InboundHandler: Send + Sync + 'static {
    /// Decides about one message. `server` can publish, for replies.
    fn on_message<'a>(&'a self, server: &'a ServerHandle, message: Inbound<'a>) -> Reply<'a>;
}

impl<F> InboundHandler for F
where
    F: Fn(&ServerHandle, Inbound<'_>) -> Decision + Send + Sync + 'static,
{
    fn on_message<'a>(&'a self, server: &'a ServerHandle, message: Inbound<'a>) -> Reply<'a> {
        Reply::Now(self(server, message))
    }
}

/// Accepts every client message and does nothing with it.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;

impl InboundHandler for AcceptAll {
    fn on_message<'a>(&'a self, _: &'a ServerHandle, _: Inbound<'a>) -> Reply<'a> {
        Reply::Now(Decision::Accept)
    }
}

/// Publishes every client message back to its user, unchanged: the `--echo` of `readyws serve`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl InboundHandler for Echo {
    fn on_message<'a>(&'a self, server: &'a ServerHandle, message: Inbound<'a>) -> Reply<'a> {
        Reply::later(async move {
            match server.publish(message.user, message.data.clone()).await {
                Ok(_) => Decision::Accept,
                // The sender learns that its message could not be echoed.
                Err(error) => Decision::Refuse {
                    code: "unavailable".to_owned(),
                    reason: error.to_string(),
                },
            }
        })
    }
}

pub use readyws_hub::PublishReport;

/// Why a publish was refused. Nothing was stored.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The user's mailbox is full and the policy is [`OverflowPolicy::RejectNew`].
    #[error("the user's mailbox is full ({messages} messages, {bytes} bytes held)")]
    MailboxFull {
        /// Messages held.
        messages: usize,
        /// Bytes held.
        bytes: usize,
    },
    /// The message alone exceeds the mailbox's byte bound.
    #[error("a {size}-byte message exceeds the mailbox limit of {limit} bytes")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The message's `msg` frame would exceed the connections' `max_frame_bytes` whatever its
    /// id: no session could ever carry it [FR-6].
    #[error(
        "a {size}-byte message fits no frame of at most {max_frame_bytes} bytes (data of at most {limit} bytes)"
    )]
    ExceedsFrame {
        /// The message's size.
        size: usize,
        /// The largest `data` a frame can carry.
        limit: usize,
        /// The connections' frame limit.
        max_frame_bytes: usize,
    },
    /// The server holds as many bytes for all users together as
    /// [`ServerLimits::max_held_bytes`] allows.
    #[error("the server holds {held_bytes} bytes for its users, its limit is {limit}")]
    ServerFull {
        /// Bytes held now.
        held_bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The user id is longer than [`ServerLimits::max_user_id_bytes`].
    #[error("a {length}-byte user id exceeds the limit of {limit} bytes")]
    UserIdTooLong {
        /// The id's length in bytes.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The shared store (Redis) failed through every retry; nothing was stored.
    #[error("the message store is unavailable: {0}")]
    Unavailable(StoreError),
}

impl From<readyws_hub::Refusal> for PublishError {
    fn from(refusal: readyws_hub::Refusal) -> Self {
        match refusal {
            readyws_hub::Refusal::MailboxFull { messages, bytes } => {
                PublishError::MailboxFull { messages, bytes }
            }
            readyws_hub::Refusal::TooLarge { size, limit } => {
                PublishError::TooLarge { size, limit }
            }
            readyws_hub::Refusal::ServerFull { held_bytes, limit } => {
                PublishError::ServerFull { held_bytes, limit }
            }
        }
    }
}

/// The lifecycle phase `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Waiting for [`ServerHandle::mark_started`].
    Starting,
    /// Making connections ready.
    Accepting,
    /// Shutting down.
    Stopping,
}

/// Locks `mutex`, poisoned or not. A panic while holding one of this crate's locks would be a
/// bug in this crate; the state each guards stays consistent between calls, so the server keeps
/// serving rather than failing every connection after it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) struct Shared {
    options: ServerOptions,
    protocol: ServerConfig,
    custody: Arc<Custody>,
    authenticator: Box<dyn Authenticator>,
    handler: Box<dyn InboundHandler>,
    started: watch::Sender<bool>,
    stopping: AtomicBool,
    epoch: std::time::Instant,
    /// Unix milliseconds at `epoch`: times in a shared store must mean the same on every
    /// instance.
    epoch_unix_ms: u64,
    next_connection: AtomicU64,
    connections: Mutex<HashMap<u64, ConnHandle>>,
    sweeper_started: AtomicBool,
}

impl Shared {
    pub(crate) fn now(&self) -> Time {
        let millis = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Time::from_millis(self.epoch_unix_ms.saturating_add(millis))
    }

    pub(crate) fn is_started(&self) -> bool {
        *self.started.borrow()
    }

    pub(crate) fn next_connection(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// WebSocket connections open now.
    pub(crate) fn connections_open(&self) -> usize {
        self.connections().len()
    }

    fn connections(&self) -> MutexGuard<'_, HashMap<u64, ConnHandle>> {
        lock(&self.connections)
    }

    pub(crate) fn register_connection(&self, id: u64, handle: ConnHandle) {
        let open = {
            let mut connections = self.connections();
            connections.insert(id, handle);
            connections.len()
        };
        metrics::connection_opened(open);
    }

    pub(crate) fn unregister_connection(&self, id: u64) {
        let open = {
            let mut connections = self.connections();
            connections.remove(&id);
            connections.len()
        };
        metrics::connection_closed(open);
    }
}

/// The reference server. Build it, take a [`ServerHandle`] to publish, then either mount
/// [`Server::router`] in your axum app or run [`Server::serve`].
pub struct Server {
    shared: Arc<Shared>,
    fallback: Option<axum::Router>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with these options, authenticating `hello` tokens with `authenticator` and handing
    /// client messages to `handler`.
    pub fn new(
        options: ServerOptions,
        authenticator: impl Authenticator,
        handler: impl InboundHandler,
    ) -> Self {
        let protocol = options.effective_protocol();
        // Every series exists from the start, so that a scrape lists it before its first event.
        metrics::register_all();
        let (started, _) = watch::channel(!options.wait_for_startup);
        let store = options
            .store
            .clone()
            .unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let custody = Arc::new(Custody::new(store, protocol.clone(), options.hub_limits()));
        let epoch_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        Server {
            shared: Arc::new(Shared {
                custody,
                protocol,
                options,
                authenticator: Box::new(authenticator),
                handler: Box::new(handler),
                started,
                stopping: AtomicBool::new(false),
                epoch: std::time::Instant::now(),
                epoch_unix_ms,
                next_connection: AtomicU64::new(1),
                connections: Mutex::new(HashMap::new()),
                sweeper_started: AtomicBool::new(false),
            }),
            fallback: None,
        }
    }

    /// Answers every request that matches none of the server's routes with `fallback`, for
    /// example the static files of a web page that uses the server (`readyws serve --static`).
    pub fn with_fallback(mut self, fallback: axum::Router) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// A handle to publish and to steer the server's lifecycle.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// The HTTP routes: `/ws` (the WebSocket endpoint), `POST /api/publish`, `/healthz`,
    /// `/readyz` and `/metrics`. Must be called inside a tokio runtime: it starts the task that
    /// expires resume windows and held messages (and, with Redis, renews this instance's lease
    /// and listens for other instances).
    ///
    /// Mounted in an application's own server, the router still bounds WebSocket connections,
    /// writes, publish bodies and everything the hub holds, but the deadlines before a request is
    /// complete and the bound on TCP connections are that server's to set (with hyper: a timer
    /// and `header_read_timeout`); [`Server::serve`] sets them from [`ServerOptions::deadlines`]
    /// and [`ServerOptions::limits`].
    pub fn router(&self) -> axum::Router {
        self.routes(http::Routes::All)
    }

    /// The routes clients reach: `/ws`, `/healthz` and `/readyz` (and the fallback). With
    /// [`Server::admin_router`] on another listener, the publish API and the metrics stay off the
    /// public port. Starts the background task as [`Server::router`] does.
    pub fn public_router(&self) -> axum::Router {
        self.routes(http::Routes::Public)
    }

    /// The routes operators and backends reach: `POST /api/publish`, `/metrics`, `/healthz` and
    /// `/readyz`.
    pub fn admin_router(&self) -> axum::Router {
        self.routes(http::Routes::Admin)
    }

    fn routes(&self, routes: http::Routes) -> axum::Router {
        if !self.shared.sweeper_started.swap(true, Ordering::SeqCst) {
            let shared = Arc::downgrade(&self.shared);
            if self.shared.custody.outlives_instance() {
                info!(
                    instance = self.shared.custody.instance(),
                    "using a store shared with other instances"
                );
            }
            tokio::spawn(hub::run_background(shared));
        }
        let router = http::router(self.shared.clone(), routes);
        match &self.fallback {
            Some(fallback) if routes != http::Routes::Admin => {
                router.fallback_service(fallback.clone())
            }
            _ => router,
        }
    }

    /// Serves [`Server::router`] on `listener` until `shutdown` completes, then shuts down
    /// gracefully: every connection gets `goaway` 4000 with a `retry_after_ms` spread at random
    /// over [`ServerOptions::shutdown_spread`], and the server returns once they have closed or
    /// [`ServerOptions::shutdown_grace`] has passed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        self.serve_routers(vec![(listener, router)], shutdown).await
    }

    /// As [`Server::serve`], with the publish API and `/metrics` on `admin` only
    /// ([`Server::admin_router`]) and the WebSocket endpoint on `public` only
    /// ([`Server::public_router`]): operators keep the internal routes off the public port. Both
    /// listeners share the server's bounds and deadlines.
    pub async fn serve_with_admin(
        self,
        public: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let routers = vec![(public, self.public_router()), (admin, self.admin_router())];
        self.serve_routers(routers, shutdown).await
    }

    async fn serve_routers(
        self,
        listeners: Vec<(TcpListener, axum::Router)>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let handle = self.handle();
        let (stop_accepting, stopped) = watch::channel(false);
        let serving: Vec<_> = listeners
            .into_iter()
            .map(|(listener, router)| {
                tokio::spawn(accept::accept_loop(
                    listener,
                    router,
                    self.shared.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        shutdown.await;
        handle.shutdown();
        let _ = stop_accepting.send(true);
        let deadline = tokio::time::Instant::now() + self.shared.options.shutdown_grace;
        while handle.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!(open = handle.open_connections(), "shutdown complete");
        for task in serving {
            task.abort();
        }
        Ok(())
    }
}

/// Publishes and steers the lifecycle; cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("readiness", &self.readiness())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Sends `data` to every session of `user`, holding it in the user's mailbox until one of them
    /// acknowledges it [CU-1]. Refused only when the user id is longer than allowed, the message
    /// fits no frame of the server's connections or is larger than the mailbox, the mailbox is
    /// full under [`OverflowPolicy::RejectNew`], the server holds as many bytes as
    /// [`ServerLimits::max_held_bytes`] allows, the server is stopping, or the Redis store failed
    /// through its retries — and then nothing was stored.
    pub async fn publish(&self, user: &UserId, data: Data) -> Result<PublishReport, PublishError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(PublishError::ShuttingDown);
        }
        self.shared.options.hub_limits().admit_user(user)?;
        let max_frame_bytes = self.shared.protocol.max_frame_bytes;
        let limit = readyws_protocol::frame::max_msg_data_bytes(max_frame_bytes);
        if data.len() > limit {
            return Err(PublishError::ExceedsFrame {
                size: data.len(),
                limit,
                max_frame_bytes,
            });
        }
        let now = self.shared.now();
        self.shared.custody.publish(user, data, now).await
    }

    /// Marks start-up complete: waiting sockets get `connection_ready` [SG-2].
    pub fn mark_started(&self) {
        self.shared.started.send_replace(true);
    }

    /// What `/readyz` reports.
    pub fn readiness(&self) -> Readiness {
        if self.shared.stopping.load(Ordering::SeqCst) {
            Readiness::Stopping
        } else if self.shared.is_started() {
            Readiness::Accepting
        } else {
            Readiness::Starting
        }
    }

    /// Messages held for `user` and not yet acknowledged.
    pub async fn mailbox_depth(&self, user: &UserId) -> Result<usize, StoreError> {
        self.shared.custody.mailbox_depth(user).await
    }

    /// WebSocket connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.connections().len()
    }

    /// Starts a graceful shutdown: new sockets are refused, and every open one gets `goaway` 4000
    /// with a `retry_after_ms` drawn uniformly from `[0, shutdown_spread)` so that clients do not
    /// all return at once.
    pub fn shutdown(&self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let spread =
            u64::try_from(self.shared.options.shutdown_spread.as_millis()).unwrap_or(u64::MAX);
        let connections: Vec<_> = self.shared.connections().values().cloned().collect();
        info!(connections = connections.len(), "shutting down");
        for connection in connections {
            let retry_after = Duration::from_millis(random_below(spread));
            connection.command(ConnCommand::Goaway {
                code: readyws_protocol::close::code::GOING_AWAY,
                reason: "server shutting down".to_owned(),
                retry_after: Some(retry_after),
            });
        }
    }
}

/// A uniformly random number in `[0, bound)` (0 when `bound` is 0).
pub(crate) fn random_below(bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).expect("the OS random number generator is available");
    u64::from_le_bytes(bytes) % bound
}

/// The README's example, compiled as a doctest so that it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
