//! Downloading one object into a staging file with concurrent ranged GETs, then committing it.
//!
//! Every GET of one object carries the ETag from the listing (`If-Match`). When the store says the
//! object changed, the partial download is thrown away, the object is looked up again and the
//! download restarts with the new version: parts of two versions are never stitched together.
//! Transient failures of a part retry that part alone, with backoff; the GET permit is released
//! while it waits.

use super::{MountState, Shared};
use crate::cache::{CacheError, Staged};
use crate::manifest::{Entry as ManifestEntry, ManifestError};
use crate::progress::Progress;
use crate::store::{ObjectMeta, ObjectStore, StoreError};
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use futures_util::StreamExt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, SemaphorePermit, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Attempts per request before a transient failure counts as permanent.
const MAX_ATTEMPTS: u32 = 6;
/// Times a download restarts because the object changed under it, within one pass.
const MAX_VERSION_RESTARTS: u32 = 5;
/// Bytes buffered per part before they are written out.
const WRITE_BATCH: usize = 1 << 20;

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Written {
        bytes: u64,
    },
    /// The object was deleted after it was listed.
    Gone,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("\"{key}\": {reason}")]
pub struct FetchError {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
enum PartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the staging file: {0}")]
    Write(#[from] io::Error),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

pub(crate) trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

impl Transient for PartError {
    fn is_transient(&self) -> bool {
        matches!(self, PartError::Store(e) if e.is_transient())
    }
}

/// Delay before retry number `attempt` (0-based): exponential from 100 ms, capped at 5 s, with
/// jitter so that many parts failing together do not retry in lockstep.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100 << attempt.min(6)).min(Duration::from_secs(5));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    base / 2 + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// Runs `op` until it succeeds, fails permanently, or has failed transiently [`MAX_ATTEMPTS`] times.
pub(crate) async fn retry<T, E, F, Fut>(what: &str, mut op: F) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt + 1 < MAX_ATTEMPTS => {
                tracing::debug!(what, attempt, error = %e, "retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The byte ranges of an object of `size` bytes in parts of `part_size`.
pub(crate) fn part_ranges(size: u64, part_size: u64) -> Vec<Range<u64>> {
    (0..size)
        .step_by(part_size.max(1) as usize)
        .map(|start| start..(start + part_size).min(size))
        .collect()
}

/// A download under way, shared by everyone who wants that file: the bulk pass that started it
/// and any reader that asked for it since. A reader makes it urgent: its remaining GETs take
/// permits from the priority lane instead of queueing behind the backlog.
pub(crate) struct Flight {
    urgent: AtomicBool,
    wake: Notify,
    done: watch::Sender<Option<Result<Outcome, FetchError>>>,
}

impl Flight {
    fn new(urgent: bool) -> Self {
        Self {
            urgent: AtomicBool::new(urgent),
            wake: Notify::new(),
            done: watch::channel(None).0,
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
struct FlightGuard<'a> {
    shared: &'a Shared,
    key: String,
    flight: Arc<Flight>,
    result: Option<Result<Outcome, FetchError>>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.shared.flights.remove(&self.key);
        let result = self.result.take().unwrap_or_else(|| {
            Err(FetchError {
                key: self.key.clone(),
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
    let key = format!("{}/{}", mount.mount.id, path);
    let flight = match shared.flights.entry(key.clone()) {
        Entry::Occupied(e) => {
            let flight = e.get().clone();
            drop(e);
            if urgent && flight.hurry() {
                shared.urgent_started();
            }
            return flight.wait().await;
        }
        Entry::Vacant(e) => {
            if urgent {
                shared.urgent_started();
            }
            e.insert(Arc::new(Flight::new(urgent))).clone()
        }
    };
    let mut guard = FlightGuard {
        shared: &shared,
        key,
        flight: flight.clone(),
        result: None,
    };
    let job = Arc::new(Job {
        shared: shared.clone(),
        mount,
        store,
        flight,
    });
    let result = download(&job, meta, &path).await;
    guard.result = Some(result.clone());
    drop(guard);
    result
}

async fn download(job: &Arc<Job>, mut meta: ObjectMeta, path: &str) -> Result<Outcome, FetchError> {
    let fail = |e: PartError, key: &str| FetchError {
        key: key.to_owned(),
        reason: e.to_string(),
    };
    for _ in 0..MAX_VERSION_RESTARTS {
        let result = if meta.size <= job.shared.part_size.min(WRITE_BATCH as u64) {
            fetch_small(job, &meta, path).await
        } else {
            fetch_large(job, &meta, path).await
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
        reason:
            "the object kept changing while it was downloaded; it will be tried again next pass"
                .into(),
    })
}

/// A small object is read into memory with one GET, then staged, written and committed in one
/// blocking call: one hand-off to the blocking pool per file instead of three.
async fn fetch_small(job: &Arc<Job>, meta: &ObjectMeta, path: &str) -> Result<(), PartError> {
    let data = if meta.size == 0 {
        Vec::new()
    } else {
        download_part(job.clone(), meta.clone(), 0..meta.size, None).await?
    };
    let (job, meta, path) = (job.clone(), meta.clone(), path.to_owned());
    tokio::task::spawn_blocking(move || {
        let staged = job.shared.cache.stage(0)?;
        write_all_vectored_at(&staged.file(), &data, 0)?;
        commit(&job.mount, staged, &meta, &path)
    })
    .await
    .expect("write task panicked")
}

/// A large object is written part by part, as parts arrive, into a staging file of its size.
async fn fetch_large(job: &Arc<Job>, meta: &ObjectMeta, path: &str) -> Result<(), PartError> {
    let shared = job.shared.clone();
    let size = meta.size;
    let staged = tokio::task::spawn_blocking(move || shared.cache.stage(size))
        .await
        .expect("staging task panicked")?;
    let mut parts = JoinSet::new();
    for range in part_ranges(meta.size, job.shared.part_size) {
        let span =
            tracing::debug_span!("part", key = %meta.key, start = range.start, end = range.end);
        let part = download_part(job.clone(), meta.clone(), range, Some(staged.file()));
        parts.spawn(part.instrument(span));
    }
    while let Some(done) = parts.join_next().await {
        // An error returns at once; dropping `parts` aborts the other parts.
        done.expect("part task panicked").map(drop)?;
    }
    let (job, meta, path) = (job.clone(), meta.clone(), path.to_owned());
    tokio::task::spawn_blocking(move || commit(&job.mount, staged, &meta, &path))
        .await
        .expect("commit task panicked")
}

/// Moves a complete staging file into place, then records it (in that order: the manifest
/// never claims a file that is not there).
fn commit(
    mount: &MountState,
    staged: Staged,
    meta: &ObjectMeta,
    path: &str,
) -> Result<(), PartError> {
    staged.commit(&mount.dir, path, meta.last_modified)?;
    let entry = ManifestEntry {
        key: meta.key.clone(),
        etag: meta.etag.clone(),
        size: meta.size,
        mtime: unix_seconds(meta.last_modified),
        dir: false,
    };
    mount.manifest.lock().put(path, entry)?;
    Ok(())
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// A GET permit: from the priority lane once the download is urgent (also when it becomes
/// urgent while this part is still queueing); otherwise from the bulk lane, which starts no new
/// GET while any urgent download is under way, so a waiting reader gets the bandwidth.
async fn permit(job: &Job) -> SemaphorePermit<'_> {
    let (shared, flight) = (&job.shared, &job.flight);
    loop {
        let woken = flight.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let idle = shared.urgent_idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if flight.urgent.load(Ordering::SeqCst) {
            return shared.urgent_permits.acquire().await.expect("never closed");
        }
        if shared.urgent_active.load(Ordering::SeqCst) > 0 {
            tokio::select! {
                () = &mut idle => {}
                () = &mut woken => {}
            }
            continue;
        }
        tokio::select! {
            permit = shared.permits.acquire() => return permit.expect("never closed"),
            () = &mut woken => {}
        }
    }
}

/// Downloads one part with retries. With a `file`, the bytes are written to it as they arrive;
/// without, they are returned.
async fn download_part(
    job: Arc<Job>,
    meta: ObjectMeta,
    range: Range<u64>,
    file: Option<Arc<File>>,
) -> Result<Vec<Bytes>, PartError> {
    retry(&meta.key, || async {
        let _permit = permit(&job).await;
        let progress = &job.shared.progress;
        let mut counted = 0;
        let result = read_part(
            progress,
            &*job.store,
            &meta,
            range.clone(),
            file.as_ref(),
            &mut counted,
        )
        .await;
        if result.is_err() {
            progress.sub_bytes(counted);
        }
        result
    })
    .await
}

async fn read_part(
    progress: &Progress,
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
    range: Range<u64>,
    file: Option<&Arc<File>>,
    counted: &mut u64,
) -> Result<Vec<Bytes>, PartError> {
    let mut body = store.get(&meta.key, range.clone(), &meta.etag).await?;
    let mut offset = range.start;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if offset + (batched + chunk.len()) as u64 > range.end {
            return Err(StoreError::Transient(format!(
                "server sent more than the {} bytes asked for",
                range.end - range.start
            ))
            .into());
        }
        progress.add_bytes(chunk.len() as u64);
        *counted += chunk.len() as u64;
        batched += chunk.len();
        batch.push(chunk);
        if let Some(file) = file
            && batched >= WRITE_BATCH
        {
            write_batch(file, std::mem::take(&mut batch), offset).await?;
            offset += batched as u64;
            batched = 0;
        }
    }
    if let Some(file) = file
        && !batch.is_empty()
    {
        write_batch(file, std::mem::take(&mut batch), offset).await?;
        offset += batched as u64;
        batched = 0;
    }
    offset += batched as u64;
    if offset != range.end {
        return Err(StoreError::Transient(format!(
            "body ended early: got {} of {} bytes",
            offset - range.start,
            range.end - range.start
        ))
        .into());
    }
    Ok(batch)
}

async fn write_batch(file: &Arc<File>, batch: Vec<Bytes>, offset: u64) -> io::Result<()> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || write_all_vectored_at(&file, &batch, offset))
        .await
        .expect("write task panicked")
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

    #[test]
    fn parts_cover_the_object_exactly() {
        assert_eq!(part_ranges(0, 8), Vec::<Range<u64>>::new());
        assert_eq!(part_ranges(8, 8), vec![0..8]);
        assert_eq!(part_ranges(17, 8), [0..8, 8..16, 16..17]);
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

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(100));
        assert!(backoff(3) >= Duration::from_millis(400));
        assert!(backoff(30) <= Duration::from_secs(5));
    }
}
