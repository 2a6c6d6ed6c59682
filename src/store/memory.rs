//! An in-memory bucket for fast tests: counts requests, and can inject faults into GETs.
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

/// What a fault hook may do to one GET.
pub enum Fault {
    /// Answer the GET with this error.
    Fail(StoreError),
    /// Send only the first `n` bytes of the body, then end it as if the connection closed.
    Truncate(usize),
    /// Run this on the store before the GET is answered (e.g. overwrite the object).
    Before(Box<dyn FnOnce(&MemoryStore) + Send>),
}

type FaultHook = Box<dyn FnMut(&str, &Range<u64>) -> Option<Fault> + Send>;

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
    fault: Mutex<Option<FaultHook>>,
    pub counters: Counters,
}

impl MemoryStore {
    pub fn new(bucket: &str) -> Arc<Self> {
        Arc::new(Self {
            bucket: bucket.to_owned(),
            objects: Mutex::default(),
            missing: false,
            clock: AtomicU64::new(1_700_000_000),
            fault: Mutex::default(),
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

    /// Installs a hook consulted on every GET.
    pub fn set_fault(&self, hook: impl FnMut(&str, &Range<u64>) -> Option<Fault> + Send + 'static) {
        *self.fault.lock() = Some(Box::new(hook));
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

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.counters.heads.fetch_add(1, Ordering::Relaxed);
        Ok(self.objects.lock().get(key).map(|(meta, _)| meta.clone()))
    }

    async fn get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError> {
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        // The hook runs without the hook lock held across the store call it may make.
        let fault = self
            .fault
            .lock()
            .as_mut()
            .and_then(|hook| hook(key, &range));
        let truncate = match fault {
            Some(Fault::Fail(e)) => return Err(e),
            Some(Fault::Truncate(n)) => Some(n),
            Some(Fault::Before(f)) => {
                f(self);
                None
            }
            None => None,
        };
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
        let mut body = data.slice(range.start as usize..end);
        if let Some(n) = truncate {
            body.truncate(n);
        }
        self.counters
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(chunked(body))
    }
}

/// What a test does with each GET of a [`Hooked`] store, given the real store to answer from.
#[cfg(test)]
#[async_trait]
pub trait GetHook: Send + Sync + 'static {
    async fn get(
        &self,
        inner: &MemoryStore,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError>;
}

/// An in-memory store whose GETs go through a test's hook (to watch, hold back or stall them);
/// everything else is the store's own. Derefs to the hook, for the test to read its state.
#[cfg(test)]
pub struct Hooked<H> {
    inner: Arc<MemoryStore>,
    hook: H,
}

#[cfg(test)]
impl<H: GetHook> Hooked<H> {
    pub fn new(inner: Arc<MemoryStore>, hook: H) -> Arc<Self> {
        Arc::new(Self { inner, hook })
    }
}

#[cfg(test)]
impl<H> std::ops::Deref for Hooked<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hook
    }
}

#[cfg(test)]
#[async_trait]
impl<H: GetHook> ObjectStore for Hooked<H> {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    fn endpoint(&self) -> &str {
        self.inner.endpoint()
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.head(key).await
    }
    async fn get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError> {
        self.hook.get(&self.inner, key, range, etag).await
    }
}
