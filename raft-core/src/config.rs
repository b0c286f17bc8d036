//! Protocol and driver configuration, validated once as a whole.

use serde::{Deserialize, Serialize};

/// Tunables of a Raft node. Build with [`Config::default`] and struct update syntax, then
/// [`Config::validate`] (the driver and the protocol validate again on start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// How often the leader sends heartbeats; must be well under `election_timeout_min_ms`.
    pub heartbeat_interval_ms: u64,
    /// How long a forwarded proposal waits for the leader's answer before failing.
    pub rpc_timeout_ms: u64,
    /// Most entries in one AppendEntries message.
    pub max_entries_per_append: usize,
    /// Most payload bytes in one AppendEntries message (at least one entry is always sent).
    pub max_bytes_per_append: usize,
    /// Most AppendEntries messages in flight to one follower (the pipelining window).
    pub max_in_flight_appends: usize,
    /// Most entries the leader holds appended but not yet committed; proposals past it are
    /// refused with `Busy` (back-pressure instead of unbounded memory).
    pub max_uncommitted_entries: usize,
    /// Most forwarded proposals a follower waits on at once.
    pub max_pending_forwards: usize,
    /// Run a pre-vote round before a real election (a partitioned node cannot bump the term).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down, and
    /// voters ignore vote requests while they hear from a leader.
    pub check_quorum: bool,
    /// A proposal made on a follower is forwarded to the leader.
    pub auto_forward: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            heartbeat_interval_ms: 20,
            rpc_timeout_ms: 2_000,
            max_entries_per_append: 1_024,
            max_bytes_per_append: 1024 * 1024,
            max_in_flight_appends: 8,
            max_uncommitted_entries: 100_000,
            max_pending_forwards: 10_000,
            pre_vote: true,
            check_quorum: true,
            auto_forward: true,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The heartbeat must be shorter than the minimum election timeout.
    #[error("heartbeat_interval_ms ({heartbeat}) must be less than election_timeout_min_ms ({min})")]
    HeartbeatNotBelowElectionMin {
        /// The heartbeat interval.
        heartbeat: u64,
        /// The minimum election timeout.
        min: u64,
    },
    /// The election timeout range is empty.
    #[error("election_timeout_min_ms ({min}) must be less than election_timeout_max_ms ({max})")]
    ElectionRangeEmpty {
        /// The minimum election timeout.
        min: u64,
        /// The maximum election timeout.
        max: u64,
    },
    /// A field that must be positive is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
}

impl Config {
    /// Checks the fields together: `0 < heartbeat < election min < election max`, and every
    /// limit positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 8] = [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("rpc_timeout_ms", self.rpc_timeout_ms),
            ("max_entries_per_append", self.max_entries_per_append as u64),
            ("max_bytes_per_append", self.max_bytes_per_append as u64),
            ("max_in_flight_appends", self.max_in_flight_appends as u64),
            ("max_uncommitted_entries", self.max_uncommitted_entries as u64),
            ("max_pending_forwards", self.max_pending_forwards as u64),
            ("election_timeout_min_ms", self.election_timeout_min_ms),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero { field });
        }
        if self.heartbeat_interval_ms >= self.election_timeout_min_ms {
            return Err(ConfigError::HeartbeatNotBelowElectionMin {
                heartbeat: self.heartbeat_interval_ms,
                min: self.election_timeout_min_ms,
            });
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return Err(ConfigError::ElectionRangeEmpty {
                min: self.election_timeout_min_ms,
                max: self.election_timeout_max_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn heartbeat_must_be_below_election_min() {
        let c = Config { heartbeat_interval_ms: 150, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::HeartbeatNotBelowElectionMin { .. })));
    }

    #[test]
    fn election_range_must_not_be_empty() {
        let c = Config { election_timeout_max_ms: 150, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::ElectionRangeEmpty { .. })));
    }

    #[test]
    fn zero_limits_are_refused() {
        let c = Config { max_in_flight_appends: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "max_in_flight_appends" }));
    }
}
