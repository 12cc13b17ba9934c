//! `readyws demo` as a newcomer runs it: through a cold start and a relay that cuts and stalls
//! connections, every message arrives exactly once and in order, both ways, and the exit code
//! says so; with three instances on Redis, through the kill of the one carrying the socket.

use std::process::Command;

use serde_json::Value;

fn demo(args: &[&str]) -> (std::process::ExitStatus, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_readyws"))
        .arg("demo")
        .args(args)
        .output()
        .expect("the readyws binary runs");
    let summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "--json prints the summary as JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (
        output.status,
        summary,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_message_arrives_once_and_in_order_through_cuts_and_stalls() {
    let (status, summary, account) = demo(&[
        "--messages",
        "600",
        "--rate",
        "200",
        "--startup-delay",
        "400",
        "--seed",
        "7",
        "--json",
    ]);
    assert!(
        status.success(),
        "exit status {status}; account:\n{account}"
    );
    for direction in ["client_to_server", "server_to_client"] {
        let figures = &summary[direction];
        assert_eq!(figures["sent"], 600, "{direction}");
        assert_eq!(figures["received"], 600, "{direction}");
        assert_eq!(figures["acked"], 600, "{direction}");
        assert_eq!(figures["lost"], 0, "{direction}");
        assert_eq!(figures["duplicated"], 0, "{direction}");
        assert_eq!(figures["out_of_order"], 0, "{direction}");
    }
    let faults = summary["connections_cut"].as_u64().unwrap_or(0)
        + summary["connections_stalled"].as_u64().unwrap_or(0);
    assert!(faults >= 1, "the relay broke connections: {summary}");
    assert!(
        summary["reconnects"].as_u64().unwrap_or(0) >= 1,
        "{summary}"
    );
    assert!(
        summary["held_before_first_ready"].as_u64().unwrap_or(0) > 0,
        "messages sent during the cold start were held: {summary}"
    );
    assert!(
        account.contains("client: ready on"),
        "the running account goes to stderr: {account}"
    );
}

/// The incident itself: three instances share a Redis the demo starts, the backend publishes
/// through instances that do not hold the user's socket, and the instance carrying the socket
/// is killed halfway; the client resumes its session on another and nothing is lost.
#[test]
fn three_instances_lose_nothing_when_the_clients_instance_is_killed() {
    let (status, summary, account) = demo(&[
        "--instances",
        "3",
        "--messages",
        "600",
        "--rate",
        "200",
        "--startup-delay",
        "200",
        "--seed",
        "11",
        "--json",
    ]);
    assert!(
        status.success(),
        "exit status {status}; summary {summary}; account:\n{account}"
    );
    assert_eq!(summary["store"], "redis", "{summary}");
    for direction in ["client_to_server", "server_to_client"] {
        let figures = &summary[direction];
        assert_eq!(figures["received"], 600, "{direction}: {summary}");
        assert_eq!(figures["acked"], 600, "{direction}: {summary}");
        assert_eq!(figures["lost"], 0, "{direction}: {summary}");
        assert_eq!(figures["duplicated"], 0, "{direction}: {summary}");
        assert_eq!(figures["out_of_order"], 0, "{direction}: {summary}");
    }
    assert_eq!(
        summary["session_resets"], 0,
        "the session went on: {summary}"
    );
    assert!(
        summary["published_through_another_instance"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "publishes went through instances without the socket: {summary}"
    );
    let instances = summary["instances"]
        .as_array()
        .expect("per-instance counts");
    assert_eq!(instances.len(), 3, "{summary}");
    let killed: Vec<&Value> = instances
        .iter()
        .filter(|instance| instance["killed"] == true)
        .collect();
    assert_eq!(killed.len(), 1, "one instance was killed: {summary}");
    assert!(
        killed[0]["connections"].as_u64().unwrap_or(0) > 0,
        "the killed one carried the client: {summary}"
    );
    let published: u64 = instances
        .iter()
        .map(|instance| instance["published_through"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        published, 600,
        "every publish went through one instance: {summary}"
    );
    assert!(
        account.contains("KILLED") && account.contains("resumed"),
        "the running account tells the kill and the resume: {account}"
    );
}
