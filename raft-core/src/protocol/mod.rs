//! The Raft protocol as a deterministic state machine: inputs in ([`Event`]s with the current
//! time), work out ([`Ready`]). No IO, no clock, no OS randomness: the same inputs and seed
//! always give the same outputs.
//!
//! Architecture invariant: nothing in this module reads a clock, touches a socket or a file,
//! or spawns a task; `cargo xtask tidy` checks it.

mod log;
mod progress;
mod reads;
mod ready;
mod reconfig;
mod snapshots;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

pub use progress::ReplicationMode;
pub use reads::ReadMode;
pub use ready::{
    LogRead, ProposalOutcome, ProposalRejection, ReadOutcome, Ready, RestoreError, SnapshotPart,
    SnapshotRead, TransferError,
};
pub use snapshots::STALLED_TRANSFER_TIMEOUTS;

use crate::config::Config;
use crate::membership::Membership;
use crate::message::{AppendResult, ConflictHint, ForwardRejection, Message, Payload, ProposalId, ReadId};
use crate::rng::SeededRng;
use crate::storage::Snapshot;
use crate::types::{Entry, EntryPayload, EntryStub, HardState, Index, LogId, Millis, NodeId, Role, Term};
use log::RaftLog;
use progress::Progress;
use reads::PendingRead;
use reconfig::Transfer;
use snapshots::IncomingSnapshot;

/// One ready hands out at most this many AppendEntries' worth of committed entries
/// (`max_entries_per_append`, `max_bytes_per_append`) to apply.
const APPLY_BATCH_APPENDS: usize = 16;

/// How many forwarded proposals a leader remembers per term to recognise duplicates.
const FORWARDS_REMEMBERED: usize = 65_536;

/// An input to the protocol.
#[derive(Debug, Clone)]
pub enum Event {
    /// Time passed; fire whatever timers are due.
    Tick,
    /// A message arrived from a peer.
    Message(Message),
    /// A client proposes a command on this node.
    Propose {
        /// The driver's id for the proposal, echoed in its [`ProposalOutcome`].
        id: ProposalId,
        /// The command.
        command: Bytes,
        /// On a follower: forward to the leader instead of refusing.
        forward: bool,
    },
    /// A client asks for a linearizable read; the answer ([`ReadOutcome`]) is the index the
    /// local state machine must have applied before the read is served.
    Read {
        /// The driver's id for the read, echoed in its outcome.
        id: ReadId,
        /// ReadIndex (a heartbeat round) or a lease read.
        mode: ReadMode,
    },
    /// A part of the node's snapshot read from storage, answering a
    /// [`SnapshotRead`](crate::SnapshotRead); `data` is `None` when storage no longer holds
    /// that snapshot (or could not read it).
    SnapshotChunk {
        /// The follower it is for.
        to: NodeId,
        /// The snapshot.
        snapshot: LogId,
        /// Its first byte.
        offset: u64,
        /// The bytes.
        data: Option<Bytes>,
    },
    /// Log entries read from storage, answering a [`LogRead`](crate::LogRead): `from..=last`
    /// in order, or `None` when storage no longer holds them (or could not read them).
    LogEntries {
        /// The follower they are for.
        to: NodeId,
        /// The read's first index.
        from: Index,
        /// The entries.
        entries: Option<Vec<Entry>>,
    },
    /// The writes of every ready up to number `seq` handed over with
    /// [`advance_unpersisted`](Raft::advance_unpersisted) are durable: for a driver that
    /// persists in the background. Storage must carry out the writes of readies in the order
    /// they were taken.
    Persisted {
        /// The [`Ready::persist_through`](crate::Ready::persist_through) of ready `seq`.
        last: LogId,
        /// Its [`Ready::seq`](crate::Ready::seq).
        seq: u64,
    },
    /// Storage could not stage a part of the snapshot being received (a full disk): the
    /// reception is given up (the driver discards what was staged), and parts that arrive in
    /// the next `retry_in_ms` are answered "from 0" without being staged, so that the leader
    /// sends the snapshot again later instead of filling the disk again at once.
    SnapshotStagingFailed {
        /// How long to refuse new parts.
        retry_in_ms: Millis,
    },
}

/// What a node restores from storage when it starts.
#[derive(Debug, Clone, Default)]
pub struct RestoredState {
    /// The persisted term and vote.
    pub hard_state: HardState,
    /// The latest snapshot, if any; the state machine must already hold its state.
    pub snapshot: Option<Snapshot>,
    /// The first durable log entries, known without their payloads (see [`EntryStub`]): a
    /// restarted node reads into memory only the tail of its log that fits
    /// [`Config::log_cache_bytes`], the protocol reads the rest from storage when it needs it.
    /// The log is `stubs` then `entries`, in order and without a hole, from the first entry
    /// storage keeps (it may start at or before the snapshot's last entry).
    pub stubs: Vec<EntryStub>,
    /// The durable log entries after `stubs`, whole.
    pub entries: Vec<Entry>,
    /// The membership of a new cluster, used when there is no snapshot (configuration entries
    /// in the log override it).
    pub membership: Membership,
    /// A snapshot the leader was sending, partly staged in storage before the restart (see
    /// [`InitialState::staged`](crate::InitialState::staged)): its reception resumes there.
    pub staged: Option<crate::storage::StagedSnapshot>,
    /// The last log entry storage had recorded as durable, when its log now ends before it
    /// (data went missing: see [`DataLoss`](crate::DataLoss)). This node may have acknowledged
    /// entries up to it, so until its log reaches it again its votes vouch only for logs
    /// reaching it (see [`ProtocolStatus::recovering_to`]).
    pub recorded_last: Option<LogId>,
    /// With `recorded_last`: where the newest configuration stood in the log storage recorded
    /// (see [`DataLoss::recorded_config`](crate::DataLoss::recorded_config)). When the restored
    /// log has its newest configuration at the same place, every committed entry this node
    /// lost is also held by a majority of that configuration's (incoming) voters, whom its
    /// votes name as witnesses (see [`Payload::RequestVoteResponse`]).
    pub recorded_config: Option<LogId>,
}

/// Most witnesses a vote's answer may name to be counted (a voter set is far smaller): a
/// larger set from a faulty peer is ignored rather than kept and scanned at every count.
const WITNESSES_MAX: usize = 1_024;

/// The witnesses a node recovering lost data names (see [`RestoredState::recorded_config`]):
/// the incoming voters of its newest configuration, when storage recorded that configuration
/// at the place the restored log holds it (so none was lost). Every entry it lost came after
/// that configuration's entry, and was first committed under it or under the next one (a
/// leader appends a configuration only once the one before is committed, so a log holds at
/// most one uncommitted configuration); both need a majority of these voters. `None` when
/// the storage does not know, when a configuration was lost, or when the node alone would be
/// its own witness.
fn recovery_witnesses_of(
    id: NodeId,
    membership: &Membership,
    config_at: LogId,
    recorded_config: Option<LogId>,
) -> Option<BTreeSet<NodeId>> {
    if recorded_config != Some(config_at) {
        return None;
    }
    let voters = &membership.voters;
    (voters.iter().any(|v| *v != id)).then(|| voters.clone())
}

/// A voter's answer to this node's (pre-)election (see [`Payload::RequestVoteResponse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ballot {
    Refused,
    /// Granted, and the voter's log (or its record of lost data) vouches for the candidate's.
    Granted,
    /// Granted by a node recovering lost data, comparing with the log it still holds only.
    GrantedUnvouched,
}

impl Ballot {
    fn granted(self) -> bool {
        self != Ballot::Refused
    }
}

/// A snapshot of one follower's replication state, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    /// The follower.
    pub id: NodeId,
    /// The next index the leader will send.
    pub next_index: Index,
    /// The highest index known to be replicated on the follower.
    pub match_index: Index,
    /// Probe or pipelined replication.
    pub mode: ReplicationMode,
    /// How long ago (ms) the follower last answered; `None` when it has not in this term.
    pub last_contact_ago_ms: Option<Millis>,
}

/// A node's observable protocol state (the paper's `GetState` and more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolStatus {
    /// This node.
    pub id: NodeId,
    /// Current term.
    pub term: Term,
    /// Current role.
    pub role: Role,
    /// The leader this node follows (itself when leader).
    pub leader: Option<NodeId>,
    /// Highest committed index known.
    pub commit_index: Index,
    /// Last index handed to the state machine. In a [`RaftNode`](crate::RaftNode)'s status:
    /// the last index the state machine has applied (it may lag what was handed to it).
    pub applied_index: Index,
    /// Last index that is durable locally.
    pub persisted_index: Index,
    /// Bytes (payloads plus a 24-byte header each) of the log entries whose payload is held in
    /// memory: the cache (`log_cache_bytes`) plus what is not yet committed or durable.
    pub log_cached_bytes: u64,
    /// Last entry of the log.
    pub last_log_id: LogId,
    /// The membership in force (the latest configuration in the log, committed or not).
    pub membership: Membership,
    /// Where that membership was appended: the index of its configuration entry (or of the
    /// snapshot that carries it; 0 for none). It is committed once `commit_index` reaches it.
    pub membership_index: Index,
    /// Per-follower replication state (leader only).
    pub followers: Vec<FollowerStatus>,
    /// The last entry covered by the latest snapshot (index 0 when there is none).
    pub snapshot: LogId,
    /// The size of that snapshot's data in bytes (0 without one).
    pub snapshot_bytes: u64,
    /// The first index the in-memory log still holds.
    pub first_log_index: Index,
    /// The target of a leadership transfer in progress (leader only).
    pub leadership_transfer: Option<NodeId>,
    /// A snapshot being received from the leader: its last entry and the bytes received so far.
    pub incoming_snapshot: Option<(LogId, u64)>,
    /// When (this node's clock, ms) this node last answered a read by its leader lease, in
    /// its current term as leader.
    pub last_lease_read_ms: Option<Millis>,
    /// Messages dropped since start because they were absurd: a term past [`TERM_LIMIT`],
    /// a misaddressed message, a malformed AppendEntries.
    pub dropped_messages: u64,
    /// Set while this node is recovering from lost data: the last log entry it had recorded
    /// as durable, which its log no longer reaches. Meanwhile its votes (its own as a
    /// candidate included) vouch only for a log at least as up to date as this entry: it may
    /// grant a vote to a log that reaches only what it still holds, which then counts towards
    /// the quorum but not towards the vouching voters a candidate also needs (they must share
    /// a node with every majority of each voter set; see
    /// [`Payload::RequestVoteResponse`](crate::Payload::RequestVoteResponse)). It ignores
    /// `TimeoutNow`, follows a leader as usual, and the state clears once its durable log
    /// reaches this entry (or holds one of a later term, as when it leads).
    pub recovering_to: Option<LogId>,
    /// Whether the current term and vote are durable. A node that has just elected itself
    /// (alone as the only voter, in one step) leads before its term is saved; nothing it does
    /// as leader leaves before the write, so if the write fails it led in name only.
    pub term_durable: bool,
}

/// The largest term a node adopts from a message (2^48: a million elections a second would
/// take nine years to reach it). A message claiming more is dropped and counted: a forged or
/// corrupted term near `u64::MAX` would otherwise leave no term to elect in. No legitimate
/// jump is refused: a node adopts any term up to this, however far from its own.
pub const TERM_LIMIT: Term = 1 << 48;

/// The Raft state machine of one node.
#[derive(Debug)]
pub struct Raft {
    id: NodeId,
    config: Config,
    rng: SeededRng,
    now: Millis,

    hard_state: HardState,
    hard_state_dirty: bool,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// The membership in force: the latest configuration in `configs`.
    membership: Membership,
    /// Every configuration in the log by the index of its entry, plus the one in force at the
    /// log's start (at the snapshot index, or 0).
    configs: BTreeMap<Index, Membership>,
    /// The latest snapshot (taken here or installed), kept to send to lagging followers.
    snapshot: Option<Snapshot>,
    /// A snapshot being received from the leader.
    incoming: Option<IncomingSnapshot>,
    /// Parts of a snapshot from the leader are refused (answered "from 0") until then:
    /// storage could not stage the last one ([`Event::SnapshotStagingFailed`]).
    incoming_refused_until: Millis,
    /// A leadership transfer in progress (leader only).
    transfer: Option<Transfer>,
    /// This leader sent `TimeoutNow` in its term: the target may be elected at any moment
    /// (even after the transfer was abandoned, if the message was delayed), so no more leases.
    lease_revoked: bool,
    /// The leader's heartbeat round counter (ReadIndex and leases).
    read_seq: u64,
    /// When each recent round was sent, oldest first (bounded).
    read_seq_sent_at: VecDeque<(u64, Millis)>,
    /// When this leader last answered a read by its lease (this term).
    last_lease_read: Option<Millis>,
    /// A read arrived: a `take_ready` starts a heartbeat round once no earlier round is
    /// waiting for its quorum (see [`Raft::read_round_due`]).
    read_round_needed: bool,
    /// Reads waiting for a heartbeat round (leader), in arrival order.
    pending_reads: VecDeque<PendingRead>,
    /// Reads this follower asks the leader to confirm (about one request per round trip).
    remote_reads: reads::RemoteReads,
    /// Until this time the node grants no vote and no pre-vote to a disruptor: a node that just
    /// started may have been following a leader whose lease still runs.
    boot_quiet_until: Millis,

    election_deadline: Millis,
    heartbeat_deadline: Millis,
    check_quorum_deadline: Millis,
    /// When this node last heard from a leader of its term (for the pre-vote and vote leases).
    leader_contact: Option<Millis>,
    /// Votes received in the current (pre-)election.
    votes: BTreeMap<NodeId, Ballot>,
    /// Whether this election timeout already campaigned again at once after a voter answered
    /// from a later term (see `campaign_again_in_later_term`).
    retried_in_later_term: bool,
    /// The leader's per-follower state.
    progress: BTreeMap<NodeId, Progress>,
    /// Proposals forwarded to the leader, with their deadlines.
    forwards: BTreeMap<ProposalId, Millis>,
    /// Leader: forwarded proposals appended in this term, by origin, so that a duplicate
    /// delivery is answered again instead of appended twice (bounded, oldest dropped first).
    forwarded: BTreeMap<(NodeId, ProposalId), (LogId, u64)>,
    /// The keys of `forwarded`, oldest first.
    forwarded_order: VecDeque<(NodeId, ProposalId)>,

    out: Ready,
    /// The lowest index truncated since the last `take_ready`.
    truncated_from: Option<Index>,
    /// The first entry appended since the last `take_ready`.
    unsaved_from: Option<Index>,
    /// Set between `take_ready` and `advance`.
    awaiting_advance: bool,
    /// Absurd messages dropped (see [`ProtocolStatus::dropped_messages`]).
    dropped_messages: u64,
    /// The number of the latest ready taken.
    ready_seq: u64,
    /// The number of the latest ready whose hard state is not yet reported durable (after
    /// [`Raft::advance_unpersisted`]): until it is, nothing leaves early.
    unsaved_hard_state: Option<u64>,
    /// Recovering from lost data (see [`ProtocolStatus::recovering_to`]).
    recovering_to: Option<LogId>,
    /// While recovering: voters a majority of whom holds every committed entry this node lost
    /// (see [`RestoredState::recorded_config`]), named in its grants that do not vouch.
    recovery_witnesses: Option<BTreeSet<NodeId>>,
    /// The witnesses named by the voters whose grants in this election do not vouch.
    witnesses: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Committed entries are held back from the readies (see [`Raft::hold_apply`]).
    apply_held: bool,
    /// A received snapshot's last part is refused for now (see [`Raft::hold_snapshot_install`]).
    install_held: bool,
    /// Committed entries before the cache are being read from storage to be applied, from
    /// this index (see [`Raft::take_ready`]); `None` when no read is pending.
    apply_read: Option<Index>,
    /// Entries read for applying, handed out by the next ready.
    apply_entries: Vec<Entry>,
    /// A read for applying failed: the next one waits until then (a heartbeat interval later;
    /// a tick falls due then, whatever the role).
    apply_read_retry_at: Option<Millis>,
}

impl Raft {
    /// Creates a node from its restored state. `seed` drives every random choice (election
    /// timeouts); `now` is the current time.
    pub fn new(
        id: NodeId,
        config: Config,
        restored: RestoredState,
        seed: u64,
        now: Millis,
    ) -> Result<Self, RestoreError> {
        config.validate()?;
        let (snapshot_last, base_membership) = match &restored.snapshot {
            Some(s) => (s.meta.last_log_id, s.meta.membership.clone()),
            None => (LogId::default(), restored.membership.clone()),
        };
        let (mut stubs, mut entries) = (restored.stubs, restored.entries);
        let ids = || stubs.iter().map(|s| s.log_id).chain(entries.iter().map(Entry::log_id));
        check_restored_log(&restored.hard_state, &snapshot_last, ids())?;
        let first = ids().next();
        let base = match first {
            None => snapshot_last,
            Some(first) if first.index == snapshot_last.index + 1 => snapshot_last,
            Some(first) if first.index == 1 => LogId::default(),
            Some(first) if first.index <= snapshot_last.index => {
                // The log keeps entries the snapshot covers: the first one becomes the base.
                if stubs.is_empty() {
                    entries.remove(0);
                } else {
                    stubs.remove(0);
                }
                first
            }
            Some(first) => {
                return Err(RestoreError::Inconsistent(format!(
                    "the log starts at index {} but the snapshot ends at {}: entries are missing",
                    first.index, snapshot_last.index
                )))
            }
        };
        let mut previous: Option<LogId> = None;
        for id in stubs.iter().map(|s| s.log_id).chain(entries.iter().map(Entry::log_id)) {
            if let Some(p) = previous.filter(|p| id.index != p.index + 1) {
                return Err(RestoreError::Inconsistent(format!(
                    "the log has a hole after index {}",
                    p.index
                )));
            }
            previous = Some(id);
        }
        let mut configs = BTreeMap::new();
        configs.insert(snapshot_last.index, base_membership);
        let stub_configs = stubs.iter().filter_map(|s| s.membership.as_deref().map(|m| (s.log_id.index, m)));
        let entry_configs = entries.iter().filter_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some((e.index, &**m)),
            _ => None,
        });
        for (index, m) in stub_configs.chain(entry_configs) {
            if index > snapshot_last.index {
                configs.insert(index, m.clone());
            }
        }
        let membership = configs.values().next_back().cloned().unwrap_or_default();
        // Where the newest configuration stands: its entry, or the log's base (the snapshot's
        // last entry, or the empty log's) when no entry past the base carries one.
        let config_at = stubs
            .iter()
            .filter(|s| s.membership.is_some())
            .map(|s| s.log_id)
            .chain(
                entries
                    .iter()
                    .filter(|e| matches!(e.payload, EntryPayload::Membership(_)))
                    .map(Entry::log_id),
            )
            .rfind(|id| id.index > snapshot_last.index)
            .unwrap_or(snapshot_last);
        let stubs = stubs.into_iter().map(|s| (s.log_id, s.size_bytes));
        let mut log = RaftLog::restore(base, stubs, entries, snapshot_last.index);
        log.set_cache_bytes(config.log_cache_bytes);
        log.evict();
        let recovering_to = restored.recorded_last.filter(|recorded| *recorded > log.last_log_id());
        if let Some(recorded) = recovering_to {
            tracing::warn!(
                node = id,
                recorded = %recorded,
                found = %log.last_log_id(),
                "storage lost entries it had made durable: recovering (its votes vouch only for logs \
                 reaching the recorded entry) until its log reaches that entry again"
            );
        }
        let recovery_witnesses = recovering_to
            .and_then(|_| recovery_witnesses_of(id, &membership, config_at, restored.recorded_config));
        // A reception cut short by the restart resumes where storage holds it whole (the
        // leader of the same term asks where it stands and goes on from there).
        let incoming = restored
            .staged
            .filter(|s| {
                s.len > 0
                    && s.meta.last_log_id.index > snapshot_last.index
                    && s.term <= restored.hard_state.current_term
            })
            .map(|s| IncomingSnapshot::resumed(s.term, s.meta, s.len));
        let boot_quiet_until = now + config.election_timeout_min_ms;
        let mut raft = Self {
            id,
            rng: SeededRng::new(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            now,
            config,
            hard_state: restored.hard_state,
            hard_state_dirty: false,
            role: Role::Follower,
            leader: None,
            log,
            membership,
            configs,
            snapshot: restored.snapshot,
            incoming,
            incoming_refused_until: 0,
            transfer: None,
            lease_revoked: false,
            read_seq: 0,
            read_seq_sent_at: VecDeque::new(),
            last_lease_read: None,
            read_round_needed: false,
            pending_reads: VecDeque::new(),
            remote_reads: reads::RemoteReads::default(),
            boot_quiet_until,
            election_deadline: now,
            heartbeat_deadline: now,
            check_quorum_deadline: now,
            leader_contact: None,
            votes: BTreeMap::new(),
            retried_in_later_term: false,
            progress: BTreeMap::new(),
            forwards: BTreeMap::new(),
            forwarded: BTreeMap::new(),
            forwarded_order: VecDeque::new(),
            out: Ready::default(),
            truncated_from: None,
            unsaved_from: None,
            awaiting_advance: false,
            apply_held: false,
            install_held: false,
            apply_read: None,
            apply_entries: Vec::new(),
            apply_read_retry_at: None,
            dropped_messages: 0,
            ready_seq: 0,
            unsaved_hard_state: None,
            recovering_to,
            recovery_witnesses,
            witnesses: BTreeMap::new(),
        };
        raft.reset_election_timer();
        Ok(raft)
    }

    /// Whether the current term and vote are durable (see [`ProtocolStatus::term_durable`]).
    pub fn term_durable(&self) -> bool {
        !self.hard_state_dirty && self.unsaved_hard_state.is_none()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `(current_term, is_leader)`, as the paper's `GetState`.
    pub fn state(&self) -> (Term, bool) {
        (self.hard_state.current_term, self.role == Role::Leader)
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.hard_state.current_term
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest committed index known to this node.
    pub fn commit_index(&self) -> Index {
        self.log.committed
    }

    /// The last entry of the log.
    pub fn last_log_id(&self) -> LogId {
        self.log.last_log_id()
    }

    /// The entry at `index`, if the in-memory log holds it.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.get(index)
    }

    /// The term of the entry at `index`, if the log knows it (the compaction point included).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term_at(index)
    }

    /// The hard state as it is now (it may not be durable yet).
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The membership in force.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// A full status snapshot.
    pub fn status(&self) -> ProtocolStatus {
        let mut status = self.status_with(self.membership.clone());
        self.fill_followers(&mut status.followers);
        status
    }

    /// Brings `status` up to date, reusing what it holds: the membership is cloned only when
    /// it changed, the followers' vector is refilled (a driver publishes its status after
    /// every turn, and the clones showed in the profile of a busy leader). Everything is read
    /// before `status` is touched.
    pub(crate) fn refresh_status(&self, status: &mut ProtocolStatus) {
        let mut fresh = self.status_with(Membership::default());
        if status.membership == self.membership {
            std::mem::swap(&mut fresh.membership, &mut status.membership);
        } else {
            fresh.membership = self.membership.clone();
        }
        std::mem::swap(&mut fresh.followers, &mut status.followers);
        self.fill_followers(&mut fresh.followers);
        *status = fresh;
    }

    /// Refills `followers` with the replication state of each follower.
    fn fill_followers(&self, followers: &mut Vec<FollowerStatus>) {
        followers.clear();
        followers.extend(self.progress.iter().map(|(id, p)| FollowerStatus {
            id: *id,
            next_index: p.next_index,
            match_index: p.match_index,
            mode: p.mode,
            last_contact_ago_ms: p.last_contact.map(|t| self.now.saturating_sub(t)),
        }));
    }

    /// The status with `membership` (the one in force) and no followers.
    fn status_with(&self, membership: Membership) -> ProtocolStatus {
        ProtocolStatus {
            id: self.id,
            term: self.hard_state.current_term,
            role: self.role,
            leader: self.leader,
            commit_index: self.log.committed,
            applied_index: self.log.applied,
            persisted_index: self.log.persisted,
            log_cached_bytes: self.log.cached_bytes(),
            last_log_id: self.log.last_log_id(),
            membership,
            membership_index: self.latest_config_index(),
            followers: Vec::new(),
            snapshot: self.snapshot_last(),
            snapshot_bytes: self.snapshot.as_ref().map_or(0, |s| s.data.len()),
            first_log_index: self.log.base().index + 1,
            leadership_transfer: self.transfer.as_ref().map(|t| t.target),
            incoming_snapshot: self.incoming.as_ref().map(|i| (i.meta.last_log_id, i.received_bytes())),
            last_lease_read_ms: if self.role == Role::Leader { self.last_lease_read } else { None },
            dropped_messages: self.dropped_messages,
            recovering_to: self.recovering_to,
            term_durable: self.term_durable(),
        }
    }

    /// The earliest time at which [`Event::Tick`] has something to do.
    pub fn next_deadline(&self) -> Millis {
        let mut deadline = match self.role {
            Role::Leader => {
                let mut d = self.heartbeat_deadline;
                if self.config.check_quorum {
                    d = d.min(self.check_quorum_deadline);
                }
                d
            }
            _ => self.election_deadline,
        };
        if let Some(d) = self.forwards.values().min() {
            deadline = deadline.min(*d);
        }
        if let Some(d) = self.next_remote_read_deadline() {
            deadline = deadline.min(d);
        }
        if let Some(t) = &self.transfer {
            deadline = deadline.min(t.deadline);
        }
        if let Some(d) = self.next_read_deadline() {
            deadline = deadline.min(d);
        }
        if let Some(d) = self.apply_read_retry_at {
            deadline = deadline.min(d);
        }
        deadline
    }

    /// Feeds one input. `now` must not go backwards.
    pub fn step(&mut self, now: Millis, event: Event) {
        debug_assert!(!self.awaiting_advance, "step between take_ready and advance");
        self.now = self.now.max(now);
        match event {
            Event::Tick => self.tick(),
            Event::Message(m) => self.handle_message(m),
            Event::Propose { id, command, forward } => self.propose(id, command, forward),
            Event::Read { id, mode } => self.read(id, mode),
            Event::SnapshotChunk { to, snapshot, offset, data } => {
                self.on_snapshot_chunk(to, snapshot, offset, data)
            }
            Event::LogEntries { to, from, entries } => self.on_log_entries(to, from, entries),
            Event::Persisted { last, seq } => self.on_persisted(last, seq),
            Event::SnapshotStagingFailed { retry_in_ms } => {
                self.abandon_incoming();
                self.incoming_refused_until = self.now.saturating_add(retry_in_ms);
            }
        }
        self.send_remote_reads();
        self.check_recovered();
    }

    /// Ends the recovery from lost data once the durable log is at least as up to date as the
    /// entry storage had recorded: from then on the node's own log is as strict a measure for
    /// votes as the record was.
    fn check_recovered(&mut self) {
        let Some(recorded) = self.recovering_to else { return };
        let persisted = self.log.persisted;
        let Some(term) = self.log.term_at(persisted) else { return };
        if LogId::new(term, persisted) >= recorded {
            tracing::info!(node = self.id, recorded = %recorded, "recovered the lost entries: its votes vouch for logs again");
            self.recovering_to = None;
            self.recovery_witnesses = None;
        }
    }

    /// Whether [`take_ready`](Self::take_ready) has work.
    pub fn has_ready(&self) -> bool {
        !self.out.is_empty()
            || self.hard_state_dirty
            || self.unsaved_from.is_some()
            || self.truncated_from.is_some()
            || (self.may_apply() && self.log.applied < self.log.committed.min(self.log.persisted))
            || (self.role == Role::Leader && (self.read_round_due() || self.leader_has_sends()))
    }

    /// Collects the work produced since the last call; see [`Ready`] for the order in which
    /// the driver must carry it out, then call [`advance`](Self::advance).
    pub fn take_ready(&mut self) -> Ready {
        debug_assert!(!self.awaiting_advance, "take_ready twice without advance");
        if self.role == Role::Leader {
            if self.read_round_due() {
                self.read_round_needed = false;
                self.heartbeat_round(true);
            }
            self.flush_appends();
        }
        #[cfg(debug_assertions)]
        self.check_snapshot_parts();
        let mut ready = std::mem::take(&mut self.out);
        self.ready_seq += 1;
        ready.seq = self.ready_seq;
        if self.hard_state_dirty {
            ready.hard_state = Some(self.hard_state);
            self.hard_state_dirty = false;
            self.unsaved_hard_state = Some(ready.seq);
        }
        if self.unsaved_hard_state.is_some() {
            // Nothing of a term may leave before the term is durable (a one-voter node elects
            // itself and leads in one step): the early messages wait for the write too, also
            // in later readies while that write is under way.
            if !ready.messages.is_empty() {
                let mut after = std::mem::take(&mut ready.messages);
                after.append(&mut ready.persisted_messages);
                ready.persisted_messages = after;
            }
        }
        ready.truncate_from = self.truncated_from.take();
        if let Some(from) = self.unsaved_from.take() {
            ready.entries = self.log.range(from, self.log.last_index());
        }
        ready.persist_through = self.log.last_log_id();
        let apply_to = self.log.committed.min(self.log.persisted);
        if self.may_apply() && apply_to > self.log.applied {
            let from = self.log.applied + 1;
            let read = std::mem::take(&mut self.apply_entries);
            if read.first().is_some_and(|e| e.index == from) {
                // Read from storage (they had left the cache while applying was held).
                let read: Vec<Entry> = read.into_iter().take_while(|e| e.index <= apply_to).collect();
                self.log.applied = read.last().map_or(self.log.applied, |e| e.index);
                ready.committed = read;
            } else if from >= self.log.cached_from() {
                // A bounded batch (a restarted node may have a long log to apply again): the
                // rest goes in the next readies, which the driver holds back while its apply
                // queue is full.
                let to = self.log.span_end(
                    from,
                    apply_to,
                    self.config.max_entries_per_append.saturating_mul(APPLY_BATCH_APPENDS),
                    self.config.max_bytes_per_append.saturating_mul(APPLY_BATCH_APPENDS),
                );
                ready.committed = self.log.range(from, to);
                self.log.applied = to;
            } else {
                let last = self
                    .log
                    .read_end(from, self.config.max_entries_per_append, self.config.max_bytes_per_append)
                    .min(apply_to);
                self.apply_read = Some(from);
                ready.log_reads.push(LogRead { to: self.id, from, last });
            }
        }
        // Entries handed out and durable may leave the cache (the ready holds its own copies).
        self.log.evict();
        self.awaiting_advance = true;
        ready
    }

    /// Holds committed entries back from the readies (`true`) or lets them through again: for
    /// a driver that applies in the background, while its apply queue is full. Held entries
    /// are handed out by the first ready taken after the hold ends. A received snapshot
    /// still installs meanwhile (the entries it covers are then never handed out).
    pub fn hold_apply(&mut self, hold: bool) {
        self.apply_held = hold;
    }

    /// Whether a ready may hand out committed entries now: not held, no read for them pending
    /// or failed less than a heartbeat interval ago.
    fn may_apply(&self) -> bool {
        !self.apply_held && self.apply_read.is_none() && self.apply_read_retry_at.is_none()
    }

    /// Entries read from storage to be applied (see [`take_ready`](Self::take_ready)): kept
    /// for the next ready if they are this log's committed, durable entries right after what
    /// was handed out. A read that failed is tried again a heartbeat interval later.
    fn on_apply_read(&mut self, from: Index, entries: Option<Vec<Entry>>) {
        if self.apply_read != Some(from) {
            return;
        }
        self.apply_read = None;
        let apply_to = self.log.committed.min(self.log.persisted);
        let entries = entries.unwrap_or_default();
        let genuine = !entries.is_empty()
            && entries.iter().enumerate().all(|(i, e)| {
                e.index == from + i as Index
                    && e.index <= apply_to
                    && self.log.term_at(e.index) == Some(e.term)
            });
        if from != self.log.applied + 1 {
            // A snapshot installed meanwhile covers them.
            return;
        }
        if genuine {
            self.apply_entries = entries;
        } else {
            tracing::error!(
                node = self.id,
                from,
                "committed entries to apply could not be read from storage"
            );
            self.apply_read_retry_at = Some(self.now.saturating_add(self.config.heartbeat_interval_ms));
        }
    }

    /// Holds back (or lets through) the install of a snapshot received from the leader: while
    /// held, the last part of a snapshot is not taken (the earlier ones are) and the leader
    /// sends it again later. For a driver whose state machine is still restoring the previous
    /// received snapshot from storage, which the new one would replace there.
    pub fn hold_snapshot_install(&mut self, hold: bool) {
        self.install_held = hold;
    }

    /// Appends a blank entry of the current term, as a new leader does, when this node leads,
    /// transfers no leadership and is within its uncommitted bounds; returns its id. It
    /// commits like any entry and is applied as nothing. The driver uses it to move the
    /// applied index past a snapshot it must take again (its stored copy was found damaged).
    pub fn append_blank(&mut self) -> Option<LogId> {
        let appended = self.append_entry(EntryPayload::Blank).ok();
        // A leader with no peers commits on its own write.
        self.maybe_commit();
        appended
    }

    /// Tells the protocol that everything in the last [`Ready`] was carried out: its writes are
    /// durable and its committed entries applied.
    pub fn advance(&mut self) {
        self.awaiting_advance = false;
        self.unsaved_hard_state = None;
        self.log.persisted = self.log.last_index();
        if self.role == Role::Leader {
            self.maybe_commit();
        }
        self.log.evict();
        self.check_recovered();
    }

    /// Like [`advance`](Self::advance), for a driver that persists in the background: the
    /// last [`Ready`]'s committed entries were applied and its immediate `messages` sent,
    /// but its writes are only queued (in the order the readies were taken). The driver
    /// sends its `persisted_messages` once they (and every earlier ready's writes) are
    /// durable, and then steps [`Event::Persisted`]. Until then this node counts none of
    /// those entries: not towards a commit as leader, not as applicable.
    pub fn advance_unpersisted(&mut self) {
        self.awaiting_advance = false;
    }

    /// This node's writes are durable up to `last`. An entry overwritten since (a truncated
    /// suffix) is not the one that was written: then nothing changes, and the later write
    /// that replaced it reports its own.
    fn on_persisted(&mut self, last: LogId, seq: u64) {
        if self.unsaved_hard_state.is_some_and(|unsaved| unsaved <= seq) {
            self.unsaved_hard_state = None;
        }
        if last.index <= self.log.persisted
            || last.index > self.log.last_index()
            || self.log.term_at(last.index) != Some(last.term)
        {
            return;
        }
        self.log.persisted = last.index;
        self.log.evict();
        if self.role == Role::Leader {
            self.maybe_commit();
            // A transfer waits for the leader's own log to be durable before TimeoutNow.
            self.maybe_send_timeout_now();
        }
    }

    // ---- timers ----

    fn tick(&mut self) {
        if self.apply_read_retry_at.is_some_and(|at| self.now >= at) {
            self.apply_read_retry_at = None;
        }
        self.expire_forwards();
        self.expire_remote_reads();
        match self.role {
            Role::Leader => {
                self.expire_transfer();
                self.expire_pending_reads();
                if self.config.check_quorum && self.now >= self.check_quorum_deadline {
                    self.check_quorum();
                    if self.role != Role::Leader {
                        return;
                    }
                }
                if self.now >= self.heartbeat_deadline {
                    self.broadcast_heartbeat();
                }
            }
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                if self.now >= self.election_deadline {
                    self.on_election_timeout();
                }
            }
        }
    }

    fn reset_election_timer(&mut self) {
        let timeout =
            self.rng.range(self.config.election_timeout_min_ms, self.config.election_timeout_max_ms);
        self.election_deadline = self.now + timeout;
    }

    fn expire_forwards(&mut self) {
        for id in take_expired(&mut self.forwards, self.now) {
            self.out.proposals.push(ProposalOutcome { id, result: Err(ProposalRejection::ForwardTimeout) });
        }
    }

    fn check_quorum(&mut self) {
        let id = self.id;
        let progress = &self.progress;
        let active =
            self.membership.is_quorum(|n| n == id || progress.get(&n).is_some_and(|p| p.recent_active));
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        self.check_quorum_deadline = self.now + self.config.election_timeout_min_ms;
        if !active {
            tracing::info!(node = self.id, term = self.term(), "lost contact with a quorum; stepping down");
            let term = self.term();
            self.become_follower(term, None);
        }
    }

    // ---- elections ----

    fn on_election_timeout(&mut self) {
        if !self.may_campaign() || self.term() == Term::MAX {
            // Learners and removed nodes never campaign.
            self.reset_election_timer();
            return;
        }
        self.retried_in_later_term = false;
        self.campaign();
    }

    fn campaign(&mut self) {
        // A node that campaigns only as a voter of the configuration before its latest one
        // always asks first: after a restart it cannot know that C_new committed without it,
        // and must not depose a healthy leader every election timeout.
        if self.config.pre_vote || !self.membership.is_voter(self.id) {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    /// Whether this node may start an election: it is a voter of the latest configuration in
    /// its log, or that configuration is not known to be committed and this node is a voter
    /// of the one before it. The second case is the dissertation's leader that manages a
    /// configuration without itself (§4.2.2): a leader removed by C_new that crashed or lost
    /// its quorum before anyone else stored C_new holds the most up-to-date log, so only it
    /// can win the election that commits C_new (then it steps down). Without it the cluster
    /// could stay leaderless for good. The election itself is counted in the latest
    /// configuration, as every decision is.
    pub(super) fn may_campaign(&self) -> bool {
        if self.membership.is_voter(self.id) {
            return true;
        }
        let latest = self.latest_config_index();
        latest > self.log.committed
            && self.configs.range(..latest).next_back().is_some_and(|(_, m)| m.is_voter(self.id))
    }

    /// Whether a refusal from a later term to this node's (pre-)election may start another one
    /// at once: once per election timeout, for the (pre-)election still running, and only with
    /// pre-vote off. With pre-vote on, voters that cannot win never raise the term, so the
    /// retry is not needed; and it would hurt: a pre-candidate refused by a voter that had just
    /// voted for another candidate would pre-vote again at once, win it before the new leader
    /// is heard from and depose that leader (found by review: 17 of 300 failovers of 5 nodes
    /// elected two leaders instead of one). A node outside its latest configuration pre-votes
    /// even with pre-vote off, and retries then.
    fn may_campaign_again_in_later_term(&self, pre_vote: bool) -> bool {
        let running = match self.role {
            Role::PreCandidate => pre_vote,
            Role::Candidate => !pre_vote,
            _ => false,
        };
        running && !self.config.pre_vote && !self.retried_in_later_term
    }

    /// A voter refused this node's election from a later term: campaign again in that term
    /// at once instead of one election timeout later. Voters send their own vote requests
    /// only to the members of their configuration, so a node they do not know as a voter (it
    /// joined in entries they have not received) learns their terms only from these answers;
    /// with pre-vote off, voters that cannot win keep raising the term among themselves, and
    /// a node that waits a whole timeout before its next try is always a term behind. That
    /// node may hold the only log that can win: the cluster stayed leaderless for good (the
    /// node simulation, seeds 36294 and 85081). One immediate retry per timeout catches up
    /// within a round trip. With check-quorum, a leader and the voters that hear from it
    /// ignore vote requests of earlier terms as they ignore those of later ones, so a node
    /// that fell behind a healthy leader never learns its term this way and cannot depose it.
    fn campaign_again_in_later_term(&mut self, from: NodeId, term: Term) {
        tracing::debug!(node = self.id, from, term, "a voter is in a later term; campaigning again in it");
        self.become_follower(term, None);
        self.retried_in_later_term = true;
        if self.may_campaign() && self.term() < Term::MAX {
            self.campaign();
        }
    }

    fn become_pre_candidate(&mut self) {
        let since_leader_ms = self.leader_contact.map(|t| self.now.saturating_sub(t));
        tracing::debug!(node = self.id, term = self.term(), ?since_leader_ms, "starting pre-vote");
        self.role = Role::PreCandidate;
        self.leader = None;
        self.leader_contact = None;
        self.progress.clear();
        self.votes.clear();
        self.witnesses.clear();
        self.reset_election_timer();
        self.record_own_vote();
        let term = self.term().saturating_add(1);
        self.request_votes(true, term, false);
    }

    /// Starts an election; `leadership_transfer` when the leader asked for it (TimeoutNow).
    fn become_candidate(&mut self, leadership_transfer: bool) {
        self.role = Role::Candidate;
        self.hard_state.current_term = self.hard_state.current_term.saturating_add(1);
        self.hard_state.voted_for = Some(self.id);
        self.hard_state_dirty = true;
        self.abandon_incoming();
        tracing::debug!(node = self.id, term = self.term(), "starting election");
        self.leader = None;
        self.leader_contact = None;
        self.progress.clear();
        self.votes.clear();
        self.witnesses.clear();
        self.reset_election_timer();
        self.record_own_vote();
        let term = self.term();
        self.request_votes(false, term, leadership_transfer);
    }

    fn request_votes(&mut self, pre_vote: bool, term: Term, leadership_transfer: bool) {
        let last_log_id = self.log.last_log_id();
        let peers: Vec<NodeId> = self
            .membership
            .voters
            .iter()
            .chain(self.membership.outgoing_voters.iter())
            .copied()
            .filter(|n| *n != self.id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for to in peers {
            self.send(to, term, Payload::RequestVote { pre_vote, last_log_id, leadership_transfer });
        }
        self.tally_votes();
    }

    /// A candidate's vote for itself, which vouches for its log only when its log is whole.
    fn record_own_vote(&mut self) {
        let ballot = if self.recovering_to.is_some() { Ballot::GrantedUnvouched } else { Ballot::Granted };
        if let Some(w) = self.recovery_witnesses.clone() {
            self.witnesses.insert(self.id, w);
        }
        self.record_vote(self.id, ballot);
    }

    fn record_vote(&mut self, from: NodeId, ballot: Ballot) {
        self.votes.entry(from).or_insert(ballot);
    }

    /// Counts the (pre-)votes: the grants must form a quorum, and those that vouch for the
    /// candidate's log must share a node with every majority of each voter set. Every grant
    /// vouches except one from a node recovering lost data whose recorded last entry the
    /// candidate does not reach (including the candidate's own while it recovers): such a
    /// node may have acknowledged entries the candidate lacks. An entry committed with that
    /// lost acknowledgement is held by another member of the commit quorum, which is among
    /// the vouching voters and refuses a log that lacks it. Without recovering nodes the
    /// second condition follows from the first. Each voter set on its own, not only every
    /// quorum of a joint configuration: a candidate holding an uncommitted joint configuration
    /// could otherwise win on vouchers that miss every holder in the old set, which committed
    /// the entries it lacks (tests/recovering_votes.rs).
    /// (Refusing such candidates outright, and never campaigning while recovering, left the
    /// cluster leaderless for good when the recovering node held the only log the others
    /// would elect, or its vote was needed for the only one it had to refuse: the node
    /// simulation, seeds 303387, 319577 and 339292.)
    ///
    /// A voter set that is one recovering voter alone can never meet the second condition
    /// through that voter. When it named witnesses (a majority of whom holds every committed
    /// entry it lost, see [`RestoredState::recorded_config`]), the vouching grants may meet
    /// every majority of the witnesses instead: then one of them holds each such entry and
    /// refused a log lacking it (seed 627994 of the node simulation: the new voter set of a
    /// joint configuration was the recovering node alone, and no leader could be elected).
    fn tally_votes(&mut self) {
        let votes = &self.votes;
        let witnesses = &self.witnesses;
        let won = self.membership.is_quorum(|n| votes.get(&n).is_some_and(|b| b.granted()))
            && self.membership.vouched_by(|n| votes.get(&n) == Some(&Ballot::Granted), |n| witnesses.get(&n));
        // Lost once the answers still missing could not make it won.
        let lost = !self.membership.is_quorum(|n| votes.get(&n) != Some(&Ballot::Refused))
            || !self
                .membership
                .vouched_by(|n| votes.get(&n).is_none_or(|b| *b == Ballot::Granted), |n| witnesses.get(&n));
        if won {
            match self.role {
                Role::PreCandidate => self.become_candidate(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if lost {
            let term = self.term();
            self.become_follower(term, None);
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.hard_state.current_term {
            self.hard_state.current_term = term;
            self.hard_state.voted_for = None;
            self.hard_state_dirty = true;
            // A transfer is tied to its leader's term: a part received so far is garbage now.
            self.abandon_incoming();
        }
        if self.role != Role::Follower {
            // A node that stops leading or campaigning needs a fresh election timer.
            self.reset_election_timer();
        }
        if self.role == Role::Leader {
            self.fail_pending_reads(leader);
            self.transfer = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.votes.clear();
        self.witnesses.clear();
    }

    fn become_leader(&mut self) {
        tracing::info!(node = self.id, term = self.term(), "became leader");
        self.role = Role::Leader;
        self.forwarded.clear();
        self.forwarded_order.clear();
        self.leader = Some(self.id);
        self.votes.clear();
        self.witnesses.clear();
        let next = self.log.last_index() + 1;
        self.progress = self
            .membership
            .members()
            .into_iter()
            .filter(|n| *n != self.id)
            .map(|n| (n, Progress::new(next)))
            .collect();
        self.heartbeat_deadline = self.now + self.config.heartbeat_interval_ms;
        self.check_quorum_deadline = self.now + self.config.election_timeout_min_ms;
        self.read_seq_sent_at.clear();
        self.last_lease_read = None;
        self.lease_revoked = false;
        let entry = Entry { term: self.term(), index: next, payload: EntryPayload::Blank };
        self.append_local(entry);
        // A leader with no peers commits on its own write.
        self.maybe_commit();
    }

    /// Whether this node heard from a leader recently enough to ignore vote requests (or just
    /// started, and may have been following a leader whose lease still runs).
    fn in_leader_lease(&self) -> bool {
        match self.role {
            Role::Leader => self.config.check_quorum,
            _ => {
                // The contact time alone: a higher-term message that is not a vote request
                // (an answer to a stale message) clears `leader` but must not lift the promise.
                self.now < self.boot_quiet_until
                    || self.leader_contact.is_some_and(|t| self.now < t + self.config.election_timeout_min_ms)
            }
        }
    }

    // ---- messages ----

    fn send(&mut self, to: NodeId, term: Term, payload: Payload) {
        let message = Message { from: self.id, to, term, payload };
        // Answers that promise durable state (acknowledgements, votes) wait for the writes;
        // so does everything of a ready that changes the hard state (see `take_ready`). The
        // leader's replication and its answers to forwarded proposals and reads promise
        // nothing about its own disk: a forwarding follower that learned where its proposal
        // went only after applying that index could not tell its caller the outcome.
        let immediate = match message.payload {
            Payload::AppendEntries { .. } | Payload::InstallSnapshot { .. } => self.role == Role::Leader,
            Payload::ForwardProposalResponse { .. } | Payload::ReadIndexResponse { .. } => true,
            _ => false,
        };
        if immediate {
            self.out.messages.push(message);
        } else {
            self.out.persisted_messages.push(message);
        }
    }

    fn handle_message(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id {
            tracing::warn!(node = self.id, from = m.from, to = m.to, "dropping misaddressed message");
            self.dropped_messages += 1;
            return;
        }
        let term = self.term();
        if m.term > TERM_LIMIT {
            // No election reaches it; adopting it would leave (almost) no next term.
            tracing::warn!(
                node = self.id,
                from = m.from,
                term = m.term,
                "dropping a message whose term is past the limit (forged or corrupted)"
            );
            self.dropped_messages += 1;
            return;
        }
        if let Payload::AppendEntries { prev_log_id, entries, .. } = &m.payload {
            if !entries_follow(*prev_log_id, entries, m.term) {
                tracing::warn!(node = self.id, from = m.from, "dropping a malformed AppendEntries");
                self.dropped_messages += 1;
                return;
            }
        }
        if m.term > term {
            match &m.payload {
                Payload::RequestVote { pre_vote, leadership_transfer, .. } => {
                    if self.in_leader_lease() && !leadership_transfer {
                        tracing::debug!(
                            node = self.id,
                            from = m.from,
                            "ignoring vote request: leader is active"
                        );
                        return;
                    }
                    if !pre_vote {
                        self.become_follower(m.term, None);
                    }
                }
                Payload::RequestVoteResponse { pre_vote: true, granted: true, .. } => {}
                Payload::RequestVoteResponse { pre_vote, granted: false, .. }
                    if self.may_campaign_again_in_later_term(*pre_vote) =>
                {
                    self.campaign_again_in_later_term(m.from, m.term);
                    return;
                }
                Payload::AppendEntries { .. } | Payload::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from))
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < term {
            match &m.payload {
                Payload::AppendEntries { prev_log_id, .. } => {
                    // A stale leader: tell it the new term so it steps down. The round is not
                    // echoed: this answer must never confirm a round of the current term (the
                    // same node may lead it with a restarted round counter).
                    let hint = ConflictHint { conflict_term: None, index: self.log.last_index() };
                    let result = AppendResult::Reject { rejected_prev_index: prev_log_id.index, hint };
                    self.send(m.from, term, Payload::AppendEntriesResponse { result, read_seq: 0 });
                    return;
                }
                Payload::InstallSnapshot { meta, .. } => {
                    let snapshot = meta.last_log_id;
                    self.send(
                        m.from,
                        term,
                        Payload::InstallSnapshotResponse { snapshot, next_offset: 0, done: false },
                    );
                    return;
                }
                Payload::RequestVote { pre_vote, .. } => {
                    // Under a leader's lease (check-quorum), no answer: the refusal would tell a
                    // node that fell behind the current term, and it would campaign in the next
                    // one at once (`campaign_again_in_later_term`) and depose the leader when
                    // it next hears from it. The leader's next AppendEntries brings it back.
                    if !self.in_leader_lease() {
                        let pre_vote = *pre_vote;
                        let refusal = Payload::RequestVoteResponse {
                            pre_vote,
                            granted: false,
                            vouches: false,
                            witnesses: None,
                        };
                        self.send(m.from, term, refusal);
                    }
                    return;
                }
                Payload::ForwardProposal { id, .. } => {
                    // Sent to the leader of an older term (or a duplicate delivered late): this
                    // node cannot tell whether it appended it then, so it appends nothing now.
                    let result = Err(ForwardRejection::NotLeader { leader_hint: self.leader });
                    let id = *id;
                    self.send(m.from, term, Payload::ForwardProposalResponse { id, result });
                    return;
                }
                Payload::ForwardProposalResponse { .. }
                | Payload::ReadIndexRequest { .. }
                | Payload::ReadIndexResponse { .. } => {}
                _ => return,
            }
        }

        match m.payload {
            Payload::RequestVote { pre_vote, last_log_id, leadership_transfer } => {
                self.handle_vote_request(m.from, m.term, pre_vote, last_log_id, leadership_transfer)
            }
            Payload::RequestVoteResponse { pre_vote, granted, vouches, witnesses } => {
                let ballot = match (granted, vouches) {
                    (false, _) => Ballot::Refused,
                    (true, false) => Ballot::GrantedUnvouched,
                    (true, true) => Ballot::Granted,
                };
                self.handle_vote_response(m.from, m.term, pre_vote, ballot, witnesses)
            }
            Payload::AppendEntries { prev_log_id, entries, leader_commit, read_seq } => {
                self.handle_append(m.from, prev_log_id, entries, leader_commit, read_seq)
            }
            Payload::AppendEntriesResponse { result, read_seq } => {
                self.handle_append_response(m.from, result, read_seq)
            }
            Payload::InstallSnapshot { meta, offset, data, done } => {
                self.handle_install_snapshot(m.from, meta, offset, data, done)
            }
            Payload::InstallSnapshotResponse { snapshot, next_offset, done } => {
                self.handle_install_snapshot_response(m.from, snapshot, next_offset, done)
            }
            Payload::TimeoutNow => self.handle_timeout_now(m.from),
            Payload::ReadIndexRequest { id } => self.handle_read_index_request(m.from, id),
            Payload::ReadIndexResponse { id, result } => self.handle_read_index_response(m.from, id, result),
            Payload::ForwardProposal { id, command } => self.handle_forward(m.from, id, command),
            Payload::ForwardProposalResponse { id, result } => {
                if self.forwards.remove(&id).is_some() {
                    let result = result.map_err(|r| ProposalRejection::ForwardRefused {
                        leader_hint: match r {
                            ForwardRejection::NotLeader { leader_hint } => leader_hint,
                            ForwardRejection::Busy => None,
                        },
                    });
                    self.out.proposals.push(ProposalOutcome { id, result });
                }
            }
        }
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        msg_term: Term,
        pre_vote: bool,
        last: LogId,
        leadership_transfer: bool,
    ) {
        let term = self.term();
        let up_to_date = last >= self.log.last_log_id();
        // A node recovering from lost data vouches only for a log at least as up to date as
        // the one it had (see `tally_votes`).
        let vouches = up_to_date && self.recovering_to.is_none_or(|recorded| last >= recorded);
        let granted = if pre_vote {
            // A pre-vote changes nothing here; it is granted only to a node with a log at least
            // as new, for a higher term, when this node has not heard from a leader lately.
            msg_term > term && up_to_date && !self.heard_from_leader_recently()
        } else {
            // A new vote in this term keeps the check-quorum promise too (a leader's lease
            // reads rely on it): not while the last leader was heard from lately, unless that
            // leader asked for this election (TimeoutNow). The term may have been raised by
            // another message in the meantime.
            let can_vote = self.hard_state.voted_for == Some(from)
                || (self.hard_state.voted_for.is_none()
                    && self.leader.is_none()
                    && (leadership_transfer || !self.in_leader_lease()));
            can_vote && up_to_date
        };
        if granted && !pre_vote {
            self.hard_state.voted_for = Some(from);
            self.hard_state_dirty = true;
            self.reset_election_timer();
        }
        let reply_term = if granted && pre_vote { msg_term } else { term };
        let vouches = granted && vouches;
        let witnesses = if granted && !vouches { self.recovery_witnesses.clone() } else { None };
        tracing::debug!(
            node = self.id,
            from,
            pre_vote,
            granted,
            vouches,
            ?witnesses,
            term = reply_term,
            "vote request"
        );
        self.send(from, reply_term, Payload::RequestVoteResponse { pre_vote, granted, vouches, witnesses });
    }

    fn heard_from_leader_recently(&self) -> bool {
        self.role == Role::Leader
            || self.now < self.boot_quiet_until
            || self.leader_contact.is_some_and(|t| self.now < t + self.config.election_timeout_min_ms)
    }

    /// `witnesses` count only with the ballot they came with (a grant that does not vouch), and
    /// only when that ballot is the one recorded for the voter in this (pre-)election.
    fn handle_vote_response(
        &mut self,
        from: NodeId,
        msg_term: Term,
        pre_vote: bool,
        ballot: Ballot,
        witnesses: Option<BTreeSet<NodeId>>,
    ) {
        let expected = match (self.role, pre_vote) {
            (Role::PreCandidate, true) => self.term().saturating_add(1),
            (Role::Candidate, false) => self.term(),
            _ => return,
        };
        // A rejected pre-vote carries the voter's term, which may equal ours: count it.
        let rejected_pre_vote = pre_vote && ballot == Ballot::Refused;
        if msg_term != expected && !rejected_pre_vote {
            return;
        }
        if ballot == Ballot::GrantedUnvouched && !self.votes.contains_key(&from) {
            if let Some(w) = witnesses.filter(|w| !w.is_empty() && w.len() <= WITNESSES_MAX) {
                self.witnesses.insert(from, w);
            }
        }
        self.record_vote(from, ballot);
        self.tally_votes();
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev: LogId,
        entries: Vec<Entry>,
        leader_commit: Index,
        read_seq: u64,
    ) {
        let term = self.term();
        if !self.accept_leader(from) {
            return;
        }
        let reply = |result| Payload::AppendEntriesResponse { result, read_seq };
        let (prev, entries) = if prev.index < self.log.committed {
            // Everything up to the commit index matches every leader's log (it may be compacted
            // here): continue from the commit index with the entries after it. A leader whose
            // entries differ from this node's committed ones is of another history (two
            // clusters under one id): acknowledging it would count entries this node does not
            // hold (found by review), so it is refused.
            if let Some(index) = self.conflict_with_committed(prev, &entries) {
                self.refuse_foreign_leader(from, index);
                return;
            }
            let committed = self.log.committed;
            let Some(committed_term) = self.log.term_at(committed) else {
                tracing::error!(node = self.id, committed, "commit index is not in the log");
                return;
            };
            let rest: Vec<Entry> = entries.into_iter().filter(|e| e.index > committed).collect();
            (LogId::new(committed_term, committed), rest)
        } else {
            (prev, entries)
        };
        if !self.log.matches(prev) {
            let hint = match self.log.term_at(prev.index) {
                Some(t) => ConflictHint {
                    conflict_term: Some(t),
                    index: self.log.first_index_of_term_at(prev.index).max(self.log.committed + 1),
                },
                None => ConflictHint { conflict_term: None, index: self.log.last_index() },
            };
            self.send(from, term, reply(AppendResult::Reject { rejected_prev_index: prev.index, hint }));
            return;
        }
        let last_new = prev.index + entries.len() as Index;
        for entry in entries {
            match self.log.term_at(entry.index) {
                Some(t) if t == entry.term => continue,
                Some(_) => {
                    assert!(
                        entry.index > self.log.committed,
                        "node {}: leader {} conflicts with committed entry {}",
                        self.id,
                        from,
                        entry.index
                    );
                    self.truncate_local(entry.index);
                    self.append_local(entry);
                }
                None => self.append_local(entry),
            }
        }
        let new_commit = leader_commit.min(last_new);
        if new_commit > self.log.committed {
            self.log.committed = new_commit;
        }
        self.send(from, term, reply(AppendResult::Success { match_index: last_new }));
    }

    /// The first index at or below the commit index where `prev` or `entries` name another
    /// term than this node's log holds (entries compacted here cannot be compared).
    fn conflict_with_committed(&self, prev: LogId, entries: &[Entry]) -> Option<Index> {
        let committed = self.log.committed;
        std::iter::once(prev)
            .chain(entries.iter().map(Entry::log_id))
            .filter(|id| id.index > 0 && id.index <= committed)
            .find(|id| self.log.term_at(id.index).is_some_and(|t| t != id.term))
            .map(|id| id.index)
    }

    /// Drops a message of a leader whose log contradicts this node's committed entries.
    pub(super) fn refuse_foreign_leader(&mut self, from: NodeId, index: Index) {
        self.dropped_messages += 1;
        tracing::error!(
            node = self.id,
            leader = from,
            index,
            committed = self.log.committed,
            "the leader's log contradicts this node's committed entry: two clusters under one id (a forced recovery or a seeded backup beside the old members?); its messages are refused"
        );
    }

    /// A valid AppendEntries or InstallSnapshot from `from`, the leader of this term. Returns
    /// false, dropping the message, when this node leads the same term: two leaders of one
    /// term break Raft's election safety, which only separate clusters under one id can do
    /// (a forced recovery or a seeded backup run on two nodes and then joined). Stepping down
    /// would merge their logs, whose equal (term, index) ids hold different entries, and the
    /// replicas would diverge silently; refusing keeps each whole and says so.
    fn accept_leader(&mut self, from: NodeId) -> bool {
        let term = self.term();
        if self.role == Role::Leader {
            self.dropped_messages += 1;
            tracing::error!(
                node = self.id,
                other = from,
                term,
                "another node leads this node's term: two clusters under one id (a forced recovery or a seeded backup run on more than one node?); its messages are refused"
            );
            return false;
        }
        if self.role != Role::Follower {
            self.become_follower(term, Some(from));
        }
        self.leader = Some(from);
        self.leader_contact = Some(self.now);
        self.reset_election_timer();
        true
    }

    fn handle_append_response(&mut self, from: NodeId, result: AppendResult, read_seq: u64) {
        if self.role != Role::Leader {
            return;
        }
        let Some(p) = self.progress.get_mut(&from) else { return };
        p.recent_active = true;
        p.last_contact = Some(self.now);
        // A round above ours was never sent by this process (a reply to a previous
        // incarnation): it confirms nothing.
        if read_seq > p.acked_read_seq && read_seq <= self.read_seq {
            p.acked_read_seq = read_seq;
            self.advance_reads();
        }
        let round_sent = match self.progress.get(&from) {
            Some(p) if p.snapshot.is_some() => self.round_sent_at(read_seq),
            _ => None,
        };
        let Some(p) = self.progress.get_mut(&from) else { return };
        if let Some(t) = p.snapshot.as_mut() {
            // The follower answered a round sent after the outstanding chunk but not the chunk:
            // the chunk was most likely lost (the follower was down, or the link dropped it).
            if t.in_flight && !t.reading && round_sent.is_some_and(|at| at > t.sent_at) {
                t.in_flight = false;
            }
        }
        match result {
            AppendResult::Success { match_index } => {
                if match_index > self.log.last_index() {
                    tracing::warn!(
                        node = self.id,
                        from,
                        match_index,
                        "follower claims entries we never sent"
                    );
                    return;
                }
                let advanced = p.on_success(match_index);
                p.leave_snapshot_if_log_covers(self.log.base().index);
                if advanced {
                    self.maybe_commit();
                }
                self.maybe_send_timeout_now();
            }
            AppendResult::Reject { rejected_prev_index, hint } => {
                let next = match hint.conflict_term {
                    Some(t) => match self.log.last_index_of_term(t, rejected_prev_index) {
                        Some(i) => i + 1,
                        None => hint.index,
                    },
                    None => hint.index.saturating_add(1),
                };
                if p.on_reject(rejected_prev_index, next) {
                    tracing::debug!(node = self.id, from, next = p.next_index, "append rejected; probing");
                }
            }
        }
    }

    fn handle_forward(&mut self, from: NodeId, id: ProposalId, command: Bytes) {
        let term = self.term();
        let digest = command_digest(&command);
        match self.forwarded.get(&(from, id)) {
            Some((log_id, d)) if *d == digest => {
                // A duplicate delivery (the transport may duplicate): answer it again.
                let result = Ok(*log_id);
                self.send(from, term, Payload::ForwardProposalResponse { id, result });
                return;
            }
            Some(_) => {
                // The same id with another command: the origin reused its ids (a restart with
                // the same seed). Appending would be right, but its answer could be mistaken
                // for the earlier one's: refuse.
                tracing::warn!(node = self.id, from, id, "forwarded proposal id reused with another command");
                let result = Err(ForwardRejection::Busy);
                self.send(from, term, Payload::ForwardProposalResponse { id, result });
                return;
            }
            None => {}
        }
        let result = match self.append_entry(EntryPayload::Command(command)) {
            Ok(log_id) => {
                if self.forwarded_order.len() >= FORWARDS_REMEMBERED {
                    if let Some(old) = self.forwarded_order.pop_front() {
                        self.forwarded.remove(&old);
                    }
                }
                self.forwarded.insert((from, id), (log_id, digest));
                self.forwarded_order.push_back((from, id));
                Ok(log_id)
            }
            Err(ProposalRejection::NotLeader { .. }) => {
                Err(ForwardRejection::NotLeader { leader_hint: self.leader })
            }
            Err(_) => Err(ForwardRejection::Busy),
        };
        self.send(from, term, Payload::ForwardProposalResponse { id, result });
    }

    // ---- proposals ----

    fn propose(&mut self, id: ProposalId, command: Bytes, forward: bool) {
        // Only a node that does not lead forwards: the command is moved into the log or into
        // the forward, never cloned (this is on every write's path).
        let result = match (self.role, self.leader) {
            (Role::Leader, _) => self.append_entry(EntryPayload::Command(command)),
            (_, Some(leader)) if forward && self.forwards.len() < self.config.max_pending_forwards => {
                self.forwards.insert(id, self.now + self.config.rpc_timeout_ms);
                let term = self.term();
                self.send(leader, term, Payload::ForwardProposal { id, command });
                return;
            }
            (_, Some(_)) if forward => Err(ProposalRejection::Busy),
            (_, leader_hint) => Err(ProposalRejection::NotLeader { leader_hint }),
        };
        self.out.proposals.push(ProposalOutcome { id, result });
    }

    /// Appends an entry of the current term when this node leads, transfers no leadership
    /// and is within its uncommitted bounds.
    fn append_entry(&mut self, payload: EntryPayload) -> Result<LogId, ProposalRejection> {
        if self.role != Role::Leader {
            return Err(ProposalRejection::NotLeader { leader_hint: self.leader });
        }
        if self.transfer.is_some() {
            return Err(ProposalRejection::LeadershipTransferInProgress);
        }
        // Counted from what was handed to the state machine: a leader whose applier is full
        // (`hold_apply`) takes no more than the same bound either.
        let handed = self.log.applied;
        if self.log.len_after(handed) >= self.config.max_uncommitted_entries as u64 {
            return Err(ProposalRejection::Busy);
        }
        // In bytes too (a proposal alone is always taken: its size is bounded by the caller).
        let uncommitted = self.log.bytes_after(handed);
        let bytes = match &payload {
            EntryPayload::Command(command) => command.len() as u64,
            _ => 0,
        };
        if uncommitted > 0 && uncommitted.saturating_add(bytes) > self.config.max_uncommitted_bytes {
            return Err(ProposalRejection::Busy);
        }
        let log_id = LogId::new(self.term(), self.log.last_index() + 1);
        self.append_local(Entry { term: log_id.term, index: log_id.index, payload });
        Ok(log_id)
    }

    // ---- replication (leader) ----

    fn append_local(&mut self, entry: Entry) {
        let index = entry.index;
        let config = match &entry.payload {
            EntryPayload::Membership(m) => Some(Membership::clone(m)),
            _ => None,
        };
        self.log.push(entry);
        if self.unsaved_from.is_none() {
            self.unsaved_from = Some(index);
        }
        if let Some(m) = config {
            // A configuration takes effect when it is appended, not when it commits.
            self.configs.insert(index, m);
            self.on_membership_changed();
        }
    }

    fn truncate_local(&mut self, from: Index) {
        self.log.truncate_from(from);
        self.truncated_from = Some(self.truncated_from.map_or(from, |t| t.min(from)));
        self.unsaved_from = Some(self.unsaved_from.map_or(from, |u| u.min(from)));
        if self.configs.range(from..).next().is_some() {
            // The removed suffix held configurations: the previous one is in force again.
            self.configs.split_off(&from);
            self.on_membership_changed();
        }
    }

    fn maybe_commit(&mut self) {
        let id = self.id;
        let persisted = self.log.persisted;
        let progress = &self.progress;
        let quorum = self.membership.quorum_index(|n| {
            if n == id {
                persisted
            } else {
                progress.get(&n).map_or(0, |p| p.match_index)
            }
        });
        // Figure 8: only an entry of the current term commits by counting replicas.
        if quorum > self.log.committed && self.log.term_at(quorum) == Some(self.term()) {
            self.log.committed = quorum;
            self.on_leader_commit();
        }
    }

    fn leader_has_sends(&self) -> bool {
        self.progress.keys().any(|to| self.wants_send(*to))
    }

    /// Whether the follower `to` should get an AppendEntries now: it lacks entries or the
    /// commit index, or a probe is due, and its flow control allows one more message.
    fn wants_send(&self, to: NodeId) -> bool {
        let Some(p) = self.progress.get(&to) else { return false };
        p.log_read.is_none()
            && p.can_send(self.config.max_in_flight_appends)
            && (p.next_index <= self.log.last_index()
                || p.mode == ReplicationMode::Probe
                || p.commit_sent < self.log.committed.min(p.next_index - 1))
    }

    /// Sends every follower what it lacks, within its window.
    fn flush_appends(&mut self) {
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in ids {
            self.send_appends_to(to);
        }
    }

    fn send_appends_to(&mut self, to: NodeId) {
        while self.wants_send(to) {
            let Some(mode) = self.progress.get(&to).map(|p| p.mode) else { return };
            if mode == ReplicationMode::Snapshot {
                self.send_snapshot_chunk(to);
                return;
            }
            let sent = self.send_append(to, true);
            let switched = self.progress.get(&to).is_some_and(|p| p.mode == ReplicationMode::Snapshot);
            if switched {
                // It needs compacted entries: send the snapshot's first chunk instead.
                continue;
            }
            if !sent || mode == ReplicationMode::Probe {
                return;
            }
        }
    }

    /// Sends one AppendEntries at the follower's `next_index`, with entries if `with_entries`.
    /// Returns `false` if nothing could be sent (the follower needs a snapshot instead, or the
    /// entries are being read from storage).
    fn send_append(&mut self, to: NodeId, with_entries: bool) -> bool {
        let committed = self.log.committed;
        let Some(p) = self.progress.get(&to) else { return false };
        let prev_index = p.next_index - 1;
        let Some(prev_term) = self.log.term_at(prev_index) else {
            // The entries it needs were compacted: send the snapshot.
            self.start_snapshot_transfer(to);
            return false;
        };
        let from = p.next_index;
        if with_entries && from <= self.log.last_index() && from < self.log.cached_from() {
            // Before the cache: read from storage; sent when they come (`on_log_entries`).
            let last =
                self.log.read_end(from, self.config.max_entries_per_append, self.config.max_bytes_per_append);
            if let Some(p) = self.progress.get_mut(&to) {
                p.log_read = Some(from);
            }
            self.out.log_reads.push(LogRead { to, from, last });
            return false;
        }
        let entries = if with_entries {
            self.log.slice(from, self.config.max_entries_per_append, self.config.max_bytes_per_append)
        } else {
            Vec::new()
        };
        self.send_entries(to, prev_term, prev_index, entries, committed);
        true
    }

    /// Entries read from storage for `to` (see [`send_append`](Self::send_append)): sent if
    /// they are still what it needs, and sending goes on from after them. A read that failed
    /// (storage compacted them meanwhile, or an error) sends the snapshot when there is one,
    /// and otherwise tries again at the next heartbeat.
    fn on_log_entries(&mut self, to: NodeId, from: Index, entries: Option<Vec<Entry>>) {
        if to == self.id {
            self.on_apply_read(from, entries);
            return;
        }
        let window = self.config.max_in_flight_appends;
        let Some(p) = self.progress.get_mut(&to) else { return };
        if p.log_read != Some(from) {
            return;
        }
        p.log_read = None;
        if self.role != Role::Leader {
            return;
        }
        let still_wanted = p.next_index == from && p.mode != ReplicationMode::Snapshot && p.can_send(window);
        let Some(entries) = entries.filter(|e| !e.is_empty()) else {
            if let Some(p) = self.progress.get_mut(&to) {
                p.log_read_failures = p.log_read_failures.saturating_add(1);
                if p.log_read_failures.is_power_of_two() {
                    tracing::warn!(
                        node = self.id,
                        to,
                        from,
                        failures = p.log_read_failures,
                        "log entries for a follower could not be read from storage"
                    );
                }
            }
            // The snapshot helps only if it covers them (they were compacted meanwhile); sent
            // to a follower that holds what it covers, it would be answered at once and the
            // same read asked for again, once per round trip.
            let covered = self.snapshot.as_ref().is_some_and(|s| from <= s.meta.last_log_id.index);
            if covered {
                self.start_snapshot_transfer(to);
                self.send_appends_to(to);
            } else if let Some(p) = self.progress.get_mut(&to) {
                // Tried again when the next heartbeat clears the probe.
                p.become_probe();
                p.probe_sent = true;
            }
            return;
        };
        if !still_wanted {
            // It moved on (an answer reset it) or has no room: sending resumes from where it is.
            self.send_appends_to(to);
            return;
        }
        // What storage returned must be this log's entries `from..`: same indexes and terms.
        let genuine = entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == from + i as Index && self.log.term_at(e.index) == Some(e.term));
        let Some(prev_term) = self.log.term_at(from - 1).filter(|_| genuine) else {
            tracing::error!(node = self.id, to, from, "storage returned entries that are not the log's");
            if let Some(p) = self.progress.get_mut(&to) {
                p.become_probe();
                p.probe_sent = true;
            }
            return;
        };
        let mut entries = entries;
        let mut bytes = 0usize;
        let keep = entries
            .iter()
            .take(self.config.max_entries_per_append)
            .take_while(|e| {
                bytes += e.size_bytes();
                bytes <= self.config.max_bytes_per_append
            })
            .count()
            .max(1);
        entries.truncate(keep);
        let committed = self.log.committed;
        self.send_entries(to, prev_term, from - 1, entries, committed);
        self.send_appends_to(to);
    }

    /// Sends `entries` (after `prev_index` of `prev_term`) to `to` and records them as sent.
    fn send_entries(
        &mut self,
        to: NodeId,
        prev_term: Term,
        prev_index: Index,
        entries: Vec<Entry>,
        committed: Index,
    ) {
        let term = self.term();
        let last_sent = entries.last().map(|e| e.index);
        let leader_commit = committed.min(last_sent.unwrap_or(prev_index));
        if let Some(p) = self.progress.get_mut(&to) {
            p.on_sent(last_sent);
            p.commit_sent = p.commit_sent.max(leader_commit);
        }
        let read_seq = self.read_seq;
        self.send(
            to,
            term,
            Payload::AppendEntries {
                prev_log_id: LogId::new(prev_term, prev_index),
                entries,
                leader_commit,
                read_seq,
            },
        );
    }

    /// Starts a heartbeat round: every follower gets a message that carries the new
    /// `read_seq`, whatever its flow control (an answer confirms this leader to pending reads
    /// and extends the lease).
    fn broadcast_heartbeat(&mut self) {
        self.heartbeat_round(false);
    }

    /// A heartbeat round; `for_read` when it is started for pending reads (then a follower in
    /// probe mode gets an empty AppendEntries instead of a new probe with entries).
    fn heartbeat_round(&mut self, for_read: bool) {
        self.heartbeat_deadline = self.now + self.config.heartbeat_interval_ms;
        self.read_seq += 1;
        self.read_seq_sent_at.push_back((self.read_seq, self.now));
        while self.read_seq_sent_at.len() > reads::ROUNDS_REMEMBERED {
            self.read_seq_sent_at.pop_front();
        }
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in ids {
            let Some(p) = self.progress.get_mut(&to) else { continue };
            match p.mode {
                // A round for reads, or the probe's entries are being read from storage (a
                // slow read must not look like a silent leader: the follower would campaign,
                // and without pre-vote depose this leader): a heartbeat, not a new probe.
                ReplicationMode::Probe if for_read || p.log_read.is_some() => self.send_heartbeat_only(to),
                // Re-send the probe (the last one may have been lost); it carries the round.
                ReplicationMode::Probe => p.probe_sent = false,
                ReplicationMode::Replicate => {
                    // An empty AppendEntries at the tip: carries the commit index, and a
                    // rejection reveals lost in-flight messages.
                    let _sent = self.send_append(to, false);
                }
                ReplicationMode::Snapshot => {
                    if let Some(t) = p.snapshot.as_mut() {
                        // A chunk unanswered for an election timeout was lost: send it again.
                        if t.in_flight
                            && !t.reading
                            && self.now >= t.sent_at + self.config.election_timeout_min_ms
                        {
                            t.in_flight = false;
                        }
                    }
                    self.send_heartbeat_only(to);
                }
            }
        }
        // A single voter confirms its own rounds.
        self.advance_reads();
    }

    /// An empty AppendEntries that only carries the round (for a follower being sent a
    /// snapshot): its `prev_log_id` is the log's base, which the leader still knows.
    fn send_heartbeat_only(&mut self, to: NodeId) {
        let term = self.term();
        let base = self.log.base();
        let read_seq = self.read_seq;
        let leader_commit = self.log.committed.min(base.index);
        self.send(
            to,
            term,
            Payload::AppendEntries { prev_log_id: base, entries: Vec::new(), leader_commit, read_seq },
        );
    }
}

/// A 64-bit FNV-1a digest of a command, to tell a duplicate delivery from a reused id.
fn command_digest(command: &[u8]) -> u64 {
    command.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Refuses a restored state that no correct storage can hold: a log that covers the
/// snapshot's index with another term or ends before it, or entries and a snapshot of a term
/// above the saved one (the hard state was rolled back).
fn check_restored_log(
    hard_state: &HardState,
    snapshot_last: &LogId,
    ids: impl Iterator<Item = LogId> + Clone,
) -> Result<(), RestoreError> {
    let inconsistent = |what: String| Err(RestoreError::Inconsistent(what));
    if let (Some(first), Some(last)) = (ids.clone().next(), ids.clone().last()) {
        if snapshot_last.index > 0 && first.index <= snapshot_last.index {
            match ids.clone().nth((snapshot_last.index - first.index) as usize) {
                Some(e) if e == *snapshot_last => {}
                Some(e) if e.index == snapshot_last.index => {
                    return inconsistent(format!(
                        "the log holds {e} at the snapshot's index but the snapshot ends at {snapshot_last}"
                    ))
                }
                _ => {
                    return inconsistent(format!(
                        "the log {}..={} does not reach the snapshot's last entry {snapshot_last}",
                        first.index, last.index
                    ))
                }
            }
        }
        if last.term > hard_state.current_term {
            return inconsistent(format!(
                "the log ends at {} but the saved term is {}: the hard state was rolled back",
                last, hard_state.current_term
            ));
        }
    }
    if snapshot_last.term > hard_state.current_term {
        return inconsistent(format!(
            "the snapshot ends at {snapshot_last} but the saved term is {}: the hard state was rolled back",
            hard_state.current_term
        ));
    }
    Ok(())
}

/// Removes and returns the ids whose deadline has passed.
fn take_expired(deadlines: &mut BTreeMap<u64, Millis>, now: Millis) -> Vec<u64> {
    let expired: Vec<u64> = deadlines.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect();
    for id in &expired {
        deadlines.remove(id);
    }
    expired
}

/// Whether AppendEntries entries are well formed: contiguous from `prev`, terms never going
/// down, none after the sender's `term` (what a leader of `term` can send).
fn entries_follow(prev: LogId, entries: &[Entry], term: Term) -> bool {
    let mut last = prev;
    for e in entries {
        if Some(e.index) != last.index.checked_add(1) || e.term < last.term || e.term > term {
            return false;
        }
        last = e.log_id();
    }
    true
}

#[cfg(test)]
mod tests;
