//! `readyws serve` against clients that try to make it hold sockets, memory or time: every wait a
//! peer controls has a deadline, every buffer a bound, and what a peer controls never forges a
//! log line. Each test runs the real binary as a child process and measures it from outside (its
//! RSS from `/proc`, its `/metrics`, its log), with margins wide enough for a loaded 2-core
//! machine.

mod support;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use support::{
    http, metrics, next_frame, next_of_type, open_socket, publish, ready_socket, sample, say_hello,
    serve_logging, serve_with,
};

const MIB: u64 = 1 << 20;

/// Waits until the server has closed `stream` (a read returns end of file or an error), at most
/// `within`; whether it did.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (a 408, say) may come before the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// Polls `/metrics` until `ok` holds for it, at most `within`.
async fn metrics_until(address: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + within;
    loop {
        let text = metrics(address).await;
        if ok(&text) || Instant::now() >= until {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_slow_heads_and_idle_keep_alives_are_closed_at_the_request_deadline() {
    let (_server, address) = serve_with("", &[], &["--request-head-timeout-ms", "1000"]);
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(&address).await.expect("connect"));
    }
    // Heads trickled one byte at a time, never finished.
    let mut trickling = Vec::new();
    for _ in 0..20 {
        trickling.push(TcpStream::connect(&address).await.expect("connect"));
    }
    let head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ";
    // One byte every 100 ms for 4 s: four times the deadline, never the whole head.
    let trickle = tokio::spawn(async move {
        for byte in head.iter().cycle().take(40) {
            for stream in &mut trickling {
                let _ = stream.write_all(&[*byte]).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        trickling
    });
    // Kept-alive connections that made one request, then went quiet.
    let mut kept_alive = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("request");
        let mut buffer = [0u8; 512];
        let read = stream.read(&mut buffer).await.expect("answer");
        assert!(String::from_utf8_lossy(&buffer[..read]).contains("200 OK"));
        kept_alive.push(stream);
    }
    for stream in silent.iter_mut().chain(kept_alive.iter_mut()) {
        assert!(
            closed_by_server(stream, Duration::from_secs(15)).await,
            "a socket outlived the 1 s request deadline by 15 s"
        );
    }
    let mut trickling = trickle.await.expect("the trickle ran");
    for stream in &mut trickling {
        assert!(
            closed_by_server(stream, Duration::from_millis(500)).await,
            "a head trickled for four times the deadline is still open"
        );
    }
    let figures = metrics(&address).await;
    assert!(
        sample(&figures, r#"readyws_deadlines_total{stage="request_head"}"#) >= 120.0,
        "every one was closed by the deadline:\n{figures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_file_descriptors_keeps_serving_a_real_client_through_idle_sockets() {
    // A long request deadline: the real client must get in by the eviction of idle sockets, not
    // by waiting for them to time out.
    let (_server, address) = serve_with(
        "ulimit -n 256 &&",
        &[],
        &["--request-head-timeout-ms", "120000"],
    );
    let mut idle = Vec::new();
    for _ in 0..250 {
        idle.push(TcpStream::connect(&address).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut socket, ready) =
        tokio::time::timeout(Duration::from_secs(30), ready_socket(&address, "real"))
            .await
            .expect("a real client becomes ready while 250 idle sockets are open");
    assert_eq!(ready["type"], "connection_ready");
    socket
        .send(Message::text(r#"{"type":"msg","id":1,"data":"hi"}"#))
        .await
        .expect("sent");
    // The metrics request is one more socket on a server at its descriptor limit: if it is the
    // one turned away, it is asked again.
    let evicted = r#"readyws_connections_evicted_total{reason="descriptors"}"#;
    let figures = metrics_until(&address, Duration::from_secs(10), |text| {
        sample(text, evicted) >= 1.0
    })
    .await;
    assert!(
        sample(&figures, evicted) >= 1.0,
        "room was made by closing idle sockets:\n{figures}"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_connection_bound_the_server_closes_unfinished_connections_first_and_then_refuses() {
    let (_server, address) = serve_with(
        "",
        &[],
        &[
            "--max-connections",
            "20",
            "--request-head-timeout-ms",
            "120000",
        ],
    );
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(&address).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Twenty real clients take the place of the twenty idle sockets.
    let mut sockets = Vec::new();
    for n in 0..19 {
        sockets.push(ready_socket(&address, &format!("user-{n}")).await.0);
    }
    let figures = metrics(&address).await;
    assert!(
        sample(
            &figures,
            r#"readyws_connections_evicted_total{reason="limit"}"#
        ) >= 19.0,
        "{figures}"
    );
    // The twentieth is this metrics request's slot; once every slot is a WebSocket, a new
    // connection is refused with 503 and the JSON error body.
    sockets.push(ready_socket(&address, "user-19").await.0);
    let (status, body) = http(
        &address,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("server_full"), "{body}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_api_checks_the_key_before_reading_any_body_and_reads_no_more_than_the_limit() {
    let (server, address) = serve_with("", &[], &["--api-key", "secret"]);
    let before = server.rss_bytes();
    // Fifty unauthenticated publishes announcing 2 MB bodies: each is answered from its head.
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        let head = "POST /api/publish HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\ncontent-type: application/json\r\ncontent-length: 2097152\r\n\r\n";
        stream.write_all(head.as_bytes()).await.expect("head");
        let _ = stream.write_all(&vec![b' '; 256 * 1024]).await;
        streams.push(stream);
    }
    for stream in &mut streams {
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("answered without the body")
            .expect("read");
        let answer = String::from_utf8_lossy(&buffer[..read]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(
        grown < 40 * MIB,
        "50 unauthenticated 2 MB bodies grew the server by {} MiB",
        grown / MIB
    );
    eprintln!(
        "50 unauthenticated publishes announcing 2 MB bodies: answered from the head, +{:.1} MiB",
        grown as f64 / MIB as f64
    );
    // With the key, a body over the limit (the mailbox's bytes plus the envelope) is refused
    // from its declared length, and a chunked one once it passes the limit.
    let (status, body) = http(
        &address,
        b"POST /api/publish HTTP/1.1\r\nhost: x\r\nauthorization: Bearer secret\r\ncontent-length: 2097152\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let mut chunked = b"POST /api/publish HTTP/1.1\r\nhost: x\r\nauthorization: Bearer secret\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend_from_slice(&vec![b' '; 64 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    let (status, body) = http(&address, &chunked).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = publish(&address, "secret", "alice", r#"{"fits":true}"#).await;
    assert_eq!(status, 202, "{body}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_one_user_share_the_held_messages_instead_of_copying_them() {
    let (server, address) = serve_with(
        "",
        &[],
        &[
            "--api-key",
            "k",
            "--max-sessions-per-user",
            "1000",
            "--mailbox-max-bytes",
            "2000000",
        ],
    );
    // A full mailbox: 20 messages of 50 KB, about 1 MB.
    let payload = format!("\"{}\"", "x".repeat(50_000));
    for _ in 0..20 {
        let (status, body) = publish(&address, "k", "hoarder", &payload).await;
        assert_eq!(status, 202, "{body}");
    }
    let before = server.rss_bytes();
    // 200 sessions opened and dropped: each is kept for the resume window with the mailbox
    // queued on it.
    for _ in 0..200 {
        let (socket, _) = ready_socket(&address, "hoarder").await;
        drop(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 * MIB,
        "200 connect/drop cycles on a 1 MB mailbox grew the server by {} MiB",
        grown / MIB
    );
    eprintln!(
        "200 connect/drop cycles on a 1 MB mailbox: +{:.1} MiB",
        grown as f64 / MIB as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_the_session_bound_loses_the_oldest_detached_session_first() {
    let (_server, address) = serve_with("", &[], &["--max-sessions-per-user", "3"]);
    let (first, first_ready) = ready_socket(&address, "many").await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(ready_socket(&address, "many").await.0);
    }
    let figures = metrics(&address).await;
    assert!(
        sample(
            &figures,
            r#"readyws_limit_refusals_total{limit="sessions_per_user_evicted"}"#
        ) >= 1.0,
        "{figures}"
    );
    // The first session was ended to make room: resuming it starts a new session.
    drop(live.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let session = first_ready["session_id"].as_str().expect("a session id");
    let token = first_ready["resume_token"].as_str().expect("a token");
    let resumed = resume(&address, "many", session, token).await;
    assert_eq!(resumed["type"], "connection_ready");
    assert_eq!(resumed["resumed"], false, "{resumed}");
    // With every session live, a new one is refused with a retry.
    live.push(ready_socket(&address, "many").await.0);
    let refused = hello_answer(&address, "many").await;
    assert_eq!(refused["type"], "goaway", "{refused}");
    assert_eq!(refused["code"], 4003, "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some(), "{refused}");
}

async fn hello_answer(address: &str, token: &str) -> serde_json::Value {
    say_hello(
        address,
        serde_json::json!({"type": "hello", "token": token}),
    )
    .await
    .1
}

async fn resume(address: &str, token: &str, session: &str, secret: &str) -> serde_json::Value {
    let hello = serde_json::json!({
        "type": "hello",
        "token": token,
        "resume": {"session_id": session, "resume_token": secret, "last_received": 0},
    });
    say_hello(address, hello).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_within_twice_the_heartbeat() {
    let (server, address) = serve_with(
        "",
        &[],
        &[
            "--api-key",
            "k",
            "--heartbeat-ms",
            "1000",
            "--mailbox-max-bytes",
            "64000000",
            "--mailbox-max-messages",
            "2000",
        ],
    );
    let mut stuck = Vec::new();
    for n in 0..5 {
        stuck.push(ready_socket(&address, &format!("deaf-{n}")).await.0);
    }
    // 15 MB each, far more than the sockets' buffers: each connection's writes block.
    let payload = format!("\"{}\"", "y".repeat(250_000));
    for n in 0..5 {
        for _ in 0..60 {
            publish(&address, "k", &format!("deaf-{n}"), &payload).await;
        }
    }
    // The writes have been blocked since the first few messages; 2 x heartbeat + 1 s is 3 s,
    // and the margin is for a loaded machine.
    let published = Instant::now();
    let figures = metrics_until(&address, Duration::from_secs(10), |text| {
        sample(text, "readyws_connections_open") == 0.0
    })
    .await;
    eprintln!(
        "5 clients that stopped reading: all dropped {:.1} s after the last publish",
        published.elapsed().as_secs_f64()
    );
    assert_eq!(
        sample(&figures, "readyws_connections_open"),
        0.0,
        "clients that stopped reading are still connected:\n{figures}"
    );
    assert!(
        sample(&figures, r#"readyws_deadlines_total{stage="write"}"#) >= 1.0,
        "{figures}"
    );
    drop(stuck);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_its_bound_while_the_users_connection_is_stuck() {
    let (server, address) = serve_with(
        "",
        &[],
        &[
            "--api-key",
            "k",
            "--mailbox-overflow",
            "drop-oldest",
            "--mailbox-max-messages",
            "20",
            "--mailbox-max-bytes",
            "2000000",
        ],
    );
    let (stuck, _) = ready_socket(&address, "stuck").await;
    let before = server.rss_bytes();
    let payload = format!("\"{}\"", "z".repeat(50_000));
    for _ in 0..3000 {
        let (status, body) = publish(&address, "k", "stuck", &payload).await;
        assert_eq!(status, 202, "{body}");
    }
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 * MIB,
        "3,000 x 50 KB to a stuck connection under drop-oldest grew the server by {} MiB",
        grown / MIB
    );
    let figures = metrics(&address).await;
    assert!(
        sample(&figures, "readyws_copies_withdrawn_total") >= 1.0,
        "copies the mailbox dropped left the session's outbox too:\n{figures}"
    );
    eprintln!(
        "3,000 x 50 KB to a stuck connection under drop-oldest: +{:.1} MiB",
        grown as f64 / MIB as f64
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_wide_bounds_refuse_clearly_long_user_ids_and_a_full_server() {
    let (_server, address) = serve_with("", &[], &["--api-key", "k", "--max-held-bytes", "200000"]);
    let payload = format!("\"{}\"", "w".repeat(50_000));
    let mut answers = Vec::new();
    for n in 0..6 {
        answers.push(publish(&address, "k", &format!("away-{n}"), &payload).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [202, 202, 202, 503, 503, 503], "{answers:?}");
    assert!(answers[3].1.contains("server_full"), "{answers:?}");
    let long_id = "u".repeat(100_000);
    let (status, body) = publish(&address, "k", &long_id, "1").await;
    assert_eq!(status, 400, "{body}");
    let refused = hello_answer(&address, &long_id).await;
    assert_eq!(refused["type"], "goaway", "{refused}");
    assert_eq!(refused["code"], 4200, "{refused}");
    let figures = metrics(&address).await;
    assert!(
        sample(
            &figures,
            r#"readyws_limit_refusals_total{limit="held_bytes"}"#
        ) >= 3.0
    );
    assert!(
        sample(
            &figures,
            r#"readyws_limit_refusals_total{limit="user_id_bytes"}"#
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_peer_sends_never_forges_a_log_line() {
    let (log, lines) = std::sync::mpsc::channel();
    let (server, address) = serve_logging(&[], &["--echo", "--log", "debug"], log);
    // A user id (the token, with the development authentication) and a nack code carrying a
    // newline and a line of the attacker's choosing.
    let forged = "WARN readyws_server: FORGED";
    let (mut socket, _) = ready_socket(&address, &format!("mallory\n{forged}")).await;
    socket
        .send(Message::text(r#"{"type":"msg","id":1,"data":"echo me"}"#))
        .await
        .expect("sent");
    // The echo comes back as server message 1: refuse it with a forged code.
    next_of_type(&mut socket, "msg").await;
    let nack = serde_json::json!({"type": "nack", "id": 1, "code": format!("bad\n{forged}"), "reason": format!("r\n{forged}")});
    socket
        .send(Message::text(nack.to_string()))
        .await
        .expect("sent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(server);
    let lines: Vec<String> = lines.try_iter().collect();
    assert!(
        lines.iter().any(|line| line.contains("mallory")),
        "the user is logged"
    );
    let forged_lines: Vec<&String> = lines
        .iter()
        .filter(|line| line.trim_start().starts_with(forged) || line.starts_with("FORGED"))
        .collect();
    assert!(forged_lines.is_empty(), "forged lines: {forged_lines:?}");
    assert!(
        lines.iter().any(|line| line.contains(r"mallory\n")),
        "the newline is written escaped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_chooses_what_the_server_logs() {
    let (log, lines) = std::sync::mpsc::channel();
    let (server, address) = serve_logging(&[("RUST_LOG", "readyws_server=debug,info")], &[], log);
    let (socket, _) = ready_socket(&address, "logged").await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(server);
    let lines: Vec<String> = lines.try_iter().collect();
    assert!(
        lines.iter().any(|line| line.contains("socket opened")),
        "readyws_server's debug lines are written: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_ends_its_connection_and_serves_nothing_pipelined_behind_it() {
    let (_server, address) = serve_with("", &[], &[]);
    // An upgrade without the readyws subprotocol, sent in two pieces so that it goes through
    // hyper, with a request pipelined behind it.
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n")
        .await
        .expect("first piece");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(b"upgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("second piece");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "one answer, then the close: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_surrogates_are_invalid_in_messages_and_in_published_data() {
    let (_server, address) = serve_with("", &[], &["--api-key", "k"]);
    let body = r#"{"user":"alice","data":"\ud800"}"#;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = http(&address, request.as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    let (mut socket, _) = ready_socket(&address, "alice").await;
    socket
        .send(Message::text(r#"{"type":"msg","id":1,"data":"\ud800"}"#))
        .await
        .expect("sent");
    let answer = next_frame(&mut socket)
        .await
        .expect("an answer, not a close");
    assert_eq!(answer["type"], "nack", "{answer}");
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["code"], "invalid", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaways_the_protocol_raises_are_counted_by_code() {
    let (_server, address) = serve_with("", &[], &["--hello-timeout-ms", "300"]);
    // A socket that never says hello gets goaway 4001 from the protocol's own timer.
    let mut socket = open_socket(&address).await;
    while next_frame(&mut socket).await.is_some() {}
    let figures = metrics(&address).await;
    assert!(
        sample(&figures, r#"readyws_goaways_total{code="4001"}"#) >= 1.0,
        "{figures}"
    );
    assert!(
        sample(&figures, r#"readyws_closes_total{code="4001"}"#) >= 1.0,
        "{figures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_stay_inside_their_folder_and_are_streamed() {
    let root = std::env::temp_dir().join(format!("readyws-static-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sub")).expect("folders");
    std::fs::write(root.join("index.html"), "<p>home</p>").expect("a page");
    std::fs::write(root.join("sub/index.html"), "<p>sub</p>").expect("a page");
    std::fs::write(root.join("big.bin"), vec![7u8; 30 << 20]).expect("a large file");
    std::os::unix::fs::symlink("/etc", root.join("etclink")).expect("a link out");
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).expect("a link out");
    std::os::unix::fs::symlink(root.join("index.html"), root.join("home.html")).expect("a link in");
    let folder = root.to_str().expect("a UTF-8 path").to_owned();
    let (server, address) = serve_with("", &[], &["--static", &folder]);
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").into_bytes()
    };
    assert_eq!(http(&address, &get("/etclink/passwd")).await.0, 404);
    assert_eq!(http(&address, &get("/passwd")).await.0, 404);
    assert_eq!(
        http(&address, &get("/etclink/../../etc/passwd")).await.0,
        404
    );
    let (status, body) = http(&address, &get("/home.html")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "<p>home</p>"),
        "a link inside is fine"
    );
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    stream.write_all(&get("//sub")).await.expect("request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 308"), "{answer}");
    assert!(
        answer.contains("location: /sub/\r\n"),
        "an absolute path, not //sub/: {answer}"
    );
    // Ten requests for a 30 MB file whose answers nobody reads.
    let before = server.rss_bytes();
    let mut unread = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        stream.write_all(&get("/big.bin")).await.expect("request");
        unread.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 * MIB,
        "ten unread 30 MB downloads grew the server by {} MiB",
        grown / MIB
    );
    eprintln!(
        "ten unread 30 MB downloads: +{:.1} MiB",
        grown as f64 / MIB as f64
    );
    drop(unread);
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}
