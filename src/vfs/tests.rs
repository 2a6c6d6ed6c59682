//! Tests of the file system against the in-memory store: what reads return, and when the
//! engine fetches what they need.

use super::*;

use crate::engine::EngineConfig;
use crate::local::Root;
use crate::mounts::Mount;
use crate::progress::Progress;
use crate::store::memory::{GetHook, Hooked, MemoryStore};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

fn mount(id: &str, prefix: &str) -> Mount {
    Mount {
        id: id.into(),
        bucket: "bkt".into(),
        prefix: prefix.into(),
        writeable: false,
        kms_key_id: None,
        role_arn: None,
    }
}

async fn vfs_over(store: Arc<dyn ObjectStore>, dir: &std::path::Path) -> (Arc<Vfs>, Arc<Engine>) {
    vfs_with(store, dir, 2, CancellationToken::new()).await
}

/// [`vfs_with`] with parts of `part_size` bytes.
async fn vfs_with_parts(
    store: Arc<dyn ObjectStore>,
    dir: &std::path::Path,
    part_size: u64,
) -> (Arc<Vfs>, Arc<Engine>) {
    let config = EngineConfig {
        concurrency: 2,
        part_size,
        readers: None,
        stream: None,
        slow_start: false,
    };
    vfs_config(store, dir, &config, CancellationToken::new()).await
}

/// A vfs over mount `m` (prefix `p/`) of `store`, with its cache in `dir`, listed once.
async fn vfs_with(
    store: Arc<dyn ObjectStore>,
    dir: &std::path::Path,
    concurrency: usize,
    cancel: CancellationToken,
) -> (Arc<Vfs>, Arc<Engine>) {
    let config = EngineConfig {
        concurrency,
        part_size: PART,
        readers: None,
        stream: None,
        slow_start: false,
    };
    vfs_config(store, dir, &config, cancel).await
}

async fn vfs_config(
    store: Arc<dyn ObjectStore>,
    dir: &std::path::Path,
    config: &EngineConfig,
    cancel: CancellationToken,
) -> (Arc<Vfs>, Arc<Engine>) {
    let engine = Arc::new(Engine::new(
        Root::open(dir).unwrap(),
        config,
        Arc::new(Progress::default()),
        cancel,
    ));
    let state = engine.open_mount(mount("m", "p/")).unwrap();
    let vfs = Arc::new(Vfs::new(engine.clone(), vec![Source { state, store }]));
    let listing = store_list(&vfs).await;
    vfs.update(0, &listing);
    (vfs, engine)
}

/// Starts the background pass over the mount; returns once `held` holds one of its GETs.
async fn bulk_until_held(
    vfs: &Vfs,
    engine: &Arc<Engine>,
    held: &Held,
) -> tokio::task::JoinHandle<Result<crate::engine::PassStats, crate::engine::EngineError>> {
    let source = &vfs.sources()[0];
    let (engine, state, store) = (engine.clone(), source.state.clone(), source.store.clone());
    let listing = store_list(vfs).await;
    let bulk = tokio::spawn(async move { engine.apply(&state, store, listing).await });
    while held.stalled.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    bulk
}

async fn store_list(vfs: &Vfs) -> Vec<ObjectMeta> {
    let s = &vfs.sources()[0];
    s.store.list(&s.state.mount.prefix).await.unwrap()
}

fn path_ino(vfs: &Vfs, path: &str) -> Result<u64, FsError> {
    let mut ino = ROOT;
    for name in path.split('/') {
        ino = vfs.lookup(ino, name)?.ino;
    }
    Ok(ino)
}

async fn read_all(vfs: &Vfs, path: &str) -> Result<Vec<u8>, FsError> {
    let fh = vfs.open(path_ino(vfs, path)?).await?.fh;
    let data = vfs.read(fh, 0, 1 << 24).await?;
    vfs.release(fh);
    Ok(data)
}

#[tokio::test]
async fn lists_before_downloading_and_reads_on_demand() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    store.put("p/a/b.txt", &b"hello"[..]);
    store.put("p/big", vec![7u8; 300_000]);
    store.put("other/x", &b"not mine"[..]);
    let (vfs, _engine) = vfs_over(store.clone(), tmp.path()).await;

    let names: Vec<String> = vfs
        .readdir(path_ino(&vfs, "m").unwrap())
        .unwrap()
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(names, [".", "..", "a", "big"]);
    assert_eq!(
        vfs.getattr(path_ino(&vfs, "m/big").unwrap()).unwrap().size,
        300_000
    );
    assert_eq!(store.gets(), 0, "listing alone downloads nothing");

    assert_eq!(read_all(&vfs, "m/a/b.txt").await.unwrap(), b"hello");
    assert_eq!(read_all(&vfs, "m/big").await.unwrap(), vec![7u8; 300_000]);
    assert!(matches!(path_ino(&vfs, "m/x"), Err(FsError::NotFound)));

    // Cached now: opening again needs no GET.
    let gets = store.gets();
    assert_eq!(read_all(&vfs, "m/big").await.unwrap(), vec![7u8; 300_000]);
    assert_eq!(store.gets(), gets);
}

#[tokio::test]
async fn a_changed_object_gets_a_new_inode_and_open_handles_keep_their_version() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    store.put("p/f", &b"one"[..]);
    store.put("p/gone", &b"bye"[..]);
    store.put("p/same", &b"same"[..]);
    let (vfs, _engine) = vfs_over(store.clone(), tmp.path()).await;
    let ino = path_ino(&vfs, "m/f").unwrap();
    let same = path_ino(&vfs, "m/same").unwrap();
    let first = vfs.open(ino).await.unwrap();
    assert!(!first.keep_cache, "nothing cached yet");
    assert!(
        vfs.open(ino).await.unwrap().keep_cache,
        "same version again"
    );
    let fh = first.fh;

    store.put("p/f", &b"two!"[..]);
    store.delete("p/gone");
    store.put("p/new", &b"new"[..]);
    vfs.update(0, &store_list(&vfs).await);

    assert_eq!(path_ino(&vfs, "m/same").unwrap(), same, "inode is stable");
    let changed = path_ino(&vfs, "m/f").unwrap();
    assert_ne!(changed, ino, "a new version is a new inode");
    assert!(matches!(path_ino(&vfs, "m/gone"), Err(FsError::NotFound)));
    assert_eq!(read_all(&vfs, "m/new").await.unwrap(), b"new");
    let reopened = vfs.open(changed).await.unwrap();
    assert!(!reopened.keep_cache, "nothing cached for the new inode yet");
    assert_eq!(vfs.read(reopened.fh, 0, 100).await.unwrap(), b"two!");
    assert_eq!(vfs.getattr(changed).unwrap().size, 4);
    // The handle opened before the change still reads, and stats, the version it opened,
    // until the kernel forgets the old inode.
    assert_eq!(vfs.read(fh, 0, 100).await.unwrap(), b"one");
    assert_eq!(vfs.getattr(ino).unwrap().size, 3);
    vfs.forget(ino);
    assert!(matches!(vfs.getattr(ino), Err(FsError::NotFound)));
}

/// A store that records the ranges asked for and the bytes its bodies yielded, and holds
/// back the GETs `holds` picks (by key and offset) until the test lets them through.
type Holds = Box<dyn Fn(&str, u64) -> bool + Send + Sync>;

struct Held {
    holds: Holds,
    gate: tokio::sync::Semaphore,
    /// Each GET's range, and the thread it was asked from.
    asked: parking_lot::Mutex<Vec<(std::ops::Range<u64>, String)>>,
    stalled: AtomicU64,
    pulled: Arc<AtomicU64>,
}

impl Held {
    fn new(
        inner: Arc<MemoryStore>,
        holds: impl Fn(&str, u64) -> bool + Send + Sync + 'static,
    ) -> Arc<Hooked<Self>> {
        let held = Self {
            holds: Box::new(holds),
            gate: tokio::sync::Semaphore::new(0),
            asked: parking_lot::Mutex::default(),
            stalled: AtomicU64::new(0),
            pulled: Arc::default(),
        };
        Hooked::new(inner, held)
    }
}

#[async_trait::async_trait]
impl GetHook for Held {
    async fn get(
        &self,
        inner: &MemoryStore,
        key: &str,
        range: std::ops::Range<u64>,
        etag: &str,
    ) -> Result<crate::store::Body, crate::store::StoreError> {
        let thread = std::thread::current().name().unwrap_or_default().to_owned();
        self.asked.lock().push((range.clone(), thread));
        if (self.holds)(key, range.start) {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            // Each permit lets one GET through.
            self.gate.acquire().await.unwrap().forget();
        }
        let pulled = self.pulled.clone();
        let body = inner.get(key, range, etag).await?;
        Ok(Box::pin(body.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                pulled.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        })))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_does_not_wait_behind_the_backlog() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    // More backlog files than the engine starts at once, so the wanted file is not among
    // the downloads already under way.
    for i in 0..20 {
        mem.put(&format!("p/backlog/{i:02}"), vec![i as u8; 100_000]);
    }
    mem.put("p/zz-wanted", &b"needed now"[..]);
    let gated = Held::new(mem.clone(), |key, _| key.starts_with("p/backlog/"));
    let (vfs, engine) = vfs_with(gated.clone(), tmp.path(), 1, CancellationToken::new()).await;
    // The bulk pass takes the only bulk permit and stalls on the gated backlog.
    let bulk = bulk_until_held(&vfs, &engine, &gated).await;
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        read_all(&vfs, "m/zz-wanted"),
    )
    .await
    .expect("the open queued behind the stalled backlog");
    assert_eq!(read.unwrap(), b"needed now");
    assert!(!bulk.is_finished(), "the backlog is still pending");

    gated.gate.add_permits(1000);
    let stats = bulk.await.unwrap().unwrap();
    assert_eq!(stats.failed, 0);
    assert_eq!(
        read_all(&vfs, "m/backlog/19").await.unwrap(),
        vec![19u8; 100_000]
    );
}

#[tokio::test]
async fn a_failed_download_fails_the_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    store.put("p/bad", &b"x"[..]);
    let (vfs, _engine) = vfs_over(store.clone(), tmp.path()).await;
    store.set_fault(|_, _| {
        Some(crate::store::memory::Fault::Fail(
            crate::store::StoreError::Permanent("denied".into()),
        ))
    });
    let err = read_all(&vfs, "m/bad").await.unwrap_err();
    assert!(matches!(err, FsError::Download(_)), "{err:?}");
    assert!(err.to_string().contains("\"p/bad\""), "{err}");
}

const PART: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_read_waits_only_for_the_parts_covering_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let data: Vec<u8> = (0..20 * PART).map(|i| (i % 251) as u8).collect();
    mem.put("p/big", data.clone());
    let held = Held::new(mem.clone(), |key, start| {
        key == "p/big" && start != 19 * PART
    });
    let (vfs, _engine) = vfs_over(held.clone(), tmp.path()).await;

    let opened = vfs.open(path_ino(&vfs, "m/big").unwrap()).await.unwrap();
    assert!(opened.partial, "a large file opens before it is downloaded");
    let end = 20 * PART;
    assert_eq!(
        vfs.read(opened.fh, end - 100, 4096).await.unwrap(),
        data[(end - 100) as usize..]
    );
    // Only the last part was fetched; the bulk download is held back at its first parts.
    let asked: Vec<u64> = held.asked.lock().iter().map(|(r, _)| r.start).collect();
    assert!(asked.contains(&(19 * PART)), "{asked:?}");
    assert!(
        asked.iter().all(|&a| a == 19 * PART || a < 4 * PART),
        "{asked:?}"
    );
    assert!(
        vfs.read_now(opened.fh, 0, 10).is_none(),
        "the start is still missing"
    );

    held.gate.add_permits(1000);
    let all = vfs.read(opened.fh, 0, end as u32).await.unwrap();
    assert!(all == data, "the whole file reads back");
    vfs.release(opened.fh);
    // Once complete, the file is in place and opens complete.
    wait_until_cached(&vfs, "m/big").await;
    let again = vfs.open(path_ino(&vfs, "m/big").unwrap()).await.unwrap();
    assert!(!again.partial);
    assert_eq!(std::fs::read(tmp.path().join("m/big")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_fetches_its_own_stretch_not_the_whole_part() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let part = 8 << 20;
    let data: Vec<u8> = (0..4 * part).map(|i| (i % 251) as u8).collect();
    mem.put("p/big", data.clone());
    // The bulk download's GETs start at part boundaries: they wait.
    let held = Held::new(mem.clone(), move |_, start| start % part == 0);
    let (vfs, engine) = vfs_with_parts(held.clone(), tmp.path(), part).await;
    let bulk = bulk_until_held(&vfs, &engine, &held).await;

    let opened = vfs.open(path_ino(&vfs, "m/big").unwrap()).await.unwrap();
    let at = 2 * part + part / 2 + (300 << 10);
    let got = vfs.read(opened.fh, at, 100).await.unwrap();
    assert!(got == data[at as usize..at as usize + 100]);
    // The megabyte around the read, not its 8 MiB part, in three GETs: the read's own
    // 128 KiB, and the rest of the megabyte before and after it (asked at the same time,
    // so perhaps not yet when the read returns; the bulk GETs are all at the gate).
    let readers_gets = || {
        let asked = held.asked.lock();
        asked.iter().filter(|(r, _)| r.start % part != 0).count()
    };
    for _ in 0..1000 {
        if readers_gets() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let asked: Vec<_> = held.asked.lock().iter().map(|(r, _)| r.clone()).collect();
    let mut readers: Vec<_> = asked.iter().filter(|r| r.start % part != 0).collect();
    readers.sort_by_key(|r| r.start);
    let (mib, own) = (at - (300 << 10), at - at % (128 << 10));
    let own_end = own + (128 << 10);
    assert_eq!(
        readers,
        [&(mib..own), &(own..own_end), &(own_end..mib + (1 << 20))],
        "{asked:?}"
    );

    held.gate.add_permits(1000);
    bulk.await.unwrap().unwrap();
    vfs.release(opened.fh);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_gets_hold_back_their_bodies_while_a_reader_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let part = 1 << 20;
    let data: Vec<u8> = (0..8 * part).map(|i| (i % 247) as u8).collect();
    mem.put("p/big", data.clone());
    // Every GET waits at the gate until the test lets it through.
    let held = Held::new(mem.clone(), |_, _| true);
    let (vfs, engine) = vfs_with_parts(held.clone(), tmp.path(), part).await;
    let bulk = bulk_until_held(&vfs, &engine, &held).await;
    while held.stalled.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }

    // A reader waits for bytes at the end, its GET queued behind the two bulk GETs.
    let opened = vfs.open(path_ino(&vfs, "m/big").unwrap()).await.unwrap();
    let at = 7 * part + 5;
    let vfs2 = vfs.clone();
    let read = tokio::spawn(async move { vfs2.read(opened.fh, at, 100).await });
    while held.stalled.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // The bulk GETs go through first (the gate is first come, first served), but read
    // nothing of their bodies while the reader waits.
    held.gate.add_permits(2);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        held.pulled.load(Ordering::SeqCst),
        0,
        "bulk bodies were read"
    );
    assert!(!read.is_finished());

    held.gate.add_permits(1000);
    let got = read.await.unwrap().unwrap();
    assert!(got == data[at as usize..at as usize + 100]);
    bulk.await.unwrap().unwrap();
    vfs.release(opened.fh);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_readers_fetch_runs_on_the_readers_runtime_and_the_rest_of_the_file_streams_on_its_own() {
    let readers = named_runtime("test-reader");
    let stream = named_runtime("test-stream");
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let part = 2 << 20;
    let data: Vec<u8> = (0..4 * part).map(|i| (i % 239) as u8).collect();
    mem.put("p/big", data.clone());
    // The GETs of whole parts (the background download's) wait at the gate.
    let held = Held::new(mem.clone(), move |_, start| start % part == 0);
    let config = EngineConfig {
        concurrency: 2,
        part_size: part,
        readers: Some(readers.handle().clone()),
        stream: Some(stream.handle().clone()),
        slow_start: false,
    };
    let cancel = CancellationToken::new();
    let (vfs, _engine) = vfs_config(held.clone(), tmp.path(), &config, cancel).await;

    // The open starts the download; a read in the last part fetches the megabyte around it.
    let opened = vfs.open(path_ino(&vfs, "m/big").unwrap()).await.unwrap();
    let at = 3 * part + part / 2 + 7;
    let got = vfs.read(opened.fh, at, 100).await.unwrap();
    assert!(got == data[at as usize..at as usize + 100]);
    held.gate.add_permits(1000);
    wait_until_cached(&vfs, "m/big").await;
    vfs.release(opened.fh);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);

    // The read's GETs: in the megabyte around it.
    let mib = at - at % (1 << 20);
    let read_gets = mib..mib + (1 << 20);
    let threads: Vec<_> = held
        .asked
        .lock()
        .iter()
        .map(|(r, t)| (r.start, t.clone()))
        .collect();
    assert!(
        threads.iter().any(|(start, _)| read_gets.contains(start)),
        "{threads:?}"
    );
    // The rest of the file: on the background download's streaming runtime.
    for (start, thread) in &threads {
        let expected = if read_gets.contains(start) {
            "test-reader"
        } else {
            "test-stream"
        };
        assert_eq!(thread, expected, "{threads:?}");
    }
    readers.shutdown_background();
    stream.shutdown_background();
}

/// Opening a file that is not downloaded yet sets up its download on the caller's (the
/// readers') runtime: with every thread of the background download busy, the open and a
/// read of its last bytes still complete. The rest of the file downloads once they are free.
#[test]
fn an_open_does_not_wait_for_the_busy_background_runtime() {
    let (bulk, readers) = (named_runtime("test-bulk"), named_runtime("test-reader"));
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let part = 2 << 20;
    let data: Vec<u8> = (0..4 * part).map(|i| (i % 241) as u8).collect();
    mem.put("p/big", data.clone());
    let vfs = vfs_on(&bulk, &readers, mem, tmp.path(), part);

    // The background runtime's only worker is kept busy until released.
    let release_tx = occupy(&bulk);

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let at = 4 * part - 100;
    let v = vfs.clone();
    readers.spawn(async move {
        let opened = v.open(path_ino(&v, "m/big").unwrap()).await.unwrap();
        let got = v.read(opened.fh, at, 100).await.unwrap();
        done_tx.send((opened.fh, got)).unwrap();
    });
    // Bounded, so that a regression fails instead of hanging.
    let (fh, got) = done_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the open or the read waited for the background runtime");
    assert!(got == data[at as usize..]);

    release_tx.send(()).unwrap();
    bulk.block_on(wait_until_cached(&vfs, "m/big"));
    vfs.release(fh);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
    readers.shutdown_background();
}

/// A mount "m" of prefix "p/" in `mem`, with `part`-byte parts: passes on `bulk`, the
/// fetches of waiting readers on `readers`.
fn vfs_on(
    bulk: &tokio::runtime::Runtime,
    readers: &tokio::runtime::Runtime,
    mem: Arc<MemoryStore>,
    dir: &std::path::Path,
    part: u64,
) -> Arc<Vfs> {
    let config = EngineConfig {
        concurrency: 2,
        part_size: part,
        readers: Some(readers.handle().clone()),
        stream: None,
        slow_start: false,
    };
    bulk.block_on(vfs_config(mem, dir, &config, CancellationToken::new()))
        .0
}

/// Blocks the only worker of `runtime` until the returned sender is dropped or sent to.
fn occupy(runtime: &tokio::runtime::Runtime) -> std::sync::mpsc::Sender<()> {
    let (busy_tx, busy_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move {
        busy_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    busy_rx.recv().unwrap();
    release_tx
}

/// A FUSE thread opens a large file that is not downloaded yet by itself: with every worker
/// of both runtimes busy, `open_now` stages the file and returns a handle whose reads will
/// wait for their ranges. A small file is downloaded before it opens, so its open has to wait
/// (`None`); a file in the cache opens at once too.
#[test]
fn a_large_file_opens_on_the_calling_thread_with_every_runtime_busy() {
    let (bulk, readers) = (named_runtime("test-bulk"), named_runtime("test-reader"));
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let part = 2 << 20;
    let data: Vec<u8> = (0..3 * part).map(|i| (i % 239) as u8).collect();
    mem.put("p/big", data.clone());
    mem.put("p/small", b"small".to_vec());
    let vfs = vfs_on(&bulk, &readers, mem, tmp.path(), part);
    let (release_bulk, release_readers) = (occupy(&bulk), occupy(&readers));

    let opened = vfs
        .open_now(path_ino(&vfs, "m/big").unwrap())
        .expect("a large file opens without waiting")
        .unwrap();
    assert!(opened.partial);
    assert!(vfs.read_now(opened.fh, 3 * part - 10, 10).is_none());
    assert!(vfs.open_now(path_ino(&vfs, "m/small").unwrap()).is_none());

    drop((release_bulk, release_readers));
    let v = vfs.clone();
    let got = readers
        .block_on(async move { v.read(opened.fh, 3 * part - 10, 10).await })
        .unwrap();
    assert!(got == data[data.len() - 10..]);
    bulk.block_on(wait_until_cached(&vfs, "m/big"));
    vfs.release(opened.fh);
    let cached = vfs
        .open_now(path_ino(&vfs, "m/big").unwrap())
        .expect("a cached file opens without waiting")
        .unwrap();
    assert!(!cached.partial);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
    readers.shutdown_background();
}

/// A waiting read's bytes are written without the blocking pool: with the readers' runtime's
/// blocking pool taken, a read of the last bytes of a file not downloaded yet completes.
#[test]
fn a_waiting_read_does_not_need_the_blocking_pool() {
    let bulk = named_runtime("test-bulk");
    let readers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .thread_name("test-reader")
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let part = 2 << 20;
    let data: Vec<u8> = (0..3 * part).map(|i| (i % 229) as u8).collect();
    mem.put("p/big", data.clone());
    let vfs = vfs_on(&bulk, &readers, mem, tmp.path(), part);
    let release_bulk = occupy(&bulk);
    let (taken_tx, taken_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    readers.spawn_blocking(move || {
        taken_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    taken_rx.recv().unwrap();

    let opened = vfs
        .open_now(path_ino(&vfs, "m/big").unwrap())
        .unwrap()
        .unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let v = vfs.clone();
    readers.spawn(async move {
        done_tx
            .send(v.read(opened.fh, 3 * part - 100, 100).await)
            .unwrap();
    });
    // Bounded, so that a regression fails instead of hanging.
    let got = done_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the read waited for the blocking pool")
        .unwrap();
    assert!(got == data[data.len() - 100..]);

    drop((release_tx, release_bulk));
    bulk.block_on(wait_until_cached(&vfs, "m/big"));
    vfs.release(opened.fh);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
    readers.shutdown_background();
}

/// A background pass streams every GET, of small and large files alike, on the streaming
/// runtime, and the files it writes are whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_background_pass_streams_on_the_streaming_runtime() {
    let stream = named_runtime("test-stream");
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let large: Vec<u8> = (0..5 * PART).map(|i| (i % 233) as u8).collect();
    mem.put("p/large", large.clone());
    for i in 0..5u8 {
        mem.put(&format!("p/small-{i}"), vec![i; 100]);
    }
    let held = Held::new(mem.clone(), |_, _| false);
    let config = EngineConfig {
        concurrency: 2,
        part_size: PART,
        readers: None,
        stream: Some(stream.handle().clone()),
        slow_start: false,
    };
    let (vfs, engine) =
        vfs_config(held.clone(), tmp.path(), &config, CancellationToken::new()).await;
    let source = &vfs.sources()[0];
    let stats = engine
        .sync_mount(&source.state, source.store.clone())
        .await
        .unwrap();
    assert_eq!(stats.downloaded, 6);
    assert!(std::fs::read(tmp.path().join("m/large")).unwrap() == large);
    for i in 0..5u8 {
        assert_eq!(
            std::fs::read(tmp.path().join(format!("m/small-{i}"))).unwrap(),
            vec![i; 100]
        );
    }
    let asked = held.asked.lock().clone();
    assert!(asked.len() >= 10, "{asked:?}");
    assert!(asked.iter().all(|(_, t)| t == "test-stream"), "{asked:?}");
    stream.shutdown_background();
}

/// A runtime of one worker whose threads are named `name` (tests tell by a GET's thread
/// which runtime asked for it).
fn named_runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits (bounded) until the file at `path` is complete in the cache.
async fn wait_until_cached(vfs: &Vfs, path: &str) {
    let rel = path.split_once('/').unwrap().1;
    let s = &vfs.sources()[0];
    for _ in 0..1000 {
        let meta = s.store.head(&format!("p/{rel}")).await.unwrap().unwrap();
        if s.state.copy.holds(rel, &meta) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("{path} never completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handle_never_mixes_two_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let old: Vec<u8> = vec![1; (20 * PART) as usize];
    mem.put("p/big", old.clone());
    let held = Held::new(mem.clone(), |key, start| {
        key == "p/big" && ![10 * PART, 5 * PART].contains(&start)
    });
    let (vfs, _engine) = vfs_over(held.clone(), tmp.path()).await;
    let ino = path_ino(&vfs, "m/big").unwrap();
    let opened = vfs.open(ino).await.unwrap();
    // Random reads (not at the handle's position), so nothing is prefetched.
    let here = 10 * PART;
    assert_eq!(vfs.read(opened.fh, here, 10).await.unwrap(), vec![1; 10]);

    mem.put("p/big", vec![2; (20 * PART) as usize]);
    // A part not fetched before the change cannot be read from this version any more.
    let err = vfs.read(opened.fh, 5 * PART, 10).await.unwrap_err();
    assert!(err.to_string().contains("changed"), "{err}");
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // What was read of the old version still reads the same.
    assert_eq!(vfs.read(opened.fh, here, 10).await.unwrap(), vec![1; 10]);
    held.gate.add_permits(1000);
    vfs.release(opened.fh);

    // After the refresh, the file opens at its new version, whole.
    vfs.update(0, &store_list(&vfs).await);
    assert_eq!(
        read_all(&vfs, "m/big").await.unwrap(),
        vec![2; (20 * PART) as usize]
    );
}

/// A read of bytes of an object deleted since the file was opened fails with ENOENT, as a
/// read of a file removed under its reader; what was read before still reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_of_an_object_deleted_since_the_open_fails_with_enoent() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/big", vec![1; (20 * PART) as usize]);
    let held = Held::new(mem.clone(), |key, start| {
        key == "p/big" && ![10 * PART, 5 * PART].contains(&start)
    });
    let (vfs, _engine) = vfs_over(held.clone(), tmp.path()).await;
    let opened = vfs.open(path_ino(&vfs, "m/big").unwrap()).await.unwrap();
    let here = 10 * PART;
    assert_eq!(vfs.read(opened.fh, here, 10).await.unwrap(), vec![1; 10]);

    mem.delete("p/big");
    let err = vfs.read(opened.fh, 5 * PART, 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
    assert_eq!(vfs.read(opened.fh, here, 10).await.unwrap(), vec![1; 10]);
    held.gate.add_permits(1000);
    vfs.release(opened.fh);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_waiting_for_a_part_the_backlog_is_retrying_gets_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    let data: Vec<u8> = (0..8 * PART).map(|i| (i % 253) as u8).collect();
    store.put("p/big", data.clone());
    let (vfs, _engine) = vfs_over(store.clone(), tmp.path()).await;
    // The first GET of the first part fails transiently: the background download retries
    // it, after a backoff, while a reader waits for it and pauses the bulk lane.
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = failed.clone();
    store.set_fault(move |key, range| {
        (key == "p/big" && range.start == 0 && !seen.swap(true, Ordering::SeqCst)).then(|| {
            crate::store::memory::Fault::Fail(crate::store::StoreError::Transient(
                "connection reset".into(),
            ))
        })
    });
    let opened = vfs.open(path_ino(&vfs, "m/big").unwrap()).await.unwrap();
    while !failed.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let read = vfs.read(opened.fh, 100, 1000);
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), read)
        .await
        .expect("the reader waited behind the backlog it paused")
        .unwrap();
    assert_eq!(got, data[100..1100]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_still_gets_a_part_whose_background_fetch_was_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let data: Vec<u8> = (0..4 * PART).map(|i| (i % 241) as u8).collect();
    mem.put("p/big", data.clone());
    // The background download's GET of the first part hangs; a later one goes through.
    let first = std::sync::atomic::AtomicBool::new(true);
    let held = Held::new(mem.clone(), move |key, start| {
        key == "p/big" && start == 0 && first.swap(false, Ordering::SeqCst)
    });
    let cancel = CancellationToken::new();
    let (vfs, engine) = vfs_with(held.clone(), tmp.path(), 2, cancel.clone()).await;
    let bulk = bulk_until_held(&vfs, &engine, &held).await;
    // A reader joins that download and waits for the hanging part; then the background
    // pass is cancelled, aborting the fetch the reader was waiting for.
    let opened = vfs.open(path_ino(&vfs, "m/big").unwrap()).await.unwrap();
    let read = vfs.read(opened.fh, 10, 100);
    let cancelling = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        cancel.cancel();
    };
    let (got, ()) = tokio::join!(
        tokio::time::timeout(std::time::Duration::from_secs(20), read),
        cancelling
    );
    let got = got.expect("the reader waited for a fetch that was cancelled");
    assert_eq!(got.unwrap(), data[10..110]);
    assert!(bulk.await.unwrap().is_err(), "the pass was cancelled");
}
