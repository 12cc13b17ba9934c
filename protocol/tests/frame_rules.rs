//! Frame rules (`docs/PROTOCOL.md` §3): one test per rule, named after it.

mod support;

use readyws_protocol::codec::decode;
use readyws_protocol::frame::{FrameKind, MAX_SAFE_INTEGER};
use readyws_protocol::{
    ClientConfig, ClientEvent, DecodeError, DisconnectReason, Frame, ProtocolError, Role,
};
use serde_json::json;
use support::{Client, Server, msg, welcome};

/// [FR-1] A frame is a JSON object with a string `type`; anything else is refused by class.
#[test]
fn fr_1_frames_are_objects_with_a_string_type() {
    let class = |text: &str| decode(text, Role::Server, 1 << 20).map_err(|e| e.class());
    assert_eq!(class("{"), Err("invalid_json"));
    assert_eq!(class("[]"), Err("not_an_object"));
    assert_eq!(class(r#"{"id":1}"#), Err("missing_type"));
    assert_eq!(class(r#"{"type":["ack"],"id":1}"#), Err("missing_type"));
    assert!(matches!(
        decode(r#"{"type":"ack","id":1}"#, Role::Server, 1 << 20),
        Ok(Frame::Ack(_))
    ));
}

/// [FR-2] Members a receiver does not know are ignored.
#[test]
fn fr_2_unknown_members_are_ignored() {
    let mut client = Client::connecting(ClientConfig::default());
    client.open_socket();
    client.receive(welcome(json!({"compression": "none", "features": ["x"]})));
    assert_eq!(client.transmits()[0]["type"], "hello");
    let frame = decode(
        r#"{"type":"ack","id":3,"extra":{"deep":[1]}}"#,
        Role::Client,
        1 << 20,
    );
    assert!(matches!(frame, Ok(Frame::Ack(ack)) if ack.id == 3));
}

/// [FR-11] `null` for an optional member means the member is absent; for a required one it makes
/// the frame invalid.
#[test]
fn fr_11_null_is_absent_for_optional_members() {
    let hello = decode(
        r#"{"type":"hello","token":null,"resume":null}"#,
        Role::Client,
        1 << 20,
    );
    assert!(
        matches!(&hello, Ok(Frame::Hello(hello)) if hello.token.is_none() && hello.resume.is_none()),
        "{hello:?}"
    );
    let ack = decode(r#"{"type":"ack","id":null}"#, Role::Client, 1 << 20);
    assert!(
        matches!(ack, Err(DecodeError::InvalidFrame { .. })),
        "{ack:?}"
    );
}

/// [FR-3] Unknown frame types after the first frame are skipped by both sides.
#[test]
fn fr_3_unknown_types_after_the_first_frame_are_ignored() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client.receive(json!({"type": "presence", "users": 3}));
    assert!(client.actions().is_empty());
    assert!(client.events().is_empty());

    let mut server = Server::ready();
    server.receive(json!({"type": "subscribe", "topic": "x"}));
    assert!(server.transmits().is_empty());
    assert!(server.events().is_empty());
}

/// [FR-4] A frame type defined only for the other direction is a violation.
#[test]
fn fr_4_frames_from_the_wrong_direction_are_violations() {
    assert!(matches!(
        decode(r#"{"type":"hello"}"#, Role::Server, 1 << 20),
        Err(DecodeError::WrongDirection {
            kind: FrameKind::Hello,
            sender: Role::Server
        })
    ));
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client.receive(json!({"type": "hello"}));
    assert_eq!(client.closed_with(), 4010);
    let mut server = Server::ready();
    server.receive(welcome(json!({})));
    assert_eq!(server.transmits()[0]["code"], 4010);
}

/// [FR-5] Integers run from 0 to 2^53 − 1 and are written without fraction or exponent.
#[test]
fn fr_5_integers_are_exact_in_every_language() {
    let ack = |id: &str| {
        decode(
            &format!(r#"{{"type":"ack","id":{id}}}"#),
            Role::Client,
            1 << 20,
        )
    };
    assert!(ack(&MAX_SAFE_INTEGER.to_string()).is_ok());
    for bad in [
        (MAX_SAFE_INTEGER + 1).to_string().as_str(),
        "1.0",
        "1e2",
        "-1",
        "0",
    ] {
        assert_eq!(
            ack(bad).map_err(|e| e.class()),
            Err("invalid_frame"),
            "id {bad}"
        );
    }
}

/// [FR-6] Frames over `max_frame_bytes`: a `msg` whose id is readable is refused by `nack`
/// `too_large`; any other is a violation; before `welcome` the client allows 16 KiB.
#[test]
fn fr_6_oversized_frames() {
    let mut client = Client::ready(ClientConfig::default(), json!({"max_frame_bytes": 4096}));
    client.events();
    client.receive(msg(1, json!("x".repeat(5000))));
    let frames = client.transmits();
    assert_eq!(frames[0]["type"], "nack");
    assert_eq!(frames[0]["code"], "too_large");
    assert!(
        client.events().is_empty(),
        "the refused message is not delivered"
    );
    client.receive(json!({"type": "ping", "nonce": "y".repeat(5000)}));
    assert_eq!(client.closed_with(), 4010);

    let mut early = Client::connecting(ClientConfig::default());
    early.open_socket();
    let padding = "z".repeat(17 * 1024);
    early.receive(welcome(json!({"padding": padding})));
    assert_eq!(early.closed_with(), 4010);
}

/// [FR-7] A defined member given twice makes the frame invalid.
#[test]
fn fr_7_repeated_members_are_invalid() {
    let error = decode(r#"{"type":"ack","id":1,"id":2}"#, Role::Client, 1 << 20).unwrap_err();
    assert_eq!(error.class(), "invalid_frame");
    let error = decode(
        r#"{"type":"ack","type":"nack","id":1}"#,
        Role::Client,
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(error.class(), "missing_type");
}

/// [FR-8] An invalid frame is a violation: the server says which rule in its `goaway`; the client
/// reports the typed error and reconnects.
#[test]
fn fr_8_invalid_frames_close_the_connection_with_the_rule_cited() {
    let mut server = Server::ready();
    server
        .connection
        .handle_text("{\"type\":\"ack\"", server.now);
    let goaway = &server.transmits()[0];
    assert_eq!(goaway["code"], 4010);
    assert!(
        goaway["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("[FR-8]")),
        "{goaway}"
    );

    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client.receive_text("not json");
    assert_eq!(client.closed_with(), 4010);
    assert!(matches!(
        client.events().as_slice(),
        [ClientEvent::Disconnected {
            reason: DisconnectReason::ProtocolViolation(ProtocolError::Decode(
                DecodeError::InvalidJson { .. }
            )),
            reconnect_at: Some(_),
        }]
    ));
}

/// [FR-9] A `msg` with a readable id but otherwise invalid is refused with `nack` `invalid`, and
/// the connection stays up.
#[test]
fn fr_9_a_malformed_message_is_refused_not_fatal() {
    let mut server = Server::ready();
    server.receive(json!({"type": "msg", "id": 1}));
    let frames = server.transmits();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "nack");
    assert_eq!(frames[0]["id"], 1);
    assert_eq!(frames[0]["code"], "invalid");
    assert!(server.connection.is_ready());
    server.receive(msg(2, json!("fine")));
    assert_eq!(server.session_events().len(), 1);
}
