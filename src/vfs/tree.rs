//! The inode tree: what `stat`, `lookup` and `readdir` show, built from the listings and, in a
//! writeable mount, from what was changed through the file system and not yet listed
//! ([`Override`]).

use super::nodes::Nodes;
use crate::etag::Etag;
use crate::store::{Nanos, ObjectMeta, ObjectRef};
use crate::strings::{Span, Strings};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

pub const ROOT: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// What `stat` shows for an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits.
    pub perm: u16,
}

/// What an inode is: a directory (its entries), a file showing a version in the bucket, or a
/// file of the local copy whose bytes are the truth (written here, and not yet listed as
/// uploaded).
pub(super) enum NodeKind {
    Dir(Children),
    File(Listed),
    Local,
}

/// A version in the bucket as a file node keeps it: a tree holds one per object for as long as
/// the mount runs, so without the key (the mount's prefix and the node's path make it) and with
/// the ETag compact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    pub(super) size: u64,
    pub(super) etag: Etag,
    /// LastModified.
    modified: Nanos,
}

impl Listed {
    pub(super) fn of(meta: ObjectRef<'_>) -> Self {
        Self {
            size: meta.size,
            etag: meta.etag.clone(),
            modified: meta.last_modified.into(),
        }
    }

    /// LastModified.
    pub(super) fn last_modified(&self) -> SystemTime {
        self.modified.into()
    }

    /// Whether `meta` is this version.
    pub(super) fn is(&self, meta: ObjectRef<'_>) -> bool {
        self.size == meta.size && self.etag == *meta.etag
    }

    /// The version as the store names it: under `key`.
    pub(super) fn meta(&self, key: String) -> ObjectMeta {
        ObjectMeta {
            key,
            size: self.size,
            etag: self.etag.clone(),
            last_modified: self.last_modified(),
        }
    }
}

/// A directory's entries: their inodes, in the order of their names. A directory holds no
/// name of its own for them; a search compares the names of the nodes ([`Tree::child`]).
pub(super) type Children = Vec<u64>;

impl NodeKind {
    /// An empty directory.
    pub(super) fn dir() -> Self {
        NodeKind::Dir(Children::new())
    }
}

/// An inode. Its path is not kept: the names up the parent chain make it ([`Tree::path`]),
/// so a tree of a million files holds each name once, and a directory rename changes one node.
pub(super) struct Node {
    pub(super) parent: u64,
    /// Its name in its parent ([`Tree::name`]): a mount's id for a mount's own directory,
    /// empty for the root.
    pub(super) name: Span,
    pub(super) kind: NodeKind,
    /// The mount (an index into [`super::Vfs::mounted`]), [`NO_MOUNT`] for the root.
    mount: u32,
    /// The generation of its slot in the table ([`Nodes`]).
    pub(super) generation: u16,
    /// The kernel was given its inode (a lookup, an entry of a listing with attributes) and has
    /// not forgotten it: it may ask for it, also once it is removed. Kept in the node (in room
    /// its other fields leave), not in a set of its own, which a walk of the tree would fill
    /// with every inode; set under the tree's read lock.
    known: AtomicBool,
}

/// [`Node::mount`] of the root.
const NO_MOUNT: u32 = u32::MAX;

impl Node {
    pub(super) fn new(parent: u64, name: Span, mount: Option<usize>, kind: NodeKind) -> Self {
        let mount = mount.map_or(NO_MOUNT, |m| u32::try_from(m).expect("fewer mounts"));
        Self {
            parent,
            name,
            kind,
            mount,
            generation: 0,
            known: AtomicBool::new(false),
        }
    }

    /// Whether the kernel holds its inode.
    pub(super) fn is_known(&self) -> bool {
        self.known.load(Ordering::Relaxed)
    }

    pub(super) fn set_known(&self, known: bool) {
        self.known.store(known, Ordering::Relaxed);
    }

    /// The mount (an index into [`super::Vfs::mounted`]), `None` for the root.
    pub(super) fn mount(&self) -> Option<usize> {
        (self.mount != NO_MOUNT).then_some(self.mount as usize)
    }
}

/// A change made through the file system that the listings do not show yet; a refresh applies
/// it over the listing until the listing catches up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Override {
    /// A file written or created here: served from the local copy until a listing shows the
    /// version uploaded from it, unchanged since. `seq` changes with every operation on it, so
    /// a refresh that checked it before an operation does not drop it after.
    File { seq: u64 },
    /// A directory made here, until a listing shows it.
    Dir,
    /// A file or directory removed here: hidden while the manifest or the listing still has
    /// the version `etag` it was (`None`: never uploaded).
    Gone { etag: Option<String>, dir: bool },
}

pub(super) struct Tree {
    pub(super) nodes: Nodes,
    /// The nodes' names.
    names: Strings,
    /// Each mount's directory, by mount.
    pub(super) mount_dirs: Vec<u64>,
    /// Changes of writeable mounts the listings do not show yet, by mount and path.
    pub(super) local: HashMap<(usize, String), Override>,
    /// The last `seq` given to an [`Override::File`].
    pub(super) seq: u64,
}

/// `parent/name`, or `name` at a mount's top.
pub(super) fn join(parent: &str, name: &str) -> String {
    match parent {
        "" => name.to_owned(),
        _ => format!("{parent}/{name}"),
    }
}

/// A path's parent ("" at a mount's top) and last component.
pub(super) fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl Tree {
    /// A tree of the root alone (inode [`ROOT`]).
    pub(super) fn new() -> Self {
        let mut tree = Self {
            nodes: Nodes::new(),
            names: Strings::default(),
            mount_dirs: Vec::new(),
            local: HashMap::new(),
            seq: 0,
        };
        let root = Node::new(ROOT, Span::EMPTY, None, NodeKind::dir());
        assert_eq!(tree.nodes.insert(root), ROOT, "the first inode");
        tree
    }

    /// Adds the next mount's directory, named `id`, under the root.
    pub(super) fn add_mount(&mut self, id: &str) {
        let mount = self.mount_dirs.len();
        let ino = self.insert_in(mount, ROOT, id, NodeKind::dir());
        self.mount_dirs.push(ino);
    }

    /// Whether the kernel holds inode `ino` of the tree.
    pub(super) fn known(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(Node::is_known)
    }

    /// The name of `node`.
    pub(super) fn name_of(&self, node: &Node) -> &str {
        self.names.get(node.name)
    }

    /// The name of node `ino` ("" if there is none).
    pub(super) fn name(&self, ino: u64) -> &str {
        self.nodes.get(&ino).map_or("", |n| self.name_of(n))
    }

    /// The entries of directory `ino`; `None` if it is not a directory (or not there).
    pub(super) fn children(&self, ino: u64) -> Option<&[u64]> {
        match &self.nodes.get(&ino)?.kind {
            NodeKind::Dir(children) => Some(children),
            NodeKind::File(_) | NodeKind::Local => None,
        }
    }

    /// Where `name` is among `children` (`Err`: where it would go).
    fn place_in(&self, children: &[u64], name: &str) -> Result<usize, usize> {
        children.binary_search_by(|c| self.name(*c).cmp(name))
    }

    /// The entry `name` of directory `dir`.
    pub(super) fn child(&self, dir: u64, name: &str) -> Option<u64> {
        let children = self.children(dir)?;
        let at = self.place_in(children, name).ok()?;
        Some(children[at])
    }

    /// Gives back the room the tree's tables reserved ahead as they grew: after a listing, a
    /// tree mostly stays as it is.
    pub(super) fn shrink(&mut self, mount: usize) {
        for node in self.nodes.values_mut().filter(|n| n.mount() == Some(mount)) {
            if let NodeKind::Dir(children) = &mut node.kind {
                children.shrink_to_fit();
            }
        }
        self.nodes.shrink();
        self.tidy();
        self.names.shrink();
    }

    /// Rewrites the names once most of their bytes are of nodes removed or renamed.
    pub(super) fn tidy(&mut self) {
        if self.names.wasteful() {
            let live = self.nodes.values_mut().map(|n| &mut n.name);
            self.names.repack(live);
        }
    }

    /// The path of `ino` under its mount's directory ("" for that directory and the root).
    pub(super) fn path(&self, ino: u64) -> String {
        let mut names = Vec::new();
        let mut at = ino;
        while let Some(node) = self.nodes.get(&at)
            && node.parent != ROOT
            && at != ROOT
        {
            names.push(self.name_of(node));
            at = node.parent;
        }
        names.reverse();
        names.join("/")
    }

    /// The inode at `path` of `mount`, if any.
    pub(super) fn find(&self, mount: usize, path: &str) -> Option<u64> {
        let mut at = self.mount_dirs[mount];
        if path.is_empty() {
            return Some(at);
        }
        for name in path.split('/') {
            at = self.child(at, name)?;
        }
        Some(at)
    }

    /// Whether a node may be put at `path` of `mount`: nothing is there, and no file stands
    /// where it needs a directory.
    pub(super) fn free_for(&self, mount: usize, path: &str) -> bool {
        let node = |p: &str| self.nodes.get(&self.find(mount, p)?);
        let blocked = crate::paths::ancestors(path)
            .any(|p| node(p).is_some_and(|n| !matches!(n.kind, NodeKind::Dir(_))));
        !blocked && node(path).is_none()
    }

    fn children_mut(&mut self, ino: u64) -> &mut Children {
        match &mut self.nodes.get_mut(&ino).expect("parent exists").kind {
            NodeKind::Dir(children) => children,
            NodeKind::File(_) | NodeKind::Local => unreachable!("parents are directories"),
        }
    }

    /// A new `seq` for an [`Override::File`].
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The directory at `path` of `mount`, made (with its parents) if missing.
    pub(super) fn dir_at(&mut self, mount: usize, path: &str) -> u64 {
        match self.find(mount, path) {
            Some(ino) => ino,
            None => self.insert(mount, path, NodeKind::dir()),
        }
    }

    /// Puts `kind` at `path` of `mount` (its directories made if missing): in the node there,
    /// which keeps its inode, or in a new one; returns its inode.
    pub(super) fn insert(&mut self, mount: usize, path: &str, kind: NodeKind) -> u64 {
        let (parent, name) = split(path);
        let parent = self.dir_at(mount, parent);
        self.insert_in(mount, parent, name, kind)
    }

    /// [`Tree::insert`] into directory `parent`, as `name`.
    pub(super) fn insert_in(
        &mut self,
        mount: usize,
        parent: u64,
        name: &str,
        kind: NodeKind,
    ) -> u64 {
        let children = self.children(parent).expect("parents are directories");
        // A listing adds a directory's names in order: most go last.
        let last = children.last().map(|&c| self.name(c));
        let place = match last {
            Some(last) if last < name => Err(children.len()),
            _ => self.place_in(children, name),
        };
        let at = match place {
            Ok(at) => {
                let ino = children[at];
                self.nodes.get_mut(&ino).expect("a child exists").kind = kind;
                return ino;
            }
            Err(at) => at,
        };
        let name = self.names.add(name);
        let ino = self
            .nodes
            .insert(Node::new(parent, name, Some(mount), kind));
        self.children_mut(parent).insert(at, ino);
        ino
    }

    /// Removes `ino` and everything below it; returns what was removed. Their inode numbers
    /// are not given again before [`Nodes::release`]; their names stay readable until the
    /// next [`Tree::tidy`].
    pub(super) fn remove(&mut self, ino: u64) -> Vec<(u64, Node)> {
        self.remove_all(&[ino])
    }

    /// [`Tree::remove`] of each of `inos`, with one pass over each directory they leave (a
    /// refresh may remove most of a large directory's entries).
    pub(super) fn remove_all(&mut self, inos: &[u64]) -> Vec<(u64, Node)> {
        let mut removed = Vec::new();
        let mut left = Vec::new();
        let mut below = inos.to_vec();
        while let Some(ino) = below.pop() {
            let Some(node) = self.nodes.remove(&ino) else {
                continue;
            };
            left.push(node.parent);
            if let NodeKind::Dir(children) = &node.kind {
                below.extend(children);
            }
            self.names.release(node.name);
            removed.push((ino, node));
        }
        left.sort_unstable();
        left.dedup();
        for dir in left {
            let Some(NodeKind::Dir(children)) = self.nodes.get_mut(&dir).map(|n| &mut n.kind)
            else {
                continue;
            };
            let mut children = std::mem::take(children);
            children.retain(|c| self.nodes.contains_key(c));
            *self.children_mut(dir) = children;
        }
        removed
    }

    /// Moves `ino` (and everything below it) to `name` in directory `parent`, which must be
    /// free there; the inodes stay.
    pub(super) fn rename(&mut self, ino: u64, parent: u64, name: &str) {
        let (old_parent, old_name) = {
            let node = &self.nodes[&ino];
            (node.parent, node.name)
        };
        let old = self.children(old_parent).expect("parents are directories");
        if let Ok(at) = self.place_in(old, self.names.get(old_name)) {
            self.children_mut(old_parent).remove(at);
        }
        self.names.release(old_name);
        let new_name = self.names.add(name);
        let node = self.nodes.get_mut(&ino).expect("moved");
        node.parent = parent;
        node.name = new_name;
        let children = self.children(parent).expect("parents are directories");
        match self.place_in(children, name) {
            Ok(at) => self.children_mut(parent)[at] = ino,
            Err(at) => self.children_mut(parent).insert(at, ino),
        }
    }

    /// The files and the directories below directory `ino`.
    pub(super) fn count_below(&self, ino: u64) -> (usize, usize) {
        let (mut files, mut dirs) = (0, 0);
        let mut stack = vec![ino];
        while let Some(dir) = stack.pop() {
            for &child in self.children(dir).unwrap_or_default() {
                match self.children(child) {
                    Some(_) => {
                        dirs += 1;
                        stack.push(child);
                    }
                    None => files += 1,
                }
            }
        }
        (files, dirs)
    }

    /// `ino` and everything below it, as (inode, path, is a directory).
    pub(super) fn subtree(&self, ino: u64) -> Vec<(u64, String, bool)> {
        let mut out = Vec::new();
        let mut stack = vec![(ino, self.path(ino))];
        while let Some((ino, path)) = stack.pop() {
            let node = &self.nodes[&ino];
            let dir = matches!(node.kind, NodeKind::Dir(_));
            if let NodeKind::Dir(children) = &node.kind {
                for &child in children {
                    stack.push((child, join(&path, self.name(child))));
                }
            }
            out.push((ino, path, dir));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(tree: &Tree, dir: u64) -> Vec<&str> {
        let children = tree.children(dir).unwrap();
        children.iter().map(|&c| tree.name(c)).collect()
    }

    #[test]
    fn entries_stay_in_name_order_through_inserts_removals_and_renames() {
        let mut tree = Tree::new();
        tree.add_mount("m");
        // Out of order, as a listing's keys give them ("a-1" before "a/x"), and as writes do.
        for path in ["d/a-1", "d/a/x", "d/c", "d/b", "e", "d/a/w"] {
            tree.insert(0, path, NodeKind::Local);
        }
        let d = tree.find(0, "d").unwrap();
        assert_eq!(names_in(&tree, d), ["a", "a-1", "b", "c"]);
        assert_eq!(tree.path(tree.find(0, "d/a/w").unwrap()), "d/a/w");
        assert_eq!(tree.child(d, "zz"), None);
        assert_eq!(
            tree.child(tree.find(0, "e").unwrap(), "x"),
            None,
            "not a directory"
        );

        let b = tree.find(0, "d/b").unwrap();
        tree.rename(b, tree.mount_dirs[0], "0-first");
        assert_eq!(names_in(&tree, d), ["a", "a-1", "c"]);
        assert_eq!(tree.find(0, "0-first"), Some(b), "same inode");
        assert_eq!(tree.path(b), "0-first");

        let a = tree.find(0, "d/a").unwrap();
        let removed = tree.remove_all(&[a, tree.find(0, "d/c").unwrap()]);
        assert_eq!(removed.len(), 4, "d/a, its two files and d/c");
        assert_eq!(names_in(&tree, d), ["a-1"]);
        assert_eq!(tree.find(0, "d/a/x"), None);
    }

    #[test]
    fn a_large_directory_keeps_its_names_through_removals_and_a_repack() {
        let mut tree = Tree::new();
        tree.add_mount("m");
        let long = "n".repeat(100);
        for i in (0..5_000).rev() {
            tree.insert(0, &format!("big/{long}-{i:05}"), NodeKind::Local);
        }
        let big = tree.find(0, "big").unwrap();
        let gone: Vec<u64> = (0..5_000)
            .filter(|i| i % 5 != 0)
            .map(|i| tree.find(0, &format!("big/{long}-{i:05}")).unwrap())
            .collect();
        let removed = tree.remove_all(&gone);
        // Removed names read until the tree is tidied.
        assert!(
            removed
                .iter()
                .all(|(_, n)| tree.name_of(n).starts_with(&long))
        );
        assert!(tree.names.wasteful());
        tree.tidy();
        assert!(!tree.names.wasteful());
        let left: Vec<String> = (0..5_000)
            .filter(|i| i % 5 == 0)
            .map(|i| format!("{long}-{i:05}"))
            .collect();
        assert_eq!(names_in(&tree, big), left);
        assert!(
            left.iter()
                .all(|n| tree.find(0, &format!("big/{n}")).is_some())
        );
        assert_eq!(tree.name(tree.mount_dirs[0]), "m");
    }
}
