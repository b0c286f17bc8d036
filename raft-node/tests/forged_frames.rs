//! Forged Raft frames over a raw socket, as an attacker who reaches the Raft port of a node
//! configured with plaintext peers would send them: the node drops what no peer may send
//! (absurd terms, malformed entries, garbage), takes only what Raft allows an authenticated
//! peer, and the cluster keeps serving. (With the default `[tls]`, a connection without the
//! cluster's certificate gets nowhere: `binary::a_plaintext_peer_gets_nowhere_with_the_default_set_up`.)

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::TestCluster;
use raft_core::wire::{encode_frame, WireMessage, WIRE_VERSION};
use raft_core::{AppendResult, Entry, EntryPayload, LogId, Message, Payload, TERM_LIMIT};
use raft_node::config::StorageKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn frame(message: &WireMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(message, raft_core::wire::DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
    out
}

/// A connection to `addr` that says it is node `claimed` of cluster `test`.
async fn pose_as(addr: std::net::SocketAddr, claimed: u64) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let hello = WireMessage::Hello { version: WIRE_VERSION, cluster_id: "test".into(), node_id: claimed };
    stream.write_all(&frame(&hello)).await.unwrap();
    let mut ack = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut ack)).await.unwrap().unwrap();
    assert!(n > 0, "the plaintext handshake was answered");
    stream
}

async fn dropped_messages(cluster: &TestCluster, id: u64) -> u64 {
    let url = format!("http://{}/metrics", cluster.endpoint(id));
    let text = common::plain_http().build().unwrap().get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("raft_protocol_dropped_messages "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no dropped-messages metric in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_frames_are_dropped_or_taken_as_raft_allows_and_the_cluster_serves_on() {
    let cluster = TestCluster::start(3, StorageKind::Mem).await;
    let client = cluster.client();
    client.put("before", "1").await.unwrap();
    let leader = cluster.leader().await;
    let follower = cluster.follower().await;
    let status = cluster.client_of(leader).status().await.unwrap();
    let term = status.term;
    let leader_raft = cluster.configs[(leader - 1) as usize].raft_addr;
    let follower_raft = cluster.configs[(follower - 1) as usize].raft_addr;
    let raft = |from: u64, to: u64, term: u64, payload: Payload| {
        frame(&WireMessage::Raft(Message { from, to, term, payload }))
    };

    // Each forged frame goes on a fresh connection: the real peer's reconnection takes over
    // the claimed id and closes the forger's. A frame counts as dropped once the target's
    // counter moves (a send cut off by that takeover is sent again).
    async fn send_until_dropped(
        cluster: &TestCluster,
        target: u64,
        addr: std::net::SocketAddr,
        claimed: u64,
        bytes: &[u8],
    ) {
        for _ in 0..20 {
            let before = dropped_messages(cluster, target).await;
            let mut stream = pose_as(addr, claimed).await;
            if stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok() {
                for _ in 0..20 {
                    if dropped_messages(cluster, target).await > before {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
        panic!("node {target} never counted the forged frame as dropped");
    }

    // To the leader, posing as a follower: votes with absurd terms (one with u64::MAX once
    // made the leader adopt it and panic at its next election).
    let vote =
        Payload::RequestVoteResponse { pre_vote: false, granted: true, vouches: true, witnesses: None };
    for forged in [u64::MAX, u64::MAX - 1, TERM_LIMIT + 1_000_000] {
        send_until_dropped(
            &cluster,
            leader,
            leader_raft,
            follower,
            &raft(follower, leader, forged, vote.clone()),
        )
        .await;
    }
    // An acknowledgement far past the leader's log, in the current term (an authenticated peer
    // could send it; it must not commit what the leader does not hold).
    let ack = Payload::AppendEntriesResponse {
        result: AppendResult::Success { match_index: u64::MAX },
        read_seq: 0,
    };
    let mut to_leader = pose_as(leader_raft, follower).await;
    let _ = to_leader.write_all(&raft(follower, leader, term, ack)).await;

    // To a follower, posing as another node: entries that do not follow their own prev, and
    // a term past the limit with a commit index at the end of the range.
    let other = (1..=3).find(|&id| id != leader && id != follower).unwrap();
    let bad_entries = Payload::AppendEntries {
        prev_log_id: LogId::new(term, 1),
        entries: vec![Entry { term, index: 7, payload: EntryPayload::Command(b"forged".to_vec().into()) }],
        leader_commit: u64::MAX,
        read_seq: 0,
    };
    send_until_dropped(&cluster, follower, follower_raft, other, &raft(other, follower, term, bad_entries))
        .await;
    let absurd = Payload::AppendEntries {
        prev_log_id: LogId::new(0, 0),
        entries: vec![],
        leader_commit: u64::MAX,
        read_seq: 0,
    };
    send_until_dropped(
        &cluster,
        follower,
        follower_raft,
        other,
        &raft(other, follower, TERM_LIMIT + 1, absurd),
    )
    .await;
    // Then garbage: a length no frame may have.
    let mut to_follower = pose_as(follower_raft, other).await;
    let _ = to_follower.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Nothing absurd was adopted, every absurd message was counted, and the cluster serves on.
    assert!(dropped_messages(&cluster, leader).await >= 3);
    assert!(dropped_messages(&cluster, follower).await >= 2);
    client.put("after", "2").await.unwrap();
    assert_eq!(client.get("before", None).await.unwrap().map(|kv| kv.value), Some("1".into()));
    let statuses = cluster.wait_converged().await;
    for s in &statuses {
        assert!(s.term < TERM_LIMIT, "node {} adopted term {}", s.id, s.term);
        assert!(s.fatal.is_none(), "node {} stopped: {:?}", s.id, s.fatal);
        assert!(s.commit_index <= s.last_log_index, "node {} committed past its log", s.id);
    }
    cluster.shutdown().await;
}
