//! The workload: concurrent clients, each a `raft_client::Client` session, doing put, get
//! (linearizable) and compare-and-swap on a few keys, every operation recorded with its
//! call and return times and what the client saw.
//!
//! Every second client is pinned to one node and reads through it with a single short attempt
//! (see [`pinned_read_options`]); the others follow the leader with retries.
//!
//! Client errors map to outcomes conservatively: a write answered `cas_failed` failed its
//! comparison (applied as a read); refused before proposing (`bad_request`, `too_large`) is
//! `Failed`; anything else (timeouts, transport errors, retries exhausted, `stale_sequence`,
//! ...) may or may not have been applied: `Unknown`. Reads that fail are dropped.

use raft_core::SeededRng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_client::api::{CasRequest, Consistency, ErrorCode};
use raft_client::{Client, ClientError, ClientOptions};
use tokio::task::JoinSet;

use super::history::{Op, Outcome, Recorder};

pub struct WorkloadOptions {
    pub clients: u64,
    pub keys: u64,
    pub seed: u64,
    /// Every client's endpoints (all nodes).
    pub endpoints: Vec<String>,
}

pub fn key_name(k: u64) -> String {
    format!("k{k}")
}

/// The running workload; `stop` ends it after the operations in flight.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
    pub ops: Arc<AtomicU64>,
}

fn client_options() -> ClientOptions {
    crate::cluster::with_credentials(ClientOptions {
        request_timeout: Duration::from_millis(1500),
        max_retries: 3,
        consistency: Consistency::Linearizable,
        ..ClientOptions::default()
    })
}

/// The reads of a pinned client: one short attempt, no retry. A read is invoked when its
/// attempt starts, so a read sent to a paused or cut-off node is a fresh invocation every
/// half second, and the one waiting when the node comes back must see every write that
/// completed meanwhile (a deposed leader serving it from its own state would not).
fn pinned_read_options() -> ClientOptions {
    ClientOptions { request_timeout: Duration::from_millis(500), max_retries: 0, ..client_options() }
}

impl Workload {
    pub fn start(o: &WorkloadOptions, recorder: Recorder) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let n = o.endpoints.len();
        for c in 0..o.clients {
            // Every second client is pinned to one node (the pinned nodes go round, so most are
            // followers): its reads are served through that node (ReadIndex from a follower),
            // its writes forwarded to the leader. The others follow the leader.
            let pinned = c % 2 == 1 && n > 1;
            let endpoints =
                if pinned { vec![o.endpoints[(c as usize / 2) % n].clone()] } else { o.endpoints.clone() };
            let client = Client::new(endpoints.clone(), client_options())?;
            let reader = if pinned { Client::new(endpoints, pinned_read_options())? } else { client.clone() };
            let rng = SeededRng::new(o.seed ^ (c + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            tasks.spawn(run_client(
                c + 1,
                Sessions { client, reader },
                rng,
                o.keys,
                recorder.clone(),
                Arc::clone(&stop),
                Arc::clone(&ops),
            ));
        }
        Ok(Self { stop, tasks, ops })
    }

    /// Stops every client and waits for their operations in flight.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One client's connections: `client` for its writes (and its reads when it follows the
/// leader), `reader` for a pinned client's reads.
struct Sessions {
    client: Client,
    reader: Client,
}

fn write_outcome(e: &ClientError) -> Outcome {
    match e {
        ClientError::CasFailed { .. } => Outcome::CasFailed,
        ClientError::Api { error, .. }
            if matches!(error.code, ErrorCode::BadRequest | ErrorCode::TooLarge) =>
        {
            Outcome::Failed
        }
        _ => Outcome::Unknown,
    }
}

async fn run_client(
    id: u64,
    Sessions { client, reader }: Sessions,
    mut rng: SeededRng,
    keys: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) {
    let mut seq = 0u64;
    // The last value this client saw per key: what its swaps expect.
    let mut seen: Vec<Option<String>> = vec![None; keys as usize];
    while !stop.load(Ordering::Relaxed) {
        let k = rng.range(0, keys);
        let key = key_name(k);
        let call = recorder.now_ns();
        match rng.range(0, 10) {
            0..=3 => {
                // A failed read tells nothing: it is dropped.
                if let Ok(kv) = reader.get(&key, Some(Consistency::Linearizable)).await {
                    let value = kv.map(|kv| kv.value);
                    seen[k as usize] = value.clone();
                    recorder.record(id, &key, Op::Get, call, Outcome::Ok(value));
                }
            }
            4..=6 => {
                seq += 1;
                let value = format!("c{id}-{seq}");
                let outcome = match client.put(&key, &value).await {
                    Ok(_) => {
                        seen[k as usize] = Some(value.clone());
                        Outcome::Ok(None)
                    }
                    Err(e) => write_outcome(&e),
                };
                recorder.record(id, &key, Op::Put(value), call, outcome);
            }
            _ => {
                seq += 1;
                let value = format!("c{id}-{seq}");
                let expected = seen[k as usize].clone();
                let request = CasRequest {
                    expected_version: None,
                    expected_value: Some(expected.clone()),
                    value: Some(value.clone()),
                };
                let outcome = match client.cas(&key, &request).await {
                    Ok(_) => {
                        seen[k as usize] = Some(value.clone());
                        Outcome::Ok(None)
                    }
                    Err(ClientError::CasFailed { current }) => {
                        seen[k as usize] = current.map(|kv| kv.value);
                        Outcome::CasFailed
                    }
                    Err(e) => write_outcome(&e),
                };
                recorder.record(id, &key, Op::Cas { expected, new: Some(value) }, call, outcome);
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
        // An unknown write stays open until the end of the history (it may take effect at any
        // time), and every open write multiplies the checker's work: a client whose write
        // timed out (the cluster is likely unavailable) waits before its next operation.
        let unknown = matches!(recorder.last_outcome(id), Some(Outcome::Unknown));
        let pause_ms = if unknown { 1000 + rng.range(0, 1000) } else { rng.range(0, 20) };
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
}
