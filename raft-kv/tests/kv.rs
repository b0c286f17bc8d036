//! raft-kv from the outside: property tests (replicas agree with and without a snapshot
//! restore midway, key-value semantics against a model, no input panics) and a Raft cluster of
//! `KvFsm`s (agreement, exactly-once retries through Raft, restart and catch-up by snapshot).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{Config, Entry, EntryPayload, Fsm, Index, Membership, NodeId, RaftNode, Role, Storage};
use raft_kv::{
    Command, Expected, KeyValue, KvFsm, KvOptions, KvStore, Op, Response, Service, ServiceNode, Session,
};
use raft_storage_mem::MemStorage;

/// How long the cluster test waits for a condition before failing.
const WAIT_MAX: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

/// One log entry of a generated history.
#[derive(Debug, Clone)]
enum Step {
    Command(Command),
    Raw(Vec<u8>),
    Blank,
}

impl Step {
    fn payload(&self) -> EntryPayload {
        match self {
            Step::Command(c) => EntryPayload::Command(c.encode()),
            Step::Raw(bytes) => EntryPayload::Command(Bytes::copy_from_slice(bytes)),
            Step::Blank => EntryPayload::Blank,
        }
    }
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d/1", "d/2"]).prop_map(String::from)
}

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "x", "y", "zz"]).prop_map(String::from)
}

fn expected() -> impl Strategy<Value = Expected> {
    prop_oneof![(0u64..4).prop_map(Expected::Version), prop::option::of(value()).prop_map(Expected::Value)]
}

fn service() -> impl Strategy<Value = Service> {
    let name = prop::sample::select(vec!["web", "db"]).prop_map(String::from);
    let node = (prop::sample::select(vec!["n1", "n2", "n3"]), 0u32..4, any::<bool>()).prop_map(
        |(id, priority, down)| ServiceNode {
            id: id.into(),
            address: format!("{id}:80"),
            priority,
            attributes: BTreeMap::new(),
            down,
        },
    );
    (name, prop::collection::vec(node, 0..4)).prop_map(|(name, nodes)| Service {
        name,
        kind: "http".into(),
        nodes,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), value()).prop_map(|(key, value)| Op::Put { key, value }),
        2 => key().prop_map(|key| Op::Delete { key }),
        3 => (key(), expected(), prop::option::of(value())).prop_map(|(key, expected, value)| Op::Cas { key, expected, value }),
        1 => service().prop_map(Op::RegisterService),
        1 => prop::sample::select(vec!["web", "db"]).prop_map(|n| Op::RemoveService { name: n.into() }),
        1 => (prop::sample::select(vec!["web", "db"]), prop::sample::select(vec!["n1", "n2"]), any::<bool>())
            .prop_map(|(s, n, down)| Op::SetServiceNodeDown { service: s.into(), node: n.into(), down }),
        1 => (1u64..4, prop::sample::select(vec!["", "r:1", "r:2"]))
            .prop_map(|(id, raft)| Op::SetMemberAddress { id, raft_addr: raft.into(), client_addr: "c:1".into() }),
        1 => (1u64..4).prop_map(|id| Op::RemoveMemberAddress { id }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let session =
        prop::option::of((1u64..5, 0u64..4).prop_map(|(client_id, seq)| Session { client_id, seq }));
    prop_oneof![
        10 => (session, op()).prop_map(|(session, op)| Step::Command(Command { session, op })),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Step::Raw),
        1 => Just(Step::Blank),
    ]
}

/// Small limits, so that histories reach session eviction and the key and service limits.
fn small_options() -> KvOptions {
    KvOptions { max_sessions: 2, max_keys: 4, max_services: 1, ..KvOptions::default() }
}

/// Applies `steps` one entry at a time from the store's next index; the raw responses.
async fn apply_steps(store: &KvStore, fsm: &mut KvFsm, steps: &[Step]) -> Vec<Bytes> {
    let mut responses = Vec::new();
    for step in steps {
        let entry = Entry { term: 1, index: store.applied_index() + 1, payload: step.payload() };
        responses.extend(fsm.apply(&[entry]).await.expect("applies"));
    }
    responses
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Two replicas fed the same entries, one of them snapshotted and replaced by a restored
    /// copy midway, give the same responses and end with the same state and hash.
    #[test]
    fn replicas_agree_across_a_snapshot_restore(steps in prop::collection::vec(step(), 1..80), cut in any::<prop::sample::Index>()) {
        runtime().block_on(async {
            let cut = cut.index(steps.len() + 1);
            let (a, mut a_fsm) = KvStore::new(small_options()).expect("options");
            let (b, mut b_fsm) = KvStore::new(small_options()).expect("options");
            let a_responses = apply_steps(&a, &mut a_fsm, &steps).await;
            let mut b_responses = apply_steps(&b, &mut b_fsm, &steps[..cut]).await;
            let snapshot = raft_core::SnapshotData::from_source(&mut *b_fsm.snapshot().await.expect("snapshot"), 4096).expect("encodes");
            let (c, mut c_fsm) = KvStore::new(small_options()).expect("options");
            c_fsm.restore(&mut snapshot.reader()).await.expect("restores");
            prop_assert_eq!(c.state_hash(), b.state_hash());
            b_responses.extend(apply_steps(&c, &mut c_fsm, &steps[cut..]).await);
            prop_assert_eq!(&a_responses, &b_responses);
            prop_assert_eq!(a.applied_index(), c.applied_index());
            prop_assert_eq!(a.state_hash(), c.state_hash());
            prop_assert_eq!(a.list("", 1_000), c.list("", 1_000));
            prop_assert_eq!(a.services(), c.services());
            prop_assert_eq!(a.member_addresses(), c.member_addresses());
            let counts = |s: &KvStore| { let st = s.stats(); (st.keys, st.services, st.member_addresses, st.sessions) };
            prop_assert_eq!(counts(&a), counts(&c));
            // Every response decodes.
            for r in &a_responses {
                prop_assert!(r.is_empty() || Response::decode(r).is_ok());
            }
            Ok(())
        })?;
    }

    /// Key-value operations answer what a plain map model says.
    #[test]
    fn key_value_operations_follow_the_model(ops in prop::collection::vec(op(), 1..100)) {
        runtime().block_on(async {
            let (store, mut fsm) = KvStore::new(KvOptions::default()).expect("options");
            let mut model: BTreeMap<String, KeyValue> = BTreeMap::new();
            for op in ops {
                let index = store.applied_index() + 1;
                let step = Step::Command(Command::new(op.clone()));
                let response = Response::decode(&apply_steps(&store, &mut fsm, &[step]).await[0]).expect("decodes");
                let expected = match op {
                    Op::Put { key, value } => Some(model_put(&mut model, key, value, index)),
                    Op::Delete { key } => Some(Response::Deleted { prev: model.remove(&key) }),
                    Op::Cas { key, expected, value } => {
                        let current = model.get(&key);
                        let holds = match &expected {
                            Expected::Version(0) | Expected::Value(None) => current.is_none(),
                            Expected::Version(v) => current.is_some_and(|kv| kv.version == *v),
                            Expected::Value(Some(v)) => current.is_some_and(|kv| kv.value == *v),
                        };
                        Some(match (holds, value) {
                            (false, _) => Response::CasFailed { current: current.cloned() },
                            (true, Some(value)) => model_put(&mut model, key, value, index),
                            (true, None) => Response::Deleted { prev: model.remove(&key) },
                        })
                    }
                    _ => None,
                };
                if let Some(expected) = expected {
                    prop_assert_eq!(response, expected);
                }
            }
            prop_assert_eq!(store.list("", usize::MAX), model.into_values().collect::<Vec<_>>());
            Ok(())
        })?;
    }

    /// Decoding arbitrary bytes, or a valid encoding with bits flipped, never panics.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        step in step(),
        flips in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        let _ = Command::decode(&bytes);
        let _ = Response::decode(&bytes);
        if let Step::Command(command) = step {
            let mut encoded = command.encode().to_vec();
            for flip in flips {
                let at = flip.index(encoded.len() * 8);
                encoded[at / 8] ^= 1 << (at % 8);
            }
            if let Ok(decoded) = Command::decode(&encoded) {
                // Whatever decodes re-encodes to the same command.
                prop_assert_eq!(Command::decode(&decoded.encode()), Ok(decoded));
            }
        }
    }

    /// Restoring arbitrary bytes (with or without a valid format byte) never panics, and a
    /// failed restore changes nothing.
    #[test]
    fn restoring_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), format in any::<bool>()) {
        runtime().block_on(async {
            let (store, mut fsm) = KvStore::new(KvOptions::default()).expect("options");
            apply_steps(&store, &mut fsm, &[Step::Command(Command::new(Op::Put { key: "k".into(), value: "v".into() }))]).await;
            let hash = store.state_hash();
            let mut snapshot = bytes;
            if format {
                snapshot.insert(0, 1);
            }
            if fsm.restore(&mut raft_core::SnapshotData::from_bytes(snapshot.clone()).reader()).await.is_err() {
                prop_assert_eq!(store.state_hash(), hash);
            }
            // Applying arbitrary command bytes answers with a response.
            let index = store.applied_index() + 1;
            let entry = Entry { term: 1, index, payload: EntryPayload::Command(Bytes::from(snapshot)) };
            let responses = fsm.apply(&[entry]).await.expect("applies");
            prop_assert!(Response::decode(&responses[0]).is_ok());
            Ok(())
        })?;
    }
}

fn model_put(model: &mut BTreeMap<String, KeyValue>, key: String, value: String, index: Index) -> Response {
    let prev = model.get(&key).cloned();
    let (version, create_index) = prev.as_ref().map_or((1, index), |p| (p.version + 1, p.create_index));
    model.insert(key.clone(), KeyValue { key, value, version, create_index, mod_index: index });
    Response::Put { version, prev }
}

// ---------------------------------------------------------------------------------------------
// A Raft cluster of KvFsms
// ---------------------------------------------------------------------------------------------

struct Cluster {
    network: LocalNetwork,
    config: Config,
    initial: Membership,
    storages: BTreeMap<NodeId, Arc<MemStorage>>,
    nodes: BTreeMap<NodeId, (RaftNode, KvStore)>,
}

impl Cluster {
    async fn new(n: u64) -> Self {
        let config =
            Config { snapshot_threshold_entries: 50, snapshot_keep_entries: 10, ..Config::default() };
        let mut c = Self {
            network: LocalNetwork::default(),
            config,
            initial: Membership::with_voters(1..=n),
            storages: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start(id, Arc::new(MemStorage::default())).await;
        }
        c
    }

    /// Starts node `id` on `storage` with a fresh store (restored from storage's snapshot).
    async fn start(&mut self, id: NodeId, storage: Arc<MemStorage>) {
        let (store, fsm) = KvStore::new(KvOptions::default()).expect("options");
        let transport = Arc::new(self.network.transport(id, 4_096));
        let node = RaftNode::start(
            id,
            self.config.clone(),
            self.initial.clone(),
            storage.clone(),
            transport,
            Box::new(fsm),
            raft_core::fresh_seed(),
        )
        .await
        .expect("starts");
        self.storages.insert(id, storage);
        self.nodes.insert(id, (node, store));
    }

    async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let leader = self
                .nodes
                .iter()
                .find(|(_, (n, _))| n.status().protocol.role == Role::Leader)
                .map(|(id, _)| *id);
            if let Some(id) = leader {
                return id;
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader within {WAIT_MAX:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn propose(&self, leader: NodeId, command: &Command) -> (Index, Response) {
        let applied = self.nodes[&leader].0.propose(command.encode()).await.expect("applied");
        (applied.log_id.index, Response::decode(&applied.response).expect("a kv response"))
    }

    /// Waits until every running store has applied `index`, then checks they agree there.
    async fn assert_converged(&self, index: Index) -> u64 {
        for (id, (_, store)) in &self.nodes {
            let reached = tokio::time::timeout(WAIT_MAX, store.wait_applied(index)).await;
            assert!(matches!(reached, Ok(Ok(_))), "node {id} applies {index}");
        }
        let hashes: Vec<(NodeId, Index, u64)> =
            self.nodes.iter().map(|(id, (_, s))| (*id, s.applied_index(), s.state_hash())).collect();
        assert!(
            hashes.windows(2).all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2)),
            "replicas differ: {hashes:?}"
        );
        hashes[0].2
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_cluster_of_kv_state_machines_agrees_applies_retries_once_and_catches_up_by_snapshot() {
    let mut c = Cluster::new(3).await;
    let leader = c.leader().await;

    // 200 writes in a few sessions, with services and member addresses along the way.
    let mut last = 0;
    for i in 0..200u64 {
        let op = match i % 20 {
            0 => Op::RegisterService(Service {
                name: format!("svc{}", i % 3),
                kind: "http".into(),
                nodes: vec![],
            }),
            1 => {
                Op::SetMemberAddress { id: i % 5, raft_addr: format!("r:{i}"), client_addr: format!("c:{i}") }
            }
            _ => Op::Put { key: format!("k{}", i % 37), value: format!("v{i}") },
        };
        let command = Command::in_session(1 + i % 4, 1 + i / 4, op);
        last = c.propose(leader, &command).await.0;
    }

    // A retried write (same client and seq) is applied once and answered the same.
    let retried = Command::in_session(9, 1, Op::Put { key: "once".into(), value: "x".into() });
    let (_, first) = c.propose(leader, &retried).await;
    let (index, again) = c.propose(leader, &retried).await;
    assert_eq!(first, Response::Put { version: 1, prev: None });
    assert_eq!(again, first);
    assert!(index > last);
    let (index, stale) = c.propose(leader, &Command::in_session(1, 1, Op::Delete { key: "k1".into() })).await;
    assert!(matches!(stale, Response::StaleSequence { .. }));
    let hash = c.assert_converged(index).await;
    assert_eq!(c.nodes[&leader].1.get("once").map(|kv| kv.version), Some(1));

    // A follower restarted on its storage restores from its snapshot and replays the log.
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    let (node, _) = c.nodes.remove(&follower).expect("running");
    node.shutdown().await.expect("shutdown");
    let storage = c.storages[&follower].clone();
    assert!(storage.load_snapshot().await.expect("loads").is_some(), "the follower took a snapshot");
    c.start(follower, storage).await;
    assert_eq!(c.assert_converged(index).await, hash);

    // A new learner far behind a compacted log catches up by snapshot.
    c.start(4, Arc::new(MemStorage::default())).await;
    c.nodes[&leader].0.add_learner(4).await.expect("learner added");
    let (index, _) =
        c.propose(leader, &Command::new(Op::Put { key: "after".into(), value: "1".into() })).await;
    c.assert_converged(index).await;
    assert_eq!(c.nodes[&4].1.get("once").map(|kv| kv.version), Some(1));
    let learner_snapshot = c.storages[&4].load_snapshot().await.expect("loads");
    assert!(learner_snapshot.is_some_and(|s| s.meta.last_log_id.index > 50), "caught up by snapshot");

    for (_, (node, _)) in std::mem::take(&mut c.nodes) {
        node.shutdown().await.expect("shutdown");
    }
}
