//! `cargo xtask chaos --clients N --messages M --seed S [--restarts K] [--instances I --kills K
//! [--redis-cluster]]`:
//! the chaos run at any size, with its figures as JSON on stdout; exits 1 if a message was lost,
//! duplicated or reordered. With `--instances`, the server is that many instance processes on a
//! `redis-server` of the run's own (with `--redis-cluster`, a Redis Cluster of three nodes), and
//! `--kills` of them are killed (SIGKILL) during the run.

// A command-line tool: printing the report is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Duration;

use readyws_tests::chaos::{ChaosConfig, run};

fn value(args: &[String], flag: &str) -> Option<u64> {
    args.iter()
        .position(|arg| arg == flag)
        .and_then(|at| args.get(at + 1))
        .and_then(|text| text.parse().ok())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seed = value(&args, "--seed").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64)
    });
    let config = ChaosConfig {
        clients: value(&args, "--clients").unwrap_or(100) as usize,
        messages: value(&args, "--messages").unwrap_or(10_000),
        seed,
        rate: value(&args, "--rate").unwrap_or(500),
        deadline: Duration::from_secs(value(&args, "--deadline-secs").unwrap_or(900)),
        restarts: value(&args, "--restarts").unwrap_or(0) as u32,
        instances: value(&args, "--instances").unwrap_or(0) as usize,
        kills: value(&args, "--kills").unwrap_or(0) as u32,
        redis_cluster: args.iter().any(|arg| arg == "--redis-cluster"),
        // Built beside this binary (`cargo xtask chaos` builds both).
        instance_program: std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("instance"))),
    };
    eprintln!(
        "chaos: {} clients x {} messages each way at {}/s, {} restarts, {} instances{}, {} kills, seed {}",
        config.clients,
        config.messages,
        config.rate,
        config.restarts,
        config.instances,
        if config.redis_cluster {
            " on a Redis Cluster"
        } else {
            ""
        },
        config.kills,
        config.seed
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(problem) => {
            eprintln!("chaos: cannot start the runtime: {problem}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(run(&config));
    match serde_json::to_string_pretty(&report) {
        Ok(json) => println!("{json}"),
        Err(problem) => eprintln!("chaos: {problem}"),
    }
    if report.clean() {
        ExitCode::SUCCESS
    } else {
        eprintln!("chaos: FAILED: messages were lost, duplicated or reordered, or did not settle");
        ExitCode::FAILURE
    }
}
