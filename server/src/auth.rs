//! Who a `hello` token names: the [`Authenticator`] trait and the two built-in implementations.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use readyws_protocol::close::code;
use serde::Deserialize;
use thiserror::Error;

/// The authenticated identity a session belongs to [SE-3].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Wraps a user id.
    pub fn new(id: impl Into<String>) -> Self {
        UserId(id.into())
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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
}

impl AuthError {
    /// The `goaway` code for this refusal.
    pub fn goaway_code(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => code::UNAUTHORIZED,
            AuthError::Expired => code::TOKEN_EXPIRED,
            AuthError::Forbidden(_) => code::FORBIDDEN,
        }
    }
}

/// Turns the `hello` token into a user, or refuses it.
///
/// It runs on the connection's task for every `hello`, so it should be quick: verify a signature,
/// look up a cache. A slow authenticator delays only its own connection's `connection_ready`.
pub trait Authenticator: Send + Sync + 'static {
    /// The user `token` names.
    fn authenticate(&self, token: Option<&str>) -> Result<UserId, AuthError>;
}

/// HS256-signed JWTs: `sub` is the user id, and `exp` is required and enforced.
pub struct JwtHs256 {
    key: DecodingKey,
    validation: Validation,
}

impl JwtHs256 {
    /// Verifies tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token is expired the second `exp` passes: a client whose clock runs a little ahead
        // refreshes early rather than being refused mid-session later.
        validation.leeway = 0;
        JwtHs256 {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }
}

impl fmt::Debug for JwtHs256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtHs256 { secret: <redacted> }")
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Authenticator for JwtHs256 {
    fn authenticate(&self, token: Option<&str>) -> Result<UserId, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) if !data.claims.sub.is_empty() => Ok(UserId(data.claims.sub)),
            Ok(_) => Err(AuthError::Invalid("empty `sub` claim".to_owned())),
            Err(error) => match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                // The error kind alone: its text never includes the token.
                kind => Err(AuthError::Invalid(format!("{kind:?}"))),
            },
        }
    }
}

/// **Insecure, for development only**: the token *is* the user id, and anyone can be anyone.
#[derive(Clone, Copy, Debug, Default)]
pub struct InsecureDevAuth;

impl Authenticator for InsecureDevAuth {
    fn authenticate(&self, token: Option<&str>) -> Result<UserId, AuthError> {
        match token {
            Some(user) if !user.is_empty() => Ok(UserId(user.to_owned())),
            _ => Err(AuthError::Missing),
        }
    }
}
