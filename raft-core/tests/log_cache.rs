//! The bounded log cache (`Config::log_cache_bytes`), attacked by an outside review, at the
//! protocol level: what a node holds in memory compared with what the configuration allows.

use bytes::Bytes;
use raft_core::{
    AppendResult, Config, Entry, EntryPayload, Event, HardState, Index, LogId, Membership, Message, Payload,
    Raft, RestoredState, Term,
};

const PAYLOAD: usize = 1024;

fn command(term: Term, index: Index) -> Entry {
    Entry { term, index, payload: EntryPayload::Command(Bytes::from(vec![7u8; PAYLOAD])) }
}

/// A configuration whose every memory knob is small: a 4 KiB cache, at most 16 entries or
/// 16 KiB uncommitted / not handed to the state machine, messages of 16 KiB.
fn small_config() -> Config {
    Config {
        log_cache_bytes: 4 * 1024,
        max_uncommitted_entries: 16,
        max_uncommitted_bytes: 16 * 1024,
        max_bytes_per_append: 16 * 1024,
        ..Config::default()
    }
}

/// What the configuration lets a node hold in payloads: the cache plus the uncommitted /
/// not-applied bound (plus one message's worth the follower may just have received).
fn configured_bound(c: &Config) -> u64 {
    c.log_cache_bytes + c.max_uncommitted_bytes + c.max_bytes_per_append as u64
}

/// Payload bytes the node holds in memory (entries whose payload was not dropped).
fn held_payload_bytes(n: &Raft) -> u64 {
    let last = n.last_log_id().index;
    (1..=last)
        .filter_map(|i| n.entry(i))
        .map(|e| match &e.payload {
            EntryPayload::Command(c) => c.len() as u64,
            _ => 0,
        })
        .sum()
}

fn take(n: &mut Raft) -> raft_core::Ready {
    let r = n.take_ready();
    n.advance();
    r
}

/// A follower whose state machine is slow (the driver holds committed entries back because
/// its apply queue is full: `hold_apply(true)`) keeps accepting, acknowledging and holding
/// every entry the leader sends. The leader bounds proposals by *its own* applied index, so
/// nothing bounds what a slow follower holds: memory grows with the load.
#[test]
fn a_follower_with_a_held_applier_holds_payloads_beyond_any_configured_bound() {
    let config = small_config();
    let restored = RestoredState {
        hard_state: HardState { current_term: 1, voted_for: None },
        membership: Membership::with_voters([1, 2, 3]),
        ..RestoredState::default()
    };
    let mut n = Raft::new(2, config.clone(), restored, 7, 0).expect("valid");
    n.hold_apply(true); // the applier is full
    let mut last = 0;
    for now in 1..=100 {
        let entries: Vec<Entry> = (last + 1..=last + 10).map(|i| command(1, i)).collect();
        let prev = LogId::new(if last == 0 { 0 } else { 1 }, last);
        last += 10;
        let m = Message {
            from: 1,
            to: 2,
            term: 1,
            payload: Payload::AppendEntries { prev_log_id: prev, entries, leader_commit: last, read_seq: 0 },
        };
        n.step(now, Event::Message(m));
        let ready = take(&mut n);
        let acked = ready.persisted_messages.iter().chain(&ready.messages).any(|m| {
            matches!(m.payload, Payload::AppendEntriesResponse { result: AppendResult::Success { match_index }, .. } if match_index == last)
        });
        assert!(acked, "the follower accepted everything");
    }
    let held = held_payload_bytes(&n);
    assert!(
        held <= configured_bound(&config),
        "follower holds {held} payload bytes in memory; the configuration allows about {} \
         (log_cache_bytes + max_uncommitted_bytes + one message)",
        configured_bound(&config)
    );
}

/// Node 2 restarted with 1,000 entries of term 1 in its log (none known committed), once its
/// first ready is taken.
fn restarted_with_1000_entries(config: &Config) -> Raft {
    let entries: Vec<Entry> = (1..=1_000).map(|i| command(1, i)).collect();
    let restored = RestoredState {
        hard_state: HardState { current_term: 1, voted_for: None },
        entries,
        membership: Membership::with_voters([1, 2, 3]),
        ..RestoredState::default()
    };
    let mut n = Raft::new(2, config.clone(), restored, 7, 0).expect("valid");
    let _ = take(&mut n);
    n
}

/// Once a restarted node learns the commit index, its whole log since the snapshot is
/// committed: it is handed out in bounded batches (it was once one `Ready::committed`).
#[test]
fn a_restarted_node_hands_out_its_log_in_bounded_batches() {
    let config = small_config();
    let mut n = restarted_with_1000_entries(&config);
    let held = held_payload_bytes(&n);
    // The leader tells it everything is committed.
    let m = Message {
        from: 1,
        to: 2,
        term: 1,
        payload: Payload::AppendEntries {
            prev_log_id: LogId::new(1, 1_000),
            entries: vec![],
            leader_commit: 1_000,
            read_seq: 0,
        },
    };
    n.step(1, Event::Message(m));
    let ready = take(&mut n);
    let batch: u64 = ready.committed.iter().map(|e| e.size_bytes() as u64).sum();
    let bound = configured_bound(&config);
    assert!(
        batch <= 16 * bound,
        "after a restart the node handed out one apply batch of {batch} bytes ({} entries); \
         a ready hands out at most 16 messages' worth",
        ready.committed.len()
    );
    let _ = held;
}

/// At a restart no entry since the snapshot is applied yet (the protocol starts at the
/// snapshot), and the durable ones stay out of the cache all the same (they were once all
/// held whole).
#[test]
fn a_restarted_node_holds_only_what_the_configuration_allows() {
    let config = small_config();
    let n = restarted_with_1000_entries(&config);
    let (held, bound) = (held_payload_bytes(&n), configured_bound(&config));
    assert!(
        held <= bound,
        "after a restart the node held {held} payload bytes; the configuration allows about {bound}"
    );
}
