//! `mount` of a writeable mount (`"writeable": true`), through real FUSE mounts against real
//! S3-compatible servers on loopback (`rclone serve s3`; moto for the conflict, as it honours
//! conditional writes). What a user does under MNT/study/ lands in the bucket under `study/` byte
//! for byte: new files and directories, overwrites, same-size edits, writes in the middle of
//! objects not downloaded yet, appends, truncations, unlinks, renames (also of directories, and
//! an editor's save over a file), chmod/utimes/`cp -p`, `git`. A closed file is uploaded once it
//! has been quiet for --upload-delay, at once on fsync, and at the latest before an unmount lets
//! the process exit; a restart on the same cache changes nothing in the bucket; a file changed on
//! both sides keeps both versions. A read-only mount beside it refuses every change with EROFS,
//! and a rename between the two fails with EXDEV.
//!
//! The waits for the bucket are bounded (SETTLE seconds) and assert no timing. Needs /dev/fuse
//! and Debian's `fuse3`, as tests/mount_fuse.rs does.

mod common;

use aws_sdk_s3::Client;
use common::faults::{self, Fault, FaultProxy, Op, Rule};
use common::mount::*;
use common::*;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A writeable mount and a read-only one in the same bucket, side by side in one file system.
const MOUNTS: &str = r#"[{"id":"study","bucket":"bkt","prefix":"study/","writeable":true},{"id":"ref","bucket":"bkt","prefix":"ref/","writeable":false}]"#;

/// 64 KiB parts (the large objects are downloaded in ranges), an upload 1 s after a file is
/// closed and left alone, a listing every second.
const ARGS: [&str; 6] = [
    "--part-size",
    "64KiB",
    "--upload-delay",
    "1",
    "--download-interval",
    "1",
];

/// As [`ARGS`], with an upload only 30 s after the last close: what reaches the bucket sooner
/// got there by fsync or unmount.
const LATE_UPLOAD_ARGS: [&str; 6] = [
    "--part-size",
    "64KiB",
    "--upload-delay",
    "30",
    "--download-interval",
    "1",
];

/// As [`ARGS`], with no listing after the first one during the test. `rclone serve s3` (over a
/// directory) lists an empty directory as a 0-byte object named without its trailing slash, which
/// no real S3 does; tests that leave empty directories keep that quirk of the server out.
const NO_RELIST_ARGS: [&str; 6] = [
    "--part-size",
    "64KiB",
    "--upload-delay",
    "1",
    "--download-interval",
    "3600",
];

/// How long a change may take to reach the bucket, or the bucket's version to show in the mount.
const SETTLE: u64 = 30;

/// Sizes of the large seeded objects: more than a part, not a whole number of parts.
const BIG: usize = (1 << 20) + 4321;
const TABLE: usize = (1 << 20) + 77;

/// The objects every test starts with (bucket key, bytes).
fn seed() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("study/notes.txt", b"first notes\n".to_vec()),
        ("study/report.csv", b"a,b\n1,2\n".to_vec()),
        ("study/log.txt", b"line 1\n".to_vec()),
        ("study/big.bin", bytes(BIG, 1)),
        ("study/results/table.bin", bytes(TABLE, 2)),
        ("study/results/summary.txt", b"summary\n".to_vec()),
        ("ref/readme.txt", b"reference data\n".to_vec()),
        ("ref/big.bin", bytes(BIG, 3)),
    ]
}

/// A server holding the seeded objects.
async fn server() -> S3Server {
    let s3 = S3Server::start(&["bkt"]).await;
    for (key, data) in seed() {
        s3.put("bkt", key, &data).await;
    }
    s3
}

/// The seeded files of mount `id`, as it shows them (path under MNT/<id>/ -> bytes).
fn seeded(id: &str) -> BTreeMap<String, Vec<u8>> {
    let prefix = format!("{id}/");
    seed()
        .into_iter()
        .filter_map(|(key, data)| Some((key.strip_prefix(&prefix)?.to_owned(), data)))
        .collect()
}

/// Runs `fut` to completion from the synchronous code of a (multi-thread) test.
fn block<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(fut))
}

/// The bytes of object `bkt/key` now, `None` when there is none.
fn object(client: &Client, key: &str) -> Option<Vec<u8>> {
    block(object_bytes(client, "bkt", key))
}

/// The keys under `bkt/prefix` now.
fn keys(client: &Client, prefix: &str) -> Vec<String> {
    block(object_keys(client, "bkt", prefix))
}

/// The objects under `bkt/prefix` now, as files: key without the prefix -> bytes (folder
/// markers left out).
fn bucket_files(client: &Client, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for key in keys(client, prefix) {
        if key.ends_with('/') {
            continue;
        }
        if let Some(data) = object(client, &key) {
            out.insert(key[prefix.len()..].to_owned(), data);
        }
    }
    out
}

/// `data` for a message: short text as text, else its length.
fn describe(data: Option<&[u8]>) -> String {
    match data {
        None => "absent".into(),
        Some(d) if d.len() <= 80 => format!("{:?}", String::from_utf8_lossy(d)),
        Some(d) => format!("{} bytes", d.len()),
    }
}

/// How `got` differs from `want` (empty: not at all).
fn difference(got: Option<&[u8]>, want: Option<&[u8]>) -> String {
    if got == want {
        return String::new();
    }
    let mut out = format!("{}, expected {}", describe(got), describe(want));
    if let (Some(g), Some(w)) = (got, want)
        && let Some(at) = g.iter().zip(w).position(|(a, b)| a != b)
    {
        out += &format!(" (first different byte at {at})");
    }
    out
}

/// The files that differ between `got` and `want`, one line each (empty: the same).
fn differences(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>) -> String {
    let mut paths: Vec<&String> = got.keys().chain(want.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|p| {
            let diff = difference(
                got.get(p).map(Vec::as_slice),
                want.get(p).map(Vec::as_slice),
            );
            (!diff.is_empty()).then(|| format!("  {p}: {diff}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that `got` (what `what` holds) has the files of `want`, naming those that differ.
#[track_caller]
fn assert_files(what: &str, got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>) {
    let diff = differences(got, want);
    assert!(diff.is_empty(), "{what} is not as expected:\n{diff}");
}

/// Waits (bounded) until object `bkt/key` holds `want` (`None`: until there is no such object).
#[track_caller]
fn wait_object(m: &Mounted, client: &Client, key: &str, want: Option<&[u8]>) {
    let deadline = Instant::now() + Duration::from_secs(SETTLE);
    loop {
        let now = object(client, key);
        if now.as_deref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {SETTLE} s, {key} in the bucket is {}; the end of the tool's log:\n{}",
            difference(now.as_deref(), want),
            m.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until the files under `bkt/prefix` are `want`.
#[track_caller]
fn wait_bucket(m: &Mounted, client: &Client, prefix: &str, want: &BTreeMap<String, Vec<u8>>) {
    let deadline = Instant::now() + Duration::from_secs(SETTLE);
    loop {
        let diff = differences(&bucket_files(client, prefix), want);
        if diff.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {SETTLE} s, the bucket under {prefix} differs:\n{diff}\nthe end of the tool's \
             log:\n{}",
            m.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded) until the tool has applied `n` more listings of the bucket: `n + 1` more
/// passes of each of the two mounts have completed (the first may have listed before the call;
/// a pass lists only once the one before has been applied).
#[track_caller]
fn wait_listings(m: &Mounted, n: usize) {
    let before = m.passes();
    m.wait_until(SETTLE, &format!("{n} more listings"), || {
        m.passes() >= before + 2 * (n + 1)
    });
}

/// `result`'s value; a failure panics naming what was done (without writes: EROFS).
#[track_caller]
fn must<T>(what: &str, result: std::io::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Asserts that `result` failed with `errno`.
#[track_caller]
fn assert_errno<T: std::fmt::Debug>(what: &str, result: std::io::Result<T>, errno: i32) {
    let want = std::io::Error::from_raw_os_error(errno);
    match result {
        Ok(v) => panic!("{what} succeeded ({v:?}); expected {want}"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "{what}: {e}; expected {want}"
        ),
    }
}

#[track_caller]
fn append(path: &Path, data: &[u8]) {
    let what = format!("append to {}", path.display());
    let mut file = must(&what, OpenOptions::new().append(true).open(path));
    must(&what, file.write_all(data));
}

/// Opens an existing file for writing, neither truncating nor appending.
#[track_caller]
fn open_rw(path: &Path) -> File {
    let what = format!("open {} for writing", path.display());
    must(&what, OpenOptions::new().read(true).write(true).open(path))
}

/// `touch -d @secs path`: both times through utimensat(2).
fn set_times(path: &Path, secs: i64) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: a NUL-terminated path and an array of two timespecs, as utimensat takes.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The errno of getxattr(2) of `name` on `path` (`None`: it has that attribute).
fn xattr_errno(path: &Path, name: &str) -> Option<i32> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated path and name; a size of 0 asks for the length and writes nothing.
    let rc = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    (rc < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o777
}

/// The UTC time now as `yyyymmddTHHMMSSZ`, the stamp of conflict names.
fn utc_stamp_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Unmounts and asserts the process exited 0.
#[track_caller]
fn unmount_ok(m: &mut Mounted) {
    let status = m.unmount();
    assert!(status.success(), "{status}\n{}", m.log_tail(40));
}

#[tokio::test(flavor = "multi_thread")]
async fn new_files_and_files_in_new_nested_directories_land_in_the_bucket_byte_for_byte() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");
    let small = b"written through the mount\n";
    // More than S3's 5 MiB minimum part: uploaded in parts.
    let large = bytes(6 << 20, 4);
    must(
        "write study/new.txt",
        std::fs::write(study.join("new.txt"), small),
    );
    must(
        "mkdir -p study/a/b/c",
        std::fs::create_dir_all(study.join("a/b/c")),
    );
    must(
        "write study/a/b/c/deep.bin",
        std::fs::write(study.join("a/b/c/deep.bin"), &large),
    );
    // Many small writes through one handle, as a program writes its output line by line.
    let mut lines = Vec::new();
    let mut out = must(
        "create study/a/lines.txt",
        File::create(study.join("a/lines.txt")),
    );
    for i in 0..2000 {
        let line = format!("{i},{}\n", i * i);
        must("write a line", out.write_all(line.as_bytes()));
        lines.extend_from_slice(line.as_bytes());
    }
    drop(out);

    // Shown through the mount at once.
    assert_eq!(std::fs::read(study.join("new.txt")).unwrap(), small);
    assert!(std::fs::read(study.join("a/b/c/deep.bin")).unwrap() == large);
    assert!(std::fs::read(study.join("a/lines.txt")).unwrap() == lines);

    wait_object(&m, &s3.client, "study/new.txt", Some(small));
    wait_object(&m, &s3.client, "study/a/b/c/deep.bin", Some(&large));
    wait_object(&m, &s3.client, "study/a/lines.txt", Some(&lines));
    let mut want = seeded("study");
    want.insert("new.txt".into(), small.to_vec());
    want.insert("a/b/c/deep.bin".into(), large);
    want.insert("a/lines.txt".into(), lines);
    wait_bucket(&m, &s3.client, "study/", &want);
    assert_files(
        "the bucket under ref/",
        &bucket_files(&s3.client, "ref/"),
        &seeded("ref"),
    );
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overwrite_and_same_size_edits_replace_the_object() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");

    // O_TRUNC over objects not read yet: one longer, one (large) much shorter.
    let notes = b"replaced notes, longer than before\n";
    must(
        "overwrite study/notes.txt",
        std::fs::write(study.join("notes.txt"), notes),
    );
    must(
        "overwrite study/big.bin",
        std::fs::write(study.join("big.bin"), b"small now"),
    );
    wait_object(&m, &s3.client, "study/notes.txt", Some(notes));
    wait_object(&m, &s3.client, "study/big.bin", Some(b"small now"));

    // Same size, other bytes: of a file read before, and of the file just uploaded.
    assert_eq!(
        std::fs::read(study.join("report.csv")).unwrap(),
        b"a,b\n1,2\n"
    );
    must(
        "edit study/report.csv",
        std::fs::write(study.join("report.csv"), b"a,b\n3,4\n"),
    );
    let notes2 = b"REPLACED NOTES, LONGER THAN BEFORE\n";
    assert_eq!(notes.len(), notes2.len());
    must(
        "edit study/notes.txt again",
        std::fs::write(study.join("notes.txt"), notes2),
    );
    wait_object(&m, &s3.client, "study/report.csv", Some(b"a,b\n3,4\n"));
    wait_object(&m, &s3.client, "study/notes.txt", Some(notes2));
    assert_eq!(std::fs::read(study.join("notes.txt")).unwrap(), notes2);
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_in_the_middle_of_an_unread_large_object_keeps_every_other_byte() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let path = m.dest.join("study/big.bin");

    let mut want = bytes(BIG, 1);
    // Across the boundary between the 11th and 12th 64 KiB parts, and the last 10 bytes.
    let (at, patch) = (11 * 65_536 - 2000, bytes(5000, 5));
    let (tail_at, tail) = (BIG - 10, [0xAB_u8; 10]);
    let file = open_rw(&path);
    must("write in the middle", file.write_all_at(&patch, at as u64));
    must(
        "write the last bytes",
        file.write_all_at(&tail, tail_at as u64),
    );
    drop(file);
    want[at..at + patch.len()].copy_from_slice(&patch);
    want[tail_at..].copy_from_slice(&tail);

    wait_object(&m, &s3.client, "study/big.bin", Some(&want));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), BIG as u64);
    assert!(std::fs::read(&path).unwrap() == want, "other bytes shown");
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_and_truncations_shorter_and_longer_land_in_the_bucket() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");
    let log = study.join("log.txt");

    append(&log, b"line 2\n");
    append(&log, b"line 3\n");
    assert_eq!(std::fs::read(&log).unwrap(), b"line 1\nline 2\nline 3\n");
    wait_object(
        &m,
        &s3.client,
        "study/log.txt",
        Some(b"line 1\nline 2\nline 3\n"),
    );
    // Once more, onto the version this mount uploaded.
    append(&log, b"line 4\n");
    wait_object(
        &m,
        &s3.client,
        "study/log.txt",
        Some(b"line 1\nline 2\nline 3\nline 4\n"),
    );

    must("truncate shorter", open_rw(&log).set_len(4));
    assert_eq!(std::fs::read(&log).unwrap(), b"line");
    wait_object(&m, &s3.client, "study/log.txt", Some(b"line"));
    must("truncate longer", open_rw(&log).set_len(10));
    assert_eq!(std::fs::read(&log).unwrap(), b"line\0\0\0\0\0\0");
    wait_object(&m, &s3.client, "study/log.txt", Some(b"line\0\0\0\0\0\0"));

    // Large objects not read yet: cut to their first 100 000 bytes, and grown by zeros.
    must(
        "truncate study/big.bin",
        open_rw(&study.join("big.bin")).set_len(100_000),
    );
    let grown = TABLE as u64 + 50_000;
    must(
        "grow study/results/table.bin",
        open_rw(&study.join("results/table.bin")).set_len(grown),
    );
    let mut table = bytes(TABLE, 2);
    table.resize(grown as usize, 0);
    assert_eq!(
        std::fs::metadata(study.join("big.bin")).unwrap().len(),
        100_000
    );
    assert_eq!(
        std::fs::metadata(study.join("results/table.bin"))
            .unwrap()
            .len(),
        grown
    );
    wait_object(
        &m,
        &s3.client,
        "study/big.bin",
        Some(&bytes(BIG, 1)[..100_000]),
    );
    wait_object(&m, &s3.client, "study/results/table.bin", Some(&table));
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_handle_reads_what_the_first_wrote_before_it_is_closed() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");

    // A new file, read while it is being written.
    let live = study.join("live.txt");
    let mut writer = must("create study/live.txt", File::create(&live));
    must("write", writer.write_all(b"first half;"));
    let mut reader = must("open study/live.txt to read", File::open(&live));
    let mut seen = String::new();
    reader.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "first half;");
    must("write", writer.write_all(b" second half"));
    let mut whole = [0u8; 23];
    reader.read_exact_at(&mut whole, 0).unwrap();
    assert_eq!(&whole, b"first half; second half");

    // An object not read yet, changed in place: a new reader sees the change and the rest.
    let report = study.join("report.csv");
    let editor = open_rw(&report);
    must("write in place", editor.write_all_at(b"X", 0));
    let mut other = String::new();
    File::open(&report)
        .unwrap()
        .read_to_string(&mut other)
        .unwrap();
    assert_eq!(other, "X,b\n1,2\n");

    drop((writer, reader, editor));
    wait_object(
        &m,
        &s3.client,
        "study/live.txt",
        Some(b"first half; second half"),
    );
    wait_object(&m, &s3.client, "study/report.csv", Some(b"X,b\n1,2\n"));
    unmount_ok(&mut m);
}

/// An empty directory is an object whose key ends in `/` (a folder marker).
#[tokio::test(flavor = "multi_thread")]
async fn mkdir_makes_a_folder_marker_and_rmdir_removes_it() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &NO_RELIST_ARGS);
    let study = m.dest.join("study");

    must(
        "mkdir study/empty",
        std::fs::create_dir(study.join("empty")),
    );
    must(
        "mkdir -p study/x/y",
        std::fs::create_dir_all(study.join("x/y")),
    );
    assert!(study.join("empty").is_dir());
    wait_object(&m, &s3.client, "study/empty/", Some(b""));
    wait_object(&m, &s3.client, "study/x/y/", Some(b""));

    must(
        "rmdir study/empty",
        std::fs::remove_dir(study.join("empty")),
    );
    must("rmdir study/x/y", std::fs::remove_dir(study.join("x/y")));
    must("rmdir study/x", std::fs::remove_dir(study.join("x")));
    assert!(!study.join("empty").exists());
    wait_object(&m, &s3.client, "study/empty/", None);
    wait_object(&m, &s3.client, "study/x/y/", None);
    wait_object(&m, &s3.client, "study/x/", None);
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn unlinking_a_file_deletes_its_object_and_it_does_not_come_back() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");

    // Not read yet; read; and written by this mount, once uploaded.
    assert_eq!(
        std::fs::read(study.join("results/summary.txt")).unwrap(),
        b"summary\n"
    );
    must(
        "write study/scratch.txt",
        std::fs::write(study.join("scratch.txt"), b"scratch"),
    );
    wait_object(&m, &s3.client, "study/scratch.txt", Some(b"scratch"));
    for rel in [
        "report.csv",
        "big.bin",
        "results/summary.txt",
        "scratch.txt",
    ] {
        must(
            &format!("rm study/{rel}"),
            std::fs::remove_file(study.join(rel)),
        );
        assert!(!study.join(rel).exists(), "study/{rel} still shown");
    }
    for rel in [
        "report.csv",
        "big.bin",
        "results/summary.txt",
        "scratch.txt",
    ] {
        wait_object(&m, &s3.client, &format!("study/{rel}"), None);
    }
    // The next listings do not bring them back.
    wait_listings(&m, 2);
    for rel in [
        "report.csv",
        "big.bin",
        "results/summary.txt",
        "scratch.txt",
    ] {
        assert!(!study.join(rel).exists(), "study/{rel} came back");
    }
    assert!(std::fs::read(study.join("results/table.bin")).unwrap() == bytes(TABLE, 2));
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn renames_of_files_and_directories_move_their_objects_and_an_editor_save_replaces_the_file()
{
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");

    // A file, not read yet.
    must(
        "mv study/log.txt study/log-renamed.txt",
        std::fs::rename(study.join("log.txt"), study.join("log-renamed.txt")),
    );
    // A directory holding a large object not read yet.
    must(
        "mv study/results study/archive",
        std::fs::rename(study.join("results"), study.join("archive")),
    );
    // An editor's save: the new version written beside, then renamed over the file.
    let new_notes = b"notes, as saved by an editor\n";
    must(
        "write study/notes.txt.tmp",
        std::fs::write(study.join("notes.txt.tmp"), new_notes),
    );
    must(
        "mv study/notes.txt.tmp study/notes.txt",
        std::fs::rename(study.join("notes.txt.tmp"), study.join("notes.txt")),
    );

    let mut want = seeded("study");
    let log = want.remove("log.txt").unwrap();
    want.insert("log-renamed.txt".into(), log);
    for name in ["table.bin", "summary.txt"] {
        let data = want.remove(&format!("results/{name}")).unwrap();
        want.insert(format!("archive/{name}"), data);
    }
    want.insert("notes.txt".into(), new_notes.to_vec());
    assert_files("MNT/study", &tree(&study), &want);
    wait_bucket(&m, &s3.client, "study/", &want);
    // The server's listings lag its deletes a little.
    m.wait_until(SETTLE, "no key left under study/results/", || {
        keys(&s3.client, "study/results/").is_empty()
    });
    assert_eq!(object(&s3.client, "study/notes.txt.tmp"), None);

    // The next listings show the same.
    wait_listings(&m, 2);
    assert_files("MNT/study after two listings", &tree(&study), &want);
    assert!(!study.join("results").exists());
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn chmod_utimes_and_cp_p_are_accepted_and_shown_by_stat() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");
    let script = study.join("script.sh");
    must(
        "write study/script.sh",
        std::fs::write(&script, b"echo hi\n"),
    );

    // A file written here, and an object not read yet.
    for path in [&script, &study.join("notes.txt")] {
        let what = format!("chmod 600 {}", path.display());
        must(
            &what,
            std::fs::set_permissions(path, PermissionsExt::from_mode(0o600)),
        );
        assert_eq!(mode(path), 0o600, "{what}");
    }
    // 2001-09-09T01:46:40Z.
    for path in [&script, &study.join("report.csv")] {
        let what = format!("touch -d @1000000000 {}", path.display());
        must(&what, set_times(path, 1_000_000_000));
        assert_eq!(
            std::fs::metadata(path).unwrap().mtime(),
            1_000_000_000,
            "{what}"
        );
    }

    // cp -p: bytes, mode and times kept.
    let source = root.path().join("source.bin");
    let data = bytes(300_000, 6);
    std::fs::write(&source, &data).unwrap();
    std::fs::set_permissions(&source, PermissionsExt::from_mode(0o640)).unwrap();
    set_times(&source, 1_200_000_000).unwrap();
    let copied = study.join("copied.bin");
    let out = run(Command::new("cp").arg("-p").arg(&source).arg(&copied));
    assert!(out.status.success(), "cp -p: {}", stderr(&out));
    assert!(std::fs::read(&copied).unwrap() == data);
    assert_eq!(mode(&copied), 0o640);
    assert_eq!(std::fs::metadata(&copied).unwrap().mtime(), 1_200_000_000);
    // No extended attributes are kept: "not supported", which `cp -a` passes over quietly.
    let archived = study.join("archived.bin");
    let out = run(Command::new("cp").arg("-a").arg(&source).arg(&archived));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "cp -a: {}",
        stderr(&out)
    );
    assert!(std::fs::read(&archived).unwrap() == data);
    assert_eq!(xattr_errno(&archived, "user.note"), Some(libc::EOPNOTSUPP));

    wait_object(&m, &s3.client, "study/copied.bin", Some(&data));
    wait_object(&m, &s3.client, "study/archived.bin", Some(&data));
    wait_object(&m, &s3.client, "study/script.sh", Some(b"echo hi\n"));
    // Metadata changes leave the objects' bytes alone.
    wait_object(&m, &s3.client, "study/notes.txt", Some(b"first notes\n"));
    wait_object(&m, &s3.client, "study/report.csv", Some(b"a,b\n1,2\n"));
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_fsync_returns_the_object_is_already_in_the_bucket() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &LATE_UPLOAD_ARGS);
    let study = m.dest.join("study");

    // A new file, synced while still open.
    let data = b"saved by fsync\n";
    let mut file = must(
        "create study/synced.txt",
        File::create(study.join("synced.txt")),
    );
    must("write", file.write_all(data));
    must("fsync study/synced.txt", file.sync_all());
    assert_eq!(
        difference(
            object(&s3.client, "study/synced.txt").as_deref(),
            Some(data)
        ),
        "",
        "study/synced.txt in the bucket right after fsync returned"
    );
    drop(file);

    // A write in the middle of a large object not read yet.
    let mut want = bytes(BIG, 1);
    let patch = bytes(3000, 7);
    let file = open_rw(&study.join("big.bin"));
    must("write", file.write_all_at(&patch, 500_000));
    must("fsync study/big.bin", file.sync_all());
    want[500_000..503_000].copy_from_slice(&patch);
    assert_eq!(
        difference(object(&s3.client, "study/big.bin").as_deref(), Some(&want)),
        "",
        "study/big.bin in the bucket right after fsync returned"
    );
    drop(file);

    // fdatasync too.
    let file = open_rw(&study.join("report.csv"));
    must("write", file.write_all_at(b"9", 4));
    must("fdatasync study/report.csv", file.sync_data());
    assert_eq!(
        difference(
            object(&s3.client, "study/report.csv").as_deref(),
            Some(b"a,b\n9,2\n")
        ),
        "",
        "study/report.csv in the bucket right after fdatasync returned"
    );
    drop(file);
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_session_of_writes_the_mount_and_the_bucket_hold_the_same_files() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");
    let mut want = seeded("study");

    must(
        "write study/new.txt",
        std::fs::write(study.join("new.txt"), b"new"),
    );
    want.insert("new.txt".into(), b"new".to_vec());
    must(
        "mkdir -p study/a/b",
        std::fs::create_dir_all(study.join("a/b")),
    );
    let deep = bytes(200_000, 8);
    must(
        "write study/a/b/deep.bin",
        std::fs::write(study.join("a/b/deep.bin"), &deep),
    );
    want.insert("a/b/deep.bin".into(), deep);
    must(
        "overwrite study/notes.txt",
        std::fs::write(study.join("notes.txt"), b"second notes\n"),
    );
    want.insert("notes.txt".into(), b"second notes\n".to_vec());
    let patch = bytes(70_000, 9);
    must(
        "write in study/big.bin",
        open_rw(&study.join("big.bin")).write_all_at(&patch, 300_000),
    );
    want.get_mut("big.bin").unwrap()[300_000..370_000].copy_from_slice(&patch);
    append(&study.join("log.txt"), b"line 2\n");
    want.insert("log.txt".into(), b"line 1\nline 2\n".to_vec());
    must(
        "truncate study/results/table.bin",
        open_rw(&study.join("results/table.bin")).set_len(70_000),
    );
    must(
        "mv study/results/table.bin study/a/table.bin",
        std::fs::rename(study.join("results/table.bin"), study.join("a/table.bin")),
    );
    want.remove("results/table.bin");
    want.insert("a/table.bin".into(), bytes(TABLE, 2)[..70_000].to_vec());
    for rel in ["results/summary.txt", "report.csv"] {
        must(
            &format!("rm study/{rel}"),
            std::fs::remove_file(study.join(rel)),
        );
        want.remove(rel);
    }
    must(
        "rmdir study/results",
        std::fs::remove_dir(study.join("results")),
    );

    assert_files("MNT/study", &tree(&study), &want);
    wait_bucket(&m, &s3.client, "study/", &want);
    // After the next listings the mount still shows what the bucket holds, and `diff -r` of the
    // mount against the server's own files finds nothing.
    wait_listings(&m, 2);
    assert_files("MNT/study after two listings", &tree(&study), &want);
    assert_files(
        "the bucket under study/",
        &bucket_files(&s3.client, "study/"),
        &want,
    );
    assert_same_tree(&study, &s3.bucket_dir("bkt").join("study"));
    assert_same_tree(&m.dest.join("ref"), &s3.bucket_dir("bkt").join("ref"));
    unmount_ok(&mut m);
}

/// A mount that is not writeable stays read-only beside one that is (and before writes existed
/// in mount mode, hence no --upload-delay: nothing is written here).
#[tokio::test(flavor = "multi_thread")]
async fn the_read_only_mount_beside_refuses_every_change_with_erofs() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let args = ["--part-size", "64KiB", "--download-interval", "1"];
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &args);
    let reference = m.dest.join("ref");
    let readme = reference.join("readme.txt");
    assert_files("MNT/ref", &tree(&reference), &seeded("ref"));
    assert_eq!(mode(&readme), 0o444);

    let erofs = libc::EROFS;
    assert_errno(
        "create ref/new.txt",
        std::fs::write(reference.join("new.txt"), b"x"),
        erofs,
    );
    assert_errno(
        "overwrite ref/readme.txt",
        std::fs::write(&readme, b"x"),
        erofs,
    );
    assert_errno(
        "open ref/readme.txt for writing",
        OpenOptions::new().write(true).open(&readme),
        erofs,
    );
    assert_errno(
        "open ref/big.bin to append",
        OpenOptions::new()
            .append(true)
            .open(reference.join("big.bin")),
        erofs,
    );
    assert_errno("rm ref/readme.txt", std::fs::remove_file(&readme), erofs);
    assert_errno(
        "mkdir ref/dir",
        std::fs::create_dir(reference.join("dir")),
        erofs,
    );
    assert_errno(
        "mv ref/readme.txt ref/moved.txt",
        std::fs::rename(&readme, reference.join("moved.txt")),
        erofs,
    );

    assert_files("MNT/ref", &tree(&reference), &seeded("ref"));
    assert_files(
        "the bucket under ref/",
        &bucket_files(&s3.client, "ref/"),
        &seeded("ref"),
    );
    unmount_ok(&mut m);
}

/// No --upload-delay, as in the test before: nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_rename_between_the_writeable_and_the_read_only_mount_fails_with_exdev() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let args = ["--part-size", "64KiB", "--download-interval", "1"];
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &args);
    let (study, reference) = (m.dest.join("study"), m.dest.join("ref"));

    // EXDEV, as between two file systems: `mv` then copies and deletes instead.
    assert_errno(
        "mv study/notes.txt ref/notes.txt",
        std::fs::rename(study.join("notes.txt"), reference.join("notes.txt")),
        libc::EXDEV,
    );
    assert_errno(
        "mv ref/readme.txt study/readme.txt",
        std::fs::rename(reference.join("readme.txt"), study.join("readme.txt")),
        libc::EXDEV,
    );
    assert_files("MNT/study", &tree(&study), &seeded("study"));
    assert_files("MNT/ref", &tree(&reference), &seeded("ref"));
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmount_uploads_what_was_written_before_the_process_exits() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &LATE_UPLOAD_ARGS);
    let study = m.dest.join("study");
    let fresh = bytes(150_000, 10);
    must(
        "write study/unsaved.bin",
        std::fs::write(study.join("unsaved.bin"), &fresh),
    );
    must(
        "overwrite study/notes.txt",
        std::fs::write(study.join("notes.txt"), b"notes before the unmount\n"),
    );

    // At once: long before the 30 s of --upload-delay.
    unmount_ok(&mut m);
    assert_eq!(
        difference(
            object(&s3.client, "study/unsaved.bin").as_deref(),
            Some(&fresh)
        ),
        "",
        "study/unsaved.bin when the mount had exited; its log:\n{}",
        m.log_tail(40)
    );
    assert_eq!(
        object(&s3.client, "study/notes.txt").as_deref(),
        Some(&b"notes before the unmount\n"[..])
    );

    // Another mount, on a cache of its own, serves them from the bucket.
    let other = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, other.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");
    assert!(std::fs::read(study.join("unsaved.bin")).unwrap() == fresh);
    assert_eq!(
        std::fs::read(study.join("notes.txt")).unwrap(),
        b"notes before the unmount\n"
    );
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn written_files_survive_a_restart_on_the_same_cache_and_it_changes_nothing_in_the_bucket() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");
    let mut want = seeded("study");
    must(
        "write study/new.txt",
        std::fs::write(study.join("new.txt"), b"kept"),
    );
    want.insert("new.txt".into(), b"kept".to_vec());
    must("mkdir -p study/a", std::fs::create_dir_all(study.join("a")));
    let nested = bytes(90_000, 11);
    must(
        "write study/a/nested.bin",
        std::fs::write(study.join("a/nested.bin"), &nested),
    );
    want.insert("a/nested.bin".into(), nested);
    let patch = bytes(1000, 12);
    must(
        "write in study/big.bin",
        open_rw(&study.join("big.bin")).write_all_at(&patch, 800_000),
    );
    want.get_mut("big.bin").unwrap()[800_000..801_000].copy_from_slice(&patch);
    must(
        "overwrite study/notes.txt",
        std::fs::write(study.join("notes.txt"), b"edited\n"),
    );
    want.insert("notes.txt".into(), b"edited\n".to_vec());
    wait_bucket(&m, &s3.client, "study/", &want);
    let keys_before = keys(&s3.client, "study/");
    unmount_ok(&mut m);

    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");
    assert_files("MNT/study after the restart", &tree(&study), &want);
    wait_listings(&m, 2);
    assert_files("MNT/study after two listings", &tree(&study), &want);
    assert_files(
        "the bucket under study/ after the restart",
        &bucket_files(&s3.client, "study/"),
        &want,
    );
    assert_eq!(keys(&s3.client, "study/"), keys_before);
    unmount_ok(&mut m);
}

/// Runs `git args` in `dir` with no configuration but the test's, bounded; asserts it succeeded.
#[track_caller]
fn git(dir: &Path, home: &Path, args: &[&str]) -> Output {
    let out = run(Command::new("git")
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args([
            "-c",
            "user.name=Mount Test",
            "-c",
            "user.email=mount-test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args));
    assert!(
        out.status.success(),
        "git {} in {}: {}\n{}",
        args.join(" "),
        dir.display(),
        out.status,
        stderr(&out)
    );
    out
}

/// git makes empty directories (`.git/refs/tags`, …): no listing after the first one, see
/// [`NO_RELIST_ARGS`].
#[tokio::test(flavor = "multi_thread")]
async fn git_init_add_and_commit_work_inside_the_mount() {
    if Command::new("git").arg("--version").output().is_err() {
        eprintln!("skipped: git is not installed");
        return;
    }
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &NO_RELIST_ARGS);
    let repo = m.dest.join("study/repo");
    must("mkdir study/repo", std::fs::create_dir(&repo));
    let h = home.path();
    git(&repo, h, &["init", "-q"]);
    must(
        "write study/repo/analysis.py",
        std::fs::write(repo.join("analysis.py"), b"print('hello')\n"),
    );
    must(
        "mkdir study/repo/data",
        std::fs::create_dir(repo.join("data")),
    );
    must(
        "write study/repo/data/x.csv",
        std::fs::write(repo.join("data/x.csv"), b"x\n1\n"),
    );
    git(&repo, h, &["add", "-A"]);
    git(&repo, h, &["commit", "-q", "-m", "first"]);
    let status = git(&repo, h, &["status", "--porcelain"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout), "", "git status");
    let commit = git(&repo, h, &["rev-parse", "HEAD"]).stdout;

    wait_object(
        &m,
        &s3.client,
        "study/repo/.git/HEAD",
        Some(b"ref: refs/heads/main\n"),
    );
    wait_object(
        &m,
        &s3.client,
        "study/repo/.git/refs/heads/main",
        Some(&commit),
    );
    wait_object(
        &m,
        &s3.client,
        "study/repo/analysis.py",
        Some(b"print('hello')\n"),
    );
    wait_object(&m, &s3.client, "study/repo/data/x.csv", Some(b"x\n1\n"));
    // Still clean once the uploads are done, and the history is there.
    let status = git(&repo, h, &["status", "--porcelain"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout), "", "git status");
    let log = git(&repo, h, &["log", "--format=%s"]);
    assert_eq!(String::from_utf8_lossy(&log.stdout), "first\n");
    unmount_ok(&mut m);
}

/// Against moto, which honours If-Match: the object changes in the bucket after the local edit,
/// before its upload.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_changed_on_both_sides_keeps_the_remote_version_and_a_conflict_copy_of_the_local_one()
 {
    let moto = Moto::start(&["bkt"]).await;
    moto.put("bkt", "study/report.csv", b"a,b\n1,2\n").await;
    let root = tempfile::tempdir().unwrap();
    let args = [
        "--part-size",
        "64KiB",
        "--upload-delay",
        "3",
        "--download-interval",
        "1",
    ];
    let mut m = Mounted::start_with(tool_at(&moto.endpoint), root.path(), MOUNTS, &args);
    let study = m.dest.join("study");
    let report = study.join("report.csv");
    assert_eq!(std::fs::read(&report).unwrap(), b"a,b\n1,2\n");

    let (local, remote) = (&b"a,b\nlocal,edit\n"[..], &b"a,b\nremote,edit\n"[..]);
    let before = utc_stamp_now();
    must("edit study/report.csv", std::fs::write(&report, local));
    moto.put("bkt", "study/report.csv", remote).await;

    let conflicts = || -> Vec<String> {
        keys(&moto.client, "study/")
            .into_iter()
            .filter(|k| k.starts_with("study/report.conflict-") && k.ends_with(".csv"))
            .collect()
    };
    m.wait_until(60, "a conflict copy in the bucket", || {
        !conflicts().is_empty()
    });
    wait_object(&m, &moto.client, "study/report.csv", Some(remote));
    // No second copy after the next listings (moto logs no requests: the tool's log counts
    // them, a "pass complete" line for each mount each time).
    let study_passes = |m: &Mounted| {
        m.log()
            .lines()
            .filter(|l| l.contains("pass complete") && l.contains("study"))
            .count()
    };
    let passes = study_passes(&m);
    m.wait_until(SETTLE, "2 more listings", || study_passes(&m) >= passes + 2);
    let after = utc_stamp_now();
    let kept = conflicts();
    assert_eq!(kept.len(), 1, "{:?}", keys(&moto.client, "study/"));
    let kept = &kept[0];
    wait_object(&m, &moto.client, kept, Some(local));
    wait_object(&m, &moto.client, "study/report.csv", Some(remote));
    let stamp = &kept["study/report.conflict-".len()..kept.len() - ".csv".len()];
    let shaped = stamp.len() == 16
        && stamp.char_indices().all(|(i, c)| match i {
            8 => c == 'T',
            15 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shaped, "{kept}: not a UTC yyyymmddTHHMMSSZ stamp");
    assert!(
        before.as_str() <= stamp && stamp <= after.as_str(),
        "{kept}: not stamped between {before} and {after}"
    );

    // Both shown in the mount, each with its bytes.
    let aside = study.join(kept.strip_prefix("study/").unwrap());
    m.wait_until(SETTLE, "both versions in the mount", || {
        std::fs::read(&report).is_ok_and(|d| d == remote)
            && std::fs::read(&aside).is_ok_and(|d| d == local)
    });
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("study/report.csv") && l.contains(kept)),
        "no warning naming study/report.csv and {kept}:\n{}",
        m.log_tail(40)
    );
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_written_before_a_kill_are_uploaded_at_the_next_start() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &LATE_UPLOAD_ARGS);
    let study = m.dest.join("study");
    let fresh = bytes(200_000, 11);
    must(
        "write study/unsaved.bin",
        std::fs::write(study.join("unsaved.bin"), &fresh),
    );
    must(
        "overwrite study/notes.txt",
        std::fs::write(study.join("notes.txt"), b"written, then killed\n"),
    );
    must(
        "rm study/log.txt",
        std::fs::remove_file(study.join("log.txt")),
    );

    // Killed long before the 30 s of --upload-delay: nothing could be uploaded.
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    fusermount_u(&m.dest, true);
    assert_eq!(object(&s3.client, "study/unsaved.bin"), None);

    // The next start on the same cache shows them and uploads them.
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");
    assert!(std::fs::read(study.join("unsaved.bin")).unwrap() == fresh);
    assert!(!study.join("log.txt").exists(), "a deleted file came back");
    wait_object(&m, &s3.client, "study/unsaved.bin", Some(&fresh));
    wait_object(
        &m,
        &s3.client,
        "study/notes.txt",
        Some(b"written, then killed\n"),
    );
    wait_object(&m, &s3.client, "study/log.txt", None);
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_cache_fails_the_write_with_enospc_and_keeps_the_bucket_intact() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root (scripts/test.sh runs as root)");
        return;
    }
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(cache.clone());
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");

    // More than the cache holds: the writer is told the disk is full.
    let mut file = must(
        "create study/huge.bin",
        File::create(study.join("huge.bin")),
    );
    let chunk = vec![7u8; 1 << 20];
    let mut result = Ok(());
    for _ in 0..16 {
        result = file.write_all(&chunk).and_then(|()| file.sync_data());
        if result.is_err() {
            break;
        }
    }
    assert_errno("write study/huge.bin", result, libc::ENOSPC);
    drop(file);
    must(
        "rm study/huge.bin",
        std::fs::remove_file(study.join("huge.bin")),
    );

    // The mount keeps working once the space is freed (the deleted file's blocks go when its
    // last handle, the kernel's or an upload's, is closed), and the bucket holds every object
    // as it was.
    let small = b"written after the disk was full\n";
    m.wait_until(SETTLE, "a write once the space is freed", || {
        std::fs::write(study.join("after.txt"), small).is_ok()
    });
    wait_object(&m, &s3.client, "study/after.txt", Some(small));
    for (key, data) in seed() {
        assert!(object(&s3.client, key).unwrap() == data, "{key} changed");
    }
    assert_eq!(object(&s3.client, "study/huge.bin"), None);
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn pandas_writes_csv_and_parquet_into_the_mount_and_they_reach_the_bucket() {
    let probe = Command::new("python3")
        .args(["-c", "import pandas, pyarrow"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: pandas and pyarrow are not installed (scripts/test.sh installs them)");
        return;
    }
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &ARGS);
    let study = m.dest.join("study");
    let script = r#"
import sys, pandas as pd
d = sys.argv[1]
df = pd.DataFrame({"x": range(10000), "y": [i * 0.5 for i in range(10000)]})
df.to_csv(f"{d}/out/table.csv", index=False)
df.to_parquet(f"{d}/out/table.parquet")
back = pd.read_parquet(f"{d}/out/table.parquet")
assert back.equals(df), "read back differs"
print(len(pd.read_csv(f"{d}/out/table.csv")))
"#;
    must("mkdir study/out", std::fs::create_dir(study.join("out")));
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&study)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pandas failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10000");
    for name in ["table.csv", "table.parquet"] {
        let local = std::fs::read(study.join("out").join(name)).unwrap();
        wait_object(&m, &s3.client, &format!("study/out/{name}"), Some(&local));
    }
    unmount_ok(&mut m);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_wait_has_the_mount_upload_at_once_and_returns_once_saved() {
    let s3 = server().await;
    let root = tempfile::tempdir().unwrap();
    // A write-back ten minutes away: what reaches the bucket sooner, status --wait asked for.
    let args = [
        "--part-size",
        "64KiB",
        "--upload-delay",
        "600",
        "--download-interval",
        "1",
    ];
    let mut m = Mounted::start(&s3, root.path(), MOUNTS, &args);
    let study = m.dest.join("study");
    let data = bytes(300_000, 12);
    must(
        "write study/saved.bin",
        std::fs::write(study.join("saved.bin"), &data),
    );
    let status = |wait: bool| {
        let mut cmd = s3.tool();
        cmd.arg("status")
            .arg("--destination")
            .arg(&m.dest)
            .arg("--cache-dir")
            .arg(root.path().join("cache"));
        if wait {
            cmd.arg("--wait");
        }
        cmd.stdin(std::process::Stdio::null());
        cmd.output().unwrap()
    };
    let before = status(false);
    assert_eq!(before.status.code(), Some(1), "{before:?}");
    let said = String::from_utf8_lossy(&before.stdout);
    assert!(said.contains("not uploaded: saved.bin"), "{said}");
    assert!(said.contains("a mount is running at"), "{said}");

    let waited = status(true);
    assert_eq!(
        waited.status.code(),
        Some(0),
        "{waited:?}\n{}",
        m.log_tail(20)
    );
    assert!(object(&s3.client, "study/saved.bin").unwrap() == data);
    unmount_ok(&mut m);
}

/// Every write of the write-back through a proxy that faults them: the first two requests of
/// each kind of write get a fault (so every kind gets some, whatever the seed), then a third
/// of all writes, aborts included; the faults cut the request while it is sent, answer 500 or
/// 503 without forwarding it, delay it, or lose the answer after the server applied it. Once
/// `status --wait` says all is saved, the bucket holds the mount's files byte for byte (the
/// multipart upload of a 12 MiB file among them), the deleted and renamed-away objects are
/// gone, no conflict copy was made of the tool's own writes, and no multipart upload is open.
#[tokio::test(flavor = "multi_thread")]
async fn write_back_through_faulty_writes_leaves_the_bucket_as_the_mount() {
    let s3 = server().await;
    let rules = Rule::writes(&Fault::WRITE, 33);
    let proxy = FaultProxy::with_rules(&s3.endpoint, faults::seed(), &rules).await;
    let root = tempfile::tempdir().unwrap();
    // A write-back ten minutes away: `status --wait` has it upload everything at once.
    let args = [
        "--part-size",
        "64KiB",
        "--upload-delay",
        "600",
        "--download-interval",
        "3600",
    ];
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), MOUNTS, &args);
    let study = m.dest.join("study");
    for i in 0..12u64 {
        let dir = study.join(format!("runs/{}", i % 3));
        must("mkdir -p", std::fs::create_dir_all(&dir));
        let path = dir.join(format!("out-{i}.bin"));
        must(
            "write",
            std::fs::write(&path, bytes(1 + i as usize * 7919, 40 + i)),
        );
    }
    let large = bytes((12 << 20) + 555, 60);
    must(
        "write study/model.bin",
        std::fs::write(study.join("model.bin"), &large),
    );
    must(
        "overwrite study/notes.txt",
        std::fs::write(study.join("notes.txt"), b"notes, edited\n"),
    );
    must(
        "rm study/log.txt",
        std::fs::remove_file(study.join("log.txt")),
    );
    must(
        "mv study/report.csv study/report-v1.csv",
        std::fs::rename(study.join("report.csv"), study.join("report-v1.csv")),
    );
    let want = tree(&study);

    let waited = status_wait(&m, root.path(), 120);
    let injected: BTreeMap<Op, BTreeMap<Fault, usize>> = Op::WRITES_AND_ABORT
        .iter()
        .map(|op| (*op, proxy.injected_into(*op)))
        .collect();
    eprintln!("faults injected: {injected:?}");
    assert_eq!(
        waited.status.code(),
        Some(0),
        "status --wait: {}\n{}",
        String::from_utf8_lossy(&waited.stdout),
        m.log_tail(40)
    );
    for op in [Op::Put, Op::Part, Op::Create, Op::Complete, Op::Delete] {
        assert!(
            !injected[&op].is_empty(),
            "no fault was injected into {op:?}"
        );
    }
    assert_files("the bucket", &bucket_files(&s3.client, "study/"), &want);
    assert_eq!(object(&s3.client, "study/log.txt"), None);
    assert_eq!(object(&s3.client, "study/report.csv"), None);
    assert_files("the mount", &tree(&study), &want);
    let log = m.log();
    let conflicts = log.lines().filter(|l| {
        l.contains("conflict:") || l.contains("conflicts=") && !l.contains("conflicts=0")
    });
    assert_eq!(conflicts.count(), 0, "a fault made a conflict:\n{log}");
    let open = block(s3.client.list_multipart_uploads().bucket("bkt").send()).unwrap();
    let open: Vec<_> = open.uploads().iter().map(|u| u.key()).collect();
    assert!(open.is_empty(), "multipart uploads left open: {open:?}");
    unmount_ok(&mut m);
}

/// `status --wait` of the mount `m` (its cache in `root/cache`), given up after `secs`
/// (`timeout`'s exit code 124 then).
fn status_wait(m: &Mounted, root: &Path, secs: u32) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(env!("CARGO_BIN_EXE_s3-synchronizer"))
        .arg("status")
        .arg("--destination")
        .arg(&m.dest)
        .arg("--cache-dir")
        .arg(root.join("cache"))
        .arg("--wait")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A flush that `status --wait` asked for holds until the upload succeeds: the only PUT fails
/// every try of the first round (six 500s), and the round after it, a second later, still
/// takes the file although it has not been quiet for the ten minutes of --upload-delay.
#[tokio::test(flavor = "multi_thread")]
async fn status_wait_outlasts_a_failed_upload_and_returns_once_it_is_saved() {
    let s3 = server().await;
    let rules = [Rule::new(&[Op::Put], 100, &[Fault::InternalError]).at_most(6)];
    let proxy = FaultProxy::with_rules(&s3.endpoint, 1, &rules).await;
    let root = tempfile::tempdir().unwrap();
    let args = ["--upload-delay", "600", "--download-interval", "3600"];
    let mut m = Mounted::start_with(tool_at(&proxy.endpoint), root.path(), MOUNTS, &args);
    let data = bytes(100_000, 70);
    must(
        "write study/saved.bin",
        std::fs::write(m.dest.join("study/saved.bin"), &data),
    );
    let waited = status_wait(&m, root.path(), 60);
    assert_eq!(
        waited.status.code(),
        Some(0),
        "status --wait: {}\n{}",
        String::from_utf8_lossy(&waited.stdout),
        m.log_tail(20)
    );
    assert_eq!(proxy.injected_into(Op::Put).values().sum::<usize>(), 6);
    assert!(object(&s3.client, "study/saved.bin").unwrap() == data);
    unmount_ok(&mut m);
}
