//! Outside review of commit 0ecbf4c (watch streams on threads of their own, routed by reading
//! the first bytes of a connection ahead; SSE frames encoded once and batched). The first four
//! defects below failed on it and pass since their fixes; the other tests held from the start
//! and stay as regression tests.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::TestCluster;
use futures_util::StreamExt;
use raft_node::config::StorageKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Context switches so far of every thread of this process named `watch-streams` (the watch
/// runtime's workers and blocking threads): a thread that serves anything is woken, one that
/// serves nothing stays parked.
fn watch_thread_switches() -> (usize, u64) {
    let mut threads = 0;
    let mut switches = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let dir = task.expect("task").path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        if comm.trim() != "watch-streams" {
            continue;
        }
        threads += 1;
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += n.trim().parse::<u64>().expect("a number");
            }
        }
    }
    (threads, switches)
}

/// Reads one HTTP/1.1 response with a Content-Length body; `None` when the connection ends
/// first.
async fn read_response(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(text);
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The idle timeout of a keep-alive connection is `header_read_timeout` after each response.
/// 0ecbf4c took the time a client took to send the first bytes of its first request off the
/// header deadline given to hyper, which applies it to every later request too: a connection
/// whose first request came late was closed almost at once after every response (1 ms at
/// worst) for the rest of its life. Fixed: hyper gets the whole deadline, and the first
/// request's is enforced beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_first_request_does_not_shorten_the_idle_timeout_of_the_connection() {
    let cluster = TestCluster::start_with(1, StorageKind::Mem, |c| {
        c.limits.header_read_timeout_ms = 2_000;
    })
    .await;
    let addr = cluster.endpoint(1);
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    // A pooled connection opened ahead of its first use (as proxies and some clients do).
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let request = "GET /health HTTP/1.1\r\nhost: x\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("first request");
    let first = read_response(&mut stream).await.expect("first answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Idle for well under the 2 s idle timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let sent = stream.write_all(request.as_bytes()).await;
    let second = match sent {
        Ok(()) => read_response(&mut stream).await,
        Err(_) => None,
    };
    assert!(
        second.as_deref().is_some_and(|s| s.starts_with("HTTP/1.1 200")),
        "the keep-alive connection was closed after 600 ms idle with a 2 s idle timeout: {second:?}"
    );
    cluster.shutdown().await;
}

/// Watches every key on a one-node cluster (after one write of the same client when
/// `call_first`), streams 50 writes of another client, and returns how many times the watch
/// threads woke meanwhile.
async fn watch_thread_wakes_for_50_events(call_first: bool) -> u64 {
    let cluster = TestCluster::start(1, StorageKind::Mem).await;
    let watching = cluster.client_of(1);
    let writer = cluster.client_of(1);
    if call_first {
        watching.put("first", "a call before the watch").await.expect("put");
    }
    let (threads, before) = watch_thread_switches();
    assert!(threads > 0, "no watch-streams thread");
    let mut events = watching.watch("", None).await.expect("watch");
    for i in 0..50 {
        writer.put(&format!("k{i}"), "v").await.expect("put");
    }
    for _ in 0..50 {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("in time")
            .expect("event")
            .expect("ok");
    }
    let (_, after) = watch_thread_switches();
    cluster.shutdown().await;
    after - before
}

/// Control for the measure used below: a watch opened on a fresh connection is served on
/// the watch threads (they wake for its events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_fresh_connection_is_served_on_the_watch_threads() {
    let wakes = watch_thread_wakes_for_50_events(false).await;
    assert!(wakes >= 5, "watch threads woke {wakes} times");
}

/// raft-client kept one connection pool for every call, so its watch went out on a
/// connection that already carried another request whenever one was idle in the pool (the
/// project's own tests do exactly that: a put, then a watch), and was served on the Raft
/// path's runtime at the node's priority. Fixed: raft-client opens each stream on a
/// connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_the_client_library_after_another_call_is_served_on_the_watch_threads() {
    let wakes = watch_thread_wakes_for_50_events(true).await;
    assert!(
        wakes >= 5,
        "50 events streamed but the watch threads woke {wakes} times: the watch ran on the Raft path's runtime"
    );
}

/// The reverse: a watch answered with an error (here `compacted`; `busy` past max_watchers
/// and `bad_request` do the same) left its keep-alive connection classified as a watch, and
/// the client's pool reused it for writes, which then ran at the watch threads' lowered
/// priority. Fixed: on the watch threads, every answer but an open stream closes the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_a_refused_watch_on_the_same_client_are_not_served_on_the_watch_threads() {
    let cluster = TestCluster::start_with(1, StorageKind::Mem, |c| {
        c.limits.watch_history = 1;
    })
    .await;
    let client = cluster.client_of(1);
    for i in 0..5 {
        cluster.client_of(1).put(&format!("old{i}"), "v").await.expect("put");
    }
    let refused = client.watch("", Some(1)).await;
    assert!(refused.is_err(), "index 1 is no longer retained");
    let (_, before) = watch_thread_switches();
    for i in 0..50 {
        client.put(&format!("k{i}"), "v").await.expect("put");
    }
    let (_, after) = watch_thread_switches();
    assert!(
        after - before < 10,
        "no watch stream is open, yet the watch threads woke {} times for 50 writes",
        after - before
    );
    cluster.shutdown().await;
}

/// Awkward values come through the hand-built frames intact, in order, each once, with the
/// right `id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_values_arrive_intact_in_order_once_with_their_id() {
    let cluster = TestCluster::start(1, StorageKind::Mem).await;
    let client = cluster.client_of(1);
    let values: Vec<String> = vec![
        "line\nbreak".into(),
        "carriage\rreturn\r\n".into(),
        "\n\n".into(),
        "data: x\n\nid: 9\n\n".into(),
        "\u{2028}\u{2029}\u{85}é漢字🦀".into(),
        "\u{1}\u{0}\u{7f}".into(),
        ":".into(),
        String::new(),
        "x".repeat(900 * 1024),
    ];
    let addr = cluster.endpoint(1);
    let mut raw = TcpStream::connect(&addr).await.expect("connect");
    raw.write_all(b"GET /v1/watch?prefix=v/ HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
    let mut events = cluster.client_of(1).watch("v/", None).await.expect("watch");
    let mut indexes = Vec::new();
    for (i, v) in values.iter().enumerate() {
        indexes.push(client.put(&format!("v/{i}"), v).await.expect("put").index);
        client.put("other", "noise").await.expect("put");
    }
    for (i, v) in values.iter().enumerate() {
        let e = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("in time")
            .expect("event")
            .expect("ok");
        assert_eq!(
            (e.key.as_str(), e.value.as_deref(), e.index),
            (format!("v/{i}").as_str(), Some(v.as_str()), indexes[i])
        );
    }
    // The raw stream: every `id:` line names the index of the data that follows it.
    let mut text = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 1 << 16];
    while String::from_utf8_lossy(&text).matches("\nid: ").count() + usize::from(text.starts_with(b"id: "))
        < values.len()
        && Instant::now() < deadline
    {
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "closed");
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(text).expect("utf-8");
    let mut ids = Vec::new();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.trim().parse::<u64>().expect("id"));
        }
    }
    assert_eq!(ids, indexes);
    cluster.shutdown().await;
}

/// The nice value of thread `dir` (a `/proc/.../task/TID` or `/proc/self`).
fn nice_of(dir: &std::path::Path) -> i64 {
    let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 1..];
    // Fields after the name start at field 3 (state); nice is field 19.
    after.split_whitespace().nth(16).expect("nice").parse().expect("a number")
}

/// The nice values of the `watch-streams` threads.
fn watch_thread_nices() -> Vec<i64> {
    let mut nices = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let dir = task.expect("task").path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        if comm.trim() == "watch-streams" {
            nices.push(nice_of(&dir));
        }
    }
    nices
}

/// `lower_priority` added `watch_nice` to the nice value of the thread it ran on. A thread of
/// the watch runtime's blocking pool is spawned by the worker that needs it, whose nice value
/// was already lowered, and inherited it: it was lowered twice (0 + 10 + 10, capped at 19).
/// The review triggered it with a snapshot download on a connection whose first request was a
/// refused watch. Since the fix, the target is set as it is, and a connection of the watch
/// threads closes after any answer but an open stream, so that download no longer runs there
/// (`watch_threads::tests` checks the blocking pool's threads directly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watch_thread_is_lowered_by_watch_nice_once() {
    let cluster = TestCluster::start(1, StorageKind::Mem).await;
    let node_nice = nice_of(std::path::Path::new("/proc/self"));
    let mut stream = TcpStream::connect(cluster.endpoint(1)).await.expect("connect");
    stream.write_all(b"GET /v1/watch?bogus=1 HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
    let refused = read_response(&mut stream).await.expect("answer");
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("connection: close"), "{refused}");
    let mut rest = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await.expect("in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "the connection stays open after a refused watch");
    let expected = (node_nice + 10).min(19);
    let nices = watch_thread_nices();
    assert!(!nices.is_empty(), "no watch thread");
    assert!(
        nices.iter().all(|&n| n == expected),
        "node at nice {node_nice}, watch_nice 10: watch threads at {nices:?}, expected all at {expected}"
    );
    cluster.shutdown().await;
}

/// Decodes a chunked body (as far as it is complete); `true` when its last chunk came.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else { return (body, false) };
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).expect("size").trim(), 16)
            .expect("hex size");
        if size == 0 {
            return (body, true);
        }
        let start = line_end + 2;
        if raw.len() < start + size + 2 {
            return (body, false);
        }
        body.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

/// A watcher that stops reading is cut off: when it reads again, it finds its events in order
/// (each once), then one `event: error` frame (compacted), last, and the end of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_gets_its_events_then_one_error_frame_last() {
    let cluster = TestCluster::start(1, StorageKind::Mem).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4_096).expect("rcvbuf");
    let mut stream = socket.connect(cluster.endpoint(1).parse().expect("addr")).await.expect("connect");
    stream.write_all(b"GET /v1/watch HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
    let mut head = vec![0u8; 1_024];
    let n = stream.read(&mut head).await.expect("head");
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut raw = head.split_once("\r\n\r\n").map(|(_, rest)| rest.as_bytes().to_vec()).unwrap_or_default();
    // Fill the socket buffers, then more than the live channel holds (1,024).
    let big = "b".repeat(256 * 1_024);
    let writer = cluster.client_of(1);
    for i in 0..40 {
        writer.put(&format!("big{i}"), &big).await.expect("put");
    }
    let futures = (0..1_200).map(|i| {
        let writer = writer.clone();
        async move { writer.put(&format!("small{i}"), "s").await.expect("put").index }
    });
    let mut indexes: Vec<u64> = futures_util::stream::iter(futures).buffer_unordered(16).collect().await;
    indexes.sort_unstable();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, ended) = dechunk(&raw);
        if ended {
            break;
        }
        assert!(Instant::now() < deadline, "the stream did not end");
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "connection closed before the stream's end");
        raw.extend_from_slice(&buf[..n]);
    }
    let (body, _) = dechunk(&raw);
    let text = String::from_utf8(body).expect("utf-8");
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    let last = frames.last().expect("frames");
    assert!(last.starts_with("event: error\ndata: {") && last.contains("compacted"), "last frame: {last}");
    let ids: Vec<u64> = frames[..frames.len() - 1]
        .iter()
        .filter(|f| !f.starts_with(':'))
        .map(|f| {
            f.strip_prefix("id: ").expect("an id first").split('\n').next().expect("id").parse().expect("n")
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids not contiguous: {:?}", &ids[..ids.len().min(50)]);
    assert!(frames.iter().filter(|f| f.starts_with("event: error")).count() == 1);
    cluster.shutdown().await;
}

/// A node stops and starts again in the same process (same RocksDB directory) while a watch
/// stream is stuck on a client that reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarts_in_the_same_process_while_a_watcher_reads_nothing() {
    let mut cluster = TestCluster::start_with(1, StorageKind::Rocks, |c| {
        c.limits.request_timeout_ms = 1_000;
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4_096).expect("rcvbuf");
    let mut stuck = socket.connect(cluster.endpoint(1).parse().expect("addr")).await.expect("connect");
    stuck.write_all(b"GET /v1/watch HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
    let big = "b".repeat(512 * 1_024);
    let writer = cluster.client_of(1);
    for i in 0..30 {
        writer.put(&format!("big{i}"), &big).await.expect("put");
    }
    let started = Instant::now();
    cluster.restart(1).await;
    cluster.wait_for_leader().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "restart took {took:?}");
    cluster.client_of(1).get("big0", None).await.expect("served after the restart");
    drop(stuck);
    cluster.shutdown().await;
}

/// Keep-alive comments still come every 15 s on the watch threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_gets_a_keep_alive_comment() {
    let cluster = TestCluster::start(1, StorageKind::Mem).await;
    let mut stream = TcpStream::connect(cluster.endpoint(1)).await.expect("connect");
    stream.write_all(b"GET /v1/watch HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
    let mut raw = Vec::new();
    let mut buf = [0u8; 1_024];
    let started = Instant::now();
    while !String::from_utf8_lossy(&raw).contains(":\n\n") {
        let n = tokio::time::timeout(Duration::from_secs(17), stream.read(&mut buf))
            .await
            .expect("a keep-alive within 17 s")
            .expect("read");
        assert!(n > 0, "closed");
        raw.extend_from_slice(&buf[..n]);
    }
    assert!(started.elapsed() >= Duration::from_secs(14), "too early: {:?}", started.elapsed());
    cluster.shutdown().await;
}
