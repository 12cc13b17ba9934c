//! The Prometheus metrics the server records, in one place so that names stay consistent.
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
//! | `readyws_limit_refusals_total{limit}` | counter | a bound that bit: `connections`, `sessions_per_user`, `sessions_per_user_evicted`, `held_bytes`, `user_id_bytes`, `control_queue`, `notice_queue`, `publish_body_bytes` |
//! | `readyws_connections_evicted_total{reason}` | counter | connections closed before their upgrade to make room: `limit` (at `max_connections`), `descriptors` (out of file descriptors) |
//! | `readyws_deadlines_total{stage}` | counter | connections closed by a deadline: `request_head`, `request_body`, `write` |
//! | `readyws_jwks_fetch_failures_total` | counter | JWKS documents that could not be fetched again (the keys there were are kept) |
//! | `readyws_copies_withdrawn_total` | counter | unsent session copies withdrawn because the mailbox dropped their record |
//! | `readyws_store_retries_total{operation}` | counter | Redis operations that failed and were tried again |
//! | `readyws_store_conflicts_total` | counter | commits refused because another instance changed the record first (each is loaded again and retried) |
//! | `readyws_store_failures_total{operation}` | counter | Redis operations that failed through every retry, and broken subscriptions |

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process's Prometheus recorder, installed on first use. Metrics are process-wide, as the
/// `metrics` facade is; a second server in the same process shares them.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("readyws_ready_seconds".to_owned()),
                &[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
                ],
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed by the embedding application; then its
        // recorder receives our metrics and `/metrics` shows what this handle holds (nothing).
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
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
