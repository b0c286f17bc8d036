//! Commands (what clients propose) and responses (what applying them returns), with their
//! postcard encoding and validation.
//!
//! Postcard encodes enum variants by position and struct fields in order: these types are part
//! of the replicated log and of snapshots, so a new variant goes at the end of its enum, and
//! no field or variant is reordered or removed.

use bytes::Bytes;
use raft_core::Index;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{InvalidCommand, KvError};
use crate::service::{check_text, MemberAddress, Service};

/// Most bytes in a key.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Most bytes in a value.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// A proposed change: an operation, optionally in a client session that makes retries of it
/// apply once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The client session and sequence number, for exactly-once writes (see [`Session`]).
    pub session: Option<Session>,
    /// What to change.
    pub op: Op,
}

/// A client's session position, for exactly-once writes (Raft dissertation §6.3).
///
/// A client picks a `client_id` that no other client uses (e.g. random) and numbers its writes
/// `seq = 1, 2, 3...`, with **one write outstanding at a time**; a retry of a write reuses its
/// `seq`. The state machine keeps, per client, the last applied `seq` and its response:
/// - `seq` equal to the last one: the cached response is returned, nothing is applied again;
/// - `seq` below it: [`Response::StaleSequence`], nothing applied;
/// - `seq` above it: applied, and becomes the last one (gaps are allowed);
/// - an unknown client: applied only when `seq == 1`. Otherwise the client's session was
///   evicted (the table keeps at most `max_sessions` clients, dropping the least recently used)
///   and a retry could apply twice, so [`Response::SessionExpired`] is returned and nothing is
///   applied; the client starts a new session (new `client_id`, `seq` 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    /// The client's id.
    pub client_id: u64,
    /// The write's sequence number, from 1.
    pub seq: u64,
}

/// An operation on the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Sets `key` to `value` (creating it, or replacing its value and bumping its version).
    Put {
        /// Non-empty, at most [`MAX_KEY_BYTES`].
        key: String,
        /// At most [`MAX_VALUE_BYTES`].
        value: String,
    },
    /// Removes `key` (answered [`Response::Deleted`] with `prev: None` when it did not exist).
    Delete {
        /// The key.
        key: String,
    },
    /// Compare-and-swap: when `key` matches `expected`, sets it to `value`, or deletes it when
    /// `value` is `None` (compare-and-delete); otherwise answers [`Response::CasFailed`].
    Cas {
        /// The key.
        key: String,
        /// The condition.
        expected: Expected,
        /// The new value, or `None` to delete.
        value: Option<String>,
    },
    /// Registers a service, replacing one of the same name.
    RegisterService(Service),
    /// Removes a service (answered [`Response::NotFound`] when there is none).
    RemoveService {
        /// The service's name.
        name: String,
    },
    /// Marks a node of a service down (never picked) or up again.
    SetServiceNodeDown {
        /// The service's name.
        service: String,
        /// The node's id.
        node: String,
        /// Down (`true`) or up (`false`).
        down: bool,
    },
    /// Records where member `id` listens (creating or replacing its entry).
    SetMemberAddress {
        /// The Raft node id.
        id: u64,
        /// The address peers connect to.
        raft_addr: String,
        /// The address clients connect to.
        client_addr: String,
    },
    /// Removes member `id` from the address book (answered [`Response::NotFound`] when absent).
    RemoveMemberAddress {
        /// The Raft node id.
        id: u64,
    },
}

/// The condition of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key's version must be this one; `Version(0)` means the key must not exist
    /// (create-if-absent).
    Version(u64),
    /// The key's value must be this one; `Value(None)` means the key must not exist.
    Value(Option<String>),
}

/// A key with its value and bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// 1 when created, +1 on every change; a deleted and re-created key starts again at 1.
    pub version: u64,
    /// The log index of the write that created the key.
    pub create_index: Index,
    /// The log index of the latest write to the key.
    pub mod_index: Index,
}

/// What applying one command answered (encoded in [`Applied::response`](raft_core::Applied)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A `Put` or a successful `Cas` with a value: the key's new version (its `mod_index` is
    /// the entry's index) and the pair it replaced, if any.
    Put {
        /// The key's new version.
        version: u64,
        /// The pair before this write.
        prev: Option<KeyValue>,
    },
    /// A `Delete` or a successful compare-and-delete: the pair removed (`None` when the key did
    /// not exist: nothing changed).
    Deleted {
        /// The pair removed.
        prev: Option<KeyValue>,
    },
    /// The `Cas` condition did not hold; nothing changed.
    CasFailed {
        /// The pair as it is (`None`: the key does not exist).
        current: Option<KeyValue>,
    },
    /// The service was registered.
    ServiceRegistered {
        /// Its name.
        name: String,
        /// Whether it replaced a service of that name.
        replaced: bool,
    },
    /// Done (service removed, node marked, address set or removed).
    Ok,
    /// The service, service node or member address does not exist; nothing changed.
    NotFound,
    /// The session's `seq` is older than the last one applied for the client; nothing applied.
    StaleSequence {
        /// The client's last applied `seq`.
        last_seq: u64,
    },
    /// The client is not in the session table and `seq > 1` (see [`Session`]); nothing applied.
    SessionExpired {
        /// The client.
        client_id: u64,
    },
    /// The command was invalid (undecodable, breaks a rule, or a limit of the store was
    /// reached); nothing changed. The text says why.
    Rejected(String),
    /// The write would grow the key-value state past its quota, or the quota's alarm is on
    /// (raised by such a write into a state at 90 % of the quota or more, cleared once the
    /// state is below 90 %); nothing changed. Deletes and writes that do not grow the state
    /// are still applied.
    NoSpace {
        /// The quota, in bytes of keys and values.
        quota_bytes: u64,
        /// The state's size when the write was refused.
        state_bytes: u64,
    },
}

impl Command {
    /// A command outside any session.
    pub fn new(op: Op) -> Self {
        Self { session: None, op }
    }

    /// A command in session `client_id` with sequence number `seq`.
    pub fn in_session(client_id: u64, seq: u64, op: Op) -> Self {
        Self { session: Some(Session { client_id, seq }), op }
    }

    /// The postcard encoding, to pass to `RaftNode::propose`.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// Decodes [`encode`](Self::encode)'s output; any other bytes (including trailing bytes)
    /// are an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, KvError> {
        decode(bytes, "command")
    }

    /// Checks the command against the data model's rules (also checked when applied).
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        if self.session.is_some_and(|s| s.seq == 0) {
            return Err(InvalidCommand::ZeroSeq);
        }
        self.op.validate()
    }
}

impl From<Op> for Command {
    fn from(op: Op) -> Self {
        Command::new(op)
    }
}

impl Op {
    /// Checks the operation against the data model's rules.
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        match self {
            Op::Put { key, value } => {
                check_key(key)?;
                check_value(value)
            }
            Op::Delete { key } => check_key(key),
            Op::Cas { key, expected, value } => {
                check_key(key)?;
                if let Expected::Value(Some(v)) = expected {
                    check_value(v)?;
                }
                value.as_deref().map_or(Ok(()), check_value)
            }
            Op::RegisterService(service) => service.validate(),
            Op::RemoveService { name } => check_text("service name", name, crate::MAX_NAME_BYTES, false),
            Op::SetServiceNodeDown { service, node, .. } => {
                check_text("service name", service, crate::MAX_NAME_BYTES, false)?;
                check_text("service node id", node, crate::MAX_NAME_BYTES, false)
            }
            Op::SetMemberAddress { id, raft_addr, client_addr } => {
                MemberAddress { id: *id, raft_addr: raft_addr.clone(), client_addr: client_addr.clone() }
                    .validate()
            }
            Op::RemoveMemberAddress { .. } => Ok(()),
        }
    }
}

impl Response {
    /// The postcard encoding (what the state machine returns per entry).
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// Decodes the response bytes of `Applied::response`. Fails on anything else, including
    /// the empty response of a blank or membership entry.
    pub fn decode(bytes: &[u8]) -> Result<Self, KvError> {
        decode(bytes, "response")
    }
}

pub(crate) fn check_key(key: &str) -> Result<(), InvalidCommand> {
    check_text("key", key, MAX_KEY_BYTES, false)
}

pub(crate) fn check_value(value: &str) -> Result<(), InvalidCommand> {
    check_text("value", value, MAX_VALUE_BYTES, true)
}

/// Postcard-encodes a value of this crate's types.
pub(crate) fn encode<T: Serialize>(value: &T) -> Bytes {
    // Postcard fails only on sequences of unknown length and on a full fixed buffer; this
    // crate's types have neither (Vec, String and BTreeMap know their lengths).
    Bytes::from(postcard::to_allocvec(value).expect("postcard encodes this crate's types"))
}

/// Decodes exactly one postcard value, refusing trailing bytes.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, KvError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| KvError::Decode { what, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(KvError::Decode { what, reason: format!("{} trailing bytes", rest.len()) });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put { key: key.into(), value: value.into() }
    }

    #[test]
    fn command_and_response_round_trip() {
        let cmds = [
            Command::new(put("a", "1")),
            Command::in_session(
                7,
                3,
                Op::Cas { key: "k".into(), expected: Expected::Value(None), value: Some("v".into()) },
            ),
            Command::new(Op::SetMemberAddress { id: 4, raft_addr: "r:1".into(), client_addr: "c:2".into() }),
        ];
        for c in cmds {
            assert_eq!(Command::decode(&c.encode()), Ok(c));
        }
        let r = Response::Put {
            version: 2,
            prev: Some(KeyValue {
                key: "a".into(),
                value: "0".into(),
                version: 1,
                create_index: 3,
                mod_index: 3,
            }),
        };
        assert_eq!(Response::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn decode_refuses_garbage_truncation_trailing_bytes_and_empty_input() {
        let bytes = Command::new(put("key", "value")).encode();
        assert!(Command::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(Command::decode(&longer), Err(KvError::Decode { what: "command", .. })));
        assert!(Command::decode(&[0xff; 16]).is_err());
        assert!(Response::decode(&[]).is_err());
    }

    #[test]
    fn validation_covers_keys_values_sessions_and_addresses() {
        assert_eq!(Command::new(put("k", "")).validate(), Ok(()));
        assert_eq!(Command::new(put("", "v")).validate(), Err(InvalidCommand::Empty { what: "key" }));
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(Command::new(put(&long_key, "v")).validate(), Err(InvalidCommand::TooLong { .. })));
        let long_value = "v".repeat(MAX_VALUE_BYTES + 1);
        assert!(matches!(
            Command::new(Op::Cas {
                key: "k".into(),
                expected: Expected::Version(0),
                value: Some(long_value)
            })
            .validate(),
            Err(InvalidCommand::TooLong { what: "value", .. })
        ));
        assert_eq!(Command::in_session(1, 0, put("k", "v")).validate(), Err(InvalidCommand::ZeroSeq));
        let bad_addr = Op::SetMemberAddress { id: 1, raft_addr: String::new(), client_addr: "c".into() };
        assert!(Command::new(bad_addr).validate().is_err());
        assert!(Command::new(Op::RemoveService { name: String::new() }).validate().is_err());
    }
}
