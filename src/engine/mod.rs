//! The sync engine: one pass of one mount is list -> [`plan::plan`] -> delete -> create
//! directories -> download, then the manifest is compacted.
//!
//! Concurrency: GETs take permits from two lanes of `concurrency` each (see `download::lanes`):
//! the bulk lane for the background passes, the urgent lane for downloads a reader waits on.
//! While a reader waits, bulk GETs start nothing and read no further, so the GETs moving bytes
//! stay about `concurrency`. Files are started a bounded number at a time so a huge listing
//! does not become a huge task set.
//!
//! Runtimes: passes (listing, planning, committing) run on the runtime the engine was made in,
//! the background download's GETs and writes on [`EngineConfig::stream`] (in mount mode a
//! runtime in the idle scheduling class), the fetches of waiting readers on
//! [`EngineConfig::readers`] (in mount mode a runtime at normal CPU priority), and so does a
//! download a reader opens, once the opening thread has prepared its partial file: only the
//! workers fetching the rest of that file stream in the background. A reader's GETs go through
//! [`ObjectStore::get_for_reader`]: connections of their own, driven by the readers' runtime.
//!
//! Lock order, for the whole engine: no lock is held while another is taken, and none across an
//! `.await` or a network call. The locks are: a mount's manifest, taken only inside
//! [`MountCopy`]'s calls (see `local::copy`); the root's staging records (`local::root`); the
//! registry of downloads in flight, a shard at a time while a download registers or ends
//! (`download::flight`); a large download's `parts` and `staged`, never together
//! (`download::large`). The one thing held while waiting is a GET permit, held for one attempt
//! of one GET; nobody waits for a permit while holding one.

pub mod download;
pub mod plan;

use crate::local::dirs::Scanned;
use crate::local::manifest::{Entries, Stamp};
use crate::local::{LocalError, MountCopy, Root};
use crate::mounts::Mount;
use crate::progress::Progress;
use crate::retry::retry;
use crate::store::{Cover, DirListing, Listing, ObjectMeta, ObjectStore, StoreError};
use crate::tasks::finished;
use crate::unchanged::{Scope, Unchanged};
use crate::upload::{Pushed, Uploader};
use dashmap::DashMap;
pub use download::{Download, FetchError, FetchKind, ReadAhead, Reader};
use download::{Lanes, Outcome};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// GETs in flight at once, across all files and mounts.
    pub concurrency: usize,
    /// GETs of tiny objects in flight at once in the background, in `concurrency`'s stead (at
    /// least as many; tiny: `download::lanes::TINY_BODY`): the requested concurrency, where
    /// the mount caps `concurrency` for a server on this machine.
    pub tiny_concurrency: usize,
    /// Upload requests (PUTs, parts, copies, deletes) in flight at once, across all mounts.
    /// Apart from `concurrency`: the mount caps its GETs to a server on this machine for the
    /// readers' sake (a bulk GET the server keeps sending delays a reader's), which a write does
    /// not need, as it sends what it has and holds nothing back.
    pub write_concurrency: usize,
    /// Objects larger than this download as parallel ranged GETs of this size.
    pub part_size: u64,
    /// Where the fetches of waiting readers run. A runtime of their own keeps them off the
    /// threads busy with the background download (which may run at a lower CPU priority);
    /// `None`: the engine's own runtime.
    pub readers: Option<tokio::runtime::Handle>,
    /// Where the bytes of the background download stream: its GETs (but of tiny objects) and
    /// their writes to the cache (in mount mode a runtime whose threads take only idle CPU).
    /// Listing, planning and committing files stay on the engine's runtime. `None`: the
    /// engine's own runtime.
    pub stream: Option<tokio::runtime::Handle>,
    /// Start the bulk lane with [`SLOW_START_GETS`] GETs and add one every
    /// [`SLOW_START_STEP`] up to `concurrency` (mount mode): a new mount's first reads come
    /// while its background download starts, and GETs all starting at once keep a server (one
    /// on this machine, and our own cores) busiest just then (measurements:
    /// docs/PERFORMANCE.md, "Slow start").
    pub slow_start: bool,
    /// How long a local change of a writeable mount must have been quiet before it is uploaded
    /// (a file still being written is not uploaded half-way).
    pub upload_delay: Duration,
}

/// How many times [`Engine::upload_now`] reads a file again that was written while it was read.
const UPLOAD_NOW_TRIES: usize = 5;

/// The GETs the bulk lane starts with under [`EngineConfig::slow_start`] ...
pub const SLOW_START_GETS: usize = 4;
/// ... and how often it gains one more.
pub const SLOW_START_STEP: std::time::Duration = std::time::Duration::from_millis(150);

/// How long the bulk lane keeps holding back after the last reader's fetch ends: a reader's
/// next requests (the rest of a read the kernel cut into 128 KiB pieces, the next row group)
/// come within milliseconds, and would otherwise meet a backlog just restarted, its server (on
/// this machine, sharing the cores) busy again (measurements: docs/PERFORMANCE.md, "Reader
/// grace").
pub const READER_GRACE: Duration = Duration::from_millis(20);

/// The state every download of one engine works with. Guards: `flights` is a sharded map
/// (see `download::flight`); `lanes` is atomics and semaphores; the rest is set once.
pub(crate) struct Downloader {
    pub(crate) root: Root,
    /// The bulk and urgent GET permits, and the uploads' write permits.
    pub(crate) lanes: Lanes,
    /// Downloads under way, by `<mount id>/<path>`.
    pub(crate) flights: DashMap<String, Arc<download::Flight>>,
    pub(crate) part_size: u64,
    pub(crate) progress: Arc<Progress>,
    /// Files downloading at once: twice the GETs, so one file's next GET is ready to start as
    /// another's ends (of tiny files, as many times more as the lanes take tiny GETs in a
    /// stream's stead).
    pub(crate) files_in_flight: usize,
    /// Where downloads run: the runtime the engine was made in.
    pub(crate) bulk: tokio::runtime::Handle,
    /// Where the fetches of waiting readers run ([`EngineConfig::readers`]).
    pub(crate) readers: tokio::runtime::Handle,
    /// Where the background download's GETs run ([`EngineConfig::stream`]).
    pub(crate) stream: Option<tokio::runtime::Handle>,
    cancel: CancellationToken,
}

impl Downloader {
    /// Files (and deletes) uploading at once: twice the write lane, as for downloads.
    pub(crate) fn writes_in_flight(&self) -> usize {
        (self.lanes.write_concurrency() * 2).max(8)
    }
}

pub struct Engine {
    downloader: Arc<Downloader>,
    /// [`EngineConfig::upload_delay`].
    upload_delay: Duration,
}

/// A mount of the mounts JSON and its local copy: what a pass, a reader's download and the
/// file system work on. Set once, but for `reported_empty` (an atomic).
pub struct Replica {
    pub mount: Mount,
    pub copy: MountCopy,
    /// Whether a listing of no objects has been reported (once per run: a typo in a prefix
    /// looks like an empty bucket).
    reported_empty: AtomicBool,
    /// Held while the mount's changes are uploaded: one upload of a path at a time, whichever
    /// asks (a pass, the write-back, an fsync, the flush at a stop).
    pushing: tokio::sync::Mutex<()>,
}

/// What a mount's file system shows at a directory of its local copy. In mount mode the copy
/// is a cache: a directory empty there may still hold files the mount lists but has not
/// downloaded, so only the file system can say whether it is a new empty directory, to be kept
/// as a folder marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirShown {
    /// Shown empty: a directory made (or emptied) through the file system.
    Empty,
    /// Shown with something in it: empty only in the cache.
    Holding,
    /// Not known before a listing of the bucket is whole (the cache's lacks the files not
    /// downloaded).
    Unknown,
}

/// The file system of mount mode, as the uploads of a mount ask it.
pub trait MountView: Send + Sync {
    /// What the mount shows at directory `path` (relative to the mount).
    fn dir(&self, path: &str) -> DirShown;

    /// The paths (relative to the mount) changed through the file system since the listings
    /// last showed them: what may hold changes not uploaded yet.
    fn changed(&self) -> Vec<String>;
}

/// What a write-back round looks at for changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// The paths the file system changed ([`MountView::changed`]) and their directories: the
    /// cost of a round follows the changes, not the size of the copy.
    Changed,
    /// Every file and directory of the copy (a walk): what finds a change the file system
    /// does not know of (a conflict's local version left by a failed upload, an earlier run's).
    Everything,
}

/// What one pass over one mount did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassStats {
    pub listed: usize,
    pub unchanged: usize,
    pub downloaded: usize,
    pub updated: usize,
    pub deleted: usize,
    pub skipped: usize,
    pub failed: usize,
    pub bytes: u64,
    /// Local changes uploaded (writeable mounts), and their bytes.
    pub uploaded: usize,
    pub bytes_uploaded: u64,
    /// Objects deleted because their local files were.
    pub remote_deleted: usize,
    /// Local changes kept beside a conflicting remote version.
    pub conflicts: usize,
    /// Local changes left for a later pass: written too recently, or while being read.
    pub settling: usize,
    /// How long listing the bucket took.
    pub list_time: Duration,
    /// How long the rest of the pass took: planning, deleting, downloading, committing.
    pub download_time: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{}: {source}", store_label(.mount, .bucket, .prefix))]
    Store {
        mount: String,
        bucket: String,
        prefix: String,
        /// Boxed: the other variants, and every `Result` carrying this error, stay small.
        #[source]
        source: Box<StoreError>,
    },
    #[error("mount \"{mount}\": {source}")]
    Local {
        mount: String,
        #[source]
        source: LocalError,
    },
    #[error("mount \"{mount}\": stopped before the pass completed")]
    Cancelled { mount: String },
    #[error(
        "mount \"{mount}\": {key} is not in the bucket: its upload failed (the error before says \
         why), or it kept changing while it was read"
    )]
    Upload { mount: String, key: String },
}

/// How a line about a mount's store names it: `mount "raw" (s3://bucket/prefix/)`.
pub fn store_label(mount: &str, bucket: &str, prefix: &str) -> String {
    format!("mount \"{mount}\" (s3://{bucket}/{prefix})")
}

impl EngineError {
    /// The store of `mount` failed with `source`.
    pub fn store(mount: &Mount, source: StoreError) -> Self {
        EngineError::Store {
            mount: mount.id.clone(),
            bucket: mount.bucket.clone(),
            prefix: mount.prefix.clone(),
            source: Box::new(source),
        }
    }
}

impl Engine {
    /// An engine whose passes stop early, leaving no staging files, once `cancel` fires.
    /// Must be called in the runtime the downloads are to run in.
    pub fn new(
        root: Root,
        config: &EngineConfig,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Self {
        let concurrency = config.concurrency.max(1);
        let first = match config.slow_start {
            true => concurrency.min(SLOW_START_GETS),
            false => concurrency,
        };
        let engine = Self {
            downloader: Arc::new(Downloader {
                root,
                lanes: Lanes::new(
                    first,
                    concurrency,
                    config.tiny_concurrency,
                    config.write_concurrency.max(1),
                ),
                flights: DashMap::new(),
                part_size: config.part_size.max(1),
                progress,
                files_in_flight: (concurrency * 2).max(8),
                bulk: tokio::runtime::Handle::current(),
                readers: config
                    .readers
                    .clone()
                    .unwrap_or_else(tokio::runtime::Handle::current),
                stream: config.stream.clone(),
                cancel,
            }),
            upload_delay: config.upload_delay,
        };
        if first < concurrency {
            let downloader = engine.downloader.clone();
            tokio::spawn(async move {
                for _ in first..concurrency {
                    tokio::time::sleep(SLOW_START_STEP).await;
                    downloader.lanes.open_bulk();
                }
            });
        }
        engine
    }

    /// Prepares a mount's directory and loads its manifest.
    pub fn open_mount(&self, mount: Mount) -> Result<Arc<Replica>, EngineError> {
        let copy = MountCopy::open(&self.downloader.root, &mount.id, mount.writeable).map_err(
            |source| EngineError::Local {
                mount: mount.id.clone(),
                source,
            },
        )?;
        Ok(Arc::new(Replica {
            mount,
            copy,
            reported_empty: AtomicBool::new(false),
            pushing: tokio::sync::Mutex::new(()),
        }))
    }

    /// Opens a file that is not in the cache for a reader: starts its download (or joins the
    /// one under way) and returns once the reader can read. A large file is readable at once,
    /// range by range ([`Download::read_ready`]); a small one is downloaded first, ahead of the
    /// backlog.
    pub async fn open_reader(
        &self,
        replica: &Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        meta: ObjectMeta,
        path: String,
    ) -> Result<Reader, FetchError> {
        download::reader(self.downloader.clone(), replica.clone(), store, meta, path).await
    }

    /// [`Engine::open_reader`] when it needs no waiting (see `download::reader_now`).
    pub fn open_reader_now(
        &self,
        replica: &Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        meta: ObjectMeta,
        path: String,
    ) -> Option<Result<Reader, FetchError>> {
        download::reader_now(&self.downloader, replica.clone(), store, meta, path)
    }

    /// Removes any staging files left by downloads that were cancelled.
    pub fn clear_staging(&self) {
        self.downloader.root.clear_staging();
    }

    /// One pass: brings the mount directory in line with the bucket.
    pub async fn sync_mount(
        &self,
        replica: &Arc<Replica>,
        store: Arc<dyn ObjectStore>,
    ) -> Result<PassStats, EngineError> {
        let started = Instant::now();
        let remote = self.list(replica, &store).await?;
        let list_time = started.elapsed();
        let stats = self.apply(replica, store, remote).await?;
        Ok(PassStats { list_time, ..stats })
    }

    /// Lists the mount's objects (with retries). The first listing of no objects is reported
    /// as a warning naming the bucket and prefix: more often a typo than an empty bucket.
    pub async fn list(
        &self,
        replica: &Replica,
        store: &Arc<dyn ObjectStore>,
    ) -> Result<Listing, EngineError> {
        let (listed, _) = self.list_except(replica, store, |_, _| false).await?;
        Ok(listed)
    }

    /// [`Engine::list`], leaving out each part of the listing that `unchanged` finds shows
    /// nothing new as it arrives ([`crate::unchanged`]): the listing of the other parts, in key
    /// order, and the covers of those left out.
    pub async fn list_except(
        &self,
        replica: &Replica,
        store: &Arc<dyn ObjectStore>,
        unchanged: impl Fn(Scope<'_>, &Listing) -> bool + Sync,
    ) -> Result<(Listing, Unchanged), EngineError> {
        let mount = &replica.mount;
        let prefix = &mount.prefix;
        replica.copy.listing_begins();
        let kept = parking_lot::Mutex::new((Listing::new(), Unchanged::default()));
        let take = |cover: Cover, part: Listing| {
            let scope = Scope::of(prefix, &cover);
            let left_out = scope.filter(|scope| !part.is_empty() && unchanged(*scope, &part));
            let (listed, left) = &mut *kept.lock();
            match left_out {
                Some(scope) => left.add(scope, &part),
                None => listed.join(part),
            }
        };
        // What the last pass recorded: about what this listing holds.
        let expected = replica.copy.plan(|entries, _| entries.len());
        let parts = retry("list", || {
            *kept.lock() = Default::default();
            store.list_parts(prefix, expected, &take)
        });
        tokio::select! {
            listed = parts => {
                listed.map_err(|source| {
                    crate::metrics::count(|m| &m.failures, "listing");
                    EngineError::store(mount, source)
                })?
            }
            () = self.downloader.cancel.cancelled() => return Err(EngineError::Cancelled {
                mount: mount.id.clone(),
            }),
        };
        let (mut listed, left_out) = kept.into_inner();
        listed.sort();
        // The listing's pages are freed: their room goes back before the plan is made.
        crate::tables::release_freed_memory();
        if listed.is_empty()
            && left_out.objects == 0
            && !replica.reported_empty.swap(true, Ordering::Relaxed)
        {
            let hint = match mount.prefix.as_str() {
                "" => "the bucket is empty",
                _ => "check the prefix: it is case-sensitive and matches whole path components",
            };
            // A writeable mount may start empty; its local files go there, so a typo matters
            // all the more.
            let writes = match mount.writeable {
                true => "; this writeable mount's local files are uploaded there",
                false => "",
            };
            tracing::warn!(
                mount = %mount.id,
                "no objects under s3://{}/{} ({hint}{writes})",
                mount.bucket,
                mount.prefix
            );
        }
        Ok((listed, left_out))
    }

    /// The mount's top directory (with retries): what the file system shows of a mount while
    /// its first full listing runs.
    pub async fn list_top(
        &self,
        replica: &Replica,
        store: &Arc<dyn ObjectStore>,
    ) -> Result<DirListing, EngineError> {
        let mount = &replica.mount;
        tokio::select! {
            listed = retry("list", || store.list_dir(&mount.prefix)) => {
                listed.map_err(|source| EngineError::store(mount, source))
            }
            () = self.downloader.cancel.cancelled() => Err(EngineError::Cancelled {
                mount: mount.id.clone(),
            }),
        }
    }

    /// Brings the mount directory in line with `remote`, a listing of the mount.
    pub async fn apply(
        &self,
        replica: &Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        remote: Listing,
    ) -> Result<PassStats, EngineError> {
        self.apply_with(replica, store, remote, Unchanged::default())
            .await
    }

    /// [`Engine::apply`] with a listing that `unchanged`'s parts were left out of
    /// ([`Engine::list_except`]; a read-only mount's): what they cover stays as it is.
    pub async fn apply_with(
        &self,
        replica: &Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        remote: Listing,
        unchanged: Unchanged,
    ) -> Result<PassStats, EngineError> {
        let started = Instant::now();
        let listed_at = SystemTime::now();
        let mount = &replica.mount;
        let cancelled = || EngineError::Cancelled {
            mount: mount.id.clone(),
        };
        let cancel = &self.downloader.cancel;
        let listed = crate::metrics::get().map(|_| {
            let (files, bytes) = files_and_bytes(&remote);
            (files + unchanged.objects, bytes + unchanged.bytes)
        });
        let planning = replica.clone();
        let delay = self.upload_delay;
        let planned = tokio::task::spawn_blocking(move || {
            let prefix = &planning.mount.prefix;
            let copy = &planning.copy;
            let write = match planning.mount.writeable {
                false => Ok(plan::WritePlan {
                    plan: copy.plan(|entries, probe| {
                        plan::plan_with(prefix, remote, &unchanged, entries, probe)
                    }),
                    ..plan::WritePlan::default()
                }),
                true => copy.plan_writeable(|entries, scanned| {
                    report_passed_over(&planning.mount, &scanned.passed_over);
                    let now = SystemTime::now();
                    let settled = |s: &Stamp| s.quiet_for(delay, now);
                    plan::plan_writeable(prefix, remote, entries, &scanned.found, settled)
                }),
            };
            write.map(|mut write| {
                // What was uploaded (or deleted) since the listing was asked for is judged by
                // the next listing, not by this one, which may not show it yet.
                let fresh = copy.recorded_since_listing();
                if !fresh.is_empty() {
                    let plan = &mut write.plan;
                    plan.fetch.retain(|f| !fresh.contains(f.path()));
                    plan.delete.retain(|d| !fresh.contains(&d.path));
                }
                // A file open for writing through the file system waits until it is closed.
                let before = write.upload.len();
                write.upload.retain(|up| !copy.is_writing(&up.path));
                write.settling += before - write.upload.len();
                let stats = apply_local_changes(&planning, &write.plan);
                (write, stats)
            })
        })
        .await;
        // The figures as the downloads begin; each file downloaded moves them (below), and the
        // pass's end sets them exactly.
        if let (Some(m), Some(listed)) = (crate::metrics::get(), listed) {
            let copy = replica.clone();
            let present = tokio::task::spawn_blocking(move || held(&copy.copy)).await;
            m.mount_figures(&mount.id, listed, present.unwrap_or_default());
        }
        let (write, mut stats) = finished(planned)
            .map_err(|_| cancelled())?
            .map_err(|source| EngineError::Local {
                mount: mount.id.clone(),
                source,
            })?;
        let plan::WritePlan {
            mut plan,
            upload,
            remote_delete,
            settling,
            copy_gone,
        } = write;
        stats.settling = settling;
        if copy_gone {
            tracing::warn!(
                mount = %mount.id,
                "the mount's directory holds none of the files the tool put there: taken for a \
                 lost local copy, not for deletions, so nothing is deleted in the bucket; they are \
                 downloaded again"
            );
        }
        let refetch = self
            .push(
                replica,
                &store,
                upload,
                remote_delete,
                &mut stats,
                Some(cancel),
            )
            .await?;
        plan.fetch.extend(refetch);

        let progress = &self.downloader.progress;
        progress.add_planned(
            plan.fetch.len() as u64,
            plan.fetch.iter().map(|f| f.meta.size).sum(),
        );
        // Taken from the end, so that the plan's table (a row per object to download) gives
        // back its room as the downloads start.
        let mut jobs = plan.fetch;
        jobs.reverse();
        let mut running = JoinSet::new();
        // Files in flight, in the bulk lane's units (see `Lanes::units`): more tiny ones at
        // once than others, as their GETs are.
        let lanes = &self.downloader.lanes;
        let units = |job: &plan::Fetch| lanes.units(job.meta.size) as usize;
        let capacity = self.downloader.files_in_flight * lanes.stream_units() as usize;
        let mut load = 0;
        loop {
            while let Some(job) =
                jobs.pop_if(|job| running.is_empty() || load + units(job) <= capacity)
            {
                crate::tables::give_back(&mut jobs);
                let units = units(&job);
                load += units;
                let span = tracing::info_span!("download", mount = %mount.id, key = %job.meta.key);
                let update = job.update;
                let path = job.path().to_owned();
                let task = download::fetch(
                    self.downloader.clone(),
                    replica.clone(),
                    store.clone(),
                    job.meta,
                    path,
                    job.base.map(|b| *b),
                    false,
                );
                running.spawn(async move { (update, units, task.await) }.instrument(span));
            }
            let done = tokio::select! {
                done = running.join_next() => done,
                () = cancel.cancelled() => {
                    // Waits for the aborted downloads, so their staging files are gone.
                    running.shutdown().await;
                    return Err(cancelled());
                }
            };
            let Some(done) = done else { break };
            let (update, units, result) = finished(done).map_err(|_| cancelled())?;
            load -= units;
            progress.file_done();
            match result {
                Ok(Outcome::Written { bytes }) => {
                    stats.bytes += bytes;
                    if update {
                        stats.updated += 1;
                    } else {
                        stats.downloaded += 1;
                        if let Some(m) = crate::metrics::get() {
                            m.file_present(&mount.id, bytes);
                        }
                    }
                }
                Ok(Outcome::Gone) => {}
                Err(FetchError { key, reason, .. }) => {
                    stats.failed += 1;
                    crate::metrics::count(|m| &m.failures, "download");
                    tracing::error!(mount = %mount.id, bucket = %mount.bucket, key, "download failed: {reason}");
                }
            }
        }

        drop(jobs);
        // Partial files left now are of objects since changed or deleted: nothing to resume.
        let prefix = format!("{}/", mount.id);
        let clear = stats.failed == 0
            && !self
                .downloader
                .flights
                .iter()
                .any(|f| f.key().starts_with(&prefix));
        let (finishing, downloader) = (replica.clone(), self.downloader.clone());
        let compacted = tokio::task::spawn_blocking(move || {
            if clear {
                downloader.root.clear_partials(&finishing.mount.id);
            }
            if let (Some(m), Some(listed)) = (crate::metrics::get(), listed) {
                m.mount_figures(&finishing.mount.id, listed, held(&finishing.copy));
            }
            finishing
                .copy
                .finish_pass(listed_at, &finishing.mount.source())
        })
        .await;
        finished(compacted)
            .map_err(|_| cancelled())?
            .map_err(|source| EngineError::Local {
                mount: mount.id.clone(),
                source,
            })?;
        stats.download_time = started.elapsed();
        Ok(stats)
    }
}

impl Engine {
    /// Uploads a writeable mount's local changes and deletes the objects of its deleted files,
    /// a bounded number at a time; returns the remote versions to download after conflicts.
    async fn push(
        &self,
        replica: &Arc<Replica>,
        store: &Arc<dyn ObjectStore>,
        uploads: Vec<plan::Upload>,
        deletes: Vec<plan::RemoteDelete>,
        stats: &mut PassStats,
        cancel: Option<&CancellationToken>,
    ) -> Result<Vec<plan::Fetch>, EngineError> {
        let cancelled = async {
            match cancel {
                Some(cancel) => cancel.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancelled);
        let mount = &replica.mount;
        let _pushing = replica.pushing.lock().await;
        let uploader = Arc::new(Uploader {
            downloader: self.downloader.clone(),
            replica: replica.clone(),
            store: store.clone(),
        });
        uploader.abort_unfinished().await;
        let mut jobs = uploads
            .into_iter()
            .map(Either::Upload)
            .chain(deletes.into_iter().map(Either::Delete));
        let mut running = JoinSet::new();
        let mut refetch = Vec::new();
        loop {
            while running.len() < self.downloader.writes_in_flight() {
                let Some(job) = jobs.next() else { break };
                let uploader = uploader.clone();
                let span = tracing::info_span!("upload", mount = %mount.id, key = %job.key());
                running.spawn(
                    async move {
                        let pushed = match &job {
                            Either::Upload(up) => uploader.upload(up).await,
                            Either::Delete(del) => uploader.delete(del).await,
                        };
                        (job, pushed)
                    }
                    .instrument(span),
                );
            }
            let done = tokio::select! {
                done = running.join_next() => done,
                () = &mut cancelled => {
                    running.shutdown().await;
                    return Err(EngineError::Cancelled { mount: mount.id.clone() });
                }
            };
            let Some(done) = done else { break };
            let (job, pushed) = finished(done).map_err(|_| EngineError::Cancelled {
                mount: mount.id.clone(),
            })?;
            let again = |remote: ObjectMeta| {
                let base = replica.copy.version_at(job.path());
                plan::Fetch::new(job.path(), remote, false, base)
            };
            match pushed {
                Ok(Pushed::Uploaded { bytes }) => {
                    stats.uploaded += 1;
                    stats.bytes_uploaded += bytes;
                    if let Some(m) = crate::metrics::get() {
                        m.uploaded_bytes.inc_by(bytes);
                    }
                }
                Ok(Pushed::Changed) => stats.settling += 1,
                Ok(Pushed::Conflict { remote, .. }) => {
                    stats.conflicts += 1;
                    refetch.extend(remote.and_then(again));
                }
                Ok(Pushed::Deleted) => stats.remote_deleted += 1,
                Ok(Pushed::KeptRemote { remote }) => refetch.extend(again(remote)),
                Err(e) => {
                    stats.failed += 1;
                    crate::metrics::count(|m| &m.failures, "upload");
                    tracing::error!(mount = %mount.id, bucket = %mount.bucket, "{e}");
                }
            }
        }
        Ok(refetch)
    }

    /// Uploads every local change of a writeable mount now, without a listing (each write's
    /// HEAD and condition still guard it), and whether or not the engine was cancelled: what a
    /// stopping run does before it exits. Remote versions a conflict keeps are downloaded at
    /// the next start. `view`: the file system of a mount (none in sync mode).
    pub async fn flush(
        &self,
        replica: &Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        view: Option<&dyn MountView>,
    ) -> Result<PassStats, EngineError> {
        let (stats, _) = self
            .push_local(replica, &store, Take::All, None, view)
            .await?;
        Ok(stats)
    }

    /// The write-back of mount mode: uploads the local changes that are not open for writing
    /// and (unless `now`: a flush asked for) have been quiet for the upload delay, counting the
    /// others as `settling`, without a listing; downloads the remote versions a conflict keeps.
    pub async fn write_back(
        &self,
        replica: &Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        now: bool,
        look: Look,
        view: &dyn MountView,
    ) -> Result<PassStats, EngineError> {
        let take = if now { Take::Closed } else { Take::Settled };
        let paths = (look == Look::Changed).then(|| view.changed());
        let (mut stats, refetch) = self
            .push_local(replica, &store, take, paths, Some(view))
            .await?;
        self.fetch_all(replica, &store, refetch, &mut stats).await;
        Ok(stats)
    }

    /// Uploads the file at `path` now if it changed (what `fsync` waits for); an error names
    /// its key. A conflict keeps the local version beside the remote one, which is downloaded.
    pub async fn upload_now(
        &self,
        replica: &Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        path: &str,
    ) -> Result<(), EngineError> {
        let failed = |key: String| EngineError::Upload {
            mount: replica.mount.id.clone(),
            key,
        };
        // A file written while it was read is read again: a few times, then the fsync fails
        // rather than return with the file not in the bucket.
        for _ in 0..UPLOAD_NOW_TRIES {
            let up = {
                let walking = replica.clone();
                let path = path.to_owned();
                tokio::task::spawn_blocking(move || {
                    let (entry, found) = walking.copy.at(&path)?;
                    let entries = entry.map(|e| (path.clone(), e)).into_iter().collect();
                    let found = found.map(|f| (path.clone(), f)).into_iter().collect();
                    let prefix = &walking.mount.prefix;
                    Ok(plan::local_changes(prefix, &entries, &found).pop())
                })
            };
            let up = finished(up.await)
                .map_err(|_| EngineError::Cancelled {
                    mount: replica.mount.id.clone(),
                })?
                .map_err(|source| EngineError::Local {
                    mount: replica.mount.id.clone(),
                    source,
                })?;
            let Some(up) = up else { return Ok(()) };
            let key = up.key.clone();
            let mut stats = PassStats::default();
            let refetch = self
                .push(replica, &store, vec![up], Vec::new(), &mut stats, None)
                .await?;
            self.fetch_all(replica, &store, refetch, &mut stats).await;
            match (stats.failed, stats.settling) {
                (0, 0) => return Ok(()),
                (0, _) => continue,
                _ => return Err(failed(key)),
            }
        }
        Err(failed(format!("{}{path}", replica.mount.prefix)))
    }

    /// Downloads `path` (the version `meta`) whole, ahead of the backlog, or waits for the
    /// download under way: what a write into a file not downloaded yet needs first.
    pub async fn fetch_now(
        &self,
        replica: &Arc<Replica>,
        store: Arc<dyn ObjectStore>,
        meta: ObjectMeta,
        path: String,
    ) -> Result<(), FetchError> {
        let base = replica.copy.version_at(&path);
        let fetch = download::fetch(
            self.downloader.clone(),
            replica.clone(),
            store,
            meta,
            path,
            base,
            true,
        );
        fetch.await.map(drop)
    }

    /// The local changes of a writeable mount, found by a walk (of `paths` and their
    /// directories alone, if given), uploaded: those `take` says. In mount mode (`view`), an
    /// empty directory of the cache gets a folder marker only if the mount shows it empty; one
    /// the mount shows holding files is removed from the cache. Returns the remote versions a
    /// conflict keeps.
    async fn push_local(
        &self,
        replica: &Arc<Replica>,
        store: &Arc<dyn ObjectStore>,
        take: Take,
        paths: Option<Vec<String>>,
        view: Option<&dyn MountView>,
    ) -> Result<(PassStats, Vec<plan::Fetch>), EngineError> {
        let mount = &replica.mount;
        let walking = replica.clone();
        let delay = self.upload_delay;
        let found = tokio::task::spawn_blocking(move || {
            let prefix = walking.mount.prefix.clone();
            let copy = &walking.copy;
            let whole = paths.is_none();
            let plan = |entries: &Entries, scanned: &Scanned| {
                let now = SystemTime::now();
                let mut settling = 0;
                let writes =
                    plan::local_writes(&prefix, entries, &scanned.found, whole, |_, _| true);
                let mut uploads: Vec<_> = writes
                    .upload
                    .into_iter()
                    .filter(|up| {
                        let quiet = || up.stamp.as_ref().is_none_or(|s| s.quiet_for(delay, now));
                        let ready = match take {
                            Take::All => true,
                            Take::Closed => !copy.is_writing(&up.path),
                            Take::Settled => !copy.is_writing(&up.path) && quiet(),
                        };
                        settling += usize::from(!ready);
                        ready
                    })
                    .collect();
                // An empty directory among changes still settling is likely being filled (a
                // `git init`, a copy): its folder marker waits until the rest is quiet.
                if settling > 0 {
                    let before = uploads.len();
                    uploads.retain(|up| up.stamp.is_some());
                    settling += before - uploads.len();
                }
                let deletes = writes
                    .remote_delete
                    .into_iter()
                    .filter(|del| take == Take::All || !copy.is_writing(&del.path))
                    .collect();
                (uploads, deletes, settling)
            };
            match paths {
                Some(paths) => copy.plan_paths(&paths, plan),
                None => copy.plan_writeable(plan),
            }
        })
        .await;
        let (mut uploads, deletes, mut settling) = finished(found)
            .map_err(|_| EngineError::Cancelled {
                mount: mount.id.clone(),
            })?
            .map_err(|source| EngineError::Local {
                mount: mount.id.clone(),
                source,
            })?;
        if let Some(view) = view {
            let mut cache_only = Vec::new();
            uploads.retain(|up| match (up.stamp, view.dir(&up.path)) {
                (Some(_), _) | (None, DirShown::Empty) => true,
                (None, DirShown::Holding) => {
                    cache_only.push(up.path.clone());
                    false
                }
                (None, DirShown::Unknown) => {
                    settling += 1;
                    false
                }
            });
            if !cache_only.is_empty() {
                replica.copy.remove_unmarked_dirs(&cache_only);
            }
        }
        let mut stats = PassStats {
            settling,
            ..PassStats::default()
        };
        let refetch = self
            .push(replica, store, uploads, deletes, &mut stats, None)
            .await?;
        Ok((stats, refetch))
    }

    /// Downloads `fetches` (the remote versions conflicts kept) and counts them in `stats`.
    async fn fetch_all(
        &self,
        replica: &Arc<Replica>,
        store: &Arc<dyn ObjectStore>,
        fetches: Vec<plan::Fetch>,
        stats: &mut PassStats,
    ) {
        for f in fetches {
            let path = f.path().to_owned();
            let fetched = download::fetch(
                self.downloader.clone(),
                replica.clone(),
                store.clone(),
                f.meta,
                path,
                f.base.map(|b| *b),
                false,
            );
            match fetched.await {
                Ok(Outcome::Written { bytes }) => {
                    stats.downloaded += 1;
                    stats.bytes += bytes;
                }
                Ok(Outcome::Gone) => {}
                Err(FetchError { key, reason, .. }) => {
                    stats.failed += 1;
                    let mount = &replica.mount;
                    crate::metrics::count(|m| &m.failures, "download");
                    tracing::error!(mount = %mount.id, bucket = %mount.bucket, key, "download failed: {reason}");
                }
            }
        }
    }
}

/// How many files the local copy holds (as the manifest says), and their bytes.
fn held(copy: &MountCopy) -> (u64, u64) {
    copy.plan(|entries, _| {
        let held = entries.values().filter(|e| !e.dir && !e.replaced);
        held.fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.size))
    })
}

/// How many files a listing holds (folder markers aside), and their bytes.
fn files_and_bytes(listing: &Listing) -> (u64, u64) {
    let files = listing.iter().filter(|o| !o.key.ends_with('/'));
    files.fold((0, 0), |(n, bytes), o| (n + 1, bytes + o.size))
}

/// Which local changes [`Engine::push_local`] uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// Every one (a stop's flush).
    All,
    /// Those not open for writing (a flush asked for while the mount runs).
    Closed,
    /// Those not open for writing that have been quiet for the upload delay (the write-back).
    Settled,
}

/// An upload or a remote delete, as one task set runs them.
enum Either {
    Upload(plan::Upload),
    Delete(plan::RemoteDelete),
}

impl Either {
    fn key(&self) -> &str {
        match self {
            Either::Upload(u) => &u.key,
            Either::Delete(d) => &d.key,
        }
    }

    fn path(&self) -> &str {
        match self {
            Either::Upload(u) => &u.path,
            Either::Delete(d) => &d.path,
        }
    }
}

/// Says which paths of a writeable mount's directory are not uploaded: links, devices, sockets
/// and names that are not UTF-8 cannot be made objects.
fn report_passed_over(mount: &Mount, passed_over: &[std::path::PathBuf]) {
    for path in passed_over {
        tracing::debug!(
            mount = %mount.id,
            path = %path.display(),
            "not uploaded: not a regular file or directory, or its name is not UTF-8"
        );
    }
}

/// Deletions and folder-marker directories of a plan; returns the stats so far.
fn apply_local_changes(replica: &Replica, plan: &plan::Plan) -> PassStats {
    let mount = &replica.mount;
    let mut stats = PassStats {
        listed: plan.listed,
        unchanged: plan.unchanged,
        skipped: plan.skipped.len(),
        ..PassStats::default()
    };
    for (key, reason) in &plan.skipped {
        tracing::warn!(mount = %mount.id, bucket = %mount.bucket, key, "skipping key: {reason}");
    }
    for d in &plan.delete {
        let removed = match d.dir {
            true => replica.copy.remove_dir(&d.path).map(|()| false),
            false => replica.copy.remove_file(&d.path),
        };
        match removed {
            Ok(removed) => stats.deleted += usize::from(removed),
            Err(e) => {
                stats.failed += 1;
                tracing::error!(mount = %mount.id, path = %d.path, "could not delete: {e}");
            }
        }
    }
    for (path, meta) in &plan.dirs {
        if let Err(e) = replica.copy.ensure_dir(path, meta) {
            stats.failed += 1;
            tracing::error!(mount = %mount.id, bucket = %mount.bucket, key = %meta.key, "{e}");
        }
    }
    stats
}

#[cfg(test)]
mod tests;
