//! What the driver publishes to watchers. The status changes with every step (a busy node
//! steps thousands of times a second), so whoever waits only for a change of leader or for a
//! fatal error gets watches of its own that change only then: a watcher of the status is
//! woken on every step, which costs a busy node a thread wake-up per step for nothing.

use std::sync::Arc;

use tokio::sync::watch;

use super::NodeStatus;
use crate::types::{NodeId, Term};

/// Who leads, in which term, as this node last saw it. Published only when it changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaderView {
    /// The node's current term.
    pub term: Term,
    /// The leader it knows of in that term.
    pub leader: Option<NodeId>,
}

impl LeaderView {
    fn of(status: &NodeStatus) -> Self {
        Self { term: status.protocol.term, leader: status.protocol.leader }
    }
}

/// The senders, shared by the driver task and whoever reports that it died.
#[derive(Debug)]
pub(super) struct Publisher {
    status: watch::Sender<NodeStatus>,
    leader: watch::Sender<LeaderView>,
    fatal: watch::Sender<Option<String>>,
}

/// The receivers a [`super::RaftNode`] hands out.
#[derive(Debug, Clone)]
pub(super) struct Watches {
    pub(super) status: watch::Receiver<NodeStatus>,
    pub(super) leader: watch::Receiver<LeaderView>,
    pub(super) fatal: watch::Receiver<Option<String>>,
}

impl Publisher {
    /// Starts publishing from `status`.
    pub(super) fn new(status: NodeStatus) -> (Arc<Self>, Watches) {
        let (leader_tx, leader) = watch::channel(LeaderView::of(&status));
        let (fatal_tx, fatal) = watch::channel(status.fatal.clone());
        let (status_tx, status) = watch::channel(status);
        (
            Arc::new(Self { status: status_tx, leader: leader_tx, fatal: fatal_tx }),
            Watches { status, leader, fatal },
        )
    }

    /// Updates the status in place (every status watcher is woken), then the leader's watch
    /// if the term or the leader changed.
    pub(super) fn step(&self, update: impl FnOnce(&mut NodeStatus)) {
        let mut view = LeaderView::default();
        self.status.send_modify(|status| {
            update(status);
            view = LeaderView::of(status);
        });
        self.leader.send_if_modified(|published| {
            let changed = *published != view;
            *published = view;
            changed
        });
    }

    /// Reports the fatal error that stopped the node: in the status and on the fatal watch.
    /// The first one reported stays (a panic in the cleanup after a fatal error does not
    /// hide its cause).
    pub(super) fn fail(&self, why: String, update: impl FnOnce(&mut NodeStatus)) {
        self.step(|status| {
            update(status);
            status.fatal.get_or_insert(why);
        });
        let first = self.status.borrow().fatal.clone();
        self.fatal.send_if_modified(|published| {
            let changed = published.is_none();
            *published = published.take().or(first);
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Membership;
    use crate::protocol::{Raft, RestoredState};
    use crate::types::Role;

    fn status() -> NodeStatus {
        let restored =
            RestoredState { membership: Membership::with_voters([1, 2, 3]), ..RestoredState::default() };
        let raft = Raft::new(1, crate::Config::default(), restored, 7, 0).expect("a new node");
        NodeStatus { protocol: raft.status(), fatal: None, storage_full: false }
    }

    #[test]
    fn the_leader_watch_changes_only_with_the_term_or_the_leader_and_the_fatal_one_only_once() {
        let (publisher, mut watches) = Publisher::new(status());
        watches.leader.mark_unchanged();
        watches.status.mark_unchanged();
        publisher.step(|s| s.protocol.commit_index += 1);
        assert!(watches.status.has_changed().expect("open"), "the status changes with every step");
        assert!(!watches.leader.has_changed().expect("open"), "a step that moved nothing else");
        assert!(!watches.fatal.has_changed().expect("open"));
        publisher.step(|s| {
            s.protocol.term = 2;
            s.protocol.role = Role::Follower;
        });
        assert!(watches.leader.has_changed().expect("open"), "a new term");
        assert_eq!(*watches.leader.borrow_and_update(), LeaderView { term: 2, leader: None });
        publisher.step(|s| s.protocol.leader = Some(3));
        assert_eq!(*watches.leader.borrow_and_update(), LeaderView { term: 2, leader: Some(3) });
        publisher.fail("the disk failed".into(), |s| s.protocol.commit_index += 1);
        assert_eq!(watches.fatal.borrow_and_update().as_deref(), Some("the disk failed"));
        assert_eq!(watches.status.borrow().fatal.as_deref(), Some("the disk failed"));
        publisher.fail("the driver panicked: later".into(), |_| {});
        assert!(!watches.fatal.has_changed().expect("open"), "the first cause stays");
        assert_eq!(watches.status.borrow().fatal.as_deref(), Some("the disk failed"));
    }
}
