//! Two figures for the readyws client next to raw tokio-tungstenite, measured in the same run on
//! loopback:
//! - time from creating a client to being able to send (readyws: `connection_ready`; raw: the
//!   WebSocket open), median of 200;
//! - throughput of 1 KiB messages each confirmed by the server (readyws: `ack`s from the reference
//!   server; raw: a server that answers every message with a short text frame).
//!
//! `cargo run --release -p readyws --example versus_raw [-- URL]` — with a URL (such as a
//! `readyws serve --insecure-dev-auth` on `ws://127.0.0.1:8080/ws`) the readyws figures and the raw
//! open times are taken against that server; without one, against a server in this process.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use readyws::{Client, Data, OutboxLimits, Outcome};
use readyws_server::{AcceptAll, InsecureDevAuth, Server, ServerOptions};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ROUNDS: usize = 200;
const MESSAGES: usize = 20_000;

#[tokio::main]
async fn main() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let readyws_url = format!("ws://{}/ws", listener.local_addr().expect("address"));
    let server = Server::new(ServerOptions::default(), InsecureDevAuth, AcceptAll);
    tokio::spawn(server.serve(listener, std::future::pending()));
    let raw_url = raw_ack_server().await;

    let mut readyws_ready = Vec::new();
    for n in 0..ROUNDS {
        let started = Instant::now();
        let client = Client::builder(readyws_url.clone())
            .token(format!("u{n}"))
            .connect();
        client.ready().await.expect("ready");
        readyws_ready.push(started.elapsed());
        client.close(Duration::from_secs(1)).await;
    }
    let mut raw_open = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut request = readyws_url.as_str().into_client_request().expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "readyws.v1".parse().expect("header"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        raw_open.push(started.elapsed());
        let _ = ws.close(None).await;
    }
    println!(
        "create -> ready, median of {ROUNDS}: readyws client {:.0} us, raw tokio-tungstenite WebSocket open to the same server {:.0} us (ratio {:.2})",
        micros(median(&mut readyws_ready)),
        micros(median(&mut raw_open)),
        median(&mut readyws_ready).as_secs_f64() / median(&mut raw_open).as_secs_f64()
    );

    let payload = Data::from_json(format!("\"{}\"", "x".repeat(1022))).expect("json");
    let client = Client::builder(readyws_url)
        .token("bench")
        .queue(OutboxLimits {
            max_messages: MESSAGES + 1,
            max_bytes: 64 << 20,
            max_message_bytes: 4096,
        })
        .connect();
    client.ready().await.expect("ready");
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        deliveries.push(client.send(payload.clone()).await.expect("room"));
    }
    for delivery in deliveries {
        assert_eq!(delivery.await, Outcome::Acked);
    }
    let readyws_rate = MESSAGES as f64 / started.elapsed().as_secs_f64();

    let (mut ws, _) = tokio_tungstenite::connect_async(raw_url.as_str())
        .await
        .expect("connect");
    let text = "x".repeat(1024);
    let started = Instant::now();
    let (mut write, mut read) = ws.split();
    let sender = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            write
                .send(Message::Text(text.clone().into()))
                .await
                .expect("send");
        }
        write
    });
    let mut confirmed = 0;
    while confirmed < MESSAGES {
        if let Some(Ok(Message::Text(_))) = read.next().await {
            confirmed += 1;
        }
    }
    let raw_rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    ws = sender
        .await
        .expect("sender")
        .reunite(read)
        .expect("same socket");
    let _ = ws.close(None).await;
    println!(
        "confirmed 1 KiB messages per second, {MESSAGES} messages: readyws {readyws_rate:.0}, raw tokio-tungstenite {raw_rate:.0} (ratio {:.2})",
        readyws_rate / raw_rate
    );
}

/// A plain WebSocket server that answers every text frame with `"ok"`.
async fn raw_ack_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(Message::Text("ok".into())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
