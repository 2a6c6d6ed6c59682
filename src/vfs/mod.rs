//! The file system of mount mode, not tied to FUSE: an inode table built from the listings, and
//! lookup/getattr/readdir/open/read over the local cache. `fuse.rs` only translates.
//!
//! Layout: inode 1 is the root; its children are the mount ids; below each, the mount's objects as
//! [`layout`] maps them (the same mapping `sync` writes to disk).
//!
//! Inode numbers are stable: a path keeps its inode across refreshes for as long as it exists
//! with the same content. An object that changes gets a new inode, so one inode always stands
//! for one version: the kernel never mixes pages of two versions, and FUSE passthrough (which
//! binds an inode to one backing file) keeps working. An open handle holds the cache file it
//! opened, so a reader keeps the version it opened even when a refresh replaces the file (the
//! rename leaves the old file alive for open handles).
//!
//! Lock order: `tree`, then one of the maps (`known`, `retired`, `versions`: a `DashMap` shard
//! lock for one operation), never the other way round; `handles` is taken alone. None is held
//! across an `.await`, file I/O, or a call into the engine or a mount's local copy (whose own
//! locks, described in `engine` and `local::copy`, are therefore never taken under these).
//!
//! Rooms: [`tree`] (inodes and attributes), [`handle`] (open files and read-ahead), [`error`]
//! (failures and their errno).

mod error;
mod handle;
mod tree;

pub use error::FsError;
pub use handle::Opened;
pub use tree::{Attr, Kind, ROOT};

use crate::engine::{Engine, ReadAhead, Reader, Replica};
use crate::paths::layout;
use crate::store::{ObjectMeta, ObjectStore};
use dashmap::{DashMap, DashSet};
use handle::{Content, Handle, pread};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use tree::{Node, NodeKind, Tree};

/// How an open stands after what it can do without waiting.
enum Opening {
    Done(Result<Opened, FsError>),
    /// A small file (opened once downloaded), or a download someone else is still setting up:
    /// file `path` of mount `mount`, listed as `meta`.
    Wait {
        mount: usize,
        path: String,
        meta: ObjectMeta,
    },
}

/// A mount as the file system serves it: its local copy and its bucket.
pub struct Mounted {
    pub replica: Arc<Replica>,
    pub store: Arc<dyn ObjectStore>,
}

/// The file system. `mounted`, `engine` and `started` are fixed at construction; every other
/// field guards itself (its own lock, shard locks, or an atomic), in the lock order above.
pub struct Vfs {
    /// Inodes and directory entries; written only by [`Vfs::update`], read by everything else.
    tree: RwLock<Tree>,
    mounted: Vec<Mounted>,
    engine: Arc<Engine>,
    /// Open files by handle number.
    handles: DashMap<u64, Arc<Handle>>,
    /// The version (cache file inode) each inode was last opened at.
    versions: DashMap<u64, u64>,
    /// Inodes the kernel has looked up and not yet forgotten.
    known: DashSet<u64>,
    /// The last attributes of known inodes that a refresh replaced or removed.
    retired: DashMap<u64, Attr>,
    /// The next handle number.
    next_fh: AtomicU64,
    /// Directories show the time the file system started.
    started: SystemTime,
}

impl Vfs {
    /// A file system with an empty directory per mount; [`Vfs::update`] fills them.
    pub fn new(engine: Arc<Engine>, mounted: Vec<Mounted>) -> Self {
        let mut tree = Tree {
            next: ROOT,
            ..Tree::default()
        };
        tree.inos.insert((None, String::new()), ROOT);
        let mut root = BTreeMap::new();
        for (mount, served) in mounted.iter().enumerate() {
            let ino = tree.ino_for(Some(mount), "");
            root.insert(served.replica.mount.id.clone(), ino);
            tree.nodes.insert(
                ino,
                Node {
                    parent: ROOT,
                    mount: Some(mount),
                    path: String::new(),
                    kind: NodeKind::Dir(BTreeMap::new()),
                },
            );
        }
        tree.nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                mount: None,
                path: String::new(),
                kind: NodeKind::Dir(root),
            },
        );
        Self {
            tree: RwLock::new(tree),
            mounted,
            engine,
            handles: DashMap::new(),
            versions: DashMap::new(),
            known: DashSet::new(),
            retired: DashMap::new(),
            next_fh: AtomicU64::new(1),
            started: SystemTime::now(),
        }
    }

    pub fn mounted(&self) -> &[Mounted] {
        &self.mounted
    }

    /// Replaces mount `mount`'s tree with what `remote`, a fresh listing of it, describes.
    pub fn update(&self, mount: usize, remote: &[ObjectMeta]) {
        let prefix = &self.mounted[mount].replica.mount.prefix;
        let layout = layout(prefix, remote);
        let mut dirs: Vec<&str> = layout
            .dirs
            .keys()
            .chain(layout.implied_dirs.iter())
            .map(String::as_str)
            .collect();
        // Parents before children.
        dirs.sort_by_key(|d| (d.matches('/').count(), *d));
        dirs.dedup();
        let is_dir: HashSet<&str> = dirs.iter().copied().collect();

        let mut tree = self.tree.write();
        let mount_ino = tree.ino_for(Some(mount), "");
        // Drop the mount's old nodes; their paths keep their inode numbers if they come back
        // unchanged.
        let old: Vec<u64> = tree
            .nodes
            .iter()
            .filter(|(ino, n)| n.mount == Some(mount) && **ino != mount_ino)
            .map(|(&ino, _)| ino)
            .collect();
        for ino in old {
            let node = tree.nodes.remove(&ino).expect("listed above");
            let same = match &node.kind {
                NodeKind::Dir(_) => is_dir.contains(node.path.as_str()),
                NodeKind::File(old) => layout
                    .files
                    .get(&node.path)
                    .is_some_and(|new| new.etag == old.etag && new.size == old.size),
            };
            if !same {
                if self.known.contains(&ino) {
                    self.retired.insert(ino, self.attr_of(ino, &node));
                }
                tree.inos.remove(&(Some(mount), node.path));
                self.versions.remove(&ino);
            }
        }
        tree.children_mut(mount_ino).clear();

        let parent_of = |tree: &mut Tree, path: &str| match path.rsplit_once('/') {
            Some((parent, _)) => tree.ino_for(Some(mount), parent),
            None => mount_ino,
        };
        let name_of = |path: &str| path.rsplit('/').next().unwrap_or(path).to_owned();
        for dir in dirs {
            let ino = tree.ino_for(Some(mount), dir);
            let parent = parent_of(&mut tree, dir);
            tree.nodes.insert(
                ino,
                Node {
                    parent,
                    mount: Some(mount),
                    path: dir.to_owned(),
                    kind: NodeKind::Dir(BTreeMap::new()),
                },
            );
            tree.children_mut(parent).insert(name_of(dir), ino);
        }
        for (path, meta) in layout.files {
            let ino = tree.ino_for(Some(mount), &path);
            let parent = parent_of(&mut tree, &path);
            tree.children_mut(parent).insert(name_of(&path), ino);
            tree.nodes.insert(
                ino,
                Node {
                    parent,
                    mount: Some(mount),
                    path,
                    kind: NodeKind::File(meta.clone()),
                },
            );
        }
    }

    fn attr_of(&self, ino: u64, node: &Node) -> Attr {
        match &node.kind {
            NodeKind::Dir(_) => Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                mtime: self.started,
            },
            NodeKind::File(meta) => Attr {
                ino,
                kind: Kind::File,
                size: meta.size,
                mtime: meta.last_modified,
            },
        }
    }

    /// The attributes of `ino`, also of a version a refresh has since replaced or removed while
    /// the kernel still holds it (an open handle still reads it, and `fstat` asks).
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if let Some(node) = self.tree.read().nodes.get(&ino) {
            return Ok(self.attr_of(ino, node));
        }
        self.retired
            .get(&ino)
            .map(|a| a.clone())
            .ok_or(FsError::NotFound)
    }

    /// The kernel has dropped `ino`: it will not ask about it again.
    pub fn forget(&self, ino: u64) {
        self.known.remove(&ino);
        self.retired.remove(&ino);
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let tree = self.tree.read();
        let node = tree.nodes.get(&parent).ok_or(FsError::NotFound)?;
        let NodeKind::Dir(children) = &node.kind else {
            return Err(FsError::NotADirectory);
        };
        let ino = *children.get(name).ok_or(FsError::NotFound)?;
        self.known.insert(ino);
        Ok(self.attr_of(ino, &tree.nodes[&ino]))
    }

    /// The entries of a directory, `.` and `..` first.
    pub fn readdir(&self, ino: u64) -> Result<Vec<(u64, Kind, String)>, FsError> {
        let tree = self.tree.read();
        let node = tree.nodes.get(&ino).ok_or(FsError::NotFound)?;
        let NodeKind::Dir(children) = &node.kind else {
            return Err(FsError::NotADirectory);
        };
        let mut out = vec![
            (ino, Kind::Dir, ".".to_owned()),
            (node.parent, Kind::Dir, "..".to_owned()),
        ];
        for (name, &child) in children {
            let kind = match tree.nodes[&child].kind {
                NodeKind::Dir(_) => Kind::Dir,
                NodeKind::File(_) => Kind::File,
            };
            out.push((child, kind, name.clone()));
        }
        Ok(out)
    }

    /// Opens a file for reading. A file the cache does not hold yet starts downloading (or its
    /// download is joined); a large one opens at once and each read waits only for its range,
    /// a small one opens once it is downloaded, ahead of the backlog.
    pub async fn open(&self, ino: u64) -> Result<Opened, FsError> {
        let (mount, path, meta) = match self.try_open(ino) {
            Opening::Done(opened) => return opened,
            Opening::Wait { mount, path, meta } => (mount, path, meta),
        };
        let served = &self.mounted[mount];
        let reader = self
            .engine
            .open_reader(&served.replica, served.store.clone(), meta, path.clone())
            .await?;
        let content = match reader {
            Reader::Partial(d) => Content::Downloading(d),
            Reader::Complete => Content::Committed,
        };
        self.opened(ino, mount, &path, content)
    }

    /// [`Vfs::open`] when it needs no waiting: always for a file in the cache or a large one;
    /// `None` otherwise (then use [`Vfs::open`]). On a FUSE thread, this spares the open a trip
    /// through a runtime, which a busy machine can make cost milliseconds.
    pub fn open_now(&self, ino: u64) -> Option<Result<Opened, FsError>> {
        match self.try_open(ino) {
            Opening::Done(opened) => Some(opened),
            Opening::Wait { .. } => None,
        }
    }

    /// What an open can do without waiting: all of it, or everything up to the download it
    /// has to wait for.
    fn try_open(&self, ino: u64) -> Opening {
        let (mount, path, meta) = match self.file_of(ino) {
            Ok(file) => file,
            Err(e) => return Opening::Done(Err(e)),
        };
        let served = &self.mounted[mount];
        let content = match served.replica.copy.open_held(&path, &meta) {
            Some((file, metadata)) => Content::Cached(file, metadata),
            None => {
                let reader = self.engine.open_reader_now(
                    &served.replica,
                    served.store.clone(),
                    meta.clone(),
                    path.clone(),
                );
                match reader {
                    Some(Ok(Reader::Partial(d))) => Content::Downloading(d),
                    Some(Ok(Reader::Complete)) => Content::Committed,
                    Some(Err(e)) => return Opening::Done(Err(e.into())),
                    None => return Opening::Wait { mount, path, meta },
                }
            }
        };
        Opening::Done(self.opened(ino, mount, &path, content))
    }

    /// The mount index, path and listing of file `ino`.
    fn file_of(&self, ino: u64) -> Result<(usize, String, ObjectMeta), FsError> {
        let tree = self.tree.read();
        let node = tree.nodes.get(&ino).ok_or(FsError::NotFound)?;
        match (&node.kind, node.mount) {
            (NodeKind::File(meta), Some(mount)) => Ok((mount, node.path.clone(), meta.clone())),
            _ => Err(FsError::IsADirectory),
        }
    }

    /// A new handle of `ino`, reading `content`.
    fn opened(
        &self,
        ino: u64,
        mount: usize,
        path: &str,
        content: Content,
    ) -> Result<Opened, FsError> {
        let (file, metadata, download) = match content {
            Content::Cached(file, metadata) => (Arc::new(file), metadata, None),
            Content::Downloading(d) => (d.file().clone(), d.file().metadata()?, Some(d)),
            Content::Committed => {
                // Deleted from the bucket while the open waited: ENOENT.
                let (file, metadata) = self.mounted[mount].replica.copy.open_file(path)?;
                (Arc::new(file), metadata, None)
            }
        };
        // Each download is a new file, renamed into place when complete, so the file's inode
        // identifies the version.
        let version = metadata.ino();
        let keep_cache = self.versions.insert(ino, version) == Some(version);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let partial = download.is_some();
        self.handles.insert(
            fh,
            Arc::new(Handle {
                file,
                download,
                read_ahead: ReadAhead::default(),
            }),
        );
        Ok(Opened {
            fh,
            keep_cache,
            partial,
        })
    }

    /// The cache file behind an open handle.
    pub fn handle_file(&self, fh: u64) -> Option<Arc<File>> {
        self.handles.get(&fh).map(|h| h.file.clone())
    }

    /// Reads at once when the range is there (always, for a complete file); `None` when the
    /// read has to wait for a download: then use [`Vfs::read`].
    pub fn read_now(&self, fh: u64, offset: u64, size: u32) -> Option<Result<Vec<u8>, FsError>> {
        let Some(handle) = self.handles.get(&fh).map(|h| h.clone()) else {
            return Some(Err(FsError::BadHandle));
        };
        let end = offset + u64::from(size);
        if let Some(d) = &handle.download {
            if !d.is_present(offset..end) {
                return None;
            }
            handle.read_ahead.after_read(d, offset, end);
        }
        Some(pread(&handle.file, offset, size))
    }

    /// Reads, first waiting for the bytes to be downloaded if they are not yet.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let handle = self
            .handles
            .get(&fh)
            .map(|h| h.clone())
            .ok_or(FsError::BadHandle)?;
        let end = offset + u64::from(size);
        if let Some(d) = &handle.download {
            // What comes after the read is fetched once the read is served: fetched at the same
            // time, it delays the read's own GET at the server.
            d.read_ready(offset..end).await?;
            handle.read_ahead.after_read(d, offset, end);
        }
        pread(&handle.file, offset, size)
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove(&fh);
    }

    /// How many files are open (handles not yet released).
    pub fn open_files(&self) -> usize {
        self.handles.len()
    }

    /// Counts for `statfs`: files and directories served.
    pub fn counts(&self) -> (u64, u64) {
        let tree = self.tree.read();
        let files = tree
            .nodes
            .values()
            .filter(|n| matches!(n.kind, NodeKind::File(_)))
            .count() as u64;
        (files, tree.nodes.len() as u64 - files)
    }
}

#[cfg(test)]
mod tests;
