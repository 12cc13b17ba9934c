//! `Server::serve` takes a complete WebSocket upgrade to `/ws` itself and hands everything else
//! to the axum router; an application can also mount `Server::router` in its own axum app. Each
//! way in must behave the same: welcome, hello, ready, acks, and the same refusals.

mod support;

use std::time::Duration;

use readyws_server::{AcceptAll, InsecureDevAuth, Server, ServerOptions};
use serde_json::json;
use support::{Raw, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

async fn round_trip(url: &str, user: &str) {
    let (mut raw, ready) = Raw::handshake(url, user, None).await;
    assert_eq!(ready["type"], "connection_ready");
    raw.send(json!({"type": "msg", "id": 1, "data": {"n": 1}}))
        .await;
    let ack = raw.recv_type("ack").await;
    assert_eq!(ack["id"], 1);
}

/// The response to a request written by hand, read until the server closes or goes quiet.
async fn response_to(address: std::net::SocketAddr, pieces: &[&str]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    for piece in pieces {
        stream.write_all(piece.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    while let Ok(Ok(read)) =
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await
    {
        if read == 0 {
            break;
        }
        response.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn the_router_mounted_in_an_application_speaks_the_protocol() {
    let server = Server::new(ServerOptions::default(), InsecureDevAuth, AcceptAll);
    let app = axum::Router::new()
        .route("/hello", axum::routing::get(|| async { "app" }))
        .merge(server.router());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });

    round_trip(&format!("ws://{address}/ws"), "alice").await;
    let refused = response_to(address, &[&format!("{UPGRADE}\r\n")]).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.contains("subprotocol_required"), "{refused}");
    let app = response_to(address, &["GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
    assert!(app.ends_with("app"), "{app}");
}

#[tokio::test]
async fn an_upgrade_whose_head_arrives_in_pieces_still_connects() {
    let server = TestServer::start(ServerOptions::default()).await;
    let (first, rest) = UPGRADE.split_at(20);
    let response = response_to(
        server.addr,
        &[
            first,
            &format!("{rest}Sec-WebSocket-Protocol: readyws.v1\r\n\r\n"),
        ],
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    assert!(response.contains("\"type\":\"welcome\""), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn served_directly_the_endpoint_refuses_what_the_router_refuses() {
    let server = TestServer::start(ServerOptions::default()).await;
    round_trip(&server.url(), "bob").await;
    // A plain GET of the endpoint is no upgrade: the router answers it.
    let plain = response_to(server.addr, &["GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
    assert!(plain.starts_with("HTTP/1.1 4"), "{plain}");
    // Other routes are the router's.
    let health = response_to(server.addr, &["GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    server.handle.shutdown();
    let stopping = response_to(
        server.addr,
        &[&format!(
            "{UPGRADE}Sec-WebSocket-Protocol: readyws.v1\r\n\r\n"
        )],
    )
    .await;
    assert!(stopping.starts_with("HTTP/1.1 503"), "{stopping}");
    server.stop().await;
}

/// Closes the handshaken socket with `code` and returns the close frame the server answers with
/// (RFC 6455 §5.5.1), or what came instead.
async fn close_answer(url: &str, code: u16) -> Result<Option<u16>, String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let (mut raw, _) = Raw::handshake(url, "closer", None).await;
    let frame = CloseFrame {
        code: code.into(),
        reason: "bye".into(),
    };
    raw.ws
        .send(Message::Close(Some(frame)))
        .await
        .expect("sent");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), raw.ws.next()).await {
            Ok(Some(Ok(Message::Close(answer)))) => {
                return Ok(answer.map(|frame| u16::from(frame.code)));
            }
            Ok(Some(Ok(_))) => continue,
            other => return Err(format!("{other:?}")),
        }
    }
}

/// The server answers the client's close frame with its own (RFC 6455 §5.5.1), echoing the code, on both
/// ways in: a client's clean close is seen as clean, not as 1006.
#[tokio::test]
async fn the_server_answers_a_close_frame_with_one() {
    let server = TestServer::start(ServerOptions::default()).await;
    assert_eq!(close_answer(&server.url(), 1000).await, Ok(Some(1000)));
    assert_eq!(close_answer(&server.url(), 4004).await, Ok(Some(4004)));
    server.stop().await;

    let mounted = Server::new(ServerOptions::default(), InsecureDevAuth, AcceptAll);
    let app = axum::Router::new().merge(mounted.router());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(
        close_answer(&format!("ws://{address}/ws"), 1000).await,
        Ok(Some(1000))
    );
}
