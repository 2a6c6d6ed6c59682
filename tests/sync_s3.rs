//! `sync` against a real S3-compatible server on loopback.

mod common;

use common::*;
use std::path::Path;

const PART: &str = "64KiB";

/// A bucket with nested dirs, an empty object, multi-part objects, odd names, and keys outside
/// the prefix of one of the mounts.
async fn populate(s3: &S3Server) -> Vec<(String, Vec<u8>)> {
    let objects = vec![
        ("top.txt".to_string(), b"top level\n".to_vec()),
        ("data/empty".to_string(), Vec::new()),
        ("data/a/b/c/deep.csv".to_string(), b"x,y\n1,2\n".to_vec()),
        ("data/multi.bin".to_string(), bytes(1024 * 1024 + 123, 1)),
        ("data/exact.bin".to_string(), bytes(3 * 64 * 1024, 2)),
        (
            "data/with space/ünïcødé ✓.txt".to_string(),
            "héllo".as_bytes().to_vec(),
        ),
        ("database/not-in-prefix".to_string(), b"nope".to_vec()),
    ];
    for (k, v) in &objects {
        s3.put("bkt", k, v).await;
    }
    objects
}

fn under<'a>(objects: &'a [(String, Vec<u8>)], prefix: &str) -> Vec<(&'a str, &'a [u8])> {
    objects
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?, v.as_slice())))
        .collect()
}

fn sync_cmd(s3: &S3Server, dest: &Path, mounts: &str) -> std::process::Command {
    let mut cmd = s3.tool();
    cmd.args(["sync", "--default-s3-mounts", mounts, "--destination"])
        .arg(dest)
        .args(["--part-size", PART]);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_each_mount_byte_for_byte() {
    let s3 = S3Server::start(&["bkt"]).await;
    let objects = populate(&s3).await;
    let dest = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("all", "bkt", "/"), ("data", "bkt", "data")]);

    let gets_before = s3.gets();
    run_ok(&mut sync_cmd(&s3, dest.path(), &mounts));

    assert_eq!(tree(&dest.path().join("all")), expect(&under(&objects, "")));
    // The prefix is a directory: "data" does not take "database/...".
    assert_eq!(
        tree(&dest.path().join("data")),
        expect(&under(&objects, "data/"))
    );
    assert!(dest.path().join("data/a/b/c").is_dir());
    // Local mtimes are the objects' LastModified (HEAD gives it to the second).
    let remote = s3.last_modified("bkt", "data/multi.bin").await;
    let local = std::fs::metadata(dest.path().join("all/data/multi.bin")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&local), remote);
    let staging = dest.path().join(".s3-synchronizer/staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
    // Multi-part objects took several ranged GETs; the empty object took none.
    let gets = s3.gets() - gets_before;
    // "all": 17 parts of multi.bin, 3 of exact.bin, 4 single-part objects; "data": the same
    // less top.txt and database/not-in-prefix.
    assert_eq!(gets, (17 + 3 + 4) + (17 + 3 + 2), "GETs: {gets}");
}

#[tokio::test(flavor = "multi_thread")]
async fn second_run_over_an_unchanged_bucket_issues_no_get() {
    let s3 = S3Server::start(&["bkt"]).await;
    populate(&s3).await;
    let dest = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("all", "bkt", "")]);
    run_ok(&mut sync_cmd(&s3, dest.path(), &mounts));
    let file = dest.path().join("all/data/multi.bin");
    let ino = inode(&file);

    let gets = s3.gets();
    let out = run_ok(&mut sync_cmd(&s3, dest.path(), &mounts));
    assert_eq!(s3.gets(), gets, "{}", stderr(&out));
    assert_eq!(inode(&file), ino, "the file was rewritten");
    assert!(stderr(&out).contains("downloaded=0"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_follows_adds_changes_and_deletes_but_keeps_user_files() {
    let s3 = S3Server::start(&["bkt"]).await;
    populate(&s3).await;
    let dest = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("all", "bkt", "")]);
    run_ok(&mut sync_cmd(&s3, dest.path(), &mounts));
    let root = dest.path().join("all");
    std::fs::write(root.join("data/a/b/c/my-notes.txt"), b"mine").unwrap();
    std::fs::write(root.join("mine.txt"), b"mine too").unwrap();

    s3.put("bkt", "new/file.txt", b"new").await;
    s3.put("bkt", "data/multi.bin", &bytes(200_000, 9)).await;
    s3.delete("bkt", "top.txt").await;
    s3.delete("bkt", "data/a/b/c/deep.csv").await;
    s3.delete("bkt", "data/with space/ünïcødé ✓.txt").await;
    let out = run_ok(&mut sync_cmd(&s3, dest.path(), &mounts));
    let log = stderr(&out);
    assert!(
        log.contains("downloaded=1") && log.contains("updated=1") && log.contains("deleted=3"),
        "{log}"
    );

    let got = tree(&root);
    assert_eq!(got["new/file.txt"], b"new");
    assert_eq!(got["data/multi.bin"], bytes(200_000, 9));
    assert!(!got.contains_key("top.txt"));
    assert!(!got.contains_key("data/a/b/c/deep.csv"));
    // The directory that became empty is gone; the one holding a user file stays.
    assert!(!root.join("data/with space").exists());
    assert_eq!(got["data/a/b/c/my-notes.txt"], b"mine");
    assert_eq!(got["mine.txt"], b"mine too");
}

#[tokio::test(flavor = "multi_thread")]
async fn original_go_style_invocation_works() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "p/x.txt", b"x").await;
    s3.put("bkt", "p/y/z.txt", b"z").await;
    let dest = tempfile::tempdir().unwrap();
    let mounts = r#"[{"id":"some-id","bucket":"bkt","prefix":"p","writeable":false,"kmsKeyId":"some-kms-key-arn"}]"#;
    let mut cmd = s3.tool();
    cmd.args(["-defaultS3Mounts", mounts, "-destination"])
        .arg(dest.path())
        .args([
            "-concurrency",
            "5",
            "-region",
            "us-east-1",
            "-debug",
            "-recurringDownloads=false",
        ])
        .args(["-stopRecurringDownloadsAfter", "-1", "-downloadInterval=60"]);
    run_ok(&mut cmd);
    assert_eq!(
        tree(&dest.path().join("some-id")),
        expect(&[("x.txt", b"x"), ("y/z.txt", b"z")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_mounts_json_gets_one_clear_line() {
    let s3 = S3Server::start(&["bkt"]).await;
    let dest = tempfile::tempdir().unwrap();
    for (json, want) in [
        ("[{", "mounts JSON is malformed"),
        (r#"[{"bucket":"bkt"}]"#, "mount #1: missing \"id\""),
        (r#"[{"id":"a/b","bucket":"bkt"}]"#, "single path component"),
        (
            r#"[{"id":"a","bucket":"bkt"},{"id":"a","bucket":"bkt"}]"#,
            "duplicate id",
        ),
    ] {
        let out = run(&mut sync_cmd(&s3, dest.path(), json));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{json}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{json}: {err}");
        assert!(err.contains(want), "{json}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(dest.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_fails_its_mount_only() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "ok.txt", b"ok").await;
    let dest = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("good", "bkt", ""), ("bad", "no-such-bucket", "")]);
    let out = run(&mut sync_cmd(&s3, dest.path(), &mounts));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("mount \"bad\"") && l.contains("no-such-bucket")),
        "{err}"
    );
    assert_eq!(
        tree(&dest.path().join("good")),
        expect(&[("ok.txt", b"ok")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recurring_mode_follows_changes_then_stops_on_time() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "a.txt", b"one").await;
    s3.put("bkt", "gone.txt", b"soon gone").await;
    let dest = tempfile::tempdir().unwrap();
    let root = dest.path().join("m");
    let mut cmd = s3.tool();
    cmd.args([
        "-defaultS3Mounts",
        &mounts_json(&[("m", "bkt", "")]),
        "-destination",
    ])
    .arg(dest.path())
    .args([
        "-recurringDownloads",
        "-downloadInterval",
        "1",
        "-stopRecurringDownloadsAfter",
        "8",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();

    wait_for(20, "first pass", || root.join("gone.txt").exists());
    s3.put("bkt", "a.txt", b"two").await;
    s3.put("bkt", "b.txt", b"new").await;
    s3.delete("bkt", "gone.txt").await;
    wait_for(20, "changes to arrive", || {
        tree(&root) == expect(&[("a.txt", b"two"), ("b.txt", b"new")])
    });
    wait_for(30, "the tool to stop by itself", || {
        child.try_wait().unwrap().is_some()
    });
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_sync_resumes_without_refetching_complete_files() {
    let s3 = S3Server::start(&["bkt"]).await;
    let mut objects = Vec::new();
    for i in 0..40 {
        let data = bytes(512 * 1024 + i, i as u64);
        s3.put("bkt", &format!("f{i:02}.bin"), &data).await;
        objects.push((format!("f{i:02}.bin"), data));
    }
    let dest = tempfile::tempdir().unwrap();
    let root = dest.path().join("m");
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut cmd = sync_cmd(&s3, dest.path(), &mounts);
    cmd.args(["--concurrency", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    wait_for(30, "some files to complete", || {
        root.exists() && std::fs::read_dir(&root).unwrap().count() >= 5
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Whatever is at a final path is complete.
    let partial = tree(&root);
    for (path, data) in &partial {
        let want = &objects.iter().find(|(k, _)| k == path).unwrap().1;
        assert_eq!(data, want, "{path} is not complete");
    }
    let inodes: Vec<(String, u64)> = partial
        .keys()
        .map(|p| (p.clone(), inode(&root.join(p))))
        .collect();

    run_ok(&mut sync_cmd(&s3, dest.path(), &mounts));
    let want: Vec<(&str, &[u8])> = objects
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(tree(&root), expect(&want));
    let staging = dest.path().join(".s3-synchronizer/staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
    let refetched: Vec<&str> = inodes
        .iter()
        .filter(|(p, ino)| inode(&root.join(p)) != *ino)
        .map(|(p, _)| p.as_str())
        .collect();
    // At most the one file whose rename raced the kill may be fetched again.
    assert!(
        refetched.len() <= 1,
        "re-downloaded complete files: {refetched:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_with_no_partial_files() {
    let s3 = S3Server::start(&["bkt"]).await;
    let big = bytes(24 * 1024 * 1024, 7);
    s3.put("bkt", "big.bin", &big).await;
    let dest = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut cmd = sync_cmd(&s3, dest.path(), &mounts);
    cmd.args(["--concurrency", "1", "--recurring-downloads"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let staging = dest.path().join(".s3-synchronizer/staging");
    wait_for(30, "the download to start", || {
        staging.exists() && std::fs::read_dir(&staging).unwrap().count() > 0
            || dest.path().join("m/big.bin").exists()
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for(30, "the tool to exit", || {
        child.try_wait().unwrap().is_some()
    });
    assert!(child.wait().unwrap().success());
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "staging debris"
    );
    let file = dest.path().join("m/big.bin");
    if file.exists() {
        assert_eq!(std::fs::read(file).unwrap(), big);
    }
}
