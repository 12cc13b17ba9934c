//! The servers of `readyws demo --instances N`: instances that share a Redis, each running on a
//! runtime of its own so that one can be killed outright (its runtime dropped: every task and
//! socket of it gone at once, no `goaway`, no hand-over, its lease left to run out), and the
//! `redis-server` the demo starts on loopback when it is not given one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use readyws_server::{
    InboundHandler, InsecureDevAuth, RedisStore, Server, ServerHandle, ServerOptions,
};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// A `redis-server` of the demo's own on a free loopback port, with the persistence the
/// no-loss guarantee needs (`appendonly yes`, `appendfsync always`); stopped when dropped.
pub(crate) struct LocalRedis {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl LocalRedis {
    /// Starts Debian's `redis-server` and waits until it answers.
    pub(crate) fn start() -> Result<LocalRedis, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .map_err(|e| format!("no free loopback port for redis-server: {e}"))?;
        let dir = std::env::temp_dir().join(format!("readyws-demo-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    "--instances needs a Redis: pass --redis redis://host:port, or install \
                     redis-server (Debian and Ubuntu: apt-get install redis-server) and the demo \
                     starts one on loopback"
                        .to_owned()
                } else {
                    format!("cannot start redis-server: {e}")
                }
            })?;
        let redis = LocalRedis { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_ping(port) {
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {port} never answered"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 5];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG"
}

/// One instance: a server on a runtime of its own.
pub(crate) struct Instance {
    pub(crate) address: SocketAddr,
    pub(crate) handle: ServerHandle,
    /// `None` once killed.
    runtime: Option<Runtime>,
}

impl Instance {
    /// Starts a server with `options` on the Redis at `url` (keys under `prefix`), listening on
    /// a free loopback port.
    pub(crate) async fn start(
        url: &str,
        prefix: &str,
        options: ServerOptions,
        handler: impl InboundHandler,
    ) -> Result<Instance, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("readyws-demo-instance")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start an instance's runtime: {e}"))?;
        // The store's connection lives on the instance's runtime, so it dies with it.
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        let started = runtime.spawn(async move {
            let store = RedisStore::connect(&url)
                .await
                .map_err(|e| e.to_string())?
                .with_prefix(prefix);
            let server = Server::new(options.redis(store), InsecureDevAuth, handler);
            let handle = server.handle();
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
            let address = listener.local_addr().map_err(|e| e.to_string())?;
            tokio::spawn(server.serve(listener, std::future::pending::<()>()));
            Ok::<_, String>((handle, address))
        });
        let (handle, address) = started
            .await
            .map_err(|e| format!("an instance did not start: {e}"))??;
        Ok(Instance {
            address,
            handle,
            runtime: Some(runtime),
        })
    }

    /// Kills the instance as a crash would: every task and socket of it goes at once.
    pub(crate) fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    pub(crate) fn alive(&self) -> bool {
        self.runtime.is_some()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}
