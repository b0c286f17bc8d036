//! What a node with an empty data dir learns from the other members before it starts: whether
//! the cluster is being created (it starts fresh) or has run with this node in it (it lost its
//! data, and learns from every other voter what it may have had).
//!
//! An empty data dir looks the same whether the cluster is new or this node's disk was wiped,
//! so the node decides only from what the other members say, and only once every configured
//! member has answered. While it asks, a minimal server on its client address answers
//! `/v1/status` with `starting` set ([`StartingServer`]), so nodes of a new cluster starting
//! together see each other. The rule ([`Survey::verdict`]):
//! - every other configured member was seen holding nothing (starting with an empty dir, or
//!   running with an empty log and no snapshot) at some moment of this node's probe: the
//!   cluster is new (a committed entry is on a majority of voters, so one of them would hold
//!   it; only a loss of every holder at once, which nothing can detect, escapes this);
//! - some member holds data and was not seen holding nothing: the cluster has run, and every
//!   other voter must answer ([`gather_voters`]) before the node recovers;
//! - otherwise it keeps asking. A node never starts fresh because nobody answered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use raft_client::api::{MemberRole, RoleView, StartingView, StatusView};
use raft_core::{HardState, LogId, NodeId};
use tokio::sync::watch;

use super::startup::{probe_client, LostDir};
use super::StartError;
use crate::config::NodeConfig;

/// How often a starting node asks the other members again.
const ASK_EVERY: Duration = Duration::from_millis(100);
/// How often a node still waiting for members says so.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long a voter that lost its data dir waits for every other voter's answer.
pub(super) const LOST_DIR_PROBE_FOR: Duration = Duration::from_secs(10);

/// Answers `/v1/status` (as a node that has not started) on a node's client address while it
/// asks the others, on a clone of the listener the API serves later.
pub(super) struct StartingServer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StartingServer {
    /// Serves the starting answer for node `config.id` holding `holds` on `listener`'s socket.
    pub(super) fn start(
        listener: &tokio::net::TcpListener,
        config: &NodeConfig,
        tls: Option<std::sync::Arc<crate::http::ApiTls>>,
        holds: StartingView,
    ) -> std::io::Result<Self> {
        let socket = socket2::SockRef::from(listener).try_clone()?;
        let clone = tokio::net::TcpListener::from_std(std::net::TcpListener::from(socket))?;
        let view = starting_view(config, holds);
        let router = crate::http::starting_router(config, view);
        let limits = crate::http::ServerLimits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(2),
            stop_grace: Duration::from_millis(200),
            watch_nice: None,
        };
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(crate::http::serve(clone, router, tls, limits, stopping));
        Ok(Self { stop, task })
    }

    /// Stops answering: no connection of this server outlives the call.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The status a node that has not started answers.
fn starting_view(config: &NodeConfig, holds: StartingView) -> StatusView {
    StatusView {
        cluster: config.cluster.clone(),
        id: config.id,
        term: 0,
        role: RoleView::Follower,
        leader: None,
        commit_index: 0,
        applied_index: 0,
        last_log_index: 0,
        last_log_term: 0,
        snapshot_index: 0,
        state_hash: String::new(),
        keys: 0,
        state_bytes: 0,
        members: Vec::new(),
        joint: false,
        leadership_transfer: None,
        fatal: None,
        peer_security: config.peer_security(),
        warnings: Vec::new(),
        recovering_to_index: None,
        starting: Some(holds),
        quota_bytes: 0,
        no_space: false,
        activity: None,
        leader_changes: Vec::new(),
    }
}

/// Whether an answer shows a member holding nothing: starting with an empty dir that never
/// held data, or running with an empty log, no snapshot, and no recovery under way.
fn holds_nothing(s: &StatusView) -> bool {
    match s.starting {
        Some(StartingView::Empty) => true,
        Some(StartingView::HadData) => false,
        None => s.last_log_index == 0 && s.snapshot_index == 0 && s.recovering_to_index.is_none(),
    }
}

/// What the other configured members said during one node's probe.
#[derive(Debug)]
pub(super) struct Survey {
    members: BTreeSet<NodeId>,
    seen_holding_nothing: BTreeSet<NodeId>,
    latest: BTreeMap<NodeId, StatusView>,
    highest_term: u64,
}

/// What a [`Survey`] allows so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Every member was seen holding nothing: a new cluster, in which terms up to `term` may
    /// have been held (elections with no entry yet).
    New {
        /// The highest term any member reported.
        term: u64,
    },
    /// A member holds data and was never seen holding nothing: the cluster has run.
    HasRun,
    /// Not every member has been seen yet.
    Wait,
}

impl Survey {
    /// A survey of the other configured members `members`.
    pub(super) fn new(members: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            members: members.into_iter().collect(),
            seen_holding_nothing: BTreeSet::new(),
            latest: BTreeMap::new(),
            highest_term: 0,
        }
    }

    /// Takes member `id`'s answer.
    pub(super) fn record(&mut self, id: NodeId, status: StatusView) {
        if !self.members.contains(&id) {
            return;
        }
        if holds_nothing(&status) {
            self.seen_holding_nothing.insert(id);
        }
        self.highest_term = self.highest_term.max(status.term);
        self.latest.insert(id, status);
    }

    /// What the answers so far allow.
    pub(super) fn verdict(&self) -> Verdict {
        if self.seen_holding_nothing == self.members {
            return Verdict::New { term: self.highest_term };
        }
        let ran =
            self.latest.iter().any(|(id, s)| !holds_nothing(s) && !self.seen_holding_nothing.contains(id));
        if ran {
            Verdict::HasRun
        } else {
            Verdict::Wait
        }
    }

    /// The members not seen holding nothing yet, and not seen holding data either.
    fn waiting_for(&self) -> Vec<NodeId> {
        self.members.iter().copied().filter(|id| !self.seen_holding_nothing.contains(id)).collect()
    }
}

/// What the other members said about this node.
#[derive(Debug)]
pub(super) enum Probed {
    /// Every other member was seen holding nothing: the cluster is new. `term` is the highest
    /// term reported (above 0: elections ran, but no entry was appended anywhere).
    New {
        /// The highest term any member reported.
        term: u64,
    },
    /// It is a learner of a cluster that has run.
    Learner,
    /// It is a voter of a cluster that has run, and every other voter told what it may have
    /// had.
    LostVoter(LostDir),
    /// There is nobody to ask, or not every member answered within the time given.
    NoAnswer,
}

/// Asks the other configured members about the cluster until [`Survey::verdict`] decides (see
/// the module docs), or `give_up` has passed (then [`Probed::NoAnswer`]; `None` keeps asking,
/// reporting every [`REPORT_EVERY`] who it waits for). A member that refuses this node's token
/// fails the start: a node that cannot ask does not start as if nobody knew it.
pub(super) async fn probe_membership(
    config: &NodeConfig,
    give_up: Option<Duration>,
) -> Result<Probed, StartError> {
    let mut clients = Vec::new();
    for member in config.peers() {
        let endpoint = member.client_addr.to_string();
        let client = probe_client(config, vec![endpoint.clone()], Duration::from_millis(500))
            .map_err(|e| StartError::Refused { endpoint, message: format!("cannot ask the members: {e}") })?;
        clients.push((member.id, member.client_addr, client));
    }
    if clients.is_empty() {
        return Ok(Probed::NoAnswer);
    }
    let mut survey = Survey::new(clients.iter().map(|(id, _, _)| *id));
    let started = tokio::time::Instant::now();
    let mut report_at = started + REPORT_EVERY;
    loop {
        let asks =
            clients.iter().map(|(id, addr, client)| async move { (*id, *addr, client.status().await) });
        for (id, addr, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(s) if s.cluster == config.cluster && s.id == id => survey.record(id, s),
                Ok(s) => tracing::warn!(
                    member = id, %addr, answered_cluster = %s.cluster, answered_id = s.id,
                    "a configured member's address is answered by another node"
                ),
                Err(e) if matches!(e.code(), "unauthenticated" | "forbidden") => {
                    return Err(StartError::Refused { endpoint: addr.to_string(), message: e.to_string() });
                }
                Err(_) => {}
            }
        }
        match survey.verdict() {
            Verdict::New { term } => return Ok(Probed::New { term }),
            Verdict::HasRun => break,
            Verdict::Wait => {}
        }
        let now = tokio::time::Instant::now();
        if give_up.is_some_and(|limit| now >= started + limit) {
            return Ok(Probed::NoAnswer);
        }
        if now >= report_at {
            tracing::info!(
                waiting_for = ?survey.waiting_for(),
                "this node's data dir is empty: it starts once every configured member has answered \
                 (a new cluster starts when all its members are up)"
            );
            report_at = now + REPORT_EVERY;
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
    let ran: Vec<&StatusView> = survey.latest.values().filter(|s| !holds_nothing(s)).collect();
    let evidence = format!(
        "member(s) {:?} hold data (up to term {}): the cluster has run with this node in it",
        ran.iter().map(|s| s.id).collect::<Vec<_>>(),
        survey.highest_term
    );
    let views: Vec<&StatusView> = survey.latest.values().collect();
    let answers = gather_voters(config, &views, &evidence).await?;
    let listed_as = |role: MemberRole| {
        answers.values().any(|s| s.members.iter().any(|m| m.id == config.id && m.role == role))
    };
    if listed_as(MemberRole::Learner) && !listed_as(MemberRole::Voter) {
        tracing::warn!(
            "this node lost its data but is a learner (its acknowledgements never counted): starting over"
        );
        return Ok(Probed::Learner);
    }
    Ok(Probed::LostVoter(lost_dir_from(config, &answers, evidence)))
}

/// Asks every other voter (of the configured members, of every view in `views` and of every
/// answer's view) for its status, and returns the answers. Refused unless every one of them
/// answers within [`LOST_DIR_PROBE_FOR`] as a running node (one that does not may be the only
/// other holder of what this node had; one still starting holds nothing yet) and none is
/// itself recovering lost data (its log would not show what it had: two voters missing data
/// at once may be a majority).
pub(super) async fn gather_voters(
    config: &NodeConfig,
    views: &[&StatusView],
    evidence: &str,
) -> Result<BTreeMap<NodeId, StatusView>, StartError> {
    let mut voters: BTreeMap<NodeId, String> =
        config.peers().map(|m| (m.id, m.client_addr.to_string())).collect();
    let add_voters_of = |voters: &mut BTreeMap<NodeId, String>, view: &StatusView| {
        for m in view.members.iter().filter(|m| m.role == MemberRole::Voter && m.id != config.id) {
            // A voter whose address nobody knows yet still has to answer (it cannot: the node
            // is refused): it may be the only other holder of what this node had.
            let known = voters.entry(m.id).or_default();
            if known.is_empty() {
                *known = m.client_addr.clone().unwrap_or_default();
            }
        }
    };
    for view in views {
        add_voters_of(&mut voters, view);
    }
    let deadline = tokio::time::Instant::now() + LOST_DIR_PROBE_FOR;
    let mut answers: BTreeMap<NodeId, StatusView> = BTreeMap::new();
    let mut starting: BTreeSet<NodeId> = BTreeSet::new();
    while answers.len() < voters.len() && tokio::time::Instant::now() < deadline {
        let missing: Vec<(NodeId, String)> =
            voters.iter().filter(|(id, _)| !answers.contains_key(id)).map(|(i, a)| (*i, a.clone())).collect();
        for (id, addr) in missing {
            let Ok(client) = probe_client(config, vec![addr], Duration::from_millis(500)) else { continue };
            match client.status().await {
                Ok(s) if s.cluster == config.cluster && s.id == id && s.starting.is_some() => {
                    starting.insert(id);
                }
                Ok(s) if s.cluster == config.cluster && s.id == id => {
                    starting.remove(&id);
                    add_voters_of(&mut voters, &s);
                    answers.insert(id, s);
                }
                _ => {}
            }
        }
        if answers.len() < voters.len() {
            tokio::time::sleep(ASK_EVERY * 2).await;
        }
    }
    let refuse = |why: String| StartError::LostData { id: config.id, evidence: format!("{evidence}; {why}") };
    if !starting.is_empty() {
        return Err(refuse(format!(
            "voters {:?} are starting with an empty data dir themselves, so they do not show \
             what they had (if a majority of the voters lost data, committed writes may exist nowhere)",
            starting.iter().collect::<Vec<_>>()
        )));
    }
    if answers.len() < voters.len() {
        let silent: Vec<NodeId> = voters.keys().copied().filter(|id| !answers.contains_key(id)).collect();
        return Err(refuse(format!(
            "voters {silent:?} did not answer, so what it may have acknowledged is unknown"
        )));
    }
    let recovering: Vec<NodeId> =
        answers.values().filter(|s| s.recovering_to_index.is_some()).map(|s| s.id).collect();
    if !recovering.is_empty() {
        return Err(refuse(format!(
            "voters {recovering:?} are themselves recovering lost data, so their logs do not show what \
             they had (if a majority of the voters lost data, committed writes may exist nowhere)"
        )));
    }
    Ok(answers)
}

/// What a voter that lost its data dir restores, from every other voter's answer: the highest
/// term is one it may have voted in (its vote is spent on itself), the most up-to-date last
/// entry bounds what it may have acknowledged (an entry committed with its acknowledgement, or
/// one a leader may still commit with it, is in that leader's log).
pub(super) fn lost_dir_from(
    config: &NodeConfig,
    answers: &BTreeMap<NodeId, StatusView>,
    evidence: String,
) -> LostDir {
    let term = answers.values().map(|s| s.term).max().unwrap_or(0);
    let recorded_last =
        answers.values().map(|s| LogId::new(s.last_log_term, s.last_log_index)).max().unwrap_or_default();
    LostDir {
        hard_state: HardState { current_term: term, voted_for: Some(config.id) },
        recorded_last,
        evidence: format!("{evidence}; voters {:?} answered", answers.keys().collect::<Vec<_>>()),
    }
}

#[cfg(test)]
mod tests {
    use raft_client::api::{MemberView, PeerSecurity};

    use super::*;

    fn status(id: NodeId, term: u64, last: u64) -> StatusView {
        StatusView {
            cluster: "c".into(),
            id,
            term,
            role: RoleView::Follower,
            leader: None,
            commit_index: 0,
            applied_index: 0,
            last_log_index: last,
            last_log_term: term,
            snapshot_index: 0,
            state_hash: String::new(),
            keys: 0,
            state_bytes: 0,
            members: Vec::<MemberView>::new(),
            joint: false,
            leadership_transfer: None,
            fatal: None,
            peer_security: PeerSecurity::InsecurePlaintext,
            warnings: Vec::new(),
            recovering_to_index: None,
            starting: None,
            quota_bytes: 0,
            no_space: false,
            activity: None,
            leader_changes: Vec::new(),
        }
    }

    fn starting(id: NodeId, holds: StartingView) -> StatusView {
        StatusView { starting: Some(holds), ..status(id, 0, 0) }
    }

    #[test]
    fn silence_never_makes_a_new_cluster() {
        let mut survey = Survey::new([2, 3]);
        assert_eq!(survey.verdict(), Verdict::Wait, "nobody answered");
        survey.record(2, starting(2, StartingView::Empty));
        assert_eq!(survey.verdict(), Verdict::Wait, "one member of two answered");
        survey.record(3, starting(3, StartingView::Empty));
        assert_eq!(survey.verdict(), Verdict::New { term: 0 });
    }

    #[test]
    fn a_member_seen_empty_once_stays_counted_while_the_new_cluster_forms() {
        let mut survey = Survey::new([2, 3]);
        survey.record(2, starting(2, StartingView::Empty));
        // Member 2 started (with members 1 and 3 seen empty) and was elected with 3's vote.
        survey.record(2, status(2, 1, 1));
        assert_eq!(survey.verdict(), Verdict::Wait, "member 3 has not been seen");
        survey.record(3, status(3, 1, 0));
        assert_eq!(survey.verdict(), Verdict::New { term: 1 });
    }

    #[test]
    fn a_member_holding_data_means_the_cluster_ran() {
        let mut survey = Survey::new([2, 3]);
        survey.record(3, starting(3, StartingView::Empty));
        survey.record(2, status(2, 4, 17));
        assert_eq!(survey.verdict(), Verdict::HasRun);
        let mut survey = Survey::new([2, 3]);
        survey.record(2, starting(2, StartingView::HadData));
        assert_eq!(survey.verdict(), Verdict::HasRun, "a member that moved damaged files aside had data");
        let mut survey = Survey::new([2, 3]);
        survey.record(2, StatusView { recovering_to_index: Some(5), ..status(2, 4, 0) });
        assert_eq!(survey.verdict(), Verdict::HasRun, "a recovering member had data");
        let mut survey = Survey::new([2, 3]);
        survey.record(2, StatusView { snapshot_index: 9, ..status(2, 4, 0) });
        assert_eq!(survey.verdict(), Verdict::HasRun, "a snapshot is data");
    }

    #[test]
    fn answers_of_strangers_are_ignored() {
        let mut survey = Survey::new([2]);
        survey.record(7, status(7, 9, 9));
        assert_eq!(survey.verdict(), Verdict::Wait);
    }
}
