//! `ClientSession::poll_unencoded` hands out the very frames `poll_transmit` writes, in the same
//! order: a driver may encode a message's frame later, outside its lock, without changing what
//! goes on the wire.

mod support;

use readyws_protocol::{ClientConfig, ClientSession, Transmit};
use serde_json::json;
use support::{Client, msg};

/// The same story told to two sessions: messages queued beyond the window, messages received
/// (so that acknowledgements are owed), an acknowledgement that opens the window again, a
/// dropped connection and the resume after it.
fn drained(take: fn(&mut ClientSession) -> Option<Transmit>) -> Vec<Vec<(u64, String)>> {
    let mut client = Client::ready(ClientConfig::default(), json!({"max_inflight": 3}));
    let mut rounds = Vec::new();
    let mut round = |client: &mut Client| {
        let frames: Vec<(u64, String)> = std::iter::from_fn(|| take(&mut client.session))
            .map(|t| (t.conn.0, t.text))
            .collect();
        rounds.push(frames);
    };
    for n in 1..=5 {
        client.send(json!({ "n": n }));
    }
    round(&mut client);
    client.receive(msg(1, json!("a")));
    client.receive(msg(2, json!("b")));
    round(&mut client);
    client.receive(json!({"type": "ack", "id": 2}));
    client.send(json!({ "n": 6 }));
    round(&mut client);
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    client.reconnect();
    client.receive(support::welcome(json!({"max_inflight": 3})));
    round(&mut client);
    client.receive(support::resumed("s1", 2));
    round(&mut client);
    rounds
}

#[test]
fn frames_taken_unencoded_encode_to_what_poll_transmit_writes() {
    let written = drained(ClientSession::poll_transmit);
    let unencoded = drained(|session| session.poll_unencoded().map(|frame| frame.encode()));
    assert_eq!(written, unencoded);
    let messages = written
        .iter()
        .flatten()
        .filter(|(_, text)| text.contains(r#""type":"msg""#))
        .count();
    assert!(messages >= 6, "the story sends messages: {written:?}");
    assert!(
        written
            .iter()
            .flatten()
            .any(|(_, text)| text.contains(r#""type":"ack""#)),
        "and acknowledgements: {written:?}"
    );
}
