//! Floods and limits: a publisher flooding a user who is away meets the mailbox bound and is
//! told; a thousand sockets that never say `hello` are closed at the hello timeout while the
//! server keeps serving; a sender faster than the server is held by the flow-control window;
//! a message whose frame fits the limit exactly goes through, one byte more is refused.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use readyws::{Client, Data, OutboxLimits, Outcome, Overflow};
use readyws_protocol::codec::encode;
use readyws_protocol::frame::Msg;
use readyws_protocol::{Frame, ServerConfig};
use readyws_server::{
    AcceptAll, Decision, Echo, Inbound, MailboxLimits, OverflowPolicy, PublishError, ServerHandle,
    ServerOptions, UserId,
};
use readyws_tests::harness::RunningServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn numbered(n: u64) -> Data {
    Data::from_json(format!(r#"{{"n":{n}}}"#)).expect("JSON")
}

fn mailbox(max_messages: usize, overflow: OverflowPolicy) -> ServerOptions {
    ServerOptions::default().mailbox(MailboxLimits {
        max_messages,
        max_bytes: 1 << 20,
        ttl: Duration::from_secs(600),
        overflow,
    })
}

async fn receive(client: &Client, count: usize) -> Vec<String> {
    let mut messages = client.messages();
    let mut received = Vec::new();
    while received.len() < count {
        let data = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("messages in time")
            .expect("the stream is open");
        received.push(data.as_json().to_owned());
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_to_a_user_who_is_away_meets_the_mailbox_bound_and_the_publisher_is_told() {
    let server = RunningServer::start(mailbox(100, OverflowPolicy::RejectNew), AcceptAll).await;
    let user = UserId::new("away");
    let mut refused = 0;
    for n in 0..150 {
        match server.handle.publish(&user, numbered(n)).await {
            Ok(report) => assert!(report.held, "nobody is connected"),
            Err(PublishError::MailboxFull { messages, .. }) => {
                assert_eq!(messages, 100);
                refused += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    let depth = server.handle.mailbox_depth(&user).await;
    assert_eq!((refused, depth), (50, Ok(100)));
    let client = Client::builder(server.ws_url())
        .token("away")
        .connect()
        .expect("a valid client configuration");
    let received = receive(&client, 100).await;
    let expected: Vec<String> = (0..100).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    assert_eq!(received, expected, "the first hundred, in order");
    client.close(Duration::from_secs(1)).await;
    server.stop().await;

    // With DropOldest the newest hundred are kept, and the drops are counted in the reports.
    let server = RunningServer::start(mailbox(100, OverflowPolicy::DropOldest), AcceptAll).await;
    let mut dropped = 0;
    for n in 0..150 {
        let report = server.handle.publish(&user, numbered(n)).await;
        dropped += report.expect("accepted").dropped_oldest;
    }
    assert_eq!(dropped, 50);
    let client = Client::builder(server.ws_url())
        .token("away")
        .connect()
        .expect("a valid client configuration");
    let received = receive(&client, 100).await;
    let expected: Vec<String> = (50..150).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    assert_eq!(received, expected, "the newest hundred, in order");
    client.close(Duration::from_secs(1)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_sockets_are_closed_at_the_hello_timeout_and_the_server_keeps_serving() {
    let options = ServerOptions::default()
        .protocol(ServerConfig::default().hello_timeout(Duration::from_secs(2)));
    let server = RunningServer::start(options, Echo).await;
    let mut silent = Vec::new();
    for _ in 0..1000 {
        let mut request = server.ws_url().into_client_request().expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "readyws.v1".parse().expect("header"),
        );
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the server accepts the socket");
        silent.push(socket);
    }
    let opened = Instant::now();
    // While they sit there, a real client still gets its round trip promptly.
    let client = Client::builder(server.ws_url())
        .token("busy")
        .connect()
        .expect("a valid client configuration");
    let delivery = client.send(numbered(7)).await.expect("accepted");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), delivery)
            .await
            .expect("acknowledged within 2 s"),
        Outcome::Acked
    );
    assert_eq!(receive(&client, 1).await, vec![r#"{"n":7}"#.to_owned()]);
    // Each silent socket gets `welcome`, then `goaway` 4001 and a close.
    let mut closed_with_4001 = 0;
    for socket in &mut silent {
        let mut saw_goaway = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    saw_goaway |= text.contains(r#""type":"goaway""#) && text.contains("4001");
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    if saw_goaway && frame.is_some_and(|f| u16::from(f.code) == 4001) {
                        closed_with_4001 += 1;
                    }
                    break;
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
    }
    assert_eq!(closed_with_4001, 1000);
    assert!(
        opened.elapsed() < Duration::from_secs(12),
        "closed at the hello timeout, not later: {:?}",
        opened.elapsed()
    );
    client.close(Duration::from_secs(1)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_faster_than_the_server_is_held_by_the_window_and_its_queue() {
    const WINDOW: u64 = 8;
    const QUEUE: usize = 50;
    let options = ServerOptions::default().protocol(ServerConfig::default().max_inflight(WINDOW));
    // A server that takes a millisecond over each message: far slower than the client.
    let slow = |_: &ServerHandle, _: Inbound<'_>| {
        std::thread::sleep(Duration::from_millis(1));
        Decision::Accept
    };
    let server = RunningServer::start(options, slow).await;
    let client = std::sync::Arc::new(
        Client::builder(server.ws_url())
            .token("fast")
            .queue(OutboxLimits {
                max_messages: QUEUE,
                ..OutboxLimits::default()
            })
            .overflow(Overflow::Wait)
            .connect()
            .expect("a valid client configuration"),
    );
    let watcher = {
        let client = std::sync::Arc::clone(&client);
        tokio::spawn(async move {
            let (mut most_in_flight, mut most_queued) = (0, 0);
            for _ in 0..2_000 {
                let stats = client.stats();
                most_in_flight = most_in_flight.max(stats.in_flight);
                most_queued = most_queued.max(stats.queued);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (most_in_flight, most_queued)
        })
    };
    let mut deliveries = Vec::new();
    for n in 0..600 {
        deliveries.push(
            client
                .send(numbered(n))
                .await
                .expect("waits for room, then accepts"),
        );
    }
    for delivery in deliveries {
        assert_eq!(delivery.await, Outcome::Acked);
    }
    let (most_in_flight, most_queued) = watcher.await.expect("watched");
    assert!(
        most_in_flight <= WINDOW as usize,
        "at most {WINDOW} in flight, saw {most_in_flight}"
    );
    assert!(
        most_queued <= QUEUE,
        "at most {QUEUE} held, saw {most_queued}"
    );
    assert!(most_in_flight > 0, "the window was used");
    client.close(Duration::from_secs(1)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_fits_the_limit_exactly_goes_through_and_one_byte_more_is_refused() {
    const LIMIT: usize = 4096;
    let options = ServerOptions::default().protocol(ServerConfig::default().max_frame_bytes(LIMIT));
    let server = RunningServer::start(options, AcceptAll).await;
    let client = Client::builder(server.ws_url())
        .token("sizes")
        .connect()
        .expect("a valid client configuration");
    // The text of `"xxx…"` whose `msg` frame with `id` is exactly `frame_bytes` long.
    let sized = |id: u64, frame_bytes: usize| {
        let empty = encode(&Frame::Msg(Msg {
            id,
            data: Data::from_json(r#""""#).expect("JSON"),
        }));
        let text = "x".repeat(frame_bytes - empty.len());
        Data::from_json(format!(r#""{text}""#)).expect("JSON")
    };
    let fits = client.send(sized(1, LIMIT)).await.expect("accepted");
    assert_eq!(fits.await, Outcome::Acked);
    let over = client.send(sized(2, LIMIT + 1)).await.expect("accepted");
    match over.await {
        Outcome::Refused { code, .. } => assert_eq!(code, "too_large"),
        other => panic!("expected a too_large refusal, got {other:?}"),
    }
    client.close(Duration::from_secs(1)).await;
    server.stop().await;
}
