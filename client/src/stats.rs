//! The figures an operator asks for.

use std::time::Duration;

/// A snapshot of a client's figures, from [`crate::Client::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Time from the start of the last successful attempt to `connection_ready`.
    pub time_to_ready_last: Option<Duration>,
    /// Median time to ready over the last 1,024 readiness events.
    pub time_to_ready_p50: Option<Duration>,
    /// 99th percentile of the same.
    pub time_to_ready_p99: Option<Duration>,
    /// Times the connection became ready.
    pub readies: u64,
    /// Connections that ended and were retried.
    pub reconnects: u64,
    /// Sockets this client started to open, the first one included.
    pub connection_attempts: u64,
    /// Times the server could not resume the session.
    pub session_resets: u64,
    /// Messages accepted and not yet transmitted or acknowledged.
    pub queued: usize,
    /// Messages transmitted and not yet acknowledged.
    pub in_flight: usize,
    /// Bytes of message data held.
    pub queued_bytes: usize,
    /// Messages acknowledged by the server.
    pub acked: u64,
    /// Messages refused (by the server's `nack`, or too large for it).
    pub refused: u64,
    /// Messages whose time-to-live ran out before they were sent.
    pub expired: u64,
    /// Messages ended by close or by a session reset without resend.
    pub unconfirmed: u64,
    /// Messages received from the server.
    pub received: u64,
    /// Messages received after the application dropped its [`crate::Messages`] stream, and so
    /// let go (each was acknowledged to the server, which delivered it to this client).
    pub discarded: u64,
    /// Bytes written to sockets (frame text).
    pub bytes_sent: u64,
    /// Bytes read from sockets (frame text).
    pub bytes_received: u64,
}

/// Keeps the last readiness times for the percentiles.
#[derive(Debug, Default)]
pub(crate) struct ReadyTimes {
    samples: std::collections::VecDeque<Duration>,
}

impl ReadyTimes {
    const KEEP: usize = 1024;

    pub(crate) fn record(&mut self, sample: Duration, stats: &mut Stats) {
        if self.samples.len() == Self::KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        stats.time_to_ready_last = Some(sample);
        stats.time_to_ready_p50 = Some(at(0.5));
        stats.time_to_ready_p99 = Some(at(0.99));
    }
}
