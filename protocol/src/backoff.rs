//! Reconnect timing (`docs/PROTOCOL.md` §12): exponential backoff with full-range jitter that
//! stays random at the cap, and `retry_after_ms` spread so that a fleet told the same delay does
//! not return in lock-step.

use core::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The reconnect schedule's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The shortest delay before a reconnect: the first delay lies in `[initial, 2 × initial)`.
    pub initial: Duration,
    /// The longest delay: at the cap, delays lie in `[max / 2, max)`, still uniformly random.
    pub max: Duration,
    /// Give up after this many failed attempts in a row (`None`: never give up).
    pub max_attempts: Option<u32>,
}

impl Default for BackoffConfig {
    /// 500 ms initial, 30 s cap, never give up.
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

/// A reconnect schedule: a pure function of the attempt number and a seeded generator.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    seed: u64,
    resets: u64,
    delays: ExponentialBackoff,
    spread: fastrand::Rng,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            config,
            seed,
            resets: 0,
            delays: Self::delays(config, seed),
            // A second stream, so that the spread of `retry_after_ms` does not shift the
            // backoff's own sequence.
            spread: fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15),
            failures: 0,
        }
    }

    /// backon adds a jitter in `[0, d)` to a base `d` that doubles up to its maximum, so a base
    /// capped at `max / 2` gives delays in `[max / 2, max)` at the cap [RC-1].
    fn delays(config: BackoffConfig, seed: u64) -> ExponentialBackoff {
        let initial = config.initial.max(Duration::from_millis(1));
        ExponentialBuilder::new()
            .with_min_delay(initial)
            .with_max_delay((config.max / 2).max(initial))
            .with_factor(2.0)
            .with_jitter()
            .with_jitter_seed(seed)
            .without_max_times()
            .build()
    }

    /// Failed attempts since the last `connection_ready`.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the next attempt, or `None` when the configured attempts are used up.
    /// `retry_after` is the server's `retry_after_ms`: the delay is at least that, plus a random
    /// spread of up to half of it [GA-3].
    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        if self
            .config
            .max_attempts
            .is_some_and(|max| self.failures > max)
        {
            return None;
        }
        let backoff = self
            .delays
            .next()
            .expect("the schedule is built without a maximum number of attempts");
        let Some(retry_after) = retry_after else {
            return Some(backoff);
        };
        let spread_millis = u64::try_from(retry_after.as_millis() / 2).unwrap_or(u64::MAX);
        let spread = Duration::from_millis(self.spread.u64(0..=spread_millis));
        Some(backoff.max(retry_after + spread))
    }

    /// `connection_ready` arrived: the next failure starts the schedule again [RC-2].
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
        self.resets = self.resets.wrapping_add(1);
        // A fresh seed per reset keeps the jitter independent between outages.
        self.delays = Self::delays(self.config, self.seed.wrapping_add(self.resets));
    }
}
