//! A local etcd cluster for comparison: members on 127.0.0.1 with their own ports, data and
//! logs under `target/bench/etcd/`, started from empty data, stopped on drop. etcd's defaults
//! otherwise (the WAL is fsynced before a write is acknowledged, as raft-node's RocksDB log is).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::{Method, StatusCode};

use super::load::Connection;
use crate::procs::Children;

/// Member N serves clients on `CLIENT_PORT_BASE + N` and peers on `PEER_PORT_BASE + N`.
const CLIENT_PORT_BASE: u16 = 23790;
const PEER_PORT_BASE: u16 = 23890;
/// How long the members get to elect a leader and report healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// The `etcd` binary on `PATH`, if one is installed.
pub(crate) fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("etcd")).find(|candidate| candidate.is_file())
}

/// `etcd 3.4.23`, from `etcd --version`'s first line (`etcd Version: 3.4.23`).
pub(crate) fn version(binary: &Path) -> String {
    let output = Command::new(binary).arg("--version").output().ok();
    let text = output.map(|out| String::from_utf8_lossy(&out.stdout).into_owned()).unwrap_or_default();
    match text.lines().next().and_then(|line| line.strip_prefix("etcd Version:")) {
        Some(version) => format!("etcd {}", version.trim()),
        None => "etcd (unknown version)".to_string(),
    }
}

/// etcd refuses to start on architectures other than amd64 (and, in 3.5, arm64) unless
/// `ETCD_UNSUPPORTED_ARCH` names the architecture, in Go's spelling.
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => None,
        "aarch64" => Some("arm64"),
        "x86" => Some("386"),
        "powerpc64" => Some("ppc64le"),
        other => Some(other),
    }
}

/// A running etcd cluster; dropping it stops the members.
pub(crate) struct EtcdCluster {
    children: Children,
    members: u64,
}

impl EtcdCluster {
    /// Starts `members` members from empty data dirs under `dir` and waits until every one
    /// reports healthy (which needs a leader), each with `extra` on its command line. The
    /// members' handles go into `children`.
    pub(crate) async fn start(
        binary: &Path,
        dir: &Path,
        members: u64,
        extra: &[&str],
        children: Children,
    ) -> Result<Self> {
        Self::start_with(binary, dir, members, extra, None, children).await
    }

    /// [`start`](Self::start), with mutual TLS on the peer URLs when `peer_tls` is given.
    pub(crate) async fn start_with(
        binary: &Path,
        dir: &Path,
        members: u64,
        extra: &[&str],
        peer_tls: Option<&PeerTls>,
        children: Children,
    ) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
        for id in 1..=members {
            for addr in [client_addr(id), peer_addr(id)] {
                if std::net::TcpListener::bind(&addr).is_err() {
                    bail!("{addr} is in use; another etcd of this benchmark still running?");
                }
            }
        }
        let peer_scheme = if peer_tls.is_some() { "https" } else { "http" };
        let initial_cluster: Vec<String> =
            (1..=members).map(|id| format!("m{id}={peer_scheme}://{}", peer_addr(id))).collect();
        let cluster = Self { children, members };
        for id in 1..=members {
            let log = std::fs::File::create(dir.join(format!("m{id}.log")))?;
            let mut command = Command::new(binary);
            command
                .arg(format!("--name=m{id}"))
                .arg(format!("--data-dir={}", dir.join(format!("m{id}")).display()))
                .arg(format!("--listen-client-urls=http://{}", client_addr(id)))
                .arg(format!("--advertise-client-urls=http://{}", client_addr(id)))
                .arg(format!("--listen-peer-urls={peer_scheme}://{}", peer_addr(id)))
                .arg(format!("--initial-advertise-peer-urls={peer_scheme}://{}", peer_addr(id)))
                .arg(format!("--initial-cluster={}", initial_cluster.join(",")))
                .arg("--initial-cluster-token=bench-http")
                .arg("--initial-cluster-state=new")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr")
                .args(extra)
                .args(peer_tls.map(PeerTls::args).unwrap_or_default())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0);
            if let Some(arch) = unsupported_arch() {
                command.env("ETCD_UNSUPPORTED_ARCH", arch);
            }
            let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
            println!("started etcd member m{id} (pid {})", child.id());
            cluster.children.insert(&format!("m{id}"), child);
        }
        cluster.wait_healthy(dir).await?;
        Ok(cluster)
    }

    async fn wait_healthy(&self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        for id in 1..=self.members {
            loop {
                if healthy(&client_addr(id)).await {
                    break;
                }
                if self.children.running().len() as u64 != self.members {
                    bail!("an etcd member exited; see the logs in {}", dir.display());
                }
                if Instant::now() > deadline {
                    bail!("etcd not healthy after {HEALTHY_WITHIN:?}; see the logs in {}", dir.display());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The position in [`endpoints`](Self::endpoints) of the member that leads: the one whose
    /// own id is the leader its status names (`POST /v3/maintenance/status`).
    pub(crate) async fn leader(&self) -> Result<usize> {
        leader_among(&self.endpoints(), HEALTHY_WITHIN).await
    }

    /// The members' client addresses.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        (1..=self.members).map(client_addr).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.children.stop_all();
    }
}

fn client_addr(id: u64) -> String {
    format!("127.0.0.1:{}", u64::from(CLIENT_PORT_BASE) + id)
}

fn peer_addr(id: u64) -> String {
    format!("127.0.0.1:{}", u64::from(PEER_PORT_BASE) + id)
}

/// `GET /health` answers `{"health":"true"}`.
async fn healthy(addr: &str) -> bool {
    let Ok(mut conn) = Connection::open(addr).await else {
        return false;
    };
    let answer =
        tokio::time::timeout(Duration::from_secs(2), conn.send(Method::GET, "/health", Default::default()));
    match answer.await {
        Ok(Ok((StatusCode::OK, body))) => {
            serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v.get("health").cloned())
                == Some(serde_json::Value::String("true".into()))
        }
        _ => false,
    }
}

/// The position in `endpoints` of the etcd member that leads: the one whose own id is the
/// leader its status names (`POST /v3/maintenance/status`), waiting up to `within` for one.
pub(crate) async fn leader_among(endpoints: &[String], within: Duration) -> Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        for (position, addr) in endpoints.iter().enumerate() {
            if let Some(status) = status(addr).await {
                let own = status.pointer("/header/member_id").and_then(|v| v.as_str());
                let leader = status.get("leader").and_then(|v| v.as_str());
                if own.is_some() && own == leader {
                    return Ok(position);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no etcd member says it leads after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member's status through the JSON gateway (ids are decimal strings there).
async fn status(addr: &str) -> Option<serde_json::Value> {
    let mut conn = Connection::open(addr).await.ok()?;
    let body = bytes::Bytes::from_static(b"{}");
    let answer =
        tokio::time::timeout(Duration::from_secs(2), conn.send(Method::POST, "/v3/maintenance/status", body));
    match answer.await {
        Ok(Ok((StatusCode::OK, body))) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

/// Peer certificates for an etcd cluster on this machine: one CA, one certificate for
/// `127.0.0.1` and `localhost` that every member uses as server and as client.
pub(crate) struct PeerTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl PeerTls {
    /// Writes a new CA and the members' certificate under `dir/etcd-peer-certs`.
    pub(crate) fn generate(dir: &Path) -> Result<Self> {
        let dir = dir.join("etcd-peer-certs");
        std::fs::create_dir_all(&dir)?;
        let ca = raft_tls::DevCa::new("etcd-bench")?;
        let names = ["127.0.0.1".to_string(), "localhost".to_string()];
        let (cert_pem, key_pem) = ca.issue_server(&names)?;
        let tls = Self { ca: dir.join("ca.pem"), cert: dir.join("peer.pem"), key: dir.join("peer-key.pem") };
        std::fs::write(&tls.ca, ca.cert_pem())?;
        std::fs::write(&tls.cert, cert_pem)?;
        std::fs::write(&tls.key, key_pem)?;
        Ok(tls)
    }

    /// etcd's flags: TLS on the peer URLs, and peers must present a certificate of the CA.
    fn args(&self) -> Vec<String> {
        vec![
            format!("--peer-cert-file={}", self.cert.display()),
            format!("--peer-key-file={}", self.key.display()),
            format!("--peer-trusted-ca-file={}", self.ca.display()),
            "--peer-client-cert-auth=true".to_string(),
        ]
    }
}
