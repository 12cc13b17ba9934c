//! `readyws check` passes every rule against `readyws serve`, and against a server with known
//! faults fails exactly the rules those faults break. The faulty server is `readyws serve` behind
//! a WebSocket proxy that drops the server's pings, answers pings with the wrong nonce, and turns
//! `nack` code `too_large` into `invalid`.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Output};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const SERVE: [&str; 8] = [
    "--heartbeat-ms",
    "500",
    "--hello-timeout-ms",
    "1000",
    "--api-key",
    "check-key",
    "--max-frame-bytes",
    "65536",
];

fn check(url: &str) -> (Output, Vec<Value>) {
    let output = Command::new(env!("CARGO_BIN_EXE_readyws"))
        .args([
            "check",
            url,
            "--token",
            "checker",
            "--api-key",
            "check-key",
            "--publish-url",
        ])
        .arg(publish_url(url))
        .arg("--json")
        .output()
        .expect("the readyws binary runs");
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "--json prints the results ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (output, results)
}

/// The publish API next to a WebSocket endpoint.
fn publish_url(url: &str) -> String {
    let authority = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default();
    format!("http://{authority}/api/publish")
}

fn with_status<'a>(results: &'a [Value], status: &str) -> BTreeSet<&'a str> {
    results
        .iter()
        .filter(|result| result["status"] == status)
        .map(|result| result["rule"].as_str().unwrap_or_default())
        .collect()
}

#[test]
fn every_rule_passes_against_the_reference_server() {
    let (_server, address) = support::serve(&SERVE);
    let (output, results) = check(&format!("ws://{address}/ws"));
    assert!(
        output.status.success(),
        "{results:#?}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(results.len() >= 15, "{results:#?}");
    assert!(
        results.iter().all(|result| result["status"] == "PASS"),
        "{results:#?}"
    );
}

/// Relays WebSockets from a new port to `upstream`, rewriting the server's frames.
// tungstenite's accept callback returns its (large) HTTP error response by value.
#[allow(clippy::result_large_err)]
async fn faulty_proxy(upstream: SocketAddr, rewrite: fn(&str) -> Option<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let accept = |_: &Request, mut response: Response| {
                    response.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        "readyws.v1".parse().expect("header"),
                    );
                    Ok(response)
                };
                let Ok(client) = tokio_tungstenite::accept_hdr_async(stream, accept).await else {
                    return;
                };
                let mut request = format!("ws://{upstream}/ws")
                    .into_client_request()
                    .expect("request");
                request.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    "readyws.v1".parse().expect("header"),
                );
                let Ok((server, _)) = tokio_tungstenite::connect_async(request).await else {
                    return;
                };
                let (mut to_client, mut from_client) = client.split();
                let (mut to_server, mut from_server) = server.split();
                let up = async {
                    while let Some(Ok(message)) = from_client.next().await {
                        if to_server.send(message).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    while let Some(Ok(message)) = from_server.next().await {
                        let message = match message {
                            Message::Text(text) => match rewrite(text.as_str()) {
                                Some(text) => Message::text(text),
                                None => continue,
                            },
                            other => other,
                        };
                        if to_client.send(message).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            });
        }
    });
    address
}

/// The faults: no pings, wrong pong nonces, and too_large refusals reported as invalid.
fn rewrite(text: &str) -> Option<String> {
    let mut frame: Value = serde_json::from_str(text).ok()?;
    match frame["type"].as_str() {
        Some("ping") => return None,
        Some("pong") => frame["nonce"] = Value::from("not-the-nonce-sent"),
        Some("nack") if frame["code"] == "too_large" => frame["code"] = Value::from("invalid"),
        _ => return Some(text.to_owned()),
    }
    Some(frame.to_string())
}

/// `readyws check URL` with the publish API at `publish`, run off the async runtime.
async fn check_through(url: String, publish: String) -> (Output, Vec<Value>) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_readyws"))
            .args([
                "check",
                &url,
                "--token",
                "checker",
                "--api-key",
                "check-key",
                "--publish-url",
                &publish,
                "--json",
            ])
            .output()
            .expect("the readyws binary runs");
        let results: Vec<Value> =
            serde_json::from_slice(&output.stdout).expect("--json prints the results");
        (output, results)
    })
    .await
    .expect("the check ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_server_fails_exactly_the_rules_it_breaks() {
    let (_server, address) = support::serve(&SERVE);
    let upstream: SocketAddr = address.parse().expect("an address");
    let proxy = faulty_proxy(upstream, rewrite).await;
    // The proxy carries only WebSockets: publishing goes to the server itself.
    let url = format!("ws://{proxy}/ws");
    let publish = format!("http://{address}/api/publish");
    let (output, results) = check_through(url, publish).await;
    assert!(!output.status.success(), "a failing rule fails the run");
    assert_eq!(
        with_status(&results, "FAIL"),
        BTreeSet::from(["FR-6", "HB-1", "HB-5"]),
        "{results:#?}"
    );
    let pong = results
        .iter()
        .find(|result| result["rule"] == "HB-5")
        .expect("HB-5 was checked");
    assert!(
        pong["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("not-the-nonce-sent")),
        "a failure says what came back: {pong}"
    );
}

#[test]
fn every_rule_passes_against_the_reference_server_that_echoes() {
    // Echoes of earlier steps' messages arrive while later steps wait: a message from the server
    // is no reply from the client and ends no silence [HB-4].
    let mut serve = SERVE.to_vec();
    serve.push("--echo");
    let (_server, address) = support::serve(&serve);
    let (output, results) = check(&format!("ws://{address}/ws"));
    assert!(output.status.success(), "{results:#?}");
    assert!(
        results.iter().all(|result| result["status"] == "PASS"),
        "{results:#?}"
    );
}

/// The `goaway` reasons of the server, rewritten: cited without brackets, or citing no rule
/// that exists.
fn cite_without_brackets(text: &str) -> Option<String> {
    reason_as(text, "FR-1: frame is not valid JSON")
}

fn cite_a_rule_that_does_not_exist(text: &str) -> Option<String> {
    reason_as(text, "[XX-99] not a rule")
}

fn reason_as(text: &str, reason: &str) -> Option<String> {
    let mut frame: Value = serde_json::from_str(text).ok()?;
    if frame["type"] == "goaway" && frame["code"] == 4010 {
        frame["reason"] = Value::from(reason);
        return Some(frame.to_string());
    }
    Some(text.to_owned())
}

/// A SHOULD is judged WARN, never FAIL, and a citation counts only when the rule it names
/// exists, bracketed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_rules_warn_and_citations_must_name_real_rules() {
    let (_server, address) = support::serve(&SERVE);
    let upstream: SocketAddr = address.parse().expect("an address");
    let publish = format!("http://{address}/api/publish");

    let proxy = faulty_proxy(upstream, cite_without_brackets).await;
    let (output, results) = check_through(format!("ws://{proxy}/ws"), publish.clone()).await;
    assert!(output.status.success(), "{results:#?}");
    assert!(with_status(&results, "WARN").is_empty(), "{results:#?}");
    assert!(with_status(&results, "FAIL").is_empty(), "{results:#?}");

    let proxy = faulty_proxy(upstream, cite_a_rule_that_does_not_exist).await;
    let (output, results) = check_through(format!("ws://{proxy}/ws"), publish).await;
    assert!(
        output.status.success(),
        "a SHOULD fails no run: {results:#?}"
    );
    assert!(with_status(&results, "FAIL").is_empty(), "{results:#?}");
    assert_eq!(
        with_status(&results, "WARN"),
        BTreeSet::from(["FR-8"]),
        "{results:#?}"
    );
}
