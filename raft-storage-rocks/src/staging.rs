//! The file of a snapshot being received from the leader, kept across a restart so that the
//! reception resumes where it stopped instead of starting over (a gigabyte snapshot takes
//! seconds to send).
//!
//! Beside the file (`.tmp-recv-n{nonce}-g{group}-{index}-{term}.snap`, written as any snapshot
//! file: framed, each frame with its checksum) a record `.tmp-recv-g{group}.stage` names it,
//! with the term of the leader that sends it and the snapshot's metadata (two leaders may send
//! snapshots with the same last entry and different bytes: parts of one never continue the
//! other). Each reception gets a new nonce, so a record can never name the file of another
//! reception, whatever a crash leaves of the directory. At a restart the file keeps its whole
//! frames that pass their checksums; a record or file that cannot be read is removed, and the
//! reception starts over.

use std::fs;
use std::path::Path;

use raft_core::{SnapshotMeta, StorageError, Term};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::snapshot_file::{PendingFile, RECEIVED_PREFIX};

/// What the record of a reception says.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    term: Term,
    meta: SnapshotMeta,
    nonce: u64,
}

/// The name of log `group`'s reception record.
fn record_name(group: u64) -> String {
    format!("{RECEIVED_PREFIX}g{group}.stage")
}

/// The `kind` of a reception's file (see [`PendingFile::create`]).
fn kind(nonce: u64) -> String {
    format!("recv-n{nonce}-")
}

/// Whether `name` is one of log `group`'s reception files or its record.
fn is_own(name: &str, group: u64) -> bool {
    name.starts_with(RECEIVED_PREFIX) && (name.contains(&format!("-g{group}-")) || name == record_name(group))
}

/// Removes log `group`'s reception files and record. Blocking; best effort.
pub(crate) fn forget(dir: &Path, group: u64) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| is_own(n, group)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Starts the file of a snapshot the leader of `term` sends, with the record that lets a
/// restart resume it (any earlier reception of the log is removed). Blocking.
pub(crate) fn start(
    dir: &Path,
    group: u64,
    term: Term,
    meta: &SnapshotMeta,
) -> Result<PendingFile, StorageError> {
    forget(dir, group);
    let nonce =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
    let file = PendingFile::create(dir, group, meta.last_log_id, &kind(nonce))?;
    let record = codec::encode(&Record { term, meta: meta.clone(), nonce })?;
    let path = dir.join(record_name(group));
    // Not synced: a record lost in a crash only makes the reception start over.
    if let Err(e) = fs::write(&path, record) {
        file.discard();
        let _ = fs::remove_file(&path);
        return Err(if e.raw_os_error() == Some(28) {
            StorageError::Full
        } else {
            StorageError::Io(format!("writing {}: {e}", path.display()))
        });
    }
    Ok(file)
}

/// The reception of log `group` a restart found, with its file opened to go on writing:
/// `None` (and nothing left of it) when there is none or it cannot be used. Blocking.
pub(crate) fn resume(dir: &Path, group: u64) -> Option<(Term, SnapshotMeta, PendingFile)> {
    let found = fs::read(dir.join(record_name(group)))
        .ok()
        .and_then(|bytes| codec::decode::<Record>(&bytes, &|| "a reception record".into()).ok())
        .and_then(|r| {
            let file = PendingFile::reopen(dir, group, r.meta.last_log_id, &kind(r.nonce)).ok()??;
            Some((r, file))
        });
    let Some((record, file)) = found else {
        forget(dir, group);
        return None;
    };
    // Files of earlier receptions a crash left.
    if let Ok(entries) = fs::read_dir(dir) {
        let own = kind(record.nonce);
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if is_own(&name, group) && name != record_name(group) && !name.contains(&own) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Some((record.term, record.meta, file))
}
