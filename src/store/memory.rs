//! An in-memory bucket for fast tests: counts requests, and runs each request through a test's
//! hook ([`Hooked`], [`Faults`]) to watch, hold back or fail it.
//!
//! ETags are a hash of the content, so rewriting an object with other bytes changes its ETag, as
//! on S3. Bodies are served in small chunks so that truncation and mid-body failures are real.

use super::{Body, ObjectMeta, ObjectStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

const CHUNK: usize = 64 * 1024;

#[derive(Default)]
pub struct Counters {
    pub lists: AtomicU64,
    pub heads: AtomicU64,
    pub gets: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct MemoryStore {
    bucket: String,
    objects: Mutex<BTreeMap<String, (ObjectMeta, Bytes)>>,
    missing: bool,
    clock: AtomicU64,
    pub counters: Counters,
}

impl MemoryStore {
    pub fn new(bucket: &str) -> Arc<Self> {
        Arc::new(Self {
            bucket: bucket.to_owned(),
            objects: Mutex::default(),
            missing: false,
            clock: AtomicU64::new(1_700_000_000),
            counters: Counters::default(),
        })
    }

    /// A store whose bucket does not exist.
    pub fn missing(bucket: &str) -> Arc<Self> {
        let mut s = Self::new(bucket);
        Arc::get_mut(&mut s).unwrap().missing = true;
        s
    }

    pub fn put(&self, key: &str, data: impl Into<Bytes>) -> ObjectMeta {
        let data = data.into();
        let mut h = DefaultHasher::new();
        data.hash(&mut h);
        let secs = self.clock.fetch_add(1, Ordering::Relaxed);
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: data.len() as u64,
            etag: format!("{:016x}", h.finish()),
            last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        };
        self.objects
            .lock()
            .insert(key.to_owned(), (meta.clone(), data));
        meta
    }

    pub fn delete(&self, key: &str) {
        self.objects.lock().remove(key);
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

#[async_trait]
impl ObjectStore for MemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn endpoint(&self) -> &str {
        "memory:"
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        self.answer_list(prefix)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.counters.heads.fetch_add(1, Ordering::Relaxed);
        self.answer_head(key)
    }

    async fn get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError> {
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.answer_get(key, range, etag)
    }
}

/// The answers to requests, apart from counting them: what a [`StoreHook`] answers with.
impl MemoryStore {
    pub fn answer_list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        if self.missing {
            return Err(StoreError::NoSuchBucket {
                bucket: self.bucket.clone(),
            });
        }
        Ok(self
            .objects
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, (meta, _))| meta.clone())
            .collect())
    }

    pub fn answer_head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self.objects.lock().get(key).map(|(meta, _)| meta.clone()))
    }

    /// Bytes `range` of `key` if its ETag is still `etag` (the bytes sent are counted).
    pub fn answer_get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError> {
        let (meta, data) = self
            .objects
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchKey { key: key.into() })?;
        if meta.etag != etag {
            return Err(StoreError::PreconditionFailed { key: key.into() });
        }
        let end = range.end.min(meta.size) as usize;
        let body = data.slice(range.start as usize..end);
        self.counters
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(chunked(body))
    }
}

/// What a test does with the requests of a [`Hooked`] store: watch them, hold them back, fail
/// them, change the store before answering. Each request reaches the hook already counted in
/// the store's [`Counters`]; the hook answers it, usually with the store's own answer
/// (`answer_*`), which is what an operation it does not override gets.
#[async_trait]
pub trait StoreHook: Send + Sync + 'static {
    async fn list(&self, inner: &MemoryStore, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        inner.answer_list(prefix)
    }

    async fn head(&self, inner: &MemoryStore, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        inner.answer_head(key)
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
    fn endpoint(&self) -> &str {
        self.inner.endpoint()
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.counters.lists.fetch_add(1, Ordering::Relaxed);
        self.hook.list(&self.inner, prefix).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.counters.heads.fetch_add(1, Ordering::Relaxed);
        self.hook.head(&self.inner, key).await
    }
    async fn get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError> {
        self.inner.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.hook.get(&self.inner, key, range, etag).await
    }
}

/// What [`Faults`] does to one request.
pub enum Fault {
    /// Answer with this error.
    Fail(StoreError),
    /// (A GET.) Send only the first `n` bytes of the body, then end it as if the connection
    /// closed.
    Truncate(usize),
    /// Run this on the store before the request is answered (e.g. overwrite the object).
    Before(Box<dyn FnOnce(&MemoryStore) + Send>),
}

/// A request as [`Faults`] sees it.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    List { prefix: &'a str },
    Head { key: &'a str },
    Get { key: &'a str, range: &'a Range<u64> },
}

type FaultFn = Box<dyn FnMut(Request<'_>) -> Option<Fault> + Send>;

/// The hook of the common case: a function of each request deciding its fault, none at first,
/// replaceable at any time ([`Faults::set`]).
#[derive(Default)]
pub struct Faults(Mutex<Option<FaultFn>>);

impl Faults {
    /// A store over `inner` that faults no request until [`Faults::set`] says otherwise.
    pub fn over(inner: Arc<MemoryStore>) -> Arc<Hooked<Self>> {
        Hooked::new(inner, Self::default())
    }

    /// From now on, `decide` picks each request's fault.
    pub fn set(&self, decide: impl FnMut(Request<'_>) -> Option<Fault> + Send + 'static) {
        *self.0.lock() = Some(Box::new(decide));
    }

    /// Runs the fault `request` gets, if any: `Err` to answer with, or the bytes to cut a body
    /// to. The decision runs without the lock held across the store call it may make.
    fn apply(
        &self,
        inner: &MemoryStore,
        request: Request<'_>,
    ) -> Result<Option<usize>, StoreError> {
        let fault = self.0.lock().as_mut().and_then(|decide| decide(request));
        match fault {
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::Truncate(n)) => Ok(Some(n)),
            Some(Fault::Before(f)) => {
                f(inner);
                Ok(None)
            }
            None => Ok(None),
        }
    }
}

#[async_trait]
impl StoreHook for Faults {
    async fn list(&self, inner: &MemoryStore, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.apply(inner, Request::List { prefix })?;
        inner.answer_list(prefix)
    }

    async fn head(&self, inner: &MemoryStore, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.apply(inner, Request::Head { key })?;
        inner.answer_head(key)
    }

    async fn get(
        &self,
        inner: &MemoryStore,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError> {
        let sent = match self.apply(inner, Request::Get { key, range: &range })? {
            Some(n) => range.start..range.end.min(range.start + n as u64),
            None => range,
        };
        inner.answer_get(key, sent, etag)
    }
}
