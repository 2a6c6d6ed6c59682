//! Tests of the file system against the in-memory store: what reads return, and when the
//! engine fetches what they need.

use super::*;

use crate::store::StoreError;
use crate::store::memory::{Fault, Faults, MemoryStore};
use crate::testing::{Held, PART, Setup, named_runtime, occupy};
use std::sync::atomic::Ordering;

/// A file system over mount "m" (prefix `p/`) of `store`, its local copy in `dir`, listed once.
async fn vfs_over(store: Arc<dyn ObjectStore>, dir: &std::path::Path) -> (Arc<Vfs>, Arc<Engine>) {
    Setup::default().vfs(store, dir).await
}

async fn store_list(vfs: &Vfs) -> Listing {
    let s = &vfs.mounted()[0];
    s.store.list(&s.replica.mount.prefix).await.unwrap()
}

fn path_ino(vfs: &Vfs, path: &str) -> Result<u64, FsError> {
    let mut ino = ROOT;
    for name in path.split('/') {
        ino = vfs.lookup_now(ino, name).expect("listed whole")?.ino;
    }
    Ok(ino)
}

async fn read_all(vfs: &Vfs, path: &str) -> Result<Vec<u8>, FsError> {
    let fh = vfs.open(path_ino(vfs, path)?).await?.fh;
    let data = vfs.read(fh, 0, 1 << 24).await?;
    vfs.release(fh);
    Ok(data)
}

#[tokio::test]
async fn lists_before_downloading_and_reads_on_demand() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    store.put("p/a/b.txt", &b"hello"[..]);
    store.put("p/big", vec![7u8; 300_000]);
    store.put("other/x", &b"not mine"[..]);
    let (vfs, _engine) = vfs_over(store.clone(), tmp.path()).await;

    let names: Vec<String> = vfs
        .readdir(path_ino(&vfs, "m").unwrap(), 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.2.to_string())
        .collect();
    assert_eq!(names, [".", "..", "a", "big"]);
    assert_eq!(
        vfs.getattr(path_ino(&vfs, "m/big").unwrap()).unwrap().size,
        300_000
    );
    assert_eq!(store.gets(), 0, "listing alone downloads nothing");

    assert_eq!(read_all(&vfs, "m/a/b.txt").await.unwrap(), b"hello");
    assert_eq!(read_all(&vfs, "m/big").await.unwrap(), vec![7u8; 300_000]);
    assert!(matches!(path_ino(&vfs, "m/x"), Err(FsError::NotFound)));

    // Cached now: opening again needs no GET.
    let gets = store.gets();
    assert_eq!(read_all(&vfs, "m/big").await.unwrap(), vec![7u8; 300_000]);
    assert_eq!(store.gets(), gets);
}

#[tokio::test]
async fn a_changed_object_gets_a_new_inode_and_open_handles_keep_their_version() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    store.put("p/f", &b"one"[..]);
    store.put("p/gone", &b"bye"[..]);
    store.put("p/same", &b"same"[..]);
    let (vfs, _engine) = vfs_over(store.clone(), tmp.path()).await;
    let ino = path_ino(&vfs, "m/f").unwrap();
    let same = path_ino(&vfs, "m/same").unwrap();
    let first = vfs.open(ino).await.unwrap();
    assert!(!first.keep_cache, "nothing cached yet");
    assert!(
        vfs.open(ino).await.unwrap().keep_cache,
        "same version again"
    );
    let fh = first.fh;

    store.put("p/f", &b"two!"[..]);
    store.delete("p/gone");
    store.put("p/new", &b"new"[..]);
    let stale = vfs.update(0, &store_list(&vfs).await);
    // The kernel is told to forget exactly the names that changed, new ones included (it may
    // remember them as missing).
    let top = path_ino(&vfs, "m").unwrap();
    let names: Vec<_> = stale
        .entries
        .iter()
        .map(|(p, n)| (*p, n.as_str()))
        .collect();
    assert_eq!(names, [(top, "f"), (top, "gone"), (top, "new")]);

    assert_eq!(path_ino(&vfs, "m/same").unwrap(), same, "inode is stable");
    let changed = path_ino(&vfs, "m/f").unwrap();
    assert_ne!(changed, ino, "a new version is a new inode");
    assert!(matches!(path_ino(&vfs, "m/gone"), Err(FsError::NotFound)));
    assert_eq!(read_all(&vfs, "m/new").await.unwrap(), b"new");
    let reopened = vfs.open(changed).await.unwrap();
    assert!(!reopened.keep_cache, "nothing cached for the new inode yet");
    assert_eq!(vfs.read(reopened.fh, 0, 100).await.unwrap(), b"two!");
    assert_eq!(vfs.getattr(changed).unwrap().size, 4);
    // The handle opened before the change still reads, and stats, the version it opened,
    // until the kernel forgets the old inode.
    assert_eq!(vfs.read(fh, 0, 100).await.unwrap(), b"one");
    assert_eq!(vfs.getattr(ino).unwrap().size, 3);
    vfs.forget(ino);
    assert!(matches!(vfs.getattr(ino), Err(FsError::NotFound)));
}

#[tokio::test]
async fn an_inode_number_is_given_again_only_once_the_kernel_has_forgotten_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    store.put("p/held", &b"one"[..]);
    store.put("p/unseen", &b"one"[..]);
    let (vfs, _engine) = vfs_over(store.clone(), tmp.path()).await;
    let held = path_ino(&vfs, "m/held").unwrap();
    let unseen = path_ino(&vfs, "m/unseen").unwrap();
    vfs.looked_up(held);

    // Both change, again and again: each version a new inode.
    let mut given = vec![held, unseen];
    for round in 0..3 {
        let data = format!("version {round}");
        store.put("p/held", data.as_bytes().to_vec());
        store.put("p/unseen", data.as_bytes().to_vec());
        vfs.update(0, &store_list(&vfs).await);
        for path in ["m/held", "m/unseen"] {
            let ino = path_ino(&vfs, path).unwrap();
            assert!(!given.contains(&ino), "{path}: {ino} given twice");
            given.push(ino);
            assert_eq!(read_all(&vfs, path).await.unwrap(), data.as_bytes());
        }
        // The inode the kernel holds still shows its version.
        assert_eq!(vfs.getattr(held).unwrap().size, 3);
    }
    vfs.forget(held);
    assert!(matches!(vfs.getattr(held), Err(FsError::NotFound)));
    store.put("p/new", &b"new"[..]);
    vfs.update(0, &store_list(&vfs).await);
    let new = path_ino(&vfs, "m/new").unwrap();
    assert!(!given.contains(&new), "{new} given twice");
    assert_eq!(vfs.getattr(new).unwrap().size, 3);
    assert_eq!(read_all(&vfs, "m/new").await.unwrap(), b"new");
}

#[tokio::test]
async fn a_failed_download_fails_the_open() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/bad", &b"x"[..]);
    let store = Faults::over(mem);
    let (vfs, _engine) = vfs_over(store.clone(), tmp.path()).await;
    store.set(|_| Some(Fault::Fail(StoreError::Permanent("denied".into()))));
    let err = read_all(&vfs, "m/bad").await.unwrap_err();
    assert!(matches!(err, FsError::Download(_)), "{err:?}");
    assert!(err.to_string().contains("\"p/bad\""), "{err}");
}

/// A file system over mount "m" (prefix "p/") of `mem`, with `part`-byte parts: passes on
/// `bulk`, the fetches of waiting readers on `readers`.
fn vfs_on(
    bulk: &tokio::runtime::Runtime,
    readers: &tokio::runtime::Runtime,
    mem: Arc<MemoryStore>,
    dir: &std::path::Path,
    part: u64,
) -> Arc<Vfs> {
    let setup = Setup {
        part_size: part,
        readers: Some(readers.handle().clone()),
        ..Setup::default()
    };
    bulk.block_on(setup.vfs(mem, dir)).0
}

/// A FUSE thread opens a large file that is not downloaded yet by itself: with every worker
/// of both runtimes busy, `open_now` stages the file and returns a handle whose reads will
/// wait for their ranges. A small file is downloaded before it opens, so its open has to wait
/// (`None`); a file in the cache opens at once too.
#[test]
fn a_large_file_opens_on_the_calling_thread_with_every_runtime_busy() {
    let (bulk, readers) = (named_runtime("test-bulk"), named_runtime("test-reader"));
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let part = 2 << 20;
    let data: Vec<u8> = (0..3 * part).map(|i| (i % 239) as u8).collect();
    mem.put("p/big", data.clone());
    mem.put("p/small", b"small".to_vec());
    let vfs = vfs_on(&bulk, &readers, mem, tmp.path(), part);
    let (release_bulk, release_readers) = (occupy(&bulk), occupy(&readers));

    let opened = vfs
        .open_now(path_ino(&vfs, "m/big").unwrap())
        .expect("a large file opens without waiting")
        .unwrap();
    assert!(opened.partial);
    assert!(vfs.read_now(opened.fh, 3 * part - 10, 10).is_none());
    assert!(vfs.open_now(path_ino(&vfs, "m/small").unwrap()).is_none());

    drop((release_bulk, release_readers));
    let v = vfs.clone();
    let got = readers
        .block_on(async move { v.read(opened.fh, 3 * part - 10, 10).await })
        .unwrap();
    assert!(got == data[data.len() - 10..]);
    bulk.block_on(wait_until_cached(&vfs, "big"));
    vfs.release(opened.fh);
    let cached = vfs
        .open_now(path_ino(&vfs, "m/big").unwrap())
        .expect("a cached file opens without waiting")
        .unwrap();
    assert!(!cached.partial);
    assert!(std::fs::read(tmp.path().join("m/big")).unwrap() == data);
    readers.shutdown_background();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handle_never_mixes_two_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    let old: Vec<u8> = vec![1; (20 * PART) as usize];
    mem.put("p/big", old.clone());
    let held = Held::new(mem.clone(), |key, start| {
        key == "p/big" && ![10 * PART, 5 * PART].contains(&start)
    });
    let (vfs, _engine) = vfs_over(held.clone(), tmp.path()).await;
    let ino = path_ino(&vfs, "m/big").unwrap();
    let opened = vfs.open(ino).await.unwrap();
    // Random reads (not at the handle's position), so nothing is prefetched.
    let here = 10 * PART;
    assert_eq!(vfs.read(opened.fh, here, 10).await.unwrap(), vec![1; 10]);

    mem.put("p/big", vec![2; (20 * PART) as usize]);
    // A part not fetched before the change cannot be read from this version any more.
    let err = vfs.read(opened.fh, 5 * PART, 10).await.unwrap_err();
    assert!(err.to_string().contains("changed"), "{err}");
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // What was read of the old version still reads the same.
    assert_eq!(vfs.read(opened.fh, here, 10).await.unwrap(), vec![1; 10]);
    held.gate.add_permits(1000);
    vfs.release(opened.fh);

    // After the refresh, the file opens at its new version, whole.
    vfs.update(0, &store_list(&vfs).await);
    assert_eq!(
        read_all(&vfs, "m/big").await.unwrap(),
        vec![2; (20 * PART) as usize]
    );
}

/// A read of bytes of an object deleted since the file was opened fails with ENOENT, as a
/// read of a file removed under its reader; what was read before still reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_of_an_object_deleted_since_the_open_fails_with_enoent() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new("bkt");
    mem.put("p/big", vec![1; (20 * PART) as usize]);
    let held = Held::new(mem.clone(), |key, start| {
        key == "p/big" && ![10 * PART, 5 * PART].contains(&start)
    });
    let (vfs, _engine) = vfs_over(held.clone(), tmp.path()).await;
    let opened = vfs.open(path_ino(&vfs, "m/big").unwrap()).await.unwrap();
    let here = 10 * PART;
    assert_eq!(vfs.read(opened.fh, here, 10).await.unwrap(), vec![1; 10]);

    mem.delete("p/big");
    let err = vfs.read(opened.fh, 5 * PART, 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
    assert_eq!(vfs.read(opened.fh, here, 10).await.unwrap(), vec![1; 10]);
    held.gate.add_permits(1000);
    vfs.release(opened.fh);
}

/// The inode at `path`, each name looked for in the bucket where the tree cannot tell.
async fn lookup_path(vfs: &Vfs, path: &str) -> Result<u64, FsError> {
    let mut ino = ROOT;
    for name in path.split('/') {
        ino = vfs.lookup(ino, name).await?.ino;
    }
    Ok(ino)
}

fn names(vfs: &Vfs, ino: u64) -> Vec<String> {
    vfs.readdir(ino, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.2.to_string())
        .collect()
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_mount_not_listed_whole_yet_finds_what_readers_ask_for() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    store.put("p/top.txt", &b"top"[..]);
    store.put("p/a/x.txt", &b"x"[..]);
    store.put("p/a/b/c.txt", &b"deep"[..]);
    let gone = store.put("p/a/b/gone.txt", &b"gone"[..]);
    store.put("other/y", &b"not mine"[..]);
    let (vfs, _engine) = Setup::default().vfs_top(store.clone(), tmp.path()).await;
    let c = &store.counters;

    // The top directory was listed before mounting.
    let m = path_ino(&vfs, "m").unwrap();
    assert_eq!(names(&vfs, m), [".", "..", "a", "top.txt"]);
    let a = vfs.lookup_now(m, "a").unwrap().unwrap();
    assert_eq!(a.kind, Kind::Dir);
    let a = a.ino;
    assert!(!vfs.dir_ready(a));
    assert!(
        vfs.lookup_now(a, "x.txt").is_none(),
        "a directory not listed yet cannot say what it holds"
    );

    // A file: found by one HEAD, its directory still not listed.
    assert_eq!(vfs.lookup(a, "x.txt").await.unwrap().size, 1);
    assert_eq!((count(&c.heads), count(&c.dir_lists)), (1, 1));
    assert!(!vfs.dir_ready(a));
    // A name the bucket does not have: its directory listed, which then answers alone.
    assert!(matches!(
        vfs.lookup(a, "nope").await,
        Err(FsError::NotFound)
    ));
    assert_eq!((count(&c.heads), count(&c.dir_lists)), (2, 2));
    assert!(vfs.dir_ready(a));
    assert!(matches!(
        vfs.lookup_now(a, "nope"),
        Some(Err(FsError::NotFound))
    ));
    assert_eq!(names(&vfs, a), [".", "..", "b", "x.txt"]);
    // Opening a directory lists it once, however many ask.
    let b = vfs.lookup_now(a, "b").unwrap().unwrap().ino;
    let (one, two) = tokio::join!(vfs.list_dir(b), vfs.list_dir(b));
    one.unwrap();
    two.unwrap();
    assert_eq!(count(&c.dir_lists), 3);
    assert_eq!(names(&vfs, b), [".", "..", "c.txt", "gone.txt"]);
    // Read before the full listing.
    let fh = vfs.open(lookup_path(&vfs, "m/a/b/c.txt").await.unwrap());
    let fh = fh.await.unwrap().fh;
    assert_eq!(vfs.read(fh, 0, 100).await.unwrap(), b"deep");
    vfs.release(fh);
    assert_eq!(count(&c.lists), 0, "nothing was listed whole");

    // The full listing replaces what was asked for: an object deleted meanwhile goes, every
    // directory answers from the tree, and the inodes of what stayed are the same.
    store.delete("p/a/b/gone.txt");
    store.put("p/z/new.txt", &b"new"[..]);
    let full = store.list("p/").await.unwrap();
    vfs.update(0, &full);
    assert_eq!(names(&vfs, b), [".", "..", "c.txt"]);
    assert_eq!(path_ino(&vfs, "m/a/b").unwrap(), b);
    assert!(path_ino(&vfs, "m/z/new.txt").is_ok());
    assert!(matches!(
        vfs.lookup_now(m, "nothing"),
        Some(Err(FsError::NotFound))
    ));
    // A directory listing that ends after the full listing adds nothing.
    let late = crate::store::DirListing {
        objects: vec![gone],
        prefixes: Vec::new(),
    };
    vfs.show_dir(0, "a/b", &late);
    assert!(matches!(
        path_ino(&vfs, "m/a/b/gone.txt"),
        Err(FsError::NotFound)
    ));
}

/// Waits (bounded) until file `path` of the mount is complete in the local copy.
async fn wait_until_cached(vfs: &Vfs, path: &str) {
    let s = &vfs.mounted()[0];
    crate::testing::wait_until_cached(&s.replica, s.store.as_ref(), path).await;
}

mod writes;

#[tokio::test]
async fn a_large_directory_reads_whole_a_reply_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    for i in 0..1_300 {
        store.put(&format!("p/d/f-{i:04}"), &b"x"[..]);
    }
    store.put("p/d/a-1", &b"x"[..]);
    store.put("p/d/a/x", &b"x"[..]);
    let (vfs, _engine) = vfs_over(store.clone(), tmp.path()).await;
    let d = path_ino(&vfs, "m/d").unwrap();

    let mut expected = vec![".".to_string(), "..".into(), "a".into(), "a-1".into()];
    expected.extend((0..1_300).map(|i| format!("f-{i:04}")));
    // Replies that hold 100 entries each, as the kernel asks for them: from the place after
    // the last entry of the reply before. As with a FUSE reply, an entry that finds the reply
    // full is not in it (`true`).
    let mut read = Vec::new();
    loop {
        let offset = read.len() as u64;
        let mut reply = Vec::new();
        vfs.read_dir(d, offset, |ino, at, _, name| {
            assert_eq!(at, offset + reply.len() as u64, "places in order");
            if reply.len() == 100 {
                return true;
            }
            reply.push((ino, name.to_string()));
            false
        })
        .unwrap();
        if reply.is_empty() {
            break;
        }
        read.extend(reply);
    }
    let names: Vec<&str> = read.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, expected);
    assert_eq!(read[10].0, path_ino(&vfs, "m/d/f-0006").unwrap());
}

/// A refresh as mount mode makes it once the tree shows a full listing: the parts that the
/// tree and the cache already hold left out as they arrive. Returns what was left out.
async fn refresh_leaving_out(vfs: &Vfs, engine: &Engine) -> crate::unchanged::Unchanged {
    let m = &vfs.mounted()[0];
    let unchanged =
        |scope: crate::unchanged::Scope<'_>, part: &Listing| vfs.holds_part(0, scope, part);
    let (listing, left_out) = engine
        .list_except(&m.replica, &m.store, unchanged)
        .await
        .unwrap();
    vfs.update_with(0, &listing, &left_out);
    let stats = engine
        .apply_with(&m.replica, m.store.clone(), listing, left_out.clone())
        .await
        .unwrap();
    assert_eq!(stats.failed, 0);
    left_out
}

/// The mount's tree as paths, each with its size (`None`: a directory).
fn tree_of(vfs: &Vfs) -> Vec<(String, Option<u64>)> {
    let tree = vfs.tree.read();
    let mut out: Vec<_> = tree
        .subtree(tree.mount_dirs[0])
        .into_iter()
        .filter(|(_, path, _)| !path.is_empty())
        .map(|(ino, path, _)| match &tree.nodes[&ino].kind {
            NodeKind::File(listed) => (path, Some(listed.size)),
            _ => (path, None),
        })
        .collect();
    out.sort();
    out
}

/// What a full listing of `store` shows under `p/`, as [`tree_of`] shows a tree, and each
/// file's bytes in the cache at `dir`.
fn expected(store: &MemoryStore, dir: &std::path::Path) -> Vec<(String, Option<u64>)> {
    let mut out = std::collections::BTreeMap::new();
    let listing = store.answer_list("p/").unwrap();
    let keys: Vec<&str> = listing.iter().map(|o| &o.key["p/".len()..]).collect();
    for key in &keys {
        // A key that is also a directory's prefix is left out (the directory wins).
        if keys.iter().any(|k| k.starts_with(&format!("{key}/"))) {
            continue;
        }
        let data = store.bytes_of(&format!("p/{key}")).unwrap();
        assert_eq!(
            std::fs::read(dir.join("m").join(key)).unwrap(),
            data,
            "{key} in the cache"
        );
        out.insert(key.to_string(), Some(data.len() as u64));
        for dir in crate::paths::ancestors(key) {
            out.insert(dir.to_owned(), None);
        }
    }
    out.into_iter().collect()
}

#[tokio::test]
async fn a_refresh_leaves_out_the_parts_it_holds_and_ends_as_a_full_one_would() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("bkt");
    for (key, data) in [
        ("p/top.txt", "top"),
        ("p/f", "a file"),
        ("p/keep/a.txt", "a"),
        ("p/keep/deep/b.txt", "b"),
        ("p/change/c.txt", "c"),
        ("p/gone/d.txt", "d"),
    ] {
        store.put(key, data.as_bytes().to_vec());
    }
    let (vfs, engine) = vfs_over(store.clone(), tmp.path()).await;
    let m = &vfs.mounted()[0];
    engine
        .apply(&m.replica, m.store.clone(), store_list(&vfs).await)
        .await
        .unwrap();
    let kept = path_ino(&vfs, "m/keep/deep/b.txt").unwrap();

    // Nothing changed: every part is left out, and nothing moves.
    let before = tree_of(&vfs);
    let left_out = refresh_leaving_out(&vfs, &engine).await;
    assert_eq!(left_out.objects, 6, "{left_out:?}");
    assert_eq!(tree_of(&vfs), before);

    // A directory changed, one gone, one new: the top's files and `keep` are left out.
    store.put("p/change/c.txt", b"c, changed".to_vec());
    store.delete("p/gone/d.txt");
    store.put("p/new/n.txt", b"n".to_vec());
    let left_out = refresh_leaving_out(&vfs, &engine).await;
    assert_eq!(left_out.objects, 4, "{left_out:?}");
    assert_eq!(tree_of(&vfs), expected(&store, tmp.path()));
    assert!(
        !tmp.path().join("m/gone").exists(),
        "a directory gone from the bucket"
    );
    assert_eq!(
        path_ino(&vfs, "m/keep/deep/b.txt").unwrap(),
        kept,
        "left as it was"
    );
    assert_eq!(
        read_all(&vfs, "m/change/c.txt").await.unwrap(),
        b"c, changed"
    );

    // A file left out (in the top's part) where a new part makes a directory: the directory
    // wins, as in one listing; and a new file where a part left out holds a directory: the
    // directory stays.
    let file = path_ino(&vfs, "m/f").unwrap();
    store.put("p/f/g", b"g".to_vec());
    let left_out = refresh_leaving_out(&vfs, &engine).await;
    assert!(left_out.objects >= 2, "{left_out:?}");
    assert_eq!(tree_of(&vfs), expected(&store, tmp.path()));
    assert_ne!(
        path_ino(&vfs, "m/f").unwrap(),
        file,
        "a directory is a new inode"
    );
    store.put("p/keep", b"shadowed".to_vec());
    refresh_leaving_out(&vfs, &engine).await;
    assert_eq!(tree_of(&vfs), expected(&store, tmp.path()));
    assert_eq!(path_ino(&vfs, "m/keep/deep/b.txt").unwrap(), kept);
}
