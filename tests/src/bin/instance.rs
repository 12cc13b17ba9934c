//! One reference server instance on the Redis store, in a process of its own, so that a suite can
//! kill it the hard way (SIGKILL: no `goaway`, no release of its sessions) and see what another
//! instance makes of what it left in Redis.
//!
//! `instance --redis URL [--prefix P] [--resume-window-ms N] [--heartbeat-ms N]` prints
//! `listening ADDRESS`, then a line `received MICROS USER DATA` for every client message (the
//! wall clock in microseconds, to merge the lines of several instances), written and flushed
//! before its `ack` can leave, so that the suite knows what reached an application even from an
//! instance it killed.

// A test tool: its stdout is its report.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use readyws_protocol::ServerConfig;
use readyws_server::{
    Decision, Inbound, InsecureDevAuth, MailboxLimits, RedisStore, Server, ServerHandle,
    ServerOptions,
};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .cloned()
}

fn record(_: &ServerHandle, message: Inbound<'_>) -> Decision {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    let mut out = std::io::stdout().lock();
    let written = writeln!(
        out,
        "received {micros} {} {}",
        message.user,
        message.data.as_json()
    )
    .and_then(|()| out.flush());
    match written {
        Ok(()) => Decision::Accept,
        // Without its record the suite could not tell; the client sends it again later.
        Err(problem) => Decision::Refuse {
            code: "unavailable".to_owned(),
            reason: problem.to_string(),
        },
    }
}

async fn run(args: Vec<String>) -> Result<(), String> {
    let url = flag(&args, "--redis").ok_or("--redis URL is required")?;
    let prefix = flag(&args, "--prefix").unwrap_or_else(|| "readyws".to_owned());
    let millis = |name: &str, default: u64| {
        Duration::from_millis(
            flag(&args, name)
                .and_then(|text| text.parse().ok())
                .unwrap_or(default),
        )
    };
    let protocol = ServerConfig::default()
        .resume_window(millis("--resume-window-ms", 120_000))
        .heartbeat(millis("--heartbeat-ms", 25_000))
        .hello_timeout(millis("--hello-timeout-ms", 10_000));
    let mailbox = MailboxLimits {
        max_messages: flag(&args, "--mailbox-max-messages")
            .and_then(|text| text.parse().ok())
            .unwrap_or(1000),
        max_bytes: 64 << 20,
        ..MailboxLimits::default()
    };
    let store = RedisStore::connect(&url)
        .await
        .map_err(|problem| problem.to_string())?
        .with_prefix(prefix);
    let options = ServerOptions::default()
        .protocol(protocol)
        .mailbox(mailbox)
        .redis(store);
    let server = Server::new(options, InsecureDevAuth, record);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|problem| problem.to_string())?;
    let address = listener
        .local_addr()
        .map_err(|problem| problem.to_string())?;
    println!("listening {address}");
    std::io::stdout()
        .flush()
        .map_err(|problem| problem.to_string())?;
    server
        .serve(listener, std::future::pending())
        .await
        .map_err(|problem| problem.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(problem) => {
            eprintln!("instance: cannot start the runtime: {problem}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("instance: {problem}");
            ExitCode::FAILURE
        }
    }
}
