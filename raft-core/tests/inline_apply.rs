//! Batches applied on the driver's task (`Fsm::inline_apply_bytes`): they happen only when the
//! state machine asks for them, only for batches within its bound, never ahead of a batch the
//! applier still holds, and answer their proposals as the applier's do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    read_to_end, BufferSource, Config, Entry, EntryPayload, Fsm, FsmError, Membership, RaftNode, Role,
    SnapshotReader, SnapshotSource,
};
use raft_storage_mem::MemStorage;

const WAIT_MAX: Duration = Duration::from_secs(10);
/// The bound the state machine asks for: a 16-byte command's entry is within it, a 4 KiB one
/// is not.
const INLINE_BYTES: usize = 1_024;

/// One call of `apply`: the entries' first and last index, the task it ran on, and whether
/// it was held.
#[derive(Debug, Clone)]
struct Call {
    first: u64,
    last: u64,
    task: Option<tokio::task::Id>,
    bytes: usize,
}

/// Answers each command with its index; records every call; holds batches over the bound
/// while `hold_large` is set.
#[derive(Clone, Default)]
struct RecordingFsm {
    inline_bytes: usize,
    calls: Arc<Mutex<Vec<Call>>>,
    hold_large: Arc<AtomicBool>,
    applied: Arc<Mutex<u64>>,
}

impl RecordingFsm {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
}

#[async_trait]
impl Fsm for RecordingFsm {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(Vec::new());
        };
        self.calls.lock().expect("calls").push(Call {
            first: first.index,
            last: last.index,
            task: tokio::task::try_id(),
            bytes,
        });
        while bytes > INLINE_BYTES && self.hold_large.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut applied = self.applied.lock().expect("applied");
        for e in entries {
            assert_eq!(e.index, *applied + 1, "applied out of order");
            *applied = e.index;
        }
        Ok(entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Command(_) => Bytes::from(e.index.to_string()),
                _ => Bytes::new(),
            })
            .collect())
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError> {
        Ok(Box::new(BufferSource::new(self.applied.lock().expect("applied").to_string())))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError> {
        let bytes = read_to_end(snapshot, 64).await?;
        let text = String::from_utf8(bytes).map_err(|e| FsmError::BadSnapshot(e.to_string()))?;
        *self.applied.lock().expect("applied") = text.parse().map_err(|_| FsmError::BadSnapshot(text))?;
        Ok(())
    }

    fn inline_apply_bytes(&self) -> usize {
        self.inline_bytes
    }
}

/// A one-voter node on `fsm`, leading, with its term's blank entry applied (a one-voter
/// leader shows as leader before that entry is written: counted later, it would look like a
/// test's batch).
async fn leader(fsm: &RecordingFsm) -> Arc<RaftNode> {
    let network = raft_core::testing::local_transport::LocalNetwork::default();
    let node = RaftNode::start(
        1,
        Config::default(),
        Membership::with_voters([1]),
        Arc::new(MemStorage::default()),
        Arc::new(network.transport(1, 1_024)),
        Box::new(fsm.clone()),
        raft_core::fresh_seed(),
    )
    .await
    .expect("node starts");
    let node = Arc::new(node);
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    let settled = |p: &raft_core::ProtocolStatus| {
        p.role == Role::Leader && p.last_log_id.index > 0 && p.applied_index == p.last_log_id.index
    };
    while !settled(&node.status().protocol) {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node
}

fn small(i: u64) -> Bytes {
    Bytes::from(format!("small-{i:010}"))
}

fn large() -> Bytes {
    Bytes::from(vec![b'x'; 4_096])
}

/// Proposes small, large, small, one at a time; returns the calls of the commands' batches.
async fn small_large_small(fsm: &RecordingFsm) -> Vec<Call> {
    let node = leader(fsm).await;
    let before = fsm.calls().len();
    for command in [small(1), small(2), large(), small(3), small(4)] {
        let applied = node.propose(command).await.expect("applied");
        assert_eq!(applied.response, Bytes::from(applied.log_id.index.to_string()), "the entry's own answer");
    }
    node.shutdown().await.expect("shuts down");
    fsm.calls()[before..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_state_machine_asking_every_batch_goes_to_the_applier() {
    let fsm = RecordingFsm::default();
    let calls = small_large_small(&fsm).await;
    assert_eq!(calls.len(), 5, "one batch per proposal: {calls:?}");
    let tasks: std::collections::BTreeSet<_> = calls.iter().map(|c| c.task).collect();
    assert_eq!(tasks.len(), 1, "every batch on the applier's task: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_are_applied_on_the_driver_task_and_large_ones_on_the_applier() {
    let fsm = RecordingFsm { inline_bytes: INLINE_BYTES, ..RecordingFsm::default() };
    let calls = small_large_small(&fsm).await;
    assert_eq!(calls.len(), 5, "one batch per proposal: {calls:?}");
    let large = calls.iter().find(|c| c.bytes > INLINE_BYTES).expect("the large batch");
    let smalls: Vec<&Call> = calls.iter().filter(|c| c.bytes <= INLINE_BYTES).collect();
    assert_eq!(smalls.len(), 4, "{calls:?}");
    assert!(smalls.iter().all(|c| c.task == smalls[0].task), "the small ones on one task: {calls:?}");
    assert_ne!(smalls[0].task, large.task, "the large one on another (the applier's): {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_batch_never_overtakes_a_large_one_the_applier_holds() {
    let fsm = RecordingFsm { inline_bytes: INLINE_BYTES, ..RecordingFsm::default() };
    let node = leader(&fsm).await;
    fsm.hold_large.store(true, Ordering::SeqCst);
    let before = fsm.calls().len();
    let large_proposal = tokio::spawn({
        let node = node.clone();
        async move { node.propose(large()).await }
    });
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while fsm.calls().len() == before {
        assert!(tokio::time::Instant::now() < deadline, "the large batch never reached the state machine");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let smalls: Vec<_> = (0..8)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { node.propose(small(i)).await })
        })
        .collect();
    // The small ones commit at once (one voter) while the large one is held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = fsm.calls();
    assert_eq!(held.len(), before + 1, "nothing applied past the held batch: {:?}", &held[before..]);
    assert!(smalls.iter().all(|p| !p.is_finished()), "no small proposal answered ahead of the large one");
    fsm.hold_large.store(false, Ordering::SeqCst);
    let large_index = large_proposal.await.expect("task").expect("applied").log_id.index;
    for proposal in smalls {
        let applied = proposal.await.expect("task").expect("applied");
        assert!(applied.log_id.index > large_index);
        assert_eq!(applied.response, Bytes::from(applied.log_id.index.to_string()));
    }
    let calls = fsm.calls();
    for pair in calls.windows(2) {
        assert_eq!(pair[1].first, pair[0].last + 1, "batches contiguous and in order: {calls:?}");
    }
    node.shutdown().await.expect("shuts down");
}
