//! The HTTP server's connection handling: a bounded number of open connections (inside the
//! process's file-descriptor budget), a deadline for each request's headers (slowloris) that
//! also closes idle keep-alive connections, and a graceful stop.
//!
//! `axum::serve` sets no timer and no connection limit: 2,000 half-sent headers stayed open
//! for good, and 1,100 idle connections exhausted `ulimit -n 1024`, so that the Raft transport
//! could no longer accept its peers.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// File descriptors kept for everything but client connections (Raft peers, storage files,
/// the listener sockets).
pub(crate) const DESCRIPTORS_RESERVED: u64 = 256;

/// Connection limits of the client API.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerLimits {
    /// Most connections open at once; more wait in the listen backlog.
    pub(crate) max_connections: usize,
    /// A request's headers must arrive within this time of the connection opening or of the
    /// previous response (so an idle keep-alive connection is closed after it too).
    pub(crate) header_read_timeout: Duration,
    /// How long a stopping server lets requests in progress finish (watch streams never do).
    pub(crate) stop_grace: Duration,
}

/// The open-file limit of this process (soft), if it can be read.
pub(crate) fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// `configured`, lowered so that open connections leave [`DESCRIPTORS_RESERVED`] descriptors
/// of the open-file limit `nofile` to the rest of the node (at least 16 connections).
pub(crate) fn connection_cap(configured: usize, nofile: Option<u64>) -> usize {
    match nofile {
        Some(limit) => {
            let budget = limit.saturating_sub(DESCRIPTORS_RESERVED).max(16);
            configured.min(usize::try_from(budget).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// Serves `router` on `listener` until `stop` turns true, then lets requests in progress
/// finish (up to `stop_grace`).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        // A slot first: past the cap, connections wait in the kernel's backlog, unaccepted.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the slot is returned.
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "client connection ended");
            }
            drop(permit);
        });
        // Reap finished connection tasks so the set stays as small as the open connections.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    if tokio::time::timeout(limits.stop_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("client connections still open after the grace period; closing them");
    }
    connections.abort_all();
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_descriptors_for_the_rest_of_the_node() {
        assert_eq!(connection_cap(4_096, Some(1_024)), 768);
        assert_eq!(connection_cap(100, Some(1_024)), 100);
        assert_eq!(connection_cap(4_096, None), 4_096);
        assert_eq!(connection_cap(4_096, Some(100)), 16, "a floor, however small the limit");
    }
}
