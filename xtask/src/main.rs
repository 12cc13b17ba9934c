//! `cargo xtask <task>`: the project's one entry point for checks and builds.
//!
//! - `test`: everything CI runs, in order, each step timed; it installs what it needs (the wasm32
//!   target) and stops at the first failure with the step's name.
//! - `bench`: runs the measurements in release builds, each next to its baseline from the same
//!   run: handshake latency of the reference server, and the native client against raw
//!   tokio-tungstenite.
//! - `wasm-size`: builds a small browser-targeted program that drives the protocol crate's client
//!   session, and reports the size of the optimized `.wasm` raw and gzipped.

// A command-line tool: printing progress is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::env;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Crates that must never appear among the protocol crate's normal dependencies: it does no I/O.
const FORBIDDEN_IN_PROTOCOL: [&str; 5] = ["tokio", "mio", "web-sys", "js-sys", "wasm-bindgen"];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("wasm-size") => wasm_size().map(|_| ()),
        Some("bench") => bench(),
        _ => {
            eprintln!("usage: cargo xtask <test|bench|wasm-size>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

fn test() -> Result<(), String> {
    let started = Instant::now();
    step("ensure the wasm32 target is installed", ensure_wasm_target)?;
    step("cargo fmt --check", || {
        cargo(&["fmt", "--all", "--check"], &[])
    })?;
    step("cargo clippy -D warnings", || {
        cargo(
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )
    })?;
    let mut totals = TestTotals::default();
    step("cargo test", || cargo_test(&mut totals))?;
    step("cargo doc (warnings are errors)", || {
        cargo(
            &["doc", "--workspace", "--no-deps"],
            &[("RUSTDOCFLAGS", "-Dwarnings")],
        )
    })?;
    step("protocol crate builds for wasm32", || {
        cargo(
            &["check", "-p", "readyws-protocol", "--target", WASM_TARGET],
            &[],
        )
    })?;
    step(
        "protocol crate depends on no I/O crate",
        check_protocol_is_sans_io,
    )?;
    println!(
        "xtask test: all steps passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("{} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// The counts of cargo's `test result:` lines, summed over every test binary.
#[derive(Debug, Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test --workspace`, echoing its output and adding up its result lines.
fn cargo_test(totals: &mut TestTotals) -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut child = Command::new(&cargo)
        .args(["test", "--workspace"])
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| format!("could not run {cargo}: {error}"))?;
    let stdout = child.stdout.take().ok_or("cargo test has no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|error| format!("reading cargo test output: {error}"))?;
        println!("{line}");
        totals.add_line(&line);
    }
    let status = child
        .wait()
        .map_err(|error| format!("waiting for cargo test: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo test --workspace` exited with {status}"))
    }
}

fn bench() -> Result<(), String> {
    step("handshake latency of the reference server", || {
        cargo(
            &[
                "run",
                "--release",
                "--quiet",
                "-p",
                "readyws-server",
                "--example",
                "handshake_latency",
            ],
            &[],
        )
    })?;
    step("native client against raw tokio-tungstenite", || {
        cargo(
            &[
                "run",
                "--release",
                "--quiet",
                "-p",
                "readyws",
                "--example",
                "versus_raw",
            ],
            &[],
        )
    })
}

fn step(name: &str, run: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    println!("==> {name}");
    let started = Instant::now();
    let result = run();
    let seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => println!("==> {name}: ok ({seconds:.1}s)"),
        Err(_) => println!("==> {name}: FAILED ({seconds:.1}s)"),
    }
    result.map_err(|error| format!("step `{name}` failed: {error}"))
}

fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .map_err(|error| format!("could not run {cargo}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` exited with {status}", args.join(" ")))
    }
}

fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .map_err(|error| format!("could not run {program}: {error}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_wasm_target() -> Result<(), String> {
    let installed = output("rustup", &["target", "list", "--installed"]).map_err(|error| {
        format!("{error}\n  the wasm32 check needs rustup to install the `{WASM_TARGET}` target")
    })?;
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        println!("    {WASM_TARGET} already installed");
        return Ok(());
    }
    output("rustup", &["target", "add", WASM_TARGET])
        .map(|_| ())
        .map_err(|error| format!("could not install the {WASM_TARGET} target: {error}"))
}

fn check_protocol_is_sans_io() -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let tree = output(
        &cargo,
        &[
            "tree",
            "-p",
            "readyws-protocol",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--target",
            "all",
        ],
    )?;
    let found: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| FORBIDDEN_IN_PROTOCOL.contains(name))
        .collect();
    if found.is_empty() {
        println!(
            "    no {} in the dependency tree",
            FORBIDDEN_IN_PROTOCOL.join(", ")
        );
        Ok(())
    } else {
        Err(format!("readyws-protocol depends on {}", found.join(", ")))
    }
}

/// The program whose size is measured: one handshake, one message each way and an ack, so that
/// the codec, the client session, the outbox, the inbox and the backoff are all linked in.
const WASM_SIZE_PROGRAM: &str = r##"
use readyws_protocol::{Action, ClientConfig, ClientSession, Data, Time};

const WELCOME: &str = r#"{"type":"welcome","protocol":1,"server":"s","phase":"accepting","heartbeat_ms":25000,"max_frame_bytes":65536,"max_inflight":16,"resume_window_ms":60000}"#;
const READY: &str = r#"{"type":"connection_ready","session_id":"s1","resume_token":"t","resumed":false,"last_received":0,"backlog":0}"#;

#[unsafe(no_mangle)]
pub extern "C" fn drive(seed: u64, now: u64) -> u64 {
    let now = Time::from_millis(now);
    let mut session = ClientSession::new(ClientConfig::default(), seed);
    let Ok(data) = Data::from_json(format!("{{\"n\":{seed}}}")) else { return 0 };
    let _ = session.send(data, now);
    session.connect(now);
    let mut written = 0u64;
    while let Some(action) = session.poll_action() {
        if let Action::Open { conn } = action {
            session.handle_connected(conn, Some("readyws.v1"), now);
            session.handle_text(conn, WELCOME, now);
            session.handle_text(conn, READY, now);
            session.handle_text(conn, r#"{"type":"msg","id":1,"data":[1,2,3]}"#, now);
            session.handle_text(conn, r#"{"type":"ack","id":1}"#, now);
        }
    }
    while let Some(transmit) = session.poll_transmit() {
        written += transmit.text.len() as u64;
    }
    while session.poll_event().is_some() {
        written += 1;
    }
    written + session.poll_timeout().map_or(0, Time::as_millis)
}
"##;

/// Builds [`WASM_SIZE_PROGRAM`] for the browser with the size-first profile and reports its size.
fn wasm_size() -> Result<u64, String> {
    ensure_wasm_target()?;
    let root = workspace_root();
    let dir = root.join("target").join("xtask").join("wasm-size");
    fs::create_dir_all(dir.join("src")).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let manifest = format!(
        r#"[package]
name = "readyws-wasm-size"
version = "0.0.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
readyws-protocol = {{ path = "{}" }}

[profile.release]
opt-level = "z"
lto = true
codegen-units = 1
panic = "abort"
strip = true

[workspace]
"#,
        root.join("protocol").display()
    );
    write(&dir.join("Cargo.toml"), &manifest)?;
    write(&dir.join("src").join("lib.rs"), WASM_SIZE_PROGRAM)?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(["build", "--release", "--target", WASM_TARGET])
        .env(
            "CARGO_TARGET_DIR",
            root.join("target").join("xtask").join("target"),
        )
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the size probe exited with {status}"));
    }
    let wasm = root
        .join("target/xtask/target")
        .join(WASM_TARGET)
        .join("release/readyws_wasm_size.wasm");
    let bytes = fs::read(&wasm).map_err(|e| format!("reading {}: {e}", wasm.display()))?;
    let gzipped = gzip_len(&wasm)?;
    println!(
        "readyws-protocol client session for {WASM_TARGET} (opt-level z, LTO, panic=abort, no wasm-opt): {} bytes, {} bytes gzipped",
        bytes.len(),
        gzipped
    );
    Ok(bytes.len() as u64)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    let mut file =
        fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn gzip_len(path: &Path) -> Result<usize, String> {
    let path = path.to_str().ok_or("the wasm path is not UTF-8")?;
    let out = Command::new("gzip")
        .args(["-9", "-c", path])
        .output()
        .map_err(|e| format!("could not run gzip: {e}"))?;
    if !out.status.success() {
        return Err(format!("gzip exited with {}", out.status));
    }
    Ok(out.stdout.len())
}
