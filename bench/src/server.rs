//! `readyws-bench server --kind readyws|raw [--redis URL]`: one server in its own process, so
//! that its memory is its own; with `--redis`, the readyws server keeps its records in that Redis. It prints `listening ADDRESS`, then obeys lines on standard input: `restart` (readyws:
//! a graceful shutdown, every session told to come back within the spread, then a new server on
//! the same port; it prints `restarted`), and end of input, which ends it.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use readyws::Data;
use readyws_server::{
    Decision, Inbound, InboundHandler, InsecureDevAuth, MailboxLimits, OverflowPolicy, Reply,
    Server, ServerHandle, ServerOptions, UserId,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    BENCH_FAILED, RawFrame, listener, payload, raise_open_file_limit, raw_ack, raw_msg,
};
use crate::figures::PIPELINE_BURST;

/// How long the graceful restart spreads the sessions' return over.
pub(crate) const RESTART_SPREAD: Duration = Duration::from_secs(5);

pub(crate) async fn run(kind: &str, redis: Option<String>) -> Result<(), String> {
    // A server here takes at most one swarm's sessions; the swarm checks the count itself.
    raise_open_file_limit(1024)?;
    let listener = listener("127.0.0.1:0".parse().map_err(|_| "address")?)
        .map_err(|e| format!("binding a loopback port: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    match kind {
        "raw" => {
            tokio::spawn(raw_server(listener));
            announce(&format!("listening {address}"));
            while let Ok(Some(_)) = lines.next_line().await {}
        }
        "readyws" => {
            let store = match &redis {
                Some(url) => Some(
                    readyws_server::RedisStore::connect(url)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let mut stop = start_readyws(listener, store.clone());
            announce(&format!("listening {address}"));
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "restart" {
                    let (tell, stopped) = stop;
                    let _ = tell.send(());
                    let _ = stopped.await;
                    stop = start_readyws(rebind(address).await?, store.clone());
                    announce("restarted");
                }
            }
        }
        other => return Err(format!("unknown server kind `{other}` (readyws or raw)")),
    }
    Ok(())
}

fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The port can stay taken for a moment after the old listener closed.
async fn rebind(address: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    let mut tries = 0;
    loop {
        match listener(address) {
            Ok(listener) => return Ok(listener),
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => return Err(format!("rebinding {address}: {error}")),
        }
    }
}

type Running = (oneshot::Sender<()>, oneshot::Receiver<()>);

/// The reference server, with mailboxes large enough for a whole throughput run, accepting every
/// message; a message `{"bench":"send","count":N}` makes it publish N messages to its sender.
fn start_readyws(
    listener: tokio::net::TcpListener,
    store: Option<readyws_server::RedisStore>,
) -> Running {
    let options = ServerOptions::default()
        .mailbox(MailboxLimits {
            max_messages: 1_000_000,
            max_bytes: 1 << 30,
            ttl: Duration::from_secs(600),
            overflow: OverflowPolicy::RejectNew,
        })
        .shutdown(RESTART_SPREAD, Duration::from_secs(20));
    let options = match store {
        Some(store) => options.redis(store),
        None => options,
    };
    let server = Server::new(options, InsecureDevAuth, BenchHandler);
    let (tell, told) = oneshot::channel::<()>();
    let (done, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = server
            .serve(listener, async {
                let _ = told.await;
            })
            .await;
        let _ = done.send(());
    });
    (tell, stopped)
}

/// A `{"bench": …, "count": n}` request makes the server publish `n` messages to its sender.
struct BenchHandler;

/// Publishes of one request under way at once. On a store whose commits are round trips, those
/// waiting go together in one commit; a quarter of what one commit takes (`MAX_PUBLISH_BATCH`,
/// 1,024) keeps each commit short, so that the connection's own commits, which wait their turn
/// behind the publishes' for the same user, come round often (on a Redis without an append-only
/// file, 256 in flight moved 0.7–0.8 × 10^5 messages/s to 1.0–1.35 × 10^5, with 64, 128 and 256
/// alike; in memory it changes nothing).
const PUBLISHES_IN_FLIGHT: usize = 256;

impl InboundHandler for BenchHandler {
    fn on_message<'a>(&'a self, server: &'a ServerHandle, message: Inbound<'a>) -> Reply<'a> {
        let json = message.data.as_json();
        if !json.starts_with(r#"{"bench""#) {
            return Reply::Now(Decision::Accept);
        }
        let count = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|request| request.get("count").and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        // The publishing is handed off, as the handler's documentation asks of work that takes
        // long: a backend's publishes to a user do not hold up that user's connection, so the
        // messages go out while later ones are still being published.
        tokio::spawn(publish_to(server.clone(), message.user.clone(), count));
        Reply::Now(Decision::Accept)
    }
}

/// Publishes `count` payloads to `user`, up to [`PUBLISHES_IN_FLIGHT`] at a time, as a backend
/// with work for one user sends them: on a store whose commits are round trips, those waiting go
/// together. A publish that fails is told to the user in a [`BENCH_FAILED`] message, which the
/// measuring client reports.
async fn publish_to(server: ServerHandle, user: UserId, count: u64) {
    let mut published = futures_util::stream::iter(1..=count)
        .map(|seq| {
            let data = Data::from_json(payload(seq)).expect("the payload is JSON");
            server.publish(&user, data)
        })
        .buffer_unordered(PUBLISHES_IN_FLIGHT);
    while let Some(result) = published.next().await {
        if let Err(error) = result {
            let report = serde_json::json!({ "bench": BENCH_FAILED, "reason": error.to_string() });
            let report = Data::from_json(report.to_string()).expect("serde_json writes JSON");
            let _ = server.publish(&user, report).await;
            return;
        }
    }
}

/// The baselines: plain tokio-tungstenite. Every frame is parsed. The naive one is written as an
/// application without readyws would be: a `msg` gets an `ack`; a `send` request makes it send
/// that many `msg` frames, one `send` each, and read the client's `ack`s until the last one. The
/// pipelined ceiling: `push` frames are only counted, and an `end` frame answered with an `ack`
/// of that count; a `pipe` request makes it feed that many `msg` frames, flushing once per
/// [`PIPELINE_BURST`], and expect no `ack`. The hand-acknowledged one: `hold` frames already read
/// are answered together, with one cumulative `ack` of the highest id.
async fn raw_server(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            // `push` frames of the pipelined baseline since its last `end`.
            let mut pushed = 0u64;
            while let Some(Ok(Message::Text(text))) = socket.next().await {
                let Ok(frame) = serde_json::from_str::<RawFrame<'_>>(text.as_str()) else {
                    return;
                };
                match frame.kind {
                    "push" => pushed += 1,
                    "hold" => {
                        // Frames already read answered together: one cumulative `ack`.
                        let mut through = frame.id;
                        while let Some(Some(Ok(Message::Text(text)))) = socket.next().now_or_never()
                        {
                            let Ok(frame) = serde_json::from_str::<RawFrame<'_>>(text.as_str())
                            else {
                                return;
                            };
                            through = through.max(frame.id);
                        }
                        if socket
                            .send(Message::Text(raw_ack(through).into()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    "end" => {
                        let received = std::mem::take(&mut pushed);
                        if socket
                            .send(Message::Text(raw_ack(received).into()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    "pipe" => {
                        for id in 1..=frame.count {
                            let text = raw_msg(id, &payload(id));
                            if socket.feed(Message::Text(text.into())).await.is_err() {
                                return;
                            }
                            if id % PIPELINE_BURST == 0 && socket.flush().await.is_err() {
                                return;
                            }
                        }
                        if socket.flush().await.is_err() {
                            return;
                        }
                    }
                    "msg"
                        if socket
                            .send(Message::Text(raw_ack(frame.id).into()))
                            .await
                            .is_err() =>
                    {
                        return;
                    }
                    "send" => {
                        let count = frame.count;
                        let (mut write, mut read) = socket.split();
                        let sending = tokio::spawn(async move {
                            for id in 1..=count {
                                let text = raw_msg(id, &payload(id));
                                if write.send(Message::Text(text.into())).await.is_err() {
                                    break;
                                }
                            }
                            write
                        });
                        let mut acked = 0;
                        while acked < count {
                            match read.next().await {
                                Some(Ok(Message::Text(text))) => {
                                    if let Ok(ack) =
                                        serde_json::from_str::<RawFrame<'_>>(text.as_str())
                                    {
                                        acked = acked.max(ack.id);
                                    }
                                }
                                _ => return,
                            }
                        }
                        let Ok(write) = sending.await else { return };
                        let Ok(reunited) = write.reunite(read) else {
                            return;
                        };
                        socket = reunited;
                    }
                    _ => {}
                }
            }
        });
    }
}
