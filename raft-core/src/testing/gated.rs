//! [`GatedFsm`]: a [`CounterFsm`] whose applies and restores a test can hold back, to check
//! what a node does while its state machine is slow or stuck.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::counter::CounterFsm;
use crate::fsm::{Fsm, FsmError, SnapshotReader, SnapshotSource};
use crate::types::Entry;

/// Holds a state machine back: while a flag is set, its applies (or restores) wait. Clones
/// share the flags.
#[derive(Debug, Default, Clone)]
pub struct Gate {
    /// Applies wait while set.
    pub apply_held: Arc<AtomicBool>,
    /// Restores wait while set.
    pub restore_held: Arc<AtomicBool>,
    /// Apply calls that started (batches handed to the state machine).
    pub apply_calls: Arc<AtomicU64>,
}

impl Gate {
    async fn pass(held: &AtomicBool) {
        while held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A [`CounterFsm`] behind a [`Gate`].
#[derive(Debug)]
pub struct GatedFsm {
    /// The state machine (a clone reads its state).
    pub inner: CounterFsm,
    /// What holds it back.
    pub gate: Gate,
}

#[async_trait]
impl Fsm for GatedFsm {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        self.gate.apply_calls.fetch_add(1, Ordering::SeqCst);
        Gate::pass(&self.gate.apply_held).await;
        self.inner.apply(entries).await
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError> {
        self.inner.snapshot().await
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError> {
        Gate::pass(&self.gate.restore_held).await;
        self.inner.restore(snapshot).await
    }
}
