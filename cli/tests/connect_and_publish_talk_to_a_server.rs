//! `readyws connect` and `readyws publish` against `readyws serve`, as a script uses them:
//! stdout carries only received data, one JSON line each, and exit codes tell success.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn readyws(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_readyws"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the readyws binary runs");
    // Written from another thread: a child that writes much to stderr while its input is still
    // coming would otherwise block on a full pipe while this thread blocks on its stdin.
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = child.wait_with_output().expect("it ends");
    writer.join().expect("the input was written");
    output
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn connect_sends_lines_and_prints_the_echoes_as_json_lines() {
    let (_server, address) = support::serve(&["--echo"]);
    let url = format!("ws://{address}/ws");
    let output = readyws(
        &["connect", &url, "--token", "alice", "--exit-after", "2"],
        "hello there\n{\"a\": [1, 2]}\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout_lines(&output),
        vec![r#""hello there""#.to_owned(), r#"{"a":[1,2]}"#.to_owned()]
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("ready"));
}

#[test]
fn a_message_published_while_the_user_is_away_reaches_their_next_connect() {
    let (_server, address) = support::serve(&["--api-key", "test-key"]);
    let published = readyws(
        &[
            "publish",
            &format!("http://{address}"),
            "--user",
            "bob",
            "--api-key",
            "test-key",
            r#"{"x": 1}"#,
        ],
        "",
    );
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&published.stdout).expect("the server's JSON answer");
    assert_eq!(report["held"], true, "bob has no connection: {report}");

    let output = readyws(
        &[
            "connect",
            &format!("ws://{address}/ws"),
            "--token",
            "bob",
            "--exit-after",
            "1",
        ],
        "",
    );
    assert!(output.status.success());
    assert_eq!(stdout_lines(&output), vec![r#"{"x":1}"#.to_owned()]);

    let refused = readyws(
        &[
            "publish",
            &format!("http://{address}"),
            "--user",
            "bob",
            "--api-key",
            "wrong",
            "1",
        ],
        "",
    );
    assert!(!refused.status.success(), "a wrong key is refused");
    assert!(refused.stdout.is_empty());
}

/// A server that restarts loses the session: `readyws connect` says so on stderr, with what it
/// means for the messages, instead of only `ready`.
#[test]
fn connect_reports_a_session_reset_and_what_it_means() {
    use std::io::{BufRead, BufReader};
    let (server, address) = support::serve(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_readyws"))
        .args(["connect", &format!("ws://{address}/ws"), "--token", "carol"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the readyws binary runs");
    let (lines, seen) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let wait_for = |needle: &str| -> String {
        loop {
            let line = seen
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no line with {needle:?} in time"));
            if line.contains(needle) {
                return line;
            }
        }
    };
    wait_for("ready, session");
    drop(server);
    let (_restarted, _) = support::serve_on(&address, &[]);
    let reset = wait_for("session reset");
    assert!(reset.contains("lost session s-"), "{reset}");
    assert!(reset.contains("sent again"), "{reset}");
    drop(child.stdin.take());
    let status = child.wait().expect("it ends");
    assert!(status.success());
}

/// Input faster than the server: `readyws connect` stops reading stdin while its outbox is full
/// (backpressure), and sends every line; none is discarded.
#[test]
fn connect_sends_every_line_of_a_large_input_waiting_for_room() {
    let (_server, address) = support::serve(&["--max-inflight", "4"]);
    let input: String = (0..20_000).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let output = readyws(
        &["connect", &format!("ws://{address}/ws"), "--token", "dana"],
        &input,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("was not sent"), "{stderr}");
    assert!(output.status.success(), "{stderr}");
}
