//! `cargo xtask setup [--ci]`: checks what building, the tests (a browser for the cluster
//! page's test) and, with `--ci`, the chaos runs need from the system, and installs what is missing where it can (Debian or Ubuntu, as
//! root or with a passwordless sudo), saying what it installs. Elsewhere it stops with the
//! exact command to run. `cargo xtask cluster up` and `.ci/run` use the same check.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A system prerequisite: how to tell it is there, and the Debian packages that provide it.
struct Requirement {
    /// What needs it.
    why: &'static str,
    packages: &'static [&'static str],
    present: fn() -> bool,
}

/// What any build needs: clang and libclang, for the RocksDB bindings generated at build time.
const BUILD: &[Requirement] = &[Requirement {
    why: "RocksDB's Rust bindings (generated with libclang at build time)",
    packages: &["clang", "libclang-dev"],
    present: || on_path("clang") && libclang_installed(),
}];

/// What the tests need besides: a headless browser for the cluster page's test, kubectl and
/// systemd-analyze for the deployment files' tests.
const TEST: &[Requirement] = &[
    Requirement {
        why: "the cluster page's browser test (headless Chromium)",
        packages: &["chromium"],
        present: || on_path("chromium") || on_path("chromium-browser") || on_path("google-chrome"),
    },
    Requirement {
        why: "rendering the Kubernetes manifests (kubectl kustomize)",
        packages: &["kubernetes-client"],
        present: || on_path("kubectl"),
    },
    Requirement {
        why: "verifying the systemd unit (systemd-analyze)",
        packages: &["systemd"],
        present: || on_path("systemd-analyze"),
    },
];

/// Python tools the tests run, from PyPI: (command, package).
const TEST_PIP: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes-validate")];

/// What the chaos runs and the benchmark smoke run of `cargo xtask ci` need besides:
/// partitions, a network namespace, clock skew, and etcd to compare with.
const CHAOS: &[Requirement] = &[
    Requirement {
        why: "the benchmark's comparison with etcd (smoke-tested by `cargo xtask ci`)",
        packages: &["etcd-server"],
        present: || on_path("etcd"),
    },
    Requirement { why: "chaos partitions (nft)", packages: &["nftables"], present: || on_path("nft") },
    Requirement {
        why: "the chaos run's network namespace (ip)",
        packages: &["iproute2"],
        present: || on_path("ip"),
    },
    Requirement {
        why: "chaos clock skew (libfaketime)",
        packages: &["libfaketime"],
        present: || in_lib_subdir("faketime", "libfaketimeMT.so.1"),
    },
];

/// `cargo xtask setup [--ci]`.
pub(crate) fn setup(args: &[String]) -> Result<()> {
    let ci = args.iter().any(|a| a == "--ci");
    if let Some(a) = args.iter().find(|a| *a != "--ci") {
        bail!("usage: cargo xtask setup [--ci], not {a}");
    }
    ensure(if ci { Needs::Chaos } else { Needs::Test })?;
    if ci {
        ensure_nextest()?;
    }
    println!("setup: everything needed is installed");
    Ok(())
}

/// What a command needs from the system, each level including the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Needs {
    /// Building (`cargo xtask cluster up`): [`BUILD`].
    Build,
    /// The tests (`cargo xtask test`): [`TEST`] too.
    Test,
    /// The chaos runs (`cargo xtask ci`): [`CHAOS`] too.
    Chaos,
}

/// Installs the missing packages of what `needs` calls for, or fails with the command to run.
pub(crate) fn ensure(needs: Needs) -> Result<()> {
    let wanted = BUILD
        .iter()
        .chain(if needs >= Needs::Test { TEST } else { &[] })
        .chain(if needs >= Needs::Chaos { CHAOS } else { &[] });
    let missing: Vec<&Requirement> = wanted.filter(|r| !(r.present)()).collect();
    if missing.is_empty() {
        return if needs >= Needs::Test { ensure_pip() } else { Ok(()) };
    }
    let packages: Vec<&str> = missing.iter().flat_map(|r| r.packages.iter().copied()).collect();
    let command = format!("sudo apt-get install -y {}", packages.join(" "));
    for r in &missing {
        println!("setup: missing {} for {}", r.packages.join(" "), r.why);
    }
    if !on_path("apt-get") {
        bail!("install these packages with your system's package manager: {}", packages.join(" "));
    }
    let sudo = if crate::chaos::is_root() {
        None
    } else if Command::new("sudo").args(["-n", "true"]).output().is_ok_and(|o| o.status.success()) {
        Some("sudo")
    } else {
        bail!("not root and no passwordless sudo; run this, then try again:\n  {command}");
    };
    println!("setup: installing {} with apt-get", packages.join(" "));
    apt(sudo, &["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q"];
    install.extend(packages.iter().copied());
    apt(sudo, &install)?;
    let still: Vec<&str> =
        missing.iter().filter(|r| !(r.present)()).flat_map(|r| r.packages.iter().copied()).collect();
    if !still.is_empty() {
        bail!("apt-get ran, but these are still missing: {}; try: {command}", still.join(" "));
    }
    if needs >= Needs::Test {
        ensure_pip()?;
    }
    Ok(())
}

/// Installs the missing [`TEST_PIP`] tools with pip (for this user), or fails with the command.
fn ensure_pip() -> Result<()> {
    let missing: Vec<&str> =
        TEST_PIP.iter().filter(|(command, _)| !on_path(command)).map(|&(_, package)| package).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("python3 -m pip install --user {}", missing.join(" "));
    println!("setup: installing {} from PyPI (the deployment files' tests)", missing.join(" "));
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]);
    if !crate::chaos::is_root() {
        pip.arg("--user");
    }
    let status = pip.args(&missing).status().with_context(|| format!("running pip; try: {command}"))?;
    if !status.success() {
        bail!("pip failed ({status}); try: {command}");
    }
    let still: Vec<&str> = TEST_PIP.iter().filter(|(c, _)| !on_path(c)).map(|&(c, _)| c).collect();
    if !still.is_empty() {
        bail!(
            "pip ran, but {} is not on PATH (add pip's script directory, e.g. ~/.local/bin)",
            still.join(" ")
        );
    }
    Ok(())
}

fn apt(sudo: Option<&str>, args: &[&str]) -> Result<()> {
    let mut command = match sudo {
        Some(sudo) => {
            let mut c = Command::new(sudo);
            c.arg("apt-get");
            c
        }
        None => Command::new("apt-get"),
    };
    let status =
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive").status().context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `cargo nextest`, which `cargo xtask test` runs the tests with.
pub(crate) fn ensure_nextest() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let present =
        Command::new(&cargo).args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("setup: installing cargo-nextest from crates.io (a few minutes: it is compiled)");
    crate::cargo(&["install", "cargo-nextest", "--locked"])
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// libclang as Debian installs it: `/usr/lib/llvm-*/lib/libclang*.so*`.
fn libclang_installed() -> bool {
    let Ok(dirs) = std::fs::read_dir("/usr/lib") else { return false };
    dirs.flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("llvm-"))
        .any(|d| has_file(&d.path().join("lib"), |name| name.starts_with("libclang") && name.contains(".so")))
}

/// `/usr/lib/*/<subdir>/<file>` (the multiarch library directories).
fn in_lib_subdir(subdir: &str, file: &str) -> bool {
    let Ok(dirs) = std::fs::read_dir("/usr/lib") else { return false };
    dirs.flatten().any(|d| d.path().join(subdir).join(file).is_file())
}

fn has_file(dir: &Path, matches: impl Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir)
        .is_ok_and(|entries| entries.flatten().any(|e| matches(&e.file_name().to_string_lossy())))
}
