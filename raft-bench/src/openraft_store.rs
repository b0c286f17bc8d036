//! Storage for the openraft side of the benchmark, in the shape openraft benchmarks itself.
//!
//! openraft's own `benchmarks/minimal` (in its repository, not on crates.io) measures openraft
//! with a log kept as Rust values in a `BTreeMap`, a state machine that holds nothing but the
//! last applied log id and membership, and empty requests and responses. This module gives the
//! benchmark the same: no serialization anywhere, entries moved and cloned as values. (The
//! `openraft-memstore` crate, used before, encodes every entry to JSON on append and decodes it
//! on every read, which is a test store's cost, not openraft's.)
//!
//! Snapshots carry no data: the state is the snapshot's metadata (last log id, membership), so a
//! follower that installs one restores exactly what the state machine holds.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Debug;
use std::io;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use futures_util::Stream;
use futures_util::TryStreamExt;
use openraft::alias::EntryOf;
use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::StoredMembershipOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::OptionalSend;

/// A proposal: empty, as in openraft's own benchmark.
#[derive(Debug, Clone, Default)]
pub struct Request;

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Request")
    }
}

/// The answer to an applied proposal: empty.
#[derive(Debug, Clone, Default)]
pub struct Response;

/// The benchmark's openraft types: empty requests and responses, `u64` node ids and terms, no
/// node data, openraft's default (advanced) leader ids, votes and entries, one-shot responders
/// and the tokio runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct BenchTypes;

impl openraft::RaftTypeConfig for BenchTypes {
    type D = Request;
    type R = Response;
    type NodeId = u64;
    type Node = ();
    type Term = u64;
    type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;
    type Vote = openraft::impls::Vote<Self::LeaderId>;
    type Payload = EntryPayload<Request, u64, ()>;
    type Entry = openraft::Entry<<Self::LeaderId as openraft::vote::RaftLeaderId>::Committed, Self::Payload>;
    type AsyncRuntime = openraft_rt_tokio::TokioRuntime;
    type Responder<T>
        = openraft::impls::OneshotResponder<Self, T>
    where
        T: OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: OptionalSend + 'static;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

/// Snapshot data: always empty (see the module docs).
pub type SnapshotData = Cursor<Vec<u8>>;

/// Locks `m`, turning a poisoned lock (a panic elsewhere) into an I/O error for openraft.
fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, io::Error> {
    m.lock().map_err(|_| io::Error::other("benchmark store lock poisoned"))
}

/// The log and the vote of one node, shared between openraft's log task and its readers.
#[derive(Default)]
struct Log {
    vote: Option<VoteOf<BenchTypes>>,
    entries: BTreeMap<u64, EntryOf<BenchTypes>>,
    last_purged: Option<LogIdOf<BenchTypes>>,
}

/// An in-memory log store; clones share the same log.
#[derive(Clone, Default)]
pub struct LogStore {
    inner: Arc<Mutex<Log>>,
}

impl RaftLogReader<BenchTypes> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<BenchTypes>>, io::Error> {
        let log = lock(&self.inner)?;
        Ok(log.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<BenchTypes>>, io::Error> {
        Ok(lock(&self.inner)?.vote)
    }
}

impl RaftLogStorage<BenchTypes> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<BenchTypes>, io::Error> {
        let log = lock(&self.inner)?;
        let last = log.entries.values().next_back().map(|e| e.log_id()).or(log.last_purged);
        Ok(LogState { last_purged_log_id: log.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<BenchTypes>) -> Result<(), io::Error> {
        lock(&self.inner)?.vote = Some(*vote);
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<BenchTypes>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<BenchTypes>> + OptionalSend,
    {
        lock(&self.inner)?.entries.extend(entries.into_iter().map(|e| (e.index(), e)));
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<BenchTypes>>) -> Result<(), io::Error> {
        let from = last.map_or(0, |id| id.index() + 1);
        lock(&self.inner)?.entries.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, upto: LogIdOf<BenchTypes>) -> Result<(), io::Error> {
        let mut log = lock(&self.inner)?;
        log.last_purged = Some(upto);
        let kept = log.entries.split_off(&(upto.index() + 1));
        log.entries = kept;
        Ok(())
    }
}

/// What the state machine holds: where it is and the membership it applied last.
#[derive(Default, Clone)]
struct Applied {
    last: Option<LogIdOf<BenchTypes>>,
    membership: StoredMembershipOf<BenchTypes>,
}

/// The state machine and its latest snapshot's metadata.
#[derive(Default)]
struct Machine {
    applied: Applied,
    snapshot: Option<SnapshotMetaOf<BenchTypes>>,
}

/// An in-memory state machine that applies nothing but log ids and memberships; clones share it.
#[derive(Clone, Default)]
pub struct StateMachine {
    inner: Arc<Mutex<Machine>>,
}

impl RaftSnapshotBuilder<BenchTypes> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<BenchTypes, SnapshotData>, io::Error> {
        let mut machine = lock(&self.inner)?;
        let meta = SnapshotMetaOf::<BenchTypes> {
            last_log_id: machine.applied.last,
            last_membership: machine.applied.membership.clone(),
        };
        machine.snapshot = Some(meta.clone());
        Ok(SnapshotOf::<BenchTypes, SnapshotData> { meta, snapshot: Cursor::new(Vec::new()) })
    }
}

impl RaftStateMachine<BenchTypes> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<BenchTypes>>, StoredMembershipOf<BenchTypes>), io::Error> {
        let machine = lock(&self.inner)?;
        Ok((machine.applied.last, machine.applied.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<BenchTypes>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut machine = lock(&self.inner)?;
                machine.applied.last = Some(entry.log_id);
                if let EntryPayload::Membership(m) = &entry.payload {
                    machine.applied.membership =
                        StoredMembershipOf::<BenchTypes>::new(Some(entry.log_id), m.clone());
                }
            }
            if let Some(responder) = responder {
                responder.send(Response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<BenchTypes>,
        _snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let mut machine = lock(&self.inner)?;
        machine.applied = Applied { last: meta.last_log_id, membership: meta.last_membership.clone() };
        machine.snapshot = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<BenchTypes, SnapshotData>>, io::Error> {
        let machine = lock(&self.inner)?;
        Ok(machine
            .snapshot
            .clone()
            .map(|meta| SnapshotOf::<BenchTypes, SnapshotData> { meta, snapshot: Cursor::new(Vec::new()) }))
    }
}
