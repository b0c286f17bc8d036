//! Snapshots in the driver: taking one automatically once `snapshot_threshold_entries` entries
//! or `snapshot_threshold_bytes` bytes were applied since the last, compacting storage behind
//! it, and storing and restoring a snapshot received from the leader.

use super::event_loop::Driver;
use super::RaftError;
use crate::storage::{Snapshot, SnapshotMeta};
use crate::types::Index;

impl Driver {
    /// Snapshots the state machine and compacts the log when enough entries were applied
    /// since the latest snapshot. Called between readies only.
    pub(super) async fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        let (entries, bytes) = (self.config.snapshot_threshold_entries, self.config.snapshot_threshold_bytes);
        let since = self.applied.index.saturating_sub(self.raft.snapshot_last().index);
        let due =
            (entries > 0 && since >= entries) || (bytes > 0 && self.applied_bytes_since_snapshot >= bytes);
        if !due || since == 0 {
            return Ok(());
        }
        let last = self.applied;
        let data = self.fsm.snapshot().await?;
        let membership = self.raft.membership_at(last.index);
        let snapshot = Snapshot { meta: SnapshotMeta { last_log_id: last, membership }, data };
        self.storage.save_snapshot(snapshot.clone()).await?;
        // Keep the last entries so that a follower slightly behind catches up from the log.
        let up_to = last.index.saturating_sub(self.config.snapshot_keep_entries);
        let compacted_to = self.compact_storage(up_to).await?;
        tracing::info!(snapshot = %last, compacted_to, "snapshot taken");
        self.raft.on_snapshot_saved(snapshot, compacted_to);
        self.applied_bytes_since_snapshot = 0;
        Ok(())
    }

    /// Compacts stored entries up to `up_to` (covered by the stored snapshot) if storage still
    /// holds any of them. Returns the index compacted to, 0 when nothing was.
    async fn compact_storage(&self, up_to: Index) -> Result<Index, RaftError> {
        let initial = self.storage.initial_state().await?;
        let holds_some = initial.last_index >= initial.first_index && up_to >= initial.first_index;
        if up_to == 0 || !holds_some {
            return Ok(0);
        }
        self.storage.compact(up_to).await?;
        Ok(up_to)
    }

    /// Stores a snapshot received from the leader (persist step, after the hard state) and
    /// drops the stored entries it covers.
    pub(super) async fn store_received_snapshot(&self, snapshot: &Snapshot) -> Result<(), RaftError> {
        self.storage.save_snapshot(snapshot.clone()).await?;
        self.compact_storage(snapshot.meta.last_log_id.index).await?;
        Ok(())
    }

    /// Restores the state machine from a snapshot received from the leader (apply step):
    /// entries at or below its index will not be applied here, so their waiters learn that
    /// the outcome is unknown.
    pub(super) async fn restore_received_snapshot(&mut self, snapshot: Snapshot) -> Result<(), RaftError> {
        self.fsm.restore(&snapshot.data).await?;
        let last = snapshot.meta.last_log_id;
        self.applied = last;
        self.applied_bytes_since_snapshot = 0;
        self.waiters.on_snapshot_installed(last, &snapshot.meta.membership);
        Ok(())
    }
}
