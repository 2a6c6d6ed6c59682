//! Mapping S3 keys to relative local paths, the one place that decides what may be written where.
//!
//! A mapped path is a `/`-joined list of plain components: never empty, never `.` or `..`, no NUL,
//! each at most 255 bytes. Anything else is refused with a reason, so no key can escape the mount
//! directory. The mapping is injective: two keys never map to the same path. [`layout`] maps a
//! whole listing, the one layout both `sync` (on disk) and `mount` (in the file system) use.

use crate::store::{Listing, ObjectRef};
use std::collections::BTreeSet;

/// Where a key lands under the mount directory: a path is the key less the mount's prefix (and
/// a folder marker's trailing slash), so it is borrowed from the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped<'k> {
    /// A regular file at this relative path.
    File(&'k str),
    /// A directory (the key ends in `/`: a folder marker).
    Dir(&'k str),
    /// The folder marker of the mount's prefix itself.
    Root,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unrepresentable {
    #[error("it has a \"..\" component that would escape the mount directory")]
    DotDot,
    #[error("it has a \".\" component")]
    Dot,
    #[error("it is absolute or has an empty component (\"//\")")]
    Empty,
    #[error("it has a component longer than 255 bytes")]
    TooLong,
    #[error("it contains a NUL byte")]
    Nul,
    #[error("it is both a file and a directory prefix of other keys")]
    FileAndDirectory,
}

/// Longest name a Linux file system accepts for one component.
pub const NAME_MAX: usize = 255;

/// Maps `key` (which starts with `prefix`) to its place under the mount directory.
pub fn map_key<'k>(prefix: &str, key: &'k str) -> Result<Mapped<'k>, Unrepresentable> {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    if rest.is_empty() {
        return Ok(Mapped::Root);
    }
    let (body, is_dir) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    for component in body.split('/') {
        match component {
            "" => return Err(Unrepresentable::Empty),
            "." => return Err(Unrepresentable::Dot),
            ".." => return Err(Unrepresentable::DotDot),
            c if c.len() > NAME_MAX => return Err(Unrepresentable::TooLong),
            c if c.contains('\0') => return Err(Unrepresentable::Nul),
            _ => {}
        }
    }
    Ok(if is_dir {
        Mapped::Dir(body)
    } else {
        Mapped::File(body)
    })
}

/// The key the path `rel` of the mount directory comes from, a directory's (`dir`) being its
/// folder marker: the inverse of [`map_key`], so a record of a path needs no copy of its key.
pub fn key_of(prefix: &str, rel: &str, dir: bool) -> String {
    let slash = if dir { "/" } else { "" };
    format!("{prefix}{rel}{slash}")
}

/// The proper ancestors of a relative path, nearest last: `a/b/c` gives `a`, `a/b`.
pub fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

/// How a listing lays out under the mount directory: which paths are files and which are
/// directories, and which keys cannot be represented. Its paths are borrowed from the listing's
/// keys, and its tables are sorted vectors, not maps: a pass builds one for every object of the
/// bucket (see docs/PERFORMANCE.md, "Planning tables").
#[derive(Debug)]
pub struct Layout<'a> {
    pub files: Table<'a>,
    /// Directories from folder markers.
    pub dirs: Table<'a>,
    /// Directories that exist because something is below them.
    pub implied_dirs: BTreeSet<&'a str>,
    pub skipped: Vec<(String, Unrepresentable)>,
}

/// Paths of a listing with their objects, sorted by path, each path once. A row is the
/// object's place in the listing and where its path starts in its key (a path is the end of
/// its key, less a folder marker's trailing slash): 8 bytes, since a pass builds a row for
/// every object of the bucket.
#[derive(Debug)]
pub struct Table<'a> {
    rows: Vec<Row>,
    listing: &'a Listing,
    /// The paths are folder markers' (their keys end in `/`).
    dirs: bool,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    at: u32,
    /// Where the path starts in the key (keys are at most 1,024 bytes).
    path_at: u16,
}

impl Row {
    /// The row of `path`, the path of `listing[at]` (a folder marker's if `dir`).
    fn new(at: usize, key: &str, path: &str, dir: bool) -> Self {
        Self {
            at: u32::try_from(at).expect("fewer than 2^32 objects"),
            path_at: u16::try_from(key.len() - usize::from(dir) - path.len())
                .expect("a key of at most 1,024 bytes"),
        }
    }

    fn path(self, listing: &Listing, dirs: bool) -> &str {
        let key = listing.key(self.at as usize);
        &key[usize::from(self.path_at)..key.len() - usize::from(dirs)]
    }
}

impl<'a> Table<'a> {
    /// The table of `rows` of `listing` (folder markers' if `dirs`), which may come in any
    /// order; of a path listed twice, the first.
    fn of(mut rows: Vec<Row>, listing: &'a Listing, dirs: bool) -> Self {
        // A listing comes in key order, and so its paths: this is one pass over sorted rows.
        // (Unstable, with the place as the tie-break: a stable sort's buffer would be half the
        // table again.)
        rows.sort_unstable_by(|a, b| {
            let path = |r: &Row| r.path(listing, dirs);
            path(a).cmp(path(b)).then(a.at.cmp(&b.at))
        });
        rows.dedup_by(|a, b| a.path(listing, dirs) == b.path(listing, dirs));
        rows.shrink_to_fit();
        Self {
            rows,
            listing,
            dirs,
        }
    }

    fn path(&self, row: Row) -> &'a str {
        row.path(self.listing, self.dirs)
    }

    /// Where `path` is among the rows, or where it would go.
    fn find(&self, path: &str) -> Result<usize, usize> {
        self.rows.binary_search_by(|row| self.path(*row).cmp(path))
    }

    pub fn get(&self, path: &str) -> Option<ObjectRef<'a>> {
        let at = self.find(path).ok()?;
        Some(self.listing.get(self.rows[at].at as usize))
    }

    pub fn contains_key(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// The rows in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, ObjectRef<'a>)> + '_ {
        self.iter_from(0)
    }

    /// [`Table::iter`] from the first path not before `path`.
    pub fn iter_after(&self, path: &str) -> impl Iterator<Item = (&'a str, ObjectRef<'a>)> + '_ {
        self.iter_from(self.find(path).unwrap_or_else(|at| at))
    }

    fn iter_from(&self, start: usize) -> impl Iterator<Item = (&'a str, ObjectRef<'a>)> + '_ {
        self.indexed_from(start).map(|(_, path, meta)| (path, meta))
    }

    /// The rows in path order, with each object's place in the listing.
    pub fn indexed(&self) -> impl Iterator<Item = (usize, &'a str, ObjectRef<'a>)> + '_ {
        self.indexed_from(0)
    }

    fn indexed_from(
        &self,
        start: usize,
    ) -> impl Iterator<Item = (usize, &'a str, ObjectRef<'a>)> + '_ {
        self.rows[start..].iter().map(move |&row| {
            let at = row.at as usize;
            (at, self.path(row), self.listing.get(at))
        })
    }

    pub fn keys(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.rows.iter().map(|row| self.path(*row))
    }

    /// Keeps the rows whose path and object `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&'a str, ObjectRef<'a>) -> bool) {
        let (listing, dirs) = (self.listing, self.dirs);
        self.rows
            .retain(|row| keep(row.path(listing, dirs), listing.get(row.at as usize)));
    }
}

/// Two sequences in path order, merged: `changes` stands over `base` where both have a path,
/// and a change of `None` hides it. The manifest's table and a mount's refresh both keep a
/// sorted table with a small map of the changes over it.
pub struct Overlay<'a, V, B, C>
where
    B: Iterator<Item = (&'a str, V)>,
    C: Iterator<Item = (&'a str, Option<V>)>,
{
    base: std::iter::Peekable<B>,
    changes: std::iter::Peekable<C>,
}

impl<'a, V, B, C> Overlay<'a, V, B, C>
where
    B: Iterator<Item = (&'a str, V)>,
    C: Iterator<Item = (&'a str, Option<V>)>,
{
    pub fn new(base: B, changes: C) -> Self {
        Self {
            base: base.peekable(),
            changes: changes.peekable(),
        }
    }
}

impl<'a, V, B, C> Iterator for Overlay<'a, V, B, C>
where
    B: Iterator<Item = (&'a str, V)>,
    C: Iterator<Item = (&'a str, Option<V>)>,
{
    type Item = (&'a str, V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.changes.peek()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((base, _)), Some((change, _))) => base.cmp(change),
            };
            if order.is_lt() {
                return self.base.next();
            }
            if order.is_eq() {
                // The change stands for the base's.
                self.base.next();
            }
            if let Some((path, Some(value))) = self.changes.next() {
                return Some((path, value));
            }
        }
    }
}

pub fn layout<'a>(prefix: &str, remote: &'a Listing) -> Layout<'a> {
    let (mut files, mut dirs, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for (at, object) in remote.iter().enumerate() {
        let key = object.key;
        match map_key(prefix, key) {
            Ok(Mapped::File(path)) => files.push(Row::new(at, key, path, false)),
            Ok(Mapped::Dir(path)) => dirs.push(Row::new(at, key, path, true)),
            Ok(Mapped::Root) => {}
            Err(reason) => skipped.push((key.to_owned(), reason)),
        }
    }
    let dirs = Table::of(dirs, remote, true);
    let mut files = Table::of(files, remote, false);
    let mut implied_dirs = BTreeSet::new();
    for path in files.keys().chain(dirs.keys()) {
        // Nearest first: once one is there, so are the ones above it.
        for (at, _) in path.rmatch_indices('/') {
            if !implied_dirs.insert(&path[..at]) {
                break;
            }
        }
    }
    files.retain(|path, meta| {
        let conflict = dirs.contains_key(path) || implied_dirs.contains(path);
        if conflict {
            skipped.push((meta.key.to_owned(), Unrepresentable::FileAndDirectory));
        }
        !conflict
    });
    Layout {
        files,
        dirs,
        implied_dirs,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_plain_keys() {
        assert_eq!(map_key("p/", "p/a/b.txt"), Ok(Mapped::File("a/b.txt")));
        assert_eq!(map_key("p/", "p/a/"), Ok(Mapped::Dir("a")));
        assert_eq!(map_key("p/", "p/"), Ok(Mapped::Root));
        assert_eq!(
            map_key("", "with space/ü.csv"),
            Ok(Mapped::File("with space/ü.csv"))
        );
    }

    #[test]
    fn refuses_keys_that_escape_or_cannot_be_files() {
        assert_eq!(map_key("", "../x"), Err(Unrepresentable::DotDot));
        assert_eq!(map_key("", "a/../../x"), Err(Unrepresentable::DotDot));
        assert_eq!(map_key("", "/abs"), Err(Unrepresentable::Empty));
        assert_eq!(map_key("", "a//b"), Err(Unrepresentable::Empty));
        assert_eq!(map_key("", "a/./b"), Err(Unrepresentable::Dot));
        assert_eq!(map_key("", &"x".repeat(256)), Err(Unrepresentable::TooLong));
        assert_eq!(map_key("", "a\0b"), Err(Unrepresentable::Nul));
        let long = "x".repeat(255);
        assert_eq!(map_key("", &long), Ok(Mapped::File(long.as_str())));
    }

    /// A layout's tables give each path its object, in path order (which is not the listing's
    /// when a listing comes out of order), and keep the first of a key listed twice.
    #[test]
    fn a_layout_finds_each_path_its_object() {
        let meta = |key: &str, size| crate::store::ObjectMeta {
            key: key.into(),
            size,
            etag: "e".into(),
            last_modified: std::time::SystemTime::UNIX_EPOCH,
        };
        let listing = Listing::from(vec![
            meta("p/d/b", 1),
            meta("p/a", 2),
            meta("p/", 0),
            meta("p/d/", 0),
            meta("p/a", 3),
            meta("p/x/../y", 4),
            meta("p/e/", 0),
            meta("p/e", 5),
            meta("p/a-1", 6),
        ]);
        let layout = layout("p/", &listing);
        let files: Vec<_> = layout.files.iter().map(|(p, m)| (p, m.size)).collect();
        assert_eq!(files, [("a", 2), ("a-1", 6), ("d/b", 1)]);
        assert_eq!(layout.dirs.keys().collect::<Vec<_>>(), ["d", "e"]);
        assert_eq!(layout.dirs.get("e").map(|m| m.key), Some("p/e/"));
        assert_eq!(layout.files.get("d/b").map(|m| m.size), Some(1));
        assert_eq!(layout.files.get("d"), None);
        assert_eq!(layout.implied_dirs, BTreeSet::from(["d"]));
        let after: Vec<_> = layout.files.iter_after("a/").map(|(p, _)| p).collect();
        assert_eq!(after, ["d/b"]);
        let skipped: Vec<_> = layout
            .skipped
            .iter()
            .map(|(k, r)| (k.as_str(), *r))
            .collect();
        assert_eq!(
            skipped,
            [
                ("p/x/../y", Unrepresentable::DotDot),
                ("p/e", Unrepresentable::FileAndDirectory)
            ]
        );
    }

    #[test]
    fn lists_ancestors() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(ancestors("a").count(), 0);
    }

    proptest! {
        /// Whatever the key, a mapped path stays inside the mount directory.
        #[test]
        fn mapped_paths_never_escape(key in "[a./\\x00é]{0,12}") {
            if let Ok(Mapped::File(rel) | Mapped::Dir(rel)) = map_key("", &key) {
                let path = std::path::Path::new(&rel);
                prop_assert!(path.is_relative());
                prop_assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                prop_assert_eq!(path.components().count(), rel.split('/').count());
            }
        }
    }
}
