//! `docs/BENCHMARKS.md`: the table of one run, its plots, and how each baseline is built.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Sessions;
use crate::common::{MESSAGE_BYTES, median};
use crate::swarm::{STORM_BUCKET_MS, Storm};

/// The browser package's gzipped sizes, as `cargo xtask bench` measured them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PackageSizes {
    pub(crate) wasm_gzip: u64,
    pub(crate) glue_gzip: u64,
}

impl PackageSizes {
    /// `WASM_GZIP,GLUE_GZIP` in bytes.
    pub(crate) fn parse(text: &str) -> Option<PackageSizes> {
        let (wasm, glue) = text.split_once(',')?;
        Some(PackageSizes {
            wasm_gzip: wasm.trim().parse().ok()?,
            glue_gzip: glue.trim().parse().ok()?,
        })
    }

    fn total(self) -> u64 {
        self.wasm_gzip + self.glue_gzip
    }
}

/// The JavaScript clients readyws competes with in the browser: each package's client entry point
/// bundled alone with esbuild 0.25 (`--bundle --minify --format=esm --platform=browser`), then
/// `gzip -9`, in bytes; measured on 2026-11-29.
const BROWSER_ANCHORS: [(&str, &str, u64); 7] = [
    ("socket.io-client", "4.8.4", 13_537),
    ("centrifuge", "5.8.0", 23_656),
    ("@microsoft/signalr", "10.0.11", 14_706),
    ("phoenix", "1.8.16", 7_777),
    ("graphql-ws", "6.4.2", 3_455),
    ("reconnecting-websocket", "4.4.0", 3_333),
    ("@rails/actioncable", "8.1.400", 3_047),
];

/// Everything one run measured.
pub(crate) struct Figures {
    pub(crate) trials: usize,
    pub(crate) ready_readyws: Vec<Duration>,
    pub(crate) ready_raw: Vec<Duration>,
    pub(crate) messages: usize,
    pub(crate) upload_readyws: f64,
    pub(crate) upload_raw: f64,
    pub(crate) download_readyws: f64,
    pub(crate) download_raw: f64,
    /// Time to ready with the server on the Redis store.
    pub(crate) ready_redis: Vec<Duration>,
    pub(crate) upload_redis: f64,
    pub(crate) download_redis: f64,
    pub(crate) sessions: usize,
    pub(crate) raw_sessions: Sessions,
    pub(crate) readyws_sessions: Sessions,
    pub(crate) storm: Storm,
    /// The same sessions and restart with the server on the Redis store.
    pub(crate) redis_sessions: Sessions,
    pub(crate) storm_redis: Storm,
    pub(crate) package: Option<PackageSizes>,
    pub(crate) command: String,
    pub(crate) elapsed: Duration,
}

impl Figures {
    fn ready_medians(&self) -> (Duration, Duration) {
        (median(&self.ready_readyws), median(&self.ready_raw))
    }

    pub(crate) fn ready_ratio(&self) -> f64 {
        let (readyws, raw) = self.ready_medians();
        readyws.as_secs_f64() / raw.as_secs_f64()
    }

    fn per_session(&self, before: u64, after: u64) -> f64 {
        after.saturating_sub(before) as f64 / self.sessions.max(1) as f64
    }

    fn storm_span_s(&self) -> f64 {
        let buckets = &self.storm.attempts;
        let first = buckets.iter().position(|n| *n > 0).unwrap_or(0);
        (buckets.len().saturating_sub(first)) as f64 * STORM_BUCKET_MS as f64 / 1000.0
    }

    fn storm_peak_share(&self) -> f64 {
        let total: u64 = self.storm.attempts.iter().sum();
        let peak = self.storm.attempts.iter().copied().max().unwrap_or(0);
        peak as f64 / total.max(1) as f64
    }

    fn storm_lost(&self) -> usize {
        self.storm.sent - self.storm.acked
    }
}

/// Until every session of a storm was ready again.
fn ready_again(storm: &Storm) -> String {
    storm
        .all_ready_ms
        .map_or(format!("never ({} ready again)", storm.ready_again), |ms| {
            format!("{:.2} s", ms / 1000.0)
        })
}

fn micros(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The headline, for the terminal.
pub(crate) fn summary(figures: &Figures) -> String {
    format!(
        "time to ready {:.2}x raw (target <= 1.2); throughput with acks {:.2}x raw client->server, {:.2}x server->client (target >= 0.8); on Redis: time to ready {:.2}x in-memory (target <= 2), throughput {:.2}x / {:.2}x in-memory (target >= 0.5); {} sessions ready in {:.1} s ({} failed); storm: all ready again in {}, {} lost; written in {:.0} s",
        figures.ready_ratio(),
        figures.upload_readyws / figures.upload_raw,
        figures.download_readyws / figures.download_raw,
        median(&figures.ready_redis).as_secs_f64() / figures.ready_medians().0.as_secs_f64(),
        figures.upload_redis / figures.upload_readyws,
        figures.download_redis / figures.download_readyws,
        figures.sessions,
        figures.readyws_sessions.opened.ready_ms / 1000.0,
        figures.readyws_sessions.opened.failed,
        figures
            .storm
            .all_ready_ms
            .map_or("never".to_owned(), |ms| format!("{:.1} s", ms / 1000.0)),
        figures.storm_lost(),
        figures.elapsed.as_secs_f64(),
    )
}

/// What went wrong that must not: sessions that never became ready, a storm that did not end,
/// messages not acknowledged.
pub(crate) fn broken_guarantees(figures: &Figures) -> Vec<String> {
    let mut broken = Vec::new();
    for (kind, sessions) in [
        ("readyws", &figures.readyws_sessions),
        ("raw", &figures.raw_sessions),
    ] {
        if sessions.opened.failed > 0 {
            broken.push(format!(
                "{} {kind} sessions of {} never became ready",
                sessions.opened.failed, figures.sessions
            ));
        }
    }
    if figures.storm.all_ready_ms.is_none() {
        broken.push(format!(
            "after the restart only {} of {} sessions were ready again",
            figures.storm.ready_again, figures.sessions
        ));
    }
    if figures.storm_redis.all_ready_ms.is_none() {
        broken.push(format!(
            "on Redis, after the restart only {} of {} sessions were ready again",
            figures.storm_redis.ready_again, figures.sessions
        ));
    }
    let lost_on_redis = figures.storm_redis.sent - figures.storm_redis.acked;
    if lost_on_redis > 0 {
        broken.push(format!(
            "on Redis, {lost_on_redis} of the storm's {} messages were not acknowledged ({})",
            figures.storm_redis.sent,
            figures.storm_redis.not_acked.join(", ")
        ));
    }
    if figures.redis_sessions.opened.failed > 0 {
        broken.push(format!(
            "{} readyws sessions on Redis of {} never became ready",
            figures.redis_sessions.opened.failed, figures.sessions
        ));
    }
    if figures.storm_lost() > 0 {
        broken.push(format!(
            "{} of the storm's {} messages were not acknowledged ({})",
            figures.storm_lost(),
            figures.storm.sent,
            figures.storm.not_acked.join(", ")
        ));
    }
    broken
}

/// Writes `BENCHMARKS.md` and the plots under `docs`.
pub(crate) fn write(docs: &Path, figures: &Figures) -> Result<(), String> {
    crate::plots::draw(&docs.join("bench"), figures)?;
    let path = docs.join("BENCHMARKS.md");
    std::fs::write(&path, markdown(figures)).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn markdown(f: &Figures) -> String {
    let mut md = String::new();
    let raw = &f.raw_sessions;
    let ours = &f.readyws_sessions;
    let _ = writeln!(
        md,
        "# Benchmarks\n\n\
         What readiness and delivery guarantees cost over a bare WebSocket: each readyws figure next \
         to a baseline built with raw tokio-tungstenite and measured **in the same run**, on \
         127.0.0.1. This page is written by the benchmark itself; run it again to refresh it.\n\n\
         - Command: `{}` (release build; {:.0} s for the measurements)\n\
         - Date: {} (UTC)\n\
         - Machine: {}\n",
        f.command,
        f.elapsed.as_secs_f64(),
        today(),
        machine()
    );
    let _ = writeln!(
        md,
        "## Figures\n\n\
         | # | figure | readyws | baseline | ratio | target |\n\
         |---|---|---:|---:|---:|---|"
    );
    let _ = writeln!(
        md,
        "| 1 | time to ready, median of {} | {} | {} | **{:.2}×** | ≤ 1.2× |",
        f.trials,
        micros(f.ready_medians().0),
        micros(f.ready_medians().1),
        f.ready_ratio()
    );
    let _ = writeln!(
        md,
        "| 2a | acknowledged {MESSAGE_BYTES}-byte messages/s, client → server | {} | {} | **{:.2}×** | ≥ 0.8× |",
        thousands(f.upload_readyws as u64),
        thousands(f.upload_raw as u64),
        f.upload_readyws / f.upload_raw
    );
    let _ = writeln!(
        md,
        "| 2b | acknowledged {MESSAGE_BYTES}-byte messages/s, server → client | {} | {} | **{:.2}×** | ≥ 0.8× |",
        thousands(f.download_readyws as u64),
        thousands(f.download_raw as u64),
        f.download_readyws / f.download_raw
    );
    let _ = writeln!(
        md,
        "| 3a | {} sessions opened at once: time until all ready | {:.2} s ({} failed) | {:.2} s ({} failed) | {:.2}× | all ready |",
        thousands(f.sessions as u64),
        ours.opened.ready_ms / 1000.0,
        ours.opened.failed,
        raw.opened.ready_ms / 1000.0,
        raw.opened.failed,
        ours.opened.ready_ms / raw.opened.ready_ms
    );
    let client_ours = f.per_session(ours.opened.rss_before, ours.opened.rss_after);
    let client_raw = f.per_session(raw.opened.rss_before, raw.opened.rss_after);
    let server_ours = f.per_session(ours.server_rss_before, ours.server_rss_after);
    let server_raw = f.per_session(raw.server_rss_before, raw.server_rss_after);
    let _ = writeln!(
        md,
        "| 3b | client memory per session (resident) | {} | {} | {:.2}× | |",
        kib(client_ours),
        kib(client_raw),
        client_ours / client_raw.max(1.0)
    );
    let _ = writeln!(
        md,
        "| 3c | server memory per session (resident) | {} | {} | {:.2}× | |",
        kib(server_ours),
        kib(server_raw),
        server_ours / server_raw.max(1.0)
    );
    let _ = writeln!(
        md,
        "| 4a | restart storm: until all {} sessions are ready again | {} | opening them: {:.2} s | | spread, nothing lost |",
        thousands(f.sessions as u64),
        f.storm.all_ready_ms.map_or(
            format!("never ({} ready again)", f.storm.ready_again),
            |ms| format!("{:.2} s", ms / 1000.0)
        ),
        ours.opened.ready_ms / 1000.0,
    );
    let _ = writeln!(
        md,
        "| 4b | restart storm: messages sent during it, acknowledged / lost | {} / {} | | | 0 lost |",
        thousands(f.storm.acked as u64),
        f.storm_lost()
    );
    let _ = writeln!(
        md,
        "| 4c | restart storm: connection attempts spread over / largest {STORM_BUCKET_MS} ms share | {:.1} s / {:.1} % | | | spread |",
        f.storm_span_s(),
        f.storm_peak_share() * 100.0
    );
    match f.package {
        Some(package) => {
            let _ = writeln!(
                md,
                "| 5 | browser package, gzipped (`.wasm` {} + JS glue {}) | {} B | socket.io-client {} B | {:.2}× | |",
                thousands(package.wasm_gzip),
                thousands(package.glue_gzip),
                thousands(package.total()),
                thousands(BROWSER_ANCHORS[0].2),
                package.total() as f64 / BROWSER_ANCHORS[0].2 as f64
            );
        }
        None => {
            let _ = writeln!(
                md,
                "| 5 | browser package, gzipped | not built in this run | | | |"
            );
        }
    }
    if !f.storm.not_acked.is_empty() {
        let _ = writeln!(
            md,
            "\nMessages of the storm that did not end acknowledged (first ten): {}",
            f.storm.not_acked.join(", ")
        );
    }
    let redis_ready = median(&f.ready_redis);
    let _ = writeln!(
        md,
        "\n## The Redis store\n\n\
         The same readyws server and clients, the server keeping its records in a `redis-server` \
         of the run's own on loopback (a single primary, `appendonly yes`, `appendfsync always`: \
         every commit is on disk before it is answered), next to the in-memory figures above.\n\n\
         | figure | in memory | on Redis | ratio | target |\n|---|---:|---:|---:|---|\n\
         | time to ready, median of {} | {} | {} | **{:.2}×** | ≤ 2× |\n\
         | acknowledged {MESSAGE_BYTES}-byte messages/s, client → server | {} | {} | **{:.2}×** | ≥ 0.5× |\n\
         | acknowledged {MESSAGE_BYTES}-byte messages/s, server → client | {} | {} | **{:.2}×** | ≥ 0.5× |\n\
         | {} sessions opened at once: time until all ready | {:.2} s | {:.2} s | {:.2}× | all ready |\n\
         | restart storm: until all are ready again | {} | {} | | spread |\n\
         | restart storm: messages sent during it, acknowledged / lost | {} / {} | {} / {} | | 0 lost |",
        f.trials,
        micros(f.ready_medians().0),
        micros(redis_ready),
        redis_ready.as_secs_f64() / f.ready_medians().0.as_secs_f64(),
        thousands(f.upload_readyws as u64),
        thousands(f.upload_redis as u64),
        f.upload_redis / f.upload_readyws,
        thousands(f.download_readyws as u64),
        thousands(f.download_redis as u64),
        f.download_redis / f.download_readyws,
        thousands(f.sessions as u64),
        f.readyws_sessions.opened.ready_ms / 1000.0,
        f.redis_sessions.opened.ready_ms / 1000.0,
        f.redis_sessions.opened.ready_ms / f.readyws_sessions.opened.ready_ms,
        ready_again(&f.storm),
        ready_again(&f.storm_redis),
        thousands(f.storm.acked as u64),
        f.storm.sent - f.storm.acked,
        thousands(f.storm_redis.acked as u64),
        f.storm_redis.sent - f.storm_redis.acked,
    );
    let _ = writeln!(
        md,
        "\n## Plots\n\n\
         ![Time to ready, cumulative](bench/time_to_ready.svg)\n\n\
         ![Throughput with acknowledgements](bench/throughput.svg)\n\n\
         ![Connection attempts during the restart storm](bench/reconnect_storm.svg)\n"
    );
    let _ = writeln!(
        md,
        "## Browser package next to the JavaScript clients\n\n\
         Each package's client entry point bundled alone with esbuild 0.25 (`--bundle --minify \
         --format=esm --platform=browser`), then `gzip -9`, measured on 2026-11-29; the readyws \
         figure is `wasm/pkg/` as `cargo xtask wasm` builds it (binaryen's `wasm-opt -Oz \
         --converge` on wasm-bindgen's output, minified glue).\n\n\
         | package | version | min + gzip | readyws / it |\n|---|---|---:|---:|"
    );
    for (name, version, bytes) in BROWSER_ANCHORS {
        let ratio = f.package.map_or("—".to_owned(), |p| {
            format!("{:.2}×", p.total() as f64 / bytes as f64)
        });
        let _ = writeln!(
            md,
            "| {name} | {version} | {} B | {ratio} |",
            thousands(bytes)
        );
    }
    md.push_str(BASELINES);
    md
}

/// How each baseline is built: the prose half of the page.
const BASELINES: &str = r#"
## How each figure and its baseline are measured

Every server runs in a process of its own (the same binary, `readyws-bench server`), and the
many-sessions clients too (`readyws-bench swarm`), so that each memory figure is one process's
own. Trials of a figure and of its baseline alternate, so that drift of the machine hits both.

1. **Time to ready.** readyws: from `Client::builder(url).connect()` to `ready()` returning,
   that is the TCP connect, the WebSocket upgrade, `welcome`, `hello` and `connection_ready`.
   Baseline: `tokio_tungstenite::connect_async` to the raw server, then one request (a `msg`
   frame) and its answer (an `ack` frame): the physical floor of any readiness handshake, which
   needs the socket open and one round trip. Twenty warm-up trials of each are not counted.
2. **Throughput with acknowledgements.** readyws: 1 KiB JSON objects (`{"seq":N,"text":"…"}`)
   sent with `Client::send` to the reference server until every `Delivery` resolved `Acked`;
   the other way, one request makes the server publish them to the client and the client counts
   them off its message stream (acknowledging them as the protocol does). Baseline: the same
   `msg` frames, built with `format!`, sent with tokio-tungstenite's `send` to a
   tokio-tungstenite server that parses every frame with serde_json (type, id, and the data
   checked to be JSON, as the readyws codec does) and answers each with an `ack` frame, which
   the client parses too; the other way, the raw server sends the frames and the client parses
   and acknowledges each. The median of the runs is reported. readyws comes out ahead because
   both of its sides write every frame due and flush once, and answer a burst of messages with
   one cumulative `ack`, where the baseline, written the usual way, makes one `send` (a write
   and a flush) per frame and one `ack` per message.
3. **Many sessions.** One process opens all sessions at once against one server process
   (readyws: `Client`s, each driven by its own task; baseline: raw connections, each with one
   request and answer, held open). Both raise their open-file limit to the hard limit, and the
   listeners accept bursts of 4,096. Memory is the growth of resident memory (`VmRSS`) from
   before the first session to all ready, divided by the number of sessions. The baseline keeps
   tokio-tungstenite's default 128 KiB read buffer, which is most of its figure; readyws reads
   8 KiB at a time on both sides, and any tokio-tungstenite application could do the same.
4. **Reconnect storm.** With every readyws session ready, the server restarts gracefully: each
   session gets `goaway` 4000 with `retry_after_ms` spread over 5 s, then a new server, with
   fresh state, listens on the same port in the same process (sessions start anew there, and
   the clients resend what was not acknowledged). Each client sends one message as the restart begins and one a second later. The
   histogram counts the clients' connection attempts (`Stats::connection_attempts`) in 100 ms
   buckets; the storm ends when every client is ready again.
5. **Browser package size.** See the table above.
"#;

/// Today's date in UTC, `YYYY-MM-DD`.
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The processor, cores, memory and kernel, from `/proc`.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown processor", |(_, name)| name.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {memory_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}
