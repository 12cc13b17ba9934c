//! The HTTP side: the WebSocket endpoint, the publish API, health, readiness and metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use readyws_protocol::{Data, SUBPROTOCOL};
use serde::Deserialize;
use serde_json::json;

use crate::{PublishError, Readiness, ServerHandle, Shared, UserId};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/api/publish", post(publish))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// The body of every refusal the server answers over HTTP, here and in `accept.rs`.
pub(crate) fn error_body(code: &str, detail: &str) -> serde_json::Value {
    json!({"error": code, "detail": detail})
}

fn error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    let body = error_body(code, &detail.into());
    (status, axum::Json(body)).into_response()
}

async fn websocket(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    if shared.stopping.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the server is shutting down",
        );
    }
    // Frames up to four times the announced limit still reach the protocol, which refuses an
    // oversized message with a `nack` instead of a dropped connection [FR-6].
    let socket_limit = shared.protocol.max_frame_bytes.saturating_mul(4);
    let upgrade = upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(crate::socket::READ_BUFFER_BYTES)
        .max_message_size(socket_limit)
        .max_frame_size(socket_limit);
    if upgrade.selected_protocol().is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "subprotocol_required",
            format!("offer the WebSocket subprotocol `{SUBPROTOCOL}`"),
        );
    }
    upgrade.on_upgrade(move |socket| crate::connection::run(shared, socket))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    user: String,
    data: Data,
}

async fn publish(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(expected) = shared.options.api_key.as_deref() else {
        return error(
            StatusCode::FORBIDDEN,
            "disabled",
            "the publish API needs an API key configured",
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !presented.is_some_and(|key| constant_time_eq(key.as_bytes(), expected.as_bytes())) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer API key",
        );
    }
    let body: PublishBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(problem) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("expected {{\"user\": string, \"data\": any JSON}}: {problem}"),
            );
        }
    };
    if body.user.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "`user` must not be empty",
        );
    }
    let handle = ServerHandle { shared };
    match handle.publish(&UserId::new(body.user), body.data).await {
        Ok(report) => (StatusCode::ACCEPTED, axum::Json(report)).into_response(),
        Err(problem @ PublishError::MailboxFull { .. }) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "mailbox_full",
            problem.to_string(),
        ),
        Err(problem @ PublishError::TooLarge { .. }) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            problem.to_string(),
        ),
        Err(problem @ PublishError::Unavailable(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            problem.to_string(),
        ),
        Err(problem) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            problem.to_string(),
        ),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let readiness = ServerHandle { shared }.readiness();
    let status = match readiness {
        Readiness::Accepting => StatusCode::OK,
        Readiness::Starting | Readiness::Stopping => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, axum::Json(json!({"status": readiness}))).into_response()
}

async fn metrics() -> Response {
    let text = crate::metrics::prometheus().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Compares in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (x, y) in a.iter().zip(b) {
        difference |= usize::from(x ^ y);
    }
    difference == 0
}
