//! Outside review (session 20): can a node act as leader before its term is durable? The node simulator
//! counts a leader only once `ProtocolStatus::term_durable` holds; if a node could commit,
//! answer a read or send anything of its term before that, the gate would hide a real double
//! leader. Driven through the public sans-IO API the way the real driver drives it
//! (`advance_unpersisted` + `Event::Persisted`).

use bytes::Bytes;
use raft_core::{
    Config, Event, LogId, Membership, Message, Payload, Raft, ReadMode, Ready, RestoredState, Role,
};

fn one_voter_with_learner() -> Raft {
    let membership = Membership { learners: [2].into(), ..Membership::with_voters([1]) };
    let restored = RestoredState { membership, ..RestoredState::default() };
    let config = Config { lease_read: true, check_quorum: true, ..Config::default() };
    Raft::new(1, config, restored, 7, 0).expect("config")
}

fn leaves(ready: &Ready) -> Vec<Message> {
    ready.messages.clone()
}

/// Takes a ready as the background-persisting driver does; returns it.
fn take(n: &mut Raft) -> Ready {
    let r = n.take_ready();
    n.advance_unpersisted();
    r
}

#[test]
fn a_one_voter_leader_neither_commits_nor_answers_reads_nor_sends_before_its_term_is_durable() {
    let mut n = one_voter_with_learner();
    n.step(10_000, Event::Tick);
    assert_eq!(n.role(), Role::Leader);
    let first = take(&mut n);
    let term_seq = first.seq;
    let term_last = first.persist_through;
    assert!(first.hard_state.is_some());
    assert!(leaves(&first).is_empty(), "sent before the term write: {:?}", first.messages);
    assert!(!n.status().term_durable);

    // Act as leader in every way we can while the term write is in flight.
    let mut now = 10_001;
    n.step(now, Event::Read { id: 1, mode: ReadMode::Lease });
    n.step(now, Event::Read { id: 2, mode: ReadMode::ReadIndex });
    n.step(now, Event::Propose { id: 3, command: Bytes::from_static(b"p"), forward: false });
    let term = n.term();
    n.step(
        now,
        Event::Message(Message {
            from: 2,
            to: 1,
            term,
            payload: Payload::ForwardProposal { id: 4, command: Bytes::from_static(b"f") },
        }),
    );
    n.step(
        now,
        Event::Message(Message { from: 2, to: 1, term, payload: Payload::ReadIndexRequest { id: 5 } }),
    );
    let mut later_seqs = Vec::new();
    for _ in 0..20 {
        now += 25;
        n.step(now, Event::Tick);
        while n.has_ready() {
            let r = take(&mut n);
            later_seqs.push((r.seq, r.persist_through));
            assert!(leaves(&r).is_empty(), "left before the term write: {:?}", r.messages);
            assert!(r.reads.iter().all(|o| o.result.is_err()), "read answered: {:?}", r.reads);
            assert!(r.committed.is_empty(), "applied before the term write: {:?}", r.committed);
        }
        assert_eq!(n.commit_index(), 0, "committed before the term write");
        assert!(!n.status().term_durable);
        assert_eq!(n.status().last_lease_read_ms, None, "lease read before the term write");
    }
    // A write completion of an older ready than the term's (none here, seq 0) changes nothing.
    n.step(now, Event::Persisted { last: LogId::default(), seq: term_seq - 1 });
    assert!(!n.status().term_durable);
    assert_eq!(n.commit_index(), 0);

    // The term's write completes: now it may lead.
    n.step(now, Event::Persisted { last: term_last, seq: term_seq });
    assert!(n.status().term_durable);
    if let Some((seq, last)) = later_seqs.last().copied() {
        n.step(now, Event::Persisted { last, seq });
    }
    assert!(n.commit_index() > 0, "commits once durable");
}

/// A multi-voter candidate's vote requests leave only after its term write: it cannot be
/// elected (and so cannot lead) before its term is durable.
#[test]
fn a_candidate_asks_for_votes_only_after_its_term_is_durable() {
    let restored =
        RestoredState { membership: Membership::with_voters([1, 2, 3]), ..RestoredState::default() };
    let config = Config { pre_vote: false, ..Config::default() };
    let mut n = Raft::new(1, config, restored, 3, 0).expect("config");
    n.step(10_000, Event::Tick);
    assert_eq!(n.role(), Role::Candidate);
    let r = take(&mut n);
    assert!(r.hard_state.is_some());
    assert!(
        !r.messages.iter().any(|m| matches!(m.payload, Payload::RequestVote { .. })),
        "vote requested before the term is durable"
    );
    // Votes that arrive anyway (a forged or replayed grant) before the write completes.
    let term = n.term();
    for from in [2, 3] {
        n.step(
            10_001,
            Event::Message(Message {
                from,
                to: 1,
                term,
                payload: Payload::RequestVoteResponse {
                    pre_vote: false,
                    granted: true,
                    vouches: true,
                    witnesses: None,
                },
            }),
        );
    }
    // Late grants (only a store that lost the hard state could make them arrive before the
    // write; they are grants to this node in this term, so no other node can win it). If the
    // node takes them and leads before the write, it must still act in name only.
    if n.role() == Role::Leader {
        assert!(!n.status().term_durable);
        for t in 0..10u64 {
            n.step(10_002 + t * 25, Event::Tick);
            n.step(10_002 + t * 25, Event::Read { id: t, mode: ReadMode::ReadIndex });
            while n.has_ready() {
                let r = take(&mut n);
                assert!(r.messages.is_empty(), "a leader whose term is not durable sent {:?}", r.messages);
                assert!(r.reads.iter().all(|o| o.result.is_err()), "read answered: {:?}", r.reads);
            }
            assert_eq!(n.commit_index(), 0, "committed before the term write");
        }
    }
}
