//! Symlink-safe directory primitives: directories are opened one component at a time with
//! `O_NOFOLLOW`, and files are renamed into, unlinked from and opened in those open
//! directories, so a symbolic link planted on the way (or swapped in meanwhile) is never
//! followed.

use super::manifest::Stamp;
use super::{LocalError, io_err};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Creates `base/rel` and every directory between, refusing to pass through anything that is not
/// a real directory (a symbolic link planted there, or a file).
pub fn ensure_dir(base: &Path, rel: &str) -> Result<(), LocalError> {
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
    Prober::new(dir).probe(rel)
}

/// [`probe`] of many paths, as a plan asks of every object of a listing. The directory of the
/// last path probed stays open for the next path in it, and a directory that is missing (or is
/// not one) answers for every path in it: paths in key order cost one `lstat` each, or nothing
/// in a directory not made yet, instead of a walk from `dir` each (three system calls or more).
pub struct Prober<'a> {
    dir: &'a Path,
    /// The parent of the last path probed, and its directory or what stands in its place.
    last: RefCell<Option<(String, Result<DirFd, Local>)>>,
}

impl<'a> Prober<'a> {
    pub fn new(dir: &'a Path) -> Self {
        Self {
            dir,
            last: RefCell::new(None),
        }
    }

    pub fn probe(&self, rel: &str) -> Local {
        let (parent, name) = split(rel);
        let mut last = self.last.borrow_mut();
        let at = match &mut *last {
            Some((p, at)) if p == parent => at,
            slot => {
                let at = match DirFd::open(self.dir, parent, false) {
                    Ok(at) => Ok(at),
                    Err(LocalError::NotADirectory(_)) => Err(Local::Other),
                    Err(_) => Err(Local::Missing),
                };
                &mut slot.insert((parent.to_owned(), at)).1
            }
        };
        let at = match at {
            Ok(at) => at,
            Err(instead) => return *instead,
        };
        match at.lstat(name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Local::File {
                size: st.st_size as u64,
            },
            Ok(_) => Local::Other,
            Err(_) => Local::Missing,
        }
    }
}

/// Opens the regular file `dir/rel` for reading, following no symbolic link on the way or at
/// the end (what is read is the tool's own file), with its metadata.
pub fn open_file(dir: &Path, rel: &str) -> Result<(File, Metadata), LocalError> {
    let (parent, name) = split(rel);
    let at = DirFd::open(dir, parent, false)?;
    let path = at.path.join(name);
    let fd = DirFd::name(name)
        .and_then(|name| openat(&at.fd, &name, libc::O_RDONLY))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => LocalError::NotAFile(path.clone()),
            _ => io_err(&path)(e),
        })?;
    let file = File::from(fd);
    match file.metadata() {
        Ok(m) if m.is_file() => Ok((file, m)),
        Ok(_) => Err(LocalError::NotAFile(path)),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Removes the regular file `dir/rel`, then its parents up to `dir` while they are empty.
/// Returns whether a file was removed; something other than a regular file is left alone.
pub fn remove_file(dir: &Path, rel: &str) -> Result<bool, LocalError> {
    let (parent, name) = split(rel);
    let at = match DirFd::open(dir, parent, false) {
        Ok(at) => at,
        Err(LocalError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
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
pub(super) fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// What a walk of a mount's directory found at a relative path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    File(Stamp),
    Dir { empty: bool },
}

/// A walk of a mount's directory: every regular file and directory by relative path, and what
/// was passed over (symbolic links, devices, sockets, names that are not UTF-8: none is a file an
/// object can be made of).
#[derive(Debug, Default)]
pub struct Scanned {
    pub found: BTreeMap<String, Found>,
    pub passed_over: Vec<PathBuf>,
}

/// Walks `dir` without following a symbolic link. A directory that cannot be read fails the
/// walk: a file missing from it would look deleted.
pub fn scan(dir: &Path) -> Result<Scanned, LocalError> {
    let mut out = Scanned::default();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            dir.to_owned()
        } else {
            dir.join(&rel)
        };
        let entries = match std::fs::read_dir(&path) {
            Err(e) if rel.is_empty() && e.kind() == io::ErrorKind::NotFound => return Ok(out),
            other => other.map_err(io_err(&path))?,
        };
        let mut empty = true;
        for entry in entries {
            empty = false;
            let entry = entry.map_err(io_err(&path))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                out.passed_over.push(entry.path());
                continue;
            };
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // `DirEntry::metadata` is an lstat: a link is seen as a link.
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            if meta.is_file() {
                out.found.insert(child, Found::File(Stamp::of(&meta)));
            } else if meta.is_dir() {
                stack.push(child);
            } else {
                out.passed_over.push(entry.path());
            }
        }
        if !rel.is_empty() {
            out.found.insert(rel, Found::Dir { empty });
        }
    }
    Ok(out)
}

/// What a walk of `dir` ([`scan`]) would find at `rel` alone: a file, a directory, or nothing
/// (also for what a walk passes over: a link, a device, a socket).
pub fn find(dir: &Path, rel: &str) -> Result<Option<Found>, LocalError> {
    let (parent, name) = split(rel);
    // Through real directories only, as a walk goes: a link in place of one hides what is below.
    let at = match DirFd::open(dir, parent, false) {
        Ok(at) => at,
        Err(LocalError::NotADirectory(_)) => return Ok(None),
        Err(LocalError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let path = at.path.join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    Ok(if meta.is_file() {
        Some(Found::File(Stamp::of(&meta)))
    } else if meta.is_dir() {
        let mut entries = std::fs::read_dir(&path).map_err(io_err(&path))?;
        Some(Found::Dir {
            empty: entries.next().is_none(),
        })
    } else {
        None
    })
}

/// Renames the regular file `dir/from` to `dir/to`, which must not exist, following no symbolic
/// link on the way and creating `to`'s directories as needed.
pub fn rename_file(dir: &Path, from: &str, to: &str) -> Result<(), LocalError> {
    rename(dir, from, to, libc::RENAME_NOREPLACE)
}

/// Opens the regular file `dir/rel` with `flags` (`O_RDWR`, `O_CREAT | O_EXCL`, `O_TRUNC`...,
/// a new file getting `mode`), following no symbolic link on the way or at the end: what the
/// file system writes is the tool's own file. The directories on the way are made if missing
/// (a directory the listing implies may not be in the copy yet).
pub fn open_with(
    dir: &Path,
    rel: &str,
    flags: libc::c_int,
    mode: u32,
) -> Result<(File, Metadata), LocalError> {
    let (parent, name) = split(rel);
    let c_name = DirFd::name(name).map_err(io_err(&dir.join(rel)))?;
    // A directory left empty may be removed between its open and the create in it (the tool
    // removes the empty directories of its own): made again, once.
    let mut tries = if flags & libc::O_CREAT != 0 { 2 } else { 1 };
    let (raw, path) = loop {
        let at = DirFd::open(dir, parent, true)?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name; the mode is passed
        // as the variadic argument open(2) reads when it creates.
        let raw = unsafe {
            libc::openat(
                at.fd.as_raw_fd(),
                c_name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        let path = at.path.join(name);
        if raw >= 0 {
            break (raw, path);
        }
        tries -= 1;
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ELOOP) => return Err(LocalError::NotAFile(path)),
            e if e.kind() == io::ErrorKind::NotFound && tries > 0 => {}
            e => return Err(io_err(&path)(e)),
        }
    };
    // SAFETY: `raw` is a descriptor just opened and owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    match file.metadata() {
        Ok(m) if m.is_file() => Ok((file, m)),
        Ok(_) => Err(LocalError::NotAFile(path)),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Makes the directory `dir/rel` with `mode` (its parents as needed); one already there is
/// fine.
pub fn make_dir(dir: &Path, rel: &str, mode: u32) -> Result<(), LocalError> {
    let (parent, name) = split(rel);
    let at = DirFd::open(dir, parent, true)?;
    let path = at.path.join(name);
    let name = DirFd::name(name).map_err(io_err(&path))?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    if unsafe { libc::mkdirat(at.fd.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(io_err(&path)(e));
        }
    }
    Ok(())
}

/// Removes `dir/rel` itself, an empty directory if `is_dir`, else a file; one already gone is
/// fine. Unlike [`remove_file`], empty parents stay: they are the user's directories.
pub fn unlink(dir: &Path, rel: &str, is_dir: bool) -> Result<(), LocalError> {
    let (parent, name) = split(rel);
    let at = match DirFd::open(dir, parent, false) {
        Ok(at) => at,
        Err(LocalError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let path = at.path.join(name);
    match at.unlink(name, is_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
        _ => Ok(()),
    }
}

/// Renames `dir/from` (a file or a directory) to `dir/to`, replacing what is there as
/// rename(2) does (`flags` 0) or failing if something is (`RENAME_NOREPLACE`), following no
/// symbolic link on the way; `to`'s directories are made if missing.
pub fn rename(dir: &Path, from: &str, to: &str, flags: libc::c_uint) -> Result<(), LocalError> {
    let (from_parent, from_name) = split(from);
    let (to_parent, to_name) = split(to);
    let src = DirFd::open(dir, from_parent, false)?;
    let dst = DirFd::open(dir, to_parent, true)?;
    let path = dst.path.join(to_name);
    let (from_c, to_c) = (
        DirFd::name(from_name).map_err(io_err(&path))?,
        DirFd::name(to_name).map_err(io_err(&path))?,
    );
    // SAFETY: valid directory descriptors and NUL-terminated names.
    let rc = unsafe {
        libc::renameat2(
            src.fd.as_raw_fd(),
            from_c.as_ptr(),
            dst.fd.as_raw_fd(),
            to_c.as_ptr(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io_err(&path)(io::Error::last_os_error()));
    }
    Ok(())
}

/// A directory opened one component at a time without following symbolic links: what is done
/// relative to it (rename, unlink, lstat) stays in it, even if someone swaps a component for a
/// link meanwhile. (Checking each component with `lstat` first would leave that window open.)
pub(super) struct DirFd {
    fd: OwnedFd,
    pub(super) path: PathBuf,
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
    pub(super) fn open(base: &Path, rel: &str, create: bool) -> Result<Self, LocalError> {
        let mut fd = File::open(base).map_err(io_err(base))?.into();
        let mut path = base.to_owned();
        for component in rel.split('/').filter(|c| !c.is_empty()) {
            path.push(component);
            let name =
                CString::new(component).map_err(|_| LocalError::NotADirectory(path.clone()))?;
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
                    return Err(LocalError::NotADirectory(path));
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
    pub(super) fn lstat(&self, name: &str) -> io::Result<libc::stat> {
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

    /// Moves `from` (a path in the tool's own state directory) to `name` in this directory,
    /// replacing what is there unless it is a directory (`IsADirectory`).
    pub(super) fn rename_into(&self, from: &Path, name: &str) -> io::Result<()> {
        let from = CString::new(from.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let name = Self::name(name)?;
        // The file replaced (an older version) is held open across the rename, so that its
        // blocks are freed when this closes it, not inside the rename with both directories
        // locked: freeing gigabytes (with discards, on some disks) takes long, and readers look
        // files up in those directories meanwhile. The same lookup tells whether a directory
        // is there: a download of many small files pays for one lookup of its name, not two.
        let replaced = openat(&self.fd, &name, libc::O_PATH).map(File::from);
        if let Ok(replaced) = &replaced
            && replaced.metadata().is_ok_and(|m| m.is_dir())
        {
            return Err(io::ErrorKind::IsADirectory.into());
        }
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
    pub(super) fn unlink(&self, name: &str, dir: bool) -> io::Result<()> {
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
    use crate::local::Root;
    use std::fs;
    use std::time::SystemTime;

    #[test]
    fn find_sees_at_one_path_what_a_walk_sees_there() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("real/empty")).unwrap();
        fs::write(dir.join("real/f"), b"f").unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let walked = scan(dir).unwrap().found;
        for rel in [
            "real",
            "real/f",
            "real/empty",
            "link",
            "link/f",
            "missing",
            "real/f/x",
        ] {
            assert_eq!(find(dir, rel).unwrap(), walked.get(rel).copied(), "{rel}");
        }
    }

    #[test]
    fn never_writes_or_deletes_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("victim"), b"keep").unwrap();
        let cache = Root::open(tmp.path()).unwrap();
        let dir = cache.prepare_mount_dir("m").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.join("d")).unwrap();

        let s = cache.stage(1).unwrap();
        assert!(matches!(
            s.commit(&dir, "d/victim", SystemTime::UNIX_EPOCH),
            Err(LocalError::NotADirectory(_))
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
        let cache = Root::open(tmp.path()).unwrap();
        let dir = cache.prepare_mount_dir("m").unwrap();
        fs::create_dir(dir.join("d")).unwrap();
        let at = DirFd::open(&dir, "d", false).unwrap();
        // Someone moves the directory away and plants a link in its place.
        fs::rename(dir.join("d"), dir.join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.join("d")).unwrap();

        let s = cache.stage(0).unwrap();
        at.rename_into(s.path(), "f").unwrap();
        assert!(dir.join("moved/f").exists());
        assert!(!outside.path().join("f").exists());
        at.unlink("f", false).unwrap();
        assert!(!dir.join("moved/f").exists());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_prober_answers_each_path_as_a_walk_from_the_top_would() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/f1"), b"1").unwrap();
        fs::write(dir.join("a/f22"), b"22").unwrap();
        fs::write(dir.join("a/b/f"), b"333").unwrap();
        fs::write(dir.join("top"), b"4444").unwrap();
        fs::write(outside.path().join("secret"), b"55555").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.join("link")).unwrap();

        let prober = Prober::new(dir);
        let file = |size| Local::File { size };
        // In key order, and back to a directory probed before.
        let cases = [
            ("a/b", Local::Other),
            ("a/b/f", file(3)),
            ("a/b/missing", Local::Missing),
            ("a/f1", file(1)),
            ("a/f22", file(2)),
            ("a/gone", Local::Missing),
            ("gone/x", Local::Missing),
            ("gone/y", Local::Missing),
            ("link/secret", Local::Other),
            ("top", file(4)),
            ("top/x", Local::Other),
            ("a/f1", file(1)),
        ];
        for (path, want) in cases {
            assert_eq!(prober.probe(path), want, "{path}");
        }
        // A file made in a directory after it was probed is found (the directory is read again,
        // not remembered).
        fs::write(dir.join("a/later"), b"666666").unwrap();
        assert_eq!(prober.probe("a/later"), file(6));
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
