//! The write-back of mount mode. The file system says when a mount's local copy changed (a
//! written file closed, a file created, renamed or deleted); the upload delay later, the
//! changes quiet that long are uploaded, and so on while changes keep coming: a file written
//! again meanwhile waits for its own delay anew. The queue knows nothing of files: the engine
//! looks at the paths the file system marked as changed (and, now and then, walks the whole
//! copy), and what it leaves (written too recently, or open for writing) is tried again after
//! another delay. The dirty state lives in the local copy itself (the files and the manifest),
//! so a restart finds it.

use crate::engine::{Engine, Look, MountView, PassStats, Replica};
use crate::store::ObjectStore;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the write-back waits after a round in which uploads failed (the store down),
/// twice as long after each such round in a row, up to the most.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The shortest pause between two rounds.
const MIN_PAUSE: Duration = Duration::from_millis(200);

/// How often a round walks the whole copy ([`Look::Everything`]) rather than only the paths
/// the file system changed: the backstop for a change it does not know of. So does the first
/// round, and a flush.
const WALK_EVERY: Duration = Duration::from_secs(300);

/// One mount's write-back queue.
#[derive(Default)]
pub struct WriteBack {
    changed: Notify,
    /// When the file system last changed the copy. Guarded by its own lock, taken alone.
    last: Mutex<Option<Instant>>,
    /// A flush was asked for (`status --wait`): the next round comes at once and takes every
    /// closed file, quiet or not; so do the rounds after it until one leaves nothing failed or
    /// changed while read (the asker waits for all of it).
    hurry: AtomicBool,
    hurried: Notify,
}

impl WriteBack {
    /// The copy changed now: upload once it has been quiet for the delay.
    pub fn touch(&self) {
        *self.last.lock() = Some(Instant::now());
        self.changed.notify_one();
    }

    /// Uploads every closed file now, without waiting for the delay: what `status --wait` asks.
    pub fn flush_now(&self) {
        self.hurry.store(true, Ordering::Relaxed);
        self.hurried.notify_one();
        self.changed.notify_one();
    }

    /// Uploads the mount's changes until `cancel`: a round `delay` after the first change,
    /// and one every `delay` while changes keep coming (each uploads the files quiet for
    /// `delay` by then, so a long copy into the mount uploads as it goes), or while some wait.
    /// `view`: the mount's file system, which says which empty directories are new; `on_round`
    /// hears what each round did.
    pub async fn run(
        &self,
        engine: Arc<Engine>,
        replica: Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        view: Arc<dyn MountView>,
        (delay, cancel): (Duration, CancellationToken),
        on_round: impl Fn(&PassStats) + Send,
    ) {
        let mount = &replica.mount.id;
        let pause = delay.max(MIN_PAUSE);
        let mut backoff = FIRST_BACKOFF;
        let mut flushing = false;
        let mut walked: Option<Instant> = None;
        loop {
            tokio::select! {
                () = self.changed.notified() => {}
                () = cancel.cancelled() => return,
            }
            let mut wait = pause;
            loop {
                if !self.hurry.load(Ordering::Relaxed) {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.hurried.notified() => {}
                        () = cancel.cancelled() => return,
                    }
                }
                let now = self.hurry.swap(false, Ordering::Relaxed) || flushing;
                let started = Instant::now();
                let look = match now || walked.is_none_or(|at| at.elapsed() >= WALK_EVERY) {
                    true => {
                        walked = Some(started);
                        Look::Everything
                    }
                    false => Look::Changed,
                };
                let round = engine.write_back(&replica, store.clone(), now, look, view.as_ref());
                let round = round.await;
                let (settling, failed) = match round {
                    Ok(stats) => {
                        on_round(&stats);
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
                        (stats.settling > 0, stats.failed > 0)
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        (false, true)
                    }
                };
                let changed_since = self.last.lock().is_some_and(|at| at >= started);
                flushing = now && (failed || settling);
                wait = match failed {
                    true => {
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                    false => {
                        backoff = FIRST_BACKOFF;
                        pause
                    }
                };
                if !failed && !settling && !changed_since {
                    break;
                }
            }
        }
    }
}
