//! Bad input never panics: mangled frames, random bytes and frames in every order are fed to the
//! codec, a client session and a server connection, which must answer with typed errors and stay
//! usable.

mod support;

use readyws_protocol::codec::decode;
use readyws_protocol::{ClientConfig, Role, ServerPhase};
use serde_json::json;
use support::{Client, Server, msg, ready, welcome};

/// Valid frames of every type, the raw material for mutations.
fn seeds() -> Vec<String> {
    [
        welcome(json!({})),
        ready("s1"),
        msg(1, json!({"a": [1, 2, {"b": null}]})),
        json!({"type": "hello", "token": "t", "resume": {"session_id": "s", "resume_token": "r", "last_received": 3}, "client": {"sdk": "x", "version": "1", "attempt": 1}}),
        json!({"type": "ack", "id": 1}),
        json!({"type": "nack", "id": 1, "code": "invalid", "reason": "r"}),
        json!({"type": "ping", "nonce": "n"}),
        json!({"type": "pong"}),
        json!({"type": "goaway", "code": 4000, "reason": "r", "retry_after_ms": 10}),
    ]
    .iter()
    .map(|frame| frame.to_string())
    .collect()
}

fn mutate(rng: &mut fastrand::Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.usize(1..4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.usize(..bytes.len());
        match rng.u8(0..5) {
            0 => bytes[at] = rng.u8(..),
            1 => {
                bytes.remove(at);
            }
            2 => bytes.insert(
                at,
                *b"{}[]\",:0-e.\\u".get(rng.usize(..14)).unwrap_or(&b'x'),
            ),
            3 => bytes.truncate(at),
            _ => {
                let chunk: Vec<u8> = bytes[at..].iter().take(8).copied().collect();
                bytes.splice(at..at, chunk);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mangled_frames_get_typed_errors_from_the_codec() {
    let mut rng = fastrand::Rng::with_seed(1);
    let seeds = seeds();
    for _ in 0..20_000 {
        let pick = rng.usize(..seeds.len());
        let text = mutate(&mut rng, &seeds[pick]);
        for role in [Role::Client, Role::Server] {
            if let Err(error) = decode(&text, role, 1 << 20) {
                assert!(!error.to_string().is_empty());
                assert!(!error.class().is_empty());
            }
        }
    }
}

#[test]
fn sessions_survive_any_sequence_of_hostile_frames() {
    let mut rng = fastrand::Rng::with_seed(2);
    let seeds = seeds();
    for round in 0..300 {
        let mut client = Client::ready(ClientConfig::default(), json!({}));
        let mut server = Server::ready();
        if round % 3 == 0 {
            server = Server::open(ServerPhase::Starting);
        }
        for _ in 0..40 {
            let seed = &seeds[rng.usize(..seeds.len())];
            let text = if rng.bool() {
                seed.clone()
            } else {
                mutate(&mut rng, seed)
            };
            client.receive_text(&text);
            server.connection.handle_text(&text, server.now);
            client.now = client.now + std::time::Duration::from_millis(rng.u64(0..500));
            client.session.handle_timeout(client.now);
            for action in client.actions() {
                if let readyws_protocol::Action::Open { conn } = action {
                    // The session moved to a new socket; follow it so that frames keep arriving.
                    client.conn = conn;
                    client.open_socket();
                }
            }
            client.transmits();
            client.events();
            server.transmits();
            server.events();
            server.session_events();
        }
        // Still usable: a message can be queued and the state can be read.
        client.send(json!("after the storm"));
        let _ = client.session.state();
    }
}
