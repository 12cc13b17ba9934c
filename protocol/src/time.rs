//! Time as the session sees it: a number of milliseconds the driver hands in.

use core::ops::Add;
use core::time::Duration;

/// A point on the driver's monotonic clock, in whole milliseconds since an epoch the driver picks.
///
/// The protocol crate never reads a clock: every `handle_*` call and command takes the current
/// `Time` as an argument, and every deadline comes back as a `Time`. A native driver can count
/// from a `std::time::Instant` taken at start-up, a browser driver from `performance.now()`, and
/// a test from zero. Milliseconds are the protocol's own unit (`heartbeat_ms`, `retry_after_ms`),
/// so nothing finer is needed.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Time(u64);

impl Time {
    /// The epoch of the driver's clock.
    pub const ZERO: Time = Time(0);

    /// A time `millis` milliseconds after the driver's epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Time(millis)
    }

    /// Milliseconds since the driver's epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this time is; zero when `earlier` is later.
    pub const fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    /// Adds a duration, rounding sub-millisecond parts down and saturating at the far future.
    fn add(self, rhs: Duration) -> Time {
        let millis = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(millis))
    }
}
