//! Mapping S3 keys to relative local paths, the one place that decides what may be written where.
//!
//! A mapped path is a `/`-joined list of plain components: never empty, never `.` or `..`, no NUL,
//! each at most 255 bytes. Anything else is refused with a reason, so no key can escape the mount
//! directory. The mapping is injective: two keys never map to the same path. [`layout`] maps a
//! whole listing, the one layout both `sync` (on disk) and `mount` (in the file system) use.

use crate::store::ObjectMeta;
use std::collections::{BTreeMap, BTreeSet};

/// Where a key lands under the mount directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A regular file at this relative path.
    File(String),
    /// A directory (the key ends in `/`: a folder marker).
    Dir(String),
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
pub fn map_key(prefix: &str, key: &str) -> Result<Mapped, Unrepresentable> {
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
    let rel = body.to_owned();
    Ok(if is_dir {
        Mapped::Dir(rel)
    } else {
        Mapped::File(rel)
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
/// directories, and which keys cannot be represented.
#[derive(Debug, Default)]
pub struct Layout<'a> {
    pub files: BTreeMap<String, &'a ObjectMeta>,
    /// Directories from folder markers.
    pub dirs: BTreeMap<String, &'a ObjectMeta>,
    /// Directories that exist because something is below them.
    pub implied_dirs: BTreeSet<String>,
    pub skipped: Vec<(String, Unrepresentable)>,
}

pub fn layout<'a>(prefix: &str, remote: &'a [ObjectMeta]) -> Layout<'a> {
    let mut out = Layout::default();
    for meta in remote {
        match map_key(prefix, &meta.key) {
            Ok(Mapped::File(path)) => {
                out.files.insert(path, meta);
            }
            Ok(Mapped::Dir(path)) => {
                out.dirs.insert(path, meta);
            }
            Ok(Mapped::Root) => {}
            Err(reason) => out.skipped.push((meta.key.clone(), reason)),
        }
    }
    out.implied_dirs = out
        .files
        .keys()
        .chain(out.dirs.keys())
        .flat_map(|p| ancestors(p).map(str::to_owned))
        .collect();
    let conflicts: Vec<String> = out
        .files
        .keys()
        .filter(|p| out.dirs.contains_key(*p) || out.implied_dirs.contains(*p))
        .cloned()
        .collect();
    for path in conflicts {
        let meta = out.files.remove(&path).expect("conflict is a file");
        out.skipped
            .push((meta.key.clone(), Unrepresentable::FileAndDirectory));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_plain_keys() {
        assert_eq!(
            map_key("p/", "p/a/b.txt"),
            Ok(Mapped::File("a/b.txt".into()))
        );
        assert_eq!(map_key("p/", "p/a/"), Ok(Mapped::Dir("a".into())));
        assert_eq!(map_key("p/", "p/"), Ok(Mapped::Root));
        assert_eq!(
            map_key("", "with space/ü.csv"),
            Ok(Mapped::File("with space/ü.csv".into()))
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
        assert_eq!(
            map_key("", &"x".repeat(255)),
            Ok(Mapped::File("x".repeat(255)))
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
