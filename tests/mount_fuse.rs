//! `mount` against a real S3-compatible server on loopback, through real FUSE mounts
//! (needs /dev/fuse and Debian's `fuse3`, which `scripts/test.sh` installs).

mod common;

use common::faults::FaultProxy;
use common::mount::*;
use common::proxy::SlowProxy;
use common::*;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

async fn populate(s3: &S3Server) -> Vec<u8> {
    let multi = bytes(1024 * 1024 + 123, 1);
    for (key, data) in [
        ("top.txt", &b"top level\n"[..]),
        ("data/empty", b""),
        ("data/a/b/c/deep.csv", b"x,y\n1,2\n"),
        ("data/multi.bin", &multi),
        ("data/with space/ünïcødé ✓.txt", "héllo".as_bytes()),
    ] {
        s3.put("bkt", key, data).await;
    }
    multi
}

async fn serves_every_object_byte_for_byte(extra: &[&str]) {
    let s3 = S3Server::start(&["bkt"]).await;
    let multi = populate(&s3).await;
    let root = tempfile::tempdir().unwrap();
    let mut args = vec!["--part-size", "64KiB"];
    args.extend_from_slice(extra);
    let mut m = Mounted::start(&s3, root.path(), &mounts_json(&[("all", "bkt", "")]), &args);
    let all = m.dest.join("all");

    // Listed with the objects' sizes, mtimes and read-only permissions.
    let meta = std::fs::metadata(all.join("data/multi.bin")).unwrap();
    assert_eq!(meta.len(), multi.len() as u64);
    assert_eq!(meta.mode() & 0o777, 0o444);
    assert_eq!(
        meta.mtime(),
        s3.last_modified("bkt", "data/multi.bin").await
    );

    assert_same_tree(&all, &s3.bucket_dir("bkt"));

    // The ways notebooks read: pread at any offset, seek to the end, mmap.
    let file = File::open(all.join("data/multi.bin")).unwrap();
    for offset in [0, 65_535, 65_536, 700_001, multi.len() - 7] {
        let mut buf = [0u8; 7];
        file.read_exact_at(&mut buf, offset as u64).unwrap();
        assert_eq!(buf, multi[offset..offset + 7]);
    }
    let mut tail = Vec::new();
    let mut seeker = &file;
    seeker.seek(SeekFrom::End(-100)).unwrap();
    seeker.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, multi[multi.len() - 100..]);
    // SAFETY: a private read-only mapping of an open file, unmapped before `file` is dropped.
    unsafe {
        use std::os::unix::io::AsRawFd;
        let len = multi.len();
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        let mapped = std::slice::from_raw_parts(ptr as *const u8, len);
        assert!(mapped == &multi[..], "mmap sees other bytes");
        libc::munmap(ptr, len);
    }
    drop(file);

    // Read-only: every change is refused with EROFS.
    let erofs = Some(libc::EROFS);
    assert_eq!(errno(std::fs::write(all.join("new.txt"), b"x")), erofs);
    let writable = std::fs::OpenOptions::new()
        .append(true)
        .open(all.join("top.txt"));
    assert_eq!(errno(writable), erofs);
    assert_eq!(errno(std::fs::remove_file(all.join("top.txt"))), erofs);
    assert_eq!(
        errno(std::fs::rename(all.join("top.txt"), all.join("moved"))),
        erofs
    );
    assert_eq!(errno(std::fs::create_dir(all.join("dir"))), erofs);

    // A second mount on the same destination is refused with one clear line.
    let out = run(s3
        .tool()
        .args([
            "mount",
            "--default-s3-mounts",
            &mounts_json(&[("x", "bkt", "")]),
        ])
        .arg("--destination")
        .arg(&m.dest));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is already a mount point"),
        "{}",
        stderr(&out)
    );

    let status = m.unmount();
    assert!(status.success(), "{status}\n{}", m.log());
    assert!(!is_mount_point(&m.dest));
    let staging = root.path().join("cache/.s3-synchronizer/staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_every_object_byte_for_byte_with_passthrough() {
    serves_every_object_byte_for_byte(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_every_object_byte_for_byte_without_passthrough() {
    serves_every_object_byte_for_byte(&["--no-passthrough"]).await;
}

/// Backlog objects: sparse files, so a large backlog costs no disk or upload time.
const BACKLOG: usize = 32;
const BACKLOG_SIZE: u64 = 16 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn an_open_jumps_ahead_of_the_backlog() {
    let wanted = bytes(3 << 20, 9);
    let seed = wanted.clone();
    let s3 = S3Server::start_seeded(&["bkt"], |data| {
        let backlog = data.join("bkt/backlog");
        std::fs::create_dir_all(&backlog).unwrap();
        for i in 0..BACKLOG {
            let f = File::create(backlog.join(format!("b{i:02}"))).unwrap();
            f.set_len(BACKLOG_SIZE).unwrap();
        }
        // Last in key order: without priority it would be downloaded last.
        std::fs::create_dir_all(data.join("bkt/zz")).unwrap();
        std::fs::write(data.join("bkt/zz/wanted.bin"), &seed).unwrap();
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let args = ["--concurrency", "2", "--part-size", "4MiB"];
    let m = Mounted::start(&s3, root.path(), &mounts_json(&[("all", "bkt", "")]), &args);

    let got = std::fs::read(m.dest.join("all/zz/wanted.bin")).unwrap();
    let cached = std::fs::read_dir(root.path().join("cache/all/backlog"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(got == wanted, "wrong bytes");
    assert!(
        cached < BACKLOG,
        "the read returned only after the whole backlog was downloaded"
    );
    // The server saw the wanted file's GETs before the backlog's last ones.
    let log = s3.get_log();
    let first = log.iter().position(|k| k == "bkt/zz/wanted.bin").unwrap();
    let backlog_gets = BACKLOG * (BACKLOG_SIZE / (4 << 20)) as usize;
    let backlog_before = log[..first]
        .iter()
        .filter(|k| k.starts_with("bkt/backlog/"))
        .count();
    assert!(backlog_before < backlog_gets, "{backlog_before} GETs first");
}

/// The names in directory `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_shows_added_changed_and_deleted_objects() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "same.txt", b"same").await;
    s3.put("bkt", "change.txt", b"before").await;
    s3.put("bkt", "gone/deleted.txt", b"bye").await;
    s3.put("bkt", "sub/one.txt", b"one").await;
    s3.put("bkt", "keep/deep/kept.txt", b"kept").await;
    let root = tempfile::tempdir().unwrap();
    let args = ["--download-interval", "1"];
    let mut m = Mounted::start(&s3, root.path(), &mounts_json(&[("m", "bkt", "")]), &args);
    let dir = m.dest.join("m");
    assert_eq!(std::fs::read(dir.join("change.txt")).unwrap(), b"before");
    let kept = dir.join("keep/deep/kept.txt");
    let kept_ino = std::fs::metadata(&kept).unwrap().ino();
    let mut opened_before = File::open(dir.join("change.txt")).unwrap();
    // The kernel remembers a missing name (a negative entry) and what it read of a directory:
    // not past a refresh.
    assert!(!dir.join("added").exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);
    assert_eq!(names_in(&dir.join("sub")), ["one.txt"]);

    s3.put("bkt", "change.txt", b"after the change").await;
    s3.put("bkt", "added/new.txt", b"new").await;
    s3.put("bkt", "sub/fresh.txt", b"fresh").await;
    s3.delete("bkt", "gone/deleted.txt").await;
    wait_for(30, "the refresh", || {
        std::fs::read(dir.join("change.txt")).is_ok_and(|d| d == b"after the change")
            && std::fs::read(dir.join("added/new.txt")).is_ok_and(|d| d == b"new")
            && !dir.join("gone/deleted.txt").exists()
    });
    assert_eq!(
        names_in(&dir),
        ["added", "change.txt", "keep", "same.txt", "sub"]
    );
    // A directory the refresh found unchanged stays as it was.
    assert_eq!(std::fs::read(&kept).unwrap(), b"kept");
    assert_eq!(std::fs::metadata(&kept).unwrap().ino(), kept_ino);
    // A name never looked up, in a directory the kernel had read.
    assert_eq!(names_in(&dir.join("sub")), ["fresh.txt", "one.txt"]);
    // A handle opened before the change still stats and reads the version it opened.
    assert_eq!(opened_before.metadata().unwrap().len(), 6);
    let mut old = Vec::new();
    opened_before.read_to_end(&mut old).unwrap();
    assert_eq!(old, b"before");
    drop(opened_before);

    assert!(m.unmount().success(), "{}", m.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remount_serves_the_cache_without_downloading_again() {
    let s3 = S3Server::start(&["bkt"]).await;
    populate(&s3).await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("all", "bkt", "")]);
    let args = ["--part-size", "64KiB"];
    let mut m = Mounted::start(
        &s3,
        root.path(),
        &mounts,
        &[&args[..], &["--debug"]].concat(),
    );
    // Wait for the background download to fill the cache, and its pass to record it all (a
    // file is in place a moment before its record).
    let cached = root.path().join("cache/all");
    wait_for(60, "the cache to fill", || {
        tree(&cached) == tree(&s3.bucket_dir("bkt"))
    });
    m.wait_until(60, "the pass to complete", || m.passes() >= 1);
    assert!(m.unmount().success(), "{}", m.log());
    // A clean run and unmount: no error, and no warning from the file system, even with --debug.
    let log = m.log();
    assert!(!log.contains(" ERROR "), "{log}");
    assert!(!log.contains(" WARN fuser"), "{log}");

    let gets = s3.gets();
    let mut m = Mounted::start(&s3, root.path(), &mounts, &args);
    assert_same_tree(&m.dest.join("all"), &s3.bucket_dir("bkt"));
    assert_eq!(s3.gets(), gets, "unchanged objects were downloaded again");
    assert!(m.unmount().success(), "{}", m.log());
}

/// A remount over a cache that a pass completed serves it at once, while the bucket is listed
/// again (a big bucket takes long to list), and then shows what changed meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_remount_serves_its_cache_before_listing_and_then_shows_the_changes() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "kept.txt", b"kept").await;
    s3.put("bkt", "gone.txt", b"gone").await;
    let proxy = FaultProxy::with_rules(&s3.endpoint, 1, &[]).await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &[]);
    m.wait_until(30, "the first pass", || m.passes() > 0);
    assert!(m.unmount().success(), "{}", m.log());

    s3.delete("bkt", "gone.txt").await;
    s3.put("bkt", "new.txt", b"new").await;
    proxy.hold_listings(true);
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &[]);
    let dir = m.dest.join("m");
    assert_eq!(std::fs::read(dir.join("kept.txt")).unwrap(), b"kept");
    assert_eq!(std::fs::read(dir.join("gone.txt")).unwrap(), b"gone");
    assert!(!dir.join("new.txt").exists());

    proxy.hold_listings(false);
    wait_for(30, "the listing after the remount", || {
        std::fs::read(dir.join("new.txt")).is_ok_and(|d| d == b"new")
            && !dir.join("gone.txt").exists()
    });
    assert_eq!(std::fs::read(dir.join("kept.txt")).unwrap(), b"kept");
    assert!(m.unmount().success(), "{}", m.log());
}

/// A first mount is served before its full listing ends: a reader finds what it asks for by
/// requests of its own (a HEAD of a key, a listing of a directory), and a name the bucket does
/// not have is missing; once the listing ends, everything is there and the background download
/// runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_mount_serves_readers_before_its_full_listing_ends() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "top.txt", b"top").await;
    // Deeper than a listing splits: the full listing needs a listing of a whole prefix.
    s3.put("bkt", "runs/2024/06/01/metrics.csv", b"a,b\n1,2\n")
        .await;
    s3.put("bkt", "runs/2024/06/01/model.bin", &[7u8; 3000])
        .await;
    s3.put("bkt", "runs/2024/06/02/metrics.csv", b"a,b\n3,4\n")
        .await;
    let proxy = FaultProxy::with_rules(&s3.endpoint, 1, &[]).await;
    proxy.hold_whole_listings(true);
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &[]);
    let dir = m.dest.join("m");

    assert_eq!(names_in(&dir), ["runs", "top.txt"]);
    // A path straight to a file: each directory on the way looked for in the bucket.
    let csv = dir.join("runs/2024/06/01/metrics.csv");
    assert_eq!(std::fs::read(&csv).unwrap(), b"a,b\n1,2\n");
    assert_eq!(
        names_in(&dir.join("runs/2024/06/01")),
        ["metrics.csv", "model.bin"]
    );
    assert_eq!(names_in(&dir.join("runs/2024/06")), ["01", "02"]);
    let missing = std::fs::metadata(dir.join("runs/2024/06/03"));
    assert_eq!(missing.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    assert_eq!(m.passes(), 0, "the full listing was held back: {}", m.log());

    // A key added now shows once the full listing is in, as do the rest.
    s3.put("bkt", "runs/2024/06/03/metrics.csv", b"late").await;
    proxy.hold_whole_listings(false);
    m.wait_until(30, "the first pass", || m.passes() > 0);
    let late = dir.join("runs/2024/06/03/metrics.csv");
    wait_for(30, "the key added during the listing", || {
        std::fs::read(&late).is_ok_and(|d| d == b"late")
    });
    assert_eq!(
        std::fs::read(dir.join("runs/2024/06/01/model.bin")).unwrap(),
        [7u8; 3000]
    );
    assert!(m.unmount().success(), "{}", m.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_unmounts_and_exits_zero() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "f", b"data").await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), &mounts_json(&[("m", "bkt", "")]), &[]);
    assert_eq!(std::fs::read(m.dest.join("m/f")).unwrap(), b"data");
    // SAFETY: sending a signal to the child process we spawned.
    unsafe { libc::kill(m.child.id() as i32, libc::SIGTERM) };
    let status = m.wait();
    assert!(status.success(), "{status}\n{}", m.log());
    assert!(!is_mount_point(&m.dest));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_destinations_get_one_clear_line() {
    let s3 = S3Server::start(&["bkt"]).await;
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let full = root.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("something"), b"x").unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    for (dest, message) in [
        (root.path().join("missing"), "does not exist"),
        (file, "is not a directory"),
        (full, "is not empty (use --allow-non-empty"),
    ] {
        let out = run(s3
            .tool()
            .env("RUST_LOG", "warn")
            .args(["mount", "--default-s3-mounts", &mounts, "--destination"])
            .arg(&dest));
        let err = stderr(&out);
        assert!(!out.status.success(), "{}", dest.display());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&dest.display().to_string()) && err.contains(message),
            "{err}"
        );
    }
}

/// The byte ranges recorded as present in the partial download of `key` in the cache at `cache`
/// (`None` when it has none).
fn partial_present(cache: &Path, id: &str, key: &str) -> Option<Vec<(u64, u64)>> {
    let dir = cache.join(".s3-synchronizer/partial").join(id);
    // The record's newest slot.
    let mut newest: Option<serde_json::Value> = None;
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.extension() != Some("json".as_ref()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // A slot being written over as we read it is skipped.
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let generation = |r: &serde_json::Value| r["generation"].as_u64().unwrap_or(0);
        if record["key"] == key
            && newest
                .as_ref()
                .is_none_or(|n| generation(n) < generation(&record))
        {
            newest = Some(record);
        }
    }
    newest.map(|record| serde_json::from_value(record["present"].clone()).unwrap())
}

fn present_bytes(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(a, b)| b - a).sum()
}

/// The parts of `size` bytes in `part`-byte parts that `ranges` covers whole.
fn whole_parts(ranges: &[(u64, u64)], size: u64, part: u64) -> usize {
    (0..size.div_ceil(part))
        .filter(|p| {
            let (a, b) = (p * part, ((p + 1) * part).min(size));
            ranges.iter().any(|&(s, e)| s <= a && b <= e)
        })
        .count()
}

const BIG: u64 = 32 << 20;
const MIB: u64 = 1 << 20;

/// A server holding a 128 MiB backlog (sparse) ahead of `zz/big.bin` (32 MiB of data, returned),
/// behind a proxy sending each connection at 4 MiB/s, so downloads stay in progress for seconds.
async fn big_file_behind_a_slow_backlog() -> (S3Server, SlowProxy, Vec<u8>) {
    let big = bytes(BIG as usize, 5);
    let seed = big.clone();
    let s3 = S3Server::start_seeded(&["bkt"], |data| {
        let backlog = data.join("bkt/backlog");
        std::fs::create_dir_all(&backlog).unwrap();
        for i in 0..8 {
            let f = File::create(backlog.join(format!("b{i}"))).unwrap();
            f.set_len(16 << 20).unwrap();
        }
        std::fs::create_dir_all(data.join("bkt/zz")).unwrap();
        std::fs::write(data.join("bkt/zz/big.bin"), &seed).unwrap();
    })
    .await;
    let proxy = SlowProxy::start(&s3.endpoint, 4 * MIB).await;
    (s3, proxy, big)
}

const SLOW_ARGS: [&str; 4] = ["--concurrency", "2", "--part-size", "1MiB"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_at_the_end_of_a_large_file_fetches_only_what_it_reads() {
    let (_s3, proxy, big) = big_file_behind_a_slow_backlog().await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("all", "bkt", "")]);
    // Parts of 8 MiB: a reader fetches the megabyte it reads, not the part holding it.
    let args = ["--concurrency", "2", "--part-size", "8MiB"];
    let m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &args);

    let file = File::open(m.dest.join("all/zz/big.bin")).unwrap();
    let mut tail = vec![0u8; 100_000];
    file.read_exact_at(&mut tail, BIG - 100_000).unwrap();
    assert!(tail == big[(BIG - 100_000) as usize..], "wrong bytes");

    // The bytes read are in the cache's partial file, while most of the file is still missing;
    // of the last 8 MiB part, only the stretch read (rounded out to 1 MiB: the read's own
    // 128 KiB first, then the rest of the megabyte) was fetched.
    let cache = root.path().join("cache");
    let mut present = Vec::new();
    wait_for(10, "the megabyte read to be recorded", || {
        present = partial_present(&cache, "all", "zz/big.bin").unwrap_or_default();
        present.iter().any(|&(s, e)| e == BIG && s <= BIG - MIB)
    });
    let tail_start = present.iter().find(|&&(_, e)| e == BIG).unwrap().0;
    assert!(tail_start <= BIG - 100_000, "{present:?}");
    assert_eq!(tail_start, BIG - MIB, "{present:?}");
    assert!(present_bytes(&present) <= BIG / 4, "{present:?}");
    drop(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_after_kill_9_resumes_a_large_file_without_fetching_its_parts_again() {
    let (s3, proxy, big) = big_file_behind_a_slow_backlog().await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("all", "bkt", "")]);
    let cache = root.path().join("cache");
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &SLOW_ARGS);
    let file = File::open(m.dest.join("all/zz/big.bin")).unwrap();
    let mut buf = [0u8; 10];
    file.read_exact_at(&mut buf, BIG / 2).unwrap();
    wait_for(60, "a few parts of the file", || {
        partial_present(&cache, "all", "zz/big.bin").is_some_and(|p| whole_parts(&p, BIG, MIB) >= 4)
    });
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    drop(file);
    fusermount_u(&m.dest, true);
    let before = partial_present(&cache, "all", "zz/big.bin").unwrap();
    let kept = whole_parts(&before, BIG, MIB);
    assert!(
        kept < (BIG / MIB) as usize,
        "the file was complete: {before:?}"
    );
    let count = |log: &[String]| log.iter().filter(|k| *k == "bkt/zz/big.bin").count();
    let gets_before = count(&s3.get_log());

    proxy.set_rate(0);
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &SLOW_ARGS);
    let got = std::fs::read(m.dest.join("all/zz/big.bin")).unwrap();
    assert!(got == big, "wrong bytes after the restart");
    let fetched = count(&s3.get_log()) - gets_before;
    assert!(
        fetched <= (BIG / MIB) as usize - kept,
        "{fetched} GETs after the restart, though {kept} of {} parts were kept",
        BIG / MIB
    );
    assert!(m.unmount().success(), "{}", m.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_changed_mid_download_never_yields_mixed_bytes() {
    const SIZE: usize = 8 << 20;
    let moto = Moto::start(&["bkt"]).await;
    let (v1, v2) = (bytes(SIZE, 1), bytes(SIZE, 2));
    moto.put("bkt", "big.bin", &v1).await;
    // 1 MiB/s a connection: the 8 MiB download takes seconds.
    let proxy = SlowProxy::start(&moto.endpoint, MIB).await;
    let root = tempfile::tempdir().unwrap();
    let args = [
        "--concurrency",
        "2",
        "--part-size",
        "256KiB",
        "--download-interval",
        "1",
    ];
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &args);
    let path = m.dest.join("m/big.bin");
    let file = File::open(&path).unwrap();
    let mut buf = vec![0u8; 4096];
    file.read_exact_at(&mut buf, 4 << 20).unwrap();
    assert!(buf == v1[4 << 20..(4 << 20) + 4096]);

    moto.put("bkt", "big.bin", &v2).await;
    // Through the handle opened before the change: the old bytes, or EIO; never the new ones.
    let mut errors = 0;
    for offset in (0..SIZE).step_by(256 << 10) {
        match file.read_exact_at(&mut buf, offset as u64) {
            Ok(()) => assert!(buf == v1[offset..offset + 4096], "other bytes at {offset}"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                errors += 1;
            }
        }
    }
    assert!(
        errors > 0,
        "the whole file had downloaded before the change"
    );
    drop(file);

    proxy.set_rate(0);
    wait_for(60, "the new version", || {
        std::fs::read(&path).is_ok_and(|d| d == v2)
    });
    assert!(m.unmount().success(), "{}", m.log());
    assert!(std::fs::read(root.path().join("cache/m/big.bin")).unwrap() == v2);
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshes_stop_after_stop_recurring_downloads_after() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "first.txt", b"1").await;
    let root = tempfile::tempdir().unwrap();
    let args = [
        "--download-interval",
        "1",
        "--stop-recurring-downloads-after",
        "2",
    ];
    let mut m = Mounted::start(&s3, root.path(), &mounts_json(&[("m", "bkt", "")]), &args);
    wait_for(30, "refreshes to stop", || {
        m.log().contains("stopping refreshes as configured")
    });
    let lists = |log: String| log.matches("listed").count();
    let listed = lists(m.log());
    s3.put("bkt", "second.txt", b"2").await;
    // Three intervals: no new listing, no new file; what was there is still served.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!m.dest.join("m/second.txt").exists());
    assert_eq!(std::fs::read(m.dest.join("m/first.txt")).unwrap(), b"1");
    assert_eq!(lists(m.log()), listed, "{}", m.log());
    assert!(m.unmount().success(), "{}", m.log());
}

/// `cat path` run as user nobody.
fn cat_as_nobody(path: &Path) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setpriv (util-linux)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_users_read_a_mount_only_with_allow_other_and_nobody_writes() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: acting as another user needs root");
        return;
    }
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "a.txt", b"for the owner").await;
    let root = tempfile::tempdir().unwrap();
    // Every directory on the way is open to others: only the mount itself may refuse them.
    let open = |p: &Path| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap()
    };
    open(root.path());
    std::fs::create_dir(root.path().join("mnt")).unwrap();
    open(&root.path().join("mnt"));
    let mounts = mounts_json(&[("m", "bkt", "")]);
    for allow_other in [false, true] {
        let extra: &[&str] = if allow_other { &["--allow-other"] } else { &[] };
        let mut m = Mounted::start(&s3, root.path(), &mounts, extra);
        let file = m.dest.join("m/a.txt");
        assert_eq!(std::fs::read(&file).unwrap(), b"for the owner");
        let other = cat_as_nobody(&file);
        if allow_other {
            assert!(other.status.success(), "{other:?}");
            assert_eq!(other.stdout, b"for the owner");
        } else {
            assert!(!other.status.success(), "another user read the mount");
            let err = String::from_utf8_lossy(&other.stderr);
            assert!(err.contains("Permission denied"), "{err}");
        }
        // Read-only for everyone, the owner too.
        let write = std::fs::OpenOptions::new().write(true).open(&file);
        assert!(write.is_err(), "the owner opened a file for writing");
        let mode = std::fs::metadata(root.path().join("cache")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700, "the cache is open to others");
        assert!(m.unmount().success(), "{}", m.log());
    }
}

/// The name and nice value of every thread of process `pid`.
fn thread_priorities(pid: u32) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended
        };
        // "tid (comm) state ...": nice is the 19th field and the scheduling policy the 41st,
        // the 17th and the 39th after the closing parenthesis.
        let (head, rest) = stat.rsplit_once(") ").unwrap();
        let name = head.split_once(" (").unwrap().1.to_owned();
        let fields: Vec<&str> = rest.split(' ').collect();
        out.push((
            name,
            fields[16].parse().unwrap(),
            fields[38].parse().unwrap(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_background_download_runs_at_a_lower_cpu_priority_than_readers() {
    let s3 = S3Server::start(&["bkt"]).await;
    populate(&s3).await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), &mounts_json(&[("m", "bkt", "")]), &[]);
    assert_eq!(
        std::fs::read(m.dest.join("m/top.txt")).unwrap(),
        b"top level\n"
    );
    // SAFETY: getpriority has no preconditions.
    let ours = i64::from(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) });
    let threads = thread_priorities(m.child.id());
    let of = |prefix: &str| -> Vec<(i64, i64)> {
        threads
            .iter()
            .filter(|(name, _, _)| name.starts_with(prefix))
            .map(|&(_, nice, policy)| (nice, policy))
            .collect()
    };
    // The threads streaming the background download's bytes are in the idle class; the rest
    // of the background download (workers and blocking pool alike) is 10 below the readers'
    // runtime and the FUSE threads.
    let (stream, background) = (of("stream"), of("tokio-rt"));
    let (readers, fuse) = (of("reader"), of("fuser-"));
    assert!(
        [&stream, &background, &readers, &fuse]
            .iter()
            .all(|t| !t.is_empty()),
        "{threads:?}"
    );
    assert!(
        stream
            .iter()
            .all(|&(_, p)| p == i64::from(libc::SCHED_IDLE)),
        "{threads:?}"
    );
    let normal = i64::from(libc::SCHED_OTHER);
    assert!(
        background
            .iter()
            .all(|&t| t == ((ours + 10).min(19), normal)),
        "{threads:?}"
    );
    assert!(
        readers.iter().chain(&fuse).all(|&t| t == (ours, normal)),
        "{threads:?}"
    );
    assert!(m.unmount().success(), "{}", m.log());
}

/// SIGTERM with files open: the mount leaves the directory tree at once, the process keeps
/// serving the open files (also reads that must still be downloaded) and exits 0 when the last
/// one is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signal_with_files_open_detaches_and_serves_them_until_they_are_closed() {
    let (_s3, proxy, big) = big_file_behind_a_slow_backlog().await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("all", "bkt", "")]);
    let args = [&SLOW_ARGS[..], &["--no-passthrough"]].concat();
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), &mounts, &args);
    let file = File::open(m.dest.join("all/zz/big.bin")).unwrap();
    let mut head = [0u8; 10];
    file.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, big[..10]);

    // SAFETY: sending a signal to the child process we spawned.
    unsafe { libc::kill(m.child.id() as i32, libc::SIGTERM) };
    wait_for(10, "the mount to be detached", || !is_mount_point(&m.dest));
    wait_for(10, "the log to say it waits", || {
        m.log().contains("files under the mount are still open")
    });
    assert!(
        m.child.try_wait().unwrap().is_none(),
        "exited:\n{}",
        m.log()
    );
    // Bytes not downloaded yet still come, and are the right ones.
    let mut tail = vec![0u8; 100_000];
    file.read_exact_at(&mut tail, BIG - 100_000).unwrap();
    assert!(tail == big[(BIG - 100_000) as usize..], "wrong bytes");
    assert!(
        m.child.try_wait().unwrap().is_none(),
        "exited:\n{}",
        m.log()
    );
    assert!(m.log().contains("open=1"), "{}", m.log());

    drop(file);
    let status = m.wait();
    assert!(status.success(), "{status}\n{}", m.log());
    assert!(
        m.log().contains("the last open file was closed"),
        "{}",
        m.log()
    );
}

/// The wait for open files is bounded by --open-files-timeout, and a second signal ends it.
#[tokio::test(flavor = "multi_thread")]
async fn the_wait_for_open_files_ends_at_its_timeout_or_a_second_signal() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "f", b"data").await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let term = |m: &Mounted| {
        // SAFETY: sending a signal to the child process we spawned.
        unsafe { libc::kill(m.child.id() as i32, libc::SIGTERM) };
    };
    for second_signal in [false, true] {
        let timeout = if second_signal { "600" } else { "1" };
        let args = ["--open-files-timeout", timeout];
        let mut m = Mounted::start(&s3, root.path(), &mounts, &args);
        let file = File::open(m.dest.join("m/f")).unwrap();
        term(&m);
        wait_for(10, "the log to say it waits", || {
            m.log().contains("files under the mount are still open")
        });
        if second_signal {
            term(&m);
        }
        let status = m.wait();
        assert!(status.success(), "{status}\n{}", m.log());
        let expected = if second_signal {
            "stopping at once"
        } else {
            "stopping with files still open after --open-files-timeout (1 s)"
        };
        assert!(m.log().contains(expected), "{}", m.log());
        drop(file);
    }
}

/// A process whose working directory is under the mount holds it too, with no file open: the
/// wait says so, and ends when the directory is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_signal_waits_for_a_working_directory_under_the_mount_and_says_why() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "dir/f", b"data").await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), &mounts_json(&[("m", "bkt", "")]), &[]);
    let mut shell = std::process::Command::new("sleep")
        .arg("60")
        .current_dir(m.dest.join("m/dir"))
        .spawn()
        .unwrap();
    // SAFETY: sending a signal to the child process we spawned.
    unsafe { libc::kill(m.child.id() as i32, libc::SIGTERM) };
    wait_for(10, "the log to say what holds the mount", || {
        m.log().contains("still in use with no file open")
    });
    assert!(
        m.child.try_wait().unwrap().is_none(),
        "exited:\n{}",
        m.log()
    );
    shell.kill().unwrap();
    shell.wait().unwrap();
    let status = m.wait();
    assert!(status.success(), "{status}\n{}", m.log());
}
