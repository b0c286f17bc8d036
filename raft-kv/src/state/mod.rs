//! The replicated state and its deterministic transitions: the key-value map, the service
//! registry, the member address book and the client session table, with an incrementally
//! maintained state hash and the snapshot format.
//!
//! Everything here is a pure function of the applied entries (and the apply-affecting limits,
//! which must be equal on every replica): no clock, no randomness, no iteration over unordered
//! collections.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;
use raft_core::{Entry, EntryPayload, FsmError, Index};

use crate::command::{Command, Expected, KeyValue, Op, Response};
use crate::error::InvalidCommand;
use crate::hash::StableHasher;
use crate::service::{MemberAddress, Service, MAX_MEMBER_ADDRESSES};
use crate::watch::{Change, ChangeEvent};

/// The first byte of every snapshot this build writes.
pub(crate) const SNAPSHOT_FORMAT_VERSION: u8 = 2;

/// Hash domains: one per kind of item, so equal fields of different kinds hash apart.
const DOMAIN_KEY_VALUE: u8 = 1;
const DOMAIN_SERVICE: u8 = 2;
const DOMAIN_MEMBER: u8 = 3;
const DOMAIN_SESSION: u8 = 4;
const DOMAIN_STATE: u8 = 5;

/// The limits that change what applying does. They must be equal on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_sessions: usize,
    pub(crate) max_keys: usize,
    pub(crate) max_services: usize,
    /// The quota of the key-value state (the byte lengths of every key and value).
    pub(crate) max_state_bytes: u64,
    /// Most bytes of cached responses the session table keeps (least recently used sessions
    /// are evicted past it): a cached response may hold a whole value.
    pub(crate) max_session_bytes: u64,
}

/// The key-value map. A record sits behind an `Arc`: when a snapshot's view shares a node that
/// a write changes, the node's copy then copies pointers, not the values of its other keys
/// (measured with `imbl` 7 and 1 KiB values: about 1.6-2.1 KB held per write while a view is
/// held, against 7.6-9.1 KB with the records inline), and a key costs the same either way.
type KeyMap = OrdMap<String, Arc<Record>>;

/// A key's value and bookkeeping, with the item's hash.
#[derive(Debug, Clone)]
struct Record {
    value: String,
    version: u64,
    create_index: Index,
    mod_index: Index,
    hash: u64,
}

impl Record {
    fn new(key: &str, value: String, version: u64, create_index: Index, mod_index: Index) -> Self {
        let hash = StableHasher::new(DOMAIN_KEY_VALUE)
            .str(key)
            .str(&value)
            .u64(version)
            .u64(create_index)
            .u64(mod_index)
            .finish();
        Self { value, version, create_index, mod_index, hash }
    }

    fn to_key_value(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value.clone(),
            version: self.version,
            create_index: self.create_index,
            mod_index: self.mod_index,
        }
    }
}

/// An item with its hash.
#[derive(Debug, Clone)]
struct Hashed<T> {
    item: T,
    hash: u64,
}

impl Hashed<Service> {
    fn service(item: Service) -> Self {
        let mut h = StableHasher::new(DOMAIN_SERVICE);
        h.str(&item.name).str(&item.kind).u64(item.nodes.len() as u64);
        for n in &item.nodes {
            h.str(&n.id).str(&n.address).u64(u64::from(n.priority)).bool(n.down);
            h.u64(n.attributes.len() as u64);
            for (k, v) in &n.attributes {
                h.str(k).str(v);
            }
        }
        Self { hash: h.finish(), item }
    }
}

impl Hashed<MemberAddress> {
    fn member(item: MemberAddress) -> Self {
        let hash = StableHasher::new(DOMAIN_MEMBER)
            .u64(item.id)
            .str(&item.raft_addr)
            .str(&item.client_addr)
            .finish();
        Self { item, hash }
    }
}

/// A client's session: its last applied write and the response to it.
#[derive(Debug, Clone)]
struct SessionRecord {
    last_seq: u64,
    /// The log index of the client's latest sessioned command (applied or answered from cache):
    /// the least recently used session is evicted first.
    last_index: Index,
    response: Response,
    hash: u64,
    /// The encoded response's size.
    bytes: u64,
}

impl SessionRecord {
    fn new(client_id: u64, last_seq: u64, last_index: Index, response: Response) -> Self {
        let encoded = response.encode();
        let hash = StableHasher::new(DOMAIN_SESSION)
            .u64(client_id)
            .u64(last_seq)
            .u64(last_index)
            .bytes(&encoded)
            .finish();
        Self { last_seq, last_index, response, hash, bytes: encoded.len() as u64 }
    }
}

/// The replicated state. The maps are persistent (structurally shared), so that a view for a
/// snapshot is taken in O(1) and the state goes on changing beside it (a change copies only
/// the tree nodes on its path that the view still shares).
#[derive(Debug, Clone)]
pub(crate) struct State {
    applied_index: Index,
    kv: KeyMap,
    services: OrdMap<String, Hashed<Service>>,
    members: OrdMap<u64, Hashed<MemberAddress>>,
    sessions: OrdMap<u64, SessionRecord>,
    /// `(last_index, client_id)` of every session, least recently used first.
    sessions_by_use: BTreeSet<(Index, u64)>,
    /// The wrapping sum of every item's hash (order-independent, updated per change).
    items_hash: u64,
    /// The sum of the byte lengths of every key and value.
    kv_bytes: u64,
    /// The quota's alarm: raised by a write refused for the quota, cleared once `kv_bytes` is
    /// below 90 % of it. While it is on, no write may grow the state.
    no_space: bool,
    /// The sum of the sessions' encoded response sizes.
    session_bytes: u64,
    limits: Limits,
}

/// Counts of what the state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) keys: usize,
    pub(crate) services: usize,
    pub(crate) members: usize,
    pub(crate) sessions: usize,
    /// The sum of the byte lengths of every key and value.
    pub(crate) kv_bytes: u64,
}

type Outcome = (Response, Option<Change>);

impl State {
    /// The empty state (nothing applied).
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            applied_index: 0,
            kv: OrdMap::new(),
            services: OrdMap::new(),
            members: OrdMap::new(),
            sessions: OrdMap::new(),
            sessions_by_use: BTreeSet::new(),
            items_hash: 0,
            kv_bytes: 0,
            no_space: false,
            session_bytes: 0,
            limits,
        }
    }

    /// Whether the quota's alarm is on.
    pub(crate) fn no_space(&self) -> bool {
        self.no_space
    }

    /// Whether the state is below 90 % of its quota, where the alarm clears.
    fn below_alarm_level(&self) -> bool {
        u128::from(self.kv_bytes) * 10 < u128::from(self.limits.max_state_bytes) * 9
    }

    /// Clears the quota's alarm once the state is below 90 % of the quota.
    fn check_alarm_clears(&mut self) {
        if self.no_space && self.below_alarm_level() {
            self.no_space = false;
        }
    }

    pub(crate) fn applied_index(&self) -> Index {
        self.applied_index
    }

    /// A stable hash of the whole state at the applied index. O(1).
    pub(crate) fn state_hash(&self) -> u64 {
        let mut h = StableHasher::new(DOMAIN_STATE);
        h.u64(self.applied_index).u64(self.items_hash);
        if self.no_space {
            // Only when on: hashes of states without the alarm are those of earlier versions.
            h.bool(true);
        }
        h.finish()
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            keys: self.kv.len(),
            services: self.services.len(),
            members: self.members.len(),
            sessions: self.sessions.len(),
            kv_bytes: self.kv_bytes,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<KeyValue> {
        self.kv.get(key).map(|r| r.to_key_value(key))
    }

    /// Up to `limit` pairs whose key starts with `prefix`, in key order, after `start_after`
    /// when given, ending before the pair that would take the keys and values listed past
    /// `max_bytes` as JSON strings ([`json_len`]; the first pair is always listed).
    pub(crate) fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Vec<KeyValue> {
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for (k, r) in self.matching(prefix, start_after).take(limit) {
            bytes = bytes.saturating_add(json_len(k).saturating_add(json_len(&r.value)));
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(r.to_key_value(k));
        }
        out
    }

    /// Whether a key starting with `prefix` follows `after`.
    pub(crate) fn has_after(&self, prefix: &str, after: &str) -> bool {
        self.matching(prefix, Some(after)).next().is_some()
    }

    /// The pairs whose key starts with `prefix`, in key order, after `start_after` when given.
    fn matching<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a Record)> + 'a {
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.kv
            .range::<_, str>((lower, Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, r)| (k, r.as_ref()))
    }

    pub(crate) fn services(&self) -> Vec<Service> {
        self.services.values().map(|s| s.item.clone()).collect()
    }

    pub(crate) fn service(&self, name: &str) -> Option<Service> {
        self.services.get(name).map(|s| s.item.clone())
    }

    pub(crate) fn service_ref(&self, name: &str) -> Option<&Service> {
        self.services.get(name).map(|s| &s.item)
    }

    pub(crate) fn members(&self) -> Vec<MemberAddress> {
        self.members.values().map(|m| m.item.clone()).collect()
    }

    /// Applies the next entry: its encoded response (empty for blank and membership entries)
    /// and the change it made, if any. Fails, changing nothing, unless `entry.index` is the
    /// next index (entries are applied in order, each once).
    pub(crate) fn apply(&mut self, entry: &Entry) -> Result<(Bytes, Option<ChangeEvent>), FsmError> {
        if Some(entry.index) != self.applied_index.checked_add(1) {
            return Err(FsmError::Failed(format!(
                "entry {} applied after entry {}: entries must be applied in order, each once",
                entry.index, self.applied_index
            )));
        }
        let index = entry.index;
        let (bytes, change) = match &entry.payload {
            EntryPayload::Blank | EntryPayload::Membership(_) => (Bytes::new(), None),
            EntryPayload::Command(bytes) => {
                let (response, change) = match Command::decode(bytes) {
                    Ok(command) => self.apply_command(index, command),
                    Err(e) => (Response::Rejected(e.to_string()), None),
                };
                (response.encode(), change)
            }
        };
        self.applied_index = index;
        Ok((bytes, change.map(|change| ChangeEvent { index, change })))
    }

    /// Applies a command through its session, if it has one.
    fn apply_command(&mut self, index: Index, command: Command) -> Outcome {
        let Some(session) = command.session else { return self.apply_op(index, command.op) };
        let client_id = session.client_id;
        if session.seq == 0 {
            return (Response::Rejected(InvalidCommand::ZeroSeq.to_string()), None);
        }
        match self.sessions.get(&client_id) {
            Some(s) if session.seq < s.last_seq => {
                return (Response::StaleSequence { last_seq: s.last_seq }, None);
            }
            Some(s) if session.seq == s.last_seq => {
                let response = s.response.clone();
                self.record_session(client_id, session.seq, index, response.clone());
                self.bound_session_bytes(client_id);
                return (response, None);
            }
            Some(_) => {}
            None if session.seq != 1 => return (Response::SessionExpired { client_id }, None),
            None => self.make_room_for_a_session(),
        }
        let (response, change) = self.apply_op(index, command.op);
        self.record_session(client_id, session.seq, index, response.clone());
        self.bound_session_bytes(client_id);
        (response, change)
    }

    /// Evicts least recently used sessions until one more fits.
    fn make_room_for_a_session(&mut self) {
        while self.sessions.len() >= self.limits.max_sessions {
            if !self.evict_least_recently_used(None) {
                break;
            }
        }
    }

    /// Evicts the least recently used session but `keep`'s; `false` when there is none.
    fn evict_least_recently_used(&mut self, keep: Option<u64>) -> bool {
        let Some(&(at, client_id)) = self.sessions_by_use.iter().find(|(_, c)| Some(*c) != keep) else {
            return false;
        };
        self.sessions_by_use.remove(&(at, client_id));
        if let Some(old) = self.sessions.remove(&client_id) {
            self.items_hash = self.items_hash.wrapping_sub(old.hash);
            self.session_bytes = self.session_bytes.saturating_sub(old.bytes);
        }
        true
    }

    /// Sets a client's session (creating or replacing it).
    fn record_session(&mut self, client_id: u64, seq: u64, index: Index, response: Response) {
        let record = SessionRecord::new(client_id, seq, index, response);
        self.items_hash = self.items_hash.wrapping_add(record.hash);
        self.session_bytes = self.session_bytes.saturating_add(record.bytes);
        if let Some(old) = self.sessions.insert(client_id, record) {
            self.items_hash = self.items_hash.wrapping_sub(old.hash);
            self.session_bytes = self.session_bytes.saturating_sub(old.bytes);
            self.sessions_by_use.remove(&(old.last_index, client_id));
        }
        self.sessions_by_use.insert((index, client_id));
    }

    /// Evicts least recently used sessions (but `client_id`'s, just recorded) while the cached
    /// responses take more than `max_session_bytes`.
    fn bound_session_bytes(&mut self, client_id: u64) {
        while self.session_bytes > self.limits.max_session_bytes {
            if !self.evict_least_recently_used(Some(client_id)) {
                break;
            }
        }
    }

    /// Applies an operation (validated first).
    fn apply_op(&mut self, index: Index, op: Op) -> Outcome {
        if let Err(e) = op.validate() {
            return (Response::Rejected(e.to_string()), None);
        }
        match op {
            Op::Put { key, value } => self.put(index, key, value),
            Op::Delete { key } => self.delete(&key),
            Op::Cas { key, expected, value } => {
                let current = self.kv.get(&key);
                let holds = match (&expected, current) {
                    (Expected::Version(0) | Expected::Value(None), current) => current.is_none(),
                    (Expected::Version(v), Some(r)) => r.version == *v,
                    (Expected::Value(Some(v)), Some(r)) => r.value == *v,
                    (Expected::Version(_) | Expected::Value(Some(_)), None) => false,
                };
                if !holds {
                    return (Response::CasFailed { current: self.get(&key) }, None);
                }
                match value {
                    Some(value) => self.put(index, key, value),
                    None => self.delete(&key),
                }
            }
            Op::RegisterService(service) => self.register_service(service),
            Op::RemoveService { name } => match self.services.remove(&name) {
                Some(old) => {
                    self.items_hash = self.items_hash.wrapping_sub(old.hash);
                    (Response::Ok, Some(Change::ServiceRemoved { name }))
                }
                None => (Response::NotFound, None),
            },
            Op::SetServiceNodeDown { service, node, down } => self.set_node_down(service, node, down),
            Op::SetMemberAddress { id, raft_addr, client_addr } => {
                self.set_member(MemberAddress { id, raft_addr, client_addr })
            }
            Op::RemoveMemberAddress { id } => match self.members.remove(&id) {
                Some(old) => {
                    self.items_hash = self.items_hash.wrapping_sub(old.hash);
                    (Response::Ok, Some(Change::MemberAddressRemoved { id }))
                }
                None => (Response::NotFound, None),
            },
        }
    }

    fn put(&mut self, index: Index, key: String, value: String) -> Outcome {
        let old_bytes = self.kv.get(&key).map_or(0, |r| (key.len() + r.value.len()) as u64);
        let new_bytes = (key.len() + value.len()) as u64;
        if new_bytes > old_bytes {
            let after = self.kv_bytes.saturating_add(new_bytes - old_bytes);
            if self.no_space || after > self.limits.max_state_bytes {
                // The alarm goes on only for a state that is nearly full: one oversized write
                // into a roomy state is refused alone (else nothing could clear the alarm).
                self.no_space = self.no_space || !self.below_alarm_level();
                let refused = Response::NoSpace {
                    quota_bytes: self.limits.max_state_bytes,
                    state_bytes: self.kv_bytes,
                };
                return (refused, None);
            }
        }
        let (version, create_index) = match self.kv.get(&key) {
            Some(r) => (r.version.saturating_add(1), r.create_index),
            None if self.kv.len() >= self.limits.max_keys => {
                let reason = format!("the store holds the maximum of {} keys", self.limits.max_keys);
                return (Response::Rejected(reason), None);
            }
            None => (1, index),
        };
        let record = Record::new(&key, value, version, create_index, index);
        let current = record.to_key_value(&key);
        self.items_hash = self.items_hash.wrapping_add(record.hash);
        self.kv_bytes += (key.len() + record.value.len()) as u64;
        let prev = self.kv.insert(key, Arc::new(record)).map(|old| {
            self.items_hash = self.items_hash.wrapping_sub(old.hash);
            self.kv_bytes -= (current.key.len() + old.value.len()) as u64;
            // The value moves out unless a snapshot's view still holds the record.
            let old = Arc::unwrap_or_clone(old);
            // The key and create_index are the same before and after an update.
            KeyValue { value: old.value, version: old.version, mod_index: old.mod_index, ..current.clone() }
        });
        self.check_alarm_clears();
        (Response::Put { version, prev }, Some(Change::Put(current)))
    }

    fn delete(&mut self, key: &str) -> Outcome {
        match self.kv.remove(key) {
            Some(old) => {
                self.items_hash = self.items_hash.wrapping_sub(old.hash);
                self.kv_bytes -= (key.len() + old.value.len()) as u64;
                self.check_alarm_clears();
                let prev = old.to_key_value(key);
                (Response::Deleted { prev: Some(prev.clone()) }, Some(Change::Delete(prev)))
            }
            None => (Response::Deleted { prev: None }, None),
        }
    }

    fn register_service(&mut self, service: Service) -> Outcome {
        let exists = self.services.contains_key(&service.name);
        if !exists && self.services.len() >= self.limits.max_services {
            let reason = format!("the registry holds the maximum of {} services", self.limits.max_services);
            return (Response::Rejected(reason), None);
        }
        let record = Hashed::service(service.clone());
        self.items_hash = self.items_hash.wrapping_add(record.hash);
        let name = service.name.clone();
        if let Some(old) = self.services.insert(name.clone(), record) {
            self.items_hash = self.items_hash.wrapping_sub(old.hash);
        }
        (Response::ServiceRegistered { name, replaced: exists }, Some(Change::ServiceRegistered(service)))
    }

    fn set_node_down(&mut self, service: String, node: String, down: bool) -> Outcome {
        let Some(record) = self.services.get(&service) else { return (Response::NotFound, None) };
        let Some(position) = record.item.nodes.iter().position(|n| n.id == node) else {
            return (Response::NotFound, None);
        };
        if record.item.nodes[position].down == down {
            return (Response::Ok, None);
        }
        let mut item = record.item.clone();
        item.nodes[position].down = down;
        let updated = Hashed::service(item);
        self.items_hash = self.items_hash.wrapping_add(updated.hash);
        if let Some(old) = self.services.insert(service.clone(), updated) {
            self.items_hash = self.items_hash.wrapping_sub(old.hash);
        }
        (Response::Ok, Some(Change::ServiceNodeDown { service, node, down }))
    }

    fn set_member(&mut self, member: MemberAddress) -> Outcome {
        match self.members.get(&member.id) {
            Some(old) if old.item == member => return (Response::Ok, None),
            Some(_) => {}
            None if self.members.len() >= MAX_MEMBER_ADDRESSES => {
                let reason = format!("the address book holds the maximum of {MAX_MEMBER_ADDRESSES} members");
                return (Response::Rejected(reason), None);
            }
            None => {}
        }
        let record = Hashed::member(member.clone());
        self.items_hash = self.items_hash.wrapping_add(record.hash);
        if let Some(old) = self.members.insert(member.id, record) {
            self.items_hash = self.items_hash.wrapping_sub(old.hash);
        }
        (Response::Ok, Some(Change::MemberAddressSet(member)))
    }
}

/// The bytes of `s` inside a JSON string: a control character is escaped in up to six bytes,
/// a quote or backslash in two (so a list page bounded by it is bounded as sent).
pub(crate) fn json_len(s: &str) -> usize {
    s.bytes().fold(0usize, |n, b| {
        n.saturating_add(match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
    })
}

mod snapshot;

#[cfg(test)]
mod tests;
