//! The Prometheus metrics the server records, in one place so that names stay consistent.
//!
//! They go through the `metrics` facade to whatever recorder the application installed; the
//! server installs none. Every series below is registered at zero when a [`crate::Server`] is
//! built, so a recorder installed before that lists them all from the first scrape.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `readyws_connections_opened_total` | counter | sockets accepted |
//! | `readyws_connections_open` | gauge | sockets open now |
//! | `readyws_sessions_ready_total` | counter | `connection_ready` sent |
//! | `readyws_ready_seconds` | histogram | socket open → `connection_ready` |
//! | `readyws_resumes_total{result}` | counter | resume requests: `resumed` or `reset` |
//! | `readyws_mailbox_messages` | gauge | messages held for users, all users (in-memory store; with Redis, `XLEN` of the mailbox streams) |
//! | `readyws_mailbox_dropped_total{reason}` | counter | `rejected`, `overflow`, `expired`, `refused` |
//! | `readyws_messages_in_total` | counter | client messages delivered to the handler |
//! | `readyws_messages_out_total` | counter | server messages queued on sessions |
//! | `readyws_acks_total` | counter | server messages acknowledged by clients |
//! | `readyws_nacks_total{direction}` | counter | refusals: `sent` by the server, `received` from clients |
//! | `readyws_held_bytes` | gauge | bytes of `data` held for all users (in-memory store) |
//! | `readyws_goaways_total{code}` | counter | `goaway`s sent, whether the server or the protocol raised them |
//! | `readyws_closes_total{code}` | counter | WebSocket close frames sent, by close code |
//! | `readyws_limit_refusals_total{limit}` | counter | a bound that bit: `connections`, `sessions_per_user`, `sessions_per_user_evicted`, `held_bytes`, `user_id_bytes`, `control_queue`, `notice_queue`, `publish_queue`, `publish_body_bytes` |
//! | `readyws_connections_evicted_total{reason}` | counter | connections closed before their upgrade to make room: `limit` (at `max_connections`), `descriptors` (out of file descriptors) |
//! | `readyws_deadlines_total{stage}` | counter | connections closed by a deadline: `request_head`, `request_body`, `authenticate`, `write` |
//! | `readyws_jwks_fetch_failures_total` | counter | JWKS documents that could not be fetched again (the keys there were are kept) |
//! | `readyws_copies_withdrawn_total` | counter | unsent session copies withdrawn because the mailbox dropped their record |
//! | `readyws_store_retries_total{operation}` | counter | Redis operations that failed and were tried again |
//! | `readyws_store_conflicts_total` | counter | commits refused because another instance changed the record first (each is loaded again and retried) |
//! | `readyws_store_failures_total{operation}` | counter | Redis operations that failed through every retry, and broken subscriptions |

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// A Prometheus recorder for the server's metrics, with time-to-ready buckets fitted to it
/// (0.5 ms to 30 s), and the handle that renders what it holds.
///
/// The server records through the `metrics` facade and installs no recorder itself: which
/// recorder a process has is the application's choice. An application that wants the server's
/// `/metrics` installs this one before it builds the [`crate::Server`] and passes the handle:
///
/// ```no_run
/// use readyws_server::ServerOptions;
///
/// let (recorder, handle) = readyws_server::prometheus_recorder();
/// metrics::set_global_recorder(recorder).expect("no recorder was installed before");
/// let options = ServerOptions::default().prometheus(handle);
/// ```
///
/// An application with a recorder of its own installs that one instead; the server's metrics
/// then go there, and `/metrics` answers 404.
pub fn prometheus_recorder() -> (PrometheusRecorder, PrometheusHandle) {
    let buckets = [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
    ];
    let builder = PrometheusBuilder::new();
    // The only failure is an empty bucket list; this one is not.
    let builder = match builder.set_buckets_for_metric(
        metrics_exporter_prometheus::Matcher::Full("readyws_ready_seconds".to_owned()),
        &buckets,
    ) {
        Ok(builder) => builder,
        Err(_) => PrometheusBuilder::new(),
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    (recorder, handle)
}

/// Every counter, each with the label values it can take, so that a scrape lists them at 0
/// before the first event: an alert on a rate sees a series from the start.
const COUNTERS: &[(&str, &str, &str, &[&str])] = &[
    (
        "readyws_connections_opened_total",
        "sockets accepted",
        "",
        &[],
    ),
    (
        "readyws_sessions_ready_total",
        "connection_ready frames sent",
        "",
        &[],
    ),
    (
        "readyws_resumes_total",
        "resume requests, by result",
        "result",
        &["resumed", "reset"],
    ),
    (
        "readyws_mailbox_dropped_total",
        "held messages dropped, by reason; each is reported to its publisher",
        "reason",
        &["rejected", "overflow", "expired", "refused"],
    ),
    (
        "readyws_messages_in_total",
        "client messages delivered to the handler",
        "",
        &[],
    ),
    (
        "readyws_messages_out_total",
        "server messages queued on sessions",
        "",
        &[],
    ),
    (
        "readyws_acks_total",
        "server messages acknowledged by clients",
        "",
        &[],
    ),
    (
        "readyws_nacks_total",
        "refusals: sent by the server, received from clients",
        "direction",
        &["sent", "received"],
    ),
    (
        "readyws_goaways_total",
        "goaway frames sent, by code",
        "code",
        &[
            "4000", "4001", "4002", "4003", "4004", "4010", "4100", "4101", "4200", "4203",
        ],
    ),
    (
        "readyws_closes_total",
        "WebSocket close frames sent, by close code",
        "code",
        &[
            "4000", "4001", "4002", "4003", "4004", "4010", "4100", "4101", "4200", "4203",
        ],
    ),
    (
        "readyws_limit_refusals_total",
        "refusals because a bound bit, by bound",
        "limit",
        &[
            "connections",
            "sessions_per_user",
            "sessions_per_user_evicted",
            "held_bytes",
            "user_id_bytes",
            "control_queue",
            "notice_queue",
            "publish_queue",
            "pending_detaches",
            "publish_body_bytes",
        ],
    ),
    (
        "readyws_connections_evicted_total",
        "connections closed before their upgrade to make room, by reason",
        "reason",
        &["limit", "descriptors"],
    ),
    (
        "readyws_deadlines_total",
        "connections closed by a deadline, by stage",
        "stage",
        &["request_head", "request_body", "authenticate", "write"],
    ),
    (
        "readyws_jwks_fetch_failures_total",
        "JWKS documents that could not be fetched again",
        "",
        &[],
    ),
    (
        "readyws_copies_withdrawn_total",
        "unsent session copies withdrawn because the mailbox dropped their record",
        "",
        &[],
    ),
    (
        "readyws_store_retries_total",
        "store operations that failed and were tried again, by operation",
        "operation",
        STORE_OPERATIONS,
    ),
    (
        "readyws_store_conflicts_total",
        "commits refused because another instance changed the record first",
        "",
        &[],
    ),
    (
        "readyws_store_failures_total",
        "store operations that failed through every retry, by operation",
        "operation",
        STORE_OPERATIONS,
    ),
];

/// The operations a shared store reports retries and failures for.
const STORE_OPERATIONS: &[&str] = &[
    "load",
    "commit",
    "notify",
    "subscribe",
    "lease",
    "leases",
    "carried",
    "forget_instance",
    "take_due",
    "settle_due",
];

/// The gauges, set to 0 until their first reading.
const GAUGES: &[(&str, &str)] = &[
    ("readyws_connections_open", "sockets open now"),
    ("readyws_mailbox_messages", "messages held for users"),
    ("readyws_held_bytes", "bytes of data held for users"),
];

/// Describes every metric and registers each series at zero, on the recorder installed now.
/// Called once per [`crate::Server`]; registering again changes nothing.
pub(crate) fn register_all() {
    for (name, help, label, values) in COUNTERS {
        describe_counter!(*name, *help);
        if values.is_empty() {
            counter!(*name).increment(0);
        }
        for value in *values {
            counter!(*name, *label => *value).increment(0);
        }
    }
    for (name, help) in GAUGES {
        describe_gauge!(*name, *help);
        gauge!(*name).increment(0.0);
    }
    describe_histogram!(
        "readyws_ready_seconds",
        metrics::Unit::Seconds,
        "time from the socket opening to connection_ready"
    );
    // Asking for the histogram registers it; it has no sample to record yet.
    let _registered = histogram!("readyws_ready_seconds");
}

pub(crate) fn connection_opened(open_now: usize) {
    counter!("readyws_connections_opened_total").increment(1);
    gauge!("readyws_connections_open").set(open_now as f64);
}

pub(crate) fn connection_closed(open_now: usize) {
    gauge!("readyws_connections_open").set(open_now as f64);
}

pub(crate) fn session_ready(since_open: Duration) {
    counter!("readyws_sessions_ready_total").increment(1);
    histogram!("readyws_ready_seconds").record(since_open.as_secs_f64());
}

pub(crate) fn resume(result: &'static str) {
    counter!("readyws_resumes_total", "result" => result).increment(1);
}

pub(crate) fn mailbox_depth(messages: usize, bytes: usize) {
    gauge!("readyws_mailbox_messages").set(messages as f64);
    gauge!("readyws_held_bytes").set(bytes as f64);
}

pub(crate) fn mailbox_dropped(reason: &'static str, count: usize) {
    counter!("readyws_mailbox_dropped_total", "reason" => reason).increment(count as u64);
}

pub(crate) fn message_in() {
    counter!("readyws_messages_in_total").increment(1);
}

pub(crate) fn message_out() {
    counter!("readyws_messages_out_total").increment(1);
}

pub(crate) fn acked() {
    counter!("readyws_acks_total").increment(1);
}

pub(crate) fn nack(direction: &'static str) {
    counter!("readyws_nacks_total", "direction" => direction).increment(1);
}

pub(crate) fn goaway(code: u16) {
    counter!("readyws_goaways_total", "code" => code.to_string()).increment(1);
}

pub(crate) fn close_sent(code: u16) {
    counter!("readyws_closes_total", "code" => code.to_string()).increment(1);
}

/// A bound bit: something was refused or ended because of it.
pub(crate) fn limit_refused(limit: &'static str) {
    counter!("readyws_limit_refusals_total", "limit" => limit).increment(1);
}

pub(crate) fn connection_evicted(reason: &'static str) {
    counter!("readyws_connections_evicted_total", "reason" => reason).increment(1);
}

pub(crate) fn deadline(stage: &'static str) {
    counter!("readyws_deadlines_total", "stage" => stage).increment(1);
}

pub(crate) fn jwks_fetch_failed() {
    counter!("readyws_jwks_fetch_failures_total").increment(1);
}

pub(crate) fn copies_withdrawn(count: usize) {
    if count > 0 {
        counter!("readyws_copies_withdrawn_total").increment(count as u64);
    }
}

/// A Redis operation failed and is tried again.
#[cfg(feature = "redis")]
pub(crate) fn store_retry(operation: &'static str) {
    counter!("readyws_store_retries_total", "operation" => operation).increment(1);
}

/// A Redis operation failed for good (after its retries), or the subscription broke.
pub(crate) fn store_conflict() {
    counter!("readyws_store_conflicts_total").increment(1);
}

pub(crate) fn store_failure(operation: &'static str) {
    counter!("readyws_store_failures_total", "operation" => operation).increment(1);
}
