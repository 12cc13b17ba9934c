//! Running the `readyws` binary in tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `readyws` process, killed when dropped.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on a free port and returns it with the address it reports.
pub(crate) fn serve(extra: &[&str]) -> (Running, String) {
    serve_with("", &[], extra)
}

/// Starts `readyws serve` (on a free port, with `--insecure-dev-auth`) under `sh -c PREFIX`, for
/// a prefix such as `ulimit -n 256 &&`, with `env` set, and returns it with its address.
pub(crate) fn serve_with(prefix: &str, env: &[(&str, &str)], extra: &[&str]) -> (Running, String) {
    spawn_reporting_address(serve_command(prefix, env, extra), None)
}

/// Starts `readyws serve` on `address` (a restarted server takes the port of the one it replaces).
pub(crate) fn serve_on(address: &str, extra: &[&str]) -> (Running, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_readyws"));
    command
        .args(["serve", "--listen", address, "--insecure-dev-auth"])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    spawn_reporting_address(command, None)
}

fn serve_command(prefix: &str, env: &[(&str, &str)], extra: &[&str]) -> Command {
    let script = format!("{prefix} exec \"$0\" \"$@\"");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_readyws"))
        .args(["serve", "--listen", "127.0.0.1:0", "--insecure-dev-auth"])
        .args(extra)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    command
}

/// Like [`serve_with`], and every line the server logs is also sent on `log`.
pub(crate) fn serve_logging(
    env: &[(&str, &str)],
    extra: &[&str],
    log: std::sync::mpsc::Sender<String>,
) -> (Running, String) {
    spawn_reporting_address(serve_command("", env, extra), Some(log))
}

fn spawn_reporting_address(
    mut command: Command,
    log: Option<std::sync::mpsc::Sender<String>>,
) -> (Running, String) {
    let mut child = command.spawn().expect("the readyws binary runs");
    let stderr = child.stderr.take().expect("stderr");
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("address=").nth(1) {
                let _ = found.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            if let Some(log) = &log {
                let _ = log.send(line);
            }
        }
    });
    let running = Running(child);
    let address = address
        .recv_timeout(Duration::from_secs(20))
        .expect("the server logs its address");
    (running, address)
}

impl Running {
    /// The process's resident memory, in bytes, from `/proc`.
    pub(crate) fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .expect("the server's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .expect("VmRSS in /proc status");
        kib * 1024
    }
}

/// Sends `request` as it is on a new connection and returns the status code and the body of the
/// answer (read until the server closes or `content-length` is reached).
pub(crate) async fn http(address: &str, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("the server accepts");
    stream.write_all(request).await.expect("request written");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer in time");
        match read {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
        }
        if let Some((status, body)) = complete_response(&answer) {
            return (status, body);
        }
    }
    complete_response(&answer).unwrap_or((0, String::from_utf8_lossy(&answer).into_owned()))
}

fn complete_response(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    })?;
    (body.len() >= length).then(|| (status, body[..length].to_owned()))
}

/// `GET /metrics`.
pub(crate) async fn metrics(address: &str) -> String {
    let request = format!("GET /metrics HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    http(address, request.as_bytes()).await.1
}

/// The value of the sample `name` (with its labels, as Prometheus writes them) in `text`; 0 when
/// absent.
pub(crate) fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// `POST /api/publish` of `data` to `user` with `key`.
pub(crate) async fn publish(address: &str, key: &str, user: &str, data: &str) -> (u16, String) {
    let body = serde_json::json!({"user": user, "data": serde_json::from_str::<serde_json::Value>(data).expect("JSON")}).to_string();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    http(address, request.as_bytes()).await
}

/// A raw WebSocket to `/ws` that offers the readyws subprotocol.
pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket to the server's `/ws`, offering `readyws.v1`.
pub(crate) async fn open_socket(address: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{address}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "readyws.v1".parse().expect("header"),
    );
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("the server accepts");
    tokio_tungstenite::client_async(request, stream)
        .await
        .expect("the socket opens")
        .0
}

/// The next text frame, as JSON; `None` once the socket has ended.
pub(crate) async fn next_frame(socket: &mut Socket) -> Option<serde_json::Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame in time")?
            .ok()?;
        if let Message::Text(text) = message {
            return Some(serde_json::from_str(text.as_str()).expect("JSON"));
        }
    }
}

/// The next text frame of type `kind`, skipping others.
pub(crate) async fn next_of_type(socket: &mut Socket, kind: &str) -> serde_json::Value {
    loop {
        let frame = next_frame(socket).await.expect("the socket is open");
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Sends `hello` after `welcome` and returns the socket with the first frame that answers it:
/// `connection_ready` or `goaway`.
pub(crate) async fn say_hello(
    address: &str,
    hello: serde_json::Value,
) -> (Socket, serde_json::Value) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut socket = open_socket(address).await;
    loop {
        let frame = next_frame(&mut socket).await.expect("the socket is open");
        match frame["type"].as_str() {
            Some("welcome") => socket
                .send(Message::text(hello.to_string()))
                .await
                .expect("sent"),
            Some("connection_ready" | "goaway") => return (socket, frame),
            _ => {}
        }
    }
}

/// A WebSocket that said `hello` with `token` and got `connection_ready`, returned with the
/// `connection_ready` frame. Nothing reads it afterwards unless the caller does.
pub(crate) async fn ready_socket(address: &str, token: &str) -> (Socket, serde_json::Value) {
    let (socket, answer) = say_hello(
        address,
        serde_json::json!({"type": "hello", "token": token}),
    )
    .await;
    assert_eq!(answer["type"], "connection_ready", "refused: {answer}");
    (socket, answer)
}
