//! `raftctl`'s command line, as clap derive types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::api::{BalanceStrategy, Consistency, ServiceNode};

/// The endpoints used when neither `--endpoints` nor `RAFT_ENDPOINTS` is given.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083";
/// Longest `--timeout` accepted.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// `raftctl`: operate a `raft-node` cluster through its HTTP API.
#[derive(Debug, Clone, Parser)]
#[command(name = "raftctl", version, about = "Operate a raft-node cluster through its HTTP API")]
pub struct Cli {
    /// Node HTTP endpoints, comma-separated (`host:port`, `http://host:port` or
    /// `https://host:port`; a bare `host:port` is https with a CA certificate).
    #[arg(long, env = "RAFT_ENDPOINTS", value_delimiter = ',', default_value = DEFAULT_ENDPOINTS, global = true)]
    pub endpoints: Vec<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Time limit of one request attempt: `500ms`, `5s`, `1m` (a bare number is seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// Bearer token for a cluster with client authentication. Prefer `RAFT_TOKEN` or
    /// `--token-file` (a flag shows in the process list).
    #[arg(long, env = "RAFT_TOKEN", hide_env_values = true, global = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the bearer token. Without a token or a file, `target/cluster/admin.token`
    /// (written by `cargo xtask cluster up`) is used when it exists.
    #[arg(long, env = "RAFT_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// HTTPS: the CA certificate (PEM) that signs the nodes' API certificates. Without it,
    /// `target/cluster/api-ca.pem` (written by `cargo xtask cluster up`) is used for local
    /// endpoints when it exists.
    #[arg(long, env = "RAFT_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Send the token over plain HTTP to endpoints off this machine (refused otherwise: the
    /// token would cross the network in clear). For a network you trust only.
    #[arg(long, global = true)]
    pub insecure_plain_http: bool,
    /// A client certificate (PEM) for nodes that require one (`[api_tls].client_ca`).
    #[arg(long = "cert", env = "RAFT_CERT", global = true, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "key", env = "RAFT_KEY", global = true, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `raftctl` command.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Show the status of every node, one row each.
    Status,
    /// Show the leader.
    Leader,
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Read a key.
    Get {
        /// The key.
        key: String,
        /// How the read is served (default: linearizable).
        #[arg(long, value_enum)]
        consistency: Option<ConsistencyArg>,
    },
    /// Delete a key.
    #[command(alias = "delete")]
    Del {
        /// The key.
        key: String,
    },
    /// Compare-and-swap: write or delete a key only if it is as expected.
    Cas(CasArgs),
    /// List keys by prefix.
    List {
        /// Only keys starting with this (all keys when absent).
        prefix: Option<String>,
        /// At most this many keys.
        #[arg(long)]
        limit: Option<u32>,
        /// Only keys after this one (the next page of a listing that was cut).
        #[arg(long)]
        after: Option<String>,
        /// How the read is served (default: linearizable).
        #[arg(long, value_enum)]
        consistency: Option<ConsistencyArg>,
    },
    /// Show log entries.
    Log {
        /// First index to show.
        #[arg(long)]
        from: Option<u64>,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// List or change the members (`list` when no subcommand is given).
    Members {
        /// The members command.
        #[command(subcommand)]
        command: Option<MembersCommand>,
    },
    /// Hand leadership to a node (the most caught-up voter when no id is given).
    TransferLeader {
        /// The node to hand leadership to.
        id: Option<u64>,
    },
    /// Manage the service registry.
    Services {
        /// The services command.
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// Pick a node of a service, weighted by priority.
    Balance {
        /// The service.
        name: String,
        /// How to pick.
        #[arg(long, value_enum, default_value_t = StrategyArg::RoundRobin)]
        strategy: StrategyArg,
    },
    /// Stream committed changes (until interrupted).
    Watch {
        /// Only keys and services starting with this.
        prefix: Option<String>,
        /// Start at this log index.
        #[arg(long)]
        from_index: Option<u64>,
    },
    /// Save the latest snapshot of the first node that answers to a file (a backup; use one
    /// endpoint to choose the node). The file is written completely or not at all.
    SnapshotSave {
        /// Where to write it (an existing file is replaced).
        file: std::path::PathBuf,
    },
}

/// Arguments of `raftctl cas`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(group(ArgGroup::new("expectation").required(true).args(["expect_version", "expect_value", "expect_absent"])))]
#[command(group(ArgGroup::new("outcome").required(true).args(["value", "delete"])))]
pub struct CasArgs {
    /// The key.
    pub key: String,
    /// The version the key must have (0: absent).
    #[arg(long)]
    pub expect_version: Option<u64>,
    /// The value the key must have.
    #[arg(long)]
    pub expect_value: Option<String>,
    /// The key must not exist.
    #[arg(long)]
    pub expect_absent: bool,
    /// The new value.
    #[arg(long)]
    pub value: Option<String>,
    /// Delete the key.
    #[arg(long)]
    pub delete: bool,
}

/// `raftctl members` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum MembersCommand {
    /// List the members.
    List,
    /// Add a member (a learner unless `--voter`), or update its addresses.
    Add {
        /// The new member's id.
        id: u64,
        /// Address of its Raft transport.
        #[arg(long)]
        raft_addr: String,
        /// Address of its HTTP API.
        #[arg(long)]
        client_addr: String,
        /// Make it a voter once it has caught up.
        #[arg(long)]
        voter: bool,
    },
    /// Promote a learner to voter.
    Promote {
        /// The member's id.
        id: u64,
        /// Skip the checks that it has caught up and that a majority of the new voters answer.
        #[arg(long)]
        force: bool,
    },
    /// Remove a member.
    Remove {
        /// The member's id.
        id: u64,
        /// Skip the check that a majority of the remaining voters are caught up and answer
        /// (for a node that is gone for good while others are down too).
        #[arg(long)]
        force: bool,
    },
}

/// `raftctl services` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ServicesCommand {
    /// List the services.
    List,
    /// Show one service.
    Get {
        /// The service.
        name: String,
    },
    /// Register (or replace) a service.
    Register(RegisterArgs),
    /// Remove a service.
    Remove {
        /// The service.
        name: String,
    },
    /// Mark a node of a service down.
    Down {
        /// The service.
        name: String,
        /// The node.
        node: String,
    },
    /// Mark a node of a service up again.
    Up {
        /// The service.
        name: String,
        /// The node.
        node: String,
    },
}

/// Arguments of `raftctl services register`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RegisterArgs {
    /// The service.
    pub name: String,
    /// The service's type.
    #[arg(long = "type", value_name = "TYPE", required_unless_present = "file", conflicts_with = "file")]
    pub kind: Option<String>,
    /// A node: `id=NAME,addr=HOST:PORT[,priority=N][,down=true][,attr.KEY=VALUE...]`
    /// (repeat for more nodes; values cannot contain commas).
    #[arg(long = "node", value_name = "NODE", value_parser = parse_service_node, conflicts_with = "file")]
    pub nodes: Vec<ServiceNode>,
    /// Read the service spec (`{"type": .., "nodes": [..]}`) from a JSON file.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// `--consistency` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Through ReadIndex (a heartbeat round).
    Linearizable,
    /// Through the leader's lease.
    Lease,
    /// This node's state, maybe stale.
    Local,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Lease => Consistency::Lease,
            ConsistencyArg::Local => Consistency::Local,
        }
    }
}

/// `--strategy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Smooth weighted round-robin.
    RoundRobin,
    /// Weighted random.
    Random,
}

impl From<StrategyArg> for BalanceStrategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::RoundRobin => BalanceStrategy::RoundRobin,
            StrategyArg::Random => BalanceStrategy::Random,
        }
    }
}

/// Parses `500ms`, `5s`, `2m` or a bare number of seconds; positive, at most
/// [`TIMEOUT_MAX`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 1m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("unknown unit {unit:?} (use ms, s or m)")),
    };
    if duration.is_zero() {
        return Err("the timeout must be positive".into());
    }
    if duration > TIMEOUT_MAX {
        return Err("the timeout must be at most 1h".into());
    }
    Ok(duration)
}

/// Parses `id=NAME,addr=HOST:PORT[,priority=N][,down=true][,attr.KEY=VALUE...]`.
pub fn parse_service_node(text: &str) -> Result<ServiceNode, String> {
    let mut id = None;
    let mut address = None;
    let mut priority = None;
    let mut down = None;
    let mut attributes = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
        let duplicate = || format!("{key} is given twice");
        match key {
            "id" => {
                if id.replace(value.to_owned()).is_some() {
                    return Err(duplicate());
                }
            }
            "addr" | "address" => {
                if address.replace(value.to_owned()).is_some() {
                    return Err(duplicate());
                }
            }
            "priority" => {
                let p: u32 = value.parse().map_err(|_| format!("priority {value:?} is not a number"))?;
                if priority.replace(p).is_some() {
                    return Err(duplicate());
                }
            }
            "down" => {
                let d: bool = value.parse().map_err(|_| format!("down {value:?} is not true or false"))?;
                if down.replace(d).is_some() {
                    return Err(duplicate());
                }
            }
            _ => match key.strip_prefix("attr.") {
                Some(name) if !name.is_empty() => {
                    if attributes.insert(name.to_owned(), value.to_owned()).is_some() {
                        return Err(duplicate());
                    }
                }
                _ => return Err(format!("unknown node field {key:?} (id, addr, priority, down, attr.NAME)")),
            },
        }
    }
    let id = id.filter(|v| !v.is_empty()).ok_or("a node needs id=NAME")?;
    let address = address.filter(|v| !v.is_empty()).ok_or("a node needs addr=HOST:PORT")?;
    Ok(ServiceNode { id, address, priority: priority.unwrap_or(1), attributes, down: down.unwrap_or(false) })
}
