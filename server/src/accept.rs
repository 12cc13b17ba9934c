//! The accept loop of [`crate::Server::serve`].
//!
//! A WebSocket upgrade to `/ws` whose request head arrives in the first read is taken by
//! tokio-tungstenite right on the TCP stream: the `101` response and `welcome` then leave from
//! one task, in one write (`prepared.rs`). Through hyper (axum's `WebSocketUpgrade`) the socket only reaches the
//! connection task after hyper's own task has written the `101` and handed the stream over, a
//! wake-up of another task that the benchmark measured at a tenth of the whole time to ready on
//! loopback. Every other request, and an upgrade whose head arrives in pieces, goes to the axum
//! router through hyper as before; both paths run the same connection task.
//!
//! Nothing a peer controls is waited for without a deadline, and nothing it sends is held without
//! a bound: the first read and the whole request head have [`crate::Deadlines::request_head`]
//! (hyper gets a timer for its header-read timeout, which also ends idle kept-alive connections),
//! the WebSocket handshake the same, and a request head may not exceed
//! [`MAX_REQUEST_HEAD_BYTES`]. Open connections are bounded by
//! [`crate::ServerLimits::max_connections`]; at the bound, or when the process runs out of file
//! descriptors, the oldest connection that has not become a WebSocket yet is closed to make
//! room, since a real client finishes its upgrade in milliseconds and an idle socket costs its
//! owner nothing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use readyws_protocol::SUBPROTOCOL;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, warn};

use crate::Shared;
use crate::metrics as m;
use crate::prepared::Prepared;

/// Enough for the request head of any browser's or SDK's WebSocket upgrade.
const HEAD_READ_BYTES: usize = 4096;

/// The largest request head hyper buffers (its read buffer): enough for any browser's cookies.
pub(crate) const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;

/// How long a refusal at the connection bound may take to write before the socket is dropped.
const REFUSAL_WRITE_DEADLINE: Duration = Duration::from_secs(1);

/// Connections that have not become WebSockets yet, oldest first: the ones to close when the
/// server needs room.
#[derive(Default)]
struct Pending {
    tasks: Mutex<BTreeMap<u64, AbortHandle>>,
}

impl Pending {
    fn len(&self) -> usize {
        crate::lock(&self.tasks).len()
    }

    /// Closes the oldest pending connection; `false` when there is none.
    fn evict_oldest(&self, reason: &'static str) -> bool {
        let oldest = crate::lock(&self.tasks).pop_first();
        match oldest {
            Some((_, task)) => {
                task.abort();
                m::connection_evicted(reason);
                true
            }
            None => false,
        }
    }

    /// The connection `id` leaves the pending set; `false` if it was evicted meanwhile.
    fn leave(&self, id: u64) -> bool {
        crate::lock(&self.tasks).remove(&id).is_some()
    }
}

/// Takes a connection out of the pending set however its task ends.
struct PendingGuard {
    id: u64,
    pending: Arc<Pending>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending.leave(self.id);
    }
}

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
    let pending = Arc::new(Pending::default());
    let mut next_id: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%error, "TCP_NODELAY not set");
                    }
                    let open = pending.len() + shared.connections_open();
                    if open >= shared.options.limits.max_connections
                        && !pending.evict_oldest("limit")
                    {
                        m::limit_refused("connections");
                        http.spawn(refuse_full(stream));
                        continue;
                    }
                    next_id += 1;
                    let id = next_id;
                    let guard = PendingGuard { id, pending: pending.clone() };
                    // Registered under the lock the task needs to leave the set, so that it
                    // cannot leave before it is in.
                    let mut tasks = crate::lock(&pending.tasks);
                    let task = http.spawn(route(stream, router.clone(), shared.clone(), guard));
                    tasks.insert(id, task);
                }
                Err(error) if out_of_descriptors(&error) => {
                    // The connection waits in the backlog: make room for it.
                    if !pending.evict_oldest("descriptors") {
                        warn!(%error, "out of file descriptors, and every connection is a WebSocket");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(error) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
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

/// `EMFILE` or `ENFILE`: the process, or the system, has no file descriptor left.
fn out_of_descriptors(error: &std::io::Error) -> bool {
    // The same numbers on Linux, the BSDs and macOS.
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// Answers a connection past the bound with `503` and closes it.
async fn refuse_full(mut stream: TcpStream) {
    let body = crate::http::error_body(
        "server_full",
        "the server has as many connections as it allows; retry later",
    )
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(
        REFUSAL_WRITE_DEADLINE,
        stream.write_all(response.as_bytes()),
    )
    .await;
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed channel means the server is gone: stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn route(mut stream: TcpStream, router: Router, shared: Arc<Shared>, guard: PendingGuard) {
    let head_deadline = shared.options.deadlines.request_head;
    let until = tokio::time::Instant::now() + head_deadline;
    // Read (not peeked: one system call instead of two) and served again to the next reader.
    let mut head = [0u8; HEAD_READ_BYTES];
    let read = match tokio::time::timeout_at(until, stream.read(&mut head)).await {
        Ok(Ok(0) | Err(_)) => return,
        Ok(Ok(read)) => read,
        Err(_) => {
            m::deadline("request_head");
            return;
        }
    };
    let head = head.get(..read).unwrap_or_default();
    if is_websocket_upgrade(head) {
        let Some(socket) = tokio::time::timeout_at(
            until,
            websocket_handshake(Prepared::new(stream, head.to_vec(), true), &shared),
        )
        .await
        .unwrap_or_else(|_| {
            m::deadline("request_head");
            None
        }) else {
            return;
        };
        // A WebSocket from now on: no longer a connection to close for room.
        if !guard.pending.leave(guard.id) {
            return;
        }
        crate::connection::run(shared, socket).await;
        return;
    }
    let service = TowerToHyperService::new(router);
    let stream = Prepared::new(stream, head.to_vec(), false);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_deadline)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(error) = served {
        if error.is_timeout() {
            m::deadline("request_head");
        }
        debug!(error = ?error.to_string(), "HTTP connection ended with an error");
    }
    drop(guard);
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

/// The direct upgrade: the `101` (held until the connection's first write) or a refusal.
async fn websocket_handshake(
    stream: Prepared,
    shared: &Shared,
) -> Option<tokio_tungstenite::WebSocketStream<Prepared>> {
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
            Some(socket)
        }
        Err(error) => {
            debug!(error = ?error.to_string(), "WebSocket upgrade refused or failed");
            None
        }
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
