//! `readyws connect URL`: a readyws client for terminals and scripts.
//!
//! Each line of stdin is sent as one message (a line that is valid JSON as that value, any other
//! line as a JSON string); while the client's outbox is full, stdin is not read (a line is never
//! discarded). Each received message's data is printed on stdout as one compact JSON
//! line, and nothing else goes to stdout, so scripts can rely on it; the connection state and
//! errors go to stderr. At the end of input it waits until every message sent is acknowledged,
//! or reports the ones that were not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use readyws::{Client, ConnectionState, Data, Outcome, Overflow, SessionReset};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// `readyws connect --help`.
#[derive(clap::Args, Debug)]
pub(crate) struct ConnectArgs {
    /// The server's WebSocket endpoint, for example ws://127.0.0.1:8080/ws.
    url: String,
    /// Credentials sent in `hello`.
    #[arg(long, env = "READYWS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Exit after receiving this many messages (after the input's messages are settled).
    #[arg(long, value_name = "N")]
    exit_after: Option<u64>,
    /// How long to wait at the end for acknowledgements of what was sent.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    drain_ms: u64,
}

/// Turns one input line into message data: JSON as itself, anything else as a JSON string.
pub(crate) fn line_to_data(line: &str) -> Data {
    Data::from_json(line).unwrap_or_else(|_| {
        let quoted = serde_json::to_string(line).unwrap_or_else(|_| "\"\"".to_owned());
        Data::from_json(quoted).expect("a serialized string is JSON")
    })
}

/// One compact JSON line for received data (its text may span lines as the sender wrote it).
fn compact(data: &Data) -> String {
    serde_json::from_str::<serde_json::Value>(data.as_json())
        .map(|value| value.to_string())
        .unwrap_or_else(|_| data.as_json().replace('\n', " "))
}

/// Runs the client; `Ok(true)` when every message sent was acknowledged.
pub(crate) async fn run(args: ConnectArgs) -> Result<bool, String> {
    // A full outbox makes `send` wait, and so the reading of stdin: backpressure, never a line
    // discarded.
    let mut builder = Client::builder(args.url.clone()).overflow(Overflow::Wait);
    if let Some(token) = &args.token {
        builder = builder.token(token.clone());
    }
    let client = Arc::new(builder.connect().map_err(|error| error.to_string())?);
    report_state(&client);

    let received = Arc::new(AtomicU64::new(0));
    let (enough, mut enough_rx) = mpsc::channel::<()>(1);
    {
        let (mut messages, received) = (client.messages(), Arc::clone(&received));
        let exit_after = args.exit_after;
        tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some(data) = messages.next().await {
                let line = compact(&data) + "\n";
                if stdout.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                let _ = stdout.flush().await;
                let count = received.fetch_add(1, Ordering::SeqCst) + 1;
                if exit_after.is_some_and(|limit| count >= limit) {
                    let _ = enough.send(()).await;
                    break;
                }
            }
        });
    }

    // Send every input line; each delivery is awaited on its own task so input never waits.
    let (settled, mut settled_rx) = mpsc::unbounded_channel::<(u64, Outcome)>();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut sent = 0u64;
    let mut input_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if input_open => match line {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => {
                    sent += 1;
                    let number = sent;
                    match client.send(line_to_data(&line)).await {
                        Ok(delivery) => {
                            let settled = settled.clone();
                            tokio::spawn(async move {
                                let _ = settled.send((number, delivery.await));
                            });
                        }
                        Err(error) => {
                            eprintln!("readyws: line {number} was not sent: {error}");
                            let _ = settled.send((number, Outcome::Refused {
                                code: "not_accepted".to_owned(),
                                reason: error.to_string(),
                            }));
                        }
                    }
                }
                Ok(None) => input_open = false,
                Err(error) => {
                    eprintln!("readyws: reading stdin: {error}");
                    input_open = false;
                }
            },
            _ = enough_rx.recv() => break,
            // Without input to read and no message count to wait for, the input's end is the end.
            () = std::future::ready(()), if !input_open && args.exit_after.is_none() => break,
        }
    }

    // Collect the outcomes of everything sent.
    drop(settled);
    let mut failed = 0u64;
    let mut outcomes = 0u64;
    let drain = tokio::time::sleep(Duration::from_millis(args.drain_ms));
    tokio::pin!(drain);
    while outcomes < sent {
        tokio::select! {
            outcome = settled_rx.recv() => match outcome {
                Some((_, Outcome::Acked)) => outcomes += 1,
                Some((number, other)) => {
                    outcomes += 1;
                    failed += 1;
                    eprintln!("readyws: line {number} was not acknowledged: {other:?}");
                }
                None => break,
            },
            () = &mut drain => {
                eprintln!(
                    "readyws: {} of {sent} messages still unacknowledged after {} ms",
                    sent - outcomes,
                    args.drain_ms
                );
                failed += sent - outcomes;
                break;
            }
        }
    }
    client.close(Duration::from_secs(1)).await;
    Ok(failed == 0)
}

/// What a session reset means for the user of `readyws connect`.
fn describe_reset(reset: &SessionReset) -> String {
    let resent = match reset.resent {
        0 => "no message had to be sent again".to_owned(),
        1 => "1 message sent but not acknowledged was sent again: it may be delivered twice"
            .to_owned(),
        n => format!(
            "{n} messages sent but not acknowledged were sent again: each may be delivered twice"
        ),
    };
    format!(
        "readyws: session reset: the server lost session {}; {resent}; messages it sent in that session and this client had not received are not coming",
        reset.previous_session_id
    )
}

/// Reports connection changes on stderr.
fn report_state(client: &Arc<Client>) {
    let mut states = client.watch_state();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let state = states.borrow_and_update().clone();
            match state {
                ConnectionState::Connecting { attempt } => {
                    eprintln!("readyws: connecting (attempt {attempt})");
                }
                ConnectionState::Ready {
                    session_id,
                    resumed,
                    reset,
                } => {
                    eprintln!(
                        "readyws: ready, session {session_id}{}",
                        if resumed { " (resumed)" } else { "" }
                    );
                    if let Some(reset) = reset {
                        eprintln!("{}", describe_reset(&reset));
                    }
                }
                ConnectionState::Reconnecting {
                    attempt,
                    delay,
                    reason,
                } => eprintln!(
                    "readyws: {reason}; reconnecting in {} ms (attempt {attempt})",
                    delay.as_millis()
                ),
                ConnectionState::AwaitingCredentials { code } => {
                    eprintln!("readyws: the server wants fresh credentials (close code {code})");
                }
                ConnectionState::Closed { reason } => {
                    eprintln!("readyws: closed: {reason}");
                    break;
                }
                _ => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_sent_as_values_and_other_lines_as_strings() {
        assert_eq!(line_to_data(r#"{"a": 1}"#).as_json(), r#"{"a": 1}"#);
        assert_eq!(line_to_data("42").as_json(), "42");
        assert_eq!(line_to_data("hello there").as_json(), r#""hello there""#);
        assert_eq!(line_to_data(r#"say "hi""#).as_json(), r#""say \"hi\"""#);
    }

    #[test]
    fn received_data_prints_as_one_line() {
        let data = Data::from_json("{\n  \"a\": [1,\n 2]\n}").unwrap();
        assert_eq!(compact(&data), r#"{"a":[1,2]}"#);
    }
}
