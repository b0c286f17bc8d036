//! openraft's own benchmark binary (`benchmarks/minimal` in openraft's repository), run as a
//! child process beside the in-process benchmarks, so that the glue of
//! [`crate::openraft_cluster`] can be checked against openraft as openraft runs itself.
//!
//! The binary is built from a checkout of openraft's repository by `cargo xtask bench core
//! --openraft DIR`; nothing of it is part of this workspace.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// Runs openraft's `bench` binary once with 3 members, `clients` client tasks and `total`
/// operations on `server_workers` + `client_workers` threads; returns its operations per
/// second, computed from the `ns/op` it prints.
///
/// # Errors
///
/// Fails if the binary cannot be started, exits unsuccessfully, or prints no `ns/op` figure.
pub fn run(
    bin: &Path,
    server_workers: usize,
    client_workers: usize,
    clients: usize,
    total: usize,
) -> anyhow::Result<f64> {
    let out = Command::new(bin)
        .args(["--members", "3", "--batch", "1"])
        .args(["--server-workers", &server_workers.to_string()])
        .args(["--client-workers", &client_workers.to_string()])
        .args(["--clients", &clients.to_string(), "--operations", &total.to_string()])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({}): {stdout}{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ns_per_op(&stdout).map(|ns| 1e9 / ns).with_context(|| format!("no 'ns/op' figure in: {stdout}"))
}

/// The `ns/op: N` figure of the binary's summary line.
fn parse_ns_per_op(stdout: &str) -> Option<f64> {
    let rest = stdout.split("ns/op:").nth(1)?;
    let figure: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    figure.parse::<f64>().ok().filter(|ns| *ns > 0.0)
}

#[cfg(test)]
mod tests {
    use super::parse_ns_per_op;

    #[test]
    fn reads_the_summary_line() {
        let line = "client_workers: 1, server_workers: 2, clients: 256, n: 400k (400_000), batch: 1, \
                    raft_members: {0, 1, 2}: time: 800ms, ns/op: 2000, op/ms: 500\n";
        assert_eq!(parse_ns_per_op(line), Some(2000.0));
        assert_eq!(parse_ns_per_op("time: 1s, ns/op: 0, op/ms: 1"), None);
        assert_eq!(parse_ns_per_op("no figure"), None);
    }
}
