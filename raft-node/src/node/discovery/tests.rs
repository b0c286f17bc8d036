use super::*;

fn announcement(cluster: &str, id: NodeId) -> Announcement {
    Announcement {
        cluster: cluster.into(),
        id,
        raft_addr: SocketAddr::from(([10, 0, 0, id as u8], 7000)),
        client_addr: SocketAddr::from(([10, 0, 0, id as u8], 8000)),
    }
}

fn config(cluster: &str, id: NodeId) -> NodeConfig {
    let text = format!(
        "cluster = \"{cluster}\"\nid = {id}\nraft_addr = \"127.0.0.1:{}\"\nclient_addr = \"127.0.0.1:{}\"\n\
         data_dir = \"d\"\ninsecure_plaintext_peers = true\ninsecure_open_client_api = true\n[discovery]\nenabled = true\ninterval_ms = 100\nlisten_ms = 2000\n",
        7000 + id,
        8000 + id,
    );
    NodeConfig::parse(&text, "t.toml", &[]).expect("valid")
}

#[test]
fn an_announcement_round_trips_and_stays_small() {
    let a = announcement("dev", 3);
    let bytes = a.encode().expect("encodes");
    assert!(bytes.starts_with(b"RNDA\x01"));
    assert_eq!(Announcement::decode(&bytes), Ok(a));
    // The largest possible announcement: a 64-byte cluster id and two IPv6 addresses.
    let v6: SocketAddr = "[fd00:1234:5678:9abc:def0:1234:5678:9abc]:65535".parse().expect("addr");
    let big = Announcement { cluster: "c".repeat(64), id: u64::MAX, raft_addr: v6, client_addr: v6 };
    let bytes = big.encode().expect("encodes");
    assert!(bytes.len() < 200, "{} bytes", bytes.len());
    assert_eq!(Announcement::decode(&bytes), Ok(big));
}

#[test]
fn foreign_versions_trailing_bytes_and_oversized_datagrams_are_refused() {
    let bytes = announcement("dev", 1).encode().expect("encodes");
    assert_eq!(Announcement::decode(b""), Err(DatagramError::NotDiscovery));
    assert_eq!(Announcement::decode(b"RNDA"), Err(DatagramError::NotDiscovery));
    assert_eq!(Announcement::decode(b"HTTP/1.1 200 OK"), Err(DatagramError::NotDiscovery));
    let mut v2 = bytes.clone();
    v2[4] = 2;
    assert_eq!(Announcement::decode(&v2), Err(DatagramError::Version(2)));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(Announcement::decode(&trailing), Err(DatagramError::Malformed(_))));
    let mut oversized = bytes.clone();
    oversized.resize(MAX_DATAGRAM_BYTES + 1, 0);
    assert_eq!(Announcement::decode(&oversized), Err(DatagramError::Oversized));
    assert!(matches!(Announcement::decode(&bytes[..bytes.len() - 1]), Err(DatagramError::Malformed(_))));
    // Values a real node never announces are refused on both sides.
    for bad in [
        Announcement { id: 0, ..announcement("dev", 1) },
        Announcement { cluster: String::new(), ..announcement("dev", 1) },
        Announcement { cluster: "c".repeat(65), ..announcement("dev", 1) },
        Announcement { client_addr: "0.0.0.0:8000".parse().expect("addr"), ..announcement("dev", 1) },
        Announcement { raft_addr: "10.0.0.1:0".parse().expect("addr"), ..announcement("dev", 1) },
    ] {
        assert!(matches!(bad.encode(), Err(DatagramError::Malformed(_))), "{bad:?}");
        let mut raw = b"RNDA\x01".to_vec();
        raw.extend(postcard::to_stdvec(&bad).expect("postcard"));
        assert!(matches!(Announcement::decode(&raw), Err(DatagramError::Malformed(_))), "{bad:?}");
    }
}

#[test]
fn random_and_mutated_datagrams_never_panic() {
    let mut rng = raft_core::SeededRng::new(0x5EED);
    let valid = announcement("dev", 2).encode().expect("encodes");
    let mut decoded = 0;
    for round in 0..200_000 {
        let bytes: Vec<u8> = match round % 3 {
            // Pure noise, sometimes over the limit.
            0 => (0..rng.range(0, 600)).map(|_| rng.next_u64() as u8).collect(),
            // Noise behind a valid header: exercises the postcard decoder.
            1 => {
                let mut b = b"RNDA\x01".to_vec();
                b.extend((0..rng.range(0, 100)).map(|_| rng.next_u64() as u8));
                b
            }
            // A valid datagram with a few bytes changed, cut short or extended.
            _ => {
                let mut b = valid.clone();
                for _ in 0..=rng.range(0, 3) {
                    let i = rng.range(0, b.len() as u64) as usize;
                    b[i] = rng.next_u64() as u8;
                }
                match rng.range(0, 3) {
                    0 => b.truncate(rng.range(0, b.len() as u64 + 1) as usize),
                    1 => b.extend((0..rng.range(0, 8)).map(|_| rng.next_u64() as u8)),
                    _ => {}
                }
                b
            }
        };
        if let Ok(a) = Announcement::decode(&bytes) {
            decoded += 1;
            // Whatever decodes is a valid announcement (postcard accepts overlong varints, so
            // its encoding may be shorter than the datagram).
            let again = a.encode().expect("a decoded announcement encodes");
            assert_eq!(Announcement::decode(&again), Ok(a));
        }
        let heard = Heard::classify(&bytes, "dev", 1);
        assert!(!heard.outcome().is_empty());
    }
    assert!(decoded > 0, "some mutations still decode (e.g. a changed address byte)");
}

#[test]
fn other_clusters_and_own_announcements_are_told_apart() {
    let own = announcement("dev", 1);
    let member = announcement("dev", 2);
    let stranger = announcement("prod", 2);
    let classify = |a: &Announcement| Heard::classify(&a.encode().expect("encodes"), "dev", 1);
    assert_eq!(classify(&member), Heard::Member(member.clone()));
    assert_eq!(classify(&own), Heard::SameId(own.clone()));
    assert_eq!(classify(&stranger), Heard::OtherCluster(stranger.clone()));
    assert_eq!(classify(&stranger).outcome(), "other_cluster");
    assert_eq!(Heard::classify(b"junk", "dev", 1).outcome(), "malformed");
    assert_eq!(Heard::classify(&[0; MAX_DATAGRAM_BYTES + 1], "dev", 1).outcome(), "oversized");
}

#[tokio::test]
async fn listening_collects_members_of_its_cluster_and_ignores_the_rest() {
    let bus = MemoryBus::default();
    let (listener, other) = (bus.channel(), bus.channel());
    let me = config("dev", 4);
    let metrics = Metrics::new();
    let sender = async {
        let two = announcement("dev", 2).encode().expect("encodes");
        let three = announcement("dev", 3).encode().expect("encodes");
        let stranger = announcement("prod", 1).encode().expect("encodes");
        let own = Announcement::of(&me).encode().expect("encodes");
        for datagram in [&b"junk"[..], &[7; 600], &stranger, &own, &two, &two, &three] {
            other.send(datagram).await.expect("send");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let started = Instant::now();
    let (found, ()) = tokio::join!(find_members(listener.as_ref(), &me, &metrics), sender);
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(found[&3].client_addr, announcement("dev", 3).client_addr);
    // It stopped two intervals after the first member, well before listen_ms.
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(me.discovery.listen_ms / 2), "{waited:?}");
    for (outcome, n) in
        [("malformed", 1), ("oversized", 1), ("other_cluster", 1), ("same_id", 1), ("member", 3)]
    {
        assert_eq!(metrics.discovery_count(outcome), n, "{outcome}");
    }
}

#[tokio::test]
async fn listening_gives_up_after_listen_ms() {
    let bus = MemoryBus::default();
    let (listener, stranger) = (bus.channel(), bus.channel());
    let mut me = config("dev", 4);
    me.discovery.listen_ms = 300;
    let noise = async {
        // Another cluster's announcements do not end (or extend) the wait.
        let datagram = announcement("prod", 1).encode().expect("encodes");
        for _ in 0..5 {
            stranger.send(&datagram).await.expect("send");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let metrics = Metrics::new();
    let started = Instant::now();
    let (found, ()) = tokio::join!(find_members(listener.as_ref(), &me, &metrics), noise);
    assert!(found.is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "{waited:?}");
}

/// Opens two channels on a fresh group port on loopback and checks that a datagram sent on
/// one arrives on the other; `None` when this host has no working multicast on loopback.
async fn loopback_multicast_pair() -> Option<(MulticastChannel, MulticastChannel, SocketAddrV4)> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 1), port);
    let (a, b) = match (
        MulticastChannel::open(group, Ipv4Addr::LOCALHOST),
        MulticastChannel::open(group, Ipv4Addr::LOCALHOST),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "SKIPPED: multicast on loopback unavailable here ({e}); the in-process bus tests still ran"
            );
            return None;
        }
    };
    a.send(b"probe").await.ok()?;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(2), b.recv(&mut buf)).await {
        Ok(Ok(5)) => Some((a, b, group)),
        other => {
            eprintln!("SKIPPED: multicast on loopback does not deliver here ({other:?})");
            None
        }
    }
}

#[tokio::test]
async fn a_real_multicast_socket_carries_announcements_and_survives_junk() {
    let Some((a, b, group)) = loopback_multicast_pair().await else { return };
    eprintln!("exercised on a real multicast socket: {}", b.describe());
    // A third socket throws junk at the group: oversized and undecodable datagrams.
    let junk = MulticastChannel::open(group, Ipv4Addr::LOCALHOST).expect("a third socket");
    junk.send(&[0xAB; 2000]).await.expect("send oversized");
    junk.send(b"RNDA\x01\xff\xff\xff").await.expect("send malformed");
    let me = config("dev", 4);
    let two = announcement("dev", 2).encode().expect("encodes");
    let stranger = announcement("other", 5).encode().expect("encodes");
    a.send(&stranger).await.expect("send");
    a.send(&two).await.expect("send");
    let metrics = Metrics::new();
    let found = find_members(&b, &me, &metrics).await;
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(metrics.discovery_count("oversized"), 1);
    assert_eq!(metrics.discovery_count("malformed"), 1);
    assert_eq!(metrics.discovery_count("other_cluster"), 1);
}
