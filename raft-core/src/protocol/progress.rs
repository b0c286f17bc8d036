//! The leader's view of one follower: `next_index`, `match_index`, and the flow control of the
//! AppendEntries sent to it (probe, or a pipelined window).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::storage::Snapshot;
use crate::types::{Index, LogId, Millis};

/// How the leader sends to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationMode {
    /// One AppendEntries at a time until the follower's position is known (after election or a
    /// rejection).
    Probe,
    /// Pipelined: up to the in-flight window of AppendEntries without waiting for answers.
    Replicate,
    /// The follower needs entries the leader compacted: the leader streams its snapshot, one
    /// chunk in flight at a time.
    Snapshot,
}

/// A snapshot transfer in progress to one follower. It keeps the snapshot it started with (the
/// data is shared, not copied), so that a newer local snapshot does not restart it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotTransfer {
    /// The snapshot being sent.
    pub(crate) snapshot: Snapshot,
    /// The last entry the snapshot covers.
    pub(crate) last: LogId,
    /// The offset of the next chunk to send.
    pub(crate) offset: u64,
    /// A chunk is outstanding; cleared by its answer, or by a heartbeat an election timeout
    /// after it was sent (a resend).
    pub(crate) in_flight: bool,
    /// When the outstanding chunk was sent.
    pub(crate) sent_at: Millis,
    /// The outstanding chunk is being read from storage (not sent yet): a heartbeat round
    /// answered meanwhile says nothing about it, and no second read is asked for.
    pub(crate) reading: bool,
}

/// Replication state of one follower.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) next_index: Index,
    pub(crate) match_index: Index,
    pub(crate) mode: ReplicationMode,
    /// In probe mode: a probe is outstanding; cleared by its answer or the next heartbeat.
    pub(crate) probe_sent: bool,
    /// Last index of each AppendEntries in flight (replicate mode).
    pub(crate) in_flight: VecDeque<Index>,
    /// Whether the follower answered since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// When the follower last answered (protocol time).
    pub(crate) last_contact: Option<Millis>,
    /// The commit index last sent to the follower.
    pub(crate) commit_sent: Index,
    /// The snapshot being sent (snapshot mode).
    pub(crate) snapshot: Option<SnapshotTransfer>,
    /// The highest heartbeat round (`read_seq`) the follower answered in this term.
    pub(crate) acked_read_seq: u64,
    /// Entries from this index are being read from storage for the follower (they are before
    /// the log's cache): nothing more is sent to it but heartbeats until they come.
    pub(crate) log_read: Option<Index>,
    /// Reads of entries for the follower that failed (for logging them sparingly).
    pub(crate) log_read_failures: u32,
}

impl Progress {
    pub(crate) fn new(next_index: Index) -> Self {
        Self {
            next_index,
            match_index: 0,
            mode: ReplicationMode::Probe,
            probe_sent: false,
            in_flight: VecDeque::new(),
            recent_active: false,
            last_contact: None,
            commit_sent: 0,
            snapshot: None,
            acked_read_seq: 0,
            log_read: None,
            log_read_failures: 0,
        }
    }

    /// Whether another AppendEntries may be sent now.
    pub(crate) fn can_send(&self, window: usize) -> bool {
        match self.mode {
            ReplicationMode::Probe => !self.probe_sent,
            ReplicationMode::Replicate => self.in_flight.len() < window,
            ReplicationMode::Snapshot => self.snapshot.as_ref().is_some_and(|s| !s.in_flight),
        }
    }

    /// Records an AppendEntries whose last entry is `last_sent` (`None` when empty).
    pub(crate) fn on_sent(&mut self, last_sent: Option<Index>) {
        match self.mode {
            ReplicationMode::Probe => self.probe_sent = true,
            ReplicationMode::Snapshot => {}
            ReplicationMode::Replicate => {
                if let Some(last) = last_sent {
                    self.next_index = last + 1;
                    self.in_flight.push_back(last);
                }
            }
        }
    }

    /// A success up to `match_index`. Returns whether the match index advanced.
    pub(crate) fn on_success(&mut self, match_index: Index) -> bool {
        let advanced = match_index > self.match_index;
        if advanced {
            self.match_index = match_index;
        }
        if self.next_index <= match_index {
            self.next_index = match_index + 1;
        }
        while self.in_flight.front().is_some_and(|last| *last <= match_index) {
            self.in_flight.pop_front();
        }
        match self.mode {
            // While the probe's entries are read, a heartbeat's success (a match at the
            // leader's base) is below the probe: replicating from there would drop the read
            // under way and send again what the follower holds. The probe goes on.
            ReplicationMode::Probe if self.log_read.is_some() && match_index + 1 < self.next_index => {}
            ReplicationMode::Probe => self.become_replicate(),
            ReplicationMode::Snapshot => {
                // A late answer to an AppendEntries sent before the transfer started: keep
                // sending the snapshot unless the follower already has everything it covers.
                if self.snapshot.as_ref().is_none_or(|s| match_index >= s.last.index) {
                    self.become_replicate();
                }
            }
            ReplicationMode::Replicate => {}
        }
        advanced
    }

    /// Starts sending `snapshot`.
    pub(crate) fn become_snapshot(&mut self, snapshot: Snapshot) {
        self.mode = ReplicationMode::Snapshot;
        self.probe_sent = false;
        self.in_flight.clear();
        let last = snapshot.meta.last_log_id;
        self.snapshot = Some(SnapshotTransfer {
            snapshot,
            last,
            offset: 0,
            in_flight: false,
            sent_at: 0,
            reading: false,
        });
    }

    /// In snapshot mode, the follower matches up to an index the leader's log still holds
    /// (`base` is the log's compaction point): replicate from the log instead.
    pub(crate) fn leave_snapshot_if_log_covers(&mut self, base: Index) {
        if self.mode == ReplicationMode::Snapshot && self.match_index >= base {
            self.become_replicate();
        }
    }

    /// The follower holds the snapshot ending at `index`: continue with the entries after it.
    pub(crate) fn on_snapshot_installed(&mut self, index: Index) {
        self.match_index = self.match_index.max(index);
        self.become_replicate();
    }

    /// A rejection of the AppendEntries whose `prev_log_index` was `rejected`; `next` is the
    /// leader's new guess. Returns `false` when the rejection is stale and was ignored. A
    /// refusal at or below the match index lowers the match index.
    pub(crate) fn on_reject(&mut self, rejected: Index, next: Index) -> bool {
        match self.mode {
            // A refusal at or below the match index is not stale: the follower acknowledged
            // that entry once, so it refuses it now only because its storage lost it (a
            // heartbeat of an idle leader carries the match index as its `prev`).
            ReplicationMode::Replicate => {}
            ReplicationMode::Probe => {
                if rejected.saturating_add(1) != self.next_index {
                    return false;
                }
            }
            ReplicationMode::Snapshot => return false,
        }
        if rejected <= self.match_index {
            // An entry the follower had acknowledged was refused: its storage lost data (it
            // recovers by receiving the entries again; see `RestoredState::recorded_last`).
            // Believing it is safe even if the answer is an old duplicate: a lower match index
            // only delays commits and resends entries.
            self.match_index = next.min(rejected).saturating_sub(1);
        }
        let upper = rejected.max(self.match_index + 1);
        self.next_index = next.min(upper).max(self.match_index + 1).max(1);
        self.become_probe();
        true
    }

    pub(crate) fn become_probe(&mut self) {
        self.mode = ReplicationMode::Probe;
        self.probe_sent = false;
        self.in_flight.clear();
        self.snapshot = None;
    }

    fn become_replicate(&mut self) {
        self.mode = ReplicationMode::Replicate;
        self.probe_sent = false;
        self.in_flight.clear();
        self.snapshot = None;
        self.next_index = self.match_index + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut p = Progress::new(11);
        assert!(p.can_send(4));
        p.on_sent(Some(10));
        assert!(!p.can_send(4));
        assert_eq!(p.next_index, 11, "probe does not advance next optimistically");
    }

    #[test]
    fn success_switches_to_pipelining() {
        let mut p = Progress::new(11);
        p.on_sent(Some(10));
        assert!(p.on_success(10));
        assert_eq!(p.mode, ReplicationMode::Replicate);
        p.on_sent(Some(15));
        p.on_sent(Some(20));
        assert_eq!(p.next_index, 21);
        assert_eq!(p.in_flight.len(), 2);
        assert!(!p.can_send(2));
        p.on_success(15);
        assert!(p.can_send(2));
        assert_eq!(p.match_index, 15);
    }

    #[test]
    fn match_index_never_decreases() {
        let mut p = Progress::new(1);
        p.on_success(10);
        assert!(!p.on_success(5));
        assert_eq!(p.match_index, 10);
    }

    #[test]
    fn a_rejection_at_or_below_the_match_index_lowers_it_even_while_replicating() {
        let mut p = Progress::new(1);
        p.on_success(10);
        p.on_sent(Some(20));
        // A heartbeat's prev 10 refused: the follower lost entries it had acknowledged (its
        // log ends at 7). An old duplicate would be believed too: it costs only a resend.
        assert!(p.on_reject(10, 8));
        assert_eq!((p.mode, p.match_index, p.next_index), (ReplicationMode::Probe, 7, 8));
        p.on_success(10);
        assert_eq!((p.mode, p.match_index, p.next_index), (ReplicationMode::Replicate, 10, 11));
        // A rejection above the match index goes back to probing, never below match + 1.
        p.on_sent(Some(20));
        assert!(p.on_reject(20, 2));
        assert_eq!(p.mode, ReplicationMode::Probe);
        assert_eq!(p.next_index, 11);
    }

    #[test]
    fn snapshot_mode_sends_one_chunk_and_ends_when_installed() {
        let mut p = Progress::new(5);
        let meta =
            crate::storage::SnapshotMeta { last_log_id: LogId::new(2, 40), membership: Default::default() };
        p.become_snapshot(Snapshot {
            meta,
            data: crate::storage::SnapshotData::from_bytes(bytes::Bytes::from_static(b"s")),
        });
        assert!(p.can_send(4));
        if let Some(s) = p.snapshot.as_mut() {
            s.in_flight = true;
        }
        assert!(!p.can_send(4), "one chunk at a time");
        assert!(!p.on_reject(4, 1), "rejections of older appends are ignored");
        p.on_success(10);
        assert_eq!(p.mode, ReplicationMode::Snapshot, "a late ack below the snapshot keeps the transfer");
        p.on_snapshot_installed(40);
        assert_eq!((p.mode, p.match_index, p.next_index), (ReplicationMode::Replicate, 40, 41));
    }

    #[test]
    fn probe_ignores_rejections_of_other_probes() {
        let mut p = Progress::new(50);
        p.on_sent(None);
        assert!(!p.on_reject(30, 10));
        assert!(p.on_reject(49, 10));
        assert_eq!(p.next_index, 10);
    }

    #[test]
    fn a_probe_refused_at_the_match_index_lowers_it() {
        // The follower acknowledged up to 8, then its storage lost 8: it refuses prev 8 and
        // says its log ends at 7. Without lowering the match index the leader would probe
        // prev 8 for ever.
        let mut p = Progress::new(5);
        p.on_success(8);
        p.become_probe();
        assert_eq!(p.next_index, 9);
        p.on_sent(None);
        assert!(p.on_reject(8, 8));
        assert_eq!((p.match_index, p.next_index), (7, 8));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Sent(Option<Index>),
        Success(Index),
        Reject(Index, Index),
        Probe,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::option::of(0u64..200).prop_map(Op::Sent),
            (0u64..200).prop_map(Op::Success),
            (0u64..200, 0u64..200).prop_map(|(r, n)| Op::Reject(r, n)),
            Just(Op::Probe),
        ]
    }

    proptest! {
        /// Whatever answers arrive, in whatever order: `match_index` never decreases (but for
        /// a probe refused at or below it: the follower lost data), `next_index` stays above
        /// it, and the window never exceeds its bound.
        #[test]
        fn flow_control_invariants_hold(start in 1u64..100, ops in proptest::collection::vec(op(), 0..200)) {
            let window = 4;
            let mut p = Progress::new(start);
            for op in ops {
                let before = p.match_index;
                let lost_data = matches!(op, Op::Reject(r, _) if r <= before);
                match op {
                    Op::Sent(last) => {
                        if p.can_send(window) {
                            // The leader only sends entries at or after next_index.
                            let last = last.map(|l| l.max(p.next_index));
                            p.on_sent(last);
                        }
                    }
                    Op::Success(m) => { p.on_success(m); }
                    Op::Reject(r, n) => { p.on_reject(r, n); }
                    Op::Probe => p.become_probe(),
                }
                prop_assert!(p.match_index >= before || lost_data, "match_index went back");
                prop_assert!(p.next_index > p.match_index, "next {} <= match {}", p.next_index, p.match_index);
                prop_assert!(p.in_flight.len() <= window);
            }
        }
    }
}
