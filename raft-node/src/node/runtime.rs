//! The Raft runtime: the driver, its storage-write and snapshot tasks and the peer transport
//! run on a tokio runtime of their own, so that client work queued on the API's runtime (HTTP
//! requests, a thousand watch streams each woken by every change) never delays a heartbeat,
//! a vote or an append. The operating system shares the cores between the two runtimes'
//! threads; a Raft thread that wakes for a message runs at once instead of waiting behind
//! every client task in one queue.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Worker threads of the Raft runtime: the driver and the storage writer can run at once.
const RAFT_WORKER_THREADS: usize = 2;

/// A runtime on threads of its own; dropping it stops it (its tasks are cancelled, after the
/// node has shut them down in order).
pub(crate) struct RaftRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl RaftRuntime {
    /// Starts the runtime of node `id` (threads named `raft-<id>`).
    pub(crate) fn start(id: u64) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RAFT_WORKER_THREADS)
            .thread_name(format!("raft-{id}"))
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        // The runtime lives on a plain thread: it can be dropped there (a runtime dropped
        // inside another runtime's task panics).
        std::thread::Builder::new().name(format!("raft-{id}-owner")).spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        })?;
        Ok(Self { handle, stop: Some(stop) })
    }

    /// Runs `future` on the Raft runtime (with everything it spawns) and waits for its
    /// output. `None` if the runtime stopped under it.
    pub(crate) async fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future).await.ok()
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
