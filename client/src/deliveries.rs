//! Where each accepted message's outcome goes: the sending half of its [`Delivery`](crate::Delivery).

use std::collections::VecDeque;

use readyws_protocol::{MessageId, Outcome};
use tokio::sync::oneshot;

/// The outcome senders of the messages not yet settled, in id order.
///
/// The session hands out ids in increasing order and settles messages mostly oldest first, so
/// the senders sit in a queue: registering one is a push at the back, and most outcomes take the
/// front. One that settles out of order (a message that expired or was refused behind others
/// still in flight) leaves an empty slot, dropped when the front reaches it. (A B-tree searched
/// down from its root for both.)
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    slots: VecDeque<(MessageId, Option<oneshot::Sender<Outcome>>)>,
    /// Slots that still hold a sender.
    live: usize,
}

impl Deliveries {
    /// Registers the sender of `id`, which is higher than every id registered before.
    pub(crate) fn insert(&mut self, id: MessageId, sender: oneshot::Sender<Outcome>) {
        debug_assert!(self.slots.back().is_none_or(|(last, _)| *last < id));
        self.slots.push_back((id, Some(sender)));
        self.live += 1;
    }

    /// Takes the sender of `id`, if it is registered.
    pub(crate) fn remove(&mut self, id: MessageId) -> Option<oneshot::Sender<Outcome>> {
        let index = match self.slots.front() {
            Some((front, _)) if *front == id => 0,
            _ => self
                .slots
                .binary_search_by_key(&id, |(slot, _)| *slot)
                .ok()?,
        };
        let sender = self.slots[index].1.take()?;
        self.live -= 1;
        while matches!(self.slots.front(), Some((_, None))) {
            self.slots.pop_front();
        }
        // Empty slots behind a message that stays unsettled are bounded: past as many as there
        // are live ones, they are swept out.
        if self.slots.len() > 2 * self.live + 64 {
            self.slots.retain(|(_, sender)| sender.is_some());
        }
        Some(sender)
    }

    /// Drops every sender: their deliveries resolve as closed.
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.live = 0;
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> MessageId {
        MessageId(n)
    }

    #[test]
    fn each_outcome_reaches_the_sender_registered_for_its_id_in_any_order() {
        let mut deliveries = Deliveries::default();
        let mut receivers = Vec::new();
        for n in 1..=5 {
            let (sender, receiver) = oneshot::channel();
            deliveries.insert(id(n), sender);
            receivers.push(receiver);
        }
        for n in [3, 1, 5, 2, 4] {
            let sender = deliveries.remove(id(n)).expect("registered");
            sender.send(Outcome::Acked).expect("receiver alive");
            assert!(deliveries.remove(id(n)).is_none(), "told once");
        }
        assert_eq!(deliveries.slots(), 0);
        for mut receiver in receivers {
            assert_eq!(receiver.try_recv(), Ok(Outcome::Acked));
        }
        assert!(deliveries.remove(id(9)).is_none());
    }

    #[test]
    fn settled_slots_behind_one_unsettled_message_stay_bounded() {
        let mut deliveries = Deliveries::default();
        let (first, _kept) = oneshot::channel();
        deliveries.insert(id(1), first);
        for n in 2..10_000 {
            let (sender, _receiver) = oneshot::channel();
            deliveries.insert(id(n), sender);
            assert!(deliveries.remove(id(n)).is_some());
        }
        assert!(deliveries.slots() <= 2 + 64, "{} slots", deliveries.slots());
        assert!(deliveries.remove(id(1)).is_some());
        assert_eq!(deliveries.slots(), 0);
    }
}
