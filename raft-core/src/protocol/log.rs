//! The protocol's view of the log: every entry after the compaction point, with the durable,
//! committed and handed-to-apply positions. The index, term and size of every entry are held;
//! payloads only from `cached_from` on (a bounded cache of the log's tail): the older entries
//! are read from storage when a follower needs them (`Ready::log_reads`).
//!
//! Architecture invariant: `applied <= committed`, and every index in `(base.index,
//! last_index]` is present exactly once. `base` is the last compacted entry (at or before the
//! latest snapshot's last entry); its term is still known for the consistency check. Entries
//! before `cached_from` are durable (only those lose their payload): each costs a 16-byte
//! slot (its term and running size), less than the 24-byte header the cache accounts.

use std::collections::VecDeque;

use crate::types::{Entry, Index, LogId, Term};

/// What the log holds of every entry, payload or not: 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Slot {
    term: Term,
    /// The bytes ([`Entry::size_bytes`]) of every entry up to and including this one, counted
    /// from an arbitrary origin: the bytes between two indexes are one subtraction.
    end: u64,
}

/// The in-memory log of one node.
#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    /// The entry just before the first one held (index 0, term 0 when nothing was compacted).
    base: LogId,
    /// The byte count at `base` (see [`Slot::end`]).
    base_end: u64,
    /// Entries `base.index + 1 ..= last_index`, by term and size.
    slots: VecDeque<Slot>,
    /// The last `cached.len()` entries, whole (the cache of the log's tail).
    cached: VecDeque<Entry>,
    /// The last index that storage has made durable.
    pub(crate) persisted: Index,
    /// The highest index known to be committed.
    pub(crate) committed: Index,
    /// The last index handed to the driver for applying.
    pub(crate) applied: Index,
    /// Payload bytes of the cached entries past which durable ones are dropped.
    cache_bytes: u64,
}

impl RaftLog {
    /// A log restored from storage: the entry before the first one held, the (durable) entries
    /// after it known by term and size only (`stubs`, payloads left in storage), the entries
    /// after those held whole, and the last index the state machine already holds (the
    /// snapshot's). Indexes must follow `base` without a hole.
    pub(crate) fn restore(
        base: LogId,
        stubs: impl IntoIterator<Item = (LogId, u64)>,
        entries: Vec<Entry>,
        snapshot_index: Index,
    ) -> Self {
        let mut log = Self {
            base,
            base_end: 0,
            slots: VecDeque::new(),
            cached: VecDeque::new(),
            persisted: 0,
            committed: 0,
            applied: 0,
            cache_bytes: u64::MAX,
        };
        for (id, size) in stubs {
            assert_eq!(id.index, log.last_index() + 1, "restored log has a hole or is out of order");
            log.push_slot(id.term, size);
        }
        for e in entries {
            assert_eq!(e.index, log.last_index() + 1, "restored log has a hole or is out of order");
            log.push_slot(e.term, e.size_bytes() as u64);
            log.cached.push_back(e);
        }
        let start = snapshot_index.max(base.index);
        log.persisted = log.last_index().max(start);
        log.committed = start;
        log.applied = start;
        log
    }

    /// Keeps the payloads of at most about `bytes` of the log's tail (see [`evict`](Self::evict)).
    pub(crate) fn set_cache_bytes(&mut self, bytes: u64) {
        self.cache_bytes = bytes;
    }

    /// The bytes ([`Entry::size_bytes`]) of the entries held whole.
    pub(crate) fn cached_bytes(&self) -> u64 {
        self.bytes_after(self.cached_from() - 1)
    }

    /// The first index whose entry is held whole (entries before it must be read from storage).
    pub(crate) fn cached_from(&self) -> Index {
        self.last_index() + 1 - self.cached.len() as u64
    }

    /// Drops the payloads of the oldest cached entries while the cache holds more than its
    /// bound, never of an entry not yet durable (storage could not give it back). Entries not
    /// yet committed, or committed and not yet handed out (applying is held), are read from
    /// storage when they are needed.
    pub(crate) fn evict(&mut self) {
        let evictable_to = self.persisted.min(self.last_index());
        while self.cached_from() <= evictable_to && self.cached_bytes() > self.cache_bytes {
            self.cached.pop_front();
        }
    }

    /// The last index of a read from storage starting at `from` (before the cache) that keeps
    /// within `max_entries` and `max_bytes` (at least one entry) and stops before the cache.
    pub(crate) fn read_end(&self, from: Index, max_entries: usize, max_bytes: usize) -> Index {
        let cached = self.cached_from();
        debug_assert!(from > self.base.index && from < cached);
        self.span_end(from, cached - 1, max_entries, max_bytes)
    }

    /// The last index of a run of entries from `from` to at most `limit` (at least `from`)
    /// that keeps within `max_entries` and `max_bytes` (at least one entry).
    ///
    /// A binary search on the running sizes: it runs for every AppendEntries and every apply
    /// batch, and a walk entry by entry showed in the profile of a busy leader.
    pub(crate) fn span_end(&self, from: Index, limit: Index, max_entries: usize, max_bytes: usize) -> Index {
        let by_count = from.saturating_add((max_entries as u64).saturating_sub(1));
        let (mut last, mut high) = (from, limit.min(by_count).max(from));
        let start = self.bytes_before(from);
        // `bytes_before` never decreases: the runs that fit are those ending at or before some
        // index. `last` fits (or is `from`, taken whatever its size); past `high`, none does.
        while last < high {
            let mid = last + (high - last).div_ceil(2);
            if self.bytes_before(mid + 1) - start <= max_bytes as u64 {
                last = mid;
            } else {
                high = mid - 1;
            }
        }
        last
    }

    /// The bytes of the entries held before `index` (from the counting origin).
    fn bytes_before(&self, index: Index) -> u64 {
        match index.checked_sub(self.base.index + 2) {
            None => self.base_end,
            Some(i) => self.slots.get(i as usize).or(self.slots.back()).map_or(self.base_end, |s| s.end),
        }
    }

    /// Drops the first `n` entries (their payloads too, when cached).
    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.slots.len());
        let dropped_to = self.base.index + n as u64;
        let cached_dropped = (dropped_to + 1).saturating_sub(self.cached_from()) as usize;
        self.cached.drain(..cached_dropped.min(self.cached.len()));
        if n > 0 {
            self.base_end = self.slots[n - 1].end;
        }
        self.slots.drain(..n);
    }

    /// The bytes ([`Entry::size_bytes`]) of the entries held after `index`.
    pub(crate) fn bytes_after(&self, index: Index) -> u64 {
        let Some(last) = self.slots.back() else { return 0 };
        if index >= self.last_index() {
            return 0;
        }
        let from = if index <= self.base.index {
            self.base_end
        } else {
            self.slots[(index - self.base.index - 1) as usize].end
        };
        last.end - from
    }

    /// The entry before the first one held.
    pub(crate) fn base(&self) -> LogId {
        self.base
    }

    /// Drops the entries up to and including `index` (they are in a snapshot). Keeps the
    /// term of `index` for the consistency check.
    pub(crate) fn compact_to(&mut self, index: Index) {
        if index <= self.base.index {
            return;
        }
        assert!(index <= self.applied, "compacting past the applied index {}", self.applied);
        let Some(term) = self.term_at(index) else { return };
        self.drop_front((index - self.base.index) as usize);
        self.base = LogId::new(term, index);
    }

    /// A snapshot ending at `last` was installed: entries after it are kept if the log holds
    /// `last` itself (they extend the snapshot), else the whole log is replaced by it.
    pub(crate) fn install_snapshot(&mut self, last: LogId) {
        if self.matches(last) && last.index >= self.base.index {
            self.drop_front((last.index - self.base.index) as usize);
        } else {
            self.slots.clear();
            self.cached.clear();
        }
        self.base = last;
        self.committed = self.committed.max(last.index);
        self.applied = self.applied.max(last.index);
        self.persisted = self.persisted.max(last.index);
    }

    pub(crate) fn last_index(&self) -> Index {
        self.base.index + self.slots.len() as u64
    }

    pub(crate) fn last_log_id(&self) -> LogId {
        self.slots.back().map_or(self.base, |s| LogId::new(s.term, self.last_index()))
    }

    /// The term of the entry at `index`, if the log knows it (the snapshot boundary counts).
    pub(crate) fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.base.index {
            return Some(self.base.term);
        }
        self.position(index).and_then(|i| self.slots.get(i)).map(|s| s.term)
    }

    /// The entry at `index`, if the log holds it whole (not before the cache).
    pub(crate) fn get(&self, index: Index) -> Option<&Entry> {
        let i = index.checked_sub(self.cached_from())?;
        self.cached.get(usize::try_from(i).ok()?)
    }

    /// Whether the log has an entry `id` (same index, same term).
    pub(crate) fn matches(&self, id: LogId) -> bool {
        self.term_at(id.index) == Some(id.term)
    }

    /// The first index of the run of entries with the term found at `index`.
    pub(crate) fn first_index_of_term_at(&self, index: Index) -> Index {
        let Some(term) = self.term_at(index) else { return index };
        let mut first = index;
        while first > self.base.index + 1 && self.term_at(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }

    /// The last index at or before `limit` whose entry has `term`, if any.
    pub(crate) fn last_index_of_term(&self, term: Term, limit: Index) -> Option<Index> {
        let mut i = limit.min(self.last_index());
        while i > self.base.index {
            match self.term_at(i) {
                Some(t) if t == term => return Some(i),
                Some(t) if t < term => return None,
                _ => i -= 1,
            }
        }
        None
    }

    /// Appends one entry right after the last one.
    pub(crate) fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "append must extend the log");
        assert!(entry.term >= self.last_log_id().term, "log terms must not decrease");
        self.push_slot(entry.term, entry.size_bytes() as u64);
        self.cached.push_back(entry);
    }

    fn push_slot(&mut self, term: Term, size: u64) {
        let end = self.slots.back().map_or(self.base_end, |s| s.end) + size;
        self.slots.push_back(Slot { term, end });
    }

    /// Removes every entry at or after `index`. Committed entries are never removed.
    pub(crate) fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.committed,
            "refusing to truncate committed entry {index} (committed {})",
            self.committed
        );
        let removed = (self.last_index() + 1).saturating_sub(index.max(self.base.index + 1)) as usize;
        self.cached.truncate(self.cached.len().saturating_sub(removed));
        let keep = index.saturating_sub(self.base.index + 1) as usize;
        self.slots.truncate(keep);
        self.persisted = self.persisted.min(index - 1);
    }

    /// Up to `max_entries` entries from `from`, stopping before `max_bytes` is passed (at
    /// least one entry if any exists).
    /// Nothing when `from` is before the cache.
    pub(crate) fn slice(&self, from: Index, max_entries: usize, max_bytes: usize) -> Vec<Entry> {
        let Some(start) = self.cached_position(from) else { return Vec::new() };
        let held = self.cached.range(start..);
        let mut out = Vec::with_capacity(held.len().min(max_entries));
        let mut bytes = 0usize;
        for e in held.take(max_entries) {
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// Entries `from..=to` that the log holds, cloned (one allocation of the exact size: this
    /// runs for every ready's new and committed entries).
    pub(crate) fn range(&self, from: Index, to: Index) -> Vec<Entry> {
        debug_assert!(from >= self.cached_from() || from > to, "range {from}..={to} before the cache");
        let from = from.max(self.cached_from());
        let to = to.min(self.last_index());
        match (self.cached_position(from), self.cached_position(to)) {
            (Some(start), Some(end)) if start <= end => self.cached.range(start..=end).cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Where the entry at `index` sits in `slots`, if the log holds it.
    fn position(&self, index: Index) -> Option<usize> {
        let offset = index.checked_sub(self.base.index + 1)?;
        usize::try_from(offset).ok().filter(|&i| i < self.slots.len())
    }

    /// Where the entry at `index` sits in `cached`, if it is held whole.
    fn cached_position(&self, index: Index) -> Option<usize> {
        let offset = index.checked_sub(self.cached_from())?;
        usize::try_from(offset).ok().filter(|&i| i < self.cached.len())
    }

    /// Number of entries after `index` that are in the log.
    pub(crate) fn len_after(&self, index: Index) -> u64 {
        self.last_index().saturating_sub(index)
    }

    /// The memory one entry out of the cache costs (its term and running size).
    #[cfg(test)]
    pub(crate) const STUB_BYTES: usize = std::mem::size_of::<Slot>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(term: Term, index: Index) -> Entry {
        Entry { term, index, payload: EntryPayload::Blank }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, t)| entry(*t, i as Index + 1)).collect();
        RaftLog::restore(LogId::default(), [], entries, 0)
    }

    #[test]
    fn terms_and_matching() {
        let log = log_of(&[1, 1, 2, 3]);
        assert_eq!(log.last_log_id(), LogId::new(3, 4));
        assert_eq!(log.term_at(0), Some(0));
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(5), None);
        assert!(log.matches(LogId::new(1, 2)));
        assert!(!log.matches(LogId::new(2, 2)));
    }

    #[test]
    fn first_and_last_index_of_term() {
        let log = log_of(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.first_index_of_term_at(5), 3);
        assert_eq!(log.first_index_of_term_at(2), 1);
        assert_eq!(log.last_index_of_term(2, 6), Some(5));
        assert_eq!(log.last_index_of_term(3, 6), None);
    }

    #[test]
    fn truncate_keeps_the_prefix() {
        let mut log = log_of(&[1, 1, 2, 2]);
        log.truncate_from(3);
        assert_eq!(log.last_log_id(), LogId::new(1, 2));
        assert_eq!(log.persisted, 2);
    }

    fn command(term: Term, index: Index, len: usize) -> Entry {
        Entry { term, index, payload: EntryPayload::Command(bytes::Bytes::from(vec![0u8; len])) }
    }

    /// Each entry costs its payload plus the 24-byte header.
    fn sum(lens: &[u64]) -> u64 {
        lens.iter().map(|l| l + 24).sum()
    }

    #[test]
    fn bytes_after_an_index_follow_pushes_truncations_compactions_and_snapshots() {
        let mut log = RaftLog::restore(LogId::default(), [], vec![command(1, 1, 10), command(1, 2, 20)], 0);
        assert_eq!(log.bytes_after(0), sum(&[10, 20]));
        assert_eq!(log.bytes_after(1), sum(&[20]));
        assert_eq!(log.bytes_after(2), 0);
        assert_eq!(log.bytes_after(9), 0);
        for (i, len) in [(3, 30), (4, 40), (5, 50)] {
            log.push(command(1, i, len as usize));
        }
        assert_eq!(log.bytes_after(2), sum(&[30, 40, 50]));
        log.truncate_from(5);
        assert_eq!(log.bytes_after(0), sum(&[10, 20, 30, 40]));
        log.push(command(2, 5, 7));
        assert_eq!(log.bytes_after(3), sum(&[40, 7]));
        (log.committed, log.applied) = (3, 3);
        log.compact_to(2);
        assert_eq!(log.bytes_after(0), sum(&[30, 40, 7]), "below the base: everything held");
        assert_eq!(log.bytes_after(2), sum(&[30, 40, 7]));
        assert_eq!(log.bytes_after(4), sum(&[7]));
        log.install_snapshot(LogId::new(1, 4));
        assert_eq!(log.bytes_after(4), sum(&[7]), "the entries after a snapshot the log holds stay");
        log.push(command(2, 6, 1));
        assert_eq!(log.bytes_after(4), sum(&[7, 1]));
        log.install_snapshot(LogId::new(3, 10));
        assert_eq!(log.bytes_after(0), 0, "a snapshot the log does not hold replaces it");
        log.push(command(3, 11, 5));
        assert_eq!(log.bytes_after(10), sum(&[5]));
    }

    #[test]
    fn the_cache_drops_only_durable_payloads_and_keeps_every_term() {
        let entries = (1..=5).map(|i| command(1, i, 100)).collect();
        let mut log = RaftLog::restore(LogId::default(), [], entries, 0);
        log.set_cache_bytes(250);
        log.persisted = 3;
        log.evict();
        assert_eq!(log.cached_from(), 4, "entry 4 is not durable yet");
        log.persisted = 5;
        log.evict();
        assert_eq!(log.cached_from(), 4, "two entries (248 bytes) fit in 250");
        assert!(log.get(3).is_none() && log.slice(3, 10, usize::MAX).is_empty());
        assert_eq!(log.term_at(1), Some(1));
        assert_eq!(log.bytes_after(0), 5 * 124, "sizes are kept for dropped payloads");
        assert!(matches!(log.get(4).map(|e| &e.payload), Some(EntryPayload::Command(c)) if c.len() == 100));
        assert_eq!(log.slice(4, 10, usize::MAX).len(), 2);
        // A read before the cache stops at it, and keeps to the limits (at least one entry).
        assert_eq!(log.read_end(1, 100, usize::MAX), 3);
        assert_eq!(log.read_end(1, 2, usize::MAX), 2);
        assert_eq!(log.read_end(1, 100, 250), 2);
        assert_eq!(log.read_end(2, 100, 1), 2);
        // Truncating an uncommitted suffix that reaches before the cache: what follows is new
        // and held whole.
        log.truncate_from(3);
        assert_eq!((log.cached_from(), log.last_index()), (3, 2));
        log.push(command(2, 3, 1));
        assert!(log.get(3).is_some() && log.get(2).is_none());
        assert_eq!(log.range(3, 3).len(), 1);
        // A snapshot that replaces the log, and new entries: all held.
        log.install_snapshot(LogId::new(2, 9));
        log.push(command(2, 10, 1));
        assert_eq!(log.cached_from(), 10);
        assert!(log.get(10).is_some());
    }

    #[test]
    fn a_restored_log_holds_stubs_then_whole_entries() {
        let stubs = (1..=3).map(|i| (LogId::new(1, i), 124));
        let mut log = RaftLog::restore(LogId::default(), stubs, vec![command(2, 4, 100)], 0);
        assert_eq!((log.cached_from(), log.last_log_id()), (4, LogId::new(2, 4)));
        assert_eq!(log.bytes_after(0), 4 * 124);
        assert_eq!((log.term_at(3), log.get(3)), (Some(1), None));
        (log.committed, log.applied) = (4, 4);
        log.compact_to(2);
        assert_eq!((log.base(), log.cached_from(), log.bytes_after(2)), (LogId::new(1, 2), 4, 2 * 124));
        log.compact_to(4);
        assert_eq!((log.cached_from(), log.get(4)), (5, None));
    }

    #[test]
    fn a_stub_costs_no_more_than_the_header_the_cache_accounts() {
        let accounted = Entry { term: 1, index: 1, payload: EntryPayload::Blank }.size_bytes();
        assert!(RaftLog::STUB_BYTES <= accounted, "a stub costs {} bytes", RaftLog::STUB_BYTES);
    }

    /// The walk entry by entry that [`RaftLog::span_end`] replaced, as the reference.
    fn span_end_by_walking(
        log: &RaftLog,
        from: Index,
        limit: Index,
        max_entries: usize,
        max_bytes: usize,
    ) -> Index {
        let mut last = from;
        let start = log.bytes_before(from);
        while last < limit
            && last + 1 < from.saturating_add(max_entries as u64)
            && log.bytes_before(last + 2) - start <= max_bytes as u64
        {
            last += 1;
        }
        last
    }

    proptest::proptest! {
        #[test]
        fn span_end_agrees_with_a_walk(
            base in 0u64..5,
            stubs in 0usize..6,
            lens in proptest::collection::vec(0usize..300, 0..40),
            from_offset in 0u64..50,
            limit_offset in 0u64..60,
            max_entries in 0usize..50,
            max_bytes in 0usize..3000,
            exact_run in proptest::option::of(0u64..45),
        ) {
            let base_id = LogId::new(1, base);
            let stub_ids = (1..=stubs as u64).map(|i| (LogId::new(1, base + i), 100 + i));
            let entries = lens
                .iter()
                .enumerate()
                .map(|(i, len)| command(1, base + stubs as u64 + 1 + i as u64, *len))
                .collect();
            let log = RaftLog::restore(base_id, stub_ids, entries, base);
            let from = base + 1 + from_offset;
            let limit = base + limit_offset;
            // Often exactly the bytes of a run from `from`: the bound's edge, where `<` and `<=`
            // differ.
            let max_bytes = exact_run.map_or(max_bytes, |run| {
                (log.bytes_before(from + run + 1) - log.bytes_before(from)) as usize
            });
            proptest::prop_assert_eq!(
                log.span_end(from, limit, max_entries, max_bytes),
                span_end_by_walking(&log, from, limit, max_entries, max_bytes)
            );
        }
    }

    #[test]
    fn slice_respects_limits() {
        let log = log_of(&[1, 1, 1, 1, 1]);
        assert_eq!(log.slice(2, 2, usize::MAX).len(), 2);
        assert_eq!(log.slice(2, 100, 1).len(), 1, "at least one entry");
        assert_eq!(log.slice(6, 100, 100).len(), 0);
    }

    #[test]
    fn compaction_keeps_the_boundary_term() {
        let mut log = log_of(&[1, 1, 2, 2]);
        log.committed = 3;
        log.applied = 3;
        log.compact_to(3);
        assert_eq!(log.base(), LogId::new(2, 3));
        assert_eq!(log.term_at(3), Some(2));
        assert!(log.get(3).is_none());
        assert_eq!(log.get(4).map(|e| e.index), Some(4));
        assert_eq!(log.first_index_of_term_at(4), 4);
    }

    #[test]
    fn installing_a_snapshot_keeps_a_matching_suffix() {
        let mut log = log_of(&[1, 1, 2, 2]);
        log.install_snapshot(LogId::new(1, 2));
        assert_eq!(log.last_log_id(), LogId::new(2, 4), "entries after a matching snapshot stay");
        assert_eq!((log.committed, log.applied), (2, 2));
        let mut log = log_of(&[1, 1, 2, 2]);
        log.install_snapshot(LogId::new(3, 3));
        assert_eq!(log.last_log_id(), LogId::new(3, 3), "a conflicting log is replaced");
        assert!(log.get(4).is_none());
    }

    #[test]
    fn committed_entries_cannot_be_truncated() {
        let mut log = log_of(&[1, 1]);
        log.committed = 2;
        let r = std::panic::catch_unwind(move || log.truncate_from(2));
        assert!(r.is_err());
    }
}
