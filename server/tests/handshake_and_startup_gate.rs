//! The server's handshake and start-up gate, against the real server on 127.0.0.1 with raw
//! WebSocket frames.

mod support;

use std::time::Duration;

use readyws_protocol::ServerConfig;
use readyws_server::ServerOptions;
use serde_json::json;
use support::{Raw, TestServer};

fn options() -> ServerOptions {
    ServerOptions::default().protocol(
        ServerConfig::default()
            .heartbeat(Duration::from_secs(30))
            .hello_timeout(Duration::from_millis(400))
            .max_frame_bytes(4096),
    )
}

/// [HS-1] [HS-4] `welcome` first, then `connection_ready` only after `hello`.
#[tokio::test]
async fn handshake_runs_in_order() {
    let server = TestServer::start(options()).await;
    let mut raw = Raw::connect(&server.url()).await;
    let welcome = raw.recv().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["protocol"], 1);
    assert_eq!(welcome["phase"], "accepting");
    assert_eq!(welcome["max_frame_bytes"], 4096);
    assert!(
        raw.quiet_for(Duration::from_millis(200)).await,
        "nothing before hello"
    );
    raw.send(json!({"type": "hello", "token": "alice"})).await;
    let ready = raw.recv().await;
    assert_eq!(ready["type"], "connection_ready");
    assert_eq!(ready["resumed"], false);
    assert_eq!(ready["last_received"], 0);
    assert!(
        ready["resume_token"]
            .as_str()
            .is_some_and(|t| t.len() >= 32),
        "128 random bits [SE-1]"
    );
    server.stop().await;
}

/// [HS-6] A `msg` before `connection_ready` gets `goaway` 4010 and a close, never a `nack`.
#[tokio::test]
async fn message_before_readiness_is_refused_by_closing() {
    let server = TestServer::start(options().wait_for_startup(true)).await;
    let mut raw = Raw::connect(&server.url()).await;
    assert_eq!(raw.recv().await["phase"], "starting");
    raw.send(json!({"type": "hello", "token": "alice"})).await;
    raw.send(json!({"type": "msg", "id": 1, "data": "too early"}))
        .await;
    let goaway = raw.recv().await;
    assert_eq!(goaway["type"], "goaway");
    assert_eq!(goaway["code"], 4010);
    assert_eq!(raw.closed().await, Some(4010));
    server.stop().await;
}

/// [SG-1] [SG-2] A message published during start-up reaches the user after `connection_ready`,
/// counted in `backlog`; `/readyz` follows the gate.
#[tokio::test]
async fn a_message_published_during_startup_arrives_after_readiness() {
    let server = TestServer::start(options().wait_for_startup(true)).await;
    assert_eq!(server.http("GET", "/readyz", &[], "").await.0, 503);
    let mut raw = Raw::connect(&server.url()).await;
    assert_eq!(raw.recv().await["phase"], "starting");
    raw.send(json!({"type": "hello", "token": "alice"})).await;
    let report = server.publish("alice", json!({"news": 1})).await;
    assert!(report.held, "no session is ready yet");
    assert!(
        raw.quiet_for(Duration::from_millis(200)).await,
        "held until start-up completes"
    );
    server.handle.mark_started();
    let ready = raw.recv().await;
    assert_eq!(ready["type"], "connection_ready");
    assert_eq!(ready["backlog"], 1);
    assert_eq!(
        raw.recv().await,
        json!({"type": "msg", "id": 1, "data": {"news": 1}})
    );
    let (status, body) = server.http("GET", "/readyz", &[], "").await;
    assert_eq!((status, body.contains("accepting")), (200, true));
    server.stop().await;
}

/// [SG-3] After the maximum wait the gate gives up with `goaway` 4002 and `retry_after_ms`.
#[tokio::test]
async fn the_gate_gives_up_with_a_retry_hint() {
    let options = options()
        .wait_for_startup(true)
        .startup_max_wait(Duration::from_millis(300), Duration::from_millis(5000));
    let server = TestServer::start(options).await;
    let mut raw = Raw::connect(&server.url()).await;
    raw.recv().await;
    raw.send(json!({"type": "hello", "token": "alice"})).await;
    let goaway = raw.recv().await;
    assert_eq!(goaway["code"], 4002);
    assert_eq!(goaway["retry_after_ms"], 5000);
    assert_eq!(raw.closed().await, Some(4002));
    server.stop().await;
}

/// [HS-7] A socket without `hello` is closed with 4001.
#[tokio::test]
async fn silent_sockets_are_closed() {
    let server = TestServer::start(options()).await;
    let mut raw = Raw::connect(&server.url()).await;
    raw.recv().await;
    let goaway = raw.recv().await;
    assert_eq!(goaway["code"], 4001);
    assert_eq!(raw.closed().await, Some(4001));
    server.stop().await;
}

/// [HB-1] [HB-4] The server pings on schedule and closes a client that never answers.
#[tokio::test]
async fn the_server_pings_and_drops_silent_clients() {
    let options = ServerOptions::default()
        .protocol(ServerConfig::default().heartbeat(Duration::from_millis(150)));
    let server = TestServer::start(options).await;
    let (mut raw, _) = Raw::handshake(&server.url(), "alice", None).await;
    assert_eq!(raw.recv().await["type"], "ping");
    let goaway = raw.recv_type_ignoring_pings("goaway").await;
    assert_eq!(goaway["code"], 4004);
    server.stop().await;
}

/// [TR-1] [TR-6] A client that does not offer `readyws.v1` is refused at the upgrade, with 400 and
/// the JSON error body.
#[tokio::test]
async fn the_subprotocol_is_required() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(options()).await;
    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buffer = vec![0; 1024];
    let read = stream.read(&mut buffer).await.expect("read");
    let response = String::from_utf8_lossy(&buffer[..read]);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("subprotocol_required"), "{response}");
    server.stop().await;
}
