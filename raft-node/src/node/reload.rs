//! Reloading a running node's credentials (SIGHUP, or [`Node::reload`]): the client API's
//! tokens and certificate roles (`[auth]`), its HTTPS certificate, key and client CA
//! (`[api_tls]`), and the peers' TLS material (`[tls]`), all read and checked first and then
//! swapped together, so a bad file changes nothing. New connections use the new material;
//! open ones keep their session, and a revoked token is refused from its next request.
//!
//! Anything else in the file (addresses, members, limits, turning `[auth]`, `[tls]` or
//! `[api_tls]` on or off) takes effect at the next start; the reload says which keys differ.
//! The node's own calls to the other members (the lost-data check, joining, the cluster
//! page) take their token file and TLS files from the last reloaded config, read at each
//! call; with unusable TLS material such a call fails rather than go out in plain HTTP.

use std::sync::Arc;

use super::{startup, Node};
use crate::config::NodeConfig;

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The sections now in effect with their new contents (`auth`, `api_tls`, `tls`).
    pub applied: Vec<&'static str>,
    /// Keys that differ from the configuration the node started with and wait for a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The new file names another node or cluster.
    #[error("the new config is for node {id} of cluster {cluster:?}, not this node")]
    OtherNode {
        /// Its node id.
        id: u64,
        /// Its cluster.
        cluster: String,
    },
    /// A section was added or removed: turning security on or off needs a restart.
    #[error("[{0}] was added or removed; that takes a restart (nothing was reloaded)")]
    Toggled(&'static str),
    /// A file could not be read or does not hold usable material.
    #[error("{0} (nothing was reloaded)")]
    Material(String),
}

impl Node {
    /// Reloads the credentials from `new` (a validated config of this node): see the
    /// [module docs](self).
    pub fn reload(&self, new: &NodeConfig) -> Result<Reloaded, ReloadError> {
        let shared = &self.shared;
        let _one_at_a_time = shared.reloading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = shared.credentials.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let problems = new.problems();
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.key, p.reason)).collect();
            return Err(ReloadError::Material(list.join("; ")));
        }
        if new.id != old.id || new.cluster != old.cluster {
            return Err(ReloadError::OtherNode { id: new.id, cluster: new.cluster.clone() });
        }
        for (section, before, after) in [
            ("auth", old.auth.is_some(), new.auth.is_some()),
            ("api_tls", old.api_tls.is_some(), new.api_tls.is_some()),
            ("tls", old.tls.is_some(), new.tls.is_some()),
        ] {
            if before != after {
                return Err(ReloadError::Toggled(section));
            }
        }
        // Everything read and checked before anything is swapped.
        let peer_tls = match &new.tls {
            Some(tls) => {
                let material = startup::read_tls(tls).map_err(|e| ReloadError::Material(e.to_string()))?;
                raft_tls::check_own_material(&material, &new.cluster, new.id)
                    .map_err(|e| ReloadError::Material(format!("tls: {e}")))?;
                Some(material)
            }
            None => None,
        };
        let api_tls = new.api_server_tls().map_err(ReloadError::Material)?;
        new.member_client_tls().map_err(ReloadError::Material)?;

        let mut applied = Vec::new();
        if let Some(material) = &peer_tls {
            (shared.peer_tls_reload)(material).map_err(|e| ReloadError::Material(format!("tls: {e}")))?;
            applied.push("tls");
        }
        if let (Some(current), Some(material)) = (&shared.api_tls, &api_tls) {
            current.replace(material).map_err(|e| ReloadError::Material(format!("api_tls: {e}")))?;
            applied.push("api_tls");
        }
        if let (Some(current), Some(config)) = (&shared.auth, &new.auth) {
            current.replace(config);
            applied.push("auth");
        }
        // This node's own calls to the members use the new token file and TLS files from now.
        *shared.credentials.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(new.clone());
        Ok(Reloaded { applied, needs_restart: differences(&shared.config, new) })
    }
}

/// The keys (outside the reloaded sections) in which `new` differs from `old`.
fn differences(old: &NodeConfig, new: &NodeConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut differs = |key: &'static str, same: bool| {
        if !same {
            out.push(key);
        }
    };
    differs("raft_addr", old.raft_addr == new.raft_addr);
    differs("raft_advertise_addr", old.raft_advertise_addr == new.raft_advertise_addr);
    differs("client_addr", old.client_addr == new.client_addr);
    differs("data_dir", old.data_dir == new.data_dir);
    differs("transport", old.transport == new.transport);
    differs("storage", old.storage == new.storage);
    differs("members", old.members == new.members);
    differs("join", old.join == new.join && old.join_as_voter == new.join_as_voter);
    differs("insecure_plaintext_peers", old.insecure_plaintext_peers == new.insecure_plaintext_peers);
    differs("insecure_open_client_api", old.insecure_open_client_api == new.insecure_open_client_api);
    differs("repair_damaged_data_dir", old.repair_damaged_data_dir == new.repair_damaged_data_dir);
    differs("headroom_mb", old.headroom_mb == new.headroom_mb);
    differs("raft", old.raft == new.raft);
    differs("network", old.network == new.network);
    differs("limits", old.limits == new.limits);
    differs("log", old.log == new.log);
    differs("discovery", old.discovery == new.discovery);
    out
}
