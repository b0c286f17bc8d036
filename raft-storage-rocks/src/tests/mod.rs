//! Tests of the RocksDB store: conformance, durability (SIGKILL rounds and the sync contract),
//! integrity (damaged files, foreign stores, formats, locks), a full disk, and a cluster.
//!
//! Tests that need a second process run this test binary again with `RAFT_ROCKS_CHILD` set
//! (see [`child`]).

mod child;
mod cluster;
mod corruption;
pub(crate) mod durability;
mod lost_data;
mod reception_review;
mod record_config;
mod record_in_flight;
mod record_review;
mod record_review2;
mod snapshot_files;

use std::path::Path;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Index};

use crate::{Identity, RocksDb, RocksOptions};

/// The helpers the integration tests share (`wals`, `copy_dir`), shared with these.
#[path = "../../tests/common/mod.rs"]
mod common;
pub(crate) use common::{copy_dir, wals};

pub(crate) fn identity() -> Identity {
    Identity { cluster_id: "test-cluster".into(), node_id: 1 }
}

pub(crate) fn open(dir: &Path) -> RocksDb {
    RocksDb::open(dir, &identity(), RocksOptions::default()).expect("open")
}

/// The entry the child writes at `index`: its payload is a function of the index, so a reader
/// can tell an intact entry from a damaged or partial one.
pub(crate) fn expected_entry(index: Index) -> Entry {
    let size = (index.wrapping_mul(7_919) % 1_500 + 10) as usize;
    let mut payload = format!("e{index}:").into_bytes();
    payload.resize(payload.len() + size, (index % 251) as u8);
    Entry { term: 1, index, payload: EntryPayload::Command(Bytes::from(payload)) }
}

#[tokio::test]
async fn passes_the_storage_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    raft_core::testing::storage_suite::run_all(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path()).log(0);
        dirs.lock().expect("dirs").push(dir);
        log
    })
    .await;
}

#[tokio::test]
async fn logs_of_one_store_are_independent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let (a, b) = (db.log(1), db.log(2));
    use raft_core::Storage;
    a.append(&[expected_entry(1), expected_entry(2)]).await.expect("append a");
    b.append(&[expected_entry(1)]).await.expect("append b");
    b.truncate(1).await.expect("truncate b");
    assert_eq!(a.initial_state().await.expect("a").last_index, 2);
    assert_eq!(b.initial_state().await.expect("b").last_index, 0);
    assert_eq!(a.entries(1, 3).await.expect("read a"), vec![expected_entry(1), expected_entry(2)]);
}
