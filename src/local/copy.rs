//! One mount's local copy: its directory and its manifest, changed together. Every operation
//! keeps the rule the manifest depends on: a file is in place before its entry is written, and
//! its entry is removed only with it, so the manifest never claims a file that is not there and
//! nothing the tool did not put there is ever deleted.
//!
//! A writeable copy guards local changes: a download never replaces, and a remote deletion never
//! removes, a file changed here since the tool wrote it, a file the user deleted here, or a file
//! open for writing through the file system ([`MountCopy::begin_write`]); the check and the
//! rename happen under the manifest's lock, so a change cannot slip in between.
//!
//! Lock order: `manifest`, then `marks`; either may be taken alone. `manifest` is held for
//! in-memory updates, one journal append, a snapshot write at [`MountCopy::finish_pass`], the
//! probes of a plan, and (for a writeable copy) the check and rename of a commit, which
//! `marks` is held for too (a file is marked open for writing before it is opened); neither
//! is held across an `.await`.

use super::dirs::{self, Found, Local, Scanned};
use super::manifest::{Entries, Entry, Manifest, Multipart, Stamp};
use super::{LocalError, Root, Staged};
use crate::etag::Etag;
use crate::store::{Listing, ObjectMeta};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, Metadata};
use std::path::PathBuf;
use std::time::SystemTime;

/// What the manifest records at a path: [`MountCopy::recorded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub etag: Option<String>,
    /// The file there is the version `etag`, unchanged and not open for writing.
    pub uploaded: bool,
}

/// A mount's files on disk (`ROOT/<id>/`) and the manifest of what the tool put there.
pub struct MountCopy {
    dir: PathBuf,
    /// What the tool put in `dir`. Guarded by its own lock (see the module's lock order).
    manifest: Mutex<Manifest>,
    /// Whether local changes are the user's work, kept from the download side (a writeable
    /// mount), rather than edits a download may overwrite (a mirror).
    writeable: bool,
    /// What the file system is doing to paths. Guarded by its own lock, after `manifest`.
    marks: Mutex<Marks>,
}

/// What the file system is doing to a writeable copy's paths, which the download side keeps
/// clear of (in memory: what it guards against is a download already under way).
#[derive(Default)]
struct Marks {
    /// Paths open for writing, with how many handles each.
    writing: HashMap<String, usize>,
    /// Paths the upload side recorded (an upload, a delete, a conflict's move) since the
    /// listing of the pass under way was asked for: that listing may not show them yet.
    recorded: HashSet<String>,
    /// Whether a listing was asked for since the pass before was planned (see
    /// [`MountCopy::listing_begins`]).
    listing: bool,
}

impl MountCopy {
    /// Creates the mount's directory under `root` (refusing one that is a symbolic link) and
    /// loads its manifest.
    pub fn open(root: &Root, id: &str, writeable: bool) -> Result<Self, LocalError> {
        let dir = root.prepare_mount_dir(id)?;
        let manifest = Manifest::open(&root.manifest_dir(id))?;
        Ok(Self {
            dir,
            manifest: Mutex::new(manifest),
            writeable,
            marks: Mutex::default(),
        })
    }

    /// Moves a complete download of `meta` into place at `path`, then records it (in that
    /// order: the manifest never claims a file that is not there). In a writeable copy, a local
    /// change at `path` is kept instead ([`LocalError::Kept`]).
    ///
    /// `base` is the version the manifest recorded at `path` when the download was decided
    /// ([`MountCopy::version_at`]): in a writeable copy, a path the manifest has recorded
    /// anything else at since (an upload of the user's file, another download) is kept.
    pub fn commit(
        &self,
        staged: Staged,
        path: &str,
        meta: &ObjectMeta,
        base: Option<&Etag>,
    ) -> Result<(), LocalError> {
        if !self.writeable {
            let placed = staged.commit(&self.dir, path, meta.last_modified)?;
            let entry = Entry::file(meta).stamped(Stamp::of(&placed));
            self.manifest.lock().put(path, entry)?;
            return Ok(());
        }
        let mut manifest = self.manifest.lock();
        // The marks stay locked until the file is in place: a file opened for writing meanwhile
        // is either seen open here (and kept), or opened after the rename (the new version).
        // Were they let go between the check and the rename, a write could go to the file the
        // rename then unlinks.
        let marks = self.marks.lock();
        if manifest.get(path).map(|e| &e.etag) != base {
            return Err(LocalError::Kept(self.dir.join(path)));
        }
        self.check_replaceable(&manifest, &marks, path, Some(&meta.etag))?;
        let placed = staged.commit(&self.dir, path, meta.last_modified)?;
        drop(marks);
        let entry = Entry::file(meta).stamped(Stamp::of(&placed));
        manifest.put(path, entry)?;
        Ok(())
    }

    /// The version the manifest records at `path`, if any: what a download decided now is
    /// decided over (see [`MountCopy::commit`]).
    pub fn version_at(&self, path: &str) -> Option<Etag> {
        self.manifest.lock().get(path).map(|e| e.etag.clone())
    }

    /// Whether the download side may replace or remove what is at `path` in a writeable copy:
    /// nothing is there, or the unchanged file the manifest records; not a file open for
    /// writing, changed here, or new here, nor (for a download of `etag`) the place of that
    /// same version the user deleted or replaced ([`Entry::replaced`]).
    fn check_replaceable(
        &self,
        manifest: &Manifest,
        marks: &Marks,
        path: &str,
        etag: Option<&Etag>,
    ) -> Result<(), LocalError> {
        let kept = || Err(LocalError::Kept(self.dir.join(path)));
        if marks.writing.contains_key(path) {
            return kept();
        }
        let entry = manifest.get(path).filter(|e| !e.dir);
        match dirs::open_file(&self.dir, path) {
            Ok((_, metadata)) => match entry {
                Some(e) if !e.changed_locally(&Stamp::of(&metadata)) => Ok(()),
                _ => kept(),
            },
            Err(LocalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                match entry {
                    Some(e) if e.replaced && etag == Some(&e.etag) => kept(),
                    _ => Ok(()),
                }
            }
            // Something else is there: the rename or removal reports it.
            Err(_) => Ok(()),
        }
    }

    /// Removes the tool's file at `path` (something else there is left alone) and forgets it;
    /// returns whether a file was removed. In a writeable copy, a local change is kept
    /// ([`LocalError::Kept`]).
    pub fn remove_file(&self, path: &str) -> Result<bool, LocalError> {
        if self.writeable {
            let mut manifest = self.manifest.lock();
            // Locked until the file is gone, as in `commit`.
            let marks = self.marks.lock();
            if manifest.get(path).is_some() {
                self.check_replaceable(&manifest, &marks, path, None)?;
            }
            let removed = dirs::remove_file(&self.dir, path)?;
            drop(marks);
            manifest.remove(path)?;
            return Ok(removed);
        }
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

    /// Removes the directories `paths` if empty, but for those of folder markers: in mount
    /// mode, directories the cache holds empty while the mount shows files in them. Their
    /// parents are left to be judged on their own. The manifest stays locked meanwhile, so
    /// that no download places a file in one of them as it goes.
    pub fn remove_unmarked_dirs(&self, paths: &[String]) {
        let manifest = self.manifest.lock();
        for path in paths.iter().filter(|p| manifest.get(p).is_none()) {
            // Not empty any more (a file created there since the walk): left alone.
            let _ = dirs::unlink(&self.dir, path, true);
        }
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
            .is_some_and(|e| e.claims_file() && e.etag == meta.etag && e.size == meta.size);
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
        f: impl FnOnce(&Entries, &Scanned) -> T,
    ) -> Result<T, LocalError> {
        let manifest = self.manifest.lock();
        let scanned = dirs::scan(&self.dir)?;
        Ok(f(manifest.entries(), &scanned))
    }

    /// [`MountCopy::plan_writeable`] over `paths` and their directories alone: the manifest's
    /// entries there, and what a walk would find there.
    pub fn plan_paths<T>(
        &self,
        paths: &[String],
        f: impl FnOnce(&Entries, &Scanned) -> T,
    ) -> Result<T, LocalError> {
        let manifest = self.manifest.lock();
        let mut wanted: BTreeSet<&str> = BTreeSet::new();
        for path in paths {
            wanted.insert(path);
            wanted.extend(crate::paths::ancestors(path));
        }
        let mut entries = Entries::new();
        let mut scanned = Scanned::default();
        for path in wanted.into_iter().filter(|p| !p.is_empty()) {
            if let Some(e) = manifest.get(path) {
                entries.insert(path, e.clone());
            }
            if let Some(found) = dirs::find(&self.dir, path)? {
                scanned.found.insert(path.to_owned(), found);
            }
        }
        Ok(f(&entries, &scanned))
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
            None => Entry {
                marker_made: true,
                ..Entry::folder(meta)
            },
        };
        let mut manifest = self.manifest.lock();
        manifest.put(path, entry)?;
        self.note_recorded(&[path]);
        Ok(())
    }

    /// Notes that the upload side changed the manifest at `paths` (see [`Marks::recorded`]).
    fn note_recorded(&self, paths: &[&str]) {
        let mut marks = self.marks.lock();
        if marks.listing {
            marks.recorded.extend(paths.iter().map(|p| (*p).to_owned()));
        }
    }

    /// A pass's listing is asked for now: what the upload side records from now on may be
    /// missing from it, or older there ([`MountCopy::recorded_since_listing`]).
    pub fn listing_begins(&self) {
        let mut marks = self.marks.lock();
        marks.recorded.clear();
        marks.listing = true;
    }

    /// The paths the upload side recorded since the listing a pass is about to plan with was
    /// asked for: the listing judges none of them (an object it does not show yet was just
    /// uploaded, not deleted; a version it shows may be the one just replaced).
    pub fn recorded_since_listing(&self) -> HashSet<String> {
        let mut marks = self.marks.lock();
        marks.listing = false;
        std::mem::take(&mut marks.recorded)
    }

    /// Forgets `path` without touching what is there: its object was deleted along with the
    /// local file, or it is no longer the tool's version (a delete or an upload that conflicted).
    pub fn forget(&self, path: &str) -> Result<(), LocalError> {
        let mut manifest = self.manifest.lock();
        manifest.remove(path)?;
        self.note_recorded(&[path]);
        Ok(())
    }

    /// Moves the local file at `path` aside to `to` (which must not exist) and forgets `path`:
    /// a local version kept beside a conflicting remote one. Returns the file's stamp at `to`.
    pub fn move_aside(&self, path: &str, to: &str) -> Result<Stamp, LocalError> {
        let mut manifest = self.manifest.lock();
        dirs::rename_file(&self.dir, path, to)?;
        manifest.remove(path)?;
        self.note_recorded(&[path, to]);
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

    /// Marks `path` open for writing through the file system: until as many
    /// [`end_write`](Self::end_write)s, no download replaces it and no write-back takes it (a
    /// file half written).
    pub fn begin_write(&self, path: &str) {
        *self
            .marks
            .lock()
            .writing
            .entry(path.to_owned())
            .or_default() += 1;
    }

    /// A handle that [`begin_write`](Self::begin_write) counted is closed.
    pub fn end_write(&self, path: &str) {
        let mut marks = self.marks.lock();
        if let Some(n) = marks.writing.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                marks.writing.remove(path);
            }
        }
    }

    /// Whether `path` is open for writing through the file system.
    pub fn is_writing(&self, path: &str) -> bool {
        self.marks.lock().writing.contains_key(path)
    }

    /// Opens the file at `path` with `flags` (a new one gets `mode`), no link followed: what the
    /// file system writes.
    pub fn open_with(
        &self,
        path: &str,
        flags: libc::c_int,
        mode: u32,
    ) -> Result<(File, Metadata), LocalError> {
        dirs::open_with(&self.dir, path, flags, mode)
    }

    /// Makes the directory `path` (and its parents) with `mode`.
    pub fn make_dir(&self, path: &str, mode: u32) -> Result<(), LocalError> {
        dirs::make_dir(&self.dir, path, mode)
    }

    /// Removes the file at `path` (or the empty directory, if `is_dir`), as the user asked:
    /// the next upload deletes its object. `seen` is the version the user saw there when the
    /// copy does not hold it (listed, not downloaded): recorded, so that it is deleted too.
    pub fn unlink(
        &self,
        path: &str,
        is_dir: bool,
        seen: Option<&ObjectMeta>,
    ) -> Result<(), LocalError> {
        let mut manifest = self.manifest.lock();
        dirs::unlink(&self.dir, path, is_dir)?;
        self.marks.lock().writing.remove(path);
        match (seen, manifest.get(path)) {
            (Some(seen), _) => Self::note_replaced(&mut manifest, path, seen, is_dir)?,
            // The file was the tool's: it no longer claims one (a copy the user emptied file
            // by file is not a lost copy).
            (None, Some(e)) if e.claims_file() => {
                let entry = Entry {
                    replaced: true,
                    ..e.clone()
                };
                manifest.put(path, entry)?;
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Records that the user replaces the version `seen` at `path` (listed, not downloaded),
    /// if the manifest has another there: the file made in its place is uploaded on the
    /// condition that the object is still that version.
    pub fn record_replaced(&self, path: &str, seen: &ObjectMeta) -> Result<(), LocalError> {
        let mut manifest = self.manifest.lock();
        Self::note_replaced(&mut manifest, path, seen, false)
    }

    fn note_replaced(
        manifest: &mut Manifest,
        path: &str,
        seen: &ObjectMeta,
        is_dir: bool,
    ) -> Result<(), LocalError> {
        let entry = match (is_dir, manifest.get(path)) {
            (true, Some(e)) if e.etag == seen.etag => return Ok(()),
            (true, _) => Entry::folder(seen),
            (false, Some(e)) if e.etag == seen.etag && !e.dir => Entry {
                replaced: true,
                ..e.clone()
            },
            (false, _) => Entry::replaced(seen),
        };
        if manifest.get(path) != Some(&entry) {
            manifest.put(path, entry)?;
        }
        Ok(())
    }

    /// Renames `from` (a file or a directory) to `to` as rename(2) does (failing if something is
    /// there, with `noreplace`); what is open for writing moves along. `replaces` is the version
    /// listed at `to` when the copy does not hold it: the file moved there replaces it (see
    /// [`record_replaced`](Self::record_replaced)).
    pub fn rename(
        &self,
        from: &str,
        to: &str,
        noreplace: bool,
        replaces: Option<&ObjectMeta>,
    ) -> Result<(), LocalError> {
        let flags = if noreplace { libc::RENAME_NOREPLACE } else { 0 };
        let mut manifest = self.manifest.lock();
        dirs::rename(&self.dir, from, to, flags)?;
        if let Some(seen) = replaces {
            Self::note_replaced(&mut manifest, to, seen, false)?;
        }
        // The files moved away no longer claim their old paths: a download of those versions
        // planned before does not put them back there.
        let below = format!("{from}/");
        let moved: Vec<(String, Entry)> = manifest
            .entries()
            .iter()
            .filter(|(p, e)| e.claims_file() && (*p == from || p.starts_with(&below)))
            .map(|(p, e)| {
                let entry = Entry {
                    replaced: true,
                    ..e.clone()
                };
                (p.to_owned(), entry)
            })
            .collect();
        for (path, entry) in moved {
            manifest.put(&path, entry)?;
        }
        drop(manifest);
        let mut marks = self.marks.lock();
        let writing = &mut marks.writing;
        // Handles of a file replaced at `to` write into a file no longer there.
        writing.remove(to);
        let moved: Vec<String> = writing
            .keys()
            .filter(|p| *p == from || p.strip_prefix(from).is_some_and(|r| r.starts_with('/')))
            .cloned()
            .collect();
        for old in moved {
            let n = writing.remove(&old).unwrap_or_default();
            *writing
                .entry(format!("{to}{}", &old[from.len()..]))
                .or_default() += n;
        }
        Ok(())
    }

    /// The manifest's entry at `path` and the file there, as a walk would find it: what a
    /// change of that one file is judged by.
    pub fn at(&self, path: &str) -> Result<(Option<Entry>, Option<Found>), LocalError> {
        let entry = self.manifest.lock().get(path).cloned();
        let found = match dirs::open_file(&self.dir, path) {
            Ok((_, m)) => Some(Found::File(Stamp::of(&m))),
            Err(LocalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => return Err(e),
        };
        Ok((entry, found))
    }

    /// The folder markers the manifest records, by path, with their ETags.
    pub fn folders(&self) -> HashMap<String, String> {
        let manifest = self.manifest.lock();
        let folders = manifest.entries().iter().filter(|(_, e)| e.dir);
        folders
            .map(|(p, e)| (p.to_owned(), e.etag.to_string()))
            .collect()
    }

    /// The metadata of the file at `path` (no link followed).
    pub fn stat(&self, path: &str) -> Result<Metadata, LocalError> {
        dirs::open_file(&self.dir, path).map(|(_, m)| m)
    }

    /// What the manifest says of `path`: the version it records there (file or folder marker),
    /// and whether the file is that version, unchanged and not open for writing (uploaded).
    pub fn recorded(&self, path: &str) -> Recorded {
        let entry = self.manifest.lock().get(path).cloned();
        let uploaded = entry.as_ref().is_some_and(|e| {
            !e.dir
                && !self.is_writing(path)
                && dirs::open_file(&self.dir, path)
                    .is_ok_and(|(_, m)| !e.changed_locally(&Stamp::of(&m)))
        });
        Recorded {
            etag: entry.map(|e| e.etag.to_string()),
            uploaded,
        }
    }

    /// Whether something is at `path` (no link followed).
    pub fn exists(&self, path: &str) -> bool {
        dirs::probe(&self.dir, path) != Local::Missing
    }

    /// `f` of the manifest's entries and a probe of what is on disk at a path (no link
    /// followed), with the manifest locked: what a plan needs.
    pub fn plan<T>(&self, f: impl FnOnce(&Entries, &dyn Fn(&str) -> Local) -> T) -> T {
        let manifest = self.manifest.lock();
        let prober = dirs::Prober::new(&self.dir);
        f(manifest.entries(), &|path| prober.probe(path))
    }

    /// What the copy holds, as a listing of the mount's `prefix`: what a mount serves while its
    /// bucket cannot be reached.
    pub fn cached_listing(&self, prefix: &str) -> Listing {
        self.manifest
            .lock()
            .entries()
            .iter()
            .filter(|(_, e)| !e.replaced)
            .map(|(path, e)| e.object(crate::paths::key_of(prefix, path, e.dir)))
            .collect()
    }

    /// When the bucket was listed for the last pass that completed: the age of the copy.
    pub fn listed_at(&self) -> Option<SystemTime> {
        self.manifest.lock().listed_at()
    }

    /// What the last pass that completed listed (`s3://bucket/prefix`).
    pub fn listed_from(&self) -> Option<String> {
        self.manifest.lock().listed_from().map(str::to_owned)
    }

    /// Ends a pass over a listing of `from` (`s3://bucket/prefix`) made at `listed_at`:
    /// records both, and folds the journal into a new snapshot if it has grown (a pass that
    /// changed nothing rewrites nothing).
    pub fn finish_pass(&self, listed_at: SystemTime, from: &str) -> Result<(), LocalError> {
        let mut manifest = self.manifest.lock();
        manifest.set_listed(listed_at, from)?;
        Ok(manifest.compact_if_grown()?)
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
        let copy = MountCopy::open(&root, "m", false).unwrap();
        let m = meta("p/a/f.txt", 3, "e1");
        assert!(!copy.holds("a/f.txt", &m));
        copy.commit(staged(&root, b"abc"), "a/f.txt", &m, None)
            .unwrap();
        assert!(copy.holds("a/f.txt", &m));
        assert!(
            !copy.holds("a/f.txt", &meta("p/a/f.txt", 3, "e2")),
            "another version"
        );
        assert_eq!(
            copy.cached_listing("p/").to_metas(),
            std::slice::from_ref(&m)
        );
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
        let copy = MountCopy::open(&root, "m", false).unwrap();
        assert!(copy.holds("a/f.txt", &m));
        assert!(copy.remove_file("a/f.txt").unwrap());
        assert!(!copy.holds("a/f.txt", &m));
        assert!(copy.cached_listing("p/").is_empty());
        assert!(!tmp.path().join("m/a").exists());
    }

    #[test]
    fn a_late_download_does_not_bring_back_a_file_moved_or_deleted_in_a_writeable_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let copy = MountCopy::open(&root, "m", true).unwrap();
        let (a, b) = (meta("p/d/a", 1, "ea"), meta("p/b", 1, "eb"));
        copy.commit(staged(&root, b"a"), "d/a", &a, None).unwrap();
        copy.commit(staged(&root, b"b"), "b", &b, None).unwrap();
        let (planned_a, planned_b) = (copy.version_at("d/a"), copy.version_at("b"));
        copy.rename("d", "moved", false, None).unwrap();
        copy.unlink("b", false, None).unwrap();
        // Downloads of those versions, planned before, end now.
        let late = copy.commit(staged(&root, b"a"), "d/a", &a, planned_a.as_ref());
        assert!(matches!(late, Err(LocalError::Kept(_))), "{late:?}");
        let late = copy.commit(staged(&root, b"b"), "b", &b, planned_b.as_ref());
        assert!(matches!(late, Err(LocalError::Kept(_))), "{late:?}");
        assert!(!tmp.path().join("m/d/a").exists());
        assert!(!tmp.path().join("m/b").exists());
        assert_eq!(std::fs::read(tmp.path().join("m/moved/a")).unwrap(), b"a");
        // A newer version is not what the user moved or deleted: it is downloaded.
        let now = copy.version_at("b");
        copy.commit(
            staged(&root, b"B"),
            "b",
            &meta("p/b", 1, "eb2"),
            now.as_ref(),
        )
        .unwrap();
        assert_eq!(std::fs::read(tmp.path().join("m/b")).unwrap(), b"B");
    }

    #[test]
    fn a_download_planned_before_the_file_was_saved_does_not_replace_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let copy = MountCopy::open(&root, "m", true).unwrap();
        let old = meta("p/n", 3, "e1");
        copy.commit(staged(&root, b"old"), "n", &old, None).unwrap();
        // A download of the same version is planned (a pass's, before the file was written).
        let planned = copy.version_at("n");
        // The file is written here and uploaded, its upload recorded.
        let file = tmp.path().join("m/n");
        std::fs::write(&file, b"new!").unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&file).unwrap());
        copy.record_upload("n", &meta("p/n", 4, "e2"), Some(stamp))
            .unwrap();
        // The planned download ends now.
        let late = copy.commit(staged(&root, b"old"), "n", &old, planned.as_ref());
        assert!(matches!(late, Err(LocalError::Kept(_))), "{late:?}");
        assert_eq!(std::fs::read(&file).unwrap(), b"new!");
    }

    #[test]
    fn a_file_replaced_by_a_link_is_neither_held_nor_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"not ours").unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let copy = MountCopy::open(&root, "m", false).unwrap();
        let m = meta("f", 8, "e1");
        copy.commit(staged(&root, b"12345678"), "f", &m, None)
            .unwrap();
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
