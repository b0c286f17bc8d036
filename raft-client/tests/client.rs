//! The client against fake nodes: in-process axum servers whose answers are scripted per
//! request, recording every request they get (method, path, session headers, body).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use raft_client::api::{
    CasRequest, Consistency, ErrorCode, KeyValue, ServiceNode, ServiceSpec, WatchKind, CLIENT_ID_HEADER,
    SEQ_HEADER,
};
use raft_client::{Backoff, Client, ClientError, ClientOptions, Endpoint};
use serde_json::{json, Value};

/// One request as a fake node saw it.
#[derive(Debug, Clone)]
struct Seen {
    node: usize,
    method: String,
    /// Path as sent (percent-encoded).
    path: String,
    query: String,
    client_id: Option<u64>,
    seq: Option<u64>,
    body: String,
}

/// A scripted answer.
enum Reply {
    Json(u16, Value),
    Text(u16, &'static str),
    Redirect(String),
    /// Never answer.
    Hang,
    /// Answer after a pause (to make overlapping requests visible).
    After(Duration, Box<Reply>),
    /// An event stream of these chunks, sent one by one; then close, or stay open.
    Sse {
        chunks: Vec<String>,
        then_hang: bool,
    },
}

/// Decides the answer from the request and how many requests this node got before it.
type Script = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
struct NodeState {
    node: usize,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    in_flight_max: Arc<AtomicUsize>,
}

/// Fake nodes on 127.0.0.1, stopped when dropped.
struct Fake {
    addrs: Vec<SocketAddr>,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight_max: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fake {
    /// Starts `n` nodes; `scripts` gets their addresses and returns one script per node.
    async fn start(n: usize, scripts: impl FnOnce(&[SocketAddr]) -> Vec<Script>) -> Fake {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0"));
        }
        let addrs: Vec<SocketAddr> =
            listeners.iter().map(|l| l.local_addr().expect("bound address")).collect();
        let scripts = scripts(&addrs);
        assert_eq!(scripts.len(), n);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight_max = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (node, (listener, script)) in listeners.into_iter().zip(scripts).enumerate() {
            let state = NodeState {
                node,
                script,
                seen: Arc::clone(&seen),
                count: Arc::new(AtomicUsize::new(0)),
                in_flight: Arc::clone(&in_flight),
                in_flight_max: Arc::clone(&in_flight_max),
            };
            let app = Router::new().fallback(handle).with_state(state);
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Fake { addrs, seen, in_flight_max, tasks }
    }

    fn endpoints(&self) -> Vec<String> {
        self.addrs.iter().map(|a| a.to_string()).collect()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

async fn handle(State(s): State<NodeState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header_u64 = |name: &str| {
        parts.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    };
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let seen = Seen {
        node: s.node,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        client_id: header_u64(CLIENT_ID_HEADER),
        seq: header_u64(SEQ_HEADER),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let nth = s.count.fetch_add(1, Ordering::SeqCst);
    s.seen.lock().expect("not poisoned").push(seen.clone());
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.in_flight_max.fetch_max(now, Ordering::SeqCst);
    let mut reply = (s.script)(&seen, nth);
    while let Reply::After(pause, next) = reply {
        tokio::time::sleep(pause).await;
        reply = *next;
    }
    let response = respond(reply).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn respond(reply: Reply) -> Response {
    match reply {
        Reply::Json(status, value) => {
            (StatusCode::from_u16(status).expect("valid status"), axum::Json(value)).into_response()
        }
        Reply::Text(status, text) => {
            (StatusCode::from_u16(status).expect("valid status"), text).into_response()
        }
        Reply::Redirect(location) => {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response()
        }
        Reply::Hang => std::future::pending().await,
        Reply::After(..) => unreachable!("unwrapped by handle"),
        Reply::Sse { chunks, then_hang } => {
            let chunks = futures_util::stream::iter(chunks).then(|c| async move {
                // Let each chunk go out on its own.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<Bytes, Infallible>(Bytes::from(c))
            });
            let body = if then_hang {
                Body::from_stream(chunks.chain(futures_util::stream::pending()))
            } else {
                Body::from_stream(chunks)
            };
            ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }
    }
}

fn script(f: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Script {
    Arc::new(f)
}

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(5),
        max_retries: 4,
        retry_backoff: Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(5) },
        ..ClientOptions::default()
    }
}

fn kv(key: &str, value: &str, version: u64) -> KeyValue {
    KeyValue { key: key.into(), value: value.into(), version, create_index: 3, mod_index: 7 }
}

fn write_ok(index: u64, key: &str, value: &str) -> Reply {
    Reply::Json(200, json!({ "index": index, "current": kv(key, value, 1), "prev": null }))
}

fn api_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::Json(status, json!({ "code": code, "message": message }))
}

fn not_leader(leader_addr: SocketAddr) -> Reply {
    Reply::Json(
        421,
        json!({
            "code": "not_leader",
            "message": "this node follows 2",
            "leader": { "leader": 2, "client_addr": leader_addr.to_string(), "term": 3 },
        }),
    )
}

fn api_code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Api { error, .. } => Some(error.code),
        _ => None,
    }
}

#[test]
fn handles_can_be_shared_between_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    fn send_future<F: std::future::Future + Send>(_: F) {}
    send_sync::<Client>();
    send_sync::<ClientError>();
    send::<raft_client::WatchStream>();
    send_future(raft_client::cli::run(["raftctl", "status"]));
}

// ---- leader discovery ----

#[tokio::test]
async fn a_not_leader_hint_sends_the_write_to_the_leader_with_the_same_session() {
    let fake = Fake::start(2, |addrs| {
        let leader = addrs[1];
        vec![script(move |_, _| not_leader(leader)), script(|_, n| write_ok(10 + n as u64, "k", "v"))]
    })
    .await;
    let client = Client::new(fake.endpoints(), options()).unwrap();
    let written = client.put("k", "v").await.unwrap();
    assert_eq!(written.index, 10);
    assert_eq!(client.known_leader(), Some(Endpoint::parse(&fake.endpoints()[1]).unwrap()));

    // The next write goes straight to the leader, with the next sequence number.
    client.put("k", "w").await.unwrap();
    let seen = fake.seen();
    let route: Vec<(usize, Option<u64>)> = seen.iter().map(|s| (s.node, s.seq)).collect();
    assert_eq!(route, [(0, Some(1)), (1, Some(1)), (1, Some(2))]);
    assert!(seen.iter().all(|s| s.client_id == Some(client.client_id())));
    assert!(seen.iter().all(|s| s.method == "PUT" && s.path == "/v1/kv/k"));
    assert_eq!(seen[1].body, r#"{"value":"v"}"#);
}

#[tokio::test]
async fn a_307_redirect_is_followed_by_the_client_keeping_method_body_and_session() {
    let fake = Fake::start(2, |addrs| {
        let location = format!("http://{}/v1/cas/a%2Fb", addrs[1]);
        vec![script(move |_, _| Reply::Redirect(location.clone())), script(|_, _| write_ok(4, "a/b", "new"))]
    })
    .await;
    let client = Client::new(fake.endpoints(), options()).unwrap();
    let request = CasRequest { expected_version: Some(0), value: Some("new".into()), ..Default::default() };
    client.cas("a/b", &request).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/v1/cas/a%2Fb"));
        assert_eq!((s.client_id, s.seq), (Some(client.client_id()), Some(1)));
        assert_eq!(s.body, r#"{"expected_version":0,"value":"new"}"#);
    }
    assert_eq!((seen[0].node, seen[1].node), (0, 1));
    assert_eq!(client.known_leader(), Some(Endpoint::parse(&fake.endpoints()[1]).unwrap()));
}

#[tokio::test]
async fn nodes_pointing_at_each_other_exhaust_the_retries() {
    let fake = Fake::start(2, |addrs| {
        let (a, b) = (addrs[0], addrs[1]);
        vec![script(move |_, _| not_leader(b)), script(move |_, _| not_leader(a))]
    })
    .await;
    let client = Client::new(fake.endpoints(), options()).unwrap();
    let err = client.put("k", "v").await.unwrap_err();
    let ClientError::RetriesExhausted { attempts, last } = err else { panic!("{err:?}") };
    assert_eq!(attempts, 5);
    assert_eq!(api_code(&last), Some(ErrorCode::NotLeader));
    assert_eq!(fake.seen().len(), 5);
    assert!(fake.seen().iter().all(|s| s.seq == Some(1)));
}

// ---- retries with the same session ----

#[tokio::test]
async fn a_timed_out_write_is_retried_elsewhere_with_the_same_client_id_and_seq() {
    let fake =
        Fake::start(2, |_| vec![script(|_, _| Reply::Hang), script(|_, _| write_ok(8, "k", "v"))]).await;
    let client = Client::new(
        fake.endpoints(),
        ClientOptions { request_timeout: Duration::from_millis(300), ..options() },
    )
    .unwrap();
    let written = client.put("k", "v").await.unwrap();
    assert_eq!(written.index, 8);
    let seen = fake.seen();
    assert_eq!(seen.iter().map(|s| s.node).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(seen[0].client_id, seen[1].client_id);
    assert_eq!(seen[0].seq, Some(1));
    assert_eq!(seen[1].seq, Some(1));
    // The node that answered the write is the leader now: the next write skips node 0.
    client.delete("k").await.unwrap();
    let last = fake.seen().pop().unwrap();
    assert_eq!((last.node, last.method.as_str(), last.seq), (1, "DELETE", Some(2)));
}

#[tokio::test]
async fn unavailable_then_success_is_retried_with_the_same_seq() {
    for (status, code) in [(503, "no_leader"), (503, "no_quorum"), (503, "busy"), (504, "timeout")] {
        let fake = Fake::start(1, |_| {
            vec![script(
                move |_, n| if n == 0 { api_error(status, code, "not now") } else { write_ok(2, "k", "v") },
            )]
        })
        .await;
        let client = Client::new(fake.endpoints(), options()).unwrap();
        client.put("k", "v").await.unwrap();
        let seen = fake.seen();
        assert_eq!(seen.len(), 2, "{code}");
        assert_eq!((seen[0].seq, seen[1].seq), (Some(1), Some(1)), "{code}");
        assert_eq!(seen[0].client_id, seen[1].client_id);
    }
}

#[tokio::test]
async fn a_refused_connection_moves_to_the_next_endpoint() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let fake = Fake::start(1, |_| vec![script(|_, _| Reply::Json(200, json!(kv("k", "v", 2))))]).await;
    let client = Client::new([dead.to_string(), fake.endpoints()[0].clone()], options()).unwrap();
    let got = client.get("k", None).await.unwrap();
    assert_eq!(got, Some(kv("k", "v", 2)));
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn non_json_gateway_errors_are_retried_and_server_errors_are_not() {
    let fake = Fake::start(1, |_| {
        vec![script(|s, n| match (s.path.as_str(), n) {
            ("/v1/status", _) => Reply::Text(500, "boom"),
            (_, 0) => Reply::Text(502, "Bad Gateway"),
            _ => write_ok(1, "k", "v"),
        })]
    })
    .await;
    let client = Client::new(fake.endpoints(), options()).unwrap();
    client.put("k", "v").await.unwrap();
    let err = client.status().await.unwrap_err();
    let ClientError::Api { status, error } = &err else { panic!("{err:?}") };
    assert_eq!((*status, error.code, error.message.as_str()), (500, ErrorCode::Internal, "boom"));
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test]
async fn retries_exhausted_report_the_last_error_and_the_attempt_count() {
    let fake = Fake::start(2, |_| {
        vec![
            script(|_, _| api_error(503, "no_quorum", "quorum lost")),
            script(|_, _| api_error(503, "no_quorum", "quorum lost")),
        ]
    })
    .await;
    let client = Client::new(fake.endpoints(), ClientOptions { max_retries: 3, ..options() }).unwrap();
    let err = client.put("k", "v").await.unwrap_err();
    let ClientError::RetriesExhausted { attempts, last } = &err else { panic!("{err:?}") };
    assert_eq!(*attempts, 4);
    assert_eq!(api_code(last), Some(ErrorCode::NoQuorum));
    assert_eq!(err.code(), "no_quorum");
    let seen = fake.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.iter().map(|s| s.node).collect::<Vec<_>>(), [0, 1, 0, 1], "alternates between the nodes");
    assert!(seen.iter().all(|s| s.seq == Some(1)));
    // The write's outcome is unknown: the next write starts a new session at 1.
    let first_id = seen[0].client_id;
    assert_ne!(Some(client.client_id()), first_id);
    let new_id = client.client_id();
    let _ = client.put("k", "v").await;
    let next = fake.seen().last().cloned().unwrap();
    assert_eq!((next.seq, next.client_id), (Some(1), Some(new_id)));
}

// ---- non-retryable errors ----

#[tokio::test]
async fn cas_failed_returns_at_once_with_the_current_value() {
    let fake = Fake::start(2, |_| {
        let failed = || {
            Reply::Json(
                409,
                json!({ "code": "cas_failed", "message": "version is 4", "current": kv("k", "now", 4) }),
            )
        };
        vec![script(move |_, _| failed()), script(move |_, _| failed())]
    })
    .await;
    let client = Client::new(fake.endpoints(), options()).unwrap();
    let request = CasRequest { expected_version: Some(3), value: Some("x".into()), ..Default::default() };
    let err = client.cas("k", &request).await.unwrap_err();
    let ClientError::CasFailed { current } = err else { panic!("{err:?}") };
    assert_eq!(current, Some(kv("k", "now", 4)));
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn bad_request_and_stale_sequence_return_at_once() {
    for (status, code, expected) in [
        (400, "bad_request", ErrorCode::BadRequest),
        (409, "stale_sequence", ErrorCode::StaleSequence),
        (413, "too_large", ErrorCode::TooLarge),
    ] {
        let fake = Fake::start(2, |_| {
            vec![
                script(move |_, _| api_error(status, code, "no")),
                script(move |_, _| api_error(status, code, "no")),
            ]
        })
        .await;
        let client = Client::new(fake.endpoints(), options()).unwrap();
        let err = client.put("k", "v").await.unwrap_err();
        let ClientError::Api { status: got, error } = &err else { panic!("{err:?}") };
        assert_eq!((*got, error.code), (status, expected));
        assert!(!err.is_retryable());
        assert_eq!(fake.seen().len(), 1, "{code}");
    }
}

// ---- reads, sessions, limits ----

#[tokio::test]
async fn get_sends_the_consistency_encodes_the_key_and_maps_not_found_to_none() {
    let fake = Fake::start(1, |_| {
        vec![script(|s, _| {
            if s.path == "/v1/kv/missing" {
                api_error(404, "not_found", "no such key")
            } else {
                Reply::Json(200, json!(kv("a/b c", "1", 1)))
            }
        })]
    })
    .await;
    let client =
        Client::new(fake.endpoints(), ClientOptions { consistency: Consistency::Lease, ..options() })
            .unwrap();
    assert_eq!(client.get("missing", None).await.unwrap(), None);
    assert_eq!(client.get("a/b c", Some(Consistency::Local)).await.unwrap().unwrap().value, "1");
    let seen = fake.seen();
    assert_eq!((seen[0].path.as_str(), seen[0].query.as_str()), ("/v1/kv/missing", "consistency=lease"));
    assert_eq!((seen[1].path.as_str(), seen[1].query.as_str()), ("/v1/kv/a%2Fb%20c", "consistency=local"));
    assert!(seen.iter().all(|s| s.client_id.is_none() && s.seq.is_none()), "reads carry no session");
}

#[tokio::test]
async fn every_write_takes_the_next_seq_and_sessions_are_separate() {
    let fake = Fake::start(1, |_| {
        vec![script(|s, n| match s.method.as_str() {
            "GET" => Reply::Json(200, json!({ "services": [] })),
            _ => write_ok(n as u64 + 1, "k", "v"),
        })]
    })
    .await;
    let client = Client::new(fake.endpoints(), ClientOptions { client_id: Some(77), ..options() }).unwrap();
    assert_eq!(client.client_id(), 77);
    client.put("k", "v").await.unwrap();
    client.delete("k").await.unwrap();
    client.services().await.unwrap();
    let spec = ServiceSpec {
        kind: "http".into(),
        nodes: vec![ServiceNode {
            id: "w1".into(),
            address: "10.0.0.1:80".into(),
            priority: 2,
            attributes: BTreeMap::new(),
            down: false,
        }],
    };
    client.register_service("web", &spec).await.unwrap();
    client.set_service_node_down("web", "w1", true).await.unwrap();
    client.remove_service("web").await.unwrap();
    let other = client.new_session();
    assert_ne!(other.client_id(), 77);
    other.put("k", "v").await.unwrap();
    let got: Vec<(String, String, Option<u64>, Option<u64>)> =
        fake.seen().into_iter().map(|s| (s.method, s.path, s.client_id, s.seq)).collect();
    let id = Some(77);
    let expected = vec![
        ("PUT".to_owned(), "/v1/kv/k".to_owned(), id, Some(1)),
        ("DELETE".into(), "/v1/kv/k".into(), id, Some(2)),
        ("GET".into(), "/v1/services".into(), None, None),
        ("PUT".into(), "/v1/services/web".into(), id, Some(3)),
        ("POST".into(), "/v1/services/web/nodes/w1/down".into(), id, Some(4)),
        ("DELETE".into(), "/v1/services/web".into(), id, Some(5)),
        ("PUT".into(), "/v1/kv/k".into(), Some(other.client_id()), Some(1)),
    ];
    assert_eq!(got, expected);
    let down = &fake.seen()[4];
    assert_eq!(down.body, r#"{"down":true}"#);
}

#[tokio::test]
async fn writes_of_one_session_never_overlap() {
    let fake = Fake::start(1, |_| {
        vec![script(|_, n| {
            Reply::After(Duration::from_millis(20), Box::new(write_ok(n as u64 + 1, "k", "v")))
        })]
    })
    .await;
    let client = Client::new(fake.endpoints(), options()).unwrap();
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.put(&format!("k{i}"), "v").await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    assert_eq!(fake.in_flight_max.load(Ordering::SeqCst), 1, "a session sends one write at a time");
    let seqs: Vec<u64> = fake.seen().iter().map(|s| s.seq.unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "numbers reach the server in order");
}

#[tokio::test]
async fn answers_over_the_size_limit_are_refused() {
    let big = "x".repeat(10_000);
    let fake =
        Fake::start(1, move |_| vec![script(move |_, _| Reply::Json(200, json!(kv("k", &big, 1))))]).await;
    let client =
        Client::new(fake.endpoints(), ClientOptions { response_bytes_max: 4096, ..options() }).unwrap();
    let err = client.get("k", None).await.unwrap_err();
    assert!(matches!(err, ClientError::Decode(_)), "{err:?}");
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn statuses_ask_every_endpoint() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let fake = Fake::start(1, |_| {
        vec![script(|_, _| {
            Reply::Json(
                200,
                json!({
                    "cluster": "dev", "id": 1, "term": 2, "role": "leader", "leader": 1,
                    "commit_index": 5, "applied_index": 5, "last_log_index": 5, "snapshot_index": 0,
                    "state_hash": "ab", "keys": 1, "members": [], "joint": false,
                    "leadership_transfer": null, "fatal": null
                }),
            )
        })]
    })
    .await;
    let client = Client::new([fake.endpoints()[0].clone(), dead.to_string()], options()).unwrap();
    let rows = client.statuses().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].1.as_ref().unwrap().id, 1);
    let err = rows[1].1.as_ref().unwrap_err();
    assert_eq!(err.code(), "transport");
}

// ---- watch ----

fn watch_chunks() -> Vec<String> {
    vec![
        ": keep-alive\n\n".into(),
        "data: {\"index\":5,\"kind\":\"put\",".into(),
        "\"key\":\"app/a\",\"value\":\"1\",\"version\":1}\n".into(),
        "\n: another comment\r\n".into(),
        "data: {\"index\":6,\r\ndata: \"kind\":\"delete\",\"key\":\"app/a\"}\r".into(),
        "\n\r\n".into(),
        "event: error\ndata: {\"code\":\"compacted\",\"message\":\"index 7 is compacted\"}\n\n".into(),
    ]
}

#[tokio::test]
async fn watch_parses_events_split_across_chunks_and_ends_after_an_error_event() {
    let fake =
        Fake::start(1, |_| vec![script(|_, _| Reply::Sse { chunks: watch_chunks(), then_hang: true })]).await;
    let client = Client::new(fake.endpoints(), options()).unwrap();
    let mut stream = client.watch("app/", Some(5)).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!((first.index, first.kind, first.key.as_str()), (5, WatchKind::Put, "app/a"));
    assert_eq!((first.value.as_deref(), first.version), (Some("1"), Some(1)));
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!((second.index, second.kind, second.value), (6, WatchKind::Delete, None));
    let err = stream.next().await.unwrap().unwrap_err();
    let ClientError::Api { status, error } = &err else { panic!("{err:?}") };
    assert_eq!((*status, error.code), (410, ErrorCode::Compacted));
    assert!(stream.next().await.is_none(), "the stream ends after an error");
    let seen = fake.seen();
    assert_eq!((seen[0].path.as_str(), seen[0].query.as_str()), ("/v1/watch", "prefix=app%2F&from_index=5"));
}

#[tokio::test]
async fn watch_open_errors_are_returned_and_a_closed_stream_ends() {
    let fake = Fake::start(1, |_| {
        vec![script(|s, _| {
            if s.query.contains("from_index=1") {
                api_error(410, "compacted", "index 1 is compacted")
            } else {
                Reply::Sse {
                    chunks: vec![
                        "data: {\"index\":9,\"kind\":\"service_removed\",\"key\":\"web\"}\n\n".into()
                    ],
                    then_hang: false,
                }
            }
        })]
    })
    .await;
    let client = Client::new(fake.endpoints(), options()).unwrap();
    let err = client.watch("", Some(1)).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::Compacted));
    let mut stream = client.watch("", None).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().kind, WatchKind::ServiceRemoved);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_silent_watch_times_out() {
    let fake = Fake::start(1, |_| {
        vec![script(|_, _| Reply::Sse {
            chunks: vec![
                "data: {\"index\":1,\"kind\":\"put\",\"key\":\"a\",\"value\":\"b\",\"version\":1}\n\n".into(),
            ],
            then_hang: true,
        })]
    })
    .await;
    let client = Client::new(
        fake.endpoints(),
        ClientOptions { watch_idle_timeout: Some(Duration::from_millis(300)), ..options() },
    )
    .unwrap();
    let mut stream = client.watch("", None).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_malformed_or_oversized_event_ends_the_watch_with_a_decode_error() {
    let fake = Fake::start(1, |_| {
        vec![script(|s, _| {
            let chunks = if s.query.contains("prefix=big") {
                vec![format!("data: {}\n\n", "x".repeat(8192))]
            } else {
                vec!["data: {not json}\n\n".into()]
            };
            Reply::Sse { chunks, then_hang: true }
        })]
    })
    .await;
    let client =
        Client::new(fake.endpoints(), ClientOptions { response_bytes_max: 4096, ..options() }).unwrap();
    for prefix in ["bad", "big"] {
        let mut stream = client.watch(prefix, None).await.unwrap();
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::Decode(_)), "{prefix}: {err:?}");
        assert!(stream.next().await.is_none());
    }
}

// ---- raftctl against a fake node ----

async fn raftctl(fake: &Fake, args: &[&str]) -> (i32, String, String) {
    let mut full = vec!["raftctl".to_owned(), "--endpoints".to_owned(), fake.endpoints().join(",")];
    full.extend(args.iter().map(|a| (*a).to_owned()));
    let cli = <raft_client::cli::Cli as clap::Parser>::try_parse_from(full).expect("parses");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = raft_client::cli::execute(&cli, &mut out, &mut err).await.expect("runs");
    (code, String::from_utf8(out).expect("UTF-8"), String::from_utf8(err).expect("UTF-8"))
}

#[tokio::test]
async fn raftctl_prints_tables_json_and_errors() {
    let fake = Fake::start(1, |_| {
        vec![script(|s, _| match (s.method.as_str(), s.path.as_str()) {
            ("POST", "/v1/cas/k") => Reply::Json(
                409,
                json!({ "code": "cas_failed", "message": "version is 4", "current": kv("k", "now", 4) }),
            ),
            ("GET", "/v1/kv/k") => Reply::Json(200, json!(kv("k", "now", 4))),
            ("GET", "/v1/kv/gone") => api_error(404, "not_found", "no such key"),
            ("GET", "/v1/kv") => Reply::Json(
                200,
                json!({ "items": [kv("k", "now", 4), kv("kk", "v", 1)], "truncated": true, "index": 7 }),
            ),
            ("PUT", "/v1/kv/k") => write_ok(12, "k", "v"),
            _ => api_error(400, "bad_request", "unexpected"),
        })]
    })
    .await;
    let (code, out, err) = raftctl(&fake, &["cas", "k", "--expect-version", "3", "--value", "x"]).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, "error: cas_failed: the key is at version 4 (modified at index 7) with value \"now\"\n");

    let (code, out, _) = raftctl(&fake, &["get", "k"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "key       k\nvalue     now\nversion   4\ncreated   3\nmodified  7\n");
    let (code, out, _) = raftctl(&fake, &["--json", "get", "k"]).await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<KeyValue>(&out).unwrap(), kv("k", "now", 4));
    let (code, _, err) = raftctl(&fake, &["get", "gone"]).await;
    assert_eq!((code, err.as_str()), (1, "error: not_found: key \"gone\" does not exist\n"));

    let (code, out, err) = raftctl(&fake, &["list", "k", "--limit", "2"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "KEY  VALUE  VERSION  MODIFIED\nk    now    4        7\nkk   v      1        7\n");
    assert_eq!(err, "(more keys match; raise --limit)\n");
    let (code, out, _) = raftctl(&fake, &["put", "k", "v"]).await;
    assert_eq!((code, out.as_str()), (0, "OK: index 12, version 1\n"));
    let (code, _, err) = raftctl(&fake, &["members"]).await;
    assert_eq!((code, err.as_str()), (1, "error: bad_request: unexpected\n"));
}

#[tokio::test]
async fn raftctl_sends_the_api_bodies() {
    let fake = Fake::start(1, |_| {
        vec![script(|s, _| match (s.method.as_str(), s.path.as_str()) {
            ("POST", "/v1/members") => Reply::Json(200, json!({ "members": [], "joint": true })),
            ("POST", "/v1/transfer-leader") => {
                Reply::Json(200, json!({ "leader": 3, "client_addr": "127.0.0.1:8083", "term": 9 }))
            }
            ("PUT", "/v1/services/web") | ("POST", "/v1/services/web/nodes/w1/down") => {
                Reply::Json(200, json!({ "index": 5 }))
            }
            ("GET", "/v1/balance/web") => Reply::Json(
                200,
                json!({ "service": "web", "node": { "id": "w1", "address": "10.0.0.1:80", "priority": 2 } }),
            ),
            _ => api_error(400, "bad_request", "unexpected"),
        })]
    })
    .await;
    let (code, out, _) = raftctl(
        &fake,
        &[
            "members",
            "add",
            "4",
            "--raft-addr",
            "127.0.0.1:9004",
            "--client-addr",
            "127.0.0.1:8084",
            "--voter",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.ends_with("(joint configuration: a membership change is in progress)\n"), "{out}");
    let (code, out, _) = raftctl(&fake, &["transfer-leader", "3"]).await;
    assert_eq!((code, out.as_str()), (0, "leader 3 at 127.0.0.1:8083 (term 9)\n"));
    let (code, out, _) = raftctl(
        &fake,
        &[
            "services",
            "register",
            "web",
            "--type",
            "http",
            "--node",
            "id=w1,addr=10.0.0.1:80,priority=2,attr.zone=eu",
        ],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "OK: index 5\n"));
    let (code, _, _) = raftctl(&fake, &["services", "up", "web", "w1"]).await;
    assert_eq!(code, 0);
    let (code, out, _) = raftctl(&fake, &["balance", "web", "--strategy", "random"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "ID  ADDRESS      PRIORITY  STATE  ATTRIBUTES\nw1  10.0.0.1:80  2         up\n");

    let seen = fake.seen();
    let body = |i: usize| serde_json::from_str::<Value>(&seen[i].body).expect("JSON body");
    assert_eq!(
        body(0),
        json!({ "id": 4, "raft_addr": "127.0.0.1:9004", "client_addr": "127.0.0.1:8084", "role": "voter" })
    );
    assert_eq!(body(1), json!({ "to": 3 }));
    assert_eq!(
        body(2),
        json!({ "type": "http", "nodes": [
            { "id": "w1", "address": "10.0.0.1:80", "priority": 2, "attributes": { "zone": "eu" }, "down": false }
        ] })
    );
    assert_eq!(body(3), json!({ "down": false }));
    assert_eq!(seen[4].query, "strategy=random");
    assert!(seen[0].seq.is_none(), "membership changes carry no session");
    assert_eq!(seen[2].seq, Some(1));
}
