//! Measures the time from socket open to `connection_ready` on loopback, over 1,000 sequential
//! handshakes against the reference server in this process.
//!
//! `cargo run --release -p readyws-server --example handshake_latency [-- COUNT]`

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use readyws_server::{AcceptAll, InsecureDevAuth, Server, ServerOptions};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("address"));
    let server = Server::new(ServerOptions::default(), InsecureDevAuth, AcceptAll);
    tokio::spawn(server.serve(listener, std::future::pending()));

    let mut samples = Vec::with_capacity(count);
    for n in 0..count {
        let mut request = url.as_str().into_client_request().expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "readyws.v1".parse().expect("header"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        // The socket is open: the clock starts here.
        let opened = Instant::now();
        let _welcome = ws.next().await.expect("welcome").expect("frame");
        let hello = format!(r#"{{"type":"hello","token":"user{n}"}}"#);
        ws.send(Message::Text(hello.into())).await.expect("send");
        loop {
            match ws.next().await.expect("open").expect("frame") {
                Message::Text(text) if text.as_str().contains("connection_ready") => break,
                _ => {}
            }
        }
        samples.push(opened.elapsed());
        let _ = ws.close(None).await;
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "socket open -> connection_ready over {count} handshakes on loopback: median {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
        micros(at(0.5)),
        micros(at(0.9)),
        micros(at(0.99)),
        micros(at(1.0))
    );
}
