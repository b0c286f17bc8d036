//! Messages exchanged between nodes. Every message carries the sender's term.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::SnapshotMeta;
use crate::types::{Entry, Index, LogId, NodeId, Term};

/// A message from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's current term (for a granted pre-vote: the term the pre-candidate asked for).
    pub term: Term,
    /// What the message says.
    pub payload: Payload,
}

/// Identifies a proposal made on one node; unique per originating node.
pub type ProposalId = u64;

/// Identifies a linearizable read made on one node; unique per originating node.
pub type ReadId = u64;

/// The body of a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// RequestVote (or a pre-vote, which changes nothing on the receiver).
    RequestVote {
        /// `true` for a pre-vote: `term` is the term the sender would campaign in.
        pre_vote: bool,
        /// The sender's last log entry, for the up-to-date check.
        last_log_id: LogId,
        /// The election was started by the leader's [`Payload::TimeoutNow`] (leadership
        /// transfer): voters answer even while they hear from that leader.
        leadership_transfer: bool,
    },
    /// The answer to [`Payload::RequestVote`].
    RequestVoteResponse {
        /// Whether this answers a pre-vote.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
        /// Whether the grant also vouches for the candidate's log. `false` from a voter that
        /// is recovering lost data and whose recorded last entry the candidate's log does not
        /// reach: it compared the candidate only with the log it still holds, so its grant
        /// counts towards the quorum but not as evidence that the candidate holds every
        /// entry it acknowledged (see [`ProtocolStatus::recovering_to`](crate::ProtocolStatus::recovering_to)).
        /// `false` with every refusal.
        vouches: bool,
        /// With a grant that does not vouch: voters a majority of whom holds every committed
        /// entry this voter lost (the incoming voters of the configuration it held when it
        /// lost them, known only when no configuration was lost with them). A candidate may
        /// count the vouching grants of such a majority in place of this voter's, where it
        /// alone is a voter set (see `Raft::tally_votes`). `None` otherwise.
        witnesses: Option<std::collections::BTreeSet<NodeId>>,
    },
    /// AppendEntries: replicates entries and serves as heartbeat.
    AppendEntries {
        /// The entry just before `entries`, which the receiver must have.
        prev_log_id: LogId,
        /// Entries to store; empty for a heartbeat.
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: Index,
        /// The leader's heartbeat round (for ReadIndex and leases), echoed in the answer; 0
        /// when the message is not part of a round.
        read_seq: u64,
    },
    /// The answer to [`Payload::AppendEntries`].
    AppendEntriesResponse {
        /// Success or the rejection with its back-off hint.
        result: AppendResult,
        /// The `read_seq` of the request answered.
        read_seq: u64,
    },
    /// One chunk of the leader's snapshot, for a follower that needs entries the leader has
    /// compacted. Chunks are sent in order, one at a time.
    InstallSnapshot {
        /// What the whole snapshot covers.
        meta: SnapshotMeta,
        /// Byte offset of `data` in the snapshot.
        offset: u64,
        /// The chunk (at most `snapshot_chunk_bytes`).
        data: Bytes,
        /// Whether this is the last chunk.
        done: bool,
    },
    /// The answer to [`Payload::InstallSnapshot`].
    InstallSnapshotResponse {
        /// The snapshot this answers (its last included entry).
        snapshot: LogId,
        /// The offset the follower expects next (resumes an interrupted transfer).
        next_offset: u64,
        /// The follower holds the snapshot (installed now or covered by its commit index); the
        /// leader continues with entries after it.
        done: bool,
    },
    /// Sent by a leader handing over leadership: the receiver starts an election at once.
    TimeoutNow,
    /// A follower asks the leader for a read index (ReadIndex on a follower).
    ReadIndexRequest {
        /// The follower's id for the read.
        id: ReadId,
    },
    /// The leader's answer to [`Payload::ReadIndexRequest`], after it confirmed its
    /// leadership with a quorum.
    ReadIndexResponse {
        /// The id from the request.
        id: ReadId,
        /// The index the follower must have applied before reading, or why there is none.
        result: Result<Index, ForwardRejection>,
    },
    /// A proposal made on a follower, forwarded to the leader (auto-forward).
    ForwardProposal {
        /// The id the originating node gave the proposal.
        id: ProposalId,
        /// The command.
        command: Bytes,
    },
    /// The leader's answer to [`Payload::ForwardProposal`].
    ForwardProposalResponse {
        /// The id from the request.
        id: ProposalId,
        /// Where the leader appended the command, or why it did not.
        result: Result<LogId, ForwardRejection>,
    },
}

/// The outcome of an AppendEntries on the follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to `match_index`, and that prefix is durable.
    Success {
        /// The last index known to match the leader's log.
        match_index: Index,
    },
    /// The consistency check failed at `rejected_prev_index`.
    Reject {
        /// The `prev_log_id.index` of the rejected request.
        rejected_prev_index: Index,
        /// Where the leader should try next.
        hint: ConflictHint,
    },
}

/// The follower's hint for fast back-off after a rejected AppendEntries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictHint {
    /// The term of the follower's entry at the rejected index, if it has one there.
    pub conflict_term: Option<Term>,
    /// With `conflict_term`: the first index of that term in the follower's log.
    /// Without: the follower's last log index.
    pub index: Index,
}

/// Why a forwarded proposal was not appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRejection {
    /// The receiver is not the leader; it may know who is.
    NotLeader {
        /// The leader the receiver knows of.
        leader_hint: Option<NodeId>,
    },
    /// The leader has too many proposals in flight.
    Busy,
}

impl Message {
    /// A short name of the message's kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match &self.payload {
            Payload::RequestVote { pre_vote: true, .. } => "pre_vote",
            Payload::RequestVote { pre_vote: false, .. } => "request_vote",
            Payload::RequestVoteResponse { pre_vote: true, .. } => "pre_vote_response",
            Payload::RequestVoteResponse { pre_vote: false, .. } => "request_vote_response",
            Payload::AppendEntries { .. } => "append_entries",
            Payload::AppendEntriesResponse { .. } => "append_entries_response",
            Payload::InstallSnapshot { .. } => "install_snapshot",
            Payload::InstallSnapshotResponse { .. } => "install_snapshot_response",
            Payload::TimeoutNow => "timeout_now",
            Payload::ReadIndexRequest { .. } => "read_index_request",
            Payload::ReadIndexResponse { .. } => "read_index_response",
            Payload::ForwardProposal { .. } => "forward_proposal",
            Payload::ForwardProposalResponse { .. } => "forward_proposal_response",
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::types::EntryPayload;

    fn payload() -> impl Strategy<Value = Payload> {
        let entry = (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
            |(term, index, bytes)| Entry { term, index, payload: EntryPayload::Command(Bytes::from(bytes)) },
        );
        prop_oneof![
            (any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(pre_vote, t, i, lt)| {
                Payload::RequestVote { pre_vote, last_log_id: LogId::new(t, i), leadership_transfer: lt }
            }),
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(proptest::collection::btree_set(any::<u64>(), 0..8))
            )
                .prop_map(|(pre_vote, granted, vouches, witnesses)| {
                    Payload::RequestVoteResponse { pre_vote, granted, vouches, witnesses }
                }),
            (any::<u64>(), any::<u64>(), proptest::collection::vec(entry, 0..8), any::<u64>(), any::<u64>())
                .prop_map(|(t, i, entries, leader_commit, read_seq)| Payload::AppendEntries {
                    prev_log_id: LogId::new(t, i),
                    entries,
                    leader_commit,
                    read_seq,
                }),
            (any::<u64>(), proptest::option::of(any::<u64>()), any::<u64>(), any::<u64>()).prop_map(
                |(r, t, i, read_seq)| Payload::AppendEntriesResponse {
                    result: AppendResult::Reject {
                        rejected_prev_index: r,
                        hint: ConflictHint { conflict_term: t, index: i },
                    },
                    read_seq,
                }
            ),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<bool>(),
                proptest::collection::btree_set(any::<u64>(), 0..5)
            )
                .prop_map(|(t, offset, data, done, voters)| Payload::InstallSnapshot {
                    meta: SnapshotMeta {
                        last_log_id: LogId::new(t, offset),
                        membership: crate::membership::Membership { voters, ..Default::default() },
                    },
                    offset,
                    data: Bytes::from(data),
                    done,
                }),
            Just(Payload::TimeoutNow),
            (any::<u64>(), any::<u64>()).prop_map(|(id, i)| Payload::ReadIndexResponse { id, result: Ok(i) }),
        ]
    }

    proptest! {
        /// Every message survives a postcard round trip unchanged.
        #[test]
        fn postcard_round_trip(from in any::<u64>(), to in any::<u64>(), term in any::<u64>(), payload in payload()) {
            let m = Message { from, to, term, payload };
            let bytes = postcard::to_stdvec(&m).expect("encode");
            let back: Message = postcard::from_bytes(&bytes).expect("decode");
            prop_assert_eq!(back, m);
        }

        /// Decoding random bytes returns an error or a message; it never panics.
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = postcard::from_bytes::<Message>(&bytes);
        }
    }
}
