//! Charts of the bench and chaos runs, as SVG files next to their text reports: lines over
//! time with shaded spans (a chaos run's faults), and latency percentile curves. Drawn with
//! `plotters` (SVG backend, text laid out with the embedded DejaVu Sans: nothing to install).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// (x, y) points, x increasing.
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// A shaded interval of the x axis, with a label (a fault of a chaos run).
#[derive(Debug, Clone)]
pub struct Span {
    pub label: String,
    pub from: f64,
    pub to: f64,
}

/// A panel of a timeline: lines against one y axis.
#[derive(Debug, Clone)]
pub struct Panel {
    pub y_label: String,
    pub series: Vec<Series>,
    /// A logarithmic y axis (latencies).
    pub log_y: bool,
}

/// Colours the charts use, in order.
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(21, 101, 192),
    RGBColor(239, 108, 0),
    RGBColor(198, 40, 40),
    RGBColor(46, 125, 50),
    RGBColor(106, 27, 154),
    RGBColor(96, 96, 96),
];

const FONT: &str = "sans-serif";

/// Registers the embedded font once; plotters needs it to measure text.
fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font could not be loaded"))
    }
}

fn plotting<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// Panels stacked over a shared time axis (seconds), each with the spans shaded behind its
/// lines and, on the first panel, labelled.
pub fn timeline(path: &Path, title: &str, panels: &[Panel], spans: &[Span]) -> Result<()> {
    font()?;
    let height = 120 + 300 * panels.len() as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plotting)?;
    let root = root.titled(title, (FONT, 22)).map_err(plotting)?;
    let x_max = panels
        .iter()
        .flat_map(|p| p.series.iter().flat_map(|s| s.points.iter().map(|&(x, _)| x)))
        .chain(spans.iter().map(|s| s.to))
        .fold(1.0_f64, f64::max);
    let areas = root.split_evenly((panels.len(), 1));
    for (index, (panel, area)) in panels.iter().zip(areas.iter()).enumerate() {
        draw_panel(area, panel, spans, x_max, index == 0)?;
    }
    root.present().map_err(plotting)?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Panel,
    spans: &[Span],
    x_max: f64,
    label_spans: bool,
) -> Result<()> {
    let values = || panel.series.iter().flat_map(|s| s.points.iter().map(|&(_, y)| y));
    let y_max = values().fold(0.0_f64, f64::max).max(if panel.log_y { 1.0 } else { 1e-9 }) * 1.15;
    let mut builder = ChartBuilder::on(area);
    builder.margin(12).x_label_area_size(36).y_label_area_size(70);
    if panel.log_y {
        let y_min = values().filter(|&y| y > 0.0).fold(f64::INFINITY, f64::min);
        let y_min = if y_min.is_finite() { (y_min / 2.0).max(1e-3) } else { 0.1 };
        let mut chart = builder
            .build_cartesian_2d(0.0..x_max, (y_min..y_max.max(y_min * 10.0)).log_scale())
            .map_err(plotting)?;
        chart.configure_mesh().x_desc("seconds").y_desc(&panel.y_label).draw().map_err(plotting)?;
        let floor = y_min;
        let top = y_max.max(y_min * 10.0);
        draw_spans(&mut chart, spans, floor, top, label_spans)?;
        // A second without a value (nothing answered) is a gap, not a line across it.
        draw_lines(&mut chart, &panel.series, true)?;
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    } else {
        let mut chart = builder.build_cartesian_2d(0.0..x_max, 0.0..y_max).map_err(plotting)?;
        chart.configure_mesh().x_desc("seconds").y_desc(&panel.y_label).draw().map_err(plotting)?;
        draw_spans(&mut chart, spans, 0.0, y_max, label_spans)?;
        draw_lines(&mut chart, &panel.series, false)?;
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    Ok(())
}

type Chart<'a, Y> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

/// Draws each series as a line with its legend entry; with `gaps`, a point of 0 or less
/// breaks the line (a logarithmic axis has no place for it).
fn draw_lines<Y>(chart: &mut Chart<'_, Y>, series: &[Series], gaps: bool) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    for s in series {
        let color = s.color;
        let runs: Vec<&[(f64, f64)]> = if gaps {
            s.points.split(|&(_, y)| y <= 0.0).filter(|run| !run.is_empty()).collect()
        } else {
            vec![&s.points[..]]
        };
        for (i, run) in runs.into_iter().enumerate() {
            let drawn = chart
                .draw_series(LineSeries::new(run.iter().copied(), color.stroke_width(2)))
                .map_err(plotting)?;
            if i == 0 {
                drawn
                    .label(&s.name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
        }
    }
    Ok(())
}

fn draw_spans<Y>(chart: &mut Chart<'_, Y>, spans: &[Span], bottom: f64, top: f64, label: bool) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    let shade = RGBColor(255, 160, 0).mix(0.18).filled();
    chart
        .draw_series(spans.iter().map(|s| Rectangle::new([(s.from, bottom), (s.to, top)], shade)))
        .map_err(plotting)?;
    if label {
        // Labels stagger over three rows so that short neighbouring faults stay readable.
        let rows = [0.97, 0.90, 0.83];
        chart
            .draw_series(spans.iter().enumerate().map(|(i, s)| {
                let y = if bottom > 0.0 {
                    // Logarithmic axis: place by the exponent.
                    bottom * (top / bottom).powf(rows[i % rows.len()])
                } else {
                    top * rows[i % rows.len()]
                };
                Text::new(s.label.clone(), (s.from, y), (FONT, 12).into_font().color(&BLACK))
            }))
            .map_err(plotting)?;
    }
    Ok(())
}

fn legend<Y>(chart: &mut Chart<'_, Y>, position: SeriesLabelPosition) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(plotting)
}

/// Latency percentile curves: x is the percentile on a "nines" axis (50, 90, 99, 99.9, ...),
/// y the latency in ms (logarithmic). Each curve is `(quantile in 0..1, ms)` points.
pub fn percentiles(path: &Path, title: &str, curves: &[Series]) -> Result<()> {
    font()?;
    // x = -log10(1 - q): 50 % -> 0.3, 90 % -> 1, 99 % -> 2, 99.9 % -> 3.
    let nines = |q: f64| -(1.0 - q.min(0.99999)).log10();
    let curves: Vec<Series> = curves
        .iter()
        .map(|c| Series {
            name: c.name.clone(),
            points: c.points.iter().filter(|&&(_, ms)| ms > 0.0).map(|&(q, ms)| (nines(q), ms)).collect(),
            color: c.color,
        })
        .collect();
    let ys = || curves.iter().flat_map(|c| c.points.iter().map(|&(_, y)| y));
    let y_min = ys().fold(f64::INFINITY, f64::min);
    let y_max = ys().fold(0.0_f64, f64::max);
    let (y_min, y_max) = if y_min.is_finite() { ((y_min / 1.5).max(1e-3), y_max * 1.5) } else { (0.1, 10.0) };
    // Whole nines, so that the ticks fall on 90, 99, 99.9, ...
    let x_max = curves.iter().flat_map(|c| c.points.iter().map(|&(x, _)| x)).fold(2.0_f64, f64::max).ceil();
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plotting)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max.max(y_min * 10.0)).log_scale())
        .map_err(plotting)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            if p < 99.0 {
                format!("{p:.0}")
            } else {
                format!("{p:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
            }
        })
        .draw()
        .map_err(plotting)?;
    draw_lines(&mut chart, &curves, false)?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(plotting)?;
    Ok(())
}

/// The quantiles a percentile chart samples.
pub const QUANTILES: [f64; 12] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_and_a_percentile_chart_are_written_as_svg_with_their_text() {
        let dir = tempfile_dir();
        let timeline_path = dir.join("timeline.svg");
        let ops = Series {
            name: "ok ops/s".into(),
            points: (0..60)
                .map(|s| (f64::from(s), if (20..30).contains(&s) { 5.0 } else { 120.0 }))
                .collect(),
            color: PALETTE[0],
        };
        let p99 = Series {
            name: "p99 ms".into(),
            points: vec![(0.0, 3.0), (25.0, 800.0), (59.0, 4.0)],
            color: PALETTE[2],
        };
        let panels = [
            Panel { y_label: "operations/s".into(), series: vec![ops], log_y: false },
            Panel { y_label: "latency (ms)".into(), series: vec![p99], log_y: true },
        ];
        let spans = [Span { label: "partition {1} | {2,3}".into(), from: 20.0, to: 30.0 }];
        timeline(&timeline_path, "chaos seed 1", &panels, &spans).unwrap();
        let svg = std::fs::read_to_string(&timeline_path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for text in ["chaos seed 1", "partition {1} | {2,3}", "ok ops/s", "p99 ms", "seconds"] {
            let escaped = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            assert!(svg.contains(&escaped), "{text} missing");
        }
        assert!(svg.contains("<polyline"), "no line drawn");
        // A second without a value splits a latency line in two instead of bridging it.
        let lines = |gap: f64| {
            let series = Series {
                name: "p99".into(),
                points: vec![(0.0, 3.0), (1.0, 4.0), (2.0, gap), (3.0, 5.0), (4.0, 6.0)],
                color: PALETTE[3],
            };
            let path = dir.join(format!("gap-{gap}.svg"));
            timeline(&path, "gap", &[Panel { y_label: "ms".into(), series: vec![series], log_y: true }], &[])
                .unwrap();
            std::fs::read_to_string(&path).unwrap().matches("<polyline").count()
        };
        assert_eq!(lines(0.0), lines(4.5) + 1);

        let percentile_path = dir.join("latency.svg");
        let curve = Series {
            name: "raft-node writes".into(),
            points: QUANTILES.iter().map(|&q| (q, 1.0 + 100.0 * q * q)).collect(),
            color: PALETTE[0],
        };
        percentiles(&percentile_path, "write latency", &[curve]).unwrap();
        let svg = std::fs::read_to_string(&percentile_path).unwrap();
        for text in ["write latency", "raft-node writes", "percentile", "99.9"] {
            assert!(svg.contains(text), "{text} missing");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
