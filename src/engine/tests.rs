//! Engine tests against the in-memory store: what lands on disk, which requests were made, and
//! what a failure leaves behind.

use super::*;
use crate::local::Root;
use crate::mounts::STATE_DIR;
use crate::store::Body;
use crate::store::memory::{Fault, Faults, Hooked, MemoryStore, Request, StoreHook};
use crate::testing::{PART, Setup, engine_at, mount, pattern};
use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;

/// Runs one pass over `store` under prefix `p/` with a fresh engine over `root`.
async fn pass(root: &Path, store: Arc<dyn ObjectStore>) -> Result<PassStats, EngineError> {
    let engine = engine_at(root, 4, CancellationToken::new());
    let replica = engine.open_mount(mount("p/")).unwrap();
    engine.sync_mount(&replica, store).await
}

/// Every file and directory under `dir` (relative paths; directories end in `/`), with contents.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            if path.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(base, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn staging(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join(STATE_DIR).join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn expected(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
        .collect()
}

#[tokio::test]
async fn first_pass_copies_everything_and_second_pass_gets_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    let big = pattern(300_000, 1);
    store.put("p/a/b/c.txt", &b"nested"[..]);
    store.put("p/empty", Vec::new());
    store.put("p/big.bin", big.clone());
    store.put("p/with space/ünïcødé.txt", &b"names"[..]);
    store.put("p/folder/", Vec::new());
    store.put("p2/not-mine", &b"outside the prefix"[..]);

    let stats = pass(tmp.path(), store.clone()).await.unwrap();
    assert_eq!(
        tree(&tmp.path().join("m")),
        expected(&[
            ("a/", b""),
            ("a/b/", b""),
            ("a/b/c.txt", b"nested"),
            ("big.bin", &big),
            ("empty", b""),
            ("folder/", b""),
            ("with space/", b""),
            ("with space/ünïcødé.txt", b"names"),
        ])
    );
    assert_eq!((stats.listed, stats.downloaded, stats.failed), (5, 4, 0));
    assert_eq!(stats.bytes, 6 + 300_000 + 5);
    // Three small objects in one GET each (the empty one needs none), the big one in 5 parts.
    assert_eq!(store.gets(), 2 + 5);
    assert!(staging(tmp.path()).is_empty());

    let stats = pass(tmp.path(), store.clone()).await.unwrap();
    assert_eq!(
        store.gets(),
        7,
        "an unchanged bucket is not downloaded again"
    );
    assert_eq!((stats.unchanged, stats.downloaded), (4, 0));
}

#[tokio::test]
async fn changes_are_applied_and_local_files_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    store.put("p/keep", &b"keep"[..]);
    store.put("p/change", &b"old"[..]);
    store.put("p/gone/deep/file", &b"bye"[..]);
    pass(tmp.path(), store.clone()).await.unwrap();
    let dir = tmp.path().join("m");
    std::fs::write(dir.join("mine.txt"), b"a user's file").unwrap();

    store.put("p/change", &b"new content"[..]);
    store.delete("p/gone/deep/file");
    store.put("p/added", &b"added"[..]);
    let stats = pass(tmp.path(), store.clone()).await.unwrap();

    assert_eq!(
        tree(&dir),
        expected(&[
            ("added", b"added"),
            ("change", b"new content"),
            ("keep", b"keep"),
            ("mine.txt", b"a user's file"),
        ])
    );
    assert_eq!(
        (
            stats.downloaded,
            stats.updated,
            stats.deleted,
            stats.unchanged
        ),
        (1, 1, 1, 1)
    );
}

#[tokio::test]
async fn transient_failures_and_truncated_bodies_are_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let big = pattern(200_000, 2);
    mem.put("p/big", big.clone());
    mem.put("p/small", &b"small object"[..]);
    // The first two GETs of every part fail: one with a 503, one with a body cut short.
    let mut seen: HashMap<(String, u64), Vec<u64>> = HashMap::new();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let log = starts.clone();
    let store = Faults::over(mem.clone());
    store.set(move |request| {
        let Request::Get { key, range } = request else {
            return None;
        };
        let tries = seen.entry((key.to_owned(), range.end)).or_default();
        tries.push(range.start);
        log.lock().push((key.to_owned(), tries.clone()));
        match tries.len() {
            1 => Some(Fault::Fail(StoreError::Transient("503 SlowDown".into()))),
            2 => Some(Fault::Truncate(3)),
            _ => None,
        }
    });

    let stats = pass(tmp.path(), store.clone()).await.unwrap();
    assert_eq!(stats.failed, 0);
    assert_eq!(
        tree(&tmp.path().join("m")),
        expected(&[("big", &big), ("small", b"small object")])
    );
    assert_eq!(mem.gets(), 3 * (4 + 1));
    // A part written to its partial file resumes after the bytes that arrived; a small object,
    // held in memory, is asked for again whole.
    for (key, tries) in starts.lock().iter().filter(|(_, t)| t.len() == 3) {
        let resumed = if key == "p/big" { 3 } else { 0 };
        assert_eq!(tries[2], tries[1] + resumed, "{key}: {tries:?}");
    }
}

#[tokio::test]
async fn a_permanent_failure_fails_that_file_only_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/ok", &b"fine"[..]);
    mem.put("p/denied", pattern(200_000, 3));
    // Only the third part is refused, so the other parts were already written to staging.
    let store = Faults::over(mem.clone());
    store.set(|request| {
        let Request::Get { key, range } = request else {
            return None;
        };
        (key == "p/denied" && range.start == 2 * PART).then(|| {
            Fault::Fail(StoreError::AccessDenied {
                bucket: "bkt".into(),
                key: Some(key.into()),
                code: "AccessDenied".into(),
            })
        })
    });

    let stats = pass(tmp.path(), store.clone()).await.unwrap();
    assert_eq!((stats.downloaded, stats.failed), (1, 1));
    assert_eq!(tree(&tmp.path().join("m")), expected(&[("ok", b"fine")]));
    assert!(staging(tmp.path()).is_empty(), "no partial file is left");

    // Once access is granted, the next pass fetches what failed, and only that: the parts of
    // it not already in its partial file (how many arrived before the failure varies).
    store.set(|_| None);
    let before = mem.gets();
    let stats = pass(tmp.path(), store.clone()).await.unwrap();
    assert_eq!((stats.downloaded, stats.unchanged, stats.failed), (1, 1, 0));
    let fetched = mem.gets() - before;
    assert!((1..=4).contains(&fetched), "{fetched} GETs");
    assert_eq!(
        std::fs::read(tmp.path().join("m/denied")).unwrap(),
        pattern(200_000, 3)
    );
}

#[tokio::test]
async fn an_object_overwritten_mid_download_lands_whole_in_its_new_version() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let (old, new) = (pattern(300_000, 4), pattern(250_000, 5));
    mem.put("p/obj", old);
    let mut armed = true;
    let replacement = new.clone();
    let store = Faults::over(mem.clone());
    store.set(move |request| {
        let Request::Get { range, .. } = request else {
            return None;
        };
        (range.start == 3 * PART && std::mem::take(&mut armed)).then(|| {
            let data = replacement.clone();
            Fault::Before(Box::new(move |s: &MemoryStore| {
                s.put("p/obj", data);
            }))
        })
    });

    let stats = pass(tmp.path(), store.clone()).await.unwrap();
    assert_eq!((stats.downloaded, stats.failed), (1, 0));
    assert_eq!(std::fs::read(tmp.path().join("m/obj")).unwrap(), new);
    assert!(mem.counters.heads.load(Ordering::Relaxed) >= 1);

    // The manifest recorded the new version: nothing to do next time.
    let before = mem.gets();
    pass(tmp.path(), store.clone()).await.unwrap();
    assert_eq!(mem.gets(), before);
}

#[tokio::test]
async fn an_object_deleted_after_listing_is_gone_not_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/vanishing", &b"x"[..]);
    mem.put("p/stays", &b"y"[..]);
    let store = Faults::over(mem);
    store.set(|request| {
        let Request::Get { key, .. } = request else {
            return None;
        };
        (key == "p/vanishing").then(|| Fault::Before(Box::new(|s| s.delete("p/vanishing"))))
    });
    let stats = pass(tmp.path(), store.clone()).await.unwrap();
    assert_eq!((stats.downloaded, stats.failed), (1, 0));
    assert_eq!(tree(&tmp.path().join("m")), expected(&[("stays", b"y")]));
}

#[tokio::test]
async fn dangerous_and_unrepresentable_keys_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    for key in [
        "p/../escape",
        "p/a/../../escape",
        "p/./dot",
        "p/x/..",
        "p/both",
        "p/both/child",
    ] {
        store.put(key, &b"bad"[..]);
    }
    store.put(&format!("p/{}", "n".repeat(256)), &b"too long"[..]);
    store.put("p/fine", &b"good"[..]);

    let stats = pass(tmp.path(), store.clone()).await.unwrap();
    // `p/both` is both a file and the directory of `p/both/child`: the directory wins.
    assert_eq!((stats.downloaded, stats.skipped), (2, 6), "{stats:?}");
    let everything = tree(tmp.path());
    let data: Vec<&String> = everything
        .keys()
        .filter(|p| !p.starts_with(STATE_DIR))
        .collect();
    assert_eq!(data, ["m/", "m/both/", "m/both/child", "m/fine"]);
    assert_eq!(everything["m/fine"], b"good");
    assert!(!tmp.path().parent().unwrap().join("escape").exists());
}

/// Records the most GETs ever in flight at once (a GET is in flight from the call until its body
/// is dropped), and apart from them the most PUTs.
#[derive(Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    peak: AtomicUsize,
    puts_now: Arc<AtomicUsize>,
    puts_peak: AtomicUsize,
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl StoreHook for Gauge {
    async fn get(
        &self,
        inner: &MemoryStore,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        let guard = InFlight(self.now.clone());
        self.peak.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let body = inner.answer_get(key, range, etag)?;
        Ok(Box::pin(body.map(move |chunk| {
            let _ = &guard;
            chunk
        })))
    }

    async fn put(
        &self,
        inner: &MemoryStore,
        key: &str,
        body: bytes::Bytes,
        cond: &crate::store::Precondition,
        opts: &crate::store::WriteOptions,
    ) -> Result<String, StoreError> {
        let n = self.puts_now.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = InFlight(self.puts_now.clone());
        self.puts_peak.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        inner.answer_put(key, body, cond, opts)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_bounds_the_gets_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = MemoryStore::new("bkt");
    for i in 0..20 {
        inner.put(&format!("p/f{i}"), pattern(150_000 + i, i as u8));
    }
    let gauge = Hooked::new(inner.clone(), Gauge::default());
    let engine = engine_at(tmp.path(), 3, CancellationToken::new());
    let replica = engine.open_mount(mount("p/")).unwrap();
    let stats = engine.sync_mount(&replica, gauge.clone()).await.unwrap();
    assert_eq!(stats.downloaded, 20);
    let peak = gauge.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "at most 3 GETs at once, saw {peak}");
    assert!(peak >= 2, "downloads ran one at a time");
    for i in 0..20 {
        let got = std::fs::read(tmp.path().join(format!("m/f{i}"))).unwrap();
        assert!(got == pattern(150_000 + i, i as u8), "f{i} differs");
    }
}

/// Where the GETs that stream are capped below the requested concurrency (a mount against a
/// server on this machine), tiny objects still download the requested number at once, and
/// larger ones no more than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiny_objects_download_at_the_requested_concurrency_beside_a_capped_stream_lane() {
    let inner = MemoryStore::new("bkt");
    for i in 0..40 {
        inner.put(&format!("tiny/f{i}"), pattern(1_000 + i, i as u8));
        inner.put(&format!("big/f{i}"), pattern(150_000 + i, i as u8));
    }
    for (prefix, most, least) in [("tiny/", 8, 3), ("big/", 2, 2)] {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Setup {
            concurrency: 2,
            tiny_concurrency: Some(8),
            ..Setup::default()
        }
        .engine(tmp.path());
        let gauge = Hooked::new(inner.clone(), Gauge::default());
        let replica = engine.open_mount(mount(prefix)).unwrap();
        let stats = engine.sync_mount(&replica, gauge.clone()).await.unwrap();
        assert_eq!(stats.downloaded, 40, "{prefix}");
        let peak = gauge.peak.load(Ordering::SeqCst);
        assert!(
            peak <= most,
            "{prefix}: at most {most} GETs at once, saw {peak}"
        );
        assert!(
            peak >= least,
            "{prefix}: at least {least} GETs at once, saw {peak}"
        );
        let size = if prefix == "tiny/" { 1_000 } else { 150_000 };
        for i in 0..40 {
            let got = std::fs::read(tmp.path().join(format!("m/f{i}"))).unwrap();
            assert!(got == pattern(size + i, i as u8), "{prefix}f{i} differs");
        }
    }
}

/// Bodies of `key` from byte `from` on send their first chunk and never end.
struct Stall {
    key: &'static str,
    from: u64,
    stalled: Arc<AtomicU64>,
}

#[async_trait]
impl StoreHook for Stall {
    async fn get(
        &self,
        inner: &MemoryStore,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError> {
        let stall = key == self.key && range.start >= self.from;
        let body = inner.answer_get(key, range, etag)?;
        if !stall {
            return Ok(body);
        }
        self.stalled.fetch_add(1, Ordering::SeqCst);
        Ok(Box::pin(
            body.take(1).chain(futures_util::stream::pending()),
        ))
    }
}

fn partial_files(root: &Path) -> Vec<String> {
    let dir = root.join(STATE_DIR).join("partial/m");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_cancelled_download_leaves_no_partial_file_in_place_and_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = MemoryStore::new("bkt");
    let data = pattern(400_000, 6);
    inner.put("p/big", data.clone());
    // Parts 0-2 arrive; parts 3-6 hang.
    let stalled = Arc::new(AtomicU64::new(0));
    let store = Hooked::new(
        inner.clone(),
        Stall {
            key: "p/big",
            from: 3 * PART,
            stalled: stalled.clone(),
        },
    );
    let cancel = CancellationToken::new();
    let engine = engine_at(tmp.path(), 4, cancel.clone());
    let replica = engine.open_mount(mount("p/")).unwrap();
    let record = tmp.path().join(STATE_DIR).join("partial/m");
    let stop = async {
        let three_parts = format!("[[0,{}]]", 3 * PART);
        loop {
            // In either slot of the record.
            let recorded = std::fs::read_dir(&record).is_ok_and(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .any(|r| r.contains(&three_parts))
            });
            if stalled.load(Ordering::SeqCst) == 4 && recorded {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(engine.sync_mount(&replica, store), stop);
    assert!(
        matches!(result, Err(EngineError::Cancelled { .. })),
        "{result:?}"
    );
    drop(replica);
    drop(engine);
    assert!(
        !tmp.path().join("m/big").exists(),
        "no partial file at the final path"
    );
    assert!(staging(tmp.path()).is_empty());
    // Data and record (one or both of its slots, as far as it was written) are kept.
    let kept = partial_files(tmp.path());
    let (part, records) = kept.split_last().unwrap();
    assert!(
        part.ends_with(".part")
            && (1..=2).contains(&records.len())
            && records.iter().all(|r| r.ends_with(".json")),
        "{kept:?}"
    );

    // The next run fetches only the four missing parts.
    let before = inner.gets();
    let stats = pass(tmp.path(), inner.clone()).await.unwrap();
    assert_eq!((stats.downloaded, stats.failed), (1, 0));
    assert_eq!(inner.gets() - before, 4);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
    assert!(partial_files(tmp.path()).is_empty());
}

#[tokio::test]
async fn a_missing_bucket_names_the_mount_and_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let err = pass(tmp.path(), MemoryStore::missing("bkt"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "mount \"m\" (s3://bkt/p/): bucket \"bkt\" does not exist"
    );
}

/// A listing that fails transiently is tried again; one that keeps failing fails the pass with
/// the mount's name, and leaves the local copy as it was: a failed listing never reads as an
/// empty bucket.
#[tokio::test]
async fn a_failed_listing_is_retried_and_never_deletes_the_local_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/kept", &b"kept"[..]);
    let store = Faults::over(mem.clone());
    let mut lists = 0;
    store.set(move |request| {
        lists += 1;
        (matches!(request, Request::List { .. }) && lists <= 2)
            .then(|| Fault::Fail(StoreError::Transient("503 SlowDown".into())))
    });
    let stats = pass(tmp.path(), store.clone()).await.unwrap();
    assert_eq!((stats.listed, stats.downloaded), (1, 1));
    assert_eq!(mem.counters.lists.load(Ordering::Relaxed), 3);

    store.set(|request| {
        matches!(request, Request::List { .. })
            .then(|| Fault::Fail(StoreError::Permanent("500 InternalError".into())))
    });
    let err = pass(tmp.path(), store.clone()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "mount \"m\" (s3://bkt/p/): 500 InternalError"
    );
    assert_eq!(tree(&tmp.path().join("m")), expected(&[("kept", b"kept")]));
}

/// Lets tasks woken by a timer that fired with the test's (paused time) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Under slow start the bulk lane opens a GET at a time: `SLOW_START_GETS` at first, one more
/// each `SLOW_START_STEP`, up to the concurrency and no further.
#[tokio::test(start_paused = true)]
async fn slow_start_opens_the_bulk_lane_one_get_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new(
        Root::open(tmp.path()).unwrap(),
        &EngineConfig {
            concurrency: SLOW_START_GETS + 3,
            tiny_concurrency: SLOW_START_GETS + 3,
            write_concurrency: SLOW_START_GETS + 3,
            part_size: PART,
            readers: None,
            stream: None,
            slow_start: true,
            upload_delay: Duration::ZERO,
        },
        Arc::new(Progress::default()),
        CancellationToken::new(),
    );
    let open = || engine.downloader.lanes.bulk_available();
    assert_eq!(open(), SLOW_START_GETS);
    for step in 1..=4 {
        tokio::time::sleep(SLOW_START_STEP).await;
        // The ramp's timer fired with the test's: let its task run.
        settle().await;
        assert_eq!(open(), SLOW_START_GETS + step.min(3), "after step {step}");
    }
    // The priority lane is whole from the start.
    assert_eq!(
        engine.downloader.lanes.urgent_available(),
        SLOW_START_GETS + 3
    );
}

/// The bulk lane holds back while readers' downloads run and for `READER_GRACE` after the last
/// one ends; the end of one that is not the last frees nothing early.
#[tokio::test(start_paused = true)]
async fn the_bulk_lane_resumes_a_grace_after_the_last_readers_download() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine_at(tmp.path(), 4, CancellationToken::new());
    let downloader = &engine.downloader;
    let held = || downloader.lanes.holding_back();
    downloader.urgent_started();
    downloader.urgent_started();
    downloader.urgent_ended();
    assert!(held());
    downloader.urgent_ended();
    settle().await;
    assert!(held(), "released at once");
    tokio::time::sleep(READER_GRACE - Duration::from_millis(1)).await;
    settle().await;
    assert!(held(), "released before the grace ended");
    tokio::time::sleep(Duration::from_millis(2)).await;
    settle().await;
    assert!(!held(), "still held after the grace");
}

mod readers;
mod uploads;
