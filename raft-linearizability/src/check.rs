//! [`check`]: the linearizability check of a whole history, key by key on a bounded number of
//! threads, and the shrinking of a failure to a small window of operations that cannot be
//! ordered.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::history::{validate_one, Op, Operation, Outcome, ShowValue};
use crate::model::{prepare, Member};
use crate::quick_checks::first_phantom_read;
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
    /// order, usually a handful.
    ///
    /// From [`check`] it is shrunk (unless the explanation says shrinking stopped at its
    /// budget): relaxing any one of them (dropping a read, or letting a write take effect at any
    /// time after its call or never) lets the rest be ordered, and so does leaving out any one
    /// unknown or relaxed write, unless that would take away the only write of a value some
    /// operation read. Writes marked "relaxed" in the explanation were completed, but are needed
    /// only as writes that may have taken effect.
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
        // A read of a value never written needs no search (which would have to exhaust every
        // order up to that read to prove it).
        if first_phantom_read(history, indices).is_some() {
            return SearchResult::NotLinearizable;
        }
        let members: Vec<Member> = indices.iter().copied().map(Member::as_recorded).collect();
        search(&prepare(history, &members, None), limits)
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

/// Memoized states allowed to one search while shrinking: a candidate that needs more is taken
/// as not failing (the window stays larger, and is reported as maybe not minimal).
const SHRINK_STATES_MAX: usize = 100_000;

/// Relaxes `member` one step: a read is dropped (`None`), a completed write becomes optional.
/// Both only make ordering easier, so a history that still fails after them shows that what was
/// relaxed is not needed as recorded to make it fail.
fn relax(history: &[Operation], member: Member) -> Option<Member> {
    if is_read(&history[member.index]) {
        None
    } else {
        Some(Member { optional: true, ..member })
    }
}

/// `members` with the record `index` relaxed.
fn relax_one(history: &[Operation], members: &[Member], index: usize) -> Vec<Member> {
    members
        .iter()
        .filter_map(|&member| if member.index == index { relax(history, member) } else { Some(member) })
        .collect()
}

/// Whether `member` is a write the search may leave out (an unknown or relaxed one).
fn is_optional(history: &[Operation], member: Member) -> bool {
    !is_read(&history[member.index]) && (member.optional || !history[member.index].is_completed())
}

/// Whether `operation` changed nothing: a get, or a swap answered `cas_failed`.
fn is_read(operation: &Operation) -> bool {
    !operation.op.is_write() || operation.outcome == Outcome::CasFailed
}

/// What a search of a candidate window found: `Some(true)` no order, `Some(false)` an order,
/// `None` gave up.
type Trial = Option<bool>;

/// The state of a shrink: the window so far and what is known about it.
struct Shrinker<'a> {
    history: &'a [Operation],
    limits: Limits,
    window: Vec<Member>,
    /// The operation whose return ends the earliest failing prefix, while the window without it
    /// can be ordered.
    culprit: Option<usize>,
    /// A one-member trial gave up or the time ran out: the window may not be minimal.
    undecided: bool,
}

impl Shrinker<'_> {
    fn trial(&self, members: &[Member]) -> Trial {
        match search(&prepare(self.history, members, None), &self.limits) {
            SearchResult::NotLinearizable => Some(true),
            SearchResult::Linearizable => Some(false),
            SearchResult::GaveUp(_) => None,
        }
    }

    /// Whether `members` fail and, when a culprit is known, stop failing without it.
    fn still_fails(&self, members: &[Member]) -> Trial {
        if !self.trial(members)? {
            return Some(false);
        }
        let Some(culprit) = self.culprit else { return Some(true) };
        Some(!self.trial(&relax_one(self.history, members, culprit))?)
    }

    /// One delta-debugging pass over the members `targets` (history indexes, ascending): apply
    /// `change` to chunks of them, from all at once down to one at a time, keeping each
    /// candidate that is `acceptable` and still fails. Returns whether the window changed.
    fn pass(
        &mut self,
        targets: &[usize],
        change: impl Fn(&[Operation], Member) -> Option<Member>,
        acceptable: impl Fn(&Self, &[Member]) -> bool,
    ) -> bool {
        let mut changed = false;
        let mut chunk = targets.len().max(1);
        loop {
            for targeted in targets.chunks(chunk) {
                if time_left(self.limits.deadline).is_zero() {
                    self.undecided = true;
                    return changed;
                }
                let candidate: Vec<Member> = self
                    .window
                    .iter()
                    .filter_map(|&member| match targeted.binary_search(&member.index) {
                        Ok(_) => change(self.history, member),
                        Err(_) => Some(member),
                    })
                    .collect();
                if candidate == self.window || !acceptable(self, &candidate) {
                    continue;
                }
                match self.still_fails(&candidate) {
                    Some(true) => {
                        self.window = candidate;
                        changed = true;
                    }
                    Some(false) => {}
                    None => self.undecided |= chunk == 1,
                }
            }
            if chunk == 1 {
                return changed;
            }
            chunk = (chunk / 2).max(1);
        }
    }

    /// Whether every value that a read or swap in `members` observed or expects (a completed
    /// get's result, a swap's expected value, whether the swap is optional or not) and a write in
    /// the current window stored is still stored by a write in `members`: leaving out writes must
    /// never make a read, or a swap, fail for a reason the history does not have.
    fn reads_keep_their_writes(&self, members: &[Member]) -> bool {
        let stored = |members: &[Member]| -> Vec<&str> {
            members
                .iter()
                .filter_map(|member| {
                    match (&self.history[member.index].op, &self.history[member.index].outcome) {
                        (_, Outcome::CasFailed) => None,
                        (Op::Put(value) | Op::Cas { new: Some(value), .. }, _) => Some(value.as_str()),
                        _ => None,
                    }
                })
                .collect()
        };
        let (before, after) = (stored(&self.window), stored(members));
        members.iter().all(|member| {
            let observed = match (&self.history[member.index].op, &self.history[member.index].outcome) {
                (_, Outcome::CasFailed) => return true,
                (Op::Get, Outcome::Ok(Some(value))) | (Op::Cas { expected: Some(value), .. }, _) => {
                    value.as_str()
                }
                _ => return true,
            };
            !before.contains(&observed) || after.contains(&observed)
        })
    }
}

/// Shrinks a key whose history is not linearizable to a small window that is not either.
///
/// A read of a value never written is its own window. Otherwise the earliest failing prefix
/// (in return order) is found by bisection: a prefix cut at time `t` keeps the operations called
/// by `t`, with those still running then relaxed, and prefixes of a linearizable history are
/// linearizable. The operation whose return ends that prefix is the culprit: the first
/// completion nothing explains. Then, delta-debugging style (chunks, then one at a time), reads
/// are dropped, completed writes made optional (relaxations: each only makes ordering easier),
/// and optional writes left out, each change kept only if the window still fails, the culprit
/// stays needed for that, and no read loses the write of its value. Rounds repeat until nothing
/// changes or the shrink budget runs out.
fn shrink(history: &[Operation], key: &str, indices: &[usize], options: &CheckOptions) -> Violation {
    if let Some((index, value)) = first_phantom_read(history, indices) {
        let operations = vec![history[index].clone()];
        let mut explanation = explain(key, &operations, &[false], Some(0), true);
        explanation.push_str(&format!(
            "\nno write of {} that did not fail was called before it returned",
            ShowValue(&Some(value.to_owned()))
        ));
        return Violation { key: key.to_owned(), operations, explanation };
    }
    let deadline = Instant::now() + options.shrink_budget;
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

    // The smallest prefix that fails; the full history (the last return) is known to fail. The
    // few bisection probes get the check's own state budget, the many trials after them less.
    let all: Vec<Member> = relevant.iter().copied().map(Member::as_recorded).collect();
    let probe_limits = Limits { deadline, max_states: options.max_states };
    let (mut low, mut high) = (0, returns.len().saturating_sub(1));
    let mut bisected = true;
    while low < high {
        let middle = low + (high - low) / 2;
        match search(&prepare(history, &all, Some(returns[middle].0)), &probe_limits) {
            SearchResult::NotLinearizable => high = middle,
            SearchResult::Linearizable => low = middle + 1,
            SearchResult::GaveUp(_) => {
                bisected = false;
                low = middle + 1;
            }
        }
    }
    let cut_ns = returns.get(high).map(|&(at, _)| at);
    // The failing prefix as members: what was called by the cut, with what returned after it
    // relaxed (so that no operation in the window lacks a write that was only called later).
    let window: Vec<Member> = match cut_ns {
        Some(cut) => all
            .into_iter()
            .filter(|member| history[member.index].call_ns <= cut)
            .filter_map(|member| match history[member.index].return_ns {
                Some(at) if at > cut && history[member.index].is_completed() => relax(history, member),
                _ => Some(member),
            })
            .collect(),
        None => all,
    };
    let mut shrinker = Shrinker {
        history,
        limits: Limits { deadline, max_states: options.max_states.min(SHRINK_STATES_MAX) },
        window,
        culprit: None,
        undecided: false,
    };
    // The culprit: of the operations returning at the cut, the one without which the window
    // can be ordered (usually the only one returning then).
    if bisected {
        shrinker.culprit = returns
            .iter()
            .filter(|&&(at, _)| Some(at) == cut_ns)
            .map(|&(_, index)| index)
            .find(|&index| shrinker.trial(&relax_one(history, &shrinker.window, index)) == Some(false));
    }

    loop {
        let mut changed = false;
        // Reads first: a dropped read leaves the window, while a write made optional stays in it
        // when its value is read.
        let reads: Vec<usize> = shrinker
            .window
            .iter()
            .filter(|member| is_read(&history[member.index]))
            .map(|m| m.index)
            .collect();
        changed |= shrinker.pass(&reads, relax, |_, _| true);
        // Leaving out a write is no relaxation (a read of its value could then fail for a reason
        // the history does not have), hence the two extra conditions; without a culprit to
        // anchor the window, writes stay. Trying that before relaxing keeps the window small:
        // every optional write left in it multiplies the work of the trials after it.
        let writes = |shrinker: &Shrinker<'_>, optional: bool| -> Vec<usize> {
            shrinker
                .window
                .iter()
                .filter(|&&member| {
                    !is_read(&history[member.index]) && is_optional(history, member) == optional
                })
                .map(|member| member.index)
                .collect()
        };
        let keep_writes_of_reads =
            |s: &Shrinker<'_>, candidate: &[Member]| s.reads_keep_their_writes(candidate);
        if shrinker.culprit.is_some() {
            changed |= shrinker.pass(&writes(&shrinker, false), |_, _| None, keep_writes_of_reads);
        }
        changed |= shrinker.pass(&writes(&shrinker, false), relax, |_, _| true);
        if shrinker.culprit.is_some() {
            changed |= shrinker.pass(&writes(&shrinker, true), |_, _| None, keep_writes_of_reads);
        }
        if !changed || shrinker.undecided {
            break;
        }
    }

    // Optional writes that nothing observes are pruned by the search; leave them out.
    let window = &shrinker.window;
    let mut kept: Vec<usize> = prepare(history, window, None).iter().map(|op| op.source).collect();
    kept.sort_by_key(|&index| (history[index].call_ns, index));
    let operations: Vec<Operation> = kept.iter().map(|&index| history[index].clone()).collect();
    let relaxed: Vec<bool> = kept
        .iter()
        .map(|&index| window.iter().any(|m| m.index == index && m.optional && history[index].is_completed()))
        .collect();
    let culprit = shrinker.culprit.and_then(|index| kept.iter().position(|&k| k == index));
    let explanation = explain(key, &operations, &relaxed, culprit, !shrinker.undecided);
    Violation { key: key.to_owned(), operations, explanation }
}

/// Operations listed in an explanation before the rest is summarized.
const EXPLANATION_OPERATIONS_MAX: usize = 40;

fn explain(
    key: &str,
    operations: &[Operation],
    relaxed: &[bool],
    culprit: Option<usize>,
    minimal: bool,
) -> String {
    let these = match operations.len() {
        1 => "this operation".to_owned(),
        n => format!("these {n} operations"),
    };
    let mut text =
        format!("key {key:?}: no order of {these} respects both real time and a register that starts absent");
    text.push_str(if minimal {
        " (shrunk: none of them can be dropped or relaxed without losing the contradiction):"
    } else {
        " (shrinking stopped at its time or state budget: the window may not be minimal):"
    });
    for (position, operation) in operations.iter().take(EXPLANATION_OPERATIONS_MAX).enumerate() {
        text.push_str(&format!("\n  [{}] {operation}", position + 1));
        if relaxed.get(position).copied().unwrap_or(false) {
            text.push_str(" (relaxed: it may have taken effect at any time after its call, or never)");
        }
    }
    if operations.len() > EXPLANATION_OPERATIONS_MAX {
        text.push_str(&format!("\n  ... and {} more", operations.len() - EXPLANATION_OPERATIONS_MAX));
    }
    if let Some(position) = culprit {
        let operation = &operations[position];
        let what = match (&operation.op, &operation.outcome) {
            (Op::Get, Outcome::Ok(value)) => format!("read {}", ShowValue(value)),
            (Op::Cas { expected, .. }, Outcome::CasFailed) => {
                format!("found the key not {}", ShowValue(expected))
            }
            (Op::Cas { expected, .. }, _) => format!("found the key {}", ShowValue(expected)),
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
        assert!(violation.explanation.contains("shrunk"), "{}", violation.explanation);
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
