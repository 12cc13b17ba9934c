//! The browser tests: the wasm client in headless Chromium against a real `readyws serve`.
//!
//! The harness starts `readyws serve` on 127.0.0.1 behind a TCP proxy that the tests steer over
//! plain HTTP (CORS-open, loopback only), so that a test in the page can make the network fail
//! on cue:
//!
//! | request | effect |
//! |---|---|
//! | `GET /drop` | cuts every proxied connection; the server keeps its sessions |
//! | `GET /stall` | stops forwarding server → client bytes (acks and messages hang) |
//! | `GET /stop` | kills the server; new connections are refused |
//! | `GET /connections` | answers how many proxied connections are open |
//! | `GET /restart?startup_delay_ms=N` | cuts connections, kills the server (its sessions are lost) and starts a new one, in phase "starting" for N ms |
//!
//! Then it runs the `wasm-bindgen-test` suite of `readyws-wasm` with `wasm-bindgen-test-runner`
//! and chromedriver, and finally loads the example page through WebDriver and checks a round
//! trip in its DOM. Everything stops when the harness is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::wasm::{ensure_debian_tool, ensure_wasm_bindgen};
use crate::{TestTotals, WASM_TARGET, cargo, cargo_test_with, workspace_root};

/// Chromium's flags for a root user on a machine with no network but loopback: no sandbox (root),
/// and none of the background connections that would fail here.
const CHROMIUM_ARGS: [&str; 9] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Installs what the browser tests need, starts the server and proxy, and runs both suites.
pub(crate) fn run(totals: &mut TestTotals) -> Result<(), String> {
    ensure_debian_tool("chromium", "chromium")?;
    ensure_debian_tool("chromedriver", "chromium-driver")?;
    let wasm_bindgen = ensure_wasm_bindgen()?;
    let runner = wasm_bindgen.with_file_name("wasm-bindgen-test-runner");
    // `cargo test --workspace` has built the binary with the workspace's features; building it
    // alone would resolve other features and rebuild half the tree.
    if !crate::target_dir().join("debug").join("readyws").exists() {
        cargo(&["build", "-p", "readyws-cli"], &[])?;
    }
    match crate::wasm::typecheck_example() {
        Ok(()) => {
            println!("test the_typescript_usage_example_type_checks ... ok");
            totals.passed += 1;
        }
        Err(problem) => {
            println!("test the_typescript_usage_example_type_checks ... FAILED\n{problem}");
            totals.failed += 1;
            return Err("the TypeScript usage example does not type-check".to_owned());
        }
    }
    let harness = Harness::start()?;
    let ws_url = format!("ws://{}/ws", harness.proxy_address);
    let control_url = format!("http://{}", harness.control_address);
    println!("    server behind the proxy at {ws_url}; control at {control_url}");
    let runner = runner.to_str().ok_or("the runner path is not UTF-8")?;
    let suite = cargo_test_with(
        &["test", "-p", "readyws-wasm", "--target", WASM_TARGET],
        &[
            ("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", runner),
            ("CHROMEDRIVER", "/usr/bin/chromedriver"),
            ("WASM_BINDGEN_TEST_TIMEOUT", "300"),
            ("READYWS_BROWSER_WS", &ws_url),
            ("READYWS_BROWSER_CONTROL", &control_url),
        ],
        totals,
    );
    let page = example_page_round_trip(&format!(
        "http://{}/examples/browser/?user=page-check",
        harness.proxy_address
    ))
    .map(|()| String::new());
    report(totals, "the_example_page_completes_a_round_trip", &page);
    let worker = page_verdict(&format!(
        "http://{}/examples/worker/?user=worker-check&control={control_url}",
        harness.proxy_address
    ));
    report(
        totals,
        "the_client_in_a_worker_keeps_every_message",
        &worker,
    );
    let vite = build_vite_app().and_then(|()| {
        page_verdict(&format!(
            "http://{}/examples/vite/dist/?user=vite-check",
            harness.proxy_address
        ))
    });
    report(totals, "the_package_works_in_a_vite_build", &vite);
    // Node 22 has a global WebSocket; Node 20 needs the flag, which Node 22 still accepts.
    let node = node_script(
        "client_on_node_keeps_every_message.mjs",
        "--experimental-websocket",
        &[&ws_url, &control_url],
    );
    report(totals, "the_client_on_node_keeps_every_message", &node);
    let no_socket = node_script(
        "without_websocket_the_constructor_says_why.mjs",
        "--no-experimental-websocket",
        &[],
    );
    report(
        totals,
        "without_websocket_the_constructor_says_why",
        &no_socket,
    );
    let checks = [page, worker, vite, node, no_socket];
    if suite.is_err() || checks.iter().any(Result::is_err) {
        harness.print_server_log();
    }
    suite?;
    checks.into_iter().try_for_each(|check| check.map(|_| ()))
}

/// Prints one harness check as the test runner prints a test, with its verdict when it has one,
/// and counts it.
fn report(totals: &mut TestTotals, name: &str, result: &Result<String, String>) {
    match result {
        Ok(verdict) if verdict.is_empty() => println!("test {name} ... ok"),
        Ok(verdict) => println!("test {name} ... ok ({verdict})"),
        Err(problem) => println!("test {name} ... FAILED\n    {problem}"),
    }
    if result.is_ok() {
        totals.passed += 1;
    } else {
        totals.failed += 1;
    }
}

/// Installs the Vite example's tools at the versions of its lock file (`npm ci`) and builds it
/// into `wasm/examples/vite/dist/`, which the test server serves.
fn build_vite_app() -> Result<(), String> {
    let app = workspace_root().join("wasm").join("examples").join("vite");
    let run = |program: &str, args: &[&str]| -> Result<(), String> {
        let out = Command::new(program)
            .args(args)
            .current_dir(&app)
            .output()
            .map_err(|e| format!("could not run {program} (Debian: apt-get install npm): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(
        "npm",
        &["ci", "--no-audit", "--no-fund", "--loglevel=error"],
    )?;
    run(
        "node",
        &[
            "node_modules/vite/bin/vite.js",
            "build",
            "--logLevel",
            "warn",
        ],
    )
}

/// Sets up a Node.js app under `target/xtask/node-app` that imports the built package by its
/// name, as an application would (`import … from "readyws"`, through a `node_modules` that links
/// to `wasm/pkg`), with the scripts of `wasm/tests/node/` and the shared check beside them.
fn node_app() -> Result<PathBuf, String> {
    let root = workspace_root();
    let dir = crate::target_dir().join("xtask").join("node-app");
    let modules = dir.join("node_modules");
    std::fs::create_dir_all(&modules)
        .map_err(|e| format!("creating {}: {e}", modules.display()))?;
    let link = modules.join("readyws");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(root.join("wasm").join("pkg"), &link)
        .map_err(|e| format!("linking {}: {e}", link.display()))?;
    // The shared check is a `.js` ES module: the app folder says so, as an application would.
    std::fs::write(
        dir.join("package.json"),
        "{ \"private\": true, \"type\": \"module\" }\n",
    )
    .map_err(|e| format!("writing the Node app's package.json: {e}"))?;
    let scripts = root.join("wasm").join("tests").join("node");
    let entries =
        std::fs::read_dir(&scripts).map_err(|e| format!("reading {}: {e}", scripts.display()))?;
    let mut sources: Vec<PathBuf> = entries
        .filter_map(|entry| Some(entry.ok()?.path()))
        .collect();
    sources.push(root.join("wasm/tests/js/keeps_every_message.js"));
    for from in sources {
        let name = from.file_name().unwrap_or_default();
        std::fs::copy(&from, dir.join(name))
            .map_err(|e| format!("copying {}: {e}", from.display()))?;
    }
    Ok(dir)
}

/// Runs one script of the Node app with `flag` (whether the host has a global WebSocket) and
/// returns its verdict line.
fn node_script(script: &str, flag: &str, args: &[&str]) -> Result<String, String> {
    let dir = node_app()?;
    let out = Command::new("node")
        .arg(flag)
        .arg(dir.join(script))
        .args(args)
        .output()
        .map_err(|e| format!("could not run node (Debian: apt-get install nodejs): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "node exited with {}: {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A `readyws serve` process and the address it listens on.
struct ServeProcess {
    child: Child,
    address: SocketAddr,
}

impl ServeProcess {
    fn start(startup_delay_ms: u64, log: &Arc<Mutex<Vec<String>>>) -> Result<Self, String> {
        let root = workspace_root();
        let binary = crate::target_dir().join("debug").join("readyws");
        let mut child = Command::new(&binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--insecure-dev-auth",
                "--echo",
                "--max-frame-bytes",
                "65536",
                "--startup-delay",
                &startup_delay_ms.to_string(),
                "--static",
            ])
            .arg(root.join("wasm"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", binary.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let (found, address) = mpsc::channel();
        let log = Arc::clone(log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("address=").nth(1) {
                    let text = rest.split_whitespace().next().unwrap_or_default();
                    if let Ok(address) = text.parse::<SocketAddr>() {
                        let _ = found.send(address);
                    }
                }
                if let Ok(mut log) = log.lock() {
                    log.push(line);
                }
            }
        });
        match address.recv_timeout(Duration::from_secs(20)) {
            Ok(address) => Ok(ServeProcess { child, address }),
            Err(_) => {
                let _ = child.kill();
                Err("`readyws serve` did not report its address within 20 s".to_owned())
            }
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy and the control endpoint share.
struct Shared {
    server: Mutex<Option<ServeProcess>>,
    /// Both ends of every proxied connection, to cut them on demand.
    links: Mutex<Vec<TcpStream>>,
    stalled: AtomicBool,
    /// Proxied connections whose client side is still open.
    open: AtomicUsize,
    log: Arc<Mutex<Vec<String>>>,
}

impl Shared {
    fn cut_links(&self) -> usize {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        for link in links.iter() {
            let _ = link.shutdown(Shutdown::Both);
        }
        let count = links.len() / 2;
        links.clear();
        count
    }

    fn upstream(&self) -> Option<SocketAddr> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|server| server.address)
    }

    fn control(&self, path: &str) -> Result<String, String> {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        match route {
            "/drop" => Ok(format!("cut {} connections", self.cut_links())),
            "/connections" => Ok(self.open.load(Ordering::SeqCst).to_string()),
            "/stall" => {
                self.stalled.store(true, Ordering::SeqCst);
                Ok("stalled".to_owned())
            }
            "/stop" => {
                self.cut_links();
                drop(self.server.lock().unwrap_or_else(|e| e.into_inner()).take());
                self.stalled.store(false, Ordering::SeqCst);
                Ok("stopped".to_owned())
            }
            "/restart" => {
                let delay = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("startup_delay_ms="))
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0);
                self.cut_links();
                drop(self.server.lock().unwrap_or_else(|e| e.into_inner()).take());
                self.stalled.store(false, Ordering::SeqCst);
                let server = ServeProcess::start(delay, &self.log)?;
                *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
                Ok(format!("restarted with a start-up delay of {delay} ms"))
            }
            _ => Err(format!("unknown control request {route}")),
        }
    }
}

/// The server, the proxy in front of it and the control endpoint.
struct Harness {
    shared: Arc<Shared>,
    proxy_address: SocketAddr,
    control_address: SocketAddr,
}

impl Harness {
    fn start() -> Result<Self, String> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = ServeProcess::start(0, &log)?;
        let shared = Arc::new(Shared {
            server: Mutex::new(Some(server)),
            links: Mutex::new(Vec::new()),
            stalled: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            log,
        });
        let proxy = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy: {e}"))?;
        let control = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("control: {e}"))?;
        let proxy_address = proxy.local_addr().map_err(|e| e.to_string())?;
        let control_address = control.local_addr().map_err(|e| e.to_string())?;
        let for_proxy = Arc::clone(&shared);
        thread::spawn(move || {
            for client in proxy.incoming().map_while(Result::ok) {
                proxy_one(&for_proxy, client);
            }
        });
        let for_control = Arc::clone(&shared);
        thread::spawn(move || {
            for request in control.incoming().map_while(Result::ok) {
                answer_control(&for_control, request);
            }
        });
        Ok(Harness {
            shared,
            proxy_address,
            control_address,
        })
    }

    fn print_server_log(&self) {
        let log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        println!("    last lines of the server log:");
        for line in log.iter().rev().take(40).rev() {
            println!("    | {line}");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shared.cut_links();
        drop(
            self.shared
                .server
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }
}

fn proxy_one(shared: &Arc<Shared>, client: TcpStream) {
    let Some(upstream) = shared.upstream() else {
        return; // no server: the client sees its connection refused... or closed at once
    };
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    if let Ok(mut links) = shared.links.lock() {
        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
            links.push(a);
            links.push(b);
        }
    }
    shared.open.fetch_add(1, Ordering::SeqCst);
    let for_count = Arc::clone(shared);
    thread::spawn(move || {
        pump(client, server_copy, None);
        for_count.open.fetch_sub(1, Ordering::SeqCst);
    });
    let for_stall = Arc::clone(shared);
    thread::spawn(move || pump(server, client_copy, Some(for_stall)));
}

/// Copies bytes from `from` to `to` until either side ends; server → client bytes wait while
/// the harness is stalled.
fn pump(mut from: TcpStream, mut to: TcpStream, stall: Option<Arc<Shared>>) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        while stall
            .as_ref()
            .is_some_and(|shared| shared.stalled.load(Ordering::SeqCst))
        {
            thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn answer_control(shared: &Shared, mut request: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match request.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match shared.control(path) {
        Ok(body) => ("200 OK", body),
        Err(problem) => ("500 Internal Server Error", problem),
    };
    let _ = write!(
        request,
        "HTTP/1.1 {status}\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Loads the example page in headless Chromium through WebDriver, sends a line with its form and
/// waits for the echo to appear in its log.
fn example_page_round_trip(url: &str) -> Result<(), String> {
    with_page(url, drive_page)
}

/// Loads a page that reports its own check in `#verdict` ("ok: …" or "FAILED: …") and waits for it.
fn page_verdict(url: &str) -> Result<String, String> {
    let mut verdict = String::new();
    with_page(url, |webdriver, session| {
        wait_for("the page's verdict", || {
            let value = webdriver.call(
                "POST",
                &format!("{session}/execute/sync"),
                Some(json!({
                    "script": "return document.querySelector('#verdict')?.textContent ?? ''",
                    "args": [],
                })),
            )?;
            verdict = value.as_str().unwrap_or_default().to_owned();
            Ok(verdict != "running" && !verdict.is_empty())
        })
    })?;
    if verdict.starts_with("ok") {
        Ok(verdict)
    } else {
        Err(verdict)
    }
}

/// Starts chromedriver and a headless Chromium session, opens `url`, runs `drive` with the
/// session's path (`/session/{id}`), and ends both.
fn with_page(
    url: &str,
    drive: impl FnOnce(&WebDriver, &str) -> Result<(), String>,
) -> Result<(), String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut driver = ChildGuard(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("could not start chromedriver: {e}"))?,
    );
    let webdriver = WebDriver {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let started = Instant::now();
    while webdriver.call("GET", "/status", None).is_err() {
        if started.elapsed() > Duration::from_secs(20) {
            return Err("chromedriver did not answer within 20 s".to_owned());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let session = webdriver.call(
        "POST",
        "/session",
        Some(
            json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": CHROMIUM_ARGS,
            }}}}),
        ),
    )?;
    let id = session["sessionId"]
        .as_str()
        .ok_or_else(|| format!("no session id in {session}"))?
        .to_owned();
    let session = format!("/session/{id}");
    let result = webdriver
        .call(
            "POST",
            &format!("{session}/url"),
            Some(json!({ "url": url })),
        )
        .and_then(|_| drive(&webdriver, &session));
    let _ = webdriver.call("DELETE", &format!("/session/{id}"), None);
    let _ = driver.0.kill();
    result
}

fn drive_page(webdriver: &WebDriver, session: &str) -> Result<(), String> {
    let script = |source: &str| -> Result<String, String> {
        let value = webdriver.call(
            "POST",
            &format!("{session}/execute/sync"),
            Some(json!({"script": source, "args": []})),
        )?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    };
    wait_for("the page to show the state `ready`", || {
        Ok(script("return document.querySelector('#state')?.textContent ?? ''")? == "ready")
    })?;
    let element = |selector: &str| -> Result<String, String> {
        let found = webdriver.call(
            "POST",
            &format!("{session}/element"),
            Some(json!({"using": "css selector", "value": selector})),
        )?;
        found
            .as_object()
            .and_then(|object| object.values().next())
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no element {selector}"))
    };
    let text = "hello from the page check";
    let input = element("#text")?;
    webdriver.call(
        "POST",
        &format!("{session}/element/{input}/value"),
        Some(json!({ "text": text })),
    )?;
    let button = element("#send")?;
    webdriver.call(
        "POST",
        &format!("{session}/element/{button}/click"),
        Some(json!({})),
    )?;
    wait_for(
        "the echo in the page's log, and the message acknowledged",
        || {
            let received = script(
                "return [...document.querySelectorAll('#log .received')].map(e => e.textContent).join('\\n')",
            )?;
            let acked = script(
                "return [...document.querySelectorAll('#log .sent.acked')].map(e => e.textContent).join('\\n')",
            )?;
            Ok(received.contains(text) && acked.contains(text))
        },
    )
}

fn wait_for(what: &str, mut check: impl FnMut() -> Result<bool, String>) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err(format!("gave up waiting for {what} after 20 s"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Just enough of the WebDriver protocol (HTTP/1.1, JSON) to drive one page.
struct WebDriver {
    address: SocketAddr,
}

impl WebDriver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(self.address).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        // ChromeDriver keeps the connection open despite `Connection: close`: read the head,
        // then exactly the body it announces.
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = find(&response, b"\r\n\r\n") {
                break at;
            }
            let read = stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if read == 0 {
                return Err(format!(
                    "WebDriver closed {method} {path} without an answer"
                ));
            }
            response.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .ok_or_else(|| format!("WebDriver answered {method} {path} without a length"))?;
        let mut body = response[head_end + 4..].to_vec();
        while body.len() < length {
            let read = stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if read == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..read]);
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let value: Value = serde_json::from_str(&body)
            .map_err(|e| format!("WebDriver answered {method} {path} with {body:?}: {e}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("WebDriver {method} {path}: {}", value["value"]));
        }
        Ok(value["value"].clone())
    }
}
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
