//! The parts of a refresh's listing that show nothing new, left out of it.
//!
//! A refresh lists the whole bucket, but mostly finds what it had: a listing held whole beside
//! the tree and the manifest is a row per object for nothing. A store lists in parts
//! ([`crate::store::ObjectStore::list_parts`]), each covering a sub-prefix or the objects
//! directly in a prefix; a part that shows exactly what the tree and the manifest hold for its
//! cover is dropped as it arrives, and its cover recorded here. The tree's update and the plan
//! then leave everything under such a cover as it is, and judge the rest by the listing as
//! before: what no part covers is gone from the bucket.

use crate::paths::{Layout, Mapped, Unrepresentable, ancestors, map_key};
use crate::store::{Cover, Listing};
use std::collections::HashSet;

/// A part's cover as paths of the mount's directory ("" the directory itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Directory `0` and everything below it.
    Under(&'a str),
    /// The files directly in directory `0`, and its own folder marker.
    Direct(&'a str),
}

impl<'a> Scope<'a> {
    /// The scope of `cover`, a part of a listing of the mount's `prefix`; `None` where its
    /// prefix maps to no directory (such a part is never left out).
    pub fn of(prefix: &str, cover: &'a Cover) -> Option<Self> {
        let (key, under) = match cover {
            Cover::Under(key) => (key, true),
            Cover::Direct(key) => (key, false),
        };
        let dir = match map_key(prefix, key) {
            Ok(Mapped::Root) => "",
            Ok(Mapped::Dir(dir)) => dir,
            Ok(Mapped::File(_)) | Err(_) => return None,
        };
        Some(match under {
            true => Scope::Under(dir),
            false => Scope::Direct(dir),
        })
    }

    /// The directory the scope is of.
    pub fn dir(self) -> &'a str {
        match self {
            Scope::Under(dir) | Scope::Direct(dir) => dir,
        }
    }

    /// Whether path `path` (a directory if `dir`) is in the scope.
    pub fn holds(self, path: &str, dir: bool) -> bool {
        match self {
            Scope::Under("") => true,
            Scope::Under(top) => path
                .strip_prefix(top)
                .is_some_and(|rest| rest.starts_with('/') || (rest.is_empty() && dir)),
            Scope::Direct(top) => match path.rsplit_once('/') {
                _ if dir => path == top,
                Some((parent, _)) => parent == top,
                None => top.is_empty(),
            },
        }
    }
}

/// The covers of the parts left out of a listing, and what they held.
#[derive(Debug, Clone, Default)]
pub struct Unchanged {
    /// Directories left as they are with everything below them.
    under: HashSet<String>,
    /// Directories whose files are left as they are.
    direct: HashSet<String>,
    /// Directories on the way to those, and those of `direct`: they stay, whatever the listing
    /// shows.
    through: HashSet<String>,
    /// The objects and bytes of the parts left out.
    pub objects: u64,
    pub bytes: u64,
}

impl Unchanged {
    pub fn is_empty(&self) -> bool {
        self.under.is_empty() && self.direct.is_empty()
    }

    /// Records that `part`, whose scope is `scope`, was left out.
    pub fn add(&mut self, scope: Scope<'_>, part: &Listing) {
        self.objects += part.len() as u64;
        self.bytes += part.iter().map(|o| o.size).sum::<u64>();
        let dir = scope.dir();
        self.through.extend(ancestors(dir).map(str::to_owned));
        match scope {
            Scope::Under(dir) => self.under.insert(dir.to_owned()),
            Scope::Direct(dir) => {
                self.through.insert(dir.to_owned());
                self.direct.insert(dir.to_owned())
            }
        };
    }

    /// Whether path `path` (a directory if `dir`) lies in a part left out: it stays as it is.
    /// A directory that [`Unchanged::leads_to`] stays too, but what is in it may not.
    pub fn holds(&self, path: &str, dir: bool) -> bool {
        if self.is_empty() {
            return false;
        }
        let parent = path.rsplit_once('/').map_or("", |(parent, _)| parent);
        self.under.contains("")
            || (dir && (self.under.contains(path) || self.direct.contains(path)))
            || ancestors(path).any(|a| self.under.contains(a))
            || (!dir && self.direct.contains(parent))
    }

    /// Whether directory `path` leads to a part left out, or is one's: it stays, and what is in
    /// it is looked at one by one.
    pub fn leads_to(&self, path: &str) -> bool {
        self.through.contains(path)
    }

    /// Whether the parts left out hold a directory at `path`, or something below it: a file
    /// the listing shows there cannot be.
    pub fn has_dir(&self, path: &str) -> bool {
        self.through.contains(path) || self.under.contains(path)
    }

    /// Takes out of `layout`, the layout of a listing these parts were left out of, the files
    /// where a part left out holds a directory: a key that is both a file and a directory
    /// prefix, as [`crate::paths::layout`] skips it within one listing.
    pub fn shadow(&self, layout: &mut Layout<'_>) {
        if self.is_empty() {
            return;
        }
        let skipped = &mut layout.skipped;
        layout.files.retain(|path, meta| {
            let shadowed = self.has_dir(path);
            if shadowed {
                skipped.push((meta.key.to_owned(), Unrepresentable::FileAndDirectory));
            }
            !shadowed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectMeta;
    use std::time::SystemTime;

    fn part(keys: &[&str]) -> Listing {
        keys.iter()
            .map(|k| ObjectMeta {
                key: (*k).to_owned(),
                size: 3,
                etag: "e".into(),
                last_modified: SystemTime::UNIX_EPOCH,
            })
            .collect()
    }

    #[test]
    fn a_cover_is_the_directory_its_prefix_maps_to() {
        let under = Cover::Under("p/a/b/".into());
        assert_eq!(Scope::of("p/", &under), Some(Scope::Under("a/b")));
        let top = Cover::Direct("p/".into());
        assert_eq!(Scope::of("p/", &top), Some(Scope::Direct("")));
        let escaping = Cover::Under("p/../".into());
        assert_eq!(Scope::of("p/", &escaping), None);
    }

    #[test]
    fn a_scope_holds_what_its_part_lists() {
        let under = Scope::Under("a/b");
        assert!(under.holds("a/b", true) && under.holds("a/b/c", false));
        assert!(under.holds("a/b/c/d", true));
        // A file named as the directory is a key of the part above; a sibling is not in it.
        assert!(!under.holds("a/b", false) && !under.holds("a/bc", false));
        let direct = Scope::Direct("a");
        assert!(direct.holds("a/x", false) && direct.holds("a", true));
        assert!(!direct.holds("a/x", true) && !direct.holds("a/x/y", false));
        assert!(Scope::Direct("").holds("x", false) && !Scope::Direct("").holds("a/x", false));
        assert!(Scope::Under("").holds("any/thing", false));
    }

    #[test]
    fn what_is_left_out_stays_and_the_way_to_it_too() {
        let mut unchanged = Unchanged::default();
        assert!(!unchanged.holds("a", true));
        unchanged.add(Scope::Under("a/b"), &part(&["p/a/b/1", "p/a/b/c/2"]));
        unchanged.add(Scope::Direct("x"), &part(&["p/x/f"]));
        assert_eq!((unchanged.objects, unchanged.bytes), (3, 9));
        assert!(unchanged.holds("a/b", true) && unchanged.holds("a/b/c/2", false));
        assert!(unchanged.holds("x/f", false) && unchanged.holds("x", true));
        // Beside them, and the files of the directories on the way: the listing's.
        assert!(!unchanged.holds("a/c", false) && !unchanged.holds("a/f", false));
        assert!(!unchanged.holds("x/d", true) && !unchanged.holds("x/d/f", false));
        assert!(unchanged.leads_to("a") && unchanged.leads_to("x") && !unchanged.leads_to("a/c"));
        assert!(unchanged.has_dir("a/b") && unchanged.has_dir("a") && !unchanged.has_dir("x/f"));
    }
}
