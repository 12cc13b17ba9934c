//! The chaos run: many native clients and the reference server, through a faulty relay, with
//! messages both ways and publishes to users who are not connected yet.
//!
//! What it checks, per user: every message a client sent that ended acknowledged reached the
//! server's handler exactly once and in order, and every message that did not end acknowledged
//! got a terminal outcome; every message published to the user reached the client exactly once
//! and in order.
//!
//! With `instances`, the server is several instance processes on one Redis behind a balancer
//! (the relay in front of it), publishes go through one more instance, and `kills` instances are
//! killed with SIGKILL during the run, each replaced by a new one. A client message that a killed
//! instance handed to its application but could not acknowledge is sent again by its client and
//! reaches an application twice: at least once across a crash, counted as
//! `redelivered_after_kill` and not as a duplicate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use readyws::{Client, Data, Outcome, Overflow, ResetPolicy};
use readyws_protocol::ServerConfig;
use readyws_server::{
    Decision, Inbound, MailboxLimits, OverflowPolicy, ServerHandle, ServerOptions, UserId,
};
use serde::Serialize;

use crate::cluster::{Balancer, InstanceProcess, RedisCluster, RedisProcess};
use crate::harness::RunningServer;
use crate::relay::Relay;

/// The size and seed of a run.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Clients, each its own user.
    pub clients: usize,
    /// Messages each client sends, and messages published to each user.
    pub messages: u64,
    /// Seed of the relay's faults, the clients' jitter and their start times.
    pub seed: u64,
    /// Messages per second per client in each direction.
    pub rate: u64,
    /// How long the run may take before what is missing is reported.
    pub deadline: Duration,
    /// Graceful restarts of the server during the run. A restarted in-memory server has lost
    /// its sessions and mailboxes: clients then report session resets, and they use
    /// [`ResetPolicy::Report`] so that a message never arrives twice; messages held in the lost
    /// mailboxes are counted apart (`lost_to_restarts`), as `docs/RELIABILITY.md` says.
    pub restarts: u32,
    /// Server instances sharing one Redis (0: one in-process server with the in-memory store).
    pub instances: usize,
    /// Instances killed (SIGKILL) during the run, each replaced by a new one.
    pub kills: u32,
    /// With instances: they share a Redis Cluster of three nodes instead of one primary.
    pub redis_cluster: bool,
    /// The `instance` binary, for runs with instances.
    pub instance_program: Option<PathBuf>,
}

/// One direction's figures, summed over users.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Flow {
    /// Messages handed to a sender.
    pub sent: u64,
    /// Messages that ended acknowledged (client → server), or published (server → client).
    pub acknowledged: u64,
    /// Messages that ended otherwise, with the outcome reported to the sender.
    pub terminal_outcomes: u64,
    /// Messages received.
    pub received: u64,
    /// Acknowledged or published messages that never arrived.
    pub lost: u64,
    /// Arrivals of a message that had already arrived.
    pub duplicated: u64,
    /// Arrivals of a lower number after a higher one.
    pub out_of_order: u64,
    /// Client messages that reached an instance killed before it could acknowledge them, and
    /// then, sent again, another instance.
    pub redelivered_after_kill: u64,
    /// Published messages that never arrived because a restart took the mailbox holding them
    /// (only counted in runs with restarts; otherwise they are `lost`).
    pub lost_to_restarts: u64,
    /// The first anomalies found, for a person to read: which user, which numbers.
    pub anomalies: Vec<String>,
}

/// What a run found.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    /// The settings.
    pub clients: usize,
    /// Messages per client each way.
    pub messages: u64,
    /// The seed.
    pub seed: u64,
    /// Client → server.
    pub client_to_server: Flow,
    /// Server → client.
    pub server_to_client: Flow,
    /// Connections the relay carried.
    pub connections: u64,
    /// Connections cut after a number of bytes (inside the upgrade, a frame, anywhere).
    pub cut_mid_stream: u64,
    /// Connections cut after a while.
    pub cut_after_time: u64,
    /// Connections stalled half-open.
    pub stalled: u64,
    /// `msg`, `ack` or `nack` frames the relay saw on a connection before its `connection_ready`
    /// [HS-5].
    pub messages_before_ready: u64,
    /// `connection_ready` frames the relay saw.
    pub readies_seen: u64,
    /// Reconnects over all clients.
    pub reconnects: u64,
    /// Sessions lost and started anew.
    pub session_resets: u64,
    /// Graceful server restarts during the run.
    pub restarts: u32,
    /// Server instances on Redis (0: one in-memory server).
    pub instances: usize,
    /// Instances killed during the run.
    pub kills: u32,
    /// The instances shared a Redis Cluster.
    pub redis_cluster: bool,
    /// Whether everything settled before the deadline.
    pub completed: bool,
    /// Seconds the run took.
    pub seconds: f64,
    /// Peak resident memory of the process, in KiB (Linux), as a check that queues stay bounded.
    pub peak_rss_kib: Option<u64>,
}

impl ChaosReport {
    /// No message lost, duplicated or reordered, every one settled, and none before readiness.
    pub fn clean(&self) -> bool {
        let flows = [&self.client_to_server, &self.server_to_client];
        self.completed
            && self.messages_before_ready == 0
            && flows
                .iter()
                .all(|flow| flow.lost == 0 && flow.duplicated == 0 && flow.out_of_order == 0)
    }
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

/// Compares `user`'s arrivals with the numbers that had to arrive.
fn judge(flow: &mut Flow, user: &str, must_arrive: &[bool], arrived: &[u64]) {
    const KEEP: usize = 10;
    let note = |flow: &mut Flow, text: String| {
        if flow.anomalies.len() < KEEP {
            flow.anomalies.push(format!("{user}: {text}"));
        }
    };
    let mut seen = vec![false; must_arrive.len()];
    flow.received += arrived.len() as u64;
    for (at, &n) in arrived.iter().enumerate() {
        match seen.get_mut(n as usize) {
            Some(slot) if *slot => {
                flow.duplicated += 1;
                note(flow, format!("{n} arrived again (arrival {at})"));
            }
            Some(slot) => *slot = true,
            None => {
                flow.duplicated += 1;
                note(flow, format!("{n} was never sent"));
            }
        }
        if at > 0 && n < arrived[at - 1] {
            flow.out_of_order += 1;
            let from = at.saturating_sub(3);
            let to = (at + 4).min(arrived.len());
            note(
                flow,
                format!(
                    "{n} arrived after {} (arrivals {from}..{to}: {:?})",
                    arrived[at - 1],
                    &arrived[from..to]
                ),
            );
        }
    }
    for (n, (must, seen)) in must_arrive.iter().zip(&seen).enumerate() {
        if *must && !*seen {
            flow.lost += 1;
            note(flow, format!("{n} never arrived"));
        }
    }
}

type Arrivals = Arc<Mutex<HashMap<String, Vec<u64>>>>;

/// Runs the chaos test.
pub async fn run(config: &ChaosConfig) -> ChaosReport {
    let started = Instant::now();
    let messages = config.messages.max(1);
    let rate = config.rate.max(1);
    let at_server: Arrivals = Arc::default();
    let record = Arc::clone(&at_server);
    let handler = move |_: &ServerHandle, message: Inbound<'_>| {
        if let Some(n) = number(message.data) {
            record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(message.user.as_str().to_owned())
                .or_default()
                .push(n);
        }
        Decision::Accept
    };
    let options = ServerOptions::default()
        .protocol(
            ServerConfig::default()
                .heartbeat(Duration::from_millis(500))
                .hello_timeout(Duration::from_secs(3)),
        )
        .mailbox(MailboxLimits {
            max_messages: messages as usize + 100,
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(3600),
            overflow: OverflowPolicy::RejectNew,
        });
    let cluster = match config.instances {
        0 => None,
        instances => {
            let program = config
                .instance_program
                .clone()
                .expect("runs with instances name the instance binary");
            let cluster = Cluster::start(instances, program, messages, config.redis_cluster)
                .await
                .expect("the instances start");
            Some(Arc::new(tokio::sync::Mutex::new(cluster)))
        }
    };
    // With instances, this server only publishes: it is an instance too, outside the balancer.
    let options = match &cluster {
        Some(cluster) => {
            let url = cluster.lock().await.redis.url();
            let store = readyws_server::RedisStore::connect(&url)
                .await
                .expect("the run's redis-server answers");
            options.redis(store)
        }
        None => options,
    };
    let server = RunningServer::start(options.clone(), handler.clone()).await;
    let address = match &cluster {
        Some(cluster) => cluster.lock().await.balancer.address,
        None => server.address,
    };
    let current = Arc::new(Mutex::new(server.handle.clone()));
    let server = Arc::new(tokio::sync::Mutex::new(Some(server)));
    let relay = Relay::start(address, config.seed)
        .await
        .expect("the relay starts");
    let url = format!("ws://{}/ws", relay.address);
    let period = Duration::from_micros(1_000_000 / rate);
    let mut rng = fastrand::Rng::with_seed(config.seed);

    // Publishers: one per user, from the start, so that users not connected yet get held messages.
    let mut publishers = Vec::new();
    for index in 0..config.clients {
        let (current, user) = (Arc::clone(&current), UserId::new(format!("user-{index}")));
        publishers.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            for n in 0..messages {
                ticker.tick().await;
                loop {
                    let handle = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if handle.publish(&user, numbered(n)).await.is_ok() {
                        break;
                    }
                    // A full mailbox, or a server shutting down: the publisher is told and tries
                    // again (on the restarted server).
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }

    // Graceful restarts, spread over the time the messages take to send.
    let restarter = {
        let (server, current) = (Arc::clone(&server), Arc::clone(&current));
        let (restarts, options, handler) = (config.restarts, options.clone(), handler.clone());
        let span = period * u32::try_from(messages).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            for _ in 0..restarts {
                tokio::time::sleep(span / (restarts + 1)).await;
                let mut slot = server.lock().await;
                if let Some(old) = slot.take() {
                    old.stop().await;
                }
                let new = RunningServer::start_on(address, options.clone(), handler.clone()).await;
                *current.lock().unwrap_or_else(|e| e.into_inner()) = new.handle.clone();
                *slot = Some(new);
            }
        })
    };

    // Instance kills, spread like the restarts.
    let killer = {
        let (cluster, kills) = (cluster.clone(), config.kills);
        let span = period * u32::try_from(messages).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            let Some(cluster) = cluster else { return };
            for kill in 0..kills {
                tokio::time::sleep(span / (kills + 1)).await;
                cluster.lock().await.kill_and_replace(kill as usize).await;
            }
        })
    };

    // Clients, each starting up to a second late.
    let mut clients = Vec::new();
    for index in 0..config.clients {
        let delay = Duration::from_millis(rng.u64(0..1_000));
        let jitter_seed = rng.u64(..);
        let url = url.clone();
        let restarts = config.restarts;
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let client = Arc::new(
                Client::builder(url)
                    .token(format!("user-{index}"))
                    .reset_policy(if restarts > 0 {
                        ResetPolicy::Report
                    } else {
                        ResetPolicy::Resend
                    })
                    .backoff(Duration::from_millis(20), Duration::from_millis(500))
                    .overflow(Overflow::Wait)
                    .jitter_seed(jitter_seed)
                    .connect()
                    .expect("a valid client configuration"),
            );
            let received = Arc::new(Mutex::new(Vec::with_capacity(messages as usize)));
            let (sink, mut stream) = (Arc::clone(&received), client.messages());
            tokio::spawn(async move {
                while let Some(data) = stream.next().await {
                    if let Some(n) = number(&data) {
                        sink.lock().unwrap_or_else(|e| e.into_inner()).push(n);
                    }
                }
            });
            let mut ticker = tokio::time::interval(period);
            let mut deliveries = Vec::with_capacity(messages as usize);
            for n in 0..messages {
                ticker.tick().await;
                deliveries.push(client.send(numbered(n)).await);
            }
            let mut acked = vec![false; messages as usize];
            let mut terminal = 0u64;
            for (n, delivery) in deliveries.into_iter().enumerate() {
                match delivery {
                    Ok(delivery) => match delivery.await {
                        Outcome::Acked => acked[n] = true,
                        _ => terminal += 1,
                    },
                    Err(_) => terminal += 1,
                }
            }
            (index, client, received, acked, terminal)
        }));
    }

    let deadline = Instant::now() + config.deadline;
    let mut finished = Vec::new();
    for client in clients {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(done)) = tokio::time::timeout(left, client).await {
            finished.push(done);
        }
    }
    for publisher in publishers {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, publisher).await;
    }
    let _ = restarter.await;
    let _ = killer.await;
    relay.stop_faults();
    // Everything is sent; wait for the server's side to drain to the clients.
    let mut completed = finished.len() == config.clients;
    let mut last_count = 0;
    let mut quiet_since = Instant::now();
    loop {
        let counts: Vec<u64> = finished
            .iter()
            .map(|(_, _, received, _, _)| {
                received.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
            })
            .collect();
        if counts.iter().all(|count| *count >= messages) {
            break;
        }
        // With restarts some published messages are gone with their mailbox: stop once nothing
        // has arrived for two seconds.
        let total: u64 = counts.iter().sum();
        if total != last_count {
            (last_count, quiet_since) = (total, Instant::now());
        } else if config.restarts > 0 && quiet_since.elapsed() > Duration::from_secs(2) {
            break;
        }
        if Instant::now() > deadline {
            completed = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut up = Flow::default();
    let mut down = Flow::default();
    let (mut reconnects, mut session_resets) = (0, 0);
    let at_server = match &cluster {
        Some(cluster) => cluster.lock().await.arrivals(&mut up),
        None => at_server.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    };
    for (index, client, received, acked, terminal) in &finished {
        up.sent += messages;
        up.acknowledged += acked.iter().filter(|acked| **acked).count() as u64;
        up.terminal_outcomes += terminal;
        let arrived = at_server
            .get(&format!("user-{index}"))
            .cloned()
            .unwrap_or_default();
        let user = format!("user-{index}");
        judge(&mut up, &user, acked, &arrived);
        down.sent += messages;
        down.acknowledged += messages;
        let received = received.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if config.restarts > 0 {
            // Held messages of a restarted server are gone by design: judge duplicates and order,
            // and count what never came apart.
            let mut flow = Flow::default();
            judge(&mut flow, &user, &vec![false; messages as usize], &received);
            down.received += flow.received;
            down.duplicated += flow.duplicated;
            down.out_of_order += flow.out_of_order;
            down.anomalies.extend(flow.anomalies);
            let arrived: std::collections::BTreeSet<u64> = received.iter().copied().collect();
            down.lost_to_restarts += messages - arrived.len() as u64;
        } else {
            judge(&mut down, &user, &vec![true; messages as usize], &received);
        }
        let stats = client.stats();
        reconnects += stats.reconnects;
        session_resets += stats.session_resets;
    }
    for (_, client, _, _, _) in &finished {
        client.close(Duration::from_millis(500)).await;
    }
    if let Some(server) = server.lock().await.take() {
        server.stop().await;
    }
    let counters = &relay.counters;
    use std::sync::atomic::Ordering::Relaxed;
    ChaosReport {
        clients: config.clients,
        messages,
        seed: config.seed,
        client_to_server: up,
        server_to_client: down,
        connections: counters.connections.load(Relaxed),
        cut_mid_stream: counters.cut_mid_stream.load(Relaxed),
        cut_after_time: counters.cut_after_time.load(Relaxed),
        stalled: counters.stalled.load(Relaxed),
        messages_before_ready: counters.messages_before_ready.load(Relaxed),
        readies_seen: counters.readies_seen.load(Relaxed),
        reconnects,
        session_resets,
        restarts: config.restarts,
        instances: config.instances,
        kills: config.kills,
        redis_cluster: config.redis_cluster,
        completed,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kib: peak_rss_kib(),
    }
}

/// `VmHWM` of this process, where `/proc` has it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The Redis the instances share.
enum SharedRedis {
    Primary(RedisProcess),
    Cluster(RedisCluster),
}

impl SharedRedis {
    fn url(&self) -> String {
        match self {
            SharedRedis::Primary(redis) => redis.url(),
            SharedRedis::Cluster(cluster) => cluster.url(),
        }
    }
}

/// Instance processes on one Redis, behind a balancer.
struct Cluster {
    redis: SharedRedis,
    program: PathBuf,
    flags: Vec<String>,
    /// Every instance started, killed ones included (their logs still count).
    instances: Vec<InstanceProcess>,
    killed: Vec<bool>,
    balancer: Balancer,
}

impl Cluster {
    async fn start(
        count: usize,
        program: PathBuf,
        messages: u64,
        redis_cluster: bool,
    ) -> Result<Cluster, String> {
        let redis = tokio::task::spawn_blocking(move || {
            if redis_cluster {
                RedisCluster::start().map(SharedRedis::Cluster)
            } else {
                RedisProcess::start().map(SharedRedis::Primary)
            }
        })
        .await
        .map_err(|problem| problem.to_string())??;
        let flags = [
            "--heartbeat-ms",
            "500",
            "--hello-timeout-ms",
            "3000",
            "--mailbox-max-messages",
            &(messages + 100).to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let mut instances = Vec::new();
        for _ in 0..count {
            instances.push(spawn_instance(&program, &redis.url(), &flags).await?);
        }
        let balancer = Balancer::start(instances.iter().map(|i| i.address).collect()).await;
        Ok(Cluster {
            redis,
            program,
            flags,
            killed: vec![false; instances.len()],
            instances,
            balancer,
        })
    }

    /// Kills the `which`-th live instance (modulo their number) and starts a replacement.
    async fn kill_and_replace(&mut self, which: usize) {
        let live: Vec<usize> = (0..self.instances.len())
            .filter(|index| !self.killed[*index])
            .collect();
        if let Some(&victim) = live.get(which % live.len().max(1)) {
            self.instances[victim].kill();
            self.killed[victim] = true;
        }
        match spawn_instance(&self.program, &self.redis.url(), &self.flags).await {
            Ok(instance) => {
                self.instances.push(instance);
                self.killed.push(false);
            }
            Err(problem) => tracing::warn!(%problem, "could not start a replacement instance"),
        }
        let addresses: Vec<SocketAddr> = (0..self.instances.len())
            .filter(|index| !self.killed[*index])
            .map(|index| self.instances[index].address)
            .collect();
        self.balancer.set_backends(addresses);
    }

    /// Every user's client messages as the instances' applications got them, in time order;
    /// arrivals again of a message first taken by an instance that was then killed are counted
    /// in `flow` and left out.
    fn arrivals(&self, flow: &mut Flow) -> HashMap<String, Vec<u64>> {
        let mut by_user: HashMap<String, Vec<(u64, u64, usize)>> = HashMap::new();
        for (index, instance) in self.instances.iter().enumerate() {
            for received in instance.received() {
                let Some(n) = Data::from_json(received.data.clone())
                    .ok()
                    .and_then(|d| number(&d))
                else {
                    continue;
                };
                by_user
                    .entry(received.user)
                    .or_default()
                    .push((received.at_micros, n, index));
            }
        }
        let mut arrivals = HashMap::new();
        for (user, mut list) in by_user {
            list.sort_unstable();
            let mut first_at: HashMap<u64, usize> = HashMap::new();
            let mut kept = Vec::with_capacity(list.len());
            for (_, n, index) in list {
                match first_at.get(&n) {
                    Some(&first) if self.killed[first] && first != index => {
                        flow.redelivered_after_kill += 1;
                    }
                    _ => {
                        first_at.entry(n).or_insert(index);
                        kept.push(n);
                    }
                }
            }
            arrivals.insert(user, kept);
        }
        arrivals
    }
}

async fn spawn_instance(
    program: &std::path::Path,
    redis_url: &str,
    flags: &[String],
) -> Result<InstanceProcess, String> {
    let (program, url, flags) = (program.to_owned(), redis_url.to_owned(), flags.to_vec());
    tokio::task::spawn_blocking(move || {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        InstanceProcess::spawn(&program, &url, &flags)
    })
    .await
    .map_err(|problem| problem.to_string())?
}
