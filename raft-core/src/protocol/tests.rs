//! Protocol rule tests: each test states one rule of the paper's Figure 2 (or of pre-vote) and
//! drives a single node with hand-written messages.

use bytes::Bytes;

use super::*;
use crate::membership::MembershipChange;

fn entry(term: Term, index: Index) -> Entry {
    Entry { term, index, payload: EntryPayload::Command(Bytes::from(format!("c{index}"))) }
}

fn log_of(terms: &[Term]) -> Vec<Entry> {
    terms.iter().enumerate().map(|(i, t)| entry(*t, i as Index + 1)).collect()
}

fn node(id: NodeId, term: Term, voted_for: Option<NodeId>, terms: &[Term]) -> Raft {
    let restored = RestoredState {
        hard_state: HardState { current_term: term, voted_for },
        entries: log_of(terms),
        membership: Membership::with_voters([1, 2, 3]),
        ..RestoredState::default()
    };
    let mut raft = Raft::new(id, Config::default(), restored, 1, 0).expect("valid config");
    // These tests are about a node that has been up for a while.
    raft.boot_quiet_until = 0;
    raft
}

fn msg(from: NodeId, to: NodeId, term: Term, payload: Payload) -> Message {
    Message { from, to, term, payload }
}

/// Steps one message and returns the resulting ready (already advanced).
fn deliver(raft: &mut Raft, m: Message) -> Ready {
    let now = raft.now;
    raft.step(now, Event::Message(m));
    let ready = raft.take_ready();
    raft.advance();
    ready
}

fn append(prev: (Term, Index), entries: Vec<Entry>, commit: Index) -> Payload {
    Payload::AppendEntries {
        prev_log_id: LogId::new(prev.0, prev.1),
        entries,
        leader_commit: commit,
        read_seq: 0,
    }
}

fn only_response(ready: &Ready) -> &Message {
    let all: Vec<&Message> = ready.messages.iter().chain(ready.persisted_messages.iter()).collect();
    assert_eq!(all.len(), 1, "expected one message, got {all:?}");
    all[0]
}

/// Makes node 1 (voters 1, 2, 3) the leader through pre-vote and vote.
fn elect(raft: &mut Raft) {
    raft.step(10_000, Event::Tick);
    let _ = raft.take_ready();
    raft.advance();
    let term = raft.term();
    deliver(
        raft,
        msg(
            2,
            1,
            term + 1,
            Payload::RequestVoteResponse { pre_vote: true, granted: true, vouches: true, witnesses: None },
        ),
    );
    assert_eq!(raft.role(), Role::Candidate);
    deliver(
        raft,
        msg(
            2,
            1,
            term + 1,
            Payload::RequestVoteResponse { pre_vote: false, granted: true, vouches: true, witnesses: None },
        ),
    );
    assert_eq!(raft.role(), Role::Leader);
}

#[test]
fn stale_append_entries_is_rejected_with_the_current_term() {
    let mut n = node(2, 5, None, &[1, 1]);
    let ready = deliver(&mut n, msg(1, 2, 3, append((1, 2), vec![entry(3, 3)], 2)));
    let r = only_response(&ready);
    assert_eq!(r.term, 5);
    assert!(matches!(r.payload, Payload::AppendEntriesResponse { result: AppendResult::Reject { .. }, .. }));
    assert_eq!(n.last_log_id(), LogId::new(1, 2), "stale leader changed the log");
    assert!(ready.hard_state.is_none());
}

#[test]
fn a_higher_term_makes_a_follower_and_clears_the_vote_before_anything_else() {
    let mut n = node(2, 1, Some(3), &[]);
    let ready = deliver(&mut n, msg(1, 2, 4, append((0, 0), vec![], 0)));
    assert_eq!(ready.hard_state, Some(HardState { current_term: 4, voted_for: None }));
    assert_eq!(n.leader(), Some(1));
}

#[test]
fn one_vote_per_term_persisted_before_the_answer() {
    let mut n = node(1, 1, None, &[1]);
    let req = |_from: NodeId| Payload::RequestVote {
        pre_vote: false,
        last_log_id: LogId::new(1, 1),
        leadership_transfer: false,
    };
    let ready = deliver(&mut n, msg(2, 1, 2, req(2)));
    assert_eq!(ready.hard_state, Some(HardState { current_term: 2, voted_for: Some(2) }));
    assert!(ready.messages.is_empty(), "a vote must wait for the hard state to be durable");
    assert_eq!(
        ready.persisted_messages[0].payload,
        Payload::RequestVoteResponse { pre_vote: false, granted: true, vouches: true, witnesses: None }
    );
    let ready = deliver(&mut n, msg(3, 1, 2, req(3)));
    assert_eq!(
        only_response(&ready).payload,
        Payload::RequestVoteResponse { pre_vote: false, granted: false, vouches: false, witnesses: None }
    );
    // The same candidate asking again gets the same answer (a retransmission).
    let ready = deliver(&mut n, msg(2, 1, 2, req(2)));
    assert_eq!(
        only_response(&ready).payload,
        Payload::RequestVoteResponse { pre_vote: false, granted: true, vouches: true, witnesses: None }
    );
}

#[test]
fn a_restarted_node_remembers_its_vote() {
    // The node voted for 2 in term 2 and restarted (hard state restored from storage).
    let mut n = node(1, 2, Some(2), &[1]);
    let req =
        Payload::RequestVote { pre_vote: false, last_log_id: LogId::new(1, 1), leadership_transfer: false };
    let ready = deliver(&mut n, msg(3, 1, 2, req));
    assert_eq!(
        only_response(&ready).payload,
        Payload::RequestVoteResponse { pre_vote: false, granted: false, vouches: false, witnesses: None }
    );
}

#[test]
fn up_to_date_check_compares_last_term_then_last_index() {
    let cases = [((1, 10), false), ((2, 2), false), ((2, 3), true), ((3, 1), true)];
    for ((term, index), granted) in cases {
        let mut n = node(1, 2, None, &[1, 2, 2]);
        let req = Payload::RequestVote {
            pre_vote: false,
            last_log_id: LogId::new(term, index),
            leadership_transfer: false,
        };
        let ready = deliver(&mut n, msg(2, 1, 3, req));
        assert_eq!(
            only_response(&ready).payload,
            Payload::RequestVoteResponse { pre_vote: false, granted, vouches: granted, witnesses: None },
            "candidate last log {index}@{term}"
        );
    }
}

#[test]
fn pre_vote_changes_neither_term_nor_vote() {
    let mut n = node(1, 3, Some(1), &[1]);
    let req =
        Payload::RequestVote { pre_vote: true, last_log_id: LogId::new(1, 1), leadership_transfer: false };
    let ready = deliver(&mut n, msg(2, 1, 4, req));
    assert!(ready.hard_state.is_none());
    assert_eq!(n.hard_state(), HardState { current_term: 3, voted_for: Some(1) });
    let r = only_response(&ready);
    assert_eq!(
        r.payload,
        Payload::RequestVoteResponse { pre_vote: true, granted: true, vouches: true, witnesses: None }
    );
    assert_eq!(r.term, 4, "a granted pre-vote carries the term asked for");
}

#[test]
fn pre_vote_is_refused_while_a_leader_is_heard() {
    let mut n = node(1, 3, None, &[1]);
    deliver(&mut n, msg(3, 1, 3, append((1, 1), vec![], 1)));
    let req =
        Payload::RequestVote { pre_vote: true, last_log_id: LogId::new(1, 1), leadership_transfer: false };
    let ready = deliver(&mut n, msg(2, 1, 4, req));
    // Ignored entirely (check-quorum lease) or refused; never granted.
    let granted = ready
        .persisted_messages
        .iter()
        .any(|m| matches!(m.payload, Payload::RequestVoteResponse { granted: true, .. }));
    assert!(!granted);
    assert_eq!(n.term(), 3);
}

#[test]
fn consistency_check_rejects_with_a_conflict_hint() {
    let mut n = node(2, 3, None, &[1, 1, 2, 2]);
    // Prev entry has another term: hint is that term and its first index.
    let ready = deliver(&mut n, msg(1, 2, 3, append((3, 4), vec![], 0)));
    assert_eq!(
        only_response(&ready).payload,
        Payload::AppendEntriesResponse {
            result: AppendResult::Reject {
                rejected_prev_index: 4,
                hint: ConflictHint { conflict_term: Some(2), index: 3 }
            },
            read_seq: 0
        }
    );
    // Prev entry past the end: hint is the last index.
    let ready = deliver(&mut n, msg(1, 2, 3, append((3, 9), vec![], 0)));
    assert_eq!(
        only_response(&ready).payload,
        Payload::AppendEntriesResponse {
            result: AppendResult::Reject {
                rejected_prev_index: 9,
                hint: ConflictHint { conflict_term: None, index: 4 }
            },
            read_seq: 0
        }
    );
}

#[test]
fn a_stale_prefix_does_not_truncate_later_entries() {
    let mut n = node(2, 1, None, &[1, 1, 1, 1]);
    let ready = deliver(&mut n, msg(1, 2, 1, append((1, 1), vec![entry(1, 2), entry(1, 3)], 0)));
    assert_eq!(ready.truncate_from, None);
    assert!(ready.entries.is_empty());
    assert_eq!(n.last_log_id(), LogId::new(1, 4));
    assert_eq!(
        only_response(&ready).payload,
        Payload::AppendEntriesResponse { result: AppendResult::Success { match_index: 3 }, read_seq: 0 }
    );
}

#[test]
fn a_conflicting_entry_truncates_from_the_first_conflict() {
    let mut n = node(2, 2, None, &[1, 1, 1]);
    let ready = deliver(&mut n, msg(1, 2, 2, append((1, 1), vec![entry(1, 2), entry(2, 3)], 0)));
    assert_eq!(ready.truncate_from, Some(3));
    assert_eq!(ready.entries, vec![entry(2, 3)]);
    assert_eq!(n.last_log_id(), LogId::new(2, 3));
}

#[test]
fn acknowledgement_waits_for_persistence() {
    let mut n = node(2, 1, None, &[]);
    let ready = deliver(&mut n, msg(1, 2, 1, append((0, 0), vec![entry(1, 1)], 0)));
    assert_eq!(ready.entries, vec![entry(1, 1)]);
    assert!(ready.messages.is_empty());
    assert_eq!(ready.persisted_messages.len(), 1);
}

#[test]
fn commit_index_is_capped_by_what_the_message_verified() {
    let mut n = node(2, 1, None, &[1, 1, 1, 1, 1]);
    deliver(&mut n, msg(1, 2, 1, append((1, 2), vec![], 5)));
    assert_eq!(n.commit_index(), 2, "entries 3..5 were not verified by this message");
}

#[test]
fn committed_entries_are_applied_only_when_durable() {
    let mut n = node(2, 1, None, &[]);
    let now = n.now;
    n.step(now, Event::Message(msg(1, 2, 1, append((0, 0), vec![entry(1, 1)], 1))));
    let ready = n.take_ready();
    assert!(ready.committed.is_empty(), "entry 1 is not durable yet");
    n.advance();
    let ready = n.take_ready();
    assert_eq!(ready.committed, vec![entry(1, 1)]);
}

#[test]
fn leader_commits_old_term_entries_only_through_a_current_term_entry() {
    let mut n = node(1, 1, None, &[1, 1]);
    elect(&mut n);
    let term = n.term();
    // The no-op of the new term is at index 3.
    let _ = n.take_ready();
    n.advance();
    let ack =
        |m| Payload::AppendEntriesResponse { result: AppendResult::Success { match_index: m }, read_seq: 0 };
    deliver(&mut n, msg(2, 1, term, ack(2)));
    assert_eq!(n.commit_index(), 0, "Figure 8: old-term entries must not commit by counting");
    deliver(&mut n, msg(2, 1, term, ack(3)));
    assert_eq!(n.commit_index(), 3);
}

#[test]
fn leader_counts_itself_only_after_its_own_write() {
    let mut n = node(1, 1, None, &[]);
    elect(&mut n);
    let term = n.term();
    let now = n.now;
    n.step(now, Event::Propose { id: 1, command: Bytes::from_static(b"x"), forward: false });
    let ready = n.take_ready();
    assert_eq!(ready.proposals[0].result, Ok(LogId::new(term, 2)));
    // Before advance (own write not durable), a follower's ack alone is not a majority of 3.
    n.awaiting_advance = false;
    let ack =
        Payload::AppendEntriesResponse { result: AppendResult::Success { match_index: 2 }, read_seq: 0 };
    n.step(now, Event::Message(msg(2, 1, term, ack)));
    assert!(n.commit_index() < 2, "committed before the leader's own write was durable");
    let _ = n.take_ready();
    n.advance();
    assert_eq!(n.commit_index(), 2);
}

#[test]
fn with_background_writes_the_leader_counts_itself_once_told_they_are_durable() {
    let mut n = node(1, 1, None, &[]);
    elect(&mut n);
    let term = n.term();
    let now = n.now;
    n.step(now, Event::Propose { id: 1, command: Bytes::from_static(b"x"), forward: false });
    let ready = n.take_ready();
    assert_eq!(ready.entries.last().map(Entry::log_id), Some(LogId::new(term, 2)));
    assert_eq!(ready.persist_through, LogId::new(term, 2));
    let seq = ready.seq;
    n.advance_unpersisted();
    let ack =
        Payload::AppendEntriesResponse { result: AppendResult::Success { match_index: 2 }, read_seq: 0 };
    n.step(now, Event::Message(msg(2, 1, term, ack)));
    assert!(n.commit_index() < 2, "committed before the leader's own write was durable");
    let _ = n.take_ready();
    n.advance_unpersisted();
    n.step(now, Event::Persisted { last: LogId::new(term, 2), seq });
    assert_eq!(n.commit_index(), 2);
    assert_eq!(n.take_ready().committed.last().map(Entry::log_id), Some(LogId::new(term, 2)));
}

#[test]
fn with_background_writes_a_follower_applies_and_acknowledges_only_durable_entries() {
    let mut n = node(2, 1, None, &[]);
    let now = n.now;
    n.step(now, Event::Message(msg(1, 2, 1, append((0, 0), vec![entry(1, 1), entry(1, 2)], 2))));
    let ready = n.take_ready();
    assert!(ready.messages.is_empty(), "the acknowledgement must wait for the write");
    assert!(matches!(
        ready.persisted_messages[0].payload,
        Payload::AppendEntriesResponse { result: AppendResult::Success { match_index: 2 }, .. }
    ));
    let (through, seq) = (ready.persist_through, ready.seq);
    n.advance_unpersisted();
    assert!(
        !n.has_ready() || n.take_ready().committed.is_empty(),
        "entries applied before they were durable"
    );
    n.advance_unpersisted();
    n.step(now, Event::Persisted { last: through, seq });
    assert_eq!(n.take_ready().committed, vec![entry(1, 1), entry(1, 2)]);
}

#[test]
fn a_durable_report_for_an_overwritten_entry_counts_nothing() {
    let mut n = node(2, 1, None, &[]);
    let now = n.now;
    n.step(now, Event::Message(msg(1, 2, 1, append((0, 0), vec![entry(1, 1), entry(1, 2)], 0))));
    let ready = n.take_ready();
    let (first, first_seq) = (ready.persist_through, ready.seq);
    n.advance_unpersisted();
    // A new leader overwrites entry 2 before the first write is reported durable.
    n.step(now, Event::Message(msg(3, 2, 2, append((1, 1), vec![entry(2, 2)], 2))));
    let ready = n.take_ready();
    assert_eq!(ready.truncate_from, Some(2));
    let (second, second_seq) = (ready.persist_through, ready.seq);
    n.advance_unpersisted();
    n.step(now, Event::Persisted { last: first, seq: first_seq });
    assert_eq!(n.status().persisted_index, 0, "entry 2 of term 1 is not the log's entry 2");
    let applied = if n.has_ready() { n.take_ready().committed } else { Vec::new() };
    assert!(applied.is_empty(), "applied {applied:?} before the write of entry 2 (term 2) was durable");
    n.advance_unpersisted();
    n.step(now, Event::Persisted { last: second, seq: second_seq });
    assert_eq!(n.status().persisted_index, 2);
    assert_eq!(n.take_ready().committed, vec![entry(1, 1), entry(2, 2)]);
}

#[test]
fn held_committed_entries_wait_for_the_hold_to_end_and_a_snapshot_still_installs() {
    let mut n = node(2, 1, None, &[]);
    n.hold_apply(true);
    let ready = deliver(&mut n, msg(1, 2, 1, append((0, 0), vec![entry(1, 1), entry(1, 2)], 2)));
    assert!(ready.committed.is_empty(), "handed out {:?} while held", ready.committed);
    assert!(!n.has_ready(), "a held node has nothing else to do (the driver would spin)");
    assert_eq!(n.status().applied_index, 0);
    n.hold_apply(false);
    assert!(n.has_ready());
    let ready = n.take_ready();
    n.advance();
    assert_eq!(ready.committed, vec![entry(1, 1), entry(1, 2)]);
    // Held again, a snapshot past the held entries installs; the entries it covers are never
    // handed out, the ones after it are once the hold ends.
    n.hold_apply(true);
    deliver(&mut n, msg(1, 2, 1, append((1, 2), vec![entry(1, 3)], 3)));
    let meta = crate::storage::SnapshotMeta {
        last_log_id: LogId::new(1, 5),
        membership: Membership::with_voters([1, 2, 3]),
    };
    let snapshot = Payload::InstallSnapshot { meta, offset: 0, data: Bytes::from_static(b"s"), done: true };
    let ready = deliver(&mut n, msg(1, 2, 1, snapshot));
    assert!(ready.snapshot.is_some(), "the snapshot installs while entries are held");
    assert!(ready.committed.is_empty());
    deliver(&mut n, msg(1, 2, 1, append((1, 5), vec![entry(1, 6)], 6)));
    n.hold_apply(false);
    let ready = n.take_ready();
    n.advance();
    assert_eq!(ready.committed, vec![entry(1, 6)], "entry 3 is covered by the snapshot");
}

#[test]
fn committed_entries_that_left_the_cache_while_held_are_read_back_to_be_applied() {
    let mut n = node(2, 1, None, &[]);
    n.log.set_cache_bytes(0);
    n.hold_apply(true);
    let all: Vec<Entry> = (1..=4).map(|i| entry(1, i)).collect();
    deliver(&mut n, msg(1, 2, 1, append((0, 0), all.clone(), 4)));
    // Committed, durable, held: their payloads left the (empty) cache.
    assert!(n.entry(1).is_none() && n.term_at(4) == Some(1));
    n.hold_apply(false);
    let ready = n.take_ready();
    n.advance();
    assert!(ready.committed.is_empty(), "handed out stubs: {:?}", ready.committed);
    let read = ready.log_reads.first().cloned().expect("a read of the entries to apply");
    assert_eq!((read.to, read.from, read.last), (2, 1, 4));
    assert!(!n.has_ready(), "nothing more while the read is pending");
    // A read that failed is tried again a heartbeat interval later, not at once, and a tick
    // falls due then even on a follower whose election deadline is further away (a follower
    // hearing its leader never reaches that one).
    let retry = Config::default().heartbeat_interval_ms;
    let failed_at = n.now;
    n.step(n.now, Event::LogEntries { to: 2, from: 1, entries: None });
    assert!(!n.has_ready(), "tried again at once");
    n.step(n.now + 1, Event::Tick);
    assert!(!n.has_ready() || n.take_ready().log_reads.is_empty(), "tried again before the interval");
    n.advance();
    assert!(n.next_deadline() <= failed_at + retry, "no tick due for the retry");
    n.step(failed_at + retry, Event::Tick);
    let ready = n.take_ready();
    n.advance();
    let read = ready.log_reads.first().cloned().expect("read again after the interval");
    // Entries of another term are not this log's: never applied.
    let failed_at = n.now;
    n.step(n.now, Event::LogEntries { to: 2, from: read.from, entries: Some(vec![entry(7, 1)]) });
    assert!(!n.has_ready() || n.take_ready().committed.is_empty());
    n.advance();
    n.step(failed_at + retry, Event::Tick);
    let ready = n.take_ready();
    n.advance();
    let read = ready.log_reads.first().cloned().expect("read again");
    n.step(n.now, Event::LogEntries { to: 2, from: read.from, entries: Some(all.clone()) });
    let ready = n.take_ready();
    n.advance();
    assert_eq!(ready.committed, all, "the entries read are applied, in order");
    assert_eq!(n.status().applied_index, 4);
}

#[test]
fn proposals_on_a_follower_are_refused_or_forwarded() {
    let mut n = node(2, 1, None, &[]);
    deliver(&mut n, msg(1, 2, 1, append((0, 0), vec![], 0)));
    let now = n.now;
    n.step(now, Event::Propose { id: 7, command: Bytes::from_static(b"x"), forward: false });
    let ready = n.take_ready();
    n.advance();
    assert_eq!(ready.proposals[0].result, Err(ProposalRejection::NotLeader { leader_hint: Some(1) }));
    n.step(now, Event::Propose { id: 8, command: Bytes::from_static(b"y"), forward: true });
    let ready = n.take_ready();
    n.advance();
    assert!(ready.proposals.is_empty());
    assert!(matches!(only_response(&ready).payload, Payload::ForwardProposal { id: 8, .. }));
    // The leader's refusal may answer a duplicate of a forward it appended: not a "no".
    let refusal = Payload::ForwardProposalResponse { id: 8, result: Err(ForwardRejection::Busy) };
    let ready = deliver(&mut n, msg(1, 2, 1, refusal));
    assert_eq!(ready.proposals[0].result, Err(ProposalRejection::ForwardRefused { leader_hint: None }));
}

#[test]
fn leader_refuses_proposals_past_the_uncommitted_limit() {
    let restored =
        RestoredState { membership: Membership::with_voters([1, 2, 3]), ..RestoredState::default() };
    let config = Config { max_uncommitted_entries: 3, ..Config::default() };
    let mut n = Raft::new(1, config, restored, 1, 0).expect("config");
    elect(&mut n);
    let now = n.now;
    for id in 0..3 {
        n.step(now, Event::Propose { id, command: Bytes::from_static(b"x"), forward: false });
    }
    let ready = n.take_ready();
    n.advance();
    let refused = ready.proposals.iter().filter(|p| p.result == Err(ProposalRejection::Busy)).count();
    assert_eq!(refused, 1, "no-op + 2 proposals fill the limit of 3");
}

#[test]
fn only_a_leader_appends_a_blank_entry_and_only_within_its_bounds() {
    let mut follower = node(1, 1, None, &[1]);
    assert_eq!(follower.append_blank(), None, "a follower appends nothing");
    assert_eq!(follower.last_log_id(), LogId::new(1, 1));
    let restored =
        RestoredState { membership: Membership::with_voters([1, 2, 3]), ..RestoredState::default() };
    let config = Config { max_uncommitted_entries: 2, ..Config::default() };
    let mut n = Raft::new(1, config, restored, 1, 0).expect("config");
    elect(&mut n);
    let _ = n.take_ready();
    n.advance();
    let blank = n.append_blank().expect("a leader appends");
    assert_eq!(blank, LogId::new(n.term(), 2), "after the new leader's own blank entry");
    assert_eq!(n.entry(2).map(|e| e.payload.clone()), Some(EntryPayload::Blank));
    let ready = n.take_ready();
    assert!(ready.entries.iter().any(|e| e.index == 2), "written like any entry");
    n.advance();
    assert_eq!(n.append_blank(), None, "past max_uncommitted_entries it is refused like a proposal");
}

#[test]
fn leader_refuses_proposals_past_the_uncommitted_bytes_but_always_takes_one() {
    let restored =
        RestoredState { membership: Membership::with_voters([1, 2, 3]), ..RestoredState::default() };
    // The leader's no-op (24 header bytes) is uncommitted when the proposals come.
    let config = Config { max_uncommitted_bytes: 24 + 2 * (24 + 100) + 50, ..Config::default() };
    let mut n = Raft::new(1, config, restored, 1, 0).expect("config");
    elect(&mut n);
    let now = n.now;
    for id in 0..3 {
        n.step(now, Event::Propose { id, command: Bytes::from(vec![7u8; 100]), forward: false });
    }
    let ready = n.take_ready();
    n.advance();
    let results: Vec<bool> = ready.proposals.iter().map(|p| p.result.is_ok()).collect();
    assert_eq!(results, vec![true, true, false], "the third would pass the byte limit");
    assert_eq!(ready.proposals[2].result, Err(ProposalRejection::Busy));
    // With nothing uncommitted, even a proposal over the limit is taken (it could never be).
    let mut n = Raft::new(
        1,
        Config { max_uncommitted_bytes: 10, ..Config::default() },
        RestoredState { membership: Membership::with_voters([1]), ..RestoredState::default() },
        1,
        0,
    )
    .expect("config");
    n.boot_quiet_until = 0;
    n.step(10_000, Event::Tick);
    let _ = n.take_ready();
    n.advance();
    assert_eq!(n.role(), Role::Leader);
    let now = n.now + 1;
    n.step(now, Event::Tick);
    let _ = n.take_ready();
    n.advance();
    assert_eq!(n.commit_index(), n.last_log_id().index, "the no-op is committed: nothing is uncommitted");
    n.step(now, Event::Propose { id: 1, command: Bytes::from(vec![7u8; 100]), forward: false });
    let ready = n.take_ready();
    n.advance();
    assert!(ready.proposals[0].result.is_ok(), "{:?}", ready.proposals);
}

// ---- snapshots, membership, leadership transfer, reads ----

fn ack(match_index: Index, read_seq: u64) -> Payload {
    Payload::AppendEntriesResponse { result: AppendResult::Success { match_index }, read_seq }
}

/// The `read_seq` of the AppendEntries the leader sent to `to` in `ready`.
fn round_sent_to(ready: &Ready, to: NodeId) -> Option<u64> {
    ready.messages.iter().chain(ready.persisted_messages.iter()).find_map(|m| match m.payload {
        Payload::AppendEntries { read_seq, .. } if m.to == to => Some(read_seq),
        _ => None,
    })
}

/// A leader (cache of 0 bytes: every applied, durable entry keeps only its index and term)
/// whose follower 3 has entries 1-2 only: 1-7 are committed and applied, node 3 answers.
fn leader_with_an_empty_cache() -> Raft {
    let mut n = node(1, 1, None, &[1, 1, 1, 1, 1, 1]);
    n.log.set_cache_bytes(0);
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    deliver(&mut n, msg(2, 1, term, ack(7, 0)));
    assert_eq!(n.commit_index(), 7);
    assert!(n.entry(3).is_none(), "applied, durable entries left the cache");
    assert_eq!(n.term_at(3), Some(1), "their terms stay");
    n
}

#[test]
fn a_follower_behind_the_log_cache_is_sent_entries_read_from_storage() {
    let mut n = leader_with_an_empty_cache();
    let term = n.term();
    let ready = deliver(&mut n, msg(3, 1, term, ack(2, 0)));
    assert_eq!(ready.log_reads, vec![LogRead { to: 3, from: 3, last: 7 }]);
    assert!(
        !ready.messages.iter().any(|m| m.to == 3
            && matches!(&m.payload, Payload::AppendEntries { entries, .. } if !entries.is_empty())),
        "entries sent before they were read: {:?}",
        ready.messages
    );
    assert!(!n.has_ready(), "nothing more for node 3 while its read is pending");
    // A late answer to another read is ignored; this read's answer is sent.
    let now = n.now;
    n.step(now, Event::LogEntries { to: 3, from: 4, entries: Some(vec![entry(1, 4)]) });
    let read: Vec<Entry> = (3..=6)
        .map(|i| entry(1, i))
        .chain([Entry { term: 2, index: 7, payload: EntryPayload::Blank }])
        .collect();
    n.step(now, Event::LogEntries { to: 3, from: 3, entries: Some(read.clone()) });
    let ready = n.take_ready();
    n.advance();
    let sent: Vec<_> = ready
        .messages
        .iter()
        .filter_map(|m| match &m.payload {
            Payload::AppendEntries { prev_log_id, entries, .. } if m.to == 3 && !entries.is_empty() => {
                Some((*prev_log_id, entries.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![(LogId::new(1, 2), read)], "one AppendEntries with what was read");
}

#[test]
fn entries_storage_returns_wrong_or_not_at_all_are_never_sent() {
    let mut n = leader_with_an_empty_cache();
    let term = n.term();
    let now = n.now;
    let sends_entries_to_3 = |r: &Ready| {
        r.messages.iter().any(|m| {
            m.to == 3 && matches!(&m.payload, Payload::AppendEntries { entries, .. } if !entries.is_empty())
        })
    };
    // Entries of another term than the log's at those indexes.
    deliver(&mut n, msg(3, 1, term, ack(2, 0)));
    n.step(now, Event::LogEntries { to: 3, from: 3, entries: Some(vec![entry(9, 3)]) });
    let ready = n.take_ready();
    n.advance();
    assert!(!sends_entries_to_3(&ready), "sent entries that are not the log's: {:?}", ready.messages);
    // Unreadable, with no snapshot to fall back on: tried again after the next heartbeat.
    n.step(n.now + n.config.heartbeat_interval_ms, Event::Tick);
    let ready = n.take_ready();
    n.advance();
    let read = ready.log_reads.first().cloned().expect("read again after a heartbeat");
    n.step(now, Event::LogEntries { to: 3, from: read.from, entries: None });
    let ready = n.take_ready();
    n.advance();
    assert!(!sends_entries_to_3(&ready));
    assert!(ready.log_reads.is_empty(), "a failing read is not tried again at once");
}

#[test]
fn a_read_needs_a_quorum_round_sent_after_it_and_a_commit_of_the_term() {
    let mut n = node(1, 1, None, &[1, 1]);
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    let old_round = n.read_seq;
    let now = n.now;
    n.step(now, Event::Read { id: 9, mode: ReadMode::ReadIndex });
    let ready = n.take_ready();
    n.advance();
    assert!(ready.reads.is_empty(), "no answer before a heartbeat round");
    let round = round_sent_to(&ready, 2).expect("a heartbeat round started");
    assert!(round > old_round);
    // An answer to a round sent before the read arrived proves nothing.
    let ready = deliver(&mut n, msg(2, 1, term, ack(3, old_round)));
    assert!(ready.reads.is_empty(), "confirmed by an older round");
    assert_eq!(n.commit_index(), 3, "the no-op of the term committed");
    // The new round, answered by a quorum: the read index is the commit index.
    let ready = deliver(&mut n, msg(3, 1, term, ack(0, round)));
    assert_eq!(ready.reads, vec![ReadOutcome { id: 9, result: Ok(3) }]);
}

/// Leader 1 of term 2 (log of three entries): the term's no-op is committed and the
/// election's rounds are answered. Returns the node and the latest round.
fn leader_with_rounds_answered() -> (Raft, u64) {
    let mut n = node(1, 1, None, &[1, 1]);
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    let seq = n.read_seq;
    let _ = deliver(&mut n, msg(2, 1, term, ack(3, seq)));
    (n, seq)
}

#[test]
fn reads_that_arrive_while_a_round_is_out_wait_for_one_next_round() {
    let (mut n, seq) = leader_with_rounds_answered();
    let term = n.term();
    let now = n.now;
    let ready = step_read(&mut n, now, 1);
    let first = round_sent_to(&ready, 2).expect("the first read starts a round");
    assert!(first > seq);
    // Reads while that round is out: no round each, and no busy turns.
    for id in 2..=5 {
        n.step(now, Event::Read { id, mode: ReadMode::ReadIndex });
        assert!(!n.has_ready(), "read {id}: a turn with nothing to do");
        let ready = n.take_ready();
        n.advance();
        assert_eq!(round_sent_to(&ready, 2), None, "read {id} started a round while one is out");
    }
    // The quorum answers the first round: the first read, and one round for the other four.
    let ready = deliver(&mut n, msg(3, 1, term, ack(3, first)));
    assert_eq!(ready.reads, vec![ReadOutcome { id: 1, result: Ok(3) }]);
    let mut next = round_sent_to(&ready, 2);
    if next.is_none() {
        let ready = n.take_ready();
        n.advance();
        next = round_sent_to(&ready, 2);
    }
    let next = next.expect("the waiting reads get a round once the first is answered");
    assert_eq!(next, first + 1, "one round for the reads that waited");
    let ready = deliver(&mut n, msg(2, 1, term, ack(3, next)));
    assert_eq!(read_ids(&ready), vec![2, 3, 4, 5]);
}

#[test]
fn a_lost_read_round_is_replaced_by_the_next_heartbeat() {
    let (mut n, _) = leader_with_rounds_answered();
    let term = n.term();
    let now = n.now;
    let _lost = step_read(&mut n, now, 1);
    let _ = step_read(&mut n, now, 2);
    // Nothing answers; the heartbeat timer sends a round that confirms both reads.
    let later = now + n.config.heartbeat_interval_ms;
    assert!(n.next_deadline() <= later);
    n.step(later, Event::Tick);
    let ready = n.take_ready();
    n.advance();
    let round = round_sent_to(&ready, 2).expect("a heartbeat round");
    let ready = deliver(&mut n, msg(3, 1, term, ack(3, round)));
    assert_eq!(read_ids(&ready), vec![1, 2]);
}

/// Node 2, following leader 1 in term 1 (log of two entries, both committed).
fn follower_of_1() -> Raft {
    let mut n = node(2, 1, None, &[1, 1]);
    let ready = deliver(&mut n, msg(1, 2, 1, append((1, 2), vec![], 2)));
    assert!(ready.messages.iter().chain(&ready.persisted_messages).any(|m| m.to == 1), "answered the leader");
    assert_eq!(n.leader, Some(1));
    n
}

/// The ids of the `ReadIndexRequest`s in `ready`, with their addressees.
fn read_requests(ready: &Ready) -> Vec<(NodeId, ReadId)> {
    ready
        .messages
        .iter()
        .chain(&ready.persisted_messages)
        .filter_map(|m| match m.payload {
            Payload::ReadIndexRequest { id } => Some((m.to, id)),
            _ => None,
        })
        .collect()
}

/// Steps `event` at `now` and returns the resulting ready (already advanced).
fn turn(n: &mut Raft, now: Millis, event: Event) -> Ready {
    n.step(now, event);
    let ready = n.take_ready();
    n.advance();
    ready
}

fn step_read(n: &mut Raft, now: Millis, id: ReadId) -> Ready {
    turn(n, now, Event::Read { id, mode: ReadMode::ReadIndex })
}

fn read_answer(id: ReadId, index: Index) -> Payload {
    Payload::ReadIndexResponse { id, result: Ok(index) }
}

fn read_ids(ready: &Ready) -> Vec<ReadId> {
    ready.reads.iter().map(|r| r.id).collect()
}

#[test]
fn a_follower_has_one_read_request_out_and_sends_one_for_the_reads_that_waited() {
    let mut n = follower_of_1();
    let now = n.now;
    assert_eq!(read_requests(&step_read(&mut n, now, 10)), vec![(1, 10)], "sent at once when none is out");
    for id in 11..=13 {
        let ready = step_read(&mut n, now, id);
        assert!(read_requests(&ready).is_empty(), "read {id}: a second request while one is out");
    }
    // The answer confirms the read sent with it only, then one request goes for the others.
    let ready = deliver(&mut n, msg(1, 2, 1, read_answer(10, 2)));
    assert_eq!(ready.reads, vec![ReadOutcome { id: 10, result: Ok(2) }]);
    assert_eq!(read_requests(&ready), vec![(1, 13)], "one request named after its newest read");
    let ready = deliver(&mut n, msg(1, 2, 1, read_answer(13, 2)));
    assert_eq!(read_ids(&ready), vec![11, 12, 13]);
    assert!(read_requests(&ready).is_empty());
}

#[test]
fn an_answer_to_an_earlier_request_confirms_only_the_reads_that_arrived_before_it() {
    let mut n = follower_of_1();
    let now = n.now;
    let _ = step_read(&mut n, now, 20);
    let _ = step_read(&mut n, now, 21);
    // Unanswered for a heartbeat interval: a new request covers both reads.
    let later = now + n.config.heartbeat_interval_ms;
    assert!(n.next_deadline() <= later, "the request out is a timer");
    n.step(later, Event::Tick);
    let ready = n.take_ready();
    n.advance();
    assert_eq!(read_requests(&ready), vec![(1, 21)]);
    // The first request's answer arrives late: it confirms read 20, not read 21, which
    // arrived after it was sent.
    let ready = deliver(&mut n, msg(1, 2, 1, read_answer(20, 2)));
    assert_eq!(read_ids(&ready), vec![20]);
    let ready = deliver(&mut n, msg(1, 2, 1, read_answer(21, 2)));
    assert_eq!(read_ids(&ready), vec![21]);
    // Answers to requests already settled are ignored.
    let ready = deliver(&mut n, msg(1, 2, 1, read_answer(20, 2)));
    assert!(ready.reads.is_empty());
}

#[test]
fn forwarded_reads_follow_a_new_leader_and_time_out_on_their_own_deadlines() {
    let mut n = follower_of_1();
    let now = n.now;
    let _ = step_read(&mut n, now, 30);
    let _ = step_read(&mut n, now + 1, 31);
    // Node 3 leads term 2: the reads are asked of it at once.
    let ready = deliver(&mut n, msg(3, 2, 2, append((1, 2), vec![], 2)));
    assert_eq!(read_requests(&ready), vec![(3, 31)]);
    // Never answered: each read fails at its own deadline.
    let first = now + n.config.rpc_timeout_ms;
    let mut failed = Vec::new();
    for _ in 0..10_000 {
        if failed.len() == 2 {
            break;
        }
        let t = n.next_deadline();
        assert!(t <= first + 1, "no timer before the second read's deadline");
        n.step(t, Event::Tick);
        let ready = n.take_ready();
        n.advance();
        failed.extend(ready.reads.iter().map(|r| (r.id, r.result, n.now)));
    }
    assert_eq!(
        failed.iter().map(|(id, result, _)| (*id, *result)).collect::<Vec<_>>(),
        vec![(30, Err(ProposalRejection::ForwardTimeout)), (31, Err(ProposalRejection::ForwardTimeout))]
    );
    assert!(failed.iter().all(|(_, _, at)| *at >= first), "a read failed before its deadline: {failed:?}");
    assert!(failed[0].2 < failed[1].2, "read 31 failed with read 30, before its own deadline");
}

#[test]
fn a_follower_with_more_reads_out_than_allowed_is_busy() {
    let mut n = follower_of_1();
    n.config.max_pending_reads = 2;
    let now = n.now;
    let _ = step_read(&mut n, now, 40);
    let _ = step_read(&mut n, now, 41);
    let ready = step_read(&mut n, now, 42);
    assert_eq!(ready.reads, vec![ReadOutcome { id: 42, result: Err(ProposalRejection::Busy) }]);
}

#[test]
fn a_new_leader_answers_reads_only_after_committing_an_entry_of_its_term() {
    let mut n = node(1, 1, None, &[1, 1]);
    elect(&mut n);
    let term = n.term();
    let now = n.now;
    n.step(now, Event::Read { id: 1, mode: ReadMode::ReadIndex });
    let ready = n.take_ready();
    n.advance();
    let round = round_sent_to(&ready, 2).expect("round");
    // Quorum confirms the round, but the no-op (index 3) is not committed yet.
    let ready = deliver(&mut n, msg(2, 1, term, ack(2, round)));
    assert!(ready.reads.is_empty(), "answered before the term's first commit");
    let ready = deliver(&mut n, msg(2, 1, term, ack(3, round)));
    assert_eq!(ready.reads, vec![ReadOutcome { id: 1, result: Ok(3) }]);
}

#[test]
fn pending_reads_fail_when_the_leader_steps_down() {
    let mut n = node(1, 1, None, &[]);
    elect(&mut n);
    let now = n.now;
    n.step(now, Event::Read { id: 4, mode: ReadMode::ReadIndex });
    let _ = n.take_ready();
    n.advance();
    let term = n.term();
    let ready = deliver(&mut n, msg(2, 1, term + 1, append((0, 0), vec![], 0)));
    assert_eq!(
        ready.reads,
        vec![ReadOutcome { id: 4, result: Err(ProposalRejection::NotLeader { leader_hint: Some(2) }) }]
    );
}

#[test]
fn timeout_now_from_the_leader_starts_an_election_at_once() {
    let mut n = node(2, 3, None, &[1]);
    deliver(&mut n, msg(1, 2, 3, append((1, 1), vec![], 1)));
    // From a node that is not its leader: ignored.
    deliver(&mut n, msg(3, 2, 3, Payload::TimeoutNow));
    assert_eq!(n.role(), Role::Follower);
    let ready = deliver(&mut n, msg(1, 2, 3, Payload::TimeoutNow));
    assert_eq!(n.role(), Role::Candidate, "no pre-vote, no waiting for the timer");
    assert_eq!(n.term(), 4);
    let requests: Vec<_> = ready.persisted_messages.iter().map(|m| &m.payload).collect();
    assert!(requests
        .iter()
        .all(|p| matches!(p, Payload::RequestVote { pre_vote: false, leadership_transfer: true, .. })));
    assert_eq!(requests.len(), 2);
}

#[test]
fn voters_answer_a_transfer_election_even_while_they_hear_from_the_leader() {
    let vote = |transfer| Payload::RequestVote {
        pre_vote: false,
        last_log_id: LogId::new(1, 1),
        leadership_transfer: transfer,
    };
    let mut n = node(3, 3, None, &[1]);
    deliver(&mut n, msg(1, 3, 3, append((1, 1), vec![], 1)));
    let ready = deliver(&mut n, msg(2, 3, 4, vote(false)));
    assert!(ready.persisted_messages.is_empty() && n.term() == 3, "a disruptive candidate is ignored");
    let ready = deliver(&mut n, msg(2, 3, 4, vote(true)));
    assert_eq!(
        only_response(&ready).payload,
        Payload::RequestVoteResponse { pre_vote: false, granted: true, vouches: true, witnesses: None }
    );
}

#[test]
fn a_transfer_without_a_target_skips_voters_that_stopped_answering() {
    let mut n = node(1, 1, None, &[]);
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    let _ = deliver(&mut n, msg(2, 1, term, ack(1, 0)));
    // Node 2 then stops (a rolling restart): node 3 answers later, holding as much of the log.
    let later = n.now + n.config.election_timeout_min_ms + 1;
    n.step(later, Event::Tick);
    let _ = n.take_ready();
    n.advance();
    let _ = deliver(&mut n, msg(3, 1, term, ack(1, 0)));
    assert_eq!(n.transfer_leadership(n.now, None), Ok(3), "node 2 holds as much, but stopped answering");
    // Nobody answered lately: no target rather than a dead one.
    let mut n = node(1, 1, None, &[]);
    elect(&mut n);
    let _ = n.take_ready();
    n.advance();
    let later = n.now + n.config.election_timeout_min_ms + 1;
    assert_eq!(n.transfer_leadership(later, None), Err(TransferError::NoCandidate));
}

#[test]
fn a_transfer_refuses_proposals_and_sends_timeout_now_when_the_target_caught_up() {
    let mut n = node(1, 1, None, &[]);
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    let now = n.now;
    assert_eq!(n.transfer_leadership(now, Some(7)), Err(TransferError::NotAVoter(7)));
    assert_eq!(n.transfer_leadership(now, Some(2)), Ok(2));
    assert_eq!(n.transfer_leadership(now, None), Err(TransferError::InProgress(2)));
    n.step(now, Event::Propose { id: 1, command: Bytes::from_static(b"x"), forward: false });
    let ready = n.take_ready();
    n.advance();
    assert_eq!(ready.proposals[0].result, Err(ProposalRejection::LeadershipTransferInProgress));
    let ready = deliver(&mut n, msg(2, 1, term, ack(1, 0)));
    assert!(
        ready.persisted_messages.iter().any(|m| m.to == 2 && m.payload == Payload::TimeoutNow),
        "target holds the whole log: hand over"
    );
    // Nobody took over: after an election timeout the transfer is abandoned.
    let later = now + n.config.election_timeout_max_ms + 1;
    n.step(later, Event::Tick);
    let _ = n.take_ready();
    n.advance();
    assert_eq!(n.status().leadership_transfer, None);
    n.step(later, Event::Propose { id: 2, command: Bytes::from_static(b"y"), forward: false });
    let ready = n.take_ready();
    n.advance();
    assert!(ready.proposals[0].result.is_ok(), "proposals are accepted again");
}

fn install(meta: &crate::storage::SnapshotMeta, offset: u64, data: &'static [u8], done: bool) -> Payload {
    Payload::InstallSnapshot { meta: meta.clone(), offset, data: Bytes::from_static(data), done }
}

#[test]
fn snapshot_chunks_are_taken_in_order_and_duplicates_change_nothing() {
    let mut n = node(2, 2, None, &[1]);
    let meta = crate::storage::SnapshotMeta {
        last_log_id: LogId::new(2, 10),
        membership: Membership::with_voters([1, 2, 3]),
    };
    let expect = |offset, done| Payload::InstallSnapshotResponse {
        snapshot: meta.last_log_id,
        next_offset: offset,
        done,
    };
    let staged = |ready: &Ready| -> Vec<(u64, Bytes)> {
        ready.snapshot_parts.iter().map(|p| (p.offset, p.data.clone())).collect()
    };
    let ready = deliver(&mut n, msg(1, 2, 2, install(&meta, 0, b"abc", false)));
    assert_eq!(only_response(&ready).payload, expect(3, false));
    assert_eq!(staged(&ready), vec![(0, Bytes::from_static(b"abc"))], "the part goes to the driver to stage");
    let ready = deliver(&mut n, msg(1, 2, 2, install(&meta, 0, b"abc", false)));
    assert_eq!(only_response(&ready).payload, expect(3, false), "a duplicate is answered, not appended");
    assert!(staged(&ready).is_empty());
    let ready = deliver(&mut n, msg(1, 2, 2, install(&meta, 6, b"ghi", true)));
    assert_eq!(only_response(&ready).payload, expect(3, false), "a gap asks for the missing offset");
    assert!(ready.snapshot.is_none() && staged(&ready).is_empty());
    let ready = deliver(&mut n, msg(1, 2, 2, install(&meta, 3, b"def", true)));
    assert_eq!(only_response(&ready).payload, expect(6, true));
    assert_eq!(staged(&ready), vec![(3, Bytes::from_static(b"def"))]);
    let installed = ready.snapshot.expect("installed");
    assert_eq!(installed.data, crate::storage::SnapshotData::stored(6), "the staged parts, not held here");
    assert_eq!(n.status().incoming_snapshot, None);
    assert!(ready.committed.is_empty(), "nothing to apply: the state machine restores the snapshot");
    assert_eq!((n.commit_index(), n.applied_index()), (10, 10));
    assert_eq!(n.last_log_id(), LogId::new(2, 10), "the conflicting log was replaced");
    assert_eq!(n.snapshot_last(), LogId::new(2, 10));
}

#[test]
fn a_snapshot_covered_by_the_commit_index_is_acknowledged_without_installing() {
    let mut n = node(2, 2, None, &[1, 1, 1]);
    deliver(&mut n, msg(1, 2, 2, append((1, 3), vec![], 3)));
    let meta =
        crate::storage::SnapshotMeta { last_log_id: LogId::new(1, 2), membership: Membership::default() };
    let ready = deliver(&mut n, msg(1, 2, 2, install(&meta, 0, b"old", true)));
    assert!(ready.snapshot.is_none());
    assert_eq!(
        only_response(&ready).payload,
        Payload::InstallSnapshotResponse { snapshot: meta.last_log_id, next_offset: 0, done: true }
    );
    assert_eq!(n.last_log_id(), LogId::new(1, 3));
}

#[test]
fn a_configuration_takes_effect_when_appended_and_reverts_when_truncated() {
    let mut n = node(2, 1, None, &[1]);
    let joint = Membership {
        voters: [1, 2, 4].into(),
        outgoing_voters: [1, 2, 3].into(),
        learners: Default::default(),
    };
    let config = Entry { term: 1, index: 2, payload: EntryPayload::Membership(Box::new(joint.clone())) };
    deliver(&mut n, msg(1, 2, 1, append((1, 1), vec![config], 1)));
    assert_eq!(n.membership(), &joint, "in force before it commits");
    // A new leader overwrites the uncommitted configuration.
    deliver(&mut n, msg(3, 2, 2, append((1, 1), vec![entry(2, 2)], 1)));
    assert_eq!(n.membership(), &Membership::with_voters([1, 2, 3]), "the previous configuration is back");
}

/// Node 1 (voters 1, 2, 3) leads with its no-op (index 1) committed; returns it and its term.
fn leader_with_a_commit() -> (Raft, Term) {
    let mut n = node(1, 1, None, &[]);
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    deliver(&mut n, msg(2, 1, term, ack(1, 0)));
    (n, term)
}

#[test]
fn the_status_says_where_the_membership_was_appended_so_whether_it_is_committed() {
    let (mut n, term) = leader_with_a_commit();
    let status = n.status();
    assert!(status.membership_index <= status.commit_index, "{status:?}");
    let now = n.now;
    let at = n.propose_membership_change(now, &MembershipChange::AddLearner(4), false).expect("a learner");
    let status = n.status();
    assert_eq!(status.membership_index, at.index);
    assert!(status.membership.contains(4) && status.membership_index > status.commit_index, "{status:?}");
    let _ = n.take_ready();
    n.advance();
    deliver(&mut n, msg(2, 1, term, ack(at.index, 0)));
    let status = n.status();
    assert_eq!(status.membership_index, at.index);
    assert!(status.commit_index >= status.membership_index, "{status:?}");
}

#[test]
fn a_joint_configuration_commits_with_both_majorities_then_the_leader_leaves_it() {
    let (mut n, term) = leader_with_a_commit();
    assert_eq!(n.commit_index(), 1);
    let now = n.now;
    let change = MembershipChange::SetVoters([1, 4, 5].into());
    // Forced: nodes 4 and 5 have not caught up (the checks are tested below).
    let at = n.propose_membership_change(now, &change, true).expect("accepted");
    assert!(n.membership().is_joint());
    assert_eq!(
        n.propose_membership_change(now, &MembershipChange::AddLearner(9), false),
        Err(ProposalRejection::MembershipChangeInProgress)
    );
    let _ = n.take_ready();
    n.advance();
    // The old majority alone (1, 2, 3) does not commit the joint entry.
    deliver(&mut n, msg(2, 1, term, ack(at.index, 0)));
    deliver(&mut n, msg(3, 1, term, ack(at.index, 0)));
    assert_eq!(n.commit_index(), 1, "committed without a majority of the new voters");
    // 1 and 4 are a majority of {1, 4, 5}: committed; the leader appends C_new at once.
    let ready = deliver(&mut n, msg(4, 1, term, ack(at.index, 0)));
    assert_eq!(n.commit_index(), at.index);
    assert_eq!(n.membership(), &Membership::with_voters([1, 4, 5]));
    assert!(ready
        .entries
        .iter()
        .any(|e| e.payload == EntryPayload::Membership(Box::new(Membership::with_voters([1, 4, 5])))));
}

#[test]
fn a_leader_not_in_the_new_configuration_steps_down_once_it_commits() {
    let (mut n, term) = leader_with_a_commit();
    let now = n.now;
    // Forced: node 3 has not answered yet (the checks are tested below).
    let joint = n.propose_membership_change(now, &MembershipChange::RemoveNode(1), true).expect("accepted");
    let _ = n.take_ready();
    n.advance();
    deliver(&mut n, msg(2, 1, term, ack(joint.index, 0)));
    deliver(&mut n, msg(3, 1, term, ack(joint.index, 0)));
    assert_eq!(n.role(), Role::Leader, "still leads C_new until it commits");
    assert!(!n.membership().is_voter(1));
    deliver(&mut n, msg(2, 1, term, ack(joint.index + 1, 0)));
    assert_eq!(n.role(), Role::Leader, "C_new needs both remaining voters");
    let ready = deliver(&mut n, msg(3, 1, term, ack(joint.index + 1, 0)));
    assert_eq!(n.role(), Role::Follower, "stepped down once C_new committed");
    assert!(ready.persisted_messages.iter().any(|m| m.to == 2 && m.payload == Payload::TimeoutNow));
}

#[test]
fn entries_past_the_commit_index_are_kept_when_prev_is_below_it() {
    let mut n = node(2, 1, None, &[1, 1, 1]);
    deliver(&mut n, msg(1, 2, 1, append((1, 3), vec![], 3)));
    // A delayed message from before the commit: its new entries 4 and 5 still count.
    let ready = deliver(&mut n, msg(1, 2, 1, append((1, 1), log_of(&[1, 1, 1, 1, 1])[1..].to_vec(), 3)));
    assert_eq!(n.last_log_id(), LogId::new(1, 5));
    assert_eq!(ready.entries, log_of(&[1, 1, 1, 1, 1])[3..].to_vec());
    assert_eq!(
        only_response(&ready).payload,
        Payload::AppendEntriesResponse { result: AppendResult::Success { match_index: 5 }, read_seq: 0 }
    );
}

#[test]
fn a_read_the_leader_cannot_confirm_times_out() {
    let config = Config { check_quorum: false, ..Config::default() };
    let restored =
        RestoredState { membership: Membership::with_voters([1, 2, 3]), ..RestoredState::default() };
    let mut n = Raft::new(1, config, restored, 1, 0).expect("valid");
    n.boot_quiet_until = 0;
    elect(&mut n);
    let now = n.now;
    n.step(now, Event::Read { id: 3, mode: ReadMode::ReadIndex });
    let _ = n.take_ready();
    n.advance();
    let later = now + n.config.rpc_timeout_ms;
    assert!(n.next_deadline() <= later, "the read's deadline is a timer");
    n.step(later, Event::Tick);
    let ready = n.take_ready();
    n.advance();
    assert_eq!(ready.reads, vec![ReadOutcome { id: 3, result: Err(ProposalRejection::Timeout) }]);
}

#[test]
fn a_lost_snapshot_chunk_is_resent_once_the_follower_answers_a_later_round() {
    let snapshot = crate::storage::Snapshot {
        meta: crate::storage::SnapshotMeta {
            last_log_id: LogId::new(1, 5),
            membership: Membership::with_voters([1, 2, 3]),
        },
        data: Bytes::from_static(b"state").into(),
    };
    let restored = RestoredState {
        hard_state: HardState { current_term: 1, voted_for: None },
        snapshot: Some(snapshot),
        ..RestoredState::default()
    };
    let mut n = Raft::new(1, Config::default(), restored, 1, 0).expect("valid");
    n.boot_quiet_until = 0;
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    let chunks = |ready: &Ready| {
        ready
            .messages
            .iter()
            .filter(|m| m.to == 2 && matches!(m.payload, Payload::InstallSnapshot { .. }))
            .count()
    };
    // Follower 2 has nothing: it needs the snapshot.
    let reject = |read_seq| Payload::AppendEntriesResponse {
        result: AppendResult::Reject {
            rejected_prev_index: 5,
            hint: ConflictHint { conflict_term: None, index: 0 },
        },
        read_seq,
    };
    let ready = deliver(&mut n, msg(2, 1, term, reject(0)));
    assert_eq!(chunks(&ready), 1, "the first chunk goes out");
    // A heartbeat round later, the follower answers the round but never the chunk.
    let later = n.now + n.config.heartbeat_interval_ms;
    n.step(later, Event::Tick);
    let ready = n.take_ready();
    n.advance();
    assert_eq!(chunks(&ready), 0, "one chunk in flight");
    let round = round_sent_to(&ready, 2).expect("a heartbeat to 2");
    let ready = deliver(&mut n, msg(2, 1, term, reject(round)));
    assert_eq!(chunks(&ready), 1, "the lost chunk is sent again");
}

#[test]
fn a_stored_snapshot_is_sent_from_parts_the_driver_reads_and_a_vanished_one_is_replaced() {
    let meta = |index| crate::storage::SnapshotMeta {
        last_log_id: LogId::new(1, index),
        membership: Membership::with_voters([1, 2, 3]),
    };
    let snapshot = crate::storage::Snapshot { meta: meta(5), data: crate::storage::SnapshotData::stored(10) };
    let restored = RestoredState {
        hard_state: HardState { current_term: 1, voted_for: None },
        snapshot: Some(snapshot),
        ..RestoredState::default()
    };
    let mut n =
        Raft::new(1, Config { snapshot_chunk_bytes: 6, ..Config::default() }, restored, 1, 0).expect("valid");
    n.boot_quiet_until = 0;
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    let installs = |ready: &Ready| -> Vec<(u64, Bytes, bool)> {
        ready
            .messages
            .iter()
            .filter_map(|m| match &m.payload {
                Payload::InstallSnapshot { offset, data, done, .. } if m.to == 2 => {
                    Some((*offset, data.clone(), *done))
                }
                _ => None,
            })
            .collect()
    };
    let reject = Payload::AppendEntriesResponse {
        result: AppendResult::Reject {
            rejected_prev_index: 5,
            hint: ConflictHint { conflict_term: None, index: 0 },
        },
        read_seq: 0,
    };
    let reject_round = |read_seq| Payload::AppendEntriesResponse {
        result: AppendResult::Reject {
            rejected_prev_index: 5,
            hint: ConflictHint { conflict_term: None, index: 0 },
        },
        read_seq,
    };
    let ready = deliver(&mut n, msg(2, 1, term, reject));
    assert!(installs(&ready).is_empty(), "nothing to send before the bytes are read");
    let read = SnapshotRead { to: 2, snapshot: LogId::new(1, 5), offset: 0, max: 6 };
    assert_eq!(ready.snapshot_reads, vec![read.clone()]);
    let chunk = |offset, data: Option<&'static [u8]>| Event::SnapshotChunk {
        to: 2,
        snapshot: LogId::new(1, 5),
        offset,
        data: data.map(Bytes::from_static),
    };
    // While the part is read, answered heartbeat rounds (even an election timeout later) ask
    // for no second read: the part was not sent, so it cannot have been lost.
    for _ in 0..10 {
        let later = n.now + n.config.heartbeat_interval_ms;
        n.step(later, Event::Tick);
        let ready = n.take_ready();
        n.advance();
        let round = round_sent_to(&ready, 2).expect("a heartbeat to 2");
        let ready = deliver(&mut n, msg(2, 1, term, reject_round(round)));
        assert!(ready.snapshot_reads.is_empty(), "a second read of a part still being read");
    }
    // A part for an offset nobody waits for is dropped.
    n.step(n.now, chunk(4, Some(b"xx")));
    assert!(installs(&n.take_ready()).is_empty());
    n.advance();
    n.step(n.now, chunk(0, Some(b"abcdef")));
    let ready = n.take_ready();
    n.advance();
    assert_eq!(installs(&ready), vec![(0, Bytes::from_static(b"abcdef"), false)]);
    let answer = Payload::InstallSnapshotResponse { snapshot: LogId::new(1, 5), next_offset: 6, done: false };
    let ready = deliver(&mut n, msg(2, 1, term, answer));
    assert_eq!(ready.snapshot_reads, vec![SnapshotRead { offset: 6, ..read.clone() }]);
    n.step(n.now, chunk(6, Some(b"ghij")));
    let ready = n.take_ready();
    n.advance();
    assert_eq!(installs(&ready), vec![(6, Bytes::from_static(b"ghij"), true)], "the last part says done");
    // The follower lost it and starts over; storage cannot serve the part (damaged, or
    // replaced with no newer snapshot here): no busy retry, the next round asks again.
    let answer = Payload::InstallSnapshotResponse { snapshot: LogId::new(1, 5), next_offset: 0, done: false };
    let ready = deliver(&mut n, msg(2, 1, term, answer));
    assert_eq!(ready.snapshot_reads, vec![read.clone()], "asked again from 0");
    n.step(n.now, chunk(0, None));
    let ready = n.take_ready();
    n.advance();
    assert!(installs(&ready).is_empty() && ready.snapshot_reads.is_empty(), "no retry in the same step");
    assert!(!n.has_ready(), "nothing left to do until a later round");
    let later = n.now + n.config.heartbeat_interval_ms;
    n.step(later, Event::Tick);
    let ready = n.take_ready();
    n.advance();
    let round = round_sent_to(&ready, 2).expect("a heartbeat to 2");
    let reject = Payload::AppendEntriesResponse {
        result: AppendResult::Reject {
            rejected_prev_index: 5,
            hint: ConflictHint { conflict_term: None, index: 0 },
        },
        read_seq: round,
    };
    let ready = deliver(&mut n, msg(2, 1, term, reject));
    assert_eq!(ready.snapshot_reads, vec![read], "retried once the follower answered a later round");
}

/// A leader (node 1, term 2) holding a 12-byte snapshot ending at index 5 in memory, sent in
/// 6-byte chunks; node 2 has just been switched to snapshot mode and sent the first chunk.
fn leader_sending_a_snapshot_to_2() -> (Raft, Term) {
    let meta = crate::storage::SnapshotMeta {
        last_log_id: LogId::new(1, 5),
        membership: Membership::with_voters([1, 2, 3]),
    };
    let data = crate::storage::SnapshotData::from_bytes(Bytes::from_static(b"abcdefghijkl"));
    let restored = RestoredState {
        hard_state: HardState { current_term: 1, voted_for: None },
        snapshot: Some(crate::storage::Snapshot { meta, data }),
        ..RestoredState::default()
    };
    let mut n =
        Raft::new(1, Config { snapshot_chunk_bytes: 6, ..Config::default() }, restored, 1, 0).expect("valid");
    n.boot_quiet_until = 0;
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    let reject = Payload::AppendEntriesResponse {
        result: AppendResult::Reject {
            rejected_prev_index: 5,
            hint: ConflictHint { conflict_term: None, index: 0 },
        },
        read_seq: 0,
    };
    let ready = deliver(&mut n, msg(2, 1, term, reject));
    assert_eq!(install_offsets(&ready, 2), vec![0]);
    (n, term)
}

fn install_offsets(ready: &Ready, to: NodeId) -> Vec<u64> {
    ready
        .messages
        .iter()
        .filter_map(|m| match &m.payload {
            Payload::InstallSnapshot { offset, .. } if m.to == to => Some(*offset),
            _ => None,
        })
        .collect()
}

#[test]
fn a_repeated_answer_to_a_chunk_does_not_send_the_next_chunk_twice() {
    let (mut n, term) = leader_sending_a_snapshot_to_2();
    let answer = |next_offset| {
        msg(
            2,
            1,
            term,
            Payload::InstallSnapshotResponse { snapshot: LogId::new(1, 5), next_offset, done: false },
        )
    };
    assert_eq!(install_offsets(&deliver(&mut n, answer(6)), 2), vec![6]);
    // The first chunk had been sent twice: its second answer arrives while chunk 6 is out.
    assert_eq!(
        install_offsets(&deliver(&mut n, answer(6)), 2),
        Vec::<u64>::new(),
        "no second copy of chunk 6"
    );
    // A follower that lost everything (restarted) still restarts the transfer.
    assert_eq!(install_offsets(&deliver(&mut n, answer(0)), 2), vec![0]);
}

#[test]
fn a_follower_silent_during_its_snapshot_stops_holding_back_compaction() {
    let (mut n, term) = leader_sending_a_snapshot_to_2();
    assert_eq!(n.compaction_floor(), 5, "the log after the snapshot being sent is kept");
    // Node 3 keeps answering (the leader keeps its quorum); node 2 is gone.
    let patience = n.config.election_timeout_max_ms * STALLED_TRANSFER_TIMEOUTS;
    let start = n.now;
    let mut released_at = None;
    while n.now <= start + patience + 2 * n.config.election_timeout_max_ms {
        let now = n.now + n.config.heartbeat_interval_ms;
        n.step(now, Event::Tick);
        let ready = n.take_ready();
        n.advance();
        if let Some(round) = round_sent_to(&ready, 3) {
            let ok = Payload::AppendEntriesResponse {
                result: AppendResult::Success { match_index: 5 },
                read_seq: round,
            };
            deliver(&mut n, msg(3, 1, term, ok));
        }
        assert_eq!(n.role(), Role::Leader);
        if n.compaction_floor() == Index::MAX && released_at.is_none() {
            released_at = Some(n.now - start);
        }
    }
    let released_at = released_at.expect("the floor was released");
    // Node 2 last answered just before `start`; the floor goes within a heartbeat of the
    // patience running out, not before.
    let heartbeat = n.config.heartbeat_interval_ms;
    assert!(
        (patience - heartbeat..=patience + heartbeat).contains(&released_at),
        "released {released_at} ms after the last answer, patience {patience} ms"
    );
}

#[test]
fn a_partial_incoming_snapshot_is_dropped_when_the_term_changes() {
    let mut n = node(2, 1, None, &[1]);
    let meta = crate::storage::SnapshotMeta {
        last_log_id: LogId::new(1, 50),
        membership: Membership::with_voters([1, 2, 3]),
    };
    let part = Payload::InstallSnapshot { meta, offset: 0, data: Bytes::from_static(b"part"), done: false };
    let ready = deliver(&mut n, msg(1, 2, 1, part.clone()));
    assert_eq!(n.status().incoming_snapshot, Some((LogId::new(1, 50), 4)));
    assert_eq!(ready.snapshot_parts.len(), 1);
    assert!(!ready.discard_staged_snapshot);
    // A new leader that needs no snapshot: the driver is told to drop what it staged.
    let ready = deliver(&mut n, msg(3, 2, 2, append((1, 1), vec![], 1)));
    assert_eq!(n.status().incoming_snapshot, None);
    assert!(ready.discard_staged_snapshot, "the staged part must not stay in storage or memory");
    // A part and the term change in one ready: the part is not handed over at all.
    let now = n.now;
    n.step(now, Event::Message(msg(3, 2, 2, part.clone())));
    n.step(now, Event::Message(msg(1, 2, 3, append((1, 1), vec![], 1))));
    let ready = n.take_ready();
    n.advance();
    assert!(ready.discard_staged_snapshot && ready.snapshot_parts.is_empty(), "{:?}", ready.snapshot_parts);
}

/// Snapshot `index` of term 4, as leader 1 of term 4 sends it.
fn meta_of_term_4(index: Index) -> crate::storage::SnapshotMeta {
    crate::storage::SnapshotMeta {
        last_log_id: LogId::new(4, index),
        membership: Membership::with_voters([1, 2, 3]),
    }
}

/// Node 3 of term 4, receiving snapshot 85 from leader 1: `parts` parts of 3 bytes staged.
fn receiving_snapshot_85(parts: u64) -> Raft {
    let mut n = node(3, 4, None, &[1]);
    for i in 0..parts {
        let ready = deliver(&mut n, msg(1, 3, 4, install(&meta_of_term_4(85), 3 * i, b"abc", false)));
        assert_eq!(ready.snapshot_parts.len(), 1);
    }
    n
}

/// The (snapshot, offset) of each part `ready` hands over to be staged.
fn parts_to_stage(ready: &Ready) -> Vec<(LogId, u64)> {
    ready.snapshot_parts.iter().map(|p| (p.meta.last_log_id, p.offset)).collect()
}

#[test]
fn parts_of_a_replaced_reception_are_not_staged_after_the_reception_is_given_up() {
    // Snapshot 85 is being received (3 parts staged); in one ready: its 4th part, then a
    // delayed copy of an older snapshot's first two parts (the reception restarts with it),
    // then a new term. Nothing may be staged after the discard: the 4th part of 85 would not
    // continue anything.
    let mut n = receiving_snapshot_85(3);
    let now = n.now;
    n.step(now, Event::Message(msg(1, 3, 4, install(&meta_of_term_4(85), 9, b"abc", false))));
    n.step(now, Event::Message(msg(1, 3, 4, install(&meta_of_term_4(56), 0, b"abc", false))));
    n.step(now, Event::Message(msg(1, 3, 4, install(&meta_of_term_4(56), 3, b"abc", false))));
    assert_eq!(n.status().incoming_snapshot, Some((LogId::new(4, 56), 6)));
    n.step(now, Event::Message(msg(2, 3, 5, append((1, 1), vec![], 1))));
    let ready = n.take_ready();
    n.advance();
    assert_eq!(n.status().incoming_snapshot, None);
    assert!(ready.discard_staged_snapshot);
    assert_eq!(parts_to_stage(&ready), vec![], "parts staged after the discard");
    // Without the term change, the replacing reception's parts alone are staged (from byte 0).
    let mut n = receiving_snapshot_85(1);
    let now = n.now;
    n.step(now, Event::Message(msg(1, 3, 4, install(&meta_of_term_4(85), 3, b"abc", false))));
    n.step(now, Event::Message(msg(1, 3, 4, install(&meta_of_term_4(56), 0, b"abc", false))));
    let ready = n.take_ready();
    n.advance();
    assert_eq!(parts_to_stage(&ready), vec![(LogId::new(4, 56), 0)]);
    assert!(!ready.discard_staged_snapshot, "staging restarts at byte 0 by itself");
}

#[test]
fn a_reception_replaced_by_a_held_install_then_given_up_leaves_nothing_to_stage() {
    // As above, with the state machine still restoring (installs held): the older snapshot's
    // whole, last part replaces the reception but is refused; the new term then gives it up.
    let mut n = receiving_snapshot_85(3);
    n.hold_snapshot_install(true);
    let now = n.now;
    n.step(now, Event::Message(msg(1, 3, 4, install(&meta_of_term_4(85), 9, b"abc", false))));
    n.step(now, Event::Message(msg(1, 3, 4, install(&meta_of_term_4(56), 0, b"abc", true))));
    n.step(now, Event::Message(msg(2, 3, 5, append((1, 1), vec![], 1))));
    let ready = n.take_ready();
    n.advance();
    assert_eq!(n.status().incoming_snapshot, None);
    assert!(ready.snapshot.is_none());
    assert!(ready.discard_staged_snapshot);
    assert_eq!(parts_to_stage(&ready), vec![]);
}

#[test]
fn an_install_and_the_start_of_another_snapshot_in_one_ready_stage_only_the_installed_one() {
    let mut n = node(2, 2, None, &[1]);
    let meta = |index| crate::storage::SnapshotMeta {
        last_log_id: LogId::new(2, index),
        membership: Membership::with_voters([1, 2, 3]),
    };
    let now = n.now;
    n.step(now, Event::Message(msg(1, 2, 2, install(&meta(10), 0, b"whole", true))));
    n.step(now, Event::Message(msg(1, 2, 2, install(&meta(20), 0, b"abc", false))));
    let ready = n.take_ready();
    n.advance();
    let installed = ready.snapshot.as_ref().map(|s| s.meta.last_log_id);
    assert_eq!(installed, Some(LogId::new(2, 10)));
    let staged: Vec<LogId> = ready.snapshot_parts.iter().map(|p| p.meta.last_log_id).collect();
    assert_eq!(
        staged,
        vec![LogId::new(2, 10)],
        "the next snapshot's part waits for the install to be stored"
    );
    assert!(!ready.discard_staged_snapshot);
    let answers: Vec<&Payload> =
        ready.messages.iter().chain(&ready.persisted_messages).map(|m| &m.payload).collect();
    assert!(
        answers.contains(&&Payload::InstallSnapshotResponse {
            snapshot: LogId::new(2, 20),
            next_offset: 0,
            done: false
        }),
        "the leader is asked to send it again: {answers:?}"
    );
    // Sent again, it is taken.
    let ready = deliver(&mut n, msg(1, 2, 2, install(&meta(20), 0, b"abc", false)));
    assert_eq!(ready.snapshot_parts.len(), 1);
}

#[test]
fn a_stale_leader_gets_no_round_echoed() {
    let mut n = node(2, 6, None, &[1]);
    let stale = Payload::AppendEntries {
        prev_log_id: LogId::new(1, 1),
        entries: vec![],
        leader_commit: 1,
        read_seq: 500,
    };
    let ready = deliver(&mut n, msg(1, 2, 5, stale));
    assert!(matches!(
        only_response(&ready).payload,
        Payload::AppendEntriesResponse { result: AppendResult::Reject { .. }, read_seq: 0 }
    ));
}

#[test]
fn a_round_this_leader_never_sent_confirms_nothing() {
    let (mut n, term) = leader_with_a_commit();
    let now = n.now;
    n.step(now, Event::Read { id: 5, mode: ReadMode::ReadIndex });
    let ready = n.take_ready();
    n.advance();
    let round = round_sent_to(&ready, 2).expect("round");
    // An answer echoing a round from a previous incarnation of this leader (a higher counter).
    let ready = deliver(&mut n, msg(2, 1, term, ack(1, round + 1_000)));
    assert!(ready.reads.is_empty(), "confirmed by a round this process never sent");
    let ready = deliver(&mut n, msg(3, 1, term, ack(1, round)));
    assert_eq!(ready.reads, vec![ReadOutcome { id: 5, result: Ok(1) }]);
}

#[test]
fn a_read_round_does_not_resend_probes_with_entries() {
    let (mut n, term) = leader_with_a_commit();
    // Follower 3 never answered: it is still probed. Give the leader entries to send.
    let now = n.now;
    n.step(now, Event::Propose { id: 1, command: Bytes::from_static(b"x"), forward: false });
    let _ = n.take_ready();
    n.advance();
    n.step(now, Event::Read { id: 2, mode: ReadMode::ReadIndex });
    let ready = n.take_ready();
    n.advance();
    let to_3: Vec<&Message> = ready.messages.iter().filter(|m| m.to == 3).collect();
    assert_eq!(to_3.len(), 1, "one message carries the round to 3");
    assert!(
        matches!(&to_3[0].payload, Payload::AppendEntries { entries, .. } if entries.is_empty()),
        "a read round sends no entries to a probed follower"
    );
    let _ = term;
}

// ---- defects found by the adversarial review ----

#[test]
fn a_one_voter_leader_sends_nothing_of_its_new_term_before_saving_it() {
    let membership = Membership { learners: [2].into(), ..Membership::with_voters([1]) };
    let restored = RestoredState { membership, ..RestoredState::default() };
    let mut n = Raft::new(1, Config::default(), restored, 1, 0).expect("config");
    n.step(10_000, Event::Tick);
    assert_eq!(n.role(), Role::Leader, "one voter elects itself in one step");
    let ready = n.take_ready();
    assert!(ready.hard_state.is_some());
    assert!(ready.messages.is_empty(), "sent before the term is durable: {:?}", ready.messages);
    assert!(
        ready
            .persisted_messages
            .iter()
            .any(|m| m.to == 2 && matches!(m.payload, Payload::AppendEntries { .. })),
        "the learner's AppendEntries waits for the write"
    );
    assert!(!n.status().term_durable, "leading in name only until the term is saved");
    n.advance();
    assert!(n.status().term_durable);
}

#[test]
fn a_forwarded_proposal_delivered_twice_is_appended_once() {
    let mut n = node(1, 1, None, &[1]);
    elect(&mut n);
    let term = n.term();
    let forward = || msg(2, 1, term, Payload::ForwardProposal { id: 9, command: Bytes::from_static(b"x") });
    let first = deliver(&mut n, forward());
    let second = deliver(&mut n, forward());
    let answer = |ready: &Ready| {
        ready
            .messages
            .iter()
            .chain(ready.persisted_messages.iter())
            .find_map(|m| match &m.payload {
                Payload::ForwardProposalResponse { id: 9, result } => Some(*result),
                _ => None,
            })
            .expect("answered")
    };
    let log_id = answer(&first).expect("appended");
    assert_eq!(answer(&second), Ok(log_id), "the duplicate gets the same answer");
    assert_eq!(n.last_log_id(), log_id, "and nothing more is appended");
    let commands = (1..=n.last_log_id().index)
        .filter(|i| n.entry(*i).is_some_and(|e| e.payload == EntryPayload::Command(Bytes::from_static(b"x"))))
        .count();
    assert_eq!(commands, 1);
    // A forward sent to this node in an older term is never appended now.
    let stale = deliver(
        &mut n,
        msg(3, 1, term - 1, Payload::ForwardProposal { id: 10, command: Bytes::from_static(b"y") }),
    );
    assert!(matches!(
        only_response(&stale).payload,
        Payload::ForwardProposalResponse { id: 10, result: Err(ForwardRejection::NotLeader { .. }) }
    ));
    assert_eq!(n.last_log_id(), log_id);
}

#[test]
fn a_reused_forward_id_with_another_command_is_refused_not_taken_for_the_first() {
    // A follower restarted with ids that repeat its previous process's: its new proposal must
    // not be answered with the log id of the old one.
    let mut n = node(1, 1, None, &[1]);
    elect(&mut n);
    let term = n.term();
    let first = deliver(
        &mut n,
        msg(2, 1, term, Payload::ForwardProposal { id: 9, command: Bytes::from_static(b"a") }),
    );
    assert!(matches!(
        only_response(&first).payload,
        Payload::ForwardProposalResponse { id: 9, result: Ok(_) }
    ));
    let last = n.last_log_id();
    let reused = deliver(
        &mut n,
        msg(2, 1, term, Payload::ForwardProposal { id: 9, command: Bytes::from_static(b"b") }),
    );
    assert!(matches!(
        only_response(&reused).payload,
        Payload::ForwardProposalResponse { id: 9, result: Err(ForwardRejection::Busy) }
    ));
    assert_eq!(n.last_log_id(), last, "nothing appended for the reused id");
}

fn snapshot_at(term: Term, index: Index) -> Snapshot {
    Snapshot {
        meta: crate::storage::SnapshotMeta {
            last_log_id: LogId::new(term, index),
            membership: Membership::with_voters([1, 2, 3]),
        },
        data: crate::storage::SnapshotData::default(),
    }
}

#[test]
fn restore_refuses_a_log_that_does_not_reach_the_snapshot_or_disagrees_with_it() {
    // Each case is restored with the log whole, half as stubs and all stubs: same outcome.
    let restore = |term: Term, snapshot: Snapshot, entries: Vec<Entry>| {
        let outcomes: Vec<Result<(), RestoreError>> = [0, entries.len() / 2, entries.len()]
            .into_iter()
            .map(|split| {
                let mut entries = entries.clone();
                let stubs = entries.drain(..split).map(|e| EntryStub::from(&e)).collect();
                let restored = RestoredState {
                    hard_state: HardState { current_term: term, voted_for: None },
                    snapshot: Some(snapshot.clone()),
                    stubs,
                    entries,
                    membership: Membership::with_voters([1, 2, 3]),
                    recorded_last: None,
                    recorded_config: None,
                    staged: None,
                };
                Raft::new(1, Config::default(), restored, 1, 0).map(|_| ())
            })
            .collect();
        let first = format!("{:?}", outcomes[0]);
        assert!(outcomes.iter().all(|o| format!("{o:?}") == first), "{outcomes:?}");
        outcomes.into_iter().next().expect("three outcomes")
    };
    let ends_before = restore(1, snapshot_at(1, 100), log_of(&[1; 50]));
    assert!(matches!(ends_before, Err(RestoreError::Inconsistent(_))), "{ends_before:?}");
    let other_term = restore(2, snapshot_at(2, 10), log_of(&[1; 20]));
    assert!(matches!(other_term, Err(RestoreError::Inconsistent(_))), "{other_term:?}");
    let rolled_back = restore(1, snapshot_at(1, 10), log_of(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2]));
    assert!(matches!(rolled_back, Err(RestoreError::Inconsistent(_))), "{rolled_back:?}");
    let snapshot_ahead_of_term = restore(1, snapshot_at(3, 10), Vec::new());
    assert!(matches!(snapshot_ahead_of_term, Err(RestoreError::Inconsistent(_))));
    // What correct storage holds is accepted: a log covering the snapshot, one after it, none.
    assert!(restore(2, snapshot_at(1, 10), log_of(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2])).is_ok());
    let after: Vec<Entry> = (11..=12).map(|i| entry(2, i)).collect();
    assert!(restore(2, snapshot_at(1, 10), after).is_ok());
    assert!(restore(1, snapshot_at(1, 10), Vec::new()).is_ok());
}

#[test]
fn a_vote_in_the_current_term_keeps_the_lease_promise_after_a_higher_term_answer() {
    // Node 2 follows leader 1 in term 2 and has just heard from it: its vote belongs to no one
    // else for an election timeout (the leader's lease reads rely on that).
    let mut v = node(2, 2, None, &[1, 2]);
    deliver(&mut v, msg(1, 2, 2, append((2, 2), vec![], 2)));
    assert_eq!(v.leader(), Some(1));
    let vote = |t| {
        msg(
            3,
            2,
            t,
            Payload::RequestVote {
                pre_vote: false,
                last_log_id: LogId::new(2, 2),
                leadership_transfer: false,
            },
        )
    };
    let granted = |r: &Ready| {
        r.persisted_messages.iter().chain(&r.messages).any(|m| {
            m.payload
                == Payload::RequestVoteResponse {
                    pre_vote: false,
                    granted: true,
                    vouches: true,
                    witnesses: None,
                }
        })
    };
    assert!(!granted(&deliver(&mut v, vote(3))), "ignored while the leader is heard");
    // An answer of node 3 to an old message raises node 2's term and clears its leader...
    deliver(
        &mut v,
        msg(
            3,
            2,
            3,
            Payload::RequestVoteResponse { pre_vote: false, granted: false, vouches: false, witnesses: None },
        ),
    );
    assert_eq!(v.term(), 3);
    // ...but a vote request of that term, at the same instant, is still refused.
    assert!(!granted(&deliver(&mut v, vote(3))), "voted inside the lease of leader 1");
    assert_eq!(v.hard_state().voted_for, None);
    // After an election timeout without the leader, the vote is granted.
    let later = v.config().election_timeout_min_ms + 1;
    v.step(later, Event::Message(vote(3)));
    let r = v.take_ready();
    v.advance();
    assert!(granted(&r), "granted once the lease is over");
}

#[test]
fn a_leader_survives_a_rejection_with_huge_indexes() {
    let mut n = node(1, 0, None, &[]);
    elect(&mut n);
    let term = n.term();
    let result = AppendResult::Reject {
        rejected_prev_index: u64::MAX,
        hint: ConflictHint { conflict_term: None, index: u64::MAX },
    };
    deliver(&mut n, msg(2, 1, term, Payload::AppendEntriesResponse { result, read_seq: 0 }));
    assert_eq!(n.role(), Role::Leader);
}

#[test]
fn a_message_with_the_largest_term_is_dropped() {
    let mut n = node(2, 1, None, &[1]);
    let r = deliver(&mut n, msg(3, 2, u64::MAX, Payload::TimeoutNow));
    assert_eq!(n.term(), 1, "the term is not adopted");
    assert!(r.messages.is_empty() && r.persisted_messages.is_empty() && r.hard_state.is_none());
    n.step(100_000, Event::Tick);
    let _ = n.take_ready();
    n.advance();
    assert!(n.term() <= 2);
}

#[test]
fn a_term_past_the_limit_is_dropped_and_counted_but_any_term_below_is_adopted() {
    let mut n = node(2, 1, None, &[1]);
    for forged in [TERM_LIMIT + 1, u64::MAX - 1, u64::MAX] {
        let vote =
            Payload::RequestVoteResponse { pre_vote: false, granted: true, vouches: true, witnesses: None };
        let r = deliver(&mut n, msg(3, 2, forged, vote));
        assert_eq!(n.term(), 1, "term {forged} adopted");
        assert!(r.hard_state.is_none());
    }
    assert_eq!(n.status().dropped_messages, 3);
    // A learner joining a cluster that has run for a while: a jump of 10,000 terms is legitimate.
    deliver(&mut n, msg(1, 2, 10_000, append((1, 1), vec![], 1)));
    assert_eq!((n.term(), n.leader()), (10_000, Some(1)));
    // So is the limit itself.
    deliver(&mut n, msg(1, 2, TERM_LIMIT, append((1, 1), vec![], 1)));
    assert_eq!(n.term(), TERM_LIMIT);
    assert_eq!(n.status().dropped_messages, 3);
}

#[test]
fn malformed_append_entries_are_dropped() {
    let mut n = node(2, 2, None, &[1]);
    // Not contiguous with prev, a term above the message's, a term going down.
    for entries in [vec![entry(2, 3)], vec![entry(3, 2)], vec![entry(2, 2), entry(1, 3)]] {
        let r = deliver(&mut n, msg(1, 2, 2, append((1, 1), entries, 0)));
        assert!(r.entries.is_empty() && r.messages.is_empty() && r.persisted_messages.is_empty());
        assert_eq!(n.last_log_id(), LogId::new(1, 1));
    }
    let r = deliver(&mut n, msg(1, 2, 2, append((1, 1), vec![entry(2, 2)], 0)));
    assert_eq!(r.entries.len(), 1, "a well-formed one is taken");
}

#[test]
fn a_change_is_refused_until_new_voters_have_caught_up_and_a_majority_answers() {
    let (mut n, term) = leader_with_a_commit();
    let now = n.now;
    // Node 3 never answered: removing node 2 would leave {1, 3} with one live voter.
    assert_eq!(
        n.propose_membership_change(now, &MembershipChange::RemoveNode(2), false),
        Err(ProposalRejection::NoLiveQuorum { live: 1, voters: 2 })
    );
    // Adding learner 4 is fine (the voters do not change); promoting it waits for its log.
    let at = n.propose_membership_change(now, &MembershipChange::AddLearner(4), false).expect("a learner");
    let _ = n.take_ready();
    n.advance();
    deliver(&mut n, msg(2, 1, term, ack(at.index, 0)));
    assert_eq!(n.commit_index(), at.index);
    assert_eq!(
        n.propose_membership_change(now, &MembershipChange::PromoteLearner(4), false),
        Err(ProposalRejection::NotCaughtUp { node: 4 })
    );
    // Once node 4 has the committed log and answers, it can be promoted.
    deliver(&mut n, msg(4, 1, term, ack(at.index, 0)));
    n.propose_membership_change(now, &MembershipChange::PromoteLearner(4), false).expect("caught up");
}

#[test]
fn a_node_that_stopped_answering_does_not_count_as_live() {
    let (mut n, term) = leader_with_a_commit();
    deliver(&mut n, msg(3, 1, term, ack(1, 0)));
    let now = n.now;
    n.propose_membership_change(now, &MembershipChange::RemoveNode(2), false).expect("2 of 3 answer");
    // An election timeout later, without answers, the same change is refused, unless forced.
    let (mut n, term) = leader_with_a_commit();
    deliver(&mut n, msg(3, 1, term, ack(1, 0)));
    let later = n.now + n.config().election_timeout_min_ms;
    n.step(later, Event::Tick);
    let _ = n.take_ready();
    n.advance();
    let change = MembershipChange::RemoveNode(2);
    assert_eq!(
        n.propose_membership_change(later, &change, false),
        Err(ProposalRejection::NoLiveQuorum { live: 1, voters: 2 })
    );
    n.propose_membership_change(later, &change, true).expect("forced");
}

#[test]
fn a_follower_one_batch_behind_counts_as_caught_up() {
    // Under sustained writes a healthy follower trails the commit index by what is in flight.
    let (mut n, term) = leader_with_a_commit();
    deliver(&mut n, msg(3, 1, term, ack(0, 0)));
    let now = n.now;
    n.propose_membership_change(now, &MembershipChange::RemoveNode(2), false)
        .expect("node 3 answers, one behind");
}

/// The vote requests of a (pre-)election `ready` sent, as (to, term, pre_vote).
fn vote_requests(ready: &Ready) -> Vec<(NodeId, Term, bool)> {
    ready
        .messages
        .iter()
        .chain(ready.persisted_messages.iter())
        .filter_map(|m| match m.payload {
            Payload::RequestVote { pre_vote, .. } => Some((m.to, m.term, pre_vote)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_refusal_from_a_later_term_starts_one_more_election_at_once() {
    // Node 1 campaigns at term 4 (no pre-vote); voters 2 and 3 have moved on to term 9.
    let config = Config { pre_vote: false, ..Config::default() };
    let restored = RestoredState {
        hard_state: HardState { current_term: 3, voted_for: None },
        entries: log_of(&[1, 2, 3]),
        membership: Membership::with_voters([1, 2, 3]),
        ..RestoredState::default()
    };
    let mut n = Raft::new(1, config, restored, 1, 0).expect("valid config");
    n.step(10_000, Event::Tick);
    let first = n.take_ready();
    n.advance();
    assert_eq!(n.role(), Role::Candidate);
    assert_eq!(vote_requests(&first), vec![(2, 4, false), (3, 4, false)]);
    let refusal =
        Payload::RequestVoteResponse { pre_vote: false, granted: false, vouches: false, witnesses: None };
    let again = deliver(&mut n, msg(2, 1, 9, refusal.clone()));
    assert_eq!(n.role(), Role::Candidate, "campaigns again without waiting for a timeout");
    assert_eq!(n.term(), 10);
    assert_eq!(vote_requests(&again), vec![(2, 10, false), (3, 10, false)]);
    // Once per election timeout: a second refusal from a later term only makes it follow.
    let later = deliver(&mut n, msg(3, 1, 12, refusal.clone()));
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.term(), 12);
    assert!(vote_requests(&later).is_empty());
    // The next timeout campaigns as usual, with a fresh retry.
    n.step(20_000, Event::Tick);
    let next = n.take_ready();
    n.advance();
    assert_eq!(vote_requests(&next), vec![(2, 13, false), (3, 13, false)]);
    let again = deliver(&mut n, msg(2, 1, 15, refusal));
    assert_eq!(vote_requests(&again), vec![(2, 16, false), (3, 16, false)]);
    // A refusal from the same term, or an answer to an older election, starts nothing.
    let same = deliver(
        &mut n,
        msg(
            3,
            1,
            16,
            Payload::RequestVoteResponse { pre_vote: false, granted: false, vouches: false, witnesses: None },
        ),
    );
    assert!(vote_requests(&same).is_empty());
}

#[test]
fn a_follower_does_not_campaign_on_a_late_refusal_from_a_later_term() {
    let mut n = node(1, 3, None, &[1]);
    let refusal =
        Payload::RequestVoteResponse { pre_vote: false, granted: false, vouches: false, witnesses: None };
    let ready = deliver(&mut n, msg(2, 1, 7, refusal));
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.term(), 7);
    assert!(vote_requests(&ready).is_empty());
}

/// Review: with pre-vote on, a pre-candidate refused from a later term (by a voter that had
/// just voted for another candidate) must not pre-vote again at once: it would then depose
/// the leader it voted for.
#[test]
fn a_refused_pre_candidate_does_not_depose_the_leader_it_voted_for() {
    let mut n = node(1, 4, None, &[1, 2, 3]);
    n.step(10_000, Event::Tick);
    let _ = n.take_ready();
    n.advance();
    assert_eq!(n.role(), Role::PreCandidate);
    deliver(
        &mut n,
        msg(
            3,
            1,
            5,
            Payload::RequestVoteResponse { pre_vote: true, granted: false, vouches: false, witnesses: None },
        ),
    );
    let rv =
        Payload::RequestVote { pre_vote: false, last_log_id: LogId::new(3, 3), leadership_transfer: false };
    let ready = deliver(&mut n, msg(2, 1, 5, rv));
    assert_eq!(
        only_response(&ready).payload,
        Payload::RequestVoteResponse { pre_vote: false, granted: true, vouches: true, witnesses: None }
    );
    deliver(
        &mut n,
        msg(
            2,
            1,
            6,
            Payload::RequestVoteResponse { pre_vote: true, granted: true, vouches: true, witnesses: None },
        ),
    );
    let ready = deliver(&mut n, msg(2, 1, 5, append((3, 3), vec![entry(5, 4)], 0)));
    let reply = only_response(&ready);
    assert_eq!(
        (n.role(), n.term(), n.leader()),
        (Role::Follower, 5, Some(2)),
        "answered node 2's first AppendEntries with term {}: {:?}",
        reply.term,
        reply.payload
    );
}

#[test]
fn a_leader_under_check_quorum_does_not_answer_an_earlier_term_vote_request() {
    let mut n = node(1, 3, None, &[1]);
    elect(&mut n);
    let term = n.term();
    let req =
        Payload::RequestVote { pre_vote: false, last_log_id: LogId::new(1, 1), leadership_transfer: false };
    let ready = deliver(&mut n, msg(2, 1, term - 1, req));
    assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty(), "{ready:?}");
    assert_eq!(n.role(), Role::Leader);
}

// ---- review of the background log writer (917026d) ----

fn payload_of(e: &Entry) -> Option<Bytes> {
    match &e.payload {
        EntryPayload::Command(c) => Some(c.clone()),
        _ => None,
    }
}

/// A one-voter leader whose first ready (its new term, its no-op) is still being written sends
/// the learner its entries from a later ready (the heartbeat re-probe). It crashes before the
/// write is durable, restarts in the previous term, elects itself in the same term again and
/// puts another command at the same (term, index): the learner keeps the first one (same
/// term: no conflict) and applies it as committed, while the leader applied the second.
#[test]
fn a_one_voter_leader_sends_nothing_of_its_term_before_the_term_is_durable() {
    let membership = Membership { learners: [2].into(), ..Membership::with_voters([1]) };
    let fresh = || RestoredState { membership: membership.clone(), ..RestoredState::default() };
    let mut leader = Raft::new(1, Config::default(), fresh(), 1, 0).expect("config");
    let mut learner = Raft::new(2, Config::default(), fresh(), 1, 0).expect("config");
    leader.step(10_000, Event::Tick);
    assert_eq!(leader.role(), Role::Leader);
    let term = leader.term();
    let first = leader.take_ready();
    assert!(first.hard_state.is_some() && first.messages.is_empty());
    leader.advance_unpersisted(); // the term and the no-op are queued, not durable
    leader.step(10_001, Event::Propose { id: 1, command: Bytes::from_static(b"x"), forward: false });
    let _ = leader.take_ready();
    leader.advance_unpersisted();
    // One heartbeat interval later (the write is still under way): a re-probe goes out at once.
    leader.step(10_000 + leader.config().heartbeat_interval_ms, Event::Tick);
    let ready = leader.take_ready();
    leader.advance_unpersisted();
    let early: Vec<Message> = ready.messages.clone();
    // The learner takes it.
    for m in early.iter().filter(|m| m.to == 2) {
        learner.step(10_030, Event::Message(m.clone()));
    }
    let _ = learner.take_ready();
    learner.advance();
    // Crash: nothing of the leader's was durable. It starts again from what storage holds.
    let mut again = Raft::new(1, Config::default(), fresh(), 2, 20_000).expect("config");
    again.step(40_000, Event::Tick);
    assert_eq!((again.role(), again.term()), (Role::Leader, term), "the same term again");
    let r = again.take_ready();
    again.advance();
    let mut to_learner: Vec<Message> = r.messages.into_iter().chain(r.persisted_messages).collect();
    again.step(40_001, Event::Propose { id: 1, command: Bytes::from_static(b"y"), forward: false });
    let r = again.take_ready();
    again.advance();
    to_learner.extend(r.messages.into_iter().chain(r.persisted_messages));
    let mut learner_applied = Vec::new();
    for _ in 0..10 {
        let mut back = Vec::new();
        for m in to_learner.drain(..).filter(|m| m.to == 2) {
            learner.step(40_010, Event::Message(m));
            let r = learner.take_ready();
            learner.advance();
            learner_applied.extend(r.committed);
            back.extend(r.messages.into_iter().chain(r.persisted_messages));
        }
        for m in back {
            again.step(40_020, Event::Message(m));
        }
        if again.has_ready() {
            let r = again.take_ready();
            again.advance();
            to_learner.extend(r.messages.into_iter().chain(r.persisted_messages));
        }
    }
    let leader_at_2 = again.entry(2).and_then(payload_of);
    let learner_at_2 = learner_applied.iter().find(|e| e.index == 2).and_then(payload_of);
    if learner_at_2.is_some() {
        assert_eq!(learner_at_2, leader_at_2, "the learner applied another command at index 2");
    }
    assert!(
        early.iter().all(|m| m.to != 2
            || !matches!(&m.payload, Payload::AppendEntries { entries, .. } if !entries.is_empty())),
        "entries of term {term} left before the term was durable: {early:?}"
    );
}

/// The target of a transfer caught up before the leader's own last write was durable: the
/// TimeoutNow is then due when that write is reported, but only a later answer of the target
/// sends it.
#[test]
fn timeout_now_goes_out_when_the_leaders_own_write_is_reported() {
    let mut n = node(1, 1, None, &[]);
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    let now = n.now;
    n.step(now, Event::Propose { id: 1, command: Bytes::from_static(b"x"), forward: false });
    let r = n.take_ready();
    let (through, seq) = (r.persist_through, r.seq);
    n.advance_unpersisted();
    assert_eq!(n.transfer_leadership(now, Some(2)), Ok(2));
    let _ = n.take_ready();
    n.advance_unpersisted();
    n.step(now, Event::Message(msg(2, 1, term, ack(2, 0))));
    let r = n.take_ready();
    n.advance_unpersisted();
    assert!(!r.persisted_messages.iter().chain(r.messages.iter()).any(|m| m.payload == Payload::TimeoutNow));
    n.step(now, Event::Persisted { last: through, seq });
    let r = n.take_ready();
    n.advance_unpersisted();
    assert!(
        r.persisted_messages
            .iter()
            .chain(r.messages.iter())
            .any(|m| m.to == 2 && m.payload == Payload::TimeoutNow),
        "target and leader hold the whole log durably, no TimeoutNow: {r:?}"
    );
}

/// A node whose storage lost entries 4..=6 of term 2 (recorded as durable, so possibly
/// acknowledged): its log ends at 3.
fn node_that_lost_entries() -> Raft {
    let restored = RestoredState {
        hard_state: HardState { current_term: 2, voted_for: Some(1) },
        entries: log_of(&[1, 1, 2]),
        membership: Membership::with_voters([1, 2, 3]),
        recorded_last: Some(LogId::new(2, 6)),
        ..RestoredState::default()
    };
    let mut raft = Raft::new(2, Config::default(), restored, 1, 0).expect("valid config");
    raft.boot_quiet_until = 0;
    raft
}

fn vote_request(last: LogId, pre_vote: bool) -> Payload {
    Payload::RequestVote { pre_vote, last_log_id: last, leadership_transfer: false }
}

/// The answer in `ready`: (granted, vouches).
fn ballot(ready: &Ready) -> (bool, bool) {
    match only_response(ready).payload {
        Payload::RequestVoteResponse { granted, vouches, .. } => (granted, vouches),
        ref other => panic!("not a vote's answer: {other:?}"),
    }
}

#[test]
fn a_node_that_lost_entries_vouches_only_for_logs_reaching_what_it_had() {
    let mut n = node_that_lost_entries();
    assert_eq!(n.status().recovering_to, Some(LogId::new(2, 6)));
    // Candidate 3's log (2, 5) is ahead of what this node holds (2, 3) but behind what it had
    // stored (2, 6): it grants, but does not vouch for that log.
    let ready = deliver(&mut n, msg(3, 2, 3, vote_request(LogId::new(2, 5), true)));
    assert_eq!(ballot(&ready), (true, false), "pre-vote");
    let ready = deliver(&mut n, msg(3, 2, 3, vote_request(LogId::new(2, 5), false)));
    assert_eq!(ballot(&ready), (true, false), "vote");
    // A log behind the one it holds is refused, as by any voter.
    let ready = deliver(&mut n, msg(1, 2, 4, vote_request(LogId::new(2, 2), false)));
    assert_eq!(ballot(&ready), (false, false));
    // A candidate whose log reaches the recorded entry gets a vouching vote.
    let ready = deliver(&mut n, msg(1, 2, 5, vote_request(LogId::new(2, 6), false)));
    assert_eq!(ballot(&ready), (true, true), "a log as up to date as the recorded one");
}

/// Node 1 of {1, 2, 3}, pre-candidate in term 3 with a whole log.
fn whole_pre_candidate() -> Raft {
    let mut n = node(1, 2, None, &[1, 1, 2]);
    tick_until_campaigning(&mut n);
    assert_eq!(n.role(), Role::PreCandidate);
    n
}

#[test]
fn a_grant_that_does_not_vouch_counts_for_the_quorum_only() {
    let unvouched =
        Payload::RequestVoteResponse { pre_vote: true, granted: true, vouches: false, witnesses: None };
    // Its own vote and node 2's unvouched grant make a quorum, but the majority {2, 3} lies
    // outside the vouching voters ({1}): not yet won.
    let mut n = whole_pre_candidate();
    let _ = deliver(&mut n, msg(2, 1, 3, unvouched.clone()));
    assert_eq!(n.role(), Role::PreCandidate, "won with a majority outside the vouching voters");
    // Node 3 vouches: no majority of {1, 2, 3} lies outside {1, 3}.
    let _ = deliver(&mut n, msg(3, 1, 3, vote_response(true, true)));
    assert_eq!(n.role(), Role::Candidate);
    // Node 3 refusing instead leaves no way to win.
    let mut n = whole_pre_candidate();
    let _ = deliver(&mut n, msg(2, 1, 3, unvouched));
    let _ = deliver(&mut n, msg(3, 1, 3, vote_response(true, false)));
    assert_eq!(n.role(), Role::Follower, "lost: only node 1 vouches");
}

fn vote_response(pre_vote: bool, granted: bool) -> Payload {
    Payload::RequestVoteResponse { pre_vote, granted, vouches: granted, witnesses: None }
}

/// Ticks until the election timer fires.
fn tick_until_campaigning(n: &mut Raft) {
    for t in (10_000..).step_by(1_000).take(100) {
        n.step(t, Event::Tick);
        let _ = n.take_ready();
        n.advance();
        if n.role() != Role::Follower {
            return;
        }
    }
    panic!("never campaigned");
}

#[test]
fn a_node_that_lost_entries_is_elected_only_by_the_others() {
    let mut n = node_that_lost_entries();
    tick_until_campaigning(&mut n);
    assert_eq!(n.role(), Role::PreCandidate);
    // One pre-vote besides its own would make a whole node a candidate; this one's own does
    // not count.
    let _ = deliver(&mut n, msg(1, 2, 3, vote_response(true, true)));
    assert_eq!(n.role(), Role::PreCandidate, "its own pre-vote counted while recovering");
    let _ = deliver(&mut n, msg(3, 2, 3, vote_response(true, true)));
    assert_eq!(n.role(), Role::Candidate);
    assert_eq!(n.term(), 3);
    let _ = deliver(&mut n, msg(3, 2, 3, vote_response(false, true)));
    assert_eq!(n.role(), Role::Candidate, "its own vote counted while recovering");
    let _ = deliver(&mut n, msg(1, 2, 3, vote_response(false, true)));
    assert_eq!(n.role(), Role::Leader, "a majority of the others elects it");
    // Its first entry, of term 3, is more up to date than the recorded (2, 6): once durable
    // (deliver advances as if persisted), it is whole.
    assert_eq!(n.status().recovering_to, None);
}

#[test]
fn a_node_that_lost_entries_loses_its_election_on_one_refusal_of_three() {
    let mut n = node_that_lost_entries();
    tick_until_campaigning(&mut n);
    let _ = deliver(&mut n, msg(1, 2, 2, vote_response(true, false)));
    assert_eq!(n.role(), Role::Follower, "one refusal leaves no majority without its own vote");
    assert_eq!(n.status().recovering_to, Some(LogId::new(2, 6)));
}

/// A node like [`node_that_lost_entries`] whose storage recorded its newest configuration at
/// `recorded_config` (its restored log holds none: the initial one, at the empty log's id).
fn node_that_lost_entries_recording(recorded_config: Option<LogId>) -> Raft {
    let restored = RestoredState {
        hard_state: HardState { current_term: 2, voted_for: Some(1) },
        entries: log_of(&[1, 1, 2]),
        membership: Membership::with_voters([1, 2, 3]),
        recorded_last: Some(LogId::new(2, 6)),
        recorded_config,
        ..RestoredState::default()
    };
    let mut raft = Raft::new(2, Config::default(), restored, 1, 0).expect("valid config");
    raft.boot_quiet_until = 0;
    raft
}

/// The witnesses named in `ready`'s only message, a vote's answer.
fn witnesses_in(ready: &Ready) -> Option<BTreeSet<NodeId>> {
    match &only_response(ready).payload {
        Payload::RequestVoteResponse { witnesses, .. } => witnesses.clone(),
        other => panic!("not a vote's answer: {other:?}"),
    }
}

#[test]
fn a_node_that_lost_entries_names_its_voters_as_witnesses_only_when_no_configuration_was_lost() {
    // Recorded where the restored log has it: the voters {1, 2, 3} are named with a grant
    // that does not vouch.
    let mut n = node_that_lost_entries_recording(Some(LogId::default()));
    let ready = deliver(&mut n, msg(3, 2, 3, vote_request(LogId::new(2, 5), true)));
    assert_eq!(ballot(&ready), (true, false));
    assert_eq!(witnesses_in(&ready), Some(BTreeSet::from([1, 2, 3])));
    // Not with a grant that vouches, nor with a refusal.
    let ready = deliver(&mut n, msg(1, 2, 5, vote_request(LogId::new(2, 6), false)));
    assert_eq!((ballot(&ready), witnesses_in(&ready)), ((true, true), None));
    let ready = deliver(&mut n, msg(3, 2, 5, vote_request(LogId::new(2, 2), true)));
    assert_eq!((ballot(&ready), witnesses_in(&ready)), ((false, false), None));
    // A configuration recorded elsewhere (entry 5, lost), or not known: no witnesses.
    for recorded in [Some(LogId::new(2, 5)), None] {
        let mut n = node_that_lost_entries_recording(recorded);
        let ready = deliver(&mut n, msg(3, 2, 3, vote_request(LogId::new(2, 5), true)));
        assert_eq!((ballot(&ready), witnesses_in(&ready)), ((true, false), None), "{recorded:?}");
    }
    // Once recovered, its grants vouch again and name nobody.
    let mut n = node_that_lost_entries_recording(Some(LogId::default()));
    let _ = deliver(&mut n, msg(1, 2, 2, append((2, 3), vec![entry(2, 4), entry(2, 5), entry(2, 6)], 3)));
    assert_eq!(n.status().recovering_to, None);
}

/// Node 2, whole, pre-candidate in term 3 under the joint configuration whose new voter set
/// is node 3 alone ({3} / {1, 2, 3}): the shape of node-simulation seed 627994.
fn pre_candidate_needing_node_3_alone() -> Raft {
    let joint = Membership {
        voters: BTreeSet::from([3]),
        outgoing_voters: BTreeSet::from([1, 2, 3]),
        learners: BTreeSet::new(),
    };
    let restored = RestoredState {
        hard_state: HardState { current_term: 2, voted_for: None },
        entries: log_of(&[1, 1, 2]),
        membership: joint,
        ..RestoredState::default()
    };
    let mut n = Raft::new(2, Config::default(), restored, 1, 0).expect("valid config");
    n.boot_quiet_until = 0;
    tick_until_campaigning(&mut n);
    assert_eq!(n.role(), Role::PreCandidate);
    n
}

#[test]
fn a_voter_set_of_one_recovering_voter_is_met_by_the_witnesses_it_names() {
    let unvouched = |witnesses: Option<BTreeSet<NodeId>>| Payload::RequestVoteResponse {
        pre_vote: true,
        granted: true,
        vouches: false,
        witnesses,
    };
    let all = Some(BTreeSet::from([1, 2, 3]));
    // Node 3 grants without vouching and names {1, 2, 3}; with node 1 vouching, every
    // majority of {1, 2, 3} meets the vouching voters {1, 2}: won.
    let mut n = pre_candidate_needing_node_3_alone();
    let _ = deliver(&mut n, msg(3, 2, 3, unvouched(all.clone())));
    assert_eq!(n.role(), Role::PreCandidate, "won before a majority of the witnesses vouched");
    let _ = deliver(&mut n, msg(1, 2, 3, vote_response(true, true)));
    assert_eq!(n.role(), Role::Candidate, "the witnesses met the set {{3}}");
    // Node 1 refusing: the witnesses' majority {1, 3} holds no vouching voter: lost.
    let mut n = pre_candidate_needing_node_3_alone();
    let _ = deliver(&mut n, msg(3, 2, 3, unvouched(all)));
    let _ = deliver(&mut n, msg(1, 2, 3, vote_response(true, false)));
    assert_eq!(n.role(), Role::Follower, "won on one vouching witness of three");
    // Node 1 granting without vouching (it lost data too): not won either.
    let mut n = pre_candidate_needing_node_3_alone();
    let _ = deliver(&mut n, msg(3, 2, 3, unvouched(Some(BTreeSet::from([1, 2, 3])))));
    let _ = deliver(&mut n, msg(1, 2, 3, unvouched(None)));
    assert_eq!(n.role(), Role::Follower, "won on a witness that does not vouch");
    // No witnesses named, or only itself: the set {3} cannot be met.
    for named in [None, Some(BTreeSet::from([3])), Some(BTreeSet::new())] {
        let mut n = pre_candidate_needing_node_3_alone();
        let _ = deliver(&mut n, msg(3, 2, 3, unvouched(named.clone())));
        let _ = deliver(&mut n, msg(1, 2, 3, vote_response(true, true)));
        assert_eq!(n.role(), Role::Follower, "won on node 3's grant naming {named:?}");
    }
}

#[test]
fn a_node_that_lost_entries_recovers_from_its_leader() {
    let mut n = node_that_lost_entries();
    let _ = deliver(&mut n, msg(1, 2, 2, append((2, 3), vec![entry(2, 4), entry(2, 5)], 3)));
    assert_eq!(n.status().recovering_to, Some(LogId::new(2, 6)), "recovered before reaching the record");
    let _ = deliver(&mut n, msg(1, 2, 2, append((2, 5), vec![entry(2, 6)], 3)));
    assert_eq!(n.status().recovering_to, None);
    // Whole again: its own pre-vote counts.
    let mut n2 = n;
    n2.step(60_000, Event::Tick);
    let _ = n2.take_ready();
    n2.advance();
    assert_eq!(n2.role(), Role::PreCandidate);
    let _ = deliver(&mut n2, msg(1, 2, 3, vote_response(true, true)));
    assert_eq!(n2.role(), Role::Candidate, "a recovered node's own pre-vote counts");
}

#[test]
fn recovery_waits_for_the_entries_to_be_durable() {
    let mut n = node_that_lost_entries();
    n.step(0, Event::Message(msg(1, 2, 2, append((2, 3), vec![entry(2, 4), entry(2, 5), entry(2, 6)], 3))));
    let ready = n.take_ready();
    n.advance_unpersisted();
    assert_eq!(n.status().recovering_to, Some(LogId::new(2, 6)), "recovered before the write was durable");
    n.step(0, Event::Persisted { last: ready.persist_through, seq: ready.seq });
    assert_eq!(n.status().recovering_to, None);
}

#[test]
fn entries_of_a_later_term_end_the_recovery() {
    // The leader of term 3 overwrote the lost suffix: a log ending in term 3 is more up to
    // date than the recorded entry of term 2, so the node is whole again.
    let mut n = node_that_lost_entries();
    let _ = deliver(&mut n, msg(1, 2, 3, append((2, 3), vec![entry(3, 4)], 3)));
    assert_eq!(n.status().recovering_to, None);
}

/// Found by review: seeding a backup (or forcing a new cluster) on two nodes made two
/// leaders of one term under one cluster id; joining them made one step down on the other's
/// AppendEntries and keep its own entries under the same ids: silent divergence. A leader
/// refuses an AppendEntries or InstallSnapshot of its own term, keeps leading, and counts it.
#[test]
fn a_leader_refuses_another_leader_of_its_own_term() {
    let mut n = node(1, 1, None, &[1, 1]);
    elect(&mut n);
    let term = n.term();
    let last = n.last_log_id();
    let dropped = n.status().dropped_messages;
    let ready = deliver(&mut n, msg(2, 1, term, append((1, 2), vec![entry(term, 3)], 3)));
    assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty(), "{ready:?}");
    let meta =
        crate::SnapshotMeta { last_log_id: LogId::new(term, 9), membership: Membership::with_voters([2]) };
    let install = Payload::InstallSnapshot { meta, offset: 0, data: Bytes::from_static(b"x"), done: true };
    deliver(&mut n, msg(2, 1, term, install));
    assert_eq!(n.role(), Role::Leader);
    assert_eq!(n.last_log_id(), last, "the other leader's entries were taken");
    assert_eq!(n.status().dropped_messages, dropped + 2);
    // A later term still wins, as Raft says.
    deliver(&mut n, msg(2, 1, term + 1, append((1, 2), Vec::new(), 0)));
    assert_eq!(n.role(), Role::Follower);
}

/// Found by review: a forced survivor (another history under the same cluster id) deposed by
/// the old cluster's leader in a later term acknowledged entries at and below its commit
/// index that it did not hold (the committed prefix is taken as matching, and the incoming
/// entries there were skipped). A leader whose entries or snapshot contradict this node's
/// committed ones is refused: no answer, nothing changes, the message is counted.
#[test]
fn a_leader_contradicting_committed_entries_is_refused() {
    let mut n = node(2, 1, None, &[]);
    deliver(&mut n, msg(1, 2, 1, append((0, 0), log_of(&[1, 1, 1]), 3)));
    assert_eq!(n.status().commit_index, 3);
    let dropped = n.status().dropped_messages;
    // Another history: its entries 2..=4 are of term 5, prev 1@1 matches.
    let ready = deliver(&mut n, msg(3, 2, 5, append((1, 1), vec![entry(5, 2), entry(5, 3), entry(5, 4)], 4)));
    assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty(), "{ready:?}");
    assert_eq!(n.last_log_id(), LogId::new(1, 3), "the other history's entries were taken");
    // Its prev below the commit index names another term.
    let ready = deliver(&mut n, msg(3, 2, 5, append((5, 2), vec![entry(5, 3)], 3)));
    assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty(), "{ready:?}");
    // A snapshot at a committed index of another term.
    let meta =
        crate::SnapshotMeta { last_log_id: LogId::new(5, 3), membership: Membership::with_voters([3]) };
    let install = Payload::InstallSnapshot { meta, offset: 0, data: Bytes::from_static(b"x"), done: true };
    let ready = deliver(&mut n, msg(3, 2, 5, install));
    assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty(), "{ready:?}");
    assert_eq!(n.status().dropped_messages, dropped + 3);
    // The same history below the commit index is still taken as matching.
    let ready = deliver(&mut n, msg(3, 2, 6, append((1, 1), vec![entry(1, 2), entry(1, 3), entry(6, 4)], 4)));
    assert!(
        matches!(
            only_response(&ready).payload,
            Payload::AppendEntriesResponse { result: AppendResult::Success { match_index: 4 }, .. }
        ),
        "{ready:?}"
    );
}

/// [`leader_with_an_empty_cache`] after node 3 rejected a probe (its log ends at 2): the
/// leader probes it from 3, whose entries it reads from storage; that read, not answered.
fn leader_probing_3_from_storage() -> (Raft, LogRead) {
    let mut n = leader_with_an_empty_cache();
    let term = n.term();
    let reject = Payload::AppendEntriesResponse {
        result: AppendResult::Reject {
            rejected_prev_index: 6,
            hint: ConflictHint { conflict_term: None, index: 2 },
        },
        read_seq: 0,
    };
    let ready = deliver(&mut n, msg(3, 1, term, reject));
    let read = ready.log_reads.iter().find(|r| r.to == 3).cloned().expect("the probe's entries are read");
    assert_eq!(read.from, 3);
    (n, read)
}

/// A follower in probe mode whose next entries are before the cache hears from its leader
/// while they are read: a read that takes longer than an election timeout must not read as a
/// silent leader (it would (pre-)vote, and without pre-vote depose a healthy leader).
#[test]
fn a_probed_follower_hears_heartbeats_while_its_entries_are_read() {
    let (mut n, _read) = leader_probing_3_from_storage();
    let term = n.term();
    // The read never ends; the leader keeps ticking for two election timeouts.
    let start = n.now;
    let mut silent_since = start;
    let mut longest_silence = 0;
    let mut now = start;
    while now < start + 2 * n.config.election_timeout_max_ms {
        now += n.config.heartbeat_interval_ms;
        // Node 2 answers every round: the leader keeps its quorum.
        n.step(now, Event::Message(msg(2, 1, term, ack(7, 0))));
        n.step(now, Event::Tick);
        let ready = n.take_ready();
        n.advance();
        assert_eq!(n.role(), Role::Leader);
        if ready.messages.iter().chain(ready.persisted_messages.iter()).any(|m| m.to == 3) {
            silent_since = now;
        }
        longest_silence = longest_silence.max(now - silent_since);
    }
    assert!(
        longest_silence < n.config.election_timeout_min_ms,
        "node 3 heard nothing for {longest_silence} ms while its entries were read"
    );
}

/// The follower answers those heartbeats while its probe's entries are read: the answer
/// (a match at the leader's base) must not drop the read and start over from there, and the
/// entries read are sent when they come (found by the outside review of the test above).
#[test]
fn a_heartbeat_answered_while_a_probe_is_read_keeps_the_read() {
    let (mut n, read) = leader_probing_3_from_storage();
    let term = n.term();
    let now = n.now + n.config.heartbeat_interval_ms;
    n.step(now, Event::Tick);
    let ready = n.take_ready();
    n.advance();
    let round = round_sent_to(&ready, 3).expect("a heartbeat for node 3 while its entries are read");
    // Node 3 answers the heartbeat (a match at the base, 0 here).
    let ready = deliver(&mut n, msg(3, 1, term, ack(0, round)));
    assert!(ready.log_reads.is_empty(), "the answer started another read: {:?}", ready.log_reads);
    // The read comes back: its entries go to node 3, after its entry 2.
    let entries: Vec<Entry> = (read.from..=read.last)
        .map(|i| match n.term_at(i) {
            Some(1) => entry(1, i),
            other => Entry { term: other.unwrap_or(0), index: i, payload: EntryPayload::Blank },
        })
        .collect();
    n.step(now, Event::LogEntries { to: 3, from: read.from, entries: Some(entries) });
    let ready = n.take_ready();
    n.advance();
    assert!(ready.log_reads.is_empty(), "read again: {:?}", ready.log_reads);
    let sent = ready.messages.iter().find_map(|m| match &m.payload {
        Payload::AppendEntries { prev_log_id, entries, .. } if m.to == 3 && !entries.is_empty() => {
            Some((prev_log_id.index, entries.first().map(|e| e.index)))
        }
        _ => None,
    });
    assert_eq!(sent, Some((2, Some(3))), "the entries read are sent from 3: {:?}", ready.messages);
}

// ---- forwarded reads and read rounds under delay (from the outside review of batching) ----

/// Follower 2 of leader 1 gets a read
/// every 4 ms; the leader (the test) answers every ReadIndexRequest `latency_ms` after it was
/// sent and heartbeats every heartbeat interval. Returns (answered Ok, failed, requests sent).
fn forwarded_reads_with_leader_latency(latency_ms: Millis, run_ms: Millis) -> (usize, usize, usize) {
    let mut n = follower_of_1();
    let hb = n.config.heartbeat_interval_ms;
    let start = n.now;
    let mut answers: VecDeque<(Millis, ReadId)> = VecDeque::new();
    let (mut ok, mut failed, mut sent) = (0, 0, 0);
    let mut next_id: ReadId = 1;
    for t in start..start + run_ms {
        let mut readies = Vec::new();
        while answers.front().is_some_and(|(at, _)| *at <= t) {
            let Some((_, id)) = answers.pop_front() else { break };
            let answer = Payload::ReadIndexResponse { id, result: Ok(2) };
            readies.push(turn(&mut n, t, Event::Message(msg(1, 2, 1, answer))));
        }
        if (t - start).is_multiple_of(hb) {
            readies.push(turn(&mut n, t, Event::Message(msg(1, 2, 1, append((1, 2), vec![], 2)))));
        }
        if (t - start).is_multiple_of(4) {
            readies.push(turn(&mut n, t, Event::Read { id: next_id, mode: ReadMode::ReadIndex }));
            next_id += 1;
        }
        if n.next_deadline() <= t {
            readies.push(turn(&mut n, t, Event::Tick));
        }
        for ready in readies {
            for (to, id) in read_requests(&ready) {
                assert_eq!(to, 1);
                sent += 1;
                answers.push_back((t + latency_ms, id));
            }
            for r in &ready.reads {
                match r.result {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
        }
    }
    (ok, failed, sent)
}

/// Control: a leader that answers within a heartbeat interval serves the forwarded reads.
#[test]
fn forwarded_reads_are_served_when_the_leader_answers_within_a_heartbeat() {
    let hb = Config::default().heartbeat_interval_ms;
    let (ok, failed, _) = forwarded_reads_with_leader_latency(hb - 5, 6_000);
    eprintln!("leader latency {} ms: {ok} reads answered, {failed} failed", hb - 5);
    assert!(ok > 1_000 && failed == 0, "ok {ok} failed {failed}");
}

/// Liveness: a leader that answers every request in 25 ms (heartbeat interval 20 ms,
/// rpc_timeout 2 s) while reads keep arriving. The outside review found that a request given
/// up after a heartbeat interval had its answer dropped, so that no forwarded read was ever
/// answered; the answers to earlier requests now still count.
#[test]
fn forwarded_reads_are_served_when_the_leader_answers_slower_than_a_heartbeat() {
    let hb = Config::default().heartbeat_interval_ms;
    let (ok, failed, _) = forwarded_reads_with_leader_latency(hb + 5, 6_000);
    eprintln!("leader latency {} ms: {ok} reads answered, {failed} failed", hb + 5);
    assert!(ok > 0, "no forwarded read answered in 6 s ({failed} failed) though the leader answered every request in {} ms", hb + 5);
}

/// Deadline: forwarded reads waiting when their follower becomes leader become the leader's
/// own reads with the deadline they had (the outside review found them given a new one, up
/// to another `rpc_timeout_ms`).
#[test]
fn a_forwarded_read_keeps_its_deadline_when_its_follower_becomes_leader() {
    let mut n = follower_of_1();
    let rpc = n.config.rpc_timeout_ms;
    let t0 = n.now;
    let ready = turn(&mut n, t0, Event::Read { id: 7, mode: ReadMode::ReadIndex });
    assert_eq!(read_requests(&ready), vec![(1, 7)]);
    // Node 1 is silent; just before the read's deadline node 2 campaigns and wins (node 3
    // grants the pre-vote and the vote).
    let t = t0 + rpc - 10;
    let _ = turn(&mut n, t, Event::Tick);
    assert_eq!(n.role(), Role::PreCandidate);
    let grant =
        |pre_vote| Payload::RequestVoteResponse { pre_vote, granted: true, vouches: true, witnesses: None };
    let _ = deliver(&mut n, msg(3, 2, 2, grant(true)));
    let ready = deliver(&mut n, msg(3, 2, 2, grant(false)));
    assert_eq!(n.role(), Role::Leader);
    // Node 3 answers every AppendEntries (it has not stored the no-op yet: match 2).
    let mut outbox: Vec<Message> = ready.messages.into_iter().chain(ready.persisted_messages).collect();
    let mut outcome = None;
    let mut now = n.now;
    while outcome.is_none() && now < t0 + 3 * rpc {
        let mut readies = Vec::new();
        for m in std::mem::take(&mut outbox) {
            if let (3, Payload::AppendEntries { read_seq, .. }) = (m.to, &m.payload) {
                readies.push(deliver(&mut n, msg(3, 2, 2, ack(2, *read_seq))));
            }
        }
        now = n.next_deadline().max(now + 1);
        readies.push(turn(&mut n, now, Event::Tick));
        for ready in readies {
            if let Some(r) = ready.reads.iter().find(|r| r.id == 7) {
                outcome = Some((r.result, n.now));
            }
            outbox.extend(ready.messages.into_iter().chain(ready.persisted_messages));
        }
    }
    let (result, at) = outcome.expect("read 7 settled");
    eprintln!("read 7 (deadline {}) settled at {at}: {result:?}", t0 + rpc);
    assert!(at <= t0 + rpc, "read 7 settled at {at}, past its deadline {}: {result:?}", t0 + rpc);
}

/// A request out to leader 1 is moved to leader 3 when 3 is heard from (same id when no
/// read came meanwhile, the newest read's id otherwise). The deposed leader's late answer
/// confirms the reads its request covered, all of which arrived before it was sent, and never
/// a read that arrived later.
#[test]
fn a_deposed_leaders_late_answer_confirms_only_the_reads_sent_to_it() {
    // No read meanwhile: the same id, and the deposed leader's answer to it will do.
    let mut n = follower_of_1();
    let now = n.now;
    let _ = turn(&mut n, now, Event::Read { id: 1, mode: ReadMode::ReadIndex });
    let ready = deliver(&mut n, msg(3, 2, 2, append((1, 2), vec![], 2)));
    assert_eq!(read_requests(&ready), vec![(3, 1)]);
    let ready = turn(&mut n, now, Event::Read { id: 2, mode: ReadMode::ReadIndex });
    assert!(read_requests(&ready).is_empty());
    let ready = deliver(&mut n, msg(1, 2, 1, Payload::ReadIndexResponse { id: 1, result: Ok(2) }));
    assert_eq!(read_ids(&ready), vec![1], "read 2 arrived after request 1 was sent");
    assert_eq!(read_requests(&ready), vec![(3, 2)]);
    // A read meanwhile: a new id; the deposed leader's answer to the old one confirms the
    // read it covered, not those that arrived after it was sent.
    let mut n = follower_of_1();
    let _ = turn(&mut n, now, Event::Read { id: 1, mode: ReadMode::ReadIndex });
    let _ = turn(&mut n, now, Event::Read { id: 2, mode: ReadMode::ReadIndex });
    let ready = deliver(&mut n, msg(3, 2, 2, append((1, 2), vec![], 2)));
    assert_eq!(read_requests(&ready), vec![(3, 2)]);
    let _ = turn(&mut n, now, Event::Read { id: 3, mode: ReadMode::ReadIndex });
    let ready = deliver(&mut n, msg(1, 2, 1, Payload::ReadIndexResponse { id: 1, result: Ok(2) }));
    assert_eq!(read_ids(&ready), vec![1]);
    let ready = deliver(&mut n, msg(3, 2, 2, Payload::ReadIndexResponse { id: 2, result: Ok(2) }));
    assert_eq!(read_ids(&ready), vec![2]);
    assert_eq!(read_requests(&ready), vec![(3, 3)]);
}

/// Joint configuration C_old {1,2,3} -> C_new {2,3} (the leader is not a new voter): a round
/// answered by 2 only is not a quorum of C_new; no round starts meanwhile and there is no busy
/// turn; 3's answer confirms the first read and starts one round for the reads that waited.
#[test]
fn one_read_round_at_a_time_in_a_joint_configuration_without_the_leader() {
    let mut n = node(1, 1, None, &[]);
    elect(&mut n);
    let term = n.term();
    let _ = n.take_ready();
    n.advance();
    let _ = deliver(&mut n, msg(2, 1, term, ack(1, 0)));
    let _ = deliver(&mut n, msg(3, 1, term, ack(1, 0)));
    let now = n.now;
    let change = crate::membership::MembershipChange::SetVoters([2, 3].into());
    let _ = n.propose_membership_change(now, &change, true).expect("accepted");
    assert!(n.membership().is_joint());
    let _ = n.take_ready();
    n.advance();
    let seq = n.read_seq;
    let _ = deliver(&mut n, msg(2, 1, term, ack(2, seq)));
    let _ = deliver(&mut n, msg(3, 1, term, ack(2, seq)));
    let ready = turn(&mut n, now, Event::Read { id: 1, mode: ReadMode::ReadIndex });
    let r1 = round_sent_to(&ready, 2).expect("a round");
    let ready = deliver(&mut n, msg(2, 1, term, ack(2, r1)));
    assert!(ready.reads.is_empty(), "C_new {{2,3}} needs 3 too");
    let ready = turn(&mut n, now, Event::Read { id: 2, mode: ReadMode::ReadIndex });
    assert_eq!(round_sent_to(&ready, 2), None);
    assert!(!n.has_ready(), "a busy turn");
    let ready = deliver(&mut n, msg(3, 1, term, ack(2, r1)));
    assert_eq!(read_ids(&ready), vec![1]);
    let r2 = round_sent_to(&ready, 2).expect("the next round at once");
    assert_eq!(r2, r1 + 1);
}

/// One voter and a learner: the voter confirms its own rounds; a read is answered in the
/// turn it arrives, and a learner's forwarded request too.
#[test]
fn a_single_voter_with_a_learner_answers_reads_at_once() {
    let restored = RestoredState {
        hard_state: HardState { current_term: 1, voted_for: None },
        entries: log_of(&[1]),
        membership: Membership::with_voters([1]),
        ..RestoredState::default()
    };
    let mut n = Raft::new(1, Config::default(), restored, 1, 0).expect("valid");
    n.boot_quiet_until = 0;
    n.step(10_000, Event::Tick);
    let _ = n.take_ready();
    n.advance();
    assert_eq!(n.role(), Role::Leader);
    let now = n.now;
    let _ = n.propose_membership_change(now, &crate::membership::MembershipChange::AddLearner(4), true);
    let _ = n.take_ready();
    n.advance();
    assert!(!n.progress.is_empty());
    let ready = turn(&mut n, now, Event::Read { id: 1, mode: ReadMode::ReadIndex });
    assert_eq!(read_ids(&ready), vec![1]);
    let ready = deliver(&mut n, msg(4, 1, 1, Payload::ReadIndexRequest { id: 77 }));
    assert!(ready
        .messages
        .iter()
        .any(|m| m.to == 4 && matches!(m.payload, Payload::ReadIndexResponse { id: 77, result: Ok(_) })));
    assert!(!n.has_ready());
}

/// Liveness: the leader answers every request in 2 to 20 heartbeat intervals while reads keep
/// arriving. The second outside review found every forwarded read starved past 8 intervals
/// (a new request every interval, 8 kept, the oldest forgotten before its answer came); the
/// newest is now replaced instead.
#[test]
fn forwarded_reads_are_served_behind_a_leader_slower_than_eight_heartbeats() {
    let hb = Config::default().heartbeat_interval_ms;
    let rpc = Config::default().rpc_timeout_ms;
    for k in [2, 4, 7, 8, 9, 12, 20] {
        let (ok, failed, sent) = forwarded_reads_with_leader_latency(k * hb, 6_000);
        eprintln!("leader latency {} ms ({k} heartbeats): {ok} ok, {failed} failed, {sent} requests", k * hb);
    }
    let latency = 9 * hb;
    assert!(latency * 10 <= rpc);
    let (ok, failed, _) = forwarded_reads_with_leader_latency(latency, 6_000);
    assert!(
        ok > 0,
        "no forwarded read answered in 6 s ({failed} failed) though the leader answered every request in {latency} ms (rpc_timeout {rpc} ms)"
    );
}

/// The same in the cluster simulator: 3 nodes, default config, no fault, a one-way network
/// delay of 1 to 50 ms (RTT up to 100 ms, below election_timeout_min 150 ms: the leader is
/// stable). A read on a follower and one on the leader every 3 ms for 5 s; the reads started
/// in the first 2.5 s (all settled by their 2 s deadline) must be served.
#[test]
fn forwarded_reads_are_served_on_a_network_slower_than_a_heartbeat() {
    use crate::testing::sim::{Cluster, NetworkFaults, ReadState};
    for delay in [1, 6, 20, 40, 50] {
        let mut c = Cluster::new(3, 7);
        c.set_network_faults(NetworkFaults {
            delay_min_ms: delay,
            delay_max_ms: delay,
            ..NetworkFaults::RELIABLE
        });
        let leader = c.check_one_leader();
        let _ = c.one(b"k=v", 3, true);
        let follower = leader % 3 + 1;
        let mut handles = Vec::new();
        let mut leader_reads = Vec::new();
        for _ in 0..(5_000 / 3) {
            if let Some(h) = c.read(follower, b"k", ReadMode::ReadIndex) {
                handles.push(h);
            }
            if let Some(h) = c.read(leader, b"k", ReadMode::ReadIndex) {
                leader_reads.push(h);
            }
            c.run_for(3);
        }
        let early = &handles[..handles.len() / 2];
        let served = early.iter().filter(|h| matches!(c.read_state(**h), ReadState::Served { .. })).count();
        let mut reasons = std::collections::BTreeMap::new();
        for h in early {
            if let ReadState::Failed(why) = c.read_state(*h) {
                *reasons.entry(why).or_insert(0) += 1;
            }
        }
        let early_leader = &leader_reads[..leader_reads.len() / 2];
        let leader_served =
            early_leader.iter().filter(|h| matches!(c.read_state(**h), ReadState::Served { .. })).count();
        let still_leader = c.check_one_leader();
        eprintln!(
            "one-way delay {delay} ms: follower {served}/{} served {reasons:?}; leader {leader_served}/{} served; leader {leader} -> {still_leader}",
            early.len(),
            early_leader.len()
        );
        assert_eq!(still_leader, leader, "the leader stayed");
        assert!(leader_served > early_leader.len() / 2, "one-way delay {delay} ms: the leader's own reads");
        assert!(served > early.len() / 2, "one-way delay {delay} ms: forwarded reads: {reasons:?}");
    }
}

/// On a leader change the request out is asked again of the new leader under the same id: the
/// deposed leader's refusal of the original (NotLeader) no longer fails the read, and the new
/// leader's answer confirms it (found by the second outside review).
#[test]
fn a_deposed_leaders_refusal_does_not_fail_reads_asked_of_the_new_leader() {
    let mut n = follower_of_1();
    let now = n.now;
    let ready = turn(&mut n, now, Event::Read { id: 1, mode: ReadMode::ReadIndex });
    assert_eq!(read_requests(&ready), vec![(1, 1)]);
    // Node 3 leads term 2: the request goes to it.
    let ready = deliver(&mut n, msg(3, 2, 2, append((1, 2), vec![], 2)));
    assert_eq!(read_requests(&ready), vec![(3, 1)]);
    // Node 1, deposed, refuses the request it got.
    let refusal = Payload::ReadIndexResponse {
        id: 1,
        result: Err(crate::message::ForwardRejection::NotLeader { leader_hint: Some(3) }),
    };
    let ready = deliver(&mut n, msg(1, 2, 2, refusal));
    let ready2 = deliver(&mut n, msg(3, 2, 2, Payload::ReadIndexResponse { id: 1, result: Ok(2) }));
    eprintln!("after 1's refusal: {:?}; after 3's answer: {:?}", ready.reads, ready2.reads);
    assert!(
        ready.reads.is_empty(),
        "read 1 failed by the deposed leader's refusal while the new leader had been asked: {:?}",
        ready.reads
    );
    assert_eq!(ready2.reads, vec![ReadOutcome { id: 1, result: Ok(2) }]);
}

/// Randomised (from the second outside review): a follower gets reads, answers (Ok, NotLeader, Busy) to any
/// request copy it ever sent, in any order and duplicated, leader changes between 1 and 3,
/// and ticks. Checks: an Ok read was confirmed by an answer to a copy sent after it arrived;
/// each read settles once and by its deadline; at most 8 requests out; no due timer whose
/// tick does nothing.
#[test]
fn forwarded_reads_under_random_answers_and_leader_changes() {
    use std::collections::BTreeMap;
    let (mut oks, mut errs, mut sent_total, mut max_out) = (0usize, 0usize, 0usize, 0usize);
    for seed in 0..300u64 {
        let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = |m: u64| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) % m
        };
        let mut n = follower_of_1();
        let rpc = n.config.rpc_timeout_ms;
        let mut step_no = 0u64;
        let mut arrived: BTreeMap<ReadId, (u64, Millis)> = BTreeMap::new(); // id -> (step, deadline)
        let mut settled: BTreeMap<ReadId, Millis> = BTreeMap::new();
        let mut copies: Vec<(NodeId, ReadId, u64, Term)> = Vec::new(); // to, id, step sent, term
        let mut next_id: ReadId = 1000;
        let (mut leader, mut term) = (1u64, 1u64);
        let mut now = n.now;
        for _ in 0..400 {
            step_no += 1;
            let mut answered_copy: Option<(ReadId, u64)> = None;
            let ready = match next(10) {
                0..=3 => {
                    next_id += 1;
                    arrived.insert(next_id, (step_no, now + rpc));
                    turn(&mut n, now, Event::Read { id: next_id, mode: ReadMode::ReadIndex })
                }
                4..=5 if !copies.is_empty() => {
                    let (to, id, sent, t) = copies[next(copies.len() as u64) as usize];
                    let result = match next(4) {
                        0 => Err(crate::message::ForwardRejection::NotLeader { leader_hint: Some(leader) }),
                        1 => Err(crate::message::ForwardRejection::Busy),
                        _ => Ok(2),
                    };
                    answered_copy = Some((id, sent));
                    turn(
                        &mut n,
                        now,
                        Event::Message(msg(to, 2, t, Payload::ReadIndexResponse { id, result })),
                    )
                }
                6 => {
                    leader = if leader == 1 { 3 } else { 1 };
                    term += 1;
                    turn(&mut n, now, Event::Message(msg(leader, 2, term, append((1, 2), vec![], 2))))
                }
                7 => turn(&mut n, now, Event::Message(msg(leader, 2, term, append((1, 2), vec![], 2)))),
                _ => {
                    now += 1 + next(60);
                    let due = n.next_deadline();
                    if due <= now {
                        now = due.max(n.now);
                        let before = n.next_deadline();
                        let ready = turn(&mut n, now, Event::Tick);
                        let did = !ready.reads.is_empty()
                            || !ready.messages.is_empty()
                            || !ready.persisted_messages.is_empty();
                        let _ = before;
                        assert!(did || n.next_deadline() > now, "seed {seed}: busy timer at {now}");
                        ready
                    } else {
                        turn(&mut n, now, Event::Tick)
                    }
                }
            };
            for (to, id) in read_requests(&ready) {
                copies.push((to, id, step_no, term));
            }
            sent_total += read_requests(&ready).len();
            max_out = max_out.max(n.remote_reads_requests_len());
            assert!(n.remote_reads_requests_len() <= 8);
            for r in &ready.reads {
                assert!(settled.insert(r.id, n.now).is_none(), "seed {seed}: read {} settled twice", r.id);
                let (at, deadline) = arrived[&r.id];
                assert!(
                    n.now <= deadline,
                    "seed {seed}: read {} settled at {} past deadline {deadline}",
                    r.id,
                    n.now
                );
                if r.result.is_ok() {
                    oks += 1
                } else {
                    errs += 1
                }
                if r.result.is_ok() {
                    let (_, sent) = answered_copy.expect("Ok only from an answer");
                    assert!(
                        at <= sent,
                        "seed {seed}: read {} (step {at}) confirmed by a copy sent at step {sent}",
                        r.id
                    );
                }
            }
            for (id, (_, deadline)) in &arrived {
                if *deadline < n.now {
                    assert!(
                        settled.contains_key(id),
                        "seed {seed}: read {id} unsettled past its deadline {deadline} at {}",
                        n.now
                    );
                }
            }
        }
    }
    eprintln!("probe: {oks} Ok, {errs} failed, {sent_total} requests sent, at most {max_out} out");
}

impl Raft {
    /// The requests the follower keeps out (counted from the Debug form: the fields are
    /// private to `reads`).
    fn remote_reads_requests_len(&self) -> usize {
        format!("{:?}", self.remote_reads).matches("ReadRequest {").count()
    }
}

#[test]
fn a_status_refreshed_in_place_equals_a_fresh_one() {
    let mut published = node(1, 1, None, &[1, 1]).status();
    let mut check = |n: &Raft, what: &str| {
        n.refresh_status(&mut published);
        assert_eq!(published, n.status(), "after {what}");
    };
    let (mut n, _) = leader_with_a_commit();
    check(&n, "an election and a commit (followers appear)");
    let now = n.now;
    n.propose_membership_change(now, &MembershipChange::AddLearner(4), false).expect("a learner");
    check(&n, "a learner added (membership and followers change)");
    let _ = n.take_ready();
    n.advance();
    let term = n.term();
    deliver(&mut n, msg(2, 1, term + 1, append((0, 0), Vec::new(), 0)));
    assert_eq!(n.role(), Role::Follower);
    check(&n, "a newer leader (no followers)");
}

#[test]
fn the_leader_finds_when_each_remembered_round_was_sent_and_forgets_older_ones() {
    let (mut n, _) = leader_with_rounds_answered();
    let first = n.read_seq + 1;
    let rounds = reads::ROUNDS_REMEMBERED as u64 + 40;
    let interval = n.config.heartbeat_interval_ms;
    let term = n.term();
    for i in 0..rounds {
        // Each heartbeat starts the next round; node 2 answers it (the quorum stays).
        let at = n.now + interval;
        n.step(at, Event::Tick);
        let _ = n.take_ready();
        n.advance();
        assert_eq!(n.read_seq, first + i);
        assert_eq!(n.round_sent_at(first + i), Some(at), "round {i}");
        let _ = deliver(&mut n, msg(2, 1, term, ack(3, first + i)));
    }
    assert_eq!(n.role(), Role::Leader);
    let last = first + rounds - 1;
    let oldest = last + 1 - reads::ROUNDS_REMEMBERED as u64;
    let sent_last = n.now;
    for seq in oldest..=last {
        assert_eq!(n.round_sent_at(seq), Some(sent_last - interval * (last - seq)), "round {seq}");
    }
    assert_eq!(n.round_sent_at(oldest - 1), None, "forgotten");
    assert_eq!(n.round_sent_at(0), None);
    assert_eq!(n.round_sent_at(last + 1), None, "never sent");
    assert_eq!(n.round_sent_at(u64::MAX), None, "never sent");
}
