//! Watch streams on threads of their own, at a lower CPU priority than the Raft path.
//!
//! A write seen by 1,000 watchers is 1,000 socket writes on the node that serves them. Served
//! on the runtime that also runs the driver, the transport and the other requests, that work
//! competes with them on equal terms: on a busy machine a leader's writes waited behind the
//! fan-out, and its write p99 grew tenfold. So a connection whose first request is a watch
//! (`GET /v1/watch`) is served on a runtime whose threads have a higher nice value
//! (`limits.watch_nice`): the fan-out gets the CPU time the Raft path leaves, and the
//! operating system's scheduler, not the order of tasks in a queue, keeps consensus first.
//!
//! The connection is recognized by reading the first bytes of its first request ahead (after
//! the TLS handshake with HTTPS); they are handed back to the HTTP parser by [`ReadAhead`].

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The start of every request served on the watch threads.
const WATCH_REQUEST: &[u8] = b"GET /v1/watch";

/// The runtime of the watch streams. Dropping it stops its threads without waiting.
pub(crate) struct WatchThreads {
    runtime: Option<tokio::runtime::Runtime>,
}

impl WatchThreads {
    /// A runtime of one thread per two cores whose threads' nice value is `nice` more than the
    /// node's (0: the node's own priority; lowering a thread's priority needs no privilege).
    /// `None` when the runtime cannot be built: watch streams are then served like any other
    /// request.
    pub(crate) fn start(nice: i32) -> Option<Self> {
        // Half the cores: however many events there are to send, the other half never runs
        // the fan-out, so a write's next step finds a core without waiting for a preemption.
        let threads = std::thread::available_parallelism().map_or(1, |n| (usize::from(n) / 2).max(1));
        // One value for every thread, set as it is (a thread of the runtime's blocking pool is
        // started by a worker that already has it: adding again would lower it twice).
        let node = rustix::process::getpriority_process(None).unwrap_or(0);
        let target = node.saturating_add(nice).min(19);
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("watch-streams")
            .on_thread_start(move || lower_priority(node, target))
            .enable_all()
            .build();
        match built {
            Ok(runtime) => Some(Self { runtime: Some(runtime) }),
            Err(e) => {
                tracing::warn!(error = %e, "no threads of their own for watch streams");
                None
            }
        }
    }

    /// Runs `connection` to its end on the watch threads; dropping the returned future stops
    /// it there too.
    pub(crate) async fn serve<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else { return connection.await };
        let mut task = AbortOnDrop(runtime.spawn(connection));
        let _ = (&mut task.0).await;
    }
}

impl Drop for WatchThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets the calling thread's nice value to `target` (on Linux, the nice value is a thread's
/// own) when it is above the node's `node` value: computed from the node's value at start,
/// so that a node started at a lower priority never has its watch threads above it.
fn lower_priority(node: i32, target: i32) {
    if target <= node {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(None, target) {
        tracing::warn!(error = %e, target, "a watch-stream thread keeps the node's priority");
    }
}

/// A stream whose first bytes were read ahead, handed back before the rest.
pub(crate) struct ReadAhead<S> {
    inner: S,
    ahead: Vec<u8>,
    /// How many bytes of `ahead` were handed back.
    given: usize,
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    /// Reads until the first bytes tell whether the first request is a watch, or the peer
    /// stops sending. Returns the stream with those bytes and whether it is a watch; `None`
    /// when `deadline` passed first (every HTTP/1.1 request is longer than what is read, so
    /// such a client would have missed the header deadline anyway).
    pub(crate) async fn classify(mut inner: S, deadline: Duration) -> Option<(Self, bool)> {
        let mut ahead = Vec::with_capacity(WATCH_REQUEST.len());
        let read = tokio::time::timeout(deadline, async {
            let mut byte = [0u8; WATCH_REQUEST.len()];
            while ahead.len() < WATCH_REQUEST.len() && WATCH_REQUEST.starts_with(&ahead) {
                let wanted = WATCH_REQUEST.len() - ahead.len();
                match inner.read(&mut byte[..wanted]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => ahead.extend_from_slice(&byte[..n]),
                }
            }
        });
        read.await.ok()?;
        let watch = ahead == WATCH_REQUEST;
        Some((Self { inner, ahead, given: 0 }, watch))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.given < this.ahead.len() {
            let rest = &this.ahead[this.given..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.given += n;
            if this.given == this.ahead.len() {
                this.ahead = Vec::new();
                this.given = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::http::{serve, ServerLimits};

    /// The name and nice value of the thread that answers.
    async fn thread_of_the_handler() -> String {
        let name = std::thread::current().name().unwrap_or_default().to_owned();
        let nice = rustix::process::getpriority_process(None).expect("nice");
        format!("{name} {nice}")
    }

    async fn answer(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("answer");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_connection_is_served_on_the_lower_priority_threads_and_others_are_not() {
        let router = axum::Router::new()
            .route("/v1/watch", axum::routing::get(thread_of_the_handler))
            .route("/v1/kv/{key}", axum::routing::get(thread_of_the_handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = ServerLimits {
            max_connections: 16,
            header_read_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_millis(100),
            watch_nice: Some(7),
        };
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let node_nice = rustix::process::getpriority_process(None).expect("nice");
        let watch_nice = (node_nice + 7).min(19);
        let server = tokio::spawn(serve(listener, router, None, limits, stopping));
        let close = "HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        let watch = answer(addr, &format!("GET /v1/watch?prefix=a {close}")).await;
        assert!(watch.ends_with(&format!("watch-streams {watch_nice}")), "{watch}");
        let other = answer(addr, &format!("GET /v1/kv/a {close}")).await;
        assert!(other.starts_with("HTTP/1.1 200") && !other.contains("watch-streams"), "{other}");
        assert!(other.ends_with(&format!(" {node_nice}")), "{other}");
        stop.send(true).expect("stop");
        server.await.expect("server");
    }

    /// Found by review: a thread of the runtime's blocking pool, started by a worker already
    /// lowered, was lowered a second time.
    #[test]
    fn the_blocking_pool_of_the_watch_threads_is_lowered_once() {
        let node = rustix::process::getpriority_process(None).expect("nice");
        let threads = WatchThreads::start(5).expect("runtime");
        let runtime = threads.runtime.as_ref().expect("runtime");
        let nice = || rustix::process::getpriority_process(None).expect("nice");
        let (worker, blocking) = runtime.block_on(async move {
            let worker = tokio::spawn(async move { nice() }).await.expect("worker");
            let blocking = tokio::task::spawn_blocking(nice).await.expect("blocking");
            (worker, blocking)
        });
        let expected = (node + 5).min(19);
        assert_eq!((worker, blocking), (expected, expected));
    }

    async fn classify(sent: &[&[u8]]) -> (bool, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        let sent: Vec<Vec<u8>> = sent.iter().map(|s| s.to_vec()).collect();
        // Sends the pieces a little apart, then closes.
        let writer = tokio::spawn(async move {
            for part in sent {
                client.write_all(&part).await.expect("write");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let (mut stream, watch) =
            ReadAhead::classify(server, Duration::from_millis(500)).await.expect("in time");
        writer.await.expect("writer");
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.expect("read");
        (watch, all)
    }

    #[tokio::test]
    async fn a_watch_is_recognized_and_every_byte_is_handed_back_whatever_the_pieces() {
        let request: &[u8] = b"GET /v1/watch?prefix=a HTTP/1.1\r\nhost: x\r\n\r\n";
        for split in [1, 3, 5, 13, 20] {
            let (watch, bytes) = classify(&[&request[..split], &request[split..]]).await;
            assert!(watch, "split at {split}");
            assert_eq!(bytes, request, "split at {split}");
        }
        for other in [&b"GET /v1/kv/a HTTP/1.1\r\n\r\n"[..], b"PUT /v1/watch HTTP/1.1\r\n\r\n", b"GET /v1/wa"]
        {
            let (watch, bytes) = classify(&[other]).await;
            assert!(!watch, "{}", String::from_utf8_lossy(other));
            assert_eq!(bytes, other);
        }
    }

    #[tokio::test]
    async fn a_client_too_slow_to_send_its_request_line_is_closed_at_the_header_deadline() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET /v1").await.expect("write");
        let started = tokio::time::Instant::now();
        assert!(ReadAhead::classify(server, Duration::from_millis(50)).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
