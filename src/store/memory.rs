//! An in-memory bucket for fast tests: counts requests, and runs each request through a test's
//! hook ([`Hooked`], [`Faults`]) to watch, hold back or fail it.
//!
//! ETags are a hash of the content, so rewriting an object with other bytes changes its ETag, as
//! on S3. Bodies are served in small chunks so that truncation and mid-body failures are real.
//!
//! Writes honour every [`Precondition`] as AWS S3 does (put, completion and copy destination:
//! `If-Match`, `If-None-Match`; copy source: `x-amz-copy-source-if-match`; delete: `If-Match`),
//! which some S3-compatible servers do not: a test passing here shows what the code does
//! against AWS, the conformance suite shows what each server honours. A multipart upload holds
//! its parts until completion, which checks them as S3 does (each part listed was uploaded with
//! that ETag, in increasing order, every one but the last at least 5 MiB) and leaves the upload
//! open when the condition fails.
//!
//! Lock order: `uploads`, then `objects` (completion holds both, so that the condition is
//! checked and the object written in one step).
//!
//! The inherent [`MemoryStore::put`] and [`MemoryStore::delete`] are a test's own changes to
//! the bucket (unconditional, not counted, not hooked); the trait's `put` and `delete`
//! (`ObjectStore::put(&*store, ...)`) are the requests of the code under test.

use super::{
    Body, CompletedPart, DirListing, Listing, MultipartUpload, ObjectMeta, ObjectStore,
    Precondition, StoreError, WriteOptions,
};
use crate::etag::hex;
use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

const CHUNK: usize = 64 * 1024;

/// The smallest part S3 accepts, but for the last.
const MIN_PART: usize = 5 * 1024 * 1024;

/// Requests of each kind a store has had.
#[derive(Default)]
pub struct Counters {
    pub lists: AtomicU64,
    /// Listings of one directory ([`ObjectStore::list_dir`]).
    pub dir_lists: AtomicU64,
    pub heads: AtomicU64,
    pub gets: AtomicU64,
    /// Bytes the GETs sent.
    pub bytes: AtomicU64,
    pub puts: AtomicU64,
    pub creates: AtomicU64,
    pub parts: AtomicU64,
    pub completes: AtomicU64,
    pub aborts: AtomicU64,
    pub list_uploads: AtomicU64,
    pub copies: AtomicU64,
    pub deletes: AtomicU64,
}

struct Object {
    meta: ObjectMeta,
    data: Bytes,
    written_with: WriteOptions,
}

/// An open multipart upload.
struct Upload {
    key: String,
    opts: WriteOptions,
    initiated: SystemTime,
    /// Part number -> (ETag, bytes).
    parts: BTreeMap<u32, (String, Bytes)>,
}

pub struct MemoryStore {
    bucket: String,
    /// Guarded by its lock; taken after `uploads` when both are.
    objects: Mutex<BTreeMap<String, Object>>,
    /// Upload id -> upload. Guarded by its lock; taken before `objects`.
    uploads: Mutex<BTreeMap<String, Upload>>,
    next_upload: AtomicU64,
    missing: bool,
    clock: AtomicU64,
    /// Copies of objects larger than this say they are made in parts (see
    /// [`MemoryStore::copy_in_parts_above`]).
    copy_limit: AtomicU64,
    pub counters: Counters,
}

/// S3's ETag of an object written with one PUT: the MD5 of its bytes, in hex.
fn content_etag(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

impl MemoryStore {
    pub fn new(bucket: &str) -> Arc<Self> {
        Arc::new(Self {
            bucket: bucket.to_owned(),
            objects: Mutex::default(),
            uploads: Mutex::default(),
            next_upload: AtomicU64::new(1),
            missing: false,
            clock: AtomicU64::new(1_700_000_000),
            copy_limit: AtomicU64::new(u64::MAX),
            counters: Counters::default(),
        })
    }

    /// Copies of objects larger than `limit` bytes say they are made in parts, as S3's above
    /// 5 GiB (each is still one step here).
    pub fn copy_in_parts_above(&self, limit: u64) {
        self.copy_limit.store(limit, Ordering::Relaxed);
    }

    /// A store whose bucket does not exist.
    pub fn missing(bucket: &str) -> Arc<Self> {
        let mut s = Self::new(bucket);
        Arc::get_mut(&mut s).unwrap().missing = true;
        s
    }

    /// Writes `key` as a test's own change: unconditional, not counted, not hooked.
    pub fn put(&self, key: &str, data: impl Into<Bytes>) -> ObjectMeta {
        let data = data.into();
        let etag = content_etag(&data);
        let (meta, object) = self.object(key, data, etag, WriteOptions::default());
        self.objects.lock().insert(key.to_owned(), object);
        meta
    }

    /// Deletes `key` as a test's own change: not counted, not hooked.
    pub fn delete(&self, key: &str) {
        self.objects.lock().remove(key);
    }

    /// The options `key` was last written with (the defaults when a test wrote it); `None`
    /// when it does not exist.
    pub fn written_with(&self, key: &str) -> Option<WriteOptions> {
        self.objects.lock().get(key).map(|o| o.written_with.clone())
    }

    /// The bytes of `key`, if it exists.
    pub fn bytes_of(&self, key: &str) -> Option<Bytes> {
        self.objects.lock().get(key).map(|o| o.data.clone())
    }

    /// A new version of `key`, stamped with the store's clock.
    fn object(
        &self,
        key: &str,
        data: Bytes,
        etag: String,
        written_with: WriteOptions,
    ) -> (ObjectMeta, Object) {
        let secs = self.clock.fetch_add(1, Ordering::Relaxed);
        // As on S3, the ETag of an object encrypted with SSE-KMS is not the MD5 of its
        // content (nor, for one of parts, the MD5 of theirs): a hash of that with the key id
        // and the write's clock tick stands for it, keeping the parts' count.
        let etag = match &written_with.kms_key_id {
            None => etag,
            Some(key_id) => {
                let (digest, parts) = etag.split_once('-').unwrap_or((&etag, ""));
                let sealed = hex(&Md5::digest(format!("{digest}/{key_id}/{secs}")));
                match parts {
                    "" => sealed,
                    parts => format!("{sealed}-{parts}"),
                }
            }
        };
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: data.len() as u64,
            etag: etag.into(),
            last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        };
        let object = Object {
            meta: meta.clone(),
            data,
            written_with,
        };
        (meta, object)
    }

    pub fn gets(&self) -> u64 {
        self.counters.gets.load(Ordering::Relaxed)
    }
}

fn chunked(data: Bytes) -> Body {
    let chunks: Vec<Result<Bytes, StoreError>> = (0..data.len())
        .step_by(CHUNK)
        .map(|at| Ok(data.slice(at..(at + CHUNK).min(data.len()))))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

/// Whether `cond` holds for `current`, the object under `key`, as S3 decides it.
fn check(key: &str, current: Option<&Object>, cond: &Precondition) -> Result<(), StoreError> {
    match (cond, current) {
        (Precondition::None, _) | (Precondition::IfNoneMatch, None) => Ok(()),
        (Precondition::IfMatch(etag), Some(o)) if o.meta.etag == *etag => Ok(()),
        (Precondition::IfMatch(_), None) => Err(StoreError::NoSuchKey { key: key.into() }),
        (Precondition::IfMatch(_) | Precondition::IfNoneMatch, Some(_)) => {
            Err(StoreError::PreconditionFailed { key: key.into() })
        }
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn copies_in_parts(&self, size: u64) -> bool {
        size > self.copy_limit.load(Ordering::Relaxed)
    }

    fn endpoint(&self) -> &str {
        "memory:"
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        self.answer_list(prefix)
    }

    async fn list_dir(&self, prefix: &str) -> Result<DirListing, StoreError> {
        self.counters.dir_lists.fetch_add(1, Ordering::Relaxed);
        self.answer_list_dir(prefix)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.counters.heads.fetch_add(1, Ordering::Relaxed);
        self.answer_head(key)
    }

    async fn stored_md5(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.counters.heads.fetch_add(1, Ordering::Relaxed);
        self.answer_stored_md5(key)
    }

    async fn get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError> {
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.answer_get(key, range, etag)
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.answer_put(key, body, cond, opts)
    }

    async fn create_multipart(&self, key: &str, opts: &WriteOptions) -> Result<String, StoreError> {
        self.counters.creates.fetch_add(1, Ordering::Relaxed);
        self.answer_create_multipart(key, opts)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.counters.parts.fetch_add(1, Ordering::Relaxed);
        self.answer_upload_part(key, upload_id, part_number, body)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        cond: &Precondition,
    ) -> Result<String, StoreError> {
        self.counters.completes.fetch_add(1, Ordering::Relaxed);
        self.answer_complete(key, upload_id, parts, cond)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.counters.aborts.fetch_add(1, Ordering::Relaxed);
        self.answer_abort(key, upload_id)
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>, StoreError> {
        self.counters.list_uploads.fetch_add(1, Ordering::Relaxed);
        self.answer_list_multipart(prefix)
    }

    async fn copy(
        &self,
        source: &ObjectMeta,
        dest_key: &str,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        self.counters.copies.fetch_add(1, Ordering::Relaxed);
        self.answer_copy(source, dest_key, cond, opts)
    }

    async fn delete(&self, key: &str, cond: &Precondition) -> Result<(), StoreError> {
        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
        self.answer_delete(key, cond)
    }
}

/// The answers to requests, apart from counting them: what a [`StoreHook`] answers with.
impl MemoryStore {
    fn bucket_exists(&self) -> Result<(), StoreError> {
        match self.missing {
            true => Err(StoreError::NoSuchBucket {
                bucket: self.bucket.clone(),
            }),
            false => Ok(()),
        }
    }

    pub fn answer_list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.bucket_exists()?;
        Ok(self
            .objects
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, o)| &o.meta)
            .collect())
    }

    pub fn answer_list_dir(&self, prefix: &str) -> Result<DirListing, StoreError> {
        Ok(DirListing::of(prefix, &self.answer_list(prefix)?))
    }

    pub fn answer_head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self.objects.lock().get(key).map(|o| o.meta.clone()))
    }

    /// Bytes `range` of `key` if its ETag is still `etag` (the bytes sent are counted).
    pub fn answer_get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError> {
        let (meta, data) = self
            .objects
            .lock()
            .get(key)
            .map(|o| (o.meta.clone(), o.data.clone()))
            .ok_or_else(|| StoreError::NoSuchKey { key: key.into() })?;
        if !meta.etag.is(etag) {
            return Err(StoreError::PreconditionFailed { key: key.into() });
        }
        let end = range.end.min(meta.size) as usize;
        let body = data.slice(range.start as usize..end);
        self.counters
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(chunked(body))
    }

    pub fn answer_stored_md5(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.bucket_exists()?;
        let objects = self.objects.lock();
        Ok(objects
            .get(key)
            .and_then(|o| o.written_with.content_md5.clone()))
    }

    pub fn answer_put(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        self.bucket_exists()?;
        let etag = content_etag(&body);
        let mut objects = self.objects.lock();
        check(key, objects.get(key), cond)?;
        let (meta, object) = self.object(key, body, etag, opts.clone());
        objects.insert(key.to_owned(), object);
        Ok(meta.etag.to_string())
    }

    pub fn answer_create_multipart(
        &self,
        key: &str,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        self.bucket_exists()?;
        let id = format!(
            "upload-{}",
            self.next_upload.fetch_add(1, Ordering::Relaxed)
        );
        let secs = self.clock.fetch_add(1, Ordering::Relaxed);
        let upload = Upload {
            key: key.to_owned(),
            opts: opts.clone(),
            initiated: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            parts: BTreeMap::new(),
        };
        self.uploads.lock().insert(id.clone(), upload);
        Ok(id)
    }

    pub fn answer_upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        if !(1..=10_000).contains(&part_number) {
            return Err(StoreError::Permanent(format!(
                "uploading part {part_number} of \"{key}\": part numbers are 1 to 10000 \
                 (InvalidArgument)"
            )));
        }
        let etag = content_etag(&body);
        let mut uploads = self.uploads.lock();
        let upload = uploads
            .get_mut(upload_id)
            .filter(|u| u.key == key)
            .ok_or_else(|| StoreError::NoSuchUpload { key: key.into() })?;
        upload.parts.insert(part_number, (etag.clone(), body));
        Ok(etag)
    }

    pub fn answer_complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        cond: &Precondition,
    ) -> Result<String, StoreError> {
        let invalid = |what: &str, code: &str| {
            StoreError::Permanent(format!(
                "completing the upload of \"{key}\": {what} ({code})"
            ))
        };
        let mut uploads = self.uploads.lock();
        let upload = uploads
            .get(upload_id)
            .filter(|u| u.key == key)
            .ok_or_else(|| StoreError::NoSuchUpload { key: key.into() })?;
        if parts.is_empty() {
            return Err(invalid("no parts listed", "MalformedXML"));
        }
        if parts.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(invalid("parts not in increasing order", "InvalidPartOrder"));
        }
        let mut chosen = Vec::with_capacity(parts.len());
        for part in parts {
            match upload.parts.get(&part.number) {
                Some((etag, data)) if *etag == part.etag => chosen.push(data.clone()),
                _ => {
                    let what = format!("part {} was not uploaded with that ETag", part.number);
                    return Err(invalid(&what, "InvalidPart"));
                }
            }
        }
        if let Some(i) = chosen[..chosen.len() - 1]
            .iter()
            .position(|d| d.len() < MIN_PART)
        {
            let what = format!("part {} is smaller than 5 MiB", parts[i].number);
            return Err(invalid(&what, "EntityTooSmall"));
        }
        let mut objects = self.objects.lock();
        check(key, objects.get(key), cond)?;
        // S3's form: the MD5 of the parts' MD5s, then the number of parts.
        let mut md5 = Md5::new();
        for part in &chosen {
            md5.update(Md5::digest(part));
        }
        let etag = format!("{}-{}", hex(&md5.finalize()), parts.len());
        let data: Vec<u8> = chosen.concat();
        let opts = upload.opts.clone();
        uploads.remove(upload_id);
        let (meta, object) = self.object(key, data.into(), etag, opts);
        objects.insert(key.to_owned(), object);
        Ok(meta.etag.to_string())
    }

    pub fn answer_abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let mut uploads = self.uploads.lock();
        if uploads.get(upload_id).is_some_and(|u| u.key == key) {
            uploads.remove(upload_id);
        }
        Ok(())
    }

    pub fn answer_list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>, StoreError> {
        self.bucket_exists()?;
        let mut out: Vec<MultipartUpload> = self
            .uploads
            .lock()
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| MultipartUpload {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: u.initiated,
            })
            .collect();
        // S3's order: by key, then by the time each started.
        out.sort_by(|a, b| (&a.key, a.initiated).cmp(&(&b.key, b.initiated)));
        Ok(out)
    }

    pub fn answer_copy(
        &self,
        source: &ObjectMeta,
        dest_key: &str,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        self.bucket_exists()?;
        let mut objects = self.objects.lock();
        let (data, md5) = match objects.get(&source.key) {
            None => {
                return Err(StoreError::NoSuchKey {
                    key: source.key.clone(),
                });
            }
            Some(o) if o.meta.etag != source.etag => {
                return Err(StoreError::PreconditionFailed {
                    key: source.key.clone(),
                });
            }
            Some(o) => (o.data.clone(), o.written_with.content_md5.clone()),
        };
        check(dest_key, objects.get(dest_key), cond)?;
        let etag = content_etag(&data);
        let opts = WriteOptions {
            content_md5: opts.content_md5.clone().or(md5),
            ..opts.clone()
        };
        let (meta, object) = self.object(dest_key, data, etag, opts);
        objects.insert(dest_key.to_owned(), object);
        Ok(meta.etag.to_string())
    }

    pub fn answer_delete(&self, key: &str, cond: &Precondition) -> Result<(), StoreError> {
        self.bucket_exists()?;
        if *cond == Precondition::IfNoneMatch {
            return Err(super::no_if_none_match_on_delete(key));
        }
        let mut objects = self.objects.lock();
        match check(key, objects.get(key), cond) {
            Ok(()) => {
                objects.remove(key);
                Ok(())
            }
            Err(StoreError::NoSuchKey { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What a test does with the requests of a [`Hooked`] store: watch them, hold them back, fail
/// them, change the store before answering. Each request reaches the hook already counted in
/// the store's [`Counters`]; the hook answers it, usually with the store's own answer
/// (`answer_*`), which is what an operation it does not override gets.
#[async_trait]
pub trait StoreHook: Send + Sync + 'static {
    async fn list(&self, inner: &MemoryStore, prefix: &str) -> Result<Listing, StoreError> {
        inner.answer_list(prefix)
    }

    async fn list_dir(&self, inner: &MemoryStore, prefix: &str) -> Result<DirListing, StoreError> {
        inner.answer_list_dir(prefix)
    }

    async fn head(&self, inner: &MemoryStore, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        inner.answer_head(key)
    }

    async fn stored_md5(
        &self,
        inner: &MemoryStore,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        inner.answer_stored_md5(key)
    }

    async fn get(
        &self,
        inner: &MemoryStore,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError> {
        inner.answer_get(key, range, etag)
    }

    async fn put(
        &self,
        inner: &MemoryStore,
        key: &str,
        body: Bytes,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        inner.answer_put(key, body, cond, opts)
    }

    async fn create_multipart(
        &self,
        inner: &MemoryStore,
        key: &str,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        inner.answer_create_multipart(key, opts)
    }

    async fn upload_part(
        &self,
        inner: &MemoryStore,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        inner.answer_upload_part(key, upload_id, part_number, body)
    }

    async fn complete_multipart(
        &self,
        inner: &MemoryStore,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        cond: &Precondition,
    ) -> Result<String, StoreError> {
        inner.answer_complete(key, upload_id, parts, cond)
    }

    async fn abort_multipart(
        &self,
        inner: &MemoryStore,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        inner.answer_abort(key, upload_id)
    }

    async fn list_multipart(
        &self,
        inner: &MemoryStore,
        prefix: &str,
    ) -> Result<Vec<MultipartUpload>, StoreError> {
        inner.answer_list_multipart(prefix)
    }

    async fn copy(
        &self,
        inner: &MemoryStore,
        source: &ObjectMeta,
        dest_key: &str,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        inner.answer_copy(source, dest_key, cond, opts)
    }

    async fn delete(
        &self,
        inner: &MemoryStore,
        key: &str,
        cond: &Precondition,
    ) -> Result<(), StoreError> {
        inner.answer_delete(key, cond)
    }
}

/// An in-memory store whose every request goes through a test's hook. Derefs to the hook, for
/// the test to read its state or change what it does.
pub struct Hooked<H> {
    inner: Arc<MemoryStore>,
    hook: H,
}

impl<H: StoreHook> Hooked<H> {
    pub fn new(inner: Arc<MemoryStore>, hook: H) -> Arc<Self> {
        Arc::new(Self { inner, hook })
    }

    /// The store under the hook.
    pub fn store(&self) -> &Arc<MemoryStore> {
        &self.inner
    }
}

impl<H> std::ops::Deref for Hooked<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hook
    }
}

#[async_trait]
impl<H: StoreHook> ObjectStore for Hooked<H> {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    fn copies_in_parts(&self, size: u64) -> bool {
        self.inner.copies_in_parts(size)
    }
    fn endpoint(&self) -> &str {
        self.inner.endpoint()
    }
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.inner.counters.lists.fetch_add(1, Ordering::Relaxed);
        self.hook.list(&self.inner, prefix).await
    }
    async fn list_dir(&self, prefix: &str) -> Result<DirListing, StoreError> {
        self.inner
            .counters
            .dir_lists
            .fetch_add(1, Ordering::Relaxed);
        self.hook.list_dir(&self.inner, prefix).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.counters.heads.fetch_add(1, Ordering::Relaxed);
        self.hook.head(&self.inner, key).await
    }
    async fn stored_md5(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.counters.heads.fetch_add(1, Ordering::Relaxed);
        self.hook.stored_md5(&self.inner, key).await
    }
    async fn get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError> {
        self.inner.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.hook.get(&self.inner, key, range, etag).await
    }
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        self.inner.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.hook.put(&self.inner, key, body, cond, opts).await
    }
    async fn create_multipart(&self, key: &str, opts: &WriteOptions) -> Result<String, StoreError> {
        self.inner.counters.creates.fetch_add(1, Ordering::Relaxed);
        self.hook.create_multipart(&self.inner, key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.inner.counters.parts.fetch_add(1, Ordering::Relaxed);
        let hook = &self.hook;
        hook.upload_part(&self.inner, key, upload_id, part_number, body)
            .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        cond: &Precondition,
    ) -> Result<String, StoreError> {
        self.inner
            .counters
            .completes
            .fetch_add(1, Ordering::Relaxed);
        let hook = &self.hook;
        hook.complete_multipart(&self.inner, key, upload_id, parts, cond)
            .await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.inner.counters.aborts.fetch_add(1, Ordering::Relaxed);
        self.hook.abort_multipart(&self.inner, key, upload_id).await
    }
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>, StoreError> {
        self.inner
            .counters
            .list_uploads
            .fetch_add(1, Ordering::Relaxed);
        self.hook.list_multipart(&self.inner, prefix).await
    }
    async fn copy(
        &self,
        source: &ObjectMeta,
        dest_key: &str,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        self.inner.counters.copies.fetch_add(1, Ordering::Relaxed);
        self.hook
            .copy(&self.inner, source, dest_key, cond, opts)
            .await
    }
    async fn delete(&self, key: &str, cond: &Precondition) -> Result<(), StoreError> {
        self.inner.counters.deletes.fetch_add(1, Ordering::Relaxed);
        self.hook.delete(&self.inner, key, cond).await
    }
}

/// What [`Faults`] does to one request.
pub enum Fault {
    /// Answer with this error; a write so failed has not happened.
    Fail(StoreError),
    /// Do the write, then answer with this error, as when the connection drops after the
    /// server acted (the caller cannot tell the write happened). Answers a read with the error.
    FailAfter(StoreError),
    /// (A GET.) Send only the first `n` bytes of the body, then end it as if the connection
    /// closed.
    Truncate(usize),
    /// Run this on the store before the request is answered (e.g. overwrite the object).
    Before(Box<dyn FnOnce(&MemoryStore) + Send>),
}

/// A request as [`Faults`] sees it.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    List {
        prefix: &'a str,
    },
    ListDir {
        prefix: &'a str,
    },
    Head {
        key: &'a str,
    },
    Get {
        key: &'a str,
        range: &'a Range<u64>,
    },
    Put {
        key: &'a str,
        cond: &'a Precondition,
    },
    CreateMultipart {
        key: &'a str,
    },
    UploadPart {
        key: &'a str,
        upload_id: &'a str,
        part_number: u32,
    },
    Complete {
        key: &'a str,
        upload_id: &'a str,
        cond: &'a Precondition,
    },
    Abort {
        key: &'a str,
        upload_id: &'a str,
    },
    ListMultipart {
        prefix: &'a str,
    },
    Copy {
        source: &'a ObjectMeta,
        dest_key: &'a str,
        cond: &'a Precondition,
    },
    Delete {
        key: &'a str,
        cond: &'a Precondition,
    },
}

type FaultFn = Box<dyn FnMut(Request<'_>) -> Option<Fault> + Send>;

/// The hook of the common case: a function of each request deciding its fault, none at first,
/// replaceable at any time ([`Faults::set`]).
#[derive(Default)]
pub struct Faults(Mutex<Option<FaultFn>>);

/// What [`Faults::apply`] leaves to the answer of a request.
#[derive(Default)]
struct Applied {
    /// Bytes to cut a GET's body to.
    truncate: Option<usize>,
    /// The error to answer with once the request is done.
    after: Option<StoreError>,
}

impl Faults {
    /// A store over `inner` that faults no request until [`Faults::set`] says otherwise.
    pub fn over(inner: Arc<MemoryStore>) -> Arc<Hooked<Self>> {
        Hooked::new(inner, Self::default())
    }

    /// From now on, `decide` picks each request's fault.
    pub fn set(&self, decide: impl FnMut(Request<'_>) -> Option<Fault> + Send + 'static) {
        *self.0.lock() = Some(Box::new(decide));
    }

    /// Runs the fault `request` gets, if any: `Err` to answer with now, or what is left for
    /// the answer. The decision runs without the lock held across the store call it may make.
    fn apply(&self, inner: &MemoryStore, request: Request<'_>) -> Result<Applied, StoreError> {
        let fault = self.0.lock().as_mut().and_then(|decide| decide(request));
        match fault {
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::FailAfter(e)) => Ok(Applied {
                after: Some(e),
                ..Applied::default()
            }),
            Some(Fault::Truncate(n)) => Ok(Applied {
                truncate: Some(n),
                ..Applied::default()
            }),
            Some(Fault::Before(f)) => {
                f(inner);
                Ok(Applied::default())
            }
            None => Ok(Applied::default()),
        }
    }

    /// [`apply`](Self::apply) around the answer `answer` of a request that is not a GET.
    fn around<T>(
        &self,
        inner: &MemoryStore,
        request: Request<'_>,
        answer: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let applied = self.apply(inner, request)?;
        assert!(applied.truncate.is_none(), "Truncate is for GETs only");
        let answer = answer()?;
        match applied.after {
            Some(e) => Err(e),
            None => Ok(answer),
        }
    }
}

#[async_trait]
impl StoreHook for Faults {
    async fn list(&self, inner: &MemoryStore, prefix: &str) -> Result<Listing, StoreError> {
        self.around(inner, Request::List { prefix }, || {
            inner.answer_list(prefix)
        })
    }

    async fn list_dir(&self, inner: &MemoryStore, prefix: &str) -> Result<DirListing, StoreError> {
        self.around(inner, Request::ListDir { prefix }, || {
            inner.answer_list_dir(prefix)
        })
    }

    async fn head(&self, inner: &MemoryStore, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.around(inner, Request::Head { key }, || inner.answer_head(key))
    }

    async fn stored_md5(
        &self,
        inner: &MemoryStore,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        self.around(inner, Request::Head { key }, || {
            inner.answer_stored_md5(key)
        })
    }

    async fn get(
        &self,
        inner: &MemoryStore,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError> {
        let applied = self.apply(inner, Request::Get { key, range: &range })?;
        if let Some(e) = applied.after {
            return Err(e);
        }
        let sent = match applied.truncate {
            Some(n) => range.start..range.end.min(range.start + n as u64),
            None => range,
        };
        inner.answer_get(key, sent, etag)
    }

    async fn put(
        &self,
        inner: &MemoryStore,
        key: &str,
        body: Bytes,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        self.around(inner, Request::Put { key, cond }, || {
            inner.answer_put(key, body, cond, opts)
        })
    }

    async fn create_multipart(
        &self,
        inner: &MemoryStore,
        key: &str,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        self.around(inner, Request::CreateMultipart { key }, || {
            inner.answer_create_multipart(key, opts)
        })
    }

    async fn upload_part(
        &self,
        inner: &MemoryStore,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let request = Request::UploadPart {
            key,
            upload_id,
            part_number,
        };
        self.around(inner, request, || {
            inner.answer_upload_part(key, upload_id, part_number, body)
        })
    }

    async fn complete_multipart(
        &self,
        inner: &MemoryStore,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        cond: &Precondition,
    ) -> Result<String, StoreError> {
        let request = Request::Complete {
            key,
            upload_id,
            cond,
        };
        self.around(inner, request, || {
            inner.answer_complete(key, upload_id, parts, cond)
        })
    }

    async fn abort_multipart(
        &self,
        inner: &MemoryStore,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.around(inner, Request::Abort { key, upload_id }, || {
            inner.answer_abort(key, upload_id)
        })
    }

    async fn list_multipart(
        &self,
        inner: &MemoryStore,
        prefix: &str,
    ) -> Result<Vec<MultipartUpload>, StoreError> {
        self.around(inner, Request::ListMultipart { prefix }, || {
            inner.answer_list_multipart(prefix)
        })
    }

    async fn copy(
        &self,
        inner: &MemoryStore,
        source: &ObjectMeta,
        dest_key: &str,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        let request = Request::Copy {
            source,
            dest_key,
            cond,
        };
        self.around(inner, request, || {
            inner.answer_copy(source, dest_key, cond, opts)
        })
    }

    async fn delete(
        &self,
        inner: &MemoryStore,
        key: &str,
        cond: &Precondition,
    ) -> Result<(), StoreError> {
        self.around(inner, Request::Delete { key, cond }, || {
            inner.answer_delete(key, cond)
        })
    }
}

#[cfg(test)]
mod tests;
