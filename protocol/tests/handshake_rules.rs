//! Transport, handshake and start-up gate rules (`docs/PROTOCOL.md` §2, §4, §5): one test per
//! rule, named after it.

mod support;

use std::time::Duration;

use readyws_protocol::{
    Action, ClientConfig, ClientEvent, ClientState, CloseReason, ConnectionCloseReason,
    ConnectionEvent, DisconnectReason, SUBPROTOCOL, ServerPhase, Time,
};
use serde_json::json;
use support::{Client, Server, msg, ready, welcome};

/// [TR-1] The client asks for `readyws.v1` and proceeds when the server selects it.
#[test]
fn tr_1_the_subprotocol_is_readyws_v1() {
    assert_eq!(SUBPROTOCOL, "readyws.v1");
    let mut client = Client::connecting(ClientConfig::default());
    client.open_socket();
    assert!(client.actions().is_empty());
    assert!(matches!(
        client.session.state(),
        ClientState::Connecting { attempt: 1 }
    ));
}

/// [TR-2] A server that selects no subprotocol (or another) is not a readyws server: the client
/// closes, reports it, and never tries again.
#[test]
fn tr_2_without_the_subprotocol_the_client_stops_for_good() {
    for selected in [None, Some("graphql-transport-ws")] {
        let mut client = Client::connecting(ClientConfig::default());
        client
            .session
            .handle_connected(client.conn, selected, Time::ZERO);
        assert!(matches!(
            client.actions().as_slice(),
            [Action::Close { .. }]
        ));
        let events = client.events();
        assert!(matches!(
            events.as_slice(),
            [ClientEvent::Closed { reason: CloseReason::SubprotocolRejected { selected: got } }]
                if got.as_deref() == selected
        ));
        assert_eq!(client.session.poll_timeout(), None, "no retry is scheduled");
    }
}

/// [TR-3] Binary frames are not readyws frames: either side treats one as a violation.
#[test]
fn tr_3_a_binary_frame_is_a_protocol_violation() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client.session.handle_binary(client.conn, client.now);
    assert_eq!(client.closed_with(), 4010);

    let mut server = Server::ready();
    server.connection.handle_binary(server.now);
    assert_eq!(server.transmits()[0]["code"], 4010);
}

/// [HS-1] The server's first frame is `welcome`, ready the instant the socket opens, announcing its
/// configuration.
#[test]
fn hs_1_the_server_sends_welcome_at_once() {
    let mut server = Server::open(ServerPhase::Accepting);
    let frames = server.transmits();
    assert_eq!(frames.len(), 1);
    let welcome = &frames[0];
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["protocol"], 1);
    assert_eq!(welcome["phase"], "accepting");
    assert_eq!(welcome["heartbeat_ms"], 1000);
    assert_eq!(welcome["max_inflight"], 4);
}

/// [HS-2] The client sends nothing before `welcome`, then `hello` as its first frame.
#[test]
fn hs_2_the_client_waits_for_welcome_then_sends_hello() {
    let mut client = Client::connecting(ClientConfig::default().token("secret"));
    client
        .session
        .send(support::data(json!(1)), Time::ZERO)
        .expect("room");
    client.open_socket();
    assert!(client.transmits().is_empty(), "nothing before welcome");
    client.receive(welcome(json!({})));
    let frames = client.transmits();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "hello");
    assert_eq!(frames[0]["token"], "secret");
}

/// [HS-3] Exactly one `hello` per connection, on every connection.
#[test]
fn hs_3_one_hello_per_connection() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.receive(json!({"type": "ping"}));
    assert!(client.transmits().iter().all(|f| f["type"] != "hello"));
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    client.reconnect();
    client.receive(welcome(json!({})));
    let hellos = client
        .transmits()
        .iter()
        .filter(|f| f["type"] == "hello")
        .count();
    assert_eq!(hellos, 1);
}

/// [HS-4] The server answers `hello` only when the application accepts it (after registering the
/// connection); until then it sends nothing.
#[test]
fn hs_4_connection_ready_only_after_the_application_accepts() {
    let mut server = Server::open(ServerPhase::Accepting);
    server.transmits();
    server.receive(json!({"type": "hello", "token": "t"}));
    assert!(
        matches!(server.events().as_slice(), [ConnectionEvent::Hello(h)] if h.token.as_deref() == Some("t"))
    );
    server.at(1500);
    server.connection.handle_timeout(server.now);
    let waiting = server.transmits();
    assert!(
        waiting.iter().all(|f| f["type"] == "ping"),
        "only pings while waiting: {waiting:?}"
    );
    server.accept_new("s1");
    let frames = server.transmits();
    assert_eq!(frames[0]["type"], "connection_ready");
    assert_eq!(frames[0]["session_id"], "s1");
    assert_eq!(frames[0]["resumed"], false);
}

/// [HS-5] No `msg` before `connection_ready`: the client holds its messages, the server sends
/// queued ones only after its `connection_ready`.
#[test]
fn hs_5_no_messages_before_connection_ready() {
    let mut client = Client::welcomed(ClientConfig::default(), json!({}));
    client.send(json!("early"));
    client.receive(json!({"type": "ping"}));
    assert!(client.transmits().iter().all(|f| f["type"] != "msg"));
    client.receive(ready("s1"));
    let frames = client.transmits();
    assert_eq!(frames, vec![msg(1, json!("early"))]);

    let mut server = Server::open(ServerPhase::Accepting);
    server.transmits();
    server.receive(json!({"type": "hello"}));
    let mut session = server.new_session("s1");
    session
        .send(support::data(json!("queued")), None, server.now)
        .expect("room");
    server.connection.accept(session, false, server.now);
    let kinds: Vec<_> = server
        .transmits()
        .iter()
        .map(|f| f["type"].clone())
        .collect();
    assert_eq!(kinds, vec![json!("connection_ready"), json!("msg")]);
}

/// [HS-6] A `msg` before `connection_ready` is answered with `goaway` 4010, never with a `nack`.
#[test]
fn hs_6_the_server_closes_on_a_message_before_readiness() {
    let mut server = Server::open(ServerPhase::Accepting);
    server.transmits();
    server.receive(json!({"type": "hello"}));
    server.events();
    server.receive(msg(1, json!("too early")));
    let frames = server.transmits();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "goaway");
    assert_eq!(frames[0]["code"], 4010);
    assert_eq!(server.connection.poll_close().map(|(c, _)| c), Some(4010));
}

/// [HS-7] A socket that sends no `hello` within the hello timeout is closed with 4001.
#[test]
fn hs_7_the_server_closes_silent_sockets() {
    let mut server = Server::open(ServerPhase::Accepting);
    server.transmits();
    assert_eq!(
        server.connection.poll_timeout(),
        Some(Time::from_millis(5000))
    );
    server.fire_timer();
    assert_eq!(server.transmits()[0]["code"], 4001);
    assert!(matches!(
        server.events().as_slice(),
        [ConnectionEvent::Closed {
            reason: ConnectionCloseReason::HelloTimeout,
            ..
        }]
    ));
}

/// [HS-8] Without `connection_ready` within the handshake timeout the client abandons the
/// connection with 4004 and schedules a reconnect.
#[test]
fn hs_8_the_client_abandons_a_slow_handshake() {
    let config = ClientConfig::default().handshake_timeout(Duration::from_millis(1500));
    let mut client = Client::welcomed(config, json!({"heartbeat_ms": 60000}));
    assert_eq!(client.session.poll_timeout(), Some(Time::from_millis(1500)));
    client.fire_timer();
    assert_eq!(client.closed_with(), 4004);
    assert!(matches!(
        client.events().as_slice(),
        [ClientEvent::Disconnected {
            reason: DisconnectReason::HandshakeTimeout,
            reconnect_at: Some(_)
        }]
    ));
}

/// [HS-9] A `welcome` for another protocol version ends the session without retrying.
#[test]
fn hs_9_another_protocol_version_ends_the_session() {
    let mut client = Client::connecting(ClientConfig::default());
    client.open_socket();
    client.receive(welcome(json!({"protocol": 2})));
    assert_eq!(client.closed_with(), 4010);
    assert!(matches!(
        client.events().as_slice(),
        [ClientEvent::Closed {
            reason: CloseReason::UnsupportedVersion { version: 2 }
        }]
    ));
    assert_eq!(client.session.poll_timeout(), None);
}

/// [HS-10] Frames a state does not allow are violations, on both sides.
#[test]
fn hs_10_frames_out_of_order_are_violations() {
    let mut client = Client::connecting(ClientConfig::default());
    client.open_socket();
    client.receive(ready("s1"));
    assert_eq!(client.closed_with(), 4010);
    assert!(matches!(
        client.events().as_slice(),
        [ClientEvent::Disconnected {
            reason: DisconnectReason::ProtocolViolation(_),
            ..
        }]
    ));

    let mut server = Server::open(ServerPhase::Accepting);
    server.transmits();
    server.receive(json!({"type": "hello"}));
    server.receive(json!({"type": "ack", "id": 1}));
    assert_eq!(server.transmits()[0]["code"], 4010);
}

/// [HS-11] A second `welcome` or `connection_ready` on one connection is a violation.
#[test]
fn hs_11_welcome_and_connection_ready_come_once() {
    let mut client = Client::welcomed(ClientConfig::default(), json!({}));
    client.receive(welcome(json!({})));
    assert_eq!(client.closed_with(), 4010);

    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.actions();
    client.receive(ready("s1"));
    assert_eq!(client.closed_with(), 4010);
}

/// [SG-1] A server that cannot register connections yet says `phase: "starting"`.
#[test]
fn sg_1_a_starting_server_says_so() {
    let mut server = Server::open(ServerPhase::Starting);
    assert_eq!(server.transmits()[0]["phase"], "starting");
}

/// [SG-2] A starting server keeps the socket, reads `hello`, answers pings, and sends
/// `connection_ready` once start-up completes.
#[test]
fn sg_2_a_starting_server_holds_the_socket_until_ready() {
    let mut server = Server::open(ServerPhase::Starting);
    server.transmits();
    server.receive(json!({"type": "hello"}));
    assert_eq!(server.events().len(), 1);
    server.at(900);
    server.receive(json!({"type": "ping", "nonce": "n"}));
    assert_eq!(
        server.transmits(),
        vec![json!({"type": "pong", "nonce": "n"})]
    );
    server.accept_new("s1");
    assert_eq!(server.transmits()[0]["type"], "connection_ready");
}

/// [SG-3] A server that gives up on its start-up sends `goaway` 4002 with `retry_after_ms`.
#[test]
fn sg_3_start_up_failure_says_when_to_return() {
    let mut server = Server::open(ServerPhase::Starting);
    server.transmits();
    server.receive(json!({"type": "hello"}));
    server.connection.goaway(
        4002,
        "start-up failed",
        Some(Duration::from_secs(5)),
        server.now,
    );
    let frames = server.transmits();
    assert_eq!(
        frames[0],
        json!({"type": "goaway", "code": 4002, "reason": "start-up failed", "retry_after_ms": 5000})
    );
    assert_eq!(server.connection.poll_close().map(|(c, _)| c), Some(4002));
}

/// [SG-4] Facing a starting server the client waits up to its start-up timeout, not its handshake
/// timeout.
#[test]
fn sg_4_the_client_waits_for_a_starting_server() {
    let config = ClientConfig::default()
        .handshake_timeout(Duration::from_millis(1000))
        .startup_timeout(Duration::from_millis(30_000));
    let mut client = Client::welcomed(config, json!({"phase": "starting", "heartbeat_ms": 60000}));
    assert_eq!(
        client.session.poll_timeout(),
        Some(Time::from_millis(30_000))
    );
    client.at(5000);
    client.session.handle_timeout(client.now);
    assert!(client.actions().is_empty());
    client.receive(ready("s1"));
    assert!(client.session.is_ready());
}
