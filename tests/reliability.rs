//! Reliability under faults, crashes and a full disk, against real S3-compatible servers on
//! loopback: a proxy that drops connections mid-body, answers 500 and 503 SlowDown, delays
//! responses and cuts bodies short; kill -9 at random points; objects overwritten mid-download;
//! a small tmpfs that fills up. Each scenario must end with a tree byte-equal to the objects, and
//! no file may ever be seen at a final path with other bytes than its object's.
//!
//! The write side too: a writeable mount's uploads and deletes through the same proxy, which
//! cuts requests while they are sent, answers 500 and 503 without forwarding them, delays them,
//! or loses the answer to a request the server applied. Reruns must end with a bucket
//! byte-equal to the local copy, the deleted files' objects gone, no conflict copy of the
//! tool's own writes, and no multipart upload left open.

mod common;

use common::faults::{Fault, FaultProxy, Op, Rule, seed};
use common::mount::*;
use common::proxy::SlowProxy;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
                std::thread::sleep(Duration::from_millis(5));
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
    eprintln!("faults injected: {injected:?}");
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
    let proxy = FaultProxy::start(&s3.endpoint, seed(), 10, &Fault::ALL).await;
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
    let proxy = FaultProxy::start(&s3.endpoint, seed(), 10, &Fault::ALL).await;
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

fn sync_cmd(endpoint: &str, dest: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = tool_at(endpoint);
    cmd.args([
        "sync",
        "--default-s3-mounts",
        &mounts_json(&[("m", "bkt", "")]),
    ])
    .arg("--destination")
    .arg(dest)
    .args(extra);
    cmd
}

/// Every file under `dir` has its object's bytes (files may be missing).
fn assert_all_exact(dir: &Path, expected: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    let found = if dir.exists() {
        tree(dir)
    } else {
        BTreeMap::new()
    };
    for (path, data) in &found {
        assert!(expected.get(path) == Some(data), "{path} is not exact");
    }
    found.into_keys().collect()
}

/// 30 objects of 1 MiB and 3 of 6 MiB, and a proxy passing 1 MiB/s a connection: downloading
/// them all takes over 12 s, so kills land mid-way.
async fn slow_kill_data() -> (S3Server, SlowProxy, BTreeMap<String, Vec<u8>>) {
    let s3 = S3Server::start_seeded(&["bkt"], |data| {
        std::fs::create_dir_all(data.join("bkt/d")).unwrap();
        for i in 0..33u64 {
            let len = if i < 30 { 1 << 20 } else { 6 << 20 };
            std::fs::write(data.join(format!("bkt/d/f{i:02}")), bytes(len, i)).unwrap();
        }
    })
    .await;
    let proxy = SlowProxy::start(&s3.endpoint, 1 << 20).await;
    let expected = tree(&s3.bucket_dir("bkt"));
    (s3, proxy, expected)
}

const KILL_ARGS: [&str; 4] = ["--part-size", "1MiB", "--concurrency", "4"];

/// What a round knew before it started: how many GETs the server had seen, and which files
/// were complete in the tool's directory.
type Round = (usize, BTreeSet<String>);

/// Twenty rounds of: start the tool (`start` gets a seeded random number and returns what
/// kills it), let it run 100-600 ms (seeded), kill -9 it. Every file complete in `dir` is exact
/// before each round.
fn twenty_kills(
    s3: &S3Server,
    dir: &Path,
    expected: &BTreeMap<String, Vec<u8>>,
    mut start: impl FnMut(u64) -> Box<dyn FnOnce()>,
) -> Vec<Round> {
    let mut rng = seed() | 1;
    let mut rounds = Vec::new();
    for _ in 0..20 {
        let complete = assert_all_exact(dir, expected);
        rounds.push((s3.get_log().len(), complete));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill = start(rng);
        std::thread::sleep(Duration::from_millis(100 + rng % 500));
        kill();
    }
    let midway = rounds
        .iter()
        .filter(|(_, c)| c.len() < expected.len())
        .count();
    assert!(
        midway >= 15,
        "only {midway} of 20 kills landed mid-download"
    );
    rounds
}

/// A file complete before a round is not fetched again in that round or after (but for the one
/// file whose rename may have raced the kill before it).
fn assert_no_complete_file_fetched_again(s3: &S3Server, rounds: &[Round]) {
    let log = s3.get_log();
    for (round, (gets, complete)) in rounds.iter().enumerate() {
        let again: BTreeSet<&str> = log[*gets..]
            .iter()
            .filter_map(|k| k.strip_prefix("bkt/"))
            .filter(|k| complete.contains(*k))
            .collect();
        assert!(again.len() <= 1, "round {round} fetched again {again:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_kill_9s_in_a_row_lose_nothing_and_fetch_no_complete_file_again() {
    let (s3, proxy, expected) = slow_kill_data().await;
    let dest = tempfile::tempdir().unwrap();
    let rounds = twenty_kills(&s3, &dest.path().join("m"), &expected, |_| {
        let mut child = sync_cmd(&proxy.endpoint, dest.path(), &KILL_ARGS)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Box::new(move || {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        })
    });
    run_ok(&mut sync_cmd(&s3.endpoint, dest.path(), &KILL_ARGS));
    assert!(tree(&dest.path().join("m")) == expected, "the copy differs");
    assert_no_complete_file_fetched_again(&s3, &rounds);
    let staging = dest.path().join(".s3-synchronizer/staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_kill_9s_of_a_mount_lose_nothing_and_fetch_no_complete_file_again() {
    let (s3, proxy, expected) = slow_kill_data().await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let rounds = twenty_kills(&s3, &root.path().join("cache/m"), &expected, |r| {
        let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &KILL_ARGS);
        // A reader too, so that some downloads are a reader's when the kill lands: it gets
        // the right bytes or an error, never others.
        let name = format!("d/f{:02}", r % 33);
        let want = expected[&name].clone();
        let file = m.dest.join("m").join(&name);
        let reader = std::thread::spawn(move || std::fs::read(file).ok());
        Box::new(move || {
            m.child.kill().unwrap(); // SIGKILL
            m.child.wait().unwrap();
            fusermount_u(&m.dest, true);
            if let Some(data) = reader.join().unwrap() {
                assert!(data == want, "{name} read wrong bytes");
            }
        })
    });
    let mut m = Mounted::start(&s3, root.path(), &mounts, &KILL_ARGS);
    assert_same_tree(&m.dest.join("m"), &s3.bucket_dir("bkt"));
    assert!(m.unmount().success(), "{}", m.log());
    assert_no_complete_file_fetched_again(&s3, &rounds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_of_an_object_overwritten_mid_download_ends_with_the_new_version() {
    const SIZE: usize = 8 << 20;
    let moto = Moto::start(&["bkt"]).await;
    let (v1, v2) = (bytes(SIZE, 1), bytes(SIZE, 2));
    moto.put("bkt", "big.bin", &v1).await;
    let proxy = SlowProxy::start(&moto.endpoint, 1 << 20).await;
    let dest = tempfile::tempdir().unwrap();
    let expected: BTreeMap<String, Vec<u8>> = [("big.bin".to_string(), v2.clone())].into();
    let watcher = FinalPaths::watch(dest.path().join("m"), expected.clone());
    let child = sync_cmd(
        &proxy.endpoint,
        dest.path(),
        &["--part-size", "256KiB", "--concurrency", "2"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let partial = dest.path().join(".s3-synchronizer/partial/m");
    wait_for(30, "the download to start", || {
        std::fs::read_dir(&partial).is_ok_and(|mut d| d.next().is_some())
    });
    moto.put("bkt", "big.bin", &v2).await;
    proxy.set_rate(0);
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("object changed during download"), "{log}");
    watcher.finish();
    assert!(tree(&dest.path().join("m")) == expected, "the copy differs");
}

/// A tmpfs of `size` mounted on `dir` (as root), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs");
        Self(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o remount");
    }
}

/// Whether this test may mount a tmpfs (as root); says so when it may not.
fn can_mount_tmpfs() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: mounting a tmpfs needs root (scripts/test.sh runs as root)");
    }
    root
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_clearly_corrupts_nothing_and_completes_once_space_is_freed() {
    if !can_mount_tmpfs() {
        return;
    }
    let s3 = seeded().await;
    let expected = tree(&s3.bucket_dir("bkt"));
    let root = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&root.path().join("disk"), "6m");
    let out = run(&mut sync_cmd(&s3.endpoint, &disk.0, &ARGS));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("No space left on device"))
        .unwrap_or_else(|| panic!("no line says the disk is full:\n{err}"));
    assert!(line.contains("obj-"), "the line names no file: {line}");
    let kept = assert_all_exact(&disk.0.join("m"), &expected);
    assert!(kept.len() < expected.len(), "everything fit");

    disk.resize("64m");
    run_ok(&mut sync_cmd(&s3.endpoint, &disk.0, &ARGS));
    assert!(tree(&disk.0.join("m")) == expected, "the copy differs");
    let staging = disk.0.join(".s3-synchronizer/staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_whose_cache_fills_up_fails_reads_clearly_and_serves_all_once_space_is_freed() {
    if !can_mount_tmpfs() {
        return;
    }
    let s3 = seeded().await;
    let expected = tree(&s3.bucket_dir("bkt"));
    let root = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&root.path().join("cache"), "6m");
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let args = [&ARGS[..], &["--download-interval", "1"]].concat();
    let mut m = Mounted::start(&s3, root.path(), &mounts, &args);
    let dir = m.dest.join("m");

    // Every file read while the cache is full has its object's bytes, or fails.
    wait_for(60, "the cache to fill up", || {
        m.log().contains("No space left on device")
    });
    let watch = FinalPaths::watch(dir.clone(), expected.clone());
    std::thread::sleep(Duration::from_millis(500));
    assert!(watch.finish() < expected.len(), "everything fit");
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("No space left on device"))
        .unwrap();
    assert!(line.contains("obj-"), "the line names no file: {line}");
    assert!(m.child.try_wait().unwrap().is_none(), "the mount stopped");

    disk.resize("64m");
    assert_same_tree(&dir, &s3.bucket_dir("bkt"));
    assert!(m.unmount().success(), "{}", m.log());
}

/// Lets a recurring tool run several intervals with the server gone, then brings the server back
/// with one object added while it was away.
fn server_away_then_back(s3: &mut S3Server, mut still_there: impl FnMut()) {
    s3.stop();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        still_there();
    }
    std::fs::write(s3.bucket_dir("bkt").join("c.txt"), b"added while away").unwrap();
    s3.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_keeps_everything_while_the_server_is_away_and_catches_up() {
    let mut s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "a.txt", b"a").await;
    s3.put("bkt", "d/b.txt", b"b").await;
    let dest = tempfile::tempdir().unwrap();
    let log = dest.path().with_extension("log");
    let mut child = sync_cmd(
        &s3.endpoint,
        dest.path(),
        &["--recurring-downloads", "--download-interval", "1"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let dir = dest.path().join("m");
    let expected: BTreeMap<String, Vec<u8>> = expect(&[("a.txt", b"a"), ("d/b.txt", b"b")]);
    wait_for(30, "the first pass", || {
        dir.exists() && tree(&dir) == expected
    });

    server_away_then_back(&mut s3, || {
        assert!(child.try_wait().unwrap().is_none(), "the tool stopped");
        assert!(
            tree(&dir) == expected,
            "files changed while the server was away"
        );
    });
    wait_for(60, "the object added while away", || {
        dir.join("c.txt").exists()
    });
    assert_eq!(tree(&dir).len(), 3);
    // SAFETY: sending a signal to the child process we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mount_serves_what_it_has_while_the_server_is_away_and_catches_up() {
    let mut s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "a.txt", b"a").await;
    s3.put("bkt", "d/b.txt", b"b").await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let args = ["--download-interval", "1"];
    let mut m = Mounted::start(&s3, root.path(), &mounts, &args);
    let dir = m.dest.join("m");
    let expected: BTreeMap<String, Vec<u8>> = expect(&[("a.txt", b"a"), ("d/b.txt", b"b")]);
    wait_for(30, "the cache to fill", || {
        tree(&root.path().join("cache/m")) == expected
    });
    // The cache is private to its owner.
    let mode = std::fs::metadata(root.path().join("cache"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );

    server_away_then_back(&mut s3, || {
        assert!(m.child.try_wait().unwrap().is_none(), "the mount stopped");
        assert!(tree(&dir) == expected, "what was served changed");
    });
    wait_for(60, "the object added while away", || {
        std::fs::read(dir.join("c.txt")).is_ok_and(|d| d == b"added while away")
    });
    assert_eq!(tree(&dir).len(), 3);
    assert!(m.unmount().success(), "{}", m.log());

    // Started while the server is down, a mount serves what its cache holds, then catches up.
    s3.stop();
    let served = tree(&root.path().join("cache/m"));
    assert_eq!(served.len(), 3);
    let mut m = Mounted::start(&s3, root.path(), &mounts, &args);
    assert!(tree(&dir) == served, "the cache is not what is served");
    // Served from the cache at once; the listing right after says why nothing changes.
    m.wait_until(30, "the warning", || {
        m.log().contains("serving the 3 files listed")
    });
    std::fs::write(s3.bucket_dir("bkt").join("e.txt"), b"added while down").unwrap();
    s3.restart();
    wait_for(60, "the object added while the mount started", || {
        std::fs::read(dir.join("e.txt")).is_ok_and(|d| d == b"added while down")
    });
    assert!(m.unmount().success(), "{}", m.log());
}

/// The peak resident set of process `pid` so far, in bytes (0 once it has exited).
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Runs `cmd` to completion, returning whether it succeeded and its peak resident set.
fn run_measured(cmd: &mut std::process::Command) -> (bool, u64) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0;
    loop {
        peak = peak.max(peak_rss(child.id()));
        if let Some(status) = child.try_wait().unwrap() {
            return (status.success(), peak);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many objects the many-objects scenario holds: 20,000 by default;
/// `S3SYNC_MANY_OBJECTS=100000` for the full scenario.
fn many_count() -> usize {
    std::env::var("S3SYNC_MANY_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Many objects in one mount, for listing pagination and memory: `count` objects in 500
/// directories, object `o{i}` holding the text of `i`.
async fn many_objects(count: usize) -> S3Server {
    S3Server::start_seeded(&["bkt"], |data| {
        for i in 0..count {
            let dir = data.join(format!("bkt/d{:03}", i % 500));
            if i < 500 {
                std::fs::create_dir_all(&dir).unwrap();
            }
            std::fs::write(dir.join(format!("o{i:06}")), i.to_string()).unwrap();
        }
    })
    .await
}

/// `dir` holds exactly the `count` objects of [`many_objects`], each with its bytes.
fn assert_many_exact(dir: &Path, count: usize) {
    let files = tree(dir);
    assert_eq!(files.len(), count);
    for (path, data) in &files {
        let i: usize = path.rsplit_once("/o").unwrap().1.parse().unwrap();
        assert_eq!(data, i.to_string().as_bytes(), "{path}");
    }
}

/// "`what` N s, peak RSS N MiB (N bytes/object)", for the figures a test prints.
fn figures(what: &str, secs: f64, rss: u64, count: usize) -> String {
    format!(
        "{what} {secs:.1} s, peak RSS {:.1} MiB ({} bytes/object)",
        rss as f64 / 1048576.0,
        rss / count as u64
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_objects_sync_exactly_and_an_unchanged_resync_only_lists() {
    let count = many_count();
    let s3 = many_objects(count).await;
    let dest = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (ok, first_rss) = run_measured(&mut sync_cmd(&s3.endpoint, dest.path(), &[]));
    let first_secs = started.elapsed().as_secs_f64();
    assert!(ok, "the first sync failed");
    assert_many_exact(&dest.path().join("m"), count);

    let (gets, lists) = (s3.gets(), s3.lists());
    let started = Instant::now();
    let (ok, again_rss) = run_measured(&mut sync_cmd(&s3.endpoint, dest.path(), &[]));
    let again_secs = started.elapsed().as_secs_f64();
    assert!(ok, "the second sync failed");
    assert_eq!(s3.gets(), gets, "an unchanged re-sync downloaded objects");
    assert!(s3.lists() > lists, "the re-sync did not list");
    eprintln!(
        "{count} objects: {}; {}",
        figures("first sync", first_secs, first_rss, count),
        figures("unchanged re-sync", again_secs, again_rss, count)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_objects_mount_exactly_and_an_unchanged_refresh_only_lists() {
    let count = many_count();
    let s3 = many_objects(count).await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let args = ["--download-interval", "1"];
    let started = Instant::now();
    let mut m = Mounted::start(&s3, root.path(), &mounts, &args);
    let mounted_secs = started.elapsed().as_secs_f64();
    wait_for(600, "the background download", || m.passes() >= 1);
    let filled_secs = started.elapsed().as_secs_f64();

    let (gets, lists) = (s3.gets(), s3.lists());
    let started = Instant::now();
    assert_many_exact(&m.dest.join("m"), count);
    let read_secs = started.elapsed().as_secs_f64();
    // A refresh after the reads lists again and downloads nothing.
    let passes = m.passes();
    wait_for(60, "a refresh", || m.passes() > passes);
    assert_eq!(
        s3.gets(),
        gets,
        "reads or an unchanged refresh downloaded objects"
    );
    assert!(s3.lists() > lists, "no refresh listed");
    let rss = peak_rss(m.child.id());
    assert!(m.unmount().success(), "{}", m.log());

    // A mount over the complete cache downloads nothing either.
    let started = Instant::now();
    let mut m = Mounted::start(&s3, root.path(), &mounts, &args);
    wait_for(60, "the pass over the cache", || m.passes() >= 1);
    let again_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        s3.gets(),
        gets,
        "a mount over a complete cache downloaded objects"
    );
    let again_rss = peak_rss(m.child.id());
    assert!(m.unmount().success(), "{}", m.log());
    eprintln!(
        "{count} objects: mounted in {mounted_secs:.1} s; {}; every file read through the \
         mount in {read_secs:.1} s; {}",
        figures("background download complete at", filled_secs, rss, count),
        figures(
            "remount over the complete cache: pass complete at",
            again_secs,
            again_rss,
            count
        ),
    );
}

/// A moto server (rclone serve s3 maps keys to files, so cannot hold these) whose bucket holds
/// keys that must be skipped and odd keys that must be kept, each object holding its key. Returns
/// the skipped keys and the kept ones as the tree they must make.
async fn hostile_keys() -> (Moto, Vec<String>, BTreeMap<String, Vec<u8>>) {
    let moto = Moto::start(&["bkt"]).await;
    let long = "n".repeat(256);
    let deep = format!("{}f", "d/".repeat(300));
    let skipped = vec![
        "../x".to_string(),
        "a/../../x".into(),
        "/abs".into(),
        "a//b".into(),
        "./y".into(),
        "a/./b".into(),
        format!("p/{long}"),
        "both".into(),
    ];
    let kept = [
        "good.txt".to_string(),
        "plus+and space %41.txt".into(),
        "both/child".into(),
        "ctl\u{7}\tname".into(),
        deep,
    ];
    for key in skipped.iter().chain(&kept) {
        moto.put("bkt", key, key.as_bytes()).await;
    }
    let kept = kept
        .into_iter()
        .map(|k| (k.clone(), k.into_bytes()))
        .collect();
    (moto, skipped, kept)
}

/// What a `--debug` run over [`hostile_keys`] must have logged: a warning naming each skipped
/// key, and no credentials.
fn assert_hostile_keys_logged_safely(log: &str, skipped: &[String]) {
    for key in skipped {
        assert!(
            log.lines().any(|l| l.contains(" WARN ")
                && l.contains("skipping key")
                && l.contains(&format!("{key:?}"))),
            "no warning names {key:?}"
        );
    }
    assert!(!log.contains(SECRET), "the secret key was logged");
    assert!(
        !log.contains("Signature="),
        "a request signature was logged"
    );
}

/// The names in directory `dir`.
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// `names` as a set, to compare with [`entries`].
fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_keys_never_escape_the_mount_directory() {
    let (moto, skipped, kept) = hostile_keys().await;
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    // Without RUST_LOG, --debug alone decides what is logged.
    let out = run(sync_cmd(&moto.endpoint, &dest, &["--debug"]).env_remove("RUST_LOG"));
    let copy = tree(&dest.join("m"));
    assert!(copy == kept, "{:?}", copy.keys());
    // Nothing was written outside the mount directory and the tool's state.
    assert_eq!(entries(root.path()), names(&["dest"]));
    assert_eq!(entries(&dest), names(&[".s3-synchronizer", "m"]));
    assert_hostile_keys_logged_safely(&stderr(&out), &skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_keys_never_escape_the_cache_of_a_mount() {
    let (moto, skipped, kept) = hostile_keys().await;
    let root = tempfile::tempdir().unwrap();
    let mut tool = tool_at(&moto.endpoint);
    tool.env_remove("RUST_LOG");
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut m = Mounted::start_with(tool, root.path(), &mounts, &["--debug"]);
    wait_for(60, "the background download", || m.passes() >= 1);
    let served = tree(&m.dest.join("m"));
    assert!(served == kept, "{:?}", served.keys());
    assert!(m.unmount().success(), "{}", m.log());
    assert!(
        tree(&root.path().join("cache/m")) == kept,
        "the cache differs"
    );
    // Nothing was written outside the cache's mount directory and the tool's state.
    let log_name = m.log_path().file_name().unwrap().to_str().unwrap();
    assert_eq!(entries(root.path()), names(&["cache", "mnt", log_name]));
    assert_eq!(
        entries(&root.path().join("cache")),
        names(&[".s3-synchronizer", "m"])
    );
    assert_eq!(entries(&m.dest), names(&[]));
    assert_hostile_keys_logged_safely(&m.log(), &skipped);
}

/// Objects in front of which [`plant_links_and_change_objects`] plants links.
async fn put_planted_objects(s3: &S3Server) {
    s3.put("bkt", "dir/a.txt", b"a1").await;
    s3.put("bkt", "dir/b.txt", b"b1").await;
    s3.put("bkt", "dir/c.txt", b"c1").await;
    s3.put("bkt", "top.txt", b"t1").await;
}

/// Another user swaps a directory and a file of `dir` (a copy, or a mount's cache) for links to
/// files of their own in `outside`, then the objects behind the links change or go away, all but
/// `dir/c.txt`. Returns the files in `outside`, which must stay as they are.
async fn plant_links_and_change_objects(
    s3: &S3Server,
    dir: &Path,
    outside: &Path,
) -> BTreeMap<String, Vec<u8>> {
    let precious = expect(&[
        ("a.txt", b"precious a"),
        ("b.txt", b"precious b"),
        // As long as the unchanged object dir/c.txt: sizes cannot tell them apart.
        ("c.txt", b"pc"),
        ("top.txt", b"precious top"),
    ]);
    std::fs::create_dir(outside).unwrap();
    for (name, data) in &precious {
        std::fs::write(outside.join(name), data).unwrap();
    }
    std::fs::remove_dir_all(dir.join("dir")).unwrap();
    std::os::unix::fs::symlink(outside, dir.join("dir")).unwrap();
    std::fs::remove_file(dir.join("top.txt")).unwrap();
    std::os::unix::fs::symlink(outside.join("top.txt"), dir.join("top.txt")).unwrap();

    s3.put("bkt", "dir/a.txt", b"a2").await;
    s3.delete("bkt", "dir/b.txt").await;
    s3.put("bkt", "top.txt", b"t2").await;
    precious
}

/// After a pass over the planted links: nothing in `outside` was written or deleted, and `log`
/// names each object behind the directory link as refused.
fn assert_planted_links_refused(outside: &Path, precious: &BTreeMap<String, Vec<u8>>, log: &str) {
    assert!(
        tree(outside) == *precious,
        "a file was written or deleted through a link"
    );
    for (what, name) in [
        ("download failed", "key=\"dir/a.txt\""),
        ("download failed", "key=\"dir/c.txt\""),
        ("could not delete", "path=dir/b.txt"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(what)
                && l.contains("refusing to write through")
                && l.contains(name)),
            "no line says {what}: refusing to write through ... {name}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planted_symlinks_are_never_written_or_deleted_through() {
    let s3 = S3Server::start(&["bkt"]).await;
    put_planted_objects(&s3).await;
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    run_ok(&mut sync_cmd(&s3.endpoint, &dest, &[]));
    let outside = root.path().join("outside");
    let precious = plant_links_and_change_objects(&s3, &dest.join("m"), &outside).await;

    let out = run(&mut sync_cmd(&s3.endpoint, &dest, &[]));
    assert!(
        !out.status.success(),
        "the sync succeeded though it wrote none of the refused files"
    );
    assert_planted_links_refused(&outside, &precious, &stderr(&out));
    // The file link itself was replaced by the object's new version.
    assert_eq!(std::fs::read(dest.join("m/top.txt")).unwrap(), b"t2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planted_symlinks_in_a_mount_cache_are_never_written_deleted_or_served_through() {
    let s3 = S3Server::start(&["bkt"]).await;
    put_planted_objects(&s3).await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut m = Mounted::start(&s3, root.path(), &mounts, &[]);
    wait_for(30, "the background download", || m.passes() >= 1);
    assert!(m.unmount().success(), "{}", m.log());
    let cache = root.path().join("cache/m");
    let outside = root.path().join("outside");
    let precious = plant_links_and_change_objects(&s3, &cache, &outside).await;

    let mut m = Mounted::start(&s3, root.path(), &mounts, &[]);
    wait_for(30, "the pass", || m.passes() >= 1);
    let dir = m.dest.join("m");
    let read_errno = |name: &str| {
        let read = std::fs::read(dir.join(name));
        (read.as_ref().err().and_then(|e| e.raw_os_error()), read)
    };
    // The file link was replaced by the object's new version; the deleted object is gone.
    assert_eq!(std::fs::read(dir.join("top.txt")).unwrap(), b"t2");
    assert!(
        std::fs::symlink_metadata(cache.join("top.txt"))
            .unwrap()
            .is_file()
    );
    assert_eq!(read_errno("dir/b.txt").0, Some(libc::ENOENT));
    // The objects behind the directory link, changed or not, are neither written through it nor
    // read from it: the mount fails their reads (the link is left for its owner to remove).
    for name in ["dir/a.txt", "dir/c.txt"] {
        let (errno, read) = read_errno(name);
        assert_eq!(errno, Some(libc::EIO), "{name}: {read:?}");
    }
    assert!(
        std::fs::symlink_metadata(cache.join("dir"))
            .unwrap()
            .is_symlink()
    );
    assert!(m.unmount().success(), "{}", m.log());
    assert_planted_links_refused(&outside, &precious, &m.log());
}

/// The writeable mount of the write scenarios: `data/` of bucket `bkt`, as directory `w`.
const WRITEABLE: &str = r#"[{"id":"w","bucket":"bkt","prefix":"data/","writeable":true}]"#;

/// 5 MiB parts (S3's smallest): the files of 6-12 MiB upload as multipart uploads of 2-3 parts.
const WRITE_ARGS: [&str; 4] = ["--part-size", "5MiB", "--concurrency", "4"];

fn writeable_sync(endpoint: &str, dest: &Path) -> std::process::Command {
    let mut cmd = tool_at(endpoint);
    cmd.args(["sync", "--default-s3-mounts", WRITEABLE, "--destination"])
        .arg(dest)
        .args(WRITE_ARGS);
    cmd
}

/// A server whose `data/` holds 12 small objects under `old/` and, under `edit/`, two small
/// ones and one of 7 MiB.
async fn write_server() -> S3Server {
    S3Server::start_seeded(&["bkt"], |data| {
        let d = data.join("bkt/data");
        std::fs::create_dir_all(d.join("old")).unwrap();
        std::fs::create_dir_all(d.join("edit")).unwrap();
        for i in 0..12u64 {
            let len = 1 + (i as usize * 7919) % (100 << 10);
            std::fs::write(d.join(format!("old/s{i:02}")), bytes(len, 100 + i)).unwrap();
        }
        std::fs::write(d.join("edit/e0.csv"), bytes(3000, 200)).unwrap();
        std::fs::write(d.join("edit/e1.csv"), bytes(5000, 201)).unwrap();
        std::fs::write(d.join("edit/big.bin"), bytes(7 << 20, 202)).unwrap();
    })
    .await
}

/// The local changes of the write scenarios, in the copy `dir` of [`write_server`]: 20 new
/// small files, 3 new ones of 6, 9 and 12 MiB, the three `edit/` files rewritten (the large one
/// to 8 MiB), and 6 of the 12 `old/` files deleted. Returns the keys of the deleted files.
fn change_locally(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir.join("new")).unwrap();
    for i in 0..20u64 {
        let len = 1 + (i as usize * 104_729) % (200 << 10);
        std::fs::write(dir.join(format!("new/n{i:02}")), bytes(len, 300 + i)).unwrap();
    }
    for (i, mib) in [6usize, 9, 12].into_iter().enumerate() {
        let data = bytes((mib << 20) + 1000 * i, 400 + i as u64);
        std::fs::write(dir.join(format!("new/big{i}.bin")), data).unwrap();
    }
    std::fs::write(dir.join("edit/e0.csv"), bytes(3000, 500)).unwrap();
    std::fs::write(dir.join("edit/e1.csv"), bytes(7000, 501)).unwrap();
    std::fs::write(dir.join("edit/big.bin"), bytes(8 << 20, 502)).unwrap();
    (0..12)
        .step_by(2)
        .map(|i| {
            let name = format!("old/s{i:02}");
            std::fs::remove_file(dir.join(&name)).unwrap();
            format!("data/{name}")
        })
        .collect()
}

/// Runs the writeable sync of `dest` through `endpoint` until a run exits 0, at most `max`
/// runs; returns how many it took and every run's log.
fn sync_until_ok(endpoint: &str, dest: &Path, max: usize) -> (usize, String) {
    let mut logs = String::new();
    for runs in 1..=max {
        let out = run(&mut writeable_sync(endpoint, dest));
        logs.push_str(&format!("--- run {runs}: {}\n{}", out.status, stderr(&out)));
        if out.status.success() {
            return (runs, logs);
        }
    }
    panic!("no run of {max} exited 0:\n{logs}");
}

/// What a user checks after the writes of `local` (the copy's files) and the deletes of
/// `deleted` (keys): every object is its file byte for byte and there is no other object, the
/// deleted files' objects are gone, the copy is as the user left it (no conflict copy beside a
/// file), no multipart upload is left open, and `status` says everything is saved. `logs` are
/// the runs' logs, for the messages.
async fn assert_bucket_is_the_copy(
    client: &aws_sdk_s3::Client,
    dest: &Path,
    local: &BTreeMap<String, Vec<u8>>,
    deleted: &[String],
    logs: &str,
) {
    let dir = dest.join("w");
    assert!(tree(&dir) == *local, "the local copy changed");
    for (path, data) in local {
        let key = format!("data/{path}");
        let object = object_bytes(client, "bkt", &key).await;
        assert!(object.as_ref() == Some(data), "{key} differs from its file");
    }
    for key in deleted {
        assert_eq!(
            object_bytes(client, "bkt", key).await,
            None,
            "{key} is back"
        );
    }
    let keys = object_keys(client, "bkt", "").await;
    let want: Vec<String> = local.keys().map(|p| format!("data/{p}")).collect();
    assert_eq!(keys, want, "the bucket holds other objects than the files");
    let open = client
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    let open: Vec<_> = open.uploads().iter().map(|u| u.key()).collect();
    assert!(
        open.is_empty(),
        "multipart uploads left open: {open:?}\n{logs}"
    );
    let status = run(tool_at("http://127.0.0.1:9")
        .args(["status", "--destination"])
        .arg(dest));
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}\n{logs}",
        String::from_utf8_lossy(&status.stdout)
    );
}

/// The write scenario with one of `faults` in turn given to the first two requests of each kind
/// of write (so that every kind gets faults, whatever the seed: only 4 files are multipart
/// uploads) and to `percent`% of the others (each try drawn on its own); rerun until a run
/// exits 0 (at most 8 runs); then the user's checks.
async fn writes_are_exact_under(faults: &[Fault], percent: u64) {
    let s3 = write_server().await;
    let dest = tempfile::tempdir().unwrap();
    run_ok(&mut writeable_sync(&s3.endpoint, dest.path()));
    let deleted = change_locally(&dest.path().join("w"));
    let local = tree(&dest.path().join("w"));
    let rules = Rule::writes(faults, percent);
    let proxy = FaultProxy::with_rules(&s3.endpoint, seed(), &rules).await;
    let (runs, logs) = sync_until_ok(&proxy.endpoint, dest.path(), 8);
    let by_op: BTreeMap<Op, BTreeMap<Fault, usize>> = Op::WRITES_AND_ABORT
        .into_iter()
        .map(|op| (op, proxy.injected_into(op)))
        .collect();
    eprintln!(
        "{runs} runs; faults injected: {:?}; by request: {by_op:?}",
        proxy.injected()
    );
    assert!(
        proxy.requests(Op::Part) >= 9 && proxy.requests(Op::Complete) >= 4,
        "no multipart uploads"
    );
    for fault in faults {
        assert!(
            proxy.injected().contains_key(fault),
            "{fault:?} never injected"
        );
    }
    assert!(
        !logs.contains("conflict:"),
        "a fault made a conflict:\n{logs}"
    );
    assert_bucket_is_the_copy(&s3.client, dest.path(), &local, &deleted, &logs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_exact_when_a_third_of_write_requests_are_cut() {
    writes_are_exact_under(&[Fault::DropRequest], 33).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_exact_when_a_third_of_write_requests_get_500_or_503() {
    writes_are_exact_under(&[Fault::InternalError, Fault::SlowDown], 33).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_exact_when_a_third_of_write_requests_are_delayed() {
    writes_are_exact_under(&[Fault::Delay], 33).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_exact_when_a_third_of_write_answers_are_lost() {
    writes_are_exact_under(&[Fault::LoseResponse], 33).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_exact_when_most_write_requests_get_any_fault() {
    writes_are_exact_under(&Fault::WRITE, 60).await;
}

/// The ETags S3 gives an object of `data`: one PUT's (its MD5), and a multipart upload's of
/// 5 MiB parts (the MD5 of the parts' MD5s, `-` and the number of parts).
fn md5_forms(data: &[u8]) -> [String; 2] {
    use md5::{Digest, Md5};
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut of_parts = Md5::new();
    let chunks = data.chunks(5 << 20);
    let parts = chunks.len();
    for chunk in chunks {
        of_parts.update(Md5::digest(chunk));
    }
    [
        hex(&Md5::digest(data)),
        format!("{}-{parts}", hex(&of_parts.finalize())),
    ]
}

/// Writes whose answers are lost after the server applied them: the first two PUTs (a new file
/// and an edit), the first two CompleteMultipartUploads (a new file of 9 MiB and an edit to
/// 8 MiB) and the first DELETE. A retry finds the write already made, and a condition of it
/// failing (on a server that honours conditions) or the upload gone; the tool must recognise
/// its own bytes (the object's ETag is the MD5 form of the local file) and record them in the
/// same run, not call them a conflict or a failure. On the server at `endpoint` (shaped through `client`).
async fn lost_answers_are_adopted(endpoint: &str, client: &aws_sdk_s3::Client) {
    let put = |key: &'static str, data: Vec<u8>| {
        client
            .put_object()
            .bucket("bkt")
            .key(key)
            .body(data.into())
            .send()
    };
    put("data/a.csv", b"1,2\n".to_vec()).await.unwrap();
    put("data/b.bin", bytes(7 << 20, 1)).await.unwrap();
    put("data/gone.txt", b"to delete".to_vec()).await.unwrap();
    let dest = tempfile::tempdir().unwrap();
    run_ok(&mut writeable_sync(endpoint, dest.path()));
    let dir = dest.path().join("w");
    std::fs::write(dir.join("a.csv"), b"3,4\n").unwrap();
    std::fs::write(dir.join("new.txt"), b"new").unwrap();
    std::fs::write(dir.join("b.bin"), bytes(8 << 20, 2)).unwrap();
    std::fs::write(dir.join("big.bin"), bytes(9 << 20, 3)).unwrap();
    std::fs::remove_file(dir.join("gone.txt")).unwrap();
    let local = tree(&dir);

    let lost = [Fault::LoseResponse];
    let rules = [
        Rule::new(&[Op::Put], 100, &lost).at_most(2),
        Rule::new(&[Op::Complete], 100, &lost).at_most(2),
        Rule::new(&[Op::Delete], 100, &lost).at_most(1),
    ];
    let proxy = FaultProxy::with_rules(endpoint, seed(), &rules).await;
    // One run: each retry finds its write made, and takes it for the tool's own at once.
    let (runs, logs) = sync_until_ok(&proxy.endpoint, dest.path(), 1);
    let lost = |op| proxy.injected_into(op).values().sum::<usize>();
    eprintln!(
        "{runs} runs; answers lost: {} PUT, {} completion, {} DELETE",
        lost(Op::Put),
        lost(Op::Complete),
        lost(Op::Delete)
    );
    assert_eq!(
        [lost(Op::Put), lost(Op::Complete), lost(Op::Delete)],
        [2, 2, 1]
    );
    assert!(
        !logs.contains("conflict:"),
        "a lost answer made a conflict:\n{logs}"
    );
    let gone = ["data/gone.txt".to_string()];
    assert_bucket_is_the_copy(client, dest.path(), &local, &gone, &logs).await;
    for (path, data) in &local {
        let key = format!("data/{path}");
        let head = client.head_object().bucket("bkt").key(&key).send().await;
        let etag = head.unwrap().e_tag().unwrap().trim_matches('"').to_owned();
        assert!(md5_forms(data).contains(&etag), "{key}: ETag {etag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_answer_to_an_applied_write_is_adopted_not_a_conflict() {
    let s3 = S3Server::start(&["bkt"]).await;
    lost_answers_are_adopted(&s3.endpoint, &s3.client).await;
}

/// The same against moto, which honours `If-None-Match` and `If-Match` on writes as S3 does:
/// the retry of an applied conditional write fails its condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_answer_to_an_applied_conditional_write_is_adopted_not_a_conflict() {
    let moto = Moto::start(&["bkt"]).await;
    lost_answers_are_adopted(&moto.endpoint, &moto.client).await;
}
