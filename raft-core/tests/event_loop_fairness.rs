//! The driver's event loop under a stream of messages that never ends: the timer still fires
//! and client requests are still taken. Past its timer's deadline the loop once took only
//! messages and completions; only the runtime's cooperative budget (which makes a channel
//! answer "not ready" now and then) let the timer fire. It now fires after at most
//! `OVERDUE_WAKES_MAX` wakes past the deadline, whatever the runtime does.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::counter::CounterFsm;
use raft_core::{
    Config, Membership, Message, Payload, RaftNode, Role, SendError, Transport, TransportClosed,
};
use raft_storage_mem::MemStorage;

/// A transport on which a message is always waiting: a task feeds its inbox with stale vote
/// answers from a stranger (which the protocol drops) as fast as the inbox takes them, as a
/// peer's connection task of a real transport would.
struct Flood {
    inbox: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Message>>,
}

impl Flood {
    fn start() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1_024);
        tokio::spawn(async move {
            let stale = Message {
                from: 99,
                to: 1,
                term: 0,
                payload: Payload::RequestVoteResponse {
                    pre_vote: false,
                    granted: false,
                    vouches: false,
                    witnesses: None,
                },
            };
            while tx.send(stale.clone()).await.is_ok() {}
        });
        Self { inbox: tokio::sync::Mutex::new(rx) }
    }
}

#[async_trait]
impl Transport for Flood {
    fn send(&self, _message: Message) -> Result<(), SendError> {
        Ok(())
    }

    async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed> {
        match self.inbox.lock().await.recv_many(buf, max).await {
            0 => Err(TransportClosed),
            n => Ok(n),
        }
    }

    async fn shutdown(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_messages_starves_neither_the_timer_nor_the_clients() {
    let node = RaftNode::start(
        1,
        Config::default(),
        Membership::with_voters([1]),
        Arc::new(MemStorage::default()),
        Arc::new(Flood::start()),
        Box::new(CounterFsm::default()),
        7,
    )
    .await
    .expect("node starts");
    // A single voter elects itself at its first election timeout: only the timer can do that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.status().protocol.role != Role::Leader {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a flood of messages kept the only voter from electing itself for 10 s: {:?}",
            node.status().protocol
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied = tokio::time::timeout(Duration::from_secs(10), node.propose(Bytes::from_static(b"x")))
        .await
        .unwrap_or_else(|_| {
            panic!("no answer to a proposal within 10 s under the flood: {:?}", node.status())
        })
        .expect("applied");
    assert!(applied.log_id.index > 0);
    node.shutdown().await.expect("shutdown");
}
