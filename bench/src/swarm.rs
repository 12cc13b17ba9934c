//! `readyws-bench swarm --kind readyws|raw --url URL --count N`: N sessions from one process, in
//! a process of its own so that its memory per session is not blurred by earlier runs. It opens
//! them all at once, prints one JSON line (time until all were ready, resident memory before and
//! after), then obeys standard input: `storm` (readyws: watch a server restart, print its JSON
//! line) and end of input.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use readyws::{Client, ConnectionState, Data, Outcome};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{RawFrame, raise_open_file_limit, raw_msg, resident_bytes};

/// What the opening of the sessions measured.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Opened {
    pub(crate) ready_ms: f64,
    pub(crate) failed: usize,
    pub(crate) rss_before: u64,
    pub(crate) rss_after: u64,
}

/// What the restart of the server measured.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Storm {
    /// Connection attempts in each [`STORM_BUCKET_MS`] after the restart began.
    pub(crate) attempts: Vec<u64>,
    /// Until every session was ready again, in milliseconds.
    pub(crate) all_ready_ms: Option<f64>,
    /// Sessions that were ready again when the watch ended.
    pub(crate) ready_again: usize,
    pub(crate) sent: usize,
    pub(crate) acked: usize,
    /// Messages that ended otherwise, with the outcome.
    pub(crate) not_acked: Vec<String>,
}

/// The width of the storm histogram's buckets.
pub(crate) const STORM_BUCKET_MS: u64 = 100;

/// How long the storm is watched at most.
const STORM_WATCH: Duration = Duration::from_secs(60);

pub(crate) async fn run(kind: &str, url: &str, count: usize) -> Result<(), String> {
    raise_open_file_limit(count as u64 + 256)?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    match kind {
        "raw" => {
            let rss_before = resident_bytes("self");
            let started = Instant::now();
            // Held open until the end of input.
            let opened = join_all((0..count).map(|_| raw_session(url))).await;
            let ready_ms = started.elapsed().as_secs_f64() * 1e3;
            let failed = opened.iter().filter(|socket| socket.is_none()).count();
            report(&Opened {
                ready_ms,
                failed,
                rss_before,
                rss_after: resident_bytes("self"),
            });
            while let Ok(Some(_)) = lines.next_line().await {}
            drop(opened);
        }
        "readyws" => {
            let rss_before = resident_bytes("self");
            let started = Instant::now();
            let clients: Vec<Client> = (0..count)
                .map(|n| {
                    Client::builder(url)
                        .token(format!("swarm-{n}"))
                        .connect()
                        .expect("a valid client configuration")
                })
                .collect();
            let within = Duration::from_secs(120);
            let ready = join_all(
                clients
                    .iter()
                    .map(|client| tokio::time::timeout(within, client.ready())),
            )
            .await;
            let ready_ms = started.elapsed().as_secs_f64() * 1e3;
            let failed = ready.iter().filter(|r| !matches!(r, Ok(Ok(())))).count();
            report(&Opened {
                ready_ms,
                failed,
                rss_before,
                rss_after: resident_bytes("self"),
            });
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "storm" {
                    report(&storm(&clients).await);
                }
            }
        }
        other => return Err(format!("unknown swarm kind `{other}` (readyws or raw)")),
    }
    Ok(())
}

fn report(figures: &impl Serialize) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(figures).expect("figures serialize")
    );
    let _ = out.flush();
}

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One raw session: open, and one round trip.
async fn raw_session(url: &str) -> Option<RawSocket> {
    let (mut socket, _) = tokio::time::timeout(
        Duration::from_secs(120),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()?;
    socket
        .send(Message::Text(raw_msg(1, "{}").into()))
        .await
        .ok()?;
    match socket.next().await {
        Some(Ok(Message::Text(text)))
            if serde_json::from_str::<RawFrame<'_>>(text.as_str())
                .is_ok_and(|f| f.kind == "ack") =>
        {
            Some(socket)
        }
        _ => None,
    }
}

/// Watches every client through a server restart that the parent starts right after `storm`:
/// counts connection attempts over time, waits until every client is ready on the new server, and
/// checks that two messages from each client, one sent at once and one a second later (while
/// many are away), all end acknowledged.
async fn storm(clients: &[Client]) -> Storm {
    let started = Instant::now();
    let readies_before: Vec<u64> = clients.iter().map(|c| c.stats().readies).collect();
    let attempts_before: u64 = clients.iter().map(|c| c.stats().connection_attempts).sum();
    let mut deliveries = Vec::with_capacity(clients.len() * 2);
    for (n, client) in clients.iter().enumerate() {
        let data = Data::from_json(format!(r#"{{"storm":{n},"part":1}}"#)).expect("JSON");
        deliveries.push(client.send(data).await);
    }
    let mut attempts = Vec::new();
    let mut previous = attempts_before;
    let mut all_ready_ms = None;
    let mut second_sent = false;
    let mut ready_again = 0;
    while started.elapsed() < STORM_WATCH {
        tokio::time::sleep(Duration::from_millis(STORM_BUCKET_MS)).await;
        let total: u64 = clients.iter().map(|c| c.stats().connection_attempts).sum();
        attempts.push(total - previous);
        previous = total;
        if !second_sent && started.elapsed() >= Duration::from_secs(1) {
            second_sent = true;
            for (n, client) in clients.iter().enumerate() {
                let data = Data::from_json(format!(r#"{{"storm":{n},"part":2}}"#)).expect("JSON");
                deliveries.push(client.send(data).await);
            }
        }
        ready_again = clients
            .iter()
            .zip(&readies_before)
            .filter(|(client, before)| {
                client.stats().readies > **before
                    && matches!(client.state(), ConnectionState::Ready { .. })
            })
            .count();
        if ready_again == clients.len() && second_sent {
            all_ready_ms = Some(started.elapsed().as_secs_f64() * 1e3);
            break;
        }
    }
    // Trailing empty buckets say nothing.
    while attempts.last() == Some(&0) {
        attempts.pop();
    }
    let sent = deliveries.len();
    let outcomes = join_all(deliveries.into_iter().map(|delivery| async move {
        match delivery {
            Ok(delivery) => match tokio::time::timeout(Duration::from_secs(30), delivery).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Closed,
            },
            Err(_) => Outcome::Closed,
        }
    }))
    .await;
    let acked = outcomes.iter().filter(|o| **o == Outcome::Acked).count();
    let not_acked = outcomes
        .iter()
        .filter(|o| **o != Outcome::Acked)
        .take(10)
        .map(|o| format!("{o:?}"))
        .collect();
    Storm {
        attempts,
        all_ready_ms,
        ready_again,
        sent,
        acked,
        not_acked,
    }
}
