//! The protocol's view of the log: every entry after the last snapshot, in memory, with the
//! durable, committed and handed-to-apply positions.
//!
//! Architecture invariant: `applied <= committed`, `applied <= persisted`, and every index in
//! `(snapshot.index, last_index]` is present exactly once.

use std::collections::VecDeque;

use crate::types::{Entry, Index, LogId, Term};

/// The in-memory log of one node.
#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    /// The last entry covered by the snapshot (index 0, term 0 when there is none).
    snapshot: LogId,
    /// Entries `snapshot.index + 1 ..= last_index`.
    entries: VecDeque<Entry>,
    /// The last index that storage has made durable.
    pub(crate) persisted: Index,
    /// The highest index known to be committed.
    pub(crate) committed: Index,
    /// The last index handed to the driver for applying.
    pub(crate) applied: Index,
}

impl RaftLog {
    /// A log restored from storage: the snapshot boundary and the (durable) entries after it.
    pub(crate) fn restore(snapshot: LogId, entries: Vec<Entry>) -> Self {
        for (expected, e) in (snapshot.index + 1..).zip(entries.iter()) {
            assert_eq!(e.index, expected, "restored log has a hole or is out of order");
        }
        let entries: VecDeque<Entry> = entries.into();
        let last = entries.back().map_or(snapshot.index, |e| e.index);
        Self { snapshot, entries, persisted: last, committed: snapshot.index, applied: snapshot.index }
    }

    pub(crate) fn last_index(&self) -> Index {
        self.entries.back().map_or(self.snapshot.index, |e| e.index)
    }

    pub(crate) fn last_log_id(&self) -> LogId {
        self.entries.back().map_or(self.snapshot, Entry::log_id)
    }

    /// The term of the entry at `index`, if the log knows it (the snapshot boundary counts).
    pub(crate) fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.get(index).map(|e| e.term)
    }

    pub(crate) fn get(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot.index {
            return None;
        }
        self.entries.get((index - self.snapshot.index - 1) as usize)
    }

    /// Whether the log has an entry `id` (same index, same term).
    pub(crate) fn matches(&self, id: LogId) -> bool {
        self.term_at(id.index) == Some(id.term)
    }

    /// The first index of the run of entries with the term found at `index`.
    pub(crate) fn first_index_of_term_at(&self, index: Index) -> Index {
        let Some(term) = self.term_at(index) else { return index };
        let mut first = index;
        while first > self.snapshot.index + 1 && self.term_at(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }

    /// The last index at or before `limit` whose entry has `term`, if any.
    pub(crate) fn last_index_of_term(&self, term: Term, limit: Index) -> Option<Index> {
        let mut i = limit.min(self.last_index());
        while i > self.snapshot.index {
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
        self.entries.push_back(entry);
    }

    /// Removes every entry at or after `index`. Committed entries are never removed.
    pub(crate) fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.committed,
            "refusing to truncate committed entry {index} (committed {})",
            self.committed
        );
        let keep = index.saturating_sub(self.snapshot.index + 1) as usize;
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(index - 1);
    }

    /// Up to `max_entries` entries from `from`, stopping before `max_bytes` is passed (at
    /// least one entry if any exists).
    pub(crate) fn slice(&self, from: Index, max_entries: usize, max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = from;
        while out.len() < max_entries {
            let Some(e) = self.get(index) else { break };
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            index += 1;
        }
        out
    }

    /// Entries `from..=to`, cloned.
    pub(crate) fn range(&self, from: Index, to: Index) -> Vec<Entry> {
        (from..=to).filter_map(|i| self.get(i).cloned()).collect()
    }

    /// Number of entries after `index` that are in the log.
    pub(crate) fn len_after(&self, index: Index) -> u64 {
        self.last_index().saturating_sub(index)
    }
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
        RaftLog::restore(LogId::default(), entries)
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

    #[test]
    fn slice_respects_limits() {
        let log = log_of(&[1, 1, 1, 1, 1]);
        assert_eq!(log.slice(2, 2, usize::MAX).len(), 2);
        assert_eq!(log.slice(2, 100, 1).len(), 1, "at least one entry");
        assert_eq!(log.slice(6, 100, 100).len(), 0);
    }

    #[test]
    fn committed_entries_cannot_be_truncated() {
        let mut log = log_of(&[1, 1]);
        log.committed = 2;
        let r = std::panic::catch_unwind(move || log.truncate_from(2));
        assert!(r.is_err());
    }
}
