//! The table of a tree's nodes, indexed by inode number. A hash map of a million nodes keeps
//! each in a slot of a table at most 7/8 full and doubled as it grows, with the key beside it;
//! here a node's inode number is its place: the low 32 bits index a vector of slots, the next
//! 16 bits are the slot's generation. A removed node's slot is used again only once the kernel
//! has let its inode go (and then under the next generation), so an inode number the kernel
//! holds always means the one node it was given for, or none.

use super::tree::Node;

/// How a slot of the table stands.
enum Slot {
    Live(Node),
    /// The node of generation `.0` was removed, and the kernel may still hold its inode.
    Held(u16),
    /// Free for a node of generation `.0`.
    Free(u16),
}

pub(super) struct Nodes {
    slots: Vec<Slot>,
    /// Indexes of the free slots.
    free: Vec<u32>,
    live: usize,
}

/// The inode number of generation `generation` of slot `index`.
fn ino(index: usize, generation: u16) -> u64 {
    index as u64 | u64::from(generation) << 32
}

/// The slot index and generation of inode `ino`.
fn place(ino: u64) -> (usize, u16) {
    ((ino & 0xffff_ffff) as usize, (ino >> 32) as u16)
}

impl Nodes {
    /// An empty table. Inode 0 is never given: the first node inserted is inode 1 (FUSE's
    /// root).
    pub(super) fn new() -> Self {
        Self {
            slots: vec![Slot::Held(0)],
            free: Vec::new(),
            live: 0,
        }
    }

    /// Adds `node`; returns its inode number.
    pub(super) fn insert(&mut self, mut node: Node) -> u64 {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let index = index as usize;
            let Slot::Free(generation) = self.slots[index] else {
                unreachable!("listed free")
            };
            node.generation = generation;
            self.slots[index] = Slot::Live(node);
            return ino(index, generation);
        }
        let index = self.slots.len();
        assert!(index <= u32::MAX as usize, "more than 2^32 inodes");
        node.generation = 0;
        self.slots.push(Slot::Live(node));
        ino(index, 0)
    }

    pub(super) fn get(&self, ino: &u64) -> Option<&Node> {
        let (index, generation) = place(*ino);
        match self.slots.get(index)? {
            Slot::Live(node) if node.generation == generation => Some(node),
            _ => None,
        }
    }

    pub(super) fn get_mut(&mut self, ino: &u64) -> Option<&mut Node> {
        let (index, generation) = place(*ino);
        match self.slots.get_mut(index)? {
            Slot::Live(node) if node.generation == generation => Some(node),
            _ => None,
        }
    }

    pub(super) fn contains_key(&self, ino: &u64) -> bool {
        self.get(ino).is_some()
    }

    /// Removes node `ino`. Its inode number is not given again before [`Nodes::release`].
    pub(super) fn remove(&mut self, ino: &u64) -> Option<Node> {
        let (index, generation) = place(*ino);
        let slot = self.slots.get_mut(index)?;
        match slot {
            Slot::Live(node) if node.generation == generation => {
                self.live -= 1;
                match std::mem::replace(slot, Slot::Held(generation)) {
                    Slot::Live(node) => Some(node),
                    _ => unreachable!(),
                }
            }
            _ => None,
        }
    }

    /// The kernel does not hold inode `ino` (any more): if its node was removed, its slot is
    /// free for a node of the next generation.
    pub(super) fn release(&mut self, ino: u64) {
        let (index, generation) = place(ino);
        if let Some(slot @ Slot::Held(_)) = self.slots.get_mut(index)
            && matches!(slot, Slot::Held(g) if *g == generation)
            && index != 0
        {
            *slot = Slot::Free(generation.wrapping_add(1));
            self.free.push(index as u32);
        }
    }

    /// Whether node `ino` was removed and its inode number is not free yet.
    pub(super) fn is_held(&self, ino: u64) -> bool {
        let (index, generation) = place(ino);
        matches!(self.slots.get(index), Some(Slot::Held(g)) if *g == generation)
    }

    /// The number of nodes.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Node> {
        self.slots.iter().filter_map(|s| match s {
            Slot::Live(node) => Some(node),
            _ => None,
        })
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.slots.iter_mut().filter_map(|s| match s {
            Slot::Live(node) => Some(node),
            _ => None,
        })
    }

    /// Gives back the room a growing table reserved ahead: after a listing, a tree mostly
    /// stays as it is.
    pub(super) fn shrink(&mut self) {
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
    }
}

impl std::ops::Index<&u64> for Nodes {
    type Output = Node;

    fn index(&self, ino: &u64) -> &Node {
        self.get(ino).expect("a node of the tree")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strings::Span;
    use crate::vfs::tree::NodeKind;

    fn file() -> Node {
        Node::new(1, Span::EMPTY, Some(0), NodeKind::Local)
    }

    #[test]
    fn a_removed_nodes_number_is_given_again_only_after_release_and_under_a_new_generation() {
        let mut nodes = Nodes::new();
        let root = nodes.insert(file());
        assert_eq!(root, 1, "FUSE's root");
        let a = nodes.insert(file());
        assert!(nodes.remove(&a).is_some());
        assert!(nodes.get(&a).is_none());
        assert!(nodes.is_held(a));
        // Held for the kernel: not given again.
        let b = nodes.insert(file());
        assert_ne!(b & 0xffff_ffff, a & 0xffff_ffff);
        nodes.release(a);
        assert!(!nodes.is_held(a));
        let c = nodes.insert(file());
        assert_eq!(c & 0xffff_ffff, a & 0xffff_ffff, "the slot is used again");
        assert_ne!(c, a, "under another number");
        assert!(nodes.get(&a).is_none(), "the old number finds nothing");
        assert!(nodes.get(&c).is_some());
        // A late release of the old number frees nothing.
        nodes.release(a);
        assert!(nodes.get(&c).is_some());
        assert_ne!(nodes.insert(file()) & 0xffff_ffff, c & 0xffff_ffff);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes.values().count(), 4);
    }

    #[test]
    fn inode_zero_is_never_given() {
        let mut nodes = Nodes::new();
        nodes.release(0);
        assert_eq!(nodes.insert(file()), 1);
        assert!(nodes.get(&0).is_none());
    }
}
