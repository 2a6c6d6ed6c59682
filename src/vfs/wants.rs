//! What a refresh puts at each path of a mount: the listing's files and directories, and over
//! them the changes made here that the listing does not show yet. The listing's part is a
//! sorted table of borrowed paths (a row per object, built once); the changes, few, a map. A
//! map of every path would hold a B-tree slot per object, in nodes half full, since a listing
//! fills it in order.

use crate::paths::{Overlay, Table};
use crate::store::ObjectRef;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;

/// What a refresh puts at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want<'a> {
    Dir,
    File(ObjectRef<'a>),
    Local,
}

pub(super) struct Wants<'a> {
    /// The listing's files, the layout's table of them.
    files: Table<'a>,
    /// The directories, and the changes over the files: what is put at a path, or `None`
    /// where nothing is.
    over: BTreeMap<Cow<'a, str>, Option<Want<'a>>>,
}

impl<'a> Wants<'a> {
    /// The listing's `files` and directories `dirs` (no path in both).
    pub(super) fn new(files: Table<'a>, dirs: impl IntoIterator<Item = &'a str>) -> Self {
        let dirs = dirs
            .into_iter()
            .map(|d| (Cow::Borrowed(d), Some(Want::Dir)));
        Self {
            files,
            over: dirs.collect(),
        }
    }

    pub(super) fn get(&self, path: &str) -> Option<Want<'a>> {
        match self.over.get(path) {
            Some(over) => *over,
            None => self.files.get(path).map(Want::File),
        }
    }

    pub(super) fn insert(&mut self, path: Cow<'a, str>, want: Want<'a>) {
        self.over.insert(path, Some(want));
    }

    pub(super) fn remove(&mut self, path: &str) {
        self.over.insert(Cow::Owned(path.to_owned()), None);
    }

    /// Whether anything is put below directory `dir`.
    pub(super) fn any_below(&self, dir: &str) -> bool {
        let below = format!("{dir}/");
        let files = self.files.iter_after(&below).map(|(p, _)| p);
        let over = (Bound::Included(below.as_str()), Bound::Unbounded);
        let over = self.over.range::<str, _>(over);
        files
            .take_while(|p| p.starts_with(&below))
            .any(|p| !matches!(self.over.get(p), Some(None)))
            || over
                .take_while(|(p, _)| p.starts_with(&below))
                .any(|(_, w)| w.is_some())
    }

    /// Every path with what is put there, in path order: a directory before what is in it.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, Want<'a>)> + '_ {
        let files = self.files.iter().map(|(p, meta)| (p, Want::File(meta)));
        let over = self.over.iter().map(|(p, w)| (p.as_ref(), *w));
        Overlay::new(files, over)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_stand_over_the_listing_in_path_order() {
        let meta = |key: &str| crate::store::ObjectMeta {
            key: key.into(),
            size: 1,
            etag: "e".into(),
            last_modified: std::time::SystemTime::UNIX_EPOCH,
        };
        let listing = crate::store::Listing::from(vec![meta("a-1"), meta("d/b")]);
        let (a, b) = (listing.get(0), listing.get(1));
        let files = crate::paths::layout("", &listing).files;
        let mut wants = Wants::new(files, ["gone/x", "d", "gone"]);
        assert_eq!(wants.get("d/b"), Some(Want::File(b)));
        wants.insert(Cow::Borrowed("d/b"), Want::Local);
        wants.insert(Cow::Owned("a".into()), Want::Dir);
        wants.insert(Cow::Owned("a/new".into()), Want::Local);
        wants.remove("gone/x");
        let all: Vec<_> = wants.iter().collect();
        assert_eq!(
            all,
            [
                ("a", Want::Dir),
                // Byte order: '-' before '/'.
                ("a-1", Want::File(a)),
                ("a/new", Want::Local),
                ("d", Want::Dir),
                ("d/b", Want::Local),
                ("gone", Want::Dir),
            ]
        );
        assert_eq!(wants.get("d/b"), Some(Want::Local));
        assert_eq!(wants.get("a-1"), Some(Want::File(a)));
        assert_eq!(wants.get("gone/x"), None);
        assert!(wants.any_below("d") && wants.any_below("a"));
        assert!(!wants.any_below("gone"), "its one entry removed");
        assert!(!wants.any_below("a-1"));
    }
}
