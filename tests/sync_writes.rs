//! `sync` of a writeable mount against real S3-compatible servers on loopback: local changes land
//! in the bucket byte for byte, and a change made on both sides keeps both versions. Run against
//! moto (which honours conditional writes) and `rclone serve s3` (which ignores them: the HEAD
//! before each write catches the same conflicts).

mod common;

use aws_sdk_s3::Client;
use common::proxy::SlowProxy;
use common::*;
use std::path::Path;
use std::process::Output;

const MOUNTS: &str = r#"[{"id":"study","bucket":"bkt","prefix":"data/","writeable":true}]"#;

fn sync(endpoint: &str, dest: &Path) -> Output {
    let out = run(tool_at(endpoint)
        .args(["sync", "--default-s3-mounts", MOUNTS, "--destination"])
        .arg(dest));
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

async fn object(client: &Client, key: &str) -> Option<Vec<u8>> {
    let got = client
        .get_object()
        .bucket("bkt")
        .key(key)
        .send()
        .await
        .ok()?;
    Some(got.body.collect().await.unwrap().into_bytes().to_vec())
}

async fn keys(client: &Client) -> Vec<String> {
    let listed = client
        .list_objects_v2()
        .bucket("bkt")
        .prefix("data/")
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

/// The summary field `name` of the last pass in a run's log.
fn summary(out: &Output, name: &str) -> u64 {
    let log = stderr(out);
    let line = log
        .lines()
        .rfind(|l| l.contains("pass complete"))
        .unwrap_or_else(|| panic!("no summary in {log}"));
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    line[at + name.len() + 2..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The scenario, on a server holding `data/a.csv` and `data/old.txt`.
async fn local_changes_reach_the_bucket(endpoint: &str, client: &Client) {
    let dest = tempfile::tempdir().unwrap();
    let dir = dest.path().join("study");
    sync(endpoint, dest.path());
    assert_eq!(std::fs::read(dir.join("a.csv")).unwrap(), b"1,2\n");

    // New files (one large enough for a multipart upload), a same-size edit, a delete.
    let table = bytes(300_000, 7);
    let big = bytes(13 << 20, 8);
    std::fs::create_dir_all(dir.join("results")).unwrap();
    std::fs::write(dir.join("results/table.parquet"), &table).unwrap();
    std::fs::write(dir.join("results/big.bin"), &big).unwrap();
    std::fs::write(dir.join("a.csv"), b"3,4\n").unwrap();
    std::fs::remove_file(dir.join("old.txt")).unwrap();
    let out = sync(endpoint, dest.path());
    assert_eq!(summary(&out, "uploaded"), 3, "{}", stderr(&out));
    assert_eq!(summary(&out, "remote_deleted"), 1, "{}", stderr(&out));
    assert_eq!(
        object(client, "data/results/table.parquet").await.unwrap(),
        table
    );
    assert!(object(client, "data/results/big.bin").await.unwrap() == big);
    assert_eq!(object(client, "data/a.csv").await.unwrap(), b"3,4\n");
    assert_eq!(object(client, "data/old.txt").await, None);

    // Changed on both sides: both versions kept, in the bucket and locally.
    std::fs::write(dir.join("a.csv"), b"local edit\n").unwrap();
    put(client, "data/a.csv", b"their edit\n").await;
    let out = sync(endpoint, dest.path());
    assert_eq!(summary(&out, "conflicts"), 1, "{}", stderr(&out));
    assert_eq!(object(client, "data/a.csv").await.unwrap(), b"their edit\n");
    let kept: Vec<String> = keys(client)
        .await
        .into_iter()
        .filter(|k| k.starts_with("data/a.conflict-") && k.ends_with(".csv"))
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", keys(client).await);
    assert_eq!(object(client, &kept[0]).await.unwrap(), b"local edit\n");
    assert_eq!(std::fs::read(dir.join("a.csv")).unwrap(), b"their edit\n");
    let aside = dir.join(kept[0].strip_prefix("data/").unwrap());
    assert_eq!(std::fs::read(aside).unwrap(), b"local edit\n");
    let warned = stderr(&out);
    assert!(
        warned.contains("conflict") && warned.contains(&kept[0]),
        "{warned}"
    );

    // A deleted file whose object changed meanwhile: nothing deleted, the new version back.
    std::fs::remove_file(dir.join("results/table.parquet")).unwrap();
    put(client, "data/results/table.parquet", b"recomputed").await;
    let out = sync(endpoint, dest.path());
    assert_eq!(summary(&out, "remote_deleted"), 0, "{}", stderr(&out));
    assert_eq!(
        object(client, "data/results/table.parquet").await.unwrap(),
        b"recomputed"
    );
    assert_eq!(
        std::fs::read(dir.join("results/table.parquet")).unwrap(),
        b"recomputed"
    );

    // Nothing left to upload.
    let out = sync(endpoint, dest.path());
    assert_eq!(summary(&out, "uploaded"), 0, "{}", stderr(&out));
    assert_eq!(summary(&out, "conflicts"), 0, "{}", stderr(&out));
}

async fn put(client: &Client, key: &str, data: &[u8]) {
    client
        .put_object()
        .bucket("bkt")
        .key(key)
        .body(data.to_vec().into())
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn local_changes_reach_moto() {
    let moto = Moto::start(&["bkt"]).await;
    moto.put("bkt", "data/a.csv", b"1,2\n").await;
    moto.put("bkt", "data/old.txt", b"old").await;
    local_changes_reach_the_bucket(&moto.endpoint, &moto.client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn local_changes_reach_rclone() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "data/a.csv", b"1,2\n").await;
    s3.put("bkt", "data/old.txt", b"old").await;
    local_changes_reach_the_bucket(&s3.endpoint, &s3.client).await;
}

/// A recurring sync whose next pass would come in an hour: only the watch of its writeable
/// mount starts one sooner (a change settles in 1 s).
/// A recurring sync (an interval of an hour) whose changes settle after `upload_delay` seconds.
fn recurring(endpoint: &str, dest: &Path, upload_delay: &str) -> std::process::Child {
    tool_at(endpoint)
        .args(["sync", "--default-s3-mounts", MOUNTS, "--destination"])
        .arg(dest)
        .args(["--recurring-downloads", "--download-interval", "3600"])
        .args(["--upload-delay", upload_delay])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// In recurring mode a local change is uploaded once it settles, long before the next pass.
#[tokio::test(flavor = "multi_thread")]
async fn a_settled_change_is_uploaded_before_the_next_interval() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "data/a.csv", b"1,2\n").await;
    let dest = tempfile::tempdir().unwrap();
    let child = recurring(&s3.endpoint, dest.path(), "1");
    let first = dest.path().join("study/a.csv");
    wait_for(30, "the first pass", || first.exists());

    std::fs::write(dest.path().join("study/new.txt"), b"written after the pass").unwrap();
    let uploaded = object_within(30, &s3.client, "data/new.txt").await;
    // SAFETY: signalling a child process this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        uploaded.as_deref(),
        Some(&b"written after the pass"[..]),
        "not uploaded within 30 s of an interval of an hour: {log}"
    );
    assert!(out.status.success(), "{log}");
}

/// Changes made before a recurring sync starts get no watch event: the pass that finds them
/// still settling looks again after the delay. A modification time ahead of the clock (`touch
/// -d`, an archive from a machine whose clock ran ahead) does not hold a file back.
#[tokio::test(flavor = "multi_thread")]
async fn changes_made_before_the_start_are_uploaded_once_settled() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "data/a.csv", b"1,2\n").await;
    let dest = tempfile::tempdir().unwrap();
    sync(&s3.endpoint, dest.path());
    std::fs::write(dest.path().join("study/early.csv"), b"early").unwrap();
    let ahead = std::fs::File::create(dest.path().join("study/ahead.csv")).unwrap();
    std::io::Write::write_all(&mut &ahead, b"ahead").unwrap();
    let year_2100 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(4_102_444_800);
    ahead
        .set_times(std::fs::FileTimes::new().set_modified(year_2100))
        .unwrap();
    drop(ahead);

    let child = recurring(&s3.endpoint, dest.path(), "3");
    let early = object_within(30, &s3.client, "data/early.csv").await;
    let ahead = object_within(10, &s3.client, "data/ahead.csv").await;
    // SAFETY: signalling a child process this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(early.as_deref(), Some(&b"early"[..]), "{log}");
    assert_eq!(ahead.as_deref(), Some(&b"ahead"[..]), "{log}");
}

/// The object `key` once it is in the bucket, looking for at most `secs` seconds.
async fn object_within(secs: u64, client: &Client, key: &str) -> Option<Vec<u8>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let found = object(client, key).await;
        if found.is_some() || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// kill -9 twenty times (seeded) while a writeable mount uploads, then one run to the end: every
/// file is in the bucket exactly once, no conflict copy was made of the tool's own uploads, and
/// no multipart upload is left open. Against moto, whose ETags are S3's MD5 forms.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_kill_9s_while_uploading_lose_nothing_and_leave_nothing_behind() {
    let moto = Moto::start(&["bkt"]).await;
    let dest = tempfile::tempdir().unwrap();
    let dir = dest.path().join("study");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let mut expected = std::collections::BTreeMap::new();
    // The large files (multipart uploads) come first in key order, so kills land inside them.
    for i in 0..40u64 {
        let len = if i < 3 { 11 << 20 } else { 1 << 20 };
        let data = bytes(len, i);
        std::fs::write(dir.join(format!("run/f{i:02}")), &data).unwrap();
        expected.insert(format!("data/run/f{i:02}"), data);
    }
    let args = ["--concurrency", "2"];
    // 1 MiB/s a connection: uploading it all takes over 10 s, so kills land mid-way.
    let proxy = SlowProxy::start(&moto.endpoint, 1 << 20).await;
    let mut rng = common::faults::seed() | 1;
    let mut midway = 0;
    for _ in 0..20 {
        if keys(&moto.client).await.len() < expected.len() {
            midway += 1;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = tool_at(&proxy.endpoint)
            .args(["sync", "--default-s3-mounts", MOUNTS, "--destination"])
            .arg(dest.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100 + rng % 500)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    assert!(midway >= 15, "only {midway} of 20 kills landed mid-upload");

    let out = run(tool_at(&moto.endpoint)
        .args(["sync", "--default-s3-mounts", MOUNTS, "--destination"])
        .arg(dest.path())
        .args(args));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&out, "conflicts"), 0, "{}", stderr(&out));
    let listed = keys(&moto.client).await;
    assert_eq!(
        listed,
        expected.keys().cloned().collect::<Vec<_>>(),
        "every file once, and nothing else"
    );
    for (key, data) in &expected {
        assert!(
            object(&moto.client, key).await.as_ref() == Some(data),
            "{key}"
        );
    }
    let open = moto
        .client
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "left open: {:?}", open.uploads());
    let out = sync(&moto.endpoint, dest.path());
    assert_eq!(summary(&out, "uploaded"), 0, "{}", stderr(&out));
}

fn status(dest: &Path, extra: &[&str]) -> Output {
    run(tool_at("http://127.0.0.1:9")
        .args(["status", "--destination"])
        .arg(dest)
        .args(extra))
}

/// `status` says whether local changes are in the bucket: 0 all saved, 3 pending with no sync
/// running there, and `--wait` returns once a running sync has uploaded them.
#[tokio::test(flavor = "multi_thread")]
async fn status_says_whether_the_work_is_saved() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "data/a.csv", b"1,2\n").await;
    let dest = tempfile::tempdir().unwrap();
    sync(&s3.endpoint, dest.path());
    let out = status(dest.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    std::fs::write(dest.path().join("study/result.csv"), b"42\n").unwrap();
    let out = status(dest.path(), &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("not uploaded: result.csv"), "{said}");
    assert!(said.contains("no sync is running"), "{said}");

    // A running sync uploads it; `status --wait` returns then.
    let child = recurring(&s3.endpoint, dest.path(), "1");
    wait_for(30, "the sync to hold the destination", || {
        status(dest.path(), &[]).status.code() != Some(3)
    });
    std::fs::write(dest.path().join("study/later.csv"), b"43\n").unwrap();
    let out = status(dest.path(), &["--wait"]);
    let waited = String::from_utf8_lossy(&out.stdout).into_owned();
    // SAFETY: signalling a child process this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let log = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{waited}\n{}",
        String::from_utf8_lossy(&log.stderr)
    );
    assert!(waited.contains("0 changed or new"), "{waited}");
    assert_eq!(
        object(&s3.client, "data/result.csv").await.unwrap(),
        b"42\n"
    );
    assert_eq!(object(&s3.client, "data/later.csv").await.unwrap(), b"43\n");

    // Not a destination: one line, exit 2.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = status(elsewhere.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a destination of s3-synchronizer sync"),
        "{}",
        stderr(&out)
    );
}

/// SIGTERM uploads the changes not uploaded yet before the run exits.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_sync_uploads_what_waits_before_it_exits() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "data/a.csv", b"1,2\n").await;
    let dest = tempfile::tempdir().unwrap();
    // A change would wait a minute to settle: only the stop uploads it.
    let child = recurring(&s3.endpoint, dest.path(), "60");
    wait_for(30, "the first pass", || {
        status(dest.path(), &[]).status.code() == Some(0)
    });
    std::fs::write(dest.path().join("study/final.csv"), b"done\n").unwrap();
    assert_eq!(status(dest.path(), &[]).status.code(), Some(1));
    // SAFETY: signalling a child process this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        object(&s3.client, "data/final.csv").await.as_deref(),
        Some(&b"done\n"[..]),
        "{log}"
    );
    assert!(log.contains("uploaded before stopping"), "{log}");
    assert_eq!(status(dest.path(), &[]).status.code(), Some(0));
}

/// `mv` of a file and of a directory in a writeable mount: the objects are copied within the
/// bucket to the new keys and deleted under the old ones, not uploaded again.
#[tokio::test(flavor = "multi_thread")]
async fn renamed_files_and_directories_move_in_the_bucket() {
    let s3 = S3Server::start(&["bkt"]).await;
    let table = bytes(200_000, 3);
    s3.put("bkt", "data/a.csv", b"1,2\n").await;
    s3.put("bkt", "data/run1/table.parquet", &table).await;
    s3.put("bkt", "data/run1/logs/out.txt", b"done\n").await;
    s3.put("bkt", "data/keep.txt", b"keep").await;
    let dest = tempfile::tempdir().unwrap();
    let dir = dest.path().join("study");
    sync(&s3.endpoint, dest.path());

    std::fs::rename(dir.join("a.csv"), dir.join("b.csv")).unwrap();
    std::fs::rename(dir.join("run1"), dir.join("final")).unwrap();
    let out = sync(&s3.endpoint, dest.path());
    let log = stderr(&out);
    assert_eq!(summary(&out, "uploaded"), 3, "{log}");
    assert_eq!(
        keys(&s3.client).await,
        [
            "data/b.csv",
            "data/final/logs/out.txt",
            "data/final/table.parquet",
            "data/keep.txt",
        ],
        "{log}"
    );
    assert_eq!(object(&s3.client, "data/b.csv").await.unwrap(), b"1,2\n");
    assert_eq!(
        object(&s3.client, "data/final/table.parquet")
            .await
            .unwrap(),
        table
    );
    assert_eq!(
        object(&s3.client, "data/final/logs/out.txt").await.unwrap(),
        b"done\n"
    );
    for (from, to) in [
        ("data/a.csv", "data/b.csv"),
        ("data/run1/table.parquet", "data/final/table.parquet"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("renamed: copied") && l.contains(from) && l.contains(to)),
            "no copy of {from} to {to}: {log}"
        );
    }
    // The local tree is as the user left it, and nothing is left to do.
    assert_eq!(std::fs::read(dir.join("b.csv")).unwrap(), b"1,2\n");
    assert!(!dir.join("a.csv").exists() && !dir.join("run1").exists());
    let out = sync(&s3.endpoint, dest.path());
    assert_eq!(summary(&out, "uploaded"), 0, "{}", stderr(&out));
    assert!(!dir.join("a.csv").exists() && !dir.join("run1").exists());
}
