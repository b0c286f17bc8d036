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

/// A point-in-time view of the state machine, written out in the background as a stream of
/// chunks while the node keeps applying entries (see [`Fsm::snapshot`]).
pub trait SnapshotSource: Send + 'static {
    /// The next part of the snapshot: at least one byte and about `max_bytes` (a single item
    /// larger than that may make a chunk larger), or `None` once everything was returned.
    /// Called from a background task between yields, so each call should do bounded work.
    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Bytes>, FsmError>;
}

/// A snapshot given as one buffer, handed out in chunks: for state machines whose state is
/// small enough to encode at once (it is encoded when the view is taken, on the applier task,
/// which applies nothing meanwhile).
#[derive(Debug, Clone)]
pub struct BufferSource {
    data: Bytes,
}

impl BufferSource {
    /// A source of `data`'s bytes.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self { data: data.into() }
    }
}

impl SnapshotSource for BufferSource {
    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Bytes>, FsmError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let n = self.data.len().min(max_bytes.max(1));
        Ok(Some(self.data.split_to(n)))
    }
}

/// Where [`Fsm::restore`] reads a snapshot from, chunk by chunk.
#[async_trait]
pub trait SnapshotReader: Send {
    /// The next chunk, `None` at the end of the snapshot.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FsmError>;
}

/// Reads the whole of `reader` into one buffer, failing with `BadSnapshot` past `limit`
/// bytes: for state machines with a small state (see [`BufferSource`]).
pub async fn read_to_end(reader: &mut dyn SnapshotReader, limit: usize) -> Result<Vec<u8>, FsmError> {
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk().await? {
        if out.len() + chunk.len() > limit {
            return Err(FsmError::BadSnapshot(format!("larger than {limit} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
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
/// - The driver calls every method one call at a time, in log order, from one task of its own
///   (the applier), whose work its event loop (heartbeats, messages) does not wait for. A slow
///   `apply` or `restore` delays the answers to proposals and reads, not the cluster. The one
///   exception is a state machine that asks for small batches on the driver's task
///   ([`inline_apply_bytes`](Fsm::inline_apply_bytes)): those run there, still in order.
/// - [`snapshot`](Fsm::snapshot) returns a view of the state *as it is now*: entries applied
///   after it returns must not show in what the view writes out. Nothing is applied while it
///   runs, so it should be cheap (O(1) with a persistent or copy-on-write structure); the view
///   is serialized in a background task while the node goes on applying.
/// - [`restore`](Fsm::restore) replaces the whole state with the snapshot's, atomically: on an
///   error the state is unchanged. A panic in any method stops the node, as an error does.
#[async_trait]
pub trait Fsm: Send + Sync {
    /// Applies committed entries and returns one response per entry.
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError>;

    /// A point-in-time view of the current state (covering every entry applied so far).
    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError>;

    /// Replaces the state with the snapshot read from `snapshot`.
    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError>;

    /// The largest batch, in [`Entry::size_bytes`], that the driver may apply on its own task
    /// instead of handing it to the applier, when the applier has nothing queued or under way
    /// (0, the default: never). Applying on the driver task saves two hand-offs between threads
    /// per batch (the applier runs on a thread of its own), which is most of a small write's
    /// latency with an in-memory state machine; but the event loop (heartbeats, messages) waits
    /// meanwhile. Return more than 0 only when [`apply`](Fsm::apply) of such a batch takes
    /// microseconds and never waits for IO or a timer. Read once, when the node starts.
    fn inline_apply_bytes(&self) -> usize {
        0
    }
}
