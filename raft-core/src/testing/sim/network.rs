//! The simulated network: delivery after a random delay, loss, duplication, reordering, and
//! partitions (any set of blocked one-way links).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use crate::message::Message;
use crate::rng::SeededRng;
use crate::types::{Millis, NodeId};

/// How unreliable the network is. Probabilities are in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkFaults {
    /// Chance that a message is dropped.
    pub loss_percent: u64,
    /// Chance that a message is delivered twice.
    pub duplicate_percent: u64,
    /// Smallest delivery delay.
    pub delay_min_ms: Millis,
    /// Largest delivery delay (random delays reorder messages).
    pub delay_max_ms: Millis,
    /// Chance that a message is held back for a long time (up to `long_delay_max_ms`).
    pub long_delay_percent: u64,
    /// Largest long delay.
    pub long_delay_max_ms: Millis,
}

impl NetworkFaults {
    /// A reliable network with a small, fixed delay (FIFO per link).
    pub const RELIABLE: NetworkFaults = NetworkFaults {
        loss_percent: 0,
        duplicate_percent: 0,
        delay_min_ms: 1,
        delay_max_ms: 1,
        long_delay_percent: 0,
        long_delay_max_ms: 0,
    };

    /// Loss, duplication and reordering as in the course-lab "unreliable" tests.
    pub const UNRELIABLE: NetworkFaults = NetworkFaults {
        loss_percent: 10,
        duplicate_percent: 5,
        delay_min_ms: 0,
        delay_max_ms: 27,
        long_delay_percent: 0,
        long_delay_max_ms: 0,
    };

    /// Unreliable, and some messages arrive very late ("long reordering").
    pub const LONG_REORDER: NetworkFaults = NetworkFaults {
        loss_percent: 10,
        duplicate_percent: 5,
        delay_min_ms: 0,
        delay_max_ms: 27,
        long_delay_percent: 5,
        long_delay_max_ms: 2_000,
    };
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    deliver_at: Millis,
    seq: u64,
    message: MessageOrd,
}

/// Wrapper so messages can sit in a heap ordered by delivery time and sequence only.
#[derive(Debug)]
struct MessageOrd(Message);

impl PartialEq for MessageOrd {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for MessageOrd {}
impl PartialOrd for MessageOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MessageOrd {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// Messages in flight and the link state between nodes.
#[derive(Debug)]
pub(crate) struct Network {
    pub(crate) faults: NetworkFaults,
    blocked: BTreeSet<(NodeId, NodeId)>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
}

impl Network {
    pub(crate) fn new(faults: NetworkFaults) -> Self {
        Self { faults, blocked: BTreeSet::new(), in_flight: BinaryHeap::new(), seq: 0, sent: 0, delivered: 0 }
    }

    pub(crate) fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    pub(crate) fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    pub(crate) fn unblock(&mut self, from: NodeId, to: NodeId) {
        self.blocked.remove(&(from, to));
    }

    pub(crate) fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Puts a message on the wire (or drops it, or duplicates it).
    pub(crate) fn send(&mut self, now: Millis, message: Message, rng: &mut SeededRng) {
        self.sent += 1;
        if self.is_blocked(message.from, message.to) || rng.chance(self.faults.loss_percent, 100) {
            return;
        }
        let copies = if rng.chance(self.faults.duplicate_percent, 100) { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = rng.range(self.faults.delay_min_ms, self.faults.delay_max_ms + 1);
            if rng.chance(self.faults.long_delay_percent, 100) {
                delay += rng.range(0, self.faults.long_delay_max_ms + 1);
            }
            self.seq += 1;
            let copy = MessageOrd(message.clone());
            self.in_flight.push(Reverse(InFlight { deliver_at: now + delay, seq: self.seq, message: copy }));
        }
    }

    /// When the next message is due.
    pub(crate) fn next_delivery(&self) -> Option<Millis> {
        self.in_flight.peek().map(|r| r.0.deliver_at)
    }

    /// Removes the next message if it is due by `now`. Messages on links blocked meanwhile are
    /// dropped.
    pub(crate) fn pop_due(&mut self, now: Millis) -> Option<Message> {
        while self.in_flight.peek().is_some_and(|r| r.0.deliver_at <= now) {
            let Reverse(f) = self.in_flight.pop()?;
            let m = f.message.0;
            if self.is_blocked(m.from, m.to) {
                continue;
            }
            self.delivered += 1;
            return Some(m);
        }
        None
    }

    /// Drops every message in flight (used when the whole cluster restarts).
    pub(crate) fn clear(&mut self) {
        self.in_flight.clear();
    }
}
