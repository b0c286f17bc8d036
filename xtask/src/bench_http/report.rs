//! Figures of a `bench-http` run: per-phase throughput and latency (one run, and the median
//! of several), CPU and memory of the processes from `/proc`, the printed tables and the JSON
//! file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::histogram::Histogram;
use super::load::PhaseResult;

/// Latency of one kind of request, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

impl Latency {
    fn of(h: &Histogram) -> Self {
        Self {
            count: h.count(),
            mean_ms: ms(h.mean()),
            p50_ms: ms(h.quantile(0.50)),
            p99_ms: ms(h.quantile(0.99)),
            p999_ms: ms(h.quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// CPU time used during a measured window, as a percentage of one core.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct CpuUse {
    /// The servers (all nodes or members together).
    pub servers_percent: f64,
    /// The load generator (this process).
    pub client_percent: f64,
    /// The other systems, up but not under load meanwhile (heartbeats, background flushes and
    /// compactions left from their own turns): CPU the measured system could not use.
    pub idle_systems_percent: f64,
}

/// What one run of one phase measured.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Figures {
    pub window_s: f64,
    pub writes_per_s: f64,
    pub reads_per_s: f64,
    pub write: Latency,
    pub read: Latency,
    pub errors: BTreeMap<String, u64>,
    /// Failed requests outside the window (warm-up, or answered after it).
    pub errors_outside: u64,
    pub cpu: CpuUse,
    /// Latency of successful writes at [`crate::plot::QUANTILES`]: (quantile, ms).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub write_percentiles_ms: Vec<(f64, f64)>,
    /// The same for reads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub read_percentiles_ms: Vec<(f64, f64)>,
    /// The window second by second.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<SecondFigures>,
}

/// One second of a run's window.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SecondFigures {
    /// Successful requests answered in this second.
    pub ok: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Figures {
    pub(crate) fn of(result: &PhaseResult, cpu: CpuUse) -> Self {
        let secs = result.window.as_secs_f64().max(1e-9);
        let percentiles = |h: &Histogram| -> Vec<(f64, f64)> {
            if h.count() == 0 {
                return Vec::new();
            }
            crate::plot::QUANTILES.iter().map(|&q| (q, h.quantile(q) as f64 / 1e6)).collect()
        };
        let timeline = result
            .seconds
            .iter()
            .map(|s| {
                let at = |q| s.latency.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1e3);
                SecondFigures { ok: s.ok, errors: s.errors, p50_ms: at(0.5), p99_ms: at(0.99) }
            })
            .collect();
        Self {
            write_percentiles_ms: percentiles(&result.writes),
            read_percentiles_ms: percentiles(&result.reads),
            timeline,
            window_s: result.window.as_secs_f64(),
            writes_per_s: result.writes.count() as f64 / secs,
            reads_per_s: result.reads.count() as f64 / secs,
            write: Latency::of(&result.writes),
            read: Latency::of(&result.reads),
            errors: result.errors.clone(),
            errors_outside: result.errors_outside,
            cpu,
        }
    }

    /// The servers' CPU time per successful request, in µs (0 when none succeeded).
    pub(crate) fn server_cpu_us_per_request(&self) -> f64 {
        let per_s = self.writes_per_s + self.reads_per_s;
        if per_s <= 0.0 {
            return 0.0;
        }
        self.cpu.servers_percent / 100.0 * 1e6 / per_s
    }

    /// The median of each figure over several runs (errors: the sum over all runs).
    pub(crate) fn median(runs: &[Figures]) -> Figures {
        let m = |f: &dyn Fn(&Figures) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let latency = |pick: &dyn Fn(&Figures) -> &Latency| Latency {
            count: m(&|r| pick(r).count as f64) as u64,
            mean_ms: m(&|r| pick(r).mean_ms),
            p50_ms: m(&|r| pick(r).p50_ms),
            p99_ms: m(&|r| pick(r).p99_ms),
            p999_ms: m(&|r| pick(r).p999_ms),
            max_ms: m(&|r| pick(r).max_ms),
        };
        let mut errors = BTreeMap::new();
        for run in runs {
            for (kind, count) in &run.errors {
                *errors.entry(kind.clone()).or_default() += count;
            }
        }
        Figures {
            window_s: m(&|r| r.window_s),
            writes_per_s: m(&|r| r.writes_per_s),
            reads_per_s: m(&|r| r.reads_per_s),
            write: latency(&|r| &r.write),
            read: latency(&|r| &r.read),
            errors,
            cpu: CpuUse {
                servers_percent: m(&|r| r.cpu.servers_percent),
                client_percent: m(&|r| r.cpu.client_percent),
                idle_systems_percent: m(&|r| r.cpu.idle_systems_percent),
            },
            errors_outside: runs.iter().map(|r| r.errors_outside).sum(),
            // Curves are not medians of anything: the charts show each run's own.
            write_percentiles_ms: Vec::new(),
            read_percentiles_ms: Vec::new(),
            timeline: Vec::new(),
        }
    }
}

/// The median of some values (the mean of the middle two for an even count; 0 for none).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One phase against one target: every run and their median.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseReport {
    /// `write`, `read` or `mixed`.
    pub phase: String,
    pub read_ratio: f64,
    pub runs: Vec<Figures>,
    pub median: Figures,
}

/// Memory of one server process after the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessMemory {
    pub name: String,
    pub pid: u32,
    /// `VmRSS`.
    pub rss_kib: u64,
    /// `VmHWM`, the peak resident set.
    pub peak_rss_kib: u64,
}

/// Everything measured against one target.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TargetReport {
    /// `raft` or `etcd`.
    pub target: String,
    /// What ran: binary, version, nodes, storage.
    pub description: String,
    pub phases: Vec<PhaseReport>,
    pub memory: Vec<ProcessMemory>,
    /// Failed writes while each key was written once before the phases (0 when none ran).
    pub fill_errors: u64,
}

/// Reads `VmRSS` and `VmHWM` of a process.
pub(crate) fn memory_of(name: &str, pid: u32) -> Option<ProcessMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(ProcessMemory {
        name: name.to_string(),
        pid,
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:")?,
    })
}

/// User + system CPU time of a process (`/proc/<pid>/stat`; `self` for this one).
pub(crate) fn cpu_time(pid: &str) -> Duration {
    // utime and stime are fields 14 and 15, in clock ticks; USER_HZ is 100 on Linux's ABI.
    const TICKS_PER_S: u64 = 100;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // After ")": state is field 3, so field N is at index N - 3.
    Duration::from_millis((ticks(14 - 3) + ticks(15 - 3)) * 1000 / TICKS_PER_S)
}

/// `20250102T030405Z` (UTC) for file names.
pub(crate) fn timestamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The throughput and latency table, one row per target, phase and kind of request.
pub(crate) fn figures_table(targets: &[TargetReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<7} {:<5} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>11}",
        "target",
        "phase",
        "op",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "errors",
        "srv CPU",
        "cli CPU",
        "srv us/req"
    );
    for target in targets {
        for phase in &target.phases {
            let m = &phase.median;
            let errors: u64 = m.errors.values().sum();
            let rows = [("write", m.writes_per_s, &m.write), ("read", m.reads_per_s, &m.read)];
            for (op, rate, latency) in rows.into_iter().filter(|(_, _, l)| l.count > 0) {
                let _ = writeln!(
                    out,
                    "{:<9} {:<7} {:<5} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>7} {:>8.0}% {:>8.0}% {:>11.0}",
                    target.target,
                    phase.phase,
                    op,
                    thousands(rate),
                    latency.p50_ms,
                    latency.p99_ms,
                    latency.p999_ms,
                    latency.max_ms,
                    errors,
                    m.cpu.servers_percent,
                    m.cpu.client_percent,
                    m.server_cpu_us_per_request()
                );
            }
            for (kind, count) in &m.errors {
                let _ = writeln!(out, "{:<20} error {kind}: {count}", "");
            }
        }
    }
    out
}

/// raft against another target (etcd) for every phase and kind of request both have: the
/// medians' ratios, the failed requests of all runs, and the servers' CPU per request (of
/// the phase: a mixed phase's CPU is shared by its reads and writes).
pub(crate) fn ratio_table(raft: &TargetReport, other: &TargetReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<7} {:<5} {:>12} {:>15} {:>8} {:>11} {:>11} {:>8} {:>13} {:>16}",
        "phase",
        "op",
        "raft ops/s",
        format!("{} ops/s", other.target),
        "ratio",
        "raft p99 ms",
        "its p99 ms",
        "ratio",
        "errors r/o",
        "srv us/req r/o"
    );
    let errors = |p: &PhaseReport| -> u64 { p.runs.iter().flat_map(|r| r.errors.values()).sum() };
    for phase in &raft.phases {
        let Some(theirs) = other.phases.iter().find(|p| p.phase == phase.phase) else { continue };
        let (a, b) = (&phase.median, &theirs.median);
        for (op, rates, latencies) in [
            ("write", (a.writes_per_s, b.writes_per_s), (&a.write, &b.write)),
            ("read", (a.reads_per_s, b.reads_per_s), (&a.read, &b.read)),
        ] {
            if latencies.0.count == 0 || latencies.1.count == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "{:<7} {:<5} {:>12} {:>15} {:>7.2}x {:>11.2} {:>11.2} {:>7.2}x {:>13} {:>16}",
                phase.phase,
                op,
                thousands(rates.0),
                thousands(rates.1),
                rates.0 / rates.1.max(1e-9),
                latencies.0.p99_ms,
                latencies.1.p99_ms,
                latencies.0.p99_ms / latencies.1.p99_ms.max(1e-9),
                format!("{}/{}", errors(phase), errors(theirs)),
                format!("{:.0}/{:.0}", a.server_cpu_us_per_request(), b.server_cpu_us_per_request())
            );
        }
    }
    out
}

/// Resident memory of every process after the run.
pub(crate) fn memory_table(targets: &[TargetReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<8} {:>8} {:>9} {:>14}",
        "target", "process", "pid", "RSS MiB", "peak RSS MiB"
    );
    for target in targets {
        for p in &target.memory {
            let _ = writeln!(
                out,
                "{:<9} {:<8} {:>8} {:>9.1} {:>14.1}",
                target.target,
                p.name,
                p.pid,
                p.rss_kib as f64 / 1024.0,
                p.peak_rss_kib as f64 / 1024.0
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "19700101T000000Z");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(1_709_210_096)), "20240229T123456Z");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(1_735_689_599)), "20241231T235959Z");
    }

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }

    #[test]
    fn cpu_and_memory_of_this_process() {
        let pid = std::process::id();
        let memory = memory_of("self", pid).expect("this process has a /proc entry");
        assert!(memory.rss_kib > 0 && memory.peak_rss_kib >= memory.rss_kib);
        assert!(cpu_time("self") <= cpu_time(&pid.to_string()) + Duration::from_secs(1));
    }
}
