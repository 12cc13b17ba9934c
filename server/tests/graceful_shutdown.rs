//! Shutdown: every connection gets `goaway` 4000 with a `retry_after_ms` spread over the window.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use readyws_server::ServerOptions;
use support::{Raw, TestServer};

/// [GA-1] [GA-3] Clients are told to come back at different times within the spread.
#[tokio::test]
async fn shutdown_spreads_the_reconnects() {
    let options =
        ServerOptions::default().shutdown(Duration::from_secs(10), Duration::from_secs(2));
    let server = TestServer::start(options).await;
    let mut clients = Vec::new();
    for n in 0..8 {
        clients.push(
            Raw::handshake(&server.url(), &format!("user{n}"), None)
                .await
                .0,
        );
    }
    server.handle.shutdown();
    let mut delays = BTreeSet::new();
    for client in &mut clients {
        let goaway = client.recv_type("goaway").await;
        assert_eq!(goaway["code"], 4000);
        let delay = goaway["retry_after_ms"].as_u64().expect("retry_after_ms");
        assert!(delay < 10_000);
        delays.insert(delay);
        assert_eq!(client.closed().await, Some(4000));
    }
    assert!(delays.len() >= 6, "spread, not lock-step: {delays:?}");
    let (status, _) = server.http("GET", "/readyz", &[], "").await;
    assert_eq!(status, 503);
    server.stop().await;
}
