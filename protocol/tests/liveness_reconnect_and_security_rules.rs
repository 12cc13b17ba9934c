//! Heartbeat, `goaway`, reconnect and security rules (`docs/PROTOCOL.md` §10–§13): one test per
//! rule, named after it.

mod support;

use std::time::Duration;

use readyws_protocol::close::{code, fit_close_reason};
use readyws_protocol::frame::Hello;
use readyws_protocol::{
    Action, BackoffConfig, ClientConfig, ClientEvent, ClientSession, CloseClass, CloseReason,
    DisconnectReason, ResumeToken, Time,
};
use serde_json::json;
use support::{Client, Server, ready, welcome};

/// The delay the client chose after a failure, read from its `Disconnected` event.
fn next_delay(client: &mut Client) -> Duration {
    let events = client.events();
    let at = events
        .iter()
        .find_map(|event| match event {
            ClientEvent::Disconnected {
                reconnect_at: Some(at),
                ..
            } => Some(*at),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no reconnect scheduled in {events:?}"));
    at.saturating_since(client.now)
}

/// Fails the attempt the session opened at `now`; returns when it schedules the next one.
fn fail_attempt(session: &mut ClientSession, now: Time) -> Time {
    let Some(Action::Open { conn }) = session.poll_action() else {
        panic!("the session opened no attempt")
    };
    session.handle_connect_failed(conn, "refused", now);
    std::iter::from_fn(|| session.poll_event())
        .find_map(|e| match e {
            ClientEvent::Disconnected { reconnect_at, .. } => reconnect_at,
            _ => None,
        })
        .expect("a reconnect is scheduled")
}

fn backoff(initial_ms: u64, max_ms: u64) -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(initial_ms),
        max: Duration::from_millis(max_ms),
        max_attempts: None,
    }
}

/// [HB-1] The server pings every `heartbeat_ms`, starting after `hello`.
#[test]
fn hb_1_the_server_pings_on_schedule() {
    let mut server = Server::open(readyws_protocol::ServerPhase::Accepting);
    server.transmits();
    server.at(2500);
    server.receive(json!({"type": "hello"}));
    assert!(server.transmits().is_empty(), "no ping before hello");
    server.accept_new("s1");
    server.transmits();
    server.fire_timer();
    assert_eq!(server.now, Time::from_millis(3500));
    assert_eq!(server.transmits()[0]["type"], "ping");
    server.receive(json!({"type": "pong", "nonce": "1"}));
    server.fire_timer();
    assert_eq!(server.now, Time::from_millis(4500));
    assert_eq!(server.transmits()[0]["type"], "ping");
}

/// [HB-2] A `ping` is answered at once with its nonce.
#[test]
fn hb_2_pings_are_answered_with_their_nonce() {
    let mut client = Client::welcomed(ClientConfig::default(), json!({}));
    client.receive(json!({"type": "ping", "nonce": "abc"}));
    assert_eq!(
        client.transmits(),
        vec![json!({"type": "pong", "nonce": "abc"})]
    );
    client.receive(json!({"type": "ping"}));
    assert_eq!(client.transmits(), vec![json!({"type": "pong"})]);
}

/// [HB-3] Silence is time since the last frame, judged on the clock: a timer that fires late, as
/// in a throttled browser tab, does not kill a connection that kept receiving.
#[test]
fn hb_3_silence_is_measured_on_the_clock_not_by_timer_callbacks() {
    let mut client = Client::ready(ClientConfig::default(), json!({"heartbeat_ms": 1000}));
    client.events();
    for at in [1500, 2500, 3500] {
        client.at(at);
        client.receive(json!({"type": "ping"}));
    }
    client.at(4000);
    client.session.handle_timeout(client.now);
    assert!(
        client.actions().is_empty(),
        "the last frame came 500 ms ago"
    );
    assert_eq!(client.session.poll_timeout(), Some(Time::from_millis(5500)));
}

/// [HB-4] Twice `heartbeat_ms` of silence is a dead connection, for either side.
#[test]
fn hb_4_twice_the_heartbeat_of_silence_is_death() {
    let mut client = Client::ready(ClientConfig::default(), json!({"heartbeat_ms": 1000}));
    client.events();
    client.fire_timer();
    assert_eq!(client.now, Time::from_millis(2000));
    assert_eq!(client.closed_with(), 4004);
    assert!(matches!(
        client.events().as_slice(),
        [ClientEvent::Disconnected {
            reason: DisconnectReason::HeartbeatTimeout,
            ..
        }]
    ));

    let mut server = Server::ready();
    server.at(1999);
    server.connection.handle_timeout(server.now);
    assert!(server.transmits().iter().all(|f| f["type"] == "ping"));
    server.at(2000);
    server.connection.handle_timeout(server.now);
    assert_eq!(server.transmits()[0]["code"], 4004);
}

/// [HB-5] The server answers a client's `ping`.
#[test]
fn hb_5_the_server_answers_pings() {
    let mut server = Server::ready();
    server.receive(json!({"type": "ping", "nonce": "c"}));
    assert_eq!(
        server.transmits(),
        vec![json!({"type": "pong", "nonce": "c"})]
    );
}

/// [GA-1] `goaway` goes out before the close, and the close carries the same code.
#[test]
fn ga_1_goaway_precedes_a_close_with_the_same_code() {
    let mut server = Server::ready();
    server
        .connection
        .goaway(4000, "deploying", None, server.now);
    assert_eq!(
        server.connection.poll_close(),
        None,
        "the goaway is not written yet"
    );
    assert_eq!(server.transmits()[0]["type"], "goaway");
    assert_eq!(
        server.connection.poll_close(),
        Some((4000, "deploying".to_owned()))
    );
}

/// [GA-2] The code's range decides: reconnect, refresh credentials, or stop.
#[test]
fn ga_2_the_code_range_decides_what_the_client_does() {
    assert_eq!(CloseClass::of(4000), CloseClass::Reconnect);
    assert_eq!(CloseClass::of(4099), CloseClass::Reconnect);
    assert_eq!(CloseClass::of(4100), CloseClass::RefreshCredentials);
    assert_eq!(CloseClass::of(4199), CloseClass::RefreshCredentials);
    assert_eq!(CloseClass::of(4200), CloseClass::Terminal);
    assert_eq!(CloseClass::of(4299), CloseClass::Terminal);
    for other in [1000, 1001, 1006, 1008, 1011, 1012, 4300, 4999] {
        assert_eq!(CloseClass::of(other), CloseClass::Reconnect, "code {other}");
    }

    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client
        .session
        .handle_disconnected(client.conn, Some((4200, "banned")), client.now);
    assert!(matches!(
        client.events().as_slice(),
        [ClientEvent::Closed {
            reason: CloseReason::Refused { code: 4200, .. }
        }]
    ));

    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.events();
    client
        .session
        .handle_disconnected(client.conn, Some((4100, "who are you")), client.now);
    let events = client.events();
    assert!(matches!(
        events.last(),
        Some(ClientEvent::CredentialsRequired { code: 4100, .. })
    ));
    assert_eq!(
        client.session.poll_timeout(),
        None,
        "no attempt before fresh credentials"
    );
}

/// [GA-3] `retry_after_ms` is a floor, with a random spread of up to half of it on top.
#[test]
fn ga_3_retry_after_is_honoured_and_spread() {
    let mut delays = Vec::new();
    for seed in 0..200 {
        let mut session = ClientSession::new(ClientConfig::default(), seed);
        let mut client = Client {
            session: {
                session.connect(Time::ZERO);
                session
            },
            conn: readyws_protocol::ConnId(0),
            now: Time::ZERO,
        };
        client.conn = client.expect_open();
        client.open_socket();
        client.receive(welcome(json!({})));
        client.receive(ready("s1"));
        client.events();
        client.receive(
            json!({"type": "goaway", "code": 4003, "reason": "busy", "retry_after_ms": 10000}),
        );
        delays.push(next_delay(&mut client));
    }
    assert!(
        delays
            .iter()
            .all(|d| *d >= Duration::from_secs(10) && *d <= Duration::from_secs(15))
    );
    let spread = delays.iter().max().copied().unwrap_or_default()
        - delays.iter().min().copied().unwrap_or_default();
    assert!(
        spread > Duration::from_secs(3),
        "clients told the same delay return at different times: {spread:?}"
    );
}

/// [GA-4] The registered codes have the values the specification gives them.
#[test]
fn ga_4_registered_codes_keep_their_values() {
    let codes = [
        (code::GOING_AWAY, 4000),
        (code::HELLO_TIMEOUT, 4001),
        (code::STARTUP_FAILED, 4002),
        (code::OVERLOADED, 4003),
        (code::HEARTBEAT_TIMEOUT, 4004),
        (code::PROTOCOL_ERROR, 4010),
        (code::UNAUTHORIZED, 4100),
        (code::TOKEN_EXPIRED, 4101),
        (code::FORBIDDEN, 4200),
        (code::SESSION_TAKEN_OVER, 4203),
        (code::NORMAL_CLOSURE, 1000),
    ];
    for (constant, value) in codes {
        assert_eq!(constant, value);
    }
}

/// [GA-5] Reasons fit a close frame: at most 123 bytes, cut at a character boundary.
#[test]
fn ga_5_reasons_fit_a_close_frame() {
    let long = "é".repeat(100);
    let cut = fit_close_reason(&long);
    assert_eq!(cut.len(), 122);
    assert!(long.starts_with(&cut));

    let mut server = Server::ready();
    server.connection.goaway(4000, &long, None, server.now);
    let reason = server.transmits()[0]["reason"].as_str().map(str::len);
    assert_eq!(reason, Some(122));
}

/// [GA-6] The client closes with 1000 only to end its session, 4004 when it judged the connection
/// dead, 4010 for a violation, and echoes a `goaway` code.
#[test]
fn ga_6_the_client_chooses_its_close_codes() {
    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.receive(json!({"type": "goaway", "code": 4003, "reason": "busy"}));
    assert_eq!(client.closed_with(), 4003);

    let mut client = Client::ready(ClientConfig::default(), json!({"heartbeat_ms": 100}));
    client.fire_timer();
    assert_eq!(client.closed_with(), 4004);

    let mut client = Client::ready(ClientConfig::default(), json!({}));
    client.receive_text("[]");
    assert_eq!(client.closed_with(), 4010);
}

/// [RC-1] Delays grow from `initial` and stay random, within `[max / 2, max)`, at the cap.
#[test]
fn rc_1_backoff_is_exponential_with_jitter_that_survives_the_cap() {
    let mut first = Vec::new();
    let mut capped = Vec::new();
    for seed in 0..100 {
        let config = ClientConfig::default().backoff(backoff(500, 30_000));
        let mut session = ClientSession::new(config, seed);
        session.connect(Time::ZERO);
        let mut now = Time::ZERO;
        for failure in 0..12 {
            let at = fail_attempt(&mut session, now);
            let delay = at.saturating_since(now);
            assert!(delay >= Duration::from_millis(500) && delay < Duration::from_secs(30));
            if failure == 0 {
                first.push(delay);
            }
            if failure == 11 {
                capped.push(delay);
            }
            now = at;
            session.handle_timeout(now);
        }
    }
    assert!(first.iter().all(|d| *d < Duration::from_millis(1000)));
    assert!(capped.iter().all(|d| *d >= Duration::from_secs(15)));
    let distinct: std::collections::BTreeSet<_> = capped.iter().collect();
    assert!(
        distinct.len() > 50,
        "delays at the cap differ between clients: {}",
        distinct.len()
    );
}

/// [RC-1] An outage longer than the doubling can count (70 failures: 2^70 × initial overflows)
/// keeps every delay within `[max / 2, max)`.
#[test]
fn rc_1_a_long_outage_keeps_its_delays_at_the_cap() {
    let mut session = ClientSession::new(ClientConfig::default().backoff(backoff(500, 30_000)), 7);
    session.connect(Time::ZERO);
    let mut now = Time::ZERO;
    for failure in 0..70 {
        let at = fail_attempt(&mut session, now);
        let delay = at.saturating_since(now);
        assert!(
            delay < Duration::from_secs(30),
            "failure {failure}: {delay:?}"
        );
        if failure >= 6 {
            assert!(
                delay >= Duration::from_secs(15),
                "failure {failure}: {delay:?}"
            );
        }
        now = at;
        session.handle_timeout(now);
    }
}

/// [RC-2] The schedule restarts only at `connection_ready`, not when a socket opens.
#[test]
fn rc_2_backoff_resets_only_on_readiness() {
    let config = ClientConfig::default().backoff(backoff(1000, 60_000));
    let mut client = Client::connecting(config);
    let mut last = Duration::ZERO;
    for _ in 0..4 {
        client.open_socket();
        client
            .session
            .handle_disconnected(client.conn, None, client.now);
        last = next_delay(&mut client);
        client.reconnect();
    }
    assert!(
        last >= Duration::from_secs(8),
        "open-then-close keeps backing off: {last:?}"
    );
    client.receive(welcome(json!({})));
    client.receive(ready("s1"));
    client.events();
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    assert!(next_delay(&mut client) < Duration::from_secs(2));
}

/// [RC-6] A wake-up (network back, page visible again) starts a pending attempt at once, and
/// while ready checks liveness against the clock and sends a `ping`.
#[test]
fn rc_6_a_wake_up_cuts_the_backoff_short_and_probes_a_ready_connection() {
    let mut client = Client::connecting(ClientConfig::default().backoff(backoff(10_000, 60_000)));
    client
        .session
        .handle_connect_failed(client.conn, "offline", client.now);
    assert!(next_delay(&mut client) >= Duration::from_secs(10));
    client.at(5);
    client.session.handle_wake(client.now);
    assert!(
        matches!(client.actions().as_slice(), [Action::Open { .. }]),
        "the next attempt starts at once"
    );

    let mut client = Client::ready(ClientConfig::default(), json!({"heartbeat_ms": 1000}));
    client.transmits();
    client.events();
    client.at(500);
    client.session.handle_wake(client.now);
    assert_eq!(client.transmits(), vec![json!({"type": "ping"})]);
    assert!(client.actions().is_empty(), "a live connection is kept");

    // A page hidden for longer than the liveness deadline finds its connection dead on wake-up,
    // even though no timer fired in between.
    client.at(60_000);
    client.session.handle_wake(client.now);
    let events = client.events();
    assert!(
        matches!(
            events.as_slice(),
            [ClientEvent::Disconnected {
                reason: DisconnectReason::HeartbeatTimeout,
                ..
            }]
        ),
        "{events:?}"
    );
    assert!(
        client
            .actions()
            .iter()
            .all(|a| !matches!(a, Action::Open { .. })),
        "the failure found on wake-up waits out its backoff"
    );
}

/// [RC-3] No giving up by default; an attempt limit, when configured, ends the session.
#[test]
fn rc_3_never_give_up_unless_configured() {
    let mut client = Client::connecting(ClientConfig::default().backoff(backoff(1, 10)));
    for _ in 0..300 {
        client
            .session
            .handle_connect_failed(client.conn, "refused", client.now);
        client.events();
        client.reconnect();
    }
    assert!(matches!(
        client.session.state(),
        readyws_protocol::ClientState::Connecting { .. }
    ));

    let limited = BackoffConfig {
        max_attempts: Some(3),
        ..backoff(1, 10)
    };
    let mut client = Client::connecting(ClientConfig::default().backoff(limited));
    for _ in 0..3 {
        client
            .session
            .handle_connect_failed(client.conn, "refused", client.now);
        client.events();
        client.reconnect();
    }
    client
        .session
        .handle_connect_failed(client.conn, "refused", client.now);
    assert!(matches!(
        client.events().last(),
        Some(ClientEvent::Closed {
            reason: CloseReason::GaveUp { attempts: 3, .. }
        })
    ));
}

/// [RC-4] `hello.client.attempt` counts attempts since the client was last ready.
#[test]
fn rc_4_hello_reports_the_attempt_number() {
    let mut client = Client::connecting(ClientConfig::default());
    client
        .session
        .handle_connect_failed(client.conn, "refused", client.now);
    client.reconnect();
    client.receive(welcome(json!({})));
    assert_eq!(client.transmits()[0]["client"]["attempt"], 2);
    client.receive(ready("s1"));
    client
        .session
        .handle_disconnected(client.conn, None, client.now);
    client.reconnect();
    client.receive(welcome(json!({})));
    assert_eq!(client.transmits()[0]["client"]["attempt"], 1);
}

/// [RC-5] After 41xx the client waits for fresh credentials, then follows its backoff.
#[test]
fn rc_5_fresh_credentials_then_backoff() {
    let mut client = Client::ready(ClientConfig::default().token("old"), json!({}));
    client.events();
    client.receive(json!({"type": "goaway", "code": 4101, "reason": "expired"}));
    client.actions();
    client.events();
    assert_eq!(client.session.poll_timeout(), None);
    client.at(60_000);
    client.session.set_token(Some("new".into()), client.now);
    let at = client
        .session
        .poll_timeout()
        .expect("an attempt is scheduled");
    assert!(at > client.now && at < client.now + Duration::from_secs(1));
    client.reconnect();
    client.receive(welcome(json!({})));
    assert_eq!(client.transmits()[0]["token"], "new");
}

/// [SE-1] Resume tokens carry at least 128 random bits.
#[test]
fn se_1_resume_tokens_hold_128_random_bits() {
    assert!(ResumeToken::from_random_bytes(&[1; 15]).is_none());
    let token = ResumeToken::from_random_bytes(&[0xab; 16]).expect("16 bytes");
    assert_eq!(token.expose(), "ab".repeat(16));
}

/// [SE-2] Secrets never appear in `Debug` output or in error texts.
#[test]
fn se_2_secrets_stay_out_of_logs() {
    let hello = Hello {
        token: Some("bearer-secret".into()),
        resume: Some(readyws_protocol::frame::Resume {
            session_id: "s1".into(),
            resume_token: ResumeToken::from_wire("resume-secret"),
            last_received: 0,
        }),
        client: None,
    };
    let shown = format!("{hello:?}");
    assert!(
        !shown.contains("bearer-secret") && !shown.contains("resume-secret"),
        "{shown}"
    );

    let mut client = Client::welcomed(ClientConfig::default().token("bearer-secret"), json!({}));
    client.receive(
        json!({"type": "connection_ready", "session_id": "s1", "resume_token": "resume-secret",
        "resumed": true, "last_received": 0, "backlog": 0}),
    );
    let shown = format!("{:?} {:?}", client.actions(), client.events());
    assert!(
        !shown.contains("bearer-secret") && !shown.contains("resume-secret"),
        "{shown}"
    );
}

/// [SE-3] A session resumes only with its own secret (the server also checks the user).
#[test]
fn se_3_resume_needs_the_sessions_own_secret() {
    let server = Server::ready();
    let session = server.connection.session().expect("attached");
    let attempt = |token: &str| readyws_protocol::frame::Resume {
        session_id: "s1".into(),
        resume_token: ResumeToken::from_wire(token),
        last_received: 0,
    };
    assert!(session.matches(&attempt(&"07".repeat(16))));
    assert!(!session.matches(&attempt(&"07".repeat(15))));
    assert!(!session.matches(&attempt(&format!("{}08", "07".repeat(15)))));
}

/// [SE-4] Token comparison looks at every byte and at the lengths.
#[test]
fn se_4_token_comparison_covers_every_byte() {
    let a = ResumeToken::from_wire("abcdef");
    assert_eq!(a, ResumeToken::from_wire("abcdef"));
    assert_ne!(a, ResumeToken::from_wire("abcdeg"));
    assert_ne!(a, ResumeToken::from_wire("bbcdef"));
    assert_ne!(a, ResumeToken::from_wire("abcdefg"));
    assert_ne!(a, ResumeToken::from_wire(""));
}

/// [SE-5] Credentials travel in `hello` and in no other frame.
#[test]
fn se_5_credentials_travel_only_in_hello() {
    let mut client = Client::welcomed(ClientConfig::default().token("bearer-secret"), json!({}));
    client.receive(ready("s1"));
    client.send(json!("m"));
    client.receive(json!({"type": "ping"}));
    let frames = client.transmits();
    assert!(!frames.is_empty());
    assert!(
        frames
            .iter()
            .all(|f| !f.to_string().contains("bearer-secret"))
    );
}
