//! The HTTP server's connection handling: a bounded number of open connections (inside the
//! process's file-descriptor budget), HTTPS when configured (the TLS handshake within the
//! header deadline, the client certificate's names handed to each request as a
//! [`ClientCertificate`]), a deadline for each request's headers (slowloris) that also closes
//! idle keep-alive connections, and a graceful stop.
//!
//! `axum::serve` sets no timer and no connection limit: 2,000 half-sent headers stayed open
//! for good, and 1,100 idle connections exhausted `ulimit -n 1024`, so that the Raft transport
//! could no longer accept its peers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::Service;

use super::watch_threads::{ReadAhead, WatchThreads};

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
    /// How much higher than the node's the nice value of the threads that serve watch streams
    /// is ([`WatchThreads`]); `None` serves them on the caller's runtime like any other request.
    pub(crate) watch_nice: Option<i32>,
}

/// The HTTPS configuration of the client API; a reload replaces it for new connections.
pub(crate) struct ApiTls {
    current: RwLock<Current>,
}

struct Current {
    config: Arc<rustls::ServerConfig>,
    /// The client CA's PEM the config verifies against.
    client_ca: Option<String>,
    /// Cleared when the client CA changes: certificates it verified no longer authenticate,
    /// even on connections that stay open.
    trusted: Arc<AtomicBool>,
}

impl ApiTls {
    /// From the node's material.
    pub(crate) fn new(material: &raft_tls::ApiServerTls) -> Result<Self, raft_tls::TlsError> {
        let current = Current {
            config: Arc::new(raft_tls::api_server_config(material)?),
            client_ca: material.client_ca_pem.clone(),
            trusted: Arc::new(AtomicBool::new(true)),
        };
        Ok(Self { current: RwLock::new(current) })
    }

    /// Serves new connections with `material` (connections already open keep their
    /// session). A new client CA also ends the authority of the certificates the old one
    /// verified on connections still open.
    pub(crate) fn replace(&self, material: &raft_tls::ApiServerTls) -> Result<(), raft_tls::TlsError> {
        let config = Arc::new(raft_tls::api_server_config(material)?);
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.client_ca != material.client_ca_pem {
            current.trusted.store(false, Ordering::Release);
            current.trusted = Arc::new(AtomicBool::new(true));
            current.client_ca = material.client_ca_pem.clone();
        }
        current.config = config;
        Ok(())
    }

    fn acceptor(&self) -> (tokio_rustls::TlsAcceptor, Arc<AtomicBool>) {
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (tokio_rustls::TlsAcceptor::from(current.config.clone()), current.trusted.clone())
    }
}

/// The names of the verified certificate a client presented over HTTPS (empty without one),
/// in every request's extensions.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientCertificate {
    /// Its DNS names, or its common name ([`raft_tls::certificate_names`]).
    pub(crate) names: Arc<[String]>,
    /// Whether the client CA that verified it is still the configured one.
    pub(crate) trusted: Arc<AtomicBool>,
}

impl ClientCertificate {
    /// The names, while the CA that verified them is still trusted; none after a reload
    /// replaced it.
    pub(crate) fn trusted_names(&self) -> &[String] {
        if self.trusted.load(Ordering::Acquire) {
            &self.names
        } else {
            &[]
        }
    }
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
    tls: Option<Arc<ApiTls>>,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let watch_threads = limits.watch_nice.and_then(WatchThreads::start).map(Arc::new);
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
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        let router = router.clone();
        let watcher = graceful.watcher();
        let watch_threads = watch_threads.clone();
        connections.spawn(async move {
            serve_one(stream, acceptor, router, limits.header_read_timeout, watcher, watch_threads).await;
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

/// Serves one connection: the TLS handshake first with HTTPS (within the header deadline, so
/// that a client that never finishes it holds its slot no longer than a slow header).
async fn serve_one(
    stream: TcpStream,
    acceptor: Option<(tokio_rustls::TlsAcceptor, Arc<AtomicBool>)>,
    router: Router,
    header_read_timeout: Duration,
    watcher: Watcher,
    watch_threads: Option<Arc<WatchThreads>>,
) {
    let Some((acceptor, trusted)) = acceptor else {
        let certificate = ClientCertificate::default();
        return route(stream, certificate, router, header_read_timeout, watcher, watch_threads).await;
    };
    let stream = match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(error = %e, "client TLS handshake failed"),
        Err(_) => return tracing::debug!("client TLS handshake timed out"),
    };
    let names = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(raft_tls::certificate_names);
    let certificate = ClientCertificate { names: names.unwrap_or_default().into(), trusted };
    route(stream, certificate, router, header_read_timeout, watcher, watch_threads).await;
}

/// Serves a connection whose first request is a watch on the watch threads, any other on
/// this runtime.
async fn route<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    certificate: ClientCertificate,
    router: Router,
    header_read_timeout: Duration,
    watcher: Watcher,
    watch_threads: Option<Arc<WatchThreads>>,
) {
    let served = Served { certificate, router, header_read_timeout, watcher };
    let Some(threads) = watch_threads else {
        return serve_http(stream, served, None).await;
    };
    let first_request_by = tokio::time::Instant::now() + header_read_timeout;
    let Some((stream, watch)) = ReadAhead::classify(stream, header_read_timeout).await else {
        return tracing::debug!("client sent no request line before the header deadline");
    };
    let kind = Some(Routed { first_request_by, watch_connection: watch });
    if watch {
        threads.serve(serve_http(stream, served, kind)).await;
    } else {
        serve_http(stream, served, kind).await;
    }
}

/// What every connection is served with.
struct Served {
    certificate: ClientCertificate,
    router: Router,
    header_read_timeout: Duration,
    watcher: Watcher,
}

/// How a connection read ahead ([`route`]) was placed.
struct Routed {
    /// Its first request's head must have arrived by then (the time spent reading ahead counts
    /// against the header deadline; later requests get the whole deadline, as idle time too).
    first_request_by: tokio::time::Instant,
    /// Served on the watch threads: every answer but an open watch stream closes the
    /// connection, so that a client's pool never sends its other requests down it.
    watch_connection: bool,
}

/// HTTP/1.1 on an established stream, every request carrying the client's certificate names.
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    served: Served,
    routed: Option<Routed>,
) {
    let Served { certificate, router, header_read_timeout, watcher } = served;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let watch_connection = routed.as_ref().is_some_and(|r| r.watch_connection);
    let first_seen = Arc::new(AtomicBool::new(false));
    let seen = first_seen.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(certificate.clone());
        let answer = router.clone().call(request);
        async move {
            let mut response = answer.await?;
            if watch_connection && !is_event_stream(&response) {
                response
                    .headers_mut()
                    .insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let stream = super::parse_errors::JsonParseErrors::new(stream);
    let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
    tokio::pin!(connection);
    if let Some(routed) = routed {
        tokio::select! {
            ended = &mut connection => return log_end(ended),
            () = tokio::time::sleep_until(routed.first_request_by) => {
                if !first_seen.load(Ordering::Relaxed) {
                    return tracing::debug!("client sent no request head before the header deadline");
                }
            }
        }
    }
    log_end(connection.await);
}

/// Whether `response` opens a watch stream.
fn is_event_stream(response: &axum::response::Response) -> bool {
    response.headers().get(hyper::header::CONTENT_TYPE).is_some_and(|t| t.as_bytes() == b"text/event-stream")
}

fn log_end(ended: Result<(), hyper::Error>) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, "client connection ended");
    }
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
