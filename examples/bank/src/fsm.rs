//! [`LedgerFsm`], the [`Fsm`] that applies committed commands to a [`Ledger`], and
//! [`LedgerView`], the read side that shares the ledger with it.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    read_to_end, BufferSource, Entry, EntryPayload, Fsm, FsmError, SnapshotReader, SnapshotSource,
};

use crate::ledger::{encode_response, Ledger};

/// The largest ledger snapshot restored (the ledger is a few accounts; anything near this is
/// not one of ours).
const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// The state machine handed to `RaftNode::start`: applies committed
/// [`Command`](crate::Command)s to the shared [`Ledger`], answers each with an encoded
/// [`Response`](crate::Response), and snapshots or restores the whole ledger.
#[derive(Debug)]
pub struct LedgerFsm {
    ledger: Arc<RwLock<Ledger>>,
}

/// A read handle on the ledger a [`LedgerFsm`] applies to. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LedgerView {
    ledger: Arc<RwLock<Ledger>>,
}

impl LedgerFsm {
    /// A state machine over an empty ledger, and the view that reads it.
    pub fn new() -> (Self, LedgerView) {
        let ledger = Arc::new(RwLock::new(Ledger::default()));
        (Self { ledger: ledger.clone() }, LedgerView { ledger })
    }

    fn write(&self) -> RwLockWriteGuard<'_, Ledger> {
        // No code panics while holding the lock; a poisoned ledger is still consistent.
        self.ledger.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LedgerView {
    /// A copy of the whole ledger as applied so far on this node (not linearizable on its
    /// own: call `RaftNode::read_index` first, as [`BankNode::balances`](crate::BankNode::balances)
    /// does).
    pub fn ledger(&self) -> Ledger {
        self.read().clone()
    }

    /// Reads the ledger under its lock.
    pub fn read(&self) -> RwLockReadGuard<'_, Ledger> {
        self.ledger.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Fsm for LedgerFsm {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        let mut ledger = self.write();
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Command(bytes) => encode_response(&ledger.apply_bytes(bytes)),
                EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
            };
            ledger.set_applied_index(entry.index);
            responses.push(response);
        }
        Ok(responses)
    }

    /// The ledger is small (a few accounts): it is encoded at once.
    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError> {
        let ledger = self.ledger.read().unwrap_or_else(PoisonError::into_inner);
        let encoded = ledger.to_snapshot().map_err(|e| FsmError::Failed(e.to_string()))?;
        Ok(Box::new(BufferSource::new(encoded)))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError> {
        let snapshot = read_to_end(snapshot, MAX_SNAPSHOT_BYTES).await?;
        let restored = Ledger::from_snapshot(&snapshot).map_err(|e| FsmError::BadSnapshot(e.to_string()))?;
        *self.write() = restored;
        Ok(())
    }
}
