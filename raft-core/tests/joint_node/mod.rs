//! Node 1 holding a joint configuration in its log (voters 1, 2, 3 before it), ticked until it
//! campaigns: for tests of how a candidate counts its votes.

use raft_core::{Config, Entry, EntryPayload, Event, HardState, Membership, Raft, RestoredState, Role};

/// Node 1 of term 1 whose log ends with `joint` at index 2, a pre-candidate (with
/// `pre_vote`) or a candidate once its election timer fired.
pub fn campaigning_under(joint: &Membership, pre_vote: bool) -> Raft {
    let entries = vec![
        Entry { term: 1, index: 1, payload: EntryPayload::Blank },
        Entry { term: 1, index: 2, payload: EntryPayload::Membership(Box::new(joint.clone())) },
    ];
    let restored = RestoredState {
        hard_state: HardState { current_term: 1, voted_for: Some(1) },
        entries,
        membership: Membership::with_voters([1, 2, 3]),
        ..RestoredState::default()
    };
    let mut n = Raft::new(1, Config { pre_vote, ..Config::default() }, restored, 1, 0).expect("valid config");
    let campaigning = if pre_vote { Role::PreCandidate } else { Role::Candidate };
    for t in (1_000..).step_by(100).take(100) {
        n.step(t, Event::Tick);
        let _ = n.take_ready();
        n.advance();
        if n.role() == campaigning {
            break;
        }
    }
    assert_eq!(n.role(), campaigning);
    assert_eq!(n.membership(), joint);
    n
}
