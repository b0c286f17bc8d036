//! The state machine's transitions, one response path at a time, plus sessions, hashing and
//! snapshots.

use raft_core::Membership;

use serde::Serialize;

use super::*;
use crate::error::SnapshotError;
use crate::service::tests::{node, service};

const LIMITS: Limits = Limits {
    max_sessions: 3,
    max_keys: 100,
    max_services: 10,
    max_state_bytes: 1 << 40,
    max_session_bytes: 1 << 40,
};

impl State {
    /// The whole snapshot in one buffer, written by the view in small chunks (so that items
    /// end mid-chunk and chunks end mid-item).
    fn snapshot(&self) -> Vec<u8> {
        use raft_core::SnapshotSource;
        let mut view = self.view();
        let mut out = Vec::new();
        while let Some(chunk) = view.next_chunk(16).expect("encodes") {
            assert!(!chunk.is_empty(), "no empty chunks");
            out.extend_from_slice(&chunk);
        }
        out
    }
}

/// Restores from `bytes` handed over in chunks of 3 bytes.
fn restore(bytes: &[u8], limits: Limits) -> Result<State, SnapshotError> {
    let data =
        raft_core::SnapshotData::from_chunks(bytes.chunks(3).map(Bytes::copy_from_slice).collect::<Vec<_>>());
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    runtime.block_on(State::restore(&mut data.reader(), limits))
}

/// Applies entries to a state, numbering them.
struct Replica {
    state: State,
}

impl Replica {
    fn new() -> Self {
        Self::with(LIMITS)
    }

    fn with(limits: Limits) -> Self {
        Self { state: State::new(limits) }
    }

    fn next(&self) -> Index {
        self.state.applied_index() + 1
    }

    fn entry(&mut self, payload: EntryPayload) -> (Bytes, Option<ChangeEvent>) {
        let entry = Entry { term: 1, index: self.next(), payload };
        self.state.apply(&entry).expect("in-order entries apply")
    }

    fn raw(&mut self, bytes: &[u8]) -> Response {
        let (bytes, _) = self.entry(EntryPayload::Command(Bytes::copy_from_slice(bytes)));
        Response::decode(&bytes).expect("a command gets a response")
    }

    fn run(&mut self, command: Command) -> (Response, Option<Change>) {
        let (bytes, event) = self.entry(EntryPayload::Command(command.encode()));
        let response = Response::decode(&bytes).expect("a command gets a response");
        if let Some(e) = &event {
            assert_eq!(e.index, self.state.applied_index(), "an event carries its entry's index");
        }
        (response, event.map(|e| e.change))
    }

    fn op(&mut self, op: Op) -> Response {
        self.run(Command::new(op)).0
    }

    fn session(&mut self, client_id: u64, seq: u64, op: Op) -> Response {
        self.run(Command::in_session(client_id, seq, op)).0
    }

    fn hash(&self) -> u64 {
        self.state.state_hash()
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into() }
}

fn cas(key: &str, expected: Expected, value: Option<&str>) -> Op {
    Op::Cas { key: key.into(), expected, value: value.map(Into::into) }
}

fn kv(key: &str, value: &str, version: u64, create_index: Index, mod_index: Index) -> KeyValue {
    KeyValue { key: key.into(), value: value.into(), version, create_index, mod_index }
}

#[test]
fn put_creates_at_version_1_and_each_update_bumps_the_version_and_mod_index() {
    let mut r = Replica::new();
    r.entry(EntryPayload::Blank);
    let (response, change) = r.run(Command::new(put("a", "1")));
    assert_eq!(response, Response::Put { version: 1, prev: None });
    assert_eq!(change, Some(Change::Put(kv("a", "1", 1, 2, 2))));
    assert_eq!(r.op(put("a", "2")), Response::Put { version: 2, prev: Some(kv("a", "1", 1, 2, 2)) });
    assert_eq!(r.op(put("a", "2")), Response::Put { version: 3, prev: Some(kv("a", "2", 2, 2, 3)) });
    assert_eq!(r.state.get("a"), Some(kv("a", "2", 3, 2, 4)));
    assert_eq!(r.state.applied_index(), 4);
}

#[test]
fn delete_returns_the_removed_pair_or_none_and_a_recreated_key_starts_over() {
    let mut r = Replica::new();
    r.op(put("a", "1"));
    r.op(put("a", "2"));
    let (response, change) = r.run(Command::new(Op::Delete { key: "a".into() }));
    assert_eq!(response, Response::Deleted { prev: Some(kv("a", "2", 2, 1, 2)) });
    assert_eq!(change, Some(Change::Delete(kv("a", "2", 2, 1, 2))));
    assert_eq!(r.state.get("a"), None);
    let (response, change) = r.run(Command::new(Op::Delete { key: "a".into() }));
    assert_eq!((response, change), (Response::Deleted { prev: None }, None));
    assert_eq!(r.op(put("a", "3")), Response::Put { version: 1, prev: None });
    assert_eq!(r.state.get("a"), Some(kv("a", "3", 1, 5, 5)));
}

#[test]
fn cas_by_version_swaps_only_on_a_match() {
    let mut r = Replica::new();
    r.op(put("k", "v1"));
    let (response, change) = r.run(Command::new(cas("k", Expected::Version(2), Some("x"))));
    assert_eq!((response, change), (Response::CasFailed { current: Some(kv("k", "v1", 1, 1, 1)) }, None));
    assert_eq!(
        r.op(cas("k", Expected::Version(1), Some("v2"))),
        Response::Put { version: 2, prev: Some(kv("k", "v1", 1, 1, 1)) }
    );
    assert_eq!(r.op(cas("missing", Expected::Version(1), Some("x"))), Response::CasFailed { current: None });
    assert_eq!(r.state.get("k"), Some(kv("k", "v2", 2, 1, 3)));
}

#[test]
fn cas_by_value_swaps_only_on_a_match() {
    let mut r = Replica::new();
    r.op(put("k", "old"));
    assert_eq!(
        r.op(cas("k", Expected::Value(Some("other".into())), Some("new"))),
        Response::CasFailed { current: Some(kv("k", "old", 1, 1, 1)) }
    );
    assert_eq!(
        r.op(cas("k", Expected::Value(Some("old".into())), Some("new"))),
        Response::Put { version: 2, prev: Some(kv("k", "old", 1, 1, 1)) }
    );
    assert_eq!(
        r.op(cas("gone", Expected::Value(Some("x".into())), Some("y"))),
        Response::CasFailed { current: None }
    );
}

#[test]
fn cas_create_if_absent_by_version_0_or_absent_value() {
    let mut r = Replica::new();
    assert_eq!(r.op(cas("a", Expected::Version(0), Some("1"))), Response::Put { version: 1, prev: None });
    assert_eq!(
        r.op(cas("a", Expected::Version(0), Some("2"))),
        Response::CasFailed { current: Some(kv("a", "1", 1, 1, 1)) }
    );
    assert_eq!(r.op(cas("b", Expected::Value(None), Some("1"))), Response::Put { version: 1, prev: None });
    assert_eq!(
        r.op(cas("b", Expected::Value(None), Some("2"))),
        Response::CasFailed { current: Some(kv("b", "1", 1, 3, 3)) }
    );
}

#[test]
fn compare_and_delete() {
    let mut r = Replica::new();
    r.op(put("a", "1"));
    assert_eq!(
        r.op(cas("a", Expected::Version(9), None)),
        Response::CasFailed { current: Some(kv("a", "1", 1, 1, 1)) }
    );
    assert!(r.state.get("a").is_some());
    let (response, change) = r.run(Command::new(cas("a", Expected::Value(Some("1".into())), None)));
    assert_eq!(response, Response::Deleted { prev: Some(kv("a", "1", 1, 1, 1)) });
    assert_eq!(change, Some(Change::Delete(kv("a", "1", 1, 1, 1))));
    assert_eq!(r.state.get("a"), None);
    // "Must not exist, then delete" holds on an absent key and changes nothing.
    let (response, change) = r.run(Command::new(cas("a", Expected::Version(0), None)));
    assert_eq!((response, change), (Response::Deleted { prev: None }, None));
}

#[test]
fn services_register_replace_mark_down_and_remove() {
    let mut r = Replica::new();
    let web = service("web", vec![node("a", 5), node("b", 1)]);
    let (response, change) = r.run(Command::new(Op::RegisterService(web.clone())));
    assert_eq!(response, Response::ServiceRegistered { name: "web".into(), replaced: false });
    assert_eq!(change, Some(Change::ServiceRegistered(web.clone())));
    let web2 = service("web", vec![node("a", 5), node("b", 1), node("c", 1)]);
    assert_eq!(
        r.op(Op::RegisterService(web2.clone())),
        Response::ServiceRegistered { name: "web".into(), replaced: true }
    );
    assert_eq!(r.state.service("web"), Some(web2));

    let down = |r: &mut Replica, service: &str, node: &str, down: bool| {
        r.run(Command::new(Op::SetServiceNodeDown { service: service.into(), node: node.into(), down }))
    };
    let (response, change) = down(&mut r, "web", "b", true);
    assert_eq!(response, Response::Ok);
    assert_eq!(change, Some(Change::ServiceNodeDown { service: "web".into(), node: "b".into(), down: true }));
    assert!(r.state.service("web").and_then(|s| s.node("b").map(|n| n.down)).unwrap_or(false));
    let hash = r.hash();
    assert_eq!(down(&mut r, "web", "b", true), (Response::Ok, None), "unchanged flag: no event");
    assert_ne!(r.hash(), hash, "the applied index moved");
    assert_eq!(down(&mut r, "web", "zz", true), (Response::NotFound, None));
    assert_eq!(down(&mut r, "nope", "b", true), (Response::NotFound, None));

    let (response, change) = r.run(Command::new(Op::RemoveService { name: "web".into() }));
    assert_eq!((response, change), (Response::Ok, Some(Change::ServiceRemoved { name: "web".into() })));
    assert_eq!(r.op(Op::RemoveService { name: "web".into() }), Response::NotFound);
    assert!(r.state.services().is_empty());
}

#[test]
fn invalid_commands_are_rejected_and_change_nothing_but_the_applied_index() {
    let mut r = Replica::new();
    let before = r.state.counts();
    let bad = [
        put("", "v"),
        Op::RegisterService(service("web", vec![node("a", 1), node("a", 1)])),
        Op::SetMemberAddress { id: 1, raft_addr: String::new(), client_addr: "c".into() },
    ];
    for op in bad {
        let (response, change) = r.run(Command::new(op));
        assert!(matches!(response, Response::Rejected(_)), "{response:?}");
        assert_eq!(change, None);
    }
    assert_eq!(r.state.counts(), before);
    assert_eq!(r.state.applied_index(), 3);
}

#[test]
fn undecodable_commands_are_rejected_and_blank_and_membership_entries_answer_empty() {
    let mut r = Replica::new();
    assert!(matches!(r.raw(&[0xff, 0xff, 0xff]), Response::Rejected(reason) if reason.contains("decode")));
    let (bytes, event) = r.entry(EntryPayload::Blank);
    assert!(bytes.is_empty() && event.is_none());
    let (bytes, event) = r.entry(EntryPayload::Membership(Box::new(Membership::with_voters([1, 2, 3]))));
    assert!(bytes.is_empty() && event.is_none());
    assert_eq!(r.state.applied_index(), 3);
}

#[test]
fn an_entry_out_of_order_is_an_error_and_changes_nothing() {
    let mut r = Replica::new();
    r.op(put("a", "1"));
    let hash = r.hash();
    for index in [1, 3, 0] {
        let entry =
            Entry { term: 1, index, payload: EntryPayload::Command(Command::new(put("b", "2")).encode()) };
        assert!(matches!(r.state.apply(&entry), Err(FsmError::Failed(_))));
    }
    assert_eq!((r.hash(), r.state.get("b")), (hash, None));
}

#[test]
fn member_addresses_set_replace_and_remove() {
    let mut r = Replica::new();
    let set =
        |id: u64, raft: &str| Op::SetMemberAddress { id, raft_addr: raft.into(), client_addr: "c:1".into() };
    let member =
        |id: u64, raft: &str| MemberAddress { id, raft_addr: raft.into(), client_addr: "c:1".into() };
    let (response, change) = r.run(Command::new(set(2, "r:2")));
    assert_eq!((response, change), (Response::Ok, Some(Change::MemberAddressSet(member(2, "r:2")))));
    assert_eq!(r.run(Command::new(set(2, "r:2"))), (Response::Ok, None), "unchanged: no event");
    r.op(set(2, "r:22"));
    r.op(set(1, "r:1"));
    assert_eq!(r.state.members(), vec![member(1, "r:1"), member(2, "r:22")]);
    let (response, change) = r.run(Command::new(Op::RemoveMemberAddress { id: 2 }));
    assert_eq!((response, change), (Response::Ok, Some(Change::MemberAddressRemoved { id: 2 })));
    assert_eq!(r.op(Op::RemoveMemberAddress { id: 2 }), Response::NotFound);
}

#[test]
fn key_and_service_limits_reject_new_items_but_allow_updates() {
    let mut r = Replica::with(Limits { max_sessions: 1, max_keys: 2, max_services: 1, ..LIMITS });
    r.op(put("a", "1"));
    r.op(put("b", "1"));
    assert!(matches!(r.op(put("c", "1")), Response::Rejected(_)));
    assert!(matches!(r.op(put("a", "2")), Response::Put { version: 2, .. }));
    r.op(Op::RegisterService(service("s1", vec![])));
    assert!(matches!(r.op(Op::RegisterService(service("s2", vec![]))), Response::Rejected(_)));
    assert!(matches!(
        r.op(Op::RegisterService(service("s1", vec![node("a", 1)]))),
        Response::ServiceRegistered { replaced: true, .. }
    ));
    assert_eq!(r.state.counts().keys, 2);
}

#[test]
fn list_is_sorted_prefixed_bounded_and_pages() {
    let mut r = Replica::new();
    for key in ["b/2", "a/1", "b/1", "b/3", "c"] {
        r.op(put(key, "v"));
    }
    let keys = |v: Vec<KeyValue>| v.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(keys(r.state.list("b/", None, 10, usize::MAX)), ["b/1", "b/2", "b/3"]);
    assert_eq!(keys(r.state.list("b/", None, 2, usize::MAX)), ["b/1", "b/2"]);
    assert_eq!(keys(r.state.list("b/", Some("b/1"), 10, usize::MAX)), ["b/2", "b/3"]);
    assert_eq!(keys(r.state.list("b/", Some("a"), 1, usize::MAX)), ["b/1"], "start_after before the prefix");
    assert_eq!(keys(r.state.list("", None, 10, usize::MAX)), ["a/1", "b/1", "b/2", "b/3", "c"]);
    assert!(r.state.list("z", None, 10, usize::MAX).is_empty());
}

#[test]
fn a_retried_write_applies_once_and_returns_the_same_response() {
    let mut r = Replica::new();
    let first = r.session(7, 1, put("a", "1"));
    assert_eq!(first, Response::Put { version: 1, prev: None });
    let (again, change) = r.run(Command::in_session(7, 1, put("a", "1")));
    assert_eq!(again, first);
    assert_eq!(change, None, "a duplicate publishes no change");
    assert_eq!(r.state.get("a").map(|kv| kv.version), Some(1), "applied once");
    // The next write of the session applies.
    assert!(matches!(r.session(7, 2, put("a", "2")), Response::Put { version: 2, .. }));
    // A gap in seq is fine; an older seq is stale and changes nothing.
    assert!(matches!(r.session(7, 5, put("a", "3")), Response::Put { version: 3, .. }));
    assert_eq!(r.session(7, 4, put("a", "x")), Response::StaleSequence { last_seq: 5 });
    assert_eq!(r.session(7, 1, put("a", "x")), Response::StaleSequence { last_seq: 5 });
    assert_eq!(r.state.get("a").map(|kv| kv.value), Some("3".into()));
    // Reads are not in sessions; other clients are independent.
    assert_eq!(r.session(8, 1, put("b", "1")), Response::Put { version: 1, prev: None });
}

#[test]
fn a_rejected_sessioned_write_is_remembered_like_any_other() {
    let mut r = Replica::new();
    let rejected = r.session(1, 1, put("", "v"));
    assert!(matches!(rejected, Response::Rejected(_)));
    assert_eq!(r.session(1, 1, put("", "v")), rejected);
    assert!(matches!(r.session(1, 0, put("a", "v")), Response::Rejected(reason) if reason.contains("seq")));
}

#[test]
fn an_unknown_client_must_start_at_seq_1() {
    let mut r = Replica::new();
    assert_eq!(r.session(9, 2, put("a", "1")), Response::SessionExpired { client_id: 9 });
    assert_eq!(r.state.get("a"), None);
    assert_eq!(r.state.counts().sessions, 0);
}

#[test]
fn the_least_recently_used_session_is_evicted_deterministically() {
    let entries = |r: &mut Replica| {
        r.session(1, 1, put("a", "1"));
        r.session(2, 1, put("b", "1"));
        r.session(3, 1, put("c", "1"));
        // A duplicate counts as a use: client 1 is now the most recent, client 2 the least.
        r.session(1, 1, put("a", "1"));
        r.session(4, 1, put("d", "1"));
    };
    let (mut x, mut y) = (Replica::new(), Replica::new());
    entries(&mut x);
    entries(&mut y);
    assert_eq!(x.hash(), y.hash());
    assert_eq!(x.state.counts().sessions, 3);
    // Client 2 was evicted: its retry cannot be told apart from a new write.
    assert_eq!(
        x.session(2, 1, put("b", "1")),
        Response::Put { version: 2, prev: Some(kv("b", "1", 1, 2, 2)) }
    );
    assert_eq!(y.session(2, 2, put("b", "2")), Response::SessionExpired { client_id: 2 });
    // Clients 1 (touched) and 4 (new) are remembered on both.
    assert_eq!(x.session(1, 1, put("a", "1")), Response::Put { version: 1, prev: None });
    assert_eq!(x.session(4, 1, put("d", "1")), Response::Put { version: 1, prev: None });
}

#[test]
fn state_hash_agrees_on_equal_histories_and_differs_after_one_differing_op() {
    let ops = |r: &mut Replica| {
        r.op(put("a", "1"));
        r.op(Op::RegisterService(service("web", vec![node("a", 2)])));
        r.op(Op::SetMemberAddress { id: 1, raft_addr: "r".into(), client_addr: "c".into() });
        r.session(5, 1, put("b", "2"));
    };
    let (mut x, mut y) = (Replica::new(), Replica::new());
    assert_eq!(x.hash(), y.hash());
    ops(&mut x);
    ops(&mut y);
    assert_eq!(x.hash(), y.hash());
    x.op(put("c", "1"));
    y.op(put("c", "2"));
    assert_ne!(x.hash(), y.hash());
    // Once the states are equal again (same value, version and indexes), so are the hashes.
    x.op(put("c", "2"));
    y.op(put("c", "2"));
    assert_eq!(x.hash(), y.hash());
    // The applied index is part of the state.
    x.entry(EntryPayload::Blank);
    assert_ne!(x.hash(), y.hash());
}

#[test]
fn state_hash_covers_every_kind_of_item() {
    // Same keys and index, but one replica also remembers a session.
    let (mut x, mut y) = (Replica::new(), Replica::new());
    x.session(1, 1, put("a", "1"));
    y.op(put("a", "1"));
    assert_eq!(x.state.list("", None, 10, usize::MAX), y.state.list("", None, 10, usize::MAX));
    assert_ne!(x.hash(), y.hash(), "sessions");
    let (mut x, mut y) = (Replica::new(), Replica::new());
    x.op(Op::RegisterService(service("web", vec![node("a", 1)])));
    y.op(Op::RegisterService(service("web", vec![node("a", 2)])));
    assert_ne!(x.hash(), y.hash(), "services");
    let (mut x, mut y) = (Replica::new(), Replica::new());
    x.op(Op::SetMemberAddress { id: 1, raft_addr: "r".into(), client_addr: "c".into() });
    y.op(Op::SetMemberAddress { id: 2, raft_addr: "r".into(), client_addr: "c".into() });
    assert_ne!(x.hash(), y.hash(), "member addresses");
}

#[test]
fn state_hash_is_stable_across_processes_and_platforms() {
    let mut r = Replica::new();
    r.op(put("a", "1"));
    r.op(Op::RegisterService(service("web", vec![node("a", 2)])));
    r.session(5, 1, put("b", "2"));
    // A change here is a change of the snapshot format (it records the hash).
    assert_eq!(r.hash(), 0x956d_8bd4_1498_3075, "golden value");
}

/// A replica with some of everything: keys, a service, a member address, sessions.
fn populated() -> Replica {
    let mut r = Replica::new();
    r.op(put("a", "1"));
    r.op(put("b/x", "2"));
    r.op(put("a", "3"));
    r.op(Op::RegisterService(service("web", vec![node("a", 5), node("b", 1)])));
    r.op(Op::SetServiceNodeDown { service: "web".into(), node: "b".into(), down: true });
    r.op(Op::SetMemberAddress { id: 3, raft_addr: "r:3".into(), client_addr: "c:3".into() });
    r.session(10, 1, put("s", "1"));
    r.session(11, 1, cas("s", Expected::Version(1), Some("2")));
    r.entry(EntryPayload::Blank);
    r
}

#[test]
fn snapshot_round_trip_restores_the_same_state_and_the_same_future() {
    let mut original = populated();
    let snapshot = original.state.snapshot();
    assert_eq!(snapshot[0], SNAPSHOT_FORMAT_VERSION);
    let mut restored = Replica { state: restore(&snapshot, LIMITS).expect("restores") };
    assert_eq!(restored.hash(), original.hash());
    assert_eq!(restored.state.applied_index(), original.state.applied_index());
    assert_eq!(
        restored.state.list("", None, 100, usize::MAX),
        original.state.list("", None, 100, usize::MAX)
    );
    assert_eq!(restored.state.services(), original.state.services());
    assert_eq!(restored.state.members(), original.state.members());
    assert_eq!(restored.state.snapshot(), snapshot, "snapshots are canonical");
    let mut one_chunk = original.state.view();
    let whole = raft_core::SnapshotSource::next_chunk(&mut one_chunk, usize::MAX).expect("encodes");
    assert_eq!(whole.as_deref(), Some(&snapshot[..]), "the chunk size changes the chunking only");
    // Same behaviour afterwards, sessions included.
    let future = [
        // A duplicate: the cached response.
        Command::in_session(11, 1, cas("s", Expected::Version(1), Some("2"))),
        // A third session, then a fourth that evicts the least recently used (client 10).
        Command::in_session(12, 1, put("n", "1")),
        Command::in_session(13, 1, put("n", "2")),
        Command::in_session(10, 2, put("s", "y")),
        Command::new(put("a", "4")),
    ];
    let mut responses = Vec::new();
    for command in future {
        let response = original.run(command.clone());
        assert_eq!(restored.run(command), response);
        assert_eq!(restored.hash(), original.hash());
        responses.push(response.0);
    }
    assert!(matches!(responses[0], Response::Put { version: 2, .. }));
    assert_eq!(responses[3], Response::SessionExpired { client_id: 10 });
}

#[test]
fn the_state_size_counts_key_and_value_bytes_through_updates_deletes_and_restores() {
    let mut r = Replica::new();
    r.op(put("ab", "1234"));
    r.op(put("c", "5"));
    assert_eq!(r.state.counts().kv_bytes, 6 + 2);
    r.op(put("ab", "1"));
    assert_eq!(r.state.counts().kv_bytes, 3 + 2, "an update counts the new value only");
    r.op(Op::Delete { key: "c".into() });
    r.op(Op::Delete { key: "missing".into() });
    assert_eq!(r.state.counts().kv_bytes, 3);
    let restored = restore(&r.state.snapshot(), LIMITS).expect("restores");
    assert_eq!(restored.counts().kv_bytes, 3);
}

#[test]
fn a_view_keeps_the_state_it_was_taken_at_while_the_state_changes() {
    let mut r = populated();
    let (hash, index) = (r.hash(), r.state.applied_index());
    let view = r.state.view();
    let before = r.state.snapshot();
    r.op(put("a", "changed"));
    r.op(put("new", "1"));
    r.op(Op::Delete { key: "s".into() });
    assert_ne!(r.hash(), hash);
    let mut view = view;
    let mut written = Vec::new();
    while let Some(chunk) = raft_core::SnapshotSource::next_chunk(&mut view, 5).expect("encodes") {
        written.extend_from_slice(&chunk);
    }
    assert_eq!(written, before, "the view writes the state it was taken at");
    let restored = restore(&written, LIMITS).expect("restores");
    assert_eq!((restored.state_hash(), restored.applied_index()), (hash, index));
}

#[test]
fn chunks_stay_within_the_asked_size_unless_one_item_is_larger_and_write_the_same_bytes() {
    let mut r = Replica::new();
    for i in 0..300 {
        r.op(put(&format!("key{i:04}"), &"v".repeat(i % 97)));
    }
    let whole = r.state.snapshot();
    for max in [1, 64, 200, 1000, 4096] {
        let mut view = r.state.view();
        let (mut written, mut chunks) = (Vec::new(), 0);
        while let Some(chunk) = raft_core::SnapshotSource::next_chunk(&mut view, max).expect("encodes") {
            // An item that alone exceeds `max` goes in a chunk of its own; the few bytes of a
            // map's item count may follow a full chunk's last item.
            let largest_item = 97 + 32;
            assert!(
                chunk.len() <= max.max(largest_item) + 10,
                "a chunk of {} bytes for max {max}",
                chunk.len()
            );
            written.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert_eq!(written, whole, "max {max}");
        if max >= 200 {
            // Chunks are filled: not many more than the bytes need.
            assert!(
                chunks <= whole.len() / (max - 140) + 2,
                "{chunks} chunks of max {max} for {} bytes",
                whole.len()
            );
        }
    }
}

#[test]
fn restore_refuses_empty_foreign_truncated_extended_and_corrupted_snapshots() {
    let snapshot = populated().state.snapshot();
    assert_eq!(restore(&[], LIMITS).err(), Some(SnapshotError::Empty));
    let mut foreign = snapshot.to_vec();
    foreign[0] = 3;
    assert_eq!(restore(&foreign, LIMITS).err(), Some(SnapshotError::UnsupportedFormat(3)));
    for len in 1..snapshot.len() {
        assert!(restore(&snapshot[..len], LIMITS).is_err(), "truncated to {len} bytes");
    }
    let mut extended = snapshot.to_vec();
    extended.push(0);
    assert!(matches!(restore(&extended, LIMITS), Err(SnapshotError::Decode(_))));
    // Any single flipped bit is caught (by decoding, an invariant or the recorded hash).
    for at in 1..snapshot.len() {
        for bit in 0..8 {
            let mut corrupted = snapshot.to_vec();
            corrupted[at] ^= 1 << bit;
            assert!(restore(&corrupted, LIMITS).is_err(), "bit {bit} of byte {at} flipped");
        }
    }
}

#[test]
fn restore_refuses_a_snapshot_beyond_this_nodes_limits() {
    let snapshot = populated().state.snapshot();
    let small = Limits { max_sessions: 1, ..LIMITS };
    assert!(matches!(restore(&snapshot, small), Err(SnapshotError::Invalid(m)) if m.contains("sessions")));
    let small = Limits { max_keys: 2, ..LIMITS };
    assert!(matches!(restore(&snapshot, small), Err(SnapshotError::Invalid(m)) if m.contains("keys")));
}

#[test]
fn restore_refuses_well_formed_but_inconsistent_state() {
    /// Writes a body like `SnapshotOut` from owned parts.
    fn body(applied_index: Index, kv: Vec<KeyValue>, state_hash: u64) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body {
            applied_index: Index,
            state_hash: u64,
            no_space: bool,
            kv: Vec<KeyValue>,
            services: Vec<Service>,
            members: Vec<MemberAddress>,
            sessions: Vec<u8>,
        }
        let body = Body {
            applied_index,
            state_hash,
            no_space: false,
            kv,
            services: vec![],
            members: vec![],
            sessions: vec![],
        };
        postcard::to_extend(&body, vec![SNAPSHOT_FORMAT_VERSION]).expect("encodes")
    }
    // A consistent one first, to show the hand-written body is accepted.
    let mut r = Replica::new();
    r.op(put("a", "1"));
    let good = body(1, vec![kv("a", "1", 1, 1, 1)], r.hash());
    assert_eq!(restore(&good, LIMITS).map(|s| s.state_hash()), Ok(r.hash()));
    let cases = [
        ("duplicate key", body(2, vec![kv("a", "1", 1, 1, 1), kv("a", "2", 1, 2, 2)], 0)),
        (
            "duplicate key at an even position after an odd one",
            body(2, vec![kv("a", "1", 1, 1, 1), kv("b", "1", 1, 1, 1), kv("b", "2", 1, 2, 2)], 0),
        ),
        ("version 0", body(1, vec![kv("a", "1", 0, 1, 1)], 0)),
        ("modified after the applied index", body(1, vec![kv("a", "1", 1, 1, 2)], 0)),
        ("modified before created", body(3, vec![kv("a", "1", 1, 2, 1)], 0)),
        ("empty key", body(1, vec![kv("", "1", 1, 1, 1)], 0)),
    ];
    for (what, bytes) in cases {
        assert!(matches!(restore(&bytes, LIMITS), Err(SnapshotError::Invalid(_))), "{what}");
    }
    let wrong_hash = body(1, vec![kv("a", "1", 1, 1, 1)], r.hash() ^ 1);
    assert!(matches!(restore(&wrong_hash, LIMITS), Err(SnapshotError::HashMismatch { .. })));
}

/// A restore inserts keys a window at a time, in an order that fills the map's nodes: more
/// keys than a window restore to the same state, listed in the same order, and a key listed
/// twice is refused where the two copies fall in different windows too.
#[test]
fn a_restore_of_several_windows_holds_every_key_in_order_and_refuses_a_key_listed_twice() {
    let keys = 2 * super::snapshot::RESTORE_WINDOW + 7;
    let limits = Limits { max_keys: keys + 1, ..LIMITS };
    let mut original = Replica::with(limits);
    for i in (0..keys).rev() {
        original.op(put(&format!("k{i:06}"), &i.to_string()));
    }
    let snapshot = original.state.snapshot();
    let restored = restore(&snapshot, limits).expect("restores");
    assert_eq!(restored.state_hash(), original.hash());
    let listed = restored.list("", None, keys + 1, usize::MAX);
    assert_eq!(listed, original.state.list("", None, keys + 1, usize::MAX));
    assert_eq!(listed.len(), keys);
    assert_eq!(restored.snapshot(), snapshot, "the same snapshot again");

    // The same key at the end of one window and the start of the next.
    let window = super::snapshot::RESTORE_WINDOW;
    let mut pairs: Vec<KeyValue> = (0..window).map(|i| kv(&format!("k{i:06}"), "v", 1, 1, 1)).collect();
    pairs.push(kv(&format!("k{:06}", window - 1), "w", 1, 1, 1));
    let encoded = {
        #[derive(Serialize)]
        struct Body<'a> {
            applied_index: Index,
            state_hash: u64,
            no_space: bool,
            kv: &'a [KeyValue],
            services: Vec<u8>,
            members: Vec<u8>,
            sessions: Vec<u8>,
        }
        let body = Body {
            applied_index: 1,
            state_hash: 0,
            no_space: false,
            kv: &pairs,
            services: vec![],
            members: vec![],
            sessions: vec![],
        };
        postcard::to_extend(&body, vec![SNAPSHOT_FORMAT_VERSION]).expect("encodes")
    };
    match restore(&encoded, limits) {
        Err(SnapshotError::Invalid(what)) => assert!(what.contains("appears twice"), "{what}"),
        other => panic!("a key listed twice across windows restored: {:?}", other.map(|s| s.state_hash())),
    }
}

/// The quota: a write that would grow the state past it is refused with `NoSpace` and raises
/// the alarm; under the alarm no write may grow the state, while deletes, shrinking or equal
/// writes and other operations apply; the alarm clears below 90 % and is part of the state
/// (hash and snapshot), so every replica answers alike.
#[test]
fn the_quota_refuses_growth_raises_an_alarm_that_clears_below_90_percent() {
    // Keys and values: "k0".."k9" with 8-byte values are 10 bytes each.
    let mut r = Replica::with(Limits { max_state_bytes: 100, ..LIMITS });
    for i in 0..10 {
        assert!(matches!(r.op(put(&format!("k{i}"), "vvvvvvvv")), Response::Put { .. }));
    }
    assert_eq!(r.state.counts().kv_bytes, 100, "exactly at the quota is allowed");
    let before = r.hash();
    assert_eq!(r.op(put("k10", "v")), Response::NoSpace { quota_bytes: 100, state_bytes: 100 });
    assert!(r.state.no_space(), "the refusal raises the alarm");
    assert_ne!(r.hash(), before, "the alarm is part of the state hash");
    assert!(r.state.get("k10").is_none(), "nothing changed");
    assert!(matches!(r.op(put("k0", "vvvvvvvv")), Response::Put { .. }), "a write of equal size applies");
    assert!(matches!(r.op(put("k1", "v")), Response::Put { .. }), "a shrinking write applies");
    assert_eq!(r.state.counts().kv_bytes, 93);
    assert!(r.state.no_space(), "93 % of the quota: the alarm stays on");
    assert!(
        matches!(r.op(put("k2", "vvvvvvvvv")), Response::NoSpace { .. }),
        "growth refused under the alarm"
    );
    assert!(matches!(r.op(cas("k3", Expected::Version(1), Some("vvvvvvvvvv"))), Response::NoSpace { .. }));
    assert!(matches!(
        r.op(Op::RegisterService(service("web", vec![node("a", 1)]))),
        Response::ServiceRegistered { .. }
    ));
    // A snapshot taken under the alarm restores it.
    let restored = restore(&r.state.snapshot(), Limits { max_state_bytes: 100, ..LIMITS }).expect("restores");
    assert!(restored.no_space());
    assert_eq!(restored.state_hash(), r.hash());
    assert!(matches!(r.op(Op::Delete { key: "k2".into() }), Response::Deleted { prev: Some(_) }));
    assert_eq!(r.state.counts().kv_bytes, 83);
    assert!(!r.state.no_space(), "below 90 %: the alarm clears");
    assert!(matches!(r.op(put("k2", "vvvvvvvv")), Response::Put { .. }), "growth applies again");
}

#[test]
fn a_version_1_snapshot_restores_without_the_alarm() {
    let original = populated();
    let v2 = original.state.snapshot();
    let (_, rest) = postcard::take_from_bytes::<(u8, Index, u64, bool)>(&v2).expect("a v2 header");
    let (header, _) = postcard::take_from_bytes::<(u8, Index, u64)>(&v2).expect("the v1 part of it");
    let mut v1 = postcard::to_stdvec(&(1u8, header.1, header.2)).expect("encodes");
    v1.extend_from_slice(rest);
    let restored = restore(&v1, LIMITS).expect("a version 1 snapshot restores");
    assert!(!restored.no_space());
    assert_eq!(restored.state_hash(), original.hash());
}

/// Found by review: one write larger than the room left raised the alarm in a roomy state, and
/// nothing could clear it (an empty store stayed locked, the alarm saved in every snapshot). It
/// is refused alone now; the alarm goes on only at 90 % of the quota or more.
#[test]
fn an_oversized_write_into_a_roomy_state_is_refused_alone() {
    let mut r = Replica::with(Limits { max_state_bytes: 1_000, ..LIMITS });
    assert!(matches!(r.op(put("big", &"v".repeat(1_200))), Response::NoSpace { state_bytes: 0, .. }));
    assert!(!r.state.no_space(), "an empty store raised the alarm");
    assert!(matches!(r.op(put("a", &"v".repeat(98))), Response::Put { .. }), "a small write applies");
    assert!(matches!(r.op(put("b", &"v".repeat(950))), Response::NoSpace { .. }), "past the quota");
    assert!(!r.state.no_space(), "at 10 % of the quota the alarm stays off");
    assert!(matches!(r.op(put("c", "v")), Response::Put { .. }));
}

/// Found by review: sessions cached whole values outside any bound (16 failed swaps of a
/// 1 MiB key made a 17 MB snapshot). The cached responses are bounded by
/// `max_session_bytes`, least recently used sessions evicted first, alike on every replica.
#[test]
fn cached_session_responses_are_bounded_in_bytes() {
    let limits = Limits { max_sessions: 100, max_session_bytes: 3_000, ..LIMITS };
    let mut r = Replica::with(limits);
    r.op(put("big", &"v".repeat(1_000)));
    for client in 1..=16 {
        let failed = r.session(client, 1, cas("big", Expected::Version(9), Some("x")));
        assert!(matches!(failed, Response::CasFailed { current: Some(_) }));
    }
    assert!(r.state.session_bytes <= 3_000, "{} bytes cached", r.state.session_bytes);
    assert!(r.state.sessions.len() < 16 && r.state.sessions.contains_key(&16), "the newest is kept");
    assert_eq!(r.session(1, 2, put("k", "v")), Response::SessionExpired { client_id: 1 }, "the oldest went");
    let restored = restore(&r.state.snapshot(), limits).expect("restores");
    assert_eq!(restored.session_bytes, r.state.session_bytes);
    assert_eq!(restored.state_hash(), r.hash());
}
