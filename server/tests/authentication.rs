//! Tokens in `hello`: the built-in HS256 JWT authenticator and its refusals as `goaway` codes.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use readyws_server::{AcceptAll, AuthReply, Authenticator, InsecureDevAuth, Jwt, ServerOptions};
use serde_json::json;
use support::{Raw, TestServer};

const SECRET: &[u8] = b"test-secret-of-enough-length-for-hs256";

fn token(sub: &str, expires_in: i64, secret: &[u8]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = json!({"sub": sub, "exp": now + expires_in});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

async fn goaway_for(
    server: &TestServer,
    hello: serde_json::Value,
) -> (serde_json::Value, Option<u16>) {
    let mut raw = Raw::connect(&server.url()).await;
    raw.recv().await;
    raw.send(hello).await;
    let goaway = raw.recv_type("goaway").await;
    (goaway, raw.closed().await)
}

/// [GA-2] A valid JWT makes the connection ready; a missing or forged one gets 4100, an expired
/// one 4101, each followed by a close with the same code [GA-1].
#[tokio::test]
async fn jwt_tokens_are_verified_and_refusals_carry_their_class() {
    let server =
        TestServer::start_with(ServerOptions::default(), Jwt::hs256(SECRET), AcceptAll).await;
    let (_, ready) = Raw::handshake(&server.url(), &token("alice", 60, SECRET), None).await;
    assert_eq!(ready["type"], "connection_ready");

    let (goaway, close) = goaway_for(&server, json!({"type": "hello"})).await;
    assert_eq!((goaway["code"].clone(), close), (json!(4100), Some(4100)));
    let forged = token("alice", 60, b"another-secret-entirely-different!!");
    let (goaway, _) = goaway_for(&server, json!({"type": "hello", "token": forged})).await;
    assert_eq!(goaway["code"], 4100);
    let expired = token("alice", -120, SECRET);
    let (goaway, close) = goaway_for(&server, json!({"type": "hello", "token": expired})).await;
    assert_eq!((goaway["code"].clone(), close), (json!(4101), Some(4101)));
    server.stop().await;
}

/// The JWT's `sub` is the user: a message published to it reaches the connection.
#[tokio::test]
async fn the_jwt_subject_is_the_user() {
    let server =
        TestServer::start_with(ServerOptions::default(), Jwt::hs256(SECRET), AcceptAll).await;
    let (mut raw, _) = Raw::handshake(&server.url(), &token("zoe", 60, SECRET), None).await;
    server.publish("zoe", json!("for zoe")).await;
    assert_eq!(raw.recv_type("msg").await["data"], "for zoe");
    server.stop().await;
}

/// The insecure development mode takes the token as the user id, and refuses an empty one.
#[test]
fn insecure_dev_auth_takes_the_token_as_the_user() {
    let verdict = |token| match InsecureDevAuth.authenticate(token) {
        AuthReply::Now(verdict) => verdict.map(|user| user.to_string()),
        AuthReply::Later(_) => panic!("the development authentication decides at once"),
    };
    assert_eq!(verdict(Some("bob")), Ok("bob".to_owned()));
    assert!(verdict(Some("")).is_err());
    assert!(verdict(None).is_err());
    let shown = format!("{:?}", Jwt::hs256(SECRET));
    assert!(!shown.contains("test-secret"), "{shown}");
    let _ = Duration::ZERO;
}
