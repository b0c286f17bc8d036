//! A user-space fault-injecting TCP proxy. In root mode it has one listener per ordered link
//! (from node i to node j), and an nft DNAT rule sends node i's connections for node j there.
//! Rootless, it has one listener per node j, at the address j advertises, and tells the link
//! by the connection's source address (127.0.0.i). Either way it connects onward to node j
//! from 127.0.1.i and pumps bytes both ways: i's bytes as the link i→j's [`LinkMode`] says,
//! j's answers as the link j→i's (so a one-way cut also stops the answers on the other
//! node's connection).
//!
//! On a TCP stream only some network faults make sense: **duplication and reordering are not
//! possible** (the kernel below the proxy delivers bytes once and in order; a proxy that
//! duplicated or reordered bytes would corrupt frames, not model a network), and **loss** is a
//! stall (bytes stop flowing; TCP would retransmit) or a reset. Those faults exist in the
//! deterministic simulator, which works on messages.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::net::{node_ip, node_of, proxy_port, proxy_source_ip, Addrs, PROXY_IP};

/// How a link behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Bytes go through at once.
    Pass,
    /// Every chunk is held this long (a slow, long link).
    Delay(Duration),
    /// Nothing goes through (a lossy link: TCP would keep retransmitting).
    Stall,
    /// `bytes` every 50 ms, each way (a slow-drip sender).
    Drip { bytes: usize },
    /// Connections are reset (RST) and new ones reset at once.
    Reset,
}

const CHUNK_BYTES: usize = 16 * 1024;
const QUEUE_CHUNKS: usize = 64;

/// Counters of the proxy, for the report and the source-address check.
#[derive(Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub resets: AtomicU64,
    /// Connections whose source was not the node's own address, as `link: source`.
    pub wrong_sources: Mutex<Vec<String>>,
}

/// Every link's proxy. Dropping it stops them all.
pub struct Proxies {
    links: BTreeMap<(u64, u64), watch::Sender<LinkMode>>,
    pub stats: Arc<ProxyStats>,
    _tasks: JoinSet<()>,
}

impl Proxies {
    pub async fn start(ids: &[u64], addrs: Addrs) -> Result<Self> {
        let stats = Arc::new(ProxyStats::default());
        let mut tasks = JoinSet::new();
        let mut links = BTreeMap::new();
        for &from in ids {
            for &to in ids {
                if from != to {
                    links.insert((from, to), watch::channel(LinkMode::Pass).0);
                }
            }
        }
        let modes: Arc<Modes> = Arc::new(links.iter().map(|(&link, tx)| (link, tx.subscribe())).collect());
        for &to in ids {
            let onward = addrs.raft_addr(to);
            match addrs.advertised_raft_addr(to) {
                Some(front) => {
                    let listener =
                        TcpListener::bind(front).await.with_context(|| format!("proxy in front of {to}"))?;
                    let accept = Accept { listener, from: None, to, onward, ids: ids.to_vec() };
                    tasks.spawn(accept.run(Arc::clone(&modes), Arc::clone(&stats)));
                }
                None => {
                    for &from in ids.iter().filter(|&&from| from != to) {
                        let listener = TcpListener::bind((PROXY_IP, proxy_port(from, to)))
                            .await
                            .with_context(|| format!("proxy for {from}->{to}"))?;
                        let accept = Accept { listener, from: Some(from), to, onward, ids: ids.to_vec() };
                        tasks.spawn(accept.run(Arc::clone(&modes), Arc::clone(&stats)));
                    }
                }
            }
        }
        Ok(Self { links, stats, _tasks: tasks })
    }

    pub fn set(&self, from: u64, to: u64, mode: LinkMode) {
        if let Some(tx) = self.links.get(&(from, to)) {
            tx.send_replace(mode);
        }
    }

    pub fn heal(&self) {
        for tx in self.links.values() {
            tx.send_replace(LinkMode::Pass);
        }
    }
}

/// Every link's mode, by (from, to).
type Modes = BTreeMap<(u64, u64), watch::Receiver<LinkMode>>;

/// One listener of the proxy: for the link `from`→`to`, or (rootless, `from` unset) for every
/// link to `to`, told apart by source address.
struct Accept {
    listener: TcpListener,
    from: Option<u64>,
    to: u64,
    /// Node `to`'s own Raft address.
    onward: SocketAddr,
    ids: Vec<u64>,
}

impl Accept {
    async fn run(self, modes: Arc<Modes>, stats: Arc<ProxyStats>) {
        let to = self.to;
        let mut connections = JoinSet::new();
        loop {
            let Ok((inbound, source)) = self.listener.accept().await else { continue };
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            let from = match self.from {
                Some(from) => {
                    if source.ip() != IpAddr::V4(node_ip(from)) {
                        stats.wrong_source(format!("link {from}->{to}: from {source}"));
                    }
                    from
                }
                None => match node_of(&self.ids, source.ip()).filter(|&from| from != to) {
                    Some(from) => from,
                    None => {
                        // Not from a node's own address: no link to charge it to.
                        stats.wrong_source(format!("a connection to {to}: from {source}"));
                        reset(&inbound);
                        continue;
                    }
                },
            };
            let (Some(forward), Some(backward)) = (modes.get(&(from, to)), modes.get(&(to, from))) else {
                continue;
            };
            while connections.try_join_next().is_some() {}
            let link =
                Link { from, onward: self.onward, forward: forward.clone(), backward: backward.clone() };
            connections.spawn(link.serve(inbound, Arc::clone(&stats)));
        }
    }
}

impl ProxyStats {
    fn wrong_source(&self, what: String) {
        if let Ok(mut wrong) = self.wrong_sources.lock() {
            wrong.push(what);
        }
    }
}

/// One proxied connection's link: who opened it, where it goes, the modes of both directions.
struct Link {
    from: u64,
    onward: SocketAddr,
    /// The bytes of `from`.
    forward: watch::Receiver<LinkMode>,
    /// The answers.
    backward: watch::Receiver<LinkMode>,
}

/// SO_LINGER 0: closing the socket sends a RST (and never blocks).
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

impl Link {
    async fn serve(self, inbound: TcpStream, stats: Arc<ProxyStats>) {
        let Link { from, onward, mut forward, mut backward } = self;
        let _ = inbound.set_nodelay(true);
        if *forward.borrow() == LinkMode::Reset || *backward.borrow() == LinkMode::Reset {
            stats.resets.fetch_add(1, Ordering::Relaxed);
            reset(&inbound);
            return;
        }
        let Ok(outbound) = connect_onward(from, onward).await else {
            reset(&inbound);
            return;
        };
        // Every close of a proxied connection is a RST (SO_LINGER 0): a reset aborts the pumps.
        reset(&inbound);
        reset(&outbound);
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        let mut pumps = JoinSet::new();
        pumps.spawn(pump(in_read, out_write, forward.clone()));
        pumps.spawn(pump(out_read, in_write, backward.clone()));
        loop {
            let changed = tokio::select! {
                _ = pumps.join_next() => {
                    // One direction ended: the other ends with it.
                    pumps.abort_all();
                    return;
                }
                changed = forward.changed() => changed.map(|()| *forward.borrow()),
                changed = backward.changed() => changed.map(|()| *backward.borrow()),
            };
            match changed {
                // The proxy is going away.
                Err(_) => return,
                Ok(LinkMode::Reset) => {
                    stats.resets.fetch_add(1, Ordering::Relaxed);
                    // Aborting the pumps drops both sockets: RST both ways.
                    pumps.abort_all();
                    return;
                }
                Ok(_) => {}
            }
        }
    }
}

async fn connect_onward(from: u64, onward: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(proxy_source_ip(from)), 0))?;
    let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(onward)).await??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies one direction: a reader task stamps chunks with when they may leave, a writer sends
/// them then (and not while the link stalls, and in drips when it drips).
async fn pump(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<LinkMode>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let mut read_mode = mode.clone();
    let read = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            while *read_mode.borrow() == LinkMode::Stall {
                if read_mode.changed().await.is_err() {
                    return;
                }
            }
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = match *read_mode.borrow() {
                LinkMode::Delay(d) => Instant::now() + d,
                _ => Instant::now(),
            };
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let mut write_mode = mode;
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let current = *write_mode.borrow();
                match current {
                    LinkMode::Stall => {
                        if write_mode.changed().await.is_err() {
                            return;
                        }
                    }
                    LinkMode::Reset => return,
                    LinkMode::Drip { bytes } => {
                        let n = bytes.max(1).min(rest.len());
                        if writer.write_all(&rest[..n]).await.is_err() {
                            return;
                        }
                        rest = &rest[n..];
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    LinkMode::Pass | LinkMode::Delay(_) => {
                        if writer.write_all(rest).await.is_err() {
                            return;
                        }
                        rest = &[];
                    }
                }
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(read, write);
}
