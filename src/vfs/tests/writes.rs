//! Writes into a writeable mount, against the in-memory store: what the tree shows before and
//! after the write-back and the refreshes, what reaches the bucket, and what is never lost.

use super::*;
use crate::vfs::SetAttr;

/// A file system over two mounts of `store`: "m" (prefix `p/`, writeable) and "ro" (prefix
/// `r/`, read-only), their local copies in `dir`, listed once.
async fn writeable_vfs(store: Arc<MemoryStore>, dir: &std::path::Path) -> (Arc<Vfs>, Arc<Engine>) {
    let (vfs, engine) = writeable_vfs_top(store, dir).await;
    refresh(&vfs).await;
    (vfs, engine)
}

/// [`writeable_vfs`] as the first mount serves it before the full listings end: the mounts'
/// top directories listed.
async fn writeable_vfs_top(
    store: Arc<MemoryStore>,
    dir: &std::path::Path,
) -> (Arc<Vfs>, Arc<Engine>) {
    let engine = Arc::new(Setup::default().engine(dir));
    let mounts = [("m", "p/", true), ("ro", "r/", false)];
    let mut mounted = Vec::new();
    for (id, prefix, writeable) in mounts {
        let replica = engine
            .open_mount(crate::mounts::Mount {
                id: id.into(),
                prefix: prefix.into(),
                writeable,
                ..crate::testing::mount(prefix)
            })
            .unwrap();
        let store: Arc<dyn ObjectStore> = store.clone();
        mounted.push(Mounted { replica, store });
    }
    let vfs = Arc::new(Vfs::new(engine.clone(), mounted));
    for (i, m) in vfs.mounted().iter().enumerate() {
        let top = m.store.list_dir(&m.replica.mount.prefix).await.unwrap();
        vfs.show_top(i, &top);
    }
    (vfs, engine)
}

/// Lists both mounts again and updates the tree, as each interval does.
async fn refresh(vfs: &Vfs) -> Stale {
    let mut stale = Stale::default();
    for (i, m) in vfs.mounted().iter().enumerate() {
        let listing = m.store.list(&m.replica.mount.prefix).await.unwrap();
        let s = vfs.update(i, &listing);
        stale.entries.extend(s.entries);
        stale.inodes.extend(s.inodes);
    }
    stale
}

/// Uploads mount "m"'s changes, as its write-back does once they are quiet.
async fn write_back(vfs: &Vfs, engine: &Engine) -> crate::engine::PassStats {
    write_back_looking(vfs, engine, crate::engine::Look::Changed).await
}

/// [`write_back`] of the changes a round that looks at `look` finds.
async fn write_back_looking(
    vfs: &Vfs,
    engine: &Engine,
    look: crate::engine::Look,
) -> crate::engine::PassStats {
    let m = &vfs.mounted()[0];
    let view = crate::vfs::MountOf { vfs, mount: 0 };
    engine
        .write_back(&m.replica, m.store.clone(), false, look, &view)
        .await
        .unwrap()
}

fn dir_ino(vfs: &Vfs, path: &str) -> u64 {
    path_ino(vfs, path).unwrap()
}

/// Creates `name` in directory `dir` with `data`, and closes it.
fn create(vfs: &Vfs, dir: &str, name: &str, data: &[u8]) -> u64 {
    let (attr, opened) = vfs.create(dir_ino(vfs, dir), name, 0o644).unwrap();
    vfs.write(opened.fh, 0, data).unwrap();
    vfs.release(opened.fh);
    attr.ino
}

/// The keys under `prefix`, in order.
fn keys_in(mem: &MemoryStore, prefix: &str) -> Vec<String> {
    let listed = mem.answer_list(prefix).unwrap();
    listed.iter().map(|o| o.key.to_owned()).collect()
}

fn object(mem: &MemoryStore, key: &str) -> Option<Vec<u8>> {
    mem.bytes_of(key).map(|b| b.to_vec())
}

#[tokio::test]
async fn a_new_file_is_served_at_once_and_reaches_the_bucket_on_write_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/old.txt", &b"old"[..]);
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    vfs.mkdir(dir_ino(&vfs, "m"), "results", 0o755).unwrap();
    let ino = create(&vfs, "m/results", "out.csv", b"a,b\n1,2\n");

    // Before any upload, a refresh (its listing does not have it) keeps it.
    refresh(&vfs).await;
    assert_eq!(
        read_all(&vfs, "m/results/out.csv").await.unwrap(),
        b"a,b\n1,2\n"
    );
    assert_eq!(object(&mem, "p/results/out.csv"), None);

    let stats = write_back(&vfs, &engine).await;
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert_eq!(object(&mem, "p/results/out.csv").unwrap(), b"a,b\n1,2\n");
    // Listed as uploaded, it is the same inode, now a version in the bucket.
    refresh(&vfs).await;
    assert_eq!(path_ino(&vfs, "m/results/out.csv").unwrap(), ino);
    assert!(vfs.tree.read().local.is_empty(), "the listing caught up");
    assert_eq!(
        read_all(&vfs, "m/results/out.csv").await.unwrap(),
        b"a,b\n1,2\n"
    );
}

#[tokio::test]
async fn a_write_into_a_file_not_downloaded_yet_changes_only_its_range() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let original = crate::testing::pattern(3 * PART as usize + 17, 5);
    mem.put("p/big.bin", original.clone());
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    let ino = path_ino(&vfs, "m/big.bin").unwrap();

    let opened = vfs.open_write(ino, false).await.unwrap();
    vfs.write(opened.fh, 1000, b"XYZ").unwrap();
    // A reader sees what was written, before the close.
    let data = read_all(&vfs, "m/big.bin").await.unwrap();
    assert_eq!(&data[1000..1003], b"XYZ");
    // Open for writing: not uploaded half-way.
    assert_eq!(write_back(&vfs, &engine).await.uploaded, 0);
    vfs.release(opened.fh);

    write_back(&vfs, &engine).await;
    let mut expected = original;
    expected[1000..1003].copy_from_slice(b"XYZ");
    assert!(
        object(&mem, "p/big.bin").unwrap() == expected,
        "other bytes in the bucket"
    );
}

#[tokio::test]
async fn truncate_append_and_setattr_are_kept_and_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/log.txt", &b"line 1\n"[..]);
    mem.put("p/t.txt", &b"0123456789"[..]);
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;

    let log = path_ino(&vfs, "m/log.txt").unwrap();
    let opened = vfs.open_write(log, false).await.unwrap();
    let end = vfs.getattr(log).unwrap().size;
    vfs.write(opened.fh, end, b"line 2\n").unwrap();
    vfs.release(opened.fh);

    let t = path_ino(&vfs, "m/t.txt").unwrap();
    let set = SetAttr {
        size: Some(4),
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let attr = vfs.setattr(t, &set).await.unwrap();
    assert_eq!((attr.size, attr.perm), (4, 0o600));

    write_back(&vfs, &engine).await;
    assert_eq!(object(&mem, "p/log.txt").unwrap(), b"line 1\nline 2\n");
    assert_eq!(object(&mem, "p/t.txt").unwrap(), b"0123");
    refresh(&vfs).await;
    assert_eq!(
        vfs.getattr(t).unwrap().perm,
        0o600,
        "the mode is kept locally"
    );
}

#[tokio::test]
async fn a_deleted_object_stays_hidden_and_is_deleted_even_if_never_downloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/gone.txt", &b"bye"[..]);
    mem.put("p/d/x", &b"x"[..]);
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;

    vfs.remove(dir_ino(&vfs, "m"), "gone.txt", false).unwrap();
    vfs.remove(dir_ino(&vfs, "m/d"), "x", false).unwrap();
    vfs.remove(dir_ino(&vfs, "m"), "d", true).unwrap();
    // The listing still shows them: they stay hidden.
    refresh(&vfs).await;
    assert!(matches!(
        path_ino(&vfs, "m/gone.txt"),
        Err(FsError::NotFound)
    ));
    assert!(matches!(path_ino(&vfs, "m/d"), Err(FsError::NotFound)));

    let stats = write_back(&vfs, &engine).await;
    assert_eq!(stats.remote_deleted, 2, "{stats:?}");
    assert_eq!(object(&mem, "p/gone.txt"), None);
    assert_eq!(object(&mem, "p/d/x"), None);
    refresh(&vfs).await;
    assert!(vfs.tree.read().local.is_empty(), "the listing caught up");
    assert!(matches!(
        path_ino(&vfs, "m/gone.txt"),
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn a_directory_rename_moves_every_object_under_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/runs/a.txt", &b"a"[..]);
    mem.put("p/runs/sub/b.txt", &b"b"[..]);
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    let ino = path_ino(&vfs, "m/runs/sub/b.txt").unwrap();

    let m = dir_ino(&vfs, "m");
    vfs.rename(m, "runs", m, "archive", false).await.unwrap();
    assert_eq!(
        path_ino(&vfs, "m/archive/sub/b.txt").unwrap(),
        ino,
        "inodes stay"
    );
    refresh(&vfs).await;
    assert!(matches!(path_ino(&vfs, "m/runs"), Err(FsError::NotFound)));
    assert_eq!(read_all(&vfs, "m/archive/sub/b.txt").await.unwrap(), b"b");

    write_back(&vfs, &engine).await;
    let keys = keys_in(&mem, "p/");
    assert_eq!(keys, ["p/archive/a.txt", "p/archive/sub/b.txt"]);
    assert_eq!(object(&mem, "p/archive/sub/b.txt").unwrap(), b"b");
}

#[tokio::test]
async fn a_directory_rename_before_the_full_listing_waits_for_it_and_moves_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/runs/a.txt", &b"a"[..]);
    mem.put("p/runs/sub/deep/b.txt", &b"b"[..]);
    let (vfs, engine) = writeable_vfs_top(mem.clone(), tmp.path()).await;
    let m = dir_ino(&vfs, "m");
    // `rmdir` of a directory not listed yet: not empty in the bucket, so not empty here.
    let runs = vfs.unlisted_child(m, "runs").expect("not listed yet");
    vfs.list_dir(runs).await.unwrap();
    assert!(matches!(
        vfs.remove(m, "runs", true),
        Err(FsError::NotEmpty)
    ));

    // Only `runs` is listed: the move waits until all below it is known.
    let rename = {
        let vfs = vfs.clone();
        tokio::spawn(async move { vfs.rename(m, "runs", m, "archive", false).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!rename.is_finished(), "moved before the listing ended");
    refresh(&vfs).await;
    rename.await.unwrap().unwrap();
    assert_eq!(
        read_all(&vfs, "m/archive/sub/deep/b.txt").await.unwrap(),
        b"b"
    );

    write_back(&vfs, &engine).await;
    let keys = keys_in(&mem, "p/");
    assert_eq!(keys, ["p/archive/a.txt", "p/archive/sub/deep/b.txt"]);
}

#[tokio::test]
async fn changes_an_earlier_run_left_show_before_the_full_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/study/old.txt", &b"old"[..]);
    mem.put("p/gone.txt", &b"gone"[..]);
    {
        let (vfs, _engine) = writeable_vfs(mem.clone(), tmp.path()).await;
        create(&vfs, "m/study", "new.txt", b"new");
        vfs.remove(dir_ino(&vfs, "m"), "gone.txt", false).unwrap();
        // The run ends before its write-back.
    }
    let (vfs, _engine) = writeable_vfs_top(mem.clone(), tmp.path()).await;
    let m = dir_ino(&vfs, "m");
    let names: Vec<String> = vfs
        .readdir(m, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.2.to_string())
        .collect();
    assert_eq!(names, [".", "..", "study"], "a file deleted here came back");
    let study = vfs.lookup_now(m, "study").unwrap().unwrap().ino;
    assert!(vfs.lookup_now(study, "new.txt").is_some_and(|a| a.is_ok()));
    assert_eq!(read_all(&vfs, "m/study/new.txt").await.unwrap(), b"new");
    assert_eq!(vfs.lookup(study, "old.txt").await.unwrap().size, 3);
}

#[tokio::test]
async fn the_editor_pattern_replaces_the_file_and_leaves_no_temporary_object() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/notes.txt", &b"v1"[..]);
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    let m = dir_ino(&vfs, "m");
    create(&vfs, "m", "notes.txt.swp", b"v2, edited");
    vfs.rename(m, "notes.txt.swp", m, "notes.txt", false)
        .await
        .unwrap();
    write_back(&vfs, &engine).await;
    let keys = keys_in(&mem, "p/");
    assert_eq!(keys, ["p/notes.txt"]);
    assert_eq!(object(&mem, "p/notes.txt").unwrap(), b"v2, edited");
}

#[tokio::test]
async fn read_only_mounts_refuse_writes_and_renames_between_mounts_are_exdev() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("r/ref.txt", &b"reference"[..]);
    mem.put("p/mine.txt", &b"mine"[..]);
    let (vfs, _engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    let (ro, m) = (dir_ino(&vfs, "ro"), dir_ino(&vfs, "m"));
    let errno = |r: Result<(), FsError>| r.unwrap_err().errno();
    assert_eq!(
        vfs.create(ro, "new", 0o644).unwrap_err().errno(),
        libc::EROFS
    );
    assert_eq!(vfs.mkdir(ro, "d", 0o755).unwrap_err().errno(), libc::EROFS);
    assert_eq!(errno(vfs.remove(ro, "ref.txt", false)), libc::EROFS);
    let r = path_ino(&vfs, "ro/ref.txt").unwrap();
    assert_eq!(
        vfs.open_write(r, false).await.unwrap_err().errno(),
        libc::EROFS
    );
    assert_eq!(
        errno(vfs.rename(m, "mine.txt", ro, "x", false).await),
        libc::EXDEV
    );
    assert_eq!(
        errno(vfs.rename(ro, "ref.txt", m, "x", false).await),
        libc::EXDEV
    );
    assert_eq!(object(&mem, "r/ref.txt").unwrap(), b"reference");
}

#[tokio::test]
async fn fsync_returns_once_the_file_is_in_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let (vfs, _engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    let (_, opened) = vfs.create(dir_ino(&vfs, "m"), "model.pt", 0o644).unwrap();
    vfs.write(opened.fh, 0, b"weights").unwrap();
    vfs.fsync(opened.fh).await.unwrap();
    assert_eq!(object(&mem, "p/model.pt").unwrap(), b"weights");
    vfs.release(opened.fh);
}

#[tokio::test]
async fn a_remote_change_while_a_file_is_written_keeps_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/report.csv", &b"v1"[..]);
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    let m = &vfs.mounted()[0];
    engine
        .sync_mount(&m.replica, m.store.clone())
        .await
        .unwrap();
    let ino = path_ino(&vfs, "m/report.csv").unwrap();
    let opened = vfs.open_write(ino, true).await.unwrap();
    vfs.write(opened.fh, 0, b"local edit").unwrap();

    // A colleague's version arrives while the file is open: the pass does not replace it.
    mem.put("p/report.csv", &b"remote edit"[..]);
    engine
        .sync_mount(&m.replica, m.store.clone())
        .await
        .unwrap();
    assert_eq!(read_all(&vfs, "m/report.csv").await.unwrap(), b"local edit");
    vfs.release(opened.fh);

    let stats = write_back(&vfs, &engine).await;
    assert_eq!(stats.conflicts, 1, "{stats:?}");
    let listing = mem.answer_list("p/").unwrap();
    assert_eq!(listing.len(), 2, "{listing:?}");
    assert_eq!(object(&mem, "p/report.csv").unwrap(), b"remote edit");
    let kept = listing.iter().find(|o| o.key != "p/report.csv").unwrap();
    assert!(kept.key.starts_with("p/report.conflict-") && kept.key.ends_with(".csv"));
    assert_eq!(object(&mem, kept.key).unwrap(), b"local edit");
    // Both show in the mount after the next listing. The inode of the file written here now
    // holds the remote version: the kernel is told to forget what it kept of it.
    let stale = refresh(&vfs).await;
    assert_eq!(path_ino(&vfs, "m/report.csv").unwrap(), ino);
    assert_eq!(stale.inodes, [ino]);
    assert_eq!(
        read_all(&vfs, "m/report.csv").await.unwrap(),
        b"remote edit"
    );
    let name = kept.key.strip_prefix("p/").unwrap();
    assert_eq!(
        read_all(&vfs, &format!("m/{name}")).await.unwrap(),
        b"local edit"
    );
}

#[tokio::test]
async fn a_copy_emptied_file_by_file_through_the_mount_deletes_every_object() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/a.txt", &b"a"[..]);
    mem.put("p/b.txt", &b"b"[..]);
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    let m = &vfs.mounted()[0];
    engine
        .sync_mount(&m.replica, m.store.clone())
        .await
        .unwrap();
    let dir = dir_ino(&vfs, "m");
    vfs.remove(dir, "a.txt", false).unwrap();
    vfs.remove(dir, "b.txt", false).unwrap();
    // A pass, as each interval runs one: the emptied copy is not taken for a lost one.
    let stats = engine
        .sync_mount(&m.replica, m.store.clone())
        .await
        .unwrap();
    assert_eq!(stats.remote_deleted, 2, "{stats:?}");
    assert!(mem.answer_list("p/").unwrap().is_empty());
    refresh(&vfs).await;
    assert!(matches!(path_ino(&vfs, "m/a.txt"), Err(FsError::NotFound)));
}

#[tokio::test]
async fn a_new_file_stays_shown_when_a_listing_stops_showing_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let (vfs, _engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    vfs.mkdir(dir_ino(&vfs, "m"), "out", 0o755).unwrap();
    create(&vfs, "m/out", "table.csv", b"x\n1\n");
    // A listing with the directory's marker (the directory override ends), then one without
    // it (the marker deleted once the directory held a file), before the file is uploaded.
    let marker = mem.put("p/out/", &b""[..]);
    vfs.update(0, &vec![marker].into());
    vfs.update(0, &Listing::new());
    assert_eq!(read_all(&vfs, "m/out/table.csv").await.unwrap(), b"x\n1\n");
}

#[tokio::test]
async fn a_directory_emptied_only_in_the_cache_gets_no_folder_marker() {
    // "results" holds two objects; only table.bin is downloaded. Deleting it empties the cache's
    // directory, not the mount's: other.bin is still there, only listed.
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/results/table.bin", &b"table"[..]);
    mem.put("p/results/other.bin", &b"other"[..]);
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    assert_eq!(
        read_all(&vfs, "m/results/table.bin").await.unwrap(),
        b"table"
    );
    assert!(
        tmp.path().join("m/results/table.bin").is_file(),
        "downloaded"
    );
    assert!(
        !tmp.path().join("m/results/other.bin").exists(),
        "not downloaded"
    );

    vfs.remove(dir_ino(&vfs, "m/results"), "table.bin", false)
        .unwrap();
    let stats = write_back(&vfs, &engine).await;
    assert_eq!(stats.remote_deleted, 1, "{stats:?}");
    assert_eq!(keys_in(&mem, "p/"), ["p/results/other.bin"], "no marker");
    refresh(&vfs).await;
    assert_eq!(
        read_all(&vfs, "m/results/other.bin").await.unwrap(),
        b"other"
    );
    // Nothing is left to upload: `status` says so too.
    let unsaved = crate::commands::status::unsaved(tmp.path(), "m").unwrap();
    assert!(unsaved.changes.is_empty(), "{:?}", unsaved.changes);
    assert_eq!(write_back(&vfs, &engine).await.uploaded, 0);

    // A directory the mount shows empty still gets its marker.
    vfs.mkdir(dir_ino(&vfs, "m"), "new", 0o755).unwrap();
    write_back(&vfs, &engine).await;
    assert_eq!(keys_in(&mem, "p/"), ["p/new/", "p/results/other.bin"]);
}

#[tokio::test]
async fn a_round_looks_at_the_changed_paths_and_a_walk_finds_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/keep.txt", &b"keep"[..]);
    let (vfs, engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    create(&vfs, "m", "through.txt", b"through the mount");
    // A file the file system does not know of (as a conflict's local version whose upload
    // failed is): only a walk finds it.
    std::fs::write(tmp.path().join("m/beside.txt"), b"beside").unwrap();

    let stats = write_back(&vfs, &engine).await;
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert_eq!(keys_in(&mem, "p/"), ["p/keep.txt", "p/through.txt"]);

    let stats = write_back_looking(&vfs, &engine, crate::engine::Look::Everything).await;
    assert_eq!(stats.uploaded, 1, "{stats:?}");
    assert_eq!(object(&mem, "p/beside.txt").unwrap(), b"beside");
    assert_eq!(object(&mem, "p/through.txt").unwrap(), b"through the mount");
}

#[tokio::test]
async fn a_remount_served_from_its_cache_makes_no_folder_marker_before_the_bucket_is_listed() {
    // A run stopped between the delete of the one downloaded file of "results" and its
    // write-back: the cache's "results" is empty, and other.bin is only in the bucket.
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/results/table.bin", &b"table"[..]);
    mem.put("p/results/other.bin", &b"other"[..]);
    let (vfs, _engine) = writeable_vfs(mem.clone(), tmp.path()).await;
    assert_eq!(
        read_all(&vfs, "m/results/table.bin").await.unwrap(),
        b"table"
    );
    vfs.remove(dir_ino(&vfs, "m/results"), "table.bin", false)
        .unwrap();
    assert!(tmp.path().join("m/results").is_dir());
    // (The cache as that run left it, for the next: this run still holds its lock.)
    let next = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(tmp.path().join("."))
        .arg(next.path())
        .status()
        .unwrap();
    assert!(copied.success());

    // The next run serves what its cache holds until the bucket is listed.
    let tmp = next;
    let (vfs, engine) = writeable_vfs_top(mem.clone(), tmp.path()).await;
    for (i, m) in vfs.mounted().iter().enumerate() {
        let cached = m.replica.copy.cached_listing(&m.replica.mount.prefix);
        vfs.show_cached(i, &cached);
    }
    let stats = write_back(&vfs, &engine).await;
    assert_eq!(stats.remote_deleted, 1, "{stats:?}");
    assert_eq!(keys_in(&mem, "p/"), ["p/results/other.bin"], "no marker");

    refresh(&vfs).await;
    write_back(&vfs, &engine).await;
    assert_eq!(keys_in(&mem, "p/"), ["p/results/other.bin"], "no marker");
    assert_eq!(
        read_all(&vfs, "m/results/other.bin").await.unwrap(),
        b"other"
    );
    let unsaved = crate::commands::status::unsaved(tmp.path(), "m").unwrap();
    assert!(unsaved.changes.is_empty(), "{:?}", unsaved.changes);
}
