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
//!
//! Rooms: this file (one object's download, small or large, and its errors), [`flight`] (the
//! registry of downloads in flight, shared by whoever wants the same file), [`reader`] (a
//! reader's entry points), [`large`] (a large object's download into its partial file, and what
//! readers wait on), [`lanes`] (the bulk and urgent GET permits, and the bulk lane holding back
//! for readers), [`get`] (one ranged GET streamed into a file).
//!
//! Lock order: the registry's shard lock (`flight`) only while registering or removing a
//! flight; a large download's `parts` or its `staged`, one at a time (`large`); none of them
//! with another, nor across an `.await`. A GET permit (`lanes`) is held for one attempt of one
//! GET, and no permit is awaited while one is held. What guards each field of a [`Flight`] and
//! a [`Download`] is said beside it.

mod flight;
mod get;
mod lanes;
mod large;
mod reader;

pub(crate) use flight::Flight;
pub(crate) use lanes::{Lanes, TINY_BODY};
pub use large::{Download, ReadAhead};
pub use reader::Reader;
pub(crate) use reader::{reader, reader_now};

use flight::{FlightGuard, Registered, register, run};
use get::{download_part, write_all_vectored_at};
use lanes::{is_urgent, permit};

use super::{Downloader, Replica};
use crate::etag::Etag;
use crate::local::LocalError;
use crate::retry::{Transient, retry};
use crate::store::{ObjectMeta, ObjectStore, StoreError};
use crate::tasks::joined;
use std::io;
use std::sync::Arc;
use tokio::task::JoinSet;

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

/// Everything one object's download needs, shared by its part tasks.
struct Job {
    downloader: Arc<Downloader>,
    replica: Arc<Replica>,
    store: Arc<dyn ObjectStore>,
    flight: Arc<Flight>,
    /// The version the manifest recorded at the path when the download was decided (see
    /// `MountCopy::commit`).
    base: Option<Etag>,
}

impl Job {
    fn new(
        guard: &FlightGuard,
        replica: Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        base: Option<Etag>,
    ) -> Arc<Self> {
        Arc::new(Self {
            downloader: guard.downloader.clone(),
            replica,
            store,
            flight: guard.flight.clone(),
            base,
        })
    }
}

/// Downloads `meta` to `path` under the mount directory and records it in the manifest. When
/// the same file is already downloading, waits for that download instead (hurrying it along
/// when `urgent`).
pub(crate) async fn fetch(
    downloader: Arc<Downloader>,
    replica: Arc<Replica>,
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    path: String,
    base: Option<Etag>,
    urgent: bool,
) -> Result<Outcome, FetchError> {
    match register(&downloader, &replica, &path, urgent) {
        Registered::Joined(flight) => flight.wait().await,
        Registered::New(guard) => {
            let job = Job::new(&guard, replica, store, base);
            run(guard, job, meta, path, None).await
        }
    }
}

fn is_small(downloader: &Downloader, meta: &ObjectMeta) -> bool {
    meta.size <= downloader.part_size.min(WRITE_BATCH as u64)
}

async fn download(
    job: &Arc<Job>,
    mut meta: ObjectMeta,
    path: &str,
    mut prepared: Option<Arc<Download>>,
) -> Result<Outcome, FetchError> {
    let fail = |e: PartError, key: &str| FetchError::of(key, &e, e.to_string());
    for _ in 0..MAX_VERSION_RESTARTS {
        let result = if is_small(&job.downloader, &meta) {
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
            // A writeable mount's file changed here meanwhile: the change wins, and is uploaded.
            Err(PartError::Local(e @ LocalError::Kept(_))) => {
                tracing::debug!(key = %meta.key, "{e}");
                return Ok(Outcome::Gone);
            }
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
/// blocking call: one hand-off to the blocking pool per file instead of three. In the
/// background its GET streams on the idle threads ([`EngineConfig::stream`]), unless its body
/// is tiny ([`TINY_BODY`]): such a body arrives in one piece, with nothing to stream
/// that a reader should preempt, and its cost is the request's, which a hand-off to other
/// threads and back for each file only adds to (measurements: docs/PERFORMANCE.md, "Tiny
/// objects").
///
/// [`EngineConfig::stream`]: crate::engine::EngineConfig::stream
async fn fetch_small(job: &Arc<Job>, meta: &ObjectMeta, path: &str) -> Result<(), PartError> {
    let data = match &job.downloader.stream {
        _ if meta.size == 0 => Vec::new(),
        Some(stream) if meta.size > TINY_BODY && !is_urgent(job, &|| false) => {
            let (job, meta) = (job.clone(), meta.clone());
            joined(stream.spawn(async move {
                download_part(&job, &meta, 0..meta.size, None, &|| false, None).await
            }))
            .await??
        }
        // Tiny, a reader waits for it, or there is no such runtime: fetched here.
        _ => download_part(job, meta, 0..meta.size, None, &|| false, None).await?,
    };
    let (job, meta, path) = (job.clone(), meta.clone(), path.to_owned());
    joined(tokio::task::spawn_blocking(move || {
        let staged = job.downloader.root.stage(0)?;
        write_all_vectored_at(&staged.file(), &data, 0)?;
        Ok(job
            .replica
            .copy
            .commit(staged, &path, &meta, job.base.as_ref())?)
    }))
    .await?
}

/// Opens (or resumes) the partial file of a large download and publishes the download to its
/// readers.
fn prepare(job: &Arc<Job>, meta: &ObjectMeta) -> Result<Arc<Download>, PartError> {
    let id = &job.replica.mount.id;
    let (staged, present) =
        job.downloader
            .root
            .partial(id, &meta.key, &meta.etag.to_string(), meta.size)?;
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
            joined(tokio::task::spawn_blocking(move || prepare(&job, &meta))).await??
        }
    };

    let mut workers = JoinSet::new();
    let missing = {
        let parts = download.parts.lock();
        parts.unclaimed(0..parts.size).count()
    };
    let downloader = &job.downloader;
    let stream = downloader.stream.as_ref().unwrap_or(&downloader.bulk);
    for _ in 0..missing.min(downloader.files_in_flight) {
        let (job, download) = (job.clone(), download.clone());
        workers.spawn_on(
            async move {
                loop {
                    // A large object's piece streams.
                    let permit = permit(&job, &|| false, u64::MAX).await;
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
        Ok(job
            .replica
            .copy
            .commit(staged, &path, &meta, job.base.as_ref())?)
    }))
    .await?
}
