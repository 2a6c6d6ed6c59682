//! A large object's download into its resumable partial file: which bytes are where, who
//! fetches what, and what readers wait on.
//!
//! Lock order: a download's `parts` and `staged` are never held together, nor with any other
//! lock, nor across an `.await`. `parts` is held for bookkeeping in memory only (no I/O);
//! `staged` for one record write (on the blocking pool) or for taking the file to commit it.

use super::get::download_part;
use super::{FetchError, Job, PartError, URGENT_BATCH};
use crate::local::Staged;
use crate::ranges::RangeSet;
use crate::store::{ObjectMeta, StoreError};
use crate::tasks::joined;
use parking_lot::Mutex;
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{SemaphorePermit, watch};

/// A large object being downloaded into its partial file.
pub struct Download {
    /// Set once, as are `meta` and `file`.
    pub(super) job: Arc<Job>,
    pub(super) meta: ObjectMeta,
    /// The partial file, written with `pwrite` at the offsets of the parts each GET owns.
    file: Arc<File>,
    /// Downloader with record writes on the blocking pool: those capture only this, so a write still
    /// running after its task was aborted holds no engine state (such as the cache's lock).
    pub(super) staged: Arc<Mutex<Option<Staged>>>,
    /// Which bytes are present, claimed, wanted; why the download failed. Guarded by its own
    /// lock (see the lock order above).
    pub(super) parts: Mutex<Parts>,
    /// Bumped whenever bytes land, a fetch is given up, or the download fails (a `watch`
    /// channel: no lock a caller holds).
    pub(super) changed: watch::Sender<u64>,
}

/// Which bytes of a download are where. Bulk workers fetch one part at a time (the unclaimed
/// bytes of it); a reader fetches the stretch it reads, rounded out to [`READ_ALIGN`].
pub(super) struct Parts {
    pub(super) part_size: u64,
    pub(super) size: u64,
    /// Bytes written to the partial file.
    pub(super) present: RangeSet,
    /// Bytes being fetched or present.
    pub(super) claimed: RangeSet,
    /// Bytes a reader waits for: their GETs (and retries) take the priority lane.
    pub(super) wanted: RangeSet,
    /// Why the download failed: the first error, for the download itself...
    pub(super) error: Option<PartError>,
    /// ...and what readers are told.
    pub(super) failure: Option<FetchError>,
}

/// A reader's fetch is the stretch it reads rounded out to this (or to a part, if smaller): a GET
/// costs about as much as a megabyte of transfer, and the kernel's next reads of the same
/// stretch find it there.
const READ_ALIGN: u64 = 1 << 20;

impl Parts {
    pub(super) fn new(part_size: u64, size: u64, present: RangeSet) -> Self {
        Self {
            part_size,
            size,
            claimed: present.clone(),
            present,
            wanted: RangeSet::default(),
            error: None,
            failure: None,
        }
    }

    /// `range` clamped to the file and rounded out to multiples of `align`.
    fn aligned(&self, range: &Range<u64>, align: u64) -> Range<u64> {
        let end = range
            .end
            .min(self.size)
            .div_ceil(align)
            .saturating_mul(align);
        (range.start / align * align)..end.min(self.size)
    }

    /// What a reader's fetch is rounded out to.
    fn read_align(&self) -> u64 {
        READ_ALIGN.min(self.part_size)
    }

    /// What [`Download::prefetch`] fetches for `range`.
    fn ahead(&self, range: &Range<u64>) -> Range<u64> {
        let align = self.read_align();
        let start = range.start.div_ceil(align).saturating_mul(align);
        let len = (range.end - range.start)
            .max(READ_ALIGN)
            .min(self.part_size);
        let end = self.aligned(range, len).end;
        start.min(end)..end
    }

    /// The bytes of `range` nobody fetches yet, cut at part boundaries: one GET each.
    pub(super) fn unclaimed(&self, range: Range<u64>) -> impl Iterator<Item = Range<u64>> + use<> {
        let part_size = self.part_size;
        self.claimed
            .missing(range.start..range.end.min(self.size))
            .into_iter()
            .flat_map(move |gap| {
                let starts = std::iter::successors(Some(gap.start), move |&at| {
                    let next = (at / part_size + 1) * part_size;
                    (next < gap.end).then_some(next)
                });
                starts.map(move |at| at..((at / part_size + 1) * part_size).min(gap.end))
            })
    }
}

impl Download {
    pub(super) fn new(job: Arc<Job>, meta: ObjectMeta, staged: Staged, present: RangeSet) -> Self {
        let parts = Parts::new(job.downloader.part_size, meta.size, present);
        Self {
            job,
            meta,
            file: staged.file(),
            staged: Arc::new(Mutex::new(Some(staged))),
            parts: Mutex::new(parts),
            changed: watch::channel(0).0,
        }
    }

    /// The partial file: what is present of it can be read at once.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn size(&self) -> u64 {
        self.meta.size
    }

    /// Whether all of `range` (clamped to the file) is present.
    pub fn is_present(&self, range: Range<u64>) -> bool {
        let parts = self.parts.lock();
        parts.present.covers(range.start..range.end.min(parts.size))
    }

    /// Claims the next stretch for a bulk worker: the first unclaimed bytes, up to the end of
    /// their part.
    pub(super) fn claim_next(&self) -> Option<Range<u64>> {
        let mut parts = self.parts.lock();
        if parts.failure.is_some() {
            return None;
        }
        let piece = parts.unclaimed(0..parts.size).next()?;
        parts.claimed.insert(piece.clone());
        Some(piece)
    }

    /// Claims the unclaimed bytes of `range`, in pieces of at most a part.
    fn claim(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut parts = self.parts.lock();
        if parts.failure.is_some() {
            return Vec::new();
        }
        let pieces: Vec<_> = parts.unclaimed(range).collect();
        for piece in &pieces {
            parts.claimed.insert(piece.clone());
        }
        pieces
    }

    /// Fetches one claimed piece and records it; returns whether it succeeded. A failure fails
    /// the whole download (after the retries of transient errors).
    pub(super) async fn fetch_piece(
        self: &Arc<Self>,
        range: Range<u64>,
        urgent: bool,
        permit: Option<SemaphorePermit<'_>>,
    ) -> bool {
        let mut claim = Claim {
            download: self,
            range: range.clone(),
            armed: true,
        };
        let wanted = || urgent || self.parts.lock().wanted.intersects(range.clone());
        // Bytes count as present as soon as they are written: a reader needs no more, and a
        // retry starts from there.
        let landed = |r: Range<u64>| {
            self.parts.lock().present.insert(r);
            self.changed.send_modify(|n| *n += 1);
        };
        let result = download_part(
            &self.job,
            &self.meta,
            range.clone(),
            Some((&self.file, &landed)),
            &wanted,
            permit,
        )
        .await
        .map(drop);
        let result = match result {
            Ok(()) => {
                let present = self.parts.lock().present.clone();
                // Written after the bytes, so the record never claims what is not there.
                let staged = self.staged.clone();
                joined(tokio::task::spawn_blocking(move || {
                    match staged.lock().as_mut() {
                        Some(staged) => staged.record(&present),
                        None => Ok(()),
                    }
                }))
                .await
                .map_err(PartError::from)
                .and_then(|recorded| recorded.map_err(PartError::from))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let mut parts = self.parts.lock();
            if parts.failure.is_none() {
                let reason = match &e {
                    PartError::Store(StoreError::PreconditionFailed { .. }) => {
                        "the object changed while it was being read: open it again".into()
                    }
                    e => e.to_string(),
                };
                parts.failure = Some(FetchError::of(&self.meta.key, &e, reason));
                parts.error = Some(e);
            }
        }
        claim.armed = false;
        self.changed.send_modify(|n| *n += 1);
        self.parts.lock().failure.is_none()
    }

    /// Fetches the bytes of `range` that nobody is fetching, on the priority lane; while these
    /// GETs run, bulk GETs hold back.
    fn fetch_unclaimed(self: &Arc<Self>, range: Range<u64>) {
        for piece in self.claim(range) {
            let download = self.clone();
            self.job.downloader.readers.spawn(async move {
                let downloader = &download.job.downloader;
                downloader.urgent_started();
                let _running = scopeguard(|| downloader.urgent_ended());
                download.fetch_piece(piece, true, None).await
            });
        }
    }

    /// Fetches `range` ahead of a sequential reader, without waiting for it: from the end of
    /// the stretch a read at its start would fetch, to a multiple of its length (a part at
    /// most), so that a reader's window moving forward claims pieces of about its size.
    fn prefetch(self: &Arc<Self>, range: Range<u64>) {
        let range = self.parts.lock().ahead(&range);
        self.fetch_unclaimed(range);
    }

    /// Waits until `range` is present, or fails with why it never will be; `on_change` runs
    /// before each look.
    pub(super) async fn wait_for(
        &self,
        range: Range<u64>,
        mut on_change: impl FnMut(),
    ) -> Result<(), FetchError> {
        let mut changed = self.changed.subscribe();
        loop {
            on_change();
            {
                let parts = self.parts.lock();
                if parts.present.covers(range.start..range.end.min(parts.size)) {
                    return Ok(());
                }
                if let Some(failure) = &parts.failure {
                    return Err(failure.clone());
                }
            }
            changed.changed().await.expect("the sender lives in self");
        }
    }

    /// Makes `range` readable: fetches what of it nobody fetches yet (the stretch around it,
    /// see `READ_ALIGN`) ahead of everything else, and waits for it. The read's own bytes
    /// (rounded out to `URGENT_BATCH`) are a GET of their own, asked first: a reader of a
    /// file's footer does not wait for the megabyte before it to stream in.
    pub async fn read_ready(self: &Arc<Self>, range: Range<u64>) -> Result<(), FetchError> {
        if self.is_present(range.clone()) {
            return Ok(());
        }
        tracing::debug!(key = %self.meta.key, ?range, "read waits for its range");
        let waited = std::time::Instant::now();
        // Bytes the background download has already claimed go to the priority lane too (if
        // they wait for a permit, to fetch or to retry), and keep streaming while other bulk
        // GETs hold back, or this reader would wait behind the backlog it pauses.
        let (own, want) = {
            let mut parts = self.parts.lock();
            let align = parts.read_align();
            let own = parts.aligned(&range, align.min(URGENT_BATCH as u64));
            let want = parts.aligned(&range, align);
            parts.wanted.insert(want.clone());
            (own, want)
        };
        self.job.flight.wake.notify_waiters();
        let downloader = &self.job.downloader;
        downloader.urgent_started();
        let _waiting = scopeguard(|| downloader.urgent_ended());
        // Bytes given back (their fetch was dropped) are fetched again for this reader.
        let result = self
            .wait_for(range.clone(), || {
                self.fetch_unclaimed(own.clone());
                self.fetch_unclaimed(want.clone());
            })
            .await;
        tracing::debug!(key = %self.meta.key, ?range, ok = result.is_ok(), "read waited");
        if let Some(m) = crate::metrics::get() {
            m.reader_waits.observe(waited.elapsed().as_secs_f64());
        }
        result
    }
}

/// How far ahead of a sequential reader a downloading file is fetched: at first (a reader of a
/// header reads a few bytes and stops) ...
const MIN_AHEAD: u64 = 1 << 20;
/// ... and at most.
const READ_AHEAD: u64 = 16 << 20;

/// One reader's read-ahead in a download: a read that starts where its last one ended is
/// sequential and gets the next stretch fetched ahead of it, a window that doubles with each
/// sequential read from [`MIN_AHEAD`] up to [`READ_AHEAD`] and starts over after a random read,
/// which fetches nothing ahead.
#[derive(Default)]
pub struct ReadAhead {
    /// Where the last read ended.
    next: AtomicU64,
    /// The window of the last sequential read; 0 after a random one.
    window: AtomicU64,
}

impl ReadAhead {
    /// After a read of `offset..end` of `download` (its bytes present): fetches ahead of it
    /// when it was sequential.
    pub fn after_read(&self, download: &Arc<Download>, offset: u64, end: u64) {
        if self.next.swap(end, Ordering::Relaxed) != offset {
            self.window.store(0, Ordering::Relaxed);
            return;
        }
        let window = (self.window.load(Ordering::Relaxed) * 2).clamp(MIN_AHEAD, READ_AHEAD);
        self.window.store(window, Ordering::Relaxed);
        download.prefetch(end..end + window);
    }
}

/// A claimed piece being fetched. Dropped before the fetch ends (its task was aborted), it
/// gives back what of the piece did not land, and says so, so that a reader waiting for it
/// claims it again rather than waiting for a fetch that will never finish.
struct Claim<'a> {
    download: &'a Download,
    range: Range<u64>,
    armed: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut parts = self.download.parts.lock();
            for gap in parts.present.missing(self.range.clone()) {
                parts.claimed.remove(gap);
            }
        }
        self.download.changed.send_modify(|n| *n += 1);
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(size: u64, part_size: u64) -> Parts {
        Parts::new(part_size, size, RangeSet::default())
    }

    pub(super) fn unclaimed(p: &Parts, r: Range<u64>) -> Vec<Range<u64>> {
        p.unclaimed(r).collect()
    }

    #[test]
    fn bulk_pieces_are_the_parts_of_the_object() {
        let p = parts(17, 8);
        assert_eq!(unclaimed(&p, 0..17), [0..8, 8..16, 16..17]);
        assert_eq!(unclaimed(&parts(8, 8), 0..8), vec![0..8]);
        assert!(unclaimed(&parts(0, 8), 0..8).is_empty());
    }

    #[test]
    fn pieces_skip_claimed_bytes_and_never_cross_a_part_boundary() {
        let mut p = parts(40, 8);
        // A reader took 3..5 and 10..20.
        p.claimed.insert(3..5);
        p.claimed.insert(10..20);
        assert_eq!(
            unclaimed(&p, 0..40),
            [0..3, 5..8, 8..10, 20..24, 24..32, 32..40]
        );
        assert_eq!(unclaimed(&p, 6..22), [6..8, 8..10, 20..22]);
        // Clamped to the file.
        assert_eq!(unclaimed(&p, 36..100), vec![36..40]);
    }

    #[test]
    fn a_sequential_readers_prefetch_starts_small_and_grows_to_whole_parts() {
        const MIB: u64 = 1 << 20;
        let p = parts(100 * MIB, 8 * MIB);
        let k = 16 << 10;
        // A first read of 16 KiB at 0 fetches its megabyte; the next one, ahead of it.
        assert_eq!(p.ahead(&(k..k + MIB)), MIB..2 * MIB);
        // Doubling windows, each ending on a multiple of itself...
        assert_eq!(p.ahead(&(3 * k..3 * k + 2 * MIB)), MIB..4 * MIB);
        assert_eq!(p.ahead(&(5 * k..5 * k + 4 * MIB)), MIB..8 * MIB);
        // ...up to whole parts.
        assert_eq!(p.ahead(&(9 * k..9 * k + 16 * MIB)), MIB..24 * MIB);
        // Near the end, clamped to the file.
        assert_eq!(p.ahead(&(99 * MIB..115 * MIB)), 99 * MIB..100 * MIB);
        // With parts smaller than a megabyte, everything aligns to parts.
        let small = parts(MIB, 64 << 10);
        assert_eq!(small.ahead(&(10..10 + MIB)), (64 << 10)..MIB);
    }

    #[test]
    fn a_reader_range_rounds_out_and_stays_in_the_file() {
        let p = parts(100, 8);
        assert_eq!(p.aligned(&(9..10), 4), 8..12);
        assert_eq!(p.aligned(&(97..98), 8), 96..100);
        assert_eq!(p.aligned(&(90..200), 8), 88..100);
        assert_eq!(p.aligned(&(8..8), 8), 8..8);
    }
}
