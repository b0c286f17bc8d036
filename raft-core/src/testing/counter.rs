//! [`CounterFsm`]: the smallest useful state machine, for tests of drivers, storages and
//! transports. It counts applied commands and answers each with the count so far; its snapshot
//! is the count. Clones share the counters, so a test keeps one to read the state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::fsm::{read_to_end, BufferSource, Fsm, FsmError, SnapshotReader, SnapshotSource};
use crate::types::{Entry, EntryPayload};

/// Counts applied commands (see the module doc).
#[derive(Debug, Default, Clone)]
pub struct CounterFsm {
    /// The state: commands applied, including those covered by a restored snapshot.
    count: Arc<AtomicU64>,
    /// Commands this instance applied itself (not restored).
    commands_applied: Arc<AtomicU64>,
    /// The count of the last snapshot restored (0 when none was).
    restored: Arc<AtomicU64>,
}

impl CounterFsm {
    /// The state: commands applied so far, snapshots included.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Commands this state machine applied itself (not through a snapshot).
    pub fn commands_applied(&self) -> u64 {
        self.commands_applied.load(Ordering::SeqCst)
    }

    /// The count of the last snapshot restored (0 when none was).
    pub fn restored(&self) -> u64 {
        self.restored.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Fsm for CounterFsm {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        Ok(entries
            .iter()
            .map(|e| match e.payload {
                EntryPayload::Command(_) => {
                    self.commands_applied.fetch_add(1, Ordering::SeqCst);
                    let count = self.count.fetch_add(1, Ordering::SeqCst) + 1;
                    Bytes::from(count.to_string())
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
            })
            .collect())
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError> {
        Ok(Box::new(BufferSource::new(self.count().to_string())))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError> {
        let snapshot = read_to_end(snapshot, 64).await?;
        let text = std::str::from_utf8(&snapshot).map_err(|e| FsmError::BadSnapshot(e.to_string()))?;
        let count: u64 =
            text.parse().map_err(|e: std::num::ParseIntError| FsmError::BadSnapshot(e.to_string()))?;
        self.count.store(count, Ordering::SeqCst);
        self.restored.store(count, Ordering::SeqCst);
        Ok(())
    }
}
