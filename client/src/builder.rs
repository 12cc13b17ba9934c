//! Every setting of a [`Client`], each with its default.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use readyws_protocol::{BackoffConfig, ClientConfig, OutboxLimits, ResetPolicy};

use crate::Client;

/// What `send` does when the queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Fail at once and hand the message back. The default.
    #[default]
    Error,
    /// Wait until a message ends and frees room.
    Wait,
}

pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;
pub(crate) type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Configures a [`Client`]; [`ClientBuilder::connect`] starts it.
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) protocol: ClientConfig,
    pub(crate) token_provider: Option<TokenProvider>,
    pub(crate) overflow: Overflow,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) seed: Option<u64>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("overflow", &self.overflow)
            .field("token_provider", &self.token_provider.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: String) -> Self {
        ClientBuilder {
            url,
            protocol: ClientConfig::default().sdk("readyws-rust", env!("CARGO_PKG_VERSION")),
            token_provider: None,
            overflow: Overflow::Error,
            headers: Vec::new(),
            tls: None,
            seed: None,
        }
    }

    /// A fixed token for `hello`. Default: none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.protocol = self.protocol.token(token);
        self
    }

    /// An async function called before every connection attempt for the token to send, so that
    /// an expired token is refreshed instead of retried (a 41xx refusal calls it too). Default:
    /// none (the fixed token, if any, is used).
    pub fn token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        self.token_provider = Some(Arc::new(move || Box::pin(provider()) as TokenFuture));
        self
    }

    /// Queue bounds: messages, bytes, and the largest message. Default: 1,000 messages, 1 MiB,
    /// 256 KiB.
    pub fn queue(mut self, limits: OutboxLimits) -> Self {
        self.protocol = self.protocol.outbox(limits);
        self
    }

    /// What `send` does when the queue is full. Default: [`Overflow::Error`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// The time-to-live of messages sent without their own. Default: none.
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.protocol = self.protocol.default_ttl(ttl);
        self
    }

    /// The reconnect delays: first delay in `[initial, 2 × initial)`, growing to `[max/2, max)`.
    /// Default: 500 ms and 30 s, never giving up.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.protocol = self.protocol.backoff(BackoffConfig {
            initial,
            max,
            max_attempts: None,
        });
        self
    }

    /// Give up after this many failed attempts in a row. Default: never.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        let mut backoff = self.protocol.backoff;
        backoff.max_attempts = Some(attempts);
        self.protocol = self.protocol.backoff(backoff);
        self
    }

    /// How long opening a socket may take (tokio-tungstenite has no limit of its own). Default:
    /// 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.protocol = self.protocol.connect_timeout(timeout);
        self
    }

    /// How long from socket open to `connection_ready`. Default: 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.protocol = self.protocol.handshake_timeout(timeout);
        self
    }

    /// How long to wait for a server that says it is starting. Default: 60 s.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.protocol = self.protocol.startup_timeout(timeout);
        self
    }

    /// What happens to messages in flight when the server lost the session. Default:
    /// [`ResetPolicy::Resend`].
    pub fn reset_policy(mut self, policy: ResetPolicy) -> Self {
        self.protocol = self.protocol.reset_policy(policy);
        self
    }

    /// An extra request header for native servers that want one (browsers cannot send them, so
    /// readyws itself never needs one). Default: none.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The TLS configuration for `wss://` (for example with your own root certificates).
    /// Default: the webpki roots, with the `ring` crypto provider.
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The seed of the reconnect jitter. Default: drawn from the operating system, so that
    /// clients do not reconnect in lock-step.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Starts the client: it connects at once, in a task of the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn connect(self) -> Client {
        crate::driver::start(self)
    }
}
