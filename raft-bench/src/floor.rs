//! The floor of the write benchmark: the thread hand-offs one replicated proposal takes, on
//! the same runtimes, with no Raft in between.
//!
//! A proposer on the client runtime sends a request (with a `oneshot` for the answer) to a
//! "leader" task on the server runtime; the leader sends each batch of requests to two
//! "follower" tasks (bounded inboxes), and answers the batch once one of them has acknowledged
//! it (two of three, counting itself). At most [`BATCHES_IN_FLIGHT`] batches are out that neither follower has
//! acknowledged. No log, no state machine, no protocol.
//!
//! At one proposer each batch is one request and the chain is exactly the four hand-offs
//! raft-core's proposal path takes (openraft's takes more: a task per follower's replication
//! and one for its state machine): a library whose proposals go from the client runtime to a
//! leader task and through follower tasks cannot beat it by much on these threads (a hand-off
//! costs more when it finds the receiving worker parked, which depends on what else runs). With
//! many proposers it is a reference, not a bound: how many requests share a batch depends on
//! each system's batching.

use std::collections::VecDeque;

use tokio::sync::{mpsc, oneshot};

use crate::{BenchReport, Runtimes};

/// Batches sent to the followers that neither has acknowledged, at most (raft-core keeps up
/// to 8 appends in flight per follower).
const BATCHES_IN_FLIGHT: usize = 8;
/// Requests taken into one batch, at most, and the request queue's bound (raft-core's driver
/// takes up to its request queue's bound, 4,096, per turn).
const BATCH_MAX: usize = 4_096;

/// A proposer's request: where its answer goes.
type Ask = oneshot::Sender<()>;

/// Runs `total` empty proposals from `proposers` tasks on the client runtime through the
/// hand-off chain above on the server runtime, timed as in
/// [`core_cluster::run`](crate::core_cluster::run).
///
/// # Errors
///
/// Fails if a task of the chain ends early, or the leader answered another number of
/// requests than `total`.
pub fn run(rt: &Runtimes, proposers: usize, total: usize) -> anyhow::Result<BenchReport> {
    let (requests, inbox) = mpsc::channel::<Ask>(BATCH_MAX);
    // Each follower has at most BATCHES_IN_FLIGHT + 1 batches unacknowledged (queued or in
    // hand), and the leader reads every ack before it sends more: twice that never blocks a
    // follower.
    let (acks, acks_in) = mpsc::channel::<u64>(4 * BATCHES_IN_FLIGHT);
    let mut followers = Vec::new();
    for _ in 0..2 {
        let (tx, mut rx) = mpsc::channel::<u64>(BATCHES_IN_FLIGHT);
        let acks = acks.clone();
        rt.server.spawn(async move {
            while let Some(batch) = rx.recv().await {
                if acks.send(batch).await.is_err() {
                    break;
                }
            }
        });
        followers.push(tx);
    }
    drop(acks);
    let leader = rt.server.spawn(lead(inbox, acks_in, followers));
    let report =
        rt.client.block_on(crate::run_concurrently(proposers, total, requests, |requests| async move {
            let (reply, answer) = oneshot::channel();
            requests.send(reply).await.map_err(|_| anyhow::anyhow!("the leader task ended"))?;
            answer.await.map_err(|_| anyhow::anyhow!("the leader task dropped a request"))?;
            Ok(requests)
        }));
    // The proposers' senders are gone with their tasks: the leader ends once its queue is empty.
    let answered = rt.server.block_on(leader)??;
    let report = report?;
    anyhow::ensure!(answered == total, "the leader answered {answered} of {total} requests");
    Ok(report)
}

/// The leader task: batches requests, sends each batch's number to the followers, and answers
/// a batch at its first acknowledgement. Returns the number of requests it answered.
async fn lead(
    mut inbox: mpsc::Receiver<Ask>,
    mut acks: mpsc::Receiver<u64>,
    followers: Vec<mpsc::Sender<u64>>,
) -> anyhow::Result<usize> {
    let mut waiting: VecDeque<(u64, Vec<Ask>)> = VecDeque::new();
    // Emptied batches, reused (at most BATCHES_IN_FLIGHT + 1 ever exist).
    let mut spare: Vec<Vec<Ask>> = Vec::new();
    let (mut next, mut answered) = (0u64, 0usize);
    let mut buf = Vec::with_capacity(BATCH_MAX);
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            biased;
            Some(acked) = acks.recv() => {
                while waiting.front().is_some_and(|(batch, _)| *batch <= acked) {
                    if let Some((_, mut replies)) = waiting.pop_front() {
                        answered += replies.len();
                        for reply in replies.drain(..) {
                            // A proposer that is gone wants no answer.
                            let _ = reply.send(());
                        }
                        spare.push(replies);
                    }
                }
            }
            n = inbox.recv_many(&mut buf, BATCH_MAX), if open && waiting.len() < BATCHES_IN_FLIGHT => {
                if n == 0 {
                    open = false;
                    continue;
                }
                next += 1;
                let fresh = spare.pop().unwrap_or_else(|| Vec::with_capacity(BATCH_MAX));
                waiting.push_back((next, std::mem::replace(&mut buf, fresh)));
                for f in &followers {
                    // A slow follower's inbox may be full of batches the other one has
                    // acknowledged: wait for room (it drains, see the bound of `acks`), as a
                    // lossless transport would.
                    f.send(next).await.map_err(|_| anyhow::anyhow!("a follower task ended"))?;
                }
            }
        }
    }
    Ok(answered)
}
