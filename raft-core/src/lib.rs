//! # raft-core
//!
//! The Raft consensus protocol as a deterministic state machine ([`Raft`]), the traits that
//! make it pluggable ([`Storage`], [`Transport`], [`Fsm`]), an async driver that wires them
//! ([`RaftNode`]), and a testing kit ([`testing`]): a storage conformance suite and a
//! deterministic cluster simulator.
//!
//! The protocol does no IO and reads no clock: the caller feeds it [`Event`]s with the time,
//! then carries out the returned [`Ready`].
//!
//! ```
//! use raft_core::{Config, Event, Membership, Raft, RestoredState, Role};
//!
//! // A single-node cluster elects itself once its election timer fires.
//! let restored = RestoredState { membership: Membership::with_voters([1]), ..Default::default() };
//! let mut raft = Raft::new(1, Config::default(), restored, 42, 0).unwrap();
//! raft.step(1_000, Event::Tick);
//! let ready = raft.take_ready();
//! assert!(ready.hard_state.is_some(), "the new term and vote must be persisted");
//! raft.advance();
//! assert_eq!(raft.role(), Role::Leader);
//! ```

mod config;
mod driver;
mod fsm;
mod membership;
mod message;
mod protocol;
mod rng;
mod storage;
pub mod testing;
mod transport;
mod types;
pub mod wire;

pub use config::{Config, ConfigError, SNAPSHOT_LOG_FRACTION};
pub use driver::{
    Applied, Clock, CommittedEntry, DriftingClock, LeaderView, NodeStatus, RaftError, RaftNode, TokioClock,
};
pub use fsm::{read_to_end, BufferSource, Fsm, FsmError, SnapshotReader, SnapshotSource};
pub use membership::{InvalidChange, Membership, MembershipChange};
pub use message::{AppendResult, ConflictHint, ForwardRejection, Message, Payload, ProposalId, ReadId};
pub use protocol::{
    Event, FollowerStatus, LogRead, ProposalOutcome, ProposalRejection, ProtocolStatus, Raft, ReadMode,
    ReadOutcome, Ready, ReplicationMode, RestoreError, RestoredState, SnapshotPart, SnapshotRead,
    TransferError, STALLED_TRANSFER_TIMEOUTS, TERM_LIMIT,
};
pub use rng::{fresh_seed, SeededRng};
pub use storage::{
    ConfigPosition, DataLoss, InitialState, Snapshot, SnapshotData, SnapshotDataReader, SnapshotMeta,
    SnapshotStage, StagedSnapshot, Storage, StorageError,
};
pub use transport::{PeerError, SendError, Transport, TransportClosed};
pub use types::{Entry, EntryPayload, EntryStub, HardState, Index, LogId, Millis, NodeId, Role, Term};
