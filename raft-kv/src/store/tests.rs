//! The store and state machine handles together: reads, `wait_applied`, watchers, snapshots
//! through the `Fsm` trait, and what happens when the state machine goes away.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use raft_core::EntryPayload;

use super::*;
use crate::command::{Command, Op, Response};
use crate::service::tests::{node, service};
use crate::watch::Change;

/// Polls a future once (without a runtime's wake-up): whether it is ready now.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

fn options() -> KvOptions {
    KvOptions { watch_history: 4, watch_channel_capacity: 8, max_list: 3, ..KvOptions::default() }
}

/// A store, its state machine, and the next index to apply.
struct Node {
    store: KvStore,
    fsm: KvFsm,
}

impl Node {
    fn new(options: KvOptions) -> Self {
        let (store, fsm) = KvStore::new(options).expect("valid options");
        Self { store, fsm }
    }

    async fn apply(&mut self, ops: impl IntoIterator<Item = Op>) -> Vec<Response> {
        let mut next = self.store.applied_index();
        let entries: Vec<Entry> = ops
            .into_iter()
            .map(|op| {
                next += 1;
                Entry { term: 1, index: next, payload: EntryPayload::Command(Command::new(op).encode()) }
            })
            .collect();
        let responses = self.fsm.apply(&entries).await.expect("applies");
        responses.iter().map(|r| Response::decode(r).expect("decodes")).collect()
    }

    async fn put(&mut self, key: &str, value: &str) -> Response {
        self.apply([put(key, value)]).await.remove(0)
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into() }
}

/// The `(index, key)` of a key-value event.
fn index_key(event: &ChangeEvent) -> (Index, String) {
    (event.index, event.key().unwrap_or("-").to_owned())
}

#[test]
fn options_are_validated() {
    assert_eq!(KvOptions::default().validate(), Ok(()));
    for bad in [
        KvOptions { max_sessions: 0, ..KvOptions::default() },
        KvOptions { max_keys: 0, ..KvOptions::default() },
        KvOptions { max_list: 0, ..KvOptions::default() },
        KvOptions { watch_channel_capacity: 0, ..KvOptions::default() },
        KvOptions { watch_channel_capacity: MAX_WATCH_CHANNEL_CAPACITY + 1, ..KvOptions::default() },
        KvOptions { watch_history: MAX_WATCH_HISTORY + 1, ..KvOptions::default() },
    ] {
        assert!(matches!(KvStore::new(bad), Err(KvError::Options(_))));
    }
}

#[tokio::test]
async fn reads_see_applied_writes_and_lists_are_bounded_and_paged() {
    let mut n = Node::new(options());
    assert!(n.store.is_empty());
    n.apply(["b", "a", "c", "d", "x/1"].map(|k| put(k, "v"))).await;
    n.apply([Op::RegisterService(service("web", vec![node("a", 1)]))]).await;
    n.apply([Op::SetMemberAddress { id: 2, raft_addr: "r".into(), client_addr: "c".into() }]).await;
    assert_eq!(n.store.get("a").map(|kv| (kv.version, kv.create_index)), Some((1, 2)));
    assert_eq!(n.store.len(), 5);
    let keys = |v: &[KeyValue]| v.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&n.store.list("", 100)), ["a", "b", "c"], "capped at max_list");
    assert_eq!(keys(&n.store.list("x/", 100)), ["x/1"]);
    let page = n.store.list_page("", None, 2, usize::MAX);
    assert_eq!(
        (keys(&page.items), page.next_start_after.as_deref(), page.applied_index),
        (vec!["a".to_owned(), "b".to_owned()], Some("b"), 7)
    );
    let page = n.store.list_page("", Some("b"), 3, usize::MAX);
    assert_eq!(
        (keys(&page.items), page.next_start_after.as_deref()),
        (vec!["c".to_owned(), "d".to_owned(), "x/1".to_owned()], None)
    );
    // A byte bound ends a page early (each pair here is 2 bytes), never before its first pair.
    let page = n.store.list_page("", None, 3, 5);
    assert_eq!(
        (keys(&page.items), page.next_start_after.as_deref()),
        (vec!["a".to_owned(), "b".to_owned()], Some("b"))
    );
    let page = n.store.list_page("", Some("a"), 3, 1);
    assert_eq!((keys(&page.items), page.next_start_after.as_deref()), (vec!["b".to_owned()], Some("b")));
    assert_eq!(n.store.services().len(), 1);
    assert_eq!(n.store.service("web").map(|s| s.nodes.len()), Some(1));
    assert_eq!(n.store.member_addresses().len(), 1);
    let stats = n.store.stats();
    assert_eq!((stats.applied_index, stats.keys, stats.services, stats.member_addresses), (7, 5, 1, 1));
    assert_eq!(stats.state_hash, n.store.state_hash());
}

#[tokio::test]
async fn a_batch_that_does_not_follow_the_applied_index_is_refused_whole() {
    let mut n = Node::new(options());
    n.put("a", "1").await;
    let entry = |index| Entry {
        term: 1,
        index,
        payload: EntryPayload::Command(Command::new(put("b", "1")).encode()),
    };
    for batch in [vec![entry(3)], vec![entry(2), entry(4)], vec![entry(1)]] {
        assert!(matches!(n.fsm.apply(&batch).await, Err(FsmError::Failed(_))));
    }
    assert_eq!((n.store.applied_index(), n.store.get("b")), (1, None));
}

#[tokio::test]
async fn wait_applied_resolves_once_the_index_is_applied() {
    let mut n = Node::new(options());
    n.put("a", "1").await;
    assert_eq!(n.store.wait_applied(1).await, Ok(1), "already applied");
    let store = n.store.clone();
    let mut waiting = pin!(store.wait_applied(3));
    assert!(poll_once(waiting.as_mut()).is_pending());
    n.put("b", "1").await;
    assert!(poll_once(waiting.as_mut()).is_pending(), "2 < 3");
    n.put("c", "1").await;
    assert_eq!(waiting.await, Ok(3));
}

#[tokio::test]
async fn wait_applied_fails_once_the_state_machine_is_gone() {
    let mut n = Node::new(options());
    n.put("a", "1").await;
    let store = n.store.clone();
    drop(n.fsm);
    assert_eq!(store.wait_applied(1).await, Ok(1), "reached before it went");
    assert_eq!(store.wait_applied(2).await, Err(KvError::Closed));
}

#[tokio::test]
async fn a_watch_from_an_index_replays_retained_events_then_follows_live_ones() {
    let mut n = Node::new(options());
    n.put("a", "1").await;
    n.put("b", "1").await;
    n.put("c", "1").await;
    let mut watcher = n.store.watch(Some(1), None).expect("retained");
    assert_eq!(index_key(&watcher.recv().await.expect("event")), (2, "b".into()));
    assert_eq!(index_key(&watcher.recv().await.expect("event")), (3, "c".into()));
    let event = {
        let mut next = pin!(watcher.recv());
        assert!(poll_once(next.as_mut()).is_pending(), "nothing more yet");
        n.apply([Op::Delete { key: "a".into() }]).await;
        next.await.expect("live event")
    };
    assert!(matches!(&event.change, Change::Delete(kv) if kv.key == "a" && kv.version == 1));
    assert_eq!(watcher.position(), 4);
}

#[tokio::test]
async fn a_watch_without_an_index_sees_only_later_events_and_one_ahead_skips_to_its_index() {
    let mut n = Node::new(options());
    n.put("a", "1").await;
    let mut live = n.store.watch(None, None).expect("watch");
    let mut ahead = n.store.watch(Some(3), None).expect("watch");
    n.put("b", "1").await;
    n.put("c", "1").await;
    n.put("d", "1").await;
    assert_eq!(index_key(&live.recv().await.expect("event")), (2, "b".into()));
    assert_eq!(index_key(&ahead.recv().await.expect("event")), (4, "d".into()));
}

#[tokio::test]
async fn a_prefix_watch_gets_only_matching_keys() {
    let mut n = Node::new(options());
    let mut watcher = n.store.watch(Some(0), Some("app/".into())).expect("watch");
    n.put("app/1", "x").await;
    n.put("other", "x").await;
    n.apply([Op::RegisterService(service("app/svc", vec![]))]).await;
    n.put("app/2", "x").await;
    assert_eq!(index_key(&watcher.recv().await.expect("event")), (1, "app/1".into()));
    assert_eq!(index_key(&watcher.recv().await.expect("event")), (4, "app/2".into()));
    assert_eq!(watcher.position(), 4);
}

#[tokio::test]
async fn a_watch_from_before_the_retained_history_is_compacted() {
    let mut n = Node::new(options()); // keeps 4 events
    for i in 0..6 {
        n.put(&format!("k{i}"), "v").await;
    }
    assert_eq!(n.store.watch(Some(0), None).err(), Some(WatchError::Compacted { min_from_index: 2 }));
    let mut watcher = n.store.watch(Some(2), None).expect("retained");
    assert_eq!(watcher.recv().await.map(|e| e.index), Ok(3));
    assert_eq!(n.store.stats().watch_min_from_index, 2);
}

#[tokio::test]
async fn a_watcher_that_falls_behind_fails_with_lagged_and_can_resume() {
    let mut n = Node::new(KvOptions { watch_history: 100, watch_channel_capacity: 2, ..options() });
    let mut watcher = n.store.watch(None, None).expect("watch");
    n.put("a", "1").await;
    assert_eq!(watcher.recv().await.map(|e| e.index), Ok(1));
    for i in 0..5 {
        n.put(&format!("k{i}"), "v").await;
    }
    assert_eq!(watcher.recv().await.err(), Some(WatchError::Lagged { resume_from: 1 }));
    assert_eq!(watcher.recv().await.err(), Some(WatchError::Lagged { resume_from: 1 }), "terminal");
    let mut resumed = n.store.watch(Some(1), None).expect("still retained");
    assert_eq!(resumed.recv().await.map(|e| e.index), Ok(2));
}

#[tokio::test]
async fn a_restore_replaces_the_state_clears_history_and_ends_watchers() {
    let mut source = Node::new(options());
    source.put("a", "1").await;
    source.put("b", "1").await;
    source.put("c", "1").await;
    let snapshot =
        raft_core::SnapshotData::from_source(&mut *source.fsm.snapshot().await.expect("snapshot"), 4096)
            .expect("encodes");

    let mut n = Node::new(options());
    n.put("z", "1").await;
    let mut watcher = n.store.watch(Some(0), None).expect("watch");
    let store = n.store.clone();
    let mut waiting = pin!(store.wait_applied(3));
    assert!(poll_once(waiting.as_mut()).is_pending());
    n.fsm.restore(&mut snapshot.reader()).await.expect("restores");

    assert_eq!(n.store.state_hash(), source.store.state_hash());
    assert_eq!((n.store.get("z"), n.store.len()), (None, 3));
    assert_eq!(waiting.await, Ok(3));
    assert_eq!(watcher.recv().await.map(|e| e.index), Ok(1), "the retained event before the restore");
    assert_eq!(watcher.recv().await.err(), Some(WatchError::Compacted { min_from_index: 3 }));
    assert_eq!(n.store.watch(Some(1), None).err(), Some(WatchError::Compacted { min_from_index: 3 }));
    // Both go on identically.
    n.put("d", "1").await;
    source.put("d", "1").await;
    assert_eq!(n.store.state_hash(), source.store.state_hash());
}

#[tokio::test]
async fn a_watcher_ahead_of_a_restored_snapshot_goes_on() {
    let mut source = Node::new(options());
    source.put("a", "1").await;
    let snapshot =
        raft_core::SnapshotData::from_source(&mut *source.fsm.snapshot().await.expect("snapshot"), 4096)
            .expect("encodes");
    let mut n = Node::new(options());
    let mut watcher = n.store.watch(Some(1), None).expect("watch from an index not applied yet");
    n.fsm.restore(&mut snapshot.reader()).await.expect("restores");
    n.put("b", "1").await;
    assert_eq!(watcher.recv().await.map(|e| e.index), Ok(2));
}

#[test]
fn options_deserialize_with_defaults_for_missing_fields() {
    use serde::de::value::{Error, MapDeserializer};
    let fields = |f: Vec<(&'static str, usize)>| {
        KvOptions::deserialize(MapDeserializer::<_, Error>::new(f.into_iter()))
    };
    assert_eq!(fields(vec![("max_sessions", 5)]), Ok(KvOptions { max_sessions: 5, ..KvOptions::default() }));
    assert!(fields(vec![("max_session", 5)]).is_err(), "a misspelt field is refused");
}

#[tokio::test]
async fn a_bad_snapshot_fails_restore_and_leaves_the_state_unchanged() {
    let mut n = Node::new(options());
    n.put("a", "1").await;
    let hash = n.store.state_hash();
    let mut snapshot =
        raft_core::SnapshotData::from_source(&mut *n.fsm.snapshot().await.expect("snapshot"), 4096)
            .expect("encodes")
            .to_bytes()
            .to_vec();
    snapshot.truncate(snapshot.len() / 2);
    for bad in [&snapshot[..], &[], &[1, 2, 3], &[9]] {
        let bad = raft_core::SnapshotData::from_bytes(bytes::Bytes::copy_from_slice(bad));
        assert!(matches!(n.fsm.restore(&mut bad.reader()).await, Err(FsmError::BadSnapshot(_))));
    }
    assert_eq!((n.store.state_hash(), n.store.applied_index()), (hash, 1));
}

#[tokio::test]
async fn watchers_end_with_closed_when_the_state_machine_is_gone() {
    let n = Node::new(options());
    let mut watcher = n.store.watch(None, None).expect("watch");
    assert_eq!(n.store.stats().watchers, 1);
    let store = n.store.clone();
    drop(n.fsm);
    assert_eq!(watcher.recv().await.err(), Some(WatchError::Closed));
    assert_eq!(store.watch(None, None).err(), Some(WatchError::Closed));
}
