//! Protocol rule tests: each test states one rule of the paper's Figure 2 (or of pre-vote) and
//! drives a single node with hand-written messages.

use bytes::Bytes;

use super::*;

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
    deliver(raft, msg(2, 1, term + 1, Payload::RequestVoteResponse { pre_vote: true, granted: true }));
    assert_eq!(raft.role(), Role::Candidate);
    deliver(raft, msg(2, 1, term + 1, Payload::RequestVoteResponse { pre_vote: false, granted: true }));
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
        Payload::RequestVoteResponse { pre_vote: false, granted: true }
    );
    let ready = deliver(&mut n, msg(3, 1, 2, req(3)));
    assert_eq!(
        only_response(&ready).payload,
        Payload::RequestVoteResponse { pre_vote: false, granted: false }
    );
    // The same candidate asking again gets the same answer (a retransmission).
    let ready = deliver(&mut n, msg(2, 1, 2, req(2)));
    assert_eq!(
        only_response(&ready).payload,
        Payload::RequestVoteResponse { pre_vote: false, granted: true }
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
        Payload::RequestVoteResponse { pre_vote: false, granted: false }
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
            Payload::RequestVoteResponse { pre_vote: false, granted },
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
    assert_eq!(r.payload, Payload::RequestVoteResponse { pre_vote: true, granted: true });
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
