//! Fault injection: the tool against a real S3-compatible server on loopback, through a proxy
//! that drops connections mid-body, answers 500 and 503 SlowDown, delays responses and cuts
//! bodies short, in sync mode and mount mode. Each run must end with a tree byte-equal to the
//! objects, and no file may ever be seen at a final path with other bytes than its object's.

mod common;

use common::faults::{Fault, FaultProxy};
use common::mount::*;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// 120 small objects of up to 200 KiB and 6 of 1-3 MiB (several parts each at 256 KiB).
async fn seeded() -> S3Server {
    S3Server::start_seeded(&["bkt"], |data| {
        for i in 0..126u64 {
            let (dir, len) = if i < 120 {
                (
                    format!("small/{}", i % 7),
                    1 + (i as usize * 1693) % (200 << 10),
                )
            } else {
                ("large".into(), (1 << 20) + (i as usize - 120) * (400 << 10))
            };
            let dir = data.join("bkt").join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("obj-{i:03}.bin")), bytes(len, i)).unwrap();
        }
    })
    .await
}

const ARGS: [&str; 4] = ["--part-size", "256KiB", "--concurrency", "8"];
const SEED: u64 = 7;

/// Watches a directory while the tool fills it: every file seen at its final path must have
/// exactly its object's bytes.
struct FinalPaths {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, Vec<String>)>,
}

impl FinalPaths {
    fn watch(dir: PathBuf, expected: BTreeMap<String, Vec<u8>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut verified = BTreeSet::new();
            let mut wrong = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                scan(&dir, &dir, &expected, &mut verified, &mut wrong);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (verified.len(), wrong)
        });
        Self { stop, thread }
    }

    /// Stops watching; asserts nothing wrong was seen and returns how many files were checked.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (verified, wrong) = self.thread.join().unwrap();
        assert!(wrong.is_empty(), "seen at a final path: {wrong:?}");
        verified
    }
}

fn scan(
    base: &Path,
    dir: &Path,
    expected: &BTreeMap<String, Vec<u8>>,
    verified: &mut BTreeSet<String>,
    wrong: &mut Vec<String>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name() == ".s3-synchronizer" {
            continue;
        }
        if path.is_dir() {
            scan(base, &path, expected, verified, wrong);
            continue;
        }
        let rel = path
            .strip_prefix(base)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if verified.contains(&rel) {
            continue;
        }
        match (std::fs::read(&path), expected.get(&rel)) {
            (Ok(data), Some(want)) if data == *want => {
                verified.insert(rel);
            }
            (Ok(data), _) => wrong.push(format!("{rel} ({} bytes)", data.len())),
            (Err(_), _) => {}
        }
    }
}

fn assert_every_fault_injected(proxy: &FaultProxy) {
    let injected = proxy.injected();
    for fault in Fault::ALL {
        assert!(
            injected.get(&fault).copied().unwrap_or(0) > 0,
            "{fault:?} never injected: {injected:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_is_exact_when_a_tenth_of_gets_fail() {
    let s3 = seeded().await;
    let proxy = FaultProxy::start(&s3.endpoint, SEED, 10, &Fault::ALL).await;
    let expected = tree(&s3.bucket_dir("bkt"));
    let dest = tempfile::tempdir().unwrap();
    let watcher = FinalPaths::watch(dest.path().join("m"), expected.clone());
    run_ok(
        tool_at(&proxy.endpoint)
            .args([
                "sync",
                "--default-s3-mounts",
                &mounts_json(&[("m", "bkt", "")]),
            ])
            .arg("--destination")
            .arg(dest.path())
            .args(ARGS),
    );
    watcher.finish();
    assert!(tree(&dest.path().join("m")) == expected, "the copy differs");
    assert_every_fault_injected(&proxy);
    let staging = dest.path().join(".s3-synchronizer/staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mount_is_exact_when_a_tenth_of_gets_fail() {
    let s3 = seeded().await;
    let proxy = FaultProxy::start(&s3.endpoint, SEED, 10, &Fault::ALL).await;
    let expected = tree(&s3.bucket_dir("bkt"));
    let root = tempfile::tempdir().unwrap();
    let watcher = FinalPaths::watch(root.path().join("cache/m"), expected.clone());
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &ARGS);
    // Reads through the mount, most of them ahead of the background download.
    assert_same_tree(&m.dest.join("m"), &s3.bucket_dir("bkt"));
    wait_for(120, "the cache to fill", || {
        tree(&root.path().join("cache/m")) == expected
    });
    assert!(m.unmount().success(), "{}", m.log());
    watcher.finish();
    assert_every_fault_injected(&proxy);
}
