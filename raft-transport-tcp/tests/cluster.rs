//! The TCP transport: the transport conformance suite, and a 3-node Raft cluster over TCP
//! (10 000 concurrent proposals, a follower stopped and restarted on the same port), and TCP
//! specifics: source address, queueing while a peer is down, counters, start-up errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use raft_core::testing::cluster_suite;
use raft_core::testing::transport_suite::{self, Capabilities, RawTcp, TransportFactory};
use raft_core::wire::{encode_frame, FrameDecoder, WireMessage, WIRE_VERSION};
use raft_core::{Message, NodeId, Payload, SendError, Transport, TransportClosed};
use raft_storage_mem::MemStorage;
use raft_transport_tcp::{TcpConfig, TcpError, TcpTransport, CLUSTER_ID_BYTES_MAX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLUSTER_ID: &str = "suite";

/// TCP transports with short timeouts, so the timeout cases run quickly.
struct TcpFactory;

impl TcpFactory {
    fn config(id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> TcpConfig {
        let peers = addrs.iter().filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
        TcpConfig {
            queue_max: 1_024,
            handshake_timeout: Duration::from_millis(800),
            frame_timeout: Duration::from_millis(800),
            max_inbound_connections: 6,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
            ..TcpConfig::new(id, CLUSTER_ID, addrs[&id], peers)
        }
    }
}

#[async_trait]
impl TransportFactory for TcpFactory {
    fn capabilities(&self) -> Capabilities {
        let config = Self::config(1, &BTreeMap::from([(1, "127.0.0.1:1".parse().expect("addr"))]));
        Capabilities {
            max_frame_bytes: Some(config.max_frame_bytes),
            raw_tcp: Some(RawTcp {
                cluster_id: CLUSTER_ID.to_owned(),
                handshake_timeout: config.handshake_timeout,
                frame_timeout: config.frame_timeout,
                max_inbound_connections: config.max_inbound_connections,
            }),
        }
    }

    async fn start(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> Arc<dyn Transport> {
        Arc::new(TcpTransport::start(Self::config(id, addrs)).await.expect("transport starts"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_passes_the_conformance_suite() {
    transport_suite::run_all(&TcpFactory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_tcp_and_a_restarted_node_catches_up() {
    cluster_suite::run_all(&TcpFactory, |_| Arc::new(MemStorage::default())).await;
}

// ---------------------------------------------------------------------------------------------
// TCP specifics: source address, queueing while a peer is down, counters, start-up errors.

/// A message from `from` to `to` numbered `seq`.
fn numbered(from: NodeId, to: NodeId, seq: u64) -> Message {
    Message { from, to, term: 1, payload: Payload::ReadIndexRequest { id: seq } }
}

/// How long a test waits for a condition before failing.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// Receives exactly `n` messages within [`WAIT_MAX`].
async fn recv_exactly(t: &TcpTransport, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while got.len() < n {
        let want = n - got.len();
        match tokio::time::timeout_at(deadline, t.recv(&mut got, want)).await {
            Ok(Ok(_)) => {}
            other => panic!("{} of {n} messages arrived: {other:?}", got.len()),
        }
    }
    got
}

/// Polls `condition` until it holds; fails after [`WAIT_MAX`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn start(id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> TcpTransport {
    TcpTransport::start(TcpFactory::config(id, addrs)).await.expect("transport starts")
}

async fn write_frame(stream: &mut TcpStream, message: &WireMessage) {
    let mut out = Vec::new();
    encode_frame(message, u32::MAX, &mut out).expect("encode");
    stream.write_all(&out).await.expect("write");
}

async fn read_frame(stream: &mut TcpStream) -> Option<WireMessage> {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    loop {
        if let Some(m) = decoder.decode(&mut buf).expect("valid frame") {
            return Some(m);
        }
        match tokio::time::timeout(WAIT_MAX, stream.read_buf(&mut buf)).await.expect("no frame in time") {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_connections_leave_from_the_listen_ip_and_say_hello() {
    let addrs = transport_suite::free_loopback_addrs(2);
    // Node 2 is a raw listener on 127.0.0.1; node 1 listens on 127.0.0.2 (also loopback).
    let listener = TcpListener::bind(addrs[&2]).await.expect("bind");
    let own = SocketAddr::new("127.0.0.2".parse().expect("ip"), addrs[&1].port());
    let config = TcpConfig { listen: own, ..TcpFactory::config(1, &addrs) };
    let node = TcpTransport::start(config).await.expect("transport starts");
    let (mut stream, from) =
        tokio::time::timeout(WAIT_MAX, listener.accept()).await.expect("node 1 connects").expect("accept");
    assert_eq!(from.ip(), own.ip(), "the connection must leave from the node's listen IP");
    assert_ne!(from.port(), own.port(), "outbound connections use their own port");
    let hello = read_frame(&mut stream).await;
    assert_eq!(
        hello,
        Some(WireMessage::Hello { version: WIRE_VERSION, cluster_id: CLUSTER_ID.into(), node_id: 1 })
    );
    write_frame(&mut stream, &WireMessage::HelloAck { version: WIRE_VERSION, node_id: 2 }).await;
    node.send(numbered(1, 2, 5)).expect("queued");
    assert_eq!(read_frame(&mut stream).await, Some(WireMessage::Raft(numbered(1, 2, 5))));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_while_the_peer_is_down_arrive_in_order_when_it_comes_up() {
    let addrs = transport_suite::free_loopback_addrs(2);
    let a = start(1, &addrs).await;
    for seq in 0..100 {
        a.send(numbered(1, 2, seq)).expect("queued");
    }
    // The queue is bounded: past `queue_max` messages are dropped and counted.
    let queue_max = TcpFactory::config(1, &addrs).queue_max as u64;
    let mut full = 0;
    for seq in 100..queue_max + 100 {
        if let Err(SendError::QueueFull(2)) = a.send(numbered(1, 2, seq)) {
            full += 1;
        }
    }
    assert!(full >= 100, "only {full} of {} messages over the bound were refused", queue_max + 100);
    assert_eq!(a.stats().dropped_queue_full, full);
    let b = start(2, &addrs).await;
    let got = recv_exactly(&b, (queue_max + 100 - full) as usize).await;
    let seqs: Vec<u64> = got
        .iter()
        .map(|m| match m.payload {
            Payload::ReadIndexRequest { id } => id,
            _ => u64::MAX,
        })
        .collect();
    assert_eq!(seqs, (0..queue_max + 100 - full).collect::<Vec<_>>(), "queued messages arrive in order");
    wait_until("node 1 counts the messages sent", || a.stats().sent == queue_max + 100 - full).await;
    assert_eq!(b.stats().received, queue_max + 100 - full);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_record_refusals_bad_frames_misaddressed_messages_and_reconnects() {
    // Node 3 does not run: raw sockets speak for it.
    let addrs = transport_suite::free_loopback_addrs(3);
    let a = start(1, &addrs).await;
    let b = start(2, &addrs).await;
    b.send(numbered(2, 1, 1)).expect("queued");
    recv_exactly(&a, 1).await;

    let mut raw = TcpStream::connect(addrs[&1]).await.expect("connect");
    write_frame(
        &mut raw,
        &WireMessage::Hello { version: WIRE_VERSION, cluster_id: "other".into(), node_id: 3 },
    )
    .await;
    assert!(matches!(read_frame(&mut raw).await, Some(WireMessage::Refused { .. })));
    wait_until("a refusal is counted", || a.stats().refused_handshakes == 1).await;

    let mut raw = TcpStream::connect(addrs[&1]).await.expect("connect");
    write_frame(
        &mut raw,
        &WireMessage::Hello { version: WIRE_VERSION, cluster_id: CLUSTER_ID.into(), node_id: 3 },
    )
    .await;
    assert!(matches!(read_frame(&mut raw).await, Some(WireMessage::HelloAck { .. })));
    write_frame(&mut raw, &WireMessage::Raft(numbered(3, 2, 1))).await;
    write_frame(&mut raw, &WireMessage::Raft(numbered(2, 1, 1))).await;
    raw.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    assert_eq!(read_frame(&mut raw).await, None, "closed after the oversized length");
    wait_until("a bad frame is counted", || a.stats().bad_frames == 1).await;
    assert_eq!(a.stats().dropped_misaddressed, 2);

    // Node 2 restarts: node 1 reconnects.
    b.shutdown().await;
    let b = start(2, &addrs).await;
    let mut arrived = false;
    for seq in 0..1_000 {
        let _ = a.send(numbered(1, 2, seq));
        let mut buf = Vec::new();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(20), b.recv(&mut buf, 64)).await {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "node 1 reconnected to the restarted node 2");
    assert!(a.stats().reconnects >= 1, "{:?}", a.stats());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_rejects_bad_configs_and_a_busy_port() {
    let addrs = transport_suite::free_loopback_addrs(2);
    let config = TcpFactory::config(1, &addrs);
    let mut with_self = config.clone();
    with_self.peers.insert(1, addrs[&1]);
    for bad in [
        with_self,
        TcpConfig { queue_max: 0, ..config.clone() },
        TcpConfig { max_frame_bytes: 10, ..config.clone() },
        TcpConfig {
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(1),
            ..config.clone()
        },
        TcpConfig { handshake_timeout: Duration::ZERO, ..config.clone() },
        TcpConfig { cluster_id: String::new(), ..config.clone() },
        TcpConfig { cluster_id: "x".repeat(CLUSTER_ID_BYTES_MAX + 1), ..config.clone() },
    ] {
        assert!(matches!(TcpTransport::start(bad).await, Err(TcpError::InvalidConfig(_))));
    }
    let first = TcpTransport::start(config.clone()).await.expect("starts");
    match TcpTransport::start(config).await {
        Err(TcpError::Listen { addr, .. }) => assert_eq!(addr, addrs[&1]),
        other => panic!("a second transport on the same port: {other:?}"),
    }
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wakes_a_pending_recv_closes_the_port_and_is_idempotent() {
    let addrs = transport_suite::free_loopback_addrs(2);
    let a = Arc::new(start(1, &addrs).await);
    let pending = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            a.recv(&mut buf, 8).await
        })
    };
    tokio::task::yield_now().await;
    a.shutdown().await;
    a.shutdown().await;
    let r = tokio::time::timeout(WAIT_MAX, pending).await.expect("recv returns").expect("task");
    assert_eq!(r, Err(TransportClosed));
    assert_eq!(a.send(numbered(1, 2, 1)), Err(SendError::Closed));
    assert!(TcpStream::connect(addrs[&1]).await.is_err(), "the listener is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_before_the_handshake_closes_the_connection() {
    let addrs = transport_suite::free_loopback_addrs(2);
    let a = start(1, &addrs).await;
    // A Hello padded past the handshake frame limit (far below max_frame_bytes).
    let hello = WireMessage::Hello { version: WIRE_VERSION, cluster_id: "x".repeat(8 * 1024), node_id: 2 };
    let mut raw = TcpStream::connect(addrs[&1]).await.expect("connect");
    let mut out = Vec::new();
    encode_frame(&hello, u32::MAX, &mut out).expect("encode");
    raw.write_all(&out[..4]).await.expect("write the length");
    assert_eq!(read_frame(&mut raw).await, None, "closed on the length alone");
    wait_until("a bad frame is counted", || a.stats().bad_frames == 1).await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_from_the_same_node_replaces_the_older_one() {
    let addrs = transport_suite::free_loopback_addrs(2);
    let a = start(1, &addrs).await; // node 2 does not run: raw sockets speak for it
    let hello = WireMessage::Hello { version: WIRE_VERSION, cluster_id: CLUSTER_ID.into(), node_id: 2 };
    let mut old = TcpStream::connect(addrs[&1]).await.expect("connect");
    write_frame(&mut old, &hello).await;
    assert!(matches!(read_frame(&mut old).await, Some(WireMessage::HelloAck { .. })));
    let mut new = TcpStream::connect(addrs[&1]).await.expect("connect");
    write_frame(&mut new, &hello).await;
    assert!(matches!(read_frame(&mut new).await, Some(WireMessage::HelloAck { .. })));
    assert_eq!(read_frame(&mut old).await, None, "the older connection is closed");
    write_frame(&mut new, &WireMessage::Raft(numbered(2, 1, 9))).await;
    assert_eq!(recv_exactly(&a, 1).await, vec![numbered(2, 1, 9)]);
    a.shutdown().await;
}
