//! The inode tree: what `stat`, `lookup` and `readdir` show, built from the listings.

use crate::store::ObjectMeta;
use std::collections::{BTreeMap, HashMap};
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
}

/// What an inode is: a directory (its entries by name) or a file (the object it shows).
pub(super) enum NodeKind {
    Dir(BTreeMap<String, u64>),
    File(ObjectMeta),
}

pub(super) struct Node {
    pub(super) parent: u64,
    /// The mount (an index into [`super::Vfs::mounted`]), `None` for the root.
    pub(super) mount: Option<usize>,
    /// Path under the mount directory; empty for a mount's own directory.
    pub(super) path: String,
    pub(super) kind: NodeKind,
}

#[derive(Default)]
pub(super) struct Tree {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) inos: HashMap<(Option<usize>, String), u64>,
    pub(super) next: u64,
}

impl Tree {
    pub(super) fn ino_for(&mut self, mount: Option<usize>, path: &str) -> u64 {
        if let Some(&ino) = self.inos.get(&(mount, path.to_owned())) {
            return ino;
        }
        self.next += 1;
        self.inos.insert((mount, path.to_owned()), self.next);
        self.next
    }

    pub(super) fn children_mut(&mut self, ino: u64) -> &mut BTreeMap<String, u64> {
        match &mut self.nodes.get_mut(&ino).expect("parent exists").kind {
            NodeKind::Dir(children) => children,
            NodeKind::File(_) => unreachable!("parents are directories"),
        }
    }
}
