//! Reconnect timing (`docs/PROTOCOL.md` §12): exponential backoff with full-range jitter that
//! stays random at the cap, and `retry_after_ms` spread so that a fleet told the same delay does
//! not return in lock-step.

use core::time::Duration;

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
    jitter: fastrand::Rng,
    spread: fastrand::Rng,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            config,
            seed,
            resets: 0,
            jitter: fastrand::Rng::with_seed(seed),
            // A second stream, so that the spread of `retry_after_ms` does not shift the
            // backoff's own sequence.
            spread: fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15),
            failures: 0,
        }
    }

    /// The delay after the `n`-th failure in a row (from 0): a base `b = min(initial × 2^n,
    /// max / 2)`, never below `initial`, plus `U·b` with `U` uniform in [0, 1), in whole
    /// milliseconds: delays lie in [initial, max) and stay random at the cap [RC-1]. Integer
    /// arithmetic on purpose: the schedule is the same on every target and links no float
    /// formatting into the browser build.
    fn delay(&mut self, n: u32) -> Duration {
        let initial = u64::try_from(self.config.initial.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let cap = u64::try_from(self.config.max.as_millis() / 2)
            .unwrap_or(u64::MAX)
            .max(initial);
        let base = initial
            .checked_shl(n)
            .filter(|base| base >> n == initial)
            .map_or(cap, |base| base.min(cap));
        Duration::from_millis(base.saturating_add(below(&mut self.jitter, base)))
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
        let backoff = self.delay(self.failures - 1);
        let Some(retry_after) = retry_after else {
            return Some(backoff);
        };
        let spread_millis = u64::try_from(retry_after.as_millis() / 2).unwrap_or(u64::MAX);
        let spread =
            Duration::from_millis(below(&mut self.spread, spread_millis.saturating_add(1)));
        Some(backoff.max(retry_after + spread))
    }

    /// `connection_ready` arrived: the next failure starts the schedule again [RC-2].
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
        self.resets = self.resets.wrapping_add(1);
        // A fresh seed per reset keeps the jitter independent between outages.
        self.jitter = fastrand::Rng::with_seed(self.seed.wrapping_add(self.resets));
    }
}

/// A uniform draw from `[0, bound)` (`bound` ≥ 1) by widening multiplication: the bias, at most
/// `bound / 2^64`, is far below anything a schedule of milliseconds can show, and unlike
/// `Rng::u64(range)` it has no empty-range panic, whose formatted message the browser build
/// would link.
fn below(rng: &mut fastrand::Rng, bound: u64) -> u64 {
    ((u128::from(rng.u64(..)) * u128::from(bound)) >> 64) as u64
}
