//! The QUIC transport: the transport conformance suite (without the raw-TCP cases), a 3-node
//! Raft cluster over QUIC (`cluster_suite`), and refusals: a certificate from another CA, a certificate naming another node, another
//! cluster id, an expired certificate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use raft_core::testing::cluster_suite;
use raft_core::testing::transport_suite::{self, Capabilities, TransportFactory};
use raft_core::{Message, NodeId, Payload, Transport};
use raft_transport_quic::{
    close_codes, generate_dev_certs, DevCa, DevCerts, QuicConfig, QuicStats, QuicTransport, QUIC_ALPN,
};

const CLUSTER_ID: &str = "suite";

fn config(id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>, certs: &DevCerts) -> QuicConfig {
    let peers = addrs.iter().filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
    let (cert, key) = certs.nodes[&id].clone();
    QuicConfig {
        queue_max: 1_024,
        handshake_timeout: Duration::from_millis(1_500),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..QuicConfig::new(id, &certs.cluster_id, addrs[&id], peers, &certs.ca_cert_pem, cert, key)
    }
}

/// QUIC transports whose certificates come from one dev CA, made for node ids 1 to 9 (the
/// suite uses up to 5 nodes and a ghost peer with a large id, which needs no certificate).
struct QuicFactory {
    certs: DevCerts,
}

#[async_trait]
impl TransportFactory for QuicFactory {
    fn capabilities(&self) -> Capabilities {
        Capabilities { max_frame_bytes: Some(raft_core::wire::DEFAULT_MAX_FRAME_BYTES), raw_tcp: None }
    }

    async fn start(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> Arc<dyn Transport> {
        Arc::new(QuicTransport::start(config(id, addrs, &self.certs)).await.expect("transport starts"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_transport_passes_the_conformance_suite() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=9).expect("certs");
    transport_suite::run_all(&QuicFactory { certs }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_quic_and_a_restarted_node_catches_up() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=3).expect("certs");
    cluster_suite::run_all(&QuicFactory { certs }, |_| Arc::new(raft_storage_mem::MemStorage::default()))
        .await;
}

fn heartbeat(from: NodeId, to: NodeId) -> Message {
    Message { from, to, term: 1, payload: Payload::TimeoutNow }
}

/// Node 1 (normal certificates) and node 2 started from `config2`; node 2 sends to node 1 and
/// node 1 to node 2 for a while. Returns both transports' counters and the messages each got.
async fn exchange(
    certs: &DevCerts,
    tweak2: impl FnOnce(&mut QuicConfig),
) -> (QuicStats, QuicStats, usize, usize) {
    let addrs = transport_suite::free_loopback_addrs(2);
    let one = QuicTransport::start(config(1, &addrs, certs)).await.expect("node 1 starts");
    let mut config2 = config(2, &addrs, certs);
    tweak2(&mut config2);
    let two = QuicTransport::start(config2).await.expect("node 2 starts");
    let (got1, got2) = transport_suite::exchange_for(&one, &two, Duration::from_secs(2)).await;
    let (stats1, stats2) = (one.stats(), two.stats());
    one.shutdown().await;
    two.shutdown().await;
    (stats1, stats2, got1, got2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_same_ca_exchanges_messages() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    let (stats1, stats2, got1, got2) = exchange(&certs, |_| {}).await;
    assert!(got1 > 0 && got2 > 0, "{got1} {got2}");
    assert_eq!(stats1.refused_tls + stats1.refused_identity + stats1.refused_handshakes, 0, "{stats1:?}");
    assert_eq!(stats2.refused_tls + stats2.refused_identity + stats2.refused_handshakes, 0, "{stats2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    let other = generate_dev_certs(CLUSTER_ID, 1..=2).expect("other certs");
    // Node 2 has a well-formed certificate for its own identity, signed by another CA, and
    // trusts that other CA.
    let (stats1, stats2, got1, got2) = exchange(&certs, |c| {
        c.ca_cert_pem = other.ca_cert_pem.clone();
        (c.cert_pem, c.key_pem) = other.nodes[&2].clone();
    })
    .await;
    assert_eq!((got1, got2), (0, 0));
    assert!(stats1.refused_tls > 0, "node 1 refuses node 2's certificate: {stats1:?}");
    assert!(stats2.refused_tls > 0, "node 2 refuses node 1's certificate: {stats2:?}");
    assert!(stats1.connect_failures > 0 && stats2.connect_failures > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_of_another_node_is_refused() {
    // Node 2 presents a valid certificate (same CA) whose identity is node 3's.
    let certs = generate_dev_certs(CLUSTER_ID, 1..=3).expect("certs");
    let (stats1, stats2, got1, got2) = exchange(&certs, |c| {
        (c.cert_pem, c.key_pem) = certs.nodes[&3].clone();
    })
    .await;
    assert_eq!((got1, got2), (0, 0));
    // Node 1 refuses node 2's connection (node 3 is not its peer) and cannot connect to node 2
    // (its certificate does not match the name node-2.suite).
    assert!(stats1.refused_identity > 0, "{stats1:?}");
    assert!(stats1.connect_failures > 0, "{stats1:?}");
    assert!(stats2.connect_failures > 0, "{stats2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_of_a_known_peer_used_by_another_node_is_refused() {
    // Node 2 presents node 3's certificate, and node 3 is a peer of node 1: the Hello (node 2)
    // does not match the certificate (node 3).
    let certs = generate_dev_certs(CLUSTER_ID, 1..=3).expect("certs");
    let mut addrs = transport_suite::free_loopback_addrs(3);
    let one = QuicTransport::start(config(1, &addrs, &certs)).await.expect("node 1 starts");
    addrs.remove(&3);
    let mut config2 = config(2, &addrs, &certs);
    (config2.cert_pem, config2.key_pem) = certs.nodes[&3].clone();
    let two = QuicTransport::start(config2).await.expect("node 2 starts");
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && one.stats().refused_identity == 0 {
        let _ = two.send(heartbeat(2, 1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats1 = one.stats();
    assert!(stats1.refused_identity > 0, "{stats1:?}");
    assert_eq!(stats1.received, 0);
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_cluster_is_refused() {
    // Same CA, but node 2 believes it is in cluster "other" (and its certificate says so).
    let ca = DevCa::new(CLUSTER_ID).expect("ca");
    let mut certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    certs.ca_cert_pem = ca.cert_pem();
    for id in 1..=2 {
        certs.nodes.insert(id, ca.issue(id).expect("issue"));
    }
    let now = time::OffsetDateTime::now_utc();
    let other = ca
        .issue_with_validity("node-2.other", now - time::Duration::days(1), now + time::Duration::days(1))
        .expect("issue");
    let (stats1, stats2, got1, got2) = exchange(&certs, |c| {
        c.cluster_id = "other".to_owned();
        (c.cert_pem, c.key_pem) = other.clone();
    })
    .await;
    assert_eq!((got1, got2), (0, 0));
    // Each side's client check fails first (TLS 1.3: the server's certificate is checked
    // before the client sends its own), which the acceptor sees as a failed TLS handshake.
    assert!(stats1.refused_tls + stats1.refused_identity > 0, "{stats1:?}");
    assert!(stats1.connect_failures > 0 && stats2.connect_failures > 0, "{stats1:?} {stats2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_another_cluster_id_is_refused() {
    // Node 2's certificate is right for cluster "suite", but its configuration says "other":
    // it cannot verify node 1 (wrong server name), and node 1 refuses its Hello... except
    // that node 2 also never connects since TLS fails first. The cluster id in Hello is thus
    // checked only behind certificates; this asserts that nothing gets through.
    let certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    let (_, stats2, got1, got2) = exchange(&certs, |c| c.cluster_id = "other".to_owned()).await;
    assert_eq!((got1, got2), (0, 0));
    assert!(stats2.connect_failures > 0, "{stats2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    let ca = DevCa::new(CLUSTER_ID).expect("ca");
    let mut certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    certs.ca_cert_pem = ca.cert_pem();
    certs.nodes.insert(1, ca.issue(1).expect("issue"));
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_with_validity("node-2.suite", now - time::Duration::days(30), now - time::Duration::days(1))
        .expect("issue");
    let (stats1, _, got1, _) = exchange(&certs, |c| (c.cert_pem, c.key_pem) = expired.clone()).await;
    assert_eq!(got1, 0);
    assert!(stats1.refused_tls > 0, "node 1 refuses the expired certificate: {stats1:?}");
}

#[tokio::test]
async fn bad_configs_are_rejected() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=2).expect("certs");
    let addrs = BTreeMap::from([
        (1, "127.0.0.1:0".parse().expect("addr")),
        (2, "127.0.0.1:1".parse().expect("addr")),
    ]);
    let mut bad = config(1, &addrs, &certs);
    bad.cluster_id = "Not A DNS Name".to_owned();
    assert!(QuicTransport::start(bad).await.is_err());
    let mut bad = config(1, &addrs, &certs);
    bad.key_pem = "garbage".to_owned();
    let error = QuicTransport::start(bad).await.expect_err("bad key");
    assert!(error.to_string().contains("node key"), "{error}");
    let mut bad = config(1, &addrs, &certs);
    bad.queue_max = 0;
    assert!(QuicTransport::start(bad).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_holds() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=3).expect("certs");
    let addrs = transport_suite::free_loopback_addrs(3);
    let one = QuicTransport::start(QuicConfig { max_inbound_connections: 1, ..config(1, &addrs, &certs) })
        .await
        .expect("node 1 starts");
    let two = QuicTransport::start(config(2, &addrs, &certs)).await.expect("node 2 starts");
    let three = QuicTransport::start(config(3, &addrs, &certs)).await.expect("node 3 starts");
    let mut senders = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let _ = two.send(heartbeat(2, 1));
        let _ = three.send(heartbeat(3, 1));
        let mut buf = Vec::new();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(20), one.recv(&mut buf, 100)).await {
            senders.extend(buf.iter().map(|m| m.from));
        }
    }
    assert_eq!(senders.len(), 1, "only one peer gets a connection: {senders:?}");
    assert!(one.stats().rejected_connections > 0, "{:?}", one.stats());
    for t in [one, two, three] {
        t.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Raw attacks from a client with a valid certificate: no Hello, bad frames, huge lengths.

/// A raw QUIC client holding node `id`'s (valid) certificate.
fn raw_client(certs: &DevCerts, id: NodeId) -> quinn::Endpoint {
    let tls = certs.tls_config(id).expect("a certificate for the node");
    let (_, client) = raft_tls::rustls_configs(&tls, QUIC_ALPN).expect("TLS configs");
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).expect("QUIC client config");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
    endpoint
}

/// Connects `endpoint` to node 1 at `addr` (TLS completes: the certificate is valid).
async fn raw_connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    let connecting = endpoint.connect(addr, &format!("node-1.{CLUSTER_ID}")).expect("connect");
    tokio::time::timeout(Duration::from_secs(10), connecting).await.expect("in time").expect("TLS handshake")
}

/// Waits for the transport to close `connection`; returns how long that took and the
/// application close code.
async fn closed_within(connection: &quinn::Connection, within: Duration) -> (Duration, Option<u64>) {
    let started = Instant::now();
    let error =
        tokio::time::timeout(within, connection.closed()).await.expect("the transport closes the connection");
    let code = match error {
        quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        _ => None,
    };
    (started.elapsed(), code)
}

/// Sends a valid `Hello` as node 3 on a new bidirectional stream and expects `HelloAck`.
async fn raw_hello(connection: &quinn::Connection) {
    use raft_core::wire::{encode_frame, FrameDecoder, WireMessage, WIRE_VERSION};
    let (mut send, mut recv) = connection.open_bi().await.expect("bi stream");
    let hello = WireMessage::Hello { version: WIRE_VERSION, cluster_id: CLUSTER_ID.into(), node_id: 3 };
    let mut out = Vec::new();
    encode_frame(&hello, u32::MAX, &mut out).expect("encode");
    send.write_all(&out).await.expect("write Hello");
    send.finish().expect("finish");
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(4096))
        .await
        .expect("in time")
        .expect("read");
    let mut buf = bytes::BytesMut::from(&answer[..]);
    let ack = FrameDecoder::default().decode(&mut buf).expect("a valid frame");
    assert!(matches!(ack, Some(WireMessage::HelloAck { node_id: 1, .. })), "{ack:?}");
}

/// A client with a valid certificate of a peer (node 3, not running) connects and never sends
/// `Hello`: node 1 closes the connection after `handshake_timeout` (close code PROTOCOL) and
/// keeps working with node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_client_that_never_says_hello_is_cut_off() {
    let certs = generate_dev_certs(CLUSTER_ID, 1..=3).expect("certs");
    let addrs = transport_suite::free_loopback_addrs(3);
    let config1 = config(1, &addrs, &certs);
    let handshake_timeout = config1.handshake_timeout;
    let one = QuicTransport::start(config1).await.expect("node 1");
    let two = QuicTransport::start(config(2, &addrs, &certs)).await.expect("node 2");
    let client = raw_client(&certs, 3);
    let connection = raw_connect(&client, addrs[&1]).await;
    let (after, code) = closed_within(&connection, handshake_timeout * 4).await;
    assert_eq!(code, Some(u64::from(close_codes::PROTOCOL)), "closed with PROTOCOL");
    assert!(after >= handshake_timeout / 2, "closed after {after:?}, before the handshake timeout");
    assert!(one.stats().timeouts >= 1, "{:?}", one.stats());
    let (got1, got2) = transport_suite::exchange_for(&one, &two, Duration::from_secs(2)).await;
    assert!(got1 > 0 && got2 > 0, "node 1 keeps working: {got1} {got2}");
    client.close(0u32.into(), b"done");
    one.shutdown().await;
    two.shutdown().await;
}

/// After a valid `Hello`, a client sends hostile frames on a message stream: a 4 GiB length
/// prefix, a zero length, an undecodable body, a `Hello` where messages belong, and an
/// oversized handshake frame. Each is refused from its length prefix or body alone (the
/// decoder checks a length before reserving memory), the connection is closed at once with
/// PROTOCOL, and node 1 keeps working with node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_on_an_authenticated_stream_close_the_connection() {
    use raft_core::wire::{encode_frame, WireMessage, WIRE_VERSION};
    let certs = generate_dev_certs(CLUSTER_ID, 1..=3).expect("certs");
    let addrs = transport_suite::free_loopback_addrs(3);
    let config1 = config(1, &addrs, &certs);
    let prompt = config1.handshake_timeout.min(config1.frame_timeout) / 2;
    let one = QuicTransport::start(config1).await.expect("node 1");
    let two = QuicTransport::start(config(2, &addrs, &certs)).await.expect("node 2");
    let client = raw_client(&certs, 3);
    let mut garbage = 16u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 16]);
    let mut hello = Vec::new();
    let frame = WireMessage::Hello { version: WIRE_VERSION, cluster_id: CLUSTER_ID.into(), node_id: 3 };
    encode_frame(&frame, u32::MAX, &mut hello).expect("encode");
    let cases: [(&str, Vec<u8>); 4] = [
        ("4 GiB length", u32::MAX.to_be_bytes().to_vec()),
        ("zero length", vec![0, 0, 0, 0, 0xff]),
        ("garbage body", garbage),
        ("Hello on a message stream", hello),
    ];
    for (round, (name, bytes)) in cases.iter().enumerate() {
        let connection = raw_connect(&client, addrs[&1]).await;
        raw_hello(&connection).await;
        let mut stream = connection.open_uni().await.expect("uni stream");
        stream.write_all(bytes).await.expect("write");
        let (after, code) = closed_within(&connection, prompt).await;
        assert_eq!(
            code,
            Some(u64::from(close_codes::PROTOCOL)),
            "{name}: closed with PROTOCOL after {after:?}"
        );
        let bad = one.stats().bad_frames;
        assert!(bad > round as u64, "{name}: {bad} bad frames counted");
    }
    // A handshake frame over the 4 KiB handshake limit: refused from its length prefix.
    let connection = raw_connect(&client, addrs[&1]).await;
    let (mut send, _recv) = connection.open_bi().await.expect("bi stream");
    send.write_all(&(64 * 1024u32).to_be_bytes()).await.expect("write");
    let (_, code) = closed_within(&connection, prompt).await;
    assert_eq!(code, Some(u64::from(close_codes::PROTOCOL)), "oversized Hello");
    assert_eq!(one.stats().received, 0, "nothing from node 3 was delivered");
    let (got1, got2) = transport_suite::exchange_for(&one, &two, Duration::from_secs(2)).await;
    assert!(got1 > 0 && got2 > 0, "node 1 keeps working: {got1} {got2}");
    client.close(0u32.into(), b"done");
    one.shutdown().await;
    two.shutdown().await;
}
