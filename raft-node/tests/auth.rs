//! Client authentication: bearer tokens with roles, probed as an anonymous client, a client
//! with a guessed token, and clients whose role is too low would.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;

use common::TestCluster;
use raft_client::{Client, ClientError, ClientOptions};
use raft_node::config::{AuthConfig, ClientRole, StorageKind, TokenConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "admin-token-for-the-auth-tests-0001";
const WRITER: &str = "writer-token-for-the-auth-tests-0002";
const READER: &str = "reader-token-for-the-auth-tests-0003";

fn auth(token_dir: &Path, open_ops: bool) -> AuthConfig {
    let token_file = token_dir.join("admin.token");
    std::fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    let token = |name: &str, role, token: &str| TokenConfig {
        name: name.into(),
        role,
        sha256: raft_node::hash_token(token),
    };
    AuthConfig {
        tokens: vec![
            token("ops", ClientRole::Admin, ADMIN),
            token("app", ClientRole::Write, WRITER),
            token("dashboard", ClientRole::Read, READER),
        ],
        open_ops,
        token_file: Some(token_file),
    }
}

async fn start(n: u64, token_dir: &Path, open_ops: bool) -> TestCluster {
    let config = auth(token_dir, open_ops);
    TestCluster::start_with(n, StorageKind::Mem, move |c| {
        c.insecure_open_client_api = false;
        c.auth = Some(config.clone());
    })
    .await
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
    let mut cluster = start(3, tokens.path(), true).await;
    cluster.client().put("k", "v").await.unwrap();
    let client = cluster.client();
    common::eventually("every node registered its addresses", || {
        let client = client.clone();
        async move { client.members().await.is_ok_and(|m| m.members.iter().all(|m| m.registered)) }
    })
    .await;
    // Node 3 comes back with its (in-memory) data gone: with its token it asks the others,
    // learns that they know it, and refuses to vote with an empty log.
    cluster.stop(3).await;
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
