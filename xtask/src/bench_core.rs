//! `cargo xtask bench core [--openraft DIR]`: raft-core against openraft in one process
//! (`cargo bench -p raft-bench --bench core`), and with `--openraft DIR` openraft's own
//! `benchmarks/minimal` beside them in the same rounds.
//!
//! `DIR` is a checkout of openraft's repository (`git clone
//! https://github.com/databendlabs/openraft DIR`); its benchmark is not published on crates.io.
//! It is built here with openraft's own release profile, on the stable toolchain (the
//! repository pins a nightly that a fresh machine lacks), into `target/openraft-minimal/`, and
//! never becomes part of this workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs the core benchmark; see the module docs.
pub fn bench_core(root: &Path, args: &[String]) -> Result<()> {
    let mut openraft = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--openraft" => {
                openraft = Some(PathBuf::from(it.next().context("--openraft needs a directory")?))
            }
            other => bail!("usage: cargo xtask bench core [--openraft DIR], not {other}"),
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut bench = Command::new(&cargo);
    bench.current_dir(root).args(["bench", "-p", "raft-bench", "--bench", "core"]);
    if let Some(dir) = openraft {
        let bin = build_openraft_minimal(&cargo, root, &dir)?;
        println!("openraft's own benchmark: {}", bin.display());
        bench.env("OPENRAFT_BENCH_BIN", bin);
    } else {
        println!(
            "openraft's own benchmark not run (give --openraft DIR, a checkout of openraft's repository)"
        );
    }
    println!("$ cargo bench -p raft-bench --bench core");
    let status = bench.status().context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }
    Ok(())
}

/// Builds `bench` of `DIR/benchmarks/minimal` and returns its path.
fn build_openraft_minimal(cargo: &str, root: &Path, dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("benchmarks/minimal/Cargo.toml");
    if !manifest.is_file() {
        bail!("{} not found: --openraft wants a checkout of openraft's repository", manifest.display());
    }
    let target = root.join("target/openraft-minimal");
    let commit = Command::new("git")
        .current_dir(dir)
        .args(["describe", "--tags", "--always"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown commit".to_string(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        );
    // The in-process glue uses the openraft of this workspace's Cargo.toml; the checkout may be
    // another version, which the report must say.
    println!(
        "building openraft's benchmarks/minimal ({}, {commit}) in release; the in-process glue uses the \
         openraft version pinned in this workspace's Cargo.toml",
        dir.display()
    );
    let status = Command::new(cargo)
        .env("RUSTUP_TOOLCHAIN", "stable")
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--release", "--bin", "bench", "--manifest-path"])
        .arg(&manifest)
        .status()
        .context("building openraft's benchmark")?;
    if !status.success() {
        bail!("building openraft's benchmark failed ({status})");
    }
    Ok(target.join("release/bench"))
}
