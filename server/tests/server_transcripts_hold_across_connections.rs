//! The reference server against the protocol crate's `conformance/servers.json`: scenarios that span several
//! connections of a user, the publish API and the start-up gate, written so that a server in
//! any language can be run against them.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use readyws_protocol::ServerConfig;
use readyws_server::{MailboxLimits, OverflowPolicy, ServerOptions};
use serde_json::{Value, json};
use support::{PATIENCE, TestServer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const API_KEY: &str = "check-key";

/// How long a step waits, once every expected output arrived, for outputs it did not expect.
const QUIET: Duration = Duration::from_millis(150);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One client connection: its writing half, and what its reader task has received.
struct Conn {
    sink: Option<SplitSink<Socket, Message>>,
    received: mpsc::Receiver<Value>,
    reader: tokio::task::JoinHandle<()>,
}

fn millis(config: &Value, key: &str, default: u64) -> Duration {
    Duration::from_millis(config[key].as_u64().unwrap_or(default))
}

fn options(config: &Value) -> ServerOptions {
    let protocol = ServerConfig::default()
        .heartbeat(millis(config, "heartbeat_ms", 60_000))
        .hello_timeout(millis(config, "hello_timeout_ms", 10_000))
        .resume_window(millis(config, "resume_window_ms", 60_000))
        .max_frame_bytes(config["max_frame_bytes"].as_u64().unwrap_or(65_536) as usize)
        .max_inflight(config["max_inflight"].as_u64().unwrap_or(16));
    let mailbox = MailboxLimits {
        max_messages: config["mailbox_max_messages"].as_u64().unwrap_or(1000) as usize,
        ttl: millis(config, "mailbox_ttl_ms", 600_000),
        overflow: match config["mailbox_overflow"].as_str() {
            Some("drop_oldest") => OverflowPolicy::DropOldest,
            _ => OverflowPolicy::RejectNew,
        },
        ..MailboxLimits::default()
    };
    ServerOptions::default()
        .protocol(protocol)
        .mailbox(mailbox)
        .api_key(Some(API_KEY.to_owned()))
        .wait_for_startup(config["starting"] == true)
        .startup_max_wait(
            millis(config, "startup_max_wait_ms", 30_000),
            millis(config, "startup_retry_after_ms", 5_000),
        )
}

/// Reads `stream` into `sender` until the socket ends, then sends `{"closed": code}`.
async fn read_into(mut stream: SplitStream<Socket>, sender: mpsc::Sender<Value>) {
    let mut code = 1006;
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(text.as_str()).expect("frames are JSON");
                if sender.send(frame).await.is_err() {
                    return;
                }
            }
            Message::Close(frame) => {
                code = frame.map_or(1005, |frame| u16::from(frame.code));
                break;
            }
            _ => {}
        }
    }
    let _ = sender.send(json!({"closed": code})).await;
}

async fn open(server: &TestServer) -> Conn {
    let socket = support::Raw::connect(&server.url()).await.ws;
    let (sink, stream) = socket.split();
    let (sender, received) = mpsc::channel(1024);
    let reader = tokio::spawn(read_into(stream, sender));
    Conn {
        sink: Some(sink),
        received,
        reader,
    }
}

/// Whether `expected` matches `actual`: every member given is present and equal, recursively;
/// a string `"$name"` binds `name` the first time and must equal its binding afterwards.
fn matches(expected: &Value, actual: &Value, bindings: &mut HashMap<String, Value>) -> bool {
    match (expected, actual) {
        (Value::String(text), _) if text.starts_with('$') => match bindings.get(text) {
            Some(bound) => bound == actual,
            None => {
                bindings.insert(text.clone(), actual.clone());
                true
            }
        },
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| {
            have.get(key)
                .is_some_and(|found| matches(value, found, bindings))
        }),
        _ => expected == actual,
    }
}

/// `input` with every `"$name"` replaced by its binding.
fn substitute(input: &Value, bindings: &HashMap<String, Value>, scenario: &str) -> Value {
    match input {
        Value::String(text) if text.starts_with('$') => bindings
            .get(text)
            .cloned()
            .unwrap_or_else(|| panic!("{scenario}: {text} is used before it is bound")),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(key, value)| (key.clone(), substitute(value, bindings, scenario)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn conn_number(value: &Value) -> u64 {
    value["conn"].as_u64().expect("`conn` is a number")
}

/// Collects what every connection receives until each has at least what `expected` lists for
/// it, then for [`QUIET`] more. Pings are answered and left out.
async fn collect(
    conns: &mut BTreeMap<u64, Conn>,
    expected: &BTreeMap<u64, usize>,
) -> BTreeMap<u64, Vec<Value>> {
    let mut got: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut quiet_until: Option<tokio::time::Instant> = None;
    loop {
        let satisfied = expected
            .iter()
            .all(|(conn, count)| got.get(conn).map_or(0, Vec::len) >= *count);
        if satisfied && quiet_until.is_none() {
            quiet_until = Some(tokio::time::Instant::now() + QUIET);
        }
        let until = quiet_until.unwrap_or(deadline);
        if tokio::time::Instant::now() >= until {
            return got;
        }
        let mut any = false;
        for (number, conn) in conns.iter_mut() {
            while let Ok(item) = conn.received.try_recv() {
                any = true;
                if item["type"] == "ping" {
                    if let Some(sink) = conn.sink.as_mut() {
                        let pong = json!({"type": "pong", "nonce": item["nonce"]});
                        let _ = sink.send(Message::text(pong.to_string())).await;
                    }
                    continue;
                }
                if item.get("closed").is_some() {
                    conn.sink = None;
                }
                got.entry(*number).or_default().push(item);
            }
        }
        if !any {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn publish(server: &TestServer, input: &Value) -> (u16, Value) {
    let body = json!({"user": input["user"], "data": input["data"]}).to_string();
    let authorization = format!("Bearer {API_KEY}");
    let (status, body) = server
        .http(
            "POST",
            "/api/publish",
            &[
                ("Authorization", &authorization),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn run(scenario: &Value) {
    let name = scenario["name"].as_str().unwrap_or("?");
    let server = TestServer::start(options(&scenario["config"])).await;
    let mut conns: BTreeMap<u64, Conn> = BTreeMap::new();
    let mut bindings: HashMap<String, Value> = HashMap::new();
    let steps = scenario["steps"].as_array().expect("`steps` is a list");
    for (index, step) in steps.iter().enumerate() {
        let step_no = index + 1;
        if let Some(input) = step.get("open") {
            conns.insert(conn_number(input), open(&server).await);
        } else if let Some(input) = step.get("send") {
            let conn = conns
                .get_mut(&conn_number(input))
                .unwrap_or_else(|| panic!("{name}, step {step_no}: no such connection"));
            let text = match input["text"].as_str() {
                Some(text) => text.to_owned(),
                None => substitute(&input["frame"], &bindings, name).to_string(),
            };
            let sink = conn.sink.as_mut().expect("the connection is open");
            sink.send(Message::text(text)).await.expect("send");
        } else if let Some(input) = step.get("close") {
            let conn = conns.get_mut(&conn_number(input)).expect("a connection");
            let code = input["code"].as_u64().expect("a close code") as u16;
            let sink = conn.sink.as_mut().expect("the connection is open");
            let close = CloseFrame {
                code: code.into(),
                reason: "".into(),
            };
            sink.send(Message::Close(Some(close))).await.expect("close");
        } else if let Some(input) = step.get("drop") {
            // Both halves go, so the TCP stream ends without a close frame.
            let conn = conns.remove(&conn_number(input)).expect("a connection");
            conn.reader.abort();
            let _ = conn.reader.await;
            drop(conn.sink);
        } else if let Some(input) = step.get("publish") {
            let (status, body) = publish(&server, input).await;
            let want = &step["published"];
            let answer = json!({"status": status, "body": body});
            assert!(
                matches(want, &answer, &mut bindings),
                "{name}, step {step_no}: publish answered {answer}, expected {want}"
            );
        } else if step.get("start").is_some() {
            server.handle.mark_started();
        } else if let Some(wait) = step.get("wait") {
            tokio::time::sleep(Duration::from_millis(wait.as_u64().expect("ms"))).await;
        } else {
            panic!("{name}, step {step_no}: no input");
        }

        let mut expected: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
        for entry in step["expect"].as_array().into_iter().flatten() {
            let output = match entry.get("frame") {
                Some(frame) => frame.clone(),
                None => json!({"closed": entry["closed"]}),
            };
            expected.entry(conn_number(entry)).or_default().push(output);
        }
        let counts = expected.iter().map(|(c, list)| (*c, list.len())).collect();
        let got = collect(&mut conns, &counts).await;
        for number in expected.keys().chain(got.keys()) {
            let want = expected.get(number).cloned().unwrap_or_default();
            let have = got.get(number).cloned().unwrap_or_default();
            let same = want.len() == have.len()
                && want
                    .iter()
                    .zip(&have)
                    .all(|(w, h)| matches(w, h, &mut bindings));
            assert!(
                same,
                "{name}, step {step_no}, connection {number}:\n  expected: {}\n  received: {}",
                Value::Array(want),
                Value::Array(have)
            );
        }
    }
    server.stop().await;
}

/// [RS-4] [RS-7] [RS-8] [DL-8] [DL-13] [CU-1] [CU-2] [CU-3] [CU-4] [CU-5] [SG-2] [SG-3] [PB-4]
/// Every whole-server scenario of the conformance vectors holds against the reference server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_server_follows_every_server_scenario() {
    let vectors: Value =
        serde_json::from_str(readyws_protocol::conformance::SERVERS).expect("servers.json is JSON");
    let scenarios = vectors["servers"].as_array().expect("`servers` is a list");
    assert!(scenarios.len() >= 12, "{}", scenarios.len());
    // Each scenario has its own server: they run side by side.
    futures_util::future::join_all(scenarios.iter().map(run)).await;
}
