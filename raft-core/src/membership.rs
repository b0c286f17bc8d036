//! Cluster membership: who votes, who only learns, and how a quorum is counted.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::{Index, NodeId};

/// The members of the cluster as one node sees them.
///
/// `outgoing_voters` is non-empty only during a joint configuration (C_old,new), when every
/// decision needs a majority of both voter sets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Membership {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while a joint change is in progress; else empty.
    pub outgoing_voters: BTreeSet<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
}

/// A change of the cluster's membership, proposed on the leader. Voter changes go through a
/// joint configuration (C_old,new, then C_new); learner changes take one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a non-voting member that receives the log.
    AddLearner(NodeId),
    /// Makes a learner a voter.
    PromoteLearner(NodeId),
    /// Removes a voter or a learner.
    RemoveNode(NodeId),
    /// Replaces the voter set: nodes not in it stop voting and leave the cluster; learners in
    /// it are promoted; other new nodes join as voters at once (prefer adding them as learners
    /// first, so that the joint configuration does not wait for them to catch up).
    SetVoters(BTreeSet<NodeId>),
}

/// Why a [`MembershipChange`] is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InvalidChange {
    /// The node is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The node is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// The node is not a learner.
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    /// The change would leave no voter.
    #[error("a cluster needs at least one voter")]
    NoVoters,
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ReservedId,
}

impl Membership {
    /// Whether this is a joint configuration (C_old,new).
    pub fn is_joint(&self) -> bool {
        !self.outgoing_voters.is_empty()
    }

    /// The configuration a change leads to (never joint), or why it is invalid. Must be called
    /// on a non-joint configuration.
    pub fn target(&self, change: &MembershipChange) -> Result<Membership, InvalidChange> {
        let mut next = Membership {
            voters: self.voters.clone(),
            outgoing_voters: BTreeSet::new(),
            learners: self.learners.clone(),
        };
        match change {
            MembershipChange::AddLearner(id) => {
                if *id == 0 {
                    return Err(InvalidChange::ReservedId);
                }
                if self.contains(*id) {
                    return Err(InvalidChange::AlreadyMember(*id));
                }
                next.learners.insert(*id);
            }
            MembershipChange::PromoteLearner(id) => {
                if !next.learners.remove(id) {
                    return Err(InvalidChange::NotALearner(*id));
                }
                next.voters.insert(*id);
            }
            MembershipChange::RemoveNode(id) => {
                if !next.learners.remove(id) && !next.voters.remove(id) {
                    return Err(InvalidChange::NotAMember(*id));
                }
            }
            MembershipChange::SetVoters(voters) => {
                if voters.contains(&0) {
                    return Err(InvalidChange::ReservedId);
                }
                next.voters = voters.clone();
                next.learners.retain(|l| !voters.contains(l));
            }
        }
        if next.voters.is_empty() {
            return Err(InvalidChange::NoVoters);
        }
        Ok(next)
    }

    /// The configuration to append for moving from `self` (not joint) to `target`: `target`
    /// itself when the voters stay the same, else the joint configuration C_old,new.
    pub fn transition_to(&self, target: &Membership) -> Membership {
        if target.voters == self.voters {
            target.clone()
        } else {
            Membership {
                voters: target.voters.clone(),
                outgoing_voters: self.voters.clone(),
                learners: target.learners.clone(),
            }
        }
    }

    /// The configuration that ends a joint one: the incoming voters alone.
    pub fn leave_joint(&self) -> Membership {
        Membership {
            voters: self.voters.clone(),
            outgoing_voters: BTreeSet::new(),
            learners: self.learners.clone(),
        }
    }

    /// A configuration of the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self { voters: voters.into_iter().collect(), ..Self::default() }
    }

    /// Whether `id` votes in any of the current voter sets.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing_voters.contains(&id)
    }

    /// Whether `id` is a member at all (voter or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member, voters and learners, each once, in id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters.iter().chain(self.outgoing_voters.iter()).chain(self.learners.iter()).copied().collect()
    }

    /// Whether the nodes for which `yes` holds form a quorum (a majority of every voter set).
    pub fn is_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        majority_of(&self.voters, &yes)
            && (self.outgoing_voters.is_empty() || majority_of(&self.outgoing_voters, &yes))
    }

    /// Whether the nodes for which `yes` holds share at least one node with every majority of
    /// each voter set: the others are not a majority of either set. For a joint configuration
    /// this is stronger than sharing a node with every quorum (a majority of both sets).
    pub fn intersects_every_majority(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        let no = |id| !yes(id);
        !majority_of(&self.voters, &no) && !majority_of(&self.outgoing_voters, &no)
    }

    /// [`intersects_every_majority`](Self::intersects_every_majority), except that a voter set
    /// that is one voter `r` alone is also met when `witnesses(r)` names a non-empty set whose
    /// every majority shares a node with those for which `yes` holds (`r` names the voters a
    /// majority of whom holds what it lost; see `Raft::tally_votes`).
    pub fn vouched_by<'a>(
        &self,
        yes: impl Fn(NodeId) -> bool,
        witnesses: impl Fn(NodeId) -> Option<&'a BTreeSet<NodeId>>,
    ) -> bool {
        let no = |id| !yes(id);
        let met = |set: &BTreeSet<NodeId>| {
            if !majority_of(set, &no) {
                return true;
            }
            let mut members = set.iter();
            match (members.next(), members.next()) {
                (Some(only), None) => witnesses(*only).is_some_and(|w| !w.is_empty() && !majority_of(w, &no)),
                _ => false,
            }
        };
        met(&self.voters) && met(&self.outgoing_voters)
    }

    /// The highest index stored on a quorum, given each voter's match index.
    pub fn quorum_index(&self, match_index: impl Fn(NodeId) -> Index) -> Index {
        let incoming = quorum_index_of(&self.voters, &match_index);
        if self.outgoing_voters.is_empty() {
            incoming
        } else {
            incoming.min(quorum_index_of(&self.outgoing_voters, &match_index))
        }
    }
}

fn majority_of(set: &BTreeSet<NodeId>, yes: &impl Fn(NodeId) -> bool) -> bool {
    let count = set.iter().filter(|id| yes(**id)).count();
    count > set.len() / 2
}

fn quorum_index_of(set: &BTreeSet<NodeId>, match_index: &impl Fn(NodeId) -> Index) -> Index {
    if set.is_empty() {
        return 0;
    }
    let mut indexes: Vec<Index> = set.iter().map(|id| match_index(*id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[set.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_needs_more_than_half() {
        let m = Membership::with_voters([1, 2, 3, 4]);
        assert!(!m.is_quorum(|id| id <= 2));
        assert!(m.is_quorum(|id| id <= 3));
    }

    #[test]
    fn quorum_index_is_the_median_from_the_top() {
        let m = Membership::with_voters([1, 2, 3]);
        assert_eq!(m.quorum_index(|id| [0, 10, 7, 3][id as usize]), 7);
        let m = Membership::with_voters([1, 2, 3, 4]);
        assert_eq!(m.quorum_index(|id| [0, 10, 7, 3, 1][id as usize]), 3);
    }

    #[test]
    fn changes_lead_to_valid_targets() {
        let m = Membership::with_voters([1, 2, 3]);
        let with_learner = m.target(&MembershipChange::AddLearner(4)).unwrap();
        assert_eq!(m.transition_to(&with_learner), with_learner, "a learner joins in one step");
        assert_eq!(m.target(&MembershipChange::AddLearner(3)), Err(InvalidChange::AlreadyMember(3)));
        assert_eq!(m.target(&MembershipChange::AddLearner(0)), Err(InvalidChange::ReservedId));
        let promoted = with_learner.target(&MembershipChange::PromoteLearner(4)).unwrap();
        assert_eq!(promoted.voters, [1, 2, 3, 4].into());
        assert!(promoted.learners.is_empty());
        let joint = with_learner.transition_to(&promoted);
        assert!(joint.is_joint());
        assert_eq!(joint.outgoing_voters, [1, 2, 3].into());
        assert_eq!(joint.leave_joint(), promoted);
        assert_eq!(m.target(&MembershipChange::PromoteLearner(2)), Err(InvalidChange::NotALearner(2)));
        assert_eq!(m.target(&MembershipChange::RemoveNode(9)), Err(InvalidChange::NotAMember(9)));
        let one = Membership::with_voters([1]);
        assert_eq!(one.target(&MembershipChange::RemoveNode(1)), Err(InvalidChange::NoVoters));
        let replaced = m.target(&MembershipChange::SetVoters([4, 5, 6].into())).unwrap();
        assert_eq!(m.transition_to(&replaced).outgoing_voters, [1, 2, 3].into());
    }

    #[test]
    fn joint_configuration_needs_both_majorities() {
        let m = Membership {
            voters: [4, 5, 6].into(),
            outgoing_voters: [1, 2, 3].into(),
            learners: BTreeSet::new(),
        };
        assert!(!m.is_quorum(|id| [1, 2, 3].contains(&id)));
        assert!(m.is_quorum(|id| [1, 2, 4, 5].contains(&id)));
        assert_eq!(m.quorum_index(|id| if id <= 3 { 9 } else { 4 }), 4);
    }

    /// Checked against its definition on every subset of small configurations, simple and
    /// joint: a set intersects every majority of each voter set iff no such majority lies
    /// wholly outside it.
    #[test]
    fn intersects_every_majority_matches_its_definition() {
        let configs = [
            Membership::with_voters([1]),
            Membership::with_voters([1, 2]),
            Membership::with_voters([1, 2, 3]),
            Membership::with_voters([1, 2, 3, 4]),
            Membership::with_voters([1, 2, 3, 4, 5]),
            Membership {
                voters: [1, 2].into(),
                outgoing_voters: [1, 2, 3].into(),
                learners: BTreeSet::new(),
            },
            Membership {
                voters: [3, 4, 5].into(),
                outgoing_voters: [1, 2, 3].into(),
                learners: BTreeSet::new(),
            },
        ];
        let in_set = |mask: u32, id: NodeId| mask & (1 << id) != 0;
        for m in &configs {
            for set in 0u32..64 {
                let majority_outside = |voters: &BTreeSet<NodeId>| {
                    (0u32..64)
                        .filter(|q| {
                            let inside = voters.iter().filter(|id| in_set(*q, **id)).count();
                            !voters.is_empty() && inside > voters.len() / 2
                        })
                        .any(|q| voters.iter().all(|id| !(in_set(q, *id) && in_set(set, *id))))
                };
                assert_eq!(
                    m.intersects_every_majority(|id| in_set(set, id)),
                    !majority_outside(&m.voters) && !majority_outside(&m.outgoing_voters),
                    "{m:?}, set {set:#b}"
                );
            }
        }
        // The recovering candidate's case: one other of two, two others of three.
        assert!(Membership::with_voters([1, 2]).intersects_every_majority(|id| id == 2));
        assert!(!Membership::with_voters([1, 2, 3]).intersects_every_majority(|id| id == 2));
        assert!(Membership::with_voters([1, 2, 3]).intersects_every_majority(|id| id != 1));
        // Joint: node 1 is in every quorum of {1, 2} / {1, 2, 3}, not in every majority of
        // {1, 2, 3}.
        let joint = Membership {
            voters: [1, 2].into(),
            outgoing_voters: [1, 2, 3].into(),
            learners: BTreeSet::new(),
        };
        assert!(!joint.intersects_every_majority(|id| id == 1));
    }

    #[test]
    fn a_set_of_one_voter_is_met_by_the_witnesses_it_names_and_nothing_else_is() {
        let joint = |incoming: &[NodeId], outgoing: &[NodeId]| Membership {
            voters: incoming.iter().copied().collect(),
            outgoing_voters: outgoing.iter().copied().collect(),
            learners: BTreeSet::new(),
        };
        let named = BTreeSet::from([1, 2, 3]);
        let witnesses = |id: NodeId| (id == 3).then_some(&named);
        let none = |_: NodeId| None;
        let m = joint(&[3], &[1, 2, 3]);
        // {3} met through node 3's witnesses when {1, 2} vouch; {1, 2, 3} met by {1, 2}.
        assert!(m.vouched_by(|id| id == 1 || id == 2, witnesses));
        assert!(!m.vouched_by(|id| id == 1 || id == 2, none));
        assert!(!m.vouched_by(|id| id == 2, witnesses), "one witness of three vouching");
        // The same set outgoing.
        assert!(joint(&[1, 2, 3], &[3]).vouched_by(|id| id == 1 || id == 2, witnesses));
        // Witnesses stand in only for a set of that voter alone: not for {2, 3} (node 2 must
        // vouch), nor for a set of another voter alone.
        assert!(!joint(&[2, 3], &[1, 2, 3]).vouched_by(|id| id == 1, witnesses));
        assert!(!joint(&[4], &[1, 2, 3]).vouched_by(|id| id == 1 || id == 2, witnesses));
        // Without witnesses it is `intersects_every_majority`.
        for set in 0u32..16 {
            let yes = |id: NodeId| set & (1 << id) != 0;
            assert_eq!(m.vouched_by(yes, none), m.intersects_every_majority(yes), "{set:#b}");
        }
    }
}
