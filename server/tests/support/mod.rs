//! A real server on 127.0.0.1, and a raw WebSocket client that speaks frames by hand.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use readyws_server::{
    Authenticator, InboundHandler, InsecureDevAuth, Server, ServerHandle, ServerOptions, UserId,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The test process's Prometheus recorder, installed once as the application would install it.
pub fn prometheus() -> readyws_server::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<readyws_server::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let (recorder, handle) = readyws_server::prometheus_recorder();
            metrics::set_global_recorder(recorder).expect("the first recorder of this process");
            handle
        })
        .clone()
}

/// How long a test waits for a frame before it fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(options: ServerOptions) -> Self {
        Self::start_with(options, InsecureDevAuth, readyws_server::AcceptAll).await
    }

    pub async fn start_with(
        options: ServerOptions,
        auth: impl Authenticator,
        handler: impl InboundHandler,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = Server::new(options.prometheus(prometheus()), auth, handler);
        let handle = server.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            handle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn publish(&self, user: &str, data: Value) -> readyws_server::PublishReport {
        self.handle
            .publish(
                &UserId::new(user),
                readyws_protocol::Data::from_json(data.to_string()).expect("json"),
            )
            .await
            .expect("published")
    }

    /// Messages held for `user`.
    #[allow(dead_code)]
    pub async fn depth(&self, user: &str) -> usize {
        self.handle
            .mailbox_depth(&UserId::new(user))
            .await
            .expect("the in-memory store answers")
    }

    /// Waits until `user` has `depth` messages held.
    #[allow(dead_code)]
    pub async fn wait_for_depth(&self, user: &str, depth: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.depth(user).await != depth {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the mailbox of {user} never held {depth}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server and waits until `serve` returned.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// A plain HTTP/1.1 request; returns the status and the body.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
            .await
            .expect("response in time")
            .expect("read");
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

pub struct Raw {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "readyws.v1".parse().expect("header"),
        );
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("readyws.v1"),
            "the server selects readyws.v1 [TR-1]"
        );
        Raw { ws }
    }

    /// Connects, reads `welcome`, sends `hello` with `token` and `resume`, and returns the
    /// `connection_ready`.
    pub async fn handshake(url: &str, token: &str, resume: Option<Value>) -> (Raw, Value) {
        let mut raw = Raw::connect(url).await;
        let welcome = raw.recv().await;
        assert_eq!(welcome["type"], "welcome");
        let mut hello = json!({"type": "hello", "token": token});
        if let Some(resume) = resume {
            hello["resume"] = resume;
        }
        raw.send(hello).await;
        let ready = raw.recv_type("connection_ready").await;
        (raw, ready)
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next readyws frame, whatever its type.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the socket is open")
                .expect("a valid frame");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("JSON frame");
                }
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// The next frame of type `kind`, answering pings and skipping anything else.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
            if frame["type"] == "ping" {
                self.send(json!({"type": "pong", "nonce": frame["nonce"]}))
                    .await;
            }
        }
    }

    /// The next `msg` frames, `count` of them, acknowledging none.
    pub async fn recv_msgs(&mut self, count: usize) -> Vec<Value> {
        let mut msgs = Vec::new();
        while msgs.len() < count {
            msgs.push(self.recv_type("msg").await);
        }
        msgs
    }

    /// Waits for the server's close frame and returns its code (`None` if the socket just ended).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("close in time");
            match next {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Whether a frame arrives within `wait`.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.ws.next()).await.is_err()
    }
}

impl Raw {
    /// The next frame of type `kind`, *not* answering pings (a client that went silent).
    pub async fn recv_type_ignoring_pings(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }
}
