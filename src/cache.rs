//! The local tree the engine fills: `root/<mount id>/...` for the data and `root/.s3-synchronizer/`
//! for the tool's state (a lock, per-mount manifests, the staging area for small files, and
//! resumable partial downloads of large ones).
//!
//! Invariants:
//! - Data is written only into staging files, on the same file system as the data, and moved to
//!   its final path by one `rename` after it is complete: no reader ever sees a partial file, and
//!   a crash leaves debris only in staging, which the next start clears.
//! - A large file downloads into `partial/<mount id>/<hash of key>.part`, a sparse file, with a
//!   record beside it (key, ETag, size and the byte ranges present) rewritten after each part.
//!   The record never claims a range before its bytes are written, so after a crash the next run
//!   fetches only what is missing. It has two slots (`.json`, `.1.json`), overwritten in place
//!   in turn, each write numbered: the newest intact one is read, so a write cut short leaves
//!   the one before. (Replacing the record by `rename` instead frees the old record's blocks
//!   while the directory is locked: on a busy disk, with online discard, that took tens of
//!   milliseconds, and every reader's open of a file not yet downloaded waited for it.)
//! - The tool never writes or deletes through a symbolic link: the directories on the way to a
//!   final path are opened one at a time with `O_NOFOLLOW`, files are renamed into and unlinked
//!   from those open directories (so a link swapped in meanwhile is not followed either), and
//!   only regular files are deleted.
//! - One process at a time owns a root (an exclusive `flock` on `lock`).

use crate::mounts::STATE_DIR;
use crate::ranges::RangeSet;
use serde::{Deserialize, Serialize};
use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another s3-synchronizer is already using {}", .0.display())]
    Locked(PathBuf),
    #[error("refusing to write through {}: it is a symbolic link or not a directory", .0.display())]
    NotADirectory(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

pub struct Cache {
    root: PathBuf,
    state: PathBuf,
    staging: PathBuf,
    partial: PathBuf,
    next_staging: AtomicU64,
    _lock: File,
}

impl Cache {
    /// Opens `root` (which must exist), takes its lock and clears staging debris.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        let meta = fs::metadata(root).map_err(io_err(root))?;
        if !meta.is_dir() {
            return Err(CacheError::NotADirectory(root.to_owned()));
        }
        let state = root.join(STATE_DIR);
        let staging = state.join("staging");
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        let lock_path = state.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                CacheError::Locked(root.to_owned())
            } else {
                io_err(&lock_path)(e)
            });
        }
        let cache = Self {
            root: root.to_owned(),
            partial: state.join("partial"),
            state,
            staging,
            next_staging: AtomicU64::new(0),
            _lock: lock,
        };
        cache.clear_staging();
        Ok(cache)
    }

    /// Removes every staging file: debris of a crash, or of downloads cancelled at shutdown.
    pub fn clear_staging(&self) {
        if let Ok(entries) = fs::read_dir(&self.staging) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    pub fn mount_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn manifest_dir(&self, id: &str) -> PathBuf {
        self.state.join("mounts").join(id)
    }

    /// Creates the mount directory; refuses one that is a symbolic link.
    pub fn prepare_mount_dir(&self, id: &str) -> Result<PathBuf, CacheError> {
        let dir = self.mount_dir(id);
        ensure_dir(&self.root, id)?;
        Ok(dir)
    }

    /// A new empty staging file of `size` bytes.
    pub fn stage(&self, size: u64) -> Result<Staged, CacheError> {
        let n = self.next_staging.fetch_add(1, Ordering::Relaxed);
        let path = self
            .staging
            .join(format!("{}-{n}.part", std::process::id()));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o644)
            .open(&path)
            .map_err(io_err(&path))?;
        let staged = Staged {
            path,
            file: Arc::new(file),
            record: None,
            committed: false,
        };
        staged.file.set_len(size).map_err(io_err(&staged.path))?;
        Ok(staged)
    }

    /// The resumable download of version `etag` of `key` (`size` bytes) for mount `id`, and the
    /// ranges already present: what an earlier run left of the same version is picked up, any
    /// other version is replaced. Dropped before [`Staged::commit`], it stays for the next run.
    pub fn partial(
        &self,
        id: &str,
        key: &str,
        etag: &str,
        size: u64,
    ) -> Result<(Staged, RangeSet), CacheError> {
        let dir = self.partial.join(id);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let name = format!("{:016x}", fnv1a(key.as_bytes()));
        let path = dir.join(format!("{name}.part"));
        let mut slots = [0, 1].map(|i| {
            let path = dir.join(if i == 0 {
                format!("{name}.json")
            } else {
                format!("{name}.{i}.json")
            });
            let read = fs::read(&path);
            let slot = Slot {
                on_disk: !matches!(&read, Err(e) if e.kind() == io::ErrorKind::NotFound),
                len: read.as_ref().map_or(0, Vec::len),
                path,
                file: None,
            };
            // A slot whose write was cut short does not parse, and the other one is read.
            let record = read
                .ok()
                .and_then(|data| serde_json::from_slice::<PartialRecord>(&data).ok());
            (slot, record)
        });
        let earlier = slots
            .iter_mut()
            .filter_map(|(_, record)| record.take())
            .filter(|r| r.key == key && r.etag == etag && r.size == size)
            .max_by_key(|r| r.generation)
            .filter(|_| fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size));
        let mut slots = slots.map(|(slot, _)| slot);
        let (file, record) = match earlier {
            Some(r) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                (file, r)
            }
            None => {
                // Only what is there: an unlink takes the directory's lock even when it finds
                // nothing.
                for slot in &mut slots {
                    if slot.on_disk {
                        let _ = fs::remove_file(&slot.path);
                        (slot.on_disk, slot.len) = (false, 0);
                    }
                }
                if fs::symlink_metadata(&path).is_ok() {
                    let _ = fs::remove_file(&path);
                }
                let file = OpenOptions::new()
                    .create_new(true)
                    .read(true)
                    .write(true)
                    .mode(0o644)
                    .open(&path)
                    .map_err(io_err(&path))?;
                file.set_len(size).map_err(io_err(&path))?;
                let record = PartialRecord {
                    key: key.to_owned(),
                    etag: etag.to_owned(),
                    size,
                    present: RangeSet::default(),
                    generation: 0,
                };
                (file, record)
            }
        };
        let present = record.present.clone();
        let staged = Staged {
            path,
            file: Arc::new(file),
            record: Some(Record { slots, record }),
            committed: false,
        };
        Ok((staged, present))
    }

    /// Removes the partial downloads of mount `id` (those of objects since changed or deleted).
    pub fn clear_partials(&self, id: &str) {
        let _ = fs::remove_dir_all(self.partial.join(id));
    }
}

#[derive(Serialize, Deserialize)]
struct PartialRecord {
    key: String,
    etag: String,
    size: u64,
    present: RangeSet,
    /// Which write this is: the newer of the two slots wins.
    #[serde(default)]
    generation: u64,
}

/// The record of a partial download and its two slot files.
struct Record {
    slots: [Slot; 2],
    record: PartialRecord,
}

/// One slot file of a record.
struct Slot {
    path: PathBuf,
    /// Open once written to.
    file: Option<File>,
    /// Whether the file exists.
    on_disk: bool,
    /// How many bytes it holds.
    len: usize,
}

impl Record {
    /// Writes the record, with `present` added, over the older slot: one write, padded with
    /// spaces over the end of a longer earlier record (JSON ignores them). Nothing is created,
    /// truncated or renamed after the slot's first write, so no block is freed and the
    /// directory is not locked.
    fn write(&mut self, present: &RangeSet) -> io::Result<()> {
        for r in present.iter() {
            self.record.present.insert(r);
        }
        self.record.generation += 1;
        let slot = &mut self.slots[(self.record.generation % 2) as usize];
        let mut data = serde_json::to_vec(&self.record).expect("a record serializes");
        data.resize(data.len().max(slot.len), b' ');
        let file = match &mut slot.file {
            Some(file) => file,
            None => slot.file.insert(
                // Not truncated: what an earlier run left in it is written over.
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o644)
                    .open(&slot.path)?,
            ),
        };
        slot.on_disk = true;
        file.write_all_at(&data, 0)?;
        slot.len = data.len();
        Ok(())
    }

    /// Removes the slot files (the download is complete or thrown away). An open slot is closed
    /// after its unlink, so that freeing its blocks does not happen under the directory's lock.
    fn remove(&mut self) {
        for slot in &mut self.slots {
            if slot.on_disk {
                let _ = fs::remove_file(&slot.path);
            }
            slot.file = None;
        }
    }
}

/// FNV-1a: a stable name for a key's partial file, whatever its length or characters.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A file being downloaded. Dropped before [`Staged::commit`], a staging file removes itself; a
/// partial download stays to be resumed.
pub struct Staged {
    path: PathBuf,
    file: Arc<File>,
    /// For a partial download: its record.
    record: Option<Record>,
    committed: bool,
}

impl Staged {
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that `present` has been written (a partial download; a no-op otherwise). What is
    /// recorded only grows: a call with an older set (one that lost a race) adds what it has to
    /// what was recorded before, so the record never goes back, and never claims what is not
    /// there.
    pub fn record(&mut self, present: &RangeSet) -> Result<(), CacheError> {
        match &mut self.record {
            Some(record) => record.write(present).map_err(|e| {
                let slot = &record.slots[(record.record.generation % 2) as usize];
                io_err(&slot.path)(e)
            }),
            None => Ok(()),
        }
    }

    /// Throws a partial download away (its object changed).
    pub fn discard(mut self) {
        self.committed = true;
        let _ = fs::remove_file(&self.path);
        if let Some(record) = &mut self.record {
            record.remove();
        }
    }

    /// Sets the mtime and moves the complete file to `dir/rel`, creating directories as needed.
    pub fn commit(mut self, dir: &Path, rel: &str, mtime: SystemTime) -> Result<(), CacheError> {
        self.file.set_modified(mtime).map_err(io_err(&self.path))?;
        let (parent, name) = split(rel);
        let at = DirFd::open(dir, parent, true)?;
        let dest = at.path.join(name);
        if at
            .lstat(name)
            .is_ok_and(|m| m.st_mode & libc::S_IFMT == libc::S_IFDIR)
        {
            return Err(io_err(&dest)(io::Error::from(io::ErrorKind::IsADirectory)));
        }
        at.rename_into(&self.path, name).map_err(io_err(&dest))?;
        self.committed = true;
        if let Some(record) = &mut self.record {
            record.remove();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed && self.record.is_none() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates `base/rel` and every directory between, refusing to pass through anything that is not
/// a real directory (a symbolic link planted there, or a file).
pub fn ensure_dir(base: &Path, rel: &str) -> Result<(), CacheError> {
    DirFd::open(base, rel, true).map(drop)
}

/// What is at a relative path on the local disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Missing,
    File { size: u64 },
    Other,
}

/// What is at `dir/rel`, following no symbolic link on the way: a file reached through a link
/// planted in place of one of its directories is not the tool's file (nor its object's bytes).
pub fn probe(dir: &Path, rel: &str) -> Local {
    let (parent, name) = split(rel);
    let at = match DirFd::open(dir, parent, false) {
        Ok(at) => at,
        Err(CacheError::NotADirectory(_)) => return Local::Other,
        Err(_) => return Local::Missing,
    };
    match at.lstat(name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Local::File {
            size: st.st_size as u64,
        },
        Ok(_) => Local::Other,
        Err(_) => Local::Missing,
    }
}

/// Removes the regular file `dir/rel`, then its parents up to `dir` while they are empty.
/// Returns whether a file was removed; something other than a regular file is left alone.
pub fn remove_file(dir: &Path, rel: &str) -> Result<bool, CacheError> {
    let (parent, name) = split(rel);
    let at = match DirFd::open(dir, parent, false) {
        Ok(at) => at,
        Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let path = at.path.join(name);
    let removed = match at.lstat(name) {
        Ok(m) if m.st_mode & libc::S_IFMT == libc::S_IFREG => {
            // Without AT_REMOVEDIR, unlinkat removes no directory; whatever is there is removed
            // itself, never what it points to.
            at.unlink(name, false).map_err(io_err(&path))?;
            true
        }
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(&path)(e)),
    };
    remove_empty_parents(dir, rel);
    Ok(removed)
}

/// Removes the directory `dir/rel` and then its parents while they are empty.
pub fn remove_empty_dir(dir: &Path, rel: &str) {
    let (parent, name) = split(rel);
    if let Ok(at) = DirFd::open(dir, parent, false)
        && at.unlink(name, true).is_ok()
    {
        remove_empty_parents(dir, rel);
    }
}

fn remove_empty_parents(dir: &Path, rel: &str) {
    let mut rel = rel;
    while let Some((parent, _)) = rel.rsplit_once('/') {
        // rmdir fails on a non-empty directory: files a user put there keep it alive.
        let (up, name) = split(parent);
        match DirFd::open(dir, up, false) {
            Ok(at) if at.unlink(name, true).is_ok() => rel = parent,
            _ => break,
        }
    }
}

/// `rel` as its parent directory ("" for none) and its last component.
fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// A directory opened one component at a time without following symbolic links: what is done
/// relative to it (rename, unlink, lstat) stays in it, even if someone swaps a component for a
/// link meanwhile. (Checking each component with `lstat` first would leave that window open.)
struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

/// `openat` of `name` in directory `dir`, following no symbolic link.
fn openat(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let raw = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: `raw` is a descriptor just opened and owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }
}

impl DirFd {
    /// Opens `base/rel` (`base` itself is trusted), creating missing directories if `create`.
    fn open(base: &Path, rel: &str, create: bool) -> Result<Self, CacheError> {
        let mut fd = File::open(base).map_err(io_err(base))?.into();
        let mut path = base.to_owned();
        for component in rel.split('/').filter(|c| !c.is_empty()) {
            path.push(component);
            let name =
                CString::new(component).map_err(|_| CacheError::NotADirectory(path.clone()))?;
            let open = |fd: &OwnedFd| openat(fd, &name, libc::O_RDONLY | libc::O_DIRECTORY);
            let opened = match open(&fd) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    // SAFETY: as above.
                    if unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o777) } < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::AlreadyExists {
                            return Err(io_err(&path)(e));
                        }
                    }
                    open(&fd)
                }
                other => other,
            };
            fd = match opened {
                Ok(next) => next,
                // A symbolic link (ELOOP) or something else than a directory (ENOTDIR).
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    return Err(CacheError::NotADirectory(path));
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
        }
        Ok(Self { fd, path })
    }

    fn name(name: &str) -> io::Result<CString> {
        CString::new(name).map_err(|_| io::ErrorKind::InvalidInput.into())
    }

    /// `lstat` of an entry.
    fn lstat(&self, name: &str) -> io::Result<libc::stat> {
        let name = Self::name(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a valid descriptor, a NUL-terminated name and room for the result.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat succeeded, so it filled `st`.
        Ok(unsafe { st.assume_init() })
    }

    /// Moves `from` (a path in the tool's own state directory) to `name` in this directory.
    fn rename_into(&self, from: &Path, name: &str) -> io::Result<()> {
        let from = CString::new(from.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let name = Self::name(name)?;
        // The file replaced (an older version) is held open across the rename, so that its
        // blocks are freed when this closes it, not inside the rename with both directories
        // locked: freeing gigabytes (with discards, on some disks) takes long, and readers look
        // files up in those directories meanwhile.
        let _replaced = openat(&self.fd, &name, libc::O_PATH);
        // SAFETY: NUL-terminated paths and a valid directory descriptor.
        let rc = unsafe {
            libc::renameat(
                libc::AT_FDCWD,
                from.as_ptr(),
                self.fd.as_raw_fd(),
                name.as_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes the entry `name` itself: an empty directory if `dir`, else anything but one.
    fn unlink(&self, name: &str, dir: bool) -> io::Result<()> {
        let name = Self::name(name)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_vanish_unless_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let dir = cache.prepare_mount_dir("m").unwrap();
        let s = cache.stage(3).unwrap();
        let staged_path = s.path().to_owned();
        drop(s);
        assert!(!staged_path.exists());

        let s = cache.stage(3).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&*s.file(), b"abc", 0).unwrap();
        s.commit(&dir, "x/y/z", SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(fs::read(dir.join("x/y/z")).unwrap(), b"abc");
        assert_eq!(fs::read_dir(&cache.staging).unwrap().count(), 0);
    }

    /// The files of the partial download of key `k` of mount `m`: its data and its record's
    /// slots, by name.
    fn partial_files(cache: &Cache) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(cache.partial.join("m"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_partial_record_is_rewritten_in_place_and_survives_a_write_cut_short() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let open = || cache.partial("m", "k", "e1", 100).unwrap();
        let ranges = |r: &[(u64, u64)]| {
            let mut set = RangeSet::default();
            r.iter().for_each(|&(a, b)| set.insert(a..b));
            set
        };
        let (mut staged, present) = open();
        assert!(present.is_empty());
        // Many ranges, then one that merges them: a shorter record over a longer one.
        staged
            .record(&ranges(&[(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]))
            .unwrap();
        staged.record(&ranges(&[(0, 10)])).unwrap();
        let slots = partial_files(&cache);
        assert_eq!(slots.len(), 3, "{slots:?}");
        let dir = cache.partial.join("m");
        let inodes = || {
            slots[..2]
                .iter()
                .map(|n| fs::metadata(dir.join(n)).unwrap().ino())
        };
        let before: Vec<u64> = inodes().collect();
        staged.record(&ranges(&[(10, 20)])).unwrap();
        staged.record(&ranges(&[(20, 30)])).unwrap();
        assert_eq!(inodes().collect::<Vec<_>>(), before, "written in place");
        drop(staged);
        assert_eq!(open().1, ranges(&[(0, 30)]));

        // The newer slot's write cut short: the one before it is read.
        let newer = slots
            .iter()
            .map(|n| dir.join(n))
            .find(|p| fs::read_to_string(p).unwrap().contains("[[0,30]]"))
            .unwrap();
        fs::write(&newer, b"{\"key\":\"k\",\"etag\":\"e1\",\"si").unwrap();
        let (staged, present) = open();
        assert_eq!(present, ranges(&[(0, 20)]));

        // Completed: no record is left behind.
        staged
            .commit(
                &cache.prepare_mount_dir("m").unwrap(),
                "k",
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        assert!(partial_files(&cache).is_empty());
    }

    #[test]
    fn a_partial_download_of_another_version_starts_over() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let (mut staged, _) = cache.partial("m", "k", "e1", 100).unwrap();
        let mut set = RangeSet::default();
        set.insert(0..50);
        staged.record(&set).unwrap();
        staged.record(&set).unwrap();
        drop(staged);
        let (staged, present) = cache.partial("m", "k", "e2", 100).unwrap();
        assert!(present.is_empty());
        // The old version's record is gone, the data file is new and empty.
        assert_eq!(partial_files(&cache).len(), 1);
        assert_eq!(staged.file().metadata().unwrap().len(), 100);
        assert!(fs::read(staged.path()).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn a_second_process_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = Cache::open(tmp.path()).unwrap();
        let err = Cache::open(tmp.path()).err().unwrap().to_string();
        assert!(
            err.contains("another s3-synchronizer is already using"),
            "{err}"
        );
    }

    #[test]
    fn never_writes_or_deletes_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("victim"), b"keep").unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let dir = cache.prepare_mount_dir("m").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.join("d")).unwrap();

        let s = cache.stage(1).unwrap();
        assert!(matches!(
            s.commit(&dir, "d/victim", SystemTime::UNIX_EPOCH),
            Err(CacheError::NotADirectory(_))
        ));
        assert!(remove_file(&dir, "d/victim").is_err());
        assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"keep");
        // Nor is a file behind the link taken for one of the tool's.
        assert_eq!(probe(&dir, "d/victim"), Local::Other);
        fs::create_dir(dir.join("real")).unwrap();
        fs::write(dir.join("real/f"), b"abc").unwrap();
        assert_eq!(probe(&dir, "real/f"), Local::File { size: 3 });
        assert_eq!(probe(&dir, "real/missing"), Local::Missing);
    }

    #[test]
    fn a_directory_swapped_for_a_link_once_opened_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let dir = cache.prepare_mount_dir("m").unwrap();
        fs::create_dir(dir.join("d")).unwrap();
        let at = DirFd::open(&dir, "d", false).unwrap();
        // Someone moves the directory away and plants a link in its place.
        fs::rename(dir.join("d"), dir.join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.join("d")).unwrap();

        let s = cache.stage(0).unwrap();
        at.rename_into(&s.path, "f").unwrap();
        assert!(dir.join("moved/f").exists());
        assert!(!outside.path().join("f").exists());
        at.unlink("f", false).unwrap();
        assert!(!dir.join("moved/f").exists());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn removing_a_file_prunes_only_empty_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/f"), b"1").unwrap();
        fs::write(dir.join("a/mine"), b"user file").unwrap();
        assert!(remove_file(dir, "a/b/f").unwrap());
        assert!(!dir.join("a/b").exists());
        assert!(dir.join("a/mine").exists());
    }
}
