//! Held messages, resume and custody, against the real server with raw WebSocket frames.

mod support;

use std::time::{Duration, Instant};

use readyws_protocol::ServerConfig;
use readyws_server::{MailboxLimits, OverflowPolicy, PublishError, ServerOptions, UserId};
use serde_json::{Value, json};
use support::{Raw, TestServer};

fn options(resume_window: Duration) -> ServerOptions {
    ServerOptions::default().protocol(
        ServerConfig::default()
            .heartbeat(Duration::from_secs(30))
            .resume_window(resume_window),
    )
}

fn datas(msgs: &[Value]) -> Vec<Value> {
    msgs.iter().map(|m| m["data"].clone()).collect()
}

fn resume_of(ready: &Value, last_received: u64) -> Value {
    json!({"session_id": ready["session_id"], "resume_token": ready["resume_token"], "last_received": last_received})
}

/// [CU-1] [CU-3] Messages published while the user has no connection arrive on connect, in order,
/// counted in `backlog`, and leave the mailbox when acknowledged.
#[tokio::test]
async fn held_messages_arrive_on_connect_in_order() {
    let server = TestServer::start(options(Duration::from_secs(60))).await;
    for n in 1..=3 {
        assert!(server.publish("alice", json!(n)).await.held);
    }
    let (mut raw, ready) = Raw::handshake(&server.url(), "alice", None).await;
    assert_eq!(ready["backlog"], 3);
    let msgs = raw.recv_msgs(3).await;
    assert_eq!(datas(&msgs), vec![json!(1), json!(2), json!(3)]);
    assert_eq!(server.depth("alice").await, 3, "held until acknowledged");
    raw.send(json!({"type": "ack", "id": 3})).await;
    server.wait_for_depth("alice", 0).await;
    server.stop().await;
}

/// [DL-4] A duplicate client message is acknowledged again and handed to the handler once.
#[tokio::test]
async fn duplicates_reach_the_handler_once() {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let handler = move |_: &readyws_server::ServerHandle, _: readyws_server::Inbound<'_>| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        readyws_server::Decision::Accept
    };
    let server = TestServer::start_with(
        options(Duration::from_secs(60)),
        readyws_server::InsecureDevAuth,
        handler,
    )
    .await;
    let (mut raw, _) = Raw::handshake(&server.url(), "alice", None).await;
    raw.send(json!({"type": "msg", "id": 1, "data": "a"})).await;
    assert_eq!(raw.recv_type("ack").await["id"], 1);
    raw.send(json!({"type": "msg", "id": 1, "data": "a"})).await;
    assert_eq!(raw.recv_type("ack").await["id"], 1);
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    server.stop().await;
}

/// [DL-6] A refusal by the handler reaches the client as a `nack` with its code and reason.
#[tokio::test]
async fn the_handler_can_refuse_a_message() {
    let handler = |_: &readyws_server::ServerHandle, message: readyws_server::Inbound<'_>| {
        if message.data.as_json().contains("deny") {
            readyws_server::Decision::Refuse {
                code: "forbidden".into(),
                reason: "denied by policy".into(),
            }
        } else {
            readyws_server::Decision::Accept
        }
    };
    let server = TestServer::start_with(
        options(Duration::from_secs(60)),
        readyws_server::InsecureDevAuth,
        handler,
    )
    .await;
    let (mut raw, _) = Raw::handshake(&server.url(), "alice", None).await;
    raw.send(json!({"type": "msg", "id": 1, "data": "ok"}))
        .await;
    raw.send(json!({"type": "msg", "id": 2, "data": "deny"}))
        .await;
    assert_eq!(raw.recv_type("ack").await["id"], 1);
    let nack = raw.recv_type("nack").await;
    assert_eq!(nack["id"], 2);
    assert_eq!(nack["code"], "forbidden");
    assert_eq!(nack["reason"], "denied by policy");
    server.stop().await;
}

/// [RS-1] [RS-3] [DL-9] Resume within the window: the same session, and the server resends what
/// the client had not received, including what was published while it was away.
#[tokio::test]
async fn resume_within_the_window_resends_after_last_received() {
    let server = TestServer::start(options(Duration::from_secs(60))).await;
    let (mut raw, ready) = Raw::handshake(&server.url(), "alice", None).await;
    server.publish("alice", json!("one")).await;
    server.publish("alice", json!("two")).await;
    let msgs = raw.recv_msgs(2).await;
    assert_eq!(datas(&msgs), vec![json!("one"), json!("two")]);
    raw.send(json!({"type": "msg", "id": 1, "data": "from client"}))
        .await;
    raw.recv_type("ack").await;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = server.publish("alice", json!("three")).await;
    assert_eq!(report.delivered, 0, "no live session while away");
    let (mut raw, again) = Raw::handshake(&server.url(), "alice", Some(resume_of(&ready, 1))).await;
    assert_eq!(again["resumed"], true);
    assert_eq!(again["session_id"], ready["session_id"]);
    assert_eq!(
        again["last_received"], 1,
        "the server had the client's message 1"
    );
    let msgs = raw.recv_msgs(2).await;
    assert_eq!(msgs[0]["id"], 2);
    assert_eq!(datas(&msgs), vec![json!("two"), json!("three")]);
    server.stop().await;
}

/// [CU-3] A connection cut right after `connection_ready` of a session that had held messages,
/// then a fresh connect without resume: every held message arrives, in order, at once — not after
/// the lost session's resume window.
#[tokio::test]
async fn a_lost_connection_ready_does_not_strand_held_messages() {
    let server = TestServer::start(options(Duration::from_secs(120))).await;
    for n in 1..=3 {
        server.publish("alice", json!(n)).await;
    }
    let mut raw = Raw::connect(&server.url()).await;
    raw.recv().await;
    raw.send(json!({"type": "hello", "token": "alice"})).await;
    // The server registered a session and sent connection_ready with the held messages behind it;
    // the connection is cut at that moment, so the client never learns the session.
    assert_eq!(raw.recv().await["backlog"], 3);
    drop(raw);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (mut raw, ready) = Raw::handshake(&server.url(), "alice", None).await;
    assert_eq!(ready["resumed"], false);
    assert_eq!(ready["backlog"], 3);
    let msgs = raw.recv_msgs(3).await;
    assert_eq!(datas(&msgs), vec![json!(1), json!(2), json!(3)]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "at once: {:?}",
        started.elapsed()
    );
    server.stop().await;
}

/// [RS-5] [CU-2] After the resume window: `resumed: false`, and the held messages still arrive.
#[tokio::test]
async fn resume_after_the_window_starts_fresh_and_keeps_held_messages() {
    let server = TestServer::start(options(Duration::from_millis(300))).await;
    server.publish("alice", json!("a")).await;
    server.publish("alice", json!("b")).await;
    let (mut raw, ready) = Raw::handshake(&server.url(), "alice", None).await;
    raw.recv_msgs(2).await;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (mut raw, again) = Raw::handshake(&server.url(), "alice", Some(resume_of(&ready, 2))).await;
    assert_eq!(again["resumed"], false);
    assert_ne!(again["session_id"], ready["session_id"]);
    assert_eq!(again["backlog"], 2);
    assert_eq!(datas(&raw.recv_msgs(2).await), vec![json!("a"), json!("b")]);
    server.stop().await;
}

/// [CU-5] Overflow under `RejectNew` refuses the publish (HTTP 429 with a JSON error); under
/// `DropOldest` it drops the oldest and says so.
#[tokio::test]
async fn mailbox_overflow_follows_its_policy() {
    let limits = MailboxLimits {
        max_messages: 2,
        ..MailboxLimits::default()
    };
    let options = options(Duration::from_secs(60))
        .mailbox(limits)
        .api_key(Some("k".into()));
    let server = TestServer::start(options).await;
    server.publish("alice", json!(1)).await;
    server.publish("alice", json!(2)).await;
    let refused = server
        .handle
        .publish(
            &UserId::new("alice"),
            readyws_protocol::Data::from_json("3").expect("json"),
        )
        .await;
    assert!(matches!(
        refused,
        Err(PublishError::MailboxFull { messages: 2, .. })
    ));
    let (status, body) = server
        .http(
            "POST",
            "/api/publish",
            &[("Authorization", "Bearer k")],
            r#"{"user":"alice","data":3}"#,
        )
        .await;
    assert_eq!(status, 429);
    assert!(body.contains(r#""error":"mailbox_full""#), "{body}");
    server.stop().await;

    let limits = MailboxLimits {
        max_messages: 2,
        overflow: OverflowPolicy::DropOldest,
        ..MailboxLimits::default()
    };
    let server = TestServer::start(options_with(limits)).await;
    server.publish("bob", json!(1)).await;
    server.publish("bob", json!(2)).await;
    let report = server.publish("bob", json!(3)).await;
    assert_eq!(report.dropped_oldest, 1);
    let (mut raw, ready) = Raw::handshake(&server.url(), "bob", None).await;
    assert_eq!(ready["backlog"], 2);
    assert_eq!(datas(&raw.recv_msgs(2).await), vec![json!(2), json!(3)]);
    let (_, metrics) = server.http("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("readyws_mailbox_dropped_total{reason=\"overflow\"}"),
        "{metrics}"
    );
    server.stop().await;
}

/// [CU-1] Publishes to one user under way at once are admitted in the order they were made,
/// within the mailbox's bound: a burst larger than the mailbox keeps its first messages, refuses
/// the rest, and the user's connection gets the kept ones in that order.
#[tokio::test]
async fn a_burst_of_publishes_at_once_is_held_in_the_order_it_was_made() {
    let limits = MailboxLimits {
        max_messages: 100,
        ..MailboxLimits::default()
    };
    let server = TestServer::start(options_with(limits)).await;
    let (mut raw, _) = Raw::handshake(&server.url(), "carol", None).await;
    let user = UserId::new("carol");
    let publishes = (1..=150).map(|n| {
        let data = readyws_protocol::Data::from_json(n.to_string()).expect("json");
        server.handle.publish(&user, data)
    });
    let results = futures_util::future::join_all(publishes).await;
    let refused_from = results
        .iter()
        .position(Result::is_err)
        .expect("a burst past the bound is partly refused");
    assert!(
        results[refused_from..]
            .iter()
            .all(|result| matches!(result, Err(PublishError::MailboxFull { .. }))),
        "after the first refusal every later publish is refused as full"
    );
    assert_eq!(
        refused_from, 100,
        "nothing is acknowledged, so the bound holds exactly"
    );
    let msgs = raw.recv_msgs(refused_from).await;
    let expected: Vec<Value> = (1..=refused_from as u64).map(|n| json!(n)).collect();
    assert_eq!(datas(&msgs), expected);
    server.stop().await;
}

fn options_with(limits: MailboxLimits) -> ServerOptions {
    options(Duration::from_secs(60)).mailbox(limits)
}

/// [CU-5] A held message that no session took within its time-to-live expires, and is counted.
#[tokio::test]
async fn held_messages_expire_after_their_ttl() {
    let limits = MailboxLimits {
        ttl: Duration::from_millis(200),
        ..MailboxLimits::default()
    };
    let server = TestServer::start(options_with(limits)).await;
    server.publish("carol", json!("stale")).await;
    server.wait_for_depth("carol", 0).await;
    let (mut raw, ready) = Raw::handshake(&server.url(), "carol", None).await;
    assert_eq!(ready["backlog"], 0);
    assert!(raw.quiet_for(Duration::from_millis(200)).await);
    let (_, metrics) = server.http("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("readyws_mailbox_dropped_total{reason=\"expired\"}"),
        "{metrics}"
    );
    server.stop().await;
}

/// [CU-4] Every ready session of a user gets a live message; one ack ends custody.
#[tokio::test]
async fn every_session_of_a_user_gets_the_message() {
    let server = TestServer::start(options(Duration::from_secs(60))).await;
    let (mut tab1, _) = Raw::handshake(&server.url(), "dave", None).await;
    let (mut tab2, _) = Raw::handshake(&server.url(), "dave", None).await;
    let report = server.publish("dave", json!("hello both")).await;
    assert_eq!((report.delivered, report.held), (2, false));
    assert_eq!(tab1.recv_type("msg").await["data"], "hello both");
    assert_eq!(tab2.recv_type("msg").await["data"], "hello both");
    tab1.send(json!({"type": "ack", "id": 1})).await;
    server.wait_for_depth("dave", 0).await;
    server.stop().await;
}

/// [SE-3] Another user cannot resume a session, even with its id and secret; a wrong secret
/// cannot resume it either.
#[tokio::test]
async fn sessions_resume_only_for_their_user_with_their_secret() {
    let server = TestServer::start(options(Duration::from_secs(60))).await;
    let (alice, ready) = Raw::handshake(&server.url(), "alice", None).await;
    drop(alice);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, stolen) = Raw::handshake(&server.url(), "mallory", Some(resume_of(&ready, 0))).await;
    assert_eq!(stolen["resumed"], false);
    assert_ne!(stolen["session_id"], ready["session_id"]);
    let mut wrong = resume_of(&ready, 0);
    wrong["resume_token"] = json!("00".repeat(16));
    let (_, guessed) = Raw::handshake(&server.url(), "alice", Some(wrong)).await;
    assert_eq!(guessed["resumed"], false);
    let (_, real) = Raw::handshake(&server.url(), "alice", Some(resume_of(&ready, 0))).await;
    assert_eq!(real["resumed"], true, "the session survived both attempts");
    server.stop().await;
}

/// [RS-7] Resuming a session still held by an older connection takes it over; the older one is
/// told with 4203.
#[tokio::test]
async fn resume_takes_over_a_session_from_its_old_connection() {
    let server = TestServer::start(options(Duration::from_secs(60))).await;
    let (mut old, ready) = Raw::handshake(&server.url(), "erin", None).await;
    let (_new, again) = Raw::handshake(&server.url(), "erin", Some(resume_of(&ready, 0))).await;
    assert_eq!(again["resumed"], true);
    assert_eq!(old.recv_type("goaway").await["code"], 4203);
    server.stop().await;
}

/// [FR-6] An oversized client message is refused with `nack` `too_large`; the connection stays.
#[tokio::test]
async fn an_oversized_frame_is_refused_not_fatal() {
    let options = ServerOptions::default().protocol(
        ServerConfig::default()
            .heartbeat(Duration::from_secs(30))
            .max_frame_bytes(4096),
    );
    let server = TestServer::start(options).await;
    let (mut raw, _) = Raw::handshake(&server.url(), "frank", None).await;
    let big = format!(r#"{{"type":"msg","id":1,"data":"{}"}}"#, "x".repeat(6000));
    raw.send_text(big).await;
    let nack = raw.recv_type("nack").await;
    assert_eq!(
        (nack["id"].clone(), nack["code"].clone()),
        (json!(1), json!("too_large"))
    );
    raw.send(json!({"type": "msg", "id": 2, "data": "small"}))
        .await;
    assert_eq!(raw.recv_type("ack").await["id"], 2);
    server.stop().await;
}

/// [CU-5] [CU-2] The time-to-live runs only while no session holds a copy: a message held by a
/// session kept for resume does not expire under it, and expires once that session is gone.
#[tokio::test]
async fn the_ttl_waits_for_the_sessions_that_hold_a_copy() {
    let limits = MailboxLimits {
        ttl: Duration::from_millis(200),
        ..MailboxLimits::default()
    };
    let server = TestServer::start(options(Duration::from_millis(1000)).mailbox(limits)).await;
    let (mut raw, _) = Raw::handshake(&server.url(), "gina", None).await;
    server.publish("gina", json!("unacked")).await;
    raw.recv_type("msg").await;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.depth("gina").await,
        1,
        "the kept session still holds it"
    );
    server.wait_for_depth("gina", 0).await;
    server.stop().await;
}

/// [CU-5] A message `drop-oldest` drops is taken back from the sessions that had not transmitted
/// it: a session kept for resume, and one that is live but cannot transmit (its window is full),
/// come back with the newest messages only, in order.
#[tokio::test]
async fn messages_dropped_to_make_room_are_withdrawn_from_every_session_that_had_not_sent_them() {
    let options = options(Duration::from_secs(60))
        .protocol(
            ServerConfig::default()
                .heartbeat(Duration::from_secs(30))
                .resume_window(Duration::from_secs(60))
                .max_inflight(2),
        )
        .mailbox(MailboxLimits {
            max_messages: 5,
            max_bytes: 1 << 20,
            ttl: Duration::from_secs(600),
            overflow: OverflowPolicy::DropOldest,
        });
    let server = TestServer::start(options).await;
    // A live session whose window of 2 fills with messages 1 and 2, never acknowledged.
    let (mut live, _) = Raw::handshake(&server.url(), "dora", None).await;
    // A session kept for resume.
    let (kept, kept_ready) = Raw::handshake(&server.url(), "dora", None).await;
    drop(kept);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 1..=2 {
        server.publish("dora", json!(n)).await;
    }
    let first = live.recv_msgs(2).await;
    assert_eq!(
        datas(&first),
        vec![json!(1), json!(2)],
        "transmitted before the drops"
    );
    for n in 3..=12 {
        server.publish("dora", json!(n)).await;
    }
    assert_eq!(server.depth("dora").await, 5, "the newest five are held");
    // Acknowledging them opens the window: what follows are the newest five, not 3 to 7.
    live.send(json!({"type": "ack", "id": 2})).await;
    let next = live.recv_msgs(2).await;
    assert_eq!(datas(&next), vec![json!(8), json!(9)]);
    // The kept session resumes with the newest five only.
    let (mut resumed, ready) =
        Raw::handshake(&server.url(), "dora", Some(resume_of(&kept_ready, 0))).await;
    assert_eq!(ready["resumed"], true, "{ready}");
    let held = resumed.recv_msgs(2).await;
    assert_eq!(
        datas(&held),
        vec![json!(8), json!(9)],
        "oldest first, dropped ones gone"
    );
    server.stop().await;
}
