//! The floor of the write benchmark: the thread hand-offs one replicated proposal needs, on the
//! same runtimes, with no Raft in between.
//!
//! A proposer on the client runtime sends a request (with a `oneshot` for the answer) to a
//! "leader" task on the server runtime; the leader sends each batch of requests to two
//! "follower" tasks, and answers the batch once one of them has acknowledged it (two of three,
//! counting itself); at most [`BATCHES_IN_FLIGHT`] batches are out at once, as raft-core keeps
//! 8 appends in flight per follower. Bounded tokio channels throughout, as in raft-core's
//! driver and its in-process transport. No log, no state machine, no protocol: a library whose
//! proposals take these hand-offs (a leader task and a task per follower, as raft-core and
//! openraft both have) cannot go below this on these threads.

use std::collections::VecDeque;

use tokio::sync::{mpsc, oneshot};

use crate::{BenchReport, Runtimes};

/// Batches sent to the followers and not yet acknowledged, at most.
const BATCHES_IN_FLIGHT: usize = 8;
/// Requests taken into one batch, at most (raft-core's driver takes as many per turn).
const BATCH_MAX: usize = 1_024;
/// The request queue's bound (raft-core's request queue has the same).
const REQUEST_QUEUE: usize = 4_096;

/// Runs `total` empty proposals from `proposers` tasks on the client runtime through the
/// hand-off chain above on the server runtime; each proposal timed as in
/// [`core_cluster::run`](crate::core_cluster::run).
///
/// # Errors
///
/// Fails if a task of the chain ends early.
pub fn run(rt: &Runtimes, proposers: usize, total: usize) -> anyhow::Result<BenchReport> {
    let (requests, inbox) = mpsc::channel::<oneshot::Sender<()>>(REQUEST_QUEUE);
    // While the leader waits to send to a follower (whose queue holds BATCHES_IN_FLIGHT), each
    // follower can acknowledge at most that many and one more: the leader reads every ack
    // before it sends, so this bound never blocks a follower.
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
    rt.server.block_on(leader)?;
    report
}

/// The leader task: batches requests, sends each batch's number to the followers, and answers
/// a batch at its first acknowledgement.
async fn lead(
    mut inbox: mpsc::Receiver<oneshot::Sender<()>>,
    mut acks: mpsc::Receiver<u64>,
    followers: Vec<mpsc::Sender<u64>>,
) {
    let mut waiting: VecDeque<(u64, Vec<oneshot::Sender<()>>)> = VecDeque::new();
    let mut next = 0u64;
    let mut buf = Vec::with_capacity(BATCH_MAX);
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            biased;
            Some(acked) = acks.recv() => {
                while waiting.front().is_some_and(|(batch, _)| *batch <= acked) {
                    if let Some((_, replies)) = waiting.pop_front() {
                        for reply in replies {
                            // A proposer that is gone wants no answer.
                            let _ = reply.send(());
                        }
                    }
                }
            }
            n = inbox.recv_many(&mut buf, BATCH_MAX), if open && waiting.len() < BATCHES_IN_FLIGHT => {
                if n == 0 {
                    open = false;
                    continue;
                }
                next += 1;
                waiting.push_back((next, std::mem::take(&mut buf)));
                buf.reserve(BATCH_MAX);
                for f in &followers {
                    // A follower's queue holds BATCHES_IN_FLIGHT: this never waits long.
                    let _ = f.send(next).await;
                }
            }
        }
    }
}
