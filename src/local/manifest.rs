//! The per-mount manifest: what the tool has put on disk (relative path -> ETag, size,
//! LastModified). It is the only licence to delete: a local file absent from it is never removed.
//!
//! Durability: a snapshot (`manifest.json`, replaced atomically by write + rename) plus an
//! append-only journal (`journal.jsonl`, one JSON line per completed file or deletion). A file
//! is renamed into place before its journal line is written, so after a crash the manifest never
//! claims a file that is not there. Loading replays the journal over the snapshot and ignores a
//! torn last line; [`Manifest::compact`] folds the journal into a new snapshot.

pub use super::entries::Entries;
use crate::etag::Etag;
use crate::store::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    // The S3 key the path came from is not kept: the mount's prefix and the path make it
    // (`paths::key_of`). Snapshots and journals of earlier versions have it; it is ignored.
    /// Kept compactly: a manifest holds one per object for as long as its mount runs.
    pub etag: Etag,
    pub size: u64,
    /// LastModified as seconds since the Unix epoch.
    pub mtime: i64,
    /// A directory from a folder marker, not a file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    /// The local file as the tool left it (absent in entries of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<Stamp>,
    /// The user deleted or replaced this version here through the file system (downloaded or
    /// not): no file of it is claimed, and a file there is the user's, made in its place. Its
    /// object is deleted, or overwritten on the condition that it is still this version; a
    /// download of it does not bring it back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replaced: bool,
    /// A folder marker this tool uploaded to keep an empty local directory: deleted once the
    /// directory holds something (it is not needed then, and servers that keep directories, as
    /// `rclone serve s3` does, store it as an empty file that refuses objects below it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub marker_made: bool,
}

/// What a local file looked like when the tool last wrote or uploaded it. A write, a truncate,
/// a replacement (a new inode) or a change of its metadata moves at least one of these, so a
/// file whose stamp differs from its entry's was changed since, whatever its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    /// Modification and status-change times, in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// The inode number ([`inode`]): never 0, so an entry's `Option<Stamp>` takes no room
    /// beside the stamp's own (an entry per object, for as long as a mount runs).
    #[serde(with = "inode_number")]
    pub ino: NonZeroU64,
}

/// Inode number `n` as a [`Stamp`] keeps it: 0, which no file has on the file systems Linux
/// serves (it means none), as the largest number.
pub fn inode(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap_or(NonZeroU64::MAX)
}

/// [`Stamp::ino`] as a number in snapshots and journals (0 read as [`inode`] reads it).
mod inode_number {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::num::NonZeroU64;

    pub fn serialize<S: Serializer>(ino: &NonZeroU64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(ino.get())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU64, D::Error> {
        u64::deserialize(d).map(super::inode)
    }
}

impl Stamp {
    pub fn of(m: &Metadata) -> Self {
        Self {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: inode(m.ino()),
        }
    }

    /// Whether the file has been left alone for `delay` at `now`. The status-change time says
    /// when it was last changed here (the kernel sets it at every write, truncate, rename or
    /// change of metadata); the modification time may be anything (`touch -d`, `cp -p`,
    /// `tar x`), and a time ahead of the clock would hold the file back forever.
    pub fn quiet_for(&self, delay: Duration, now: SystemTime) -> bool {
        let changed = match u64::try_from(self.ctime_ns) {
            Ok(ns) => SystemTime::UNIX_EPOCH + Duration::from_nanos(ns),
            Err(_) => SystemTime::UNIX_EPOCH,
        };
        now.duration_since(changed)
            .is_ok_and(|quiet| quiet >= delay)
    }
}

impl Entry {
    /// The entry of a file of version `etag`, `size` bytes, last modified at `mtime` (seconds
    /// since the Unix epoch), as downloaded.
    pub fn new(etag: Etag, size: u64, mtime: i64) -> Self {
        Self {
            etag,
            size,
            mtime,
            dir: false,
            local: None,
            replaced: false,
            marker_made: false,
        }
    }

    /// The entry of a file downloaded from `meta`.
    pub fn file(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.etag.clone(),
            meta.size,
            unix_seconds(meta.last_modified),
        )
    }

    /// The entry of the version `meta` the user deleted or replaced through the file system.
    pub fn replaced(meta: &ObjectMeta) -> Self {
        Self {
            replaced: true,
            ..Self::file(meta)
        }
    }

    /// Whether the entry claims a file of the tool's: not a folder marker, nor a version the
    /// user deleted or replaced before it was downloaded.
    pub fn claims_file(&self) -> bool {
        !self.dir && !self.replaced
    }

    /// This entry, with the local file as the tool left it.
    pub fn stamped(self, local: Stamp) -> Self {
        Self {
            local: Some(local),
            ..self
        }
    }

    /// Whether the local file, found as `now`, is not as the tool left it. An entry of an
    /// earlier version, without a stamp, compares the size and the mtime the tool set (the
    /// object's LastModified, to the second).
    pub fn changed_locally(&self, now: &Stamp) -> bool {
        if self.replaced {
            return true;
        }
        match &self.local {
            Some(then) => then != now,
            None => now.size != self.size || now.mtime_ns.div_euclid(1_000_000_000) != self.mtime,
        }
    }

    /// The entry of a directory made for the folder marker `meta`.
    pub fn folder(meta: &ObjectMeta) -> Self {
        Self {
            size: 0,
            dir: true,
            ..Self::file(meta)
        }
    }

    /// The object this entry was made from, as a listing would show it under `key`.
    pub fn object(&self, key: String) -> ObjectMeta {
        let secs = self.mtime;
        let last_modified = match u64::try_from(secs) {
            Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
            Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
        };
        ObjectMeta {
            key,
            size: self.size,
            etag: self.etag.clone(),
            last_modified,
        }
    }
}

/// Seconds since the Unix epoch, negative before it.
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The snapshot file. Written from the manifest's own maps (borrowed: a snapshot of a million
/// entries is not copied first), read into owned ones.
#[derive(Serialize, Deserialize)]
struct Snapshot<'a> {
    version: u32,
    /// When the bucket was listed for the last pass that completed, in seconds since the Unix
    /// epoch (absent in snapshots of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listed_at: Option<u64>,
    /// What was listed then (`s3://bucket/prefix`; absent in snapshots of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listed_from: Option<Cow<'a, str>>,
    entries: Cow<'a, Entries>,
    /// Multipart uploads started and not yet completed or aborted, by local path.
    #[serde(default, skip_serializing_if = "is_empty")]
    uploads: Cow<'a, BTreeMap<String, Multipart>>,
}

fn is_empty(uploads: &BTreeMap<String, Multipart>) -> bool {
    uploads.is_empty()
}

/// A multipart upload under way: recorded before it is started on the server (without an id),
/// and again once the server has named it, so that one a crash interrupts is found at the next
/// start and aborted (its parts cost storage until then), even one whose id never arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Multipart {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum JournalLine {
    Put {
        path: String,
        entry: Entry,
    },
    Del {
        path: String,
    },
    /// A pass listed `from` (`s3://bucket/prefix`) at `at` (seconds since the Unix epoch).
    Lst {
        at: u64,
        from: String,
    },
    /// A multipart upload of `path` started...
    Upl {
        path: String,
        upload: Multipart,
    },
    /// ... and ended (completed or aborted).
    Upd {
        path: String,
    },
}

/// A manifest as read from its files.
#[derive(Debug, Default)]
pub struct Read {
    pub entries: Entries,
    pub uploads: BTreeMap<String, Multipart>,
    pub listed_at: Option<u64>,
    pub listed_from: Option<String>,
    /// The bytes of the snapshot, and of the journal's whole lines.
    pub snapshot_bytes: u64,
    pub journal_bytes: u64,
    /// The journal ends in a torn line (a crash mid-append).
    pub torn: bool,
}

/// Replays the journal in `dir` over its snapshot.
fn read(dir: &Path) -> Result<Read, ManifestError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| ManifestError { path, source }
    };
    let snapshot_path = dir.join(SNAPSHOT);
    let mut out = match File::open(&snapshot_path) {
        Ok(f) => {
            let snapshot_bytes = f.metadata().map_err(err(&snapshot_path))?.len();
            // Read as it streams in: the text of a million entries is over a hundred megabytes.
            let snapshot =
                serde_json::from_reader::<_, Snapshot>(BufReader::with_capacity(1 << 16, f))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                    .map_err(err(&snapshot_path))?;
            Read {
                entries: snapshot.entries.into_owned(),
                uploads: snapshot.uploads.into_owned(),
                listed_at: snapshot.listed_at,
                listed_from: snapshot.listed_from.map(Cow::into_owned),
                snapshot_bytes,
                ..Read::default()
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Read::default(),
        Err(e) => return Err(err(&snapshot_path)(e)),
    };
    let journal_path = dir.join(JOURNAL);
    match File::open(&journal_path) {
        Ok(f) => {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(err(&journal_path))?;
                // A torn last line (crash mid-append) carries nothing that was promised.
                let parsed = serde_json::from_str::<JournalLine>(&line);
                if parsed.is_ok() {
                    out.journal_bytes += line.len() as u64 + 1;
                }
                match parsed {
                    Ok(JournalLine::Put { path, entry }) => {
                        out.entries.insert(&path, entry);
                    }
                    Ok(JournalLine::Del { path }) => {
                        out.entries.remove(&path);
                    }
                    Ok(JournalLine::Upl { path, upload }) => {
                        out.uploads.insert(path, upload);
                    }
                    Ok(JournalLine::Upd { path }) => {
                        out.uploads.remove(&path);
                    }
                    Ok(JournalLine::Lst { at, from }) => {
                        out.listed_at = Some(at);
                        out.listed_from = Some(from);
                    }
                    Err(_) => {
                        out.torn = true;
                        break;
                    }
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(&journal_path)(e)),
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
#[error("manifest {}: {source}", path.display())]
pub struct ManifestError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

pub struct Manifest {
    dir: PathBuf,
    entries: Entries,
    uploads: BTreeMap<String, Multipart>,
    listed_at: Option<u64>,
    listed_from: Option<String>,
    journal: File,
    /// The bytes of the snapshot and of the journal: the journal is folded into a new
    /// snapshot once it has grown past a quarter of it ([`Manifest::compact_if_grown`]).
    snapshot_bytes: u64,
    journal_bytes: u64,
}

const SNAPSHOT: &str = "manifest.json";
const JOURNAL: &str = "journal.jsonl";

impl Manifest {
    /// Opens (or creates) the manifest kept in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ManifestError> {
        fs::create_dir_all(dir).map_err(|source| ManifestError {
            path: dir.to_owned(),
            source,
        })?;
        let Read {
            entries,
            uploads,
            listed_at,
            listed_from,
            snapshot_bytes,
            journal_bytes,
            torn,
        } = read(dir)?;
        let journal_path = dir.join(JOURNAL);
        let mut manifest = Self {
            dir: dir.to_owned(),
            entries,
            uploads,
            listed_at,
            listed_from,
            journal: OpenOptions::new()
                .create(true)
                .append(true)
                .open(&journal_path)
                .map_err(|source| ManifestError {
                    path: journal_path,
                    source,
                })?,
            snapshot_bytes,
            journal_bytes,
        };
        // A torn line would swallow the next one appended after it; no snapshot (a new
        // manifest): one is written.
        if torn || snapshot_bytes == 0 {
            manifest.compact()?;
        } else {
            manifest.compact_if_grown()?;
        }
        Ok(manifest)
    }

    /// What the manifest in `dir` says, read without changing it, while the process that owns it
    /// may be writing it: a snapshot replaced during the read (a compaction, which also empties
    /// the journal) is read again.
    pub fn read_only(dir: &Path) -> Result<Read, ManifestError> {
        let snapshot = dir.join(SNAPSHOT);
        let ino = || fs::metadata(&snapshot).map(|m| m.ino()).ok();
        loop {
            let before = ino();
            let read = read(dir)?;
            if ino() == before {
                return Ok(read);
            }
        }
    }

    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// When the bucket was listed for the last pass that completed.
    pub fn listed_at(&self) -> Option<SystemTime> {
        self.listed_at
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// What the last pass that completed listed (`s3://bucket/prefix`).
    pub fn listed_from(&self) -> Option<&str> {
        self.listed_from.as_deref()
    }

    /// Records when the listing the entries now reflect was made, and of what (one journal
    /// line).
    pub fn set_listed(&mut self, at: SystemTime, from: &str) -> Result<(), ManifestError> {
        let at = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.append(&JournalLine::Lst {
            at,
            from: from.to_owned(),
        })?;
        self.listed_at = Some(at);
        self.listed_from = Some(from.to_owned());
        Ok(())
    }

    /// Folds the journal into a new snapshot once it has grown past a quarter of the snapshot
    /// (at least 64 KiB): a pass that changed little writes little, and the journal a start
    /// replays stays short next to the snapshot.
    pub fn compact_if_grown(&mut self) -> Result<(), ManifestError> {
        if self.journal_bytes > (self.snapshot_bytes / 4).max(64 << 10) {
            self.compact()?;
        }
        Ok(())
    }

    /// Records that `path` now holds `entry`.
    pub fn put(&mut self, path: &str, entry: Entry) -> Result<(), ManifestError> {
        self.append(&JournalLine::Put {
            path: path.to_owned(),
            entry: entry.clone(),
        })?;
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Records that the tool removed `path`.
    pub fn remove(&mut self, path: &str) -> Result<(), ManifestError> {
        if self.entries.contains_key(path) {
            self.append(&JournalLine::Del {
                path: path.to_owned(),
            })?;
            self.entries.remove(path);
        }
        Ok(())
    }

    /// Records that a multipart upload of `path` is starting, or (with its id) has started.
    pub fn begin_upload(&mut self, path: &str, upload: Multipart) -> Result<(), ManifestError> {
        self.append(&JournalLine::Upl {
            path: path.to_owned(),
            upload: upload.clone(),
        })?;
        self.uploads.insert(path.to_owned(), upload);
        Ok(())
    }

    /// Records that the multipart upload of `path` ended, completed or aborted.
    pub fn end_upload(&mut self, path: &str) -> Result<(), ManifestError> {
        if self.uploads.contains_key(path) {
            self.append(&JournalLine::Upd {
                path: path.to_owned(),
            })?;
            self.uploads.remove(path);
        }
        Ok(())
    }

    /// The multipart uploads started and not recorded as ended.
    pub fn uploads(&self) -> &BTreeMap<String, Multipart> {
        &self.uploads
    }

    fn append(&mut self, line: &JournalLine) -> Result<(), ManifestError> {
        let mut buf = serde_json::to_vec(line).expect("journal lines serialize");
        buf.push(b'\n');
        // One write call per line, so a crash leaves at most one torn line at the end.
        self.journal_bytes += buf.len() as u64;
        self.journal
            .write_all(&buf)
            .map_err(|source| ManifestError {
                path: self.dir.join(JOURNAL),
                source,
            })
    }

    /// Writes a new snapshot atomically and empties the journal.
    pub fn compact(&mut self) -> Result<(), ManifestError> {
        let snapshot_path = self.dir.join(SNAPSHOT);
        let err = |source| ManifestError {
            path: snapshot_path.clone(),
            source,
        };
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let snapshot = Snapshot {
            version: 1,
            listed_at: self.listed_at,
            listed_from: self.listed_from.as_deref().map(Cow::Borrowed),
            entries: Cow::Borrowed(&self.entries),
            uploads: Cow::Borrowed(&self.uploads),
        };
        // Streamed to the file, not built in memory first: at a million entries the text is
        // over a hundred megabytes.
        let bytes = {
            let mut f = io::BufWriter::new(File::create(&tmp).map_err(err)?);
            serde_json::to_writer(&mut f, &snapshot).map_err(|e| err(e.into()))?;
            let f = f.into_inner().map_err(|e| err(e.into_error()))?;
            f.sync_all().map_err(err)?;
            f.metadata().map_err(err)?.len()
        };
        fs::rename(&tmp, &snapshot_path).map_err(err)?;
        self.entries.fold();
        self.snapshot_bytes = bytes;
        self.journal_bytes = 0;
        self.journal = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.dir.join(JOURNAL))
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(etag: &str) -> Entry {
        Entry::new(etag.into(), 3, 1)
    }

    /// A stamp reads back as it was written, its inode number too; an inode number 0 (which
    /// no file has) reads as the number a stamp keeps for it.
    #[test]
    fn stamps_read_back_with_their_inode_numbers() {
        let stamp = |ino| Stamp {
            size: 3,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: inode(ino),
        };
        for ino in [1, 4_000_000_123, u64::MAX] {
            let json = serde_json::to_string(&stamp(ino)).unwrap();
            assert!(json.contains(&format!("\"ino\":{ino}")), "{json}");
            assert_eq!(serde_json::from_str::<Stamp>(&json).unwrap(), stamp(ino));
        }
        let zero = r#"{"size":3,"mtime_ns":1,"ctime_ns":2,"ino":0}"#;
        assert_eq!(serde_json::from_str::<Stamp>(zero).unwrap(), stamp(0));
        assert_eq!(stamp(0).ino.get(), u64::MAX);
    }

    #[test]
    fn survives_reopen_without_compaction() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut m = Manifest::open(tmp.path()).unwrap();
            m.put("a", entry("1")).unwrap();
            m.put("b", entry("2")).unwrap();
            m.remove("a").unwrap();
            // Dropped without compact: as after kill -9.
        }
        let m = Manifest::open(tmp.path()).unwrap();
        assert_eq!(m.entries().len(), 1);
        assert_eq!(m.get("b"), Some(&entry("2")));
    }

    /// A pass that changed nothing appends one line and rewrites no snapshot; the journal is
    /// folded into one once it has grown past a quarter of it.
    #[test]
    fn an_unchanged_pass_rewrites_no_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let snapshot = || fs::metadata(tmp.path().join(SNAPSHOT)).unwrap().ino();
        let mut m = Manifest::open(tmp.path()).unwrap();
        for i in 0..2000 {
            m.put(&format!("dir/file-{i}.csv"), entry("1")).unwrap();
        }
        m.compact().unwrap();
        let first = snapshot();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for pass in 0..100 {
            m.set_listed(at + Duration::from_secs(pass), "s3://bkt/p/")
                .unwrap();
            m.compact_if_grown().unwrap();
        }
        assert_eq!(snapshot(), first, "the snapshot was rewritten");
        drop(m);
        let m = Manifest::open(tmp.path()).unwrap();
        assert_eq!(snapshot(), first, "reopening rewrote the snapshot");
        assert_eq!(m.listed_at(), Some(at + Duration::from_secs(99)));
        assert_eq!(m.entries().len(), 2000);

        // Changes past a quarter of the snapshot: folded in.
        let mut m = m;
        for i in 0..2000 {
            m.put(&format!("dir/file-{i}.csv"), entry("2")).unwrap();
        }
        m.compact_if_grown().unwrap();
        assert_ne!(snapshot(), first);
        assert_eq!(fs::metadata(tmp.path().join(JOURNAL)).unwrap().len(), 0);
    }

    #[test]
    fn the_listing_time_and_source_are_kept_by_compaction_and_old_snapshots_still_read() {
        let tmp = tempfile::tempdir().unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        {
            let mut m = Manifest::open(tmp.path()).unwrap();
            assert_eq!(m.listed_at(), None);
            m.put("a", entry("1")).unwrap();
            m.set_listed(at, "s3://bkt/p/").unwrap();
            m.compact().unwrap();
        }
        let m = Manifest::open(tmp.path()).unwrap();
        assert_eq!(m.listed_at(), Some(at));
        assert_eq!(m.listed_from(), Some("s3://bkt/p/"));
        // A snapshot written before the listing time was recorded.
        fs::write(
            tmp.path().join(SNAPSHOT),
            br#"{"version":1,"entries":{"b":{"key":"k-2","etag":"2","size":3,"mtime":1}}}"#,
        )
        .unwrap();
        fs::write(tmp.path().join(JOURNAL), b"").unwrap();
        let m = Manifest::open(tmp.path()).unwrap();
        assert_eq!(m.listed_at(), None);
        assert_eq!(m.get("b"), Some(&entry("2")));
    }

    /// Entries of earlier versions name their key; it is not kept, and they load.
    #[test]
    fn a_manifest_of_an_earlier_version_with_keys_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let etag = "0123456789abcdef0123456789abcdef";
        let snapshot = format!(
            r#"{{"version":1,"entries":{{"a":{{"key":"p/a","etag":"{etag}","size":3,"mtime":1}}}}}}"#
        );
        let journal = format!(
            r#"{{"put":{{"path":"b","entry":{{"key":"p/b","etag":"{etag}","size":3,"mtime":1}}}}}}"#
        );
        std::fs::write(tmp.path().join(SNAPSHOT), snapshot).unwrap();
        std::fs::write(tmp.path().join(JOURNAL), journal + "\n").unwrap();
        let m = Manifest::open(tmp.path()).unwrap();
        assert_eq!(m.get("a"), Some(&entry(etag)));
        assert_eq!(m.get("b"), Some(&entry(etag)));
    }

    #[test]
    fn a_multipart_upload_not_ended_is_found_after_a_crash_and_a_compaction() {
        let tmp = tempfile::tempdir().unwrap();
        let upload = |id: &str| Multipart {
            key: "p/big".into(),
            upload_id: Some(id.into()),
        };
        {
            let mut m = Manifest::open(tmp.path()).unwrap();
            m.begin_upload("big", upload("u1")).unwrap();
            m.begin_upload("other", upload("u2")).unwrap();
            m.end_upload("other").unwrap();
            // Dropped without compact: as after kill -9.
        }
        let mut m = Manifest::open(tmp.path()).unwrap();
        assert_eq!(
            m.uploads().iter().collect::<Vec<_>>(),
            [(&"big".to_owned(), &upload("u1"))]
        );
        m.compact().unwrap();
        drop(m);
        let mut m = Manifest::open(tmp.path()).unwrap();
        assert_eq!(m.uploads().len(), 1);
        m.end_upload("big").unwrap();
        drop(m);
        assert!(Manifest::open(tmp.path()).unwrap().uploads().is_empty());
    }

    #[test]
    fn ignores_a_torn_last_journal_line() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut m = Manifest::open(tmp.path()).unwrap();
            m.put("a", entry("1")).unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(tmp.path().join(JOURNAL))
            .unwrap();
        f.write_all(br#"{"put":{"path":"b","ent"#).unwrap();
        let m = Manifest::open(tmp.path()).unwrap();
        assert_eq!(
            m.entries().iter().map(|(p, _)| p).collect::<Vec<_>>(),
            ["a"]
        );
    }
}
