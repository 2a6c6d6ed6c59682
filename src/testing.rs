//! What the unit tests of the engine and the file system build on: an engine or a file system
//! over the in-memory store with the few settings tests vary ([`Setup`]), a store hook that
//! holds GETs back ([`Held`]), and single-thread runtimes a test can tell apart or keep busy.

use crate::engine::{Engine, EngineConfig, Replica};
use crate::local::{LocalError, Root};
use crate::mounts::Mount;
use crate::progress::Progress;
use crate::store::memory::{Hooked, MemoryStore, StoreHook};
use crate::store::{Body, ObjectStore, StoreError};
use crate::vfs::{Mounted, Vfs};
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The part size of [`Setup::default`]: small, so that a file of a few hundred KB has parts.
pub const PART: u64 = 64 * 1024;

/// Bytes that differ from part to part, so a misplaced part shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i / 1000) as u8 ^ (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Mount "m" of bucket "bkt" under `prefix`.
pub fn mount(prefix: &str) -> Mount {
    Mount {
        id: "m".into(),
        bucket: "bkt".into(),
        prefix: prefix.into(),
        writeable: false,
        kms_key_id: None,
        role_arn: None,
    }
}

/// The settings tests vary; the rest of [`EngineConfig`] as in sync mode.
pub struct Setup {
    pub concurrency: usize,
    /// [`EngineConfig::tiny_concurrency`]; `None`: as `concurrency`.
    pub tiny_concurrency: Option<usize>,
    /// [`EngineConfig::write_concurrency`]; `None`: as `concurrency`.
    pub write_concurrency: Option<usize>,
    pub part_size: u64,
    pub readers: Option<tokio::runtime::Handle>,
    pub stream: Option<tokio::runtime::Handle>,
    pub slow_start: bool,
    pub cancel: CancellationToken,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            concurrency: 2,
            tiny_concurrency: None,
            write_concurrency: None,
            part_size: PART,
            readers: None,
            stream: None,
            slow_start: false,
            cancel: CancellationToken::new(),
        }
    }
}

impl Setup {
    /// An engine over the local root `root`. Call it in the runtime its downloads are to run in.
    pub fn engine(&self, root: &Path) -> Engine {
        // A blocking write of the previous engine's aborted downloads may still hold the root
        // for a moment (a process runs one engine; tests run several in a row).
        let mut tries = 0;
        let root = loop {
            match Root::open(root) {
                Err(LocalError::Locked(_)) if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        };
        let config = EngineConfig {
            concurrency: self.concurrency,
            tiny_concurrency: self.tiny_concurrency.unwrap_or(self.concurrency),
            write_concurrency: self.write_concurrency.unwrap_or(self.concurrency),
            part_size: self.part_size,
            readers: self.readers.clone(),
            stream: self.stream.clone(),
            slow_start: self.slow_start,
            upload_delay: Duration::ZERO,
        };
        Engine::new(
            root,
            &config,
            Arc::new(Progress::default()),
            self.cancel.clone(),
        )
    }

    /// An engine over `root` with [`mount`] `p/` opened.
    pub fn open(&self, root: &Path) -> (Arc<Engine>, Arc<Replica>) {
        let engine = Arc::new(self.engine(root));
        let replica = engine.open_mount(mount("p/")).unwrap();
        (engine, replica)
    }

    /// A file system serving [`mount`] `p/` of `store` from a local copy in `dir`, listed once.
    pub async fn vfs(&self, store: Arc<dyn ObjectStore>, dir: &Path) -> (Arc<Vfs>, Arc<Engine>) {
        let (engine, replica) = self.open(dir);
        let listing = store.list(&replica.mount.prefix).await.unwrap();
        let vfs = Arc::new(Vfs::new(engine.clone(), vec![Mounted { replica, store }]));
        vfs.update(0, &listing);
        (vfs, engine)
    }

    /// [`Setup::vfs`] as a first mount serves it before its full listing ends: only the top
    /// directory listed.
    pub async fn vfs_top(
        &self,
        store: Arc<dyn ObjectStore>,
        dir: &Path,
    ) -> (Arc<Vfs>, Arc<Engine>) {
        let (engine, replica) = self.open(dir);
        let top = store.list_dir(&replica.mount.prefix).await.unwrap();
        let vfs = Arc::new(Vfs::new(engine.clone(), vec![Mounted { replica, store }]));
        vfs.show_top(0, &top);
        (vfs, engine)
    }
}

/// [`Setup::engine`] with `concurrency` GETs and `cancel`, the rest as by default.
pub fn engine_at(root: &Path, concurrency: usize, cancel: CancellationToken) -> Engine {
    Setup {
        concurrency,
        cancel,
        ..Setup::default()
    }
    .engine(root)
}

type Holds = Box<dyn Fn(&str, u64) -> bool + Send + Sync>;

/// A store hook that records the ranges asked for and the bytes its bodies yielded, and holds
/// back the GETs `holds` picks (by key and offset) until the test lets them through
/// (`gate.add_permits`: each permit lets one GET through).
pub struct Held {
    holds: Holds,
    pub gate: tokio::sync::Semaphore,
    /// Each GET's range, and the name of the thread it was asked from.
    pub asked: Mutex<Vec<(Range<u64>, String)>>,
    /// GETs that have reached the gate.
    pub stalled: AtomicU64,
    /// Bytes the bodies have yielded.
    pub pulled: Arc<AtomicU64>,
}

impl Held {
    pub fn new(
        inner: Arc<MemoryStore>,
        holds: impl Fn(&str, u64) -> bool + Send + Sync + 'static,
    ) -> Arc<Hooked<Self>> {
        let held = Self {
            holds: Box::new(holds),
            gate: tokio::sync::Semaphore::new(0),
            asked: Mutex::default(),
            stalled: AtomicU64::new(0),
            pulled: Arc::default(),
        };
        Hooked::new(inner, held)
    }

    /// Waits until `n` GETs have reached the gate.
    pub async fn until_stalled(&self, n: u64) {
        while self.stalled.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[async_trait::async_trait]
impl StoreHook for Held {
    async fn get(
        &self,
        inner: &MemoryStore,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError> {
        let thread = std::thread::current().name().unwrap_or_default().to_owned();
        self.asked.lock().push((range.clone(), thread));
        if (self.holds)(key, range.start) {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.unwrap().forget();
        }
        let pulled = self.pulled.clone();
        let body = inner.answer_get(key, range, etag)?;
        Ok(Box::pin(body.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                pulled.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        })))
    }
}

/// A runtime of one worker whose threads are named `name` (tests tell by a GET's thread which
/// runtime asked for it).
pub fn named_runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// Blocks the only worker of `runtime` until the returned sender is dropped or sent to.
pub fn occupy(runtime: &tokio::runtime::Runtime) -> std::sync::mpsc::Sender<()> {
    let (busy_tx, busy_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move {
        busy_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    busy_rx.recv().unwrap();
    release_tx
}

/// Waits (bounded) until file `path` of `state`'s mount holds the object's current version.
pub async fn wait_until_cached(replica: &Replica, store: &dyn ObjectStore, path: &str) {
    let key = format!("{}{path}", replica.mount.prefix);
    for _ in 0..1000 {
        let meta = store.head(&key).await.unwrap().unwrap();
        if replica.copy.holds(path, &meta) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{path} never completed");
}
