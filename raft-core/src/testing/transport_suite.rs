//! The conformance suite every [`Transport`] implementation runs with one call:
//! `raft_core::testing::transport_suite::run_all(&MyFactory).await`.
//!
//! The suite starts small clusters on free loopback ports through a [`TransportFactory`]. The
//! generic cases (delivery and order, large messages, all-to-all traffic, a peer that is down
//! or restarts) need only the [`Transport`] trait. Transports that speak the TCP wire format
//! of [`crate::wire`] declare [`RawTcp`] in their [`Capabilities`]; the suite then also opens
//! raw sockets to them and sends hostile input (huge length prefixes, garbage, truncated
//! frames, slow-drip senders, unfinished handshakes, foreign clusters and nodes, too many
//! connections). A failing case panics with the case's name and what was wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::message::{Message, Payload};
use crate::transport::{PeerError, SendError, Transport};
use crate::types::{Entry, EntryPayload, LogId, NodeId};
use crate::wire::{encode_frame, FrameDecoder, RefusalReason, WireMessage, WIRE_VERSION};

/// How long the suite waits for a message or a condition before failing.
const WAIT_MAX: Duration = Duration::from_secs(10);

/// What a transport under test supports, which decides the cases that run.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// The hard limit on an encoded message, if the transport has one: a message just under
    /// it must arrive, a message over it must not.
    pub max_frame_bytes: Option<u32>,
    /// Set when the transport speaks the TCP wire format of [`crate::wire`] on the addresses
    /// it is given: the raw-socket cases run.
    pub raw_tcp: Option<RawTcp>,
}

/// The settings of a TCP transport that the raw-socket cases need to know.
#[derive(Debug, Clone)]
pub struct RawTcp {
    /// The cluster id the transports were started with.
    pub cluster_id: String,
    /// How long an acceptor waits for a handshake to complete.
    pub handshake_timeout: Duration,
    /// How long an acceptor waits for a started frame to complete.
    pub frame_timeout: Duration,
    /// The most inbound connections one transport keeps open.
    pub max_inbound_connections: usize,
    /// How raw connections reach the transport: `None` for plain TCP, or a dialer that wraps
    /// a TCP connection (in TLS, say) and authenticates as node [`GHOST`].
    pub dialer: Option<Arc<dyn RawDialer>>,
}

/// A raw connection's byte stream.
pub trait RawStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> RawStream for T {}

/// Opens raw connections for the hostile-input cases over a secured wire (TLS over TCP).
#[async_trait]
pub trait RawDialer: Send + Sync + std::fmt::Debug {
    /// Connects to node `to` at `addr` as node [`GHOST`] and returns the secured stream, over
    /// which the cases then speak the wire format.
    async fn dial(&self, to: NodeId, addr: SocketAddr) -> std::io::Result<Box<dyn RawStream>>;
}

/// Starts transports for the suite.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    /// What the transports support.
    fn capabilities(&self) -> Capabilities;

    /// Starts the transport of node `id`, listening on `addrs[&id]`, whose peers are the other
    /// entries of `addrs`. Called again with the same arguments to restart a node after its
    /// previous transport was shut down.
    async fn start(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> Arc<dyn Transport>;
}

/// Runs every case of the suite against transports made by `factory`.
pub async fn run_all(factory: &impl TransportFactory) {
    let caps = factory.capabilities();
    delivery_keeps_per_peer_order(factory).await;
    messages_near_the_frame_limit(factory, &caps).await;
    five_nodes_all_to_all(factory).await;
    send_to_a_down_peer_returns_promptly(factory).await;
    traffic_resumes_after_a_peer_restarts(factory).await;
    peers_change_at_runtime(factory).await;
    if let Some(raw) = &caps.raw_tcp {
        huge_length_prefix_closes_the_connection(factory, raw).await;
        garbage_closes_the_connection(factory, raw).await;
        truncated_frame_then_close(factory, raw).await;
        slow_drip_sender_is_cut_off(factory, raw).await;
        unfinished_handshake_is_cut_off(factory, raw).await;
        wrong_cluster_is_refused(factory, raw).await;
        unknown_node_is_refused(factory, raw).await;
        unsupported_version_is_refused(factory, raw).await;
        spoofed_sender_or_receiver_is_dropped(factory, raw).await;
        connection_limit_holds(factory, raw).await;
    }
}

/// Ports the suite picks from: below Linux's default ephemeral range (32768-60999), so that an
/// outbound connection's local port (bound to port 0) never takes a port reserved for a node
/// between its reservation and its transport's start.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Reserves `n` free loopback addresses for nodes `1..=n`: ports outside the ephemeral range
/// (see [`TEST_PORTS`]), picked at random and checked free. For tests of network transports.
pub fn free_loopback_addrs(n: u64) -> BTreeMap<NodeId, SocketAddr> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut rng = crate::rng::SeededRng::new(seed);
    let mut held = Vec::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=n {
        let mut attempts = 0;
        let listener = loop {
            attempts += 1;
            assert!(attempts < 1_000, "no free loopback port in {TEST_PORTS:?}");
            let port = rng.range(u64::from(TEST_PORTS.start), u64::from(TEST_PORTS.end)) as u16;
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                break l;
            }
        };
        addrs.insert(id, listener.local_addr().expect("local addr"));
        held.push(listener);
    }
    addrs
}

/// Nodes 1 and 2 send each other small messages for `duration` (both sending and receiving,
/// ignoring send errors); returns how many messages node 1 and node 2 received. For tests of
/// refusals (both 0) and of their controls.
pub async fn exchange_for(one: &dyn Transport, two: &dyn Transport, duration: Duration) -> (usize, usize) {
    let (mut got1, mut got2) = (0, 0);
    let until = Instant::now() + duration;
    let mut buf = Vec::new();
    while Instant::now() < until {
        let _ = one.send(message(1, 2, 0));
        let _ = two.send(message(2, 1, 0));
        buf.clear();
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), one.recv(&mut buf, 100)).await {
            got1 += n;
        }
        buf.clear();
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), two.recv(&mut buf, 100)).await {
            got2 += n;
        }
    }
    (got1, got2)
}

/// A running cluster of transports.
struct Cluster {
    addrs: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, Arc<dyn Transport>>,
}

impl Cluster {
    async fn start(factory: &impl TransportFactory, n: u64) -> Self {
        let addrs = free_loopback_addrs(n);
        let mut nodes = BTreeMap::new();
        for id in addrs.keys() {
            nodes.insert(*id, factory.start(*id, &addrs).await);
        }
        Self { addrs, nodes }
    }

    /// Starts nodes `1..=n` whose peers also include [`GHOST`], which does not run.
    async fn start_with_ghost(factory: &impl TransportFactory, n: u64) -> Self {
        let mut addrs = free_loopback_addrs(n + 1);
        if let Some(ghost) = addrs.remove(&(n + 1)) {
            addrs.insert(GHOST, ghost);
        }
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(id, factory.start(id, &addrs).await);
        }
        Self { addrs, nodes }
    }

    fn node(&self, id: NodeId) -> &Arc<dyn Transport> {
        &self.nodes[&id]
    }

    async fn shutdown(self) {
        for t in self.nodes.values() {
            t.shutdown().await;
        }
    }

    /// Checks that `from` and `to` exchange a message both ways, and that nothing else arrives
    /// first (e.g. remains of a hostile connection).
    async fn assert_works(&self, case: &str, a: NodeId, b: NodeId) {
        for (from, to) in [(a, b), (b, a)] {
            let seq = 1_000_000 + from;
            send_retrying(self.node(from), message(from, to, seq)).await;
            let got = recv_n(self.node(to), 1, &format!("{case}: {from}->{to}")).await;
            assert_eq!(got[0], message(from, to, seq), "{case}: {from}->{to} after the test");
        }
    }
}

/// A small message from `from` to `to` numbered `seq`.
fn message(from: NodeId, to: NodeId, seq: u64) -> Message {
    Message { from, to, term: 1, payload: Payload::ReadIndexRequest { id: seq } }
}

fn seq_of(m: &Message) -> u64 {
    match m.payload {
        Payload::ReadIndexRequest { id } => id,
        _ => u64::MAX,
    }
}

/// An AppendEntries whose entries hold about `bytes` bytes in total.
fn large_append(from: NodeId, to: NodeId, bytes: usize) -> Message {
    const ENTRY_BYTES: usize = 64 * 1024;
    let mut entries = Vec::new();
    let mut left = bytes;
    let mut index = 1;
    while left > 0 {
        let size = left.min(ENTRY_BYTES);
        let data: Vec<u8> = (0..size).map(|i| (i as u64 * 31 + index) as u8).collect();
        entries.push(Entry { term: 1, index, payload: EntryPayload::Command(Bytes::from(data)) });
        left -= size;
        index += 1;
    }
    Message {
        from,
        to,
        term: 1,
        payload: Payload::AppendEntries {
            prev_log_id: LogId::new(0, 0),
            entries,
            leader_commit: 0,
            read_seq: 0,
        },
    }
}

/// Sends `m`, retrying while the peer's queue is full.
async fn send_retrying(t: &Arc<dyn Transport>, m: Message) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match t.send(m.clone()) {
            Ok(()) => return,
            Err(SendError::QueueFull(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => panic!("send to {} failed: {e}", m.to),
        }
    }
}

/// Receives exactly `n` messages (fails on fewer within [`WAIT_MAX`]).
async fn recv_n(t: &Arc<dyn Transport>, n: usize, case: &str) -> Vec<Message> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while got.len() < n {
        let want = n - got.len();
        match tokio::time::timeout_at(deadline, t.recv(&mut got, want)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{case}: recv failed after {} of {n} messages: {e}", got.len()),
            Err(_) => panic!("{case}: only {} of {n} messages arrived within {WAIT_MAX:?}", got.len()),
        }
    }
    got
}

/// [`recv_n`] on a task of its own.
fn spawn_recv(t: &Arc<dyn Transport>, n: usize, case: &'static str) -> tokio::task::JoinHandle<Vec<Message>> {
    let t = t.clone();
    tokio::spawn(async move { recv_n(&t, n, case).await })
}

/// Receives whatever arrives within `wait`.
async fn drain_for(t: &Arc<dyn Transport>, wait: Duration) -> Vec<Message> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, t.recv(&mut got, 64)).await {}
    got
}

/// Fails if a message arrives within `wait`.
async fn assert_nothing_arrives(t: &Arc<dyn Transport>, wait: Duration, case: &str) {
    let mut buf = Vec::new();
    if let Ok(r) = tokio::time::timeout(wait, t.recv(&mut buf, 16)).await {
        panic!("{case}: expected no message, got {r:?}: {buf:?}");
    }
}

async fn delivery_keeps_per_peer_order(factory: &impl TransportFactory) {
    let case = "delivery_keeps_per_peer_order";
    let cluster = Cluster::start(factory, 2).await;
    const N: u64 = 1_000;
    // Receivers run while the senders send: a transport may push back on a full inbox.
    let rx_b = spawn_recv(cluster.node(2), 2 * N as usize, case);
    let rx_a = spawn_recv(cluster.node(1), N as usize, case);
    let a = cluster.node(1).clone();
    let sender = tokio::spawn(async move {
        for seq in 0..N {
            send_retrying(&a, message(1, 2, seq)).await;
            send_retrying(&a, message(1, 2, seq)).await;
        }
    });
    // The same for the other direction, concurrently.
    for seq in 0..N {
        send_retrying(cluster.node(2), message(2, 1, seq)).await;
    }
    sender.await.expect("sender");
    let to_b = rx_b.await.expect("receiver");
    let to_a = rx_a.await.expect("receiver");
    let seqs: Vec<u64> = to_b.iter().map(seq_of).collect();
    let expected: Vec<u64> = (0..N).flat_map(|s| [s, s]).collect();
    assert_eq!(seqs, expected, "{case}: 1 -> 2 out of order or corrupted");
    assert!(to_b.iter().all(|m| m.from == 1 && m.to == 2), "{case}: wrong addresses");
    assert_eq!(to_a.iter().map(seq_of).collect::<Vec<_>>(), (0..N).collect::<Vec<_>>(), "{case}: 2 -> 1");
    assert_nothing_arrives(cluster.node(2), Duration::from_millis(100), case).await;
    cluster.shutdown().await;
}

async fn messages_near_the_frame_limit(factory: &impl TransportFactory, caps: &Capabilities) {
    let case = "messages_near_the_frame_limit";
    let cluster = Cluster::start(factory, 2).await;
    let limit = caps.max_frame_bytes.unwrap_or(8 * 1024 * 1024) as usize;
    // Leave room for the envelope and per-entry overhead.
    let big = large_append(1, 2, limit - limit / 64);
    send_retrying(cluster.node(1), big.clone()).await;
    let got = recv_n(cluster.node(2), 1, case).await;
    assert!(got[0] == big, "{case}: the large AppendEntries arrived changed");
    if caps.max_frame_bytes.is_some() {
        // Over the limit: dropped by the sender (or refused by the receiver), never delivered;
        // the messages after it still arrive.
        // A receiver that refuses the frame may close the connection and lose what followed
        // it, so the marker is sent until it arrives.
        send_retrying(cluster.node(1), large_append(1, 2, limit + 1024)).await;
        let deadline = Instant::now() + WAIT_MAX;
        let mut arrived = false;
        while !arrived {
            assert!(Instant::now() < deadline, "{case}: nothing arrived after the oversized message");
            send_retrying(cluster.node(1), message(1, 2, 7)).await;
            let mut buf = Vec::new();
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), cluster.node(2).recv(&mut buf, 64)).await
            {
                assert!(
                    buf.iter().all(|m| *m == message(1, 2, 7)),
                    "{case}: an oversized message was delivered"
                );
                arrived = true;
            }
        }
        let late = drain_for(cluster.node(2), Duration::from_millis(200)).await;
        assert!(
            late.iter().all(|m| *m == message(1, 2, 7)),
            "{case}: an oversized message was delivered late"
        );
    }
    cluster.assert_works(case, 1, 2).await;
    cluster.shutdown().await;
}

async fn five_nodes_all_to_all(factory: &impl TransportFactory) {
    let case = "five_nodes_all_to_all";
    const PER_PEER: u64 = 200;
    let cluster = Cluster::start(factory, 5).await;
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    let receivers: Vec<_> = ids
        .iter()
        .map(|&to| (to, spawn_recv(cluster.node(to), (PER_PEER as usize) * (ids.len() - 1), case)))
        .collect();
    let mut senders = Vec::new();
    for &from in &ids {
        let t = cluster.node(from).clone();
        let ids = ids.clone();
        senders.push(tokio::spawn(async move {
            for seq in 0..PER_PEER {
                for &to in ids.iter().filter(|&&to| to != from) {
                    send_retrying(&t, message(from, to, seq)).await;
                }
            }
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
    for (to, receiver) in receivers {
        let got = receiver.await.expect("receiver");
        for &from in ids.iter().filter(|&&from| from != to) {
            let seqs: Vec<u64> = got.iter().filter(|m| m.from == from).map(seq_of).collect();
            assert_eq!(seqs, (0..PER_PEER).collect::<Vec<_>>(), "{case}: {from} -> {to}");
        }
        assert!(got.iter().all(|m| m.to == to), "{case}: a message for another node reached {to}");
    }
    cluster.shutdown().await;
}

async fn send_to_a_down_peer_returns_promptly(factory: &impl TransportFactory) {
    let case = "send_to_a_down_peer_returns_promptly";
    let cluster = Cluster::start(factory, 2).await;
    cluster.assert_works(case, 1, 2).await;
    cluster.node(2).shutdown().await;
    // Shutting down twice is harmless.
    cluster.node(2).shutdown().await;
    // Until the sender notices that the peer is gone, messages may still land in socket
    // buffers (the peer's connection closes a moment after its shutdown returns), so the test
    // sends far more than any kernel buffers hold (about 30 MB) and stops at the first
    // refusal: an unbounded queue accepts them all. `send` never waits, so the loop ends.
    const SENDS: u64 = 1_000_000;
    let mut accepted = 0u64;
    let mut rejected = false;
    for seq in 0..SENDS {
        match cluster.node(1).send(message(1, 2, seq)) {
            Ok(()) => accepted += 1,
            Err(SendError::QueueFull(2) | SendError::UnknownPeer(2)) => {
                rejected = true;
                break;
            }
            Err(e) => panic!("{case}: unexpected error {e}"),
        }
    }
    assert!(rejected, "{case}: {accepted} messages to a down peer were all accepted (unbounded queue?)");
    // A shut-down transport's recv returns at once.
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(2), cluster.node(2).recv(&mut buf, 1)).await;
    assert!(matches!(r, Ok(Err(_))), "{case}: recv on a shut-down transport: {r:?}");
    cluster.shutdown().await;
}

async fn traffic_resumes_after_a_peer_restarts(factory: &impl TransportFactory) {
    let case = "traffic_resumes_after_a_peer_restarts";
    let mut cluster = Cluster::start(factory, 2).await;
    cluster.assert_works(case, 1, 2).await;
    for round in 0..2u64 {
        cluster.node(2).shutdown().await;
        // Traffic while the peer is down is queued (up to the bound) or dropped, never an error.
        for seq in 0..10 {
            match cluster.node(1).send(message(1, 2, seq)) {
                Ok(()) | Err(SendError::QueueFull(_) | SendError::UnknownPeer(_)) => {}
                Err(e) => panic!("{case}: sending to a down peer: {e}"),
            }
        }
        let restarted = factory.start(2, &cluster.addrs).await;
        cluster.nodes.insert(2, restarted);
        // Keep sending until a marker arrives: messages sent before the restart may be lost.
        let marker = 5_000 + round;
        let deadline = Instant::now() + WAIT_MAX;
        let mut arrived = false;
        while !arrived && Instant::now() < deadline {
            let _ = cluster.node(1).send(message(1, 2, marker));
            let mut buf = Vec::new();
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), cluster.node(2).recv(&mut buf, 64)).await
            {
                assert!(buf.iter().all(|m| m.from == 1 && m.to == 2), "{case}: stray message {buf:?}");
                arrived = buf.iter().any(|m| seq_of(m) == marker);
            }
        }
        assert!(arrived, "{case}: no traffic reached the restarted peer within {WAIT_MAX:?} (round {round})");
        // And the restarted node reaches the other one.
        send_retrying(cluster.node(2), message(2, 1, marker)).await;
        let got = recv_n(cluster.node(1), 1, case).await;
        assert_eq!(got[0], message(2, 1, marker), "{case}: from the restarted node");
    }
    cluster.shutdown().await;
}

/// A node that joins a running cluster is reachable once the others
/// [`set_peer`](Transport::set_peer) it; a [`remove_peer`](Transport::remove_peer)d one is
/// refused both ways; a peer that moves to another address is reached there. Skipped for
/// transports whose peers are fixed ([`PeerError::Unsupported`]).
async fn peers_change_at_runtime(factory: &impl TransportFactory) {
    let case = "peers_change_at_runtime";
    let all = free_loopback_addrs(3);
    let first: BTreeMap<NodeId, SocketAddr> =
        all.iter().filter(|(&id, _)| id != 3).map(|(&i, &a)| (i, a)).collect();
    let one = factory.start(1, &first).await;
    let two = factory.start(2, &first).await;
    // Node 3 starts knowing everyone; nodes 1 and 2 do not know it yet.
    let three = factory.start(3, &all).await;
    if one.remove_peer(3) == Err(PeerError::Unsupported) {
        for t in [one, two, three] {
            t.shutdown().await;
        }
        return;
    }
    assert_eq!(one.send(message(1, 3, 0)), Err(SendError::UnknownPeer(3)), "{case}: 3 is not a peer yet");
    one.set_peer(3, all[&3]).unwrap_or_else(|e| panic!("{case}: set_peer: {e}"));
    assert_eq!(one.set_peer(1, all[&1]), Err(PeerError::IsSelf(1)), "{case}");
    two.set_peer(3, all[&3]).unwrap_or_else(|e| panic!("{case}: set_peer: {e}"));
    let nodes = BTreeMap::from([(1, one.clone()), (2, two.clone()), (3, three.clone())]);
    let cluster = Cluster { addrs: all.clone(), nodes };
    cluster.assert_works(&format!("{case} (3 added)"), 1, 3).await;
    cluster.assert_works(&format!("{case} (3 added)"), 2, 3).await;

    // Node 1 removes node 3: sends fail, node 3's connection is closed and its messages refused.
    one.remove_peer(3).unwrap_or_else(|e| panic!("{case}: remove_peer: {e}"));
    assert_eq!(one.remove_peer(3), Err(PeerError::UnknownPeer(3)), "{case}: removed twice");
    assert_eq!(one.send(message(1, 3, 0)), Err(SendError::UnknownPeer(3)), "{case}: send to a removed peer");
    // What was in flight at the removal may still arrive; then nothing more.
    drain_for(&one, Duration::from_millis(200)).await;
    let mut buf = Vec::new();
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        let _ = three.send(message(3, 1, 5));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(20), one.recv(&mut buf, 16)).await {
            assert!(
                buf.iter().all(|m| m.from != 3),
                "{case}: a removed peer's message was delivered: {buf:?}"
            );
        }
    }
    cluster.assert_works(&format!("{case} (3 removed by 1)"), 1, 2).await;
    cluster.assert_works(&format!("{case} (3 removed by 1)"), 2, 3).await;

    // Node 2 moves: node 3 is told its new address and reaches it there.
    two.shutdown().await;
    let moved = free_loopback_addrs(1)[&1];
    let mut addrs2 = all.clone();
    addrs2.insert(2, moved);
    let two = factory.start(2, &addrs2).await;
    three.set_peer(2, moved).unwrap_or_else(|e| panic!("{case}: set_peer (move): {e}"));
    let nodes = BTreeMap::from([(1, one), (2, two), (3, three)]);
    let cluster = Cluster { addrs: addrs2, nodes };
    cluster.assert_works(&format!("{case} (2 moved)"), 3, 2).await;
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Raw-socket cases (TCP wire format).
//
// Raw sockets speak for `GHOST`, a node in every transport's peer list that does not run: a
// transport may close a node's older connection when the node connects again, so raw sockets
// must not pose as a running node.

/// The id raw sockets claim (a dialer's certificate must name it).
pub const GHOST: NodeId = 99;

/// A raw client connection to a transport.
struct Raw {
    stream: Box<dyn RawStream>,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Raw {
    /// Connects to node 1 of `cluster`, through the dialer if there is one.
    async fn connect(cluster: &Cluster, raw: &RawTcp) -> Self {
        Self::try_connect(cluster, raw).await.expect("raw connect")
    }

    /// [`Raw::connect`], failing softly (a dialer's handshake fails when the transport closes
    /// the connection at once).
    async fn try_connect(cluster: &Cluster, raw: &RawTcp) -> std::io::Result<Self> {
        let addr = cluster.addrs[&1];
        let stream: Box<dyn RawStream> = match &raw.dialer {
            None => Box::new(TcpStream::connect(addr).await?),
            Some(dialer) => dialer.dial(1, addr).await?,
        };
        Ok(Self { stream, buf: BytesMut::new(), decoder: FrameDecoder::default() })
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
        self.stream.flush().await.expect("raw flush");
    }

    /// Writes bytes, tolerating a connection the other side already closed.
    async fn write_lenient(&mut self, bytes: &[u8]) {
        if self.stream.write_all(bytes).await.is_ok() {
            let _ = self.stream.flush().await;
        }
    }

    async fn write_frame(&mut self, m: &WireMessage) {
        let mut out = Vec::new();
        encode_frame(m, u32::MAX, &mut out).expect("encode");
        self.write(&out).await;
    }

    /// Reads one frame; `None` when the connection closes first.
    async fn read_frame(&mut self, case: &str) -> Option<WireMessage> {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            if let Some(m) =
                self.decoder.decode(&mut self.buf).expect("a well-formed frame from the transport")
            {
                return Some(m);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("{case}: no frame and no close within {WAIT_MAX:?}"),
            }
        }
    }

    /// Sends a valid `Hello` as node `id` and expects a `HelloAck`.
    async fn handshake(&mut self, raw: &RawTcp, id: NodeId, case: &str) {
        self.write_frame(&WireMessage::Hello {
            version: WIRE_VERSION,
            cluster_id: raw.cluster_id.clone(),
            node_id: id,
        })
        .await;
        match self.read_frame(case).await {
            Some(WireMessage::HelloAck { version, .. }) => assert_eq!(version, WIRE_VERSION, "{case}"),
            other => panic!("{case}: expected HelloAck, got {other:?}"),
        }
    }

    /// Waits for the transport to close the connection; returns how long that took. Fails
    /// when it stays open for `within`.
    async fn closed_within(&mut self, within: Duration, case: &str) -> Duration {
        let started = Instant::now();
        let mut scratch = [0u8; 4096];
        loop {
            let left = within.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("{case}: connection still open after {within:?}"),
            }
        }
    }

    /// Fails if the connection closes within `wait`.
    async fn open_for(&mut self, wait: Duration, case: &str) {
        let mut scratch = [0u8; 64];
        if let Ok(r) = tokio::time::timeout(wait, self.stream.read(&mut scratch)).await {
            panic!("{case}: connection closed (or sent data) within {wait:?}: {r:?}");
        }
    }
}

/// How long a connection with a bad frame may stay open: well under any timeout, so a close
/// caused by the bad frame is told apart from one caused by a timeout.
fn prompt(raw: &RawTcp) -> Duration {
    raw.handshake_timeout.min(raw.frame_timeout) / 2
}

async fn huge_length_prefix_closes_the_connection(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "huge_length_prefix_closes_the_connection";
    let cluster = Cluster::start_with_ghost(factory, 2).await;
    // Before the handshake.
    let mut c = Raw::connect(&cluster, raw).await;
    c.write(&u32::MAX.to_be_bytes()).await;
    c.closed_within(prompt(raw), case).await;
    // After the handshake, several times (a transport that reserved 4 GiB would not survive).
    for _ in 0..3 {
        let mut c = Raw::connect(&cluster, raw).await;
        c.handshake(raw, GHOST, case).await;
        c.write(&u32::MAX.to_be_bytes()).await;
        c.write_lenient(&[0; 1024]).await;
        c.closed_within(prompt(raw), case).await;
    }
    cluster.assert_works(case, 1, 2).await;
    cluster.shutdown().await;
}

async fn garbage_closes_the_connection(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "garbage_closes_the_connection";
    let cluster = Cluster::start_with_ghost(factory, 2).await;
    let mut garbage_frame = 16u32.to_be_bytes().to_vec();
    garbage_frame.extend_from_slice(&[0xff; 16]);
    let zero_frame = [0u8, 0, 0, 0, 0xff];
    for (name, bytes) in [("garbage body", &garbage_frame[..]), ("zero length", &zero_frame[..])] {
        let mut c = Raw::connect(&cluster, raw).await;
        c.write(bytes).await;
        c.closed_within(prompt(raw), &format!("{case} ({name}, before the handshake)")).await;
        let mut c = Raw::connect(&cluster, raw).await;
        c.handshake(raw, GHOST, case).await;
        c.write(bytes).await;
        c.closed_within(prompt(raw), &format!("{case} ({name}, after the handshake)")).await;
    }
    // A `HelloAck` where a `Raft` frame belongs is a protocol error too.
    let mut c = Raw::connect(&cluster, raw).await;
    c.handshake(raw, GHOST, case).await;
    c.write_frame(&WireMessage::HelloAck { version: WIRE_VERSION, node_id: GHOST }).await;
    c.closed_within(prompt(raw), &format!("{case} (unexpected HelloAck)")).await;
    cluster.assert_works(case, 1, 2).await;
    cluster.shutdown().await;
}

async fn truncated_frame_then_close(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "truncated_frame_then_close";
    let cluster = Cluster::start_with_ghost(factory, 2).await;
    let mut frame = Vec::new();
    encode_frame(&WireMessage::Raft(message(GHOST, 1, 99)), u32::MAX, &mut frame).expect("encode");
    let mut c = Raw::connect(&cluster, raw).await;
    c.handshake(raw, GHOST, case).await;
    c.write(&frame[..frame.len() - 1]).await;
    drop(c);
    let mut c = Raw::connect(&cluster, raw).await;
    c.handshake(raw, GHOST, case).await;
    c.write(&frame[..2]).await;
    drop(c);
    assert_nothing_arrives(cluster.node(1), Duration::from_millis(200), case).await;
    cluster.assert_works(case, 1, 2).await;
    cluster.shutdown().await;
}

async fn slow_drip_sender_is_cut_off(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "slow_drip_sender_is_cut_off";
    let cluster = Cluster::start_with_ghost(factory, 2).await;
    let mut frame = Vec::new();
    encode_frame(&WireMessage::Raft(large_append(GHOST, 1, 64)), u32::MAX, &mut frame).expect("encode");
    let c = {
        let mut c = Raw::connect(&cluster, raw).await;
        c.handshake(raw, GHOST, case).await;
        c
    };
    let (mut reader, mut writer) = tokio::io::split(c.stream);
    // One byte every tenth of the frame timeout: the frame would take many timeouts to finish.
    let interval = raw.frame_timeout / 10;
    let dripper = tokio::spawn(async move {
        for byte in frame {
            if writer.write_all(&[byte]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(interval).await;
        }
    });
    let started = Instant::now();
    let mut scratch = [0u8; 64];
    let r = tokio::time::timeout(raw.frame_timeout * 4, reader.read(&mut scratch)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{case}: slow-drip connection still open: {r:?}");
    assert!(started.elapsed() >= raw.frame_timeout / 2, "{case}: closed before the frame timeout");
    dripper.abort();
    assert_nothing_arrives(cluster.node(1), Duration::from_millis(100), case).await;
    cluster.assert_works(case, 1, 2).await;
    cluster.shutdown().await;
}

async fn unfinished_handshake_is_cut_off(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "unfinished_handshake_is_cut_off";
    let cluster = Cluster::start_with_ghost(factory, 2).await;
    // Silent, and half a Hello.
    let mut silent = Raw::connect(&cluster, raw).await;
    let mut half = Raw::connect(&cluster, raw).await;
    let mut hello = Vec::new();
    encode_frame(
        &WireMessage::Hello { version: WIRE_VERSION, cluster_id: raw.cluster_id.clone(), node_id: GHOST },
        u32::MAX,
        &mut hello,
    )
    .expect("encode");
    half.write(&hello[..hello.len() / 2]).await;
    silent.open_for(raw.handshake_timeout / 4, case).await;
    silent.closed_within(raw.handshake_timeout * 3, case).await;
    half.closed_within(raw.handshake_timeout * 3, case).await;
    cluster.assert_works(case, 1, 2).await;
    cluster.shutdown().await;
}

/// Sends `hello` and expects `Refused` with a reason `check` accepts, then a close.
async fn expect_refused(
    cluster: &Cluster,
    raw: &RawTcp,
    hello: WireMessage,
    check: impl Fn(&RefusalReason) -> bool,
    case: &str,
) {
    let mut c = Raw::connect(cluster, raw).await;
    c.write_frame(&hello).await;
    match c.read_frame(case).await {
        Some(WireMessage::Refused { reason }) => assert!(check(&reason), "{case}: wrong reason {reason:?}"),
        other => panic!("{case}: expected Refused, got {other:?}"),
    }
    c.closed_within(prompt(raw), case).await;
}

async fn wrong_cluster_is_refused(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "wrong_cluster_is_refused";
    let cluster = Cluster::start_with_ghost(factory, 2).await;
    let hello = WireMessage::Hello {
        version: WIRE_VERSION,
        cluster_id: format!("{}-other", raw.cluster_id),
        node_id: GHOST,
    };
    expect_refused(&cluster, raw, hello, |r| matches!(r, RefusalReason::WrongCluster { .. }), case).await;
    cluster.assert_works(case, 1, 2).await;
    cluster.shutdown().await;
}

async fn unknown_node_is_refused(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "unknown_node_is_refused";
    let cluster = Cluster::start_with_ghost(factory, 2).await;
    let hello = WireMessage::Hello { version: WIRE_VERSION, cluster_id: raw.cluster_id.clone(), node_id: 77 };
    expect_refused(&cluster, raw, hello, |r| *r == RefusalReason::UnknownNode(77), case).await;
    // A node claiming the acceptor's own id is not a peer either.
    let hello = WireMessage::Hello { version: WIRE_VERSION, cluster_id: raw.cluster_id.clone(), node_id: 1 };
    expect_refused(&cluster, raw, hello, |r| *r == RefusalReason::UnknownNode(1), case).await;
    cluster.assert_works(case, 1, 2).await;
    cluster.shutdown().await;
}

async fn unsupported_version_is_refused(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "unsupported_version_is_refused";
    let cluster = Cluster::start_with_ghost(factory, 2).await;
    let version = WIRE_VERSION.wrapping_add(100);
    let hello = WireMessage::Hello { version, cluster_id: raw.cluster_id.clone(), node_id: GHOST };
    let check =
        |r: &RefusalReason| matches!(r, RefusalReason::UnsupportedVersion { got, .. } if *got == version);
    expect_refused(&cluster, raw, hello, check, case).await;
    cluster.shutdown().await;
}

async fn spoofed_sender_or_receiver_is_dropped(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "spoofed_sender_or_receiver_is_dropped";
    let cluster = Cluster::start_with_ghost(factory, 3).await;
    let mut c = Raw::connect(&cluster, raw).await;
    c.handshake(raw, GHOST, case).await;
    c.write_frame(&WireMessage::Raft(message(3, 1, 1))).await; // claims to be node 3
    c.write_frame(&WireMessage::Raft(message(GHOST, 3, 2))).await; // meant for node 3
    c.write_frame(&WireMessage::Raft(message(GHOST, 1, 3))).await; // fine
    let got = recv_n(cluster.node(1), 1, case).await;
    assert_eq!(got[0], message(GHOST, 1, 3), "{case}: a spoofed message was delivered");
    assert_nothing_arrives(cluster.node(1), Duration::from_millis(100), case).await;
    assert_nothing_arrives(cluster.node(3), Duration::from_millis(10), case).await;
    cluster.shutdown().await;
}

async fn connection_limit_holds(factory: &impl TransportFactory, raw: &RawTcp) {
    let case = "connection_limit_holds";
    let cluster = Cluster::start_with_ghost(factory, 2).await;
    cluster.assert_works(case, 1, 2).await; // node 2's connection to node 1 uses one slot
    let limit = raw.max_inbound_connections;
    // Plain TCP connections: the limit holds before any TLS handshake.
    let mut conns = Vec::new();
    for _ in 0..limit + 2 {
        conns.push(TcpStream::connect(cluster.addrs[&1]).await.expect("raw connect"));
    }
    // Connections over the limit are closed at once; the others wait for their handshake.
    let mut closed = 0;
    let mut open = 0;
    // One deadline for all, well before the handshake timeout closes the accepted ones.
    let deadline = tokio::time::Instant::now() + raw.handshake_timeout / 4;
    for c in &mut conns {
        let mut scratch = [0u8; 8];
        match tokio::time::timeout_at(deadline, c.read(&mut scratch)).await {
            Ok(_) => closed += 1,
            Err(_) => open += 1,
        }
    }
    assert!(open <= limit, "{case}: {open} raw connections open with a limit of {limit}");
    assert!(open + 1 >= limit, "{case}: only {open} raw connections accepted with a limit of {limit}");
    assert!(closed >= 2, "{case}: only {closed} connections over the limit were closed");
    drop(conns);
    // Slots are freed when connections close: a new handshake works.
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Ok(mut c) = Raw::try_connect(&cluster, raw).await {
            c.write_frame(&WireMessage::Hello {
                version: WIRE_VERSION,
                cluster_id: raw.cluster_id.clone(),
                node_id: GHOST,
            })
            .await;
            match c.read_frame(case).await {
                Some(WireMessage::HelloAck { .. }) => break,
                other => assert!(Instant::now() < deadline, "{case}: no slot freed: {other:?}"),
            }
        }
        assert!(Instant::now() < deadline, "{case}: no slot freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.assert_works(case, 1, 2).await;
    cluster.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::local_transport::LocalFactory;

    #[tokio::test]
    async fn local_transport_passes_the_generic_cases() {
        run_all(&LocalFactory::default()).await;
    }
}
