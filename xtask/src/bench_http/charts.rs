//! The charts of a `cargo xtask bench` run, next to its JSON report: latency percentile
//! curves of every target and phase, and each run's throughput and p99 second by second.
//! Each curve is the phase's first run (the medians are in the text report).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::report::TargetReport;
use crate::plot::{self, Panel, Series};

/// Writes `<stem>-latency.svg` and `<stem>-timeline.svg` to `dir`; returns their paths.
pub(crate) fn write(dir: &Path, stem: &str, targets: &[TargetReport]) -> Result<Vec<PathBuf>> {
    // Each chart numbers its lines from the palette's start.
    let color = |i: usize| plot::PALETTE[i % plot::PALETTE.len()];
    let mut curves = Vec::new();
    let mut throughput = Vec::new();
    let mut p99 = Vec::new();
    for target in targets {
        for phase in &target.phases {
            let Some(run) = phase.runs.first() else { continue };
            for (kind, points) in [("writes", &run.write_percentiles_ms), ("reads", &run.read_percentiles_ms)]
            {
                if !points.is_empty() {
                    let name = format!("{} {kind} ({} phase)", target.target, phase.phase);
                    curves.push(Series { name, points: points.clone(), color: color(curves.len()) });
                }
            }
            if run.timeline.is_empty() {
                continue;
            }
            let line_color = color(throughput.len());
            let name = format!("{} ({} phase)", target.target, phase.phase);
            let at = |i: usize| i as f64 + 0.5;
            throughput.push(Series {
                name: name.clone(),
                points: run.timeline.iter().enumerate().map(|(i, s)| (at(i), s.ok as f64)).collect(),
                color: line_color,
            });
            p99.push(Series {
                name,
                points: run.timeline.iter().enumerate().map(|(i, s)| (at(i), s.p99_ms)).collect(),
                color: line_color,
            });
        }
    }
    let mut written = Vec::new();
    if !curves.is_empty() {
        let path = dir.join(format!("{stem}-latency.svg"));
        plot::percentiles(&path, "latency of successful requests, by percentile", &curves)?;
        written.push(path);
    }
    if !throughput.is_empty() {
        let path = dir.join(format!("{stem}-timeline.svg"));
        let panels = [
            Panel { y_label: "successful requests per second".into(), series: throughput, log_y: false },
            Panel { y_label: "p99 latency (ms)".into(), series: p99, log_y: true },
        ];
        plot::timeline(&path, "each phase's first run, second by second", &panels, &[])?;
        written.push(path);
    }
    Ok(written)
}
