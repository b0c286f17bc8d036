//! The recorded history: what each client asked ([`Op`]), what it saw ([`Outcome`]), and when
//! ([`Operation`]), plus [`validate_history`], which rejects records no recorder should produce.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a client asked, on one key. The model is a register holding `Option<String>`
/// (`None` = the key is absent); every key starts absent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Read the key.
    Get,
    /// Set the key to a value.
    Put(String),
    /// Remove the key (succeeds whether or not it exists).
    Delete,
    /// Compare-and-swap: if the key holds `expected` (`None` = absent), set it to `new`
    /// (`None` = remove it); otherwise change nothing and answer [`Outcome::CasFailed`].
    Cas {
        /// The value the key must hold for the swap to happen.
        expected: Option<String>,
        /// The value the key holds after a successful swap.
        new: Option<String>,
    },
}

impl Op {
    /// Whether this operation can change the register (everything but [`Op::Get`]).
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get)
    }
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed: for [`Op::Get`] the value read; for `Put`, `Delete` and a successful `Cas`,
    /// `None`.
    Ok(Option<String>),
    /// The `Cas` was answered `cas_failed`: it took effect as a read that saw a value other
    /// than `expected`.
    CasFailed,
    /// Definitely not applied (refused before it was proposed: `bad_request`, `not_leader`
    /// without forwarding, ...). The checker drops these.
    Failed,
    /// Unknown (timeout, connection lost): a write may take effect at any time after its call,
    /// or never; a read with this outcome is dropped.
    Unknown,
}

/// One client operation on one key, with its real-time interval.
///
/// Times are nanoseconds on one clock shared by all clients (for example since the start of
/// the test). Intervals are closed: an operation that returns at the same nanosecond another
/// is called counts as concurrent with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// The client (process) that issued the operation; used in explanations only.
    pub client: u64,
    /// The key operated on; keys are checked independently.
    pub key: String,
    /// What was asked.
    pub op: Op,
    /// When the request was sent.
    pub call_ns: u64,
    /// When the answer arrived; `None` for [`Outcome::Unknown`] (ignored for it if present).
    pub return_ns: Option<u64>,
    /// What the client saw.
    pub outcome: Outcome,
}

impl Operation {
    /// Whether the checker must place this operation in its linearization: a completed
    /// operation ([`Outcome::Ok`] or [`Outcome::CasFailed`]).
    pub fn is_completed(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_) | Outcome::CasFailed)
    }
}

/// A record that no correct recorder produces; [`crate::check`] reports it as
/// [`crate::Verdict::GaveUp`] (a failed run), and [`validate_history`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// A completed or failed operation has no return time.
    #[error("operation #{index} ({operation}) has outcome {outcome} but no return time")]
    MissingReturn {
        /// Position in the history.
        index: usize,
        /// The operation, formatted.
        operation: String,
        /// Its outcome's name.
        outcome: &'static str,
    },
    /// An operation returned before it was called.
    #[error("operation #{index} ({operation}) returns at {return_ns} ns, before its call at {call_ns} ns")]
    ReturnBeforeCall {
        /// Position in the history.
        index: usize,
        /// The operation, formatted.
        operation: String,
        /// Its call time.
        call_ns: u64,
        /// Its return time.
        return_ns: u64,
    },
    /// The outcome cannot answer this kind of operation (a `Get` that answered `CasFailed`, a
    /// `Put` that read a value, ...).
    #[error("operation #{index} ({operation}): outcome {outcome} cannot answer this operation")]
    OutcomeMismatch {
        /// Position in the history.
        index: usize,
        /// The operation, formatted.
        operation: String,
        /// Its outcome's name.
        outcome: &'static str,
    },
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Ok(None) => "ok",
            Outcome::Ok(Some(_)) => "ok(value)",
            Outcome::CasFailed => "cas_failed",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Checks that every record is well-formed: completed and failed operations have a return time
/// not before their call, and each outcome fits its operation (`Put`, `Delete` and a successful
/// `Cas` answer `Ok(None)`; only `Cas` answers `CasFailed`). [`Outcome::Unknown`] records may
/// carry any return time (it is ignored).
pub fn validate_history(history: &[Operation]) -> Result<(), HistoryError> {
    for (index, operation) in history.iter().enumerate() {
        validate_one(index, operation)?;
    }
    Ok(())
}

pub(crate) fn validate_one(index: usize, operation: &Operation) -> Result<(), HistoryError> {
    let outcome = &operation.outcome;
    if matches!(outcome, Outcome::Unknown) {
        return Ok(());
    }
    let Some(return_ns) = operation.return_ns else {
        return Err(HistoryError::MissingReturn {
            index,
            operation: operation.to_string(),
            outcome: outcome.name(),
        });
    };
    if return_ns < operation.call_ns {
        return Err(HistoryError::ReturnBeforeCall {
            index,
            operation: operation.to_string(),
            call_ns: operation.call_ns,
            return_ns,
        });
    }
    let fits = matches!(
        (&operation.op, outcome),
        (_, Outcome::Failed)
            | (Op::Get, Outcome::Ok(_))
            | (Op::Put(_) | Op::Delete | Op::Cas { .. }, Outcome::Ok(None))
            | (Op::Cas { .. }, Outcome::CasFailed)
    );
    if fits {
        Ok(())
    } else {
        Err(HistoryError::OutcomeMismatch {
            index,
            operation: operation.to_string(),
            outcome: outcome.name(),
        })
    }
}

/// Formats a register value: `"text"` (quoted, escaped) or `absent`.
pub(crate) struct ShowValue<'a>(pub &'a Option<String>);

impl fmt::Display for ShowValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value:?}"),
            None => f.write_str("absent"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Get => f.write_str("get"),
            Op::Put(value) => write!(f, "put {value:?}"),
            Op::Delete => f.write_str("delete"),
            Op::Cas { expected, new } => write!(f, "cas {} -> {}", ShowValue(expected), ShowValue(new)),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(None) => f.write_str("ok"),
            Outcome::Ok(Some(value)) => write!(f, "ok {value:?}"),
            Outcome::CasFailed => f.write_str("cas_failed"),
            Outcome::Failed => f.write_str("failed"),
            Outcome::Unknown => f.write_str("unknown"),
        }
    }
}

/// `client 3 "k": get => ok "a" [100, 250] ns`; a `Get` that read nothing shows `=> absent`, an
/// operation without a known return `[100, ...] ns`.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} {:?}: {} => ", self.client, self.key, self.op)?;
        match (&self.op, &self.outcome) {
            (Op::Get, Outcome::Ok(None)) => f.write_str("absent")?,
            (_, outcome) => write!(f, "{outcome}")?,
        }
        match (self.return_ns, &self.outcome) {
            (Some(return_ns), outcome) if !matches!(outcome, Outcome::Unknown) => {
                write!(f, " [{}, {return_ns}] ns", self.call_ns)
            }
            _ => write!(f, " [{}, ...] ns", self.call_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: Op, outcome: Outcome, return_ns: Option<u64>) -> Operation {
        Operation { client: 1, key: "k".into(), op, call_ns: 10, return_ns, outcome }
    }

    #[test]
    fn well_formed_records_pass() {
        let history = [
            op(Op::Get, Outcome::Ok(Some("a".into())), Some(20)),
            op(Op::Put("a".into()), Outcome::Ok(None), Some(10)),
            op(Op::Delete, Outcome::Unknown, None),
            op(Op::Delete, Outcome::Unknown, Some(5)),
            op(Op::Cas { expected: None, new: Some("b".into()) }, Outcome::CasFailed, Some(30)),
            op(Op::Get, Outcome::Failed, Some(11)),
        ];
        assert_eq!(validate_history(&history), Ok(()));
    }

    #[test]
    fn malformed_records_are_rejected() {
        let missing = op(Op::Get, Outcome::Ok(None), None);
        assert!(matches!(validate_history(&[missing]), Err(HistoryError::MissingReturn { index: 0, .. })));
        let backwards = op(Op::Get, Outcome::Ok(None), Some(9));
        assert!(matches!(validate_history(&[backwards]), Err(HistoryError::ReturnBeforeCall { .. })));
        let put_read = op(Op::Put("a".into()), Outcome::Ok(Some("a".into())), Some(20));
        assert!(matches!(validate_history(&[put_read]), Err(HistoryError::OutcomeMismatch { .. })));
        let get_cas_failed = op(Op::Get, Outcome::CasFailed, Some(20));
        let fine = op(Op::Get, Outcome::Ok(None), Some(20));
        assert!(matches!(
            validate_history(&[fine, get_cas_failed]),
            Err(HistoryError::OutcomeMismatch { index: 1, .. })
        ));
    }

    #[test]
    fn operations_format_readably() {
        let read = op(Op::Get, Outcome::Ok(None), Some(20));
        assert_eq!(read.to_string(), "client 1 \"k\": get => absent [10, 20] ns");
        let cas = op(Op::Cas { expected: None, new: Some("b".into()) }, Outcome::Unknown, None);
        assert_eq!(cas.to_string(), "client 1 \"k\": cas absent -> \"b\" => unknown [10, ...] ns");
    }
}
