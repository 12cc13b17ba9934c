//! `docs/BENCHMARKS.md`: the tables of one run with every figure's spread, its plots, and how
//! each contender is built and measured.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{MESSAGE_BYTES, Spread, median};
use crate::figures::Sample;
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

/// Time-to-ready trials of each run, by contender.
#[derive(Default)]
pub(crate) struct ReadyRuns {
    pub(crate) readyws: Vec<Vec<Duration>>,
    /// Raw tokio-tungstenite: connect and one round trip.
    pub(crate) raw: Vec<Vec<Duration>>,
    /// readyws with the server on the Redis store.
    pub(crate) redis: Vec<Vec<Duration>>,
    pub(crate) socketio: Vec<Vec<Duration>>,
}

/// Each run's samples, both ways.
#[derive(Default)]
pub(crate) struct Both {
    /// Client → server.
    pub(crate) up: Vec<Sample>,
    /// Server → client.
    pub(crate) down: Vec<Sample>,
}

/// Throughput runs by contender.
#[derive(Default)]
pub(crate) struct ThroughputRuns {
    pub(crate) readyws: Both,
    /// Raw tokio-tungstenite, one `send` per frame and an `ack` per message.
    pub(crate) naive: Both,
    /// Raw tokio-tungstenite, frames fed and flushed per burst, no acknowledgements.
    pub(crate) pipelined: Both,
    pub(crate) socketio: Both,
    /// readyws with the server on the Redis store.
    pub(crate) redis: Both,
    /// Redis alone holding and releasing the same messages, messages/s
    /// (`figures::redis_hold_and_release`).
    pub(crate) redis_alone: Vec<f64>,
}

/// What one run of many sessions opened at once measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionsRun {
    pub(crate) ready_ms: f64,
    pub(crate) failed: usize,
    /// Growth of the client process's resident memory per session.
    pub(crate) client_bytes: f64,
    /// The same of the server process.
    pub(crate) server_bytes: f64,
}

/// The many-sessions runs by contender, and the restarts of the readyws ones.
#[derive(Default)]
pub(crate) struct SessionRuns {
    pub(crate) readyws: Vec<SessionsRun>,
    pub(crate) raw: Vec<SessionsRun>,
    pub(crate) redis: Vec<SessionsRun>,
    pub(crate) socketio: Vec<SessionsRun>,
    pub(crate) storms: Vec<Storm>,
    pub(crate) storms_redis: Vec<Storm>,
}

/// Everything one run measured.
pub(crate) struct Figures {
    pub(crate) runs: usize,
    pub(crate) trials: usize,
    pub(crate) messages: usize,
    pub(crate) sessions: usize,
    pub(crate) ready: ReadyRuns,
    pub(crate) throughput: ThroughputRuns,
    pub(crate) many: SessionRuns,
    pub(crate) package: Option<PackageSizes>,
    pub(crate) command: String,
    pub(crate) elapsed: Duration,
}

/// The spread of each run's median, in microseconds.
fn ready_spread(runs: &[Vec<Duration>]) -> Spread {
    Spread::of(&ready_medians(runs))
}

/// The spread over runs of `ours / theirs`, run by run: both measured in the same run, so that
/// the machine's drift between runs cancels out.
fn ratio_spread(ours: &[f64], theirs: &[f64]) -> Spread {
    let ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| a / b.max(f64::MIN_POSITIVE))
        .collect();
    Spread::of(&ratios)
}

pub(crate) fn rates(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.rate).collect()
}

pub(crate) fn cpus(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(Sample::cpu_us).collect()
}

/// Each run's median, in microseconds.
fn ready_medians(runs: &[Vec<Duration>]) -> Vec<f64> {
    runs.iter()
        .map(|trials| median(trials).as_secs_f64() * 1e6)
        .collect()
}

/// One target: the figure, its ratio's spread over runs, the bound and which way it holds.
struct Target {
    what: String,
    ratio: Spread,
    bound: f64,
    /// `true`: the ratio must be at least the bound; `false`: at most.
    at_least: bool,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_least {
            self.ratio.median >= self.bound
        } else {
            self.ratio.median <= self.bound
        }
    }
}

impl Figures {
    /// Every target, with the median of its run-by-run ratios.
    fn targets(&self) -> Vec<Target> {
        let t = &self.throughput;
        let mut targets = Vec::new();
        for (way, ours, naive, pipelined, socketio, redis) in [
            (
                "client → server",
                &t.readyws.up,
                &t.naive.up,
                &t.pipelined.up,
                &t.socketio.up,
                &t.redis.up,
            ),
            (
                "server → client",
                &t.readyws.down,
                &t.naive.down,
                &t.pipelined.down,
                &t.socketio.down,
                &t.redis.down,
            ),
        ] {
            let target = |what: String, ratio, bound, at_least| Target {
                what,
                ratio,
                bound,
                at_least,
            };
            targets.push(target(
                format!("messages/s {way}: readyws / naive raw"),
                ratio_spread(&rates(ours), &rates(naive)),
                1.0,
                true,
            ));
            targets.push(target(
                format!("messages/s {way}: readyws / pipelined raw ceiling"),
                ratio_spread(&rates(ours), &rates(pipelined)),
                0.5,
                true,
            ));
            targets.push(target(
                format!("CPU per message {way}: readyws / naive raw"),
                ratio_spread(&cpus(ours), &cpus(naive)),
                1.5,
                false,
            ));
            targets.push(target(
                format!("messages/s {way}: readyws / Socket.IO 4"),
                ratio_spread(&rates(ours), &rates(socketio)),
                3.0,
                true,
            ));
            targets.push(target(
                format!("messages/s {way}: readyws on Redis / in memory"),
                ratio_spread(&rates(redis), &rates(ours)),
                0.5,
                true,
            ));
        }
        targets.insert(
            0,
            Target {
                what: "time to ready: readyws / raw connect + one round trip".to_owned(),
                ratio: ratio_spread(
                    &ready_medians(&self.ready.readyws),
                    &ready_medians(&self.ready.raw),
                ),
                bound: 1.2,
                at_least: false,
            },
        );
        targets
    }

    fn storms_lost(storms: &[Storm]) -> usize {
        storms.iter().map(|s| s.sent - s.acked).sum()
    }
}

fn storm_span_s(storm: &Storm) -> f64 {
    let buckets = &storm.attempts;
    let first = buckets.iter().position(|n| *n > 0).unwrap_or(0);
    (buckets.len().saturating_sub(first)) as f64 * STORM_BUCKET_MS as f64 / 1000.0
}

fn storm_peak_share(storm: &Storm) -> f64 {
    let total: u64 = storm.attempts.iter().sum();
    let peak = storm.attempts.iter().copied().max().unwrap_or(0);
    peak as f64 / total.max(1) as f64
}

/// `min / median / max` of a spread, each end formatted by `one`.
fn spread(values: Spread, one: impl Fn(f64) -> String) -> String {
    format!(
        "{} / **{}** / {}",
        one(values.min),
        one(values.median),
        one(values.max)
    )
}

fn rate(value: f64) -> String {
    thousands(value.round() as u64)
}

fn micros(value: f64) -> String {
    format!("{value:.0}")
}

fn micros_fine(value: f64) -> String {
    format!("{value:.2}")
}

fn kib(bytes: f64) -> String {
    format!("{:.1}", bytes / 1024.0)
}

fn seconds_from_ms(ms: f64) -> String {
    format!("{:.2}", ms / 1000.0)
}

fn ratio(value: f64) -> String {
    format!("{value:.2}×")
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

/// The headline, for the terminal: every target's median ratio.
pub(crate) fn summary(figures: &Figures) -> String {
    let mut parts: Vec<String> = figures
        .targets()
        .iter()
        .map(|t| {
            format!(
                "{}: {:.2}x [{:.2}-{:.2}] (target {} {}){}",
                t.what,
                t.ratio.median,
                t.ratio.min,
                t.ratio.max,
                if t.at_least { ">=" } else { "<=" },
                t.bound,
                if t.met() { "" } else { " MISSED" }
            )
        })
        .collect();
    parts.push(format!(
        "storms: {} lost in memory, {} on Redis; written in {:.0} s",
        Figures::storms_lost(&figures.many.storms),
        Figures::storms_lost(&figures.many.storms_redis),
        figures.elapsed.as_secs_f64()
    ));
    parts.join("\n")
}

/// What went wrong that must not: readyws sessions that never became ready, a storm that did not
/// end, messages not acknowledged, a raw baseline session that failed (its figure would be off).
pub(crate) fn broken_guarantees(figures: &Figures) -> Vec<String> {
    let mut broken = Vec::new();
    let m = &figures.many;
    for (kind, runs) in [
        ("readyws", &m.readyws),
        ("raw", &m.raw),
        ("readyws on Redis", &m.redis),
    ] {
        let failed: usize = runs.iter().map(|r| r.failed).sum();
        if failed > 0 {
            broken.push(format!(
                "{failed} {kind} sessions of {} runs of {} never became ready",
                runs.len(),
                figures.sessions
            ));
        }
    }
    for (store, storms) in [("in memory", &m.storms), ("on Redis", &m.storms_redis)] {
        for storm in storms {
            if storm.all_ready_ms.is_none() {
                broken.push(format!(
                    "{store}, after a restart only {} of {} sessions were ready again",
                    storm.ready_again, figures.sessions
                ));
            }
            if storm.sent > storm.acked {
                broken.push(format!(
                    "{store}, {} of a storm's {} messages were not acknowledged ({})",
                    storm.sent - storm.acked,
                    storm.sent,
                    storm.not_acked.join(", ")
                ));
            }
        }
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
    let _ = writeln!(
        md,
        "# Benchmarks\n\n\
         What readiness and delivery guarantees cost, next to what a user would otherwise build or \
         pick: raw tokio-tungstenite written the usual way (the **naive** baseline), raw \
         tokio-tungstenite pipelined with no acknowledgements at all (the **ceiling**), and \
         **Socket.IO 4** on Node.js with acknowledgement callbacks (the peer). Everything is \
         measured **in the same run**, on 127.0.0.1, and every figure is given as \
         min / **median** / max over its runs, so that the noise of the machine shows. This page \
         is written by the benchmark itself; run it again to refresh it.\n\n\
         - Command: `{}` (release build; {:.0} s for the measurements)\n\
         - Runs: {} of time to ready ({} trials of each contender per run) and of throughput \
         ({} messages each way per run); {} of the {}-session figures\n\
         - Date: {} (UTC)\n\
         - Machine: {}\n",
        f.command,
        f.elapsed.as_secs_f64(),
        f.runs,
        f.trials,
        thousands(f.messages as u64),
        f.many.readyws.len(),
        thousands(f.sessions as u64),
        today(),
        machine()
    );

    let _ = writeln!(
        md,
        "## Targets\n\n\
         Each ratio is taken run by run (both figures of a ratio come from the same run) and given \
         as min / **median** / max over the runs; a target holds when the median does.\n\n\
         | figure | ratio | target | |\n|---|---:|---|---|"
    );
    for target in f.targets() {
        let _ = writeln!(
            md,
            "| {} | {} | {} {} | {} |",
            target.what,
            spread(target.ratio, ratio),
            if target.at_least { "≥" } else { "≤" },
            ratio(target.bound),
            if target.met() { "met" } else { "**missed**" }
        );
    }

    let t = &f.throughput;
    let _ = writeln!(
        md,
        "\n## Throughput and CPU per message\n\n\
         Acknowledged {MESSAGE_BYTES}-byte JSON messages per second over one connection, and the \
         CPU time (user + system, client process + server process, from `/proc/<pid>/stat`) spent \
         per message during the transfer, in microseconds. The ceiling acknowledges nothing.\n\n\
         | contender | client → server, messages/s | CPU µs/message | server → client, messages/s | CPU µs/message |\n\
         |---|---:|---:|---:|---:|"
    );
    for (name, both) in [
        ("readyws", &t.readyws),
        ("raw tokio-tungstenite, naive", &t.naive),
        ("raw tokio-tungstenite, pipelined ceiling", &t.pipelined),
        ("Socket.IO 4 (Node.js)", &t.socketio),
        ("readyws, server on Redis", &t.redis),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} |",
            spread(Spread::of(&rates(&both.up)), rate),
            spread(Spread::of(&cpus(&both.up)), micros_fine),
            spread(Spread::of(&rates(&both.down)), rate),
            spread(Spread::of(&cpus(&both.down)), micros_fine),
        );
    }
    let _ = writeln!(
        md,
        "| redis-server alone: each message written to a hash and deleted again, no readyws | | | {} | |",
        spread(Spread::of(&t.redis_alone), rate),
    );
    let _ = writeln!(
        md,
        "\nThe last row is the store's own ceiling for holding these messages: Redis, on the same \
         `redis-server` (`appendfsync always`), given each 1 KiB payload as a hash field (`HSET`) \
         and then its deletion (`HDEL`), in commands of {} fields with {} under way, with no \
         WebSocket and no rules; messages/s over both. Server → client, readyws on Redis moves \
         {} of it, run by run; the target of half the in-memory rate would ask the store for \
         {} messages/s.",
        crate::figures::HOLD_BATCH,
        crate::figures::HOLD_IN_FLIGHT,
        spread(ratio_spread(&rates(&t.redis.down), &t.redis_alone), ratio),
        rate(Spread::of(&rates(&t.readyws.down)).median / 2.0),
    );
    let _ = writeln!(
        md,
        "\nThe CPU split, medians in µs per message (client + server):\n\n\
         | contender | client → server | server → client |\n|---|---:|---:|"
    );
    for (name, both) in [
        ("readyws", &t.readyws),
        ("raw, naive", &t.naive),
        ("raw, pipelined ceiling", &t.pipelined),
        ("Socket.IO 4", &t.socketio),
        ("readyws on Redis", &t.redis),
    ] {
        let split = |samples: &[Sample]| {
            let client: Vec<f64> = samples.iter().map(|s| s.client_cpu_us).collect();
            let server: Vec<f64> = samples.iter().map(|s| s.server_cpu_us).collect();
            format!(
                "{:.2} + {:.2}",
                Spread::of(&client).median,
                Spread::of(&server).median
            )
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} |",
            split(&both.up),
            split(&both.down)
        );
    }

    let _ = writeln!(
        md,
        "\nServer → client, the reference server commits the publishes waiting for one user \
         together (up to 1,024 a commit) and wakes the user's connection once per commit. \
         Committed one by one, each publish woke the connection for one message, and the \
         server's CPU time read per thread (`/proc/<pid>/task`) was all on one of its two \
         worker threads in every run: the publishing task and the connection's task took turns \
         on one core (a task woken by another waits in that worker's LIFO slot, which in tokio \
         1.54 other workers cannot steal from: tokio-rs/tokio#4941). The publisher still \
         outruns the connection, so the mailbox (the bench allows 1,000,000 messages) grows \
         during a run and its memory is faulted in afresh."
    );

    let r = &f.ready;
    let _ = writeln!(
        md,
        "\n## Time to ready\n\n\
         The median of each run's {} trials, in microseconds; min / **median** / max over the runs.\n\n\
         | contender | time to ready, µs | ratio to raw connect + one round trip |\n|---|---:|---:|",
        f.trials
    );
    let raw_medians = ready_medians(&r.raw);
    for (name, runs) in [
        ("readyws: `connect()` → `ready()`", &r.readyws),
        ("raw tokio-tungstenite: connect + one round trip", &r.raw),
        ("Socket.IO 4: `io()` → `connect`", &r.socketio),
        ("readyws, server on Redis", &r.redis),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {} | {} |",
            spread(ready_spread(runs), micros),
            spread(ratio_spread(&ready_medians(runs), &raw_medians), ratio)
        );
    }

    let m = &f.many;
    let _ = writeln!(
        md,
        "\n## {} sessions opened at once\n\n\
         | contender | until all ready, s | failed (all runs) | client KiB/session | server KiB/session |\n\
         |---|---:|---:|---:|---:|",
        thousands(f.sessions as u64)
    );
    for (name, runs) in [
        ("readyws", &m.readyws),
        ("raw tokio-tungstenite", &m.raw),
        ("Socket.IO 4", &m.socketio),
        ("readyws, server on Redis", &m.redis),
    ] {
        let of = |field: fn(&SessionsRun) -> f64| {
            Spread::of(&runs.iter().map(field).collect::<Vec<_>>())
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} |",
            spread(of(|r| r.ready_ms), seconds_from_ms),
            runs.iter().map(|r| r.failed).sum::<usize>(),
            spread(of(|r| r.client_bytes), kib),
            spread(of(|r| r.server_bytes), kib),
        );
    }

    let _ = writeln!(
        md,
        "\n## Restart storm\n\n\
         Every one of the {} readyws sessions ready, then the server restarts gracefully \
         (method 5 below).\n\n\
         | figure | in memory | on Redis | target |\n|---|---:|---:|---|",
        thousands(f.sessions as u64)
    );
    let storm_spread = |storms: &[Storm], field: fn(&Storm) -> f64| {
        Spread::of(&storms.iter().map(field).collect::<Vec<_>>())
    };
    let never = |storms: &[Storm]| storms.iter().filter(|s| s.all_ready_ms.is_none()).count();
    let _ = writeln!(
        md,
        "| until all are ready again, s | {} | {} | all, spread |\n\
         | runs in which some never were | {} | {} | 0 |\n\
         | messages sent during it, acknowledged / lost (all runs) | {} / {} | {} / {} | 0 lost |\n\
         | connection attempts spread over, s | {} | {} | spread |\n\
         | largest {STORM_BUCKET_MS} ms share of the attempts, % | {} | {} | |",
        spread(
            storm_spread(&m.storms, |s| s.all_ready_ms.unwrap_or(f64::NAN)),
            seconds_from_ms
        ),
        spread(
            storm_spread(&m.storms_redis, |s| s.all_ready_ms.unwrap_or(f64::NAN)),
            seconds_from_ms
        ),
        never(&m.storms),
        never(&m.storms_redis),
        thousands(m.storms.iter().map(|s| s.acked as u64).sum()),
        Figures::storms_lost(&m.storms),
        thousands(m.storms_redis.iter().map(|s| s.acked as u64).sum()),
        Figures::storms_lost(&m.storms_redis),
        spread(storm_spread(&m.storms, storm_span_s), |v| format!("{v:.1}")),
        spread(storm_spread(&m.storms_redis, storm_span_s), |v| format!(
            "{v:.1}"
        )),
        spread(storm_spread(&m.storms, storm_peak_share), |v| format!(
            "{:.1}",
            v * 100.0
        )),
        spread(
            storm_spread(&m.storms_redis, storm_peak_share),
            |v| format!("{:.1}", v * 100.0)
        ),
    );
    for (store, storms) in [("in memory", &m.storms), ("on Redis", &m.storms_redis)] {
        let not_acked: Vec<&str> = storms
            .iter()
            .flat_map(|s| s.not_acked.iter().map(String::as_str))
            .take(10)
            .collect();
        if !not_acked.is_empty() {
            let _ = writeln!(
                md,
                "\nStorm messages {store} that did not end acknowledged (first ten): {}",
                not_acked.join(", ")
            );
        }
    }

    let _ = writeln!(
        md,
        "\n## Plots\n\n\
         ![Time to ready, cumulative, one line per run](bench/time_to_ready.svg)\n\n\
         ![Throughput with acknowledgements, median and range of the runs](bench/throughput.svg)\n\n\
         ![CPU per message, median and range of the runs](bench/cpu_per_message.svg)\n\n\
         ![Connection attempts during the restart storm, one line per run](bench/reconnect_storm.svg)\n"
    );
    let _ = writeln!(
        md,
        "## Browser package next to the JavaScript clients\n\n\
         Each package's client entry point bundled alone with esbuild 0.25 (`--bundle --minify \
         --format=esm --platform=browser`), then `gzip -9`, measured on 2026-11-29; the readyws \
         figure is `wasm/pkg/` as `cargo xtask wasm` builds it (binaryen's `wasm-opt -Oz \
         --converge` on wasm-bindgen's output, minified glue){}.\n\n\
         | package | version | min + gzip | readyws / it |\n|---|---|---:|---:|",
        f.package
            .map_or(", not built in this run".to_owned(), |p| format!(
                ": {} B (`.wasm` {} + JS glue {})",
                thousands(p.total()),
                thousands(p.wasm_gzip),
                thousands(p.glue_gzip)
            ))
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

/// How each contender is built: the prose half of the page.
const BASELINES: &str = r#"
## How each figure and each contender are measured

Every server runs in a process of its own (readyws and raw: the same binary, `readyws-bench
server`; Socket.IO: `node server.mjs`), and the many-sessions clients too (`readyws-bench swarm`,
`node client.mjs`), so that each CPU and memory figure is one process's own. The Rust clients of
the time-to-ready and throughput figures run in the measuring process itself; the Socket.IO ones
in one Node.js process that it commands. Within a run the contenders take turns, so that drift of
the machine hits all of them; the runs show how much it moves.

1. **The contenders.**
   - *readyws*: `readyws::Client` against `readyws-server` (in memory, or on Redis).
   - *Naive raw baseline*: tokio-tungstenite as an application is usually written without
     readyws: every frame sent with `send` (one write and one flush), every `msg` frame parsed
     with serde_json (type, id, and the data checked to be JSON, as the readyws codec does) and
     answered with its own `ack` frame, which the other side parses too.
   - *Pipelined raw ceiling*: the same frames, built and parsed the same way, but fed into the
     socket and flushed once per 64 frames, and never acknowledged (the sender learns the end from
     one `ack` of a final `end` frame). Nothing that acknowledges each message can beat it on one
     connection: it is the physical ceiling of moving and parsing these frames.
   - *Socket.IO 4*: `socket.io` and `socket.io-client` 4.8.4 on Node.js (with `bufferutil` and
     `utf-8-validate`, as Socket.IO recommends for speed), pinned by
     `bench/socketio/package-lock.json` and installed by `cargo xtask bench` with `npm ci`. The
     clients use the WebSocket transport only (`transports: ["websocket"]`), the fastest
     configuration, which skips the long-polling start. Messages are `emit`ted with an
     acknowledgement callback, which the other side calls.
2. **Time to ready.** readyws: from `Client::builder(url).connect()` to `ready()` returning, that
   is the TCP connect, the WebSocket upgrade, `welcome`, `hello` and `connection_ready`. Raw: a
   `connect_async`, then one request (a `msg` frame) and its answer (an `ack` frame): the floor of
   any readiness handshake, which needs the socket open and one round trip; its trials alternate
   with readyws's. Socket.IO: from `io(url)` to the `connect` event, timed by Node.js. Twenty
   warm-up trials of each are not counted.
3. **Throughput with acknowledgements.** Client → server: 1 KiB JSON objects
   (`{"seq":N,"text":"…"}`) sent until every one was acknowledged (readyws: every `Delivery`
   resolved `Acked`; Socket.IO: every callback ran). Server → client: one request makes the
   server send them (readyws: the handler hands the request to a task of its own, as its
   documentation asks of long work, which calls `ServerHandle::publish` with up to 256 under way
   at once, as a backend with work for one user has them; Socket.IO: `emit` with a callback
   each), and the client counts them until the
   last, acknowledging each as its protocol does. The readyws client sends through its default
   queue (1,000 messages, 1 MiB) and waits for room when it is full (`Overflow::Wait`), taking
   each outcome as it comes; the server's mailbox is sized to take a whole run.
4. **CPU per message.** User + system time of the client process and of the server process, read
   from `/proc/<pid>/stat` (all threads) right before and after the transfer (after the connect),
   divided by the messages. Its resolution is the kernel's clock tick (10 ms), a few percent of a
   run's CPU time. On a shared machine it moves far less than messages/s, which depend on how the
   two cores are shared at that moment.
5. **Many sessions.** One process opens all sessions at once against one fresh server process
   (readyws: `Client`s, each driven by its own task; raw: connections, each with one request and
   answer; Socket.IO: `io()` sockets), and holds them open. The Rust ones raise their open-file
   limit to the hard limit (Node.js inherits it), and the listeners accept bursts of 4,096. Memory
   is the growth of resident memory (`VmRSS`) from before the first session to all ready, divided
   by the number of sessions. The raw baseline keeps tokio-tungstenite's default 128 KiB read
   buffer, which is most of its figure; readyws reads 8 KiB at a time on both sides, and any
   tokio-tungstenite application could do the same.
6. **Restart storm.** With every readyws session ready, the server restarts gracefully: each
   session gets `goaway` 4000 with `retry_after_ms` spread over 5 s, then a new server, with
   fresh state (or the same Redis), listens on the same port in the same process, and the clients
   resend what was not acknowledged. Each client sends one message as the restart begins and one
   a second later. The plot counts the clients' connection attempts (`Stats::connection_attempts`)
   in 100 ms buckets; the storm ends when every client is ready again.
7. **The Redis store.** The same readyws server and clients, the server keeping its records in a
   `redis-server` of the run's own on loopback: a single primary, `appendonly yes`, `appendfsync
   always`, so that every commit is on disk before it is answered.
8. **Browser package size.** See the table above.
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
