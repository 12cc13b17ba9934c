//! The accept loop of [`crate::Server::serve`].
//!
//! A WebSocket upgrade to `/ws` whose request head arrives in the first read is taken by
//! tokio-tungstenite right on the TCP stream: the `101` response and `welcome` then leave from
//! one task, in one write (`prepared.rs`). Through hyper (axum's `WebSocketUpgrade`) the socket only reaches the
//! connection task after hyper's own task has written the `101` and handed the stream over, a
//! wake-up of another task that the benchmark measured at a tenth of the whole time to ready on
//! loopback. Every other request, and an upgrade whose head arrives in pieces, goes to the axum
//! router through hyper as before; both paths run the same connection task.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use readyws_protocol::SUBPROTOCOL;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;

use crate::Shared;
use crate::prepared::Prepared;

/// Enough for the request head of any browser's or SDK's WebSocket upgrade.
const HEAD_READ_BYTES: usize = 4096;

/// Accepts until `stop` turns `true`. Connections run in a set that ends with this task: shutdown
/// first tells every WebSocket to go away, and aborts this task once they have or its grace ran
/// out.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%error, "TCP_NODELAY not set");
                    }
                    let router = router.clone();
                    let shared = shared.clone();
                    http.spawn(route(stream, router, shared));
                }
                // Out of file descriptors, most often: keep serving the connections there are.
                Err(error) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = http.join_next(), if !http.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    // Refused from now on rather than left waiting in the backlog.
    drop(listener);
    while http.join_next().await.is_some() {}
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed channel means the server is gone: stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn route(mut stream: TcpStream, router: Router, shared: Arc<Shared>) {
    // Read (not peeked: one system call instead of two) and served again to the next reader.
    let mut head = [0u8; HEAD_READ_BYTES];
    let read = match stream.read(&mut head).await {
        Ok(0) | Err(_) => return,
        Ok(read) => read,
    };
    let head = head.get(..read).unwrap_or_default();
    if is_websocket_upgrade(head) {
        websocket(Prepared::new(stream, head.to_vec(), true), shared).await;
        return;
    }
    let service = TowerToHyperService::new(router);
    let stream = Prepared::new(stream, head.to_vec(), false);
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(error) = served {
        debug!(%error, "HTTP connection ended with an error");
    }
}

/// A complete request head of `GET /ws` that asks for a WebSocket.
fn is_websocket_upgrade(head: &[u8]) -> bool {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = &head[..end];
    let path_ok = head.starts_with(b"GET /ws ") || head.starts_with(b"GET /ws?");
    path_ok
        && head.split(|b| *b == b'\n').skip(1).any(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match line.iter().position(|b| *b == b':') {
                Some(colon) => {
                    line[..colon].eq_ignore_ascii_case(b"upgrade")
                        && line[colon + 1..]
                            .trim_ascii()
                            .eq_ignore_ascii_case(b"websocket")
                }
                None => false,
            }
        })
}

async fn websocket(stream: Prepared, shared: Arc<Shared>) {
    // Frames up to four times the announced limit still reach the protocol, which refuses an
    // oversized message with a `nack` instead of a dropped connection [FR-6].
    let socket_limit = shared.protocol.max_frame_bytes.saturating_mul(4);
    let config = WebSocketConfig::default()
        .read_buffer_size(crate::socket::READ_BUFFER_BYTES)
        .max_message_size(Some(socket_limit))
        .max_frame_size(Some(socket_limit));
    let stopping = shared.stopping.load(Ordering::SeqCst);
    #[allow(
        clippy::result_large_err,
        reason = "the error type is the one tungstenite's handshake callback returns"
    )]
    let answer = |request: &Request, mut response: Response| {
        if stopping {
            return Err(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "the server is shutting down",
            ));
        }
        let offered = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|protocol| protocol.trim() == SUBPROTOCOL);
        if !offered {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "subprotocol_required",
                &format!("offer the WebSocket subprotocol `{SUBPROTOCOL}`"),
            ));
        }
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        Ok(response)
    };
    match tokio_tungstenite::accept_hdr_async_with_config(stream, answer, Some(config)).await {
        Ok(mut socket) => {
            // The `101` goes out with `welcome`, at the connection task's first flush.
            socket.get_mut().release();
            crate::connection::run(shared, socket).await;
        }
        Err(error) => debug!(%error, "WebSocket upgrade refused or failed"),
    }
}

/// The same JSON error body as the HTTP routes answer with.
fn refusal(status: StatusCode, code: &str, detail: &str) -> ErrorResponse {
    let body = crate::http::error_body(code, detail).to_string();
    let mut response = ErrorResponse::new(Some(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
