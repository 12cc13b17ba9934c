//! The reference server started in-process on a loopback port, for the suites, and a raw
//! handshake against it.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use readyws_server::{InboundHandler, InsecureDevAuth, Server, ServerHandle, ServerOptions};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A running server; dropping it does not stop it, [`RunningServer::stop`] does.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens.
    pub address: SocketAddr,
    /// To publish and to inspect it.
    pub handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<std::io::Result<()>>,
}

/// The test process's Prometheus recorder, installed once, as an application would install it.
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

impl RunningServer {
    /// Starts a server with `options` (authentication: the token is the user id).
    pub async fn start(options: ServerOptions, handler: impl InboundHandler) -> RunningServer {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), options, handler).await
    }

    /// Starts a server on `address` (port 0: any free port); a restarted server takes the port
    /// of the one it replaces.
    pub async fn start_on(
        address: SocketAddr,
        options: ServerOptions,
        handler: impl InboundHandler,
    ) -> RunningServer {
        let server = Server::new(options.prometheus(prometheus()), InsecureDevAuth, handler);
        let handle = server.handle();
        let listener = TcpListener::bind(address).await.expect("a loopback port");
        let address = listener.local_addr().expect("an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        RunningServer {
            address,
            handle,
            stop: Some(stop),
            serving,
        }
    }

    /// The WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.address)
    }

    /// Shuts the server down gracefully and waits (up to 10 s) until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.serving).await;
    }
}

/// One handshake over a raw socket: `hello` with `token` and maybe a resume; returns
/// `connection_ready` (the socket is then dropped without a close frame, keeping the session).
pub async fn handshake(url: &str, token: &str, resume: Option<(&str, &str)>) -> Value {
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "readyws.v1".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the socket opens");
    let mut hello = json!({"type": "hello", "token": token});
    if let Some((session_id, resume_token)) = resume {
        hello["resume"] = json!({
            "session_id": session_id,
            "resume_token": resume_token,
            "last_received": 0,
        });
    }
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("valid");
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str()).expect("JSON");
        match frame["type"].as_str() {
            Some("welcome") => socket
                .send(Message::text(hello.to_string()))
                .await
                .expect("sent"),
            Some("connection_ready") => return frame,
            _ => {}
        }
    }
}
