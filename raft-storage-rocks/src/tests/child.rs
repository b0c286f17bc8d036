//! The second process of the multi-process tests: this test binary run again with
//! `RAFT_ROCKS_CHILD=<mode>` and `RAFT_ROCKS_DIR=<dir>`, executing only [`child_process_entry`].
//!
//! Modes:
//! - `append`: appends entries forever (with hard-state saves, snapshots and compactions mixed
//!   in), printing `ack N` after each append returns and `hs T` after each hard-state save;
//! - `lock`: tries to open the store and prints `locked` or `opened`;
//! - `diskfull`: mounts a small tmpfs at the directory (it must run in its own mount
//!   namespace: `unshare -m`), fills it, and checks the full-disk behaviour; prints `ok` at the end;
//! - `stagefull`: the same tmpfs; a received snapshot whose staging and commit fail on the full
//!   disk are made again once space frees (nothing staged was dropped); prints `ok` at the end.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use raft_core::{HardState, LogId, Membership, Snapshot, SnapshotMeta, Storage, StorageError};

use super::{expected_entry, identity, open};
use crate::{OpenError, RocksDb, RocksOptions};

const MODE: &str = "RAFT_ROCKS_CHILD";
const DIR: &str = "RAFT_ROCKS_DIR";

/// Starts this test binary as a child in `mode` on `dir`, its stdout piped. `wrapper` runs it
/// under another program (e.g. `unshare`).
pub(crate) fn spawn(mode: &str, dir: &Path, wrapper: &[&str]) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let test_args =
        ["tests::child::child_process_entry", "--exact", "--ignored", "--nocapture", "--test-threads=1"];
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(test_args).env(MODE, mode).env(DIR, dir).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()
}

/// The child's body; does nothing in a normal test run.
#[test]
#[ignore = "runs only as the child process of the multi-process tests"]
fn child_process_entry() {
    let (Ok(mode), Ok(dir)) = (std::env::var(MODE), std::env::var(DIR)) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match mode.as_str() {
        "append" => runtime.block_on(append_forever(Path::new(&dir))),
        "lock" => {
            let answer = match RocksDb::open(&dir, &identity(), RocksOptions::default()) {
                Err(OpenError::Locked { .. }) => "locked",
                Err(e) => panic!("unexpected error: {e}"),
                Ok(_) => "opened",
            };
            say(answer);
        }
        "diskfull" => runtime.block_on(disk_full(Path::new(&dir))),
        "stagefull" => runtime.block_on(staging_on_a_full_disk(Path::new(&dir))),
        other => panic!("unknown child mode {other}"),
    }
}

/// Marks the child's own lines in its stdout (libtest writes there too).
pub(crate) const MARK: &str = "@@ ";

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{MARK}{line}");
    let _ = out.flush();
}

/// The child's own lines in `stdout`.
pub(crate) fn said(stdout: &str) -> Vec<String> {
    stdout.lines().filter_map(|l| l.split_once(MARK).map(|(_, said)| said.to_string())).collect()
}

async fn append_forever(dir: &Path) {
    let log = open(dir).log(0);
    let state = log.initial_state().await.expect("initial state");
    let mut next = state.last_index + 1;
    let mut term = state.hard_state.current_term;
    let mut seed = next;
    loop {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let n = 1 + (seed >> 33) % 8;
        let batch: Vec<_> = (next..next + n).map(expected_entry).collect();
        log.append(&batch).await.expect("append");
        next += n;
        say(&format!("ack {}", next - 1));
        if (seed >> 40) % 16 == 0 {
            term += 1;
            log.save_hard_state(HardState { current_term: term, voted_for: Some(1) })
                .await
                .expect("hard state");
            say(&format!("hs {term}"));
        }
        if (seed >> 45) % 64 == 0 && next > 40 {
            let last = next - 1;
            let meta =
                SnapshotMeta { last_log_id: LogId::new(1, last), membership: Membership::with_voters([1]) };
            // Two chunks, so that the file holds more than one frame.
            let data = raft_core::SnapshotData::from_chunks([
                Bytes::from_static(b"snap@"),
                Bytes::from(last.to_string()),
            ]);
            log.save_snapshot(Snapshot { meta, data }).await.expect("snapshot");
            log.compact(last - 20).await.expect("compact");
            say(&format!("snap {last}"));
        }
    }
}

/// Mounts a 16 MiB tmpfs at `dir` (in this process's private mount namespace).
fn mount_tmpfs(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mount point");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(dir)
        .status()
        .expect("mount runs");
    assert!(status.success(), "mounting a tmpfs needs root in a private mount namespace");
}

/// Fills the file system of `path` with it until a write fails (less than 4 KiB stays free).
fn fill_to_the_brim(path: &Path) {
    let mut file = std::fs::File::create(path).expect("filler");
    let block = vec![7u8; 4096];
    while file.write_all(&block).is_ok() {}
}

async fn staging_on_a_full_disk(dir: &Path) {
    mount_tmpfs(dir);
    let db = open(&dir.join("store"));
    let log = db.log(0);
    let meta = SnapshotMeta { last_log_id: LogId::new(1, 9), membership: Membership::with_voters([1]) };
    let first = Bytes::from(vec![1u8; 1000]);
    let second = Bytes::from(vec![2u8; 256 * 1024]);
    log.stage_snapshot_part(1, &meta, 0, first.clone()).await.expect("the first part");
    let filler = dir.join("filler");
    fill_to_the_brim(&filler);
    let refused = log.stage_snapshot_part(1, &meta, 1000, second.clone()).await;
    assert_eq!(refused, Err(StorageError::Full), "a part that does not fit");
    std::fs::remove_file(&filler).expect("free space");
    log.stage_snapshot_part(1, &meta, 1000, second.clone())
        .await
        .expect("the same part again, once space frees");
    // The commit on a full disk: whichever step fails (the trailer, the sync, RocksDB's
    // batch), the same call made again once space frees commits the whole snapshot.
    fill_to_the_brim(&filler);
    let len = (first.len() + second.len()) as u64;
    let committed = log.save_staged_snapshot(&meta, len).await;
    say(&format!("commit on a full disk: {committed:?}"));
    assert!(matches!(committed, Ok(()) | Err(StorageError::Full)), "{committed:?}");
    std::fs::remove_file(&filler).expect("free space");
    if committed.is_err() {
        log.save_staged_snapshot(&meta, len).await.expect("the commit made again once space frees");
    }
    let stored = log.load_snapshot().await.expect("load").expect("a snapshot");
    assert_eq!(stored.meta, meta);
    let mut expected = first.to_vec();
    expected.extend_from_slice(&second);
    let got: Vec<u8> = stored.data.chunks().iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(got, expected, "every staged byte, once");
    say("ok");
}

async fn disk_full(dir: &Path) {
    mount_tmpfs(dir);
    // Keep space to free later: more than the store can fill, because reopening after the
    // failure replays the WAL into a new SST file before the old WAL is deleted.
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![0u8; 10 * 1024 * 1024]).expect("filler");
    let store = dir.join("store");
    let db = open(&store);
    let log = db.log(0);
    let mut acked = 0u64;
    let error = loop {
        let entry = expected_entry(acked + 1);
        match log.append(&[entry]).await {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 1_000_000, "the disk never filled");
    };
    assert_eq!(error, StorageError::Full, "a full disk is reported as Full");
    say(&format!("full after {acked} entries"));
    // Nothing acknowledged is lost; the store refuses nothing it already has. (Reads may fail
    // while RocksDB is closed for reopening; read through a fresh handle after space frees.)
    std::fs::remove_file(&filler).expect("free space");
    let next = expected_entry(acked + 1);
    log.append(&[next]).await.expect("writes work again once space is freed");
    acked += 1;
    let all = log.entries(1, acked + 1).await.expect("read back");
    assert_eq!(all.len() as u64, acked);
    for e in &all {
        assert_eq!(e, &expected_entry(e.index), "entry {} is intact", e.index);
    }
    drop(log);
    drop(db);
    let reopened = open(&store).log(0);
    assert_eq!(reopened.initial_state().await.expect("state").last_index, acked);
    say("ok");
}
