//! Histories as JSON lines: one [`Operation`] per line, the format the chaos test saves.

use std::io::{BufRead, Write};

use crate::history::Operation;

/// Reading or writing a JSON-lines history failed.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// The underlying reader or writer failed.
    #[error("history i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not one JSON-encoded [`Operation`].
    #[error("history line {line}: not an operation: {source}")]
    Parse {
        /// One-based line number.
        line: usize,
        /// What the JSON decoder said.
        source: serde_json::Error,
    },
    /// An operation could not be encoded (does not happen for well-formed values; kept so that
    /// no encoder error is swallowed).
    #[error("cannot encode an operation: {0}")]
    Encode(serde_json::Error),
}

/// Reads a history written by [`write_jsonl`]: one JSON [`Operation`] per line; blank lines are
/// skipped. Fails on the first line that does not parse, naming it.
pub fn read_jsonl(reader: impl BufRead) -> Result<Vec<Operation>, JsonlError> {
    let mut history = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let operation =
            serde_json::from_str(&line).map_err(|source| JsonlError::Parse { line: index + 1, source })?;
        history.push(operation);
    }
    Ok(history)
}

/// Writes `operations` as JSON lines (one per line, each ending in `\n`) and flushes. Appending
/// one operation at a time (a one-element slice) to the same writer gives the same file.
pub fn write_jsonl(mut writer: impl Write, operations: &[Operation]) -> Result<(), JsonlError> {
    for operation in operations {
        serde_json::to_writer(&mut writer, operation).map_err(JsonlError::Encode)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Outcome};

    #[test]
    fn round_trips_every_variant() {
        let ops = [
            (Op::Get, Outcome::Ok(None), Some(3)),
            (Op::Get, Outcome::Ok(Some("x\ny".into())), Some(3)),
            (Op::Put("a".into()), Outcome::Unknown, None),
            (Op::Delete, Outcome::Failed, Some(4)),
            (Op::Cas { expected: None, new: Some("b".into()) }, Outcome::CasFailed, Some(9)),
            (Op::Cas { expected: Some("b".into()), new: None }, Outcome::Ok(None), Some(9)),
        ];
        let history: Vec<Operation> = ops
            .into_iter()
            .enumerate()
            .map(|(i, (op, outcome, return_ns))| Operation {
                client: i as u64,
                key: format!("k{i}"),
                op,
                call_ns: 1,
                return_ns,
                outcome,
            })
            .collect();
        let mut bytes = Vec::new();
        write_jsonl(&mut bytes, &history).unwrap();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), history.len());
        let mut with_blank = b"\n".to_vec();
        with_blank.extend_from_slice(&bytes);
        assert_eq!(read_jsonl(&with_blank[..]).unwrap(), history);
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = "{\"client\":1,\"key\":\"k\",\"op\":\"get\",\"call_ns\":1,\"return_ns\":2,\"outcome\":{\"ok\":null}}\n\
                    {\"client\":1}\n";
        match read_jsonl(text.as_bytes()) {
            Err(JsonlError::Parse { line: 2, .. }) => {}
            other => panic!("expected a parse error on line 2, got {other:?}"),
        }
    }
}
