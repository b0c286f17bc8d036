//! The load generator: `connections` workers, each with its own keep-alive connection
//! (HTTP/1.1, or HTTP/2 for etcd's gRPC API), each sending one request at a time until the
//! phase ends: as soon as the last answer came (a closed loop), or, with a rate, when the
//! request is due (an open loop whose latency counts from the due time when a request went
//! out late, so that a stall shows in every request it delayed).
//!
//! A phase is a warm-up (requests sent, nothing counted) followed by a measured window that
//! ends after a duration or a number of requests. A request counts in the window it completes
//! in. Latency goes into per-worker [`Histogram`]s, merged at the end; errors are counted by
//! kind (`503 no_leader`, `connect: ConnectionRefused`, `timeout`, ...).

use raft_core::SeededRng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::histogram::Histogram;

/// Distinct error kinds kept per phase; later ones are counted as `other`.
const ERROR_KINDS_MAX: usize = 32;
/// Longest error kind kept (server messages can be long).
const ERROR_KIND_CHARS_MAX: usize = 60;
/// Pause after a failed request or connection attempt, so that a failing server is not
/// hammered by a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(5);
/// Time limit of one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response body read.
const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// The server API requests are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `raft-node`: `PUT /v1/kv/{key}` with `{"value": ...}`, `GET /v1/kv/{key}`
    /// (linearizable by default).
    Raft,
    /// etcd's v3 JSON gateway: `POST /v3/kv/put` and `POST /v3/kv/range` (linearizable by
    /// default), keys and values in base64. The gateway is a proxy inside etcd: it turns each
    /// request into a gRPC call on a loopback connection to the same process.
    EtcdJson,
    /// etcd's gRPC API, as its own clients use it: `etcdserverpb.KV/Put` and `KV/Range`
    /// (linearizable by default) over HTTP/2 without TLS.
    EtcdGrpc,
}

/// The requests of a workload: which key, read or write, and the value written.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Keys are `bench-00000000` up to `keys - 1`.
    pub keys: u64,
    /// Bytes of every value written.
    pub value_bytes: usize,
    /// Share of reads: 0 writes only, 1 reads only.
    pub read_ratio: f64,
}

/// When a phase's measured window ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Window {
    /// After this long.
    Duration(Duration),
    /// After this many requests (all workers together).
    Requests(u64),
    /// When the phase's stop flag is set (failover runs).
    UntilStopped,
}

/// One phase of load.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    pub api: Api,
    /// HTTP addresses (`127.0.0.1:port`); worker `i` starts on endpoint `i % len` and moves to
    /// the next one when it cannot connect.
    pub endpoints: Vec<String>,
    pub connections: usize,
    pub workload: Workload,
    /// Write every key once, in order, and end (`window` and `read_ratio` are ignored).
    pub fill: bool,
    pub warmup: Duration,
    pub window: Window,
    /// Time limit of one request; a request over it is abandoned with its connection.
    pub request_timeout: Duration,
    /// Requests per second of all workers together (an open loop); `None`: each worker sends
    /// its next request as soon as the last was answered.
    pub rate: Option<f64>,
}

/// What one phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct PhaseResult {
    /// The measured window: from the end of the warm-up to its end (or the last completion,
    /// for a request count).
    pub window: Duration,
    /// Latency of successful writes, in nanoseconds.
    pub writes: Histogram,
    /// Latency of successful reads, in nanoseconds.
    pub reads: Histogram,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Failed requests outside the measured window (warm-up, or answered after it ended):
    /// not in the figures, but a smoke run must see them.
    pub errors_outside: u64,
    /// The window second by second (for the timeline chart).
    pub seconds: Vec<SecondResult>,
}

/// The longest window kept second by second (an hour).
const SECONDS_MAX: usize = 3_600;

/// One second of a phase's window.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecondResult {
    /// Successful requests answered in this second.
    pub ok: u64,
    /// Failed ones.
    pub errors: u64,
    /// Latency of the successful ones, in µs, one significant digit (a few KiB).
    pub latency: Option<hdrhistogram::Histogram<u64>>,
}

impl SecondResult {
    fn merge(&mut self, other: &SecondResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        match (&mut self.latency, &other.latency) {
            (Some(mine), Some(theirs)) => {
                // Same bounds on both sides: adding cannot fail.
                let _ = mine.add(theirs);
            }
            (None, Some(theirs)) => self.latency = Some(theirs.clone()),
            _ => {}
        }
    }
}

/// The entry of `seconds` for a request answered at `finished`, growing the vector as needed.
fn second_of(seconds: &mut Vec<SecondResult>, from: Instant, finished: Instant) -> Option<&mut SecondResult> {
    let index = usize::try_from(finished.saturating_duration_since(from).as_secs()).ok()?;
    if index >= SECONDS_MAX {
        return None;
    }
    if seconds.len() <= index {
        seconds.resize_with(index + 1, SecondResult::default);
    }
    seconds.get_mut(index)
}

impl PhaseResult {
    /// Failed requests, all kinds.
    pub(crate) fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, other: &PhaseResult) {
        self.errors_outside += other.errors_outside;
        self.writes.merge(&other.writes);
        self.reads.merge(&other.reads);
        for (kind, count) in &other.errors {
            count_error(&mut self.errors, kind.clone(), *count);
        }
        if self.seconds.len() < other.seconds.len() {
            self.seconds.resize_with(other.seconds.len(), SecondResult::default);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.merge(theirs);
        }
    }
}

fn count_error(errors: &mut BTreeMap<String, u64>, kind: String, count: u64) {
    let kind = if errors.len() >= ERROR_KINDS_MAX && !errors.contains_key(&kind) {
        "other".to_string()
    } else {
        kind
    };
    *errors.entry(kind).or_default() += count;
}

/// The first successful write sent after a kill, for failover runs: armed just before the
/// kill, it keeps the earliest completion of a successful write that started after that.
#[derive(Debug)]
pub(crate) struct RecoveryMark {
    epoch: Instant,
    /// Requests started at or after this (ns since `epoch`) count; `u64::MAX`: disarmed.
    armed_at_ns: AtomicU64,
    first_ok_ns: AtomicU64,
}

impl RecoveryMark {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            armed_at_ns: AtomicU64::new(u64::MAX),
            first_ok_ns: AtomicU64::new(u64::MAX),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Starts watching for writes sent from now on.
    pub(crate) fn arm(&self) {
        self.first_ok_ns.store(u64::MAX, Ordering::SeqCst);
        self.armed_at_ns.store(self.nanos(Instant::now()), Ordering::SeqCst);
    }

    /// A successful write that was sent at `started` and answered at `finished`.
    pub(crate) fn success(&self, started: Instant, finished: Instant) {
        if self.nanos(started) >= self.armed_at_ns.load(Ordering::SeqCst) {
            self.first_ok_ns.fetch_min(self.nanos(finished), Ordering::SeqCst);
        }
    }

    /// When the first such write was answered.
    pub(crate) fn first_ok(&self) -> Option<Instant> {
        let ns = self.first_ok_ns.load(Ordering::SeqCst);
        (ns != u64::MAX).then(|| self.epoch + Duration::from_nanos(ns))
    }
}

/// Builds the HTTP requests of a workload for one API.
#[derive(Debug)]
pub(crate) struct Requests {
    api: Api,
    /// The value, as sent: raft's whole PUT body, etcd's base64 value, or the raw bytes for
    /// gRPC.
    value: Bytes,
}

impl Requests {
    pub(crate) fn new(api: Api, value_bytes: usize) -> Self {
        // Printable, varied bytes (no compression anywhere, but no run of one byte either).
        let raw: Vec<u8> =
            (0..value_bytes).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]).collect();
        let value = match api {
            Api::Raft => {
                let mut body = b"{\"value\":\"".to_vec();
                body.extend_from_slice(&raw);
                body.extend_from_slice(b"\"}");
                Bytes::from(body)
            }
            Api::EtcdJson => Bytes::from(base64(&raw)),
            Api::EtcdGrpc => Bytes::from(raw),
        };
        Self { api, value }
    }

    /// The name of key number `index`.
    pub(crate) fn key(index: u64) -> String {
        format!("bench-{index:08}")
    }

    /// A write of `key`.
    pub(crate) fn put(&self, key: &str) -> (Method, String, Bytes) {
        match self.api {
            Api::Raft => (Method::PUT, format!("/v1/kv/{key}"), self.value.clone()),
            // PutRequest { key = 1, value = 2 }.
            Api::EtcdGrpc => (
                Method::POST,
                "/etcdserverpb.KV/Put".to_string(),
                grpc_message(&[(1, key.as_bytes()), (2, &self.value)]),
            ),
            Api::EtcdJson => {
                let mut body = format!("{{\"key\":\"{}\",\"value\":\"", base64(key.as_bytes())).into_bytes();
                body.extend_from_slice(&self.value);
                body.extend_from_slice(b"\"}");
                (Method::POST, "/v3/kv/put".to_string(), Bytes::from(body))
            }
        }
    }

    /// A linearizable read of `key`.
    pub(crate) fn get(&self, key: &str) -> (Method, String, Bytes) {
        match self.api {
            Api::Raft => (Method::GET, format!("/v1/kv/{key}"), Bytes::new()),
            // RangeRequest { key = 1 }: `serializable` (7) left false, a linearizable read.
            Api::EtcdGrpc => {
                (Method::POST, "/etcdserverpb.KV/Range".to_string(), grpc_message(&[(1, key.as_bytes())]))
            }
            Api::EtcdJson => (
                Method::POST,
                "/v3/kv/range".to_string(),
                Bytes::from(format!("{{\"key\":\"{}\"}}", base64(key.as_bytes()))),
            ),
        }
    }

    /// The error kind of a non-200 answer: the stable code for raft-node (`503 no_leader`),
    /// the message for etcd (`503 etcdserver: leader changed`).
    pub(crate) fn error_kind(&self, status: StatusCode, body: &[u8]) -> String {
        let detail = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| {
            let field = match self.api {
                Api::Raft => "code",
                Api::EtcdJson | Api::EtcdGrpc => "message",
            };
            v.get(field).and_then(|f| f.as_str()).map(str::to_string)
        });
        let mut kind = format!("{} {}", status.as_u16(), detail.as_deref().unwrap_or("(no detail)"));
        kind.truncate(kind.char_indices().nth(ERROR_KIND_CHARS_MAX).map_or(kind.len(), |(i, _)| i));
        kind
    }
}

/// A gRPC message (uncompressed, its 5-byte length prefix first) of a protobuf message whose
/// fields are all length-delimited (`bytes` or `string`): `(field number, value)` in order.
pub(crate) fn grpc_message(fields: &[(u32, &[u8])]) -> Bytes {
    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut message = Vec::new();
    for (number, value) in fields {
        // Wire type 2: length-delimited.
        varint(&mut message, (u64::from(*number) << 3) | 2);
        varint(&mut message, value.len() as u64);
        message.extend_from_slice(value);
    }
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0); // not compressed
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

/// Standard base64 with padding (etcd's JSON gateway wants keys and values so).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A TCP connection to `addr` (`host:port`) without Nagle's delay; the error is a kind such
/// as `connect: ConnectionRefused`.
async fn connect(addr: &str) -> Result<TcpStream, String> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("connect: {:?}", e.kind())),
        Err(_) => return Err("connect: timeout".to_string()),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The task that drives a hyper client connection: aborted when dropped, with the
/// connection that owns it.
struct DriverTask(tokio::task::JoinHandle<()>);

impl DriverTask {
    /// Runs `connection` (its errors show in the request under way).
    fn spawn<F: std::future::Future + Send + 'static>(connection: F) -> Self {
        Self(tokio::spawn(async move {
            let _ = connection.await;
        }))
    }
}

impl Drop for DriverTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One HTTP/1.1 keep-alive connection; its driver task is aborted with it.
pub(crate) struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
    _driver: DriverTask,
}

impl Connection {
    /// Connects to `addr` (`host:port`); the error is a kind such as
    /// `connect: ConnectionRefused`.
    pub(crate) async fn open(addr: &str) -> Result<Self, String> {
        let stream = connect(addr).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("connect: {}", hyper_kind(&e)))?;
        let host = HeaderValue::from_str(addr).map_err(|_| format!("bad address {addr}"))?;
        Ok(Self { sender, host, _driver: DriverTask::spawn(connection) })
    }

    /// Sends one request and reads the whole answer.
    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        self.sender.ready().await.map_err(|e| hyper_kind(&e))?;
        let mut request = Request::builder().method(method).uri(path).header(HOST, self.host.clone());
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body)).map_err(|e| format!("request: {e}"))?;
        let response = self.sender.send_request(request).await.map_err(|e| hyper_kind(&e))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("io: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// One HTTP/2 connection without TLS to a gRPC server (etcd), one call at a time on it; its
/// driver task is aborted with it.
pub(crate) struct GrpcConnection {
    sender: http2::SendRequest<Full<Bytes>>,
    /// `http://host:port`: HTTP/2 requests carry the scheme and authority.
    base: String,
    _driver: DriverTask,
}

impl GrpcConnection {
    /// Connects to `addr` (`host:port`) and opens HTTP/2 with prior knowledge.
    pub(crate) async fn open(addr: &str) -> Result<Self, String> {
        let stream = connect(addr).await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("connect: {}", hyper_kind(&e)))?;
        Ok(Self { sender, base: format!("http://{addr}"), _driver: DriverTask::spawn(connection) })
    }

    /// Calls `path` (`/package.Service/Method`) with a framed message and reads the whole
    /// answer. The outer error is the connection's (it should be dropped); the inner one a
    /// call the server answered with a gRPC status other than OK (`grpc 14 leader changed`).
    pub(crate) async fn call(&mut self, path: &str, message: Bytes) -> Result<Result<Bytes, String>, String> {
        self.sender.ready().await.map_err(|e| hyper_kind(&e))?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(message))
            .map_err(|e| format!("request: {e}"))?;
        let response = self.sender.send_request(request).await.map_err(|e| hyper_kind(&e))?;
        if response.status() != StatusCode::OK {
            return Ok(Err(format!("grpc: HTTP {}", response.status().as_u16())));
        }
        // A call that fails at once answers its status in the headers alone.
        let early = grpc_status(response.headers());
        let collected = http_body_util::Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("io: {e}"))?;
        let status = early.or_else(|| collected.trailers().and_then(grpc_status));
        match status {
            Some((0, _)) => Ok(Ok(collected.to_bytes())),
            Some((code, message)) => {
                let mut kind = format!("grpc {code} {message}");
                kind.truncate(kind.char_indices().nth(ERROR_KIND_CHARS_MAX).map_or(kind.len(), |(i, _)| i));
                Ok(Err(kind))
            }
            None => Ok(Err("grpc: no status".to_string())),
        }
    }
}

/// `grpc-status` and `grpc-message` of a header or trailer map, if the status is there.
fn grpc_status(headers: &hyper::HeaderMap) -> Option<(u32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("").to_string();
    Some((code, message))
}

/// A worker's connection, of the kind its API wants.
enum Link {
    Http1(Connection),
    Grpc(GrpcConnection),
}

/// How a request ended, when it did not succeed.
enum Failure {
    /// The server answered with an error: the connection stays.
    Answer(String),
    /// The connection failed: a new one is needed.
    Connection(String),
}

impl Link {
    async fn open(api: Api, addr: &str) -> Result<Self, String> {
        match api {
            Api::EtcdGrpc => GrpcConnection::open(addr).await.map(Link::Grpc),
            Api::Raft | Api::EtcdJson => Connection::open(addr).await.map(Link::Http1),
        }
    }

    async fn exchange(
        &mut self,
        requests: &Requests,
        request: (Method, String, Bytes),
    ) -> Result<(), Failure> {
        let (method, path, body) = request;
        match self {
            Link::Http1(conn) => match conn.send(method, &path, body).await {
                Ok((StatusCode::OK, _)) => Ok(()),
                Ok((status, body)) => Err(Failure::Answer(requests.error_kind(status, &body))),
                Err(kind) => Err(Failure::Connection(kind)),
            },
            Link::Grpc(conn) => match conn.call(&path, body).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(kind)) => Err(Failure::Answer(kind)),
                Err(kind) => Err(Failure::Connection(kind)),
            },
        }
    }
}

fn hyper_kind(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        "io: connection closed mid-answer".to_string()
    } else if e.is_closed() || e.is_canceled() {
        "io: connection closed".to_string()
    } else if e.is_parse() {
        "io: bad HTTP answer".to_string()
    } else {
        let mut kind = format!("io: {e}");
        kind.truncate(kind.char_indices().nth(ERROR_KIND_CHARS_MAX).map_or(kind.len(), |(i, _)| i));
        kind
    }
}

/// Uniform in [0, 1), from the top 53 bits of the next draw.
fn unit(rng: &mut SeededRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// What the workers of one phase share.
struct Shared {
    phase: Phase,
    requests: Requests,
    /// When the phase began (its warm-up first).
    started: Instant,
    measure_from: Instant,
    /// End of a timed window.
    measure_until: Option<Instant>,
    /// Requests left in a counted window (or keys left to fill).
    budget: AtomicI64,
    stop: Arc<AtomicBool>,
    recovery: Option<Arc<RecoveryMark>>,
}

impl Shared {
    /// Whether a worker may send another request (takes one from a counted budget once the
    /// window has begun).
    fn may_send(&self, now: Instant) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if self.phase.fill {
            return true; // ends when the keys run out
        }
        match self.phase.window {
            Window::Duration(_) => self.measure_until.is_some_and(|until| now < until),
            Window::Requests(_) => now < self.measure_from || self.budget.fetch_sub(1, Ordering::Relaxed) > 0,
            Window::UntilStopped => true,
        }
    }

    fn counts(&self, finished: Instant) -> bool {
        finished >= self.measure_from && self.measure_until.is_none_or(|until| finished <= until)
    }

    /// Whether a paced request due at `due` is in the window: counted by when it was due,
    /// whenever it was answered, so that a stall at the window's end is not left out.
    fn counts_due(&self, due: Instant) -> bool {
        due >= self.measure_from && self.measure_until.is_none_or(|until| due < until)
    }
}

/// Runs one phase to its end and returns what it measured. `stop` ends it early (failover
/// runs, Ctrl-C); `recovery` is told about successful writes.
pub(crate) async fn run_phase(
    phase: Phase,
    stop: Arc<AtomicBool>,
    recovery: Option<Arc<RecoveryMark>>,
) -> Result<PhaseResult> {
    let started = Instant::now();
    let measure_from = if phase.fill { started } else { started + phase.warmup };
    let (measure_until, budget) = match phase.window {
        _ if phase.fill => (None, phase.workload.keys as i64),
        Window::Duration(d) => (Some(measure_from + d), 0),
        Window::Requests(n) => (None, i64::try_from(n).unwrap_or(i64::MAX)),
        Window::UntilStopped => (None, 0),
    };
    let shared = Arc::new(Shared {
        requests: Requests::new(phase.api, phase.workload.value_bytes),
        phase,
        started,
        measure_from,
        measure_until,
        budget: AtomicI64::new(budget),
        stop,
        recovery,
    });
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..shared.phase.connections {
        workers.spawn(worker(Arc::clone(&shared), index));
    }
    let mut result = PhaseResult::default();
    let mut last_completion = measure_from;
    while let Some(joined) = workers.join_next().await {
        let (worker_result, worker_last) = joined.context("a load worker panicked")?;
        result.merge(&worker_result);
        last_completion = last_completion.max(worker_last);
    }
    result.window = match shared.measure_until {
        Some(until) => until - measure_from,
        None => last_completion.saturating_duration_since(measure_from),
    };
    Ok(result)
}

/// One worker: returns what it counted and when its last counted request completed.
async fn worker(shared: Arc<Shared>, index: usize) -> (PhaseResult, Instant) {
    let phase = &shared.phase;
    // A worker's key and read/write choices, seeded by its index so that runs draw the same.
    let mut rng = SeededRng::new(index as u64 ^ 0x5EED);
    let mut endpoint = index % phase.endpoints.len();
    let mut connection: Option<Link> = None;
    let mut result = PhaseResult::default();
    let mut last_counted = shared.measure_from;
    // With a rate, this worker's requests are due every `connections / rate` seconds, the
    // workers spread evenly over one interval.
    let pace = phase.rate.filter(|r| *r > 0.0).map(|rate| {
        let interval = Duration::from_secs_f64(phase.connections as f64 / rate);
        (interval, shared.started + interval.mul_f64(index as f64 / phase.connections as f64))
    });
    let mut sent: u32 = 0;
    loop {
        let due = pace.map(|(interval, first)| first + interval.saturating_mul(sent));
        // Whether this request is late (the one before was slow): decided before waiting, since
        // a timer never fires early and rounds up to the next millisecond.
        let mut late = false;
        if let Some(due) = due {
            if shared.measure_until.is_some_and(|until| due >= until) && !phase.fill {
                break; // every request due in the window was sent
            }
            late = Instant::now() > due;
            if !late {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let now = Instant::now();
        if !shared.may_send(due.unwrap_or(now)) {
            break;
        }
        if connection.is_none() {
            match Link::open(phase.api, &phase.endpoints[endpoint]).await {
                Ok(conn) => connection = Some(conn),
                Err(kind) => {
                    if shared.counts(Instant::now()) {
                        count_error(&mut result.errors, kind, 1);
                    } else {
                        result.errors_outside += 1;
                    }
                    endpoint = (endpoint + 1) % phase.endpoints.len();
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
            }
        }
        let Some(conn) = connection.as_mut() else { continue };
        let (read, key) = if phase.fill {
            let left = shared.budget.fetch_sub(1, Ordering::Relaxed);
            if left <= 0 {
                break;
            }
            (false, phase.workload.keys - left as u64)
        } else {
            (unit(&mut rng) < phase.workload.read_ratio, rng.next_u64() % phase.workload.keys.max(1))
        };
        let key = Requests::key(key);
        let request = if read { shared.requests.get(&key) } else { shared.requests.put(&key) };
        let sent_at = Instant::now();
        sent = sent.saturating_add(1);
        // A request sent late (the previous one was slow) counts from when it was due; one that
        // waited for its time, from when it went out.
        let started = match due {
            Some(due) if late => due,
            _ => sent_at,
        };
        let answer =
            tokio::time::timeout(phase.request_timeout, conn.exchange(&shared.requests, request)).await;
        let finished = Instant::now();
        let counted = match due {
            Some(due) => shared.counts_due(due),
            None => shared.counts(finished),
        };
        let failure = match answer {
            Ok(Ok(())) => {
                if counted {
                    let histogram = if read { &mut result.reads } else { &mut result.writes };
                    histogram.record_duration(finished - started);
                    last_counted = finished;
                    if let Some(second) = second_of(&mut result.seconds, shared.measure_from, finished) {
                        second.ok += 1;
                        let micros =
                            u64::try_from((finished - started).as_micros()).unwrap_or(u64::MAX).max(1);
                        second
                            .latency
                            .get_or_insert_with(|| {
                                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 1)
                                    .expect("valid bounds")
                            })
                            .saturating_record(micros);
                    }
                }
                if let (Some(mark), false) = (&shared.recovery, read) {
                    mark.success(started, finished);
                }
                None
            }
            Ok(Err(Failure::Answer(kind))) => Some(kind),
            Ok(Err(Failure::Connection(kind))) => {
                connection = None;
                Some(kind)
            }
            Err(_) => {
                // The answer may still come; only a new connection is sure not to get it.
                connection = None;
                Some("timeout".to_string())
            }
        };
        if let Some(kind) = failure {
            if counted {
                count_error(&mut result.errors, kind, 1);
                last_counted = finished;
                if let Some(second) = second_of(&mut result.seconds, shared.measure_from, finished) {
                    second.errors += 1;
                }
            } else {
                result.errors_outside += 1;
            }
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    (result, last_counted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"bench-00000042"), "YmVuY2gtMDAwMDAwNDI=");
    }

    #[test]
    fn requests_have_the_api_shape() {
        let raft = Requests::new(Api::Raft, 4);
        let (method, path, body) = raft.put("k");
        assert_eq!(
            (method, path.as_str(), &body[..]),
            (Method::PUT, "/v1/kv/k", &b"{\"value\":\"abcd\"}"[..])
        );
        assert_eq!(raft.get("k").1, "/v1/kv/k");
        let etcd = Requests::new(Api::EtcdJson, 3);
        let (method, path, body) = etcd.put("k");
        assert_eq!(
            (method, path.as_str(), &body[..]),
            (Method::POST, "/v3/kv/put", &b"{\"key\":\"aw==\",\"value\":\"YWJj\"}"[..])
        );
        assert_eq!(&etcd.get("k").2[..], b"{\"key\":\"aw==\"}");
    }

    #[test]
    fn error_kinds_name_the_code_or_message() {
        let raft = Requests::new(Api::Raft, 1);
        let body = br#"{"code":"no_leader","message":"no leader is known"}"#;
        assert_eq!(raft.error_kind(StatusCode::SERVICE_UNAVAILABLE, body), "503 no_leader");
        let etcd = Requests::new(Api::EtcdJson, 1);
        let body =
            br#"{"error":"etcdserver: leader changed","code":14,"message":"etcdserver: leader changed"}"#;
        assert_eq!(etcd.error_kind(StatusCode::SERVICE_UNAVAILABLE, body), "503 etcdserver: leader changed");
        assert_eq!(etcd.error_kind(StatusCode::BAD_GATEWAY, b"<html>"), "502 (no detail)");
    }

    #[test]
    fn grpc_requests_are_etcds_protobuf_messages_behind_a_length_prefix() {
        let etcd = Requests::new(Api::EtcdGrpc, 3);
        let (method, path, body) = etcd.put("k");
        // PutRequest: field 1 (key) "k", field 2 (value) "abc"; 8 bytes after the prefix.
        assert_eq!(
            (method, path.as_str(), &body[..]),
            (
                Method::POST,
                "/etcdserverpb.KV/Put",
                &[0, 0, 0, 0, 8, 0x0a, 1, b'k', 0x12, 3, b'a', b'b', b'c'][..]
            )
        );
        let (_, path, body) = etcd.get("k");
        assert_eq!(
            (path.as_str(), &body[..]),
            ("/etcdserverpb.KV/Range", &[0, 0, 0, 0, 3, 0x0a, 1, b'k'][..])
        );
        // A value of 300 bytes: its length is the two-byte varint 0xac 0x02.
        let long = grpc_message(&[(2, &[7; 300])]);
        assert_eq!(&long[..8], &[0, 0, 0, 1, 47, 0x12, 0xac, 0x02]);
        assert_eq!(long.len(), 5 + 3 + 300);
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut errors = BTreeMap::new();
        for i in 0..100 {
            count_error(&mut errors, format!("kind {i}"), 1);
        }
        assert_eq!(errors.len(), ERROR_KINDS_MAX + 1);
        assert_eq!(errors["other"], 100 - ERROR_KINDS_MAX as u64);
    }
}
