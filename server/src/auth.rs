//! Who a `hello` token names: the [`Authenticator`] trait and the built-in implementations, JWTs
//! ([`Jwt`]: HS256 with a secret, RS256 or ES256 with a PEM public key or a JWKS document from a
//! file or an `https://` URL) and [`InsecureDevAuth`] for development.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use readyws_protocol::close::code;
use serde::Deserialize;
use thiserror::Error;
use tracing::{info, warn};

use crate::metrics as m;

pub use readyws_hub::UserId;

/// Why a token was refused. Each maps to the `goaway` code the client acts on [GA-2].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token was sent (4100: the client should obtain one and reconnect).
    #[error("no token in hello")]
    Missing,
    /// The token is not valid (4100).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token has expired (4101: the client should refresh it and reconnect).
    #[error("token expired")]
    Expired,
    /// The user may not connect at all (4200: the client must not reconnect).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The token could not be checked now (a key set that cannot be fetched, a database that
    /// does not answer): 4003, and the client retries later.
    #[error("authentication is unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The `goaway` code for this refusal.
    pub fn goaway_code(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => code::UNAUTHORIZED,
            AuthError::Expired => code::TOKEN_EXPIRED,
            AuthError::Forbidden(_) => code::FORBIDDEN,
            AuthError::Unavailable(_) => code::OVERLOADED,
        }
    }
}

/// What [`Authenticator::authenticate`] returns: a verdict reached at once (a signature check),
/// or one that needs to wait (a database lookup, a key set to fetch).
pub enum AuthReply<'a> {
    /// Decided.
    Now(Result<UserId, AuthError>),
    /// Decided once this completes.
    Later(Pin<Box<dyn Future<Output = Result<UserId, AuthError>> + Send + 'a>>),
}

impl<'a> AuthReply<'a> {
    /// A verdict that `future` reaches.
    pub fn later(future: impl Future<Output = Result<UserId, AuthError>> + Send + 'a) -> Self {
        AuthReply::Later(Box::pin(future))
    }

    pub(crate) async fn verdict(self) -> Result<UserId, AuthError> {
        match self {
            AuthReply::Now(verdict) => verdict,
            AuthReply::Later(future) => future.await,
        }
    }
}

impl From<Result<UserId, AuthError>> for AuthReply<'_> {
    fn from(verdict: Result<UserId, AuthError>) -> Self {
        AuthReply::Now(verdict)
    }
}

impl fmt::Debug for AuthReply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthReply::Now(verdict) => f.debug_tuple("Now").field(verdict).finish(),
            AuthReply::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// Turns the `hello` token into a user, or refuses it.
///
/// It runs on the connection's task for every `hello`. It may wait (for a database, say), within
/// [`crate::Deadlines::authenticate`]: past it the connection gets `goaway` 4003 and its client
/// retries. A slow authenticator delays only its own connection's `connection_ready`.
pub trait Authenticator: Send + Sync + 'static {
    /// The user `token` names.
    fn authenticate<'a>(&'a self, token: Option<&'a str>) -> AuthReply<'a>;
}

/// Why a [`Jwt`] authenticator could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JwtKeyError {
    /// The PEM text holds no public key of the algorithm's kind.
    #[error("not a {algorithm:?} public key in PEM: {detail}")]
    BadPem {
        /// The algorithm the key was for.
        algorithm: Algorithm,
        /// What was wrong.
        detail: String,
    },
    /// The JWKS document is not one, or holds no key this server can use.
    #[error("unusable JWKS document: {0}")]
    BadJwks(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The JWKS URL is not an `https://` URL, or fetching it failed.
    #[error("cannot fetch the JWKS document: {0}")]
    Fetch(String),
}

/// How a JWKS document is fetched from an `https://` URL.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JwksFetch {
    /// How often the document is fetched again, so that rotated keys are picked up. A token
    /// naming a key id the set lacks also fetches it again, at most once per
    /// [`JwksFetch::min_refresh`]. Default: 5 minutes.
    pub refresh: Duration,
    /// The shortest time between two fetches caused by unknown key ids. Default: 30 s.
    pub min_refresh: Duration,
    /// The deadline of one fetch (connect, TLS, request and body). Default: 10 s.
    pub timeout: Duration,
    /// Certificates (PEM) trusted besides the Web PKI roots, for an identity provider behind an
    /// internal certificate authority. Default: none.
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for JwksFetch {
    fn default() -> Self {
        JwksFetch {
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            extra_roots_pem: None,
        }
    }
}

impl JwksFetch {
    /// Trusts the certificates in `pem` besides the Web PKI roots.
    pub fn extra_roots_pem(mut self, pem: Vec<u8>) -> Self {
        self.extra_roots_pem = Some(pem);
        self
    }

    /// Sets the shortest time between two fetches caused by unknown key ids.
    pub fn min_refresh(mut self, between: Duration) -> Self {
        self.min_refresh = between;
        self
    }

    /// Sets how often the document is fetched again.
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every;
        self
    }
}

/// One verification key: the algorithm it verifies and its key id, if the set names one.
struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// A JWKS document fetched from a URL, kept fresh.
struct Remote {
    url: hyper::Uri,
    fetch: JwksFetch,
    tls: Arc<rustls::ClientConfig>,
    last_fetch: std::sync::Mutex<tokio::time::Instant>,
}

struct KeySet {
    keys: RwLock<Arc<Vec<Key>>>,
    remote: Option<Remote>,
}

/// JWTs in `hello`: the signature is checked with the configured key or key set, `sub` is the
/// user id, `exp` is required and enforced, `nbf` is enforced when present, and `iss` and `aud`
/// are checked when configured (a token's `aud` is ignored when none is). No leeway by
/// default: a token is expired the second `exp` passes.
pub struct Jwt {
    keys: Arc<KeySet>,
    validation: Validation,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithms: Vec<Algorithm> = self.keys().iter().map(|key| key.algorithm).collect();
        f.debug_struct("Jwt")
            .field("keys", &algorithms.len())
            .field("algorithms", &algorithms)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .field("leeway_s", &self.validation.leeway)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Jwt::with_keys(vec![Key {
            id: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        }])
    }

    /// RS256 tokens, checked with an RSA public key in PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, JwtKeyError> {
        Jwt::one_pem_key(Algorithm::RS256, DecodingKey::from_rsa_pem(pem))
    }

    /// ES256 tokens, checked with a P-256 public key in PEM (`PUBLIC KEY`).
    pub fn es256_pem(pem: &[u8]) -> Result<Self, JwtKeyError> {
        Jwt::one_pem_key(Algorithm::ES256, DecodingKey::from_ec_pem(pem))
    }

    fn one_pem_key(
        algorithm: Algorithm,
        key: jsonwebtoken::errors::Result<DecodingKey>,
    ) -> Result<Self, JwtKeyError> {
        let key = key.map_err(|error| JwtKeyError::BadPem {
            algorithm,
            detail: format!("{:?}", error.kind()),
        })?;
        Ok(Jwt::with_keys(vec![Key {
            id: None,
            algorithm,
            key,
        }]))
    }

    /// Tokens signed by any RS256 or ES256 key of a JWKS document (RFC 7517); a token's `kid`
    /// picks the key.
    pub fn jwks(document: &str) -> Result<Self, JwtKeyError> {
        Ok(Jwt::with_keys(parse_jwks(document)?))
    }

    /// [`Jwt::jwks`] with the document read from a file.
    pub fn jwks_file(path: impl AsRef<Path>) -> Result<Self, JwtKeyError> {
        let path = path.as_ref();
        let document = std::fs::read_to_string(path).map_err(|source| JwtKeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Jwt::jwks(&document)
    }

    /// [`Jwt::jwks`] with the document fetched from an `https://` URL now, then again every
    /// [`JwksFetch::refresh`] in the background for as long as the authenticator lives. A fetch
    /// that fails keeps the keys there are (logged and counted in
    /// `readyws_jwks_fetch_failures_total`). Must be called inside a tokio runtime.
    pub async fn jwks_url(url: &str, fetch: JwksFetch) -> Result<Self, JwtKeyError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|error| JwtKeyError::Fetch(format!("{url:?} is not a URL: {error}")))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(JwtKeyError::Fetch(format!(
                "{url:?} is not an https:// URL with a host"
            )));
        }
        let tls = Arc::new(tls_config(fetch.extra_roots_pem.as_deref())?);
        let document = fetch_document(&uri, &tls, fetch.timeout)
            .await
            .map_err(JwtKeyError::Fetch)?;
        let keys = parse_jwks(&document)?;
        let refresh = fetch.refresh;
        let set = Arc::new(KeySet {
            keys: RwLock::new(Arc::new(keys)),
            remote: Some(Remote {
                url: uri,
                fetch,
                tls,
                last_fetch: std::sync::Mutex::new(tokio::time::Instant::now()),
            }),
        });
        tokio::spawn(refresh_every(Arc::downgrade(&set), refresh));
        Ok(Jwt::from_set(set))
    }

    /// Accepts only tokens whose `iss` is `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
    }

    /// Accepts only tokens whose `aud` names one of `audiences`.
    pub fn audience(mut self, audiences: &[&str]) -> Self {
        self.validation.set_audience(audiences);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// Allows clocks to differ by this much when checking `exp` and `nbf`. Default: none.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }

    fn with_keys(keys: Vec<Key>) -> Self {
        Jwt::from_set(Arc::new(KeySet {
            keys: RwLock::new(Arc::new(keys)),
            remote: None,
        }))
    }

    fn from_set(keys: Arc<KeySet>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        // Without a configured audience a token's `aud` says nothing this server checks.
        validation.validate_aud = false;
        validation.leeway = 0;
        Jwt { keys, validation }
    }

    fn keys(&self) -> Arc<Vec<Key>> {
        self.keys
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Checks `token` with the key its header names; `None`: no key of the set matches.
    fn verify(&self, token: &str) -> Option<Result<UserId, AuthError>> {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            Err(error) => return Some(Err(AuthError::Invalid(format!("{:?}", error.kind())))),
        };
        let keys = self.keys();
        let key = keys.iter().find(|key| {
            key.algorithm == header.alg
                && match (&header.kid, &key.id) {
                    (Some(wanted), Some(id)) => wanted == id,
                    // A token without `kid` may be checked by a key set of one key only.
                    (None, _) => keys.len() == 1,
                    (Some(_), None) => keys.len() == 1,
                }
        });
        let Some(key) = key else {
            return if header.kid.is_some() && self.keys.remote.is_some() {
                None
            } else {
                Some(Err(AuthError::Invalid(format!(
                    "no key for algorithm {:?} and key id {:?}",
                    header.alg, header.kid
                ))))
            };
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![key.algorithm];
        Some(
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) if !data.claims.sub.is_empty() => Ok(UserId::new(data.claims.sub)),
                Ok(_) => Err(AuthError::Invalid("empty `sub` claim".to_owned())),
                Err(error) => match error.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                    // The error kind alone: its text never includes the token.
                    kind => Err(AuthError::Invalid(format!("{kind:?}"))),
                },
            },
        )
    }

    /// The key set fetched again because a token named a key id it lacks, at most once per
    /// [`JwksFetch::min_refresh`].
    async fn refresh_for_unknown_key(&self) -> Result<(), AuthError> {
        let Some(remote) = &self.keys.remote else {
            return Ok(());
        };
        {
            let mut last = crate::lock(&remote.last_fetch);
            if last.elapsed() < remote.fetch.min_refresh {
                return Ok(());
            }
            *last = tokio::time::Instant::now();
        }
        refresh(&self.keys)
            .await
            .map_err(|error| AuthError::Unavailable(error.to_string()))
    }
}

impl Authenticator for Jwt {
    fn authenticate<'a>(&'a self, token: Option<&'a str>) -> AuthReply<'a> {
        let Some(token) = token else {
            return AuthReply::Now(Err(AuthError::Missing));
        };
        match self.verify(token) {
            Some(verdict) => AuthReply::Now(verdict),
            None => AuthReply::later(async move {
                self.refresh_for_unknown_key().await?;
                self.verify(token).unwrap_or_else(|| {
                    Err(AuthError::Invalid(
                        "the token names a key id the key set lacks".to_owned(),
                    ))
                })
            }),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// The RS256 and ES256 keys of a JWKS document; keys of other kinds are skipped.
fn parse_jwks(document: &str) -> Result<Vec<Key>, JwtKeyError> {
    let set: JwkSet = serde_json::from_str(document)
        .map_err(|error| JwtKeyError::BadJwks(format!("not a JWKS document: {error}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        // A key declared for another algorithm (RS512, say) is not used for this one.
        let declared = jwk
            .common
            .key_algorithm
            .map(|declared| format!("{declared:?}"));
        if declared.is_some_and(|declared| declared != format!("{algorithm:?}")) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|error| {
            JwtKeyError::BadJwks(format!("key {:?}: {:?}", jwk.common.key_id, error.kind()))
        })?;
        keys.push(Key {
            id: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(JwtKeyError::BadJwks(
            "it holds no RS256 or ES256 (P-256) key".to_owned(),
        ));
    }
    Ok(keys)
}

/// Fetches the key set again every `every`, until the authenticator is dropped.
async fn refresh_every(set: Weak<KeySet>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(set) = set.upgrade() else {
            return;
        };
        if let Some(remote) = &set.remote {
            *crate::lock(&remote.last_fetch) = tokio::time::Instant::now();
        }
        if let Err(error) = refresh(&set).await {
            warn!(%error, "could not fetch the JWKS document again; keeping the keys there are");
        }
    }
}

async fn refresh(set: &KeySet) -> Result<(), JwtKeyError> {
    let Some(remote) = &set.remote else {
        return Ok(());
    };
    let fetched = fetch_document(&remote.url, &remote.tls, remote.fetch.timeout)
        .await
        .map_err(JwtKeyError::Fetch)
        .and_then(|document| parse_jwks(&document));
    match fetched {
        Ok(keys) => {
            info!(keys = keys.len(), "fetched the JWKS document");
            *set.keys
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
            Ok(())
        }
        Err(error) => {
            m::jwks_fetch_failed();
            Err(error)
        }
    }
}

/// The most bytes of a JWKS document.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The TLS settings of JWKS fetches: the Web PKI roots and `extra_roots_pem`, with the `ring`
/// provider chosen here rather than installed for the whole process.
fn tls_config(extra_roots_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, JwtKeyError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_roots_pem {
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate
                .map_err(|error| JwtKeyError::Fetch(format!("extra root certificates: {error}")))?;
            roots
                .add(certificate)
                .map_err(|error| JwtKeyError::Fetch(format!("extra root certificate: {error}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| JwtKeyError::Fetch(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `GET url` over HTTPS, within `timeout`, at most [`MAX_JWKS_BYTES`].
async fn fetch_document(
    url: &hyper::Uri,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<String, String> {
    tokio::time::timeout(timeout, fetch_once(url, tls))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
}

async fn fetch_once(url: &hyper::Uri, tls: &Arc<rustls::ClientConfig>) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;
    let host = url.host().ok_or("the URL has no host")?;
    // `[::1]` in a URL is `::1` to the resolver and to TLS.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|error| format!("connect to {host}:{port}: {error}"))?;
    let name = rustls::pki_types::ServerName::try_from(bare_host.to_owned())
        .map_err(|error| format!("{host} is not a TLS server name: {error}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|error| format!("TLS with {host}: {error}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|error| format!("HTTP with {host}: {error}"))?;
    let driving = tokio::spawn(connection);
    let path = url.path_and_query().map_or("/", |path| path.as_str());
    let request = hyper::Request::get(path)
        .header(
            hyper::header::HOST,
            url.authority().map_or(host, |a| a.as_str()),
        )
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|error| error.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("GET {url}: {error}"))?;
    if !response.status().is_success() {
        driving.abort();
        return Err(format!("GET {url}: {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|error| format!("GET {url}: {error}"))?
        .to_bytes();
    driving.abort();
    String::from_utf8(body.to_vec()).map_err(|_| format!("GET {url}: the body is not UTF-8"))
}

/// **Insecure, for development only**: the token *is* the user id, and anyone can be anyone.
#[derive(Clone, Copy, Debug, Default)]
pub struct InsecureDevAuth;

impl Authenticator for InsecureDevAuth {
    fn authenticate<'a>(&'a self, token: Option<&'a str>) -> AuthReply<'a> {
        AuthReply::Now(match token {
            Some(user) if !user.is_empty() => Ok(UserId::new(user)),
            _ => Err(AuthError::Missing),
        })
    }
}
