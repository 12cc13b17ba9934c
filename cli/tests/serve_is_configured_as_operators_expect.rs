//! `readyws serve` as an operator runs it: every flag also settable from the environment, logs as
//! JSON lines for a collector, and the publish API and metrics on an internal listener of their
//! own.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Running, http, next_frame, open_socket};

fn readyws() -> Command {
    Command::new(env!("CARGO_BIN_EXE_readyws"))
}

/// Every option of `serve` (but `--help`) names its environment variable in `--help`.
#[test]
fn every_serve_flag_names_its_environment_variable() {
    let output = readyws()
        .args(["serve", "--help"])
        .output()
        .expect("the binary runs");
    let help = String::from_utf8_lossy(&output.stdout);
    let mut options = 0;
    let mut block = String::new();
    let mut missing = Vec::new();
    let mut check = |block: &str| {
        let flag = block
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        if flag.starts_with("--") && flag != "--help" {
            options += 1;
            if !block.contains("[env: READYWS_") {
                missing.push(flag);
            }
        }
    };
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") || trimmed.starts_with("-h,") {
            check(&block);
            block.clear();
        }
        block.push_str(trimmed);
        block.push('\n');
    }
    check(&block);
    assert!(options >= 35, "{options} options in {help}");
    assert!(
        missing.is_empty(),
        "no environment variable for {missing:?}"
    );
}

/// Starts `readyws serve` with `args` and `env`, and returns it with the first `count` addresses
/// it logs (`address=` in text, `"address":` in JSON).
fn serve(args: &[&str], env: &[(&str, &str)], count: usize) -> (Running, Vec<String>, Vec<String>) {
    let mut child = readyws()
        .args(["serve", "--listen", "127.0.0.1:0", "--insecure-dev-auth"])
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addresses = Vec::new();
    let mut seen = Vec::new();
    while addresses.len() < count {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the server reported {addresses:?}; it logged {seen:?}"));
        let address = line
            .split("address=")
            .nth(1)
            .or_else(|| line.split("\"address\":\"").nth(1))
            .map(|rest| {
                rest.split(|c: char| c.is_whitespace() || c == '"')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            });
        seen.push(line);
        if let Some(address) = address {
            addresses.push(address);
        }
    }
    (Running(child), addresses, seen)
}

#[tokio::test]
async fn environment_variables_set_the_flags() {
    let (_server, addresses, _) = serve(
        &[],
        &[
            ("READYWS_HEARTBEAT_MS", "1234"),
            ("READYWS_MAX_INFLIGHT", "7"),
        ],
        1,
    );
    let mut socket = open_socket(&addresses[0]).await;
    let welcome = next_frame(&mut socket).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["heartbeat_ms"], 1234, "{welcome}");
    assert_eq!(welcome["max_inflight"], 7, "{welcome}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (_server, addresses, lines) = serve(&["--log-format", "json"], &[], 1);
    assert!(!addresses[0].is_empty());
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["fields"].is_object(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|line| line.contains("readyws server listening")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_admin_listener_keeps_publish_and_metrics_off_the_public_port() {
    let (_server, addresses, _) = serve(
        &["--admin-listen", "127.0.0.1:0", "--api-key", "secret"],
        &[],
        2,
    );
    let (public, admin) = (&addresses[0], &addresses[1]);
    let get = |path: &str, address: &str| {
        format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n")
    };
    assert_eq!(
        http(public, get("/metrics", public).as_bytes()).await.0,
        404
    );
    assert_eq!(
        http(public, get("/healthz", public).as_bytes()).await.0,
        200
    );
    let (status, metrics) = http(admin, get("/metrics", admin).as_bytes()).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("readyws_connections_opened_total"),
        "{metrics}"
    );
    let body = r#"{"user":"alice","data":{"n":1}}"#;
    let post = |address: &str| {
        format!(
            "POST /api/publish HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer secret\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    assert_eq!(http(public, post(public).as_bytes()).await.0, 404);
    let (status, answer) = http(admin, post(admin).as_bytes()).await;
    assert_eq!(status, 202, "held for alice, who has no session: {answer}");
    // Clients connect on the public port only.
    let mut socket = open_socket(public).await;
    assert_eq!(
        next_frame(&mut socket).await.expect("welcome")["type"],
        "welcome"
    );
    assert_eq!(http(admin, get("/ws", admin).as_bytes()).await.0, 404);
}
