//! Several instances on one Redis serve any user: a publish on one instance reaches the user's
//! session on another; a message for a user who is away waits in Redis for whichever instance the
//! user reaches; an instance killed outright loses nothing, its client resuming on another with
//! `resumed: true`; a Redis killed and restarted under load delays messages without losing any;
//! a held message expires only while its user has no session; and a Redis that is down is
//! reported to the publisher, with the reason, and counted; publishers that stop waiting hold up
//! no other publish to the same user, and a burst of them larger than may wait is still
//! committed in batches; publishers on two instances at once reach the user once each, in order. Each test runs its own
//! `redis-server` on a free loopback port; the first four run again on a Redis Cluster of three
//! loopback nodes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use readyws::{Client, ConnectionState, Data, Messages, Outcome};
use readyws_server::{
    AcceptAll, Decision, Inbound, InboundHandler, MailboxLimits, PublishError, RedisStore, Reply,
    ServerHandle, ServerOptions, StoreError, UserId,
};
use readyws_tests::cluster::{Balancer, InstanceProcess, RedisCluster, RedisProcess};
use readyws_tests::harness::{RunningServer, handshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INSTANCE: &str = env!("CARGO_BIN_EXE_instance");
const PATIENCE: Duration = Duration::from_secs(30);

fn numbered(n: u64) -> Data {
    Data::from_json(format!(r#"{{"n":{n}}}"#)).expect("JSON")
}

fn number(json: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|value| value["n"].as_u64())
        .expect("a numbered message")
}

/// A Redis for one test: a single primary or a cluster.
enum Shared {
    Primary(RedisProcess),
    Cluster(RedisCluster),
}

impl Shared {
    fn url(&self) -> String {
        match self {
            Shared::Primary(redis) => redis.url(),
            Shared::Cluster(cluster) => cluster.url(),
        }
    }
}

/// A test's two runs: on one primary, then on a cluster.
fn both() -> [fn() -> Shared; 2] {
    [
        || Shared::Primary(RedisProcess::start().expect("redis-server")),
        || Shared::Cluster(RedisCluster::start().expect("a Redis Cluster on loopback")),
    ]
}

async fn options(url: &str) -> ServerOptions {
    let store = RedisStore::connect(url)
        .await
        .expect("the suite's Redis answers");
    ServerOptions::default().redis(store)
}

/// A handler that records the numbers it accepts.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<u64>>>);

impl Recorder {
    fn seen(&self) -> Vec<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl InboundHandler for Recorder {
    fn on_message<'a>(&'a self, _: &'a ServerHandle, message: Inbound<'a>) -> Reply<'a> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(number(message.data.as_json()));
        Reply::Now(Decision::Accept)
    }
}

async fn receive(messages: &mut Messages, count: usize) -> Vec<u64> {
    let mut received = Vec::new();
    while received.len() < count {
        let data = tokio::time::timeout(PATIENCE, messages.next())
            .await
            .expect("messages in time")
            .expect("the stream is open");
        received.push(number(data.as_json()));
    }
    received
}

async fn wait_for_depth(server: &ServerHandle, user: &str, depth: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if server.mailbox_depth(&UserId::new(user)).await == Ok(depth) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mailbox of {user} never held {depth}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_instance_reaches_the_user_connected_to_another() {
    for start in both() {
        let redis = start();
        let seen_by_a = Recorder::default();
        let a = RunningServer::start(options(&redis.url()).await, seen_by_a.clone()).await;
        let b = RunningServer::start(options(&redis.url()).await, AcceptAll).await;
        let client = Client::builder(a.ws_url())
            .token("alice")
            .connect()
            .expect("a valid client configuration");
        client.ready().await.expect("ready on A");
        let mut messages = client.messages();

        for n in 0..50 {
            let report = b
                .handle
                .publish(&UserId::new("alice"), numbered(n))
                .await
                .expect("stored in Redis");
            assert_eq!(report.delivered, 1, "B knows alice is live on A");
        }
        assert_eq!(
            receive(&mut messages, 50).await,
            (0..50).collect::<Vec<_>>()
        );
        wait_for_depth(&b.handle, "alice", 0).await;

        // And the other way: what alice sends reaches A's application, acknowledged.
        for n in 0..10 {
            client
                .send_and_wait(numbered(n))
                .await
                .expect("acknowledged");
        }
        assert_eq!(seen_by_a.seen(), (0..10).collect::<Vec<_>>());
        client.close(Duration::from_secs(1)).await;
        a.stop().await;
        b.stop().await;
    }
}

/// How many commits Redis has run (calls of the commit script), read with `redis-cli`.
fn commits_run(redis: &RedisProcess) -> u64 {
    let url = redis.url();
    let port = url.rsplit(':').next().expect("a port in the URL");
    let output = std::process::Command::new("redis-cli")
        .args(["-p", port, "info", "commandstats"])
        .output()
        .expect("redis-cli runs (it comes with redis-server)");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

/// A burst of publishes to one user, more than may wait for a commit at once (4,096): those
/// past the bound wait for room and are still committed in batches, not one commit each, and
/// every one of them is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_publishes_beyond_the_waiting_bound_is_committed_in_batches() {
    const BURST: u64 = 6000;
    let redis = RedisProcess::start().expect("redis-server");
    let limits = MailboxLimits {
        max_messages: BURST as usize,
        max_bytes: 1 << 24,
        ..MailboxLimits::default()
    };
    let server = RunningServer::start(options(&redis.url()).await.mailbox(limits), AcceptAll).await;
    let client = Client::builder(server.ws_url())
        .token("ida")
        .connect()
        .expect("a valid client configuration");
    client.ready().await.expect("ready");
    let mut messages = client.messages();
    let ida = UserId::new("ida");
    let before = commits_run(&redis);

    let publishes = (0..BURST).map(|n| server.handle.publish(&ida, numbered(n)));
    let (outcomes, mut received) = tokio::join!(
        tokio::time::timeout(PATIENCE, futures_util::future::join_all(publishes)),
        receive(&mut messages, BURST as usize)
    );
    for outcome in outcomes.expect("the publishes end in time") {
        outcome.expect("stored in Redis");
    }
    received.sort_unstable();
    assert_eq!(received, (0..BURST).collect::<Vec<_>>(), "each once");
    let commits = commits_run(&redis) - before;
    assert!(
        commits < BURST / 20,
        "{BURST} publishes and their deliveries took {commits} commits"
    );
    client.close(Duration::from_secs(1)).await;
    server.stop().await;
}

/// An instance sends a user's commits one behind another without waiting for each answer; when
/// another instance's commit gets in between, the ones sent behind it are refused and run again
/// from the record as it is. Publishers on both instances at once, each publishing in order:
/// the user gets every message once, each publisher's in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_two_instances_at_once_reach_the_user_once_each_in_order() {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 60;
    for start in both() {
        let redis = start();
        let a = RunningServer::start(options(&redis.url()).await, AcceptAll).await;
        let b = RunningServer::start(options(&redis.url()).await, AcceptAll).await;
        let client = Client::builder(a.ws_url())
            .token("hal")
            .connect()
            .expect("a valid client configuration");
        client.ready().await.expect("ready on A");
        let mut messages = client.messages();
        let hal = UserId::new("hal");

        // Publisher p on instance p % 2 sends p * 1000 + 0, 1, 2 …, each after the last.
        let publishers = (0..PUBLISHERS).map(|p| {
            let server = if p % 2 == 0 { &a.handle } else { &b.handle };
            let hal = &hal;
            async move {
                for i in 0..EACH {
                    tokio::time::timeout(PATIENCE, server.publish(hal, numbered(p * 1000 + i)))
                        .await
                        .expect("a publish ends in time")
                        .expect("stored in Redis");
                }
            }
        });
        let (_, received) = tokio::join!(
            futures_util::future::join_all(publishers),
            receive(&mut messages, (PUBLISHERS * EACH) as usize)
        );
        for p in 0..PUBLISHERS {
            let from_p: Vec<u64> = received
                .iter()
                .filter(|n| *n / 1000 == p)
                .map(|n| n % 1000)
                .collect();
            assert_eq!(
                from_p,
                (0..EACH).collect::<Vec<_>>(),
                "publisher {p}'s messages, once each and in order"
            );
        }
        wait_for_depth(&a.handle, "hal", 0).await;
        client.close(Duration::from_secs(1)).await;
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_user_who_is_away_waits_in_redis_for_any_instance() {
    for start in both() {
        let redis = start();
        let a = RunningServer::start(options(&redis.url()).await, AcceptAll).await;
        let b = RunningServer::start(options(&redis.url()).await, AcceptAll).await;
        for n in 0..5 {
            let report = a
                .handle
                .publish(&UserId::new("bob"), numbered(n))
                .await
                .expect("stored in Redis");
            assert!(report.held, "nobody is connected anywhere");
        }
        wait_for_depth(&b.handle, "bob", 5).await;

        let client = Client::builder(b.ws_url())
            .token("bob")
            .connect()
            .expect("a valid client configuration");
        let mut messages = client.messages();
        assert_eq!(receive(&mut messages, 5).await, vec![0, 1, 2, 3, 4]);
        wait_for_depth(&a.handle, "bob", 0).await;
        client.close(Duration::from_secs(1)).await;
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_nothing_and_its_client_resumes_on_another() {
    for start in both() {
        let redis = start();
        const COUNT: u64 = 200;
        let program = std::path::Path::new(INSTANCE);
        let mut first = InstanceProcess::spawn(program, &redis.url(), &[]).expect("instance 1");
        let second = InstanceProcess::spawn(program, &redis.url(), &[]).expect("instance 2");
        let publisher = RunningServer::start(options(&redis.url()).await, AcceptAll).await;
        let balancer = Balancer::start(vec![first.address, second.address]).await;

        let client = Client::builder(balancer.ws_url())
            .token("carol")
            .backoff(Duration::from_millis(50), Duration::from_millis(500))
            .connect()
            .expect("a valid client configuration");
        client.ready().await.expect("ready on the first instance");
        let ConnectionState::Ready { session_id, .. } = client.state() else {
            panic!("ready");
        };
        let mut messages = client.messages();

        // Both directions flow while the instance carrying the session is killed halfway.
        let mut deliveries = Vec::new();
        for n in 0..COUNT {
            if n == COUNT / 2 {
                first.kill();
            }
            deliveries.push(client.send(numbered(n)).await.expect("accepted"));
            publisher
                .handle
                .publish(&UserId::new("carol"), numbered(n))
                .await
                .expect("stored in Redis");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let received = receive(&mut messages, COUNT as usize).await;
        assert_eq!(
            received,
            (0..COUNT).collect::<Vec<_>>(),
            "once each, in order"
        );
        for delivery in deliveries {
            let outcome = tokio::time::timeout(PATIENCE, delivery)
                .await
                .expect("settled in time");
            assert_eq!(outcome, Outcome::Acked);
        }
        // Every message reached an application; one the killed instance took but could not
        // acknowledge may have reached the second as well (at least once across a crash).
        assert!(
            !first.received().is_empty() && !second.received().is_empty(),
            "both served"
        );
        let reached: BTreeSet<u64> = first
            .received()
            .into_iter()
            .chain(second.received())
            .map(|received| number(&received.data))
            .collect();
        assert_eq!(reached, (0..COUNT).collect::<BTreeSet<_>>());

        match client.state() {
            ConnectionState::Ready {
                session_id: now,
                resumed,
                ..
            } => {
                assert!(resumed, "the session went on");
                assert_eq!(now, session_id, "the same session");
            }
            other => panic!("not ready: {other:?}"),
        }
        let stats = client.stats();
        assert_eq!(stats.session_resets, 0);
        assert!(stats.readies >= 2, "it reconnected");
        wait_for_depth(&publisher.handle, "carol", 0).await;
        client.close(Duration::from_secs(1)).await;
        publisher.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_load_delays_messages_and_loses_none() {
    const COUNT: u64 = 300;
    let mut redis = RedisProcess::start().expect("redis-server");
    let seen_by_a = Recorder::default();
    let a = RunningServer::start(options(&redis.url()).await, seen_by_a.clone()).await;
    let b = RunningServer::start(options(&redis.url()).await, AcceptAll).await;
    let client = Client::builder(a.ws_url())
        .token("dora")
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .connect()
        .expect("a valid client configuration");
    client.ready().await.expect("ready");
    let mut messages = client.messages();

    // Publishes that failed were refused to the publisher, who tries again: such a message may
    // arrive twice (Redis stored it but its answer was lost), never not at all.
    let mut refused_once = BTreeSet::new();
    let mut deliveries = Vec::new();
    // A third of the way in, Redis is killed, and back 2.5 s later (longer than the server's
    // retries) with what its append-only file kept.
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tokio::task::spawn_blocking(move || {
            redis.kill();
            std::thread::sleep(Duration::from_millis(2500));
            redis.restart().map(|()| redis)
        })
        .await
        .expect("the restart ran")
    });
    let mut longest_publish = Duration::ZERO;
    for n in 0..COUNT {
        deliveries.push(client.send(numbered(n)).await.expect("accepted"));
        let started = tokio::time::Instant::now();
        while b
            .handle
            .publish(&UserId::new("dora"), numbered(n))
            .await
            .is_err()
        {
            refused_once.insert(n);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        longest_publish = longest_publish.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert!(
        !refused_once.is_empty() || longest_publish >= Duration::from_secs(1),
        "the publisher ran into Redis being down"
    );
    let mut received = Vec::new();
    let mut distinct = BTreeSet::new();
    while distinct.len() < COUNT as usize {
        let data = tokio::time::timeout(PATIENCE, messages.next())
            .await
            .expect("messages in time")
            .expect("the stream is open");
        let n = number(data.as_json());
        received.push(n);
        distinct.insert(n);
    }
    for (at, pair) in received.windows(2).enumerate() {
        assert!(
            pair[1] > pair[0] || (pair[1] == pair[0] && refused_once.contains(&pair[0])),
            "in order, and twice only after a refused publish: {pair:?} in {:?}; {:?}",
            &received[at.saturating_sub(5)..(at + 6).min(received.len())],
            client.stats()
        );
    }
    for delivery in deliveries {
        let outcome = tokio::time::timeout(PATIENCE, delivery)
            .await
            .expect("settled in time");
        assert_eq!(outcome, Outcome::Acked);
    }
    let seen: BTreeSet<u64> = seen_by_a.seen().into_iter().collect();
    assert_eq!(seen, (0..COUNT).collect::<BTreeSet<_>>());
    assert_eq!(
        client.stats().session_resets,
        0,
        "the session outlived the restart"
    );
    let _redis = restart
        .await
        .expect("the restart task ran")
        .expect("redis-server starts again");
    client.close(Duration::from_secs(1)).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_expires_in_redis_only_while_its_user_has_no_session() {
    for start in both() {
        let redis = start();
        let limits = MailboxLimits {
            ttl: Duration::from_millis(300),
            ..MailboxLimits::default()
        };
        let server =
            RunningServer::start(options(&redis.url()).await.mailbox(limits), AcceptAll).await;

        // Nobody has a session: the message expires once its time-to-live has passed.
        let report = server
            .handle
            .publish(&UserId::new("gus"), numbered(1))
            .await
            .expect("stored");
        assert!(report.held);
        wait_for_depth(&server.handle, "gus", 0).await;

        // hal's session is kept for resume (its socket vanished without a close): the message waits
        // for it well past its time-to-live, and the next session of hal gets it.
        handshake(&server.ws_url(), "hal", None).await;
        server
            .handle
            .publish(&UserId::new("hal"), numbered(2))
            .await
            .expect("stored");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            server.handle.mailbox_depth(&UserId::new("hal")).await,
            Ok(1),
            "held while a session of hal is kept"
        );
        let client = Client::builder(server.ws_url())
            .token("hal")
            .connect()
            .expect("a valid client configuration");
        let mut messages = client.messages();
        assert_eq!(receive(&mut messages, 1).await, vec![2]);
        wait_for_depth(&server.handle, "hal", 0).await;
        client.close(Duration::from_secs(1)).await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_down_is_reported_to_the_publisher_and_counted() {
    let unreachable = RedisStore::connect("redis://127.0.0.1:1").await;
    assert!(
        matches!(unreachable, Err(StoreError::Connect { .. })),
        "{unreachable:?}"
    );

    let mut redis = RedisProcess::start().expect("redis-server");
    let server = RunningServer::start(options(&redis.url()).await, AcceptAll).await;
    redis.kill();
    let refused = server
        .handle
        .publish(&UserId::new("erin"), numbered(1))
        .await;
    let Err(PublishError::Unavailable(StoreError::Unavailable {
        operation,
        attempts,
        ..
    })) = &refused
    else {
        panic!("expected the store to be unavailable, got {refused:?}");
    };
    // A publish loads the user's record first: that is the store operation that failed.
    assert_eq!((*operation, *attempts), ("load", 5));
    assert!(
        refused.clone().unwrap_err().to_string().contains("load"),
        "the reason names what failed"
    );

    // The failure is counted where operators look.
    let mut stream = tokio::net::TcpStream::connect(server.address)
        .await
        .expect("the server listens");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request written");
    let mut page = String::new();
    stream
        .read_to_string(&mut page)
        .await
        .expect("response read");
    assert!(
        page.contains(r#"readyws_store_failures_total{operation="load"}"#),
        "{page}"
    );
    server.stop().await;
}

/// Publishes to one user that arrive while one of them commits go together in the next commit.
/// A publisher that stops waiting (here: dropped after its first poll) holds up none of the
/// others, and its message, already taken into a batch, is committed and delivered in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_whose_publishers_stop_waiting_hold_up_none_of_the_others() {
    let redis = RedisProcess::start().expect("redis-server");
    let server = RunningServer::start(options(&redis.url()).await, AcceptAll).await;
    let client = Client::builder(server.ws_url())
        .token("ivy")
        .connect()
        .expect("a valid client configuration");
    client.ready().await.expect("ready");
    let mut messages = client.messages();
    let ivy = UserId::new("ivy");

    // One after another: every third publisher gives up at once, most often as the one whose
    // commit the next ones wait for.
    for n in 0..300 {
        let publish = server.handle.publish(&ivy, numbered(n));
        if n % 3 == 0 {
            let _ = tokio::time::timeout(Duration::ZERO, publish).await;
        } else {
            let report = tokio::time::timeout(PATIENCE, publish)
                .await
                .expect("a publish ends in time")
                .expect("stored in Redis");
            assert_eq!(report.delivered, 1, "ivy is live");
        }
    }
    assert_eq!(
        receive(&mut messages, 300).await,
        (0..300).collect::<Vec<_>>()
    );

    // All at once, every fourth publisher giving up: the others all end, accepted.
    let publishes = (300..500).map(|n| {
        let publish = server.handle.publish(&ivy, numbered(n));
        async move {
            if n % 4 == 0 {
                let _ = tokio::time::timeout(Duration::ZERO, publish).await;
                None
            } else {
                Some(tokio::time::timeout(PATIENCE, publish).await)
            }
        }
    });
    for outcome in futures_util::future::join_all(publishes)
        .await
        .into_iter()
        .flatten()
    {
        outcome
            .expect("a publish ends in time")
            .expect("stored in Redis");
    }
    let mut late = receive(&mut messages, 200).await;
    late.sort_unstable();
    assert_eq!(late, (300..500).collect::<Vec<_>>());
    wait_for_depth(&server.handle, "ivy", 0).await;
    client.close(Duration::from_secs(1)).await;
    server.stop().await;
}
