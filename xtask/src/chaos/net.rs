//! Addresses and `nft` rules of a chaos run. Node N is 127.0.0.N; the proxy connects onward
//! from 127.0.1.N for node N's links.
//!
//! - Root mode, inside the run's own network namespace: Raft port 7000+N, HTTP 8080+N; the
//!   proxy listens on 127.0.2.1, and with the TCP transport a DNAT rule sends node i's
//!   connections to node j through the proxy port of the link i→j. Partitions are drop rules
//!   per ordered address pair, hooked before NAT so they see the nodes' own addresses; they
//!   match only Raft ports, so the test's clients always reach every node's HTTP API.
//! - Rootless, on the host's loopback (no namespace, no nft): Raft port 27000+N, HTTP
//!   28080+N, and each node advertises 127.0.0.N:27100+N, where the proxy in front of it
//!   listens; the proxy tells the links apart by the source address (each node binds its
//!   outbound connections to its own address) and also makes the partitions.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub const TABLE: &str = "raftchaos";
pub const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);

pub fn node_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, id as u8)
}

/// Where the proxy's onward connections for node `id`'s links come from.
pub fn proxy_source_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, id as u8)
}

/// The node whose address `ip` is, among `ids`.
pub fn node_of(ids: &[u64], ip: IpAddr) -> Option<u64> {
    ids.iter().copied().find(|&id| ip == IpAddr::V4(node_ip(id)))
}

/// Where a run's nodes listen and what they advertise (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// On the host's loopback, without root.
    pub rootless: bool,
}

impl Addrs {
    fn port_offset(self) -> u16 {
        if self.rootless {
            20000
        } else {
            0
        }
    }

    pub fn raft_port(self, id: u64) -> u16 {
        7000 + self.port_offset() + id as u16
    }

    pub fn raft_addr(self, id: u64) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(node_ip(id)), self.raft_port(id))
    }

    pub fn client_addr(self, id: u64) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(node_ip(id)), 8080 + self.port_offset() + id as u16)
    }

    /// Rootless: the proxy in front of node `id`, which the other nodes dial.
    pub fn advertised_raft_addr(self, id: u64) -> Option<SocketAddr> {
        self.rootless.then(|| SocketAddr::new(IpAddr::V4(node_ip(id)), 7100 + self.port_offset() + id as u16))
    }
}

/// The proxy's port for the link from `from` to `to`.
pub fn proxy_port(from: u64, to: u64) -> u16 {
    20000 + (from * 100 + to) as u16
}

fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running nft (Debian package nftables: apt-get install nftables)")?;
    child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("nft failed on:\n{script}");
    }
    Ok(())
}

/// The run's nft table. Dropping it deletes the table (the namespace goes too, after the run).
pub struct Firewall {
    ids: Vec<u64>,
}

impl Firewall {
    /// Installs the table: an empty partition chain, and the DNAT rules to the proxy when
    /// `via_proxy`.
    pub fn install(ids: &[u64], via_proxy: bool) -> Result<Self> {
        let raft_port = |id| Addrs { rootless: false }.raft_port(id);
        let mut redirect = String::new();
        if via_proxy {
            for &i in ids {
                for &j in ids {
                    if i != j {
                        redirect.push_str(&format!(
                            "    ip saddr {} ip daddr {} tcp dport {} dnat to {}:{}\n",
                            node_ip(i),
                            node_ip(j),
                            raft_port(j),
                            PROXY_IP,
                            proxy_port(i, j)
                        ));
                    }
                }
            }
        }
        let _ = Command::new("nft").args(["delete", "table", "ip", TABLE]).stderr(Stdio::null()).status();
        nft(&format!(
            "table ip {TABLE} {{\n  chain cut {{\n    type filter hook output priority -150; policy accept;\n  }}\n  \
             chain toproxy {{\n    type nat hook output priority -100; policy accept;\n{redirect}  }}\n}}\n"
        ))?;
        Ok(Self { ids: ids.to_vec() })
    }

    /// Drops every packet from `from` to `to` on Raft ports, for each pair in `cuts` (and
    /// lets everything else through).
    pub fn set_cuts(&self, cuts: &BTreeSet<(u64, u64)>) -> Result<()> {
        let raft_port = |id| Addrs { rootless: false }.raft_port(id);
        let mut script = format!("flush chain ip {TABLE} cut\n");
        for &(i, j) in cuts {
            if !self.ids.contains(&i) || !self.ids.contains(&j) {
                continue;
            }
            let from = format!("{{ {}, {} }}", node_ip(i), proxy_source_ip(i));
            let to = format!("{{ {}, {} }}", node_ip(j), proxy_source_ip(j));
            // i's packets to j's Raft port (its connection to j, TCP or QUIC) and from i's
            // Raft port (answers and ACKs on j's connection to i).
            script.push_str(&format!(
                "add rule ip {TABLE} cut ip saddr {from} ip daddr {to} th dport {} drop\n",
                raft_port(j)
            ));
            script.push_str(&format!(
                "add rule ip {TABLE} cut ip saddr {from} ip daddr {to} th sport {} drop\n",
                raft_port(i)
            ));
        }
        nft(&script)
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "ip", TABLE]).stderr(Stdio::null()).status();
    }
}

/// Checks that a socket bound to node 2's address before connecting arrives with that
/// source address (what the transports rely on for per-address partitions).
pub async fn check_source_binding() -> Result<()> {
    let listener = tokio::net::TcpListener::bind((node_ip(1), 0)).await?;
    let target = listener.local_addr()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(node_ip(2)), 0))?;
    let _stream = socket.connect(target).await?;
    let (_, from) = listener.accept().await?;
    if from.ip() != IpAddr::V4(node_ip(2)) {
        bail!(
            "a connection bound to {} arrived from {}: per-address partitions cannot work",
            node_ip(2),
            from.ip()
        );
    }
    Ok(())
}
