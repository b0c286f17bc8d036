//! The sending side shared by the transports: coalescing queued messages into one write, and
//! reconnection backoff with jitter.

use std::time::Duration;

use raft_core::wire::{encode_frame, WireError, WireMessage};
use raft_core::{Message, NodeId, SeededRng};
use tokio::sync::mpsc;
use tracing::warn;

use crate::stats::Counters;

/// Appends `message`'s frame to `buf`; returns 1, or 0 when the message was dropped (over
/// `max_frame_bytes`, counted in `dropped_oversized`).
pub fn encode(
    counters: &Counters,
    max_frame_bytes: u32,
    peer: NodeId,
    message: Message,
    buf: &mut Vec<u8>,
) -> u64 {
    match encode_frame(&WireMessage::Raft(message), max_frame_bytes, buf) {
        Ok(()) => 1,
        Err(error @ WireError::FrameTooLarge { .. }) => {
            Counters::add(&counters.dropped_oversized, 1);
            warn!(peer, %error, "message over the frame limit dropped");
            0
        }
        Err(error) => {
            warn!(peer, %error, "message could not be encoded; dropped");
            0
        }
    }
}

/// How [`fill_batch`] fills one write.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// The hard limit on a frame's body; larger messages are dropped.
    pub max_frame_bytes: u32,
    /// Stop adding messages once the batch holds this many bytes.
    pub batch_bytes_max: usize,
    /// Whether to add queued messages after the first one at all.
    pub coalesce: bool,
}

/// Encodes `first`, then (when coalescing) more queued messages while `buf` holds fewer than
/// `batch_bytes_max` bytes. Returns how many messages `buf` holds. `buf` is cleared first, and
/// its memory given back when a large message grew it past four batches.
pub fn fill_batch(
    counters: &Counters,
    batching: Batching,
    peer: NodeId,
    first: Message,
    queue: &mut mpsc::Receiver<Message>,
    buf: &mut Vec<u8>,
) -> u64 {
    let Batching { max_frame_bytes, batch_bytes_max, coalesce } = batching;
    buf.clear();
    if buf.capacity() > 4 * batch_bytes_max {
        buf.shrink_to(batch_bytes_max);
    }
    let mut batched = encode(counters, max_frame_bytes, peer, first, buf);
    while coalesce && buf.len() < batch_bytes_max {
        match queue.try_recv() {
            Ok(message) => batched += encode(counters, max_frame_bytes, peer, message, buf),
            Err(_) => break,
        }
    }
    batched
}

/// Capped exponential backoff with jitter between reconnection attempts to one peer.
#[derive(Debug)]
pub struct Backoff {
    rng: SeededRng,
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Backoff from `min` doubling up to `max`, jittered by a seed that differs between
    /// nodes, peers and runs.
    pub fn new(node: NodeId, peer: NodeId, min: Duration, max: Duration) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = nanos ^ node.rotate_left(32) ^ peer.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self { rng: SeededRng::new(seed), min, max, next: min }
    }

    /// The delay before the next attempt after a failure: the current step, jittered to
    /// between half and all of it; the step doubles, up to the maximum.
    pub fn failed(&mut self) -> Duration {
        let jittered = self.next.mul_f64(0.5 + self.rng.range(0, 1_000) as f64 / 2_000.0);
        self.next = (self.next * 2).min(self.max);
        jittered
    }

    /// Starts over from the minimum (after a successful connection).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The minimum delay (waited after a connection breaks, so that a peer that accepts and
    /// closes at once is not reconnected to in a tight loop).
    pub fn min(&self) -> Duration {
        self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(1, 2, Duration::from_millis(10), Duration::from_millis(40));
        let delays: Vec<Duration> = (0..5).map(|_| backoff.failed()).collect();
        for (delay, step) in delays.iter().zip([10, 20, 40, 40, 40]) {
            let step = Duration::from_millis(step);
            assert!(*delay >= step / 2 && *delay <= step, "{delay:?} for a step of {step:?}");
        }
        backoff.reset();
        assert!(backoff.failed() <= Duration::from_millis(10));
    }
}
