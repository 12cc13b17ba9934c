//! `readyws demo`: the problem and its fix in one command.
//!
//! An embedded reference server starts cold (its sockets wait in phase "starting"), a relay
//! between it and a client cuts and stalls connections at random, and messages flow both ways the
//! whole time: the client sends numbered messages, and the server publishes numbered messages to
//! the client's user whether or not it is connected (held in its mailbox when it is not). At the
//! end every number must have arrived exactly once and in order, in both directions.
//!
//! With `--instances N`, the incident itself: N instances share a Redis (one the demo starts on
//! loopback, or `--redis URL`), the relay is also their load balancer, the backend publishes
//! through each instance in turn (mostly through one that does not hold the user's socket), and
//! halfway through the instance carrying the client's socket is killed outright: the client
//! resumes its session on another instance and nothing is lost.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use readyws::{Client, ConnectionState, Data, Outcome, Overflow};
use readyws_protocol::ServerConfig;
use readyws_server::{
    Decision, Inbound, InsecureDevAuth, MailboxLimits, OverflowPolicy, Server, ServerHandle,
    ServerOptions, UserId,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::instances::{Instance, LocalRedis};
use crate::relay::{Backends, Relay, RelayEvent};

/// The demo's settings (`readyws demo --help`).
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Messages sent each way.
    #[arg(long, default_value_t = 3000)]
    messages: u64,
    /// Messages per second each way, so that the run spans many broken connections.
    #[arg(long, default_value_t = 300)]
    rate: u64,
    /// Seed of the relay's faults and the client's jitter; a run with the same seed breaks the
    /// same connections at the same moments (default: a random seed, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the server stays in phase "starting" (a cold start).
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    startup_delay: u64,
    /// Print the summary as JSON on stdout (the running account still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Server instances sharing one Redis; 1 is one server keeping everything in memory. With
    /// two or more, publishes go through each instance in turn, and the instance carrying the
    /// client's socket is killed halfway through the run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    instances: u64,
    /// The Redis the instances share (`redis://host:port` or `redis-cluster://host:port,…`);
    /// without it, `--instances` starts a `redis-server` of its own on loopback.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

const USER: &str = "demo-user";

/// What one direction of the run delivered.
#[derive(Debug, Default, Serialize)]
struct Direction {
    sent: u64,
    acked: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
}

impl Direction {
    /// Compares the numbers that arrived, in arrival order, with `0..sent`.
    fn check(sent: u64, acked: u64, arrived: &[u64]) -> Direction {
        let mut seen = vec![false; sent as usize];
        let mut duplicated = 0;
        for &n in arrived {
            match seen.get_mut(n as usize) {
                Some(slot) if *slot => duplicated += 1,
                Some(slot) => *slot = true,
                None => duplicated += 1,
            }
        }
        let out_of_order = arrived.windows(2).filter(|pair| pair[1] < pair[0]).count() as u64;
        Direction {
            sent,
            acked,
            received: arrived.len() as u64,
            lost: seen.iter().filter(|seen| !**seen).count() as u64,
            duplicated,
            out_of_order,
        }
    }

    fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

/// What one instance did, in a run with several.
#[derive(Debug, Default, Serialize)]
struct InstanceSummary {
    instance: usize,
    /// Connections the balancer sent to it.
    connections: u64,
    /// Client messages its application got.
    received_from_client: u64,
    /// Messages published through it.
    published_through: u64,
    killed: bool,
}

/// The summary the demo ends with.
#[derive(Debug, Serialize)]
struct Summary {
    seed: u64,
    seconds: f64,
    /// `memory`, or `redis` for instances sharing one.
    store: &'static str,
    client_to_server: Direction,
    server_to_client: Direction,
    connections_cut: u64,
    connections_stalled: u64,
    reconnects: u64,
    resumes: u64,
    session_resets: u64,
    held_before_first_ready: u64,
    published_while_disconnected: u64,
    time_to_ready_median_ms: Option<f64>,
    time_to_ready_p99_ms: Option<f64>,
    /// Publishes made through an instance that did not hold the user's socket at the time.
    published_through_another_instance: u64,
    /// Client messages that reached a killed instance's application before it could acknowledge
    /// them, sent again by the client and received again by another instance: at least once
    /// across a crash, never lost.
    redelivered_after_kill: u64,
    instances: Vec<InstanceSummary>,
}

/// Where the running account goes: progress bars on a terminal, plain lines elsewhere.
struct Display {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    started: Instant,
}

impl Display {
    fn new(messages: u64) -> Display {
        let started = Instant::now();
        if !std::io::stderr().is_terminal() {
            return Display {
                bars: None,
                started,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos:>6}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let up = multi.add(ProgressBar::new(messages).with_style(style.clone()));
        up.set_prefix("client → server");
        let down = multi.add(ProgressBar::new(messages).with_style(style));
        down.set_prefix("server → client");
        Display {
            bars: Some((multi, up, down)),
            started,
        }
    }

    fn line(&self, text: &str) {
        let line = format!("{:>7.2}s  {text}", self.started.elapsed().as_secs_f64());
        match &self.bars {
            Some((multi, _, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn progress(&self, acked: u64, received: u64) {
        if let Some((_, up, down)) = &self.bars {
            up.set_position(acked);
            down.set_position(received);
        }
    }

    fn finish(&self) {
        if let Some((multi, up, down)) = &self.bars {
            up.finish();
            down.finish();
            let _ = multi.clear();
        }
    }
}

/// The servers of a run: one in memory, or instances sharing a Redis.
struct Servers {
    /// Each server's handle, by index.
    handles: Vec<ServerHandle>,
    /// The instances, killable; empty for the one in-memory server.
    instances: Vec<Instance>,
    /// Stops the in-memory server.
    stop: Option<(
        oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    /// The Redis the demo started, if it started one.
    _redis: Option<LocalRedis>,
    addresses: Vec<SocketAddr>,
}

impl Servers {
    async fn start(
        args: &DemoArgs,
        options: ServerOptions,
        handler: impl Fn(usize) -> Box<dyn Fn(&ServerHandle, Inbound<'_>) -> Decision + Send + Sync>,
        display: &Display,
    ) -> Result<Servers, String> {
        if args.instances == 1 && args.redis.is_none() {
            let server = Server::new(options, InsecureDevAuth, handler(0));
            let handle = server.handle();
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
            let address = listener.local_addr().map_err(|e| e.to_string())?;
            let (stop, stopped) = oneshot::channel::<()>();
            let serving = tokio::spawn(server.serve(listener, async {
                let _ = stopped.await;
            }));
            return Ok(Servers {
                handles: vec![handle],
                instances: Vec::new(),
                stop: Some((stop, serving)),
                _redis: None,
                addresses: vec![address],
            });
        }
        let (url, redis) = match &args.redis {
            Some(url) => (url.clone(), None),
            None => {
                let redis = tokio::task::spawn_blocking(LocalRedis::start)
                    .await
                    .map_err(|e| e.to_string())??;
                display.line(&format!(
                    "redis: started redis-server on {} (appendonly yes, appendfsync always)",
                    redis.url()
                ));
                (redis.url(), Some(redis))
            }
        };
        // A prefix of the run's own, so that a shared Redis keeps runs apart.
        let prefix = format!("readyws-demo-{}", fresh_seed());
        let mut instances = Vec::new();
        for index in 0..args.instances as usize {
            let instance = Instance::start(&url, &prefix, options.clone(), handler(index)).await?;
            display.line(&format!(
                "instance {}: listening on {}, sharing {}",
                index + 1,
                instance.address,
                redacted(&url)
            ));
            instances.push(instance);
        }
        Ok(Servers {
            handles: instances.iter().map(|i| i.handle.clone()).collect(),
            addresses: instances.iter().map(|i| i.address).collect(),
            instances,
            stop: None,
            _redis: redis,
        })
    }

    fn several(&self) -> bool {
        !self.instances.is_empty()
    }

    fn alive(&self, index: usize) -> bool {
        self.instances.get(index).is_none_or(Instance::alive)
    }

    /// A handle of a server that runs.
    fn live_handle(&self) -> Option<&ServerHandle> {
        (0..self.handles.len())
            .find(|index| self.alive(*index))
            .map(|index| &self.handles[index])
    }

    async fn stop(mut self) {
        for instance in &mut self.instances {
            instance.kill();
        }
        if let Some((stop, serving)) = self.stop.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
        }
    }
}

/// `url` without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Runs the demo; `Ok(true)` when every message arrived exactly once and in order.
pub(crate) async fn run(args: DemoArgs) -> Result<bool, String> {
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let messages = args.messages.max(1);
    let rate = args.rate.max(1);
    let display = Arc::new(Display::new(messages));
    let servers_text = match args.instances {
        1 if args.redis.is_none() => String::new(),
        1 => ", one instance on Redis".to_owned(),
        n => format!(", {n} instances sharing a Redis"),
    };
    display.line(&format!(
        "readyws demo: {messages} messages each way at {rate}/s{servers_text}, seed {seed} (repeat with --seed {seed})"
    ));

    // The servers: cold start, short heartbeats so that stalled links are found in a second, and
    // a mailbox large enough to hold everything published while the client is away. Each
    // server's application records the numbers it gets, in one order across servers.
    let received_by_server = Arc::new(Mutex::new(Vec::<(usize, u64)>::with_capacity(
        messages as usize,
    )));
    let handler = {
        let received = Arc::clone(&received_by_server);
        move |index: usize| {
            let record = Arc::clone(&received);
            Box::new(move |_: &ServerHandle, message: Inbound<'_>| {
                if let Some(n) = number(message.data) {
                    record
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((index, n));
                }
                Decision::Accept
            }) as Box<dyn Fn(&ServerHandle, Inbound<'_>) -> Decision + Send + Sync>
        }
    };
    let options = ServerOptions::default()
        .protocol(ServerConfig::default().heartbeat(Duration::from_millis(500)))
        .mailbox(MailboxLimits {
            max_messages: messages as usize + 100,
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(600),
            overflow: OverflowPolicy::RejectNew,
        })
        .wait_for_startup(args.startup_delay > 0);
    let servers = Servers::start(&args, options, handler, &display).await?;
    let several = servers.several();
    {
        let handles = servers.handles.clone();
        let startup_delay = Duration::from_millis(args.startup_delay);
        let startup_display = Arc::clone(&display);
        tokio::spawn(async move {
            tokio::time::sleep(startup_delay).await;
            for handle in &handles {
                handle.mark_started();
            }
            startup_display.line("server: start-up complete, connections can become ready");
        });
    }

    // The relay, with faults on until every message has been sent; in front of several
    // instances it is their load balancer too.
    let backends = Backends::new(servers.addresses.iter().copied().enumerate().collect());
    let (faults, faults_on) = watch::channel(true);
    let (relay_events, mut relay_events_in) = mpsc::unbounded_channel();
    let relay_address = Relay::start(backends.clone(), seed, faults_on, relay_events)
        .await
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    let (cuts, stalls) = (Arc::new(Mutex::new(0u64)), Arc::new(Mutex::new(0u64)));
    let routed = Arc::new(Mutex::new(vec![0u64; servers.handles.len()]));
    {
        let (display, cuts, stalls, routed) = (
            Arc::clone(&display),
            Arc::clone(&cuts),
            Arc::clone(&stalls),
            Arc::clone(&routed),
        );
        tokio::spawn(async move {
            while let Some(event) = relay_events_in.recv().await {
                match event {
                    RelayEvent::Routed { connection, server } => {
                        if several {
                            display.line(&format!(
                                "balancer: connection {connection} goes to instance {}",
                                server + 1
                            ));
                        }
                        if let Some(count) = routed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_mut(server)
                        {
                            *count += 1;
                        }
                    }
                    RelayEvent::Cut { connection, after } => {
                        *cuts.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        display.line(&format!(
                            "relay: cut connection {connection} after {} ms",
                            after.as_millis()
                        ));
                    }
                    RelayEvent::Stalled { connection, after } => {
                        *stalls.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        display.line(&format!(
                            "relay: stalled connection {connection} after {} ms (half-open: only heartbeats notice)",
                            after.as_millis()
                        ));
                    }
                }
            }
        });
    }

    let client = Arc::new(
        Client::builder(format!("ws://{relay_address}/ws"))
            .token(USER)
            .backoff(Duration::from_millis(50), Duration::from_millis(1000))
            .overflow(Overflow::Wait)
            .jitter_seed(seed)
            .connect()
            .map_err(|error| error.to_string())?,
    );
    // Messages sent before the first `connection_ready` wait in the client; the watcher says how
    // many when the connection becomes ready.
    let held = Arc::new(Held::default());
    watch_state(&client, &display, &held, several.then(|| backends.clone()));

    let servers = Arc::new(tokio::sync::Mutex::new(servers));
    // A publish through an instance killed while it commits cannot tell whether it was
    // written; its publisher would try again and might publish it twice (publishes carry no
    // idempotency key). The demo's kill waits for the publish under way, so that it shows
    // what it is about: the instance carrying the user's socket dies, not a publish.
    let publishing = Arc::new(tokio::sync::RwLock::new(()));
    let killed: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![false; routed_len(&routed)]));
    let sent_so_far = Arc::new(AtomicU64::new(0));

    // Server → client: numbered publishes, paced, whether or not the client is connected; with
    // several instances, through each live one in turn, as a backend behind its own load
    // balancer reaches any of them.
    let published_while_disconnected = Arc::new(Mutex::new(0u64));
    let published_elsewhere = Arc::new(AtomicU64::new(0));
    let published_through = Arc::new(Mutex::new(vec![0u64; routed_len(&routed)]));
    let publisher = {
        let (servers, count, elsewhere, through, killed, backends, publishing) = (
            Arc::clone(&servers),
            Arc::clone(&published_while_disconnected),
            Arc::clone(&published_elsewhere),
            Arc::clone(&published_through),
            Arc::clone(&killed),
            backends.clone(),
            Arc::clone(&publishing),
        );
        let user = UserId::new(USER);
        tokio::spawn(async move {
            let handles = servers.lock().await.handles.clone();
            let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut turn = 0usize;
            for n in 0..messages {
                ticker.tick().await;
                let data = numbered(n);
                loop {
                    let index = (0..handles.len())
                        .map(|step| (turn + step) % handles.len())
                        .find(|index| !killed.lock().unwrap_or_else(|e| e.into_inner())[*index])
                        .unwrap_or(0);
                    turn = index + 1;
                    let published = {
                        let _under_way = publishing.read().await;
                        handles[index].publish(&user, data.clone()).await
                    };
                    match published {
                        Ok(report) => {
                            if report.held {
                                *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                            }
                            through.lock().unwrap_or_else(|e| e.into_inner())[index] += 1;
                            if handles.len() > 1 && backends.newest() != Some(index) {
                                elsewhere.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        // A full mailbox refuses, and a killed instance cannot take it: the
                        // publisher is told and tries again.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        })
    };

    // Client → server: numbered sends, paced; each delivery's outcome is counted.
    let acked = Arc::new(Mutex::new(0u64));
    let not_acked = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let sender =
        {
            let (client, acked, not_acked, held, sent_so_far) = (
                Arc::clone(&client),
                Arc::clone(&acked),
                Arc::clone(&not_acked),
                Arc::clone(&held),
                Arc::clone(&sent_so_far),
            );
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
                let mut deliveries = Vec::with_capacity(messages as usize);
                for n in 0..messages {
                    ticker.tick().await;
                    match client.send(numbered(n)).await {
                        Ok(delivery) => {
                            if !held.ready.load(Ordering::SeqCst) {
                                held.count.fetch_add(1, Ordering::SeqCst);
                            }
                            deliveries.push(delivery);
                        }
                        Err(error) => not_acked.lock().unwrap_or_else(|e| e.into_inner()).push(
                            Outcome::Refused {
                                code: "not_accepted".to_owned(),
                                reason: error.to_string(),
                            },
                        ),
                    }
                    sent_so_far.store(n + 1, Ordering::SeqCst);
                }
                for delivery in deliveries {
                    match delivery.await {
                        Outcome::Acked => *acked.lock().unwrap_or_else(|e| e.into_inner()) += 1,
                        other => not_acked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(other),
                    }
                }
            })
        };

    // Halfway through, the instance carrying the client's socket dies.
    if several {
        let (servers, killed, backends, display, sent_so_far, publishing) = (
            Arc::clone(&servers),
            Arc::clone(&killed),
            backends.clone(),
            Arc::clone(&display),
            Arc::clone(&sent_so_far),
            Arc::clone(&publishing),
        );
        tokio::spawn(async move {
            while sent_so_far.load(Ordering::SeqCst) < messages / 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _no_publish_under_way = publishing.write().await;
            let Some(victim) = backends.newest() else {
                return;
            };
            backends.remove(victim);
            killed.lock().unwrap_or_else(|e| e.into_inner())[victim] = true;
            servers.lock().await.instances[victim].kill();
            display.line(&format!(
                "instance {}: KILLED while carrying the client's socket (no goodbye; its sessions wait in Redis until its lease runs out)",
                victim + 1
            ));
        });
    }

    let received_by_client = Arc::new(Mutex::new(Vec::<u64>::with_capacity(messages as usize)));
    {
        let (received, mut stream) = (Arc::clone(&received_by_client), client.messages());
        tokio::spawn(async move {
            while let Some(data) = stream.next().await {
                if let Some(n) = number(&data) {
                    received.lock().unwrap_or_else(|e| e.into_inner()).push(n);
                }
            }
        });
    }

    // Wait for both directions, with the faults switched off once everything has been sent so
    // that the run ends; give up after a generous deadline and report what is missing.
    let deadline = Instant::now() + Duration::from_secs(60 + 2 * messages / rate);
    let user = UserId::new(USER);
    let depth = |servers: Arc<tokio::sync::Mutex<Servers>>| {
        let user = user.clone();
        async move {
            let handle = servers.lock().await.live_handle().cloned();
            match handle {
                Some(handle) => handle.mailbox_depth(&user).await.ok(),
                None => None,
            }
        }
    };
    loop {
        let up = *acked.lock().unwrap_or_else(|e| e.into_inner());
        let down = received_by_client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u64;
        display.progress(up, down);
        if sender.is_finished() && publisher.is_finished() && *faults.borrow() {
            let _ = faults.send(false);
            display.line("relay: every message sent; no more faults on new connections");
        }
        let settled = not_acked.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        if up + settled >= messages
            && down >= messages
            && depth(Arc::clone(&servers)).await == Some(0)
        {
            break;
        }
        if Instant::now() > deadline {
            display.line("gave up waiting: the summary shows what is missing");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    display.finish();

    let still_held = depth(Arc::clone(&servers))
        .await
        .unwrap_or(messages as usize) as u64;
    let stats = client.stats();
    client.close(Duration::from_secs(2)).await;
    if let Ok(servers) = Arc::try_unwrap(servers) {
        servers.into_inner().stop().await;
    }

    let acked_by_server = *acked.lock().unwrap_or_else(|e| e.into_inner());
    let killed = killed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let server_arrivals = received_by_server
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (first_arrivals, redelivered_after_kill) = first_arrivals(&server_arrivals, &killed);
    let client_arrivals = received_by_client
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let instances = if several {
        let routed = routed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let through = published_through
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (0..killed.len())
            .map(|index| InstanceSummary {
                instance: index + 1,
                connections: routed[index],
                received_from_client: server_arrivals
                    .iter()
                    .filter(|(at, _)| *at == index)
                    .count() as u64,
                published_through: through[index],
                killed: killed[index],
            })
            .collect()
    } else {
        Vec::new()
    };
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let summary = Summary {
        seed,
        seconds: display.started.elapsed().as_secs_f64(),
        store: if several || args.redis.is_some() {
            "redis"
        } else {
            "memory"
        },
        client_to_server: Direction::check(messages, acked_by_server, &first_arrivals),
        server_to_client: Direction::check(
            messages,
            messages.saturating_sub(still_held),
            &client_arrivals,
        ),
        connections_cut: *cuts.lock().unwrap_or_else(|e| e.into_inner()),
        connections_stalled: *stalls.lock().unwrap_or_else(|e| e.into_inner()),
        reconnects: stats.reconnects,
        resumes: stats
            .readies
            .saturating_sub(1)
            .saturating_sub(stats.session_resets),
        session_resets: stats.session_resets,
        held_before_first_ready: held.count.load(Ordering::SeqCst),
        published_while_disconnected: *published_while_disconnected
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
        time_to_ready_median_ms: ms(stats.time_to_ready_p50),
        time_to_ready_p99_ms: ms(stats.time_to_ready_p99),
        published_through_another_instance: published_elsewhere.load(Ordering::Relaxed),
        redelivered_after_kill,
        instances,
    };
    let clean = summary.client_to_server.clean() && summary.server_to_client.clean();
    if args.json {
        let json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print_table(&summary, clean);
    }
    Ok(clean)
}

fn routed_len(routed: &Mutex<Vec<u64>>) -> usize {
    routed.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// The client's numbers in the order the servers' applications first got them, and how many
/// arrived again only because the instance that first got them was killed before it could
/// acknowledge them (the client then sends them again: at least once across a crash). Any
/// other repeat stays in, and counts as a duplicate.
fn first_arrivals(arrivals: &[(usize, u64)], killed: &[bool]) -> (Vec<u64>, u64) {
    let mut first_at = std::collections::HashMap::new();
    let mut kept = Vec::with_capacity(arrivals.len());
    let mut redelivered = 0;
    for &(instance, n) in arrivals {
        match first_at.get(&n) {
            Some(&first) if first != instance && killed.get(first) == Some(&true) => {
                redelivered += 1;
            }
            _ => {
                first_at.entry(n).or_insert(instance);
                kept.push(n);
            }
        }
    }
    (kept, redelivered)
}

/// Prints connection changes as they happen, and how many messages were held before the first
/// `connection_ready`.
/// Messages sent before the first `connection_ready`.
#[derive(Debug, Default)]
struct Held {
    ready: AtomicBool,
    count: AtomicU64,
}

fn watch_state(
    client: &Arc<Client>,
    display: &Arc<Display>,
    held: &Arc<Held>,
    backends: Option<Backends>,
) {
    let mut states = client.watch_state();
    let (display, held, client) = (Arc::clone(display), Arc::clone(held), Arc::clone(client));
    // With several instances, which one the connection reached.
    let on = move || match backends.as_ref().and_then(Backends::newest) {
        Some(index) => format!(" on instance {}", index + 1),
        None => String::new(),
    };
    tokio::spawn(async move {
        let mut was_ready = false;
        while states.changed().await.is_ok() {
            let state = states.borrow_and_update().clone();
            match state {
                ConnectionState::Connecting { attempt } if attempt > 1 => {
                    display.line(&format!("client: connecting, attempt {attempt}"));
                }
                ConnectionState::Ready {
                    session_id,
                    resumed,
                    ..
                } => {
                    let waiting = client.stats().queued;
                    if !held.ready.swap(true, Ordering::SeqCst) {
                        display.line(&format!(
                            "client: ready on {session_id}{} after the cold start; flushing the {} messages held until now",
                            on(),
                            held.count.load(Ordering::SeqCst)
                        ));
                    } else if resumed && waiting > 0 {
                        display.line(&format!(
                            "client: ready again{}, {session_id} resumed; {waiting} held messages go out now",
                            on()
                        ));
                    } else if resumed {
                        display.line(&format!(
                            "client: ready again{}, {session_id} resumed",
                            on()
                        ));
                    } else {
                        display.line(&format!(
                            "client: ready on a new session {session_id}{}; unacknowledged messages are sent again",
                            on()
                        ));
                    }
                    was_ready = true;
                }
                ConnectionState::Reconnecting {
                    attempt,
                    delay,
                    reason,
                } if was_ready || attempt > 1 => {
                    display.line(&format!(
                        "client: {reason}; reconnecting in {} ms (attempt {attempt})",
                        delay.as_millis()
                    ));
                }
                ConnectionState::Closed { reason } => {
                    display.line(&format!("client: closed ({reason})"));
                    break;
                }
                _ => {}
            }
        }
    });
}

fn print_table(summary: &Summary, clean: bool) {
    let (up, down) = (&summary.client_to_server, &summary.server_to_client);
    println!();
    println!(
        "{:<28}{:>18}{:>18}",
        "", "client → server", "server → client"
    );
    let rows: [(&str, u64, u64); 6] = [
        ("sent", up.sent, down.sent),
        ("acknowledged", up.acked, down.acked),
        ("received", up.received, down.received),
        ("lost", up.lost, down.lost),
        ("duplicated", up.duplicated, down.duplicated),
        ("out of order", up.out_of_order, down.out_of_order),
    ];
    for (name, a, b) in rows {
        println!("{name:<28}{a:>18}{b:>18}");
    }
    println!();
    let ms = |value: Option<f64>| value.map_or("-".to_owned(), |ms| format!("{ms:.1} ms"));
    let lines = [
        (
            "connections cut by the relay",
            summary.connections_cut.to_string(),
        ),
        (
            "connections stalled",
            summary.connections_stalled.to_string(),
        ),
        ("reconnects", summary.reconnects.to_string()),
        ("sessions resumed", summary.resumes.to_string()),
        ("sessions reset", summary.session_resets.to_string()),
        (
            "held before the first ready",
            summary.held_before_first_ready.to_string(),
        ),
        (
            "published while disconnected",
            summary.published_while_disconnected.to_string(),
        ),
        (
            "published via other instance",
            summary.published_through_another_instance.to_string(),
        ),
        (
            "redelivered after a kill",
            summary.redelivered_after_kill.to_string(),
        ),
        ("time to ready, median", ms(summary.time_to_ready_median_ms)),
        ("time to ready, p99", ms(summary.time_to_ready_p99_ms)),
        ("seconds", format!("{:.1}", summary.seconds)),
        ("seed", summary.seed.to_string()),
    ];
    for (name, value) in lines {
        if summary.instances.is_empty()
            && matches!(
                name,
                "published via other instance" | "redelivered after a kill"
            )
        {
            continue;
        }
        println!("{name:<28}{value:>18}");
    }
    if !summary.instances.is_empty() {
        println!();
        println!(
            "{:<12}{:>14}{:>18}{:>18}",
            "instance", "connections", "from the client", "published via"
        );
        for instance in &summary.instances {
            let name = format!(
                "{}{}",
                instance.instance,
                if instance.killed { " (killed)" } else { "" }
            );
            println!(
                "{name:<12}{:>14}{:>18}{:>18}",
                instance.connections, instance.received_from_client, instance.published_through
            );
        }
    }
    println!();
    if clean {
        println!("every message arrived exactly once and in order, both ways");
    } else {
        println!("FAILED: messages were lost, duplicated or reordered");
    }
}

/// A seed that differs from run to run; printed, so that any run can be repeated.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

fn numbered(n: u64) -> Data {
    Data::from_json(format!(r#"{{"n":{n}}}"#)).expect("an object with one integer is JSON")
}

fn number(data: &Data) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Numbered {
        n: u64,
    }
    data.deserialize::<Numbered>()
        .ok()
        .map(|numbered| numbered.n)
}
