//! The names of a tree's nodes, in one string. A name of its own on the heap costs an
//! allocation's header and rounding (a 10-byte name takes 32 bytes), and a directory's map of
//! names to inodes a second copy or a shared count; here each name is its bytes in the
//! string, and a node finds it by a place and a length packed in 8 bytes. A name removed or
//! renamed leaves its bytes unused until [`Names::repack`] rewrites the string with the live
//! ones.

/// Where a name is in [`Names`]: its start in the upper 48 bits, its length in the lower 16
/// (names are path components, at most 255 bytes; mount ids are no longer than a name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NameRef(u64);

impl NameRef {
    /// The empty name (the root's).
    pub(super) const EMPTY: NameRef = NameRef(0);

    fn new(at: usize, len: usize) -> Self {
        let len = u16::try_from(len).expect("a name of at most 65,535 bytes");
        let at = u64::try_from(at).expect("fewer bytes of names");
        assert!(at < 1 << 48, "fewer than 2^48 bytes of names");
        Self(at << 16 | u64::from(len))
    }

    fn at(self) -> usize {
        (self.0 >> 16) as usize
    }

    fn len(self) -> usize {
        (self.0 & 0xffff) as usize
    }
}

#[derive(Debug, Default)]
pub(super) struct Names {
    text: String,
    /// Bytes of `text` no node names any more.
    unused: usize,
}

impl Names {
    pub(super) fn add(&mut self, name: &str) -> NameRef {
        let at = self.text.len();
        self.text.push_str(name);
        NameRef::new(at, name.len())
    }

    pub(super) fn get(&self, name: NameRef) -> &str {
        &self.text[name.at()..name.at() + name.len()]
    }

    /// `name` is no longer used. Its bytes stay readable until the next [`Names::repack`].
    pub(super) fn drop_name(&mut self, name: NameRef) {
        self.unused += name.len();
    }

    /// Whether most of the string is names no longer used (and enough to be worth a rewrite).
    pub(super) fn wasteful(&self) -> bool {
        self.unused > 64 * 1024 && self.unused * 2 > self.text.len()
    }

    /// Rewrites the string with the names `live` alone, and points them at their new places.
    /// Every name still used must be among them.
    pub(super) fn repack<'a>(&mut self, live: impl Iterator<Item = &'a mut NameRef>) {
        let mut text = String::with_capacity(self.text.len() - self.unused);
        for name in live {
            let at = text.len();
            text.push_str(self.get(*name));
            *name = NameRef::new(at, name.len());
        }
        self.text = text;
        self.unused = 0;
    }

    /// Gives back the room a growing string reserved ahead.
    pub(super) fn shrink(&mut self) {
        self.text.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_survive_a_repack() {
        let mut names = Names::default();
        let a = names.add("alpha");
        let gone = names.add("gone.csv");
        let mut b = names.add("β-名前");
        let mut empty = names.add("");
        assert_eq!(names.get(a), "alpha");
        assert_eq!(names.get(b), "β-名前");
        assert_eq!(names.get(empty), "");
        assert_eq!(names.get(NameRef::EMPTY), "");
        names.drop_name(gone);
        assert_eq!(names.get(gone), "gone.csv", "readable until a repack");
        let mut a = a;
        names.repack([&mut a, &mut b, &mut empty].into_iter());
        assert_eq!(
            (names.get(a), names.get(b), names.get(empty)),
            ("alpha", "β-名前", "")
        );
        assert_eq!(
            names.text.len(),
            "alphaβ-名前".len(),
            "the dropped name is gone"
        );
    }

    #[test]
    fn a_repack_is_due_once_most_bytes_are_unused() {
        let mut names = Names::default();
        let long = "x".repeat(200);
        let refs: Vec<_> = (0..1000).map(|_| names.add(&long)).collect();
        for r in &refs[..400] {
            names.drop_name(*r);
        }
        assert!(!names.wasteful(), "40% unused");
        for r in &refs[400..600] {
            names.drop_name(*r);
        }
        assert!(names.wasteful(), "60% unused");
    }
}
