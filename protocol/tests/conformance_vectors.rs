//! Runs the language-neutral vectors of `conformance/` ([`readyws_protocol::conformance`])
//! against this implementation, so that every vector another implementer relies on is one this
//! code passes.

use std::time::Duration;

use readyws_protocol::Frame;
use readyws_protocol::codec::{decode, encode};
use readyws_protocol::frame::ResumeToken;
use readyws_protocol::{
    Action, BackoffConfig, ClientConfig, ClientEvent, ClientSession, CloseReason, ConnId,
    ConnectionCloseReason, ConnectionEvent, Data, DecodeError, DisconnectReason, MessageId,
    OutboxLimits, Outcome, ResetPolicy, Role, SendErrorReason, ServerConfig, ServerConnection,
    ServerPhase, ServerSession, SessionEvent, Time,
};
use serde_json::{Value, json};

fn load(name: &str) -> Value {
    let text = match name {
        "frames.json" => readyws_protocol::conformance::FRAMES,
        "transcripts.json" => readyws_protocol::conformance::TRANSCRIPTS,
        "servers.json" => readyws_protocol::conformance::SERVERS,
        other => panic!("no vector file {other}"),
    };
    serde_json::from_str(text).unwrap_or_else(|e| panic!("parsing {name}: {e}"))
}

fn role(value: &Value) -> Role {
    match value.as_str() {
        Some("client") => Role::Client,
        Some("server") => Role::Server,
        other => panic!("unknown sender {other:?}"),
    }
}

#[test]
fn valid_frames_decode_to_their_stated_meaning_and_round_trip() {
    let vectors = load("frames.json");
    let valid = vectors["valid"].as_array().expect("`valid` is a list");
    assert!(valid.len() >= 20, "every frame type has valid examples");
    for vector in valid {
        let name = vector["name"].as_str().unwrap_or("?");
        let text = vector["text"].as_str().expect("`text` is a string");
        let frame = decode(text, role(&vector["sender"]), 1 << 20)
            .unwrap_or_else(|e| panic!("{name}: expected to decode, got {e}"));
        let encoded = encode(&frame);
        if let Some(data_text) = vector["data_text"].as_str() {
            match &frame {
                Frame::Msg(message) => assert_eq!(
                    message.data.as_json(),
                    data_text,
                    "{name}: data passed on as it arrived"
                ),
                other => panic!("{name}: `data_text` is for msg frames, got {other:?}"),
            }
        } else {
            let members: Value = serde_json::from_str(&encoded).expect("encoding gives JSON");
            assert_eq!(members, vector["frame"], "{name}: decoded members");
        }
        let again = decode(&encoded, role(&vector["sender"]), 1 << 20)
            .unwrap_or_else(|e| panic!("{name}: re-encoded frame fails to decode: {e}"));
        assert_eq!(again, frame, "{name}: round trip");
    }
}

#[test]
fn invalid_frames_fail_with_their_stated_error_class() {
    let vectors = load("frames.json");
    let invalid = vectors["invalid"].as_array().expect("`invalid` is a list");
    let mut classes = std::collections::BTreeSet::new();
    for vector in invalid {
        let name = vector["name"].as_str().unwrap_or("?");
        let text = vector["text"].as_str().expect("`text` is a string");
        let limit = vector["max_frame_bytes"].as_u64().unwrap_or(1 << 20) as usize;
        let error = decode(text, role(&vector["sender"]), limit)
            .expect_err(&format!("{name}: expected an error"));
        assert_eq!(
            error.class(),
            vector["error"].as_str().expect("`error` is a string"),
            "{name}: {error}"
        );
        let readable_id = match &error {
            DecodeError::InvalidFrame { msg_id, .. } => *msg_id,
            _ => None,
        };
        assert_eq!(
            readable_id,
            vector["msg_id"].as_u64(),
            "{name}: readable msg id"
        );
        classes.insert(error.class());
    }
    assert_eq!(
        classes.len(),
        7,
        "every error class has vectors: {classes:?}"
    );
}

/// `expected` matches `actual` when every member it gives is present and equal, recursively,
/// and every member it gives as null is absent.
fn subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| {
            if value.is_null() {
                have.get(key).is_none_or(Value::is_null)
            } else {
                have.get(key).is_some_and(|found| subset(value, found))
            }
        }),
        _ => expected == actual,
    }
}

fn assert_outputs(scenario: &str, step: usize, kind: &str, expected: &Value, actual: &[Value]) {
    let expected = expected.as_array().cloned().unwrap_or_default();
    let matches = expected.len() == actual.len()
        && expected
            .iter()
            .zip(actual)
            .all(|(want, have)| subset(want, have));
    assert!(
        matches,
        "{scenario}, step {step}: {kind}\n  expected: {}\n  actual:   {}",
        Value::Array(expected.clone()),
        Value::Array(actual.to_vec())
    );
}

fn millis(value: &Value, default: u64) -> Duration {
    Duration::from_millis(value.as_u64().unwrap_or(default))
}

fn client_config(config: &Value) -> ClientConfig {
    let mut result = ClientConfig::default()
        .connect_timeout(millis(&config["connect_timeout_ms"], 10_000))
        .handshake_timeout(millis(&config["handshake_timeout_ms"], 10_000))
        .startup_timeout(millis(&config["startup_timeout_ms"], 60_000))
        .backoff(BackoffConfig {
            initial: millis(&config["backoff_initial_ms"], 500),
            max: millis(&config["backoff_max_ms"], 30_000),
            max_attempts: None,
        })
        .outbox(OutboxLimits {
            max_messages: config["max_messages"].as_u64().unwrap_or(1000) as usize,
            ..OutboxLimits::default()
        });
    if let Some(token) = config["token"].as_str() {
        result = result.token(token);
    }
    if config["reset_policy"] == "report" {
        result = result.reset_policy(ResetPolicy::Report);
    }
    result
}

fn outcome_json(message: u64, outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Acked => json!({"type": "outcome", "message": message, "outcome": "acked"}),
        Outcome::Refused { code, reason } => json!({"type": "outcome", "message": message,
            "outcome": "refused", "code": code, "reason": reason}),
        Outcome::Expired => json!({"type": "outcome", "message": message, "outcome": "expired"}),
        Outcome::SessionReset => {
            json!({"type": "outcome", "message": message, "outcome": "session_reset"})
        }
        Outcome::Closed => json!({"type": "outcome", "message": message, "outcome": "closed"}),
        other => panic!("no vector name for {other:?}"),
    }
}

fn client_event_json(event: ClientEvent, numbers: &[(MessageId, u64)]) -> Value {
    let number = |id: MessageId| {
        numbers
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, n)| *n)
            .expect("outcomes name accepted messages")
    };
    match event {
        ClientEvent::Ready {
            session_id,
            resumed,
            backlog,
        } => {
            json!({"type": "ready", "session_id": session_id, "resumed": resumed, "backlog": backlog})
        }
        ClientEvent::SessionReset {
            previous_session_id,
            resent,
        } => json!({"type": "session_reset", "previous_session_id": previous_session_id,
            "resent": resent}),
        ClientEvent::Message { data } => json!({"type": "message",
            "data": data.deserialize::<Value>().expect("messages carry JSON")}),
        ClientEvent::Outcome { id, outcome } => outcome_json(number(id), &outcome),
        ClientEvent::Disconnected {
            reason,
            reconnect_at,
        } => {
            let (name, code) = match reason {
                DisconnectReason::ConnectFailed { .. } => ("connect_failed", None),
                DisconnectReason::ConnectTimeout => ("connect_timeout", None),
                DisconnectReason::HandshakeTimeout => ("handshake_timeout", None),
                DisconnectReason::HeartbeatTimeout => ("heartbeat_timeout", None),
                DisconnectReason::ConnectionLost { code, .. } => ("connection_lost", code),
                DisconnectReason::Goaway { code, .. } => ("goaway", Some(code)),
                DisconnectReason::ProtocolViolation(_) => ("protocol_violation", None),
                other => panic!("no vector name for {other:?}"),
            };
            json!({"type": "disconnected", "reason": name, "code": code,
                "reconnect": reconnect_at.is_some()})
        }
        ClientEvent::CredentialsRequired { code, reason } => {
            json!({"type": "credentials_required", "code": code, "reason": reason})
        }
        ClientEvent::Closed { reason } => {
            let (name, code) = match reason {
                CloseReason::Requested => ("requested", None),
                CloseReason::SubprotocolRejected { .. } => ("subprotocol_rejected", None),
                CloseReason::UnsupportedVersion { .. } => ("unsupported_version", None),
                CloseReason::Refused { code, .. } => ("refused", Some(code)),
                CloseReason::GaveUp { .. } => ("gave_up", None),
                other => panic!("no vector name for {other:?}"),
            };
            json!({"type": "closed", "reason": name, "code": code})
        }
        other => panic!("no vector name for {other:?}"),
    }
}

fn frame_text(input: &Value) -> String {
    match input["text"].as_str() {
        Some(text) => text.to_owned(),
        None => input["frame"].to_string(),
    }
}

fn send_error_name(reason: SendErrorReason) -> &'static str {
    match reason {
        SendErrorReason::QueueFullCount { .. } | SendErrorReason::QueueFullBytes { .. } => {
            "queue_full"
        }
        SendErrorReason::TooLarge { .. } => "too_large",
        SendErrorReason::Closed => "closed",
        other => panic!("no vector name for {other:?}"),
    }
}

/// [AP-1] Events and outcomes are compared under the names the spec gives them, so that a
/// client in any language can be held to the same transcripts.
#[test]
fn client_transcripts_produce_exactly_the_stated_frames_actions_and_events() {
    let vectors = load("transcripts.json");
    let scenarios = vectors["client"].as_array().expect("`client` is a list");
    assert!(scenarios.len() >= 20);
    for scenario in scenarios {
        let name = scenario["name"].as_str().unwrap_or("?");
        let mut session = ClientSession::new(client_config(&scenario["config"]), 42);
        let mut now = Time::ZERO;
        let mut numbers: Vec<(MessageId, u64)> = Vec::new();
        for (index, step) in scenario["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .enumerate()
        {
            let step_no = index + 1;
            if let Some(at) = step["at"].as_u64() {
                now = Time::from_millis(at);
            }
            let conn = |input: &Value| ConnId(input["conn"].as_u64().expect("conn"));
            if step.get("connect").is_some() {
                session.connect(now);
            } else if let Some(input) = step.get("send") {
                let data = Data::from_json(input["data"].to_string()).expect("valid data");
                let ttl = input["ttl_ms"].as_u64().map(Duration::from_millis);
                match session.send_with_ttl(data, ttl, now) {
                    Ok(id) => {
                        assert!(
                            step.get("error").is_none(),
                            "{name}, step {step_no}: send accepted"
                        );
                        numbers.push((id, numbers.len() as u64 + 1));
                    }
                    Err(error) => assert_eq!(
                        Some(send_error_name(error.reason)),
                        step["error"].as_str(),
                        "{name}, step {step_no}: send refused"
                    ),
                }
            } else if let Some(input) = step.get("connected") {
                session.handle_connected(conn(input), input["subprotocol"].as_str(), now);
            } else if let Some(input) = step.get("connect_failed") {
                session.handle_connect_failed(conn(input), "refused", now);
            } else if let Some(input) = step.get("receive") {
                session.handle_text(conn(input), &frame_text(input), now);
            } else if let Some(input) = step.get("disconnected") {
                let close = input["code"].as_u64().map(|code| (code as u16, ""));
                session.handle_disconnected(conn(input), close, now);
            } else if step.get("timeout").is_some() {
                session.handle_timeout(now);
            } else if let Some(input) = step.get("close") {
                session.close(millis(&input["grace_ms"], 0), now);
            } else if let Some(input) = step.get("set_token") {
                session.set_token(input["token"].as_str().map(str::to_owned), now);
            } else {
                panic!("{name}, step {step_no}: no known input in {step}");
            }
            let actions: Vec<Value> = std::iter::from_fn(|| session.poll_action())
                .map(|action| match action {
                    Action::Open { conn } => json!({"open": conn.0}),
                    Action::Close { conn, code, reason } => {
                        json!({"close": {"conn": conn.0, "code": code, "reason": reason}})
                    }
                })
                .collect();
            let transmits: Vec<Value> = std::iter::from_fn(|| session.poll_transmit())
                .map(|t| serde_json::from_str(&t.text).expect("frames are JSON"))
                .collect();
            // `welcome` notices are for logs; the language-neutral transcripts leave them out.
            let events: Vec<Value> = std::iter::from_fn(|| session.poll_event())
                .filter(|event| !matches!(event, ClientEvent::Welcome { .. }))
                .map(|event| client_event_json(event, &numbers))
                .collect();
            assert_outputs(name, step_no, "actions", &step["actions"], &actions);
            assert_outputs(name, step_no, "transmit", &step["transmit"], &transmits);
            assert_outputs(name, step_no, "events", &step["events"], &events);
        }
    }
}

fn server_config(config: &Value) -> ServerConfig {
    ServerConfig::default()
        .heartbeat(millis(&config["heartbeat_ms"], 25_000))
        .max_frame_bytes(config["max_frame_bytes"].as_u64().unwrap_or(1 << 20) as usize)
        .max_inflight(config["max_inflight"].as_u64().unwrap_or(256))
        .resume_window(millis(&config["resume_window_ms"], 120_000))
        .hello_timeout(millis(&config["hello_timeout_ms"], 10_000))
}

#[test]
fn server_transcripts_produce_exactly_the_stated_frames_closes_and_events() {
    let vectors = load("transcripts.json");
    let scenarios = vectors["server"].as_array().expect("`server` is a list");
    assert!(scenarios.len() >= 8);
    for scenario in scenarios {
        let name = scenario["name"].as_str().unwrap_or("?");
        let config = server_config(&scenario["config"]);
        let mut connection: Option<ServerConnection> = None;
        let mut now = Time::ZERO;
        let mut sent = 0u64;
        for (index, step) in scenario["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .enumerate()
        {
            let step_no = index + 1;
            if let Some(at) = step["at"].as_u64() {
                now = Time::from_millis(at);
            }
            if let Some(input) = step.get("open") {
                let phase = match input["phase"].as_str() {
                    Some("starting") => ServerPhase::Starting,
                    _ => ServerPhase::Accepting,
                };
                connection = Some(ServerConnection::new(config.clone(), phase, now));
            }
            let server = connection
                .as_mut()
                .expect("the first step opens the socket");
            if step.get("open").is_some() {
            } else if let Some(input) = step.get("receive") {
                server.handle_text(&frame_text(input), now);
            } else if let Some(input) = step.get("accept") {
                let token = ResumeToken::from_wire(input["resume_token"].as_str().expect("token"));
                let id = input["session_id"].as_str().expect("session id");
                let resumed = input["resumed"].as_bool().unwrap_or(false);
                server.accept(ServerSession::new(id, token, &config), resumed, now);
            } else if let Some(input) = step.get("send") {
                let data = Data::from_json(input["data"].to_string()).expect("valid data");
                let session = server.session_mut().expect("send after accept");
                session.send(data, None, now).expect("the outbox has room");
                sent += 1;
            } else if step.get("timeout").is_some() {
                server.handle_timeout(now);
            } else if let Some(input) = step.get("closed") {
                let close = input["code"].as_u64().map(|code| (code as u16, ""));
                server.handle_closed(close, now);
            } else {
                panic!("{name}, step {step_no}: no known input in {step}");
            }
            let transmits: Vec<Value> = std::iter::from_fn(|| server.poll_transmit())
                .map(|text| serde_json::from_str(&text).expect("frames are JSON"))
                .collect();
            let close = server.poll_close().map(|(code, _)| code);
            let mut events: Vec<Value> = std::iter::from_fn(|| server.poll_event())
                .map(|event| match event {
                    ConnectionEvent::Hello(hello) => {
                        json!({"type": "hello", "token": hello.token, "resume": hello.resume.is_some()})
                    }
                    ConnectionEvent::Closed {
                        reason,
                        session_ended,
                    } => {
                        let name = match reason {
                            ConnectionCloseReason::SocketClosed { .. } => "socket_closed",
                            ConnectionCloseReason::Goaway { .. } => "goaway",
                            ConnectionCloseReason::HelloTimeout => "hello_timeout",
                            ConnectionCloseReason::HeartbeatTimeout => "heartbeat_timeout",
                            ConnectionCloseReason::ProtocolViolation(_) => "protocol_violation",
                            other => panic!("no vector name for {other:?}"),
                        };
                        json!({"type": "closed", "reason": name, "session_ended": session_ended})
                    }
                    other => panic!("no vector name for {other:?}"),
                })
                .collect();
            events.extend(std::iter::from_fn(|| server.poll_session_event()).map(
                |event| match event {
                    SessionEvent::Message { data, .. } => json!({"type": "message",
                        "data": data.deserialize::<Value>().expect("messages carry JSON")}),
                    SessionEvent::Outcome { id, outcome } => {
                        assert!(id.0 <= sent);
                        outcome_json(id.0, &outcome)
                    }
                    other => panic!("no vector name for {other:?}"),
                },
            ));
            assert_outputs(name, step_no, "transmit", &step["transmit"], &transmits);
            assert_eq!(
                close,
                step["close"].as_u64().map(|c| c as u16),
                "{name}, step {step_no}: close"
            );
            assert_outputs(name, step_no, "events", &step["events"], &events);
        }
    }
}
