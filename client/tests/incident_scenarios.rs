//! The incident's scenarios, against the reference server in-process on 127.0.0.1.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use readyws::{
    ConnectionState, DisconnectReason, OutboxLimits, Outcome, Overflow, SendErrorReason,
};
use readyws_protocol::ServerConfig;
use readyws_server::{AcceptAll, Echo, ServerOptions};
use serde_json::json;
use support::{Proxy, Recorder, TestServer, eventually, fast};

fn quick_options() -> ServerOptions {
    ServerOptions::default().protocol(
        ServerConfig::default()
            .heartbeat(Duration::from_secs(30))
            .resume_window(Duration::from_secs(30)),
    )
}

#[tokio::test]
async fn a_message_sent_before_any_connection_exists_is_delivered() {
    let recorder = Recorder::default();
    let server = TestServer::start(quick_options(), recorder.handler()).await;
    let client = fast(server.url(), "alice")
        .connect()
        .expect("a valid client configuration");
    let delivery = client
        .send(support::json(json!({"n": 1})))
        .await
        .expect("accepted");
    assert_eq!(delivery.await, Outcome::Acked);
    assert_eq!(recorder.values(), vec![json!({"n": 1})]);
    assert_eq!(client.stats().connection_attempts, 1);
    server.stop();
}

/// However the client's task ends — here its runtime is dropped under it — a message it held
/// resolves as `Closed` and a new one is refused with the message handed back, never left
/// waiting forever.
#[test]
fn a_client_whose_runtime_is_gone_reports_instead_of_hanging() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Nothing listens here: the message stays held.
    let address = runtime.block_on(async {
        let nothing = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        nothing.local_addr().expect("address")
    });
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (client, held) = client_runtime.block_on(async {
        let client = fast(format!("ws://{address}/ws"), "alice")
            .connect()
            .expect("a valid client configuration");
        let held = client
            .send(support::json(json!("held")))
            .await
            .expect("accepted");
        (client, held)
    });
    drop(client_runtime);
    runtime.block_on(async {
        let outcome = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("the held message resolves");
        assert_eq!(outcome, Outcome::Closed);
        let refused = client
            .send(support::json(json!("late")))
            .await
            .expect_err("refused");
        assert_eq!(refused.reason, SendErrorReason::Closed);
        assert_eq!(refused.into_data().as_json(), r#""late""#);
    });
}

#[tokio::test]
async fn a_connection_established_after_a_send_was_attempted_delivers_it() {
    // A front whose server does not exist yet: every attempt fails until it does.
    let nothing = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let front = Proxy::start(nothing.local_addr().expect("address")).await;
    drop(nothing);
    let client = fast(front.url(), "alice")
        .connect()
        .expect("a valid client configuration");
    let delivery = client
        .send(support::json(json!("early")))
        .await
        .expect("accepted");
    eventually("a failed attempt", || client.stats().reconnects >= 1).await;
    assert!(matches!(
        client.state(),
        ConnectionState::Reconnecting { .. } | ConnectionState::Connecting { .. }
    ));
    let recorder = Recorder::default();
    let server = TestServer::start(quick_options(), recorder.handler()).await;
    front.set_upstream(server.addr);
    assert_eq!(delivery.await, Outcome::Acked);
    assert_eq!(recorder.values(), vec![json!("early")]);
    server.stop();
}

#[tokio::test]
async fn a_cold_start_delivers_messages_sent_meanwhile_once_and_in_order() {
    let recorder = Recorder::default();
    let server =
        TestServer::start(quick_options().wait_for_startup(true), recorder.handler()).await;
    let handle = server.handle.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        handle.mark_started();
    });
    let client = fast(server.url(), "alice")
        .connect()
        .expect("a valid client configuration");
    let mut deliveries = Vec::new();
    for n in 0..5 {
        deliveries.push(
            client
                .send(support::json(json!(n)))
                .await
                .expect("accepted"),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recorder.values().is_empty(),
        "nothing is processed before start-up completes"
    );
    for delivery in deliveries {
        assert_eq!(delivery.await, Outcome::Acked);
    }
    assert_eq!(
        recorder.values(),
        (0..5).map(|n| json!(n)).collect::<Vec<_>>()
    );
    assert_eq!(client.stats().readies, 1);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_each_receive_exactly_their_own_replies() {
    let server = TestServer::start(quick_options(), Echo).await;
    let mut tasks = Vec::new();
    for user in 0..100 {
        let url = server.url();
        tasks.push(tokio::spawn(async move {
            let client = fast(url, &format!("user{user}"))
                .connect()
                .expect("a valid client configuration");
            let mut replies = client.messages();
            for n in 0..5 {
                // The replies prove delivery; the delivery handles are not needed.
                drop(
                    client
                        .send(support::json(json!({"user": user, "n": n})))
                        .await
                        .expect("accepted"),
                );
            }
            let mut got = Vec::new();
            while got.len() < 5 {
                let reply = tokio::time::timeout(Duration::from_secs(20), replies.next())
                    .await
                    .expect("replies in time")
                    .expect("stream open");
                got.push(reply.deserialize::<serde_json::Value>().expect("json"));
            }
            let expected: Vec<_> = (0..5).map(|n| json!({"user": user, "n": n})).collect();
            assert_eq!(
                got, expected,
                "user {user} got exactly its own replies, in order"
            );
            client.close(Duration::from_secs(1)).await;
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    server.stop();
}

#[tokio::test]
async fn messages_published_while_disconnected_arrive_after_reconnect_in_order() {
    let server = TestServer::start(quick_options(), AcceptAll).await;
    let proxy = Proxy::start(server.addr).await;
    let client = fast(proxy.url(), "alice")
        .connect()
        .expect("a valid client configuration");
    let mut messages = client.messages();
    client.ready().await.expect("ready");
    server.publish("alice", json!("before")).await;
    assert_eq!(
        messages.next().await.expect("message").as_json(),
        r#""before""#
    );
    proxy.cut();
    eventually("the client noticed", || {
        !matches!(client.state(), ConnectionState::Ready { .. })
    })
    .await;
    for n in 1..=3 {
        server.publish("alice", json!(n)).await;
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("in time")
            .expect("open");
        got.push(message.as_json().to_owned());
    }
    assert_eq!(got, vec!["1", "2", "3"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), messages.next())
            .await
            .is_err(),
        "no duplicates"
    );
    assert!(matches!(
        client.state(),
        ConnectionState::Ready { resumed: true, .. }
    ));
    server.stop();
}

#[tokio::test]
async fn a_server_that_never_becomes_ready_is_retried_with_growing_delays() {
    let recorder = Recorder::default();
    let options = quick_options()
        .wait_for_startup(true)
        .startup_max_wait(Duration::from_millis(100), Duration::from_millis(50));
    let server = TestServer::start(options, recorder.handler()).await;
    let client = readyws::Client::builder(server.url())
        .token("alice")
        .backoff(Duration::from_millis(50), Duration::from_millis(1600))
        .connect()
        .expect("a valid client configuration");
    let _pending = client
        .send(support::json(json!("held")))
        .await
        .expect("accepted");
    let mut state = client.watch_state();
    let mut delays = Vec::new();
    while delays.len() < 4 {
        state.changed().await.expect("client alive");
        let current = state.borrow_and_update().clone();
        if let ConnectionState::Reconnecting {
            delay,
            reason,
            attempt,
        } = current
        {
            assert!(
                matches!(reason, DisconnectReason::Goaway { code: 4002, .. }),
                "{reason:?}"
            );
            assert!(attempt as usize > delays.len());
            delays.push(delay);
        }
    }
    assert!(delays[3] > delays[0], "delays grow: {delays:?}");
    assert!(
        recorder.values().is_empty(),
        "no application message was sent"
    );
    assert_eq!(client.stats().queued, 1);
    assert!(
        client.stats().connection_attempts >= 4,
        "{:?}",
        client.stats()
    );
    server.stop();
}

#[tokio::test]
async fn a_server_restart_that_loses_the_session_resends_unacked_messages() {
    let first = Recorder::default();
    let server = TestServer::start(quick_options(), first.handler()).await;
    let proxy = Proxy::start(server.addr).await;
    let client = fast(proxy.url(), "alice")
        .connect()
        .expect("a valid client configuration");
    client.ready().await.expect("ready");
    let ConnectionState::Ready {
        session_id: before, ..
    } = client.state()
    else {
        unreachable!()
    };
    proxy.swallow_client_bytes(true);
    let mut deliveries = Vec::new();
    for n in 0..3 {
        deliveries.push(
            client
                .send(support::json(json!(n)))
                .await
                .expect("accepted"),
        );
    }
    eventually("transmitted", || client.stats().in_flight == 3).await;
    // The server restarts: a new process, no memory of the session.
    server.stop();
    let second = Recorder::default();
    let restarted = TestServer::start(quick_options(), second.handler()).await;
    proxy.swallow_client_bytes(false);
    proxy.set_upstream(restarted.addr);
    proxy.cut();
    for delivery in deliveries {
        assert_eq!(delivery.await, Outcome::Acked);
    }
    assert_eq!(second.values(), vec![json!(0), json!(1), json!(2)]);
    assert!(first.values().is_empty());
    let ConnectionState::Ready {
        session_id: after,
        resumed,
        reset,
    } = client.state()
    else {
        unreachable!()
    };
    assert!(!resumed, "the reset is surfaced");
    assert_ne!(before, after);
    let reset = reset.expect("the state says what the reset meant");
    assert_eq!(reset.previous_session_id, before);
    assert_eq!(
        reset.resent, 3,
        "the three transmitted messages were sent again"
    );
    assert_eq!(client.stats().session_resets, 1);
    restarted.stop();
}

#[tokio::test]
async fn queue_overflow_fails_at_once_or_waits_for_room() {
    let nowhere = "ws://127.0.0.1:9/ws".to_owned();
    let limits = OutboxLimits {
        max_messages: 2,
        ..OutboxLimits::default()
    };
    let client = fast(nowhere, "alice")
        .queue(limits)
        .connect()
        .expect("a valid client configuration");
    let _a = client.send(support::json(json!(1))).await.expect("room");
    let _b = client.send(support::json(json!(2))).await.expect("room");
    let refused = client
        .send(support::json(json!(3)))
        .await
        .expect_err("full");
    assert!(matches!(
        refused.reason,
        SendErrorReason::QueueFullCount { limit: 2 }
    ));
    assert_eq!(refused.into_data().as_json(), "3", "the message comes back");

    let server = TestServer::start(quick_options(), AcceptAll).await;
    let limits = OutboxLimits {
        max_messages: 1,
        ..OutboxLimits::default()
    };
    let client = fast(server.url(), "alice")
        .queue(limits)
        .overflow(Overflow::Wait)
        .connect()
        .expect("a valid client configuration");
    let first = client.send(support::json(json!(1))).await.expect("room");
    let second = client
        .send(support::json(json!(2)))
        .await
        .expect("waited for room");
    assert_eq!(first.await, Outcome::Acked);
    assert_eq!(second.await, Outcome::Acked);
    server.stop();
}

#[tokio::test]
async fn an_expired_time_to_live_is_reported() {
    let client = fast("ws://127.0.0.1:9/ws".to_owned(), "alice")
        .connect()
        .expect("a valid client configuration");
    let delivery = client
        .send_with_ttl(
            support::json(json!("late")),
            Some(Duration::from_millis(100)),
        )
        .await
        .expect("accepted");
    assert_eq!(delivery.await, Outcome::Expired);
    assert_eq!(client.stats().expired, 1);
}

#[tokio::test]
async fn a_refused_message_is_reported_and_later_ones_still_go_through() {
    let handler = |_: &readyws_server::ServerHandle, message: readyws_server::Inbound<'_>| {
        if message.data.as_json().contains("deny") {
            readyws_server::Decision::Refuse {
                code: "forbidden".into(),
                reason: "not today".into(),
            }
        } else {
            readyws_server::Decision::Accept
        }
    };
    let server = TestServer::start(quick_options(), handler).await;
    let client = fast(server.url(), "alice")
        .connect()
        .expect("a valid client configuration");
    let refused = client
        .send(support::json(json!("deny")))
        .await
        .expect("accepted");
    let later = client
        .send(support::json(json!("ok")))
        .await
        .expect("accepted");
    assert_eq!(
        refused.await,
        Outcome::Refused {
            code: "forbidden".into(),
            reason: "not today".into()
        }
    );
    assert_eq!(later.await, Outcome::Acked);
    server.stop();
}

#[tokio::test]
async fn close_reports_the_messages_still_in_flight() {
    let server = TestServer::start(quick_options(), AcceptAll).await;
    let proxy = Proxy::start(server.addr).await;
    let client = fast(proxy.url(), "alice")
        .connect()
        .expect("a valid client configuration");
    client.ready().await.expect("ready");
    proxy.swallow_client_bytes(true);
    let a = client
        .send(support::json(json!("a")))
        .await
        .expect("accepted");
    let b = client
        .send(support::json(json!("b")))
        .await
        .expect("accepted");
    let ids: BTreeSet<_> = [a.id(), b.id()].into_iter().collect();
    let report = client.close(Duration::from_millis(300)).await;
    assert_eq!(report.unsettled.into_iter().collect::<BTreeSet<_>>(), ids);
    assert_eq!(a.await, Outcome::Closed);
    assert_eq!(b.await, Outcome::Closed);
    assert!(matches!(client.state(), ConnectionState::Closed { .. }));
    server.stop();
}
