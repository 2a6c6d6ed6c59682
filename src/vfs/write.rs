//! The operations of writeable mounts: create, open for writing, write, setattr, mkdir, unlink,
//! rmdir, rename, fsync. Each changes the mount's local copy first (the cache file or
//! directory at the path), then the tree, and marks the path ([`Override`]) until a listing
//! shows what was uploaded; then it tells the mount's [`WriteBack`](crate::upload::WriteBack).
//!
//! A file not downloaded yet is downloaded whole (ahead of the backlog) before it is opened
//! for writing without `O_TRUNC`, or renamed: its bytes must be in the local copy to be
//! changed or moved. A file open for writing is marked in the local copy
//! ([`MountCopy::begin_write`](crate::local::MountCopy::begin_write)): no download replaces it
//! and no write-back uploads it half written.
//!
//! Read-only mounts (and the top directory, the list of mounts) answer EROFS, a rename between
//! two mounts EXDEV.

use super::handle::Content;
use super::tree::{NodeKind, Override, join};
use super::{Access, Attr, FsError, Opened, Vfs};
use crate::engine::{DirShown, MountView};
use crate::store::ObjectMeta;
use std::fs::{FileTimes, Permissions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::time::SystemTime;

/// Mount `mount` of a file system (`V`: a `&Vfs` or an `Arc<Vfs>`), as its uploads ask it.
pub struct MountOf<V> {
    pub vfs: V,
    pub mount: usize,
}

impl<V: std::ops::Deref<Target = Vfs> + Send + Sync> MountView for MountOf<V> {
    fn dir(&self, path: &str) -> DirShown {
        self.vfs.dir_shown(self.mount, path)
    }

    fn changed(&self) -> Vec<String> {
        let tree = self.vfs.tree.read();
        let local = tree.local.keys().filter(|(m, _)| *m == self.mount);
        local.map(|(_, path)| path.clone()).collect()
    }
}

impl Vfs {
    /// What mount `mount` shows at directory `path`; not known before a listing of the bucket
    /// is whole (the cache's lacks the files not downloaded). A path it does not show as a
    /// directory counts as empty: nothing is known to be in it.
    pub fn dir_shown(&self, mount: usize, path: &str) -> DirShown {
        if !self.listed_whole(mount) || self.listings[mount].is_cached() {
            return DirShown::Unknown;
        }
        let tree = self.tree.read();
        match tree.find(mount, path).map(|ino| &tree.nodes[&ino].kind) {
            Some(NodeKind::Dir(children)) if !children.is_empty() => DirShown::Holding,
            _ => DirShown::Empty,
        }
    }
}

/// A time `setattr` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// What a `setattr` changes (`None`: left as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// A name in a directory of a writeable mount: where a new entry goes, or an old one is.
struct Place {
    mount: usize,
    path: String,
    /// The inode there now, if any.
    ino: Option<u64>,
}

impl SetTime {
    fn time(self) -> SystemTime {
        match self {
            SetTime::Now => SystemTime::now(),
            SetTime::At(t) => t,
        }
    }
}

impl Vfs {
    /// The mount directory `ino` is in (`None` for the top directory).
    fn mount_of(&self, ino: u64) -> Result<Option<usize>, FsError> {
        let tree = self.tree.read();
        Ok(tree.nodes.get(&ino).ok_or(FsError::NotFound)?.mount())
    }

    /// `name` in directory `parent`, which must be in a writeable mount.
    fn place(&self, parent: u64, name: &str) -> Result<Place, FsError> {
        let tree = self.tree.read();
        let node = tree.nodes.get(&parent).ok_or(FsError::NotFound)?;
        if tree.children(parent).is_none() {
            return Err(FsError::NotADirectory);
        }
        let mount = node.mount().ok_or(FsError::ReadOnly)?;
        if !self.mounted[mount].replica.mount.writeable {
            return Err(FsError::ReadOnly);
        }
        Ok(Place {
            mount,
            path: join(&tree.path(parent), name),
            ino: tree.child(parent, name),
        })
    }

    /// Marks a change at `path` of `mount` in the tree.
    fn mark(tree: &mut super::Tree, mount: usize, path: &str, o: Override) {
        tree.local.insert((mount, path.to_owned()), o);
    }

    /// Creates file `name` in `parent` and opens it for writing.
    pub fn create(&self, parent: u64, name: &str, mode: u32) -> Result<(Attr, Opened), FsError> {
        let place = self.place(parent, name)?;
        if place.ino.is_some() {
            return Err(FsError::Exists);
        }
        let copy = &self.mounted[place.mount].replica.copy;
        copy.begin_write(&place.path);
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC;
        let (file, metadata) = match copy.open_with(&place.path, flags, mode & 0o7777) {
            Ok(opened) => opened,
            Err(e) => {
                copy.end_write(&place.path);
                return Err(e.into());
            }
        };
        let ino = {
            let mut tree = self.tree.write();
            let seq = tree.next_seq();
            Self::mark(&mut tree, place.mount, &place.path, Override::File { seq });
            tree.insert(place.mount, &place.path, NodeKind::Local)
        };
        self.looked_up(ino);
        // The new file's attributes as it was opened: no second walk to it.
        let attr = super::file_attr(ino, &metadata)?;
        let content = Content::Cached(file, metadata);
        let opened = self.opened(ino, place.mount, &place.path, content, Some(Access::Write))?;
        self.write_backs[place.mount].touch();
        Ok((attr, opened))
    }

    /// Makes file `ino` a local file of its writeable mount, marked open for writing (the
    /// caller ends the mark): downloaded first unless `truncate` empties it anyway.
    async fn begin_local(&self, ino: u64, truncate: bool) -> Result<(usize, String), FsError> {
        let (mount, path, listed) = {
            let tree = self.tree.read();
            let node = tree.nodes.get(&ino).ok_or(FsError::NotFound)?;
            let mount = node.mount().ok_or(FsError::ReadOnly)?;
            match &node.kind {
                NodeKind::Dir(_) => return Err(FsError::IsADirectory),
                NodeKind::File(l) => {
                    let path = tree.path(ino);
                    let meta = l.meta(self.key_of(mount, &path));
                    (mount, path, Some(meta))
                }
                NodeKind::Local => (mount, tree.path(ino), None),
            }
        };
        let served = &self.mounted[mount];
        if !served.replica.mount.writeable {
            return Err(FsError::ReadOnly);
        }
        let copy = &served.replica.copy;
        let missing = listed.filter(|m| !copy.holds(&path, m));
        if let Some(meta) = missing.clone().filter(|_| !truncate) {
            let store = served.store.clone();
            self.engine
                .fetch_now(&served.replica, store, meta, path.clone())
                .await?;
        }
        copy.begin_write(&path);
        if let Some(meta) = missing.filter(|_| truncate) {
            // Emptied without being downloaded: the new bytes replace the version listed.
            if let Err(e) = copy.record_replaced(&path, &meta) {
                copy.end_write(&path);
                return Err(e.into());
            }
        }
        let mut tree = self.tree.write();
        let still_there = tree.nodes.contains_key(&ino) && tree.path(ino) == path;
        if let Some(node) = tree.nodes.get_mut(&ino)
            && still_there
            && !matches!(node.kind, NodeKind::Dir(_))
        {
            node.kind = NodeKind::Local;
        }
        let seq = tree.next_seq();
        Self::mark(&mut tree, mount, &path, Override::File { seq });
        Ok((mount, path))
    }

    /// Opens file `ino` for writing (and reading), emptied first if `truncate`.
    pub async fn open_write(&self, ino: u64, truncate: bool) -> Result<Opened, FsError> {
        let (mount, path) = self.begin_local(ino, truncate).await?;
        let copy = &self.mounted[mount].replica.copy;
        let flags = match truncate {
            true => libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
            false => libc::O_RDWR,
        };
        let opened = copy
            .open_with(&path, flags, 0o644)
            .map_err(FsError::from)
            .and_then(|(file, metadata)| {
                let content = Content::Cached(file, metadata);
                self.opened(ino, mount, &path, content, Some(Access::Write))
            });
        if opened.is_err() {
            copy.end_write(&path);
        }
        opened
    }

    /// Writes `data` at `offset` through a handle open for writing.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let handle = self
            .handles
            .get(&fh)
            .map(|h| h.clone())
            .ok_or(FsError::BadHandle)?;
        if handle.writes.is_none() {
            return Err(FsError::BadHandle);
        }
        handle.file.write_all_at(data, offset)?;
        Ok(data.len() as u32)
    }

    /// Changes the size, mode, owner or times of `ino`: of its file in the local copy, which
    /// keeps them (S3 stores none of them but the bytes).
    pub async fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Attr, FsError> {
        let attr = self.getattr(ino)?;
        if attr.kind == super::Kind::Dir {
            // Accepted, not kept: a directory shows the same attributes always.
            let (mount, writeable) = {
                let tree = self.tree.read();
                let mount = tree.nodes.get(&ino).and_then(|n| n.mount());
                (
                    mount,
                    mount.is_some_and(|m| self.mounted[m].replica.mount.writeable),
                )
            };
            return match (mount, writeable) {
                (Some(_), true) => Ok(attr),
                _ => Err(FsError::ReadOnly),
            };
        }
        let (mount, path) = self.begin_local(ino, set.size == Some(0)).await?;
        let copy = &self.mounted[mount].replica.copy;
        let changed = (|| -> Result<(), FsError> {
            let flags = match set.size {
                Some(_) => libc::O_RDWR | libc::O_CREAT,
                None => libc::O_RDONLY,
            };
            let (file, _) = copy.open_with(&path, flags, 0o644)?;
            if let Some(size) = set.size {
                file.set_len(size)?;
            }
            if let Some(mode) = set.mode {
                file.set_permissions(Permissions::from_mode(mode & 0o7777))?;
            }
            if set.uid.is_some() || set.gid.is_some() {
                std::os::unix::fs::fchown(&file, set.uid, set.gid)?;
            }
            let mut times = FileTimes::new();
            if let Some(t) = set.atime {
                times = times.set_accessed(t.time());
            }
            if let Some(t) = set.mtime {
                times = times.set_modified(t.time());
            }
            if set.atime.is_some() || set.mtime.is_some() {
                file.set_times(times)?;
            }
            Ok(())
        })();
        copy.end_write(&path);
        self.write_backs[mount].touch();
        changed?;
        self.local_attr(ino, mount, &path)
    }

    /// Makes directory `name` in `parent`.
    pub fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<Attr, FsError> {
        let place = self.place(parent, name)?;
        if place.ino.is_some() {
            return Err(FsError::Exists);
        }
        let copy = &self.mounted[place.mount].replica.copy;
        copy.make_dir(&place.path, mode & 0o7777)?;
        let ino = {
            let mut tree = self.tree.write();
            Self::mark(&mut tree, place.mount, &place.path, Override::Dir);
            tree.insert(place.mount, &place.path, NodeKind::dir())
        };
        self.looked_up(ino);
        self.write_backs[place.mount].touch();
        self.getattr(ino)
    }

    /// Removes file `name` (or, with `dir`, the empty directory) from `parent`; the next
    /// upload deletes its object.
    pub fn remove(&self, parent: u64, name: &str, dir: bool) -> Result<(), FsError> {
        let place = self.place(parent, name)?;
        let ino = place.ino.ok_or(FsError::NotFound)?;
        let listed = {
            let tree = self.tree.read();
            match &tree.nodes[&ino].kind {
                NodeKind::Dir(children) if dir && !children.is_empty() => {
                    return Err(FsError::NotEmpty);
                }
                NodeKind::Dir(_) if dir => None,
                NodeKind::Dir(_) => return Err(FsError::IsADirectory),
                _ if dir => return Err(FsError::NotADirectory),
                NodeKind::File(l) => Some(l.meta(self.key_of(place.mount, &place.path))),
                NodeKind::Local => None,
            }
        };
        let copy = &self.mounted[place.mount].replica.copy;
        copy.unlink(&place.path, dir, listed.as_ref())?;
        let etag = copy.recorded(&place.path).etag;
        self.drop_paths(place.mount, &[(ino, place.path, dir, etag)]);
        self.write_backs[place.mount].touch();
        Ok(())
    }

    /// Takes the entries `gone` (inode, path, is a directory, the version recorded there) out
    /// of the tree, marked removed until the listings stop showing them.
    fn drop_paths(&self, mount: usize, gone: &[(u64, String, bool, Option<String>)]) {
        let mut tree = self.tree.write();
        for (ino, path, dir, etag) in gone {
            for (ino, node) in tree.remove(*ino) {
                self.retire(&mut tree, ino, &node);
            }
            let gone = Override::Gone {
                etag: etag.clone(),
                dir: *dir,
            };
            Self::mark(&mut tree, mount, path, gone);
        }
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, replacing a file or an empty
    /// directory there (unless `noreplace`). A directory's files not downloaded yet are
    /// downloaded first: the local copy must hold everything it moves.
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        noreplace: bool,
    ) -> Result<(), FsError> {
        let (a, b) = (self.mount_of(parent)?, self.mount_of(new_parent)?);
        if a != b {
            return Err(FsError::CrossMount);
        }
        self.listed_below(parent, name).await;
        let from = self.place(parent, name)?;
        let to = self.place(new_parent, new_name)?;
        let ino = from.ino.ok_or(FsError::NotFound)?;
        if to.ino == Some(ino) {
            return Ok(());
        }
        let mount = from.mount;
        let served = &self.mounted[mount];
        // What moves, and what must be downloaded first.
        let mut replaces = None;
        let (moving, fetch, is_dir) = {
            let tree = self.tree.read();
            let moving = tree.subtree(ino);
            let fetch: Vec<(String, ObjectMeta)> = moving
                .iter()
                .filter_map(|(i, p, _)| match &tree.nodes[i].kind {
                    NodeKind::File(l) => Some((p.clone(), l.meta(self.key_of(mount, p)))),
                    _ => None,
                })
                .collect();
            let is_dir = matches!(tree.nodes[&ino].kind, NodeKind::Dir(_));
            if let Some(target) = to.ino {
                if let NodeKind::File(l) = &tree.nodes[&target].kind {
                    replaces = Some(l.meta(self.key_of(mount, &to.path)));
                }
                match (&tree.nodes[&target].kind, is_dir) {
                    _ if noreplace => return Err(FsError::Exists),
                    (NodeKind::Dir(c), true) if !c.is_empty() => return Err(FsError::NotEmpty),
                    (NodeKind::Dir(_), true) => {}
                    (NodeKind::Dir(_), false) => return Err(FsError::IsADirectory),
                    (_, true) => return Err(FsError::NotADirectory),
                    (_, false) => {}
                }
            }
            if is_dir && to.path.starts_with(&format!("{}/", from.path)) {
                return Err(FsError::Unsupported);
            }
            (moving, fetch, is_dir)
        };
        let copy = &served.replica.copy;
        for (path, meta) in fetch {
            if !copy.holds(&path, &meta) {
                let store = served.store.clone();
                self.engine
                    .fetch_now(&served.replica, store, meta, path)
                    .await?;
            }
        }
        if is_dir {
            // A directory only the listing implies may not be in the local copy yet.
            for (_, path, dir) in &moving {
                if *dir {
                    copy.make_dir(path, 0o755)?;
                }
            }
        }
        let replaces = replaces.filter(|m| !copy.holds(&to.path, m));
        copy.rename(&from.path, &to.path, noreplace, replaces.as_ref())?;
        // The versions recorded at the old paths, which the next upload deletes.
        let old: Vec<(u64, String, bool, Option<String>)> = moving
            .iter()
            .map(|(i, p, d)| (*i, p.clone(), *d, copy.recorded(p).etag))
            .collect();
        let mut tree = self.tree.write();
        if let Some(target) = to.ino {
            for (ino, node) in tree.remove(target) {
                self.retire(&mut tree, ino, &node);
            }
        }
        tree.rename(ino, new_parent, new_name);
        for (i, old_path, dir, etag) in old {
            let gone = Override::Gone { etag, dir };
            Self::mark(&mut tree, mount, &old_path, gone);
            let new_path = tree.path(i);
            let node = tree.nodes.get_mut(&i).expect("moved");
            let o = match dir {
                true => Override::Dir,
                false => {
                    node.kind = NodeKind::Local;
                    Override::File {
                        seq: tree.next_seq(),
                    }
                }
            };
            Self::mark(&mut tree, mount, &new_path, o);
        }
        drop(tree);
        self.write_backs[mount].touch();
        Ok(())
    }

    /// Waits until the file behind handle `fh` is in the bucket as it is now (a handle that
    /// cannot write has nothing to wait for).
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        let handle = self
            .handles
            .get(&fh)
            .map(|h| h.clone())
            .ok_or(FsError::BadHandle)?;
        let Some(mount) = handle.writes else {
            return Ok(());
        };
        let Some(path) = self.path_of(handle.ino) else {
            // Deleted since: nothing to keep.
            return Ok(());
        };
        let served = &self.mounted[mount];
        self.engine
            .upload_now(&served.replica, served.store.clone(), &path)
            .await?;
        Ok(())
    }
}
