//! `readyws-bench`: what readiness and delivery guarantees cost over a bare WebSocket, each figure
//! next to its raw tokio-tungstenite baseline measured in the same run on 127.0.0.1. Run it with
//! `cargo xtask bench`, which builds it in release mode, builds the browser package for its size,
//! and writes `docs/BENCHMARKS.md` with the plots in `docs/bench/`.
//!
//! - `readyws-bench run --out DIR [--runs N] [--trials N] [--messages N] [--session-runs N]
//!   [--sessions N] [--socketio DIR] [--package W,G]`: every measurement, each figure `--runs`
//!   times (5; `--session-runs` for the many-sessions ones) for its spread; servers and the
//!   many-sessions clients run in child processes (this same binary, or Node.js for the
//!   Socket.IO peer installed in `--socketio`, default `bench/socketio`) so that each one's CPU
//!   and memory are its own.
//! - `readyws-bench server --kind readyws|raw`, `readyws-bench swarm --kind readyws|raw --url URL
//!   --count N`: those children.
//! - `readyws-bench transfer --contender readyws|naive|pipelined --direction up|down --url URL
//!   --server-pid PID [--messages N] [--runs N]`: one throughput figure against a server started
//!   with `server`, each run's figures as a JSON line: for a profiler attached to either side.
//!   Two more contenders, client → server only, take apart what the readyws client costs over
//!   the ceiling: `acked` (raw tokio-tungstenite with acknowledgements done by hand in one task,
//!   against `server --kind raw`) and `session` (the readyws client session of
//!   `readyws-protocol` driven by the application's own task, against `server --kind readyws`).
//! - `readyws-bench hold --url REDIS_URL [--messages N] [--runs N]`: Redis alone holding and
//!   releasing the same messages (the store's ceiling that `run` reports), messages/s per run.

// A measuring tool: its report is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
mod figures;
mod plots;
mod report;
mod server;
mod socketio;
mod swarm;

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::common::resident_bytes;
use crate::report::{Figures, PackageSizes, ReadyRuns, SessionRuns, SessionsRun, ThroughputRuns};
use crate::socketio::SocketIo;

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
        Some("hold") => runtime.block_on(async {
            for run in 0..number("--runs", 1) {
                let rate = figures::redis_hold_and_release(
                    &flag("--url").unwrap_or_default(),
                    number("--messages", 100_000),
                    run,
                )
                .await?;
                println!("{rate:.0}");
            }
            Ok(())
        }),
        Some("transfer") => runtime.block_on(transfer(
            &flag("--contender").unwrap_or_default(),
            &flag("--direction").unwrap_or_default(),
            &flag("--url").unwrap_or_default(),
            &flag("--server-pid").unwrap_or_default(),
            number("--messages", 100_000),
            number("--runs", 1),
        )),
        Some("run") => {
            let settings = Settings {
                out: PathBuf::from(flag("--out").unwrap_or_else(|| "docs".to_owned())),
                trials: number("--trials", 200),
                messages: number("--messages", 100_000),
                runs: number("--runs", 5),
                session_runs: number("--session-runs", 5),
                sessions: number("--sessions", 10_000),
                socketio: PathBuf::from(
                    flag("--socketio").unwrap_or_else(|| "bench/socketio".to_owned()),
                ),
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

/// `runs` transfers of `messages` by one contender in one direction, each printed as it ends.
async fn transfer(
    contender: &str,
    direction: &str,
    url: &str,
    server_pid: &str,
    messages: usize,
    runs: usize,
) -> Result<(), String> {
    for run in 0..runs {
        let sample = match (contender, direction) {
            ("readyws", "up") => figures::readyws_upload(url, server_pid, messages, run).await,
            ("readyws", "down") => figures::readyws_download(url, server_pid, messages, run).await,
            ("naive", "up") => figures::naive_upload(url, server_pid, messages).await,
            ("naive", "down") => figures::naive_download(url, server_pid, messages).await,
            ("pipelined", "up") => figures::pipelined_upload(url, server_pid, messages).await,
            ("acked", "up") => figures::acked_upload(url, server_pid, messages).await,
            ("session", "up") => figures::session_upload(url, server_pid, messages).await,
            ("pipelined", "down") => figures::pipelined_download(url, server_pid, messages).await,
            _ => Err(format!(
                "no transfer `{contender}` `{direction}` (readyws|naive|pipelined, up|down; \
                 acked|session, up)"
            )),
        }?;
        println!(
            "{}",
            serde_json::to_string(&sample).map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

struct Settings {
    out: PathBuf,
    /// Time-to-ready trials of each kind in each run.
    trials: usize,
    /// Messages each way in each throughput run.
    messages: usize,
    /// Runs of the time-to-ready and throughput figures.
    runs: usize,
    /// Runs of the many-sessions figures.
    session_runs: usize,
    sessions: usize,
    /// The Socket.IO peer's folder, installed.
    socketio: PathBuf,
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
    /// This binary with `args`.
    fn spawn(args: &[&str]) -> Result<Helper, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let mut command = Command::new(exe);
        command.args(args);
        Helper::spawn_command(command, &format!("{args:?}"))
    }

    /// Any program, spoken to by lines on its standard input and output.
    fn spawn_command(mut command: Command, what: &str) -> Result<Helper, String> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {what}: {e}"))?;
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
    let socketio = SocketIo::at(&settings.socketio)?;
    // A few hundred over the sessions: the runtime, pipes, the servers' listeners.
    common::raise_open_file_limit(settings.sessions as u64 + 256)?;
    let (readyws_server, readyws_url) = Helper::server("readyws", None).await?;
    let (raw_server, raw_url) = Helper::server("raw", None).await?;
    // The Redis store's figures come from a server on a redis-server of the run's own, with the
    // persistence the no-loss guarantee needs (appendfsync always).
    let redis = tokio::task::spawn_blocking(readyws_tests::cluster::RedisProcess::start)
        .await
        .map_err(|e| e.to_string())??;
    let (redis_server, redis_url) = Helper::server("readyws", Some(&redis.url())).await?;
    let (socketio_server, socketio_url) = socketio.server().await?;
    let mut socketio_client = socketio.client()?;
    let (readyws_pid, raw_pid, redis_pid, socketio_pid) = (
        readyws_server.pid(),
        raw_server.pid(),
        redis_server.pid(),
        socketio_server.pid(),
    );

    let mut ready = ReadyRuns::default();
    let mut throughput = ThroughputRuns::default();
    let n = settings.messages;
    for run in 0..settings.runs {
        progress(&format!(
            "run {} of {}: time to ready, {} trials of each",
            run + 1,
            settings.runs,
            settings.trials
        ));
        let (readyws, raw) =
            figures::time_to_ready(&readyws_url, Some(&raw_url), settings.trials).await?;
        ready.readyws.push(readyws);
        ready.raw.push(raw);
        let (on_redis, _) = figures::time_to_ready(&redis_url, None, settings.trials).await?;
        ready.redis.push(on_redis);
        ready.socketio.push(
            socketio::time_to_ready(&mut socketio_client, &socketio_url, settings.trials).await?,
        );

        progress(&format!(
            "run {}: throughput, {n} messages each way",
            run + 1
        ));
        let t = &mut throughput;
        t.readyws
            .up
            .push(figures::readyws_upload(&readyws_url, &readyws_pid, n, run).await?);
        t.naive
            .up
            .push(figures::naive_upload(&raw_url, &raw_pid, n).await?);
        t.pipelined
            .up
            .push(figures::pipelined_upload(&raw_url, &raw_pid, n).await?);
        t.socketio.up.push(
            socketio::throughput(&mut socketio_client, &socketio_pid, &socketio_url, "up", n)
                .await?,
        );
        t.redis
            .up
            .push(figures::readyws_upload(&redis_url, &redis_pid, n, run).await?);
        t.readyws
            .down
            .push(figures::readyws_download(&readyws_url, &readyws_pid, n, run).await?);
        t.naive
            .down
            .push(figures::naive_download(&raw_url, &raw_pid, n).await?);
        t.pipelined
            .down
            .push(figures::pipelined_download(&raw_url, &raw_pid, n).await?);
        t.socketio.down.push(
            socketio::throughput(
                &mut socketio_client,
                &socketio_pid,
                &socketio_url,
                "down",
                n,
            )
            .await?,
        );
        t.redis
            .down
            .push(figures::readyws_download(&redis_url, &redis_pid, n, run).await?);
        t.redis_alone
            .push(figures::redis_hold_and_release(&redis.url(), n, run).await?);
        let last = |samples: &[figures::Sample]| samples.last().map_or(0.0, |s| s.rate);
        progress(&format!(
            "run {}: messages/s up: readyws {:.0}, naive {:.0}, pipelined {:.0}, Socket.IO {:.0}, on Redis {:.0}; down: readyws {:.0}, naive {:.0}, pipelined {:.0}, Socket.IO {:.0}, on Redis {:.0}, Redis alone {:.0}",
            run + 1,
            last(&t.readyws.up),
            last(&t.naive.up),
            last(&t.pipelined.up),
            last(&t.socketio.up),
            last(&t.redis.up),
            last(&t.readyws.down),
            last(&t.naive.down),
            last(&t.pipelined.down),
            last(&t.socketio.down),
            last(&t.redis.down),
            t.redis_alone.last().copied().unwrap_or(0.0),
        ));
    }
    drop((
        readyws_server,
        raw_server,
        redis_server,
        socketio_server,
        socketio_client,
    ));

    let count = settings.sessions.to_string();
    let mut many = SessionRuns::default();
    for run in 0..settings.session_runs {
        let label = format!("run {} of {}:", run + 1, settings.session_runs);
        progress(&format!(
            "{label} {} raw sessions at once",
            settings.sessions
        ));
        let (raw, _) = many_sessions("raw", None, &count).await?;
        many.raw.push(raw.per_session(settings.sessions));
        progress(&format!(
            "{label} {} readyws sessions at once, then a restart",
            settings.sessions
        ));
        let (readyws, storm) = many_sessions("readyws", None, &count).await?;
        many.readyws.push(readyws.per_session(settings.sessions));
        many.storms
            .push(storm.ok_or("the readyws swarm ran no storm")?);
        progress(&format!("{label} the same on the Redis store"));
        let (on_redis, storm) = many_sessions("readyws", Some(&redis.url()), &count).await?;
        many.redis.push(on_redis.per_session(settings.sessions));
        many.storms_redis
            .push(storm.ok_or("the readyws swarm on Redis ran no storm")?);
        progress(&format!(
            "{label} {} Socket.IO sockets at once",
            settings.sessions
        ));
        let opened = socketio.open_many(settings.sessions).await?;
        many.socketio.push(SessionsRun {
            ready_ms: opened.ready_ms,
            failed: opened.failed,
            client_bytes: per_session(
                opened.client_rss_before,
                opened.client_rss_after,
                settings.sessions,
            ),
            server_bytes: per_session(
                opened.server_rss_before,
                opened.server_rss_after,
                settings.sessions,
            ),
        });
    }

    let figures = Figures {
        runs: settings.runs,
        trials: settings.trials,
        messages: settings.messages,
        sessions: settings.sessions,
        ready,
        throughput,
        many,
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

/// Resident memory grown per session.
fn per_session(before: u64, after: u64, sessions: usize) -> f64 {
    after.saturating_sub(before) as f64 / sessions.max(1) as f64
}

/// The figures of `count` sessions of `kind` opened at once, each side in a fresh process.
struct Sessions {
    opened: swarm::Opened,
    server_rss_before: u64,
    server_rss_after: u64,
}

impl Sessions {
    fn per_session(&self, sessions: usize) -> SessionsRun {
        SessionsRun {
            ready_ms: self.opened.ready_ms,
            failed: self.opened.failed,
            client_bytes: per_session(self.opened.rss_before, self.opened.rss_after, sessions),
            server_bytes: per_session(self.server_rss_before, self.server_rss_after, sessions),
        }
    }
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
