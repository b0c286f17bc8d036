//! The simulated state machine: a key-value map. A command `key=value` sets `key`; any other
//! command sets a key named after the whole command. Its digest (of the applied index and the
//! whole map) lets the simulator compare the state of two nodes at the same index, including a
//! node that restored it from a snapshot.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;

use crate::types::{Entry, EntryPayload, Index};

/// The state machine of one simulated node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SimFsm {
    /// The last index applied (or restored).
    pub(crate) index: Index,
    /// The key-value map.
    pub(crate) kv: BTreeMap<Bytes, Bytes>,
}

impl SimFsm {
    /// Applies one committed entry.
    pub(crate) fn apply(&mut self, entry: &Entry) {
        if let EntryPayload::Command(c) = &entry.payload {
            match c.iter().position(|b| *b == b'=') {
                Some(at) => self.kv.insert(c.slice(..at), c.slice(at + 1..)),
                None => self.kv.insert(c.clone(), c.clone()),
            };
        }
        self.index = entry.index;
    }

    /// A digest of the whole state.
    pub(crate) fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.index.hash(&mut h);
        self.kv.hash(&mut h);
        h.finish()
    }

    /// Serializes the state: the index, then length-prefixed keys and values.
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        out.extend_from_slice(&self.index.to_be_bytes());
        for (k, v) in &self.kv {
            for part in [k, v] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        Bytes::from(out)
    }

    /// Parses what [`encode`](Self::encode) wrote.
    pub(crate) fn decode(data: &Bytes) -> Result<Self, String> {
        let take = |at: &mut usize, n: usize| -> Result<Bytes, String> {
            let end = at.checked_add(n).filter(|e| *e <= data.len()).ok_or("snapshot is truncated")?;
            let out = data.slice(*at..end);
            *at = end;
            Ok(out)
        };
        let mut at = 0usize;
        let index_bytes = take(&mut at, 8)?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(&index_bytes);
        let mut fsm = SimFsm { index: u64::from_be_bytes(buf), kv: BTreeMap::new() };
        while at < data.len() {
            let mut parts = Vec::new();
            for _ in 0..2 {
                let len_bytes = take(&mut at, 4)?;
                let mut len = [0u8; 4];
                len.copy_from_slice(&len_bytes);
                parts.push(take(&mut at, u32::from_be_bytes(len) as usize)?);
            }
            let v = parts.pop().unwrap_or_default();
            let k = parts.pop().unwrap_or_default();
            fsm.kv.insert(k, v);
        }
        Ok(fsm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut fsm = SimFsm::default();
        for (i, c) in ["a=1", "b=2", "a=3", "plain"].iter().enumerate() {
            let e = Entry { term: 1, index: i as u64 + 1, payload: EntryPayload::Command(Bytes::from(*c)) };
            fsm.apply(&e);
        }
        assert_eq!(fsm.kv.get(&Bytes::from("a")), Some(&Bytes::from("3")));
        let back = SimFsm::decode(&fsm.encode()).unwrap();
        assert_eq!(back, fsm);
        assert_eq!(back.digest(), fsm.digest());
        assert!(SimFsm::decode(&fsm.encode().slice(..10)).is_err());
    }
}
