//! What the integration tests share.

use std::path::{Path, PathBuf};

/// The write-ahead log files of the store in `dir`, oldest first.
pub fn wals(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    out.sort();
    out
}
