//! The rules of a readyws server that span connections, sans-IO: users, their sessions (live
//! or kept for resume), and the messages held for them (`docs/PROTOCOL.md` §8–§9).
//!
//! One user's state is one [`UserRecord`], plain data that a store keeps whole; its methods are
//! the rules — custody and its end, what a new or resumed session lacks, expiry, resume checks
//! and token rotation, takeover (of a live session, or of one whose instance is gone), the later
//! `hello`'s claim, the per-user bounds. No sockets, no async, no clock or random reads: time
//! comes in as [`Time`], fresh session credentials as [`FreshCredentials`], whether another
//! instance runs as a function, and what the driver must do comes out as [`HubEvent`]s (wake a
//! connection here or elsewhere, count a bound that bit). A driver loads a record, calls one
//! method, and commits the result if nobody changed the record meanwhile; it decides nothing.
//!
//! [`Time`]: readyws_protocol::Time

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod custody;
mod gate;
mod record;

use std::fmt;
use std::time::Duration;

pub use custody::{Attach, ConnId, Copies, FreshCredentials, HubEvent, HubLimits, Taken};
pub use gate::{Gate, Goaway, StartupGate, StoreTrouble, goaway_for};
pub use record::{
    Digest, HeldChanges, Holder, Kept, Leases, RecordHead, Rules, Saved, StoredHead, TokenDigest,
    UserRecord, withdraw_from,
};

/// The authenticated identity a session belongs to [SE-3].
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Wraps a user id.
    pub fn new(id: impl Into<String>) -> Self {
        UserId(id.into())
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for UserId {
    fn from(id: &str) -> Self {
        UserId::new(id)
    }
}

/// What happens when a publish finds the user's mailbox full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Refuse the new message: the publisher is told at once (HTTP 429). Nothing already
    /// accepted is lost. The default.
    RejectNew,
    /// Accept the new message and drop the oldest held ones to make room; each drop is counted
    /// (`readyws_mailbox_dropped_total{reason="overflow"}`) and logged.
    DropOldest,
}

/// Bounds of each user's mailbox: the messages the server holds for a user until a session of
/// that user acknowledges them [CU-1, CU-5].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxLimits {
    /// The most messages held per user. Default: 1,000.
    pub max_messages: usize,
    /// The most bytes of `data` held per user. Default: 1 MiB.
    pub max_bytes: usize,
    /// A message's time-to-live, counted from when it was accepted; it expires once that has
    /// passed while its user has no session, live or kept for resume (each holds a copy of
    /// every held message) [CU-5]. Default:
    /// 10 minutes (longer than the default resume window, so a message outlives the session that
    /// last held it by at least a few minutes).
    pub ttl: Duration,
    /// What a full mailbox does. Default: [`OverflowPolicy::RejectNew`].
    pub overflow: OverflowPolicy,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            max_messages: 1000,
            max_bytes: 1 << 20,
            ttl: Duration::from_secs(600),
            overflow: OverflowPolicy::RejectNew,
        }
    }
}

impl MailboxLimits {
    /// The size of `data`, if a mailbox can hold it at all.
    pub fn admit(&self, data: &readyws_protocol::Data) -> Result<usize, Refusal> {
        let size = data.len();
        if size > self.max_bytes {
            return Err(Refusal::TooLarge {
                size,
                limit: self.max_bytes,
            });
        }
        Ok(size)
    }
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PublishReport {
    /// Live sessions of the user the message was handed to.
    pub delivered: usize,
    /// Whether no live session was reached: the message waits in the mailbox for the user's next
    /// session (it stays in the mailbox until acknowledged either way).
    pub held: bool,
    /// Older held messages dropped to make room ([`OverflowPolicy::DropOldest`]).
    pub dropped_oldest: usize,
}

/// Why the hub refused to hold a message [CU-5]. Nothing was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The user's mailbox is full and the policy is [`OverflowPolicy::RejectNew`].
    #[error("the user's mailbox is full ({messages} messages, {bytes} bytes held)")]
    MailboxFull {
        /// Messages held.
        messages: usize,
        /// Bytes held.
        bytes: usize,
    },
    /// The message alone exceeds the mailbox's byte bound.
    #[error("a {size}-byte message exceeds the mailbox limit of {limit} bytes")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The server holds as many bytes for all users together as its limit allows.
    #[error("the server holds {held_bytes} bytes for its users, its limit is {limit}")]
    ServerFull {
        /// Bytes held now.
        held_bytes: usize,
        /// The limit.
        limit: usize,
    },
}
