//! Project automation: `cargo xtask <command>`.
//!
//! - `sim --seeds N [--start S] [--protocol | --node]`: N seeded simulations from seed S
//!   (default 0) of the protocol (`raft_core::testing::sim`) and of real nodes (`raft-sim`:
//!   the `RaftNode` driver, clients checked for linearizability); both unless one is named.
//! - `sim --seed S [--protocol | --node]`: replays one seed.
//! - `setup [--ci]`: checks the system packages a build (and with `--ci` the full test run)
//!   needs and installs the missing ones where it can (see `setup.rs`).
//! - `tidy`: repository checks (the protocol module stays free of IO, clocks and tokio).
//! - `bench [http] OPTIONS` (or `bench-http`): HTTP load against a local `raft-node` cluster
//!   and, when installed, etcd, side by side; `--failover` kills leaders under load (see
//!   `bench_http`).
//! - `bench core [--openraft DIR]`: raft-core against openraft on the same workload, same run
//!   (release build); with a checkout of openraft's repository, its own `benchmarks/minimal`
//!   too (see `bench_core.rs`).
//! - `cluster up|down|status|kill N|restart N`: a local cluster of `raft-node` processes
//!   under `target/cluster/` (see `cluster.rs`).
//! - `chaos [--duration SECS] [--seed S] [--nodes N] [--transport tcp|quic] ...`: a Jepsen-style
//!   test of real `raft-node` processes under a seeded nemesis (see `chaos/mod.rs`).
//! - `test`: fmt, clippy, tidy, all tests (nextest), doc tests, and 2000 simulation seeds.
//! - `ci`: what `.ci/run` runs: `test`, then `chaos` runs (seed 1): 60 s in a network
//!   namespace (root), 30 s rootless.

mod bench_core;
mod bench_http;
mod chaos;
mod cluster;
mod plot;
mod procs;
mod setup;
mod sim;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => sim::sim(&args[1..]),
        Some("setup") => setup::setup(&args[1..]),
        Some("tidy") => tidy(),
        Some("test") => test_all(),
        Some("ci") => ci(&args[1..]),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("core") => bench_core::bench_core(&workspace_root()?, &args[2..]),
            Some("http") => bench_http::bench_http(&workspace_root()?, &args[2..]),
            Some("scale") => {
                // 1,000,000 keys of 1 KiB (about 1 GB of state), etcd beside raft-node when it is
                // installed, unless the arguments say otherwise.
                let mut scale: Vec<String> = ["--scale", "--keys", "1000000", "--value-bytes", "1024", "--against", "both"]
                    .map(String::from)
                    .to_vec();
                scale.extend(args[2..].iter().cloned());
                bench_http::bench_http(&workspace_root()?, &scale)
            }
            Some("watchers") => {
                // 1,000 watchers of every key on the leader, 100 writes/s of 1 KiB, 3 + 3 rounds of 20 s.
                let mut watchers: Vec<String> =
                    ["--watchers-bench", "--value-bytes", "1024", "--duration", "20", "--runs", "3", "--warmup", "5"]
                        .map(String::from)
                        .to_vec();
                watchers.extend(args[2..].iter().cloned());
                bench_http::bench_http(&workspace_root()?, &watchers)
            }
            _ => bench_http::bench_http(&workspace_root()?, &args[1..]),
        },
        Some("bench-http") => bench_http::bench_http(&workspace_root()?, &args[1..]),
        Some(bench_http::WATCH_READERS_COMMAND) => bench_http::watch_readers(&args[1..]),
        Some("certs") => certs(&args[1..]),
        Some("cluster") => cluster::cluster(&workspace_root()?, &args[1..]),
        Some("chaos") => chaos::chaos(&workspace_root()?, &args[1..]),
        _ => bail!(
            "usage: cargo xtask setup [--ci] | sim --seeds N [--start S] [--protocol|--node] | sim --seed S [--protocol|--node] | tidy | test | ci [--chaos-seed S] [--no-chaos] | bench [http] OPTIONS | bench scale [OPTIONS] | bench core [--openraft DIR] | certs [--nodes N] [--cluster ID] [--client NAME]... --out DIR | cluster up|down|status|kill N|restart N | chaos [--duration SECS] [--seed S] [--nodes N] [--transport tcp|quic]"
        ),
    }
}

fn cargo(args: &[&str]) -> Result<()> {
    println!("$ cargo {}", args.join(" "));
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn test_all() -> Result<()> {
    setup::ensure(setup::Needs::Test)?;
    setup::ensure_nextest()?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    tidy()?;
    cargo(&["nextest", "run", "--workspace", "--no-fail-fast"])?;
    cargo(&["test", "--workspace", "--doc"])?;
    sim::sim(&["--seeds".to_string(), "2000".to_string()])
}

/// The chaos run of `cargo xtask ci`: one minute, a fixed seed (so that a red CI replays), all
/// fault kinds. Other seeds and longer runs are `cargo xtask chaos --duration 300 --seed S`.
const CI_CHAOS_SEED: u64 = 1;

/// `cargo xtask ci [--chaos-seed S] [--no-chaos]`: what `.ci/run` runs: everything of `test`,
/// then a 60 s chaos run of real processes in a network namespace of its own (root mode,
/// nft partitions) and a 30 s one on the host's loopback (rootless mode, partitions by the
/// proxy), so that both paths stay covered, then the benchmark's smoke runs. Not root: only the rootless run. `--no-chaos`
/// leaves the chaos runs out and says so; they are never skipped silently.
fn ci(args: &[String]) -> Result<()> {
    let began = Instant::now();
    let no_chaos = args.iter().any(|a| a == "--no-chaos");
    let seed = flag(args, "--chaos-seed")?.unwrap_or(CI_CHAOS_SEED);
    for a in args {
        if a.starts_with("--") && a != "--no-chaos" && a != "--chaos-seed" {
            bail!("usage: cargo xtask ci [--chaos-seed S] [--no-chaos], not {a}");
        }
    }
    setup::ensure(if no_chaos { setup::Needs::Test } else { setup::Needs::Chaos })?;
    prune_old_test_binaries();
    test_all()?;
    if no_chaos {
        println!("ci: the chaos run was left out (--no-chaos)");
    } else {
        let root = workspace_root()?;
        // The debug `raft-node` the tests just built. `cargo build -p raft-node` alone resolves
        // the build dependencies' features differently and would build RocksDB a second time.
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let binary = target.join("debug").join("raft-node");
        let args = |extra: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = vec!["--seed".into(), seed.to_string()];
            if binary.is_file() {
                args.extend(["--binary".to_string(), binary.display().to_string()]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        if chaos::is_root() {
            chaos::chaos(&root, &args(&["--duration", "60"]))?;
        } else {
            println!("ci: not root: the chaos run in a network namespace of its own is left out");
        }
        chaos::chaos(&root, &args(&["--duration", "30", "--rootless"]))?;
        bench_smoke(&binary)?;
    }
    println!("ci: passed in {:.0?}", began.elapsed());
    Ok(())
}

/// The HTTP benchmark, smoke-tested on the tests' debug `raft-node` (no release build, no
/// figures): against raft-node and etcd (gRPC and JSON gateway), every phase kind, then an
/// open loop. It fails unless every target answered without a failure.
fn bench_smoke(binary: &Path) -> Result<()> {
    let runs: [&[&str]; 2] = [
        &["--against", "both", "--etcd-api", "both", "--workload", "write,read,mixed", "--connections", "4"],
        &["--against", "raft", "--workload", "write", "--connections", "4", "--rate", "200"],
    ];
    for extra in runs {
        let mut command = std::process::Command::new(std::env::current_exe().context("this program's path")?);
        command.args(["bench", "--smoke", "--runs", "1", "--duration", "1", "--warmup", "0.5"]).args(extra);
        if binary.is_file() {
            command.env("RAFT_NODE_BINARY", binary);
        }
        println!("ci: bench smoke run: {}", extra.join(" "));
        let status = command.status().context("running the bench smoke run")?;
        if !status.success() {
            bail!("the bench smoke run failed ({status})");
        }
    }
    Ok(())
}

/// Test binaries left by builds older than this are deleted before CI builds.
const PRUNE_AFTER: std::time::Duration = std::time::Duration::from_secs(2 * 24 * 3600);

/// A shared target dir keeps every test binary of every build configuration it ever linked
/// (hundreds of MB each with debug info: 73 GB once filled the disk). Those not relinked for
/// [`PRUNE_AFTER`] go; a build relinks any it still needs. Nothing else is touched.
fn prune_old_test_binaries() {
    use std::os::unix::fs::PermissionsExt;
    let Ok(root) = workspace_root() else { return };
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let Ok(entries) = std::fs::read_dir(target.join("debug").join("deps")) else { return };
    let (mut files, mut bytes) = (0u64, 0u64);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(meta) = entry.metadata() else { continue };
        // Test binaries: executable files without an extension (libraries have one).
        let binary =
            meta.is_file() && meta.permissions().mode() & 0o111 != 0 && !name.to_string_lossy().contains('.');
        let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > PRUNE_AFTER);
        if binary && old && std::fs::remove_file(entry.path()).is_ok() {
            files += 1;
            bytes += meta.len();
        }
    }
    if files > 0 {
        println!("ci: deleted {files} test binaries of old builds ({} MB)", bytes / 1_000_000);
    }
}

pub(crate) fn flag(args: &[String], name: &str) -> Result<Option<u64>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            let v = args.get(i + 1).with_context(|| format!("{name} needs a value"))?;
            Ok(Some(v.parse().with_context(|| format!("{name}: not a number: {v}"))?))
        }
    }
}

/// `cargo xtask certs --nodes 3 --cluster dev --out DIR`: a dev CA, one certificate per node
/// (identity `node-<id>.<cluster>`) and one HTTPS API certificate per node (names `localhost`,
/// `127.0.0.1`, `::1`), with `--client NAME` a client certificate per name, and with
/// `--api-ca` a separate CA for API certificates issued where the nodes run (Kubernetes;
/// `--api-ca-only` writes only that), for a secure cluster without openssl. An existing CA in
/// `--out` is never replaced without `--force`.
fn certs(args: &[String]) -> Result<()> {
    let nodes: u64 = flag(args, "--nodes")?.unwrap_or(3);
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let cluster = value("--cluster").unwrap_or_else(|| "dev".to_string());
    let out = value("--out").context("--out DIR is required")?;
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    // `--client NAME` (repeatable): a client certificate for `[[auth.certificates]]`.
    let clients: Vec<String> = args.windows(2).filter(|w| w[0] == "--client").map(|w| w[1].clone()).collect();
    if let Some(bad) = clients.iter().find(|name| !raft_tls::is_valid_cluster_id(name)) {
        bail!("--client {bad:?}: a client name is a DNS name (lowercase letters, digits, '-' and '.')");
    }
    let api_ca_only = args.iter().any(|a| a == "--api-ca-only");
    let dir = std::path::Path::new(&out);
    // Never over an existing CA: its key may be the only one of a running cluster.
    let existing: Vec<&str> =
        if api_ca_only { &["api-ca.pem", "api-ca-key.pem"][..] } else { &["ca.pem", "ca-key.pem"][..] }
            .iter()
            .copied()
            .filter(|name| dir.join(name).exists())
            .collect();
    if !existing.is_empty() && !args.iter().any(|a| a == "--force") {
        bail!("{out} already holds {existing:?}: refusing to replace a CA (--force does; --api-ca-only writes only the API CA)");
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {out}"))?;
    if api_ca_only {
        return write_api_ca(dir, &cluster);
    }
    let certs = raft_tls::generate_dev_certs_with_clients(&cluster, 1..=nodes, &clients)?;
    certs.write_dev_certs(dir)?;

    println!(
        "wrote a CA (ca.pem, ca-key.pem), {nodes} node certificates (node-<id>.pem, node-<id>-key.pem) \
         and {nodes} API certificates for localhost ([api_tls]: api-<id>.pem, api-<id>-key.pem) for cluster \
         {cluster:?} to {out}"
    );
    for name in &clients {
        println!("wrote the client certificate client-{name}.pem (and its key) for [[auth.certificates]] name = {name:?}");
    }
    if args.iter().any(|a| a == "--api-ca") {
        write_api_ca(dir, &cluster)?;
    }
    Ok(())
}

/// A CA of its own for API certificates issued where the nodes run (`raft-node
/// issue-api-cert`): its key cannot issue peer certificates.
fn write_api_ca(dir: &Path, cluster: &str) -> Result<()> {
    let ca = raft_tls::DevCa::new(&format!("api.{cluster}"))?;
    std::fs::write(dir.join("api-ca.pem"), ca.cert_pem()).context("writing api-ca.pem")?;
    let key = dir.join("api-ca-key.pem");
    std::fs::write(&key, ca.key_pem()).context("writing api-ca-key.pem")?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    println!(
        "wrote an API CA (api-ca.pem, api-ca-key.pem) for `raft-node issue-api-cert --cluster {cluster}`: \
         the nodes' HTTPS certificates, issued where they run"
    );
    Ok(())
}

/// Words that must not appear in the protocol module: it is a pure state machine.
const PROTOCOL_FORBIDDEN: &[&str] =
    &["tokio", "std::time", "Instant::now", "SystemTime", "std::fs", "std::net", "std::thread", "thread_rng"];

/// The workspace root. `cargo run` sets `CARGO_MANIFEST_DIR` at run time too; the value
/// compiled in is only a fallback (a binary cached in a shared target dir may come from
/// another clone).
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    Ok(manifest_dir.parent().context("no workspace root")?.to_path_buf())
}

fn tidy() -> Result<()> {
    let root = workspace_root()?;
    let mut problems = Vec::new();
    for file in rust_files(&root.join("raft-core/src/protocol"))? {
        let text = std::fs::read_to_string(&file)?;
        for (n, line) in text.lines().enumerate() {
            for word in PROTOCOL_FORBIDDEN {
                if line.contains(word) && !line.trim_start().starts_with("//") {
                    problems.push(format!("{}:{}: protocol must not use `{word}`", file.display(), n + 1));
                }
            }
        }
    }
    if problems.is_empty() {
        println!("tidy: ok");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("tidy found {} problem(s)", problems.len())
    }
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(out)
}
