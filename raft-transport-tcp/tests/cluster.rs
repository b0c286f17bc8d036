//! The TCP transport: the transport conformance suite, and a 3-node Raft cluster over TCP
//! (10 000 concurrent proposals, a follower stopped and restarted on the same port), and TCP
//! specifics: source address, queueing while a peer is down, counters, start-up errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use raft_core::testing::transport_suite::{
    self, Capabilities, RawDialer, RawStream, RawTcp, TransportFactory,
};
use raft_core::testing::{cluster_suite, snapshot_interference};
use raft_core::wire::{encode_frame, FrameDecoder, WireMessage, WIRE_VERSION};
use raft_core::{Message, NodeId, Payload, SendError, Transport, TransportClosed};
use raft_storage_mem::MemStorage;
use raft_transport_tcp::{
    generate_dev_certs, node_identity, DevCa, DevCerts, TcpConfig, TcpError, TcpStats, TcpTransport,
    CLUSTER_ID_BYTES_MAX, TLS_ALPN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLUSTER_ID: &str = "suite";

/// TCP transports with short timeouts, so the timeout cases run quickly; with `certs`, over
/// mutual TLS (certificates for nodes 1 to 9 and the suite's ghost node).
struct TcpFactory {
    certs: Option<DevCerts>,
}

impl TcpFactory {
    const PLAIN: Self = Self { certs: None };

    fn tls() -> Self {
        let ids = (1..=9).chain([transport_suite::GHOST]);
        Self { certs: Some(generate_dev_certs(CLUSTER_ID, ids).expect("certs")) }
    }

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

    fn config_for(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> TcpConfig {
        let tls = self.certs.as_ref().map(|certs| certs.tls_config(id).expect("a certificate for the node"));
        TcpConfig { tls, ..Self::config(id, addrs) }
    }
}

/// Raw connections over TLS as the suite's ghost node.
struct TlsDialer {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsDialer")
    }
}

#[async_trait]
impl RawDialer for TlsDialer {
    async fn dial(&self, to: NodeId, addr: SocketAddr) -> std::io::Result<Box<dyn RawStream>> {
        let stream = TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from(node_identity(CLUSTER_ID, to))
            .map_err(std::io::Error::other)?;
        Ok(Box::new(self.connector.connect(name, stream).await?))
    }
}

/// A TLS client configuration for node `id`.
fn tls_client(certs: &DevCerts, id: NodeId) -> rustls::ClientConfig {
    let tls = certs.tls_config(id).expect("a certificate for the node");
    raft_tls::rustls_configs(&tls, TLS_ALPN).expect("TLS configs").1
}

#[async_trait]
impl TransportFactory for TcpFactory {
    fn capabilities(&self) -> Capabilities {
        let config = Self::config(1, &BTreeMap::from([(1, "127.0.0.1:1".parse().expect("addr"))]));
        let dialer = self.certs.as_ref().map(|certs| {
            let connector =
                tokio_rustls::TlsConnector::from(Arc::new(tls_client(certs, transport_suite::GHOST)));
            Arc::new(TlsDialer { connector }) as Arc<dyn RawDialer>
        });
        Capabilities {
            max_frame_bytes: Some(config.max_frame_bytes),
            raw_tcp: Some(RawTcp {
                cluster_id: CLUSTER_ID.to_owned(),
                handshake_timeout: config.handshake_timeout,
                frame_timeout: config.frame_timeout,
                max_inbound_connections: config.max_inbound_connections,
                dialer,
            }),
        }
    }

    async fn start(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> Arc<dyn Transport> {
        Arc::new(TcpTransport::start(self.config_for(id, addrs)).await.expect("transport starts"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_passes_the_conformance_suite() {
    transport_suite::run_all(&TcpFactory::PLAIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_with_tls_passes_the_conformance_suite() {
    transport_suite::run_all(&TcpFactory::tls()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_tcp_and_a_restarted_node_catches_up() {
    cluster_suite::run_all(&TcpFactory::PLAIN, |_| Arc::new(MemStorage::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_tcp_with_tls() {
    cluster_suite::run_all(&TcpFactory::tls(), |_| Arc::new(MemStorage::default())).await;
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

// ---------------------------------------------------------------------------------------------
// TLS refusals: plaintext on a TLS port, a certificate from another CA, an expired one, one
// naming another node, a known peer's certificate used by another node, and another cluster.

/// Node 1 over TLS with `certs`, and node 2 from `config2` (TLS with `certs`, then tweaked);
/// they send each other messages for a while. Returns both counters and what each received.
async fn exchange_tls(
    certs: &DevCerts,
    tweak2: impl FnOnce(&mut TcpConfig),
) -> (TcpStats, TcpStats, usize, usize) {
    let addrs = transport_suite::free_loopback_addrs(2);
    let factory = TcpFactory { certs: Some(certs.clone()) };
    let one = TcpTransport::start(factory.config_for(1, &addrs)).await.expect("node 1 starts");
    let mut config2 = factory.config_for(2, &addrs);
    tweak2(&mut config2);
    let two = TcpTransport::start(config2).await.expect("node 2 starts");
    let (got1, got2) = transport_suite::exchange_for(&one, &two, Duration::from_secs(1)).await;
    let (stats1, stats2) = (one.stats(), two.stats());
    one.shutdown().await;
    two.shutdown().await;
    (stats1, stats2, got1, got2)
}

/// Connects to `addr` over TLS with `client` and expects the server to name `server`; returns
/// the TLS error that the first read (after the handshake) or the handshake itself reports.
async fn tls_client_error(client: rustls::ClientConfig, server: NodeId, addr: SocketAddr) -> rustls::Error {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(node_identity(CLUSTER_ID, server)).expect("name");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let io_error = match connector.connect(name, stream).await {
        Err(error) => error,
        Ok(mut stream) => {
            // TLS 1.3: the server checks the client's certificate after the client finished;
            // its verdict arrives as an alert on the first read.
            let mut scratch = [0u8; 16];
            let read = tokio::time::timeout(WAIT_MAX, stream.read(&mut scratch)).await.expect("an answer");
            read.expect_err("the server refuses the certificate")
        }
    };
    let inner = io_error.into_inner().expect("a TLS error inside the io error");
    *inner.downcast::<rustls::Error>().expect("a rustls error")
}

fn mixed_certs(tweak: impl FnOnce(&DevCa, &mut DevCerts)) -> DevCerts {
    let ca = DevCa::new(CLUSTER_ID).expect("ca");
    let mut certs = generate_dev_certs(CLUSTER_ID, 1..=3).expect("certs");
    certs.ca_cert_pem = ca.cert_pem();
    for id in 1..=3 {
        certs.nodes.insert(id, ca.issue(id).expect("issue"));
    }
    tweak(&ca, &mut certs);
    certs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_control_same_ca_exchanges_messages() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    let (stats1, stats2, got1, got2) = exchange_tls(&certs, |_| {}).await;
    assert!(got1 > 0 && got2 > 0, "{got1} {got2}");
    for stats in [stats1, stats2] {
        assert_eq!(stats.refused_tls + stats.refused_identity + stats.refused_handshakes, 0, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_port_is_refused() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    // A plaintext node against a TLS node: nothing gets through either way.
    let (stats1, _, got1, got2) = exchange_tls(&certs, |c| c.tls = None).await;
    assert_eq!((got1, got2), (0, 0));
    assert!(stats1.refused_tls > 0, "node 1 refuses plaintext: {stats1:?}");
    // A raw plaintext Hello: no HelloAck, the connection is closed.
    let addrs = transport_suite::free_loopback_addrs(2);
    let one =
        TcpTransport::start(TcpFactory { certs: Some(certs) }.config_for(1, &addrs)).await.expect("starts");
    let mut raw = TcpStream::connect(addrs[&1]).await.expect("connect");
    let hello = WireMessage::Hello { version: WIRE_VERSION, cluster_id: CLUSTER_ID.into(), node_id: 2 };
    write_frame(&mut raw, &hello).await;
    let mut answer = Vec::new();
    // The TLS side answers with a TLS alert at most (or a reset), then closes.
    let _ = tokio::time::timeout(WAIT_MAX, raw.read_to_end(&mut answer)).await.expect("closed in time");
    let decoded = FrameDecoder::default().decode(&mut BytesMut::from(&answer[..]));
    assert!(!matches!(decoded, Ok(Some(WireMessage::HelloAck { .. }))), "a plaintext HelloAck: {answer:?}");
    wait_until("the plaintext connection is counted", || one.stats().refused_tls >= 1).await;
    assert_eq!(one.stats().received, 0);
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_from_another_ca_is_refused_with_a_bad_signature() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    let other = generate_dev_certs(CLUSTER_ID, 1..=2).expect("other certs");
    let (stats1, stats2, got1, got2) = exchange_tls(&certs, |c| c.tls = other.tls_config(2)).await;
    assert_eq!((got1, got2), (0, 0));
    assert!(stats1.refused_tls > 0 && stats2.refused_tls > 0, "{stats1:?} {stats2:?}");
    assert!(stats1.connect_failures > 0 && stats2.connect_failures > 0);
    // What a client with such a certificate is told.
    let addrs = transport_suite::free_loopback_addrs(2);
    let one = TcpTransport::start(TcpFactory { certs: Some(certs.clone()) }.config_for(1, &addrs))
        .await
        .expect("starts");
    // The client trusts the right CA, so only its own certificate is wrong.
    let tls = raft_tls::TlsConfig {
        ca_cert_pem: certs.ca_cert_pem.clone(),
        ..other.tls_config(2).expect("node 2")
    };
    let client = raft_tls::rustls_configs(&tls, TLS_ALPN).expect("configs").1;
    let error = tls_client_error(client, 1, addrs[&1]).await;
    // Both dev CAs have the same name, so the certificate's issuer is found by name and its
    // signature fails to verify: `decrypt_error` (an issuer not found at all: `unknown_ca`).
    assert!(
        matches!(
            error,
            rustls::Error::AlertReceived(
                rustls::AlertDescription::DecryptError | rustls::AlertDescription::UnknownCA
            )
        ),
        "{error:?}"
    );
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_expired_certificate_is_refused_with_certificate_expired() {
    let now = time::OffsetDateTime::now_utc();
    let certs = mixed_certs(|ca, certs| {
        let expired = ca
            .issue_with_validity(
                "node-2.suite",
                now - time::Duration::days(30),
                now - time::Duration::days(1),
            )
            .expect("issue");
        certs.nodes.insert(2, expired);
    });
    let (stats1, _, got1, _) = exchange_tls(&certs, |_| {}).await;
    assert_eq!(got1, 0);
    assert!(stats1.refused_tls > 0, "node 1 refuses the expired certificate: {stats1:?}");
    let addrs = transport_suite::free_loopback_addrs(2);
    let one = TcpTransport::start(TcpFactory { certs: Some(certs.clone()) }.config_for(1, &addrs))
        .await
        .expect("starts");
    let error = tls_client_error(tls_client(&certs, 2), 1, addrs[&1]).await;
    assert_eq!(error, rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired), "{error}");
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_of_another_node_is_refused() {
    // Node 2 presents a valid certificate (same CA) whose identity is node 3's; node 3 is not
    // a peer of node 1.
    let certs = generate_dev_certs(CLUSTER_ID, 1..=3).expect("certs");
    let (stats1, stats2, got1, got2) = exchange_tls(&certs, |c| c.tls = certs.tls_config(3)).await;
    assert_eq!((got1, got2), (0, 0));
    assert!(stats1.refused_identity > 0, "{stats1:?}");
    // Node 2 cannot connect to node 1 either... and node 1 cannot verify node 2 as node-2.
    assert!(stats1.connect_failures > 0 && stats2.connect_failures > 0, "{stats1:?} {stats2:?}");
    // A client that expects node 1 to be node 2 sees why.
    let addrs = transport_suite::free_loopback_addrs(2);
    let one = TcpTransport::start(TcpFactory { certs: Some(certs.clone()) }.config_for(1, &addrs))
        .await
        .expect("starts");
    let error = tls_client_error(tls_client(&certs, 2), 2, addrs[&1]).await;
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })
        ),
        "{error:?}"
    );
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_of_a_known_peer_used_by_another_node_is_refused() {
    // Node 2 presents node 3's certificate, and node 3 is a peer of node 1: the Hello (node 2)
    // does not match the certificate (node 3).
    let certs = generate_dev_certs(CLUSTER_ID, 1..=3).expect("certs");
    let factory = TcpFactory { certs: Some(certs.clone()) };
    let mut addrs = transport_suite::free_loopback_addrs(3);
    let one = TcpTransport::start(factory.config_for(1, &addrs)).await.expect("node 1 starts");
    addrs.remove(&3);
    let config2 = TcpConfig { tls: certs.tls_config(3), ..factory.config_for(2, &addrs) };
    let two = TcpTransport::start(config2).await.expect("node 2 starts");
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while one.stats().refused_identity == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", one.stats());
        let _ = two.send(numbered(2, 1, 1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(one.stats().received, 0);
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_another_cluster_is_refused() {
    // Same CA, but node 2 believes it is in cluster "other" (and its certificate says so).
    let now = time::OffsetDateTime::now_utc();
    let mut other = None;
    let certs = mixed_certs(|ca, _| {
        other = Some(
            ca.issue_with_validity(
                "node-2.other",
                now - time::Duration::days(1),
                now + time::Duration::days(1),
            )
            .expect("issue"),
        );
    });
    let (cert_pem, key_pem) = other.expect("issued");
    let (stats1, stats2, got1, got2) = exchange_tls(&certs, |c| {
        c.cluster_id = "other".to_owned();
        c.tls = Some(raft_tls::TlsConfig { ca_cert_pem: certs.ca_cert_pem.clone(), cert_pem, key_pem });
    })
    .await;
    assert_eq!((got1, got2), (0, 0));
    assert!(stats1.refused_tls + stats1.refused_identity > 0, "{stats1:?}");
    assert!(stats1.connect_failures > 0 && stats2.connect_failures > 0, "{stats1:?} {stats2:?}");
}

#[tokio::test]
async fn tls_configs_are_checked_at_start() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    let addrs = BTreeMap::from([
        (1, "127.0.0.1:0".parse().expect("addr")),
        (2, "127.0.0.1:1".parse().expect("addr")),
    ]);
    let factory = TcpFactory { certs: Some(certs) };
    let mut bad = factory.config_for(1, &addrs);
    if let Some(tls) = &mut bad.tls {
        tls.key_pem = "garbage".to_owned();
    }
    match TcpTransport::start(bad).await {
        Err(TcpError::Tls(error)) => assert_eq!(error.what, "node key"),
        other => panic!("a bad key: {other:?}"),
    }
    let bad = TcpConfig { cluster_id: "Not A DNS Name".to_owned(), ..factory.config_for(1, &addrs) };
    assert!(matches!(TcpTransport::start(bad).await, Err(TcpError::InvalidConfig(_))));
}

// ---------------------------------------------------------------------------------------------
// Keep-alives and the idle timeout.

/// Fast keep-alives for the tests below.
fn keep_alive_config(id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> TcpConfig {
    TcpConfig {
        keep_alive: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(500),
        ..TcpFactory::config(id, addrs)
    }
}

/// Accepts one connection on `listener` and answers its `Hello` as node 2.
async fn accept_as_node_2(listener: &TcpListener) -> TcpStream {
    let (mut stream, _) =
        tokio::time::timeout(WAIT_MAX, listener.accept()).await.expect("node 1 connects").expect("accept");
    let hello = read_frame(&mut stream).await;
    assert!(matches!(hello, Some(WireMessage::Hello { node_id: 1, .. })), "{hello:?}");
    write_frame(&mut stream, &WireMessage::HelloAck { version: WIRE_VERSION, node_id: 2 }).await;
    stream
}

/// Node 2 is a raw listener that completes the handshake, then neither reads nor answers
/// (a hung process behind a live kernel: TCP keep-alive alone would not notice). Node 1 must
/// notice through its unanswered keep-alives within about `idle_timeout`, drop the connection
/// and connect again; over the new connection its messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_detected_and_the_connection_re_established() {
    let addrs = transport_suite::free_loopback_addrs(2);
    let listener = TcpListener::bind(addrs[&2]).await.expect("bind");
    let config = keep_alive_config(1, &addrs);
    let idle_timeout = config.idle_timeout;
    let node = TcpTransport::start(config).await.expect("starts");
    let hung = accept_as_node_2(&listener).await;
    let hung_at = Instant::now();
    node.send(numbered(1, 2, 1)).expect("queued"); // written, never read
    let mut fresh = accept_as_node_2(&listener).await;
    let detected_after = hung_at.elapsed();
    eprintln!(
        "a peer that stopped reading was detected after {detected_after:?} (idle_timeout {idle_timeout:?})"
    );
    assert!(detected_after >= idle_timeout / 2, "reconnected after {detected_after:?}: too early");
    assert!(detected_after < idle_timeout * 4, "reconnected after {detected_after:?}: too late");
    assert!(node.stats().timeouts >= 1, "{:?}", node.stats());
    wait_until("the reconnect is counted", || node.stats().reconnects >= 1).await;
    // The new connection works: keep-alives (answered here) and messages arrive.
    node.send(numbered(1, 2, 2)).expect("queued");
    loop {
        match read_frame(&mut fresh).await {
            Some(WireMessage::KeepAlive { seq }) => {
                write_frame(&mut fresh, &WireMessage::KeepAliveAck { seq }).await;
            }
            Some(WireMessage::Raft(message)) => {
                assert_eq!(message, numbered(1, 2, 2));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(hung);
    node.shutdown().await;
}

/// A connection that answers keep-alives stays up well past `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_whose_peer_answers_stays_up() {
    let addrs = transport_suite::free_loopback_addrs(2);
    let a = TcpTransport::start(keep_alive_config(1, &addrs)).await.expect("starts");
    let b = TcpTransport::start(keep_alive_config(2, &addrs)).await.expect("starts");
    a.send(numbered(1, 2, 1)).expect("queued");
    recv_exactly(&b, 1).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // three idle timeouts, no traffic
    a.send(numbered(1, 2, 2)).expect("queued");
    recv_exactly(&b, 1).await;
    assert_eq!((a.stats().reconnects, a.stats().timeouts, b.stats().timeouts), (0, 0, 0), "{:?}", a.stats());
    a.shutdown().await;
    b.shutdown().await;
}

/// The acceptor answers keep-alives, and closes a connection that sends nothing for
/// `idle_timeout` (its connector is gone or hung).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let addrs = transport_suite::free_loopback_addrs(2);
    let config = keep_alive_config(1, &addrs);
    let idle_timeout = config.idle_timeout;
    let a = TcpTransport::start(config).await.expect("starts"); // node 2 does not run
    let mut raw = TcpStream::connect(addrs[&1]).await.expect("connect");
    write_frame(
        &mut raw,
        &WireMessage::Hello { version: WIRE_VERSION, cluster_id: CLUSTER_ID.into(), node_id: 2 },
    )
    .await;
    assert!(matches!(read_frame(&mut raw).await, Some(WireMessage::HelloAck { .. })));
    write_frame(&mut raw, &WireMessage::KeepAlive { seq: 7 }).await;
    assert_eq!(read_frame(&mut raw).await, Some(WireMessage::KeepAliveAck { seq: 7 }));
    let silent_since = Instant::now();
    assert_eq!(read_frame(&mut raw).await, None, "closed");
    let closed_after = silent_since.elapsed();
    assert!(
        closed_after >= idle_timeout / 2 && closed_after < idle_timeout * 4,
        "closed after {closed_after:?}"
    );
    wait_until("the idle timeout is counted", || a.stats().timeouts >= 1).await;
    a.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A large snapshot and small messages on one connection.

/// 50 MB of `InstallSnapshot` chunks (512 KiB each, queued as fast as the queue takes them)
/// go from node 1 to node 2 while node 1 also sends a small message every millisecond
/// ([`snapshot_interference::measure`], the same measurement as the QUIC transport's test).
///
/// What TCP does: one connection per peer and one FIFO queue per peer, so a small message
/// arrives after every chunk queued before it (head-of-line blocking): its delay is the time
/// to send the chunks ahead of it, up to the whole transfer when they were all queued at once
/// (measured here, debug build on loopback: 50 MB in 21-34 ms, max delay 19-32 ms), where
/// QUIC's separate snapshot stream keeps it near 10 ms while its slower transfer (~0.6 s)
/// runs. Loopback moves 50 MB in tens of milliseconds; on a 1 Gbit/s link the same blocking
/// would last about 0.4 s. The test asserts the ordering, which does not depend on timing: a
/// small message passes at most the chunks already off the wire in the receiver's snapshot
/// queue (`snapshot_queue_max`, plus one in the reader's hands and one being received), never
/// those still queued or in flight behind them; and it prints the figures. In a running cluster the leader sends one chunk at a time and waits
/// for its answer, so the blocking there is one chunk (512 KiB), not the whole snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_transfer_head_of_line_blocks_small_messages() {
    let seen = snapshot_interference::measure(&TcpFactory::PLAIN).await;
    eprintln!("TCP: {seen}");
    assert!(seen.sent_after_chunks > 0, "no small message was sent behind a chunk: {seen}");
    let defaults = TcpConfig::new(1, CLUSTER_ID, SocketAddr::from(([127, 0, 0, 1], 1)), BTreeMap::new());
    let inbound = (defaults.snapshot_queue_max + 2) * snapshot_interference::CHUNK_BYTES;
    assert!(seen.max_overtaken_bytes <= inbound, "a small message passed chunks still on the wire: {seen}");
}

/// A connection to `to` from the loopback address `from` (any of 127.0.0.0/8).
async fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((from, 0))).ok()?;
    socket.connect(to).await.ok()
}

/// Strangers that connect and never finish a handshake, from many addresses, re-opened as they
/// are closed, cannot keep a peer that restarts behind its known address from connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_strangers_does_not_keep_a_restarting_peer_out() {
    flood_then_restart_a_peer(false).await;
}

/// The same on a dual-stack listener (`[::]`), where an IPv4 peer arrives as `::ffff:a.b.c.d`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_does_not_keep_a_peer_out_of_a_dual_stack_listener() {
    flood_then_restart_a_peer(true).await;
}

async fn flood_then_restart_a_peer(dual_stack: bool) {
    let addrs = transport_suite::free_loopback_addrs(2);
    // A long handshake deadline: the flood's connections hold their slots for the whole test.
    let long = |id| TcpConfig {
        handshake_timeout: Duration::from_secs(20),
        max_inbound_connections: 16,
        ..TcpFactory::config(id, &addrs)
    };
    let mut first = long(1);
    if dual_stack {
        first.listen = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, addrs[&1].port()));
    }
    let one = TcpTransport::start(first).await.expect("node 1");
    let target = addrs[&1];
    let flood = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            for last in 2..=40u8 {
                if held.len() < 400 {
                    if let Some(stream) = connect_from(std::net::Ipv4Addr::new(127, 0, 1, last), target).await
                    {
                        held.push(stream);
                    }
                }
            }
            // Drop what the node closed; keep the rest open.
            let mut open = Vec::new();
            for mut stream in held.drain(..) {
                let mut byte = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await {
                    Ok(_) => {}
                    Err(_) => open.push(stream),
                }
            }
            held = open;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    wait_until("the flood is refused", || one.stats().rejected_connections > 0).await;
    // Node 2 (re)starts behind its known address and sends to node 1 through node 1's port.
    let two = TcpTransport::start(long(2)).await.expect("node 2");
    for seq in 0..5 {
        two.send(numbered(2, 1, seq)).expect("queued");
    }
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), recv_exactly(&one, 5)).await;
    flood.abort();
    assert!(got.is_ok(), "node 2 could not reach node 1 through the flood within 10 s");
    assert!(started.elapsed() < Duration::from_secs(10));
    one.shutdown().await;
    two.shutdown().await;
}

/// With every established slot taken, a peer that reconnects supersedes its own older
/// connection and gets that slot, instead of being refused until the old one times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_peer_takes_over_the_slot_of_its_older_connection() {
    let addrs = transport_suite::free_loopback_addrs(2);
    let tight = |id| TcpConfig {
        max_inbound_connections: 1,
        idle_timeout: Duration::from_secs(60),
        keep_alive: Duration::from_secs(20),
        ..TcpFactory::config(id, &addrs)
    };
    let one = TcpTransport::start(tight(1)).await.expect("node 1");
    // An old connection of node 2 (a half-open one after its restart): it said Hello, then
    // nothing, and holds node 1's only established slot.
    let mut stale = TcpStream::connect(addrs[&1]).await.expect("connect");
    write_frame(
        &mut stale,
        &WireMessage::Hello { version: WIRE_VERSION, cluster_id: CLUSTER_ID.into(), node_id: 2 },
    )
    .await;
    assert!(matches!(read_frame(&mut stale).await, Some(WireMessage::HelloAck { .. })));
    let two = TcpTransport::start(tight(2)).await.expect("node 2");
    for seq in 0..3 {
        two.send(numbered(2, 1, seq)).expect("queued");
    }
    let got = tokio::time::timeout(Duration::from_secs(5), recv_exactly(&one, 3)).await;
    assert!(got.is_ok(), "node 2's new connection waited for the stale one's idle timeout");
    one.shutdown().await;
    two.shutdown().await;
}
