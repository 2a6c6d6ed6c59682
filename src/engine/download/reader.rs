//! A reader's entry points: open a file that is not in the local copy yet, at once when it can.

use super::flight::{Flight, Registered, register, run};
use super::large::Download;
use super::{FetchError, Job, fetch, is_small, prepare};
use crate::engine::{Downloader, Replica};
use crate::store::{ObjectMeta, ObjectStore};
use std::sync::Arc;
use tracing::Instrument;

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
    downloader: Arc<Downloader>,
    replica: Arc<Replica>,
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    path: String,
) -> Result<Reader, FetchError> {
    if is_small(&downloader, &meta) {
        let base = replica.copy.version_at(&path);
        let waited = std::time::Instant::now();
        let fetched = fetch(downloader, replica, store, meta, path, base, true).await;
        if let Some(m) = crate::metrics::get() {
            m.reader_waits.observe(waited.elapsed().as_secs_f64());
        }
        return fetched.map(|_| Reader::Complete);
    }
    let meta_etag = meta.etag.clone();
    let flight = match start_reader(&downloader, replica, store, meta, path) {
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
    downloader: &Arc<Downloader>,
    replica: Arc<Replica>,
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    path: String,
) -> Option<Result<Reader, FetchError>> {
    if is_small(downloader, &meta) {
        return None;
    }
    match start_reader(downloader, replica, store, meta, path) {
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
    downloader: &Arc<Downloader>,
    replica: Arc<Replica>,
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    path: String,
) -> Started {
    match register(downloader, &replica, &path, false) {
        Registered::Joined(flight) => {
            let published = flight.download.borrow().clone();
            match published {
                Some(d) if d.meta.etag == meta.etag => Started::Ready(Ok(Reader::Partial(d))),
                _ => Started::Setting(flight),
            }
        }
        Registered::New(mut guard) => {
            let base = replica.copy.version_at(&path);
            let job = Job::new(&guard, replica, store, base);
            match prepare(&job, &meta) {
                Ok(download) => {
                    let id = &job.replica.mount.id;
                    let span = tracing::info_span!("download", mount = %id, key = %meta.key);
                    let prepared = Some(download.clone());
                    downloader
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
