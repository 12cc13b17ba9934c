//! `cargo xtask fuzz [--seconds N]`: runs every `cargo fuzz` target for N seconds each (default
//! 60), after seeding their corpora from the conformance vectors. A crash fails the run; its
//! input is left in `fuzz/artifacts/TARGET/` to become a regression test.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::{cargo, output, workspace_root, write};

const TARGETS: [&str; 4] = [
    "decode",
    "client_session",
    "server_connection",
    "hub_custody",
];

/// Installs cargo-fuzz and the nightly toolchain when missing.
fn ensure_tools() -> Result<(), String> {
    if output("cargo", &["fuzz", "--version"]).is_err() {
        println!("    installing cargo-fuzz");
        cargo(&["install", "cargo-fuzz", "--locked"], &[])?;
    }
    let toolchains = output("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        println!("    installing the nightly toolchain (cargo fuzz needs it)");
        output(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    Ok(())
}

/// Seeds each target's corpus: every conformance vector's text for the decoder, and short
/// scripts built from the valid frames for the session targets.
fn seed_corpora(root: &Path) -> Result<(), String> {
    let vectors = fs::read_to_string(root.join("protocol/conformance/frames.json"))
        .map_err(|e| format!("reading the conformance vectors: {e}"))?;
    let vectors: Value = serde_json::from_str(&vectors).map_err(|e| format!("frames.json: {e}"))?;
    let texts: Vec<(String, String)> = ["valid", "invalid"]
        .iter()
        .flat_map(|group| vectors[group].as_array().cloned().unwrap_or_default())
        .filter_map(|vector| {
            Some((
                vector["sender"].as_str()?.to_owned(),
                vector["text"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let corpus = |target: &str| root.join("fuzz").join("corpus").join(target);
    for target in TARGETS {
        fs::create_dir_all(corpus(target)).map_err(|e| e.to_string())?;
    }
    for (index, (sender, text)) in texts.iter().enumerate() {
        write(&corpus("decode").join(format!("vector-{index}")), text)?;
        if sender == "server" {
            let script = format!("o\nw\nr\ns\ns\n{text}\nt\nd\nt\no\nw\nr\n");
            write(
                &corpus("client_session").join(format!("vector-{index}")),
                &script,
            )?;
        } else {
            let hello = r#"{"type":"hello","token":"u"}"#;
            let script = format!("{hello}\n{text}\nt\n{text}\n");
            write(
                &corpus("server_connection").join(format!("vector-{index}")),
                &script,
            )?;
        }
    }
    // The hub's world reads one choice from each byte or four: a few fixed, varied inputs.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for index in 0..8 {
        let length = 64 << index;
        let bytes: Vec<u8> = (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        fs::write(corpus("hub_custody").join(format!("seed-{index}")), bytes)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs every target for `seconds`.
pub(crate) fn run(seconds: u64) -> Result<(), String> {
    ensure_tools()?;
    let root = workspace_root();
    seed_corpora(&root)?;
    let fuzz_dir = root.join("fuzz");
    for target in TARGETS {
        println!("==> fuzz {target} for {seconds} s");
        let status = std::process::Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                target,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            .current_dir(&fuzz_dir)
            .status()
            .map_err(|e| format!("could not run cargo fuzz: {e}"))?;
        if !status.success() {
            return Err(format!(
                "fuzz target {target} found a failure: see fuzz/artifacts/{target}/"
            ));
        }
    }
    Ok(())
}
