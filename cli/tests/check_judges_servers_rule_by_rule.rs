//! `readyws check` passes every rule against `readyws serve` (with fast timers, with the
//! defaults, echoing, and starting), and against servers made wrong on purpose — one fault per
//! rule it checks — fails exactly the rule each fault breaks. A faulty server is `readyws serve`
//! behind a proxy that changes, drops or rewrites frames in one direction; the checker names each
//! check in `hello.client.version` (`0.1.0+DL-7`), so that a fault can target one check's
//! connections.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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

/// `readyws check URL --json` with `token` and the publish API at `publish`, run off the async
/// runtime.
async fn check(url: String, publish: String, token: String) -> (Output, Vec<Value>) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_readyws"))
            .args(["check", &url, "--token", &token, "--api-key", "check-key"])
            .args(["--publish-url", &publish, "--json"])
            .output()
            .expect("the readyws binary runs");
        let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "--json prints the results ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
        (output, results)
    })
    .await
    .expect("the check ran")
}

/// `check` straight against a server at `address`.
async fn check_server(address: &str) -> (Output, Vec<Value>) {
    check(
        format!("ws://{address}/ws"),
        format!("http://{address}/api/publish"),
        "checker".to_owned(),
    )
    .await
}

fn with_status<'a>(results: &'a [Value], status: &str) -> BTreeSet<&'a str> {
    results
        .iter()
        .filter(|result| result["status"] == status)
        .map(|result| result["rule"].as_str().unwrap_or_default())
        .collect()
}

/// Every row passes, except the start-up rows, which a server not starting skips.
fn assert_all_pass(output: &Output, results: &[Value]) {
    assert!(
        output.status.success(),
        "{results:#?}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(results.len() >= 35, "{results:#?}");
    assert_eq!(
        with_status(results, "SKIP"),
        BTreeSet::from(["SG-2", "SG-3"]),
        "{results:#?}"
    );
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "PASS"
                || r["rule"].as_str().is_some_and(|id| id.starts_with("SG-"))),
        "{results:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_passes_against_the_reference_server() {
    let (_server, address) = support::serve(&SERVE);
    let (output, results) = check_server(&address).await;
    assert_all_pass(&output, &results);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_passes_against_the_reference_server_with_its_defaults() {
    let (_server, address) = support::serve(&["--api-key", "check-key"]);
    let (output, results) = check_server(&address).await;
    assert_all_pass(&output, &results);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_passes_against_the_reference_server_that_echoes() {
    // Echoes of earlier messages arrive while later checks wait: a message from the server is
    // no reply from the client and ends no silence [HB-4].
    let mut serve = SERVE.to_vec();
    serve.push("--echo");
    let (_server, address) = support::serve(&serve);
    let (output, results) = check_server(&address).await;
    assert_all_pass(&output, &results);
}

fn status_of<'a>(results: &'a [Value], rule: &str) -> &'a Value {
    &results
        .iter()
        .find(|result| result["rule"] == rule)
        .unwrap_or_else(|| panic!("{rule} is reported: {results:#?}"))["status"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_server_passes_the_startup_gate_rows() {
    let mut serve = SERVE.to_vec();
    serve.extend(["--startup-delay-ms", "1500"]);
    let (_server, address) = support::serve(&serve);
    let (output, results) = check_server(&address).await;
    assert!(output.status.success(), "{results:#?}");
    assert_eq!(status_of(&results, "SG-2"), "PASS", "{results:#?}");
    assert_eq!(status_of(&results, "SG-3"), "SKIP", "{results:#?}");

    let mut serve = SERVE.to_vec();
    serve.extend(["--startup-delay-ms", "2500", "--startup-max-wait-ms", "300"]);
    serve.extend(["--startup-retry-after-ms", "500"]);
    let (_server, address) = support::serve(&serve);
    let (output, results) = check_server(&address).await;
    assert!(output.status.success(), "{results:#?}");
    assert_eq!(status_of(&results, "SG-3"), "PASS", "{results:#?}");
    assert_eq!(status_of(&results, "SG-2"), "SKIP", "{results:#?}");
    assert_eq!(
        status_of(&results, "HS-4"),
        "PASS",
        "the other checks meet the started server"
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// What a fault knows of the connection it is on.
#[derive(Default)]
struct Seen {
    /// The check that opened it, from its `hello` (empty before one).
    tag: String,
    /// Frames of interest counted by the fault.
    count: u32,
}

/// Where a message is going, and what the fault may know and remember.
struct Hop<'a> {
    way: Way,
    seen: &'a mut Seen,
    /// Shared by every connection of one proxy, for faults that remember across connections.
    latest: &'a Mutex<String>,
}

/// Turns one message into what the proxy passes on (`None`: dropped).
type Fault = fn(&mut Hop<'_>, Message) -> Option<Message>;

fn json(message: &Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text.as_str()).ok(),
        _ => None,
    }
}

fn text(frame: &Value) -> Option<Message> {
    Some(Message::text(frame.to_string()))
}

/// Relays WebSockets from a new port to `upstream` through `fault`.
// tungstenite's accept callback returns its (large) HTTP error response by value.
#[allow(clippy::result_large_err)]
async fn faulty_proxy(upstream: SocketAddr, fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let latest = Arc::new(Mutex::new(String::new()));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let latest = Arc::clone(&latest);
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
                let seen = Mutex::new(Seen::default());
                let (mut to_client, mut from_client) = client.split();
                let (mut to_server, mut from_server) = server.split();
                let pass = |way: Way, message: Message| {
                    let mut seen = seen.lock().expect("not poisoned");
                    if way == Way::Up {
                        if let Some(frame) = json(&message) {
                            if frame["type"] == "hello" {
                                let version = frame["client"]["version"].as_str().unwrap_or("");
                                seen.tag = version.split('+').nth(1).unwrap_or("").to_owned();
                            }
                        }
                    }
                    let mut hop = Hop {
                        way,
                        seen: &mut seen,
                        latest: &latest,
                    };
                    fault(&mut hop, message)
                };
                let up = async {
                    while let Some(Ok(message)) = from_client.next().await {
                        let Some(message) = pass(Way::Up, message) else {
                            continue;
                        };
                        if to_server.send(message).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    while let Some(Ok(message)) = from_server.next().await {
                        let Some(message) = pass(Way::Down, message) else {
                            continue;
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

/// A fault on the publish API: the request and the server's answer in, the answer out.
type HttpFault = fn(&str, u16, String) -> (u16, String);

/// Relays plain HTTP/1.1 requests (one per connection) to `upstream` through `fault`.
async fn faulty_http_proxy(upstream: SocketAddr, fault: HttpFault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // The head, then as much body as Content-Length says.
                loop {
                    let Ok(read) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                }
                let Ok(mut upstream) = TcpStream::connect(upstream).await else {
                    return;
                };
                if upstream.write_all(&request).await.is_err() {
                    return;
                }
                let mut response = Vec::new();
                let _ = upstream.read_to_end(&mut response).await;
                let response = String::from_utf8_lossy(&response).into_owned();
                let status = response
                    .split_whitespace()
                    .nth(1)
                    .and_then(|code| code.parse().ok())
                    .unwrap_or(502);
                let body = response
                    .split_once("\r\n\r\n")
                    .map(|(_, body)| body.to_owned())
                    .unwrap_or_default();
                let (status, body) = fault(&String::from_utf8_lossy(&request), status, body);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    address
}

fn honest_http(_: &str, status: u16, body: String) -> (u16, String) {
    (status, body)
}

/// Rewrites a frame of `kind` coming `way` on connections tagged `tag` (any tag when empty).
fn edit(
    hop: &Hop<'_>,
    message: Message,
    want: (Way, &str, &str),
    change: impl FnOnce(&mut Value) -> bool,
) -> Option<Message> {
    let (want_way, tag, kind) = want;
    let targeted = hop.way == want_way && (tag.is_empty() || hop.seen.tag == tag);
    match json(&message) {
        Some(mut frame) if targeted && frame["type"] == kind => {
            if change(&mut frame) {
                text(&frame)
            } else {
                None
            }
        }
        _ => Some(message),
    }
}

// One fault per rule. Each returns `None` to drop a message.

fn wrong_pong_nonce(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "", "pong"), |f| {
        f["nonce"] = Value::from("not-the-nonce-sent");
        true
    })
}

fn no_pings(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "", "ping"), |_| false)
}

fn too_large_said_invalid(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "", "nack"), |f| {
        if f["code"] == "too_large" {
            f["code"] = Value::from("invalid");
        }
        true
    })
}

fn never_acks(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Up, "DL-7", "msg"), |_| false)
}

fn ignores_duplicates(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    let duplicate = hop.way == Way::Up
        && hop.seen.tag == "DL-4"
        && json(&m).is_some_and(|f| f["type"] == "msg")
        && {
            hop.seen.count += 1;
            hop.seen.count > 1
        };
    (!duplicate).then_some(m)
}

fn accepts_gaps(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Up, "DL-3", "msg"), |f| {
        f["id"] = Value::from(1);
        true
    })
}

fn ignores_wild_acks(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Up, "DL-5", "ack"), |_| false)
}

fn refuses_unknown_types(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Up, "FR-3", "x-readyws-check-later"), |f| {
        *f = serde_json::json!({"type": "hello"});
        true
    })
}

fn accepts_wrong_direction(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Up, "FR-4", "welcome"), |f| {
        *f = serde_json::json!({"type": "x-later"});
        true
    })
}

fn accepts_invalid_json(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    match &m {
        Message::Text(t)
            if hop.way == Way::Up
                && t.as_str() == "{not json"
                && hop.seen.tag.starts_with("FR-8") =>
        {
            Some(Message::text(r#"{"type":"ping"}"#))
        }
        _ => Some(m),
    }
}

fn accepts_binary(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    match m {
        Message::Binary(_) if hop.way == Way::Up => Some(Message::text(r#"{"type":"ping"}"#)),
        other => Some(other),
    }
}

fn accepts_second_hello(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    let second = hop.way == Way::Up && json(&m).is_some_and(|f| f["type"] == "hello") && {
        hop.seen.count += 1;
        hop.seen.count > 1
    };
    (!second).then_some(m)
}

fn ignores_early_msg(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    let early = hop.way == Way::Up
        && json(&m).is_some_and(|f| f["type"] == "msg" && f["data"]["check"] == "HS-6");
    (!(early && hop.seen.tag.is_empty())).then_some(m)
}

fn no_goaway_before_close(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "", "goaway"), |f| f["code"] != 4010)
}

fn goaway_code(way: Way, m: Message, from: u64, to: u64) -> Option<Message> {
    match json(&m) {
        Some(mut f) if way == Way::Down && f["type"] == "goaway" && f["code"] == from => {
            f["code"] = Value::from(to);
            text(&f)
        }
        _ => Some(m),
    }
}

fn wrong_hello_timeout_code(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    goaway_code(hop.way, m, 4001, 4000)
}

fn wrong_heartbeat_code(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    goaway_code(hop.way, m, 4004, 4000)
}

fn resumes_with_a_wrong_token(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Up, "RS-3-wrong", "hello"), |f| {
        let token = f["resume"]["resume_token"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        f["resume"]["resume_token"] = Value::from(token.trim_end_matches("-wrong"));
        true
    })
}

fn resumes_for_another_user(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Up, "SE-3", "hello"), |f| {
        let token = f["token"].as_str().unwrap_or("").to_owned();
        f["token"] = Value::from(token.trim_end_matches("-other-user"));
        true
    })
}

fn never_resumes(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(
        hop,
        m,
        (Way::Down, "RS-3-resume", "connection_ready"),
        |f| {
            f["resumed"] = Value::from(false);
            f["session_id"] = Value::from("s-another");
            f["last_received"] = Value::from(0);
            true
        },
    )
}

fn accepts_impossible_positions(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Up, "RS-4", "hello"), |f| {
        f["resume"]["last_received"] = Value::from(0);
        true
    })
}

fn no_takeover_goaway(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "", "goaway"), |f| f["code"] != 4203)
}

fn old_tokens_resume(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    let Some(mut frame) = json(&m) else {
        return Some(m);
    };
    if hop.way == Way::Down
        && frame["type"] == "connection_ready"
        && hop.seen.tag.starts_with("RS-8")
    {
        *hop.latest.lock().expect("not poisoned") =
            frame["resume_token"].as_str().unwrap_or("").to_owned();
    }
    if hop.way == Way::Up && frame["type"] == "hello" && hop.seen.tag == "RS-8-old" {
        // As if the server still took the old token: present the one it knows.
        frame["resume"]["resume_token"] =
            Value::from(hop.latest.lock().expect("not poisoned").clone());
        return text(&frame);
    }
    Some(m)
}

fn no_nack_replay(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "DL-8", "nack"), |_| false)
}

fn loses_held_messages(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "CU-1", "msg"), |_| false)
}

fn one_session_only(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "CU-4-second", "msg"), |_| false)
}

fn resumes_unasked(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "HS-4", "connection_ready"), |f| {
        f["resumed"] = Value::from(true);
        true
    })
}

fn honest(_: &mut Hop<'_>, m: Message) -> Option<Message> {
    Some(m)
}

fn any_key_will_do(request: &str, status: u16, body: String) -> (u16, String) {
    if request.contains("check-key-wrong") {
        return (
            202,
            r#"{"delivered":0,"held":true,"dropped_oldest":0}"#.to_owned(),
        );
    }
    (status, body)
}

fn any_body_will_do(request: &str, status: u16, body: String) -> (u16, String) {
    if !request.contains("\"user\"") {
        return (
            202,
            r#"{"delivered":0,"held":true,"dropped_oldest":0}"#.to_owned(),
        );
    }
    (status, body)
}

fn no_dropped_count(_: &str, status: u16, body: String) -> (u16, String) {
    if status == 202 {
        return (202, body.replace(",\"dropped_oldest\":0", ""));
    }
    (status, body)
}

fn unbounded_mailbox(_: &str, status: u16, body: String) -> (u16, String) {
    if status == 429 {
        return (500, "internal error".to_owned());
    }
    (status, body)
}

/// Each fault, the rule it breaks, and whether it is in the WebSocket or the HTTP proxy.
const FAULTS: &[(&str, Fault, HttpFault)] = &[
    ("HB-5", wrong_pong_nonce, honest_http),
    ("HB-1", no_pings, honest_http),
    ("FR-6", too_large_said_invalid, honest_http),
    ("DL-7", never_acks, honest_http),
    ("DL-4", ignores_duplicates, honest_http),
    ("DL-3", accepts_gaps, honest_http),
    ("DL-5", ignores_wild_acks, honest_http),
    ("FR-3", refuses_unknown_types, honest_http),
    ("FR-4", accepts_wrong_direction, honest_http),
    ("FR-8", accepts_invalid_json, honest_http),
    ("TR-3", accepts_binary, honest_http),
    ("HS-3", accepts_second_hello, honest_http),
    ("HS-6", ignores_early_msg, honest_http),
    ("GA-1", no_goaway_before_close, honest_http),
    ("HS-7", wrong_hello_timeout_code, honest_http),
    ("HB-4", wrong_heartbeat_code, honest_http),
    ("RS-3", resumes_with_a_wrong_token, honest_http),
    ("SE-3", resumes_for_another_user, honest_http),
    ("RS-3", never_resumes, honest_http),
    ("RS-4", accepts_impossible_positions, honest_http),
    ("RS-7", no_takeover_goaway, honest_http),
    ("RS-8", old_tokens_resume, honest_http),
    ("DL-8", no_nack_replay, honest_http),
    ("CU-1", loses_held_messages, honest_http),
    ("CU-4", one_session_only, honest_http),
    ("HS-4", resumes_unasked, honest_http),
    ("PB-1", honest, any_key_will_do),
    ("PB-2", honest, any_body_will_do),
    ("PB-4", honest, no_dropped_count),
    ("CU-5", honest, unbounded_mailbox),
];

/// One server, one faulty proxy per rule, all checked side by side: each fails that rule alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_made_wrong_in_one_rule_fails_exactly_that_rule() {
    let (_server, address) = support::serve(&SERVE);
    let upstream: SocketAddr = address.parse().expect("an address");
    let mut runs = Vec::new();
    for (index, (rule, fault, http_fault)) in FAULTS.iter().enumerate() {
        let proxy = faulty_proxy(upstream, *fault).await;
        let http = faulty_http_proxy(upstream, *http_fault).await;
        // A user per run, so that runs side by side share no sessions or mailbox.
        let token = format!("checker-{index}");
        let run = check(
            format!("ws://{proxy}/ws"),
            format!("http://{http}/api/publish"),
            token,
        );
        runs.push(async move { (*rule, run.await) });
    }
    for (rule, (output, results)) in futures_util::future::join_all(runs).await {
        assert!(
            !output.status.success(),
            "{rule}: a failing rule fails the run"
        );
        assert_eq!(
            with_status(&results, "FAIL"),
            BTreeSet::from([rule]),
            "the fault of {rule}: {results:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_says_what_came_back() {
    let (_server, address) = support::serve(&SERVE);
    let upstream: SocketAddr = address.parse().expect("an address");
    let proxy = faulty_proxy(upstream, wrong_pong_nonce).await;
    let (_, results) = check(
        format!("ws://{proxy}/ws"),
        format!("http://{address}/api/publish"),
        "checker".to_owned(),
    )
    .await;
    let pong = results
        .iter()
        .find(|result| result["rule"] == "HB-5")
        .expect("HB-5 was checked");
    assert!(
        pong["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("not-the-nonce-sent")),
        "{pong}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hello_names_the_goaway_code_and_the_missing_token() {
    let (_server, address) = support::serve(&SERVE);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_readyws"))
            .args(["check", &format!("ws://{address}/ws"), "--json"])
            .output()
            .expect("the readyws binary runs")
    })
    .await
    .expect("ran");
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    let hs_4 = results
        .iter()
        .find(|result| result["rule"] == "HS-4")
        .expect("HS-4 was checked");
    assert_eq!(hs_4["status"], "FAIL");
    let detail = hs_4["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("4100") && detail.contains("--token"),
        "{detail}"
    );
}

/// The `goaway` reasons of the server, rewritten: cited without brackets, or citing no rule
/// that exists.
fn cite_without_brackets(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "", "goaway"), |f| {
        if f["code"] == 4010 {
            f["reason"] = Value::from("FR-1: frame is not valid JSON");
        }
        true
    })
}

fn cite_a_rule_that_does_not_exist(hop: &mut Hop<'_>, m: Message) -> Option<Message> {
    edit(hop, m, (Way::Down, "", "goaway"), |f| {
        if f["code"] == 4010 {
            f["reason"] = Value::from("[XX-99] not a rule");
        }
        true
    })
}

/// A SHOULD is judged WARN, never FAIL, and a citation counts only when the rule it names
/// exists, bracketed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_rules_warn_and_citations_must_name_real_rules() {
    let (_server, address) = support::serve(&SERVE);
    let upstream: SocketAddr = address.parse().expect("an address");
    let publish = format!("http://{address}/api/publish");

    let proxy = faulty_proxy(upstream, cite_without_brackets).await;
    let (output, results) = check(
        format!("ws://{proxy}/ws"),
        publish.clone(),
        "checker".into(),
    )
    .await;
    assert!(output.status.success(), "{results:#?}");
    assert!(with_status(&results, "WARN").is_empty(), "{results:#?}");

    let proxy = faulty_proxy(upstream, cite_a_rule_that_does_not_exist).await;
    let (output, results) = check(format!("ws://{proxy}/ws"), publish, "checker-2".into()).await;
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
