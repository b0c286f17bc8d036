//! Outside review of issue 15, item 5 ("config checks complete"): addresses other nodes
//! cannot dial must be refused by `check-config` (and so by `run`) wherever they become member
//! addresses, not only in `[[members]]`.

use raft_node::config::{ConfigError, NodeConfig};

/// A node that joins a running cluster (no `[[members]]`), plaintext and open, with the given
/// own addresses.
fn joining(raft_addr: &str, client_addr: &str, extra: &str) -> String {
    format!(
        "cluster = \"dev\"\nid = 4\nraft_addr = \"{raft_addr}\"\nclient_addr = \"{client_addr}\"\n\
         data_dir = \"/tmp/final-review-config-unused\"\njoin = [\"127.0.0.1:8081\"]\n\
         insecure_plaintext_peers = true\ninsecure_open_client_api = true\n{extra}"
    )
}

fn problem_keys(text: &str) -> Result<Vec<String>, String> {
    match NodeConfig::parse(text, "node.toml", &[]) {
        Ok(_) => Err("accepted".to_owned()),
        Err(ConfigError::Invalid { problems, .. }) => Ok(problems.into_iter().map(|p| p.key).collect()),
        Err(e) => Err(format!("another error: {e}")),
    }
}

#[test]
fn a_sane_joining_config_is_accepted() {
    let text = joining("127.0.0.1:7004", "127.0.0.1:8084", "");
    NodeConfig::parse(&text, "node.toml", &[]).expect("a plain joining node is valid");
}

/// A joining node sends `raft_advertise_addr` (else `raft_addr`) and `client_addr` to the
/// leader (`request_membership`), which records them in the replicated address book without
/// checking them (`parse_addr` only parses): the members then dial 0.0.0.0 / port 0 / the
/// broadcast address for good. With `[[members]]` the same addresses are refused
/// (`members[i].raft_addr` must equal the top level and `undialable` refuses it).
#[test]
fn a_joining_node_whose_own_addresses_cannot_be_dialled_is_refused() {
    let cases = [
        ("wildcard raft_addr", joining("0.0.0.0:7004", "127.0.0.1:8084", "")),
        ("wildcard client_addr", joining("127.0.0.1:7004", "0.0.0.0:8084", "")),
        ("port 0 raft_addr", joining("127.0.0.1:0", "127.0.0.1:8084", "")),
        ("port 0 client_addr", joining("127.0.0.1:7004", "127.0.0.1:0", "")),
        (
            "broadcast raft_advertise_addr",
            joining("0.0.0.0:7004", "127.0.0.1:8084", "raft_advertise_addr = \"255.255.255.255:7004\"\n"),
        ),
        (
            "multicast raft_advertise_addr",
            joining("0.0.0.0:7004", "127.0.0.1:8084", "raft_advertise_addr = \"239.1.2.3:7004\"\n"),
        ),
    ];
    let mut accepted = Vec::new();
    for (what, text) in &cases {
        match problem_keys(text) {
            Ok(keys) if !keys.is_empty() => {}
            Ok(_) => accepted.push(format!("{what}: no problem")),
            Err(why) => accepted.push(format!("{what}: {why}")),
        }
    }
    assert!(accepted.is_empty(), "member addresses nobody can dial were accepted: {accepted:#?}");
}

/// `[[members]]` entries: an IPv4-mapped IPv6 wildcard or broadcast address is the same
/// undialable address as 0.0.0.0 / 255.255.255.255, written differently.
#[test]
fn ipv4_mapped_wildcard_and_broadcast_member_addresses_are_refused() {
    let members = |addr2: &str| {
        format!(
            "cluster = \"dev\"\nid = 1\nraft_addr = \"127.0.0.1:7001\"\nclient_addr = \"127.0.0.1:8081\"\n\
             data_dir = \"/tmp/final-review-config-unused\"\ninsecure_plaintext_peers = true\n\
             insecure_open_client_api = true\n\
             [[members]]\nid = 1\nraft_addr = \"127.0.0.1:7001\"\nclient_addr = \"127.0.0.1:8081\"\n\
             [[members]]\nid = 2\nraft_addr = \"{addr2}\"\nclient_addr = \"127.0.0.1:8082\"\n\
             [[members]]\nid = 3\nraft_addr = \"127.0.0.1:7003\"\nclient_addr = \"127.0.0.1:8083\"\n"
        )
    };
    // The plain forms are refused (the team's own test); the mapped forms must be too.
    assert!(problem_keys(&members("0.0.0.0:7002")).is_ok_and(|k| k.contains(&"members[1].raft_addr".into())));
    let mut accepted = Vec::new();
    for addr in ["[::ffff:0.0.0.0]:7002", "[::ffff:255.255.255.255]:7002"] {
        match problem_keys(&members(addr)) {
            Ok(keys) if keys.iter().any(|k| k == "members[1].raft_addr") => {}
            other => accepted.push(format!("{addr}: {other:?}")),
        }
    }
    assert!(accepted.is_empty(), "undialable mapped addresses accepted: {accepted:#?}");
}
