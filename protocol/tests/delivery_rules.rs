//! Delivery, outbox, flow-control and resume rules (`docs/PROTOCOL.md` §6–§8): one test per rule,
//! named after it.

mod support;

use std::time::Duration;

use readyws_protocol::{
    ClientConfig, ClientEvent, CloseReason, ConnectionEvent, DisconnectReason, MessageId,
    OutboxLimits, Outcome, ProtocolError, ResumeToken, SendErrorReason, ServerConfig, ServerPhase,
    ServerSession, SessionEvent, Time,
};
use serde_json::{Value, json};
use support::{Client, Server, data, msg, ready, resumed, welcome};

fn outcomes(events: &[ClientEvent]) -> Vec<(MessageId, Outcome)> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::Outcome { id, outcome } => Some((*id, outcome.clone())),
            _ => None,
        })
        .collect()
}

fn ids(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "msg")
        .filter_map(|f| f["id"].as_u64())
        .collect()
}

/// A client, ready, that lost its connection and is back with `welcome` answered by `hello`.
fn dropped_and_back(client: &mut Client) -> Value {
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    client.events();
    client.reconnect();
    client.receive(welcome(json!({})));
    client.transmits().remove(0)
}

/// [DL-1] Ids start at 1 and grow by one; a retransmission keeps its id.
#[test]
fn dl_1_ids_count_from_one_and_survive_retransmission() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.send(json!("a"));
    client.send(json!("b"));
    assert_eq!(ids(&client.transmits()), vec![1, 2]);
    dropped_and_back(&mut client);
    client.receive(resumed("s1", 0));
    assert_eq!(ids(&client.transmits()), vec![1, 2]);
}

/// [DL-2] A connection ending drops nothing: unsettled messages wait for the next one.
#[test]
fn dl_2_unsettled_messages_outlive_their_connection() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.send(json!("a"));
    client.transmits();
    client
        .session
        .handle_disconnected(client.conn, Some((1006, "")), client.now);
    assert_eq!(client.session.pending(), 1);
    assert!(outcomes(&client.events()).is_empty());
}

/// [DL-3] A gap in ids is a violation.
#[test]
fn dl_3_a_gap_in_ids_is_a_violation() {
    let mut server = Server::ready();
    server.receive(msg(1, json!(1)));
    server.receive(msg(3, json!(3)));
    let frames = server.transmits();
    assert_eq!(frames.last().map(|f| f["code"].clone()), Some(json!(4010)));
    assert!(
        frames
            .last()
            .is_some_and(|f| f["reason"].as_str().is_some_and(|r| r.contains("[DL-3]")))
    );
}

/// [DL-4] A duplicate is acknowledged again and not delivered twice.
#[test]
fn dl_4_duplicates_are_acknowledged_not_redelivered() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client.receive(msg(1, json!("a")));
    client.receive(msg(1, json!("a")));
    assert_eq!(client.events().len(), 1);
    assert_eq!(client.transmits(), vec![json!({"type": "ack", "id": 1})]);
    client.receive(msg(1, json!("a")));
    assert_eq!(client.transmits(), vec![json!({"type": "ack", "id": 1})]);
}

/// [DL-5] Acks are cumulative; an ack beyond what was sent is a violation; a stale one is ignored.
#[test]
fn dl_5_acks_are_cumulative_and_checked() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    let first = client.send(json!("a"));
    let second = client.send(json!("b"));
    client.transmits();
    client.receive(json!({"type": "ack", "id": 2}));
    assert_eq!(
        outcomes(&client.events()),
        vec![(first, Outcome::Acked), (second, Outcome::Acked)]
    );
    client.receive(json!({"type": "ack", "id": 1}));
    assert!(client.actions().is_empty() && client.events().is_empty());
    client.receive(json!({"type": "ack", "id": 3}));
    assert_eq!(client.closed_with(), 4010);
    assert!(matches!(
        client.events().as_slice(),
        [ClientEvent::Disconnected {
            reason: DisconnectReason::ProtocolViolation(ProtocolError::AckOutOfRange {
                id: 3,
                highest_sent: 2,
                ..
            }),
            ..
        }]
    ));
}

/// [DL-6] A `nack` refuses one message and acknowledges the lower ones; a receiver sends it before
/// any `ack` that covers it.
#[test]
fn dl_6_nack_refuses_one_and_precedes_later_acks() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    let first = client.send(json!("a"));
    let second = client.send(json!("b"));
    client.transmits();
    client.receive(json!({"type": "nack", "id": 2, "code": "forbidden", "reason": "no"}));
    assert_eq!(
        outcomes(&client.events()),
        vec![
            (first, Outcome::Acked),
            (
                second,
                Outcome::Refused {
                    code: "forbidden".into(),
                    reason: "no".into()
                }
            )
        ]
    );

    let mut server = Server::ready();
    server.receive(msg(1, json!("ok")));
    server.receive(json!({"type": "msg", "id": 2, "data": "x".repeat(2 << 20)}));
    server.receive(msg(3, json!("ok")));
    let frames = server.transmits();
    let kinds: Vec<_> = frames
        .iter()
        .map(|f| (f["type"].clone(), f["id"].clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![(json!("nack"), json!(2)), (json!("ack"), json!(3))],
        "the nack for 2 also covers 1, and goes out before the ack for 3"
    );
}

/// [DL-7] An `ack` is ready to send as soon as the message was processed, with no timer.
#[test]
fn dl_7_acks_go_out_at_once() {
    let mut server = Server::ready();
    server.receive(msg(1, json!("a")));
    server.receive(msg(2, json!("b")));
    assert_eq!(
        server.transmits(),
        vec![json!({"type": "ack", "id": 2})],
        "one cumulative ack"
    );
}

/// [DL-8] After every `connection_ready`, a receiver repeats its recent `nack`s, then acks its
/// `last_received`.
#[test]
fn dl_8_refusals_and_acks_are_repeated_after_readiness() {
    let mut client = Client::ready(ClientConfig::default(), json!({"max_frame_bytes": 4096}));
    client.receive(msg(1, json!("a")));
    client.receive(msg(2, json!("x".repeat(5000))));
    client.receive(msg(3, json!("c")));
    client.transmits();
    dropped_and_back(&mut client);
    client.receive(resumed("s1", 0));
    let frames = client.transmits();
    assert_eq!(frames[0]["type"], "nack");
    assert_eq!(frames[0]["id"], 2);
    assert_eq!(frames[1], json!({"type": "ack", "id": 3}));

    let mut server = Server::ready();
    server.receive(msg(1, json!("a")));
    server.transmits();
    let mut session = server.connection.take_session().expect("attached");
    let mut next = Server::open(ServerPhase::Accepting);
    next.transmits();
    next.receive(json!({"type": "hello", "resume": {"session_id": "s1", "resume_token": "t", "last_received": 0}}));
    session.expire(next.now);
    next.connection.accept(session, true, next.now);
    let frames = next.transmits();
    assert_eq!(frames[0]["type"], "connection_ready");
    assert_eq!(frames[0]["last_received"], 1);
    assert_eq!(frames[1], json!({"type": "ack", "id": 1}));
}

/// [DL-9] After resume, only messages above the peer's `last_received` are sent again; the
/// others wait for the repeated `ack`.
#[test]
fn dl_9_resend_starts_after_the_peers_position() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    let ids_sent: Vec<MessageId> = (0..3).map(|n| client.send(json!(n))).collect();
    client.transmits();
    dropped_and_back(&mut client);
    client.receive(resumed("s1", 2));
    assert_eq!(ids(&client.transmits()), vec![3]);
    assert_eq!(
        client.session.pending(),
        3,
        "1 and 2 wait for the server's ack"
    );
    client.receive(json!({"type": "ack", "id": 3}));
    let settled: Vec<MessageId> = outcomes(&client.events())
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(settled, ids_sent);
}

/// [DL-10] Every accepted message ends in exactly one outcome, whichever way it ends.
#[test]
fn dl_10_each_message_gets_exactly_one_outcome() {
    let config = ClientConfig::default();
    let mut client = Client::ready(config, json!({"max_frame_bytes": 4096, "max_inflight": 2}));
    client.events();
    let acked = client.send(json!("a"));
    let refused = client.send(json!("b"));
    let expired = client
        .session
        .send_with_ttl(
            data(json!("d")),
            Some(Duration::from_millis(10)),
            client.now,
        )
        .expect("room");
    let too_big = client.send(json!("x".repeat(5000)));
    let closed = client.send(json!("e"));
    assert_eq!(
        ids(&client.transmits()),
        vec![1, 2],
        "the window holds the rest back"
    );
    client.at(10);
    client.session.handle_timeout(client.now);
    client.receive(json!({"type": "nack", "id": 2, "code": "invalid", "reason": ""}));
    assert_eq!(
        ids(&client.transmits()),
        vec![3],
        "only `e` fits the peer's frame limit"
    );
    client.session.close(Duration::ZERO, client.now);
    let mut got = outcomes(&client.events());
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got.len(), 5);
    assert_eq!(got[0], (acked, Outcome::Acked));
    assert!(
        matches!(&got[1], (id, Outcome::Refused { code, .. }) if *id == refused && code == "invalid")
    );
    assert_eq!(got[2], (expired, Outcome::Expired));
    assert!(
        matches!(&got[3], (id, Outcome::Refused { code, .. }) if *id == too_big && code == "too_large")
    );
    assert_eq!(got[4], (closed, Outcome::Closed));
}

/// [DL-11] A time-to-live stops counting at the first transmission.
#[test]
fn dl_11_time_to_live_ends_at_first_transmission() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    let id = client
        .session
        .send_with_ttl(
            data(json!("a")),
            Some(Duration::from_millis(100)),
            client.now,
        )
        .expect("room");
    client.transmits();
    client.at(5000);
    client.receive(json!({"type": "ping"}));
    client.session.handle_timeout(client.now);
    assert!(outcomes(&client.events()).is_empty());
    client.receive(json!({"type": "ack", "id": 1}));
    assert_eq!(outcomes(&client.events()), vec![(id, Outcome::Acked)]);
}

/// [DL-11] Each waiting message expires at its own time-to-live, whatever order the lives were
/// given in, and none expires once transmitted.
#[test]
fn dl_11_mixed_time_to_lives_expire_each_at_its_own_time() {
    let mut client = Client::connecting(ClientConfig::default());
    let send = |client: &mut Client, text: &str, ttl: Option<u64>| {
        client
            .session
            .send_with_ttl(
                data(json!(text)),
                ttl.map(Duration::from_millis),
                client.now,
            )
            .expect("room")
    };
    let at_300 = send(&mut client, "a", Some(300));
    let at_100 = send(&mut client, "b", Some(100));
    let at_5000 = send(&mut client, "c", Some(5000));
    let forever = send(&mut client, "d", None);
    let at_200 = send(&mut client, "e", Some(200));
    client.events();

    client.at(100);
    client.session.handle_timeout(client.now);
    assert_eq!(outcomes(&client.events()), vec![(at_100, Outcome::Expired)]);
    client.at(250);
    client.session.handle_timeout(client.now);
    assert_eq!(outcomes(&client.events()), vec![(at_200, Outcome::Expired)]);
    client.at(300);
    client.session.handle_timeout(client.now);
    assert_eq!(outcomes(&client.events()), vec![(at_300, Outcome::Expired)]);

    // Ready before the other lives run out: both go, and neither can expire any more.
    client.open_socket();
    client.receive(welcome(json!({"heartbeat_ms": 60_000})));
    client.receive(ready("s1"));
    let sent = client.transmits();
    let texts: Vec<_> = sent
        .iter()
        .filter(|frame| frame["type"] == "msg")
        .map(|frame| frame["data"].clone())
        .collect();
    assert_eq!(texts, vec![json!("c"), json!("d")], "in order, ids from 1");
    client.at(10_000);
    client.session.handle_timeout(client.now);
    client.receive(json!({"type": "ack", "id": 2}));
    let mut settled = outcomes(&client.events());
    settled.sort_by_key(|(id, _)| *id);
    assert_eq!(
        settled,
        vec![(at_5000, Outcome::Acked), (forever, Outcome::Acked)]
    );
}

/// [DL-12] A message too large for the peer's limit is refused locally and never sent.
#[test]
fn dl_12_oversized_messages_are_refused_before_sending() {
    let mut client = Client::ready(ClientConfig::default(), json!({"max_frame_bytes": 4096}));
    client.events();
    let big = client.send(json!("x".repeat(4070)));
    let small = client.send(json!("ok"));
    let frames = client.transmits();
    assert_eq!(
        frames,
        vec![msg(1, json!("ok"))],
        "the small message takes id 1"
    );
    let got = outcomes(&client.events());
    assert!(
        matches!(&got[..], [(id, Outcome::Refused { code, .. })] if *id == big && code == "too_large")
    );
    assert_ne!(big, small);
}

/// [OB-1] Messages are accepted before any connection exists.
#[test]
fn ob_1_send_works_before_the_first_connection() {
    let mut session = readyws_protocol::ClientSession::new(ClientConfig::default(), 3);
    assert!(session.send(data(json!(1)), Time::ZERO).is_ok());
    assert_eq!(session.pending(), 1);
    assert!(session.poll_transmit().is_none());
}

/// [OB-2] A full outbox refuses at once and hands the message back, keeping what it holds.
#[test]
fn ob_2_a_full_outbox_refuses_and_returns_the_message() {
    let limits = OutboxLimits {
        max_messages: 2,
        max_bytes: 100,
        max_message_bytes: 60,
    };
    let mut session =
        readyws_protocol::ClientSession::new(ClientConfig::default().outbox(limits), 3);
    session.send(data(json!("a")), Time::ZERO).expect("room");
    let too_big = session
        .send(data(json!("x".repeat(70))), Time::ZERO)
        .unwrap_err();
    assert!(matches!(
        too_big.reason,
        SendErrorReason::TooLarge {
            size: 72,
            limit: 60
        }
    ));
    let bytes = session.send(data(json!("y".repeat(55))), Time::ZERO);
    assert!(bytes.is_ok());
    let full = session.send(data(json!("z")), Time::ZERO).unwrap_err();
    assert!(matches!(
        full.reason,
        SendErrorReason::QueueFullCount { limit: 2 }
    ));
    assert_eq!(full.into_data().as_json(), r#""z""#);
    assert_eq!(session.pending(), 2);

    let limits = OutboxLimits {
        max_messages: 10,
        max_bytes: 10,
        max_message_bytes: 10,
    };
    let mut session =
        readyws_protocol::ClientSession::new(ClientConfig::default().outbox(limits), 3);
    session
        .send(data(json!("abcdef")), Time::ZERO)
        .expect("8 bytes fit");
    let full = session.send(data(json!("abc")), Time::ZERO).unwrap_err();
    assert!(matches!(
        full.reason,
        SendErrorReason::QueueFullBytes {
            queued: 8,
            size: 5,
            limit: 10
        }
    ));
}

/// [OB-3] Closing settles everything still held: nothing is left without an outcome.
#[test]
fn ob_3_closing_settles_every_message() {
    let mut session = readyws_protocol::ClientSession::new(ClientConfig::default(), 3);
    let ids: Vec<MessageId> = (0..3)
        .map(|n| session.send(data(json!(n)), Time::ZERO).expect("room"))
        .collect();
    session.close(Duration::from_secs(5), Time::ZERO);
    let events: Vec<ClientEvent> = std::iter::from_fn(|| session.poll_event()).collect();
    let settled: Vec<MessageId> = outcomes(&events).into_iter().map(|(id, _)| id).collect();
    assert_eq!(settled, ids);
    assert!(matches!(
        events.last(),
        Some(ClientEvent::Closed {
            reason: CloseReason::Requested
        })
    ));
    assert_eq!(session.pending(), 0);
}

/// [OB-3] Closing with messages in flight settles them too: nothing is left counted as in flight.
#[test]
fn ob_3_closing_settles_messages_in_flight() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    for n in 0..3 {
        client.send(json!(n));
    }
    assert_eq!(ids(&client.transmits()), vec![1, 2, 3]);
    assert_eq!(client.session.in_flight(), 3);
    client.session.close(Duration::ZERO, client.now);
    let events = client.events();
    assert_eq!(outcomes(&events).len(), 3);
    assert_eq!(
        (client.session.pending(), client.session.in_flight()),
        (0, 0)
    );
}

/// [FC-1] At most `max_inflight` transmitted messages are unsettled.
#[test]
fn fc_1_the_sender_respects_the_window() {
    let mut client = Client::ready(ClientConfig::default(), json!({"max_inflight": 2}));
    for n in 0..5 {
        client.send(json!(n));
    }
    assert_eq!(ids(&client.transmits()), vec![1, 2]);
    client.receive(json!({"type": "ack", "id": 1}));
    assert_eq!(ids(&client.transmits()), vec![3]);
    client.receive(json!({"type": "ack", "id": 3}));
    assert_eq!(ids(&client.transmits()), vec![4, 5]);
}

/// [FC-2] A receiver may close on a sender that overruns the window.
#[test]
fn fc_2_a_window_overrun_is_a_violation() {
    let mut server = Server::ready();
    for id in 1..=5 {
        server.receive(msg(id, json!(id)));
    }
    let frames = server.transmits();
    let goaway = frames
        .iter()
        .find(|f| f["type"] == "goaway")
        .expect("closed");
    assert!(
        goaway["reason"]
            .as_str()
            .is_some_and(|r| r.contains("[FC-2]"))
    );
}

/// [FC-3] `welcome.max_inflight` governs both directions: the client enforces it on the server.
#[test]
fn fc_3_the_window_applies_to_both_directions() {
    let mut client = Client::ready(ClientConfig::default(), json!({"max_inflight": 2}));
    client.events();
    client.receive(msg(1, json!(1)));
    client.receive(msg(2, json!(2)));
    client.receive(msg(3, json!(3)));
    assert_eq!(client.closed_with(), 4010);
}

/// [RS-1] A session outlives its connection: the server keeps it, can queue on it, and a later
/// connection carries it on.
#[test]
fn rs_1_the_server_keeps_a_session_between_connections() {
    let mut server = Server::ready();
    server
        .connection
        .handle_closed(Some((1006, "")), server.now);
    assert!(matches!(
        server.events().as_slice(),
        [ConnectionEvent::Closed {
            session_ended: false,
            ..
        }]
    ));
    let mut session = server.connection.take_session().expect("kept");
    session
        .send(data(json!("while away")), None, server.now)
        .expect("room");
    let mut next = Server::open(ServerPhase::Accepting);
    next.transmits();
    next.receive(json!({"type": "hello", "resume": {"session_id": "s1", "resume_token": "t", "last_received": 0}}));
    next.connection.accept(session, true, next.now);
    let frames = next.transmits();
    assert_eq!(frames[0]["resumed"], true);
    assert_eq!(frames[0]["backlog"], 1);
    assert_eq!(frames[1], msg(1, json!("while away")));
}

/// [RS-1] What the server keeps of a session can be carried on by another process: the copy
/// resumes at the same positions, resends only what the client lacks, and replays refusals.
#[test]
fn rs_1_a_session_state_carries_on_in_another_process() {
    let mut server = Server::ready();
    server.receive(msg(1, json!("up 1")));
    server.receive(msg(2, json!("up 2")));
    server
        .connection
        .refuse(2, "forbidden", "no")
        .expect("refusable");
    let session = server.connection.session_mut().expect("attached");
    for text in ["down 1", "down 2", "down 3"] {
        session
            .send(data(json!(text)), None, server.now)
            .expect("room");
    }
    server.transmits();
    server.receive(json!({"type": "ack", "id": 1}));
    server
        .connection
        .handle_closed(Some((1006, "")), server.now);
    let session = server.connection.take_session().expect("kept");
    let (state, ids) = session.state();
    assert_eq!(ids.len(), 2, "down 2 and down 3 are in flight");
    assert_eq!(state.last_received, 2);
    assert_eq!(state.settled_through, 1);
    let wire = serde_json::to_string(&state).expect("serializable");
    let state = serde_json::from_str(&wire).expect("deserializable");

    let token = ResumeToken::from_wire("t");
    let (restored, restored_ids) =
        ServerSession::restore("s1", token, &ServerConfig::default(), state);
    assert_eq!(restored_ids.len(), 2);
    assert_eq!(restored.progress(), session.progress());
    let mut next = Server::open(ServerPhase::Accepting);
    next.transmits();
    next.receive(json!({"type": "hello", "resume": {"session_id": "s1", "resume_token": "t", "last_received": 2}}));
    next.connection.accept(restored, true, next.now);
    let frames = next.transmits();
    assert_eq!(frames[0]["resumed"], true);
    assert_eq!(frames[0]["last_received"], 2);
    assert_eq!(frames[1]["type"], "nack");
    assert_eq!(frames[1]["id"], 2);
    assert_eq!(frames[2], json!({"type": "ack", "id": 2}));
    assert_eq!(frames[3], msg(3, json!("down 3")));
    assert_eq!(frames.len(), 4);
}

/// [RS-2] `hello` asks to resume with the latest session, secret and position.
#[test]
fn rs_2_hello_carries_the_resume_request() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.receive(msg(1, json!("a")));
    client.receive(msg(2, json!("b")));
    client.transmits();
    let hello = dropped_and_back(&mut client);
    assert_eq!(
        hello["resume"],
        json!({"session_id": "s1", "resume_token": "tok-s1", "last_received": 2})
    );
}

/// [RS-3] A resume the client did not ask for, or of another session, is a violation; the server
/// matches both the id and the secret.
#[test]
fn rs_3_resumed_must_answer_the_request() {
    let mut client = Client::welcomed(ClientConfig::default(), json!({}));
    client.receive(resumed("s1", 0));
    assert_eq!(client.closed_with(), 4010);

    let mut client = Client::ready(ClientConfig::default(), json!({}));
    dropped_and_back(&mut client);
    client.receive(resumed("s9", 0));
    assert_eq!(client.closed_with(), 4010);

    let server = Server::ready();
    let session = server.connection.session().expect("attached");
    let resume = |id: &str, token: &str| readyws_protocol::frame::Resume {
        session_id: id.into(),
        resume_token: ResumeToken::from_wire(token),
        last_received: 0,
    };
    let token = "07".repeat(16);
    assert!(session.matches(&resume("s1", &token)));
    assert!(!session.matches(&resume("s1", "guess")));
    assert!(!session.matches(&resume("s2", &token)));
}

/// [RS-4] Impossible resume positions are violations on both sides.
#[test]
fn rs_4_impossible_positions_are_violations() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.send(json!("a"));
    client.transmits();
    dropped_and_back(&mut client);
    client.receive(resumed("s1", 5));
    assert_eq!(client.closed_with(), 4010);

    let mut server = Server::ready();
    let session = server.connection.take_session().expect("attached");
    let mut next = Server::open(ServerPhase::Accepting);
    next.transmits();
    next.receive(json!({"type": "hello", "resume": {"session_id": "s1", "resume_token": "t", "last_received": 7}}));
    next.connection.accept(session, true, next.now);
    let frames = next.transmits();
    assert_eq!(frames[0]["type"], "goaway");
    assert!(
        frames[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("[RS-4]"))
    );
}

/// A client that sent one message on session `s1`, lost its connection, queued a second one,
/// and came back to a server that started session `s2`. Returns the events of that moment.
fn reset_scenario(config: ClientConfig) -> (Client, MessageId, MessageId, Vec<ClientEvent>) {
    let mut client = Client::ready(config, json!({}));
    client.events();
    let sent = client.send(json!("sent"));
    client.transmits();
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    let waiting = client.send(json!("waiting"));
    client.events();
    client.reconnect();
    client.receive(welcome(json!({})));
    client.transmits();
    client.events();
    client.receive(ready("s2"));
    let events = client.events();
    (client, sent, waiting, events)
}

/// [RS-5] A lost session, default policy: the client is told, and every message still held —
/// transmitted or not — goes out again in the new session, in order, numbered from 1.
#[test]
fn rs_5_a_reset_resends_everything_held_by_default() {
    let (mut client, sent, waiting, events) = reset_scenario(ClientConfig::default());
    assert!(
        matches!(&events[0], ClientEvent::SessionReset { previous_session_id, resent: 1 } if previous_session_id == "s1")
    );
    assert!(outcomes(&events).is_empty());
    assert_eq!(
        client.transmits(),
        vec![msg(1, json!("sent")), msg(2, json!("waiting"))]
    );
    client.receive(json!({"type": "ack", "id": 2}));
    assert_eq!(
        outcomes(&client.events()),
        vec![(sent, Outcome::Acked), (waiting, Outcome::Acked)]
    );
}

/// [RS-5] A lost session, report policy: transmitted messages end as `session_reset`,
/// untransmitted ones go out first in the new session, numbered from 1.
#[test]
fn rs_5_a_reset_is_reported_under_the_report_policy() {
    let config = ClientConfig::default().reset_policy(readyws_protocol::ResetPolicy::Report);
    let (mut client, sent, waiting, events) = reset_scenario(config);
    assert!(
        matches!(&events[0], ClientEvent::SessionReset { previous_session_id, resent: 0 } if previous_session_id == "s1")
    );
    assert_eq!(outcomes(&events), vec![(sent, Outcome::SessionReset)]);
    assert_eq!(client.transmits(), vec![msg(1, json!("waiting"))]);
    client.receive(json!({"type": "ack", "id": 1}));
    assert_eq!(outcomes(&client.events()), vec![(waiting, Outcome::Acked)]);
}

/// [RS-6] Closing on purpose uses 1000, which tells the server to discard the session.
#[test]
fn rs_6_a_deliberate_close_ends_the_session_on_both_sides() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.session.close(Duration::ZERO, client.now);
    assert_eq!(client.closed_with(), 1000);

    let mut server = Server::ready();
    server
        .connection
        .handle_closed(Some((1000, "")), server.now);
    assert!(matches!(
        server.events().as_slice(),
        [ConnectionEvent::Closed {
            session_ended: true,
            ..
        }]
    ));
}

/// [RS-7] The connection whose session was taken over is told with 4203, and a client that still
/// listens on it stops.
#[test]
fn rs_7_a_taken_over_connection_is_told_to_stop() {
    let mut old = Server::ready();
    let taken = old.connection.take_session();
    assert!(taken.is_some());
    old.connection
        .goaway(4203, "session taken over", None, old.now);
    assert_eq!(old.transmits()[0]["code"], 4203);

    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client.receive(json!({"type": "goaway", "code": 4203, "reason": "session taken over"}));
    assert_eq!(client.closed_with(), 4203);
    assert!(matches!(
        client.events().as_slice(),
        [ClientEvent::Closed {
            reason: CloseReason::Refused { code: 4203, .. }
        }]
    ));
}

/// [RS-8] The client resumes with the latest `resume_token` it was given.
#[test]
fn rs_8_the_latest_resume_token_is_used() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    dropped_and_back(&mut client);
    let mut rotated = resumed("s1", 0);
    rotated["resume_token"] = json!("rotated");
    client.receive(rotated);
    let hello = dropped_and_back(&mut client);
    assert_eq!(hello["resume"]["resume_token"], "rotated");
}

/// Outcomes reach the application of a server session too.
#[test]
fn server_sessions_report_outcomes() {
    let mut server = Server::ready();
    let id = server
        .connection
        .session_mut()
        .expect("attached")
        .send(data(json!("hi")), None, server.now)
        .expect("room");
    assert_eq!(server.transmits(), vec![msg(1, json!("hi"))]);
    server.receive(json!({"type": "ack", "id": 1}));
    assert_eq!(
        server.session_events(),
        vec![SessionEvent::Outcome {
            id,
            outcome: Outcome::Acked
        }]
    );
}

/// [DL-6] The server application may refuse a delivered message before its `ack` goes out: the
/// `nack` takes the ack's place and the later messages are still acknowledged.
#[test]
fn dl_6_the_server_application_refuses_before_the_ack() {
    let mut server = Server::ready();
    server.receive(msg(1, json!("ok")));
    server.receive(msg(2, json!("forbidden")));
    server.receive(msg(3, json!("ok")));
    let delivered: Vec<u64> = server
        .session_events()
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Message { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![1, 2, 3]);
    server
        .connection
        .refuse(2, "forbidden", "not allowed")
        .expect("not yet acked");
    assert_eq!(
        server.connection.refuse(1, "forbidden", "x"),
        Err(readyws_protocol::RefuseError::TooLate { id: 1 }),
        "refusals go in id order"
    );
    let frames = server.transmits();
    assert_eq!(
        frames,
        vec![
            json!({"type": "nack", "id": 2, "code": "forbidden", "reason": "not allowed"}),
            json!({"type": "ack", "id": 3})
        ]
    );
    assert!(
        server.connection.refuse(3, "forbidden", "late").is_err(),
        "3 is acknowledged"
    );
}
