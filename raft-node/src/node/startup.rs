//! Start-up checks and joining: a taken Raft port is refused before the data dir is touched; a
//! node with an empty data dir that the cluster already knows is refused (it lost its data);
//! a node configured with `join` (or that found members by discovery) learns the cluster's
//! members and asks to be added.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft_client::api::{AddMemberRequest, MemberRole, MembersView};
use raft_client::{Client, ClientError};
use raft_core::{HardState, LogId, Membership, NodeId};

use super::probe::{self, Probed};
use super::{Shared, StartError};
use crate::config::{NodeConfig, TlsConfig, TransportKind};

/// How a node starts: its initial membership (used only when storage is empty) and peers.
pub(super) struct Plan {
    pub(super) membership: Membership,
    pub(super) peers: BTreeMap<NodeId, SocketAddr>,
    /// The client addresses this node joins through (empty: a member of the initial
    /// configuration, or a restart that found nobody to ask).
    pub(super) join_through: Vec<String>,
    /// This node is a voter that lost its data dir: what to restore before it starts.
    pub(super) lost_dir: Option<LostDir>,
}

impl Plan {
    /// Start from what is stored (a restarted node that reached nobody).
    pub(super) fn stored_state_only() -> Self {
        Self {
            membership: Membership::default(),
            peers: BTreeMap::new(),
            join_through: Vec::new(),
            lost_dir: None,
        }
    }
}

/// What a voter whose data dir was lost whole restores before it starts, learned from every
/// other voter of its cluster: no term it could have voted in is above `hard_state`'s (whose
/// vote is spent on itself), and no entry it could have acknowledged that may count towards a
/// commit is past `recorded_last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LostDir {
    pub(super) hard_state: HardState,
    pub(super) recorded_last: LogId,
    /// What the cluster reported, for the log.
    pub(super) evidence: String,
}
/// How long a joining node tries to reach the cluster.
const JOIN_FOR: Duration = Duration::from_secs(30);
/// How long a node with `join` that already holds Raft state (a restart, or a node forced or
/// seeded by `raft-node recover`) tries: its stored state and address book are enough to
/// start, so it does not wait out `JOIN_FOR` on members that are down.
const JOIN_WITH_STATE_FOR: Duration = Duration::from_secs(3);

/// Refuses a Raft address that is taken (binding it for a moment).
pub(super) fn check_raft_addr_free(config: &NodeConfig) -> Result<(), StartError> {
    let addr = config.raft_addr;
    let bind_err = |source| StartError::Bind { what: "raft_addr", addr, source };
    match config.transport {
        TransportKind::Tcp => std::net::TcpListener::bind(addr).map(drop).map_err(bind_err),
        TransportKind::Quic => std::net::UdpSocket::bind(addr).map(drop).map_err(bind_err),
    }
}

/// A seed for election jitter and request ids that differs between nodes and starts.
pub(super) fn seed(id: NodeId) -> u64 {
    raft_core::fresh_seed() ^ id.rotate_left(32)
}

/// A client of the other members' APIs, presenting this node's own token (`auth.token_file`)
/// over HTTPS when the API has `[api_tls]`.
pub(super) fn probe_client(
    config: &NodeConfig,
    endpoints: Vec<String>,
    timeout: Duration,
) -> Result<Client, ClientError> {
    let options = config.member_client_options(timeout, 1).map_err(|e| {
        tracing::warn!(error = %e, "this node's TLS material for calling the members is unusable");
        ClientError::InvalidOptions(
            "this node's TLS material for calling the members is unusable (see the log)",
        )
    })?;
    Client::new(endpoints, options)
}

/// A node of the configured members starting with an empty data dir asks the other members
/// about the cluster ([`probe::probe_membership`], which waits until every one has answered):
/// a cluster being created lets it start; a cluster that has run means this voter lost its
/// data, so it learns from every other voter what it may have had and starts recovering, or is
/// refused (a learner just starts over).
///
/// `had_data`: the data dir holds damaged files a repair moved aside, so this node certainly
/// had data: it is refused rather than started fresh when every member holds nothing.
pub(super) async fn check_if_known(
    config: &NodeConfig,
    had_data: bool,
) -> Result<Option<LostDir>, StartError> {
    match probe::probe_membership(config, None).await? {
        Probed::LostVoter(lost) => Ok(Some(lost)),
        Probed::New { .. } | Probed::NoAnswer if had_data => Err(StartError::LostData {
            id: config.id,
            evidence: "a repair moved its damaged files aside, and no running member could say what it had"
                .into(),
        }),
        Probed::New { term } if term > 0 => {
            // Elections ran but no entry was ever appended (a cluster being created with a
            // member slow to start): nothing can have been acknowledged. Only a vote may have
            // been given: the highest term seen, with the vote spent on itself.
            Ok(Some(LostDir {
                hard_state: HardState { current_term: term, voted_for: Some(config.id) },
                recorded_last: LogId::default(),
                evidence: format!("a new cluster that has held elections (term {term}) but has no entry yet"),
            }))
        }
        Probed::New { .. } | Probed::Learner | Probed::NoAnswer => Ok(None),
    }
}

/// The entries of `dir` a repair leaves alone: damaged files moved aside earlier, a file
/// system's `lost+found`, and the store's headroom reserve (not data).
fn kept_in_place(name: &str) -> bool {
    name.starts_with(raft_storage_rocks::DAMAGED_PREFIX)
        || name == "lost+found"
        || name.starts_with(raft_storage_rocks::HEADROOM_FILE)
}

/// Whether the data dir holds damaged files a repair moved aside (this node had data).
pub(super) fn repaired_before(config: &NodeConfig) -> bool {
    std::fs::read_dir(&config.data_dir).is_ok_and(|d| {
        d.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(raft_storage_rocks::DAMAGED_PREFIX))
    })
}

/// The file a repair keeps in its `damaged-*` directory while it moves files into it: a
/// directory without it holds a finished repair's files.
const MOVING_MARKER: &str = "MOVING";

/// Finishes a repair a crash interrupted: the store's `CURRENT` was moved aside first, so a data
/// dir whose `damaged-*` directory still holds the [`MOVING_MARKER`], with other files and no
/// `CURRENT`, is one whose remaining files go after it. Without the marker the `damaged-*`
/// directories are finished repairs, kept for inspection: a store that lost its `CURRENT` since
/// is new damage, repaired from the cluster like the first (found by the final outside review:
/// such a store's files were moved into the old directory, over its files of the same names,
/// and the node stayed down).
pub(super) fn finish_interrupted_repair(config: &NodeConfig) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(&config.data_dir) else { return Ok(()) };
    let mut interrupted: Option<std::path::PathBuf> = None;
    let mut rest = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(raft_storage_rocks::DAMAGED_PREFIX) {
            if entry.path().join(MOVING_MARKER).exists()
                && interrupted.as_ref().is_none_or(|n| entry.path() > *n)
            {
                interrupted = Some(entry.path());
            }
        } else if !kept_in_place(&name) {
            rest.push(entry);
        }
    }
    let Some(aside) = interrupted else {
        // A repair the code before the marker began and a crash interrupted: `CURRENT` and
        // perhaps `durability.rec` in an unmarked `damaged-*` directory, the rest of the store
        // still here without either (a store that lost only `CURRENT` keeps its record and is
        // repaired as damage). Finished into a directory of its own, so nothing kept is
        // overwritten; the emptied node then recovers as one that lost its data dir.
        let legacy = !rest.is_empty()
            && !config.data_dir.join("CURRENT").exists()
            && !config.data_dir.join(raft_storage_rocks::DURABILITY_FILE).exists()
            && unmarked_repairs_hold_a_store(&config.data_dir);
        if legacy {
            let aside = move_aside(&config.data_dir)?;
            tracing::warn!(aside = %aside.display(), "finished moving aside a damaged data dir whose repair an older version began (a crash interrupted it)");
        }
        return Ok(());
    };
    if !config.data_dir.join("CURRENT").exists() {
        for entry in rest {
            std::fs::rename(entry.path(), aside.join(entry.file_name()))?;
        }
        tracing::warn!(aside = %aside.display(), "finished moving a damaged data dir aside (a crash interrupted it)");
    }
    finish_moving(&config.data_dir, &aside)
}

/// Whether an unmarked `damaged-*` directory of `data_dir` holds a store's `CURRENT`.
fn unmarked_repairs_hold_a_store(data_dir: &std::path::Path) -> bool {
    std::fs::read_dir(data_dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name().to_string_lossy().starts_with(raft_storage_rocks::DAMAGED_PREFIX)
                && !e.path().join(MOVING_MARKER).exists()
                && e.path().join("CURRENT").exists()
        })
    })
}

/// Moves the store's files into a new `damaged-<nanos>` subdirectory of `data_dir` (the data
/// dir itself may be a mount point), `CURRENT` first, the directory marked [`MOVING_MARKER`]
/// until every entry is moved and synced; returns the directory.
fn move_aside(data_dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let aside = data_dir.join(format!("{}{nanos}", raft_storage_rocks::DAMAGED_PREFIX));
    std::fs::create_dir(&aside)?;
    std::fs::File::create(aside.join(MOVING_MARKER))?.sync_all()?;
    std::fs::File::open(&aside)?.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()?;
    let current = data_dir.join("CURRENT");
    if current.exists() {
        std::fs::rename(&current, aside.join("CURRENT"))?;
        std::fs::File::open(data_dir)?.sync_all()?;
    }
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        if kept_in_place(&entry.file_name().to_string_lossy()) {
            continue;
        }
        std::fs::rename(entry.path(), aside.join(entry.file_name()))?;
    }
    finish_moving(data_dir, &aside)?;
    Ok(aside)
}

/// Ends a move into `aside`: the data dir's entries are synced, then the marker goes.
fn finish_moving(data_dir: &std::path::Path, aside: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(data_dir)?.sync_all()?;
    std::fs::File::open(aside)?.sync_all()?;
    std::fs::remove_file(aside.join(MOVING_MARKER))?;
    std::fs::File::open(aside)?.sync_all()
}

/// A node whose data dir is damaged (RocksDB or a checksum refused it) and whose cluster can
/// say what it had is repaired from the cluster: the damaged files are moved into a
/// `damaged-<unix seconds>` subdirectory (kept for inspection; the store ignores it), `CURRENT`
/// first (a crash part-way leaves a store that cannot open and a repair that is finished at the
/// next start), and the node starts as one that lost its data dir. Refused (with `reason`,
/// nothing moved) when the cluster cannot say what it had.
pub(super) async fn move_damaged_dir_aside(config: &NodeConfig, reason: &str) -> Result<(), StartError> {
    let refuse = |why: String| StartError::Damaged {
        dir: config.data_dir.display().to_string(),
        reason: reason.to_string(),
        why,
    };
    let checked = if config.members.is_empty() {
        // A node that joined through `join` (found by chaos: a joined node could never repair
        // its store): the same check as a fresh joiner's, which the start then makes again
        // on the emptied dir (a voter recovers, anything else joins as new).
        plan_join(config, config.join.clone(), true).await.map(drop)
    } else {
        match probe::probe_membership(config, Some(probe::LOST_DIR_PROBE_FOR)).await {
            Ok(Probed::LostVoter(_) | Probed::Learner) => Ok(()),
            Ok(Probed::NoAnswer) => return Err(refuse("not every other member answered".into())),
            Ok(Probed::New { .. }) => return Err(refuse("the other members have not run yet".into())),
            Err(e) => Err(e),
        }
    };
    match checked {
        Ok(()) => {}
        Err(StartError::LostData { evidence, .. }) => return Err(refuse(evidence)),
        Err(e) => return Err(refuse(e.to_string())),
    }
    let aside = move_aside(&config.data_dir)
        .map_err(|e| refuse(format!("cannot move it aside into a damaged-* directory: {e}")))?;
    tracing::error!(
        dir = %config.data_dir.display(),
        aside = %aside.display(),
        reason,
        "the data dir is damaged: moved aside; recovering the data from the cluster"
    );
    Ok(())
}

/// A node with `join` (or members found by discovery) learns the members (and their
/// addresses) from the running cluster through `join_through`. A fresh node that the cluster
/// lists as a voter lost its data and is refused.
pub(super) async fn plan_join(
    config: &NodeConfig,
    join_through: Vec<String>,
    fresh: bool,
) -> Result<Plan, StartError> {
    let through = join_through.join(", ");
    let client = probe_client(config, join_through.clone(), Duration::from_secs(2))
        .map_err(|_| StartError::Join { through: through.clone(), message: "invalid join address".into() })?;
    let deadline = tokio::time::Instant::now() + if fresh { JOIN_FOR } else { JOIN_WITH_STATE_FOR };
    let view: MembersView = loop {
        match client.members().await {
            Ok(view) => break view,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                if fresh {
                    return Err(StartError::Join { through, message: e.to_string() });
                }
                tracing::warn!(error = %e, "no member answered; restarting with the stored state only");
                return Ok(Plan { join_through, ..Plan::stored_state_only() });
            }
            Err(e) => {
                tracing::info!(error = %e, "waiting for the cluster to answer");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut lost_dir = None;
    if fresh {
        // One member's view may be stale (say, from before this node was promoted): every
        // voter of it is asked too, and any that lists this node as a voter counts.
        let mut statuses = Vec::new();
        if let Ok(status) = client.status().await {
            statuses.push(status);
        }
        let mut silent = Vec::new();
        for m in view.members.iter().filter(|m| m.role == MemberRole::Voter && m.id != config.id) {
            let answer = match m.client_addr.clone() {
                Some(addr) => match probe_client(config, vec![addr], Duration::from_millis(500)) {
                    Ok(member) => member.status().await.ok(),
                    Err(_) => None,
                },
                None => None,
            };
            match answer {
                Some(status) => statuses.push(status),
                None => silent.push(m.id),
            }
        }
        let lists_me = |members: &[raft_client::api::MemberView]| {
            members.iter().any(|m| m.id == config.id && m.role == MemberRole::Voter)
        };
        let listed = lists_me(&view.members)
            || statuses.iter().any(|s| s.cluster == config.cluster && lists_me(&s.members));
        let known = view.members.iter().any(|m| m.id == config.id);
        if !listed && known && !silent.is_empty() {
            // Listed (as a learner) in a view that may be stale: a voter that does not answer
            // may list it as a voter, which it must not start as with an empty log.
            return Err(StartError::LostData {
                id: config.id,
                evidence: format!(
                    "the cluster (through {through}) lists it as a member, and voters {silent:?} did not \
                     answer, so whether it is a voter that lost its data is unknown"
                ),
            });
        }
        if listed {
            let evidence = format!("the cluster (through {through}) lists it as a voter");
            let views: Vec<&raft_client::api::StatusView> =
                statuses.iter().filter(|s| s.cluster == config.cluster).collect();
            let answers = probe::gather_voters(config, &views, &evidence).await?;
            lost_dir = Some(probe::lost_dir_from(config, &answers, evidence));
        }
    }
    let peers = view
        .members
        .iter()
        .filter(|m| m.id != config.id)
        .filter_map(|m| Some((m.id, m.raft_addr.as_deref()?.parse().ok()?)))
        .collect();
    let voters = view.members.iter().filter(|m| m.role == MemberRole::Voter).map(|m| m.id);
    Ok(Plan { membership: Membership::with_voters(voters), peers, join_through, lost_dir })
}

/// A freshly joined node asks the cluster to add it (as a learner, promoted once caught up
/// when `join_as_voter`), retrying until the cluster answers.
pub(super) async fn request_membership(shared: Arc<Shared>, join_through: Vec<String>) {
    let config = &shared.config;
    let request = AddMemberRequest {
        id: config.id,
        raft_addr: config.advertised_raft_addr().to_string(),
        client_addr: config.client_addr.to_string(),
        role: if config.join_as_voter { MemberRole::Voter } else { MemberRole::Learner },
    };
    let client = match probe_client(config, join_through, Duration::from_secs(60)) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot ask the cluster to add this node");
            return;
        }
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match client.add_member(&request).await {
            Ok(view) => {
                tracing::info!(members = view.members.len(), "joined the cluster");
                return;
            }
            Err(e) if !worth_retrying(&e) => {
                tracing::error!(error = %e, "the cluster refused to add this node");
                return;
            }
            Err(e) => {
                tracing::info!(error = %e, "asking to join again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Whether asking again may succeed: retryable errors, also when the client already gave up
/// on them (`RetriesExhausted` of a retryable error, e.g. `no_leader` during an election).
fn worth_retrying(e: &ClientError) -> bool {
    match e {
        ClientError::RetriesExhausted { last, .. } => worth_retrying(last),
        e => e.is_retryable(),
    }
}

/// Reads the TLS files into the transports' settings.
pub(super) fn read_tls(tls: &TlsConfig) -> Result<raft_tls::TlsConfig, StartError> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(|source| StartError::TlsFile { path: path.display().to_string(), source })
    };
    Ok(raft_tls::TlsConfig {
        ca_cert_pem: read(&tls.ca_cert)?,
        cert_pem: read(&tls.cert)?,
        key_pem: read(&tls.key)?,
    })
}

#[cfg(test)]
mod tests {
    use raft_client::api::{ApiError, ErrorCode};

    use super::*;

    fn api(code: ErrorCode) -> ClientError {
        ClientError::Api { status: code.http_status(), error: Box::new(ApiError::new(code, "x")) }
    }

    #[test]
    fn a_join_keeps_asking_through_elections_but_not_after_a_refusal() {
        let exhausted = |last| ClientError::RetriesExhausted { attempts: 9, last: Box::new(last) };
        assert!(worth_retrying(&exhausted(api(ErrorCode::NoLeader))), "an election in progress");
        assert!(worth_retrying(&api(ErrorCode::NoQuorum)));
        assert!(!worth_retrying(&api(ErrorCode::BadRequest)));
        assert!(!worth_retrying(&exhausted(api(ErrorCode::Conflict))));
    }
}
