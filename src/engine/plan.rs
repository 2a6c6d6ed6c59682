//! Pure planning: a remote listing and the manifest in, the work of one pass out. No I/O here;
//! what is on the local disk comes in through the `local` probe, so every case is unit-tested.
//!
//! Invariants of a [`Plan`]:
//! - only paths present in the manifest are ever in `delete` (the tool deletes only its own files);
//! - every path in `fetch` or `dirs` comes from [`crate::paths::map_key`], so it stays inside the mount;
//! - no path is both a file and a directory: such keys go to `skipped`.

use crate::local::Local;
use crate::local::manifest::Entry;
use crate::paths::{Layout, Unrepresentable, layout};
use crate::store::ObjectMeta;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub path: String,
    pub meta: ObjectMeta,
    /// The path already holds an older version the tool downloaded.
    pub update: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub path: String,
    pub dir: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub listed: usize,
    pub unchanged: usize,
    /// Directories from folder markers, with the key they came from.
    pub dirs: Vec<(String, ObjectMeta)>,
    pub fetch: Vec<Fetch>,
    /// Deepest paths first, so directories empty before they are removed.
    pub delete: Vec<Delete>,
    pub skipped: Vec<(String, Unrepresentable)>,
}

pub fn plan(
    prefix: &str,
    remote: &[ObjectMeta],
    manifest: &BTreeMap<String, Entry>,
    local: impl Fn(&str) -> Local,
) -> Plan {
    let mut out = Plan {
        listed: remote.len(),
        ..Plan::default()
    };
    let Layout {
        files,
        dirs,
        implied_dirs,
        skipped,
    } = layout(prefix, remote);
    out.skipped = skipped;

    for (path, entry) in manifest {
        let wanted = if entry.dir {
            dirs.contains_key(path) || implied_dirs.contains(path)
        } else {
            files.contains_key(path)
        };
        if !wanted {
            out.delete.push(Delete {
                path: path.clone(),
                dir: entry.dir,
            });
        }
    }
    // Children before parents: a longer path is never an ancestor of a shorter one.
    out.delete
        .sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.path.cmp(&b.path)));

    for (path, meta) in dirs {
        out.dirs.push((path, meta.clone()));
    }
    for (path, meta) in files {
        let have = manifest.get(&path).filter(|e| !e.dir);
        let on_disk = local(&path);
        match (have, on_disk) {
            (Some(e), Local::File { size }) if e.etag == meta.etag && size == meta.size => {
                out.unchanged += 1;
            }
            (Some(_), Local::File { .. }) => out.fetch.push(Fetch {
                path,
                meta: meta.clone(),
                update: true,
            }),
            _ => out.fetch.push(Fetch {
                path,
                meta: meta.clone(),
                update: false,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn obj(key: &str, etag: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: etag.into(),
            last_modified: SystemTime::UNIX_EPOCH,
        }
    }

    fn entry(key: &str, etag: &str, size: u64) -> Entry {
        Entry {
            key: key.into(),
            etag: etag.into(),
            size,
            mtime: 0,
            dir: false,
        }
    }

    fn fetched(p: &Plan) -> Vec<(&str, bool)> {
        p.fetch
            .iter()
            .map(|f| (f.path.as_str(), f.update))
            .collect()
    }

    #[test]
    fn first_run_fetches_everything_under_the_prefix() {
        let remote = [obj("p/a", "1", 1), obj("p/d/b", "2", 2), obj("p/", "0", 0)];
        let p = plan("p/", &remote, &BTreeMap::new(), |_| Local::Missing);
        assert_eq!(fetched(&p), [("a", false), ("d/b", false)]);
        assert!(p.delete.is_empty());
        assert_eq!(p.listed, 3);
    }

    #[test]
    fn unchanged_objects_are_not_fetched_again() {
        let remote = [obj("a", "1", 5)];
        let manifest = BTreeMap::from([("a".to_string(), entry("a", "1", 5))]);
        let p = plan("", &remote, &manifest, |_| Local::File { size: 5 });
        assert!(p.fetch.is_empty());
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn changed_etag_or_missing_local_file_fetches_again() {
        let remote = [obj("a", "2", 5), obj("b", "1", 5)];
        let manifest = BTreeMap::from([
            ("a".to_string(), entry("a", "1", 5)),
            ("b".to_string(), entry("b", "1", 5)),
        ]);
        let p = plan("", &remote, &manifest, |path| match path {
            "a" => Local::File { size: 5 },
            _ => Local::Missing,
        });
        assert_eq!(fetched(&p), [("a", true), ("b", false)]);
    }

    #[test]
    fn deletes_only_what_the_manifest_holds() {
        let manifest = BTreeMap::from([
            ("gone".to_string(), entry("gone", "1", 1)),
            ("d/gone".to_string(), entry("d/gone", "1", 1)),
        ]);
        let p = plan("", &[], &manifest, |_| Local::File { size: 1 });
        let deleted: Vec<_> = p.delete.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(deleted, ["d/gone", "gone"]);
    }

    #[test]
    fn a_key_that_is_both_file_and_prefix_is_skipped() {
        let remote = [
            obj("a", "1", 1),
            obj("a/b", "2", 1),
            obj("c", "3", 1),
            obj("c/", "4", 0),
        ];
        let p = plan("", &remote, &BTreeMap::new(), |_| Local::Missing);
        assert_eq!(fetched(&p), [("a/b", false)]);
        let skipped: Vec<_> = p.skipped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(skipped, ["a", "c"]);
        assert_eq!(p.dirs.len(), 1);
    }

    #[test]
    fn dangerous_keys_are_skipped_not_mapped() {
        let remote = [
            obj("../x", "1", 1),
            obj("a/../../x", "1", 1),
            obj("/abs", "1", 1),
        ];
        let p = plan("", &remote, &BTreeMap::new(), |_| Local::Missing);
        assert!(p.fetch.is_empty());
        assert_eq!(p.skipped.len(), 3);
    }

    #[test]
    fn a_folder_marker_dir_is_kept_while_files_imply_it() {
        let mut dir = entry("d/", "0", 0);
        dir.dir = true;
        let manifest = BTreeMap::from([("d".to_string(), dir)]);
        let p = plan("", &[obj("d/x", "1", 1)], &manifest, |_| Local::Missing);
        assert!(p.delete.is_empty());
        let p = plan("", &[], &manifest, |_| Local::Missing);
        assert_eq!(
            p.delete,
            [Delete {
                path: "d".into(),
                dir: true
            }]
        );
    }
}
