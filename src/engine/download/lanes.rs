//! The lanes of requests: bulk permits for the background passes' GETs, urgent ones for
//! downloads a reader waits on, write permits for uploads; while a reader waits, bulk GETs
//! hold back and no write starts.
//!
//! The bulk lane counts in units: a GET of a tiny body ([`TINY_BODY`]) takes one, any other
//! GET [`Lanes::stream_units`]. Where the GETs whose bodies stream are capped below the
//! requested concurrency (a server on this machine), the requested number of tiny GETs still
//! run at once: the cap is for bodies a server keeps sending while a reader waits, and a tiny
//! object's cost is its request, which only more requests at once hide.
//!
//! Lock order: no lock. The lanes are three semaphores, a counter and a `Notify`; a request
//! holds one permit for one attempt and takes no other permit while it holds it.

use super::Job;
use crate::engine::{Downloader, READER_GRACE};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// The most bytes a GET may ask for to count as one unit of the bulk lane: with the requested
/// concurrency of them in flight they are about as many bytes as the capped streams' receive
/// buffers hold (see `store::local_http`), so a reader waits no longer behind them.
pub(crate) const TINY_BODY: u64 = 64 << 10;

/// The GET permits of one engine, and whether a reader waits.
pub(crate) struct Lanes {
    /// The bulk lane: GETs of the background passes (opened gradually under slow start), in
    /// units.
    bulk: Semaphore,
    /// The units of the bulk lane a GET takes whose body streams (more than [`TINY_BODY`]).
    stream_units: u32,
    /// The priority lane: GETs of downloads a reader is waiting for.
    urgent: Semaphore,
    /// The write lane: an upload's requests (PUTs, parts, copies, deletes).
    writes: Semaphore,
    /// The permits of the write lane.
    write_concurrency: usize,
    /// Urgent downloads under way (each counted until [`READER_GRACE`] after its end); while
    /// there are any, the bulk lane starts no new GET and reads no further.
    waiting: AtomicUsize,
    /// Woken when `waiting` drops to zero.
    idle: Notify,
}

impl Lanes {
    /// Lanes of `concurrency` GETs each, the bulk one opening with `first_bulk` of them (see
    /// [`Lanes::open_bulk`]) and taking `tiny` GETs of tiny bodies in their stead (at least
    /// one for each), and of `writes` upload requests.
    pub(crate) fn new(first_bulk: usize, concurrency: usize, tiny: usize, writes: usize) -> Self {
        let stream_units = (tiny / concurrency.max(1)).max(1);
        Self {
            bulk: Semaphore::new(first_bulk * stream_units),
            stream_units: u32::try_from(stream_units).unwrap_or(u32::MAX),
            urgent: Semaphore::new(concurrency),
            writes: Semaphore::new(writes),
            write_concurrency: writes,
            waiting: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// The upload requests the write lane allows at once.
    pub(crate) fn write_concurrency(&self) -> usize {
        self.write_concurrency
    }

    /// A permit of the write lane for an upload's request (a PUT, a part, a copy, a delete),
    /// taken once no reader waits, as a bulk GET starts.
    pub(crate) async fn write_permit(&self) -> SemaphorePermit<'_> {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if !self.readers_waiting() {
                break;
            }
            idle.await;
        }
        self.writes.acquire().await.expect("never closed")
    }

    /// One more GET for the bulk lane (slow start).
    pub(crate) fn open_bulk(&self) {
        self.bulk.add_permits(self.stream_units as usize);
    }

    /// The units of the bulk lane a GET of `bytes` takes.
    pub(crate) fn units(&self, bytes: u64) -> u32 {
        match bytes <= TINY_BODY {
            true => 1,
            false => self.stream_units,
        }
    }

    /// The units of the bulk lane a GET whose body streams takes: as many tiny GETs run in its
    /// stead.
    pub(crate) fn stream_units(&self) -> u32 {
        self.stream_units
    }

    /// A permit of the bulk lane for a GET of `bytes`.
    async fn bulk_permit(&self, bytes: u64) -> SemaphorePermit<'_> {
        self.bulk
            .acquire_many(self.units(bytes))
            .await
            .expect("never closed")
    }

    /// Whether a download a reader waits on is under way (or ended less than a grace ago);
    /// cheap, as it is asked for every chunk of every GET.
    fn readers_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    fn started(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
    }

    fn released(&self) {
        if self.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Whether the ending urgent download is the last one.
    fn last_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) == 1
    }

    #[cfg(test)]
    pub(crate) fn bulk_available(&self) -> usize {
        self.bulk.available_permits()
    }

    #[cfg(test)]
    pub(crate) fn urgent_available(&self) -> usize {
        self.urgent.available_permits()
    }

    #[cfg(test)]
    pub(crate) fn holding_back(&self) -> bool {
        self.readers_waiting()
    }
}

impl Downloader {
    /// A download a reader waits on has started: the bulk lane holds back until it ends.
    pub(crate) fn urgent_started(&self) {
        self.lanes.started();
    }

    /// The last urgent download's end frees the bulk lane [`READER_GRACE`] later. On the
    /// downloader, not the lanes: the grace timer keeps the engine's state (and so the root's
    /// lock) alive until it fires.
    pub(crate) fn urgent_ended(self: &Arc<Self>) {
        if self.lanes.last_waiting() {
            let downloader = self.clone();
            self.readers.spawn(async move {
                tokio::time::sleep(READER_GRACE).await;
                downloader.lanes.released();
            });
        } else {
            self.lanes.released();
        }
    }
}

/// Whether a GET is for a waiting reader (`urgent` says so for its bytes), or its whole
/// download is urgent.
pub(super) fn is_urgent(job: &Job, urgent: &(dyn Fn() -> bool + Sync)) -> bool {
    urgent() || job.flight.urgent.load(Ordering::SeqCst)
}

/// Whether a reader waits on this GET's bytes; one atomic load while no reader waits.
pub(super) fn serves_waiting_reader(job: &Job, urgent: &(dyn Fn() -> bool + Sync)) -> bool {
    job.downloader.lanes.readers_waiting() && is_urgent(job, urgent)
}

/// Waits while readers wait for bytes and this GET is not fetching any of them: a bulk GET
/// starts nothing and reads no further meanwhile (its server stops sending once the socket
/// buffers are full), so the readers' GETs get the bandwidth.
pub(super) async fn hold_back(job: &Job, urgent: &(dyn Fn() -> bool + Sync)) {
    let (lanes, flight) = (&job.downloader.lanes, &job.flight);
    while lanes.readers_waiting() {
        // Registered before the checks, so a wake-up between them is not lost.
        let woken = flight.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let idle = lanes.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if is_urgent(job, urgent) || !lanes.readers_waiting() {
            return;
        }
        tokio::select! {
            () = &mut idle => {}
            () = &mut woken => {}
        }
    }
}

/// A GET permit for `bytes`: from the priority lane once the download or these bytes are
/// `urgent` (also when they become urgent while still queueing: a reader now waits for them);
/// otherwise from the bulk lane, after [`hold_back`].
pub(super) async fn permit<'a>(
    job: &'a Job,
    urgent: &(dyn Fn() -> bool + Sync),
    bytes: u64,
) -> SemaphorePermit<'a> {
    let lanes = &job.downloader.lanes;
    loop {
        hold_back(job, urgent).await;
        let woken = job.flight.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if is_urgent(job, urgent) {
            return lanes.urgent.acquire().await.expect("never closed");
        }
        tokio::select! {
            permit = lanes.bulk_permit(bytes) => return permit,
            () = &mut woken => {}
        }
    }
}
