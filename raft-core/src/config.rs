//! Protocol and driver configuration, validated once as a whole.

use serde::{Deserialize, Serialize};

/// An automatic snapshot waits until the log applied since the last snapshot is at least this
/// fraction (1 / N) of that snapshot's size; see [`Config::snapshot_threshold_entries`].
pub const SNAPSHOT_LOG_FRACTION: u64 = 4;

/// Maximum election timeouts a leader's own log write may take by default before the leader
/// goes quiet ([`Config::disk_stall_timeout_ms`]).
const DISK_STALL_ELECTIONS: u64 = 2;

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
    /// Most entries the leader holds appended but not yet committed, or committed but not yet
    /// handed to its state machine (whose queue is full); proposals past it are refused with
    /// `Busy` (back-pressure instead of unbounded memory).
    pub max_uncommitted_entries: usize,
    /// Most bytes (payloads plus a small per-entry header) the leader holds appended but not
    /// yet committed or handed to its state machine; a proposal that would pass it is refused
    /// with `Busy`, unless there are none.
    pub max_uncommitted_bytes: u64,
    /// Payload bytes of the log's tail kept in memory (a cache). Older entries that are
    /// committed and durable keep only their index and term; when a follower needs them, the
    /// leader reads them from storage (`Storage::entries`), a message's worth at a time, and so
    /// does a node whose state machine fell behind (its apply queue was full) when it hands
    /// them out. Entries not yet committed or durable are always held. Larger: fewer reads for followers that lag;
    /// smaller: less memory between snapshots (the log since the last snapshot can be a
    /// quarter of the state, see `snapshot_threshold_entries`). A restarted node starts with
    /// an empty cache: the log it holds stays in storage until read.
    pub log_cache_bytes: u64,
    /// Most forwarded proposals a follower waits on at once.
    pub max_pending_forwards: usize,
    /// Run a pre-vote round before a real election (a partitioned node cannot bump the term).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down, and
    /// voters ignore vote requests while they hear from a leader.
    pub check_quorum: bool,
    /// A proposal made on a follower is forwarded to the leader.
    pub auto_forward: bool,
    /// The driver snapshots the state machine and compacts the log once this many entries were
    /// applied since the last snapshot; 0 turns automatic snapshots off.
    ///
    /// Each node raises both thresholds by a random part of up to a quarter, drawn again after
    /// every snapshot, so that the nodes of a cluster do not snapshot at the same moment. And
    /// with a large state a snapshot waits until the log applied since the last one is at least
    /// a quarter (also raised by up to a quarter per node) of that snapshot's size
    /// ([`SNAPSHOT_LOG_FRACTION`]): writing snapshots then
    /// costs at most four times the log's own bytes, whatever the state's size. The trade-off:
    /// a larger log between snapshots costs memory (the protocol holds it) and replay time at a
    /// restart; snapshots more often cost CPU and disk bandwidth for a whole copy of the state
    /// each time.
    pub snapshot_threshold_entries: u64,
    /// The driver also snapshots once this many payload bytes were applied since the last
    /// snapshot (entries applied again after a restart count again); 0 turns the byte threshold
    /// off.
    pub snapshot_threshold_bytes: u64,
    /// Entries kept in the log behind a snapshot, so that a follower slightly behind catches up
    /// from the log instead of receiving the whole snapshot.
    pub snapshot_keep_entries: u64,
    /// Most snapshot bytes in one InstallSnapshot message (keep it under the transport's frame
    /// limit).
    pub snapshot_chunk_bytes: usize,
    /// Serve [`lease reads`](crate::ReadMode::Lease): while a quorum answered a heartbeat round
    /// sent less than `election_timeout_min_ms × (1 − max_clock_drift_percent / 100)` ago, the
    /// leader answers reads without a new round. Needs `check_quorum`. Assumes clocks run at
    /// rates within `max_clock_drift_percent` of each other and that the leader process is not
    /// paused (SIGSTOP, swap) longer than the lease's slack; keep it off unless reads must skip
    /// the round trip.
    pub lease_read: bool,
    /// The bound on clock-rate differences between nodes that lease reads assume, in percent.
    pub max_clock_drift_percent: u64,
    /// Most linearizable reads a node waits on at once (its own and, on the leader, those
    /// forwarded by followers); more are refused with `Busy`.
    pub max_pending_reads: usize,
    /// How long a leader's own log write (an fsync) may take before the leader goes quiet
    /// (no heartbeats, no quorum check) so that a node with a healthy disk is elected; its
    /// lease lapses with its heartbeats. `None`: two `election_timeout_max_ms`. A stalled disk
    /// otherwise keeps a leader that commits nothing in place, since its heartbeats still go
    /// out.
    pub disk_stall_timeout_ms: Option<u64>,
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
            max_uncommitted_bytes: 64 * 1024 * 1024,
            log_cache_bytes: 64 * 1024 * 1024,
            max_pending_forwards: 10_000,
            pre_vote: true,
            check_quorum: true,
            auto_forward: true,
            snapshot_threshold_entries: 10_000,
            snapshot_threshold_bytes: 64 * 1024 * 1024,
            snapshot_keep_entries: 1_000,
            snapshot_chunk_bytes: 512 * 1024,
            lease_read: false,
            max_clock_drift_percent: 10,
            max_pending_reads: 10_000,
            disk_stall_timeout_ms: None,
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
    /// Lease reads are only safe when voters refuse elections while they hear from a leader.
    #[error("lease_read needs check_quorum")]
    LeaseNeedsCheckQuorum,
    /// A disk-stall bound shorter than an election timeout.
    #[error("disk_stall_timeout_ms ({stall}) must be at least election_timeout_max_ms ({max})")]
    DiskStallBelowElection {
        /// The disk-stall bound.
        stall: u64,
        /// The maximum election timeout.
        max: u64,
    },
    /// The assumed clock drift leaves no lease.
    #[error("max_clock_drift_percent ({0}) must be below 100")]
    DriftTooLarge(u64),
}

impl Config {
    /// How long a leader's own log write may take before it goes quiet
    /// ([`disk_stall_timeout_ms`](Self::disk_stall_timeout_ms), or two maximum election
    /// timeouts).
    pub fn disk_stall_ms(&self) -> u64 {
        self.disk_stall_timeout_ms
            .unwrap_or(DISK_STALL_ELECTIONS.saturating_mul(self.election_timeout_max_ms))
    }

    /// Checks the fields together: `0 < heartbeat < election min < election max`, and every
    /// limit positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 11] = [
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes as u64),
            ("max_pending_reads", self.max_pending_reads as u64),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("rpc_timeout_ms", self.rpc_timeout_ms),
            ("max_entries_per_append", self.max_entries_per_append as u64),
            ("max_bytes_per_append", self.max_bytes_per_append as u64),
            ("max_in_flight_appends", self.max_in_flight_appends as u64),
            ("max_uncommitted_entries", self.max_uncommitted_entries as u64),
            ("max_uncommitted_bytes", self.max_uncommitted_bytes),
            ("max_pending_forwards", self.max_pending_forwards as u64),
            ("election_timeout_min_ms", self.election_timeout_min_ms),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero { field });
        }
        if let Some(stall) = self.disk_stall_timeout_ms {
            if stall < self.election_timeout_max_ms {
                // Shorter, a leader would go quiet on ordinary slow syncs and elections churn.
                return Err(ConfigError::DiskStallBelowElection { stall, max: self.election_timeout_max_ms });
            }
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
        if self.lease_read && !self.check_quorum {
            return Err(ConfigError::LeaseNeedsCheckQuorum);
        }
        if self.max_clock_drift_percent >= 100 {
            return Err(ConfigError::DriftTooLarge(self.max_clock_drift_percent));
        }
        Ok(())
    }

    /// How long a quorum-confirmed heartbeat round lets the leader serve lease reads.
    pub fn lease_ms(&self) -> u64 {
        self.election_timeout_min_ms * (100 - self.max_clock_drift_percent.min(99)) / 100
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
    fn lease_reads_need_check_quorum() {
        let c = Config { lease_read: true, check_quorum: false, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::LeaseNeedsCheckQuorum));
        let c = Config { max_clock_drift_percent: 100, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::DriftTooLarge(100)));
        assert_eq!(Config::default().lease_ms(), 135);
    }

    #[test]
    fn the_disk_stall_bound_defaults_to_two_elections_and_is_never_below_one() {
        assert_eq!(Config::default().disk_stall_ms(), 600);
        let c = Config { disk_stall_timeout_ms: Some(1), ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::DiskStallBelowElection { stall: 1, max: 300 }));
        let c = Config { disk_stall_timeout_ms: Some(300), ..Config::default() };
        assert_eq!((c.validate(), c.disk_stall_ms()), (Ok(()), 300));
    }

    #[test]
    fn zero_limits_are_refused() {
        let c = Config { max_in_flight_appends: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "max_in_flight_appends" }));
    }
}
