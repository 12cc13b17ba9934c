//! `readyws-bench`: what readiness and delivery guarantees cost over a bare WebSocket, each figure
//! next to its raw tokio-tungstenite baseline measured in the same run on 127.0.0.1. Run it with
//! `cargo xtask bench`, which builds it in release mode, builds the browser package for its size,
//! and writes `docs/BENCHMARKS.md` with the plots in `docs/bench/`.
//!
//! - `readyws-bench run --out DIR [--trials N] [--messages N] [--sessions N] [--package W,G]`:
//!   every measurement; servers and the many-sessions clients run in child processes (this same
//!   binary) so that each one's memory is its own.
//! - `readyws-bench server --kind readyws|raw`, `readyws-bench swarm --kind readyws|raw --url URL
//!   --count N`: those children.

// A measuring tool: its report is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
mod figures;
mod plots;
mod report;
mod server;
mod swarm;

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::common::{median_f64, resident_bytes};
use crate::report::{Figures, PackageSizes};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("readyws-bench: no runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |name: &str, default: usize| {
        flag(name)
            .and_then(|n| n.replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    let result = match args.first().map(String::as_str) {
        Some("server") => runtime.block_on(server::run(
            &flag("--kind").unwrap_or_default(),
            flag("--redis"),
        )),
        Some("swarm") => runtime.block_on(swarm::run(
            &flag("--kind").unwrap_or_default(),
            &flag("--url").unwrap_or_default(),
            number("--count", 10_000),
        )),
        Some("run") => {
            let settings = Settings {
                out: PathBuf::from(flag("--out").unwrap_or_else(|| "docs".to_owned())),
                trials: number("--trials", 1000),
                messages: number("--messages", 20_000),
                throughput_runs: number("--runs", 15),
                sessions: number("--sessions", 10_000),
                package: flag("--package").and_then(|sizes| PackageSizes::parse(&sizes)),
                command: std::env::var("READYWS_BENCH_COMMAND")
                    .unwrap_or_else(|_| format!("readyws-bench {}", args.join(" "))),
            };
            // In a task, as application code runs, not on the thread that blocks on the runtime.
            runtime.block_on(async {
                tokio::spawn(run(settings))
                    .await
                    .unwrap_or_else(|error| Err(format!("the run panicked: {error}")))
            })
        }
        _ => Err("usage: readyws-bench run|server|swarm (see the crate docs)".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("readyws-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    out: PathBuf,
    trials: usize,
    messages: usize,
    throughput_runs: usize,
    sessions: usize,
    package: Option<PackageSizes>,
    command: String,
}

/// A child process of this binary, spoken to by lines.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Helper {
    fn spawn(args: &[&str]) -> Result<Helper, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {args:?}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        Ok(Helper {
            child,
            stdin,
            stdout,
        })
    }

    async fn line(&mut self, within: Duration) -> Result<String, String> {
        match tokio::time::timeout(within, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(_) => Err("a child process ended early".to_owned()),
            Err(_) => Err(format!("a child process said nothing for {within:?}")),
        }
    }

    async fn tell(&mut self, line: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| format!("telling a child process: {e}"))?;
        self.stdin.flush().await.map_err(|e| e.to_string())
    }

    fn pid(&self) -> String {
        self.child
            .id()
            .map(|pid| pid.to_string())
            .unwrap_or_default()
    }

    /// A server child and its WebSocket URL; `redis` gives the readyws server that store.
    async fn server(kind: &str, redis: Option<&str>) -> Result<(Helper, String), String> {
        let mut args = vec!["server", "--kind", kind];
        if let Some(url) = redis {
            args.extend(["--redis", url]);
        }
        let mut helper = Helper::spawn(&args)?;
        let line = helper.line(Duration::from_secs(30)).await?;
        let address = line
            .strip_prefix("listening ")
            .ok_or_else(|| format!("the {kind} server said `{line}`"))?;
        let path = if kind == "readyws" { "/ws" } else { "/" };
        Ok((helper, format!("ws://{address}{path}")))
    }
}

fn progress(message: &str) {
    eprintln!("bench: {message}");
}

async fn run(settings: Settings) -> Result<(), String> {
    let started = Instant::now();
    // A few hundred over the sessions: the runtime, pipes, the servers' listeners.
    common::raise_open_file_limit(settings.sessions as u64 + 256)?;
    let (_readyws_server, readyws_url) = Helper::server("readyws", None).await?;
    let (_raw_server, raw_url) = Helper::server("raw", None).await?;
    // The Redis store's figures come from a server on a redis-server of the run's own, with the
    // persistence the no-loss guarantee needs (appendfsync always).
    let redis = tokio::task::spawn_blocking(readyws_tests::cluster::RedisProcess::start)
        .await
        .map_err(|e| e.to_string())??;
    let (_redis_server, redis_url) = Helper::server("readyws", Some(&redis.url())).await?;

    progress(&format!(
        "time to ready, {} trials each, interleaved",
        settings.trials
    ));
    let (ready_readyws, ready_raw) =
        figures::time_to_ready(&readyws_url, &raw_url, settings.trials).await?;
    progress("time to ready on the Redis store");
    let (ready_redis, _) = figures::time_to_ready(&redis_url, &raw_url, settings.trials).await?;

    progress(&format!(
        "throughput, {} runs of {} messages each way",
        settings.throughput_runs, settings.messages
    ));
    let mut upload = (Vec::new(), Vec::new());
    let mut download = (Vec::new(), Vec::new());
    let mut on_redis = (Vec::new(), Vec::new());
    for run in 0..settings.throughput_runs {
        upload
            .0
            .push(figures::readyws_upload(&readyws_url, settings.messages, run).await?);
        upload
            .1
            .push(figures::raw_upload(&raw_url, settings.messages).await?);
        download
            .0
            .push(figures::readyws_download(&readyws_url, settings.messages, run).await?);
        download
            .1
            .push(figures::raw_download(&raw_url, settings.messages).await?);
        on_redis
            .0
            .push(figures::readyws_upload(&redis_url, settings.messages, run).await?);
        on_redis
            .1
            .push(figures::readyws_download(&redis_url, settings.messages, run).await?);
        progress(&format!(
            "run {run}: up {:.0} vs raw {:.0}, down {:.0} vs raw {:.0} messages/s; on Redis up {:.0}, down {:.0}",
            upload.0[run],
            upload.1[run],
            download.0[run],
            download.1[run],
            on_redis.0[run],
            on_redis.1[run]
        ));
    }
    drop((_readyws_server, _raw_server, _redis_server));

    let count = settings.sessions.to_string();
    progress(&format!("{} raw sessions at once", settings.sessions));
    let (raw_sessions, _) = many_sessions("raw", None, &count).await?;
    progress(&format!("{} readyws sessions at once", settings.sessions));
    let (readyws_sessions, storm) = many_sessions("readyws", None, &count).await?;
    progress(&format!(
        "{} readyws sessions at once on the Redis store",
        settings.sessions
    ));
    let (redis_sessions, storm_redis) =
        many_sessions("readyws", Some(&redis.url()), &count).await?;

    let figures = Figures {
        trials: settings.trials,
        ready_readyws,
        ready_raw,
        messages: settings.messages,
        upload_readyws: median_f64(&upload.0),
        upload_raw: median_f64(&upload.1),
        download_readyws: median_f64(&download.0),
        download_raw: median_f64(&download.1),
        ready_redis,
        upload_redis: median_f64(&on_redis.0),
        download_redis: median_f64(&on_redis.1),
        sessions: settings.sessions,
        raw_sessions,
        readyws_sessions,
        storm: storm.ok_or("the readyws swarm ran no storm")?,
        redis_sessions,
        storm_redis: storm_redis.ok_or("the readyws swarm on Redis ran no storm")?,
        package: settings.package,
        command: settings.command,
        elapsed: started.elapsed(),
    };
    report::write(&settings.out, &figures)?;
    println!("{}", report::summary(&figures));
    // The figures are written either way; a broken guarantee still fails the run.
    let broken = report::broken_guarantees(&figures);
    if broken.is_empty() {
        Ok(())
    } else {
        Err(format!("guarantees broken: {}", broken.join("; ")))
    }
}

/// The figures of `count` sessions of `kind` opened at once, each side in a fresh process.
pub(crate) struct Sessions {
    pub(crate) opened: swarm::Opened,
    pub(crate) server_rss_before: u64,
    pub(crate) server_rss_after: u64,
}

async fn many_sessions(
    kind: &str,
    redis: Option<&str>,
    count: &str,
) -> Result<(Sessions, Option<swarm::Storm>), String> {
    let (mut server, url) = Helper::server(kind, redis).await?;
    // Settled before the figure is taken.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server_rss_before = resident_bytes(&server.pid());
    let mut swarm = Helper::spawn(&["swarm", "--kind", kind, "--url", &url, "--count", count])?;
    let line = swarm.line(Duration::from_secs(300)).await?;
    let opened: swarm::Opened =
        serde_json::from_str(&line).map_err(|e| format!("the swarm said `{line}`: {e}"))?;
    let server_rss_after = resident_bytes(&server.pid());
    let mut storm = None;
    if kind == "readyws" {
        progress("server restart under every session");
        swarm.tell("storm").await?;
        server.tell("restart").await?;
        let line = swarm.line(Duration::from_secs(180)).await?;
        storm =
            Some(serde_json::from_str(&line).map_err(|e| format!("the storm said `{line}`: {e}"))?);
    }
    Ok((
        Sessions {
            opened,
            server_rss_before,
            server_rss_after,
        },
        storm,
    ))
}
