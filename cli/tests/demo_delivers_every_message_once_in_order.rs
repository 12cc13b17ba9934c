//! `readyws demo` as a newcomer runs it: through a cold start and a relay that cuts and stalls
//! connections, every message arrives exactly once and in order, both ways, and the exit code
//! says so.

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
