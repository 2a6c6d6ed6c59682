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
//! rename leaves the old file alive for open handles). The number of a removed inode is given
//! again only once the kernel has forgotten it, and then under another generation ([`nodes`]):
//! no number the kernel holds ever stands for two nodes.
//!
//! Lock order: `tree`, then one of the maps (`retired`, `versions`: a `DashMap` shard lock for
//! one operation), never the other way round; `handles` is taken alone. None is held
//! across an `.await`, file I/O, or a call into the engine or a mount's local copy (whose own
//! locks, described in `engine` and `local::copy`, are therefore never taken under these).
//!
//! Writeable mounts: a write goes into the mount's local copy (the cache file at the file's
//! path), never into a staging file: the local copy is the truth for what was written here.
//! The tree marks those paths ([`tree::Override`]) so the listings do not hide them until they
//! show the uploaded version; [`WriteBack`] uploads them once quiet (see `write`).
//!
//! Rooms: [`tree`] (inodes and attributes), [`nodes`] (the inode table), [`handle`] (open
//! files and read-ahead), [`write`] (the operations of writeable mounts), [`error`] (failures
//! and their errno).

mod error;
mod handle;
mod nodes;
mod partial;
mod tree;
mod wants;
mod write;

pub use error::FsError;
pub use handle::Opened;
pub use tree::{Attr, Kind, ROOT};
pub use write::{MountOf, SetAttr, SetTime};

use crate::engine::{Engine, ReadAhead, Reader, Replica, plan};
use crate::local::copy::Recorded;
use crate::paths::{Layout, Mapped, ancestors, layout, map_key};
use crate::store::{Listing, ObjectMeta, ObjectRef, ObjectStore};
use crate::unchanged::{Scope, Unchanged};
use crate::upload::WriteBack;
use dashmap::DashMap;
use handle::{Content, Handle, pread};
use parking_lot::RwLock;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use tree::{Listed, Node, NodeKind, Override, Tree, split};
use wants::{Want, Wants};

/// What the kernel must forget after a refresh: it keeps entries and attributes between
/// refreshes, and the tree changed under them.
#[derive(Debug, Default)]
pub struct Stale {
    /// Names that lead elsewhere or nowhere now, or are new (the kernel may remember them as
    /// missing): (parent directory's inode, name).
    pub entries: Vec<(u64, String)>,
    /// Inodes whose attributes and bytes are another version's now.
    pub inodes: Vec<u64>,
}

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
    /// The last attributes of known inodes that a refresh replaced or removed.
    retired: DashMap<u64, Attr>,
    /// The next handle number.
    next_fh: AtomicU64,
    /// Directories show the time the file system started.
    started: SystemTime,
    /// Each mount's write-back queue (idle for a read-only mount).
    write_backs: Vec<Arc<WriteBack>>,
    /// Whether each mount's tree holds a full listing yet ([`partial`]).
    listings: Vec<partial::Listing>,
    /// Directories listed on their own while their mount's full listing was under way, by
    /// inode.
    dir_listings: DashMap<u64, partial::DirOnce>,
}

/// What an open of a file reaches.
enum Target {
    /// A version in the bucket: mount, path, listing.
    Remote(usize, String, ObjectMeta),
    /// A file of a writeable mount's local copy: mount, path.
    Local(usize, String),
}

/// The attributes of local file `ino` whose metadata is `m`.
fn file_attr(ino: u64, m: &std::fs::Metadata) -> Result<Attr, FsError> {
    use std::os::unix::fs::PermissionsExt;
    Ok(Attr {
        ino,
        kind: Kind::File,
        size: m.len(),
        mtime: m.modified()?,
        perm: (m.permissions().mode() & 0o7777) as u16,
    })
}

/// The changes of a writeable mount's local copy not uploaded yet (left by an earlier run), as
/// the tree marks them: the refreshes serve them until the listings show them uploaded.
fn changes_left(replica: &Replica) -> Vec<(String, Override)> {
    let prefix = &replica.mount.prefix;
    let found = replica.copy.plan_writeable(|entries, scanned| {
        let mut out: Vec<(String, Override)> = plan::local_changes(prefix, entries, &scanned.found)
            .into_iter()
            .map(|up| match up.stamp {
                Some(_) => (up.path, Override::File { seq: 0 }),
                None => (up.path, Override::Dir),
            })
            .collect();
        if !plan::copy_gone(entries, &scanned.found) {
            let deleted = plan::local_deletions(entries, &scanned.found).map(|(path, e)| {
                let gone = Override::Gone {
                    etag: Some(e.etag.to_string()),
                    dir: e.dir,
                };
                (path.to_owned(), gone)
            });
            out.extend(deleted);
        }
        out
    });
    found.unwrap_or_else(|e| {
        tracing::error!(mount = %replica.mount.id, "cannot look for changes left to upload: {e}");
        Vec::new()
    })
}

/// How a local file (of a writeable mount) is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl Vfs {
    /// A file system with an empty directory per mount; [`Vfs::update`] fills them.
    pub fn new(engine: Arc<Engine>, mounted: Vec<Mounted>) -> Self {
        let mut tree = Tree::new();
        for served in &mounted {
            tree.add_mount(&served.replica.mount.id);
        }
        let write_backs = mounted.iter().map(|_| Arc::default()).collect();
        let local = mounted
            .iter()
            .enumerate()
            .filter(|(_, m)| m.replica.mount.writeable)
            .flat_map(|(mount, m)| {
                changes_left(&m.replica)
                    .into_iter()
                    .map(move |(path, o)| ((mount, path), o))
            });
        tree.local = local.collect();
        Self {
            write_backs,
            listings: mounted.iter().map(|_| partial::Listing::new()).collect(),
            dir_listings: DashMap::new(),
            tree: RwLock::new(tree),
            mounted,
            engine,
            handles: DashMap::new(),
            versions: DashMap::new(),
            retired: DashMap::new(),
            next_fh: AtomicU64::new(1),
            started: SystemTime::now(),
        }
    }

    pub fn mounted(&self) -> &[Mounted] {
        &self.mounted
    }

    /// The write-back queue of mount `mount`, which the file system tells of its changes.
    pub fn write_back(&self, mount: usize) -> &Arc<WriteBack> {
        &self.write_backs[mount]
    }

    /// Replaces mount `mount`'s tree with what `remote`, a fresh listing of it, describes, and
    /// (in a writeable mount) the changes made here that it does not show yet. Returns what
    /// the kernel must forget of what it was told before (see [`Stale`]).
    pub fn update(&self, mount: usize, remote: &Listing) -> Stale {
        self.replace(mount, remote, &Unchanged::default(), false)
    }

    /// [`Vfs::update`] with a listing that `unchanged`'s parts were left out of: what they
    /// cover stays as the tree has it.
    pub fn update_with(&self, mount: usize, remote: &Listing, unchanged: &Unchanged) -> Stale {
        self.replace(mount, remote, unchanged, false)
    }

    /// Whether `part`, a part of a new listing of mount `mount` whose scope is `scope`, shows
    /// nothing new: the tree shows it and the cache holds it as it is, so a refresh may leave it
    /// out ([`crate::unchanged`]).
    pub fn holds_part(&self, mount: usize, scope: Scope<'_>, part: &Listing) -> bool {
        let replica = &self.mounted[mount].replica;
        let prefix = &replica.mount.prefix;
        self.part_shown(mount, scope, part)
            && replica
                .copy
                .plan(|entries, probe| plan::part_unchanged(prefix, scope, part, entries, probe))
    }

    /// Whether the tree shows exactly `part`, a part of a listing of mount `mount` whose scope
    /// is `scope`: every file at its version, and nothing else there.
    fn part_shown(&self, mount: usize, scope: Scope<'_>, part: &Listing) -> bool {
        let prefix = &self.mounted[mount].replica.mount.prefix;
        let tree = self.tree.read();
        let is_dir = |ino: &u64| tree.children(*ino).is_some();
        let Some(top) = tree.find(mount, scope.dir()).filter(is_dir) else {
            return false;
        };
        let below = |path: &&str| path.len() > scope.dir().len();
        let (mut files, mut dirs) = (0, BTreeSet::new());
        for object in part.iter() {
            let shown = match map_key(prefix, object.key) {
                Ok(Mapped::File(path)) => {
                    files += 1;
                    if let Scope::Under(_) = scope {
                        dirs.extend(ancestors(path).filter(below));
                    }
                    let node = tree.find(mount, path).map(|ino| &tree.nodes[&ino].kind);
                    matches!(node, Some(NodeKind::File(listed)) if listed.is(object))
                }
                Ok(Mapped::Dir(path)) => {
                    dirs.extend(Some(path).filter(below));
                    tree.find(mount, path).is_some_and(|ino| is_dir(&ino))
                }
                Ok(Mapped::Root) => true,
                Err(_) => false,
            };
            if !shown {
                return false;
            }
        }
        match scope {
            Scope::Under(_) => tree.count_below(top) == (files, dirs.len()),
            Scope::Direct(_) => {
                let children = tree.children(top).unwrap_or_default();
                children.iter().filter(|c| !is_dir(c)).count() == files
            }
        }
    }

    /// [`Vfs::update`] with what the cache holds of mount `mount` (files downloaded by earlier
    /// runs), until the bucket's listing comes: the tree does not know the files not
    /// downloaded yet meanwhile.
    pub fn show_cached(&self, mount: usize, cached: &Listing) -> Stale {
        self.replace(mount, cached, &Unchanged::default(), true)
    }

    /// [`Vfs::update_with`] with `remote`, the cache's listing if `from_cache`.
    fn replace(
        &self,
        mount: usize,
        remote: &Listing,
        unchanged: &Unchanged,
        from_cache: bool,
    ) -> Stale {
        let replica = &self.mounted[mount].replica;
        // What the local copy records of each change made here, read before the tree's lock
        // (it reads the disk).
        let pending: Vec<(String, Override)> = {
            let tree = self.tree.read();
            let local = tree.local.iter().filter(|((m, _), _)| *m == mount);
            local.map(|((_, p), o)| (p.clone(), o.clone())).collect()
        };
        let recorded: HashMap<String, (Override, Recorded)> = pending
            .into_iter()
            .map(|(path, o)| {
                let r = replica.copy.recorded(&path);
                (path, (o, r))
            })
            .collect();
        // Folder markers the tool uploaded, which some servers list as empty files.
        let folders = match replica.mount.writeable {
            true => replica.copy.folders(),
            false => HashMap::new(),
        };
        let mut laid = layout(&replica.mount.prefix, remote);
        unchanged.shadow(&mut laid);
        let Layout {
            mut files,
            dirs,
            implied_dirs,
            ..
        } = laid;
        let is_marker = |path: &str, meta: ObjectRef| {
            meta.size == 0 && folders.get(path).is_some_and(|e| meta.etag.is(e))
        };
        let markers = files.iter().filter(|(path, meta)| is_marker(path, *meta));
        let is_dir: HashSet<&str> = dirs
            .keys()
            .chain(implied_dirs.iter().copied())
            .chain(markers.map(|(path, _)| path))
            .collect();

        let mut tree = self.tree.write();
        // Drop the changes the listing has caught up with; one changed since it was checked
        // above waits for the next refresh.
        tree.local.retain(|(m, path), o| {
            if *m != mount {
                return true;
            }
            let listed = files.get(path).map(|meta| meta.etag);
            // Whether the listing shows version `etag` (`None`: nothing).
            let listed_as = |etag: Option<&String>| match (listed, etag) {
                (Some(l), Some(e)) => l.is(e),
                (l, e) => l.is_none() && e.is_none(),
            };
            let Some((checked, r)) = recorded.get(path).filter(|(c, _)| c == o) else {
                return true;
            };
            match checked {
                Override::File { .. } => !(r.uploaded && listed_as(r.etag.as_ref())),
                Override::Dir => !is_dir.contains(path.as_str()),
                Override::Gone { etag: None, dir } => *dir && is_dir.contains(path.as_str()),
                Override::Gone { etag, dir: false } => listed_as(etag.as_ref()) || r.etag == *etag,
                Override::Gone { etag, dir: true } => {
                    is_dir.contains(path.as_str()) || r.etag == *etag
                }
            }
        });

        // The layout's table of files (a row for every object), less the folder markers.
        files.retain(|path, meta| !is_marker(path, meta));
        let mut want = Wants::new(files, is_dir);
        let mut gone_dirs = Vec::new();
        for ((m, path), o) in &tree.local {
            if *m != mount {
                continue;
            }
            // What was made here shows with its directories, listed or not (a folder marker
            // deleted once the directory held files, a listing from before the uploads).
            if matches!(o, Override::File { .. } | Override::Dir) {
                let mut dir = split(path).0;
                while !dir.is_empty() {
                    want.insert(Cow::Owned(dir.to_owned()), Want::Dir);
                    dir = split(dir).0;
                }
            }
            match o {
                Override::File { .. } => {
                    want.insert(Cow::Owned(path.clone()), Want::Local);
                }
                Override::Dir => {
                    want.insert(Cow::Owned(path.clone()), Want::Dir);
                }
                Override::Gone { dir: false, .. } => {
                    if matches!(want.get(path), Some(Want::File(_))) {
                        want.remove(path);
                    }
                }
                Override::Gone { dir: true, .. } => gone_dirs.push(path.clone()),
            }
        }
        // A directory removed here stays hidden while nothing shows below it.
        gone_dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
        for dir in gone_dirs {
            if !want.any_below(&dir) && matches!(want.get(&dir), Some(Want::Dir)) {
                want.remove(&dir);
            }
        }

        let mount_ino = tree.mount_dirs[mount];
        let mut stale = Stale::default();
        // What the listing changed or removed goes, with everything below it; what stays keeps
        // its inode.
        let mut gone = Vec::new();
        let mut walk = vec![(mount_ino, String::new())];
        while let Some((dir, path)) = walk.pop() {
            let Some(children) = tree.children(dir) else {
                continue;
            };
            for &ino in children {
                let path = tree::join(&path, tree.name(ino));
                let node = &tree.nodes[&ino].kind;
                let is_dir = matches!(node, NodeKind::Dir(_));
                // A part left out keeps what it covers; a directory on the way to one stays,
                // and what is in it is looked at. A directory the listing shows where a part
                // left out has a file wins, as it would in one listing.
                if is_dir && unchanged.leads_to(&path) {
                    walk.push((ino, path));
                    continue;
                }
                if unchanged.holds(&path, is_dir) && !matches!(want.get(&path), Some(Want::Dir)) {
                    continue;
                }
                let same = match (node, want.get(&path)) {
                    (NodeKind::Dir(_), Some(Want::Dir)) => true,
                    (NodeKind::File(old), Some(Want::File(new))) => old.is(new),
                    // Written here, and still, or now listed as the version uploaded from it
                    // (or the remote one a conflict kept: the inode stays, its bytes are
                    // another's).
                    (NodeKind::Local, Some(Want::Local)) => true,
                    (NodeKind::Local, Some(Want::File(_))) => {
                        stale.inodes.push(ino);
                        true
                    }
                    _ => false,
                };
                match same {
                    true => walk.push((ino, path)),
                    false => gone.push(ino),
                }
            }
        }
        let removed = tree.remove_all(&gone);
        // Directories removed with what was in them, which the kernel holds.
        let known_removed: HashSet<u64> = removed
            .iter()
            .filter(|(_, node)| node.is_known() && matches!(node.kind, NodeKind::Dir(_)))
            .map(|(ino, _)| *ino)
            .collect();
        for (ino, node) in removed {
            // (Only where the kernel holds the directory: elsewhere it remembers no name.)
            if tree.known(node.parent) || known_removed.contains(&node.parent) {
                stale
                    .entries
                    .push((node.parent, tree.name_of(&node).to_owned()));
            }
            self.retire(&mut tree, ino, &node);
        }

        // Parents come before their children in path order; an entry whose parent is not a
        // directory (a file here and a directory in the listing) is left out.
        let mut placed_dirs: HashMap<String, u64> = HashMap::from([(String::new(), mount_ino)]);
        let mut added = 0usize;
        for (path, w) in want.iter() {
            let (parent, name) = split(path);
            let Some(&parent) = placed_dirs.get(parent) else {
                continue;
            };
            let kind = match w {
                Want::Dir => NodeKind::dir(),
                Want::File(meta) => NodeKind::File(Listed::of(meta)),
                Want::Local => NodeKind::Local,
            };
            let ino = match tree.child(parent, name) {
                // Kept above: the same directory (with its entries), or file.
                Some(ino) => {
                    let node = tree.nodes.get_mut(&ino).expect("a child exists");
                    if !matches!(node.kind, NodeKind::Dir(_)) {
                        node.kind = kind;
                    }
                    ino
                }
                None => {
                    // New to the kernel, which may remember the name as missing.
                    if tree.known(parent) {
                        stale.entries.push((parent, name.to_owned()));
                    }
                    added += 1;
                    tree.insert_in(mount, parent, name, kind)
                }
            };
            if matches!(tree.nodes[&ino].kind, NodeKind::Dir(_)) {
                placed_dirs.insert(path.to_owned(), ino);
            }
        }
        match added > 0 {
            true => tree.shrink(mount),
            false => tree.tidy(),
        }
        // A changed version is both a name gone and a name new.
        stale.entries.sort();
        stale.entries.dedup();
        self.listings[mount].set_cached(from_cache);
        self.listings[mount].set_complete();
        stale
    }

    /// The attributes of a directory or a listed file; those of a local file are its own
    /// ([`Vfs::local_attr`]).
    fn attr_of(&self, ino: u64, node: &Node) -> Attr {
        let writeable = node
            .mount()
            .is_some_and(|m| self.mounted[m].replica.mount.writeable);
        let (kind, size, mtime) = match &node.kind {
            NodeKind::Dir(_) => (Kind::Dir, 0, self.started),
            NodeKind::File(l) => (Kind::File, l.size, l.last_modified()),
            // Not stat'ed under the tree's lock: what an inode a refresh retired shows.
            NodeKind::Local => (Kind::File, 0, self.started),
        };
        let perm = match (kind, writeable) {
            (Kind::Dir, true) => 0o755,
            (Kind::Dir, false) => 0o555,
            (Kind::File, true) => 0o644,
            (Kind::File, false) => 0o444,
        };
        Attr {
            ino,
            kind,
            size,
            mtime,
            perm,
        }
    }

    /// The attributes of local file `path` of mount `mount`: its own size, time and mode.
    fn local_attr(&self, ino: u64, mount: usize, path: &str) -> Result<Attr, FsError> {
        let m = self.mounted[mount].replica.copy.stat(path)?;
        file_attr(ino, &m)
    }

    /// The attributes of `ino` as the tree has it (a local file's read from the disk, outside
    /// the tree's lock); `None` for an inode not in the tree.
    fn attr(&self, ino: u64) -> Option<Result<Attr, FsError>> {
        let (mount, path, listed) = {
            let tree = self.tree.read();
            let node = tree.nodes.get(&ino)?;
            match (&node.kind, node.mount()) {
                (NodeKind::Local, Some(mount)) => (mount, tree.path(ino), None),
                // A file of a writeable mount shows the mode and times kept locally (`chmod`,
                // `cp -p`) once it is in the local copy.
                (NodeKind::File(_), Some(mount)) if self.mounted[mount].replica.mount.writeable => {
                    (mount, tree.path(ino), Some(self.attr_of(ino, node)))
                }
                _ => return Some(Ok(self.attr_of(ino, node))),
            }
        };
        let local = self.local_attr(ino, mount, &path);
        Some(match listed {
            None => local,
            Some(listed) => Ok(local
                .ok()
                .filter(|l| l.size == listed.size)
                .unwrap_or(listed)),
        })
    }

    /// The attributes of `ino`, also of a version a refresh has since replaced or removed while
    /// the kernel still holds it (an open handle still reads it, and `fstat` asks).
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if let Some(attr) = self.attr(ino) {
            return attr;
        }
        self.retired
            .get(&ino)
            .map(|a| a.clone())
            .ok_or(FsError::NotFound)
    }

    /// Node `ino`, just removed from `tree`: what `getattr` shows of it while the kernel holds
    /// its inode; its inode number is free once the kernel does not (now, or at its forget).
    fn retire(&self, tree: &mut Tree, ino: u64, node: &Node) {
        self.versions.remove(&ino);
        match node.is_known() {
            true => drop(self.retired.insert(ino, self.attr_of(ino, node))),
            false => tree.nodes.release(ino),
        }
    }

    /// The kernel has dropped `ino`: it will not ask about it again.
    pub fn forget(&self, ino: u64) {
        self.retired.remove(&ino);
        let held = {
            let tree = self.tree.read();
            if let Some(node) = tree.nodes.get(&ino) {
                node.set_known(false);
            }
            tree.nodes.is_held(ino)
        };
        if held {
            self.tree.write().nodes.release(ino);
        }
    }

    /// The kernel was given `ino` (a lookup, an entry of a listing with attributes): it may
    /// ask for it until it forgets it.
    pub fn looked_up(&self, ino: u64) {
        if let Some(node) = self.tree.read().nodes.get(&ino) {
            node.set_known(true);
        }
    }

    /// The entries of directory `ino` from place `offset` on, at most `max` of them: `.` and
    /// `..` first, then its names in order. A directory of a million entries is read a reply
    /// at a time, so each call takes its places only.
    pub fn readdir(
        &self,
        ino: u64,
        offset: usize,
        max: usize,
    ) -> Result<Vec<(u64, Kind, String)>, FsError> {
        let tree = self.tree.read();
        let node = tree.nodes.get(&ino).ok_or(FsError::NotFound)?;
        let children = tree.children(ino).ok_or(FsError::NotADirectory)?;
        let dots = [(ino, "."), (node.parent, "..")].map(|(i, n)| (i, Kind::Dir, n.to_owned()));
        let named = children.iter().map(|&child| {
            let kind = match tree.nodes[&child].kind {
                NodeKind::Dir(_) => Kind::Dir,
                NodeKind::File(_) | NodeKind::Local => Kind::File,
            };
            (child, kind, tree.name(child).to_owned())
        });
        let skip_named = offset.saturating_sub(dots.len());
        let dots = dots.into_iter().skip(offset);
        Ok(dots.chain(named.skip(skip_named)).take(max).collect())
    }

    /// Gives `add` the entries of directory `ino` from place `offset` on, with their places,
    /// until it says the reply is full ([`Vfs::readdir`], a part at a time, without the tree's
    /// lock while `add` runs). An error after the first entry ends the reply instead.
    pub fn read_dir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, Kind, &str) -> bool,
    ) -> Result<(), FsError> {
        /// Entries taken from the tree at a time: more than a reply holds, mostly.
        const PART: usize = 512;
        let mut at = offset;
        loop {
            let part = match self.readdir(ino, at as usize, PART) {
                Ok(part) => part,
                Err(_) if at > offset => return Ok(()),
                Err(e) => return Err(e),
            };
            let last = part.len() < PART;
            for (child, kind, name) in part {
                if add(child, at, kind, &name) {
                    return Ok(());
                }
                at += 1;
            }
            if last {
                return Ok(());
            }
        }
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
        self.opened(ino, mount, &path, content, None)
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
            Ok(Target::Remote(mount, path, meta)) => (mount, path, meta),
            Ok(Target::Local(mount, path)) => {
                let opened = self.mounted[mount]
                    .replica
                    .copy
                    .open_file(&path)
                    .map_err(FsError::from)
                    .and_then(|(file, metadata)| {
                        let content = Content::Cached(file, metadata);
                        self.opened(ino, mount, &path, content, Some(Access::Read))
                    });
                return Opening::Done(opened);
            }
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
        Opening::Done(self.opened(ino, mount, &path, content, None))
    }

    /// What file `ino` is.
    fn file_of(&self, ino: u64) -> Result<Target, FsError> {
        let tree = self.tree.read();
        let node = tree.nodes.get(&ino).ok_or(FsError::NotFound)?;
        match (&node.kind, node.mount()) {
            (NodeKind::File(l), Some(mount)) => {
                let path = tree.path(ino);
                let meta = l.meta(self.key_of(mount, &path));
                Ok(Target::Remote(mount, path, meta))
            }
            (NodeKind::Local, Some(mount)) => Ok(Target::Local(mount, tree.path(ino))),
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
        local: Option<Access>,
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
        // identifies the version. A local file changes in place: its pages are not kept.
        let version = metadata.ino();
        let keep_cache = match local {
            None => self.versions.insert(ino, version) == Some(version),
            Some(_) => {
                self.versions.remove(&ino);
                false
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let partial = download.is_some();
        self.handles.insert(
            fh,
            Arc::new(Handle {
                file,
                download,
                read_ahead: ReadAhead::default(),
                ino,
                writes: (local == Some(Access::Write)).then_some(mount),
            }),
        );
        Ok(Opened {
            fh,
            keep_cache,
            partial,
        })
    }

    /// The key of path `path` of mount `mount`.
    fn key_of(&self, mount: usize, path: &str) -> String {
        crate::paths::key_of(&self.mounted[mount].replica.mount.prefix, path, false)
    }

    /// Where inode `ino` is now in its mount (`None` once it is gone from the tree).
    fn path_of(&self, ino: u64) -> Option<String> {
        let tree = self.tree.read();
        tree.nodes.contains_key(&ino).then(|| tree.path(ino))
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

    /// Closes a handle; a handle that could write lets its file be uploaded.
    pub fn release(&self, fh: u64) {
        let Some((_, handle)) = self.handles.remove(&fh) else {
            return;
        };
        if let Some(mount) = handle.writes {
            // Where the file is now (renamed since, perhaps); a file deleted since has nothing
            // left to upload.
            if let Some(path) = self.path_of(handle.ino) {
                self.mounted[mount].replica.copy.end_write(&path);
            }
            self.write_backs[mount].touch();
        }
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
