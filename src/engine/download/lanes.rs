//! The two lanes of GETs: bulk permits for the background passes, urgent ones for downloads a
//! reader waits on; while a reader waits, bulk GETs hold back.

use super::*;
use crate::engine::READER_GRACE;

/// Whether a GET is for a waiting reader (`urgent` says so for its bytes), or its whole
/// download is urgent.
pub(super) fn is_urgent(job: &Job, urgent: &(dyn Fn() -> bool + Sync)) -> bool {
    urgent() || job.flight.urgent.load(Ordering::SeqCst)
}

/// Whether a reader waits on this GET's bytes; cheap (one atomic load) while no reader waits,
/// as it is asked for every chunk of every GET.
pub(super) fn serves_waiting_reader(job: &Job, urgent: &(dyn Fn() -> bool + Sync)) -> bool {
    job.shared.urgent_active.load(Ordering::SeqCst) > 0 && is_urgent(job, urgent)
}

/// Waits while readers wait for bytes and this GET is not fetching any of them: a bulk GET
/// starts nothing and reads no further meanwhile (its server stops sending once the socket
/// buffers are full), so the readers' GETs get the bandwidth.
pub(super) async fn hold_back(job: &Job, urgent: &(dyn Fn() -> bool + Sync)) {
    let (shared, flight) = (&job.shared, &job.flight);
    while shared.urgent_active.load(Ordering::SeqCst) > 0 {
        // Registered before the checks, so a wake-up between them is not lost.
        let woken = flight.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let idle = shared.urgent_idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if is_urgent(job, urgent) || shared.urgent_active.load(Ordering::SeqCst) == 0 {
            return;
        }
        tokio::select! {
            () = &mut idle => {}
            () = &mut woken => {}
        }
    }
}

/// A GET permit: from the priority lane once the download or these bytes are `urgent` (also
/// when they become urgent while still queueing: a reader now waits for them); otherwise from
/// the bulk lane, after [`hold_back`].
pub(super) async fn permit<'a>(
    job: &'a Job,
    urgent: &(dyn Fn() -> bool + Sync),
) -> SemaphorePermit<'a> {
    let shared = &job.shared;
    loop {
        hold_back(job, urgent).await;
        let woken = job.flight.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if is_urgent(job, urgent) {
            return shared.urgent_permits.acquire().await.expect("never closed");
        }
        tokio::select! {
            permit = shared.permits.acquire() => return permit.expect("never closed"),
            () = &mut woken => {}
        }
    }
}

impl Shared {
    /// A download a reader waits on has started: the bulk lane holds back until it ends.
    pub(crate) fn urgent_started(&self) {
        self.urgent_active.fetch_add(1, Ordering::SeqCst);
    }

    /// The last urgent download's end frees the bulk lane [`READER_GRACE`](crate::engine::READER_GRACE) later.
    pub(crate) fn urgent_ended(self: &Arc<Self>) {
        if self.urgent_active.load(Ordering::SeqCst) == 1 {
            let shared = self.clone();
            self.readers.spawn(async move {
                tokio::time::sleep(READER_GRACE).await;
                shared.urgent_released();
            });
        } else {
            self.urgent_released();
        }
    }

    fn urgent_released(&self) {
        if self.urgent_active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.urgent_idle.notify_waiters();
        }
    }
}
