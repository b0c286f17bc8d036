//! What a node did lately, for `/v1/status` and the cluster page: the client requests it
//! answered in a sliding window of one-second slots (counts and latency histograms), and the
//! latest changes of term or leader it saw.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use raft_client::api::{ActivityView, LeaderChangeView};

/// Seconds of requests [`RecentRequests`] remembers.
pub const WINDOW_SECONDS: u64 = 10;
/// Leader changes [`LeaderChanges`] remembers.
pub const LEADER_CHANGES_KEPT: usize = 16;
/// The longest latency told apart from longer ones, in µs (a minute).
const LATENCY_MAX_US: u64 = 60_000_000;

/// Which kind of request a latency belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A write (put, delete, compare-and-swap, service change).
    Write,
    /// A read.
    Read,
}

/// One second of requests.
struct Slot {
    /// Seconds since the window started; the slot holds nothing of other seconds.
    second: u64,
    writes: Histogram<u64>,
    reads: Histogram<u64>,
}

/// Client requests of the last [`WINDOW_SECONDS`]: a ring of one-second slots, each with a
/// write and a read latency histogram (two significant digits; a few tens of KiB in all).
pub struct RecentRequests {
    started: Instant,
    slots: Mutex<Vec<Slot>>,
}

impl std::fmt::Debug for RecentRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentRequests").finish_non_exhaustive()
    }
}

fn histogram() -> Histogram<u64> {
    // Constant bounds hdrhistogram accepts: low >= 1, high >= 2 * low, 2 significant digits.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("valid constant bounds")
}

impl Default for RecentRequests {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl RecentRequests {
    /// An empty window starting at `started`.
    pub fn new(started: Instant) -> Self {
        let slots =
            (0..WINDOW_SECONDS).map(|_| Slot { second: u64::MAX, writes: histogram(), reads: histogram() });
        Self { started, slots: Mutex::new(slots.collect()) }
    }

    /// Records a request answered at `now` after `latency`.
    pub fn record(&self, kind: RequestKind, latency: Duration, now: Instant) {
        let second = now.saturating_duration_since(self.started).as_secs();
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_US);
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(slot) = slots.get_mut((second % WINDOW_SECONDS) as usize) else { return };
        if slot.second != second {
            slot.second = second;
            slot.writes.reset();
            slot.reads.reset();
        }
        let histogram = match kind {
            RequestKind::Write => &mut slot.writes,
            RequestKind::Read => &mut slot.reads,
        };
        histogram.saturating_record(micros);
    }

    /// The requests of the window ending at `now`.
    pub fn view(&self, now: Instant) -> ActivityView {
        let elapsed = now.saturating_duration_since(self.started);
        let second = elapsed.as_secs();
        let first = second.saturating_sub(WINDOW_SECONDS - 1);
        let (mut writes, mut reads) = (histogram(), histogram());
        {
            let slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for slot in slots.iter().filter(|s| (first..=second).contains(&s.second)) {
                // Same bounds on both sides: adding cannot fail.
                let _ = writes.add(&slot.writes);
                let _ = reads.add(&slot.reads);
            }
        }
        let window = elapsed.saturating_sub(Duration::from_secs(first));
        let quantile = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        ActivityView {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            writes: writes.len(),
            reads: reads.len(),
            write_p50_us: quantile(&writes, 0.5),
            write_p99_us: quantile(&writes, 0.99),
            read_p50_us: quantile(&reads, 0.5),
            read_p99_us: quantile(&reads, 0.99),
        }
    }
}

/// The latest changes of term or leader a node saw, oldest first, at most
/// [`LEADER_CHANGES_KEPT`].
#[derive(Debug, Default)]
pub struct LeaderChanges {
    changes: Mutex<VecDeque<LeaderChangeView>>,
}

impl LeaderChanges {
    /// Notes the term and leader seen now; remembered only if either changed.
    pub fn observe(&self, term: u64, leader: Option<u64>) {
        let mut changes = self.changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if changes.back().is_some_and(|last| last.term == term && last.leader == leader) {
            return;
        }
        if changes.len() == LEADER_CHANGES_KEPT {
            changes.pop_front();
        }
        changes.push_back(LeaderChangeView { term, leader, at_unix_ms: unix_ms() });
    }

    /// The changes remembered, oldest first.
    pub fn list(&self) -> Vec<LeaderChangeView> {
        self.changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().copied().collect()
    }
}

/// Now, in ms since the Unix epoch (0 on a clock set before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_the_last_ten_seconds_and_forgets_older_ones() {
        let start = Instant::now();
        let recent = RecentRequests::new(start);
        let at = |s: u64, ms: u64| start + Duration::from_secs(s) + Duration::from_millis(ms);
        for ms in [1, 2, 3, 4, 100] {
            recent.record(RequestKind::Write, Duration::from_millis(ms), at(0, 10));
        }
        recent.record(RequestKind::Read, Duration::from_micros(250), at(3, 0));
        let view = recent.view(at(3, 500));
        assert_eq!((view.writes, view.reads), (5, 1));
        assert_eq!(view.window_ms, 3_500);
        // Two significant digits: within 1 %.
        assert!((2_970..=3_030).contains(&view.write_p50_us), "{view:?}");
        assert!((99_000..=101_000).contains(&view.write_p99_us), "{view:?}");
        assert!((247..=253).contains(&view.read_p50_us), "{view:?}");
        // Second 10 reuses second 0's slot: its writes are gone; second 3's read is kept.
        recent.record(RequestKind::Write, Duration::from_millis(7), at(10, 0));
        let view = recent.view(at(10, 200));
        assert_eq!((view.writes, view.reads), (1, 1), "{view:?}");
        assert_eq!(view.window_ms, 9_200);
        // Later still, nothing of the window is left.
        let view = recent.view(at(30, 0));
        assert_eq!((view.writes, view.reads, view.write_p99_us), (0, 0, 0));
    }

    #[test]
    fn absurd_latencies_are_clamped_not_lost() {
        let start = Instant::now();
        let recent = RecentRequests::new(start);
        recent.record(RequestKind::Write, Duration::from_secs(86_400), start);
        recent.record(RequestKind::Write, Duration::ZERO, start);
        let view = recent.view(start);
        assert_eq!(view.writes, 2);
        assert!(view.write_p99_us >= LATENCY_MAX_US * 99 / 100, "{view:?}");
    }

    #[test]
    fn leader_changes_keep_the_latest_distinct_ones() {
        let changes = LeaderChanges::default();
        changes.observe(1, None);
        changes.observe(1, Some(2));
        changes.observe(1, Some(2));
        assert_eq!(
            changes.list().iter().map(|c| (c.term, c.leader)).collect::<Vec<_>>(),
            [(1, None), (1, Some(2))]
        );
        for term in 2..40 {
            changes.observe(term, Some(term % 3));
        }
        let list = changes.list();
        assert_eq!(list.len(), LEADER_CHANGES_KEPT);
        assert_eq!(list.last().map(|c| c.term), Some(39));
        assert_eq!(list.first().map(|c| c.term), Some(39 - LEADER_CHANGES_KEPT as u64 + 1));
    }
}
