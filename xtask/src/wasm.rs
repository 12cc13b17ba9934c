//! `cargo xtask wasm`: builds the browser package into `wasm/pkg/` and reports its size.
//!
//! The tools are installed when missing: the wasm32 target (rustup), `wasm-bindgen-cli` at
//! exactly the version of `wasm-bindgen` in `Cargo.lock` (the CLI refuses modules made by any
//! other version), and from npm binaryen (for `wasm-opt`), esbuild (to minify the JS glue) and
//! TypeScript (to check the generated types from a user's side).
//!
//! `wasm-opt` runs on wasm-bindgen's output, not on the compiler's: wasm-bindgen drops the
//! describe functions but leaves the closure shims they reached in the function table, for an
//! optimiser to remove afterwards (42,003 → 40,057 bytes gzipped, measured on the same build).
//! Before wasm-bindgen it must not run at all: version 132's `-Oz` there rewrites what
//! wasm-bindgen later reads, and the package it produced trapped in `send`. binaryen comes from
//! npm, pinned, because Debian's version 108 predates `table.fill`, which wasm-bindgen's output
//! contains.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{WASM_TARGET, cargo, ensure_wasm_target, gzip_len, output, workspace_root, write};

/// The minifier for the JS glue, pinned so that sizes compare from one run to the next.
const ESBUILD: &str = "esbuild@0.25.12";

/// The compiler that checks the generated TypeScript types from a user's side.
const TYPESCRIPT: &str = "typescript@5.9.3";

/// The optimiser of the package's module (`wasm-opt`), pinned so that sizes compare from one run
/// to the next.
const BINARYEN: &str = "binaryen@132.0.0";

/// The size profiler of `cargo xtask wasm`, installed when missing.
const TWIGGY_VERSION: &str = "0.8.0";

/// The features Rust 1.82 and later enable for `wasm32-unknown-unknown` by default.
const WASM_OPT_FEATURES: [&str; 6] = [
    "--enable-bulk-memory",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// The sizes of the built package, in bytes.
#[derive(Debug)]
pub(crate) struct PackageSize {
    pub(crate) wasm: usize,
    pub(crate) wasm_gzip: usize,
    pub(crate) glue: usize,
    pub(crate) glue_gzip: usize,
}

impl PackageSize {
    pub(crate) fn total_gzip(&self) -> usize {
        self.wasm_gzip + self.glue_gzip
    }
}

/// The version of a package in `Cargo.lock`.
pub(crate) fn locked_version(package: &str) -> Result<String, String> {
    let lock = fs::read_to_string(workspace_root().join("Cargo.lock"))
        .map_err(|e| format!("reading Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"") {
            if let Some(version) = lines
                .next()
                .and_then(|line| line.strip_prefix("version = \""))
                .and_then(|rest| rest.strip_suffix('"'))
            {
                return Ok(version.to_owned());
            }
        }
    }
    Err(format!("Cargo.lock has no package `{package}`"))
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"));
    home.join("bin").join(name)
}

/// The `wasm-bindgen` binary at the locked version, installed when missing.
pub(crate) fn ensure_wasm_bindgen() -> Result<PathBuf, String> {
    let version = locked_version("wasm-bindgen")?;
    let binary = cargo_bin("wasm-bindgen");
    let installed = output(binary.to_str().unwrap_or("wasm-bindgen"), &["--version"]).ok();
    if installed
        .as_deref()
        .is_some_and(|text| text.split_whitespace().nth(1) == Some(version.as_str()))
    {
        println!("    wasm-bindgen-cli {version} already installed");
        return Ok(binary);
    }
    println!("    installing wasm-bindgen-cli {version} (the version in Cargo.lock)");
    // `--locked` first, for the dependency versions the CLI was released with; a lock file
    // naming a version the registry no longer serves falls back to a fresh resolution.
    let install = |locked: bool| {
        let mut args = vec!["install", "wasm-bindgen-cli", "--version", &version];
        if locked {
            args.push("--locked");
        }
        cargo(&args, &[])
    };
    install(true)
        .or_else(|_| install(false))
        .map_err(|error| format!("could not install wasm-bindgen-cli {version}: {error}"))?;
    Ok(binary)
}

/// Installs a Debian package that provides `binary`, unless `binary` is already on the PATH.
pub(crate) fn ensure_debian_tool(binary: &str, package: &str) -> Result<(), String> {
    if Command::new("which")
        .arg(binary)
        .output()
        .is_ok_and(|out| out.status.success())
    {
        println!("    {binary} already installed");
        return Ok(());
    }
    println!("    installing Debian's {package} for {binary}");
    install_debian_package(package).map_err(|error| {
        format!(
            "{error}\n  `{binary}` is missing and could not be installed: run `apt-get install {package}` as root"
        )
    })
}

/// `apt-get install package`, after an index update.
pub(crate) fn install_debian_package(package: &str) -> Result<(), String> {
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("could not run apt-get: {e}"))
            .and_then(|status| {
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("apt-get {} exited with {status}", args.join(" ")))
                }
            })
    };
    apt(&["update", "-qq"])
        .and_then(|()| apt(&["install", "-y", "-qq", package]))
        .map_err(|error| format!("{error}\n  run `apt-get install {package}` as root"))
}

/// The npm tools of the build, under `target/xtask/npm`, installed when missing or at another
/// version; returns the folder of their executables.
pub(crate) fn ensure_npm_tools() -> Result<PathBuf, String> {
    let dir = crate::target_dir().join("xtask").join("npm");
    let bin = dir.join("node_modules").join(".bin");
    let installed = |tool: &str, version: &str| {
        output(path_str(&bin.join(tool)).unwrap_or(tool), &["--version"])
            .is_ok_and(|text| text.trim().trim_start_matches("Version ") == version)
    };
    // `wasm-opt --version` prints `wasm-opt version 132 (version_132)`.
    let binaryen_installed = output(
        path_str(&bin.join("wasm-opt")).unwrap_or("wasm-opt"),
        &["--version"],
    )
    .is_ok_and(|text| {
        let major = version_of(BINARYEN).split('.').next().unwrap_or_default();
        text.split_whitespace().nth(2) == Some(major)
    });
    if installed("esbuild", version_of(ESBUILD))
        && installed("tsc", version_of(TYPESCRIPT))
        && binaryen_installed
    {
        println!("    {ESBUILD}, {TYPESCRIPT} and {BINARYEN} already installed");
        return Ok(bin);
    }
    println!(
        "    installing {ESBUILD}, {TYPESCRIPT} and {BINARYEN} with npm into {}",
        dir.display()
    );
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    output(
        "npm",
        &[
            "install",
            "--prefix",
            path_str(&dir)?,
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--silent",
            ESBUILD,
            TYPESCRIPT,
            BINARYEN,
        ],
    )
    .map_err(|error| {
        format!(
            "{error}\n  the package build needs Node.js and npm (Debian: apt-get install nodejs npm)"
        )
    })?;
    Ok(bin)
}

fn version_of(package: &str) -> &str {
    package.rsplit('@').next().unwrap_or(package)
}

/// Type-checks `wasm/examples/typescript/usage.ts` against the package's generated types.
pub(crate) fn typecheck_example() -> Result<(), String> {
    let bin = ensure_npm_tools()?;
    let project = workspace_root()
        .join("wasm")
        .join("examples")
        .join("typescript");
    output(
        path_str(&bin.join("tsc"))?,
        &["--project", path_str(&project)?, "--pretty", "false"],
    )
    .map(|_| ())
}

/// Builds the package into `wasm/pkg/` and returns its sizes.
pub(crate) fn build_package() -> Result<PackageSize, String> {
    ensure_wasm_target()?;
    let wasm_bindgen = ensure_wasm_bindgen()?;
    let npm_bin = ensure_npm_tools()?;
    let wasm_opt = npm_bin.join("wasm-opt");
    let root = workspace_root();
    cargo(
        &[
            "build",
            "-p",
            "readyws-wasm",
            "--target",
            WASM_TARGET,
            "--profile",
            "wasm-release",
            "--features",
            "bundle",
        ],
        &[],
    )?;
    let built = crate::target_dir()
        .join(WASM_TARGET)
        .join("wasm-release")
        .join("readyws_wasm.wasm");
    let pkg = root.join("wasm").join("pkg");
    if pkg.exists() {
        fs::remove_dir_all(&pkg).map_err(|e| format!("clearing {}: {e}", pkg.display()))?;
    }
    output(
        path_str(&wasm_bindgen)?,
        &[
            "--target",
            "web",
            "--out-dir",
            path_str(&pkg)?,
            "--out-name",
            "readyws",
            "--remove-name-section",
            "--remove-producers-section",
            path_str(&built)?,
        ],
    )?;
    let module = pkg.join("readyws_bg.wasm");
    optimize(&wasm_opt, &module, &module, false)?;
    // wasm-bindgen writes readable glue; the package ships it minified, as a bundler would serve
    // it, which is also how the JavaScript clients it is compared with are measured.
    let esbuild = npm_bin.join("esbuild");
    let glue_path = pkg.join("readyws.js");
    let glue_path = path_str(&glue_path)?;
    output(
        path_str(&esbuild)?,
        &[
            glue_path,
            "--minify",
            "--format=esm",
            "--target=es2020",
            "--allow-overwrite",
            &format!("--outfile={glue_path}"),
            "--log-level=warning",
        ],
    )?;
    write(&pkg.join("package.json"), &package_json()?)?;
    // The Node.js entry, the package's README and the licences travel with the package.
    for (from, to) in [
        (root.join("wasm/js/node.js"), "node.js"),
        (root.join("wasm/js/node.d.ts"), "node.d.ts"),
        (root.join("wasm/README.md"), "README.md"),
        (root.join("LICENSE-MIT"), "LICENSE-MIT"),
        (root.join("LICENSE-APACHE"), "LICENSE-APACHE"),
    ] {
        fs::copy(&from, pkg.join(to))
            .map_err(|e| format!("copying {} into the package: {e}", from.display()))?;
    }
    let wasm = pkg.join("readyws_bg.wasm");
    let glue = pkg.join("readyws.js");
    let size = PackageSize {
        wasm: file_len(&wasm)?,
        wasm_gzip: gzip_len(&wasm)?,
        glue: file_len(&glue)?,
        glue_gzip: gzip_len(&glue)?,
    };
    println!("    package: {}", pkg.display());
    println!(
        "    readyws_bg.wasm {:>7} bytes, {:>6} gzipped",
        size.wasm, size.wasm_gzip
    );
    println!(
        "    readyws.js      {:>7} bytes, {:>6} gzipped",
        size.glue, size.glue_gzip
    );
    println!(
        "    wasm + JS glue  {:>7} bytes, {:>6} gzipped",
        size.wasm + size.glue,
        size.total_gzip()
    );
    Ok(size)
}

/// `cargo xtask wasm`'s size profile: the same build optimised keeping its function names
/// (`wasm-opt -g`, `wasm-bindgen --keep-debug`), measured with `twiggy`, and summed by the crate
/// each function comes from. Shares are of the code and data the package ships (the names are
/// not shipped), before gzip.
pub(crate) fn print_profile() -> Result<(), String> {
    let twiggy = cargo_bin("twiggy");
    let installed = output(path_str(&twiggy)?, &["--version"])
        .is_ok_and(|text| text.split_whitespace().nth(1) == Some(TWIGGY_VERSION));
    if !installed {
        println!("    installing twiggy {TWIGGY_VERSION} for the size profile");
        cargo(
            &["install", "twiggy", "--version", TWIGGY_VERSION, "--locked"],
            &[],
        )?;
    }
    let built = crate::target_dir()
        .join(WASM_TARGET)
        .join("wasm-release")
        .join("readyws_wasm.wasm");
    let wasm_opt = ensure_npm_tools()?.join("wasm-opt");
    let out = crate::target_dir().join("xtask").join("named");
    output(
        path_str(&ensure_wasm_bindgen()?)?,
        &[
            "--target",
            "web",
            "--keep-debug",
            "--out-dir",
            path_str(&out)?,
            "--out-name",
            "readyws",
            path_str(&built)?,
        ],
    )?;
    let profiled = out.join("readyws_bg.wasm");
    optimize(&wasm_opt, &profiled, &profiled, true)?;
    let listing = output(
        path_str(&twiggy)?,
        &[
            "top",
            "-n",
            "1000000",
            "--format",
            "json",
            path_str(&profiled)?,
        ],
    )?;
    let items: Vec<serde_json::Value> =
        serde_json::from_str(&listing).map_err(|e| format!("twiggy gave no JSON: {e}"))?;
    let mut by_crate: Vec<(String, u64)> = Vec::new();
    for item in &items {
        let name = item["name"].as_str().unwrap_or_default();
        let size = item["shallow_size"].as_u64().unwrap_or(0);
        let Some(owner) = owner_of(name) else {
            continue;
        };
        match by_crate.iter_mut().find(|(known, _)| *known == owner) {
            Some((_, total)) => *total += size,
            None => by_crate.push((owner, size)),
        }
    }
    by_crate.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    let total: u64 = by_crate.iter().map(|(_, size)| size).sum();
    println!("    size by crate (code and data before gzip, {total} bytes):");
    for (owner, size) in by_crate.iter().take(14) {
        println!(
            "    {size:>8} bytes {:>5.1}%  {owner}",
            *size as f64 * 100.0 / total.max(1) as f64
        );
    }
    Ok(())
}

/// `wasm-opt -Oz --converge` from `input` to `output` (the same path is allowed), keeping the
/// function names when `keep_names` (for the size profile).
fn optimize(
    wasm_opt: &Path,
    input: &Path,
    output_path: &Path,
    keep_names: bool,
) -> Result<(), String> {
    let mut args = vec!["-Oz", "--converge"];
    if keep_names {
        args.push("-g");
    }
    args.extend(WASM_OPT_FEATURES);
    args.extend([path_str(input)?, "-o", path_str(output_path)?]);
    output(path_str(wasm_opt)?, &args).map(|_| ())
}

/// Where a `twiggy` item comes from: the first crate its name mentions, `data`, the
/// package's exported functions, or `None` for what is not shipped (names, custom sections).
fn owner_of(name: &str) -> Option<String> {
    if name.contains("names\" subsection") || name.starts_with("custom section") {
        return None;
    }
    if name.starts_with("data segment") {
        return Some("data".to_owned());
    }
    if name.starts_with("import ") {
        return Some("(imports from the JS glue)".to_owned());
    }
    if !name.contains("::") {
        // Exports and glue wasm-bindgen writes (`readyclient_send`, `__externref_table_alloc`).
        return Some("(exports and wasm-bindgen glue)".to_owned());
    }
    // `<alloc::vec::Vec<T> as core::ops::Drop>::drop`: the type's crate owns the code.
    let path = name.trim_start_matches(['<', '&', '*', ' ']);
    let path = path.strip_prefix("mut ").unwrap_or(path);
    let path = path.strip_prefix("dyn ").unwrap_or(path);
    // `<T as core::fmt::Display>::fmt`: a generic's code belongs to the trait's crate.
    let path = match path.split_once(" as ") {
        Some((generic, rest)) if !generic.contains("::") => rest,
        _ => path,
    };
    let first = path.split("::").next().unwrap_or(path);
    // `core[c5930c85a12de822]`: the hash of a precompiled standard crate.
    let first = first.split('[').next().unwrap_or(first);
    Some(match first {
        "core" if path.contains("::fmt") => "core::fmt".to_owned(),
        "alloc" if path.contains("::collections") => "alloc::collections".to_owned(),
        "__rustc" => "alloc".to_owned(),
        _ => first.to_owned(),
    })
}

/// The files a user of the npm package relies on: both entries with their types, the module,
/// the README and the licences.
const PACKAGE_FILES: [&str; 9] = [
    "package.json",
    "readyws.js",
    "readyws.d.ts",
    "readyws_bg.wasm",
    "node.js",
    "node.d.ts",
    "README.md",
    "LICENSE-MIT",
    "LICENSE-APACHE",
];

/// `npm pack --dry-run` in `wasm/pkg/`: what would be published must hold [`PACKAGE_FILES`].
pub(crate) fn check_package_contents() -> Result<(), String> {
    let pkg = workspace_root().join("wasm").join("pkg");
    let listing = Command::new("npm")
        .args(["pack", "--dry-run", "--json"])
        .current_dir(&pkg)
        .output()
        .map_err(|e| format!("could not run npm (Debian: apt-get install npm): {e}"))?;
    if !listing.status.success() {
        return Err(format!(
            "npm pack --dry-run failed: {}",
            String::from_utf8_lossy(&listing.stderr)
        ));
    }
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout)
        .map_err(|e| format!("npm pack --dry-run --json gave no JSON: {e}"))?;
    let packed: Vec<&str> = listing[0]["files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .filter_map(|file| file["path"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let missing: Vec<&str> = PACKAGE_FILES
        .into_iter()
        .filter(|file| !packed.contains(file))
        .collect();
    if missing.is_empty() {
        println!("    npm pack would publish {}", packed.join(", "));
        Ok(())
    } else {
        Err(format!(
            "npm pack would leave out {}; it lists {}",
            missing.join(", "),
            packed.join(", ")
        ))
    }
}

fn package_json() -> Result<String, String> {
    let version = env!("CARGO_PKG_VERSION");
    Ok(format!(
        r#"{{
  "name": "readyws",
  "version": "{version}",
  "description": "Browser client of the readyws v1 WebSocket protocol: messages wait for connection_ready, survive reconnects, and are acknowledged",
  "license": "MIT OR Apache-2.0",
  "repository": {{ "type": "git", "url": "git+https://github.com/readyws/readyws.git", "directory": "wasm" }},
  "keywords": ["websocket", "reconnect", "wasm", "worker", "acknowledgement"],
  "type": "module",
  "main": "readyws.js",
  "module": "readyws.js",
  "types": "readyws.d.ts",
  "exports": {{
    ".": {{
      "node": {{ "types": "./node.d.ts", "default": "./node.js" }},
      "types": "./readyws.d.ts",
      "default": "./readyws.js"
    }},
    "./readyws_bg.wasm": "./readyws_bg.wasm",
    "./package.json": "./package.json"
  }},
  "files": ["readyws.js", "readyws.d.ts", "readyws_bg.wasm", "readyws_bg.wasm.d.ts", "node.js", "node.d.ts", "README.md", "LICENSE-MIT", "LICENSE-APACHE"],
  "sideEffects": false,
  "engines": {{ "node": ">=20" }}
}}
"#
    ))
}

pub(crate) fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

fn file_len(path: &Path) -> Result<usize, String> {
    fs::metadata(path)
        .map(|meta| meta.len() as usize)
        .map_err(|e| format!("reading {}: {e}", path.display()))
}
