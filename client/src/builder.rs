//! Every setting of a [`Client`], each with its default.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use readyws_protocol::{BackoffConfig, ClientConfig, OutboxLimits, ResetPolicy};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::Client;

/// The messages the stream holds for the application by default ([`ClientBuilder::message_buffer`]).
pub const DEFAULT_MESSAGE_BUFFER: usize = 256;

/// Why [`ClientBuilder::connect`] refused to start a client: a setting that could never work,
/// reported at once instead of being retried on every reconnect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The URL does not parse.
    #[error("`{url}` is not a URL: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What the parser found.
        reason: url::ParseError,
    },
    /// The URL's scheme is not `ws` or `wss`.
    #[error("`{url}`: the scheme must be ws or wss, not {scheme}")]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// A `wss://` URL in a build without a TLS feature.
    #[error(
        "`{url}` needs TLS, and this build of readyws has none: enable the feature `rustls-ring`, `rustls-aws-lc-rs` or `native-tls`"
    )]
    NoTls {
        /// The URL as given.
        url: String,
    },
    /// The TLS backend could not be set up.
    #[error("TLS could not be set up: {0}")]
    Tls(String),
    /// An extra header's name or value is not one HTTP allows (for example a line break).
    #[error("header `{name}` is not a valid HTTP header: {reason}")]
    InvalidHeader {
        /// The header's name, as given.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

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
    #[cfg(any(feature = "rustls-ring", feature = "rustls-aws-lc-rs"))]
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) seed: Option<u64>,
    pub(crate) message_buffer: usize,
}

/// A [`ClientBuilder`] that [`ClientBuilder::connect`] has checked: what the driver uses.
pub(crate) struct Checked {
    pub(crate) url: url::Url,
    pub(crate) protocol: ClientConfig,
    pub(crate) token_provider: Option<TokenProvider>,
    pub(crate) overflow: Overflow,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// `None` for `ws://`.
    pub(crate) connector: Option<Connector>,
    pub(crate) seed: Option<u64>,
    pub(crate) message_buffer: usize,
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
            #[cfg(any(feature = "rustls-ring", feature = "rustls-aws-lc-rs"))]
            tls: None,
            seed: None,
            message_buffer: DEFAULT_MESSAGE_BUFFER,
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

    /// How many received messages the stream holds for the application. When it is full the
    /// client stops reading from the socket: the server's window fills and it holds further
    /// messages in the user's mailbox, so an application that stops reading slows the server
    /// instead of growing this process's memory. A pause longer than twice the server's
    /// heartbeat interval ends the connection, and the client resumes once the application
    /// reads again. Default: [`DEFAULT_MESSAGE_BUFFER`] (256); at least 1.
    pub fn message_buffer(mut self, messages: usize) -> Self {
        self.message_buffer = messages.max(1);
        self
    }

    /// The rustls configuration for `wss://` (for example with your own root certificates).
    /// Default: the webpki roots, with the crypto provider of the enabled feature (`ring` or
    /// `aws-lc-rs`), set on this configuration only.
    #[cfg(any(feature = "rustls-ring", feature = "rustls-aws-lc-rs"))]
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

    /// Checks the settings and starts the client: it connects at once, in a task of the current
    /// tokio runtime. A URL that is not `ws://` or `wss://`, a `wss://` URL without a TLS
    /// feature, or a header HTTP does not allow fails here, once, instead of on every attempt.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn connect(self) -> Result<Client, BuildError> {
        Ok(crate::driver::start(self.check()?))
    }

    fn check(self) -> Result<Checked, BuildError> {
        let url = url::Url::parse(&self.url).map_err(|reason| BuildError::InvalidUrl {
            url: self.url.clone(),
            reason,
        })?;
        let secure = match url.scheme() {
            "ws" => false,
            "wss" => true,
            other => {
                return Err(BuildError::UnsupportedScheme {
                    url: self.url.clone(),
                    scheme: other.to_owned(),
                });
            }
        };
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| {
                let invalid = |reason: String| BuildError::InvalidHeader {
                    name: name.clone(),
                    reason,
                };
                Ok((
                    HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?,
                    HeaderValue::from_str(value).map_err(|e| invalid(e.to_string()))?,
                ))
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        let connector = if secure {
            Some(self.connector(&url)?)
        } else {
            None
        };
        Ok(Checked {
            url,
            protocol: self.protocol,
            token_provider: self.token_provider,
            overflow: self.overflow,
            headers,
            connector,
            seed: self.seed,
            message_buffer: self.message_buffer,
        })
    }

    /// The TLS connector for `wss://`: the application's rustls configuration, or the enabled
    /// feature's default, built with its provider passed explicitly.
    #[allow(unused_variables, clippy::needless_return)]
    fn connector(&self, url: &url::Url) -> Result<Connector, BuildError> {
        #[cfg(any(feature = "rustls-ring", feature = "rustls-aws-lc-rs"))]
        if let Some(config) = &self.tls {
            return Ok(Connector::Rustls(config.clone()));
        }
        #[cfg(feature = "native-tls")]
        {
            return native_tls::TlsConnector::new()
                .map(Connector::NativeTls)
                .map_err(|e| BuildError::Tls(e.to_string()));
        }
        #[cfg(all(not(feature = "native-tls"), feature = "rustls-aws-lc-rs"))]
        {
            return rustls_default(rustls::crypto::aws_lc_rs::default_provider());
        }
        #[cfg(all(
            not(feature = "native-tls"),
            not(feature = "rustls-aws-lc-rs"),
            feature = "rustls-ring"
        ))]
        {
            return rustls_default(rustls::crypto::ring::default_provider());
        }
        #[cfg(not(any(
            feature = "native-tls",
            feature = "rustls-aws-lc-rs",
            feature = "rustls-ring"
        )))]
        {
            return Err(BuildError::NoTls {
                url: url.to_string(),
            });
        }
    }
}

/// A rustls configuration with the webpki roots and `provider`, which is given to this
/// configuration alone: the process-wide default provider is the application's choice.
#[cfg(any(feature = "rustls-ring", feature = "rustls-aws-lc-rs"))]
fn rustls_default(provider: rustls::crypto::CryptoProvider) -> Result<Connector, BuildError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}
