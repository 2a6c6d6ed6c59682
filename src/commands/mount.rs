//! The `mount` command: lists every mount, serves them read-only over FUSE at the destination,
//! and keeps a local cache filled and refreshed in the background with the sync engine.
//!
//! Lifecycle: runs in the foreground until the file system is unmounted (`fusermount -u`,
//! `umount`) or a SIGINT/SIGTERM arrives, which detaches it; either way the process exits 0.
//! After a signal, files still open under the mount keep being served until they are closed
//! (at most `--open-files-timeout`; a second signal stops at once).
//!
//! Start: every mount is connected, and its top directory listed, before the file system is
//! mounted (a mistake fails the command there; it never looks like an empty bucket); its full
//! listing follows in the background, readers meanwhile getting what they ask for by
//! requests of their own (see `vfs::partial`). A mount whose cache a pass completed is served
//! from it at once instead, and listed again right after. A store that cannot be reached is
//! served from the cache with a warning (repeated at each failed refresh); with nothing cached
//! for that mount the command fails instead: an empty directory would look like an empty
//! bucket.

use super::service::{RunStatus, Service};
use super::signals::{self, Signals};
use super::status::Recorded;
use super::{connect, log_summary};
use crate::cli::MountConfig;
use crate::engine::{Engine, EngineConfig, EngineError, PassStats, Replica, store_label};
use crate::fuse::FuseFs;
use crate::local::Root;
use crate::progress::Progress;
use crate::store::{DirListing, Listing, ObjectStore, StoreError};
use crate::unchanged::{Scope, Unchanged};
use crate::vfs::{MountOf, Mounted, Stale, Vfs};
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Refuses destinations that cannot or should not be mounted over, with one clear line.
fn check_destination(dest: &Path, allow_non_empty: bool) -> anyhow::Result<()> {
    let shown = dest.display();
    let meta = match std::fs::metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("destination {shown} does not exist: create the directory to mount on first")
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "destination {shown} is a dead FUSE mount (its process is gone): \
             unmount it first with `fusermount3 -u {shown}`"
        ),
        Err(e) => bail!("destination {shown}: {e}"),
    };
    if !meta.is_dir() {
        bail!("destination {shown} is not a directory");
    }
    let parent = std::fs::metadata(dest.join("..")).with_context(|| format!("{shown}/.."))?;
    if parent.dev() != meta.dev() || parent.ino() == meta.ino() {
        bail!("destination {shown} is already a mount point (unmount it first)");
    }
    let non_empty = std::fs::read_dir(dest)
        .with_context(|| format!("destination {shown}"))?
        .next()
        .is_some();
    if non_empty && !allow_non_empty {
        bail!("destination {shown} is not empty (use --allow-non-empty to mount over it)");
    }
    Ok(())
}

/// How `mount --daemon` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemonized {
    /// The background process has mounted the destination.
    Mounted,
    /// The background process exited with this code before mounting, having said why.
    Exited(u8),
}

/// Starts this program again without `--daemon`, in a new session, and returns once it has
/// mounted the destination, or exited first.
pub fn daemonize(config: &MountConfig) -> anyhow::Result<Daemonized> {
    use std::os::unix::process::CommandExt;
    let dest = &config.sync.destination;
    check_destination(dest, config.allow_non_empty)?;
    let before = std::fs::metadata(dest)?.dev();
    let args = crate::cli::foreground_args(std::env::args_os().collect());
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args)
        .env(crate::cli::DAEMON_CHILD, "1")
        .stdin(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of this process.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the background process")?;
    loop {
        if let Some(status) = child.try_wait()? {
            match status.code().and_then(|c| u8::try_from(c).ok()) {
                Some(code) if code != 0 => return Ok(Daemonized::Exited(code)),
                _ => bail!("the background process exited before mounting ({status})"),
            }
        }
        if std::fs::metadata(dest).is_ok_and(|m| m.dev() != before) {
            tracing::info!(pid = child.id(), "mounted in the background");
            return Ok(Daemonized::Mounted);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long the kernel may keep an entry or attributes it was given (see `forget_stale`).
const KERNEL_TTL: Duration = Duration::from_secs(3600);

pub fn mount(config: MountConfig, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let sync = &config.sync;
    check_destination(&sync.destination, config.allow_non_empty)?;
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "FUSE is not available (/dev/fuse is missing): install it, e.g. apt-get install fuse3"
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.cache_dir)
        .with_context(|| {
            format!(
                "cannot create cache directory {}",
                config.cache_dir.display()
            )
        })?;
    // What readers wait for (opens of small files, reads of bytes not yet downloaded) runs on a
    // runtime of its own, at normal priority (a large file opens on the FUSE thread itself):
    // `runtime` runs the passes (listing, planning, committing) at a lower one (see
    // [`lower_thread_priority`]), and `stream` below their bytes.
    let readers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("reader")
        .enable_all()
        .build()
        .context("cannot start the readers' runtime")?;
    // The background download's bytes stream on threads that take only idle CPU: the readers,
    // the FUSE threads and the user's programs preempt them the moment they wake (see
    // [`idle_thread_priority`]). Listing, planning, committing and the GETs of tiny objects
    // (whose bodies arrive in one piece) stay on `runtime`.
    let stream = tokio::runtime::Builder::new_multi_thread()
        .thread_name("stream")
        .on_thread_start(idle_thread_priority)
        .enable_all()
        .build()
        .context("cannot start the background download's runtime")?;
    // Uploads (the write-back, the flush at unmount; an fsync's runs on the readers' runtime)
    // run at the user's priority, as any program saving a file does: at the passes' lower one,
    // the server they send to (on this machine, or the TLS and network stack) would starve
    // them. Readers still go first: an upload starts no request while a reader waits (the
    // lanes).
    let uploads = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("upload")
        .enable_all()
        .build()
        .context("cannot start the uploads' runtime")?;
    let concurrency = local_server_concurrency(
        sync.concurrency,
        sync.s3.endpoint_url.as_deref(),
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    if concurrency < sync.concurrency {
        tracing::info!(
            concurrency,
            "the server is on this machine: {concurrency} GETs at once (two per CPU; {} of \
             objects up to {} KiB)",
            sync.concurrency,
            crate::engine::download::TINY_BODY >> 10
        );
    }
    let cancel = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let service = Service::from_env();
    let writeable = sync.mounts.iter().any(|m| m.writeable);
    let run = Arc::new(RunStatus::new(
        progress.clone(),
        sync.mounts.len(),
        writeable,
    ));
    let engine = Arc::new({
        let _in = runtime.enter();
        Engine::new(
            Root::open(&config.cache_dir)?,
            &EngineConfig {
                concurrency,
                tiny_concurrency: sync.concurrency,
                write_concurrency: sync.concurrency,
                part_size: sync.part_size,
                readers: Some(readers.handle().clone()),
                stream: Some(stream.handle().clone()),
                slow_start: true,
                upload_delay: sync.upload_delay,
            },
            progress.clone(),
            cancel.clone(),
        )
    });

    if let Some(addr) = sync.metrics_addr {
        runtime
            .block_on(crate::metrics::serve(addr))
            .with_context(|| format!("cannot serve metrics at {addr}"))?;
    }
    // Connect and list every mount before mounting: all files are visible from the start.
    let (vfs, listings) = runtime.block_on(async {
        let mut connectors = HashMap::new();
        let mut mounted = Vec::new();
        let mut listings = Vec::new();
        for mount in &sync.mounts {
            let replica = engine.open_mount(mount.clone())?;
            let store = connect(mount, sync, &mut connectors).await?;
            // A copy of this bucket and prefix that a pass completed is served at once, and
            // listed right after, in the background (its files and their metadata are local;
            // a big bucket takes long to list). Else listed first, or what earlier runs cached
            // when the store cannot be reached now.
            let listing = if replica.copy.listed_from() == Some(mount.source()) {
                FirstListing::cached(&replica, true)
            } else {
                first_listing(&engine, &replica, &store).await?
            };
            listings.push(listing);
            mounted.push(Mounted { replica, store });
        }
        // The first reader of each bucket finds a connection open.
        for m in &mounted {
            let store = m.store.clone();
            readers.spawn(async move { store.warm_for_readers().await });
        }
        let vfs = Arc::new(Vfs::new(engine.clone(), mounted));
        for (mount, listing) in listings.iter().enumerate() {
            match &listing.top {
                Some(top) => vfs.show_top(mount, top),
                None => drop(vfs.show_cached(mount, &listing.objects)),
            }
        }
        Ok::<_, anyhow::Error>((vfs, listings))
    })?;

    // Each writeable mount uploads what is written into it once quiet for --upload-delay.
    for (mount, m) in vfs.mounted().iter().enumerate() {
        if m.replica.mount.writeable {
            let write_back = vfs.write_back(mount).clone();
            let (engine, replica, store) = (engine.clone(), m.replica.clone(), m.store.clone());
            let (delay, cancel) = (sync.upload_delay, cancel.clone());
            let view = Arc::new(MountOf {
                vfs: vfs.clone(),
                mount,
            });
            let run = run.clone();
            let on_round = move |round: &PassStats| {
                let sent = round.uploaded + round.remote_deleted;
                run.uploads(mount, sent, round.settling + round.failed);
            };
            uploads.spawn(async move {
                write_back
                    .run(engine, replica, store, view, (delay, cancel), on_round)
                    .await;
            });
            // Changes an earlier run left are uploaded too.
            vfs.write_back(mount).touch();
        }
    }
    // `status --wait` asks for every closed file to be uploaded now.
    {
        let vfs = vfs.clone();
        let _in = runtime.enter();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
            Ok(mut flush) => {
                runtime.spawn(async move {
                    while flush.recv().await.is_some() {
                        for (mount, m) in vfs.mounted().iter().enumerate() {
                            if m.replica.mount.writeable {
                                vfs.write_back(mount).flush_now();
                            }
                        }
                    }
                });
            }
            Err(e) => tracing::warn!("cannot listen for SIGUSR1 (status --wait's flush): {e}"),
        }
    }
    // What `status` reads, in the cache directory: the local copy's root.
    let recorded = Recorded::starting(&sync.mounts, Some(sync.destination.clone()));
    super::status::record(&config.cache_dir, &recorded);

    // Between refreshes the tree changes only through the file system itself, which the kernel
    // sees: it may keep entries and attributes for long, and a refresh tells it what changed
    // (`forget_stale`).
    let ttl = KERNEL_TTL;
    let fs = FuseFs::new(
        vfs.clone(),
        readers.handle().clone(),
        ttl,
        config.passthrough,
    );
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        fuser::MountOption::FSName("s3-synchronizer".into()),
        fuser::MountOption::Subtype("s3-synchronizer".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    // With a writeable mount, the file system answers EROFS for each read-only one itself.
    if !sync.mounts.iter().any(|m| m.writeable) {
        fuse_config.mount_options.push(fuser::MountOption::RO);
    }
    fuse_config.acl = if config.allow_other {
        fuser::SessionACL::All
    } else if config.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    fuse_config.n_threads = Some(4);
    // Listening before the file system is mounted: a SIGTERM sent the moment a file under it
    // can be opened is a stop asked for, not the default end of the process.
    let mut signals = {
        let _in = runtime.enter();
        Signals::listen()
    };
    let session = fuser::Session::new(fs, &sync.destination, &fuse_config).with_context(|| {
        format!(
            "cannot mount {} (FUSE needs /dev/fuse and, for non-root users, fusermount3: \
             apt-get install fuse3)",
            sync.destination.display()
        )
    })?;
    // Started once the file system is mounted, so that a refresh can tell the kernel what
    // changed.
    let refresh = {
        let _in = runtime.enter();
        signals::spawn_hangup_listener()
    };
    runtime.spawn(refresh_loop(
        engine.clone(),
        vfs.clone(),
        session.notifier(),
        listings,
        Schedule {
            interval: sync.interval,
            stop: sync.stop_after.map(|after| Instant::now() + after),
            refresh,
        },
        (config.cache_dir.clone(), recorded, run.clone()),
    ));
    // The session runs on its own thread until the kernel ends it: at an unmount, or once the
    // last file open under a detached mount is closed.
    let background = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || session.run())?;
    tracing::info!(destination = %sync.destination.display(), cache = %config.cache_dir.display(), "mounted");
    service.ready(&run.line());
    let status_line = runtime.spawn(service.keep_status(run.clone()));

    runtime.block_on(async {
        let mut ended = tokio::task::spawn_blocking(move || background.join());
        tokio::select! {
            result = &mut ended => {
                service.stopping();
                session_result(result)?;
                tracing::info!("unmounted");
            }
            name = signals::next(&mut signals) => {
                service.stopping();
                tracing::info!(signal = name, "unmounting");
                // Lazily: files still open keep working, and the session ends with the last.
                detach(&sync.destination)?;
                serve_open_files(&vfs, &mut ended, &mut signals, config.open_files_timeout)
                    .await?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    cancel.cancel();
    status_line.abort();
    uploads.block_on(flush_writeable(&engine, &vfs, sync.flush_timeout));
    engine.clear_staging();
    // Reads under way were answered or failed by the unmount; do not wait for their tasks.
    readers.shutdown_background();
    stream.shutdown_background();
    Ok(())
}

/// Uploads what is left of the writeable mounts' changes before the process exits, for at most
/// `timeout`; names what could not be uploaded (the next start uploads it).
async fn flush_writeable(engine: &Engine, vfs: &Vfs, timeout: Duration) {
    let flushes = vfs
        .mounted()
        .iter()
        .enumerate()
        .filter(|(_, m)| m.replica.mount.writeable)
        .map(|(mount, m)| async move {
            let id = &m.replica.mount.id;
            let view = MountOf { vfs, mount };
            match engine.flush(&m.replica, m.store.clone(), Some(&view)).await {
                Ok(stats) if stats.uploaded + stats.remote_deleted > 0 => tracing::info!(
                    mount = %id,
                    uploaded = stats.uploaded,
                    deleted = stats.remote_deleted,
                    "uploaded the changes left before stopping"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!("{e}"),
            }
        });
    let all = futures_util::future::join_all(flushes);
    if tokio::time::timeout(timeout, all).await.is_err() {
        tracing::warn!(
            "stopping with changes not uploaded after --flush-timeout ({} s): the next start \
             uploads them",
            timeout.as_secs()
        );
    }
}

/// The session thread, joined on the blocking pool.
type SessionEnd = tokio::task::JoinHandle<std::thread::Result<std::io::Result<()>>>;

fn session_result(
    joined: Result<std::thread::Result<std::io::Result<()>>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    joined
        .context("the FUSE session's join task failed")?
        .map_err(|_| anyhow::anyhow!("the FUSE session's thread panicked"))?
        .context("the FUSE session failed")
}

/// After the mount was detached: serves the files still open under it until the last one is
/// closed (the kernel then ends the session), `timeout` passes, or another signal arrives;
/// whichever comes first ends the process with exit code 0. Processes reading those files
/// (a notebook in the middle of a read) are not cut off by a stop they did not ask for.
async fn serve_open_files(
    vfs: &Vfs,
    ended: &mut SessionEnd,
    signals: &mut Option<Signals>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let detached = Instant::now();
    // The number of open files last logged.
    let mut reported = None;
    loop {
        tokio::select! {
            result = &mut *ended => {
                session_result(result)?;
                if reported.is_some() {
                    tracing::info!("the last open file was closed; stopping");
                }
                return Ok(());
            }
            () = &mut deadline => {
                tracing::warn!(
                    open = vfs.open_files(),
                    "stopping with files still open after --open-files-timeout ({} s): \
                     their reads now fail",
                    timeout.as_secs()
                );
                return Ok(());
            }
            name = signals::next(signals) => {
                tracing::warn!(
                    signal = name,
                    open = vfs.open_files(),
                    "stopping at once: reads of the files still open now fail"
                );
                return Ok(());
            }
            _ = check.tick() => {
                let open = vfs.open_files();
                // A mount with no file open ends at once, unless something else holds it.
                let busy = open > 0 || detached.elapsed() >= Duration::from_secs(1);
                if reported == Some(open) || !busy {
                    continue;
                }
                let limit = timeout.as_secs();
                match (reported, open) {
                    (None, 0) => tracing::info!(
                        "the detached mount is still in use with no file open (a process's \
                         working directory may be under it): waiting for it to be left, for at \
                         most {limit} s (--open-files-timeout; another SIGINT or SIGTERM stops \
                         at once)"
                    ),
                    (None, _) => tracing::info!(
                        open,
                        "files under the mount are still open: the mount is detached and \
                         serves them until they are closed, for at most {limit} s \
                         (--open-files-timeout; another SIGINT or SIGTERM stops at once)"
                    ),
                    (Some(_), _) => {
                        tracing::info!(open, "waiting for the files still open to be closed")
                    }
                }
                reported = Some(open);
            }
        }
    }
}

/// What the file system shows of a mount at first: the mount's top directory while its first
/// full listing runs, or what earlier runs cached.
struct FirstListing {
    /// The cache's listing (empty with `top`).
    objects: Listing,
    /// The mount's top directory, listed just now: the mount is served before its first full
    /// listing ends, which follows at once.
    top: Option<DirListing>,
    served: Served,
    /// The cache's listing, served while the bucket is listed at once in the background.
    owed: bool,
}

/// What a mount shows when it is mounted, if no pass of an earlier run completed its cache:
/// its top directory, listed now (a bucket that does not exist, denied access or wrong
/// credentials fail here, before anything is mounted), its full listing following in the
/// background; or what earlier runs cached when the store cannot be reached now.
async fn first_listing(
    engine: &Engine,
    replica: &Arc<Replica>,
    store: &Arc<dyn ObjectStore>,
) -> anyhow::Result<FirstListing> {
    Ok(match engine.list_top(replica, store).await {
        Ok(top) => FirstListing {
            served: Served {
                files: top.objects.len(),
                listed_at: Some(SystemTime::now()),
            },
            objects: Listing::new(),
            top: Some(top),
            owed: true,
        },
        // Down or unreachable: served from the cache, and listed again each interval; with
        // nothing cached, there is nothing to serve. (A bucket that does not exist or is denied
        // stays an error.)
        Err(EngineError::Store { source, .. }) if source.is_transient() => {
            let cached = FirstListing::cached(replica, false);
            if cached.objects.is_empty() && cached.served.listed_at.is_none() {
                bail!(
                    "{}; nothing of it is cached yet, so there is nothing to serve",
                    unreachable(replica, store.as_ref(), &source)
                );
            }
            warn_serving(replica, store.as_ref(), &source, &cached.served);
            cached
        }
        Err(e) => return Err(e.into()),
    })
}

impl FirstListing {
    /// What earlier runs cached of the mount; `owed`: to be listed at once in the background.
    fn cached(replica: &Replica, owed: bool) -> Self {
        let objects = replica.copy.cached_listing(&replica.mount.prefix);
        Self {
            served: Served {
                files: objects.len(),
                listed_at: replica.copy.listed_at(),
            },
            objects,
            top: None,
            owed,
        }
    }
}

/// What the file system shows of a mount: how many files, listed when (`None`: by an earlier
/// run that did not record it).
#[derive(Clone)]
struct Served {
    files: usize,
    listed_at: Option<SystemTime>,
}

impl Served {
    fn listed_now(files: usize) -> Self {
        Self {
            files,
            listed_at: Some(SystemTime::now()),
        }
    }
}

/// "mount "m" (s3://b/p/): cannot reach the store: CAUSE", naming the endpoint unless the
/// cause does.
fn unreachable(replica: &Replica, store: &dyn ObjectStore, source: &StoreError) -> String {
    let mount = &replica.mount;
    let cause = source.to_string();
    let endpoint = store.endpoint();
    let at = if cause.contains(endpoint) {
        String::new()
    } else {
        format!(" at {endpoint}")
    };
    let label = store_label(&mount.id, &mount.bucket, &mount.prefix);
    format!("{label}: cannot reach the store{at}: {cause}")
}

/// Warns that a mount is served as it was last listed, and how long ago that was: at start and
/// at each refresh that cannot reach the store.
fn warn_serving(replica: &Replica, store: &dyn ObjectStore, source: &StoreError, served: &Served) {
    tracing::warn!(
        "{}; serving the {} files listed {} until it can be listed again",
        unreachable(replica, store, source),
        served.files,
        age(served.listed_at, SystemTime::now())
    );
}

/// How long before `now` the time `at` was, for a person: "5 min ago".
fn age(at: Option<SystemTime>, now: SystemTime) -> String {
    let Some(at) = at else {
        return "by an earlier run (when, it did not record)".to_owned();
    };
    let secs = now.duration_since(at).unwrap_or_default().as_secs();
    match secs {
        0..60 => format!("{secs} s ago"),
        60..7200 => format!("{} min ago", secs / 60),
        7200..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// GETs at once against a server on this machine: at most two per CPU. Such a server shares the
/// CPUs with us, so a few streams already take all it can send, and each GET the background
/// download pauses for a reader lets the server fill its send buffer first, which it copies
/// while the reader's GET waits (measurements: docs/PERFORMANCE.md, "GETs to a local server").
/// GETs of tiny objects still run the requested number at once (see `download::lanes`).
fn local_server_concurrency(requested: usize, endpoint: Option<&str>, cpus: usize) -> usize {
    if endpoint.is_some_and(crate::store::local_http::is_local_http) {
        requested.min(2 * cpus)
    } else {
        requested
    }
}

/// How much lower than the readers' the background download's CPU priority is (a nice value;
/// see [`lower_thread_priority`]).
const BACKGROUND_NICENESS: libc::c_int = 10;

/// Lowers the CPU priority of the calling thread to `BACKGROUND_NICENESS` below the main
/// thread's (threads it starts inherit it; calling it again there changes nothing). A thread of
/// the background download then yields the CPU whenever the FUSE threads, the readers' runtime
/// or the user's own programs have work, so the backlog slows none of them (measurements:
/// docs/PERFORMANCE.md, "Background priority"). Only this thread: on Linux a nice value
/// belongs to a thread.
pub fn lower_thread_priority() {
    // SAFETY: getpid, gettid, getpriority and setpriority have no memory-safety
    // preconditions; raising a thread's own nice value needs no privilege.
    unsafe {
        // Of a process id, the nice value of its main thread.
        let main = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, main + BACKGROUND_NICENESS);
    }
}

/// Moves the calling thread to the idle scheduling class (`SCHED_IDLE`): it runs only on CPU
/// time no other thread wants, and a thread of any other class that wakes preempts it at once,
/// where a lower nice value lets a thread streaming bytes finish its time slice (measurements:
/// docs/PERFORMANCE.md, "Idle streaming threads"). Only the streaming threads: listing,
/// planning and committing (which hold the locks readers take, and keep the listing fresh)
/// keep a share of a busy CPU at nice 10.
pub fn idle_thread_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads `param`; for the calling thread (0), moving to the
    // idle class needs no privilege.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

/// Unmounts lazily: the mount leaves the directory tree now, and the kernel ends the session
/// once no file under it is open (at once, when none is) (`umount -l`; `fusermount3 -u -z` for
/// users who may not call umount2).
fn detach(dest: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_dest = std::ffi::CString::new(dest.as_os_str().as_bytes())?;
    // SAFETY: umount2 with a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c_dest.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(dest)
        .stdin(std::process::Stdio::null())
        .status()
        .context("cannot run fusermount3 to detach the mount")?;
    if !status.success() {
        bail!(
            "could not unmount {}: fusermount3 -u -z failed",
            dest.display()
        );
    }
    Ok(())
}

/// When the refreshes come: every `interval`, and at once when `refresh` is notified (SIGHUP),
/// until `stop`.
struct Schedule {
    interval: Duration,
    stop: Option<Instant>,
    refresh: Arc<tokio::sync::Notify>,
}

/// Downloads everything in the background, then every interval lists again, updates the file
/// system and downloads what changed; after `stop` (`--stop-recurring-downloads-after`), the
/// file system keeps serving what it has without refreshing. `first` are the listings the file
/// system started with: a mount served from its cache is listed at once when it is `owed`
/// (a pass completed it), else at the next interval.
async fn refresh_loop(
    engine: Arc<Engine>,
    vfs: Arc<Vfs>,
    kernel: fuser::Notifier,
    first: Vec<FirstListing>,
    schedule: Schedule,
    (cache_dir, mut recorded, run): (std::path::PathBuf, Recorded, Arc<RunStatus>),
) {
    let Schedule {
        interval,
        stop,
        refresh,
    } = schedule;
    // What the file system shows of each mount.
    let mut served: Vec<Served> = first.iter().map(|l| l.served.clone()).collect();
    let mut owed: Vec<bool> = first.iter().map(|l| l.owed).collect();
    // The background download acts only on listings made by this run.
    let mut listings = vec![None; first.len()];
    loop {
        run.progress.reset();
        let _report = run.progress.report();
        for (mount, m) in vfs.mounted().iter().enumerate() {
            if owed[mount] {
                let relisted = relist(&engine, &vfs, &kernel, mount, m, &mut served[mount]);
                listings[mount] = relisted.await;
            }
        }
        let passes = vfs.mounted().iter().zip(listings).map(|(m, listing)| {
            let engine = &engine;
            async move {
                // A mount whose listing failed keeps what it has: nothing is deleted on an error.
                let Some((listing, unchanged, list_time)) = listing else {
                    return (None, 1);
                };
                let result = engine
                    .apply_with(&m.replica, m.store.clone(), listing, unchanged)
                    .await;
                match result {
                    Ok(stats) => {
                        log_summary(&m.replica.mount.id, &PassStats { list_time, ..stats });
                        let failed = stats.failed;
                        (Some((m.replica.mount.id.clone(), stats.conflicts)), failed)
                    }
                    Err(EngineError::Cancelled { .. }) => (None, 0),
                    Err(e) => {
                        tracing::error!("{e}");
                        (None, 1)
                    }
                }
            }
        });
        let mut failed = 0;
        for (done, failures) in futures_util::future::join_all(passes).await {
            failed += failures;
            if let Some((id, conflicts)) = done {
                recorded.pass_done(&id, conflicts);
            }
        }
        drop(_report);
        run.pass_done(failed);
        crate::tables::release_freed_memory();
        super::status::record(&cache_dir, &recorded);
        if stop.is_some_and(|stop| Instant::now() + interval > stop) {
            tracing::info!("stopping refreshes as configured; serving the cache as it is");
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = refresh.notified() => tracing::info!("SIGHUP: refreshing every mount now"),
        }
        listings = vec![None; owed.len()];
        owed = vec![true; owed.len()];
    }
}

/// Tells the kernel to forget the entries a refresh changed (see `Vfs::update`), off the
/// runtime's threads: the kernel takes the directory's lock first, which an operation under
/// way there (a rename of a directory waits for its downloads) may hold for a while.
async fn forget_stale(kernel: fuser::Notifier, stale: Stale) {
    if stale.entries.is_empty() && stale.inodes.is_empty() {
        return;
    }
    // An error is an entry or inode the kernel does not hold (or no kernel any more): nothing
    // to forget.
    let _ = tokio::task::spawn_blocking(move || {
        let mut dirs = std::collections::BTreeSet::new();
        for (parent, name) in stale.entries {
            let _ = kernel.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::new(&name));
            dirs.insert(parent);
        }
        // What the kernel read of those directories, and the files' attributes and bytes.
        for ino in dirs.into_iter().chain(stale.inodes) {
            let _ = kernel.inval_inode(fuser::INodeNo(ino), 0, 0);
        }
    })
    .await;
}

/// Lists mount `mount` again and shows the listing; `None` (and the file system keeps serving
/// what it has, `served`) when it cannot be listed now. Once the tree shows a full listing of
/// a read-only mount, the parts of the new one that the tree and the cache already hold are
/// left out as they arrive ([`crate::unchanged`]): a refresh then holds only what changed.
async fn relist(
    engine: &Engine,
    vfs: &Vfs,
    kernel: &fuser::Notifier,
    mount: usize,
    m: &Mounted,
    served: &mut Served,
) -> Option<(Listing, Unchanged, Duration)> {
    let started = Instant::now();
    let first = !vfs.listed_whole(mount);
    let replica = &m.replica;
    let leave_out = !first && !replica.mount.writeable;
    let unchanged =
        |scope: Scope<'_>, part: &Listing| leave_out && vfs.holds_part(mount, scope, part);
    match engine.list_except(replica, &m.store, unchanged).await {
        Ok((listing, left_out)) => {
            let stale = vfs.update_with(mount, &listing, &left_out);
            if first {
                tracing::info!(
                    mount = %m.replica.mount.id,
                    objects = listing.len(),
                    seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                    "listed in full: the tree shows every file"
                );
            }
            forget_stale(kernel.clone(), stale).await;
            *served = Served::listed_now(listing.len() + left_out.objects as usize);
            Some((listing, left_out, started.elapsed()))
        }
        // Keep serving what we have; try again next interval.
        Err(EngineError::Store { source: e, .. }) if e.is_transient() => {
            warn_serving(&m.replica, m.store.as_ref(), &e, served);
            None
        }
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's nice value.
    fn nice() -> libc::c_int {
        // SAFETY: no memory-safety preconditions.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn a_server_on_this_machine_gets_two_gets_per_cpu_at_most() {
        let local = Some("http://127.0.0.1:9000");
        assert_eq!(local_server_concurrency(20, local, 2), 4);
        assert_eq!(local_server_concurrency(3, local, 2), 3);
        assert_eq!(local_server_concurrency(20, local, 16), 20);
        assert_eq!(
            local_server_concurrency(20, Some("https://s3.example.com"), 2),
            20
        );
        assert_eq!(local_server_concurrency(20, None, 2), 20);
    }

    #[test]
    fn the_age_of_a_cache_reads_as_a_person_says_it() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |secs| age(Some(now - Duration::from_secs(secs)), now);
        assert_eq!(ago(5), "5 s ago");
        assert_eq!(ago(150), "2 min ago");
        assert_eq!(ago(3 * 3600 + 5), "3 h ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
        // A clock set back since: not "in the future".
        assert_eq!(age(Some(now + Duration::from_secs(9)), now), "0 s ago");
        assert!(age(None, now).contains("earlier run"));
    }

    #[test]
    fn lowering_the_priority_lowers_only_the_calling_thread() {
        let before = nice();
        let (lowered, again) = std::thread::spawn(|| {
            lower_thread_priority();
            let lowered = nice();
            // A thread started by a lowered one, lowering itself too (a runtime's threads).
            let again = std::thread::spawn(|| {
                lower_thread_priority();
                nice()
            });
            (lowered, again.join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + BACKGROUND_NICENESS).min(19));
        assert_eq!(again, lowered, "lowered twice");
        assert_eq!(nice(), before, "another thread's priority changed");
    }
}
