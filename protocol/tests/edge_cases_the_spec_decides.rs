//! The edge cases v1.1 of the spec decides, one test per decision, each citing the rule that
//! answers it: how a frame is read when it is both oversized and invalid, what inside `data` is
//! the application's, when silence and pings start, which `max_inflight` a replay uses, and the
//! other places where two implementations written from the text could part.

mod support;

use std::time::Duration;

use readyws_protocol::codec::decode;
use readyws_protocol::{
    ClientConfig, ClientEvent, ConnectionEvent, DecodeError, DisconnectReason, Frame, Outcome,
    ResetPolicy, Role, SendErrorReason, ServerConfig, ServerConnection, ServerPhase, Time,
};
use serde_json::{Value, json};
use support::{Client, Server, data, msg, ready, resumed, server_config, welcome};

const LIMIT: usize = 65536;

fn decode_client(text: &str) -> Result<Frame, DecodeError> {
    decode(text, Role::Client, LIMIT)
}

/// [FR-7] A member repeated inside `resume` or `client` makes the `hello` invalid; inside `data`
/// a repeated name is the application's value, passed on unchanged.
#[test]
fn fr_7_repeats_in_defined_objects_are_invalid_but_data_is_the_applications() {
    let resume = r#"{"type":"hello","resume":{"session_id":"a","session_id":"b","resume_token":"t","last_received":0}}"#;
    assert!(matches!(
        decode_client(resume),
        Err(DecodeError::InvalidFrame { .. })
    ));
    let client = r#"{"type":"hello","client":{"sdk":"x","version":"1","attempt":1,"attempt":2}}"#;
    assert!(matches!(
        decode_client(client),
        Err(DecodeError::InvalidFrame { .. })
    ));
    let text = r#"{"type":"msg","id":1,"data":{"a":1,"a":2}}"#;
    match decode_client(text) {
        Ok(Frame::Msg(message)) => assert_eq!(message.data.as_json(), r#"{"a":1,"a":2}"#),
        other => panic!("expected a msg, got {other:?}"),
    }
}

/// [FR-5] The integer range binds the members the spec defines; numbers inside `data` are
/// application data, carried exactly as written.
#[test]
fn fr_5_numbers_inside_data_are_not_bound_by_the_integer_range() {
    let text = r#"{"type":"msg","id":1,"data":[18446744073709551616,1e400,-0.5]}"#;
    match decode_client(text) {
        Ok(Frame::Msg(message)) => {
            assert_eq!(message.data.as_json(), "[18446744073709551616,1e400,-0.5]");
        }
        other => panic!("expected a msg, got {other:?}"),
    }
    let id = r#"{"type":"msg","id":9007199254740992,"data":1}"#;
    assert!(decode_client(id).is_err(), "an id beyond 2^53 − 1 is not");
}

/// [RC-4] `client` needs all three members when present; `attempt` is informational, and a
/// server accepts any value of it, 0 included.
#[test]
fn rc_4_client_members_are_required_and_attempt_is_informational() {
    let no_sdk = r#"{"type":"hello","client":{"version":"1","attempt":1}}"#;
    assert!(matches!(
        decode_client(no_sdk),
        Err(DecodeError::InvalidFrame { .. })
    ));
    let mut server = Server::open(ServerPhase::Accepting);
    server.transmits();
    server.receive(json!({"type": "hello", "client": {"sdk": "x", "version": "1", "attempt": 0}}));
    assert!(
        matches!(server.events().as_slice(), [ConnectionEvent::Hello(_)]),
        "attempt 0 is read, not refused"
    );
}

/// [GA-5] A receiver reads a `goaway` whose reason is over 123 bytes and acts on its code: the
/// bound is the sender's to keep.
#[test]
fn ga_5_a_long_goaway_reason_is_still_a_goaway() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    let reason = "r".repeat(400);
    client.receive(json!({"type": "goaway", "code": 4200, "reason": reason}));
    assert_eq!(client.closed_with(), 4200);
    assert!(
        client
            .events()
            .iter()
            .any(|event| matches!(event, ClientEvent::Closed { .. })),
        "4200 ends the session, whatever the reason's length"
    );
}

/// [FR-12] The order of checks: JSON and `type` first, then the direction, then the size, then
/// the members. An oversized `msg` whose id reads is `too_large` even when it is also invalid.
#[test]
fn fr_12_checks_run_in_order_and_size_beats_other_members() {
    let pad = "x".repeat(LIMIT);
    let oversized_invalid = format!(r#"{{"type":"msg","id":3,"data":"{pad}","data":1}}"#);
    match decode_client(&oversized_invalid) {
        Err(DecodeError::InvalidFrame {
            msg_id: Some(3),
            too_large: true,
            ..
        }) => {}
        other => panic!("expected too_large with id 3, got {other:?}"),
    }
    let oversized_not_json = format!(r#"{{"type":"msg","id":3,"data":"{pad}""#);
    assert!(matches!(
        decode_client(&oversized_not_json),
        Err(DecodeError::InvalidJson { .. })
    ));
    let oversized_unknown = format!(r#"{{"type":"later","data":"{pad}"}}"#);
    assert!(matches!(
        decode_client(&oversized_unknown),
        Err(DecodeError::UnknownType { .. })
    ));
    let oversized_wrong_way = format!(r#"{{"type":"welcome","data":"{pad}"}}"#);
    assert!(matches!(
        decode_client(&oversized_wrong_way),
        Err(DecodeError::WrongDirection { .. })
    ));
    let id_unreadable = format!(r#"{{"type":"msg","id":"3","data":"{pad}"}}"#);
    assert!(matches!(
        decode_client(&id_unreadable),
        Err(DecodeError::TooLarge { .. })
    ));
    // A ready server ignores an oversized frame of a type it does not know [FR-3].
    let mut server = Server::ready();
    server
        .connection
        .handle_text(&oversized_unknown, server.now);
    assert!(server.transmits().is_empty());
    assert!(server.events().is_empty());
}

/// [FR-12] The id is checked before the rest: an invalid `msg` repeating an id already received
/// is a duplicate (acknowledged again, no `nack`), and one past a gap is a violation.
#[test]
fn fr_12_an_invalid_msg_is_judged_by_its_id_first() {
    let mut server = Server::ready();
    server.receive(msg(1, json!("one")));
    assert_eq!(server.transmits(), vec![json!({"type": "ack", "id": 1})]);
    server
        .connection
        .handle_text(r#"{"type":"msg","id":1,"data":"\ud800"}"#, server.now);
    assert_eq!(
        server.transmits(),
        vec![json!({"type": "ack", "id": 1})],
        "a duplicate is acknowledged, never refused"
    );
    server
        .connection
        .handle_text(r#"{"type":"msg","id":5,"data":"\ud800"}"#, server.now);
    let frames = server.transmits();
    assert_eq!(frames[0]["type"], "goaway");
    assert_eq!(frames[0]["code"], 4010);
    assert!(
        frames[0]["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("[DL-3]")
    );
}

/// [FR-8] A reason cites the rule broken in the form `[XX-n] text`, at its start.
#[test]
fn fr_8_reasons_begin_with_the_bracketed_rule() {
    let mut server = Server::ready();
    server.connection.handle_text("{not json", server.now);
    let frames = server.transmits();
    let reason = frames[0]["reason"].as_str().expect("a reason");
    assert!(reason.starts_with("[FR-8] "), "{reason}");
}

/// [HS-12] A server may refuse with `goaway` in place of `welcome`; the client acts on its code
/// as after a `welcome`, waiting out `retry_after_ms`.
#[test]
fn hs_12_a_goaway_in_place_of_welcome_is_a_refusal() {
    let mut client = Client::connecting(ClientConfig::default());
    client.open_socket();
    client
        .receive(json!({"type": "goaway", "code": 4003, "reason": "full", "retry_after_ms": 8000}));
    assert_eq!(client.closed_with(), 4003);
    let at = client
        .session
        .poll_timeout()
        .expect("a reconnect is scheduled");
    assert!(at >= Time::from_millis(8000), "{at:?}");
}

/// [TR-2] The client closes a connection without `readyws.v1` with 4010 and stops.
#[test]
fn tr_2_the_close_code_is_4010() {
    let mut client = Client::connecting(ClientConfig::default());
    client
        .session
        .handle_connected(client.conn, None, client.now);
    assert_eq!(client.closed_with(), 4010);
    assert_eq!(client.session.poll_timeout(), None, "no retry");
}

/// [DL-12] The peer's limit is checked at a message's first transmission; a message already
/// numbered in the session is transmitted again with its id even when a smaller limit came with
/// the resume, and the receiver refuses it (`too_large`), so that ids stay contiguous.
#[test]
fn dl_12_the_limit_is_checked_at_first_transmission_only() {
    let big = "y".repeat(6000);
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client.send(json!(big));
    assert_eq!(client.transmits()[0]["id"], 1);
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    client.reconnect();
    client.receive(welcome(json!({"max_frame_bytes": 4096})));
    client.transmits();
    let later = client.send(json!(big));
    client.receive(resumed("s1", 0));
    let frames = client.transmits();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["id"], 1, "the numbered message goes out again");
    let events = client.events();
    assert!(
        events.iter().any(|event| matches!(
            event,
            ClientEvent::Outcome { id, outcome: Outcome::Refused { code, .. } }
                if *id == later && code == "too_large"
        )),
        "the message never transmitted is refused locally: {events:?}"
    );
}

/// [DL-4] Duplicates owe one cumulative `ack` like any message [DL-7], not one each.
#[test]
fn dl_4_duplicates_share_one_ack() {
    let mut server = Server::ready();
    server.receive(msg(1, json!(1)));
    server.receive(msg(2, json!(2)));
    server.transmits();
    server.receive(msg(1, json!(1)));
    server.receive(msg(2, json!(2)));
    assert_eq!(server.transmits(), vec![json!({"type": "ack", "id": 2})]);
}

/// Carries server session `s1` onto a new connection whose `max_inflight` is `window`, resumed
/// where the client received nothing: its frames, `connection_ready` first.
fn resume_on_window(mut first: Server, window: u64) -> Vec<Value> {
    let session = first.connection.take_session().expect("the session");
    let config: ServerConfig = server_config().max_inflight(window);
    let mut second = ServerConnection::new(config, ServerPhase::Accepting, first.now);
    second.poll_transmit();
    let hello = json!({"type": "hello", "resume": {"session_id": "s1", "resume_token": "x", "last_received": 0}});
    second.handle_text(&hello.to_string(), first.now);
    second.accept(session, true, first.now);
    std::iter::from_fn(|| second.poll_transmit())
        .map(|text| serde_json::from_str(&text).expect("JSON"))
        .collect()
}

/// [DL-8] The replay of `nack`s uses the `max_inflight` of the connection just made ready.
#[test]
fn dl_8_the_replay_window_is_the_new_connections() {
    let refused_then_three = || {
        let mut server = Server::ready();
        server.receive(msg(1, json!(1)));
        server
            .connection
            .handle_text(r#"{"type":"msg","id":2,"data":"\udc00"}"#, server.now);
        server.receive(msg(3, json!(3)));
        server.receive(msg(4, json!(4)));
        server.transmits();
        server
    };
    let wide = resume_on_window(refused_then_three(), 4);
    assert_eq!(wide[1]["type"], "nack", "{wide:?}");
    assert_eq!(wide[1]["id"], 2);
    assert_eq!(wide[2], json!({"type": "ack", "id": 4}));
    let narrow = resume_on_window(refused_then_three(), 2);
    assert_eq!(narrow[1..], [json!({"type": "ack", "id": 4})]);
}

/// [RS-4] "Acknowledged" includes refused: a resume position below an id the client `nack`ed
/// is impossible.
#[test]
fn rs_4_a_position_below_a_refused_id_is_impossible() {
    let mut server = Server::ready();
    let session = server.connection.session_mut().expect("session");
    session
        .send(data(json!(1)), None, server.now)
        .expect("room");
    session
        .send(data(json!(2)), None, server.now)
        .expect("room");
    server.transmits();
    server.receive(json!({"type": "nack", "id": 2, "code": "forbidden", "reason": "no"}));
    let session = server.connection.take_session().expect("session");
    let mut next = ServerConnection::new(server_config(), ServerPhase::Accepting, server.now);
    next.poll_transmit();
    let hello = json!({"type": "hello", "resume": {"session_id": "s1", "resume_token": "x", "last_received": 1}});
    next.handle_text(&hello.to_string(), server.now);
    next.accept(session, true, server.now);
    let goaway: Value =
        serde_json::from_str(&next.poll_transmit().expect("a frame")).expect("JSON");
    assert_eq!(goaway["code"], 4010);
    assert!(
        goaway["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("[RS-4]")
    );
}

/// [DL-13] `backlog` counts the messages the connection is to transmit: those the window holds
/// back included, and after a resume the ones sent again too.
#[test]
fn dl_13_backlog_counts_untransmitted_messages() {
    let mut server = Server::open(ServerPhase::Accepting);
    server.transmits();
    server.receive(json!({"type": "hello"}));
    let mut session = server.new_session("s1");
    for n in 0..6 {
        session
            .send(data(json!(n)), None, server.now)
            .expect("room");
    }
    server.connection.accept(session, false, server.now);
    let frames = server.transmits();
    assert_eq!(
        frames[0]["backlog"], 6,
        "max_inflight is 4, the backlog is 6"
    );
    assert_eq!(frames.len(), 5, "ready, then the window's 4: {frames:?}");
    let carried = resume_on_window(server, 4);
    assert_eq!(carried[0]["backlog"], 6, "4 sent again and 2 never sent");
    let resends = carried.iter().filter(|f| f["type"] == "msg").count();
    assert_eq!(resends, 4);
}

/// [DL-11] A message transmitted before a reset and resent after it does not expire: it has
/// left once.
#[test]
fn dl_11_a_resent_message_does_not_expire() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client
        .session
        .send_with_ttl(
            data(json!("m")),
            Some(Duration::from_millis(100)),
            client.now,
        )
        .expect("room");
    client.transmits();
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    client.at(5_000);
    client.reconnect();
    client.receive(welcome(json!({})));
    client.transmits();
    client.receive(ready("s2"));
    let frames = client.transmits();
    assert_eq!(frames[0]["id"], 1, "resent in the new session: {frames:?}");
    let events = client.events();
    assert!(
        !events.iter().any(|event| matches!(
            event,
            ClientEvent::Outcome {
                outcome: Outcome::Expired,
                ..
            }
        )),
        "{events:?}"
    );
}

/// [RS-6] A close frame answering the server's `goaway` ends nothing, whatever its code: only a
/// close the client starts with 1000 discards the session.
#[test]
fn rs_6_a_1000_in_answer_to_goaway_keeps_the_session() {
    let mut server = Server::ready();
    server
        .connection
        .goaway(4000, "deploying", None, server.now);
    server.transmits();
    let closed = server.events();
    assert!(
        matches!(
            closed.as_slice(),
            [ConnectionEvent::Closed {
                session_ended: false,
                ..
            }]
        ),
        "{closed:?}"
    );
    server
        .connection
        .handle_closed(Some((1000, "bye")), server.now);
    assert!(server.events().is_empty(), "the late 1000 changes nothing");
    assert!(server.connection.take_session().is_some());
}

/// [HB-4] Silence counts from `welcome` on the client and from `hello` on the server; before
/// those, only the handshake and hello timeouts run.
#[test]
fn hb_4_silence_starts_with_welcome_and_hello() {
    let mut client = Client::welcomed(ClientConfig::default(), json!({"heartbeat_ms": 1000}));
    client.fire_timer();
    assert_eq!(
        client.now,
        Time::from_millis(2000),
        "2 × heartbeat_ms after welcome"
    );
    assert_eq!(client.closed_with(), 4004);
    assert!(client.events().iter().any(|event| matches!(
        event,
        ClientEvent::Disconnected {
            reason: DisconnectReason::HeartbeatTimeout,
            ..
        }
    )));

    let mut server = Server::open(ServerPhase::Accepting);
    server.transmits();
    server.fire_timer();
    assert_eq!(
        server.now,
        Time::from_millis(5000),
        "before hello only the hello timeout runs"
    );
    assert_eq!(server.transmits()[0]["code"], 4001);
}

/// [HB-1] The first `ping` goes out `heartbeat_ms` after `hello` arrived.
#[test]
fn hb_1_the_first_ping_follows_hello_by_one_interval() {
    let mut server = Server::open(ServerPhase::Accepting);
    server.transmits();
    server.at(700);
    server.receive(json!({"type": "hello"}));
    server.accept_new("s1");
    server.transmits();
    server.fire_timer();
    assert_eq!(server.now, Time::from_millis(1700));
    assert_eq!(server.transmits()[0]["type"], "ping");
}

/// [SG-4] A client whose start-up timeout passes closes with 4004, reports a handshake timeout
/// and reconnects.
#[test]
fn sg_4_the_startup_timeout_ends_like_a_handshake_timeout() {
    let config = ClientConfig::default().startup_timeout(Duration::from_millis(3000));
    let mut client = Client::welcomed(config, json!({"phase": "starting", "heartbeat_ms": 60000}));
    client.fire_timer();
    assert_eq!(client.now, Time::from_millis(3000));
    assert_eq!(client.closed_with(), 4004);
    let events = client.events();
    assert!(
        events.iter().any(|event| matches!(
            event,
            ClientEvent::Disconnected {
                reason: DisconnectReason::HandshakeTimeout,
                reconnect_at: Some(_)
            }
        )),
        "{events:?}"
    );
}

/// [GA-3] `retry_after_ms` bounds the attempt after a 41xx too, once fresh credentials came.
#[test]
fn ga_3_retry_after_applies_after_fresh_credentials() {
    let mut client = Client::ready(ClientConfig::default().token("old"), json!({}));
    client.events();
    client.receive(
        json!({"type": "goaway", "code": 4101, "reason": "expired", "retry_after_ms": 5000}),
    );
    client.actions();
    client.events();
    client.at(1000);
    client.session.set_token(Some("new".into()), client.now);
    let at = client
        .session
        .poll_timeout()
        .expect("an attempt is scheduled");
    assert!(at >= Time::from_millis(5000), "{at:?}");
}

/// [HS-8] A socket that does not open in time is abandoned: reported as a connect timeout and
/// retried after the backoff delay.
#[test]
fn hs_8_a_connect_timeout_is_abandoned_and_retried() {
    let config = ClientConfig::default().connect_timeout(Duration::from_millis(2000));
    let mut client = Client::connecting(config);
    client.fire_timer();
    client.actions();
    let events = client.events();
    assert!(
        events.iter().any(|event| matches!(
            event,
            ClientEvent::Disconnected {
                reason: DisconnectReason::ConnectTimeout,
                reconnect_at: Some(_)
            }
        )),
        "{events:?}"
    );
}

/// [AP-3] During a graceful close the client goes on reconnecting and refuses new messages;
/// what is left at the end of the grace ends `closed`, and the session ends with 1000.
#[test]
fn ap_3_graceful_close_reconnects_during_the_grace_then_closes() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    let pending = client.send(json!("m"));
    client.transmits();
    client
        .session
        .close(Duration::from_millis(4000), client.now);
    assert!(
        client
            .session
            .send(data(json!("late")), client.now)
            .is_err()
    );
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    client.events();
    let at = client.session.poll_timeout().expect("the reconnect");
    assert!(at < Time::from_millis(4000));
    client.reconnect();
    client.receive(welcome(json!({})));
    client.transmits();
    client.receive(resumed("s1", 0));
    client.transmits();
    client.at(4000);
    client.session.handle_timeout(client.now);
    assert_eq!(client.closed_with(), 1000);
    let events = client.events();
    assert!(
        events.iter().any(|event| matches!(
            event,
            ClientEvent::Outcome { id, outcome: Outcome::Closed } if *id == pending
        )),
        "{events:?}"
    );
}

/// [AP-2] The outbox's count bound includes messages in flight: `queue_full` once that many are
/// held, transmitted or not.
#[test]
fn ap_2_queue_full_counts_messages_in_flight() {
    let config = ClientConfig::default().outbox(readyws_protocol::OutboxLimits {
        max_messages: 2,
        ..Default::default()
    });
    let mut client = Client::ready(config.reset_policy(ResetPolicy::Resend), json!({}));
    client.send(json!(1));
    client.send(json!(2));
    assert_eq!(client.transmits().len(), 2, "both in flight");
    let refused = client
        .session
        .send(data(json!(3)), client.now)
        .expect_err("full");
    assert!(
        matches!(refused.reason, SendErrorReason::QueueFullCount { limit: 2 }),
        "{:?}",
        refused.reason
    );
}

/// [AP-4] A client asks to resume however long it was away: the server decides.
#[test]
fn ap_4_a_resume_is_asked_for_after_the_window_too() {
    let mut client = Client::ready(ClientConfig::default(), json!({"resume_window_ms": 1000}));
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    client.at(3_600_000);
    client.reconnect();
    client.receive(welcome(json!({})));
    let hello = client.transmits();
    assert_eq!(hello[0]["resume"]["session_id"], "s1", "{hello:?}");
}
