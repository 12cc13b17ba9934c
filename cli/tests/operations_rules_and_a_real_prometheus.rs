//! `docs/operations/`: the alerting and recording rules pass `promtool`, and a real Prometheus
//! (Debian's `prometheus`, started here on 127.0.0.1) scrapes `readyws serve` and answers a query
//! for a readyws metric with the value this test caused.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn operations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations")
}

fn tool(name: &str) -> Command {
    // `cargo xtask test` installs Debian's `prometheus`, which brings `promtool`.
    Command::new(name)
}

#[test]
fn the_rules_pass_promtool() {
    let dir = operations();
    let check = tool("promtool")
        .args(["check", "rules", "readyws.rules.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool runs (Debian: apt-get install prometheus)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = tool("promtool")
        .args(["test", "rules", "readyws.rules.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool runs");
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

/// A process killed when dropped, with its scratch folder removed.
struct Scratch {
    child: Child,
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The TCP port process `pid` listens on, found from its socket descriptors and
/// `/proc/net/tcp`: Prometheus is told port 0 and does not log the port it got.
fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let target = std::fs::read_link(entry.path()).ok()?;
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.push(inode.to_owned());
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local address, state 0A (listen), inode
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != "0A" || !inodes.iter().any(|known| known == inode) {
            return None;
        }
        u16::from_str_radix(local.split(':').nth(1)?, 16).ok()
    })
}

async fn query(prometheus: &str, expr: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={expr}");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {prometheus}\r\nconnection: close\r\n\r\n");
    let (status, body) = support::http(prometheus, request.as_bytes()).await;
    if status != 200 {
        return None;
    }
    let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_serve_and_sees_what_happened() {
    let (_server, address) = support::serve(&["--api-key", "k"]);
    // Three messages for a user who is away: held, so `readyws_mailbox_messages` reads 3.
    for n in 1..=3 {
        let (status, body) = support::publish(&address, "k", "away", &n.to_string()).await;
        assert_eq!(status, 202, "{body}");
    }

    let dir = std::env::temp_dir().join(format!("readyws-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: readyws\n    static_configs:\n      - targets: ['{address}']\n",
            operations().join("readyws.rules.yml").display()
        ),
    )
    .expect("config written");
    let child = tool("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus runs (Debian: apt-get install prometheus)");
    let prometheus = Scratch { child, dir };

    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let Some(port) = listening_port(prometheus.child.id()) {
            break port;
        }
        assert!(Instant::now() < deadline, "prometheus never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at = format!("127.0.0.1:{port}");
    let mut seen = None;
    while Instant::now() < deadline {
        seen = query(&at, "readyws_mailbox_messages").await;
        if seen == Some(3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        seen,
        Some(3.0),
        "Prometheus's reading of readyws_mailbox_messages"
    );
    // A counter that nothing has touched is there from the start, at 0.
    assert_eq!(
        query(
            &at,
            "readyws_store_failures_total%7Boperation%3D%22commit%22%7D"
        )
        .await,
        Some(0.0)
    );
}
