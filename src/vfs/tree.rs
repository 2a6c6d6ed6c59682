//! The inode tree: what `stat`, `lookup` and `readdir` show, built from the listings and, in a
//! writeable mount, from what was changed through the file system and not yet listed
//! ([`Override`]).

use super::nodes::Nodes;
use crate::etag::Etag;
use crate::store::ObjectMeta;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;
use std::time::{Duration, UNIX_EPOCH};

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

/// What an inode is: a directory (its entries by name), a file showing a version in the
/// bucket, or a file of the local copy whose bytes are the truth (written here, and not yet
/// listed as uploaded).
pub(super) enum NodeKind {
    Dir(BTreeMap<Name, u64>),
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
    /// LastModified, in nanoseconds since the Unix epoch.
    modified_ns: i64,
}

impl Listed {
    pub(super) fn of(meta: &ObjectMeta) -> Self {
        Self {
            size: meta.size,
            etag: meta.etag.clone(),
            modified_ns: match meta.last_modified.duration_since(UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
                Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
            },
        }
    }

    /// LastModified.
    pub(super) fn last_modified(&self) -> SystemTime {
        let ns = Duration::from_nanos(self.modified_ns.unsigned_abs());
        match self.modified_ns >= 0 {
            true => UNIX_EPOCH + ns,
            false => UNIX_EPOCH - ns,
        }
    }

    /// Whether `meta` is this version.
    pub(super) fn is(&self, meta: &ObjectMeta) -> bool {
        self.size == meta.size && self.etag == meta.etag
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

/// An inode. Its path is not kept: the names up the parent chain make it ([`Tree::path`]),
/// so a tree of a million files holds each name once, and a directory rename changes one node.
pub(super) struct Node {
    pub(super) parent: u64,
    /// Its name in its parent (shared with the parent's entry); empty for a mount's own
    /// directory and the root.
    pub(super) name: Name,
    pub(super) kind: NodeKind,
    /// The mount (an index into [`super::Vfs::mounted`]), [`NO_MOUNT`] for the root.
    mount: u32,
    /// The generation of its slot in the table ([`Nodes`]).
    pub(super) generation: u16,
}

/// [`Node::mount`] of the root.
const NO_MOUNT: u32 = u32::MAX;

impl Node {
    pub(super) fn new(parent: u64, name: Name, mount: Option<usize>, kind: NodeKind) -> Self {
        let mount = mount.map_or(NO_MOUNT, |m| u32::try_from(m).expect("fewer mounts"));
        Self {
            parent,
            name,
            kind,
            mount,
            generation: 0,
        }
    }

    /// The mount (an index into [`super::Vfs::mounted`]), `None` for the root.
    pub(super) fn mount(&self) -> Option<usize> {
        (self.mount != NO_MOUNT).then_some(self.mount as usize)
    }
}

/// A name in a directory.
pub type Name = Arc<str>;

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

/// `map`, rebuilt from its entries in order. A map filled one entry at a time in key order (as
/// a listing fills a directory's) leaves each node it splits half full; one built from sorted
/// entries fills its nodes, which nearly halves what the map's nodes take (measurements:
/// docs/PERFORMANCE.md, "Packed maps").
///
/// Built by `append`, which merges two maps into full nodes while it frees the old ones as it
/// goes; `collect` would first gather every entry in a vector beside the old map.
fn packed<K: Ord, V>(mut map: BTreeMap<K, V>) -> BTreeMap<K, V> {
    let Some(first) = map.pop_first() else {
        return map;
    };
    // `append` to an empty map would take the other's nodes as they are.
    let mut out = BTreeMap::from([first]);
    out.append(&mut map);
    out
}

impl Tree {
    /// Rebuilds each directory's map of entries in mount `mount` from its sorted entries (see
    /// [`packed`]): a listing fills them one name at a time, in order.
    pub(super) fn pack_dirs(&mut self, mount: usize) {
        for node in self.nodes.values_mut().filter(|n| n.mount() == Some(mount)) {
            if let NodeKind::Dir(children) = &mut node.kind {
                *children = packed(std::mem::take(children));
            }
        }
        self.nodes.shrink();
    }

    /// The path of `ino` under its mount's directory ("" for that directory and the root).
    pub(super) fn path(&self, ino: u64) -> String {
        let mut names = Vec::new();
        let mut at = ino;
        while let Some(node) = self.nodes.get(&at)
            && node.parent != ROOT
            && at != ROOT
        {
            names.push(&*node.name);
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
            let NodeKind::Dir(children) = &self.nodes.get(&at)?.kind else {
                return None;
            };
            at = *children.get(name)?;
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

    pub(super) fn children_mut(&mut self, ino: u64) -> &mut BTreeMap<Name, u64> {
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
            None => self.insert(mount, path, NodeKind::Dir(BTreeMap::new())),
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
        if let Some(&ino) = self.children_mut(parent).get(name) {
            self.nodes.get_mut(&ino).expect("a child exists").kind = kind;
            return ino;
        }
        let name = Name::from(name);
        let ino = self
            .nodes
            .insert(Node::new(parent, name.clone(), Some(mount), kind));
        self.children_mut(parent).insert(name, ino);
        ino
    }

    /// Removes `ino` and everything below it; returns what was removed. Their inode numbers
    /// are not given again before [`Nodes::release`].
    pub(super) fn remove(&mut self, ino: u64) -> Vec<(u64, Node)> {
        let Some(node) = self.nodes.remove(&ino) else {
            return Vec::new();
        };
        if let Some(parent) = self.nodes.get_mut(&node.parent)
            && let NodeKind::Dir(children) = &mut parent.kind
            && children.get(&*node.name) == Some(&ino)
        {
            children.remove(&*node.name);
        }
        let mut removed = Vec::new();
        if let NodeKind::Dir(children) = &node.kind {
            for &child in children.values() {
                removed.extend(self.remove(child));
            }
        }
        removed.push((ino, node));
        removed
    }

    /// Moves `ino` (and everything below it) to `name` in directory `parent`, which must be
    /// free there; the inodes stay.
    pub(super) fn rename(&mut self, ino: u64, parent: u64, name: &str) {
        let (old_parent, old_name) = {
            let node = &self.nodes[&ino];
            (node.parent, node.name.clone())
        };
        self.children_mut(old_parent).remove(&*old_name);
        let name = Name::from(name);
        self.children_mut(parent).insert(name.clone(), ino);
        let node = self.nodes.get_mut(&ino).expect("moved");
        node.parent = parent;
        node.name = name;
    }

    /// `ino` and everything below it, as (inode, path, is a directory).
    pub(super) fn subtree(&self, ino: u64) -> Vec<(u64, String, bool)> {
        let mut out = Vec::new();
        let mut stack = vec![(ino, self.path(ino))];
        while let Some((ino, path)) = stack.pop() {
            let node = &self.nodes[&ino];
            let dir = matches!(node.kind, NodeKind::Dir(_));
            if let NodeKind::Dir(children) = &node.kind {
                for (name, &child) in children {
                    stack.push((child, join(&path, name)));
                }
            }
            out.push((ino, path, dir));
        }
        out
    }
}
