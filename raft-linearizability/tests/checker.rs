//! The checker checked: hand-written legal and illegal histories, random legal histories from
//! a sequential model (widened intervals keep them legal) and the same with one read mutated to a
//! value never written, the limits, and a performance sanity run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use raft_linearizability::{
    check, check_final_values, check_no_phantom_reads, read_jsonl, write_jsonl, CheckOptions, Op, Operation,
    Outcome, Verdict, Violation,
};

// ---------------------------------------------------------------------------------------------
// Building histories by hand.

fn record(
    client: u64,
    key: &str,
    op: Op,
    call_ns: u64,
    return_ns: Option<u64>,
    outcome: Outcome,
) -> Operation {
    Operation { client, key: key.to_owned(), op, call_ns, return_ns, outcome }
}

fn put(client: u64, value: &str, call_ns: u64, return_ns: u64) -> Operation {
    record(client, "k", Op::Put(value.into()), call_ns, Some(return_ns), Outcome::Ok(None))
}

fn put_unknown(client: u64, value: &str, call_ns: u64) -> Operation {
    record(client, "k", Op::Put(value.into()), call_ns, None, Outcome::Unknown)
}

fn delete(client: u64, call_ns: u64, return_ns: u64) -> Operation {
    record(client, "k", Op::Delete, call_ns, Some(return_ns), Outcome::Ok(None))
}

fn get(client: u64, value: Option<&str>, call_ns: u64, return_ns: u64) -> Operation {
    record(client, "k", Op::Get, call_ns, Some(return_ns), Outcome::Ok(value.map(str::to_owned)))
}

fn cas(
    client: u64,
    expected: Option<&str>,
    new: Option<&str>,
    call_ns: u64,
    return_ns: u64,
    swapped: bool,
) -> Operation {
    let op = Op::Cas { expected: expected.map(str::to_owned), new: new.map(str::to_owned) };
    let outcome = if swapped { Outcome::Ok(None) } else { Outcome::CasFailed };
    record(client, "k", op, call_ns, Some(return_ns), outcome)
}

fn options() -> CheckOptions {
    CheckOptions {
        time_budget: Duration::from_secs(30),
        shrink_budget: Duration::from_secs(10),
        ..CheckOptions::default()
    }
}

#[track_caller]
fn assert_linearizable(history: &[Operation]) {
    let verdict = check(history, &options());
    assert_eq!(verdict, Verdict::Linearizable, "{verdict}");
}

/// Asserts a violation, and that its window is a failing history on its own.
#[track_caller]
fn assert_violation(history: &[Operation]) -> Violation {
    match check(history, &options()) {
        Verdict::NotLinearizable(violation) => {
            assert!(!violation.operations.is_empty());
            assert!(
                violation.operations.iter().all(|op| history.contains(op)),
                "the window comes from the history"
            );
            let again = check(&violation.operations, &options());
            assert!(matches!(again, Verdict::NotLinearizable(_)), "the window alone must fail: {again}");
            violation
        }
        other => panic!("expected a violation, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Legal histories.

#[test]
fn concurrent_puts_and_gets_with_overlapping_intervals() {
    assert_linearizable(&[
        put(1, "a", 0, 100),
        // Reads during the put see the old or the new value, old first.
        get(2, None, 10, 20),
        get(3, Some("a"), 15, 30),
        get(2, Some("a"), 40, 50),
        // Two overlapping puts: readers after both agree on one winner.
        put(1, "b", 200, 300),
        put(4, "c", 250, 280),
        get(2, Some("c"), 260, 270),
        get(3, Some("b"), 290, 310),
        get(2, Some("b"), 320, 330),
    ]);
}

#[test]
fn a_read_may_return_before_the_write_it_sees_returns() {
    assert_linearizable(&[put(1, "a", 0, 100), get(2, Some("a"), 10, 20)]);
}

#[test]
fn touching_intervals_are_concurrent() {
    assert_linearizable(&[get(2, Some("a"), 0, 10), put(1, "a", 10, 20)]);
}

#[test]
fn cas_chains() {
    assert_linearizable(&[
        cas(1, None, Some("1"), 0, 10, true),
        cas(2, Some("1"), Some("2"), 20, 30, true),
        cas(3, Some("1"), Some("3"), 25, 35, false),
        get(1, Some("2"), 40, 50),
        cas(2, Some("2"), None, 60, 70, true),
        get(3, None, 80, 90),
        cas(1, Some("2"), Some("4"), 100, 110, false),
        // Two concurrent swaps from the same state: exactly one wins.
        put(1, "x", 120, 130),
        cas(2, Some("x"), Some("y"), 140, 160, true),
        cas(3, Some("x"), Some("z"), 140, 160, false),
        get(1, Some("y"), 170, 180),
    ]);
}

#[test]
fn deletes() {
    assert_linearizable(&[
        delete(1, 0, 5),
        get(2, None, 6, 8),
        put(1, "a", 10, 20),
        delete(2, 30, 40),
        get(3, Some("a"), 31, 35),
        get(3, None, 41, 45),
        put(1, "b", 50, 60),
        get(2, Some("b"), 70, 80),
    ]);
}

#[test]
fn unknown_writes_that_took_effect() {
    assert_linearizable(&[
        put(1, "a", 0, 10),
        put_unknown(2, "b", 20),
        get(3, Some("a"), 30, 40),
        // Took effect long after the client gave up.
        get(3, Some("b"), 1_000, 1_010),
        record(
            4,
            "k",
            Op::Cas { expected: Some("b".into()), new: Some("c".into()) },
            1_020,
            None,
            Outcome::Unknown,
        ),
        get(3, Some("c"), 2_000, 2_010),
    ]);
}

#[test]
fn unknown_writes_that_never_took_effect() {
    assert_linearizable(&[
        put(1, "a", 0, 10),
        put_unknown(2, "b", 20),
        record(4, "k", Op::Delete, 25, None, Outcome::Unknown),
        get(3, Some("a"), 30, 40),
        get(3, Some("a"), 1_000, 1_010),
        // Failed swaps keep the unknown writes in the search (no pruning): still legal.
        cas(1, Some("b"), Some("c"), 1_100, 1_200, false),
        cas(1, None, Some("c"), 1_300, 1_400, false),
        get(3, Some("a"), 2_000, 2_010),
    ]);
}

#[test]
fn an_unknown_swap_that_could_never_succeed() {
    // The swap's expected value never appears: it cannot have taken effect, and need not. (The
    // failed swap after it keeps it from being pruned before the search.)
    assert_linearizable(&[
        put(1, "a", 0, 10),
        record(
            2,
            "k",
            Op::Cas { expected: Some("zzz".into()), new: Some("q".into()) },
            20,
            None,
            Outcome::Unknown,
        ),
        get(3, Some("a"), 30, 40),
        cas(3, Some("zzz"), None, 50, 60, false),
    ]);
}

#[test]
fn an_unknown_write_explains_a_failed_swap() {
    // Nothing reads "b", but only its unknown put explains why the swap found the key not "a".
    assert_linearizable(&[
        put(1, "a", 0, 10),
        put_unknown(2, "b", 20),
        cas(3, Some("a"), Some("c"), 100, 110, false),
    ]);
    // And without it the failed swap is impossible.
    assert_violation(&[put(1, "a", 0, 10), cas(3, Some("a"), Some("c"), 100, 110, false)]);
}

#[test]
fn identical_unknown_writes_at_different_times() {
    // Two unknown puts of the same value: the early one explains the early read, the late one
    // the read after the delete.
    assert_linearizable(&[
        put_unknown(1, "x", 0),
        get(2, Some("x"), 10, 20),
        delete(3, 30, 40),
        put_unknown(4, "x", 50),
        get(2, Some("x"), 60, 70),
    ]);
    // A single one cannot explain both.
    assert_violation(&[
        put_unknown(1, "x", 0),
        get(2, Some("x"), 10, 20),
        delete(3, 30, 40),
        get(2, Some("x"), 60, 70),
    ]);
}

#[test]
fn failed_operations_and_unknown_reads_are_ignored() {
    assert_linearizable(&[
        put(1, "a", 0, 10),
        record(2, "k", Op::Put("never".into()), 20, Some(30), Outcome::Failed),
        record(2, "k", Op::Get, 20, None, Outcome::Unknown),
        record(2, "k", Op::Get, 20, Some(30), Outcome::Failed),
        get(3, Some("a"), 40, 50),
    ]);
}

#[test]
fn keys_are_independent() {
    let mut other = put(1, "b", 0, 10);
    other.key = "other".into();
    let mut other_read = get(1, Some("b"), 20, 30);
    other_read.key = "other".into();
    assert_linearizable(&[put(1, "a", 0, 10), other, get(2, Some("a"), 20, 30), other_read]);
}

#[test]
fn an_empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

// ---------------------------------------------------------------------------------------------
// Illegal histories.

#[test]
fn a_stale_read_after_a_completed_write() {
    let history = [put(1, "a", 0, 10), put(1, "b", 20, 30), get(2, Some("a"), 40, 50)];
    let violation = assert_violation(&history);
    assert_eq!(violation.key, "k");
    assert_eq!(violation.operations, history.to_vec());
    assert!(violation.explanation.contains("[3]"), "{violation}");
}

#[test]
fn a_read_of_a_value_never_written() {
    let history = [put(1, "a", 0, 10), get(2, Some("a"), 20, 30), get(2, Some("zzz"), 40, 50)];
    let violation = assert_violation(&history);
    assert_eq!(violation.operations, vec![history[2].clone()]);
    assert!(check_no_phantom_reads(&history).is_err());
}

#[test]
fn a_lost_acknowledged_write() {
    let history = [put(1, "a", 0, 10), get(2, Some("a"), 20, 30), get(3, None, 40, 50)];
    let violation = assert_violation(&history);
    assert_eq!(violation.operations, vec![history[0].clone(), history[2].clone()]);
    let finals = BTreeMap::from([("k".to_owned(), None)]);
    assert!(check_final_values(&history, &finals).is_err());
}

#[test]
fn a_cas_success_from_a_wrong_state() {
    let history = [put(1, "a", 0, 10), put(1, "b", 20, 30), cas(2, Some("a"), Some("c"), 40, 50, true)];
    let violation = assert_violation(&history);
    assert_eq!(violation.operations, history.to_vec());
}

#[test]
fn a_cas_failure_when_the_state_matched() {
    assert_violation(&[put(1, "a", 0, 10), cas(2, Some("a"), Some("c"), 20, 30, false)]);
}

#[test]
fn two_reads_observing_writes_in_opposite_orders() {
    let history = [
        put(1, "a", 0, 100),
        put(2, "b", 0, 100),
        get(3, Some("a"), 10, 20),
        get(4, Some("b"), 10, 20),
        get(3, Some("b"), 50, 60),
        get(4, Some("a"), 50, 60),
    ];
    assert_violation(&history);
    // Either client alone is fine.
    assert_linearizable(&[history[0].clone(), history[1].clone(), history[2].clone(), history[4].clone()]);
    assert_linearizable(&[history[0].clone(), history[1].clone(), history[3].clone(), history[5].clone()]);
}

#[test]
fn an_unknown_write_cannot_take_effect_before_its_call() {
    assert_violation(&[get(1, Some("a"), 0, 10), put_unknown(2, "a", 20)]);
}

#[test]
fn a_failed_write_never_takes_effect() {
    assert_violation(&[
        record(1, "k", Op::Put("a".into()), 0, Some(10), Outcome::Failed),
        get(2, Some("a"), 20, 30),
    ]);
}

#[test]
fn a_failed_write_of_a_value_written_before_never_takes_effect() {
    // "b" was written, then overwritten; only the failed put could bring it back.
    assert_violation(&[
        put(1, "b", 0, 5),
        put(1, "a", 10, 20),
        record(2, "k", Op::Put("b".into()), 30, Some(40), Outcome::Failed),
        get(3, Some("b"), 50, 60),
    ]);
}

#[test]
fn a_read_back_in_time_after_a_delete() {
    assert_violation(&[put(1, "a", 0, 10), delete(1, 20, 30), get(2, Some("a"), 40, 50)]);
}

#[test]
fn the_violation_is_in_the_first_failing_key_and_is_shrunk() {
    let mut history = Vec::new();
    for i in 0..50 {
        history.push(put(1, &format!("v{i}"), i * 100, i * 100 + 50));
        history.push(get(2, Some(&format!("v{i}")), i * 100 + 60, i * 100 + 90));
    }
    // A stale read in the middle of a long history, and noise after it.
    history.insert(41, get(3, Some("v3"), 2_055, 2_058));
    let violation = assert_violation(&history);
    assert!(violation.operations.len() <= 4, "{violation}");
    assert!(violation.operations.contains(&history[41]), "{violation}");
    assert!(violation.explanation.contains("shrunk"), "{violation}");
}

// ---------------------------------------------------------------------------------------------
// Limits.

#[test]
fn a_tiny_state_budget_gives_up() {
    let history = client_history(&mut Rng(7), 2_000, 1, 8);
    let options = CheckOptions { max_states: 100, ..options() };
    match check(&history, &options) {
        Verdict::GaveUp { key, reason } => {
            assert_eq!(key, "key0");
            assert!(reason.contains("more than 100 memoized states"), "{reason}");
        }
        other => panic!("expected GaveUp, got {other}"),
    }
}

#[test]
fn a_zero_time_budget_gives_up() {
    let history = client_history(&mut Rng(8), 4_000, 2, 8);
    let options = CheckOptions { time_budget: Duration::ZERO, ..options() };
    match check(&history, &options) {
        Verdict::GaveUp { reason, .. } => assert!(reason.contains("time budget"), "{reason}"),
        other => panic!("expected GaveUp, got {other}"),
    }
}

#[test]
fn gave_up_is_not_a_pass() {
    let verdict = Verdict::GaveUp { key: "k".into(), reason: "time".into() };
    assert!(!verdict.is_linearizable());
    assert!(verdict.to_string().contains("a failure"));
}

// ---------------------------------------------------------------------------------------------
// Random histories from a sequential model.

/// A small deterministic generator (SplitMix64), so that a failing case replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What a generated operation does, decided before the model runs it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Get,
    Put,
    Delete,
    /// A swap expecting the current value (it succeeds).
    CasCurrent,
    /// A swap expecting some other value (it fails, unless that is the current value).
    CasOther,
}

/// Whether the client learns the outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    /// Completed.
    Known,
    /// Took effect, the client timed out.
    UnknownApplied,
    /// Never took effect, the client timed out.
    UnknownLost,
    /// Refused: never took effect.
    Failed,
}

/// Runs operations through a sequential register model in the order of their linearization
/// points (each inside its operation's interval), and records what the clients would have seen.
/// `planned` holds (key, kind, fate, call, point, return); the result is in `planned`'s order,
/// plus each key's final value.
fn run_model(
    rng: &mut Rng,
    planned: &[(usize, Kind, Fate, u64, u64, u64)],
) -> (Vec<Operation>, BTreeMap<String, Option<String>>) {
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| (planned[i].4, i));
    let mut state: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut history: Vec<Option<Operation>> = vec![None; planned.len()];
    for i in order {
        let (key_index, kind, fate, call_ns, _, return_ns) = planned[i];
        let key = format!("key{key_index}");
        let current = state.entry(key.clone()).or_insert(None);
        let fresh = format!("v{i}");
        let applies = matches!(fate, Fate::Known | Fate::UnknownApplied);
        let (op, result) = match kind {
            Kind::Get => (Op::Get, Outcome::Ok(current.clone())),
            Kind::Put => {
                if applies {
                    *current = Some(fresh.clone());
                }
                (Op::Put(fresh), Outcome::Ok(None))
            }
            Kind::Delete => {
                if applies {
                    *current = None;
                }
                (Op::Delete, Outcome::Ok(None))
            }
            Kind::CasCurrent | Kind::CasOther => {
                let expected = match kind {
                    Kind::CasCurrent => current.clone(),
                    _ if rng.chance(30) => None,
                    _ => Some(format!("v{}", rng.below(i as u64 + 1))),
                };
                let new = if rng.chance(20) { None } else { Some(fresh) };
                let swapped = expected == *current;
                if applies && swapped {
                    *current = new.clone();
                }
                let result = if swapped { Outcome::Ok(None) } else { Outcome::CasFailed };
                (Op::Cas { expected, new }, result)
            }
        };
        let (outcome, return_ns) = match fate {
            Fate::Known => (result, Some(return_ns)),
            Fate::UnknownApplied | Fate::UnknownLost => (Outcome::Unknown, None),
            Fate::Failed => (Outcome::Failed, Some(return_ns)),
        };
        history[i] = Some(Operation { client: i as u64 % 8, key, op, call_ns, return_ns, outcome });
    }
    (history.into_iter().flatten().collect(), state)
}

fn random_kind(rng: &mut Rng) -> Kind {
    match rng.below(10) {
        0..=3 => Kind::Get,
        4..=5 => Kind::Put,
        6 => Kind::Delete,
        7..=8 => Kind::CasCurrent,
        _ => Kind::CasOther,
    }
}

fn random_fate(rng: &mut Rng, unknown_percent: u64) -> Fate {
    let roll = rng.below(100);
    if roll < unknown_percent / 2 {
        Fate::UnknownApplied
    } else if roll < unknown_percent {
        Fate::UnknownLost
    } else if roll < unknown_percent + 3 {
        Fate::Failed
    } else {
        Fate::Known
    }
}

/// A legal history: operations at linearization points 100 ns apart, each interval widened
/// around its point by up to `widen_ns` on each side.
fn widened_history(
    seed: u64,
    length: usize,
    keys: usize,
    widen_ns: u64,
    unknown_percent: u64,
) -> (Vec<Operation>, BTreeMap<String, Option<String>>) {
    let mut rng = Rng(seed);
    let planned: Vec<_> = (0..length)
        .map(|i| {
            let point = 1_000_000 + 100 * i as u64;
            let key = rng.below(keys as u64) as usize;
            let call = point - rng.below(widen_ns + 1);
            let ret = point + rng.below(widen_ns + 1);
            (key, random_kind(&mut rng), random_fate(&mut rng, unknown_percent), call, point, ret)
        })
        .collect();
    run_model(&mut rng, &planned)
}

/// A legal history as `clients` sequential clients would record it: each client's operations
/// follow one another with random latencies and think times, each takes effect at a random
/// instant inside its interval, and a client that times out moves on.
fn client_history(rng: &mut Rng, length: usize, keys: usize, clients: u64) -> Vec<Operation> {
    let mut planned = Vec::with_capacity(length);
    let mut client_free_ns = vec![0u64; clients as usize];
    for i in 0..length {
        let client = i % clients as usize;
        let call = client_free_ns[client] + rng.below(2_000);
        let ret = call + 100 + rng.below(5_000);
        let point = call + rng.below(ret - call + 1);
        let key = rng.below(keys as u64) as usize;
        let fate = random_fate(rng, 2);
        client_free_ns[client] = ret;
        planned.push((key, random_kind(rng), fate, call, point, ret));
    }
    run_model(rng, &planned).0
}

/// Mutates the `choice`-th completed read (modulo their number) to a value never written.
fn mutate_one_read(history: &mut [Operation], choice: usize) -> Option<usize> {
    let reads: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, op)| op.op == Op::Get && matches!(op.outcome, Outcome::Ok(_)))
        .map(|(i, _)| i)
        .collect();
    let target = *reads.get(choice % reads.len().max(1))?;
    history[target].outcome = Outcome::Ok(Some("never-written".into()));
    Some(target)
}

/// The position in `violation.operations` of the operation its explanation names as the first
/// that nothing explains.
fn culprit_position(violation: &Violation) -> Option<usize> {
    let (_, after) = violation.explanation.split_once("nothing explains is [")?;
    let (number, _) = after.split_once(']')?;
    number.parse::<usize>().ok()?.checked_sub(1)
}

/// The window of `violation` with the writes its explanation marks relaxed made unknown.
fn relaxed_window(violation: &Violation) -> Vec<Operation> {
    let mut operations = violation.operations.clone();
    for line in violation.explanation.lines().filter(|line| line.contains("(relaxed:")) {
        let position = line
            .trim_start()
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'))
            .and_then(|(number, _)| number.parse::<usize>().ok())
            .and_then(|number| number.checked_sub(1));
        if let Some(operation) = position.and_then(|position| operations.get_mut(position)) {
            operation.outcome = Outcome::Unknown;
            operation.return_ns = None;
        }
    }
    operations
}

/// Mutates one completed read to a stale value: one stored by a completed write `P` (its only
/// writer) that a completed write `W` followed in real time (`P` returned before `W` was called)
/// before the read was called. Picks the `choice`-th such (read, value) pair, if any.
fn mutate_one_read_to_stale(history: &mut [Operation], choice: usize) -> Option<usize> {
    let writes_value = |op: &Operation, value: &str| match &op.op {
        Op::Put(written) | Op::Cas { new: Some(written), .. } => written == value,
        _ => false,
    };
    let completed_write =
        |op: &Operation| op.op.is_write() && matches!(op.outcome, Outcome::Ok(_)) && op.return_ns.is_some();
    let mut pairs = Vec::new();
    for (r, read) in history.iter().enumerate() {
        if read.op != Op::Get || !matches!(read.outcome, Outcome::Ok(_)) {
            continue;
        }
        for p in history.iter().filter(|p| p.key == read.key && completed_write(p)) {
            let value = match &p.op {
                Op::Put(value) | Op::Cas { new: Some(value), .. } => value.clone(),
                _ => continue,
            };
            let unique =
                history.iter().filter(|op| op.key == read.key && writes_value(op, &value)).count() == 1;
            let (Some(p_return), Some(r_return)) = (p.return_ns, read.return_ns) else { continue };
            let overwritten = history.iter().any(|w| {
                w.key == read.key
                    && completed_write(w)
                    && !std::ptr::eq(w, p)
                    && p_return < w.call_ns
                    && w.return_ns.is_some_and(|at| at < read.call_ns)
            });
            if unique
                && overwritten
                && r_return >= read.call_ns
                && read.outcome != Outcome::Ok(Some(value.clone()))
            {
                pairs.push((r, value));
            }
        }
    }
    let (target, value) = pairs.get(choice % pairs.len().max(1))?.clone();
    history[target].outcome = Outcome::Ok(Some(value));
    Some(target)
}

/// The property of `a_read_mutated_to_a_stale_value_is_caught`, for one generated case.
fn stale_read_is_caught(
    seed: u64,
    length: usize,
    keys: usize,
    widen_ns: u64,
    unknown_percent: u64,
    choice: usize,
) -> Result<(), TestCaseError> {
    let (mut history, _) = widened_history(seed, length, keys, widen_ns, unknown_percent);
    let Some(target) = mutate_one_read_to_stale(&mut history, choice) else {
        return Ok(()); // No read has a stale value to mutate to.
    };
    match check(&history, &options()) {
        Verdict::NotLinearizable(violation) => {
            prop_assert_eq!(&violation.key, &history[target].key);
            let again = check(&violation.operations, &options());
            prop_assert!(
                matches!(again, Verdict::NotLinearizable(_)),
                "the window alone must fail: {}",
                again
            );
            // A shrink may stop at its budget of time or of states, as documented (the case of
            // seed 4_658_020_840_191_361_515, drawn in CI and kept in the regressions file,
            // does at once): the window then still fails alone, but it is not minimal, and the
            // checks of a minimal window below do not apply.
            if !violation.explanation.contains("shrunk") {
                prop_assert!(violation.explanation.contains("shrinking stopped"), "{}", violation);
                prop_assert_eq!(check_no_phantom_reads(&history), Ok(()));
                return Ok(());
            }
            // The culprit is what makes the window fail (with the writes it marks relaxed
            // taken as unknown).
            let culprit = culprit_position(&violation);
            prop_assert!(culprit.is_some(), "{}", violation);
            let mut relaxed = relaxed_window(&violation);
            prop_assert!(matches!(check(&relaxed, &options()), Verdict::NotLinearizable(_)), "{}", violation);
            // No read or swap in the window lacks the write of its value that the history has.
            let stores = |op: &Operation, value: &str| {
                op.outcome != Outcome::Failed
                    && op.outcome != Outcome::CasFailed
                    && matches!(&op.op, Op::Put(v) | Op::Cas { new: Some(v), .. } if v == value)
            };
            for op in &violation.operations {
                let observed = match (&op.op, &op.outcome) {
                    (_, Outcome::CasFailed) => None,
                    (Op::Get, Outcome::Ok(Some(value))) | (Op::Cas { expected: Some(value), .. }, _) => {
                        Some(value)
                    }
                    _ => None,
                };
                if let Some(value) = observed {
                    if history.iter().any(|h| h.key == op.key && stores(h, value)) {
                        prop_assert!(violation.operations.iter().any(|w| stores(w, value)), "{}", violation);
                    }
                }
            }
            relaxed.remove(culprit.unwrap_or_default());
            prop_assert_eq!(check(&relaxed, &options()), Verdict::Linearizable, "{}", violation);
        }
        other => prop_assert!(false, "expected a violation, got {}", other),
    }
    // Not a phantom read: only the search finds it.
    prop_assert_eq!(check_no_phantom_reads(&history), Ok(()));
    Ok(())
}

/// Cases that once failed (a spurious window when a swap's expected write was left out; a tie
/// at the culprit's return), replayed whatever proptest draws.
#[test]
fn stale_read_regressions() {
    for (seed, length, keys, widen_ns, unknown_percent, choice) in [
        (5_911_491_914_925_183_607, 103, 1, 344, 12, 1_576_330_566_926_198_917),
        (13_612_506_463_020_527_307, 114, 3, 146, 9, 16_426_994_978_864_900_975),
        (7_261_073_480_647_339_450, 145, 1, 226, 2, 5_845_759_092_427_185_612),
    ] {
        stale_read_is_caught(seed, length, keys, widen_ns, unknown_percent, choice).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_legal_histories_are_linearizable(
        seed in any::<u64>(),
        length in 1usize..150,
        keys in 1usize..4,
        widen_ns in 0u64..400,
        unknown_percent in 0u64..15,
    ) {
        let (history, finals) = widened_history(seed, length, keys, widen_ns, unknown_percent);
        let verdict = check(&history, &options());
        prop_assert_eq!(&verdict, &Verdict::Linearizable, "{}", verdict);
        prop_assert_eq!(check_no_phantom_reads(&history), Ok(()));
        prop_assert_eq!(check_final_values(&history, &finals), Ok(()));
        let mut saved = Vec::new();
        write_jsonl(&mut saved, &history).unwrap();
        prop_assert_eq!(read_jsonl(&saved[..]).unwrap(), history);
    }

    #[test]
    fn a_read_mutated_to_a_value_never_written_is_caught(
        seed in any::<u64>(),
        length in 1usize..150,
        keys in 1usize..4,
        widen_ns in 0u64..400,
        unknown_percent in 0u64..15,
        choice in any::<usize>(),
    ) {
        let (mut history, _) = widened_history(seed, length, keys, widen_ns, unknown_percent);
        let Some(target) = mutate_one_read(&mut history, choice) else {
            return Ok(()); // No completed read to mutate.
        };
        match check(&history, &options()) {
            Verdict::NotLinearizable(violation) => {
                prop_assert_eq!(&violation.key, &history[target].key);
                prop_assert_eq!(&violation.operations, &vec![history[target].clone()]);
            }
            other => prop_assert!(false, "expected a violation, got {}", other),
        }
        prop_assert!(check_no_phantom_reads(&history).is_err());
    }

    #[test]
    fn a_read_mutated_to_a_stale_value_is_caught(
        seed in any::<u64>(),
        length in 1usize..150,
        keys in 1usize..4,
        widen_ns in 0u64..400,
        unknown_percent in 0u64..15,
        choice in any::<usize>(),
    ) {
        stale_read_is_caught(seed, length, keys, widen_ns, unknown_percent, choice)?;
    }

    #[test]
    fn random_client_histories_are_linearizable(seed in any::<u64>(), length in 1usize..300) {
        let history = client_history(&mut Rng(seed), length, 3, 4);
        let verdict = check(&history, &options());
        prop_assert_eq!(&verdict, &Verdict::Linearizable, "{}", verdict);
    }
}

// ---------------------------------------------------------------------------------------------
// Performance sanity (prints, does not assert on time).

#[test]
fn performance_10k_operations_20_keys_8_clients() {
    let history = client_history(&mut Rng(42), 10_000, 20, 8);
    let started = Instant::now();
    let verdict = check(&history, &options());
    let elapsed = started.elapsed();
    println!("10k operations, 20 keys, 8 clients: {verdict} in {elapsed:?}");
    assert_eq!(verdict, Verdict::Linearizable);

    // Contention: all operations on one key.
    let contended = client_history(&mut Rng(43), 10_000, 1, 8);
    let started = Instant::now();
    let verdict = check(&contended, &options());
    println!("10k operations, 1 key, 8 clients: {verdict} in {:?}", started.elapsed());
    assert_eq!(verdict, Verdict::Linearizable);

    let mut broken = history;
    let target = mutate_one_read(&mut broken, 5_000).unwrap();
    // Make the mutated read a stale one instead: the value of the key's first put.
    let key = broken[target].key.clone();
    let first_value = broken.iter().find_map(|op| match &op.op {
        Op::Put(value)
            if op.key == key
                && matches!(op.outcome, Outcome::Ok(_))
                && op.call_ns < broken[target].call_ns =>
        {
            Some(value.clone())
        }
        _ => None,
    });
    broken[target].outcome = Outcome::Ok(first_value);
    let started = Instant::now();
    let verdict = check(&broken, &options());
    let elapsed = started.elapsed();
    match &verdict {
        Verdict::NotLinearizable(violation) => {
            println!(
                "10k operations with a stale read: caught and shrunk to {} operations in {elapsed:?}:\n{violation}",
                violation.operations.len()
            );
        }
        other => panic!("expected a violation, got {other}"),
    }
}
