//! Admission of inbound connections, so that a flood of connections that never authenticate
//! cannot keep a peer out.
//!
//! A connection is first a handshake (TLS and `Hello`, within the handshake deadline), then,
//! authenticated, an established link. Handshakes are bounded per source address
//! ([`HANDSHAKES_PER_SOURCE_MAX`], or the transport's limit when lower) and, for sources that
//! are not the host of a known peer, in
//! total: strangers share a pool of their own, so that however many of them connect, a peer
//! restarting behind its known address still gets through. Established links are bounded by
//! the transport's `max_inbound_connections` (a few per peer; a newer one from the same node
//! supersedes the older). Sources are compared in canonical form (an IPv4 peer reaching a
//! dual-stack listener is its IPv4 address). QUIC counts a source only once it answered a
//! stateless retry, so forged Initial packets cannot take a peer's slots.
//!
//! Limits: an attacker on the same host as a peer shares that host's per-source bound with it;
//! a peer whose connections leave from another address than the one in the peer table (NAT,
//! a proxy, a wildcard listen address on a multi-homed host) is a stranger here; and a proxy
//! in front of the Raft port gives every connection its address, so eight silent connections
//! through it hold that address's bound. Keep the Raft ports on routes that show peers'
//! addresses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::peers::PeerTable;
use crate::{Counters, REFUSALS_LOGGED};

/// Most handshakes in progress from one source address.
pub const HANDSHAKES_PER_SOURCE_MAX: usize = 8;

/// Why an inbound connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already has its most handshakes in progress.
    SourceBusy,
    /// Every handshake slot for sources that are not peers' hosts is taken.
    StrangersBusy,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::SourceBusy => "too many handshakes from this address",
            Refusal::StrangersBusy => "too many handshakes from addresses that are not peers",
        })
    }
}

/// The admission state of one transport's listener.
#[derive(Debug)]
pub struct Admission {
    per_source_max: usize,
    strangers: Arc<Semaphore>,
    established: Arc<Semaphore>,
    handshakes: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// Room for `max_inbound` established links, as many handshakes from strangers, and
    /// `min(HANDSHAKES_PER_SOURCE_MAX, max_inbound)` from any one address.
    pub fn new(max_inbound: usize) -> Arc<Self> {
        Arc::new(Self {
            per_source_max: HANDSHAKES_PER_SOURCE_MAX.min(max_inbound.max(1)),
            strangers: Arc::new(Semaphore::new(max_inbound.max(1))),
            established: Arc::new(Semaphore::new(max_inbound.max(1))),
            handshakes: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a handshake from `source`; `peer_host` says whether a known peer lives at that
    /// address (then it needs no stranger slot).
    pub fn admit(self: &Arc<Self>, source: IpAddr, peer_host: bool) -> Result<Handshake, Refusal> {
        let stranger = if peer_host {
            None
        } else {
            Some(self.strangers.clone().try_acquire_owned().map_err(|_| Refusal::StrangersBusy)?)
        };
        let mut handshakes = self.handshakes.lock().unwrap_or_else(PoisonError::into_inner);
        let count = handshakes.entry(source).or_insert(0);
        if *count >= self.per_source_max {
            return Err(Refusal::SourceBusy);
        }
        *count += 1;
        Ok(Handshake { admission: self.clone(), source, _stranger: stranger })
    }

    /// Admits a connection from `addr` to a transport whose peers are `peers` (a peer's host
    /// needs no stranger slot); a refusal is counted and logged (through the refusal gate).
    pub fn admit_connection<O>(
        self: &Arc<Self>,
        addr: SocketAddr,
        peers: &PeerTable<O>,
        counters: &Counters,
    ) -> Option<Handshake> {
        // An IPv4 peer reaching a dual-stack listener arrives as `::ffff:a.b.c.d`.
        let source = addr.ip().to_canonical();
        let peer_host = peers.addrs().values().any(|known| known.ip().to_canonical() == source);
        match self.admit(source, peer_host) {
            Ok(handshake) => Some(handshake),
            Err(refusal) => {
                Counters::add(&counters.rejected_connections, 1);
                if let Some(suppressed) = REFUSALS_LOGGED.admit() {
                    tracing::warn!(peer_addr = %addr, %refusal, suppressed, "connection refused");
                }
                None
            }
        }
    }

    /// Handshakes in progress from `source`.
    pub fn handshakes_from(&self, source: IpAddr) -> usize {
        self.handshakes.lock().unwrap_or_else(PoisonError::into_inner).get(&source).copied().unwrap_or(0)
    }
}

/// A handshake in progress: its slots are released when it is dropped or established.
#[derive(Debug)]
pub struct Handshake {
    admission: Arc<Admission>,
    source: IpAddr,
    _stranger: Option<OwnedSemaphorePermit>,
}

impl Handshake {
    /// The connection authenticated: its handshake slots are released and it takes an
    /// established link's slot, or `None` when all of them are taken.
    pub fn establish(self) -> Option<OwnedSemaphorePermit> {
        let admission = self.admission.clone();
        drop(self);
        admission.established.clone().try_acquire_owned().ok()
    }

    /// Like [`establish`](Self::establish), but waits for a slot until `deadline`: a peer
    /// that reconnects supersedes its older connection first, whose slot is then freed as
    /// that connection ends.
    pub async fn establish_by(self, deadline: tokio::time::Instant) -> Option<OwnedSemaphorePermit> {
        let admission = self.admission.clone();
        drop(self);
        let slot = admission.established.clone().acquire_owned();
        tokio::time::timeout_at(deadline, slot).await.ok()?.ok()
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut handshakes = self.admission.handshakes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = handshakes.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                handshakes.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strangers_and_busy_sources_cannot_keep_a_peers_host_out() {
        let admission = Admission::new(4);
        let stranger: IpAddr = "10.0.0.9".parse().unwrap();
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let mut held = Vec::new();
        for i in 0..4u8 {
            held.push(admission.admit(IpAddr::from([10, 1, 0, i]), false).unwrap());
        }
        assert_eq!(admission.admit(stranger, false).unwrap_err(), Refusal::StrangersBusy);
        // A peer's host needs no stranger slot, up to its own bound.
        let from_peer: Vec<_> = (0..4).map(|_| admission.admit(peer, true).unwrap()).collect();
        assert_eq!(admission.admit(peer, true).unwrap_err(), Refusal::SourceBusy, "the limit per source");
        assert_eq!(admission.handshakes_from(peer), 4);
        // Established links release their handshake slots and are bounded on their own.
        let links: Vec<_> = from_peer.into_iter().filter_map(Handshake::establish).collect();
        assert_eq!(links.len(), 4);
        let more = admission.admit(peer, true).unwrap();
        assert!(more.establish().is_none(), "no fifth established link");
        assert_eq!(admission.handshakes_from(peer), 0);
        drop(held);
        assert!(admission.admit(stranger, false).is_ok());
        let wide = Admission::new(64);
        let busy: Vec<_> =
            (0..HANDSHAKES_PER_SOURCE_MAX).map(|_| wide.admit(stranger, false).unwrap()).collect();
        assert_eq!(wide.admit(stranger, false).unwrap_err(), Refusal::SourceBusy);
        assert!(wide.admit(peer, true).is_ok(), "one busy source does not block another");
        drop(busy);
    }
}
