//! The simulated network: every message is delivered by a task after a random delay, or lost,
//! or duplicated; links can be cut one way or both. Messages to a node that is down are kept a
//! while (as a peer's TCP queue keeps them) and may reach its next incarnation, or are dropped.
//! A paused process (SIGSTOP, a long GC pause) receives nothing and its sends leave when it
//! resumes; its timers wait too (see [`crate::clock::SimClock`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use raft_core::{Message, NodeId, SeededRng, SendError, Transport, TransportClosed};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::disk::lock;

/// Most messages waiting in a node's inbox; more are dropped.
const INBOX_MAX: usize = 4_096;

/// How unreliable the network is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Faults {
    /// Percent of messages lost.
    pub(crate) loss: u64,
    /// Percent of messages delivered twice.
    pub(crate) duplicate: u64,
    /// Delivery delay range (ms).
    pub(crate) delay: (u64, u64),
    /// Percent of messages delayed up to `long_delay_ms` more (reordering).
    pub(crate) long_delay: u64,
    pub(crate) long_delay_ms: u64,
}

impl Faults {
    pub(crate) const RELIABLE: Faults =
        Faults { loss: 0, duplicate: 0, delay: (0, 3), long_delay: 0, long_delay_ms: 0 };
    pub(crate) const UNRELIABLE: Faults =
        Faults { loss: 10, duplicate: 5, delay: (0, 20), long_delay: 5, long_delay_ms: 200 };
    pub(crate) const REORDERING: Faults =
        Faults { loss: 2, duplicate: 10, delay: (0, 10), long_delay: 20, long_delay_ms: 500 };
}

#[derive(Debug)]
struct Slot {
    up: bool,
    /// The process is paused (stopped, as by SIGSTOP or a long GC) until then.
    paused_until: Option<Instant>,
    inbox: VecDeque<Message>,
    notify: Arc<Notify>,
}

/// The network's state, shared by every node's transport and the controller.
#[derive(Debug)]
pub(crate) struct Network {
    rng: SeededRng,
    blocked: BTreeSet<(NodeId, NodeId)>,
    pub(crate) faults: Faults,
    slots: Vec<Slot>,
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
}

impl Network {
    pub(crate) fn new(nodes: usize, seed: u64) -> Self {
        let slots = (0..nodes).map(|_| Slot {
            up: false,
            paused_until: None,
            inbox: VecDeque::new(),
            notify: Arc::new(Notify::new()),
        });
        Self {
            rng: SeededRng::new(seed),
            blocked: BTreeSet::new(),
            faults: Faults::RELIABLE,
            slots: slots.collect(),
            sent: 0,
            delivered: 0,
        }
    }

    fn slot(&mut self, id: NodeId) -> Option<&mut Slot> {
        self.slots.get_mut((id as usize).checked_sub(1)?)
    }

    pub(crate) fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    pub(crate) fn heal(&mut self) {
        self.blocked.clear();
    }

    /// The node crashed: its inbox is lost.
    pub(crate) fn down(&mut self, id: NodeId) {
        if let Some(slot) = self.slot(id) {
            slot.up = false;
            slot.paused_until = None;
            slot.inbox.clear();
            slot.notify.notify_waiters();
        }
    }

    /// Pauses the process of node `id` until `until`: it receives nothing, and what it sends
    /// leaves when it resumes.
    pub(crate) fn pause(&mut self, id: NodeId, until: Instant) {
        if let Some(slot) = self.slot(id) {
            if slot.up {
                slot.paused_until = Some(until);
            }
        }
    }

    /// When node `id` resumes, if it is paused now.
    pub(crate) fn paused_until(&self, id: NodeId) -> Option<Instant> {
        let slot = self.slots.get((id as usize).checked_sub(1)?)?;
        slot.paused_until.filter(|t| *t > Instant::now())
    }

    /// A new incarnation of the node starts receiving.
    pub(crate) fn up(&mut self, id: NodeId) {
        if let Some(slot) = self.slot(id) {
            slot.up = true;
            slot.paused_until = None;
            slot.inbox.clear();
            slot.notify = Arc::new(Notify::new());
        }
    }
}

/// Delivers `m` after `delay_ms`; a node that is down may get it later (up to `retries` more
/// tries), as a peer's connection queue would hand it over once the node is back.
fn deliver_later(net: Arc<Mutex<Network>>, m: Message, delay_ms: u64, retries: u32) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let mut n = lock(&net);
        if n.blocked.contains(&(m.from, m.to)) {
            return;
        }
        let retry_in = n.rng.range(10, 200);
        let keep = n.rng.chance(3, 4);
        let to = m.to;
        let Some(slot) = n.slot(to) else { return };
        if slot.up {
            if slot.inbox.len() < INBOX_MAX {
                slot.inbox.push_back(m);
                slot.notify.notify_one();
                n.delivered += 1;
            }
        } else if retries > 0 && keep {
            drop(n);
            deliver_later(net, m, retry_in, retries - 1);
        }
    });
}

/// The transport of one incarnation of a node.
pub(crate) struct SimTransport {
    id: NodeId,
    net: Arc<Mutex<Network>>,
    notify: Arc<Notify>,
    closed: Mutex<bool>,
}

impl SimTransport {
    /// Call after [`Network::up`] for this node.
    pub(crate) fn new(id: NodeId, net: Arc<Mutex<Network>>) -> Self {
        let notify = lock(&net).slot(id).map(|s| s.notify.clone()).unwrap_or_default();
        Self { id, net, notify, closed: Mutex::new(false) }
    }
}

#[async_trait]
impl Transport for SimTransport {
    fn send(&self, message: Message) -> Result<(), SendError> {
        if *lock(&self.closed) {
            return Err(SendError::Closed);
        }
        let mut n = lock(&self.net);
        n.sent += 1;
        if message.from != self.id {
            return Err(SendError::UnknownPeer(message.from));
        }
        if n.blocked.contains(&(message.from, message.to)) {
            return Ok(());
        }
        let f = n.faults;
        if n.rng.chance(f.loss, 100) {
            return Ok(());
        }
        // A paused process sends nothing before it resumes.
        let resume_ms = n
            .paused_until(self.id)
            .map_or(0, |t| t.saturating_duration_since(Instant::now()).as_millis() as u64);
        let copies = if n.rng.chance(f.duplicate, 100) { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = n.rng.range(f.delay.0, f.delay.1 + 1);
            if n.rng.chance(f.long_delay, 100) {
                delay += n.rng.range(0, f.long_delay_ms + 1);
            }
            deliver_later(self.net.clone(), message.clone(), resume_ms + delay, 3);
        }
        Ok(())
    }

    async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed> {
        loop {
            let paused = lock(&self.net).paused_until(self.id);
            if let Some(until) = paused {
                tokio::time::sleep_until(until).await;
                continue;
            }
            {
                if *lock(&self.closed) {
                    return Err(TransportClosed);
                }
                let mut n = lock(&self.net);
                let id = self.id;
                if let Some(slot) = n.slot(id) {
                    if Arc::ptr_eq(&slot.notify, &self.notify) && !slot.inbox.is_empty() {
                        let take = slot.inbox.len().min(max);
                        buf.extend(slot.inbox.drain(..take));
                        return Ok(take);
                    }
                }
            }
            self.notify.notified().await;
        }
    }

    async fn shutdown(&self) {
        *lock(&self.closed) = true;
        self.notify.notify_waiters();
    }
}
