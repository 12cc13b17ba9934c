//! An application that stops reading its message stream does not grow the client's memory: the
//! client stops reading the socket, the server's window fills, and the server keeps the rest in
//! the user's mailbox until the application reads again; then every message arrives, in order.
//! The client handle is a cheap clone, shared between tasks.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use readyws::Client;
use readyws_server::ServerOptions;
use serde_json::json;
use support::TestServer;

const MESSAGES: u64 = 400;
const BUFFER: usize = 4;
const WINDOW: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_leaves_the_messages_with_the_server() {
    let options = ServerOptions::default()
        .protocol(readyws_protocol::ServerConfig::default().max_inflight(WINDOW));
    let server = TestServer::start(options, readyws_server::AcceptAll).await;
    let client = Client::builder(server.url())
        .token("reader")
        .message_buffer(BUFFER)
        .connect()
        .expect("a valid client configuration");
    client.ready().await.expect("ready");
    for n in 1..=MESSAGES {
        server.publish("reader", json!({ "n": n })).await;
    }
    // Nobody reads: the client takes what its buffer, the frames of one read and the server's
    // window allow, and the server holds the rest.
    let user = "reader".into();
    let mut held = 0;
    for _ in 0..200 {
        held = server.handle.mailbox_depth(&user).await.expect("depth");
        let received = client.stats().received;
        if held > 0 && received > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received = client.stats().received;
    assert!(
        received <= BUFFER as u64 + 256 + WINDOW,
        "the client took {received} messages while nobody read"
    );
    assert!(
        received < MESSAGES,
        "the client took every message while nobody read"
    );
    assert!(
        held > 0,
        "the server holds the messages the client did not take"
    );

    // A clone reads them all, once each and in order.
    let reader = client.clone();
    let mut messages = reader.messages();
    for n in 1..=MESSAGES {
        let message = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .unwrap_or_else(|_| panic!("message {n} did not arrive"))
            .expect("the stream is open");
        let value: serde_json::Value = serde_json::from_str(message.as_json()).expect("json");
        assert_eq!(value["n"], n, "in order");
    }
    assert_eq!(client.stats().received, MESSAGES);
    client.close(Duration::from_secs(1)).await;
    server.stop();
}
