//! The `Fsm` trait: the replicated state machine that committed entries are applied to.

use async_trait::async_trait;
use bytes::Bytes;

use crate::types::Entry;

/// An error of the state machine. Applying is deterministic, so an error here is fatal for the
/// node (it stops rather than diverge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsmError {
    /// A snapshot could not be decoded.
    #[error("snapshot is invalid: {0}")]
    BadSnapshot(String),
    /// Any other failure.
    #[error("state machine failed: {0}")]
    Failed(String),
}

/// A deterministic state machine fed with committed entries.
///
/// # Correctness
/// - [`apply`](Fsm::apply) receives every committed entry exactly once, in index order,
///   including [`Blank`](crate::EntryPayload::Blank) entries (which it answers with an empty
///   response). It returns exactly one response per entry, in order.
/// - Applying must be deterministic: the same entries give the same state and responses on
///   every node. A command that is invalid for the application gets an error *response*
///   (encoded in the bytes), never an `Err`.
/// - [`restore`](Fsm::restore) replaces the whole state with the snapshot's, atomically.
#[async_trait]
pub trait Fsm: Send + Sync {
    /// Applies committed entries and returns one response per entry.
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError>;

    /// Serializes the current state (covering every entry applied so far).
    async fn snapshot(&mut self) -> Result<Bytes, FsmError>;

    /// Replaces the state with the one in `snapshot`.
    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), FsmError>;
}
