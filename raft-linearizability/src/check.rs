//! [`check`]: the linearizability check of a whole history, key by key on a bounded number of
//! threads, and the shrinking of a failure to a small window of operations that cannot be
//! ordered.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::history::{validate_one, Op, Operation, Outcome};
use crate::model::prepare;
use crate::search::{search, time_left, Limits, SearchResult};

/// The limits of a [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Wall-clock time for the whole search (all keys); past it, [`Verdict::GaveUp`].
    pub time_budget: Duration,
    /// Most (linearized set, state) pairs memoized for one key; past it, [`Verdict::GaveUp`].
    /// Each costs about `operations_on_the_key / 8 + 48` bytes, and up to `max_threads` keys
    /// are searched at once.
    pub max_states: usize,
    /// Keys searched at once, each on its own thread (1: all on the calling thread).
    pub max_threads: usize,
    /// Extra wall-clock time, after the search, to shrink a violation to a minimal window;
    /// when it runs out the window reported is smaller than the key's history but may not be
    /// minimal (its explanation says so).
    pub shrink_budget: Duration,
}

impl Default for CheckOptions {
    /// 60 s of search, a million states per key, up to 4 threads, 10 s of shrinking.
    fn default() -> Self {
        Self {
            time_budget: Duration::from_secs(60),
            max_states: 1_000_000,
            max_threads: std::thread::available_parallelism().map_or(1, |n| n.get()).min(4),
            shrink_budget: Duration::from_secs(10),
        }
    }
}

/// The answer of a [`check`].
///
/// **Only [`Verdict::Linearizable`] is a pass.** A test must fail on [`Verdict::GaveUp`] as on
/// [`Verdict::NotLinearizable`]: a history the checker could not decide proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[must_use = "a verdict other than Linearizable must fail the test"]
pub enum Verdict {
    /// Every key's operations can be ordered consistently with real time and the register.
    Linearizable,
    /// A key's operations cannot be ordered (the first such key in key order).
    NotLinearizable(Violation),
    /// The checker could not decide: a limit of [`CheckOptions`] was reached, or a record is
    /// malformed (the reason starts with `invalid history:`). Treat it as a failure.
    GaveUp {
        /// The key being searched (the first such key in key order).
        key: String,
        /// Which limit was reached, or what is malformed.
        reason: String,
    },
}

impl Verdict {
    /// Whether this verdict is a pass: only [`Verdict::Linearizable`] is.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable(violation) => write!(f, "NOT linearizable: {violation}"),
            Verdict::GaveUp { key, reason } => write!(f, "gave up (a failure) on key {key:?}: {reason}"),
        }
    }
}

/// A proof that a history is wrong: a window of operations on one key that cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// The window, in call order: records from the history that on their own already admit no
    /// order. From [`check`] it is shrunk: without any one of them the rest can be ordered or
    /// reads a value that none of them wrote (unless the explanation says shrinking stopped
    /// early).
    pub operations: Vec<Operation>,
    /// What is wrong, in words, with the window listed.
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explanation)
    }
}

/// Checks that `history` is linearizable: that every key's completed operations, and any of its
/// unknown-outcome writes, can be put in one order that respects real time (an operation that
/// returned before another was called comes first) and the register's rules (a read sees the
/// last write; a swap succeeds exactly when the register holds `expected`).
///
/// Every key starts absent, and keys are independent (the store has no multi-key operations),
/// so each key is searched separately, up to [`CheckOptions::max_threads`] at once. Failed
/// operations and unknown reads are dropped; unknown writes may take effect at any time after
/// their call, or never. A malformed record (see [`crate::validate_history`]) gives
/// [`Verdict::GaveUp`].
///
/// **[`Verdict::GaveUp`] is a failure**, never a pass: see [`Verdict`].
pub fn check(history: &[Operation], options: &CheckOptions) -> Verdict {
    for (index, operation) in history.iter().enumerate() {
        if let Err(error) = validate_one(index, operation) {
            return Verdict::GaveUp {
                key: operation.key.clone(),
                reason: format!("invalid history: {error}"),
            };
        }
    }
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        by_key.entry(operation.key.as_str()).or_default().push(index);
    }
    let keys: Vec<(&str, Vec<usize>)> = by_key.into_iter().collect();
    let limits = Limits { deadline: Instant::now() + options.time_budget, max_states: options.max_states };
    let results = search_keys(history, &keys, &limits, options.max_threads);

    if let Some(position) = results.iter().position(|result| *result == SearchResult::NotLinearizable) {
        let (key, indices) = &keys[position];
        return Verdict::NotLinearizable(shrink(history, key, indices, options));
    }
    let gave_up: Vec<(usize, &String)> = results
        .iter()
        .enumerate()
        .filter_map(|(position, result)| match result {
            SearchResult::GaveUp(reason) => Some((position, reason)),
            _ => None,
        })
        .collect();
    match gave_up.first() {
        None => Verdict::Linearizable,
        Some(&(position, reason)) => {
            let others = match gave_up.len() - 1 {
                0 => String::new(),
                1 => " (and on 1 other key)".to_owned(),
                n => format!(" (and on {n} other keys)"),
            };
            Verdict::GaveUp { key: keys[position].0.to_owned(), reason: format!("{reason}{others}") }
        }
    }
}

/// Searches every key, on up to `max_threads` threads; the results are in `keys`' order.
fn search_keys(
    history: &[Operation],
    keys: &[(&str, Vec<usize>)],
    limits: &Limits,
    max_threads: usize,
) -> Vec<SearchResult> {
    let search_one = |position: usize| {
        let (_, indices) = &keys[position];
        search(&prepare(history, indices, None), limits)
    };
    let threads = max_threads.clamp(1, keys.len().max(1));
    if threads == 1 {
        return (0..keys.len()).map(search_one).collect();
    }
    let next_key = AtomicUsize::new(0);
    let mut results: Vec<SearchResult> =
        vec![SearchResult::GaveUp("checker thread failed".to_owned()); keys.len()];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let position = next_key.fetch_add(1, Ordering::Relaxed);
                        if position >= keys.len() {
                            return done;
                        }
                        done.push((position, search_one(position)));
                    }
                })
            })
            .collect();
        for worker in workers {
            // A panicking worker leaves its keys at "checker thread failed", a GaveUp.
            if let Ok(done) = worker.join() {
                for (position, result) in done {
                    results[position] = result;
                }
            }
        }
    });
    results
}

/// Whether the records `indices` of `history`, on their own, admit no linearization (a search
/// that gives up counts as "they might").
fn fails(history: &[Operation], indices: &[usize], truncate_at_ns: Option<u64>, limits: &Limits) -> bool {
    search(&prepare(history, indices, truncate_at_ns), limits) == SearchResult::NotLinearizable
}

/// Shrinks a key whose history is not linearizable to a small window that is not either.
///
/// First the earliest failing prefix (in return order) is found by bisection: a prefix cut at
/// time `t` keeps the operations called by `t`, with those still running then made pending, and
/// prefixes of a linearizable history are linearizable. The operation whose return ends that
/// prefix is the first completion nothing explains. Then the operations called by then are
/// reduced, delta-debugging style (chunks, then single operations), keeping only removals after
/// which the rest still fails, until no single operation can be removed or the shrink budget
/// runs out.
fn shrink(history: &[Operation], key: &str, indices: &[usize], options: &CheckOptions) -> Violation {
    let limits = Limits { deadline: Instant::now() + options.shrink_budget, max_states: options.max_states };
    // Failed operations and unknown reads never matter.
    let relevant: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|&index| {
            let operation = &history[index];
            match operation.outcome {
                Outcome::Failed => false,
                Outcome::Unknown => operation.op.is_write(),
                Outcome::Ok(_) | Outcome::CasFailed => true,
            }
        })
        .collect();
    let mut returns: Vec<(u64, usize)> = relevant
        .iter()
        .filter(|&&index| history[index].is_completed())
        .filter_map(|&index| history[index].return_ns.map(|at| (at, index)))
        .collect();
    returns.sort_unstable();

    // The smallest prefix that fails; the full history (the last return) is known to fail.
    let (mut low, mut high) = (0, returns.len().saturating_sub(1));
    let mut complete = true;
    while low < high {
        let middle = low + (high - low) / 2;
        if time_left(limits.deadline).is_zero() {
            complete = false;
            break;
        }
        if fails(history, &relevant, Some(returns[middle].0), &limits) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    let (cut_ns, culprit) = returns.get(high).copied().unzip();
    let mut window: Vec<usize> = match cut_ns {
        Some(cut) => relevant.iter().copied().filter(|&index| history[index].call_ns <= cut).collect(),
        None => relevant,
    };

    // Delta debugging on the untruncated records of the window. A removal must not leave a read
    // of a value that some write of the key produced without any such write: the rest would fail
    // for a reason the history does not have (reading a value never written).
    let written = written_values(history, &window);
    let mut chunk = (window.len() / 2).max(1);
    'shrinking: loop {
        let mut removed_any = false;
        let mut start = 0;
        while start < window.len() {
            if time_left(limits.deadline).is_zero() {
                complete = false;
                break 'shrinking;
            }
            let end = (start + chunk).min(window.len());
            let candidate: Vec<usize> = window[..start].iter().chain(&window[end..]).copied().collect();
            if !candidate.is_empty()
                && reads_have_writers(history, &candidate, &written)
                && fails(history, &candidate, None, &limits)
            {
                window = candidate;
                removed_any = true;
            } else {
                start = end;
            }
        }
        if chunk == 1 && !removed_any {
            break;
        }
        if !removed_any {
            chunk /= 2;
        }
        chunk = chunk.min((window.len() / 2).max(1));
    }

    window.sort_by_key(|&index| (history[index].call_ns, index));
    let operations: Vec<Operation> = window.iter().map(|&index| history[index].clone()).collect();
    let culprit = culprit.and_then(|index| window.iter().position(|&kept| kept == index));
    let explanation = explain(key, &operations, culprit, complete);
    Violation { key: key.to_owned(), operations, explanation }
}

/// The values that the writes among `indices` may have stored (not the initial absence).
fn written_values<'a>(history: &'a [Operation], indices: &[usize]) -> HashSet<&'a str> {
    indices
        .iter()
        .filter_map(|&index| {
            let operation = &history[index];
            match (&operation.op, &operation.outcome) {
                (_, Outcome::Failed | Outcome::CasFailed) => None,
                (Op::Put(value), _) => Some(value.as_str()),
                (Op::Cas { new: Some(value), .. }, _) => Some(value.as_str()),
                _ => None,
            }
        })
        .collect()
}

/// Whether every value read by a completed operation among `indices` (a get's result, a
/// successful swap's expected value) that a write in `written` stored is stored by a write among
/// `indices` too.
fn reads_have_writers(history: &[Operation], indices: &[usize], written: &HashSet<&str>) -> bool {
    let here = written_values(history, indices);
    indices.iter().all(|&index| {
        let operation = &history[index];
        let read = match (&operation.op, &operation.outcome) {
            (Op::Get, Outcome::Ok(Some(value))) => value.as_str(),
            (Op::Cas { expected: Some(value), .. }, Outcome::Ok(_)) => value.as_str(),
            _ => return true,
        };
        !written.contains(read) || here.contains(read)
    })
}

/// Operations listed in an explanation before the rest is summarized.
const EXPLANATION_OPERATIONS_MAX: usize = 40;

fn explain(key: &str, operations: &[Operation], culprit: Option<usize>, minimal: bool) -> String {
    let mut text = format!(
        "key {key:?}: no order of these {} operations respects both real time and a register that starts absent",
        operations.len()
    );
    text.push_str(if minimal {
        " (shrunk: without any one of them, the rest can be ordered or reads a value none of them wrote):"
    } else {
        " (shrinking stopped at its time budget: the window may not be minimal):"
    });
    for (position, operation) in operations.iter().take(EXPLANATION_OPERATIONS_MAX).enumerate() {
        text.push_str(&format!("\n  [{}] {operation}", position + 1));
    }
    if operations.len() > EXPLANATION_OPERATIONS_MAX {
        text.push_str(&format!("\n  ... and {} more", operations.len() - EXPLANATION_OPERATIONS_MAX));
    }
    if let Some(position) = culprit {
        let operation = &operations[position];
        let what = match (&operation.op, &operation.outcome) {
            (Op::Get, Outcome::Ok(value)) => {
                format!("read {}", crate::history::ShowValue(value))
            }
            (Op::Cas { expected, .. }, Outcome::CasFailed) => {
                format!("found the key not {}", crate::history::ShowValue(expected))
            }
            (Op::Cas { expected, .. }, _) => {
                format!("found the key {}", crate::history::ShowValue(expected))
            }
            _ => "completed".to_owned(),
        };
        text.push_str(&format!(
            "\nthe first operation to return that nothing explains is [{}]: it {what}, which no order of the \
             operations before its return allows",
            position + 1
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(client: u64, op: Op, outcome: Outcome, call_ns: u64, return_ns: u64) -> Operation {
        Operation { client, key: "k".into(), op, call_ns, return_ns: Some(return_ns), outcome }
    }

    #[test]
    fn a_stale_read_shrinks_to_the_write_and_the_read() {
        let mut history = vec![
            record(1, Op::Put("a".into()), Outcome::Ok(None), 0, 10),
            record(2, Op::Get, Outcome::Ok(Some("a".into())), 11, 12),
            record(1, Op::Put("b".into()), Outcome::Ok(None), 20, 30),
        ];
        for i in 0..20 {
            history.push(record(3, Op::Get, Outcome::Ok(Some("b".into())), 40 + i, 41 + i));
        }
        history.push(record(2, Op::Get, Outcome::Ok(Some("a".into())), 100, 110));
        history.push(record(4, Op::Put("c".into()), Outcome::Ok(None), 120, 130));
        let Verdict::NotLinearizable(violation) = check(&history, &CheckOptions::default()) else {
            panic!("a stale read must be caught");
        };
        assert_eq!(violation.key, "k");
        assert_eq!(violation.operations, vec![history[0].clone(), history[2].clone(), history[23].clone()]);
        assert!(violation.explanation.contains("the first operation to return that nothing explains is [3]"));
        assert!(violation.explanation.contains("without any one of them"), "{}", violation.explanation);
        // The window is a failing history on its own.
        assert!(matches!(
            check(&violation.operations, &CheckOptions::default()),
            Verdict::NotLinearizable(_)
        ));
    }

    #[test]
    fn malformed_records_give_up() {
        let history = [Operation {
            client: 1,
            key: "k".into(),
            op: Op::Get,
            call_ns: 5,
            return_ns: None,
            outcome: Outcome::Ok(None),
        }];
        match check(&history, &CheckOptions::default()) {
            Verdict::GaveUp { key, reason } => {
                assert_eq!(key, "k");
                assert!(reason.starts_with("invalid history:"), "{reason}");
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
    }

    #[test]
    fn the_first_failing_key_is_reported_whatever_the_thread_count() {
        let mut history = Vec::new();
        for key in ["a", "b", "c", "d", "e"] {
            let mut put = record(1, Op::Put("x".into()), Outcome::Ok(None), 0, 10);
            put.key = key.into();
            let mut read = record(2, Op::Get, Outcome::Ok(None), 20, 30);
            read.key = key.into();
            history.push(put);
            if key == "c" || key == "e" {
                history.push(read);
            }
        }
        for max_threads in [1, 2, 3, 8] {
            let options = CheckOptions { max_threads, ..CheckOptions::default() };
            match check(&history, &options) {
                Verdict::NotLinearizable(violation) => assert_eq!(violation.key, "c"),
                other => panic!("expected a violation on c, got {other:?}"),
            }
        }
    }
}
