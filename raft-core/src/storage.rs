//! The `Storage` trait: where a node keeps its log, hard state and snapshots.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::membership::Membership;
use crate::types::{Entry, HardState, Index, LogId, Term};

/// A snapshot of the state machine with the log position and membership it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The state machine's serialized state.
    pub data: SnapshotData,
}

/// The bytes of a snapshot, held as a list of shared chunks: never one buffer of the whole
/// state, and cloning shares the chunks. Equality compares the bytes, not the chunking.
#[derive(Clone, Default)]
pub struct SnapshotData {
    chunks: Arc<[Bytes]>,
    /// `starts[i]`: the offset of `chunks[i]` in the snapshot.
    starts: Arc<[u64]>,
    len: u64,
    /// The bytes are not held here but in storage (see [`SnapshotData::stored`]).
    stored: bool,
}

impl SnapshotData {
    /// The snapshot made of `chunks`, in order (empty chunks are dropped).
    pub fn from_chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: Vec<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let mut starts = Vec::with_capacity(chunks.len());
        let mut len = 0u64;
        for c in &chunks {
            starts.push(len);
            len += c.len() as u64;
        }
        Self { chunks: chunks.into(), starts: starts.into(), len, stored: false }
    }

    /// A snapshot of `len` bytes whose bytes stay in storage: the protocol holds this for the
    /// node's own snapshot and asks the driver for each chunk it sends
    /// ([`Ready::snapshot_reads`](crate::Ready::snapshot_reads)), so a leader's memory does not
    /// hold a second copy of the state.
    pub fn stored(len: u64) -> Self {
        Self { chunks: Arc::new([]), starts: Arc::new([]), len, stored: true }
    }

    /// Whether the bytes are in storage rather than here.
    pub fn is_stored(&self) -> bool {
        self.stored
    }

    /// Everything `source` writes, pulled in chunks of about `chunk_bytes` at once (for tests
    /// and small states: the driver pulls a view's chunks in a background task).
    pub fn from_source(
        source: &mut dyn crate::fsm::SnapshotSource,
        chunk_bytes: usize,
    ) -> Result<Self, crate::fsm::FsmError> {
        let mut chunks = Vec::new();
        while let Some(chunk) = source.next_chunk(chunk_bytes)? {
            chunks.push(chunk);
        }
        Ok(Self::from_chunks(chunks))
    }

    /// The snapshot made of one buffer.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self::from_chunks([bytes.into()])
    }

    /// The snapshot's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the snapshot has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Up to `max` bytes starting at `offset`, without copying: the part ends at the end of the
    /// chunk holding `offset`. Empty at or past the end (or with `max` 0).
    pub fn slice(&self, offset: u64, max: usize) -> Bytes {
        if offset >= self.len || max == 0 {
            return Bytes::new();
        }
        let i = self.starts.partition_point(|s| *s <= offset) - 1;
        let (chunk, start) = (&self.chunks[i], self.starts[i]);
        let from = (offset - start) as usize;
        let to = chunk.len().min(from.saturating_add(max));
        chunk.slice(from..to)
    }

    /// The whole snapshot in one buffer (a copy unless it is one chunk). For small snapshots
    /// and tests: a large state should be read chunk by chunk.
    pub fn to_bytes(&self) -> Bytes {
        match &self.chunks[..] {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len as usize);
                for c in many {
                    out.extend_from_slice(c);
                }
                out.freeze()
            }
        }
    }

    /// A reader over the chunks, for [`Fsm::restore`](crate::Fsm::restore).
    pub fn reader(&self) -> SnapshotDataReader {
        SnapshotDataReader { data: self.clone(), next: 0 }
    }
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotData({} bytes in {} chunks)", self.len, self.chunks.len())
    }
}

impl PartialEq for SnapshotData {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self.stored == other.stored
            && self.chunks.iter().flatten().eq(other.chunks.iter().flatten())
    }
}

impl Eq for SnapshotData {}

impl From<Bytes> for SnapshotData {
    fn from(bytes: Bytes) -> Self {
        Self::from_bytes(bytes)
    }
}

/// Reads a [`SnapshotData`] chunk by chunk.
#[derive(Debug, Clone)]
pub struct SnapshotDataReader {
    data: SnapshotData,
    next: usize,
}

#[async_trait]
impl crate::fsm::SnapshotReader for SnapshotDataReader {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, crate::fsm::FsmError> {
        let chunk = self.data.chunks.get(self.next).cloned();
        self.next += 1;
        Ok(chunk)
    }
}

/// What a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log entry included in the snapshot.
    pub last_log_id: LogId,
    /// The membership in force at `last_log_id`.
    pub membership: Membership,
}

/// Everything a node needs from storage to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The persisted term and vote.
    pub hard_state: HardState,
    /// The metadata of the latest snapshot, if any.
    pub snapshot: Option<SnapshotMeta>,
    /// The index of the first entry kept in the log (1 for a new log). May be at or below the
    /// snapshot's index when the log keeps entries the snapshot covers.
    pub first_index: Index,
    /// The index of the last entry (`first_index - 1` when the log is empty).
    pub last_index: Index,
    /// Data the store had made durable and no longer finds (a truncated or deleted write-ahead
    /// log): `None` for a store that found everything, or that keeps no such record.
    pub lost: Option<DataLoss>,
    /// A snapshot the leader was sending when the store was last closed (a crash, a stop),
    /// with the bytes staged whole: the node resumes the reception from there. `None` for a
    /// store whose staged parts do not survive a restart (they need not).
    pub staged: Option<StagedSnapshot>,
}

/// What a store found missing when it opened: less than it had recorded as durable, in a
/// record kept apart from the data it describes. Reported, never hidden: the node then
/// recovers (see [`RestoredState::recorded_last`](crate::RestoredState::recorded_last)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLoss {
    /// The last log entry the store had recorded as durable: the node may have acknowledged
    /// entries up to it.
    pub recorded_last: LogId,
    /// The last log entry found (the snapshot's when the log is empty).
    pub found_last: LogId,
    /// Where the newest configuration stood in the log the record describes: the id of its
    /// entry, or the snapshot's last entry when the snapshot carried it. `None` when the
    /// store does not know (it keeps no such record, or the log changed since data went
    /// missing). When the log found has its newest configuration at the same place, no
    /// configuration was lost, and the node can name the voters that hold every committed
    /// entry it lost (see [`RestoredState::recorded_config`](crate::RestoredState::recorded_config)).
    pub recorded_config: Option<LogId>,
    /// The hard state found, when it was older than the one recorded (a term or a vote went
    /// missing). The store returns the recorded one in [`InitialState::hard_state`] and has
    /// written it back.
    pub rolled_back_hard_state: Option<HardState>,
}

/// Where a log's newest configuration stands, as a store's durability record follows it from
/// the writes it makes (see [`DataLoss::recorded_config`]): the id of the configuration's
/// entry, or the snapshot's last entry when no entry after the snapshot carries one. `None`
/// when unknown: a write removed the entry it named, or data went missing and the log has
/// not caught up since (a store keeps it unknown then).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPosition(pub Option<LogId>);

impl ConfigPosition {
    /// A new, empty log: its configuration is the initial one, at the empty log's id.
    pub fn new_log() -> Self {
        Self(Some(LogId::default()))
    }

    /// After `entries` were appended, replacing what the log held from the first one's index.
    pub fn after_append(self, entries: &[Entry]) -> Self {
        let Some(first) = entries.first() else { return self };
        match Self::newest_entry(entries) {
            Some(at) => Self(Some(at)),
            None => Self(self.0.filter(|at| at.index < first.index)),
        }
    }

    /// The id of the newest entry of `entries` that carries a configuration.
    pub fn newest_entry(entries: &[Entry]) -> Option<LogId> {
        entries
            .iter()
            .rev()
            .find(|e| matches!(e.payload, crate::types::EntryPayload::Membership(_)))
            .map(Entry::log_id)
    }

    /// The place in a log of `entries` (in order) after a snapshot ending at `snapshot` (the
    /// empty log's id without one): the newest entry past the snapshot that carries a
    /// configuration, else the snapshot's last entry.
    pub fn of_log(entries: &[Entry], snapshot: LogId) -> Self {
        let past = entries.partition_point(|e| e.index <= snapshot.index);
        Self(Some(Self::newest_entry(&entries[past..]).unwrap_or(snapshot)))
    }

    /// After the entries from `from` on were removed.
    pub fn after_truncate(self, from: Index) -> Self {
        Self(self.0.filter(|at| at.index < from))
    }

    /// After a snapshot ending at `last` was stored: `log_kept` when the log held `last` and
    /// was kept past it (else it was discarded, and the snapshot's configuration is the newest).
    pub fn after_snapshot(self, last: LogId, log_kept: bool) -> Self {
        match self.0 {
            Some(at) if log_kept && at.index > last.index => self,
            Some(_) => Self(Some(last)),
            None if !log_kept => Self(Some(last)),
            None => self,
        }
    }
}

impl std::fmt::Display for DataLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.found_last < self.recorded_last {
            write!(
                f,
                "the log ends at {} but entries up to {} had been made durable",
                self.found_last, self.recorded_last
            )?;
            if self.rolled_back_hard_state.is_some() {
                f.write_str("; ")?;
            }
        }
        if let Some(found) = &self.rolled_back_hard_state {
            write!(f, "the hard state went back to term {} (restored from the record)", found.current_term)?;
        }
        Ok(())
    }
}

/// A storage operation that failed. Every variant names the failed operation's reason; the
/// driver stops accepting writes after any error (it must not acknowledge what it could not
/// persist).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// An append did not start right after the stored log (a hole) or overlapped the snapshot.
    #[error("append at index {got} does not continue the log (last index {last})")]
    NotContiguous {
        /// The index of the first entry offered.
        got: Index,
        /// The last index stored.
        last: Index,
    },
    /// A read asked for entries that are compacted or past the end.
    #[error("entries {from}..{to} are not available (log holds {first}..={last})")]
    OutOfRange {
        /// First index asked for.
        from: Index,
        /// One past the last index asked for.
        to: Index,
        /// First index held.
        first: Index,
        /// Last index held.
        last: Index,
    },
    /// Stored data failed an integrity check (checksum, decoding, wrong format version).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The device is full; nothing of the failed write is visible.
    #[error("no space left on the device")]
    Full,
    /// An IO error; after a failed sync the store refuses further writes.
    #[error("io error: {0}")]
    Io(String),
    /// An earlier write or sync failed; the store accepts no more writes until reopened.
    #[error("storage is poisoned by an earlier failure; reopen it")]
    Poisoned,
    /// The data belongs to another cluster or node, or to another format version.
    #[error("data directory mismatch: {0}")]
    Mismatch(String),
    /// A snapshot part did not continue the staged snapshot, or the snapshot to save is not
    /// what is staged.
    #[error("snapshot part at byte {offset} does not continue the staged snapshot ({staged} bytes staged)")]
    NotStaged {
        /// The offset of the part offered (or the length of the snapshot to save).
        offset: u64,
        /// Bytes staged for that snapshot (0 when another or none is staged).
        staged: u64,
    },
    /// The store does not implement this optional operation (the caller has a fallback).
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
}

impl StorageError {
    /// Whether a read failing this way means the stored copy is damaged (it failed a check,
    /// or the device could not read it) rather than that the caller asked for what is not
    /// there.
    pub fn is_damage(&self) -> bool {
        matches!(self, StorageError::Corrupt(_) | StorageError::Io(_))
    }
}

/// A snapshot partly received from a leader, as a store found it staged when it opened (see
/// [`InitialState::staged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedSnapshot {
    /// The term of the leader that was sending it.
    pub term: Term,
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// Its first bytes staged, whole.
    pub len: u64,
}

/// The parts of a snapshot being received, kept in memory as they came: the staging of a
/// store that keeps snapshots in memory (see [`Storage::stage_snapshot_part`]).
#[derive(Debug, Clone, Default)]
pub struct SnapshotStage {
    staged: Option<(Term, SnapshotMeta, Vec<Bytes>, u64)>,
}

impl SnapshotStage {
    /// Stages a part as [`Storage::stage_snapshot_part`] describes.
    pub fn stage(
        &mut self,
        term: Term,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        if offset == 0 {
            self.staged = Some((term, meta.clone(), Vec::new(), 0));
        }
        match self.staged.as_mut() {
            Some((t, m, chunks, len)) if *t == term && m == meta && *len == offset => {
                *len += data.len() as u64;
                chunks.push(data);
                Ok(())
            }
            other => Err(StorageError::NotStaged { offset, staged: Self::staged_of(other.as_deref(), meta) }),
        }
    }

    /// Takes the staged snapshot of `meta` if it is `len` bytes (else `NotStaged`, and it
    /// stays staged).
    pub fn take(&mut self, meta: &SnapshotMeta, len: u64) -> Result<SnapshotData, StorageError> {
        match self.staged.take() {
            Some((_, m, chunks, l)) if m == *meta && l == len => Ok(SnapshotData::from_chunks(chunks)),
            other => {
                let staged = Self::staged_of(other.as_ref(), meta);
                self.staged = other;
                Err(StorageError::NotStaged { offset: len, staged })
            }
        }
    }

    /// What is staged: the leader's term, the snapshot and the bytes staged.
    pub fn staged(&self) -> Option<StagedSnapshot> {
        self.staged.as_ref().map(|(term, meta, _, len)| StagedSnapshot {
            term: *term,
            meta: meta.clone(),
            len: *len,
        })
    }

    /// Drops the last `parts` parts staged (what a crash may cut from a staging file's end).
    pub fn drop_last_parts(&mut self, parts: usize) {
        if let Some((_, _, chunks, len)) = self.staged.as_mut() {
            for _ in 0..parts.min(chunks.len()) {
                if let Some(c) = chunks.pop() {
                    *len -= c.len() as u64;
                }
            }
        }
    }

    /// Drops whatever is staged.
    pub fn clear(&mut self) {
        self.staged = None;
    }

    fn staged_of(staged: Option<&(Term, SnapshotMeta, Vec<Bytes>, u64)>, meta: &SnapshotMeta) -> u64 {
        staged.filter(|(_, m, _, _)| m == meta).map_or(0, |(_, _, _, len)| *len)
    }
}

/// Durable storage of the log, the hard state and snapshots.
///
/// # Correctness
/// - Every method that writes returns only once its write is **durable** (it survives a
///   process crash and a power loss). The driver acknowledges votes and appends to peers only
///   after these return `Ok`.
/// - [`save_hard_state`](Storage::save_hard_state) is called before a log write of the same
///   batch; a crash in between must leave the old or the new hard state, never a mix.
/// - The log has no holes: entries `first_index..=last_index` are all present.
/// - [`append`](Storage::append) replaces stored entries at and after the first offered index
///   (a crash part-way must leave a prefix of the new log, never a gap).
/// - [`truncate`](Storage::truncate) and [`compact`](Storage::compact) are crash-atomic.
/// - An error leaves the stored state as it was before the call; after an IO error the store
///   may refuse all further writes ([`StorageError::Poisoned`]).
/// - One driver owns the store. Its log writer calls `save_hard_state`, `truncate` and
///   `append` one at a time, in order (their futures are polled by the driver's event loop:
///   a call in flight is polled again only when the driver gets back to it, so a store must
///   not make another call wait for a log write to finish, e.g. through one async lock held
///   across a write and taken by the calls below); meanwhile the driver itself may call
///   [`stage_snapshot_part`](Storage::stage_snapshot_part),
///   [`discard_staged_snapshot`](Storage::discard_staged_snapshot) and
///   [`read_snapshot_chunk`](Storage::read_snapshot_chunk) (which touch no log entry), and a
///   background task may run [`save_snapshot`](Storage::save_snapshot) /
///   [`save_snapshot_from`](Storage::save_snapshot_from) of a snapshot the node took itself,
///   and another [`compact`](Storage::compact) behind such a snapshot (at most one at a time).
///   `save_staged_snapshot` and a received snapshot's save run only when no log write and no
///   compaction is under way. A snapshot of the node's own, and a compaction, cover only
///   applied (so committed) entries, which no log write touches; the store must keep
///   concurrent calls correct (serializing them is enough).
/// - A snapshot received from the leader arrives in parts
///   ([`stage_snapshot_part`](Storage::stage_snapshot_part)) and becomes the snapshot only with
///   [`save_staged_snapshot`](Storage::save_staged_snapshot); staged parts need not survive a
///   crash (the leader starts the transfer over).
#[async_trait]
pub trait Storage: Send + Sync {
    /// Reads the hard state, snapshot metadata and log bounds.
    async fn initial_state(&self) -> Result<InitialState, StorageError>;

    /// Durably stores the hard state.
    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError>;

    /// Durably appends `entries` (contiguous, ascending). `entries[0].index` must be at most
    /// `last_index + 1`, at least `first_index`, and greater than the snapshot index (else
    /// `NotContiguous`); stored entries at or after it are replaced.
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Durably removes every entry at or after `from` (a conflicting suffix). `from` must be
    /// past the snapshot and at least `first_index` (else `OutOfRange`); past the end it is a
    /// no-op.
    async fn truncate(&self, from: Index) -> Result<(), StorageError>;

    /// Reads entries `from..to` (half-open); `OutOfRange` unless all of them are held.
    async fn entries(&self, from: Index, to: Index) -> Result<Vec<Entry>, StorageError>;

    /// Reads entries from `from` to at most `to` (half-open) as [`entries`](Storage::entries)
    /// does, stopping after the entry with which their [`Entry::size_bytes`] reach
    /// `max_bytes` (so at least one): for reads that must stay bounded whatever the entries'
    /// sizes (a restart reads its whole log this way). The default reads one entry per
    /// [`entries`](Storage::entries) call; a store should read just what fits in one go.
    async fn entries_within(
        &self,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        let mut next = from;
        while next < to && (bytes < max_bytes || out.is_empty()) {
            let one = self.entries(next, next + 1).await?;
            let Some(entry) = one.into_iter().next() else { break };
            bytes = bytes.saturating_add(entry.size_bytes());
            out.push(entry);
            next += 1;
        }
        Ok(out)
    }

    /// The term of the entry at `index` (the snapshot's last index included).
    async fn term(&self, index: Index) -> Result<Term, StorageError>;

    /// Durably stores `snapshot` as the latest snapshot (an older one than the stored snapshot
    /// is ignored). If the log does not hold the snapshot's last entry with the same term, the
    /// whole log is discarded and the next append starts right after the snapshot; otherwise
    /// the log is kept as it is.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError>;

    /// The latest snapshot, if any.
    async fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError>;

    /// Stores, as [`save_snapshot`](Storage::save_snapshot) does, the snapshot `meta`
    /// describes, whose bytes `source` writes in chunks of about `chunk_bytes`; returns its
    /// size. This is how the driver saves its own snapshots, in the background. The default
    /// collects the chunks (yielding between them) and calls `save_snapshot`; a store that
    /// keeps snapshots on disk should write each chunk as it comes, so that the snapshot is
    /// never whole in memory. An error of the source is reported as `StorageError::Io`.
    async fn save_snapshot_from(
        &self,
        meta: SnapshotMeta,
        mut source: Box<dyn crate::fsm::SnapshotSource>,
        chunk_bytes: usize,
    ) -> Result<u64, StorageError> {
        let mut chunks = Vec::new();
        loop {
            let chunk = source
                .next_chunk(chunk_bytes)
                .map_err(|e| StorageError::Io(format!("writing the snapshot: {e}")))?;
            let Some(chunk) = chunk else { break };
            chunks.push(chunk);
            tokio::task::yield_now().await;
        }
        let data = SnapshotData::from_chunks(chunks);
        let len = data.len();
        self.save_snapshot(Snapshot { meta, data }).await?;
        Ok(len)
    }

    /// Up to `max` bytes (at least one, unless `offset` is at or past the end) of the snapshot
    /// ending at `last`, from byte `offset`; `None` when the store no longer holds that
    /// snapshot. A store may keep serving a snapshot it replaced for a while (a transfer in
    /// progress finishes with it). The default loads the latest snapshot and cuts the part out:
    /// a store that keeps snapshots on disk should read just the part.
    async fn read_snapshot_chunk(
        &self,
        last: LogId,
        offset: u64,
        max: usize,
    ) -> Result<Option<Bytes>, StorageError> {
        let snapshot = self.load_snapshot().await?.filter(|s| s.meta.last_log_id == last);
        Ok(snapshot.map(|s| s.data.slice(offset, max)))
    }

    /// Stages `data`, the bytes at `offset` of the snapshot `meta` describes that the leader
    /// of `term` is sending: offset 0 starts a staged snapshot (dropping any other); a later
    /// part must continue the staged snapshot of the same `term` and `meta` exactly at its end
    /// (else `NotStaged`). Staged bytes are not a snapshot (`load_snapshot` does not see them)
    /// until [`save_staged_snapshot`](Storage::save_staged_snapshot); they need not be durable.
    /// A store that keeps them across a restart reports them in
    /// [`InitialState::staged`] (only bytes it can vouch for: a part torn by a crash is not
    /// counted). A store that keeps snapshots on disk writes them to a file here, so that a
    /// received snapshot is never whole in memory. The default answers `Unsupported`: the
    /// driver then keeps the parts in memory and calls [`save_snapshot`](Storage::save_snapshot).
    async fn stage_snapshot_part(
        &self,
        term: Term,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let _ = (term, meta, offset, data);
        Err(StorageError::Unsupported("staging snapshot parts"))
    }

    /// Durably stores the staged snapshot of `meta`, `len` bytes in all, as
    /// [`save_snapshot`](Storage::save_snapshot) stores a snapshot (`NotStaged` unless exactly
    /// that is staged). Afterwards nothing is staged.
    async fn save_staged_snapshot(&self, meta: &SnapshotMeta, len: u64) -> Result<(), StorageError> {
        let _ = (meta, len);
        Err(StorageError::Unsupported("staging snapshot parts"))
    }

    /// Drops whatever is staged (a transfer given up). The default does nothing (a store
    /// without staging has nothing staged).
    async fn discard_staged_snapshot(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// The latest snapshot's metadata and length in bytes, without its bytes. The default
    /// loads the snapshot; a store that keeps snapshots on disk should read only the metadata.
    async fn snapshot_meta(&self) -> Result<Option<(SnapshotMeta, u64)>, StorageError> {
        Ok(self.load_snapshot().await?.map(|s| {
            let len = s.data.len();
            (s.meta, len)
        }))
    }

    /// Durably removes entries up to and including `up_to`, which must be covered by the
    /// latest snapshot (else `OutOfRange`).
    async fn compact(&self, up_to: Index) -> Result<(), StorageError>;

    /// A write failed with [`StorageError::Full`]: frees the room the store keeps reserved on
    /// its disk, if it keeps any, so that the writes the node needs to go on (its log, a
    /// received snapshot, the store's own flushes and compactions) can finish. Returns whether
    /// it freed any (the driver then tries the write again at once). The default reserves
    /// nothing.
    fn release_headroom(&self) -> bool {
        false
    }

    /// Whether the store runs on its released headroom (see
    /// [`release_headroom`](Storage::release_headroom)) until it could reserve it again: the
    /// node refuses new proposals meanwhile, as while a write waits for space, so that clients
    /// cannot take that room. Called on every proposal: keep it cheap. The default: never.
    fn headroom_in_use(&self) -> bool {
        false
    }
}
