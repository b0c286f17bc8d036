//! Discovery: a node configured with neither `members` nor `join` finds a running cluster by
//! its announcements and joins it (learner, then voter once caught up). Once through the
//! in-process bus (always), once over a real multicast socket on loopback (when this host
//! delivers multicast there; otherwise that test says so and stops early).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use common::{config_for, eventually, free_addr, TestCluster};
use raft_client::api::{MemberRole, RoleView};
use raft_client::Client;
use raft_node::config::{MemberConfig, NodeConfig, StorageKind};
use raft_node::discovery::{Announcement, DiscoveryChannel, MemoryBus, MulticastChannel};
use raft_node::{Node, StartError};

fn with_discovery(c: &mut NodeConfig, group: Option<SocketAddr>) {
    c.discovery.enabled = true;
    c.discovery.interval_ms = 100;
    c.discovery.listen_ms = 5_000;
    if let Some(group) = group {
        c.discovery.group = group;
    }
}

/// A config for node 4 with neither members nor join: discovery only.
fn newcomer(cluster: &TestCluster, group: Option<SocketAddr>) -> (MemberConfig, NodeConfig) {
    let me = MemberConfig { id: 4, raft_addr: free_addr(), client_addr: free_addr() };
    let mut config = config_for(&me, Vec::new(), cluster.dir.path(), StorageKind::Rocks);
    config.cluster = cluster.configs[0].cluster.clone();
    with_discovery(&mut config, group);
    assert!(config.members.is_empty() && config.join.is_empty());
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    (me, config)
}

async fn metrics_of(addr: SocketAddr) -> String {
    common::plain_http()
        .build()
        .unwrap()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn discovery_count(metrics: &str, outcome: &str) -> u64 {
    let prefix = format!("raft_discovery_datagrams_total{{outcome=\"{outcome}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok()).unwrap_or(0)
}

/// Node 4 becomes a voter, has the cluster's keys and applies a later write.
async fn check_joined(cluster: &TestCluster, me: &MemberConfig, keys: u64) {
    let client = cluster.client();
    eventually("node 4 to become a voter", || async {
        let members = client.members().await.unwrap();
        members.members.iter().any(|m| m.id == 4 && m.role == MemberRole::Voter) && !members.joint
    })
    .await;
    let mine = Client::new([me.client_addr.to_string()], Default::default()).unwrap();
    eventually("node 4 to catch up", || async {
        mine.status_of(&mine.endpoints()[0])
            .await
            .map(|s| s.keys == keys && s.role == RoleView::Follower)
            .unwrap_or(false)
    })
    .await;
    client.put("after", "join").await.unwrap();
    eventually("node 4 to apply a later write", || async {
        mine.get("after", Some(raft_client::api::Consistency::Local)).await.ok().flatten().is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_only_discovery_joins_through_the_in_process_bus() {
    let bus = MemoryBus::default();
    let cluster = TestCluster::start_on(3, StorageKind::Mem, |c| with_discovery(c, None), Some(&bus)).await;
    let client = cluster.client();
    for i in 0..20 {
        client.put(&format!("k{i}"), "v").await.unwrap();
    }
    // Noise on the bus: another cluster, junk, an oversized datagram. Nothing breaks.
    let noise = bus.channel();
    let stranger =
        Announcement { cluster: "elsewhere".into(), id: 9, raft_addr: free_addr(), client_addr: free_addr() };
    noise.send(&stranger.encode().unwrap()).await.unwrap();
    noise.send(b"RNDA\x01garbage").await.unwrap();
    noise.send(&[0u8; 4096]).await.unwrap();

    let (me, config) = newcomer(&cluster, None);
    let joined = Node::start_with_discovery_channel(config.clone(), bus.channel()).await.unwrap();
    check_joined(&cluster, &me, 20).await;

    // Node 1 counted the noise and kept announcing; node 4 heard the members and, once a
    // member itself, announces too.
    let one = metrics_of(cluster.configs[0].client_addr).await;
    assert_eq!(discovery_count(&one, "other_cluster"), 1, "{one}");
    assert_eq!(discovery_count(&one, "malformed"), 1, "{one}");
    assert_eq!(discovery_count(&one, "oversized"), 1, "{one}");
    assert!(discovery_count(&one, "sent") > 0, "{one}");
    let four = metrics_of(me.client_addr).await;
    assert!(discovery_count(&four, "member") >= 3, "{four}");
    eventually("node 4 to announce itself", || async {
        discovery_count(&metrics_of(me.client_addr).await, "sent") > 0
    })
    .await;

    // Restarted from its data dir, node 4 finds its peers again by discovery and follows.
    joined.shutdown().await;
    let restarted = Node::start_with_discovery_channel(config, bus.channel()).await.unwrap();
    client.put("after-restart", "v").await.unwrap();
    let mine = Client::new([me.client_addr.to_string()], Default::default()).unwrap();
    eventually("the restarted node 4 to apply a new write", || async {
        mine.get("after-restart", Some(raft_client::api::Consistency::Local)).await.ok().flatten().is_some()
    })
    .await;
    restarted.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_that_hears_nobody_of_its_cluster_gives_up() {
    let bus = MemoryBus::default();
    let cluster = TestCluster::start_on(1, StorageKind::Mem, |c| with_discovery(c, None), Some(&bus)).await;
    let (_, mut config) = newcomer(&cluster, None);
    config.cluster = "another".into();
    config.discovery.listen_ms = 500;
    let started = std::time::Instant::now();
    let err = Node::start_with_discovery_channel(config, bus.channel()).await.unwrap_err();
    assert!(matches!(err, StartError::NothingDiscovered { .. }), "{err}");
    assert!(err.to_string().contains("\"another\""), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The running node heard nothing from it (a listening node does not announce).
    let one = metrics_of(cluster.configs[0].client_addr).await;
    assert_eq!(discovery_count(&one, "other_cluster"), 0, "{one}");
    cluster.shutdown().await;
}

/// A fresh multicast group port on which two sockets on loopback hear each other, or `None`
/// (with a note) when this host does not deliver multicast on loopback.
async fn loopback_group() -> Option<SocketAddrV4> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 1), port);
    let opened = (
        MulticastChannel::open(group, Ipv4Addr::LOCALHOST),
        MulticastChannel::open(group, Ipv4Addr::LOCALHOST),
    );
    let (a, b) = match opened {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("SKIPPED: no multicast on loopback here ({e}); the bus test covered the join");
            return None;
        }
    };
    a.send(b"probe").await.ok()?;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(2), b.recv(&mut buf)).await {
        Ok(Ok(5)) => Some(group),
        other => {
            eprintln!("SKIPPED: multicast on loopback does not deliver here ({other:?})");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_only_discovery_joins_over_real_multicast_on_loopback() {
    let Some(group) = loopback_group().await else { return };
    eprintln!("exercised on a real multicast socket: {group} on 127.0.0.1");
    let group = SocketAddr::V4(group);
    let cluster_id = format!("mc-{}", group.port());
    let cluster = TestCluster::start_with(3, StorageKind::Rocks, |c| {
        c.cluster = cluster_id.clone();
        with_discovery(c, Some(group));
    })
    .await;
    let client = cluster.client();
    for i in 0..10 {
        client.put(&format!("k{i}"), "v").await.unwrap();
    }
    let (me, config) = newcomer(&cluster, Some(group));
    let joined = Node::start(config).await.unwrap();
    check_joined(&cluster, &me, 10).await;
    let four = metrics_of(me.client_addr).await;
    assert!(discovery_count(&four, "member") >= 3, "{four}");
    joined.shutdown().await;
    cluster.shutdown().await;
}
