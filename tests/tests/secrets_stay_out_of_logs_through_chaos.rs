//! Through a chaos run with every log line recorded (trace level, every crate), no resume token
//! appears in the logs. Resume tokens are 32 lowercase hex digits and nothing else the server or
//! client logs has that shape (session ids are `s-` and 24 hex digits), so any such run in the
//! logs is a leaked token.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use readyws_tests::chaos::{ChaosConfig, run};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs of 32 or more lowercase hex digits: the shape of a resume token.
fn token_shaped(logs: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut run = String::new();
    for c in logs.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || ('a'..='f').contains(&c) {
            run.push(c);
        } else {
            if run.len() >= 32 {
                found.push(run.clone());
            }
            run.clear();
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_resume_token_reaches_a_log_line_during_chaos() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let report = run(&ChaosConfig {
        clients: 5,
        messages: 200,
        seed: 7,
        rate: 200,
        deadline: Duration::from_secs(60),
        restarts: 0,
        instances: 0,
        kills: 0,
        redis_cluster: false,
        instance_program: None,
    })
    .await;
    assert!(report.clean(), "{report:?}");
    assert!(report.reconnects > 0, "resumes happened: {report:?}");
    let logs = String::from_utf8_lossy(&captured.0.lock().expect("logs")).into_owned();
    assert!(
        logs.contains("resumed=true"),
        "the logs cover resumes ({} bytes captured)",
        logs.len()
    );
    let leaks = token_shaped(&logs);
    assert!(leaks.is_empty(), "token-shaped text in the logs: {leaks:?}");
}
