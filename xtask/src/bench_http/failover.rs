//! `bench-http --failover --kills N`: under a write load, SIGKILL the leader and measure the
//! time until writes succeed again, restart the killed node, let it catch up, repeat.
//!
//! "Writes succeed again" is the first successful write *sent after the kill*, on any node: a
//! write already under way when the leader died says nothing about the new leader. Besides the
//! load's workers (whose requests may be stuck on the dead leader until they time out), one
//! prober per node sends a write with a short time limit in a loop, so a fresh write starts at
//! least every [`PROBE_TIMEOUT`] on every node: the measurement's resolution.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::StatusCode;
use raft_client::api::RoleView;
use serde::Serialize;

use super::load::{self, Api, Connection, Phase, PhaseResult, RecoveryMark, Requests};
use crate::cluster::{self, LocalCluster};

/// Time limit of one probe write.
const PROBE_TIMEOUT: Duration = Duration::from_millis(50);
/// Longest wait for writes to succeed again after a kill.
const RECOVERY_WITHIN: Duration = Duration::from_secs(30);
/// Longest wait for a restarted node to catch up with the leader.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(60);
/// Steady load before the first kill and after each catch-up.
const SETTLE: Duration = Duration::from_secs(2);

/// One kill.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Kill {
    /// The leader killed.
    pub node: u64,
    /// From SIGKILL to the first successful write sent after it.
    pub recovery_ms: f64,
    /// The leader afterwards, when one was seen.
    pub new_leader: Option<u64>,
    /// From the restart of the killed node until it had applied the leader's commit index.
    pub catch_up_ms: f64,
}

/// The failover run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailoverReport {
    pub kills: Vec<Kill>,
    pub recovery_p50_ms: f64,
    pub recovery_max_ms: f64,
    pub recovery_min_ms: f64,
    /// Resolution of the measurement: the probes' time limit.
    pub probe_timeout_ms: f64,
    /// Successful writes of the load over the whole run.
    pub writes_ok: u64,
    /// Failed requests of the load by kind, over the whole run.
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// Runs `kills` kills against `cluster` under the write load `phase` (whose window must be
/// [`load::Window::UntilStopped`]).
pub(crate) async fn run(cluster: &LocalCluster, phase: Phase, kills: usize) -> Result<FailoverReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let mark = Arc::new(RecoveryMark::new());
    let mut tasks = tokio::task::JoinSet::new();
    let load = tokio::spawn(load::run_phase(phase.clone(), Arc::clone(&stop), Some(Arc::clone(&mark))));
    for (index, endpoint) in phase.endpoints.iter().enumerate() {
        tasks.spawn(probe(endpoint.clone(), index, Arc::clone(&stop), Arc::clone(&mark)));
    }
    let outcome = kill_loop(cluster, &mark, kills).await;
    stop.store(true, Ordering::SeqCst);
    while tasks.join_next().await.is_some() {}
    let load_result: PhaseResult = load.await.context("the load panicked")??;
    let kills = outcome?;
    let mut recoveries: Vec<f64> = kills.iter().map(|k| k.recovery_ms).collect();
    recoveries.sort_by(f64::total_cmp);
    Ok(FailoverReport {
        recovery_p50_ms: super::report::median(&recoveries),
        recovery_max_ms: recoveries.last().copied().unwrap_or(0.0),
        recovery_min_ms: recoveries.first().copied().unwrap_or(0.0),
        kills,
        probe_timeout_ms: PROBE_TIMEOUT.as_secs_f64() * 1e3,
        writes_ok: load_result.writes.count(),
        errors: load_result.errors,
    })
}

async fn kill_loop(cluster: &LocalCluster, mark: &RecoveryMark, kills: usize) -> Result<Vec<Kill>> {
    let status = cluster::status_client(&cluster.endpoints())?;
    tokio::time::sleep(SETTLE).await;
    let mut done = Vec::new();
    for round in 1..=kills {
        let leader = wait_leader(&status, None).await.context("no leader to kill")?;
        mark.arm();
        let killed_at = cluster.kill(leader)?;
        let recovered_at = loop {
            if let Some(at) = mark.first_ok() {
                break at;
            }
            if killed_at.elapsed() > RECOVERY_WITHIN {
                bail!("writes did not succeed within {RECOVERY_WITHIN:?} after killing node {leader}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let recovery = recovered_at.saturating_duration_since(killed_at);
        let new_leader = wait_leader(&status, Some(leader)).await.ok();
        let restarted_at = Instant::now();
        cluster.start_node(leader)?;
        catch_up(cluster, leader).await?;
        let catch_up = restarted_at.elapsed();
        println!(
            "  kill {round}/{kills}: node {leader} (leader) SIGKILLed; writes succeed again after {:.0} ms; new leader {}; restarted, caught up in {:.1} s",
            recovery.as_secs_f64() * 1e3,
            new_leader.map_or("?".to_string(), |l| l.to_string()),
            catch_up.as_secs_f64()
        );
        done.push(Kill {
            node: leader,
            recovery_ms: recovery.as_secs_f64() * 1e3,
            new_leader,
            catch_up_ms: catch_up.as_secs_f64() * 1e3,
        });
        tokio::time::sleep(SETTLE).await;
    }
    Ok(done)
}

/// The leader (other than `not`), waiting for one up to [`RECOVERY_WITHIN`].
async fn wait_leader(client: &raft_client::Client, not: Option<u64>) -> Result<u64> {
    let deadline = Instant::now() + RECOVERY_WITHIN;
    loop {
        if let Some(leader) = cluster::find_leader(client).await {
            if Some(leader.id) != not {
                return Ok(leader.id);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader after {RECOVERY_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until node `id` follows a leader and has applied the leader's commit index as it was
/// when the wait began.
async fn catch_up(cluster: &LocalCluster, id: u64) -> Result<()> {
    let endpoints = cluster.endpoints();
    let all = cluster::status_client(&endpoints)?;
    let node = cluster::status_client(&endpoints[id as usize - 1..id as usize])?;
    let deadline = Instant::now() + CATCH_UP_WITHIN;
    let mut target = None;
    loop {
        if target.is_none() {
            target = cluster::find_leader(&all).await.map(|leader| leader.commit_index);
        }
        if let (Some(target), Ok(s)) = (target, node.status().await) {
            if s.role == RoleView::Follower && s.leader.is_some() && s.applied_index >= target {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("node {id} did not catch up within {CATCH_UP_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `failover-probe-<index>` on `endpoint` in a loop, each with [`PROBE_TIMEOUT`].
async fn probe(endpoint: String, index: usize, stop: Arc<AtomicBool>, mark: Arc<RecoveryMark>) {
    let requests = Requests::new(Api::Raft, 16);
    let key = format!("failover-probe-{index}");
    let mut connection: Option<Connection> = None;
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            match tokio::time::timeout(PROBE_TIMEOUT, Connection::open(&endpoint)).await {
                Ok(Ok(conn)) => connection = Some(conn),
                _ => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        let Some(conn) = connection.as_mut() else { continue };
        let (method, path, body) = requests.put(&key);
        let started = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, conn.send(method, &path, body)).await {
            Ok(Ok((StatusCode::OK, _))) => {
                mark.success(started, Instant::now());
                // Steady state: no need to probe faster than the load writes.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
            Ok(Err(_)) | Err(_) => connection = None,
        }
    }
}
