//! The HTTP side: the WebSocket endpoint, the publish API, health, readiness and metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use readyws_protocol::{Data, SUBPROTOCOL};
use serde::Deserialize;
use serde_json::json;

use crate::{PublishError, Readiness, ServerHandle, Shared, UserId};

/// Which of the server's routes a router carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Routes {
    /// Every route, on one port.
    All,
    /// What clients reach: `/ws`, `/healthz`, `/readyz`.
    Public,
    /// What operators and backends reach: `/api/publish`, `/metrics`, `/healthz`, `/readyz`.
    Admin,
}

pub(crate) fn router(shared: Arc<Shared>, routes: Routes) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if routes != Routes::Admin {
        router = router.route("/ws", get(websocket));
    }
    if routes != Routes::Public {
        router = router
            .route("/api/publish", post(publish))
            .route("/metrics", get(metrics));
    }
    router.with_state(shared)
}

/// The body of every refusal the server answers over HTTP, here and in `accept.rs`.
pub(crate) fn error_body(code: &str, detail: &str) -> serde_json::Value {
    json!({"error": code, "detail": detail})
}

fn error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    let body = error_body(code, &detail.into());
    (status, axum::Json(body)).into_response()
}

/// A refusal that also ends its connection: a refused upgrade, or a request whose body was left
/// unread, leaves no request behind it to be served.
fn closing_error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    let mut response = error(status, code, detail);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn websocket(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    if shared.stopping.load(Ordering::SeqCst) {
        return closing_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the server is shutting down",
        );
    }
    // The bound for an application that mounts the router in its own server; `Server::serve`
    // bounds every TCP connection before it gets here.
    if shared.connections_open() >= shared.options.limits.max_connections {
        crate::metrics::limit_refused("connections");
        return closing_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full",
            "the server has as many connections as it allows; retry later",
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
        return closing_error(
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

/// The most bytes of a publish body beyond the message itself: the envelope and the user id.
const PUBLISH_ENVELOPE_BYTES: usize = 16 * 1024;

/// Checks the key from the request head first: an unauthenticated body is never read. Then reads
/// at most what a mailbox could hold, within the request deadline.
async fn publish(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (head, body) = request.into_parts();
    let headers = head.headers;
    let Some(expected) = shared.options.api_key.as_deref() else {
        return closing_error(
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
        return closing_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer API key",
        );
    }
    let limit = shared
        .options
        .mailbox
        .max_bytes
        .saturating_add(PUBLISH_ENVELOPE_BYTES);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        crate::metrics::limit_refused("publish_body_bytes");
        return closing_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body may have at most {limit} bytes"),
        );
    }
    let deadline = shared.options.deadlines.request_head;
    let body: Bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            crate::metrics::limit_refused("publish_body_bytes");
            return closing_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body may have at most {limit} bytes"),
            );
        }
        Err(_) => {
            crate::metrics::deadline("request_body");
            return closing_error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the body did not arrive within {} ms", deadline.as_millis()),
            );
        }
    };
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
        Err(problem @ (PublishError::TooLarge { .. } | PublishError::ExceedsFrame { .. })) => {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                problem.to_string(),
            )
        }
        Err(problem @ PublishError::UserIdTooLong { .. }) => {
            error(StatusCode::BAD_REQUEST, "bad_body", problem.to_string())
        }
        Err(problem @ PublishError::ServerFull { .. }) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full",
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

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match &shared.options.prometheus {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no_exporter",
            "this server was given no Prometheus handle (ServerOptions::prometheus)",
        ),
    }
}

/// Compares in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (x, y) in a.iter().zip(b) {
        difference |= usize::from(x ^ y);
    }
    difference == 0
}
