//! Outside review of issue 15, item 5: "a foreign data dir is refused before RocksDB
//! writes anything into it". A store of another node or cluster, and a RocksDB database of
//! another program, are refused and left byte for byte as they were (names, sizes, contents).

use std::collections::BTreeMap;
use std::path::Path;

use raft_core::Storage;
use raft_storage_rocks::{Identity, OpenError, RocksDb, RocksOptions};

fn listing(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read dir").filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().to_string();
        let bytes = if e.path().is_file() { std::fs::read(e.path()).expect("read file") } else { Vec::new() };
        out.insert(name, bytes);
    }
    out
}

async fn store_of(dir: &Path, identity: &Identity) {
    let db = RocksDb::open(dir, identity, RocksOptions::default()).expect("open");
    let log = db.log(0);
    log.initial_state().await.expect("state");
    log.append(&[raft_core::Entry {
        term: 1,
        index: 1,
        payload: raft_core::EntryPayload::Command(bytes::Bytes::from_static(b"x")),
    }])
    .await
    .expect("append");
}

#[tokio::test]
async fn a_store_of_another_node_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mine = Identity { cluster_id: "a".into(), node_id: 1 };
    store_of(dir.path(), &mine).await;
    let before = listing(dir.path());
    for other in
        [Identity { cluster_id: "a".into(), node_id: 2 }, Identity { cluster_id: "b".into(), node_id: 1 }]
    {
        match RocksDb::open(dir.path(), &other, RocksOptions::default()) {
            Err(e) => assert!(!matches!(e, OpenError::Io(_)), "refused for another reason: {e}"),
            Ok(_) => panic!("a store of {mine:?} opened as {other:?}"),
        }
        let after = listing(dir.path());
        let changed: Vec<_> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(changed.is_empty(), "refusing {other:?} changed these files: {changed:?}");
    }
}

#[test]
fn a_directory_of_other_files_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notes.txt"), b"someone's data").expect("write");
    std::fs::create_dir(dir.path().join("photos")).expect("mkdir");
    let before = listing(dir.path());
    let identity = Identity { cluster_id: "a".into(), node_id: 1 };
    assert!(RocksDb::open(dir.path(), &identity, RocksOptions::default()).is_err(), "a foreign dir opened");
    assert_eq!(listing(dir.path()), before, "refusing a foreign dir changed it");
}
