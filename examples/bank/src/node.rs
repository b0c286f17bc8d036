//! [`BankNode`]: one node of the bank, that is a [`RaftNode`] on RocksDB storage and the TCP
//! transport, applying commands to a [`LedgerFsm`], with typed calls for the bank's commands
//! and linearizable reads of its balances.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raft_core::{Config, Membership, NodeId, NodeStatus, RaftError, RaftNode, ReadMode};
use raft_storage_rocks::{Identity, OpenError, RocksDb, RocksOptions};
use raft_transport_tcp::{TcpConfig, TcpError, TcpTransport};

use crate::fsm::{LedgerFsm, LedgerView};
use crate::ledger::{decode_response, Command, Ledger, Outcome, Rejection};

/// Where a [`BankNode`] runs and whom it talks to.
#[derive(Debug, Clone)]
pub struct BankNodeConfig {
    /// This node's id (unique in the cluster, never reused).
    pub id: NodeId,
    /// The cluster's id: checked by the transport's handshake and stored in the data directory.
    pub cluster_id: String,
    /// The address the node listens on for Raft traffic.
    pub listen: SocketAddr,
    /// Every other node and its listen address. A new cluster's voters are these and `id`.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The RocksDB directory (created when missing; a restart reopens it).
    pub data_dir: PathBuf,
    /// Protocol and driver settings (the same on every node).
    pub raft: Config,
    /// This start's randomness (election jitter, request ids); a fresh one for every start.
    pub seed: u64,
}

impl BankNodeConfig {
    /// A configuration with the default Raft settings and a fresh seed.
    pub fn new(
        id: NodeId,
        cluster_id: impl Into<String>,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        let (cluster_id, data_dir) = (cluster_id.into(), data_dir.into());
        Self {
            id,
            cluster_id,
            listen,
            peers,
            data_dir,
            raft: Config::default(),
            seed: raft_core::fresh_seed(),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be opened (held by another process, damaged, or another
    /// node's).
    #[error(transparent)]
    Storage(#[from] OpenError),
    /// The transport could not start (invalid config, address in use).
    #[error(transparent)]
    Transport(#[from] TcpError),
    /// Raft could not start (invalid config, inconsistent storage).
    #[error(transparent)]
    Raft(#[from] RaftError),
}

/// The error of a [`BankNode`] call.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The ledger refused the command (applied, deterministically, on every node: nothing
    /// changed).
    #[error("refused: {0}")]
    Rejected(#[from] Rejection),
    /// Raft did not apply the command or confirm the read (no leader, shut down, ...).
    #[error(transparent)]
    Raft(#[from] RaftError),
    /// The state machine's response does not decode (a different version on another node?).
    #[error("undecodable response: {0}")]
    BadResponse(String),
    /// The awaited condition did not happen in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// One running node of the replicated bank.
#[derive(Debug)]
pub struct BankNode {
    raft: RaftNode,
    view: LedgerView,
}

impl BankNode {
    /// Opens the node's RocksDB store, starts its TCP transport and its Raft node with a
    /// [`LedgerFsm`]. On a restart the ledger is rebuilt from the stored snapshot and log.
    pub async fn start(config: BankNodeConfig) -> Result<Self, StartError> {
        // Storage: a RocksDB store in the node's data directory; its log 0 is the Raft log.
        let identity = Identity { cluster_id: config.cluster_id.clone(), node_id: config.id };
        let db = RocksDb::open(&config.data_dir, &identity, RocksOptions::default())?;
        let storage = Arc::new(db.log(0));

        // Transport: TCP on this node's address; only the listed peers may connect.
        let tcp = TcpConfig::new(config.id, config.cluster_id, config.listen, config.peers.clone());
        let transport = Arc::new(TcpTransport::start(tcp).await?);

        // State machine: the ledger, and a view of it for reads.
        let (fsm, view) = LedgerFsm::new();

        // Raft: a new cluster's voters are all the nodes; a restart restores from storage.
        let voters = Membership::with_voters(config.peers.keys().copied().chain([config.id]));
        let raft =
            RaftNode::start(config.id, config.raft, voters, storage, transport, Box::new(fsm), config.seed)
                .await?;
        Ok(Self { raft, view })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raft.id()
    }

    /// The Raft node underneath (status, membership changes, leadership transfer).
    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// Opens an account with a balance of 0.
    pub async fn open(&self, account: &str) -> Result<Outcome, BankError> {
        self.execute(&Command::Open { account: account.to_owned() }).await
    }

    /// Deposits `amount` into `account`.
    pub async fn deposit(&self, account: &str, amount: u64) -> Result<Outcome, BankError> {
        self.execute(&Command::Deposit { account: account.to_owned(), amount }).await
    }

    /// Moves `amount` from `from` to `to`; refused with
    /// [`Rejection::InsufficientFunds`] when `from` holds less.
    pub async fn transfer(&self, from: &str, to: &str, amount: u64) -> Result<Outcome, BankError> {
        self.execute(&Command::Transfer { from: from.to_owned(), to: to.to_owned(), amount }).await
    }

    /// Proposes `command` (forwarded to the leader when this node follows) and returns its
    /// outcome once applied here. Not retried: after `ForwardTimeout` or `OutcomeUnknown` the
    /// command may or may not have been applied.
    pub async fn execute(&self, command: &Command) -> Result<Outcome, BankError> {
        let applied = self.raft.propose(command.encode()).await?;
        let response =
            decode_response(&applied.response).map_err(|e| BankError::BadResponse(e.to_string()))?;
        Ok(response?)
    }

    /// Every balance, read linearizably: reflects every command acknowledged (on any node)
    /// before the call.
    pub async fn balances(&self) -> Result<BTreeMap<String, u64>, BankError> {
        Ok(self.ledger().await?.balances().clone())
    }

    /// The whole ledger, read linearizably (see [`balances`](Self::balances)).
    pub async fn ledger(&self) -> Result<Ledger, BankError> {
        self.raft.read_index(ReadMode::ReadIndex).await?;
        Ok(self.view.ledger())
    }

    /// The ledger as applied on this node so far, without asking the leader (may be stale).
    pub fn local_ledger(&self) -> Ledger {
        self.view.ledger()
    }

    /// Waits until this node's status satisfies `condition`, for at most `timeout`, and
    /// returns that status.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        condition: impl FnMut(&NodeStatus) -> bool,
    ) -> Result<NodeStatus, BankError> {
        let mut status = self.raft.watch_status();
        let waited = match tokio::time::timeout(timeout, status.wait_for(condition)).await {
            Ok(Ok(status)) => Ok(status.clone()),
            // The driver ended (shut down or stopped by a fatal error).
            Ok(Err(_)) => Err(BankError::Raft(RaftError::AlreadyShutdown)),
            Err(_) => Err(BankError::Timeout(timeout)),
        };
        waited
    }

    /// Waits until this node knows a leader other than `not` (pass the id of a node that just
    /// stopped to wait for its successor), and returns it.
    pub async fn wait_for_leader(&self, timeout: Duration, not: Option<NodeId>) -> Result<NodeId, BankError> {
        let known = |s: &NodeStatus| s.protocol.leader.filter(|leader| Some(*leader) != not);
        let status = self.wait_for_status(timeout, |s| known(s).is_some()).await?;
        known(&status).ok_or(BankError::Timeout(timeout))
    }

    /// Stops the node: the driver ends, the transport closes and the RocksDB store is
    /// released, so the same data directory can be started again.
    pub async fn shutdown(self) -> Result<(), BankError> {
        Ok(self.raft.shutdown().await?)
    }
}
