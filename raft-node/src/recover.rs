//! Offline repairs of a stopped node's data dir (`raft-node recover`), for what the cluster
//! cannot repair by itself because no member holds the data any more:
//!
//! - [`accept_data_loss`]: the store lost entries it had made durable and nobody has them.
//! - [`force_new_cluster`]: a majority of the voters is gone for good; the most up-to-date
//!   survivor becomes the only voter of the cluster, keeping every entry it holds, and the
//!   others join it again with empty data dirs (as etcd's `--force-new-cluster` and Consul's
//!   `peers.json` do).
//! - [`seed_from_snapshot`]: every member is gone; a new cluster starts from a snapshot backup
//!   (`raftctl snapshot-save`) in an empty data dir (as `etcdutl snapshot restore` does).
//!
//! Each runs on a stopped node (RocksDB's lock refuses a second process). A refusal changes
//! no Raft state; a backup refused by a seed leaves no store behind.

use std::io::Read;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    DataLoss, Entry, EntryPayload, Fsm, FsmError, HardState, Index, LogId, Membership, SnapshotMeta,
    SnapshotReader, Storage, StorageError,
};
use raft_kv::{Command, KvOptions, KvStore, Op};
use raft_storage_rocks::{Identity, OpenError, RocksDb, RocksStorage};

use crate::config::{NodeConfig, StorageKind};

/// Why an offline repair refused or failed. Nothing was changed unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The node keeps its state in memory: there is nothing on disk to repair.
    #[error("storage = \"mem\" keeps nothing on disk: there is nothing to recover")]
    InMemory,
    /// The data dir cannot be opened (another process holds it: stop the node first).
    #[error("cannot open the data dir {dir}: {source}")]
    Open {
        /// The data dir.
        dir: PathBuf,
        /// Why.
        source: OpenError,
    },
    /// Reading or writing the store failed.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// `--force-new-cluster` on a data dir that holds no entry: it must run on a survivor.
    #[error(
        "the data dir {0} holds no log entry and no snapshot: run this on the survivor that holds the data"
    )]
    NothingToKeep(PathBuf),
    /// `--force-new-cluster` on a node that was not a voter: it may lack committed entries.
    #[error(
        "node {id} is not a voter of the configuration its log holds (voters {voters:?}): it may lack committed entries; force the most up-to-date voter instead"
    )]
    NotAVoter {
        /// This node.
        id: u64,
        /// The voters of the configuration in its log.
        voters: Vec<u64>,
    },
    /// The term would pass what the protocol accepts from a message ([`raft_core::TERM_LIMIT`]).
    #[error("the stored term {0} leaves no room for a new cluster's term below the protocol's limit")]
    TermExhausted(u64),
    /// A seed of another backup was interrupted in this data dir.
    #[error(
        "the data dir {dir} holds an interrupted seed of another backup (a snapshot ending at index {stored}, this backup at {requested}): move it aside and seed into an empty data dir"
    )]
    OtherInterruptedSeed {
        /// The data dir.
        dir: PathBuf,
        /// The stored snapshot's index.
        stored: Index,
        /// This backup's.
        requested: Index,
    },
    /// `--seed-snapshot` into a data dir that already holds Raft state.
    #[error(
        "the data dir {0} already holds Raft state: seed a new cluster into an empty data dir (move this one aside)"
    )]
    NotEmpty(PathBuf),
    /// The snapshot file cannot be read.
    #[error("cannot read the snapshot file {file}: {source}")]
    SnapshotFile {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The snapshot file is not a whole, valid snapshot of this state machine.
    #[error("the snapshot file {file} is not a valid snapshot: {reason}")]
    BadSnapshot {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// What [`force_new_cluster`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedCluster {
    /// The loss of data the store had found and that was accepted on the way, if any.
    pub accepted_loss: Option<DataLoss>,
    /// The last entry kept (every entry up to it commits in the new cluster).
    pub kept_last: LogId,
    /// The configuration the log held before.
    pub previous: Membership,
    /// The entry that makes this node the only voter, and the term it starts in.
    pub membership_entry: LogId,
}

impl std::fmt::Display for ForcedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(lost) = &self.accepted_loss {
            writeln!(f, "accepted the loss found in the store: {lost}")?;
        }
        write!(
            f,
            "kept every entry up to {} (they commit when the node starts); the voters were {:?}, \
             now only this node (entry {}). Start the node, then add the others back with empty \
             data dirs (join); never start a removed member on its old data dir.",
            self.kept_last,
            self.previous.voters.union(&self.previous.outgoing_voters).collect::<Vec<_>>(),
            self.membership_entry
        )
    }
}

/// What [`seed_from_snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// The entry the snapshot ends at: the backup's applied index plus one entry per old
    /// member address removed, in a random term.
    pub snapshot: LogId,
    /// The snapshot's size in bytes.
    pub bytes: u64,
    /// Keys in the restored state.
    pub keys: usize,
}

impl std::fmt::Display for Seeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seeded a new one-voter cluster from the snapshot: {} keys, {} bytes, ending at {}. \
             Start the node, then add the others with empty data dirs (join).",
            self.keys, self.bytes, self.snapshot
        )
    }
}

/// Opens the node's RocksDB store (which must not be in use).
fn open(config: &NodeConfig) -> Result<(RocksDb, RocksStorage), RecoverError> {
    if matches!(config.storage, StorageKind::Mem) {
        return Err(RecoverError::InMemory);
    }
    let identity = Identity { cluster_id: config.cluster.clone(), node_id: config.id };
    let db = RocksDb::open(&config.data_dir, &identity, config.rocks_options())
        .map_err(|source| RecoverError::Open { dir: config.data_dir.clone(), source })?;
    let log = db.log(0);
    Ok((db, log))
}

/// `recover --accept-data-loss`: the store lost entries it had made durable (a cut or deleted
/// write-ahead log) and no member holds them any more; the node then votes and campaigns with
/// the log it has. Returns the loss accepted (`None`: nothing was missing).
pub async fn accept_data_loss(config: &NodeConfig) -> Result<Option<DataLoss>, RecoverError> {
    let (_db, log) = open(config)?;
    Ok(log.accept_data_loss().await?)
}

/// `recover --force-new-cluster`: makes this node the only voter of its cluster, keeping its
/// whole log (entries it holds past the old commit index commit too, as with etcd). The new
/// configuration is appended as an entry of a new term, raised by a random amount (1 to
/// 65,536): forced on two survivors by mistake, the two clusters' entries are unlikely to
/// share ids, and raft-core refuses (with an error) a leader whose log contradicts a node's
/// committed entries or a second leader of one term, rather than merging them. A loss
/// the store found is accepted by that same append (it is past anything recorded), so a
/// crash before it leaves the node recovering, as before, never voting on a lost log.
pub async fn force_new_cluster(config: &NodeConfig) -> Result<ForcedCluster, RecoverError> {
    if !matches!(config.storage, StorageKind::Mem) && !config.data_dir.join("CURRENT").exists() {
        return Err(RecoverError::NothingToKeep(config.data_dir.clone()));
    }
    let (_db, log) = open(config)?;
    let state = log.initial_state().await?;
    let kept_last = if state.last_index >= state.first_index {
        LogId::new(log.term(state.last_index).await?, state.last_index)
    } else {
        state.snapshot.as_ref().map_or(LogId::default(), |s| s.last_log_id)
    };
    if kept_last == LogId::default() {
        return Err(RecoverError::NothingToKeep(config.data_dir.clone()));
    }
    let (previous, before) = latest_memberships(config, &log, &state).await?;
    // A voter of the newest configuration, or of the one before it: the newest may never have
    // committed (a leader removing itself campaigns on the older one, as raft-core allows).
    if !previous.is_voter(config.id) && !before.as_ref().is_some_and(|b| b.is_voter(config.id)) {
        let voters = previous.voters.union(&previous.outgoing_voters).copied().collect();
        return Err(RecoverError::NotAVoter { id: config.id, voters });
    }
    let base = state.hard_state.current_term.max(kept_last.term);
    if base > raft_core::TERM_LIMIT - TERM_SPREAD {
        return Err(RecoverError::TermExhausted(base));
    }
    let term = base + 1 + raft_core::fresh_seed() % TERM_SPREAD;
    let membership_entry = LogId::new(term, kept_last.index + 1);
    // The term first: an entry of a term the hard state has not reached is never stored.
    log.save_hard_state(HardState { current_term: term, voted_for: Some(config.id) }).await?;
    log.append(&[Entry {
        term,
        index: membership_entry.index,
        payload: EntryPayload::Membership(Box::new(Membership::with_voters([config.id]))),
    }])
    .await?;
    tracing::warn!(id = config.id, kept = %kept_last, voters = ?previous.voters, "forced a new one-voter cluster");
    Ok(ForcedCluster { accepted_loss: state.lost, kept_last, previous, membership_entry })
}

/// The spread of the random terms a forced or seeded cluster starts in (far below
/// [`raft_core::TERM_LIMIT`]).
const TERM_SPREAD: u64 = 1 << 16;

/// Entries read at a time when looking for the latest configuration.
const SCAN_BATCH: Index = 1024;

/// The configuration in effect and the one before it (`None`: unknown): the log's newest
/// membership entries, then the snapshot's, then the config's members.
async fn latest_memberships(
    config: &NodeConfig,
    log: &RocksStorage,
    state: &raft_core::InitialState,
) -> Result<(Membership, Option<Membership>), RecoverError> {
    let mut found = Vec::new();
    let mut to = state.last_index + 1;
    while to > state.first_index && found.len() < 2 {
        let from = to.saturating_sub(SCAN_BATCH).max(state.first_index);
        let entries = log.entries(from, to).await?;
        found.extend(
            entries
                .iter()
                .rev()
                .filter_map(|e| match &e.payload {
                    EntryPayload::Membership(m) => Some(Membership::clone(m)),
                    _ => None,
                })
                .take(2 - found.len()),
        );
        to = from;
    }
    // Then the snapshot's, else the configuration the cluster started with (the config's
    // members, as the node itself starts).
    let initial = state
        .snapshot
        .as_ref()
        .map(|s| s.membership.clone())
        .unwrap_or_else(|| Membership::with_voters(config.members.iter().map(|m| m.id)));
    found.push(initial);
    let mut found = found.into_iter();
    let newest = found.next().unwrap_or_default();
    Ok((newest, found.next()))
}

/// Bytes read from the backup at a time.
const CHUNK_BYTES: usize = 1 << 20;

/// `recover --seed-snapshot FILE`: starts a new cluster, with this node as its only voter, from
/// a snapshot backup, in an empty data dir. The file is checked whole first (it is restored
/// into a state machine with this node's limits, which verifies its state hash); the old
/// members' addresses are removed from it (one entry each, after the backup's index); it is
/// then stored from that state part by part. Keys keep their revisions; the snapshot is in a
/// random term of 1 to 65,536. Seed one node only: the others join it.
pub async fn seed_from_snapshot(config: &NodeConfig, file: &Path) -> Result<Seeded, RecoverError> {
    if matches!(config.storage, StorageKind::Mem) {
        return Err(RecoverError::InMemory);
    }
    // The file first: a refused backup leaves no store behind.
    let file_error = |source| RecoverError::SnapshotFile { file: file.to_path_buf(), source };
    let (kv, mut fsm) = KvStore::new(kv_options(config)).map_err(|e| RecoverError::BadSnapshot {
        file: file.to_path_buf(),
        reason: format!("this node's limits do not make a state machine: {e}"),
    })?;
    let mut reader = FileChunks::open(file).map_err(file_error)?;
    fsm.restore(&mut reader)
        .await
        .map_err(|e| RecoverError::BadSnapshot { file: file.to_path_buf(), reason: e.to_string() })?;
    let applied = kv.applied_index();
    if applied == 0 {
        return Err(RecoverError::BadSnapshot {
            file: file.to_path_buf(),
            reason: "it ends at index 0 (no entry applied)".into(),
        });
    }
    // A random term: seeded on two nodes by mistake, the two clusters' ids differ.
    let term = 1 + raft_core::fresh_seed() % TERM_SPREAD;
    let stale: Vec<u64> = kv.member_addresses().iter().map(|m| m.id).collect();
    let removals: Vec<Entry> = stale
        .iter()
        .zip(applied + 1..)
        .map(|(&id, index)| Entry {
            term,
            index,
            payload: EntryPayload::Command(Command::new(Op::RemoveMemberAddress { id }).encode()),
        })
        .collect();
    let bad = |reason: String| RecoverError::BadSnapshot { file: file.to_path_buf(), reason };
    fsm.apply(&removals).await.map_err(|e| bad(format!("removing the old members' addresses: {e}")))?;
    let snapshot = LogId::new(term, kv.applied_index());
    let (_db, log) = open(config)?;
    let state = log.initial_state().await?;
    let empty = state.hard_state == HardState::default() && state.snapshot.is_none() && state.last_index == 0;
    // A seed interrupted between storing the snapshot and its term: done again, from the
    // same backup only (a snapshot of another index would be kept, or would go back).
    let interrupted = state.hard_state == HardState::default()
        && state.last_index < state.first_index
        && state.snapshot.as_ref().is_some_and(|s| s.membership == Membership::with_voters([config.id]));
    if !empty && !interrupted {
        return Err(RecoverError::NotEmpty(config.data_dir.clone()));
    }
    if let Some(stored) =
        state.snapshot.as_ref().map(|s| s.last_log_id.index).filter(|&i| i != snapshot.index)
    {
        return Err(RecoverError::OtherInterruptedSeed {
            dir: config.data_dir.clone(),
            stored,
            requested: snapshot.index,
        });
    }
    let meta = SnapshotMeta { last_log_id: snapshot, membership: Membership::with_voters([config.id]) };
    // Encoded again from the restored state (which the removals changed), part by part.
    let source = fsm.snapshot().await.map_err(|e| bad(format!("encoding the state: {e}")))?;
    let bytes = log.save_snapshot_from(meta, source, CHUNK_BYTES).await?;
    if bytes == 0 {
        return Err(StorageError::Io("the store kept a newer snapshot than the seed's".into()).into());
    }
    log.save_hard_state(HardState { current_term: term, voted_for: None }).await?;
    tracing::warn!(id = config.id, %snapshot, bytes, "seeded a new cluster from a snapshot backup");
    Ok(Seeded { snapshot, bytes, keys: kv.len() })
}

/// The state machine's limits from the node's config (as the node builds it).
pub(crate) fn kv_options(config: &NodeConfig) -> KvOptions {
    KvOptions {
        max_sessions: config.limits.max_sessions,
        watch_history: config.limits.watch_history,
        max_list: config.limits.max_list,
        max_state_bytes: config.limits.max_state_bytes,
        max_session_bytes: config.limits.max_session_bytes,
        ..KvOptions::default()
    }
}

/// A snapshot file read in chunks, as a [`SnapshotReader`]. Blocking reads: an offline tool.
struct FileChunks {
    file: std::fs::File,
}

impl FileChunks {
    fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self { file: std::fs::File::open(path)? })
    }

    fn read(&mut self, max: usize) -> std::io::Result<Option<Bytes>> {
        let mut buf = Vec::with_capacity(max);
        (&mut self.file).take(max as u64).read_to_end(&mut buf)?;
        Ok((!buf.is_empty()).then(|| Bytes::from(buf)))
    }
}

#[async_trait]
impl SnapshotReader for FileChunks {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FsmError> {
        self.read(CHUNK_BYTES).map_err(|e| FsmError::BadSnapshot(format!("reading the file: {e}")))
    }
}
