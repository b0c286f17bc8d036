//! The operator CLI (`raftctl`, also `raft-node ctl`) against an in-process 3-node cluster:
//! every command, tables and `--json`.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use clap::Parser;
use common::{config_for, eventually, free_addr, TestCluster};
use raft_client::cli::{execute, Cli};
use raft_node::config::{MemberConfig, StorageKind};

/// Runs one command; returns (exit code, stdout, stderr).
async fn ctl(cluster: &TestCluster, args: &[&str]) -> (i32, String, String) {
    let endpoints = cluster.endpoints().join(",");
    let mut argv = vec!["raftctl", "--endpoints", &endpoints];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = execute(&cli, &mut out, &mut err).await.unwrap();
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

async fn ok(cluster: &TestCluster, args: &[&str]) -> String {
    let (code, out, err) = ctl(cluster, args).await;
    assert_eq!(code, 0, "{args:?} failed: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ctl_command_works_against_a_cluster() {
    let cluster = TestCluster::start(3, StorageKind::Mem).await;
    let leader = cluster.leader().await;

    let status = ok(&cluster, &["status"]).await;
    assert!(status.contains("leader"), "{status}");
    assert!(ok(&cluster, &["leader"]).await.contains(&leader.to_string()));

    ok(&cluster, &["put", "greeting", "hello"]).await;
    assert!(ok(&cluster, &["get", "greeting"]).await.contains("hello"));
    assert!(ok(&cluster, &["get", "greeting", "--consistency", "local"]).await.contains("hello"));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&cluster, &["--json", "get", "greeting"]).await).unwrap();
    assert_eq!((json["value"].as_str(), json["version"].as_u64()), (Some("hello"), Some(1)));

    ok(&cluster, &["cas", "greeting", "--expect-version", "1", "--value", "hi"]).await;
    let (code, _, err) = ctl(&cluster, &["cas", "greeting", "--expect-version", "1", "--value", "no"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("cas_failed") && err.contains("\"hi\""), "{err}");
    ok(&cluster, &["cas", "fresh", "--expect-absent", "--value", "1"]).await;
    ok(&cluster, &["put", "dir/a", "1"]).await;
    ok(&cluster, &["put", "dir/b", "2"]).await;
    let list = ok(&cluster, &["list", "dir/"]).await;
    assert!(list.contains("dir/a") && list.contains("dir/b") && !list.contains("greeting"), "{list}");
    ok(&cluster, &["del", "dir/a"]).await;
    let (code, _, err) = ctl(&cluster, &["get", "dir/a"]).await;
    assert_ne!(code, 0, "a missing key is an error exit");
    assert!(err.contains("not_found") || err.contains("not found"), "{err}");

    let log = ok(&cluster, &["log", "--from", "1", "--limit", "50"]).await;
    assert!(log.contains("put \"greeting\""), "{log}");
    let members = ok(&cluster, &["members"]).await;
    assert!(members.contains("voter"), "{members}");

    ok(
        &cluster,
        &[
            "services",
            "register",
            "web",
            "--type",
            "http",
            "--node",
            "id=a,addr=10.0.0.1:80,priority=3",
            "--node",
            "id=b,addr=10.0.0.2:80,priority=1",
        ],
    )
    .await;
    assert!(ok(&cluster, &["services", "list"]).await.contains("web"));
    assert!(ok(&cluster, &["services", "get", "web"]).await.contains("10.0.0.2:80"));
    ok(&cluster, &["services", "down", "web", "a"]).await;
    eventually("the down mark to be applied everywhere", || async {
        let out = ok(&cluster, &["--json", "services", "get", "web"]).await;
        out.contains("\"down\":true") || out.contains("\"down\": true")
    })
    .await;
    for _ in 0..5 {
        assert!(ok(&cluster, &["balance", "web"]).await.contains("10.0.0.2:80"));
    }
    ok(&cluster, &["services", "up", "web", "a"]).await;
    ok(&cluster, &["services", "remove", "web"]).await;

    let target = (1..=3).find(|&id| id != leader).unwrap();
    ok(&cluster, &["transfer-leader", &target.to_string()]).await;
    eventually("the target to lead", || async { cluster.leader().await == target }).await;

    // A learner added by hand (the node process is started for it), then promoted and removed.
    let me = MemberConfig { id: 4, raft_addr: free_addr(), client_addr: free_addr() };
    let mut config = config_for(&me, Vec::new(), cluster.dir.path(), StorageKind::Mem);
    config.join = vec![cluster.endpoint(target)];
    config.join_as_voter = false;
    let fourth = raft_node::Node::start(config).await.unwrap();
    eventually("node 4 to be a learner", || async {
        ok(&cluster, &["--json", "members"]).await.contains("\"learner\"")
    })
    .await;
    // Refused (`not_caught_up`) until the new learner has caught up.
    eventually("node 4 to be promoted", || async {
        ctl(&cluster, &["members", "promote", "4"]).await.0 == 0
    })
    .await;
    eventually("node 4 to be a voter", || async {
        !ok(&cluster, &["--json", "members"]).await.contains("\"learner\"")
    })
    .await;
    ok(&cluster, &["members", "remove", "4"]).await;
    let (code, _, err) = ctl(&cluster, &["members", "remove", "4"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("not_found"), "{err}");
    fourth.shutdown().await;
    cluster.shutdown().await;
}
