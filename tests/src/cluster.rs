//! Several server instances sharing one Redis, for the suites and `cargo xtask chaos --instances`:
//! a `redis-server` of the suite's own on a free loopback port ([`RedisProcess`]), instances in
//! processes of their own that can be killed ([`InstanceProcess`]), and a TCP balancer in front
//! of them ([`Balancer`]) that sends each new connection to the next instance that answers, as a
//! load balancer in front of a deployment does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream as AsyncTcpStream};
use tokio::task::JoinHandle;

/// A `redis-server` started for one suite, with the persistence the no-loss guarantee needs
/// (`appendonly yes`, `appendfsync always`), killed when dropped.
#[derive(Debug)]
pub struct RedisProcess {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// The port of the cluster bus, for a node of a [`RedisCluster`].
    cluster_port: Option<u16>,
}

impl RedisProcess {
    /// Starts Debian's `redis-server` on a free port on 127.0.0.1, and waits until it answers.
    pub fn start() -> Result<RedisProcess, String> {
        RedisProcess::start_as(false)
    }

    /// Starts one, as a node of a cluster (`cluster-enabled yes`) or alone.
    fn start_as(cluster_node: bool) -> Result<RedisProcess, String> {
        let port = free_port()?;
        let kind = if cluster_node {
            "redis-cluster"
        } else {
            "redis"
        };
        let dir =
            std::env::temp_dir().join(format!("readyws-{kind}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|problem| format!("cannot create {}: {problem}", dir.display()))?;
        // A node's bus gets a free port of its own: the default, the port + 10,000, may be
        // taken or out of range.
        let cluster_port = if cluster_node {
            Some(free_port()?)
        } else {
            None
        };
        let mut redis = RedisProcess {
            port,
            dir,
            child: None,
            cluster_port,
        };
        redis.spawn()?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: no save, no goodbye), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data folder: it reloads its append-only file.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir);
        if let Some(bus) = self.cluster_port {
            command
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|problem| {
                format!(
                    "cannot start redis-server ({problem}); `cargo xtask test` installs Debian's redis-server"
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {} never answered", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three primaries on loopback, each a [`RedisProcess`] with
/// `cluster-enabled yes`, its slots assigned by `redis-cli --cluster create`. Dropped, it stops.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisProcess>,
}

impl RedisCluster {
    /// Starts three nodes, joins them into a cluster, and waits until every node says the
    /// cluster is up.
    pub fn start() -> Result<RedisCluster, String> {
        let nodes = (0..3)
            .map(|_| RedisProcess::start_as(true))
            .collect::<Result<Vec<_>, _>>()?;
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|problem| {
                format!("cannot run redis-cli ({problem}); Debian's redis-tools has it")
            })?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|node| cluster_ok(node.port)) {
            if Instant::now() > deadline {
                return Err("the Redis Cluster never reported cluster_state:ok".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(RedisCluster { nodes })
    }

    /// Kills every node (SIGKILL).
    pub fn kill(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`, the URL
    /// `readyws_server::RedisStore::connect` takes for a cluster.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis-cluster://{}", nodes.join(","))
    }
}

/// Whether the Redis on `port` says its cluster is up.
fn cluster_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"CLUSTER INFO\r\n").is_err() {
        return false;
    }
    let mut answer = vec![0u8; 4096];
    let read = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..read]).contains("cluster_state:ok")
}

/// Whether a Redis answers `PING` on `port`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 5];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG"
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|problem| format!("no free loopback port: {problem}"))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|problem| problem.to_string())
}

/// A message an instance's handler accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// When, in microseconds of the wall clock (comparable across instances on one machine).
    pub at_micros: u64,
    /// From whom.
    pub user: String,
    /// The message, as JSON text.
    pub data: String,
}

/// A server instance on the Redis store, in a process of its own (the `instance` binary).
#[derive(Debug)]
pub struct InstanceProcess {
    /// Where it listens.
    pub address: SocketAddr,
    child: Child,
    received: Arc<Mutex<Vec<Received>>>,
}

impl InstanceProcess {
    /// Starts `program` (the `instance` binary) on `redis_url`, with more of its flags in
    /// `extra`, and waits until it listens.
    pub fn spawn(
        program: &Path,
        redis_url: &str,
        extra: &[&str],
    ) -> Result<InstanceProcess, String> {
        let mut child = Command::new(program)
            .args(["--redis", redis_url])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|problem| format!("cannot start {}: {problem}", program.display()))?;
        let stdout = child.stdout.take().ok_or("the instance has no stdout")?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&received);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("listening ") {
                    let _ = address_tx.send(address.to_owned());
                } else if let Some(rest) = line.strip_prefix("received ") {
                    let mut parts = rest.splitn(3, ' ');
                    let (Some(at), Some(user), Some(data)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Received {
                            at_micros: at.parse().unwrap_or(0),
                            user: user.to_owned(),
                            data: data.to_owned(),
                        });
                }
            }
        });
        let address = address_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "the instance did not start listening".to_owned())?;
        let address = address.parse().map_err(|problem| {
            format!("the instance printed a bad address {address}: {problem}")
        })?;
        Ok(InstanceProcess {
            address,
            child,
            received,
        })
    }

    /// Kills it with SIGKILL: its sockets close with nothing said, its sessions stay marked live
    /// in Redis until its lease runs out.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What its handler accepted so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for InstanceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP balancer on a loopback port: each connection goes to the next backend, in turn, that
/// accepts it; bytes are copied both ways until either side closes.
#[derive(Debug)]
pub struct Balancer {
    /// Where clients connect.
    pub address: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Balancer {
    /// A balancer in front of `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("an address");
        let backends = Arc::new(Mutex::new(backends));
        let next = Arc::new(AtomicUsize::new(0));
        let shared = Arc::clone(&backends);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (backends, next) = (Arc::clone(&shared), Arc::clone(&next));
                tokio::spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    let Some(mut outbound) = connect_next(&backends, &next).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Balancer {
            address,
            backends,
            task,
        }
    }

    /// The WebSocket endpoint through the balancer.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.address)
    }

    /// Replaces the backends (a restarted instance listens on a new port).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap_or_else(|e| e.into_inner()) = backends;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect_next(
    backends: &Mutex<Vec<SocketAddr>>,
    next: &AtomicUsize,
) -> Option<AsyncTcpStream> {
    let candidates = backends.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for _ in 0..candidates.len() {
        let index = next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        if let Ok(stream) = AsyncTcpStream::connect(candidates[index]).await {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}
