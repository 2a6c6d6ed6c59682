//! One mount's local copy: its directory and its manifest, changed together. Every operation
//! keeps the rule the manifest depends on: a file is in place before its entry is written, and
//! its entry is removed only with it, so the manifest never claims a file that is not there and
//! nothing the tool did not put there is ever deleted.
//!
//! Lock order: `manifest` alone; it is held for in-memory updates, one journal append, a
//! snapshot write at [`MountCopy::finish_pass`], and the probes of a plan, never across an
//! `.await`.

use super::dirs::{self, Local, Scanned};
use super::manifest::{Entry, Manifest, Multipart, Stamp};
use super::{LocalError, Root, Staged};
use crate::store::ObjectMeta;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::path::PathBuf;
use std::time::SystemTime;

/// A mount's files on disk (`ROOT/<id>/`) and the manifest of what the tool put there.
pub struct MountCopy {
    dir: PathBuf,
    /// What the tool put in `dir`. Guarded by its own lock (see the module's lock order).
    manifest: Mutex<Manifest>,
}

impl MountCopy {
    /// Creates the mount's directory under `root` (refusing one that is a symbolic link) and
    /// loads its manifest.
    pub fn open(root: &Root, id: &str) -> Result<Self, LocalError> {
        let dir = root.prepare_mount_dir(id)?;
        let manifest = Manifest::open(&root.manifest_dir(id))?;
        Ok(Self {
            dir,
            manifest: Mutex::new(manifest),
        })
    }

    /// Moves a complete download of `meta` into place at `path`, then records it (in that
    /// order: the manifest never claims a file that is not there).
    pub fn commit(&self, staged: Staged, path: &str, meta: &ObjectMeta) -> Result<(), LocalError> {
        let placed = staged.commit(&self.dir, path, meta.last_modified)?;
        let entry = Entry::file(meta).stamped(Stamp::of(&placed));
        self.manifest.lock().put(path, entry)?;
        Ok(())
    }

    /// Removes the tool's file at `path` (something else there is left alone) and forgets it;
    /// returns whether a file was removed.
    pub fn remove_file(&self, path: &str) -> Result<bool, LocalError> {
        let removed = dirs::remove_file(&self.dir, path)?;
        self.manifest.lock().remove(path)?;
        Ok(removed)
    }

    /// Removes the directory of a folder marker, if empty, and forgets it.
    pub fn remove_dir(&self, path: &str) -> Result<(), LocalError> {
        dirs::remove_empty_dir(&self.dir, path);
        self.manifest.lock().remove(path)?;
        Ok(())
    }

    /// Makes the directory of the folder marker `meta` at `path`, and records it.
    pub fn ensure_dir(&self, path: &str, meta: &ObjectMeta) -> Result<(), LocalError> {
        dirs::ensure_dir(&self.dir, path)?;
        let entry = Entry::folder(meta);
        let mut manifest = self.manifest.lock();
        if manifest.get(path) != Some(&entry) {
            manifest.put(path, entry)?;
        }
        Ok(())
    }

    /// Whether `path` holds exactly the version `meta` of its object (see
    /// [`open_held`](Self::open_held)).
    pub fn holds(&self, path: &str, meta: &ObjectMeta) -> bool {
        self.open_held(path, meta).is_some()
    }

    /// The file at `path`, opened for reading with its metadata, if it holds exactly the
    /// version `meta`: recorded so, and a regular file of its size reached without following a
    /// link. One walk down the directories for the check and the open.
    pub fn open_held(&self, path: &str, meta: &ObjectMeta) -> Option<(File, Metadata)> {
        let recorded = self
            .manifest
            .lock()
            .get(path)
            .is_some_and(|e| !e.dir && e.etag == meta.etag && e.size == meta.size);
        if !recorded {
            return None;
        }
        let (file, metadata) = dirs::open_file(&self.dir, path).ok()?;
        (metadata.len() == meta.size).then_some((file, metadata))
    }

    /// Opens the file at `path` for reading, through the no-follow directory walk, with its
    /// metadata.
    pub fn open_file(&self, path: &str) -> Result<(File, Metadata), LocalError> {
        dirs::open_file(&self.dir, path)
    }

    /// `f` of the manifest's entries and a walk of the directory (no link followed), with the
    /// manifest locked: what a plan of a writeable mount needs.
    pub fn plan_writeable<T>(
        &self,
        f: impl FnOnce(&BTreeMap<String, Entry>, &Scanned) -> T,
    ) -> Result<T, LocalError> {
        let manifest = self.manifest.lock();
        let scanned = dirs::scan(&self.dir)?;
        Ok(f(manifest.entries(), &scanned))
    }

    /// Records that the object `meta` was made from the local file at `path`, as `stamp` found
    /// it (an upload), or from the empty directory there (`stamp` is `None`).
    pub fn record_upload(
        &self,
        path: &str,
        meta: &ObjectMeta,
        stamp: Option<Stamp>,
    ) -> Result<(), LocalError> {
        let entry = match stamp {
            Some(stamp) => Entry::file(meta).stamped(stamp),
            None => Entry::folder(meta),
        };
        Ok(self.manifest.lock().put(path, entry)?)
    }

    /// Forgets `path` without touching what is there: its object was deleted along with the
    /// local file, or it is no longer the tool's version (a delete or an upload that conflicted).
    pub fn forget(&self, path: &str) -> Result<(), LocalError> {
        Ok(self.manifest.lock().remove(path)?)
    }

    /// Moves the local file at `path` aside to `to` (which must not exist) and forgets `path`:
    /// a local version kept beside a conflicting remote one. Returns the file's stamp at `to`.
    pub fn move_aside(&self, path: &str, to: &str) -> Result<Stamp, LocalError> {
        let mut manifest = self.manifest.lock();
        dirs::rename_file(&self.dir, path, to)?;
        manifest.remove(path)?;
        drop(manifest);
        let (_, metadata) = dirs::open_file(&self.dir, to)?;
        Ok(Stamp::of(&metadata))
    }

    /// Records that a multipart upload of the file at `path` is starting (before it is asked
    /// for) or, with its id, has started (before its first part).
    pub fn begin_upload(&self, path: &str, upload: Multipart) -> Result<(), LocalError> {
        Ok(self.manifest.lock().begin_upload(path, upload)?)
    }

    /// Records that the multipart upload of `path` ended, completed or aborted.
    pub fn end_upload(&self, path: &str) -> Result<(), LocalError> {
        Ok(self.manifest.lock().end_upload(path)?)
    }

    /// The multipart uploads started and not recorded as ended, by path: between passes, those a
    /// crash interrupted.
    pub fn unfinished_uploads(&self) -> Vec<(String, Multipart)> {
        let manifest = self.manifest.lock();
        manifest
            .uploads()
            .iter()
            .map(|(path, upload)| (path.clone(), upload.clone()))
            .collect()
    }

    /// Whether something is at `path` (no link followed).
    pub fn exists(&self, path: &str) -> bool {
        dirs::probe(&self.dir, path) != Local::Missing
    }

    /// `f` of the manifest's entries and a probe of what is on disk at a path (no link
    /// followed), with the manifest locked: what a plan needs.
    pub fn plan<T>(
        &self,
        f: impl FnOnce(&BTreeMap<String, Entry>, &dyn Fn(&str) -> Local) -> T,
    ) -> T {
        let manifest = self.manifest.lock();
        f(manifest.entries(), &|path| dirs::probe(&self.dir, path))
    }

    /// What the copy holds, as a listing: what a mount serves while its bucket cannot be
    /// reached.
    pub fn cached_listing(&self) -> Vec<ObjectMeta> {
        self.manifest
            .lock()
            .entries()
            .values()
            .map(Entry::object)
            .collect()
    }

    /// When the bucket was listed for the last pass that completed: the age of the copy.
    pub fn listed_at(&self) -> Option<SystemTime> {
        self.manifest.lock().listed_at()
    }

    /// Ends a pass over a listing made at `listed_at`: records that time and folds the journal
    /// into a new snapshot.
    pub fn finish_pass(&self, listed_at: SystemTime) -> Result<(), LocalError> {
        let mut manifest = self.manifest.lock();
        manifest.set_listed_at(listed_at);
        Ok(manifest.compact()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta(key: &str, size: u64, etag: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: etag.into(),
            last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn staged(root: &Root, data: &[u8]) -> Staged {
        let s = root.stage(data.len() as u64).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&*s.file(), data, 0).unwrap();
        s
    }

    #[test]
    fn a_committed_file_is_held_listed_and_opened_until_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let copy = MountCopy::open(&root, "m").unwrap();
        let m = meta("p/a/f.txt", 3, "e1");
        assert!(!copy.holds("a/f.txt", &m));
        copy.commit(staged(&root, b"abc"), "a/f.txt", &m).unwrap();
        assert!(copy.holds("a/f.txt", &m));
        assert!(
            !copy.holds("a/f.txt", &meta("p/a/f.txt", 3, "e2")),
            "another version"
        );
        assert_eq!(copy.cached_listing(), std::slice::from_ref(&m));
        let mut read = String::new();
        let (mut file, _) = copy.open_held("a/f.txt", &m).unwrap();
        std::io::Read::read_to_string(&mut file, &mut read).unwrap();
        assert!(
            copy.open_held("a/f.txt", &meta("p/a/f.txt", 3, "e2"))
                .is_none()
        );
        assert_eq!(read, "abc");
        // Reopened, it remembers; removed, it forgets, and prunes the empty directory.
        drop(copy);
        let copy = MountCopy::open(&root, "m").unwrap();
        assert!(copy.holds("a/f.txt", &m));
        assert!(copy.remove_file("a/f.txt").unwrap());
        assert!(!copy.holds("a/f.txt", &m));
        assert!(copy.cached_listing().is_empty());
        assert!(!tmp.path().join("m/a").exists());
    }

    #[test]
    fn a_file_replaced_by_a_link_is_neither_held_nor_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"not ours").unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let copy = MountCopy::open(&root, "m").unwrap();
        let m = meta("f", 8, "e1");
        copy.commit(staged(&root, b"12345678"), "f", &m).unwrap();
        std::fs::remove_file(tmp.path().join("m/f")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), tmp.path().join("m/f")).unwrap();
        assert!(!copy.holds("f", &m));
        assert!(copy.open_held("f", &m).is_none());
        assert!(matches!(copy.open_file("f"), Err(LocalError::NotAFile(_))));
        // Nor through a directory link.
        std::fs::create_dir(tmp.path().join("m/real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("m/d")).unwrap();
        assert!(matches!(
            copy.open_file("d/secret"),
            Err(LocalError::NotADirectory(_))
        ));
    }
}
