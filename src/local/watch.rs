//! Watching writeable mounts' directories (inotify, through `notify`) so that a local change is
//! uploaded soon after it settles, not only at the next pass. The watcher only hurries the next
//! pass along: the pass's walk of the directory decides what changed, so an event lost (an
//! inotify queue overflow, a directory made before its watch was added) costs time, never a
//! change.

use notify::{EventKind, RecursiveMode, Watcher};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Changes under some directories, as a stream of "something changed" moments.
pub struct Changes {
    /// Kept for its watches; dropped, it stops them.
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    delay: Duration,
}

impl Changes {
    /// Watches every directory of `dirs`, recursively; a change is settled once `delay` has
    /// passed without another.
    pub fn watch(dirs: &[PathBuf], delay: Duration) -> notify::Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // An error (a queue overflow) may stand for changes: wake up too.
                let changed = event.map_or(true, |e| !matches!(e.kind, EventKind::Access(_)));
                if changed {
                    let _ = tx.send(());
                }
            })?;
        for dir in dirs {
            watcher.watch(dir, RecursiveMode::Recursive)?;
        }
        Ok(Self {
            _watcher: watcher,
            events,
            delay,
        })
    }

    /// Waits for a change, then until no other has come for the delay.
    pub async fn settled(&mut self) {
        if self.events.recv().await.is_none() {
            return std::future::pending().await;
        }
        loop {
            tokio::select! {
                next = self.events.recv() => if next.is_none() { return },
                () = tokio::time::sleep(self.delay) => return,
            }
        }
    }
}
