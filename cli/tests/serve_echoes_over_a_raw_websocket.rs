//! `readyws serve --insecure-dev-auth --echo` as a user runs it: a raw WebSocket client completes
//! the handshake and gets its message back; SIGTERM ends the server gracefully.

use std::process::Command;

mod support;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn serve_echoes_and_shuts_down_on_sigterm() {
    let (mut server, address) = support::serve(&["--echo", "--shutdown-spread-ms", "3000"]);
    // `welcome`, `hello`, then `connection_ready`.
    let (mut ws, _) = support::ready_socket(&address, "alice").await;
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
        let frame = support::next_frame(&mut ws).await.expect("open");
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
    let goaway = support::next_of_type(&mut ws, "goaway").await;
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
