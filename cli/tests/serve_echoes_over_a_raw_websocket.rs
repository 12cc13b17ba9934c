//! `readyws serve --insecure-dev-auth --echo` as a user runs it: a raw WebSocket client completes
//! the handshake and gets its message back; SIGTERM ends the server gracefully.

use std::process::Command;
use std::time::Duration;

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn recv(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("valid");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("json");
        }
    }
}

#[tokio::test]
async fn serve_echoes_and_shuts_down_on_sigterm() {
    let (mut server, address) = support::serve(&["--echo", "--shutdown-spread-ms", "3000"]);
    let mut request = format!("ws://{address}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "readyws.v1".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    ws.send(Message::Text(
        json!({"type": "hello", "token": "alice"})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    assert_eq!(recv(&mut ws).await["type"], "connection_ready");
    ws.send(Message::Text(
        json!({"type": "msg", "id": 1, "data": {"say": "hi"}})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    let mut got_ack = false;
    let mut echoed = None;
    while !got_ack || echoed.is_none() {
        let frame = recv(&mut ws).await;
        match frame["type"].as_str() {
            Some("ack") => got_ack = frame["id"] == 1,
            Some("msg") => echoed = Some(frame["data"].clone()),
            _ => {}
        }
    }
    assert_eq!(echoed, Some(json!({"say": "hi"})));

    let pid = server.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let goaway = loop {
        let frame = recv(&mut ws).await;
        if frame["type"] == "goaway" {
            break frame;
        }
    };
    assert_eq!(goaway["code"], 4000);
    assert!(
        goaway["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms < 3000)
    );
    let status = tokio::task::spawn_blocking(move || server.0.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "graceful exit: {status}");
}

#[test]
fn serve_refuses_to_start_without_an_authentication_choice() {
    let output = Command::new(env!("CARGO_BIN_EXE_readyws"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("READYWS_JWT_SECRET")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--jwt-secret") && stderr.contains("--insecure-dev-auth"),
        "{stderr}"
    );
}
