//! The write-back of mount mode. The file system says when a mount's local copy changed (a
//! written file closed, a file created, renamed or deleted); once the mount has been quiet for
//! the upload delay, its changes are uploaded, and a change meanwhile restarts the delay. The
//! queue knows nothing of files: the engine's walk finds what changed, and what it leaves
//! (written too recently, or open for writing) is tried again after another delay. The dirty
//! state lives in the local copy itself (the files and the manifest), so a restart finds it.

use crate::engine::{Engine, Replica};
use crate::store::ObjectStore;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the write-back waits at most between tries while uploads fail (the store down).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One mount's write-back queue.
#[derive(Default)]
pub struct WriteBack {
    changed: Notify,
    /// When the file system last changed the copy. Guarded by its own lock, taken alone.
    last: Mutex<Option<Instant>>,
}

impl WriteBack {
    /// The copy changed now: upload once it has been quiet for the delay.
    pub fn touch(&self) {
        *self.last.lock() = Some(Instant::now());
        self.changed.notify_one();
    }

    /// Uploads the mount's changes whenever they have been quiet for `delay`, until `cancel`.
    pub async fn run(
        &self,
        engine: Arc<Engine>,
        replica: Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        delay: Duration,
        cancel: CancellationToken,
    ) {
        let mount = &replica.mount.id;
        let mut backoff = delay.max(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = self.changed.notified() => {}
                () = cancel.cancelled() => return,
            }
            loop {
                let quiet_at = self.last.lock().map_or_else(Instant::now, |at| at + delay);
                if Instant::now() < quiet_at {
                    tokio::select! {
                        () = tokio::time::sleep_until(quiet_at) => continue,
                        () = cancel.cancelled() => return,
                    }
                }
                let again = match engine.write_back(&replica, store.clone()).await {
                    Ok(stats) => {
                        if stats.uploaded + stats.remote_deleted + stats.conflicts > 0 {
                            tracing::info!(
                                mount = %mount,
                                uploaded = stats.uploaded,
                                deleted = stats.remote_deleted,
                                conflicts = stats.conflicts,
                                bytes = stats.bytes_uploaded,
                                "write-back"
                            );
                        }
                        if stats.failed > 0 {
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            Some(backoff)
                        } else {
                            backoff = delay.max(Duration::from_secs(1));
                            (stats.settling > 0).then_some(delay.max(Duration::from_secs(1)))
                        }
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        Some(backoff)
                    }
                };
                let Some(wait) = again else { break };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.cancelled() => return,
                }
            }
        }
    }
}
