//! Pure planning: a remote listing and the manifest in, the work of one pass out. No I/O here;
//! what is on the local disk comes in through the `local` probe, so every case is unit-tested.
//!
//! Invariants of a [`Plan`]:
//! - only paths present in the manifest are ever in `delete` (the tool deletes only its own files);
//! - every path in `fetch` or `dirs` comes from [`crate::paths::map_key`], so it stays inside the mount;
//! - no path is both a file and a directory: such keys go to `skipped`.

use crate::etag::Etag;
use crate::local::Local;
use crate::local::dirs::Found;
use crate::local::manifest::{Entries, Entry, Stamp};
use crate::paths::{Layout, Mapped, Unrepresentable, key_of, layout, map_key};
use crate::store::{Listing, ObjectMeta, ObjectRef};
use crate::unchanged::{Scope, Unchanged};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub meta: ObjectMeta,
    /// Where the path starts in the key (see [`Fetch::path`]).
    path_at: u32,
    /// The path already holds an older version the tool downloaded.
    pub update: bool,
    /// The version the manifest records at the path as this is planned: the download is
    /// kept out of a writeable copy where anything else is recorded by the time it ends.
    /// Boxed: most downloads have none, and a first pass has a row for every object.
    pub base: Option<Box<Etag>>,
}

impl Fetch {
    /// The download of `meta` to `path`, a file's path, which ends its key (the key less the
    /// mount's prefix, [`crate::paths::map_key`]): kept as a place in the key, not a string of
    /// its own, since a first pass plans a download for every object. `None` where `path`
    /// does not end the key: a folder marker's (`dir/`), a directory, not a file to download.
    pub fn new(path: &str, meta: ObjectMeta, update: bool, base: Option<Etag>) -> Option<Self> {
        let path_at = meta.key.strip_suffix(path)?.len();
        Some(Self {
            path_at: u32::try_from(path_at).expect("a key shorter than 4 GiB"),
            meta,
            update,
            base: base.map(Box::new),
        })
    }

    /// The path the object downloads to.
    pub fn path(&self) -> &str {
        &self.meta.key[self.path_at as usize..]
    }
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

/// Whether the listed `meta` is the folder marker the manifest's `entry` recorded, as a server
/// that keeps directories rather than objects lists it: an empty object without the trailing
/// slash (`rclone serve s3`). It stays the directory it was.
pub fn own_marker(entry: &Entry, meta: ObjectRef<'_>) -> bool {
    entry.dir && meta.size == 0 && entry.etag == *meta.etag
}

/// The plan of a pass over `remote`, a listing of the mount's `prefix`: what to download,
/// delete and leave. It takes the listing, whose objects become the downloads: a first pass
/// plans a download for every object, and a copy of each beside the listing would double
/// what the pass holds.
pub fn plan(
    prefix: &str,
    remote: Listing,
    manifest: &Entries,
    local: impl Fn(&str) -> Local,
) -> Plan {
    plan_with(prefix, remote, &Unchanged::default(), manifest, local)
}

/// [`plan`] of a listing that `unchanged`'s parts were left out of: what they cover stays as
/// the manifest has it.
pub fn plan_with(
    prefix: &str,
    remote: Listing,
    unchanged: &Unchanged,
    manifest: &Entries,
    local: impl Fn(&str) -> Local,
) -> Plan {
    let left_out = usize::try_from(unchanged.objects).expect("objects in memory");
    let mut out = Plan {
        listed: remote.len() + left_out,
        unchanged: left_out,
        ..Plan::default()
    };
    let mut picks = Vec::new();
    {
        let mut layout = layout(prefix, &remote);
        unchanged.shadow(&mut layout);
        let Layout {
            files,
            dirs,
            implied_dirs,
            skipped,
        } = layout;
        out.skipped = skipped;

        for (path, entry) in manifest {
            let listed_dir = dirs.contains_key(path) || implied_dirs.contains(path);
            let wanted = if entry.dir {
                listed_dir
                    || files.get(path).is_some_and(|m| own_marker(entry, m))
                    || unchanged.holds(path, true)
                    || unchanged.leads_to(path)
            } else {
                files.contains_key(path) || (unchanged.holds(path, false) && !listed_dir)
            };
            if !wanted {
                out.delete.push(Delete {
                    path: path.to_owned(),
                    dir: entry.dir,
                });
            }
        }
        // Children before parents: a longer path is never an ancestor of a shorter one.
        out.delete
            .sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.path.cmp(&b.path)));

        for (path, meta) in dirs.iter() {
            out.dirs.push((path.to_owned(), meta.to_meta()));
        }
        for (at, path, meta) in files.indexed() {
            let recorded = manifest.get(path);
            if recorded.is_some_and(|e| own_marker(e, meta)) {
                out.unchanged += 1;
                continue;
            }
            let have = recorded.filter(|e| !e.dir);
            let on_disk = local(path);
            match (have, on_disk) {
                // The recorded version is the listed one, and the file on disk has its size:
                // the same rule as `MountCopy::holds`, which a mount's open follows.
                (Some(e), Local::File { size })
                    if e.etag == *meta.etag && e.size == meta.size && size == meta.size =>
                {
                    out.unchanged += 1;
                }
                (have, _) => picks.push(Pick {
                    at: u32::try_from(at).expect("fewer than 2^32 objects"),
                    path_len: u16::try_from(path.len()).expect("a path within a key"),
                    update: have.is_some() && matches!(on_disk, Local::File { .. }),
                    base: recorded.map(|e| e.etag.clone()),
                }),
            }
        }
    }
    out.fetch = take_picked(remote, picks);
    out
}

/// Whether `part`, a part of a listing of the mount's `prefix` whose scope is `scope`, shows
/// exactly what `manifest` records there, each file whole on the disk (`local`): a plan of it
/// would download, make and delete nothing, so a refresh may leave it out
/// ([`crate::unchanged`]).
pub fn part_unchanged(
    prefix: &str,
    scope: Scope<'_>,
    part: &Listing,
    manifest: &Entries,
    local: impl Fn(&str) -> Local,
) -> bool {
    let mut recorded = 0;
    for object in part.iter() {
        let same = match map_key(prefix, object.key) {
            Ok(Mapped::File(path)) => {
                let same = |e: &Entry| {
                    !e.dir && !e.replaced && e.etag == *object.etag && e.size == object.size
                };
                manifest.get(path).is_some_and(same)
                    && matches!(local(path), Local::File { size } if size == object.size)
            }
            Ok(Mapped::Dir(path)) => manifest
                .get(path)
                .is_some_and(|e| e.dir && e.etag == *object.etag),
            Ok(Mapped::Root) => continue,
            Err(_) => false,
        };
        if !same {
            return false;
        }
        recorded += 1;
    }
    recorded == records_in(manifest, scope)
}

/// The number of entries `manifest` holds in `scope`.
fn records_in(manifest: &Entries, scope: Scope<'_>) -> usize {
    let dir = scope.dir();
    let own = !dir.is_empty() && manifest.get(dir).is_some_and(|e| e.dir);
    let below = match dir {
        "" => String::new(),
        dir => format!("{dir}/"),
    };
    let under = manifest
        .iter_from(&below)
        .take_while(|(path, _)| path.starts_with(&below))
        .filter(|(path, e)| scope.holds(path, e.dir))
        .count();
    usize::from(own) + under
}

/// A download [`plan`] decided on, before it takes its object from the listing.
struct Pick {
    /// The object's place in the listing.
    at: u32,
    /// The length of its path, which ends its key (keys are at most 1,024 bytes).
    path_len: u16,
    update: bool,
    base: Option<Etag>,
}

/// The downloads `picks` (in the listing's order), their objects moved out of `remote`. Both
/// tables are taken from their ends and give back their room as they go, so the three
/// together are never much more than the largest.
fn take_picked(mut remote: Listing, mut picks: Vec<Pick>) -> Vec<Fetch> {
    picks.sort_unstable_by_key(|p| p.at);
    let mut out = Vec::with_capacity(picks.len());
    while let Some(pick) = picks.pop() {
        remote.truncate(pick.at as usize + 1);
        let meta = remote.pop().expect("picked from the listing");
        remote.give_back();
        crate::tables::give_back(&mut picks);
        let path_at = meta.key.len() - usize::from(pick.path_len);
        out.push(Fetch {
            path_at: u32::try_from(path_at).expect("a key shorter than 4 GiB"),
            meta,
            update: pick.update,
            base: pick.base.map(Box::new),
        });
    }
    out.reverse();
    out
}

/// A local file (or empty directory) to upload: new (`base` is `None`), or changed since the
/// tool wrote or uploaded the version `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub path: String,
    pub key: String,
    pub base: Option<String>,
    /// The file as found; `None` for an empty directory (its folder marker).
    pub stamp: Option<Stamp>,
    /// The file was renamed from there (see [`local_writes`]): its object is copied within the
    /// bucket instead of uploaded, then deleted under the old key.
    pub from: Option<RenamedFrom>,
}

/// Where a renamed local file was: its old path, and the object the manifest's entry there was
/// made from, which holds the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenamedFrom {
    pub path: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
}

impl RenamedFrom {
    fn of(prefix: &str, path: &str, entry: &Entry) -> Self {
        Self {
            path: path.to_owned(),
            key: key_of(prefix, path, entry.dir),
            etag: entry.etag.to_string(),
            size: entry.size,
        }
    }

    /// The delete of the old key, once the copy is made.
    pub fn delete(&self) -> RemoteDelete {
        RemoteDelete {
            path: self.path.clone(),
            key: self.key.clone(),
            etag: self.etag.clone(),
        }
    }
}

/// An object whose local file was deleted: it is deleted too, if it is still the version `etag`
/// the local file was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDelete {
    pub path: String,
    pub key: String,
    pub etag: String,
}

impl RemoteDelete {
    /// The delete of the object the manifest's entry `entry` at `path` was made from.
    pub fn of(prefix: &str, path: &str, entry: &Entry) -> Self {
        Self {
            path: path.to_owned(),
            key: key_of(prefix, path, entry.dir),
            etag: entry.etag.to_string(),
        }
    }
}

/// The work of a pass over a writeable mount: [`plan`]'s, less what would overwrite or delete
/// a local change, plus the uploads and remote deletes of the local changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WritePlan {
    pub plan: Plan,
    pub upload: Vec<Upload>,
    pub remote_delete: Vec<RemoteDelete>,
    /// Local changes left for a later pass: written too recently (see `settled`).
    pub settling: usize,
    /// The manifest lists files but the mount's directory holds none: the local copy is gone
    /// (a wiped or unmounted disk), not emptied file by file, so nothing is deleted remotely.
    pub copy_gone: bool,
}

/// The local changes of a writeable mount, as uploads: files the manifest does not have or
/// whose stamp differs from their entry's (based on the entry's version), and new empty
/// directories. Deleted files are not among them (see [`plan_writeable`]).
pub fn local_changes(
    prefix: &str,
    manifest: &Entries,
    scan: &BTreeMap<String, Found>,
) -> Vec<Upload> {
    let mut out = Vec::new();
    for (path, found) in scan {
        let (base, stamp) = match (found, manifest.get(path)) {
            (Found::File(stamp), Some(e)) if !e.dir => {
                if !e.changed_locally(stamp) {
                    continue;
                }
                (Some(e.etag.to_string()), Some(*stamp))
            }
            (Found::File(stamp), _) => (None, Some(*stamp)),
            (Found::Dir { empty: true }, None) => (None, None),
            (Found::Dir { .. }, _) => continue,
        };
        out.push(Upload {
            path: path.clone(),
            key: key_of(prefix, path, stamp.is_none()),
            base,
            stamp,
            from: None,
        });
    }
    out
}

/// The files the manifest lists that a walk did not find: deleted locally; and the folder
/// markers of directories deleted, or of those the tool made markers for that now hold
/// something ([`Entry::marker_made`]).
pub fn local_deletions<'a>(
    manifest: &'a Entries,
    scan: &'a BTreeMap<String, Found>,
) -> impl Iterator<Item = (&'a str, &'a Entry)> {
    manifest
        .iter()
        .filter(|(path, e)| match (e.dir, scan.get(*path)) {
            (true, None) => true,
            (true, Some(Found::Dir { empty })) => e.marker_made && !empty,
            (true, Some(Found::File(_))) => false,
            (false, found) => !matches!(found, Some(Found::File(_))),
        })
}

/// Whether the manifest lists files and the walk found none: the local copy is gone as a whole
/// (a wiped or unmounted disk), which is no reason to delete anything remotely.
pub fn copy_gone(manifest: &Entries, scan: &BTreeMap<String, Found>) -> bool {
    manifest.values().any(Entry::claims_file) && !scan.values().any(|f| matches!(f, Found::File(_)))
}

/// The local writes of a writeable mount: its changes as uploads and its deletions as remote
/// deletes, with renamed files paired up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LocalWrites {
    pub upload: Vec<Upload>,
    pub remote_delete: Vec<RemoteDelete>,
}

/// The uploads of [`local_changes`] and the deletes of the [`local_deletions`] that
/// `deletable` allows, none when the copy is gone ([`copy_gone`]; only a walk of the whole
/// copy, `whole`, can tell). A new local file (no file
/// entry at its path, or the entry of another inode) whose inode, size and mtime are those
/// the stamp of a deleted file's entry recorded is that file, renamed (`mv` keeps all three;
/// the ctime it changes is not compared): its upload names the old entry (`from`), and the
/// old key gets no delete of its own, since the copy must be made from it first (see
/// `Uploader::upload`). A deleted file is paired once, and not at all when two deleted files
/// share these three (hard links); an entry without a stamp, or whose delete `deletable`
/// refuses, pairs with nothing. The plan of a pass and the flush of a stopping run both pair
/// here, so that they cannot disagree.
pub fn local_writes(
    prefix: &str,
    manifest: &Entries,
    scan: &BTreeMap<String, Found>,
    whole: bool,
    deletable: impl Fn(&str, &Entry) -> bool,
) -> LocalWrites {
    let mut upload = local_changes(prefix, manifest, scan);
    if whole && copy_gone(manifest, scan) {
        return LocalWrites {
            upload,
            remote_delete: Vec::new(),
        };
    }
    let deleted: Vec<(&str, &Entry)> = local_deletions(manifest, scan)
        .filter(|(path, e)| deletable(path, e))
        .collect();
    pair_renames(prefix, manifest, &deleted, &mut upload);
    let paired: BTreeSet<&str> = upload
        .iter()
        .filter_map(|u| u.from.as_ref().map(|f| f.path.as_str()))
        .collect();
    let remote_delete = deleted
        .into_iter()
        .filter(|(path, _)| !paired.contains(path))
        .map(|(path, e)| RemoteDelete::of(prefix, path, e))
        .collect();
    LocalWrites {
        upload,
        remote_delete,
    }
}

/// Sets `from` on each upload of a file renamed from one of `deleted` (see [`local_writes`]).
fn pair_renames(
    prefix: &str,
    manifest: &Entries,
    deleted: &[(&str, &Entry)],
    uploads: &mut [Upload],
) {
    // What a rename keeps of a file; `None` once taken, or when two deleted files share it.
    let kept = |s: &Stamp| (s.ino.get(), s.size, s.mtime_ns);
    let mut sources: BTreeMap<(u64, u64, i64), Option<RenamedFrom>> = BTreeMap::new();
    for (path, e) in deleted {
        let Some(stamp) = e.local.filter(|s| !e.dir && s.size == e.size) else {
            continue;
        };
        sources
            .entry(kept(&stamp))
            .and_modify(|shared| *shared = None)
            .or_insert_with(|| Some(RenamedFrom::of(prefix, path, e)));
    }
    if sources.is_empty() {
        return;
    }
    for up in uploads {
        let Some(stamp) = up.stamp else { continue };
        let same_file = manifest
            .get(&up.path)
            .and_then(|e| e.local)
            .is_some_and(|s| s.ino == stamp.ino);
        if !same_file {
            up.from = sources.get_mut(&kept(&stamp)).and_then(Option::take);
        }
    }
}

/// [`plan`] for a writeable mount, given a walk of its directory (`scan`). A file is a local
/// change when the manifest has no file there, or its stamp differs from the entry's; a file
/// the manifest lists and the walk does not find was deleted locally. A change is uploaded once
/// `settled` says it has been quiet long enough; until then it is neither uploaded nor touched.
/// An object whose local file was deleted is deleted only if the listing still shows the version
/// the file was; a newer version is downloaded instead (a delete that conflicts deletes
/// nothing). A deleted file found under another path was renamed ([`local_writes`]), when
/// the listing still shows its version: the new path is a copy of its object, which is then
/// deleted; the old path is neither downloaded again nor deleted while the new file settles.
pub fn plan_writeable(
    prefix: &str,
    remote: Listing,
    manifest: &Entries,
    scan: &BTreeMap<String, Found>,
    settled: impl Fn(&Stamp) -> bool,
) -> WritePlan {
    let probe = |path: &str| match scan.get(path) {
        Some(Found::File(stamp)) => Local::File { size: stamp.size },
        Some(Found::Dir { .. }) => Local::Other,
        None => Local::Missing,
    };
    let writes = {
        let listed: BTreeMap<&str, ObjectRef> = remote.iter().map(|m| (m.key, m)).collect();
        let listed_as_was = |path: &str, e: &Entry| {
            let key = key_of(prefix, path, e.dir);
            listed.get(key.as_str()).is_some_and(|m| *m.etag == e.etag)
        };
        local_writes(prefix, manifest, scan, true, listed_as_was)
    };
    let mut out = WritePlan {
        plan: plan(prefix, remote, manifest, probe),
        copy_gone: copy_gone(manifest, scan),
        ..WritePlan::default()
    };

    // Local changes: kept from the download side, uploaded once settled. The old path of a
    // rename is neither downloaded again nor deleted on its own: its object goes after the
    // copy, or waits with the new file while that settles.
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    for change in writes.upload {
        changed.insert(change.path.clone());
        deleted.extend(change.from.as_ref().map(|f| f.path.clone()));
        if change.stamp.as_ref().is_some_and(|s| !settled(s)) {
            out.settling += 1;
            continue;
        }
        out.upload.push(change);
    }

    // Local deletions: the object goes too, if it is still the version the file was.
    deleted.extend(writes.remote_delete.iter().map(|d| d.path.clone()));
    out.remote_delete = writes.remote_delete;

    let plan = &mut out.plan;
    plan.fetch
        .retain(|f| !changed.contains(f.path()) && !deleted.contains(f.path()));
    plan.delete.retain(|d| !changed.contains(d.path.as_str()));
    plan.dirs
        .retain(|(path, _)| !deleted.contains(path.as_str()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::manifest::inode;
    use std::time::SystemTime;

    fn obj(key: &str, etag: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: etag.into(),
            last_modified: SystemTime::UNIX_EPOCH,
        }
    }

    fn entry(etag: &str, size: u64) -> Entry {
        Entry::new(etag.into(), size, 0)
    }

    fn fetched(p: &Plan) -> Vec<(&str, bool)> {
        p.fetch.iter().map(|f| (f.path(), f.update)).collect()
    }

    #[test]
    fn a_folder_marker_the_tool_made_goes_once_its_directory_holds_something() {
        let folder = |made| Entry {
            dir: true,
            marker_made: made,
            ..entry("m", 0)
        };
        let scan = |empty| BTreeMap::from([("d".to_string(), Found::Dir { empty })]);
        let deleted = |e: Entry, empty| {
            let manifest = Entries::from([("d".to_string(), e)]);
            local_deletions(&manifest, &scan(empty)).count()
        };
        assert_eq!(
            deleted(folder(true), false),
            1,
            "made here, now holding files"
        );
        assert_eq!(deleted(folder(true), true), 0, "made here, still empty");
        assert_eq!(
            deleted(folder(false), false),
            0,
            "someone else's marker stays"
        );
        let manifest = Entries::from([("d".to_string(), folder(false))]);
        assert_eq!(local_deletions(&manifest, &BTreeMap::new()).count(), 1);
    }

    #[test]
    fn a_download_keeps_its_path_as_the_end_of_its_key() {
        let f = Fetch::new("d/b", obj("p/d/b", "2", 2), false, None).expect("a file");
        assert_eq!(f.path(), "d/b");
        assert_eq!(f.meta.key, "p/d/b");
        // A folder marker is a directory, not a file to download at "d".
        assert_eq!(Fetch::new("d", obj("p/d/", "0", 0), false, None), None);
    }

    #[test]
    fn first_run_fetches_everything_under_the_prefix() {
        let remote = [obj("p/a", "1", 1), obj("p/d/b", "2", 2), obj("p/", "0", 0)];
        let p = plan("p/", remote.to_vec().into(), &Entries::new(), |_| {
            Local::Missing
        });
        assert_eq!(fetched(&p), [("a", false), ("d/b", false)]);
        assert!(p.delete.is_empty());
        assert_eq!(p.listed, 3);
    }

    /// The downloads take their objects out of the listing: each download is the listed
    /// object at its path, whatever lies between them (unchanged files, folder markers, keys
    /// skipped), and its base is the version recorded there.
    #[test]
    fn each_download_takes_the_listed_object_of_its_path() {
        let remote = vec![
            obj("p/a", "1", 1),
            obj("p/b", "2", 2),
            obj("p/c/", "0", 0),
            obj("p/c/d", "3", 3),
            obj("p/e//f", "4", 4),
            obj("p/g", "5", 5),
        ];
        let manifest = Entries::from([
            ("b".to_string(), entry("2", 2)),
            ("g".to_string(), entry("old", 5)),
        ]);
        let p = plan("p/", remote.clone().into(), &manifest, |path| match path {
            "b" | "g" => Local::File {
                size: path.len() as u64,
            },
            _ => Local::Missing,
        });
        let got: Vec<_> = p
            .fetch
            .iter()
            .map(|f| {
                (
                    f.path(),
                    &f.meta,
                    f.update,
                    f.base.as_ref().map(|e| e.to_string()),
                )
            })
            .collect();
        let listed = |i: usize| &remote[i];
        assert_eq!(
            got,
            [
                ("a", listed(0), false, None),
                // On disk with another size: downloaded again over it.
                ("b", listed(1), true, Some("2".into())),
                ("c/d", listed(3), false, None),
                ("g", listed(5), true, Some("old".into())),
            ]
        );
        assert_eq!(p.skipped.len(), 1, "p/e//f");
    }

    #[test]
    fn unchanged_objects_are_not_fetched_again() {
        let remote = [obj("a", "1", 5)];
        let manifest = Entries::from([("a".to_string(), entry("1", 5))]);
        let p = plan("", remote.to_vec().into(), &manifest, |_| Local::File {
            size: 5,
        });
        assert!(p.fetch.is_empty());
        assert_eq!(p.unchanged, 1);
    }

    /// Found by the model test: a recorded size other than the listed one (same ETag) is not
    /// the listed version, even when the file on disk has the listed size; a mount's open
    /// would not serve it either.
    #[test]
    fn a_recorded_size_other_than_the_listed_one_fetches_again() {
        let remote = [obj("a", "1", 5)];
        let manifest = Entries::from([("a".to_string(), entry("1", 6))]);
        let p = plan("", remote.to_vec().into(), &manifest, |_| Local::File {
            size: 5,
        });
        assert_eq!(fetched(&p), [("a", true)]);
        assert_eq!(p.unchanged, 0);
    }

    #[test]
    fn changed_etag_or_missing_local_file_fetches_again() {
        let remote = [obj("a", "2", 5), obj("b", "1", 5)];
        let manifest = Entries::from([
            ("a".to_string(), entry("1", 5)),
            ("b".to_string(), entry("1", 5)),
        ]);
        let p = plan("", remote.to_vec().into(), &manifest, |path| match path {
            "a" => Local::File { size: 5 },
            _ => Local::Missing,
        });
        assert_eq!(fetched(&p), [("a", true), ("b", false)]);
    }

    #[test]
    fn deletes_only_what_the_manifest_holds() {
        let manifest = Entries::from([
            ("gone".to_string(), entry("1", 1)),
            ("d/gone".to_string(), entry("1", 1)),
        ]);
        let p = plan("", Listing::new(), &manifest, |_| Local::File { size: 1 });
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
        let p = plan("", remote.to_vec().into(), &Entries::new(), |_| {
            Local::Missing
        });
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
        let p = plan("", remote.to_vec().into(), &Entries::new(), |_| {
            Local::Missing
        });
        assert!(p.fetch.is_empty());
        assert_eq!(p.skipped.len(), 3);
    }

    #[test]
    fn a_folder_marker_dir_is_kept_while_files_imply_it() {
        let mut dir = entry("0", 0);
        dir.dir = true;
        let manifest = Entries::from([("d".to_string(), dir)]);
        let p = plan("", vec![obj("d/x", "1", 1)].into(), &manifest, |_| {
            Local::Missing
        });
        assert!(p.delete.is_empty());
        let p = plan("", Listing::new(), &manifest, |_| Local::Missing);
        assert_eq!(
            p.delete,
            [Delete {
                path: "d".into(),
                dir: true
            }]
        );
    }

    mod writeable {
        use super::*;

        fn stamp(size: u64, changed_s: i64) -> Stamp {
            Stamp {
                size,
                mtime_ns: changed_s * 1_000_000_000,
                ctime_ns: changed_s * 1_000_000_000,
                ino: inode(7),
            }
        }

        /// The manifest entry of a file the tool wrote as `stamp(size, 1)`.
        fn written(etag: &str, size: u64) -> Entry {
            entry(etag, size).stamped(stamp(size, 1))
        }

        fn paths<T>(items: &[T], path: impl Fn(&T) -> &str) -> Vec<&str> {
            items.iter().map(path).collect()
        }

        #[test]
        fn changes_are_uploaded_and_never_overwritten_or_deleted() {
            let remote = [obj("p/same", "e1", 3), obj("p/edited", "e2", 3)];
            let manifest = Entries::from([
                ("same".to_owned(), written("e1", 3)),
                // Edited here, and changed remotely too (e1 -> e2): uploaded, not fetched.
                ("edited".to_owned(), written("e1", 3)),
                // Gone remotely, edited here: uploaded again, not deleted.
                ("kept".to_owned(), written("e1", 3)),
            ]);
            let scan = BTreeMap::from([
                ("same".to_owned(), Found::File(stamp(3, 1))),
                ("edited".to_owned(), Found::File(stamp(3, 2))),
                ("kept".to_owned(), Found::File(stamp(4, 2))),
                ("new".to_owned(), Found::File(stamp(1, 2))),
                ("d".to_owned(), Found::Dir { empty: true }),
            ]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |_| true);
            assert_eq!(
                w.upload,
                [
                    Upload {
                        path: "d".into(),
                        key: "p/d/".into(),
                        base: None,
                        stamp: None,
                        from: None
                    },
                    Upload {
                        path: "edited".into(),
                        key: "p/edited".into(),
                        base: Some("e1".into()),
                        stamp: Some(stamp(3, 2)),
                        from: None
                    },
                    Upload {
                        path: "kept".into(),
                        key: "p/kept".into(),
                        base: Some("e1".into()),
                        stamp: Some(stamp(4, 2)),
                        from: None
                    },
                    Upload {
                        path: "new".into(),
                        key: "p/new".into(),
                        base: None,
                        stamp: Some(stamp(1, 2)),
                        from: None
                    },
                ]
            );
            assert!(w.plan.fetch.is_empty(), "{:?}", w.plan.fetch);
            assert!(w.plan.delete.is_empty(), "{:?}", w.plan.delete);
            assert_eq!(w.plan.unchanged, 1);
        }

        #[test]
        fn a_change_not_yet_settled_waits_untouched() {
            let remote = [obj("p/f", "e2", 3)];
            let manifest = Entries::from([("f".to_owned(), written("e1", 3))]);
            let scan = BTreeMap::from([("f".to_owned(), Found::File(stamp(3, 9)))]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |s| {
                s.mtime_ns < 5
            });
            assert!(w.upload.is_empty() && w.plan.fetch.is_empty());
            assert_eq!(w.settling, 1);
        }

        #[test]
        fn a_deleted_file_deletes_its_object_only_at_the_same_version() {
            let remote = [
                obj("p/a", "e1", 3),
                obj("p/b", "e9", 3),
                obj("p/keep", "e1", 3),
            ];
            let manifest = Entries::from([
                ("a".to_owned(), written("e1", 3)),
                ("b".to_owned(), written("e1", 3)),
                ("gone".to_owned(), written("e1", 3)),
                ("keep".to_owned(), written("e1", 3)),
            ]);
            let scan = BTreeMap::from([("keep".to_owned(), Found::File(stamp(3, 1)))]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |_| true);
            assert_eq!(
                w.remote_delete,
                [RemoteDelete {
                    path: "a".into(),
                    key: "p/a".into(),
                    etag: "e1".into()
                }]
            );
            // b changed remotely: downloaded again instead; gone: only forgotten.
            assert_eq!(paths(&w.plan.fetch, |f| f.path()), ["b"]);
            assert_eq!(paths(&w.plan.delete, |d| &d.path), ["gone"]);
            assert!(w.upload.is_empty());
        }

        #[test]
        fn a_directory_holding_none_of_the_files_is_a_lost_copy_not_deletions() {
            let remote = [obj("p/a", "e1", 3)];
            let manifest = Entries::from([("a".to_owned(), written("e1", 3))]);
            let w = plan_writeable(
                "p/",
                remote.to_vec().into(),
                &manifest,
                &BTreeMap::new(),
                |_| true,
            );
            assert!(w.copy_gone);
            assert!(w.remote_delete.is_empty());
            assert_eq!(paths(&w.plan.fetch, |f| f.path()), ["a"]);
        }

        #[test]
        fn an_entry_without_a_stamp_compares_the_size_and_the_mtime_the_tool_set() {
            let old = Entry {
                mtime: 1,
                ..entry("e1", 3)
            };
            assert!(!old.changed_locally(&stamp(3, 1)));
            assert!(old.changed_locally(&stamp(3, 2)));
            assert!(old.changed_locally(&stamp(4, 1)));
            let new = written("e1", 3);
            // Same size and mtime, but a new inode (replaced by an editor's rename): changed.
            assert!(new.changed_locally(&Stamp {
                ino: inode(8),
                ..stamp(3, 1)
            }));
        }

        /// The stamp of the file of inode `ino` that `written_as` recorded, after a rename: the
        /// rename moved its ctime only.
        fn moved(ino: u64, size: u64) -> Stamp {
            Stamp {
                ino: inode(ino),
                ctime_ns: 9_000_000_000,
                ..stamp(size, 1)
            }
        }

        /// The manifest entry of a file of inode `ino` the tool wrote as `stamp(size, 1)`.
        fn written_as(etag: &str, size: u64, ino: u64) -> Entry {
            entry(etag, size).stamped(Stamp {
                ino: inode(ino),
                ..stamp(size, 1)
            })
        }

        fn renamed_from(path: &str, etag: &str, size: u64) -> Option<RenamedFrom> {
            Some(RenamedFrom {
                path: path.into(),
                key: format!("p/{path}"),
                etag: etag.into(),
                size,
            })
        }

        fn sources(w: &WritePlan) -> Vec<(&str, Option<&str>)> {
            w.upload
                .iter()
                .map(|u| (u.path.as_str(), u.from.as_ref().map(|f| f.path.as_str())))
                .collect()
        }

        #[test]
        fn a_renamed_file_is_a_copy_of_its_old_object_not_an_upload_and_a_delete() {
            let remote = [obj("p/a", "e1", 3), obj("p/keep", "e1", 3)];
            let manifest = Entries::from([
                ("a".to_owned(), written_as("e1", 3, 7)),
                ("keep".to_owned(), written_as("e1", 3, 8)),
            ]);
            let scan = BTreeMap::from([
                ("b".to_owned(), Found::File(moved(7, 3))),
                (
                    "keep".to_owned(),
                    Found::File(Stamp {
                        ino: inode(8),
                        ..stamp(3, 1)
                    }),
                ),
            ]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |_| true);
            assert_eq!(
                w.upload,
                [Upload {
                    path: "b".into(),
                    key: "p/b".into(),
                    base: None,
                    stamp: Some(moved(7, 3)),
                    from: renamed_from("a", "e1", 3),
                }]
            );
            // The old object goes after the copy, not as a delete of its own; nor is it
            // downloaded again.
            assert!(w.remote_delete.is_empty(), "{:?}", w.remote_delete);
            assert!(w.plan.fetch.is_empty(), "{:?}", w.plan.fetch);
            assert!(w.plan.delete.is_empty(), "{:?}", w.plan.delete);
        }

        #[test]
        fn a_rename_onto_a_file_of_the_tool_replaces_that_version() {
            let remote = [obj("p/a", "e1", 3), obj("p/b", "e2", 5)];
            let manifest = Entries::from([
                ("a".to_owned(), written_as("e1", 3, 7)),
                ("b".to_owned(), written_as("e2", 5, 8)),
            ]);
            let scan = BTreeMap::from([("b".to_owned(), Found::File(moved(7, 3)))]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |_| true);
            assert_eq!(w.upload.len(), 1);
            assert_eq!(w.upload[0].base.as_deref(), Some("e2"));
            assert_eq!(w.upload[0].from, renamed_from("a", "e1", 3));
            assert!(w.remote_delete.is_empty(), "{:?}", w.remote_delete);
        }

        #[test]
        fn a_rename_and_an_edit_are_an_upload_and_a_delete() {
            let remote = [obj("p/a", "e1", 3), obj("p/c", "e1", 3)];
            let manifest = Entries::from([
                ("a".to_owned(), written_as("e1", 3, 7)),
                ("c".to_owned(), written_as("e1", 3, 8)),
            ]);
            let scan = BTreeMap::from([
                // Renamed, then appended to.
                ("b".to_owned(), Found::File(moved(7, 4))),
                // Renamed, then rewritten at the same size.
                (
                    "d".to_owned(),
                    Found::File(Stamp {
                        mtime_ns: 9_000_000_000,
                        ..moved(8, 3)
                    }),
                ),
            ]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |_| true);
            assert_eq!(sources(&w), [("b", None), ("d", None)]);
            assert_eq!(paths(&w.remote_delete, |d| &d.path), ["a", "c"]);
        }

        #[test]
        fn a_renamed_directory_pairs_file_by_file() {
            let remote = [
                obj("p/d/x", "ex", 3),
                obj("p/d/y", "ey", 4),
                obj("p/d/sub/z", "ez", 5),
            ];
            let manifest = Entries::from([
                ("d/x".to_owned(), written_as("ex", 3, 7)),
                ("d/y".to_owned(), written_as("ey", 4, 8)),
                ("d/sub/z".to_owned(), written_as("ez", 5, 9)),
            ]);
            let scan = BTreeMap::from([
                ("e".to_owned(), Found::Dir { empty: false }),
                ("e/sub".to_owned(), Found::Dir { empty: false }),
                ("e/sub/z".to_owned(), Found::File(moved(9, 5))),
                ("e/x".to_owned(), Found::File(moved(7, 3))),
                ("e/y".to_owned(), Found::File(moved(8, 4))),
            ]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |_| true);
            assert_eq!(
                sources(&w),
                [
                    ("e/sub/z", Some("d/sub/z")),
                    ("e/x", Some("d/x")),
                    ("e/y", Some("d/y")),
                ]
            );
            assert_eq!(w.upload[1].from, renamed_from("d/x", "ex", 3));
            assert!(w.remote_delete.is_empty(), "{:?}", w.remote_delete);
            assert!(w.plan.fetch.is_empty(), "{:?}", w.plan.fetch);
        }

        #[test]
        fn an_entry_without_a_stamp_pairs_with_nothing() {
            let remote = [obj("p/a", "e1", 3)];
            // Written by an earlier version: no inode to recognise the file by.
            let manifest = Entries::from([("a".to_owned(), entry("e1", 3))]);
            let scan = BTreeMap::from([("b".to_owned(), Found::File(moved(7, 3)))]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |_| true);
            assert_eq!(sources(&w), [("b", None)]);
            assert_eq!(paths(&w.remote_delete, |d| &d.path), ["a"]);
        }

        #[test]
        fn a_rename_whose_old_object_changed_is_an_upload_and_a_download() {
            let remote = [obj("p/a", "e2", 3)];
            let manifest = Entries::from([("a".to_owned(), written_as("e1", 3, 7))]);
            let scan = BTreeMap::from([("b".to_owned(), Found::File(moved(7, 3)))]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |_| true);
            assert_eq!(sources(&w), [("b", None)]);
            assert!(w.remote_delete.is_empty(), "{:?}", w.remote_delete);
            assert_eq!(paths(&w.plan.fetch, |f| f.path()), ["a"]);
        }

        #[test]
        fn a_rename_not_yet_settled_leaves_its_old_object_alone() {
            let remote = [obj("p/a", "e1", 3)];
            let manifest = Entries::from([("a".to_owned(), written_as("e1", 3, 7))]);
            let scan = BTreeMap::from([("b".to_owned(), Found::File(moved(7, 3)))]);
            let w = plan_writeable("p/", remote.to_vec().into(), &manifest, &scan, |s| {
                s.ctime_ns < 5
            });
            assert_eq!(w.settling, 1);
            assert!(w.upload.is_empty() && w.remote_delete.is_empty());
            assert!(w.plan.fetch.is_empty(), "{:?}", w.plan.fetch);
        }

        #[test]
        fn a_file_linked_twice_is_paired_once() {
            let manifest = Entries::from([("a".to_owned(), written_as("e1", 3, 7))]);
            let scan = BTreeMap::from([
                ("b".to_owned(), Found::File(moved(7, 3))),
                ("c".to_owned(), Found::File(moved(7, 3))),
            ]);
            let w = local_writes("p/", &manifest, &scan, true, |_, _| true);
            let from: Vec<_> = w.upload.iter().map(|u| u.from.is_some()).collect();
            assert_eq!(from, [true, false]);
            assert!(w.remote_delete.is_empty());
        }

        /// Without a listing (a stopping run's flush) every deletion may be tried, so every
        /// rename pairs; the uploader's conditions guard them.
        #[test]
        fn the_flush_pairs_renames_as_the_pass_does() {
            let manifest = Entries::from([
                ("a".to_owned(), written_as("e1", 3, 7)),
                ("gone".to_owned(), written_as("e1", 3, 8)),
            ]);
            let scan = BTreeMap::from([("b".to_owned(), Found::File(moved(7, 3)))]);
            let w = local_writes("p/", &manifest, &scan, true, |_, _| true);
            assert_eq!(w.upload.len(), 1);
            assert_eq!(w.upload[0].from, renamed_from("a", "e1", 3));
            assert_eq!(paths(&w.remote_delete, |d| &d.path), ["gone"]);
        }
    }

    /// The planner against a reference model: the rules of a pass, said per path as plainly as
    /// possible, checked on random listings, manifests and local states.
    mod model {
        use super::*;
        use crate::paths::{Mapped, ancestors, map_key};
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        /// A path of one to three components from a small alphabet, so that paths meet: the
        /// same path as file and directory, a parent and its child.
        fn rel() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", ".."]), 1..=3)
                .prop_map(|c| c.join("/"))
        }

        fn local() -> impl Strategy<Value = Local> {
            prop_oneof![
                Just(Local::Missing),
                (0u64..3).prop_map(|size| Local::File { size }),
                Just(Local::Other),
            ]
        }

        #[derive(Debug)]
        struct Case {
            prefix: String,
            remote: Vec<ObjectMeta>,
            manifest: BTreeMap<String, Entry>,
            local: BTreeMap<String, Local>,
        }

        fn case() -> impl Strategy<Value = Case> {
            // A version: a folder marker (or a directory entry) or not, a size, an ETag.
            let version = || {
                (
                    any::<bool>(),
                    0u64..3,
                    prop::sample::select(vec!["e1", "e2"]),
                )
            };
            (
                prop::sample::select(vec!["", "p/"]),
                prop::collection::vec((rel(), version()), 0..12),
                prop::collection::vec((rel(), version()), 0..12),
                prop::collection::vec((rel(), local()), 0..12),
            )
                .prop_map(|(prefix, objects, entries, local)| {
                    let mut keys = BTreeSet::new();
                    let remote = objects
                        .into_iter()
                        .map(|(rel, (marker, size, etag))| {
                            let key = format!("{prefix}{rel}{}", if marker { "/" } else { "" });
                            obj(&key, etag, if marker { 0 } else { size })
                        })
                        // A listing names each key once.
                        .filter(|o| keys.insert(o.key.clone()))
                        .collect();
                    let manifest = entries
                        .into_iter()
                        .map(|(rel, (dir, size, etag))| {
                            let e = Entry {
                                dir,
                                ..entry(etag, size)
                            };
                            (rel, e)
                        })
                        .collect();
                    Case {
                        prefix: prefix.to_owned(),
                        remote,
                        manifest,
                        local: local.into_iter().collect(),
                    }
                })
        }

        /// What the pass should do, path by path.
        struct Expected {
            fetch: BTreeMap<String, bool>,
            delete: BTreeSet<(String, bool)>,
            dirs: BTreeSet<String>,
            unchanged: usize,
            skipped: BTreeSet<String>,
        }

        fn expected(c: &Case) -> Expected {
            let (mut files, mut dirs, mut skipped) =
                (BTreeMap::new(), BTreeMap::new(), BTreeSet::new());
            for o in &c.remote {
                match map_key(&c.prefix, &o.key) {
                    Ok(Mapped::File(p)) => drop(files.insert(p.to_owned(), o)),
                    Ok(Mapped::Dir(p)) => drop(dirs.insert(p.to_owned(), o)),
                    Ok(Mapped::Root) => {}
                    Err(_) => drop(skipped.insert(o.key.clone())),
                }
            }
            // Every directory on the way to a file or a folder marker exists.
            let mut all_dirs: BTreeSet<String> = dirs.keys().cloned().collect();
            for p in files.keys().chain(dirs.keys()) {
                all_dirs.extend(ancestors(p).map(str::to_owned));
            }
            // A path cannot be a file and a directory: the file is skipped.
            files.retain(|p, o| {
                let conflict = all_dirs.contains(p);
                if conflict {
                    skipped.insert(o.key.clone());
                }
                !conflict
            });
            let mut e = Expected {
                fetch: BTreeMap::new(),
                delete: BTreeSet::new(),
                dirs: dirs.keys().cloned().collect(),
                unchanged: 0,
                skipped,
            };
            // An empty file listed where the tool recorded a folder marker of the same ETag is
            // that marker, as a server keeping directories lists it: it stays a directory.
            let markers: BTreeSet<&String> = files
                .iter()
                .filter(|(p, o)| {
                    c.manifest
                        .get(*p)
                        .is_some_and(|m| m.dir && o.size == 0 && m.etag == o.etag)
                })
                .map(|(p, _)| p)
                .collect();
            // Only the tool's own entries are deleted, and only those no longer listed.
            for (p, entry) in &c.manifest {
                let listed = match entry.dir {
                    true => all_dirs.contains(p) || markers.contains(p),
                    false => files.contains_key(p),
                };
                if !listed {
                    e.delete.insert((p.clone(), entry.dir));
                }
            }
            for (p, o) in &files {
                if markers.contains(p) {
                    e.unchanged += 1;
                    continue;
                }
                let on_disk = c.local.get(p).copied().unwrap_or(Local::Missing);
                let ours = c.manifest.get(p).filter(|m| !m.dir);
                let same = ours.is_some_and(|m| m.etag == o.etag && m.size == o.size)
                    && on_disk == (Local::File { size: o.size });
                if same {
                    e.unchanged += 1;
                } else {
                    // An update replaces a file of the tool's own that is still there.
                    let update = ours.is_some() && matches!(on_disk, Local::File { .. });
                    e.fetch.insert(p.clone(), update);
                }
            }
            e
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn the_plan_is_what_the_rules_say(c in case()) {
                let manifest: Entries = c.manifest.iter().map(|(p, e)| (p, e.clone())).collect();
                let got = plan(&c.prefix, c.remote.clone().into(), &manifest, |p| {
                    c.local.get(p).copied().unwrap_or(Local::Missing)
                });
                let want = expected(&c);
                let fetch: BTreeMap<String, bool> =
                    got.fetch.iter().map(|f| (f.path().to_owned(), f.update)).collect();
                prop_assert_eq!(fetch.len(), got.fetch.len(), "a path fetched twice");
                prop_assert_eq!(fetch, want.fetch);
                let delete: BTreeSet<(String, bool)> =
                    got.delete.iter().map(|d| (d.path.clone(), d.dir)).collect();
                prop_assert_eq!(delete, want.delete);
                let dirs: BTreeSet<String> = got.dirs.iter().map(|(p, _)| p.clone()).collect();
                prop_assert_eq!(dirs, want.dirs);
                prop_assert_eq!(got.unchanged, want.unchanged);
                let skipped: BTreeSet<String> = got.skipped.iter().map(|(k, _)| k.clone()).collect();
                prop_assert_eq!(skipped, want.skipped);
                prop_assert_eq!(got.listed, c.remote.len());
                // Children before their parents, so that directories are empty when removed.
                for (i, d) in got.delete.iter().enumerate() {
                    for later in &got.delete[i + 1..] {
                        prop_assert!(
                            !later.path.starts_with(&format!("{}/", d.path)),
                            "{} is deleted after its parent {}", later.path, d.path
                        );
                    }
                }
            }
        }

        /// A manifest and a disk as a complete pass over `remote` leaves them.
        fn after_pass(prefix: &str, remote: &[ObjectMeta]) -> (Entries, BTreeMap<String, Local>) {
            let done = plan(prefix, remote.to_vec().into(), &Entries::new(), |_| {
                Local::Missing
            });
            let mut manifest = Entries::new();
            let mut local = BTreeMap::new();
            for f in &done.fetch {
                manifest.insert(f.path(), entry(&f.meta.etag.to_string(), f.meta.size));
                local.insert(f.path().to_owned(), Local::File { size: f.meta.size });
            }
            for (path, meta) in &done.dirs {
                let e = Entry {
                    dir: true,
                    ..entry(&meta.etag.to_string(), 0)
                };
                manifest.insert(path, e);
            }
            (manifest, local)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            /// A refresh that leaves out the parts of the new listing that a pass over the old
            /// one left as they are downloads and deletes what a plan of the whole listing does.
            #[test]
            fn leaving_out_unchanged_parts_plans_the_same_work(
                old in case(),
                new in case(),
                kept in prop::collection::vec(any::<bool>(), 12),
                added in 0..4usize,
            ) {
                let prefix = &old.prefix;
                let rebased = |c: &Case| -> Vec<ObjectMeta> {
                    c.remote.iter().map(|o| {
                        let rel = &o.key[c.prefix.len()..];
                        ObjectMeta { key: format!("{prefix}{rel}"), ..o.clone() }
                    }).collect()
                };
                let (manifest, local) = after_pass(prefix, &old.remote);
                let probe = |p: &str| local.get(p).copied().unwrap_or(Local::Missing);
                // The old listing, less some objects, with a few others (new or changed).
                let mut keys = BTreeSet::new();
                let remote: Listing = rebased(&new)
                    .into_iter()
                    .take(added)
                    .chain(old.remote.iter().zip(&kept).filter(|(_, k)| **k).map(|(o, _)| o.clone()))
                    .filter(|o| keys.insert(o.key.clone()))
                    .collect();
                let mut remote = remote;
                remote.sort();
                let whole = plan(prefix, remote.clone(), &manifest, probe);
                let (mut listing, mut unchanged) = (Listing::new(), Unchanged::default());
                for (cover, part) in crate::store::Cover::split(prefix, remote) {
                    let scope = Scope::of(prefix, &cover);
                    match scope.filter(|s| !part.is_empty() && part_unchanged(prefix, *s, &part, &manifest, probe)) {
                        Some(scope) => unchanged.add(scope, &part),
                        None => listing.append(&part),
                    }
                }
                listing.sort();
                let parted = plan_with(prefix, listing, &unchanged, &manifest, probe);
                let fetch = |p: &Plan| p.fetch.iter().map(|f| (f.path().to_owned(), f.update)).collect::<BTreeMap<_, _>>();
                prop_assert_eq!(fetch(&parted), fetch(&whole));
                let delete = |p: &Plan| p.delete.iter().map(|d| (d.path.clone(), d.dir)).collect::<BTreeSet<_>>();
                prop_assert_eq!(delete(&parted), delete(&whole));
                prop_assert_eq!(parted.listed, whole.listed);
            }
        }
    }
}
