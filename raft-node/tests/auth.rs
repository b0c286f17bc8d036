//! Client authentication: bearer tokens with roles, probed as an anonymous client, a client
//! with a guessed token, and clients whose role is too low would.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;

use common::TestCluster;
use raft_client::{Client, ClientError, ClientOptions};
use raft_node::config::{AuthConfig, ClientRole, StorageKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "admin-token-for-the-auth-tests-0001";
const WRITER: &str = "writer-token-for-the-auth-tests-0002";
const READER: &str = "reader-token-for-the-auth-tests-0003";

fn auth(token_dir: &Path, open_ops: bool) -> AuthConfig {
    let tokens = [
        ("ops", ClientRole::Admin, ADMIN),
        ("app", ClientRole::Write, WRITER),
        ("dashboard", ClientRole::Read, READER),
    ];
    common::auth_config(token_dir, &tokens, open_ops)
}

async fn start(n: u64, token_dir: &Path, open_ops: bool) -> TestCluster {
    let config = auth(token_dir, open_ops);
    TestCluster::start_with(n, StorageKind::Mem, move |c| {
        c.insecure_open_client_api = false;
        c.auth = Some(config.clone());
    })
    .await
}

/// Three nodes on in-memory storage, with a write and every node's addresses registered (so
/// that the others know node 3), then node 3 stopped: its data is gone.
async fn known_cluster_without_node_3(token_dir: &Path) -> TestCluster {
    let mut cluster = start(3, token_dir, true).await;
    cluster.client().put("k", "v").await.unwrap();
    let client = cluster.client();
    common::eventually("every node registered its addresses", || {
        let client = client.clone();
        async move { client.members().await.is_ok_and(|m| m.members.iter().all(|m| m.registered)) }
    })
    .await;
    cluster.stop(3).await;
    cluster
}

fn client_as(cluster: &TestCluster, token: Option<&str>) -> Client {
    let options =
        ClientOptions { token: token.map(str::to_owned), max_retries: 2, ..ClientOptions::default() };
    Client::new(cluster.endpoints(), options).unwrap()
}

fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(e) => e.code().to_string(),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

/// A raw HTTP/1.1 exchange (no client library in the way); returns the whole answer.
async fn raw(addr: &str, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_what_it_may_and_nothing_more() {
    let tokens = tempfile::tempdir().unwrap();
    let cluster = start(3, tokens.path(), true).await;
    let anonymous = client_as(&cluster, None);
    let guessed = client_as(&cluster, Some("admin"));
    let reader = client_as(&cluster, Some(READER));
    let writer = client_as(&cluster, Some(WRITER));
    let admin = client_as(&cluster, Some(ADMIN));

    // No token, or a guessed one: nothing, not even the status.
    assert_eq!(code_of(anonymous.status().await), "unauthenticated");
    assert_eq!(code_of(anonymous.put("k", "v").await), "unauthenticated");
    assert_eq!(code_of(guessed.put("k", "v").await), "unauthenticated");
    assert_eq!(code_of(guessed.members().await), "unauthenticated");

    // Read: reads only.
    assert!(reader.status().await.is_ok());
    assert_eq!(code_of(reader.put("k", "v").await), "forbidden");

    // Write: keys and services, no administration.
    writer.put("k", "v").await.unwrap();
    assert_eq!(reader.get("k", None).await.unwrap().map(|e| e.value), Some("v".to_string()));
    assert!(writer.members().await.is_ok(), "the member list is a read");
    assert_eq!(code_of(writer.transfer_leader(None).await), "forbidden");
    assert_eq!(code_of(writer.log(None, Some(1)).await), "forbidden");
    assert_eq!(code_of(writer.remove_member(3, false).await), "forbidden");
    assert_eq!(code_of(writer.snapshot().await), "forbidden");
    assert_eq!(cluster.client().members().await.unwrap().members.len(), 3, "nothing was removed");

    // Admin: everything.
    assert!(admin.log(None, Some(1)).await.is_ok());
    let before = admin.leader().await.unwrap().leader;
    let after = admin.transfer_leader(None).await.unwrap().leader;
    assert_ne!(before, after, "the admin's transfer happened");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_json_and_come_before_the_body_is_read() {
    let tokens = tempfile::tempdir().unwrap();
    let cluster = start(1, tokens.path(), true).await;
    let addr = cluster.endpoint(1);

    let answer = raw(&addr, "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("www-authenticate: bearer"), "{answer}");
    assert!(answer.contains("\"code\":\"unauthenticated\""), "{answer}");

    // Another scheme is no token.
    let basic = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {ADMIN}\r\nConnection: close\r\n\r\n"
    );
    assert!(raw(&addr, &basic).await.starts_with("HTTP/1.1 401"));

    // A body announced but never sent: refused at once, without waiting for it.
    let started = std::time::Instant::now();
    let answer =
        raw(&addr, "PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n")
            .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "the body was waited for");

    // 403 is JSON too, and names the role needed.
    let forbidden = format!(
        "POST /v1/transfer-leader HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READER}\r\n\
         Content-Length: 2\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{{}}"
    );
    let answer = raw(&addr, &forbidden).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("\"code\":\"forbidden\"") && answer.contains("needs admin"), "{answer}");

    // The operational endpoints stay open for probes.
    let answer = raw(&addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_can_be_closed_too() {
    let tokens = tempfile::tempdir().unwrap();
    let cluster = start(1, tokens.path(), false).await;
    let addr = cluster.endpoint(1);
    for path in ["/health", "/ready", "/metrics"] {
        let answer =
            raw(&addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
        let with_token = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READER}\r\nConnection: close\r\n\r\n"
        );
        assert!(raw(&addr, &with_token).await.starts_with("HTTP/1.1 200"), "{path}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_token_the_others_refuse_does_not_start_blind() {
    let tokens = tempfile::tempdir().unwrap();
    let cluster = known_cluster_without_node_3(tokens.path()).await;
    // Node 3 comes back with its (in-memory) data gone: with its token it asks the others,
    // learns that they know it, and refuses to vote with an empty log.
    let config = cluster.configs[2].clone();
    match raft_node::Node::start(config.clone()).await {
        Err(raft_node::StartError::LostData { .. }) => {}
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a node that lost its data started"),
    }
    // With a token the others refuse it cannot ask, so it does not start either.
    let wrong = tokens.path().join("wrong.token");
    std::fs::write(&wrong, "not-a-token-they-know\n").unwrap();
    let mut config = config;
    if let Some(auth) = config.auth.as_mut() {
        auth.token_file = Some(wrong);
    }
    match raft_node::Node::start(config).await {
        Err(e @ raft_node::StartError::Refused { .. }) => {
            assert!(e.to_string().contains("auth.token_file"), "{e}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a node that cannot check whether it lost its data started"),
    }
    assert_eq!(code_of(client_as(&cluster, None).get("k", None).await), "unauthenticated");
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Security review probes.
// ---------------------------------------------------------------------------------------------

fn status_code(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A raw request; reads only until the end of the headers (for streams), at most 3 s.
async fn raw_head(addr: &str, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_variants_never_reach_an_admin_handler_with_a_lower_role() {
    let tokens = tempfile::tempdir().unwrap();
    let cluster = start(1, tokens.path(), true).await;
    let addr = cluster.endpoint(1);
    // Sanity: the canonical admin reads work for the admin and not for the reader.
    for (token, want) in [(ADMIN, [200, 404]), (READER, [403, 403])] {
        for (path, want) in [("/v1/log", want[0]), ("/v1/snapshot", want[1])] {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            );
            let answer = raw_head(&addr, req.as_bytes()).await;
            assert_eq!(status_code(&answer), want, "{path}: {answer}");
        }
    }
    let mut report = Vec::new();
    let mut broken = Vec::new();
    let gets = [
        "//v1/log",
        "/v1//log",
        "/v1/log/",
        "/v1/./log",
        "/v1/kv/../log",
        "/v1/kv/%2e%2e/log",
        "/V1/LOG",
        "/v1/LOG",
        "/v1/%6cog",
        "/v1/%6Cog",
        "/v1/log%2f",
        "/v1/log;x",
        "/v1/log?from=1",
        "http://x/v1/log",
        "http://x//v1/log",
        "/v1/snapshot/",
        "//v1/snapshot",
        "/v1/%73napshot",
        "/v1/snapshot?x=1",
        "/./v1/log",
        "/v1/log%00",
        "/v1/log%20",
        "/v1/log.",
        "*",
    ];
    for (token, role) in [(READER, "read"), (WRITER, "write")] {
        for method in ["GET", "HEAD", "get", "OPTIONS", "TRACE", "PROPFIND"] {
            for path in gets {
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
                );
                let answer = raw_head(&addr, req.as_bytes()).await;
                let code = status_code(&answer);
                report.push(format!("{role} {method} {path} -> {code}"));
                if (200..300).contains(&code) {
                    broken.push(format!("{role} {method} {path} -> {code}"));
                }
            }
        }
    }
    let posts = [
        ("POST", "//v1/transfer-leader"),
        ("POST", "/v1//transfer-leader"),
        ("POST", "/v1/transfer-leader/"),
        ("POST", "/v1/Transfer-Leader"),
        ("POST", "/v1/%74ransfer-leader"),
        ("POST", "http://x/v1/transfer-leader"),
        ("POST", "/v1/members/1/promote/"),
        ("POST", "/v1/members/1/promote"),
        ("POST", "//v1/members"),
        ("POST", "/v1/members?force=true"),
        ("POST", "/v1/members/"),
        ("PUT", "/v1/members"),
        ("PATCH", "/v1/members"),
        ("DELETE", "//v1/members/1"),
        ("DELETE", "/v1/members//1"),
        ("DELETE", "/v1/members/%31"),
        ("DELETE", "/v1/members/1?force=true"),
        ("DELETE", "/v1/members/1/"),
        ("post", "/v1/transfer-leader"),
        ("delete", "/v1/members/1"),
    ];
    for (method, path) in posts {
        let body = "{\"id\":9,\"raft_addr\":\"127.0.0.1:1\",\"client_addr\":\"127.0.0.1:2\"}";
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITER}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_head(&addr, req.as_bytes()).await;
        let code = status_code(&answer);
        report.push(format!("write {method} {path} -> {code}"));
        if (200..300).contains(&code) {
            broken.push(format!("write {method} {path} -> {code}"));
        }
    }
    eprintln!("{}", report.join("\n"));
    let admin = client_as(&cluster, Some(ADMIN));
    assert_eq!(admin.members().await.unwrap().members.len(), 1, "the membership changed");
    assert!(broken.is_empty(), "lower roles reached admin handlers: {broken:#?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_variants_are_read_strictly() {
    let tokens = tempfile::tempdir().unwrap();
    let cluster = start(1, tokens.path(), true).await;
    let addr = cluster.endpoint(1);
    let get_log = |auth: Vec<u8>| {
        let mut req = b"GET /v1/log HTTP/1.1\r\nHost: x\r\n".to_vec();
        req.extend_from_slice(&auth);
        req.extend_from_slice(b"Connection: close\r\n\r\n");
        req
    };
    let long = "a".repeat(60_000);
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("lowercase scheme and header", format!("authorization: bearer {ADMIN}\r\n").into_bytes(), &[200]),
        ("extra spaces", format!("Authorization: Bearer    {ADMIN}   \r\n").into_bytes(), &[200]),
        ("no space", format!("Authorization: Bearer{ADMIN}\r\n").into_bytes(), &[401]),
        ("tab", format!("Authorization: Bearer\t{ADMIN}\r\n").into_bytes(), &[401]),
        (
            "reader then admin",
            format!("Authorization: Bearer {READER}\r\nAuthorization: Bearer {ADMIN}\r\n").into_bytes(),
            &[403],
        ),
        (
            "junk then admin",
            format!("Authorization: Basic x\r\nAuthorization: Bearer {ADMIN}\r\n").into_bytes(),
            &[401],
        ),
        ("comma list", format!("Authorization: Bearer {READER}, Bearer {ADMIN}\r\n").into_bytes(), &[401]),
        (
            "the hash",
            format!("Authorization: Bearer {}\r\n", raft_node::hash_token(ADMIN)).into_bytes(),
            &[401],
        ),
        ("non-ascii", [b"Authorization: Bearer ".as_slice(), ADMIN.as_bytes(), b"\xff\r\n"].concat(), &[401]),
        ("prefix", format!("Authorization: Bearer {}\r\n", &ADMIN[..ADMIN.len() - 1]).into_bytes(), &[401]),
        ("60 KB token", format!("Authorization: Bearer {long}\r\n").into_bytes(), &[401, 431]),
        ("empty", b"Authorization: Bearer \r\n".to_vec(), &[401]),
        ("scheme only", b"Authorization: Bearer\r\n".to_vec(), &[401]),
    ];
    for (what, auth, want) in cases {
        let answer = raw_head(&addr, &get_log(auth)).await;
        let code = status_code(&answer);
        eprintln!("{what}: {code}");
        assert!(want.contains(&code), "{what}: {answer}");
        assert!(!answer.contains(ADMIN) && !answer.contains(READER), "{what}: the token is echoed: {answer}");
    }
    // Still serving.
    assert!(client_as(&cluster, Some(READER)).status().await.is_ok());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_watch_and_unknown_methods_need_a_token() {
    let tokens = tempfile::tempdir().unwrap();
    let cluster = start(1, tokens.path(), true).await;
    let addr = cluster.endpoint(1);
    for req in [
        "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /v1/watch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /v1/watch?prefix=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        "OPTIONS /v1/kv/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "HEAD /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /health/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /metrics/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET //health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /v1/status HTTP/1.0\r\n\r\n",
    ] {
        let answer = raw_head(&addr, req.as_bytes()).await;
        eprintln!("{} -> {}", req.lines().next().unwrap(), status_code(&answer));
        assert_eq!(status_code(&answer), 401, "{req}: {answer}");
    }
    let watch = format!("GET /v1/watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READER}\r\n\r\n");
    let answer = raw_head(&addr, watch.as_bytes()).await;
    assert_eq!(status_code(&answer), 200, "{answer}");
    // What a reader sees in /v1/status: no token, no hash, no token file.
    let status = raw(
        &addr,
        &format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READER}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    for secret in [ADMIN, WRITER, READER] {
        assert!(!status.contains(secret) && !status.contains(&raft_node::hash_token(secret)), "{status}");
    }
    assert!(!status.contains("admin.token"), "{status}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_takes_no_slot_while_every_slot_is_taken() {
    let tokens = tempfile::tempdir().unwrap();
    let config = auth(tokens.path(), true);
    let cluster = TestCluster::start_with(1, StorageKind::Mem, move |c| {
        c.insecure_open_client_api = false;
        c.auth = Some(config.clone());
        c.limits.max_concurrent_requests = 1;
        c.limits.slot_wait_ms = 2_000;
    })
    .await;
    let addr = cluster.endpoint(1);
    // The admin adds a voter that never answers: the request holds the only slot while the
    // leader waits for it to catch up.
    let admin = Client::new(
        cluster.endpoints(),
        ClientOptions {
            token: Some(ADMIN.into()),
            max_retries: 0,
            request_timeout: std::time::Duration::from_secs(60),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let holder = tokio::spawn(async move {
        let request = raft_client::api::AddMemberRequest {
            id: 9,
            raft_addr: common::free_addr().to_string(),
            client_addr: common::free_addr().to_string(),
            role: raft_client::api::MemberRole::Voter,
        };
        admin.add_member(&request).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let started = std::time::Instant::now();
    let reader = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READER}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_head(&addr, reader.as_bytes()).await;
    eprintln!("reader while the slot is held: {} after {:?}", status_code(&answer), started.elapsed());
    assert_eq!(status_code(&answer), 503, "the slot is held: {answer}");
    let started = std::time::Instant::now();
    let anonymous =
        "PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"value\":1}";
    let answer = raw_head(&addr, anonymous.as_bytes()).await;
    eprintln!("anonymous while the slot is held: {} after {:?}", status_code(&answer), started.elapsed());
    assert_eq!(status_code(&answer), 401, "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "it waited for a slot");
    holder.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_checked_on_both_nodes() {
    let tokens = tempfile::tempdir().unwrap();
    let config = auth(tokens.path(), true);
    let cluster = TestCluster::start_with(3, StorageKind::Mem, move |c| {
        c.insecure_open_client_api = false;
        c.auth = Some(config.clone());
        c.raft.auto_forward = false;
    })
    .await;
    let follower = cluster.follower().await;
    let addr = cluster.endpoint(follower);
    let put = |token: &str| {
        format!(
            "PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: 13\r\nConnection: close\r\n\r\n{{\"value\":\"v\"}}"
        )
    };
    let answer = raw_head(&addr, put(READER).as_bytes()).await;
    assert_eq!(status_code(&answer), 403, "{answer}");
    let answer = raw_head(&addr, put(WRITER).as_bytes()).await;
    eprintln!("{answer}");
    assert_eq!(status_code(&answer), 307, "{answer}");
    // The leader checks again: without a token the redirect target refuses.
    let leader = cluster.endpoint(cluster.leader().await);
    let answer = raw_head(&leader, put("nope").as_bytes()).await;
    assert_eq!(status_code(&answer), 401, "{answer}");
    // A writer client follows it with its token.
    client_as(&cluster, Some(WRITER)).put("k", "v").await.unwrap();
    cluster.shutdown().await;
}

/// An `auth.token_file` whose content is not a token alone (a second line, a non-ASCII
/// character) is refused by validation; it once passed, the probe client could not be built
/// and the lost-data check was skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_that_is_not_a_token_alone_is_refused() {
    let tokens = tempfile::tempdir().unwrap();
    let cluster = known_cluster_without_node_3(tokens.path()).await;
    let mut failures = Vec::new();
    for (name, content) in [
        ("two-lines.token", format!("{ADMIN}\n# rotated 2026-12-01\n")),
        // `raft-node new-token > admin.token`: the command's whole output.
        (
            "new-token-output.token",
            format!(
                "# The token (give it to the client; it is not stored anywhere):\n# {ADMIN}\n\
                 # The entry for each node's config (only the hash):\n[[auth.tokens]]\nname = \"admin\"\n\
                 role = \"admin\"\nsha256 = \"{}\"\n",
                raft_node::hash_token(ADMIN)
            ),
        ),
        ("non-ascii.token", "tökén-for-node-3\n".to_string()),
        ("ctrl.token", format!("{ADMIN}\u{7f}\n")),
    ] {
        let file = tokens.path().join(name);
        std::fs::write(&file, content).unwrap();
        let mut config = cluster.configs[2].clone();
        config.auth.as_mut().unwrap().token_file = Some(file);
        if !config.problems().iter().any(|p| p.key == "auth.token_file") {
            failures.push(format!("{name}: validation took it: {:?}", config.problems()));
        }
        match raft_node::Node::start(config).await {
            Err(e) => eprintln!("{name}: refused to start: {e}"),
            Ok(node) => {
                failures.push(format!("{name}: a node that lost its data started (empty log, votes)"));
                node.shutdown().await;
            }
        }
    }
    cluster.shutdown().await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Discovery announcements are not authenticated: a fresh node with `[auth]` would send its
/// own (admin) token to whatever client address a forged announcement of its cluster names.
/// The combination is refused.
#[test]
fn discovery_is_refused_with_client_authentication() {
    let tokens = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let me = raft_node::config::MemberConfig {
        id: 4,
        raft_addr: common::free_addr(),
        client_addr: common::free_addr(),
    };
    let mut config = common::config_for(&me, Vec::new(), data.path(), StorageKind::Mem);
    config.insecure_open_client_api = false;
    config.auth = Some(auth(tokens.path(), true));
    config.discovery.enabled = true;
    let problems = config.problems();
    assert!(problems.iter().any(|p| p.key == "discovery.enabled"), "{problems:?}");
}

#[test]
fn debug_output_never_shows_the_token() {
    let options = ClientOptions { token: Some(ADMIN.into()), ..ClientOptions::default() };
    let client = Client::new(["127.0.0.1:1"], options.clone()).unwrap();
    let debug = format!("{options:?} {client:?}");
    assert!(!debug.contains(ADMIN), "Debug prints the bearer token: {debug}");
}
