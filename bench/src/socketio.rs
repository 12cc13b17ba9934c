//! The peer users would pick instead: Socket.IO 4, its server and client on Node.js, from
//! `bench/socketio/` (`server.mjs`, `client.mjs`, pinned by its `package-lock.json`, installed by
//! `cargo xtask bench` with `npm ci`). Each runs in a process of its own that this one speaks to
//! by lines; CPU and memory are read from `/proc` of those processes, as for the Rust ones.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::Helper;
use crate::common::resident_bytes;
use crate::figures::{Meter, Sample};

/// The installed peer: the folder of its scripts and `node_modules`.
#[derive(Clone, Debug)]
pub(crate) struct SocketIo {
    dir: PathBuf,
}

/// One answer of the client script.
#[derive(Debug, Default, Deserialize)]
struct Answer {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    micros: Vec<f64>,
    #[serde(default)]
    rate: f64,
    #[serde(default)]
    ready_ms: f64,
    #[serde(default)]
    failed: usize,
}

/// What opening many Socket.IO sockets at once measured.
pub(crate) struct Opened {
    pub(crate) ready_ms: f64,
    pub(crate) failed: usize,
    pub(crate) client_rss_before: u64,
    pub(crate) client_rss_after: u64,
    pub(crate) server_rss_before: u64,
    pub(crate) server_rss_after: u64,
}

impl SocketIo {
    /// The peer in `dir`, which must hold its installed `node_modules`.
    pub(crate) fn at(dir: &Path) -> Result<SocketIo, String> {
        for package in ["socket.io", "socket.io-client"] {
            let manifest = dir.join("node_modules").join(package).join("package.json");
            if !manifest.is_file() {
                return Err(format!(
                    "{} is missing: install the Socket.IO peer with `npm ci` in {} \
                     (`cargo xtask bench` does)",
                    manifest.display(),
                    dir.display()
                ));
            }
        }
        Ok(SocketIo {
            dir: dir.to_owned(),
        })
    }

    fn node(&self, script: &str) -> Result<Helper, String> {
        let mut command = Command::new("node");
        command.arg(script).current_dir(&self.dir);
        Helper::spawn_command(command, &format!("node {script}"))
    }

    /// A server process and the URL its clients connect to.
    pub(crate) async fn server(&self) -> Result<(Helper, String), String> {
        let mut server = self.node("server.mjs")?;
        let line = server.line(Duration::from_secs(30)).await?;
        let address = line
            .strip_prefix("listening ")
            .ok_or_else(|| format!("the Socket.IO server said `{line}`"))?;
        Ok((server, format!("http://{address}")))
    }

    /// A client process, waiting for commands.
    pub(crate) fn client(&self) -> Result<Helper, String> {
        self.node("client.mjs")
    }

    /// `count` sockets opened at once from a fresh client process against a fresh server.
    pub(crate) async fn open_many(&self, count: usize) -> Result<Opened, String> {
        let (server, url) = self.server().await?;
        let mut client = self.client()?;
        // Both settled before the figures are taken.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let server_rss_before = resident_bytes(&server.pid());
        let client_rss_before = resident_bytes(&client.pid());
        client.tell(&format!("swarm {url} {count}")).await?;
        let answer = answer(&mut client, Duration::from_secs(300)).await?;
        Ok(Opened {
            ready_ms: answer.ready_ms,
            failed: answer.failed,
            client_rss_before,
            client_rss_after: resident_bytes(&client.pid()),
            server_rss_before,
            server_rss_after: resident_bytes(&server.pid()),
        })
    }
}

async fn answer(client: &mut Helper, within: Duration) -> Result<Answer, String> {
    let line = client.line(within).await?;
    let answer: Answer = serde_json::from_str(&line)
        .map_err(|e| format!("the Socket.IO client said `{line}`: {e}"))?;
    match answer.error {
        Some(error) => Err(format!("the Socket.IO client failed: {error}")),
        None => Ok(answer),
    }
}

/// Time from `io()` to `connect`, `trials` times, measured by the client process.
pub(crate) async fn time_to_ready(
    client: &mut Helper,
    url: &str,
    trials: usize,
) -> Result<Vec<Duration>, String> {
    client.tell(&format!("ready {url} {trials}")).await?;
    let answer = answer(client, Duration::from_secs(300)).await?;
    Ok(answer
        .micros
        .iter()
        .map(|micros| Duration::from_secs_f64(micros / 1e6))
        .collect())
}

/// Acknowledged messages one way (`up`: client → server, `down`: server → client), with both
/// processes' CPU read around the transfer only: the client connects first and waits for a
/// go-ahead.
pub(crate) async fn throughput(
    client: &mut Helper,
    server_pid: &str,
    url: &str,
    direction: &str,
    messages: usize,
) -> Result<Sample, String> {
    client
        .tell(&format!("{direction} {url} {messages}"))
        .await?;
    answer(client, Duration::from_secs(60)).await?;
    let meter = Meter::start(&client.pid(), server_pid);
    client.tell("go").await?;
    let answer = answer(client, Duration::from_secs(600)).await?;
    let mut sample = meter.stop(messages);
    // The client's own clock, which does not count the go-ahead's trip through the pipe.
    sample.rate = answer.rate;
    Ok(sample)
}
