//! The values the rules across connections take and give: their bounds, fresh credentials in,
//! events out, and the outcomes of an attach and a take. The rules themselves are the methods of
//! [`UserRecord`](crate::UserRecord).

use std::collections::BTreeMap;

use readyws_protocol::{Data, MessageId, ResumeToken, ServerSession};

use crate::record::Holder;
use crate::{MailboxLimits, Refusal};

/// The driver's name for one connection (a socket), unique for the driver's life.
pub type ConnId = u64;

/// A session's outbox entries that are copies of mailbox records: message id → record id.
pub type Copies = BTreeMap<MessageId, u64>;

/// The bounds the hub keeps [CU-5, SE-6].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubLimits {
    /// Each user's mailbox.
    pub mailbox: MailboxLimits,
    /// The bytes of `data` held for all users together; a publish past it is refused.
    pub max_held_bytes: usize,
    /// The sessions one user may have, live or kept for resume.
    pub max_sessions_per_user: usize,
}

impl HubLimits {
    /// Whether a message of `size` bytes fits beside the `held_bytes` held for all users: past
    /// the bound a publish is refused, and no other message is dropped for it [CU-5].
    pub fn admit_server_wide(&self, held_bytes: usize, size: usize) -> Result<(), Refusal> {
        if held_bytes.saturating_add(size) > self.max_held_bytes {
            return Err(Refusal::ServerFull {
                held_bytes,
                limit: self.max_held_bytes,
            });
        }
        Ok(())
    }
}

/// A new session's id and resume secret, and a secret to rotate a resumed session to [RS-8]:
/// made by the driver, which owns the random generator [SE-1].
#[derive(Clone, Debug)]
pub struct FreshCredentials {
    /// The id of a session this attach would create.
    pub session_id: String,
    /// Its resume secret.
    pub token: ResumeToken,
    /// The secret a resumed session gets instead of the one it had.
    pub rotated: ResumeToken,
}

/// What the driver must do or count after a call: each method of [`UserRecord`] that changes
/// something pushes these onto the queue it is given, at most one per session of the user plus a
/// few counts. A driver carries them out once the change is committed, and drops them if it is
/// not.
///
/// [`UserRecord`]: crate::UserRecord
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    /// The live session on this connection has records to take ([`UserRecord::take_new`](crate::UserRecord::take_new)) or copies
    /// to withdraw.
    Wake(Holder),
    /// A bound bit: `held_bytes`, `sessions_per_user`, `sessions_per_user_evicted`.
    LimitRefused(&'static str),
    /// Held messages left custody without an acknowledgement: `rejected`, `overflow`,
    /// `refused`, `expired`.
    MailboxDropped {
        /// Why.
        reason: &'static str,
        /// How many.
        count: usize,
    },
    /// What all users' mailboxes hold now.
    MailboxDepth {
        /// Messages.
        messages: usize,
        /// Bytes of `data`.
        bytes: usize,
    },
    /// A `hello` asked to resume: `resumed` or `reset`.
    Resume(&'static str),
    /// Unsent copies taken back from sessions because their record was dropped [CU-5].
    CopiesWithdrawn(usize),
}

/// The outcome of [`UserRecord::attach`](crate::UserRecord::attach).
#[derive(Debug)]
pub enum Attach {
    /// The connection may become ready with this session, whose outbox already holds copies of
    /// every mailbox record it lacked, oldest first.
    Ready {
        /// The session, to carry on the connection.
        session: Box<ServerSession>,
        /// Which of its outbox entries copy which records.
        copies: Copies,
        /// Whether it is the session the `hello` asked to resume.
        resumed: bool,
    },
    /// The session is live on another connection; ask it to surrender, then attach again.
    TakeOver {
        /// The connection carrying it.
        holder: Holder,
    },
    /// A later `hello` claimed the session this one asks to resume: its client has moved on
    /// [RS-9].
    Superseded,
    /// The user has as many sessions as allowed, every one of them live.
    TooManySessions {
        /// The bound.
        limit: usize,
    },
}

/// What a woken live session takes from the mailbox.
#[derive(Debug, Default)]
pub struct Taken {
    /// Records after the session's cursor, oldest first.
    pub records: Vec<(u64, Data)>,
    /// Records the mailbox dropped since: their copies are withdrawn if still unsent.
    pub dropped: Vec<u64>,
}
