//! `cargo xtask setup [--ci]`: checks what building (and, with `--ci`, the full test run)
//! needs from the system, and installs what is missing where it can (Debian or Ubuntu, as
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

/// What `cargo xtask ci` needs besides: the chaos runs' partitions, network namespace and
/// clock skew.
const CI: &[Requirement] = &[
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
    ensure(ci)?;
    if ci {
        ensure_nextest()?;
    }
    println!("setup: everything needed is installed");
    Ok(())
}

/// Installs the missing packages of [`BUILD`] (and [`CI`] with `ci`), or fails with the
/// command to run.
pub(crate) fn ensure(ci: bool) -> Result<()> {
    let wanted = BUILD.iter().chain(if ci { CI } else { &[] });
    let missing: Vec<&Requirement> = wanted.filter(|r| !(r.present)()).collect();
    if missing.is_empty() {
        return Ok(());
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
