//! The recorder's side of the history: the one place that knows the checker crate
//! (`raft-linearizability`), so that a change of its API is a change here only.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use raft_linearizability::{CheckOptions, Verdict};
pub use raft_linearizability::{Op, Operation, Outcome};

/// Every recorded operation, with times in nanoseconds since the start of the run
/// (monotonic, one clock for every client).
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    operations: Arc<Mutex<Vec<Operation>>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Self { start, operations: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Nanoseconds since the start.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records one operation. `Outcome::Unknown` has no return time (it may take effect at
    /// any time after its call).
    pub fn record(&self, client: u64, key: &str, op: Op, call_ns: u64, outcome: Outcome) {
        let return_ns = match outcome {
            Outcome::Unknown => None,
            _ => Some(self.now_ns()),
        };
        let operation = Operation { client, key: key.to_owned(), op, call_ns, return_ns, outcome };
        if let Ok(mut ops) = self.operations.lock() {
            ops.push(operation);
        }
    }

    /// The outcome of `client`'s latest recorded operation.
    pub fn last_outcome(&self, client: u64) -> Option<Outcome> {
        let ops = self.operations.lock().ok()?;
        ops.iter().rev().find(|o| o.client == client).map(|o| o.outcome.clone())
    }

    pub fn snapshot(&self) -> Vec<Operation> {
        self.operations.lock().map(|ops| ops.clone()).unwrap_or_default()
    }
}

/// Counts by kind and outcome, for the report.
pub fn summary(history: &[Operation]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in history {
        let kind = match o.op {
            Op::Get => "get",
            Op::Put(_) => "put",
            Op::Delete => "delete",
            Op::Cas { .. } => "cas",
        };
        let outcome = match o.outcome {
            Outcome::Ok(_) => "ok",
            Outcome::CasFailed => "cas_failed",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        *counts.entry(format!("{kind} {outcome}")).or_default() += 1;
    }
    counts.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
}

/// Linearizability of the whole history. `Err` with the explanation on a violation, and
/// also when the checker gave up (nothing proven is a failure).
pub fn check_linearizable(history: &[Operation], time_budget: Duration) -> Result<(), String> {
    // Up to 4 million memoized states per key (a few hundred bytes each for a key of a few
    // thousand operations; up to 4 keys at once).
    let options = CheckOptions { time_budget, max_states: 4_000_000, ..CheckOptions::default() };
    match raft_linearizability::check(history, &options) {
        Verdict::Linearizable => Ok(()),
        Verdict::NotLinearizable(violation) => Err(format!("NOT LINEARIZABLE: {violation}")),
        other => Err(format!("the checker gave up (a failure): {other}")),
    }
}

/// No read returned a value that was never written.
pub fn check_phantom_reads(history: &[Operation]) -> Result<(), String> {
    raft_linearizability::check_no_phantom_reads(history).map_err(|v| format!("phantom read: {v}"))
}

/// No acknowledged write was lost: each key's final value could be the last write's.
pub fn check_final_values(
    history: &[Operation],
    finals: &BTreeMap<String, Option<String>>,
) -> Result<(), String> {
    raft_linearizability::check_final_values(history, finals).map_err(|v| format!("lost write: {v}"))
}

/// Writes the history as JSON lines.
pub fn write_history(path: &Path, history: &[Operation]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    raft_linearizability::write_jsonl(std::io::BufWriter::new(file), history)
        .with_context(|| format!("writing {}", path.display()))
}
