//! Reloading a running node's credentials (SIGHUP, or [`Node::reload`]): the client API's
//! tokens and certificate roles (`[auth]`), its HTTPS certificate, key and client CA
//! (`[api_tls]`), and the peers' TLS material (`[tls]`), all read and checked first and then
//! swapped together, so a bad file changes nothing. New connections use the new material;
//! open ones keep their session, and a revoked token is refused from its next request.
//!
//! Anything else in the file (addresses, members, limits, turning `[auth]`, `[tls]` or
//! `[api_tls]` on or off) takes effect at the next start; the reload says which keys differ.
//! Certificate files that a node reads for its own calls to the other members (the CA, its
//! token file) are read at each call, so files rotated in place are used at once.

use super::{startup, Node};
use crate::config::NodeConfig;

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The sections now in effect with their new contents (`auth`, `api_tls`, `tls`).
    pub applied: Vec<&'static str>,
    /// Keys that differ from the running configuration and wait for a restart.
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
        let old = &shared.config;
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
        Ok(Reloaded { applied, needs_restart: differences(old, new) })
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
    differs("raft", old.raft == new.raft);
    differs("network", old.network == new.network);
    differs("limits", old.limits == new.limits);
    differs("log", old.log == new.log);
    differs("discovery", old.discovery == new.discovery);
    // File paths of the reloaded sections are read at each reload, but the node's own calls
    // to the members use the paths it started with.
    differs(
        "auth.token_file",
        old.auth.as_ref().map(|a| &a.token_file) == new.auth.as_ref().map(|a| &a.token_file),
    );
    differs(
        "api_tls.ca_cert",
        old.api_tls.as_ref().map(|a| &a.ca_cert) == new.api_tls.as_ref().map(|a| &a.ca_cert),
    );
    out
}
