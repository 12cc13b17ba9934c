//! The receiving half of a session, shared by client and server (`docs/PROTOCOL.md` §6–§7).

use crate::prelude::*;
use alloc::collections::VecDeque;

use crate::error::{ProtocolError, RefuseError};
use crate::frame::{Ack, Frame, Nack, NackCode};

/// What the receiver does with an incoming `msg`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver it to the application: it is the next id in order.
    Deliver,
    /// Drop it: it was already received. An `ack` goes back anyway [DL-4].
    Duplicate,
}

/// Which ids of the peer's messages have been received, and what acknowledgements are owed.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// Every id up to this one has been received (delivered or refused).
    last_received: u64,
    /// The id of the last `ack` or `nack` transmitted on the current connection.
    acked_on_wire: u64,
    /// Whether an `ack {last_received}` is owed.
    ack_due: bool,
    /// Acknowledgement frames owed, in the order they must go out.
    owed: VecDeque<Frame>,
    /// Refusals the peer may not have seen yet, replayed after each resume [DL-8].
    recent_nacks: VecDeque<Nack>,
    max_inflight: u64,
}

impl Inbox {
    pub(crate) fn new(max_inflight: u64) -> Self {
        Inbox {
            last_received: 0,
            acked_on_wire: 0,
            ack_due: false,
            owed: VecDeque::new(),
            recent_nacks: VecDeque::new(),
            max_inflight,
        }
    }

    /// An inbox carried on from another process [RS-1]: every id up to `last_received` was
    /// received, and `recent_nacks` are the refusals the peer may not have seen.
    pub(crate) fn restore(last_received: u64, recent_nacks: Vec<Nack>, max_inflight: u64) -> Self {
        let mut inbox = Inbox::new(max_inflight);
        inbox.last_received = last_received;
        inbox.acked_on_wire = last_received;
        inbox.recent_nacks = recent_nacks.into();
        inbox
    }

    /// Refusals the peer may not have seen yet, oldest first.
    pub(crate) fn recent_nacks(&self) -> impl Iterator<Item = &Nack> {
        self.recent_nacks.iter()
    }

    pub(crate) fn last_received(&self) -> u64 {
        self.last_received
    }

    pub(crate) fn set_max_inflight(&mut self, max_inflight: u64) {
        self.max_inflight = max_inflight;
    }

    /// Checks an incoming `msg` id against order and window [DL-3, DL-4, FC-2].
    pub(crate) fn receive(&mut self, id: u64) -> Result<Verdict, ProtocolError> {
        if id <= self.last_received {
            self.ack_due = true;
            return Ok(Verdict::Duplicate);
        }
        if id != self.last_received + 1 {
            return Err(ProtocolError::MessageGap {
                expected: self.last_received + 1,
                got: id,
            });
        }
        if id > self.acked_on_wire + self.max_inflight {
            return Err(ProtocolError::InflightExceeded {
                id,
                acked: self.acked_on_wire,
                max_inflight: self.max_inflight,
            });
        }
        self.last_received = id;
        self.ack_due = true;
        Ok(Verdict::Deliver)
    }

    /// Refuses a `msg` frame that could not be decoded but whose `id` could: `too_large` when it
    /// exceeded the frame limit [FR-6], `invalid` otherwise [FR-9].
    pub(crate) fn refuse_frame(
        &mut self,
        id: u64,
        too_large: bool,
        detail: String,
    ) -> Result<bool, ProtocolError> {
        let code = if too_large {
            NackCode::TooLarge
        } else {
            NackCode::Invalid
        };
        self.refuse(id, code, detail)
    }

    /// Refuses message `id` for good. Returns `Ok(false)` for a duplicate of an id already
    /// received, which is acknowledged again instead [DL-4, DL-6].
    pub(crate) fn refuse(
        &mut self,
        id: u64,
        code: NackCode,
        reason: String,
    ) -> Result<bool, ProtocolError> {
        if self.receive(id)? == Verdict::Duplicate {
            return Ok(false);
        }
        // Owed frames go out before the cumulative `ack`, so the `nack` reaches the sender before
        // any `ack` that covers its id; it also acknowledges every lower id [DL-6].
        let nack = Nack {
            id,
            code: code.as_str().to_owned(),
            reason,
        };
        self.owed.push_back(Frame::Nack(nack.clone()));
        self.recent_nacks.push_back(nack);
        self.ack_due = false;
        self.forget_settled_nacks();
        Ok(true)
    }

    /// The application refuses a message that was delivered to it and not yet acknowledged: the
    /// `nack` goes out before the cumulative `ack` that would have covered it [DL-6].
    pub(crate) fn refuse_delivered(
        &mut self,
        id: u64,
        code: &str,
        reason: &str,
    ) -> Result<(), RefuseError> {
        let last_refused = self.recent_nacks.back().map_or(0, |n| n.id);
        if id > self.last_received || id <= self.acked_on_wire || id <= last_refused {
            return Err(RefuseError::TooLate { id });
        }
        let nack = Nack {
            id,
            code: code.to_owned(),
            reason: reason.to_owned(),
        };
        self.owed.push_back(Frame::Nack(nack.clone()));
        self.recent_nacks.push_back(nack);
        // The ack still owed covers the messages after `id`; without any, the nack is enough.
        self.ack_due = self.last_received > id;
        Ok(())
    }

    /// A new connection of this session became ready: the peer's view of what was received is
    /// `last_received` (it resends from there), and every refusal it may have missed is replayed
    /// before one `ack` that covers the rest [DL-8].
    pub(crate) fn on_ready(&mut self) {
        self.owed.clear();
        self.forget_settled_nacks();
        self.owed
            .extend(self.recent_nacks.iter().cloned().map(Frame::Nack));
        // The peer resends only ids above `last_received`, so the window restarts there.
        self.acked_on_wire = self.last_received;
        self.ack_due = self.last_received > 0;
    }

    /// Whether an acknowledgement frame is owed to the peer ([`Inbox::poll_frame`] has one).
    pub(crate) fn has_frame(&self) -> bool {
        !self.owed.is_empty() || self.ack_due
    }

    /// The next acknowledgement frame owed to the peer.
    pub(crate) fn poll_frame(&mut self) -> Option<Frame> {
        if let Some(frame) = self.owed.pop_front() {
            if let Frame::Ack(Ack { id }) | Frame::Nack(Nack { id, .. }) = &frame {
                self.acked_on_wire = self.acked_on_wire.max(*id);
            }
            return Some(frame);
        }
        if self.ack_due {
            self.ack_due = false;
            self.acked_on_wire = self.last_received;
            return Some(Frame::Ack(Ack {
                id: self.last_received,
            }));
        }
        None
    }

    /// A sender has at most `max_inflight` messages unsettled, so it cannot still be waiting for a
    /// refusal of an id that far behind what was received.
    fn forget_settled_nacks(&mut self) {
        let floor = self.last_received.saturating_sub(self.max_inflight);
        while self.recent_nacks.front().is_some_and(|n| n.id <= floor) {
            self.recent_nacks.pop_front();
        }
    }
}
