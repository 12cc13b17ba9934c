//! A terminal chat against `readyws serve`: each line you type is sent, every message for your
//! user is printed. Start a server that echoes, then run this in two terminals:
//!
//! ```sh
//! cargo run -p readyws-cli -- serve --insecure-dev-auth --echo
//! cargo run -p readyws --example chat -- ws://127.0.0.1:8080/ws alice
//! ```
//!
//! Stop the server while typing, start it again: nothing you typed is lost.

use std::time::Duration;

use futures_util::StreamExt;
use readyws::{Client, ConnectionState, Data, Outcome};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".to_owned());
    let user = args.next().unwrap_or_else(|| "alice".to_owned());
    let client = match Client::builder(url).token(user.clone()).connect() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };

    let mut messages = client.messages();
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            println!("<< {}", message.as_json());
        }
    });
    let mut states = client.watch_state();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            match &*states.borrow_and_update() {
                ConnectionState::Ready {
                    session_id,
                    resumed,
                    ..
                } => {
                    eprintln!("-- ready (session {session_id}, resumed: {resumed})")
                }
                ConnectionState::Reconnecting { delay, reason, .. } => {
                    eprintln!("-- {reason}; retrying in {delay:?}")
                }
                ConnectionState::Closed { reason } => eprintln!("-- closed: {reason}"),
                _ => {}
            }
        }
    });

    eprintln!("-- type messages for {user}; ctrl-d to quit");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let data = Data::serialize(&serde_json::json!({"from": user, "text": line}))
            .expect("a JSON object");
        match client.send(data).await {
            Ok(delivery) => {
                tokio::spawn(async move {
                    if let outcome @ (Outcome::Refused { .. } | Outcome::Expired) = delivery.await {
                        eprintln!("-- not delivered: {outcome:?}");
                    }
                });
            }
            Err(error) => eprintln!("-- not sent: {error}"),
        }
    }
    let report = client.close(Duration::from_secs(5)).await;
    eprintln!(
        "-- bye ({} messages could not be confirmed)",
        report.unsettled.len()
    );
}
