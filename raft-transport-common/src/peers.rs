//! The peer table of a transport: per peer, its address (a watch, so the peer's writer task
//! follows a change), the transport's outbound handle for it (queues and writer task), and
//! the generation of its current inbound connection (a newer connection from the same node
//! replaces the older one, and removing the peer closes it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{PoisonError, RwLock};

use raft_core::{NodeId, PeerError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A task that is aborted when its handle is dropped: the owner of a peer's writer task.
#[derive(Debug)]
pub struct OwnedTask(Option<JoinHandle<()>>);

impl OwnedTask {
    /// Takes ownership of `task`.
    pub fn new(task: JoinHandle<()>) -> Self {
        Self(Some(task))
    }

    /// Aborts the task and waits until it has stopped (its sockets are closed then).
    pub async fn stop(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            // An aborted task has nothing left to clean up; one that panicked neither.
            let _ = task.await;
        }
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Checks a runtime peer change of node `node_id`'s transport: not after shutdown, not the
/// node itself.
pub fn check_change(closed: bool, node_id: NodeId, peer: NodeId) -> Result<(), PeerError> {
    if closed {
        Err(PeerError::Closed)
    } else if peer == node_id {
        Err(PeerError::IsSelf(peer))
    } else {
        Ok(())
    }
}

/// How many messages wait in the queue that `sender` feeds (dropped with a removed peer).
pub fn queued<T>(sender: &mpsc::Sender<T>) -> u64 {
    (sender.max_capacity() - sender.capacity()) as u64
}

/// Waits until the address of a peer changes; false when the peer was removed (its table
/// entry dropped). Cancel-safe.
pub async fn moved(addr: &mut watch::Receiver<SocketAddr>) -> bool {
    addr.changed().await.is_ok()
}

/// One peer's entry.
#[derive(Debug)]
struct Peer<O> {
    outbound: O,
    addr: watch::Sender<SocketAddr>,
    inbound_generation: watch::Sender<u64>,
}

/// What [`PeerTable::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// The peer is new.
    Added,
    /// The peer's address changed; its writer reconnects to the new one.
    Moved,
    /// The peer was known with this address already.
    Unchanged,
}

/// The peers of a transport and, per peer, the transport's outbound handle `O`.
#[derive(Debug)]
pub struct PeerTable<O> {
    peers: RwLock<BTreeMap<NodeId, Peer<O>>>,
}

impl<O> Default for PeerTable<O> {
    fn default() -> Self {
        Self { peers: RwLock::new(BTreeMap::new()) }
    }
}

impl<O> PeerTable<O> {
    /// Adds `peer` at `addr` (calling `start` with a watch of its address to make its outbound
    /// handle), or moves a known peer to `addr`.
    pub fn set(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        start: impl FnOnce(watch::Receiver<SocketAddr>) -> O,
    ) -> PeerChange {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = peers.get(&peer) {
            return if known.addr.send_if_modified(|a| std::mem::replace(a, addr) != addr) {
                PeerChange::Moved
            } else {
                PeerChange::Unchanged
            };
        }
        let (addr, addr_rx) = watch::channel(addr);
        let outbound = start(addr_rx);
        peers.insert(peer, Peer { outbound, addr, inbound_generation: watch::Sender::new(0) });
        PeerChange::Added
    }

    /// Removes `peer`, returning its outbound handle; its inbound connection's
    /// [`InboundRegistration::superseded`] resolves.
    pub fn remove(&self, peer: NodeId) -> Option<O> {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        peers.remove(&peer).map(|p| p.outbound)
    }

    /// Removes every peer (at shutdown), returning their outbound handles.
    pub fn drain(&self) -> Vec<O> {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *peers).into_values().map(|p| p.outbound).collect()
    }

    /// Whether `peer` is in the table.
    pub fn contains(&self, peer: NodeId) -> bool {
        self.peers.read().unwrap_or_else(PoisonError::into_inner).contains_key(&peer)
    }

    /// The known peers and their addresses.
    pub fn addrs(&self) -> BTreeMap<NodeId, SocketAddr> {
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        peers.iter().map(|(&id, p)| (id, *p.addr.borrow())).collect()
    }

    /// Runs `f` on `peer`'s outbound handle; `None` for an unknown peer.
    pub fn with_outbound<R>(&self, peer: NodeId, f: impl FnOnce(&O) -> R) -> Option<R> {
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        peers.get(&peer).map(|p| f(&p.outbound))
    }

    /// Makes a newly authenticated inbound connection from `peer` the current one (older ones
    /// learn they were superseded); `None` when `peer` is not in the table.
    pub fn register_inbound(&self, peer: NodeId) -> Option<InboundRegistration> {
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        let entry = peers.get(&peer)?;
        let mut generation = 0;
        entry.inbound_generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let mut watch = entry.inbound_generation.subscribe();
        watch.mark_unchanged();
        Some(InboundRegistration { generation, watch })
    }
}

/// Why an inbound connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Superseded {
    /// A newer connection from the same node replaced it.
    ByNewerConnection,
    /// The peer was removed from the table.
    PeerRemoved,
}

/// An inbound connection's place in the peer table.
#[derive(Debug)]
pub struct InboundRegistration {
    generation: u64,
    watch: watch::Receiver<u64>,
}

impl InboundRegistration {
    /// This connection's generation (1 for a peer's first connection).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Resolves when a newer connection from the same peer registers or the peer is removed.
    /// Cancel-safe.
    pub async fn superseded(&mut self) -> Superseded {
        loop {
            match self.watch.changed().await {
                Err(_) => return Superseded::PeerRemoved,
                Ok(()) if *self.watch.borrow_and_update() != self.generation => {
                    return Superseded::ByNewerConnection
                }
                Ok(()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn newer_connections_supersede_older_ones_and_removal_closes_them() {
        let table: PeerTable<u32> = PeerTable::default();
        let addr: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let moved: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        assert_eq!(table.set(2, addr, |_| 7), PeerChange::Added);
        assert_eq!(table.set(2, addr, |_| 8), PeerChange::Unchanged);
        assert_eq!(table.set(2, moved, |_| 9), PeerChange::Moved);
        assert_eq!(table.with_outbound(2, |o| *o), Some(7));
        assert_eq!(table.addrs()[&2], moved);
        assert!(table.register_inbound(3).is_none());
        let mut first = table.register_inbound(2).expect("peer");
        let mut second = table.register_inbound(2).expect("peer");
        assert_eq!((first.generation(), second.generation()), (1, 2));
        let superseded = tokio::time::timeout(Duration::from_secs(5), first.superseded()).await;
        assert_eq!(superseded, Ok(Superseded::ByNewerConnection));
        assert!(tokio::time::timeout(Duration::from_millis(20), second.superseded()).await.is_err());
        assert_eq!(table.remove(2), Some(7));
        let removed = tokio::time::timeout(Duration::from_secs(5), second.superseded()).await;
        assert_eq!(removed, Ok(Superseded::PeerRemoved));
        assert!(!table.contains(2));
    }
}
