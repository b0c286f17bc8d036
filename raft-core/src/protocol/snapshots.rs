//! Snapshots: compaction after the driver stored one, streaming the leader's snapshot to a
//! follower that needs compacted entries, and installing a received one.
//!
//! The leader sends a snapshot in chunks of at most `snapshot_chunk_bytes`, one chunk in
//! flight; the follower answers each with the offset it expects next, so a duplicate or stale
//! chunk is answered without effect and an interrupted transfer resumes where the follower
//! stands (or restarts from 0 when the leader, its term or the snapshot changed). The last
//! chunk installs the snapshot: it replaces the log unless the log holds the snapshot's last
//! entry, in which case the entries after it are kept.

use bytes::Bytes;

use super::{Raft, ReplicationMode};
use crate::message::Payload;
use crate::protocol::ready::{SnapshotPart, SnapshotRead};
use crate::storage::{Snapshot, SnapshotData, SnapshotMeta};
use crate::types::{Index, LogId, NodeId, Role, Term};

/// After this many maximal election timeouts without an answer, a follower being sent a
/// snapshot no longer holds back the leader's compaction (see [`Raft::compaction_floor`]).
pub const STALLED_TRANSFER_TIMEOUTS: u64 = 10;

/// A snapshot being received.
#[derive(Debug, Clone)]
pub(crate) struct IncomingSnapshot {
    /// The term of the leader sending it.
    term: Term,
    pub(super) meta: SnapshotMeta,
    /// Bytes received (and handed to the driver to stage) so far.
    len: u64,
}

impl IncomingSnapshot {
    /// A reception of which storage still holds `len` bytes after a restart.
    pub(super) fn resumed(term: Term, meta: SnapshotMeta, len: u64) -> Self {
        Self { term, meta, len }
    }

    /// Bytes received so far.
    pub(super) fn received_bytes(&self) -> u64 {
        self.len
    }
}

impl Raft {
    /// The last entry covered by the latest snapshot (index 0 when there is none).
    pub fn snapshot_last(&self) -> LogId {
        self.snapshot.as_ref().map_or(LogId::default(), |s| s.meta.last_log_id)
    }

    /// The latest snapshot this node holds.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The first index the in-memory log holds (entries before it are compacted).
    pub fn first_log_index(&self) -> Index {
        self.log.base().index + 1
    }

    /// The last index handed to the state machine.
    pub fn applied_index(&self) -> Index {
        self.log.applied
    }

    /// The driver durably stored `snapshot` (the state machine's state at its last index, which
    /// must be applied already) and compacted the stored log up to `compacted_to`. The
    /// protocol keeps the snapshot to send to followers and drops the same log prefix from
    /// memory. An older snapshot than the current one is ignored.
    pub fn on_snapshot_saved(&mut self, snapshot: Snapshot, compacted_to: Index) {
        debug_assert!(!self.awaiting_advance, "call between take_ready and advance");
        let last = snapshot.meta.last_log_id;
        if last.index <= self.snapshot_last().index {
            return;
        }
        let term_ok = self.log.term_at(last.index).is_none_or(|t| t == last.term);
        if last.index > self.log.applied || !term_ok {
            tracing::error!(node = self.id, snapshot = %last, applied = self.log.applied, "ignoring a snapshot that does not match the applied log");
            return;
        }
        self.snapshot = Some(snapshot);
        self.log.compact_to(compacted_to.min(last.index));
        // Keep the configuration in force at the snapshot and every later one.
        if let Some(in_force) = self.configs.range(..=last.index).next_back().map(|(k, _)| *k) {
            self.configs = self.configs.split_off(&in_force);
        }
    }

    /// The highest index the log may be compacted to without taking entries from a follower
    /// that is being sent a snapshot: it continues from the entry after that snapshot, so a
    /// leader that compacted past it would have to send a second, newer snapshot (and with
    /// snapshots taken faster than one is sent, never finish). `Index::MAX` when no transfer
    /// runs. A follower that has not answered for [`STALLED_TRANSFER_TIMEOUTS`] maximal
    /// election timeouts no longer holds the log back: it is down (and lost what it had
    /// received, if it restarted) and gets the current snapshot when it answers again.
    pub fn compaction_floor(&self) -> Index {
        if self.role != Role::Leader {
            return Index::MAX;
        }
        let patience = self.config.election_timeout_max_ms.saturating_mul(STALLED_TRANSFER_TIMEOUTS);
        let now = self.now;
        self.progress
            .values()
            .filter(|p| p.last_contact.is_some_and(|at| now.saturating_sub(at) <= patience))
            .filter_map(|p| p.snapshot.as_ref().map(|t| t.last.index))
            .min()
            .unwrap_or(Index::MAX)
    }

    /// The follower `to` needs entries before the log's base: switch it to snapshot mode.
    pub(super) fn start_snapshot_transfer(&mut self, to: NodeId) {
        let Some(snapshot) = self.snapshot.clone() else {
            tracing::error!(node = self.id, to, "follower needs compacted entries but there is no snapshot");
            return;
        };
        if let Some(p) = self.progress.get_mut(&to) {
            if p.mode != ReplicationMode::Snapshot {
                tracing::info!(node = self.id, to, snapshot = %snapshot.meta.last_log_id, "sending snapshot");
                p.become_snapshot(snapshot);
            }
        }
    }

    /// Sends the next chunk of the snapshot being sent to `to` (the one the transfer started
    /// with: a newer local snapshot does not restart it).
    pub(super) fn send_snapshot_chunk(&mut self, to: NodeId) {
        let chunk_max = self.config.snapshot_chunk_bytes;
        let now = self.now;
        let Some(p) = self.progress.get_mut(&to) else { return };
        let Some(t) = p.snapshot.as_mut() else { return };
        let data = &t.snapshot.data;
        let offset = t.offset.min(data.len());
        t.offset = offset;
        t.in_flight = true;
        t.sent_at = now;
        if data.is_stored() && offset < data.len() {
            // The bytes are in storage: the chunk goes out once the driver has read it.
            let read = SnapshotRead { to, snapshot: t.last, offset, max: chunk_max };
            t.reading = true;
            self.out.snapshot_reads.push(read);
            return;
        }
        let chunk = data.slice(offset, chunk_max);
        self.send_chunk(to, offset, chunk);
    }

    /// Sends `chunk`, the bytes at `offset` of the snapshot being sent to `to`.
    fn send_chunk(&mut self, to: NodeId, offset: u64, chunk: Bytes) {
        let Some(t) = self.progress.get(&to).and_then(|p| p.snapshot.as_ref()) else { return };
        let done = offset + chunk.len() as u64 == t.snapshot.data.len();
        let meta = t.snapshot.meta.clone();
        let term = self.term();
        self.send(to, term, Payload::InstallSnapshot { meta, offset, data: chunk, done });
    }

    /// The driver read a part of this node's snapshot for `to`: send it if the transfer still
    /// waits for exactly that part. A snapshot storage no longer holds restarts the transfer
    /// with the current one.
    pub(super) fn on_snapshot_chunk(
        &mut self,
        to: NodeId,
        snapshot: LogId,
        offset: u64,
        data: Option<Bytes>,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let now = self.now;
        let Some(p) = self.progress.get_mut(&to) else { return };
        let Some(t) = p.snapshot.as_mut() else { return };
        if p.mode != ReplicationMode::Snapshot
            || t.last != snapshot
            || t.offset != offset
            || !t.in_flight
            || !t.reading
        {
            return; // stale: the transfer moved on
        }
        t.reading = false;
        t.sent_at = now;
        let total = t.snapshot.data.len();
        match data {
            Some(chunk) if !chunk.is_empty() && offset + chunk.len() as u64 <= total => {
                self.send_chunk(to, offset, chunk);
            }
            _ => {
                tracing::warn!(node = self.id, to, snapshot = %snapshot, offset, "snapshot part unavailable; sending the current snapshot");
                let current = self.snapshot.clone().filter(|s| s.meta.last_log_id != snapshot);
                // When the current snapshot itself is unreadable, the part stays "in flight":
                // it is asked for again only once the follower answers a later heartbeat round
                // (no busy loop on a damaged file).
                if let Some(current) = current {
                    p.become_snapshot(current);
                    self.send_snapshot_chunk(to);
                }
            }
        }
    }

    pub(super) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    ) {
        let term = self.term();
        if !self.accept_leader(from) {
            return;
        }
        let last = meta.last_log_id;
        let reply = |next_offset: u64, done: bool| Payload::InstallSnapshotResponse {
            snapshot: last,
            next_offset,
            done,
        };
        if last.index <= self.log.committed {
            // Everything it covers is committed here already, unless it is another history.
            if self.log.term_at(last.index).is_some_and(|t| t != last.term) {
                self.refuse_foreign_leader(from, last.index);
                return;
            }
            self.abandon_incoming();
            self.send(from, term, reply(0, true));
            return;
        }
        if self.out.snapshot.is_some() {
            // A snapshot was installed by an earlier message of this ready: the driver stores
            // it after staging this ready's parts, so no part of another may be staged before
            // then. The leader sends this one again.
            self.send(from, term, reply(0, false));
            return;
        }
        if self.now < self.incoming_refused_until {
            // Storage could not stage the last part (a full disk): nothing is staged for a while.
            self.send(from, term, reply(0, false));
            return;
        }
        let same = self.incoming.as_ref().is_some_and(|i| i.term == term && i.meta == meta);
        if !same {
            if offset != 0 {
                self.send(from, term, reply(0, false));
                return;
            }
            // Another snapshot starts (staging restarts at byte 0): parts of the one it replaces
            // that this ready still holds are not staged.
            self.drop_unstaged_parts();
            self.incoming = Some(IncomingSnapshot { term, meta: meta.clone(), len: 0 });
        }
        let Some(incoming) = self.incoming.as_mut() else { return };
        let have = incoming.len;
        if offset != have {
            // A duplicate, a stale or an out-of-order chunk: say where we stand.
            self.send(from, term, reply(have, false));
            return;
        }
        if done && self.install_held {
            // The driver cannot install it yet: where we stand, without this part (the leader
            // takes the answer as a repeat and sends the part again an election timeout later).
            self.send(from, term, reply(have, false));
            return;
        }
        incoming.len = incoming.len.saturating_add(data.len() as u64);
        let have = incoming.len;
        // The driver stages the part (in storage) before anything of this ready is sent.
        self.out.snapshot_parts.push(SnapshotPart { term, meta: meta.clone(), offset, data });
        if !done {
            self.send(from, term, reply(have, false));
            return;
        }
        self.incoming = None;
        self.install_snapshot(Snapshot { meta, data: SnapshotData::stored(have) });
        self.send(from, term, reply(have, true));
    }

    /// Gives up the snapshot being received, if any: its parts not yet handed to the driver are
    /// dropped and the driver discards what it staged
    /// ([`Ready::discard_staged_snapshot`](crate::Ready::discard_staged_snapshot)).
    pub(super) fn abandon_incoming(&mut self) {
        if self.incoming.take().is_some() {
            self.drop_unstaged_parts();
            self.out.discard_staged_snapshot = true;
        }
    }

    /// Checks, in debug builds (tests and simulations), what the driver relies on when it
    /// stages this ready's parts after the discard it asks for: the parts are one unbroken run
    /// of one snapshot of one term, starting at byte 0 after a discard, and they are the parts
    /// of the reception under way (ending where it stands) or of the snapshot this ready
    /// installs.
    #[cfg(debug_assertions)]
    pub(super) fn check_snapshot_parts(&self) {
        let parts = &self.out.snapshot_parts;
        let (Some(first), Some(last)) = (parts.first(), parts.last()) else { return };
        for pair in parts.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                a.term == b.term && a.meta == b.meta && b.offset == a.offset + a.data.len() as u64,
                "node {}: snapshot parts that do not follow each other: {} at {} then {} at {}",
                self.id,
                a.meta.last_log_id,
                a.offset,
                b.meta.last_log_id,
                b.offset
            );
        }
        assert!(
            !self.out.discard_staged_snapshot || first.offset == 0,
            "node {}: a part at byte {} staged after a discard",
            self.id,
            first.offset
        );
        let end = last.offset + last.data.len() as u64;
        match (&self.incoming, &self.out.snapshot) {
            (Some(i), None) => assert!(
                i.meta == first.meta && i.len == end,
                "node {}: parts of {} up to byte {} beside the reception of {} at byte {}",
                self.id,
                first.meta.last_log_id,
                end,
                i.meta.last_log_id,
                i.len
            ),
            (None, Some(s)) => assert!(
                s.meta == first.meta && s.data.len() == end,
                "node {}: parts of {} beside the install of {}",
                self.id,
                first.meta.last_log_id,
                s.meta.last_log_id
            ),
            _ => panic!("node {}: snapshot parts with no reception and no install", self.id),
        }
    }

    /// Drops every part this ready holds: they belong to the reception given up or replaced,
    /// or to ones it had replaced earlier in the ready. (Dropping only the current reception's
    /// parts left those of one it had replaced, which the driver then staged after discarding
    /// what was staged: a part at a byte that no longer continued anything, a fatal storage
    /// error. Found by the node simulation, seed 4774.) Never called in a ready that installs
    /// a snapshot: no reception starts or goes on after an install in the same ready.
    fn drop_unstaged_parts(&mut self) {
        debug_assert!(self.out.snapshot.is_none(), "parts of an installed snapshot would be dropped");
        self.out.snapshot_parts.clear();
    }

    /// Installs a complete snapshot from the leader; the driver stores it and restores the
    /// state machine from it (see [`Ready::snapshot`](crate::Ready::snapshot)).
    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let last = snapshot.meta.last_log_id;
        tracing::info!(node = self.id, snapshot = %last, "installing snapshot");
        // Storage first stores the snapshot (dropping a log that does not hold `last`), then
        // carries out the pending truncation and appends, which must all lie after it.
        if let Some(t) = self.truncated_from {
            if t <= last.index {
                self.truncated_from = Some(last.index + 1);
            }
        }
        self.log.install_snapshot(last);
        let last_index = self.log.last_index();
        self.unsaved_from = self.unsaved_from.map(|u| u.max(last.index + 1)).filter(|u| *u <= last_index);
        self.configs.retain(|k, _| *k > last.index && *k <= last_index);
        self.configs.insert(last.index, snapshot.meta.membership.clone());
        self.on_membership_changed();
        self.snapshot = Some(snapshot.clone());
        self.out.snapshot = Some(snapshot);
    }

    pub(super) fn handle_install_snapshot_response(
        &mut self,
        from: NodeId,
        snapshot: LogId,
        next_offset: u64,
        done: bool,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let Some(p) = self.progress.get_mut(&from) else { return };
        p.recent_active = true;
        p.last_contact = Some(self.now);
        let current =
            p.mode == ReplicationMode::Snapshot && p.snapshot.as_ref().is_some_and(|t| t.last == snapshot);
        if !current {
            return;
        }
        let duplicate = p.snapshot.as_ref().is_some_and(|t| t.in_flight && next_offset == t.offset);
        if !done && duplicate {
            // The answer to a chunk sent twice (a resend after a timeout or a lost-looking
            // round), already acted on: the part it asks for is the one in flight. Acting on
            // it again would send every later chunk twice.
            return;
        }
        if done {
            tracing::info!(node = self.id, to = from, snapshot = %snapshot, "follower holds the snapshot");
            p.on_snapshot_installed(snapshot.index);
            self.maybe_commit();
            self.maybe_send_timeout_now();
        } else if let Some(t) = p.snapshot.as_mut() {
            t.offset = next_offset;
            t.in_flight = false;
        }
    }
}
