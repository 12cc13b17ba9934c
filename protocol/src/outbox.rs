//! The sending half of a session, shared by client and server (`docs/PROTOCOL.md` §6–§7).
//!
//! One invariant carries the no-loss guarantee: a message leaves the outbox only when the peer
//! acknowledges or refuses it, or when its sender is told why it never will be. Transmitting a
//! message hands out a copy and moves a cursor; a new connection moves the cursor back.

use crate::prelude::*;
use crate::text::Text;
use alloc::collections::{BinaryHeap, VecDeque};
use core::cmp::Reverse;

use crate::data::Data;

use crate::codec::encode_msg;
use crate::error::{ProtocolError, SendError, SendErrorReason};
use crate::frame::FrameKind;
use crate::time::Time;

/// Identifies one message accepted by `send`, for as long as the session object lives.
///
/// It is local to this side and is not the wire id: wire ids restart at 1 with each new session
/// [DL-1], while a `MessageId` stays unique across reconnects and resets, so that outcomes can be
/// matched to sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

/// How a message accepted by `send` ended. Every accepted message gets exactly one [OB-3].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The peer acknowledged it: it was delivered to the peer's application exactly once.
    Acked,
    /// The peer refused it for good with a `nack`, or this side refused to transmit it because it
    /// exceeds the peer's `max_frame_bytes` (code `too_large`). It was not delivered.
    Refused {
        /// The `nack` code.
        code: String,
        /// The `nack` reason.
        reason: String,
    },
    /// Its time-to-live ran out before it was first transmitted. It was not delivered.
    Expired,
    /// The peer started a new session (`resumed: false`) while this message was unacknowledged
    /// after being transmitted, and it is not sent again — with [`crate::ResetPolicy::Report`], or
    /// when it no longer fits the new connection's frame limit. It may or may not have been
    /// delivered [RS-5].
    SessionReset,
    /// The session was closed while this message was unacknowledged. If it had been
    /// transmitted it may have been delivered; otherwise it was not.
    Closed,
}

/// Bounds of an outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    /// The most messages held at once (queued and in flight).
    pub max_messages: usize,
    /// The most bytes of `data` held at once.
    pub max_bytes: usize,
    /// The largest single message `data`, in bytes.
    pub max_message_bytes: usize,
}

impl Default for OutboxLimits {
    /// 1,000 messages, 1 MiB in all, 256 KiB a message.
    fn default() -> Self {
        OutboxLimits {
            max_messages: 1000,
            max_bytes: 1 << 20,
            max_message_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug)]
struct Entry {
    id: MessageId,
    /// Assigned at first transmission, so that messages that never left keep their place in a
    /// new session after a reset.
    wire: Option<u64>,
    data: Data,
    /// Cleared at the first transmission: a message that has left may have been delivered, so
    /// it can no longer expire, even when a reset sends it again in a new session [DL-11].
    expires_at: Option<Time>,
    /// Whether it was transmitted in an earlier session that the peer lost: it may have been
    /// delivered there.
    sent_before_reset: bool,
}

/// The ordered messages of one side that the peer has not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Outbox {
    entries: VecDeque<Entry>,
    limits: OutboxLimits,
    bytes: usize,
    next_local: u64,
    /// The wire id the next first transmission gets.
    next_wire: u64,
    /// Every wire id up to this one has an outcome.
    settled_through: u64,
    /// How many entries from the front are transmitted on the current connection.
    cursor: usize,
    outcomes: VecDeque<(MessageId, Outcome)>,
    /// Every time-to-live set at `push`, earliest first. An entry whose message has since been
    /// transmitted or settled is stale and is dropped when it reaches the top; this keeps both
    /// `expire` and `next_expiry` from scanning the whole queue on every call.
    expiries: BinaryHeap<Reverse<(Time, MessageId)>>,
}

impl Outbox {
    pub(crate) fn new(limits: OutboxLimits) -> Self {
        Outbox {
            entries: VecDeque::new(),
            limits,
            bytes: 0,
            next_local: 1,
            next_wire: 1,
            settled_through: 0,
            cursor: 0,
            outcomes: VecDeque::new(),
            expiries: BinaryHeap::new(),
        }
    }

    /// An outbox carried on from another process [RS-1]: `in_flight` were transmitted with the
    /// wire ids after `settled_through`, in order, and are transmitted again from the peer's
    /// resume position. Returns the local ids given to them, in the same order.
    pub(crate) fn restore(
        limits: OutboxLimits,
        settled_through: u64,
        in_flight: Vec<Data>,
    ) -> (Self, Vec<MessageId>) {
        let mut outbox = Outbox::new(limits);
        outbox.settled_through = settled_through;
        outbox.next_wire = settled_through + 1;
        let mut ids = Vec::with_capacity(in_flight.len());
        for data in in_flight {
            let id = MessageId(outbox.next_local);
            outbox.next_local += 1;
            outbox.bytes += data.len();
            outbox.entries.push_back(Entry {
                id,
                wire: Some(outbox.next_wire),
                data,
                expires_at: None,
                sent_before_reset: false,
            });
            outbox.next_wire += 1;
            ids.push(id);
        }
        (outbox, ids)
    }

    /// Every wire id up to this one has an outcome.
    pub(crate) fn settled_through(&self) -> u64 {
        self.settled_through
    }

    /// The transmitted, unsettled messages, in wire id order: a prefix of the queue, since wire
    /// ids are handed out in queue order and settled from the front.
    pub(crate) fn in_flight_entries(&self) -> impl Iterator<Item = (MessageId, &Data)> {
        self.entries
            .iter()
            .take_while(|e| e.wire.is_some())
            .map(|e| (e.id, &e.data))
    }

    /// The messages queued and never transmitted in this session, in queue order.
    pub(crate) fn untransmitted_entries(&self) -> impl Iterator<Item = (MessageId, &Data)> {
        self.entries
            .iter()
            .filter(|e| e.wire.is_none())
            .map(|e| (e.id, &e.data))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages that the current connection has not carried yet.
    pub(crate) fn untransmitted(&self) -> usize {
        self.entries.len() - self.cursor
    }

    /// Messages transmitted and not yet settled. Wire ids are handed out in queue order and
    /// settled from the front, so the transmitted entries are exactly the wire ids after
    /// `settled_through`.
    pub(crate) fn in_flight(&self) -> usize {
        usize::try_from(self.highest_sent() - self.settled_through).unwrap_or(usize::MAX)
    }

    /// The highest wire id transmitted in this session (0 for none).
    pub(crate) fn highest_sent(&self) -> u64 {
        self.next_wire - 1
    }

    /// Accepts a message at the back of the queue [OB-2].
    pub(crate) fn push(
        &mut self,
        data: Data,
        expires_at: Option<Time>,
    ) -> Result<MessageId, SendError> {
        let size = data.len();
        if size > self.limits.max_message_bytes {
            let reason = SendErrorReason::TooLarge {
                size,
                limit: self.limits.max_message_bytes,
            };
            return Err(SendError::new(reason, data));
        }
        if self.entries.len() >= self.limits.max_messages {
            let reason = SendErrorReason::QueueFullCount {
                limit: self.limits.max_messages,
            };
            return Err(SendError::new(reason, data));
        }
        if self.bytes + size > self.limits.max_bytes {
            let reason = SendErrorReason::QueueFullBytes {
                queued: self.bytes,
                size,
                limit: self.limits.max_bytes,
            };
            return Err(SendError::new(reason, data));
        }
        let id = MessageId(self.next_local);
        self.next_local += 1;
        self.bytes += size;
        if let Some(at) = expires_at {
            self.expiries.push(Reverse((at, id)));
        }
        self.entries.push_back(Entry {
            id,
            wire: None,
            data,
            expires_at,
            sent_before_reset: false,
        });
        Ok(id)
    }

    /// The next message to transmit on the current connection, if the window allows [FC-1], with
    /// its wire id assigned, as the text of its `msg` frame. `max_frame_bytes` is the peer's limit: a message whose frame would
    /// exceed it is refused locally instead of being sent [FR-6].
    pub(crate) fn next_transmit(
        &mut self,
        now: Time,
        max_inflight: u64,
        max_frame_bytes: usize,
    ) -> Option<String> {
        let (index, wire) = self.next_entry(now, max_inflight, max_frame_bytes)?;
        Some(encode_msg(wire, &self.entries[index].data))
    }

    /// As [`Outbox::next_transmit`], the wire id and the data rather than the frame's text.
    pub(crate) fn next_message(
        &mut self,
        now: Time,
        max_inflight: u64,
        max_frame_bytes: usize,
    ) -> Option<(u64, Data)> {
        let (index, wire) = self.next_entry(now, max_inflight, max_frame_bytes)?;
        Some((wire, self.entries[index].data.clone()))
    }

    /// The entry [`Outbox::next_transmit`] transmits next, by its index, and its wire id.
    /// Inlined into both callers: as a call of its own it added 36 bytes to the gzipped browser
    /// package, which is over its size budget.
    #[inline(always)]
    fn next_entry(
        &mut self,
        now: Time,
        max_inflight: u64,
        max_frame_bytes: usize,
    ) -> Option<(usize, u64)> {
        self.expire(now);
        loop {
            let entry = self.entries.get(self.cursor)?;
            let wire = match entry.wire {
                Some(wire) => wire,
                None => {
                    if self.next_wire > self.settled_through + max_inflight {
                        return None;
                    }
                    let frame_len = msg_frame_len(self.next_wire, entry.data.as_json());
                    if frame_len > max_frame_bytes {
                        let entry = self.remove_at(self.cursor);
                        // A copy may already have reached the peer in the lost session.
                        let outcome = if entry.sent_before_reset {
                            Outcome::SessionReset
                        } else {
                            Outcome::Refused {
                                code: crate::frame::NackCode::TooLarge.as_str().to_owned(),
                                reason: Text::from("a frame of ")
                                    .size(frame_len)
                                    .s(" bytes exceeds the peer's limit of ")
                                    .size(max_frame_bytes)
                                    .s(" bytes")
                                    .done(),
                            }
                        };
                        self.outcomes.push_back((entry.id, outcome));
                        continue;
                    }
                    let wire = self.next_wire;
                    self.next_wire += 1;
                    self.entries[self.cursor].wire = Some(wire);
                    self.entries[self.cursor].expires_at = None;
                    wire
                }
            };
            let index = self.cursor;
            self.cursor += 1;
            self.drop_stale_expiries();
            return Some((index, wire));
        }
    }

    /// A cumulative `ack` [DL-5].
    pub(crate) fn handle_ack(&mut self, id: u64) -> Result<(), ProtocolError> {
        self.check_in_range(FrameKind::Ack, id)?;
        self.settle_through(id, None);
        Ok(())
    }

    /// A `nack`: `id` is refused, every lower id is delivered [DL-6].
    pub(crate) fn handle_nack(
        &mut self,
        id: u64,
        code: String,
        reason: String,
    ) -> Result<(), ProtocolError> {
        self.check_in_range(FrameKind::Nack, id)?;
        if id > self.settled_through {
            self.settle_through(id - 1, None);
            self.settle_through(id, Some(Outcome::Refused { code, reason }));
        }
        Ok(())
    }

    fn check_in_range(&self, kind: FrameKind, id: u64) -> Result<(), ProtocolError> {
        if id > self.highest_sent() {
            return Err(ProtocolError::AckOutOfRange {
                kind,
                id,
                highest_sent: self.highest_sent(),
            });
        }
        Ok(())
    }

    /// Settles every transmitted entry with a wire id up to `id`: as `Acked`, or with `outcome`.
    fn settle_through(&mut self, id: u64, outcome: Option<Outcome>) {
        if id <= self.settled_through {
            return;
        }
        while self
            .entries
            .front()
            .and_then(|e| e.wire)
            .is_some_and(|w| w <= id)
        {
            let entry = self.remove_at(0);
            let outcome = outcome.clone().unwrap_or(Outcome::Acked);
            self.outcomes.push_back((entry.id, outcome));
        }
        self.settled_through = id;
    }

    /// The connection carrying this session ended: everything unsettled is transmitted again on
    /// the next one [DL-2].
    pub(crate) fn rewind(&mut self) {
        self.cursor = 0;
    }

    /// The peer resumed the session and says it has received every id up to `last_received`.
    /// Transmission restarts after that id [DL-9]; the lower ids stay until the peer's `ack` or
    /// `nack` for them arrives, which it sends right after readiness [DL-8].
    pub(crate) fn resume_after(&mut self, last_received: u64) -> Result<(), ProtocolError> {
        if last_received > self.highest_sent() {
            return Err(ProtocolError::ResumePosition {
                claimed: last_received,
                detail: Text::from("the highest id sent is ")
                    .n(self.highest_sent())
                    .done(),
            });
        }
        if last_received < self.settled_through {
            return Err(ProtocolError::ResumePosition {
                claimed: last_received,
                detail: Text::from("it already acknowledged up to id ")
                    .n(self.settled_through)
                    .done(),
            });
        }
        self.cursor = self
            .entries
            .iter()
            .take_while(|e| e.wire.is_some_and(|w| w <= last_received))
            .count();
        Ok(())
    }

    /// The peer started a new session, whose ids start at 1 [RS-5]. With `resend`, every message
    /// still held is sent again in the new session, in order (those transmitted in the old one may
    /// reach the peer twice); otherwise transmitted messages are settled as
    /// [`Outcome::SessionReset`] and only untransmitted ones carry over. Returns how many
    /// transmitted messages were kept for resending.
    pub(crate) fn reset_session(&mut self, resend: bool) -> usize {
        let mut resent = 0;
        let mut index = 0;
        while index < self.entries.len() {
            if self.entries[index].wire.is_none() {
                index += 1;
            } else if resend {
                self.entries[index].wire = None;
                self.entries[index].sent_before_reset = true;
                resent += 1;
                index += 1;
            } else {
                let entry = self.remove_at(index);
                self.outcomes.push_back((entry.id, Outcome::SessionReset));
            }
        }
        self.next_wire = 1;
        self.settled_through = 0;
        self.cursor = 0;
        resent
    }

    /// Settles every message still held with `outcome`.
    pub(crate) fn settle_all(&mut self, outcome: &Outcome) {
        while !self.entries.is_empty() {
            let entry = self.remove_at(0);
            self.outcomes.push_back((entry.id, outcome.clone()));
        }
        // Every id transmitted has its outcome now: nothing is in flight.
        self.settled_through = self.highest_sent();
        self.cursor = 0;
    }

    /// Takes back message `id` if it has never been transmitted, reporting no outcome: the caller
    /// withdrew it and knows. A message that left on some connection stays, since the peer may
    /// hold it and its `ack` must still match [DL-5]. Returns whether it was taken back.
    pub(crate) fn withdraw(&mut self, id: MessageId) -> bool {
        let Ok(index) = self.entries.binary_search_by_key(&id, |e| e.id) else {
            return false;
        };
        let entry = &self.entries[index];
        if entry.wire.is_some() || entry.sent_before_reset {
            return false;
        }
        self.remove_at(index);
        self.drop_stale_expiries();
        true
    }

    /// Removes untransmitted messages whose time-to-live has run out [DL-11], earliest first.
    pub(crate) fn expire(&mut self, now: Time) {
        while let Some(&Reverse((at, id))) = self.expiries.peek() {
            if at > now {
                break;
            }
            self.expiries.pop();
            if let Some(index) = self.waiting_index(id, at) {
                let entry = self.remove_at(index);
                self.outcomes.push_back((entry.id, Outcome::Expired));
            }
        }
        self.drop_stale_expiries();
    }

    /// The earliest time-to-live among untransmitted messages.
    pub(crate) fn next_expiry(&self) -> Option<Time> {
        self.expiries.peek().map(|Reverse((at, _))| *at)
    }

    /// Where the message `id` is, if it is still held and still waits to expire at `at`.
    fn waiting_index(&self, id: MessageId, at: Time) -> Option<usize> {
        // Ids grow from front to back, so the queue is sorted by id.
        let index = self.entries.binary_search_by_key(&id, |e| e.id).ok()?;
        (self.entries[index].expires_at == Some(at)).then_some(index)
    }

    /// Pops expiries whose message was transmitted or settled, so that the top is a real one.
    fn drop_stale_expiries(&mut self) {
        while let Some(&Reverse((at, id))) = self.expiries.peek() {
            if self.waiting_index(id, at).is_some() {
                break;
            }
            self.expiries.pop();
        }
    }

    pub(crate) fn poll_outcome(&mut self) -> Option<(MessageId, Outcome)> {
        self.outcomes.pop_front()
    }

    fn remove_at(&mut self, index: usize) -> Entry {
        let entry = self
            .entries
            .remove(index)
            .expect("callers pass the index of an entry that exists");
        self.bytes -= entry.data.len();
        if index < self.cursor {
            self.cursor -= 1;
        }
        entry
    }
}

/// The length of `{"type":"msg","id":<id>,"data":<data>}`, as [`crate::codec::encode`] writes it.
fn msg_frame_len(id: u64, data: &str) -> usize {
    crate::frame::MSG_FRAME_OVERHEAD + decimal_digits(id) + data.len()
}

fn decimal_digits(mut value: u64) -> usize {
    let mut digits = 1;
    while value >= 10 {
        value /= 10;
        digits += 1;
    }
    digits
}
