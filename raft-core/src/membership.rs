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

impl Membership {
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
}
