use super::*;

/// The shipped example, with its `[tls]` paths pointing at dev certificates that exist.
fn example() -> &'static str {
    static EXAMPLE: std::sync::OnceLock<(tempfile::TempDir, String)> = std::sync::OnceLock::new();
    &EXAMPLE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let certs = dir.path().join("certs");
            raft_tls::generate_dev_certs("dev", 1..=3)
                .expect("certs")
                .write_dev_certs(&certs)
                .expect("written");
            let secrets = dir.path().join("secrets");
            std::fs::create_dir_all(&secrets).expect("secrets dir");
            std::fs::write(secrets.join("admin.token"), "example-token\n").expect("token file");
            let text = include_str!("../../node.example.toml")
                .replace("\"certs/", &format!("\"{}/", certs.display()))
                .replace("\"secrets/", &format!("\"{}/", secrets.display()));
            (dir, text)
        })
        .1
}

fn problems_of(text: &str, overrides: &[&str]) -> Vec<ConfigProblem> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match NodeConfig::parse(text, "test.toml", &overrides) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

fn keys(problems: &[ConfigProblem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

#[test]
fn the_shipped_example_is_valid_and_matches_the_defaults() {
    let config = NodeConfig::parse(example(), "node.example.toml", &[]).expect("the example is valid");
    assert_eq!(config.id, 1);
    assert_eq!(config.members.len(), 3);
    assert_eq!(config.raft, raft_core::Config::default(), "the example documents the defaults");
    assert_eq!(config.limits, LimitsConfig::default());
    assert_eq!(config.network, NetworkConfig::default());
    assert_eq!(config.log, LogConfig::default());
    assert_eq!(config.discovery, DiscoveryConfig::default());
    assert_eq!(config.peers().map(|m| m.id).collect::<Vec<_>>(), vec![2, 3]);
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    let err = NodeConfig::parse("cluster = \"a\"\nid = = 3\n", "bad.toml", &[]).expect_err("malformed");
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }));
    assert!(text.starts_with("bad.toml:"), "{text}");
    assert!(text.contains("line 2"), "{text}");
}

#[test]
fn unknown_fields_are_refused() {
    let text =
        example().replace("heartbeat_interval_ms = 20", "heartbeat_interval_ms = 20\nheartbeat_ms = 5");
    let err = NodeConfig::parse(&text, "x.toml", &[]).expect_err("unknown field");
    assert!(err.to_string().contains("heartbeat_ms"), "{err}");
    let top = format!("colour = \"red\"\n{}", example());
    assert!(NodeConfig::parse(&top, "x.toml", &[]).is_err());
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = example()
        .replace("id = 3\n", "id = 2\n") // duplicate node id
        .replace("heartbeat_interval_ms = 20", "heartbeat_interval_ms = 500") // heartbeat > election min
        .replace("max_key_bytes = 4096", "max_key_bytes = 0");
    let problems = problems_of(&text, &[]);
    let keys = keys(&problems);
    assert!(keys.contains(&"members[2].id"), "{problems:?}");
    assert!(keys.contains(&"raft"), "{problems:?}");
    assert!(keys.contains(&"limits.max_key_bytes"), "{problems:?}");
    let err = NodeConfig::parse(&text, "x.toml", &[]).expect_err("invalid").to_string();
    assert!(err.contains("3 problem(s)"), "{err}");
}

#[test]
fn self_missing_from_members_is_refused() {
    let problems =
        problems_of(example(), &["id=7", "raft_addr=\"127.0.0.1:7007\"", "client_addr=\"127.0.0.1:8087\""]);
    assert!(problems.iter().any(|p| p.key == "members" && p.reason.contains("missing")), "{problems:?}");
}

#[test]
fn an_advertised_raft_address_is_what_the_members_entry_carries() {
    // Node 1 listens on 127.0.0.1:7001; peers dial it through 127.0.0.1:7101.
    let advertised = example().replacen(
        "id = 1\nraft_addr = \"127.0.0.1:7001\"",
        "id = 1\nraft_addr = \"127.0.0.1:7101\"",
        1,
    );
    assert_ne!(advertised, example());
    let config = NodeConfig::parse(&advertised, "a.toml", &["raft_advertise_addr=\"127.0.0.1:7101\"".into()])
        .expect("listening on one address and advertising another is valid");
    assert_eq!(config.raft_addr.port(), 7001);
    assert_eq!(config.advertised_raft_addr().port(), 7101);
    assert_eq!(config.members[0].raft_addr.port(), 7101);
    // Without the advertised address the members entry no longer matches this node.
    let problems = problems_of(&advertised, &[]);
    assert_eq!(keys(&problems), vec!["members[0]"], "{problems:?}");
    // Unset, the advertised address is raft_addr.
    let plain = NodeConfig::parse(example(), "x.toml", &[]).expect("valid");
    assert_eq!(plain.advertised_raft_addr(), plain.raft_addr);
    // Not dialable, or the HTTP address.
    for bad in ["\"0.0.0.0:7101\"", "\"127.0.0.1:0\"", "\"127.0.0.1:8081\""] {
        let problems = problems_of(example(), &[&format!("raft_advertise_addr={bad}")]);
        assert!(keys(&problems).contains(&"raft_advertise_addr"), "{bad}: {problems:?}");
    }
}

#[test]
fn members_and_join_are_exclusive_and_one_is_needed() {
    let problems = problems_of(example(), &["join=[\"127.0.0.1:8082\"]"]);
    assert!(keys(&problems).contains(&"join"), "{problems:?}");
    assert!(keys(&problems_of(BARE, &[])).contains(&"members"));
    let joiner =
        NodeConfig::parse(BARE, "j.toml", &["join=[\"127.0.0.1:8081\"]".into()]).expect("a joiner is valid");
    assert_eq!(joiner.join, vec!["127.0.0.1:8081".to_string()]);
}

/// A minimal config (plaintext peers, to need no certificate files).
const BARE: &str = "cluster = \"c\"\nid = 1\nraft_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\n\
                    data_dir = \"d\"\ninsecure_plaintext_peers = true\ninsecure_open_client_api = true\n";

#[test]
fn discovery_alone_is_enough_to_find_a_cluster_but_must_be_on() {
    let problems = problems_of(BARE, &["discovery.enabled=false"]);
    assert!(problems.iter().any(|p| p.key == "members" && p.reason.contains("discovery")), "{problems:?}");
    let config = NodeConfig::parse(BARE, "d.toml", &["discovery.enabled=true".into()]).expect("valid");
    assert!(config.members.is_empty() && config.join.is_empty() && config.discovery.enabled);
    assert_eq!(config.discovery.interface_for(config.raft_addr), Some(Ipv4Addr::LOCALHOST));
}

#[test]
fn discovery_settings_are_validated() {
    for (group, why) in [
        ("\"10.0.0.1:7946\"", "unicast"),
        ("\"255.255.255.255:7946\"", "broadcast"),
        ("\"[ff02::1]:7946\"", "IPv6"),
        ("\"239.255.77.1:0\"", "port 0"),
    ] {
        let problems = problems_of(example(), &[&format!("discovery.group={group}")]);
        assert_eq!(keys(&problems), vec!["discovery.group"], "{why}: {problems:?}");
    }
    assert!(NodeConfig::parse(example(), "x.toml", &["discovery.group=\"not an address\"".into()]).is_err());
    for (over, key) in [
        ("discovery.interface=\"::1\"", "discovery.interface"),
        ("discovery.interface=\"239.1.1.1\"", "discovery.interface"),
        ("discovery.interval_ms=0", "discovery.interval_ms"),
        ("discovery.interval_ms=600000", "discovery.interval_ms"),
        ("discovery.listen_ms=1500", "discovery.listen_ms"),
    ] {
        assert!(keys(&problems_of(example(), &[over])).contains(&key), "{over}");
    }
    // Turned on, the announced addresses must be specific and the interface IPv4.
    let problems = problems_of(example(), &["discovery.enabled=true", "raft_addr=\"0.0.0.0:7001\""]);
    assert!(keys(&problems).contains(&"raft_addr"), "{problems:?}");
    let v6 = BARE.replace("127.0.0.1:1", "[::1]:1");
    let problems = problems_of(&v6, &["discovery.enabled=true"]);
    assert_eq!(keys(&problems), vec!["discovery.interface"], "{problems:?}");
    let ok = NodeConfig::parse(
        &v6,
        "x.toml",
        &["discovery.enabled=true".into(), "discovery.interface=\"127.0.0.1\"".into()],
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn own_entry_must_match_the_top_level_addresses() {
    let problems = problems_of(example(), &["client_addr=\"127.0.0.1:9999\""]);
    assert!(keys(&problems).contains(&"members[0]"), "{problems:?}");
}

#[test]
fn duplicate_addresses_and_bad_cluster_ids_are_refused() {
    let text = example().replace("127.0.0.1:7003", "127.0.0.1:7002");
    assert!(problems_of(&text, &[]).iter().any(|p| p.reason.contains("used twice")));
    assert!(keys(&problems_of(example(), &["cluster=\"a b\""])).contains(&"cluster"));
    assert!(keys(&problems_of(example(), &["cluster=\"\""])).contains(&"cluster"));
}

/// The example without its `[tls]` section.
fn example_without_tls() -> String {
    let text = example();
    let start = text.find("[tls]\n").expect("the example has [tls]");
    let end = start + text[start..].find("\n\n").expect("the section ends");
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn peers_authenticate_unless_plaintext_is_chosen_explicitly() {
    let plain = example_without_tls();
    assert!(keys(&problems_of(&plain, &[])).contains(&"tls"), "no [tls] and no explicit choice");
    let config = NodeConfig::parse(&plain, "x.toml", &["insecure_plaintext_peers=true".into()])
        .expect("plaintext chosen explicitly");
    assert!(config.tls.is_none() && config.insecure_plaintext_peers);
    assert!(keys(&problems_of(example(), &["insecure_plaintext_peers=true"]))
        .contains(&"insecure_plaintext_peers"));
    // QUIC has no plaintext mode.
    let quic = problems_of(&plain, &["transport=\"quic\"", "insecure_plaintext_peers=true"]);
    assert!(keys(&quic).contains(&"tls"));
}

#[test]
fn tls_files_must_be_readable() {
    let problems = problems_of(
        example(),
        &[
            "tls.ca_cert=\"/nonexistent/ca.pem\"",
            "tls.cert=\"/nonexistent/c.pem\"",
            "tls.key=\"/nonexistent/k.pem\"",
        ],
    );
    let keys = keys(&problems);
    for key in ["tls.ca_cert", "tls.cert", "tls.key"] {
        assert!(keys.contains(&key), "{key} missing from {problems:?}");
    }
}

#[test]
fn overrides_set_nested_keys_and_typed_values() {
    let config = NodeConfig::parse(
        example(),
        "x.toml",
        &["raft.heartbeat_interval_ms=30".into(), "log.level=debug".into()],
    )
    .expect("valid");
    assert_eq!(config.raft.heartbeat_interval_ms, 30);
    assert_eq!(config.log.level, "debug", "a bare word is taken as a string");
    assert!(matches!(
        NodeConfig::parse(example(), "x.toml", &["no_equals_sign".into()]),
        Err(ConfigError::BadOverride(_))
    ));
    assert!(matches!(
        NodeConfig::parse(example(), "x.toml", &["id.x=1".into()]),
        Err(ConfigError::BadOverride(_))
    ));
    let err = NodeConfig::parse(example(), "x.toml", &["id=\"one\"".into()]).expect_err("wrong type");
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
}

#[test]
fn frame_limit_must_hold_snapshot_chunks_and_appends() {
    let problems = problems_of(example(), &["network.max_frame_bytes=262144"]);
    let keys = keys(&problems);
    assert!(keys.contains(&"raft.snapshot_chunk_bytes"), "{problems:?}");
    assert!(keys.contains(&"raft.max_bytes_per_append"), "{problems:?}");
}

#[test]
fn a_missing_file_is_a_read_error() {
    let err = NodeConfig::load(Path::new("/nonexistent/node.toml"), &[]).expect_err("missing");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/node.toml"));
}

#[test]
fn tls_material_this_node_cannot_use_is_refused_before_start() {
    // Node 2's certificate and key for node 1.
    let text = example().replace("node-1.pem", "node-2.pem").replace("node-1-key.pem", "node-2-key.pem");
    let problems = problems_of(&text, &[]);
    assert!(problems.iter().any(|p| p.key == "tls" && p.reason.contains("names node 2")), "{problems:?}");
    // Node 1's certificate with node 2's key.
    let text = example().replace("node-1-key.pem", "node-2-key.pem");
    assert!(keys(&problems_of(&text, &[])).contains(&"tls"));
    // A cluster id no certificate name can carry.
    assert!(keys(&problems_of(example(), &["cluster=\"Dev\""])).contains(&"cluster"));
}

#[test]
fn member_addresses_other_nodes_cannot_dial_are_refused() {
    let text = example()
        .replace("raft_addr = \"127.0.0.1:7002\"", "raft_addr = \"0.0.0.0:7002\"")
        .replace("client_addr = \"127.0.0.1:8082\"", "client_addr = \"127.0.0.1:0\"")
        .replace("raft_addr = \"127.0.0.1:7003\"", "raft_addr = \"255.255.255.255:7003\"")
        .replace("client_addr = \"127.0.0.1:8083\"", "client_addr = \"239.1.2.3:8083\"");
    let problems = problems_of(&text, &[]);
    let keys = keys(&problems);
    for key in
        ["members[1].raft_addr", "members[1].client_addr", "members[2].raft_addr", "members[2].client_addr"]
    {
        assert!(keys.contains(&key), "{key} not refused: {problems:?}");
    }
}

#[test]
fn limits_past_what_the_runtime_allows_are_refused() {
    // tokio's semaphore panics at start past its maximum (about 2^61 permits).
    let problems = problems_of(
        example(),
        &["limits.max_concurrent_requests=2305843009213693952", "limits.request_timeout_ms=100000000000"],
    );
    let keys = keys(&problems);
    assert!(keys.contains(&"limits.max_concurrent_requests"), "{problems:?}");
    assert!(keys.contains(&"limits.request_timeout_ms"), "{problems:?}");
}

#[test]
fn a_watch_nice_increment_outside_0_to_19_is_refused() {
    for bad in ["-1", "20"] {
        let problems = problems_of(example(), &[&format!("limits.watch_nice={bad}")]);
        assert!(keys(&problems).contains(&"limits.watch_nice"), "{bad}: {problems:?}");
    }
    let zero = NodeConfig::parse(example(), "test.toml", &["limits.watch_nice=0".to_string()]);
    assert_eq!(zero.expect("valid").limits.watch_nice, 0);
}

#[test]
fn https_and_certificate_roles_are_checked_before_the_node_starts() {
    let base = NodeConfig::parse(example(), "node.example.toml", &[]).expect("valid");
    let certs = base.tls.as_ref().expect("[tls]").ca_cert.parent().expect("dir").to_path_buf();
    let api = ApiTlsConfig {
        cert: certs.join("api-1.pem"),
        key: certs.join("api-1-key.pem"),
        ca_cert: None,
        client_ca: None,
        require_client_certificate: false,
    };
    let with = |tweak: &dyn Fn(&mut NodeConfig)| {
        let mut c = base.clone();
        c.api_tls = Some(api.clone());
        tweak(&mut c);
        c.problems().into_iter().map(|p| p.key).collect::<Vec<_>>()
    };
    assert!(with(&|_| {}).is_empty(), "HTTPS with the dev API certificate");
    assert_eq!(with(&|c| c.api_tls.as_mut().unwrap().key = certs.join("api-2-key.pem")), vec!["api_tls"]);
    assert_eq!(with(&|c| c.api_tls.as_mut().unwrap().cert = certs.join("missing.pem")), vec!["api_tls"]);
    assert_eq!(
        with(&|c| c.api_tls.as_mut().unwrap().require_client_certificate = true),
        vec!["api_tls.require_client_certificate"]
    );
    let role = |name: &str| CertificateRoleConfig { name: name.into(), role: ClientRole::Admin };
    assert_eq!(
        with(&|c| c.auth.as_mut().unwrap().certificates = vec![role("ops")]),
        vec!["auth.certificates"]
    );
    let client_ca = |c: &mut NodeConfig| c.api_tls.as_mut().unwrap().client_ca = Some(certs.join("ca.pem"));
    assert!(with(&|c| {
        client_ca(c);
        c.auth.as_mut().unwrap().certificates = vec![role("ops")];
    })
    .is_empty());
    // Names of node identities, padded names; certificates do not replace the nodes' tokens.
    assert_eq!(
        with(&|c| {
            client_ca(c);
            c.auth.as_mut().unwrap().certificates = vec![role("node-2.dev"), role(" ops")];
        }),
        vec!["auth.certificates[0].name", "auth.certificates[1].name"]
    );
    assert_eq!(
        with(&|c| {
            client_ca(c);
            let auth = c.auth.as_mut().unwrap();
            auth.certificates = vec![role("ops")];
            auth.tokens.clear();
        }),
        vec!["auth.tokens"]
    );
}

#[test]
fn an_expired_or_foreign_api_certificate_is_refused_before_the_node_starts() {
    let base = NodeConfig::parse(example(), "node.example.toml", &[]).expect("valid");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = raft_tls::DevCa::new("dev").expect("ca");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("written");
        path
    };
    let ca_file = write("api-ca.pem", &ca.cert_pem());
    let (cert, key) = ca.issue_server(&["localhost".into()]).expect("server");
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    let (old_cert, old_key) =
        ca.issue_with_validity("localhost", past - time::Duration::days(1), past).expect("expired");
    let (foreign_cert, foreign_key) =
        raft_tls::DevCa::new("dev").expect("ca").issue_server(&["localhost".into()]).expect("server");
    let problems = |cert: &str, key: &str| {
        let mut c = base.clone();
        c.api_tls = Some(ApiTlsConfig {
            cert: write("api.pem", cert),
            key: write("api-key.pem", key),
            ca_cert: Some(ca_file.clone()),
            client_ca: None,
            require_client_certificate: false,
        });
        c.problems().into_iter().map(|p| (p.key, p.reason)).collect::<Vec<_>>()
    };
    assert!(problems(&cert, &key).is_empty(), "{:?}", problems(&cert, &key));
    for (what, (cert, key)) in
        [("expired", (&old_cert, &old_key)), ("foreign", (&foreign_cert, &foreign_key))]
    {
        let found = problems(cert, key);
        assert!(
            found.iter().any(|(k, reason)| k == "api_tls" && reason.contains("members' CA")),
            "{what}: {found:?}"
        );
    }
}
