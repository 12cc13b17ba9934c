//! The reference server in-process on 127.0.0.1, and a TCP proxy the tests can cut.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use readyws::{Client, ClientBuilder, Data};
use readyws_server::{InboundHandler, InsecureDevAuth, Server, ServerHandle, ServerOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(options: ServerOptions, handler: impl InboundHandler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, options, InsecureDevAuth, handler)
    }

    pub fn start_on(
        listener: TcpListener,
        options: ServerOptions,
        auth: impl readyws_server::Authenticator,
        handler: impl InboundHandler,
    ) -> Self {
        let addr = listener.local_addr().expect("address");
        let server = Server::new(options, auth, handler);
        let handle = server.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            handle,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn publish(&self, user: &str, value: Value) {
        self.handle
            .publish(
                &user.into(),
                Data::from_json(value.to_string()).expect("json"),
            )
            .await
            .expect("published");
    }

    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Records every client message the server accepts, in order.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Value>>>);

impl Recorder {
    pub fn values(&self) -> Vec<Value> {
        self.0.lock().expect("lock").clone()
    }

    pub fn handler(&self) -> impl InboundHandler {
        let seen = self.0.clone();
        move |_: &ServerHandle, message: readyws_server::Inbound<'_>| {
            let value: Value = message.data.deserialize().expect("json");
            seen.lock().expect("lock").push(value);
            readyws_server::Decision::Accept
        }
    }
}

pub fn json(value: Value) -> Data {
    Data::from_json(value.to_string()).expect("json")
}

/// A client with short delays, for tests.
pub fn fast(url: String, user: &str) -> ClientBuilder {
    Client::builder(url)
        .token(user)
        .backoff(Duration::from_millis(20), Duration::from_millis(400))
        .connect_timeout(Duration::from_secs(2))
        .handshake_timeout(Duration::from_secs(2))
}

pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy in front of a server: it can cut every connection, swallow what the client sends,
/// or send new connections elsewhere.
#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    swallow: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = Proxy {
            addr: listener.local_addr().expect("address"),
            upstream: Arc::new(Mutex::new(upstream)),
            swallow: Arc::new(AtomicBool::new(false)),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        let this = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = *this.upstream.lock().expect("lock");
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let swallow = this.swallow.clone();
                let task = tokio::spawn(pipe(client, server, swallow));
                this.tasks.lock().expect("lock").push(task);
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drops every open connection at once, as a network failure would.
    pub fn cut(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    /// While set, bytes from clients are read and thrown away.
    pub fn swallow_client_bytes(&self, swallow: bool) {
        self.swallow.store(swallow, Ordering::SeqCst);
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("lock") = upstream;
    }
}

async fn pipe(mut client: TcpStream, mut server: TcpStream, swallow: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let upward = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = client_read.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                break;
            }
            if !swallow.load(Ordering::SeqCst)
                && server_write.write_all(&buffer[..read]).await.is_err()
            {
                break;
            }
        }
    };
    let downward = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    tokio::select! {
        () = upward => {}
        () = downward => {}
    }
}
