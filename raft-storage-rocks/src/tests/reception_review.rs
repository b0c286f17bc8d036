//! Outside review of issue 13 (second, on 18ccbd3): `initial_state()` called at run time (as
//! `GET /v1/log` does) while a received snapshot is being saved. It failed there in 4 of 5
//! runs of 40 rounds: the call took the staging file for one a crash had left, reopened it
//! and cut the trailer the save had just written, and the store then refused to open. A
//! store now looks for a reception left by the last process only once, before any staging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use raft_core::{LogId, Membership, SnapshotMeta, Storage};

use super::open;

/// `save_staged_snapshot` takes the staging out of its slot, then finishes (trailer, sync) and
/// renames the file: meanwhile the slot is empty while the record and the temporary file are
/// still there. A concurrent `initial_state()` then "resumes" the reception: it reopens the
/// temporary file and cuts it back to its last whole frame (the trailer just written), and
/// leaves a phantom staging in the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn initial_state_during_a_received_snapshot_save_never_damages_it() {
    let meta = SnapshotMeta { last_log_id: LogId::new(2, 20), membership: Membership::with_voters([1]) };
    let part = Bytes::from(vec![0x5Au8; 1 << 20]);
    // 23 MiB: the last intermediate sync is at 16 MiB, so the final one has 7 MiB to write.
    let parts = 23u64;
    let mut failures = Vec::new();
    let mut phantom_seen = 0;
    for round in 0..20 {
        // On a real disk (not tmpfs), where the final sync takes a while.
        let base = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()) + "/.cache";
        std::fs::create_dir_all(&base).expect("a directory for the test");
        let dir = tempfile::tempdir_in(base).expect("tempdir");
        let db = open(dir.path());
        let log = db.log(0);
        for i in 0..parts {
            log.stage_snapshot_part(3, &meta, i * part.len() as u64, part.clone()).await.expect("stage");
        }
        let len = parts * part.len() as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = 0;
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(s) = log.initial_state().await {
                        seen += u32::from(s.staged.is_some());
                    }
                }
                seen
            })
        };
        let saved = log.save_staged_snapshot(&meta, len).await;
        stop.store(true, Ordering::SeqCst);
        phantom_seen += poller.await.expect("poller");
        let after = log.initial_state().await.expect("state").staged;
        let loaded = log.load_snapshot().await;
        let ok_loaded = matches!(&loaded, Ok(Some(s)) if s.data.len() == len);
        if saved.is_err() || after.is_some() || !ok_loaded {
            failures.push(format!(
                "round {round}: save {saved:?}; staged after the save {after:?}; load {:?}",
                loaded.as_ref().map(|s| s.as_ref().map(|s| s.data.len()))
            ));
        }
        drop(log);
        drop(db);
        // After a restart too.
        let mut last_err = None;
        let db = (0..20).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            crate::RocksDb::open(dir.path(), &super::identity(), crate::RocksOptions::default())
                .map_err(|e| last_err = Some(format!("{e:?}")))
                .ok()
        });
        let Some(db) = db else {
            failures.push(format!("round {round}: the store does not open again: {last_err:?}"));
            break;
        };
        let log = db.log(0);
        let loaded = log.load_snapshot().await;
        if !matches!(&loaded, Ok(Some(s)) if s.data.len() == len) {
            failures.push(format!(
                "round {round} after reopen: load {:?}",
                loaded.map(|s| s.map(|s| s.data.len()))
            ));
        }
    }
    eprintln!("staged seen by the poller during saves: {phantom_seen}");
    assert!(failures.is_empty(), "{} bad rounds:\n{}", failures.len(), failures.join("\n"));
}
