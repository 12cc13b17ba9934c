//! [SE-2] Tokens and resume tokens never reach the logs, even at the most verbose level.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use readyws_server::{AcceptAll, Jwt, ServerOptions};
use serde_json::json;
use support::{Raw, TestServer};
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// [SE-2] A full session — hello with a token, resume with the secret, a refused token — leaves
/// neither secret in the captured log.
#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let secret = b"a-secret-long-enough-for-hs256-signing";
    let server =
        TestServer::start_with(ServerOptions::default(), Jwt::hs256(secret), AcceptAll).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({"sub": "alice", "exp": now + 60});
    let token = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign");
    let token = token.as_str();
    let (raw, ready) = Raw::handshake(&server.url(), token, None).await;
    let resume_token = ready["resume_token"].as_str().expect("token").to_owned();
    drop(raw);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let resume = json!({"session_id": ready["session_id"], "resume_token": resume_token, "last_received": 0});
    let (_raw, again) = Raw::handshake(&server.url(), token, Some(resume)).await;
    assert_eq!(again["resumed"], true);
    let forged = format!("{token}x");
    let mut refused = Raw::connect(&server.url()).await;
    refused.recv().await;
    refused
        .send(json!({"type": "hello", "token": forged}))
        .await;
    assert_eq!(refused.recv_type("goaway").await["code"], 4100);
    server.stop().await;

    let text = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    assert!(
        text.contains("connection ready"),
        "the log was captured: {text}"
    );
    assert!(
        text.contains("hello refused"),
        "the refusal was logged: {text}"
    );
    assert!(!text.contains(&resume_token), "resume token in logs");
    let signature = token.rsplit('.').next().expect("a JWT has a signature");
    assert!(!text.contains(signature), "token in logs");
}
