//! The manifest's entries by path, as a mount holds them for as long as it runs: one per object
//! of the bucket, so kept as a table rather than a map of a heap string and a tree slot each.
//!
//! The table has two parts. `rows` is sorted by path, each row's path a range of one string
//! (`paths`); `changes` holds what was put or removed since, and is folded into the rows once it
//! has grown past an eighth of them. A path is looked up in `changes` first, then by binary
//! search in `rows`; iteration merges the two in path order. A fold works in place: the rows
//! changed or removed front to back, the new ones merged in back to front, their paths appended
//! to the string (whose bytes of removed rows are dropped once they are half of it). So a
//! mount's entries take a few large allocations, which a pass's freed memory does not fragment
//! and which a fold does not double (measurements: docs/PERFORMANCE.md, "The manifest's table").

use super::manifest::Entry;
use crate::etag::Etag;
use crate::paths::Overlay;
use crate::strings::{Span, Strings};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::ops::Bound;

#[derive(Debug, Clone, Default)]
pub struct Entries {
    /// The paths of `rows`, in no particular order.
    paths: Strings,
    rows: Vec<Row>,
    /// Changes since `rows` were built, by path: the entry put there, or `None` for a path
    /// removed.
    changes: BTreeMap<Box<str>, Option<Entry>>,
    /// The number of paths with an entry.
    len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// The row's path, in `paths`.
    path: Span,
    entry: Entry,
}

impl Row {
    /// A row that is no entry's, for the slots a fold fills.
    fn placeholder() -> Self {
        Self {
            path: Span::EMPTY,
            entry: Entry::new(Etag::Md5([0; 16]), 0, 0),
        }
    }
}

/// Changes are folded into the rows once they are more than this share of them (and at least
/// `MIN_CHANGES`): an eighth keeps the map small next to the table, and the folds few.
const FOLD_SHARE: usize = 8;
const MIN_CHANGES: usize = 1024;

/// The path of `row`, in `paths`.
fn path_of<'a>(paths: &'a Strings, row: &Row) -> &'a str {
    paths.get(row.path)
}

impl Entries {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The row holding `path`, or where it would go.
    fn find(&self, path: &str) -> Result<usize, usize> {
        self.rows
            .binary_search_by(|row| path_of(&self.paths, row).cmp(path))
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        match self.changes.get(path) {
            Some(change) => change.as_ref(),
            None => self.find(path).ok().map(|at| &self.rows[at].entry),
        }
    }

    pub fn contains_key(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Puts `entry` at `path`; returns the entry that was there.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Option<Entry> {
        self.change(path, Some(entry))
    }

    /// Removes the entry at `path`; returns it.
    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        self.change(path, None)
    }

    /// Sets `path` to `to`; returns what was there.
    fn change(&mut self, path: &str, to: Option<Entry>) -> Option<Entry> {
        let now = usize::from(to.is_some());
        let old = self.set(path, to);
        self.len = self.len + now - usize::from(old.is_some());
        old
    }

    /// [`Entries::change`], but for the count.
    fn set(&mut self, path: &str, to: Option<Entry>) -> Option<Entry> {
        if let Some(change) = self.changes.get_mut(path) {
            return std::mem::replace(change, to);
        }
        let at = match self.find(path) {
            Ok(at) => at,
            // After every row (as a listing's downloads, or a snapshot's reading, mostly come):
            // a row of its own at once.
            Err(at) if at == self.rows.len() => {
                if let Some(entry) = to {
                    let path = self.paths.add(path);
                    self.rows.push(Row { path, entry });
                }
                return None;
            }
            Err(_) if to.is_none() => return None,
            Err(_) => {
                self.changes.insert(path.into(), to);
                self.fold_if_grown();
                return None;
            }
        };
        match to {
            // A row's entry changes in place.
            Some(entry) => Some(std::mem::replace(&mut self.rows[at].entry, entry)),
            None => {
                let old = self.rows[at].entry.clone();
                self.changes.insert(path.into(), None);
                self.fold_if_grown();
                Some(old)
            }
        }
    }

    fn fold_if_grown(&mut self) {
        if self.changes.len() > (self.rows.len() / FOLD_SHARE).max(MIN_CHANGES) {
            self.fold();
        }
    }

    /// The table, folded, without room kept for growth.
    fn finished(mut self) -> Self {
        self.fold();
        self.paths.shrink();
        self.rows.shrink_to_fit();
        self
    }

    /// Folds the changes into the rows, in place.
    pub fn fold(&mut self) {
        if self.changes.is_empty() {
            return;
        }
        let mut changes = std::mem::take(&mut self.changes).into_iter().peekable();
        let (paths, rows) = (&self.paths, &mut self.rows);
        // Front to back: rows changed or removed, kept rows moved up over the removed ones;
        // the paths the rows do not hold set aside, in order.
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut kept = 0;
        for at in 0..rows.len() {
            let path = path_of(paths, &rows[at]);
            while let Some((p, change)) = changes.next_if(|(p, _)| **p < *path) {
                added.extend(change.map(|e| (p, e)));
            }
            let keep = match changes.next_if(|(p, _)| **p == *path) {
                Some((_, Some(entry))) => {
                    rows[at].entry = entry;
                    true
                }
                Some((_, None)) => {
                    removed.push(rows[at].path);
                    false
                }
                None => true,
            };
            if keep {
                rows.swap(kept, at);
                kept += 1;
            }
        }
        rows.truncate(kept);
        added.extend(changes.filter_map(|(p, change)| Some((p, change?))));
        for path in removed {
            self.paths.release(path);
        }
        self.merge(added);
        if self.paths.wasteful() {
            self.paths
                .repack(self.rows.iter_mut().map(|row| &mut row.path));
        }
    }

    /// Merges `added`, rows of paths not in the table, in path order, into the rows: back to
    /// front, into slots added at the end.
    fn merge(&mut self, added: Vec<(Box<str>, Entry)>) {
        let mut added: Vec<Row> = added
            .into_iter()
            .map(|(path, entry)| Row {
                path: self.paths.add(&path),
                entry,
            })
            .collect();
        let (paths, rows) = (&self.paths, &mut self.rows);
        let mut old = rows.len();
        rows.reserve_exact(added.len());
        rows.resize_with(old + added.len(), Row::placeholder);
        for to in (0..rows.len()).rev() {
            let Some(new) = added.last() else { break };
            if old > 0 && path_of(paths, &rows[old - 1]) > path_of(paths, new) {
                rows.swap(old - 1, to);
                old -= 1;
            } else {
                rows[to] = added.pop().expect("a last one");
            }
        }
    }

    /// The entries in path order.
    pub fn iter<'a>(&'a self) -> Iter<'a> {
        self.iter_from("")
    }

    /// The entries in path order from `path` on.
    pub fn iter_from<'a>(&'a self, path: &str) -> Iter<'a> {
        let change: ChangeOf<'a> = |(path, change)| (path, change.as_ref());
        let rows = Rows {
            entries: self,
            at: self.find(path).unwrap_or_else(|at| at),
        };
        let changes = self
            .changes
            .range::<str, _>((Bound::Included(path), Bound::Unbounded));
        Overlay::new(rows, changes.map(change))
    }

    pub fn values(&self) -> impl Iterator<Item = &Entry> {
        self.iter().map(|(_, e)| e)
    }
}

/// Tables are equal when they hold the same entries, however they are split into rows and
/// changes.
impl PartialEq for Entries {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Entries {}

/// [`Entries::iter`]: the rows and the changes, merged in path order.
pub type Iter<'a> = Overlay<'a, &'a Entry, Rows<'a>, Changes<'a>>;

/// The rows of a table in order, with their paths.
pub struct Rows<'a> {
    entries: &'a Entries,
    at: usize,
}

impl<'a> Iterator for Rows<'a> {
    type Item = (&'a str, &'a Entry);

    fn next(&mut self) -> Option<Self::Item> {
        let row = self.entries.rows.get(self.at)?;
        self.at += 1;
        Some((path_of(&self.entries.paths, row), &row.entry))
    }
}

/// The changes of a table in order.
pub type Changes<'a> = std::iter::Map<btree_map::Range<'a, Box<str>, Option<Entry>>, ChangeOf<'a>>;

/// A change as [`Overlay`] takes it.
type ChangeOf<'a> = fn((&'a Box<str>, &'a Option<Entry>)) -> (&'a str, Option<&'a Entry>);

impl<'a> IntoIterator for &'a Entries {
    type Item = (&'a str, &'a Entry);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<S: AsRef<str>> FromIterator<(S, Entry)> for Entries {
    fn from_iter<I: IntoIterator<Item = (S, Entry)>>(iter: I) -> Self {
        let mut out = Entries::new();
        for (path, entry) in iter {
            out.insert(path.as_ref(), entry);
        }
        out.finished()
    }
}

impl<S: AsRef<str>, const N: usize> From<[(S, Entry); N]> for Entries {
    fn from(entries: [(S, Entry); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl Serialize for Entries {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Table;

        impl<'de> Visitor<'de> for Table {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of paths to entries")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Entries::new();
                out.rows.reserve_exact(map.size_hint().unwrap_or(0));
                while let Some((path, entry)) = map.next_entry::<std::borrow::Cow<str>, Entry>()? {
                    out.insert(&path, entry);
                }
                Ok(out.finished())
            }
        }

        deserializer.deserialize_map(Table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(size: u64) -> Entry {
        Entry::new("e".into(), size, 0)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(String, u64),
        Remove(String),
        Fold,
    }

    fn op() -> impl Strategy<Value = Op> {
        let path = "[a-c]{1,2}(/[a-c]{1,2})?";
        prop_oneof![
            4 => (path, 0u64..4).prop_map(|(p, s)| Op::Put(p, s)),
            2 => path.prop_map(Op::Remove),
            1 => Just(Op::Fold),
        ]
    }

    proptest! {
        /// Whatever is put, removed and folded, in any order, the table reads as a map would.
        #[test]
        fn reads_as_a_map(start in proptest::collection::vec(("[a-c]{1,3}", 0u64..4), 0..20),
                          ops in proptest::collection::vec(op(), 0..60)) {
            let mut model: BTreeMap<String, Entry> =
                start.iter().map(|(p, s)| (p.clone(), entry(*s))).collect();
            // Unsorted and repeated paths too: the last one of a path stands, as in a map.
            let mut table: Entries = start.iter().map(|(p, s)| (p.as_str(), entry(*s))).collect();
            for op in ops {
                match op {
                    Op::Put(p, s) => prop_assert_eq!(table.insert(&p, entry(s)), model.insert(p, entry(s))),
                    Op::Remove(p) => prop_assert_eq!(table.remove(&p), model.remove(&p)),
                    Op::Fold => table.fold(),
                }
                prop_assert_eq!(table.len(), model.len());
                let listed: Vec<(&str, &Entry)> = table.iter().collect();
                let want: Vec<(&str, &Entry)> = model.iter().map(|(p, e)| (p.as_str(), e)).collect();
                prop_assert_eq!(listed, want);
                for p in ["a", "b", "a/b", "cc", "d"] {
                    prop_assert_eq!(table.get(p), model.get(p));
                    let from: Vec<(&str, &Entry)> = table.iter_from(p).collect();
                    let want: Vec<(&str, &Entry)> =
                        model.range::<str, _>((std::ops::Bound::Included(p), std::ops::Bound::Unbounded)).map(|(p, e)| (p.as_str(), e)).collect();
                    prop_assert_eq!(from, want);
                }
            }
            let json = serde_json::to_string(&table).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&model).unwrap());
            let back: Entries = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back.iter().collect::<Vec<_>>(), table.iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn many_changes_are_folded_into_rows() {
        let mut table = Entries::new();
        // Each before all the others: none can be a row at once.
        for i in (0..5000).rev() {
            assert_eq!(table.insert(&format!("f-{i:05}"), entry(1)), None);
            assert!(table.changes.len() <= MIN_CHANGES, "folded as they grew");
        }
        for i in (0..5000).step_by(2) {
            assert_eq!(table.remove(&format!("f-{i:05}")), Some(entry(1)));
        }
        assert!(table.changes.len() <= MIN_CHANGES);
        assert!(table.rows.len() < 5000, "removed rows are dropped");
        assert_eq!(table.len(), 2500);
        assert_eq!(table.get("f-01233"), Some(&entry(1)));
        assert_eq!(table.get("f-01234"), None);
        let paths: Vec<String> = table.iter().map(|(p, _)| p.to_owned()).collect();
        let want: Vec<String> = (1..5000).step_by(2).map(|i| format!("f-{i:05}")).collect();
        assert_eq!(paths, want);
        table.fold();
        assert!(
            !table.paths.wasteful(),
            "the removed rows' paths are dropped"
        );
        assert_eq!(table.iter().count(), 2500);
    }
}
