//! The reference server started in-process on a loopback port, for the suites.

use std::net::SocketAddr;
use std::time::Duration;

use readyws_server::{InboundHandler, InsecureDevAuth, Server, ServerHandle, ServerOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
        let server = Server::new(options, InsecureDevAuth, handler);
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
