//! Outside review (session 20): the read-for-applying retry (`apply_read_retry_at`) on a restarted
//! follower whose whole log is stubs, through the public sans-IO API: no retry before the
//! interval, a tick due exactly then (no busy loop: nothing to do while the deadline is ahead),
//! no entry applied twice, skipped or uncommitted across failures, wrong-term answers, a term
//! change, a snapshot install racing the read, and a stale answer after the install.

use bytes::Bytes;
use raft_core::{
    AppendResult, Config, Entry, EntryPayload, EntryStub, Event, HardState, Index, LogId, LogRead,
    Membership, Message, Payload, Raft, Ready, RestoredState, SnapshotMeta, Term,
};

fn cmd(term: Term, index: Index) -> Entry {
    Entry { term, index, payload: EntryPayload::Command(Bytes::from(format!("c{index}"))) }
}

fn restarted_follower(stub_count: Index) -> Raft {
    let stubs = (1..=stub_count).map(|i| EntryStub::from(&cmd(1, i))).collect();
    let restored = RestoredState {
        hard_state: HardState { current_term: 1, voted_for: None },
        stubs,
        membership: Membership::with_voters([1, 2, 3]),
        ..RestoredState::default()
    };
    let config = Config { max_entries_per_append: 4, ..Config::default() };
    Raft::new(2, config, restored, 11, 0).expect("config")
}

fn append(from: u64, term: Term, prev: LogId, entries: Vec<Entry>, commit: Index) -> Event {
    Event::Message(Message {
        from,
        to: 2,
        term,
        payload: Payload::AppendEntries { prev_log_id: prev, entries, leader_commit: commit, read_seq: 0 },
    })
}

struct Drive {
    applied: Vec<Index>,
    reads: Vec<LogRead>,
}

impl Drive {
    fn new() -> Self {
        Self { applied: Vec::new(), reads: Vec::new() }
    }
    /// Takes every ready (synchronous persistence), records applies and reads.
    fn pump(&mut self, n: &mut Raft) -> Vec<Ready> {
        let mut out = Vec::new();
        let mut guard = 0;
        while n.has_ready() {
            guard += 1;
            assert!(guard < 1000, "has_ready never settles (busy loop)");
            let r = n.take_ready();
            n.advance();
            for e in &r.committed {
                assert!(e.index <= n.commit_index(), "applied uncommitted {}", e.index);
                if let Some(last) = self.applied.last() {
                    assert_eq!(e.index, last + 1, "applied {} after {}", e.index, last);
                }
                self.applied.push(e.index);
            }
            self.reads.extend(r.log_reads.iter().cloned());
            out.push(r);
        }
        out
    }
}

#[test]
fn failed_apply_reads_retry_after_the_interval_and_apply_once_across_a_term_change() {
    let hb = Config::default().heartbeat_interval_ms;
    let mut n = restarted_follower(20);
    let mut d = Drive::new();
    let mut now = 5;
    n.step(now, append(1, 1, LogId::new(1, 20), vec![], 20));
    d.pump(&mut n);
    let read = d.reads.pop().expect("a read to apply the stubs");
    assert_eq!((read.to, read.from), (2, 1));
    // Fails.
    n.step(now, Event::LogEntries { to: 2, from: read.from, entries: None });
    d.pump(&mut n);
    assert!(d.reads.is_empty(), "retried at once");
    let failed_at = now;
    assert!(n.next_deadline() > now, "deadline in the past: busy loop");
    assert!(n.next_deadline() <= failed_at + hb, "no tick due for the retry");
    // A new leader in term 2 (the term changes) while the retry waits: its heartbeat is handled.
    now += 3;
    n.step(now, append(3, 2, LogId::new(1, 20), vec![cmd(2, 21)], 20));
    d.pump(&mut n);
    assert!(d.reads.is_empty(), "retried before the interval (message)");
    now += 1;
    n.step(now, Event::Tick);
    d.pump(&mut n);
    assert!(d.reads.is_empty(), "retried before the interval (tick)");
    // At the deadline.
    now = n.next_deadline().max(now);
    assert!(now <= failed_at + hb);
    n.step(now, Event::Tick);
    d.pump(&mut n);
    let read = d.reads.pop().expect("retried after the interval");
    assert_eq!(read.from, 1);
    // Answered with entries of the wrong term (another history): refused, retried later.
    let wrong: Vec<Entry> = (read.from..=read.last).map(|i| cmd(9, i)).collect();
    n.step(now, Event::LogEntries { to: 2, from: read.from, entries: Some(wrong) });
    d.pump(&mut n);
    assert!(d.applied.is_empty(), "applied entries of another term");
    // The leader commits 21 meanwhile.
    now += 1;
    n.step(now, append(3, 2, LogId::new(2, 21), vec![], 21));
    d.pump(&mut n);
    assert!(d.applied.is_empty());
    // Serve every read correctly from now on, ticking as the deadline says.
    for _ in 0..200 {
        if let Some(r) = d.reads.pop() {
            let entries: Vec<Entry> = (r.from..=r.last).map(|i| cmd(1, i)).collect();
            n.step(now, Event::LogEntries { to: 2, from: r.from, entries: Some(entries) });
        } else {
            let next = n.next_deadline();
            assert!(next >= now, "deadline {next} before now {now}");
            now = next.max(now + 1);
            n.step(now, Event::Tick);
            // Keep the leader heard from.
            n.step(now, append(3, 2, LogId::new(2, 21), vec![], 21));
        }
        d.pump(&mut n);
        if d.applied.last() == Some(&21) {
            break;
        }
    }
    assert_eq!(d.applied, (1..=21).collect::<Vec<_>>());
}

#[test]
fn a_snapshot_installed_while_an_apply_read_is_pending_or_failed_is_not_undone() {
    for fail_first in [false, true] {
        let mut n = restarted_follower(30);
        let mut d = Drive::new();
        let mut now = 5;
        n.step(now, append(1, 1, LogId::new(1, 30), vec![], 30));
        d.pump(&mut n);
        let pending = d.reads.pop().expect("a read");
        if fail_first {
            n.step(now, Event::LogEntries { to: 2, from: pending.from, entries: None });
            d.pump(&mut n);
        }
        // The leader (term 2) installs a snapshot at 40 that does not match this log's term.
        now += 1;
        let meta =
            SnapshotMeta { last_log_id: LogId::new(2, 40), membership: Membership::with_voters([1, 2, 3]) };
        n.step(
            now,
            Event::Message(Message {
                from: 3,
                to: 2,
                term: 2,
                payload: Payload::InstallSnapshot {
                    meta,
                    offset: 0,
                    data: Bytes::from_static(b"s"),
                    done: true,
                },
            }),
        );
        let readies = d.pump(&mut n);
        assert!(readies.iter().any(|r| r.snapshot.is_some()), "installed");
        d.applied.clear();
        // The stale read answers now (entries of the old log, term 1).
        if !fail_first {
            let entries: Vec<Entry> = (pending.from..=pending.last).map(|i| cmd(1, i)).collect();
            n.step(now, Event::LogEntries { to: 2, from: pending.from, entries: Some(entries) });
            d.pump(&mut n);
            assert!(d.applied.is_empty(), "applied old entries after the snapshot: {:?}", d.applied);
        }
        // New entries after the snapshot are committed and held whole: they must apply
        // (within a heartbeat interval at worst), starting at 41.
        now += 1;
        n.step(now, append(3, 2, LogId::new(2, 40), vec![cmd(2, 41), cmd(2, 42)], 42));
        d.pump(&mut n);
        for _ in 0..10 {
            if d.applied.last() == Some(&42) {
                break;
            }
            now = n.next_deadline().max(now + 1);
            n.step(now, Event::Tick);
            d.pump(&mut n);
        }
        assert_eq!(d.applied, vec![41, 42], "fail_first {fail_first}");
        assert!(d.reads.is_empty(), "a read of entries the cache holds: {:?}", d.reads);
        // And the answer to the old read after everything: ignored.
        let _ = AppendResult::Success { match_index: 0 };
    }
}
