//! HTTPS on the client API: clients that trust the CA read and write (redirects and leader
//! hints stay https); plaintext, an unknown CA or a missing client certificate get nowhere;
//! client certificates carry roles; and a reload rotates tokens, the API certificate and the
//! peers' certificates on a running cluster.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestCluster;
use raft_client::{Client, ClientError, ClientOptions, ClientTls};
use raft_node::config::{
    ApiTlsConfig, CertificateRoleConfig, ClientRole, NodeConfig, StorageKind, TlsConfig,
};
use raft_tls::DevCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "admin-token-for-the-https-tests-0001";
const ROTATED: &str = "rotated-token-for-the-https-tests-02";

/// Writes a dev CA's files under `dir`: `ca.pem`, `node-<id>.pem` (peers), `api-<id>.pem`
/// (the API, names localhost and 127.0.0.1) with their keys, for nodes 1 to 3.
fn write_ca(dir: &Path) -> DevCa {
    std::fs::create_dir_all(dir).unwrap();
    let ca = DevCa::new("test").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    for id in 1..=3 {
        let (cert, key) = ca.issue(id).unwrap();
        std::fs::write(dir.join(format!("node-{id}.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("node-{id}-key.pem")), key).unwrap();
        let (cert, key) = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        std::fs::write(dir.join(format!("api-{id}.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("api-{id}-key.pem")), key).unwrap();
    }
    ca
}

/// Peers with mutual TLS, the API on HTTPS with tokens, all from the CA in `certs`;
/// `client_ca` requires client certificates too.
fn secure(c: &mut NodeConfig, certs: &Path, token_dir: &Path, client_ca: bool) {
    let id = c.id;
    c.insecure_plaintext_peers = false;
    c.tls = Some(TlsConfig {
        ca_cert: certs.join("ca.pem"),
        cert: certs.join(format!("node-{id}.pem")),
        key: certs.join(format!("node-{id}-key.pem")),
    });
    c.api_tls = Some(ApiTlsConfig {
        cert: certs.join(format!("api-{id}.pem")),
        key: certs.join(format!("api-{id}-key.pem")),
        ca_cert: None,
        client_ca: client_ca.then(|| certs.join("ca.pem")),
        require_client_certificate: false,
    });
    c.insecure_open_client_api = false;
    let mut auth = common::auth_config(token_dir, &[("ops", ClientRole::Admin, ADMIN)], true);
    if client_ca {
        auth.certificates = vec![
            CertificateRoleConfig { name: "backup-job".into(), role: ClientRole::Read },
            CertificateRoleConfig { name: "ops-console".into(), role: ClientRole::Admin },
        ];
    }
    c.auth = Some(auth);
}

/// A 3-node cluster on `storage` with [`secure`]'s set-up under a new temporary directory:
/// the directory (kept alive with the cluster), the certificates' directory and their CA.
async fn secure_cluster(
    storage: StorageKind,
    client_ca: bool,
) -> (tempfile::TempDir, PathBuf, DevCa, TestCluster) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ca = write_ca(&certs);
    let token_dir = dir.path().to_path_buf();
    let cluster = TestCluster::start_with(3, storage, |c| secure(c, &certs, &token_dir, client_ca)).await;
    (dir, certs, ca, cluster)
}

fn client(endpoints: Vec<String>, token: Option<&str>, tls: Option<ClientTls>) -> Client {
    let options = ClientOptions {
        token: token.map(str::to_owned),
        tls,
        max_retries: 2,
        request_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    Client::new(endpoints, options).unwrap()
}

fn trusting(ca: &DevCa, identity: Option<(String, String)>) -> Option<ClientTls> {
    Some(ClientTls { ca_cert_pem: ca.cert_pem(), identity })
}

fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(ClientError::RetriesExhausted { last, .. }) => last.code().to_string(),
        Err(e) => e.code().to_string(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// What a plaintext HTTP request to `addr` gets back (an HTTPS port answers no HTTP).
async fn plaintext_answer(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_trust_the_ca_read_and_write_over_https_and_nothing_else_gets_in() {
    let (_dir, _certs, ca, cluster) = secure_cluster(StorageKind::Mem, false).await;
    // Through every node, followers included: leader hints and forwarding stay on https.
    let good = client(cluster.endpoints(), Some(ADMIN), trusting(&ca, None));
    good.put("k", "v1").await.unwrap();
    for id in 1..=3 {
        let one = client(vec![cluster.endpoint(id)], Some(ADMIN), trusting(&ca, None));
        one.put(&format!("k{id}"), "v").await.unwrap();
        assert_eq!(one.get("k", None).await.unwrap().map(|kv| kv.value), Some("v1".to_owned()), "node {id}");
    }
    // The cluster page's fan-out to the other members runs over https too.
    let leader = cluster.leader().await;
    let view =
        client(vec![cluster.endpoint(leader)], Some(ADMIN), trusting(&ca, None)).cluster().await.unwrap();
    assert!(view.members.iter().all(|m| m.status.is_some()), "every member answered the fan-out: {view:?}");

    // A plaintext request learns nothing and changes nothing.
    let answer = plaintext_answer(&cluster.endpoint(leader)).await;
    assert!(!answer.contains("200 OK") && !answer.contains("term"), "plaintext got {answer:?}");
    // A client that trusts another CA refuses the server (and so never sends its token).
    let stranger = DevCa::new("test").unwrap();
    let fooled = client(cluster.endpoints(), Some(ADMIN), trusting(&stranger, None));
    assert_eq!(code_of(fooled.get("k", None).await), "transport");
    // A plain-HTTP client cannot be pointed at https, and a TLS client never downgrades.
    assert!(Client::new([format!("https://{}", cluster.endpoint(1))], ClientOptions::default()).is_err());
    let options = ClientOptions { tls: trusting(&ca, None), ..ClientOptions::default() };
    assert!(Client::new([format!("http://{}", cluster.endpoint(1))], options).is_err());
    assert_eq!(good.get("k3", None).await.unwrap().map(|kv| kv.value), Some("v".to_owned()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_carry_their_roles_and_can_be_required() {
    let (_dir, _certs, ca, mut cluster) = secure_cluster(StorageKind::Mem, true).await;
    // The nodes reach each other's APIs with their own certificates (the start-up check ran).
    let leader = cluster.leader().await;
    let endpoints = cluster.endpoints();
    let ops = trusting(&ca, Some(ca.issue_client("ops-console").unwrap()));
    let backup = trusting(&ca, Some(ca.issue_client("backup-job").unwrap()));
    let nobody = trusting(&ca, Some(ca.issue_client("intern").unwrap()));

    // A certificate with an admin role needs no token.
    let admin = client(endpoints.clone(), None, ops.clone());
    admin.put("k", "v").await.unwrap();
    admin.log(Some(0), Some(10)).await.unwrap();
    // A read role reads and is refused writes; a token on the same connection decides alone.
    let reader = client(endpoints.clone(), None, backup.clone());
    assert_eq!(reader.get("k", None).await.unwrap().map(|kv| kv.value), Some("v".to_owned()));
    assert_eq!(code_of(reader.put("k", "w").await), "forbidden");
    client(endpoints.clone(), Some(ADMIN), backup).put("k", "w").await.unwrap();
    let wrong_token = client(endpoints.clone(), Some("wrong-token-000000"), ops.clone());
    assert_eq!(code_of(wrong_token.put("k", "x").await), "unauthenticated");
    // A certificate the CA signed but no role names is as anonymous as no certificate: a JSON
    // 401, and a token still works without a certificate (certificates are optional).
    assert_eq!(code_of(client(endpoints.clone(), None, nobody).get("k", None).await), "unauthenticated");
    assert_eq!(
        code_of(client(endpoints.clone(), None, trusting(&ca, None)).get("k", None).await),
        "unauthenticated"
    );
    client(endpoints.clone(), Some(ADMIN), trusting(&ca, None)).put("k", "y").await.unwrap();
    // A certificate of another CA fails the handshake itself.
    let stranger = DevCa::new("test").unwrap();
    let forged = Some(ClientTls {
        ca_cert_pem: ca.cert_pem(),
        identity: Some(stranger.issue_client("ops-console").unwrap()),
    });
    assert_eq!(code_of(client(endpoints.clone(), Some(ADMIN), forged).get("k", None).await), "transport");
    let answer = plaintext_answer(&cluster.endpoint(leader)).await;
    assert!(!answer.contains("200 OK"), "plaintext got {answer:?}");

    // Required: no certificate, no connection (the nodes still reach each other with theirs).
    for (i, config) in cluster.configs.iter_mut().enumerate() {
        config.api_tls.as_mut().unwrap().require_client_certificate = true;
        cluster.nodes[i].as_ref().unwrap().reload(config).unwrap();
    }
    let bare = client(endpoints.clone(), Some(ADMIN), trusting(&ca, None));
    assert_eq!(code_of(bare.get("k", None).await), "transport");
    // (The cluster page asks the members with the caller's token, never with the node's
    // authority: a caller known by its certificate alone sees the others refuse.)
    let view = client(vec![cluster.endpoint(leader)], Some(ADMIN), ops).cluster().await.unwrap();
    assert!(view.members.iter().all(|m| m.status.is_some()), "{view:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_ca_ends_the_authority_of_the_old_ones_certificates_on_open_connections() {
    let (_dir, certs, old_ca, cluster) = secure_cluster(StorageKind::Mem, true).await;
    let leader = cluster.leader().await;
    // One node, one kept-alive connection, authenticated by its certificate alone.
    let admin = client(
        vec![cluster.endpoint(leader)],
        None,
        trusting(&old_ca, Some(old_ca.issue_client("ops-console").unwrap())),
    );
    admin.put("k", "v").await.unwrap();
    rotate_files(&certs);
    for (i, config) in cluster.configs.iter().enumerate() {
        cluster.nodes[i].as_ref().unwrap().reload(config).unwrap();
    }
    let after = admin.get("k", Some(raft_client::api::Consistency::Local)).await;
    assert!(after.is_err(), "an old-CA certificate still authenticated: {after:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_on_client_certificates_by_reload_keeps_the_nodes_calls_to_each_other_working() {
    let (dir, certs, ca, cluster) = secure_cluster(StorageKind::Mem, false).await;
    let token_dir = dir.path().to_path_buf();
    let leader = cluster.leader().await;
    for i in 0..3 {
        let mut new = cluster.configs[i].clone();
        secure(&mut new, &certs, &token_dir, true);
        new.api_tls.as_mut().unwrap().require_client_certificate = true;
        cluster.nodes[i].as_ref().unwrap().reload(&new).unwrap();
    }
    let ops = trusting(&ca, Some(ca.issue_client("ops-console").unwrap()));
    let view = client(vec![cluster.endpoint(leader)], Some(ADMIN), ops).cluster().await.unwrap();
    assert!(view.members.iter().all(|m| m.status.is_some()), "{view:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_sends_a_token_in_clear_when_its_tls_files_are_unusable() {
    let (_dir, certs, ca, mut cluster) = secure_cluster(StorageKind::Mem, false).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower().await;
    cluster.stop(follower).await;
    // Something listens where the stopped member was: whatever the leader sends it, we see.
    let listener = tokio::net::TcpListener::bind(cluster.endpoint(follower)).await.unwrap();
    // The CA file mid-rotation.
    std::fs::write(certs.join("ca.pem"), "rotation in progress").unwrap();
    let asker = client(vec![cluster.endpoint(leader)], Some(ADMIN), trusting(&ca, None));
    let asking = tokio::spawn(async move { asker.cluster().await });
    if let Ok(Ok((mut stream, _))) = tokio::time::timeout(Duration::from_secs(3), listener.accept()).await {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let seen = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(!seen.contains(ADMIN), "a token went out in clear: {seen:?}");
    }
    let view = asking.await.unwrap().unwrap();
    let row = view.members.iter().find(|m| m.id == follower).unwrap();
    assert!(
        row.status.is_none() && row.error.as_deref().is_some_and(|e| e.contains("TLS material")),
        "{row:?}"
    );
    cluster.shutdown().await;
}

/// Replaces the files under `certs` with a new CA's (the paths in the configs stay).
fn rotate_files(certs: &Path) -> DevCa {
    write_ca(certs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_tokens_the_api_certificate_and_the_peer_certificates_of_a_running_cluster() {
    let (dir, certs, old_ca, mut cluster) = secure_cluster(StorageKind::Rocks, false).await;
    let token_dir = dir.path().to_path_buf();
    let endpoints = cluster.endpoints();
    client(endpoints.clone(), Some(ADMIN), trusting(&old_ca, None)).put("k", "before").await.unwrap();

    // A bad file changes nothing: the reload is refused whole.
    let mut broken = cluster.configs[0].clone();
    broken.api_tls.as_mut().unwrap().cert = dir.path().join("missing.pem");
    let refused = cluster.nodes[0].as_ref().unwrap().reload(&broken);
    assert!(matches!(refused, Err(raft_node::ReloadError::Material(_))), "{refused:?}");
    // Turning a section off is not a reload.
    let mut open = cluster.configs[0].clone();
    open.auth = None;
    open.insecure_open_client_api = true;
    assert_eq!(
        cluster.nodes[0].as_ref().unwrap().reload(&open),
        Err(raft_node::ReloadError::Toggled("auth"))
    );

    // New CA for everything, new admin token (the nodes' own token file too).
    let new_ca = rotate_files(&certs);
    let auth = common::auth_config(&token_dir, &[("ops", ClientRole::Admin, ROTATED)], true);
    for (i, config) in cluster.configs.iter_mut().enumerate() {
        config.auth = Some(auth.clone());
        let mut changed = config.clone();
        changed.limits.max_list += 1;
        let done = cluster.nodes[i].as_ref().unwrap().reload(&changed).unwrap();
        assert_eq!(done.applied, vec!["tls", "api_tls", "auth"]);
        assert_eq!(done.needs_restart, vec!["limits"]);
    }
    // The old token is refused at once; the API now presents the new CA's certificate.
    let rotated = client(endpoints.clone(), Some(ROTATED), trusting(&new_ca, None));
    rotated.put("k", "after").await.unwrap();
    assert_eq!(
        code_of(client(endpoints.clone(), Some(ADMIN), trusting(&new_ca, None)).get("k", None).await),
        "unauthenticated"
    );
    assert_eq!(
        code_of(client(endpoints.clone(), Some(ROTATED), trusting(&old_ca, None)).get("k", None).await),
        "transport"
    );

    // The peers took the new material: a node restarted with only the new CA's files
    // rejoins the others and catches up.
    let follower = cluster.follower().await;
    cluster.restart(follower).await;
    rotated.put("k", "after-restart").await.unwrap();
    let restarted = client(vec![cluster.endpoint(follower)], Some(ROTATED), trusting(&new_ca, None));
    common::eventually("the restarted node caught up over the rotated peer TLS", || {
        let restarted = restarted.clone();
        async move {
            restarted
                .get("k", Some(raft_client::api::Consistency::Local))
                .await
                .is_ok_and(|kv| kv.map(|kv| kv.value) == Some("after-restart".to_owned()))
        }
    })
    .await;
    cluster.shutdown().await;
}
