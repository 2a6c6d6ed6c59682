//! A mount served before its first full listing has ended: a big bucket takes long to list,
//! and its readers should not wait for all of it.
//!
//! Until [`Vfs::update`] brings the full listing, the tree holds what was asked for: the
//! mount's top directory (listed before the file system is mounted), each directory a reader
//! opened (one delimiter listing of it, [`ObjectStore::list_dir`]), and each file a lookup
//! found. A name the tree does not have, in a directory not listed yet, is looked for in the
//! bucket: a HEAD of its key (one request, however big its directory), then a listing of the
//! directory. Only a directory that was listed answers "no such file" from the tree, so the
//! kernel never caches a name as missing that the bucket has.
//!
//! What these listings add never replaces what the tree has (a change made here keeps its
//! own), and once the full listing is in they add nothing: it is newer, and it replaces the
//! whole tree, telling the kernel what changed ([`super::Stale`]).
//!
//! A directory rename moves a whole subtree, so in a mount still being listed it waits for
//! the full listing; an `rmdir` lists its directory first (empty there means empty in the
//! bucket).

use super::tree::{Listed, NodeKind, Override};
use super::{Attr, FsError, Vfs};
use crate::paths::{ancestors, layout};
use crate::retry::retry;
use crate::store::{self, DirListing, ObjectMeta, ObjectRef};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Whether a mount's tree holds a full listing yet, and the directories listed on their own
/// meanwhile.
pub(super) struct Listing {
    /// `true` once a full listing is in: then the tree answers for every directory.
    complete: tokio::sync::watch::Sender<bool>,
    /// The full listing in is the cache's ([`Vfs::show_cached`]), not the bucket's yet.
    cached: std::sync::atomic::AtomicBool,
}

impl Listing {
    pub(super) fn new() -> Self {
        Self {
            complete: tokio::sync::watch::channel(false).0,
            cached: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the tree shows the cache's listing, not yet one of the bucket.
    pub(super) fn is_cached(&self) -> bool {
        self.cached.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn set_cached(&self, cached: bool) {
        self.cached
            .store(cached, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn is_complete(&self) -> bool {
        *self.complete.borrow()
    }

    pub(super) fn set_complete(&self) {
        self.complete.send_replace(true);
    }
}

/// One directory's listing, asked for once however many readers need it (a failed one is asked
/// for again by the next reader).
pub(super) type DirOnce = Arc<tokio::sync::OnceCell<()>>;

impl Vfs {
    /// Whether the tree alone answers for directory `ino` (of `mount`, `None` for the root):
    /// its mount is listed whole, or the directory was listed on its own.
    fn dir_known(&self, mount: Option<usize>, ino: u64) -> bool {
        mount.is_none_or(|m| self.listings[m].is_complete())
            || self
                .dir_listings
                .get(&ino)
                .is_some_and(|once| once.initialized())
    }

    /// The mount and path of directory `ino`.
    fn dir_at(&self, ino: u64) -> Result<(Option<usize>, String), FsError> {
        let tree = self.tree.read();
        let node = tree.nodes.get(&ino).ok_or(FsError::NotFound)?;
        match node.kind {
            NodeKind::Dir(_) => Ok((node.mount(), tree.path(ino))),
            _ => Err(FsError::NotADirectory),
        }
    }

    /// Whether mount `mount`'s tree holds a full listing.
    pub fn listed_whole(&self, mount: usize) -> bool {
        self.listings[mount].is_complete()
    }

    /// Whether the tree alone answers for directory `ino`: a readdir of it needs no request
    /// first ([`Vfs::list_dir`]).
    pub fn dir_ready(&self, ino: u64) -> bool {
        self.dir_at(ino)
            .map_or(true, |(mount, _)| self.dir_known(mount, ino))
    }

    /// The entry `name` in directory `parent`, when the tree can tell without a request: `None`
    /// when it has no such name and the directory is not listed yet (then use
    /// [`Vfs::lookup`]).
    pub fn lookup_now(&self, parent: u64, name: &str) -> Option<Result<Attr, FsError>> {
        let found = {
            let tree = self.tree.read();
            let Some(node) = tree.nodes.get(&parent) else {
                return Some(Err(FsError::NotFound));
            };
            if tree.children(parent).is_none() {
                return Some(Err(FsError::NotADirectory));
            }
            match tree.child(parent, name) {
                Some(ino) => Ok(ino),
                None => Err(node.mount()),
            }
        };
        match found {
            Ok(ino) => {
                self.looked_up(ino);
                Some(self.attr(ino).unwrap_or(Err(FsError::NotFound)))
            }
            Err(mount) if self.dir_known(mount, parent) => Some(Err(FsError::NotFound)),
            Err(_) => None,
        }
    }

    /// The entry `name` in directory `parent`, looked for in the bucket when the tree cannot
    /// tell: a HEAD of its key, else a listing of the directory.
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        if let Some(found) = self.lookup_now(parent, name) {
            return found;
        }
        let (mount, path) = self.dir_at(parent)?;
        let mount = mount.ok_or(FsError::NotFound)?;
        let served = &self.mounted[mount];
        let key = format!(
            "{}{}",
            dir_prefix(&served.replica.mount.prefix, &path),
            name
        );
        let head = retry("head", || served.store.head(&key)).await;
        match head.map_err(|e| self.listing_failed(mount, &key, e))? {
            Some(meta) => {
                let objects = vec![meta];
                self.add(
                    mount,
                    &DirListing {
                        objects,
                        prefixes: Vec::new(),
                    },
                );
            }
            None => self.list_dir(parent).await?,
        }
        self.lookup_now(parent, name)
            .unwrap_or(Err(FsError::NotFound))
    }

    /// Lists directory `ino` on its own unless the tree already answers for it.
    pub async fn list_dir(&self, ino: u64) -> Result<(), FsError> {
        let (mount, path) = self.dir_at(ino)?;
        let Some(mount) = mount.filter(|_| !self.dir_known(mount, ino)) else {
            return Ok(());
        };
        let once = self.dir_listings.entry(ino).or_default().clone();
        once.get_or_try_init(|| async {
            let served = &self.mounted[mount];
            let prefix = dir_prefix(&served.replica.mount.prefix, &path);
            let listed = retry("list", || served.store.list_dir(&prefix)).await;
            let listed = listed.map_err(|e| self.listing_failed(mount, &prefix, e))?;
            self.add(mount, &listed);
            Ok::<_, FsError>(())
        })
        .await?;
        Ok(())
    }

    /// What a mount shows before its full listing: `top`, the listing of its top directory, as
    /// that directory's own, and the changes made here that an earlier run left (written files
    /// and made directories not uploaded yet: the full listing does not show them either).
    pub fn show_top(&self, mount: usize, top: &DirListing) {
        {
            let mut tree = self.tree.write();
            let made: Vec<(String, bool)> = tree
                .local
                .iter()
                .filter(|((m, _), _)| *m == mount)
                .filter_map(|((_, path), o)| match o {
                    Override::File { .. } => Some((path.clone(), false)),
                    Override::Dir => Some((path.clone(), true)),
                    Override::Gone { .. } => None,
                })
                .collect();
            for (path, dir) in made {
                if !tree.free_for(mount, &path) {
                    continue;
                }
                let kind = match dir {
                    true => NodeKind::dir(),
                    false => NodeKind::Local,
                };
                tree.insert(mount, &path, kind);
            }
        }
        self.show_dir(mount, "", top);
    }

    /// Shows `listed`, the listing of directory `path` of mount `mount`, as that directory's
    /// own.
    pub(super) fn show_dir(&self, mount: usize, path: &str, listed: &DirListing) {
        self.add(mount, listed);
        let Some(ino) = self.tree.read().find(mount, path) else {
            return;
        };
        let once = tokio::sync::OnceCell::new_with(Some(()));
        self.dir_listings.insert(ino, Arc::new(once));
    }

    /// Waits, when `name` in directory `parent` is a directory of a mount not listed whole
    /// yet, until it is: a directory moves with everything below it.
    pub(super) async fn listed_below(&self, parent: u64, name: &str) {
        let mount = {
            let tree = self.tree.read();
            let Some(node) = tree.nodes.get(&parent) else {
                return;
            };
            let child = tree.child(parent, name).and_then(|c| tree.nodes.get(&c));
            match (node.mount(), child.map(|c| &c.kind)) {
                (Some(mount), Some(NodeKind::Dir(_))) => mount,
                _ => return,
            }
        };
        let mut complete = self.listings[mount].complete.subscribe();
        // The sender lives as long as the file system.
        let _ = complete.wait_for(|c| *c).await;
    }

    /// Directory `name` in `parent` when it must be listed before an `rmdir` can tell whether
    /// it is empty.
    pub fn unlisted_child(&self, parent: u64, name: &str) -> Option<u64> {
        let ino = {
            let tree = self.tree.read();
            tree.child(parent, name)?
        };
        (!self.dir_ready(ino)).then_some(ino)
    }

    /// Adds what `listed` shows to mount `mount`'s tree, unless a full listing is in: names the
    /// tree does not have yet, outside what was removed here.
    fn add(&self, mount: usize, listed: &DirListing) {
        let replica = &self.mounted[mount].replica;
        // A sub-prefix reads as a folder marker: a directory.
        let markers = listed.prefixes.iter().map(|p| ObjectMeta {
            key: p.clone(),
            size: 0,
            etag: crate::etag::Etag::new(""),
            last_modified: SystemTime::UNIX_EPOCH,
        });
        let mut all: store::Listing = listed.objects.iter().collect();
        markers.for_each(|marker| all.push(&marker));
        let layout = layout(&replica.mount.prefix, &all);
        let dirs = layout
            .dirs
            .keys()
            .chain(layout.implied_dirs.iter().copied());
        let mut want: BTreeMap<&str, Option<ObjectRef>> = dirs.map(|d| (d, None)).collect();
        for (path, meta) in layout.files.iter() {
            want.entry(path).or_insert(Some(meta));
        }
        let mut tree = self.tree.write();
        if self.listings[mount].is_complete() {
            return;
        }
        for (path, meta) in want {
            let removed_here = std::iter::once(path).chain(ancestors(path)).any(|p| {
                let local = tree.local.get(&(mount, p.to_owned()));
                matches!(local, Some(Override::Gone { .. }))
            });
            // (A file where the path needs a directory: the full listing decides.)
            if removed_here || !tree.free_for(mount, path) {
                continue;
            }
            let kind = match meta {
                Some(meta) => NodeKind::File(Listed::of(meta)),
                None => NodeKind::dir(),
            };
            tree.insert(mount, path, kind);
        }
    }

    /// The error a reader gets when the bucket cannot be asked for `key` (a key or a prefix),
    /// logged with the mount and bucket.
    fn listing_failed(&self, mount: usize, key: &str, e: crate::store::StoreError) -> FsError {
        let m = &self.mounted[mount].replica.mount;
        tracing::error!(mount = %m.id, bucket = %m.bucket, key, "cannot look in the bucket: {e}");
        FsError::Store(e)
    }
}

/// The key prefix of directory `path` of a mount whose prefix is `prefix`.
fn dir_prefix(prefix: &str, path: &str) -> String {
    match path {
        "" => prefix.to_owned(),
        _ => format!("{prefix}{path}/"),
    }
}
