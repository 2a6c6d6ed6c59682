//! The registry of downloads in flight: one per file, shared by the bulk pass that started it
//! and every reader that asked for it since.
//!
//! Locks: the registry (`Downloader::flights`, a `DashMap`) holds an entry's shard lock only while a
//! download registers or joins (never across an `.await`, never with another lock); a flight's
//! state is atomics and `watch` channels, which take no lock a caller holds.

use super::large::Download;
use super::{FetchError, FetchKind, Job, Outcome, download};
use crate::engine::{Downloader, Replica};
use crate::store::ObjectMeta;
use dashmap::mapref::entry::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Notify, watch};

/// A download under way, shared by everyone who wants that file: the bulk pass that started it
/// and any reader that asked for it since. A reader makes it urgent: its remaining GETs take
/// permits from the priority lane instead of queueing behind the backlog. No lock of its own:
/// each field is an atomic, a `Notify` or a `watch` channel.
pub(crate) struct Flight {
    /// Whether a reader waits on the download: set once, never cleared.
    pub(super) urgent: AtomicBool,
    /// Woken when the download becomes urgent or a reader wants more of it, so that GETs
    /// queueing for a bulk permit look again.
    pub(super) wake: Notify,
    /// The download's result, once it has ended.
    pub(super) done: watch::Sender<Option<Result<Outcome, FetchError>>>,
    /// The large download under way (replaced when the object changes and it starts again).
    pub(super) download: watch::Sender<Option<Arc<Download>>>,
}

impl Flight {
    pub(super) fn new(urgent: bool) -> Self {
        Self {
            urgent: AtomicBool::new(urgent),
            wake: Notify::new(),
            done: watch::channel(None).0,
            download: watch::channel(None).0,
        }
    }

    /// Makes the download urgent; returns whether it was not already.
    pub(super) fn hurry(&self) -> bool {
        let newly = !self.urgent.swap(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        newly
    }

    pub(super) async fn wait(&self) -> Result<Outcome, FetchError> {
        let mut rx = self.done.subscribe();
        let done = rx
            .wait_for(Option::is_some)
            .await
            .expect("the flight outlives its waiters");
        done.clone().expect("checked by wait_for")
    }
}

/// Removes a flight from the registry when its download ends, however it ends (a cancelled
/// download tells its waiters so instead of leaving them waiting).
pub(super) struct FlightGuard {
    pub(super) downloader: Arc<Downloader>,
    pub(super) key: String,
    pub(super) flight: Arc<Flight>,
    pub(super) result: Option<Result<Outcome, FetchError>>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.downloader.flights.remove(&self.key);
        // Readers keep their own reference; this one would keep the job alive in a cycle.
        self.flight.download.send_replace(None);
        let result = self.result.take().unwrap_or_else(|| {
            Err(FetchError {
                key: self.key.clone(),
                kind: FetchKind::Cancelled,
                reason: "the download was cancelled".into(),
            })
        });
        self.flight.done.send_replace(Some(result));
        if self.flight.urgent.load(Ordering::SeqCst) {
            self.downloader.urgent_ended();
        }
    }
}

/// The download of one file: already under way (join it), or registered now (run it).
pub(super) enum Registered {
    Joined(Arc<Flight>),
    New(FlightGuard),
}

pub(super) fn register(
    downloader: &Arc<Downloader>,
    replica: &Replica,
    path: &str,
    urgent: bool,
) -> Registered {
    let key = format!("{}/{}", replica.mount.id, path);
    match downloader.flights.entry(key.clone()) {
        Entry::Occupied(e) => {
            let flight = e.get().clone();
            drop(e);
            if urgent && flight.hurry() {
                downloader.urgent_started();
            }
            Registered::Joined(flight)
        }
        Entry::Vacant(e) => {
            if urgent {
                downloader.urgent_started();
            }
            let flight = e.insert(Arc::new(Flight::new(urgent))).clone();
            Registered::New(FlightGuard {
                downloader: downloader.clone(),
                key,
                flight,
                result: None,
            })
        }
    }
}

/// Runs a registered download to its end and tells everyone waiting on it. `prepared` is the
/// large download a reader's open has already set up (see [`reader`]).
pub(super) async fn run(
    mut guard: FlightGuard,
    job: Arc<Job>,
    meta: ObjectMeta,
    path: String,
    prepared: Option<Arc<Download>>,
) -> Result<Outcome, FetchError> {
    let result = download(&job, meta, &path, prepared).await;
    guard.result = Some(result.clone());
    drop(guard);
    result
}
