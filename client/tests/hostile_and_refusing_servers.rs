//! Servers that refuse credentials, or speak garbage: the client refreshes, reports and retries,
//! and never panics.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use readyws::{Client, ConnectionState, DisconnectReason, Outcome};
use readyws_server::{AcceptAll, Jwt, ServerOptions};
use serde_json::json;
use support::{TestServer, eventually};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const SECRET: &[u8] = b"client-tests-secret-long-enough-for-hs256";

fn token(expires_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = json!({"sub": "alice", "exp": now + expires_in});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("sign")
}

#[tokio::test]
async fn the_token_provider_is_called_again_after_a_41xx_goaway() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = TestServer::start_on(
        listener,
        ServerOptions::default(),
        Jwt::hs256(SECRET),
        AcceptAll,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let client = Client::builder(server.url())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .token_provider(move || {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            // The first token handed out has already expired; the refreshed one is good.
            async move { Some(if call == 0 { token(-60) } else { token(60) }) }
        })
        .connect()
        .expect("a valid client configuration");
    let delivery = client
        .send(support::json(json!("hi")))
        .await
        .expect("accepted");
    assert_eq!(delivery.await, Outcome::Acked);
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "refreshed after the 4101"
    );
    server.stop();
}

/// A WebSocket server that selects `readyws.v1` and then sends `frames` on every connection.
async fn fake_server(frames: Vec<String>) -> String {
    fake_server_selecting(Some("readyws.v1"), frames, Arc::default()).await
}

/// A WebSocket server that selects `subprotocol` (none: no `Sec-WebSocket-Protocol` in its
/// `101`), then sends `frames` on every connection; `accepted` counts the connections.
async fn fake_server_selecting(
    subprotocol: Option<&'static str>,
    frames: Vec<String>,
    accepted: Arc<AtomicUsize>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let frames = frames.clone();
            tokio::spawn(async move {
                // The error type is tungstenite's; the callback never fails.
                #[allow(clippy::result_large_err)]
                let select = |_: &Request, mut response: Response| {
                    if let Some(subprotocol) = subprotocol {
                        response.headers_mut().insert(
                            "Sec-WebSocket-Protocol",
                            subprotocol.parse().expect("header"),
                        );
                    }
                    Ok(response)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, select).await else {
                    return;
                };
                for frame in frames {
                    if ws.send(Message::Text(frame.into())).await.is_err() {
                        return;
                    }
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    format!("ws://{addr}/ws")
}

#[tokio::test]
async fn garbage_from_a_fake_server_is_a_typed_error_and_a_reconnect() {
    let welcome = json!({"type": "welcome", "protocol": 1, "server": "fake", "phase": "accepting",
        "heartbeat_ms": 30000, "max_frame_bytes": 65536, "max_inflight": 8, "resume_window_ms": 0})
    .to_string();
    for frames in [
        vec!["\u{0}\u{1}not json".to_owned()],
        vec![welcome.clone(), r#"{"type":"msg","id":1,"data":"before ready"}"#.to_owned()],
        vec![r#"{"type":"connection_ready","session_id":"s","resume_token":"t","resumed":false,"last_received":0,"backlog":0}"#.to_owned()],
        vec![welcome.clone(), r#"{"type":"ack","id":"#.to_owned()],
    ] {
        let url = fake_server(frames).await;
        let client = Client::builder(url)
            .token("alice")
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .connect().expect("a valid client configuration");
        let _held = client.send(support::json(json!("kept"))).await.expect("accepted");
        let mut state = client.watch_state();
        let reason = loop {
            state.changed().await.expect("client alive");
            if let ConnectionState::Reconnecting { reason, .. } = state.borrow_and_update().clone() {
                break reason;
            }
        };
        assert!(matches!(reason, DisconnectReason::ProtocolViolation(_)), "{reason:?}");
        eventually("it keeps retrying", || client.stats().reconnects >= 3).await;
        assert_eq!(client.stats().queued, 1, "the held message is kept");
    }
}

/// [TR-2] A server whose `101` selects no `readyws.v1` is not a readyws server: the client ends
/// with that reason, does not reconnect, and every message it held ends as closed.
#[tokio::test]
async fn a_server_that_selects_no_subprotocol_ends_the_client_without_reconnecting() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let url = fake_server_selecting(None, Vec::new(), accepted.clone()).await;
    let client = Client::builder(url)
        .token("alice")
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .connect()
        .expect("a valid client configuration");
    let delivery = client
        .send(support::json(json!("kept")))
        .await
        .expect("accepted");
    let reason = tokio::time::timeout(Duration::from_secs(10), client.ready())
        .await
        .expect("an answer in time")
        .expect_err("never ready");
    assert!(
        matches!(reason, readyws::CloseReason::SubprotocolRejected { .. }),
        "{reason:?}"
    );
    assert_eq!(delivery.await, Outcome::Closed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no reconnect");
    assert_eq!(client.stats().reconnects, 0);
}
