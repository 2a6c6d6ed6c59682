//! Passes over a writeable mount: local changes reach the bucket, and no version is lost when
//! the bucket changed too.

use super::*;
use crate::store::{Precondition, WriteOptions};
use crate::testing::Setup;
use bytes::Bytes;
use std::path::PathBuf;

/// A writeable mount of prefix `p/`, with a KMS key.
fn writeable() -> crate::mounts::Mount {
    crate::mounts::Mount {
        writeable: true,
        kms_key_id: Some("arn:aws:kms:eu-west-1:1:key/k".into()),
        ..mount("p/")
    }
}

/// One pass over the writeable mount with a fresh engine over `root`.
async fn push(root: &Path, store: Arc<dyn ObjectStore>) -> PassStats {
    let engine = engine_at(root, 4, CancellationToken::new());
    let replica = engine.open_mount(writeable()).unwrap();
    engine.sync_mount(&replica, store).await.unwrap()
}

/// The MD5 of `data`, in hex.
fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    crate::etag::hex(&Md5::digest(data))
}

fn bytes(mem: &MemoryStore, key: &str) -> Option<Vec<u8>> {
    mem.bytes_of(key).map(|b| b.to_vec())
}

/// Changes a file's bytes in place, keeping its size and mtime: only its ctime tells.
fn edit_in_place(path: &Path, data: &[u8]) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::write(path, data).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(mtime).unwrap();
}

#[tokio::test]
async fn new_changed_and_deleted_files_reach_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/keep.txt", &b"keep"[..]);
    mem.put("p/edit.csv", &b"a,b\n1,2\n"[..]);
    mem.put("p/gone.txt", &b"gone"[..]);
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;

    let dir = tmp.path().join("m");
    std::fs::create_dir_all(dir.join("results/run1")).unwrap();
    std::fs::write(dir.join("results/run1/model.bin"), b"weights").unwrap();
    edit_in_place(&dir.join("edit.csv"), b"a,b\n3,4\n");
    std::fs::remove_file(dir.join("gone.txt")).unwrap();
    std::fs::create_dir(dir.join("empty")).unwrap();
    let stats = push(tmp.path(), store.clone()).await;

    assert_eq!(
        bytes(&mem, "p/results/run1/model.bin").as_deref(),
        Some(&b"weights"[..])
    );
    assert_eq!(
        bytes(&mem, "p/edit.csv").as_deref(),
        Some(&b"a,b\n3,4\n"[..])
    );
    assert_eq!(bytes(&mem, "p/gone.txt"), None);
    assert_eq!(bytes(&mem, "p/empty/").as_deref(), Some(&b""[..]));
    assert_eq!(bytes(&mem, "p/keep.txt").as_deref(), Some(&b"keep"[..]));
    assert_eq!((stats.uploaded, stats.remote_deleted), (3, 1), "{stats:?}");
    assert_eq!(
        mem.written_with("p/edit.csv"),
        Some(WriteOptions {
            bucket_owner_full_control: true,
            kms_key_id: writeable().kms_key_id,
            content_md5: Some(md5_hex(b"a,b\n3,4\n")),
        })
    );
    // Nothing local was touched, and the next pass has nothing to do.
    assert_eq!(std::fs::read(dir.join("edit.csv")).unwrap(), b"a,b\n3,4\n");
    let again = push(tmp.path(), store).await;
    assert_eq!(
        (
            again.uploaded,
            again.downloaded,
            again.updated,
            again.deleted
        ),
        (0, 0, 0, 0),
        "{again:?}"
    );
}

/// Uploads are not held to the GETs' concurrency (capped for a server on this machine, for the
/// readers' sake), but to their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_run_as_many_at_once_as_the_write_lane_allows() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let gauge = Hooked::new(mem.clone(), Gauge::default());
    let setup = Setup {
        concurrency: 2,
        write_concurrency: Some(6),
        ..Setup::default()
    };
    let engine = setup.engine(tmp.path());
    let replica = engine.open_mount(writeable()).unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..24 {
        std::fs::write(dir.join(format!("f{i}")), pattern(1000 + i, i as u8)).unwrap();
    }
    let stats = engine.sync_mount(&replica, gauge.clone()).await.unwrap();

    assert_eq!(stats.uploaded, 24, "{stats:?}");
    for i in 0..24 {
        let got = bytes(&mem, &format!("p/f{i}"));
        assert!(got == Some(pattern(1000 + i, i as u8)), "p/f{i} differs");
    }
    let peak = gauge.puts_peak.load(Ordering::SeqCst);
    assert!(peak <= 6, "at most 6 PUTs at once, saw {peak}");
    assert!(peak > 2, "PUTs held to the 2 GETs at once: {peak}");
}

#[tokio::test]
async fn a_file_changed_on_both_sides_keeps_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/nb/analysis.ipynb", &b"v1"[..]);
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;

    let local = tmp.path().join("m/nb/analysis.ipynb");
    std::fs::write(&local, b"local v2").unwrap();
    mem.put("p/nb/analysis.ipynb", &b"remote v2"[..]);
    let stats = push(tmp.path(), store).await;

    assert_eq!(stats.conflicts, 1, "{stats:?}");
    assert_eq!(
        bytes(&mem, "p/nb/analysis.ipynb").as_deref(),
        Some(&b"remote v2"[..])
    );
    let kept: Vec<String> = mem
        .answer_list("p/nb/")
        .unwrap()
        .iter()
        .map(|m| m.key.to_owned())
        .filter(|k| k.contains(".conflict-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0].starts_with("p/nb/analysis.conflict-") && kept[0].ends_with("Z.ipynb"),
        "{kept:?}"
    );
    assert_eq!(bytes(&mem, &kept[0]).as_deref(), Some(&b"local v2"[..]));
    // Both versions are local too.
    assert_eq!(std::fs::read(&local).unwrap(), b"remote v2");
    let aside = tmp
        .path()
        .join("m")
        .join(kept[0].strip_prefix("p/").unwrap());
    assert_eq!(std::fs::read(aside).unwrap(), b"local v2");
}

#[tokio::test]
async fn a_new_local_file_where_an_object_appeared_keeps_both() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;
    std::fs::write(tmp.path().join("m/out.csv"), b"mine").unwrap();
    // Someone else uploads the same name before this pass.
    mem.put("p/out.csv", &b"theirs"[..]);
    let stats = push(tmp.path(), store).await;
    assert_eq!(stats.conflicts, 1, "{stats:?}");
    assert_eq!(bytes(&mem, "p/out.csv").as_deref(), Some(&b"theirs"[..]));
    let listed = mem.answer_list("p/").unwrap();
    let kept = listed
        .iter()
        .find(|m| m.key.starts_with("p/out.conflict-"))
        .expect("the local version kept");
    assert_eq!(bytes(&mem, kept.key).as_deref(), Some(&b"mine"[..]));
}

#[tokio::test]
async fn a_file_identical_to_the_object_is_recorded_not_called_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;
    std::fs::write(tmp.path().join("m/same.txt"), b"same").unwrap();
    // As after a crash between an upload and its record: the object already has these bytes.
    mem.put("p/same.txt", &b"same"[..]);
    let stats = push(tmp.path(), store.clone()).await;
    assert_eq!(stats.conflicts, 0, "{stats:?}");
    assert_eq!(mem.answer_list("p/").unwrap().len(), 1);
    let again = push(tmp.path(), store).await;
    assert_eq!((again.uploaded, again.updated), (0, 0), "{again:?}");
}

/// Under SSE-KMS an object's ETag is not its MD5 (the in-memory store seals it as S3 does), so
/// the tool knows its own upload by the MD5 it stored with it: here one a crash kept from the
/// manifest.
#[tokio::test]
async fn under_kms_an_upload_the_manifest_missed_is_known_by_its_stored_md5() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;
    std::fs::write(tmp.path().join("m/out.csv"), b"x,y\n").unwrap();
    std::fs::write(tmp.path().join("m/other.csv"), b"x,z\n").unwrap();
    let kms = |md5: Option<String>| WriteOptions {
        bucket_owner_full_control: true,
        kms_key_id: writeable().kms_key_id,
        content_md5: md5,
    };
    // As the tool uploads them, then a crash before the record: out.csv by this tool (its MD5
    // stored), other.csv by another writer of the same bytes under KMS (no MD5 stored).
    let none = Precondition::None;
    let out = Some(md5_hex(b"x,y\n"));
    mem.answer_put("p/out.csv", Bytes::from_static(b"x,y\n"), &none, &kms(out))
        .unwrap();
    mem.answer_put(
        "p/other.csv",
        Bytes::from_static(b"x,z\n"),
        &none,
        &kms(None),
    )
    .unwrap();
    let sealed = mem.answer_head("p/out.csv").unwrap().unwrap().etag;
    assert_ne!(
        sealed,
        md5_hex(b"x,y\n"),
        "the store seals a KMS object's ETag"
    );

    let stats = push(tmp.path(), store.clone()).await;
    assert_eq!((stats.uploaded, stats.conflicts), (1, 1), "{stats:?}");
    assert_eq!(
        mem.answer_head("p/out.csv").unwrap().unwrap().etag,
        sealed,
        "out.csv recorded as it is, not uploaded again"
    );
    let again = push(tmp.path(), store).await;
    assert_eq!((again.uploaded, again.conflicts), (0, 0), "{again:?}");
}

/// Under SSE-KMS, answers lost after the server applied the writes (a PUT, a multipart
/// completion): the retry finds the object made, and the tool takes it for its own by the MD5
/// stored with it, in the same pass.
#[tokio::test]
async fn under_kms_a_lost_answer_to_an_applied_write_is_not_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/edit.txt", &b"v1"[..]);
    let faults = Faults::over(mem.clone());
    let store: Arc<dyn ObjectStore> = faults.clone();
    push(tmp.path(), store.clone()).await;
    let big = pattern(11 << 20, 7);
    std::fs::write(tmp.path().join("m/new.txt"), b"new").unwrap();
    std::fs::write(tmp.path().join("m/edit.txt"), b"v2").unwrap();
    std::fs::write(tmp.path().join("m/big.bin"), &big).unwrap();
    let lost = |e: &str| Some(Fault::FailAfter(StoreError::Transient(e.into())));
    let mut first = std::collections::HashSet::new();
    faults.set(move |r| match r {
        Request::Put { key, .. } | Request::Complete { key, .. }
            if first.insert(key.to_owned()) =>
        {
            lost("answer lost")
        }
        _ => None,
    });
    let stats = push(tmp.path(), store.clone()).await;

    assert_eq!(
        (stats.uploaded, stats.conflicts, stats.failed),
        (3, 0, 0),
        "{stats:?}"
    );
    assert_eq!(bytes(&mem, "p/new.txt").as_deref(), Some(&b"new"[..]));
    assert_eq!(bytes(&mem, "p/edit.txt").as_deref(), Some(&b"v2"[..]));
    assert!(bytes(&mem, "p/big.bin") == Some(big));
    assert_eq!(mem.answer_list("p/").unwrap().len(), 3, "no conflict copy");
    faults.set(|_| None);
    let again = push(tmp.path(), store).await;
    assert_eq!((again.uploaded, again.conflicts), (0, 0), "{again:?}");
}

#[tokio::test]
async fn a_delete_that_conflicts_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/shared.txt", &b"v1"[..]);
    mem.put("p/other.txt", &b"o"[..]);
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;
    std::fs::remove_file(tmp.path().join("m/shared.txt")).unwrap();
    mem.put("p/shared.txt", &b"v2 from a colleague"[..]);
    let stats = push(tmp.path(), store).await;
    assert_eq!(stats.remote_deleted, 0, "{stats:?}");
    assert_eq!(
        bytes(&mem, "p/shared.txt").as_deref(),
        Some(&b"v2 from a colleague"[..])
    );
    // The newer version is downloaded again.
    assert_eq!(
        std::fs::read(tmp.path().join("m/shared.txt")).unwrap(),
        b"v2 from a colleague"
    );
}

#[tokio::test]
async fn a_lost_local_copy_deletes_nothing_in_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/a", &b"a"[..]);
    mem.put("p/d/b", &b"b"[..]);
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;
    std::fs::remove_dir_all(tmp.path().join("m")).unwrap();
    let stats = push(tmp.path(), store).await;
    assert_eq!(stats.remote_deleted, 0, "{stats:?}");
    assert_eq!(mem.answer_list("p/").unwrap().len(), 2);
    assert_eq!(std::fs::read(tmp.path().join("m/d/b")).unwrap(), b"b");
}

#[tokio::test]
async fn a_read_only_mount_uploads_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/a", &b"a"[..]);
    let store: Arc<dyn ObjectStore> = mem.clone();
    pass(tmp.path(), store.clone()).await.unwrap();
    std::fs::write(tmp.path().join("m/new.txt"), b"local only").unwrap();
    std::fs::remove_file(tmp.path().join("m/a")).unwrap();
    pass(tmp.path(), store).await.unwrap();
    assert_eq!(bytes(&mem, "p/new.txt"), None);
    assert_eq!(bytes(&mem, "p/a").as_deref(), Some(&b"a"[..]));
}

#[tokio::test]
async fn a_large_file_uploads_in_parts_and_reads_back_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;
    // Over the 5 MiB minimum part: three parts (the engine's part size is smaller).
    let data = pattern(12 << 20, 3);
    std::fs::write(tmp.path().join("m/big.bin"), &data).unwrap();
    let stats = push(tmp.path(), store).await;
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert!(mem.bytes_of("p/big.bin").unwrap() == data);
    let etag = mem.answer_head("p/big.bin").unwrap().unwrap().etag;
    assert!(etag.to_string().ends_with("-3"), "a multipart ETag: {etag}");
}

#[tokio::test]
async fn a_multipart_upload_left_unfinished_is_aborted_at_the_next_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let faults = Faults::over(mem.clone());
    let store: Arc<dyn ObjectStore> = faults.clone();
    push(tmp.path(), store.clone()).await;
    let data = pattern(11 << 20, 5);
    std::fs::write(tmp.path().join("m/big.bin"), &data).unwrap();
    // The completion and the abort both fail for good: as a crash after the parts were sent.
    faults.set(|r| match r {
        Request::Complete { .. } | Request::Abort { .. } => Some(Fault::Fail(
            StoreError::Permanent("connection reset".into()),
        )),
        _ => None,
    });
    let stats = push(tmp.path(), store.clone()).await;
    assert_eq!(stats.failed, 1, "{stats:?}");
    assert_eq!(mem.answer_list_multipart("p/").unwrap().len(), 1);

    faults.set(|_| None);
    let stats = push(tmp.path(), store).await;
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert!(mem.bytes_of("p/big.bin").unwrap() == data);
    assert!(
        mem.answer_list_multipart("p/").unwrap().is_empty(),
        "the interrupted upload was aborted, the new one completed"
    );
}

#[tokio::test]
async fn a_409_on_a_multipart_completion_starts_the_upload_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let faults = Faults::over(mem.clone());
    let store: Arc<dyn ObjectStore> = faults.clone();
    push(tmp.path(), store.clone()).await;
    let data = pattern(11 << 20, 6);
    std::fs::write(tmp.path().join("m/big.bin"), &data).unwrap();
    let mut conflicts = 1;
    faults.set(move |r| match r {
        Request::Complete { .. } if conflicts > 0 => {
            conflicts -= 1;
            Some(Fault::Fail(StoreError::ConditionalConflict {
                key: "p/big.bin".into(),
            }))
        }
        _ => None,
    });
    let stats = push(tmp.path(), store).await;
    assert_eq!((stats.uploaded, stats.failed), (1, 0), "{stats:?}");
    assert!(mem.bytes_of("p/big.bin").unwrap() == data);
    assert!(mem.answer_list_multipart("p/").unwrap().is_empty());
}

/// The copies and PUTs the store has had.
fn writes(mem: &MemoryStore) -> (u64, u64) {
    let c = &mem.counters;
    (
        c.copies.load(Ordering::Relaxed),
        c.puts.load(Ordering::Relaxed),
    )
}

#[tokio::test]
async fn a_renamed_file_and_directory_are_copied_in_the_bucket_not_uploaded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/a.txt", &b"alpha"[..]);
    mem.put("p/d/x.csv", &b"x,1\n"[..]);
    mem.put("p/d/sub/y.bin", &b"y bytes"[..]);
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;

    let dir = tmp.path().join("m");
    std::fs::rename(dir.join("a.txt"), dir.join("b.txt")).unwrap();
    std::fs::rename(dir.join("d"), dir.join("e")).unwrap();
    let before = writes(&mem);
    let stats = push(tmp.path(), store.clone()).await;
    let (copies, puts) = writes(&mem);
    assert_eq!((copies - before.0, puts - before.1), (3, 0), "{stats:?}");
    assert_eq!(stats.uploaded, 3, "{stats:?}");

    let mut keys: Vec<String> = mem
        .answer_list("p/")
        .unwrap()
        .iter()
        .map(|m| m.key.to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["p/b.txt", "p/e/sub/y.bin", "p/e/x.csv"]);
    assert_eq!(bytes(&mem, "p/b.txt").as_deref(), Some(&b"alpha"[..]));
    assert_eq!(bytes(&mem, "p/e/x.csv").as_deref(), Some(&b"x,1\n"[..]));
    assert_eq!(
        bytes(&mem, "p/e/sub/y.bin").as_deref(),
        Some(&b"y bytes"[..])
    );
    assert_eq!(
        mem.written_with("p/b.txt"),
        Some(WriteOptions {
            bucket_owner_full_control: true,
            kms_key_id: writeable().kms_key_id,
            // A copy keeps its source's MD5: the test wrote the source without one.
            content_md5: None,
        })
    );
    // The local files stay as the user left them, and the next pass has nothing to do.
    assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b"alpha");
    let again = push(tmp.path(), store).await;
    assert_eq!(
        (
            again.uploaded,
            again.downloaded,
            again.updated,
            again.deleted
        ),
        (0, 0, 0, 0),
        "{again:?}"
    );
    assert!(!dir.join("a.txt").exists() && !dir.join("d").exists());
}

#[tokio::test]
async fn a_rename_whose_old_object_changed_meanwhile_keeps_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/a.txt", &b"mine"[..]);
    let faults = Faults::over(mem.clone());
    let store: Arc<dyn ObjectStore> = faults.clone();
    push(tmp.path(), store.clone()).await;

    let dir = tmp.path().join("m");
    std::fs::rename(dir.join("a.txt"), dir.join("b.txt")).unwrap();
    // A colleague rewrites the old object after the listing, just before the copy.
    let mut once = true;
    faults.set(move |r| match r {
        Request::Copy { .. } if std::mem::take(&mut once) => {
            Some(Fault::Before(Box::new(|m: &MemoryStore| {
                m.put("p/a.txt", &b"theirs"[..]);
            })))
        }
        _ => None,
    });
    let stats = push(tmp.path(), store.clone()).await;
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert_eq!(bytes(&mem, "p/b.txt").as_deref(), Some(&b"mine"[..]));
    assert_eq!(bytes(&mem, "p/a.txt").as_deref(), Some(&b"theirs"[..]));

    // The old path is a local deletion whose object changed: downloaded again, not deleted.
    let stats = push(tmp.path(), store).await;
    assert_eq!(stats.remote_deleted, 0, "{stats:?}");
    assert_eq!(bytes(&mem, "p/a.txt").as_deref(), Some(&b"theirs"[..]));
    assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"theirs");
    assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b"mine");
}

/// A rename copied in parts (a multipart upload, as S3 copies objects above 5 GiB) is
/// recorded in the manifest before the copy starts: one cut off stays recorded, and the next
/// pass aborts the key's open uploads, then copies, and ends the record.
#[tokio::test]
async fn a_copy_in_parts_is_recorded_until_it_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/big.bin", &b"a large object"[..]);
    mem.copy_in_parts_above(4);
    let faults = Faults::over(mem.clone());
    let store: Arc<dyn ObjectStore> = faults.clone();
    push(tmp.path(), store.clone()).await;

    let dir = tmp.path().join("m");
    std::fs::rename(dir.join("big.bin"), dir.join("moved.bin")).unwrap();
    // Every try of the copy is cut off, as a crash or an outage would.
    faults.set(|r| match r {
        Request::Copy { .. } => Some(Fault::Fail(StoreError::Transient("cut".into()))),
        _ => None,
    });
    let engine = engine_at(tmp.path(), 4, CancellationToken::new());
    let replica = engine.open_mount(writeable()).unwrap();
    let stats = engine.sync_mount(&replica, store.clone()).await.unwrap();
    assert_eq!(stats.failed, 1, "{stats:?}");
    let unfinished: Vec<String> = replica
        .copy
        .unfinished_uploads()
        .into_iter()
        .map(|(_, u)| u.key)
        .collect();
    assert_eq!(unfinished, ["p/moved.bin"]);
    drop((replica, engine));

    faults.set(|_| None);
    let engine = engine_at(tmp.path(), 4, CancellationToken::new());
    let replica = engine.open_mount(writeable()).unwrap();
    let stats = engine.sync_mount(&replica, store).await.unwrap();
    assert_eq!((stats.failed, stats.uploaded), (0, 1), "{stats:?}");
    assert!(replica.copy.unfinished_uploads().is_empty());
    assert_eq!(
        bytes(&mem, "p/moved.bin").as_deref(),
        Some(&b"a large object"[..])
    );
    assert_eq!(bytes(&mem, "p/big.bin"), None);
}

#[tokio::test]
async fn a_stopping_run_copies_a_renamed_file_too() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/a.txt", &b"alpha"[..]);
    let store: Arc<dyn ObjectStore> = mem.clone();
    push(tmp.path(), store.clone()).await;

    let dir = tmp.path().join("m");
    std::fs::rename(dir.join("a.txt"), dir.join("b.txt")).unwrap();
    let engine = engine_at(tmp.path(), 4, CancellationToken::new());
    let replica = engine.open_mount(writeable()).unwrap();
    let before = writes(&mem);
    let stats = engine.flush(&replica, store, None).await.unwrap();
    let (copies, puts) = writes(&mem);
    assert_eq!((copies - before.0, puts - before.1), (1, 0), "{stats:?}");
    assert_eq!(bytes(&mem, "p/b.txt").as_deref(), Some(&b"alpha"[..]));
    assert_eq!(bytes(&mem, "p/a.txt"), None);
}

/// Edits the local file when part 1 of its upload arrives, and holds every other part until
/// then.
struct EditAtPartOne {
    path: PathBuf,
    edited: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl StoreHook for EditAtPartOne {
    async fn upload_part(
        &self,
        inner: &MemoryStore,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        if part_number == 1 {
            let mut f = std::fs::File::options()
                .append(true)
                .open(&self.path)
                .unwrap();
            std::io::Write::write_all(&mut f, b"more").unwrap();
            self.edited.send_replace(true);
        } else {
            let mut edited = self.edited.subscribe();
            edited.wait_for(|e| *e).await.unwrap();
        }
        inner.answer_upload_part(key, upload_id, part_number, body)
    }
}

/// A file written while its multipart upload runs: the parts not sent yet are not sent (the
/// upload is given up at once, not finished and thrown away), nothing is completed, and the
/// next pass uploads the new bytes.
#[tokio::test]
async fn a_file_written_during_its_multipart_upload_stops_that_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m/big.bin");
    let mem = MemoryStore::new("bkt");
    let hook = EditAtPartOne {
        path: path.clone(),
        edited: tokio::sync::watch::channel(false).0,
    };
    let store: Arc<dyn ObjectStore> = Hooked::new(mem.clone(), hook);
    push(tmp.path(), store.clone()).await;
    // Eight parts, four at once: parts 5 to 8 start after the edit.
    let data = pattern(40 << 20, 7);
    std::fs::write(&path, &data).unwrap();
    let stats = push(tmp.path(), store).await;
    let parts = mem.counters.parts.load(Ordering::Relaxed);
    assert_eq!((stats.uploaded, stats.settling), (0, 1), "{stats:?}");
    assert!(
        parts <= 4,
        "{parts} parts sent of a file changed at the first"
    );
    assert!(mem.bytes_of("p/big.bin").is_none());
    assert!(mem.answer_list_multipart("p/").unwrap().is_empty());

    let stats = push(tmp.path(), mem.clone()).await;
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert!(mem.bytes_of("p/big.bin").unwrap() == std::fs::read(&path).unwrap());
}

/// A pass lists the bucket, files are uploaded meanwhile (the write-back of a mount), and the
/// pass goes on with its listing: what was uploaded after the listing was asked for is judged
/// by the next listing, so a new file is not taken for one deleted in the bucket, nor an
/// edited one replaced by the version the listing still shows.
#[tokio::test]
async fn a_listing_from_before_an_upload_neither_deletes_nor_replaces_what_was_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/notes.txt", &b"first notes\n"[..]);
    let store: Arc<dyn ObjectStore> = mem.clone();
    let engine = engine_at(tmp.path(), 4, CancellationToken::new());
    let replica = engine.open_mount(writeable()).unwrap();
    engine.sync_mount(&replica, store.clone()).await.unwrap();

    let listing = engine.list(&replica, &store).await.unwrap();
    let dir = tmp.path().join("m");
    std::fs::write(dir.join("new.txt"), b"new").unwrap();
    std::fs::write(dir.join("notes.txt"), b"edited\n").unwrap();
    let flushed = engine.flush(&replica, store.clone(), None).await.unwrap();
    assert_eq!(flushed.uploaded, 2);
    engine
        .apply(&replica, store.clone(), listing)
        .await
        .unwrap();

    assert_eq!(std::fs::read(dir.join("new.txt")).unwrap(), b"new");
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"edited\n");
    // The next pass, with a listing that shows both, changes nothing.
    engine.sync_mount(&replica, store).await.unwrap();
    assert_eq!(std::fs::read(dir.join("new.txt")).unwrap(), b"new");
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"edited\n");
    assert_eq!(
        bytes(&mem, "p/notes.txt").as_deref(),
        Some(&b"edited\n"[..])
    );
}
