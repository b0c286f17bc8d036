//! An in-process [`Transport`]: nodes of one process exchange messages through bounded
//! channels. For tests and benchmarks of the driver without a network.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tokio::sync::{mpsc, Mutex};

use crate::message::Message;
use crate::testing::transport_suite::{Capabilities, TransportFactory};
use crate::transport::{SendError, Transport, TransportClosed};
use crate::types::NodeId;

/// The shared switchboard of a set of [`LocalTransport`]s.
#[derive(Debug, Clone, Default)]
pub struct LocalNetwork {
    inboxes: Arc<RwLock<HashMap<NodeId, mpsc::Sender<Message>>>>,
}

impl LocalNetwork {
    /// Registers node `id` (replacing an earlier registration) and returns its transport, whose
    /// inbox holds at most `queue_max` messages (more are dropped).
    pub fn transport(&self, id: NodeId, queue_max: usize) -> LocalTransport {
        let (tx, rx) = mpsc::channel(queue_max.max(1));
        if let Ok(mut map) = self.inboxes.write() {
            map.insert(id, tx);
        }
        LocalTransport { id, network: self.clone(), inbox: Mutex::new(rx) }
    }
}

/// One node's end of a [`LocalNetwork`].
#[derive(Debug)]
pub struct LocalTransport {
    id: NodeId,
    network: LocalNetwork,
    inbox: Mutex<mpsc::Receiver<Message>>,
}

#[async_trait]
impl Transport for LocalTransport {
    fn send(&self, message: Message) -> Result<(), SendError> {
        let to = message.to;
        let map = self.network.inboxes.read().map_err(|_| SendError::Closed)?;
        let tx = map.get(&to).ok_or(SendError::UnknownPeer(to))?;
        tx.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull(to),
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed> {
        let mut inbox = self.inbox.lock().await;
        match inbox.recv_many(buf, max).await {
            0 => Err(TransportClosed),
            n => Ok(n),
        }
    }

    async fn shutdown(&self) {
        if let Ok(mut map) = self.network.inboxes.write() {
            map.remove(&self.id);
        }
        self.inbox.lock().await.close();
    }
}

/// Starts [`LocalTransport`]s on one [`LocalNetwork`] for the testing kit (addresses are
/// ignored; every node reaches every other).
#[derive(Debug, Default)]
pub struct LocalFactory {
    network: LocalNetwork,
}

#[async_trait]
impl TransportFactory for LocalFactory {
    fn capabilities(&self) -> Capabilities {
        Capabilities { max_frame_bytes: None, raw_tcp: None }
    }

    async fn start(&self, id: NodeId, _addrs: &BTreeMap<NodeId, SocketAddr>) -> Arc<dyn Transport> {
        Arc::new(self.network.transport(id, 1_024))
    }
}
