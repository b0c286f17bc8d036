//! The register model and the translation of one key's records into search operations:
//! values interned to small integers, failed operations and unknown reads dropped, unknown
//! writes made optional, and unknown writes that provably cannot matter pruned.

use std::collections::{HashMap, HashSet};

use crate::history::{Op, Operation, Outcome};

/// A register value interned for one key: [`ABSENT`] or `1 + ` an index into the key's values.
pub(crate) type ValueId = u32;

/// The key does not exist (the register's initial state).
pub(crate) const ABSENT: ValueId = 0;

/// Any value that no operation compares the register with (see `merge_unobserved_values`).
pub(crate) const UNOBSERVED: ValueId = ValueId::MAX;

/// What one operation does to the register, on interned values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    /// A read that saw this value.
    Read(ValueId),
    /// A failed compare-and-swap: a read that saw any value but this one.
    ReadNot(ValueId),
    /// A put or delete: sets the value whatever it was.
    Write(ValueId),
    /// A successful compare-and-swap: legal only from `expected`, then `new`.
    Cas {
        /// The state the swap requires.
        expected: ValueId,
        /// The state after the swap.
        new: ValueId,
    },
}

impl Step {
    /// Whether the step never changes the register (a read or a failed swap).
    pub(crate) fn is_read_only(self) -> bool {
        matches!(self, Step::Read(_) | Step::ReadNot(_))
    }

    /// The state after this step from `state`, or `None` if the step cannot happen there.
    pub(crate) fn apply(self, state: ValueId) -> Option<ValueId> {
        match self {
            Step::Read(value) => (state == value).then_some(state),
            Step::ReadNot(value) => (state != value).then_some(state),
            Step::Write(value) => Some(value),
            Step::Cas { expected, new } => (state == expected).then_some(new),
        }
    }
}

/// One operation as the search sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SearchOp {
    /// Its effect on the register.
    pub(crate) step: Step,
    /// When it was called.
    pub(crate) call_ns: u64,
    /// When it returned; `None` for an unknown write, which may be left out of the
    /// linearization or placed anywhere after its call.
    pub(crate) return_ns: Option<u64>,
    /// Its index in the history given to [`prepare`]'s caller.
    pub(crate) source: usize,
}

/// Interns the values of one key.
#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a str, ValueId>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, value: &'a Option<String>) -> ValueId {
        match value {
            None => ABSENT,
            Some(text) => self.id_of_text(text),
        }
    }

    fn id_of_text(&mut self, text: &'a str) -> ValueId {
        // A key with u32::MAX - 1 distinct values cannot be held in memory anyway.
        let next = ValueId::try_from(self.ids.len() + 1).unwrap_or(UNOBSERVED - 1);
        *self.ids.entry(text).or_insert(next)
    }
}

/// One record given to [`prepare`], as recorded or relaxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// Its index in the history.
    pub(crate) index: usize,
    /// Relaxed: a write taken as if its outcome were unknown (it may take effect at any time after
    /// its call, or never). Every history that admits an order still does after a relaxation.
    pub(crate) optional: bool,
}

impl Member {
    /// The record `index` as recorded.
    pub(crate) fn as_recorded(index: usize) -> Self {
        Self { index, optional: false }
    }
}

/// Translates the records `members` of `history` (all on one key, each validated) into search
/// operations.
///
/// With `truncate_at_ns`, the history is cut at that instant, as a check of the prefix of the
/// run up to then: operations called later are left out, and operations that returned later
/// count as still running (a write becomes optional, a read is dropped). A linearizable history
/// has linearizable prefixes, so a prefix that fails shows where the history fails.
pub(crate) fn prepare(
    history: &[Operation],
    members: &[Member],
    truncate_at_ns: Option<u64>,
) -> Vec<SearchOp> {
    let mut interner = Interner::default();
    let mut ops = Vec::with_capacity(members.len());
    for &Member { index: source, optional } in members {
        let Some(operation) = history.get(source) else { continue };
        if truncate_at_ns.is_some_and(|cut| operation.call_ns > cut) {
            continue;
        }
        let mut return_ns = match operation.outcome {
            Outcome::Ok(_) | Outcome::CasFailed if !optional => operation.return_ns,
            Outcome::Ok(_) | Outcome::CasFailed | Outcome::Failed | Outcome::Unknown => None,
        };
        if let (Some(cut), Some(at)) = (truncate_at_ns, return_ns) {
            if at > cut {
                return_ns = None;
            }
        }
        let step = match (&operation.op, &operation.outcome) {
            (_, Outcome::Failed) => continue,
            // An unknown read, or one cut off by the truncation, constrains nothing.
            (Op::Get, _) if return_ns.is_none() => continue,
            (Op::Get, Outcome::Ok(value)) => Step::Read(interner.id(value)),
            (Op::Get, _) => continue,
            (Op::Put(value), _) => Step::Write(interner.id_of_text(value)),
            (Op::Delete, _) => Step::Write(ABSENT),
            (Op::Cas { expected, .. }, Outcome::CasFailed) => {
                if return_ns.is_none() {
                    // Cut off by the truncation (or relaxed): a no-op read that may be dropped.
                    continue;
                }
                Step::ReadNot(interner.id(expected))
            }
            (Op::Cas { expected, new }, _) => {
                Step::Cas { expected: interner.id(expected), new: interner.id(new) }
            }
        };
        ops.push(SearchOp { step, call_ns: operation.call_ns, return_ns, source });
    }
    merge_unobserved_values(&mut ops);
    prune_unobserved_unknown_writes(&mut ops);
    ops
}

/// Replaces every value that no operation compares the register with (no read returned it, no
/// swap or failed swap expected it) by [`UNOBSERVED`].
///
/// Exact: the register's value matters to an operation only through such comparisons, and all
/// of them come out "different" for every merged value alike. It shrinks the search: states
/// that differ only in an unobserved value are memoized once, and unknown writes of unobserved
/// values become identical, which [`crate::search`] linearizes in call order only.
fn merge_unobserved_values(ops: &mut [SearchOp]) {
    let mut observed: HashSet<ValueId> = HashSet::new();
    for op in ops.iter() {
        match op.step {
            Step::Read(value) | Step::ReadNot(value) | Step::Cas { expected: value, .. } => {
                observed.insert(value);
            }
            Step::Write(_) => {}
        }
    }
    let merge = |value: ValueId| {
        if value == ABSENT || observed.contains(&value) {
            value
        } else {
            UNOBSERVED
        }
    };
    for op in ops.iter_mut() {
        match &mut op.step {
            Step::Write(value) | Step::Cas { new: value, .. } => *value = merge(*value),
            Step::Read(_) | Step::ReadNot(_) => {}
        }
    }
}

/// Drops the largest set of unknown writes whose values no remaining operation could have
/// observed (found by growing the set of kept operations from the completed ones: an unknown
/// write is kept when a kept operation reads or expects its value, or a failed swap may follow
/// it; unknown swaps that only expect each other's values are all dropped).
///
/// Soundness: take a linearization that includes the dropped writes, and remove them all. An
/// operation that depends on the state (a read, a swap, a failed swap) sees the value of the last
/// write before it. If that write was dropped, the operation observes its value: not a kept read
/// or swap (they would have kept it), nor a failed swap (none returns after a dropped write's
/// call, so none follows it). So every remaining operation sees what it saw before, the rest is
/// still a linearization, and dropping them changes no verdict, while every optional operation
/// left in the search can double its work.
fn prune_unobserved_unknown_writes(ops: &mut Vec<SearchOp>) {
    let last_failed_swap_return_ns =
        ops.iter().filter(|op| matches!(op.step, Step::ReadNot(_))).filter_map(|op| op.return_ns).max();
    let written = |op: &SearchOp| match op.step {
        Step::Write(value) | Step::Cas { new: value, .. } => Some(value),
        Step::Read(_) | Step::ReadNot(_) => None,
    };
    let mut kept: Vec<bool> = ops
        .iter()
        .map(|op| {
            op.return_ns.is_some()
                || written(op).is_none()
                || last_failed_swap_return_ns.is_some_and(|at| at >= op.call_ns)
        })
        .collect();
    let mut observed: HashSet<ValueId> = HashSet::new();
    loop {
        observed.extend(ops.iter().zip(&kept).filter(|(_, &kept)| kept).filter_map(
            |(op, _)| match op.step {
                Step::Read(value) => Some(value),
                Step::Cas { expected, .. } => Some(expected),
                Step::ReadNot(_) | Step::Write(_) => None,
            },
        ));
        let mut grew = false;
        for (op, kept) in ops.iter().zip(kept.iter_mut()) {
            if !*kept && written(op).is_some_and(|value| observed.contains(&value)) {
                *kept = true;
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let mut keep = kept.into_iter();
    ops.retain(|_| keep.next().unwrap_or(true));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: Op, outcome: Outcome, call_ns: u64, return_ns: Option<u64>) -> Operation {
        Operation { client: 1, key: "k".into(), op, call_ns, return_ns, outcome }
    }

    fn all(history: &[Operation]) -> Vec<Member> {
        (0..history.len()).map(Member::as_recorded).collect()
    }

    #[test]
    fn steps_follow_the_register() {
        assert_eq!(Step::Read(1).apply(1), Some(1));
        assert_eq!(Step::Read(1).apply(2), None);
        assert_eq!(Step::ReadNot(1).apply(1), None);
        assert_eq!(Step::ReadNot(1).apply(ABSENT), Some(ABSENT));
        assert_eq!(Step::Write(3).apply(1), Some(3));
        assert_eq!(Step::Cas { expected: 1, new: 2 }.apply(1), Some(2));
        assert_eq!(Step::Cas { expected: 1, new: 2 }.apply(2), None);
    }

    #[test]
    fn failed_ops_and_unknown_reads_are_dropped_and_unknown_writes_optional() {
        let history = [
            record(Op::Put("a".into()), Outcome::Failed, 0, Some(1)),
            record(Op::Get, Outcome::Unknown, 0, None),
            record(Op::Put("a".into()), Outcome::Unknown, 2, Some(50)),
            record(Op::Get, Outcome::Ok(Some("a".into())), 3, Some(4)),
        ];
        let ops = prepare(&history, &all(&history), None);
        assert_eq!(
            ops,
            vec![
                SearchOp { step: Step::Write(1), call_ns: 2, return_ns: None, source: 2 },
                SearchOp { step: Step::Read(1), call_ns: 3, return_ns: Some(4), source: 3 },
            ]
        );
    }

    #[test]
    fn truncation_cuts_late_calls_and_makes_late_returns_pending() {
        let history = [
            record(Op::Put("a".into()), Outcome::Ok(None), 0, Some(10)),
            record(Op::Get, Outcome::Ok(Some("a".into())), 1, Some(30)),
            record(Op::Put("b".into()), Outcome::Ok(None), 2, Some(30)),
            record(Op::Cas { expected: None, new: None }, Outcome::CasFailed, 3, Some(30)),
            record(Op::Get, Outcome::Ok(Some("b".into())), 20, Some(30)),
            record(Op::Get, Outcome::Ok(Some("b".into())), 4, Some(5)),
        ];
        let ops = prepare(&history, &all(&history), Some(10));
        let sources: Vec<usize> = ops.iter().map(|op| op.source).collect();
        assert_eq!(sources, vec![0, 2, 5]);
        assert_eq!(ops[1].return_ns, None);
    }

    #[test]
    fn pruning_follows_chains_of_unknown_swaps() {
        let history = [
            record(Op::Put("a".into()), Outcome::Unknown, 0, None),
            record(Op::Cas { expected: Some("a".into()), new: Some("b".into()) }, Outcome::Unknown, 1, None),
            record(Op::Cas { expected: Some("b".into()), new: Some("c".into()) }, Outcome::Unknown, 2, None),
            record(Op::Get, Outcome::Ok(None), 3, Some(4)),
        ];
        let kept: Vec<usize> = prepare(&history, &all(&history), None).iter().map(|op| op.source).collect();
        assert_eq!(kept, vec![3]);
        let mut observed = history.to_vec();
        observed.push(record(Op::Get, Outcome::Ok(Some("b".into())), 5, Some(6)));
        let kept: Vec<usize> = prepare(&observed, &all(&observed), None).iter().map(|op| op.source).collect();
        assert_eq!(kept, vec![0, 1, 3, 4]);

        // Unknown swaps that only expect each other's values, and deletes only they observe.
        let cycle = [
            record(Op::Delete, Outcome::Unknown, 0, None),
            record(Op::Cas { expected: None, new: Some("a".into()) }, Outcome::Unknown, 1, None),
            record(Op::Cas { expected: Some("a".into()), new: None }, Outcome::Unknown, 2, None),
            record(Op::Get, Outcome::Ok(Some("z".into())), 3, Some(4)),
        ];
        let kept: Vec<usize> = prepare(&cycle, &all(&cycle), None).iter().map(|op| op.source).collect();
        assert_eq!(kept, vec![3]);
    }

    #[test]
    fn unobserved_unknown_writes_are_pruned_unless_a_failed_swap_follows() {
        let history = [
            record(Op::Put("seen".into()), Outcome::Unknown, 0, None),
            record(Op::Put("unseen".into()), Outcome::Unknown, 0, None),
            record(Op::Delete, Outcome::Unknown, 0, None),
            record(Op::Get, Outcome::Ok(Some("seen".into())), 5, Some(6)),
        ];
        let kept: Vec<usize> = prepare(&history, &all(&history), None).iter().map(|op| op.source).collect();
        assert_eq!(kept, vec![0, 3]);

        let mut with_swap = history.to_vec();
        with_swap.push(record(
            Op::Cas { expected: Some("x".into()), new: None },
            Outcome::CasFailed,
            7,
            Some(8),
        ));
        let kept: Vec<usize> =
            prepare(&with_swap, &all(&with_swap), None).iter().map(|op| op.source).collect();
        assert_eq!(kept, vec![0, 1, 2, 3, 4]);

        // A failed swap that returned before the unknown write was called cannot follow it.
        let mut early_swap = history.to_vec();
        early_swap.insert(
            0,
            record(Op::Cas { expected: Some("x".into()), new: None }, Outcome::CasFailed, 0, Some(0)),
        );
        for op in &mut early_swap[1..4] {
            op.call_ns = 1;
        }
        let kept: Vec<usize> =
            prepare(&early_swap, &all(&early_swap), None).iter().map(|op| op.source).collect();
        assert_eq!(kept, vec![0, 1, 4]);
    }
}
