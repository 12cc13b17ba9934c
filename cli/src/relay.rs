//! A TCP relay that breaks connections on purpose, for `readyws demo`; with several servers
//! behind it, it is also the load balancer, sending each new connection to the next one.
//!
//! Every connection gets a plan drawn from a seeded generator, so a run is repeatable: added
//! latency on every chunk, and then either a cut at a random moment (both ends see
//! the TCP connection close), or a stall (the relay stops forwarding in both directions but keeps
//! both sockets open: a half-open link that only heartbeats can detect).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The servers behind the relay, each with its index: each new connection goes to the next one
/// in turn, as a load balancer in front of a deployment sends it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Backends(Arc<Mutex<BackendList>>);

#[derive(Debug, Default)]
struct BackendList {
    servers: Vec<(usize, SocketAddr)>,
    next: usize,
    /// The server the newest connection went to.
    newest: Option<usize>,
}

impl Backends {
    pub(crate) fn new(servers: Vec<(usize, SocketAddr)>) -> Backends {
        Backends(Arc::new(Mutex::new(BackendList {
            servers,
            ..BackendList::default()
        })))
    }

    /// Takes server `index` out of the rotation.
    pub(crate) fn remove(&self, index: usize) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.servers.retain(|(server, _)| *server != index);
    }

    /// The server the newest connection went to: the demo has one client, so its current one.
    pub(crate) fn newest(&self) -> Option<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).newest
    }

    fn next(&self) -> Option<(usize, SocketAddr)> {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if list.servers.is_empty() {
            return None;
        }
        let at = list.next % list.servers.len();
        list.next = list.next.wrapping_add(1);
        let chosen = list.servers[at];
        list.newest = Some(chosen.0);
        Some(chosen)
    }
}

/// What the relay did to a connection, for the demo's running account.
#[derive(Clone, Debug)]
pub(crate) enum RelayEvent {
    /// A connection went to server `server`.
    Routed { connection: u64, server: usize },
    /// A connection was cut after this long.
    Cut { connection: u64, after: Duration },
    /// A connection was stalled (half-open) after this long.
    Stalled { connection: u64, after: Duration },
}

/// What the relay does to one connection.
#[derive(Clone, Copy, Debug)]
enum Plan {
    Clean,
    Cut(Duration),
    Stall(Duration),
}

/// The relay's settings and its seeded generator.
pub(crate) struct Relay {
    upstream: Backends,
    rng: Mutex<fastrand::Rng>,
    /// While `false`, new connections are relayed cleanly (the demo turns faults off to finish).
    faults: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<RelayEvent>,
}

impl Relay {
    /// Starts relaying from a new loopback port to `upstream`; returns the port's address.
    pub(crate) async fn start(
        upstream: Backends,
        seed: u64,
        faults: watch::Receiver<bool>,
        events: mpsc::UnboundedSender<RelayEvent>,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let relay = Arc::new(Relay {
            upstream,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            faults,
            events,
        });
        tokio::spawn(async move {
            let mut connection = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                connection += 1;
                let relay = Arc::clone(&relay);
                tokio::spawn(async move { relay.carry(connection, client).await });
            }
        });
        Ok(address)
    }

    fn plan(&self) -> (Plan, Duration) {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let latency = Duration::from_millis(rng.u64(0..8));
        let plan = if !*self.faults.borrow() {
            Plan::Clean
        } else {
            // Every connection breaks while faults are on: most soon, some after a longer life.
            match rng.u8(0..10) {
                0..=4 => Plan::Cut(Duration::from_millis(rng.u64(300..1_500))),
                5..=7 => Plan::Stall(Duration::from_millis(rng.u64(300..1_200))),
                _ => Plan::Cut(Duration::from_millis(rng.u64(2_000..4_000))),
            }
        };
        (plan, latency)
    }

    async fn carry(&self, connection: u64, client: TcpStream) {
        let Some((index, address)) = self.upstream.next() else {
            return;
        };
        let Ok(server) = TcpStream::connect(address).await else {
            return;
        };
        let _ = self.events.send(RelayEvent::Routed {
            connection,
            server: index,
        });
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (plan, latency) = self.plan();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let (stall, stalled) = watch::channel(false);
        let up = tokio::spawn(pump(client_read, server_write, latency, stalled.clone()));
        let down = tokio::spawn(pump(server_read, client_write, latency, stalled));
        match plan {
            Plan::Clean => {
                let _ = tokio::join!(up, down);
            }
            Plan::Cut(after) => {
                tokio::time::sleep(after).await;
                up.abort();
                down.abort();
                let _ = self.events.send(RelayEvent::Cut { connection, after });
            }
            Plan::Stall(after) => {
                tokio::time::sleep(after).await;
                let _ = stall.send(true);
                let _ = self.events.send(RelayEvent::Stalled { connection, after });
                // Both sockets stay open and silent, long after the peers' heartbeats gave up.
                tokio::time::sleep(Duration::from_secs(30)).await;
                up.abort();
                down.abort();
            }
        }
    }
}

/// Copies one direction, delaying each chunk by `latency`, until either side ends or the link
/// stalls (then it holds what it read and never writes again).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Duration,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            },
            () = async {
                // The guard `wait_for` returns is dropped here, before anything else awaits.
                let _ = stalled.wait_for(|stalled| *stalled).await;
            } => {
                std::future::pending::<()>().await;
                break;
            }
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let is_stalled = *stalled.borrow();
        if is_stalled {
            // A stalled link says nothing more, not even a close.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
