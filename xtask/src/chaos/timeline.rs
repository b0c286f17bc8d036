//! The chaos run's picture: the nemesis' faults as shaded spans over the clients' completed
//! operations and errors per second and their latency (p50, p99) per second, written as
//! `timeline.svg` next to `report.txt`.

use std::path::Path;

use anyhow::Result;
use hdrhistogram::Histogram;

use super::history::{Operation, Outcome};
use crate::plot::{self, Panel, Series, Span};

/// Per-second counts and latencies of a history.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Second {
    /// Operations answered (a value, or a failed compare-and-swap).
    pub ok: u64,
    /// Operations refused with an error.
    pub failed: u64,
    /// Operations whose outcome is unknown (timed out, connection lost), counted at their call.
    pub unknown: u64,
    /// Latency of the answered ones, in ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The history cut into seconds since the start of the run.
pub fn per_second(history: &[Operation]) -> Vec<Second> {
    const NS: u64 = 1_000_000_000;
    let last = history.iter().map(|o| o.return_ns.unwrap_or(o.call_ns)).max().unwrap_or(0);
    let seconds = usize::try_from(last / NS + 1).unwrap_or(usize::MAX).min(24 * 3600);
    let mut out = vec![Second::default(); seconds];
    // Latencies in µs, 2 significant digits, up to an hour.
    let mut latencies: Vec<Option<Histogram<u64>>> = vec![None; seconds];
    for o in history {
        let at = o.return_ns.unwrap_or(o.call_ns);
        let Some(second) = usize::try_from(at / NS).ok().filter(|&s| s < seconds) else { continue };
        match (&o.outcome, o.return_ns) {
            (Outcome::Ok(_) | Outcome::CasFailed, Some(returned)) => {
                out[second].ok += 1;
                let micros = (returned.saturating_sub(o.call_ns) / 1_000).max(1);
                latencies[second]
                    .get_or_insert_with(|| {
                        Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
                    })
                    .saturating_record(micros);
            }
            (Outcome::Failed, _) => out[second].failed += 1,
            _ => out[second].unknown += 1,
        }
    }
    for (second, h) in out.iter_mut().zip(latencies) {
        if let Some(h) = h {
            second.p50_ms = h.value_at_quantile(0.5) as f64 / 1_000.0;
            second.p99_ms = h.value_at_quantile(0.99) as f64 / 1_000.0;
        }
    }
    out
}

/// Writes the timeline of a run to `path`.
pub fn write(path: &Path, title: &str, history: &[Operation], faults: &[Span]) -> Result<()> {
    let seconds = per_second(history);
    // Each second's figures are drawn at its middle.
    let line = |name: &str, color, value: &dyn Fn(&Second) -> f64| Series {
        name: name.to_string(),
        points: seconds.iter().enumerate().map(|(i, s)| (i as f64 + 0.5, value(s))).collect(),
        color,
    };
    let panels = [
        Panel {
            y_label: "operations per second".into(),
            series: vec![
                line("answered", plot::PALETTE[0], &|s| s.ok as f64),
                line("errors", plot::PALETTE[2], &|s| s.failed as f64),
                line("unknown (timeouts)", plot::PALETTE[1], &|s| s.unknown as f64),
            ],
            log_y: false,
        },
        Panel {
            y_label: "latency of answered operations (ms)".into(),
            series: vec![
                line("p50", plot::PALETTE[3], &|s| s.p50_ms),
                line("p99", plot::PALETTE[4], &|s| s.p99_ms),
            ],
            log_y: true,
        },
    ];
    plot::timeline(path, title, &panels, faults)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::Op;

    fn op(call_ms: u64, return_ms: Option<u64>, outcome: Outcome) -> Operation {
        Operation {
            client: 1,
            key: "k".into(),
            op: Op::Get,
            call_ns: call_ms * 1_000_000,
            return_ns: return_ms.map(|ms| ms * 1_000_000),
            outcome,
        }
    }

    #[test]
    fn operations_fall_in_the_second_they_were_answered_or_called() {
        let history = [
            op(100, Some(110), Outcome::Ok(None)),
            op(900, Some(1_300), Outcome::CasFailed),
            op(1_500, Some(1_600), Outcome::Failed),
            op(2_100, None, Outcome::Unknown),
        ];
        let seconds = per_second(&history);
        assert_eq!(seconds.len(), 3);
        assert_eq!((seconds[0].ok, seconds[0].failed, seconds[0].unknown), (1, 0, 0));
        assert_eq!((seconds[1].ok, seconds[1].failed, seconds[1].unknown), (1, 1, 0));
        assert_eq!((seconds[2].ok, seconds[2].failed, seconds[2].unknown), (0, 0, 1));
        assert!((seconds[0].p99_ms - 10.0).abs() < 0.2, "{:?}", seconds[0]);
        assert!((seconds[1].p50_ms - 400.0).abs() < 5.0, "{:?}", seconds[1]);
        assert_eq!(seconds[2].p99_ms, 0.0);
    }
}
