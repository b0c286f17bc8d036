//! Keys and values on disk. Keys are big-endian so that RocksDB's byte order is index order.
//! Every value is framed as `crc32c (4 bytes, little-endian) ‖ postcard bytes`; a frame whose
//! checksum does not match is reported as corruption, never decoded.

use raft_core::StorageError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The column family of log entries: key `group ‖ index`.
pub(crate) const CF_LOG: &str = "log";
/// The column family of per-log state (hard state, snapshot) and of store-wide metadata.
pub(crate) const CF_META: &str = "meta";
/// Every column family the store needs (besides RocksDB's `default`).
pub(crate) const COLUMN_FAMILIES: [&str; 2] = [CF_LOG, CF_META];

/// Store-wide metadata keys (they start with a byte no group key starts with).
pub(crate) const KEY_FORMAT_VERSION: &[u8] = b"\xffformat_version";
pub(crate) const KEY_CLUSTER_ID: &[u8] = b"\xffcluster_id";
pub(crate) const KEY_NODE_ID: &[u8] = b"\xffnode_id";
/// Present while the store keeps a durability record: a record missing then is damage.
pub(crate) const KEY_RECORD_KEPT: &[u8] = b"\xffdurability_record_kept";

/// The key of entry `index` of log `group`.
pub(crate) fn log_key(group: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The index in a log key, if the key belongs to `group`.
pub(crate) fn index_of(group: u64, key: &[u8]) -> Option<u64> {
    if key.len() != 16 || key[..8] != group.to_be_bytes() {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[8..]);
    Some(u64::from_be_bytes(b))
}

/// A per-log metadata key.
pub(crate) fn meta_key(group: u64, name: &str) -> Vec<u8> {
    let mut k = group.to_be_bytes().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Frames `value` with its checksum.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    let body = postcard::to_stdvec(value).map_err(|e| StorageError::Io(format!("encoding: {e}")))?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks the frame's checksum; returns the body.
pub(crate) fn check_frame<'a>(frame: &'a [u8], what: &dyn Fn() -> String) -> Result<&'a [u8], StorageError> {
    if frame.len() < 4 {
        return Err(StorageError::Corrupt(format!("{} is truncated ({} bytes)", what(), frame.len())));
    }
    let (sum, body) = frame.split_at(4);
    let mut expected = [0u8; 4];
    expected.copy_from_slice(sum);
    if crc32c::crc32c(body) != u32::from_le_bytes(expected) {
        return Err(StorageError::Corrupt(format!("{} fails its checksum", what())));
    }
    Ok(body)
}

/// Checks the frame's checksum and decodes it; `what` names the record in errors.
pub(crate) fn decode<T: DeserializeOwned>(
    frame: &[u8],
    what: &dyn Fn() -> String,
) -> Result<T, StorageError> {
    let body = check_frame(frame, what)?;
    postcard::from_bytes(body).map_err(|e| StorageError::Corrupt(format!("{} does not decode: {e}", what())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_group_then_index() {
        assert!(log_key(1, 255) < log_key(1, 256));
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert_eq!(index_of(7, &log_key(7, 42)), Some(42));
        assert_eq!(index_of(8, &log_key(7, 42)), None);
    }

    #[test]
    fn a_flipped_bit_is_reported_as_corruption() {
        let mut frame = encode(&(1u64, "x".to_string())).expect("encode");
        let what = || "entry 1".to_string();
        assert_eq!(decode::<(u64, String)>(&frame, &what).expect("decode"), (1, "x".to_string()));
        let last = frame.len() - 1;
        frame[last] ^= 0x10;
        assert!(
            matches!(decode::<(u64, String)>(&frame, &what), Err(StorageError::Corrupt(m)) if m.contains("checksum"))
        );
        assert!(
            matches!(decode::<u64>(&frame[..2], &what), Err(StorageError::Corrupt(m)) if m.contains("truncated"))
        );
    }
}
