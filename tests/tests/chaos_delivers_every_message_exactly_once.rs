//! The quick chaos run of the test suite: 20 clients, 400 messages each way each, through a relay
//! that cuts connections inside the HTTP upgrade, inside frames and after a while, stalls them
//! half-open, splits writes and adds jitter. Every acknowledged or published message arrives
//! exactly once and in order, and every other one got a terminal outcome.
//! `cargo xtask chaos` runs the same at any size.

use std::time::Duration;

use readyws_tests::chaos::{ChaosConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_exactly_once_and_in_order_through_chaos() {
    let report = run(&ChaosConfig {
        clients: 20,
        messages: 400,
        seed: 0x00c0_ffee,
        rate: 200,
        deadline: Duration::from_secs(90),
        restarts: 0,
        instances: 0,
        kills: 0,
        redis_cluster: false,
        instance_program: None,
    })
    .await;
    let json = serde_json::to_string_pretty(&report).expect("a report");
    assert!(report.clean(), "{json}");
    let up = &report.client_to_server;
    assert_eq!(
        up.acknowledged + up.terminal_outcomes,
        up.sent,
        "every message sent got an outcome: {json}"
    );
    assert_eq!(report.server_to_client.received, 20 * 400, "{json}");
    assert!(
        report.cut_mid_stream > 0 && report.stalled > 0 && report.cut_after_time > 0,
        "the relay broke connections every way: {json}"
    );
    assert!(report.reconnects > 0, "{json}");
    assert_eq!(
        report.messages_before_ready, 0,
        "none before readiness: {json}"
    );
    assert!(
        report.readies_seen > 20,
        "the relay watched the handshakes: {json}"
    );
}

/// Two graceful restarts of an in-memory server in the middle of the run: sessions are reset,
/// acknowledged messages still arrived exactly once and in order, every other message sent got a
/// terminal outcome, and what the server delivers is never duplicated or reordered. Messages held
/// in a restarted server's mailbox are gone, as `docs/RELIABILITY.md` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restarts_reset_sessions_without_duplicating_or_reordering() {
    let report = run(&ChaosConfig {
        clients: 10,
        messages: 300,
        seed: 0x0005_eed5,
        rate: 200,
        deadline: Duration::from_secs(90),
        restarts: 2,
        instances: 0,
        kills: 0,
        redis_cluster: false,
        instance_program: None,
    })
    .await;
    let json = serde_json::to_string_pretty(&report).expect("a report");
    assert!(report.clean(), "{json}");
    assert!(
        report.session_resets > 0,
        "the restarts reset sessions: {json}"
    );
    let up = &report.client_to_server;
    assert_eq!(up.acknowledged + up.terminal_outcomes, up.sent, "{json}");
}

/// Three instances on one Redis behind a balancer, two of them killed outright (SIGKILL) during
/// the run and replaced: no session is reset, every message published arrives exactly once and in
/// order, and every acknowledged client message reached an application — a second time only when
/// the instance that first took it was killed before it could acknowledge it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instances_lose_nothing_through_chaos() {
    killed_instances_lose_nothing(false).await;
}

/// The same on a Redis Cluster of three nodes: each user's keys in one slot, the deadline
/// index in shards of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instances_on_a_redis_cluster_lose_nothing_through_chaos() {
    killed_instances_lose_nothing(true).await;
}

async fn killed_instances_lose_nothing(redis_cluster: bool) {
    let report = run(&ChaosConfig {
        clients: 10,
        messages: 300,
        seed: 0x0000_dead,
        rate: 200,
        deadline: Duration::from_secs(120),
        restarts: 0,
        instances: 3,
        kills: 2,
        redis_cluster,
        instance_program: Some(env!("CARGO_BIN_EXE_instance").into()),
    })
    .await;
    let json = serde_json::to_string_pretty(&report).expect("a report");
    assert!(report.clean(), "{json}");
    assert_eq!(report.session_resets, 0, "every session resumed: {json}");
    assert_eq!(report.server_to_client.received, 10 * 300, "{json}");
    let up = &report.client_to_server;
    assert_eq!(up.acknowledged + up.terminal_outcomes, up.sent, "{json}");
    assert_eq!(up.acknowledged, up.sent, "nothing failed for good: {json}");
}
