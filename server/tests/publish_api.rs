//! The HTTP side: `POST /api/publish`, `/healthz`, `/readyz`, `/metrics`.

mod support;

use readyws_server::ServerOptions;
use serde_json::{Value, json};
use support::{Raw, TestServer};

fn with_key() -> ServerOptions {
    ServerOptions::default().api_key(Some("backend-key".into()))
}

/// [PB-1] [PB-2] [PB-4] Publishing over HTTP: 202 with what happened; clear JSON errors for a bad
/// key or body.
#[tokio::test]
async fn publish_over_http_reports_delivery_and_errors_clearly() {
    let server = TestServer::start(with_key()).await;
    let auth = [("Authorization", "Bearer backend-key")];
    let (status, body) = server
        .http(
            "POST",
            "/api/publish",
            &auth,
            r#"{"user":"alice","data":{"n":1}}"#,
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["held"],
        true
    );

    let (mut raw, ready) = Raw::handshake(&server.url(), "alice", None).await;
    assert_eq!(ready["backlog"], 1);
    assert_eq!(raw.recv_type("msg").await["data"], json!({"n": 1}));
    let (status, body) = server
        .http(
            "POST",
            "/api/publish",
            &auth,
            r#"{"user":"alice","data":[2]}"#,
        )
        .await;
    assert_eq!(status, 202);
    let report: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (report["delivered"].clone(), report["held"].clone()),
        (json!(1), json!(false))
    );
    assert_eq!(raw.recv_type("msg").await["data"], json!([2]));

    let wrong = [("Authorization", "Bearer nope")];
    let (status, body) = server
        .http("POST", "/api/publish", &wrong, r#"{"user":"a","data":1}"#)
        .await;
    assert_eq!(
        (status, body.contains(r#""error":"unauthorized""#)),
        (401, true),
        "{body}"
    );
    let (status, _) = server
        .http("POST", "/api/publish", &[], r#"{"user":"a","data":1}"#)
        .await;
    assert_eq!(status, 401);
    let (status, body) = server
        .http("POST", "/api/publish", &auth, r#"{"user":"a"}"#)
        .await;
    assert_eq!(
        (status, body.contains(r#""error":"bad_body""#)),
        (400, true),
        "{body}"
    );
    let (status, _) = server.http("POST", "/api/publish", &auth, "not json").await;
    assert_eq!(status, 400);
    server.stop().await;
}

/// [PB-1] Without an API key the publish API is off.
#[tokio::test]
async fn the_publish_api_needs_a_key() {
    let server = TestServer::start(ServerOptions::default()).await;
    let (status, body) = server
        .http(
            "POST",
            "/api/publish",
            &[("Authorization", "Bearer x")],
            r#"{"user":"a","data":1}"#,
        )
        .await;
    assert_eq!((status, body.contains("disabled")), (403, true));
    server.stop().await;
}

/// Health, readiness and metrics endpoints answer.
#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::start(ServerOptions::default()).await;
    assert_eq!(
        server.http("GET", "/healthz", &[], "").await,
        (200, "ok".to_owned())
    );
    let (status, body) = server.http("GET", "/readyz", &[], "").await;
    assert_eq!(
        (status, body),
        (200, r#"{"status":"accepting"}"#.to_owned())
    );
    let _ready = Raw::handshake(&server.url(), "alice", None).await;
    let (status, metrics) = server.http("GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for name in [
        "readyws_connections_opened_total",
        "readyws_sessions_ready_total",
        "readyws_ready_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    server.stop().await;
}

/// [PB-3] [DL-12] [CU-1] A message no session could carry (its `msg` frame would exceed
/// `max_frame_bytes` even with id 1) is refused to its publisher at once with the limit, and
/// nothing is held; one that fits is held and delivered with the next id.
#[tokio::test]
async fn a_message_larger_than_any_frame_is_refused_at_publish_time() {
    let protocol = readyws_protocol::ServerConfig::default().max_frame_bytes(4096);
    let server = TestServer::start(with_key().protocol(protocol)).await;
    let (mut raw, _) = Raw::handshake(&server.url(), "frank", None).await;
    let auth = [("Authorization", "Bearer backend-key")];
    let big = json!({"user": "frank", "data": "x".repeat(5000)}).to_string();
    let (status, body) = server.http("POST", "/api/publish", &auth, &big).await;
    assert_eq!(status, 413, "{body}");
    let refusal: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(refusal["error"], "too_large", "{body}");
    assert!(
        refusal["detail"]
            .as_str()
            .is_some_and(|d| d.contains("4096")),
        "the limit is named: {body}"
    );
    assert_eq!(server.depth("frank").await, 0, "nothing is held");
    let (status, _) = server
        .http(
            "POST",
            "/api/publish",
            &auth,
            r#"{"user":"frank","data":"small"}"#,
        )
        .await;
    assert_eq!(status, 202);
    let msg = raw.recv_type("msg").await;
    assert_eq!(
        (msg["id"].clone(), msg["data"].clone()),
        (json!(1), json!("small"))
    );
    server.stop().await;
}

/// [PB-3] [CU-5] A full mailbox refuses over HTTP with 429 and the JSON error body, and stores
/// nothing.
#[tokio::test]
async fn a_full_mailbox_is_refused_with_429() {
    let options = with_key().mailbox(readyws_server::MailboxLimits {
        max_messages: 2,
        ..readyws_server::MailboxLimits::default()
    });
    let server = TestServer::start(options).await;
    let auth = [("Authorization", "Bearer backend-key")];
    for n in 0..2 {
        let body = format!(r#"{{"user":"gus","data":{n}}}"#);
        assert_eq!(
            server.http("POST", "/api/publish", &auth, &body).await.0,
            202
        );
    }
    let (status, body) = server
        .http("POST", "/api/publish", &auth, r#"{"user":"gus","data":3}"#)
        .await;
    assert_eq!(status, 429, "{body}");
    let refusal: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(refusal["error"], "mailbox_full", "{body}");
    assert!(refusal["detail"].is_string(), "{body}");
    assert_eq!(server.depth("gus").await, 2);
    server.stop().await;
}
