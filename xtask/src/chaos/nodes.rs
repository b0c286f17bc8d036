//! The `raft-node` processes of a chaos run: start (optionally under libfaketime), SIGKILL,
//! SIGSTOP/SIGCONT, data dirs (each its own size-limited tmpfs in root mode), and teardown on
//! drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cluster::{spawn_node, ConfigCommon, NodeSpec};
use crate::procs;

/// Debian's libfaketime (package `libfaketime`), multi-threaded variant.
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// One node's process and files.
pub struct Node {
    pub spec: NodeSpec,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// `faketime -f` spec while the node runs with a skewed clock.
    pub faketime: Option<String>,
}

/// Every node of the run. Dropping it kills them all.
pub struct Nodes {
    binary: PathBuf,
    pub common: ConfigCommon,
    pub nodes: BTreeMap<u64, Node>,
    /// Each data dir is a tmpfs of this many MiB (root mode), else a plain directory.
    tmpfs_mib: Option<u64>,
    /// The stalled- or failing-disk shim ([`build_stall_shim`]), preloaded into every node
    /// when built.
    pub stall_shim: Option<PathBuf>,
    /// Where the flag files that stall a node's fsyncs go.
    dir: PathBuf,
}

/// The C source of the stalled-disk shim.
const STALL_SHIM_SOURCE: &str = include_str!("stall_fsync.c");

/// Builds the stalled-disk shim into `dir` with `cc` (a shared library preloaded into the
/// nodes: their fsyncs wait while a flag file exists). `Err` says why it cannot be built.
pub fn build_stall_shim(dir: &Path) -> Result<PathBuf> {
    let source = dir.join("stall_fsync.c");
    let library = dir.join("stall_fsync.so");
    std::fs::write(&source, STALL_SHIM_SOURCE)?;
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .context("running cc")?;
    if !built.status.success() {
        bail!("cc failed: {}", String::from_utf8_lossy(&built.stderr).trim());
    }
    Ok(library)
}

impl Nodes {
    pub fn new(
        binary: PathBuf,
        common: ConfigCommon,
        specs: &[NodeSpec],
        dir: &Path,
        tmpfs_mib: Option<u64>,
    ) -> Result<Self> {
        let mut nodes = BTreeMap::new();
        for spec in specs {
            let config = dir.join(format!("node{}.toml", spec.id));
            std::fs::write(&config, common.node_config(spec, specs, None))?;
            std::fs::create_dir_all(&spec.data_dir)?;
            if let Some(mib) = tmpfs_mib {
                let status = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "raftchaos"])
                    .arg(&spec.data_dir)
                    .status()
                    .context("running mount")?;
                if !status.success() {
                    bail!("mounting a tmpfs on {}", spec.data_dir.display());
                }
            }
            let log = dir.join(format!("node{}.log", spec.id));
            nodes.insert(
                spec.id,
                Node { spec: spec.clone(), config, log, child: None, paused: false, faketime: None },
            );
        }
        Ok(Self { binary, common, nodes, tmpfs_mib, stall_shim: None, dir: dir.to_path_buf() })
    }

    /// The file whose existence stalls node `id`'s fsyncs (with the shim preloaded).
    pub fn stall_flag(&self, id: u64) -> PathBuf {
        self.dir.join(format!("stall-node{id}"))
    }

    /// While this file exists, node `id`'s fsyncs fail with EIO (see `stall_fsync.c`).
    pub fn eio_flag(&self, id: u64) -> PathBuf {
        self.dir.join(format!("eio-node{id}"))
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn node(&mut self, id: u64) -> Result<&mut Node> {
        self.nodes.get_mut(&id).with_context(|| format!("no node {id}"))
    }

    pub fn start(&mut self, id: u64) -> Result<()> {
        let binary = self.binary.clone();
        if self.node(id)?.child.is_some() {
            bail!("node {id} is already running");
        }
        let mut command = Command::new(&binary);
        // Plain log files (no ANSI colours).
        command.env("NO_COLOR", "1");
        let mut preload = Vec::new();
        if let Some(shim) = &self.stall_shim {
            preload.push(shim.display().to_string());
            command.env("RAFT_CHAOS_STALL_FLAG", self.stall_flag(id));
            command.env("RAFT_CHAOS_EIO_FLAG", self.eio_flag(id));
        }
        let node = self.nodes.get_mut(&id).with_context(|| format!("no node {id}"))?;
        if let Some(spec) = &node.faketime {
            // libfaketime preloaded into raft-node itself (the `faketime` wrapper would be a
            // parent process that a SIGKILL of the node's pid misses).
            preload.push(FAKETIME_LIB.to_string());
            command.env("FAKETIME", spec).env("FAKETIME_NO_CACHE", "1");
        }
        if !preload.is_empty() {
            command.env("LD_PRELOAD", preload.join(":"));
        }
        let child = spawn_node(command, &node.config, &node.log)?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// SIGKILL (also of a paused process), and reaps it.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        if let Some(mut child) = node.child.take() {
            // The whole process group (the node is its leader).
            let _ = procs::signal_group(child.id(), "-KILL");
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
        Ok(())
    }

    pub fn pause(&mut self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        if let Some(child) = &node.child {
            procs::signal_group(child.id(), "-STOP")?;
            node.paused = true;
        }
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        if let (Some(child), true) = (&node.child, node.paused) {
            procs::signal_group(child.id(), "-CONT")?;
        }
        node.paused = false;
        Ok(())
    }

    /// Whether the process runs; a process that exited is reaped (and its status returned
    /// as `Err`).
    pub fn poll(&mut self, id: u64) -> Result<bool, std::process::ExitStatus> {
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(false) };
        let Some(child) = node.child.as_mut() else { return Ok(false) };
        match child.try_wait() {
            Ok(None) => Ok(true),
            Ok(Some(status)) => {
                node.child = None;
                Err(status)
            }
            Err(_) => Ok(true),
        }
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        matches!(self.poll(id), Ok(true))
    }

    /// Removes everything in a (stopped) node's data dir; the mount point stays.
    pub fn wipe_data(&mut self, id: u64) -> Result<()> {
        let dir = self.node(id)?.spec.data_dir.clone();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Rewrites a node's config so that it joins the running cluster through `through`.
    pub fn set_join_config(&mut self, id: u64, through: &[String]) -> Result<()> {
        let specs: Vec<NodeSpec> = self.nodes.values().map(|n| n.spec.clone()).collect();
        let text = {
            let node = self.node(id)?;
            let spec = node.spec.clone();
            (node.config.clone(), spec)
        };
        let body = self.common.node_config(&text.1, &specs, Some(through));
        std::fs::write(&text.0, body)?;
        Ok(())
    }

    pub fn has_tmpfs(&self) -> bool {
        self.tmpfs_mib.is_some()
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let Some(node) = self.nodes.get(&id) else { return String::new() };
        let text = std::fs::read_to_string(&node.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn kill_all(&mut self) {
        for id in self.ids() {
            let _ = self.kill(id);
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.kill_all();
        // Best effort: the tmpfs mounts live in this process's private mount namespace and go
        // with it anyway.
        if self.tmpfs_mib.is_some() {
            for node in self.nodes.values() {
                let _ = Command::new("umount").arg("-l").arg(&node.spec.data_dir).status();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
