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

/// Before any connection, `/metrics` already lists every readyws series, so that dashboards and
/// alerts on rates see them from the start.
#[tokio::test]
async fn metrics_lists_every_series_before_the_first_event() {
    let server = TestServer::start(ServerOptions::default()).await;
    let (status, metrics) = server.http("GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for series in [
        "readyws_connections_opened_total ",
        "readyws_connections_open ",
        "readyws_sessions_ready_total ",
        "readyws_ready_seconds_count ",
        "readyws_resumes_total{result=\"reset\"} ",
        "readyws_mailbox_messages ",
        "readyws_held_bytes ",
        "readyws_mailbox_dropped_total{reason=\"expired\"} ",
        "readyws_mailbox_dropped_total{reason=\"overflow\"} ",
        "readyws_messages_in_total ",
        "readyws_messages_out_total ",
        "readyws_acks_total ",
        "readyws_nacks_total{direction=\"sent\"} ",
        "readyws_goaways_total{code=\"4000\"} ",
        "readyws_goaways_total{code=\"4203\"} ",
        "readyws_closes_total{code=\"4010\"} ",
        "readyws_limit_refusals_total{limit=\"held_bytes\"} ",
        "readyws_connections_evicted_total{reason=\"limit\"} ",
        "readyws_deadlines_total{stage=\"write\"} ",
        "readyws_jwks_fetch_failures_total ",
        "readyws_copies_withdrawn_total ",
        "readyws_store_retries_total{operation=\"commit\"} ",
        "readyws_store_conflicts_total ",
        "readyws_store_failures_total{operation=\"commit\"} ",
    ] {
        assert!(
            metrics.lines().any(|line| line.starts_with(series)),
            "{series:?} missing from {metrics}"
        );
    }
    assert!(
        metrics.contains("# HELP readyws_mailbox_dropped_total"),
        "{metrics}"
    );
    server.stop().await;
}

/// A server given no Prometheus handle installs no recorder of its own and says so at
/// `/metrics`; its metrics go to whatever recorder the application has.
#[tokio::test]
async fn without_a_prometheus_handle_metrics_answers_404() {
    let server = readyws_server::Server::new(
        ServerOptions::default(),
        readyws_server::InsecureDevAuth,
        readyws_server::AcceptAll,
    );
    let app = server.router();
    let response = tower_get(app, "/metrics").await;
    assert_eq!(response.0, 404);
    assert!(response.1.contains("no_exporter"), "{}", response.1);
}

/// One request to a router, without a socket.
async fn tower_get(app: axum::Router, path: &str) -> (u16, String) {
    use tower::ServiceExt;
    let request = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .expect("a request");
    let response = app.oneshot(request).await.expect("an answer");
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    (status, String::from_utf8_lossy(&body).into_owned())
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
