//! How the engine serves readers: a reader's fetch goes ahead of the backlog, fetches only what
//! it reads (and, for a sequential reader, what comes next), runs on the readers' runtime, and
//! gets its bytes even when the background download's fetch of them fails or is cancelled.

use super::*;
use crate::engine::download::TINY_BODY;
use crate::testing::{Held, Setup, named_runtime, occupy, wait_until_cached};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// A file opened through the engine, read the way the file system's handles read one.
struct Opened {
    /// `None` when the file was complete when it opened.
    download: Option<Arc<Download>>,
    file: Arc<File>,
    read_ahead: ReadAhead,
}

impl Opened {
    fn of(reader: Reader, replica: &Replica, path: &str) -> Self {
        match reader {
            Reader::Partial(d) => Self {
                file: d.file().clone(),
                download: Some(d),
                read_ahead: ReadAhead::default(),
            },
            Reader::Complete => Self {
                file: Arc::new(replica.copy.open_file(path).unwrap().0),
                download: None,
                read_ahead: ReadAhead::default(),
            },
        }
    }

    /// Waits for `offset..offset + len` to be downloaded, then reads it.
    async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, FetchError> {
        let end = offset + len;
        if let Some(d) = &self.download {
            d.read_ready(offset..end).await?;
            self.read_ahead.after_read(d, offset, end);
        }
        Ok(self.pread(offset, len))
    }

    /// Whether a read of `range` could be served without waiting.
    fn present(&self, range: Range<u64>) -> bool {
        self.download.as_ref().is_none_or(|d| d.is_present(range))
    }

    fn pread(&self, offset: u64, len: u64) -> Vec<u8> {
        let size = self.file.metadata().unwrap().len();
        let mut buf = vec![0; len.min(size.saturating_sub(offset)) as usize];
        self.file.read_exact_at(&mut buf, offset).unwrap();
        buf
    }
}

/// The listing of file `path` of mount "m" (prefix `p/`).
async fn meta_of(store: &dyn ObjectStore, path: &str) -> ObjectMeta {
    store.head(&format!("p/{path}")).await.unwrap().unwrap()
}

/// Opens file `path` for a reader (the engine's `open_reader`, as the file system's `open`).
async fn open(
    engine: &Engine,
    replica: &Arc<Replica>,
    store: &Arc<dyn ObjectStore>,
    path: &str,
) -> Result<Opened, FetchError> {
    let meta = meta_of(store.as_ref(), path).await;
    let reader = engine
        .open_reader(replica, store.clone(), meta, path.into())
        .await?;
    Ok(Opened::of(reader, replica, path))
}

/// A store holding `p/big`, `len` bytes of pattern `seed`, and those bytes.
fn big_file(len: u64, seed: u8) -> (Arc<MemoryStore>, Vec<u8>) {
    let mem = MemoryStore::new("bkt");
    let data = pattern(len as usize, seed);
    mem.put("p/big", data.clone());
    (mem, data)
}

/// Starts a background pass over the mount; returns once `held` holds one of its GETs.
async fn bulk_until_held(
    engine: &Arc<Engine>,
    replica: &Arc<Replica>,
    store: &Arc<dyn ObjectStore>,
    held: &Held,
) -> tokio::task::JoinHandle<Result<PassStats, EngineError>> {
    let (engine, replica, store) = (engine.clone(), replica.clone(), store.clone());
    let listing = store.list("p/").await.unwrap();
    let bulk = tokio::spawn(async move { engine.apply(&replica, store, listing).await });
    held.until_stalled(1).await;
    bulk
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
    let store: Arc<dyn ObjectStore> = gated.clone();
    let setup = Setup {
        concurrency: 1,
        ..Setup::default()
    };
    let (engine, replica) = setup.open(tmp.path());
    // The bulk pass takes the only bulk permit and stalls on the gated backlog.
    let bulk = bulk_until_held(&engine, &replica, &store, &gated).await;
    let read = async {
        let opened = open(&engine, &replica, &store, "zz-wanted").await?;
        opened.read(0, 100).await
    };
    let read = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the open queued behind the stalled backlog");
    assert_eq!(read.unwrap(), b"needed now");
    assert!(!bulk.is_finished(), "the backlog is still pending");

    gated.gate.add_permits(1000);
    let stats = bulk.await.unwrap().unwrap();
    assert_eq!(stats.failed, 0);
    assert_eq!(
        std::fs::read(tmp.path().join("m/backlog/19")).unwrap(),
        vec![19u8; 100_000]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_waits_only_for_the_parts_covering_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mem, data) = big_file(20 * PART, 1);
    let held = Held::new(mem.clone(), |key, start| {
        key == "p/big" && start != 19 * PART
    });
    let store: Arc<dyn ObjectStore> = held.clone();
    let (engine, replica) = Setup::default().open(tmp.path());

    let opened = open(&engine, &replica, &store, "big").await.unwrap();
    assert!(
        opened.download.is_some(),
        "a large file opens before it is downloaded"
    );
    let end = 20 * PART;
    assert_eq!(
        opened.read(end - 100, 4096).await.unwrap(),
        data[(end - 100) as usize..]
    );
    // Only the last part was fetched; the bulk download is held back at its first parts.
    let asked: Vec<u64> = held.asked.lock().iter().map(|(r, _)| r.start).collect();
    assert!(asked.contains(&(19 * PART)), "{asked:?}");
    assert!(
        asked.iter().all(|&a| a == 19 * PART || a < 4 * PART),
        "{asked:?}"
    );
    assert!(!opened.present(0..10), "the start is still missing");

    held.gate.add_permits(1000);
    let all = opened.read(0, end).await.unwrap();
    assert!(all == data, "the whole file reads back");
    drop(opened);
    // Once complete, the file is in place, the version the listing named.
    wait_until_cached(&replica, store.as_ref(), "big").await;
    let meta = meta_of(store.as_ref(), "big").await;
    assert!(replica.copy.open_held("big", &meta).is_some());
    assert_eq!(std::fs::read(tmp.path().join("m/big")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_fetches_its_own_stretch_not_the_whole_part() {
    let tmp = tempfile::tempdir().unwrap();
    let part = 8 << 20;
    let (mem, data) = big_file(4 * part, 2);
    // The bulk download's GETs start at part boundaries: they wait.
    let held = Held::new(mem.clone(), move |_, start| start % part == 0);
    let store: Arc<dyn ObjectStore> = held.clone();
    let setup = Setup {
        part_size: part,
        ..Setup::default()
    };
    let (engine, replica) = setup.open(tmp.path());
    let bulk = bulk_until_held(&engine, &replica, &store, &held).await;

    let opened = open(&engine, &replica, &store, "big").await.unwrap();
    let at = 2 * part + part / 2 + (300 << 10);
    let got = opened.read(at, 100).await.unwrap();
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
        tokio::time::sleep(Duration::from_millis(1)).await;
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
    drop(opened);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_gets_hold_back_their_bodies_while_a_reader_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let part = 1 << 20;
    let (mem, data) = big_file(8 * part, 3);
    // Every GET waits at the gate until the test lets it through.
    let held = Held::new(mem.clone(), |_, _| true);
    let store: Arc<dyn ObjectStore> = held.clone();
    let setup = Setup {
        part_size: part,
        ..Setup::default()
    };
    let (engine, replica) = setup.open(tmp.path());
    let bulk = bulk_until_held(&engine, &replica, &store, &held).await;
    held.until_stalled(2).await;

    // A reader waits for bytes at the end, its GET queued behind the two bulk GETs.
    let opened = Arc::new(open(&engine, &replica, &store, "big").await.unwrap());
    let at = 7 * part + 5;
    let reader = opened.clone();
    let read = tokio::spawn(async move { reader.read(at, 100).await });
    held.until_stalled(3).await;
    // The bulk GETs go through first (the gate is first come, first served), but read
    // nothing of their bodies while the reader waits.
    held.gate.add_permits(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    drop(opened);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_readers_fetch_runs_on_the_readers_runtime_and_the_rest_of_the_file_streams_on_its_own() {
    let readers = named_runtime("test-reader");
    let stream = named_runtime("test-stream");
    let tmp = tempfile::tempdir().unwrap();
    let part = 2 << 20;
    let (mem, data) = big_file(4 * part, 4);
    // The GETs of whole parts (the background download's) wait at the gate.
    let held = Held::new(mem.clone(), move |_, start| start % part == 0);
    let store: Arc<dyn ObjectStore> = held.clone();
    let setup = Setup {
        part_size: part,
        readers: Some(readers.handle().clone()),
        stream: Some(stream.handle().clone()),
        ..Setup::default()
    };
    let (engine, replica) = setup.open(tmp.path());

    // The open starts the download; a read in the last part fetches the megabyte around it.
    let opened = open(&engine, &replica, &store, "big").await.unwrap();
    let at = 3 * part + part / 2 + 7;
    let got = opened.read(at, 100).await.unwrap();
    assert!(got == data[at as usize..at as usize + 100]);
    held.gate.add_permits(1000);
    wait_until_cached(&replica, store.as_ref(), "big").await;
    drop(opened);
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

/// An engine with mount "m" (prefix "p/") of `mem` and `part`-byte parts: passes on `bulk`,
/// the fetches of waiting readers on `readers`.
fn engine_on(
    bulk: &tokio::runtime::Runtime,
    readers: &tokio::runtime::Runtime,
    dir: &Path,
    part: u64,
) -> (Arc<Engine>, Arc<Replica>) {
    let setup = Setup {
        part_size: part,
        readers: Some(readers.handle().clone()),
        ..Setup::default()
    };
    let _entered = bulk.enter();
    setup.open(dir)
}

/// Opening a file that is not downloaded yet sets up its download on the caller's (the
/// readers') runtime: with every thread of the background download busy, the open and a
/// read of its last bytes still complete. The rest of the file downloads once they are free.
#[test]
fn an_open_does_not_wait_for_the_busy_background_runtime() {
    let (bulk, readers) = (named_runtime("test-bulk"), named_runtime("test-reader"));
    let tmp = tempfile::tempdir().unwrap();
    let part = 2 << 20;
    let (mem, data) = big_file(4 * part, 5);
    let store: Arc<dyn ObjectStore> = mem;
    let (engine, replica) = engine_on(&bulk, &readers, tmp.path(), part);

    // The background runtime's only worker is kept busy until released.
    let release_tx = occupy(&bulk);

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let at = 4 * part - 100;
    let (e, st, s) = (engine.clone(), replica.clone(), store.clone());
    readers.spawn(async move {
        let opened = open(&e, &st, &s, "big").await.unwrap();
        let got = opened.read(at, 100).await.unwrap();
        done_tx.send((opened, got)).unwrap();
    });
    // Bounded, so that a regression fails instead of hanging.
    let (opened, got) = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the open or the read waited for the background runtime");
    assert!(got == data[at as usize..]);

    release_tx.send(()).unwrap();
    bulk.block_on(wait_until_cached(&replica, store.as_ref(), "big"));
    drop(opened);
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
    let part = 2 << 20;
    let (mem, data) = big_file(3 * part, 6);
    let store: Arc<dyn ObjectStore> = mem;
    let (engine, replica) = engine_on(&bulk, &readers, tmp.path(), part);
    let big = readers.block_on(meta_of(store.as_ref(), "big"));
    let release_bulk = occupy(&bulk);
    let (taken_tx, taken_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    readers.spawn_blocking(move || {
        taken_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    taken_rx.recv().unwrap();

    let reader = engine
        .open_reader_now(&replica, store.clone(), big, "big".into())
        .unwrap()
        .unwrap();
    let opened = Arc::new(Opened::of(reader, &replica, "big"));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let reader = opened.clone();
    readers.spawn(async move {
        done_tx
            .send(reader.read(3 * part - 100, 100).await)
            .unwrap();
    });
    // Bounded, so that a regression fails instead of hanging.
    let got = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the read waited for the blocking pool")
        .unwrap();
    assert!(got == data[data.len() - 100..]);

    drop((release_tx, release_bulk));
    bulk.block_on(wait_until_cached(&replica, store.as_ref(), "big"));
    drop(opened);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
    readers.shutdown_background();
}

/// A background pass streams the GETs of small and large files on the streaming runtime, and
/// those of tiny files where the pass runs; the files it writes are whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_background_pass_streams_on_the_streaming_runtime_but_tiny_files() {
    let stream = named_runtime("test-stream");
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let part = 4 * TINY_BODY;
    let large = pattern((part + part / 2) as usize, 7);
    mem.put("p/large", large.clone());
    let sizes = |i: u8| match i % 2 {
        0 => 100,
        _ => TINY_BODY as usize + 100,
    };
    for i in 0..6u8 {
        mem.put(&format!("p/small-{i}"), vec![i; sizes(i)]);
    }
    let held = Held::new(mem.clone(), |_, _| false);
    let setup = Setup {
        stream: Some(stream.handle().clone()),
        part_size: part,
        ..Setup::default()
    };
    let (engine, replica) = setup.open(tmp.path());
    let stats = engine.sync_mount(&replica, held.clone()).await.unwrap();
    assert_eq!(stats.downloaded, 7);
    assert!(std::fs::read(tmp.path().join("m/large")).unwrap() == large);
    for i in 0..6u8 {
        assert_eq!(
            std::fs::read(tmp.path().join(format!("m/small-{i}"))).unwrap(),
            vec![i; sizes(i)]
        );
    }
    let asked = held.asked.lock().clone();
    let on = |t: &str, tiny: bool| {
        asked
            .iter()
            .filter(|(r, at)| at == t && (r.end - r.start <= TINY_BODY) == tiny)
            .count()
    };
    // The large file's two parts, three small files, three tiny ones.
    assert_eq!(on("test-stream", false), 5, "{asked:?}");
    assert_eq!(on("test-stream", true), 0, "{asked:?}");
    assert_eq!(asked.len(), 8, "{asked:?}");
    stream.shutdown_background();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_waiting_for_a_part_the_backlog_is_retrying_gets_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mem, data) = big_file(8 * PART, 8);
    let faults = Faults::over(mem.clone());
    let store: Arc<dyn ObjectStore> = faults.clone();
    let (engine, replica) = Setup::default().open(tmp.path());
    // The first GET of the first part fails transiently: the background download retries
    // it, after a backoff, while a reader waits for it and pauses the bulk lane.
    let failed = Arc::new(AtomicBool::new(false));
    let seen = failed.clone();
    faults.set(move |request| {
        let Request::Get { key, range } = request else {
            return None;
        };
        (key == "p/big" && range.start == 0 && !seen.swap(true, Ordering::SeqCst))
            .then(|| Fault::Fail(StoreError::Transient("connection reset".into())))
    });
    let opened = open(&engine, &replica, &store, "big").await.unwrap();
    while !failed.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let read = opened.read(100, 1000);
    let got = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the reader waited behind the backlog it paused")
        .unwrap();
    assert_eq!(got, data[100..1100]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_still_gets_a_part_whose_background_fetch_was_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let (mem, data) = big_file(4 * PART, 9);
    // The background download's GET of the first part hangs; a later one goes through.
    let first = AtomicBool::new(true);
    let held = Held::new(mem.clone(), move |key, start| {
        key == "p/big" && start == 0 && first.swap(false, Ordering::SeqCst)
    });
    let store: Arc<dyn ObjectStore> = held.clone();
    let cancel = CancellationToken::new();
    let setup = Setup {
        cancel: cancel.clone(),
        ..Setup::default()
    };
    let (engine, replica) = setup.open(tmp.path());
    let bulk = bulk_until_held(&engine, &replica, &store, &held).await;
    // A reader joins that download and waits for the hanging part; then the background
    // pass is cancelled, aborting the fetch the reader was waiting for.
    let opened = open(&engine, &replica, &store, "big").await.unwrap();
    let read = opened.read(10, 100);
    let cancelling = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
    };
    let (got, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(20), read),
        cancelling
    );
    let got = got.expect("the reader waited for a fetch that was cancelled");
    assert_eq!(got.unwrap(), data[10..110]);
    assert!(bulk.await.unwrap().is_err(), "the pass was cancelled");
}
