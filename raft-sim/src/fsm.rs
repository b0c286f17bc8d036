//! The simulated state machine: registers under string keys, written by commands that carry
//! their client and sequence number, so that a command applied twice is noticed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    read_to_end, BufferSource, Entry, EntryPayload, Fsm, FsmError, Index, NodeId, SnapshotReader,
    SnapshotSource,
};
use serde::{Deserialize, Serialize};

use crate::checks::{stable_hash, Checks};
use crate::disk::{lock, Disk};

/// A write command: `"<client> <seq> <key> <value>"`.
pub(crate) fn encode_write(client: u64, seq: u64, key: &str, value: &str) -> Bytes {
    Bytes::from(format!("{client} {seq} {key} {value}"))
}

/// The state of one incarnation's state machine; clients read it after a read index.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct KvState {
    /// The last index applied (or restored).
    pub(crate) index: Index,
    kv: BTreeMap<String, String>,
    /// Every (client, seq) applied: a second apply is a violation.
    applied: BTreeSet<(u64, u64)>,
}

impl KvState {
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.kv.get(key).cloned()
    }

    pub(crate) fn digest(&self) -> u64 {
        stable_hash(&(self.index, &self.kv, &self.applied))
    }

    pub(crate) fn keys(&self) -> usize {
        self.kv.len()
    }
}

/// The [`Fsm`] of one incarnation of a node.
pub(crate) struct SimFsm {
    pub(crate) node: NodeId,
    pub(crate) state: Arc<Mutex<KvState>>,
    pub(crate) checks: Arc<Mutex<Checks>>,
    pub(crate) disk: Arc<Mutex<Disk>>,
    /// Snapshots installed from a leader (restores after the node started).
    pub(crate) installs: Arc<Mutex<u64>>,
    /// Set once the node started: a restore after that is an install.
    pub(crate) started: Arc<Mutex<bool>>,
    /// Draws which batches and restores are slow (the state machine runs on a task of its
    /// own: the driver must go on, and keep its ordering rules, while it takes its time).
    pub(crate) slowness: u64,
}

/// One incarnation in this many has slow apply batches.
const SLOW_INCARNATION_ONE_IN: u64 = 3;
/// In such an incarnation, one apply batch in this many (on average) takes simulated time.
const SLOW_BATCH_ONE_IN: u64 = 16;
/// The longest a slow batch takes (ms), about an election timeout.
const SLOW_BATCH_MAX_MS: u64 = 300;
/// The longest a restore takes (ms), several election timeouts.
const SLOW_RESTORE_MAX_MS: u64 = 1_000;

impl SimFsm {
    /// The batches this incarnation asks the driver to apply on its own task
    /// ([`Fsm::inline_apply_bytes`]): none in an incarnation with slow batches (a third, whose
    /// coverage of a slow applier stays as it was), and of the others none in a third, small
    /// ones in a third, nearly all in the rest. A batch it asks for is never slow (the
    /// driver's event loop would wait for it).
    fn inline_bytes(&self) -> usize {
        if self.slowness.is_multiple_of(SLOW_INCARNATION_ONE_IN) {
            return 0;
        }
        match stable_hash(&(self.slowness, "inline")) % 3 {
            0 => 0,
            1 => 256,
            _ => 1 << 20,
        }
    }

    /// How long (simulated ms) the work identified by `what` takes: a deterministic draw.
    fn delay_ms(&self, what: (&str, Index), one_in: u64, max_ms: u64) -> u64 {
        let h = stable_hash(&(self.slowness, what));
        if h.is_multiple_of(one_in) {
            (h >> 16) % (max_ms + 1)
        } else {
            0
        }
    }
}

#[async_trait]
impl Fsm for SimFsm {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        let first = entries.first().map_or(0, |e| e.index);
        let slow = self.slowness.is_multiple_of(SLOW_INCARNATION_ONE_IN);
        let delay = self.delay_ms(("apply", first), SLOW_BATCH_ONE_IN, SLOW_BATCH_MAX_MS);
        if slow && delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let mut state = lock(&self.state);
        let mut checks = lock(&self.checks);
        let disk = lock(&self.disk);
        for e in entries {
            if e.index != state.index + 1 {
                checks.violation(format!("node {} applied {} after {}", self.node, e.index, state.index));
            }
            if !disk.holds(e.index, e.term) {
                checks.violation(format!(
                    "node {} applied {} which is not durable on it",
                    self.node,
                    e.log_id()
                ));
            }
            checks.on_apply(self.node, e);
            if let EntryPayload::Command(c) = &e.payload {
                let text = String::from_utf8_lossy(c);
                let mut parts = text.splitn(4, ' ');
                let parsed = (|| {
                    let client: u64 = parts.next()?.parse().ok()?;
                    let seq: u64 = parts.next()?.parse().ok()?;
                    Some((client, seq, parts.next()?.to_owned(), parts.next()?.to_owned()))
                })();
                match parsed {
                    Some((client, seq, key, value)) => {
                        if !state.applied.insert((client, seq)) {
                            checks.violation(format!(
                                "node {}: command of client {client} seq {seq} applied twice (again at {})",
                                self.node,
                                e.log_id()
                            ));
                        }
                        checks.on_command_applied((client, seq));
                        state.kv.insert(key, value);
                    }
                    None => checks.violation(format!("node {}: unknown command {text:?}", self.node)),
                }
            }
            state.index = e.index;
            let digest = state.digest();
            checks.on_state(self.node, e.index, digest, "applied");
        }
        Ok(vec![Bytes::new(); entries.len()])
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError> {
        let state = lock(&self.state).clone();
        let encoded = postcard::to_stdvec(&state).map_err(|e| FsmError::Failed(e.to_string()))?;
        Ok(Box::new(BufferSource::new(encoded)))
    }

    fn inline_apply_bytes(&self) -> usize {
        self.inline_bytes()
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError> {
        let snapshot = read_to_end(snapshot, 1 << 30).await?;
        let restoring = lock(&self.state).index;
        let delay = self.delay_ms(("restore", restoring), 1, SLOW_RESTORE_MAX_MS);
        if delay > 0 && *lock(&self.started) {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let restored: KvState =
            postcard::from_bytes(&snapshot).map_err(|e| FsmError::BadSnapshot(e.to_string()))?;
        let how = if *lock(&self.started) {
            *lock(&self.installs) += 1;
            "installed a snapshot at"
        } else {
            "restarted from a snapshot at"
        };
        lock(&self.checks).on_state(self.node, restored.index, restored.digest(), how);
        *lock(&self.state) = restored;
        Ok(())
    }
}
