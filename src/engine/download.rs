//! Downloading one object with concurrent ranged GETs, then committing it.
//!
//! A small object is one GET into memory, then a staging file. A large one is a [`Download`]:
//! its bytes land in a resumable partial file as they arrive, in the order they are claimed:
//! bulk workers claim the lowest missing part, and a reader waiting for a byte range claims the
//! megabyte around it ahead of them, on the priority lane ([`Download::read_ready`]); while a
//! reader waits, bulk GETs hold back (`hold_back`), and for [`super::READER_GRACE`] after.
//!
//! Every GET of one object carries the ETag from the listing (`If-Match`). When the store says the
//! object changed, the partial download is thrown away, the object is looked up again and the
//! download restarts with the new version: parts of two versions are never stitched together.
//! Transient failures of a GET retry what of it did not land, with backoff; the GET permit is
//! released while it waits.

use super::{MountState, Shared};
use crate::local::{LocalError, Staged};
use crate::ranges::RangeSet;
use crate::retry::{Transient, retry};
use crate::store::{ObjectMeta, ObjectStore, StoreError};
use crate::tasks::joined;
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{Notify, SemaphorePermit, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Times a download restarts because the object changed under it, within one pass.
const MAX_VERSION_RESTARTS: u32 = 5;
/// Bytes buffered per GET before they are written out...
const WRITE_BATCH: usize = 1 << 20;
/// ...and for a reader waiting on them, who can have them as soon as they are written.
const URGENT_BATCH: usize = 128 << 10;

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Written {
        bytes: u64,
    },
    /// The object was deleted after it was listed.
    Gone,
}

/// Why a download failed, for whoever waits on it: a reader's errno follows from its kind.
#[derive(Debug, Clone, thiserror::Error)]
#[error("\"{key}\": {reason}")]
pub struct FetchError {
    pub key: String,
    pub kind: FetchKind,
    pub reason: String,
}

/// What went wrong with a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    /// The object changed after it was listed (or opened): the version asked for is gone.
    Changed,
    /// The object was deleted.
    Gone,
    /// The store refused, or kept failing after the retries.
    Store,
    /// The local copy could not be written: `errno` where the system gave one (ENOSPC).
    Local { errno: Option<i32> },
    /// The download was cancelled: the process is stopping.
    Cancelled,
}

impl FetchError {
    /// The error of a download of `key` that failed with `e`; `reason` says it to the user.
    fn of(key: &str, e: &PartError, reason: String) -> Self {
        let kind = match e {
            PartError::Store(StoreError::PreconditionFailed { .. }) => FetchKind::Changed,
            PartError::Store(StoreError::NoSuchKey { .. }) => FetchKind::Gone,
            PartError::Store(_) => FetchKind::Store,
            PartError::Write(e) | PartError::Local(LocalError::Io { source: e, .. }) => {
                FetchKind::Local {
                    errno: e.raw_os_error(),
                }
            }
            PartError::Local(_) => FetchKind::Local { errno: None },
            PartError::Failed(f) => f.kind,
        };
        Self {
            key: key.to_owned(),
            kind,
            reason,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the staging file: {0}")]
    Write(#[from] io::Error),
    #[error(transparent)]
    Local(#[from] LocalError),
    /// A download that failed for a reason already told to its readers.
    #[error("{}", .0.reason)]
    Failed(FetchError),
}

impl Transient for PartError {
    fn is_transient(&self) -> bool {
        matches!(self, PartError::Store(e) if e.is_transient())
    }
}

/// A download under way, shared by everyone who wants that file: the bulk pass that started it
/// and any reader that asked for it since. A reader makes it urgent: its remaining GETs take
/// permits from the priority lane instead of queueing behind the backlog.
pub(crate) struct Flight {
    urgent: AtomicBool,
    wake: Notify,
    done: watch::Sender<Option<Result<Outcome, FetchError>>>,
    /// The large download under way (replaced when the object changes and it starts again).
    download: watch::Sender<Option<Arc<Download>>>,
}

impl Flight {
    fn new(urgent: bool) -> Self {
        Self {
            urgent: AtomicBool::new(urgent),
            wake: Notify::new(),
            done: watch::channel(None).0,
            download: watch::channel(None).0,
        }
    }

    /// Makes the download urgent; returns whether it was not already.
    fn hurry(&self) -> bool {
        let newly = !self.urgent.swap(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        newly
    }

    async fn wait(&self) -> Result<Outcome, FetchError> {
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
struct FlightGuard {
    shared: Arc<Shared>,
    key: String,
    flight: Arc<Flight>,
    result: Option<Result<Outcome, FetchError>>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.shared.flights.remove(&self.key);
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
            self.shared.urgent_ended();
        }
    }
}

/// Everything one object's download needs, shared by its part tasks.
struct Job {
    shared: Arc<Shared>,
    mount: Arc<MountState>,
    store: Arc<dyn ObjectStore>,
    flight: Arc<Flight>,
}

impl Job {
    fn new(guard: &FlightGuard, mount: Arc<MountState>, store: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            shared: guard.shared.clone(),
            mount,
            store,
            flight: guard.flight.clone(),
        })
    }
}

/// The download of one file: already under way (join it), or registered now (run it).
enum Registered {
    Joined(Arc<Flight>),
    New(FlightGuard),
}

fn register(shared: &Arc<Shared>, mount: &MountState, path: &str, urgent: bool) -> Registered {
    let key = format!("{}/{}", mount.mount.id, path);
    match shared.flights.entry(key.clone()) {
        Entry::Occupied(e) => {
            let flight = e.get().clone();
            drop(e);
            if urgent && flight.hurry() {
                shared.urgent_started();
            }
            Registered::Joined(flight)
        }
        Entry::Vacant(e) => {
            if urgent {
                shared.urgent_started();
            }
            let flight = e.insert(Arc::new(Flight::new(urgent))).clone();
            Registered::New(FlightGuard {
                shared: shared.clone(),
                key,
                flight,
                result: None,
            })
        }
    }
}

/// Runs a registered download to its end and tells everyone waiting on it. `prepared` is the
/// large download a reader's open has already set up (see [`reader`]).
async fn run(
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

/// Downloads `meta` to `path` under the mount directory and records it in the manifest. When
/// the same file is already downloading, waits for that download instead (hurrying it along
/// when `urgent`).
pub(crate) async fn fetch(
    shared: Arc<Shared>,
    mount: Arc<MountState>,
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    path: String,
    urgent: bool,
) -> Result<Outcome, FetchError> {
    match register(&shared, &mount, &path, urgent) {
        Registered::Joined(flight) => flight.wait().await,
        Registered::New(guard) => {
            let job = Job::new(&guard, mount, store);
            run(guard, job, meta, path, None).await
        }
    }
}

/// How a reader gets at a file that is not in the cache yet.
pub enum Reader {
    /// The file is complete at its final path (or gone: its object was deleted).
    Complete,
    /// The file is downloading: read it through this, range by range.
    Partial(Arc<Download>),
}

/// Starts (or joins) the download of a file for a reader, and returns as soon as the reader can
/// read: at once for a large file (its ranges are fetched as they are read), after the download
/// for a small one.
pub(crate) async fn reader(
    shared: Arc<Shared>,
    mount: Arc<MountState>,
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    path: String,
) -> Result<Reader, FetchError> {
    if is_small(&shared, &meta) {
        return fetch(shared, mount, store, meta, path, true)
            .await
            .map(|_| Reader::Complete);
    }
    let meta_etag = meta.etag.clone();
    let flight = match start_reader(&shared, mount, store, meta, path) {
        Started::Ready(reader) => return reader,
        Started::Setting(flight) => flight,
    };
    // The download of the version the reader asked for: after a change, the flight restarts
    // with another version, and the reader gets that one once it is complete.
    let mut published = flight.download.subscribe();
    let download = async move {
        published
            .wait_for(|d| d.as_ref().is_some_and(|d| d.meta.etag == meta_etag))
            .await
            .ok()
            .and_then(|d| d.clone())
    };
    tokio::select! {
        Some(download) = download => Ok(Reader::Partial(download)),
        done = flight.wait() => done.map(|_| Reader::Complete),
    }
}

/// [`reader`] when it needs no waiting, as on a FUSE thread: `None` for a small file (read whole
/// first) or a download still being set up by someone else.
pub(crate) fn reader_now(
    shared: &Arc<Shared>,
    mount: Arc<MountState>,
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    path: String,
) -> Option<Result<Reader, FetchError>> {
    if is_small(shared, &meta) {
        return None;
    }
    match start_reader(shared, mount, store, meta, path) {
        Started::Ready(reader) => Some(reader),
        Started::Setting(_) => None,
    }
}

/// How a reader's large download stands.
enum Started {
    Ready(Result<Reader, FetchError>),
    /// Joined a download whose partial file is not published yet (or is of another version).
    Setting(Arc<Flight>),
}

/// Joins the download of a large file, or starts it. A download started here is set up right
/// away, in the reader's thread (the partial file staged and published): the reader's open does
/// not wait for a task on a busy runtime or for the blocking pool. The rest of the download runs
/// on the readers' runtime, its workers on the background's (see `fetch_large`).
fn start_reader(
    shared: &Arc<Shared>,
    mount: Arc<MountState>,
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    path: String,
) -> Started {
    match register(shared, &mount, &path, false) {
        Registered::Joined(flight) => {
            let published = flight.download.borrow().clone();
            match published {
                Some(d) if d.meta.etag == meta.etag => Started::Ready(Ok(Reader::Partial(d))),
                _ => Started::Setting(flight),
            }
        }
        Registered::New(mut guard) => {
            let job = Job::new(&guard, mount, store);
            match stage(&job, &meta) {
                Ok(download) => {
                    let id = &job.mount.mount.id;
                    let span = tracing::info_span!("download", mount = %id, key = %meta.key);
                    let prepared = Some(download.clone());
                    shared
                        .readers
                        .spawn(run(guard, job, meta, path, prepared).instrument(span));
                    Started::Ready(Ok(Reader::Partial(download)))
                }
                Err(e) => {
                    let failed = FetchError::of(&meta.key, &e, e.to_string());
                    guard.result = Some(Err(failed.clone()));
                    Started::Ready(Err(failed))
                }
            }
        }
    }
}

fn is_small(shared: &Shared, meta: &ObjectMeta) -> bool {
    meta.size <= shared.part_size.min(WRITE_BATCH as u64)
}

async fn download(
    job: &Arc<Job>,
    mut meta: ObjectMeta,
    path: &str,
    mut prepared: Option<Arc<Download>>,
) -> Result<Outcome, FetchError> {
    let fail = |e: PartError, key: &str| FetchError::of(key, &e, e.to_string());
    for _ in 0..MAX_VERSION_RESTARTS {
        let result = if is_small(&job.shared, &meta) {
            fetch_small(job, &meta, path).await
        } else {
            fetch_large(job, &meta, path, prepared.take()).await
        };
        match result {
            Ok(()) => return Ok(Outcome::Written { bytes: meta.size }),
            Err(PartError::Store(StoreError::PreconditionFailed { .. })) => {
                tracing::info!(key = %meta.key, "object changed during download; starting again");
                match retry("head", || job.store.head(&meta.key)).await {
                    Ok(Some(new)) => meta = new,
                    Ok(None) => return Ok(Outcome::Gone),
                    Err(e) => return Err(fail(e.into(), &meta.key)),
                }
            }
            // Deleted between the listing and the GET: nothing to copy, nothing failed.
            Err(PartError::Store(StoreError::NoSuchKey { .. })) => return Ok(Outcome::Gone),
            Err(e) => return Err(fail(e, &meta.key)),
        }
    }
    Err(FetchError {
        key: meta.key,
        kind: FetchKind::Changed,
        reason:
            "the object kept changing while it was downloaded; it will be tried again next pass"
                .into(),
    })
}

/// A small object is read into memory with one GET, then staged, written and committed in one
/// blocking call: one hand-off to the blocking pool per file instead of three.
async fn fetch_small(job: &Arc<Job>, meta: &ObjectMeta, path: &str) -> Result<(), PartError> {
    let data = match &job.shared.stream {
        _ if meta.size == 0 => Vec::new(),
        // In the background: streamed on its runtime. (When a reader waits for the file, or
        // there is no such runtime, fetched here.)
        Some(stream) if !is_urgent(job, &|| false) => {
            let (job, meta) = (job.clone(), meta.clone());
            joined(stream.spawn(async move {
                download_part(&job, &meta, 0..meta.size, None, &|| false, None).await
            }))
            .await??
        }
        _ => download_part(job, meta, 0..meta.size, None, &|| false, None).await?,
    };
    let (job, meta, path) = (job.clone(), meta.clone(), path.to_owned());
    joined(tokio::task::spawn_blocking(move || {
        let staged = job.shared.root.stage(0)?;
        write_all_vectored_at(&staged.file(), &data, 0)?;
        Ok(job.mount.copy.commit(staged, &path, &meta)?)
    }))
    .await?
}

/// Opens (or resumes) the partial file of a large download and publishes the download to its
/// readers.
fn stage(job: &Arc<Job>, meta: &ObjectMeta) -> Result<Arc<Download>, PartError> {
    let id = &job.mount.mount.id;
    let (staged, present) = job
        .shared
        .root
        .partial(id, &meta.key, &meta.etag, meta.size)?;
    if !present.is_empty() {
        tracing::debug!(key = %meta.key, present = present.bytes(), "resuming a partial download");
    }
    let download = Arc::new(Download::new(job.clone(), meta.clone(), staged, present));
    job.flight.download.send_replace(Some(download.clone()));
    Ok(download)
}

/// A large object is written into its partial file as its bytes arrive: bulk workers fetch the
/// missing parts in order while readers may fetch the bytes they need first.
async fn fetch_large(
    job: &Arc<Job>,
    meta: &ObjectMeta,
    path: &str,
    prepared: Option<Arc<Download>>,
) -> Result<(), PartError> {
    let download = match prepared {
        Some(download) => download,
        None => {
            let (job, meta) = (job.clone(), meta.clone());
            joined(tokio::task::spawn_blocking(move || stage(&job, &meta))).await??
        }
    };

    let mut workers = JoinSet::new();
    let missing = {
        let parts = download.parts.lock();
        parts.unclaimed(0..parts.size).count()
    };
    let shared = &job.shared;
    let stream = shared.stream.as_ref().unwrap_or(&shared.bulk);
    for _ in 0..missing.min(shared.files_in_flight) {
        let (job, download) = (job.clone(), download.clone());
        workers.spawn_on(
            async move {
                loop {
                    let permit = permit(&job, &|| false).await;
                    let Some(piece) = download.claim_next() else {
                        return;
                    };
                    if !download.fetch_piece(piece, false, Some(permit)).await {
                        return;
                    }
                }
            },
            stream,
        );
    }
    // Complete, or failed (a worker's part or a reader's): then the other workers stop.
    let failed = download.wait_for(0..meta.size, || {}).await.err();
    workers.shutdown().await;
    let staged = download.staged.lock().take().expect("committed once");
    if let Some(failure) = failed {
        job.flight.download.send_replace(None);
        let error = download.parts.lock().error.take();
        if matches!(
            error,
            Some(PartError::Store(
                StoreError::PreconditionFailed { .. } | StoreError::NoSuchKey { .. }
            ))
        ) {
            // Parts of that version are of no use any more. Awaited: the next try reuses the
            // same partial path, which a late discard would delete under it.
            joined(tokio::task::spawn_blocking(move || staged.discard())).await?;
        }
        return Err(error.unwrap_or(PartError::Failed(failure)));
    }
    let (job, meta, path) = (job.clone(), meta.clone(), path.to_owned());
    joined(tokio::task::spawn_blocking(move || {
        Ok(job.mount.copy.commit(staged, &path, &meta)?)
    }))
    .await?
}

/// A large object being downloaded into its partial file.
pub struct Download {
    job: Arc<Job>,
    meta: ObjectMeta,
    file: Arc<File>,
    /// Shared with record writes on the blocking pool: those capture only this, so a write still
    /// running after its task was aborted holds no engine state (such as the cache's lock).
    staged: Arc<Mutex<Option<Staged>>>,
    parts: Mutex<Parts>,
    /// Bumped whenever bytes land, a fetch is given up, or the download fails.
    changed: watch::Sender<u64>,
}

/// Which bytes of a download are where. Bulk workers fetch one part at a time (the unclaimed
/// bytes of it); a reader fetches the stretch it reads, rounded out to [`READ_ALIGN`].
struct Parts {
    part_size: u64,
    size: u64,
    /// Bytes written to the partial file.
    present: RangeSet,
    /// Bytes being fetched or present.
    claimed: RangeSet,
    /// Bytes a reader waits for: their GETs (and retries) take the priority lane.
    wanted: RangeSet,
    /// Why the download failed: the first error, for the download itself...
    error: Option<PartError>,
    /// ...and what readers are told.
    failure: Option<FetchError>,
}

/// A reader's fetch is the stretch it reads rounded out to this (or to a part, if smaller): a GET
/// costs about as much as a megabyte of transfer, and the kernel's next reads of the same
/// stretch find it there.
const READ_ALIGN: u64 = 1 << 20;

impl Parts {
    fn new(part_size: u64, size: u64, present: RangeSet) -> Self {
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
    fn unclaimed(&self, range: Range<u64>) -> impl Iterator<Item = Range<u64>> + use<> {
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
    fn new(job: Arc<Job>, meta: ObjectMeta, staged: Staged, present: RangeSet) -> Self {
        let parts = Parts::new(job.shared.part_size, meta.size, present);
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
    fn claim_next(&self) -> Option<Range<u64>> {
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
    async fn fetch_piece(
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
            self.job.shared.readers.spawn(async move {
                let shared = &download.job.shared;
                shared.urgent_started();
                let _running = scopeguard(|| shared.urgent_ended());
                download.fetch_piece(piece, true, None).await
            });
        }
    }

    /// Fetches `range` ahead of a sequential reader, without waiting for it: from the end of
    /// the stretch a read at its start would fetch, to a multiple of its length (a part at
    /// most), so that a reader's window moving forward claims pieces of about its size.
    pub fn prefetch(self: &Arc<Self>, range: Range<u64>) {
        let range = self.parts.lock().ahead(&range);
        self.fetch_unclaimed(range);
    }

    /// Waits until `range` is present, or fails with why it never will be; `on_change` runs
    /// before each look.
    async fn wait_for(
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
        let shared = &self.job.shared;
        shared.urgent_started();
        let _waiting = scopeguard(|| shared.urgent_ended());
        // Bytes given back (their fetch was dropped) are fetched again for this reader.
        let result = self
            .wait_for(range.clone(), || {
                self.fetch_unclaimed(own.clone());
                self.fetch_unclaimed(want.clone());
            })
            .await;
        tracing::debug!(key = %self.meta.key, ?range, ok = result.is_ok(), "read waited");
        result
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

/// Whether a GET is for a waiting reader (`urgent` says so for its bytes), or its whole
/// download is urgent.
fn is_urgent(job: &Job, urgent: &(dyn Fn() -> bool + Sync)) -> bool {
    urgent() || job.flight.urgent.load(Ordering::SeqCst)
}

/// Whether a reader waits on this GET's bytes; cheap (one atomic load) while no reader waits,
/// as it is asked for every chunk of every GET.
fn serves_waiting_reader(job: &Job, urgent: &(dyn Fn() -> bool + Sync)) -> bool {
    job.shared.urgent_active.load(Ordering::SeqCst) > 0 && is_urgent(job, urgent)
}

/// Waits while readers wait for bytes and this GET is not fetching any of them: a bulk GET
/// starts nothing and reads no further meanwhile (its server stops sending once the socket
/// buffers are full), so the readers' GETs get the bandwidth.
async fn hold_back(job: &Job, urgent: &(dyn Fn() -> bool + Sync)) {
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
async fn permit<'a>(job: &'a Job, urgent: &(dyn Fn() -> bool + Sync)) -> SemaphorePermit<'a> {
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

/// Where the bytes of a GET go: into the partial file, each stretch reported once written.
type ToFile<'a> = (&'a Arc<File>, &'a (dyn Fn(Range<u64>) + Sync));

/// Downloads `range` of an object with retries. With a file, the bytes are written to it as
/// they arrive and a retry asks only for what did not land; without, they are returned.
async fn download_part(
    job: &Job,
    meta: &ObjectMeta,
    range: Range<u64>,
    to: Option<ToFile<'_>>,
    urgent: &(dyn Fn() -> bool + Sync),
    first_permit: Option<SemaphorePermit<'_>>,
) -> Result<Vec<Bytes>, PartError> {
    let first_permit = Mutex::new(first_permit);
    // Bytes before this one are in the file.
    let written = &AtomicU64::new(range.start);
    retry(&meta.key, || async {
        let given = first_permit.lock().take();
        let _permit = match given {
            Some(p) => p,
            None => permit(job, urgent).await,
        };
        let from = written.load(Ordering::SeqCst);
        read_part(job, meta, from..range.end, to, written, urgent).await
    })
    .await
}

/// One GET of `range`; with a file, each stretch written to it moves `written` past it.
async fn read_part(
    job: &Job,
    meta: &ObjectMeta,
    range: Range<u64>,
    to: Option<ToFile<'_>>,
    written: &AtomicU64,
    urgent: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<Bytes>, PartError> {
    let progress = &job.shared.progress;
    let asked = std::time::Instant::now();
    // A GET a reader waits for goes through connections of the readers' own, which the
    // readers' runtime drives (see `ObjectStore::get_for_reader`).
    let mut body = if is_urgent(job, urgent) {
        job.store
            .get_for_reader(&meta.key, range.clone(), &meta.etag)
    } else {
        job.store.get(&meta.key, range.clone(), &meta.etag)
    }
    .await?;
    if is_urgent(job, urgent) {
        // With "read waits"/"read waited", tells the server's share of a reader's wait.
        tracing::debug!(key = %meta.key, ?range, elapsed = ?asked.elapsed(), "reader's GET answered");
    }
    // Bytes counted in the progress but not written: taken back if the GET fails.
    let mut batched = 0usize;
    let result = async {
        let mut offset = range.start;
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            if to.is_some() {
                hold_back(job, urgent).await;
            }
            let Some(chunk) = body.next().await else {
                break;
            };
            let chunk = chunk?;
            if offset + (batched + chunk.len()) as u64 > range.end {
                return Err(StoreError::Transient(format!(
                    "server sent more than the {} bytes asked for",
                    range.end - range.start
                ))
                .into());
            }
            progress.add_bytes(chunk.len() as u64);
            batched += chunk.len();
            batch.push(chunk);
            let full = batched >= WRITE_BATCH
                || batched >= URGENT_BATCH && serves_waiting_reader(job, urgent);
            if let Some(to) = to
                && full
            {
                let inline = is_urgent(job, urgent);
                offset =
                    write_landed(to, std::mem::take(&mut batch), offset, written, inline).await?;
                batched = 0;
            }
        }
        if let Some(to) = to
            && !batch.is_empty()
        {
            let inline = is_urgent(job, urgent);
            offset = write_landed(to, std::mem::take(&mut batch), offset, written, inline).await?;
            batched = 0;
        }
        if offset + batched as u64 != range.end {
            return Err(StoreError::Transient(format!(
                "body ended early: got {} of {} bytes",
                offset + batched as u64 - range.start,
                range.end - range.start
            ))
            .into());
        }
        Ok(batch)
    }
    .await;
    if result.is_err() {
        progress.sub_bytes(batched as u64);
    }
    result
}

/// Writes a batch of a GET at `offset` and reports it landed; returns the offset after it. A
/// batch a reader waits for is written right here (a `pwritev` of at most a megabyte into the
/// page cache): a trip to the blocking pool and back would cost the reader two thread
/// wake-ups, each of which can take milliseconds on a busy machine.
async fn write_landed(
    (file, landed): ToFile<'_>,
    batch: Vec<Bytes>,
    offset: u64,
    written: &AtomicU64,
    inline: bool,
) -> io::Result<u64> {
    let len: u64 = batch.iter().map(|b| b.len() as u64).sum();
    if inline {
        write_all_vectored_at(file, &batch, offset)?;
    } else {
        write_batch(file, batch, offset).await?;
    }
    let end = offset + len;
    written.store(end, Ordering::SeqCst);
    landed(offset..end);
    Ok(end)
}

async fn write_batch(file: &Arc<File>, batch: Vec<Bytes>, offset: u64) -> io::Result<()> {
    let file = file.clone();
    joined(tokio::task::spawn_blocking(move || {
        write_all_vectored_at(&file, &batch, offset)
    }))
    .await?
}

/// `pwritev` of every buffer at `offset`, looping over short writes: one system call per batch
/// instead of one per network chunk, and no copy into an intermediate buffer.
fn write_all_vectored_at(file: &File, bufs: &[Bytes], mut offset: u64) -> io::Result<()> {
    let mut bufs: Vec<&[u8]> = bufs
        .iter()
        .map(|b| &b[..])
        .filter(|b| !b.is_empty())
        .collect();
    let mut first = 0;
    while first < bufs.len() {
        let iov: Vec<libc::iovec> = bufs[first..]
            .iter()
            .take(1024) // IOV_MAX
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: every iovec points into a live, immutable `Bytes` buffer borrowed for the
        // duration of the call; pwritev only reads from them.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        let mut written = n as usize;
        while written > 0 {
            let b = bufs[first];
            if written >= b.len() {
                written -= b.len();
                first += 1;
            } else {
                bufs[first] = &b[written..];
                written = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(size: u64, part_size: u64) -> Parts {
        Parts::new(part_size, size, RangeSet::default())
    }

    fn unclaimed(p: &Parts, r: Range<u64>) -> Vec<Range<u64>> {
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

    #[test]
    fn vectored_writes_land_at_their_offset() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let bufs: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 7]))
            .collect();
        write_all_vectored_at(tmp.as_file(), &bufs, 5).unwrap();
        let data = std::fs::read(tmp.path()).unwrap();
        assert_eq!(data.len(), 5 + 3000 * 7);
        assert!(data[..5].iter().all(|&b| b == 0));
        assert_eq!(data[5 + 7 * 2999], (2999 % 251) as u8);
    }
}
