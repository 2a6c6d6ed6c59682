//! Many short strings kept for long (a mount's names and paths, one per object), in one
//! string. A string of its own on the heap costs an allocation's header and rounding (a
//! 10-byte name takes 32 bytes) and a pointer, length and capacity where it is held; here each
//! is its bytes in the string, found by a place and a length packed in 8 bytes ([`Span`]). A
//! string no longer used leaves its bytes unused until [`Strings::repack`] rewrites the string
//! with the live ones (measurements: docs/PERFORMANCE.md, "The tree's names and entries").

/// Where a string is in [`Strings`]: its start in the upper 48 bits, its length in the lower
/// 16 (names are at most 255 bytes, S3 keys 1,024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(u64);

impl Span {
    /// The empty string.
    pub const EMPTY: Span = Span(0);

    fn new(at: usize, len: usize) -> Self {
        let len = u16::try_from(len).expect("a string of at most 65,535 bytes");
        let at = u64::try_from(at).expect("fewer bytes of strings");
        assert!(at < 1 << 48, "fewer than 2^48 bytes of strings");
        Self(at << 16 | u64::from(len))
    }

    fn at(self) -> usize {
        (self.0 >> 16) as usize
    }

    fn len(self) -> usize {
        (self.0 & 0xffff) as usize
    }
}

#[derive(Debug, Clone, Default)]
pub struct Strings {
    text: String,
    /// Bytes of `text` no span holds any more.
    unused: usize,
}

impl Strings {
    pub fn add(&mut self, s: &str) -> Span {
        let at = self.text.len();
        self.text.push_str(s);
        Span::new(at, s.len())
    }

    pub fn get(&self, span: Span) -> &str {
        &self.text[span.at()..span.at() + span.len()]
    }

    /// `span` is no longer used. Its bytes stay readable until the next [`Strings::repack`].
    pub fn release(&mut self, span: Span) {
        self.unused += span.len();
    }

    /// Whether most of the string is no longer used: then a rewrite costs less than what it
    /// gives back, counted over the releases since the last one.
    pub fn wasteful(&self) -> bool {
        self.unused * 2 > self.text.len()
    }

    /// Rewrites the string with the spans `live` alone, and points them at their new places.
    /// Every span still used must be among them.
    pub fn repack<'a>(&mut self, live: impl Iterator<Item = &'a mut Span>) {
        let mut text = String::with_capacity(self.text.len() - self.unused);
        for span in live {
            let at = text.len();
            text.push_str(self.get(*span));
            *span = Span::new(at, span.len());
        }
        self.text = text;
        self.unused = 0;
    }

    /// Gives back the room a growing string reserved ahead.
    pub fn shrink(&mut self) {
        self.text.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_read_back_and_survive_a_repack() {
        let mut names = Strings::default();
        let a = names.add("alpha");
        let gone = names.add("gone.csv");
        let mut b = names.add("β-名前");
        let mut empty = names.add("");
        assert_eq!(names.get(a), "alpha");
        assert_eq!(names.get(b), "β-名前");
        assert_eq!(names.get(empty), "");
        assert_eq!(names.get(Span::EMPTY), "");
        names.release(gone);
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
        let mut names = Strings::default();
        let refs: Vec<_> = (0..1000).map(|i| names.add(&format!("{i:03}"))).collect();
        for r in &refs[..400] {
            names.release(*r);
        }
        assert!(!names.wasteful(), "40% unused");
        for r in &refs[400..600] {
            names.release(*r);
        }
        assert!(names.wasteful(), "60% unused");
    }
}
