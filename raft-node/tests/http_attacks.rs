//! Denial-of-service probes on the client port, as an attacker would send them over raw
//! sockets: half-sent headers (slowloris), bodies that never finish, oversized bodies,
//! connection floods, saturated request slots. The node must keep serving everyone else.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{eventually, TestCluster};
use raft_client::api::ErrorCode;
use raft_node::config::StorageKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One node whose bodies are at most 8 KiB (values 1 KiB, keys 64 bytes).
async fn start_with_small_bodies() -> TestCluster {
    TestCluster::start_with(1, StorageKind::Mem, |c| {
        c.limits.max_body_bytes = 8192;
        c.limits.max_value_bytes = 1024;
        c.limits.max_key_bytes = 64;
    })
    .await
}

/// Sends `head` on a new connection and returns it (open).
async fn send_raw(addr: &str, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads what the server sends until it closes the connection (or `within` passes: `None`).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_and_idle_connections_are_closed() {
    let cluster = TestCluster::start_with(1, StorageKind::Mem, |c| {
        c.limits.header_read_timeout_ms = 300;
    })
    .await;
    let addr = cluster.endpoint(1);
    // Slowloris: headers that never end.
    let mut slow = send_raw(&addr, "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n").await;
    assert!(read_until_closed(&mut slow, Duration::from_secs(10)).await.is_some(), "still open");
    // An idle keep-alive connection after a response is closed too.
    let mut idle = send_raw(&addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answer = read_until_closed(&mut idle, Duration::from_secs(10)).await.expect("closed when idle");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_never_finish_hold_no_request_slot() {
    let cluster = TestCluster::start_with(1, StorageKind::Mem, |c| {
        c.limits.max_concurrent_requests = 2;
        c.limits.body_read_timeout_ms = 500;
    })
    .await;
    let addr = cluster.endpoint(1);
    // Five writers announce 100 bytes and send 9.
    let mut slow = Vec::new();
    for i in 0..5 {
        let head = format!(
            "PUT /v1/kv/slow{i} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"value\":"
        );
        slow.push(send_raw(&addr, &head).await);
    }
    // Everyone else is served meanwhile (before: every slot taken, every request hung).
    let client = cluster.client();
    client.put("k", "v").await.expect("served while the slow bodies trickle");
    // The slow ones are answered 400 once their time is up, and nothing was written.
    for mut s in slow {
        let answer = read_until_closed(&mut s, Duration::from_secs(10)).await.expect("answered");
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("bad_request"), "a JSON error: {answer}");
    }
    assert!(client.get("slow0", None).await.unwrap().is_none());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_body_over_the_limit_is_refused_unread() {
    let cluster = start_with_small_bodies().await;
    let head =
        "PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n";
    let mut stream = send_raw(&cluster.endpoint(1), head).await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await.expect("answered at once");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_waits_unaccepted_and_is_served_as_idle_ones_close() {
    let cluster = TestCluster::start_with(1, StorageKind::Mem, |c| {
        c.limits.max_connections = 4;
        c.limits.header_read_timeout_ms = 500;
    })
    .await;
    let addr = cluster.endpoint(1);
    // Twenty idle connections: four are accepted, the rest wait in the backlog.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // A real client still gets through: idle ones are closed after the header timeout.
    let client = cluster.client_of(1);
    eventually("a request to be served past the idle flood", || async {
        client.get("k", None).await.is_ok()
    })
    .await;
    drop(idle);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_request_slots_answer_busy_instead_of_hanging() {
    let mut cluster = TestCluster::start_with(3, StorageKind::Mem, |c| {
        c.limits.max_concurrent_requests = 1;
        c.limits.slot_wait_ms = 200;
        c.limits.request_timeout_ms = 3_000;
        // The cut-off leader keeps leading (and its write keeps waiting) until the timeout.
        c.raft.check_quorum = false;
        c.raft.lease_read = false;
    })
    .await;
    let leader = cluster.leader().await;
    for id in (1..=3).filter(|&id| id != leader) {
        cluster.stop(id).await;
    }
    // A write that cannot commit holds the leader's only slot until its timeout.
    let endpoint = cluster.endpoint(leader);
    let holder = {
        let client = cluster.client_of(leader);
        tokio::spawn(async move { client.put("held", "1").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("http://{endpoint}/v1/kv/other");
    let answer = common::plain_http().build().unwrap().get(&url).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    let body: raft_client::api::ApiError = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(body.code, ErrorCode::Busy);
    let ready =
        common::plain_http().build().unwrap().get(format!("http://{endpoint}/ready")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503, "not ready while saturated");
    assert!(ready.text().await.unwrap().contains("saturated"));
    let _ = holder.await;
    cluster.shutdown().await;
}

/// Requests the framework itself refuses (wrong method, unparsable path or query, malformed
/// or mistyped JSON, unknown path) get a JSON `ApiError` with a stable code, never plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_json_with_a_stable_code() {
    let cluster = TestCluster::start(1, StorageKind::Mem).await;
    let addr = cluster.endpoint(1);
    let cases = [
        ("POST /v1/status", "", "405", "method_not_allowed"),
        ("DELETE /v1/members/abc", "", "400", "bad_request"),
        ("GET /v1/kv?limit=many", "", "400", "bad_request"),
        ("POST /v1/members", "{\"id\": ", "400", "bad_request"),
        ("POST /v1/transfer-leader", "[1, 2]", "4", "bad_request"),
        ("GET /v2/anything", "", "404", "not_found"),
    ];
    for (request, body, status, code) in cases {
        let head = format!(
            "{request} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = send_raw(&addr, &head).await;
        let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await.expect("answered");
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{request}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("content-type: application/json"),
            "{request}: {answer}"
        );
        assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{request}: {answer}");
        if status == "405" {
            assert!(answer.to_ascii_lowercase().contains("allow: get"), "{request}: {answer}");
        }
    }
    cluster.shutdown().await;
}

/// Requests hyper cannot parse never reach the router: its own 400, 414 and 431 answers get
/// the same JSON body with a stable code as every other refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_http_parser_refuses_get_json_too() {
    let cluster = TestCluster::start(1, StorageKind::Mem).await;
    let addr = cluster.endpoint(1);
    let long_uri = format!("GET /v1/kv/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let huge_header = format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(600_000));
    let cases = [
        ("GET /v1/status HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_owned(), "400", "bad_request"),
        ("G\u{1}T / HTTP/1.1\r\n\r\n".to_owned(), "400", "bad_request"),
        (long_uri, "414", "too_large"),
        (huge_header, "431", "too_large"),
    ];
    for (request, status, code) in cases {
        let mut stream = send_raw(&addr, &request).await;
        let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await.expect("answered");
        let shown: String = answer.chars().take(300).collect();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{shown}");
        assert!(answer.to_ascii_lowercase().contains("content-type: application/json"), "{shown}");
        assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{shown}");
    }
    // The node serves on.
    cluster.client().put("after", "1").await.unwrap();
    cluster.shutdown().await;
}

/// A chunked body that breaks the chunk framing is a bad request; one that grows past the
/// body limit is too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_refused_for_what_is_wrong_with_them() {
    let cluster = start_with_small_bodies().await;
    let head = "PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let big = format!("{head}2710\r\n{}\r\n0\r\n\r\n", "x".repeat(10_000));
    for (body, status, code) in
        [(format!("{head}zz\r\nnot a chunk\r\n0\r\n\r\n"), "400", "bad_request"), (big, "413", "too_large")]
    {
        let mut stream = send_raw(&cluster.endpoint(1), &body).await;
        let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await.expect("answered");
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
        assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{answer}");
    }
    cluster.shutdown().await;
}
