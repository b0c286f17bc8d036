//! The wire format shared by network transports.
//!
//! A frame is a `u32` big-endian length prefix followed by that many body bytes; the body is
//! the postcard encoding of one [`WireMessage`]. A connection starts with a handshake: the
//! connecting side sends [`WireMessage::Hello`], the accepting side answers
//! [`WireMessage::HelloAck`] or [`WireMessage::Refused`] (and closes). After that
//! [`WireMessage::Raft`] frames flow from the connecting side to the accepting side; a
//! transport may also send [`WireMessage::KeepAlive`] that way, which the acceptor answers with
//! [`WireMessage::KeepAliveAck`] (the only frames from acceptor to connector after the
//! handshake), so that both ends detect a connection whose other end stopped reading.
//!
//! Architecture Invariant: a frame's declared length is checked against the limit before any
//! memory is reserved for its body, so a peer cannot make the receiver allocate more than
//! `max_frame_bytes` per connection.

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::types::NodeId;

/// The wire protocol version this build speaks (2: keep-alive frames; 3: a vote's answer says
/// whether it vouches for the candidate's log; 4: and which voters witness what a recovering
/// voter lost).
pub const WIRE_VERSION: u16 = 4;

/// The default hard maximum of a frame's body, in bytes (16 MiB). Snapshot chunks (512 KiB by
/// default) and large AppendEntries batches fit well under it.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;

/// The limit on a handshake frame's body, in bytes: before a peer is known, a connection may
/// make the receiver buffer only this much.
pub const HANDSHAKE_MAX_FRAME_BYTES: u32 = 4 * 1024;

/// The size of a frame's length prefix, in bytes.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The most bytes the decoder reserves ahead of a frame's arrival; larger bodies grow the
/// buffer as their bytes actually arrive.
const RESERVE_AHEAD_MAX_BYTES: usize = 64 * 1024;

/// One frame's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireMessage {
    /// The first frame of a connection, from the connecting side.
    Hello {
        /// The sender's wire protocol version.
        version: u16,
        /// The cluster the sender belongs to.
        cluster_id: String,
        /// The sender's node id.
        node_id: NodeId,
    },
    /// The acceptor's answer to an accepted [`WireMessage::Hello`].
    HelloAck {
        /// The acceptor's wire protocol version.
        version: u16,
        /// The acceptor's node id.
        node_id: NodeId,
    },
    /// The acceptor's answer to a refused [`WireMessage::Hello`]; the acceptor then closes.
    Refused {
        /// Why the connection was refused.
        reason: RefusalReason,
    },
    /// A Raft message.
    Raft(Message),
    /// From the connecting side, sent periodically: "are you still reading?".
    KeepAlive {
        /// A number the answer echoes.
        seq: u64,
    },
    /// The acceptor's answer to a [`WireMessage::KeepAlive`].
    KeepAliveAck {
        /// The `seq` of the keep-alive answered.
        seq: u64,
    },
}

/// Why an acceptor refused a handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RefusalReason {
    /// The connecting node belongs to another cluster.
    #[error("wrong cluster id {got:?} (expected {expected:?})")]
    WrongCluster {
        /// The acceptor's cluster id.
        expected: String,
        /// The cluster id the connecting node sent.
        got: String,
    },
    /// The connecting node is not one of the acceptor's peers.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// The acceptor does not speak the connecting node's wire version.
    #[error("unsupported wire version {got} (supported: {supported})")]
    UnsupportedVersion {
        /// The version the acceptor speaks.
        supported: u16,
        /// The version the connecting node sent.
        got: u16,
    },
}

/// A frame that cannot be encoded or decoded. Every decoding error closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The declared (or, when encoding, the actual) body length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The body length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The length prefix is 0; no message has an empty encoding.
    #[error("frame with a length of 0")]
    EmptyFrame,
    /// The body is not the encoding of a [`WireMessage`].
    #[error("undecodable frame body of {len} bytes: {reason}")]
    Undecodable {
        /// The body length.
        len: u32,
        /// What the decoder reported.
        reason: String,
    },
    /// The body holds a message followed by bytes the declared length does not explain.
    #[error("frame body of {len} bytes has {trailing} trailing bytes after the message")]
    TrailingBytes {
        /// The body length.
        len: u32,
        /// The bytes left after the message.
        trailing: usize,
    },
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Appends the frame of `message` (length prefix and body) to `out`.
///
/// On error `out` is left as it was.
pub fn encode_frame(message: &WireMessage, max_frame_bytes: u32, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    if let Err(e) = postcard::to_io(message, &mut *out) {
        out.truncate(start);
        return Err(WireError::Encode(e.to_string()));
    }
    let len = out.len() - start - LENGTH_PREFIX_BYTES;
    let Ok(len32) = u32::try_from(len) else {
        out.truncate(start);
        return Err(WireError::FrameTooLarge { len: len as u64, max: max_frame_bytes });
    };
    if len32 > max_frame_bytes {
        out.truncate(start);
        return Err(WireError::FrameTooLarge { len: len as u64, max: max_frame_bytes });
    }
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Reads frames incrementally from a byte buffer that a connection fills.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame_bytes: u32,
}

impl FrameDecoder {
    /// A decoder that rejects bodies longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> Self {
        Self { max_frame_bytes }
    }

    /// The limit on a frame's body, in bytes.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Takes one complete frame off the front of `buf` and decodes it.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole frame yet (more bytes are needed);
    /// in that case at most a bounded amount of memory is reserved in `buf`, and only after
    /// the declared length passed the checks. Any error means the stream is unusable.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<WireMessage>, WireError> {
        let Some(prefix) = buf.get(..LENGTH_PREFIX_BYTES) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; LENGTH_PREFIX_BYTES];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes);
        if len == 0 {
            return Err(WireError::EmptyFrame);
        }
        if len > self.max_frame_bytes {
            return Err(WireError::FrameTooLarge { len: u64::from(len), max: self.max_frame_bytes });
        }
        let frame_bytes = LENGTH_PREFIX_BYTES + len as usize;
        if buf.len() < frame_bytes {
            let missing = frame_bytes - buf.len();
            buf.reserve(missing.min(RESERVE_AHEAD_MAX_BYTES));
            return Ok(None);
        }
        let body = &buf[LENGTH_PREFIX_BYTES..frame_bytes];
        let decoded = postcard::take_from_bytes::<WireMessage>(body);
        let result = match decoded {
            Ok((message, [])) => Ok(Some(message)),
            Ok((_, rest)) => Err(WireError::TrailingBytes { len, trailing: rest.len() }),
            Err(e) => Err(WireError::Undecodable { len, reason: e.to_string() }),
        };
        buf.advance(frame_bytes);
        result
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes};
    use proptest::prelude::*;

    use super::*;
    use crate::message::Payload;
    use crate::types::{Entry, EntryPayload, LogId};

    fn append(entries: usize, bytes_each: usize) -> WireMessage {
        let entries = (1..=entries as u64)
            .map(|i| Entry {
                term: 1,
                index: i,
                payload: EntryPayload::Command(Bytes::from(vec![7; bytes_each])),
            })
            .collect();
        WireMessage::Raft(Message {
            from: 1,
            to: 2,
            term: 1,
            payload: Payload::AppendEntries {
                prev_log_id: LogId::new(0, 0),
                entries,
                leader_commit: 0,
                read_seq: 0,
            },
        })
    }

    fn frame(message: &WireMessage) -> BytesMut {
        let mut out = Vec::new();
        encode_frame(message, DEFAULT_MAX_FRAME_BYTES, &mut out).expect("encode");
        BytesMut::from(&out[..])
    }

    #[test]
    fn round_trip_across_partial_reads() {
        let message = append(3, 100);
        let whole = frame(&message);
        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert_eq!(decoder.decode(&mut buf), Ok(None), "complete after {i} bytes");
            buf.put_u8(*byte);
        }
        assert_eq!(decoder.decode(&mut buf), Ok(Some(message)));
        assert!(buf.is_empty());
    }

    #[test]
    fn huge_length_is_rejected_before_allocating() {
        let decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let capacity = buf.capacity();
        assert_eq!(
            decoder.decode(&mut buf),
            Err(WireError::FrameTooLarge { len: u64::from(u32::MAX), max: 1024 })
        );
        assert_eq!(buf.capacity(), capacity, "nothing reserved for the body");
    }

    #[test]
    fn pending_large_frame_reserves_a_bounded_amount() {
        let decoder = FrameDecoder::new(u32::MAX);
        let mut buf = BytesMut::from(&(u32::MAX - 1).to_be_bytes()[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.capacity() <= LENGTH_PREFIX_BYTES + RESERVE_AHEAD_MAX_BYTES + 64, "{}", buf.capacity());
    }

    #[test]
    fn zero_length_is_rejected() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 1][..]);
        assert_eq!(FrameDecoder::default().decode(&mut buf), Err(WireError::EmptyFrame));
    }

    #[test]
    fn garbage_body_is_rejected() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(WireError::Undecodable { len: 3, .. })
        ));
    }

    #[test]
    fn declared_length_longer_than_the_message_is_rejected() {
        let mut body = postcard::to_stdvec(&WireMessage::Refused { reason: RefusalReason::UnknownNode(9) })
            .expect("encode");
        body.extend_from_slice(&[0, 0]);
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(&body);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Err(WireError::TrailingBytes { len: body.len() as u32, trailing: 2 })
        );
    }

    #[test]
    fn encoding_over_the_limit_fails_and_leaves_the_buffer() {
        let mut out = vec![1, 2, 3];
        let err = encode_frame(&append(1, 2_000), 1_000, &mut out).expect_err("too large");
        assert!(matches!(err, WireError::FrameTooLarge { max: 1_000, .. }), "{err}");
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn default_snapshot_chunk_fits_in_a_default_frame() {
        let chunk = crate::Config::default().snapshot_chunk_bytes;
        assert!((chunk as u64) < u64::from(DEFAULT_MAX_FRAME_BYTES) / 2);
    }

    fn message() -> impl Strategy<Value = WireMessage> {
        let raft = (any::<u64>(), any::<u64>(), any::<u64>(), 0usize..8, 0usize..64).prop_map(
            |(from, to, term, n, size)| {
                let WireMessage::Raft(mut m) = append(n, size) else { unreachable!() };
                m.from = from;
                m.to = to;
                m.term = term;
                WireMessage::Raft(m)
            },
        );
        prop_oneof![
            (any::<u16>(), ".{0,16}", any::<u64>()).prop_map(|(version, cluster_id, node_id)| {
                WireMessage::Hello { version, cluster_id, node_id }
            }),
            (any::<u16>(), any::<u64>())
                .prop_map(|(version, node_id)| WireMessage::HelloAck { version, node_id }),
            any::<u64>().prop_map(|n| WireMessage::Refused { reason: RefusalReason::UnknownNode(n) }),
            any::<u64>().prop_map(|seq| WireMessage::KeepAlive { seq }),
            any::<u64>().prop_map(|seq| WireMessage::KeepAliveAck { seq }),
            (".{0,8}", ".{0,8}").prop_map(|(expected, got)| WireMessage::Refused {
                reason: RefusalReason::WrongCluster { expected, got }
            }),
            raft,
        ]
    }

    proptest! {
        /// Random bytes give frames or errors, never a panic, and never a frame over the limit.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 1u32..1024) {
            let decoder = FrameDecoder::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        }

        /// A sequence of frames decodes to the same messages, whatever the read sizes.
        #[test]
        fn encode_decode_round_trip(messages in proptest::collection::vec(message(), 1..6), chunk in 1usize..64) {
            let mut stream = Vec::new();
            for m in &messages {
                encode_frame(m, DEFAULT_MAX_FRAME_BYTES, &mut stream).expect("encode");
            }
            let decoder = FrameDecoder::default();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.put_slice(piece);
                while let Some(m) = decoder.decode(&mut buf).expect("decode") {
                    decoded.push(m);
                }
            }
            prop_assert_eq!(decoded, messages);
            prop_assert!(buf.is_empty());
        }
    }
}
