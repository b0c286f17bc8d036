//! Child processes that xtask starts and must stop again: a local `raft-node` cluster, an etcd
//! cluster. [`Children`] owns their handles (so that a killed child is reaped, not left a
//! zombie that still has a `/proc` entry); its owner stops them on drop, and
//! [`stop_on_ctrl_c`] stops them on Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a child gets to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// Running child processes by name, shared between their owner and the Ctrl-C handler.
#[derive(Clone, Default)]
pub(crate) struct Children(Arc<Mutex<BTreeMap<String, Child>>>);

impl Children {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Child>> {
        // A panic while holding the lock leaves the map intact: keep using it.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes ownership of a started child.
    pub(crate) fn insert(&self, name: &str, child: Child) {
        if let Some(mut old) = self.lock().insert(name.to_string(), child) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// Names and pids of the children still running.
    pub(crate) fn running(&self) -> Vec<(String, u32)> {
        let mut children = self.lock();
        children
            .iter_mut()
            .filter_map(|(name, child)| {
                matches!(child.try_wait(), Ok(None)).then(|| (name.clone(), child.id()))
            })
            .collect()
    }

    /// SIGKILLs a child and reaps it; returns the instant just before the signal was sent.
    pub(crate) fn kill(&self, name: &str) -> Result<Instant> {
        let mut child = self.lock().remove(name).with_context(|| format!("{name} was not started"))?;
        let at = Instant::now();
        child.kill().with_context(|| format!("killing {name}"))?;
        child.wait().with_context(|| format!("reaping {name}"))?;
        Ok(at)
    }

    /// Stops every child: SIGTERM, then SIGKILL for those still running after a grace period.
    /// Best effort: problems are printed, not returned (this runs on drop and on Ctrl-C).
    pub(crate) fn stop_all(&self) {
        let mut children = std::mem::take(&mut *self.lock());
        for (name, child) in &mut children {
            if matches!(child.try_wait(), Ok(None)) {
                if let Err(e) = signal(child.id(), "-TERM") {
                    eprintln!("stopping {name}: {e:#}");
                }
                // A stopped process (the benchmark pauses idle systems) acts on SIGTERM only
                // once it goes on; without this it would wait out the grace and be killed.
                let _ = signal(child.id(), "-CONT");
            }
        }
        let deadline = Instant::now() + TERM_GRACE;
        for (name, child) in &mut children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("{name} did not stop within {TERM_GRACE:?}; SIGKILL");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// Sends `sig` (`-TERM`, `-KILL`, `-STOP`, ...) to `pid` with `kill(1)` (std offers only
/// SIGKILL, and this crate has no unsafe code).
pub(crate) fn signal(pid: u32, sig: &str) -> Result<()> {
    kill(sig, &pid.to_string())
}

/// Sends `sig` to every process of the process group `pgid`.
pub(crate) fn signal_group(pgid: u32, sig: &str) -> Result<()> {
    kill(sig, &format!("-{pgid}"))
}

fn kill(sig: &str, target: &str) -> Result<()> {
    let status = Command::new("kill").args([sig, "--", target]).status().context("running kill")?;
    if !status.success() {
        bail!("kill {sig} {target} failed");
    }
    Ok(())
}

/// Whether a process with this pid exists (a zombie counts: reap your own children).
pub(crate) fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

static SIGNAL_WATCHER: Once = Once::new();
static STOP_ON_SIGNAL: Mutex<Vec<Children>> = Mutex::new(Vec::new());

/// Stops these children when the user presses Ctrl-C (SIGINT) or this process gets SIGTERM,
/// then exits with status 130 or 143. The first call installs the handler (a thread waiting
/// for either signal); without any call both keep their default effect.
pub(crate) fn stop_on_ctrl_c(children: &Children) {
    use tokio::signal::unix::{signal as on_signal, SignalKind};
    STOP_ON_SIGNAL.lock().unwrap_or_else(|p| p.into_inner()).push(children.clone());
    SIGNAL_WATCHER.call_once(|| {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("no Ctrl-C handler ({e}); Ctrl-C may leave processes running");
                return;
            }
        };
        // Registered before returning, so that a signal from now on is ours.
        let signals = runtime.block_on(async {
            Ok::<_, std::io::Error>((
                on_signal(SignalKind::interrupt())?,
                on_signal(SignalKind::terminate())?,
            ))
        });
        let (mut interrupt, mut terminate) = match signals {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("no Ctrl-C handler ({e}); Ctrl-C may leave processes running");
                return;
            }
        };
        // Lives until the process exits; it holds nothing that needs a shutdown.
        std::thread::spawn(move || {
            let status = runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => 130,
                    _ = terminate.recv() => 143,
                }
            });
            eprintln!("\ninterrupted: stopping the processes started");
            let all = std::mem::take(&mut *STOP_ON_SIGNAL.lock().unwrap_or_else(|p| p.into_inner()));
            for children in all {
                children.stop_all();
            }
            std::process::exit(status);
        });
    });
}
