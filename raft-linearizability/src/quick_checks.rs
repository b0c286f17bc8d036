//! Checks without search, linear in the history's size, for the end of a chaos run: they still
//! say something when [`crate::check`] gives up, and they name the problem more plainly.
//!
//! - [`check_no_phantom_reads`]: no read returns a value that was never written to its key.
//! - [`check_final_values`]: after the cluster has healed, each key holds a value that some
//!   write not overwritten by a later acknowledged write produced: no acknowledged write is
//!   lost.
//!
//! That all nodes converge to the same state (the same state hash at the same applied index) is
//! left to the caller: it needs the nodes, not the history.

use std::collections::{BTreeMap, HashMap};

use crate::check::Violation;
use crate::history::{Op, Operation, Outcome, ShowValue};

/// Checks that no completed read returned a value never written to its key: every `Get` that
/// read `Some(v)`, and every successful `Cas` expecting `Some(v)`, returned at or after the
/// call of a put or swap of `v` on the same key that did not fail. Reads of an absent key
/// always pass (every key starts absent).
///
/// Returns the earliest offending read (by return time, then position) as a one-operation
/// window plus the failed or later writes of that value, if any. Does not validate records.
pub fn check_no_phantom_reads(history: &[Operation]) -> Result<(), Violation> {
    let all: Vec<usize> = (0..history.len()).collect();
    let Some((index, value)) = first_phantom_read(history, &all) else { return Ok(()) };
    let read = &history[index];
    let related: Vec<&Operation> = history
        .iter()
        .filter(|other| other.key == read.key && writes_text(other, value) && *other != read)
        .collect();
    let mut explanation = format!(
        "key {:?}: a read returned {}, which no write could have stored by then:\n  [1] {read}",
        read.key,
        ShowValue(&Some(value.to_owned()))
    );
    if related.is_empty() {
        explanation.push_str("\nno put or swap of that value was ever issued on the key");
    } else {
        for (position, other) in related.iter().enumerate() {
            explanation.push_str(&format!("\n  [{}] {other}", position + 2));
        }
        explanation.push_str("\nevery write of that value failed or was called after the read returned");
    }
    let mut operations = vec![read.clone()];
    operations.extend(related.into_iter().cloned());
    Err(Violation { key: read.key.clone(), operations, explanation })
}

/// The earliest (by return time, then position) of the records `indices` of `history` that read
/// a value no write could have stored by its return, with that value. Such a read alone admits
/// no linearization.
pub(crate) fn first_phantom_read<'a>(
    history: &'a [Operation],
    indices: &[usize],
) -> Option<(usize, &'a str)> {
    // (key, value) -> the earliest call of a write that may have stored it.
    let mut first_write_ns: HashMap<(&str, &str), u64> = HashMap::new();
    for operation in indices.iter().filter_map(|&index| history.get(index)) {
        if let Some(value) = stored_value(operation) {
            let earliest = first_write_ns.entry((operation.key.as_str(), value)).or_insert(operation.call_ns);
            *earliest = (*earliest).min(operation.call_ns);
        }
    }
    indices
        .iter()
        .filter_map(|&index| {
            let operation = history.get(index)?;
            let value = observed_value(operation)?;
            let returned_ns = operation.return_ns.unwrap_or(u64::MAX);
            let explained = first_write_ns
                .get(&(operation.key.as_str(), value))
                .is_some_and(|&call_ns| call_ns <= returned_ns);
            (!explained).then_some((returned_ns, index, value))
        })
        .min()
        .map(|(_, index, value)| (index, value))
}

/// The value a write may have stored, if it may have stored one (not failed, not a failed swap,
/// not a delete).
fn stored_value(operation: &Operation) -> Option<&str> {
    match (&operation.op, &operation.outcome) {
        (_, Outcome::Failed | Outcome::CasFailed) => None,
        (Op::Put(value), _) | (Op::Cas { new: Some(value), .. }, _) => Some(value),
        _ => None,
    }
}

/// The value a completed read saw, if it saw one.
fn observed_value(operation: &Operation) -> Option<&str> {
    match (&operation.op, &operation.outcome) {
        (Op::Get, Outcome::Ok(Some(value))) => Some(value),
        (Op::Cas { expected: Some(value), .. }, Outcome::Ok(_)) => Some(value),
        _ => None,
    }
}

/// Whether `operation` is a put or swap of `value`, whatever its outcome.
fn writes_text(operation: &Operation, value: &str) -> bool {
    match &operation.op {
        Op::Put(written) | Op::Cas { new: Some(written), .. } => written == value,
        _ => false,
    }
}

/// Checks that no acknowledged write was lost: `final_values` maps keys to what each held once
/// the cluster healed and every client stopped (`None`: absent), read after every operation in
/// `history` returned or timed out.
///
/// A key's final value passes when some write of the key could be the last to take effect and
/// stored it: a put, delete or swap that was acknowledged or has an unknown outcome, which no
/// acknowledged write was called after it returned (an unknown write never returned). With no
/// acknowledged write on the key, the initial absence passes too. Keys absent from
/// `final_values` are not checked, so read every key the test wrote. Does not validate records.
///
/// Returns the first failing key (in key order), its window listing the latest acknowledged
/// write (by call) and the writes of the final value, if any.
pub fn check_final_values(
    history: &[Operation],
    final_values: &BTreeMap<String, Option<String>>,
) -> Result<(), Violation> {
    let mut by_key: HashMap<&str, Vec<&Operation>> = HashMap::new();
    for operation in history {
        by_key.entry(operation.key.as_str()).or_default().push(operation);
    }
    for (key, final_value) in final_values {
        let operations = by_key.get(key.as_str()).map(Vec::as_slice).unwrap_or_default();
        let last_acknowledged = operations
            .iter()
            .filter(|operation| operation.op.is_write() && matches!(operation.outcome, Outcome::Ok(_)))
            .max_by_key(|operation| operation.call_ns);
        let Some(last_acknowledged) = last_acknowledged else {
            // Only unknown writes (or none): the initial absence or any of them may remain.
            if final_value.is_none()
                || operations
                    .iter()
                    .any(|operation| may_have_written(operation) && stores(operation, final_value))
            {
                continue;
            }
            return Err(final_value_violation(key, final_value, None, operations));
        };
        let latest_call_ns = last_acknowledged.call_ns;
        let explained = operations
            .iter()
            .filter(|operation| may_have_written(operation) && stores(operation, final_value))
            .any(|operation| match (&operation.outcome, operation.return_ns) {
                (Outcome::Ok(_), Some(return_ns)) => return_ns >= latest_call_ns,
                _ => true,
            });
        if !explained {
            return Err(final_value_violation(key, final_value, Some(last_acknowledged), operations));
        }
    }
    Ok(())
}

/// Whether `operation` is a write that was acknowledged or may have taken effect.
fn may_have_written(operation: &Operation) -> bool {
    operation.op.is_write() && matches!(operation.outcome, Outcome::Ok(_) | Outcome::Unknown)
}

/// Whether `operation`, if it took effect, left the key holding `value`.
fn stores(operation: &Operation, value: &Option<String>) -> bool {
    match &operation.op {
        Op::Put(written) => value.as_deref() == Some(written.as_str()),
        Op::Delete => value.is_none(),
        Op::Cas { new, .. } => new == value,
        Op::Get => false,
    }
}

fn final_value_violation(
    key: &str,
    final_value: &Option<String>,
    last_acknowledged: Option<&Operation>,
    operations: &[&Operation],
) -> Violation {
    let mut window: Vec<Operation> = last_acknowledged.into_iter().cloned().collect();
    window.extend(
        operations
            .iter()
            .filter(|operation| {
                stores(operation, final_value)
                    && !last_acknowledged.is_some_and(|last| std::ptr::eq(last, **operation))
            })
            .map(|operation| (*operation).clone()),
    );
    let mut explanation =
        format!("key {key:?}: after the cluster healed it holds {}, but", ShowValue(final_value));
    match last_acknowledged {
        Some(_) => explanation.push_str(
            " the acknowledged write [1] was called after every write that could store that value had returned \
             (an acknowledged write was lost, or an older value came back):",
        ),
        None => explanation.push_str(" no write on the key could store that value:"),
    }
    for (position, operation) in window.iter().enumerate() {
        explanation.push_str(&format!("\n  [{}] {operation}", position + 1));
    }
    Violation { key: key.to_owned(), operations: window, explanation }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: Op, outcome: Outcome, call_ns: u64, return_ns: Option<u64>) -> Operation {
        Operation { client: 1, key: "k".into(), op, call_ns, return_ns, outcome }
    }

    fn put(value: &str, outcome: Outcome, call_ns: u64, return_ns: Option<u64>) -> Operation {
        record(Op::Put(value.into()), outcome, call_ns, return_ns)
    }

    fn get(value: Option<&str>, call_ns: u64, return_ns: u64) -> Operation {
        record(Op::Get, Outcome::Ok(value.map(str::to_owned)), call_ns, Some(return_ns))
    }

    #[test]
    fn phantom_reads() {
        let fine = [
            get(None, 0, 1),
            put("a", Outcome::Unknown, 2, None),
            get(Some("a"), 3, 4),
            record(
                Op::Cas { expected: Some("a".into()), new: Some("b".into()) },
                Outcome::Ok(None),
                5,
                Some(6),
            ),
            get(Some("b"), 7, 8),
        ];
        assert_eq!(check_no_phantom_reads(&fine), Ok(()));

        let never = [put("a", Outcome::Ok(None), 0, Some(1)), get(Some("zzz"), 2, 3)];
        let violation = check_no_phantom_reads(&never).unwrap_err();
        assert_eq!(violation.operations, vec![never[1].clone()]);
        assert!(violation.explanation.contains("no put or swap of that value was ever issued"));

        let failed = [put("a", Outcome::Failed, 0, Some(1)), get(Some("a"), 2, 3)];
        let violation = check_no_phantom_reads(&failed).unwrap_err();
        assert_eq!(violation.operations, vec![failed[1].clone(), failed[0].clone()]);

        let from_the_future = [get(Some("a"), 0, 1), put("a", Outcome::Ok(None), 2, Some(3))];
        assert!(check_no_phantom_reads(&from_the_future).is_err());

        let other_key = [
            Operation { key: "other".into(), ..put("a", Outcome::Ok(None), 0, Some(1)) },
            get(Some("a"), 2, 3),
        ];
        assert!(check_no_phantom_reads(&other_key).is_err());

        let swap_from_nothing =
            [record(Op::Cas { expected: Some("q".into()), new: None }, Outcome::Ok(None), 0, Some(1))];
        assert!(check_no_phantom_reads(&swap_from_nothing).is_err());
    }

    #[test]
    fn final_values() {
        let history = [
            put("a", Outcome::Ok(None), 0, Some(10)),
            put("b", Outcome::Ok(None), 5, Some(20)),
            put("c", Outcome::Unknown, 30, None),
            put("d", Outcome::Failed, 40, Some(41)),
            put("e", Outcome::Ok(None), 0, Some(4)),
        ];
        let finals = |value: Option<&str>| BTreeMap::from([("k".to_owned(), value.map(str::to_owned))]);
        // a and b overlap: either may be last; c may have happened after them.
        for value in ["a", "b", "c"] {
            assert_eq!(check_final_values(&history, &finals(Some(value))), Ok(()), "{value}");
        }
        // d failed; e returned before b was called; absence was overwritten by acknowledged writes.
        for value in [Some("d"), Some("e"), None] {
            let violation = check_final_values(&history, &finals(value)).unwrap_err();
            assert_eq!(violation.operations[0], history[1], "{value:?}");
        }
        // A key nobody acknowledged a write to may stay absent or hold an unknown write.
        let unknown_only = [put("x", Outcome::Unknown, 0, None)];
        assert_eq!(check_final_values(&unknown_only, &finals(None)), Ok(()));
        assert_eq!(check_final_values(&unknown_only, &finals(Some("x"))), Ok(()));
        assert!(check_final_values(&unknown_only, &finals(Some("y"))).is_err());
        // A delete stores absence.
        let deleted =
            [put("x", Outcome::Ok(None), 0, Some(1)), record(Op::Delete, Outcome::Ok(None), 2, Some(3))];
        assert_eq!(check_final_values(&deleted, &finals(None)), Ok(()));
        assert!(check_final_values(&deleted, &finals(Some("x"))).is_err());
    }
}
