//! The root of a local copy (a `sync` destination, or a mount's cache): its lock, the staging
//! area of small files, and the resumable partial files of large ones with their records. See
//! [the module](super) for the invariants.

use super::dirs::{DirFd, ensure_dir, split};
use super::{LocalError, io_err};
use crate::mounts::STATE_DIR;
use crate::ranges::RangeSet;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The root of a local copy, locked for this process.
pub struct Root {
    root: PathBuf,
    staging: PathBuf,
    partial: PathBuf,
    next_staging: AtomicU64,
    /// This process's id, which names its staging files.
    pid: u32,
    _lock: File,
}

impl Root {
    /// Opens `root` (which must exist), takes its lock and clears staging debris.
    pub fn open(root: &Path) -> Result<Self, LocalError> {
        let meta = fs::metadata(root).map_err(io_err(root))?;
        if !meta.is_dir() {
            return Err(LocalError::NotADirectory(root.to_owned()));
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
                LocalError::Locked(root.to_owned())
            } else {
                io_err(&lock_path)(e)
            });
        }
        let cache = Self {
            root: root.to_owned(),
            partial: state.join("partial"),
            staging,
            next_staging: AtomicU64::new(0),
            pid: std::process::id(),
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
        manifest_dir(&self.root, id)
    }

    /// Whether a process holds the lock of `root` (without taking it for long: the `status`
    /// command asks from outside).
    pub fn in_use(root: &Path) -> bool {
        let Ok(lock) = File::open(root.join(STATE_DIR).join("lock")) else {
            return false;
        };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let taken = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        // Closing the descriptor releases a lock just taken.
        !taken
    }

    /// Creates the mount directory; refuses one that is a symbolic link.
    pub fn prepare_mount_dir(&self, id: &str) -> Result<PathBuf, LocalError> {
        let dir = self.mount_dir(id);
        ensure_dir(&self.root, id)?;
        Ok(dir)
    }

    /// A new empty staging file of `size` bytes.
    pub fn stage(&self, size: u64) -> Result<Staged, LocalError> {
        let n = self.next_staging.fetch_add(1, Ordering::Relaxed);
        let path = self.staging.join(format!("{}-{n}.part", self.pid));
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
        // A new file is empty already.
        if size > 0 {
            staged.file.set_len(size).map_err(io_err(&staged.path))?;
        }
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
    ) -> Result<(Staged, RangeSet), LocalError> {
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
    /// directory is not locked (measurements: docs/PERFORMANCE.md, "Partial-download records").
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

/// Where the manifest of mount `id` of the local copy at `root` is kept.
pub fn manifest_dir(root: &Path, id: &str) -> PathBuf {
    root.join(STATE_DIR).join("mounts").join(id)
}

/// The file in which a running `sync` says what it is doing, for the `status` command.
pub fn status_file(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join("status.json")
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
    pub fn record(&mut self, present: &RangeSet) -> Result<(), LocalError> {
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

    /// Sets the mtime and moves the complete file to `dir/rel`, creating directories as needed;
    /// returns the file's metadata at its final path (a rename changes its ctime).
    pub fn commit(
        mut self,
        dir: &Path,
        rel: &str,
        mtime: SystemTime,
    ) -> Result<Metadata, LocalError> {
        self.file.set_modified(mtime).map_err(io_err(&self.path))?;
        let (parent, name) = split(rel);
        let at = DirFd::open(dir, parent, true)?;
        let dest = at.path.join(name);
        at.rename_into(&self.path, name).map_err(io_err(&dest))?;
        self.committed = true;
        if let Some(record) = &mut self.record {
            record.remove();
        }
        self.file.metadata().map_err(io_err(&dest))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed && self.record.is_none() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_vanish_unless_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Root::open(tmp.path()).unwrap();
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

    #[test]
    fn a_commit_replaces_a_file_or_a_link_but_never_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let cache = Root::open(tmp.path()).unwrap();
        let dir = cache.prepare_mount_dir("m").unwrap();
        let commit = |rel: &str, data: &[u8]| {
            let s = cache.stage(data.len() as u64).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&*s.file(), data, 0).unwrap();
            s.commit(&dir, rel, SystemTime::UNIX_EPOCH)
        };

        commit("f", b"old").unwrap();
        commit("f", b"new").unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"new");

        // A directory there stays, with what it holds; the staging file is gone.
        fs::create_dir(dir.join("d")).unwrap();
        fs::write(dir.join("d/inner"), b"keep").unwrap();
        let e = commit("d", b"file").unwrap_err();
        assert!(e.to_string().contains("d"), "{e}");
        assert_eq!(fs::read(dir.join("d/inner")).unwrap(), b"keep");
        assert_eq!(fs::read_dir(&cache.staging).unwrap().count(), 0);

        // A link there is replaced itself; what it pointed at is untouched.
        fs::write(outside.path().join("target"), b"outside").unwrap();
        std::os::unix::fs::symlink(outside.path().join("target"), dir.join("l")).unwrap();
        commit("l", b"mine").unwrap();
        assert!(!fs::symlink_metadata(dir.join("l")).unwrap().is_symlink());
        assert_eq!(fs::read(dir.join("l")).unwrap(), b"mine");
        assert_eq!(fs::read(outside.path().join("target")).unwrap(), b"outside");
        // Nor is a link to a directory taken for one.
        std::os::unix::fs::symlink(outside.path(), dir.join("ld")).unwrap();
        commit("ld", b"mine too").unwrap();
        assert_eq!(fs::read(dir.join("ld")).unwrap(), b"mine too");
        assert!(outside.path().join("target").exists());
    }

    /// The files of the partial download of key `k` of mount `m`: its data and its record's
    /// slots, by name.
    fn partial_files(cache: &Root) -> Vec<String> {
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
        let cache = Root::open(tmp.path()).unwrap();
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
        let cache = Root::open(tmp.path()).unwrap();
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
        let _first = Root::open(tmp.path()).unwrap();
        let err = Root::open(tmp.path()).err().unwrap().to_string();
        assert!(
            err.contains("another s3-synchronizer is already using"),
            "{err}"
        );
    }
}
