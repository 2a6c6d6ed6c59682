//! Uploads of a writeable mount's local changes, and deletes of the objects whose local files
//! were deleted, without ever losing a version.
//!
//! Every write names the version it replaces: an upload of a changed file `If-Match` the ETag
//! the file was made from, a new file `If-None-Match: *`, a delete `If-Match` the ETag the
//! deleted file was. A HEAD just before the write compares the same thing, so that a server
//! that ignores conditional writes (`rclone serve s3`) is caught too, outside the moment
//! between the HEAD and the write. A conflict (the object changed or appeared remotely) keeps
//! both: the local file is moved aside to a conflict name ([`conflict::conflict_path`]) and
//! uploaded as a new object there, and the remote version is downloaded under the original
//! name. A delete that conflicts deletes nothing.
//!
//! An upload reads a consistent snapshot of the file: the bytes read (into memory for one PUT,
//! part by part for a multipart upload) are used only if the file's stamp is the same after
//! the last read as at the walk that found it; a file written meanwhile is left for the next
//! pass, never uploaded torn.
//!
//! After a crash between a write and its record in the manifest, the next pass finds the file
//! still changed and the object not at the version it was made from: when the object's ETag is
//! the MD5 of the local bytes (one PUT, or a multipart upload of the same part size), the object
//! is the tool's own upload and is recorded as such instead of being called a conflict.

pub mod conflict;
pub mod write_back;

pub use write_back::WriteBack;

use crate::engine::plan::{RemoteDelete, RenamedFrom, Upload};
use crate::engine::{Downloader, Replica};
use crate::etag::hex;
use crate::local::LocalError;
use crate::local::manifest::{Multipart, Stamp};
use crate::retry::{Transient, retry};
use crate::store::{
    CompletedPart, ObjectMeta, ObjectStore, Precondition, StoreError, WriteOptions,
};
use bytes::Bytes;
use md5::{Digest, Md5};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::task::JoinSet;

/// How many times a multipart upload a 409 ended is started again (see `Uploader::send`).
const MULTIPART_RESTARTS: usize = 2;

/// S3's smallest part but the last, and its most parts.
const MIN_PART: u64 = 5 << 20;
const MAX_PARTS: u64 = 10_000;

/// What an upload or a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The object now holds the local version (`bytes` sent; 0 when it already did).
    Uploaded { bytes: u64 },
    /// The file changed while it was read: left for the next pass.
    Changed,
    /// The object had changed remotely: the local version went to `kept` (a new object), and
    /// `remote`, the object's version now, is to be downloaded under the original name.
    Conflict {
        kept: String,
        remote: Option<ObjectMeta>,
    },
    /// The object was deleted (or was already gone).
    Deleted,
    /// Not deleted: the object had changed remotely; `remote` is to be downloaded.
    KeptRemote { remote: ObjectMeta },
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("uploading \"{key}\": {source}")]
    Store {
        key: String,
        #[source]
        source: StoreError,
    },
    #[error("uploading \"{key}\": {source}")]
    Local {
        key: String,
        #[source]
        source: LocalError,
    },
}

/// How uploads of one mount are made.
pub(crate) struct Uploader {
    /// The lanes every request takes a permit of, and the part size: files larger than a part
    /// upload as multipart uploads of parts of about that size.
    pub(crate) downloader: Arc<Downloader>,
    pub(crate) replica: Arc<Replica>,
    pub(crate) store: Arc<dyn ObjectStore>,
}

impl Uploader {
    fn options(&self) -> WriteOptions {
        WriteOptions {
            bucket_owner_full_control: true,
            kms_key_id: self.replica.mount.kms_key_id.clone(),
            content_md5: None,
        }
    }

    /// How an upload of the bytes whose MD5 `md5` computes is stored: under SSE-KMS with that
    /// MD5 beside them, the one sign of the tool's own upload where the ETag is not it (see
    /// [`Uploader::is_ours`]). Without a key the MD5 is not computed at all.
    async fn options_for(&self, md5: impl AsyncFnOnce() -> Option<String>) -> Option<WriteOptions> {
        let mut opts = self.options();
        if opts.kms_key_id.is_some() {
            opts.content_md5 = Some(md5().await?);
        }
        Some(opts)
    }

    /// Uploads one local change (see the module's rules); a renamed file is copied within the
    /// bucket when it can be ([`Uploader::rename`]).
    pub async fn upload(&self, up: &Upload) -> Result<Pushed, UploadError> {
        if let (Some(from), Some(stamp)) = (&up.from, up.stamp)
            && let Some(pushed) = self.rename(up, from, stamp).await?
        {
            return Ok(pushed);
        }
        self.upload_bytes(up).await
    }

    /// A renamed file: its old object, copied to the new key within the bucket (under the
    /// condition an upload there would have, stored as an upload would be), recorded, then
    /// deleted under the old key if it is still that version ([`Uploader::delete`]). `None`
    /// when no copy is made: the new key is not as planned, the old object changed or went
    /// (checked by a HEAD too, for servers that ignore the copy's condition), or the server
    /// refused the copy; the file's bytes are uploaded instead, and the old path stays a local
    /// deletion for the next pass to decide by the usual rules. A crash between the copy and
    /// the delete leaves just such a local deletion too, the new path recorded.
    async fn rename(
        &self,
        up: &Upload,
        from: &RenamedFrom,
        stamp: Stamp,
    ) -> Result<Option<Pushed>, UploadError> {
        let mount = &self.replica.mount;
        let cond = match (self.head(&up.key).await?, &up.base) {
            (None, _) => Precondition::IfNoneMatch,
            (Some(c), Some(base)) if &c.etag == base => Precondition::IfMatch(base.clone()),
            // Another version there: the upload's rules decide whether it is a conflict.
            (Some(_), _) => return Ok(None),
        };
        if self.open(up, &stamp)?.is_none() {
            return Ok(Some(Pushed::Changed));
        }
        let source = match self.head(&from.key).await? {
            Some(source) if source.etag == from.etag && source.size == stamp.size => source,
            _ => return Ok(None),
        };
        let opts = self.options();
        // A copy in parts is a multipart upload: recorded as one before it starts, so that one
        // a crash interrupts is aborted at the next pass ([`Uploader::abort_unfinished`]),
        // whose id the store keeps to itself; every open upload of the key is.
        let in_parts = self.store.copies_in_parts(source.size);
        if in_parts {
            let upload = Multipart {
                key: up.key.clone(),
                upload_id: None,
            };
            let copy = &self.replica.copy;
            copy.begin_upload(&up.path, upload)
                .map_err(local_err(&up.key))?;
        }
        let copied = self
            .write(&up.key, || self.store.copy(&source, &up.key, &cond, &opts))
            .await;
        // The store aborts the upload of a copy that failed; one cut off may still be open.
        let open = matches!(&copied, Err(e) if e.is_transient());
        if in_parts && !open {
            self.replica
                .copy
                .end_upload(&up.path)
                .map_err(local_err(&up.key))?;
        }
        let etag = match copied {
            Ok(etag) => etag,
            Err(e) if e.is_transient() => return Err(store_err(&up.key)(e)),
            Err(e) => {
                tracing::debug!(
                    mount = %mount.id,
                    bucket = %mount.bucket,
                    from = %from.key,
                    key = %up.key,
                    "renamed file not copied within the bucket ({e}); uploading its bytes"
                );
                return Ok(None);
            }
        };
        let meta = ObjectMeta {
            key: up.key.clone(),
            size: source.size,
            etag: etag.into(),
            last_modified: SystemTime::now(),
        };
        self.record(up, &meta, stamp)?;
        tracing::debug!(
            mount = %mount.id,
            bucket = %mount.bucket,
            from = %from.key,
            key = %up.key,
            "renamed: copied within the bucket, deleting the old key"
        );
        self.delete(&from.delete()).await?;
        Ok(Some(Pushed::Uploaded { bytes: 0 }))
    }

    /// Uploads the bytes of one local change.
    async fn upload_bytes(&self, up: &Upload) -> Result<Pushed, UploadError> {
        let current = self.head(&up.key).await?;
        let Some(stamp) = up.stamp else {
            return self.upload_marker(up, current).await;
        };
        let file = match self.open(up, &stamp)? {
            Some(file) => Arc::new(file),
            None => return Ok(Pushed::Changed),
        };
        let cond = match (&current, &up.base) {
            (None, _) => Precondition::IfNoneMatch,
            (Some(c), Some(base)) if &c.etag == base => Precondition::IfMatch(base.clone()),
            (Some(c), _) => {
                let ours = self.is_ours(&file, &stamp, c).await;
                if ours {
                    self.record(up, c, stamp)?;
                    return Ok(Pushed::Uploaded { bytes: 0 });
                }
                return self.conflict(up, current).await;
            }
        };
        match self.send(up, &file, &stamp, &cond).await {
            Ok(Some(etag)) => {
                let meta = ObjectMeta {
                    key: up.key.clone(),
                    size: stamp.size,
                    etag: etag.into(),
                    last_modified: SystemTime::now(),
                };
                self.record(up, &meta, stamp)?;
                Ok(Pushed::Uploaded { bytes: stamp.size })
            }
            Ok(None) => Ok(Pushed::Changed),
            // Changed (or appeared, or went) between the HEAD and the write; or the write was
            // applied and its answer lost, and its retry found the object it had made.
            Err(UploadError::Store {
                source: StoreError::PreconditionFailed { .. } | StoreError::NoSuchKey { .. },
                ..
            }) => match self.adopt(up, &file, &stamp).await? {
                Ok(pushed) => Ok(pushed),
                Err(current) => self.conflict(up, current).await,
            },
            // The completion was applied and its answer lost, and its retry found the upload
            // ended; else the upload is started again at the next pass.
            Err(
                gone @ UploadError::Store {
                    source: StoreError::NoSuchUpload { .. },
                    ..
                },
            ) => match self.adopt(up, &file, &stamp).await? {
                Ok(pushed) => Ok(pushed),
                Err(_) => Err(gone),
            },
            Err(e) => Err(e),
        }
    }

    /// After a write whose retry found the object already made: the object, when it holds the
    /// file's bytes (the tool's own write, its answer lost), is recorded as the file's upload;
    /// else `Err` with the object's version now.
    async fn adopt(
        &self,
        up: &Upload,
        file: &Arc<File>,
        stamp: &Stamp,
    ) -> Result<Result<Pushed, Option<ObjectMeta>>, UploadError> {
        let current = self.head(&up.key).await?;
        if let Some(c) = &current
            && self.is_ours(file, stamp, c).await
        {
            self.record(up, c, *stamp)?;
            return Ok(Ok(Pushed::Uploaded { bytes: stamp.size }));
        }
        Ok(Err(current))
    }

    /// The object's current version (with retries), `None` when there is none.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, UploadError> {
        retry("head", || self.store.head(key))
            .await
            .map_err(store_err(key))
    }

    /// The folder marker of a new empty directory; one already there is the same directory.
    async fn upload_marker(
        &self,
        up: &Upload,
        current: Option<ObjectMeta>,
    ) -> Result<Pushed, UploadError> {
        let store_err = store_err(&up.key);
        let meta = match current {
            Some(meta) => meta,
            None => {
                let (cond, opts) = (Precondition::IfNoneMatch, self.options());
                let put = self
                    .write(&up.key, || {
                        self.store.put(&up.key, Bytes::new(), &cond, &opts)
                    })
                    .await;
                match put {
                    Ok(etag) => ObjectMeta {
                        key: up.key.clone(),
                        size: 0,
                        etag: etag.into(),
                        last_modified: SystemTime::now(),
                    },
                    // Made meanwhile by someone else: the same directory.
                    Err(StoreError::PreconditionFailed { .. }) => {
                        self.head(&up.key).await?.ok_or_else(|| {
                            store_err(StoreError::NoSuchKey {
                                key: up.key.clone(),
                            })
                        })?
                    }
                    Err(e) => return Err(store_err(e)),
                }
            }
        };
        self.replica
            .copy
            .record_upload(&up.path, &meta, None)
            .map_err(local_err(&up.key))?;
        Ok(Pushed::Uploaded { bytes: 0 })
    }

    /// Deletes an object whose local file was deleted, if it is still the version the file was.
    pub async fn delete(&self, del: &RemoteDelete) -> Result<Pushed, UploadError> {
        let store_err = store_err(&del.key);
        let current = self.head(&del.key).await?;
        let outcome = match current {
            None => Pushed::Deleted,
            Some(c) if c.etag == del.etag => {
                let cond = Precondition::IfMatch(del.etag.clone());
                match self
                    .write(&del.key, || self.store.delete(&del.key, &cond))
                    .await
                {
                    Ok(()) | Err(StoreError::NoSuchKey { .. }) => Pushed::Deleted,
                    Err(StoreError::PreconditionFailed { .. }) => {
                        match self.head(&del.key).await? {
                            Some(remote) => Pushed::KeptRemote { remote },
                            None => Pushed::Deleted,
                        }
                    }
                    Err(e) => return Err(store_err(e)),
                }
            }
            Some(remote) => Pushed::KeptRemote { remote },
        };
        if let Pushed::KeptRemote { remote } = &outcome {
            tracing::warn!(
                mount = %self.replica.mount.id,
                bucket = %self.replica.mount.bucket,
                key = %del.key,
                "not deleted: the object changed in the bucket since the local file was deleted \
                 (now ETag {}); its new version is downloaded again",
                remote.etag
            );
        }
        self.replica
            .copy
            .forget(&del.path)
            .map_err(local_err(&del.key))?;
        Ok(outcome)
    }

    /// Keeps both versions: moves the local file aside to a conflict name, uploads it there as
    /// a new object, and leaves the remote version (if any) to be downloaded under the name.
    async fn conflict(
        &self,
        up: &Upload,
        remote: Option<ObjectMeta>,
    ) -> Result<Pushed, UploadError> {
        let local_err = local_err(&up.key);
        let copy = &self.replica.copy;
        let aside = conflict::conflict_path(&up.path, SystemTime::now(), |p| copy.exists(p));
        let stamp = copy.move_aside(&up.path, &aside).map_err(local_err)?;
        let kept = format!("{}{aside}", self.replica.mount.prefix);
        tracing::warn!(
            mount = %self.replica.mount.id,
            bucket = %self.replica.mount.bucket,
            key = %up.key,
            kept = %kept,
            "conflict: the object changed in the bucket since the local file was made from it; \
             both are kept: the bucket's version under \"{}\", the local version as \"{kept}\"",
            up.key
        );
        let moved = Upload {
            path: aside,
            key: kept.clone(),
            base: None,
            stamp: Some(stamp),
            from: None,
        };
        // A conflict name is new: its upload conflicts with nothing but a writer of the same
        // name in the same second, which is an error rather than a second move.
        let file = self.open(&moved, &stamp)?.map(Arc::new);
        if let Some(file) = file {
            let written = self
                .send(&moved, &file, &stamp, &Precondition::IfNoneMatch)
                .await;
            if let Some(etag) = written? {
                let meta = ObjectMeta {
                    key: kept.clone(),
                    size: stamp.size,
                    etag: etag.into(),
                    last_modified: SystemTime::now(),
                };
                self.record(&moved, &meta, stamp)?;
            }
        }
        Ok(Pushed::Conflict { kept, remote })
    }

    /// The local file of `up`, opened without following a link, if it is still as `stamp`.
    fn open(&self, up: &Upload, stamp: &Stamp) -> Result<Option<File>, UploadError> {
        match self.replica.copy.open_file(&up.path) {
            Ok((file, metadata)) if Stamp::of(&metadata) == *stamp => Ok(Some(file)),
            Ok(_) => Ok(None),
            Err(LocalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(source) => Err(local_err(&up.key)(source)),
        }
    }

    fn record(&self, up: &Upload, meta: &ObjectMeta, stamp: Stamp) -> Result<(), UploadError> {
        self.replica
            .copy
            .record_upload(&up.path, meta, Some(stamp))
            .map_err(local_err(&up.key))
    }

    /// A write, retried while it fails for a transient reason, each try holding a permit of the
    /// write lane (readers go first).
    async fn write<T, F, Fut>(&self, key: &str, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        retry(key, || async {
            let _permit = self.downloader.lanes.write_permit().await;
            op().await
        })
        .await
    }

    /// The file's bytes to `up.key` under `cond`: one PUT, or a multipart upload above a part;
    /// the new ETag, `None` when the file changed while it was read.
    async fn send(
        &self,
        up: &Upload,
        file: &Arc<File>,
        stamp: &Stamp,
        cond: &Precondition,
    ) -> Result<Option<String>, UploadError> {
        if stamp.size <= self.downloader.part_size.max(MIN_PART) {
            return self
                .put(up, file, stamp, cond)
                .await
                .map_err(store_err(&up.key));
        }
        // A 409 on the completion (another conditional write to the key was under way) ends
        // the multipart upload: it is started again, a bounded number of times.
        let mut restarts = 0;
        loop {
            match self.multipart(up, file, stamp, cond).await {
                Err(UploadError::Store {
                    source: StoreError::ConditionalConflict { .. },
                    ..
                }) if restarts < MULTIPART_RESTARTS => {
                    restarts += 1;
                    tracing::info!(key = %up.key, "a concurrent write to the key ended the multipart upload; starting it again");
                }
                other => return other,
            }
        }
    }

    /// One PUT of the whole file; `None` when the file changed while it was read.
    async fn put(
        &self,
        up: &Upload,
        file: &Arc<File>,
        stamp: &Stamp,
        cond: &Precondition,
    ) -> Result<Option<String>, StoreError> {
        let Some(body) = read_range(file, 0, stamp.size).await else {
            return Ok(None);
        };
        if !unchanged(file, stamp).await {
            return Ok(None);
        }
        let md5 = async || Some(hex(&Md5::digest(&body)));
        let Some(opts) = self.options_for(md5).await else {
            return Ok(None);
        };
        self.write(&up.key, || {
            self.store.put(&up.key, body.clone(), cond, &opts)
        })
        .await
        .map(Some)
    }

    /// A multipart upload of parts read from the file, several at once; completed (with the
    /// condition) only if the file is unchanged after the last part was read, else aborted. Its
    /// id is in the manifest's journal from before the first part until it is completed or
    /// aborted, so that one a crash interrupts is aborted at the next pass
    /// ([`Uploader::abort_unfinished`]).
    async fn multipart(
        &self,
        up: &Upload,
        file: &Arc<File>,
        stamp: &Stamp,
        cond: &Precondition,
    ) -> Result<Option<String>, UploadError> {
        let store_err = store_err(&up.key);
        let local_err = local_err(&up.key);
        let part = part_size(self.downloader.part_size, stamp.size);
        // Under SSE-KMS the whole file is read once more first, for its MD5 (a file changed by
        // the end of the upload is not completed, so the MD5 is of the bytes uploaded).
        let md5 = async || content_md5(file, stamp.size).await;
        let Some(opts) = self.options_for(md5).await else {
            return Ok(None);
        };
        let record = |upload_id| {
            let key = up.key.clone();
            self.replica
                .copy
                .begin_upload(&up.path, Multipart { key, upload_id })
        };
        // Recorded before it is asked for: a crash before its id arrives leaves an upload the
        // server started and nobody would know of.
        record(None).map_err(local_err)?;
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let id = self
            .write(&up.key, || {
                asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.store.create_multipart(&up.key, &opts)
            })
            .await
            .map_err(store_err)?;
        // Asked more than once: a try whose answer was lost may have started an upload whose id
        // never arrived, which nothing would end.
        let retried = asked.into_inner() > 1;
        let recorded = record(Some(id.clone()));
        let completed = match recorded {
            Err(source) => Err(local_err(source)),
            Ok(()) => match self.parts(up, file, stamp, part, &id).await {
                Ok(Some(parts)) if unchanged(file, stamp).await => self
                    .write(&up.key, || {
                        self.store.complete_multipart(&up.key, &id, &parts, cond)
                    })
                    .await
                    .map(Some)
                    .map_err(store_err),
                Ok(_) => Ok(None),
                Err(e) => Err(store_err(e)),
            },
        };
        let ended = match completed {
            Ok(Some(_)) => true,
            // A leftover upload costs storage, not data: when it cannot be aborted now, its
            // record stays for the next pass to try again. (An abort whose answer was lost is
            // retried: an upload already gone is not an error.)
            _ => match retry(&up.key, || self.store.abort_multipart(&up.key, &id)).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(key = %up.key, "could not abort multipart upload {id}: {e}");
                    false
                }
            },
        };
        if retried {
            self.abort_others(&up.key, &id).await;
        }
        if ended {
            self.replica.copy.end_upload(&up.path).map_err(local_err)?;
        }
        completed
    }

    /// Aborts the multipart uploads that a crash left unfinished (recorded, never completed or
    /// aborted); the files they were of are still changed, and upload again. Every open upload
    /// of such a key is aborted, also one whose id the crash kept from the record: a mount's
    /// keys are its own, and an upload aborted loses no version (only a completed one is one).
    pub async fn abort_unfinished(&self) {
        for (path, upload) in self.replica.copy.unfinished_uploads() {
            let aborted = self.abort_all(&upload).await;
            let ended = aborted.and_then(|()| {
                self.replica
                    .copy
                    .end_upload(&path)
                    .map_err(|e| e.to_string())
            });
            match ended {
                Ok(()) => tracing::info!(
                    mount = %self.replica.mount.id,
                    key = %upload.key,
                    "aborted the multipart upload an earlier run left unfinished"
                ),
                Err(e) => tracing::warn!(
                    mount = %self.replica.mount.id,
                    key = %upload.key,
                    "could not abort the multipart upload an earlier run left unfinished: {e}"
                ),
            }
        }
    }

    /// Aborts the open uploads of `key` but `ours`: those a lost answer to a retried
    /// CreateMultipartUpload started. (One another client starts at that moment would be
    /// aborted too; its writer sees the failure and starts again: no version is lost.)
    async fn abort_others(&self, key: &str, ours: &str) {
        let listed = match retry(key, || self.store.list_multipart(key)).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(key, "could not list the open multipart uploads: {e}");
                return;
            }
        };
        for u in listed
            .iter()
            .filter(|u| u.key == key && u.upload_id != ours)
        {
            if let Err(e) = retry(key, || self.store.abort_multipart(key, &u.upload_id)).await {
                tracing::warn!(key, "could not abort multipart upload {}: {e}", u.upload_id);
            }
        }
    }

    /// Aborts `upload`, and every other open upload of its key.
    async fn abort_all(&self, upload: &Multipart) -> Result<(), String> {
        let key = &upload.key;
        let listed = retry(key, || self.store.list_multipart(key))
            .await
            .map_err(|e| e.to_string())?;
        let ids = listed
            .into_iter()
            .filter(|u| &u.key == key)
            .map(|u| u.upload_id)
            .chain(upload.upload_id.clone())
            .collect::<std::collections::BTreeSet<_>>();
        for id in ids {
            retry(key, || self.store.abort_multipart(key, &id))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Uploads every part; `None` when the file changed while it was read.
    async fn parts(
        &self,
        up: &Upload,
        file: &Arc<File>,
        stamp: &Stamp,
        part: u64,
        id: &str,
    ) -> Result<Option<Vec<CompletedPart>>, StoreError> {
        let count = stamp.size.div_ceil(part);
        let mut running = JoinSet::new();
        let mut done = Vec::with_capacity(count as usize);
        let mut next = 0u64;
        loop {
            while running.len() < self.downloader.lanes.write_concurrency() && next < count {
                let (store, key, id) = (self.store.clone(), up.key.clone(), id.to_owned());
                let downloader = self.downloader.clone();
                let (file, stamp) = (file.clone(), *stamp);
                let number = next as u32 + 1;
                let start = next * part;
                let end = (start + part).min(stamp.size);
                running.spawn(async move {
                    // A file written since the walk is not read on: its upload is given up
                    // at once, and the next one starts after the new write settles.
                    if !unchanged(&file, &stamp).await {
                        return Ok(None);
                    }
                    let Some(body) = read_range(&file, start, end).await else {
                        return Ok(None);
                    };
                    let etag = retry(&key, || async {
                        let _permit = downloader.lanes.write_permit().await;
                        store.upload_part(&key, &id, number, body.clone()).await
                    })
                    .await?;
                    Ok(Some(CompletedPart { number, etag }))
                });
                next += 1;
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let uploaded: Result<Option<CompletedPart>, StoreError> =
                joined.unwrap_or_else(|e| Err(StoreError::Permanent(format!("part task: {e}"))));
            match uploaded? {
                Some(p) => done.push(p),
                None => return Ok(None),
            }
        }
        done.sort_by_key(|p| p.number);
        Ok(Some(done))
    }

    /// Whether the object `current` holds the file's bytes (the tool's own upload, whose answer
    /// was lost): its ETag is their MD5 as this tool uploads them (one PUT, or parts of this
    /// uploader's part size); or, under SSE-KMS, where the ETag is not, the MD5 stored with it
    /// is theirs.
    async fn is_ours(&self, file: &Arc<File>, stamp: &Stamp, current: &ObjectMeta) -> bool {
        if current.size != stamp.size {
            return false;
        }
        let etag = current.etag.to_string();
        let (etag, size) = (etag.as_str(), stamp.size);
        let multipart = etag.contains('-');
        let part = match multipart {
            false => size.max(1),
            true => part_size(self.downloader.part_size, size),
        };
        let local = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || local_etag(&file, size, part, multipart))
        };
        let Some(local) = local.await.ok().flatten() else {
            return false;
        };
        if local == etag {
            return true;
        }
        if self.replica.mount.kms_key_id.is_none() {
            return false;
        }
        let key = &current.key;
        let stored = match retry(key, || self.store.stored_md5(key)).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(key, "could not read the object's stored MD5: {e}");
                return false;
            }
        };
        let md5 = match multipart {
            false => Some(local),
            true => content_md5(file, size).await,
        };
        md5 == Some(stored)
    }
}

/// The part size of a multipart upload of `size` bytes: `configured`, raised to S3's minimum
/// and, for very large files, so that the parts are at most 10,000.
fn part_size(configured: u64, size: u64) -> u64 {
    let mib = 1 << 20;
    configured
        .max(MIN_PART)
        .max(size.div_ceil(MAX_PARTS).div_ceil(mib) * mib)
}

/// The MD5 of the file's first `size` bytes, in hex (on the blocking pool); `None` if it is
/// shorter (it changed).
async fn content_md5(file: &Arc<File>, size: u64) -> Option<String> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || local_etag(&file, size, size, false))
        .await
        .ok()
        .flatten()
}

/// The ETag S3 gives an object of these bytes: their MD5, or for a multipart upload of parts of
/// `part` bytes the MD5 of the parts' MD5s followed by `-<parts>`.
fn local_etag(file: &File, size: u64, part: u64, multipart: bool) -> Option<String> {
    let mut buf = vec![0; 1 << 20];
    let mut md5_of = |start: u64, end: u64| {
        let mut md5 = Md5::new();
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], pos).ok()?;
            md5.update(&buf[..n]);
            pos += n as u64;
        }
        Some(md5.finalize())
    };
    if !multipart {
        return Some(hex(&md5_of(0, size)?));
    }
    let (mut of_parts, mut parts) = (Md5::new(), 0);
    for start in (0..size).step_by(part.max(1) as usize) {
        of_parts.update(md5_of(start, (start + part).min(size))?);
        parts += 1;
    }
    Some(format!("{}-{parts}", hex(&of_parts.finalize())))
}

/// Bytes `start..end` of the file (on the blocking pool); `None` if it is shorter than its
/// stamp says (it changed).
async fn read_range(file: &Arc<File>, start: u64, end: u64) -> Option<Bytes> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; (end - start) as usize];
        file.read_exact_at(&mut buf, start).ok()?;
        Some(Bytes::from(buf))
    })
    .await
    .ok()
    .flatten()
}

/// Whether the open file is still as `stamp` says.
async fn unchanged(file: &Arc<File>, stamp: &Stamp) -> bool {
    let file = file.clone();
    let stamp = *stamp;
    tokio::task::spawn_blocking(move || file.metadata().is_ok_and(|m| Stamp::of(&m) == stamp))
        .await
        .unwrap_or(false)
}

/// How a store error of a write of `key` reads.
fn store_err(key: &str) -> impl Fn(StoreError) -> UploadError + Copy + '_ {
    move |source| UploadError::Store {
        key: key.to_owned(),
        source,
    }
}

/// How a local error of an upload of `key` reads.
fn local_err(key: &str) -> impl Fn(LocalError) -> UploadError + Copy + '_ {
    move |source| UploadError::Local {
        key: key.to_owned(),
        source,
    }
}

impl Transient for UploadError {
    fn is_transient(&self) -> bool {
        matches!(self, UploadError::Store { source, .. } if source.is_transient())
    }
}
